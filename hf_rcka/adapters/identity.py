"""The 'identity' adapter: features pass unchanged."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..registry import ADAPTERS
from .base import FeatureAdapter


@ADAPTERS.register("identity")
class IdentityAdapter(FeatureAdapter):
    """Returns both features as they are.

    Enough for batch-relational losses (RCKA, feature CKA): they flatten each sample to one row,
    so the two sides may differ in layout, grid and width, and no parameters are needed. Tokens
    pass with whatever prefix the model hands out: a transformers ViT's hidden states keep their
    class (distillation, register) tokens, while timm's ``forward_intermediates`` maps have none.
    """

    passes_teacher = True  # (a reduced teacher side passes too)
    passes_student = True  # (and a reduced student side)

    def forward(self, student: Tensor, teacher: Any) -> tuple[Tensor, Any]:
        return student, teacher
