"""A checkpoint to resume from, checked before anything loads (and its split once the data has).

A resumed run must continue the run that made the checkpoint: readable weights and trainer state
(a run killed while saving leaves a truncated file), the same global batch, the same learning rate
(the checkpoint's optimizer and schedule hold it), the same losses, loss options, feature pairs
and data (``check_resume_recipe``) and, once the data has loaded, the same held-out validation
split; other schedule settings, and the settings a resume takes as given, are said, not refused.
(The teacher is compared by its weights when the checkpoint loads: ``trainer.teacher_record``.)
Each error names ``resume_from_checkpoint`` and the fix, often an earlier checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..arguments import SWITCH_KEYS, recipe_defaults, setting_acts
from ..augmentation import AugmentationArguments
from ..errors import ModelError, RecipeError
from ..modeling.assembly import active_specs, run_loss_specs
from ..recipe_specs import checked_pairs
from ..registry import LOSSES
from ..trainer.checkpoint_folders import checkpoint_step, written_whole
from ..trainer.checkpointing import holds_training_state
from ..trainer.loss_record import read_loss_record, say_earlier_defaults
from ..trainer.resume_match import check_resume_batch, check_resume_rate
from ..run_record import RECIPE_RECORD, RESUMED_HEADER, recorded_header_number
from .records import record_folder, recorded_recipe

logger = logging.getLogger("hf_rcka")

def check_checkpoint(folder: str) -> None:
    """A checkpoint to resume from must have readable weights and trainer state.

    A run killed while saving leaves a truncated ``model.safetensors``; loading it fails deep in
    safetensors with no hint that an earlier checkpoint would do. Reading the headers is cheap.
    """
    from safetensors import safe_open

    weights = sorted(Path(folder).glob("*.safetensors"))
    if not weights:
        raise ModelError(f"resume_from_checkpoint: {folder!r} holds no .safetensors weights: {_earlier(folder)}")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelError(f"resume_from_checkpoint: {str(path)!r} is corrupt or incomplete ({err}): {_earlier(folder)}") from None
    inner = _checkpoints_in(Path(folder))
    if not inner and not holds_training_state(folder) and checkpoint_step(Path(folder).name) is not None \
            and not written_whole(folder):  # trainer_state.json, written last (save_only_model too)
        # a save cut short (a full disk, a kill) writes the weights first: resume_from_checkpoint:
        # true picks this last folder again, so the fix is the one before it
        raise ModelError(f"resume_from_checkpoint: {folder!r} is incomplete (it holds weights but no optimizer and "
                         f"scheduler state, as a save cut short leaves it): {_earlier(folder)}")
    if inner or not holds_training_state(folder):
        hint = (f"give one of its checkpoints (--resume_from_checkpoint {Path(folder) / inner[-1]})" if inner
                else "give a checkpoint-N folder of the run")
        raise ModelError(f"resume_from_checkpoint: {folder!r} is not a checkpoint (it holds no optimizer and "
                         f"scheduler state): {hint}, or --resume_from_checkpoint true for the last one in output_dir")
    state = Path(folder) / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"resume_from_checkpoint: {str(state)!r} is missing or unreadable ({err}): {_earlier(folder)}") from None
    _check_torch_files(folder)


def _check_torch_files(folder: str) -> None:
    """The optimizer, scheduler and RNG files are whole: a truncated one failed after the models had
    loaded, with a ``PytorchStreamReader`` traceback. ``torch.save`` writes a zip archive whose
    directory sits at its end, so reading that directory finds a cut file without reading the data."""
    import zipfile

    for path in sorted(p for pattern in ("*.pt", "*.pth") for p in Path(folder).glob(pattern)):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (OSError, zipfile.BadZipFile) as err:
            raise ModelError(f"resume_from_checkpoint: {str(path)!r} is corrupt or incomplete ({err}): "
                             f"{_earlier(folder)}") from None


def check_resume_recipe(folder: str, model_args: Any, data_args: Any, args: Any) -> None:
    """A checkpoint resumes the run its folder recorded: the same student (its Hub, timm or
    config id, and whether it started from scratch), the same losses (a loss's weight may
    change), loss options, feature pairs, teacher label mapping, dataset and label column, image size, config
    overrides, training subset, seeds and repeats. Any other change went on training a run whose record and card then named only the
    new settings, as if they had trained it from the start (its held-out split is checked once the
    data has loaded: ``check_resume_split``). Folders may move (a run resumed on another
    machine): a dataset or teacher on disk is not compared by path here (a dataset's configuration
    is, between two folders or two Hub ids: a moved folder keeps its configurations), and the
    teacher is compared by its weights when the checkpoint loads (``trainer.teacher_record``).
    """
    recorded = recorded_recipe(folder)
    if not recorded:
        return  # no record, or one this version cannot read: the loss state's own check stays
    # the checkpoint's own loss record, where it has one: a resume of it rewrites the run's record
    # with its own options (an earlier version's record, which left some out, with today's defaults)
    changes = _loss_changes(read_loss_record(folder) or recorded, model_args, args)
    current = {"model_name_or_path": model_args.model_name_or_path,
               "student_from_scratch": model_args.student_from_scratch,
               "teacher_model_name_or_path": model_args.teacher_model_name_or_path,
               "teacher_config_overrides": getattr(model_args, "teacher_config_overrides", None),
               "teacher_label_mapping": getattr(model_args, "teacher_label_mapping", None),
               "feature_pairs": getattr(args, "feature_pairs", None), "image_size": model_args.image_size,
               "student_config_overrides": model_args.student_config_overrides,
               "dataset_name": data_args.dataset_name, "dataset_config_name": data_args.dataset_config_name,
               "label_column_name": data_args.label_column_name,
               # the order of the epoch being resumed is drawn from them: another one skips and repeats images
               "seed": args.seed, "data_seed": args.data_seed, "aug_repeats": getattr(data_args, "aug_repeats", 0),
               "max_train_samples": data_args.max_train_samples}
    unset = recipe_defaults()  # what the recorded recipe ran with where it leaves a setting out
    for key, now in current.items():
        before = recorded.get(key, unset.get(key))
        if key in ("model_name_or_path", "teacher_model_name_or_path", "dataset_name") and (
                _may_have_moved(before, now) or before is None and key == "model_name_or_path"):
            continue  # a folder may have moved (the student's weights are compared as the checkpoint loads)
        if key == "dataset_config_name":
            if _on_disk(recorded.get("dataset_name")) != _on_disk(data_args.dataset_name):
                continue  # a Hub dataset against a folder (a copy saved to disk, which has no configurations)
            if not recorded.get("dataset_name") and not data_args.dataset_name:
                continue  # image folders (train_dir): a recorded configuration was ignored, and is now refused
            before, now = before or "default", now or "default"  # datasets' name for an unnamed configuration
        if key == "feature_pairs":
            before, now = checked_pairs(before), checked_pairs(now)
        if key == "teacher_label_mapping":  # a recipe that leaves it out maps by name
            before, now = before or "by_name", now or "by_name"
        if key == "image_size" and (before is None or now is None):
            continue  # unset: the processor's own size, which a spelt-out one may equal
        if (before or None) != (now or None):
            changes.append(f"{key} {before!r} -> {now!r}")
    if changes:
        raise RecipeError(f"resume_from_checkpoint: {folder!r} continues a run recorded with other settings "
                          f"({'; '.join(changes)}): a resumed run continues the same training. Resume with its "
                          "recipe (its distill_config.yaml), or start a new run from its weights (model_name_or_path) "
                          "in a new output_dir")


def _may_have_moved(before: Any, now: Any) -> bool:
    """Whether a model or dataset source is a folder on disk on either side (``builtin:`` data is
    named, not placed): a path may change while the folder stays the same."""
    return _on_disk(before) or _on_disk(now)


def _on_disk(value: Any) -> bool:
    return (isinstance(value, str) and not value.startswith(("builtin:", "config:"))
            and (os.path.isabs(os.path.expanduser(value)) or os.path.isdir(os.path.expanduser(value))))


def _loss_changes(recorded: dict[str, Any], model_args: Any, args: Any) -> list[str]:
    """The losses (by name) and their options (but the weight) that differ from the record's."""
    from ..recipe_specs import loss_changes

    specs = _loss_specs(recorded, model_args, args)
    if specs is None:
        return []
    return loss_changes(*specs, recorded.get("label_smoothing_factor"), getattr(args, "label_smoothing_factor", None))


