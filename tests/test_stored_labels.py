"""Parquet splits that store their ClassLabel names in another order than datasets reads them with."""

from __future__ import annotations

import logging

import datasets
import fsspec
import numpy as np
import pytest

from hf_rcka.arguments import DataArguments
from hf_rcka.data.datasets import load_raw_datasets
from hf_rcka.data.stored_labels import realign_stored_labels
from hf_rcka.errors import DataError, LabelError


def _split(names: list[str], classes: list[str]) -> datasets.Dataset:
    """Images of ``classes`` (a 'truth' column names each one) under a ClassLabel of ``names``."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names),
                                  "truth": datasets.Value("string")})
    images = [np.full((4, 4, 3), 10 * i, np.uint8) for i in range(len(classes))]
    return datasets.Dataset.from_dict(
        {"image": images, "label": [names.index(c) for c in classes], "truth": classes}, features=features)


def _folder(tmp_path, **splits: list[datasets.Dataset]) -> str:
    folder = tmp_path / "pets"
    (folder / "data").mkdir(parents=True)
    for split, parts in splits.items():
        for i, part in enumerate(parts):
            part.to_parquet(str(folder / "data" / f"{split}-{i:05d}-of-{len(parts):05d}.parquet"))
    return str(folder)


def _truths(dataset: datasets.Dataset) -> tuple[list[str], list[str]]:
    names = dataset.features["label"].names
    return [names[i] for i in dataset["label"]], list(dataset["truth"])


def test_a_split_saved_with_another_class_order_is_read_by_name(tmp_path, caplog):
    classes = ["cat", "dog", "dog", "eel", "cat", "eel"]
    folder = _folder(tmp_path, train=[_split(["cat", "dog", "eel"], classes)],
                     validation=[_split(["eel", "dog", "cat"], classes)])
    plain = datasets.load_dataset(folder)
    read, truth = _truths(plain["validation"])
    assert read != truth  # what datasets does on its own: the training split's names for every file

    with caplog.at_level(logging.WARNING):
        raw = load_raw_datasets(DataArguments(dataset_name=folder))
    for split in ("train", "validation"):
        read, truth = _truths(raw[split])
        assert read == truth, split
    assert raw["validation"].features["label"].names == ["cat", "dog", "eel"]
    assert "realigned by name" in caplog.text


def test_splits_that_agree_are_left_as_loaded(tmp_path):
    classes = ["cat", "dog", "dog"]
    folder = _folder(tmp_path, train=[_split(["cat", "dog"], classes)], validation=[_split(["cat", "dog"], classes)])
    raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert raw["validation"]._fingerprint == datasets.load_dataset(folder)["validation"]._fingerprint


def test_files_of_one_split_with_different_orders_are_an_error(tmp_path):
    classes = ["cat", "dog"]
    folder = _folder(tmp_path, train=[_split(["cat", "dog"], classes)],
                     validation=[_split(["cat", "dog"], classes), _split(["dog", "cat"], classes)])
    with pytest.raises(DataError, match="different class orders"):
        load_raw_datasets(DataArguments(dataset_name=folder))


def test_a_stored_class_the_dataset_lacks_is_an_error(tmp_path):
    folder = _folder(tmp_path, train=[_split(["cat", "dog"], ["cat", "dog"])],
                     validation=[_split(["dog", "cat", "eel"], ["cat", "eel"])])
    with pytest.raises(LabelError, match="eel"):
        load_raw_datasets(DataArguments(dataset_name=folder))


def test_remote_splits_are_checked_on_their_first_file():
    """Hub files cost a request each: only the first file of a split is read (fsspec, any protocol)."""
    classes = ["cat", "dog", "dog"]
    fs = fsspec.filesystem("memory")
    with fs.open("/hub/validation-0.parquet", "wb") as f:
        _split(["dog", "cat"], classes).to_parquet(f)
    loaded = datasets.DatasetDict({"validation": _split(["dog", "cat"], classes).cast_column(
        "label", datasets.ClassLabel(names=["cat", "dog"]))})  # read with the other order, as datasets would
    files = {"validation": ["memory://hub/validation-0.parquet", "memory://hub/missing-1.parquet"]}
    raw = realign_stored_labels(loaded, files, "label")
    read, truth = _truths(raw["validation"])
    assert read == truth


def test_a_stored_name_in_another_unicode_form_is_named_as_such(tmp_path):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    folder = _folder(tmp_path, train=[_split([nfc, "dog"], [nfc, "dog"])], validation=[_split(["dog", nfd], [nfd, "dog"])])
    with pytest.raises(LabelError, match="Unicode|NFC|NFD"):
        load_raw_datasets(DataArguments(dataset_name=folder))


def test_a_card_that_renames_every_class_keeps_the_index_meaning(tmp_path):
    """Files that store ImageNet's synset ids under a card that names the same classes in words."""
    classes = ["n01", "n02", "n02"]
    folder = _folder(tmp_path, train=[_split(["n01", "n02"], classes)], validation=[_split(["n01", "n02"], classes)])
    plain = datasets.load_dataset(folder)
    renamed = datasets.ClassLabel(names=["tench", "goldfish"])
    raw = datasets.DatasetDict({k: v.cast_column("label", renamed) for k, v in plain.items()})
    files = {split: [f"{folder}/data/{split}-00000-of-00001.parquet"] for split in raw}
    out = realign_stored_labels(raw, files, "label")
    assert out["validation"]["label"][:] == [0, 1, 1] and out["train"].features["label"] == renamed


