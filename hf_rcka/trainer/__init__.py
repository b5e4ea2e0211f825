"""Training: the ``DistillationTrainer``, its callbacks (EMA, interruption) and the model card.

``DistillationTrainer`` is imported on first use: the command line imports this package's small
modules (the resume hint, the signal handling) while it reads a recipe, and a recipe's error is
said before ``transformers.Trainer``, ``datasets`` and ``timm`` load (about half the wait).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DistillationTrainer"]


def __getattr__(name: str) -> Any:
    if name == "DistillationTrainer":
        from .trainer import DistillationTrainer

        return DistillationTrainer
    raise AttributeError(f"module 'hf_rcka.trainer' has no attribute {name!r}")
