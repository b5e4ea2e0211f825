"""The run's settings: which models (``ModelArguments``), which data (``DataArguments``) and how to
train and distil (``DistillationTrainingArguments``, every ``transformers.TrainingArguments`` field
plus the distillation ones).

Each class checks its own values when it is built, so a bad setting is a ``RecipeError`` naming
its key before a model or dataset is touched, whether the classes come from a recipe (see
``hf_rcka.cli.recipe``, which turns YAML and ``--key value`` text into typed values) or from
Python. Nothing here reads YAML or a command line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from .augmentation import PER_IMAGE_KEYS, AugmentationArguments
from .errors import RecipeError
from .losses import reads_teacher
from .registry import LOSSES
from .run_record import read_recorded_recipe
from .recipe_specs import (
    check_auto_pair_options,
    unused_feature_pairs,
    unused_pairs_message,
    validate_feature_pairs,
    validate_losses,
    weighs_nothing,
)
from .training_values import (
    check_batch_settings, check_fixed_settings, check_optim_args, check_optim_target_modules, check_schedule_settings,
    check_training_values,
)

logger = logging.getLogger(__name__)

# A teacher near chance on the run's labels (other classes, another normalisation, weights that did
# not load) makes the student learn garbage while every loss falls: stopping before the first step
# costs a few hundred evaluation images, and a run that trains from it anyway is a choice the recipe says.
TEACHER_CHECK_DEFAULT = "error"
ACCURACY_CHECK_MODES = ("warn", "error", "off")  # of teacher_accuracy_check and student_accuracy_check

@dataclass
class ModelArguments:
    """Which student and teacher to load.

    ``model_name_or_path`` / ``teacher_model_name_or_path``: a Hub id, a folder saved with
    ``save_pretrained``, ``timm/<architecture>``, or ``config:<model_type>`` for a randomly
    initialised transformers model built offline from ``*_config_overrides``.
    """

    model_name_or_path: str = field(metadata={"help": "Student: Hub id, local folder, timm/<arch> or config:<type>."})
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher (same forms). None trains the student alone (plain supervised)."}
    )
    student_from_scratch: bool = field(
        default=False, metadata={"help": "Build the student from its config with random weights."}
    )
    student_config_overrides: dict | None = field(
        default=None, metadata={"help": "Config attributes (or timm kwargs) applied to the student's config."}
    )
    teacher_config_overrides: dict | None = field(
        default=None, metadata={"help": "Config attributes (or timm kwargs) for a config:<type> teacher."}
    )
    teacher_label_mapping: str = field(
        default="by_name",
        metadata={"help": "How teacher classes pair with the dataset's: 'by_name' (realign a permuted teacher, "
                          "error on other names) or 'by_index' (trust the order)."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train the student at this square resolution (its saved image processor is updated; "
                          "its crop ratio and interpolation are kept)."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow Hub code for custom architectures."})
    smoke_test: bool = field(
        default=False,
        metadata={"help": "Run the recipe offline in minutes: same architectures with random weights, a few "
                          "synthetic images, 2 steps, output in <output_dir>-smoke, then reload the saved model."},
    )

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size < 1:
            raise RecipeError(f"image_size must be >= 1, got {self.image_size}")
        if self.teacher_label_mapping not in ("by_name", "by_index"):
            raise RecipeError(f"teacher_label_mapping must be 'by_name' or 'by_index', got {self.teacher_label_mapping!r}")


@dataclass
class DataArguments(AugmentationArguments):
    """Where the images come from (a Hub dataset, image folders, or ``builtin:digits``) and how they
    are augmented (timm ``train.py`` names, inherited from ``AugmentationArguments``)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "datasets Hub id, a local dataset folder (parquet/csv/json files, or images "
                                        "with metadata.csv), or builtin:digits (scikit-learn's digits, offline). "
                                        "Class folders go in train_dir."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "datasets configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder for training, one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder for evaluation (with train_dir)."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels."})
    max_bad_images: int = field(
        default=20,
        metadata={"help": "Unreadable image files are skipped (named in the log and _skipped_images.tsv); "
                          "the run stops once more than this many were skipped."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on this many images, drawn with split_seed (the same for every seed)."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate a random subset of this many validation images (drawn with split_seed)."},
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for evaluation when there is no validation split."}
    )
    split_seed: int = field(
        default=42,
        metadata={"help": "Seed of the stratified validation split carved from train, and of the max_eval_samples "
                          "subset (independent of `seed`)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        sources = [self.dataset_name is not None, self.train_dir is not None]
        if not any(sources):
            raise RecipeError("no data: set dataset_name (a Hub dataset or builtin:digits) or train_dir (an image folder)")
        if all(sources):
            raise RecipeError("set either dataset_name or train_dir, not both")
        if self.dataset_config_name is not None and self.train_dir is not None:  # ignored: image folders have none
            raise RecipeError(f"dataset_config_name {self.dataset_config_name!r} is read only with dataset_name (a "
                              "dataset's configuration); image folders (train_dir) have none: remove dataset_config_name")
        if self.validation_dir is not None and self.train_dir is None:
            raise RecipeError("validation_dir is read only with train_dir (image folders); a dataset_name brings its "
                              "own validation split: remove validation_dir, or give the training images as train_dir")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise RecipeError(f"{key} must be >= 1, got {value}")
        if self.max_bad_images < 0:
            raise RecipeError(f"max_bad_images must be >= 0, got {self.max_bad_images}")
        if not 0.0 < self.train_val_split < 1.0:
            raise RecipeError(f"train_val_split must be in (0, 1), got {self.train_val_split}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise RecipeError(f"split_seed must be an integer >= 0, got {self.split_seed!r}")


class TrainersDefaultRate(float):
    """``TrainingArguments``' default ``learning_rate``, when no rate was given."""

    VALUE = TrainingArguments.__dataclass_fields__["learning_rate"].default


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the distillation settings.

    Defaults that distillation needs differ from ``TrainingArguments``: the batch keeps all its
    columns (``remove_unused_columns=False``) and the labels are called ``labels``.
    """

    losses: list | None = field(
        default=None,
        metadata={"help": "List of {name, weight, options...}. Default: ce + rcka with a teacher, ce without."},
    )
    feature_pairs: Any = field(
        default=None,
        metadata={"help": "The layers feature losses compare: 'auto' or a list of {student_layer, teacher_layer, "
                          "adapter, options...}. None (the default) pairs them automatically, as 'auto' does."},
    )
    teacher_accuracy_check: str = field(
        default=TEACHER_CHECK_DEFAULT,
        metadata={"help": "Before training, measure the teacher on 256 evaluation images; near chance: 'error' (stop "
                          "before the first step), 'warn' (train from it anyway) or 'off' (not measured)."},
    )
    student_accuracy_check: str = field(
        default="error",
        metadata={"help": "The command line's final evaluation of a trained student whose accuracy is within one "
                          "standard error of chance (two: a warning alone): "
                          "'error' (the model, card and results saved, not uploaded, exit status 2), 'warn' or 'off'."},
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={"help": "Keep the frozen teacher's weights in 'bfloat16' or 'float16' (GPU); unset: as loaded."},
    )
    teacher_channels_last: bool = field(
        default=True, metadata={"help": "Run a convolutional teacher in channels_last (NHWC) memory format."}
    )
    baseline_dir: str | None = field(
        default=None,
        metadata={"help": "Run folder of the same student trained alone; its accuracy goes into the model card."},
    )
    card_license: str | None = field(
        default=None,
        metadata={"help": "The model card's license, a Hub license id (cc-by-nc-4.0, other...): set it to the "
                          "data's or the teacher's terms when they are stricter (ImageNet's are non-commercial). "
                          "Default apache-2.0, hf_rcka's own."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output_dir that already holds a run's model or checkpoints: that run's "
                          "files move to output_dir/_replaced/ first (one replaced run is kept)."},
    )
    model_ema: bool = field(
        default=False, metadata={"help": "Keep an EMA of the student's weights (timm ModelEmaV3); eval in training also reports "
                                               "eval_ema_*."}
    )
    model_ema_decay: float = field(default=0.9998, metadata={"help": "EMA decay per optimizer step (timm's default)."})
    model_ema_warmup: bool = field(default=False, metadata={"help": "timm's EMA decay warm-up."})
    model_ema_export: bool = field(
        default=False, metadata={"help": "Save the EMA weights (not the live ones) as the final model in output_dir; "
                                         "eval_* then reports the average and eval_live_* the live weights."}
    )
    model_no_weight_decay: bool = field(
        default=True,
        metadata={"help": "Also exempt from weight decay what the student's no_weight_decay() names (timm: position "
                          "embedding, class/distillation tokens), as timm's and DeiT's optimizers do."},
    )
    # Trainer's own default, as an object of its own: a rate given from Python equal to it (5e-5) is
    # told apart from one left out, so that giving it with lr_base is said (any other rate is refused)
    learning_rate: float = field(
        default=TrainersDefaultRate(TrainersDefaultRate.VALUE),
        metadata=TrainingArguments.__dataclass_fields__["learning_rate"].metadata,
    )
    lr_base: float | None = field(
        default=None,
        metadata={"help": "Learning rate for a global batch of lr_base_size images: learning_rate becomes lr_base "
                          "scaled by (global batch / lr_base_size) as lr_base_scale says, the global batch being "
                          "per-device batch x processes x gradient accumulation, so a recipe holds on any number of "
                          "GPUs. Give learning_rate or lr_base, not both."},
    )
    lr_base_size: int = field(default=256, metadata={"help": "The global batch lr_base is given for."})
    lr_base_scale: str = field(
        default="linear",
        metadata={"help": "How lr_base follows the batch: 'linear' (the default, as DeiT's main.py scales it) or "
                          "'sqrt'. timm's train.py picks sqrt for adaptive optimizers (AdamW, LAMB): set "
                          "lr_base_scale: sqrt to match it."},
    )
    # Trainer's filter reads every micro-step's loss back from the device (a stall each time) to
    # replace a non-finite one by the running mean in the logged loss. That hides a divergence from
    # the log; it only serves fp16, whose loss scaling skips overflowing steps. Unset: on with fp16.
    logging_nan_inf_filter: bool | None = field(
        default=None,
        metadata={"help": "Replace a non-finite step loss by the running mean in the logged loss. Unset, it is on "
                          "with fp16 only, whose loss scaling skips overflowing steps: elsewhere it would hide a "
                          "divergence from the log (and read every step's loss back from the device)."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Distillation needs every batch column."})
    label_names: list[str] | None = field(default_factory=lambda: ["labels"], metadata={"help": "Label keys."})

    def __post_init__(self) -> None:
        rate_given = not isinstance(self.learning_rate, TrainersDefaultRate)
        self.learning_rate = float(self.learning_rate)
        check_training_values(self)
        self.losses = validate_losses(self.losses)
        self.feature_pairs = validate_feature_pairs(self.feature_pairs)
        check_auto_pair_options(self.losses, self.feature_pairs)
        if unused_feature_pairs(self.losses, self.feature_pairs):  # said before any model loads
            logger.warning(unused_pairs_message())
        if not 0.0 <= self.model_ema_decay < 1.0:
            raise RecipeError(f"model_ema_decay must be in [0, 1), got {self.model_ema_decay}")
        if self.model_ema and fsdp_requested(self):
            raise RecipeError(
                "model_ema: true cannot run under FSDP (the average needs the whole student in every process, and "
                "FSDP shards it): set model_ema: false, or launch with DDP (accelerate launch --multi_gpu; the "
                "repository's recipes/accelerate/ddp_8gpu_bf16.yaml)"
            )
        if self.model_ema_export and not self.model_ema:
            raise RecipeError("model_ema_export: true needs model_ema: true (there is no average to export)")
        if self.baseline_dir:
            _check_baseline_dir(self.baseline_dir)
        if self.card_license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", str(self.card_license)):
            # the Hub refuses a card whose license is not one of its ids, at the upload after training
            raise RecipeError(f"card_license {self.card_license!r} is not a Hub license id (lower case, no spaces: "
                              "apache-2.0, mit, cc-by-nc-4.0, other...)")
        for key in ("teacher_accuracy_check", "student_accuracy_check"):
            _check_accuracy_check(key, getattr(self, key))
        check_fixed_settings(self)
        super().__post_init__()
        if self.logging_nan_inf_filter is None:  # the launcher's fp16 too, known once the devices are set up
            self.logging_nan_inf_filter = run_mixed_precision(self) == "fp16"
        check_teacher_dtype(self.teacher_dtype, run_mixed_precision(self))
        check_batch_settings(self)
        check_optim_args(self)
        check_optim_target_modules(self)
        check_schedule_settings(self)
        if self.lr_base_scale not in ("linear", "sqrt"):  # a typo is one, whether lr_base is set or not
            raise RecipeError(f"lr_base_scale must be 'linear' or 'sqrt', got {self.lr_base_scale!r}")
        if self.lr_base is not None:  # needs the number of processes, known once TrainingArguments set up the devices
            self.learning_rate = scaled_learning_rate(self, rate_given)

    @property
    def n_gpu(self) -> int:
        """At most 1: one process trains on one device, several devices through one process each
        (``accelerate launch``). With more GPUs visible to one process, Trainer wrapped the model in
        ``nn.DataParallel``, which runs a copy per GPU in threads that share the models' feature
        capture, and keeps what the losses' statistics learn on the first copy alone (see
        ``trainer.data_parallel.one_device_per_process``). Read by the batch size, so ``lr_base``
        scales to the batch that trains."""
        return min(super().n_gpu, 1)


def _check_accuracy_check(key: str, mode: Any) -> None:
    if mode not in ACCURACY_CHECK_MODES:
        raise RecipeError(f"{key} must be 'warn', 'error' or 'off', got {mode!r}")


def check_arguments(args: TrainingArguments) -> None:
    """Plain ``TrainingArguments`` get the checks ``DistillationTrainingArguments`` runs itself; both
    get the value ranges and fixed settings again, which a caller may have set since.

    Their two defaults that differ from the distillation's (``label_names`` unset,
    ``remove_unused_columns`` on, which drops the columns an image transform reads) are set to
    the distillation's; any other value of a fixed setting is refused. ``losses`` and
    ``feature_pairs`` set on the object after it was built (the README's short forms, ``["ce",
    "kd"]``) are checked and expanded here, for either class: they failed as a traceback.

    Raises:
        TypeError: ``args`` is not a ``TrainingArguments`` (a dict of them, say).
    """
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be DistillationTrainingArguments (or transformers.TrainingArguments), got "
                        f"{type(args).__name__}: build them with DistillationTrainingArguments(**settings)")
    for key, validate in (("losses", validate_losses), ("feature_pairs", validate_feature_pairs)):
        if hasattr(args, key):
            setattr(args, key, validate(getattr(args, key)))
    _check_accuracy_check("teacher_accuracy_check", getattr(args, "teacher_accuracy_check", TEACHER_CHECK_DEFAULT))
    if not isinstance(args, DistillationTrainingArguments):
        if args.label_names is None:
            args.label_names = ["labels"]
        if args.remove_unused_columns:
            logger.info("remove_unused_columns set to False: distillation reads every column of the batch")
            args.remove_unused_columns = False
    # again for the distillation's own arguments: a value set on the object after it was built
    # (args.prediction_loss_only = True) passed, and the evaluation reported no accuracy
    check_training_values(args)
    check_fixed_settings(args)
    if isinstance(args, DistillationTrainingArguments):
        return
    check_batch_settings(args)
    check_optim_args(args)
    check_optim_target_modules(args)
    check_schedule_settings(args)


# Settings whose value decides what a run trains, besides the models, data and losses a recipe names:
# which images (the carved split, the columns), their augmentation, the optimizer, the schedule, the
# seed and the weight average. A run's record holds each at its value, at this version's default
# where the recipe left it out, so that a rerun of the record or a resume of the run trains alike
# after a later version changes a default (the losses' options are recorded likewise).
DECIDING_KEYS = (
    "student_from_scratch", "teacher_label_mapping", "image_column_name", "label_column_name", "train_val_split",
    "split_seed", *(f.name for f in dataclasses.fields(AugmentationArguments)),
    "learning_rate", "lr_base_size", "lr_base_scale", "optim", "weight_decay", "model_no_weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "num_train_epochs", "lr_scheduler_type", "warmup_steps", "seed",
    "label_smoothing_factor", "per_device_train_batch_size", "gradient_accumulation_steps", "model_ema",
    "model_ema_decay", "model_ema_warmup", "model_ema_export",
)


# Settings that act only where others switch them on, as timm takes them: the mixing options
# without MixUp or CutMix (a cutmix_minmax alone turns CutMix on), the per-image transform's
# settings under no_aug, the erasing options without erasing, the average's options without an
# average, and the exceptions below. Two runs that differ only in an idle setting trained alike.
_ACTS_WHEN = {
    **dict.fromkeys(("cutmix_minmax", "mixup_prob", "mixup_switch_prob", "mixup_mode"),
                    lambda run: run["mixup"] or run["cutmix"] or run["cutmix_minmax"] is not None),
    **dict.fromkeys(PER_IMAGE_KEYS, lambda run: not run["no_aug"]),
    **dict.fromkeys(("remode", "recount"), lambda run: run["reprob"] and not run["no_aug"]),  # after: per-image too
    **dict.fromkeys(("model_ema_decay", "model_ema_warmup", "model_ema_export"), lambda run: run["model_ema"]),
    # timm drops colour jitter under an auto-augment policy but its 3a ones
    "color_jitter": lambda run: not run["no_aug"] and (not run["aa"] or "3a" in str(run["aa"])),
    # the switch draws only when both mix; a cutmix_minmax sets CutMix's alpha to 1 (timm's Mixup)
    "mixup_switch_prob": lambda run: bool(run["mixup"]) and (bool(run["cutmix"]) or run["cutmix_minmax"] is not None),
    "cutmix": lambda run: run["cutmix_minmax"] is None,
}
SWITCH_KEYS = ("mixup", "cutmix", "cutmix_minmax", "reprob", "no_aug", "model_ema", "aa")  # what _ACTS_WHEN reads


def setting_acts(key: str, run: dict[str, Any]) -> bool:
    """Whether ``key`` acts on a run with settings ``run`` (which holds at least ``SWITCH_KEYS``);
    a setting that no other one switches on always acts."""
    return key not in _ACTS_WHEN or bool(_ACTS_WHEN[key](run))


def left_out_defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    """The ``DECIDING_KEYS`` that ``recipe`` leaves out, at the defaults it ran with; those that are
    None (no value to change) are left out, and so is ``learning_rate`` beside ``lr_base``, which
    sets the rate (a recipe with both is refused). Trainer's rate is a plain number here (the
    arguments mark it as not given: ``TrainersDefaultRate``)."""
    defaults = recipe_defaults()
    return {key: float(defaults[key]) if isinstance(defaults[key], float) else defaults[key] for key in DECIDING_KEYS
            if key not in recipe and defaults.get(key) is not None and not (key == "learning_rate" and "lr_base" in recipe)}


def recipe_defaults() -> dict[str, Any]:
    """What a recipe that leaves a setting out runs with (the arguments' own defaults), for
    comparing a recorded recipe with another run's settings."""
    fields = (*dataclasses.fields(ModelArguments), *dataclasses.fields(DataArguments),
              *dataclasses.fields(DistillationTrainingArguments))
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def global_batch_size(args: TrainingArguments, per_device: int | None = None) -> int:
    """Images per optimizer step over all processes (``split_batches`` splits one per-device batch
    over the processes, which Trainer's own count of the total batch leaves out).

    ``per_device``: the batch each process trained with, when ``auto_find_batch_size`` lowered it
    below ``args.train_batch_size``.
    """
    processes = 1 if args.accelerator_config.split_batches else args.world_size
    return (per_device or args.train_batch_size) * processes * args.gradient_accumulation_steps


def describe_batch(args: TrainingArguments, per_device: int | None = None) -> str:
    """How the global batch is made up, in words, for the card and the recorded recipe: the same
    recipe under another number of processes trains with another batch (and, with ``lr_base``,
    another learning rate), so a record without it does not say how to run it again.

    ``per_device``: as in ``global_batch_size`` (the batch ``auto_find_batch_size`` trained with).
    """
    processes, accumulation = args.world_size, args.gradient_accumulation_steps
    batch, total = per_device or args.train_batch_size, global_batch_size(args, per_device)
    steps = f" x {accumulation} accumulation steps" if accumulation > 1 else ""
    if args.accelerator_config.split_batches and processes > 1:
        return f"{total} images ({batch} images split over {processes} processes{steps})"
    noun = "process" if processes == 1 else "processes"
    return f"{total} images ({processes} {noun} x {batch} images{steps})"


def scaled_learning_rate(args: "DistillationTrainingArguments", rate_given: bool) -> float:
    """``lr_base`` scaled from ``lr_base_size`` images to this run's global batch.

    ``rate_given``: whether ``learning_rate`` was set too (Trainer's default 5e-5 given as a value is
    taken as unset, and said).

    Raises:
        RecipeError: for a bad scale or size, or another ``learning_rate`` given as well (which one would
            win is a guess; the result is idempotent, so rebuilding the arguments from their values is fine).
    """
    if args.auto_find_batch_size:
        raise RecipeError("lr_base scales the learning rate to the batch the recipe sets, and auto_find_batch_size "
                          "may train with a smaller one: set per_device_train_batch_size yourself, or use learning_rate")
    if not 0 < args.lr_base < math.inf or args.lr_base_size < 1:  # inf: NaN weights, found after training
        raise RecipeError(f"lr_base must be > 0 and finite and lr_base_size >= 1, got {args.lr_base} and "
                          f"{args.lr_base_size}")
    ratio = global_batch_size(args) / args.lr_base_size
    scaled = args.lr_base * (ratio if args.lr_base_scale == "linear" else math.sqrt(ratio))
    if rate_given and args.learning_rate == TrainersDefaultRate.VALUE and args.learning_rate != scaled:
        # Trainer's default given as a value: arguments rebuilt from another's values
        # (dataclasses.replace(args, lr_base=...)) hold it as one, so it is said, not refused
        logger.warning("learning_rate %g (Trainer's default) is taken as unset: lr_base %g scaled to the global batch "
                       "gives %g. Give learning_rate or lr_base, not both", args.learning_rate, args.lr_base, scaled)
    elif rate_given and args.learning_rate != scaled:
        raise RecipeError(
            f"learning_rate {args.learning_rate:g} and lr_base {args.lr_base:g} are both given: keep lr_base "
            f"(the rate for {args.lr_base_size} images, scaled to the global batch) or learning_rate (as is), not both"
        )
    return scaled


def _distilled(losses: Any) -> bool:
    """Whether a recorded run's losses (the record holds them in full) read its teacher: a run with a
    teacher set and ``losses: [ce]`` trained the student alone (its card says so). No record of them,
    or a loss this process does not know, counts as distilled."""
    if not isinstance(losses, list) or not losses:
        return True
    specs = [spec for spec in losses if not weighs_nothing(spec)]
    return any(not isinstance(spec, dict) or spec.get("name") not in LOSSES or reads_teacher(LOSSES.get(spec["name"]))
               for spec in specs)


def _check_baseline_dir(folder: str) -> None:
    """The student-alone run must hold the accuracy the card compares with (read after training)."""
    results = Path(folder, "all_results.json")
    if not results.is_file():
        raise RecipeError(f"baseline_dir {folder!r} holds no all_results.json: train the student alone there first, "
                          "or drop baseline_dir")
    try:
        accuracy = json.loads(results.read_text(encoding="utf-8")).get("eval_accuracy")
    except (OSError, ValueError, AttributeError) as err:
        raise RecipeError(f"baseline_dir: {str(results)!r} cannot be read ({err}): rerun the baseline") from None
    if accuracy is None:
        raise RecipeError(f"baseline_dir: {str(results)!r} has no eval_accuracy (that run was not evaluated): "
                          "train the baseline again with do_eval: true, or drop baseline_dir")
    try:  # the card compares the two runs by it after training
        recorded = read_recorded_recipe(folder)
    except ValueError as err:
        raise RecipeError(f"baseline_dir: {err}: rerun the baseline, or drop baseline_dir") from None
    teacher = recorded.get("teacher_model_name_or_path")
    if teacher and _distilled(recorded.get("losses")):
        raise RecipeError(f"baseline_dir {folder!r} is a distilled run (teacher {teacher!r}), not the student trained "
                          "alone: the card would credit distillation with the difference between two distillations. "
                          "Give the run of the student alone (no teacher), or drop baseline_dir")


def fsdp_requested(args: TrainingArguments) -> bool:
    """FSDP asked for by the recipe (``fsdp``) or by ``accelerate launch`` with an FSDP config,
    read from the environment the way accelerate itself reads it."""
    from accelerate.utils import parse_flag_from_env

    return bool(args.fsdp) or parse_flag_from_env("ACCELERATE_USE_FSDP")


_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def run_mixed_precision(args: Any) -> str | None:
    """``"bf16"``, ``"fp16"`` or None: the recipe's flags, or what the launcher set
    (``accelerate launch --mixed_precision``, an accelerate config file), which leaves them False."""
    if getattr(args, "bf16", False) or getattr(args, "fp16", False):
        return "bf16" if getattr(args, "bf16", False) else "fp16"
    chosen = getattr(args, "mixed_precision", None) or os.environ.get("ACCELERATE_MIXED_PRECISION")
    return chosen if chosen in _AUTOCAST_DTYPES else None


def check_teacher_dtype(teacher_dtype: str | None, mixed_precision: str | None) -> None:
    """``teacher_dtype`` names a half precision, the one the run's autocast computes in, if any.

    Under bf16 autocast a float16 teacher's convolutions hand bfloat16 outputs to its float16
    BatchNorm, which refuses mixed dtypes: the run failed at its first step (and the smoke test,
    run in float32 without a GPU, passed). Checked for the smoke test's recipe too.
    """
    if teacher_dtype not in (None, "bfloat16", "float16"):
        raise RecipeError(f"teacher_dtype must be 'bfloat16', 'float16' or unset, got {teacher_dtype!r}")
    autocast = _AUTOCAST_DTYPES.get(mixed_precision or "")
    if teacher_dtype is not None and autocast is not None and teacher_dtype != autocast:
        raise RecipeError(f"teacher_dtype {teacher_dtype!r} with {mixed_precision}: true: the teacher's layers would mix "
                          f"{teacher_dtype} weights with {autocast} activations, which BatchNorm refuses at the first "
                          f"step. Set teacher_dtype: {autocast} (or leave it unset)")


SECRET_KEYS = frozenset({"hub_token"})
"""Keys never written to a recorded recipe nor printed in a relaunch command: the recipe goes next
to the model, to the Hub with ``push_to_hub``, and logs get shared; a run again reads the token
from ``hf auth login`` or ``HF_TOKEN``."""

ARGUMENT_CLASSES = (ModelArguments, DataArguments, DistillationTrainingArguments)
# What the command line runs when a recipe does not say (TrainingArguments defaults both to False):
# training, then a final evaluation.
RUN_DEFAULTS = {"do_train": True, "do_eval": True}
# What a recipe must set: the student, and where the run writes (TrainingArguments defaults output_dir
# to a folder named after nothing the user chose).
REQUIRED_KEYS = ("model_name_or_path", "output_dir")
