"""Which student hidden state is distilled from which teacher hidden state.

A pair comes from a recipe (``{student_layer, teacher_layer, adapter, **adapter options}``) or
from :func:`auto_feature_pairs`, which picks pairs from two models' :class:`FeatureSpec` lists
(stage ends of hierarchical models, blocks of isotropic ones) so no layer index has to be known
up front. :class:`FeaturePair` is the one definition of a pair: the recipe keys it reserves
(:data:`RESERVED_PAIR_KEYS`) are derived from its fields, so recipe validation and model
construction cannot disagree about which keys are adapter options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from ..errors import LayerIndexError, ModelError
from .layout import FeatureSpec

_NOT_A_RECIPE_KEY = {"recipe_key": False}


@dataclass
class FeaturePair:
    """One student hidden state distilled from one teacher hidden state through an adapter.

    ``student_layer``/``teacher_layer`` index the hidden states (negatives count from the end);
    ``options`` are the adapter's keyword arguments (every other key of a recipe entry);
    ``reason`` says why automatic pairing chose the pair, for the log.
    """

    student_layer: int
    teacher_layer: int
    adapter: str = "auto"
    options: dict[str, Any] = field(default_factory=dict, metadata=_NOT_A_RECIPE_KEY)
    reason: str = field(default="", metadata=_NOT_A_RECIPE_KEY)

    @classmethod
    def from_recipe(cls, entry: Mapping[str, Any]) -> "FeaturePair":
        """A pair from a recipe mapping: reserved keys are fields, the rest adapter options."""
        options = {k: v for k, v in entry.items() if k not in RESERVED_PAIR_KEYS}
        return cls(entry["student_layer"], entry["teacher_layer"], entry.get("adapter", "auto"), options)


RESERVED_PAIR_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(FeaturePair) if f.metadata.get("recipe_key", True)
)
"""Keys of a recipe's feature pair that are not adapter options: ``student_layer``, ``teacher_layer``, ``adapter``."""


def pairs_from_config(feature_pairs: Sequence[Mapping[str, Any] | FeaturePair]) -> list[FeaturePair]:
    """Recipe entries (mappings) or ready :class:`FeaturePair` objects, as pairs."""
    return [p if isinstance(p, FeaturePair) else FeaturePair.from_recipe(p) for p in feature_pairs]


def choose_pairs(
    feature_pairs: str | Sequence[Mapping[str, Any] | FeaturePair] | None,
    student_specs: Sequence[FeatureSpec],
    teacher_specs: Sequence[FeatureSpec],
) -> list[FeaturePair]:
    """The pairs to distil, with non-negative layer indices checked against both models.

    ``"auto"`` (or ``None``) picks them with :func:`auto_feature_pairs`; a list is taken as given.
    """
    if feature_pairs is None or feature_pairs == "auto":
        auto = auto_feature_pairs(student_specs, teacher_specs)
        pairs = [FeaturePair(s, t, "auto", reason=why) for s, t, why in auto]
    else:
        pairs = pairs_from_config(feature_pairs)
    given = feature_pairs is not None and feature_pairs != "auto"
    return [
        FeaturePair(
            resolve_layer(p.student_layer, len(student_specs), "student", _where(i) if given else ""),
            resolve_layer(p.teacher_layer, len(teacher_specs), "teacher", _where(i) if given else ""),
            p.adapter, dict(p.options), p.reason,
        )
        for i, p in enumerate(pairs)
    ]


def check_layer_indices(feature_pairs: Sequence[Mapping[str, Any] | FeaturePair], num_student: int | None,
                        num_teacher: int | None) -> None:
    """Check a recipe's layer indices against each model's number of hidden states, where known.

    Run before the models load, with counts taken from their architectures alone, so that an index
    out of range is the error :func:`choose_pairs` would raise once both had loaded (the same
    line), minutes sooner. A count of None (the architecture could not be built without its
    weights) leaves that side to :func:`choose_pairs`.

    Raises:
        LayerIndexError: naming the first pair (``feature_pairs[i]: ``) with an index out of range.
    """
    for i, pair in enumerate(pairs_from_config(feature_pairs)):
        for index, count, side in ((pair.student_layer, num_student, "student"),
                                   (pair.teacher_layer, num_teacher, "teacher")):
            if count is not None:
                resolve_layer(index, count, side, _where(i))


def _where(i: int) -> str:
    """How an error about a recipe's pair names it."""
    return f"feature_pairs[{i}]: "


def resolve_layer(index: int, num_hidden_states: int, side: str, where: str = "") -> int:
    """Turn a recipe's layer index (negatives count from the end) into a non-negative index.

    Raises:
        LayerIndexError: (an ``IndexError``) if out of range, saying how many hidden states the
            ``side`` model has, after ``where`` (the recipe's pair, ``feature_pairs[i]: ``).
    """
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"{side} layer index must be an int, got {index!r}")
    if num_hidden_states == 0:  # said "valid indices are 0..-1"
        raise LayerIndexError(
            f"{where}{side} layer {index} is out of range: the {side} model has no hidden states to pair (a model "
            f"without blocks, e.g. {side}_config_overrides num_hidden_layers: 0): give it blocks, or distil the "
            "logits only (no feature losses)"
        )
    if not -num_hidden_states <= index < num_hidden_states:
        raise LayerIndexError(
            f"{where}{side} layer {index} is out of range: the {side} model has {num_hidden_states} hidden states, "
            f"valid indices are {-num_hidden_states}..{num_hidden_states - 1}"
        )
    return index % num_hidden_states


