"""What each split's labels and images actually hold, checked when the data loads."""

from __future__ import annotations

import io
import logging

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_rcka.arguments import DataArguments
from hf_rcka.data.bad_images import SkippedImages, SkippedImagesCallback
from hf_rcka.data.datasets import label_names, load_raw_datasets, with_transforms
from hf_rcka.data.label_values import check_trained_classes
from hf_rcka.data.splits import stratified_validation_split
from hf_rcka.errors import DataError, LabelError, RecipeError

PETS = datasets.ClassLabel(names=["cat", "dog", "eel"])


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _split(labels: list, label_feature=PETS, image_feature=None) -> datasets.Dataset:
    images = [_png(Image.new("RGB", (8, 8), (10 * i, 0, 0))) for i in range(len(labels))]
    features = datasets.Features({"image": image_feature or datasets.Image(), "label": label_feature})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def _hub(monkeypatch, **splits: datasets.Dataset) -> DataArguments:
    data = datasets.DatasetDict(splits)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: data)
    return DataArguments(dataset_name="acme/pets", train_val_split=0.5)


def test_an_unlabelled_test_split_is_not_evaluated(monkeypatch, caplog):
    """A Hub test split of -1 labels read as names[-1] made every image the last class (a made-up accuracy)."""
    args = _hub(monkeypatch, train=_split([0, 1, 2] * 4), test=_split([-1] * 6))
    with caplog.at_level(logging.WARNING):
        raw = load_raw_datasets(args)
    assert "'test' split has no labels" in caplog.text
    assert len(raw["validation"]) == 6 and len(raw["train"]) == 6  # carved from train (0.5), not the test split
    assert set(raw["validation"]["label"]) == {0, 1, 2}


@pytest.mark.parametrize("labels, problem", [([0, 1, -1, 2], "1 labels are -1"), ([0, 1, 3, 2], "outside 0..2"),
                                             ([0, 1, None, 2], "1 labels are empty")])
def test_a_label_that_is_no_class_is_an_error(monkeypatch, labels, problem):
    # stored as integers first: datasets' ClassLabel refuses 3 when encoding, not when a file is read
    validation = _split(labels, label_feature=datasets.Value("int64")).cast_column("label", PETS)
    args = _hub(monkeypatch, train=_split([0, 1, 2] * 4), validation=validation)
    with pytest.raises(DataError, match=f"'validation' split.*{problem}"):
        load_raw_datasets(args)


@pytest.mark.parametrize("labels, feature, problem", [
    ([0, 1, 2, -1, 0, 1], datasets.Value("int64"), "2 labels are -1"),
    ([0.0, 1.0, float("nan"), 2.0, 0.0, 1.0], datasets.Value("float64"), "2 labels are NaN"),
    (["cat", "dog", "", "eel", "cat", "dog"], datasets.Value("string"), "2 labels are empty text"),
])
def test_a_plain_label_column_with_no_label_values_is_an_error(monkeypatch, labels, feature, problem):
    """Without a ClassLabel they became classes of their own: a '-1' class, one 'nan' class per NaN, a '' class."""
    args = _hub(monkeypatch, train=_split(labels * 2, label_feature=feature))
    with pytest.raises(DataError, match=f"'train' split.*{problem}"):
        load_raw_datasets(args)


def test_validation_classes_without_a_training_image_are_an_error():
    """The names are shared by all splits; the values show that no training image is an eel."""
    with pytest.raises(LabelError, match="'eel'"):
        check_trained_classes(_split([0, 1, 0, 1]), _split([0, 1, 2]), "label")
    check_trained_classes(_split([0, 1, 2]), _split([0, 1]), "label")


def test_integer_labels_keep_their_numeric_order_when_a_validation_split_is_carved():
    """class_encode_column sorted 10 and 11 before 2: target k was no longer integer class k."""
    labels = list(range(12)) * 4
    data = _split(labels, label_feature=datasets.Value("int64")).add_column("truth", labels)
    without_split = label_names(data, "label")
    raw = stratified_validation_split(data, "label", 0.5)
    names = label_names(raw["train"], "label")
    assert names == without_split == [str(i) for i in range(12)]
    train = raw["train"]
    assert [names[i] for i in train["label"]] == [str(t) for t in train["truth"]]


