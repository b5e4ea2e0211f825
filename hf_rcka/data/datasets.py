"""Datasets for image classification: Hub datasets, image folders and the offline digits demo
(:mod:`.digits`), loaded into a ``train`` and a ``validation`` split, checked, and given the
student's transforms. Relative image paths are read against the dataset's folder
(:mod:`.image_paths`).

Transforms follow the *student*: timm's training augmentation at its input size and normalisation,
and for evaluation its image processor itself (see ``transforms.py``); the teacher's own
normalisation and resolution are derived from the same batch inside the model wrapper, so there is
one data pipeline however different the two models are.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Callable

import datasets
from datasets.data_files import DEFAULT_PATTERNS_SPLIT_IN_DIR_NAME, DEFAULT_PATTERNS_SPLIT_IN_FILENAME
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import default_collate

from .bad_images import SkippedImages
from ..arguments import DataArguments
from ..errors import DataError
from ..losses import IGNORE_INDEX
from ..models.labels import listed_names
from .images import UnreadableImage, decode_image
from .transforms import eval_transform, train_transform
from .splits import VALIDATION_SPLIT_NAMES, stratified_validation_split
from . import label_values
from .digits import DIGITS, digits_dataset
from .image_folders import image_files
from .image_paths import image_paths_from_the_data_folder
from .local_cache import local_cache_path
from .mapped_splits import mapped_split
from .stored_labels import parquet_split_files, realign_stored_labels

logger = logging.getLogger(__name__)



class RawSplits(datasets.DatasetDict):
    """The loaded ``train`` and ``validation`` splits. ``carved``: the validation split was held out
    of ``train`` here (``train_val_split`` and ``split_seed`` chose its images), not the data's own.
    ``evaluated``: the data's split that ``validation`` holds, by its name there (``test``, ``dev``...;
    ``train`` when carved from it, or wholly evaluated in an evaluation-only run)."""

    carved: bool = False
    evaluated: str = "validation"


def load_raw_datasets(args: DataArguments, eval_only: bool = False) -> RawSplits:
    """Load the data and make sure there is a labelled ``train`` and ``validation`` split.

    The validation split carved from ``train`` is drawn with ``args.split_seed``, never the training
    seed, so runs with other seeds hold out the same images.
    ``eval_only``: without a validation split the whole training split is evaluated (the data a
    model is evaluated on), not a held-out part of it.
    """
    column = args.label_column_name
    raw = _load_source(args)
    if "train" not in raw:
        raise ValueError(f"the dataset has no 'train' split (splits: {list(raw)})")
    _check_columns(raw["train"], args)
    label_values.check_label_values(raw["train"], column, "train")
    check_image_values(raw["train"], args.image_column_name, "train")
    validation = _labelled_eval_split(raw, column)
    _say_unused_splits(raw, validation, args, eval_only)
    raw = image_paths_from_the_data_folder(raw, args, used=("train", validation))
    return _evaluation_split(raw, validation, args, eval_only)


def _load_source(args: DataArguments) -> datasets.DatasetDict:
    """The splits of the data the recipe names: the digits demo, a Hub dataset or local folder
    (``dataset_name``, its stored class labels realigned), or ``train_dir``/``validation_dir``."""
    if args.dataset_name == DIGITS:
        if args.dataset_config_name is not None:  # ignored, and the card named it as the data's configuration
            raise DataError(f"dataset_config_name {args.dataset_config_name!r}: {DIGITS} has no configurations; "
                            "remove dataset_config_name")
        return datasets.DatasetDict({"train": digits_dataset()})
    if args.dataset_name is not None and args.dataset_name.startswith("builtin:"):  # datasets' "no data file at ..."
        raise DataError(f"dataset_name {args.dataset_name!r}: the one built-in data set is {DIGITS}")
    if args.dataset_name is not None and os.path.isfile(args.dataset_name):  # datasets: "no data file at" it
        raise DataError(f"dataset_name {args.dataset_name!r} is a file: give the folder that holds the dataset's files "
                        "(a Hub id, a save_to_disk folder, or a folder of parquet/CSV/JSON files)")
    if args.dataset_name is not None:
        saved = _one_saved_dataset(args.dataset_name, args.dataset_config_name)
        if saved is not None:
            return saved
        listed = _saved_split_files(args.dataset_name)
        if listed is not None:  # each split's files store its own class names: realigned as below
            # datasets reads data files as glob patterns: a folder "ds[12]" read a sibling "ds2"
            raw = datasets.load_dataset("arrow", data_files={split: [glob.escape(f) for f in files]
                                                             for split, files in listed.items()})
            return realign_stored_labels(raw, listed, args.label_column_name)
        folder = os.path.abspath(args.dataset_name)  # datasets puts a relative folder after the working one
        if os.path.isdir(folder) and glob.escape(folder) != folder:
            raise DataError(f"dataset_name {args.dataset_name!r}: datasets reads a folder's files through glob "
                            f"patterns, and its path {folder!r} holds a [, * or ? that would match other folders' "
                            "files (a folder 'pq[12]' read 'pq1'): rename the folder, or the folder it is in")
        builder = _builder(args.dataset_name, args.dataset_config_name)
        cache = _cache_of_local_files(folder, builder)
        try:
            raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name,
                                        **({"cache_dir": cache} if cache else {}))
        except ValueError as err:
            _refuse_an_empty_split(args.dataset_name, err)
            raise
        files = parquet_split_files(builder)
        declared = getattr(getattr(builder, "info", None), "features", None) is not None  # the card's, not a file's
        return realign_stored_labels(raw, files, args.label_column_name, card_features=declared) if files else raw
    return image_folder_splits(args)


def image_folder_splits(args: DataArguments) -> datasets.DatasetDict:
    """``train_dir`` (and ``validation_dir``) as datasets' ``imagefolder`` reads them, from one listing.

    The same rows in the same order and the same features (``image``: each file's path, no bytes;
    ``label``: a ClassLabel of both splits' class folders, sorted), built from ``os.scandir`` of each
    class folder. ``load_dataset("imagefolder")`` resolved every file through fsspec and read its
    metadata, on every run and every process (minutes for ImageNet's 1.33M files, with no progress
    shown), and wrote an Arrow copy on the first run; ``benchmarks/folder_listing.py`` measures
    both ways. A large split is memory-mapped from an Arrow file of its rows in datasets' cache
    (:mod:`.mapped_splits`), so that spawned loader workers get its path, not a copy of its rows
    (68 bytes an image); a small one is held in memory. The class folders are those
    ``check_data_dirs`` checked: a layout datasets reads otherwise (nested, linked or special
    folders, metadata files) is refused there.
    """
    folders = {"train": args.train_dir, "validation": args.validation_dir}
    listed = {split: image_files(os.path.abspath(folder)) for split, folder in folders.items() if folder}
    names = sorted({label for rows in listed.values() for _, label in rows})
    index = {name: i for i, name in enumerate(names)}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    splits = {}
    for split, rows in listed.items():
        paths = pa.array([path for path, _ in rows], pa.string())
        images = pa.StructArray.from_arrays([pa.nulls(len(rows), pa.binary()), paths], names=["bytes", "path"])
        table = pa.table({"image": images, "label": pa.array([index[label] for _, label in rows], pa.int64())},
                         schema=features.arrow_schema)
        splits[split] = mapped_split(table, datasets.DatasetInfo(builder_name="imagefolder", features=features), split)
    logger.info("data: listed %s", ", ".join(f"{len(rows)} {split} images" for split, rows in listed.items()))
    return datasets.DatasetDict(splits)


def _saved_split_files(path: str) -> dict[str, list[str]] | None:
    """The data files of a ``DatasetDict.save_to_disk`` folder, split by split, as each split's
    ``state.json`` lists them; None for any other source.

    ``load_dataset`` on the folder reads every ``.arrow`` file in it: the ``cache-*.arrow`` files
    a ``.map()`` of the loaded dataset writes beside the data were read as more rows (80 evaluation
    images for 40), or failed to cast.
    """
    index = os.path.join(path, "dataset_dict.json")
    if not (os.path.isdir(path) and os.path.isfile(index)):
        return None
    try:
        with open(index, encoding="utf-8") as handle:
            splits = json.load(handle)["splits"]
        listed = {}
        for split in splits:
            with open(os.path.join(path, split, "state.json"), encoding="utf-8") as handle:
                state = json.load(handle)
            listed[split] = [os.path.join(path, split, entry["filename"]) for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a layout this reads: load_dataset's own reading and errors
    # a split of 0 rows is saved with no file, and datasets refused the whole dataset for it
    # ('Instruction "unlabeled" corresponds to no data!'): left out, as if absent
    for split in [split for split, files in listed.items() if not files]:
        if split == "train":
            raise DataError(f"dataset_name {path!r}: its 'train' split is empty (0 rows): save it with its images")
        logger.warning("data: the dataset's %r split is empty (0 rows): it is not used", split)
        del listed[split]
    return listed


def _cache_of_local_files(folder: str, builder: datasets.DatasetBuilder | None) -> str | None:
    """A cache folder of a local dataset folder's own, named by its data files' paths, sizes and
    modification times; None for a Hub dataset (datasets' own cache, by revision).

    datasets (5.2) keys the cache of a local folder whose card lists its configurations (a README
    with ``configs:``) on the folder's base name and the configuration alone: another folder of
    the same name, or this one rewritten, loaded the data cached before it, silently (a dataset of
    60 images of other classes read as the 30 of the first).
    """
    data_files = getattr(getattr(builder, "config", None), "data_files", None)
    if not os.path.isdir(folder) or not data_files:
        return None
    splits = {str(split): sorted(str(f) for f in data_files[split]) for split in sorted(data_files)}  # NamedSplit keys
    try:
        return local_cache_path(json.dumps(splits), (path for paths in splits.values() for path in paths))
    except OSError:  # not local files after all: datasets' own cache
        return None


def _refuse_an_empty_split(name: str, err: ValueError) -> None:
    """A split of 0 rows is an error naming it: datasets refuses to load a dataset that has one, even
    a split the run does not read, with 'Instruction "test" corresponds to no data!'.

    Raises:
        DataError: ``err`` is datasets' refusal of an empty split.
    """
    found = re.match(r'Instruction "(.+)" corresponds to no data', str(err))
    if found:
        raise DataError(f"dataset_name {name!r}: its {found.group(1)!r} split is empty (0 rows), and datasets loads no "
                        "dataset with an empty split: remove that split's files, or give it its images") from err


def _one_saved_dataset(path: str, config: str | None) -> datasets.DatasetDict | None:
    """A folder written by ``Dataset.save_to_disk`` (one dataset, not a ``DatasetDict``), as its
    ``train`` split: ``load_dataset`` refuses such a folder and says to call ``load_from_disk``,
    which a recipe cannot. Like ``train_dir`` without ``validation_dir``, its validation split is
    then carved from it (``train_val_split``)."""
    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json"))):
        return None  # a DatasetDict's folder has dataset_dict.json, which load_dataset reads
    if config is not None:
        raise DataError(f"dataset_config_name {config!r}: dataset_name {path!r} is one dataset saved with "
                        "save_to_disk, which has no configurations; remove dataset_config_name")
    dataset = datasets.load_from_disk(path)
    logger.info("data: %s holds one dataset saved with save_to_disk (%d rows): it is the train split", path,
                len(dataset))
    return datasets.DatasetDict({"train": dataset})


def _evaluation_split(raw: datasets.DatasetDict, validation: str | None, args: DataArguments,
                      eval_only: bool) -> RawSplits:
    """``raw`` with its ``validation`` split: the data's own labelled evaluation split (named
    ``validation`` here whatever its name was), all of ``train`` in an evaluation-only run without
    one, or else carved from ``train``, stratified, with ``split_seed``."""
    column = args.label_column_name
    carved = validation is None and not eval_only
    if validation is None and eval_only:
        logger.info("data: an evaluation-only run and no validation split: all %d images are evaluated", len(raw["train"]))
        raw["validation"] = raw["train"]
    elif carved:  # stratified, with split_seed (not the training seed): seeds share images
        raw = stratified_validation_split(raw["train"], column, args.train_val_split, args.split_seed)
        logger.info("data: a stratified %g%% validation split carved from train (%d of %d images, split_seed %d) "
                    "is evaluated", 100 * args.train_val_split, len(raw["validation"]),
                    len(raw["train"]) + len(raw["validation"]), args.split_seed)
    elif validation != "validation":  # e.g. a Hub dataset with train and test splits only
        logger.warning("data: the dataset has no 'validation' split; its %r split is evaluated (and, with "
                       "load_best_model_at_end, picks the checkpoint)", validation)
        raw["validation"] = raw.pop(validation)
    evaluated = validation or "train"  # errors name the split by the data's own name (test, dev...)
    label_values.check_label_values(raw["validation"], column, evaluated)
    if not carved:  # a carved split's rows were checked in train
        check_image_values(raw["validation"], args.image_column_name, evaluated)
    splits = RawSplits(raw)
    splits.carved, splits.evaluated = carved, evaluated
    return splits


def _say_unused_splits(raw: datasets.DatasetDict, evaluated: str | None, args: DataArguments, eval_only: bool) -> None:
    """Name the data's splits that no part of the run reads, and a ``train_val_split`` that is not used.

    A split by an unusual name (``holdout``) was dropped without a word, while a validation split
    was carved from train in its place; a recipe's ``train_val_split`` did nothing when the data
    brought its own validation split.
    """
    unused = [name for name in raw if name not in ("train", evaluated)]
    unknown = [name for name in unused if name not in VALIDATION_SPLIT_NAMES]
    if unknown:
        logger.warning("data: the dataset's split(s) %s are not used: hf_rcka trains on 'train' and evaluates the first "
                       "of %s it has%s", unknown, list(VALIDATION_SPLIT_NAMES), _instead(evaluated, eval_only))
    known = [name for name in unused if name not in unknown]
    if known:
        logger.info("data: the dataset's split(s) %s are not used", known)
    default = DataArguments.__dataclass_fields__["train_val_split"].default
    if evaluated is not None and args.train_val_split != default:
        logger.warning("data: train_val_split %g is not used: the dataset's own %r split is evaluated",
                       args.train_val_split, evaluated)


def _instead(evaluated: str | None, eval_only: bool) -> str:
    if evaluated is not None:
        return ""
    return " (none here: all of train is evaluated)" if eval_only else " (none here: a validation split is carved from train)"


def declared_label_names(args: DataArguments) -> list[str] | None:
    """The class names a Hub dataset's card declares for the label column, read before any of its
    files download; None for local data, or a card that declares none.

    The checks that need only the names (a teacher of other classes) then refuse a run before
    ImageNet's 150 GB download, not after it; they run again on the loaded data, which decides.

    Raises:
        DataError: as loading the data would (a loading script, a configuration to choose); and
            datasets' own errors (the Hub unreachable), which ``load_data`` turns into one line.
    """
    name = args.dataset_name
    if name is None or name.startswith("builtin:") or os.path.exists(os.path.expanduser(name)):
        return None
    # an error here is the one loading the data would meet (load_dataset asks for the same builder first)
    builder = _dataset_builder(name, args.dataset_config_name)
    feature = (builder.info.features or {}).get(args.label_column_name)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _builder(name: str, config: str | None) -> datasets.DatasetBuilder | None:
    """The dataset's builder (which files, which format), before anything is loaded.

    A local folder of class folders loads as datasets' ``imagefolder`` under ``dataset_name`` too,
    but only ``train_dir``/``validation_dir`` get the class-folder checks (images in sub-folders,
    different class folders per split), so it is refused here with that fix; a folder whose
    labels come from a metadata file (``metadata.csv``...) has no class folders and is loaded.
    """
    try:
        builder = _dataset_builder(name, config)
    except DataError:
        raise
    except (OSError, ValueError) as err:  # load_dataset says what is wrong; the checks below are skipped
        logger.warning("data: cannot inspect %r's data files before loading (%s: %s)", name, type(err).__name__, err)
        return None
    data_files = getattr(builder.config, "data_files", None) or {}
    labelled_by_metadata = any(os.path.basename(str(f)) in _METADATA_FILES for fs in data_files.values() for f in fs)
    if builder.name == "imagefolder" and os.path.isdir(name) and not labelled_by_metadata:
        # a metadata file among them: datasets left it out too, for split-named images
        tables = sorted(entry.name for entry in os.scandir(name) if entry.is_file()
                        and entry.name.endswith(_TABLE_SUFFIXES))
        files = [os.path.relpath(str(f), name) for fs in data_files.values() for f in fs]
        if tables and not any(_split_named(os.path.dirname(f), DEFAULT_PATTERNS_SPLIT_IN_DIR_NAME) for f in files):
            # not an image folder (its splits are folders): datasets read the folder's images, not its table
            if any(_split_named(os.path.basename(f), DEFAULT_PATTERNS_SPLIT_IN_FILENAME) for f in files):
                fix = ("their names match a split's (train*, *_test_*, val*...), which datasets prefers. Rename the "
                       "images (e.g. images/0001.png) so that only the table names a split")
            else:
                fix = ("the table's name names no split, and datasets then reads the most common kind of file. Name "
                       "it after its split (train.csv, and test.csv or validation.csv for the others)")
            raise DataError(f"dataset_name {name!r} holds {listed_names(tables)}, but datasets took its image files "
                            f"as the data: {fix}")
        raise DataError(
            f"dataset_name {name!r} is a folder of images: give it as train_dir (its training class folders) and "
            "validation_dir, where hf_rcka checks the class folders (datasets alone would train nested folders "
            "as classes)"
        )
    return builder


def _dataset_builder(name: str, config: str | None) -> datasets.DatasetBuilder:
    """datasets' builder of ``name``: a loading script or a missing configuration is a DataError
    that says the fix; any other error is datasets' own."""
    try:
        return datasets.load_dataset_builder(name, config)
    except RuntimeError as err:
        _refuse_a_loading_script(name, err)
        raise
    except ValueError as err:
        if str(err).startswith("Config name is missing"):  # datasets' text ends in a load_dataset() example
            configs = str(err).partition("available configs: ")[2].partition("\n")[0]
            raise DataError(f"dataset_name {name!r} has several configurations {configs}: set dataset_config_name "
                            "to the one to use") from err
        raise


def _refuse_a_loading_script(name: str, err: RuntimeError) -> None:
    """A dataset that comes as a loading script (``name/name.py``) is an error naming the way on.

    datasets no longer runs such scripts (they are code, run as it loads), and said so in a
    RuntimeError traceback; the data itself loads once it is in files datasets reads.

    Raises:
        DataError: ``err`` is datasets' refusal of a loading script.
    """
    found = str(err).partition("Dataset scripts are no longer supported, but found ")[2]
    if found:
        raise DataError(f"dataset_name {name!r} is a loading script ({found}), which is code and is not run: convert "
                        "the data to files datasets reads (parquet, csv, or an image folder) and give their folder or "
                        "repository as dataset_name") from err


def _labelled_eval_split(raw: datasets.DatasetDict, column: str) -> str | None:
    """The split to evaluate; splits without any label (a Hub ``test`` split of -1s) are dropped."""
    for name in VALIDATION_SPLIT_NAMES:
        if name not in raw:
            continue
        if not label_values.is_unlabelled(raw[name], column):
            return name
        logger.warning("data: the %r split has no labels (every label is -1 or empty), so it is not evaluated", name)
        del raw[name]
    return None


_IMAGE_VALUES = ("string", "large_string", "binary", "large_binary")
# An image folder whose labels come from one of these files (datasets' metadata layout) has no class folders
_METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
def _split_named(part: str, split_patterns: dict) -> bool:
    """Whether datasets reads ``part`` (a file name, or a folder path inside the dataset) as naming a
    split by ``split_patterns`` (datasets' own: ``train_0.png``, ``img-test-3.png``, ``train/cat``)."""
    names = [name for name in part.split(os.sep) if name]
    shapes = [pattern.removeprefix("**/").removesuffix("/**")  # '**/train[-._ 0-9]*/**' -> 'train[-._ 0-9]*'
              for patterns in split_patterns.values() for pattern in patterns]
    return any(fnmatch.fnmatchcase(name, shape) for name in names for shape in shapes)


_TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".arrow")  # files datasets loads as tables


