"""Every trainable weight of the distillation model must be in the optimizer, and reached.

Adapters and loss projectors live in the ``DistillationModel``, not in the student, and a loss or
adapter may create weights in its first forward: either way, weights the optimizer does not hold
keep their random start, silently, and a checkpoint of them would not resume. ``check_optimizer``
checks an optimizer a caller built, before training; ``LateParameterCheck`` checks Trainer's own
after the first optimizer step of each ``train()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from ..errors import ModelError, first_names
from ..modeling.distillation_model import DistillationModel

logger = logging.getLogger(__name__)


def check_optimizer(model: DistillationModel, optimizers: Any) -> None:
    """An optimizer the caller built must hold every trainable weight of the distillation model.

    Adapters and projectors (``srd``'s, ``patch_match``'s) live in the ``DistillationModel``, not in
    the student: an optimizer over ``student.parameters()`` trained the student and left them at
    their random start, with no error.
    """
    optimizer = optimizers[0] if isinstance(optimizers, (tuple, list)) and optimizers else None
    missing = _not_optimized(model, optimizer) if optimizer is not None else []
    if missing:
        raise ModelError(
            f"the optimizer given does not train {len(missing)} trainable weight(s) of the distillation model "
            f"({first_names(missing)}): they would keep their random start. Build it over the DistillationModel's "
            "parameters (build_distillation_model(...).parameters(), then pass that model), or leave optimizers unset")


def check_lazy_parameters(model: DistillationModel) -> None:
    """Weights of lazy modules (``torch.nn.LazyLinear``...) get their shape in the first forward,
    after the optimizer is built: the way around making weights in the first forward, and the run
    failed with a traceback as training started (transformers counts the parameters first)."""
    lazy = [name for name, p in model.named_parameters() if isinstance(p, torch.nn.parameter.UninitializedParameter)]
    if lazy:
        raise ModelError(
            f"{len(lazy)} weight(s) of lazy modules have no shape before the first forward ({first_names(lazy)}), so "
            "the optimizer could not hold them. Build them with their sizes: a loss's in its setup() (LossContext has "
            "the pooled widths), an adapter's from the features' shapes it is built with, a model's before it is given")


def check_late_parameters(model: DistillationModel, optimizer: Any) -> None:
    """After the first forward: weights a loss or adapter created there, after Trainer built its
    optimizer, would never be trained (and a checkpoint of them would not resume)."""
    late = _not_optimized(model, optimizer)
    if late:
        raise ModelError(
            f"{len(late)} weight(s) appeared during the first forward, after the optimizer was built, and would never "
            f"be trained: {first_names(late)}. Create a loss's weights in its setup() (LossContext has the pooled "
            "widths); a projection between paired hidden states belongs in an adapter, which is built with both features' "
            "shapes (hf_rcka.registry.ADAPTERS)")


def warn_unreached_weights(model: DistillationModel) -> None:
    """After the first backward: weights of a loss or adapter that got no gradient (see
    ``DistillationModel.unreached_weights``). A warning, not a refusal: a loss of one's own may
    start reading its weights only after a warm-up."""
    unreached = model.unreached_weights()
    if unreached:
        logger.warning(
            "!!! %d trainable weight(s) got no gradient on the first training step and will not train unless a later "
            "step reaches them: %s. A loss that applies its weights under torch.no_grad() or in "
            "reduce_teacher_feature (run with the teacher's forward, under no_grad), or detaches their result, leaves "
            "them at their random start: apply them to the student's side, in term() or terms()",
            len(unreached), first_names(unreached))


class LateParameterCheck(TrainerCallback):
    """Runs ``check_late_parameters`` once per ``train()``, after its first optimizer step: the
    first forward of training has run by then, and the callback is handed the optimizer
    (``compute_loss`` may run before ``train()`` has built one); and ``warn_unreached_weights``
    just before that step, while the gradients are there.

    Args:
        model: returns the distillation model (looked up when needed: wrappers may replace it).
    """

    def __init__(self, model: Callable[[], DistillationModel]) -> None:
        self.model, self.pending, self.pending_reach = model, True, True

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.pending = self.pending_reach = True

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # noqa: D102
        if self.pending_reach:
            self.pending_reach = False
            # a layer-wise optimizer steps and clears each weight's gradient in the backward's hooks: none
            # is left to look at here, and every weight would be said unreached
            if state.is_world_process_zero and _layerwise_weights(optimizer) is None:
                warn_unreached_weights(self.model())

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):  # noqa: D102
        if self.pending and optimizer is not None:
            self.pending = False
            check_late_parameters(self.model(), optimizer)


def _layerwise_weights(optimizer: Any) -> dict | None:
    """A layer-wise optimizer's (Trainer's LayerWiseDummyOptimizer, maybe inside accelerate's wrapper)
    per-weight optimizers, by weight; None for another optimizer."""
    layerwise = getattr(getattr(optimizer, "optimizer", optimizer), "optimizer_dict", None)
    return layerwise if isinstance(layerwise, dict) else None


def _not_optimized(model: torch.nn.Module, optimizer: Any) -> list[str]:
    # a layer-wise optimizer (GaLore's, APOLLO's: Trainer's LayerWiseDummyOptimizer, inside accelerate's
    # wrapper) holds one dummy tensor; its weights are the keys of its per-weight optimizers
    layerwise = _layerwise_weights(optimizer)
    if layerwise is not None:
        held = {id(p) for p in layerwise}
    else:
        held = {id(p) for group in optimizer.param_groups for p in group.get("params", ())}
    if not held:  # one that keeps its real ones elsewhere still
        return []
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held]


__all__ = ["LateParameterCheck", "check_late_parameters", "check_lazy_parameters", "check_optimizer",
           "warn_unreached_weights"]