def test_an_image_column_with_a_mode_is_decoded_for_what_it_depicts():
    """Image(mode="RGB") made datasets run Pillow's convert first: 16-bit grey clipped to white."""
    sixteen = Image.fromarray(np.full((8, 8), 20000, np.uint16))
    data = _split([0], image_feature=datasets.Image(mode="RGB"))
    data = data.cast_column("image", datasets.Image(decode=False)).map(lambda _: {"image": _png(sixteen)})
    data = data.cast_column("image", datasets.Image(mode="RGB"))
    pixel = with_transforms(data, lambda im: np.asarray(im)[0, 0].tolist(), "image", "label", PETS.names)[0]
    assert pixel["pixel_values"] == [78, 78, 78]  # 20000 / 257, not 255


def test_image_columns_of_bytes_are_decoded_and_of_arrays_refused(monkeypatch):
    raw_bytes = [_png(Image.new("RGB", (8, 8), (5, 6, 7)))["bytes"]] * 6
    data = datasets.Dataset.from_dict({"image": raw_bytes, "label": [0, 1, 2] * 2},
                                      features=datasets.Features({"image": datasets.Value("binary"), "label": PETS}))
    raw = load_raw_datasets(_hub(monkeypatch, train=data, validation=data))
    out = with_transforms(raw["validation"], lambda im: np.asarray(im)[0, 0].tolist(), "image", "label", PETS.names)
    assert out[0]["pixel_values"] == [5, 6, 7]

    arrays = datasets.Dataset.from_dict({"image": [np.zeros((4, 4, 3), np.uint8)] * 6, "label": [0, 1, 2] * 2},
                                        features=datasets.Features({"image": datasets.Array3D((4, 4, 3), "uint8"),
                                                                    "label": PETS}))
    with pytest.raises(DataError, match="image_column_name='image' holds Array3D"):
        load_raw_datasets(_hub(monkeypatch, train=arrays, validation=arrays))


def test_an_evaluation_only_run_without_a_validation_split_evaluates_every_image():
    raw = load_raw_datasets(DataArguments(dataset_name="builtin:digits"), eval_only=True)
    assert len(raw["validation"]) == 1797
    assert len(load_raw_datasets(DataArguments(dataset_name="builtin:digits"))["validation"]) < 1797


def test_validation_dir_without_train_dir_is_refused():
    with pytest.raises(RecipeError, match="validation_dir is read only with train_dir"):
        DataArguments(dataset_name="builtin:digits", validation_dir="/data/val")


def test_a_dataset_configuration_beside_image_folders_is_refused():
    """It was accepted and ignored (the card left it out), as builtin:digits' is refused."""
    with pytest.raises(RecipeError, match="dataset_config_name 'full' is read only with dataset_name"):
        DataArguments(train_dir="/data/train", dataset_config_name="full")


def test_a_folder_of_class_folders_as_dataset_name_is_refused(tmp_path):
    """datasets would load it, but only train_dir gets the class-folder checks (nested years as classes)."""
    for year in ("2019", "2020"):
        (tmp_path / "pets" / "cat" / year).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "pets" / "cat" / year / "1.png")
    with pytest.raises(DataError, match="is a folder of images: give it as train_dir"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "pets")))


def test_too_many_unreadable_images_stop_the_run_after_an_evaluation_too(tmp_path):
    """The limit was checked at training steps only: the final (or an eval-only) evaluation escaped it."""
    ledger = SkippedImages(str(tmp_path), limit=1)
    ledger.record("a.jpg", "truncated")
    callback = SkippedImagesCallback(ledger)

    class Args:
        device = "cpu"

    callback.on_evaluate(Args(), None, None)
    ledger.record("b.jpg", "truncated")
    with pytest.raises(DataError, match="2 image files could not be read"):
        callback.on_evaluate(Args(), None, None)


