"""A training run that replaces another in its output_dir starts clean; the old run is set aside, not lost."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub.utils import filter_repo_objects

from hf_rcka.cli.main import main
from hf_rcka.cli.output_folder import (
    REPLACED, UNFINISHED, check_output_dir, later_checkpoints, set_aside_abandoned_branch, set_aside_previous_run,
)
from hf_rcka.errors import RecipeError
from hf_rcka.trainer.interrupt import Interrupted
from hf_rcka.trainer.trainer import exported_metrics

TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 12, 16, 20], "depths": [1, 1, 1, 1], "layer_type": "basic"}


def _run(tmp_path: Path, *flags: str, **changes) -> int:
    recipe = {
        "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET, "image_size": 16,
        "dataset_name": "builtin:digits", "no_aug": True, "max_train_samples": 20, "max_eval_samples": 10,
        "per_device_train_batch_size": 5, "per_device_eval_batch_size": 5, "report_to": "none", "use_cpu": True,
        "output_dir": str(tmp_path / "out"), "save_strategy": "steps", "save_steps": 2, "eval_strategy": "no",
        "student_accuracy_check": "warn", **changes,
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

    first_step, steps = DistillationTrainer.training_step, []

    def out_of_memory(self, *args, **kwargs):  # at the second step (a failure in the first puts the run back)
        steps.append(1)
        if len(steps) > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return first_step(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(DistillationTrainer, "training_step", out_of_memory)
        try:
            _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2)
        except RuntimeError:
            pass
    assert (out / REPLACED / "model.safetensors").read_bytes() == trained
    assert _run(tmp_path, max_steps=2) == 0  # the retry: the folder holds no model, nothing to set aside
    assert (out / REPLACED / "model.safetensors").read_bytes() == trained


def test_a_retry_after_a_failed_export_keeps_the_finished_run(tmp_path, monkeypatch, capsys):
    """A full disk cut the final export short after config.json: the retry counted that as a
    finished run and deleted the one kept in _replaced/ to set it aside."""
    import errno

    from transformers import PreTrainedModel

    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=2) == 0
    trained = (out / "model.safetensors").read_bytes()
    save = PreTrainedModel.save_pretrained

    def disk_full_after_the_config(self, folder, *args, **kwargs):
        self.config.save_pretrained(folder)  # what save_pretrained writes first
        (Path(folder) / "model.safetensors").write_bytes(b"\x10\x00")  # cut short
        raise OSError(errno.ENOSPC, "No space left on device (simulated)", str(Path(folder) / "model.safetensors"))

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(PreTrainedModel, "save_pretrained", disk_full_after_the_config)
        assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2, save_strategy="no") == 2
    assert PreTrainedModel.save_pretrained is save
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: the disk holding {out} is full: a write failed (OSError: [Errno 28] No space left on device "
        f"(simulated): '{out / 'model.safetensors'}'). Free space there or choose another output_dir; what was saved before is kept (a checkpoint "
        f"cut short is refused on resume, which names the one before it) (the run this one was to replace is in "
        f"{out / REPLACED})")
    assert (out / REPLACED / "model.safetensors").read_bytes() == trained
    assert not (out / "README.md").exists()
    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2, seed=3) == 0  # the retry
    assert (out / REPLACED / "model.safetensors").read_bytes() == trained, "the finished run was deleted"
    assert (out / REPLACED / UNFINISHED / "model.safetensors").read_bytes() == b"\x10\x00"
    assert (out / "model.safetensors").read_bytes() != trained


def test_a_set_aside_cut_short_is_completed_by_the_next_one(tmp_path, monkeypatch):
    """A set-aside stopped halfway left the old run split between the folder and _replaced/, and the
    next set-aside deleted the half already moved."""
    import os

    out = tmp_path / "out"
    _fake_run(out, [2, 4], finished=True, tag="run 1")
    set_aside_previous_run(str(out))
    _fake_run(out, [6], finished=True, tag="run 2")
    replace, calls = os.replace, []

    def stopped_at_the_third(source, target):
        calls.append(source)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a signal: no move back
        replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", stopped_at_the_third)
        with pytest.raises(KeyboardInterrupt):
            set_aside_previous_run(str(out))
    assert (out / REPLACED / "model.safetensors").read_text() == "run 1", "the earlier run is kept until the end"
    assert set_aside_previous_run(str(out)) == str(out / REPLACED)
    assert sorted(p.name for p in (out / REPLACED).iterdir()) == [
        "all_results.json", "checkpoint-6", "model.safetensors", "trainer_state.json"]
    assert (out / REPLACED / "model.safetensors").read_text() == "run 2"
    # run 1, pushed out, waits until a run trains (a run refused before its first step puts both back)
    assert sorted(p.name for p in out.iterdir()) == ["_pushed_out", REPLACED]
    assert (out / "_pushed_out" / "model.safetensors").read_text() == "run 1"


def test_a_set_aside_refused_halfway_leaves_the_run_as_it_was(tmp_path, monkeypatch, capsys):
    """A checkpoint folder the user may not write cannot move: the replacing run was refused, the
    run it was to replace was left split between the folder and _replacing/ (its model gone), and
    the error said to choose another output_dir."""
    import errno

    from transformers import AutoModelForImageClassification

    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=2) == 0
    before = sorted(p.name for p in out.iterdir())
    replace, moved = os.replace, []

    def refused_at_the_third(source, target):
        if Path(target).parent.name == "_replacing":
            moved.append(Path(source))
            if len(moved) == 3:  # e.g. checkpoint-2, read-only
                raise PermissionError(errno.EACCES, "Permission denied", str(source))
        replace(source, target)

    monkeypatch.setattr(os, "replace", refused_at_the_third)
    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2, seed=3) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: cannot set aside the run in {out}: moving {moved[2]} into {out / '_replacing'} failed (Permission "
        f"denied); it was left as it was. Make {moved[2]} writable for you (moving a folder needs it), or choose "
        "another output_dir")
    assert len(moved) == 3 and sorted(p.name for p in out.iterdir()) == before
    AutoModelForImageClassification.from_pretrained(out)


def test_a_resumed_run_drops_the_earlier_card_before_it_saves_its_model(tmp_path):
    from hf_rcka.cli.output_folder import drop_stale_export

    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="run 1")
    (out / "README.md").write_text("---\ntags:\n- hf_rcka\n---\nrun 1\nmy own lines\n")
    (out / "cka.png").write_bytes(b"png")  # the earlier model's picture: the new card showed it as its own
    drop_stale_export(str(out))
    assert not (out / "README.md").exists() and not (out / "trainer_state.json").exists()
    assert not (out / "cka.png").exists()
    assert (out / "_README.earlier.md").read_text().endswith("my own lines\n"), "a user's lines were deleted"
    assert (out / "model.safetensors").exists() and (out / "checkpoint-2").exists()
    (out / "README.md").write_text("---\ntags:\n- hf_rcka\n---\nrun 2\n")  # a second extension of the run
    drop_stale_export(str(out))
    assert (out / "_README.earlier-2.md").read_text().endswith("my own lines\n"), "the first copy was overwritten"
    assert (out / "_README.earlier.md").read_text().endswith("run 2\n")
    (out / "README.md").write_text("# my notes on this run\n")  # not hf_rcka's card: the user's
    drop_stale_export(str(out))
    assert (out / "README.md").read_text() == "# my notes on this run\n"
    set_aside_previous_run(str(out))
    assert {p.name for p in (out / REPLACED).glob("_README.earlier*")} == {"_README.earlier.md", "_README.earlier-2.md"}


def test_an_evaluation_record_is_no_run_to_replace(tmp_path):
    record = tmp_path / "out" / "_eval-20261202-120000"
    record.mkdir(parents=True)
    (record / "eval_results.json").write_text("{}")
    assert _run(tmp_path, max_steps=2) == 0
    assert (record / "eval_results.json").exists() and not (tmp_path / "out" / REPLACED).exists()


def _fake_run(folder: Path, steps: list[int], finished: bool, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
        (folder / f"checkpoint-{step}").mkdir()
        (folder / f"checkpoint-{step}" / "tag").write_text(tag)
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")  # a save that ended
    if finished:  # the model and the state saved after it; no card (a run stopped in its final evaluation)
        (folder / "model.safetensors").write_text(tag)
        (folder / "all_results.json").write_text(tag)
        (folder / "trainer_state.json").write_text("{}")


def test_an_unfinished_run_never_pushes_a_finished_one_out_of_replaced(tmp_path):
    """Run 1 finished, run 2 was interrupted at step 5 (run 1 set aside), run 3 replaced run 2:
    _replaced/ then held only run 2's checkpoint, and run 1's model was deleted."""
    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="run 1")
    set_aside_previous_run(str(out))
    _fake_run(out, [5], finished=False, tag="run 2")
    set_aside_previous_run(str(out))
    assert (out / REPLACED / "model.safetensors").read_text() == "run 1"
    assert (out / REPLACED / UNFINISHED / "checkpoint-5" / "tag").read_text() == "run 2"
    _fake_run(out, [4], finished=True, tag="run 3")  # a finished run takes _replaced/ whole
    set_aside_previous_run(str(out))
    assert (out / REPLACED / "model.safetensors").read_text() == "run 3" and not (out / REPLACED / UNFINISHED).exists()


def test_resuming_an_earlier_checkpoint_sets_the_later_branch_aside(tmp_path, caplog):
    """resume_from_checkpoint: true picked the abandoned branch's checkpoint-40 after a resume from
    checkpoint-20 had been interrupted at 25, trained 0 steps and exited 0 with the old model. (The
    warning named the later checkpoints alone, not the finished model that went with them.)"""
    out = tmp_path / "out"
    _fake_run(out, [10, 20, 30, 40], finished=True, tag="old")
    args = SimpleNamespace(output_dir=str(out), overwrite_output_dir=False, do_train=True)
    resume = str(out / "checkpoint-20")
    with pytest.raises(RecipeError, match="holds checkpoint-30, checkpoint-40, later than the checkpoint-20"):
        check_output_dir(args, resume)
    assert later_checkpoints(str(out), str(out / "checkpoint-40")) == []
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert set_aside_abandoned_branch(str(out), resume) == str(out / REPLACED)
    assert "sets aside the later checkpoint-30, checkpoint-40, finished run's model and results" in caplog.text
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]
    assert sorted(p.name for p in (out / REPLACED).iterdir()) == [
        "all_results.json", "checkpoint-30", "checkpoint-40", "model.safetensors", "trainer_state.json"]


def test_resuming_a_finished_runs_earlier_checkpoint_is_refused_unless_it_is_set_aside(tmp_path):
    """With load_best_model_at_end and save_total_limit 1 only the best checkpoint (2) outlives a
    finished 8-step run: resume_from_checkpoint: true picked it, trained steps 3-8 again and
    replaced the finished model, exit 0."""
    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="old")
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    args = SimpleNamespace(output_dir=str(out), overwrite_output_dir=False, do_train=True)
    with pytest.raises(RecipeError, match="holds the finished run's model of step 8, later than the checkpoint-2"):
        check_output_dir(args, str(out / "checkpoint-2"))
    assert set_aside_abandoned_branch(str(out), str(out / "checkpoint-2")) == str(out / REPLACED)
    assert sorted(p.name for p in (out / REPLACED).iterdir()) == [
        "all_results.json", "model.safetensors", "trainer_state.json"]
    check_output_dir(args, str(out / "checkpoint-2"))  # nothing later now
    _fake_run(tmp_path / "done", [8], finished=True, tag="done")  # its last checkpoint: continuing it
    (tmp_path / "done" / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    check_output_dir(SimpleNamespace(**{**vars(args), "output_dir": str(tmp_path / "done")}),
                     str(tmp_path / "done" / "checkpoint-8"))


def test_a_checkpoint_of_another_folder_does_not_resume_over_a_run(tmp_path):
    """Resuming another folder's ViT checkpoint replaced a finished ResNet run's model, mixed their
    checkpoints and kept its EMA results, exit 0."""
    out, other = tmp_path / "out", tmp_path / "other"
    _fake_run(out, [15], finished=True, tag="here")
    _fake_run(other, [20], finished=False, tag="there")
    args = SimpleNamespace(output_dir=str(out), overwrite_output_dir=False, do_train=True)
    with pytest.raises(RecipeError, match="is a checkpoint of another folder: its run would overwrite them"):
        check_output_dir(args, str(other / "checkpoint-20"))
    check_output_dir(args, str(out / "checkpoint-15"))  # its own: continuing
    check_output_dir(SimpleNamespace(**{**vars(args), "output_dir": str(tmp_path / "new")}), str(other / "checkpoint-20"))


def test_the_card_reports_no_evaluation_of_an_unevaluated_final_model():
    """A resumed run with do_eval: false showed the step-40 evaluation for its step-60 model."""
    history = [{"step": 40, "eval_accuracy": 0.23}, {"step": 60, "loss": 0.1}]
    assert exported_metrics(history, final_step=60) == {}
    assert exported_metrics(history, final_step=40) == {"eval_accuracy": 0.23}


def test_a_resumed_run_that_is_not_evaluated_keeps_no_earlier_evaluation(tmp_path):
    """all_results.json and the card kept the step-2 evaluation for the step-4 model (do_eval: false)."""
    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=2) == 0
    assert "eval_accuracy" in json.loads((out / "all_results.json").read_text())
    assert _run(tmp_path, "--resume_from_checkpoint", "true", "--do_eval", "false", max_steps=4) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert not any(k.startswith("eval_") for k in json.loads((out / "all_results.json").read_text()))
    assert not (out / "eval_results.json").exists()
    assert "eval_accuracy" not in (out / "README.md").read_text().split("---")[1]  # the card's metadata


def test_resuming_another_folders_checkpoint_over_a_run_sets_it_aside(tmp_path):
    other = tmp_path / "other"
    assert _run(tmp_path, "--output_dir", str(other), max_steps=2) == 0
    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=2, seed=7) == 0
    mine = (out / "model.safetensors").read_bytes()
    resume = ("--resume_from_checkpoint", str(other / "checkpoint-2"))
    assert _run(tmp_path, *resume, max_steps=4) == 2  # refused: it would overwrite this run
    assert _run(tmp_path, *resume, "--overwrite_output_dir", "true", max_steps=4) == 0
    assert (out / REPLACED / "model.safetensors").read_bytes() == mine
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]


def test_a_folder_with_someone_elses_readme_is_refused_and_an_earlier_card_is_not(tmp_path):
    """A run into a project folder replaced its README.md with the model card (through a link too)."""
    args = SimpleNamespace(output_dir=str(tmp_path / "proj"), overwrite_output_dir=False, do_train=True)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "README.md").write_text("# My project notes\n")
    with pytest.raises(RecipeError, match="holds README.md, which no run of hf_rcka wrote"):
        check_output_dir(args, None)
    (tmp_path / "proj" / "README.md").write_text("---\ntags:\n- hf_rcka\n---\n# an earlier run's card\n")
    check_output_dir(args, None)
    (tmp_path / "outside.md").write_text("---\ntags:\n- hf_rcka\n---\n")
    (tmp_path / "proj" / "README.md").unlink()
    (tmp_path / "proj" / "README.md").symlink_to(tmp_path / "outside.md")
    with pytest.raises(RecipeError, match="holds README.md"):
        check_output_dir(args, None)
    with pytest.raises(RecipeError, match="holds README.md"):  # every digits recipe sets overwrite_output_dir
        check_output_dir(SimpleNamespace(**{**vars(args), "overwrite_output_dir": True}), None)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_projects_own_config_json_is_no_run_and_its_readme_never_goes_with_a_run(tmp_path, overwrite):
    """A config.json that is no model's counted as a run: the project's README.md and config.json were
    set aside as the run being replaced (and deleted by the next replacement), or the refusal said
    the folder held a model. Beside a real run, a README.md that is no card is refused too."""
    out = tmp_path / "proj"
    out.mkdir()
    (out / "README.md").write_text("# My project\n")
    (out / "config.json").write_text('{"lr": 1}')
    with pytest.raises(RecipeError, match=r"holds README.md, config.json, which no run of hf_rcka wrote"):
        check_output_dir(_args(out, overwrite), None)
    (out / "README.md").unlink()
    with pytest.raises(RecipeError, match=r"holds config.json, which no run"):
        check_output_dir(_args(out, overwrite), None)
    (out / "config.json").write_text('{"model_type": "vit", "architectures": ["ViTForImageClassification"]}')
    (out / "model.safetensors").write_bytes(b"")
    (out / "README.md").write_text("# My project\n")
    with pytest.raises(RecipeError, match=r"holds README.md, which no run"):
        check_output_dir(_args(out, overwrite), None)
    (out / "README.md").write_text("\ufeff---\ntags:\n- hf_rcka\n---\n# the run's card, saved by an editor\n")
    if overwrite:
        check_output_dir(_args(out, overwrite), None)
    else:
        with pytest.raises(RecipeError, match="already holds a model or checkpoints"):
            check_output_dir(_args(out, overwrite), None)


def test_a_config_json_cut_short_beside_a_runs_records_is_a_run(tmp_path):
    """An export interrupted while writing config.json leaves it unreadable: beside the run's own
    records it is that run's (a retry replaces it), alone it is nobody's to overwrite."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"model_ty')
    with pytest.raises(RecipeError, match="holds config.json, which no run"):
        check_output_dir(_args(out, True), None)
    (out / "distill_config.yaml").write_text("output_dir: out\n")
    with pytest.raises(RecipeError, match="already holds a model or checkpoints"):
        check_output_dir(_args(out), None)
    check_output_dir(_args(out, True), None)


