"""Pins of the transformers.Trainer behaviour that DistillationTrainer's private overrides rely on.

transformers may rename, re-sign or stop calling a private method in any minor release; the
override would then be dead code and the run would silently save or restore the wrong model.
Each override is pinned three ways: the base method exists with the signature we override, the
Trainer calls it where we expect, and our override's effect is observable on disk or in weights.
"""

import inspect
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, Trainer

from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit
from hf_rcka import DistillationTrainer, DistillationTrainingArguments
from hf_rcka.data.sampler import RepeatedAugmentationSampler
from hf_rcka.modeling import DISTILLATION_STATE_NAME
from hf_rcka.trainer.checkpointing import CheckpointingTrainer

PRIVATE_OVERRIDES = {
    "_save_checkpoint": ["self", "model", "trial"],
    "_save": ["self", "output_dir", "state_dict"],
    "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
    "_load_best_model": ["self"],
    "_get_train_sampler": ["self", "train_dataset"],
    "_load_optimizer_and_scheduler": ["self", "checkpoint"],
    "_push_from_checkpoint": ["self", "checkpoint_folder"],
    "_finalize_training": ["self", "trial", "num_train_samples", "start_time"],
    # public, but relied on as well: where the epoch's length is planned, where batches are drawn
    "set_initial_training_values": ["self", "args", "dataloader"],
    "get_batch_samples": ["self", "epoch_iterator", "num_batches", "device"],
    "create_optimizer": ["self", "model"],
}
LOSSES = [{"name": "ce"}, {"name": "srd"}]  # srd: a projector, so checkpoints carry distillation state


def _args(tmp_path: Path, name: str = "run", **overrides) -> DistillationTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / name), per_device_train_batch_size=5, per_device_eval_batch_size=5,
        learning_rate=5e-2, report_to="none", use_cpu=True, seed=0, save_strategy="no",
        teacher_accuracy_check="off", dataloader_num_workers=0, losses=LOSSES,
    )
    return DistillationTrainingArguments(**{**defaults, **overrides})


def _trainer(args: DistillationTrainingArguments, **kwargs) -> DistillationTrainer:
    return DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(), args=args, train_dataset=pixel_dataset(20),
                               eval_dataset=pixel_dataset(10, seed=1), processing_class=processor(16), **kwargs)


def _spy(trainer: DistillationTrainer, name: str, calls: list, record=None):
    """Replace ``trainer.<name>`` by a wrapper appending ``record(*args, **kwargs)`` to ``calls``."""
    method = getattr(trainer, name)

    def wrapper(*args, **kwargs):
        calls.append(record(*args, **kwargs) if record is not None else (args, kwargs))
        return method(*args, **kwargs)

    setattr(trainer, name, wrapper)


def test_every_private_trainer_method_we_override_is_pinned():
    """The pins are the list to audit on a transformers upgrade: an override added without one
    would break unseen when Trainer renames or changes it."""
    overridden = {name for cls in DistillationTrainer.__mro__[:DistillationTrainer.__mro__.index(Trainer)]
                  for name in vars(cls) if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name)}
    assert overridden and overridden <= set(PRIVATE_OVERRIDES), sorted(overridden - set(PRIVATE_OVERRIDES))


@pytest.mark.parametrize("name", sorted(PRIVATE_OVERRIDES))
def test_private_methods_we_override_keep_their_signature(name: str):
    assert hasattr(Trainer, name), f"transformers.Trainer.{name} is gone: our override is dead code"
    expected = PRIVATE_OVERRIDES[name]
    assert list(inspect.signature(getattr(Trainer, name)).parameters) == expected
    ours = getattr(DistillationTrainer, name)
    assert ours is not getattr(Trainer, name), f"{name} is no longer overridden: drop it from the pins"
    assert list(inspect.signature(ours).parameters) == expected