# ------------------------------------------------------------------------- automatic pairing


@dataclass(frozen=True)
class _Candidate:
    """A hidden state eligible for pairing: a stage output (hierarchical) or a block (isotropic)."""

    index: int
    position: int
    count: int
    kind: str
    stride: float | None

    @property
    def depth(self) -> float:
        return self.position / self.count

    def describe(self, side: str) -> str:
        stride = f"stride {self.stride:g}" if self.stride else "stride ?"
        return f"{side} {self.kind} {self.position}/{self.count} [hidden state {self.index}] ({stride})"


def auto_feature_pairs(
    student_specs: Sequence[FeatureSpec], teacher_specs: Sequence[FeatureSpec], num_pairs: int = 4
) -> list[tuple[int, int, str]]:
    """Pick (student_layer, teacher_layer, reason) pairs from two models' hidden states.

    Embedding entries are skipped. A hierarchical model (several grids) offers one candidate per
    stage, its last hidden state before the grid changes; an isotropic one (ViT) offers every block.
    The side with fewer candidates picks ``num_pairs`` spread evenly over its depth, always ending
    at the last one (deep features matter most), and each is matched, in order, to the other
    side's candidate with the closest stride when both are hierarchical, or else the closest
    relative depth. Pairs come out shallow to deep with strictly increasing indices.
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    _check_single_branch(student_specs, "student")
    _check_single_branch(teacher_specs, "teacher")
    students, teachers = _candidates(student_specs, "student"), _candidates(teacher_specs, "teacher")
    k = min(num_pairs, len(students), len(teachers))
    by_stride = _hierarchical(students) and _hierarchical(teachers)
    anchor_is_student = len(students) < len(teachers)
    anchors, others = (students, teachers) if anchor_is_student else (teachers, students)
    pairs = []
    previous = -1
    for i, anchor in enumerate(_spread(anchors, k)):
        allowed = others[previous + 1 : len(others) - (k - i) + 1]
        partner = min(allowed, key=lambda c: (_distance(anchor, c, by_stride), -c.position))
        previous = others.index(partner)
        student, teacher = (anchor, partner) if anchor_is_student else (partner, anchor)
        pairs.append((student.index, teacher.index, _reason(student, teacher, by_stride)))
    return pairs


def _check_single_branch(specs: Sequence[FeatureSpec], side: str) -> None:
    """Refuse a multi-branch model: its hidden states are not one sequence of stages.

    CrossViT lists every block of one branch, then every block of the next; read as one
    sequence, a grid change between branches would look like a new stage and the deepest block
    of the first branch like an early stage.

    Raises:
        ModelError: if ``specs`` come from more than one branch, naming each branch's indices.
    """
    branches: dict[int, list[int]] = {}
    for index, spec in enumerate(specs):
        branches.setdefault(spec.branch, []).append(index)
    if len(branches) < 2:
        return
    listing = ", ".join(f"branch {b}: hidden states {ix[0]}-{ix[-1]}" for b, ix in sorted(branches.items()))
    raise ModelError(
        f"feature_pairs: auto cannot pair the {side}'s hidden states: they come from {len(branches)} parallel "
        f"branches listed one after the other ({listing}), not from one sequence of stages. List "
        f"feature_pairs explicitly, with {side} layers from the branch you mean, or distil the logits only "
        f"(no feature losses)"
    )


def _candidates(specs: Sequence[FeatureSpec], side: str) -> list[_Candidate]:
    if not specs:  # a ViT of num_hidden_layers: 0: a traceback after both models had loaded
        raise ModelError(f"feature_pairs: auto finds no hidden state of the {side}'s to pair (a model without blocks, "
                         f"e.g. {side}_config_overrides num_hidden_layers: 0): give it blocks, or distil the logits "
                         "only (no feature losses)")
    usable = [i for i, s in enumerate(specs) if not s.is_embedding] or list(range(len(specs)))
    grids = [specs[i].grid for i in usable]
    if len(set(grids)) > 1:  # stage ends: the last entry before the grid changes
        chosen = [i for n, i in enumerate(usable) if n + 1 == len(usable) or grids[n] != grids[n + 1]]
        kind = "stage"
    else:
        chosen, kind = usable, "block"
    return [_Candidate(i, n + 1, len(chosen), kind, specs[i].stride) for n, i in enumerate(chosen)]


def _hierarchical(candidates: list[_Candidate]) -> bool:
    return candidates[0].kind == "stage" and all(c.stride for c in candidates)


def _spread(candidates: list[_Candidate], k: int) -> list[_Candidate]:
    """k candidates spread evenly over depth, the last one always included."""
    n = len(candidates)
    return [candidates[math.ceil((i + 1) * n / k) - 1] for i in range(k)]


def _distance(a: _Candidate, b: _Candidate, by_stride: bool) -> tuple[float, float]:
    depth = abs(a.depth - b.depth)
    if by_stride:
        return abs(math.log2(a.stride / b.stride)), depth
    return depth, 0.0


def _reason(student: _Candidate, teacher: _Candidate, by_stride: bool) -> str:
    if by_stride:
        why = "closest stride" if student.stride != teacher.stride else "same stride"
    else:
        why = f"closest relative depth ({student.depth:.2f} vs {teacher.depth:.2f})"
    return f"{student.describe('student')} <-> {teacher.describe('teacher')}: {why}"


__all__ = [
    "RESERVED_PAIR_KEYS",
    "FeaturePair",
    "auto_feature_pairs",
    "check_layer_indices",
    "choose_pairs",
    "pairs_from_config",
    "resolve_layer",
]
