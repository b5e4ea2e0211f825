"""Per-sample terms: Hinton KD on logits, SRD's distance and correlation on projected features,
and FitNets' hint on feature maps.

Per-sample comparisons (no batch relations), so each costs O(B d); all run in float32 or better
with autocast off (see ``numerics``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .numerics import compute_dtype, full_precision, upcast

__all__ = ["kd_loss", "srd_distance", "srd_correlation", "hint_loss"]


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} needs equal shapes, got {a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)}")


@full_precision
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: ``T^2 KL(softmax(t/T) || softmax(s/T))``, averaged over the batch."""
    _check_same_shape(student_logits, teacher_logits, "KD", "student logits", "teacher logits")
    log_p_s = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    log_p_t = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


@full_precision
def srd_distance(projected: torch.Tensor, teacher: torch.Tensor, alpha: float = 4.0, eps: float = 1e-5) -> torch.Tensor:
    """SRD's distance ``log(mean_b sum_d |s - t|^alpha + eps)`` on normalised (B, d) features.

    The public code takes the log of the sum over the batch too; the batch mean only shifts the
    loss by log(B) and leaves its gradient unchanged, and keeps its value comparable across batch sizes.
    """
    _check_same_shape(projected, teacher, "SRD", "projected student features", "teacher features")
    diff = (upcast(projected) - upcast(teacher)).abs().pow(alpha)
    return torch.log(diff.sum(dim=-1).mean() + eps)


@full_precision
def srd_correlation(projected: torch.Tensor, teacher: torch.Tensor, alpha: float = 4.0, eps: float = 1e-5) -> torch.Tensor:
    """SRD's DeiT-code variant: ``c_d = mean_b(s_bd t_bd)``, loss ``log(sum_d |c_d - 1|^alpha + eps)``."""
    _check_same_shape(projected, teacher, "SRD", "projected student features", "teacher features")
    corr = (upcast(projected) * upcast(teacher)).mean(dim=0)
    return torch.log((corr - 1.0).abs().pow(alpha).sum() + eps)


@full_precision
def hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNets' hint term ``mean((s - t)^2)`` over every element, in float32 or better.

    The hint maps are as wide as the teacher's stages, and the loss runs where the student's
    activations peak. ``F.mse_loss`` of the upcast sides saved a float32 copy of each for the
    backward, and its backward made four more map-sized temporaries (RegNetY-16GF's 1232-channel
    stage on a 14 x 14 grid at batch 16: 15 MiB each). Here the difference is made in one float32
    buffer, the student's upcast copy with the teacher subtracted in place. It is all the backward
    keeps; the backward scales it into the gradient (one float32 buffer, then its cast into the
    student's dtype). Under torch.compile the subtraction and the sum are single ops, which the
    compiler fuses: the eager path's loops over chunks would pin the batch size and recompile
    for every new one.
    """
    _check_same_shape(student, teacher, "FitNets' hint", "student", "teacher")
    if student.numel() == 0:
        raise ValueError(f"FitNets' hint got empty maps of shape {tuple(student.shape)}")
    return _Hint.apply(student, teacher)


_SUM_CHUNK = 1 << 20  # values squared at once when summing the squared difference


class _Hint(torch.autograd.Function):
    """``mean((s - t)^2)`` with the difference as its only saved tensor (see :func:`hint_loss`)."""

    @staticmethod
    def forward(ctx, student, teacher):
        dtype = compute_dtype(student, teacher)
        diff = student.to(dtype, memory_format=torch.contiguous_format, copy=True)
        flat = diff.view(-1)
        if torch.compiler.is_compiling() or diff.dim() == 0:
            total = diff.sub_(teacher).square().sum()
        else:
            # a few images at a time: on CPU, subtracting a teacher of another dtype casts it into a
            # temporary; and the squares a chunk at a time, so that no map-sized square is made
            rows = max(1, _SUM_CHUNK // max(1, diff[0].numel()))
            for part, other in zip(diff.split(rows), teacher.split(rows)):
                part.sub_(other)
            total = sum(chunk.square().sum() for chunk in flat.split(_SUM_CHUNK))
        ctx.save_for_backward(diff)
        ctx.dtypes = student.dtype, teacher.dtype
        return total / flat.numel()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        scaled = diff * (2.0 * grad / diff.numel())
        student_dtype, teacher_dtype = ctx.dtypes
        return (scaled.to(student_dtype) if ctx.needs_input_grad[0] else None,
                -scaled.to(teacher_dtype) if ctx.needs_input_grad[1] else None)
