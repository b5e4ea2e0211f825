"""Class labels matched by NAME between the dataset, the student and the teacher.

Label ids are only positions. A teacher whose ``id2label`` is ``[dog, cat, eel]`` run on a
dataset ordered ``[cat, dog, eel]`` gives confident logits for the wrong classes and nothing
fails: the student learns misaligned targets, and an evaluation re-labels a correct model's head
and reports chance. The dataset's class names are the truth here:

* a teacher whose names are a permutation of the run's is realigned (its logits re-indexed once,
  in a forward hook, logged); other names are an error that lists them, unless the recipe says
  ``teacher_label_mapping: by_index``; generic names (``LABEL_0``...) can only be counted (warning);
* a pretrained student whose names match the dataset's keeps its head and its order: the data's
  labels are mapped to the student's ``label2id`` (this is also how eval-only runs evaluate);
* a resumed run keeps its checkpoint's class order the same way, and other class names are an
  error;
* a validation class folder the training folder lacks (``validation/Dog`` next to ``train/dog``)
  is an error naming them, before anything loads (a training class without validation images is
  only said) (how a folder's classes are read
  is :mod:`hf_rcka.data.image_folders`');
* ImageNet-1k's descriptions, which an ImageNet classifier names its classes by, match the WordNet
  ids of ImageNet's folders, and a data set's second ``crane`` (``imagenet_names``);
* names that differ only in Unicode normalisation (``café`` typed two ways) are an error that says
  so, wherever two sets of names meet (``label_forms``).
"""

from __future__ import annotations

import collections
import logging
import re
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import LabelError
from .imagenet_names import respelt, stands_for
from .label_forms import TO_NFC, check_same_forms
from .label_maps import LabelMaps, first_ids, set_labels

logger = logging.getLogger(__name__)

BY_NAME, BY_INDEX = "by_name", "by_index"
TEACHER_LABEL_MAPPINGS = (BY_NAME, BY_INDEX)
_GENERIC = re.compile(r"^LABEL_\d+$")
_SHOWN = 8


def model_label_names(config: Any) -> list[str]:
    """A config's class names in id order."""
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    return [id2label[i] for i in range(len(id2label))]


def is_generic(names: Sequence[str]) -> bool:
    """transformers' placeholder names (``LABEL_0``...), which say nothing about the classes."""
    return all(_GENERIC.match(name) for name in names)


def _folded(names: Sequence[str]) -> list[str]:
    """``names`` case-folded and sorted: the same classes spelt in another case (``Dog``, ``dog``) compare equal."""
    return sorted(name.casefold() for name in names)


def _repeated_names(names: Sequence[str]) -> list[str]:
    """The names ``names`` gives more than once, sorted (ImageNet's descriptions hold ``crane`` twice)."""
    return sorted(name for name, count in collections.Counter(names).items() if count > 1)


def listed_names(names: Sequence[str]) -> str:
    """``names`` sorted, for an error message: the first few, and how many more."""
    names = sorted(names)
    extra = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return "[" + ", ".join(repr(n) for n in names[:_SHOWN]) + "]" + extra


def _difference(dataset: Sequence[str], model: Sequence[str], who: str, source: str = "the dataset") -> str:
    missing, extra = set(dataset) - set(model), set(model) - set(dataset)
    parts = []
    if missing:
        parts.append(f"{source} has {listed_names(missing)} that the {who} lacks")
    if extra:
        parts.append(f"the {who} has {listed_names(extra)} that {source} lacks")
    return "; ".join(parts) or f"the {who} has {len(model)} classes, {source} {len(dataset)}"


def _rename_to_model(who: str) -> str:
    """The fix for a dataset whose names differ from a model's only in form: the model's names
    are fixed by its trained head, so the data follows them (``{form}`` is the model's form)."""
    return f"rename the class folders (or the dataset's label names) to the {who}'s spelling ({{form}})"