def test_a_run_refused_before_its_first_step_leaves_the_folder_as_it_was(tmp_path, monkeypatch, capsys):
    """The previous run was set aside before the models loaded: a teacher of other classes left the
    folder without its model and the error did not say where it had gone. Then the set-aside came
    after the models, and a refusal after it (the trainer's checks, the teacher check at the start
    of training, now an error by default) deleted the run kept in _replaced/ that the set-aside had
    pushed out, for a run that trained nothing."""
    import hf_rcka.cli.job as job
    from hf_rcka.errors import DataError, ModelError

    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=2) == 0
    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2, seed=3) == 0
    kept, trained = (out / REPLACED / "model.safetensors").read_bytes(), (out / "model.safetensors").read_bytes()

    def state():
        return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "runs" not in p.parts)

    before = state()

    def teacher_of_other_classes(*args, **kwargs):
        raise ModelError("the teacher's classes do not match the run's (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(job, "_distillation_model", teacher_of_other_classes)
        assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2) == 2

    def refused_by_the_trainer(*args, **kwargs):
        raise DataError("an evaluation item lacks labels (simulated)")

    def refused_at_the_start_of_training(self):  # train() checks the batches and the teacher first
        raise ModelError("the teacher is near chance (simulated)")

    def signal_at_the_start_of_training(self):
        raise Interrupted(signal.SIGINT)

    def failure_at_the_start_of_training(self):  # a failure inside transformers (a traceback)
        raise AttributeError("a model without input embeddings (simulated)")

    def first_step_fails(self, *args, **kwargs):  # out of memory at the first batch, say
        raise DataError("the first batch failed (simulated)")

    cases = [(job, "DistillationTrainer", refused_by_the_trainer, "error: an evaluation item lacks labels (simulated)"),
             (job.DistillationTrainer, "training_step", first_step_fails, "error: the first batch failed (simulated)"),
             (job.DistillationTrainer, "check_teacher", refused_at_the_start_of_training,
              "error: the teacher is near chance (simulated)"),
             (job.DistillationTrainer, "check_teacher", signal_at_the_start_of_training, "interrupted by SIGINT")]
    for owner, name, refusal, said in cases:
        capsys.readouterr()
        with monkeypatch.context() as patch:
            patch.setattr(owner, name, refusal)
            assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2) in (2, 130)
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(said) and line.endswith(f"(the run this one was to replace is back in {out})"), line
        assert state() == before, refusal.__name__
        assert (out / REPLACED / "model.safetensors").read_bytes() == kept, "the run kept in _replaced/ was deleted"
        assert (out / "model.safetensors").read_bytes() == trained
    with monkeypatch.context() as patch:
        patch.setattr(job.DistillationTrainer, "check_teacher", failure_at_the_start_of_training)
        with pytest.raises(AttributeError) as raised:
            _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2)
    assert raised.value.__notes__ == [f"the run this one was to replace is back in {out}"]
    assert state() == before
    # a run that trains replaces it: the run pushed out of _replaced/ is deleted once training starts
    from hf_rcka.cli.output_folder import PUSHED_OUT

    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2, seed=5) == 0
    assert (out / REPLACED / "model.safetensors").read_bytes() == trained and not (out / PUSHED_OUT).exists()


