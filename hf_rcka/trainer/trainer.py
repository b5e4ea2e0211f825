"""``DistillationTrainer``: ``transformers.Trainer`` for a student, a frozen teacher and the losses.

Everything Trainer users know keeps working (TrainingArguments, callbacks, ``report_to``, progress
bars, gradient accumulation, mixed precision, DDP/FSDP through accelerate, checkpoints,
``push_to_hub``). What changes: ``Trainer.model`` is a ``DistillationModel``; the loss is the
weighted sum of the loss terms, each logged on its own (``ce_loss``, ``rcka_intra_loss``,
``rcka_inter_loss``, ..., and ``eval_*`` for evaluation); saving writes only the student as a plain transformers model,
while checkpoints also keep adapters and loss state so resuming continues exactly (see
``checkpointing``, which holds the saving and loading overrides).

The other overrides are public Trainer hooks, except private ones whose comments say why (here
``_get_train_sampler`` and ``_save_checkpoint``, which guards ``checkpointing``'s own override of
it; ``CheckpointingTrainer`` holds the rest). ``tests/test_trainer_contract.py`` pins the signature
of every private one either class overrides, and of the public ones relied on for more than their
documented use (``PRIVATE_OVERRIDES``): the list to audit on a transformers upgrade.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
import math
import warnings
from datetime import timedelta
from typing import Any, Iterable, Iterator

import datasets
import numpy as np
import torch
from transformers import PreTrainedModel, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import EvalLoopOutput, has_length

from ..arguments import TEACHER_CHECK_DEFAULT, check_arguments, describe_batch, run_mixed_precision
from ..training_values import NoEvaluationToKeep, WarmupLongerThanRun, check_cpu_compiler, check_half_precision
from ..augmentation import AugmentationArguments
from ..errors import ModelError, RecipeError
from ..log_levels import errors_only
from .batch_rows import (
    check_evaluation_rows,
    check_mixing_rows,
    check_relation_rows,
    check_training_batches,
    check_unsized_training,
    evaluates,
    too_few_rows,
)
from .card_facts import CardFacts, PeakRate, complete_card_facts
from .term_log import LastStepLog, LossTermLog
from .checkpointing import (
    CheckpointingTrainer,
    FinishedAlready,
    ResumedBest,
    ResumedRate,
    ResumeStep,
    checkpoint_step,
    keep_token_out_of_files,
)
from .given_data import (
    check_batch_keys, check_channels, check_columns, check_evaluation_labels, check_image_sizes, check_later_dataset,
    check_pixel_range, image_size, say_evaluation_size_not_deployed,
)
from .given_labels import (
    check_labels, data_class_names, model_class_names, name_student_classes, numbered_only, say_names_paired_by_position,
)
from .given_models import (
    check_activation_checkpointing, check_model_objects, check_models, check_processor_size_taken, check_ready_model,
    check_saveable, check_trainable_precision, leave_out_fresh_losses, teacher_input_stats,
)
from .optimizer_checks import LateParameterCheck, check_lazy_parameters, check_optimizer
from .progress import close_evaluation_bars, use_resumed_progress
from .divergence import DivergenceCheck, check_loaded_weights
from ..data.datasets import collate, decodes_its_images, seeded_subset
from .data_parallel import check_processes_join, check_wrapped, forget_evaluation_preparation, one_device_per_process
from .ema import StudentEmaCallback
from .checkpoint_folders import resumable_checkpoint
from .interrupt import leave_signals_to_main_process
from .card import reproduction_text, training_text, write_model_card
from .teacher_check import CHECK_IMAGES, judge_teacher
from .weight_decay import model_no_weight_decay, norm_weights
from ..losses import IGNORE_INDEX, DistillationLoss
from .metrics import CheckedClassIds, accuracy_metrics, check_metric_for_best_model
from ..data.mixing import build_mixup, mix_batch
from ..modeling.assembly import build_distillation_model, build_losses, run_loss_specs, switched_off
from ..distributed import host_group
from ..modeling.distillation_model import DistillationModel, counted_top1
from ..modeling.activation_checkpoints import restore_rng_in_wrapped_checkpoints
from ..models.labels import BY_NAME, has_other_classes
from ..models.loading import as_single_label
from ..modeling.parallel import (
    check_fsdp_settings, default_broadcast_buffers, ignore_teacher_in_ddp, keep_teacher_out_of_fsdp,
    require_full_state_dict, share_running_stats,
)
from ..data.sampler import (
    RepeatedAugmentationSampler, SamplerEpoch, check_identical_repeats, check_iterable_dispatch, check_repeats_unsplit,
    keep_rank_sharding,
)
from ..modeling.teacher_inputs import InputStats, input_stats

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _every_image_in_order(args: TrainingArguments):
    """The training loader's settings that would cut an evaluation short, off while one is built.

    ``dataloader_drop_last`` drops the set's remainder. ``dataloader_in_order: false`` lets workers
    hand batches over as they finish, and accelerate takes the batch that comes last for the set's
    last (``gather_for_metrics`` cuts it to the remainder's rows, the repeats of data parallelism
    are marked in it): a full batch that came after the short one lost its other rows (9 of 12
    images scored, and the card compared that accuracy with the teacher's over all 12).
    """
    saved = {key: getattr(args, key) for key in ("dataloader_drop_last", "dataloader_in_order") if hasattr(args, key)}
    args.dataloader_drop_last = False
    if "dataloader_in_order" in saved:
        args.dataloader_in_order = True
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(args, key, value)


def _check_given_weights(model: Any, teacher: Any) -> None:
    """Refuse a student or teacher passed in with NaN or infinite weights (a diverged run's).

    The command line checks what it loads under the recipe's keys; this covers models built in
    Python, where ``evaluate()`` would otherwise report the accuracy of argmax over NaN logits.
    """
    if isinstance(model, DistillationModel):
        model, teacher = model.student, model.teacher
    for role, module in (("student", model), ("teacher", teacher)):
        if isinstance(module, torch.nn.Module):
            name = getattr(module, "name_or_path", None) or type(module).__name__
            check_loaded_weights(module, role, f"the {role} given to DistillationTrainer", name)


def _said_by_the_logging_process(args: TrainingArguments) -> contextlib.AbstractContextManager:
    """Every process checks and builds the same models from the same settings, and logs what it
    finds alike (the teacher's view of the images, pairs left out, an unused teacher): only the
    process that logs says it, not 8 copies on 8 GPUs. Errors are raised everywhere as before."""
    return errors_only(when=not args.should_log)


def _checked_model(model: Any, teacher: Any, args: TrainingArguments, teacher_processor: Any, mapping: str,
                   kwargs: dict[str, Any]) -> tuple[DistillationModel, tuple[int, int] | None]:
    """The ``DistillationModel`` to train, after every check of what the caller gave (see
    ``given_models``, ``given_labels``, ``given_data``, ``optimizer_checks``): a ready one as given,
    else one built from the student and teacher. Nothing is built or changed before the checks of
    the objects themselves have passed. A permuted teacher is read in the student's class order by
    the model (``reorder_teacher_logits``); the teacher object itself keeps its own order.

    Returns:
        The model, and the image size its feature pairs are planned at (the training images'),
        which every evaluation set must have (``check_image_sizes``); None without feature losses.
    """
    check_model_objects(model, teacher, kwargs)
    _check_given_weights(model, teacher)
    datasets = (kwargs.get("train_dataset"), kwargs.get("eval_dataset"))
    first_item = check_columns(*datasets, collator=kwargs.get("data_collator"))
    student = model.student if isinstance(model, DistillationModel) else model
    made = _made_by_processor(kwargs)
    _check_given_pixels(student, args, kwargs, first_item, made)
    if isinstance(model, DistillationModel):
        teacher_order = check_ready_model(model, teacher, teacher_processor, args, mapping, datasets)
        _check_settings(student, model.losses.values(), args, kwargs)
        _check_processor_taken(student, made, first_item)
    else:
        check_models(model, teacher, args, kwargs.get("processing_class"), teacher_processor, first_item)
        _check_processor_taken(student, made, first_item)  # after check_models' own comparison of the sizes
        # before the teacher is frozen and cast: a refused trainer leaves it as it was
        _check_settings(model, build_losses(run_loss_specs(args, teacher is not None)), args, kwargs)
        teacher_order = check_labels(model, teacher, args, datasets, mapping)
        student_input = _stats_or_none(kwargs.get("processing_class"))
        model = build_distillation_model(
            model, teacher, args, student_input, teacher_input_stats(teacher, teacher_processor, student_input),
        )
        if kwargs.get("train_dataset") is None:  # an evaluation of a saved student: its projectors are fresh
            leave_out_fresh_losses(model)
    # feature grids are planned at the training size; a caller's collator may resize what it batches
    size = image_size(first_item) if model.needs_features and kwargs.get("data_collator") is None else None
    check_image_sizes(datasets[1], "eval_dataset", size)
    check_lazy_parameters(model)
    check_optimizer(model, kwargs.get("optimizers"))
    _keep_label_check(model, teacher_order)
    return model, size


def _made_by_processor(kwargs: dict[str, Any]) -> InputStats | None:
    """What ``processing_class`` makes, read once for the checks of the given items' pixels against
    it (it is saved with the student, and ``pipeline()`` feeds the export through it). None without
    a processor or without data (nothing to compare: the statistics are not read), when a caller's
    collator makes the batches (its items are not them), or for a processor whose output cannot be
    read (a size that depends on the image: nothing to compare with; the checks that need it say so
    later)."""
    processor = kwargs.get("processing_class")
    given = kwargs.get("train_dataset") is not None or kwargs.get("eval_dataset") is not None
    if processor is None or not given or kwargs.get("data_collator") is not None:
        return None
    try:
        return input_stats(processor)
    except ValueError:  # a ModelError is one
        return None


def _check_processor_taken(student: Any, made: InputStats | None, first_item: Any) -> None:
    """``processing_class`` is saved with the student, and ``pipeline()`` feeds the export through it."""
    if made is not None:
        check_processor_size_taken(student, made, image_size(first_item))


def _check_given_pixels(student: Any, args: TrainingArguments, kwargs: dict[str, Any], first_item: Any,
                        made: InputStats | None) -> None:
    """The given items' ``pixel_values`` are laid out as the student reads them and, where
    ``processing_class``'s output is known (``made``), in its range and evaluated at its size. A
    caller's collator makes the batches itself: its items are not checked."""
    if kwargs.get("data_collator") is not None:
        return
    check_channels(first_item, student)
    if made is not None:
        check_pixel_range(first_item, made)
        with _said_by_the_logging_process(args):
            say_evaluation_size_not_deployed(kwargs.get("eval_dataset"), made)


def _keep_label_check(model: DistillationModel, teacher_order: list[int] | None) -> None:
    """What this trainer's label check (``check_labels``) decided, kept by its model: the order to
    read the teacher's logits in, and whether the teacher has other classes (marked on the teacher
    by the check, which another trainer sharing it may judge otherwise)."""
    model.reorder_teacher_logits(teacher_order)
    model.teacher_other_classes = has_other_classes(model.teacher)


def _check_settings(student: Any, losses: Iterable[DistillationLoss], args: TrainingArguments,
                    kwargs: dict[str, Any]) -> None:
    """The settings that need the student and the losses' names only (not the built model)."""
    check_activation_checkpointing(student, args)
    if kwargs.get("compute_metrics") is None:  # a caller's own compute_metrics may report any name
        eval_dataset = kwargs.get("eval_dataset")
        check_metric_for_best_model(args, losses, student.config.num_labels,
                                    switched_off(getattr(args, "losses", None) or []),
                                    list(eval_dataset) if isinstance(eval_dataset, dict) else None)


def _teacher_name(teacher: Any) -> str | None:
    """What the card calls the teacher: its checkpoint, or its class when it was built without one
    (an empty name would make the card describe a supervised run)."""
    if teacher is None:
        return None
    return getattr(teacher, "name_or_path", None) or type(teacher).__name__


def _is_stream(dataloader: Any) -> bool:
    """Whether a training loader reads data without a length (its passes' ends are found by reading)."""
    return dataloader is not None and not has_length(dataloader)


def _stats_or_none(processor: Any) -> InputStats | None:
    return input_stats(processor) if processor is not None else None


class _EpochEndCallback(TrainerCallback):
    """Tells every loss (the model's loss modules, loaded in place on resume) that an epoch ended,
    once per epoch.

    At an epoch's last step, not at Trainer's ``on_epoch_end``: a checkpoint written at that step
    (``save_steps``, a signal) comes before ``on_epoch_end``, and a run resumed from it starts the
    next epoch, so the epoch's end never reached the losses (EKT trained its next epoch on zero
    class centres, silently).

    A stream's (training data without a length) passes end at ``on_epoch_end`` alone: Trainer counts
    its epochs against ``max_steps``, so ``state.epoch`` is 1.0 at the run's last step inside its
    first pass, and that stop folded part of a pass into EKT's centres as a whole epoch.
    """

    def __init__(self, losses: Iterable[DistillationLoss]) -> None:
        self.losses, self.ended = losses, 0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.ended = 0  # epochs only grow within one train(); a new train() counts afresh

    def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):  # noqa: D102
        epoch = round(state.epoch or 0.0, 6)
        if epoch == int(epoch) and not _is_stream(train_dataloader):  # an epoch's last step, before a save at it
            self._end(int(epoch))

    def on_epoch_end(self, args, state, control, train_dataloader=None, **kwargs):  # noqa: D102
        # A fractional state.epoch is a pass over a stream (its steps per epoch are unknown), or a
        # stop inside an epoch (max_steps, a signal): that epoch goes on when the run is resumed or
        # extended, and ending it here folded half an epoch into EKT's centres, which the stop's
        # checkpoint then held. A stream's stop is such a stop whatever its state.epoch says.
        epoch = round(state.epoch or 0.0, 6)
        if (epoch == int(epoch) and not _is_stream(train_dataloader)) or not control.should_training_stop:
            self._end(math.ceil(epoch))

    def _end(self, epoch: int) -> None:
        if epoch > self.ended:
            self.ended = epoch
            for loss in self.losses:
                loss.on_epoch_end(epoch)


class _StreamAccumulationCheck(TrainerCallback):
    """Refuses a training stream whose pass ends inside a gradient accumulation.

    Trainer ends an accumulation at an epoch's end only when it knows the epoch's length; a stream's
    pass ended with its last micro-batches' gradients left in place, added to the next pass's first
    optimizer step (4 micro-batches where 3 were asked), and a pass shorter than the accumulation never
    took a step at all: the run trained forever at step 0, without a word.
    """

    pending = 0

    def on_substep_end(self, args, state, control, **kwargs):  # noqa: D102
        self.pending += 1

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        self.pending = 0

    def on_epoch_end(self, args, state, control, train_dataloader=None, **kwargs):  # noqa: D102
        if self.pending and _is_stream(train_dataloader):
            raise RecipeError(
                f"gradient_accumulation_steps is {args.gradient_accumulation_steps}, and a pass over the training "
                f"stream ended {self.pending} micro-batch(es) into an accumulation: Trainer does not end a stream's "
                "accumulation with its pass, so their gradients would be added to the next step (or, on a pass "
                "shorter than the accumulation, no step is ever taken). Set gradient_accumulation_steps to a divisor "
                "of the batches in a pass (per process), or lower per_device_train_batch_size")


class DistillationTrainer(CheckpointingTrainer):
    """Trainer for knowledge distillation (or plain supervised training without a teacher).

    Args:
        model: the student (a transformers image classifier), or a ready ``DistillationModel``.
        teacher: the teacher classifier, or ``None`` for supervised training.
        args: ``DistillationTrainingArguments`` (plain ``TrainingArguments`` work with defaults:
            ce + rcka with a teacher, ce alone without). A copy is kept (``self.args``): what the
            run sets for itself does not reach the caller's object.
        teacher_processor: the teacher's image processor, so the teacher sees its own
            normalisation and resolution; the student's is ``processing_class``.
        teacher_name: how the model card names the teacher (default: its ``name_or_path``, or its class
            when it was built without one).
        teacher_label_mapping: ``"by_name"`` pairs the teacher's classes with the run's by their
            ``id2label`` names (a permuted teacher is realigned, other names are an error);
            ``"by_index"`` pairs them by position. The run's names are the student's, or the
            dataset's ``ClassLabel`` names when the student's are ``LABEL_0``... A realigned
            teacher's logits are re-indexed by the trainer's model; the teacher object is not
            changed, so one teacher may serve trainers of students in other class orders.
        augmentation: Mixup/CutMix and repeated-augmentation settings (``DataArguments`` carries
            them); per-image transforms belong to the datasets. ``args.model_ema`` adds a weight EMA.
        **kwargs: everything ``Trainer`` takes (datasets, callbacks, ``compute_metrics``...).
    """

    # Every term is a per-batch mean: let Trainer divide by the accumulation steps.
    loss_is_scaled_for_ga = False
    # Whether the next training step is a train()'s first, whose model data_parallel.check_wrapped checks once
    _wrap_unchecked = False

    def __init__(
        self,
        model: PreTrainedModel | DistillationModel | None = None,
        teacher: PreTrainedModel | None = None,
        args: TrainingArguments | None = None,
        teacher_processor: Any = None,
        teacher_name: str | None = None,
        augmentation: AugmentationArguments | None = None,
        teacher_label_mapping: str = BY_NAME,
        **kwargs: Any,
    ) -> None:
        if args is None:
            raise ValueError("DistillationTrainer needs args (DistillationTrainingArguments with an output_dir)")
        # The checks below fill in settings that depend on this run (dataloader_drop_last for a short
        # last batch, ddp_broadcast_buffers for this student...): on the caller's object they would
        # read as the caller's own choices in the next trainer built with it.
        args = copy.copy(args)
        check_arguments(args)
        one_device_per_process(args)
        check_processes_join(args)
        check_half_precision(args)
        check_cpu_compiler(args)  # torch's traceback at the first step
        check_fsdp_settings(args)
        keep_token_out_of_files(args)
        with _said_by_the_logging_process(args):
            model, planned_size = _checked_model(model, teacher, args, teacher_processor, teacher_label_mapping, kwargs)
        if args.ddp_find_unused_parameters is None:  # every student weight gets a gradient (see split_heads)
            args.ddp_find_unused_parameters = False
        chosen = default_broadcast_buffers(model.student, args.ddp_broadcast_buffers)
        if args.ddp_broadcast_buffers is None and chosen is not None:  # torch's deprecation, for a value no one set
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        args.ddp_broadcast_buffers = chosen
        ignore_teacher_in_ddp(model)
        # None means hf_rcka's defaults, the collator that handles unreadable images and accuracy
        # (which the metric checks above count on), not Trainer's default collator and no metrics
        self._collator_given = kwargs.get("data_collator") is not None
        self._optimizer_given = ((kwargs.get("optimizers") or (None, None))[0] is not None
                                 or kwargs.get("optimizer_cls_and_kwargs") is not None)
        for name, default in (("data_collator", collate), ("compute_metrics", accuracy_metrics)):
            if kwargs.get(name) is None:
                kwargs[name] = default
        # labels that a loss or Mixup/CutMix reads (timm's one_hot) are checked before they reach it,
        # whoever's collator made the batch (see _label_checked)
        mixes = augmentation is not None and augmentation.mixup_active
        reads_labels = mixes or any("labels" in loss.requires for loss in model.losses.values())
        self._checked_classes = model.student.config.num_labels if reads_labels else None
        # after every check, so that a refused trainer leaves the caller's student as it was
        name_student_classes(model.student, (kwargs.get("train_dataset"), kwargs.get("eval_dataset")))
        with _said_by_the_logging_process(args):  # its loss is softmax cross-entropy, its metric the argmax's
            as_single_label(model.student.config, "the student's")  # as the command line's loader does
        super().__init__(model=model, args=args, **kwargs)
        if args.world_size > 1:
            # Trainer seeded every process alike; augmentation drawn in the main process (no loader
            # workers) then gave the copies of an image on different ranks the same crop and
            # colours, which repeated augmentation exists to vary. DeiT seeds with seed + rank; the
            # weights are already built, and DDP starts every rank from rank 0's.
            if args.data_seed is None:
                # accelerate seeds the shuffle that every rank takes its share of with torch's
                # initial seed when data_seed is unset: seed + rank after the line below, so each
                # rank would deal from its own order (some images trained twice an epoch, others never)
                self.accelerator.dataloader_config.data_seed = args.seed
            set_seed(args.seed + args.process_index)
            # the stop flag's and gathered row counts' group, made on every rank at once
            host_group(timedelta(seconds=args.ddp_timeout))
        require_full_state_dict(self.accelerator)
        keep_teacher_out_of_fsdp(self.accelerator, model, args.device)
        # a teacher no loss uses is not run, and the card calls the run supervised
        self.teacher_name = (teacher_name or _teacher_name(model.teacher)) if model.needs_teacher else None
        self._planned_size = planned_size  # of the images a later evaluation set must have
        self._teacher_label_mapping = teacher_label_mapping  # for a training set given later (_check_later_dataset)
        self._names_from = None  # that training set, whose class names the student takes as training starts
        given_eval = kwargs.get("eval_dataset")  # checked above, as a whole and part by part
        self._checked_datasets = [kwargs.get("train_dataset"), given_eval,
                                  *(given_eval.values() if isinstance(given_eval, dict) else ())]
        self._said_small_sets: list[Any] = []  # evaluation sets too small for a relation, said once each
        self._eval_loader_sources: dict[str, Any] = {}  # the dataset each kept evaluation loader reads
        self._requested_drop_last = bool(args.dataloader_drop_last)  # the batch checks may set it (batch_rows)
        self._said_batches: set = set()  # what they said of this training's last batch, said once
        self.card_facts = CardFacts()  # the CLI adds what it knows (base model, evaluation data)
        self._add_run_callbacks()
        use_resumed_progress(self.callback_handler)
        self._setup_pipeline(augmentation or AugmentationArguments())  # its EMA callback comes after those
        for callback in [c for c in self.callback_handler.callbacks if getattr(c, "runs_last", False)]:
            self.remove_callback(callback)  # after every other callback (the EMA's update): see GracefulStop
            self.add_callback(callback)

    def _add_run_callbacks(self) -> None:
        """The callbacks every distillation run has, after the caller's: the losses' epoch ends,
        the sampler's epoch, the divergence check, the check for weights made in the first forward
        (not under FSDP or DeepSpeed, whose flat parameters are not the model's), the training
        loss terms' log, a resumed run's first rate and a data-parallel run's log at its last step."""
        model = self.distillation_model
        self.add_callback(_EpochEndCallback(list(model.losses.values())))
        self.add_callback(_StreamAccumulationCheck())
        self._sampler_epoch = SamplerEpoch()
        self.add_callback(self._sampler_epoch)
        self.divergence = DivergenceCheck(lambda: self.distillation_model.trained_parts(),
                                          lambda: self.accelerator.optimizer_step_was_skipped)
        self.add_callback(self.divergence)
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            self.add_callback(LateParameterCheck(lambda: self.distillation_model))
        self._term_logs = {"train": LossTermLog(), "eval": LossTermLog()}
        # the teacher's top-1 over an evaluation of the trainer's own set, for the model card (which
        # would otherwise score the teacher once more, on one process: minutes at ImageNet's 50k images)
        self._teacher_hits = LossTermLog()
        self._evaluating_own_set = False
        self._other_set_logs: list[dict] = []  # evaluate(other_set)'s log_history entries, left off the card
        self.add_callback(self._term_logs["train"])  # empty at each attempt's start
        self.add_callback(ResumedRate())
        self._resume_step = ResumeStep()
        self.add_callback(self._resume_step)
        self._peak_rate = PeakRate()
        self.add_callback(self._peak_rate)
        self.add_callback(WarmupLongerThanRun())
        self.add_callback(NoEvaluationToKeep())
        self.add_callback(ResumedBest(lambda: self.resumed_best))
        self.add_callback(LastStepLog())  # train_loss gathered over the processes to the end
        self._finished_already = FinishedAlready()
        self.add_callback(self._finished_already)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        """Trainer's rule (no decay on biases and LayerNorm-type norms; BatchNorm weights decay), with
        norms told apart by type rather than by name (``norm_weights``), less what the model itself
        exempts."""
        names = set(super().get_decay_parameter_names(model))
        per_sample, batch = norm_weights(model)
        names = (names - per_sample) | batch
        if getattr(self.args, "model_no_weight_decay", True):
            names -= model_no_weight_decay(model)
        return [name for name, _ in model.named_parameters() if name in names]

    def _setup_pipeline(self, augmentation: AugmentationArguments) -> None:
        """Mixup/CutMix (with ``ce``'s smoothing folded in, as timm does), RA sampling, weight EMA."""
        self.augmentation = augmentation
        ce = self.distillation_model.losses["ce"] if "ce" in self.distillation_model.losses else None
        smoothing = (getattr(ce, "label_smoothing", None) or 0.0) if ce is not None else 0.0
        self.mixup = build_mixup(augmentation, self.distillation_model.student.config.num_labels, smoothing)
        self.model_ema: StudentEmaCallback | None = None
        if getattr(self.args, "model_ema", False):
            if self.is_fsdp_enabled:
                raise ValueError("model_ema averages a whole student and cannot average an FSDP-sharded one; "
                                 "turn model_ema off or train with DDP")
            self.model_ema = StudentEmaCallback(
                self.distillation_model.student, self.args.model_ema_decay, self.args.model_ema_warmup
            )
            self.add_callback(self.model_ema)

    @property
    def distillation_model(self) -> DistillationModel:
        # unwrap_model walks every module (for compiled regions): once per model object, not at each
        # call (twice per evaluation batch); a model Trainer wraps anew is a new object
        model = self.model
        known = self.__dict__.get("_unwrapped")
        if known is None or known[0] is not model:
            known = self._unwrapped = (model, self.accelerator.unwrap_model(model))
        return known[1]

    # ------------------------------------------------------------------ loss and logging

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model's total loss; records each weighted term it returns for logging.

        In training, Mixup/CutMix mix the batch first: student and teacher see the same pixels.
        """
        first_step = model.training and self._wrap_unchecked
        if model.training:
            if self._wrap_unchecked:  # the first step of a train(): the model as Trainer prepared it
                check_wrapped(self, model)
                if self.is_fsdp_enabled:  # wrapped by accelerate's prepare, which has just run
                    restore_rng_in_wrapped_checkpoints(self.distillation_model.student)
                self._wrap_unchecked = False
            if self.mixup is not None:
                pixel_values, labels = mix_batch(self.mixup, inputs["pixel_values"], inputs["labels"])
                inputs = {**inputs, "pixel_values": pixel_values, "labels": labels}
        else:
            check_evaluation_labels("an evaluation batch", inputs["labels"])  # a stream's, or a later set's
            inputs = {**inputs, "labels": _without_padding(inputs["labels"], self.accelerator)}
        check_batch_keys(inputs)  # a stream's batches, which were not read when the trainer was built
        outputs = model(**inputs)
        if first_step and torch.is_grad_enabled():
            self.distillation_model.check_training_terms(outputs.loss_terms)
        if model.training:  # each micro-batch's share of its optimizer step, as Trainer's loss
            weights = dict.fromkeys(outputs.loss_terms, 1.0 / max(1, getattr(self, "current_gradient_accumulation_steps", 1)))
            self._term_logs["train"].add(outputs.loss_terms, weights)
        else:
            counted = (inputs["labels"] != IGNORE_INDEX).sum().float()  # on the device: read once, after the last batch
            self._term_logs["eval"].add(outputs.loss_terms,
                                        self._evaluation_weights(inputs["labels"], outputs.loss_terms, counted))
            if outputs.teacher_logits is not None and not self.distillation_model.teacher_other_classes:
                self._teacher_hits.add(*_top1(outputs.teacher_logits, inputs["labels"], counted))
        return (outputs.loss, {"logits": outputs.logits}) if return_outputs else outputs.loss

    def _evaluation_weights(self, labels: torch.Tensor, terms: dict[str, torch.Tensor],
                            counted: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each term counts the batch's counted images (``counted``, when already counted): the model
        leaves rows labelled IGNORE_INDEX out of every term (unreadable images' stand-ins, and the
        repeats that even out the last batches under data parallelism). A relation over the batch's
        samples counts for nothing in a batch too small for it (a short last batch), where its value
        is a constant. The weights stay 0-dim tensors on the device: reading them would make each
        evaluation batch wait for the device."""
        counted = ((labels != IGNORE_INDEX).sum() if counted is None else counted).float()
        weights = dict.fromkeys(terms, counted)
        everywhere = None
        for loss in self.distillation_model.losses.values():
            relational = [t for t in getattr(loss, "sample_relation_terms", ()) if t in terms]
            if not relational:
                continue
            rows = counted
            if getattr(loss, "gather", False):  # the relation holds every process's rows
                if everywhere is None:
                    everywhere = self.accelerator.reduce(counted, "sum")
                rows = everywhere
            weights.update(dict.fromkeys(relational, torch.where(rows >= loss.min_relation_rows, counted, 0.0)))
        return weights

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the per-term training losses next to Trainer's ``loss``; leave out a ``total_flos``
        nothing counted (see ``_without_uncounted_flos``)."""
        if "loss" in logs:
            terms = self._term_logs["train"].means(self.accelerator.gather)
            logs = {**logs, **{f"{name}_loss": v for name, v in terms.items()}}
        super().log(_without_uncounted_flos(logs), start_time)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Trainer's. A set other than the trainer's own evaluated under the ``eval`` prefix
        (``evaluate(test_set)``) stays off the model card, which would put its numbers beside the
        teacher's on the trainer's own set, as that set's ("same images", split: validation)."""
        before = len(self.state.log_history)
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if metric_key_prefix == "eval" and self._evaluated_another_set():
            self._other_set_logs += self.state.log_history[before:]
            if self.is_world_process_zero():
                logger.warning("evaluated a set other than the trainer's eval_dataset under the 'eval' prefix: the "
                               "model card leaves these numbers out (pass metric_key_prefix='test' to tell them apart)")
        return metrics

    def _evaluated_another_set(self) -> bool:
        """Whether the evaluation or prediction running (or just run) reads a set other than the
        trainer's own evaluation set, whose numbers the card shows. (Not whether training runs:
        Trainer leaves ``is_in_train`` set after a ``train()`` that raised, and an ``evaluate(test_set)``
        then would have reached the card as the run's own.)"""
        return self.eval_dataset is not None and not self._evaluating_own_set

    # Public hook (shared by evaluate and predict), so ``test_*`` metrics get the per-term losses too.
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval") -> EvalLoopOutput:
        """Trainer's loop, plus ``{prefix}_{term}_loss`` for every loss term; with ``model_ema``,
        both weight sets.

        The plain ``{prefix}_*`` metrics are always those of the weights ``save_model`` exports,
        so ``eval_accuracy`` (all_results.json, the model card, ``metric_for_best_model``) is the
        deployed model's: the live weights, with ``{prefix}_ema_*`` for the average; or, with
        ``model_ema_export``, the average, with ``{prefix}_live_*`` for the live weights. The other
        set is evaluated without the teacher: its accuracy and the terms that do not read the
        teacher (``ce``), but no teacher term and no total loss (a second teacher pass at every
        evaluation cost about as much as the first, a few percent of a DeiT run).

        Every metric is over the evaluation set's readable images, each counted once: unreadable
        images' stand-ins (labelled ``IGNORE_INDEX``, see ``data.datasets.collate``) and, under
        data parallelism, the repeats that even out the last batches count in none.
        ``{prefix}_{term}_loss`` is each term's mean over those images, a batch's term weighted
        by its counted images, and ``{prefix}_loss`` is their sum, the mean total loss, in place
        of Trainer's mean of whole batches' losses. A relational term (RCKA's) is computed over
        the counted rows of its batch (of every process's batch with ``gather``), so without
        ``gather`` a data-parallel evaluation reports what one process reports for the same batches
        (but for a stream's last round, which accelerate's dispatcher splits evenly across processes:
        its relations are over other groups of images than one process's short last batch);
        a relation over the samples leaves out a batch too small for it (a short last batch), where
        it is a constant, and is not reported when no batch was large enough.
        """
        # A loader's iterator draws its base seed from torch's generator, which training's
        # augmentation (random erasing, Mixup/CutMix) draws from too: evaluating (or checking the
        # teacher) would move every later draw, so a run changed when it evaluated more often.
        with torch.random.fork_rng(devices=[]):
            return self._evaluations((dataloader, description, prediction_loss_only, ignore_keys), metric_key_prefix)

    def _evaluations(self, run: tuple, metric_key_prefix: str) -> EvalLoopOutput:
        """The exported weights' evaluation, and with ``model_ema`` the other set's (see ``evaluation_loop``)."""
        dataloader, description = run[:2]
        if self.model_ema is None or not (self.model_ema.has_average or self.is_in_train):
            # nothing averaged, outside training (an evaluation-only re-check of an EMA run): a second
            # pass would report the same weights under ema_/live_ names. In training (eval_on_start)
            # both sets are reported, as metric_for_best_model may name either.
            return self._evaluation_pass(*run, metric_key_prefix)
        export_ema = bool(getattr(self.args, "model_ema_export", False))
        averaged, live = self.model_ema.swapped_in(), contextlib.nullcontext()
        with averaged if export_ema else live:
            output = self._evaluation_pass(*run, metric_key_prefix)
        close_evaluation_bars(self.callback_handler.callbacks)  # each pass its own bar (one ran to twice its length)
        with live if export_ema else averaged, self.distillation_model.without_teacher():
            other = f"{metric_key_prefix}_live" if export_ema else f"{metric_key_prefix}_ema"
            weights = "the trained weights" if export_ema else "the weight average"
            metrics = self._evaluation_pass(dataloader, f"{description} of {weights}", *run[2:], other).metrics
        if self.distillation_model.needs_teacher:  # the student's terms alone: no total beside the exported set's
            metrics.pop(f"{other}_loss", None)
        output.metrics.update(metrics)
        return output

    def _evaluation_pass(self, dataloader, description, prediction_loss_only, ignore_keys,
                         metric_key_prefix: str) -> EvalLoopOutput:
        self._term_logs["eval"].reset()
        self._teacher_hits.reset()
        # the export's (rank 0's) BatchNorm statistics, and rank 0's of the losses' own (srd's projector)
        share_running_stats(self.distillation_model.student)
        share_running_stats(self.distillation_model.losses)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        terms = self._term_logs["eval"].means(self.accelerator.gather)
        teacher_top1 = self._teacher_hits.means(self.accelerator.gather).get("top1")
        if teacher_top1 is not None and metric_key_prefix == "eval" and self._evaluating_own_set:
            self.card_facts.teacher_accuracy = teacher_top1
        output.metrics.update({f"{metric_key_prefix}_{name}_loss": v for name, v in terms.items()})
        if terms:  # the total over counted images; Trainer's averages batch losses, stand-ins and repeats included
            output.metrics[f"{metric_key_prefix}_loss"] = sum(terms.values())
        # the card's count, of the set whose numbers it shows (not evaluate(test_set)'s: see evaluate)
        if metric_key_prefix == "eval" and output.label_ids is not None and not self._evaluated_another_set():
            self.card_facts.unreadable_eval_images = _uncounted(output.label_ids)
        if self.args.world_size > 1 and not has_length(dataloader.dataset):
            # a stream's count was this process's alone, and the speed metrics divided by it
            output = output._replace(num_samples=_gathered_count(output, output.num_samples))
        return output

    # ------------------------------------------------------------------ sampling

    def get_eval_dataloader(self, eval_dataset=None):
        """Trainer's, with every evaluation image: ``dataloader_drop_last`` is a training setting
        (DeiT drops the last training batch, never validation images), but Trainer applies it to
        evaluation too, which would leave the eval set's remainder silently unevaluated."""
        # the set evaluated: one given, one named in the eval_dataset dict, or the trainer's own
        key = eval_dataset if isinstance(eval_dataset, str) else "eval"
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]
        else:
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        # the trainer's own set, or one of its own named sets (Trainer.evaluate() passes each one's name)
        own = self.eval_dataset.values() if isinstance(self.eval_dataset, dict) else [self.eval_dataset]
        self._evaluating_own_set = not isinstance(dataset, dict) and any(dataset is set_ for set_ in own)
        self._check_later_dataset(dataset, "eval_dataset")
        self._say_unrelated_terms(dataset)
        check_iterable_dispatch(self.args, [dataset])
        self._forget_other_eval_loader(key, dataset)
        with _every_image_in_order(self.args), self._label_checked():
            return leave_signals_to_main_process(super().get_eval_dataloader(eval_dataset))

    def _say_unrelated_terms(self, dataset: Any) -> None:
        """An evaluation set too small for a relation reports no relational term: said once per set
        (``train()`` refuses such a set for the evaluations it runs; ``evaluate()`` takes it)."""
        if not has_length(dataset) or any(dataset is said for said in self._said_small_sets):
            return
        short = too_few_rows(self.distillation_model.losses, len(dataset), 1)
        if short:
            self._said_small_sets.append(dataset)
            logger.warning("the evaluation set has %d image(s): %s relate the samples of a batch, and their terms "
                           "are left out of its metrics (evaluate at least %d images)", len(dataset),
                           ", ".join(short), max(short.values()))

    @contextlib.contextmanager
    def _label_checked(self) -> Iterator[None]:
        """Loaders built inside collate through ``CheckedClassIds`` around ``self.data_collator``
        (hf_rcka's or the caller's), when a loss or Mixup/CutMix reads the labels. The attribute
        stays the caller's object: a setting they change on ``trainer.data_collator`` reaches the
        loaders (set on a wrapper in its place, it was silently not used)."""
        collator = self.data_collator
        if self._checked_classes is not None:
            self.data_collator = CheckedClassIds(collator, self._checked_classes)
        try:
            yield
        finally:
            self.data_collator = collator

    def _forget_other_eval_loader(self, key: str, dataset: Any) -> None:
        """With persistent workers Trainer keeps one loader per key, ``"eval"`` for any dataset
        object: ``evaluate(other_set)``, or a later ``trainer.eval_dataset``, scored the first set's
        images (accuracy 0.0 for a set that scored 1.0). A loader is kept only for the set it reads."""
        loaders, sources = getattr(self, "_eval_dataloaders", {}), self._eval_loader_sources
        if key in loaders and sources.get(key) is not dataset:
            del loaders[key]
        sources[key] = dataset

    def _check_later_dataset(self, dataset: Any, role: str) -> None:
        """The constructor's checks for a dataset it did not see: one handed to ``evaluate()`` or
        ``predict()``, or set as ``trainer.eval_dataset`` or ``trainer.train_dataset`` since (each
        is checked once)."""
        if dataset is None or any(dataset is seen for seen in self._checked_datasets):
            return
        check_later_dataset(self.distillation_model.student, dataset, role, self._collator_given, self._planned_size)
        self._pair_classes_by_later_names(dataset, role)
        self._checked_datasets.append(dataset)

    def _pair_classes_by_later_names(self, dataset: Any, role: str) -> None:
        """A dataset given after construction that names the classes (a ``ClassLabel``), for a
        trainer built without names (a student whose classes are only numbered, datasets that name
        none), whose teacher was paired with the data by position.

        A training set's names, with the evaluation set's, pair the teacher and name the student, as
        the constructor does with such datasets (``check_labels``): a teacher that orders the classes
        otherwise taught each class another's logit (exit 0). An evaluation set's are only compared
        with the teacher's (``say_names_paired_by_position``).
        """
        model = self.distillation_model
        student_names = model_class_names(model.student)
        if student_names is None or not numbered_only(student_names) or not data_class_names((dataset,)):
            return
        if role != "train_dataset":
            read = model.teacher if model.needs_teacher and not model.teacher_other_classes else None
            say_names_paired_by_position(dataset, role, read, self._teacher_label_mapping)
            return
        order = check_labels(model.student, model.teacher, self.args, (dataset, self.eval_dataset),
                             self._teacher_label_mapping, loss_names=list(model.losses))
        _keep_label_check(model, order)
        self._names_from = dataset  # the caller's student is renamed once train() has passed its checks

    def get_test_dataloader(self, test_dataset):
        """Every test image, as :meth:`get_eval_dataloader`. A prediction's set is never the
        trainer's own evaluation set for the card (``predict(other, metric_key_prefix="eval")`` put
        its teacher accuracy and unreadable-image count there)."""
        self._evaluating_own_set = False
        self._check_later_dataset(test_dataset, "test_dataset")
        with _every_image_in_order(self.args), self._label_checked():
            return leave_signals_to_main_process(super().get_test_dataloader(test_dataset))

    # Private override. Trainer.get_train_dataloader (public) builds its loader through the private
    # _get_dataloader, which takes the sampler from this method: overriding it is the one way to
    # use our sampler and keep everything else Trainer sets on the loader (workers, collator,
    # column removal, worker seeding, accelerate preparation), rather than rebuild all of that.
    def _get_train_sampler(self, train_dataset=None):
        """DeiT's repeated-augmentation sampler when ``aug_repeats`` > 0, else Trainer's."""
        repeats = self.augmentation.aug_repeats
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not repeats or dataset is None:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed  # as Trainer's sampler
        sampler = RepeatedAugmentationSampler(dataset, repeats, num_replicas=max(1, self.args.world_size),
                                              rank=self.args.process_index, seed=seed)
        self._sampler_epoch.sampler = sampler  # its epoch, also after a resume (see SamplerEpoch)
        return sampler

    def get_train_dataloader(self):
        """Trainer's loader; a rank-aware RA sampler is not sharded again by accelerate. Built again
        for every ``auto_find_batch_size`` attempt, so that attempt's batch and last batch are checked."""
        self._check_training_batches()
        with self._label_checked():
            return leave_signals_to_main_process(keep_rank_sharding(super().get_train_dataloader()))

    def _say_unused_per_image_settings(self) -> None:
        """The trainer applies Mixup/CutMix and repeated augmentation alone; ``aa``, ``reprob`` and the
        other per-image settings act through the training set's transform (the command line builds it
        from them). Given to the trainer beside a set whose ``pixel_values`` come ready (not decoded by
        hf_rcka's transform), they changed nothing, and nothing said so."""
        settings = [] if self.augmentation.no_aug else self.augmentation.per_image_settings()
        if not settings or self.train_dataset is None or decodes_its_images(self.train_dataset):
            return
        with _said_by_the_logging_process(self.args):
            logger.warning("augmentation: %s act through the training set's own per-image transform, which the trainer "
                           "does not build (it applies mixup/cutmix and aug_repeats): this train_dataset's pixel_values "
                           "come ready, so they act only if its own transform applies them. Augment the images in the "
                           "dataset's transform (hf_rcka.data.transforms.train_transform(processor, augmentation) is "
                           "timm's, as the command line's), and give the trainer's augmentation= only mixup, cutmix "
                           "and aug_repeats", ", ".join(settings))

    def _check_training_batches(self) -> None:
        losses = self.distillation_model.losses
        if self._train_batch_size != self.args.train_batch_size:  # a retry, which no check before training saw:
            check_relation_rows(losses, self.args, batch=self._train_batch_size,  # it trained on at 2 images
                                cause=" (auto_find_batch_size lowered the batch after running out of memory)")
            check_mixing_rows(self.mixup is not None, self.args, batch=self._train_batch_size,
                              cause=" (auto_find_batch_size lowered the batch after running out of memory)")
        if self.train_dataset is not None and hasattr(self.train_dataset, "__len__"):
            check_training_batches(len(self.train_dataset), self.args, self.augmentation.aug_repeats,
                                   self.distillation_model.student, losses,
                                   batch_size=self._train_batch_size, requested_drop_last=self._requested_drop_last,
                                   said=self._said_batches)

    # ------------------------------------------------------------------ training, checked before and after

    def train(self, *args: Any, **kwargs: Any):
        """Check that the student can be saved, the batch size the relational losses need and the
        teacher on a few hundred evaluation images before spending compute, then train as Trainer does.

        Raises:
            TrainingDiverged: the trained weights are not finite at the end, or fp16 loss scaling
                skipped every step for the last 50 (see ``divergence``), so that nothing saves them
                as the run's result.
        """
        check_saveable(self.distillation_model.student)
        check_trainable_precision(self.distillation_model.student, own_optimizer=not self._optimizer_given)
        if self.distillation_model.left_out:
            raise RecipeError(f"this trainer was built without a train_dataset, to evaluate, so losses "
                              f"{sorted(self.distillation_model.left_out)} that read freshly built weights are left "
                              "out: they would not train. Build the trainer with the train_dataset to train")
        self._check_later_dataset(self.train_dataset, "train_dataset")  # one set as trainer.train_dataset since
        losses = self.distillation_model.losses
        check_relation_rows(losses, self.args)
        check_mixing_rows(self.mixup is not None, self.args)  # the command line's preflight refuses it too
        check_repeats_unsplit(self.augmentation.aug_repeats, self.args)
        with _said_by_the_logging_process(self.args):  # which checkpoint it resumes
            if args:
                args = (_whole_if_last(args[0], self.args.output_dir), *args[1:])
            elif "resume_from_checkpoint" in kwargs:
                kwargs["resume_from_checkpoint"] = _whole_if_last(kwargs["resume_from_checkpoint"], self.args.output_dir)
        resuming = bool(kwargs.get("resume_from_checkpoint") or (args and args[0]))
        check_identical_repeats(self.augmentation, resuming)
        self._say_unused_per_image_settings()
        check_iterable_dispatch(self.args, [self.train_dataset])  # each evaluation set: get_eval_dataloader
        if self.eval_dataset is not None and evaluates(self.args):
            for evaluation in (self.eval_dataset.values() if isinstance(self.eval_dataset, dict) else [self.eval_dataset]):
                check_evaluation_rows(losses, self.args, len(evaluation) if hasattr(evaluation, "__len__") else None)
        if self.train_dataset is not None and not hasattr(self.train_dataset, "__len__"):
            check_unsized_training(self.augmentation.aug_repeats, self.distillation_model.student, losses,
                                   self.args.gradient_accumulation_steps)
            if resuming:
                logger.warning("resuming on training data without a length: Trainer skips the batches the run trained, "
                               "counted from the start of the stream, so a checkpoint written after the stream's "
                               "first pass ended resumes at another place in it than where the run stopped (a stream "
                               "longer than the whole run resumes where it stopped)")
        self._said_batches.clear()  # each training says its last batch once (checked here and as its loader is built)
        self._check_training_batches()
        self.check_teacher()
        self.distillation_model.follow_student_checkpointing()  # turned on since the trainer was built
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if self.is_fsdp_enabled and plugin is not None and plugin.activation_checkpointing:
            # fsdp_config activation_checkpointing (or fsdp_activation_checkpointing in accelerate's
            # config): the student's blocks are recomputed in the backward, wrapped only in prepare
            self.distillation_model.keep_statistics_in_wrapped_checkpoints()
        forget_evaluation_preparation(self)
        self.best_model_loaded = False  # an earlier train() of this trainer may have loaded its best checkpoint
        self._wrap_unchecked = True
        if self._names_from is not None:
            name_student_classes(self.distillation_model.student, (self._names_from,))
            self._names_from = None
        output = super().train(*args, **kwargs)
        self.divergence.check(self.args, self.state, self.control)  # a divergence no logging or saving step saw
        if self.divergence.error is not None:
            raise self.divergence.error
        return output._replace(metrics=_without_uncounted_flos(output.metrics))

    # Private override. With save_strategy "best", Trainer decides to save after the callbacks have
    # seen the evaluation (``should_save = is_new_best_metric``), and a NaN model can be the best
    # (argmax over NaN logits still scores about 1/C): the divergence check guards the save itself.
    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        self.divergence.check(self.args, self.state, self.control)
        if self.divergence.error is None:
            super()._save_checkpoint(model, trial)

    # ------------------------------------------------------------------ teacher sanity check

    def check_teacher(self) -> float | None:
        """Teacher top-1 on at least ``CHECK_IMAGES`` evaluation images drawn from the whole set, a
        batch at a time; warn or stop when it is near chance (see teacher_check)."""
        mode = getattr(self.args, "teacher_accuracy_check", TEACHER_CHECK_DEFAULT)
        model = self.distillation_model
        if mode == "off" or model.teacher is None or not model.needs_teacher or self.eval_dataset is None:
            return None
        evaluation = self.eval_dataset  # several named evaluation sets: the first one's
        evaluation = next(iter(evaluation.values())) if isinstance(evaluation, dict) else evaluation
        checked = len(self._checked_datasets)
        round_of_batches = self.args.per_device_eval_batch_size * max(1, self.args.world_size)
        rounds = -(-CHECK_IMAGES // round_of_batches)
        model.to(self.args.device)
        gather = self.accelerator.gather if self.args.world_size > 1 else None
        with torch.random.fork_rng(devices=[]):  # see evaluation_loop
            loader = self.get_eval_dataloader(self._teacher_check_sample(evaluation, rounds * round_of_batches))
            # the sample is drawn anew at each train() from a set checked already: not kept as one more checked set
            del self._checked_datasets[checked:]
            batches = iter(loader)
            try:
                return judge_teacher(model, self._device_batches(itertools.islice(batches, rounds)), mode, gather,
                                     say=self.args.should_log)
            finally:  # left before its end: its workers stop now, and accelerate forgets it as it would at its end
                getattr(batches, "close", lambda: None)()
                if loader in self.accelerator.gradient_state.dataloader_references:
                    loader.end()

    def _device_batches(self, loader: Iterable[dict]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(pixel_values, labels)`` of each batch, on the device; an evaluation set smaller than one
        round of batches has its first images repeated at its end, which must not count twice."""
        for batch in loader:
            check_evaluation_labels("an evaluation batch", batch["labels"])
            labels = _without_padding(batch["labels"].to(self.args.device), self.accelerator)
            yield batch["pixel_values"].to(self.args.device), labels

    def _teacher_check_sample(self, evaluation: Any, images: int) -> Any:
        """``images`` drawn at random with ``seed`` (the same on every process): a ``datasets.Dataset``
        as ``max_eval_samples`` draws (``seeded_subset``), another map-style set (torchvision's
        ImageFolder) by index. The first batch of image folders, listed class by class, held one or
        two classes, where a teacher that answered one class for every image scored 1.0. A stream
        gives its first batches."""
        if isinstance(evaluation, datasets.Dataset):
            return seeded_subset(evaluation, images, self.args.seed)
        map_style = isinstance(evaluation, torch.utils.data.Dataset) and has_length(evaluation) \
            and not isinstance(evaluation, torch.utils.data.IterableDataset)
        if map_style and images < len(evaluation):
            order = torch.randperm(len(evaluation), generator=torch.Generator().manual_seed(self.args.seed))
            return torch.utils.data.Subset(evaluation, order[:images].tolist())
        return evaluation

    def hyperparameter_search(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: Trainer's search builds each trial's model through ``model_init``, which a
        distillation model (one given student with its teacher) does not take, and its own message
        then asked for a ``model_init`` that this trainer refuses."""
        raise ModelError("DistillationTrainer does not run hyperparameter_search: each trial needs its own fresh "
                         "student, and the trainer wraps the one it is given. Build a new student and "
                         "DistillationTrainer per trial (for example in an optuna objective) and return its metric")

    # ------------------------------------------------------------------ model card

    def create_model_card(
        self, model_name: str | None = None, dataset: str | None = None, license: str | None = None,
        finetuned_from: str | None = None, tags: str | list[str] | None = None,
        language: str | list[str] | None = None, **kwargs: Any,
    ) -> None:
        """A card that names the teacher as teacher (never as ``base_model``); see ``card.write_model_card``.

        ``self.card_facts`` (filled by the CLI: base model, evaluation data) is completed here with
        the teacher's accuracy on the evaluation set and the ``baseline_dir`` run's accuracy.
        ``finetuned_from`` names the Hub checkpoint a student given in Python started from (its
        ``base_model``; the command line records it itself); ``tags`` and ``language`` go into the
        card's metadata. Trainer's other card arguments (``tasks``, ``dataset_tags``,
        ``dataset_args``) do not apply: the task is image classification, and the data is
        ``dataset``'s.
        """
        if not self.is_world_process_zero():
            return
        if kwargs:
            logger.warning("model card: %s not used (the task is image classification; name the data with dataset)",
                           ", ".join(sorted(kwargs)))
        license = license if license is not None else getattr(self.args, "card_license", None)
        if self.processing_class is None:
            logger.warning("no processing_class was given, so %s holds no image processor: the card's usage snippet "
                           "and pipeline() cannot load the model as it is; pass processing_class (the student's "
                           "image processor) to the trainer, or save one into the folder", self.args.output_dir)
        facts = self.card_facts
        if finetuned_from is not None:
            facts.base_model, facts.local_checkpoint, facts.start_recorded = finetuned_from, None, True
        facts.tags = [tags] if isinstance(tags, str) else list(tags or facts.tags)
        facts.language = language if language is not None else facts.language
        best = self.state.best_model_checkpoint if self.args.load_best_model_at_end else None
        history = [entry for entry in self.state.log_history if not any(entry is o for o in self._other_set_logs)]
        metrics = exported_metrics(history, best, self.state.global_step)
        complete_card_facts(self)
        write_model_card(
            self.args.output_dir,
            model_name=model_name or os.path.basename(os.path.abspath(self.args.output_dir)),
            student=self.distillation_model.student,
            teacher_name=self.teacher_name,
            losses={term: weight for loss in self.distillation_model.losses.values()
                    for term, weight in loss.term_weights.items()},
            dataset=dataset,
            metrics=metrics,
            facts=self.card_facts,
            repo_id=self.hub_model_id or self.args.hub_model_id or self.args.output_dir,
            revision=self.args.hub_revision if self.hub_model_id or self.args.hub_model_id else None,
            license=license,
            training=training_text(self.state.global_step, self._card_epochs(),
                                   describe_batch(self.args, self._train_batch_size),
                                   *self._peak_learning_rate(), checkpoint_step(best or ""),
                                   self.args.model_ema_decay if self.model_ema is not None else None,
                                   bool(getattr(self.args, "model_ema_export", False)),
                                   self._resume_step.step, self._ema_last_decay()),
            reproduction=reproduction_text(self.args.seed, run_mixed_precision(self.args)),
            has_processor=self.processing_class is not None,
            decoded=self._decodes_its_images(),
        )

    def _card_epochs(self) -> float | None:
        """The passes over the training data the card states; none for a stream. Trainer counts a
        stream's epochs against ``max_steps`` (its first pass as ``max_steps`` steps long), so a
        20-image stream at batch 5 trained 3 steps as "1 epoch" and 8 steps (two passes) as 1.5."""
        if self.train_dataset is not None and not has_length(self.train_dataset):
            return None
        return self.state.epoch

    def _ema_last_decay(self) -> float | None:
        """The decay of the average's last update under timm's warm-up (``model_ema_warmup``), for
        the card: it rises as ``1 - (1 + step)^(-2/3)`` and reaches 0.9998 only after about 350k steps,
        so ``model_ema_decay`` alone misdescribes the average of a shorter run."""
        if self.model_ema is None or not getattr(self.args, "model_ema_warmup", False):
            return None
        return self.model_ema.ema.get_decay(self.state.global_step)

    def _decodes_its_images(self) -> bool:
        """Whether hf_rcka decoded the images the card describes (those it trained on, or evaluated
        on without training), or the caller gave ready pixels."""
        given = self.train_dataset if self.train_dataset is not None else self.eval_dataset
        sets = list(given.values()) if isinstance(given, dict) else [given]
        return all(decodes_its_images(dataset) for dataset in sets if dataset is not None)

    def _peak_learning_rate(self) -> tuple[float, float]:
        """The highest rate the run's steps trained at, and the rate its schedule peaks at (a
        resumed run keeps its checkpoint's): a warm-up longer than the run never reaches it."""
        schedule = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)  # accelerate may wrap it
        bases = getattr(schedule, "base_lrs", None)
        target = max(bases) if bases else self.args.learning_rate
        if isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):  # step k trains at base x factor(k - 1)
            reached = max((base * factor(step) for base, factor in zip(schedule.base_lrs, schedule.lr_lambdas)
                           for step in range(self.state.global_step)), default=target)
        else:  # the rates this launch's steps ran at, and those an earlier launch logged
            logged = [entry["learning_rate"] for entry in self.state.log_history if "learning_rate" in entry]
            stepped = [] if self._peak_rate.highest is None else [self._peak_rate.highest]
            reached = max(logged + stepped, default=target)
        return reached, target


def exported_metrics(log_history: list[dict], best_checkpoint: str | None = None, final_step: int | None = None) -> dict:
    """The ``eval_*`` metrics of the weights that are exported, for the model card.

    Without ``load_best_model_at_end`` the exported weights are the last step's, so these are the
    evaluations logged at ``final_step``: none when that step was not evaluated (a resumed run
    with ``do_eval: false`` showed the numbers of the model it resumed from). With it the best
    checkpoint's weights are exported, and the last evaluation may have measured other weights
    (the last periodic one, when ``do_eval: false`` runs no final evaluation), so the metrics
    are those logged at the best checkpoint's step; a final evaluation of the reloaded best
    weights, if any, is logged at the last step and counts only when that is the best step.
    """
    step = checkpoint_step(best_checkpoint) if best_checkpoint else final_step
    metrics = {}
    for entry in log_history:
        if step is None or entry.get("step") == step:
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    return metrics


def _whole_if_last(resume: Any, output_dir: str) -> Any:
    """``resume_from_checkpoint=True``: the last checkpoint written whole (``resumable_checkpoint``), where
    Trainer took the highest-numbered folder, one a full disk or a kill cut short too; True (Trainer's
    own error) when there is none."""
    if resume is True and os.path.isdir(output_dir):
        return resumable_checkpoint(output_dir) or True
    return resume


def _without_uncounted_flos(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without a ``total_flos`` of 0: Trainer counts a step's operations through the
    model's ``floating_point_ops`` (a language model's 6 x tokens x parameters), which the
    ``DistillationModel`` does not have, so every run reported 0.0 floating-point operations.
    A subclass that counts them (overriding ``floating_point_ops``) keeps its figure."""
    if metrics.get("total_flos", 1) == 0:
        return {k: v for k, v in metrics.items() if k != "total_flos"}
    return metrics


def _without_padding(labels: torch.Tensor, accelerator: Any) -> torch.Tensor:
    """``labels`` with the repeats that even out the last evaluation batches labelled ``IGNORE_INDEX``.

    Under data parallelism accelerate fills the last round of batches, one per process, with the
    evaluation set's first images, so that every process runs as many batches of the same size.
    ``gather_for_metrics`` drops them from predictions by position: of the round's rows, gathered
    in process order, the first ``remainder`` are real. A loss term cannot be cut after the fact
    (RCKA's is a relation over its whole batch), so the repeats are marked before the forward.
    """
    state = accelerator.gradient_state
    if accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
        return labels
    if not getattr(accelerator, "even_batches", True):
        return labels  # nothing was repeated
    rows = labels.shape[0]
    real = min(max(state.remainder - accelerator.process_index * rows, 0), rows)
    if real == rows:
        return labels
    labels = labels.clone()
    labels[real:] = IGNORE_INDEX
    return labels


def _gathered_count(output: EvalLoopOutput, default: int) -> int:
    """How many images every process evaluated together: the gathered labels' (or predictions')
    rows, which accelerate de-pads."""
    rows = output.label_ids if output.label_ids is not None else output.predictions
    while isinstance(rows, (tuple, list)) and rows:
        rows = rows[0]
    return len(rows) if rows is not None and hasattr(rows, "__len__") else default


def _top1(logits: torch.Tensor, labels: torch.Tensor,
          rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A batch's top-1 over its counted rows (a device count), weighted by their number (as
    ``LossTermLog`` takes it: a batch of no counted row weighs 0, and its NaN is not added)."""
    accuracy, rows = counted_top1(logits, labels, rows)
    return {"top1": accuracy}, {"top1": rows.float()}


def _uncounted(label_ids: Any) -> int:
    """How many evaluated labels are ``IGNORE_INDEX``: the evaluation set's unreadable images.

    ``label_ids`` are gathered from every process, less the samples accelerate repeats to even
    out the last batches, so each image of the evaluation set appears once.
    """
    arrays = label_ids if isinstance(label_ids, (list, tuple)) else [label_ids]
    return sum(int((np.asarray(labels) == IGNORE_INDEX).sum()) for labels in arrays)
