"""What data-parallel ranks share: gathered rows, agreed decisions, and the process group's end.

* ``gather_rows``: differentiable gathering for the batch-relational losses. RCKA and feature CKA
  compare B x B sample relations, so under DDP each rank only sees its own per-device batch.
  Gathering every rank's rows (with gradients flowing back to the local rows) makes the relation
  Grams span the global batch. Off by default: it costs one all_gather per term.
* ``any_rank`` and ``from_rank0``: one decision on every rank (stop, save, a folder's name), since
  ranks that disagree about a collective hang.
* ``close_process_group``: the process group torn down before exit, so a finished run exits 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank along dim 0; gradients reach the local rows.

    Ranks may hold different batch sizes (the last batch of an epoch): rows are padded to the
    largest size for the collective and the padding is dropped afterwards.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    local = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    sizes = [int(s.item()) for s in sizes]
    largest = max(sizes)
    if x.shape[0] < largest:
        pad = x.new_zeros((largest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    parts = all_gather(x.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one.

    Lets all ranks take the same decision at the same step (stop, save): a rank that stopped
    alone would leave the others waiting forever in the next collective.
    """
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


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

    Left to interpreter shutdown, a gloo process group's threads can be destroyed while still
    joinable ("terminate called without an active exception"): a finished run's process then
    aborts (exit -6) and the launcher reports the whole run as failed.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
