"""The final evaluation of a training run, without evaluating the same weights twice.

Trainer evaluates at the last step whenever ``eval_strategy`` is not ``no`` (``epoch``: at the
last epoch's end; ``steps``: at ``max_steps`` too since transformers 5), and the command line's
final evaluation then ran the whole evaluation set again on the same weights: a second teacher and
student pass over ImageNet's validation set at the end of every DeiT recipe, two identical
``eval_*`` points at one step in TensorBoard, and two evaluation tables in the log.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import Trainer, TrainerCallback

logger = logging.getLogger(__name__)


class LastEvaluation(TrainerCallback):
    """Keeps the metrics of the evaluations this process ran at the latest step (one per set of
    a dict ``eval_dataset``, merged), as ``Trainer.evaluate`` returned them."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.metrics: dict[str, Any] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: D102
        if state.global_step != self.step:
            self.step, self.metrics = state.global_step, {}
        self.metrics.update(metrics or {})


def final_evaluation(trainer: Trainer, last: LastEvaluation | None) -> dict[str, Any]:
    """``trainer.evaluate()``, or the metrics of the evaluation Trainer ran at the final step when
    the model holds the weights it evaluated.

    Only this process's evaluations count (a run resumed from its final checkpoint evaluates, as
    its evaluation set may have changed), and not after ``load_best_model_at_end``, which may have
    loaded an earlier checkpoint's weights.
    """
    state = trainer.state
    if (last is None or last.step != state.global_step or not last.metrics
            or trainer.args.load_best_model_at_end):
        return trainer.evaluate()
    logger.info("final evaluation: the evaluation at the last step (%d) was of these weights; its metrics are "
                "the final ones", state.global_step)
    return dict(last.metrics)


__all__ = ["LastEvaluation", "final_evaluation"]
