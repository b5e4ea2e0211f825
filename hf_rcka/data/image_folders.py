"""Image folders on disk, checked as datasets' ``imagefolder`` reads a folder, and listed into its rows.

``imagefolder`` labels every image by the folder it sits in. A layout it reads otherwise than the
user meant trains quietly on the wrong classes or loses images: images one level too deep (the
sub-folders become the classes), a class folder that is a symbolic link or named like a special
folder (left out), images next to the class folders (the label column dropped), images in a
format it does not read or links to nothing (left out), a metadata file (read as the labels), a
validation folder with a class the training folder lacks, or folders that share images (a folder
inside the other, or images linked across). Each is an error naming the folder or file, raised
before anything loads; a training class without validation images is only said.

``train_dir``/``validation_dir`` are then read from this module's own listing (``image_files``):
the rows ``imagefolder`` would make, without its listing of every file on every run. The check
lists the files as it goes, and the load takes that listing: a folder is read once a run, not
twice (1.28M ``os.scandir`` entries for ImageNet, slow on a network file system).
"""

from __future__ import annotations

import functools
import logging
import os
from array import array
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import DataError, LabelError
from ..models.label_forms import check_one_form_each
from ..models.labels import check_split_classes, listed_names
from .splits import VALIDATION_SPLIT_NAMES

logger = logging.getLogger(__name__)

# the files of each folder the checks listed, by absolute path, until image_files takes them
_listed: dict[str, list[tuple[str, str]]] = {}


def check_data_dirs(data_args: Any) -> None:
    """Image folders exist, hold class sub-folders with images, and train/validation classes agree."""
    if data_args.train_dir is None:
        return
    train = _checked_image_folder("train_dir", data_args.train_dir)
    validation = None
    if data_args.validation_dir is not None:
        validation = _checked_image_folder("validation_dir", data_args.validation_dir)
        check_split_classes(train.classes, validation.classes)
        train_path, validation_path = (Path(d).expanduser().resolve() for d in (data_args.train_dir, data_args.validation_dir))
        if train_path == validation_path or train_path in validation_path.parents or validation_path in train_path.parents:
            raise DataError(f"validation_dir {data_args.validation_dir!r} and train_dir {data_args.train_dir!r} share "
                            "images: the evaluation would report accuracy on training images. Give a held-out folder, "
                            "or drop validation_dir to hold out part of train_dir")
        _check_no_links_across(("train_dir", data_args.train_dir, train.links, validation_path),
                               ("validation_dir", data_args.validation_dir, validation.links, train_path))
        _check_no_files_across(train, validation)
    # what the run will read, said before it is listed again into the splits (image_files)
    counted = [f"train_dir {train.images} images in {len(train.classes)} class folders"]
    if validation is not None:
        counted.append(f"validation_dir {validation.images} in {len(validation.classes)}")
    logger.info("data: %s (checked: no image is read)", ", ".join(counted))
    _keep_listing(data_args.train_dir, train)
    if validation is not None:
        _keep_listing(data_args.validation_dir, validation)


def _check_no_links_across(*splits: tuple[str, str, list[str], Path]) -> None:
    """No image of one split is a symbolic link to an image of the other (``other``), and no two
    splits link to one file (a shared pool of images): the evaluation would score training images
    (datasets reads a linked file as the image it points to)."""
    targets = []
    for key, folder, links, other in splits:
        targets.append({os.path.realpath(link): link for link in links})
        for target, link in targets[-1].items():
            if other in Path(target).parents:
                raise DataError(f"{key} {folder!r} holds {link!r}, a symbolic link to {target!r} in the other split's "
                                "folder: the evaluation would score training images. Copy each split's own images into "
                                "it")
    shared = sorted(set(targets[0]) & set(targets[1]))
    if shared:
        raise DataError(f"{targets[0][shared[0]]!r} and {targets[1][shared[0]]!r} are symbolic links to one image, "
                        f"{shared[0]!r} ({len(shared)} such image(s)): the evaluation would score training images. "
                        "Link each image from one split only")


