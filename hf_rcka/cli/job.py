"""The ``distill`` job: checks -> models -> data -> trainer -> train/eval -> save/push.

``run`` takes the three argument dataclasses (built from the recipe) and does what the recipe
asks; ``main`` calls it for a recipe, the smoke test for its shortened recipe. Everything the
recipe alone decides is checked before anything is loaded; the resolved recipe is written to
``output_dir`` before training starts, and an interrupted run leaves a checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from typing import Any, ContextManager, Iterator, Sequence

import datasets
import huggingface_hub
import transformers
import transformers.trainer
from transformers.trainer_utils import get_last_checkpoint, has_length

from ..arguments import (
    RUN_DEFAULTS, DataArguments, DistillationTrainingArguments, ModelArguments, global_batch_size, left_out_defaults,
    run_mixed_precision,
)
from ..data.bad_images import SkippedImages, SkippedImagesCallback
from ..data.datasets import label_names, prepare_datasets
from ..data.label_values import check_class_count, check_trained_classes
from ..distributed import from_rank0
from ..errors import DataError, HubUploadError, RecipeError, StudentNearChance, user_message
from ..file_writes import missing_folders
from ..log_levels import errors_only
from ..modeling.distillation_model import DistillationModel
from ..modeling.teacher_inputs import input_stats
from ..models.labels import check_validation_labels, resume_label_order, run_label_order
from ..models.loading import load_image_classifier
from ..models.processors import load_image_processor
from ..trainer.batch_rows import check_evaluation_rows
from ..trainer.card_facts import card_facts_of
from ..trainer.chance import at_chance, slow_average, warn_if_student_at_chance
from ..trainer.checkpoint_folders import (
    checkpoint_folder, checkpoint_step, last_checkpoint, resumable_checkpoint, written_whole,
)
from ..trainer.divergence import check_loaded_weights
from ..trainer.given_models import leave_out_fresh_losses
from ..trainer.interrupt import GracefulStop, Interrupted, save_checkpoint_now, stopped_by_signal
from ..trainer.resume_hint import Stopped
from ..trainer.teacher_record import recorded_teacher
from ..modeling.assembly import build_distillation_model, run_loss_specs
from ..trainer.trainer import DistillationTrainer
from ..recipe_specs import resolved_specs
from ..run_record import RECIPE_RECORD
from .final_evaluation import LastEvaluation, final_evaluation
from .hub_contents import check_push_contents, unpublishable_entries, upload_filters
from .preflight import check_launch, check_recipe_metric, check_run, resuming
from .resume_checks import (
    check_checkpoint, check_resume_batch, check_resume_rate, check_resume_recipe, check_resume_split,
    warn_earlier_defaults, warn_resume_schedule, warn_resume_settings,
)
from .output_folder import (
    REPLACING, Replacement, check_output_dir, drop_stale_export, finished_after, holds_run, later_checkpoints,
    parked_run, resumes_in, said_write_errors, set_aside_abandoned_branch, set_aside_pending, set_aside_previous_run,
    reading_models, training_alone_in,
)
from .probes import probe_student
from .records import RecipeRecord, drop_empty_record, eval_record_dir, write_eval_record
from .teacher_data import check_teacher_data, held_out_by
from .run_inputs import (align_teacher, check_teacher_labels, checkpoint_labels, declared_labels, load_data,
                         model_error, student_labels)

logger = logging.getLogger("hf_rcka")


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: DistillationTrainingArguments,
    recipe: dict | None = None,
    stop: GracefulStop | None = None,
    argv: Sequence[str] = (),
) -> dict:
    """Train and/or evaluate; returns the final metrics. ``recipe`` is recorded in ``output_dir``.

    ``stop`` (installed signal handlers) turns SIGTERM/SIGINT into a checkpoint and a ``Stopped``
    exception carrying the resume command built from ``argv``.
    """
    _setup_logging(args)
    # Training and a final evaluation are the job; a recipe opts out with do_train/do_eval: false.
    explicit = recipe if recipe is not None else {}
    args.do_train = explicit.get("do_train", RUN_DEFAULTS["do_train"])
    args.do_eval = explicit.get("do_eval", RUN_DEFAULTS["do_eval"])
    if stop is not None:
        stop.evaluating_alone = not args.do_train
    check_launch(args)  # before the folder lock: unjoined processes would race for it
    if args.do_train:
        with _holding_output_dir(args):
            resume = _prepare_before_loading(model_args, data_args, args, explicit)
            return _run(model_args, data_args, args, recipe, stop, argv, resume, args.output_dir)
    with _holding_output_dir(args, evaluating=True):
        return _evaluate_alone(model_args, data_args, args, recipe, stop, argv, explicit)


def _evaluate_alone(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
                    recipe: dict | None, stop: GracefulStop | None, argv: Sequence[str], explicit: dict) -> dict:
    """``run`` without training: the evaluation's record goes to a folder of its own in ``output_dir``."""
    resume = _prepare_before_loading(model_args, data_args, args, explicit)
    main_process = args.process_index == 0
    made = missing_folders(args.output_dir)
    record_dir = from_rank0(eval_record_dir(args.output_dir) if main_process else None)  # one folder
    try:
        return _run(model_args, data_args, args, recipe, stop, argv, resume, record_dir)
    finally:
        if main_process:
            drop_empty_record(record_dir, made)


