"""BatchNorm under activation checkpointing: the recomputed forward leaves the running statistics alone.

A checkpointed block runs its forward twice per step: in the forward pass, and again inside the
backward to rebuild the activations it did not keep. The second is a training forward too, so each
BatchNorm in it updated its running mean and variance (and ``num_batches_tracked``) a second time
with the same batch: the momentum applied twice per step, and the exported model normalised with
other statistics than the same training without checkpointing (one epoch of a small CNN on the
digits: 55.6% top-1 against 66.3%, every weight equal). timm's ``train.py --grad-checkpointing``
does the same. In the recomputation the layer still normalises with the batch's statistics, as in
the first forward; the running values and the count stay as the first forward left them.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle


def keep_statistics_in_recomputation(module: torch.nn.Module) -> list[RemovableHandle]:
    """Hook every BatchNorm of ``module`` that tracks running statistics; returns the hooks."""
    handles = []
    for norm in module.modules():
        if isinstance(norm, _BatchNorm) and norm.track_running_stats:
            handles.append(norm.register_forward_pre_hook(_pause_update))
            handles.append(norm.register_forward_hook(_resume_update))
    return handles


def in_backward() -> bool:
    """Whether autograd's engine is running a backward on this thread (a checkpoint's recomputation
    runs inside it, reentrant or not; a forward pass never does)."""
    return torch._C._current_graph_task_id() != -1


def _pause_update(norm: _BatchNorm, args: tuple) -> None:
    if norm.training and in_backward():
        # The layer is called as in the first forward (a checkpoint checks that the same tensors are
        # saved), with a momentum of 0: running * 1 + batch * 0 is the running value, exactly.
        norm._paused_momentum = (norm.momentum,)
        norm.momentum = 0.0


def _resume_update(norm: _BatchNorm, args: tuple, output: torch.Tensor) -> None:
    paused = getattr(norm, "_paused_momentum", None)
    if paused is not None:
        norm.momentum = paused[0]
        del norm._paused_momentum
        if norm.num_batches_tracked is not None:
            norm.num_batches_tracked.sub_(1)  # counted again by the recomputed call