def test_an_image_column_of_plain_bytes_and_path_structs_is_decoded(monkeypatch):
    """Parquet written by pandas or pyarrow stores images as {bytes, path} without datasets' Image feature."""
    structs = [_png(Image.new("RGB", (8, 8), (5, 6, 7)))] * 6
    features = datasets.Features({"image": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                  "label": PETS})
    data = datasets.Dataset.from_dict({"image": structs, "label": [0, 1, 2] * 2}, features=features)
    raw = load_raw_datasets(_hub(monkeypatch, train=data, validation=data))
    out = with_transforms(raw["validation"], lambda im: np.asarray(im)[0, 0].tolist(), "image", "label", PETS.names)
    assert out[0]["pixel_values"] == [5, 6, 7]


def test_an_image_folder_labelled_by_a_metadata_file_loads_as_dataset_name(tmp_path):
    for split, n in (("train", 4), ("validation", 2)):
        (tmp_path / "m" / split).mkdir(parents=True)
        rows = ["file_name,label"]
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / "m" / split / f"{i}.png")
            rows.append(f"{i}.png,{'cat' if i % 2 else 'dog'}")
        (tmp_path / "m" / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    raw = load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "m")))
    assert (len(raw["train"]), len(raw["validation"])) == (4, 2)


def test_a_test_split_of_integer_minus_ones_is_not_evaluated(monkeypatch):
    ints = datasets.Value("int64")
    args = _hub(monkeypatch, train=_split([0, 1, 2] * 4, label_feature=ints), test=_split([-1] * 6, label_feature=ints))
    raw = load_raw_datasets(args)
    assert len(raw["validation"]) == 6 and set(raw["validation"]["label"]) == {0, 1, 2}


def _csv_of_images(folder, names: list[str], listed: list[str] | None = None) -> None:
    """``folder/train.csv`` with columns image and label (i % 3), the images written to ``folder/imgs``
    under ``names``; ``listed``: the path cells, when they differ from ``imgs/<name>``."""
    import csv

    (folder / "imgs").mkdir(parents=True)
    with open(folder / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        for i, name in enumerate(names):
            Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / "imgs" / name)
            writer.writerow([f"imgs/{name}" if listed is None else listed[i], i % 3])


def test_relative_image_paths_name_files_of_the_dataset_folder(tmp_path, monkeypatch):
    """They were opened from the working directory: from elsewhere the run failed at its first batch,
    or trained on other files of the same names."""
    _csv_of_images(tmp_path / "data", [f"{i}.png" for i in range(12)])
    (tmp_path / "elsewhere" / "imgs").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "imgs" / "0.png")  # a file of the same name here
    monkeypatch.chdir(tmp_path / "elsewhere")
    raw = load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "data"), train_val_split=0.25))
    paths = list(raw["train"]["image"]) + list(raw["validation"]["image"])
    assert sorted(paths) == sorted(str(tmp_path / "data" / "imgs" / f"{i}.png") for i in range(12))
    hub = _hub(monkeypatch, train=datasets.Dataset.from_dict({"image": ["imgs/9.png"] * 6, "label": [0, 1, 2] * 2}))
    with pytest.raises(DataError, match="holds relative paths .* that name no file"):
        load_raw_datasets(hub)


def test_rows_without_an_image_are_refused_when_the_data_loads(tmp_path):
    """An empty path cell of a CSV, or a null in an Image column, failed when a batch reached it,
    after checkpoints were written, with an AttributeError naming no row."""
    _csv_of_images(tmp_path / "data", [f"{i}.png" for i in range(12)],
                   listed=["" if i == 7 else f"imgs/{i}.png" for i in range(12)])
    with pytest.raises(DataError, match=r"the 'train' split's 'image' column has no image in 1 of 12 rows \(null or "
                                        r"an empty path; the first is row 7\): remove those rows"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "data"), train_val_split=0.25))
    image = Image.new("RGB", (4, 4))
    stored = datasets.Dataset.from_dict({"image": [image, image, None], "label": [0, 1, 0]},
                                        features=datasets.Features({"image": datasets.Image(),
                                                                    "label": datasets.Value("int64")}))
    (tmp_path / "stored").mkdir()
    stored.to_parquet(str(tmp_path / "stored" / "train.parquet"))
    with pytest.raises(DataError, match="has no image in 1 of 3 rows"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "stored"), train_val_split=0.25))


