"""One process, several runs (a notebook): what a trainer leaves on the objects it was given, and
what a caller hands it after construction. Each case below gave a later run another result than a
fresh process, or a silently wrong metric, before."""

from __future__ import annotations

import gc
import logging

import datasets
import pytest
import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import ImageClassifierOutput

from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit
from hf_rcka import DistillationTrainer, DistillationTrainingArguments
from hf_rcka.errors import DataError, LabelError, ModelError
from hf_rcka.losses import CrossEntropyLoss, LOSSES
from hf_rcka.modeling.distillation_model import DistillationModel


def make_args(tmp_path, name="run", **overrides):
    defaults = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=5, per_device_eval_batch_size=5,
                    report_to="none", use_cpu=True, save_strategy="no", teacher_accuracy_check="off")
    return DistillationTrainingArguments(**{**defaults, **overrides})


def build(args, student=None, teacher=None, train=None, **kwargs):
    return DistillationTrainer(model=student or tiny_vit(), teacher=teacher, args=args,
                               train_dataset=train if train is not None else pixel_dataset(20),
                               processing_class=processor(16), **kwargs)


def named_classes(data, names):
    return data.with_format(None).cast_column("labels", datasets.ClassLabel(names=names)).with_format("torch")


def test_the_callers_arguments_are_left_as_they_were(tmp_path):
    """A short last batch set dataloader_drop_last on the caller's object: the next trainer built with
    it dropped 3 of 8 images every epoch, and refused 4 images as 'dataloader_drop_last: true'."""
    args = make_args(tmp_path, losses=["ce", "rcka"], num_train_epochs=1)
    first = build(args, teacher=tiny_resnet(), train=pixel_dataset(21))  # a last batch of 1
    first.train()
    assert first.args.dataloader_drop_last is True and args.dataloader_drop_last is False
    assert args.ddp_broadcast_buffers is None and args.ddp_find_unused_parameters is None
    second = build(args, teacher=tiny_resnet(), train=pixel_dataset(8))  # batches of 5 and 3: both kept
    second.train()
    assert second.state.global_step == 2


def test_a_model_frozen_as_a_teacher_is_refused_as_a_student(tmp_path):
    """teacher -> assistant -> small: the assistant, frozen as the second run's teacher, then 'trained'
    5 steps as a student without one weight changing, and was saved as it came."""
    assistant = tiny_vit()
    build(make_args(tmp_path, "a", losses=["ce", "kd"]), student=tiny_vit(seed=7), teacher=assistant)
    assert not any(p.requires_grad for p in assistant.parameters())
    with pytest.raises(ModelError, match="the student ViTForImageClassification has no trainable weights .* "
                                         r"model.requires_grad_\(True\)"):
        build(make_args(tmp_path, "b", losses=["ce", "kd"]), student=assistant, teacher=tiny_resnet())


class _ConfigOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(num_labels=3)
        self.linear = nn.Linear(3 * 16 * 16, 3)

    def forward(self, pixel_values, **_):
        return ImageClassifierOutput(logits=self.linear(pixel_values.flatten(1)))


def test_a_student_that_cannot_be_saved_is_refused_before_training(tmp_path):
    """It trained and evaluated, then save_model failed: 'object has no attribute save_pretrained'."""
    with pytest.raises(ModelError, match="has a config but no save_pretrained"):
        build(make_args(tmp_path, losses=["ce"]), student=_ConfigOnly())


def test_the_card_names_a_teacher_built_without_a_checkpoint(tmp_path):
    """Its empty name_or_path made the card say 'trained without a teacher (supervised baseline)'."""
    trainer = build(make_args(tmp_path, losses=["ce", "rcka"], max_steps=1), teacher=tiny_resnet())
    trainer.train()
    trainer.create_model_card()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "distilled from the teacher `ResNetForImageClassification`" in card
    assert "supervised" not in card


def test_none_for_the_collator_or_the_metrics_keeps_the_defaults(tmp_path):
    """An explicit None turned accuracy off while metric_for_best_model 'accuracy' passed the check,
    and the run failed at its first evaluation."""
    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1, eval_strategy="steps", eval_steps=1,
                              metric_for_best_model="accuracy", load_best_model_at_end=True, save_strategy="steps",
                              save_steps=1),
                    eval_dataset=pixel_dataset(10, seed=1), compute_metrics=None, data_collator=None)
    trainer.train()
    assert "eval_accuracy" in trainer.evaluate()