def images_shared_with(train_dir: str, validation_dir: str) -> str | None:
    """Why ``validation_dir`` holds images of another run's ``train_dir`` (a symbolic link into it, a
    hard link of one of its files), or None: :func:`check_data_dirs`' checks between a run's own
    folders, for two runs' (a teacher's training folder and the student's validation folder, a
    compared run's and the CKA report's), which compared only the folders' paths. None when either
    cannot be listed as a run reads it (a training folder moved or changed since)."""
    try:
        train, validation = (_scan_image_folder(folder, listing=True) for folder in (train_dir, validation_dir))
    except (OSError, LabelError):
        return None
    train_path, validation_path = (Path(d).expanduser().resolve() for d in (train_dir, validation_dir))
    try:
        _check_no_links_across(("train_dir", train_dir, train.links, validation_path),
                               ("validation_dir", validation_dir, validation.links, train_path))
        _check_no_files_across(train, validation)
    except DataError as err:
        return str(err)
    return None


def image_folder_classes(key: str, folder: str) -> list[str]:
    """The classes of the image folder a recipe's ``key`` names (:func:`class_folders`), which must
    exist and hold at least two of them."""
    checked = _checked_image_folder(key, folder)
    _keep_listing(folder, checked)
    return checked.classes


def _keep_listing(folder: str, checked: _ImageFolder) -> None:
    """The files of a folder that passed every check, for :func:`image_files` to take."""
    _listed[os.path.abspath(folder)] = checked.files


class _ImageFolder(NamedTuple):
    classes: list[str]
    links: list[str]  # its images that are symbolic links
    images: int  # in its class folders
    files: list[tuple[str, str]]  # (path, class) of each, when listed (else empty)
    inodes: array  # the inode number of each of files' (-1 where unknown)


def _checked_image_folder(key: str, folder: str) -> _ImageFolder:
    if not os.path.isdir(folder):
        raise DataError(f"{key} {folder!r} " + ("is a file, not a folder" if os.path.exists(folder) else "does not exist")
                        + ": give a folder with one sub-folder of images per class")
    _listed.pop(os.path.abspath(folder), None)  # an earlier check's listing is stale once this one starts
    scanned = _scan_image_folder(folder, listing=True, warn=True)
    classes = scanned.classes
    if not classes:
        raise DataError(f"{key} {folder!r} holds no class sub-folders with images: give a folder with one "
                        "sub-folder of images per class (e.g. train/cat/1.jpg, train/dog/2.jpg)")
    if len(classes) == 1:  # datasets then drops the label column, and the error would name that instead
        raise DataError(f"{key} {folder!r} holds one class folder ({classes[0]!r}): a classifier needs at least two "
                        "classes, one sub-folder of images each")
    return scanned


def class_folders(folder: str) -> list[str]:
    """The classes of an image folder: its sub-folders that hold images directly.

    datasets' ``imagefolder`` labels every image by the folder it sits in, so this reads the same
    layout: ``train/cat/1.jpg`` is class ``cat``. A class folder whose images sit one level deeper
    (``train/cat/2019/1.jpg``) would silently train on the classes ``2019``..., and a folder with
    no image (only a README) is no class, which the train/validation comparison then reports.

    datasets' file listing also leaves out what it takes for hidden or special (names starting with
    ``__``) and does not follow symbolic links to folders: such a class folder would silently lose
    its images, so it is an error here. It reads images by their file extension, from a list that
    lacks some Pillow opens (``.avif``): those files, a whole class of them too, would be left out.
    And a ``metadata.csv`` (``.jsonl``, ``.parquet``) anywhere in the folder is read as the images'
    labels over their class folders.

    Images directly in the folder next to class folders put the images at two depths, and
    datasets then drops the label column altogether (the run would fail later, blaming
    ``label_column_name``).

    Raises:
        LabelError: a class folder keeps its images in sub-folders, is a symbolic link, is
            named like a special folder, or has the name of another in a different Unicode form;
            images sit directly in the folder next to class folders; a metadata file, or images
            datasets does not read, are in the folder.
    """
    return _scan_image_folder(folder, warn=True).classes


