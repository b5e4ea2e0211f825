"""What every loss sees (``LossInputs``), the base class losses share, and where weights apply.

Losses see tensors only. The ``DistillationModel`` runs student and teacher, picks hidden states,
applies adapters and hands the results over in one ``LossInputs``; a loss declares which of its
fields it ``requires`` so the model only computes what is needed (no hidden states for logit-only
recipes, no teacher for plain supervised training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..distributed import gather_rows
from ..functional.cka import min_cka_items
from ..registry import LOSSES

# The label of a row that no loss or metric counts: in an evaluation batch, the stand-in for an
# unreadable image (``data.datasets.collate``). torch's cross_entropy ignores it by default.
IGNORE_INDEX = -100


@dataclass
class LossInputs:
    """Tensors of one training or evaluation batch.

    Attributes:
        student_logits: (B, P) task logits. For a student with a distillation head (DeiT): the
            class head's when a loss trains the distillation head (``deit_token``), otherwise the
            heads' average, the prediction the exported model makes.
        labels: (B,) class indices, or (B, P) soft targets when Mixup/CutMix mixed the batch
            (label smoothing already folded in, as timm does); ``IGNORE_INDEX`` marks a row
            to leave out (``counted_rows``).
        teacher_logits: (B, P), computed without gradients.
        distillation_logits: (B, P) from the student's distillation head (DeiT), if any.
        student_features / teacher_features: one tensor per feature pair, after the pair's adapter.
            A teacher feature is what the loss's ``reduce_teacher_feature`` made of it, when that
            loss reduces it (feature CKA: ``functional.GramSide``), and a student feature what its
            ``reduce_student_feature`` made of it (with the gradient).
        student_pooled / teacher_pooled: (B, d) penultimate features (the classifier's input).

    Teacher tensors keep the precision the teacher computed them in (bf16 or fp16 under
    ``teacher_dtype`` or half-precision autocast): held from the teacher forward to the loss, float32
    copies would double their memory. Upcast them (``functional.upcast``,
    ``functional.numerics.common_dtype``) before mixing them with student tensors in a matmul; every
    built-in loss does.
    """

    student_logits: torch.Tensor
    labels: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    distillation_logits: torch.Tensor | None = None
    student_features: Sequence[Any] = field(default_factory=tuple)
    teacher_features: Sequence[Any] = field(default_factory=tuple)
    student_pooled: torch.Tensor | None = None
    teacher_pooled: torch.Tensor | None = None


    def hard_labels(self) -> torch.Tensor | None:
        """(B,) class indices: the labels, or the dominant class of each mixed soft target.

        For a mixed pair the dominant class is the one with the larger mixing weight; for an
        unmixed (possibly smoothed) target it is the true label.
        """
        if self.labels is None or self.labels.ndim == 1:
            return self.labels
        return self.labels.argmax(dim=-1)

    def counted_rows(self) -> "LossInputs":
        """These inputs without the rows labelled ``IGNORE_INDEX``, or themselves when there are none.

        An evaluation batch keeps its size on every rank by filling an unreadable image's place
        with a copy of a readable one, labelled ``IGNORE_INDEX``; cross-entropy would skip that
        row by itself, but the teacher terms (KD, RCKA, ...) would count the copy twice. Reading
        the labels syncs with the device, so the model calls this in evaluation only.
        """
        if self.labels is None or self.labels.ndim != 1:
            return self
        keep = self.labels != IGNORE_INDEX
        if bool(keep.all()):
            return self
        return LossInputs(**{name: _rows(getattr(self, name), keep) for name in LOSS_INPUT_FIELDS})


LOSS_INPUT_FIELDS = tuple(f.name for f in fields(LossInputs))


def _rows(value: Any, keep: torch.Tensor):
    """The ``keep`` rows of a (B, ...) tensor or a reduced teacher side (which has ``rows``), or of each
    of a tuple of them; None stays None."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[keep]
    if hasattr(value, "rows"):
        return value.rows(keep)
    if isinstance(value, (tuple, list)):
        return tuple(_rows(item, keep) for item in value)
    raise TypeError(f"a {type(value).__name__} in the loss inputs has no rows(keep) method to drop an unreadable "
                    "image's stand-in with: a reduce_teacher_feature or reduce_student_feature result that is not a "
                    "tensor needs one")


@dataclass
class LossContext:
    """Facts about the models a loss may need to build its parameters or state."""

    num_labels: int
    student_pooled_dim: int | None = None
    teacher_pooled_dim: int | None = None


# The methods through which a loss reads its feature pairs: a subclass defining any of them gets the
# teacher's features whole unless it defines reduce_teacher_feature too.
_READS_PAIRS = frozenset({"forward", "term", "terms", "feature_pairs", "rows"})


class DistillationLoss(nn.Module):
    """Base for registered losses: holds the weights and hyperparameters, returns named terms.

    A loss returns the *unweighted* value of each of its terms, keyed by term name, and exposes the
    weight of each term in ``term_weights``; :func:`weigh_terms` applies them in one place. Keeping
    the terms apart lets the trainer log each one (RCKA's intra and inter terms move differently).
    A single-term loss implements :meth:`term` and its term is named after the loss; a loss with
    several terms overrides :meth:`terms` and :attr:`term_weights`.

    Subclasses set ``requires`` (names of ``LossInputs`` fields) and ``feature_alignment``:
    ``"any"`` when feature pairs may differ in shape (batch-relational losses), ``"shape"``
    when student and teacher features must have equal shapes after the adapter, or ``"map"`` when
    they must also be (B, C, H, W) maps (patch CKA). ``channel_mean`` says the loss is a mean of
    per-channel terms, so a random subset of channels estimates it without bias.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"student_logits"})
    feature_alignment: ClassVar[str] = "any"
    channel_mean: ClassVar[bool] = False
    registry_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for reduction in ("reduce_teacher_feature", "reduce_student_feature"):
            if reduction not in vars(cls) and (_READS_PAIRS & set(vars(cls))):
                # a reduction serves the code that reads it: a subclass reading the pairs its own way gets them whole
                setattr(cls, reduction, getattr(DistillationLoss, reduction))
        if not isinstance(cls.requires, (set, frozenset, tuple, list)):
            return  # set per instance (a property): checked when the loss runs
        unknown = sorted(set(cls.requires) - set(LOSS_INPUT_FIELDS))
        if unknown:  # else an AttributeError at the first step
            raise TypeError(f"{cls.__name__}.requires names {unknown}, which are not LossInputs fields: "
                            f"{', '.join(LOSS_INPUT_FIELDS)}")

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not 0 <= weight < math.inf:  # inf or nan: a non-finite loss and gradients from step 1
            raise ValueError(f"loss weight must be >= 0 and finite, got {weight}")
        self.weight = float(weight)

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        """The unweighted value of every term, keyed by term name (see ``term_weights``).

        A loss of one's own that reads a field it does not list in ``requires`` finds it empty (the
        model computes only what some loss requires) and fails on ``None``: the error then says so.
        """
        self.check_inputs(inputs)
        try:
            return self.terms(inputs)
        except (AttributeError, TypeError) as err:
            empty = sorted(name for name in _OPTIONAL_INPUTS - set(self.requires) if _empty(getattr(inputs, name)))
            if empty and "NoneType" in str(err):  # an empty field read: not any error of the loss's own
                err.add_note(f"loss {self.registry_name!r}: {', '.join(empty)} of its LossInputs are empty here, as "
                             f"every field its requires ({sorted(self.requires)}) does not name: list what term() "
                             "reads in requires")
            raise

    def terms(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        """The terms of checked ``inputs``: one, named after the loss, unless a subclass has more."""
        return {self.registry_name: self.term(inputs)}

    def term(self, inputs: LossInputs) -> torch.Tensor:
        """The value of a single-term loss on checked ``inputs`` (a 0-dim tensor)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither term() nor terms()")

    @property
    def term_weights(self) -> dict[str, float]:
        """The weight of every term :meth:`terms` may return, keyed by term name."""
        return {self.registry_name: self.weight}

    def on_epoch_end(self, epoch: int) -> None:
        """React to the end of training epoch ``epoch`` (1 after the first); stateless losses do nothing.

        Called by the trainer on every loss, so a loss with per-epoch state (EKT's class centres)
        needs no other hook into the training loop.
        """

    @property
    def needs_teacher(self) -> bool:
        return reads_teacher(self)

    @property
    def needs_features(self) -> bool:
        return reads_features(self)

    @property
    def needs_pooled(self) -> bool:
        return _reads_either_side(self, "pooled")

    def setup(self, context: LossContext) -> None:
        """Create parameters or state that depend on the models (called once before training)."""

    def reduce_teacher_feature(self, teacher: torch.Tensor) -> Any | None:
        """What this loss reads of one teacher feature, when that is less than the feature, or None
        (the default) to receive the feature whole.

        The model calls it right after the teacher's forward, with the side its adapter prepared,
        so that the teacher's hidden states are not held through the student's forward; the result
        comes back in ``LossInputs.teacher_features``. It is used only when this loss is the only
        one reading feature pairs and the pair's adapter hands the teacher's side on unchanged
        (``FeatureAdapter.passes_teacher``; ``patch_match`` hands on its map on the common grid,
        through ``FeatureAdapter.reduce_teacher``). A result that is not a tensor needs a
        ``rows(keep)`` method, which evaluation uses to drop unreadable images' stand-ins, unless
        the loss reduces in training only (patch CKA's patch Grams mix the batch's images). A subclass that defines
        its own ``forward``, ``term``, ``terms``, ``feature_pairs`` or ``rows`` gets the features whole
        unless it defines this method too.
        """
        return None

    def reduce_student_feature(self, student: torch.Tensor) -> Any | None:
        """What this loss reads of one student feature, when that is less than the feature, or None
        (the default) to receive the feature whole; the result must carry the feature's gradient.

        The model calls it where the student's forward makes the feature (when it can hook the
        module that makes it; else after the forward), with the side its adapter prepared, under
        the same conditions as :meth:`reduce_teacher_feature`, for adapters that hand the student's
        side on unchanged (``FeatureAdapter.passes_student``). Of the backward steps ready to run,
        autograd runs the one created last: a reduction made inside the forward runs its backward,
        which hands back a gradient of the whole feature, where the student's own backward reaches
        that feature, not first thing in the backward, where that gradient would be held through
        the backward of every later layer, at the step's peak.
        """
        return None

    def feature_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why a feature pair whose adapted features have this per-sample ``shape`` would train
        nothing through this loss, or None. Checked when the pairs are planned, so that such a pair
        is refused (or left out of automatic pairing) rather than trained as a constant."""
        return None

    def check_inputs(self, inputs: LossInputs) -> None:
        for name in self.requires:
            if _empty(getattr(inputs, name)):
                raise ValueError(f"loss {self.registry_name!r} needs {name}, which this batch does not have")

    def feature_pairs(self, inputs: LossInputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(student, teacher) feature pairs; a count mismatch is an error that names both counts."""
        student, teacher = tuple(inputs.student_features), tuple(inputs.teacher_features)
        if len(student) != len(teacher):
            raise ValueError(
                f"loss {self.registry_name!r} got {len(student)} student features and {len(teacher)} "
                f"teacher features; every feature pair needs one of each"
            )
        return list(zip(student, teacher))

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


