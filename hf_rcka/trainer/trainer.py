"""``DistillationTrainer``: ``transformers.Trainer`` for a student, a frozen teacher and the losses.

Everything Trainer users know keeps working (TrainingArguments, callbacks, ``report_to``, progress
bars, gradient accumulation, mixed precision, DDP/FSDP through accelerate, checkpoints,
``push_to_hub``). What changes: ``Trainer.model`` is a ``DistillationModel``; the loss is the
weighted sum of the registered terms, each logged on its own (``ce_loss``, ``rcka_loss``, ...,
and ``eval_*`` for evaluation); saving writes only the student as a plain transformers model,
while checkpoints also keep adapters and loss state so resuming continues exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from typing import Any, Sequence

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import EvalLoopOutput

from .. import losses as _losses  # noqa: F401  (registers the losses)
from ..data.augmentation import AugmentationArguments
from .card_facts import CardFacts, complete_card_facts
from ..data.datasets import collate
from ..errors import TeacherNearChance
from .ema import StudentEmaCallback
from .card import write_model_card
from ..losses import DistillationLoss
from .metrics import accuracy_metrics
from ..data.mixing import build_mixup, mix_batch
from ..modeling.distillation_model import DistillationModel
from ..modeling.parallel import default_broadcast_buffers, ignore_teacher_in_ddp, keep_teacher_out_of_fsdp
from ..registry import LOSSES
from ..data.sampler import RepeatedAugmentationSampler, keep_rank_sharding
from ..modeling.teacher_inputs import InputStats, input_stats

logger = logging.getLogger(__name__)

TRAINING_ARGS_NAME = "training_args.bin"


def default_losses(has_teacher: bool) -> list[dict[str, Any]]:
    """RCKA on logits next to the task loss (the paper's 15/15), or the task loss alone."""
    if not has_teacher:
        return [{"name": "ce", "weight": 1.0}]
    return [{"name": "ce", "weight": 1.0}, {"name": "rcka", "weight": 1.0}]


def build_losses(specs: Sequence[dict[str, Any]], args: TrainingArguments) -> list[DistillationLoss]:
    """Instantiate loss specs (checked by ``DistillationTrainingArguments``); ``ce`` inherits
    ``label_smoothing_factor``."""
    built = []
    for spec in specs:
        options = {k: v for k, v in spec.items() if k != "name"}
        if spec["name"] == "ce" and options.get("label_smoothing") is None:
            options["label_smoothing"] = args.label_smoothing_factor or None
        built.append(LOSSES.build(spec["name"], **options))
    return built


def _stats_or_none(processor: Any) -> InputStats | None:
    return input_stats(processor) if processor is not None else None


def build_distillation_model(
    student: PreTrainedModel | None, teacher: PreTrainedModel | None, args: TrainingArguments,
    student_input: InputStats | None = None, teacher_input: InputStats | None = None,
) -> DistillationModel:
    """The ``DistillationModel`` the trainer trains: ``args``' losses (or the defaults) and feature pairs.

    ``student_input``/``teacher_input`` are each model's normalisation and resolution
    (``input_stats`` of its image processor), so the teacher sees its own inputs.
    """
    if student is None:
        raise ValueError("DistillationTrainer needs a student model")
    specs = getattr(args, "losses", None) or default_losses(teacher is not None)
    pairs = getattr(args, "feature_pairs", None)  # validated by DistillationTrainingArguments
    return DistillationModel(
        student,
        teacher,
        build_losses(specs, args),
        feature_pairs=pairs if pairs is not None else "auto",
        student_input=student_input,
        teacher_input=teacher_input if teacher is not None else None,
        teacher_dtype=getattr(args, "teacher_dtype", None),
        teacher_channels_last=getattr(args, "teacher_channels_last", True),
    )


class _EpochEndCallback(TrainerCallback):
    """Lets stateful losses (EKT's per-epoch class centres) react to the end of an epoch."""

    def on_epoch_end(self, args, state, control, model=None, **kwargs):  # noqa: D102
        distillation_model = getattr(model, "module", model)
        for loss in getattr(distillation_model, "losses", {}).values():
            if hasattr(loss, "on_epoch_end"):
                loss.on_epoch_end()


class DistillationTrainer(Trainer):
    """Trainer for knowledge distillation (or plain supervised training without a teacher).

    Args:
        model: the student (a transformers image classifier), or a ready ``DistillationModel``.
        teacher: the teacher classifier, or ``None`` for supervised training.
        args: ``DistillationTrainingArguments`` (plain ``TrainingArguments`` work with defaults:
            ce + rcka with a teacher, ce alone without).
        teacher_processor: the teacher's image processor, so the teacher sees its own
            normalisation and resolution; the student's is ``processing_class``.
        teacher_name: how the model card names the teacher (default: its ``name_or_path``).
        augmentation: Mixup/CutMix and repeated-augmentation settings (``DataArguments`` carries
            them); per-image transforms belong to the datasets. ``args.model_ema`` adds a weight EMA.
        **kwargs: everything ``Trainer`` takes (datasets, callbacks, ``compute_metrics``...).
    """

    # Every term is a per-batch mean: let Trainer divide by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PreTrainedModel | DistillationModel | None = None,
        teacher: PreTrainedModel | None = None,
        args: TrainingArguments | None = None,
        teacher_processor: Any = None,
        teacher_name: str | None = None,
        augmentation: AugmentationArguments | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            raise ValueError("DistillationTrainer needs args (DistillationTrainingArguments with an output_dir)")
        if not isinstance(model, DistillationModel):
            model = build_distillation_model(
                model, teacher, args, _stats_or_none(kwargs.get("processing_class")),
                _stats_or_none(teacher_processor) if teacher is not None else None,
            )
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = _has_unused_head(model)
        args.ddp_broadcast_buffers = default_broadcast_buffers(model.student, args.ddp_broadcast_buffers)
        ignore_teacher_in_ddp(model)
        kwargs.setdefault("data_collator", collate)
        kwargs.setdefault("compute_metrics", accuracy_metrics)
        super().__init__(model=model, args=args, **kwargs)
        keep_teacher_out_of_fsdp(self.accelerator, model, args.device)
        self.teacher_name = teacher_name or (
            getattr(model.teacher, "name_or_path", None) if model.teacher is not None else None
        )
        self.add_callback(_EpochEndCallback())
        self._terms: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._term_counts = {"train": 0, "eval": 0}
        self._saving_checkpoint = False
        self.card_facts = CardFacts()  # the CLI adds what it knows (base model, evaluation data)
        self._setup_pipeline(augmentation or AugmentationArguments())

    def _setup_pipeline(self, augmentation: AugmentationArguments) -> None:
        """Mixup/CutMix (with ``ce``'s smoothing folded in, as timm does), RA sampling, weight EMA."""
        self.augmentation = augmentation
        ce = self.distillation_model.losses["ce"] if "ce" in self.distillation_model.losses else None
        smoothing = (getattr(ce, "label_smoothing", None) or 0.0) if ce is not None else 0.0
        self.mixup = build_mixup(augmentation, self.distillation_model.student.config.num_labels, smoothing)
        self.model_ema: StudentEmaCallback | None = None
        if getattr(self.args, "model_ema", False):
            if self.is_fsdp_enabled:
                raise ValueError("model_ema averages a whole student and cannot average an FSDP-sharded one; "
                                 "turn model_ema off or train with DDP")
            self.model_ema = StudentEmaCallback(
                self.distillation_model.student, self.args.model_ema_decay, self.args.model_ema_warmup
            )
            self.add_callback(self.model_ema)

    @property
    def distillation_model(self) -> DistillationModel:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ loss and logging

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of the loss terms the model returns; records each term for logging.

        In training, Mixup/CutMix mix the batch first: student and teacher see the same pixels.
        """
        if model.training and self.mixup is not None:
            pixel_values, labels = mix_batch(self.mixup, inputs["pixel_values"], inputs["labels"])
            inputs = {**inputs, "pixel_values": pixel_values, "labels": labels}
        outputs = model(**inputs)
        weights = {name: loss.weight for name, loss in self.distillation_model.losses.items()}
        weighted = {name: weights[name] * value for name, value in outputs.loss_terms.items()}
        loss = torch.stack(list(weighted.values())).sum()
        self._record(weighted, "train" if model.training else "eval")
        return (loss, {"logits": outputs.logits}) if return_outputs else loss

    def _record(self, terms: dict[str, torch.Tensor], mode: str) -> None:
        sums = self._terms[mode]
        for name, value in terms.items():
            value = value.detach().float()
            sums[name] = sums[name] + value if name in sums else value
        self._term_counts[mode] += 1

    def _term_means(self, mode: str, prefix: str = "") -> dict[str, float]:
        """Mean of every recorded term since the last call, averaged over processes too."""
        sums, count = self._terms[mode], self._term_counts[mode]
        self._terms[mode], self._term_counts[mode] = {}, 0
        if not sums or count == 0:
            return {}
        names = sorted(sums)
        stacked = torch.stack([sums[n] for n in names]) / count
        # A plain gather: gather_for_metrics would cut rows to the eval set's remainder at the end
        # of a dataloader, dropping whole processes from this per-process average.
        stacked = self.accelerator.gather(stacked[None]).mean(dim=0)
        return {f"{prefix}{name}_loss": round(float(v), 6) for name, v in zip(names, stacked)}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the per-term training losses next to Trainer's ``loss``."""
        if "loss" in logs:
            logs = {**logs, **self._term_means("train")}
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval") -> EvalLoopOutput:
        """Trainer's loop, plus ``{prefix}_{term}_loss`` for every loss term (and ``{prefix}_ema_*``
        for the averaged weights when ``model_ema`` is on)."""
        run = (dataloader, description, prediction_loss_only, ignore_keys)
        output = self._evaluation_pass(*run, metric_key_prefix)
        if self.model_ema is not None:
            with self.model_ema.swapped_in():
                output.metrics.update(self._evaluation_pass(*run, f"{metric_key_prefix}_ema").metrics)
        return output

    def _evaluation_pass(self, dataloader, description, prediction_loss_only, ignore_keys,
                         metric_key_prefix: str) -> EvalLoopOutput:
        self._terms["eval"], self._term_counts["eval"] = {}, 0
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        output.metrics.update(self._term_means("eval", prefix=f"{metric_key_prefix}_"))
        return output

    # ------------------------------------------------------------------ sampling

    def _get_train_sampler(self, train_dataset=None):
        """DeiT's repeated-augmentation sampler when ``aug_repeats`` > 0, else Trainer's."""
        repeats = self.augmentation.aug_repeats
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not repeats or dataset is None:
            return super()._get_train_sampler(train_dataset)
        return RepeatedAugmentationSampler(dataset, repeats, num_replicas=max(1, self.args.world_size),
                                           rank=self.args.process_index, seed=self.args.data_seed or self.args.seed)

    def get_train_dataloader(self):
        """Trainer's loader; a rank-aware RA sampler is not sharded again by accelerate."""
        return keep_rank_sharding(super().get_train_dataloader())

    # ------------------------------------------------------------------ teacher sanity check

    def train(self, *args: Any, **kwargs: Any):
        """Check the teacher on one eval batch before spending compute, then train as Trainer does."""
        self.check_teacher()
        return super().train(*args, **kwargs)

    def check_teacher(self) -> float | None:
        """Teacher top-1 on the first eval batch; warn or stop when it is near chance.

        A teacher fed inputs normalised unlike its training data still gives confident logits,
        and the student then learns garbage with no error anywhere. Within two binomial standard
        errors of chance is "near chance".
        """
        mode = getattr(self.args, "teacher_accuracy_check", "warn")
        model = self.distillation_model
        if mode == "off" or model.teacher is None or not model.needs_teacher or self.eval_dataset is None:
            return None
        batch = self._prepare_inputs(next(iter(self.get_eval_dataloader())))
        model.to(self.args.device)
        accuracy = model.teacher_accuracy(batch["pixel_values"], batch["labels"])
        n, chance = len(batch["labels"]), 1.0 / model.student.config.num_labels
        threshold = chance + 2.0 * math.sqrt(chance * (1.0 - chance) / n)
        logger.info("teacher accuracy on the first eval batch: %.3f (chance %.3f)", accuracy, chance)
        if accuracy <= threshold:
            message = (
                f"the teacher's accuracy on the first eval batch is {accuracy:.3f}, near chance ({chance:.3f}, "
                f"n={n}). Is it trained on this label set, and does it get its own normalisation and "
                f"resolution (pass teacher_processor)? Distilling from it teaches the student garbage. "
                f"Set teacher_accuracy_check: off to skip this check."
            )
            if mode == "error":
                raise TeacherNearChance(message)
            warnings.warn(message, stacklevel=2)
            logger.warning("!!! %s", message)
        return accuracy

    # ------------------------------------------------------------------ saving and loading

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the student as a plain transformers model (+ processor); checkpoints add adapters."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.distillation_model
        student_state = None
        if state_dict is not None:  # FSDP/DeepSpeed gathered the wrapper's full state dict
            student_state = {k[len("student."):]: v for k, v in state_dict.items() if k.startswith("student.")}
        export_ema = self.model_ema is not None and self.args.model_ema_export and not self._saving_checkpoint
        with self.model_ema.swapped_in() if export_ema else contextlib.nullcontext():
            model.student.save_pretrained(output_dir, state_dict=student_state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self._saving_checkpoint:
            model.save_distillation_state(output_dir)
            if self.model_ema is not None:
                self.model_ema.save(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        logger.info("resuming student and distillation state from %s", resume_from_checkpoint)
        target.load_checkpoint(resume_from_checkpoint)
        if self.model_ema is not None:
            self.model_ema.load(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info("loading the best student from %s (%s)", self.state.best_model_checkpoint, self.state.best_metric)
        self.distillation_model.load_checkpoint(self.state.best_model_checkpoint)

    def create_model_card(
        self, model_name: str | None = None, dataset: str | None = None, license: str | None = None, **kwargs: Any
    ) -> None:
        """A card that names the teacher as teacher (never as ``base_model``); see ``hub.write_model_card``.

        ``self.card_facts`` (filled by the CLI: base model, evaluation data) is completed here with
        the teacher's accuracy on the evaluation set and the ``baseline_dir`` run's accuracy.
        """
        if not self.is_world_process_zero():
            return
        metrics = {}
        for entry in self.state.log_history:
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        complete_card_facts(self)
        write_model_card(
            self.args.output_dir,
            model_name=model_name or os.path.basename(os.path.abspath(self.args.output_dir)),
            student=self.distillation_model.student,
            teacher_name=self.teacher_name,
            losses={name: loss.weight for name, loss in self.distillation_model.losses.items()},
            dataset=dataset,
            metrics=metrics,
            facts=self.card_facts,
            repo_id=self.hub_model_id or self.args.hub_model_id or self.args.output_dir,
            license=license,
        )


def _has_unused_head(model: DistillationModel) -> bool:
    """A DeiT distillation head without the deit_token loss gets no gradient: DDP must look for it."""
    has_head = hasattr(model.student, "distillation_classifier")
    return has_head and "deit_token" not in model.losses
