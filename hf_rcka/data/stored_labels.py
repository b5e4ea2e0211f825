"""The class names each parquet (or arrow) file stores, against the names ``datasets`` reads it with.

``datasets`` builds a parquet dataset's features once, from its card or from the first data file,
and reads every file of every split with them. A ClassLabel column is stored as integers whose
meaning is the list of names saved in that file's own schema. A validation split written on its
own with its classes in another order (``["dog", "cat"]`` next to a training split's
``["cat", "dog"]``) is therefore read with the training split's names: every label points at
another class, nothing fails, and the run reports the accuracy of a scrambled validation set.

Each file's names are in its schema metadata (the footer; no row is read), so every split is
checked right after loading. A split whose files agree on another order of known classes is
relabelled by name (only its label column is rewritten, the images are not copied); files of one
split that disagree, or store some classes the dataset does not have, are an error. A card that
renames every class (readable names for ImageNet's synset ids) names the training split's stored
order index by index; the other splits are read by name into that order first, so one saved in its
own order is caught under a card too. Stored names that share none with the names read from
another split's files are an error.
Remote files (a Hub dataset) cost a request each, so only the first file of each split is read
there: the case above, a split saved separately, shows in every one of its files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError, LabelError
from ..models.label_forms import check_same_forms
from ..models.label_maps import first_ids
from .label_values import UNLABELLED, is_unlabelled, label_column

logger = logging.getLogger(__name__)


def parquet_split_files(builder: datasets.DatasetBuilder | None) -> dict[str, list[str]] | None:
    """The data files of each split of a parquet or arrow dataset's builder (a Hub id or a local
    folder; ``save_to_disk`` writes arrow files, each with its split's own names), else None."""
    data_files = getattr(builder.config, "data_files", None) if builder is not None else None
    if builder is None or builder.name not in ("parquet", "arrow") or not data_files:
        return None
    return {split: [str(f) for f in files] for split, files in data_files.items()}


def stored_names(path: str, column: str) -> list[str] | None:
    """The ClassLabel names ``datasets`` saved for ``column`` in a parquet or arrow file, or None if it saved none."""
    with fsspec.open(path, "rb") as f:
        metadata = _schema(f, path).metadata or {}
    try:
        feature = json.loads(metadata[b"huggingface"])["info"]["features"][column]
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(feature, dict) or feature.get("_type") != "ClassLabel" or "names" not in feature:
        return None
    return [str(n) for n in feature["names"]]


def realign_stored_labels(
    raw: datasets.DatasetDict, files: Mapping[str, Sequence[str]], column: str, card_features: bool = False,
) -> datasets.DatasetDict:
    """Each split relabelled by name where its files store another class order than it was read with.

    Raises:
        DataError: if the files of one split store different class orders, or a ClassLabel that datasets
            read as another split's plain values.
        LabelError: if a file stores a class that the names the split was read with lack.
    """
    stored = {split: _stored_orders(files.get(split), column) for split in raw}
    renamed = None
    for split, dataset in raw.items():
        feature = dataset.features.get(column)
        if feature is not None and not isinstance(feature, datasets.ClassLabel) and stored[split] and not card_features:
            _check_names_kept(split, dataset, feature, stored, column)
        if not isinstance(feature, datasets.ClassLabel) or not stored[split]:
            continue
        if renamed is None:  # every split is read with the same features
            renamed = _card_renaming(stored, feature.names, column)
        orders = {tuple(renamed.get(n, n) for n in names): path for names, path in stored[split].items()}
        if list(orders) == [tuple(feature.names)]:
            continue
        raw[split] = _relabelled(dataset, split, column, feature, orders)
    return raw


def _stored_orders(paths: Sequence[str] | None, column: str) -> dict[tuple[str, ...], str]:
    """Each class order the files of a split store for ``column``, with the first file that stores it."""
    paths = list(paths or [])
    if paths and "://" in paths[0]:
        paths = paths[:1]
    orders = {}
    for path in paths:
        try:
            names = stored_names(path, column)
        except OSError as err:  # a remote footer that cannot be read now: the data itself has loaded
            logger.warning("data: cannot read the class names stored in %s (%s); not checked", path, err)
            continue
        if names is not None:
            orders.setdefault(tuple(names), path)
    return orders


def _check_names_kept(split: str, dataset: datasets.Dataset, feature: Any,
                      stored: Mapping[str, Mapping[tuple[str, ...], str]], column: str) -> None:
    """A split whose files store a ClassLabel was not read as another split's plain labels.

    datasets reads every split with the first file's features: a validation split saved as a ClassLabel
    next to a training split of plain integers or strings was cast to those, its names dropped and its
    indices read as values. Only when some split's files store no ClassLabel, so the plain type is a
    file's (a card may declare plain values over files that all store one; the caller leaves out a
    card that declares the features), and when the split has labels (an unlabelled test split, all
    -1, loses no class name).

    Raises:
        DataError: naming the file, its names and the type it was read as.
    """
    if all(stored.values()) or is_unlabelled(dataset, column):
        return
    (names, path), *_ = stored[split].items()
    raise DataError(f"{path} stores {column!r} as a ClassLabel {_shown(names)}, but datasets read the {split!r} split "
                    f"as {feature}, another split's type: its class names are dropped and its labels read as plain "
                    "values. Save every split of the dataset with the same ClassLabel")