def run_label_order(dataset_labels: Sequence[str], student_labels: Sequence[str] | None, training: bool) -> list[str]:
    """The class order of the run: the student's when it already names the dataset's classes.

    Args:
        dataset_labels: the dataset's class names.
        student_labels: a pretrained student's names in id order; None for a new head.
        training: False for an eval-only run, where the student's head must fit the data.

    Raises:
        LabelError: eval-only, and the student's names (or, for generic names, its class count)
            differ from the dataset's; or a name differs from the student's only in Unicode form
            (training would silently re-purpose that class's output; a head of another class
            count is re-initialised, so its names do not matter).
    """
    dataset_labels = list(dataset_labels)
    if student_labels is None:
        return dataset_labels
    student_labels = respelt(dataset_labels, student_labels) or student_labels  # ImageNet's ids and its two cranes
    if not training or len(student_labels) == len(dataset_labels):  # else the head is re-initialised
        check_same_forms(dataset_labels, student_labels, "the dataset", "the model's id2label",
                         _rename_to_model("model"), key="model_name_or_path")
    if sorted(student_labels) == sorted(dataset_labels):
        if list(student_labels) != dataset_labels:
            logger.info("labels: the dataset's classes are mapped to the student's own label order (head kept)")
        return list(student_labels)
    if is_generic(student_labels) and len(student_labels) == len(dataset_labels):
        logger.warning("labels: the student's classes are unnamed (LABEL_0...): only their number could be checked")
        return dataset_labels
    if training and len(student_labels) == len(dataset_labels):
        return _shared_rows_kept(dataset_labels, list(student_labels))
    if training:
        logger.info("labels: the student's head is trained for the dataset's %d classes (%s)",
                    len(dataset_labels), _difference(dataset_labels, student_labels, "student"))
        return dataset_labels
    raise LabelError(
        f"model_name_or_path: cannot evaluate: {_difference(dataset_labels, student_labels, 'model')}. "
        "Evaluate on data with the model's classes (same names as its config.json id2label)"
    )


def _shared_rows_kept(dataset_labels: list[str], student_labels: list[str]) -> list[str]:
    """A head of the dataset's class count is kept as it is, so its rows are matched by name: each
    class the student already names keeps its row, and the dataset's new classes take the rows of
    the classes it lacks, in order. (In the dataset's own order, one renamed class shifted every
    class after it onto another class's trained row.)"""
    counts = collections.Counter(student_labels)
    shared = {name for name in dataset_labels if counts[name] == 1}  # a repeated name (ImageNet has some) is no row
    repeated = _repeated_names(student_labels)
    ambiguous = [name for name in dataset_labels if name not in shared
                 and any(stands_for(name, twice) for twice in repeated)]
    if len(ambiguous) > 1:  # in the data's order, ImageNet's two cranes took each other's rows (a sorted folder)
        raise LabelError(f"model_name_or_path: the student names {listed_names(repeated)} more than once, so the "
                         f"dataset's {listed_names(ambiguous)} cannot be matched with those rows of its head by name: "
                         "list the classes in the model's order, or name them in its config.json id2label")
    # a class the dataset spells in another case ('Cat' for the student's 'cat') keeps that class's row:
    # in the data's order, 'Dog', 'Cat' took the rows of 'cat' and 'dog' crosswise
    folded, in_data = collections.Counter(name.casefold() for name in student_labels), set(dataset_labels)
    by_fold = {theirs.casefold(): theirs for theirs in student_labels
               if folded[theirs.casefold()] == 1 and theirs not in in_data}
    respelt = {by_fold[name.casefold()]: name for name in dataset_labels
               if name not in shared and name.casefold() in by_fold}
    kept = set(respelt.values())
    new = iter(name for name in dataset_labels if name not in shared and name not in kept)
    order = [name if name in shared else respelt.get(name) or next(new) for name in student_labels]
    replaced = [f"{old!r} -> {name!r}" for old, name in zip(student_labels, order) if old != name]
    more = f" and {len(replaced) - _SHOWN} more" if len(replaced) > _SHOWN else ""
    logger.warning("labels: the student's head keeps its rows for the %d classes the dataset shares with it; the rows "
                   "of the classes it lacks are trained for its new ones: %s%s", len(shared),
                   ", ".join(replaced[:_SHOWN]), more)
    return order


