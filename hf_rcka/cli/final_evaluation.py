"""The final evaluation of a training run, without evaluating the same weights twice.

Trainer evaluates at the last step whenever ``eval_strategy`` is not ``no`` (``epoch``: at the
last epoch's end; ``steps``: at ``max_steps`` too since transformers 5), and the command line's
final evaluation then ran the whole evaluation set again on the same weights (or on the best
checkpoint's, evaluated at its step, after ``load_best_model_at_end``): a second teacher and
student pass over ImageNet's validation set at the end of every DeiT recipe, two identical
``eval_*`` points at one step in TensorBoard, and two evaluation tables in the log.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import Trainer, TrainerCallback

from ..trainer.checkpoint_folders import checkpoint_step

logger = logging.getLogger(__name__)


class LastEvaluation(TrainerCallback):
    """Keeps the metrics of the evaluations this process ran, step by step (one per set of a dict
    ``eval_dataset``, merged), as ``Trainer.evaluate`` returned them."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, Any]] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: D102
        self.by_step.setdefault(state.global_step, {}).update(metrics or {})


def final_evaluation(trainer: Trainer, last: LastEvaluation | None) -> dict[str, Any]:
    """``trainer.evaluate()``, or the metrics of the evaluation Trainer ran of the weights the
    model holds: the last step's, or the best checkpoint's that ``load_best_model_at_end`` loaded.

    Only this process's evaluations count (a run resumed from the checkpoint that is final or best
    evaluates, as its evaluation set may have changed). Evaluating the best weights again also sent
    trackers a second ``eval_*`` point at the last step, which measured the best step's weights.
    """
    step = _step_of_the_weights(trainer)
    if last is None or step not in last.by_step:
        return trainer.evaluate()
    logger.info("final evaluation: the evaluation at step %d was of these weights; its metrics are the final ones",
                step)
    metrics = dict(last.by_step[step])
    if "epoch" in metrics:  # as evaluate() says it, the run's epoch (all_results.json merges it with training's)
        metrics["epoch"] = state_epoch if (state_epoch := trainer.state.epoch) is not None else metrics["epoch"]
    return metrics


def _step_of_the_weights(trainer: Trainer) -> int | None:
    state = trainer.state
    if not getattr(trainer, "best_model_loaded", False):
        return state.global_step
    return checkpoint_step(state.best_model_checkpoint)


__all__ = ["LastEvaluation", "final_evaluation"]