def _loss_specs(recorded: dict[str, Any], model_args: Any, args: Any) -> tuple[list[dict], list[dict]] | None:
    """The record's active loss specs and this run's, in full form; None for a record without
    losses, or with one this version does not know."""
    from ..recipe_specs import loss_spec

    specs = [loss_spec(spec) for spec in recorded.get("losses") or []]
    if not specs or not all(isinstance(spec, dict) and spec.get("name") in LOSSES for spec in specs):
        return None
    return active_specs(specs), active_specs(run_loss_specs(args, bool(model_args.teacher_model_name_or_path)))


def warn_earlier_defaults(folder: str, model_args: Any, args: Any) -> None:
    """Say the loss options the recorded recipe of ``folder``'s run leaves out whose default has
    changed since (``earlier_defaults``), before anything loads; a checkpoint with a loss record of
    its own says them when it loads instead (``loss_record``), once."""
    from ..recipe_specs import earlier_defaults

    specs = _loss_specs(recorded_recipe(folder) or {}, model_args, args)
    if specs is not None and read_loss_record(folder) is None:
        say_earlier_defaults(folder, earlier_defaults(*specs))


# The settings the learning-rate schedule's shape is computed from. Trainer rebuilds the schedule
# from the resumed run's values, so changing one reshapes the curve from the resumed step on
# (checkpointing.ResumedRate sets that step's rate too). (The
# rate itself is not among them: see check_resume_rate.)
SCHEDULE_KEYS = ("num_train_epochs", "max_steps", "warmup_steps", "lr_scheduler_type", "lr_scheduler_kwargs")


