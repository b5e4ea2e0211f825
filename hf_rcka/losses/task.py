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
    head's term in training (the distillation head is trained by ``deit_token``); in evaluation it
    is taken on the logits the model predicts with, the average of both heads as DeiT deploys it.

    Under Mixup/CutMix the labels are (B, P) soft targets into which the trainer has already
    folded this loss's ``label_smoothing`` (timm's ``Mixup(label_smoothing=...)``): the loss is then
    the soft-target cross-entropy ``mean_b sum_p -y_bp log softmax(z_b)_p``, with no second
    smoothing (timm's ``SoftTargetCrossEntropy``).

    Smoothing is a training target only: in evaluation (the module in eval mode) the term is the
    plain cross-entropy, as timm's and DeiT's validation report it, so ``eval_ce_loss`` measures
    the model and not the recipe's targets.

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

    def term(self, inputs: LossInputs) -> torch.Tensor:
        logits, labels = functional.upcast(inputs.student_logits), inputs.labels
        if labels.ndim == 2:  # soft targets from Mixup/CutMix, smoothing already folded in
            if not labels.is_floating_point():  # a collator's (B, 1) class ids, not targets
                raise ValueError(f"ce got class ids of shape {tuple(labels.shape)}: give one id per image, shape "
                                 f"({labels.shape[0]},) (labels.squeeze(-1) in the collator)")
            if labels.shape != logits.shape:
                raise ValueError(
                    f"ce got soft targets of shape {tuple(labels.shape)} for logits {tuple(logits.shape)}: "
                    "mixed targets need one column per class of the student"
                )
            return F.cross_entropy(logits, labels.to(logits.dtype))
        smoothing = (self.label_smoothing or 0.0) if self.training else 0.0
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)