def resume_label_order(dataset_labels: Sequence[str], checkpoint_labels: Sequence[str]) -> list[str]:
    """The class order of a resumed run: the checkpoint's, whose head was trained for it.

    The checkpoint's weights are restored by position, so the run must keep the checkpoint's
    class order (the data's labels are mapped to it by name) and cannot change its classes: a
    dataset whose class names come in another order, or with one renamed, would relabel a
    trained head and the run would go on as if nothing happened.

    Raises:
        LabelError: the dataset's class names differ from the checkpoint's.
    """
    dataset_labels, checkpoint_labels = list(dataset_labels), list(checkpoint_labels)
    check_same_forms(dataset_labels, checkpoint_labels, "the dataset", "the checkpoint's id2label",
                     _rename_to_model("checkpoint"), key="resume_from_checkpoint")
    if sorted(dataset_labels) == sorted(checkpoint_labels):
        if dataset_labels != checkpoint_labels:
            logger.info("labels: the dataset's classes are mapped to the checkpoint's label order")
        return checkpoint_labels
    if is_generic(checkpoint_labels) and len(checkpoint_labels) == len(dataset_labels):
        logger.warning("labels: the checkpoint's classes are unnamed (LABEL_0...): only their number could be checked")
        return dataset_labels
    raise LabelError(
        f"resume_from_checkpoint: the checkpoint was trained on other classes: "
        f"{_difference(dataset_labels, checkpoint_labels, 'checkpoint')}. Resume with the data it was trained on, "
        "or train into a new output_dir"
    )


def teacher_label_order(
    labels: Sequence[str], teacher_labels: Sequence[str], mapping: str = BY_NAME,
    key: str = "teacher_model_name_or_path", source: str = "the dataset",
) -> list[int] | None:
    """For each class of the run, the index of the teacher's logit for it; None when they agree.

    ``key`` and ``source`` word the error: the recipe key and where the run's names come from
    (the Python API names the ``teacher`` argument and the student's or the data's names).

    Raises:
        LabelError: the names differ (``by_name``), repeat in one list but not in the other
            order (ImageNet's names hold ``crane`` twice: by name, one would take the other's
            logit), or the number of classes differs.
    """
    labels, teacher_labels = list(labels), list(teacher_labels)
    if labels == teacher_labels:  # the same names in the same order pair alike by name and by position
        return None
    teacher_labels = check_teacher_names(labels, teacher_labels, mapping, key, source)
    if mapping == BY_INDEX:
        logger.info("labels: teacher classes paired by position (teacher_label_mapping: by_index)")
        _say_named_elsewhere(labels, teacher_labels, source)
        return None
    if is_generic(teacher_labels):
        logger.warning("labels: the teacher's classes are unnamed (LABEL_0...): only their number could be "
                       "checked; make sure it was trained with the dataset's class order")
        return None
    position = first_ids(teacher_labels)
    order = [position[name] for name in labels]
    return None if order == list(range(len(order))) else order