def test_an_empty_path_is_no_image_in_a_column_of_paths_and_in_an_image_column():
    """A CSV's empty cell reads as null; a JSON or parquet column of paths keeps "" as text, and an
    Image value may hold the path "" and no bytes: each failed at its batch, not as the data loaded."""
    from hf_rcka.data.datasets import check_image_values

    paths = datasets.Dataset.from_dict({"image": ["a.png", "b.png", ""], "label": [0, 1, 0]})
    with pytest.raises(DataError, match=r"has no image in 1 of 3 rows \(null or an empty path; the first is row 2\)"):
        check_image_values(paths, "image", "train")
    struct = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")})
    stored = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": ""}, {"bytes": b"png", "path": ""},
                                                   {"bytes": None, "path": "c.png"}], "label": [0, 1, 0]}, features=struct)
    with pytest.raises(DataError, match=r"has no image in 1 of 3 rows \(null or an empty path; the first is row 0\)"):
        check_image_values(stored, "image", "validation")


def test_rows_without_an_image_in_the_datas_own_evaluation_split_are_refused_naming_it(monkeypatch):
    """Only train's rows (and a split carved from them) were sure to be checked: a null image in the
    data's own test split failed at the first evaluation, after the first epoch had trained."""
    test = _split([0, 1, 2, 0]).cast_column("image", datasets.Image(decode=False))
    test = test.map(lambda row, i: {"image": None if i == 2 else row["image"]}, with_indices=True,
                    features=test.features)
    with pytest.raises(DataError, match=r"the 'test' split's 'image' column has no image in 1 of 4 rows \(null or an "
                                        r"empty path; the first is row 2\)"):
        load_raw_datasets(_hub(monkeypatch, train=_split([0, 1, 2] * 2), test=test))


def test_a_table_whose_images_are_named_like_splits_is_told_apart_from_an_image_folder(tmp_path):
    """datasets took imgs/train_0.png as the train split and ignored train.csv; the error said to give
    the folder as train_dir, which would have trained 'imgs' as one class."""
    _csv_of_images(tmp_path / "data", [f"train_{i}.png" for i in range(6)])
    with pytest.raises(DataError, match=r"holds \['train.csv'\], but datasets took its image files as the data: their "
                                        r"names match a split's"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "data"), train_val_split=0.25))
    # datasets' own rule: a keyword between separators names a split too; a table named after no split
    # loses to the images, which need not be split-named
    _csv_of_images(tmp_path / "inside", [f"img_train_{i}.png" for i in range(6)])
    with pytest.raises(DataError, match="their names match a split's"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "inside"), train_val_split=0.25))
    # datasets' own metadata layout (metadata.csv with file_name) loses to split-named images as well
    _csv_of_images(tmp_path / "metadata", [f"train_bird_{i}.png" for i in range(6)])
    (tmp_path / "metadata" / "train.csv").write_text(
        "file_name,label\n" + "".join(f"imgs/train_bird_{i}.png,{i % 3}\n" for i in range(6)))
    (tmp_path / "metadata" / "train.csv").rename(tmp_path / "metadata" / "metadata.csv")
    with pytest.raises(DataError, match=r"holds \['metadata.csv'\], but datasets took its image files as the data: "
                                        r"their names match a split's"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "metadata"), train_val_split=0.25))
    _csv_of_images(tmp_path / "unnamed", [f"valley_{i}.png" for i in range(6)])
    (tmp_path / "unnamed" / "train.csv").rename(tmp_path / "unnamed" / "data.csv")
    with pytest.raises(DataError, match=r"holds \['data.csv'\], but .*the table's name names no split.* Name it "
                                        r"after its split \(train.csv"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "unnamed"), train_val_split=0.25))
    # an image folder with a stray table at its top level is still an image folder
    for split in ("train", "validation"):
        for label in ("cat", "dog"):
            (tmp_path / "folder" / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "folder" / split / label / "0.png")
    (tmp_path / "folder" / "classes.json").write_text('["cat", "dog"]')
    with pytest.raises(DataError, match="is a folder of images: give it as train_dir"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "folder")))


