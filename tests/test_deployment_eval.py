"""Evaluation equals deployment: a saved run, reloaded with plain transformers, scores its eval_accuracy.

Digits are drawn at random places on non-square canvases, where stretching to (h, w) and
resizing the short side + centre cropping give different pixels. Each run is reloaded in a
fresh interpreter with ``AutoImageProcessor`` and ``AutoModelForImageClassification`` only (hf_rcka
blocked) and scores the validation folder image by image.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from hf_rcka.cli.main import main

# one pytest-xdist worker runs this file (--dist loadgroup): its module fixture trains every student
pytestmark = pytest.mark.xdist_group("test_deployment_eval")

CLASSES = ("zero", "one", "two")
TINY_DEIT = {"hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 44,
             "image_size": 16, "patch_size": 4}
COMMON = {"image_size": 16, "max_steps": 6, "per_device_train_batch_size": 12, "per_device_eval_batch_size": 16,
          "learning_rate": "3e-3", "report_to": "none", "use_cpu": True, "save_strategy": "no",
          "logging_steps": 4, "seed": 0, "student_accuracy_check": "warn"}


def write_folder(root, per_class, rng):
    digits = load_digits()
    for label, name in enumerate(CLASSES):
        os.makedirs(root / name)
        images = digits.images[digits.target == label][:per_class]
        for i, digit in enumerate(images):
            height, width = rng.integers(18, 34), rng.integers(18, 34)
            canvas = np.zeros((height, width), dtype=np.uint8)
            top, left = rng.integers(0, height - 16 + 1), rng.integers(0, width - 16 + 1)
            canvas[top:top + 16, left:left + 16] = np.kron(digit * 255 / 16, np.ones((2, 2))).astype(np.uint8)
            Image.fromarray(canvas).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvas_digits")
    rng = np.random.default_rng(0)
    write_folder(root / "train", 40, rng)
    write_folder(root / "validation", 14, rng)
    return root


DEPLOY = """
import json, os, sys
sys.modules["hf_rcka"] = None
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification
folder, runs = sys.argv[1], sys.argv[2:]
scores = {}
for run in runs:
    model, processor = AutoModelForImageClassification.from_pretrained(run).eval(), AutoImageProcessor.from_pretrained(run)
    hits, predictions = 0, set()
    for name in sorted(os.listdir(folder)):
        for file in sorted(os.listdir(os.path.join(folder, name))):
            image = Image.open(os.path.join(folder, name, file)).convert("RGB")
            with torch.no_grad():
                predicted = int(model(**processor(images=image, return_tensors="pt")).logits.argmax(-1))
            predictions.add(predicted)
            hits += predicted == model.config.label2id[name]
    scores[run] = {"hits": hits, "distinct_predictions": len(predictions)}
print(json.dumps(scores))
"""


def deployed_hits(run_dirs, folder):
    """Each run's score, every run reloaded in one fresh interpreter (hf_rcka blocked)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", DEPLOY, str(folder), *map(str, run_dirs)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


STUDENTS = {
    # transformers DeiT: its processor resizes to 18 x 18 and centre-crops 16 (bicubic)
    # (barely trained, from a wide random init: a few real steps of a tiny ViT collapse to one class
    # and small-init ViTs predict one class too, either of which would make the comparison vacuous)
    "hf_deit": {"model_name_or_path": "config:deit", "student_config_overrides": {**TINY_DEIT, "initializer_range": 1.0},
                "no_aug": True, "max_steps": 2, "learning_rate": "1e-5"},
    # timm ResNet with drop path through the timm kwargs, trained with DeiT-style augmentation
    "timm_resnet": {
        "model_name_or_path": "timm/resnet18", "student_from_scratch": True,
        "student_config_overrides": {"channels": [8, 12, 16, 20], "drop_path_rate": 0.1},
        "aa": "rand-m9-mstd0.5-inc1", "mixup": 0.8, "cutmix": 1.0, "reprob": 0.25, "aug_repeats": 3,
        "label_smoothing_factor": 0.1, "model_ema": True, "model_ema_decay": 0.9,
    },
}


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory):
    """Every student's run: {student: (its folder, its all_results.json, its deployed score)}; one
    interpreter reloads them all (each launch pays its imports)."""
    trained = {}
    for student in sorted(STUDENTS):
        root = tmp_path_factory.mktemp(student)
        out = root / "run"
        recipe = {**COMMON, **STUDENTS[student], "train_dir": str(folders / "train"),
                  "validation_dir": str(folders / "validation"), "output_dir": str(out)}
        (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        code = main([str(root / "recipe.yaml")])
        trained[student] = (out, code)
    scores = deployed_hits([out for out, code in trained.values() if code == 0], folders / "validation")
    return {student: (out, code, scores.get(str(out))) for student, (out, code) in trained.items()}


@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_reloaded_run_scores_its_reported_eval_accuracy(student, runs):
    out, code, deployed = runs[student]
    assert code == 0
    results = json.loads((out / "all_results.json").read_text())
    n = 14 * len(CLASSES)
    assert deployed["distinct_predictions"] > 1, f"a constant prediction makes the comparison vacuous: {deployed}"
    assert deployed["hits"] == round(results["eval_accuracy"] * n)
    assert results["eval_accuracy"] == pytest.approx(deployed["hits"] / n, abs=1e-9)
    if student == "timm_resnet":
        config = json.loads((out / "config.json").read_text())
        assert config["model_args"]["drop_path_rate"] == 0.1
        assert "eval_ema_accuracy" in results