def _card(folder: str, names: list[str]) -> None:
    """A README whose dataset_info names the label classes ``names`` (datasets reads every split with them)."""
    classes = "".join(f"          '{i}': {n}\n" for i, n in enumerate(names))
    with open(f"{folder}/README.md", "w") as f:
        f.write("---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n"
                f"      class_label:\n        names:\n{classes}  - name: truth\n    dtype: string\n---\n")


def test_a_split_saved_in_another_order_under_a_card_that_renames_the_classes_is_read_by_name(tmp_path):
    """The card names train's stored order; validation's own order of the same ids was read index by index."""
    truth = ["n01", "n02", "n02", "n03", "n01", "n03"]
    folder = _folder(tmp_path, train=[_split(["n01", "n02", "n03"], truth)],
                     validation=[_split(["n03", "n01", "n02"], truth)])
    _card(folder, ["cat", "dog", "eel"])
    raw = load_raw_datasets(DataArguments(dataset_name=folder))
    words = {"n01": "cat", "n02": "dog", "n03": "eel"}
    for split in ("train", "validation"):
        read, stored = _truths(raw[split])
        assert read == [words[t] for t in stored], split


def test_a_card_that_names_the_classes_in_another_case_is_read_by_name(tmp_path):
    truth = ["cat", "dog", "dog", "cat"]
    folder = _folder(tmp_path, train=[_split(["cat", "dog"], truth)], validation=[_split(["dog", "cat"], truth)])
    _card(folder, ["Dog", "Cat"])
    raw = load_raw_datasets(DataArguments(dataset_name=folder))
    for split in ("train", "validation"):
        read, stored = _truths(raw[split])
        assert [n.lower() for n in read] == stored, split


@pytest.mark.parametrize("first", ["train", "validation"])
def test_a_saved_split_whose_names_share_none_with_the_others_is_an_error(tmp_path, first):
    """No card: the names come from the first split's files; the other split's labels were read by position."""
    truth = ["cat", "dog", "eel"]
    splits = {"train": _split(["cat", "dog", "eel"], truth),
              "validation": _split(["eel", "cat", "dog"], truth).cast_column(
                  "label", datasets.ClassLabel(names=["anguille", "chat", "chien"]))}
    order = [first] + [s for s in splits if s != first]
    datasets.DatasetDict({s: splits[s] for s in order}).save_to_disk(str(tmp_path / "pets"))
    with pytest.raises(LabelError, match="none of the dataset's class names"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "pets")))


@pytest.mark.parametrize("plain", ["int64", "string"])
def test_a_classlabel_split_read_as_another_splits_plain_labels_is_an_error(tmp_path, plain):
    """datasets cast the validation split to train's plain type: its names dropped, 0 read as 'cat' not 'eel'."""
    truth = ["cat", "dog", "eel"]
    values = [0, 1, 2] if plain == "int64" else truth
    train = datasets.Dataset.from_dict({"image": [np.zeros((4, 4, 3), np.uint8)] * 3, "label": values, "truth": truth},
                                       features=datasets.Features({"image": datasets.Image(), "truth": datasets.Value("string"),
                                                                   "label": datasets.Value(plain)}))
    folder = _folder(tmp_path, train=[train], validation=[_split(["eel", "cat", "dog"], truth)])
    with pytest.raises(DataError, match="stores 'label' as a ClassLabel .* read the 'validation' split as Value"):
        load_raw_datasets(DataArguments(dataset_name=folder))


