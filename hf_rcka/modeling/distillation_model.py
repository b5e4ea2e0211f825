"""``DistillationModel``: the one module the Trainer trains (student + frozen teacher + adapters).

Everything that must be trained, synchronised across ranks, autocast, zeroed and clipped has to
live inside ``Trainer.model``: adapters or loss projectors kept elsewhere would drift apart across
data-parallel ranks and accumulate gradients forever. So this wrapper holds the student, the
frozen teacher, one adapter per feature pair and the loss modules (whose projectors and class
centres are state), runs both models in its ``forward`` and returns the student's logits, the
weighted loss terms and their sum.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..errors import ModelError, first_names
from ..features.capture import Captured, ForwardCapture
from ..features.hidden_states import Probe, describe_hidden_states, pooled_dim, probe_forward
from ..features.pairing import FeaturePair
from ..adapters.base import FeatureAdapter
from .distilled_heads import DistilledHeads, has_distillation_head
from .activation_checkpoints import checkpoints_layers, inputs_need_gradients, say_options_timm_ignores
from .recomputed_norms import keep_statistics_in_recomputation
from .feature_adapters import adapters_for_losses
from ..models.timm_models import check_timm_args, saved_model_args
from ..recipe_specs import unused_pairs_message
from ..losses import IGNORE_INDEX, DistillationLoss, LossContext, LossInputs, reads_teacher_logits, weigh_terms
from .teacher_inputs import InputStats, needed_transform, planned_input_size
from .sharded_state import load_full_state_dict
from .teacher_runtime import TeacherRuntime, runs_as_given

logger = logging.getLogger(__name__)

DISTILLATION_STATE_NAME = "distillation_state.safetensors"


def counted_top1(logits: torch.Tensor, labels: torch.Tensor,
                 rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 accuracy over the rows not labelled ``IGNORE_INDEX`` (unreadable images' stand-ins,
    the repeats that even out data-parallel evaluation), NaN where none is, and their number, a
    0-dim device tensor (``rows``, when the caller has counted them already)."""
    if rows is None:
        rows = (labels != IGNORE_INDEX).sum()
    # hits over all rows: an ignored row's label never equals an argmax (no boolean index, a sync of its own)
    return (logits.argmax(-1) == labels).sum().float() / rows, rows


