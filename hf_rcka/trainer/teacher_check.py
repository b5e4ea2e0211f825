"""Is the teacher any good on this data? Checked once, before compute is spent distilling from it.

A teacher fed inputs normalised unlike its training data (or trained on another label set) still
gives confident logits, and the student then learns garbage with no error anywhere. A few hundred
evaluation images are enough to see a teacher at chance (``chance``: within two binomial standard
errors of it).
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Iterable

import torch

from ..errors import TeacherNearChance
from ..losses import IGNORE_INDEX
from .chance import chance_threshold

logger = logging.getLogger(__name__)


# The images the check scores, at least: one batch of 8 (transformers' default evaluation batch)
# could not tell a teacher at 80% on 2 classes from chance half the time, and refused it; 256 images
# tell one at 60% from it.
CHECK_IMAGES = 256


def check_teacher_accuracy(model, pixel_values: torch.Tensor, labels: torch.Tensor, mode: str,
                           gather: Callable[[torch.Tensor], torch.Tensor] | None = None, say: bool = True) -> float:
    """The teacher's top-1 on one batch; near chance, warn (``mode="warn"``) or raise (``"error"``).
    See :func:`judge_teacher`, which takes several batches."""
    return judge_teacher(model, [(pixel_values, labels)], mode, gather, say)


def judge_teacher(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], mode: str,
                  gather: Callable[[torch.Tensor], torch.Tensor] | None = None, say: bool = True) -> float:
    """The teacher's top-1 on ``batches``; near chance, warn (``mode="warn"``) or raise (``"error"``).

    Args:
        model: a ``DistillationModel`` with a teacher (its ``teacher_accuracy`` sees the
            teacher's own inputs, as in training).
        batches: ``(pixel_values, labels)`` evaluation batches, on the model's device, scored one
            at a time; rows labelled ``IGNORE_INDEX`` (stand-ins for unreadable images, repeats
            that even out the last batches) are not counted.
        mode: ``"warn"`` or ``"error"``.
        gather: under data parallelism, the processes' all-gather: every process then judges the
            images of all of them together, so all stop or none does (a process that stopped
            alone left the others waiting on it).
        say: log the result and the warning; with ``gather`` every process judges the same
            numbers, and only the one that logs says them (8 copies of the warning on 8 GPUs).

    Raises:
        TeacherNearChance: when near chance and ``mode`` is ``"error"``.
    """
    correct, n, device = 0.0, 0, None
    for pixel_values, labels in batches:
        counted, device = int((labels != IGNORE_INDEX).sum()), labels.device
        if counted:  # an empty batch's accuracy is NaN
            correct += model.teacher_accuracy(pixel_values, labels) * counted
            n += counted
    if gather is not None:
        counts = gather(torch.tensor([[correct, n]], dtype=torch.float64, device=device)).sum(0)
        correct, n = counts[0].item(), int(round(counts[1].item()))
    accuracy = correct / n if n else float("nan")
    chance, threshold = chance_threshold(model.student.config.num_labels, n)
    if say:
        logger.info("teacher accuracy on %d evaluation images drawn from the set: %.3f (chance %.3f)", n, accuracy, chance)
    if threshold >= 1.0:  # even a perfect teacher is within two standard errors of chance
        if say:
            logger.info("the evaluation set (%d counted images) is too small to tell the teacher from chance", n)
        return accuracy
    if accuracy <= threshold:
        message = (
            f"the teacher's accuracy on {n} evaluation images drawn from the set is {accuracy:.3f}, near chance ({chance:.3f}). "
            f"Is it trained on this label set, and does it get its own normalisation and "
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


__all__ = ["CHECK_IMAGES", "check_teacher_accuracy", "judge_teacher"]
