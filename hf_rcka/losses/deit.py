"""DeiT's distillation token (Touvron et al. 2021): the distillation head learns from the teacher."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import functional
from ..registry import LOSSES
from .base import DistillationLoss, LossInputs

_MODES = ("hard", "soft")


@LOSSES.register("deit_token")
class DeiTTokenLoss(DistillationLoss):
    """The distillation head's term: ``hard`` CE to the teacher's argmax, or ``soft`` tau^2 KL.

    Only the distillation head's part: the CLS head's label term is ``ce``. DeiT's hard recipe is
    ``1/2 CE(cls, y) + 1/2 CE(dist, argmax t)``, i.e. ``ce`` and ``deit_token`` at weight 0.5 each.
    Needs a student with a distillation head (``DeiTForImageClassificationWithTeacher``); its
    exported model averages both heads at inference, as DeiT does.

    Reads no labels, so Mixup/CutMix change nothing here: the hard target is the teacher's argmax
    on the same mixed image the student sees, as in DeiT.

    Recipe::

        losses:
          - {name: ce, weight: 0.5}
          - {name: deit_token, weight: 0.5, mode: hard}
    """

    requires = frozenset({"distillation_logits", "teacher_logits"})

    def __init__(self, weight: float = 1.0, mode: str = "hard", temperature: float = 3.0) -> None:
        super().__init__(weight)
        if mode not in _MODES:
            raise ValueError(f"deit_token mode must be one of {_MODES}, got {mode!r}")
        if not 0 < temperature < math.inf:
            raise ValueError(f"deit_token temperature must be > 0 and finite, got {temperature}")
        self.mode = mode
        self.temperature = float(temperature)

    def check_inputs(self, inputs: LossInputs) -> None:
        if inputs.distillation_logits is None:
            raise ValueError(
                "loss 'deit_token' needs a student with a distillation head, e.g. "
                "DeiTForImageClassificationWithTeacher; this student returns no distillation_logits"
            )
        super().check_inputs(inputs)

    def term(self, inputs: LossInputs) -> torch.Tensor:
        dist_logits, teacher_logits = inputs.distillation_logits, inputs.teacher_logits
        if dist_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"deit_token needs distillation and teacher logits of equal shape, got "
                f"{tuple(dist_logits.shape)} and {tuple(teacher_logits.shape)}: do both models predict "
                f"the same label set?"
            )
        if self.mode == "hard":
            # argmax turns a teacher's NaN or inf row into a class: that row's loss is NaN instead,
            # as every loss reading the teacher's values is, so that the divergence check sees it
            per_image = F.cross_entropy(functional.upcast(dist_logits), teacher_logits.argmax(dim=-1), reduction="none")
            broken = ~torch.isfinite(teacher_logits).all(dim=-1)
            return torch.where(broken, float("nan"), per_image).mean()  # a scalar: no host-to-device copy
        return functional.kd_loss(dist_logits, teacher_logits, self.temperature)
