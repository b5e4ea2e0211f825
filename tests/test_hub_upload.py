"""The CLI's Hub upload, through a fake Hub: what is published, how often, and what a failed upload leaves."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import CommitInfo
from huggingface_hub.utils import filter_repo_objects

from conftest import pixel_dataset, processor, tiny_resnet
from hf_rcka import DistillationTrainer, DistillationTrainingArguments
from hf_rcka.cli.main import main
from hf_rcka.cli.records import eval_record_dir
from hf_rcka.trainer.hub_pushes import PUBLISHED_RESULTS

TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 12, 16, 20], "depths": [1, 1, 1, 1], "layer_type": "basic"}
TOKEN = "hf_notARealTokenButSecret123"
TRAINER_IGNORES = ["_*", "checkpoint-*"]  # what Trainer.push_to_hub leaves out of every upload
# what the final upload deletes from the repository, in the printed command that stands for it
DELETES = " ".join(f"--delete {shlex.quote(p)}" for p in PUBLISHED_RESULTS)


class FakeHub:
    """transformers' shared HfApi: an upload copies the folder (minus its ignore patterns) into a commit."""

    def __init__(self, root: Path, fail: Exception | None = None):
        self.root, self.fail, self.commits, self.tokens, self.kwargs = root, fail, [], [], []
        self.repo_files: set[str] = set()  # what the repository holds after the commits so far
        self.deletions: list[tuple[int, list[str]]] = []  # (uploads before it, deleted names)
        self.branches: list[tuple] = []  # (repo_id, branch, exist_ok, token) of each create_branch

    def list_repo_files(self, repo_id, revision=None, token=None):
        return sorted(self.repo_files)

    def create_commit(self, repo_id, operations, commit_message=None, run_as_future=False, **kwargs):
        names = [op.path_in_repo for op in operations]
        self.repo_files -= set(names)
        self.deletions.append((len(self.commits), names))
        info = CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{len(self.deletions):040x}",
                          commit_message=commit_message, commit_description="", oid=f"{len(self.deletions):040x}")
        if not run_as_future:  # as HfApi: a Future only when asked for one
            return info
        done = concurrent.futures.Future()
        done.set_result(info)
        return done

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": f"someone/{repo_id}"})()

    def create_branch(self, repo_id, *, branch, exist_ok=False, token=None, **kwargs):
        self.branches.append((repo_id, branch, exist_ok, token))

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), commit_message=None, run_as_future=False, **kwargs):
        self.tokens.append(kwargs.get("token"))
        self.kwargs.append(kwargs)
        if self.fail is not None and run_as_future:  # HfApi's background upload fails in its future
            failed = concurrent.futures.Future()
            failed.set_exception(self.fail)
            return failed
        if self.fail is not None:
            raise self.fail
        target = self.root / f"commit-{len(self.commits)}"
        # huggingface_hub's own filter: patterns match each file's whole path ("notes" leaves notes/a.txt in)
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, ignore_patterns=list(ignore_patterns) or None):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder_path, name), target / name)
        target.mkdir(parents=True, exist_ok=True)
        self.commits.append((repo_id, commit_message, target))
        prefix = str(kwargs.get("path_in_repo") or "").strip("/")
        self.repo_files |= {str(Path(prefix, p.relative_to(target))) for p in target.rglob("*") if p.is_file()}
        if run_as_future:
            done = concurrent.futures.Future()
            done.set_result(target)
            return done
        oid = f"{len(self.commits):040x}"
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message=commit_message,
                          commit_description="", oid=oid)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import transformers.trainer
    from huggingface_hub import constants

    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: fake)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no login on this machine
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("hf_rcka.cli.model_sources.whoami", lambda token: {"name": "someone"})
    return fake


