"""The carved validation split: stratified by label, drawn by split_seed, not by the training seed."""

from collections import Counter

import datasets
import numpy as np
import pytest

from hf_rcka.arguments import DataArguments
from hf_rcka.data.datasets import load_raw_datasets, prepare_datasets
from hf_rcka.data.splits import stratified_validation_split


def _pixels(dataset: datasets.Dataset) -> list[bytes]:
    return [np.asarray(image).tobytes() for image in dataset["image"]]


def test_split_seed_alone_draws_the_digits_validation_split():
    args = DataArguments(dataset_name="builtin:digits", train_val_split=0.3)
    first, second = load_raw_datasets(args), load_raw_datasets(args)
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
    # the other side: 0.9 holds out 27 and leaves 3 for training, too few for 10 classes (it was
    # datasets' own error, naming neither train_val_split nor validation_dir)
    with pytest.raises(ValueError, match=r"train_val_split=0.9 holds out 27 of 30 images.*on both sides"):
        stratified_validation_split(train, "label", 0.9)



def _sorted_by_class(per_class: int = 4, classes: int = 3) -> datasets.DatasetDict:
    """An image folder's layout: every row of class 0, then class 1, ... (as imagefolder lists them).

    Row ``i`` is a flat image of grey level ``20 * i``, so an evaluated image names its row.
    """
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=classes)})
    labels = [k for k in range(classes) for _ in range(per_class)]
    images = [np.full((8, 8, 3), 20 * i, dtype=np.uint8) for i in range(len(labels))]
    split = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    return datasets.DatasetDict({"train": split, "validation": split})


def _evaluated(raw: datasets.DatasetDict, split: int = 1, **changes) -> list[tuple[int, int]]:
    """(row, label) of every image ``prepare_datasets`` keeps for evaluation (``split`` 0: training)."""
    from conftest import processor

    args = DataArguments(dataset_name="builtin:digits", no_aug=True, **changes)
    kept = prepare_datasets(raw, args, processor(8, mean=0.0, std=1.0), ["0", "1", "2"])[split]
    examples = [kept[i] for i in range(len(kept))]
    return [(round(float(e["pixel_values"][0, 0, 0]) * 255 / 20), e["labels"]) for e in examples]


def test_max_eval_samples_draws_a_subset_of_every_class_the_same_for_every_training_seed():
    raw = _sorted_by_class(per_class=4)
    subset = _evaluated(raw, max_eval_samples=3)
    assert len(subset) == 3 and len({label for _, label in subset}) > 1, subset  # the first 3 rows are all class 0
    assert _evaluated(raw, max_eval_samples=3, split_seed=7) != subset, "split_seed draws the subset"


def test_max_train_samples_draws_with_split_seed_not_the_training_seed():
    """It drew with the training seed: runs of seeds 0 and 1 shared 9 of their 128 training images."""
    raw = _sorted_by_class(per_class=4)
    subset = _evaluated(raw, split=0, max_train_samples=3)
    assert len(subset) == 3 and len({label for _, label in subset}) > 1, subset
    assert _evaluated(raw, split=0, max_train_samples=3, split_seed=7) != subset
    assert sorted(_evaluated(raw, max_eval_samples=50)) == [(i, i // 4) for i in range(12)]


def test_a_test_split_evaluated_for_want_of_a_validation_split_is_said(monkeypatch, caplog, tmp_path):
    """Many Hub datasets have train and test splits only: evaluating (and picking checkpoints) on
    the test split may be what the user wants, but never silently."""
    image = tmp_path / "a.png"  # a file that is there: paths that name none are refused as the data loads
    image.write_bytes(b"")
    data = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"image": [str(image)] * 4, "label": [0, 1, 0, 1]}) for split in ("train", "test")
    })
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: data)
    with caplog.at_level("WARNING", logger="hf_rcka.data.datasets"):
        raw = load_raw_datasets(DataArguments(dataset_name="acme/pets"))
    assert set(raw) == {"train", "validation"} and len(raw["validation"]) == 4
    assert "no 'validation' split; its 'test' split is evaluated" in caplog.text


def test_image_folders_whose_paths_look_like_glob_patterns(tmp_path):
    """datasets reads data_files as glob patterns: "set[1]" matched no file (and "set[ab]" would
    match a folder "seta"), so the folder names are escaped."""
    from PIL import Image

    root = tmp_path / "set[1]"
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8)).save(root / split / name / f"{i}.png")
    raw = load_raw_datasets(DataArguments(train_dir=str(root / "train"), validation_dir=str(root / "val")))
    assert (len(raw["train"]), len(raw["validation"])) == (6, 6)



@pytest.mark.parametrize("validation", ["deeper/sorted/val", "val"])
def test_training_and_validation_folders_at_other_depths_keep_their_labels(tmp_path, validation):
    """datasets labels image folders only when every file of every split lies at one depth: a
    validation folder one level deeper than the training one (an ImageNet train next to a sorted
    val) lost the label column, and the run failed on a "label_column_name" it could not fix."""
    from PIL import Image

    for split, root in (("train", tmp_path / "data" / "train"), ("validation", tmp_path / validation)):
        for k, name in enumerate(("n01440764", "n01443537")):
            (root / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (80 * k, 0, 0)).save(root / name / f"{split}{i}.png")
    raw = load_raw_datasets(DataArguments(train_dir=str(tmp_path / "data" / "train"),
                                          validation_dir=str(tmp_path / validation)))
    for split in ("train", "validation"):
        assert raw[split].features["label"].names == ["n01440764", "n01443537"]
        assert [(row["image"].getpixel((0, 0))[0], row["label"]) for row in raw[split]] == [(0, 0), (0, 0), (80, 1),
                                                                                           (80, 1)]

def test_a_class_of_one_image_is_named_when_a_split_is_carved():
    """datasets' own error blamed loading ("cannot load the dataset ... least populated class")."""
    from hf_rcka.errors import DataError

    train = datasets.Dataset.from_dict({"x": list(range(7)), "label": [0, 0, 0, 1, 1, 1, 2]})
    with pytest.raises(DataError, match=r"classes \['2'\] have fewer than 2 images"):
        stratified_validation_split(train, "label", 0.4)


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_the_split_is_train_test_splits_own(fraction):
    """Drawn from the label column alone, but the rows datasets' stratified train_test_split draws
    with the same seed: runs recorded with a split_seed keep evaluating the same images."""
    labels = np.random.default_rng(0).integers(0, 7, 301)
    train = datasets.Dataset.from_dict(
        {"label": labels, "row": np.arange(301)}, features=datasets.Features(
            {"label": datasets.ClassLabel(num_classes=7), "row": datasets.Value("int64")}))
    ours = stratified_validation_split(train, "label", fraction, split_seed=5)
    theirs = train.train_test_split(test_size=fraction, stratify_by_column="label", seed=5)
    assert ours["train"]["row"] == theirs["train"]["row"] and ours["validation"]["row"] == theirs["test"]["row"]


def test_label_values_of_selected_rows_are_those_rows_labels():
    """A split or subset selects rows of another dataset: its labels are read with one Arrow take."""
    from hf_rcka.data.label_values import label_column

    dataset = datasets.Dataset.from_dict({"label": [5, None, 2, 9, 4]})
    rows = dataset.select([3, 1, 3, 0]).shuffle(seed=1)
    assert label_column(rows, "label").to_pylist() == rows["label"]
    assert label_column(dataset, "label").to_pylist() == [5, None, 2, 9, 4]
