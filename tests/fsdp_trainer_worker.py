"""Worker for test_fsdp.py: DistillationTrainer under accelerate's own FSDP2 path, on 2 CPU processes.

accelerate decides ``distributed_type`` from the hardware and runs a CPU job as MULTI_CPU (DDP)
even when the FSDP plugin is configured. Only that one decision is overridden here: the two state
classes' constructors turn MULTI_CPU into FSDP when ``ACCELERATE_USE_FSDP`` is set (the Trainer
sets it for ``fsdp="full_shard"``). Everything else is the real path: the Trainer's FSDP branch,
accelerate's ``fsdp2_prepare_model`` (``fully_shard`` per ViT block and on the wrapper, the teacher
as ignored params), ``accelerator.get_state_dict`` -> ``_save`` for checkpoints and the export,
accelerate's FSDP optimizer save/load, and our ``_load_from_checkpoint`` on resume.

``main(OUT, MODE)``, run by fsdp_jobs_worker.py under torchrun: MODE ``full`` (4 steps, checkpoint at
2 and 4) or ``resume`` (resume OUT/full/checkpoint-2 into a fresh trainer, 2 more steps).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from accelerate.state import AcceleratorState, PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402


def _force_fsdp_on_cpu(cls):
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if kwargs.get("fsdp_plugin") is not None:
                self.fsdp_plugin = kwargs["fsdp_plugin"]

    cls.__init__ = __init__


_force_fsdp_on_cpu(PartialState)
_force_fsdp_on_cpu(AcceleratorState)

import numpy as np  # noqa: E402
import datasets  # noqa: E402
import torch.distributed as dist  # noqa: E402

from conftest import IMAGENET_MEAN, IMAGENET_STD, processor, tiny_resnet, tiny_vit  # noqa: E402
from hf_rcka import DistillationTrainer, DistillationTrainingArguments  # noqa: E402


def dataset():
    rng = np.random.default_rng(0)
    pixels = [rng.standard_normal((3, 16, 16)).astype("float32") for _ in range(40)]
    return datasets.Dataset.from_dict({"pixel_values": pixels, "labels": [i % 3 for i in range(40)]}).with_format("torch")


def trainer(out: str) -> DistillationTrainer:
    args = DistillationTrainingArguments(
        output_dir=out, use_cpu=True, report_to="none", max_steps=4, save_steps=2, per_device_train_batch_size=5,
        learning_rate=1e-2, seed=0, losses=[{"name": "ce"}, {"name": "rcka"}, {"name": "feature_cka"}, {"name": "srd"}],
        feature_pairs=[{"student_layer": -1, "teacher_layer": -2, "adapter": "linear"}],
        fsdp="full_shard",
        fsdp_config={"fsdp_version": 2, "state_dict_type": "FULL_STATE_DICT", "transformer_layer_cls_to_wrap": ["ViTLayer"]},
    )
    return DistillationTrainer(
        model=tiny_vit(), teacher=tiny_resnet(), args=args, train_dataset=dataset(), processing_class=processor(16),
        teacher_processor=processor(24, IMAGENET_MEAN, IMAGENET_STD),
    )


def main(out: str, mode: str) -> None:
    run = trainer(os.path.join(out, mode))
    model = run.model
    run.train(resume_from_checkpoint=os.path.join(out, "full", "checkpoint-2") if mode == "resume" else None)
    run.save_model()
    info = {
        "fsdp": run.is_fsdp_enabled and run.accelerator.is_fsdp2,
        "student_sharded": any(type(p).__name__ == "DTensor" for p in model.student.parameters()),
        "adapters_sharded": any(type(p).__name__ == "DTensor" for p in model.adapters.parameters()),
        "teacher_sharded": any(type(p).__name__ == "DTensor" for p in model.teacher.parameters()),
    }
    if dist.get_rank() == 0:
        with open(os.path.join(out, f"{mode}.json"), "w") as handle:
            json.dump(info, handle)
    dist.barrier()
