"""Trainer's progress bars, as a resumed run and an evaluation of two weight sets need them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers.trainer_callback import ProgressCallback


class ResumedProgress(ProgressCallback):
    """Trainer's training bar, opened at the step a resumed run starts from.

    Trainer's opens at 0 and jumps to the resumed step at the first step's end: tqdm then counts
    those steps as done in no time (758 it/s, "ETA 00:00" with half the run to go) and, with its
    dynamic redraw interval, stays silent for seconds.
    """

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None and state.global_step:
            from tqdm.auto import tqdm

            self.training_bar.close()
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)
        self.current_step = state.global_step


def use_resumed_progress(callback_handler: Any) -> None:
    """Put ``ResumedProgress`` in place of Trainer's own training bar (a notebook's is left alone)."""
    callbacks = callback_handler.callbacks
    for i, callback in enumerate(callbacks):
        if type(callback) is ProgressCallback:  # in its place: the callbacks run in order
            callbacks[i] = ResumedProgress(callback.max_str_len)


def close_evaluation_bars(callbacks: Iterable[Any]) -> None:
    """Close the evaluation progress bar of Trainer's ``ProgressCallback`` (and the notebook's),
    which opens one at an evaluation's first batch and closes it only when the whole evaluation ends."""
    for callback in callbacks:
        bar = getattr(callback, "prediction_bar", None)
        if bar is not None and callable(getattr(bar, "close", None)):
            bar.close()
            callback.prediction_bar = None


__all__ = ["ResumedProgress", "close_evaluation_bars", "use_resumed_progress"]
