"""The offline demo dataset, ``dataset_name: builtin:digits``: scikit-learn's handwritten digits.

It needs no download, so the digits recipes, the smoke test and the quality benchmark run on any
machine; it is loaded like any other dataset and carved into train and validation the same way.
"""

from __future__ import annotations

import datasets
import numpy as np

from ..errors import DataError

DIGITS = "builtin:digits"  # the dataset_name that loads it


def digits_dataset() -> datasets.Dataset:
    """scikit-learn's real handwritten digits (1,797 8x8 greyscale images, 10 classes), offline."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # one error line, not a traceback: the fix is an install
        raise DataError("dataset_name builtin:digits needs scikit-learn, which is not installed: "
                        "pip install 'hf_rcka[demo]' (or scikit-learn)") from None
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    return datasets.Dataset.from_dict(
        {"image": list(images), "label": digits.target.tolist()}, features=features
    )


__all__ = ["DIGITS", "digits_dataset"]
