"""``DistillationModel``: the one module the Trainer trains (student + frozen teacher + adapters).

Everything that must be trained, synchronised across ranks, autocast, zeroed and clipped has to
live inside ``Trainer.model``: adapters or loss projectors kept elsewhere would drift apart across
data-parallel ranks and accumulate gradients forever. So this wrapper holds the student, the
frozen teacher, one adapter per feature pair and the loss modules (whose projectors and class
centres are state), runs both models in its ``forward`` and returns the student's logits, the
weighted loss terms and their sum.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..adapters import build_adapter
from ..features.capture import HiddenStateCapture
from ..features.hidden_states import auto_feature_pairs, classifier_of, describe_hidden_states, pooled_dim, resolve_layer
from ..features.layout import FeatureSpec
from ..losses import DistillationLoss, LossContext, LossInputs, weigh_terms
from .teacher_inputs import InputStats, TeacherInputTransform
from .teacher_runtime import TeacherRuntime

logger = logging.getLogger(__name__)

DISTILLATION_STATE_NAME = "distillation_state.safetensors"


@dataclass
class FeaturePair:
    """One student hidden state distilled from one teacher hidden state through an adapter."""

    student_layer: int
    teacher_layer: int
    adapter: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass
class DistillationOutput(ModelOutput):
    """``loss``: the weighted sum of every loss term, what the optimiser minimises.

    ``logits``: the student's inference logits (both heads averaged for DeiT).

    ``loss_terms``: every term weighted, keyed by term name (a loss's registry name, or e.g.
    ``rcka_intra`` and ``rcka_inter`` for a loss with several terms); they add up to ``loss``.
    ``loss`` and ``loss_terms`` are ``None`` when the batch has no labels (prediction), so the
    Trainer only collects the logits.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None


def _pairs_from_config(feature_pairs: Sequence[dict] | Sequence[FeaturePair]) -> list[FeaturePair]:
    pairs = []
    for pair in feature_pairs:
        if isinstance(pair, FeaturePair):
            pairs.append(pair)
            continue
        options = {k: v for k, v in pair.items() if k not in ("student_layer", "teacher_layer", "adapter")}
        pairs.append(FeaturePair(pair["student_layer"], pair["teacher_layer"], pair.get("adapter", "auto"), options))
    return pairs


