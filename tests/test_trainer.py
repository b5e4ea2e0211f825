"""DistillationTrainer: training, logging, accumulation, resume, export, mixed precision, Hub."""

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from conftest import IMAGENET_MEAN, IMAGENET_STD, pixel_dataset, processor, tiny_resnet, tiny_vit
from hf_rcka import DistillationTrainer, DistillationTrainingArguments
from hf_rcka.arguments import DataArguments
from hf_rcka.errors import ModelError, RecipeError
from hf_rcka.data.bad_images import SkippedImages
from hf_rcka.data.datasets import prepare_datasets
from hf_rcka.features.hidden_states import classifier_of
from hf_rcka.modeling.distillation_model import DISTILLATION_STATE_NAME
from hf_rcka.trainer.card_facts import teacher_accuracy
from hf_rcka.trainer.divergence import SKIPPED_STEPS_LIMIT, DivergenceCheck
from hf_rcka.trainer.metrics import TIMING_METRICS, evaluation_metric_names
from torch import nn
from hf_rcka.trainer.weight_decay import norm_weights
from hf_rcka.trainer.term_log import LastStepLog, LossTermLog

FEATURE_LOSSES = [
    {"name": "ce"},
    {"name": "rcka"},
    {"name": "fitnet"},
    {"name": "srd"},
    {"name": "kernel_transfer", "weight": 0.04},
]
PATCH_PAIR = [{"student_layer": -1, "teacher_layer": -2, "adapter": "patch_match"}]


def make_args(tmp_path, name="run", **overrides):
    defaults = dict(
        output_dir=str(tmp_path / name), per_device_train_batch_size=5, per_device_eval_batch_size=5,
        learning_rate=1e-3, report_to="none", use_cpu=True, seed=0, logging_steps=1, save_strategy="no",
        teacher_accuracy_check="off", dataloader_num_workers=0,
    )
    return DistillationTrainingArguments(**{**defaults, **overrides})


def make_trainer(args, student=None, teacher="resnet", train=None, evaluation=None, **kwargs):
    teacher_model = tiny_resnet() if teacher == "resnet" else teacher
    return DistillationTrainer(
        model=student if student is not None else tiny_vit(),
        teacher=teacher_model,
        args=args,
        train_dataset=train if train is not None else pixel_dataset(20, seed=0),
        eval_dataset=evaluation if evaluation is not None else pixel_dataset(10, seed=1),
        **{"processing_class": processor(16), **kwargs},
        teacher_processor=processor(24, IMAGENET_MEAN, IMAGENET_STD) if teacher_model is not None else None,
    )


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_training_moves_student_and_adapters_but_never_the_teacher(tmp_path, caplog):
    args = make_args(tmp_path, max_steps=3, eval_strategy="steps", eval_steps=3, losses=FEATURE_LOSSES,
                     feature_pairs=PATCH_PAIR)
    trainer = make_trainer(args)
    model = trainer.model
    student, teacher = snapshot(model.student), snapshot(model.teacher)
    adapters, losses = snapshot(model.adapters), snapshot(model.losses)
    assert len(adapters) > 0 and any("projector" in k for k in losses)

    with caplog.at_level("WARNING", logger="hf_rcka"):
        trainer.train()
    assert "got no gradient" not in caplog.text  # every built-in weight is reached on the first step

    assert changed(student, model.student), "the student did not learn"
    assert set(changed(adapters, model.adapters)) == set(adapters), "every adapter parameter must be trained"
    assert any("projector" in k for k in changed(losses, model.losses)), "the srd projector must be trained"
    assert any("centres" in k for k in changed(losses, model.losses)), "EKT class centres must be updated"
    assert not changed(teacher, model.teacher), "the teacher must stay frozen (weights and BN statistics)"
    assert not model.teacher.training and not any(p.requires_grad for p in model.teacher.parameters())


def test_each_loss_term_is_logged_next_to_the_total(tmp_path):
    args = make_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2, losses=FEATURE_LOSSES,
                     feature_pairs=PATCH_PAIR)
    trainer = make_trainer(args)
    trainer.train()
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    eval_logs = [e for e in trainer.state.log_history if "eval_loss" in e]
    names = ["ce", "rcka_intra", "rcka_inter", "fitnet", "srd", "kernel_transfer"]
    for entry in train_logs:
        assert all(f"{n}_loss" in entry for n in names)
        assert all(torch.isfinite(torch.tensor(entry[f"{n}_loss"])) for n in names)
        # terms are logged weighted, so they add up to the total
        assert sum(entry[f"{n}_loss"] for n in names) == pytest.approx(entry["loss"], rel=1e-4)
    assert eval_logs and all(f"eval_{n}_loss" in eval_logs[-1] for n in names)
    assert "eval_accuracy" in eval_logs[-1]


def test_eval_terms_add_up_to_eval_loss_with_a_short_last_batch(tmp_path):
    # 10 images in batches of 4, 4, 2: eval_loss is a per-image mean, so the terms must be too
    args = make_args(tmp_path, per_device_eval_batch_size=4, losses=[{"name": "ce"}, {"name": "rcka"}])
    metrics = make_trainer(args).evaluate()
    terms = sum(metrics[f"eval_{n}_loss"] for n in ("ce", "rcka_intra", "rcka_inter"))
    assert terms == pytest.approx(metrics["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("ema,rcka", [
    ({}, {}), ({"model_ema": True}, {}), ({"model_ema": True, "model_ema_export": True}, {}),
    ({}, {"intra_weight": 0.0}),  # an uncomputed term is not reported, so must not be listed
])
def test_evaluation_reports_the_names_metric_for_best_model_is_checked_against(tmp_path, ema, rcka):
    args = make_args(tmp_path, losses=[{"name": "ce"}, {"name": "rcka", **rcka}], max_steps=1, **ema)
    trainer = make_trainer(args)
    trainer.train()  # an evaluation in training: the weight average exists
    metrics = trainer.evaluate()
    reported = {name.removeprefix("eval_") for name in metrics if not name.endswith(("epoch", *TIMING_METRICS))}
    losses = trainer.model.losses.values()
    terms = [term for loss in losses for term in loss.term_weights]
    student_terms = [term for loss in losses if not loss.needs_teacher for term in loss.term_weights]
    expected = evaluation_metric_names(terms, args, trainer.model.student.config.num_labels, student_terms)
    assert reported == set(expected)


def test_drop_last_drops_training_images_never_evaluation_images(tmp_path):
    args = make_args(tmp_path, per_device_eval_batch_size=4, dataloader_drop_last=True, per_device_train_batch_size=6)
    trainer = make_trainer(args)  # 20 training and 10 evaluation images
    assert [len(b["labels"]) for b in trainer.get_eval_dataloader()] == [4, 4, 2]
    assert [len(b["labels"]) for b in trainer.get_test_dataloader(pixel_dataset(10, seed=2))] == [4, 4, 2]
    assert [len(b["labels"]) for b in trainer.get_train_dataloader()] == [6, 6, 6]
    assert trainer.args.dataloader_drop_last


class _SlowMiddleBatch(torch.utils.data.Dataset):
    """12 images whose second batch of 5 loads slowly (large JPEG files would), so that workers
    handing batches over as they finish give it after the short last one."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if 5 <= i < 10:
            time.sleep(0.3)
        return self.data[i]


def test_workers_out_of_order_evaluate_every_image(tmp_path):
    """With dataloader_in_order: false, accelerate took the batch that came last for the set's last
    and cut it to the remainder's 2 rows: 9 of 12 images scored, and the teacher's accuracy on the
    card counted all 12. Training keeps the setting; evaluation and prediction load in order."""
    dataset = _SlowMiddleBatch(pixel_dataset(12, seed=1))
    scored = {}
    for in_order in (True, False):
        args = DistillationTrainingArguments(output_dir=str(tmp_path / str(in_order)), per_device_eval_batch_size=5,
                                             report_to="none", use_cpu=True, losses=["ce"], dataloader_num_workers=2,
                                             dataloader_in_order=in_order)
        trainer = DistillationTrainer(model=tiny_vit(), args=args, processing_class=processor(16), eval_dataset=dataset)
        prediction = trainer.predict(dataset)
        scored[in_order] = (len(prediction.label_ids), prediction.metrics["test_accuracy"],
                            trainer.evaluate()["eval_accuracy"])
        assert trainer.args.dataloader_in_order is in_order
    assert scored[False] == scored[True] and scored[True][0] == 12, scored


def _eval_dataset(tmp_path, name: str, files: list[int], unreadable: int | None = None):
    """Evaluation images as the CLI prepares them: 16 px PNG files ``image<i>.png`` of 3 classes
    (image ``i`` has label ``i % 3``), decoded by ``with_transforms``; the ``unreadable`` one is text."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(max(files) + 1):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"image{i}.png")
    if unreadable is not None:
        (folder / f"image{unreadable}.png").write_text("not an image")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    split = datasets.Dataset.from_dict(
        {"image": [str(folder / f"image{i}.png") for i in files], "label": [i % 3 for i in files]}, features=features)
    raw = datasets.DatasetDict({"train": split, "validation": split})
    args = DataArguments(dataset_name="builtin:digits", no_aug=True)
    ledger = SkippedImages(str(tmp_path / name), limit=5)
    return prepare_datasets(raw, args, processor(16), ["a", "b", "c"], skipped=ledger)[1]


def test_evaluation_counts_no_unreadable_image(tmp_path):
    """One unreadable file among 10: every metric equals the one measured on the 9 readable files alone."""
    readable = _eval_dataset(tmp_path, "readable", [i for i in range(10) if i != 3])
    with_bad = _eval_dataset(tmp_path, "with_bad", list(range(10)), unreadable=3)
    args = make_args(tmp_path, per_device_eval_batch_size=10, losses=[{"name": "ce"}, {"name": "kd"}, {"name": "rcka"}])
    trainer = make_trainer(args, evaluation=with_bad)  # the card counts what its own evaluation set left out
    expected, measured = trainer.evaluate(readable), trainer.evaluate()
    keys = ["eval_accuracy", "eval_loss", "eval_ce_loss", "eval_kd_loss", "eval_rcka_intra_loss", "eval_rcka_inter_loss"]
    assert 0 < expected["eval_accuracy"] < 1, "a stand-in copy could only go unnoticed at 0 or 1"
    assert {k: measured[k] for k in keys} == pytest.approx({k: expected[k] for k in keys}, rel=1e-5)
    assert trainer.card_facts.unreadable_eval_images == 1, "the card must say one image was left out"
    model = trainer.distillation_model
    assert teacher_accuracy(model, trainer.get_eval_dataloader(with_bad)) == pytest.approx(
        teacher_accuracy(model, trainer.get_eval_dataloader(readable)))


def test_the_cards_unreadable_count_is_its_own_sets_not_another_evaluated_after_it(tmp_path):
    """evaluate(test_set) counted the unreadable images of the test set as the card's own evaluation
    set's: a card whose every evaluation image was read said one was left out (or the other way)."""
    readable = _eval_dataset(tmp_path, "readable", [0, 1, 2, 4, 5])  # one folder of images: 3 is the bad one
    with_bad = _eval_dataset(tmp_path, "with_bad", list(range(6)), unreadable=3)
    trainer = make_trainer(make_args(tmp_path, losses=["ce"]), evaluation=readable)
    trainer.evaluate()
    assert trainer.card_facts.unreadable_eval_images == 0
    trainer.evaluate(with_bad)
    assert trainer.card_facts.unreadable_eval_images == 0, "the card's set has no unreadable image"


def test_the_card_of_a_stream_run_states_no_epochs(tmp_path):
    """Trainer counts a stream's epochs against max_steps: a 20-image stream at batch 5 (4 steps a
    pass) trained 3 steps and the card said "(1 epoch)", 8 steps (two passes) and it said 1.5."""
    stream = pixel_dataset(20, seed=0).to_iterable_dataset(num_shards=2)
    trainer = make_trainer(make_args(tmp_path, losses=["ce"], max_steps=3), train=stream)
    trainer.train()
    trainer.create_model_card()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "3 optimizer steps, global batch" in card