def warn_resume_schedule(folder: str, args: Any) -> list[str]:
    """Say when a resumed run changes how its learning-rate schedule is shaped (more epochs to
    extend a run is common, and allowed): its first steps followed one schedule and the rest follow
    another, which neither the recorded recipe nor the card would otherwise show.

    Returns:
        The changed settings, as ``key before -> now``.
    """
    changed = _recorded_changes(folder, SCHEDULE_KEYS, args)
    if changed:
        logger.warning("resume_from_checkpoint: %s was trained with other schedule settings (%s): the learning rate "
                       "follows a schedule recomputed from these values from its step on, so the run's first steps "
                       "followed another one", folder, "; ".join(changed))
    return changed


# Settings a resumed run takes as given, which neither the checkpoint brings back (the optimizer's
# own settings return with its state) nor another check compares (the rate, batch, seed, split,
# repeats and losses are checked above): the images' augmentation and columns, the clipping, the
# weight average. A change is allowed, and said: the record and the card then name only the new
# value, and a recipe that leaves one out takes the running version's default, which may differ.
RESUMED_AS_GIVEN = (
    *(f.name for f in dataclasses.fields(AugmentationArguments) if f.name != "aug_repeats"),
    "image_column_name", "max_grad_norm", "model_ema", "model_ema_decay", "model_ema_warmup", "model_ema_export",
)  # (another label column trains other targets: check_resume_recipe refuses it)


def warn_resume_settings(folder: str, *arguments: Any) -> list[str]:
    """Say the ``RESUMED_AS_GIVEN`` settings a resumed run changes, from the run's record (a
    setting it leaves out, recorded before such defaults were written, is taken at its default).

    Returns:
        The changed settings, as ``key before -> now``.
    """
    changed = _recorded_changes(folder, RESUMED_AS_GIVEN, *arguments)
    if changed:
        logger.warning("resume_from_checkpoint: %s was trained with other settings (%s): its steps from here on train "
                       "with these, and its record and card name only them. To go on as it trained, resume with the "
                       "recipe it recorded, %s", folder, "; ".join(changed),
                       os.path.join(record_folder(folder), RECIPE_RECORD))
    return changed


