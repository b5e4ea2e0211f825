"""Exponential moving average of the student's weights (timm's ``ModelEmaV3``), as DeiT trains with.

A ``TrainerCallback`` updates the average after every optimizer step; the trainer evaluates the
averaged weights next to the live ones (``eval_ema_*`` metrics), keeps the average in checkpoints
so that a resumed run continues it exactly, and exports it instead of the live weights when the
recipe asks (``model_ema_export``). Only the student is averaged: the teacher is frozen, and
adapters and loss projectors are not part of the exported model.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

EMA_STATE_NAME = "model_ema.safetensors"


class StudentEmaCallback(TrainerCallback):
    """Holds a ``timm.utils.ModelEmaV3`` of the student and updates it after each optimizer step.

    The average is created on first use from the student as it is then (after a checkpoint was
    loaded, on the student's device), with timm's step-dependent decay: the first update copies
    the weights, later ones decay by ``decay`` (or timm's warm-up schedule up to it).

    Args:
        student: the student module being trained (the same object the Trainer's model holds).
        decay: EMA decay per optimizer step (DeiT: 0.99996 at batch 1024; timm: 0.9998).
        warmup: timm's EMA warm-up (``--model-ema-warmup``).
    """

    def __init__(self, student: nn.Module, decay: float, warmup: bool = False) -> None:
        self.student, self.decay, self.warmup = student, float(decay), bool(warmup)
        self._ema = None
        self.has_average = False  # updated in training, or restored from a checkpoint

    @property
    def ema(self):
        from timm.utils import ModelEmaV3

        if self._ema is None:
            self._ema = ModelEmaV3(self.student, decay=self.decay, use_warmup=self.warmup)
        return self._ema

    def _placed(self):
        """The average, moved to the student's device (the Trainer may place the student later)."""
        device = next(self.student.parameters()).device
        if next(self.ema.module.parameters()).device != device:
            self.ema.module.to(device)
        return self.ema

    @property
    def module(self) -> nn.Module:
        """The averaged copy of the student, on the student's device."""
        return self._placed().module

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        self._placed().update(self.student, step=state.global_step)
        self.has_average = True

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into the student (evaluation, export)."""
        live = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        self.student.load_state_dict(self.module.state_dict())
        try:
            yield self.student
        finally:
            self.student.load_state_dict(live)

    def save(self, directory: str) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, os.path.join(directory, EMA_STATE_NAME), metadata={"format": "pt"})

    def load(self, directory: str) -> None:
        """Restore the average from a checkpoint; one without it restarts it from the student."""
        path = os.path.join(directory, EMA_STATE_NAME)
        if not os.path.isfile(path):
            logger.warning("%s has no %s: the weight average restarts from the resumed student", directory,
                           EMA_STATE_NAME)
            self._ema = None
            return
        self.module.load_state_dict(load_file(path), strict=True)
        self.has_average = True
