"""The datasets a Python caller hands ``DistillationTrainer``: items the model can read.

Each dataset's first item must carry ``pixel_values`` and ``labels`` (the batch the model reads):
other names (``image``, ``label``) failed at the first batch with a bare ``KeyError``. A dataset
given later, to ``evaluate()`` or ``predict()``, gets the same checks, and its class names are
compared with the student's (:mod:`.given_labels`).
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ..errors import DataError, LabelError
from ..modeling.teacher_inputs import InputStats
from .given_labels import data_class_names, model_class_names, numbered_only, other_order_of

logger = logging.getLogger(__name__)


def check_columns(train_dataset: Any, eval_dataset: Any, collator: Any = None) -> Mapping | None:
    """Each dataset's first item has ``pixel_values`` and ``labels`` (the batch the model reads);
    returns the first training item (None when the data cannot be indexed).

    Other names (``image``, ``label``) failed at the first batch with a bare ``KeyError``; one
    item is decoded here, through the dataset's transform, to say which keys it has. A caller's
    own ``data_collator`` may build the batch from other keys, so its items are not checked: the
    batch it makes of the first training item is (``check_collated``).
    """
    if isinstance(train_dataset, Mapping):  # a DatasetDict's length is its number of splits
        raise DataError(f"train_dataset is a dict of {len(train_dataset)} splits ({sorted(train_dataset)[:4]}): pass "
                        "one split, e.g. train_dataset=dataset['train'] (several evaluation sets may be a dict)")
    first = first_evaluated = None
    for role, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
        for where, _, item in _first_items(role, dataset, collator is not None):
            first = item if first is None and role == "train_dataset" else first
            first_evaluated = item if first_evaluated is None and role == "eval_dataset" else first_evaluated
            if collator is None:
                _check_keys(where, item, ("pixel_values", "labels"))
                check_pixel_type(where, item["pixel_values"])
    if collator is not None and first is not None:
        check_collated(collator, first)
    if collator is not None and first_evaluated is not None:  # Trainer batches evaluations with the same collator
        check_collated(collator, first_evaluated, evaluated=True)
    return first


def check_collated(collator: Any, item: Any, evaluated: bool = False) -> None:
    """The batch a caller's ``data_collator`` makes of two copies of ``item`` holds ``pixel_values``
    and ``labels`` and nothing the distillation model does not take; an evaluation set's
    (``evaluated``) holds class ids (``check_evaluation_labels``).

    hf_rcka's own collate leaves other columns out; a caller's (``DefaultDataCollator`` keeps every
    column: an ``id``) failed at the first step, after the models loaded and the teacher was checked.
    A collator that cannot batch these two items is left to the first step, where its own error says why.
    """
    try:  # copies: a collator may change the items it is given (pop a column), and these are the dataset's
        batch = collator([copy.deepcopy(item), copy.deepcopy(item)])
    except Exception:  # noqa: BLE001 - e.g. one that needs a whole batch: the first step tells
        return
    check_batch_keys(batch)
    missing = [key for key in ("pixel_values", "labels") if key not in batch]
    if missing:
        raise DataError(f"the data_collator's batch has no {missing} (it has {sorted(batch)}): the collator must "
                        "build pixel_values (the image tensor) and labels (the class ids)")
    where = "the data_collator's batch" + (" of an eval_dataset item" if evaluated else "")
    check_pixel_type(where, batch["pixel_values"])
    if evaluated:
        check_evaluation_labels(where, batch["labels"])


def check_evaluation_labels(where: str, labels: Any) -> None:
    """An evaluation's labels are class ids, a 1-D integer tensor: the accuracy and the teacher's
    check compare the argmax with them. Soft or one-hot targets (a Mixup of the caller's own in
    their ``data_collator``, which Trainer also batches evaluations with) trained, and then failed
    at the teacher check or the first evaluation with a shape mismatch from inside the metrics."""
    if isinstance(labels, torch.Tensor) and (labels.ndim != 1 or labels.is_floating_point()):
        raise DataError(f"{where}: its labels are a {str(labels.dtype).removeprefix('torch.')} tensor of shape "
                        f"{tuple(labels.shape)}, not class ids (a 1-D integer tensor), which an evaluation scores the "
                        "argmax against: give evaluation batches class ids (for Mixup/CutMix in training, pass "
                        "augmentation=hf_rcka.AugmentationArguments(mixup=..., cutmix=...) instead of mixing in the "
                        "collator)")


def check_pixel_type(where: str, pixels: Any) -> None:
    """``pixel_values`` must be floats, as an image processor makes them (rescaled and normalised).

    Integer pixels (``uint8`` 0..255 arrays, a dataset formatted as torch before any processor ran)
    trained without an error: the models cast them to float and read 0..255 values, while the
    exported model's ``pipeline()`` feeds it the processor's normalised ones, so the reported
    accuracy was not the deployed model's.
    """
    dtype = getattr(pixels, "dtype", None)
    if isinstance(pixels, torch.Tensor):
        integer = not pixels.is_floating_point()
    elif isinstance(pixels, np.ndarray):
        integer = not np.issubdtype(pixels.dtype, np.floating)
    else:
        return
    if integer:
        raise DataError(f"{where}: its pixel_values are {dtype} (raw pixel values?), not the floats an image "
                        "processor makes: the models would read them unnormalised, unlike pipeline() on the exported "
                        "model. Turn the images into pixel_values with the processor in the dataset's transform "
                        "(dataset.set_transform(...) with processing_class)")


_ERASING_NOISE = 8.0  # standard deviations of timm's random-erasing noise that no image reaches


def check_pixel_range(item: Mapping | None, stats: InputStats) -> None:
    """The first training image's ``pixel_values`` lie in the range ``processing_class`` makes
    (``stats``: ``(image - mean) / std`` of an image in [0, 1]), with a wide margin for augmentation.

    Float pixels the processor never made (``PILToTensor().float()``: 0..255, not rescaled or
    normalised) trained without an error, and the exported model, which ``pipeline()`` feeds through
    the saved processor, then read other inputs than it trained and was evaluated on.
    """
    pixels = item.get("pixel_values") if item is not None else None
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point() or pixels.ndim != 3:
        return
    if len(stats.mean) != pixels.shape[0]:
        return
    mean, std = (torch.tensor(values, dtype=torch.float64).view(-1, 1, 1) for values in (stats.mean, stats.std))
    low, high = -mean / std, (1 - mean) / std
    # colour jitter: well inside 4 ranges; random erasing's 'pixel' fill is standard-normal noise in
    # the normalised units whatever the processor's std (beyond +-4 in a 224 px image's erased third,
    # outside [-4, 5] for a processor that only rescales), hence the absolute part
    margin = 4 * (high - low) + _ERASING_NOISE
    values = pixels.detach().to("cpu", torch.float64)
    if bool(((values > high + margin) | (values < low - margin)).any()):
        raise DataError(f"train_dataset: its first image's pixel_values range over [{values.min():.4g}, "
                        f"{values.max():.4g}], but processing_class makes [{low.min() + 0.0:.3g}, {high.max():.3g}] "
                        "((image - mean) / std): the images were not made by it (0..255 floats, not rescaled and "
                        "normalised?), so the exported model, which pipeline() feeds through it, would read other "
                        "inputs than it trained on. Turn the images into pixel_values with processing_class in the "
                        "dataset's transform")


def say_evaluation_size_not_deployed(eval_dataset: Any, stats: InputStats) -> None:
    """Warn when an evaluation set's images are of another size than ``processing_class`` makes
    (``stats``).

    The processor is saved with the student and ``pipeline()`` feeds the export through it, while
    the run's accuracy (and the card's) is measured on the evaluation set as given: a CNN evaluated
    at 16 px beside a 24 px processor was carded with an accuracy its deployment never sees. Said,
    not refused: a larger evaluation size than the training one is a known choice (timm's
    ``test_input_size``), which then belongs in the processor saved with the student.
    """
    made = tuple(stats.size)
    for where, _, item in _first_items("eval_dataset", eval_dataset):
        size = image_size(item)
        if size is not None and tuple(size) != made:
            logger.warning("%s: its images are %dx%d, but processing_class, which is saved with the student and "
                           "which pipeline() feeds the exported model through, makes %dx%d: the run's accuracy (and "
                           "the card's) is measured at another size than its deployment. Evaluate on images the "
                           "processor makes, or pass the processor of the evaluation size as processing_class",
                           where, *size, *made)


def check_channels(item: Mapping | None, student: Any) -> None:
    """The first training image's ``pixel_values`` are (channels, height, width) with the student's
    channel count. Height, width, channels (``np.asarray(image)`` as a tensor) trained nothing: the
    teacher check or the first step failed inside the model's forward ("Expected 3 but got 16")."""
    pixels = item.get("pixel_values") if item is not None else None
    channels = getattr(getattr(student, "config", None), "num_channels", None)
    if not isinstance(pixels, (torch.Tensor, np.ndarray)) or pixels.ndim != 3 or not isinstance(channels, int):
        return
    if pixels.shape[0] != channels:
        hint = ("; they look channels-last: permute(2, 0, 1) them, or make them with the image processor"
                if pixels.shape[-1] == channels else "")
        raise DataError(f"train_dataset: its first image's pixel_values have shape {tuple(pixels.shape)}, but the "
                        f"student reads {channels}-channel images as (channels, height, width){hint}")