def _recorded_changes(folder: str, keys: tuple[str, ...], *arguments: Any) -> list[str]:
    """``key before -> now`` for each of ``keys`` whose value in ``arguments`` (the dataclasses
    that hold them) differs from the one ``folder``'s run recorded, or its default where the record
    leaves it out; a setting that acts on neither side (``setting_acts``) is left out.

    The record is the checkpoint's copy of the one its launch wrote (``records.record_folder``).
    Nothing without a record, nor for a checkpoint of an earlier version (which holds no copy) that
    the run's record does not describe: one saved before the step the recorded launch resumed from
    was trained by an earlier launch, whose settings no record keeps (that resume rewrote it).
    """
    recorded = recorded_recipe(folder)
    step = checkpoint_step(os.path.basename(os.path.realpath(folder)))
    resumed = recorded_header_number(record_folder(folder), RESUMED_HEADER)
    if not recorded or step is not None and resumed is not None and step <= resumed:
        return []
    before, now = {}, {}
    for key in (*keys, *SWITCH_KEYS):
        holder = next((a for a in arguments if key in type(a).__dataclass_fields__), None)
        if holder is None:
            continue
        field = type(holder).__dataclass_fields__[key]
        before[key] = recorded[key] if key in recorded else (
            field.default_factory() if field.default is dataclasses.MISSING else field.default)
        now[key] = getattr(holder, key)
    return [f"{key} {_setting(before[key])} -> {_setting(now[key])}" for key in keys
            if not _same(before[key], now[key])
            and (setting_acts(key, before) or setting_acts(key, now))]


def _same(before: Any, now: Any) -> bool:
    """Equal as recorded (an enum's value is what the record holds, a tuple a list) or as numbers
    within rounding."""
    before, now = (list(v) if isinstance(v, tuple) else getattr(v, "value", v) for v in (before, now))
    if isinstance(before, (int, float)) and isinstance(now, (int, float)):
        return math.isclose(before, now)
    return before == now


def _setting(value: Any) -> str:
    value = getattr(value, "value", value)  # TrainingArguments hold enums: linear, not SchedulerType.LINEAR
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def check_resume_split(folder: str, data_args: Any, carved: bool) -> None:
    """A checkpoint resumes with the validation split its run held out, when the split is carved
    (``carved``: the data has no validation split of its own and no ``validation_dir``).

    Another ``split_seed`` or ``train_val_split`` carves another validation set, mostly of images
    the checkpoint has trained on: the resumed run evaluated on them and exited 0.
    """
    from .teacher_data import split_change

    changed = split_change(folder, data_args) if carved else None
    if changed:
        raise RecipeError(f"resume_from_checkpoint: {folder!r} was trained holding out {changed}: the evaluation "
                          "would take images it trained on. Resume with the split it was saved with, or train into "
                          "a new output_dir")


def _checkpoints_in(folder: Path) -> list[str]:
    """Names of the ``checkpoint-N`` folders in ``folder``, by step."""
    names = (p.name for p in folder.glob("checkpoint-*") if p.is_dir())
    return sorted(names, key=lambda n: -1 if checkpoint_step(n) is None else checkpoint_step(n))


def _earlier(folder: str) -> str:
    """The fix for a broken checkpoint: the latest one before it, if any (not merely another one)."""
    parent, step = Path(folder).absolute().parent, checkpoint_step(Path(folder).name)
    earlier = [name for name in _checkpoints_in(parent)
               if step is not None and checkpoint_step(name) is not None and checkpoint_step(name) < step]
    if earlier:
        return (f"delete {folder!r}, or resume from an earlier one (--resume_from_checkpoint {parent / earlier[-1]} "
                "--overwrite_output_dir true, which sets the later checkpoints aside)")
    # a plain rerun into the folder that holds it is refused too: the way on is said in full
    return (f"start again without resume_from_checkpoint, with --overwrite_output_dir true where output_dir holds "
            f"{folder!r} (it is set aside), or delete it")


__all__ = [
    "SCHEDULE_KEYS", "check_checkpoint", "check_resume_batch", "check_resume_rate", "check_resume_recipe",
    "check_resume_split", "warn_resume_schedule", "warn_resume_settings",
]
