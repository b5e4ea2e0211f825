"""The committed benchmark records render as they were reported."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality_digits"


def _quality_digits():
    spec = importlib.util.spec_from_file_location("quality_digits", ROOT / "benchmarks" / "quality_digits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("study", ["quality_digits", "quality_digits_core"])
def test_report_only_renders_every_recorded_variant_and_seed(tmp_path, study):
    """--report-only with its default variants left out the settings search's rows and rewrote the
    committed JSON without them (alone_mix, rcka_fcka6, rcka_fcka_kd were gone); the README's render
    commands name no seeds or variants."""
    out = tmp_path / study
    shutil.copytree(RESULTS.parent / study, out)
    assert _quality_digits().main(["--report-only", "--out", str(out)]) == 0
    committed = json.loads((RESULTS.parent / study / "quality_digits.json").read_text())
    rendered = json.loads((out / "quality_digits.json").read_text())
    assert rendered["seeds"] == committed["seeds"] and rendered["validation_images"] == committed["validation_images"]
    for name, direction in committed["directions"].items():
        variants = rendered["directions"][name]["variants"]
        assert list(variants) == list(direction["variants"])
        for key, variant in direction["variants"].items():
            assert variants[key]["per_seed"] == variant["per_seed"], (name, key)



def test_report_only_of_a_subset_writes_nothing(tmp_path, capsys):
    """--variants (or --directions) with --report-only rewrote the study's JSON, plot and READMEs
    with those rows alone; as with --seeds, a subset is printed and nothing is written."""
    out = tmp_path / "quality_digits"
    shutil.copytree(RESULTS, out)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert _quality_digits().main(["--report-only", "--out", str(out), "--variants", "kd"]) == 0
    assert _quality_digits().main(["--report-only", "--out", str(out), "--directions", "vit2cnn"]) == 0
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    assert "are left as they were" in capsys.readouterr().out