def recipe_to_record(recipe: dict, args: DistillationTrainingArguments, losses: list[dict]) -> dict:
    """The recipe as it ran: its losses in full (every option written out), the settings that decide
    the training at their defaults where it left them out (``left_out_defaults``: a later version's
    defaults do not change a rerun of the record), and the launcher's mixed precision as the recipe
    key it equals (a run of the record trained in float32, and a card compared a launcher-bf16 run
    with a float32 baseline as trained alike)."""
    recorded = {**recipe, **left_out_defaults(recipe), "losses": losses}
    chosen = run_mixed_precision(args)
    if chosen is not None and not (args.bf16 or args.fp16):
        recorded[chosen] = True
    return recorded


def _precision_line(args: DistillationTrainingArguments) -> str:
    """Which precision the run computes in, and whose setting chose it: the launcher's (its config
    file, set once and forgotten) applies unless the recipe sets bf16 or fp16."""
    chosen = run_mixed_precision(args)
    if chosen is None:
        return "precision: float32"
    source = "the recipe's" if args.bf16 or args.fp16 else (
        "the launcher's (accelerate launch --mixed_precision, its config file or ACCELERATE_MIXED_PRECISION)")
    return f"precision: {chosen} mixed precision, {source} setting"


def _rate_line(args: DistillationTrainingArguments) -> str:
    """The rate ``lr_base`` gave this run, and from what: the size it is given for defaults to 256
    images (timm's ``train.py``), and DeiT gives its rate for 512, so a rate copied without its size
    trains at another one."""
    return (f"learning rate: {args.learning_rate:g}, lr_base {args.lr_base:g} for lr_base_size {args.lr_base_size} "
            f"images, scaled ({args.lr_base_scale}) to the global batch of {global_batch_size(args)}")


def _holding_output_dir(args: DistillationTrainingArguments, evaluating: bool = False) -> ContextManager[None]:
    """``output_dir`` held by this training run, or shared by evaluations."""
    return _held_on_rank0(args, training_alone_in(args.output_dir, evaluating))


def _holding_models(model_args: ModelArguments, args: DistillationTrainingArguments) -> ContextManager[None]:
    """The folders of the models this run loads, shared with other runs that load them while they
    load, and never held while a training run replaces their model (``reading_models``)."""
    return _held_on_rank0(args, reading_models({"teacher_model_name_or_path": model_args.teacher_model_name_or_path,
                                                "model_name_or_path": model_args.model_name_or_path},
                                               args.output_dir))


@contextlib.contextmanager
def _held_on_rank0(args: DistillationTrainingArguments, lock: ContextManager[str | None]) -> Iterator[None]:
    """A folder lock (a context that yields None, or why it is refused) taken by rank 0 alone;
    refused, every rank raises, not rank 0 alone (the others went on into the first collective)."""
    with lock if args.process_index == 0 else contextlib.nullcontext() as refusal:
        refused = from_rank0(refusal)
        if refused:
            raise RecipeError(refused)
        yield


def _run(model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
         recipe: dict | None, stop: GracefulStop | None, argv: Sequence[str], resume: str | None,
         record_dir: str) -> dict:
    """``run`` once the checks before loading have passed: build, then train and/or evaluate."""
    # read before the set-aside: a record rerun into its own folder moves its teacher.json to _replaced/
    recorded = recorded_teacher(os.path.dirname(os.path.abspath(argv[0]))) if argv and args.do_train else None
    with _holding_models(model_args, args):
        trainer, skipped, replaced = _build_trainer(model_args, data_args, args, record_dir, resume, stop)
    # from the set-aside on, a signal or a refusal puts the replaced run back (the recorded teacher's
    # check below reads every teacher weight: a Ctrl-C there left the run in _replaced/, unsaid)
    with replaced.saying_where_it_went():
        _transformers_levels(args)
        logger.info(_precision_line(args))
        if args.do_train and args.lr_base is not None:
            logger.info(_rate_line(args))
        if recorded is not None:
            _say_if_the_recorded_teacher_differs(trainer, argv[0], recorded)
        if not args.do_train:
            tensorboard_into(trainer, record_dir)
            with errors_only(when=not args.should_log):
                leave_out_fresh_losses(trainer.distillation_model)
            if args.do_eval:  # a training run's check is train()'s
                check_evaluation_rows({name: loss for name, loss in trainer.distillation_model.losses.items()
                                       if name not in trainer.distillation_model.left_out}, args,
                                      len(trainer.eval_dataset) if has_length(trainer.eval_dataset) else None)
        if trainer.is_world_process_zero() and recipe is not None and args.do_train:
            losses = resolved_specs(run_loss_specs(args, trainer.distillation_model.teacher is not None))
            trainer.add_callback(RecipeRecord(recipe_to_record(recipe, args, losses),
                                              os.path.join(args.output_dir, RECIPE_RECORD)))
            trainer.records_run = True  # its checkpoints keep a copy of the record
        last = None
        if args.do_train and args.do_eval:  # its evaluation at the last step may be the final one
            last = LastEvaluation()
            trainer.add_callback(last)
        with said_write_errors(record_dir):
            return _train_and_evaluate(trainer, data_args, skipped, recipe, record_dir, resume, stop, argv, last)


