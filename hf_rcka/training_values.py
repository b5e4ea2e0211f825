"""Rules for the values of ``TrainingArguments``, checked before anything loads.

``TrainingArguments`` accepts a negative learning rate, a batch size of 0 or a label smoothing of
1.5; they fail at the first step (or, worse, train quietly: a negative learning rate climbs the
loss). Each range rule here names its key and the accepted range; ``FIXED_SETTINGS`` are the
values the distillation's batches and metrics depend on. ``DistillationTrainingArguments`` applies
both when it is built, and ``arguments.check_arguments`` to plain ``TrainingArguments`` a Python
caller passes; ``check_half_precision`` refuses ``fp16`` where accelerate would silently train in
float32. The command line and the trainer both
call these, so a rule of the arguments lives with the arguments, not in either layer.

Values arrive typed (a recipe's text is converted by ``hf_rcka.cli.coercion`` first); these
checks convert nothing.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import logging
import math
from typing import Any, Callable

from transformers import TrainerCallback, TrainingArguments

from .errors import RecipeError

logger = logging.getLogger(__name__)

# key -> (accepted, description of the accepted range)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # a rate or decay of inf turned every weight to NaN at the first step: found after training, as a divergence
    "learning_rate": (lambda v: 0 <= v < math.inf, ">= 0 and finite"),
    "per_device_train_batch_size": (lambda v: v >= 1, ">= 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "label_smoothing_factor": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: 0 <= v < math.inf, ">= 0 and finite"),
    "max_grad_norm": (lambda v: v is None or v >= 0, ">= 0"),
    # inf: an OverflowError traceback as training started, after the models and the data had loaded
    "num_train_epochs": (lambda v: 0 <= v < math.inf, ">= 0 and finite"),
    # transformers trains num_train_epochs for any max_steps < 0; 0 trained one step and saved it as the result
    "max_steps": (lambda v: v != 0, "> 0, or -1 to train num_train_epochs"),
    # transformers reads a value below 1 as a fraction of the run and cuts any other to a whole number
    "warmup_steps": (lambda v: 0 <= v < 1 or float(v).is_integer(), "a fraction of the run below 1 or a whole number "
                                                                      "of steps"),
    "adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_epsilon": (lambda v: v > 0, "> 0"),
    "dataloader_num_workers": (lambda v: v >= 0, ">= 0"),
    "eval_delay": (lambda v: v >= 0, ">= 0"),
    # numpy's generator, which transformers.set_seed seeds, takes 0..2**32-1: a seed of -1 (elsewhere "random")
    # was a numpy traceback once the output folder was taken
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32 - 1]"),
    # transformers cut inf to an integer (an OverflowError traceback), and a negative or NaN interval logged,
    # evaluated or saved at other steps than asked, or never, without a word (0 is transformers' own: refused
    # for logging, eval_steps then follows logging_steps)
    **dict.fromkeys(("logging_steps", "eval_steps", "save_steps"),
                    (lambda v: 0 <= v < math.inf, "a number of steps, or a fraction of the run below 1 (>= 0 and "
                                                  "finite)")),
}


def check_training_values(args: Any) -> None:
    """Raise a ``RecipeError`` naming the first setting of ``args`` outside its range.

    Raises:
        RecipeError: e.g. ``learning_rate must be >= 0 and finite, got -0.001``.
    """
    for key, (accepted, description) in _RULES.items():
        value = getattr(args, key, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (isinstance(value, float) and math.isnan(value)) or not accepted(value):
            raise RecipeError(f"{key} must be {description}, got {value}")
    if not getattr(args, "dataloader_num_workers", 0):  # torch refuses them at the first loader, after loading
        for key in ("dataloader_persistent_workers", "dataloader_multiprocessing_context"):
            if getattr(args, key, None):
                raise RecipeError(f"{key} sets up dataloader worker processes, and dataloader_num_workers is 0: "
                                  f"set dataloader_num_workers > 0 too, or drop {key}")


# TrainingArguments settings that the distillation batches and the evaluation's metrics depend on.
# Trainer accepts other values, and they surface only at the first evaluation, after training: a
# run that reports no accuracy and exits 0, or a traceback.
FIXED_SETTINGS = {
    "label_names": (["labels"], "the batches carry their labels as 'labels'; other names leave the evaluation "
                                "without predictions, so it reports no accuracy"),
    "prediction_loss_only": (False, "the evaluation would report the loss only, no accuracy"),
    "remove_unused_columns": (False, "distillation needs every column of the batch"),
    "eval_do_concat_batches": (True, "accuracy is computed over all predictions at once"),
    "batch_eval_metrics": (False, "accuracy is computed over all predictions at once"),
    "bf16_full_eval": (False, "it casts the whole model, the losses' float32 parts included, and evaluates weights "
                              "other than the float32 ones exported"),
    "fp16_full_eval": (False, "it casts the whole model, the losses' float32 parts included, and evaluates weights "
                              "other than the float32 ones exported"),
    "use_liger_kernel": (False, "Liger kernels replace a language model's layers, and an image classifier has none: "
                                "the run failed as training started"),
    "neftune_noise_alpha": (None, "NEFTune adds noise to a language model's token embeddings, and an image "
                                  "classifier has none: the run failed as training started"),
    "include_num_input_tokens_seen": ("no", "it counts a language model's input tokens; here it counted the batches' "
                                            "pixel values, 3 x height x width an image, the repeats that even out "
                                            "the batches included: neither tokens nor images"),
    "eval_use_gather_object": (False, "it gathers the processes' predictions as Python objects, which do not line up "
                                      "with the labels and the rows every evaluation leaves out (unreadable images, "
                                      "data parallelism's repeats): an IndexError at the first evaluation"),
    "parallelism_config": (None, "hf_rcka keeps the frozen teacher out of the sharded state through fsdp and "
                                 "fsdp_config (or an accelerate config file), which shard the student: use those; "
                                 "a recipe's mapping here failed once the models had loaded"),
}


def check_fixed_settings(args: TrainingArguments) -> None:
    """Refuse a value other than ``FIXED_SETTINGS``' for any of them (plain TrainingArguments too)."""
    for key, (value, reason) in FIXED_SETTINGS.items():
        given = getattr(args, key, value)  # a field an older transformers does not have
        if (list(given) if isinstance(given, (list, tuple)) else given) != value:
            raise RecipeError(f"{key}: {given!r} is not supported ({reason}): remove it from the recipe")