class DistillationModel(nn.Module):
    """Student, frozen teacher, adapters and loss modules, run together in ``forward``.

    Args:
        student: any transformers image classifier (HF or TimmWrapper).
        teacher: a classifier over the same labels, or ``None`` for plain supervised training.
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
        self.losses = nn.ModuleDict({loss.registry_name: loss for loss in losses})
        self._check_teacher()
        self.teacher_runtime = None
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            self.teacher_runtime = TeacherRuntime(teacher, teacher_dtype, teacher_channels_last)
        self.teacher_transform = self._teacher_transform(student_input, teacher_input)
        self.feature_pairs: list[FeaturePair] = []
        self.adapters = nn.ModuleList()
        self._pooled: dict[str, torch.Tensor] = {}
        self._captures: dict[str, HiddenStateCapture] = {}
        if self.needs_features:
            self._build_adapters(feature_pairs, student_input)
            self._build_captures(student_input)
        elif feature_pairs not in (None, "auto"):
            logger.warning("feature_pairs are set but no loss uses hidden states; they are ignored")
        if self.needs_pooled:
            self._hook_pooled_features()
        context = LossContext(
            num_labels=student.config.num_labels,
            student_pooled_dim=pooled_dim(student) if self.needs_pooled else None,
            teacher_pooled_dim=pooled_dim(teacher) if self.needs_pooled else None,
        )
        for loss in self.losses.values():
            loss.setup(context)

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

    def _check_teacher(self) -> None:
        needing = [name for name, loss in self.losses.items() if loss.needs_teacher]
        if needing and self.teacher is None:
            raise ValueError(f"losses {needing} need a teacher: set teacher_model_name_or_path")
        if self.teacher is None:
            return
        if not needing:
            logger.warning("a teacher is given but no loss uses it; it will not be run")
        n_student, n_teacher = self.student.config.num_labels, self.teacher.config.num_labels
        if n_student != n_teacher and any(
            "teacher_logits" in loss.requires for loss in self.losses.values()
        ):
            raise ValueError(
                f"student predicts {n_student} classes but the teacher {n_teacher}: logit losses need the same "
                f"label set (train or fine-tune the teacher on this dataset first)"
            )

    @staticmethod
    def _teacher_transform(student: InputStats | None, teacher: InputStats | None) -> TeacherInputTransform | None:
        if student is None or teacher is None:
            return None
        transform = TeacherInputTransform(student, teacher)
        if transform.is_identity:
            return None
        logger.info("teacher inputs: %s -> %s", student, teacher)
        return transform

    def _probe_pixels(self, student_input: InputStats | None) -> torch.Tensor:
        if student_input is not None:
            height, width = student_input.size
        else:
            size = getattr(self.student.config, "image_size", 224)
            height, width = (size, size) if isinstance(size, int) else tuple(size)
        device = next(self.student.parameters()).device
        return torch.zeros(2, 3, height, width, device=device)

    def _build_adapters(self, feature_pairs: Any, student_input: InputStats | None) -> None:
        pixels = self._probe_pixels(student_input)
        teacher_pixels = self.teacher_transform(pixels) if self.teacher_transform is not None else pixels
        student_specs = describe_hidden_states(self.student, pixels)
        teacher_specs = describe_hidden_states(self.teacher, teacher_pixels)
        if feature_pairs in (None, "auto"):
            pairs = [FeaturePair(s, t, "auto", reason=why) for s, t, why in auto_feature_pairs(student_specs, teacher_specs)]
        else:
            pairs = _pairs_from_config(feature_pairs)
        needs_shape = any(loss.feature_alignment == "shape" for loss in self.losses.values() if loss.needs_features)
        for pair in pairs:
            s = resolve_layer(pair.student_layer, len(student_specs), "student")
            t = resolve_layer(pair.teacher_layer, len(teacher_specs), "teacher")
            name, options = self._adapter_choice(pair, needs_shape)
            self.adapters.append(build_adapter(name, student_specs[s], teacher_specs[t], **options))
            self.feature_pairs.append(FeaturePair(s, t, name, options, pair.reason))
            logger.info(
                "feature pair: student %d %s <-> teacher %d %s via %s%s",
                s, _describe(student_specs[s]), t, _describe(teacher_specs[t]), name,
                f" ({pair.reason})" if pair.reason else "",
            )

    def _build_captures(self, student_input: InputStats | None) -> None:
        """Hidden-state capture of only the layers the pairs use (see feature_capture)."""
        shape = self._probe_pixels(student_input).shape
        generator = torch.Generator().manual_seed(0)  # random, so no two layers look alike; global RNG untouched
        pixels = torch.randn(shape, generator=generator).to(next(self.student.parameters()).device)
        teacher_pixels = self.teacher_pixels(pixels)
        for role, model, layers, probe in (
            ("student", self.student, [p.student_layer for p in self.feature_pairs], pixels),
            ("teacher", self.teacher, [p.teacher_layer for p in self.feature_pairs], teacher_pixels),
        ):
            self._captures[role] = HiddenStateCapture(model, layers, probe)

    @staticmethod
    def _adapter_choice(pair: FeaturePair, needs_shape: bool) -> tuple[str, dict[str, Any]]:
        """'auto' means identity for batch-relational losses, patch_match + projection otherwise."""
        if pair.adapter != "auto":
            return pair.adapter, dict(pair.options)
        if needs_shape:
            return "patch_match", {"project": True, **pair.options}
        return "identity", dict(pair.options)

    def _hook_pooled_features(self) -> None:
        """Capture the classifier's input: the pooled penultimate feature used by EKT and SRD."""
        for role, model in (("student", self.student), ("teacher", self.teacher)):
            def hook(_module: nn.Module, args: tuple, role: str = role) -> None:
                self._pooled[role] = args[0].flatten(1)  # (B, C, 1, 1) for some CNN heads

            classifier_of(model).register_forward_pre_hook(hook)

    # ------------------------------------------------------------------ running

    def train(self, mode: bool = True) -> "DistillationModel":
        """Train everything but the teacher, which always stays in eval mode (BN stats, dropout)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.student.gradient_checkpointing_enable(**kwargs)

    def teacher_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The student's batch as the teacher expects it (normalisation, size, dtype, memory format)."""
        if self.teacher_transform is not None:
            pixel_values = self.teacher_transform(pixel_values)
        return self.teacher_runtime.inputs(pixel_values) if self.teacher_runtime is not None else pixel_values

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> DistillationOutput:
        hidden = self.needs_features and (labels is not None or self.training)
        teacher = None
        if self.teacher is not None and self.needs_teacher and (labels is not None or self.training):
            # Teacher first: its transient activations peak before the student's are alive.
            teacher = self._run_teacher(pixel_values, hidden)
        if hidden:
            student_out, student_states = self._captures["student"](pixel_values)
        else:
            student_out, student_states = self.student(pixel_values=pixel_values), {}
        logits = student_out.logits
        if labels is None and not self.training:
            return DistillationOutput(logits=logits)
        inputs = LossInputs(
            student_logits=_task_logits(student_out),
            labels=labels,
            distillation_logits=getattr(student_out, "distillation_logits", None),
            student_pooled=self._pooled.pop("student", None),
        )
        if teacher is not None:
            self._add_teacher(inputs, student_states, *teacher)
        terms, weights = {}, {}
        for loss in self.losses.values():
            terms.update(loss(inputs))
            weights.update(loss.term_weights)
        total, weighted = weigh_terms(terms, weights)
        return DistillationOutput(loss=total, logits=logits, loss_terms=weighted)

    def _run_teacher(
        self, pixel_values: torch.Tensor, hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[int, torch.Tensor]]:
        """Teacher logits, pooled feature and used hidden states, as tensors usable by autograd."""
        runtime = self.teacher_runtime
        with runtime.running():
            teacher_pixels = self.teacher_pixels(pixel_values)
            if hidden:
                teacher_out, states = self._captures["teacher"](teacher_pixels)
            else:
                teacher_out, states = self.teacher(pixel_values=teacher_pixels), {}
            pooled = self._pooled.pop("teacher", None)
        states = {i: runtime.release(t) for i, t in states.items()}
        return runtime.release(teacher_out.logits), runtime.release(pooled), states

    def _add_teacher(self, inputs: LossInputs, student_states: dict[int, torch.Tensor], teacher_logits: torch.Tensor,
                     teacher_pooled: torch.Tensor | None, teacher_states: dict[int, torch.Tensor]) -> None:
        inputs.teacher_logits = teacher_logits
        inputs.teacher_pooled = teacher_pooled
        if student_states:
            pairs = [
                adapter(student_states[p.student_layer], teacher_states[p.teacher_layer])
                for p, adapter in zip(self.feature_pairs, self.adapters)
            ]
            inputs.student_features = tuple(s for s, _ in pairs)
            inputs.teacher_features = tuple(t for _, t in pairs)

    @torch.no_grad()
    def teacher_accuracy(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy of the teacher on one batch, through the same input path as training."""
        logits = self.teacher(pixel_values=self.teacher_pixels(pixel_values)).logits
        return float((logits.argmax(-1) == labels).float().mean())

    # ------------------------------------------------------------------ checkpoints

    def distillation_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapters and loss state (projectors, class centres): what a checkpoint adds to the student."""
        state = {f"adapters.{k}": v for k, v in self.adapters.state_dict().items()}
        state.update({f"losses.{k}": v for k, v in self.losses.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def save_distillation_state(self, directory: str) -> None:
        state = self.distillation_state_dict()
        if state:
            save_file(state, os.path.join(directory, DISTILLATION_STATE_NAME), metadata={"format": "pt"})

    def load_checkpoint(self, directory: str) -> None:
        """Restore student weights and distillation state from a checkpoint folder, exactly.

        The student is read back through ``from_pretrained`` (which undoes the key renaming that
        transformers 5.x applies on save for ViT-family models) and copied in strictly, so a
        checkpoint that restores nothing fails loudly instead of silently.
        """
        loaded = type(self.student).from_pretrained(directory, dtype=next(self.student.parameters()).dtype)
        self.student.load_state_dict(loaded.state_dict(), strict=True)
        del loaded
        path = os.path.join(directory, DISTILLATION_STATE_NAME)
        state = load_file(path) if os.path.isfile(path) else {}
        if not state and self.distillation_state_dict():
            raise FileNotFoundError(
                f"{directory} has no {DISTILLATION_STATE_NAME}: it is not a checkpoint of this distillation "
                f"(adapters/loss state cannot be restored)"
            )
        for prefix, module in (("adapters.", self.adapters), ("losses.", self.losses)):
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True)


def _task_logits(student_out: Any) -> torch.Tensor:
    """The CLS head's logits for DeiT students with a distillation head, else the logits."""
    cls_logits = getattr(student_out, "cls_logits", None)
    return cls_logits if cls_logits is not None else student_out.logits


def _describe(spec: FeatureSpec) -> str:
    stride = f", stride {spec.stride:g}" if spec.stride else ""
    return f"[{spec.layout} {spec.channels}ch {spec.grid[0]}x{spec.grid[1]}{stride}]"
