"""Run by tests/test_multiprocess.py under torchrun (2 CPU processes, gloo): SRD with ``gather``
on each process's half of one batch, gradients averaged over the processes as DDP averages them."""

import json
import sys

import torch
import torch.distributed as dist

from hf_rcka.distributed import close_process_group
from hf_rcka.losses import LossContext, LossInputs
from hf_rcka.losses.srd import SRDLoss


def halves(gather: bool) -> dict:
    rank, size = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 6, generator=generator), torch.randn(8, 5, generator=generator)
    torch.manual_seed(1)
    loss = SRDLoss(gather=gather)
    loss.setup(LossContext(num_labels=3, student_pooled_dim=6, teacher_pooled_dim=5))
    rows = slice(rank * 8 // size, (rank + 1) * 8 // size)
    logits = torch.zeros(8, 3)[rows]
    value = loss.term(LossInputs(student_logits=logits, student_pooled=student[rows], teacher_pooled=teacher[rows]))
    value.backward()
    grad = loss.projector[0].weight.grad
    dist.all_reduce(grad)
    return {"loss": float(value), "grad": (grad / size).tolist(),
            "teacher_running_mean": loss.teacher_norm.running_mean.tolist()}


def main(out: str) -> None:
    dist.init_process_group("gloo")
    result = {"gathered": halves(True), "own": halves(False)}
    if dist.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump(result, handle)
    close_process_group()  # not dist.destroy_process_group(): see its docstring


if __name__ == "__main__":
    main(sys.argv[1])
