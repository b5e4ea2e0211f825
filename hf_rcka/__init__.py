"""hf_rcka: knowledge distillation for vision transformers and CNNs on the Hugging Face Trainer.

The math (``hf_rcka.functional``) and the registries import quickly: importing ``hf_rcka`` fills
``LOSSES`` and ``ADAPTERS`` with everything a recipe can name. The trainer, model wrapper and
argument classes load ``transformers.Trainer`` and are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import adapters as _adapters  # noqa: F401  (registers the adapters)
from . import functional
from .losses import LossInputs
from .registry import ADAPTERS, LOSSES

from .version import __version__

_LAZY = {
    "DistillationTrainer": "trainer.trainer",
    "DistillationTrainingArguments": "arguments",
    "ModelArguments": "arguments",
    "DataArguments": "arguments",
    "AugmentationArguments": "augmentation",
    "DistillationModel": "modeling.distillation_model",
    "FeaturePair": "features.pairing",
}

__all__ = ["ADAPTERS", "LOSSES", "LossInputs", "__version__", "functional", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_rcka' has no attribute {name!r}")
