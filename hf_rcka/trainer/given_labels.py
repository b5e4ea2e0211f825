"""Class names of what a Python caller hands ``DistillationTrainer``: the student's, the data's, the teacher's.

Labels are ids, so every part must name the classes in one order. Each mistake here trained to
the end and reported a number: a student whose ``id2label`` contradicts the dataset's
``ClassLabel`` (``eval_accuracy`` counts ids, the exported model names them wrongly); an
``eval_dataset`` listing the classes in another order than the training set (a correct model
scored 0.19 on such a copy of its 0.96 set); a student with another number of classes than the
data; a teacher whose classes are in another order (realigned by name, as the command line does).
Names that only number the classes (``LABEL_0``..., ``0``...) say nothing and are not compared.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import LabelError, RecipeError
from ..modeling.assembly import run_reads_teacher_logits
from ..models.label_maps import LabelMaps, set_labels
from ..models.labels import (
    BY_NAME, TEACHER_LABEL_MAPPINGS, is_generic, mark_other_classes, model_label_names, teacher_alignment,
)

logger = logging.getLogger(__name__)


def _agreed_names(parts: list[tuple[str, list[str]]]) -> list[str] | None:
    """The class names every part of ``parts`` (``data_class_names``) gives, or None when none names
    them; numerals in order name nothing, but another order of the same ones (``other_order_of``)."""
    named = [(where, names) for where, names in parts if not numbered_only(names)]
    if not named:
        return None
    first_where, first = named[0]
    for where, names in sorted(parts, key=lambda part: numbered_only(part[1])):  # named parts first
        if other_order_of(names, first):
            raise LabelError(
                f"{where} lists its classes as {names[:8]}, {first_where} as {first[:8]}: labels are ids, so its "
                f"images would be scored against other classes. Align it by name: "
                f"<{where}>.align_labels_with_mapping({{name: i for i, name in enumerate(names)}}, <label column>) "
                f"with names = <{first_where}'s ClassLabel>.names (or cast it with that ClassLabel)")
    return first


def data_class_names(datasets: tuple[Any, ...]) -> list[tuple[str, list[str]]]:
    """``(where, names)``: the class order of each part of the training and evaluation sets.

    That is the ``ClassLabel`` of its ``labels`` (or ``label``) column, unless the part carries
    hf_rcka's own label transform (``data.datasets.with_transforms``), which maps the labels by
    name to another order and says which (its ``class_names``).
    """
    from datasets import ClassLabel

    found = []
    for role, dataset in zip(("train_dataset", "eval_dataset"), datasets):
        for name, part in (dataset.items() if isinstance(dataset, dict) else [(None, dataset)]):
            where = role if name is None else f"{role}[{name!r}]"
            transform = ((getattr(part, "format", None) or {}).get("format_kwargs") or {}).get("transform")
            if getattr(transform, "class_names", None) is not None:
                found.append((where, list(transform.class_names)))
                continue
            features = getattr(part, "features", None) or {}
            feature = next((features[k] for k in ("labels", "label") if isinstance(features.get(k), ClassLabel)), None)
            if feature is not None:
                found.append((where, list(feature.names)))
    return found


def _check_head_size(student: Any, parts: list[tuple[str, list[str]]]) -> None:
    """The student's head must have one output per class of the data (``parts``, from
    ``data_class_names``), also when nothing names them."""
    num_labels = getattr(getattr(student, "config", None), "num_labels", None)
    for where, names in parts:
        if num_labels is not None and len(names) != num_labels:
            raise LabelError(
                f"the student predicts {num_labels} classes but {where}'s labels have {len(names)}: build it with "
                f"num_labels={len(names)} (and id2label=dict(enumerate(names)), names = its ClassLabel's names)")


def other_order_of(names: list[str], reference: list[str]) -> bool:
    """Whether ``names`` order the classes otherwise than ``reference``: other names, or, for
    numerals in order (which say nothing alone), the same numerals that ``reference`` lists in
    another order (class folders 0..10, which an image-folder loader sorts as text: 0, 1, 10,
    2...), whose ids then mean other classes."""
    return names != reference and (not numbered_only(names) or sorted(names) == sorted(reference))


def numbered_only(names: list[str]) -> bool:
    """Names that only number the classes: ``LABEL_0``... (transformers) or ``0``, ``1``... (a
    ClassLabel cast from integers), which say nothing about which class is which."""
    return is_generic(names) or names == [str(i) for i in range(len(names))]


def check_labels(student: Any, teacher: Any, args: Any, datasets: tuple[Any, ...], mapping: str,
                 loss_names: list[str] | None = None) -> list[int] | None:
    """The student's classes against the data's, and the teacher's against the run's (by name).

    ``loss_names``: the losses the model computes (default: ``args.losses``, or the default losses).

    Returns:
        The order to read the teacher's logits in (``DistillationModel.reorder_teacher_logits``),
        None when its classes pair as they are. The teacher itself is not changed: one teacher
        object may serve trainers of students that order the classes otherwise.

    Raises:
        LabelError: the student names or counts the classes otherwise than the dataset, the parts
            of the dataset name them otherwise, or the teacher's classes differ from the run's
            (``mapping`` ``by_name``).
    """
    if mapping not in TEACHER_LABEL_MAPPINGS:
        raise RecipeError(f"teacher_label_mapping must be one of {TEACHER_LABEL_MAPPINGS}, got {mapping!r}")
    listed = model_class_names(student)
    student_names = None if listed is not None and numbered_only(listed) else listed  # LABEL_k names nothing
    parts = data_class_names(datasets)
    data_names = _agreed_names(parts)
    _check_head_size(student, parts)
    # numerals (a ClassLabel cast from integers) are names too when the model lists the same numerals in
    # another order (a run on class folders 0..10 sorts them as text: 0, 1, 10, 2...)
    numbered = next((names for _, names in parts if numbered_only(names)), None)
    if data_names is None and numbered and student_names and sorted(student_names) == sorted(numbered):
        data_names = numbered
    if data_names and student_names and student_names != data_names:
        raise LabelError(
            f"the student's id2label {student_names[:8]} is not the dataset's class order {data_names[:8]}: its "
            "accuracy would count ids while the exported model names them otherwise. Build the student with "
            "id2label=dict(enumerate(names)), names = dataset.features['labels'].names")
    run_names = student_names or data_names
    teacher_names = model_class_names(teacher) if teacher is not None else None
    reads_logits = run_reads_teacher_logits(args, loss_names)
    # a teacher whose class names this run's logits are paired by
    named_teacher_read = (bool(teacher_names) and reads_logits and mapping == BY_NAME
                          and not numbered_only(teacher_names))
    # the data's numerals against a teacher that lists them in another order, or that names its classes
    # (digits, or a ClassLabel cast from integers, beside a teacher of 'zero'...): compared as the
    # command line compares them, where pairing them by position went on with a warning
    if not run_names and numbered and teacher_names and (
            sorted(teacher_names) == sorted(numbered) or named_teacher_read):
        run_names = numbered
    if not run_names and named_teacher_read:
        logger.warning("labels: neither the student's id2label nor the dataset's ClassLabel names the classes, so the "
                       "teacher's classes %s are paired with the data's by position, unchecked. Name them "
                       "(a ClassLabel column, or the student's id2label) to have them matched by name",
                       teacher_names[:5])
    # the run's class count needs no names: a numbered student's own count serves where nothing names them
    count = len(run_names) if run_names else len(listed) if listed else None
    if count and teacher_names is not None and len(teacher_names) != count and not reads_logits:
        mark_other_classes(teacher, args)  # an ImageNet-1k teacher of a 10-class run's features
        return None
    if not run_names or teacher_names is None or len(teacher_names) != len(run_names):
        return None  # a class count the losses cannot use is refused when the model is built
    order = teacher_alignment(teacher, run_names, mapping, reads_logits, args, key="teacher",
                              source="the student's id2label" if student_names else "the dataset's ClassLabel")
    if order is not None:
        logger.info("labels: the teacher's %d classes are in another order; its logits are re-indexed by name",
                    len(run_names))
    return order


def name_student_classes(student: Any, datasets: tuple[Any, ...]) -> None:
    """Give a student whose classes are only numbered (``LABEL_0``...) the names of the data's
    ``ClassLabel``: the run evaluates and pairs the teacher by them, and the exported model would
    otherwise predict ``LABEL_3`` where the data says ``cat``. Call it once the trainer's checks
    have passed (``check_labels`` has compared the names)."""
    config = getattr(student, "config", None)
    names = _agreed_names(data_class_names(datasets))
    student_names = model_class_names(student)
    if config is None or not names or (student_names and not numbered_only(student_names)):
        return
    set_labels(config, LabelMaps.of(names))
    logger.info("labels: the student's classes are named after the dataset's ClassLabel: %s", names[:5])


def say_names_paired_by_position(dataset: Any, role: str, teacher: Any, mapping: str) -> None:
    """Say an evaluation set given later that names the classes otherwise than ``teacher``, which
    a trainer built without class names pairs with the data by position: the training labels'
    order is not known, so the teacher's accuracy and terms, or the student's accuracy, compare
    other classes. ``teacher``: None when none of its classes is read (no teacher, other classes)."""
    teacher_names = model_class_names(teacher) if teacher is not None else None
    if not teacher_names or mapping != BY_NAME:
        return
    # numerals in order name the classes beside a teacher that lists them in another order (0, 1, 10...)
    names = next((names for _, names in data_class_names((dataset,))
                  if not numbered_only(names) or sorted(names) == sorted(teacher_names)), None)
    if names and names != teacher_names:
        logger.warning("%s lists its classes as %s, the teacher as %s, which this trainer pairs with the data by "
                       "position (it was built without class names): the teacher's accuracy and terms, or the "
                       "student's accuracy, compare other classes. Build the trainer with a training set that names "
                       "them (a ClassLabel) or a student whose id2label does", role, names[:8], teacher_names[:8])


def model_class_names(model: Any) -> list[str] | None:
    """The class names of a model's config (``id2label``), in id order, or None when it has none."""
    config = getattr(model, "config", None)
    return model_label_names(config) if config is not None and getattr(config, "id2label", None) else None


__all__ = ["check_labels", "data_class_names", "model_class_names", "name_student_classes", "numbered_only",
           "other_order_of", "say_names_paired_by_position"]
