"""Top-1 / top-5 accuracy for ``compute_metrics``, computed locally, the names an evaluation
reports, and the check of ``metric_for_best_model`` against them.

``evaluate.load("accuracy")`` downloads its script from the Hub, which fails offline; accuracy
over argmax needs no download.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import numpy as np
import torch
from transformers import EvalPrediction

from ..errors import DataError, RecipeError
from ..losses import IGNORE_INDEX, DistillationLoss
from ..registry import close_matches

# Name endings of what Trainer adds to an evaluation (``runtime``, ``ema_model_preparation_time``...):
# they time the run, they do not measure the model.
TIMING_METRICS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


def accuracy_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """``accuracy`` always; ``top5_accuracy`` when there are more than 5 classes.

    Rows labelled ``IGNORE_INDEX`` are not counted: an evaluation batch fills an unreadable
    image's place with a copy of a readable one under that label (``data.datasets.collate``).
    """
    logits = eval_pred.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    labels = np.asarray(eval_pred.label_ids).reshape(-1)
    counted = labels != IGNORE_INDEX
    logits, labels = np.asarray(logits)[counted], labels[counted]
    _check_class_ids(labels, logits.shape[-1] if logits.ndim > 1 else None, "evaluated label(s)")
    if logits.ndim == 1:  # class ids already: preprocess_logits_for_metrics took the argmax to save memory
        return {"accuracy": float((logits == labels).mean())}
    metrics = {"accuracy": float((logits.argmax(-1) == labels).mean())}
    if logits.shape[-1] > 5:
        metrics["top5_accuracy"] = float((_label_ranks(logits, labels) < 5).mean())
    return metrics


def _label_ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each label's place in its row's ranking (0: the argmax), ties ranked as ``argmax`` ranks them
    (the lower class id first) and NaN as +inf, without a sort: sorting every row took
    4.7 s at ImageNet's 50k x 1000, on every process, at every evaluation."""
    scores = np.where(np.isnan(logits), np.inf, logits)
    label_scores = np.take_along_axis(scores, labels[:, None], axis=-1)
    earlier = np.arange(scores.shape[-1]) < labels[:, None]
    return ((scores > label_scores) | ((scores == label_scores) & earlier)).sum(axis=-1)


class CheckedClassIds:
    """A collator whose batches' labels are checked against the student's classes on the CPU,
    before the forward: ``ce`` (any loss that reads the labels) failed on a label the student has
    no class for (a test split's -1, a fourth class for a 3-class student) with ``IndexError:
    Target -1 is out of bounds`` (a device-side assert on a GPU), before the metrics could say
    what it was. One min and max per batch; rows labelled ``IGNORE_INDEX`` are left out, as the
    losses leave them out."""

    def __init__(self, collator: Callable[[list], Any], num_classes: int) -> None:
        self.collator = collator
        self.num_classes = num_classes

    def __call__(self, examples: list) -> Any:
        batch = self.collator(examples)
        labels = batch.get("labels") if isinstance(batch, Mapping) else None
        # class ids (soft targets are floats) that a collator left on the host: read there, with no
        # device value read back (a caller's collator that moved them is not checked)
        if (isinstance(labels, torch.Tensor) and labels.ndim == 1 and not labels.is_floating_point()
                and labels.device.type == "cpu"):
            ids = labels.numpy()
            counted = ids[ids != IGNORE_INDEX]
            if counted.size and (counted.min() < 0 or counted.max() >= self.num_classes):
                _check_class_ids(counted, self.num_classes, "label(s) of a batch")
            if labels.dtype != torch.int64:  # int32 or uint8 ids (a caller's collator): cross-entropy
                batch["labels"] = labels.long()  # takes int64 targets alone, and failed at the first step
        return batch