def test_trainer_saves_and_restores_through_the_overrides(tmp_path):
    args = _args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                 load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False)
    trainer = _trainer(args)
    checkpoints, saves, best, samplers = [], [], [], []
    _spy(trainer, "_save_checkpoint", checkpoints, lambda *a, **k: trainer.state.global_step)
    _spy(trainer, "_save", saves, lambda output_dir=None, state_dict=None: (Path(output_dir), trainer._checkpointing))
    _spy(trainer, "_load_best_model", best, lambda: trainer.state.best_model_checkpoint)
    _spy(trainer, "_get_train_sampler", samplers)
    trainer.train()

    run = tmp_path / "run"
    assert checkpoints == [2, 4], "Trainer checkpoints through _save_checkpoint at every save step"
    assert saves == [(run / "checkpoint-2", True), (run / "checkpoint-4", True)], (
        "a checkpoint's weights are written by _save, inside _save_checkpoint"
    )
    assert len(samplers) == 1, "get_train_dataloader takes its sampler from _get_train_sampler"
    assert best == [trainer.state.best_model_checkpoint] and best[0] is not None, (
        "load_best_model_at_end calls _load_best_model once, after training"
    )
    trainer.save_model(str(tmp_path / "export"))
    assert saves[-1] == (tmp_path / "export", False), "save_model exports through _save"

    # Effects: checkpoints hold the student alone, plus distillation state; the best one is restored.
    student_keys = set(trainer.model.student.state_dict())
    for step in (2, 4):
        checkpoint = run / f"checkpoint-{step}"
        assert (checkpoint / "config.json").is_file() and (checkpoint / DISTILLATION_STATE_NAME).is_file()
        saved = AutoModelForImageClassification.from_pretrained(checkpoint).state_dict()
        assert set(saved) == student_keys, "no teacher or adapter weights in the student's files"
        assert any(k.startswith("losses.srd.") for k in load_file(checkpoint / DISTILLATION_STATE_NAME))
    assert not (tmp_path / "export" / DISTILLATION_STATE_NAME).exists()
    expected = AutoModelForImageClassification.from_pretrained(best[0]).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in trainer.model.student.state_dict().items())


def test_resume_loads_the_checkpoint_through_load_from_checkpoint(tmp_path):
    first = _trainer(_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2))
    first.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved_loss_state = load_file(checkpoint / DISTILLATION_STATE_NAME)

    resumed = _trainer(_args(tmp_path, "resumed", max_steps=3, save_strategy="no"))
    loads, restored = [], {}

    def record(resume_from_checkpoint, model=None):
        return resume_from_checkpoint, model

    _spy(resumed, "_load_from_checkpoint", loads, record)
    method = resumed._load_from_checkpoint

    def observe(*args, **kwargs):
        method(*args, **kwargs)
        restored["student"] = {k: v.clone() for k, v in resumed.model.student.state_dict().items()}
        restored["losses"] = {k: v.clone() for k, v in resumed.model.losses.state_dict().items()}

    resumed._load_from_checkpoint = observe
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert loads == [(str(checkpoint), None)], "without FSDP, train() loads the checkpoint once, before prepare"
    expected = AutoModelForImageClassification.from_pretrained(checkpoint).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in restored["student"].items())
    assert all(torch.equal(v, saved_loss_state[f"losses.{k}"]) for k, v in restored["losses"].items())


def test_without_the_overrides_transformers_would_save_the_wrapper(tmp_path):
    """Why _save is overridden: the base writes Trainer.model, teacher included, with no config."""
    trainer = _trainer(_args(tmp_path, teacher_channels_last=False))  # NHWC weights would not even save
    out = tmp_path / "base"
    Trainer._save(trainer, str(out))
    keys = set(load_file(out / "model.safetensors"))
    assert any(k.startswith("teacher.") for k in keys) and not (out / "config.json").exists()
    assert issubclass(DistillationTrainer, CheckpointingTrainer)


def test_repeated_augmentation_reaches_the_loader_through_the_sampler_hook(tmp_path):
    from hf_rcka.augmentation import AugmentationArguments

    trainer = _trainer(_args(tmp_path), augmentation=AugmentationArguments(aug_repeats=2))
    loader = trainer.get_train_dataloader()
    sampler = getattr(getattr(loader.batch_sampler, "batch_sampler", loader.batch_sampler), "sampler", None)
    assert isinstance(sampler, RepeatedAugmentationSampler)


