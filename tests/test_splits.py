"""The carved validation split: stratified by label, drawn by split_seed, not by the training seed."""

from collections import Counter

import datasets
import numpy as np
import pytest

from hf_rcka.arguments import DataArguments
from hf_rcka.data.datasets import load_raw_datasets
from hf_rcka.data.splits import stratified_validation_split


def _pixels(dataset: datasets.Dataset) -> list[bytes]:
    return [np.asarray(image).tobytes() for image in dataset["image"]]


def test_training_seed_does_not_move_the_digits_validation_split():
    args = DataArguments(dataset_name="builtin:digits", train_val_split=0.3)
    first, second = load_raw_datasets(args, seed=0), load_raw_datasets(args, seed=123)
    assert _pixels(first["validation"]) == _pixels(second["validation"])
    assert abs(len(first["validation"]) - 0.3 * 1797) <= 1  # datasets rounds the test size up
    other = load_raw_datasets(DataArguments(dataset_name="builtin:digits", train_val_split=0.3, split_seed=7))
    assert _pixels(other["validation"]) != _pixels(first["validation"])


def test_digits_validation_keeps_class_proportions():
    raw = load_raw_datasets(DataArguments(dataset_name="builtin:digits", train_val_split=0.3))
    whole = Counter(raw["train"]["label"]) + Counter(raw["validation"]["label"])
    held_out = Counter(raw["validation"]["label"])
    for label, count in whole.items():
        # stratified: each class is held out at 30% up to rounding (a random cut drifts by +-6 images)
        assert abs(held_out[label] - 0.3 * count) <= 1.0, (label, held_out[label], count)


def test_string_labels_are_encoded_then_stratified():
    labels = ["cat"] * 40 + ["dog"] * 20 + ["owl"] * 10
    train = datasets.Dataset.from_dict({"image": list(range(70)), "label": labels})
    split = stratified_validation_split(train, "label", 0.2, split_seed=3)
    names = split["validation"].features["label"].names
    assert names == ["cat", "dog", "owl"]
    held = Counter(names[i] for i in split["validation"]["label"])
    assert held == {"cat": 8, "dog": 4, "owl": 2}


def test_a_split_too_small_for_every_class_is_an_error():
    train = datasets.Dataset.from_dict({"image": list(range(30)), "label": [i % 10 for i in range(30)]})
    with pytest.raises(ValueError, match="train_val_split"):
        stratified_validation_split(train, "label", 0.1)
