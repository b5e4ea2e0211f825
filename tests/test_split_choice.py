"""Which of the data's splits a run trains on and evaluates, and what its card says about them."""

from __future__ import annotations

import logging
import os
import shutil

import datasets
import numpy as np
import pytest
from PIL import Image

from conftest import processor
from hf_rcka.arguments import DataArguments
from hf_rcka.cli.run_inputs import load_data
from hf_rcka.data.datasets import load_raw_datasets, prepare_datasets
from hf_rcka.data.images import decode_image
from hf_rcka.errors import DataError
from hf_rcka.trainer.card_facts import card_facts_of, describe_eval_data
from hf_rcka.arguments import ModelArguments

NAMES = ["a", "b", "c"]
FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})


def _split(n: int, offset: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(offset)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)]
    return datasets.Dataset.from_dict({"image": images, "label": [(i + offset) % 3 for i in range(n)]}, features=FEATURES)


def _hub_folder(root, splits: dict[str, datasets.Dataset]) -> str:
    """A local folder laid out as push_to_hub lays out a dataset repository."""
    (root / "data").mkdir(parents=True)
    for name, split in splits.items():
        split.to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
    return str(root)


def test_a_dev_split_is_evaluated_and_an_unknown_split_named(tmp_path, caplog):
    """A 'dev' split was dropped without a word, and 15% of train was carved in its place."""
    folder = _hub_folder(tmp_path / "d", {"train": _split(30), "dev": _split(9, 1), "holdout": _split(6, 2)})
    with caplog.at_level(logging.INFO, logger="hf_rcka"):
        raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert len(raw["train"]) == 30 and len(raw["validation"]) == 9
    assert not raw.carved and raw.evaluated == "dev"
    assert "split(s) ['holdout'] are not used" in caplog.text


def test_a_carved_split_says_which_splits_went_unused(tmp_path, caplog):
    folder = _hub_folder(tmp_path / "d", {"train": _split(30), "holdout": _split(6, 2)})
    with caplog.at_level(logging.INFO, logger="hf_rcka"):
        raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert raw.carved and raw.evaluated == "train"
    assert "['holdout'] are not used" in caplog.text and "a validation split is carved from train" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_rcka"):  # an evaluation-only run carves nothing
        load_raw_datasets(DataArguments(dataset_name=folder), eval_only=True)
    assert "all of train is evaluated" in caplog.text and "carved" not in caplog.text


def test_one_saved_dataset_is_the_train_split_and_its_validation_is_carved(tmp_path, caplog):
    """load_dataset refuses a folder that Dataset.save_to_disk wrote ("use load_from_disk")."""
    folder = str(tmp_path / "saved")
    _split(40).save_to_disk(folder)
    with caplog.at_level(logging.INFO, logger="hf_rcka"):
        raw = load_raw_datasets(DataArguments(dataset_name=folder))
    assert raw.carved and len(raw["train"]) + len(raw["validation"]) == 40
    # the log said only that it was the train split; the carve was on the model card alone
    assert "a stratified 15% validation split carved from train (6 of 40 images, split_seed 42)" in caplog.text
    assert raw["train"].features["label"].names == NAMES
    assert "one dataset saved with save_to_disk" in caplog.text
    with pytest.raises(DataError, match="has no configurations; remove dataset_config_name"):
        load_raw_datasets(DataArguments(dataset_name=folder, dataset_config_name="default"))


def test_a_train_val_split_the_data_makes_unused_is_said(tmp_path, caplog):
    folder = _hub_folder(tmp_path / "d", {"train": _split(30), "valid": _split(9, 1)})
    with caplog.at_level(logging.INFO, logger="hf_rcka"):
        load_raw_datasets(DataArguments(dataset_name=folder, train_val_split=0.3))
    assert "train_val_split 0.3 is not used: the dataset's own 'valid' split is evaluated" in caplog.text
    caplog.clear()  # carved from train, it is used: no word that it is not
    folder = _hub_folder(tmp_path / "e", {"train": _split(30)})
    with caplog.at_level(logging.INFO, logger="hf_rcka"):
        raw = load_raw_datasets(DataArguments(dataset_name=folder, train_val_split=0.3))
    assert raw.carved and len(raw["validation"]) == 9 and "is not used" not in caplog.text