def check_batch_settings(args: TrainingArguments) -> None:
    """The settings the data-parallel batches and the evaluation's counts depend on; read once
    ``TrainingArguments`` has set up ``accelerator_config`` (given as a mapping, or a file)."""
    if getattr(args, "train_sampling_strategy", "random") == "group_by_length":
        raise RecipeError("train_sampling_strategy: group_by_length groups text by its number of tokens, and an image "
                          "batch has no input_ids to measure: use random (the default) or sequential")
    accelerator = args.accelerator_config
    if not accelerator.even_batches and max(1, args.world_size) > 1:
        raise RecipeError("accelerator_config even_batches: false is not supported: with it the processes run different "
                          "numbers of batches, and data-parallel training hangs or evaluation fails at the first "
                          "gather; the default pads the last batches with repeats that count in no metric")
    if accelerator.split_batches:
        processes = max(1, args.world_size)
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(args, key) % processes:
                raise RecipeError(f"accelerator_config split_batches splits each batch of {key} over the {processes} "
                                  f"processes, and {getattr(args, key)} is not a multiple of {processes}: make it one, "
                                  "or drop split_batches")


def check_optim_target_modules(args: TrainingArguments) -> None:
    """``optim_target_modules`` names the layers that GaLore's and APOLLO's low-rank projections
    train (``optim: galore_*`` / ``apollo_*``); every other optimizer trains all layers alike and
    transformers drops the setting without a word."""
    optim = str(getattr(args.optim, "value", args.optim))
    if getattr(args, "optim_target_modules", None) and not optim.startswith(("galore", "apollo")):
        raise RecipeError(f"optim_target_modules names the layers a GaLore or APOLLO optimizer projects (optim: "
                          f"galore_* or apollo_*), and optim {optim} trains every layer alike: drop "
                          "optim_target_modules, or choose one of those optimizers")