@pytest.mark.parametrize("change", ["weight_decay", "momentum", "epoch_steps", "batch", "rate", "past_the_end"])
def test_a_resume_that_would_not_continue_the_same_training_is_refused(tmp_path, change):
    """Through the Python API each went on with exit 0: the checkpoint's optimizer settings silently
    replaced the new ones (weight decay 0.05 -> 0.3 recorded, never applied), an epoch of another
    length (more images) skipped or repeated images, another global batch or rate went on."""
    from hf_rcka.errors import RecipeError

    base = dict(max_steps=2, save_strategy="steps", save_steps=2, weight_decay=0.05, optim="sgd",
                optim_args="momentum=0.9")
    first = _trainer(_args(tmp_path, **base))
    first.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert json.loads((checkpoint / "global_batch.json").read_text())["epoch_steps"] == 4  # 20 images, batch 5
    resumed_args = {"weight_decay": dict(weight_decay=0.3), "momentum": dict(optim_args="momentum=0.5"),
                    "epoch_steps": {}, "batch": dict(per_device_train_batch_size=10),
                    "rate": dict(learning_rate=1e-1), "past_the_end": dict(max_steps=1)}[change]
    resumed = DistillationTrainer(
        model=tiny_vit(), teacher=tiny_resnet(), args=_args(tmp_path, "resumed", **{**base, "max_steps": 4, **resumed_args}),
        train_dataset=pixel_dataset(30 if change == "epoch_steps" else 20), processing_class=processor(16))
    before = {k: v.clone() for k, v in resumed.model.student.state_dict().items()}
    message = {"weight_decay": "weight_decay 0.05 \\(this run: 0.3\\)", "momentum": "momentum 0.9 \\(this run: 0.5\\)",
               "epoch_steps": "4 optimizer steps per epoch, and this run plans 6", "batch": "global batch of 5",
               "rate": "learning rate of 0.05", "past_the_end": "is at step 2, past this run's last step \\(1\\)"}[change]
    with pytest.raises(RecipeError, match=message):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step <= 2, "refused before any step"
    restored = AutoModelForImageClassification.from_pretrained(checkpoint).state_dict()
    assert all(torch.equal(v, restored[k]) or torch.equal(v, before[k]) for k, v in resumed.model.student.state_dict().items())
    same = _trainer(_args(tmp_path, "same", **{**base, "max_steps": 4}))
    same.train(resume_from_checkpoint=str(checkpoint))  # the same settings resume
    assert same.state.global_step == 4


def test_a_plateau_schedule_resumed_at_another_rate_is_refused(tmp_path):
    """reduce_lr_on_plateau's saved schedule holds no base rates, so nothing was compared: resumed
    at 0.5 from a run at 0.05, a run went on at the checkpoint's 0.05 while its recipe named 0.5."""
    from hf_rcka.errors import RecipeError

    base = dict(max_steps=2, save_strategy="steps", save_steps=2, lr_scheduler_type="reduce_lr_on_plateau",
                eval_strategy="steps", eval_steps=2, optim="sgd")
    _trainer(_args(tmp_path, **base)).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    resumed = _trainer(_args(tmp_path, "resumed", **{**base, "max_steps": 4, "learning_rate": 0.5}))
    with pytest.raises(RecipeError, match="trained at a learning rate of 0.05, and this run sets 0.5"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    same = _trainer(_args(tmp_path, "same", **{**base, "max_steps": 4}))
    same.train(resume_from_checkpoint=str(checkpoint))
    assert same.state.global_step == 4


def test_a_resume_with_the_callers_own_optimizer_and_schedule_goes_on(tmp_path):
    """The rate check compared the checkpoint's rates with learning_rate, which a caller's optimizer
    does not use, and the settings check read OneCycleLR's cycled momentum as a changed setting."""
    def trainer(name, steps):
        student = tiny_vit()
        optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=10)
        return DistillationTrainer(model=student, teacher=tiny_resnet(), train_dataset=pixel_dataset(20),
                                   args=_args(tmp_path, name, max_steps=steps, save_strategy="steps", save_steps=2,
                                              losses=[{"name": "ce"}, {"name": "kd"}]),
                                   processing_class=processor(16), optimizers=(optimizer, schedule))

    trainer("run", 2).train()
    resumed = trainer("resumed", 4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.state.global_step == 4


def test_a_callers_optimizer_with_a_tensor_rate_saves_its_checkpoints(tmp_path):
    """torch takes a rate as a tensor; the starting rates written to the batch record must be numbers
    (json.dump failed with 'Object of type Tensor is not JSON serializable' at the first save)."""
    student = tiny_vit()
    optimizer = torch.optim.Adam(student.parameters(), lr=torch.tensor(0.01))
    DistillationTrainer(model=student, teacher=tiny_resnet(), train_dataset=pixel_dataset(20),
                        args=_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2,
                                   losses=[{"name": "ce"}, {"name": "kd"}]),
                        processing_class=processor(16), optimizers=(optimizer, None)).train()
    record = json.loads((tmp_path / "run" / "checkpoint-2" / "global_batch.json").read_text())
    assert record["starting_rates"] == [pytest.approx(0.01)]


def test_a_checkpoint_removed_before_it_loads_is_said_so(tmp_path):
    """Removed after the command line's checks (another run's save_total_limit), it was 'holds no
    optimizer state (saved with save_only_model?)', advice for another problem."""
    from hf_rcka.errors import ModelError

    with pytest.raises(ModelError, match=r"'.*checkpoint-4' is not there \(removed as this run started"):
        _trainer(_args(tmp_path)).train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