def _check_columns(dataset: datasets.Dataset, args: DataArguments) -> None:
    for key in ("image_column_name", "label_column_name"):
        column = getattr(args, key)
        if column not in dataset.column_names:
            raise DataError(
                f"{key}={column!r} is not a column of the dataset (columns: {dataset.column_names}); set "
                f"{key} to one of them (--{key} on the command line)"
            )
    if args.label_column_name == args.image_column_name:
        raise DataError(f"label_column_name and image_column_name are both {args.label_column_name!r}: each image "
                        "would be its own class. Set label_column_name to the column of class labels")
    label = dataset.features[args.label_column_name]
    if not isinstance(label, (datasets.ClassLabel, datasets.Value)):
        kind = "lists (multi-label)" if isinstance(label, (list, datasets.Sequence, datasets.LargeList)) else str(label)
        raise DataError(f"label_column_name={args.label_column_name!r} holds {kind}, not one class per image: hf_rcka "
                        "trains single-label classification. Give a column with one label per image")
    feature = dataset.features[args.image_column_name]
    encoded = isinstance(feature, dict) and bool(feature) and set(feature) <= {"bytes", "path"}  # parquet by pandas
    if not (isinstance(feature, datasets.Image) or encoded or getattr(feature, "dtype", None) in _IMAGE_VALUES):
        raise DataError(
            f"image_column_name={args.image_column_name!r} holds {feature}, not images: give a column of images "
            "(a datasets Image feature), image file paths or encoded image bytes"
        )


