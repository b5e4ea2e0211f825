"""Distillation losses. Importing this package registers every loss in ``hf_rcka.LOSSES``."""

from .base import DistillationLoss, LossContext, LossInputs, RelationalLoss, weigh_terms
from .deit import DeiTTokenLoss
from .ekt import KernelTransferLoss
from .fitnet import FitNetLoss
from .kd import KDLoss
from .pcka import PatchCKALoss
from .rcka import FeatureCKALoss, RCKALoss
from .srd import SRDLoss
from .task import CrossEntropyLoss

__all__ = [
    "CrossEntropyLoss",
    "DeiTTokenLoss",
    "DistillationLoss",
    "FeatureCKALoss",
    "FitNetLoss",
    "KDLoss",
    "KernelTransferLoss",
    "LossContext",
    "LossInputs",
    "PatchCKALoss",
    "RCKALoss",
    "RelationalLoss",
    "SRDLoss",
    "weigh_terms",
]