def test_minus_one_is_a_class_where_the_labels_hold_other_negatives_and_an_empty_split_is_not_unlabelled():
    """-1 is datasets' "no label", unless the column uses negative classes (-2, -1, 0, 1): a split of
    them trains. An empty split is not a Hub test split's missing labels."""
    from hf_rcka.data.label_values import check_label_values, is_unlabelled

    check_label_values(datasets.Dataset.from_dict({"label": [-2, -1, 0, 1]}), "label", "train")
    with pytest.raises(DataError, match="1 labels are -1 \\(no label; if -1 is a class, give it a non-negative id\\)"):
        check_label_values(datasets.Dataset.from_dict({"label": [-1, 0, 1]}), "label", "train")
    assert is_unlabelled(datasets.Dataset.from_dict({"label": [-1, -1]}), "label")
    assert not is_unlabelled(datasets.Dataset.from_dict({"label": [-1, 0]}), "label")
    assert not is_unlabelled(datasets.Dataset.from_dict({"label": []}, features=datasets.Features(
        {"label": datasets.Value("int64")})), "label")


def test_a_negative_label_other_than_minus_one_is_outside_the_classes(monkeypatch):
    """-2 in a ClassLabel column is no class and not datasets' "no label" either: the check of
    negatives other than -1 could be dropped with every test passing; the split's images would
    then count as errors in the reported accuracy."""
    validation = _split([0, 1, -2, 2], label_feature=datasets.Value("int64")).cast_column("label", PETS)
    args = _hub(monkeypatch, train=_split([0, 1, 2] * 4), validation=validation)
    with pytest.raises(DataError, match=r"'validation' split.*1 labels are outside 0\.\.2 \(e\.g\. -2\)"):
        load_raw_datasets(args)


def test_a_single_fractional_label_is_refused(monkeypatch):
    """One 0.5 among whole numbers becomes a class of its own: refused as many are (the existing
    case has many fractional labels, so 'more than one' passed too)."""
    labels = [0.0, 1.0, 2.0, 0.5] + [0.0, 1.0, 2.0] * 3
    args = _hub(monkeypatch, train=_split(labels, label_feature=datasets.Value("float64")))
    with pytest.raises(DataError, match=r"'train' split.*1 labels are fractional \(e\.g\. 0\.5\)"):
        load_raw_datasets(args)


def _jsonl_splits(folder, **splits: list[str]) -> str:
    """``folder/<split>.jsonl`` files of image paths (under ``folder/imgs``) and text labels."""
    import json

    (folder / "imgs").mkdir(parents=True)
    for split, labels in splits.items():
        with open(folder / f"{split}.jsonl", "w") as handle:
            for i, label in enumerate(labels):
                Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / "imgs" / f"{split[:2]}{i}.png")
                handle.write(json.dumps({"image": f"imgs/{split[:2]}{i}.png", "label": label}) + "\n")
    return str(folder)


def test_a_test_split_of_empty_text_labels_is_not_evaluated(tmp_path, caplog):
    """A JSON test split's "label": "" was evaluated, then refused as the 'validation' split's empty labels."""
    folder = _jsonl_splits(tmp_path / "pets", train=["cat", "dog", "eel"] * 4, test=["", " "] * 3)
    with caplog.at_level(logging.WARNING):
        raw = load_raw_datasets(DataArguments(dataset_name=folder, train_val_split=0.5))
    assert "'test' split has no labels" in caplog.text
    assert raw.carved and len(raw["validation"]) == 6 and label_names(raw["validation"], "label") == ["cat", "dog", "eel"]


def test_a_partly_unlabelled_test_split_is_named_by_its_own_name(tmp_path):
    folder = _jsonl_splits(tmp_path / "pets", train=["cat", "dog", "eel"] * 4, test=["cat", "", "dog", "eel"])
    with pytest.raises(DataError, match="the 'test' split's 'label' column: 1 labels are empty text of 4"):
        load_raw_datasets(DataArguments(dataset_name=folder))