def test_a_training_run_ends_by_saying_where_its_model_is_and_how_to_load_it(tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    assert _run(tmp_path, max_steps=2, eval_strategy="no") == 0
    last = [line.split(" INFO hf_rcka: ", 1)[1] for line in capsys.readouterr().err.splitlines()
            if " INFO hf_rcka: " in line][-1]
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    out = str(tmp_path / "out")
    assert last == (f"the trained student is in {out} (eval_accuracy {results['eval_accuracy']:.4f}), with its card "
                    f"(README.md); load it with transformers.AutoModelForImageClassification.from_pretrained({out!r})")
    assert AutoModelForImageClassification.from_pretrained(out).config.num_labels == 10


def test_a_failed_write_is_one_line_that_names_the_fix(tmp_path, monkeypatch):
    """A full disk ended the run in a safetensors or torch traceback (torch's: "unexpected pos",
    without a word of the disk), which named no fix. Only writes into output_dir are said so."""
    import errno

    import hf_rcka.cli.output_folder as output_folder
    from hf_rcka.cli.output_folder import said_write_errors, write_error
    from hf_rcka.errors import OutputWriteError

    out = str(tmp_path / "out")
    model = f"{out}/model.safetensors"
    monkeypatch.setattr(output_folder, "_free_bytes", lambda folder: 50 * 2**30)  # plenty left
    assert "is full" in str(write_error(OSError(errno.ENOSPC, "No space left on device", model), out))
    assert str(write_error(OSError(errno.EDQUOT, "Disk quota exceeded", model), out)).startswith(
        f"your disk quota for {out} is used up: a write failed")
    # a quota fills with the disk's space free, and a file's write() names no file: a traceback before
    assert str(write_error(OSError(errno.EDQUOT, "Disk quota exceeded"), out)).startswith(
        f"a disk quota is used up (the error names no file: {out}'s, or a cache's): a write failed")
    assert write_error(OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "elsewhere")), out) is None
    shm = RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nunable to write to file </torch_1_2>: "
                       "No space left on device (28)")
    torch_cut = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 114304 vs 114196")
    assert write_error(shm, out) is None and write_error(torch_cut, out) is None, "another disk: its traceback stays"
    monkeypatch.setattr(output_folder, "_free_bytes", lambda folder: 10 * 2**20)  # output_dir's disk is full
    said = str(write_error(torch_cut, out))
    assert said.startswith(f"the disk holding {out} is full") and "unexpected pos 114304 vs 114196" in said
    assert "is full" in str(write_error(RuntimeError("I/O error: No space left on device (os error 28)"), out))
    refused = PermissionError(errno.EACCES, "Permission denied", model)
    assert str(write_error(refused, out)) == f"cannot write {model}: Permission denied. Choose an output_dir you can write to"
    elsewhere = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "teacher" / "model.safetensors"))
    assert write_error(elsewhere, out) is None, "a file the run reads is no output_dir problem"
    assert write_error(ValueError("shapes differ"), out) is None
    with pytest.raises(OutputWriteError) as caught, said_write_errors(out):
        raise OSError(errno.ENOSPC, "No space left on device", model)
    assert isinstance(caught.value, OSError) and isinstance(caught.value.__cause__, OSError)
    with pytest.raises(KeyError), said_write_errors(out):  # any other error keeps its traceback
        raise KeyError("a bug")


