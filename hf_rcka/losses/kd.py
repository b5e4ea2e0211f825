"""Hinton et al.'s knowledge distillation on temperature-softened logits (the classic baseline)."""

from __future__ import annotations

import math

import torch

from .. import functional
from ..registry import LOSSES
from .base import DistillationLoss, LossInputs


@LOSSES.register("kd")
class KDLoss(DistillationLoss):
    """``T^2 KL(teacher/T || student/T)``, batch mean.

    KD asks the student to copy the teacher's logit *scale*; an over-confident teacher can hurt a
    small student trained on few images. RCKA asks only for the same relations, so KD is offered
    as a baseline, not as RCKA's default partner.

    Recipe::

        losses:
          - {name: ce, weight: 1.0}
          - {name: kd, weight: 1.0, temperature: 4.0}
    """

    requires = frozenset({"student_logits", "teacher_logits"})

    def __init__(self, weight: float = 1.0, temperature: float = 4.0) -> None:
        super().__init__(weight)
        if not 0 < temperature < math.inf:
            raise ValueError(f"kd temperature must be > 0 and finite, got {temperature}")
        self.temperature = float(temperature)

    def term(self, inputs: LossInputs) -> torch.Tensor:
        return functional.kd_loss(inputs.student_logits, inputs.teacher_logits, self.temperature)