def _scan_image_folder(folder: str, listing: bool = False, warn: bool = False) -> _ImageFolder:
    """The checked layout of ``folder``; ``listing``: with every image's path and class; ``warn``:
    saying what datasets leaves out that may not be meant (a folder listed after its check is not
    warned about twice)."""
    extensions = _image_extensions()
    classes, imageless, loose, hidden, unread, links, files = [], [], [], [], [], [], []
    inodes = array("q")
    images = 0
    only_pillow = _pillow_only_extensions(extensions)
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        extension = os.path.splitext(entry.name)[1].lower()
        if entry.is_file() and extension in extensions:
            loose.append(entry.name)
        elif entry.is_file() and extension in only_pillow and not entry.name.startswith("."):
            unread.append(entry.name)
        elif entry.is_file():
            _check_not_metadata(entry.path)
        if not entry.is_dir():
            continue
        if entry.name.startswith("."):  # datasets skips hidden folders: a class ".inf" would vanish unsaid
            if _scan_class_folder(entry.path, extensions, skipped=True).images:
                hidden.append(entry.name)
            continue
        found = _scan_class_folder(entry.path, extensions, skipped=entry.name.startswith("__"), listing=listing)
        if entry.name.startswith("__") and not (found.images or found.nested or found.unread):
            continue  # __pycache__, __MACOSX: datasets skips them, and they hold no image
        _check_loadable(folder, entry)
        if not entry.path.isascii():  # the folder's or the class's name: every image's path holds it
            _check_utf8_name(entry.path)
        if found.nested and entry.name.lower() in ("train", "training", *VALIDATION_SPLIT_NAMES):
            raise LabelError(
                f"{folder!r} holds split folders ({entry.name!r} among them), not class folders: give train_dir "
                f"and validation_dir the split folders themselves (e.g. {os.path.join(folder, entry.name)!r}), each "
                "holding one folder per class; or give the folder as dataset_name, which reads its splits"
            )
        if found.nested:
            raise LabelError(
                f"{os.path.join(folder, entry.name)!r} keeps images in sub-folders ({listed_names(found.nested)}): "
                "datasets labels an image by the folder it is in, so those would become the classes. Put each "
                "class's images directly in its class folder (train/cat/1.jpg)"
            )
        unread += [os.path.join(entry.name, name) for name in found.unread]
        links += found.links
        images += found.images
        files += [(path, entry.name) for path in found.listed]
        inodes.extend(found.inodes)
        (classes if found.images else imageless).append(entry.name)
    if unread:
        raise LabelError(
            f"{folder!r} holds images in a format datasets' imagefolder does not read ({listed_names(unread)}): they "
            "would be left out of the data, a class of them altogether. Convert them to PNG, JPEG or WebP, or move "
            "them out of the folder"
        )
    if loose and classes:
        raise LabelError(
            f"{folder!r} has images directly in it ({listed_names(loose)}) next to its class folders: datasets then "
            "labels no image at all. Move them into their class folder, or out of the data"
        )
    check_one_form_each(folder, classes)
    if imageless and warn:
        logger.warning("%s: sub-folders without images are not classes: %s", folder, listed_names(imageless))
    if hidden and warn:
        logger.warning("%s: hidden folders (a leading '.') are skipped, images and all: %s; rename any that is a "
                       "class", folder, listed_names(hidden))
    if warn and listing:
        _warn_images_in_two_classes(folder, files, inodes)
    return _ImageFolder(classes, links, images, files, inodes)