def _run(tmp_path: Path, **changes) -> int:
    recipe = {
        "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET, "image_size": 16,
        "dataset_name": "builtin:digits", "no_aug": True, "max_train_samples": 20, "max_eval_samples": 10,
        "per_device_train_batch_size": 5, "per_device_eval_batch_size": 5, "report_to": "none", "use_cpu": True,
        "output_dir": str(tmp_path / "out"), "max_steps": 2, "save_strategy": "no", "push_to_hub": True,
        "hub_model_id": "tiny-student", "hub_strategy": "end", "hub_token": TOKEN,
        "student_accuracy_check": "warn", **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return main([str(path)])


@pytest.mark.parametrize("strategy", ["end", "every_save", "checkpoint"])
def test_the_final_upload_comes_once_with_the_card_and_no_file_holds_the_token(tmp_path, hub, strategy):
    """The token was written into distill_config.yaml and pickled into training_args.bin (by our
    save and by transformers' checkpoint pushes), and uploaded; save_model also pushed a commit
    before the final evaluation. No local-only file ("_" names) is uploaded."""
    assert _run(tmp_path, hub_strategy=strategy, save_strategy="steps", save_steps=1) == 0
    messages = [message for _, message, _ in hub.commits]
    assert messages[-1] == "End of training" and "Model save" not in messages
    if strategy == "end":
        assert messages == ["End of training"]
    else:  # transformers' checkpoint pushes at steps 1 and 2 (the checkpoint strategy pushes the folder apart)
        assert len(messages) > 2 and all(m.startswith("Training in progress, step") for m in messages[:-1]), messages
    assert {repo for repo, _, _ in hub.commits} == {"someone/tiny-student"}
    final = hub.commits[-1][2]
    assert {"model.safetensors", "README.md", "distill_config.yaml", "training_args.bin", "all_results.json"} <= {
        p.name for p in final.iterdir()}
    for _, message, uploaded in hub.commits:
        for file in uploaded.rglob("*"):
            if file.is_file():
                assert TOKEN.encode() not in file.read_bytes(), f"{message}: {file.name} holds the Hub token"
                # local only (the run's working folder, a path of the user's machine): a checkpoint
                # folder's push uploads it whole, and the record's copy there held it
                assert not file.name.startswith("_"), f"{message}: {file.relative_to(uploaded)} is uploaded"
    assert "hub_token" not in yaml.safe_load((final / "distill_config.yaml").read_text())
    assert torch.load(final / "training_args.bin", weights_only=False).hub_token is None
    assert "eval_accuracy" in (final / "all_results.json").read_text(), "uploaded before the final evaluation"
    assert hub.tokens and all(token == TOKEN for token in hub.tokens), "every upload uses the recipe's token"
    assert "HF_TOKEN" not in os.environ, "the process's own token (a notebook's login) is left alone"


@pytest.mark.parametrize("strategy", ["end", "every_save"])
def test_a_failed_upload_is_one_line_that_keeps_the_results_and_says_how_to_upload(tmp_path, hub, capsys, strategy):
    hub.fail = ConnectionError("Connection reset by peer")  # every_save: the checkpoints' uploads failed too
    assert _run(tmp_path, hub_strategy=strategy, save_strategy="steps", save_steps=1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    out = tmp_path / "out"
    assert err[-1] == (
        "error: the upload to the Hub failed (ConnectionError: Connection reset by peer); the trained model, its card "
        f"and results are saved in {out}: upload them with `hf upload someone/tiny-student {out} . "
        f"--exclude '_*' --exclude 'checkpoint-*' {DELETES}` (with the recipe's hub_token: add --token, or set "
        "HF_TOKEN; this machine has no Hugging Face login)")
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
    assert "eval_accuracy" in (out / "all_results.json").read_text()


def _hf_upload(monkeypatch, command: str) -> dict:
    """Run a printed ``hf upload`` command through huggingface_hub's own CLI; the keywords it gives
    ``upload_folder``."""
    import huggingface_hub.cli.upload as cli_upload
    from huggingface_hub.cli.hf import app

    sent: dict = {}

    class Api:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, **kwargs):
            sent.update(kwargs)
            return "https://huggingface.co/someone/tiny-student/commit/1"

    monkeypatch.setattr(cli_upload, "get_hf_api", lambda token=None: Api())
    words = shlex.split(command)
    assert words[:2] == ["hf", "upload"]
    app(words[1:], standalone_mode=False)
    return sent


def test_the_printed_upload_command_sends_what_the_final_upload_would(tmp_path, hub, capsys, monkeypatch):
    """The command a failed upload prints left out the final upload's delete patterns: run into a
    repository that held another model, it put the new weights beside that model's eval_results.json
    and cka.png (and its single model.safetensors beside new sharded weights, which from_pretrained
    loads first), where the upload it stands for removes them."""
    hub.fail = ConnectionError("Connection reset by peer")
    assert _run(tmp_path) == 2
    command = capsys.readouterr().err.strip().splitlines()[-1].split("upload them with `", 1)[1].split("`")[0]
    sent = _hf_upload(monkeypatch, command)
    assert sent["folder_path"] == str(tmp_path / "out") and sent["repo_id"] == "someone/tiny-student"
    assert sent["ignore_patterns"] == TRAINER_IGNORES
    assert sent["delete_patterns"] == hub.kwargs[-1]["delete_patterns"], "it deletes what the failed upload deleted"


@pytest.mark.parametrize("strategy", ["end", "every_save"])
def test_a_student_at_chance_is_not_uploaded(tmp_path, hub, capsys, strategy):
    """It was shared on the Hub with its card like any other run. The command that would upload it
    leaves out what the upload does (the set-aside runs, checkpoints), and checkpoint pushes are said."""
    assert _run(tmp_path, student_accuracy_check="error", learning_rate=0.0, hub_strategy=strategy,
                save_strategy="steps", save_steps=1, hub_revision="v2") == 2
    assert [message for _, message, _ in hub.commits if message == "End of training"] == []
    out = tmp_path / "out"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the trained student is at chance on the evaluation set (eval_accuracy ")
    pushed = " (its checkpoints' pushes during training put their weights there, without this card)" \
        if strategy == "every_save" else ""
    assert f"saved in {out} with its card and results, and not uploaded to the Hub{pushed}: `hf upload " \
           f"someone/tiny-student {out} . --revision v2 --exclude '_*' --exclude 'checkpoint-*' {DELETES}` would upload it (with the recipe's " \
           "hub_token: add --token" in last
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()


@pytest.mark.parametrize("revision", [None, "v2"])
def test_a_pushing_run_ends_by_saying_its_commit_and_how_to_load_it_from_the_hub(tmp_path, hub, capsys, revision):
    """The run said where the local folder was and nothing of the upload: not the repository, not the
    commit that holds this run's files, not the branch that from_pretrained needs."""
    assert _run(tmp_path, hub_revision=revision) == 0
    said = [line.split(" INFO hf_rcka: ", 1)[1] for line in capsys.readouterr().err.splitlines()
            if " INFO hf_rcka: " in line]
    assert said[-2].startswith(f"the trained student is in {tmp_path / 'out'}")
    branch = f", revision={revision!r}" if revision else ""
    assert said[-1] == (f"uploaded to the Hub: https://huggingface.co/someone/tiny-student/commit/{len(hub.commits):040x}; "
                        f"load it with from_pretrained('someone/tiny-student'{branch})")
    assert hub.kwargs[-1]["revision"] == revision
    # an upload does not create its branch: every push to a new one failed, the final one after the run
    assert hub.branches == ([("someone/tiny-student", revision, True, TOKEN)] if revision else [])


def test_the_upload_sends_the_folder_as_saved_and_writes_nothing_again(tmp_path, hub, monkeypatch):
    """Trainer.push_to_hub saved the model and wrote the card a second time before uploading: a
    full disk there cut the finished model short, and the error then called it saved."""
    from hf_rcka.trainer.trainer import DistillationTrainer

    saves, save = [], DistillationTrainer.save_model

    def counted(self, output_dir=None, _internal_call=False):
        saves.append(output_dir)
        return save(self, output_dir, _internal_call)

    monkeypatch.setattr(DistillationTrainer, "save_model", counted)
    assert _run(tmp_path) == 0
    assert saves == [None], "the final model is saved once"
    out, uploaded = tmp_path / "out", hub.commits[-1][2]
    for name in ("model.safetensors", "README.md", "config.json"):
        assert (uploaded / name).read_bytes() == (out / name).read_bytes()
    assert "\n# tiny-student\n" in (out / "README.md").read_text(), "the card names the model as its repository"


def test_evaluation_records_stay_local(tmp_path):
    """An eval-only run's record (its recipe, local paths, other data) is no part of the published model."""
    record = os.path.relpath(eval_record_dir(str(tmp_path)), tmp_path)
    files = [f"{record}/eval_config.yaml", f"{record}/eval_results.json", "model.safetensors"]
    assert list(filter_repo_objects(files, ignore_patterns=TRAINER_IGNORES)) == ["model.safetensors"]


def test_the_ledger_of_unreadable_images_stays_local(tmp_path, hub):
    """It names local paths (/home/someone/data/...) and was uploaded next to the model."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        folder = tmp_path / "data" / "train" / label
        folder.mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "data" / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    assert _run(tmp_path, dataset_name=None, train_dir=str(tmp_path / "data" / "train"), train_val_split=0.25,
                max_train_samples=None, max_eval_samples=None) == 0
    ledger = tmp_path / "out" / "_skipped_images.tsv"
    assert "broken.png" in ledger.read_text()
    uploaded = {p.name for p in hub.commits[-1][2].rglob("*")}
    assert "README.md" in uploaded and not any("skipped_images" in name for name in uploaded)
    # where the run's relative paths were relative to: local, for later checks, never uploaded
    assert json.loads((tmp_path / "out" / "_working_dir.json").read_text()) == {"working_dir": os.getcwd()}
    assert "_working_dir.json" not in uploaded


def test_a_pushing_run_refuses_a_folder_with_files_no_run_wrote(tmp_path, hub, capsys):
    """Trainer uploads the whole output_dir: an image folder kept inside it, a .env and a user's notes
    were published beside the model, and the run ended well."""
    out = tmp_path / "out"
    (out / "data" / "train" / "cat").mkdir(parents=True)
    (out / "data" / "train" / "cat" / "0.png").write_bytes(b"png")
    (out / ".env").write_text("SECRET=1")
    (out / ".git").mkdir()  # a clone of the repository: huggingface_hub leaves it out itself
    (out / ".cache" / "huggingface").mkdir(parents=True)  # and its own upload cache, but no other cache
    (out / ".cache" / "pip").mkdir()
    assert _run(tmp_path) == 2
    err = capsys.readouterr().err
    assert "holds .cache/, .env, data/: no run of hf_rcka wrote them" in err and ".git" not in err
    assert hub.commits == [] and not (out / "model.safetensors").exists()
    assert _run(tmp_path, push_to_hub=False) == 0, "a run that uploads nothing may share the folder"


def test_the_final_upload_leaves_out_what_appeared_and_replaces_the_repository_s_stale_results(
        tmp_path, hub, monkeypatch, capsys):
    from hf_rcka.trainer.trainer import DistillationTrainer

    save = DistillationTrainer.save_model

    def and_a_note(self, output_dir=None, _internal_call=False):
        save(self, output_dir, _internal_call)
        Path(self.args.output_dir, "notes").mkdir(exist_ok=True)
        Path(self.args.output_dir, "notes", "todo.txt").write_text("private")

    monkeypatch.setattr(DistillationTrainer, "save_model", and_a_note)
    assert _run(tmp_path) == 0
    uploaded = hub.commits[-1][2]
    assert (uploaded / "model.safetensors").exists() and not (uploaded / "notes").exists()
    assert "left out of the upload: notes/, which appeared in" in capsys.readouterr().err
    # a first model's eval_results.json stayed beside a second model trained without evaluation
    deleted = hub.kwargs[-1]["delete_patterns"]
    kept = ["README.md", "last-checkpoint/model.safetensors", "model_int8.safetensors", "models/x.safetensors"]
    assert list(filter_repo_objects(["eval_results.json", "model.safetensors", "model-00001-of-00002.safetensors",
                                     *kept], allow_patterns=deleted)) == [
        "eval_results.json", "model.safetensors", "model-00001-of-00002.safetensors"]


def test_resuming_a_finished_run_with_checkpoint_pushes_is_refused(tmp_path, hub, capsys):
    """Each checkpoint's upload published the new weights beside the earlier export's card and results."""
    assert _run(tmp_path, save_strategy="steps", save_steps=1) == 0
    capsys.readouterr()
    assert _run(tmp_path, max_steps=4, resume_from_checkpoint=True, hub_strategy="every_save") == 2
    assert "with hub_strategy every_save: each checkpoint's upload would publish" in capsys.readouterr().err
    assert len(hub.commits) == 1
    assert _run(tmp_path, max_steps=4, resume_from_checkpoint=True) == 0  # hub_strategy end: one upload
    assert len(hub.commits) == 2
    # an earlier checkpoint's resume sets the export aside with the checkpoints after it: pushes are safe
    pushes = len(hub.commits)
    assert _run(tmp_path, max_steps=4, resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"),
                overwrite_output_dir=True, hub_strategy="every_save", save_steps=1, save_strategy="steps") == 0
    assert len(hub.commits) == pushes + 4, "three checkpoint pushes and the final upload"
    assert not any((commit / "README.md").exists() for _, _, commit in hub.commits[pushes:-1])


def test_a_first_checkpoint_push_removes_the_repository_s_earlier_card_and_results(tmp_path, hub):
    """Checkpoint pushes into a repository that held another model paired the new weights with its
    card and results until the final upload, and for good when the run stopped before it."""
    earlier = {"README.md", "eval_results.json", "all_results.json", "model.safetensors", "notes.md",
               "last-checkpoint/README.md"}
    hub.repo_files |= earlier
    assert _run(tmp_path, save_strategy="steps", save_steps=1, max_steps=3, hub_strategy="checkpoint") == 0
    assert hub.deletions == [(2, ["README.md", "all_results.json", "eval_results.json"])], \
        "once, after the first checkpoint's two uploads, and only what the output folder does not hold"
    assert {"notes.md", "last-checkpoint/README.md", "model.safetensors"} <= hub.repo_files
    assert "README.md" in hub.repo_files, "the final upload brings this run's card"


def _listing_fails_once(hub, monkeypatch) -> list:
    """Make the fake Hub's first listing fail; the list returned fills with what each call listed
    (the failed one as ``None``)."""
    listed, calls = hub.list_repo_files, []

    def flaky(*args, **kwargs):
        calls.append(None if not calls else listed(*args, **kwargs))
        if calls[-1] is None:
            raise OSError("connection reset")
        return calls[-1]

    monkeypatch.setattr(hub, "list_repo_files", flaky)
    return calls


def test_a_hub_that_cannot_list_the_repository_leaves_the_run_going(tmp_path, hub, monkeypatch, capsys):
    hub.repo_files |= {"README.md", "eval_results.json"}
    _listing_fails_once(hub, monkeypatch)
    assert _run(tmp_path, save_strategy="steps", save_steps=1, hub_strategy="every_save") == 0
    assert "could not remove the earlier model's card and results" in capsys.readouterr().err
    assert hub.deletions == [(2, ["README.md", "eval_results.json"])], "the second push tried again"


def test_a_failed_removal_commit_is_said_and_tried_again(tmp_path, hub, monkeypatch, capsys):
    """The removal's commit runs in the background: its failure was silent, and never tried again."""
    hub.repo_files |= {"README.md", "model.safetensors"}
    commit = hub.create_commit
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            failed = concurrent.futures.Future()
            failed.set_exception(ConnectionError("reset by peer"))
            return failed
        return commit(*args, **kwargs)

    monkeypatch.setattr(hub, "create_commit", fails_once)
    assert _run(tmp_path, save_strategy="steps", save_steps=1, max_steps=3, hub_strategy="every_save") == 0
    assert "could not remove the earlier model's card and results" in capsys.readouterr().err
    assert len(calls) == 2 and hub.deletions == [(2, ["README.md"])]


def test_a_repository_without_a_model_keeps_its_readme(tmp_path, hub):
    """A README.md written by the repository's owner describes no other weights: not removed."""
    hub.repo_files |= {"README.md", ".gitattributes"}
    assert _run(tmp_path, save_strategy="steps", save_steps=1, hub_strategy="every_save") == 0
    assert hub.deletions == []


def test_a_listing_retried_after_the_first_push_does_not_take_its_weights_for_an_earlier_model(
        tmp_path, hub, monkeypatch, capsys):
    """The first listing failed; the second found this run's own first push and removed the
    owner's README of a repository that had held no model."""
    hub.repo_files |= {"README.md", ".gitattributes"}
    calls = _listing_fails_once(hub, monkeypatch)
    assert _run(tmp_path, save_strategy="steps", save_steps=1, max_steps=3, hub_strategy="every_save") == 0
    assert len(calls) == 2 and "model.safetensors" in calls[1], "the retry listed the run's own weights"
    assert hub.deletions == []


def test_an_evaluation_only_run_says_that_it_uploads_nothing(tmp_path, hub, capsys, monkeypatch):
    """The resume line of a run interrupted in its final evaluation is an evaluation-only run: it
    skipped the recipe's push without a word."""
    assert _run(tmp_path, push_to_hub=False) == 0
    monkeypatch.setattr("hf_rcka.cli.model_sources.whoami", lambda token: pytest.fail("no upload, no Hub check"))
    capsys.readouterr()
    out = str(tmp_path / "out")
    assert _run(tmp_path, do_train=False, model_name_or_path=out, student_from_scratch=False) == 0
    assert "push_to_hub: an evaluation-only run uploads nothing" in capsys.readouterr().err
    assert hub.commits == []


@pytest.mark.parametrize("blocking", [True, False])
def test_push_to_hub_from_python_removes_the_earlier_model_s_results_and_weights(tmp_path, hub, blocking):
    """Trainer's upload deletes nothing: another model's eval_results.json stayed beside the new
    weights, and its single model.safetensors beside new sharded ones (which from_pretrained loads first)."""
    hub.repo_files |= {"README.md", "eval_results.json", "model-00001-of-00002.safetensors",
                       "model-00002-of-00002.safetensors", "model.safetensors.index.json", "notes.md"}
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=5, report_to="none", use_cpu=True,
        save_strategy="no", max_steps=1, push_to_hub=True, hub_model_id="tiny-student", hub_strategy="end",
        hub_token=TOKEN, teacher_accuracy_check="off")
    trainer = DistillationTrainer(model=tiny_resnet(), args=args, train_dataset=pixel_dataset(10),
                                  processing_class=processor(16))
    trainer.train()
    done = trainer.push_to_hub(blocking=blocking)
    if not blocking:
        done.result()
    assert [names for _, names in hub.deletions] == [
        ["eval_results.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
         "model.safetensors.index.json"]]
    assert hub.deletions[0][0] == len(hub.commits), "after the upload that brings the new weights"
    assert {"README.md", "model.safetensors", "notes.md"} <= hub.repo_files


def _teacher_recipe(tmp_path, **changes):
    r = {"model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET, "image_size": 16,
         "dataset_name": "builtin:digits", "no_aug": True, "max_train_samples": 20, "max_eval_samples": 10,
         "per_device_train_batch_size": 5, "per_device_eval_batch_size": 5, "report_to": "none", "use_cpu": True,
         "max_steps": 2, "save_strategy": "no", "student_accuracy_check": "warn", **changes}
    p = tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(r))
    return str(p)


