"""Top-1 / top-5 accuracy for ``compute_metrics``, computed locally.

``evaluate.load("accuracy")`` downloads its script from the Hub, which fails offline; accuracy
over argmax needs no download.
"""

from __future__ import annotations

import numpy as np
from transformers import EvalPrediction

from ..losses import IGNORE_INDEX


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
    metrics = {"accuracy": float((logits.argmax(-1) == labels).mean())}
    if logits.shape[-1] > 5:
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        metrics["top5_accuracy"] = float((top5 == labels[:, None]).any(axis=-1).mean())
    return metrics
