"""A training run that replaces another in its output_dir starts clean; the old run is set aside, not lost."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from huggingface_hub.utils import filter_repo_objects

from hf_rcka.cli.main import main
from hf_rcka.cli.output_folder import REPLACED, set_aside_previous_run
from hf_rcka.trainer.trainer import exported_metrics

TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 12, 16, 20], "depths": [1, 1, 1, 1], "layer_type": "basic"}


def _run(tmp_path: Path, *flags: str, **changes) -> int:
    recipe = {
        "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET, "image_size": 16,
        "dataset_name": "builtin:digits", "no_aug": True, "max_train_samples": 20, "max_eval_samples": 10,
        "per_device_train_batch_size": 5, "per_device_eval_batch_size": 5, "report_to": "none", "use_cpu": True,
        "output_dir": str(tmp_path / "out"), "save_strategy": "steps", "save_steps": 2, "eval_strategy": "no",
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return main([str(path), *flags])


def test_a_replacing_run_sets_the_old_one_aside_and_resumes_its_own_checkpoint(tmp_path):
    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=6, model_ema=True) == 0
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    (out / "cka.png").write_bytes(b"the old run's picture")

    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2) == 0
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2"}  # not the old run's 4 and 6
    results = json.loads((out / "all_results.json").read_text())
    assert not any("ema" in key for key in results), "the old run's EMA results were merged into this one's"
    assert not (out / "cka.png").exists()
    assert "cka.png" not in (out / "README.md").read_text()
    old = out / REPLACED
    assert {p.name for p in old.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    assert (old / "cka.png").read_bytes() == b"the old run's picture"

    # resume_from_checkpoint: true now continues this run (step 2), not the old run's step 6
    assert _run(tmp_path, "--resume_from_checkpoint", "true", max_steps=4) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}


def test_only_one_replaced_run_is_kept_and_files_not_of_a_run_stay(tmp_path):
    out = tmp_path / "out"
    (out / "runs" / "cat").mkdir(parents=True)  # an input folder that happens to have a run file's name
    (out / "notes.txt").write_text("the user's")
    (out / "all_results.json").write_text("1")
    assert set_aside_previous_run(str(out), keep=[str(out / "runs" / "cat")]) == str(out / REPLACED)
    assert (out / "runs" / "cat").is_dir() and (out / "notes.txt").exists()
    assert (out / REPLACED / "all_results.json").read_text() == "1"
    (out / "trainer_state.json").write_text("2")
    set_aside_previous_run(str(out))
    assert sorted(p.name for p in (out / REPLACED).iterdir()) == ["runs", "trainer_state.json"]
    assert (out / "notes.txt").exists()
    assert set_aside_previous_run(str(out)) is None  # nothing left to move


def test_the_replaced_run_is_left_out_of_a_hub_upload():
    """Trainer.push_to_hub uploads output_dir with ignore_patterns ["_*", "checkpoint-*"]."""
    files = [f"{REPLACED}/model.safetensors", f"{REPLACED}/checkpoint-6/model.safetensors", "model.safetensors"]
    assert list(filter_repo_objects(files, ignore_patterns=["_*", "checkpoint-*"])) == ["model.safetensors"]


def test_the_card_reports_the_exported_best_checkpoint_not_the_last_evaluation():
    history = [{"step": 2, "eval_loss": 0.5, "eval_accuracy": 0.9}, {"step": 4, "loss": 0.1},
               {"step": 6, "eval_loss": 0.8, "eval_accuracy": 0.7}]
    assert exported_metrics(history) == {"eval_loss": 0.8, "eval_accuracy": 0.7}
    assert exported_metrics(history, "out/checkpoint-2") == {"eval_loss": 0.5, "eval_accuracy": 0.9}


def test_a_failed_attempt_does_not_push_the_replaced_run_out(tmp_path, monkeypatch):
    """The leftovers of an attempt that failed before its first checkpoint are no run to set aside:
    a retry that did so deleted the real run kept in _replaced/."""
    from hf_rcka.trainer.trainer import DistillationTrainer

    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=2) == 0
    trained = (out / "model.safetensors").read_bytes()

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(DistillationTrainer, "training_step", out_of_memory)
        try:
            _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2)
        except RuntimeError:
            pass
    assert (out / REPLACED / "model.safetensors").read_bytes() == trained
    assert _run(tmp_path, max_steps=2) == 0  # the retry: the folder holds no model, nothing to set aside
    assert (out / REPLACED / "model.safetensors").read_bytes() == trained


def test_an_evaluation_record_is_no_run_to_replace(tmp_path):
    record = tmp_path / "out" / "_eval-20261202-120000"
    record.mkdir(parents=True)
    (record / "eval_results.json").write_text("{}")
    assert _run(tmp_path, max_steps=2) == 0
    assert (record / "eval_results.json").exists() and not (tmp_path / "out" / REPLACED).exists()
