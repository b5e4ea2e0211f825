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
    stage on a 14 x 14 grid at batch 16: 15 MiB each). Here the backward keeps the two maps as
    they are when the student's is in half precision (as under autocast), and else one float32
    difference. The student's half-precision map costs half that difference, and nothing when
    another loss keeps the same pair (patch CKA does); the teacher's map is mostly alive anyway, as
    the teacher hidden state it views or as another loss's input (at full size in bf16, ResNet-50
    distilled from DeiT-B, this lowered the step's profiled peak with FitNets alone and with every
    loss at once). The backward rebuilds the difference a few images at a time, so the gradient is
    its only map-sized buffer. Under torch.compile the subtraction and the sum are single ops, which the
    compiler fuses: the eager path's loops over chunks would pin the batch size and recompile
    for every new one.
    """
    _check_same_shape(student, teacher, "FitNets' hint", "student", "teacher")
    if student.numel() == 0:
        raise ValueError(f"FitNets' hint got empty maps of shape {tuple(student.shape)}")
    return _Hint.apply(student, teacher)


_SUM_CHUNK = 1 << 20  # values of the float32 difference made at once


def _row_slices(maps: torch.Tensor) -> list:
    """Indices of a few images each, or of the whole maps where chunking cannot help.

    Under torch.compile one slice: a loop whose length follows the batch would pin the batch size.
    """
    if torch.compiler.is_compiling() or maps.dim() == 0:
        return [...]
    rows = max(1, _SUM_CHUNK // max(1, maps[0].numel()))
    return [slice(start, start + rows) for start in range(0, len(maps), rows)]


def _difference(student: torch.Tensor, teacher: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``s - t`` in ``dtype``, in one fresh buffer (the teacher cast a slice at a time on CPU)."""
    diff = student.to(dtype, memory_format=torch.contiguous_format, copy=True)
    for rows in _row_slices(diff):
        diff[rows].sub_(teacher[rows])
    return diff


class _Hint(torch.autograd.Function):
    """``mean((s - t)^2)`` that keeps the maps or their difference for the backward (see :func:`hint_loss`)."""

    @staticmethod
    def forward(ctx, student, teacher):
        dtype = compute_dtype(student, teacher)
        ctx.numel = student.numel()
        # (an inference tensor, made under torch.inference_mode, cannot be saved for the backward)
        ctx.keeps_maps = student.element_size() < dtype.itemsize and not (student.is_inference() or teacher.is_inference())
        if ctx.keeps_maps:
            total = sum(_difference(student[rows], teacher[rows], dtype).square().sum() for rows in _row_slices(student))
            ctx.save_for_backward(student, teacher)
        else:
            diff = _difference(student, teacher, dtype)
            total = sum(diff[rows].square().sum() for rows in _row_slices(diff))  # no map-sized square
            ctx.save_for_backward(diff)
            ctx.dtypes = student.dtype, teacher.dtype
        return total / student.numel()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        scale = 2.0 * grad / ctx.numel
        if not ctx.keeps_maps:
            (diff,) = ctx.saved_tensors
            scaled = diff * scale
            student_dtype, teacher_dtype = ctx.dtypes
            return (scaled.to(student_dtype) if ctx.needs_input_grad[0] else None,
                    -scaled.to(teacher_dtype) if ctx.needs_input_grad[1] else None)
        student, teacher = ctx.saved_tensors
        student_grad, teacher_grad = (torch.empty_like(side) if needed else None
                                      for side, needed in zip((student, teacher), ctx.needs_input_grad))
        for rows in _row_slices(student):
            scaled = _difference(student[rows], teacher[rows], scale.dtype).mul_(scale)
            if student_grad is not None:
                student_grad[rows].copy_(scaled)
            if teacher_grad is not None:
                teacher_grad[rows].copy_(scaled.neg_())
        return student_grad, teacher_grad
