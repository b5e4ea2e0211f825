"""Image folders on disk, read as datasets' ``imagefolder`` will read them, before it does.

``imagefolder`` labels every image by the folder it sits in. A layout it reads otherwise than the
user meant trains quietly on the wrong classes or loses images: images one level too deep (the
sub-folders become the classes), a class folder that is a symbolic link or named like a special
folder (left out), images next to the class folders (the label column dropped), a validation
folder with a class the training folder lacks, or folders that share images. Each is an error
naming the folder, raised before anything loads; a training class without validation images is
only said.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import DataError, LabelError
from ..models.label_forms import check_one_form_each
from ..models.labels import check_split_classes, listed_names
from .splits import VALIDATION_SPLIT_NAMES

logger = logging.getLogger(__name__)


def check_data_dirs(data_args: Any) -> None:
    """Image folders exist, hold class sub-folders with images, and train/validation classes agree."""
    if data_args.train_dir is None:
        return
    train = image_folder_classes("train_dir", data_args.train_dir)
    if data_args.validation_dir is not None:
        check_split_classes(train, image_folder_classes("validation_dir", data_args.validation_dir))
        train_path, validation_path = (Path(d).expanduser().resolve() for d in (data_args.train_dir, data_args.validation_dir))
        if train_path == validation_path or train_path in validation_path.parents or validation_path in train_path.parents:
            raise DataError(f"validation_dir {data_args.validation_dir!r} and train_dir {data_args.train_dir!r} share "
                            "images: the evaluation would report accuracy on training images. Give a held-out folder, "
                            "or drop validation_dir to hold out part of train_dir")


def image_folder_classes(key: str, folder: str) -> list[str]:
    """The classes of the image folder a recipe's ``key`` names (:func:`class_folders`), which must
    exist and hold at least two of them."""
    if not os.path.isdir(folder):
        raise DataError(f"{key} {folder!r} " + ("is a file, not a folder" if os.path.exists(folder) else "does not exist")
                        + ": give a folder with one sub-folder of images per class")
    classes = class_folders(folder)
    if not classes:
        raise DataError(f"{key} {folder!r} holds no class sub-folders with images: give a folder with one "
                        "sub-folder of images per class (e.g. train/cat/1.jpg, train/dog/2.jpg)")
    if len(classes) == 1:  # datasets then drops the label column, and the error would name that instead
        raise DataError(f"{key} {folder!r} holds one class folder ({classes[0]!r}): a classifier needs at least two "
                        "classes, one sub-folder of images each")
    return classes


def class_folders(folder: str) -> list[str]:
    """The classes of an image folder: its sub-folders that hold images directly.

    datasets' ``imagefolder`` labels every image by the folder it sits in, so this reads the same
    layout: ``train/cat/1.jpg`` is class ``cat``. A class folder whose images sit one level deeper
    (``train/cat/2019/1.jpg``) would silently train on the classes ``2019``..., and a folder with
    no image (only a README) is no class, which the train/validation comparison then reports.

    datasets' file listing also leaves out what it takes for hidden or special (names starting with
    ``__``) and does not follow symbolic links to folders: such a class folder would silently lose
    its images, so it is an error here.

    Images directly in the folder next to class folders put the images at two depths, and
    datasets then drops the label column altogether (the run would fail later, blaming
    ``label_column_name``).

    Raises:
        LabelError: a class folder keeps its images in sub-folders, is a symbolic link, is
            named like a special folder, or has the name of another in a different Unicode form;
            images sit directly in the folder next to class folders.
    """
    extensions = _image_extensions()
    classes, imageless, loose, hidden = [], [], [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and os.path.splitext(entry.name)[1].lower() in extensions:
            loose.append(entry.name)
        if not entry.is_dir():
            continue
        if entry.name.startswith("."):  # datasets skips hidden folders: a class ".inf" would vanish unsaid
            if _images_inside(entry.path, extensions)[0]:
                hidden.append(entry.name)
            continue
        _check_loadable(folder, entry)
        direct, nested = _images_inside(entry.path, extensions)
        if nested and entry.name.lower() in ("train", "training", *VALIDATION_SPLIT_NAMES):
            raise LabelError(
                f"{folder!r} holds split folders ({entry.name!r} among them), not class folders: give train_dir "
                f"and validation_dir the split folders themselves (e.g. {os.path.join(folder, entry.name)!r}), each "
                "holding one folder per class; or give the folder as dataset_name, which reads its splits"
            )
        if nested:
            raise LabelError(
                f"{os.path.join(folder, entry.name)!r} keeps images in sub-folders ({listed_names(nested)}): datasets labels "
                "an image by the folder it is in, so those would become the classes. Put each class's images "
                "directly in its class folder (train/cat/1.jpg)"
            )
        (classes if direct else imageless).append(entry.name)
    if loose and classes:
        raise LabelError(
            f"{folder!r} has images directly in it ({listed_names(loose)}) next to its class folders: datasets then "
            "labels no image at all. Move them into their class folder, or out of the data"
        )
    check_one_form_each(folder, classes)
    if imageless:
        logger.warning("%s: sub-folders without images are not classes: %s", folder, listed_names(imageless))
    if hidden:
        logger.warning("%s: hidden folders (a leading '.') are skipped, images and all: %s; rename any that is a "
                       "class", folder, listed_names(hidden))
    return classes


def _check_loadable(folder: str, entry: os.DirEntry) -> None:
    path = os.path.join(folder, entry.name)
    if entry.is_symlink():
        raise LabelError(f"class folder {path!r} is a symbolic link, which datasets' imagefolder does not follow "
                         "(its images would be left out): copy or move the images into a real folder")
    if entry.name.startswith("__"):
        raise LabelError(f"class folder {path!r} starts with '__', which datasets' imagefolder skips as a special "
                         "folder (its images would be left out): rename it")
    if "\\" in entry.name:  # datasets reads it as a path separator, and then finds no label column
        raise LabelError(f"class folder {path!r} has a backslash in its name, which datasets' imagefolder reads as a "
                         "path separator (the data would have no labels): rename it")


def _image_extensions() -> frozenset[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(ext.lower() for ext in ImageFolder.EXTENSIONS)


def _images_inside(folder: str, extensions: frozenset[str]) -> tuple[bool, list[str]]:
    """Whether ``folder`` holds an image itself, and which of its sub-folders hold images deeper down."""
    direct, nested = False, []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if _holds_an_image(entry.path, extensions):
                nested.append(entry.name)
        elif os.path.splitext(entry.name)[1].lower() in extensions:
            direct = True
    return direct, sorted(nested)


def _holds_an_image(folder: str, extensions: frozenset[str]) -> bool:
    for _root, _dirs, files in os.walk(folder):
        if any(os.path.splitext(name)[1].lower() in extensions for name in files if not name.startswith(".")):
            return True
    return False


__all__ = ["check_data_dirs", "class_folders", "image_folder_classes"]
