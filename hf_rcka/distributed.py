"""What data-parallel ranks share: gathered rows, agreed decisions, and the process group's end.

* ``gather_rows``: differentiable gathering for the batch-relational losses. RCKA and feature CKA
  compare B x B sample relations, so under DDP each rank only sees its own per-device batch.
  Gathering every rank's rows (with gradients flowing back to the local rows) makes the relation
  Grams span the global batch. Off by default: it costs one all_gather per term.
* ``any_rank`` and ``from_rank0``: one decision on every rank (stop, save, a folder's name), since
  ranks that disagree about a collective hang.
* ``close_process_group``: the process group torn down before exit, so a finished run exits 0.
* ``launched_processes``: what the launcher started, read before (or without) a process group.
"""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist

if dist.is_available():
    # Imported now, before any process group exists: its functions take ``group=group.WORLD`` as a
    # default argument, evaluated on import. Imported after init_process_group (by a library, or by
    # gather_rows when it used them), they hold the default group for good: destroy_process_group
    # then neither waits for its collectives nor ends its gloo threads, which run on into
    # interpreter shutdown (see close_process_group).
    import torch.distributed.nn.functional


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launched_processes() -> tuple[int, int]:
    """The processes the launcher started, and how many of them run on each machine: torchrun's
    and accelerate launch's ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE``, known before any process group
    exists and also for a launch whose processes never form one (1 and 1 for a plain run)."""
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return launched, int(os.environ.get("LOCAL_WORLD_SIZE", launched) or launched)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank along dim 0; gradients reach the local rows.

    Ranks may hold different batch sizes (the last batch of an epoch): rows are padded to the
    largest size for the collective and the padding is dropped afterwards.
    """
    if world_size() == 1:
        return x
    sizes = _rows_per_rank(x.shape[0])
    largest = max(sizes)
    if x.shape[0] < largest:
        pad = x.new_zeros((largest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    parts = _GatheredRows.apply(x).split(largest)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)


class _GatheredRows(torch.autograd.Function):
    """Every rank's (equally many) rows, stacked in rank order, with a backward.

    Each rank computes the loss over the same gathered batch, so a rank's rows receive the sum of
    the gradients every rank's copy of them got: an all-reduce of the gathered gradient, then this
    rank's slice. (torch.distributed.nn.functional.all_gather does the same, but torch 2.14
    deprecates it: it warns on use, and a later torch may drop it.)
    """

    @staticmethod
    def forward(ctx: object, rows: torch.Tensor) -> torch.Tensor:
        count = rows.shape[0]
        gathered = rows.new_empty((world_size() * count, *rows.shape[1:]))
        # each rank's rows land in their slice of one tensor: no concatenation copies them again
        dist.all_gather([gathered[rank * count:(rank + 1) * count] for rank in range(world_size())], rows.contiguous())
        return gathered

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        # a copy: the gradient given may be another node's too, which must not see the sum
        summed = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(summed)
        return summed.chunk(world_size())[dist.get_rank()]


def _rows_per_rank(rows: int) -> list[int]:
    """Every rank's row count, exchanged between the hosts (see :func:`host_group`): counts read
    back from the accelerator stalled each gathering loss term's forward until the device caught up."""
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([rows], dtype=torch.long), group=host_group())
    return [int(count) for count in counts]


def any_rank(flag: bool, device: torch.device | str = "cpu", group: object = None) -> bool:
    """True on every rank when ``flag`` is true on at least one.

    Lets all ranks take the same decision at the same step (stop, save): a rank that stopped
    alone would leave the others waiting forever in the next collective. With ``group`` (see
    :func:`host_group`) the flag stays on the host.
    """
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device="cpu" if group is not None else device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item() > 0)


def _default_backend() -> str:
    return dist.get_backend()


_host_groups: list[tuple[object, object]] = []  # (default group, its gloo twin): a later setup gets its own


def host_group(timeout: timedelta | None = None) -> object:
    """A gloo group over every rank, for decisions taken on the host at every step (the stop signal).

    On an accelerator the default group's all_reduce needs a device tensor, and reading it back
    waits for every kernel queued before it: once a step, that drains the queue the next step's
    host work would overlap. A CPU tensor in a gloo group is exchanged between the hosts alone.
    Made on first use, which must come at the same point on every rank (``new_group`` is collective):
    ``DistillationTrainer`` makes it when it is built, with the run's ``ddp_timeout`` (``timeout``;
    a later call's is not used).
    """
    world = dist.group.WORLD
    if _default_backend() == "gloo":
        return world
    if not _host_groups or _host_groups[0][0] is not world:
        _host_groups[:] = [(world, dist.new_group(backend="gloo", timeout=timeout))]
    return _host_groups[0][1]


def from_rank0(value: object) -> object:
    """Rank 0's ``value`` on every rank (a picklable object), for decisions made from the clock or the disk.

    A folder named by the time, or a choice made by looking at files that rank 0 may already have
    moved, would otherwise differ between ranks (and ranks that disagree about a collective hang).
    """
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def close_process_group() -> None:
    """Tear the process group down before the interpreter exits.

    A gloo group's worker threads take the GIL when they finish a collective (a Python callback on
    its future, the last reference to a Python tensor or autograd node). One that does so once
    interpreter shutdown has begun is ended by Python through a forced unwind, which C++ turns into
    std::terminate ("terminate called without an active exception"): a finished run's process
    aborts (exit -6) and the launcher reports the whole run as failed. destroy_process_group waits
    for the group's collectives and ends its threads only when nothing else still refers to the
    group: hence the collection below, and the import of torch.distributed.nn.functional at the
    top of this module (imported later, its default arguments held the group).
    """
    _host_groups.clear()
    if not (dist.is_available() and dist.is_initialized()):
        return  # nothing to tear down; a full collection of a large heap costs a quarter second
    # The last collectives' objects (a differentiable all_gather's autograd nodes) can sit in reference
    # cycles that hold the group: collected at exit, after it was destroyed, they aborted a finished
    # 2-process run in 3-5 of 20 here (gathered SRD); 0 of 50 collected first.
    gc.collect()
    dist.destroy_process_group()
