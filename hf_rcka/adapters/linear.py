"""The 'linear' adapter: a learnable projection of the student's channels to the teacher's."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..features.layout import FeatureSpec
from ..registry import ADAPTERS
from .base import FeatureAdapter, check_flag


@ADAPTERS.register("linear")
class LinearAdapter(FeatureAdapter):
    """Projects student channels to the teacher's width; the teacher passes unchanged.

    The FitNets regressor: pooled (B, D) vectors and tokens (B, N, D) are projected on the last
    dimension, maps (B, C, H, W) on the channel dimension (a 1x1 convolution). Spatial layout is
    left alone, so both sides must already share it for shape-sensitive losses (use 'patch_match'
    between tokens and maps or across grids).

    Args:
        student: spec of the student feature.
        teacher: spec of the teacher feature.
        bias: whether the projection has a bias.
    """

    passes_teacher = True  # (a reduced teacher side passes too)

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, bias: bool = True) -> None:
        super().__init__(student, teacher)
        check_flag("linear adapter bias", bias)
        self.proj = nn.Linear(student.channels, teacher.channels, bias=bias)

    def forward(self, student: Tensor, teacher: Any) -> tuple[Tensor, Any]:
        channel_dim = 1 if student.dim() == 4 else -1
        if student.shape[channel_dim] != self.proj.in_features:
            raise ValueError(
                f"linear adapter expects {self.proj.in_features} student channels, "
                f"got a feature of shape {tuple(student.shape)}"
            )
        if channel_dim == 1:
            return self.proj(student.movedim(1, -1)).movedim(-1, 1), teacher
        return self.proj(student), teacher