def test_the_cards_teacher_accuracy_is_counted_by_an_evaluation_of_the_trainers_own_set(tmp_path, monkeypatch):
    """The card's teacher accuracy comes from the evaluation's own teacher logits (every image once,
    stand-ins not counted): at ImageNet's 50k images a separate pass on one process took minutes."""
    from hf_rcka.trainer import card_facts

    readable = _eval_dataset(tmp_path, "readable", [i for i in range(10) if i != 3])
    with_bad = _eval_dataset(tmp_path, "with_bad", list(range(10)), unreadable=3)
    args = make_args(tmp_path, per_device_eval_batch_size=4, losses=[{"name": "ce"}, {"name": "kd"}])
    trainer = make_trainer(args, evaluation=with_bad)
    trainer.evaluate(readable)  # another set: not the card's
    assert trainer.card_facts.teacher_accuracy is None
    trainer.evaluate()
    model = trainer.distillation_model
    want = teacher_accuracy(model, trainer.get_eval_dataloader(readable))
    assert 0 < want < 1, "a miscount could only go unnoticed at 0 or 1"
    assert trainer.card_facts.teacher_accuracy == pytest.approx(want)
    monkeypatch.setattr(card_facts, "_teacher_pass", lambda trainer: pytest.fail("the teacher was scored again"))
    assert card_facts.complete_card_facts(trainer).teacher_accuracy == pytest.approx(want)


def test_build_losses_gives_ce_the_trainer_label_smoothing_unless_the_recipe_sets_its_own():
    from hf_rcka.errors import RecipeError
    from hf_rcka.modeling.assembly import build_losses

    ce, deit = build_losses([{"name": "ce"}, {"name": "deit_token", "weight": 0.5}], label_smoothing=0.1)
    assert ce.label_smoothing == 0.1 and deit.weight == 0.5 and not hasattr(deit, "label_smoothing")
    (own,) = build_losses([{"name": "ce", "label_smoothing": 0.2}], label_smoothing=0.0)
    assert own.label_smoothing == 0.2
    (same,) = build_losses([{"name": "ce", "label_smoothing": 0.1}], label_smoothing=0.1)
    assert same.label_smoothing == 0.1
    # two values: ce's applied, and the factor was recorded beside it as if it had
    with pytest.raises(RecipeError, match="label_smoothing_factor 0.1 and ce's label_smoothing 0.2 disagree"):
        build_losses([{"name": "ce", "label_smoothing": 0.2}], label_smoothing=0.1)
    (plain,) = build_losses([{"name": "ce"}], label_smoothing=0.0)
    assert plain.label_smoothing is None



def test_the_label_smoothing_of_a_ce_switched_off_is_not_compared_with_the_factor():
    """A ce at weight 0 is not computed: its label_smoothing beside another label_smoothing_factor
    was refused as two values of which "ce's would apply", though neither applies to anything."""
    from hf_rcka.modeling.assembly import build_losses

    (kd,) = build_losses([{"name": "ce", "weight": 0.0, "label_smoothing": 0.2}, {"name": "kd"}], label_smoothing=0.1)
    assert kd.registry_name == "kd"



def test_label_smoothing_without_a_task_loss_is_said(caplog):
    """With no ce among the losses the factor smoothed nothing, and nothing said so."""
    from hf_rcka.modeling.assembly import build_losses

    with caplog.at_level("WARNING", logger="hf_rcka.modeling.assembly"):
        build_losses([{"name": "kd"}], label_smoothing=0.1)
        build_losses([{"name": "ce"}, {"name": "kd"}], label_smoothing=0.1)
        build_losses([{"name": "kd"}], label_smoothing=0.0)
    said = [r.getMessage() for r in caplog.records if "label_smoothing_factor" in r.getMessage()]
    assert said == ["label_smoothing_factor 0.1 has no effect: it smooths the task loss (ce), and this run trains "
                    "without one (losses ['kd'])"]


def test_epoch_end_reaches_every_loss_with_the_epoch_number():
    from types import SimpleNamespace

    from hf_rcka import LOSSES
    from hf_rcka.trainer.trainer import _EpochEndCallback

    seen = []

    class Recorder(LOSSES.get("kd")):
        def on_epoch_end(self, epoch):
            seen.append((self.temperature, epoch))

    callback = _EpochEndCallback([Recorder(temperature=2.0), LOSSES.build("ce"), Recorder(temperature=3.0)])
    going, stopping = SimpleNamespace(should_training_stop=False), SimpleNamespace(should_training_stop=True)
    callback.on_epoch_end(None, SimpleNamespace(epoch=2.0), stopping)
    # max_steps or a signal stopped the third epoch early: it goes on when resumed or extended
    callback.on_epoch_end(None, SimpleNamespace(epoch=2.4), stopping)
    assert seen == [(2.0, 2), (3.0, 2)]
    callback.on_epoch_end(None, SimpleNamespace(epoch=2.4), going)  # a stream's pass (its length unknown) ended
    assert seen == [(2.0, 2), (3.0, 2), (2.0, 3), (3.0, 3)]
    # an epoch's last step, then Trainer's on_epoch_end of that epoch: the losses hear of its end once
    # (the callback's contract: a loss of one's own that steps a schedule at each epoch's end stepped twice)
    callback.on_step_end(None, SimpleNamespace(epoch=4.0), going)
    callback.on_epoch_end(None, SimpleNamespace(epoch=4.0), going)
    assert seen[4:] == [(2.0, 4), (3.0, 4)]
    callback.on_train_begin(None, None, None)  # a new train() of the same trainer counts its epochs afresh
    callback.on_epoch_end(None, SimpleNamespace(epoch=1.0), going)
    assert seen[6:] == [(2.0, 1), (3.0, 1)]


