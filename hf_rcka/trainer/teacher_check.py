"""Is the teacher any good on this data? Checked once, before compute is spent distilling from it.

A teacher fed inputs normalised unlike its training data (or trained on another label set) still
gives confident logits, and the student then learns garbage with no error anywhere. One eval
batch is enough to see a teacher at chance (``chance``: within two binomial standard errors of it).
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import torch

from ..errors import TeacherNearChance
from ..losses import IGNORE_INDEX
from .chance import chance_threshold

logger = logging.getLogger(__name__)


def check_teacher_accuracy(model, pixel_values: torch.Tensor, labels: torch.Tensor, mode: str,
                           gather: Callable[[torch.Tensor], torch.Tensor] | None = None, say: bool = True) -> float:
    """The teacher's top-1 on one batch; near chance, warn (``mode="warn"``) or raise (``"error"``).

    Args:
        model: a ``DistillationModel`` with a teacher (its ``teacher_accuracy`` sees the
            teacher's own inputs, as in training).
        pixel_values / labels: one evaluation batch, on the model's device; rows labelled
            ``IGNORE_INDEX`` (stand-ins for unreadable images) are not counted.
        mode: ``"warn"`` or ``"error"``.
        gather: under data parallelism, the processes' all-gather: every process then judges the
            first batches of all of them together, so all stop or none does (a process that
            stopped alone left the others waiting on it).
        say: log the result and the warning; with ``gather`` every process judges the same
            numbers, and only the one that logs says them (8 copies of the warning on 8 GPUs).

    Raises:
        TeacherNearChance: when near chance and ``mode`` is ``"error"``.
    """
    accuracy = model.teacher_accuracy(pixel_values, labels)
    n = int((labels != IGNORE_INDEX).sum())
    if gather is not None:
        correct = accuracy * n if n else 0.0  # an empty batch's accuracy is NaN
        counts = gather(torch.tensor([[correct, n]], dtype=torch.float64, device=labels.device)).sum(0)
        n = int(round(counts[1].item()))
        accuracy = counts[0].item() / n if n else accuracy
    chance, threshold = chance_threshold(model.student.config.num_labels, n)
    if say:
        logger.info("teacher accuracy on an eval batch drawn from the set: %.3f (chance %.3f)", accuracy, chance)
    if threshold >= 1.0:  # even a perfect teacher is within two standard errors of chance
        if say:
            logger.info("the eval batch (%d counted images) is too small to tell the teacher from chance; "
                        "a larger per_device_eval_batch_size makes the check meaningful", n)
        return accuracy
    if accuracy <= threshold:
        message = (
            f"the teacher's accuracy on an eval batch drawn from the set is {accuracy:.3f}, near chance ({chance:.3f}, "
            f"n={n}). Is it trained on this label set, and does it get its own normalisation and "
            f"resolution (pass teacher_processor)? Distilling from it teaches the student garbage. "
            + ("Set teacher_accuracy_check: warn to train from it anyway." if mode == "error" else
               "Set teacher_accuracy_check: off to skip this check.")
        )
        if mode == "error":
            raise TeacherNearChance(message)
        if say:
            warnings.warn(message, stacklevel=3)
            logger.warning("!!! %s", message)
    return accuracy


__all__ = ["check_teacher_accuracy"]