def test_a_distilled_run_pushes_its_teacher_record_and_pushes_again_into_its_folder(tmp_path, hub, capsys):
    """teacher.json, which the export writes, was taken for a file no run wrote: left out of the
    upload with a warning, and the next pushing run into the folder was refused."""
    teacher = tmp_path / "teacher"
    assert main([_teacher_recipe(tmp_path, output_dir=str(teacher))]) == 0
    push = dict(push_to_hub=True, hub_model_id="tiny-student", hub_strategy="end", hub_token=TOKEN,
                teacher_model_name_or_path=str(teacher), losses=[{"name": "ce"}, {"name": "kd"}],
                teacher_accuracy_check="off", output_dir=str(tmp_path / "out"))
    assert main([_teacher_recipe(tmp_path, **push)]) == 0
    assert "left out of the upload" not in capsys.readouterr().err
    assert main([_teacher_recipe(tmp_path, **push, overwrite_output_dir=True)]) == 0


def test_a_record_run_again_in_place_reads_its_teacher_record_before_the_set_aside(tmp_path, capsys):
    """Rerun into its own folder, the record's teacher.json was moved aside before it was read; and a
    student-only run replacing a distilled one kept the old teacher.json beside its model."""
    teacher = tmp_path / "teacher"
    t = _teacher_recipe(tmp_path, output_dir=str(teacher))
    assert main([t]) == 0
    out = tmp_path / "out"
    assert main([_teacher_recipe(tmp_path, teacher_model_name_or_path=str(teacher), losses=[{"name": "ce"}, {"name": "kd"}],
                         teacher_accuracy_check="off", output_dir=str(out))]) == 0
    assert main([_teacher_recipe(tmp_path, output_dir=str(teacher), seed=7, overwrite_output_dir=True)]) == 0
    capsys.readouterr()
    assert main([str(out / "distill_config.yaml"), "--overwrite_output_dir", "true"]) == 0
    assert "other teacher weights" in capsys.readouterr().err
    assert main([_teacher_recipe(tmp_path, output_dir=str(out), overwrite_output_dir=True)]) == 0  # student alone
    assert not (out / "teacher.json").exists()


