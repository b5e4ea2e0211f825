"""Top-1 / top-5 accuracy for ``compute_metrics``, computed locally, and the names an evaluation reports.

``evaluate.load("accuracy")`` downloads its script from the Hub, which fails offline; accuracy
over argmax needs no download.
"""

from __future__ import annotations

from typing import Any, Collection, Iterable

import numpy as np
from transformers import EvalPrediction

from ..losses import IGNORE_INDEX

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
    if logits.ndim == 1:  # class ids already: preprocess_logits_for_metrics took the argmax to save memory
        return {"accuracy": float((logits == labels).mean())}
    metrics = {"accuracy": float((logits.argmax(-1) == labels).mean())}
    if logits.shape[-1] > 5:
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        metrics["top5_accuracy"] = float((top5 == labels[:, None]).any(axis=-1).mean())
    return metrics


def is_reported(metric: str, names: Collection[str]) -> bool:
    """Whether ``metric_for_best_model`` names one of ``names`` (as ``evaluation_metric_names``
    gives them), with or without the ``eval_`` prefix, or a timing every evaluation reports."""
    return metric.removeprefix("eval_") in names or metric.endswith(TIMING_METRICS)


def evaluation_metric_names(loss_terms: Iterable[str], args: Any, num_labels: int | None = None) -> list[str]:
    """Every model metric a ``DistillationTrainer`` evaluation reports, without the ``eval_`` prefix.

    So that ``metric_for_best_model`` can be checked before anything loads: transformers looks it
    up only after the first evaluation, where a typo is a ``KeyError`` that ends the run.

    Args:
        loss_terms: the term names of the configured losses (``ce``, ``rcka_intra``...); each is
            reported as ``<term>_loss``, next to Trainer's ``loss``.
        args: the training arguments; with ``model_ema`` every name is reported again for the other
            weight set, ``ema_*`` (or ``live_*`` with ``model_ema_export``).
        num_labels: the number of classes; ``top5_accuracy`` needs more than 5 (see
            ``accuracy_metrics``); ``None`` (not known yet) counts it in.
    """
    names = ["accuracy"]
    if num_labels is None or num_labels > 5:
        names.append("top5_accuracy")
    names += ["loss", *(f"{term}_loss" for term in loss_terms)]
    if getattr(args, "model_ema", False):
        other = "live" if getattr(args, "model_ema_export", False) else "ema"
        names += [f"{other}_{name}" for name in names]
    return names