def _one_step_params(tmp_path, name, batch, accumulation):
    args = make_args(
        tmp_path, name, max_steps=1, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", losses=[{"name": "ce"}, {"name": "kd"}],
        max_grad_norm=0.0,  # clipping would bring a gradient of twice the scale back to the same norm
    )
    trainer = make_trainer(args, train=pixel_dataset(8, seed=3))
    trainer.train()
    return snapshot(trainer.model.student)


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    # ce and kd are per-sample means, so 2 x 4 accumulated must equal one batch of 8.
    # (Batch-relational losses like rcka are not: a 4-sample Gram is not an 8-sample Gram.)
    initial = snapshot(tiny_vit())
    large = _one_step_params(tmp_path, "large", batch=8, accumulation=1)
    accumulated = _one_step_params(tmp_path, "accumulated", batch=4, accumulation=2)
    moved = [k for k in initial if not torch.allclose(initial[k], large[k])]
    assert moved, "the step must change the student"
    for key in large:
        torch.testing.assert_close(accumulated[key], large[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_resume_continues_bit_exactly(tmp_path, family):
    def build_student():
        return tiny_vit() if family == "vit" else tiny_resnet(seed=5)

    def run(name, resume=None):
        args = make_args(tmp_path, name, max_steps=4, save_strategy="steps", save_steps=2,
                         losses=FEATURE_LOSSES, feature_pairs=PATCH_PAIR)
        trainer = make_trainer(args, student=build_student())
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    straight = run("straight")
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert (checkpoint / DISTILLATION_STATE_NAME).is_file()
    resumed = run("resumed", resume=str(checkpoint))
    for part in ("student", "adapters", "losses"):
        expected, actual = getattr(straight, part).state_dict(), getattr(resumed, part).state_dict()
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{part}.{key} differs after resume"


def test_resume_refuses_another_teacher_and_takes_the_same_one_in_bfloat16(tmp_path):
    """A checkpoint holds no teacher: resumed with another one, the run went on distilling from it
    and said nothing (through the Python API no recipe record is there to compare)."""
    from hf_rcka.errors import ModelError
    from hf_rcka.trainer.teacher_record import TEACHER_RECORD_NAME

    def run(name, teacher, resume=None):
        args = make_args(tmp_path, name, max_steps=4, save_strategy="steps", save_steps=2,
                         losses=[{"name": "ce"}, {"name": "kd"}])
        trainer = make_trainer(args, teacher=teacher)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    run("first", tiny_resnet(seed=0))
    checkpoint = str(tmp_path / "first" / "checkpoint-2")
    assert (tmp_path / "first" / "checkpoint-2" / TEACHER_RECORD_NAME).is_file()
    with pytest.raises(ModelError, match="was trained with another teacher"):
        run("other", tiny_resnet(seed=1), resume=checkpoint)
    retrained = tiny_resnet(seed=0)
    with torch.no_grad():
        next(retrained.parameters()).add_(0.05)  # one weight tensor moved: a retrained teacher at the same path
    with pytest.raises(ModelError, match="was trained with another teacher"):
        run("retrained", retrained, resume=checkpoint)
    assert run("same", tiny_resnet(seed=0).to(torch.bfloat16), resume=checkpoint).state.global_step == 4


def test_a_teacher_record_cut_short_is_not_compared(tmp_path, caplog):
    """A kill during an earlier version's in-place write left teacher.json empty: rerunning the
    run's recorded recipe failed with a JSONDecodeError traceback once both models had loaded."""
    from hf_rcka.trainer.teacher_record import TEACHER_RECORD_NAME, recorded_teacher, write_teacher_record

    write_teacher_record(str(tmp_path), {"source": "t", "values": 3, "sha256": "ab"})
    assert recorded_teacher(str(tmp_path)) == {"source": "t", "values": 3, "sha256": "ab"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [TEACHER_RECORD_NAME]  # no partial file left beside it
    (tmp_path / TEACHER_RECORD_NAME).write_text('{"source": "t", "val')
    with caplog.at_level(logging.WARNING):
        assert recorded_teacher(str(tmp_path)) is None
    assert "cannot be read" in caplog.text and "not compared" in caplog.text


def test_resume_refuses_other_loss_options_or_pairs_and_takes_another_weight(tmp_path):
    """The loss state fits any option of the same loss: a resume with kd's temperature changed, or
    with pairs of the same shapes between other layers, loaded and went on silently."""
    from hf_rcka.errors import ModelError
    from hf_rcka.trainer.loss_record import LOSS_RECORD_NAME

    def run(name, losses, pairs=PATCH_PAIR, resume=None):
        args = make_args(tmp_path, name, max_steps=4, save_strategy="steps", save_steps=2, losses=losses,
                         feature_pairs=pairs)
        trainer = make_trainer(args)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    losses = [{"name": "ce"}, {"name": "kd", "temperature": 4.0}, {"name": "patch_cka"}]
    run("first", losses)
    checkpoint = str(tmp_path / "first" / "checkpoint-2")
    assert (tmp_path / "first" / "checkpoint-2" / LOSS_RECORD_NAME).is_file()
    with pytest.raises(ModelError, match=r"other loss settings \(kd temperature 4.0 -> 2.0\)"):
        run("hotter", [{"name": "ce"}, {"name": "kd", "temperature": 2.0}, {"name": "patch_cka"}], resume=checkpoint)
    with pytest.raises(ModelError, match=r"other loss settings \(feature_pairs \[\{'student_layer': -1, 'teacher_layer': -2"):
        run("other_pairs", losses, pairs=[{"student_layer": -2, "teacher_layer": -2, "adapter": "patch_match"}],
            resume=checkpoint)
    reweighted = [{"name": "ce"}, {"name": "kd", "weight": 3.0}, {"name": "patch_cka", "weight": 0.5}]
    assert run("reweighted", reweighted, resume=checkpoint).state.global_step == 4  # temperature 4 is kd's default


def test_a_resume_from_an_epochs_last_step_keeps_the_epochs_end(tmp_path):
    """A checkpoint at an epoch's last step (save_steps) comes before Trainer's on_epoch_end, and the
    resumed run starts the next epoch: EKT's epoch centres were never swapped in, and its second
    epoch trained on zero centres (0.128 apart from the uninterrupted run, exit 0)."""
    ekt = ["ce", {"name": "kernel_transfer", "weight": 1.0, "centres": "epoch"}]

    def run(name, resume=None):  # 20 images in batches of 5: 4 steps an epoch
        args = make_args(tmp_path, name, num_train_epochs=3, save_strategy="steps", save_steps=4, losses=ekt)
        trainer = make_trainer(args)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    straight = run("straight")
    centres = straight.losses["kernel_transfer"].student_centres
    assert centres.abs().sum() > 0
    resumed = run("resumed", resume=str(tmp_path / "straight" / "checkpoint-4"))
    for part in ("student", "losses"):
        expected, actual = getattr(straight, part).state_dict(), getattr(resumed, part).state_dict()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{part}.{key} differs after resume"


def assert_extended_as_straight(straight, extended):
    """The student and the losses' state (EKT's centres) of a stopped-and-extended run equal an
    uninterrupted run's, bit for bit."""
    for part in ("student", "losses"):
        expected, actual = getattr(straight, part).state_dict(), getattr(extended, part).state_dict()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{part}.{key} differs after the extension"


def test_a_run_extended_from_a_stop_inside_an_epoch_continues_that_epoch(tmp_path):
    """max_steps 6 (an epoch and a half) ended the second epoch at its stop: EKT's centres took half
    an epoch's means, the final checkpoint held them, and the run extended to 12 steps trained on
    other centres than an uninterrupted one (1.31 apart, exit 0)."""
    ekt = ["ce", {"name": "kernel_transfer", "weight": 1.0, "centres": "epoch"}]

    def run(name, steps, resume=None):  # 20 images in batches of 5: 4 steps an epoch
        # save_strategy epoch: Trainer saves the stopped epoch after its on_epoch_end
        args = make_args(tmp_path, name, max_steps=steps, save_strategy="epoch", losses=ekt,
                         lr_scheduler_type="constant")
        trainer = make_trainer(args)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    straight = run("straight", 12)
    run("stopped", 6)
    extended = run("extended", 12, resume=str(tmp_path / "stopped" / "checkpoint-6"))
    assert_extended_as_straight(straight, extended)


def test_a_stream_run_extended_from_a_stop_inside_its_first_pass_continues_that_pass(tmp_path):
    """Trainer counts a stream's epochs against max_steps: state.epoch was 1.0 at the stop at step 4
    of a 12-step pass, EKT took that third of a pass as a whole epoch's centres, the checkpoint held
    them, and the run extended to 8 steps trained on other centres than an uninterrupted one."""
    ekt = ["ce", {"name": "kernel_transfer", "weight": 1.0, "centres": "epoch"}]

    def run(name, steps, resume=None):  # a 60-image stream in batches of 5: 12 steps a pass
        args = make_args(tmp_path, name, max_steps=steps, save_strategy="steps", save_steps=4, losses=ekt,
                         lr_scheduler_type="constant")
        trainer = make_trainer(args, train=pixel_dataset(60, seed=0).to_iterable_dataset())
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    straight = run("straight", 8)
    stopped = run("stopped", 4).losses["kernel_transfer"]
    assert stopped.seen.sum() == 0 and stopped.counts.sum() == 20, "a third of a pass is no epoch's centres"
    extended = run("extended", 8, resume=str(tmp_path / "stopped" / "checkpoint-4"))
    assert_extended_as_straight(straight, extended)


def test_a_stream_resumed_with_other_loader_workers_reading_its_shards_is_refused(tmp_path):
    """Loader workers read a stream's shards side by side and the DataLoader takes their batches in
    turn: a 2-shard stream trained with 0 workers and resumed with 2 skipped batches of the new order,
    trained one batch twice and never another, and exited 0. A 1-shard stream reads in one order."""
    from hf_rcka.errors import RecipeError

    def run(name, shards, workers, resume=None):
        args = make_args(tmp_path, name, max_steps=4, save_strategy="steps", save_steps=2, losses=["ce"],
                         dataloader_num_workers=workers)
        trainer = make_trainer(args, teacher=None, train=pixel_dataset(20, seed=0).to_iterable_dataset(num_shards=shards))
        trainer.train(resume_from_checkpoint=resume)

    run("sharded", 2, 0)
    with pytest.raises(RecipeError, match=r"read its training stream 1 shard\(s\) at a time, and this run reads it 2"):
        run("resumed", 2, 2, resume=str(tmp_path / "sharded" / "checkpoint-2"))
    run("one_shard", 1, 0)
    run("one_shard_resumed", 1, 2, resume=str(tmp_path / "one_shard" / "checkpoint-2"))


def test_a_stream_whose_pass_ends_inside_a_gradient_accumulation_is_refused(tmp_path):
    """Trainer ends no accumulation at a stream's pass end: with 4 batches a pass and 3 to accumulate,
    the pass's 4th micro-batch was added to the next pass's first step (4 summed where 3 were asked),
    and a pass shorter than the accumulation never took a step (the run trained forever at step 0)."""
    from hf_rcka.errors import RecipeError

    def run(name, accumulation):
        args = make_args(tmp_path, name, max_steps=3, gradient_accumulation_steps=accumulation, losses=["ce"])
        make_trainer(args, teacher=None, train=pixel_dataset(20, seed=0).to_iterable_dataset()).train()

    with pytest.raises(RecipeError, match="gradient_accumulation_steps is 3, and a pass over the training stream "
                                          "ended 1 micro-batch"):
        run("uneven", 3)
    run("divisor", 2)  # 4 batches a pass: each pass ends with a step


def test_a_stream_with_gradient_accumulation_is_told_the_rule_as_training_starts(tmp_path, caplog):
    """The refusal comes at the end of the first pass that breaks the rule, an epoch in on a large
    stream: the rule is said when training starts."""
    args = make_args(tmp_path, "said", max_steps=2, gradient_accumulation_steps=2, losses=["ce"])
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        make_trainer(args, teacher=None, train=pixel_dataset(20, seed=0).to_iterable_dataset()).train()
    assert any("gradient_accumulation_steps is 2: each pass must hold a multiple of 2 batches per process"
               in record.getMessage() for record in caplog.records)


def test_a_stream_resumed_at_its_passs_end_does_not_evaluate_and_save_that_step_again(tmp_path):
    """Resumed from the checkpoint at a stream's pass end (epoch strategies: saved after its
    evaluation), Trainer skipped the pass to its end and ended the epoch again: a second evaluation
    of the same weights, logged twice, and the checkpoint resumed from rewritten."""
    import json

    def run(name, resume=None):  # a 20-image stream in batches of 5: 4 steps a pass
        args = make_args(tmp_path, name, max_steps=8, eval_strategy="epoch", save_strategy="epoch", losses=["ce"])
        trainer = make_trainer(args, teacher=None, train=pixel_dataset(20, seed=0).to_iterable_dataset())
        trainer.train(resume_from_checkpoint=resume)
        return [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry]

    assert run("straight") == [4, 8]
    checkpoint = tmp_path / "straight" / "checkpoint-4"
    assert run("resumed", resume=str(checkpoint)) == [4, 8]
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()
    record = json.loads((checkpoint / "trainer_state.json").read_text())
    assert [entry["step"] for entry in record["log_history"] if "eval_loss" in entry] == [4]


def test_a_resumed_run_starts_at_its_own_schedules_rate(tmp_path):
    """Extended from 4 to 8 cosine steps, the resumed run trained its step 5 at the 4-step schedule's
    end (rate 0): Trainer restores the optimizer's last rates, and the new schedule applied a step later."""
    from transformers import TrainerCallback

    class Rates(TrainerCallback):
        def __init__(self):
            self.seen, self.logged = {}, {}

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self.seen[state.global_step + 1] = optimizer.param_groups[0]["lr"]

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "learning_rate" in logs:
                self.logged[state.global_step] = logs["learning_rate"]

    def run(name, max_steps, resume=None):
        args = make_args(tmp_path, name, max_steps=max_steps, lr_scheduler_type="cosine", learning_rate=1e-2,
                         save_strategy="steps", save_steps=4, losses=["ce"])
        rates = Rates()
        logged[name] = rates.logged
        trainer = make_trainer(args, teacher=None)
        trainer.add_callback(rates)
        trainer.train(resume_from_checkpoint=resume)
        return rates.seen

    logged = {}
    straight = run("straight", 8)
    run("short", 4)
    extended = run("short", 8, resume=str(tmp_path / "short" / "checkpoint-4"))
    # and logs the rate it trained at (it logged the 4-step schedule's last one, 0.0)
    assert logged["short"][5] == pytest.approx(logged["straight"][5]) and logged["short"][5] > 0
    assert sorted(extended) == [5, 6, 7, 8]
    assert extended[5] == pytest.approx(straight[5]) and extended[5] > 0
    assert [extended[k] for k in (6, 7, 8)] == pytest.approx([straight[k] for k in (6, 7, 8)])
    # an unchanged schedule resumes at the rate it had
    again = run("again", 8, resume=str(tmp_path / "straight" / "checkpoint-4"))
    assert again == pytest.approx({k: straight[k] for k in (5, 6, 7, 8)})


def test_a_resumed_run_keeps_the_best_checkpoint_of_its_own_folder(tmp_path):
    """trainer_state.json records the best checkpoint's path as saved: a run folder moved since
    exported its last step instead (Trainer logs one line), and a folder reused since, another
    run's checkpoint of that name."""
    from hf_rcka.errors import ModelError

    def args(name, max_steps):
        return make_args(tmp_path, name, max_steps=max_steps, losses=["ce"], eval_strategy="steps", eval_steps=2,
                         save_strategy="steps", save_steps=2, load_best_model_at_end=True,
                         metric_for_best_model="loss", greater_is_better=True)  # the highest loss: an early step

    first = make_trainer(args("run", 4), teacher=None)
    first.train()
    assert first.state.best_model_checkpoint == str(tmp_path / "run" / "checkpoint-2")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint-2").mkdir()  # another run's, in the folder the state names
    resumed = make_trainer(args("moved", 6), teacher=None)
    resumed.train(resume_from_checkpoint=str(tmp_path / "moved" / "checkpoint-4"))
    assert resumed.state.best_global_step == 2, "still the best: loaded from the moved folder"
    assert resumed.state.best_model_checkpoint == str(tmp_path / "moved" / "checkpoint-2")
    best = snapshot(resumed.distillation_model.student)
    saved = AutoModelForImageClassification.from_pretrained(tmp_path / "moved" / "checkpoint-2").state_dict()
    assert all(torch.equal(best[k], saved[k]) for k in saved)
    # resumed into a new folder, the run's own kept: its best checkpoint is the one beside the resumed one
    fresh = make_trainer(args("fresh", 6), teacher=None)
    fresh.train(resume_from_checkpoint=str(tmp_path / "moved" / "checkpoint-4"))
    assert fresh.state.best_model_checkpoint == str(tmp_path / "moved" / "checkpoint-2")
    # resumed into a folder without the best checkpoint, from a copy without it: refused before a step trains
    shutil.copytree(tmp_path / "moved" / "checkpoint-4", tmp_path / "copy" / "checkpoint-4")
    elsewhere = make_trainer(args("elsewhere", 6), teacher=None)
    with pytest.raises(ModelError, match="the run's best checkpoint, checkpoint-2 .* is not in output_dir"):
        elsewhere.train(resume_from_checkpoint=str(tmp_path / "copy" / "checkpoint-4"))
    assert elsewhere.state.global_step == 0


def test_a_resume_without_load_best_model_at_end_looks_for_no_best_checkpoint(tmp_path):
    """metric_for_best_model alone records a best step too: a checkpoint copied into another folder,
    without the best step's checkpoint beside it, was refused as if load_best_model_at_end would
    export another model, which it does not do when off."""
    from hf_rcka.trainer.checkpointing import best_checkpoint

    copy = tmp_path / "copy" / "checkpoint-4"
    copy.mkdir(parents=True)
    (copy / "trainer_state.json").write_text(json.dumps(
        {"best_global_step": 2, "best_model_checkpoint": str(tmp_path / "run" / "checkpoint-2")}))
    off = SimpleNamespace(load_best_model_at_end=False, output_dir=str(tmp_path / "new"))
    assert best_checkpoint(str(copy), off) is None
    with pytest.raises(ModelError, match="the run's best checkpoint, checkpoint-2 .* is not in output_dir"):
        best_checkpoint(str(copy), SimpleNamespace(load_best_model_at_end=True, output_dir=str(tmp_path / "new")))


def test_resume_refuses_a_checkpoint_without_distillation_state(tmp_path):
    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, losses=FEATURE_LOSSES,
                     feature_pairs=PATCH_PAIR)
    trainer = make_trainer(args)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    os.remove(checkpoint / DISTILLATION_STATE_NAME)
    with pytest.raises(FileNotFoundError, match=DISTILLATION_STATE_NAME):
        trainer.model.load_checkpoint(str(checkpoint))


def test_resume_with_other_weight_decay_groups_is_one_line(tmp_path):
    """model_no_weight_decay changed on resume failed in torch's optimizer load, a traceback after
    everything had loaded."""
    trainer = make_trainer(make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, weight_decay=0.05))
    trainer.train()
    resumed = make_trainer(make_args(tmp_path, "again", max_steps=4, save_strategy="steps", save_steps=2,
                                     weight_decay=0.05, model_no_weight_decay=False))
    with pytest.raises(RecipeError, match=r"holds an optimizer whose parameter groups differ from this run's .*"
                                          r"model_no_weight_decay"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))