def _train_and_evaluate(
    trainer: DistillationTrainer, data_args: DataArguments, skipped: SkippedImages, recipe: dict | None,
    record_dir: str, resume: str | None, stop: GracefulStop | None, argv: Sequence[str],
    last: LastEvaluation | None = None,
) -> dict:
    """What ``run`` does once the trainer is built: train, evaluate, and the card and upload."""
    args = trainer.args
    metrics: dict = {}
    if args.do_train:
        metrics.update(_train(trainer, resume, stop, argv))
    if args.do_eval:
        if recipe is not None and not args.do_train:  # the split it evaluated (a trained model's held-out one)
            recipe = {**recipe, "train_val_split": data_args.train_val_split, "split_seed": data_args.split_seed}
        try:
            metrics.update(_evaluate(trainer, recipe, record_dir, last))
        except DataError as err:  # too many unreadable evaluation images, found only now
            if not args.do_train:
                raise
            raise DataError(f"{user_message(err)}. The trained model is saved in {args.output_dir}, not evaluated: its card "
                            "was not written") from None
    check = args.student_accuracy_check
    refused = args.do_train and args.do_eval and check != "off" and _say_if_at_chance(trainer, metrics) \
        and check == "error"
    if stop is not None:
        stop.evaluated = args.do_eval  # what is left is the card and the Hub upload
    _finish(trainer, data_args, skipped, metrics, upload=not refused)
    if refused:
        raise StudentNearChance(_learned_nothing_line(trainer, metrics))
    return metrics


def _setup_logging(args: DistillationTrainingArguments) -> None:
    """hf_rcka and the Trainer's progress at the recipe's ``log_level`` (``log_level_replica`` on
    processes that do not log), as Trainer sets transformers' own; the rest of transformers (config
    and processor dumps, weight-loading chatter) at WARNING, so that the log holds one line per fact.

    ``passive`` (the default ``log_level``) leaves the level to us: INFO on the process that logs,
    WARNING on the others, as before the recipe's levels were read here.
    """
    level = _run_log_level(args)
    # The root logger (other libraries: PIL logs two DEBUG lines per decoded image) stays at INFO at
    # most; hf_rcka's and the Trainer's own loggers take the recipe's level, DEBUG included.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=max(level, logging.INFO),
                        force=True)
    logger.setLevel(level)
    _transformers_levels(args)
    # huggingface_hub and datasets print through their own handler, and their records reached the
    # root's too: every Hub retry warning was printed twice
    for name in _OWN_HANDLER_LIBRARIES:
        library = logging.getLogger(name)
        library.propagate = not library.handlers
    # the weight-loading, shard-writing and dataset bars too, not only Trainer's (which shows on the
    # logging process alone: every process drew its own "Loading weights" bar)
    if args.disable_tqdm or not args.should_log:
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
        datasets.disable_progress_bars()


_OWN_HANDLER_LIBRARIES = ("huggingface_hub", "datasets")


def _run_log_level(args: DistillationTrainingArguments) -> int:
    chosen = args.log_level if args.should_log else args.log_level_replica
    if chosen == "passive":
        return logging.INFO if args.should_log else logging.WARNING
    return args.get_process_log_level()


def _transformers_levels(args: DistillationTrainingArguments) -> None:
    """transformers at WARNING but its Trainer at the run's level; again once the Trainer is built,
    which sets all of transformers to the recipe's level (``Configuration saved in`` at INFO)."""
    transformers.utils.logging.set_verbosity(logging.WARNING)
    trainer_logger = logging.getLogger("transformers.trainer")
    trainer_logger.setLevel(_run_log_level(args))
    if not any(isinstance(f, _NoCompletedLine) for f in trainer_logger.filters):
        trainer_logger.addFilter(_NoCompletedLine())
    checks = logging.getLogger("transformers.trainer_utils")
    alike = next((f for f in checks.filters if isinstance(f, _SaidAlikeByEveryProcess)), None)
    if alike is None:
        alike = _SaidAlikeByEveryProcess()
        checks.addFilter(alike)
    alike.replica = not args.should_log


class _SaidAlikeByEveryProcess(logging.Filter):
    """Trainer's resume check ("The following arguments do not match the ones in the
    `trainer_state.json`") compares the arguments with the checkpoint, the same on every process, and
    every process printed it: twice in a 2-process run, which still shows replicas' warnings (what only
    their shard of the data meets). Said by the process that logs alone."""

    replica = False

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return not (self.replica and str(record.msg).startswith(
            "Warning: The following arguments do not match the ones in the `trainer_state.json`"))


