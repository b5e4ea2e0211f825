"""scripts/cka_report.py: which images it takes from a dataset's own validation split, decoded how."""

import io

import datasets
import numpy as np
from PIL import Image

from hf_rcka.cli import cka_report


def _args(tmp_path, data):
    args = cka_report.parse_args(["timm/resnet18", "timm/resnet18", "--dataset_name", str(data),
                                  "--output", str(tmp_path / "out"), "--num_images", "20"])
    cka_report.resolve_split(args)
    return args


def test_a_validation_split_sorted_by_class_gives_images_of_every_class(tmp_path):
    colours = [(40 * k, 255 - 40 * k, 0) for k in range(5)]
    images = [Image.new("RGB", (8, 8), colours[k]) for k in range(5) for _ in range(10)]  # sorted by class
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=5)})
    split = datasets.Dataset.from_dict({"image": images, "label": [k for k in range(5) for _ in range(10)]}, features=features)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(tmp_path / "data")
    seen = {np.asarray(image)[0, 0].tobytes() for image in cka_report.sample_images(_args(tmp_path, tmp_path / "data"))}
    assert len(seen) == 5  # the first 20 rows were of 2 classes


def test_images_are_decoded_as_training_decodes_them(tmp_path):
    pixels = np.zeros((8, 8, 4), np.uint8)
    pixels[2:6, 2:6] = (200, 50, 50, 255)  # an opaque square on transparent black
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
    rows = [{"bytes": buffer.getvalue(), "path": None}] * 6
    features = datasets.Features({"image": datasets.Image(mode="RGB"), "label": datasets.ClassLabel(num_classes=2)})
    split = datasets.Dataset.from_dict({"image": rows, "label": [0, 1] * 3}, features=features)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(tmp_path / "data")
    image = cka_report.sample_images(_args(tmp_path, tmp_path / "data"))[0]
    assert tuple(np.asarray(image.convert("RGB"))[0, 0]) == (255, 255, 255)  # over white, as evaluation sees it


def test_panels_of_folders_with_the_same_name_are_told_apart():
    """Two runs' checkpoint-20 folders both read 'teacher vs checkpoint-20'."""
    assert cka_report._panel_names(["runs/teacher", "a/checkpoint-20", "b/checkpoint-20", "timm/resnet18"]) == [
        "teacher", "a/checkpoint-20", "b/checkpoint-20", "resnet18"]


def test_an_unreadable_image_is_left_out_as_training_leaves_it_out(tmp_path, capsys):
    """The report stopped at the first unreadable image of the set whose accuracy the card gives,
    which training and evaluation had skipped."""
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(good, "PNG")
    rows = [{"bytes": b"not an image", "path": None}] + [{"bytes": good.getvalue(), "path": None}] * 25
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=2)})
    split = datasets.Dataset.from_dict({"image": rows, "label": [0, 1] * 13}, features=features)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(tmp_path / "data")
    images = cka_report.sample_images(_args(tmp_path, tmp_path / "data"))
    assert len(images) == 20 and all(tuple(np.asarray(image)[0, 0]) == (10, 200, 30) for image in images)
    assert "note: 1 unreadable image(s) left out" in capsys.readouterr().err


def test_a_save_to_disk_folder_is_only_read(tmp_path):
    """Drawing --num_images from a split of more wrote its shuffled indices into a Dataset.save_to_disk
    folder: a read-only one failed the report with a traceback."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=2)})
    split = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8), (k, 0, 0)) for k in range(200)],
                                        "label": [0, 1] * 100}, features=features)
    split.save_to_disk(tmp_path / "data")
    before = sorted(path.name for path in (tmp_path / "data").iterdir())
    assert len(cka_report.sample_images(_args(tmp_path, tmp_path / "data"))) == 20
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == before


def test_fewer_than_3_readable_images_are_refused_before_any_model_runs(capsys):
    """A split whose images are mostly unreadable left 2: the report loaded both models and then
    stopped on layer_cka's ValueError, a traceback, where one error line was due."""
    import pytest

    from hf_rcka.errors import DataError

    good = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(good, "PNG")
    values = [{"bytes": b"not an image", "path": None}] * 3 + [{"bytes": good.getvalue(), "path": None}] * 2
    with pytest.raises(DataError, match="the validation split holds 2 readable images: layer CKA needs at least 3"):
        cka_report._readable_images(iter(values), 5)
    assert len(cka_report._readable_images(iter(values + values[-1:]), 5)) == 3
    assert "note: 3 unreadable image(s) left out" in capsys.readouterr().err