def test_resume_refuses_a_checkpoint_missing_student_weights(tmp_path):
    """from_pretrained fills the tensors a checkpoint lacks with fresh random values, and the strict
    copy then took them as restored: a checkpoint stripped of a layer resumed with it random, exit 0."""
    from safetensors.torch import load_file, save_file

    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = make_trainer(args)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    weights = load_file(checkpoint / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".1." not in k}, checkpoint / "model.safetensors",
              metadata={"format": "pt"})
    resumed = make_trainer(make_args(tmp_path, "again", max_steps=4, save_strategy="steps", save_steps=2))
    with pytest.raises(ModelError, match=r"checkpoint-2' does not fit this run \(.*checkpoint-2 does not fit this "
                                         r"run's student: its model.safetensors lacks .*layers?\.1\."):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 0


def test_saved_student_is_a_plain_transformers_model(tmp_path):
    args = make_args(tmp_path, max_steps=2, losses=FEATURE_LOSSES, feature_pairs=PATCH_PAIR)
    trainer = make_trainer(args)
    trainer.train()
    out = tmp_path / "export"
    trainer.save_model(str(out))

    assert not (out / DISTILLATION_STATE_NAME).exists(), "adapters belong in checkpoints only"
    reloaded = AutoModelForImageClassification.from_pretrained(out)
    assert AutoImageProcessor.from_pretrained(out).size == {"height": 16, "width": 16}
    pixels = pixel_dataset(5, seed=9)[:]["pixel_values"]
    student = trainer.model.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(pixel_values=pixels).logits, student(pixel_values=pixels).logits)
    saved_params = sum(p.numel() for p in reloaded.parameters())
    assert saved_params == sum(p.numel() for p in student.parameters()), "only the student is exported"


def test_load_best_model_at_end_restores_the_best_student(tmp_path):
    args = make_args(
        tmp_path, max_steps=4, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
        load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False,
        losses=FEATURE_LOSSES, feature_pairs=PATCH_PAIR, learning_rate=5e-2,
    )
    trainer = make_trainer(args)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    expected = AutoModelForImageClassification.from_pretrained(best).state_dict()
    for key, value in trainer.model.student.state_dict().items():
        assert torch.equal(value, expected[key])


def test_a_second_train_of_a_trainer_that_loaded_its_best_checkpoint_trains_weights_of_its_own(tmp_path):
    """After a train() that loaded its best checkpoint, the trainer's next train() still took its
    weights for that checkpoint's: a stop during it wrote no checkpoint of its steps ("the best
    checkpoint was loaded"), and the final evaluation measured the wrong step."""
    from hf_rcka.trainer.interrupt import save_checkpoint_now

    args = make_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                     load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False,
                     losses=["ce"])
    trainer = make_trainer(args)
    trainer.train()
    assert trainer.best_model_loaded
    trainer.args.load_best_model_at_end, trainer.args.max_steps, trainer.args.save_strategy = False, 3, "no"
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert not trainer.best_model_loaded
    assert save_checkpoint_now(trainer) == str(tmp_path / "run" / "checkpoint-3")


def test_plain_supervised_training_without_a_teacher(tmp_path):
    args = make_args(tmp_path, max_steps=3, eval_strategy="steps", eval_steps=3)
    trainer = make_trainer(args, teacher=None)
    before = snapshot(trainer.model.student)
    trainer.train()
    assert trainer.model.teacher is None and list(trainer.model.losses) == ["ce"]
    assert changed(before, trainer.model.student)
    assert "ce_loss" in trainer.state.log_history[0]


def test_bf16_autocast_on_cpu_stays_finite(tmp_path):
    args = make_args(tmp_path, max_steps=2, bf16=True, losses=FEATURE_LOSSES, feature_pairs=PATCH_PAIR)
    trainer = make_trainer(args)
    trainer.train()
    entries = [e for e in trainer.state.log_history if "loss" in e]
    assert entries and all(torch.isfinite(torch.tensor(e["loss"])) for e in entries)
    assert all(p.dtype == torch.float32 for p in trainer.model.student.parameters()), "autocast, not a cast"
    # the evaluation is the exported float32 model's, not bf16 autocast's (it differed by a few images)
    evaluation = pixel_dataset(10, seed=1)
    predicted = torch.as_tensor(trainer.predict(evaluation).predictions)
    with torch.no_grad():
        deployed = trainer.model.student.eval()(pixel_values=evaluation[:]["pixel_values"]).logits
    torch.testing.assert_close(predicted, deployed, rtol=1e-5, atol=1e-5)
    # ... while the teacher, which is not exported, keeps the run's bf16 (in float32 a large teacher
    # cost several times its training forward at every evaluation)
    computed = {}
    for role in ("student", "teacher"):
        head = classifier_of(getattr(trainer.model, role))
        head.register_forward_hook(lambda module, args, out, role=role: computed.setdefault(role, out.dtype) and None)
    metrics = trainer.evaluate(evaluation)
    assert computed == {"student": torch.float32, "teacher": torch.bfloat16}
    assert all(math.isfinite(v) for k, v in metrics.items() if k.endswith("_loss"))


def test_divergence_is_nan_weights_not_a_nan_loss(tmp_path):
    """A NaN loss with finite weights (an fp16 step that loss scaling skipped) trains on; a NaN
    BatchNorm statistic is divergence even with finite parameters: the saved model evaluates with it."""
    from transformers import TrainerControl, TrainerState

    student, args, control = tiny_resnet(), make_args(tmp_path, save_strategy="steps"), TrainerControl()
    check = DivergenceCheck(lambda: student)
    check.on_log(args, TrainerState(global_step=3), control, logs={"loss": 0.0, "ce_loss": float("nan")})
    assert check.error is None and not control.should_training_stop
    with torch.no_grad():
        next(b for name, b in student.named_buffers() if name.endswith("running_var"))[0] = float("nan")
    control.should_save = True  # a checkpoint step: the weights are read even though every loss is finite
    check.on_step_end(args, TrainerState(global_step=4), control)
    assert control.should_training_stop and not control.should_save
    assert str(check.error).startswith("training diverged: by step 4 the student's weights are NaN or infinite")


def test_fifty_optimizer_steps_in_a_row_skipped_by_loss_scaling_are_divergence(tmp_path):
    """fp16 loss scaling skips a step whose gradients overflow: the weights stay finite, and a run
    whose every step is skipped ended "successfully" with the model of its last real step."""
    from transformers import TrainerControl, TrainerState

    skipped = iter([True] * 30 + [False] + [True] * (SKIPPED_STEPS_LIMIT - 1) + [True])
    student, args, control = tiny_resnet(), make_args(tmp_path), TrainerControl()
    check = DivergenceCheck(lambda: student, lambda: next(skipped))
    for step in range(30 + 1 + SKIPPED_STEPS_LIMIT - 1):  # a real step between two runs of skips starts over
        check.on_step_end(args, TrainerState(global_step=step), control)
        assert check.error is None and not control.should_training_stop
    check.on_step_end(args, TrainerState(global_step=99), control)
    assert control.should_training_stop and not control.should_save
    assert str(check.error).startswith(f"training diverged: by step 99 loss scaling skipped the last "
                                       f"{SKIPPED_STEPS_LIMIT} optimizer steps")


def test_a_trainer_stops_when_loss_scaling_skips_every_step(tmp_path, monkeypatch):
    """The trainer reads the accelerator's flag (fp16 cannot run on a CPU: the flag is set by hand)."""
    from accelerate import Accelerator

    from hf_rcka.errors import TrainingDiverged

    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: True))
    args = make_args(tmp_path, max_steps=SKIPPED_STEPS_LIMIT + 5, losses=["ce"], logging_steps=100)
    trainer = DistillationTrainer(model=tiny_resnet(), args=args, train_dataset=pixel_dataset(10),
                                  processing_class=processor(16))
    with pytest.raises(TrainingDiverged, match=f"by step {SKIPPED_STEPS_LIMIT} loss scaling skipped"):
        trainer.train()


def test_nan_distillation_state_beside_a_finite_student_is_divergence(tmp_path):
    """A loss's class centres turned NaN (a NaN teacher feature) while fp16 skipped the student's
    steps: the student stays finite and every later loss is NaN."""
    from transformers import TrainerControl, TrainerState

    from hf_rcka.losses import KernelTransferLoss, LossContext

    loss = KernelTransferLoss()
    loss.setup(LossContext(num_labels=3, student_pooled_dim=4, teacher_pooled_dim=6))
    parts = torch.nn.ModuleDict({"student": tiny_resnet(), "adapters": torch.nn.ModuleList(),
                                 "losses": torch.nn.ModuleDict({"kernel_transfer": loss})})
    args, control = make_args(tmp_path), TrainerControl()
    check = DivergenceCheck(lambda: parts)
    check.on_log(args, TrainerState(global_step=3), control, logs={"kernel_transfer_loss": float("nan")})
    assert check.error is None
    loss.teacher_centres[1, 2] = float("nan")
    check.on_log(args, TrainerState(global_step=4), control, logs={"kernel_transfer_loss": float("nan")})
    assert control.should_training_stop
    assert str(check.error).startswith("training diverged: by step 4 the distillation state trained beside the "
                                       "student is NaN or infinite (1 tensor: losses.kernel_transfer.teacher_centres)")


def test_the_divergence_error_blames_the_distillation_state_only_when_the_student_is_finite(tmp_path):
    """An adapter gone NaN beside a finite student is the distillation state (adapters as well as
    the losses' state); a NaN student beside NaN state is the student's weights, as is a divergence
    only another rank saw (no name here), is never read as "the distillation state (0 tensors)".
    A logging step that finds it evaluates no more: Trainer evaluates after it logs, and would
    score the diverged weights over the whole evaluation set first."""
    from transformers import TrainerControl, TrainerState

    from hf_rcka.trainer.divergence import _what_diverged

    def error(nan_in):
        parts = torch.nn.ModuleDict({"student": tiny_resnet(), "adapters": torch.nn.ModuleList([torch.nn.Linear(4, 6)]),
                                     "losses": torch.nn.ModuleDict()})
        with torch.no_grad():
            for part in nan_in:
                next(parts[part].parameters()).view(-1)[0] = float("nan")
        check, control = DivergenceCheck(lambda: parts), TrainerControl(should_evaluate=True)
        check.on_log(make_args(tmp_path), TrainerState(global_step=4), control, logs={"loss": float("nan")})
        assert control.should_training_stop and not control.should_evaluate, "no evaluation of the NaN weights"
        return str(check.error)

    assert error(["adapters"]).startswith("training diverged: by step 4 the distillation state trained beside the "
                                          "student is NaN or infinite (1 tensor: adapters.0.weight)")
    assert error(["student", "adapters"]).startswith("training diverged: by step 4 the student's weights are NaN")
    assert _what_diverged([]) == "the student's weights are NaN or infinite"


def test_an_epoch_end_save_reads_the_weights_and_a_new_train_forgets_the_last_ones_divergence(tmp_path):
    """At an epoch's end Trainer evaluates before it saves: the weights are read there, or NaN
    weights would be scored over the whole evaluation set before the save found them. A later
    train() of the same trainer (its weights finite again) starts without the earlier error, which
    would otherwise stop it at its first check and be raised again."""
    from transformers import TrainerControl, TrainerState

    student, args = tiny_resnet(), make_args(tmp_path, save_strategy="epoch", eval_strategy="epoch")
    check, control = DivergenceCheck(lambda: student), TrainerControl(should_save=True, should_evaluate=True)
    weight = next(student.parameters())
    finite = weight.detach().clone()
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    check.on_epoch_end(args, TrainerState(global_step=5), control)
    assert control.should_training_stop and not control.should_evaluate and not control.should_save
    assert str(check.error).startswith("training diverged: by step 5 the student's weights are NaN or infinite")
    with torch.no_grad():
        weight.copy_(finite)
    control = TrainerControl(should_save=True)
    check.on_train_begin(args, TrainerState(), control)
    check.on_step_end(args, TrainerState(global_step=1), control)
    assert check.error is None and not control.should_training_stop and control.should_save


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_model_of_nan_weights_given_in_python_is_refused(tmp_path, role):
    """evaluate() on such a student reported the accuracy of argmax over NaN logits."""
    from hf_rcka.errors import ModelError

    models = {"student": tiny_vit(), "teacher": tiny_resnet()}
    with torch.no_grad():
        next(iter(models[role].parameters())).view(-1)[0] = float("inf")
    with pytest.raises(ModelError, match=f"the {role} given to DistillationTrainer .*: the {role}'s weights are NaN or "
                                         "infinite \\(1 tensor: "):
        make_trainer(make_args(tmp_path), student=models["student"], teacher=models[role] if role == "teacher" else None)


