"""Run the frozen teacher as cheaply as its outputs allow.

A distillation step cannot cost less than one teacher forward plus one student step; these
settings bring the teacher's part down to that forward:

* ``torch.no_grad``, not ``torch.inference_mode``: inference tensors may not be saved for backward
  (``mse_loss``, a projector on the teacher side would), so every output the losses use would
  have to be copied out of inference mode at every step, while all inference mode saves is
  version-counter and view bookkeeping, which a forward of large convolutions and matmuls does
  not notice. Under no_grad a float32 output reaches the losses as it is (see ``release``).
* ``channels_last`` for convolutional teachers: cuDNN and oneDNN convolutions run NHWC natively
  (measured faster on CPU too, see benchmarks/README.md). Only the live weights are NHWC: the
  teacher's ``state_dict`` hands out standard-layout copies (:func:`standard_layout_state`),
  because torch's ``broadcast_from_rank0`` loading scrambles NHWC tensors on the other ranks.
* optional half-precision weights (``teacher_dtype``): under bf16 autocast an fp32 teacher's
  weights are cast again at every op (autocast caches casts only for weights that need grad),
  and fp32 weights take twice the memory. Its outputs reach the losses in that precision.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

TEACHER_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_teacher_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``None``, ``"bfloat16"``/``"float16"`` or the torch dtype itself -> torch dtype (or None).

    Raises:
        ValueError: for any other value, naming the valid ones.
    """
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in TEACHER_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in TEACHER_DTYPES:
        return TEACHER_DTYPES[dtype]
    raise ValueError(f"teacher_dtype must be one of {sorted(TEACHER_DTYPES)} or unset (float32), got {dtype!r}")


def is_convolutional(model: nn.Module) -> bool:
    """More than one 2-D convolution: a CNN or hybrid (a ViT has a single patch-embedding conv)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def _conversions(teacher: nn.Module, dtype: str | torch.dtype | None,
                 channels_last: bool) -> tuple[torch.dtype | None, bool]:
    """What :class:`TeacherRuntime` makes of the teacher: the dtype it casts its weights to (None:
    none), and whether it makes them NHWC (a convolutional teacher only)."""
    return resolve_teacher_dtype(dtype), bool(channels_last) and is_convolutional(teacher)


def runs_as_given(teacher: nn.Module, dtype: str | torch.dtype | None, channels_last: bool) -> bool:
    """Whether :class:`TeacherRuntime` leaves the teacher's weights as they are (no cast, no NHWC):
    a forward of the teacher made before it was set up is then one of the teacher as it runs."""
    cast, nhwc = _conversions(teacher, dtype, channels_last)
    return cast is None and not nhwc


class TeacherRuntime:
    """Prepares the teacher once (dtype, memory format) and runs it under ``no_grad``.

    Args:
        teacher: the frozen teacher (its ``requires_grad`` already off).
        dtype: ``torch.bfloat16``/``torch.float16`` to keep its weights in half precision, or None.
        channels_last: use NHWC for a convolutional teacher's weights and inputs.
    """

    def __init__(self, teacher: nn.Module, dtype: torch.dtype | None = None, channels_last: bool = True) -> None:
        self.dtype, self.channels_last = _conversions(teacher, dtype, channels_last)  # as runs_as_given reads them
        if self.dtype is not None:
            teacher.to(self.dtype)
        # under FSDP mixed precision the wrapper's inputs arrive in bf16 while the (unsharded) teacher
        # stays as loaded; outside autocast (evaluation) a conv of mixed dtypes fails
        self.input_dtype = next(teacher.parameters()).dtype
        if self.dtype is None and self.input_dtype in (torch.float16, torch.bfloat16):
            logger.warning("teacher: its weights are %s and teacher_dtype is unset, so it runs in %s (a teacher object "
                           "given to an earlier trainer with teacher_dtype keeps that precision: load it again for "
                           "float32)", self.input_dtype, self.input_dtype)
        if self.channels_last:
            teacher.to(memory_format=torch.channels_last)
            if standard_layout_state not in teacher._state_dict_hooks.values():  # one per teacher, not per run
                teacher.register_state_dict_post_hook(standard_layout_state)

    def inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's input in its weights' dtype and memory format."""
        pixel_values = pixel_values.to(self.input_dtype)
        if self.channels_last and pixel_values.dim() == 4:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return pixel_values

    @contextmanager
    def running(self) -> Iterator[None]:
        with torch.no_grad():
            yield

    def release(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """An output as the losses get it: itself where it can be, otherwise a copy in its memory order.

        Copied are views that keep far more memory alive than they show: a ViT's pooled class
        token views the whole last token sequence, which would otherwise stay in memory through the
        backward. Half-precision outputs stay in half precision: the paired stages are held from
        the teacher forward to the loss, under the student's whole forward, and float32 copies of
        them doubled that (780 MiB of RegNetY-16GF's four stages at batch 128 in bf16). The losses
        upcast what they read, a large Gram side block by block.
        """
        if tensor is None:
            return None
        if torch.compiler.is_compiling():  # a storage's size cannot be traced: one graph break per output
            return tensor if _dense(tensor) else _copy_in_memory_order(tensor)
        if tensor.untyped_storage().nbytes() > 2 * tensor.numel() * tensor.element_size():
            return _copy_in_memory_order(tensor)
        return tensor


def _dense(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s elements fill its span of memory without gaps, in any order of dims
    (a channels_last map is dense; a class token viewed out of its token sequence is not)."""
    span = 1
    for dim in sorted(range(tensor.dim()), key=tensor.stride):
        if tensor.size(dim) != 1 and tensor.stride(dim) != span:
            return False
        span *= tensor.size(dim)
    return True


def _copy_in_memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """A dense copy that keeps ``tensor``'s order of strides, returned with its shape.

    ``clone`` keeps the layout of dense tensors only; a ViT's blocks are handed out as
    maps that view prefix-free tokens (a gap per sample), which they would copy with a permute
    into standard layout. Copying in memory order is a straight copy, and the result still
    flattens per sample as a view (``sample_rows``).
    """
    order = sorted(range(tensor.dim()), key=lambda d: -tensor.stride(d))
    inverse = sorted(range(tensor.dim()), key=order.__getitem__)
    return tensor.permute(order).clone(memory_format=torch.contiguous_format).permute(inverse)


def standard_layout_state(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """``state_dict`` post-hook: the module's NHWC (channels_last) tensors become contiguous copies.

    Why: a checkpoint is loaded on many ranks with ``set_model_state_dict(...,
    StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))`` (what accelerate's FSDP2
    ``load_fsdp_model`` does with FULL_STATE_DICT). Upstream (torch 2.14,
    ``torch.distributed._state_dict_utils._broadcast_tensors``) rank 0 sends its tensor's memory as
    it lies, while the other ranks receive into a buffer allocated contiguous from size and dtype
    alone, so an NHWC weight arrives with its elements permuted: the teacher silently differs on
    every rank but 0 and a resumed run drifts from an uninterrupted one (tests/test_fsdp.py pins
    this). A contiguous copy has one layout on every rank; ``load_state_dict`` copies it back into
    the NHWC weight correctly. With ``keep_vars=True`` the caller wants the live parameters, so
    those (``nn.Parameter``) are left alone.
    """
    for key, value in state_dict.items():
        if key.startswith(prefix) and _is_plain_tensor(value) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


def _is_plain_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter)


__all__ = ["TEACHER_DTYPES", "TeacherRuntime", "is_convolutional", "resolve_teacher_dtype", "runs_as_given",
           "standard_layout_state"]