def check_batch_keys(batch: Any) -> None:
    """A batch is a mapping that holds only what ``DistillationModel.forward`` takes (else a
    ``TypeError`` there, or a tuple's tensors taken for keys). Runs at every step."""
    if not isinstance(batch, Mapping):
        raise DataError(f"the data_collator returns a {type(batch).__name__}, not a dict: return "
                        "{'pixel_values': image tensor, 'labels': class ids} from it")
    unknown = sorted(set(batch) - _model_inputs())
    if unknown:
        raise DataError(f"the batch has keys {unknown} besides pixel_values and labels, which the distillation "
                        "model does not take: leave them out in the data_collator (or the dataset's transform)")


def image_size(item: Mapping | None) -> tuple[int, int] | None:
    """The (height, width) of an item's ``pixel_values``, or None when it has no image tensor."""
    pixels = item.get("pixel_values") if item is not None else None
    return tuple(pixels.shape[-2:]) if isinstance(pixels, torch.Tensor) and pixels.ndim >= 2 else None


def check_image_sizes(dataset: Any, role: str, size: tuple[int, int] | None) -> None:
    """Each part of an evaluation (or test) set holds images of the training images' ``size``.

    The feature pairs' grids and adapters are planned at that size: at another, the evaluation
    failed after training (a feature map no longer fits its adapter) or compared other grids.
    ``size`` None: nothing was planned at a size (a CNN evaluated at a larger size than it trained
    at, as timm's ``test_input_size`` does, is fine).
    """
    if size is None:
        return
    for where, _, item in _first_items(role, dataset):
        if role == "test_dataset" and "labels" not in item:
            continue  # predictions alone: no loss, no feature read
        got = image_size(item)
        if got is None or got == size:
            continue
        if role == "train_dataset":  # set as trainer.train_dataset since the trainer was built
            harm, fix = "training on them", "images of that size, or build a new trainer with this train_dataset"
        else:
            harm, fix = "evaluating them", "the training set's evaluation transform (the same processor)"
        raise DataError(f"{where}: its images are {got[0]}x{got[1]}, the training images the trainer was built on "
                        f"{size[0]}x{size[1]}: the feature pairs are planned at that size, so {harm} would fail or "
                        f"compare other grids. Give it {fix}")


