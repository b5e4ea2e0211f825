"""Distillation losses. Importing this package registers every loss in ``hf_rcka.LOSSES``."""

from ..registry import LOSSES
from .base import IGNORE_INDEX, DistillationLoss, LossContext, LossInputs, RelationalLoss, reads_features, reads_teacher, reads_teacher_logits, weigh_terms
from .deit import DeiTTokenLoss
from .ekt import KernelTransferLoss
from .fitnet import FitNetLoss
from .kd import KDLoss
from .pcka import PatchCKALoss
from .rcka import FeatureCKALoss, RCKALoss
from .srd import SRDLoss
from .task import CrossEntropyLoss


def per_channel_losses() -> list[str]:
    """Names of the registered losses that are means of per-channel terms (``channel_mean``): the
    ones a random subset of channels estimates without bias."""
    return [name for name in LOSSES.names() if LOSSES.get(name).channel_mean]


__all__ = [
    "CrossEntropyLoss",
    "DeiTTokenLoss",
    "DistillationLoss",
    "FeatureCKALoss",
    "FitNetLoss",
    "IGNORE_INDEX",
    "KDLoss",
    "KernelTransferLoss",
    "LossContext",
    "LossInputs",
    "PatchCKALoss",
    "RCKALoss",
    "RelationalLoss",
    "SRDLoss",
    "per_channel_losses",
    "reads_features",
    "reads_teacher",
    "reads_teacher_logits",
    "weigh_terms",
]
