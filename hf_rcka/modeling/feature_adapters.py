"""One adapter per feature pair, chosen and sized from the two models' probed hidden states.

The pairs say which hidden states meet (:mod:`..features.pairing`); this module decides what
``adapter: auto`` means for the losses at hand and builds each adapter for the exact layouts,
widths and grids of its two states, so the model wrapper only holds the result.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from torch import nn

from ..adapters import build_adapter
from ..features.layout import FeatureSpec
from ..features.pairing import FeaturePair, choose_pairs

logger = logging.getLogger(__name__)


def build_feature_adapters(
    feature_pairs: str | Sequence[Mapping[str, Any] | FeaturePair] | None,
    student_specs: Sequence[FeatureSpec],
    teacher_specs: Sequence[FeatureSpec],
    needs_shape: bool,
) -> tuple[list[FeaturePair], nn.ModuleList]:
    """The resolved pairs (concrete adapter names, non-negative indices) and their adapters.

    Args:
        feature_pairs: ``"auto"``/``None``, recipe mappings or :class:`FeaturePair` objects.
        student_specs / teacher_specs: every hidden state of each model, as probed.
        needs_shape: a feature loss compares states element-wise (FitNet-style), so ``auto``
            must make the student's state the teacher's shape.
    """
    pairs, adapters = [], nn.ModuleList()
    for pair in choose_pairs(feature_pairs, student_specs, teacher_specs):
        s, t = pair.student_layer, pair.teacher_layer
        name, options = adapter_choice(pair, needs_shape)
        adapters.append(build_adapter(name, student_specs[s], teacher_specs[t], **options))
        pairs.append(FeaturePair(s, t, name, options, pair.reason))
        logger.info(
            "feature pair: student %d %s <-> teacher %d %s via %s%s",
            s, _describe(student_specs[s]), t, _describe(teacher_specs[t]), name,
            f" ({pair.reason})" if pair.reason else "",
        )
    return pairs, adapters


def adapter_choice(pair: FeaturePair, needs_shape: bool) -> tuple[str, dict[str, Any]]:
    """'auto' means identity for batch-relational losses, patch_match + projection otherwise."""
    if pair.adapter != "auto":
        return pair.adapter, dict(pair.options)
    if needs_shape:
        return "patch_match", {"project": True, **pair.options}
    return "identity", dict(pair.options)


def _describe(spec: FeatureSpec) -> str:
    stride = f", stride {spec.stride:g}" if spec.stride else ""
    return f"[{spec.layout} {spec.channels}ch {spec.grid[0]}x{spec.grid[1]}{stride}]"


__all__ = ["adapter_choice", "build_feature_adapters"]