def test_weight_check_reads_float8_weights_and_names_unloaded_ones():
    """isfinite has no float8 kernel (fp8-quantised layers), and a meta tensor has no values to read:
    both raised a bare error from inside the check."""
    from hf_rcka.errors import ModelError
    from hf_rcka.trainer.divergence import check_loaded_weights, non_finite_tensors

    layer = torch.nn.Linear(4, 3)
    layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn)
    assert non_finite_tensors(layer) == []
    layer.weight.data[0, 0] = float("nan")
    assert non_finite_tensors(layer) == ["weight"]
    with torch.device("meta"):
        unloaded = torch.nn.Linear(4, 3)
    with pytest.raises(ModelError, match="the student's weights were never loaded, they are on the meta device "
                                         "\\(2 tensors: weight, bias\\)"):
        check_loaded_weights(unloaded, "student", "model_name_or_path", "some/model")


def test_teacher_near_chance_is_reported_before_training(tmp_path):
    # A constant teacher: always predicts class 0, so on balanced data it sits at chance.
    teacher = tiny_resnet()
    with torch.no_grad():
        teacher.classifier[-1].weight.zero_()
        teacher.classifier[-1].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    evaluation = pixel_dataset(30, seed=4)
    args = make_args(tmp_path, max_steps=1, teacher_accuracy_check="error", per_device_eval_batch_size=30)
    trainer = make_trainer(args, teacher=teacher, evaluation=evaluation)
    with pytest.raises(RuntimeError, match="near chance"):
        trainer.train()
    args = make_args(tmp_path, "warn", max_steps=1, teacher_accuracy_check="warn", per_device_eval_batch_size=30)
    trainer = make_trainer(args, teacher=teacher, evaluation=evaluation)
    with pytest.warns(UserWarning, match="near chance"):
        accuracy = trainer.check_teacher()
    assert accuracy == pytest.approx((evaluation[:]["labels"] == 0).float().mean().item())


def test_the_teacher_check_draws_its_batch_from_the_whole_evaluation_set(tmp_path):
    """Image folders list their images class by class: the first batch held class 0 alone, and a
    teacher answering 0 for every image scored 1.0 there (0.33 on the set), with 'error' too."""
    teacher = tiny_resnet()
    with torch.no_grad():
        teacher.classifier[-1].weight.zero_()
        teacher.classifier[-1].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    evaluation = pixel_dataset(90, seed=4).sort("labels")
    assert (evaluation[:20]["labels"] == 0).all(), "the first batch is of class 0 alone"
    args = make_args(tmp_path, max_steps=1, teacher_accuracy_check="error", per_device_eval_batch_size=20)
    with pytest.raises(RuntimeError, match="near chance"):
        make_trainer(args, teacher=teacher, evaluation=evaluation).train()


def test_deit_student_trains_its_distillation_head(tmp_path):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    torch.manual_seed(0)
    config = DeiTConfig(image_size=16, patch_size=4, hidden_size=36, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=44, num_labels=3)
    student = DeiTForImageClassificationWithTeacher(config)
    args = make_args(tmp_path, max_steps=2, losses=[{"name": "ce", "weight": 0.5},
                                                   {"name": "deit_token", "weight": 0.5, "mode": "hard"}])
    trainer = make_trainer(args, student=student)
    head = snapshot(student.distillation_classifier)
    trainer.train()
    assert changed(head, student.distillation_classifier)
    pixels = pixel_dataset(5)[:]["pixel_values"]
    with torch.no_grad():
        out = student.eval()(pixel_values=pixels)
        logits = trainer.model.eval()(pixel_values=pixels).logits
    torch.testing.assert_close(logits, (out.cls_logits + out.distillation_logits) / 2)


def test_deit_student_eval_ce_loss_is_that_of_the_logits_it_predicts_with(tmp_path):
    """DeiT deploys the average of its two heads; the evaluation's cross-entropy measures that, not
    the class head the training's ce term reads."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    torch.manual_seed(0)
    config = DeiTConfig(image_size=16, patch_size=4, hidden_size=36, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=44, num_labels=3)
    student = DeiTForImageClassificationWithTeacher(config)
    with torch.no_grad():  # heads that disagree, so the two cross-entropies differ
        student.distillation_classifier.weight.mul_(20)
    evaluation = pixel_dataset(6, seed=3)
    args = make_args(tmp_path, max_steps=1, losses=[{"name": "ce", "weight": 0.5},
                                                   {"name": "deit_token", "weight": 0.5, "mode": "hard"}])
    trainer = make_trainer(args, student=student, evaluation=evaluation)
    metrics = trainer.evaluate()
    batch = evaluation[:]
    with torch.no_grad():
        out = student.eval()(pixel_values=batch["pixel_values"])
    deployed = torch.nn.functional.cross_entropy(out.logits, batch["labels"]).item()
    class_head = torch.nn.functional.cross_entropy(out.cls_logits, batch["labels"]).item()
    assert abs(deployed - class_head) > 0.05
    assert metrics["eval_ce_loss"] == pytest.approx(0.5 * deployed, rel=1e-4)  # terms are logged weighted


def test_timm_distilled_deit_trains_its_distillation_head_and_predicts_with_both(tmp_path):
    """timm's distilled DeiT (DeiT's own model) as the deit_token student: the class head learns from
    the labels, the distillation head from the teacher, and the export averages both, as DeiT does."""
    from _models import timm_model

    student = timm_model("deit_tiny_distilled_patch16_224")
    args = make_args(tmp_path, max_steps=2, losses=[{"name": "ce", "weight": 0.5},
                                                   {"name": "deit_token", "weight": 0.5, "mode": "hard"}])
    trainer = make_trainer(args, student=student, train=pixel_dataset(20, size=32, seed=0),
                           evaluation=pixel_dataset(10, size=32, seed=1), processing_class=processor(32))
    heads = student.timm_model.head, student.timm_model.head_dist
    before = [snapshot(head) for head in heads]
    trainer.train()
    assert all(changed(b, head) for b, head in zip(before, heads))
    metrics = trainer.evaluate()
    assert metrics["eval_deit_token_loss"] > 0  # the evaluation reads the distillation head too
    pixels = pixel_dataset(5, size=32)[:]["pixel_values"]
    with torch.no_grad():
        features = student.eval().timm_model.forward_features(pixels)
        both = (heads[0](features[:, 0]) + heads[1](features[:, 1])) / 2
        torch.testing.assert_close(trainer.model.eval()(pixel_values=pixels).logits, both)
        torch.testing.assert_close(student(pixel_values=pixels).logits, both)  # what the saved model computes


def test_a_distillation_head_without_deit_token_is_trained_through_the_average(tmp_path):
    """The task loss read the class head alone, so without deit_token the distillation head stayed
    random, and the exported model averaged it into every prediction."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    torch.manual_seed(0)
    config = DeiTConfig(image_size=16, patch_size=4, hidden_size=36, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=44, num_labels=3)
    student = DeiTForImageClassificationWithTeacher(config)
    trainer = make_trainer(make_args(tmp_path, max_steps=2, losses=[{"name": "ce"}, {"name": "kd"}]), student=student)
    head = snapshot(student.distillation_classifier)
    trainer.train()
    assert changed(head, student.distillation_classifier)


def test_clear_errors_for_impossible_setups(tmp_path):
    with pytest.raises(ValueError, match="need a teacher"):
        make_trainer(make_args(tmp_path, losses=[{"name": "ce"}, {"name": "rcka"}]), teacher=None)
    with pytest.raises(ValueError, match="3 classes but the teacher 5"):
        make_trainer(make_args(tmp_path, losses=[{"name": "rcka"}]), teacher=tiny_resnet(num_labels=5))
    # when the trainer is built, not at the first step (a Hub student without the head: a traceback there)
    with pytest.raises(ModelError, match=r"losses \['deit_token'\] train a distillation head, and the student"):
        make_trainer(make_args(tmp_path, max_steps=1, losses=[{"name": "deit_token"}]))


class FakeHubApi:
    """Stands in for transformers' shared HfApi: 'uploads' copy the folder somewhere local."""

    def __init__(self, root: Path):
        self.root = root
        self.created = []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        self.created.append(repo_id)
        return type("RepoUrl", (), {"repo_id": f"someone/{repo_id}"})()

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        target = self.root / repo_id
        shutil.copytree(folder_path, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*ignore_patterns))
        return f"https://huggingface.co/{repo_id}"


