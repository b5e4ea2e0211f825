"""The ``distill`` job: recipe -> models -> data -> trainer -> train/eval -> save/push.

``accelerate launch scripts/distill.py RECIPE.yaml [--key value ...]`` runs ``main``. The recipe
is validated before anything is loaded; the resolved recipe is written to ``output_dir`` before
training starts, and an interrupted run leaves a checkpoint to resume from.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import transformers
from transformers.trainer_utils import get_last_checkpoint

from .card_facts import card_facts_of
from .config import (
    DataArguments,
    DistillationTrainingArguments,
    ModelArguments,
    RecipeError,
    build_arguments,
    dump_recipe,
    load_recipe,
    parse_cli_overrides,
    resolve_values,
)
from .data import label_names, load_raw_datasets, prepare_datasets
from .loading import load_image_classifier, load_image_processor
from .teacher_inputs import input_stats
from .trainer import DistillationTrainer

logger = logging.getLogger("hf_rcka")

USAGE = "usage: accelerate launch scripts/distill.py RECIPE.yaml [--key value ...]"
CONFIG_NAME = "distill_config.yaml"
RUN_FILES = ("model.safetensors", "config.json", "pytorch_model.bin")


def _setup_logging(args: DistillationTrainingArguments) -> None:
    level = logging.INFO if args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(level)


def resolve_resume(args: DistillationTrainingArguments) -> str | None:
    """``resume_from_checkpoint: true`` means the last checkpoint in ``output_dir``."""
    value = args.resume_from_checkpoint
    if value in (None, False, "false", "False"):
        return None
    if value in (True, "true", "True"):
        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if last is None:
            raise RecipeError(f"resume_from_checkpoint: true, but {args.output_dir!r} holds no checkpoint-* folder")
        return last
    if not os.path.isdir(value):
        raise RecipeError(f"resume_from_checkpoint {value!r} is not a folder")
    return value


def check_output_dir(args: DistillationTrainingArguments, resume: str | None) -> None:
    """Refuse to overwrite a finished model or checkpoints unless asked to."""
    out = Path(args.output_dir)
    if resume or args.overwrite_output_dir or not out.is_dir():
        return
    holds_run = any((out / name).exists() for name in RUN_FILES) or any(out.glob("checkpoint-*"))
    if holds_run and args.do_train:
        raise RecipeError(
            f"output_dir {str(out)!r} already holds a model or checkpoints: pass --resume_from_checkpoint true to "
            f"continue, --overwrite_output_dir true to replace it, or choose another output_dir"
        )


def build_models(model_args: ModelArguments, labels: list[str]):
    """Student (with this dataset's labels) and teacher (as trained: its head is never re-initialised)."""
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    student = load_image_classifier(
        model_args.model_name_or_path,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        from_scratch=model_args.student_from_scratch,
        config_overrides=model_args.student_config_overrides,
        trust_remote_code=model_args.trust_remote_code,
    )
    student_processor = load_image_processor(
        model_args.model_name_or_path, student, trust_remote_code=model_args.trust_remote_code,
        image_size=model_args.image_size,
    )
    teacher = teacher_processor = None
    if model_args.teacher_model_name_or_path:
        teacher = load_image_classifier(
            model_args.teacher_model_name_or_path,
            config_overrides=model_args.teacher_config_overrides,
            trust_remote_code=model_args.trust_remote_code,
        )
        teacher_processor = load_image_processor(
            model_args.teacher_model_name_or_path, teacher, trust_remote_code=model_args.trust_remote_code
        )
    return student, student_processor, teacher, teacher_processor


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: DistillationTrainingArguments,
    recipe: dict | None = None,
) -> dict:
    """Train and/or evaluate; returns the final metrics. ``recipe`` is recorded in ``output_dir``."""
    _setup_logging(args)
    # Training and a final evaluation are the job; a recipe opts out with do_train/do_eval: false.
    explicit = recipe if recipe is not None else {}
    args.do_train = explicit.get("do_train", True)
    args.do_eval = explicit.get("do_eval", True)
    resume = resolve_resume(args)
    check_output_dir(args, resume)
    transformers.set_seed(args.seed)

    raw = load_raw_datasets(data_args, seed=args.seed)
    labels = label_names(raw["train"], data_args.label_column_name)
    student, student_processor, teacher, teacher_processor = build_models(model_args, labels)
    train_dataset, eval_dataset = prepare_datasets(raw, data_args, input_stats(student_processor), labels, args.seed)

    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        args=args,
        train_dataset=train_dataset if args.do_train else None,
        eval_dataset=eval_dataset,
        processing_class=student_processor,
        teacher_processor=teacher_processor,
        teacher_name=model_args.teacher_model_name_or_path,
    )
    trainer.card_facts = card_facts_of(model_args, data_args, len(eval_dataset))
    if trainer.is_world_process_zero() and recipe is not None:
        os.makedirs(args.output_dir, exist_ok=True)
        losses = [{"name": name, "weight": loss.weight} for name, loss in trainer.distillation_model.losses.items()]
        dump_recipe({**recipe, "losses": recipe.get("losses") or losses}, os.path.join(args.output_dir, CONFIG_NAME))

    metrics: dict = {}
    if args.do_train:
        metrics.update(_train(trainer, resume))
    if args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if trainer.is_world_process_zero():
        trainer.create_model_card(dataset=data_args.dataset_name or data_args.train_dir)
    if args.push_to_hub:
        trainer.push_to_hub(dataset=data_args.dataset_name)
    return metrics


def _train(trainer: DistillationTrainer, resume: str | None) -> dict:
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        if trainer.state.global_step > 0:
            trainer._save_checkpoint(trainer.model, trial=None)
            logger.warning(
                "interrupted: saved checkpoint-%d in %s; continue with --resume_from_checkpoint true",
                trainer.state.global_step, trainer.args.output_dir,
            )
        raise
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return result.metrics


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        recipe = resolve_values(load_recipe(argv[0]), parse_cli_overrides(argv[1:]))
        model_args, data_args, training_args = build_arguments(recipe)
        run(model_args, data_args, training_args, recipe)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
