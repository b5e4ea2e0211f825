"""BatchNorm under activation checkpointing: the recomputed forward leaves the running statistics alone.

A checkpointed block runs its forward twice per step: in the forward pass, and again inside the
backward to rebuild the activations it did not keep. The second is a training forward too, so each
BatchNorm in it updated its running mean and variance (and ``num_batches_tracked``) a second time
with the same batch: the momentum applied twice per step, and the exported model normalised with
other statistics than the same training without checkpointing (one epoch of a small CNN on the
digits: 55.6% top-1 against 66.3%, every weight equal). timm's ``train.py --grad-checkpointing``
does the same. In the recomputation the layer still normalises with the batch's statistics, as in
the first forward (with a momentum of 0, so that the call saves the same tensors, as a checkpoint
checks); the momentum and the count are put back when the backward ends, since a non-reentrant
checkpoint stops recomputing inside the call that rebuilds its last saved tensor, where a forward
hook would never run.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle


def keep_statistics_in_recomputation(module: torch.nn.Module) -> list[RemovableHandle]:
    """Hook every BatchNorm of ``module`` that tracks running statistics; returns the hooks."""
    return [norm.register_forward_pre_hook(_pause_update) for norm in module.modules()
            if isinstance(norm, _BatchNorm) and norm.track_running_stats
            and _pause_update not in norm._forward_pre_hooks.values()]  # a second hook counted each call twice


def _pause_update(norm: _BatchNorm, args: tuple) -> None:
    task = torch._C._current_graph_task_id()
    paused = norm.__dict__.get("_paused_momentum")
    if paused is not None and paused[1] != task:
        # a backward that raised (an out-of-memory error auto_find_batch_size retries) never ran its
        # callback: restore now, or the layer would stay at momentum 0
        _resume_update(norm)
    if not (norm.training and task != -1):
        return
    if "_paused_momentum" not in norm.__dict__:
        norm._paused_momentum = (norm.momentum, task)
        norm.momentum = 0.0
        # restored when this backward ends: a non-reentrant checkpoint stops its recomputation as soon
        # as the last saved tensor is rebuilt, possibly inside this very call, so no forward hook runs
        torch.autograd.Variable._execution_engine.queue_callback(functools.partial(_resume_update, norm))
    norm._recounted = norm.__dict__.get("_recounted", 0) + 1


def _resume_update(norm: _BatchNorm) -> None:
    paused = norm.__dict__.pop("_paused_momentum", None)
    if paused is None:  # restored already (by the next call, after a backward that raised)
        return
    norm.momentum = paused[0]
    recounted = norm.__dict__.pop("_recounted", 0)
    if norm.num_batches_tracked is not None:
        norm.num_batches_tracked.sub_(recounted)  # counted again by the recomputed calls
