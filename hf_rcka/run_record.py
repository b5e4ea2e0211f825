"""What a command-line run keeps in its folder about how it ran, read back by the runs and model
cards that compare themselves with it (a baseline, a teacher's own run, a resumed checkpoint).

A run records its resolved recipe (``RECIPE_RECORD``) and the working folder its relative paths
were read from (``WORKING_DIR_NAME``): read from another folder, ``validation_dir: data/val`` names
another folder's images, and a card comparing two runs would call other images the same.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
from collections.abc import Sequence
from typing import Any

import yaml

from .file_writes import write_text

RECIPE_RECORD = "distill_config.yaml"  # the command line's resolved recipe, next to the card
WORKING_DIR_NAME = "_working_dir.json"  # local only: the "_" keeps it out of Hub uploads
BATCH_HEADER = "Global batch: "  # how the record's header comment names the global batch
RESUMED_HEADER = "Resumed at step "  # how it names the step a resumed run started from
# The recipe keys whose relative paths name a folder of the working directory the run ran in
ANCHORED_KEYS = ("train_dir", "validation_dir", "dataset_name", "teacher_model_name_or_path", "model_name_or_path")


def recorded_working_dir(run_dir: str) -> str | None:
    """The working directory a run recorded, or None (runs before the record, or another tool's)."""
    try:
        with open(os.path.join(run_dir, WORKING_DIR_NAME), encoding="utf-8") as handle:
            return json.load(handle)["working_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_relative_path(value: Any) -> bool:
    """A recorded setting that names a path relative to the folder its run ran in."""
    return isinstance(value, str) and bool(value) and not os.path.isabs(os.path.expanduser(value))


def anchored(recipe: dict[str, Any], working_dir: str | None, keys: Sequence[str] = ANCHORED_KEYS) -> dict[str, Any]:
    """The recipe's relative data, teacher and student paths read from the folder its run ran in,
    not from this one's; one gone from there (a project moved or copied since) is read here, as the
    command line reads it again (``cli.recipe.recipe_as_recorded``): the checks that compare a run
    with its record (held-out images, splits) read what the run reads."""
    if working_dir is None:
        return recipe
    for key in keys:
        value = recipe.get(key)
        if is_relative_path(value):
            path = os.path.join(working_dir, value)
            if os.path.isdir(path):  # else gone from there, or a Hub id
                recipe[key] = path
    return recipe


def read_recorded_recipe(run_dir: str) -> dict[str, Any]:
    """The recipe a run recorded in ``run_dir``, its relative paths read where the run ran; empty
    when it recorded none (a run from Python).

    Raises:
        ValueError: the record is not a YAML mapping (edited, or cut short).
    """
    path = os.path.join(run_dir, RECIPE_RECORD)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            recipe = yaml.safe_load(handle) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path} is not a mapping of recipe keys")
    return anchored(recipe, recorded_working_dir(run_dir))


def recorded_header_number(run_dir: str, header: str) -> int | None:
    """The number the header comment of the run's record in ``run_dir`` gives after ``header``
    (``BATCH_HEADER``: the global batch; ``RESUMED_HEADER``: the step a resumed run started from,
    whose earlier checkpoints an earlier launch trained), or None (no record, no such line)."""
    try:
        with open(os.path.join(run_dir, RECIPE_RECORD), encoding="utf-8") as handle:
            comment = "".join(itertools.takewhile(lambda line: line.startswith("#"), handle))
    except (OSError, UnicodeDecodeError):
        return None
    found = re.search(rf"^# {re.escape(header)}([\d,]+) ", comment, re.MULTILINE)
    return int(found.group(1).replace(",", "")) if found else None


def copy_run_record(run_dir: str, checkpoint_dir: str, pushed: bool = False) -> None:
    """Keep the run's record, as it stands while a checkpoint is saved, in the checkpoint (whole or
    not at all): a resume from it is compared with the settings that trained it. Read from the run
    folder alone, a checkpoint that a later launch's record no longer describes (that launch
    resumed after it, and rewrote the record) was compared with nothing. ``pushed``: Trainer uploads
    the checkpoint folder whole, so the working folder (a local path) stays out of it, and is read
    from the run folder around it (``cli.records.recorded_recipe``)."""
    for name in (RECIPE_RECORD,) if pushed else (RECIPE_RECORD, WORKING_DIR_NAME):
        try:
            with open(os.path.join(run_dir, name), encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError):
            continue  # a run from Python records none
        if name == RECIPE_RECORD:
            text = _naming_the_copy(text, run_dir, checkpoint_dir)
        write_text(os.path.join(checkpoint_dir, name), text)


def _naming_the_copy(record: str, run_dir: str, checkpoint_dir: str) -> str:
    """The record with its header's command to train it again naming the checkpoint's copy: it
    named the run folder's record, which a later launch that resumes with other settings rewrites,
    so the command read in a checkpoint trained the later launch's recipe."""
    run_path, copy_path = (shlex.quote(os.path.join(folder, RECIPE_RECORD)) for folder in (run_dir, checkpoint_dir))
    header = "".join(itertools.takewhile(lambda line: line.startswith("#"), record.splitlines(keepends=True)))
    return header.replace(f" {run_path} ", f" {copy_path} ") + record[len(header):]