def _same_inodes(inodes: array) -> list[list[int]]:
    """The indices of ``inodes`` that share a number, in groups (-1, unknown, shares none)."""
    import numpy as np

    values = np.frombuffer(inodes, dtype=np.int64) if len(inodes) else np.empty(0, np.int64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    repeated = (ends - starts > 1) & (ordered[starts] >= 0) if len(ordered) else np.zeros(0, bool)
    return [order[a:b].tolist() for a, b in zip(starts[repeated], ends[repeated])]


def _same_files(entries: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """``entries`` (path, tag) of one inode number, grouped by the file each is (``os.stat``'s
    device and inode, links followed; numbers repeat across file systems): one stat each, of these
    few candidates only."""
    groups: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for path, tag in entries:
        try:
            found = os.stat(path)
        except OSError:
            continue
        groups.setdefault((found.st_dev, found.st_ino), []).append((path, tag))
    return [group for group in groups.values() if len({tag for _, tag in group}) > 1]


def _one_file_under_two_tags(files: list[tuple[str, str]], inodes: array) -> list[list[tuple[str, str]]]:
    """The groups of ``files`` (path, tag: a class, a split) that are one file under more than one
    tag: candidates by the inode numbers the listing read, each confirmed by one stat."""
    groups = []
    for indices in _same_inodes(inodes):
        if len({files[i][1] for i in indices}) > 1:
            groups += _same_files([files[i] for i in indices])
    return groups


def _warn_images_in_two_classes(folder: str, files: list[tuple[str, str]], inodes: array) -> None:
    """One image file in two class folders (a hard link, or a symbolic link to it or to a file
    another class links to) is trained under both labels: said, from the inode numbers the listing
    read (a copy is another file, which only reading every image would find)."""
    shared = _one_file_under_two_tags(files, inodes)
    if shared:
        first = " and ".join(repr(path) for path, _ in shared[0][:2])
        logger.warning("%s: %d image file(s) sit in more than one class folder (hard or symbolic links to one file), "
                       "e.g. %s: each is trained under every one of those labels. Keep each image in the folder of "
                       "its one class", folder, len(shared), first)


def _check_no_files_across(train: _ImageFolder, validation: _ImageFolder) -> None:
    """No image file is in both splits through a hard link (or a symbolic link to a hard link of
    the other's): found from the inode numbers the listings read, as ``_check_no_links_across``
    finds symbolic links."""
    files = [(path, "train_dir") for path, _ in train.files] + [(path, "validation_dir") for path, _ in validation.files]
    for group in _one_file_under_two_tags(files, train.inodes + validation.inodes):
        paths = {tag: path for path, tag in group}
        raise DataError(f"{paths['train_dir']!r} and {paths['validation_dir']!r} are one file (hard links): "
                        "the evaluation would score training images. Keep each image in one split")


def image_files(folder: str) -> list[tuple[str, str]]:
    """``(path, class)`` of every image datasets' ``imagefolder`` reads in ``folder``'s class folders,
    sorted by path as it sorts them: the files with an image extension (of any case) directly in a
    class folder (:func:`class_folders`), hidden files left out, symbolic links to files kept under
    their own path. One ``os.scandir`` a class folder, no ``stat`` of a file. ``folder`` is one
    :func:`check_data_dirs` (or :func:`image_folder_classes`) checked: the check's own listing is
    taken (once) where it made one, and its warnings (sub-folders without images, hidden folders)
    are not said again."""
    rows = _listed.pop(os.path.abspath(folder), None)
    if rows is None:
        rows = _scan_image_folder(folder, listing=True).files
    rows.sort()
    return rows


def _check_not_metadata(path: str) -> None:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    if os.path.basename(path) in ImageFolder.METADATA_FILENAMES:
        raise LabelError(
            f"{path!r} is a datasets metadata file, which imagefolder reads as the images' labels and columns in "
            "place of their class folders (its 'label' column, if it has one, over the folder names): move it out "
            "of the image folder, or, to label the images by it, give the folder as dataset_name"
        )


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


class _ClassFolder(NamedTuple):
    images: int  # the images it holds itself (not in sub-folders)
    nested: list[str]  # its sub-folders that hold images deeper down
    unread: list[str]  # its files Pillow opens but datasets does not read as images (by extension)
    links: list[str]  # its images that are symbolic links (paths)
    listed: list[str]  # its images' paths, when asked for (else empty)
    inodes: array  # the inode number of each listed image's file (-1 where unknown; see _file_inode)


def _scan_class_folder(folder: str, extensions: frozenset[str], skipped: bool = False,
                       listing: bool = False) -> _ClassFolder:
    """What one sub-folder holds; ``skipped``: a folder datasets leaves out (hidden, ``__...``), whose
    metadata files it does not read either; ``listing``: with its images' paths."""
    images, nested, unread, links, listed, inodes = 0, [], [], [], [], array("q")
    only_pillow = _pillow_only_extensions(extensions)
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if not entry.name.startswith("__") and _holds_an_image(entry.path, extensions | only_pillow, skipped):
                nested.append(entry.name)
            continue
        extension = os.path.splitext(entry.name)[1].lower()
        if extension in extensions and entry.is_symlink() and not os.path.exists(entry.path):
            raise DataError(f"{entry.path!r} is a symbolic link to nothing (its target was moved or deleted): "
                            "datasets would leave it out without a word. Restore its target, or remove the link")
        if extension in extensions:
            if not entry.name.isascii():
                _check_utf8_name(entry.path)
            images += 1
            if listing:
                listed.append(entry.path)
                inodes.append(_file_inode(entry))
            if entry.is_symlink():
                links.append(entry.path)
        elif extension in only_pillow:
            unread.append(entry.name)
        elif not skipped:
            _check_not_metadata(entry.path)
    return _ClassFolder(images, sorted(nested), sorted(unread), links, listed, inodes)


def _file_inode(entry: os.DirEntry) -> int:
    """The inode number of the file an image entry is: on POSIX readdir's own for a file (no
    stat), one stat for a symbolic link (the file it points to); -1 where it would cost a stat of
    every file (Windows) or cannot be read."""
    try:
        if entry.is_symlink():
            return os.stat(entry.path).st_ino
        return entry.inode() if os.name == "posix" else -1
    except OSError:
        return -1


def _check_utf8_name(path: str) -> None:
    """An image's file name is text: a name in another encoding than UTF-8 (a Latin-1 ``café.jpg`` from an
    old archive) is read by Python with its bytes escaped, and Arrow cannot store such a path (the load
    failed with "surrogates not allowed", naming no file)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{path!r}: its name is not UTF-8 text (its bytes read in another encoding), which the "
                        "data cannot hold: rename it (e.g. convmv -f latin1 -t utf8 --notest -r FOLDER)") from None


# Photos in formats Pillow reads only with a plugin, or not at all: a phone's HEIC/HEIF, JPEG XL,
# cameras' raw files, SVG, HDR. datasets lists none of them, so a class folder of iPhone photos
# lost them unsaid (or was taken for a folder "without images").
_OTHER_IMAGE_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".jxl", ".svg", ".svgz", ".dng", ".cr2", ".cr3",
                                     ".nef", ".arw", ".orf", ".rw2", ".raf", ".exr", ".hdr"})


@functools.lru_cache(maxsize=None)
def _pillow_only_extensions(extensions: frozenset[str]) -> frozenset[str]:
    """Extensions of images that datasets does not list: those Pillow decodes (``.avif``), not those
    of its stub plugins (HDF5, GRIB...), which name data files Pillow cannot decode; and the photo
    formats of ``_OTHER_IMAGE_EXTENSIONS`` (``.heic``)."""
    from PIL import Image, ImageFile

    registered = Image.registered_extensions()  # loads every plugin, and with them Image.OPEN
    readable = {name for name, (factory, _accept) in Image.OPEN.items()
                if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))}
    decoded = frozenset(ext for ext, name in registered.items() if name in readable)
    return (decoded | _OTHER_IMAGE_EXTENSIONS) - extensions


def _holds_an_image(folder: str, extensions: frozenset[str], skipped: bool = False) -> bool:
    """Whether ``folder`` holds an image at any depth, in the folders datasets reads (not hidden or
    ``__...`` ones); a metadata file there is an error unless the folder is ``skipped`` itself."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith((".", "__"))]
        names = [name for name in files if not name.startswith(".")]
        if any(os.path.splitext(name)[1].lower() in extensions for name in names):
            return True
        for name in names if not skipped else ():
            _check_not_metadata(os.path.join(root, name))
    return False


__all__ = ["check_data_dirs", "class_folders", "image_files", "image_folder_classes"]