# optim_args keys transformers fills from TrainingArguments fields, whatever optim_args says
_FIELDS_OF = {"lr": "learning_rate", "eps": "adam_epsilon", "betas": "adam_beta1 and adam_beta2",
              "weight_decay": "weight_decay"}


def check_optim_args(args: TrainingArguments) -> None:
    """Every ``optim_args`` key must reach the optimizer.

    transformers hands a torch optimizer only the ``optim_args`` keys that its setup for that
    optimizer reads (sgd: ``momentum``, ``nesterov``, ...; adamw_torch: none), and sets others
    (``lr``, ``eps``, ``betas``, ``fused``) from its own fields whatever ``optim_args`` says. The
    rest is dropped without a word: ``momentun=0.9`` trained SGD without momentum. Optimizers of
    other packages read ``optim_args`` in their own ways and are left to them.
    """
    given = getattr(args, "optim_args", None)
    if not given:
        return
    parts = [part.strip() for part in given.replace(" ", "").split(",") if part.strip()]
    if any("=" not in part for part in parts):
        raise RecipeError(f"optim_args {given!r} must be key=value pairs separated by commas (e.g. momentum=0.9)")
    from transformers import Trainer

    bare = copy.copy(args)  # not dataclasses.replace: that would run every argument check again
    bare.optim_args = None
    try:
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
        _, without = Trainer.get_optimizer_cls_and_kwargs(bare)
    except (ImportError, ValueError, TypeError):  # its package is missing, or it needs a model: said elsewhere
        return
    if not getattr(optimizer_cls, "__module__", "").startswith(("torch.optim", "transformers.optimization")):
        return
    values = dict(part.split("=", 1) for part in parts)
    dropped = [key for key, value in values.items() if key not in kwargs
               or (key in without and kwargs[key] == without[key] and not _same_value(value, without[key]))]
    if not dropped:
        return
    name = getattr(args.optim, "value", args.optim)
    fields = [f"{key} comes from the training argument {_FIELDS_OF[key]}" for key in dropped if key in _FIELDS_OF]
    known = [key for key in inspect.signature(optimizer_cls).parameters if key not in ("params", "lr", *values)]
    hits = difflib.get_close_matches(dropped[0], known, n=2, cutoff=0.75)
    hint = (f" ({'; '.join(fields)}: set it there)" if fields else "") + (
        f" Did you mean {' or '.join(repr(h) for h in hits)}?" if hits else "")
    what = "it" if len(dropped) == 1 else "them"
    raise RecipeError(f"optim_args {', '.join(repr(k) for k in dropped)}: transformers does not pass {what} to optim "
                      f"{name!r} ({optimizer_cls.__name__}) from optim_args: the value given there would not be "
                      f"used.{hint or ' Remove it, or choose an optim that takes it.'}")


# What transformers' get_scheduler hands each schedule of the ones that take less than all:
# (takes the warm-up, takes lr_scheduler_kwargs)
_SCHEDULE_TAKES = {"constant": (False, False), "constant_with_warmup": (True, False),
                   "reduce_lr_on_plateau": (False, True), "greedy": (False, True)}