def _card_renaming(stored: Mapping[str, Mapping[tuple[str, ...], str]], names: Sequence[str],
                   column: str) -> dict[str, str]:
    """Each stored name's name on the dataset's card, when the card renames every class; else empty.

    The card names the training split's stored order index by index, as datasets reads it. Only when
    no split's files store any of ``names``: otherwise the names were read from a file, and a split
    whose files share none of them (the same classes in another language) would be paired by position.
    """
    def key(name: str) -> str:  # names that differ in case and spaces alone are matched by name (_respelled)
        return name.strip().casefold()

    known = {key(n) for n in names}
    if any(known & {key(n) for n in order} for orders in stored.values() for order in orders):
        return {}
    reference = list(stored.get("train") or next((o for o in stored.values() if o), {}))
    if len(reference) != 1 or len(reference[0]) != len(names):
        return {}
    logger.info("data: the dataset's card names the classes of %r %s, which its files store as %s (index by index)",
                column, _shown(names), _shown(reference[0]))
    return dict(zip(reference[0], names))


def _placeholders(names: Sequence[str]) -> bool:
    """datasets' names of a ``ClassLabel(num_classes=n)``: '0'...'n-1'."""
    return list(names) == [str(i) for i in range(len(names))]


def _schema(handle, path: str) -> pa.Schema:
    """A parquet file's schema from its footer, an arrow file's from its header (``datasets`` writes
    arrow streams; the random-access file format is read too)."""
    if not path.endswith(".arrow"):
        return pq.read_schema(handle)
    try:
        return pa.ipc.open_stream(handle).schema
    except pa.ArrowInvalid:
        handle.seek(0)
        return pa.ipc.open_file(handle).schema


def _respelled(names: Sequence[str], known: Sequence[str]) -> list[str] | None:
    """``names`` in ``known``'s spelling when they differ from it only in case and surrounding
    spaces (``"Cat"``, ``"cat "`` for ``"cat"``), one for one; else None."""
    def key(name: str) -> str:
        return name.strip().casefold()

    spelled = {key(n): n for n in known}
    if len(spelled) != len(known) or len({key(n) for n in names}) != len(names):
        return None
    return [spelled[key(n)] for n in names] if all(key(n) in spelled for n in names) else None


def _relabelled(dataset: datasets.Dataset, split: str, column: str, feature: datasets.ClassLabel,
                orders: dict[tuple[str, ...], str]) -> datasets.Dataset:
    if len(orders) > 1:
        listed = "; ".join(f"{path}: {_shown(names)}" for names, path in orders.items())
        raise DataError(
            f"the {split!r} split's parquet files store different class orders for {column!r} ({listed}); "
            "datasets reads them all with one, which would mislabel some of them. Save the split with one "
            "ClassLabel (e.g. cast_column with the training split's ClassLabel before to_parquet)"
        )
    (names, path), = orders.items()
    check_same_forms(names, feature.names, path, "the dataset's class names",
                     "give every split the same spelling of each class name, e.g. NFC")
    known = set(feature.names)
    missing = [n for n in names if n not in known]
    respelled = _respelled(names, feature.names) if missing else None
    if respelled is not None:
        # the same classes spelled otherwise ("Dog", "cat "): read by index with the dataset's names,
        # in another order each label would be another class, which no card intends
        logger.warning("data: the %r split's files name the classes of %r %s, the dataset %s: the same names but for "
                       "case and spaces; its labels are matched by name", split, column, _shown(names),
                       _shown(feature.names))
        if list(respelled) == list(feature.names):
            return dataset
        names, missing = tuple(respelled), []
    labels = np.asarray(label_column(dataset, column).fill_null(UNLABELLED).to_numpy(), dtype=np.int64)
    used = {names[i] for i in np.unique(labels) if 0 <= i < len(names)}
    if missing and not used & set(missing):  # extra names no label of the split uses: nothing to misread
        missing = []
    elif missing and len(missing) == len(names) == len(feature.names) and (
            _placeholders(names) or _placeholders(feature.names)):
        # ClassLabel(num_classes=n) names its classes '0'...'n-1': nothing to pair by name, as a model's LABEL_i
        logger.warning("data: the %r split's files name the classes of %r %s, datasets' placeholder names: its labels "
                       "are read by index as %s; make sure both were saved in the same class order", split, column,
                       _shown(names), _shown(feature.names))
        return dataset
    elif missing and len(missing) == len(names):  # no name in common (a card's renaming was applied before)
        raise LabelError(
            f"{path} stores classes {_shown(names)} for {column!r}, none of the dataset's class names "
            f"{_shown(feature.names)}; datasets reads the file's labels by index with those names, which would pair "
            "the classes by position. Save every split of the dataset with the same ClassLabel"
        )
    if missing:
        raise LabelError(
            f"{path} stores classes {_shown(missing)} for {column!r}, which the dataset's class names "
            f"{_shown(feature.names)} lack, next to names they share; datasets reads the file's labels by index "
            "with the dataset's names, so some would become other classes. Save every file of the dataset with "
            "the same ClassLabel"
        )
    if labels.size and labels.max() >= len(names):
        raise DataError(f"{path} stores {len(names)} classes for {column!r} but has the label {labels.max()}")
    # index -1 (no label) stays -1; a stored name the dataset lacks is used by no label of the split
    position = first_ids(feature.names)
    table = np.array([position.get(n, UNLABELLED) for n in names] + [UNLABELLED])
    if np.array_equal(table[:-1], np.arange(len(names))) and len(names) <= len(feature.names):
        return dataset  # the same classes at the same indices: nothing to rewrite
    logger.warning("data: the %r split's files store the classes of %r in another order (%s) than datasets read "
                   "them with (%s); its labels were realigned by name", split, column, _shown(names), _shown(feature.names))
    return dataset.remove_columns(column).add_column(column, table[labels], feature=feature)


def _shown(names: Sequence[str], shown: int = 5) -> str:
    """The first few names in their order, and how many there are (ImageNet has a thousand)."""
    more = f", ... ({len(names)} classes)" if len(names) > shown else ""
    return "[" + ", ".join(repr(n) for n in names[:shown]) + more + "]"
