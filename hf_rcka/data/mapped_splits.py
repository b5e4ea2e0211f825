"""A large split built in memory (an image folder's listing), memory-mapped from an Arrow file in
datasets' cache instead, so that DataLoader workers receive its path and not a copy of its rows.

A ``datasets.Dataset`` whose table is in memory is pickled by value: every loader worker started
with ``spawn`` or ``forkserver`` (macOS's default, and Python 3.14's on Linux) unpickled its own copy
of every row (about 90 MB at ImageNet's 1.33M images, for each worker of each process), and a
``max_train_samples`` subset carried the whole table too. A memory-mapped table pickles as its path,
and its pages are the file system cache's, shared by every process that reads them; datasets' own
``imagefolder`` kept its splits so.

The file is named by a digest of its bytes (the rows, in order, and the features with their class
names), so every run and process that lists the same rows reads one file, written by the first. It
is written under a temporary name and renamed into place: processes of a data-parallel launch that
write it at once each rename a whole file, and none reads a part of one. A cache that cannot be
written (read-only, under a file, a full disk) keeps the split in memory, as small splits are kept.
A changed folder is another file; earlier ones are left for the user to delete (a run that reads
one may be training still, and its next epoch's loader workers open it by its path).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable, MemoryMappedTable

from .local_cache import LOCAL_FOLDERS

logger = logging.getLogger(__name__)

# Smaller tables stay in memory: a copy of one in each of 80 workers (8 processes x 10) is at most
# 80 x 4 MiB, next to the ~340 MiB each spawned worker holds for its imports alone, and the tests'
# folders write nothing. ImageNet's validation folder (50,000 images) is about 3.5 MiB, its training
# folder about 87 MiB (benchmarks/folder_listing.py measures both ways).
MAPPED_FROM_BYTES = 4 * 2**20
KIND = "image-folders"


def mapped_split(table: pa.Table, info: datasets.DatasetInfo, split: str) -> datasets.Dataset:
    """``split`` of ``table``'s rows and ``info``'s features: memory-mapped from its Arrow file in
    datasets' cache (written on first use) when the table holds ``MAPPED_FROM_BYTES`` or more, in
    memory when it is smaller or the cache cannot be written."""
    named = datasets.NamedSplit(split)
    if table.nbytes < MAPPED_FROM_BYTES:
        return datasets.Dataset(InMemoryTable(table), info=info, split=named)
    content = _arrow_stream(table)
    digest = hashlib.sha256(content).hexdigest()[:32]
    path = os.path.join(datasets.config.HF_DATASETS_CACHE, LOCAL_FOLDERS, KIND, f"{digest}.arrow")
    try:
        if _write_once(path, content):
            logger.info("data: the %s split's %d rows are written to %s (%.1f MiB) and memory-mapped from it; a later "
                        "run that lists the same rows reads it (files of other listings there are not removed: "
                        "delete them when no run reads them)", split, table.num_rows, path, content.size / 2**20)
        mapped = MemoryMappedTable.from_file(path)
    except (OSError, pa.ArrowInvalid) as err:  # e.g. another user's file in a shared cache, unreadable by this one
        logger.info("data: datasets' cache %r cannot be written or read (%s: %s): the %s split's %d rows are held in "
                    "memory (a loader worker started by spawn gets a copy)", str(datasets.config.HF_DATASETS_CACHE),
                    type(err).__name__, getattr(err, "strerror", None) or err, split, table.num_rows)
        return datasets.Dataset(InMemoryTable(table), info=info, split=named)
    # the digest is the fingerprint: every process gets the same one (datasets' own would hash the file's mtime)
    return datasets.Dataset(mapped, info=info, split=named, fingerprint=digest)


def _arrow_stream(table: pa.Table) -> pa.Buffer:
    """``table`` in Arrow's IPC stream format, the one datasets memory-maps (``Dataset.from_file``)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _write_once(path: str, content: pa.Buffer) -> bool:
    """``content`` at ``path``, unless a whole copy is there already: written to a temporary file in
    the same folder and renamed over ``path`` (atomic: a concurrent writer's rename replaces one
    whole file with another, and a reader that mapped the first keeps it). Returns whether this
    call wrote it.

    Raises:
        OSError: the folder cannot be made or written.
    """
    if _whole(path, content.size):
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"  # its own for each writer
    try:
        with open(temporary, "xb") as file:  # read and write as the umask allows, like datasets' cache files
            file.write(content)
        os.replace(temporary, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if not (isinstance(err, OSError) and _whole(path, content.size)):  # another's rename won (Windows
            raise  # refuses to replace a file another process has mapped)
        return False
    return True


def _whole(path: str, size: int) -> bool:
    try:
        return os.path.getsize(path) == size
    except OSError:
        return False


__all__ = ["MAPPED_FROM_BYTES", "mapped_split"]
