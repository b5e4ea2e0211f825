"""Patch-wise CKA (PCKA, Zhou et al. 2024) on spatially aligned feature maps."""

from __future__ import annotations

import torch

from .. import functional
from ..functional.cka import min_cka_items
from ..registry import LOSSES
from .base import DistillationLoss, LossInputs


@LOSSES.register("patch_cka")
class PatchCKALoss(DistillationLoss):
    """``sum_pairs mean_channels (1 - CKA(patch x patch))`` on aligned (B, C, H, W) maps.

    For every channel, rows are the patches of the map (each holding its pixels over the batch),
    so the loss aligns *where* things are relative to each other. Needs equal shapes on both sides:
    the ``patch_match`` adapter brings ViT tokens and CNN maps onto one grid and projects channels.
    All channels go through one batched CKA; small maps use smaller patches, and a pair on a
    grid too small to hold 3 patches (1 x 1, 1 x 2) is refused, or left out of automatic pairing:
    it has no patch relations to align. Paper: weight 10 per level, patch size 16 on
    detection FPN maps; classification maps are small, so the default patch side is 4.

    The loss is a mean over channels, so ``patch_match`` compares a random subset of the teacher's
    channels per training step (as many as the student has; ``sample_channels: null`` for all),
    which makes the projection to a wide teacher stage cheaper without biasing the loss.

    Recipe::

        feature_pairs:
          - {student_layer: -1, teacher_layer: -1, adapter: patch_match}
        losses:
          - {name: ce, weight: 1.0}
          - {name: patch_cka, weight: 10.0, patch_size: 4}
    """

    requires = frozenset({"student_features", "teacher_features"})
    feature_alignment = "map"
    channel_mean = True

    def __init__(self, weight: float = 1.0, patch_size: int = 4, transpose: bool = False, center: bool = True) -> None:
        super().__init__(weight)
        if int(patch_size) < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = int(patch_size)
        self.transpose = bool(transpose)
        self.center = bool(center)

    def reduce_teacher_feature(self, teacher: torch.Tensor) -> functional.PatchGramSide | None:
        """In training, the teacher's map on the common grid reduced to its per-channel patch Grams
        (``functional.PatchGramSide``), all the kernel's CKA reads of it, so that the map is not
        held through the student's forward and the loss, where the student's activations peak,
        reads the student's maps alone. The value is the same. None (the map whole) in evaluation,
        where an unreadable image's stand-in is dropped from the batch (a Gram over the batch's
        patches cannot drop an image), with ``transpose`` (it reads the pixels), and where
        ``functional.patch_cka_side`` keeps the map (off the kernel, too few patches)."""
        if not self.training or self.transpose or not isinstance(teacher, torch.Tensor) or teacher.dim() != 4:
            return None
        return functional.patch_cka_side(teacher, self.patch_size, self.center)

    def feature_problem(self, shape: tuple[int, ...]) -> str | None:
        """A map of fewer patches than CKA relates (1 x 1, 1 x 2 when centred) gives a constant
        term: the last stages of a small image (CIFAR's 32 px: ResNet's 1 x 1 stage 4)."""
        if len(shape) != 3:
            return None
        height, width = shape[-2:]
        count, least = functional.patch.patch_count(height, width, self.patch_size), min_cka_items(self.center)
        if count >= least:
            return None
        return (f"patch_cka relates the patches of a map, and this {height}x{width} map holds {count} (CKA over fewer "
                f"than {least} is a constant, so the pair would train nothing)")

    def term(self, inputs: LossInputs) -> torch.Tensor:
        pairs = self.feature_pairs(inputs)
        for student, teacher in pairs:
            if student.dim() != 4:
                raise ValueError(
                    f"patch_cka needs (B, C, H, W) maps, got a feature of shape {tuple(student.shape)}; "
                    f"use the 'patch_match' adapter for this pair"
                )
            functional.patch.check_aligned(student, teacher)
        # pairs on one grid share one call (see patch_cka_many)
        students, teachers = [s for s, _ in pairs], [t for _, t in pairs]
        sims = functional.patch_cka_many(students, teachers, self.patch_size, self.transpose, self.center)
        return torch.stack([1.0 - sim.mean() for sim in sims]).sum()
