"""Where a run writes its records, so that no run overwrites another's.

A training run owns its ``output_dir``: the model, ``distill_config.yaml``, ``all_results.json``,
the model card. An eval-only run (``do_train: false``), often pointed at a finished run's folder,
writes into its own ``_eval-<UTC time>`` sub-folder instead (``eval_config.yaml``,
``eval_results.json``), and never rewrites the card or the recorded training recipe. The leading
``_`` keeps the record local: the Hub upload leaves ``_*`` out, and an
evaluation of other data is no part of the published model.

A training run's recipe is written once training has begun (``RecipeRecord``); a model's earlier
results are taken out of ``output_dir`` with its card when it is replaced
(``output_folder.drop_stale_export``). Later runs read these records back (``recorded_recipe``): a teacher's or a resumed checkpoint's
data settings, with its relative paths read from the folder its run ran in.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..arguments import describe_batch
from ..errors import RecipeError
from ..file_writes import remove_empty, write_text
from ..run_record import (
    BATCH_HEADER, RECIPE_RECORD, RESUMED_HEADER, WORKING_DIR_NAME, anchored, recorded_working_dir,
)
from ..version import code_version
from ..trainer.checkpoint_folders import checkpoint_step
from ..trainer.resume_hint import launch_command
from .recipe import dump_recipe, load_recipe

EVAL_RECORD_PREFIX = "_eval-"
EVAL_CONFIG_NAME = "eval_config.yaml"
EVAL_RESULTS_NAME = "eval_results.json"


def eval_record_dir(output_dir: str) -> str:
    """A new ``output_dir/_eval-YYYYmmdd-HHMMSS[-k]`` folder, made here: two evaluations started in
    the same second each get their own (picked by name alone, both wrote into one, and the later
    record replaced the other's). ``drop_empty_record`` removes it if the run writes nothing."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    os.makedirs(output_dir, exist_ok=True)
    folder, k = os.path.join(output_dir, f"{EVAL_RECORD_PREFIX}{stamp}"), 1
    while True:
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            k += 1
            folder = os.path.join(output_dir, f"{EVAL_RECORD_PREFIX}{stamp}-{k}")


def drop_empty_record(folder: str, made: Sequence[Path] = ()) -> None:
    """Remove an evaluation-only run's folder that it left empty (it was refused or failed), and
    ``made``, the folders made for it (``file_writes.missing_folders``), that are empty then too."""
    remove_empty([Path(folder), *made])


def write_eval_record(folder: str, recipe: dict | None, metrics: dict) -> None:
    """The eval-only run's recipe and metrics, in its own folder."""
    os.makedirs(folder, exist_ok=True)
    if recipe is not None:
        dump_recipe(recipe, os.path.join(folder, EVAL_CONFIG_NAME))
    write_text(os.path.join(folder, EVAL_RESULTS_NAME), json.dumps(metrics, indent=2, sort_keys=True))


def write_working_dir(output_dir: str) -> None:
    """Record where this process runs, so that later checks read the recipe's relative paths as it did."""
    with open(os.path.join(output_dir, WORKING_DIR_NAME), "w", encoding="utf-8") as handle:
        json.dump({"working_dir": os.getcwd()}, handle)


def record_folder(folder: str) -> str:
    """The folder whose record describes ``folder``: itself, or the run folder around a
    ``checkpoint-N`` of it that holds no copy of its own (``run_record.copy_run_record``; an
    earlier version's checkpoints hold none), resolved: a link to a checkpoint reads the run that
    holds it (read beside the link, every check that compares a resume with its run was skipped)."""
    folder = os.path.realpath(folder)
    if not os.path.isfile(os.path.join(folder, RECIPE_RECORD)) and checkpoint_step(folder) is not None \
            and os.path.isfile(os.path.join(folder, "trainer_state.json")):
        return os.path.dirname(folder)
    return folder


def recorded_recipe(folder: str) -> dict[str, Any] | None:
    """The recipe a run recorded in ``folder``, or in the run folder around it (``record_folder``);
    None when there is none this version reads."""
    path = os.path.join(record_folder(folder), RECIPE_RECORD)
    if not os.path.isfile(path):
        return None
    try:
        recipe = load_recipe(path)
    except RecipeError:
        return None  # not a recipe this version can read: nothing to compare
    return anchored(recipe, _recorded_working_dir(os.path.dirname(path)))


def _recorded_working_dir(folder: str) -> str | None:
    """Where the run that recorded ``folder`` ran; for a checkpoint whose copy of the record keeps
    no working folder (Trainer uploads its folders: ``run_record.copy_run_record``), its run's."""
    own = recorded_working_dir(folder)
    if own is None and checkpoint_step(folder) is not None:
        return recorded_working_dir(os.path.dirname(folder))
    return own


class RecipeRecord(TrainerCallback):
    """Writes the run's recipe once training has begun: after a resumed checkpoint has loaded, so
    a resume that fails (other student, other losses) leaves the recorded recipe of the run that
    made the checkpoints; a fresh run records it before its first step, as before."""

    def __init__(self, recipe: dict, path: str) -> None:
        # the record trains the recipe again; resuming one of its checkpoints is no part of that
        self.recipe = {key: value for key, value in recipe.items() if key != "resume_from_checkpoint"}
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        # The launch is not a recipe value, and the same values under another number of processes
        # train with another global batch: the header says how to run them again as they ran
        # (state's batch: auto_find_batch_size may have lowered it; each attempt records anew. Else
        # it is a resumed checkpoint's, which may have trained at another per-device batch.)
        trained = state.train_batch_size if args.auto_find_batch_size else None
        launch = (f"{BATCH_HEADER}{describe_batch(args, trained)} per optimizer step.\n"
                  f"To train it again (into a new folder): "
                  f"{launch_command(self.path, '--output_dir', '<new folder>')}")
        if state.global_step > 0:  # the command trains from step 0 in one go, which a resumed run is not
            launch += (f"\n{RESUMED_HEADER}{state.global_step:,} from a checkpoint: that command gives this run's "
                       "numbers only with no_aug (augmentation draws otherwise after a resume) and if the "
                       "earlier launch had these settings and this split of the batch over processes (the "
                       "resume's log names those it changed; the earlier launch's checkpoints keep its record).")
        launch += (f"\nWritten by {code_version()}, with the augmentation, optimizer, schedule, seed and split "
                   "settings the recipe left out at their defaults.")
        dump_recipe(self.recipe, self.path, comment=launch)
        write_working_dir(os.path.dirname(self.path) or ".")
