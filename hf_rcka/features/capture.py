"""Take only the hidden states a distillation uses, not every layer's.

``output_hidden_states=True`` returns every layer: the teacher's (computed without gradients) all
stay alive until the loss, and TimmWrapper builds a (B, C, H, W) copy of every ViT block's tokens.
When four pairs are distilled, four states are needed. :class:`HiddenStateCapture` finds, once,
the cheapest way to get exactly those from one model, and checks it against the full output:

* ``"timm_tokens"``: a timm ViT asked for ``forward_intermediates(indices=..., output_fmt="NLC")``
  hands out its blocks' patch tokens as views; each is returned as the (B, C, H, W) map that
  ``output_hidden_states`` gives, but as a permuted view of those tokens. timm's own NCHW output
  copies every requested block into a contiguous map, and the backward pays for that copy again;
  the consumers (adapters, ``sample_rows``) read either layout;
* ``"timm"``: TimmWrapper models take a list of indices for ``output_hidden_states`` and pass it
  to timm's ``forward_intermediates(indices=...)`` (timm's own feature extraction);
* ``"hooks"``: a forward hook on the module whose output *is* the hidden state (same tensor),
  found by one probe forward with every module hooked (HF ViT layers, CNN stages);
* ``"all"``: the full ``output_hidden_states=True`` (e.g. Swin's reshaped states, which are copies
  no module returns), kept when nothing cheaper reproduces the states exactly.

:class:`PooledCapture` takes the classifier's input (the pooled feature) the same way, and
:class:`ForwardCapture` runs a model once and returns outputs, states and pooled feature together
as a :class:`Captured` value: hooks write into a container owned by that one call, so no tensor
stays on a module or wrapper between forwards.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .hidden_states import (
    Probe, classifier_of, eval_no_grad, first_tensor, forward_with_hidden_states, hidden_states_of, probe_forward,
)
from .layout import tokens_to_fmap

logger = logging.getLogger(__name__)


class HiddenStateCapture:
    """Runs a model and returns its logits output plus the hidden states at ``indices`` only.

    Args:
        model: an HF image classifier or ``TimmWrapperForImageClassification``.
        indices: non-negative hidden-state indices (as in ``hidden_states_of``) the pairs use.
        probe_pixels: a (B, 3, H, W) input of the training size, for the one-off probe, or a
            :class:`~hf_rcka.features.hidden_states.Probe` of the model as it runs now (its forward
            then serves as the reference the modes are checked against; see :meth:`_choose`).
        prefer_hooks: try ``"hooks"`` first, for a caller that prepares states where they are made
            (see ``__call__``); only hooks see a state then.
    """

    def __init__(self, model: nn.Module, indices: Sequence[int], probe_pixels: Tensor | Probe,
                 prefer_hooks: bool = False) -> None:
        self.model = model
        self.indices = sorted(set(int(i) for i in indices))
        self._states: dict[int, Any] = {}
        self._prepare: Callable[[int, Tensor], Any] | None = None
        self._grad_enabled, self._deferred = False, []
        self._active = False
        self._handles: list[Any] = []
        self._grids: dict[int, tuple[int, int]] = {}
        self.mode = self._choose(probe_pixels, prefer_hooks)
        logger.info("hidden states %s of %s taken via %s", self.indices, type(model).__name__, self.mode)

    def choose_again(self, probe_pixels: Tensor, prefer_hooks: bool = False) -> None:
        """Choose the mode anew, for a model whose forward changed since (activation checkpointing
        turned on: timm's ``checkpoint_seq`` calls a stage's blocks, never the stage, whose hook then
        sees nothing; hooks inside a reentrant checkpoint see states without gradient)."""
        self.remove()
        self.mode = self._choose(probe_pixels, prefer_hooks)
        logger.info("hidden states %s of %s now taken via %s", self.indices, type(self.model).__name__, self.mode)

    # ------------------------------------------------------------------ running

    def __call__(self, pixel_values: Tensor, prepare: Callable[[int, Tensor], Any] | None = None
                 ) -> tuple[Any, dict[int, Any]]:
        """``(outputs, {index: hidden state})`` of one forward (grad mode is the caller's).

        With ``prepare``, each state is returned as ``prepare(index, state)``, called in ``"hooks"``
        mode where the model makes the state, inside its forward (so that autograd runs the
        preparation's backward where the model's own backward reaches the state), and after the
        forward in the other modes.
        """
        if self.mode == "hooks":
            with self._capturing(prepare) as states:
                outputs = self.model(pixel_values=pixel_values)
                for i in self._deferred:  # seen without gradient (inside a reentrant checkpoint): prepared now
                    states[i] = prepare(i, states[i])
            missing = [i for i in self.indices if i not in states]
            if missing:
                raise RuntimeError(f"forward hooks did not capture hidden states {missing}; the model's forward changed")
            return outputs, states
        outputs, states = self._states_after_forward(pixel_values)
        return outputs, states if prepare is None else {i: prepare(i, state) for i, state in states.items()}

    def _states_after_forward(self, pixel_values: Tensor) -> tuple[Any, dict[int, Tensor]]:
        if self.mode == "timm_tokens":
            outputs = self.model(pixel_values=pixel_values, output_hidden_states=list(self.indices), output_fmt="NLC")
            return outputs, {i: tokens_to_fmap(t, self._grids[i]) for i, t in zip(self.indices, outputs.hidden_states)}
        if self.mode == "timm":
            outputs = self.model(pixel_values=pixel_values, output_hidden_states=list(self.indices))
            return outputs, dict(zip(self.indices, outputs.hidden_states))
        outputs = forward_with_hidden_states(self.model, pixel_values)
        states = hidden_states_of(outputs)
        return outputs, {i: states[i] for i in self.indices}

    @contextmanager
    def _capturing(self, prepare: Callable[[int, Tensor], Any] | None = None) -> Iterator[dict[int, Any]]:
        """Hooks record into a fresh dict for one forward; it is the caller's, never kept here."""
        self._active, self._states, self._prepare = True, {}, prepare
        self._grad_enabled, self._deferred = torch.is_grad_enabled(), []
        try:
            yield self._states
        finally:
            self._active, self._states, self._prepare, self._deferred = False, {}, None, []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ choosing a mode

    def _choose(self, probe: Tensor | Probe, prefer_hooks: bool) -> str:
        """The first mode whose states equal the full ``output_hidden_states=True`` ones: those of
        the probe's forward, run here on the pixels unless a :class:`Probe` is given (one forward
        then serves the caller's description of the states and this choice)."""
        timm = getattr(self.model, "timm_model", None) is not None
        if not isinstance(probe, Probe):
            # which module makes which state is recorded by the reference forward where hooks are
            # tried before the timm modes; a timm model reaches them rarely, and pays a forward then
            probe = probe_forward(self.model, probe, every_module=prefer_hooks or not timm)
        pixels, expected = probe.pixels, {i: probe.states[i] for i in self.indices}
        with eval_no_grad(self.model):
            if prefer_hooks and self._hooks_match(probe, expected):
                return "hooks"
            if timm:
                self._grids = {i: tuple(state.shape[-2:]) for i, state in expected.items()}
                maps = all(state.dim() == 4 for state in expected.values())  # tokens can only stand in for maps
                for mode in ("timm_tokens", "timm") if maps else ("timm",):
                    if self._matches(mode, pixels, expected):
                        return mode
            if not prefer_hooks and self._hooks_match(probe, expected):
                return "hooks"
        return "all"

    def _hooks_match(self, probe: Probe, expected: dict[int, Tensor]) -> bool:
        modules = self._find_modules(probe)
        if modules is not None:
            self._install_hooks(modules)
            if self._matches("hooks", probe.pixels, expected):
                return True
            self.remove()
        return False

    def _matches(self, mode: str, pixels: Tensor, expected: dict[int, Tensor]) -> bool:
        self.mode = mode
        try:
            _, states = self(pixels)
        except (AssertionError, RuntimeError, TypeError, ValueError) as error:  # timm asserts formats
            logger.debug("hidden-state mode %s failed: %s", mode, error)
            return False
        return states.keys() == expected.keys() and all(
            states[i].shape == expected[i].shape and torch.equal(states[i], expected[i]) for i in expected
        )

    def _find_modules(self, probe: Probe) -> dict[int, nn.Module] | None:
        """For each index, the module whose (first) output is that hidden state's very tensor, as
        the probe recorded them (a forward of its own where it recorded no module).

        Among several (a block, its container, an identity after it), the outermost is taken, and
        among siblings the first to finish, which is the producer. Modules called more than once
        per forward are ignored (their hook could not tell the calls apart).
        """
        if probe.modules is None:
            probe = probe_forward(self.model, probe.pixels, every_module=True)
        found = {}
        for index in self.indices:
            state = probe.states[index]
            # a tensor changed in place after the module returned it (BatchNorm's output, then an
            # inplace ReLU) is not yet the state when the hook sees it
            names = [(n, m) for n, m, t, v in probe.modules
                     if probe.calls[n] == 1 and _same_tensor(t, state) and t._version == v]
            outer = [(n, m) for n, m in names if not any(n.startswith(o + ".") for o, _ in names)]
            if not outer:
                return None
            found[index] = outer[0][1]
        return found

    def _prepared(self, index: int, state: Tensor) -> Any:
        """``prepare(index, state)`` inside the forward. What it saves for its backward is kept as it
        is: inside a region of activation checkpointing, the region's own saved-tensor hooks would
        count it, and its recomputation (this hook off by then) would save fewer tensors than the
        forward did, which the checkpoint refuses. (Under torch.compile the hooks' context would
        break the student's graph at every hooked state, so a compiled forward goes without it. The
        context also passes over an outer one such as ``save_on_cpu``: what the preparation saves,
        the hidden state itself, stays where it is.)"""
        if torch.compiler.is_compiling():
            return self._prepare(index, state)
        with torch.autograd.graph.saved_tensors_hooks(_as_is, _as_is):
            return self._prepare(index, state)

    def _install_hooks(self, modules: dict[int, nn.Module]) -> None:
        for index, module in modules.items():
            def hook(_module: nn.Module, _args: Any, output: Any, index: int = index) -> None:
                if not self._active:
                    return
                state = first_tensor(output)
                if self._prepare is not None and torch.is_grad_enabled() == self._grad_enabled:
                    state = self._prepared(index, state)
                elif self._prepare is not None:
                    # a reentrant checkpoint runs its region without gradient; the state gets the
                    # region's gradient when the region returns, so it is prepared after the forward
                    self._deferred.append(index)
                self._states[index] = state

            self._handles.append(module.register_forward_hook(hook))


class PooledCapture:
    """The classifier's input of one forward: the pooled penultimate feature (B, d).

    Pooled-feature losses (EKT, SRD) need the tensor a head receives, which no model output
    carries. A forward pre-hook on the head (:func:`classifier_of`) stays installed, since adding
    and removing hooks inside a compiled forward would break its graph, but it records only while
    :meth:`capturing` is open, into a list that belongs to that one call: nothing outlives it.
    """

    def __init__(self, model: nn.Module) -> None:
        self._record: list[Tensor] | None = None
        self._handle = classifier_of(model).register_forward_pre_hook(self._hook)

    def _hook(self, _module: nn.Module, args: tuple) -> None:
        if self._record is not None:
            self._record.append(args[0].flatten(1))  # (B, C, 1, 1) for some CNN heads

    @contextmanager
    def capturing(self) -> Iterator[list[Tensor]]:
        """A list the head's inputs of the forwards run inside the block are appended to."""
        record: list[Tensor] = []
        self._record = record
        try:
            yield record
        finally:
            self._record = None

    def remove(self) -> None:
        self._handle.remove()


@dataclass
class Captured:
    """What one forward of a model gives the losses.

    ``outputs``: the model's own output (logits...); ``states``: the used hidden states by index,
    or what the caller's ``prepare`` made of them; ``pooled``: the classifier's input (B, d), or
    ``None`` when it was not asked for.
    """

    outputs: Any
    states: dict[int, Any] = field(default_factory=dict)
    pooled: Tensor | None = None


class ForwardCapture:
    """One model's forward plus the features its losses use, returned by value per call.

    Args:
        model: an HF image classifier or ``TimmWrapperForImageClassification``.
        indices: hidden states to return (see :class:`HiddenStateCapture`); empty for none.
        probe_pixels: a (B, 3, H, W) input of the training size, or a probe of the model made on
            one (see :class:`HiddenStateCapture`); needed when ``indices`` is set.
        pooled: also return the classifier's input (see :class:`PooledCapture`).
    """

    def __init__(self, model: nn.Module, indices: Sequence[int] = (), probe_pixels: Tensor | Probe | None = None,
                 pooled: bool = False, prefer_hooks: bool = False) -> None:
        self.model = model
        self.hidden = HiddenStateCapture(model, indices, probe_pixels, prefer_hooks) if indices else None
        self.pooled = PooledCapture(model) if pooled else None

    def __call__(self, pixel_values: Tensor, prepare: Callable[[int, Tensor], Any] | None = None) -> Captured:
        """One forward; ``prepare`` turns each hidden state (see :meth:`HiddenStateCapture.__call__`)."""
        with self.pooled.capturing() if self.pooled is not None else nullcontext([]) as record:
            if self.hidden is not None:
                outputs, states = self.hidden(pixel_values, prepare)
            else:
                outputs, states = self.model(pixel_values=pixel_values), {}
        return Captured(outputs, states, record[-1] if record else None)

    def remove(self) -> None:
        for part in (self.hidden, self.pooled):
            if part is not None:
                part.remove()


def _as_is(tensor: Tensor) -> Tensor:
    return tensor


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return (a is b) or (
        a.shape == b.shape and a.stride() == b.stride() and a.data_ptr() == b.data_ptr() and a.dtype == b.dtype
    )


__all__ = ["Captured", "ForwardCapture", "HiddenStateCapture", "PooledCapture"]
