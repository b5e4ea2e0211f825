"""The model the Trainer trains: student + frozen teacher + adapters, and how the teacher runs."""

from ..features.pairing import FeaturePair
from .distillation_model import DISTILLATION_STATE_NAME, DistillationModel

__all__ = ["DISTILLATION_STATE_NAME", "DistillationModel", "FeaturePair"]