def test_a_set_aside_left_pending_is_completed_before_anything_else(tmp_path):
    """Files left in _replacing/ (a Ctrl-C during a set-aside) did not count as a run: the next run
    trained beside them, and a later set-aside mixed two runs' files or failed on a same-named checkpoint."""
    from hf_rcka.cli.output_folder import REPLACING, holds_run

    out = tmp_path / "out"
    _fake_run(out / REPLACING, [2], finished=True, tag="run 1")  # all of run 1 moved, not yet renamed
    assert holds_run(str(out))
    args = SimpleNamespace(output_dir=str(out), overwrite_output_dir=False, do_train=True)
    with pytest.raises(RecipeError, match="already holds a model or checkpoints"):
        check_output_dir(args, None)
    assert set_aside_previous_run(str(out)) == str(out / REPLACED)
    assert (out / REPLACED / "checkpoint-2" / "tag").read_text() == "run 1" and not (out / REPLACING).exists()
    # a pending set-aside whose names the next run's files share: the pending run is completed first
    _fake_run(out / REPLACING, [2], finished=False, tag="run 2")
    _fake_run(out, [2], finished=True, tag="run 3")
    assert set_aside_previous_run(str(out)) == str(out / REPLACED)
    assert (out / REPLACED / "checkpoint-2" / "tag").read_text() == "run 3"
    assert sorted(p.name for p in out.iterdir()) == ["_pushed_out", REPLACED]  # run 1 until a run trains


@pytest.mark.parametrize("where", [REPLACED, f"{REPLACED}/{UNFINISHED}"])
def test_a_set_aside_folder_that_is_a_link_is_refused_before_anything_loads(tmp_path, where):
    """A symbolic link at _replaced ended in rmtree's traceback after the models had loaded."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    _fake_run(out, [2], finished=True, tag="run 1")
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("someone's")
    (out / where).parent.mkdir(parents=True, exist_ok=True)
    (out / where).symlink_to(elsewhere, target_is_directory=True)
    args = SimpleNamespace(do_train=True, output_dir=str(out), overwrite_output_dir=True)
    with pytest.raises(RecipeError, match=f"{where} is a symbolic link: with overwrite_output_dir"):
        check_output_dir(args, None)
    assert (elsewhere / "keep.txt").read_text() == "someone's"
    assert (out / "model.safetensors").read_text() == "run 1"


def test_a_write_cut_short_by_a_kill_is_set_aside_with_its_run(tmp_path):
    """A SIGKILL in the middle of a card's atomic write left its temporary file for good."""
    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="run 1")
    (out / "_writing-README.md.x1y2").write_text("half a card")
    set_aside_previous_run(str(out))
    assert not list(out.glob("_writing-*"))
    assert (out / REPLACED / "_writing-README.md.x1y2").read_text() == "half a card"


def test_a_second_training_run_in_a_folder_in_use_is_refused(tmp_path, capsys):
    """Two runs started in one folder both exited 0: one's model and card next to the other's
    recorded recipe, the other's model lost."""
    from hf_rcka.cli.output_folder import training_alone_in

    out = tmp_path / "out"
    with training_alone_in(str(out)) as refusal:  # the first run, still training
        assert refusal is None
        assert _run(tmp_path, max_steps=2) == 2
    # the holder's pid, from the kernel's list of locks (the lock is held in this process here)
    assert (f"is in use by another run (training there, evaluating its model, or loading it as a teacher or starting "
            f"model) (pid {os.getpid()}): it holds the folder's lock" in " ".join(capsys.readouterr().err.split()))
    assert not out.exists(), "the folder made for the lock is not left behind"
    assert _run(tmp_path, max_steps=2) == 0  # once it has ended


def test_an_evaluation_only_run_shares_its_folder_with_evaluations_but_not_with_training(tmp_path, capsys):
    """An evaluation of OUT while a training run with overwrite_output_dir set OUT's model aside: the
    evaluation's record of the replaced model landed in the new run's folder (exit 0 both)."""
    from hf_rcka.cli.output_folder import training_alone_in

    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=2) == 0
    evaluate = [str(out / "distill_config.yaml"), "--do_train", "false", "--model_name_or_path", str(out),
                "--student_from_scratch", "false", "--output_dir", str(out)]
    capsys.readouterr()
    with training_alone_in(str(out)) as refusal:  # a training run in the folder
        assert refusal is None
        assert main(evaluate) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: output_dir {str(out)!r} is in use by a training run (pid {os.getpid()}): it holds the folder's lock. "
        "Wait for it to end, or choose another output_dir")
    assert not list(out.glob("_eval-*"))
    with training_alone_in(str(out), evaluating=True) as refusal:  # another evaluation of the folder
        assert refusal is None
        assert main(evaluate) == 0
        assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2) == 2  # training waits for both
    assert len(list(out.glob("_eval-*/eval_results.json"))) == 1


def test_a_teacher_whose_folder_a_training_run_replaces_is_not_loaded(tmp_path, capsys):
    """A student loaded a teacher folder whose retrain had set the teacher aside for its checkpoints
    (a config.json missing, or a half-trained model loaded)."""
    from hf_rcka.cli.output_folder import training_alone_in

    teacher = tmp_path / "teacher"
    assert _run(tmp_path, max_steps=2, output_dir=str(teacher)) == 0
    capsys.readouterr()
    with training_alone_in(str(teacher)) as refusal:  # a retrain of the teacher
        assert refusal is None
        assert _run(tmp_path, max_steps=2, teacher_model_name_or_path=str(teacher), teacher_accuracy_check="off") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: teacher_model_name_or_path {str(teacher)!r} is in use by a training run (pid {os.getpid()}) that "
        "replaces the model there. Wait for that run to end, or load another model")
    assert not (tmp_path / "out").exists()


def test_a_training_run_into_a_folder_whose_model_a_run_loads_waits(tmp_path, monkeypatch):
    """A retrain of the teacher's folder while a student loaded it moved the teacher away mid-load;
    it is refused while the student loads, and starts once the student has loaded its teacher."""
    import hf_rcka.cli.job as job
    from hf_rcka.cli.output_folder import training_alone_in

    teacher, start = tmp_path / "teacher", tmp_path / "start"
    assert _run(tmp_path, max_steps=2, output_dir=str(teacher)) == 0
    assert _run(tmp_path, max_steps=2, output_dir=str(start)) == 0
    refusals = []
    load = job.load_image_classifier

    def loading(*args, **kwargs):
        for folder in (teacher, start):  # a retrain of each, started meanwhile
            with training_alone_in(str(folder)) as refusal:
                refusals.append(refusal)
        return load(*args, **kwargs)

    monkeypatch.setattr(job, "load_image_classifier", loading)
    assert _run(tmp_path, max_steps=2, teacher_model_name_or_path=str(teacher), model_name_or_path=str(start),
                teacher_accuracy_check="off", student_from_scratch=False) == 0
    assert refusals and all(r is not None and "is in use by another run" in r for r in refusals)
    for folder in (teacher, start):  # the student's run has ended: retrains start
        with training_alone_in(str(folder)) as refusal:
            assert refusal is None


def test_a_run_refused_at_the_lock_leaves_the_folder_the_running_one_holds(tmp_path, monkeypatch):
    """Two runs started at once into a new output_dir both saw it missing; the one refused at the
    lock removed the folder, still empty, that the other had made and locked, whose files then went
    to a new folder no lock held (11 of 150 trials of three runs started together)."""
    import hf_rcka.cli.output_folder as output_folder
    from hf_rcka.cli.output_folder import training_alone_in

    out = tmp_path / "out"
    with training_alone_in(str(out)) as refusal:
        assert refusal is None
        monkeypatch.setattr(output_folder, "missing_folders", lambda path: [Path(path)])  # it saw out missing too
        with training_alone_in(str(out)) as other:
            assert other is not None and "is in use by another run" in other
        assert out.is_dir(), "the refused run removed the folder the running one holds"


