"""Bilinear resizing of feature maps that stays fast on CUDA for small maps with many channels.

On CUDA, torch's bilinear kernel for a standard-layout (NCHW) map runs one thread per output pixel,
and each thread loops over batch x channels. Feature maps in distillation are the opposite of
images: few pixels, many channels, large batches. Resizing a (128, 1536, 14, 14) map to 16 x 16 (to
fit whole 4-pixel patches) gave that kernel 256 threads with 196,608 values each: 33 ms per call on
an H200, against a 70 ms training step, which tripled the step of ResNet-50 <- DeiT-B patch CKA
(``benchmarks/step_overhead.py --device cuda --full``). Its channels_last kernel runs one thread per
output value, so on CUDA a map is put in channels_last first: one copy, cheap next to that loop.
The values are those of ``F.interpolate`` up to float32 rounding (the two kernels sum in
another order: 5e-7 apart on the H200); the result's memory layout differs.

The patch-CKA kernel resizes a map channel block by channel block and differentiates the resize
itself, so both directions take an ``out`` buffer it reuses across blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _fast_layout(fmap: torch.Tensor) -> torch.Tensor:
    if fmap.is_cuda and not fmap.is_contiguous(memory_format=torch.channels_last):
        return fmap.contiguous(memory_format=torch.channels_last)
    return fmap


def resize_bilinear(fmap: torch.Tensor, size: tuple[int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """``F.interpolate(fmap, size, mode="bilinear", align_corners=False)`` of a (B, C, H, W) map,
    written into ``out`` when given."""
    fmap = _fast_layout(fmap)
    if out is None:
        return F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
    return torch.ops.aten.upsample_bilinear2d.out(fmap, list(size), False, None, None, out=out)


def resize_bilinear_backward(grad: torch.Tensor, input_shape: torch.Size, out: torch.Tensor | None = None) -> torch.Tensor:
    """The gradient w.r.t. the input (of ``input_shape``) of :func:`resize_bilinear`, given ``grad``
    w.r.t. its output: what autograd would pass back through the resize, written into ``out``."""
    grad = _fast_layout(grad)
    args = (grad, list(grad.shape[-2:]), list(input_shape), False, None, None)
    if out is None:
        return torch.ops.aten.upsample_bilinear2d_backward(*args)
    return torch.ops.aten.upsample_bilinear2d_backward.grad_input(*args, grad_input=out)