class _RecordingApi:
    """transformers' shared HfApi, recording create_commit's keywords."""

    def __init__(self):
        self.commits = []

    def create_commit(self, **kwargs):
        self.commits.append(kwargs)
        done = concurrent.futures.Future()
        done.set_result(None)
        return done


def _pusher(monkeypatch, tmp_path):
    import transformers.trainer

    api = _RecordingApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    args = SimpleNamespace(output_dir=str(tmp_path), hub_token="run-token", hub_revision="run-rev")
    return api, SimpleNamespace(args=args, hub_model_id="someone/tiny")


# HP5 (trainer/hub_pushes.py remove_earlier_model): the commit message says training is in progress
# during training only, and HP6: the commit runs in the background only when asked
@pytest.mark.parametrize("final, background", [(False, True), (True, True), (True, False)])
def test_the_removal_commit_says_whether_training_goes_on_and_runs_where_asked(tmp_path, monkeypatch, final, background):
    from hf_rcka.trainer.hub_pushes import remove_earlier_model

    api, trainer = _pusher(monkeypatch, tmp_path)
    remove_earlier_model(trainer, ["README.md", "model.safetensors", "eval_results.json", "notes.md"],
                         final=final, background=background)
    (commit,) = api.commits
    assert [op.path_in_repo for op in commit["operations"]] == ["README.md", "eval_results.json"]
    assert commit["commit_message"].startswith("Training in progress: ") is (not final)
    assert commit["run_as_future"] is background