@pytest.mark.parametrize("split, carved, text, model_index", [
    ("test", False, "acme/pets: its test split", "test"),
    ("train", True, "acme/pets: a stratified 15% validation split carved from train", "train"),
    ("train", False, "acme/pets: all of its train split (an evaluation-only run", "train"),
])
def test_the_card_names_the_split_that_was_evaluated(split, carved, text, model_index):
    """Every card read 'the dataset's validation split (... or else test), or where it has none, a
    stratified 15% split carved from train', and its model-index said validation."""
    facts = describe_eval_data(DataArguments(dataset_name="acme/pets"), 90, 90, split=split, carved=carved)
    assert facts["eval_data"].startswith(text) and " or where it has none" not in facts["eval_data"]
    assert facts["eval_split"] == model_index


def test_the_card_names_the_dataset_configuration():
    facts = describe_eval_data(DataArguments(dataset_name="acme/pets", dataset_config_name="full"), 9, 9, split="test")
    assert facts["eval_data"] == "acme/pets, configuration full: its test split" and facts["dataset_config"] == "full"
    assert facts["dataset_label"] == "acme/pets", "model-index names the configuration in its own field"


def test_max_train_samples_that_misses_a_class_is_said_and_a_subset_is_on_the_card(tmp_path, caplog):
    """20 images of 10 classes trained 9 of them without a word, and the card said nothing of the subset."""
    raw = datasets.DatasetDict({"train": _split(30), "validation": _split(9, 1)})
    args = DataArguments(dataset_name="acme/pets", max_train_samples=2, no_aug=True)
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        prepare_datasets(raw, args, processor(8), NAMES)
    assert "max_train_samples 2 (a random draw with split_seed 42) holds no training image of classes ['" in caplog.text
    caplog.clear()
    args.max_train_samples = 12
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        train, _ = prepare_datasets(raw, args, processor(8), NAMES)
    assert "holds no training image" not in caplog.text
    facts = card_facts_of(ModelArguments(model_name_or_path="config:vit"), args, 9, 9, split="validation",
                          train_images=(len(train), 30))
    assert facts.train_subset == "a random 12 of its 30 training images: max_train_samples, drawn with split_seed 42"


def test_relative_paths_stored_in_an_image_feature_are_read_from_the_dataset_folder(tmp_path, monkeypatch):
    """An Image feature holding only 'imgs/0.png' was opened from the working directory: a run
    trained on whatever files of those names it found there (all black: accuracy 0.08, exit 0)."""
    root = tmp_path / "relimg"
    (root / "imgs").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
    monkeypatch.chdir(root)  # datasets reads the files while writing them
    split = datasets.Dataset.from_dict({"image": [f"imgs/{i}.png" for i in range(6)], "label": [i % 3 for i in range(6)]},
                                       features=FEATURES)
    _hub_folder(root, {"train": split, "validation": split})
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "imgs").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(elsewhere / "imgs" / f"{i}.png")
    monkeypatch.chdir(elsewhere)
    raw = load_raw_datasets(DataArguments(dataset_name=str(root)))
    assert [int(np.asarray(image)[0, 0, 0]) for image in raw["validation"]["image"]] == [0, 40, 80, 120, 160, 200]
    monkeypatch.chdir(tmp_path)  # no imgs/ here: the folder's files are still found
    assert np.asarray(load_raw_datasets(DataArguments(dataset_name=str(root)))["train"][5]["image"])[0, 0, 0] == 200


def test_splits_with_other_columns_are_one_line(tmp_path):
    """datasets' DatasetGenerationError was a traceback with the cause 40 lines up."""
    validation = _split(9, 1).add_column("id", list(range(9)))
    folder = _hub_folder(tmp_path / "d", {"train": _split(30), "validation": validation})
    with pytest.raises(DataError, match=r"cannot load the dataset \(.*\)\. Every split must have the same columns"):
        load_data(DataArguments(dataset_name=folder))
    assert os.path.isdir(folder)


def _relative_image_folder(tmp_path, monkeypatch, column: datasets.Dataset | None = None, **splits) -> str:
    """Images 0, 40, ..., 200 in ``root/imgs``, black decoys of the same names in the working directory."""
    root, decoys = tmp_path / "root", tmp_path / "decoys"
    for folder, value in ((root, lambda i: 40 * i), (decoys, lambda i: 0)):
        (folder / "imgs").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), value(i), dtype=np.uint8)).save(folder / "imgs" / f"{i}.png")
    monkeypatch.chdir(root)  # datasets reads the files while writing them
    _hub_folder(root, splits)
    monkeypatch.chdir(decoys)
    return str(root)


