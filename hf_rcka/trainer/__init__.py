"""Training: the ``DistillationTrainer``, its callbacks (EMA, interruption) and the model card."""

from .trainer import DistillationTrainer

__all__ = ["DistillationTrainer"]