def test_push_to_hub_uploads_student_and_a_distillation_card(tmp_path, monkeypatch):
    import transformers.trainer

    hub = FakeHubApi(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    args = make_args(tmp_path, max_steps=2, losses=[{"name": "ce"}, {"name": "rcka"}], save_strategy="steps",
                     save_steps=2, push_to_hub=True, hub_model_id="tiny-student", hub_strategy="end")
    trainer = make_trainer(args, teacher_name="acme/resnet-teacher")
    trainer.train()
    trainer.push_to_hub(dataset="acme/shapes")

    repo = tmp_path / "hub" / "someone" / "tiny-student"
    assert hub.created == ["tiny-student"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in repo.iterdir()
    }
    assert not list(repo.glob("checkpoint-*"))
    card = (repo / "README.md").read_text()
    header = card.split("---")[1]
    assert "knowledge-distillation" in header
    assert "base_model" not in card, "the teacher is not the student's base model"
    assert "acme/resnet-teacher" in card and "rcka" in card
    assert "acme/shapes" in header
    assert 'from_pretrained("someone/tiny-student")' in card, "the usage snippet loads the pushed repo id"


def _no_decay(trainer):
    trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return {names[id(p)] for group in trainer.optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}


@pytest.mark.parametrize("family", ["timm_deit_distilled", "hf_deit"])
def test_weight_decay_skips_position_embedding_and_tokens_like_timm(tmp_path, family):
    from _models import hf_deit, timm_model

    student = timm_model("deit_tiny_distilled_patch16_224") if family == "timm_deit_distilled" else hf_deit()
    tokens = ({"pos_embed", "cls_token", "dist_token"} if family == "timm_deit_distilled"
              else {"cls_token", "distillation_token", "position_embeddings"})
    exempt = {n for n in _no_decay(make_trainer(make_args(tmp_path, weight_decay=0.05), student=student))
              if n.rsplit(".", 1)[-1] in tokens}
    assert {n.rsplit(".", 1)[-1] for n in exempt} == tokens and all(n.startswith("student.") for n in exempt)
    # Trainer's own rule, without the model's list: the tokens are decayed, biases and norms still not
    plain = _no_decay(make_trainer(make_args(tmp_path, "plain", weight_decay=0.05, model_no_weight_decay=False),
                                   student=student))
    assert not plain & exempt and any(n.endswith(".bias") for n in plain)
    # transformers' own TrainingArguments have no model_no_weight_decay: the model's list applies, as by default
    from transformers import TrainingArguments

    given = TrainingArguments(output_dir=str(tmp_path / "given"), per_device_train_batch_size=5, use_cpu=True,
                              report_to="none", weight_decay=0.05)
    assert exempt <= _no_decay(make_trainer(given, student=student))


def test_weight_decay_spares_biases_and_layer_norms_but_decays_batch_norm_weights(tmp_path):
    """What the README says of the optimizer groups: Trainer's rule exempts biases and LayerNorm-type
    norms only, so a CNN student's BatchNorm weights decay (as in the ResNet papers' SGD recipes)."""
    from _models import timm_model

    student = timm_model("resnet18")
    exempt = _no_decay(make_trainer(make_args(tmp_path, weight_decay=0.05), student=student))
    assert "student.timm_model.bn1.bias" in exempt and "student.timm_model.bn1.weight" not in exempt
    vit = _no_decay(make_trainer(make_args(tmp_path, "vit", weight_decay=0.05),
                                 student=timm_model("deit_tiny_distilled_patch16_224")))
    assert any(n.endswith("norm1.weight") for n in vit)


@pytest.mark.parametrize("family", ["timm_rmsnorm_vit", "hf_efficientnet"])
def test_norm_weights_decay_by_the_norms_type_not_its_name(tmp_path, family):
    """Trainer tells norms apart by name: a timm ViT with RMSNorm decayed its blocks' norm1/norm2
    (RmsNorm) and spared only its final norm; transformers' EfficientNet spared the BatchNorms it
    names ``*_norm`` and decayed the others."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification, TimmWrapperConfig
    from transformers import TimmWrapperForImageClassification

    if family == "timm_rmsnorm_vit":
        student = TimmWrapperForImageClassification(TimmWrapperConfig(
            architecture="vit_tiny_patch16_224", num_labels=3, model_args=dict(
                img_size=16, patch_size=4, embed_dim=36, depth=1, num_heads=2, norm_layer="rmsnorm")))
    else:
        student = EfficientNetForImageClassification(EfficientNetConfig(
            image_size=16, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=32, num_labels=3))
    exempt = _no_decay(make_trainer(make_args(tmp_path, weight_decay=0.05), student=student))
    kinds = {f"student.{p}.weight": type(m) for p, m in student.named_modules()
             if isinstance(getattr(m, "weight", None), torch.nn.Parameter)}
    norms = {n for n, kind in kinds.items() if "Norm" in kind.__name__}
    batch = {n for n in norms if issubclass(kinds[n], torch.nn.modules.batchnorm._NormBase)}
    assert norms and norms - batch <= exempt and not batch & exempt
    assert norms - batch if family == "timm_rmsnorm_vit" else batch


def test_a_loss_at_weight_0_is_not_computed_and_its_teacher_not_run(tmp_path):
    """Weight 0 turns a term off: it added 0 but still cost its computation and the teacher's forward
    (and srd's BatchNorm could still fail on a one-image batch)."""
    args = make_args(tmp_path, max_steps=2, losses=[{"name": "ce"}, {"name": "kd", "weight": 0},
                                                    {"name": "srd", "weight": 0.0}])
    trainer = make_trainer(args)
    assert list(trainer.distillation_model.losses) == ["ce"]
    calls = []
    trainer.distillation_model.teacher.register_forward_hook(lambda *a: calls.append(1))
    trainer.train()
    assert calls == [] and not any("kd_loss" in entry for entry in trainer.state.log_history)


def test_evaluating_and_checking_the_teacher_leave_trainings_random_draws_alone(tmp_path):
    """A loader's iterator took a draw from torch's generator, which random erasing and Mixup draw
    from: turning the teacher check off, or evaluating more often, changed the run's augmentation."""
    args = make_args(tmp_path, max_steps=1, teacher_accuracy_check="warn", per_device_eval_batch_size=10)
    trainer = DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(), args=args, train_dataset=pixel_dataset(20),
                                  eval_dataset=pixel_dataset(20, seed=1), processing_class=processor(16),
                                  teacher_processor=processor(24))
    torch.manual_seed(3)
    before = torch.get_rng_state()
    assert trainer.check_teacher() is not None
    trainer.evaluate()
    assert torch.equal(torch.get_rng_state(), before)


def test_a_models_no_weight_decay_patterns_are_matched_as_timm_allows():
    """timm's no_weight_decay() may name fnmatch patterns (XCiT: 'pos_embed.*', its Fourier position
    encoding's projection): compared as plain names, they spared nothing, and those weights decayed."""
    from hf_rcka.trainer.weight_decay import model_no_weight_decay

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = torch.nn.Linear(2, 2)
            self.proj = torch.nn.Linear(2, 2)

        def no_weight_decay(self):
            return {"pos_embed.*"}

    wrapped = torch.nn.Sequential(Backbone())
    assert model_no_weight_decay(wrapped) == {"0.pos_embed.weight", "0.pos_embed.bias"}


def test_per_sample_norms_not_derived_from_torchs_are_told_by_their_class_name():
    """A norm class of a model's own (timm's SimpleNorm; a ``ConvNextLayerNorm``-style name with the
    family first) is a per-sample norm by its name anywhere in the class name: matched only at its
    start, or without 'simple', its weight decayed."""
    from timm.layers import SimpleNorm

    from hf_rcka.trainer.weight_decay import norm_weights

    class FamilyLayerNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))

    model = torch.nn.Sequential(SimpleNorm(4), FamilyLayerNorm(), torch.nn.BatchNorm1d(4))
    assert norm_weights(model) == ({"0.weight", "1.weight"}, {"2.weight"})


def test_dinov2_register_tokens_are_spared_like_timms_reg_token():
    """timm's ViTs name ``reg_token`` in no_weight_decay(); transformers' DINOv2 with registers
    holds the same tokens as ``register_tokens``, which were decayed."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification

    from hf_rcka.trainer.weight_decay import model_no_weight_decay

    model = Dinov2WithRegistersForImageClassification(Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=4,
        num_register_tokens=2))
    assert "dinov2_with_registers.embeddings.register_tokens" in model_no_weight_decay(model)


def test_a_timm_student_built_in_python_exports_a_folder_timm_loads(tmp_path):
    """Built from TimmWrapperConfig alone it had no pretrained_cfg, and timm's local-dir: refused
    the export (PretrainedCfg got 'architectures')."""
    import timm
    from _models import timm_model

    student = timm_model("resnet18")
    assert not getattr(student.config, "pretrained_cfg", None)
    trainer = make_trainer(make_args(tmp_path, max_steps=1, losses=["ce"]), student=student, teacher=None)
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    native = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(native(pixels), student.eval()(pixel_values=pixels).logits, atol=1e-5)


def test_a_timm_student_that_records_its_data_config_saves_that_one(tmp_path):
    """The data config of a student built at a run's image_size is its own: a mutant whose save filled
    it in from the timm model's registry entry even when the config had one wrote input_size 224
    for a student built at 16, and the exported folder's processor resized to 224."""
    from _models import TIMM_TINY_ARGS

    from hf_rcka.models.loading import load_image_classifier

    student = load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True, image_size=16,
                                    config_overrides=TIMM_TINY_ARGS["resnet18"])
    trainer = make_trainer(make_args(tmp_path, losses=["ce"]), student=student, teacher=None)
    trainer.save_model(str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    assert saved["input_size"] == [3, 16, 16]


def test_a_resumed_runs_progress_bar_starts_at_its_step(tmp_path):
    """Trainer's bar opened at 0 and jumped to the resumed step at the first step's end: tqdm read
    those steps as done in no time (758 it/s, "ETA 00:00" with half the run to go)."""
    from transformers import TrainerCallback

    from hf_rcka.trainer.progress import ResumedProgress

    class Opened(TrainerCallback):
        seen = []

        def on_step_begin(self, args, state, control, **kwargs):  # each callback's on_train_begin has run
            bars = [c.training_bar for c in trainer.callback_handler.callbacks if isinstance(c, ResumedProgress)]
            self.seen.append((bars[0].initial, bars[0].n))

    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, disable_tqdm=False)
    make_trainer(args).train()
    trainer = make_trainer(make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, disable_tqdm=False),
                           callbacks=[Opened()])
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert Opened.seen == [(2, 2), (2, 3)] and trainer.state.global_step == 4


def test_the_buffer_setting_hf_rcka_chose_raises_no_deprecation_warning(tmp_path):
    """For a student without BatchNorm hf_rcka sets ddp_broadcast_buffers false, and torch's DDP
    warned once per process that broadcast_buffers is deprecated: for a setting no one made."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(make_args(tmp_path, max_steps=1))
        assert trainer.args.ddp_broadcast_buffers is False  # the ViT student has no running statistics
        warnings.warn("`broadcast_buffers` is deprecated. Use `forward_sync_buffers` instead.", FutureWarning)
    assert not [w for w in caught if "broadcast_buffers" in str(w.message)]


def test_instance_norm_weights_are_per_sample_norms_not_batch_norms():
    """InstanceNorm derives from batch norms' _NormBase, but normalises each sample: its weight is
    spared as a LayerNorm's is, a BatchNorm's decays (Trainer's rule)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.InstanceNorm2d(4, affine=True), nn.BatchNorm2d(4),
                          nn.GroupNorm(2, 4), nn.LayerNorm(4))
    assert norm_weights(model) == ({"1.weight", "3.weight", "4.weight"}, {"2.weight"})


@pytest.mark.parametrize("strategy, delay, steps, end", [("steps", 5, 4, "step 4"), ("epoch", 2, 4, "epoch 1"),
                                                       ("epoch", 2.8, 10, "epoch 2.5")])
def test_load_best_model_with_no_evaluation_in_the_run_is_refused_before_its_first_step(tmp_path, strategy, delay,
                                                                                       steps, end):
    """An eval_delay past the run's end left no evaluation to pick a best checkpoint, and the last
    step's weights were exported without a word; a run that max_steps ends part-way through an
    epoch ends there (Trainer's count of its epochs is rounded up: 3)."""
    args = make_args(tmp_path, max_steps=steps, eval_strategy=strategy, save_strategy=strategy, eval_steps=2,
                     save_steps=2, load_best_model_at_end=True, eval_delay=delay)
    trainer = make_trainer(args)  # 20 images in batches of 5: 4 steps are one epoch
    before = snapshot(trainer.model.student)
    with pytest.raises(RecipeError, match=rf"eval_delay {delay:g} puts the first after the run's end \(at {end}\)"):
        trainer.train()
    assert trainer.state.global_step == 0 and not list(Path(args.output_dir).glob("checkpoint-*"))
    assert all(torch.equal(before[k], v) for k, v in trainer.model.student.state_dict().items())


def test_load_best_model_without_an_evaluation_strategy_is_refused_from_python_too(tmp_path):
    """transformers accepts load_best_model_at_end with eval_strategy and save_strategy no, picks no
    best checkpoint, and exported the last step without a word; the command line refused it before
    loading anything, the Python API now refuses it before the first step."""
    args = make_args(tmp_path, max_steps=2, eval_strategy="no", save_strategy="no", load_best_model_at_end=True)
    trainer = make_trainer(args)
    before = snapshot(trainer.model.student)
    with pytest.raises(RecipeError, match="load_best_model_at_end keeps the best of the evaluations during training, "
                                          "and eval_strategy is no"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.student.state_dict().items())


@pytest.mark.parametrize("strategy, delay, steps", [("steps", 4, 4), ("epoch", 2.5, 10)])
def test_load_best_model_with_its_one_evaluation_at_the_last_step_trains(tmp_path, strategy, delay, steps):
    """eval_delay equal to the run's end: Trainer evaluates and saves the last step (of steps, or of a
    last epoch cut short at 2.5), the best of one."""
    args = make_args(tmp_path, max_steps=steps, eval_strategy=strategy, save_strategy=strategy, eval_steps=3,
                     save_steps=3, load_best_model_at_end=True, eval_delay=delay)
    trainer = make_trainer(args)
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{steps}")


@pytest.mark.parametrize("positional", [False, True])
def test_resume_true_from_python_passes_over_a_checkpoint_cut_short(tmp_path, caplog, positional):
    """train(resume_from_checkpoint=True) took Trainer's pick, the highest-numbered folder: one whose
    trainer_state.json a full disk left empty failed after the models had loaded (a JSON error).
    The last checkpoint written whole is resumed, as on the command line; train(True), the same
    argument given by position, too."""
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    make_trainer(args).train()
    out = Path(args.output_dir)
    (out / "checkpoint-4" / "trainer_state.json").write_text("")
    trainer = make_trainer(args)
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer.train(True) if positional else trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 4
    assert f"resuming from {out / 'checkpoint-2'}, the last checkpoint written whole (checkpoint-4 in " in caplog.text
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4  # saved anew


