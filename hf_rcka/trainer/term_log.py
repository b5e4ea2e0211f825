"""The per-term losses logged next to Trainer's ``loss``: weighted sums between logs, averaged over processes."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from transformers import TrainerCallback


class LossTermLog(TrainerCallback):
    """Each term's weighted sum and weight since the last :meth:`means`.

    The weight says what a value stands for: in training, a micro-batch's share of its optimizer
    step (Trainer logs ``loss`` per step, each the mean of its micro-batches); in evaluation, the
    images a term counts, 0 for a batch where the term means nothing. As a callback it starts
    empty with each training attempt: ``auto_find_batch_size`` retries a run that ran out of
    memory, and the failed attempt's terms would otherwise be averaged into the first log.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float | torch.Tensor] = {}

    def add(self, terms: Mapping[str, torch.Tensor], weights: Mapping[str, float | torch.Tensor]) -> None:
        """Record ``terms`` with each its weight. A weight-0 term still records its name (with 0),
        so that every process gathers the same terms; its value may be NaN (a mean over no rows).

        A weight may be a 0-dim tensor on the device (evaluation's counts of labelled images): it is
        added there, so that no batch waits for the device to read it; :meth:`means` reads them all once.
        """
        for name, value in terms.items():
            weight = weights[name]
            if isinstance(weight, torch.Tensor):
                value = torch.where(weight > 0, value.detach().float() * weight, 0.0)
            else:
                value = value.detach().float() * weight if weight else torch.zeros((), device=value.device)
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.weights[name] = self.weights.get(name, 0.0) + weight

    def means(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Each term's weighted mean over every process (``gather``: accelerate's), and start anew.

        A term with no weight anywhere is left out. Every process must call this together.
        """
        sums, weights = self.sums, self.weights
        self.reset()
        if not sums:
            return {}
        names = sorted(sums)
        like = sums[names[0]]
        if any(isinstance(weights[n], torch.Tensor) for n in names):  # counted on the device already
            counts = torch.stack([torch.as_tensor(weights[n], dtype=like.dtype, device=like.device) for n in names])
        else:  # the weights in one copy to the device (each copy waits for the device), not one per term
            counts = torch.tensor([weights[n] for n in names], dtype=like.dtype, device=like.device)
        local = torch.cat([torch.stack([sums[n] for n in names]), counts])
        # A plain gather: gather_for_metrics would cut rows to the eval set's remainder at the end
        # of a dataloader, dropping whole processes' sums.
        totals = gather(local[None]).sum(dim=0).tolist()  # one read from the device, not two per term
        values, counts = totals[: len(names)], totals[len(names):]
        return {name: v / c for name, v, c in zip(names, values, counts) if c > 0}

    def reset(self) -> None:
        self.sums, self.weights = {}, {}

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.reset()


class LastStepLog(TrainerCallback):
    """A log at the last optimizer step of a data-parallel run.

    Trainer's ``train_loss`` adds the steps since the last log as the main process's own loss, not
    the processes' mean that each log gathers: with ``logging_steps`` not dividing the run (or no
    logging), ``all_results.json`` reported rank 0's batches for those steps (2.32836 for the
    processes' 2.33020 over 4 steps of 2 processes). One process has nothing to gather. A run
    stopped before ``max_steps`` (a signal, early stopping, any callback's ``should_training_stop``;
    every stop is taken on all processes together) logs where it leaves the epoch loop: Trainer
    logs once more after ``on_epoch_end``, and not twice at a step it logged.
    """

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        if args.world_size > 1 and state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: D102
        if args.world_size > 1 and control.should_training_stop:
            control.should_log = True
