"""What a run reads and prints: weights only from safetensors files, also when it resumes, and no
Hub token in the commands it prints. Each case below went the other way before."""

from __future__ import annotations

import signal

import pytest
import torch
from transformers import TimmWrapperConfig

from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit
from hf_rcka import DistillationTrainer, DistillationTrainingArguments
from hf_rcka.errors import ModelError
from hf_rcka.modeling.distillation_model import _checkpoint_config
from hf_rcka.trainer.resume_hint import Stopped, relaunch_command


@pytest.mark.parametrize("value", [["hf_SECRET"], {"token": "hf_SECRET"}])
def test_a_hub_token_of_the_wrong_type_is_refused_without_showing_it(value):
    """``hub_token: [hf_...]`` (a list, or a mapping) was refused with the token in the message, printed
    to the terminal and its logs."""
    from hf_rcka.cli.recipe import resolve_values
    from hf_rcka.errors import RecipeError

    with pytest.raises(RecipeError, match="hub_token must be text") as caught:
        resolve_values({"model_name_or_path": "config:vit", "output_dir": "out", "hub_token": value})
    assert "hf_SECRET" not in str(caught.value)


@pytest.mark.parametrize("argv", [["r.yaml", "--hub_token", "hf_SECRET", "--max_steps", "9"],
                                  ["r.yaml", "--hub_token=hf_SECRET", "--max_steps", "9"],
                                  ["r.yaml", "--hub-token", "hf_SECRET", "--max_steps", "9"]])
def test_printed_commands_leave_the_hub_token_out(argv):
    """An interrupted run printed '--hub_token hf_...' in its resume command, to a log."""
    message = Stopped(signal.SIGTERM, 5, "out/checkpoint-5", argv).message()
    assert "hf_SECRET" not in message
    assert "(--hub_token left out: give it again, or set HF_TOKEN)" in message
    assert message.splitlines()[-1].endswith("r.yaml --max_steps 9 --resume_from_checkpoint out/checkpoint-5")
    assert "left out" not in Stopped(signal.SIGTERM, 5, "out/checkpoint-5", ["r.yaml"]).message()
    assert "hf_SECRET" not in relaunch_command(argv, {"do_train": "false"})


def _args(tmp_path, name, **overrides):
    defaults = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=5, report_to="none", use_cpu=True,
                    save_strategy="no", teacher_accuracy_check="off", losses=["ce", "srd"])
    return DistillationTrainingArguments(**{**defaults, **overrides})


def _trainer(args):
    return DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(), args=args, train_dataset=pixel_dataset(20),
                               processing_class=processor(16))


def test_resuming_reads_no_pickled_weights(tmp_path):
    """A checkpoint whose model.safetensors was swapped for a pytorch_model.bin (+1000 on every
    weight) resumed from the pickle, exit 0."""
    _trainer(_args(tmp_path, "run", max_steps=2, save_strategy="steps", save_steps=2)).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    from safetensors.torch import load_file

    weights = {k: v + 1000 for k, v in load_file(checkpoint / "model.safetensors").items()}
    torch.save(weights, checkpoint / "pytorch_model.bin")
    (checkpoint / "model.safetensors").unlink()
    resumed = _trainer(_args(tmp_path, "resumed", max_steps=3))
    with pytest.raises(ModelError, match="does not fit this run"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert all(p.abs().max() < 100 for p in resumed.model.student.parameters())


def test_a_timm_checkpoint_cannot_point_timm_at_a_file_elsewhere(tmp_path):
    """Its config's model_args.checkpoint_path had timm torch.load a file outside the checkpoint."""
    from transformers import TimmWrapperForImageClassification

    config = TimmWrapperConfig(architecture="resnet18", num_labels=3,
                               model_args={"checkpoint_path": str(tmp_path / "elsewhere.pth")})
    config.save_pretrained(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match="sets 'checkpoint_path'"):
        _checkpoint_config(TimmWrapperForImageClassification, str(tmp_path / "checkpoint-2"))
    TimmWrapperConfig(architecture="resnet18", num_labels=3, model_args={"depth": 2}).save_pretrained(tmp_path / "ok")
    assert _checkpoint_config(TimmWrapperForImageClassification, str(tmp_path / "ok")).model_args == {"depth": 2}


def test_the_hub_token_stays_on_the_trainers_args_and_out_of_the_process_and_its_files(tmp_path, monkeypatch):
    """hub_token was moved into HF_TOKEN for the whole process: every later Hub call of a notebook
    used it, even after the trainer was refused."""
    import copy
    import io
    import os

    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = _args(tmp_path, "run", hub_token="hf_SECRET")
    trainer = _trainer(args)
    assert "HF_TOKEN" not in os.environ and args.hub_token == "hf_SECRET"
    token = trainer.args.hub_token
    assert token == "hf_SECRET" and f"{token}" == "hf_SECRET"  # what transformers hands huggingface_hub
    assert copy.copy(token) == copy.deepcopy(token) == "hf_SECRET" and "hf_SECRET" not in repr(token)
    saved = io.BytesIO()
    torch.save(trainer.args, saved)
    assert b"hf_SECRET" not in saved.getvalue()
    saved.seek(0)
    assert torch.load(saved, weights_only=False).hub_token is None


def test_a_checkpoints_teacher_record_names_a_local_teacher_by_its_folder_alone():
    """Checkpoints may be pushed to the Hub: the teacher's absolute path (a user name, a cluster's
    layout) stays on the machine; a Hub id is kept as it is."""
    from hf_rcka.trainer.teacher_record import teacher_fingerprint

    teacher = tiny_resnet()
    teacher.config._name_or_path = "/home/alice/teachers/resnet50-digits"
    assert teacher_fingerprint(teacher)["source"] == "resnet50-digits"
    teacher.config._name_or_path = "acme/resnet50-digits"
    assert teacher_fingerprint(teacher)["source"] == "acme/resnet50-digits"
