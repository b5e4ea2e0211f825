"""Full (unsharded) state dicts into modules whose parameters FSDP2 may have sharded.

Under FSDP2 (``fully_shard``, what accelerate's FSDP plugin applies with ``fsdp_version: 2``) a
module's parameters are DTensors, each rank holding one shard. ``load_state_dict`` cannot copy a
full checkpoint tensor into a shard, so resuming (or ``load_best_model_at_end``) needs the tensors
cut into shards first. Saving is the other direction and is the Trainer's job: under FSDP it
gathers the full state dict (``accelerator.get_state_dict``) and hands it to ``_save``.

Every rank reads the checkpoint from disk itself, as the Trainer assumes for resuming (a shared or
identical filesystem); rank 0 does not broadcast, which also keeps channels_last tensors intact.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter or buffer of ``module`` is a DTensor (FSDP2-sharded)."""
    return any(isinstance(t, DTensor) for t in itertools.chain(module.parameters(), module.buffers()))


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy a full state dict into ``module`` strictly, sharding each tensor where FSDP2 sharded it.

    Args:
        module: a plain or FSDP2-sharded module.
        state: full tensors, keyed like ``module.state_dict()``.
        what: the module's name in the error (``"student"``, ``"adapters"``).

    Raises:
        KeyError: a key is missing or unexpected. torch's full-state-dict loader fills missing keys
            with the module's current values, which would resume silently from a partial
            checkpoint, so the keys are compared here first.
    """
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"checkpoint does not match the {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if not is_sharded(module):
        module.load_state_dict(state, strict=True)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, dict(state), options=StateDictOptions(full_state_dict=True, strict=True))


__all__ = ["is_sharded", "load_full_state_dict"]
