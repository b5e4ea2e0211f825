"""Synthetic images for the smoke test, shaped like the recipe's dataset.

The smoke test must not download the dataset (ImageNet is gated and 150 GB) but should exercise
everything that depends on it: the number of classes (heads, logit losses, the label checks), the
column names, the image decoding and the resize/crop to the student's resolution. So it writes a
handful of JPEGs to parquet files that ``datasets.load_dataset(folder)`` reads as ``train`` and
``validation`` splits, the way a Hub dataset arrives.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.image_folders import class_folders
from ..file_writes import replacing_path

logger = logging.getLogger(__name__)

# Larger than the model's input and not square, as photos are: resizing and cropping really run.
_OVERSIZE = 1.15
_ASPECT = 1.25
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class SyntheticData:
    """The synthetic dataset of one smoke test.

    Attributes:
        folder: where ``train.parquet`` and ``validation.parquet`` go.
        image_column, label_column: the recipe's column names.
        label_names: class names (ids are positions).
        resolution: the student's input (height, width); the JPEGs are a little larger.
        num_train, num_eval: images per split (all processes together).
        seed: seeds the pixels and labels, so reruns see the same images.
    """

    folder: Path
    image_column: str
    label_column: str
    label_names: tuple[str, ...]
    resolution: tuple[int, int]
    num_train: int
    num_eval: int
    seed: int = 0

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the written JPEGs."""
        height = math.ceil(self.resolution[0] * _OVERSIZE)
        return height, math.ceil(self.resolution[1] * _OVERSIZE * _ASPECT)


def class_names(
    dataset_name: str | None, train_dir: str | None, teacher_labels: Sequence[str] | None, known: dict[str, int],
    default: int,
) -> tuple[list[str], str | None]:
    """The dataset's class names (or placeholders of the right number), and a note on the guess.

    The count comes from, in order: the table ``known`` of dataset ids, the class folders of an
    existing ``train_dir``, a teacher folder's classes (a teacher is trained on the recipe's
    classes), else ``default``. A teacher's own names are reused when their number fits, so that
    checks comparing labels by name see the names a real run would.
    """
    note = None
    if dataset_name and dataset_name.lower() in known:
        count = known[dataset_name.lower()]
    elif train_dir and os.path.isdir(train_dir):
        # the folders a run reads as classes (its layout checks and warnings too); a train_dir of empty
        # class folders alone (the images come later) is read by its folders' names
        folders = class_folders(train_dir) or sorted(
            e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith((".", "__")))
        if folders:
            return folders, None
        count, note = default, f"{train_dir} has no class folders: {default} classes assumed"
    elif teacher_labels:
        count = len(teacher_labels)
    else:
        count = default
        note = f"class count of {dataset_name or train_dir!r} unknown offline: {default} classes assumed"
    if teacher_labels and len(teacher_labels) == count:
        return list(teacher_labels), note
    return [f"class_{i}" for i in range(count)], note


def write_synthetic_dataset(data: SyntheticData) -> None:
    """Write ``train.parquet`` and ``validation.parquet`` (files are replaced atomically, so that
    several processes of one launch can all write the same, seeded, content)."""
    import datasets

    features = datasets.Features(
        {data.image_column: datasets.Image(), data.label_column: datasets.ClassLabel(names=list(data.label_names))}
    )
    rng = np.random.default_rng(data.seed)
    data.folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", data.num_train), ("validation", data.num_eval)):
        rows = {
            data.image_column: [{"bytes": _jpeg(rng, data.image_size), "path": None} for _ in range(count)],
            data.label_column: rng.integers(0, len(data.label_names), size=count).tolist(),
        }
        target = data.folder / f"{split}.parquet"
        # a temporary name of its own (not the PID: processes on several machines, or containers, share
        # this disk), with the umask's permissions (mkstemp's alone left the data readable by its owner only)
        with replacing_path(target) as partial:
            datasets.Dataset.from_dict(rows, features=features).to_parquet(str(partial))
    logger.info(
        "smoke test: %d train / %d validation synthetic %dx%d JPEGs, %d classes, in %s",
        data.num_train, data.num_eval, *data.image_size, len(data.label_names), data.folder,
    )


def _jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    """Smooth random colour blobs: compressible like a photo, unlike white noise."""
    from PIL import Image

    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size[1], size[0]), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def student_resolution(values: dict[str, Any], default: int) -> tuple[tuple[int, int], str | None]:
    """The student's input (height, width) as the run will see it, without building the model.

    ``image_size`` wins, then ``image_size``/``img_size`` in ``student_config_overrides``, then the
    student's image processor (timm's data config, a config's default, a folder's file).
    """
    from ..models.processors import load_image_processor
    from ..modeling.teacher_inputs import input_stats

    overrides = values.get("student_config_overrides") or {}
    for size in (values.get("image_size"), overrides.get("image_size"), overrides.get("img_size")):
        if size:
            return ((int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))), None
    try:
        processor = load_image_processor(values["model_name_or_path"], trust_remote_code=False)
        return tuple(input_stats(processor).size), None
    except (OSError, ValueError) as err:
        return (default, default), f"student resolution unknown ({err}): {default} px images"
