"""Mixup / CutMix on the training batch, with timm's ``Mixup``.

Mixing happens on the batch inside the training step, before the model runs, so the student and
the teacher see the same mixed pixels (as in DeiT: the teacher's targets are for the image the
student actually sees). Labels then travel as soft targets of shape (B, P) into every loss;
label smoothing is folded into those targets as timm does, so ``ce`` applies none on top.
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

from ..augmentation import AugmentationArguments


def build_mixup(augmentation: AugmentationArguments, num_classes: int, label_smoothing: float = 0.0) -> Mixup | None:
    """timm's ``Mixup`` for these settings, or ``None`` when neither mixup nor CutMix is on.

    Args:
        augmentation: the recipe's ``mixup``, ``cutmix``, ``cutmix_minmax``, ``mixup_prob``,
            ``mixup_switch_prob`` and ``mixup_mode``.
        num_classes: the student's number of labels.
        label_smoothing: folded into the soft targets (timm's ``--smoothing``).
    """
    if not augmentation.mixup_active:
        return None
    return Mixup(
        mixup_alpha=augmentation.mixup,
        cutmix_alpha=augmentation.cutmix,
        cutmix_minmax=augmentation.cutmix_minmax,
        prob=augmentation.mixup_prob,
        switch_prob=augmentation.mixup_switch_prob,
        mode=augmentation.mixup_mode,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


def mix_batch(
    mixup: Mixup, pixel_values: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed pixels and (B, P) soft targets for one batch.

    timm's ``Mixup`` pairs image i with image B-1-i and needs an even batch. The last batch of an
    epoch can be odd: the first B-1 images are mixed and the last one keeps its own pixels and its
    (smoothed) one-hot target, so no image is dropped and the targets stay exact.
    """
    if labels.ndim != 1:
        raise ValueError(f"Mixup/CutMix needs class indices of shape (B,), got labels of shape {tuple(labels.shape)}")
    even = pixel_values.shape[0] - pixel_values.shape[0] % 2
    if even == pixel_values.shape[0]:
        return mixup(pixel_values, labels)
    pixels, targets = pixel_values.clone(), _smoothed_one_hot(mixup, labels)
    if even:
        pixels[:even], targets[:even] = mixup(pixels[:even], labels[:even])
    return pixels, targets


def _smoothed_one_hot(mixup: Mixup, labels: torch.Tensor) -> torch.Tensor:
    return mixup_target(labels, mixup.num_classes, lam=1.0, smoothing=mixup.label_smoothing)
