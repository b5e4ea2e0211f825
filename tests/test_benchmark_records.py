"""The committed benchmark records render as they were reported."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality_digits"


def _quality_digits():
    spec = importlib.util.spec_from_file_location("quality_digits", ROOT / "benchmarks" / "quality_digits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_report_only_renders_every_recorded_variant_and_seed(tmp_path, capsys):
    """--report-only with its default variants left out the settings search's rows and rewrote the
    committed JSON without them (alone_mix, rcka_fcka6, rcka_fcka_kd were gone)."""
    out = tmp_path / "quality_digits"
    shutil.copytree(RESULTS, out)
    assert _quality_digits().main(["--report-only", "--out", str(out)]) == 0
    committed = json.loads((RESULTS / "quality_digits.json").read_text())
    rendered = json.loads((out / "quality_digits.json").read_text())
    assert rendered["seeds"] == committed["seeds"] and rendered["validation_images"] == committed["validation_images"]
    for name, direction in committed["directions"].items():
        variants = rendered["directions"][name]["variants"]
        assert list(variants) == list(direction["variants"])
        for key, variant in direction["variants"].items():
            assert variants[key]["per_seed"] == variant["per_seed"], (name, key)
    assert "alone_mix" in rendered["directions"]["cnn2vit"]["variants"]