def _values(split: datasets.Dataset) -> list[int]:
    split = split.cast_column("image", datasets.Image())
    return [int(np.asarray(image)[0, 0, 0]) for image in split["image"]]


@pytest.mark.parametrize("form", ["decode_false", "first_row_bytes", "struct"])
def test_relative_paths_in_every_form_of_image_column_are_read_from_the_dataset_folder(form, tmp_path, monkeypatch):
    """Image(decode=False), a column whose first row holds bytes, and a pandas-written {bytes, path}
    struct were still opened from the working directory: the black decoys were trained on."""
    labels = [i % 3 for i in range(6)]
    paths = [{"bytes": None, "path": f"imgs/{i}.png"} for i in range(6)]
    if form == "first_row_bytes":
        buffer = __import__("io").BytesIO()
        Image.fromarray(np.full((8, 8, 3), 0, dtype=np.uint8)).save(buffer, format="PNG")
        paths[0] = {"bytes": buffer.getvalue(), "path": None}
    image = {"decode_false": datasets.Image(decode=False), "first_row_bytes": datasets.Image(),
             "struct": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}}[form]
    features = datasets.Features({"image": image, "label": datasets.ClassLabel(names=NAMES)})
    split = datasets.Dataset.from_dict({"image": paths, "label": labels}, features=features)
    root = _relative_image_folder(tmp_path, monkeypatch, train=split, validation=split)
    raw = load_raw_datasets(DataArguments(dataset_name=root))
    assert _values(raw["validation"]) == [0, 40, 80, 120, 160, 200]


def test_a_split_the_run_does_not_read_need_not_ship_its_files(tmp_path, monkeypatch):
    """An unlabelled test split whose files were not shipped stopped a dataset that loaded before."""
    stored = datasets.Dataset.from_dict({"image": [f"imgs/{i}.png" for i in range(6)], "label": [-1] * 6},
                                        features=datasets.Features({"image": datasets.Image(decode=False),
                                                                    "label": datasets.Value("int64")}))
    root = tmp_path / "d"
    _hub_folder(root, {"train": _split(30), "validation": _split(9, 1)})
    import pyarrow.parquet as pq  # datasets' to_parquet would read the (missing) files to size its row groups

    pq.write_table(stored.data.table, str(root / "data" / "test-00000-of-00001.parquet"))
    monkeypatch.chdir(tmp_path)
    raw = load_raw_datasets(DataArguments(dataset_name=str(root)))
    assert (len(raw["train"]), len(raw["validation"])) == (30, 9)


def test_a_broken_file_is_not_blamed_on_the_columns(tmp_path):
    folder = _hub_folder(tmp_path / "d", {"train": _split(30), "validation": _split(9, 1)})
    broken = tmp_path / "d" / "data" / "validation-00000-of-00001.parquet"
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot load the dataset") as error:
        load_data(DataArguments(dataset_name=folder))
    assert "same columns" not in str(error.value)


def test_a_pandas_parquet_whose_image_paths_are_all_none_loads(tmp_path):
    """pandas writes a {bytes, path} struct whose path is always None as an Arrow null field: the
    scan for relative paths called starts_with on it, and the run stopped on a pyarrow traceback."""
    import io

    import pandas as pd

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    (tmp_path / "d" / "data").mkdir(parents=True)
    for name in ("train", "validation"):
        rows = [{"image": {"bytes": png(40 * i), "path": None}, "label": NAMES[i % 3]} for i in range(6)]
        pd.DataFrame(rows).to_parquet(tmp_path / "d" / "data" / f"{name}-00000-of-00001.parquet")
    raw = load_data(DataArguments(dataset_name=str(tmp_path / "d")))
    assert [int(np.asarray(decode_image(v))[0, 0, 0]) for v in raw["validation"]["image"]] == [0, 40, 80, 120, 160, 200]


