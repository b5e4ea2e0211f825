"""What a Python caller hands ``DistillationTrainer``, checked as the command line checks what it loads.

The command line builds the student, the teacher and the data itself, and checks them before
training (``cli.run_inputs``). A caller of the Python API builds them, and each mistake below used
to train to the end and report a number, or fail after the expensive work:

* a teacher whose classes are in another order (its logits are realigned by name, as the command
  line does; other names are an error);
* a student whose ``id2label`` contradicts the dataset's ``ClassLabel`` names: ``eval_accuracy``
  counts ids, but the exported model names its predictions wrongly;
* a ready ``DistillationModel`` next to a ``teacher`` or losses that it would silently ignore;
* a student that shares weights with the (frozen) teacher, which froze them in the student too;
* feature losses without ``processing_class``: pairs planned at 224 px for 16 px data;
* datasets whose items are not ``pixel_values`` and ``labels`` (a bare ``KeyError`` at the first batch);
* an ``eval_dataset`` whose ``ClassLabel`` lists the classes in another order than the training
  set's: Trainer compares ids, and a correct model scored 0.19 on such a copy of its 0.96 set;
* a student with another number of classes than the data (``LABEL_k`` names hid it): a crash
  inside the loss at the first step, or a 1000-way head exported for 10 classes;
* a ready ``DistillationModel`` whose teacher lists its classes in another order than the
  student (no realignment ran: the teacher scored 0.0 and was distilled as it was);
* an image processor whose size is not the data's: feature pairs planned for another grid;
* a centred CKA over the samples of a batch of fewer than 3 (its value is a constant: nothing
  was distilled, while the logged loss read as a perfect match);
* an optimizer that leaves out the adapters' and projectors' weights (they kept their random
  start), a ``compute_loss_func`` (never called), a bare timm model or ``model_init``.

The rules of the arguments themselves (plain ``TrainingArguments`` too) are in
:mod:`hf_rcka.training_values`; ``metric_for_best_model`` is checked in :mod:`.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from ..errors import DataError, LabelError, ModelError, RecipeError
from ..modeling.assembly import active_specs, run_loss_specs
from ..modeling.distillation_model import DistillationModel
from ..modeling.teacher_inputs import input_stats, planned_input_size
from ..models.labels import BY_NAME, TEACHER_LABEL_MAPPINGS, align_teacher_classes, is_generic, model_label_names
from ..losses import reads_features, reads_teacher_logits
from ..registry import LOSSES

logger = logging.getLogger(__name__)


def check_activation_checkpointing(student: torch.nn.Module, args: Any) -> None:
    """``activation_checkpointing`` (``gradient_checkpointing``) needs a student transformers can
    checkpoint; HF ResNet and ConvNeXt cannot, which was a traceback after the models and data had
    loaded."""
    if not getattr(args, "activation_checkpointing", False) or getattr(student, "supports_gradient_checkpointing", False):
        return
    raise ModelError(f"activation_checkpointing: the student ({type(student).__name__}) does not support it in "
                     "transformers: set activation_checkpointing: false, or train a student that does (timm's "
                     "version of the architecture, through a timm/ model id)")


def check_model_objects(model: Any, teacher: Any, kwargs: Mapping[str, Any]) -> None:
    """What ``DistillationTrainer`` cannot use, refused in one line instead of an ``AttributeError``
    from deep inside (a bare timm model has no ``config``; ``model_init`` leaves ``model`` None)
    or silently ignored (``compute_loss_func``: the loss is the losses' weighted sum)."""
    if kwargs.get("model_init") is not None:
        raise ModelError("DistillationTrainer does not take model_init (the distillation model wraps one student and "
                         "its teacher): build the student and pass it as model")
    if kwargs.get("compute_loss_func") is not None:
        raise RecipeError("DistillationTrainer does not call compute_loss_func: its loss is the weighted sum of "
                          "args.losses. Register a loss of your own (hf_rcka.registry.LOSSES) and name it in losses")
    for role, module in (("model", model), ("teacher", teacher)):
        if module is None and role == "teacher":
            continue
        if isinstance(module, DistillationModel):  # its student is checked as a student given alone
            module = module.student
        if not isinstance(module, torch.nn.Module) or getattr(module, "config", None) is None:
            raise ModelError(
                f"DistillationTrainer: {role} must be a transformers image classifier (a model with a config), got "
                f"{type(module).__name__}. A timm model: load it through transformers, "
                "AutoModelForImageClassification.from_pretrained('timm/<arch>') (a TimmWrapperForImageClassification)")
        if role == "model" and not any(p.requires_grad for p in module.parameters()):
            # every loss would train nothing of it (or fail on a loss without gradient), and it
            # would be saved as it came; a model frozen as an earlier run's teacher stays frozen
            raise ModelError(f"DistillationTrainer: the student {type(module).__name__} has no trainable weights "
                             "(requires_grad is False for all of them; a teacher is frozen in place): call "
                             "model.requires_grad_(True) before training it")
        if role == "model" and not callable(getattr(module, "save_pretrained", None)):
            # it would train to the end and fail at its first checkpoint or the final save
            raise ModelError(
                f"DistillationTrainer: model {type(module).__name__} has a config but no save_pretrained, so the "
                "trained student could not be saved: subclass transformers.PreTrainedModel (with its config_class)")


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
            f"({_some(missing)}): they would keep their random start. Build it over the DistillationModel's "
            "parameters (build_distillation_model(...).parameters(), then pass that model), or leave optimizers unset")


