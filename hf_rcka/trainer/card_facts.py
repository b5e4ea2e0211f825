"""What a run knows that its model card should say, gathered apart from the card's layout.

A card is only as honest as its facts: ``base_model`` must name the checkpoint the *student*
started from (never the teacher, never a from-scratch build whose config happens to come from the
Hub); a distilled student's accuracy means little without the teacher's and the student-alone
baseline's on the same images; and a reader must know which images those were.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import dataclass, field
import math
from typing import Any, NamedTuple

import torch
from transformers import TrainerCallback

from ..arguments import SWITCH_KEYS, global_batch_size, recipe_defaults, setting_acts
from ..augmentation import AugmentationArguments
from ..data.datasets import VALIDATION_SPLIT_NAMES
from ..losses import IGNORE_INDEX
from ..losses.base import RelationalLoss
from ..models.sources import cache_snapshot, cached_commit, parse_model_source
from ..recipe_specs import weighs_nothing
from ..run_record import BATCH_HEADER, read_recorded_recipe, recorded_header_number

# Settings that must agree for two runs to have been evaluated on the same images (split_seed draws
# both the carved validation split and the max_eval_samples subset; the training seed draws neither).
SPLIT_KEYS = ("dataset_name", "dataset_config_name", "train_dir", "validation_dir", "train_val_split",
              "split_seed", "max_eval_samples", "label_column_name")  # a carved split is stratified by the label
# Settings that must agree for a baseline run to have trained the same student (a ResNet-18 baseline
# says nothing of what distillation did for a ResNet-50).
STUDENT_KEYS = ("model_name_or_path", "student_from_scratch", "student_config_overrides", "image_size")
# Settings that must agree for a baseline run to have trained as this run did, the teacher aside: a
# baseline of 20 steps against 250 distilled ones measures the training length, not the teacher.
# The global batch, the learning rate it gives and the number of optimizer steps are compared as
# they were in effect (``TrainingRecord``), not as spelt (lr_base or learning_rate; processes x batch).
TRAINING_KEYS = (
    "max_train_samples", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay",
    "optim", "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "model_ema",
    "model_no_weight_decay", "bf16", "fp16",  # which weights decay; the precision the steps computed in
    # an export chosen among evaluations on these very images is another measurement than the last step's
    "load_best_model_at_end",
    *(f.name for f in dataclasses.fields(AugmentationArguments)),
)
# What and how often a run chose among its evaluations: compared when either side kept its best checkpoint
_SELECTION_KEYS = ("metric_for_best_model", "greater_is_better", "eval_strategy")
# The weight average's settings; these, the mixing, erasing and per-image augmentation settings
# are compared only where they act on either side (arguments.setting_acts)
_EMA_KEYS = ("model_ema_decay", "model_ema_warmup", "model_ema_export")

logger = logging.getLogger(__name__)


class TrainingRecord(NamedTuple):
    """How a run trained, as a baseline is compared with it: its recorded recipe (the command
    line's; empty from Python), optimizer steps, global batch and peak learning rate, and the rate
    it logged at each logging step (``log_history``)."""

    recipe: dict[str, Any]
    steps: int
    global_batch: int
    learning_rate: float
    logged_rates: dict[int, float] = {}


class PeakRate(TrainerCallback):
    """The highest learning rate an optimizer step of this ``train()`` call ran at, for the card:
    a caller's own warm-up scheduler shows its peak in no logged rate between logging steps."""

    def __init__(self) -> None:
        self.highest: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.highest = None

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # noqa: D102
        if optimizer is not None:
            rate = float(max((float(group.get("lr", 0.0)) for group in optimizer.param_groups), default=0.0))
            self.highest = rate if self.highest is None else max(self.highest, rate)


def logged_rates(log_history: list[dict]) -> dict[int, float]:
    """The learning rate a run logged at each step it logged one."""
    return {entry["step"]: entry["learning_rate"] for entry in log_history
            if "learning_rate" in entry and "step" in entry}


# Folder names that say which split a folder holds, not what the data is: /data/pets/train is "pets".
SPLIT_FOLDER_NAMES = ("train", "training", *VALIDATION_SPLIT_NAMES)


@dataclass
class CardFacts:
    """Facts for ``hub.write_model_card``; every field is optional.

    Attributes:
        base_model: Hub id of the checkpoint the student's weights started from.
        base_revision: its commit, where the local Hugging Face cache says which was read.
        local_checkpoint: name of the local folder the student's weights started from (the card
            is published; the folder's full path says nothing to its readers).
        start_recorded: whether the run knows where the student's weights started, so that
            neither of the above means random weights. The command line knows; a student given in
            Python is "not recorded" unless ``create_model_card(finetuned_from=...)`` names it.
        tags / language: the caller's card metadata (``create_model_card``'s arguments).
        teacher_accuracy: the teacher's top-1 on the student's evaluation images, as distillation
            feeds them to it: the student's preprocessing, re-normalised and resized for the
            teacher, in the run's mixed precision (as the teacher runs in training and evaluation).
            Its own preprocessing (another resize filter, another crop) can score higher.
        teacher_own_accuracy: the teacher's top-1 on the same images through its own preprocessing,
            as the run that trained it recorded it (``read_teacher_run``); None when unknown.
        teacher_own_read: whether ``teacher_own_accuracy`` was read as the run started (the command
            line): a retrain of the teacher's folder meanwhile would give another teacher's figure.
        baseline_accuracy: top-1 of the same student trained alone (``baseline_dir``).
        eval_data: what the evaluation images are (dataset and split), without their count.
        eval_images: how many images the evaluation set holds.
        unreadable_eval_images: how many of them could not be read (the trainer counts them at
            evaluation, where they are left out); the card counts only the others.
        dataset_type / dataset_label / dataset_config / eval_split: ``model-index`` dataset fields.
        train_subset: which training images ``max_train_samples`` drew, in words; None for all.
        image_folder: ``train_dir`` of an image-folder run. Its data is local: the card says so
            and never lists it (or the ``dataset`` a caller passes) as a Hub dataset id.
        run_settings: the data settings (``SPLIT_KEYS``) that decide which images were evaluated.
        student_settings: the student settings (``STUDENT_KEYS``) a baseline run must share.
        baseline_comparable: whether the baseline trained this student on these evaluation images;
            only then does the card state what distillation changed.
        relation_batches: the images each relational term (one that compares a batch's images with
            each other, whose value depends on the batch's size) was evaluated over at once.
    """

    base_model: str | None = None
    base_revision: str | None = None
    local_checkpoint: str | None = None
    start_recorded: bool = False
    teacher_accuracy: float | None = None
    teacher_accuracy_note: str = "same images, through the student's preprocessing (what distillation feeds it)"
    teacher_own_accuracy: float | None = None
    teacher_own_read: bool = False
    baseline_accuracy: float | None = None
    baseline_note: str = ""
    eval_data: str | None = None
    eval_images: int | None = None
    unreadable_eval_images: int = 0
    dataset_type: str | None = None
    dataset_label: str | None = None
    dataset_config: str | None = None
    train_subset: str | None = None
    image_folder: str | None = None
    eval_split: str | None = None  # the split evaluated, where known (the command line knows it; Python does not)
    run_settings: dict[str, Any] = field(default_factory=dict)
    student_settings: dict[str, Any] = field(default_factory=dict)
    baseline_comparable: bool = False
    tags: list[str] = field(default_factory=list)
    language: str | list[str] | None = None
    relation_batches: dict[str, int] = field(default_factory=dict)


def base_model_of(model_name_or_path: str, from_scratch: bool) -> str | None:
    """The student's Hub checkpoint, or None (random weights, ``config:``, local folders other than
    the Hugging Face cache's)."""
    source = parse_model_source(model_name_or_path)
    if from_scratch or source.kind == "config":
        return None
    snapshot = cache_snapshot(model_name_or_path)  # a folder of the Hugging Face cache: its repository
    if snapshot or os.path.isdir(model_name_or_path):
        return snapshot[0] if snapshot else None
    if source.kind == "timm":  # the repo timm downloads: resnet18 is timm/resnet18.a1_in1k
        import timm

        try:
            hub_id = getattr(timm.models.get_pretrained_cfg(source.name), "hf_hub_id", None)
        except RuntimeError:  # a tag this timm does not know (transformers loaded it from the Hub)
            hub_id = None
        return hub_id if hub_id and "/" in hub_id else f"timm/{source.name}"
    return model_name_or_path


def revision_of(model_name_or_path: str, base_model: str | None) -> str | None:
    """The commit of the student's Hub checkpoint (``base_model``, from ``base_model_of``) that the
    run read: a cache folder's own, or the one the local cache holds for its Hub id (a rerun of the
    same recipe after the repository moved on starts from other weights, which the card then tells
    apart)."""
    if base_model is None:
        return None
    snapshot = cache_snapshot(model_name_or_path)
    return snapshot[1] if snapshot else cached_commit(base_model)


def local_checkpoint_of(model_name_or_path: str, from_scratch: bool) -> str | None:
    """The name of a local folder whose weights the student starts from, or None (a folder of the
    Hugging Face cache is its Hub checkpoint: ``base_model_of``)."""
    if from_scratch or not os.path.isdir(model_name_or_path) or cache_snapshot(model_name_or_path):
        return None
    return os.path.basename(os.path.abspath(model_name_or_path))


def describe_eval_data(
    data_args: Any, num_images: int | None, num_validation: int | None = None, split: str | None = None,
    carved: bool = False, data_format: str | None = None,
) -> dict[str, Any]:
    """``eval_data``, ``eval_images``, ``image_folder`` and the ``model-index`` dataset fields.

    ``num_validation`` is the size of the validation split that ``max_eval_samples`` drew
    ``num_images`` from: a reader must know when the accuracy is that of a subset. ``split``: the
    data's split that was evaluated, as it is named there (``test`` when a dataset has no
    validation split; ``train`` for a validation split ``carved`` from it, or in an
    evaluation-only run of data with no other split); None where the caller does not know it.
    ``data_format``: the datasets loader a local dataset folder was read with (``parquet``,
    ``arrow``...), its ``model-index`` type: the Hub reads that field as a dataset id, and a folder
    named ``beans`` would be indexed under the Hub's ``beans``.
    """
    snapshot = cache_snapshot(data_args.dataset_name, "datasets") if data_args.dataset_name else None
    if data_args.dataset_name == "builtin:digits":
        name, label = "digits", "scikit-learn handwritten digits"
    elif snapshot:  # a folder of the Hugging Face cache (how a revision is read offline): the Hub dataset
        name, label = snapshot[0], f"{snapshot[0]} at revision {snapshot[1]}"
    elif data_args.dataset_name and os.path.isdir(data_args.dataset_name):  # named, never its local path
        label = f"{image_folder_name(data_args.dataset_name)} (local dataset folder)"
        name = data_format or "local"
    elif data_args.dataset_name:
        name = label = data_args.dataset_name
    else:  # "imagefolder" is datasets' loader, the model-index type Hub cards give local image folders
        name, label = "imagefolder", f"{image_folder_name(data_args.train_dir)} (local image folder)"
    config = getattr(data_args, "dataset_config_name", None) if data_args.dataset_name else None
    named = f"{label}, configuration {config}" if config else label  # model-index has its own config field
    where, model_index_split = _evaluated_split(data_args, split, carved)
    if num_images and num_validation and num_images < num_validation:
        where = (f"a random subset (max_eval_samples, drawn with split_seed {data_args.split_seed}) "
                 f"of the {num_validation:,} images of {where}")
    return {"eval_data": f"{named}: {where}", "eval_images": num_images, "dataset_type": name,
            "dataset_label": label, "dataset_config": config, "eval_split": model_index_split,
            "image_folder": None if data_args.dataset_name else data_args.train_dir}


def _evaluated_split(data_args: Any, split: str | None, carved: bool) -> tuple[str, str]:
    """Which images were evaluated, in words, and the split the ``model-index`` names."""
    held_out = (f"a stratified {100 * data_args.train_val_split:g}% validation split carved from train "
                f"(split_seed {data_args.split_seed}, independent of the training seed)")
    if data_args.validation_dir:
        return f"its image folder `{os.path.basename(os.path.normpath(data_args.validation_dir))}`", "validation"  # no local path
    if carved or (split is None and data_args.dataset_name in (None, "builtin:digits")):  # a lone train_dir: no other split
        return held_out, "train"  # the data's own split the images come from; the text says they were held out
    if split == "train":
        return "all of its train split (an evaluation-only run; the data has no validation split)", "train"
    if split:
        return f"its {split} split", split
    *names, last = VALIDATION_SPLIT_NAMES
    return (f"the dataset's validation split (named {', '.join(names)} or else {last}), or where it has none, "
            f"{held_out}"), "validation"


def image_folder_name(train_dir: str) -> str:
    """What an image folder's data is called: its own name, or its parent's when it names a split.

    ``/data/pets/train`` holds the ``pets`` data's training split; calling the dataset ``train``
    says nothing. A relative path is read from the working directory (``train`` run in
    ``/data/pets`` is ``pets`` too).
    """
    path = os.path.abspath(os.path.expanduser(train_dir))
    leaf, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    return parent if leaf.lower() in SPLIT_FOLDER_NAMES and parent else leaf


def read_baseline(
    baseline_dir: str, run_settings: dict[str, Any], student_settings: dict[str, Any] | None = None,
    training: TrainingRecord | None = None,
) -> tuple[float, str, bool]:
    """``eval_accuracy`` of a student-alone run folder, a note on what it compares, and whether it
    is comparable: the same student (``STUDENT_KEYS``, when given) evaluated on the same images,
    and, with ``training`` (this run's), trained alike (``TRAINING_KEYS``, global batch, learning
    rate) for as many steps.

    Raises:
        FileNotFoundError: if the folder holds no ``all_results.json`` with ``eval_accuracy``.
    """
    results_path = os.path.join(baseline_dir, "all_results.json")
    if not os.path.exists(results_path):
        raise FileNotFoundError(f"baseline_dir {baseline_dir!r} holds no all_results.json: train the student alone there first")
    accuracy = json.load(open(results_path)).get("eval_accuracy")
    if accuracy is None:
        raise FileNotFoundError(f"{results_path} has no eval_accuracy: evaluate the baseline run")
    recipe = _recorded_recipe(baseline_dir)
    defaults = recipe_defaults()
    same_images = _same_images(recipe, defaults, run_settings)
    other_student = [k for k in STUDENT_KEYS if student_settings is not None and recipe
                     and not _same_setting(recipe.get(k, defaults.get(k)), student_settings.get(k))]
    name = os.path.basename(os.path.abspath(baseline_dir))
    notes = [f"run `{name}`", "same images" if same_images else "other evaluation images"]
    if other_student:
        notes.append(f"another student ({_differ(other_student)})")
    other_training = _other_training(baseline_dir, recipe, defaults, training) if training is not None else []
    if other_training:
        notes.append(f"trained otherwise ({'; '.join(other_training)})")
    comparable = same_images and not other_student and student_settings is not None and not other_training
    return float(accuracy), ", ".join(notes), comparable


def read_teacher_run(teacher_dir: str | None, run_settings: dict[str, Any]) -> float | None:
    """The teacher's top-1 through its own preprocessing, as its own run (a folder the command line
    trained) recorded it, when that run evaluated the same images; else None.

    The card's first teacher figure feeds it the student's inputs, as distillation does; another
    resize filter or crop can cost a teacher points there, so its own figure is shown beside it.
    """
    if not teacher_dir or not os.path.isdir(teacher_dir):
        return None
    try:
        with open(os.path.join(teacher_dir, "all_results.json"), encoding="utf-8") as handle:
            accuracy = json.load(handle).get("eval_accuracy")
    except (OSError, ValueError, AttributeError):
        return None
    recipe = _recorded_recipe(teacher_dir)
    same = isinstance(accuracy, (int, float)) and _same_images(recipe, recipe_defaults(), run_settings)
    return float(accuracy) if same else None


def _same_images(recipe: dict[str, Any], defaults: dict[str, Any], run_settings: dict[str, Any]) -> bool:
    """Whether a recorded recipe evaluated the images ``run_settings`` (``SPLIT_KEYS``) evaluate."""
    return bool(recipe) and all(_same_setting(recipe.get(k, defaults.get(k)), run_settings.get(k)) for k in SPLIT_KEYS)


def _differ(keys: list[str]) -> str:
    return f"{', '.join(keys)} {'differs' if len(keys) == 1 else 'differ'}"


def _other_training(baseline_dir: str, recipe: dict, defaults: dict, own: TrainingRecord) -> list[str]:
    """What differs: the ``TRAINING_KEYS`` in which the two recorded recipes differ, then the global
    batch, learning rate and number of optimizer steps in effect."""
    keys = []
    if recipe and own.recipe:
        sides = (recipe, own.recipe)
        selecting = any(side.get("load_best_model_at_end", defaults.get("load_best_model_at_end")) for side in sides)
        compared = (*TRAINING_KEYS, *(_SELECTION_KEYS if selecting else ()), *_EMA_KEYS)
        setting = functools.partial(_setting, defaults=defaults)
        switches = [{key: setting(side, key) for key in SWITCH_KEYS} for side in sides]
        keys = [k for k in compared if any(setting_acts(k, run) for run in switches)
                and not _same_setting(setting(recipe, k), setting(own.recipe, k))]
        if selecting and "steps" in {setting(side, "eval_strategy") for side in sides} \
                and not _same_setting(setting(recipe, "eval_steps"), setting(own.recipe, "eval_steps")):
            keys.append("eval_steps")
        if not _same_setting(_task_smoothing(recipe, defaults), _task_smoothing(own.recipe, defaults)):
            keys.append("label smoothing")
    other = [_differ(keys)] if keys else []
    batch = recorded_header_number(baseline_dir, BATCH_HEADER)  # the header's (records.RecipeRecord)
    if batch is not None and batch != own.global_batch:
        other.append(f"a global batch of {batch} images against this run's {own.global_batch}")
    rate = _learning_rate(recipe, defaults, batch) if recipe else None
    if rate is not None and not math.isclose(rate, own.learning_rate, rel_tol=1e-6):
        other.append(f"a learning rate of {rate:g} against this run's {own.learning_rate:g}")
    try:
        with open(os.path.join(baseline_dir, "trainer_state.json"), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        state = {}
    steps = state.get("global_step")
    if steps != own.steps:
        other.append(f"{steps if steps is not None else 'unrecorded'} optimizer steps against this run's {own.steps}")
    # the schedule as it ran: a run resumed with other schedule settings, or a warm-up the recipes
    # spell alike, shows in the rates both logged at the same steps
    theirs = logged_rates(state.get("log_history") or [])
    differing = [step for step in sorted(theirs.keys() & own.logged_rates.keys())
                 if not math.isclose(theirs[step], own.logged_rates[step], rel_tol=1e-6, abs_tol=1e-12)]
    if differing and not other:
        step = differing[0]
        other.append(f"another learning-rate schedule (at step {step}: {theirs[step]:g} against this run's "
                     f"{own.logged_rates[step]:g})")
    return other


def _setting(recipe: dict[str, Any], key: str, defaults: dict[str, Any]) -> Any:
    """A recorded recipe's setting as transformers puts it in effect: its default where unset; the
    best-model metric ``loss`` when unset, without the ``eval_`` prefix transformers adds; its
    direction from the metric when unset; ``eval_steps`` from ``logging_steps`` when unset."""
    value = recipe.get(key, defaults.get(key))
    if key == "metric_for_best_model":
        return str(value or "loss").removeprefix("eval_")
    if key == "greater_is_better" and value is None:
        return not _setting(recipe, "metric_for_best_model", defaults).endswith("loss")
    if key == "eval_steps" and not value:  # None or 0: transformers evaluates every logging_steps
        return recipe.get("logging_steps", defaults.get("logging_steps"))
    return value


def _task_smoothing(recipe: dict[str, Any], defaults: dict[str, Any]) -> float:
    """The label smoothing a recorded recipe's task loss trained with: ``ce``'s own, else the
    ``label_smoothing_factor`` it takes (a recipe may spell either)."""
    for spec in recipe.get("losses") or ():
        if isinstance(spec, dict) and spec.get("name") == "ce" and spec.get("label_smoothing") is not None \
                and not weighs_nothing(spec):
            return float(spec["label_smoothing"])
    return float(recipe.get("label_smoothing_factor", defaults.get("label_smoothing_factor")) or 0.0)


def _recorded_recipe(run_dir: str) -> dict[str, Any]:
    """A run's recorded recipe (the command line's; a run from Python has none: empty), its relative
    paths read where it ran; one that cannot be read is none (nothing is claimed from it)."""
    try:
        return read_recorded_recipe(run_dir)
    except ValueError as err:
        logger.warning("model card: %s: it is compared as a run with no recorded recipe", err)
        return {}


def _learning_rate(recipe: dict, defaults: dict, global_batch: int | None) -> float | None:
    """The peak rate a recorded recipe trained at: ``learning_rate``, or ``lr_base`` scaled to its
    global batch (None when that batch is not recorded)."""
    if recipe.get("lr_base") is None:
        return float(recipe.get("learning_rate", defaults.get("learning_rate")))
    if global_batch is None:
        return None
    ratio = global_batch / int(recipe.get("lr_base_size", defaults.get("lr_base_size")))
    scale = recipe.get("lr_base_scale", defaults.get("lr_base_scale"))
    return float(recipe["lr_base"]) * (ratio if scale == "linear" else math.sqrt(ratio))


def _same_setting(recorded: Any, current: Any) -> bool:
    """Equal values; two spellings of one local folder (relative, absolute) are one folder; an empty
    setting is an unset one (``lr_scheduler_kwargs: {}``)."""
    recorded, current = (None if value in ({}, [], "") else value for value in (recorded, current))
    if isinstance(recorded, str) and isinstance(current, str) and os.path.isdir(recorded) and os.path.isdir(current):
        return os.path.samefile(recorded, current)
    return recorded == current


@torch.no_grad()
def teacher_accuracy(distillation_model: Any, batches: Any) -> float | None:
    """The teacher's top-1 over ``batches`` of the student's inputs (re-normalised for the teacher)."""
    correct = total = 0
    for batch in batches:
        accuracy = distillation_model.teacher_accuracy(batch["pixel_values"], batch["labels"])
        counted = int((batch["labels"] != IGNORE_INDEX).sum())  # not unreadable images' stand-ins
        correct += accuracy * counted
        total += counted
    return correct / total if total else None


def _teacher_pass(trainer: Any) -> float | None:
    """The teacher's top-1 over the evaluation set, for a run that never evaluated it.

    A plain DataLoader: the card is written on the main process only, and Trainer's
    (accelerate-prepared) loader would shard the data and sync RNG across ranks.
    """
    model = trainer.distillation_model
    logger.info("scoring the teacher on the evaluation set for the model card (no evaluation of it ran)")
    loader = torch.utils.data.DataLoader(trainer.eval_dataset, batch_size=trainer.args.per_device_eval_batch_size,
                                         collate_fn=trainer.data_collator)
    device = next(model.student.parameters()).device
    with trainer.autocast_smart_context_manager():  # the teacher's precision in an evaluation, as counted there
        return teacher_accuracy(model, ({k: v.to(device) for k, v in batch.items()} for batch in loader))


def card_facts_of(
    model_args: Any, data_args: Any, num_eval_images: int | None, num_validation_images: int | None = None,
    split: str | None = None, carved: bool = False, train_images: tuple[int, int] | None = None,
    data_format: str | None = None,
) -> CardFacts:
    """What the CLI knows before training: the student's starting checkpoint and the eval data.

    ``num_validation_images``: the validation split's size, before ``max_eval_samples``; ``split``
    and ``carved``: which of the data's splits was evaluated (see ``describe_eval_data``);
    ``train_images``: how many images were trained on, of how many in the training split;
    ``data_format``: the loader of a local dataset folder (see ``describe_eval_data``).
    """
    drawn, total = train_images or (0, 0)
    subset = (f"a random {drawn:,} of its {total:,} training images: max_train_samples, drawn with split_seed "
              f"{data_args.split_seed}") if drawn < total else None
    run_settings = {k: getattr(data_args, k, None) for k in SPLIT_KEYS}
    base_model = base_model_of(model_args.model_name_or_path, model_args.student_from_scratch)
    return CardFacts(
        teacher_own_accuracy=read_teacher_run(getattr(model_args, "teacher_model_name_or_path", None), run_settings),
        teacher_own_read=True,
        base_model=base_model,
        base_revision=revision_of(model_args.model_name_or_path, base_model),
        local_checkpoint=local_checkpoint_of(model_args.model_name_or_path, model_args.student_from_scratch),
        start_recorded=True,
        run_settings=run_settings,
        student_settings={k: getattr(model_args, k, None) for k in STUDENT_KEYS},
        train_subset=subset,
        **describe_eval_data(data_args, num_eval_images, num_validation_images, split, carved, data_format),
    )


def complete_card_facts(trainer: Any) -> CardFacts:
    """Add what only the end of a run knows: the teacher's and the baseline's accuracy (once)."""
    facts: CardFacts = trainer.card_facts
    model = trainer.distillation_model
    # a teacher no loss uses was not run in training, and the card calls the run supervised
    # (and one of other classes, whose features alone are distilled, has no accuracy on these labels)
    teacher_used = model.teacher is not None and model.needs_teacher and not model.teacher_other_classes
    # named evaluation sets (a dict) give no single eval_accuracy for the teacher's to stand beside
    single_set = trainer.eval_dataset is not None and not isinstance(trainer.eval_dataset, dict)
    if teacher_used and single_set:
        if facts.teacher_accuracy is None:  # counted by an evaluation of this set, when there was one
            facts.teacher_accuracy = _teacher_pass(trainer)
        if facts.teacher_own_accuracy is None and not facts.teacher_own_read:
            facts.teacher_own_accuracy = read_teacher_run(trainer.teacher_name, facts.run_settings)
    args = trainer.args
    facts.relation_batches = {term: args.per_device_eval_batch_size * (args.world_size if loss.gather else 1)
                              for loss in model.losses.values() if isinstance(loss, RelationalLoss)
                              for term in loss.term_weights}
    baseline_dir = getattr(trainer.args, "baseline_dir", None)
    if baseline_dir and facts.baseline_accuracy is None:
        # the batch trained with: auto_find_batch_size may have lowered it (the recorded header's too)
        own = TrainingRecord(_recorded_recipe(trainer.args.output_dir), trainer.state.global_step,
                             global_batch_size(trainer.args, trainer._train_batch_size), trainer.args.learning_rate,
                             logged_rates(trainer.state.log_history))
        try:
            facts.baseline_accuracy, facts.baseline_note, facts.baseline_comparable = read_baseline(
                baseline_dir, facts.run_settings, facts.student_settings or None, own)
        except (OSError, ValueError) as err:  # checked before training; gone or rewritten since (retrained)
            logger.warning("model card: baseline_dir %s: %s: the card shows no baseline", baseline_dir, err)
    return facts