def test_a_run_killed_during_its_first_checkpoint_is_not_sent_round_in_a_loop(tmp_path, capsys):
    """A kill during the first checkpoint's save: a rerun was told to pass --resume_from_checkpoint
    true, and the resume to delete the checkpoint and start again; a kill before it: the resume's
    refusal named no way on."""
    out = tmp_path / "out"
    assert _run(tmp_path, "--resume_from_checkpoint", "true", max_steps=2) == 2  # killed before any checkpoint
    assert capsys.readouterr().err.strip().endswith("nothing was saved to resume (a run stopped before its first "
                                                    "checkpoint). Start the run without resume_from_checkpoint")
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"\x10\x00")  # cut short, no trainer_state.json
    assert _run(tmp_path, max_steps=2) == 2
    assert "holds only checkpoints whose save was cut short" in capsys.readouterr().err
    assert _run(tmp_path, "--resume_from_checkpoint", "true", max_steps=2) == 2
    said = capsys.readouterr().err
    assert "start again without resume_from_checkpoint, with --overwrite_output_dir true" in said
    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2) == 0


def test_a_resume_beside_a_set_aside_cut_short_says_which_checkpoint_it_takes(tmp_path, capsys):
    """A kill during an overwrite's set-aside moved the run's last checkpoint into _replacing/: a
    resume took an earlier one and trained its steps again without a word."""
    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=4) == 0
    (out / "_replacing").mkdir()
    (out / "checkpoint-4").rename(out / "_replacing" / "checkpoint-4")
    capsys.readouterr()
    assert _run(tmp_path, "--resume_from_checkpoint", "true", "--overwrite_output_dir", "true", max_steps=4) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert (f"a set-aside cut short (a kill during an overwrite) left part of the run in {out} in {out / '_replacing'}: "
            f"this run resumes {out / 'checkpoint-2'}, the last checkpoint outside it") in said


def test_a_refused_run_leaves_no_folder_it_made(tmp_path):
    """Refused by a check after the lock had made output_dir: the empty folders were left, one of
    them inside an image folder, where the next run read it as a class without images."""
    deep = tmp_path / "data" / "runs" / "r1"
    (tmp_path / "data").mkdir()
    assert _run(tmp_path, max_steps=2, output_dir=str(deep), resume_from_checkpoint=str(tmp_path / "nowhere")) == 2
    assert list((tmp_path / "data").iterdir()) == []


def test_a_dataloader_worker_forked_during_a_run_does_not_hold_its_folder(tmp_path):
    """A flock belongs to the open file, which a forked child shares: persistent workers kept the
    folder locked, and the next run in the process was refused."""
    import multiprocessing

    from hf_rcka.cli.output_folder import training_alone_in

    out = tmp_path / "out"
    out.mkdir()  # kept after the run (a folder made for the lock would go, and the next run lock a new one)
    context = multiprocessing.get_context("fork")
    with training_alone_in(str(out)) as refusal:
        assert refusal is None
        ready, done = context.Event(), context.Event()
        child = context.Process(target=_wait, args=(ready, done))
        child.start()
        ready.wait(30)
    try:
        with training_alone_in(str(out)) as refusal:
            assert refusal is None, "the child still held the lock"
    finally:
        done.set()
        child.join(30)


def _wait(ready, done) -> None:
    ready.set()
    done.wait(30)


def test_evaluations_started_together_each_get_their_own_record_folder(tmp_path):
    from hf_rcka.cli.records import drop_empty_record, eval_record_dir

    first, second = eval_record_dir(str(tmp_path)), eval_record_dir(str(tmp_path))
    assert first != second and Path(first).is_dir() and Path(second).is_dir()
    drop_empty_record(first)
    (Path(second) / "eval_results.json").write_text("{}")
    drop_empty_record(second)
    assert not Path(first).exists() and Path(second).is_dir()


def test_a_third_evaluation_in_the_same_second_gets_a_folder_of_its_own(tmp_path, monkeypatch):
    """Counted from the wrong number, the suffix of a second evaluation started in the same second
    was taken again by a third, whose eval_record_dir then tried the same name forever (a hang)."""
    import time

    from hf_rcka.cli import records

    gmtime = time.gmtime
    monkeypatch.setattr(records.time, "gmtime", lambda secs=None: gmtime(0 if secs is None else secs))  # one second
    tries, mkdir = [], os.mkdir

    def counted(path, *rest):
        tries.append(path)
        if len(tries) > 20:
            raise RuntimeError(f"eval_record_dir keeps trying: {tries[-3:]}")
        return mkdir(path, *rest)

    monkeypatch.setattr(records.os, "mkdir", counted)
    made = [records.eval_record_dir(str(tmp_path)) for _ in range(3)]
    assert [Path(m).name for m in made] == ["_eval-19700101-000000", "_eval-19700101-000000-2",
                                            "_eval-19700101-000000-3"]
    assert all(Path(m).is_dir() for m in made)


def test_an_empty_evaluation_record_takes_the_folders_made_for_it_along(tmp_path):
    """The folders made for an evaluation's output_dir (``missing_folders``) are removed with its
    empty record: only the record went, and a refused evaluation left new/out behind."""
    from hf_rcka.cli.records import drop_empty_record, eval_record_dir
    from hf_rcka.file_writes import missing_folders

    out = tmp_path / "new" / "out"
    made = missing_folders(out)
    record = eval_record_dir(str(out))
    drop_empty_record(record, made)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ what counts as a run (mutation-review tests)

def _args(out: Path, overwrite: bool = False) -> SimpleNamespace:
    return SimpleNamespace(do_train=True, output_dir=str(out), overwrite_output_dir=overwrite)


@pytest.mark.parametrize("left", ["checkpoint-2", "config.json", "_replacing/model.safetensors"])
def test_what_a_cut_short_run_leaves_counts_as_a_run(tmp_path, left):
    """Checkpoints alone (a run stopped before its export), a config.json alone (an export cut short
    after it), files pending in _replacing/: a new run beside them would resume or mix them."""
    out = tmp_path / "out"
    (out / left).parent.mkdir(parents=True, exist_ok=True)
    (out / left).mkdir() if left.startswith("checkpoint-") else (out / left).write_text('{"model_type": "resnet"}')
    said = "holds only checkpoints whose save was cut short" if left == "checkpoint-2" else "already holds a model"
    with pytest.raises(RecipeError, match=said):  # an empty checkpoint folder: a save cut short at its start
        check_output_dir(_args(out), None)


def test_an_empty_staging_folder_or_a_state_file_alone_is_no_run(tmp_path):
    out = tmp_path / "out"
    (out / "_replacing").mkdir(parents=True)
    (out / "all_results.json").write_text("{}")
    check_output_dir(_args(out), None)  # nothing to replace: no --overwrite_output_dir needed
    _fake_run(out / "first", [2], finished=True, tag="run 1")
    (out / "first" / "model.safetensors").unlink()  # the state saved after a model, without the model
    from hf_rcka.cli.output_folder import _finished

    assert not _finished(out / "first") and not _finished(out / "_replacing")


def test_resuming_names_this_folders_checkpoint_however_the_path_is_written(tmp_path, monkeypatch):
    """A relative resume path against an absolute output_dir is still this folder's checkpoint."""
    from hf_rcka.cli.output_folder import resumes_in

    out = tmp_path / "out"
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resumes_in(str(out), "out/checkpoint-2") and resumes_in("out", str(out / "checkpoint-2"))
    assert later_checkpoints(str(out), "out/checkpoint-2") == ["checkpoint-4"]
    other = tmp_path / "other" / "checkpoint-1"
    other.mkdir(parents=True)
    assert later_checkpoints(str(out), str(other)) == [], "another folder's checkpoint has no later ones here"


def test_an_abandoned_branch_keeps_the_recipe_and_the_runs_own_records(tmp_path):
    out = tmp_path / "out"
    _fake_run(out, [2, 4], finished=True, tag="run")
    (out / "distill_config.yaml").write_text("recipe")
    set_aside_abandoned_branch(str(out), str(out / "checkpoint-2"))
    assert (out / "distill_config.yaml").read_text() == "recipe" and (out / "checkpoint-2").is_dir()
    assert (out / REPLACED / "checkpoint-4").is_dir() and (out / REPLACED / "model.safetensors").exists()
    # a copy goes with the branch: a resume of its checkpoints is compared with what trained them
    assert (out / REPLACED / "distill_config.yaml").read_text() == "recipe"


