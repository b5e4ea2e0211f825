"""The student's activation checkpointing, however it was turned on: what it takes, and where a
reentrant checkpoint would train nothing.

transformers checkpoints a layered model's layers (each keeps its checkpoint function), timm a
model's blocks (``grad_checkpointing``); a student may come with either turned on, or have it
turned on by the trainer's arguments (``DistillationModel.follow_student_checkpointing``). The
BatchNorm side of it is ``recomputed_norms``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)


def checkpoints_layers(module: torch.nn.Module) -> bool:
    """Whether ``module`` recomputes layers in its backward: transformers' layers mark it with
    ``gradient_checkpointing``, timm's models with ``grad_checkpointing`` (a ``TimmWrapper``'s own
    ``is_activation_checkpointing`` does not see timm's)."""
    return any(getattr(part, "gradient_checkpointing", False) is True or getattr(part, "grad_checkpointing", False) is True
               for part in module.modules())


def say_options_timm_ignores(student: nn.Module, kwargs: Mapping[str, Any]) -> None:
    """A timm student checkpoints as timm does: transformers hands timm neither ``use_reentrant``,
    ``every_n_layers`` nor ``offload`` (said, since only memory and speed change)."""
    if not hasattr(student, "timm_model"):
        return
    asked = {**(kwargs.get("activation_checkpointing_kwargs") or {}),
             **{k: kwargs[k] for k in ("every_n_layers", "offload") if kwargs.get(k) not in (None, 1, False)}}
    if asked and asked != {"use_reentrant": False}:  # timm's own default
        logger.warning("activation_checkpointing_kwargs: a timm student checkpoints each block as timm does; "
                       "transformers passes %s on to no checkpoint (memory and speed only)", sorted(asked))


def inputs_need_gradients(student: nn.Module) -> list:
    """A reentrant checkpoint passes gradients back only to inputs that need them: with every weight
    before the first checkpointed layer frozen (the patch embedding, a common fine-tuning choice),
    no checkpointed layer trained, and the run ended well. The input of the module that holds the
    first checkpointed layer is then made to need a gradient (a forward pre-hook; hooking the layer
    itself would run inside its checkpoint); returns the hooks. Read from the layers' checkpoint
    function, however checkpointing was turned on; timm's reentrant checkpoints
    (``TIMM_REENTRANT_CKPT``) are said, since its blocks do not say where the first checkpoint starts."""
    if hasattr(student, "timm_model"):
        from timm.layers import use_reentrant_ckpt

        if use_reentrant_ckpt() and not all(p.requires_grad for p in student.parameters()):
            logger.warning("TIMM_REENTRANT_CKPT with frozen student weights: a reentrant checkpoint whose input needs no "
                           "gradient trains none of its block's weights; unset TIMM_REENTRANT_CKPT if the frozen "
                           "weights come before the checkpointed blocks")
        return []
    checkpointed = [name for name, part in student.named_modules() if _checkpoints_reentrant(part)]
    if not checkpointed or _trains_before(student, checkpointed[0]) or not any(
            p.requires_grad for name in checkpointed for p in student.get_submodule(name).parameters()):
        return []  # a trainable weight feeds the checkpoints, or none in them trains (a linear probe)
    holder = checkpointed[0].rpartition(".")[0]  # a module that calls the first checkpointed layer ("": the student)
    while holder and isinstance(student.get_submodule(holder), (nn.ModuleList, nn.ModuleDict)):
        holder = holder.rpartition(".")[0]
    return [student.get_submodule(holder).register_forward_pre_hook(_input_needs_gradient, with_kwargs=True)]


def restore_rng_in_wrapped_checkpoints(model: nn.Module) -> int:
    """accelerate's FSDP ``activation_checkpointing`` wraps blocks in torch's ``checkpoint_wrapper``
    with ``preserve_rng_state=False``: the recomputation in the backward then draws other dropout
    and drop-path masks than the forward did, and the gradients are those of another network than
    the one the loss measured (the DeiT recipes' ``drop_path_rate: 0.1``). The recomputation is
    given the forward's RNG state back, as transformers' and timm's own checkpointing do. Returns
    how many wrappers were changed."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    changed = 0
    for module in model.modules():
        run = module.__dict__.get("checkpoint_fn")
        if (isinstance(module, CheckpointWrapper) and isinstance(run, functools.partial)
                and run.keywords.get("preserve_rng_state") is False):
            module.checkpoint_fn = functools.partial(run.func, *run.args, **{**run.keywords, "preserve_rng_state": True})
            changed += 1
    return changed


def _checkpoints_reentrant(part: nn.Module) -> bool:
    """Whether ``part`` is a layer transformers checkpoints reentrantly. ``activation_checkpointing_kwargs``
    that leave ``use_reentrant`` out (``{preserve_rng_state: false}``) reach torch's ``checkpoint``
    without it, which then checkpoints reentrantly (and warns)."""
    run = getattr(part, "_gradient_checkpointing_func", None)
    return isinstance(run, functools.partial) and run.keywords.get("use_reentrant", True) is not False


def _trains_before(model: nn.Module, first: str) -> bool:
    """Whether a weight registered before the module ``first`` (in the model's module order, which
    is the order of its forward for the layered models transformers checkpoints) trains."""
    for name, part in model.named_modules():
        if name == first:
            return False
        if any(p.requires_grad for p in part.parameters(recurse=False)):
            return True
    return False


def _input_needs_gradient(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
    """Make a training forward's first floating-point tensor input need a gradient."""
    if not (module.training and torch.is_grad_enabled()):
        return None
    first = next((value for value in (*args, *kwargs.values())
                  if isinstance(value, torch.Tensor) and value.is_floating_point()), None)
    if first is None or first.requires_grad:
        return None
    marked = first.detach().requires_grad_(True)
    return (tuple(marked if value is first else value for value in args),
            {key: marked if value is first else value for key, value in kwargs.items()})


__all__ = ["checkpoints_layers", "inputs_need_gradients", "restore_rng_in_wrapped_checkpoints",
           "say_options_timm_ignores"]
