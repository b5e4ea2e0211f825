"""A model's class names spelt the way ImageNet data spells them, where that is certain.

An ImageNet-1k classifier names its classes by description ("tench, Tinca tinca"): transformers
names a timm checkpoint's classes so (from timm's ``ImageNetInfo``) when its config holds no
names, and ImageNet classifiers on the Hub carry the same list. Two facts kept every ImageNet data
set from matching that list by name:

* ImageNet on disk is a folder per WordNet id (``n01440764``): the ids of the same 1000 classes,
  in the same (sorted) order;
* the list names two classes ``crane`` (the bird, n02012849, and the machine, n03126707), and no
  data set can (``datasets.ClassLabel`` refuses a repeated name, a folder tree holds one folder of
  a name), so a data set spells the second one otherwise.

:func:`respelt` gives the model's names in the data's spelling for these two cases only; names
are still compared exactly after it (``labels``).
"""

from __future__ import annotations

import collections
import functools
import logging
from typing import Sequence

logger = logging.getLogger(__name__)


def respelt(data_names: Sequence[str], model_names: Sequence[str]) -> list[str] | None:
    """``model_names`` re-spelt as the data spells them, or None when neither case applies (or the
    names already match).

    * WordNet ids: the model's names are ImageNet-1k's descriptions and the data's are ImageNet-1k
      ids: the model's ids (a subset of the classes too; how a subset pairs with a head of 1000 is
      for the caller to decide).
    * A name the model repeats: the data lists the classes in the model's order, each under the
      model's name or, where the model repeats one, a name that begins with it (``crane``,
      ``crane (machine)``): the data's names, said in a warning. Data in another order is left to
      the caller (refused by name).
    """
    if sorted(data_names) == sorted(model_names):
        return None
    ids = _imagenet_ids(tuple(model_names))
    if ids is not None and set(data_names) <= set(ids):
        logger.info("labels: the model's ImageNet-1k class descriptions are matched with the data's WordNet ids")
        return ids
    return _repeated_paired(list(data_names), list(model_names))


@functools.lru_cache(maxsize=4)
def _imagenet_ids(model_names: tuple[str, ...]) -> list[str] | None:
    """ImageNet-1k's WordNet ids, when ``model_names`` are its descriptions in its order."""
    if len(model_names) != 1000:
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return list(info.label_names()) if list(model_names) == list(info.label_descriptions()) else None


def _repeated_paired(data_names: list[str], model_names: list[str]) -> list[str] | None:
    """The data's names where the model repeats one, when the data lists the classes in the model's
    order (a sorted image folder does not: ``crane`` and ``crane (bird)`` sort machine first, and
    pairing them in that order swapped the two classes) and each such name begins with the one the
    model repeats."""
    counts = collections.Counter(model_names)
    repeated = {name for name, count in counts.items() if count > 1}
    if not repeated or len(data_names) != len(model_names) or len(set(data_names)) != len(data_names):
        return None
    for ours, theirs in zip(data_names, model_names):
        if ours != theirs and not (theirs in repeated and stands_for(ours, theirs)):
            return None
    logger.warning("labels: the model names classes %s more than once; the data, listing the classes in the model's "
                   "order, names them %s", sorted(repeated),
                   ", ".join(f"{i}: {ours!r}" for i, (ours, theirs) in enumerate(zip(data_names, model_names))
                             if theirs in repeated))
    return list(data_names)


def stands_for(name: str, repeated: str) -> bool:
    """Whether a data set's class ``name`` may stand for a name the model repeats: it begins with it
    (``crane (machine)`` for ``crane``)."""
    return name.casefold().startswith(repeated.casefold())


__all__ = ["respelt", "stands_for"]