def test_an_abandoned_branch_keeps_the_folder_its_record_is_read_from(tmp_path):
    """The record's relative paths are read from the folder the run ran in (_working_dir.json): a
    branch set aside with the recipe alone read them from wherever its resume was launched."""
    out = tmp_path / "out"
    _fake_run(out, [2, 4], finished=True, tag="run")
    (out / "distill_config.yaml").write_text("recipe")
    (out / "_working_dir.json").write_text('{"working_dir": "/where/it/ran"}')
    set_aside_abandoned_branch(str(out), str(out / "checkpoint-2"))
    assert (out / REPLACED / "_working_dir.json").read_text() == '{"working_dir": "/where/it/ran"}'
    assert (out / "_working_dir.json").exists()


def test_a_later_checkpoint_cut_short_before_its_weights_is_deleted_and_the_record_stays(tmp_path):
    """Nothing set aside (a later checkpoint that held no weights is deleted): no branch gets a copy
    of the records, and the resume goes on."""
    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="run 1")
    set_aside_previous_run(str(out))
    _fake_run(out, [5], finished=False, tag="run 2")
    set_aside_previous_run(str(out))  # _replaced/ and _replaced/_unfinished/ both keep more than leftovers
    _fake_run(out, [2], finished=False, tag="run 3")
    (out / "distill_config.yaml").write_text("recipe")
    (out / "checkpoint-4").mkdir()  # cut short before its weights
    assert set_aside_abandoned_branch(str(out), str(out / "checkpoint-2")) is None
    assert not (out / "checkpoint-4").exists() and (out / "distill_config.yaml").read_text() == "recipe"


def test_a_branch_put_back_brings_back_the_record_its_resume_rewrote(tmp_path):
    """A resume refused at its first step (out of memory) put the later checkpoints back, but the
    record stayed as the refused resume rewrote it: a resume of checkpoint-4 was then compared with
    settings it never trained with, and told to resume with them."""
    from hf_rcka.cli.output_folder import put_back

    out = tmp_path / "out"
    _fake_run(out, [2, 4], finished=True, tag="run")
    (out / "distill_config.yaml").write_text("recipe")
    moved = set_aside_abandoned_branch(str(out), str(out / "checkpoint-2"))
    (out / "distill_config.yaml").write_text("the resume's recipe")  # written as training begins
    put_back(str(out), moved, parked=False)
    assert (out / "distill_config.yaml").read_text() == "recipe" and (out / "checkpoint-4").is_dir()


def test_a_failed_attempts_leftovers_never_push_out_a_run_that_can_be_resumed(tmp_path):
    """Run 1 finished and was replaced by run 2, which stopped with a checkpoint and was replaced in
    turn (into _unfinished/); run 3's first save was cut short by a full disk, and its retry set
    run 3's leftovers aside over run 2, whose checkpoint was the only way to continue it."""
    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="run 1")
    set_aside_previous_run(str(out))
    _fake_run(out, [4], finished=False, tag="run 2")
    assert set_aside_previous_run(str(out)) == str(out / REPLACED / UNFINISHED)
    (out / "checkpoint-2").mkdir()  # run 3: the weights written, the state not
    (out / "checkpoint-2" / "model.safetensors").write_text("run 3")
    (out / "config.json").write_text('{"model_type": "resnet"}')
    assert set_aside_previous_run(str(out)) == str(out / REPLACED / "_leftovers")  # weights are kept
    assert (out / REPLACED / "model.safetensors").read_text() == "run 1"
    assert (out / REPLACED / UNFINISHED / "checkpoint-4" / "tag").read_text() == "run 2"
    assert (out / REPLACED / "_leftovers" / "checkpoint-2" / "model.safetensors").read_text() == "run 3"
    (out / "checkpoint-2").mkdir()  # run 4: cut short before its weights
    (out / "config.json").write_text('{"model_type": "resnet"}')
    assert set_aside_previous_run(str(out)) is None
    assert not (out / "checkpoint-2").exists() and not (out / "_replacing").exists()
    assert (out / REPLACED / "_leftovers" / "checkpoint-2" / "model.safetensors").read_text() == "run 3"
    (out / "checkpoint-5").mkdir()  # run 5: weights cut short, beside an export cut short (a model, no state)
    (out / "checkpoint-5" / "model.safetensors").write_text("r5")
    (out / "model.safetensors").write_text("\x10")
    assert set_aside_previous_run(str(out)) == str(out / REPLACED / "_leftovers-2"), "the earlier leftovers went"
    assert (out / REPLACED / "_leftovers" / "checkpoint-2" / "model.safetensors").read_text() == "run 3"
    assert (out / REPLACED / UNFINISHED / "checkpoint-4" / "tag").read_text() == "run 2", "a whole checkpoint went"
    (out / "checkpoint-7").mkdir()  # no weights, but a card a user may have written in
    (out / "README.md").write_text("# my notes\n")
    assert set_aside_previous_run(str(out)) == str(out / REPLACED / "_leftovers-3")
    (out / "checkpoint-2").mkdir()  # with room in _unfinished/ (nothing resumable there) they go there
    (out / "checkpoint-2" / "model.safetensors").write_text("run 6")
    shutil.rmtree(out / REPLACED / UNFINISHED / "checkpoint-4")
    assert set_aside_previous_run(str(out)) == str(out / REPLACED / UNFINISHED)


@pytest.mark.parametrize("state", [None, "", '{"global_step": 6, "log_hist'])
def test_later_checkpoints_cut_short_are_no_branch_to_set_aside_with_the_model(tmp_path, state):
    """A finished run (which replaced run X, kept in _replaced/) was extended and a full disk cut its
    next checkpoint short (no trainer_state.json, or one left empty or partial); the retry resuming
    checkpoint-4 moved the finished run's model out with the cut-short checkpoint, as a finished
    run that pushed X out of _replaced/ and was deleted."""
    from hf_rcka.trainer.checkpoint_folders import written_whole

    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="run X")
    set_aside_previous_run(str(out))
    _fake_run(out, [2, 4], finished=True, tag="run F")
    cut = out / "checkpoint-6"
    cut.mkdir()
    (cut / "model.safetensors").write_text("cut")
    if state is not None:
        (cut / "trainer_state.json").write_text(state)
    assert not written_whole(cut) and written_whole(out / "checkpoint-4")
    check_output_dir(SimpleNamespace(do_train=True, output_dir=str(out), overwrite_output_dir=False),
                     str(out / "checkpoint-4"))  # nothing whole after the resumed checkpoint: not refused
    set_aside_abandoned_branch(str(out), str(out / "checkpoint-4"))
    assert (out / REPLACED / "model.safetensors").read_text() == "run X"
    assert (out / "model.safetensors").read_text() == "run F", "the resumed leg's model was moved out"
    assert not cut.exists()


def test_a_whole_later_checkpoint_is_a_branch_set_aside_with_the_model(tmp_path):
    """The other side of the rule above: a later checkpoint written whole is an abandoned branch, and
    the model beside it goes with it."""
    out = tmp_path / "out"
    _fake_run(out, [2, 4], finished=True, tag="run F")
    assert set_aside_abandoned_branch(str(out), str(out / "checkpoint-2")) == str(out / REPLACED)
    assert (out / REPLACED / "model.safetensors").read_text() == "run F"
    assert (out / REPLACED / "checkpoint-4" / "tag").read_text() == "run F" and (out / "checkpoint-2").exists()


def test_a_readme_that_only_mentions_hf_rcka_is_the_users_not_a_card(tmp_path):
    """Only front matter with the hf_rcka tag makes a README.md a card of hf_rcka's: a project's own
    notes that mention hf_rcka were taken for a card, and the run's card overwrote them."""
    args = SimpleNamespace(output_dir=str(tmp_path / "proj"), overwrite_output_dir=False, do_train=True)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "README.md").write_text("# My notes on hf_rcka runs\n---\n")
    with pytest.raises(RecipeError, match="holds README.md, which no run of hf_rcka wrote"):
        check_output_dir(args, None)


def test_a_resumed_run_keeps_one_copy_of_an_unchanged_earlier_card(tmp_path):
    """A card identical to the kept _README.earlier.md is no new version: no _README.earlier-2.md."""
    from hf_rcka.cli.output_folder import drop_stale_export

    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="run 1")
    card = "---\ntags:\n- hf_rcka\n---\nrun 1\n"
    (out / "_README.earlier.md").write_text(card)
    (out / "README.md").write_text(card)
    drop_stale_export(str(out))
    assert sorted(p.name for p in out.glob("_README.earlier*")) == ["_README.earlier.md"]


