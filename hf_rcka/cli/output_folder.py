"""The run's output folder: refused when it holds another run, and that run set aside when replaced.

transformers' Trainer writes into ``output_dir`` and deletes nothing. A training run that replaced
another one there (``overwrite_output_dir: true``) therefore lived among the old run's files:
its higher-numbered checkpoints, which ``resume_from_checkpoint: true`` then resumed (the old
run's weights, optimizer and schedule); its results, into which ``save_metrics`` merges (an
EMA's numbers in a run without one, another model's evaluation in a run with ``do_eval:
false``); its CKA picture in the new card; its loss state in checkpoint folders written again.
Deleting them first would lose a user's work if the new run then failed, so a fresh training run
moves the previous run's files (``RUN_OUTPUTS``; anything else is the user's and stays) into
``_replaced/`` inside the folder: out of the new run's way, still on disk, and left out of a Hub
upload (Trainer's ``push_to_hub`` skips names that start with ``_``). One level is kept: the run
set aside there before is deleted when a newer one takes its place.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..arguments import DistillationTrainingArguments
from ..data.bad_images import LEDGER_NAME
from ..errors import RecipeError
from .records import CONFIG_NAME, WORKING_DIR_NAME

logger = logging.getLogger(__name__)

RUN_FILES = ("model.safetensors", "config.json", "pytorch_model.bin")
REPLACED = "_replaced"
# What runs leave in their output_dir: Trainer's model, state and results files, its TensorBoard
# logs, checkpoints, hf_rcka's records and card, and scripts/cka_report.py's picture.
RUN_OUTPUTS = (
    "checkpoint-*", "_eval-*", "eval-*", "runs", "model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
    "config.json", "preprocessor_config.json", "training_args.bin", "trainer_state.json", "all_results.json",
    "train_results.json", "eval_results.json", "README.md", CONFIG_NAME, WORKING_DIR_NAME,
    LEDGER_NAME, "skipped_images.tsv", "cka.png", "cka.md",  # skipped_images.tsv: the ledger's older name
)


def check_output_dir(args: DistillationTrainingArguments, resume: str | None) -> None:
    """Refuse to overwrite a finished model or checkpoints unless asked to."""
    if resume or args.overwrite_output_dir or not args.do_train:
        return
    if holds_run(args.output_dir):
        raise RecipeError(
            f"output_dir {args.output_dir!r} already holds a model or checkpoints: pass --resume_from_checkpoint true "
            f"to continue, --overwrite_output_dir true to replace it, or choose another output_dir"
        )


def holds_run(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a run's model or checkpoints (not just a failed attempt's records)."""
    out = Path(output_dir)
    return out.is_dir() and (any((out / name).exists() for name in RUN_FILES) or any(out.glob("checkpoint-*")))


def set_aside_previous_run(output_dir: str, keep: Iterable[str | None] = ()) -> str | None:
    """Move a previous run's files in ``output_dir`` into ``output_dir/_replaced/``; returns that folder, or None.

    Called only for a folder that :func:`holds_run` (with ``overwrite_output_dir``): the leftovers of
    an attempt that failed before its first checkpoint must not push a real run out of
    ``_replaced/``, and an evaluation-only record is no run to replace.

    Args:
        output_dir: the folder a fresh training run is about to write.
        keep: paths this run reads that may lie inside it (a smoke test's generated images, an
            image folder), which stay where they are.
    """
    out = Path(output_dir)
    if not out.is_dir():
        return None
    kept = [Path(p).resolve() for p in keep if p]
    entries = [e for e in out.iterdir() if any(fnmatch.fnmatchcase(e.name, p) for p in RUN_OUTPUTS)
               and not _holds_any(e.resolve(), kept)]
    if not entries:
        return None
    target = out / REPLACED
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for entry in entries:
        os.replace(entry, target / entry.name)
    logger.warning("output_dir: this run replaces the one in %s; its files were moved to %s", out, target)
    return str(target)


def _holds_any(entry: Path, paths: list[Path]) -> bool:
    return any(path == entry or entry in path.parents for path in paths)
