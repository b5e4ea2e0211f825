"""Files the project rewrites (a model card with a user's sections, a run's recipe and results) are
replaced whole or left as they were: opening them with mode "w" emptied them first, so a full disk
or a signal cut them short."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hf_rcka.file_writes import replacing, write_text


def test_a_write_that_fails_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# the card\n\n## my own section\n")
    with pytest.raises(OSError, match="No space"):
        with replacing(card) as handle:
            handle.write("# the new card, half")
            raise OSError(28, "No space left on device (simulated)")
    assert card.read_text() == "# the card\n\n## my own section\n"
    assert os.listdir(tmp_path) == ["README.md"]
    with pytest.raises(KeyboardInterrupt):  # a signal in the middle of the write
        with replacing(card) as handle:
            handle.write("# half")
            raise KeyboardInterrupt
    assert card.read_text() == "# the card\n\n## my own section\n" and os.listdir(tmp_path) == ["README.md"]


def test_a_whole_write_replaces_the_file_with_its_permissions(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("old")
    os.chmod(card, 0o640)
    write_text(card, "new\r\n", newline="")
    assert card.read_bytes() == b"new\r\n" and card.stat().st_mode & 0o777 == 0o640
    fresh = tmp_path / "results.json"
    write_text(fresh, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.read_text() == "{}" and fresh.stat().st_mode & 0o777 == 0o666 & ~umask, "not mkstemp's 0600"
    assert sorted(os.listdir(tmp_path)) == ["README.md", "results.json"]


def test_the_card_and_the_recipe_are_written_through_it(tmp_path, monkeypatch):
    import hf_rcka.file_writes as file_writes
    from hf_rcka.cli.recipe import dump_recipe
    from hf_rcka.trainer.card import add_cka_to_card

    card = tmp_path / "README.md"
    card.write_text("---\ntags:\n- hf_rcka\n---\n# student\n\n## Limitations\n\nmy own words\n")
    (tmp_path / "cka.png").write_bytes(b"png")
    recipe = tmp_path / "distill_config.yaml"
    dump_recipe({"learning_rate": 0.1}, recipe)

    def disk_full(descriptor):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(file_writes.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        add_cka_to_card(tmp_path, "cka.png", "| a | b |")
    with pytest.raises(OSError, match="No space"):
        dump_recipe({"learning_rate": 0.2}, recipe)
    assert "my own words" in card.read_text() and "learning_rate: 0.1" in recipe.read_text()
    assert sorted(os.listdir(tmp_path)) == ["README.md", "cka.png", "distill_config.yaml"]


def test_the_exported_weights_are_as_readable_as_the_umask_makes_new_files(tmp_path):
    """transformers writes model.safetensors with mode 0600 (a temporary file renamed): others in a
    shared folder could not load the model that config.json beside it (0644) described."""
    from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit
    from hf_rcka import DistillationTrainer, DistillationTrainingArguments
    from hf_rcka.file_writes import _UMASK

    args = DistillationTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True,
                                         teacher_accuracy_check="off", losses=[{"name": "ce"}, {"name": "srd"}],
                                         model_ema=True, max_steps=1, save_strategy="steps", save_steps=1)
    trainer = DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(), args=args, train_dataset=pixel_dataset(10),
                                  processing_class=processor(16))
    trainer.train()  # checkpoint-1: the distillation state and the EMA beside the weights
    trainer.save_model()
    mode = (tmp_path / "run" / "model.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~_UMASK == (tmp_path / "run" / "config.json").stat().st_mode & 0o777
    written = list((tmp_path / "run").glob("checkpoint-*/*.safetensors"))
    assert len(written) >= 2 and {p.stat().st_mode & 0o777 for p in written} == {0o666 & ~_UMASK}


def test_exported_files_gain_the_umasks_bits_and_keep_their_own(tmp_path, monkeypatch):
    from hf_rcka import file_writes

    monkeypatch.setattr(file_writes, "_UMASK", 0o022)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    os.chmod(weights, 0o620)  # group-writable (a shared folder's), not yet readable by others
    file_writes.as_umask_allows(tmp_path)
    assert weights.stat().st_mode & 0o777 == 0o664


def test_the_temporary_file_lies_beside_the_target_under_a_name_no_run_owns(tmp_path):
    """The temporary file must be in the target's folder (os.replace across file systems fails:
    every card write would, with /tmp elsewhere) and named with the prefix that keeps it out of Hub
    uploads and out of a run's files: without it, one a kill left behind (``README.md.x1y2.md``)
    was uploaded as part of the model and set aside as a file of the run."""
    from hf_rcka.file_writes import TEMPORARY_PREFIX, replacing_path

    target = tmp_path / "cka.png"
    with replacing_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".png"
        assert temporary.name.startswith(TEMPORARY_PREFIX + "cka.png.") and TEMPORARY_PREFIX.startswith("_")
        temporary.write_bytes(b"png")
    assert target.read_bytes() == b"png" and os.listdir(tmp_path) == ["cka.png"]


def test_a_file_whose_permissions_cannot_change_does_not_stop_the_others(tmp_path, monkeypatch):
    """A weights file owned by another user in a shared folder (chmod refused) is the file
    system's to say: the save must neither fail over it nor leave the next file unreadable to others."""
    from hf_rcka import file_writes

    monkeypatch.setattr(file_writes, "_UMASK", 0o022)
    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / name).write_bytes(b"x")
        os.chmod(tmp_path / name, 0o600)
    real_chmod, refused = os.chmod, []

    def chmod(path, mode, **kwargs):
        if not refused:  # the first file the folder lists belongs to someone else
            refused.append(Path(path).name)
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_chmod(path, mode, **kwargs)

    monkeypatch.setattr(file_writes.os, "chmod", chmod)
    file_writes.as_umask_allows(tmp_path)
    (other,) = {"a.safetensors", "b.safetensors"} - set(refused)
    assert (tmp_path / other).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / refused[0]).stat().st_mode & 0o777 == 0o600