def check_image_values(dataset: datasets.Dataset, column: str, split: str) -> None:
    """Every row of ``split`` holds an image value: not null, and not an empty path.

    An empty cell of a CSV's path column, or a null in a parquet or ``Image`` column, was found
    only when a batch reached its row, hours into a run, as an ``AttributeError`` naming no row.
    Read from the Arrow column alone, without decoding an image.

    Raises:
        DataError: naming the split, how many rows have no image, and the first of them.
    """
    values = dataset.with_format("arrow")[column]  # chunks of the memory-mapped table: no image is read
    if pa.types.is_struct(values.type):  # an Image value: {bytes, path}, either may hold the image
        no_path = _null_or_empty(pc.struct_field(values, "path"))
        missing = pc.or_kleene(pc.is_null(values), pc.and_kleene(pc.is_null(pc.struct_field(values, "bytes")), no_path))
    else:
        missing = _null_or_empty(values)
    count = int(pc.sum(missing).as_py() or 0)
    if count:
        first = int(pc.index(missing, True).as_py())
        raise DataError(
            f"the {split!r} split's {column!r} column has no image in {count} of {len(values)} rows (null or an "
            f"empty path; the first is row {first}): remove those rows (dataset.filter) or give them their images"
        )


def _null_or_empty(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Where a column of paths (or of anything else) holds nothing: null, or empty text."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return pc.or_kleene(pc.is_null(values), pc.equal(pc.fill_null(values, ""), ""))
    return pc.is_null(values)


def label_names(dataset: datasets.Dataset, label_column: str) -> list[str]:
    """Class names from a ClassLabel feature, else the sorted distinct label values."""
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [str(v) for v in label_values.class_order(label_values.label_column(dataset, label_column).to_pylist())]


def with_transforms(
    dataset: datasets.Dataset,
    transform: Callable,
    image_column: str,
    label_column: str,
    labels: list[str],
    skipped: SkippedImages | None = None,
    evaluation: bool = False,
) -> datasets.Dataset:
    """Apply ``transform`` lazily; emit ``pixel_values`` and integer ``labels``.

    Labels are mapped by class NAME to their index in ``labels`` (the run's class order, which
    may be a pretrained model's), never passed through by index. Images are decoded here
    (``images.decode_image``) so that an unreadable file is named; with a ``skipped`` ledger it
    is skipped (``pixel_values`` None, filled in by ``collate``), without one it is an error.
    For ``evaluation``, a skipped image's label is ``IGNORE_INDEX``, so that no metric counts it.
    """
    feature = dataset.features[label_column]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    image_feature = dataset.features.get(image_column)
    if isinstance(image_feature, datasets.Image) and image_feature.mode not in (None, "RGB"):
        # decoded by decode_image, which reads every image as the RGB image it depicts
        logger.warning("data: column %r declares Image(mode=%r), which is not applied: every image is decoded to "
                       "RGB (a model reads 3 channels; a grayscale image's value repeated in each), in training, "
                       "evaluation and the model card's snippet alike", image_column, image_feature.mode)
    if isinstance(image_feature, datasets.Image) and image_feature.decode:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))

    return dataset.with_transform(LabelledPixels(transform, image_column, label_column, labels, names, skipped,
                                                 evaluation))