class _NoCompletedLine(logging.Filter):
    """Trainer's "Training completed. Do not forget to share your model" closes every run, an
    interrupted one too, just before the run says it was interrupted; the run's own last line says
    where the model is and how to share it."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return not str(record.msg).lstrip().startswith("Training completed")


def _prepare_before_loading(
    model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments, explicit: dict
) -> str | None:
    """Every check that needs no model and no data, then the CPU's settings and the seed; returns
    the checkpoint to resume from, if any."""
    check_run(model_args, data_args, args)
    resume = resolve_resume(args)
    if resume:
        check_checkpoint(resume)
        check_resume_batch(resume, args)
        check_resume_recipe(resume, model_args, data_args, args)
        check_resume_rate(resume, args)
        if args.should_log:  # said once, not by every process
            warn_earlier_defaults(resume, model_args, args)
            warn_resume_schedule(resume, args)
            warn_resume_settings(resume, data_args, args)
    check_output_dir(args, resume)
    check_push_contents(args, resume)
    # Pinned memory only helps copies to an accelerator; on CPU torch warns at every dataloader.
    if "dataloader_pin_memory" not in explicit and args.device.type == "cpu":
        args.dataloader_pin_memory = False
    transformers.set_seed(args.seed)
    return resume


def _set_aside(args: DistillationTrainingArguments, data_args: DataArguments, resume: str | None,
               holds: bool) -> str | None:
    """Move what this training run replaces in ``output_dir`` into ``_replaced/`` (see
    ``output_folder``); returns where it went (on the process that moved it), or None. Called once
    the data and the models have loaded and passed their checks: a run refused on them (a resume
    with another split, a teacher of other classes) leaves the folder as it was. ``holds``: whether
    ``output_dir`` holds a run, as rank 0 saw it (``holds_run``)."""
    # a checkpoint of another folder starts a run that replaces the one here, as a fresh run does
    replacing = resume is None or not resumes_in(args.output_dir, resume)
    if args.do_train and replacing and holds:  # overwrite_output_dir
        with args.main_process_first(local=False, desc="setting aside the run this one replaces"):
            if args.should_save:
                return set_aside_previous_run(args.output_dir, keep=(data_args.train_dir, data_args.validation_dir,
                                                                     data_args.dataset_name, resume))
    elif args.do_train and resume and from_rank0(bool(later_checkpoints(args.output_dir, resume))
                                                 or finished_after(args.output_dir, resume) is not None):
        with args.main_process_first(local=False, desc="setting aside the checkpoints after the resumed one"):
            if args.should_save:
                return set_aside_abandoned_branch(args.output_dir, resume)
    return None


def resolve_resume(args: DistillationTrainingArguments) -> str | None:
    """``resume_from_checkpoint: true`` means the last checkpoint in ``output_dir`` written whole.

    A save that a kill cut short (a preempted job's grace period ending mid-save) leaves a last
    folder without its ``trainer_state.json``, which Trainer writes last: it was refused, so a job
    requeued with ``true`` failed at every restart. The one before it is resumed instead, and the
    cut-short one set aside with the rest of the abandoned branch (``output_folder``).
    """
    value = args.resume_from_checkpoint
    if not resuming(value):  # the rule the start-up checks went by
        return None
    if value is True or str(value).lower() == "true":
        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if last is None and holds_run(args.output_dir):  # a model saved without checkpoints (save_strategy no)
            raise RecipeError(f"resume_from_checkpoint: true, but {args.output_dir!r} holds a run and no "
                              "checkpoint-* folder: nothing was saved to resume (a run with save_strategy 'no' saves "
                              "none). Start again without resume_from_checkpoint, with --overwrite_output_dir true to "
                              "replace it, or choose another output_dir")
        if last is None:
            raise RecipeError(f"resume_from_checkpoint: true, but {args.output_dir!r} holds no checkpoint-* folder: "
                              "nothing was saved to resume (a run stopped before its first checkpoint). Start the run "
                              "without resume_from_checkpoint")
        with errors_only(when=not args.should_log):  # which checkpoint it resumes: said once
            whole = resumable_checkpoint(args.output_dir)
        if args.should_log and set_aside_pending(args.output_dir):  # a kill during an overwrite split the run
            logger.warning("output_dir: a set-aside cut short (a kill during an overwrite) left part of the run in %s "
                           "in %s: this run resumes %s, the last checkpoint outside it. To resume the run where it "
                           "ended, stop and move those files back into %s first", args.output_dir,
                           os.path.join(args.output_dir, REPLACING), whole or last, args.output_dir)
        return whole or last  # none whole: check_checkpoint says what is missing
    if not os.path.isdir(value):
        raise RecipeError(f"resume_from_checkpoint {value!r} is not a folder")
    return value


# --------------------------------------------------------------------------------------------
# Models, data and the trainer
# --------------------------------------------------------------------------------------------


def _build_trainer(
    model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments,
    record_dir: str, resume: str | None, stop: GracefulStop | None,
) -> tuple[DistillationTrainer, SkippedImages, Replacement]:
    """Data, models (checked by one forward pass), datasets and the trainer, in that order; the
    ledger of skipped images, in ``record_dir``; and where the run this one replaces was set aside."""
    raw, labels = _load_checked_data(model_args, data_args, args, resume)
    check_recipe_metric(model_args, args, len(labels))  # top5_accuracy needs more than 5 classes
    model, student_processor = _distillation_model(model_args, args, labels)
    with said_write_errors(args.output_dir):  # a rename refused: one line (a set-aside cut short loses nothing)
        parked_before = parked_run(args.output_dir)
        # decided on rank 0 alone: a rank that looked after rank 0 moved the files would skip the barrier
        held_a_run = from_rank0(holds_run(args.output_dir))
        moved = _set_aside(args, data_args, resume, held_a_run)
        parked = parked_run(args.output_dir)
        replaced = Replacement(args.output_dir, moved, parked is not None and parked != parked_before,
                               replaces=not held_a_run)
    with replaced.saying_where_it_went():  # the trainer's own checks of models and data
        trainer, skipped = _checked_trainer(model, student_processor, raw, labels, model_args, data_args, args,
                                            record_dir, resume, stop)
    trainer.add_callback(replaced)
    return trainer, skipped, replaced


def _checked_trainer(
    model: DistillationModel, student_processor: Any, raw: Any, labels: list[str], model_args: ModelArguments,
    data_args: DataArguments, args: DistillationTrainingArguments, record_dir: str, resume: str | None,
    stop: GracefulStop | None,
) -> tuple[DistillationTrainer, SkippedImages]:
    """The datasets, the ledger of skipped images, and the trainer, whose construction checks them all."""
    skipped = SkippedImages(record_dir, data_args.max_bad_images)
    if not resume:
        skipped.reset()
    train_dataset, eval_dataset = prepare_datasets(
        raw, data_args, student_processor, labels, skipped=skipped
    )
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset if args.do_train else None,
        eval_dataset=eval_dataset,
        processing_class=student_processor,
        teacher_name=model_args.teacher_model_name_or_path,
        teacher_label_mapping=model_args.teacher_label_mapping,
        callbacks=[SkippedImagesCallback(skipped)] + ([stop] if stop is not None else []),
        augmentation=data_args,
    )
    trainer.card_facts = card_facts_of(model_args, data_args, len(eval_dataset), len(raw["validation"]),
                                       split=raw.evaluated, carved=raw.carved,
                                       train_images=(len(train_dataset), len(raw["train"])) if args.do_train else None,
                                       data_format=raw["train"].info.builder_name)
    return trainer, skipped


def _load_checked_data(
    model_args: ModelArguments, data_args: DataArguments, args: DistillationTrainingArguments, resume: str | None,
) -> tuple[Any, list[str]]:
    """The raw splits and the run's class order, once the data has passed the checks that need it
    loaded (a teacher or checkpoint trained on the evaluation images, classes the splits do not
    share) and before any model loads.

    An evaluation-only run of a model trained on this data evaluates the images its run held out.
    """
    declared = declared_labels(data_args)  # a Hub dataset's, named on its card before its files download
    if declared is not None:
        check_teacher_labels(model_args, args, declared)
    held_out = None if args.do_train else held_out_by(model_args.model_name_or_path, data_args)
    if held_out:  # the student's own training data: evaluate the images its run held out, not all of them
        data_args.train_val_split, data_args.split_seed = held_out["train_val_split"], held_out["split_seed"]
    raw = load_data(data_args, eval_only=not args.do_train and not held_out)
    if held_out and raw.carved:  # (data with its own validation split is evaluated on that split)
        logger.info("data: %s was trained on this data; its held-out %g (split_seed %s) is evaluated, not its "
                    "training images", model_args.model_name_or_path, held_out["train_val_split"], held_out["split_seed"])
    if args.do_train and not model_args.smoke_test:
        check_teacher_data(model_args.teacher_model_name_or_path, data_args, carved=raw.carved)
    if resume:
        check_resume_split(resume, data_args, carved=raw.carved)
    dataset_labels = label_names(raw["train"], data_args.label_column_name)
    check_validation_labels(dataset_labels, label_names(raw["validation"], data_args.label_column_name))
    if args.do_train and not model_args.smoke_test:  # a smoke test's few synthetic images miss most classes
        check_class_count(raw["train"], data_args.label_column_name, carved=raw.carved)
        check_trained_classes(raw["train"], raw["validation"], data_args.label_column_name)
    if resume:  # the checkpoint's head, not the pretrained student's, decides the class order now
        labels = resume_label_order(dataset_labels, checkpoint_labels(resume, model_args.trust_remote_code))
    else:
        labels = run_label_order(dataset_labels, student_labels(model_args), training=args.do_train)
    check_teacher_labels(model_args, args, labels)
    return raw, labels


def _distillation_model(
    model_args: ModelArguments, args: DistillationTrainingArguments, labels: list[str]
) -> tuple[DistillationModel, Any]:
    """Student and teacher with the run's labels, wrapped with the losses; and the student's processor.

    The student's input statistics are read once: the probe and the wrapper both use them.
    """
    student, student_processor = build_student(model_args, labels)
    with model_error("model_name_or_path"):  # a processor whose output size follows each image
        student_input = input_stats(student_processor)
    probe_student(student, student_input, model_args.image_size)  # before the teacher loads (or downloads)
    teacher, teacher_processor = build_teacher(model_args)
    align_teacher(teacher, args, labels, model_args.teacher_label_mapping)
    with model_error("teacher_model_name_or_path"):
        teacher_input = input_stats(teacher_processor) if teacher_processor is not None else None
    return build_distillation_model(student, teacher, args, student_input, teacher_input), student_processor


def build_student(model_args: ModelArguments, labels: list[str]):
    """The student with this dataset's labels, and its processor; NaN or infinite weights are
    refused here, before it is evaluated or trained."""
    with model_error("model_name_or_path"):
        student, student_processor = _build_student(model_args, labels)
    check_loaded_weights(student, "student", "model_name_or_path", model_args.model_name_or_path)
    return student, student_processor


def build_teacher(model_args: ModelArguments):
    """The teacher as trained (its head is never re-initialised) and its processor, or two Nones;
    NaN or infinite weights are refused here."""
    if not model_args.teacher_model_name_or_path:
        return None, None
    with model_error("teacher_model_name_or_path"):
        teacher = load_image_classifier(
            model_args.teacher_model_name_or_path,
            from_scratch=model_args.smoke_test,
            config_overrides=model_args.teacher_config_overrides,
            trust_remote_code=model_args.trust_remote_code,
        )
        teacher_processor = load_image_processor(
            model_args.teacher_model_name_or_path, teacher, trust_remote_code=model_args.trust_remote_code
        )
    check_loaded_weights(teacher, "teacher", "teacher_model_name_or_path", model_args.teacher_model_name_or_path)
    return teacher, teacher_processor


def _build_student(model_args: ModelArguments, labels: list[str]):
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    student = load_image_classifier(
        model_args.model_name_or_path,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        from_scratch=model_args.student_from_scratch,
        config_overrides=model_args.student_config_overrides,
        trust_remote_code=model_args.trust_remote_code,
        image_size=model_args.image_size,  # a timm student's saved config.json records it
    )
    student_processor = load_image_processor(
        model_args.model_name_or_path, student, trust_remote_code=model_args.trust_remote_code,
        image_size=model_args.image_size,
    )
    return student, student_processor


# --------------------------------------------------------------------------------------------
# Train, evaluate, finish
# --------------------------------------------------------------------------------------------


def _train_metrics(metrics: dict, resume: str | None) -> dict:
    """Trainer's training metrics, saying what a resumed run's ``train_loss`` averages.

    transformers averages ``train_loss`` over the steps of this call only, so a resumed run
    reported the mean of its last steps as the run's, and a run resumed at its last step 0.0.
    """
    step = checkpoint_step(resume) if resume else None
    if not step:
        return metrics
    metrics = {**metrics, "train_loss_from_step": step}
    if not metrics.get("train_steps_per_second"):  # no step ran: no loss to average
        metrics.pop("train_loss", None)
    logger.info("train_loss averages the steps after the resumed checkpoint-%d only (train_loss_from_step)", step)
    return metrics


def _train(trainer: DistillationTrainer, resume: str | None, stop: GracefulStop | None = None,
           argv: Sequence[str] = ()) -> dict:
    """Train, then save the model, metrics and state; a signal ends in ``Stopped`` with a checkpoint."""
    trainer.keeps_last_checkpoint_until_export = True
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        stopped = stopped_by_signal(trainer, stop, argv)
        if stopped is None:
            raise
        raise stopped from None
    finished = trainer.state.global_step >= trainer.state.max_steps
    if stop is not None and stop.signum is not None and not finished:
        step = trainer.state.global_step
        checkpoint = checkpoint_folder(trainer)
        if from_rank0(not os.path.isdir(checkpoint)):  # save_strategy best: saved at an evaluation if a new best
            try:
                checkpoint = save_checkpoint_now(trainer) or checkpoint
            except (KeyboardInterrupt, Interrupted):  # a second signal: the save cut short is no checkpoint
                checkpoint = ""
        raise Stopped(stop.signum, step, checkpoint if checkpoint and os.path.isdir(checkpoint) else None, argv,
                      trainer.is_world_process_zero(), last_checkpoint(trainer.args.output_dir))
    with stop.finishing() if stop is not None else contextlib.nullcontext():  # a signal waits for the save
        if trainer.is_world_process_zero():
            drop_stale_export(trainer.args.output_dir)  # the earlier card, results and state: written anew after the save
        trainer.save_model(_internal_call=True)  # uploaded once, with the final metrics and card, by _finish
        metrics = _train_metrics(result.metrics, resume)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        trainer.drop_checkpoints_kept_for_export()
    if stop is not None:
        stop.saved_model = trainer.args.output_dir
        stop.finish_settings = _finish_settings(trainer)
        if stop.signum is not None:  # during the last step's evaluation: the training itself is complete
            raise Interrupted(stop.signum)
    return metrics


def _finish_settings(trainer: DistillationTrainer) -> dict[str, str] | None:
    """The flags that finish a run a signal stopped once its model was saved: its checkpoint of the
    last step, resumed, trains nothing and runs the evaluation, card and upload that did not run (an
    evaluation-only run writes neither card nor upload). A finished run resumed with checkpoint
    pushes is refused (``hub_contents``): its resume pushes at the end alone."""
    checkpoint = checkpoint_folder(trainer)
    if not written_whole(checkpoint):  # save_strategy no, or not kept (save_total_limit 1 keeps the best)
        return None
    settings = {"resume_from_checkpoint": checkpoint}
    if trainer.args.push_to_hub and trainer.args.hub_strategy != "end":
        settings["hub_strategy"] = "end"
    return settings


def tensorboard_into(trainer: DistillationTrainer, folder: str) -> None:
    """An evaluation-only run's TensorBoard events go to its own folder's ``runs/``: TensorBoard's
    callback picks ``output_dir/runs`` when training begins and, with no training, wrote to
    ``./runs`` in the working directory. ``TENSORBOARD_LOGGING_DIR`` still wins."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = os.path.join(folder, "runs")


def _evaluate(trainer: DistillationTrainer, recipe: dict | None, record_dir: str,
              last: LastEvaluation | None = None) -> dict:
    """The final evaluation (the last step's, when it evaluated the final weights); an eval-only
    run records it in its own folder (see ``records``)."""
    metrics = final_evaluation(trainer, last)
    if not trainer.args.do_train:  # Trainer's epoch 0 and model set-up time, of no training: said of a trained model
        metrics = {k: v for k, v in metrics.items() if k not in ("epoch", "eval_model_preparation_time")}
    trainer.log_metrics("eval", metrics)
    if trainer.args.do_train:
        trainer.save_metrics("eval", metrics)
        trainer.save_state()  # written after training too: its log_history now holds this evaluation
    elif trainer.is_world_process_zero():
        write_eval_record(record_dir, recipe, metrics)
        logger.info("eval-only run: recipe and results written to %s", record_dir)
    return metrics


def _say_if_the_recorded_teacher_differs(trainer: DistillationTrainer, recipe_path: str, recorded: dict) -> None:
    """A recipe a run recorded (``OUT/distill_config.yaml``, its teacher in ``OUT/teacher.json``) run
    again with other teacher weights at the recorded path (a teacher retrained in place) trains
    another run than the recorded one, and reproduced nothing without a word."""
    teacher = trainer.distillation_model.teacher
    if teacher is None or not trainer.args.should_log:
        return
    if recorded.get("sha256") != trainer.teacher_record(teacher)["sha256"]:
        logger.warning("!!! %s was recorded by a run that distilled from other teacher weights (its teacher.json: "
                       "%r, %s values): this teacher differs (or is the same kept in float16), so this run does not "
                       "reproduce that one", recipe_path, recorded.get("source"), recorded.get("values"))


def _say_if_at_chance(trainer: DistillationTrainer, metrics: dict) -> bool:
    """Say whether the trained student is at chance on the final evaluation (see ``trainer.chance``),
    on the process that logs; whether its accuracy is (every process judges the same gathered
    metrics, so all of them end the run alike). The cross-entropy's test is said, never an error: a
    calibrated student at 30% on 10 classes, three times chance, meets it."""
    accuracy, dataset = metrics.get("eval_accuracy"), trainer.eval_dataset
    if not (isinstance(accuracy, float) and has_length(dataset)):
        return False
    counted = _scored_images(trainer)
    ce = trainer.distillation_model.losses["ce"] if "ce" in trainer.distillation_model.losses else None
    weight = ce.term_weights.get("ce") if ce is not None else None  # eval_ce_loss is the weighted term
    entropy = metrics["eval_ce_loss"] / weight if weight and "eval_ce_loss" in metrics else None
    num_classes = trainer.distillation_model.student.config.num_labels
    if trainer.args.should_log:
        warn_if_student_at_chance(accuracy, counted, num_classes, entropy, trainer.state.global_step,
                                  trainer.state.epoch, _slow_average(trainer, metrics))
    return at_chance(accuracy, counted, num_classes)


def _slow_average(trainer: DistillationTrainer, metrics: dict) -> tuple[str, str] | None:
    """``chance.slow_average``'s cause and fix for an exported average (``model_ema_export``, without
    warm-up) whose trained weights are not at chance."""
    args = trainer.args
    if not getattr(args, "model_ema_export", False) or getattr(args, "model_ema_warmup", False):
        return None
    classes = trainer.distillation_model.student.config.num_labels
    return slow_average(metrics.get("eval_live_accuracy"), _scored_images(trainer), classes, args.model_ema_decay,
                        trainer.state.global_step)


def _scored_images(trainer: DistillationTrainer) -> int:
    """The evaluation images the accuracy counts: the set's, less those unreadable (left out)."""
    return len(trainer.eval_dataset) - trainer.card_facts.unreadable_eval_images


def _learned_nothing_line(trainer: DistillationTrainer, metrics: dict) -> str:
    """The error a run whose student is at chance ends with: what is kept, and that it is not shared."""
    args = trainer.args
    upload = ""
    if args.push_to_hub:
        pushed = (" (its checkpoints' pushes during training put their weights there, without this card)"
                  if args.hub_strategy != "end" and getattr(trainer, "_hub_pushed", False) else "")
        upload = (f", and not uploaded to the Hub{pushed}: `{_upload_command(trainer)}` would upload it"
                  f"{_token_note(args)}")
    average = _slow_average(trainer, metrics)
    fix = average[1] if average else "Train longer, or lower the learning rate or the distillation terms' weights"
    return (f"the trained student is at chance on the evaluation set (eval_accuracy {metrics['eval_accuracy']:.4f}, "
            f"the !!! warning above says why it may be): it is saved in {args.output_dir} with its card and "
            f"results{upload}. {fix} (student_accuracy_check: warn ends such a run with exit status 0)")


def _finish(trainer: DistillationTrainer, data_args: DataArguments, skipped: SkippedImages, metrics: dict,
            upload: bool = True) -> None:
    """Model card, the skipped-images summary, the Hub push of a training run (not of a student
    that learned nothing: ``upload`` False), and where its model is."""
    args = trainer.args
    if trainer.is_world_process_zero() and args.do_train:  # an image folder is named by card_facts
        trainer.create_model_card(model_name=_hub_model_name(args), dataset=data_args.dataset_name,
                                  license=args.card_license)
    if skipped.summary():
        logger.warning(skipped.summary())
    commit = _push(trainer) if args.push_to_hub and args.do_train and upload else None
    if trainer.is_world_process_zero() and args.do_train:
        logger.info(saved_line(args.output_dir, metrics))
        if commit is not None:
            logger.info(hub_line(trainer.hub_model_id, args.hub_revision, commit))


def saved_line(output_dir: str, metrics: dict) -> str:
    """The last line of a training run: where the model is, what it scored, and how to load it."""
    score = f" (eval_accuracy {metrics['eval_accuracy']:.4f})" if "eval_accuracy" in metrics else ""
    return (f"the trained student is in {output_dir}{score}, with its card (README.md); load it with "
            f"transformers.AutoModelForImageClassification.from_pretrained({output_dir!r})")


def hub_line(repo_id: str, revision: str | None, commit: Any) -> str:
    """Where the upload went: the commit names the exact files (a later run's push to the same
    repository replaces them), and ``from_pretrained`` needs the branch when it is not the default.
    Without a commit URL, the repository's, on the Hub the client talks to (``HF_ENDPOINT``)."""
    url = getattr(commit, "commit_url", None) or f"{huggingface_hub.constants.ENDPOINT}/{repo_id}"
    branch = f", revision={revision!r}" if revision else ""
    return f"uploaded to the Hub: {url}; load it with from_pretrained({repo_id!r}{branch})"


def _hub_model_name(args: DistillationTrainingArguments) -> str | None:
    """The card's model name: the Hub repository's when the run uploads (as ``Trainer.push_to_hub``
    names it), else the folder's."""
    return args.hub_model_id.split("/")[-1] if args.push_to_hub and args.hub_model_id else None


def _push(trainer: DistillationTrainer) -> Any:
    """The Hub upload of the folder ``_finish`` wrote, last; its commit on process 0 (None on the
    others). A network or permission failure here leaves every local result in place, so it is one
    line that says so and prints the command that uploads the folder.

    ``Trainer.push_to_hub`` would save the model and write the card again before uploading: that
    second write, cut short (a full disk), corrupted the finished export, which the message then
    called saved. The upload is Trainer's (repository, message, revision) otherwise; what it holds
    and replaces is ``hub_contents``'s.
    """
    args = trainer.args
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    if not trainer.is_world_process_zero():
        return
    if trainer.hub_model_id is None:
        trainer.init_hf_repo(token=args.hub_token)
    trainer._finish_current_push()  # the checkpoints' uploads (hub_strategy every_save...), in order
    appeared = unpublishable_entries(args.output_dir)
    filters = upload_filters(appeared)
    if appeared:
        logger.warning("left out of the upload: %s, which appeared in %s during the run", ", ".join(appeared),
                       args.output_dir)
    try:
        return transformers.trainer.hf_api().upload_folder(
            repo_id=trainer.hub_model_id, folder_path=args.output_dir, commit_message="End of training",
            token=args.hub_token, revision=args.hub_revision, **filters,
        )
    except Exception as err:  # huggingface_hub's HTTP errors, httpx's, OSError: all end the same way
        raise HubUploadError(
            f"the upload to the Hub failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"the trained model, its card and results are saved in {args.output_dir}: upload them with "
            f"`{_upload_command(trainer, filters)}`{_token_note(args)}"
        ) from err


def _token_note(args: DistillationTrainingArguments) -> str:
    """What the printed ``hf upload`` command needs where the run's token was the recipe's
    ``hub_token`` alone: ``hf`` reads only a login or ``HF_TOKEN`` (without them it was refused), and
    the token itself is never printed."""
    if not args.hub_token or huggingface_hub.get_token():
        return ""
    return " (with the recipe's hub_token: add --token, or set HF_TOKEN; this machine has no Hugging Face login)"


def _upload_command(trainer: DistillationTrainer, filters: dict | None = None) -> str:
    """The ``hf upload`` command that sends the output folder as the final upload would: its branch,
    without what the upload leaves out (the set-aside runs, checkpoints with optimizer states), and
    deleting what it deletes (an earlier model's results and weights the folder lacks: without
    ``--delete``, its ``eval_results.json``, or its single ``model.safetensors`` beside new sharded
    weights, stayed beside the new model)."""
    args = trainer.args
    filters = filters if filters is not None else upload_filters(unpublishable_entries(args.output_dir))
    repo = trainer.hub_model_id or args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
    revision = f" --revision {shlex.quote(args.hub_revision)}" if args.hub_revision else ""
    flags = [*(f"--exclude {shlex.quote(p)}" for p in filters["ignore_patterns"]),
             *(f"--delete {shlex.quote(p)}" for p in filters["delete_patterns"])]
    return f"hf upload {shlex.quote(repo)} {shlex.quote(args.output_dir)} .{revision} {' '.join(flags)}"
