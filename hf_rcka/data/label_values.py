"""The label values each split actually holds, checked before anything trains on them.

A ClassLabel feature lists the class names, but ``datasets`` shares one feature among all splits,
so the names say nothing about the values a split holds. Two silent failures come from trusting
them: an unlabelled split (Hub datasets often ship a ``test`` split whose labels are all ``-1``)
chosen for evaluation, where Python reads ``names[-1]`` as the last class and the run reports a
made-up accuracy; and a validation split holding classes that no training image has (an image
folder given as ``dataset_name`` whose ``validation/Dog`` sits next to ``train/dog``), whose
images count against a head that never learnt them. The values are read from the label column
alone (no image is decoded).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError, LabelError

logger = logging.getLogger(__name__)

UNLABELLED = -1  # datasets' ClassLabel value for "no label"


def label_column(dataset: datasets.Dataset, column: str):
    """The label column as one Arrow array: read alone, without decoding a single image.

    A dataset that selects rows of another (a carved split, ``max_train_samples``) is read with one
    Arrow ``take``: ``datasets`` turned its row indices into a Python list first (7.5 s at ImageNet's
    1.28M images).
    """
    indices = getattr(dataset, "_indices", None)
    if indices is None:
        return dataset.with_format("arrow")[column]
    return pc.take(dataset.data.column(column), indices.column(0))


def class_order(values: Sequence[Any]) -> list[Any]:
    """The distinct values of a label column that is not a ClassLabel, in class-index order.

    Sorted by value, so integer labels keep their numeric order (2 before 10), which a string sort
    (what ``class_encode_column`` does) would not.
    """
    return sorted(set(values))


def class_encoded(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    """``dataset`` with a plain label column turned into a ClassLabel in :func:`class_order`.

    Only the label column is rewritten; the images are not copied.
    """
    values = label_column(dataset, column).to_pylist()
    order = class_order(values)
    index = {value: i for i, value in enumerate(order)}
    feature = datasets.ClassLabel(names=[str(v) for v in order])
    return dataset.remove_columns(column).add_column(column, [index[v] for v in values], feature=feature)


def is_unlabelled(dataset: datasets.Dataset, column: str) -> bool:
    """Whether every label of ``dataset`` is missing (``-1``, null or empty text): a Hub test split's labels.

    For a plain integer column too: -1 is the usual "no label" there, and a split of nothing else
    cannot be evaluated (a -1/+1 binary task may still use -1 as a class in a split that has both).
    Empty text is a JSON test file's ``"label": ""`` (a CSV's empty cell reads as null).
    """
    values = label_column(dataset, column)
    if len(values) == 0:
        return False
    missing = values.null_count
    if pa.types.is_integer(values.type):  # a ClassLabel's -1, or a plain integer column's
        missing += int(pc.sum(pc.equal(values, UNLABELLED)).as_py() or 0)
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        missing += int(pc.sum(pc.equal(pc.utf8_trim_whitespace(values), "")).as_py() or 0)
    return missing == len(values)


def check_label_values(dataset: datasets.Dataset, column: str, split: str) -> None:
    """Every label of ``split`` is a class: no null, and for a ClassLabel an index of its names.

    Raises:
        DataError: naming the split, how many labels are missing or out of range, and an example.
    """
    values = label_column(dataset, column)
    feature = dataset.features[column]
    problems = []
    if values.null_count:
        problems.append(f"{values.null_count} labels are empty (null)")
    if isinstance(feature, datasets.ClassLabel) and len(values) > values.null_count:
        array = pc.drop_null(values).to_numpy()
        unlabelled = int(np.sum(array == UNLABELLED))
        outside = array[(array < 0) & (array != UNLABELLED) | (array >= feature.num_classes)]
        if unlabelled:
            problems.append(f"{unlabelled} labels are -1 (no label)")
        if outside.size:
            problems.append(f"{outside.size} labels are outside 0..{feature.num_classes - 1} (e.g. {int(outside[0])})")
    elif not isinstance(feature, datasets.ClassLabel):
        problems += _plain_missing(pc.drop_null(values))
    if problems:
        raise DataError(
            f"the {split!r} split's {column!r} column: {'; '.join(problems)} of {len(values)}. Every image needs "
            "one of the dataset's classes: remove the unlabelled rows, or fix the labels"
        )


def _plain_missing(values: pa.Array) -> list[str]:
    """"No label" values of a plain column, which would otherwise become classes of their own: -1
    among non-negative integers (datasets' convention), NaN (each NaN a class, as NaN != NaN),
    empty text; and fractional numbers, which are no classes at all."""
    if pa.types.is_integer(values.type):
        negative = pc.less(values, 0)
        unlabelled = int(pc.sum(pc.equal(values, UNLABELLED)).as_py() or 0)
        other_negative = int(pc.sum(negative).as_py() or 0) - unlabelled
        if unlabelled and not other_negative:
            return [f"{unlabelled} labels are -1 (no label; if -1 is a class, give it a non-negative id)"]
    elif pa.types.is_floating(values.type):
        nan = int(pc.sum(pc.is_nan(values)).as_py() or 0)
        if nan:
            return [f"{nan} labels are NaN"]
        wide = values.cast(pa.float64())  # arrow has no floor for float16
        fractional = pc.not_equal(wide, pc.floor(wide))
        count = int(pc.sum(fractional).as_py() or 0)
        if count:  # 0.5, 1.7...: each distinct value would become a class, and accuracy would mean nothing
            example = pc.filter(values, fractional)[0].as_py()
            return [f"{count} labels are fractional (e.g. {example}), like a regression target; hf_rcka trains "
                    "classification, one class per label"]
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        empty = int(pc.sum(pc.equal(pc.utf8_trim_whitespace(values), "")).as_py() or 0)
        if empty:
            return [f"{empty} labels are empty text"]
    return []


def present_classes(dataset: datasets.Dataset, column: str) -> set[str]:
    """The class names that ``dataset``'s labels actually use."""
    feature = dataset.features[column]
    used = pc.unique(pc.drop_null(label_column(dataset, column))).to_pylist()
    if isinstance(feature, datasets.ClassLabel):
        return {feature.names[v] for v in used if 0 <= v < feature.num_classes}
    return {str(v) for v in used}


def check_class_count(train: datasets.Dataset, column: str, carved: bool) -> None:
    """The training labels make a classification task: two classes at least, and not one per image.

    One class trained and reported 100% accuracy; a column of ids (``label_column_name: id``) gave
    each image its own class and trained too, both with exit 0. Only a plain column (no
    ``ClassLabel``, which names real classes: a one-shot dataset has one image of each) of a split
    that was not carved (carving two images of each class leaves one) can be taken for ids; ids
    in a carved split fail the stratified split anyway.

    Raises:
        LabelError: naming the count and the likely mistake.
    """
    classes = present_classes(train, column)
    if len(classes) < 2:
        raise LabelError(f"the training split's {column!r} column holds one class ({sorted(classes)}): a classifier "
                         "of one class learns nothing and scores 100%. Give data of two classes or more")
    plain = not isinstance(train.features[column], datasets.ClassLabel)
    if plain and not carved and len(classes) == len(train) >= 10:
        raise LabelError(f"every training image has a {column!r} of its own ({len(train)} images, {len(classes)} "
                         "classes): that is an identifier, not a class label. Set label_column_name to the column "
                         "of classes")
    _say_spelt_alike(classes, plain, column)


def _say_spelt_alike(classes: set[str], plain: bool, column: str) -> None:
    """Say which classes differ only in surrounding spaces (or, in a plain text column, in case): a
    CSV's 'cat' and 'cat ' (or 'Dog' and 'dog') trained as classes of their own, exit 0, with only
    the class count to tell. A warning: a ClassLabel's 'a' and 'A' (EMNIST's letters) are classes."""
    groups: dict[str, list[str]] = {}
    for name in classes:
        key = name.strip()
        groups.setdefault(key.casefold() if plain else key, []).append(name)
    alike = sorted(sorted(names) for names in groups.values() if len(names) > 1)
    if alike:
        shown = "; ".join(", ".join(repr(name) for name in names) for names in alike[:5])
        logger.warning("data: the training split's %r column has classes spelt alike, each trained as a class of its "
                       "own: %s%s. If they are one class, write them alike in the data", column, shown,
                       f" and {len(alike) - 5} more such group(s)" if len(alike) > 5 else "")


def untrained_classes(train: datasets.Dataset, validation: datasets.Dataset, column: str) -> set[str]:
    """The classes the validation split has images of and the training split has none of."""
    return present_classes(validation, column) - present_classes(train, column)


def check_trained_classes(train: datasets.Dataset, validation: datasets.Dataset, column: str) -> None:
    """The validation split holds no class that no training image has: the head never learns it.

    Raises:
        LabelError: naming those classes.
    """
    untrained = untrained_classes(train, validation, column)
    if untrained:
        shown = sorted(untrained)[:10]
        more = f" and {len(untrained) - 10} more" if len(untrained) > 10 else ""
        raise LabelError(
            f"the validation split has images of classes no training image has: {shown}{more}; the student "
            "cannot learn them, and they would count as errors. Give both splits the same classes "
            "(case and spelling matter)"
        )