@pytest.mark.parametrize("when", ["before the trainer", "after the trainer"])
def test_a_student_that_checkpoints_of_its_own_keeps_its_batchnorm_statistics(tmp_path, when):
    """Checkpointing turned on in the student itself (timm's set_grad_checkpointing, transformers'
    gradient_checkpointing_enable, or an earlier trainer reusing it), not by the arguments: the
    recomputation updated each BatchNorm's statistics a second time a step, every weight equal, and
    the exported model normalised with other statistics."""
    from hf_rcka.models.label_maps import LabelMaps
    from hf_rcka.models.timm_models import build_timm_classifier

    buffers = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        student = build_timm_classifier("resnet10t", LabelMaps.default(3))
        if checkpointing and when == "before the trainer":
            student.timm_model.set_grad_checkpointing(True)
        trainer = make_trainer(make_args(tmp_path, name=f"run{checkpointing}", max_steps=2, losses=["ce", "kd"]),
                               student=student)
        if checkpointing and when == "after the trainer":
            student.timm_model.set_grad_checkpointing(True)
        trainer.train()
        buffers.append({k: v.clone() for k, v in student.state_dict().items() if "running" in k or "tracked" in k})
    assert buffers[0] and buffers[0].keys() == buffers[1].keys()
    for key, value in buffers[0].items():
        torch.testing.assert_close(buffers[1][key], value, msg=key)


@pytest.mark.parametrize("turned_on_by", ["the arguments", "the student"])
def test_reentrant_checkpointing_trains_the_layers_after_a_frozen_embedding(tmp_path, turned_on_by):
    """A reentrant checkpoint passes gradients back only to inputs that need them: with the patch
    embedding frozen, no checkpointed layer trained (3 steps: only the final norm and the head
    moved) and the run ended well; also with checkpointing turned on in the student beforehand."""
    student = tiny_vit()
    for parameter in student.vit.embeddings.parameters():
        parameter.requires_grad_(False)
    before = snapshot(student)
    reentrant = {"use_reentrant": True}
    if turned_on_by == "the student":
        student.activation_checkpointing_enable(activation_checkpointing_kwargs=reentrant)
        args = make_args(tmp_path, max_steps=2, losses=["ce", "kd"])
    else:
        args = make_args(tmp_path, max_steps=2, losses=["ce", "kd"], gradient_checkpointing=True,
                         gradient_checkpointing_kwargs=reentrant)
    make_trainer(args, student=student).train()
    moved = changed(before, student)
    assert any(name.startswith("vit.layers.") for name in moved), moved
    assert not any("embeddings" in name for name in moved)


def test_checkpointing_options_without_use_reentrant_train_the_layers_after_a_frozen_embedding(tmp_path):
    """activation_checkpointing_kwargs that leave use_reentrant out ({preserve_rng_state: true}) reach
    torch's checkpoint without it, which checkpoints reentrantly then (and warns); the input hook read
    the missing key as non-reentrant, and with the patch embedding frozen no checkpointed layer trained
    (2 steps: only the final norm and the head moved)."""
    student = tiny_vit()
    for parameter in student.vit.embeddings.parameters():
        parameter.requires_grad_(False)
    before = snapshot(student)
    args = make_args(tmp_path, max_steps=2, losses=["ce", "kd"], gradient_checkpointing=True,
                     gradient_checkpointing_kwargs={"preserve_rng_state": True})
    make_trainer(args, student=student).train()
    moved = changed(before, student)
    assert any(name.startswith("vit.layers.") for name in moved), moved
    assert not any("embeddings" in name for name in moved)


def test_checkpointing_options_a_timm_student_does_not_take_are_said(tmp_path, caplog, monkeypatch):
    """transformers hands timm none of them; timm's own reentrant switch with a frozen stem trained
    only the head (a reviewer's case): both said."""
    import timm.layers.config

    from hf_rcka.models.label_maps import LabelMaps
    from hf_rcka.models.timm_models import build_timm_classifier

    args = make_args(tmp_path, max_steps=1, losses=["ce"], gradient_checkpointing=True,
                     gradient_checkpointing_kwargs={"use_reentrant": True, "every_n_layers": 2})
    student = build_timm_classifier("resnet10t", LabelMaps.default(3))
    for parameter in student.timm_model.conv1.parameters():
        parameter.requires_grad_(False)
    monkeypatch.setattr(timm.layers.config, "_USE_REENTRANT_CKPT", True)  # TIMM_REENTRANT_CKPT=1
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        make_trainer(args, student=student, teacher=None).train()
    assert "a timm student checkpoints each block as timm does; transformers passes ['every_n_layers', " \
           "'use_reentrant'] on to no checkpoint" in caplog.text
    assert "TIMM_REENTRANT_CKPT with frozen student weights" in caplog.text


@pytest.mark.parametrize("delay, trains", [(1.6, True), (1.8, False)])
def test_an_eval_delay_under_gradient_accumulation_is_compared_with_trainers_own_epoch_count(tmp_path, delay, trains):
    """Trainer counts an epoch's part in batches read: 20 images in batches of 5 are 4 batches, 2
    optimizer steps of 3 accumulated batches; max_steps 3 ends after 3 of the second epoch's 4
    batches, at epoch 1.75. NoEvaluationToKeep counted 3 / 2 = 1.5 and refused eval_delay 1.6, which
    trains; 1.8 leaves no evaluation (counted with floor division, the end was epoch 3 and the last
    step was exported without a word)."""
    args = make_args(tmp_path, max_steps=3, gradient_accumulation_steps=3, eval_strategy="epoch",
                     save_strategy="epoch", load_best_model_at_end=True, eval_delay=delay)
    trainer = make_trainer(args)
    if trains:
        trainer.train()
        assert trainer.state.epoch == 1.75 and trainer.state.best_model_checkpoint.endswith("checkpoint-3")
    else:
        with pytest.raises(RecipeError, match=r"eval_delay 1.8 puts the first after the run's end \(at epoch 1.75\)"):
            trainer.train()
        assert trainer.state.global_step == 0


def test_a_resumed_run_whose_best_checkpoint_was_chosen_before_is_not_refused(tmp_path):
    """NoEvaluationToKeep's docstring: a resumed run whose best checkpoint was chosen before keeps it,
    even where its eval_delay leaves no evaluation in what remains of the run."""
    settings = dict(max_steps=4, eval_strategy="steps", save_strategy="steps", eval_steps=2, save_steps=2,
                    load_best_model_at_end=True)
    first = make_trainer(make_args(tmp_path, **settings))
    first.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    resumed = make_trainer(make_args(tmp_path, **settings, eval_delay=10))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4 and resumed.state.best_model_checkpoint is not None


def test_a_set_too_small_for_a_relation_is_evaluated_without_its_terms(tmp_path):
    """evaluate() takes a set of 2 images with rcka: its intra term (a relation over the batch's
    samples, a constant below its minimum rows) weighs 0 on every batch and is left out; its inter
    term (classes, over any batch) and the rest are reported (kills LossTermLog.means keeping a
    term of count 0: 0.0 / 0.0 raised ZeroDivisionError)."""
    args = make_args(tmp_path, losses=[{"name": "ce"}, {"name": "kd"}, {"name": "rcka"}])
    trainer = make_trainer(args)
    metrics = trainer.evaluate(pixel_dataset(2, seed=4))
    assert "eval_rcka_intra_loss" not in metrics and math.isfinite(metrics["eval_rcka_inter_loss"]), metrics
    assert math.isfinite(metrics["eval_ce_loss"]) and math.isfinite(metrics["eval_loss"])


def test_a_batch_of_exactly_a_relations_minimum_rows_counts_in_its_term(tmp_path):
    """A relation over the batch's samples is a constant below its minimum rows, and means something
    at that minimum: a set of exactly that many images (or a last batch of them) was left out of
    rcka's intra term, which then went unreported."""
    args = make_args(tmp_path, losses=[{"name": "ce"}, {"name": "rcka"}])
    trainer = make_trainer(args)
    rows = trainer.distillation_model.losses["rcka"].min_relation_rows
    assert rows > 1
    metrics = trainer.evaluate(pixel_dataset(rows, seed=4))
    assert math.isfinite(metrics["eval_rcka_intra_loss"]), metrics


class _BreaksAt:
    """A dataset whose reading fails at one index (a network filesystem gone, a decoder's crash)."""

    def __init__(self, data, at):
        self.data, self.at = data, at

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.at:
            raise OSError("the disk went away")
        return self.data[i]


def test_an_evaluation_that_failed_part_way_leaves_nothing_in_the_next_ones_teacher_accuracy(tmp_path):
    """An evaluation that raised after some batches had counted the teacher's hits; the next evaluation
    (of the trainer's own set, whose teacher accuracy the card shows) counts its own images alone."""
    own = pixel_dataset(12, seed=1)
    args = make_args(tmp_path, per_device_eval_batch_size=4, losses=[{"name": "ce"}, {"name": "kd"}])
    trainer = make_trainer(args, evaluation=own)
    other = pixel_dataset(12, seed=3)
    with pytest.raises(OSError, match="the disk went away"):
        trainer.evaluate(_BreaksAt(other, 8))  # two batches of 4 counted, then the failure
    trainer.evaluate()
    want = teacher_accuracy(trainer.distillation_model, trainer.get_eval_dataloader(own))
    assert trainer.card_facts.teacher_accuracy == pytest.approx(want)


def test_a_failed_training_attempts_terms_are_not_logged_by_the_next(tmp_path):
    """auto_find_batch_size retries a run that ran out of memory: the terms the failed attempt recorded
    (here: stand-ins left in the log before train()) must not reach the first log of the retry, whose
    terms add up to its loss."""
    args = make_args(tmp_path, max_steps=1, losses=[{"name": "ce"}, {"name": "kd"}])
    trainer = make_trainer(args)
    trainer._term_logs["train"].add({"ce": torch.tensor(1e4), "kd": torch.tensor(1e4)}, {"ce": 1.0, "kd": 1.0})
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert entry["ce_loss"] + entry["kd_loss"] == pytest.approx(entry["loss"], rel=1e-4)


def test_a_gathered_relation_counts_every_process_rows_against_its_minimum():
    """A gathered relation (gather: true) spans every process's rows: a last batch of 3 rows here and
    3 on the other process is one relation over 6, past a minimum of 4, so its term counts this
    process's 3 images; the same relation not gathered is a relation over 3 and weighs 0."""
    counted = torch.tensor(3.0)
    labels = torch.tensor([0, 1, 2])
    terms = {"ce": torch.tensor(1.0), "rcka_intra": torch.tensor(0.5)}
    for gather, want in ((True, 3.0), (False, 0.0)):
        loss = SimpleNamespace(sample_relation_terms=("rcka_intra",), gather=gather, min_relation_rows=4)
        trainer = SimpleNamespace(distillation_model=SimpleNamespace(losses={"rcka": loss}),
                                  accelerator=SimpleNamespace(reduce=lambda t, op: t * 2 if op == "sum" else None))
        weights = DistillationTrainer._evaluation_weights(trainer, labels, terms, counted)
        assert float(weights["ce"]) == 3.0 and float(weights["rcka_intra"]) == want, (gather, weights)


def test_a_data_parallel_run_logs_at_its_last_step():
    """train_loss of a multi-process run is gathered at a log: LastStepLog asks for one at max_steps."""
    for world, step, logged in ((2, 4, True), (2, 3, False), (1, 4, False)):
        control = SimpleNamespace(should_log=False, should_training_stop=False)
        LastStepLog().on_step_end(SimpleNamespace(world_size=world), SimpleNamespace(max_steps=4, global_step=step),
                                  control)
        assert control.should_log is logged, (world, step)



def test_a_data_parallel_run_stopped_early_logs_as_it_leaves_the_epoch_loop():
    """A run of several processes stopped before max_steps (a signal, early stopping) logs at the
    epoch's end, so that train_loss gathers every process's loss; an epoch that ends without a stop
    asks for no extra log, and one process has nothing to gather."""
    for world, stop, logged in ((2, True, True), (2, False, False), (1, True, False)):
        control = SimpleNamespace(should_log=False, should_training_stop=stop)
        LastStepLog().on_epoch_end(SimpleNamespace(world_size=world), SimpleNamespace(max_steps=4, global_step=2),
                                   control)
        assert control.should_log is logged, (world, stop)

def _gather(t):
    return t


def test_a_nan_term_of_weight_zero_is_left_out_of_the_mean():
    log = LossTermLog()
    log.add({"ce": torch.tensor(2.0), "kd": torch.tensor(1.0)}, {"ce": torch.tensor(3.0), "kd": torch.tensor(3.0)})
    log.add({"ce": torch.tensor(float("nan")), "kd": torch.tensor(float("nan"))},
            {"ce": torch.tensor(0.0), "kd": torch.tensor(0.0)})
    log.add({"ce": torch.tensor(4.0), "kd": torch.tensor(1.0)}, {"ce": torch.tensor(1.0), "kd": torch.tensor(1.0)})
    means = log.means(_gather)
    assert means == {"ce": (2.0 * 3 + 4.0 * 1) / 4, "kd": 1.0}
    assert log.means(_gather) == {}, "means starts anew"


