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
        device_type = next((a.device.type for a in given if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def upcast(x: torch.Tensor) -> torch.Tensor:
    """The dtype losses compute in: float64 stays float64 (for gradcheck), every other float
    dtype (bf16, fp16, fp32) becomes float32. Use this instead of ``.float()``, which would
    silently drop float64 inputs to float32."""
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    return x if x.dtype == torch.float64 else x.float()


def common_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upcast both and promote to one dtype (float32 buffers meet float64 features in gradcheck)."""
    a, b = upcast(a), upcast(b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)