def test_a_dataset_folder_with_a_loading_script_is_one_line(tmp_path):
    """datasets' 'Dataset scripts are no longer supported' was a RuntimeError traceback."""
    folder = tmp_path / "pets"
    _hub_folder(folder, {"train": _split(30), "validation": _split(9, 1)})
    (folder / "pets.py").write_text("import datasets\n")
    with pytest.raises(DataError, match=r"loading script \(pets\.py\), which is code and is not run: convert the "
                                        r"data to files datasets reads \(parquet, csv, or an image folder\)"):
        load_data(DataArguments(dataset_name=str(folder)))


def test_an_empty_saved_split_is_not_used(tmp_path, caplog):
    """save_to_disk writes no file for 0 rows, and datasets refused the whole dataset: 'Instruction
    "unlabeled" corresponds to no data!'. An empty validation split is carved instead, as when absent."""
    datasets.DatasetDict(train=_split(30), validation=_split(12), unlabeled=_split(0)).save_to_disk(str(tmp_path / "a"))
    datasets.DatasetDict(train=_split(30), validation=_split(0)).save_to_disk(str(tmp_path / "b"))
    with caplog.at_level(logging.WARNING):
        raw = load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "a")))
        assert not raw.carved and len(raw["validation"]) == 12 and "'unlabeled' split is empty" in caplog.text
        raw = load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "b")))
        assert raw.carved and len(raw["train"]) + len(raw["validation"]) == 30
    datasets.DatasetDict(train=_split(0), validation=_split(12)).save_to_disk(str(tmp_path / "c"))
    with pytest.raises(DataError, match="its 'train' split is empty"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "c")))


def test_an_empty_parquet_split_is_named(tmp_path):
    folder = _hub_folder(tmp_path / "pets", {"train": _split(30), "validation": _split(12), "test": _split(0)})
    with pytest.raises(DataError, match="its 'test' split is empty \\(0 rows\\).*remove that split's files"):
        load_data(DataArguments(dataset_name=folder))


def test_a_dataset_of_several_configurations_without_one_named_is_one_line(tmp_path, monkeypatch):
    """datasets' 'Config name is missing' came twice, as a warning and an error of 8 lines with a Python example."""
    # a cache of its own: nothing another test cached is read
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "pets"
    for config in ("full", "small"):
        (folder / config).mkdir(parents=True)
        _split(30).to_parquet(str(folder / config / "train.parquet"))
    (folder / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.parquet\n" for c in ("full", "small")) + "---\n")
    with pytest.raises(DataError, match=r"has several configurations \['full', 'small'\]: set dataset_config_name") as err:
        load_data(DataArguments(dataset_name=str(folder)))
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"dataset_name {str(folder)!r} has several configurations")  # not wrapped again
    assert len(load_data(DataArguments(dataset_name=str(folder), dataset_config_name="small"))["train"]) > 0


