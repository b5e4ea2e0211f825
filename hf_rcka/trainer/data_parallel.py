"""The student trains wrapped in DistributedDataParallel, also when the Trainer evaluated first.

Trainer's first evaluation of a model that never trained prepares it with accelerate in evaluation
mode: accelerate marks it prepared (``_is_accelerate_prepared``) without wrapping it. accelerate's
guard against wrapping a model twice then hands the bare model back when training prepares it, so
each rank steps on its own batches with gradients never averaged, the ranks' weights drift apart
and the export is rank 0's, while every log reads as usual (transformers 5.x, accelerate 1.x;
``trainer.evaluate()`` of a baseline before ``trainer.train()`` through the Python API).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers.training_args import ParallelMode

from ..errors import ModelError


def wraps_in_ddp(trainer: Any) -> bool:
    """Whether accelerate wraps this run's model in DDP (several processes, neither FSDP nor DeepSpeed)."""
    return (trainer.args.parallel_mode == ParallelMode.DISTRIBUTED and not trainer.is_fsdp_enabled
            and not trainer.is_deepspeed_enabled)


def forget_evaluation_preparation(trainer: Any) -> None:
    """Let training wrap a model that an evaluation prepared unwrapped (see the module's docstring)."""
    model = trainer.model
    if not wraps_in_ddp(trainer) or trainer.model_wrapped is not model:
        return
    if getattr(model, "_is_accelerate_prepared", False):
        del model._is_accelerate_prepared
        prepared = trainer.accelerator._models
        prepared[:] = [kept for kept in prepared if kept is not model]


def check_wrapped(trainer: Any, model: nn.Module) -> None:
    """Refuse a training step of a multi-process run whose model DDP does not wrap.

    Raises:
        ModelError: the gradients would not be averaged over the processes.
    """
    inner = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
    if wraps_in_ddp(trainer) and not isinstance(inner, DistributedDataParallel):
        raise ModelError(
            f"the model trains in {trainer.args.world_size} processes without DistributedDataParallel around it "
            f"({type(inner).__name__}): each process would step on its own batches with gradients never averaged. "
            "Something prepared it with accelerate before Trainer.train did; train a fresh trainer")