def test_a_symbolic_link_is_written_through_and_kept(tmp_path):
    """A file the run writes that its user linked to a file elsewhere (results a dashboard reads, a
    card kept with the project's documentation) must be updated there, as ``open(path, "w")`` would:
    ``os.replace`` on the link's own path swapped the link for a regular file, leaving the linked
    file stale and the link gone."""
    elsewhere = tmp_path / "docs"
    elsewhere.mkdir()
    (elsewhere / "card.md").write_text("old")
    run = tmp_path / "run"
    run.mkdir()
    (run / "README.md").symlink_to(Path("..") / "docs" / "card.md")
    write_text(run / "README.md", "new")
    assert (run / "README.md").is_symlink() and (elsewhere / "card.md").read_text() == "new"
    assert os.listdir(run) == ["README.md"] and os.listdir(elsewhere) == ["card.md"]


def test_the_results_and_the_training_state_are_replaced_whole(tmp_path, monkeypatch):
    """Trainer's save_metrics and save_state open all_results.json and trainer_state.json with mode "w":
    a full disk (or a signal) while the final evaluation's results were written left all_results.json
    cut short, the training's metrics in it lost with the evaluation's, though the README says the
    results files are replaced whole or not at all."""
    import builtins
    import errno
    import json

    from transformers import TrainerState

    from hf_rcka.trainer.checkpointing import CheckpointingTrainer

    run = tmp_path / "run"
    run.mkdir()
    trainer = CheckpointingTrainer.__new__(CheckpointingTrainer)  # the two methods read args and state alone
    trainer.args = type("Args", (), {"output_dir": str(run), "process_index": 0, "local_process_index": 0,
                                     "should_save": True})()
    trainer.is_world_process_zero = lambda: True
    trainer.state = TrainerState(global_step=2, max_steps=2)
    trainer.save_metrics("train", {"train_loss": 1.5, "epoch": 2.0})
    trainer.save_state()
    before = {name: (run / name).read_text() for name in ("all_results.json", "trainer_state.json")}
    real_open = builtins.open

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).startswith(str(run)):
            write = handle.write

            def cut_short(text):
                write(text[:5])
                handle.flush()
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")

            handle.write = cut_short
        return handle

    monkeypatch.setattr(builtins, "open", full_disk_open)
    with pytest.raises(OSError, match="No space"):
        trainer.save_metrics("eval", {"eval_accuracy": 0.5, "epoch": 2.0})
    trainer.state.global_step = 3
    with pytest.raises(OSError, match="No space"):
        trainer.save_state()
    monkeypatch.undo()
    assert {name: (run / name).read_text() for name in before} == before
    assert json.loads((run / "all_results.json").read_text())["train_loss"] == 1.5
    assert not (run / "eval_results.json").exists(), "a results file cut short"