def check_teacher_names(
    labels: list[str], teacher_labels: list[str], mapping: str, key: str, source: str,
) -> list[str]:
    """The errors of :func:`teacher_label_order`, and nothing else (a check from the teacher's
    config alone, before its weights load, says nothing twice); returns the teacher's names as
    they pair with the run's (ImageNet's folder ids for its descriptions).

    Raises:
        LabelError: as :func:`teacher_label_order`.
    """
    if labels == teacher_labels:
        return teacher_labels
    if mapping == BY_NAME:
        teacher_labels = respelt(labels, teacher_labels) or teacher_labels  # ImageNet's ids and its two cranes
        check_same_forms(labels, teacher_labels, source, "the teacher's id2label",
                         _rename_to_model("teacher"), key=key)
    if len(labels) != len(teacher_labels) or (mapping == BY_NAME and not is_generic(teacher_labels)
                                              and sorted(labels) != sorted(teacher_labels)):
        fix = ("use a teacher trained on these classes, or rename the classes to the teacher's names"
               if mapping == BY_NAME else "use a teacher trained on these classes")
        twice = _repeated_names(teacher_labels)
        if mapping == BY_NAME and twice:  # no data set can repeat a name (ImageNet's 'crane')
            fix = (f"use a teacher trained on these classes, or list the classes in the teacher's order, naming each "
                   f"class it names more than once ({listed_names(twice)}) with a name that begins with that one")
        if mapping == BY_NAME and not twice and _folded(labels) == _folded(teacher_labels):
            fix = ("rename the classes (class folders or the dataset's label names) to the teacher's spelling: the "
                   "names differ only in case, and case matters")
        # by position only where the names the two share (in any case: 'Dog' is the teacher's 'dog') sit at
        # the same places: data sorted otherwise than the teacher's (a folder of ImageNet's descriptions, or
        # 'Cat'/'Dog' against 'cat'/'dog' in another order) paired every class with another's logit
        known = {name.casefold() for name in teacher_labels}
        same_places = all(name.casefold() == theirs.casefold() for name, theirs in zip(labels, teacher_labels)
                          if name.casefold() in known)
        hint = (" (or set teacher_label_mapping: by_index to pair classes by position)"
                if mapping == BY_NAME and len(labels) == len(teacher_labels) and same_places else "")
        raise LabelError(
            f"{key}: the teacher's classes do not match those of {source}: "
            f"{_difference(labels, teacher_labels, 'teacher', source)}. Fix: {fix}{hint}"
        )
    repeated = _repeated_names(labels)
    if mapping == BY_NAME and repeated and not is_generic(teacher_labels):
        raise LabelError(
            f"{key}: the class names {listed_names(repeated)} repeat, so the teacher's classes cannot be paired with "
            f"{source}'s by name, and their orders differ. Fix: give each class its own name, or set "
            "teacher_label_mapping: by_index if both list the classes in the same order")
    return teacher_labels


class _ReorderLogits:
    """Forward hook re-indexing a classifier's output logits to the run's class order."""

    def __init__(self, order: Sequence[int]) -> None:
        self.order = torch.tensor(list(order), dtype=torch.long)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        for key in ("logits", "cls_logits", "distillation_logits"):
            value = output.get(key) if hasattr(output, "get") else None
            if value is not None:
                self.order = self.order.to(value.device)
                output[key] = value.index_select(-1, self.order)
        return output


def apply_label_order(teacher: nn.Module, labels: Sequence[str], order: list[int]) -> None:
    """Re-index the teacher's logits into the run's class order, in place.

    By a forward hook, so that every path that runs the teacher, the losses and the accuracy check
    alike, sees the run's order; its config's label maps are rewritten to match.
    """
    teacher.register_forward_hook(_ReorderLogits(order))
    set_labels(teacher.config, LabelMaps.of(labels))
    logger.info("labels: the teacher's %d classes are in another order; its logits are re-indexed by name", len(labels))


def _say_named_elsewhere(labels: Sequence[str], teacher_labels: Sequence[str], source: str) -> None:
    """By position, a teacher that names the run's classes in another order pairs each moved class
    with another's logit: a whole permutation fails the teacher check, two swapped classes of a
    thousand do not. The names say it, so it is said."""
    if is_generic(teacher_labels) or _folded(labels) != _folded(teacher_labels):  # 'Dog' is the teacher's 'dog'
        return
    moved = [i for i, (name, theirs) in enumerate(zip(labels, teacher_labels)) if name.casefold() != theirs.casefold()]
    if moved:
        first = moved[0]
        spelt = "" if sorted(labels) == sorted(teacher_labels) else \
            " once the names are spelt alike (they differ in case: rename the classes to the teacher's spelling)"
        logger.warning("labels: teacher_label_mapping: by_index pairs %d class(es) of %s with a teacher logit of "
                       "another name (class %d, %r, with the teacher's %r): the teacher names the same classes in "
                       "another order, which teacher_label_mapping: by_name pairs by name%s", len(moved), source,
                       first, labels[first], teacher_labels[first], spelt)