def test_a_local_folder_with_configs_is_read_anew_when_its_files_change(tmp_path, monkeypatch):
    """datasets keys the cache of a local folder whose README lists configs on the folder's base name
    and config alone: another folder of the same name, or the same one rewritten, read the data
    cached before it (30 images of other classes for 60), exit 0."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.parquet\n"
            "  - split: validation\n    path: data/validation.parquet\n---\n")

    def folder(path, n, names):
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        (path / "data").mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", n), ("validation", 6)):
            datasets.Dataset.from_dict({"image": [np.zeros((4, 4, 3), np.uint8)] * rows,
                                        "label": [i % 3 for i in range(rows)]}, features=features
                                       ).to_parquet(str(path / "data" / f"{split}.parquet"))
        (path / "README.md").write_text(card)
        return str(path)

    first = load_raw_datasets(DataArguments(dataset_name=folder(tmp_path / "v1" / "pets", 30, ["cat", "dog", "eel"])))
    assert len(first["train"]) == 30
    other = load_raw_datasets(DataArguments(dataset_name=folder(tmp_path / "v2" / "pets", 60, ["ant", "bee", "cow"])))
    assert len(other["train"]) == 60 and other["train"].features["label"].names == ["ant", "bee", "cow"]
    rewritten = load_raw_datasets(DataArguments(dataset_name=folder(tmp_path / "v1" / "pets", 12, ["cat", "dog", "eel"])))
    assert len(rewritten["train"]) == 12


def test_a_data_file_given_as_dataset_name_is_told_to_give_its_folder(tmp_path):
    """datasets said it 'couldn't find any data file at' the file that was there."""
    folder = _hub_folder(tmp_path / "pets", {"train": _split(6)})
    file = os.path.join(folder, "data", "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"dataset_name '.*train-00000-of-00001.parquet' is a file: give the folder"):
        load_data(DataArguments(dataset_name=file))


def test_a_local_folder_with_configs_is_read_anew_after_a_same_size_or_same_time_rewrite(tmp_path, monkeypatch):
    """The cache key follows a rewrite of the same size (other names of the same length), and one whose modification
    time was kept (rsync -t, a restore from a backup)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.parquet\n"
            "  - split: validation\n    path: data/validation.parquet\n---\n")

    def folder(path, n, names, keep_times=False):
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        (path / "data").mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", n), ("validation", 6)):
            file = path / "data" / f"{split}.parquet"
            before = os.stat(file) if keep_times and file.exists() else None
            datasets.Dataset.from_dict({"image": [np.zeros((4, 4, 3), np.uint8)] * rows,
                                        "label": [i % 3 for i in range(rows)]}, features=features
                                       ).to_parquet(str(file))
            if before is not None:
                os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
        (path / "README.md").write_text(card)
        return str(path)

    pets = tmp_path / "pets"
    assert load_raw_datasets(DataArguments(dataset_name=folder(pets, 30, ["cat", "dog", "eel"])))["train"].features[
        "label"].names == ["cat", "dog", "eel"]
    renamed = load_raw_datasets(DataArguments(dataset_name=folder(pets, 30, ["ant", "bee", "cow"])))
    assert renamed["train"].features["label"].names == ["ant", "bee", "cow"]
    restored = load_raw_datasets(DataArguments(dataset_name=folder(pets, 12, ["ant", "bee", "cow"], keep_times=True)))
    assert len(restored["train"]) == 12


def _listing(folder) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.rglob("*"))}


def test_a_save_to_disk_folder_is_only_read(tmp_path, monkeypatch):
    """A max_train_samples draw and the relative paths' map wrote cache-*.arrow files into a
    Dataset.save_to_disk folder (a copy of its table among them): a read-only one failed the run."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "saved"
    (root / "imgs").mkdir(parents=True)
    for i in range(30):
        Image.fromarray(np.full((8, 8, 3), 8 * i, dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
    split = datasets.Dataset.from_dict({"image": [f"imgs/{i}.png" for i in range(30)], "label": [i % 3 for i in range(30)]},
                                       features=datasets.Features({"image": datasets.Value("string"),  # an Image is embedded
                                                                   "label": datasets.ClassLabel(names=NAMES)}))
    split.save_to_disk(str(root))
    before = _listing(root)
    monkeypatch.chdir(tmp_path)
    args = DataArguments(dataset_name=str(root), max_train_samples=12, max_eval_samples=3, no_aug=True)
    raw = load_raw_datasets(args)
    train, evaluation = prepare_datasets(raw, args, processor(8), NAMES)
    assert (len(train), len(evaluation)) == (12, 3)
    assert set(_values(raw["train"]) + _values(raw["validation"])) == {8 * i for i in range(30)}  # its own images
    assert _listing(root) == before
    copy = tmp_path / "copy"  # the same split's cached paths are not another folder's
    shutil.copytree(root, copy)
    for i in range(30):
        Image.fromarray(np.full((8, 8, 3), 1, dtype=np.uint8)).save(copy / "imgs" / f"{i}.png")
    assert set(_values(load_raw_datasets(DataArguments(dataset_name=str(copy)))["train"])) == {1}


def test_a_save_to_disk_folder_of_embedded_images_is_only_read_by_a_draw(tmp_path, monkeypatch):
    """max_train_samples's shuffle wrote its indices file into a save_to_disk folder whose images are
    embedded (no relative paths to map first): a read-only one failed the run."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": [np.full((8, 8, 3), 8 * i, dtype=np.uint8) for i in range(30)],
                                "label": [i % 3 for i in range(30)]},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "label": datasets.ClassLabel(names=NAMES)})
                               ).save_to_disk(str(root))
    before = _listing(root)
    args = DataArguments(dataset_name=str(root), max_train_samples=12, max_eval_samples=3, no_aug=True)
    train, evaluation = prepare_datasets(load_raw_datasets(args), args, processor(8), NAMES)
    assert (len(train), len(evaluation)) == (12, 3)
    assert _listing(root) == before


def test_a_local_folder_whose_split_has_several_files_is_read_anew_when_one_changes(tmp_path, monkeypatch):
    """The cache key covers every file of a split, not its first."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.parquet\n"
            "  - split: validation\n    path: data/validation.parquet\n---\n")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "eel"])})
    root = tmp_path / "pets"
    (root / "data").mkdir(parents=True)

    def write(name, rows):
        datasets.Dataset.from_dict({"image": [np.zeros((4, 4, 3), np.uint8)] * rows,
                                    "label": [i % 3 for i in range(rows)]}, features=features
                                   ).to_parquet(str(root / "data" / name))

    for name, rows in (("train-0.parquet", 9), ("train-1.parquet", 9), ("validation.parquet", 6)):
        write(name, rows)
    (root / "README.md").write_text(card)
    assert len(load_raw_datasets(DataArguments(dataset_name=str(root)))["train"]) == 18
    write("train-1.parquet", 21)
    assert len(load_raw_datasets(DataArguments(dataset_name=str(root)))["train"]) == 30