def check_later_dataset(student: Any, dataset: Any, role: str, collator_given: bool,
                        size: tuple[int, int] | None = None) -> None:
    """A dataset given to ``evaluate()`` or ``predict()`` after construction (or set as
    ``eval_dataset`` or ``train_dataset`` since) gets the checks the constructor's datasets got:
    its items' keys, its class names against the student's and its images' ``size``
    (``check_image_sizes``).

    Without them, relabelled classes read as accuracy 0.0 (or trained each class as another) and
    a ``label`` column as an evaluation with no accuracy and no loss, without an error.
    ``predict()`` (``role`` ``test_dataset``) may have no labels at all.
    """
    student_names = model_class_names(student)
    named = student_names is not None and not numbered_only(student_names)
    if not collator_given:
        check_image_sizes(dataset, role, size)
    for where, part, item in _first_items(role, dataset, collator_given):
        if not collator_given:
            _check_keys(where, item, ("pixel_values",) if role == "test_dataset" else ("pixel_values", "labels"))
            check_pixel_type(where, item["pixel_values"])
            unread = [key for key in item if key == "label" or key.endswith("_label")]
            if role == "test_dataset" and "labels" not in item and unread:  # a Hub test split's -1s: predictions
                logger.warning("%s: its %s column is not read, so predict() reports predictions and no accuracy: "
                               "rename it 'labels' (dataset.rename_column) to score them", where, unread[0])
        for _, names in data_class_names((part,)):
            if named and other_order_of(names, student_names):
                harm = ("it would train each class as another" if role == "train_dataset"
                        else "its accuracy would compare other classes' ids")
                raise LabelError(f"{where} lists its classes as {names[:8]}, the student as {student_names[:8]}: "
                                 f"{harm}. Cast its label column to the "
                                 "student's order (dataset.align_labels_with_mapping(model.config.label2id, 'labels'))")


