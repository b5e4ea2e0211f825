"""Top-1 / top-5 accuracy for ``compute_metrics``, computed locally.

``evaluate.load("accuracy")`` downloads its script from the Hub, which fails offline; accuracy
over argmax needs no download.
"""

from __future__ import annotations

import numpy as np
from transformers import EvalPrediction


def accuracy_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """``accuracy`` always; ``top5_accuracy`` when there are more than 5 classes."""
    logits = eval_pred.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = np.asarray(logits)
    labels = np.asarray(eval_pred.label_ids).reshape(-1)
    metrics = {"accuracy": float((logits.argmax(-1) == labels).mean())}
    if logits.shape[-1] > 5:
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        metrics["top5_accuracy"] = float((top5 == labels[:, None]).any(axis=-1).mean())
    return metrics