# HP7 (trainer/hub_pushes.py remove_earlier_model): push_to_hub(token=..., revision=...) reaches the removal
def test_the_removal_commit_uses_the_token_and_revision_push_to_hub_was_given(tmp_path, monkeypatch):
    from hf_rcka.trainer.hub_pushes import remove_earlier_model

    api, trainer = _pusher(monkeypatch, tmp_path)
    remove_earlier_model(trainer, ["eval_results.json"], token="given-token", revision="given-rev", final=True)
    remove_earlier_model(trainer, ["eval_results.json"])
    assert [(c["token"], c["revision"]) for c in api.commits] == [("given-token", "given-rev"), ("run-token", "run-rev")]


# HP4 (trainer/hub_pushes.py remove_earlier_model): nothing stale, no commit (an empty commit on the Hub)
def test_nothing_stale_makes_no_commit(tmp_path, monkeypatch):
    from hf_rcka.trainer.hub_pushes import remove_earlier_model

    api, trainer = _pusher(monkeypatch, tmp_path)
    assert remove_earlier_model(trainer, ["model.safetensors", "notes.md", "last-checkpoint/README.md"]) is None
    assert api.commits == []


# HC1 (cli/hub_contents.py unpublishable_entries): a .py file is the model's own only beside an auto_map config
def test_a_python_file_in_a_folder_without_remote_code_is_refused(tmp_path):
    from hf_rcka.cli.hub_contents import unpublishable_entries

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    (tmp_path / "my_training_notes.py").write_text("API_KEY = 'secret'\n")
    assert unpublishable_entries(str(tmp_path)) == ["my_training_notes.py"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "acme", "auto_map": {"AutoModel": "m.Acme"}}))
    assert unpublishable_entries(str(tmp_path)) == []


