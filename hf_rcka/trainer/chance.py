"""Accuracy near chance: within two binomial standard errors of guessing one of C classes.

The teacher is checked on one batch before distilling from it (``teacher_check``); the trained
student is checked on the final evaluation, because a run whose student learned nothing still
ends with exit 0, a saved model and a card (a distillation term that outweighs the labels can
collapse the student's features across the batch while every logged loss keeps falling).
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)


def chance_threshold(num_classes: int, n: int) -> tuple[float, float]:
    """Chance (1 / C) and the accuracy at or below which ``n`` images cannot tell a model from
    it; the threshold is 1.0 or more when even a perfect score could be chance."""
    chance = 1.0 / num_classes
    if n <= 0:
        return chance, 1.0
    return chance, chance + 2.0 * math.sqrt(chance * (1.0 - chance) / n)


def warn_if_student_at_chance(accuracy: float, n: int, num_classes: int) -> bool:
    """Say, in a warning the end of a run's log cannot hide, that the trained student scores at
    chance; True when it does. Nothing is said when ``n`` images cannot tell (a tiny set)."""
    chance, threshold = chance_threshold(num_classes, n)
    if threshold >= 1.0 or accuracy > threshold:
        return False
    logger.warning("!!! the trained student's eval_accuracy %.3f is at chance (%.3f for %d classes, %d images): it "
                   "learned nothing usable. Look at its logged ce_loss (near ln %d = %.2f, it never fitted the "
                   "labels), the learning rate, and each distillation term's weight against ce's", accuracy, chance,
                   num_classes, n, num_classes, math.log(num_classes))
    return True


__all__ = ["chance_threshold", "warn_if_student_at_chance"]