def check_schedule_settings(args: Any) -> None:
    """A warm-up or ``lr_scheduler_kwargs`` the chosen schedule never receives: ``constant`` trained
    every step at the peak rate with a recipe's ``warmup_steps: 0.2`` and ``min_lr``, exit 0."""
    kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    if kind not in _SCHEDULE_TAKES:
        return
    takes_warmup, takes_kwargs = _SCHEDULE_TAKES[kind]
    warmup = getattr(args, "warmup_steps", 0) or getattr(args, "warmup_ratio", 0)
    if warmup and not takes_warmup:
        with_warmup = " (constant_with_warmup warms up to a constant rate)" if kind == "constant" else ""
        raise RecipeError(f"lr_scheduler_type {kind!r} has no warm-up, so warmup_steps {warmup} would not be used: "
                          f"set warmup_steps: 0, or choose a schedule with one{with_warmup}")
    if args.lr_scheduler_kwargs and not takes_kwargs:
        raise RecipeError(f"lr_scheduler_type {kind!r} takes no lr_scheduler_kwargs, so {args.lr_scheduler_kwargs} "
                          "would not be used: drop them, or choose the schedule they belong to (min_lr: "
                          "cosine_with_min_lr)")


class WarmupLongerThanRun(TrainerCallback):
    """A warm-up of as many steps as the run or more never reaches the learning rate the recipe
    sets (a 100-step warm-up in a 20-step run trained at a fifth of it at most): said as training
    starts, once the run's number of steps is known, not only on the card at its end."""

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        if not (state.is_world_process_zero and state.max_steps > 0 and args.warmup_steps):
            return
        warmup = args.get_warmup_steps(state.max_steps)
        if warmup >= state.max_steps:
            logger.warning("warmup_steps: a warm-up of %d steps in a run of %d never reaches the learning rate %g: "
                           "shorten the warm-up (a fraction below 1 is a share of the run)", warmup, state.max_steps,
                           args.learning_rate)


def check_best_model_evaluations(args: Any) -> None:
    """``load_best_model_at_end`` with ``eval_strategy: no`` (transformers accepts it when
    ``save_strategy`` is no too): no evaluation picks a best checkpoint, and Trainer exported the
    last step's weights without a word. ``save_strategy: best`` without ``metric_for_best_model``
    (which transformers fills in for ``load_best_model_at_end`` alone) was a traceback as the
    trainer was built, after the data and the models had loaded."""
    if getattr(args.save_strategy, "value", args.save_strategy) == "best" and args.metric_for_best_model is None:
        raise RecipeError("save_strategy: best saves a checkpoint when an evaluation scores a new best, and no "
                          "metric_for_best_model says by what: set metric_for_best_model (accuracy, loss...)")
    if args.load_best_model_at_end and getattr(args.eval_strategy, "value", args.eval_strategy) == "no":
        raise RecipeError("load_best_model_at_end keeps the best of the evaluations during training, and eval_strategy "
                          "is no: set eval_strategy and save_strategy to steps or epoch, or drop load_best_model_at_end "
                          "(the last step is exported)")