def check_late_parameters(model: DistillationModel, optimizer: Any) -> None:
    """After the first forward: weights a loss or adapter created there, after Trainer built its
    optimizer, would never be trained (and a checkpoint of them would not resume)."""
    late = _not_optimized(model, optimizer)
    if late:
        raise ModelError(
            f"{len(late)} weight(s) appeared during the first forward, after the optimizer was built, and would never "
            f"be trained: {_some(late)}. Create a loss's weights in its setup() (LossContext has the pooled widths); "
            "a projection between paired hidden states belongs in an adapter, which is built with both features' "
            "shapes (hf_rcka.registry.ADAPTERS)")


class LateParameterCheck(TrainerCallback):
    """Runs ``check_late_parameters`` once per ``train()``, after its first optimizer step: the
    first forward of training has run by then, and the callback is handed the optimizer
    (``compute_loss`` may run before ``train()`` has built one).

    Args:
        model: returns the distillation model (looked up when needed: wrappers may replace it).
    """

    def __init__(self, model: Callable[[], DistillationModel]) -> None:
        self.model, self.pending = model, True

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.pending = True

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):  # noqa: D102
        if self.pending and optimizer is not None:
            self.pending = False
            check_late_parameters(self.model(), optimizer)


def _not_optimized(model: torch.nn.Module, optimizer: Any) -> list[str]:
    held = {id(p) for group in optimizer.param_groups for p in group.get("params", ())}
    if not held:  # a layer-wise optimizer (GaLore's) keeps its real ones elsewhere
        return []
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held]


