"""A diverged run fails with one ``error:`` line instead of exiting 0 with NaN weights.

A learning rate far too high, a loss that explodes or an fp16 overflow turns the student's weights
into NaN or inf, and Trainer trains on: ``logging_nan_inf_filter`` (on by default in Trainer;
``DistillationTrainingArguments`` leaves it off without fp16) replaces a non-finite step loss by the running mean,
so ``loss`` and ``train_loss`` look normal, and the
final model, metrics and card would be written as if the run had succeeded (its accuracy that of
argmax over NaN). A run has diverged when the student's parameters or buffers, or the distillation state trained
beside it (adapters, projectors, a loss's class centres), are not all finite: a NaN loss alone may
be an fp16 step that loss scaling skipped and the run survives; NaN weights never recover. Nor
does a run whose fp16 loss scaling skipped ``SKIPPED_STEPS_LIMIT`` optimizer steps in a row: its
weights stay finite because nothing updates them any more (the scale was halved at each skip, so
its gradients overflow at any scale, or its loss is NaN), and it would end with a model of the
steps before.

No step pays for the check. The weights are read only where that costs nothing next to what
happens anyway: before each checkpoint is written (the save reads them all), once after training
(``DistillationTrainer.train``: a divergence no other check saw), and at a logging step whose
logged loss is not finite (the per-term losses, which Trainer does not filter, or the ``eval_*``
losses), where training then stops instead of running on NaN. A student or teacher loaded with
such weights (a diverged run's, made elsewhere) is refused before it is used
(``check_loaded_weights``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

from ..distributed import any_rank
from ..errors import ModelError, TrainingDiverged

# Consecutive optimizer steps fp16 loss scaling skipped before a run is called diverged. Each skip
# halves the scale (torch's GradScaler, from 2**16): a healthy run skips a few steps at its start
# and one now and then, never 50 in a row, which would leave a scale of 2**-34.
SKIPPED_STEPS_LIMIT = 50


def non_finite_losses(logs: dict[str, Any]) -> dict[str, float]:
    """The logged losses (``loss``, ``ce_loss``, ``eval_loss``...) that are NaN or infinite."""
    return {key: value for key, value in logs.items()
            if key.endswith("loss") and isinstance(value, (int, float)) and not math.isfinite(value)}


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """The names of the floating-point parameters and buffers of ``module`` that hold NaN or inf.

    Buffers count: a diverged forward pass turns BatchNorm's running statistics NaN even when the
    optimizer step was skipped, and the saved model evaluates with them. FSDP-sharded tensors are
    read shard by shard, so the answer is this rank's alone.
    """
    named = [(name, t) for name, t in (*module.named_parameters(), *module.named_buffers()) if t.is_floating_point()]
    flags: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in named:
        finite = _finite(t)
        flags.setdefault(finite.device, []).append((name, finite))
    # one read per device, not one per tensor (a DeiT-S student has about 150)
    return [name for pairs in flags.values()
            for (name, _), ok in zip(pairs, torch.stack([f for _, f in pairs]).tolist()) if not ok]


def _finite(t: torch.Tensor) -> torch.Tensor:
    """Whether every value of ``t`` is finite, as a 0-d bool tensor on its device (not read back)."""
    t = t.to_local() if isinstance(t, DTensor) else t
    if t.element_size() == 1:  # float8 (fp8-quantised layers): isfinite has no kernel for it; float16 keeps NaN
        t = t.to(torch.float16)
    return torch.isfinite(t).all()


def has_finite_weights(module: torch.nn.Module, device: torch.device | str) -> bool:
    """Whether every floating-point parameter and buffer of ``module`` is finite, on every rank.

    The ranks agree through one all-reduce (see ``non_finite_tensors``), so all stop together.
    """
    return not any_rank(bool(non_finite_tensors(module)), device)


def check_loaded_weights(model: torch.nn.Module, role: str, key: str, source: str) -> None:
    """Refuse a loaded student or teacher whose weights are already NaN or infinite (a diverged run's).

    Without this an eval-only run reports the accuracy of argmax over NaN logits and exits 0, and a
    run that trains from such a student, or toward such a teacher, ends as "training diverged",
    blaming the learning rate. Every rank loads the same files, so no collective is needed.

    Raises:
        ModelError: naming ``key`` (``model_name_or_path``...), ``source`` and the non-finite
            tensors, or those left on the meta device (a model built without its weights).
    """
    unloaded = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unloaded:
        raise ModelError(
            f"{key} {source!r}: the {role}'s weights were never loaded, they are on the meta device "
            f"({_listed(unloaded)}): load the model with its weights"
        )
    names = non_finite_tensors(model)
    if names:
        raise ModelError(
            f"{key} {source!r}: the {role}'s weights are NaN or infinite ({_listed(names)}), so it cannot be "
            f"evaluated, trained or exported: use a checkpoint saved before its training diverged"
        )


def _listed(names: list[str]) -> str:
    """``"N tensors: a, b, c, ..."``, the first three named."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} tensor{'s' if len(names) > 1 else ''}: {shown}"


def diverged_error(args: Any, step: int, losses: dict[str, float] | None = None,
                   what: str = "the student's weights are NaN or infinite") -> TrainingDiverged:
    """The error that ends a diverged run: what, when, and what to change in the recipe."""
    seen = f" (logged {', '.join(f'{key} = {value}' for key, value in losses.items())})" if losses else ""
    fixes = [f"lower learning_rate (now {args.learning_rate:g})", "check the loss weights"]
    if getattr(args, "fp16", False):
        fixes.append("train with bf16 instead of fp16")
    if getattr(args, "bf16", False) and getattr(getattr(args, "device", None), "type", None) == "cpu":
        # plain torch too: bf16 autocast on some CPUs gives non-finite gradients from the first step
        fixes.append("train without bf16 on the CPU (bf16: false)")
    if not getattr(args, "max_grad_norm", None):
        fixes.append("clip gradients with max_grad_norm: 1.0")
    return TrainingDiverged(
        f"training diverged: by step {step} {what}{seen}, so the final model "
        f"was not saved (checkpoints saved before are kept). To fix: {', '.join(fixes[:-1])} or {fixes[-1]}"
    )


class DivergenceCheck(TrainerCallback):
    """Stops training at the first logging or saving step at which the trained weights are not
    finite, or at the ``SKIPPED_STEPS_LIMIT``-th optimizer step in a row that fp16 loss scaling skipped.

    Training then ends as Trainer ends it (``on_train_end`` callbacks run, reporters flush), and
    nothing more is saved: no checkpoint of NaN weights, for which ``save_total_limit`` would delete
    a good one. ``DistillationTrainer.train`` raises ``error`` once training has ended.

    Args:
        trained: returns what training updates: the student, or a container of it (under the name
            ``student``) and the distillation state (``adapters``, ``losses``); looked up when
            needed, as wrappers may replace the student.
        step_skipped: whether the optimizer step that just ended was skipped (the accelerator's
            ``optimizer_step_was_skipped``, a flag it sets anyway); None: never.
    """

    def __init__(self, trained: Callable[[], torch.nn.Module],
                 step_skipped: Callable[[], bool] | None = None) -> None:
        self.trained = trained
        self.step_skipped = step_skipped
        self.skipped_in_a_row = 0
        self.error: TrainingDiverged | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.error = None
        self.skipped_in_a_row = 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
        losses = non_finite_losses(logs or {})
        if losses:
            self.check(args, state, control, losses)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        skipped = self.step_skipped is not None and self.step_skipped()
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        if self.skipped_in_a_row >= SKIPPED_STEPS_LIMIT and self.error is None:
            self.error = diverged_error(args, state.global_step, what=(
                f"loss scaling skipped the last {self.skipped_in_a_row} optimizer steps (the loss or its gradients "
                "are NaN or infinite at every scale: nothing trains any more)"))
        self._check_before_a_save(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: D102
        self._check_before_a_save(args, state, control)

    def _check_before_a_save(self, args, state, control) -> None:
        if control.should_save or self.error is not None:  # a checkpoint is about to be written, or must not be
            self.check(args, state, control)

    def check(self, args, state, control, losses: dict[str, float] | None = None) -> None:
        """Record the error and stop training if the trained weights are not finite (read once)."""
        if self.error is None:
            names = non_finite_tensors(self.trained())
            if any_rank(bool(names), args.device):
                self.error = diverged_error(args, state.global_step, losses, _what_diverged(names))
        if self.error is not None:
            control.should_training_stop = True
            control.should_evaluate = control.should_save = False


def _what_diverged(names: list[str]) -> str:
    """The student's weights, unless only the distillation state beside it holds NaN (on this rank)."""
    state = [name for name in names if name.startswith(("adapters.", "losses."))]
    if not names or len(state) < len(names):
        return "the student's weights are NaN or infinite"
    return f"the distillation state trained beside the student is NaN or infinite ({_listed(state)})"