def test_predictions_reduced_to_class_ids_are_counted_as_ids(tmp_path):
    """preprocess_logits_for_metrics' usual argmax: an IndexError on 12 images, and on 5 or fewer a
    wrong accuracy (0.2 where it was 1.0)."""
    evaluation = pixel_dataset(5, seed=1)
    plain = build(make_args(tmp_path, "plain", losses=["ce"]), eval_dataset=evaluation)
    reduced = build(make_args(tmp_path, "reduced", losses=["ce"]), eval_dataset=evaluation,
                    preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1))
    reduced.model.student.load_state_dict(plain.model.student.state_dict())
    expected = plain.evaluate()["eval_accuracy"]
    assert reduced.evaluate()["eval_accuracy"] == expected
    assert expected not in (0.0, 1.0)
    import numpy as np
    from transformers import EvalPrediction

    from hf_rcka.trainer.metrics import accuracy_metrics

    ids = np.array([0, 1, 2, 0, 1])  # all right: the old argmax over the ids' axis counted labels equal to 2
    assert accuracy_metrics(EvalPrediction(predictions=ids, label_ids=ids)) == {"accuracy": 1.0}
    twelve = np.arange(12) % 3
    assert accuracy_metrics(EvalPrediction(predictions=twelve, label_ids=twelve)) == {"accuracy": 1.0}


def test_a_dataset_given_to_evaluate_or_predict_is_checked(tmp_path):
    """A relabelled evaluation set read as accuracy 0.0, and a 'label' column as an evaluation
    with neither accuracy nor loss; the constructor refused both."""
    names = ["a", "b", "c"]
    student = tiny_vit()
    student.config.id2label, student.config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    trainer = build(make_args(tmp_path, losses=["ce"]), student=student,
                    train=named_classes(pixel_dataset(20), names), eval_dataset=named_classes(pixel_dataset(10), names))
    with pytest.raises(LabelError, match=r"eval_dataset lists its classes as \['b', 'c', 'a'\], the student as"):
        trainer.evaluate(eval_dataset=named_classes(pixel_dataset(10), ["b", "c", "a"]))
    with pytest.raises(DataError, match=r"eval_dataset: its items have no \['labels'\]"):
        trainer.evaluate(eval_dataset=pixel_dataset(10).rename_column("labels", "label"))
    with pytest.raises(DataError, match=r"test_dataset: its items have no \['pixel_values'\]"):
        trainer.predict(pixel_dataset(10).rename_column("pixel_values", "image"))
    assert trainer.predict(pixel_dataset(10).remove_columns("labels")).predictions.shape == (10, 3)
    # data to predict may carry any label column, or none (a Hub test split's -1s)
    assert trainer.predict(pixel_dataset(7).rename_column("labels", "label")).predictions.shape == (7, 3)
    # classes that are only numbered say nothing about the order: accepted, as the constructor does
    numbered = pixel_dataset(10).with_format(None).cast_column("labels", datasets.ClassLabel(num_classes=3))
    assert "eval_accuracy" in trainer.evaluate(eval_dataset=numbered.with_format("torch"))
    trainer.eval_dataset = named_classes(pixel_dataset(10), ["b", "c", "a"])  # set after construction
    with pytest.raises(LabelError, match=r"eval_dataset lists its classes as \['b', 'c', 'a'\]"):
        trainer.evaluate()
    assert "eval_accuracy" in trainer.evaluate(eval_dataset=named_classes(pixel_dataset(10, seed=2), names))


