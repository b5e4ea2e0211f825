"""FitNets (Romero et al. 2015): MSE between adapted student features and teacher features."""

from __future__ import annotations

import torch

from .. import functional
from ..registry import LOSSES
from .base import DistillationLoss, LossInputs


@LOSSES.register("fitnet")
class FitNetLoss(DistillationLoss):
    """``sum_pairs mean((s - t)^2)`` on features of equal shape after the adapter.

    The classic hint-learning baseline: unlike CKA it needs a projector to the teacher's width
    (the 'patch_match' or 'linear' adapter provides it) and is sensitive to feature scale.

    Recipe::

        feature_pairs:
          - {student_layer: -1, teacher_layer: -1, adapter: patch_match}
        losses:
          - {name: ce, weight: 1.0}
          - {name: fitnet, weight: 1.0}
    """

    requires = frozenset({"student_features", "teacher_features"})
    feature_alignment = "shape"
    channel_mean = True

    def term(self, inputs: LossInputs) -> torch.Tensor:
        terms = []
        for student, teacher in self.feature_pairs(inputs):
            if student.shape != teacher.shape:
                raise ValueError(
                    f"fitnet needs equal shapes after the adapter, got student {tuple(student.shape)} and "
                    f"teacher {tuple(teacher.shape)}; use adapter 'patch_match' or 'linear'"
                )
            if student.shape[0] == 0:  # no counted image (an evaluation batch of padding): as mse_loss, no value
                terms.append(student.new_full((), float("nan"), dtype=torch.float32))
                continue
            terms.append(functional.hint_loss(student, teacher))
        return torch.stack(terms).sum()