def test_plain_labels_are_classes_in_value_order_whatever_order_the_rows_come_in():
    """The rows of the existing case come in class order, so the order labels are first seen in
    passed for the numeric order too: a file starting with 11, 2, 10 then made class 0 the label 11,
    and integer class k was no longer label k."""
    rows = [11, 2, 10, 0, 5, 1, 9, 3, 8, 4, 7, 6]
    labels = rows * 4
    data = _split(labels, label_feature=datasets.Value("int64")).add_column("truth", labels)
    assert label_names(data, "label") == [str(i) for i in range(12)]
    train = stratified_validation_split(data, "label", 0.5)["train"]
    assert label_names(train, "label") == [str(i) for i in range(12)]
    assert list(train["label"]) == list(train["truth"]), "class k is the label k"
    words = _split(["eel", "cat", "dog"] * 2, label_feature=datasets.Value("string"))
    assert label_names(words, "label") == ["cat", "dog", "eel"]


def test_a_minus_one_label_is_counted_once_as_no_label_not_also_as_outside_the_classes(monkeypatch):
    """The -1 rows are "no label", not labels outside 0..2: counted in both, the error said the split
    held two problems, and that -1 was a class index out of range."""
    validation = _split([0, 1, -1, 2], label_feature=datasets.Value("int64")).cast_column("label", PETS)
    args = _hub(monkeypatch, train=_split([0, 1, 2] * 4), validation=validation)
    with pytest.raises(DataError) as caught:
        load_raw_datasets(args)
    assert str(caught.value).startswith("the 'validation' split's 'label' column: 1 labels are -1 (no label) of 4. ")


def test_a_carved_training_split_of_one_image_per_class_is_no_column_of_identifiers():
    """Carving a validation image of each class out of two leaves one training image of each: a
    one-shot task, not an id column. Only a split that was not carved is taken for ids."""
    from hf_rcka.data.label_values import check_class_count

    one_shot = datasets.Dataset.from_dict({"label": [f"class {i}" for i in range(10)]})
    check_class_count(one_shot, "label", carved=True)
    with pytest.raises(LabelError, match="every training image has a 'label' of its own"):
        check_class_count(one_shot, "label", carved=False)
    # a ClassLabel names real classes: a one-shot dataset of them is no id column either
    named = one_shot.cast_column("label", datasets.ClassLabel(names=[f"class {i}" for i in range(10)]))
    check_class_count(named, "label", carved=False)


def test_validation_classes_without_a_training_image_say_how_many_beyond_the_ten_named():
    """The error names ten of the untrained classes; without "and 2 more" it read as if ten were all."""
    many = datasets.ClassLabel(names=[f"c{i:02d}" for i in range(14)])
    train = datasets.Dataset.from_dict({"label": [0, 1]}, features=datasets.Features({"label": many}))
    validation = datasets.Dataset.from_dict({"label": list(range(14))}, features=datasets.Features({"label": many}))
    with pytest.raises(LabelError, match=r"'c11'\] and 2 more; the student cannot learn them"):
        check_trained_classes(train, validation, "label")


def test_classes_spelt_alike_are_said(caplog):
    """A CSV's 'cat' and 'cat ' (or 'Dog' and 'dog') trained as four classes for two, exit 0, with
    only 'data: ... 4 classes' to tell. A ClassLabel's case pairs (EMNIST's 'a', 'A') are classes."""
    from hf_rcka.data.label_values import check_class_count

    dirty = datasets.Dataset.from_dict({"label": ["cat", "cat ", "dog", "Dog", "eel", "eel"]})
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        check_class_count(dirty, "label", carved=False)
    assert "has classes spelt alike, each trained as a class of its own: 'Dog', 'dog'; 'cat', 'cat '" in caplog.text
    caplog.clear()
    letters = datasets.Dataset.from_dict({"label": [0, 1, 2]}, features=datasets.Features(
        {"label": datasets.ClassLabel(names=["a", "A", "b"])}))
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        check_class_count(letters, "label", carved=False)
    assert "spelt alike" not in caplog.text
