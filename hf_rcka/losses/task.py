"""The task loss: cross-entropy on the student's logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import functional
from ..registry import LOSSES
from .base import DistillationLoss, LossInputs


@LOSSES.register("ce")
class CrossEntropyLoss(DistillationLoss):
    """Cross-entropy against the labels, with optional label smoothing.

    With ``label_smoothing`` unset the trainer uses ``TrainingArguments.label_smoothing_factor``,
    so recipes written for plain ``Trainer`` behave the same. For DeiT students this is the CLS
    head's term (the distillation head is trained by ``deit_token``).

    Recipe::

        losses:
          - {name: ce, weight: 1.0}
    """

    requires = frozenset({"student_logits", "labels"})

    def __init__(self, weight: float = 1.0, label_smoothing: float | None = None) -> None:
        super().__init__(weight)
        if label_smoothing is not None and not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        return F.cross_entropy(
            functional.upcast(inputs.student_logits), inputs.labels, label_smoothing=self.label_smoothing or 0.0
        )