def decodes_its_images(dataset: Any) -> bool:
    """Whether hf_rcka's own transform (``LabelledPixels``) decodes ``dataset``'s images, or a caller
    handed it ready ``pixel_values``, decoded however the caller's code did. torch's ``Subset`` (and
    ``random_split``'s parts) and ``ConcatDataset`` are read through to the datasets they draw from."""
    if isinstance(dataset, torch.utils.data.Subset):
        return decodes_its_images(dataset.dataset)
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return all(decodes_its_images(part) for part in dataset.datasets)
    return isinstance(getattr(dataset, "_format_kwargs", {}).get("transform"), LabelledPixels)


class LabelledPixels:
    """The batch transform ``with_transforms`` installs: decoded, transformed images and labels by name.

    A class, not a closure: dataloader workers started with ``spawn`` or ``forkserver`` (macOS,
    Windows, Python 3.14's Linux default, or ``dataloader_multiprocessing_context``) receive the
    dataset by pickling, and a closure failed there at the first batch.
    """

    def __init__(self, transform: Any, image_column: str, label_column: str, labels: Sequence[str],
                 names: list[str] | None, skipped: SkippedImages | None, evaluation: bool) -> None:
        self.transform, self.image_column, self.label_column = transform, image_column, label_column
        self.names, self.skipped, self.evaluation = names, skipped, evaluation
        self.class_names = list(labels)  # the order its labels come in, not the ClassLabel's
        self.index = {name: i for i, name in enumerate(labels)}

    def pixels(self, value: Any) -> torch.Tensor | None:
        try:
            return self.transform(decode_image(value))
        except UnreadableImage as err:
            if self.skipped is None:
                raise
            self.skipped.record(err.source, err.reason)
            return None

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        raw_labels = batch[self.label_column]
        keys = [self.names[v] for v in raw_labels] if self.names is not None else [str(v) for v in raw_labels]
        images = [self.pixels(value) for value in batch[self.image_column]]
        targets = [IGNORE_INDEX if self.evaluation and image is None else self.index[k]
                   for image, k in zip(images, keys)]
        return {"pixel_values": images, "labels": targets}