def _some(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def check_ready_model(model: DistillationModel, teacher: Any, teacher_processor: Any, args: Any, mapping: str,
                      datasets: tuple[Any, ...] = ()) -> None:
    """A ready ``DistillationModel`` brings its teacher and losses: arguments that would build
    others are refused rather than ignored. Its student is checked against the data
    (``datasets``: training and evaluation sets), and its teacher's classes against its student's
    by name, and realigned, as models passed on their own are."""
    given = [name for name, value in (("teacher", teacher), ("teacher_processor", teacher_processor)) if value is not None]
    if given:
        raise ModelError(f"DistillationTrainer: {' and '.join(given)} given with a ready DistillationModel, which "
                         "has its own teacher and inputs: build the DistillationModel with them, or pass the student")
    specs = getattr(args, "losses", None)
    wanted = {spec["name"] for spec in active_specs(specs)} if specs else None
    if wanted is not None and wanted != set(model.losses):
        raise RecipeError(f"losses {sorted(wanted)} in args, but the DistillationModel given computes "
                          f"{sorted(model.losses)}: build it with these losses, or leave args.losses unset")
    teacher = model.teacher if model.teacher is not None and model.needs_teacher else None
    check_labels(model.student, teacher, args, datasets, mapping, loss_names=list(model.losses))


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
    specs = active_specs(run_loss_specs(args, teacher is not None))
    features = [spec["name"] for spec in specs if reads_features(LOSSES.get(spec["name"]))]
    pixels = first_item.get("pixel_values") if first_item is not None else None
    if not features or not isinstance(pixels, torch.Tensor) or pixels.ndim < 2:
        return
    planned = planned_input_size(student, input_stats(processing_class) if processing_class is not None else None)
    if processing_class is not None:
        source = "processing_class's output size"
        fix = "Give the data the processor's size (dataset.set_transform with processing_class), or pass its processor"
    else:
        source = "without processing_class, the student config's"
        fix = "Pass processing_class=<the student's image processor>"
    if tuple(pixels.shape[-2:]) != tuple(planned):
        raise RecipeError(
            f"losses {features} compare hidden states, whose grids are planned at the input size: {source} "
            f"{planned[0]}x{planned[1]}, but the data's images are {pixels.shape[-2]}x{pixels.shape[-1]}. {fix}")


def check_columns(train_dataset: Any, eval_dataset: Any, collator_given: bool) -> Mapping | None:
    """Each dataset's first item has ``pixel_values`` and ``labels`` (the batch the model reads);
    returns the first training item (None when the data cannot be indexed).

    Other names (``image``, ``label``) failed at the first batch with a bare ``KeyError``; one
    item is decoded here, through the dataset's transform, to say which keys it has. A caller's
    own ``data_collator`` may build the batch from other keys, so its items are not checked.
    """
    first = None
    for role, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
        for where, _, item in _first_items(role, dataset):
            first = item if first is None and role == "train_dataset" else first
            if not collator_given:
                _check_keys(where, item, ("pixel_values", "labels"))
    return first


def check_later_dataset(student: Any, dataset: Any, role: str, collator_given: bool) -> None:
    """A dataset given to ``evaluate()`` or ``predict()`` after construction (or set as
    ``eval_dataset`` since) gets the checks the constructor's ``eval_dataset`` got: its items' keys
    and its class names against the student's.

    Without them, relabelled classes read as accuracy 0.0 and a ``label`` column as an evaluation
    with no accuracy and no loss, both without an error. ``predict()`` (``role`` ``test_dataset``)
    may have no labels at all.
    """
    student_names = _names(student)
    named = student_names is not None and not _placeholders(student_names)
    for where, part, item in _first_items(role, dataset):
        if not collator_given:
            _check_keys(where, item, ("pixel_values",) if role == "test_dataset" else ("pixel_values", "labels"))
        for _, names in _class_names((part,)):
            if named and not _placeholders(names) and names != student_names:
                raise LabelError(f"{where} lists its classes as {names[:8]}, the student as {student_names[:8]}: "
                                 "its accuracy would compare other classes' ids. Cast its label column to the "
                                 "student's order (dataset.align_labels_with_mapping(model.config.label2id, 'labels'))")


def _first_items(role: str, dataset: Any) -> Iterator[tuple[str, Any, Mapping]]:
    """``(where, part, its first item)`` of each part of ``dataset`` (one dataset or a dict) that
    can be indexed, or that is a ``datasets.IterableDataset`` (iterating one starts afresh each
    time; a plain torch ``IterableDataset`` may be a one-shot stream, so it is not read)."""
    import datasets

    for name, part in (dataset.items() if isinstance(dataset, dict) else [(None, dataset)]):
        if isinstance(part, datasets.IterableDataset):
            item = next(iter(part), None)
        elif part is None or isinstance(part, torch.utils.data.IterableDataset) or not hasattr(part, "__len__"):
            continue
        else:
            item = part[0] if len(part) else None
        if isinstance(item, Mapping):
            yield (role if name is None else f"{role}[{name!r}]"), part, item


def _check_keys(where: str, item: Mapping, needed: tuple[str, ...]) -> None:
    missing = [key for key in needed if key not in item]
    if missing:
        raise DataError(
            f"{where}: its items have no {missing} (they have {sorted(item)}): rename the label column "
            "(dataset.rename_column('label', 'labels')) and set a transform that turns images into pixel_values "
            "(dataset.set_transform(...) with the processor), or pass a data_collator that builds them")


def _agreed_names(parts: list[tuple[str, list[str]]]) -> list[str] | None:
    """The class names every part of ``parts`` (``_class_names``) gives, or None when none names them."""
    named = [(where, names) for where, names in parts if not _placeholders(names)]
    if not named:
        return None
    (first_where, first), *others = named
    for where, names in others:
        if names != first:
            raise LabelError(
                f"{where} lists its classes as {names[:8]}, {first_where} as {first[:8]}: labels are ids, so its "
                f"images would be scored against other classes. Align it by name: "
                f"<{where}>.align_labels_with_mapping({{name: i for i, name in enumerate(names)}}, <label column>) "
                f"with names = <{first_where}'s ClassLabel>.names (or cast it with that ClassLabel)")
    return first


def _class_names(datasets: tuple[Any, ...]) -> list[tuple[str, list[str]]]:
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
    ``_class_names``), also when nothing names them."""
    num_labels = getattr(getattr(student, "config", None), "num_labels", None)
    for where, names in parts:
        if num_labels is not None and len(names) != num_labels:
            raise LabelError(
                f"the student predicts {num_labels} classes but {where}'s labels have {len(names)}: build it with "
                f"num_labels={len(names)} (and id2label=dict(enumerate(names)), names = its ClassLabel's names)")


def _placeholders(names: list[str]) -> bool:
    """Names that only number the classes: ``LABEL_0``... (transformers) or ``0``, ``1``... (a
    ClassLabel cast from integers), which say nothing about which class is which."""
    return is_generic(names) or names == [str(i) for i in range(len(names))]


def check_labels(student: Any, teacher: Any, args: Any, datasets: tuple[Any, ...], mapping: str,
                 loss_names: list[str] | None = None) -> None:
    """The student's classes against the data's, and the teacher's against the run's (by name).

    ``loss_names``: the losses the model computes (default: ``args.losses``, or the default losses).

    Raises:
        LabelError: the student names or counts the classes otherwise than the dataset, the parts
            of the dataset name them otherwise, or the teacher's classes differ from the run's
            (``mapping`` ``by_name``).
    """
    if mapping not in TEACHER_LABEL_MAPPINGS:
        raise RecipeError(f"teacher_label_mapping must be one of {TEACHER_LABEL_MAPPINGS}, got {mapping!r}")
    student_names = _names(student)
    parts = _class_names(datasets)
    data_names = _agreed_names(parts)
    _check_head_size(student, parts)
    if student_names is not None and _placeholders(student_names):
        student_names = None
    if data_names and student_names and student_names != data_names:
        raise LabelError(
            f"the student's id2label {student_names[:8]} is not the dataset's class order {data_names[:8]}: its "
            "accuracy would count ids while the exported model names them otherwise. Build the student with "
            "id2label=dict(enumerate(names)), names = dataset.features['labels'].names")
    run_names = student_names or data_names
    teacher_names = _names(teacher) if teacher is not None else None
    if loss_names is None:
        loss_names = [spec["name"] for spec in active_specs(run_loss_specs(args, has_teacher=True))]
    reads_logits = any(reads_teacher_logits(LOSSES.get(name)) for name in loss_names)
    if not run_names and teacher_names and reads_logits and mapping == BY_NAME and not _placeholders(teacher_names):
        logger.warning("labels: neither the student's id2label nor the dataset's ClassLabel names the classes, so the "
                       "teacher's classes %s are paired with the data's by position, unchecked. Name them "
                       "(a ClassLabel column, or the student's id2label) to have them matched by name",
                       teacher_names[:5])
    if not run_names or teacher_names is None or len(teacher_names) != len(run_names):
        return  # a class count the losses cannot use is refused when the model is built
    align_teacher_classes(teacher, run_names, mapping, reads_logits, args, key="teacher",
                          source="the student's id2label" if student_names else "the dataset's ClassLabel")


def name_student_classes(student: Any, datasets: tuple[Any, ...]) -> None:
    """Give a student whose classes are only numbered (``LABEL_0``...) the names of the data's
    ``ClassLabel``: the run evaluates and pairs the teacher by them, and the exported model would
    otherwise predict ``LABEL_3`` where the data says ``cat``. Call it once the trainer's checks
    have passed (``check_labels`` has compared the names)."""
    config = getattr(student, "config", None)
    names = _agreed_names(_class_names(datasets))
    student_names = _names(student)
    if config is None or not names or (student_names and not _placeholders(student_names)):
        return
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    logger.info("labels: the student's classes are named after the dataset's ClassLabel: %s", names[:5])


def _names(model: Any) -> list[str] | None:
    config = getattr(model, "config", None)
    return model_label_names(config) if config is not None and getattr(config, "id2label", None) else None


__all__ = [
    "BY_NAME", "check_activation_checkpointing", "check_columns",
    "check_labels", "check_late_parameters", "check_later_dataset", "check_model_objects",
    "check_models", "check_optimizer", "check_ready_model", "LateParameterCheck",
    "name_student_classes",
]