class RelationalLoss(DistillationLoss):
    """Base for batch-relational losses, which can gather rows across data-parallel ranks."""

    def __init__(self, weight: float = 1.0, gather: bool = False) -> None:
        super().__init__(weight)
        self.gather = bool(gather)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return gather_rows(x) if self.gather else x

    @property
    def min_relation_rows(self) -> int:
        """The fewest samples a relation over the batch must hold to be more than a constant (see
        ``functional.cka.min_cka_items``); the trainer refuses smaller batches (``check_relation_rows``).
        """
        return min_cka_items(getattr(self, "center", True), getattr(self, "kernel", "linear"))

    @property
    def sample_relation_terms(self) -> tuple[str, ...]:
        """The terms that relate the batch's samples: constants over fewer than ``min_relation_rows``,
        so an evaluation leaves a batch that small out of their means."""
        return tuple(self.term_weights)


_OPTIONAL_INPUTS = frozenset(f.name for f in fields(LossInputs)) - {"student_logits", "labels"}


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (tuple, list)) and len(value) == 0)


def weigh_terms(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss and the weighted terms: the one place where loss weights are applied.

    Args:
        terms: unweighted term values, as losses return them (every name must be in ``weights``).
        weights: the weight of each term, as ``DistillationLoss.term_weights`` gives them.

    Returns:
        ``(total, weighted)``: the weighted sum of all terms and each weighted term, so logged
        terms add up to the total.
    """
    if not terms:
        raise ValueError("there are no loss terms to weigh")
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"loss terms {missing} have no weight (weights are given for {sorted(weights)})")
    for name, value in terms.items():
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"loss term {name!r} must be a 0-dim tensor (reduce it over the batch), got {shape}")
    weighted = {name: weights[name] * value for name, value in terms.items()}
    return torch.stack(list(weighted.values())).sum(), weighted


def reads_teacher(loss: DistillationLoss | type[DistillationLoss]) -> bool:
    """Whether a loss (or loss class) reads anything of the teacher's, so the run needs one."""
    return any(name.startswith("teacher") for name in loss.requires)


def reads_teacher_logits(loss: DistillationLoss | type[DistillationLoss]) -> bool:
    """Whether a loss (or loss class) reads the teacher's logits: then the teacher's classes must be
    the run's, in its order; a loss reading only features works with a teacher of other classes."""
    return "teacher_logits" in loss.requires


def reads_features(loss: DistillationLoss | type[DistillationLoss]) -> bool:
    """Whether a loss (or loss class) reads feature pairs, on either side."""
    return _reads_either_side(loss, "features")


def _reads_either_side(loss: DistillationLoss | type[DistillationLoss], what: str) -> bool:
    """Whether ``loss`` requires ``student_<what>`` or ``teacher_<what>``: a loss reading the
    teacher's side alone needs the same capture as one reading both."""
    return bool({f"student_{what}", f"teacher_{what}"} & set(loss.requires))


LOSSES.base = DistillationLoss  # a class registered as a loss must be one (see Registry._check_new)
