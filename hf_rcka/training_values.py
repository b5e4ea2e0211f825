"""Rules for the values of ``TrainingArguments``, checked before anything loads.

``TrainingArguments`` accepts a negative learning rate, a batch size of 0 or a label smoothing of
1.5; they fail at the first step (or, worse, train quietly: a negative learning rate climbs the
loss). Each range rule here names its key and the accepted range. ``DistillationTrainingArguments``
applies them when it is built; ``check_arguments`` applies them, and the distillation's fixed
settings, to plain ``TrainingArguments`` a Python caller passes; ``check_half_precision`` refuses
``fp16`` where accelerate would silently train in float32. The command line and the trainer both
call these, so a rule of the arguments lives with the arguments, not in either layer.

Values arrive typed (a recipe's text is converted by ``hf_rcka.cli.coercion`` first); these
checks convert nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

from transformers import TrainingArguments

from .errors import RecipeError

logger = logging.getLogger(__name__)

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
    if not getattr(args, "dataloader_num_workers", 0):  # torch refuses them at the first loader, after loading
        for key in ("dataloader_persistent_workers", "dataloader_multiprocessing_context"):
            if getattr(args, key, None):
                raise RecipeError(f"{key} sets up dataloader worker processes, and dataloader_num_workers is 0: "
                                  f"set dataloader_num_workers > 0 too, or drop {key}")


def check_arguments(args: TrainingArguments) -> None:
    """Plain ``TrainingArguments`` get the checks ``DistillationTrainingArguments`` runs itself.

    Their two defaults that differ from the distillation's (``label_names`` unset,
    ``remove_unused_columns`` on, which drops the columns an image transform reads) are set to
    the distillation's; any other value of a fixed setting is refused.
    """
    from .arguments import DistillationTrainingArguments, check_fixed_settings  # arguments imports this module

    if isinstance(args, DistillationTrainingArguments):
        return
    if args.label_names is None:
        args.label_names = ["labels"]
    if args.remove_unused_columns:
        logger.info("remove_unused_columns set to False: distillation reads every column of the batch")
        args.remove_unused_columns = False
    check_training_values(args)
    check_fixed_settings(args)


def check_half_precision(args: Any) -> None:
    """``fp16`` needs an accelerator: on CPU accelerate turns it off and trains in float32 silently.

    The advice names ``use_cpu`` with ``bf16``: without it, transformers refuses bf16 on a machine
    without a GPU ("Your setup doesn't support bf16/gpu").
    """
    from transformers.utils import (is_torch_cuda_available, is_torch_mps_available, is_torch_npu_available,
                                    is_torch_xpu_available)

    if not args.fp16:  # fp16_full_eval is refused before this (arguments.FIXED_SETTINGS)
        return
    accelerator = any(found() for found in (is_torch_cuda_available, is_torch_xpu_available, is_torch_mps_available,
                                            is_torch_npu_available))
    if args.use_cpu or not accelerator:
        raise RecipeError("fp16 needs a GPU (on CPU it would silently train in float32): set bf16: true with "
                          "use_cpu: true for CPU autocast, or fp16: false")


__all__ = ["check_arguments", "check_half_precision", "check_training_values"]
