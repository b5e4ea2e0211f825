"""The student trains wrapped in DistributedDataParallel, also when the Trainer evaluated first.

Trainer's first evaluation of a model that never trained prepares it with accelerate in evaluation
mode: accelerate marks it prepared (``_is_accelerate_prepared``) without wrapping it. accelerate's
guard against wrapping a model twice then hands the bare model back when training prepares it, so
each rank steps on its own batches with gradients never averaged, the ranks' weights drift apart
and the export is rank 0's, while every log reads as usual (transformers 5.x, accelerate 1.x;
``trainer.evaluate()`` of a baseline before ``trainer.train()`` through the Python API).

Also how processes and devices make one run: one device per process (``one_device_per_process``:
never ``nn.DataParallel``), and the launches whose processes would not join into one run
(``check_processes_join``), refused for the command line and a script of the user's alike.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

from ..distributed import launched_processes
from ..errors import ModelError, RecipeError
from .resume_hint import one_process_per_gpu_command

logger = logging.getLogger(__name__)


def wraps_in_ddp(trainer: Any) -> bool:
    """Whether accelerate wraps this run's model in DDP: several processes (one launched as
    distributed is not wrapped), neither FSDP nor DeepSpeed, something to train."""
    return (trainer.args.world_size > 1 and trainer.args.parallel_mode == ParallelMode.DISTRIBUTED
            and not trainer.is_fsdp_enabled and not trainer.is_deepspeed_enabled
            and any(p.requires_grad for p in trainer.model.parameters()))


def forget_evaluation_preparation(trainer: Any) -> None:
    """Let training wrap a model that an evaluation prepared unwrapped (see the module's docstring);
    with ``torch_compile`` the evaluation compiled it too, and training compiles the DDP module."""
    model, wrapped = trainer.model, trainer.model_wrapped
    compiled = wrapped is not model and getattr(wrapped, "_orig_mod", None) is model
    if not wraps_in_ddp(trainer) or (wrapped is not model and not compiled):
        return
    prepared = [model, wrapped] if compiled else [model]
    if any(getattr(module, "_is_accelerate_prepared", False) for module in prepared):
        for module in prepared:
            module.__dict__.pop("_is_accelerate_prepared", None)
        trainer.model_wrapped = model
        kept = trainer.accelerator._models
        kept[:] = [module for module in kept if all(module is not other for other in prepared)]


def one_device_per_process(args: TrainingArguments) -> None:
    """Train on the process's own device when several GPUs are visible to one process.

    Trainer wraps the model in ``nn.DataParallel`` then: a copy per GPU each step, run in threads
    that share the teacher's and student's feature capture (one container of hidden states per
    model), and whose statistics updates (SRD's normalisation, EKT's class centres) survive on the
    first copy alone. ``accelerate launch`` trains on every GPU with one process each (DDP), the
    path hf_rcka is built and tested for. ``DistillationTrainingArguments.n_gpu`` is at most 1
    already; plain ``TrainingArguments`` (a copy, the trainer's own) are set to 1 here.
    """
    visible = TrainingArguments.n_gpu.fget(args)  # transformers' count, before any cap (1 in a launched process)
    if visible <= 1:
        return
    args._n_gpu = 1
    logger.warning("%d GPUs are visible to this one process: it trains on %s alone (transformers would split each "
                   "batch over them with nn.DataParallel, which hf_rcka's feature capture and loss statistics do not "
                   "support). To train on all %d, start one process per GPU: %s ...", visible, args.device, visible,
                   one_process_per_gpu_command(visible))


def check_processes_join(args: Any) -> None:
    """Refuse a launch whose processes would not make one run over its machines: ``save_on_each_node``
    over several machines, ``accelerate launch --cpu`` with several processes or machines. Checked by
    the command line before it takes the output folder's lock, and by ``DistillationTrainer`` for a
    script of the user's."""
    launched, per_machine = launched_processes()
    if getattr(args, "save_on_each_node", False) and launched > per_machine:
        # transformers saves the optimizer, schedule and trainer state on each machine's first process,
        # hf_rcka the model, its config and the run's records on the run's first alone
        raise RecipeError("save_on_each_node: this run writes its model and records (model.safetensors, config.json, "
                          "distill_config.yaml) from its first process alone, so the other machines' checkpoints "
                          "would hold no model and could not be resumed, and on a disk the machines share both would "
                          "write the same files at once: give an output_dir on storage every machine shares and drop "
                          "save_on_each_node")
    if unjoined_cpu_launch(args):
        raise RecipeError("accelerate launch --cpu with several processes or machines starts one process on each "
                          "machine, and without mpirun it joins none: this one would train alone on all the data at "
                          "its own batch (the other machines' likewise, each into output_dir). On CPUs launch with "
                          "accelerate launch --multi_gpu --num_processes N ... --use_cpu true (the repository's "
                          "recipes/accelerate/cpu_2proc.yaml; on several machines add --num_machines, --machine_rank, "
                          "--main_process_ip and --main_process_port on each), or with torchrun. (A launch of one "
                          "process in a shell that exports MASTER_ADDR reads the same: unset MASTER_ADDR)")


def unjoined_cpu_launch(args: Any) -> bool:
    """Whether ``accelerate launch --cpu --num_processes N`` (or ``--num_machines M``) started this
    process alone: its simple launcher runs one process per machine, sets ``MASTER_ADDR`` for the
    processes it was asked for but no ``WORLD_SIZE``, and only mpirun (which sets the world size
    transformers reads) would join them. Each machine's process trained alone and exited 0."""
    env = os.environ
    return ("WORLD_SIZE" not in env and "ACCELERATE_DYNAMO_BACKEND" in env and "MASTER_ADDR" in env
            and env.get("ACCELERATE_USE_CPU", "").lower() == "true" and getattr(args, "world_size", 1) == 1)


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
            "Something prepared it with accelerate before Trainer.train did (accelerator.prepare in a callback or "
            "before the trainer was built): leave its preparation to the trainer")
