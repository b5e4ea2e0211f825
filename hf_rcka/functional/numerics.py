"""The numeric ground rules every hf_rcka loss computes under: float32 or better, autocast off.

Kernel alignment multiplies feature entries twice (Gram entries are sums of products), which
overflows float16 and loses most digits in bfloat16; logit and distance terms lose less but are
cheap. So every function of ``hf_rcka.functional`` upcasts its inputs with :func:`upcast` and runs
with autocast disabled (:func:`full_precision`), whatever precision the models train in.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

DEFAULT_EPS = 1e-8
_Fn = TypeVar("_Fn", bound=Callable)


def full_precision(fn: _Fn) -> _Fn:
    """Run ``fn`` with autocast off, so matmuls inside stay in float32 under bf16/fp16 training."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        given = (*args, *kwargs.values())  # linear_cka(x=..., y=...) too
        items = (t for a in given for t in (a if isinstance(a, (list, tuple)) else (a,)))  # lists of maps too
        tensors = (getattr(t, "gram", t) for t in items)  # a side reduced to its Gram (GramSide, PatchGramSide)
        device_type = next((t.device.type for t in tensors if isinstance(t, torch.Tensor)), "cpu")
        if not torch.is_autocast_enabled(device_type):  # nothing to turn off (entering the context is not free)
            return fn(*args, **kwargs)
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def upcast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype losses compute ``x`` in: float64 stays float64 (for gradcheck), every other float
    dtype (bf16, fp16, fp32) becomes float32."""
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :func:`upcast_dtype`. Use this instead of ``.float()``, which would silently drop
    float64 inputs to float32."""
    return x.to(upcast_dtype(x))


def compute_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """The one dtype two inputs are compared in (float32 buffers meet float64 features in gradcheck)."""
    return torch.promote_types(upcast_dtype(a), upcast_dtype(b))


def common_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs in their :func:`compute_dtype`."""
    dtype = compute_dtype(a, b)
    return a.to(dtype), b.to(dtype)
