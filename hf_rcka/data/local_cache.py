"""Where hf_rcka keeps datasets' cache files for data in a local folder: under datasets' own cache,
named by the data files themselves (their paths, sizes and modification times), so a folder
rewritten, or another of the same name, is never read from an earlier one's cache, and nothing is
written beside the user's files (a ``save_to_disk`` folder's, which datasets writes into).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import datasets

LOCAL_FOLDERS = "hf_rcka_local_folders"


def local_cache_path(key: str, files: Iterable[str], kind: str = "") -> str:
    """The cache path for what ``key`` names of ``files`` (a split's map, a folder's prepared data),
    in ``HF_DATASETS_CACHE/hf_rcka_local_folders/<kind>``.

    Raises:
        OSError: a file that is not there (not a local file after all).
    """
    digest = hashlib.sha256(f"{key}\n".encode())
    for path in files:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return os.path.join(datasets.config.HF_DATASETS_CACHE, LOCAL_FOLDERS, kind, digest.hexdigest()[:16])