def _check_class_ids(labels: np.ndarray, num_classes: int | None, counted: str) -> None:
    """Labels the student has no class for would score as misses (a test split's -1, "no label",
    read as an accuracy of 0.0), or fail the losses that read them (``CheckedClassIds``)."""
    bad = labels[(labels < 0) | (labels >= (num_classes if num_classes is not None else np.inf))]
    if not bad.size:
        return
    shown = ", ".join(str(v) for v in np.unique(bad)[:5])
    classes = f"the student's {num_classes} classes" if num_classes is not None else "the student's classes"
    if (bad < 0).any():
        fix = ("-1 marks an unlabelled image (a test split): predict without labels (dataset.remove_columns('labels')), "
               f"or give the labels as ids of the student's classes (ignored rows: {IGNORE_INDEX})")
    else:  # more classes in the data than the student's head has
        fix = ("give the student a head for every class of the data (num_labels and id2label of its classes), or map "
               "the labels onto the student's classes")
    raise DataError(f"{bad.size} {counted} ({shown}) are no class id of {classes}: {fix}")


def is_reported(metric: str, names: Collection[str]) -> bool:
    """Whether ``metric_for_best_model`` names one of ``names`` (as ``evaluation_metric_names``
    gives them), with or without the ``eval_`` prefix, or a timing every evaluation reports."""
    return metric.removeprefix("eval_") in names or metric.endswith(TIMING_METRICS)


def evaluation_metric_names(loss_terms: Iterable[str], args: Any, num_labels: int | None = None,
                            student_terms: Iterable[str] = ()) -> list[str]:
    """Every model metric a ``DistillationTrainer`` evaluation reports, without the ``eval_`` prefix.

    So that ``metric_for_best_model`` can be checked before anything loads: transformers looks it
    up only after the first evaluation, where a typo is a ``KeyError`` that ends the run.

    Args:
        loss_terms: the term names of the configured losses (``ce``, ``rcka_intra``...); each is
            reported as ``<term>_loss``, next to Trainer's ``loss``.
        args: the training arguments; with ``model_ema`` the other weight set is reported too,
            ``ema_*`` (or ``live_*`` with ``model_ema_export``): its accuracies and ``student_terms``.
        num_labels: the number of classes; ``top5_accuracy`` needs more than 5 (see
            ``accuracy_metrics``); ``None`` (not known yet) counts it in.
        student_terms: the terms of the losses that do not read the teacher, the only ones the
            other weight set reports (it is evaluated without the teacher).
    """
    accuracies = ["accuracy"]
    if num_labels is None or num_labels > 5:
        accuracies.append("top5_accuracy")
    names = [*accuracies, "loss", *(f"{term}_loss" for term in loss_terms)]
    if getattr(args, "model_ema", False):
        other = "live" if getattr(args, "model_ema_export", False) else "ema"
        total = ["loss"] if set(student_terms) == set(loss_terms) else []  # no teacher term left out
        names += [f"{other}_{name}" for name in (*accuracies, *total, *(f"{term}_loss" for term in student_terms))]
    return names


