"""Both heads of a timm distilled DeiT student, read where timm computes them.

timm's ``VisionTransformerDistilled`` returns ``(cls + dist) / 2``, DeiT's inference, and both
heads apart only in training mode after ``set_distilled_training(True)``. The ``deit_token`` loss
needs the distillation head's logits in training and in evaluation (its evaluation loss), and the
task loss needs the class head's. Forward hooks on ``head`` and ``head_dist`` read both in every
mode while the model's own output stays the average: what the exported folder computes when
``TimmWrapperForImageClassification.from_pretrained`` rebuilds it (DeiT's models.py does the same
at inference). transformers' ``DeiTForImageClassificationWithTeacher`` returns both heads itself.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import Tensor, nn


class DistilledHeads:
    """Forward hooks that keep the class and distillation logits of a forward run inside ``reading()``.

    Outside it (the student used on its own, or an EMA copy whose deep-copied hooks point here)
    nothing is kept: a kept output would hold that forward's whole autograd graph alive.
    """

    def __init__(self, student: nn.Module) -> None:
        timm_model = student.timm_model
        self._logits: dict[str, Tensor] = {}
        self._reading = False
        self._handles = [
            timm_model.head.register_forward_hook(self._keeper("cls")),
            timm_model.head_dist.register_forward_hook(self._keeper("dist")),
        ]

    @staticmethod
    def applies(student: nn.Module) -> bool:
        """A TimmWrapper around a timm model with a distillation head."""
        return timm_has_distillation_head(getattr(student, "timm_model", None))

    def _keeper(self, name: str):
        def keep(_module: nn.Module, _args: Any, output: Tensor) -> None:
            if self._reading:
                self._logits[name] = output
        return keep

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Keep the heads' outputs of the forward run inside this block, for ``take()``."""
        self._logits, self._reading = {}, True
        try:
            yield
        finally:
            self._reading = False

    def take(self) -> tuple[Tensor, Tensor] | None:
        """(class head, distillation head) of the last forward read, or None; nothing is kept after."""
        logits, self._logits = self._logits, {}
        return (logits["cls"], logits["dist"]) if len(logits) == 2 else None

    def remove(self) -> None:
        """Take the hooks off the student (the trained model is then as timm built it)."""
        for handle in self._handles:
            handle.remove()


def timm_has_distillation_head(timm_model: nn.Module | None) -> bool:
    """A timm model with a distillation head beside its class head (DeiT's distilled models, LeViT;
    not every model named "distilled")."""
    return isinstance(getattr(timm_model, "head_dist", None), nn.Module) and hasattr(timm_model, "head")


def has_distillation_head(student: nn.Module) -> bool:
    """Whether the student returns distillation logits: transformers' ``*WithTeacher`` classes, or a
    timm model with ``head_dist`` (whose outputs ``DistilledHeads`` reads)."""
    return type(student).__name__.endswith("WithTeacher") or DistilledHeads.applies(student)