def teacher_alignment(teacher: nn.Module, labels: Sequence[str], mapping: str, reads_logits: bool,
                      args: Any, **wording: str) -> list[int] | None:
    """How the teacher's classes pair with the run's ``labels``: the order to re-index its logits
    by (:func:`apply_label_order`), None when they pair as they are, or an error. The teacher is
    not changed, so a caller can refuse the run after this without having touched it.

    The command line (before the trainer is built) and the trainer (for Python callers) both decide
    this, and must decide it alike. When its logits are distilled, a teacher of other classes is an
    error. When only its features are, its classes do not matter to the losses, but its accuracy
    on the run's labels means nothing, so ``args.teacher_accuracy_check`` is turned off.

    Args:
        reads_logits: whether any loss of the run reads the teacher's logits
            (``losses.reads_teacher_logits``).
        args: the run's training arguments; plain ``TrainingArguments`` have no accuracy check.
        wording: ``key`` and ``source`` of the error, as for :func:`teacher_label_order`.

    Raises:
        LabelError: the classes differ and ``reads_logits``.
    """
    try:
        order = teacher_label_order(labels, model_label_names(teacher.config), mapping, **wording)
    except LabelError:
        if reads_logits:
            raise
        mark_other_classes(teacher, args)
        return None
    setattr(teacher, _OTHER_CLASSES, False)  # a teacher object reused by a later run of its own classes
    return order


def mark_other_classes(teacher: nn.Module, args: Any) -> None:
    """A teacher whose classes are not the run's, whose features alone are distilled: its accuracy
    is neither checked (``args.teacher_accuracy_check`` off) nor reported (``has_other_classes``):
    the card compared its class ids with other classes'."""
    logger.info("labels: the teacher has other classes; only its features are distilled, so its accuracy "
                "is not checked")
    if hasattr(args, "teacher_accuracy_check"):
        args.teacher_accuracy_check = "off"
    setattr(teacher, _OTHER_CLASSES, True)


# Set on a teacher whose classes are not the run's (its features alone are distilled): an
# accuracy of its logits on the run's labels means nothing, wherever it would be reported.
_OTHER_CLASSES = "hf_rcka_other_classes"


def has_other_classes(teacher: nn.Module | None) -> bool:
    """Whether ``teacher`` was marked (``mark_other_classes``) as classifying other classes than the run's."""
    return bool(getattr(teacher, _OTHER_CLASSES, False))


def align_teacher_classes(teacher: nn.Module, labels: Sequence[str], mapping: str, reads_logits: bool,
                          args: Any, **wording: str) -> None:
    """:func:`teacher_alignment`, applied to the teacher at once."""
    order = teacher_alignment(teacher, labels, mapping, reads_logits, args, **wording)
    if order is not None:
        apply_label_order(teacher, labels, order)


def check_split_classes(train: Sequence[str], validation: Sequence[str], key: str = "validation_dir") -> None:
    """Validation classes must be training classes (the student has no output for any other).

    A training class without validation images (a rare class) is allowed, and said: datasets
    gives both splits the training classes, and the evaluation measures none of that class.

    Raises:
        LabelError: naming the classes only the validation side has (with those only the training
            side has: a renamed folder, ``Dog`` for ``dog``), or the classes whose names differ
            only in Unicode form (which would print alike in a list of differences).
    """
    check_same_forms(validation, train, key, "train_dir",
                     f"rename the class folders so both use the same form, e.g. NFC ({TO_NFC})")
    only_val, only_train = set(validation) - set(train), set(train) - set(validation)
    if only_val:
        parts = [f"{key} has classes train_dir lacks: {listed_names(only_val)}"]
        if only_train:
            parts.append(f"train_dir has classes {key} lacks: {listed_names(only_train)}")
        raise LabelError("; ".join(parts) + ". Class folders need the same names in both (case matters)")
    if only_train:
        logger.warning("labels: train_dir has classes %s lacks: %s. They are trained, and the evaluation measures "
                       "none of their images", key, listed_names(only_train))


def check_validation_labels(train: Sequence[str], validation: Sequence[str]) -> None:
    """A dataset's validation labels must be classes the training split has: the student has no
    output for any other, and mapping its labels would fail only at the first evaluation.

    Raises:
        LabelError: naming the validation classes the training split lacks.
    """
    check_same_forms(validation, train, "the validation split", "the training split",
                     "give both splits the same spelling of each class name, e.g. NFC")
    extra = set(validation) - set(train)
    if extra:
        raise LabelError(
            f"the validation split has classes the training split lacks: {listed_names(extra)}; the student has no "
            "output for them. Give a validation split with the training split's classes"
        )
