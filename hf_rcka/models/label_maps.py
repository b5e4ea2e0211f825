"""The label arguments of a classifier (``num_labels``, ``id2label``, ``label2id``) made consistent.

transformers accepts any of the three and quietly fills in the others, so a recipe that gives an
``id2label`` with gaps, or a ``label2id`` that is not its inverse, would build a head whose ids
and names disagree. Here they are resolved once, checked, and then written to a config whole.
(Matching those names against a dataset or a teacher is ``labels.py``'s job.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from transformers import PreTrainedConfig


@dataclass(frozen=True)
class LabelMaps:
    """A consistent pair of label maps (ids 0..n-1)."""

    id2label: dict[int, str]
    label2id: dict[str, int]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @classmethod
    def default(cls, num_labels: int) -> LabelMaps:
        """transformers' placeholder names LABEL_0..LABEL_{n-1}."""
        names = {i: f"LABEL_{i}" for i in range(num_labels)}
        return cls(names, {v: k for k, v in names.items()})

    @classmethod
    def of(cls, names: Sequence[str]) -> LabelMaps:
        """The maps of class names given in id order."""
        return cls(dict(enumerate(names)), {name: i for i, name in enumerate(names)})

    @classmethod
    def from_config(cls, config: PreTrainedConfig) -> LabelMaps:
        id2label = {int(k): str(v) for k, v in config.id2label.items()}
        return cls(id2label, {v: k for k, v in id2label.items()})


def resolve_labels(
    num_labels: int | None = None,
    id2label: Mapping[int | str, str] | None = None,
    label2id: Mapping[str, int | str] | None = None,
) -> LabelMaps | None:
    """Turn the three optional label arguments into one consistent ``LabelMaps``.

    Keys may be strings (JSON and YAML keep them so). ``None`` for all three means "keep the
    checkpoint's labels".

    Raises:
        ValueError: the arguments disagree, ids are not 0..n-1, or num_labels < 1.
    """
    if id2label is None and label2id is not None:
        id2label = {int(v): str(k) for k, v in label2id.items()}
    if id2label is None:
        if num_labels is None:
            return None
        if int(num_labels) < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        return LabelMaps.default(int(num_labels))
    maps = _maps_from_id2label(id2label)
    if num_labels is not None and int(num_labels) != maps.num_labels:
        raise ValueError(f"num_labels={num_labels} but id2label has {maps.num_labels} entries")
    if label2id is not None and {str(k): int(v) for k, v in label2id.items()} != maps.label2id:
        raise ValueError("label2id is not the inverse of id2label; pass only one of them")
    return maps


def _maps_from_id2label(id2label: Mapping[int | str, str]) -> LabelMaps:
    maps = {int(k): str(v) for k, v in id2label.items()}
    if sorted(maps) != list(range(len(maps))) or not maps:
        raise ValueError(f"id2label keys must be 0..n-1 with n >= 1, got {sorted(maps)}")
    if len(set(maps.values())) != len(maps):
        raise ValueError("id2label has duplicate label names; label2id would be ambiguous")
    return LabelMaps(maps, {v: k for k, v in maps.items()})


def set_labels(config: PreTrainedConfig, labels: LabelMaps | None) -> None:
    """Write ``labels`` into a config (both maps, so transformers derives nothing), and into a timm
    checkpoint's ``label_names``, which its ``to_dict`` saves over ``id2label``: every writer of a
    model's class names goes through here, or its export reloads as ``LABEL_0``...

    ``None`` keeps the config's own labels. A config that keeps ``num_labels`` as a field of its
    own (PVT's) sizes its head by it, not by ``id2label``: it gets the count too, or a
    ``config:pvt`` student kept its 1000-class head.
    """
    if labels is not None:
        if config.num_labels != labels.num_labels:
            config.num_labels = labels.num_labels
        config.id2label = dict(labels.id2label)
        config.label2id = dict(labels.label2id)
        if hasattr(config, "label_names"):  # a loaded timm checkpoint's names: to_dict saves them over id2label
            config.label_names = [labels.id2label[i] for i in range(labels.num_labels)]


def first_ids(names: Sequence[str]) -> dict[str, int]:
    """Each name's first index in ``names`` (what ``list.index`` finds), for all of them at once:
    ``index`` per name was quadratic, 10 s at ImageNet-21k's 21,841 classes."""
    return {name: i for i, name in reversed(list(enumerate(names)))}
