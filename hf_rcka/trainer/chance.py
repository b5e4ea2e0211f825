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


def at_chance(accuracy: float, n: int, num_classes: int) -> bool:
    """Whether an ``accuracy`` on ``n`` images is no more than one standard error above chance: the
    test that ends a run (the warning's two called a student at 62% on 50 images of 2 classes,
    which did learn, at chance). Never when ``n`` images could not tell even a perfect score from
    chance by the warning's test."""
    chance, threshold = chance_threshold(num_classes, n)
    return threshold < 1.0 and accuracy <= chance + (threshold - chance) / 2


# A cross-entropy this close to a uniform guess's (ln C) is a student that fitted next to nothing,
# whatever its accuracy: a collapsed one answering a few classes scored 19% on 10 balanced classes
# (2.29 nats for ln 10 = 2.30), above the accuracy test's threshold on 540 images.
_NEAR_UNIFORM = 0.9


def slow_average(live_accuracy: float | None, n: int, num_classes: int, decay: float,
                 steps: int) -> tuple[str, str] | None:
    """Why an exported weight average (``model_ema_export``, without warm-up) can be at chance while
    the trained weights (``live_accuracy``) are not: with a decay too slow for the run it is still
    mostly its first step's weights (0.9998 over 60 steps keeps 99% of them). ``(cause, fix)``, or
    None when the trained weights are at chance too (the usual advice holds then)."""
    if live_accuracy is None or steps <= 0 or at_chance(live_accuracy, n, num_classes):
        return None
    cause = (f"the trained weights score eval_live_accuracy {live_accuracy:.3f}: the export is their average "
             f"(model_ema_export), and with model_ema_decay {decay:g} over {steps:,} optimizer steps it still holds "
             f"{decay ** steps:.0%} of the first step's weights")
    example = f" (e.g. {1 - 10 / steps:.4g} for {steps:,} steps)" if steps > 20 else ""  # 1 - 10/steps: >= 0.5
    fix = (f"Lower model_ema_decay{example}, set model_ema_warmup: true, or model_ema_export: false to export the "
           "trained weights")
    return cause, fix


def warn_if_student_at_chance(accuracy: float, n: int, num_classes: int, cross_entropy: float | None = None,
                              steps: int | None = None, epochs: float | None = None,
                              average: tuple[str, str] | None = None) -> bool:
    """Say, in a warning the end of a run's log cannot hide, that the trained student scores at
    chance (its accuracy, or its plain cross-entropy when the run has one); True when it does.
    The accuracy says nothing when ``n`` images cannot tell (a tiny set). ``steps`` and ``epochs``:
    how long it trained, which the advice names first (a run cut short by max_steps is the most
    common cause). ``average``: ``slow_average``'s cause and fix, said instead (the trained weights
    learned; their exported average did not follow them)."""
    chance, threshold = chance_threshold(num_classes, n)
    uniform = math.log(num_classes)
    # a few confidently wrong answers cost as much cross-entropy as a uniform guess: only a student
    # that is also wrong more often than halfway from chance to perfect is judged by it
    near_uniform = (cross_entropy is not None and num_classes > 1 and cross_entropy >= _NEAR_UNIFORM * uniform
                    and accuracy < chance + (1.0 - chance) / 2)
    if not near_uniform and (threshold >= 1.0 or accuracy > threshold):
        return False
    entropy = f", eval cross-entropy {cross_entropy:.3f} against ln {num_classes} = {uniform:.3f} for a uniform guess" \
        if cross_entropy is not None else ""
    if average is not None:
        logger.warning("!!! the exported student is at chance (eval_accuracy %.3f, chance %.3f for %d classes, %d "
                       "images%s), but %s. %s", accuracy, chance, num_classes, n, entropy, *average)
        return True
    shown = f"{epochs:.3g}" if epochs else ""
    passes = f" ({shown} epoch{'' if shown == '1' else 's'})" if shown else ""
    trained = (f" It trained {steps:,} optimizer step{'s' if steps != 1 else ''}{passes}: enough for this student? "
               "Then look" if steps else " Look")
    logger.warning("!!! the trained student is at chance (eval_accuracy %.3f, chance %.3f for %d classes, %d images%s): "
                   "it learned nothing usable.%s at the learning rate, and at each distillation term's weight "
                   "against ce's (a term that outweighs the labels can collapse the student's features)", accuracy,
                   chance, num_classes, n, entropy, trained)
    return True


__all__ = ["at_chance", "chance_threshold", "slow_average", "warn_if_student_at_chance"]
