"""Relative image paths in a dataset, read against the dataset's folder rather than the working directory.

A CSV of ``imgs/0.png`` (or image values that store only such a path) names files in the
dataset's own folder. Read as they are, they were opened from the working directory: from
elsewhere a run failed at its first batch, or trained on other files that happened to share the
names. The paths are found from the Arrow column alone (no image is decoded), made absolute
against a local ``dataset_name`` folder, and any other relative path that names no file is an
error when the data loads.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from ..arguments import DataArguments
from ..errors import DataError
from .local_cache import local_cache_path


def image_paths_from_the_data_folder(raw: datasets.DatasetDict, args: DataArguments,
                                     used: tuple[str | None, ...]) -> datasets.DatasetDict:
    """Relative image paths (a CSV of ``imgs/0.png``, or image values that store only such a path)
    name files in the dataset's folder.

    Read as they are, they were opened from the working directory: from elsewhere a run failed at
    its first batch, or trained on other files that happened to share the names. In the splits the
    run ``used`` (a split it never reads may ship no files), they are made absolute against a local
    ``dataset_name`` folder; relative paths of any other dataset that do not name a file from here
    are an error now, not at the first batch.
    """
    column = args.image_column_name
    folder = args.dataset_name if args.dataset_name and os.path.isdir(args.dataset_name) else None
    for name in [n for n in used if n in raw]:
        split = raw[name]
        feature = split.features[column]
        decoded = isinstance(feature, datasets.Image) and feature.decode
        stored = split.cast_column(column, datasets.Image(decode=False)) if decoded else split  # metadata only
        paths = _paths(stored, column)  # read once from the arrow table, for the three checks
        _check_schemes(paths, column, name)  # s3:// without s3fs: a traceback at the first batch
        _check_absolute_paths(paths, column, name)
        first = _first_relative_path(paths)
        if first is None or not _from_the_folder(first, folder, column, name):
            continue
        fixed = stored.map(lambda batch: {column: [_in_folder(v, folder) for v in batch[column]]},
                           batched=True, desc=f"image paths of {name}", **_paths_cache(stored, folder, column))
        raw[name] = fixed.cast_column(column, feature) if decoded else fixed
    return raw


def _paths_cache(split: datasets.Dataset, folder: str, column: str) -> dict[str, str]:
    """Where the map of ``split``'s paths is cached: a file in datasets' cache, named by the split,
    the folder the paths are read against and the split's files (their paths, sizes and times).

    datasets writes a map's cache beside the split's own files: for a ``save_to_disk`` folder those
    are the user's files, and a copy of the table was written into the dataset's folder (a
    read-only one failed the run). ``keep_in_memory`` would hold the whole table in memory.
    The files' sizes and times name it too: a folder saved anew may keep the split's fingerprint.
    An in-memory split (no files) stays in memory.
    """
    if not split.cache_files:
        return {}
    path = local_cache_path(f"{split._fingerprint}\0{os.path.abspath(folder)}\0{column}",
                            (file["filename"] for file in split.cache_files), kind="image-paths")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return {"cache_file_name": f"{path}.arrow"}


def _check_schemes(paths: pa.ChunkedArray | pa.Array | None, column: str, name: str) -> None:
    """Paths that are URLs (``s3://bucket/a.jpg``) are of a kind this installation reads: one whose
    file system package is missing (s3fs, gcsfs, adlfs) failed at the first batch, after the models
    had loaded, with a traceback (``ImportError: Install s3fs to access S3``). Read from the arrow
    column alone; ``file://`` URIs are local files (``images.decode_image``).

    Raises:
        DataError: naming the split, the kind of URL, an example and what to install.
    """
    import fsspec

    if paths is None:
        return
    found = pc.extract_regex(pc.drop_null(paths), r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")
    schemes = pc.unique(pc.struct_field(pc.drop_null(found), "scheme")).to_pylist()
    for scheme in schemes:
        try:
            fsspec.get_filesystem_class(scheme.lower())
        except (ImportError, ValueError) as err:
            example = pc.filter(paths, pc.starts_with(pc.fill_null(paths, ""), f"{scheme}://"))[0].as_py()
            raise DataError(f"image_column_name={column!r} of the {name!r} split holds {scheme}:// URLs (e.g. "
                            f"{example!r}) that cannot be read here ({err}): install what it names, or give "
                            "local paths") from None


_SAMPLED = 8


def _check_absolute_paths(paths: pa.ChunkedArray | pa.Array | None, column: str, name: str) -> None:
    """Absolute image paths name files that are here: a CSV written on another machine (or before
    the images moved) names none, and every image was skipped at the first batch, after both models
    had loaded, ending in 'all 4 images of a batch are unreadable'. Up to ``_SAMPLED`` paths, spread
    over the split, are looked up; one found is enough (a few missing files are skipped, counted,
    and bounded by ``max_bad_images`` as the run goes).

    Raises:
        DataError: none of the sampled paths names a file; naming the split and an example.
    """
    if paths is None:
        return
    absolute = pc.filter(paths, pc.starts_with(pc.fill_null(paths, ""), "/"))
    if len(absolute) == 0:
        return
    step = max(1, len(absolute) // _SAMPLED)
    sampled = [absolute[i].as_py() for i in range(0, len(absolute), step)][:_SAMPLED]
    if not any(os.path.exists(path) for path in sampled):
        raise DataError(f"image_column_name={column!r} of the {name!r} split names image files that are not here: "
                        f"none of {len(sampled)} of its {len(absolute)} absolute paths, spread over it, exists (e.g. "
                        f"{sampled[0]!r}). Were the images moved, or the data written on another machine? Give paths "
                        "to the images where they are (or paths relative to the dataset's folder)")


def _paths(split: datasets.Dataset, column: str) -> pa.ChunkedArray | pa.Array | None:
    """The column's paths as text (a string column, or image values stored as ``{bytes, path}``
    whose bytes are missing; others null), read from the arrow table, or None when it holds none.

    A path field that is not text holds no paths: pandas writes a ``path`` that is always None as
    Arrow's null type, on which the string kernels have no implementation.
    """
    values = split.with_format("arrow")[column] if len(split) else None
    if values is None:
        return None
    paths = values
    if pa.types.is_struct(values.type):
        fields = {values.type.field(i).name for i in range(values.type.num_fields)}
        if "path" not in fields:
            return None
        paths = pc.struct_field(values, "path")
        if "bytes" in fields:
            paths = pc.if_else(pc.is_null(pc.struct_field(values, "bytes")), paths, pa.scalar(None, paths.type))
    if not (pa.types.is_string(paths.type) or pa.types.is_large_string(paths.type)):
        return None
    return paths


def _first_relative_path(paths: pa.ChunkedArray | pa.Array | None) -> str | None:
    """The first relative path among the column's paths (:func:`_paths`), or None."""
    if paths is None:
        return None
    paths = pc.drop_null(paths)
    # _relative's rule, on the whole arrow column at once
    relative = pc.invert(pc.or_(pc.or_(pc.starts_with(paths, "/"), pc.match_substring(paths, "://")),
                                pc.equal(paths, "")))
    found = pc.filter(paths, relative)
    return found[0].as_py() if len(found) else None


def _relative(path: Any) -> bool:
    return isinstance(path, str) and bool(path) and not os.path.isabs(path) and "://" not in path


def _from_the_folder(first: str, folder: str | None, column: str, split: str) -> bool:
    """Whether a split whose first relative image path is ``first`` has its paths in ``folder``.

    Raises:
        DataError: the relative path names no file in the folder or the working directory.
    """
    if folder is not None and os.path.exists(os.path.join(folder, first)):
        return True
    if not os.path.exists(first):
        where = f"{folder!r} or the working directory" if folder else "the working directory"
        raise DataError(f"image_column_name={column!r} of the {split!r} split holds relative paths (e.g. {first!r}) "
                        f"that name no file in {where}: give absolute paths, or paths relative to the dataset's folder")
    return False


def _in_folder(value: Any, folder: str) -> Any:
    """A relative path (or an image value that stores only one) made absolute against ``folder``."""
    if isinstance(value, dict):
        return {**value, "path": os.path.join(folder, value["path"])} if value.get("bytes") is None and _relative(
            value.get("path")) else value
    return os.path.join(folder, value) if _relative(value) else value


__all__ = ["image_paths_from_the_data_folder"]