def test_a_train_dataset_set_after_construction_is_checked_at_train(tmp_path):
    """The constructor refused a training set whose ClassLabel orders the classes otherwise, but one
    set as trainer.train_dataset since trained each class as another, with no error; one of another
    image size with a feature loss failed in the first step with a traceback."""
    names = ["a", "b", "c"]
    student = tiny_vit()
    student.config.id2label, student.config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1), student=student,
                    train=named_classes(pixel_dataset(20), names))
    trainer.train_dataset = named_classes(pixel_dataset(20), ["c", "a", "b"])
    with pytest.raises(LabelError, match=r"train_dataset lists its classes as \['c', 'a', 'b'\], the student as .* "
                                         "it would train each class as another"):
        trainer.train()
    assert trainer.state.global_step == 0
    trainer.train_dataset = pixel_dataset(20).rename_column("labels", "label")
    with pytest.raises(DataError, match=r"train_dataset: its items have no \['labels'\]"):
        trainer.train()
    trainer = build(make_args(tmp_path, "features", losses=["ce", "feature_cka"], max_steps=1), teacher=tiny_resnet())
    trainer.train_dataset = pixel_dataset(20, size=24)
    with pytest.raises(DataError, match="train_dataset: its images are 24x24, the training images the trainer was built on "
                                        "16x16: .* so training on them would fail .* or build a new trainer with this "
                                        "train_dataset"):  # not an evaluation set's advice (its evaluation transform)
        trainer.train()
    trainer.train_dataset = pixel_dataset(20, seed=3)  # another set like the first: trains
    trainer.train()
    assert trainer.state.global_step == 1


def test_a_train_dataset_set_later_names_the_classes_of_a_trainer_built_without_names(tmp_path, caplog, monkeypatch):
    """Built without class names (a numbered student, a training set without a ClassLabel), the
    trainer paired the teacher by position; a training set that named the classes, set since,
    was never compared with the teacher's names: each class learned another's logit, exit 0."""
    teacher = tiny_resnet()
    teacher.config.id2label = {0: "cat", 1: "dog", 2: "eel"}
    teacher.config.label2id = {name: i for i, name in teacher.config.id2label.items()}
    trainer = build(make_args(tmp_path, losses=["ce", "kd"], max_steps=1), teacher=teacher)
    assert trainer.distillation_model.teacher_order is None
    # an evaluation set cannot say how the training labels were ordered: said, not paired
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer.evaluate(named_classes(pixel_dataset(10), ["dog", "cat", "eel"]))
        trainer.evaluate(named_classes(pixel_dataset(10), ["cat", "dog", "eel"]))  # the teacher's order: nothing to say
    assert caplog.text.count("the teacher as ['cat', 'dog', 'eel'], which this trainer pairs with the data by "
                             "position") == 1
    assert trainer.distillation_model.teacher_order is None
    trainer.train_dataset = named_classes(pixel_dataset(20), ["dog", "cat", "eel"])

    def refused():
        raise ModelError("refused after the pairing")

    with monkeypatch.context() as patch:  # a train() refused by a later check leaves the caller's student as it was
        patch.setattr(trainer, "check_teacher", refused)
        with pytest.raises(ModelError, match="refused after the pairing"):
            trainer.train()
    assert trainer.distillation_model.student.config.id2label[0] == "LABEL_0"
    trainer.train()
    assert trainer.distillation_model.teacher_order.tolist() == [1, 0, 2]  # dog, cat, eel among the teacher's
    assert trainer.distillation_model.student.config.id2label == {0: "dog", 1: "cat", 2: "eel"}
    assert teacher.config.id2label == {0: "cat", 1: "dog", 2: "eel"}  # the teacher object keeps its own
    other = build(make_args(tmp_path, "other", losses=["ce", "kd"], max_steps=1), teacher=teacher)
    other.train_dataset = named_classes(pixel_dataset(20), ["ant", "bee", "cow"])
    with pytest.raises(LabelError, match=r"the teacher's classes do not match those of the dataset's ClassLabel: .*'ant'"):
        other.train()
    assert other.state.global_step == 0


def test_a_train_dataset_set_later_names_the_classes_of_the_checkpoints_it_trains(tmp_path):
    """The student takes a later training set's class names as training starts, before its first
    checkpoint: a checkpoint (what a resume or a pushed checkpoint exports) named them LABEL_0...
    when they were given only at the end."""
    import json

    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1, save_strategy="steps", save_steps=1))
    trainer.train_dataset = named_classes(pixel_dataset(20), ["dog", "cat", "eel"])
    trainer.train()
    config = json.loads((tmp_path / "run" / "checkpoint-1" / "config.json").read_text())
    assert config["id2label"] == {"0": "dog", "1": "cat", "2": "eel"}


