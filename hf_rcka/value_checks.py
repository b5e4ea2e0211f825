"""Value ranges of training settings that the recipe alone decides, checked before anything loads.

``TrainingArguments`` accepts a negative learning rate, a batch size of 0 or a label smoothing of
1.5; they fail at the first step (or, worse, train quietly: a negative learning rate climbs the
loss). Each rule names its key and the accepted range.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .errors import RecipeError

# key -> (accepted, description of the accepted range)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (lambda v: v >= 0, ">= 0"),
    "per_device_train_batch_size": (lambda v: v >= 1, ">= 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "label_smoothing_factor": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "max_grad_norm": (lambda v: v is None or v >= 0, ">= 0"),
    "num_train_epochs": (lambda v: v >= 0, ">= 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_epsilon": (lambda v: v > 0, "> 0"),
    "dataloader_num_workers": (lambda v: v >= 0, ">= 0"),
}


def check_training_values(args: Any) -> None:
    """Raise a ``RecipeError`` naming the first setting of ``args`` outside its range.

    Raises:
        RecipeError: e.g. ``learning_rate must be >= 0, got -0.001``.
    """
    for key, (accepted, description) in _RULES.items():
        value = getattr(args, key, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (isinstance(value, float) and math.isnan(value)) or not accepted(value):
            raise RecipeError(f"{key} must be {description}, got {value}")
