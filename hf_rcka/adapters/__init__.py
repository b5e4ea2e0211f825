"""Feature adapters. Importing this package registers every adapter in ``hf_rcka.ADAPTERS``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..features.layout import FeatureSpec
from ..registry import ADAPTERS
from .base import FeatureAdapter
from .identity import IdentityAdapter
from .linear import LinearAdapter
from .patch_match import PatchMatchAdapter


# what build_adapter passes itself: no recipe option
ADAPTER_SIDES = ("student", "teacher")


def build_adapter(name: str, student: FeatureSpec, teacher: FeatureSpec, **options: Any) -> nn.Module:
    """Build the adapter registered as ``name`` for one (student, teacher) feature pair.

    Raises:
        KeyError: for an unknown adapter name (with the closest valid names).
        ValueError: for an option the adapter does not take (with the closest valid options).
    """
    ADAPTERS.check_options(name, options, reserved=ADAPTER_SIDES)
    return ADAPTERS.get(name)(student=student, teacher=teacher, **options)


__all__ = ["ADAPTER_SIDES", "FeatureAdapter", "IdentityAdapter", "LinearAdapter", "PatchMatchAdapter", "build_adapter"]