def test_a_later_train_dataset_without_class_names_is_not_paired_again(tmp_path, caplog):
    """Only a later training set that names the classes pairs the teacher again: one that names
    none (another set like the first) said the constructor's warning of a teacher paired by
    position once more at train()."""
    teacher = tiny_resnet()
    teacher.config.id2label = {0: "cat", 1: "dog", 2: "eel"}
    teacher.config.label2id = {name: i for i, name in teacher.config.id2label.items()}
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer = build(make_args(tmp_path, losses=["ce", "kd"], max_steps=1), teacher=teacher)
        trainer.train_dataset = pixel_dataset(20, seed=3)
        trainer.train()
    assert caplog.text.count("are paired with the data's by position, unchecked") == 1
    assert trainer.state.global_step == 1


def test_a_later_evaluation_set_is_compared_only_with_a_teacher_whose_class_order_is_read(tmp_path, caplog):
    """A trainer built without class names says a later evaluation set that names the classes
    otherwise than its teacher (above); not where the teacher's order is not in play: paired by
    position as asked (teacher_label_mapping='by_index'), a teacher no loss runs, a teacher judged
    to classify other classes (here by an earlier trainer of named classes that distils its
    features alone). There the advice (build with names) fixes nothing."""
    def teacher(names):
        model = tiny_resnet(num_labels=len(names))
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}
        return model

    wider, student = teacher(["v", "w", "x", "y", "z"]), tiny_vit()
    student.config.id2label, student.config.label2id = {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    build(make_args(tmp_path, "named", losses=["ce", "feature_cka"]), student, wider)  # judges it other classes
    later = named_classes(pixel_dataset(5), ["dog", "cat", "eel"])
    for losses, model, mapping in ((["ce", "kd"], teacher(["cat", "dog", "eel"]), "by_index"),
                                   (["ce"], teacher(["cat", "dog", "eel"]), "by_name"),
                                   (["ce", "feature_cka"], wider, "by_name")):
        trainer = build(make_args(tmp_path, losses=losses), teacher=model, teacher_label_mapping=mapping)
        with caplog.at_level(logging.WARNING, logger="hf_rcka"):
            trainer.get_eval_dataloader(later)  # what evaluate(later) checks the set with
        assert "which this trainer pairs with the data by position" not in caplog.text, (losses, mapping)


def test_a_batch_with_keys_the_model_does_not_take_is_one_error(tmp_path):
    def collate_with_ids(items):
        return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                "labels": torch.stack([i["labels"] for i in items]), "image_id": torch.arange(len(items))}

    # the batch a caller's collator makes is checked when the trainer is built (it failed at the first
    # step, after the models loaded and the teacher was checked): DefaultDataCollator keeps an id column
    from transformers import DefaultDataCollator

    with pytest.raises(DataError, match=r"the batch has keys \['image_id'\] besides pixel_values and labels"):
        build(make_args(tmp_path, losses=["ce"], max_steps=1), data_collator=collate_with_ids)
    with_ids = pixel_dataset(20).add_column("id", list(range(20)))
    with pytest.raises(DataError, match=r"the batch has keys \['id'\]"):
        build(make_args(tmp_path, losses=["ce"], max_steps=1), train=with_ids, data_collator=DefaultDataCollator())
    with pytest.raises(DataError, match=r"the data_collator's batch has no \['labels'\]"):
        build(make_args(tmp_path, losses=["ce"], max_steps=1), data_collator=lambda items: {
            "pixel_values": torch.stack([i["pixel_values"] for i in items])})
    with pytest.raises(DataError, match=r"the data_collator returns a tuple, not a dict"):
        build(make_args(tmp_path, losses=["ce"], max_steps=1), data_collator=lambda items: (
            torch.stack([i["pixel_values"] for i in items]), torch.stack([i["labels"] for i in items])))

    class Items(torch.utils.data.Dataset):  # items kept as dicts: a collator that pops from them changed item 0
        def __init__(self):
            data = pixel_dataset(10)
            self.items = [{"pixel_values": data[i]["pixel_values"], "label": data[i]["labels"]} for i in range(10)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    def relabel(items):
        return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                "labels": torch.stack([i.pop("label") for i in items])}

    items = Items()
    build(make_args(tmp_path, losses=["ce"], max_steps=1), train=items, data_collator=relabel)
    assert "label" in items.items[0]
    # a training stream is not read when the trainer is built: its first batch says it
    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1), train=pixel_dataset(20).to_iterable_dataset(),
                    data_collator=collate_with_ids)
    with pytest.raises(DataError, match=r"the batch has keys \['image_id'\] besides pixel_values and labels"):
        trainer.train()