@pytest.mark.parametrize("where", ["_replacing", f"{REPLACED}/_leftovers"])
def test_the_staging_and_leftovers_folders_may_not_be_links_either(tmp_path, where):
    """The existing test covers _replaced and _replaced/_unfinished only: a link at _replacing
    moved the run's files out of output_dir, into the folder the link points to."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    _fake_run(out, [2], finished=True, tag="run 1")
    elsewhere.mkdir()
    (out / where).parent.mkdir(parents=True, exist_ok=True)
    (out / where).symlink_to(elsewhere, target_is_directory=True)
    args = SimpleNamespace(do_train=True, output_dir=str(out), overwrite_output_dir=True)
    with pytest.raises(RecipeError, match=f"{where} is a symbolic link: with overwrite_output_dir"):
        check_output_dir(args, None)


def test_a_run_an_earlier_killed_attempt_parked_is_kept_by_a_run_that_replaces_nothing(tmp_path, capsys):
    """An attempt killed at its first batch (the OOM killer) left run A in _replaced/ and run Z in
    _pushed_out/; the user moved A back and resumed it, and that resume, which set nothing aside,
    deleted Z at its first step. A run that takes the killed attempt's place still deletes it."""
    from hf_rcka.cli.output_folder import PUSHED_OUT

    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=2) == 0  # Z
    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2, seed=3) == 0  # A; Z in _replaced/
    z = (out / REPLACED / "model.safetensors").read_bytes()
    set_aside_previous_run(str(out))  # what the killed attempt had done: A into _replaced/, Z pushed out
    for entry in list((out / REPLACED).iterdir()):  # the user moves A back by hand
        shutil.move(str(entry), str(out / entry.name))
    (out / REPLACED).rmdir()
    capsys.readouterr()
    assert _run(tmp_path, "--resume_from_checkpoint", "true", max_steps=4, seed=3) == 0
    assert (out / PUSHED_OUT / "model.safetensors").read_bytes() == z, "the resume deleted the pushed-out run"
    said = " ".join(capsys.readouterr().err.split())
    assert f"{out / PUSHED_OUT} holds the run an attempt killed before its first step pushed out" in said
    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2) == 0  # replaces the resumed run
    assert not (out / PUSHED_OUT).exists()


def test_a_run_an_earlier_killed_attempt_parked_is_not_put_back_by_a_later_refusal(tmp_path):
    """A run killed between its set-aside and its first step leaves the run it pushed out in
    _pushed_out/: a later refused run that pushed nothing out put that one back in its own place
    (a finished run in _replaced/_unfinished/, say)."""
    from hf_rcka.cli.output_folder import PUSHED_OUT, parked_run, put_back

    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="run B")
    _fake_run(out / PUSHED_OUT, [2], finished=True, tag="run S")  # the killed attempt's
    before = parked_run(str(out))
    moved = set_aside_previous_run(str(out))
    assert moved == str(out / REPLACED) and parked_run(str(out)) == before, "this set-aside parked nothing"
    put_back(str(out), moved, parked=False)
    assert (out / "checkpoint-2" / "tag").read_text() == "run B" and not (out / REPLACED).exists()
    assert (out / PUSHED_OUT / "checkpoint-2" / "tag").read_text() == "run S"


def test_a_set_aside_pushes_out_a_run_while_a_killed_attempts_run_waits_parked(tmp_path):
    """_pushed_out/ left by a killed attempt: the next set-aside that pushes a run out parks that one instead
    (os.replace onto the non-empty folder would fail), and parked_run tells the two apart."""
    from hf_rcka.cli.output_folder import PUSHED_OUT, parked_run

    out = tmp_path / "out"
    _fake_run(out / REPLACED, [2], finished=False, tag="old")
    _fake_run(out / PUSHED_OUT, [2], finished=True, tag="killed attempt's")
    _fake_run(out, [4], finished=True, tag="new")  # finished: pushes 'old' out of _replaced/
    before = parked_run(str(out))
    set_aside_previous_run(str(out))
    assert parked_run(str(out)) not in (None, before), "this set-aside parked a run"
    assert (out / REPLACED / "model.safetensors").read_text() == "new"
    assert (out / PUSHED_OUT / "checkpoint-2" / "tag").read_text() == "old"


def _rmtree_refused_for(monkeypatch, folder: Path) -> None:
    """shutil.rmtree fails for ``folder``, as for one holding a folder the user may not write (root ignores chmod)."""
    import errno

    rmtree = shutil.rmtree

    def refused(path, *args, **kwargs):
        if Path(path) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder / "checkpoint-2" / "tag"))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", refused)


def test_a_pushed_out_run_that_cannot_be_deleted_does_not_stop_the_run(tmp_path, monkeypatch, capsys):
    """A read-only folder in the run pushed out of _replaced/ ended the new run after its first step,
    with no model saved, the pushed-out run half deleted."""
    from transformers import AutoModelForImageClassification

    from hf_rcka.cli.output_folder import PUSHED_OUT

    out = tmp_path / "out"
    _fake_run(out / REPLACED, [2], finished=True, tag="old")
    _fake_run(out, [4], finished=True, tag="new")  # finished: pushes 'old' out of _replaced/
    _rmtree_refused_for(monkeypatch, out / PUSHED_OUT)
    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert (f"could not delete {out / PUSHED_OUT}, the earlier run this one pushed out of {out / REPLACED} "
            "([Errno 13] Permission denied: ") in said and "delete it yourself" in said
    assert "deleted the earlier run this one pushed out" not in said  # it was not
    AutoModelForImageClassification.from_pretrained(out)
    assert (out / REPLACED / "model.safetensors").read_text() == "new"


def test_a_parked_run_that_cannot_be_deleted_is_moved_out_of_the_way(tmp_path, monkeypatch, caplog):
    """A killed attempt's _pushed_out/ that could not be deleted refused the run at its set-aside."""
    import logging

    from hf_rcka.cli.output_folder import PUSHED_OUT

    out = tmp_path / "out"
    _fake_run(out / REPLACED, [2], finished=False, tag="old")
    _fake_run(out / PUSHED_OUT, [2], finished=True, tag="killed attempt's")
    _fake_run(out, [4], finished=True, tag="new")
    _rmtree_refused_for(monkeypatch, out / PUSHED_OUT)
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert set_aside_previous_run(str(out)) == str(out / REPLACED)
    assert (out / PUSHED_OUT / "checkpoint-2" / "tag").read_text() == "old"
    assert (out / "_pushed_out-2" / "checkpoint-2" / "tag").read_text() == "killed attempt's"
    assert f"it is in {out / '_pushed_out-2'} now, delete it yourself" in caplog.text


def test_leftovers_that_cannot_be_deleted_are_kept_aside(tmp_path, monkeypatch, caplog):
    """A failed attempt's leftovers that could not be deleted refused the run at its set-aside."""
    import logging

    out = tmp_path / "out"
    _fake_run(out / REPLACED, [2], finished=True, tag="old")
    _fake_run(out / REPLACED / UNFINISHED, [3], finished=False, tag="unfinished")
    _fake_run(out, [], finished=False, tag="leftovers")
    (out / "config.json").write_text("{}")
    _rmtree_refused_for(monkeypatch, out / "_replacing")
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert set_aside_previous_run(str(out)) == str(out / REPLACED / "_leftovers")
    assert (out / REPLACED / "_leftovers" / "config.json").exists() and not (out / "_replacing").exists()
    assert (out / REPLACED / "model.safetensors").read_text() == "old"
    assert "could not delete a failed attempt's leftovers" in caplog.text


def test_a_folder_the_refused_run_wrote_gives_way_to_the_runs_own(tmp_path):
    """put_back over a folder of the same name that the refused run made (its runs/ logs)."""
    from hf_rcka.cli.output_folder import put_back

    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="B")
    (out / "runs" / "old").mkdir(parents=True)
    (out / "runs" / "old" / "e").write_text("B")
    moved = set_aside_previous_run(str(out))
    (out / "runs" / "new").mkdir(parents=True)
    (out / "runs" / "new" / "e").write_text("refused")
    put_back(str(out), moved, parked=False)
    assert (out / "runs" / "old" / "e").read_text() == "B" and not (out / "runs" / "new").exists()
    assert (out / "checkpoint-2" / "tag").read_text() == "B"


