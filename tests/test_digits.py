"""builtin:digits: scikit-learn's digits, read from its data file without importing scikit-learn."""

import copy
import importlib.util
import subprocess
import sys

import numpy as np

from hf_rcka.data import digits as digits_module
from hf_rcka.data.digits import digits_dataset


def _as_loaded(images, target):
    return (np.asarray(images) * (255.0 / 16.0)).round().astype(np.uint8), np.asarray(target)


def test_the_digits_are_load_digits_images_and_classes():
    """The file read gives what sklearn.datasets.load_digits gives, image for image."""
    from sklearn.datasets import load_digits

    reference = load_digits()
    images, target = digits_module._digits_arrays()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(target, reference.target)
    dataset = digits_dataset()
    expected_images, expected_labels = _as_loaded(reference.images, reference.target)
    assert len(dataset) == 1797 and dataset["label"] == expected_labels.tolist()
    for row in (0, 1, 900, 1796):
        np.testing.assert_array_equal(np.asarray(dataset[row]["image"]), expected_images[row])


def test_the_digits_load_without_importing_scikit_learn():
    code = ("import sys; from hf_rcka.data.digits import digits_dataset; d = digits_dataset(); "
            "print(len(d), 'sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1797", "False"]


def test_without_the_data_file_load_digits_reads_them(monkeypatch, tmp_path):
    """Another layout of the package (no digits.csv.gz where it was): scikit-learn's own loader."""
    from sklearn.datasets import load_digits

    real_find_spec = importlib.util.find_spec

    def elsewhere(name, *args):
        spec = real_find_spec(name, *args)
        if name == "sklearn":  # a copy: the imported package's own spec is left as it is
            spec = copy.copy(spec)
            spec.submodule_search_locations = [str(tmp_path)]
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", elsewhere)
    images, target = digits_module._digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(target, reference.target)


def test_the_digits_classes_are_named_by_their_digit():
    """Class 0 is the digit 0: named '1'..'10', the card, the confusion matrix and a teacher's names
    paired by name would each call every digit by the next one."""
    assert digits_dataset().features["label"].names == [str(d) for d in range(10)]


def test_a_stubbed_out_scikit_learn_is_one_error_line(monkeypatch):
    """A module left in sys.modules without a spec (a test double, a half-removed install) makes
    find_spec raise ValueError: that ended in a traceback, where load_digits' own import says what
    is wrong in one line."""
    import types

    import pytest

    from hf_rcka.errors import DataError

    stub = types.ModuleType("sklearn")
    stub.__spec__ = None
    monkeypatch.setitem(sys.modules, "sklearn", stub)
    monkeypatch.delitem(sys.modules, "sklearn.datasets", raising=False)
    with pytest.raises(DataError, match="builtin:digits needs scikit-learn"):
        digits_module._digits_arrays()