# HC2 (cli/hub_contents.py upload_filters): a folder that appeared is left out with everything in it,
# as huggingface_hub's filter reads the patterns (a bare folder name matches no file inside it)
def test_the_final_upload_leaves_out_the_files_inside_a_folder_that_appeared():
    from huggingface_hub.utils import filter_repo_objects

    from hf_rcka.cli.hub_contents import upload_filters

    ignored = upload_filters(["notes/", "todo.txt"])["ignore_patterns"]
    files = ["model.safetensors", "notes/todo.txt", "notes/deep/a.txt", "todo.txt", "config.json"]
    assert list(filter_repo_objects(files, ignore_patterns=ignored)) == ["model.safetensors", "config.json"]


# HC3 (cli/hub_contents.py check_push_contents): an evaluation-only run uploads nothing: not refused
def test_an_evaluation_only_run_with_push_to_hub_is_not_refused_for_the_folders_other_files(tmp_path):
    from hf_rcka.cli.hub_contents import check_push_contents
    from hf_rcka.errors import RecipeError

    (tmp_path / "notes.txt").write_text("mine")
    args = SimpleNamespace(push_to_hub=True, do_train=False, output_dir=str(tmp_path), hub_strategy="every_save")
    check_push_contents(args, None)
    args.do_train = True
    with pytest.raises(RecipeError, match="holds notes.txt"):
        check_push_contents(args, None)


def test_the_hub_line_without_a_commit_url_names_the_endpoint_the_client_uploaded_to(monkeypatch):
    """A client that returns no commit URL: the line names the repository on the Hub the upload went
    to (a private HF_ENDPOINT), not huggingface.co."""
    from hf_rcka.cli.job import hub_line

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.example.org")
    assert hub_line("someone/tiny", "v2", None) == ("uploaded to the Hub: https://hub.example.org/someone/tiny; "
                                                     "load it with from_pretrained('someone/tiny', revision='v2')")
    commit = SimpleNamespace(commit_url="https://hub.example.org/someone/tiny/commit/ab")
    assert hub_line("someone/tiny", None, commit).startswith(f"uploaded to the Hub: {commit.commit_url}; ")


