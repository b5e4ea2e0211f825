"""Trainer's checkpoint folders by name and completeness: which step a ``checkpoint-<N>`` folder
holds, whether the loop finished writing it, which one a resume takes.

Kept apart from the saving (``checkpointing``) on purpose: the command line's checks of an output
folder and its signal handling read folders before any model loads, and importing this module
loads neither ``transformers.Trainer`` nor ``datasets`` nor ``timm`` (about half of the start-up
a recipe's mistake is said after).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

# transformers.trainer's name for the state a checkpoint writes last; that module imports the whole
# Trainer, so the name is written here (tests/test_interrupt.py checks the two agree).
TRAINER_STATE_NAME = "trainer_state.json"


def checkpoint_folder(trainer: Trainer, trial: Any = None) -> str:
    """The folder ``Trainer._save_checkpoint`` writes at the current step, ``<run dir>/checkpoint-<step>``
    (``_get_output_dir`` is the Trainer's own choice of run dir: the output dir outside a
    hyperparameter search)."""
    return os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")


def checkpoint_step(folder: str) -> int | None:
    """The step of a ``checkpoint-<N>`` folder (Trainer's checkpoints), by its name or its path
    (with or without a trailing separator), else None.

    One parser for the trainer (the best checkpoint's step) and the command line (resume checks,
    which checkpoints a resume sets aside), so that they agree on which folders are checkpoints.
    """
    name = os.path.basename(os.path.normpath(folder)) if folder else ""
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)
    return int(match.group(1)) if match else None


def written_whole(checkpoint: str | os.PathLike) -> bool:
    """Whether the loop finished writing a checkpoint: its ``trainer_state.json`` comes last, so a
    save a kill or a full disk cut short has none, or one cut short itself (transformers writes it
    in place: a full disk left it empty, and every resume of the folder failed on it)."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as state:
            return isinstance(json.load(state), dict)
    except (OSError, ValueError):
        return False


def last_checkpoint(output_dir: str) -> str | None:
    """The folder's last checkpoint the loop wrote whole (``written_whole``), if any."""
    whole = [path for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
             if checkpoint_step(path.name) is not None and written_whole(path)]
    return str(max(whole, key=lambda path: checkpoint_step(path.name))) if whole else None


def resumable_checkpoint(output_dir: str) -> str | None:
    """What ``resume_from_checkpoint: true`` resumes: ``last_checkpoint``, saying which later ones it
    passes over. Trainer's own pick, the highest-numbered folder, was refused (or failed on its
    missing state) after the models had loaded, so a requeued job failed at every restart."""
    whole = last_checkpoint(output_dir)
    later = [path.name for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
             if (step := checkpoint_step(path.name)) is not None and path.is_dir()
             and (whole is None or step > checkpoint_step(whole))]
    if whole is not None and later:
        logger.warning("resume_from_checkpoint: true: resuming from %s, the last checkpoint written whole (%s in %s: "
                       "cut short while saving, without a whole trainer_state.json, which is written last)", whole,
                       ", ".join(sorted(later, key=checkpoint_step)), output_dir)
    return whole
