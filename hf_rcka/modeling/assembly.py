"""Build a ``DistillationModel`` from training arguments: which losses, built how, with which pairs.

Kept apart from the trainer so the command line (which checks a recipe's losses before anything
loads) and the trainer (which trains what was built) share one definition of the defaults.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from transformers import PreTrainedModel, TrainingArguments

from ..errors import RecipeError
from ..losses import DistillationLoss, reads_teacher_logits
from ..recipe_specs import unused_feature_pairs, weighs_nothing
from ..registry import LOSSES
from .distillation_model import DistillationModel
from .teacher_inputs import InputStats

logger = logging.getLogger(__name__)


def default_losses(has_teacher: bool) -> list[dict[str, Any]]:
    """RCKA on logits (intra/inter 1/1) next to the task loss, or the task loss alone."""
    if not has_teacher:
        return [{"name": "ce", "weight": 1.0}]
    return [{"name": "ce", "weight": 1.0}, {"name": "rcka", "weight": 1.0}]


def run_loss_specs(args: Any, has_teacher: bool) -> list[dict[str, Any]]:
    """The loss specs a run computes before weight-0 ones are left out: ``args.losses``, or the
    defaults for a run with or without a teacher (plain ``TrainingArguments`` have no ``losses``)."""
    return getattr(args, "losses", None) or default_losses(has_teacher)


def active_specs(specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The specs whose weight is not 0: a term at weight 0 adds nothing to the loss, is logged as 0,
    and would still cost its computation (and the teacher's forward, when no other loss needs it)."""
    return [spec for spec in specs if not weighs_nothing(spec)]


def run_reads_teacher_logits(args: Any, loss_names: Sequence[str] | None = None) -> bool:
    """Whether a loss of the run (``loss_names``, or the run's computed ones) reads the teacher's
    logits: then the teacher's classes must be the run's; features alone pair with any classes."""
    if loss_names is None:
        loss_names = [spec["name"] for spec in active_specs(run_loss_specs(args, has_teacher=True))]
    return any(reads_teacher_logits(LOSSES.get(name)) for name in loss_names)


def switched_off(specs: Sequence[dict[str, Any]]) -> list[str]:
    """The names of the losses that :func:`active_specs` leaves out (weight 0)."""
    return [spec["name"] for spec in specs if weighs_nothing(spec)]


def build_losses(specs: Sequence[dict[str, Any]], label_smoothing: float = 0.0) -> list[DistillationLoss]:
    """Instantiate loss specs (checked once, by ``DistillationTrainingArguments``); a loss at weight 0
    is left out (:func:`active_specs`).

    A loss that takes ``label_smoothing`` (``ce``) and whose spec leaves it unset gets the
    trainer's ``label_smoothing_factor``, as plain ``Trainer`` applies it to its own loss.
    """
    check_label_smoothing(specs, label_smoothing)
    specs = [_with_label_smoothing(spec, label_smoothing) for spec in active_specs(specs)]
    if label_smoothing and not any("label_smoothing" in LOSSES.option_names(spec["name"]) for spec in specs):
        logger.warning("label_smoothing_factor %g has no effect: it smooths the task loss (ce), and this run trains "
                       "without one (losses %s)", label_smoothing, [spec["name"] for spec in specs])
    return [LOSSES.build(spec["name"], **{k: v for k, v in spec.items() if k != "name"}) for spec in specs]


def check_label_smoothing(specs: Sequence[dict[str, Any]], label_smoothing: float) -> None:
    """Refuse two values, a loss's own ``label_smoothing`` and another ``label_smoothing_factor``:
    the loss's applied, and the other was recorded beside it as if it had."""
    for spec in active_specs(specs):
        own = spec.get("label_smoothing")
        if own is not None and label_smoothing and float(own) != float(label_smoothing):
            raise RecipeError(f"label_smoothing_factor {label_smoothing:g} and {spec['name']}'s label_smoothing "
                              f"{own:g} disagree ({spec['name']}'s would apply): give one of them")


def _with_label_smoothing(spec: dict[str, Any], label_smoothing: float) -> dict[str, Any]:
    """``spec`` with ``label_smoothing`` spelled out where the loss takes it and the recipe left it unset."""
    if spec.get("label_smoothing") is not None or "label_smoothing" not in LOSSES.option_names(spec["name"]):
        return spec
    return {**spec, "label_smoothing": label_smoothing or None}


def build_distillation_model(
    student: PreTrainedModel | None, teacher: PreTrainedModel | None, args: TrainingArguments,
    student_input: InputStats | None = None, teacher_input: InputStats | None = None,
) -> DistillationModel:
    """The ``DistillationModel`` the trainer trains: ``args``' losses (or the defaults) and feature pairs.

    ``student_input``/``teacher_input`` are each model's normalisation and resolution
    (``input_stats`` of its image processor), so the teacher sees its own inputs.
    """
    if student is None:
        raise ValueError("DistillationTrainer needs a student model")
    specs = run_loss_specs(args, teacher is not None)
    skipped = switched_off(specs)
    if skipped:
        logger.info("losses %s have weight 0 and are not computed", skipped)
    pairs = getattr(args, "feature_pairs", None)  # validated by DistillationTrainingArguments
    if unused_feature_pairs(active_specs(specs), pairs):
        pairs = None  # DistillationTrainingArguments said so when they were built
    # The adapters and the losses' own modules (srd's projector) start from args.seed alone: not
    # from whatever the global random state was after the caller built its models, which would tie
    # them to how the teacher was made and leave them alike across a sweep of seeds. The caller's
    # random state is left as it was. They are built on the CPU, whose generator alone is seeded.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(args.seed)
        return DistillationModel(
            student,
            teacher,
            build_losses(specs, args.label_smoothing_factor),
            feature_pairs=pairs if pairs is not None else "auto",
            student_input=student_input,
            teacher_input=teacher_input if teacher is not None else None,
            teacher_dtype=getattr(args, "teacher_dtype", None),
            teacher_channels_last=getattr(args, "teacher_channels_last", True),
        )

