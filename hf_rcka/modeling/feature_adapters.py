"""One adapter per feature pair, chosen and sized from the two models' probed hidden states.

The pairs say which hidden states meet (:mod:`..features.pairing`); this module decides what
``adapter: auto`` means for the losses at hand and builds each adapter for the exact layouts,
widths and grids of its two states, so the model wrapper only holds the result.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..adapters import build_adapter
from ..adapters.base import FeatureAdapter
from ..errors import RecipeError
from ..features.layout import FeatureSpec
from ..features.pairing import FeaturePair, choose_pairs
from ..losses import DistillationLoss, per_channel_losses

logger = logging.getLogger(__name__)


def build_feature_adapters(
    feature_pairs: str | Sequence[Mapping[str, Any] | FeaturePair] | None,
    student_specs: Sequence[FeatureSpec],
    teacher_specs: Sequence[FeatureSpec],
    alignment: str,
    channel_mean: bool = False,
    problem: Callable[[tuple[int, ...]], str | None] | None = None,
) -> tuple[list[FeaturePair], nn.ModuleList]:
    """The resolved pairs (concrete adapter names, non-negative indices) and their adapters.

    Args:
        feature_pairs: ``"auto"``/``None``, recipe mappings or :class:`FeaturePair` objects.
        student_specs / teacher_specs: every hidden state of each model, as probed.
        alignment: what the strictest feature loss needs after the adapter: ``"any"``
            (batch-relational losses), ``"shape"`` (element-wise, FitNet-style: equal shapes) or
            ``"map"`` (equal (B, C, H, W) maps, patch CKA). ``auto`` then projects and resamples.
        channel_mean: every feature loss is a mean of per-channel terms (patch CKA, FitNets), so
            ``patch_match`` may compare a random subset of the teacher's channels per training
            step: its ``sample_channels`` then defaults to ``"student"``; otherwise it is refused.
        problem: given the per-sample shape of a pair's adapted features (losses that need equal
            shapes), why a feature loss would train nothing on it, or None
            (``DistillationLoss.feature_problem``). Such a pair is refused, or left out of
            automatic pairing with a warning.

    Raises:
        RecipeError: a recipe's adapter that cannot give what the losses need, or a pair the
            losses cannot learn from, found here rather than at the first training step.
    """
    needs_shape = alignment != "any"
    automatic = feature_pairs is None or feature_pairs == "auto"
    pairs, adapters, seen = [], nn.ModuleList(), {}
    for i, pair in enumerate(choose_pairs(feature_pairs, student_specs, teacher_specs)):
        s, t = pair.student_layer, pair.teacher_layer
        if (s, t) in seen:  # it would count twice in every feature loss's sum
            raise RecipeError(f"feature_pairs[{i}] pairs student hidden state {s} with teacher hidden state {t}, as "
                              f"feature_pairs[{seen[s, t]}] already does (negative indices count from the end): "
                              "list each pair once")
        seen[s, t] = i
        name, options = adapter_choice(pair, needs_shape)
        if name == "patch_match":
            options = _channel_sampling(f"feature_pairs[{i}]", options, channel_mean)
        adapter = build_adapter(name, student_specs[s], teacher_specs[t], **options)
        _check_teacher_side(f"feature_pairs[{i}]", name, adapter, teacher_specs[t])
        if needs_shape:
            shape = _check_alignment(f"feature_pairs[{i}]", name, adapter, student_specs[s], teacher_specs[t], alignment)
            why = problem(shape) if problem is not None else None
            if why is not None and automatic:
                logger.warning("feature pair: student %d %s <-> teacher %d %s left out of the automatic pairs: %s",
                               s, _describe(student_specs[s]), t, _describe(teacher_specs[t]), why)
                continue
            if why is not None:
                raise RecipeError(f"feature_pairs[{i}] (student {s} {_describe(student_specs[s])}, teacher {t} "
                                  f"{_describe(teacher_specs[t])}, via {name}): {why}. Pair a larger hidden state "
                                  "(an earlier stage), or train at a larger image_size")
        adapters.append(adapter)
        pairs.append(FeaturePair(s, t, name, options, pair.reason))
        logger.info(
            "feature pair: student %d %s <-> teacher %d %s via %s%s%s",
            s, _describe(student_specs[s]), t, _describe(teacher_specs[t]), name,
            "".join(f", {k}: {v}" for k, v in options.items()), f" ({pair.reason})" if pair.reason else "",
        )
    if automatic and not pairs:
        raise RecipeError("feature_pairs: auto found no pair of hidden states the feature losses can learn from (see "
                          "the warnings above): list feature_pairs with larger hidden states, or train at a larger "
                          "image_size")
    return pairs, adapters


def adapters_for_losses(
    feature_pairs: str | Sequence[Mapping[str, Any] | FeaturePair] | None,
    student_specs: Sequence[FeatureSpec],
    teacher_specs: Sequence[FeatureSpec],
    losses: Sequence[DistillationLoss],
) -> tuple[list[FeaturePair], nn.ModuleList]:
    """:func:`build_feature_adapters` for what the losses that read the pairs need.

    One definition of the strictest alignment, the channel sampling and the pairs a loss cannot
    learn from, used by the model wrapper once the models have loaded and by the recipe check
    before they do (with the specs of models built without weights), so that both refuse a pair
    with the same line.
    """
    readers = [loss for loss in losses if loss.needs_features]
    needs = {loss.feature_alignment for loss in readers}
    return build_feature_adapters(
        feature_pairs, student_specs, teacher_specs,
        alignment=next((level for level in ("map", "shape") if level in needs), "any"),
        channel_mean=all(loss.channel_mean for loss in readers),
        problem=lambda shape: next(filter(None, (loss.feature_problem(shape) for loss in readers)), None),
    )


def adapter_choice(pair: FeaturePair, needs_shape: bool) -> tuple[str, dict[str, Any]]:
    """'auto' means identity for batch-relational losses, patch_match + projection otherwise."""
    if pair.adapter != "auto":
        return pair.adapter, dict(pair.options)
    if needs_shape:
        return "patch_match", {"project": True, **pair.options}
    if pair.options:
        raise RecipeError(
            f"feature pair options {sorted(pair.options)} are patch_match's, but with these losses (which compare "
            "features of any shape) adapter auto passes features unchanged: drop the options, or set adapter: "
            "patch_match")
    return "identity", {}


def _channel_sampling(where: str, options: dict[str, Any], channel_mean: bool) -> dict[str, Any]:
    """patch_match's ``sample_channels``: the student's width by default for per-channel losses."""
    if channel_mean:
        return {"sample_channels": "student", **options}
    if options.get("sample_channels") is not None:
        raise RecipeError(
            f"{where}: sample_channels compares a random subset of channels, which only estimates losses that average "
            f"over channels ({', '.join(per_channel_losses())}); another feature loss here compares all channels at "
            "once: drop sample_channels"
        )
    return options


def _check_teacher_side(where: str, name: str, adapter: nn.Module, teacher: FeatureSpec) -> None:
    """``prepare_teacher`` runs with the teacher's forward, under ``no_grad``: weights it applies would
    never get a gradient and keep their random start, without a word."""
    if type(adapter).prepare_teacher is FeatureAdapter.prepare_teacher or not any(
            p.requires_grad for p in adapter.parameters()):
        return
    training = adapter.training
    with torch.enable_grad():
        side = adapter.eval().prepare_teacher(torch.zeros(1, *teacher.shape))
    adapter.train(training)
    tensors = list(side) if isinstance(side, (tuple, list)) else [side]
    if any(isinstance(x, torch.Tensor) and x.requires_grad for x in tensors):
        raise RecipeError(f"{where}: adapter {name!r} applies trainable weights in prepare_teacher, which runs with the "
                          "teacher's forward under no_grad: they would never train. Apply them in forward (the "
                          "teacher's side gets no gradient either way; only the student's side should be learned)")


def _check_alignment(where: str, name: str, adapter: nn.Module, student: FeatureSpec, teacher: FeatureSpec,
                     alignment: str) -> tuple[int, ...]:
    """Run ``adapter`` on one zero sample of each side and compare what comes out; returns the
    per-sample shape both sides then have.

    In eval mode: what evaluation compares, and no training-time random draw (channel sampling)
    that would shift the global random stream the next parameters are initialised from.
    """
    training = adapter.training
    with torch.no_grad():
        adapter.eval()  # each side as the model hands it on: through prepare_student / prepare_teacher first
        s, t = adapter(adapter.prepare_student(torch.zeros(1, *student.shape)),
                       adapter.prepare_teacher(torch.zeros(1, *teacher.shape)))
    adapter.train(training)
    if s.shape == t.shape and (alignment == "shape" or s.dim() == 4):
        return tuple(s.shape[1:])
    need = "equal (B, C, H, W) maps" if alignment == "map" else "equal shapes"
    raise RecipeError(
        f"{where}: adapter {name!r} gives student features of shape {tuple(s.shape[1:])} and teacher features of "
        f"shape {tuple(t.shape[1:])}, but the feature losses compare {need}: use adapter: patch_match with "
        "project: true, or adapter: auto"
    )


def _describe(spec: FeatureSpec) -> str:
    stride = f", stride {spec.stride:g}" if spec.stride else ""
    return f"[{spec.layout} {spec.channels}ch {spec.grid[0]}x{spec.grid[1]}{stride}]"


__all__ = ["adapter_choice", "adapters_for_losses", "build_feature_adapters"]