def test_a_card_that_declares_plain_labels_over_classlabel_files_is_followed(tmp_path):
    truth = ["cat", "dog", "dog", "eel", "cat", "eel"]
    folder = _folder(tmp_path, train=[_split(["cat", "dog", "eel"], truth)], validation=[_split(["cat", "dog", "eel"], truth)])
    with open(f"{folder}/README.md", "w") as f:
        f.write("---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n"
                "    dtype: int64\n  - name: truth\n    dtype: string\n---\n")
    raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert raw["validation"]["label"][:] == [0, 1, 1, 2, 0, 2]


def _read_with(names: list[str], labels: list[int]):
    import datasets

    features = datasets.Features({"label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"label": labels}, features=features), features["label"]


# SL3 (data/stored_labels.py _relabelled): a label one past the file's stored names is an error, not
# silently unlabelled
def test_a_label_past_the_files_stored_names_is_an_error():
    from hf_rcka.data.stored_labels import _relabelled
    from hf_rcka.errors import DataError

    dataset, feature = _read_with(["cat", "dog", "eel"], [0, 1, 2])
    with pytest.raises(DataError, match="stores 2 classes for 'label' but has the label 2"):
        _relabelled(dataset, "validation", "label", feature, {("dog", "cat"): "v.parquet"})


# SL4 (data/stored_labels.py _relabelled): stored names that share none with the dataset's are an error,
# of any count (a card's renaming is applied by realign_stored_labels before)
def test_stored_names_sharing_none_are_an_error():
    from hf_rcka.data.stored_labels import _relabelled
    from hf_rcka.errors import LabelError

    dataset, feature = _read_with(["cat", "dog"], [0, 1, 1])
    for stored in (("n01", "n02"), ("n01", "n02", "n03")):
        with pytest.raises(LabelError, match="stores classes"):
            _relabelled(dataset, "validation", "label", feature, {stored: "v.parquet"})


def test_a_test_split_of_no_labels_saved_as_a_classlabel_beside_plain_labels_is_not_refused(tmp_path):
    """An unlabelled test split (every label -1) stored as a ClassLabel beside plain integer splits:
    the run never reads it, and was refused for the names it would have dropped (reviewer)."""
    plain = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"), "truth": datasets.Value("string")})
    split = datasets.Dataset.from_dict({"image": [np.zeros((4, 4, 3), np.uint8)] * 3, "label": [0, 1, 2],
                                        "truth": ["cat", "dog", "eel"]}, features=plain)
    unlabelled = _split(["cat", "dog", "eel"], ["cat", "dog", "eel"]).map(lambda row: {"label": -1})
    folder = _folder(tmp_path, train=[split], validation=[split], test=[unlabelled])
    raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert raw["validation"]["label"][:] == [0, 1, 2]


def test_a_split_of_placeholder_class_names_is_read_by_index(tmp_path, caplog):
    """ClassLabel(num_classes=3) names its classes '0', '1', '2': beside a split with named classes
    it shares no name with them, and was refused as another vocabulary (reviewer)."""
    truth = ["cat", "dog", "eel"]
    numbered = datasets.Dataset.from_dict(
        {"image": [np.zeros((4, 4, 3), np.uint8)] * 3, "label": [0, 1, 2], "truth": truth},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3),
                                    "truth": datasets.Value("string")}))
    folder = _folder(tmp_path, train=[_split(truth, truth)], validation=[numbered])
    with caplog.at_level(logging.WARNING):
        raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert _truths(raw["validation"]) == (truth, truth)
    assert "datasets' placeholder names" in caplog.text


def test_a_numbered_training_split_beside_a_named_split_is_read_by_index(tmp_path, caplog):
    """A numbered training split (ClassLabel(num_classes=3)) beside a split whose files name the classes."""
    truth = ["cat", "dog", "eel"]
    numbered = datasets.Dataset.from_dict(
        {"image": [np.zeros((4, 4, 3), np.uint8)] * 3, "label": [0, 1, 2], "truth": truth},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3),
                                    "truth": datasets.Value("string")}))
    folder = _folder(tmp_path, train=[numbered], validation=[_split(truth, truth)])
    with caplog.at_level(logging.WARNING):
        raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert raw["validation"]["label"][:] == [0, 1, 2]
    assert "datasets' placeholder names" in caplog.text


