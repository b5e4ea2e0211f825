"""The offline demo dataset, ``dataset_name: builtin:digits``: scikit-learn's handwritten digits.

It needs no download, so the digits recipes, the smoke test and the quality benchmark run on any
machine; it is loaded like any other dataset and carved into train and validation the same way.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import datasets
import numpy as np

from ..errors import DataError

DIGITS = "builtin:digits"  # the dataset_name that loads it
_NO_SKLEARN = ("dataset_name builtin:digits needs scikit-learn, which is not installed: "
               "pip install 'hf_rcka[demo]' (or scikit-learn)")


def digits_dataset() -> datasets.Dataset:
    """scikit-learn's real handwritten digits (1,797 8x8 greyscale images, 10 classes), offline."""
    images, target = _digits_arrays()
    images = (images * (255.0 / 16.0)).round().astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    return datasets.Dataset.from_dict(
        {"image": list(images), "label": target.tolist()}, features=features
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 images (values 0-16) and their classes, as ``sklearn.datasets.load_digits`` gives them.

    Read from the file ``load_digits`` reads (``sklearn/datasets/data/digits.csv.gz``: 64 pixel values
    and the class, a row per image) without importing scikit-learn: its import took 3.5-4 s of a
    digits run's 20-28 s before its first step (a 2-core machine), in every demo step and CKA report,
    where reading the file takes 0.05 s. Through ``load_digits`` where the file is not there (another
    layout of the package).
    """
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):  # a broken or stubbed-out install: load_digits says what is wrong
        spec = None
    for location in (spec.submodule_search_locations or ()) if spec is not None else ():
        path = os.path.join(location, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, mode="rt", encoding="utf-8") as handle:
                data = np.loadtxt(handle, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # one error line, not a traceback: the fix is an install
        raise DataError(_NO_SKLEARN) from None
    digits = load_digits()
    return digits.images, digits.target


__all__ = ["DIGITS", "digits_dataset"]
