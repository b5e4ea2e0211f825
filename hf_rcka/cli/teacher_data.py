"""A teacher trained by hf_rcka must not have trained on the images the student is evaluated on.

A teacher folder written by ``scripts/distill.py`` records its data settings in
``distill_config.yaml``. When the student's validation images are carved from the same data with
another ``train_val_split`` or ``split_seed`` (or the teacher trained on all of it), most of them
were the teacher's training images: the teacher's accuracy on them is inflated, distillation
passes their labels to the student, and the student's reported accuracy is too. Nothing fails;
the numbers are just wrong, so the run is refused once the data has loaded (which tells whether
the validation split is carved or the dataset's own), before the models load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arguments import DataArguments
from ..data.image_folders import images_shared_with
from ..errors import DataError
from .records import recorded_recipe

_SOURCE_KEYS = ("dataset_name", "dataset_config_name", "train_dir")
_CARVE_KEYS = ("train_val_split", "split_seed", "label_column_name")  # a carved split is stratified by the label


@dataclass(frozen=True)
class Roles:
    """How the messages name the trained folder and the run whose evaluation images it must not
    have trained on (``scripts/cka_report.py`` checks each compared model against its images)."""

    model: str = "teacher_model_name_or_path"  # then the folder
    short: str = "the teacher"
    evaluated: str = "the student"
    trained: str = "teacher training images"
    harm: str = "which inflates both accuracies"
    by_flags: bool = False  # the fix is given as --flags (a script), not recipe keys
    other_folder: str = "give the student a validation_dir the teacher did not train on"


TEACHER = Roles()


def check_teacher_data(teacher: str | None, data_args: DataArguments, *,
                       carved: bool, roles: Roles = TEACHER) -> None:
    """Raise a ``DataError`` if the teacher at ``teacher`` trained on the student's validation images.

    ``carved``: the student's validation split was held out of its training data (else it is the
    dataset's own, which no run trains on, or ``validation_dir``).
    """
    recorded = recorded_recipe(teacher) if teacher else None
    if recorded is None:
        return
    taught, run = _data_settings(recorded, data_args)
    if run["validation_dir"]:  # the student is evaluated on its own folder
        if taught["train_dir"] and _same_path(taught["train_dir"], run["validation_dir"]):
            raise DataError(f"{roles.model} {teacher!r} was trained on train_dir {taught['train_dir']!r}, "
                            f"{roles.evaluated}'s validation_dir: its evaluation would be on {roles.short}'s training images")
        shared = images_shared_with(taught["train_dir"], run["validation_dir"]) if taught["train_dir"] else None
        if shared:  # links into the training folder: the images are the same files
            raise DataError(f"{roles.model} {teacher!r} was trained on train_dir {taught['train_dir']!r}, whose images "
                            f"{roles.evaluated}'s validation_dir links to: {shared}")
        return
    if not carved or not _same_source(taught, run):
        return
    if taught["validation_dir"] or any(taught[k] != run[k] for k in _CARVE_KEYS):
        held_out = ("none of it (it had validation_dir)" if taught["validation_dir"] else _carve(taught))
        split, seed, label = taught["train_val_split"], taught["split_seed"], taught["label_column_name"]
        same = (f"pass --train_val_split {split} --split_seed {seed} --label_column_name {label}" if roles.by_flags
                else f"set train_val_split: {split}, split_seed: {seed} and label_column_name: {label}")
        fix = roles.other_folder if taught["validation_dir"] else f"{same} as {roles.short} did"
        raise DataError(
            f"{roles.model} {teacher!r} trained on this data holding out {held_out}, and {roles.evaluated} "
            f"holds out {_carve(run)}: most of "
            f"{roles.evaluated}'s validation images would be {roles.trained}, {roles.harm}. "
            f"{fix[0].upper()}{fix[1:]}"
        )


def held_out_by(model: str | None, data_args: DataArguments) -> dict[str, Any] | None:
    """``train_val_split`` and ``split_seed`` of the run that trained ``model`` on this very data
    with a carved validation split, or None.

    An evaluation-only run of data without a validation split evaluates all of it; for a model
    trained on that data, most of it is training images (a 98.5% model scored 99.5%), so the
    evaluation takes the split the run held out instead.
    """
    recorded = recorded_recipe(model) if model and os.path.isdir(model) else None
    if recorded is None:
        return None
    taught, run = _data_settings(recorded, data_args)
    if run["validation_dir"] or taught["validation_dir"] or not _same_source(taught, run):
        return None
    return {k: taught[k] for k in _CARVE_KEYS}


def split_change(run_folder: str, data_args: DataArguments) -> str | None:
    """How this run's carved held-out split differs from the one the run in ``run_folder`` (or
    around its checkpoint) trained with on the same data, or None. Only for a carved split: a
    ``validation_dir`` or the data's own validation split does not depend on these settings.

    Resuming with another ``split_seed`` or ``train_val_split`` carves another validation set,
    mostly of images the checkpoint has trained on: the resumed run evaluated on them and exited 0.
    """
    recorded = recorded_recipe(run_folder)
    if recorded is None:
        return None
    taught, run = _data_settings(recorded, data_args)
    if not _same_source(taught, run):
        return None  # other data: its classes are checked against the checkpoint's once it loads
    if taught["validation_dir"]:  # it evaluated on its own folder: all of this data was its training data
        return f"none of this data (it had validation_dir {taught['validation_dir']!r}; now carved)"
    changed = [k for k in _CARVE_KEYS if taught[k] != run[k]]
    return ", ".join(f"{k} {taught[k]!r} (now {run[k]!r})" for k in changed) or None


def _carve(settings: dict[str, Any]) -> str:
    """The settings that chose a carved split's images, in words."""
    return (f"train_val_split {settings['train_val_split']}, split_seed {settings['split_seed']}, stratified by "
            f"{settings['label_column_name']!r}")


def _data_settings(recorded: dict[str, Any], data_args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data settings the recorded run trained with (unset ones at their defaults) and this run's."""
    defaults = {f: DataArguments.__dataclass_fields__[f].default for f in (*_SOURCE_KEYS, *_CARVE_KEYS, "validation_dir")}
    return {k: recorded.get(k, defaults[k]) for k in defaults}, {k: getattr(data_args, k) for k in defaults}


def _same_source(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["train_dir"] or b["train_dir"]:
        return bool(a["train_dir"] and b["train_dir"]) and _same_path(a["train_dir"], b["train_dir"])
    return _same_dataset(a["dataset_name"], a["dataset_config_name"], b["dataset_name"], b["dataset_config_name"])


def _same_dataset(name: str | None, config: str | None, other: str | None, other_config: str | None) -> bool:
    """One dataset: the same id and configuration (none is datasets' ``default``); a local dataset
    folder however its path is spelled."""
    config, other_config = (None if c == "default" else c for c in (config, other_config))
    if config != other_config or not name or not other:
        return config == other_config and name == other
    if os.path.isdir(name) and os.path.isdir(other):
        return _same_path(name, other)
    return name == other


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