@dataclass
class DistillationOutput(ModelOutput):
    """``loss``: the weighted sum of every loss term, what the optimiser minimises.

    ``logits``: the student's inference logits (both heads averaged for DeiT).

    ``loss_terms``: every term weighted, keyed by term name (a loss's registry name, or e.g.
    ``rcka_intra`` and ``rcka_inter`` for a loss with several terms); they add up to ``loss``.
    ``loss`` and ``loss_terms`` are ``None`` when the batch has no labels (prediction), so the
    Trainer only collects the logits.

    ``teacher_logits``: in evaluation, the teacher's logits where the losses ran it (the model
    card's teacher accuracy is counted from them, not from a pass of its own).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    teacher_logits: torch.Tensor | None = None


class DistillationModel(nn.Module):
    """Student, frozen teacher, adapters and loss modules, run together in ``forward``.

    Args:
        student: any transformers image classifier (HF or TimmWrapper).
        teacher: a classifier over the same labels (any classes when no loss reads its logits), or
            ``None`` for plain supervised training.
        losses: the loss modules; ``forward`` weighs their terms by each loss's ``term_weights``.
        feature_pairs: ``"auto"``, a list of ``{student_layer, teacher_layer, adapter, ...}`` or
            ``FeaturePair``; only used when a loss needs hidden states.
        student_input / teacher_input: size and normalisation each model expects; when they
            differ the teacher's input is re-normalised and resized from the student's batch.
        teacher_dtype: ``"bfloat16"``/``"float16"`` keeps the teacher's weights in half precision.
        teacher_channels_last: NHWC weights and inputs for a convolutional teacher.
    """

    main_input_name = "pixel_values"

    def __init__(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel | None = None,
        losses: Sequence[DistillationLoss] = (),
        feature_pairs: str | Sequence[dict] | Sequence[FeaturePair] | None = "auto",
        student_input: InputStats | None = None,
        teacher_input: InputStats | None = None,
        teacher_dtype: str | torch.dtype | None = None,
        teacher_channels_last: bool = True,
    ) -> None:
        super().__init__()
        if not losses:
            raise ValueError("DistillationModel needs at least one loss (e.g. ce)")
        self.student = student
        self.teacher = teacher
        self.losses = nn.ModuleDict(_by_name(losses))
        # as given: a trainer handed this model refuses arguments that ask for other settings
        self.built_with = {"feature_pairs": "auto" if feature_pairs is None else feature_pairs,
                           "teacher_dtype": teacher_dtype, "teacher_channels_last": teacher_channels_last}
        self._check_teacher()
        self._check_student_heads()
        self.teacher_transform = needed_transform(student_input, teacher_input)
        if self.teacher_transform is not None:  # a caller may pass models already on their device
            self.teacher_transform.to(next(student.parameters()).device)
        self.feature_pairs: list[FeaturePair] = []
        self.adapters = nn.ModuleList()
        self.left_out: frozenset[str] = frozenset()  # losses not computed (see leave_out_fresh_losses)
        self.teacher_order: torch.Tensor | None = None  # see reorder_teacher_logits
        # a teacher of other classes than the run's, whose features alone are distilled: its accuracy
        # on the run's labels means nothing (set by the trainer's label check; here, not on the
        # teacher object, which another trainer may share and judge otherwise)
        self.teacher_other_classes = False
        self._student_only = False  # see without_teacher
        self._norm_hooks: list = []  # see activation_checkpointing_enable
        self._input_hooks: list = []  # see follow_student_checkpointing
        self._wrapper_norm_hooks: list = []  # see keep_statistics_in_wrapped_checkpoints
        probes: dict[str, Probe | torch.Tensor] = {}  # the description's forwards, which the captures' choice reuses
        if self.needs_features:  # may refuse the pairs: before the teacher is frozen and cast below
            probes = self._build_adapters(feature_pairs, student_input)
        elif feature_pairs not in (None, "auto"):
            logger.warning(unused_pairs_message())
        readers = [name for name, loss in self.losses.items() if loss.needs_features]
        # the loss that may reduce the teacher's sides: one loss reading the pairs gets what it asks for
        self._reducing_loss = readers[0] if len(readers) == 1 else None
        self.teacher_runtime = None
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            self.teacher_runtime = TeacherRuntime(teacher, teacher_dtype, teacher_channels_last)
        self._captures = self._build_captures(probes)
        # A student with a distillation head: deit_token trains that head and the task loss the class
        # head (DeiT's recipe); without deit_token the task loss reads the heads' average, the logits the
        # model predicts with, so that no head stays untrained in the exported average.
        self.split_heads = any("distillation_logits" in loss.requires for loss in losses)
        timm_heads = self.split_heads and DistilledHeads.applies(student)
        self._distilled_heads = DistilledHeads(student) if timm_heads else None
        context = LossContext(
            num_labels=student.config.num_labels,
            student_pooled_dim=pooled_dim(student) if self.needs_pooled else None,
            teacher_pooled_dim=pooled_dim(teacher) if self.needs_pooled else None,
        )
        for loss in self.losses.values():
            loss.setup(context)
        # The hooks live on the caller's models: they go when this wrapper does, so models reused by
        # later runs (a notebook) do not pile them up. The teacher's state-dict hook stays: it saves
        # the channels_last teacher in the standard layout for as long as the teacher is in it.
        hooked = [*self._captures.values(), *([self._distilled_heads] if self._distilled_heads else [])]
        # _norm_hooks and _input_hooks are filled in place later (follow_student_checkpointing): removed with the rest
        weakref.finalize(self, _remove_hooks, [*hooked, _Handles(self._norm_hooks), _Handles(self._input_hooks),
                                                 _Handles(self._wrapper_norm_hooks)])
        self.follow_student_checkpointing()

    # ------------------------------------------------------------------ construction

    @property
    def config(self):
        """The student's config, so Trainer and callbacks see the model being trained."""
        return self.student.config

    @property
    def needs_teacher(self) -> bool:
        return any(loss.needs_teacher for loss in self.losses.values())

    @property
    def needs_features(self) -> bool:
        return any(loss.needs_features for loss in self.losses.values())

    @property
    def needs_pooled(self) -> bool:
        return any(loss.needs_pooled for loss in self.losses.values())

    def _check_student_heads(self) -> None:
        """A loss that trains a distillation head needs a student with one: it failed at the first step."""
        needing = [name for name, loss in self.losses.items() if "distillation_logits" in loss.requires]
        if needing and not has_distillation_head(self.student):
            raise ModelError(
                f"losses {needing} train a distillation head, and the student ({type(self.student).__name__}) has "
                "none: use a distilled DeiT (timm/deit_small_distilled_patch16_224, or transformers' "
                "DeiTForImageClassificationWithTeacher), or another loss (kd)")

    def _check_teacher(self) -> None:
        needing = [name for name, loss in self.losses.items() if loss.needs_teacher]
        if needing and self.teacher is None:
            raise ModelError(f"losses {needing} need a teacher: pass teacher= (teacher_model_name_or_path in a recipe)")
        if self.teacher is None:
            return
        if not needing:
            logger.warning("a teacher is given but no loss uses it; it will not be run")
        n_student, n_teacher = self.student.config.num_labels, self.teacher.config.num_labels
        if n_student != n_teacher and any(reads_teacher_logits(loss) for loss in self.losses.values()):
            raise ValueError(
                f"student predicts {n_student} classes but the teacher {n_teacher}: logit losses need the same "
                f"label set (train or fine-tune the teacher on this dataset first)"
            )

    def _probe_pixels(self, student_input: InputStats | None) -> torch.Tensor:
        """Two random images at the planned size: random, so that no two layers look alike (a
        zero image made transformers Swin's first stage equal its embedding, taken for a stem);
        seeded on their own generator, so the global random state is untouched. Two, because the
        capture's choice compares each way of taking the states with the full output by value, and
        one image would let a way that mixes up the batch's rows pass; the description reads only
        shapes and storages, which one image gives as well (see ``_build_adapters``)."""
        self._probe_size = planned_input_size(self.student, student_input)  # kept to probe again, not the tensor
        return self._probe_at(self._probe_size)

    def _probe_at(self, size: tuple[int, int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(2, 3, *size, generator=generator).to(next(self.student.parameters()).device)

    def _build_adapters(self, feature_pairs: Any, student_input: InputStats | None) -> dict[str, Probe]:
        """The feature pairs and their adapters, from one probe forward of each model; returns the
        probes of the models as they will run (the student; the teacher unless its runtime casts
        it or makes it NHWC), whose forwards the captures' choice reuses (``_build_captures``)."""
        pixels = self._probe_pixels(student_input)
        teacher_pixels = self.teacher_transform(pixels) if self.teacher_transform is not None else pixels
        shared = runs_as_given(self.teacher, self.built_with["teacher_dtype"], self.built_with["teacher_channels_last"])
        # The teacher first: a teacher probed before its runtime changes it serves the description
        # alone, on one image, and its small record is what stays alive through the student's probe,
        # which records every module's output (whether hooks are preferred is known only later).
        teacher = probe_forward(self.teacher, teacher_pixels if shared else teacher_pixels[:1],
                                every_module=shared and getattr(self.teacher, "timm_model", None) is None)
        student = probe_forward(self.student, pixels, every_module=True)
        self.feature_pairs, self.adapters = adapters_for_losses(
            feature_pairs,
            describe_hidden_states(self.student, student),
            describe_hidden_states(self.teacher, teacher),
            list(self.losses.values()),
        )
        return {"student": student, **({"teacher": teacher} if shared else {})}

    def _build_captures(self, probes: dict[str, Probe | torch.Tensor]) -> dict[str, ForwardCapture]:
        """Per model, the capture of what the losses read: the used hidden states, the pooled feature.

        The way to take the used states is chosen on the model's probe from ``_build_adapters``,
        or, for a teacher probed before its runtime cast it or made it NHWC, on the probe images
        (a tensor in ``probes``) as the teacher runs now. Each probe is let go once its model's
        choice is made (``probes`` is emptied), so that the student's forward, every module's
        output recorded, is not held through the teacher's."""
        if not (self.needs_features or self.needs_pooled):
            return {}
        if self.needs_features and "teacher" not in probes:
            probes["teacher"] = self.teacher_pixels(self._probe_at(self._probe_size))
        captures = {}
        for role, model, layers in (
            ("student", self.student, [p.student_layer for p in self.feature_pairs]),
            ("teacher", self.teacher, [p.teacher_layer for p in self.feature_pairs]),
        ):
            if model is not None:
                hooks = role == "student" and self._prepares_student_sides()
                captures[role] = ForwardCapture(model, layers, probes.pop(role, None), pooled=self.needs_pooled,
                                                prefer_hooks=hooks)
        return captures

    def _prepares_student_sides(self) -> bool:
        """Whether an adapter or the reducing loss turns a student state into something else, best
        done where the student makes it (see ``FeatureAdapter.prepare_student``)."""
        if any(type(adapter).prepare_student is not FeatureAdapter.prepare_student for adapter in self.adapters):
            return True
        reducing = self._reducer()
        return _reduces(reducing, "reduce_student_feature") and any(adapter.passes_student for adapter in self.adapters)

    def _reducer(self) -> DistillationLoss | None:
        """The loss that may reduce the pairs' sides (the only one reading them), unless left out."""
        if self._reducing_loss is None or self._reducing_loss in self.left_out:
            return None
        return self.losses[self._reducing_loss]

    # ------------------------------------------------------------------ running

    def train(self, mode: bool = True) -> "DistillationModel":
        """Train everything but the teacher, which always stays in eval mode (BN stats, dropout).

        Trainer calls this before every step: walking a large teacher's modules twice (into train
        mode, then back) cost 1.5-3 ms of host time a step, so the teacher is walked only when
        something put it in train mode.
        """
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for module in self.children():
            if module is not self.teacher:
                module.train(mode)
        if self.teacher is not None and self.teacher.training:
            self.teacher.eval()
        return self

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Checkpoint the student's layers (``activation_checkpointing: true``); the teacher keeps no
        activations to checkpoint. The hooks that capture hidden states see the recomputed forward
        only inside the backward, so the captured features are those of the first forward.

        Checkpointing changes the student's forward (timm's runs a stage's blocks, not the stage),
        so the way its hidden states are taken is chosen again, without preferring hooks: a hook
        inside a reentrant checkpoint would see a state without gradient. The recomputation inside
        the backward leaves BatchNorm's running statistics alone (``recomputed_norms``)."""
        say_options_timm_ignores(self.student, kwargs)
        self.student.activation_checkpointing_enable(**kwargs)
        self.follow_student_checkpointing(known=True)

    def follow_student_checkpointing(self, known: bool = False) -> None:
        """Once the student checkpoints its layers, however it came to: the BatchNorm hooks and the
        hidden states' capture chosen again (``activation_checkpointing_enable``).

        A student may checkpoint without the trainer's settings: turned on before it was given
        (``student.gradient_checkpointing_enable()``, timm's ``set_grad_checkpointing()``), or by an
        earlier trainer that reused it (nothing turns it off again); its BatchNorm statistics then
        took two updates a step, and the exported model normalised with them. Called as the
        wrapper is built and as training starts; ``known``: the student was just told to."""
        if not (known or checkpoints_layers(self.student)):
            return
        if not self._input_hooks:
            self._input_hooks.extend(inputs_need_gradients(self.student))
        if self._norm_hooks:
            return
        self._norm_hooks.extend(keep_statistics_in_recomputation(self.student))
        student = self._captures.get("student")
        if student is not None and student.hidden is not None:
            student.hidden.choose_again(self._probe_at(self._probe_size), prefer_hooks=False)

    def keep_statistics_in_wrapped_checkpoints(self) -> None:
        """The BatchNorm hooks alone, for a checkpoint put around the student's modules from outside:
        FSDP's ``activation_checkpointing`` wraps them in torch's non-reentrant ``checkpoint_wrapper``
        as accelerate prepares the model, which no attribute of the student says beforehand (the
        hooks stay on the norms when their block is wrapped). Layers hooked already are skipped."""
        self._wrapper_norm_hooks.extend(keep_statistics_in_recomputation(self.student))

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """The name transformers called before ``activation_checkpointing_enable`` (until its v6)."""
        kwargs["activation_checkpointing_kwargs"] = kwargs.pop("gradient_checkpointing_kwargs", None)
        self.activation_checkpointing_enable(**kwargs)

    @contextlib.contextmanager
    def without_teacher(self) -> Iterator[None]:
        """Inside the block the teacher is not run and only the losses that do not read it are computed.

        The evaluation of the second weight set (``model_ema``) measures the student alone: its
        teacher terms cost a second full teacher pass per evaluation, for numbers nobody chooses by.
        """
        self._student_only = True
        try:
            yield
        finally:
            self._student_only = False

    def teacher_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The student's batch as the teacher expects it (normalisation, size, dtype, memory format)."""
        if self.teacher_transform is not None:
            pixel_values = self.teacher_transform(pixel_values)
        return self.teacher_runtime.inputs(pixel_values) if self.teacher_runtime is not None else pixel_values

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> DistillationOutput:
        """One step's losses (training), or the evaluation's logits and losses.

        Evaluation runs without autocast, whatever the run's mixed precision: the exported model is
        float32 and ``from_pretrained`` runs it in float32, so that is what the reported accuracy
        measures (under bf16 autocast it differed from the deployed model's by a few images). Under
        FSDP mixed precision the sharded student's weights themselves compute in bf16. The teacher,
        which is not exported, keeps the run's autocast in evaluation too: in float32 a large
        teacher cost several times its training forward at every evaluation.
        """
        if self.training:
            return self._forward(pixel_values, labels)
        device = pixel_values.device.type
        # a dtype, not an autocast object: torch.compile guards on the arguments of _forward, and a
        # new object per batch recompiled the whole forward at every evaluation batch
        teacher_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        with torch.autocast(device, enabled=False):
            return self._forward(pixel_values, labels, teacher_dtype)

    def _forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None,
                 teacher_autocast: torch.dtype | None = None) -> DistillationOutput:
        with_losses = labels is not None or self.training
        teacher = None
        if self.teacher is not None and self.needs_teacher and with_losses and not self._student_only:
            # Teacher first: its transient activations peak before the student's are alive.
            precision = (torch.autocast(pixel_values.device.type, dtype=teacher_autocast)
                         if teacher_autocast is not None else contextlib.nullcontext())
            with precision:
                teacher_logits, teacher_pooled, teacher_states = self._run_teacher(pixel_values)
            # outside the teacher's precision, as the adapters' teacher work always ran
            teacher = (teacher_logits, teacher_pooled, self._teacher_sides(teacher_states))
            del teacher_states
        heads_read = self._distilled_heads.reading() if self._distilled_heads is not None else contextlib.nullcontext()
        with heads_read:
            student = self._run("student", pixel_values, with_losses, self._student_sides if teacher is not None else None)
        student_out, student_states = student.outputs, student.states
        heads = self._distilled_heads.take() if self._distilled_heads is not None else None
        logits = student_out.logits
        if labels is None and not self.training:
            return DistillationOutput(logits=logits)
        if heads is None and self.split_heads and getattr(student_out, "distillation_logits", None) is not None:
            heads = (student_out.cls_logits, student_out.distillation_logits)  # DeiTForImageClassificationWithTeacher
        task_logits, distillation_logits = heads or (logits, None)
        if not self.training:  # evaluation measures what is deployed: both heads averaged, for DeiT
            task_logits = logits
        inputs = LossInputs(
            student_logits=task_logits,
            labels=labels,
            distillation_logits=distillation_logits,
            student_pooled=student.pooled,
        )
        if teacher is not None:
            self._add_teacher(inputs, student_states, *teacher)
        if not self.training:  # an unreadable evaluation image's stand-in counts in no term
            inputs = inputs.counted_rows()
        terms, weights = {}, {}
        for name, loss in self._computed_losses():
            _add_terms(terms, weights, name, loss(inputs), loss.term_weights)
        if not terms and self._student_only:  # every loss reads the teacher: the accuracy alone
            return DistillationOutput(loss=logits.new_zeros(()), logits=logits, loss_terms={})
        total, weighted = weigh_terms(terms, weights)
        teacher_logits = teacher[0] if teacher is not None and not self.training else None
        return DistillationOutput(loss=total, logits=logits, loss_terms=weighted, teacher_logits=teacher_logits)

    def _run(self, role: str, pixel_values: torch.Tensor, capture: bool, prepare: Any = None) -> Captured:
        """One model's forward; with ``capture``, plus the hidden states and pooled feature the losses read
        (each state as ``prepare(index, state)`` makes it, when given).

        Everything comes back in the returned value: a forward without losses (prediction)
        captures nothing, and nothing is kept on the module between calls.
        """
        forward = self._captures.get(role) if capture else None
        if forward is not None:
            return forward(pixel_values, prepare)
        model = self.student if role == "student" else self.teacher
        return Captured(model(pixel_values=pixel_values))

    def _run_teacher(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[int, torch.Tensor]]:
        """Teacher logits, pooled feature and used hidden states, as tensors usable by autograd."""
        runtime = self.teacher_runtime
        with runtime.running():
            teacher = self._run("teacher", self.teacher_pixels(pixel_values), capture=True)
        states = {i: runtime.release(t) for i, t in teacher.states.items()}
        logits = self.in_student_order(runtime.release(teacher.outputs.logits))
        return logits, runtime.release(teacher.pooled), states

    def reorder_teacher_logits(self, order: Sequence[int] | None) -> None:
        """Read the teacher's logits in the student's class order from now on: ``order[i]`` is the
        teacher's logit of the student's class ``i`` (``models.labels.teacher_label_order``); None
        reads them as they are.

        Here, not on the teacher: one teacher object shared by two trainers whose students order
        the classes otherwise was re-indexed in place for the later one, and the earlier one, still
        alive, then distilled every class against another's logit, with no error.
        """
        self.teacher_order = None if order is None else torch.tensor(list(order), dtype=torch.long)

    def in_student_order(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The teacher's logits re-indexed into the student's class order (``reorder_teacher_logits``)."""
        order = self.teacher_order
        if order is None:
            return teacher_logits
        if order.device != teacher_logits.device:
            self.teacher_order = order = order.to(teacher_logits.device)
        return teacher_logits.index_select(-1, order)

    @torch.no_grad()
    def _teacher_sides(self, states: dict[int, torch.Tensor]) -> list[Any]:
        """Each feature pair's teacher side, prepared by its adapter (``prepare_teacher``) and reduced
        to what the loss reads of it (``reduce_teacher_feature``) before the student's forward, so that
        a side the adapter or the loss shrinks does not hold the full hidden state."""
        sides = [adapter.prepare_teacher(states[p.teacher_layer]) for p, adapter in zip(self.feature_pairs, self.adapters)]
        reducing = self._reducer()
        if not _reduces(reducing, "reduce_teacher_feature"):
            return sides  # (an adapter may do work to hand the reduction its side: patch_match grows a map)
        return [adapter.reduce_teacher(side, reducing.reduce_teacher_feature) for side, adapter in zip(sides, self.adapters)]

    def _student_sides(self, index: int, state: torch.Tensor) -> dict[int, Any]:
        """The student sides of the pairs (by position) that read hidden state ``index``: prepared by
        their adapters (``prepare_student``) and reduced to what the loss reads of them
        (``reduce_student_feature``). Called where the student makes the state when the capture
        hooks the module that makes it, so that autograd runs their backward steps where the
        student's own backward reaches the state (see ``FeatureAdapter.prepare_student``)."""
        reducing = self._reducer()
        reduce = None if reducing is None else reducing.reduce_student_feature
        sides = {}
        for k, (pair, adapter) in enumerate(zip(self.feature_pairs, self.adapters)):
            if pair.student_layer == index:
                side = adapter.prepare_student(state)
                sides[k] = _reduced(reduce, side) if reduce is not None and adapter.passes_student else side
                if torch.is_grad_enabled() and state.requires_grad and not _carries_grad(sides[k]):
                    raise RuntimeError(
                        f"feature pair {k}: the student's side came out of {type(adapter).__name__}.prepare_student "
                        f"or {self._reducing_loss}'s reduce_student_feature without a gradient, so the feature loss "
                        "would not train the student; a student side must keep the hidden state's gradient"
                    )
        return sides

    def _add_teacher(self, inputs: LossInputs, student_states: dict[int, dict[int, Any]], teacher_logits: torch.Tensor,
                     teacher_pooled: torch.Tensor | None, teacher_sides: list[Any]) -> None:
        inputs.teacher_logits = teacher_logits
        inputs.teacher_pooled = teacher_pooled
        if student_states:
            pairs = [
                _pair(adapter, student_states[p.student_layer][k], side)
                for k, (p, adapter, side) in enumerate(zip(self.feature_pairs, self.adapters, teacher_sides))
            ]
            inputs.student_features = tuple(s for s, _ in pairs)
            inputs.teacher_features = tuple(t for _, t in pairs)

    def _computed_losses(self) -> Iterator[tuple[str, DistillationLoss]]:
        """The losses a forward computes: not those left out (``leave_out_fresh_losses``), nor, in
        the student-only pass (``without_teacher``), those that read the teacher."""
        for name, loss in self.losses.items():
            if name not in self.left_out and not (self._student_only and loss.needs_teacher):
                yield name, loss

    def check_training_terms(self, weighted: Mapping[str, torch.Tensor]) -> None:
        """Refuse a weighted training term without a gradient (a loss of one's own that detaches its
        input, reads it through ``.item()``, computes under ``no_grad`` or returns a constant): it
        trains nothing, while the run logs it and the card lists it as if it had; and say which
        weighted terms a loss did not return. The trainer calls this on the first training step's
        terms, outside the model's (possibly compiled) forward."""
        for name, loss in self._computed_losses():
            absent = sorted(term for term, weight in loss.term_weights.items() if weight and term not in weighted)
            if absent:
                logger.warning("loss %r returned no %s on the first training step, though its term_weights weigh "
                               "it: the card lists it, and nothing trains or logs it", name, " or ".join(absent))
            dead = sorted(term for term, weight in loss.term_weights.items()
                          if weight and term in weighted and not weighted[term].requires_grad)
            if dead:
                raise ModelError(f"loss {name!r} returned training term(s) {dead} without a gradient: they would "
                                 "train nothing. Either the student's weights they read are all frozen "
                                 "(requires_grad False), or the loss cut its tensors off the graph (.detach(), "
                                 ".item() or torch.no_grad()) or returns a constant")

    def unreached_weights(self) -> list[str]:
        """The trainable weights of the computed losses and of the adapters they read that hold no
        gradient after a training backward: applied under ``no_grad`` (a loss's
        ``reduce_teacher_feature``, which runs with the teacher's forward) or cut off the graph,
        they keep their random start while every term trains. The student's own unused weights
        (a pooler no head reads) are not looked at; nor are these under ``torch.compile``, which
        hands unreached weights a zero gradient."""
        computed = dict(self._computed_losses())
        named = [(f"losses.{name}.{p}", w) for name, loss in computed.items() for p, w in loss.named_parameters()]
        if any(loss.needs_features for loss in computed.values()):
            named += [(f"adapters.{p}", w) for p, w in self.adapters.named_parameters()]
        return [name for name, weight in named if weight.requires_grad and weight.grad is None]

    @torch.no_grad()
    def teacher_accuracy(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy of the teacher on one batch, through the same input path as training.

        Rows labelled ``IGNORE_INDEX`` (stand-ins for unreadable images) are not counted.
        """
        logits = self.in_student_order(self.teacher(pixel_values=self.teacher_pixels(pixel_values)).logits)
        return float(counted_top1(logits, labels)[0])

    def leave_out_fresh_losses(self) -> list[str]:
        """Stop computing the losses that read weights or statistics trained with the run but not
        saved with the student: a loss's own (srd's projector, kernel_transfer's class centres) and
        the feature adapters (for a loss that reads features). Loaded from an exported student they
        are fresh, and their values would describe nothing the run trained. Returns their names;
        when they are all there is to compute, they are kept (a loss needs a term) and ``left_out``
        stays empty.
        """
        adapted = any(adapter.state_dict() for adapter in self.adapters)
        fresh = [name for name, loss in self.losses.items() if loss.state_dict() or (adapted and loss.needs_features)]
        if len(fresh) < len(self.losses):
            self.left_out = frozenset(fresh)
        return fresh

    # ------------------------------------------------------------------ checkpoints

    def distillation_state_dict(self, gathered: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Adapters and loss state (projectors, class centres): what a checkpoint adds to the student.

        Args:
            gathered: the wrapper's full state dict as the Trainer gathered it under FSDP; the
                modules' own tensors are shards then, which cannot be written as they are.
        """
        parts = self._distillation_parts()
        if gathered is not None:
            state = {k: v for k, v in gathered.items() if k.startswith(tuple(parts))}
        else:
            state = {f"{prefix}{k}": v for prefix, module in parts.items() for k, v in module.state_dict().items()}
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def trained_parts(self) -> nn.ModuleDict:
        """What training updates, the teacher left out: the student and the distillation state,
        under the names ``student``, ``adapters`` and ``losses`` (a view: nothing is copied)."""
        return nn.ModuleDict({"student": self.student, **{k.rstrip("."): v for k, v in self._distillation_parts().items()}})

    def _distillation_parts(self) -> dict[str, nn.Module]:
        """What a checkpoint adds to the student, by state-dict prefix."""
        return {"adapters.": self.adapters, "losses.": self.losses}

    def save_distillation_state(self, directory: str, gathered: dict[str, torch.Tensor] | None = None) -> None:
        state = self.distillation_state_dict(gathered)
        if state:
            save_file(state, os.path.join(directory, DISTILLATION_STATE_NAME), metadata={"format": "pt"})

    def load_checkpoint(self, directory: str) -> None:
        """Restore student weights and distillation state from a checkpoint folder, exactly.

        The student is read back through ``from_pretrained`` (which undoes the key renaming that
        transformers 5.x applies on save for ViT-family models) and copied in strictly, so a
        checkpoint that restores nothing fails loudly instead of silently. Under FSDP2 each
        rank keeps its shard of every tensor.
        """
        loaded, info = type(self.student).from_pretrained(
            directory, config=_checkpoint_config(type(self.student), directory), use_safetensors=True,  # never a pickle
            dtype=next(self.student.parameters()).dtype, output_loading_info=True,
        )
        # from_pretrained fills what the file lacks with fresh random values, which the strict copy
        # below would take as restored (a checkpoint stripped of a layer resumed with it random)
        absent = sorted(key for key in info.get("missing_keys", ()) if not key.endswith("num_batches_tracked"))
        unused = sorted(info.get("unexpected_keys", ())) + sorted(str(k[0]) for k in info.get("mismatched_keys", ()))
        if absent or unused:
            raise KeyError(f"{directory} does not fit this run's student: its model.safetensors lacks "
                           f"{first_names(absent) or 'nothing'} and has {first_names(unused) or 'nothing'} that the "
                           "student lacks or holds in other shapes")
        load_full_state_dict(self.student, loaded.state_dict(), "student")
        del loaded
        path = os.path.join(directory, DISTILLATION_STATE_NAME)
        state = load_file(path) if os.path.isfile(path) else {}
        parts = self._distillation_parts()
        if not state and any(module.state_dict() for module in parts.values()):
            raise FileNotFoundError(
                f"{directory} has no {DISTILLATION_STATE_NAME}: it is not a checkpoint of this distillation "
                f"(adapters/loss state cannot be restored)"
            )
        for prefix, module in parts.items():
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            load_full_state_dict(module, part, prefix.rstrip("."))


def _by_name(losses: Sequence[DistillationLoss]) -> dict[str, DistillationLoss]:
    """The losses keyed by registered name; two under one name would leave one of them out."""
    named: dict[str, DistillationLoss] = {}
    for loss in losses:
        if loss.registry_name in named:
            raise ValueError(f"two losses are registered as {loss.registry_name!r}; give each its own name "
                             f"(a subclass registered under another name)")
        named[loss.registry_name] = loss
    return named


def _add_terms(terms: dict[str, torch.Tensor], weights: dict[str, float], loss_name: str, new_terms: Any,
               new_weights: Mapping[str, float]) -> None:
    """Add one loss's terms; a term named like an earlier loss's would replace it in the total."""
    if not isinstance(new_terms, Mapping):
        raise TypeError(f"loss {loss_name!r} returned {type(new_terms).__name__}, not a dict of terms: implement "
                        "term() or terms() and leave forward() to DistillationLoss")
    clash = sorted(set(new_terms) & set(terms))
    if clash:
        raise ValueError(f"loss {loss_name!r} returns terms {clash}, which another loss already returns: "
                         "term names must be unique across the losses")
    terms.update(new_terms)
    weights.update(new_weights)


def _reduces(loss: DistillationLoss | None, reduction: str) -> bool:
    """Whether ``loss`` defines its own ``reduction`` (the base's keeps every side whole)."""
    return loss is not None and getattr(type(loss), reduction) is not getattr(DistillationLoss, reduction)


def _reduced(reduce: Any, side: Any) -> Any:
    reduced = reduce(side)
    return side if reduced is None else reduced


def _carries_grad(side: Any) -> bool:
    """Whether a prepared side (a tensor, or a tuple or object holding tensors) has a tensor with gradient."""
    if isinstance(side, torch.Tensor):
        return side.requires_grad
    parts = side if isinstance(side, (tuple, list)) else vars(side).values() if hasattr(side, "__dict__") else ()
    return any(_carries_grad(part) for part in parts)


def _pair(adapter: nn.Module, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pair = adapter(student, teacher)
    if not (isinstance(pair, tuple) and len(pair) == 2):
        raise TypeError(f"adapter {type(adapter).__name__} must return (student, teacher), got {type(pair).__name__}")
    return pair


class _Handles:
    """A list of hook handles, filled after construction, removed as one part."""

    def __init__(self, handles: list) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _remove_hooks(hooked: list[Any]) -> None:
    for part in hooked:
        part.remove()


def _checkpoint_config(model_class: type, directory: str) -> Any:
    """The checkpoint's config, with the timm arguments a loaded model may not set refused: a
    ``checkpoint_path`` in its ``model_args`` would have timm read a file outside the checkpoint."""
    config = model_class.config_class.from_pretrained(directory)
    if getattr(config, "model_args", None):
        check_timm_args(config.architecture, saved_model_args(config))
    return config