def test_a_loaded_timm_student_with_numbered_classes_is_exported_with_the_datasets_names(tmp_path):
    """A timm checkpoint's config keeps label_names, which its to_dict saves over id2label: the
    names given in memory were exported, and reloaded, as LABEL_0..LABEL_2."""
    from transformers import AutoModelForImageClassification, TimmWrapperConfig, TimmWrapperForImageClassification

    from _models import TIMM_TINY_ARGS

    config = TimmWrapperConfig(architecture="resnet18", model_args=TIMM_TINY_ARGS["resnet18"], num_labels=3)
    TimmWrapperForImageClassification(config).save_pretrained(tmp_path / "saved")
    student = AutoModelForImageClassification.from_pretrained(tmp_path / "saved")
    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1), student=student,
                    train=named_classes(pixel_dataset(20), ["cat", "dog", "eel"]))
    trainer.train()
    trainer.save_model()
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "run")
    assert reloaded.config.id2label == {0: "cat", 1: "dog", 2: "eel"}


def test_a_student_with_numbered_classes_is_exported_with_the_datasets_names(tmp_path):
    """The run evaluated (and paired its teacher) by the dataset's names; the export said LABEL_2."""
    student = tiny_vit()
    build(make_args(tmp_path, losses=["ce"]), student=student, train=named_classes(pixel_dataset(20), ["cat", "dog", "eel"]))
    assert student.config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    assert student.config.label2id == {"cat": 0, "dog": 1, "eel": 2}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_the_hooks_go_with_the_distillation_model():
    """Five runs on one teacher left it ten forward hooks."""
    teacher, student = tiny_resnet(), tiny_vit()
    student(pixel_values=torch.randn(1, 3, 16, 16), output_hidden_states=True)  # transformers adds hooks of its own
    before = _hooks(teacher), _hooks(student)
    for _ in range(3):
        model = DistillationModel(student, teacher, [CrossEntropyLoss(), LOSSES.build("feature_cka"), LOSSES.build("srd")])
        assert _hooks(teacher) > before[0] and _hooks(student) > before[1]
        del model
        gc.collect()
    assert (_hooks(teacher), _hooks(student)) == before


def test_a_distilled_deit_keeps_no_head_outputs_outside_the_distillation_model():
    """Its hooks kept the last forward's head outputs, and with them that forward's autograd graph,
    also for forwards of the student on its own."""
    from _models import timm_model

    student = timm_model("deit_tiny_distilled_patch16_224")
    model = DistillationModel(student, tiny_resnet(), [CrossEntropyLoss(), LOSSES.get("deit_token")()]).train()
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    out = model(pixel_values=pixels, labels=labels)
    assert out.loss_terms["deit_token"] > 0
    student(pixel_values=pixels)
    assert model._distilled_heads._logits == {}


def test_compute_loss_before_train_works_and_the_first_step_is_still_checked(tmp_path, monkeypatch):
    """Before train() there is no optimizer: the late-weights check failed on None, and then skipped train()."""
    from hf_rcka.trainer import optimizer_checks

    checked = []
    monkeypatch.setattr(optimizer_checks, "check_late_parameters",
                        lambda model, optimizer: checked.append((model, len(optimizer.param_groups))))
    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=2))
    batch = trainer.data_collator([pixel_dataset(4)[i] for i in range(4)])
    assert trainer.compute_loss(trainer.model, batch).item() > 0
    assert checked == []
    trainer.train()
    assert len(checked) == 1 and checked[0][0] is trainer.distillation_model and checked[0][1] > 0, \
        "once per train(), with the optimizer it built"
    trainer.train()
    assert len(checked) == 2


def test_a_ready_distillation_model_is_checked_as_its_student_would_be(tmp_path):
    frozen = tiny_vit().requires_grad_(False)
    ready = DistillationModel(frozen, tiny_resnet(), [CrossEntropyLoss(), LOSSES.build("srd")])
    with pytest.raises(ModelError, match="has no trainable weights"):
        build(make_args(tmp_path, losses=["ce", "srd"]), student=ready)


