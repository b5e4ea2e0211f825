"""What data parallelism should and should not synchronise in a distillation model.

The frozen teacher lives inside ``Trainer.model`` (the wrapper that DDP wraps), so by default DDP
would broadcast its parameters at wrap time and, with ``broadcast_buffers`` on (DDP's default),
its BatchNorm statistics from rank 0 at every forward: megabytes per step for tensors that never
change. Two measures, both decided here:

* the teacher's parameters and buffers are put on DDP's ignore list, so DDP never touches them
  whatever ``ddp_broadcast_buffers`` says (every rank loads the same teacher weights anyway);
* ``ddp_broadcast_buffers`` defaults to off when the student has no running statistics
  (ViTs: nothing left to broadcast). A student with BatchNorm keeps DDP's default (on): the
  broadcast starts every training step from rank 0's running statistics, and the step updates
  them per rank again; before an evaluation ``share_running_stats`` gives every rank rank 0's, so
  the evaluation uses the statistics the export (rank 0's) holds. Set it to false to save that
  broadcast too; each rank then keeps statistics of its own shard and rank 0's are saved.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import RecipeError


def ignore_teacher_in_ddp(model: nn.Module, teacher_prefix: str = "teacher.") -> list[str]:
    """Put every parameter and buffer under ``teacher_prefix`` on DDP's ignore list; returns the names."""
    names = [n for n, _ in model.named_parameters() if n.startswith(teacher_prefix)]
    names += [n for n, _ in model.named_buffers() if n.startswith(teacher_prefix)]
    if names:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return names


def has_running_stats(module: nn.Module) -> bool:
    """Whether ``module`` holds normalisation running statistics that training updates (BatchNorm)."""
    return any(True for _ in _running_stat_modules(module))


def _running_stat_modules(module: nn.Module):
    return (m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats)


def share_running_stats(student: nn.Module) -> None:
    """Rank 0's BatchNorm running statistics on every rank (a no-op in one process).

    DDP broadcasts the buffers at the start of each training forward, and that forward then
    updates them with each rank's own batch, so after any step the ranks hold different
    statistics. An evaluation spread over the ranks would then mix them, while the exported model
    holds rank 0's; sharing them first makes the evaluation the export's.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    for module in _running_stat_modules(student):
        for buffer in module.buffers(recurse=False):
            dist.broadcast(buffer.data, src=0)


def default_broadcast_buffers(student: nn.Module, current: bool | None) -> bool | None:
    """``ddp_broadcast_buffers`` to use: the user's value if set, else off for a student without BN."""
    if current is not None:
        return current
    return None if has_running_stats(student) else False


def keep_teacher_out_of_fsdp(accelerator, model: nn.Module, device) -> bool:
    """Under accelerate's FSDP plugin, leave the frozen teacher unsharded (``ignored_modules``).

    Sharding a frozen teacher saves its weights' memory but costs an all-gather of every teacher
    layer at every step, and puts it into the sharded checkpoints for nothing. FSDP does not move
    ignored parameters, so the teacher is put on the training device here. Returns whether the
    plugin was configured (False without FSDP, or when the user set ``ignored_modules`` already).
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    teacher = getattr(model, "teacher", None)
    if plugin is None or teacher is None or plugin.ignored_modules is not None:
        return False
    plugin.ignored_modules = [teacher]
    teacher.to(device)
    return True


def require_full_state_dict(accelerator) -> None:
    """Refuse FSDP runs whose saves would not gather the full state dict.

    With ``SHARDED_STATE_DICT``, ``Trainer.save_model`` writes no model at all (checkpoints get
    their shards through accelerate, the final export gets nothing), so a run would finish
    "successfully" with no student to load. The student is exported as a plain transformers
    model, which needs the gathered weights.
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None:
        _check_state_dict_type(str(plugin.state_dict_type))


def check_fsdp_settings(args: Any) -> None:
    """Refuse FSDP settings that would fail only after the models are loaded, before they are.

    The settings come from ``TrainingArguments(fsdp=..., fsdp_config=...)`` when given (the
    Trainer builds accelerate's FSDP plugin from them, whatever the launcher), else from what
    ``accelerate launch`` put in the environment:

    * ``cpu_ram_efficient_loading`` loads every model's weights on the first process only and
      leaves the other processes' on the meta device, for FSDP to fill when it shards the model;
      accelerate moves the whole wrapped model to meta for that. The frozen teacher is kept out of
      FSDP (see ``keep_teacher_out_of_fsdp``), so it would not be filled, and accelerate's prepare
      step fails on its channels_last weights before that.
    * a ``state_dict_type`` given explicitly as sharded or local (see ``require_full_state_dict``,
      which also covers accelerate's default once the plugin exists).
    """
    plugin_args = getattr(args, "fsdp_plugin_args", None)
    if plugin_args:
        ram_efficient, state_dict_type = plugin_args.get("cpu_ram_efficient_loading"), plugin_args.get("state_dict_type")
    elif _true(os.environ.get("ACCELERATE_USE_FSDP")):
        ram_efficient = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
        state_dict_type = os.environ.get("FSDP_STATE_DICT_TYPE")
    else:
        return
    if _true(ram_efficient):
        raise RecipeError(
            "FSDP cpu_ram_efficient_loading loads the models' weights on the first process only and leaves the "
            "others for FSDP to fill, but hf_rcka keeps the frozen teacher out of FSDP: set "
            "fsdp_cpu_ram_efficient_loading: false in the accelerate config (accelerate config and accelerate launch "
            "--use_fsdp default it to true; cpu_ram_efficient_loading: false in fsdp_config)"
        )
    if state_dict_type:
        _check_state_dict_type(str(state_dict_type))


def _true(value: Any) -> bool:
    """A boolean setting as transformers reads it from text (``strtobool``: "true", "1", "yes"...)."""
    return str(value).strip().lower() in {"1", "true", "yes", "y", "on", "t"}


def _check_state_dict_type(state_dict_type: str) -> None:
    """Raise unless ``state_dict_type`` names the full state dict (``StateDictType.FULL_STATE_DICT``,
    ``FULL_STATE_DICT`` or accelerate's number for it, 1)."""
    name = state_dict_type.strip().upper()
    if name != "1" and not name.endswith("FULL_STATE_DICT"):
        raise RecipeError(
            f"FSDP state_dict_type is {state_dict_type}: hf_rcka saves the student as a plain "
            "transformers model, which needs the full state dict; set fsdp_state_dict_type: FULL_STATE_DICT "
            "in the accelerate config (or state_dict_type in fsdp_config)"
        )


__all__ = [
    "check_fsdp_settings", "default_broadcast_buffers", "has_running_stats", "ignore_teacher_in_ddp",
    "keep_teacher_out_of_fsdp", "require_full_state_dict", "share_running_stats",
]
