"""Held-out validation splits carved from a training set.

When a dataset ships no validation split, one is cut from ``train``. Two rules make runs
comparable: the cut is *stratified* by the label column (every class keeps its share, so a small
split does not under-represent a class by chance), and it is drawn with a data seed
(``split_seed``) that is independent of the training ``seed``. Changing the training seed then
changes initialisation and batch order only, and several seeds are evaluated on the very same
images, so their accuracies can be compared pair by pair.
"""

from __future__ import annotations

import math

import datasets
import numpy as np
from datasets.utils.stratify import stratified_shuffle_split_generate_indices

from ..errors import DataError
from .label_values import class_encoded, label_column as label_column_values

DEFAULT_SPLIT_SEED = 42
# the splits evaluated, the first present: a validation split by any of its usual names, else the test split
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev", "eval", "evaluation", "test")


def stratified_validation_split(
    train: datasets.Dataset, label_column: str, fraction: float, split_seed: int = DEFAULT_SPLIT_SEED
) -> datasets.DatasetDict:
    """Split ``train`` into ``train`` and ``validation``, stratified by ``label_column``.

    A label column that is not a ``ClassLabel`` (strings, plain integers) is class-encoded first,
    because ``datasets`` stratifies only by ``ClassLabel``; its class names are then the distinct
    values in ``label_values.class_order`` (integers in numeric order), as ``data.label_names``
    lists them for a dataset that needs no split.

    Raises:
        ValueError: if the label column is missing, or the split is too small to hold one
            image of every class (raise ``train_val_split``).
    """
    if label_column not in train.column_names:
        raise ValueError(
            f"label_column_name={label_column!r} is not a column of the dataset (columns: {train.column_names}); "
            "set label_column_name to one of them (--label_column_name on the command line)"
        )
    if not isinstance(train.features[label_column], datasets.ClassLabel):
        train = class_encoded(train, label_column)
    num_classes = train.features[label_column].num_classes
    held_out = math.ceil(fraction * len(train))  # as datasets rounds the test size
    if held_out < num_classes or len(train) - held_out < num_classes:
        raise ValueError(
            f"train_val_split={fraction} holds out {held_out} of {len(train)} images, but a stratified split "
            f"needs at least one image of each of the {num_classes} classes on both sides: change "
            f"train_val_split or give a validation split (validation_dir)"
        )
    labels = label_column_values(train, label_column).to_numpy(zero_copy_only=False)
    counts = np.bincount(labels, minlength=num_classes)
    lonely = [train.features[label_column].names[i] for i in np.flatnonzero(counts < 2)]
    if lonely:  # datasets' stratified split needs two of each; its error said only "the least populated class"
        raise DataError(
            f"classes {lonely[:5]}{' ...' if len(lonely) > 5 else ''} have fewer than 2 images, so a held-out "
            f"validation split cannot hold one of each and leave one for training: add images, remove those "
            f"classes, or give a validation split (validation_dir)"
        )
    # train_test_split's own draw (the same generator, seed and sizes: the same split), on the label
    # column read alone: train_test_split read it row by row, 13 s at 200k images, about 90 s at ImageNet's
    train_rows, validation_rows = next(stratified_shuffle_split_generate_indices(
        labels, len(train) - held_out, held_out, rng=np.random.default_rng(split_seed)))
    return datasets.DatasetDict({"train": train.select(train_rows), "validation": train.select(validation_rows)})