def check_metric_for_best_model(args: Any, losses: Iterable[DistillationLoss], num_labels: int | None = None,
                                unweighted: Sequence[str] = (), eval_sets: Iterable[str] | None = None) -> None:
    """``args.metric_for_best_model`` must name a metric the evaluation reports, with or without ``eval_``.

    Transformers looks it up only after the first evaluation: a typo (``acuracy``) ends the run
    there with a ``KeyError`` traceback. The command line checks a recipe with this before the data
    and models load, and the trainer checks what Python callers pass; one function, so both say
    the same.

    Args:
        args: the training arguments (``metric_for_best_model``, and ``model_ema`` for the names).
        losses: the losses the model computes; each reports its terms as ``<term>_loss``.
        num_labels: the number of classes; ``None`` (before the data has loaded) lets
            ``top5_accuracy`` pass.
        unweighted: the names of losses at weight 0, which are not computed, so that the error
            says why their terms are missing.
        eval_sets: the names of several evaluation sets (a dict of them), for which Trainer
            reports ``eval_<name>_<metric>``.

    Raises:
        RecipeError: the metric is not reported, with the closest names and, where it applies, why
            (a term the loss's options leave out, a loss at weight 0, too few classes for top-5).
    """
    metric = getattr(args, "metric_for_best_model", None)
    if not metric:
        return
    losses = list(losses)
    terms = [term for loss in losses for term in loss.term_weights]
    student_terms = [term for loss in losses if not loss.needs_teacher for term in loss.term_weights]
    names = _per_set(evaluation_metric_names(terms, args, num_labels, student_terms), eval_sets)
    if is_reported(metric, names):  # timings: of any weight set
        _check_best_weights(args, metric)
        return
    prefix = "eval_" if metric.startswith("eval_") else ""
    if is_reported(metric, _per_set(evaluation_metric_names(terms, args, None, student_terms), eval_sets)):
        raise RecipeError(f"metric_for_best_model {metric!r}: top5_accuracy is reported only with more than 5 "
                          f"classes, and this dataset has {num_labels}: use "
                          f"{metric.replace('top5_accuracy', 'accuracy')}")
    default = (" (Trainer's default with load_best_model_at_end: with several evaluation sets, name one set's "
               "metric)" if metric == "loss" and eval_sets else "")
    raise RecipeError(f"metric_for_best_model {metric!r}{default} is not a metric the evaluation reports"
                      f"{_terms_reported(metric[len(prefix):], losses, unweighted)}: "
                      f"{close_matches(metric, [prefix + name for name in names])}")


def _check_best_weights(args: Any, metric: str) -> None:
    """``load_best_model_at_end`` loads the best checkpoint's exported weights (the live ones, or
    the average with ``model_ema_export``): a metric of the other weight set would choose them by
    a score they never had, and the card would call them the best evaluation."""
    if not getattr(args, "load_best_model_at_end", False) or not getattr(args, "model_ema", False):
        return
    other = "live" if getattr(args, "model_ema_export", False) else "ema"
    name = metric.removeprefix("eval_")
    if not name.startswith(f"{other}_") and f"_{other}_" not in name:
        return
    exported = "average (model_ema_export: true)" if other == "live" else "live weights"
    fix = ("set model_ema_export: false to export the live weights" if other == "live"
           else "set model_ema_export: true to export the average")
    raise RecipeError(f"metric_for_best_model {metric!r} scores the {other} weights, but load_best_model_at_end "
                      f"loads the best checkpoint's {exported}, which that score did not measure: {fix}, or "
                      f"choose by {metric.replace(f'{other}_', '', 1)!r}")


def _per_set(names: list[str], eval_sets: Iterable[str] | None) -> list[str]:
    """``names`` as Trainer reports them for each of several named evaluation sets."""
    return [f"{key}_{name}" for key in eval_sets for name in names] if eval_sets is not None else names


def _terms_reported(name: str, losses: Sequence[DistillationLoss], unweighted: Sequence[str] = ()) -> str:
    """For a name shaped like a term of a configured loss, the terms that loss reports.

    A loss's options can leave a term out (``rcka`` with ``intra_weight: 0`` computes no
    ``rcka_intra``), and a loss at weight 0 is not computed at all; without this the error would
    not say why a term the loss has is missing.
    """
    weights = next((w for w in ("ema_", "live_") if name.startswith(w)), "")  # the other weight set's copy
    without_teacher = f" (the {weights[:-1]} weights are evaluated without the teacher, so"
    if weights and name == f"{weights}loss":
        return f"{without_teacher} no total loss is reported for them)"
    for loss_name in unweighted:
        if name.startswith(f"{weights}{loss_name}_") and name.endswith("_loss"):
            return f" (loss {loss_name!r} has weight 0, so it is not computed)"
    for loss in losses:
        if name.startswith(f"{weights}{loss.registry_name}_") and name.endswith("_loss"):
            if weights and loss.needs_teacher:
                return f"{without_teacher} loss {loss.registry_name!r}, which reads the teacher, is not reported for them)"
            reported = ", ".join(f"{weights}{term}_loss" for term in loss.term_weights)
            return f" (with these options, loss {loss.registry_name!r} reports only {reported})"
    return ""
