"""hf_rcka: knowledge distillation for vision transformers and CNNs on the Hugging Face Trainer."""

__version__ = "0.1.0"

from . import functional
from .losses import LossInputs
from .registry import ADAPTERS, LOSSES

__all__ = ["ADAPTERS", "LOSSES", "LossInputs", "__version__", "functional"]
