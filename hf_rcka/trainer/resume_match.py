"""What a checkpoint shares with the run that resumes it: the global batch, the learning rate, the
number of optimizer steps an epoch takes, and the optimizer's own settings.

Trainer restores the step, the optimizer and the schedule from a checkpoint and goes on with
whatever the resuming run's arguments say about the rest. Each of these, changed, went on without
an error: a run at half the batch fast-forwarded half the epochs it had trained; a new rate or
weight decay was recorded in the recipe and never applied (the checkpoint's optimizer holds its
own); an epoch of another length (a short last batch dropped in one process and padded in two,
another ``max_train_samples``) skipped or repeated images and reshaped the schedule. The command
line checks the first two before anything loads; the trainer checks all four as the checkpoint
loads, so a resume through the Python API is held to the same.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..arguments import describe_batch, global_batch_size
from ..errors import RecipeError

logger = logging.getLogger(__name__)

BATCH_RECORD_NAME = "global_batch.json"  # the checkpoint's global batch, processes, epoch length, starting rates
# param_group entries that are not the optimizer's mathematics: its parameters, the rates the
# schedule owns (check_restored_rates), and how torch runs the update
_NOT_SETTINGS = frozenset({"params", "lr", "initial_lr", "foreach", "fused", "capturable", "differentiable",
                           "decoupled_weight_decay"})


def check_resume_batch(folder: str, args: Any) -> None:
    """A checkpoint resumes at the global batch it was trained with.

    Its step count, learning-rate schedule and epoch position are in steps of that batch: resumed
    in 1 process instead of 2 (the printed command once dropped the launcher's settings), a run
    went on at half the batch, fast-forwarded half the epochs it had trained, and exited 0.
    """
    recorded = _batch_record(folder)  # None: a checkpoint of an earlier version, nothing to compare
    if recorded is not None and recorded.get("global_batch") != global_batch_size(args):
        raise RecipeError(
            f"resume_from_checkpoint: {folder!r} was trained with a global batch of {recorded.get('global_batch')} "
            f"({_processes(recorded.get('processes'))}); this launch gives {describe_batch(args)}. Launch it as it was "
            "(the same accelerate config or torchrun --nproc_per_node), with the same batch settings, or set "
            "per_device_train_batch_size and gradient_accumulation_steps so that this launch's processes make "
            f"{recorded.get('global_batch')} images a step"
        )


def forward_batch(args: Any, per_device: int) -> int:
    """Images in one process's forward (``per_device``: Trainer's batch per device, which
    ``split_batches`` splits over the processes): what batch normalisation and the relational
    losses that do not gather see at once."""
    processes = max(1, args.world_size)
    return per_device // processes if args.accelerator_config.split_batches and processes > 1 else per_device


def warn_other_split(folder: str, args: Any, per_device: int) -> None:
    """Say a resume at the checkpoint's global batch that splits it otherwise (2 processes x 32
    images resumed as 1 x 64, or another accumulation). Allowed, as its steps, schedule and epochs
    are the checkpoint's; but batch normalisation's statistics and the batch-relational losses that
    do not gather see other batches from then on, so the run goes on otherwise than it would have
    uninterrupted, with ``no_aug`` too (resumed so, it went on unsaid, and its record and card
    described the whole run as the resume's split)."""
    recorded = _batch_record(folder)
    if recorded is None:
        return
    processes, forward = max(1, args.world_size), forward_batch(args, per_device)
    then = (recorded.get("processes"), recorded.get("forward_batch", forward))  # before it was recorded: processes
    if then != (processes, forward):  # the global batch is the same: check_resume_batch
        logger.warning(
            "resume_from_checkpoint: %s was trained as %s x %s images a forward; this launch runs %s x %s (the same "
            "global batch, split otherwise): batch normalisation and the relational losses that do not gather see "
            "other batches from here on, so the run goes on otherwise than it would have uninterrupted. Launch it as it "
            "was to continue it exactly", folder, _processes(then[0]), then[1], _processes(processes), forward)


def check_resume_rate(folder: str, args: Any) -> None:
    """A checkpoint resumes at the learning rate it was trained with.

    Trainer restores the optimizer's and the schedule's rates from the checkpoint, so another
    ``learning_rate`` (or ``lr_base``) was not applied, while the recorded recipe and the card
    named it (resumed at 0.1, a run went on at its 0.01).

    Raises:
        RecipeError: naming both rates and the ways on.
    """
    rates = _checkpoint_rates(folder)
    if rates and not any(math.isclose(rate, args.learning_rate, rel_tol=1e-6) for rate in rates):
        raise _other_rate(folder, max(rates), args.learning_rate)


def check_restored_rates(folder: str, own_rates: list[float]) -> None:
    """The checkpoint's schedule starts from this run's rates (``own_rates``: each parameter group's
    starting rate, as this run's optimizer and schedule were built): ``check_resume_rate`` for a
    trainer, whose optimizer may be the caller's (its own rates, not ``learning_rate``)."""
    rates = _checkpoint_rates(folder)
    if len(rates) == len(own_rates) and not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(rates, own_rates)):
        raise _other_rate(folder, max(rates), max(own_rates))


def _checkpoint_rates(folder: str) -> list[float]:
    """The rates the checkpoint's schedule started from: its ``base_lrs`` or, for a schedule that
    keeps none (``reduce_lr_on_plateau``), the starting rates its batch record holds (none in a
    checkpoint of an earlier version: nothing to compare)."""
    path = Path(folder) / "scheduler.pt"
    rates = (torch.load(path, map_location="cpu", weights_only=True).get("base_lrs") or []) if path.is_file() else []
    return list(rates or (_batch_record(folder) or {}).get("starting_rates") or [])