def test_a_named_hub_revision_is_made_as_a_branch_before_the_first_push(monkeypatch):
    """An upload to a branch does not create it: every push of a run naming a new hub_revision failed,
    the final one after the whole run."""
    import transformers

    from hf_rcka.trainer.hub_pushes import create_revision_branch

    calls = []
    api = SimpleNamespace(create_branch=lambda repo, **kwargs: calls.append((repo, kwargs)))
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    trainer = SimpleNamespace(hub_model_id="me/run", args=SimpleNamespace(hub_revision="exp", hub_token="tok"))
    create_revision_branch(trainer)
    assert calls == [("me/run", {"branch": "exp", "exist_ok": True, "token": "tok"})]
    calls.clear()
    trainer.args.hub_revision = None
    create_revision_branch(trainer)
    assert calls == []


def test_the_branch_is_made_with_the_token_push_to_hub_was_given(monkeypatch):
    """init_hf_repo(token=...) (push_to_hub's token) of a run without hub_token made the branch with no
    token, the upload's own unused: refused for a repository only that token may write."""
    import transformers

    from hf_rcka.trainer.hub_pushes import create_revision_branch

    calls = []
    api = SimpleNamespace(create_branch=lambda repo, **kwargs: calls.append(kwargs["token"]))
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    trainer = SimpleNamespace(hub_model_id="me/run", args=SimpleNamespace(hub_revision="exp", hub_token=None))
    create_revision_branch(trainer, token="given")
    trainer.args.hub_token = "run's"
    create_revision_branch(trainer)
    assert calls == ["given", "run's"]


# H1 (cli/hub_contents.py _hub_cache_only): only a folder named .cache is huggingface_hub's own upload cache
def test_a_folder_other_than_cache_holding_a_huggingface_folder_is_refused(tmp_path):
    """XDG_CACHE_HOME set to a folder inside output_dir put huggingface_hub's home (HF_HOME, its token
    and downloaded models) at cache/huggingface: taken for the upload cache huggingface_hub leaves out,
    the upload would publish it."""
    from hf_rcka.cli.hub_contents import unpublishable_entries

    (tmp_path / "cache" / "huggingface").mkdir(parents=True)
    (tmp_path / "cache" / "huggingface" / "token").write_text("hf_secret")
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    assert unpublishable_entries(str(tmp_path)) == ["cache/"]


# H2-H4 (cli/hub_contents.py check_push_contents, _exported): a finished run is one with a card or results;
# a checkpoint of another folder replaces the run here (set aside whole), so its pushes are safe
@pytest.mark.parametrize("export", ["README.md", "all_results.json"])
def test_resuming_a_run_that_left_a_card_or_results_with_checkpoint_pushes_is_refused(tmp_path, export):
    """A run killed between its results and its card (or with a card and no results) left half an
    export: each checkpoint push of its resume published it beside the new weights."""
    from hf_rcka.cli.hub_contents import check_push_contents
    from hf_rcka.errors import RecipeError

    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / export).write_text("{}")
    args = SimpleNamespace(push_to_hub=True, do_train=True, output_dir=str(out), hub_strategy="every_save")
    with pytest.raises(RecipeError, match="resuming the finished run .* with hub_strategy every_save"):
        check_push_contents(args, str(out / "checkpoint-2"))
    other = tmp_path / "other" / "checkpoint-2"  # another folder's checkpoint: the run here is set aside whole
    other.mkdir(parents=True)
    check_push_contents(args, str(other))


# H6, H7 (cli/hub_contents.py unpublishable_entries): what Trainer's uploads leave out is never refused, and a
# config.json that is not a JSON mapping does not end the check in a traceback
def test_entries_trainer_never_uploads_and_a_broken_config_are_not_refusals(tmp_path):
    """The runs an overwrite set aside (_replaced/) and a user's _notes are in no upload (Trainer leaves
    out '_*'): a pushing run over them was refused. A config.json cut short by a killed save raised
    JSONDecodeError from the check, a traceback instead of the run's own refusal of what is foreign."""
    from hf_rcka.cli.hub_contents import unpublishable_entries

    (tmp_path / "_replaced" / "1").mkdir(parents=True)
    (tmp_path / "_notes.txt").write_text("mine")
    assert unpublishable_entries(str(tmp_path)) == []
    (tmp_path / "helper.py").write_text("")
    for broken in ("{", "1"):
        (tmp_path / "config.json").write_text(broken)
        assert unpublishable_entries(str(tmp_path)) == ["helper.py"]