class NoEvaluationToKeep(TrainerCallback):
    """``load_best_model_at_end`` with no evaluation during training (``eval_strategy: no``, or an
    ``eval_delay`` past the run's end): nothing picks a best checkpoint, and Trainer exported the
    last step's weights without a word. Refused as training starts, once the run's length is known,
    before its first step; a resumed run whose best checkpoint was chosen before keeps it."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):  # noqa: D102
        if not args.load_best_model_at_end or state.best_model_checkpoint is not None:
            return
        check_best_model_evaluations(args)
        strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
        if not args.eval_delay:
            return
        if strategy == "steps":
            end = f"step {state.max_steps}"
            after = args.eval_delay > state.max_steps
        elif strategy == "epoch":
            last = _last_epoch(args, state, train_dataloader)
            end = f"epoch {last:g}"
            after = args.eval_delay > last + 1e-6  # Trainer evaluates once its epoch count reaches the delay
        else:
            return
        if after:
            raise RecipeError(f"load_best_model_at_end keeps the best of the evaluations during training, and "
                              f"eval_delay {args.eval_delay:g} puts the first after the run's end (at {end}): "
                              "lower eval_delay, or drop load_best_model_at_end (the last step is exported)")


def _last_epoch(args: Any, state: Any, train_dataloader: Any) -> float:
    """The epoch count a run ends at: ``max_steps`` (given, or made from a fractional
    ``num_train_epochs``) ends part-way through an epoch, where Trainer's own count of epochs
    (``state.num_train_epochs``) is rounded up."""
    try:
        batches = len(train_dataloader)
    except TypeError:  # a stream: its epochs are not counted ahead
        return float(state.num_train_epochs)
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    full, rest = divmod(state.max_steps, per_epoch)
    # Trainer counts an epoch's part in batches read (state.epoch = epoch + batches / batches per epoch),
    # and an epoch's last optimizer step may take fewer than gradient_accumulation_steps batches
    return full + min(rest * args.gradient_accumulation_steps, batches) / max(batches, 1)


def _same_value(given: str, value: Any) -> bool:
    """Whether an optim_args value (a string) says what transformers sets anyway (``False``, ``1e-3``)."""
    try:
        return float(given) == float(value)
    except (TypeError, ValueError):
        return given.strip().lower() == str(value).lower()


def check_half_precision(args: Any) -> None:
    """``fp16`` needs an accelerator: on CPU accelerate turns it off and trains in float32 silently.

    The advice names ``use_cpu`` with ``bf16``: without it, transformers refuses bf16 on a machine
    without a GPU ("Your setup doesn't support bf16/gpu").
    """
    from transformers.utils import (is_torch_cuda_available, is_torch_mps_available, is_torch_npu_available,
                                    is_torch_xpu_available)

    # TrainingArguments folds the launcher's choice in (ACCELERATE_MIXED_PRECISION: accelerate launch
    # --mixed_precision, or its config file), which the recipe's bf16/fp16 flags override
    launched = not args.fp16 and getattr(args, "mixed_precision", None) == "fp16"
    if not args.fp16 and not launched:  # fp16_full_eval is refused before this (FIXED_SETTINGS)
        return
    accelerator = any(found() for found in (is_torch_cuda_available, is_torch_xpu_available, is_torch_mps_available,
                                            is_torch_npu_available))
    if args.use_cpu or not accelerator:
        if launched:
            raise RecipeError("the launcher asks for fp16 mixed precision (ACCELERATE_MIXED_PRECISION=fp16: accelerate "
                              "launch --mixed_precision fp16, or its config file), which needs a GPU: on CPU it would "
                              "silently train in float32. Launch with --mixed_precision no (or bf16 with use_cpu: true)")
        raise RecipeError("fp16 needs a GPU (on CPU it would silently train in float32): set bf16: true with "
                          "use_cpu: true for CPU autocast, or fp16: false")


def check_cpu_compiler(args: Any) -> None:
    """Inductor (``torch_compile``'s default backend) builds a CPU run's kernels with a C++ compiler:
    on a machine without one, the run loaded its models and data and then stopped at its first step
    with torch's ``InvalidCxxCompiler`` traceback (the command line's check and ``DistillationTrainer``'s
    alike). ``aot_eager`` compiles without one."""
    if not getattr(args, "torch_compile", False) or str(args.torch_compile_backend or "inductor").lower() != "inductor":
        return
    import torch

    if not (getattr(args, "use_cpu", False) or not torch.accelerator.is_available()):
        return
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        raise RecipeError("torch_compile: the inductor backend builds a CPU run's kernels with a C++ compiler, and "
                          "none was found (g++, or the CXX environment variable's): install one, or set "
                          "torch_compile_backend: aot_eager, which compiles without one") from None


__all__ = ["FIXED_SETTINGS", "check_batch_settings", "check_best_model_evaluations", "check_cpu_compiler",
           "check_fixed_settings", "check_half_precision", "check_optim_args", "check_optim_target_modules", "check_schedule_settings",
           "check_training_values", "NoEvaluationToKeep", "WarmupLongerThanRun"]
