"""What a Python caller hands ``DistillationTrainer``, checked as the command line checks what it loads.

The command line builds the student, the teacher and the data itself, and checks them before
training (``cli.run_inputs``). A caller of the Python API builds them, and each mistake below used
to train to the end and report a number, or fail after the expensive work:

* a teacher whose classes are in another order (its logits are realigned by name, as the command
  line does; other names are an error);
* a student whose ``id2label`` contradicts the dataset's ``ClassLabel`` names: ``eval_accuracy``
  counts ids, but the exported model names its predictions wrongly;
* plain ``TrainingArguments`` with settings that leave the evaluation without an accuracy;
* a ready ``DistillationModel`` next to a ``teacher`` or losses that it would silently ignore;
* a student that shares weights with the (frozen) teacher, which froze them in the student too;
* feature losses without ``processing_class``: pairs planned at 224 px for 16 px data;
* datasets whose items are not ``pixel_values`` and ``labels`` (a bare ``KeyError`` at the first batch).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainingArguments

from ..arguments import DistillationTrainingArguments, check_fixed_settings
from ..errors import DataError, LabelError, ModelError, RecipeError
from ..modeling.assembly import active_specs, default_losses
from ..modeling.distillation_model import DistillationModel
from ..models.labels import BY_NAME, TEACHER_LABEL_MAPPINGS, is_generic, model_label_names, realign_teacher
from ..registry import LOSSES
from ..value_checks import check_training_values

logger = logging.getLogger(__name__)


def check_arguments(args: TrainingArguments) -> None:
    """Plain ``TrainingArguments`` get the checks ``DistillationTrainingArguments`` runs itself.

    Their two defaults that differ from the distillation's (``label_names`` unset,
    ``remove_unused_columns`` on, which drops the columns an image transform reads) are set to
    the distillation's; any other value of a fixed setting is refused.
    """
    if isinstance(args, DistillationTrainingArguments):
        return
    if args.label_names is None:
        args.label_names = ["labels"]
    if args.remove_unused_columns:
        logger.info("remove_unused_columns set to False: distillation reads every column of the batch")
        args.remove_unused_columns = False
    check_training_values(args)
    check_fixed_settings(args)


def check_ready_model(model: DistillationModel, teacher: Any, teacher_processor: Any, args: Any) -> None:
    """A ready ``DistillationModel`` brings its teacher and losses: arguments that would build
    others are refused rather than ignored."""
    given = [name for name, value in (("teacher", teacher), ("teacher_processor", teacher_processor)) if value is not None]
    if given:
        raise ModelError(f"DistillationTrainer: {' and '.join(given)} given with a ready DistillationModel, which "
                         "has its own teacher and inputs: build the DistillationModel with them, or pass the student")
    specs = getattr(args, "losses", None)
    wanted = {spec["name"] for spec in active_specs(specs)} if specs else None
    if wanted is not None and wanted != set(model.losses):
        raise RecipeError(f"losses {sorted(wanted)} in args, but the DistillationModel given computes "
                          f"{sorted(model.losses)}: build it with these losses, or leave args.losses unset")


def check_models(student: Any, teacher: Any, args: Any, processing_class: Any, teacher_processor: Any,
                 first_item: Mapping | None = None) -> None:
    """Shared weights and missing processors, before the distillation model is built.

    ``first_item``: the first training item (``check_columns``), whose image size the feature
    pairs must be planned at.
    """
    if teacher is not None:
        shared = {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}
        if shared:
            raise ModelError(
                f"the student shares {len(shared)} weight tensor(s) with the teacher, which is frozen: those would "
                "never train (or the first step fails). Give the student its own copy (copy.deepcopy(teacher))")
    if teacher_processor is not None and processing_class is None:
        raise RecipeError("teacher_processor needs processing_class (the student's image processor): the teacher's "
                          "inputs are the student's, re-normalised and resized from its processor's settings")
    specs = active_specs(getattr(args, "losses", None) or default_losses(teacher is not None))
    features = [spec["name"] for spec in specs if "student_features" in LOSSES.get(spec["name"]).requires]
    pixels = first_item.get("pixel_values") if first_item is not None else None
    if not features or processing_class is not None or not isinstance(pixels, torch.Tensor) or pixels.ndim < 2:
        return
    size = getattr(student.config, "image_size", 224)  # what DistillationModel plans at without a processor
    planned = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(pixels.shape[-2:]) != planned:
        raise RecipeError(
            f"losses {features} compare hidden states, whose grids are planned at the input size: without "
            f"processing_class that is the student config's {planned[0]}x{planned[1]}, but the data's images are "
            f"{pixels.shape[-2]}x{pixels.shape[-1]}. Pass processing_class=<the student's image processor>")


def check_columns(train_dataset: Any, eval_dataset: Any, collator_given: bool) -> Mapping | None:
    """Each dataset's first item has ``pixel_values`` and ``labels`` (the batch the model reads);
    returns the first training item (None when the data cannot be indexed).

    Other names (``image``, ``label``) failed at the first batch with a bare ``KeyError``; one
    item is decoded here, through the dataset's transform, to say which keys it has. A caller's
    own ``data_collator`` may build the batch from other keys, so its items are not checked.
    """
    first = None
    for role, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
        for name, part in (dataset.items() if isinstance(dataset, dict) else [(role, dataset)]):
            if part is None or isinstance(part, torch.utils.data.IterableDataset) or not hasattr(part, "__len__"):
                continue
            item = part[0] if len(part) else None
            if not isinstance(item, Mapping):
                continue
            first = item if first is None and role == "train_dataset" else first
            missing = [key for key in ("pixel_values", "labels") if key not in item]
            if missing and not collator_given:
                raise DataError(
                    f"{role if name == role else f'{role}[{name!r}]'}: its items have no {missing} (they have "
                    f"{sorted(item)}): rename the label column (dataset.rename_column('label', 'labels')) and set a "
                    "transform that turns images into pixel_values (dataset.set_transform(...) with the processor), "
                    "or pass a data_collator that builds them")
    return first


def dataset_label_names(*datasets: Any) -> list[str] | None:
    """The class names of the first dataset with a ``ClassLabel`` column ``labels`` or ``label``."""
    from datasets import ClassLabel

    for dataset in datasets:
        for part in (dataset.values() if isinstance(dataset, dict) else [dataset]):
            features = getattr(part, "features", None) or {}
            for key in ("labels", "label"):
                if isinstance(features.get(key), ClassLabel):
                    names = list(features[key].names)
                    return None if _placeholders(names) else names
    return None


def _placeholders(names: list[str]) -> bool:
    """Names that only number the classes: ``LABEL_0``... (transformers) or ``0``, ``1``... (a
    ClassLabel cast from integers), which say nothing about which class is which."""
    return is_generic(names) or names == [str(i) for i in range(len(names))]


def check_labels(student: Any, teacher: Any, args: Any, datasets: tuple[Any, ...], mapping: str) -> None:
    """The student's class names against the data's, and the teacher's against the run's (by name).

    Raises:
        LabelError: the student names the classes otherwise than the dataset, or the teacher's
            classes differ from the run's (``mapping`` ``by_name``).
    """
    if mapping not in TEACHER_LABEL_MAPPINGS:
        raise RecipeError(f"teacher_label_mapping must be one of {TEACHER_LABEL_MAPPINGS}, got {mapping!r}")
    student_names = _names(student)
    data_names = dataset_label_names(*datasets)
    if student_names is not None and _placeholders(student_names):
        student_names = None
    if data_names and student_names and student_names != data_names:
        raise LabelError(
            f"the student's id2label {student_names[:8]} is not the dataset's class order {data_names[:8]}: its "
            "accuracy would count ids while the exported model names them otherwise. Build the student with "
            "id2label=dict(enumerate(names)), names = dataset.features['labels'].names")
    run_names = student_names or data_names
    teacher_names = _names(teacher) if teacher is not None else None
    if not run_names or teacher_names is None or len(teacher_names) != len(run_names):
        return  # a class count the losses cannot use is refused when the model is built
    specs = active_specs(getattr(args, "losses", None) or default_losses(True))
    try:
        realign_teacher(teacher, run_names, mapping, key="teacher",
                        source="the student's id2label" if student_names else "the dataset's ClassLabel")
    except LabelError:
        if any("teacher_logits" in LOSSES.get(spec["name"]).requires for spec in specs):
            raise
        logger.info("labels: the teacher has other classes; only its features are distilled")
        if hasattr(args, "teacher_accuracy_check"):  # its accuracy on these labels means nothing
            args.teacher_accuracy_check = "off"


def _names(model: Any) -> list[str] | None:
    config = getattr(model, "config", None)
    return model_label_names(config) if config is not None and getattr(config, "id2label", None) else None


__all__ = [
    "BY_NAME", "check_arguments", "check_columns", "check_labels", "check_models", "check_ready_model",
    "dataset_label_names",
]