def prepare_datasets(
    raw: datasets.DatasetDict, args: DataArguments, processor: Any, labels: list[str],
    skipped: SkippedImages | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Train and eval datasets with the student's transforms (``raw`` from ``load_raw_datasets``).

    ``processor`` is the student's image processor: training uses timm's augmentation at its size
    and normalisation, evaluation the processor itself, so ``eval_accuracy`` is the deployed model's.
    ``skipped``: where unreadable images are recorded and skipped (``bad_images``); None raises.
    ``max_train_samples`` and ``max_eval_samples`` keep random subsets, drawn with ``split_seed`` (not
    the training seed: runs of several seeds train and evaluate on the same images).
    """
    train, evaluation = raw["train"], raw["validation"]
    train = seeded_subset(train, args.max_train_samples, args.split_seed)
    evaluation = seeded_subset(evaluation, args.max_eval_samples, args.split_seed)
    if args.max_train_samples is not None and len(train) < len(raw["train"]):
        _check_subset_classes(train, evaluation, args)
    columns = (args.image_column_name, args.label_column_name, labels)
    train = with_transforms(train, train_transform(processor, args), *columns, skipped=skipped)
    evaluation = with_transforms(evaluation, eval_transform(processor), *columns, skipped=skipped, evaluation=True)
    logger.info("data: %d train / %d eval images, %d classes", len(train), len(evaluation), len(labels))
    return train, evaluation


def _check_subset_classes(train: datasets.Dataset, evaluation: datasets.Dataset, args: DataArguments) -> None:
    """Say when a random ``max_train_samples`` draw missed a class the evaluation has (20 images of
    10 classes trained 9, without a word): the head never learns it, and its images count as errors.
    A warning, not an error: a small subset for a quick run is what was asked for."""
    missing = label_values.untrained_classes(train, evaluation, args.label_column_name)
    if missing:
        shown = sorted(missing)[:10]
        logger.warning("data: max_train_samples %d (a random draw with split_seed %d) holds no training image of "
                       "classes %s%s, which the evaluation has: they cannot be learned and count as errors. Raise "
                       "max_train_samples to train every class", args.max_train_samples, args.split_seed, shown,
                       " ..." if len(missing) > 10 else "")


def seeded_subset(split: datasets.Dataset, size: int | None, split_seed: int) -> datasets.Dataset:
    """``size`` images of ``split`` drawn at random with ``split_seed``; all of them when None.

    The first rows would not do: an image folder lists its images class by class, so they would
    all be of one class. The draw uses the split's seed, not the training seed: runs that differ
    only in ``seed`` train and are evaluated on the same images, as the model card's baseline
    comparison (``card_facts.SPLIT_KEYS``) assumes.
    """
    if size is None or size >= len(split):
        return split
    # in memory (8 bytes a row): datasets wrote the shuffled indices beside the split's files, into
    # the user's own folder for a save_to_disk one (a read-only folder failed the run)
    return split.shuffle(seed=split_seed, keep_in_memory=True).select(range(size))


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` and ``labels`` (when the items have them) into a batch.

    An example whose image was skipped (``pixel_values`` None, see ``bad_images``) is replaced
    by a readable one of the same batch, so every batch keeps its size on every rank (gathering
    predictions across ranks needs equal batches). In training the copy keeps its label: one more
    look at a good image. In evaluation the skipped example's own label is ``IGNORE_INDEX``
    (``with_transforms``), and the copy keeps that: metrics and losses leave it out, where a
    counted copy would be a duplicate measured on its neighbour's image.

    The pixels are stacked by ``default_collate``, which, inside a DataLoader worker, writes the
    batch straight into shared memory. A plain ``torch.stack`` writes it to private memory that
    the worker's queue then copies into shared memory to hand it to the main process: one more
    allocation, page faulting and copy of every batch (about 19 MB for 32 images at 224), which
    made our loader slower than timm's (see ``data_throughput.py`` in ``benchmarks/README.md``).
    """
    readable = [e for e in examples if e["pixel_values"] is not None]
    if not readable:
        raise DataError(f"all {len(examples)} images of a batch are unreadable (see the warnings above)")
    # each skipped example is replaced in its own row: under data parallelism the rows past the
    # dataset's end are repeats that gather_for_metrics cuts off by position, so moving an
    # IGNORE_INDEX row to the end let a repeat take its place and count
    filled, k = [], 0
    for own in examples:
        if own["pixel_values"] is None:
            fill, k = readable[k % len(readable)], k + 1
            own = fill if own.get("labels") != IGNORE_INDEX else {**fill, "labels": IGNORE_INDEX}
        filled.append(own)
    examples = filled
    batch = {"pixel_values": default_collate([e["pixel_values"] for e in examples])}
    if all("labels" in e for e in examples):  # prediction data may have none: only logits are collected
        batch["labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
    return batch