def test_a_split_of_plain_labels_beside_classlabel_files_is_read_as_it_loaded(tmp_path):
    """A split whose files store plain labels, read with the training split's ClassLabel."""
    truth = ["cat", "dog", "eel"]
    plain = _split(truth, truth).cast_column("label", datasets.Value("int64"))
    folder = _folder(tmp_path, train=[_split(truth, truth)], validation=[plain])
    raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert raw["validation"]["label"][:] == [0, 1, 2]


def test_a_card_that_declares_plain_labels_over_mixed_files_is_followed(tmp_path):
    """A card that declares plain labels is followed even where one split's files store plain values."""
    truth = ["cat", "dog", "dog", "eel", "cat", "eel"]
    plain = _split(["cat", "dog", "eel"], truth).cast_column("label", datasets.Value("int64"))
    folder = _folder(tmp_path, train=[plain], validation=[_split(["cat", "dog", "eel"], truth)])
    with open(f"{folder}/README.md", "w") as f:
        f.write("---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n"
                "    dtype: int64\n  - name: truth\n    dtype: string\n---\n")
    raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert raw["validation"]["label"][:] == [0, 1, 1, 2, 0, 2]


def test_a_split_of_arrow_files_saved_with_another_class_order_is_read_by_name(tmp_path):
    """A folder of .arrow files (as a Hub dataset may hold, or save_to_disk's files copied out) is read
    by datasets' arrow builder, which, like the parquet one, reads every split with the first file's
    names: only parquet was tested, and the arrow files' own names could go unread."""
    import shutil

    classes = ["cat", "dog", "dog", "eel", "cat", "eel"]
    folder = tmp_path / "pets"
    (folder / "data").mkdir(parents=True)
    for split, names in (("train", ["cat", "dog", "eel"]), ("validation", ["eel", "dog", "cat"])):
        _split(names, classes).save_to_disk(str(tmp_path / split))
        shutil.copy(tmp_path / split / "data-00000-of-00001.arrow", folder / "data" / f"{split}-00000-of-00001.arrow")
    assert _truths(datasets.load_dataset(str(folder))["validation"])[0] != classes  # datasets alone misreads it
    raw = load_raw_datasets(DataArguments(dataset_name=str(folder)))
    for split in ("train", "validation"):
        read, truth = _truths(raw[split])
        assert read == truth, split


def test_names_are_matched_by_spelling_only_where_the_dataset_has_no_two_names_that_differ_in_case_alone():
    """A dataset whose classes 'Cat' and 'cat' differ in case alone gives a respelling nothing to go by:
    matched anyway, a file's 'Cat ' became the class 'cat' and its images another class, silently."""
    from hf_rcka.data.stored_labels import _respelled

    assert _respelled(["Cat ", "dog"], ["cat", "dog"]) == ["cat", "dog"]
    assert _respelled(["Cat ", "dog"], ["Cat", "cat", "dog"]) is None
    assert _respelled(["cat", "CAT"], ["cat", "dog"]) is None


@pytest.mark.parametrize("stored", [["dog", "cat"], ["dog", "cat", "eel"]])
def test_an_unlabelled_test_split_saved_in_another_class_order_stays_unlabelled(tmp_path, stored):
    """A Hub test split of -1 labels, saved with its own ClassLabel: relabelled by name, -1 (no label)
    became the last stored class's index, and a test split of no labels was evaluated against made-up
    ones; and a name only it stores, used by no label, was taken for one its -1 labels use."""
    train = _split(["cat", "dog"], ["cat", "dog", "dog", "cat"])
    test = _split(stored, stored).map(lambda row: {"label": -1})
    folder = _folder(tmp_path, train=[train], test=[test])
    raw = datasets.load_dataset(folder)
    files = {split: sorted(str(p) for p in (tmp_path / "pets" / "data").glob(f"{split}-*.parquet"))
             for split in ("train", "test")}
    realigned = realign_stored_labels(raw, files, "label")
    assert list(realigned["test"]["label"]) == [-1] * len(stored)
    assert realigned["test"].features["label"].names == ["cat", "dog"]