@pytest.mark.parametrize("hub_model_id", ["tiny-teacher", "someone/tiny-teacher"])
def test_a_run_does_not_push_its_student_into_its_teacher_s_repository(tmp_path, hub, capsys, hub_model_id):
    """hub_model_id naming the teacher's own repository (a recipe's copy-paste; the bare name resolves
    to the token's account) trained the whole run and replaced the teacher's weights and card on the
    Hub by the student's, with a card calling the repository its own teacher: every later run
    distilling from that id read the student."""
    teacher = tmp_path / "teacher"
    assert main([_teacher_recipe(tmp_path, output_dir=str(teacher))]) == 0
    snapshot = tmp_path / "cache" / "models--someone--tiny-teacher" / "snapshots" / ("a" * 40)
    shutil.copytree(teacher, snapshot, ignore=shutil.ignore_patterns("_*"))  # the teacher as the Hub cache holds it
    capsys.readouterr()
    recipe = _teacher_recipe(tmp_path, push_to_hub=True, hub_model_id=hub_model_id, hub_strategy="end",
                             hub_token=TOKEN, teacher_model_name_or_path=str(snapshot),
                             losses=[{"name": "ce"}, {"name": "kd"}], teacher_accuracy_check="off",
                             output_dir=str(tmp_path / "out"))
    assert main([recipe]) == 2
    assert "someone/tiny-teacher" in capsys.readouterr().err.strip().splitlines()[-1]
    assert hub.commits == [] and not (tmp_path / "out" / "model.safetensors").exists(), "refused before training"


def _hub_refuses(*args, **kwargs):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    raise HfHubHTTPError("403 Forbidden: You don't have the rights to create a model under the namespace \"someone\".",
                         response=response)


@pytest.mark.parametrize("refused", ["create_repo", "create_branch"])
def test_a_repository_the_hub_refuses_is_one_line_and_puts_the_replaced_run_back(tmp_path, hub, capsys, monkeypatch,
                                                                                 refused):
    """The Hub's refusal to create the repository or its branch (a namespace the token may not write)
    was a traceback from Trainer's constructor, after the models and data had loaded."""
    assert _run(tmp_path, push_to_hub=False) == 0
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    monkeypatch.setattr(hub, refused, _hub_refuses)
    capsys.readouterr()
    assert _run(tmp_path, overwrite_output_dir=True, hub_revision="v2") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: push_to_hub: could not create or reach the Hub repository ") and "403" in last
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before, "the replaced run is back"


def test_a_read_token_is_refused_before_anything_loads(tmp_path, hub, capsys, monkeypatch):
    """A read token passed the Hub check (it names an account) and the run failed at the repository's
    creation, after the models and data had loaded."""
    monkeypatch.setattr("hf_rcka.cli.model_sources.whoami",
                        lambda token: {"name": "someone", "auth": {"accessToken": {"role": "read"}}})
    assert _run(tmp_path) == 2
    assert "push_to_hub: this Hugging Face token is a read token" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()
    monkeypatch.setattr("hf_rcka.cli.model_sources.whoami",
                        lambda token: {"name": "someone", "auth": {"accessToken": {"role": "write"}}})
    assert _run(tmp_path) == 0


def test_the_card_of_a_run_pushed_to_a_branch_loads_that_branch(tmp_path, hub):
    """The card uploaded to hub_revision's branch loaded the repository's default branch in its usage
    snippet: another model there (or none: a new repository's main holds no weights), where the run's
    own last line named the branch."""
    assert _run(tmp_path, hub_revision="v2") == 0
    card = (hub.commits[-1][2] / "README.md").read_text()
    assert 'AutoModelForImageClassification.from_pretrained("someone/tiny-student", revision="v2")' in card
    assert 'AutoImageProcessor.from_pretrained("someone/tiny-student", revision="v2")' in card


def test_the_printed_upload_command_says_it_needs_the_recipe_s_token(tmp_path, hub, capsys, monkeypatch):
    """A run whose token was the recipe's hub_token alone printed an `hf upload` command that the Hub
    refused (hf reads a login or HF_TOKEN, not the recipe): the line says so, without the token."""
    hub.fail = ConnectionError("Connection reset by peer")
    assert _run(tmp_path) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("(with the recipe's hub_token: add --token, or set HF_TOKEN; this machine has no Hugging "
                         "Face login)") and TOKEN not in last
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_login")  # logged in: the command works as printed
    assert _run(tmp_path, overwrite_output_dir=True) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{DELETES}`" in last and "hub_token" not in last


@pytest.mark.parametrize("public", [True, False])
def test_a_run_asking_for_a_private_repository_does_not_upload_into_a_public_one(tmp_path, hub, capsys, monkeypatch,
                                                                                public):
    """create_repo makes a new repository private and leaves an existing one as it is: hub_private_repo
    true into an existing public repository published the model there without a word."""
    monkeypatch.setattr(hub, "repo_info", lambda repo_id, **kwargs: SimpleNamespace(private=not public), raising=False)
    assert _run(tmp_path, hub_private_repo=True) == (2 if public else 0)
    if public:
        assert "hub_private_repo: true, but the Hub repository 'someone/tiny-student' exists and is public" in \
            capsys.readouterr().err.strip().splitlines()[-1]
        assert hub.commits == [] and not (tmp_path / "out" / "model.safetensors").exists(), "refused before training"
    else:
        assert [message for _, message, _ in hub.commits] == ["End of training"]
