"""What a recipe's model name refers to: a Hub id or folder, a timm architecture, or a config.

A recipe names a model in one of three forms:

* a Hub id or a local folder written by ``save_pretrained``;
* ``timm/<architecture>``, a timm model (tag included, e.g. ``timm/resnet18.a1_in1k``);
* ``config:<model_type>`` (hf_rcka's own form), a transformers architecture built from its
  default config with random weights. It needs no Hub, so tests and tiny experiments run offline.

Parsing is kept apart from loading so that recipe checks (preflight, the smoke test, the model
card) can classify a name without importing or building anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from huggingface_hub.utils import HFValidationError, validate_repo_id

CONFIG_PREFIX = "config:"
TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class ModelSource:
    """What a model name refers to.

    Attributes:
        kind: ``"config"`` (a transformers model type), ``"timm"`` (a timm architecture) or
            ``"pretrained"`` (a Hub id or a local folder).
        name: the model type, the timm architecture (tag included, e.g. ``resnet18.a1_in1k``), or
            the Hub id / folder as given.
    """

    kind: Literal["config", "timm", "pretrained"]
    name: str


def parse_model_source(name_or_path: str) -> ModelSource:
    """Classify a recipe's model name; an existing local folder always wins over the prefixes.

    Raises:
        FileNotFoundError: the name is neither an existing folder nor shaped like a Hub id
            (``owner/name``), so it can only be a mistyped path.
        NotADirectoryError: the name is a file (e.g. a ``.safetensors``), not a model folder.
        ValueError: an empty name, or a prefix with nothing after it.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"a model name must be a non-empty string, got {name_or_path!r}")
    if os.path.isdir(name_or_path):
        return ModelSource("pretrained", name_or_path)
    if name_or_path.startswith(CONFIG_PREFIX):
        return ModelSource("config", _suffix(name_or_path, CONFIG_PREFIX, "config:vit"))
    if name_or_path.startswith(TIMM_PREFIX):
        return ModelSource("timm", _suffix(name_or_path, TIMM_PREFIX, "timm/resnet18"))
    if os.path.exists(name_or_path):
        raise NotADirectoryError(
            f"{name_or_path!r} is a file; pass the folder that save_pretrained wrote (with config.json)"
        )
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise FileNotFoundError(
            f"model {name_or_path!r}: no such local folder, and it is not a Hub id (owner/name). "
            f"Check the path, or use 'timm/<architecture>' or 'config:<model_type>'{_spelling_hint(name_or_path)}."
        ) from None
    return ModelSource("pretrained", name_or_path)


# How to load a Hub model at another revision than main, which hf_rcka loads
PIN_REVISION = ("download that revision (hf download OWNER/NAME --revision REV --local-dir DIR) and give the "
                "folder DIR")


def _spelling_hint(name: str) -> str:
    """What a Hub id spelt another library's way needs: timm's ``hf-hub:`` prefix, a revision, a
    subfolder (not for what reads as a path: a mistyped folder is not a Hub repository)."""
    if name.startswith("hf-hub:"):
        return f" (write {name[len('hf-hub:'):]!r}, without timm's hf-hub: prefix)"
    if name.startswith(("/", ".", "~")) or os.path.exists(name.split("/")[0]):
        return ""
    if "@" in name:
        return f". If it names a Hub revision after '@': a revision cannot follow the id; {PIN_REVISION}"
    if name.count("/") > 1:
        return (". If it names a subfolder of a Hub repository: that cannot be loaded; download the repository and "
                "give its subfolder")
    return ""


def _suffix(name: str, prefix: str, example: str) -> str:
    rest = name[len(prefix):].strip()
    if not rest:
        raise ValueError(f"{name!r} names no model after {prefix!r}; e.g. {example!r}")
    return rest


# a folder of the Hugging Face cache: <kind>--<owner>--<name>/snapshots/<commit> (a repo id holds no "--")
_SNAPSHOT = re.compile(r"(?P<kind>models|datasets)--(?P<repo>[^/\\]+)[/\\]snapshots[/\\]"
                       r"(?P<commit>[0-9a-f]{40})[/\\]?$")


def cache_snapshot(path: str, kind: str = "models") -> tuple[str, str] | None:
    """The Hub repository and commit of a folder of the Hugging Face cache
    (``.../models--org--name/snapshots/<commit>``, or ``datasets--...`` with ``kind="datasets"``),
    which pins a revision offline: that repository at that commit, not a local folder named by its
    hash. None for any other path."""
    match = _SNAPSHOT.search(os.path.abspath(path)) if os.path.isdir(path) else None
    return (match["repo"].replace("--", "/"), match["commit"]) if match and match["kind"] == kind else None


def cached_commit(repo_id: str) -> str | None:
    """The commit of ``repo_id`` that the local Hugging Face cache holds (what ``from_pretrained``
    read, or would read offline); None when nothing of it is cached. Never downloads."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a repo id (HFValidationError)
        return None
    snapshot = cache_snapshot(os.path.dirname(cached)) if isinstance(cached, str) else None
    return snapshot[1] if snapshot else None