def _other_rate(folder: str, trained: float, now: float) -> RecipeError:
    return RecipeError(
        f"resume_from_checkpoint: {folder!r} was trained at a learning rate of {trained:g}, and this run sets "
        f"{now:g}: a resumed run keeps the checkpoint's optimizer and schedule, which hold its rate, so the new one "
        "would not be applied. Resume with its learning_rate (or lr_base), or start a new run from its weights "
        "(model_name_or_path) in a new output_dir")


def check_epoch_steps(folder: str, epoch_steps: int | None) -> None:
    """A checkpoint resumes with as many optimizer steps per epoch as it was trained with
    (``epoch_steps``: this run's; None for data without a length).

    Raises:
        RecipeError: naming both, and what changes an epoch's length.
    """
    recorded = _recorded_otherwise(folder, "epoch_steps", epoch_steps)
    if recorded is None:
        return
    raise RecipeError(
        f"resume_from_checkpoint: {folder!r} was trained with {recorded} optimizer steps per epoch, and this run "
        f"plans {epoch_steps} (another number of processes or batch split, another training set or "
        "max_train_samples, a short last batch dropped on one side and padded on the other): its epochs would "
        "skip or repeat images and its schedule would change shape. Resume as it was launched, on the same data")


def stream_readers(dataset: Any, args: Any) -> int:
    """How many loader workers read a stream's shards side by side: the DataLoader takes their
    batches in turn, so the stream's order (and which batches a resume skips) follows this count.
    A ``datasets`` stream reads as many shards at once as it has workers, up to its ``num_shards``;
    one without shards (a torch ``IterableDataset``) is counted by its workers."""
    workers = max(1, int(args.dataloader_num_workers or 0))
    shards = getattr(dataset, "num_shards", None)
    return min(workers, shards) if isinstance(shards, int) and shards > 0 else workers


def check_stream_readers(folder: str, readers: int | None) -> None:
    """A checkpoint of a stream resumes with as many loader workers reading its shards as it was
    trained with (``readers``: this run's; None for data with a length). Trainer skips the batches
    the run trained, counted in the new order: a 2-shard stream trained with 0 workers and resumed
    with 2 trained one batch twice and never another, and said it resumed where it stopped.

    Raises:
        RecipeError: naming both counts and the setting to give.
    """
    recorded = _recorded_otherwise(folder, "stream_readers", readers)
    if recorded is None:
        return
    raise RecipeError(
        f"resume_from_checkpoint: {folder!r} read its training stream {recorded} shard(s) at a time, and this run "
        f"reads it {readers} at a time (dataloader_num_workers, up to the stream's num_shards): the batches come in "
        "another order, so skipping those it trained would repeat some and leave out others. Resume with the "
        "dataloader_num_workers it was trained with")


def optimizer_settings(optimizer: Any, keys: Iterable[str]) -> list[dict[str, Any]]:
    """Each parameter group's values of ``keys``: the settings the run built its optimizer with
    (weight decay, betas, momentum...), not the state some optimizers keep in their groups
    (schedule-free's step count and weight sums) or the rates the schedule owns."""
    keys = set(keys) - _NOT_SETTINGS
    return [{k: v for k, v in group.items() if k in keys} for group in optimizer.param_groups]


def check_optimizer_settings(folder: str, own: list[dict[str, Any]], restored: list[dict[str, Any]]) -> None:
    """The optimizer settings the checkpoint restored (``restored``) are this run's (``own``).

    Raises:
        RecipeError: naming each setting that the restore replaced.
    """
    changed = sorted({f"{key} {group_then[key]!r} (this run: {group_now.get(key)!r})"
                      for group_now, group_then in zip(own, restored) for key in group_then
                      if key in group_now and not _same(group_now[key], group_then[key])})
    if changed:
        raise RecipeError(
            f"resume_from_checkpoint: {folder!r} restores its optimizer with {'; '.join(changed)}: a resumed run "
            "keeps the checkpoint's optimizer settings, so the new ones would not be applied while the recipe "
            "records them. Resume with the checkpoint's settings, or start a new run from its weights "
            "(model_name_or_path) in a new output_dir")


def _same(now: Any, then: Any) -> bool:
    if isinstance(now, (tuple, list)) and isinstance(then, (tuple, list)):
        return len(now) == len(then) and all(_same(a, b) for a, b in zip(now, then))
    if isinstance(now, float) or isinstance(then, float):
        return isinstance(now, (int, float)) and isinstance(then, (int, float)) and math.isclose(now, then, rel_tol=1e-6)
    return now == then


def _recorded_otherwise(folder: str, key: str, now: Any) -> Any:
    """The checkpoint's recorded ``key`` where it and this run's ``now`` are both known and differ,
    else None (a checkpoint of a version that recorded none, or data that has no such count)."""
    recorded = (_batch_record(folder) or {}).get(key)
    return recorded if recorded is not None and now is not None and recorded != now else None


def _batch_record(folder: str) -> dict[str, Any] | None:
    """The checkpoint's ``BATCH_RECORD_NAME``; None for a checkpoint of a version that wrote none.

    Raises:
        RecipeError: the file is there but holds no record (cut short, or edited).
    """
    path = Path(folder) / BATCH_RECORD_NAME
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        recorded = err
    if not isinstance(recorded, dict):
        raise RecipeError(f"resume_from_checkpoint: {str(path)!r} holds no record of the checkpoint's batch ({recorded}): "
                          "the checkpoint was cut short or edited; resume from another checkpoint")
    return recorded


def _processes(count: Any) -> str:
    return f"{count} process" + ("" if count == 1 else "es")
