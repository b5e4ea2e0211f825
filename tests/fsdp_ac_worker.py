"""Worker for test_fsdp.py: FSDP's own activation checkpointing (``fsdp_config: {activation_checkpointing: true}``)
on a BatchNorm student with drop-path, under accelerate's FSDP2 path on 2 CPU processes (see fsdp_trainer_worker.py).

accelerate wraps each block in torch's ``checkpoint_wrapper`` as it prepares the model, so nothing
on the student says beforehand that its blocks are recomputed in the backward.

``main(OUT, MODE)``, MODE ``plain`` or ``checkpointed`` (3 steps each), run by fsdp_jobs_worker.py under torchrun.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import fsdp_trainer_worker  # noqa: E402,F401  (runs FSDP on CPU processes)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from conftest import IMAGENET_MEAN, IMAGENET_STD, processor, tiny_vit  # noqa: E402
from hf_rcka import DistillationTrainer, DistillationTrainingArguments  # noqa: E402
from hf_rcka.models.label_maps import LabelMaps  # noqa: E402
from hf_rcka.models.timm_models import build_timm_classifier  # noqa: E402


def main(out: str, mode: str) -> None:
    torch.manual_seed(0)
    student = build_timm_classifier("resnet10t", LabelMaps.default(3), model_args={"drop_path_rate": 0.2})
    fsdp_config = {"fsdp_version": 2, "state_dict_type": "FULL_STATE_DICT",
                   "transformer_layer_cls_to_wrap": ["BasicBlock", "ViTLayer"]}  # the teacher's layers too
    if mode == "checkpointed":
        fsdp_config["activation_checkpointing"] = True
    args = DistillationTrainingArguments(
        output_dir=os.path.join(out, mode), use_cpu=True, report_to="none", max_steps=3, save_strategy="no",
        per_device_train_batch_size=5, learning_rate=1e-2, seed=0, losses=[{"name": "ce"}, {"name": "rcka"}],
        fsdp="full_shard", fsdp_config=fsdp_config,
    )
    run = DistillationTrainer(model=student, teacher=tiny_vit(), args=args, train_dataset=fsdp_trainer_worker.dataset(),
                              processing_class=processor(16), teacher_processor=processor(16, IMAGENET_MEAN, IMAGENET_STD))
    model = run.model
    run.train()
    run.save_model()
    if dist.get_rank() == 0:
        wrapped = any(type(m).__name__.endswith("CheckpointWrapper") for m in model.student.modules())
        with open(os.path.join(out, f"{mode}.json"), "w") as handle:
            json.dump({"wrapped": wrapped}, handle)
    dist.barrier()