def test_a_teacher_no_loss_uses_is_not_credited_on_the_card(tmp_path):
    """Its accuracy was measured and shown in a teacher row, and the student called 'distilled'."""
    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1), teacher=tiny_resnet(),
                    eval_dataset=pixel_dataset(8, seed=1))
    trainer.train()
    trainer.evaluate()
    trainer.create_model_card()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "trained without a teacher (supervised baseline)" in card
    assert "| teacher |" not in card and "distilled" not in card
    assert trainer.card_facts.teacher_accuracy is None, "the teacher is not run for the card either"


def test_a_teacher_shared_by_students_of_other_class_orders_serves_each_in_its_own(tmp_path):
    """One teacher object, two trainers whose students order the classes otherwise: the second
    re-indexed the teacher in place for its student, and the first, still alive, then distilled
    every class against another's logit (its eval_kd_loss changed with nothing trained), with no error."""
    def named(model, names):
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}
        return model

    teacher = named(tiny_resnet(), ["c", "a", "b"])
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        raw = teacher.eval()(pixel_values=images).logits
    args = make_args(tmp_path, losses=["ce", "kd"], max_steps=1)
    first = build(args, student=named(tiny_vit(), ["a", "b", "c"]), teacher=teacher, eval_dataset=pixel_dataset(5))
    before = first.evaluate()["eval_kd_loss"]
    second = build(args, student=named(tiny_vit(), ["b", "c", "a"]), teacher=teacher, eval_dataset=pixel_dataset(5))
    assert first.evaluate()["eval_kd_loss"] == pytest.approx(before, rel=1e-6)
    assert teacher.config.id2label == {0: "c", 1: "a", 2: "b"}, "the teacher object keeps its own order"
    with torch.no_grad():
        logits = teacher(pixel_values=images).logits
        # close, not equal: the teacher now runs channels_last, whose convolutions round otherwise on some CPUs
        torch.testing.assert_close(logits, raw)
        torch.testing.assert_close(first.distillation_model.in_student_order(logits), raw[:, [1, 2, 0]])
        torch.testing.assert_close(second.distillation_model.in_student_order(logits), raw[:, [2, 0, 1]])
    first.train()
    second.train()


def test_a_teacher_of_other_classes_for_one_trainer_is_judged_by_each_trainer_apart(tmp_path):
    """The mark of a teacher of other classes (features alone distilled, no accuracy on the run's
    labels) lived on the teacher object: a second trainer whose student has the teacher's classes
    cleared it, and the first one's card then gave the teacher's x/y/z logits scored against a/b/c
    labels as its accuracy (0.3), exit 0."""
    def named(model, names):
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}
        return model

    teacher = named(tiny_resnet(), ["x", "y", "z"])
    pairs = [{"student_layer": -1, "teacher_layer": -1}]
    features = make_args(tmp_path, "a", losses=["ce", "feature_cka"], feature_pairs=pairs, max_steps=1)
    first = build(features, student=named(tiny_vit(), ["a", "b", "c"]), teacher=teacher, eval_dataset=pixel_dataset(10))
    second = build(make_args(tmp_path, "b", losses=["ce", "kd"], max_steps=1), student=named(tiny_vit(), ["x", "y", "z"]),
                   teacher=teacher, eval_dataset=pixel_dataset(10))
    first.train()
    first.evaluate()
    first.create_model_card()
    assert first.card_facts.teacher_accuracy is None, "no accuracy of other classes' logits"
    assert first.distillation_model.teacher_other_classes and not second.distillation_model.teacher_other_classes