def test_a_run_that_ended_training_without_a_step_is_not_put_back_over(tmp_path):
    """Resumed at its last step, a run trains none: on_train_end marks it as trained, so a failure
    after training (the final evaluation, the upload) leaves the replaced run where it is instead of
    moving it back over the new run's files."""
    from hf_rcka.cli.output_folder import Replacement

    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="old")
    moved = set_aside_previous_run(str(out))
    _fake_run(out, [4], finished=True, tag="new")
    replaced = Replacement(str(out), moved)
    replaced.on_train_end(SimpleNamespace(should_save=True), None, None)
    with pytest.raises(RuntimeError) as failed:
        with replaced.saying_where_it_went():
            raise RuntimeError("the final evaluation failed")
    assert failed.value.__notes__ == [f"the run this one was to replace is in {moved}"]
    assert (out / "model.safetensors").read_text() == "new" and not (out / "checkpoint-2").exists()


def test_a_model_config_or_pending_set_aside_beside_cut_short_checkpoints_is_not_called_nothing_to_resume(tmp_path,
                                                                                                         capsys):
    """Only a folder of cut-short checkpoints and nothing else is told that nothing can be resumed."""
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"\x10\x00")  # cut short, no trainer_state.json
    beside = {"model.safetensors": lambda: (out / "model.safetensors").write_bytes(b"\x10\x00"),
              "config.json": lambda: (out / "config.json").write_text(json.dumps({"model_type": "resnet"})),
              "_replacing": lambda: (out / "_replacing" / "checkpoint-4").mkdir(parents=True)}
    for name, make in beside.items():
        make()
        capsys.readouterr()
        assert _run(tmp_path, max_steps=2) == 2
        said = capsys.readouterr().err
        assert "already holds a model or checkpoints" in said and "whose save was cut short" not in said, name
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_a_set_aside_that_would_push_out_the_checkpoint_this_run_resumes_is_refused(tmp_path):
    """Resuming the replaced run's own checkpoint (``_replaced/checkpoint-2``) with overwrite_output_dir:
    setting the run here aside pushes the run kept in ``_replaced/`` out, and the checkpoint this run
    was to read went with it (into ``_pushed_out/``, deleted once training starts). Refused first,
    with the folder as it was."""
    out = tmp_path / "out"
    kept = out / REPLACED / "checkpoint-2"
    kept.mkdir(parents=True)
    (kept / "model.safetensors").write_bytes(b"the replaced run's weights")
    (kept / "trainer_state.json").write_text("{}")  # written whole: a checkpoint to resume
    for name in ("model.safetensors", "trainer_state.json"):  # the finished run here, to be set aside
        (out / name).write_text("the run here")
    with pytest.raises(RecipeError, match="holds a path this run reads"):
        set_aside_previous_run(str(out), keep=[str(kept)])
    assert (kept / "model.safetensors").read_bytes() == b"the replaced run's weights"
    assert (out / "model.safetensors").read_text() == "the run here"
    assert sorted(p.name for p in out.iterdir()) == [REPLACED, "model.safetensors", "trainer_state.json"]


def test_a_failed_attempts_leftovers_never_push_out_a_model_whose_export_was_cut_short(tmp_path):
    """Run 1's export was cut short (its model written, not the state saved after it) and a retry
    set it aside; that retry's first save was cut short too (no weights, no state). Its leftovers
    were ranked with run 1's model, both as holding nothing, so setting them aside pushed run 1's
    model out of _replaced/ (deleted once the next run trains)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("run 1")  # an export cut short: a model, no trainer_state.json
    (out / "config.json").write_text('{"model_type": "resnet"}')
    assert set_aside_previous_run(str(out)) == str(out / REPLACED)
    (out / "checkpoint-2").mkdir()  # run 2: its first save cut short before its weights
    (out / "checkpoint-2" / "training_args.bin").write_text("run 2")
    assert set_aside_previous_run(str(out)) == str(out / REPLACED / UNFINISHED)
    assert (out / REPLACED / "model.safetensors").read_text() == "run 1"
    assert not (out / "_pushed_out").exists()


def test_a_failed_write_of_output_dir_itself_is_said_as_one_of_output_dir(tmp_path, monkeypatch):
    """An error that names output_dir itself (its folder made again, or refused, mid-run) is about
    that folder as much as one naming a file in it: it was left to a traceback."""
    import errno

    import hf_rcka.cli.output_folder as output_folder
    from hf_rcka.cli.output_folder import write_error

    out = str(tmp_path / "out")
    monkeypatch.setattr(output_folder, "_free_bytes", lambda folder: 50 * 2**30)  # plenty left
    refused = PermissionError(errno.EACCES, "Permission denied", out)
    assert str(write_error(refused, out)) == f"cannot write {out}: Permission denied. Choose an output_dir you can write to"
    assert str(write_error(OSError(errno.EDQUOT, "Disk quota exceeded", out), out)).startswith(
        f"your disk quota for {out} is used up: a write failed")
    assert write_error(PermissionError(errno.EACCES, "Permission denied", str(tmp_path)), out) is None


@pytest.mark.parametrize("where", [REPLACED, "_replacing", "_pushed_out"])
def test_a_file_where_a_set_aside_folder_goes_is_refused_before_anything_loads(tmp_path, where):
    """A plain file named like a set-aside folder (not a link) is the user's: with overwrite_output_dir
    it was taken for a run kept there and moved (a file at _replaced went to _pushed_out), or the
    set-aside failed on it after the models had loaded."""
    out = tmp_path / "out"
    _fake_run(out, [2], finished=True, tag="run 1")
    (out / where).write_text("the user's file")
    args = SimpleNamespace(do_train=True, output_dir=str(out), overwrite_output_dir=True)
    with pytest.raises(RecipeError, match=f"{where} is not a folder: with overwrite_output_dir"):
        check_output_dir(args, None)
    assert (out / where).read_text() == "the user's file"
    assert (out / "model.safetensors").read_text() == "run 1"


def test_a_model_saved_without_checkpoints_is_not_sent_round_in_a_loop(tmp_path, capsys):
    """A run with save_strategy no (the digits recipes' setting) that finished, or was stopped during its
    final evaluation (the model saved, no checkpoint): rerunning it was told to pass --resume_from_checkpoint
    true, and the resume that there was "nothing to resume (a run stopped before its first checkpoint)"
    and to start without the flag, which was refused again: neither named --overwrite_output_dir."""
    assert _run(tmp_path, max_steps=2, save_strategy="no") == 0
    capsys.readouterr()
    assert _run(tmp_path, max_steps=2, save_strategy="no") == 2
    said = capsys.readouterr().err
    assert "--overwrite_output_dir true" in said and "--resume_from_checkpoint true" not in said, said
    assert _run(tmp_path, "--resume_from_checkpoint", "true", max_steps=2, save_strategy="no") == 2
    said = capsys.readouterr().err
    assert "--overwrite_output_dir true" in said and "stopped before its first checkpoint" not in said, said


def test_a_signal_between_the_set_aside_and_training_puts_the_replaced_run_back(tmp_path, monkeypatch, capsys):
    """A Ctrl-C after the trainer was built and before training began (the precision line, the recorded
    teacher's check, which reads every teacher weight) left the run --overwrite_output_dir set aside in
    _replaced/, out of its folder, and the message named no place for it."""
    import hf_rcka.cli.job as job

    out = tmp_path / "out"
    assert _run(tmp_path, max_steps=2) == 0
    trained = (out / "model.safetensors").read_bytes()

    def signal_at_the_precision_line(args):
        raise Interrupted(signal.SIGINT)

    capsys.readouterr()
    monkeypatch.setattr(job, "_precision_line", signal_at_the_precision_line)
    assert _run(tmp_path, "--overwrite_output_dir", "true", max_steps=2) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith(f"(the run this one was to replace is back in {out})"), line
    assert (out / "model.safetensors").read_bytes() == trained and not (out / REPLACED).exists()