@functools.cache
def _model_inputs() -> frozenset[str]:
    """What a batch may hold: ``DistillationModel.forward``'s arguments."""
    from ..modeling.distillation_model import DistillationModel

    return frozenset(inspect.signature(DistillationModel.forward).parameters) - {"self"}


def _first_items(role: str, dataset: Any, collator_given: bool = False) -> Iterator[tuple[str, Any, Mapping]]:
    """``(where, part, its first item)`` of each part of ``dataset`` (one dataset or a dict) that
    can be indexed, or that is an evaluation ``datasets.IterableDataset``.

    Iterating a ``datasets.IterableDataset`` starts afresh each time, but a shuffled one fills its
    whole buffer for its first item (thousands of streamed images), so only evaluation streams,
    whose wrong keys would evaluate to nothing without an error, are read; a training stream with
    wrong keys fails at its first step. A plain torch ``IterableDataset`` may be a one-shot stream
    and is never read.
    """
    import datasets

    for name, part in (dataset.items() if isinstance(dataset, dict) else [(None, dataset)]):
        if isinstance(part, datasets.IterableDataset):
            if role == "train_dataset":
                continue
            item = next(iter(part), None)
        elif part is None or isinstance(part, torch.utils.data.IterableDataset) or not hasattr(part, "__len__"):
            continue
        else:
            item = part[0] if len(part) else None
        where = role if name is None else f"{role}[{name!r}]"
        if item is None:
            # trained, torch's sampler failed at train() ("num_samples should be a positive integer");
            # evaluated, the metrics held no accuracy and no loss, and no error said why (a stream:
            # accelerate's "Batch does not contain any data (`None`)")
            doing = {"train_dataset": "train on", "test_dataset": "predict"}.get(role, "evaluate")
            raise DataError(f"{where} has no rows: there is nothing to {doing} (a filter or select that kept none?)")
        if isinstance(item, (tuple, list)) and not collator_given:  # torchvision's datasets: (image, target)
            raise DataError(f"{where}: its items are {type(item).__name__}s ({len(item)} values), not dicts: return "
                            "{'pixel_values': image tensor, 'labels': class id} from the dataset (or its transform)")
        if isinstance(item, Mapping):
            yield where, part, item


def _check_keys(where: str, item: Mapping, needed: tuple[str, ...]) -> None:
    missing = [key for key in needed if key not in item]
    if missing:
        raise DataError(
            f"{where}: its items have no {missing} (they have {sorted(item)}): rename the label column "
            "(dataset.rename_column('label', 'labels')) and set a transform that turns images into pixel_values "
            "(dataset.set_transform(...) with the processor), or pass a data_collator that builds them")


__all__ = [
    "check_batch_keys", "check_channels", "check_columns", "check_evaluation_labels", "check_image_sizes",
    "check_later_dataset", "check_pixel_range", "check_pixel_type", "image_size", "say_evaluation_size_not_deployed",
]
