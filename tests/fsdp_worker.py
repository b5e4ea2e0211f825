"""Worker for test_fsdp.py: FSDP2 (``fully_shard``) on 2 CPU processes over gloo.

accelerate's FSDP plugin only switches on for multi-accelerator setups: with ``use_cpu`` the
Trainer's ``fsdp`` settings are silently run as DDP (MULTI_CPU). So this runs the path underneath
accelerate's FSDP2 ``prepare`` by hand: ``fully_shard`` on the student's blocks and on the
wrapper with the frozen teacher as ``ignored_params`` (not sharded, not optimised), full state
dicts through ``torch.distributed.checkpoint.state_dict`` (what accelerate saves with
FULL_STATE_DICT), and the export through ``DistillationTrainer._save(state_dict=...)``.
Run A trains 4 steps; run B trains 2, checkpoints, and a fresh model resumes from it for 2 more.
Rank 0 writes both final students and the export folder to OUT, ``resume.json`` (whether the
resumed teacher equals the built one on every rank), and ``upstream.json``: what
torch's ``broadcast_from_rank0`` loading does to an NHWC (channels_last) tensor on rank 1, the
behaviour ``hf_rcka.modeling.teacher_runtime.standard_layout_state`` works around. Run by
fsdp_jobs_worker.py, which closes the process group this job sets up.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.distributed.checkpoint.state_dict import (  # noqa: E402
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from conftest import IMAGENET_MEAN, IMAGENET_STD, processor, tiny_resnet, tiny_vit  # noqa: E402
from hf_rcka import DistillationTrainer, DistillationTrainingArguments  # noqa: E402
from hf_rcka.losses import CrossEntropyLoss, FeatureCKALoss, RCKALoss  # noqa: E402
from hf_rcka.modeling.distillation_model import DistillationModel  # noqa: E402
from hf_rcka.modeling.teacher_inputs import input_stats  # noqa: E402

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # on rank 0 only, as accelerate saves it
LOAD = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)  # rank 0's copy scattered to the shards


def build(mesh):
    model = DistillationModel(
        tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), RCKALoss(), FeatureCKALoss()],
        feature_pairs=[{"student_layer": -1, "teacher_layer": -2, "adapter": "linear"}],
        student_input=input_stats(processor(16)), teacher_input=input_stats(processor(24, IMAGENET_MEAN, IMAGENET_STD)),
    ).train()
    for layer in [m for m in model.student.modules() if type(m).__name__ == "ViTLayer"]:  # transformer blocks
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh, ignored_params=set(model.teacher.parameters()))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return model, optimizer


def step(model, optimizer, index: int) -> None:
    g = torch.Generator().manual_seed(100 * index + dist.get_rank())
    x, y = torch.randn(5, 3, 16, 16, generator=g), torch.randint(0, 3, (5,), generator=g)
    model(pixel_values=x, labels=y).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def nhwc_broadcast_arrives_intact() -> bool:
    """Load rank 0's NHWC conv weight (strides kept, as torch.save keeps them) into rank 1 by broadcast."""
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(conv.weight.numel(), dtype=torch.float32).view_as(conv.weight))
    expected = conv.weight.detach().clone()
    state = {k: v.detach() for k, v in conv.state_dict(keep_vars=True).items()} if dist.get_rank() == 0 else {}
    if dist.get_rank() != 0:
        torch.nn.init.zeros_(conv.weight)
    set_model_state_dict(conv, state, options=LOAD)
    intact = torch.tensor(int(torch.equal(conv.weight, expected)))
    dist.all_reduce(intact, op=dist.ReduceOp.MIN)
    return bool(intact)


def main(out: str) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    full, opt = build(mesh)
    teacher_before = {k: v.clone() for k, v in full.teacher.state_dict().items()}
    for i in range(4):
        step(full, opt, i)
    final_a = get_model_state_dict(full, options=FULL)

    half, opt = build(mesh)
    for i in range(2):
        step(half, opt, i)
    checkpoint = (get_model_state_dict(half, options=FULL), get_optimizer_state_dict(half, opt, options=FULL))
    checkpoint_copy = {k: v.clone() for k, v in checkpoint[0].items()}  # loading scatters the dict in place
    resumed, opt = build(mesh)
    set_model_state_dict(resumed, checkpoint[0], options=LOAD)
    optim_state = [checkpoint[1]]  # every rank needs the full optimizer state to take its shard of it
    dist.broadcast_object_list(optim_state, src=0)
    set_optimizer_state_dict(resumed, opt, optim_state[0], options=StateDictOptions(full_state_dict=True))
    for i in range(2, 4):
        step(resumed, opt, i)
    final_b = get_model_state_dict(resumed, options=FULL)

    teacher_after = resumed.teacher.state_dict()
    same_teacher = torch.tensor(int(all(torch.equal(v, teacher_before[k]) for k, v in teacher_after.items())))
    dist.all_reduce(same_teacher, op=dist.ReduceOp.MIN)  # loading broadcasts rank 0's copy to the others
    upstream = {"nhwc_broadcast_arrives_intact": nhwc_broadcast_arrives_intact()}
    info = {
        "student_sharded": any(type(p).__name__ == "DTensor" for p in resumed.student.parameters()),
        "teacher_sharded": any(type(p).__name__ == "DTensor" for p in resumed.teacher.parameters()),
        "teacher_optimised": any(p is q for g in opt.param_groups for q in g["params"] for p in resumed.teacher.parameters()),
        "teacher_unchanged": all(torch.equal(v, teacher_before[k]) for k, v in full.teacher.state_dict().items()),
    }
    if dist.get_rank() == 0:
        args = DistillationTrainingArguments(output_dir=os.path.join(out, "export"), report_to="none", use_cpu=True)
        trainer = DistillationTrainer(model=resumed, args=args, processing_class=processor(16))
        trainer._save(os.path.join(out, "export"), state_dict=final_b)  # the Trainer's FSDP export path
        save_file({k: v.contiguous() for k, v in final_a.items()}, os.path.join(out, "a.safetensors"))
        save_file({k: v.contiguous() for k, v in final_b.items()}, os.path.join(out, "b.safetensors"))
        save_file({k: v.contiguous() for k, v in checkpoint_copy.items()}, os.path.join(out, "checkpoint.safetensors"))
        with open(os.path.join(out, "info.json"), "w") as handle:
            json.dump(info, handle)
        with open(os.path.join(out, "resume.json"), "w") as handle:
            json.dump({"teacher_equal_on_every_rank": bool(same_teacher)}, handle)
        with open(os.path.join(out, "upstream.json"), "w") as handle:
            json.dump(upstream, handle)
    dist.barrier()