def test_a_save_to_disk_folder_rewritten_under_the_same_fingerprint_maps_its_paths_anew(tmp_path, monkeypatch):
    """The cached map of a split's relative paths is named by the split's files too: a folder whose
    table was replaced while its state.json (the fingerprint) stayed read the earlier table's rows."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    features = datasets.Features({"image": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})

    def saved(path, sub, value):
        (path / sub).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(np.full((8, 8, 3), value(i), dtype=np.uint8)).save(path / sub / f"{i}.png")
        datasets.Dataset.from_dict({"image": [f"{sub}/{i}.png" for i in range(30)], "label": [i % 3 for i in range(30)]},
                                   features=features).save_to_disk(str(path))

    root, other = tmp_path / "saved", tmp_path / "other"
    saved(root, "imgs", lambda i: 8 * i)
    monkeypatch.chdir(tmp_path)
    first = load_raw_datasets(DataArguments(dataset_name=str(root)))
    assert set(_values(first["train"]) + _values(first["validation"])) == {8 * i for i in range(30)}
    saved(other, "new", lambda i: 1)
    shutil.copytree(other / "new", root / "new")
    for arrow in other.glob("data-*.arrow"):  # the table replaced, state.json (its fingerprint) kept
        shutil.copy(arrow, root / arrow.name)
    again = load_raw_datasets(DataArguments(dataset_name=str(root)))
    assert set(_values(again["train"]) + _values(again["validation"])) == {1}


def test_urls_and_embedded_images_with_a_relative_name_are_no_relative_paths(tmp_path, monkeypatch):
    """URLs ('https://...', which datasets' Image opens) and images embedded with their
    file's name as the path (as push_to_hub and to_parquet store them: {bytes, path: '0.png'}) name no
    file of the folder: taken for relative paths, the data was refused as naming no file, or a URL
    beside relative paths was joined to the folder."""
    from hf_rcka.data.image_paths import image_paths_from_the_data_folder

    buffer = __import__("io").BytesIO()
    Image.fromarray(np.full((8, 8, 3), 40, dtype=np.uint8)).save(buffer, format="PNG")
    embedded = datasets.Dataset.from_dict(
        {"image": [{"bytes": buffer.getvalue(), "path": f"{i}.png"} for i in range(3)], "label": [0, 1, 2]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)}))
    mixed = ["https://example.com/0.png", "imgs/1.png", "https://example.com/2.png"]  # a URL is no file of the folder
    urls = datasets.Dataset.from_dict({"image": mixed, "label": [0, 1, 2]})
    (tmp_path / "d" / "imgs").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "d" / "imgs" / "1.png")
    monkeypatch.chdir(tmp_path)
    raw = datasets.DatasetDict({"train": embedded, "validation": urls})
    out = image_paths_from_the_data_folder(raw, DataArguments(dataset_name=str(tmp_path / "d")), ("train", "validation"))
    assert out["validation"]["image"] == [mixed[0], str(tmp_path / "d" / "imgs" / "1.png"), mixed[2]]
    stored = out["train"].cast_column("image", datasets.Image(decode=False))["image"]
    assert [value["path"] for value in stored] == ["0.png", "1.png", "2.png"]


def test_file_uris_are_local_files_and_urls_no_installed_package_reads_are_refused_when_the_data_loads(tmp_path,
                                                                                                          monkeypatch):
    """A CSV of 'file:///data/a.png' (Path.as_uri(), Spark) was read by datasets as 'data/a.png' under
    the working folder: every image was skipped as missing and the run stopped at its first batch,
    after the models had loaded. 's3://' paths without s3fs ended there with a traceback
    ('ImportError: Install s3fs to access S3'): now one error line when the data loads."""
    import fsspec

    image = tmp_path / "imgs" / "a b.png"
    image.parent.mkdir()
    Image.fromarray(np.full((4, 6, 3), 90, dtype=np.uint8)).save(image)
    monkeypatch.chdir(tmp_path / "imgs")  # not where 'file:///...' would be read as relative to
    assert decode_image(image.as_uri()).size == (6, 4)
    assert decode_image({"path": f"file://localhost{image}", "bytes": None}).size == (6, 4)

    def uninstalled(protocol):
        if protocol == "s3":
            raise ImportError("Install s3fs to access S3")
        return real(protocol)

    real = fsspec.get_filesystem_class
    monkeypatch.setattr(fsspec, "get_filesystem_class", uninstalled)
    for name, rows in (("train.csv", ["image,label", f"{image.as_uri()},a", f"{image},b"]),
                       ("validation.csv", ["image,label", f"{image},a", "s3://bucket/b.png,b"])):
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"^image_column_name='image' of the 'validation' split holds s3:// URLs "
                                        r"\(e\.g\. 's3://bucket/b\.png'\) that cannot be read here \(Install s3fs"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path)))


def test_absolute_paths_that_name_no_file_here_are_refused_when_the_data_loads(tmp_path):
    """A CSV written on another machine ('/home/alice/...'): every image was skipped at the first
    batch, after the teacher and student had loaded, and the run ended in 'all 4 images of a batch
    are unreadable'. A few missing files among present ones are still left to the skipping."""
    image = tmp_path / "imgs" / "0.png"
    image.parent.mkdir()
    Image.fromarray(np.full((4, 4, 3), 90, dtype=np.uint8)).save(image)
    elsewhere = [f"/home/alice/pets/{i}.png" for i in range(20)]
    (tmp_path / "train.csv").write_text("image,label\n" + "".join(f"{p},{'ab'[i % 2]}\n" for i, p in enumerate(elsewhere)))
    with pytest.raises(DataError, match=r"^image_column_name='image' of the 'train' split names image files that are "
                                        r"not here: none of 8 of its 20 absolute paths.*'/home/alice/pets/0\.png'"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path)))
    mixed = [str(image) if i == 10 else p for i, p in enumerate(elsewhere)]  # one sampled path is here
    (tmp_path / "train.csv").write_text("image,label\n" + "".join(f"{p},{'ab'[i % 2]}\n" for i, p in enumerate(mixed)))
    load_raw_datasets(DataArguments(dataset_name=str(tmp_path)))


def test_a_local_folder_whose_data_files_are_links_is_read_anew_when_their_targets_change(tmp_path, monkeypatch):
    """A data file that is a link (a folder of links to shared storage, as dataset managers make) is
    named by its target's size and time: the link's own never change when its target is rewritten,
    and the earlier data was read from the cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "eel"])})
    store, root = tmp_path / "store", tmp_path / "pets"
    store.mkdir()
    (root / "data").mkdir(parents=True)

    def write(name, rows):
        datasets.Dataset.from_dict({"image": [np.zeros((4, 4, 3), np.uint8)] * rows,
                                    "label": [i % 3 for i in range(rows)]}, features=features
                                   ).to_parquet(str(store / name))

    for name, rows in (("train.parquet", 9), ("validation.parquet", 6)):
        write(name, rows)
        (root / "data" / name).symlink_to(store / name)
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/train.parquet\n  - split: validation\n"
                                    "    path: data/validation.parquet\n---\n")
    assert len(load_raw_datasets(DataArguments(dataset_name=str(root)))["train"]) == 9
    write("train.parquet", 21)
    assert len(load_raw_datasets(DataArguments(dataset_name=str(root)))["train"]) == 21