def test_a_run_from_python_keeps_no_other_runs_record_in_its_checkpoints(tmp_path):
    """Checkpoints keep a copy of the command line's record of their run; a run from Python into a
    folder holding a command-line run's record copied that stale record into its checkpoints, whose
    resume was then compared with another run's settings."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "distill_config.yaml").write_text("max_steps: 40\nper_device_train_batch_size: 10\n")
    trainer = build(make_args(tmp_path, max_steps=1, save_strategy="steps", save_steps=1), teacher=tiny_resnet())
    trainer.train()
    assert (tmp_path / "run" / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (tmp_path / "run" / "checkpoint-1" / "distill_config.yaml").exists()


def test_a_refused_trainer_leaves_the_students_class_names_as_they_were(tmp_path):
    from hf_rcka.errors import RecipeError

    student = tiny_vit()
    before = dict(student.config.id2label)
    args = make_args(tmp_path, losses=["ce"], metric_for_best_model="acuracy", eval_strategy="steps")
    with pytest.raises(RecipeError, match="metric_for_best_model"):
        build(args, student=student, train=named_classes(pixel_dataset(20), ["cat", "dog", "eel"]),
              eval_dataset=named_classes(pixel_dataset(10), ["cat", "dog", "eel"]))
    assert student.config.id2label == before


def test_with_persistent_workers_each_evaluation_set_is_the_one_scored(tmp_path):
    """Trainer keeps one persistent-workers loader under 'eval' for any dataset: evaluate(B) scored
    the constructor's set A (0.0 where B truly scored 1.0)."""
    images = pixel_dataset(8, seed=1)
    relabelled = images.with_format(None).map(lambda row: {"labels": (row["labels"] + 1) % 3}).with_format("torch")

    def scores(persistent):
        args = make_args(tmp_path, f"p{persistent}", losses=["ce"], dataloader_num_workers=1 if persistent else 0,
                         dataloader_persistent_workers=persistent)
        trainer = build(args, student=tiny_vit(), eval_dataset=images)
        first = trainer.evaluate()["eval_loss"]
        other = trainer.evaluate(relabelled)["eval_loss"]
        trainer.eval_dataset = relabelled
        later = trainer.evaluate()["eval_loss"]
        return first, other, later

    first, other, later = scores(True)
    assert (first, other, later) == pytest.approx(scores(False), rel=1e-5)
    assert other != pytest.approx(first, rel=1e-3) and later == pytest.approx(other, rel=1e-5)


def test_the_norm_hooks_of_activation_checkpointing_go_with_the_distillation_model():
    """Each trainer with activation_checkpointing left a pre-hook on every BatchNorm of a reused
    student; with k of them each recomputation was taken back k times, and num_batches_tracked ran
    backwards (2, 2, 0, -4 over four trainers of two steps each)."""
    from _models import timm_model

    student, teacher = timm_model("resnet18"), tiny_resnet()
    norm = next(m for name, m in student.named_modules() if isinstance(m, nn.BatchNorm2d) and "layer2" in name)
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for run in range(3):
        model = DistillationModel(student, teacher, [CrossEntropyLoss(), LOSSES.build("kd")])
        model.activation_checkpointing_enable()
        model.train()
        counted = int(norm.num_batches_tracked)
        model(pixel_values=pixels, labels=labels).loss.backward()
        assert int(norm.num_batches_tracked) == counted + 1, f"run {run}"
        del model
        gc.collect()
        assert sum(len(m._forward_pre_hooks) for m in student.modules()) == 0


def test_a_teacher_gets_one_layout_hook_however_many_runs_use_it():
    """Each run's TeacherRuntime added another state-dict hook to a channels_last teacher."""
    teacher = tiny_resnet()
    for _ in range(3):
        DistillationModel(tiny_vit(), teacher, [CrossEntropyLoss(), LOSSES.build("kd")])
        gc.collect()
    assert sum(len(m._state_dict_hooks) for m in teacher.modules()) == 1


def test_the_teacher_check_sample_is_not_kept_at_each_train(tmp_path):
    """Each train() kept its teacher-check sample (a new dataset object) among the checked sets."""
    args = make_args(tmp_path, losses=["ce", "kd"], max_steps=1, teacher_accuracy_check="warn")
    trainer = build(args, teacher=tiny_resnet(), eval_dataset=pixel_dataset(10, seed=1))
    for _ in range(3):
        trainer.train()
    assert len(trainer._checked_datasets) == 2  # the training and evaluation sets it was built with


def test_a_baseline_gone_by_the_end_of_training_leaves_the_card_without_it(tmp_path, caplog):
    """Retrained (or removed) while this run trained, the baseline's results were read by the card
    after training: a traceback, the model saved without its card."""
    import json

    baseline = tmp_path / "alone"
    baseline.mkdir()
    (baseline / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.5}))
    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1, baseline_dir=str(baseline)))
    trainer.train()
    (baseline / "all_results.json").unlink()
    trainer.create_model_card()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "trained alone" not in card and "the card shows no baseline" in caplog.text
