"""Layer-by-layer CKA between two models (hf_rcka.analysis) and the report script behind it."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _models import hf_deit, hf_vit, pixels, timm_model
from hf_rcka.analysis import layer_cka, save_heatmaps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images():
    return pixels(32, batch=12)


def test_a_model_against_itself_has_ones_on_the_diagonal(images):
    vit = hf_vit()
    report = layer_cka(vit, images, vit, images, names=("vit", "vit"))
    layers = report.matrix.shape[0]
    assert report.matrix.shape == (layers, layers) == (3, 3)  # embedding + 2 blocks
    torch.testing.assert_close(report.matrix.diagonal(), torch.ones(layers), atol=1e-4, rtol=0)
    torch.testing.assert_close(report.matrix, report.matrix.T, atol=1e-5, rtol=0)


def test_vit_tokens_against_cnn_maps_give_layers_by_layers_values_in_unit_range(images):
    deit, resnet = hf_deit(), timm_model("resnet18")
    report = layer_cka(deit, images, resnet, images, names=("deit", "resnet"))
    assert report.matrix.shape == (3, len(report.column_names)) and len(report.column_names) >= 4
    assert report.matrix.dtype == torch.float32
    assert bool(((report.matrix >= 0) & (report.matrix <= 1)).all())
    assert report.row_names[0].startswith("0: tokens 4x4x36")  # 2 prefix tokens dropped: 4x4 patch grid
    assert report.column_names[-1].split(": ")[1].startswith("map")
    # an untrained ViT and an untrained ResNet are not the same function of the input
    assert float(report.matrix.max()) < 0.999
    table = report.to_markdown()
    assert table.count("\n") == 2 + len(report.row_names)


def test_differently_sized_inputs_must_be_the_same_images(images):
    vit = hf_vit()
    with pytest.raises(ValueError, match="same images"):
        layer_cka(vit, images, vit, images[:5])


def test_heatmaps_are_written(tmp_path, images):
    vit = hf_vit()
    report = layer_cka(vit, images, vit, images)
    path = save_heatmaps([report, report], tmp_path / "cka.png", title="t")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_script_on_saved_models(tmp_path):
    """scripts/cka_report.py on two saved folders and an image folder, through its main()."""
    first, second = tmp_path / "a", tmp_path / "b"
    from transformers import ViTImageProcessor

    for folder, seed in ((first, 0), (second, 1)):
        torch.manual_seed(seed)
        model = hf_vit()
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    rng = np.random.default_rng(0)
    for label in ("x", "y"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "images" / label / f"{i}.png")
    out = tmp_path / "report"
    script = _load_script("cka_report")
    assert script.main([str(first), str(first), str(second), "--validation_dir", str(tmp_path / "images"),
                        "--num_images", "6", "--output", str(out), "--names", "A", "A again", "B"]) == 0
    assert (out / "cka.png").exists()
    tables = (out / "cka.md").read_text()
    assert "### A vs A again" in tables and "### A vs B" in tables
    first_table = tables.split("### A vs B")[0]
    rows = [row.strip(" |").split(" | ") for row in first_table.splitlines()[4:7]]
    diagonal = [row[i + 1] for i, row in enumerate(rows)]
    assert diagonal == ["1.00"] * 3


def test_cka_report_takes_the_models_validation_split_by_default(tmp_path):
    """Its own default (0.3) differed from training's (0.15): a third of its 'validation' images were trained on."""
    script = _load_script("cka_report")
    run = tmp_path / "run"
    run.mkdir()
    args = script.parse_args([str(tmp_path / "teacher"), str(run), "--dataset_name", "builtin:digits"])
    assert (args.train_val_split, args.split_seed) == (0.15, 42)  # training's defaults
    (run / "distill_config.yaml").write_text("train_val_split: 0.3\nsplit_seed: 7\n")
    args = script.parse_args([str(tmp_path / "teacher"), str(run), "--dataset_name", "builtin:digits"])
    assert (args.train_val_split, args.split_seed) == (0.3, 7)


def test_cka_report_refuses_a_card_folder_without_a_card_before_computing(tmp_path, capsys):
    script = _load_script("cka_report")
    with pytest.raises(SystemExit):
        script.parse_args([str(tmp_path / "t"), str(tmp_path / "s"), "--dataset_name", "builtin:digits",
                           "--card", str(tmp_path / "missing")])
    assert "has no README.md model card" in capsys.readouterr().err