def test_a_term_weighing_zero_everywhere_is_left_out_and_float_weights_add_up():
    log = LossTermLog()
    log.add({"ce": torch.tensor(1.0), "rcka": torch.tensor(float("nan"))}, {"ce": 0.5, "rcka": 0.0})
    log.add({"ce": torch.tensor(3.0), "rcka": torch.tensor(0.3)}, {"ce": 0.5, "rcka": 0})
    means = log.means(_gather)
    assert means == {"ce": 2.0} and all(math.isfinite(v) for v in means.values())


def _swin():
    from transformers import SwinConfig, SwinForImageClassification

    from conftest import NUM_LABELS

    return SwinForImageClassification(SwinConfig(image_size=32, patch_size=2, embed_dim=12, depths=[1, 1, 1],
                                                 num_heads=[1, 2, 2], window_size=2, num_labels=NUM_LABELS))


def _mobilevit():
    from transformers import MobileViTConfig, MobileViTForImageClassification

    from conftest import NUM_LABELS

    return MobileViTForImageClassification(MobileViTConfig(
        image_size=32, patch_size=2, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16],
        num_attention_heads=1, num_labels=NUM_LABELS))


@pytest.mark.parametrize("build, frozen, moves", [
    (_swin, "embeddings", "swin.encoder.layers.0."),  # its input embeddings give a tuple: a crash at the first step
    (_mobilevit, "classifier", "transformer"),  # no input embeddings: refused
    (_mobilevit, "all but the head", "classifier"),  # a linear probe: nothing checkpointed trains, refused
])
def test_reentrant_checkpointing_trains_what_is_not_frozen(tmp_path, build, frozen, moves):
    """Reviewers' cases: the first mend (transformers' enable_input_require_grads) crashed on Swin and
    Hiera and refused students without input embeddings; a pre-hook on the module that calls the first
    checkpointed layer makes its input need a gradient, only where a checkpointed weight trains."""
    torch.manual_seed(0)
    student = build()
    for name, parameter in student.named_parameters():
        top, _, rest = name.partition(".")
        if {"all but the head": top != "classifier", "classifier": top == "classifier"}.get(frozen, rest.startswith(frozen)):
            parameter.requires_grad_(False)
    before = snapshot(student)
    args = make_args(tmp_path, max_steps=2, losses=["ce"], gradient_checkpointing=True,
                     gradient_checkpointing_kwargs={"use_reentrant": True})
    DistillationTrainer(model=student, teacher=None, args=args, train_dataset=pixel_dataset(10, size=32),
                        eval_dataset=pixel_dataset(5, size=32, seed=1), processing_class=processor(32)).train()
    moved = changed(before, student)
    assert any(moves in name for name in moved), moved
    frozen_names = {name for name, parameter in student.named_parameters() if not parameter.requires_grad}
    assert not frozen_names & set(moved)




def test_checkpointing_settings_timm_would_take_anyway_are_not_said(caplog, monkeypatch):
    """use_reentrant false (timm's own default), every_n_layers 1 and a reentrant timm checkpoint with
    every weight trainable change nothing: warning about them (as the existing test's settings do)
    would tell users that settings they may rely on are dropped."""
    import logging

    import timm.layers.config
    from torch import nn

    from hf_rcka.modeling.activation_checkpoints import inputs_need_gradients, say_options_timm_ignores

    student = nn.Linear(2, 2)
    student.timm_model = student  # what the checks look for in a TimmWrapper
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        say_options_timm_ignores(student, {"activation_checkpointing_kwargs": {"use_reentrant": False},
                                           "every_n_layers": 1, "offload": False})
        monkeypatch.setattr(timm.layers.config, "_USE_REENTRANT_CKPT", True)
        assert inputs_need_gradients(student) == []
    assert not caplog.text
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        say_options_timm_ignores(student, {"activation_checkpointing_kwargs": {"use_reentrant": False},
                                           "every_n_layers": 2})
    assert "transformers passes ['every_n_layers', 'use_reentrant'] on to no checkpoint" in caplog.text


def test_frozen_timm_weights_under_timms_own_non_reentrant_checkpoints_are_not_said(caplog, monkeypatch):
    """The TIMM_REENTRANT_CKPT warning was said for every timm student with a frozen weight, also
    under timm's default non-reentrant checkpoint, which trains the blocks after a frozen stem: a
    common fine-tuning setup told to unset a variable it never set."""
    import timm.layers.config

    from hf_rcka.modeling.activation_checkpoints import inputs_need_gradients

    student = nn.Linear(2, 2)
    student.timm_model = student  # what the checks look for in a TimmWrapper
    student.weight.requires_grad_(False)
    monkeypatch.setattr(timm.layers.config, "_USE_REENTRANT_CKPT", False)
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert inputs_need_gradients(student) == []
    assert not caplog.text
    monkeypatch.setattr(timm.layers.config, "_USE_REENTRANT_CKPT", True)
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        inputs_need_gradients(student)
    assert "TIMM_REENTRANT_CKPT with frozen student weights" in caplog.text


def test_a_transformers_student_is_not_told_that_its_checkpointing_options_go_to_no_checkpoint(caplog):
    """The warning that transformers hands a timm student none of use_reentrant, every_n_layers or
    offload was said for a transformers student too, whose layers take them: a user told that a
    reentrant checkpoint it needs (or relies on) was dropped."""
    from hf_rcka.losses import CrossEntropyLoss
    from hf_rcka.modeling import DistillationModel

    model = DistillationModel(tiny_vit(), None, [CrossEntropyLoss()])
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in model.student.modules())
    assert "checkpoints each block as timm does" not in caplog.text


def test_a_teacher_record_that_is_no_mapping_is_not_compared(tmp_path):
    """A teacher.json that holds no mapping (a list, null) is no record, not an AttributeError later."""
    from hf_rcka.trainer.teacher_record import TEACHER_RECORD_NAME, recorded_teacher

    for text in ("[1, 2]", "null", "3"):
        (tmp_path / TEACHER_RECORD_NAME).write_text(text)
        assert recorded_teacher(str(tmp_path)) is None, text


def test_an_evaluation_shares_rank_0s_running_statistics_before_it_runs(tmp_path, monkeypatch):
    """Each rank's BatchNorm statistics drift apart after a DDP step; an evaluation spread over the
    ranks mixed them unless rank 0's (the export's) are shared first, the student's and the losses'
    own (srd's projector). Skipping that, or sharing after the loop, only a 2-process run showed."""
    from transformers import Trainer

    from hf_rcka.trainer import trainer as trainer_module

    trainer = make_trainer(make_args(tmp_path), student=tiny_resnet())  # a student with BatchNorm
    events = []
    monkeypatch.setattr(trainer_module, "share_running_stats", lambda module: events.append(("share", module)))
    loop = Trainer.evaluation_loop

    def evaluation_loop(self, *args, **kwargs):
        events.append(("loop",))
        return loop(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluation_loop", evaluation_loop)
    trainer.evaluate()
    model = trainer.distillation_model
    assert events == [("share", model.student), ("share", model.losses), ("loop",)], events


def test_a_teacher_fingerprint_counts_every_floating_value_and_hashes_the_running_statistics():
    """A teacher whose BatchNorm statistics alone changed (recalibrated on other data) hashed as the
    recorded one, and a resume went on distilling from another teacher's outputs; the refusal's
    value count counted tensors, not values. An integer counter (num_batches_tracked) is no weight."""
    from hf_rcka.trainer.teacher_record import teacher_fingerprint

    teacher = tiny_resnet(seed=0)
    floating = [t for t in (*teacher.parameters(), *teacher.buffers()) if t.is_floating_point()]
    recorded = teacher_fingerprint(teacher)
    assert recorded["values"] == sum(t.numel() for t in floating)
    norm = next(m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        norm.num_batches_tracked.add_(5)
    assert teacher_fingerprint(teacher) == recorded
    with torch.no_grad():
        norm.running_mean.add_(0.5)
    assert teacher_fingerprint(teacher)["sha256"] != recorded["sha256"]


def _per_weight_optimizer() -> type:
    """Trainer's layer-wise optimizer (GaLore's, APOLLO's) as transformers builds it: a
    LayerWiseDummyOptimizer whose weights each step, then clear their gradient, in a gradient hook
    (plain SGD per weight here: galore_torch is not installed)."""
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    class PerWeight(LayerWiseDummyOptimizer):
        def __init__(self, params, **kwargs):
            per = {p: torch.optim.SGD([p], lr=0.1) for group in params for p in group["params"]}

            def step(p):
                per[p].step()
                per[p].zero_grad()

            for p in per:
                p.register_post_accumulate_grad_hook(step)
            super().__init__(optimizer_dict=per, lr=0.1)

    return PerWeight


def test_a_layer_wise_optimizer_trains_and_its_weights_count_as_held(tmp_path):
    """Trainer's layer-wise GaLore/APOLLO optimizer (LayerWiseDummyOptimizer) holds one dummy tensor
    and steps each weight from its own optimizer in a gradient hook: every such run was refused
    after its first step, each of its weights said to have appeared during the first forward.
    Faked with SGD per weight, as transformers builds it (galore_torch is not installed here)."""
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    from hf_rcka.trainer.optimizer_checks import check_late_parameters

    trainer = make_trainer(make_args(tmp_path, max_steps=2, losses=[{"name": "ce"}, {"name": "kd"}]),
                           optimizer_cls_and_kwargs=(_per_weight_optimizer(), {}))
    before = snapshot(trainer.distillation_model.student)
    trainer.train()
    assert trainer.state.global_step == 2 and changed(before, trainer.distillation_model.student)
    model = nn.Sequential(nn.Linear(2, 2))
    held = LayerWiseDummyOptimizer(optimizer_dict={p: torch.optim.SGD([p], lr=0.1) for p in model.parameters()})
    check_late_parameters(model, held)
    model.append(nn.Linear(2, 2))  # a weight its per-weight optimizers do not hold is still refused
    with pytest.raises(ModelError, match=r"2 weight\(s\) appeared during the first forward.*: 1\.weight, 1\.bias"):
        check_late_parameters(model, held)


def test_a_layer_wise_optimizers_weights_are_not_said_unreached(tmp_path, caplog):
    """A layer-wise optimizer steps and clears each weight's gradient in the backward's hooks: before
    the (dummy) optimizer step no gradient is left, and SRD's projector, which trains, was said to
    have got none ("!!! ... will not train")."""
    trainer = make_trainer(make_args(tmp_path, max_steps=2, losses=[{"name": "ce"}, {"name": "srd"}]),
                           optimizer_cls_and_kwargs=(_per_weight_optimizer(), {}))
    before = snapshot(trainer.distillation_model.losses)
    with caplog.at_level("WARNING", logger="hf_rcka"):
        trainer.train()
    assert "losses.srd.projector.0.weight" not in caplog.text and "got no gradient" not in caplog.text
    assert {"srd.projector.0.weight", "srd.projector.0.bias"} <= set(changed(before, trainer.distillation_model.losses))


def test_a_callers_ddp_find_unused_parameters_is_kept(tmp_path):
    """find_unused_parameters: true, which a student whose steps leave some weights without a gradient
    needs under DDP, was replaced with hf_rcka's False (DDP then stopped at the second step); only
    a value no one set takes False."""
    assert make_trainer(make_args(tmp_path, ddp_find_unused_parameters=True)).args.ddp_find_unused_parameters is True
    assert make_trainer(make_args(tmp_path, "b")).args.ddp_find_unused_parameters is False


def test_the_terms_of_a_short_last_accumulation_add_up_to_the_logged_loss(tmp_path):
    """Trainer's loss is the mean of its optimizer steps, each the mean of its micro-batches: 3
    batches at gradient_accumulation_steps 2 make a step of 2 and a step of 1. The terms weighed every
    micro-batch alike (the last one a third of the log, not half), and no longer added up to it."""
    args = make_args(tmp_path, gradient_accumulation_steps=2, num_train_epochs=1, logging_steps=2,
                     losses=[{"name": "ce"}, {"name": "kd"}])
    trainer = make_trainer(args, train=pixel_dataset(15, seed=0))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 2 and len(logged) == 1
    assert logged[0]["ce_loss"] + logged[0]["kd_loss"] == pytest.approx(logged[0]["loss"], rel=1e-4)
