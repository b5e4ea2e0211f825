"""DistillationTrainer built from Python: what a caller hands it is checked as the command line
checks what it loads. Each case below trained to the end (or failed after training) before."""

from __future__ import annotations

import logging
import re
import sys
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import TrainingArguments

from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit
from hf_rcka import DistillationTrainer, DistillationTrainingArguments
from hf_rcka.errors import DataError, LabelError, LayerIndexError, ModelError, RecipeError, TeacherNearChance
from hf_rcka.modeling.assembly import build_distillation_model
from hf_rcka.trainer.teacher_check import check_teacher_accuracy


def make_args(tmp_path, **overrides):
    defaults = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=5, per_device_eval_batch_size=5,
                    report_to="none", use_cpu=True, save_strategy="no", teacher_accuracy_check="off")
    return DistillationTrainingArguments(**{**defaults, **overrides})


def named(model, names):
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    return model


def build(args, student, teacher=None, **kwargs):
    kwargs.setdefault("processing_class", processor(16))
    kwargs.setdefault("train_dataset", pixel_dataset(10))
    return DistillationTrainer(model=student, teacher=teacher, args=args, **kwargs)


def test_a_teacher_with_its_classes_in_another_order_is_realigned_by_name(tmp_path):
    """Its logits were distilled as they came: a kd student of a perfect teacher scored 0.0."""
    teacher = named(tiny_resnet(), ["c", "a", "b"]).eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        raw = teacher(pixel_values=images).logits
    trainer = build(make_args(tmp_path), named(tiny_vit(), ["a", "b", "c"]), teacher)
    with torch.no_grad():
        # close, not equal: the teacher now runs channels_last, whose convolutions round otherwise on some CPUs
        logits = teacher(pixel_values=images).logits
        torch.testing.assert_close(trainer.distillation_model.in_student_order(logits), raw[:, [1, 2, 0]])
        # what the losses distil and what the teacher check scores are in the student's order too
        labels = raw[:, [1, 2, 0]].argmax(-1)
        outputs = trainer.distillation_model.eval()(pixel_values=images, labels=labels)  # eval: it returns them
        torch.testing.assert_close(outputs.teacher_logits, raw[:, [1, 2, 0]])
        assert trainer.distillation_model.teacher_accuracy(images, labels) == 1.0
    assert teacher.config.id2label == {0: "c", 1: "a", 2: "b"}, "the teacher object keeps its own order"


def test_a_teacher_of_other_classes_is_an_error_unless_paired_by_position(tmp_path):
    student = named(tiny_vit(), ["a", "b", "c"])
    with pytest.raises(LabelError, match="teacher_label_mapping: by_index"):
        build(make_args(tmp_path), student, named(tiny_resnet(), ["x", "y", "z"]))
    build(make_args(tmp_path), student, named(tiny_resnet(), ["x", "y", "z"]), teacher_label_mapping="by_index")


def test_a_refused_teacher_of_another_class_count_leaves_the_callers_arguments_and_teacher_unmarked(tmp_path):
    """A 5-class teacher whose logits a 3-class run reads is refused. Taken first for a teacher of
    other classes whose features alone are distilled, the refused build would leave the caller's
    teacher marked so: a corrected run with the same teacher would then neither check nor report
    its accuracy, unsaid."""
    args, teacher = make_args(tmp_path, teacher_accuracy_check="error"), named(tiny_resnet(num_labels=5), list("vwxyz"))
    with pytest.raises(ValueError, match="student predicts 3 classes but the teacher 5: logit losses need the same"):
        build(args, named(tiny_vit(), ["a", "b", "c"]), teacher)
    assert args.teacher_accuracy_check == "error"
    assert not getattr(teacher, "hf_rcka_other_classes", False)


def test_a_teacher_of_other_classes_whose_features_alone_are_distilled(tmp_path, caplog):
    """Its classes do not matter to feature losses; its accuracy on the run's labels means nothing,
    so the check is off. The command line (once both models have loaded, before the trainer is
    built) and the trainer decide this alike."""
    from hf_rcka.cli.run_inputs import align_teacher

    student = named(tiny_vit(), ["a", "b", "c"])
    with caplog.at_level("INFO", logger="hf_rcka"):
        trainer = build(make_args(tmp_path, losses=["ce", "feature_cka"], teacher_accuracy_check="warn"), student,
                        named(tiny_resnet(), ["x", "y", "z"]))
    assert trainer.args.teacher_accuracy_check == "off"
    assert "only its features are distilled" in caplog.text
    # nor is it reported: the card put "teacher 7.1%, same images" (its class ids against other classes')
    trainer.args.max_steps, trainer.args.eval_strategy = 1, "steps"
    trainer.eval_dataset = pixel_dataset(6, seed=1)
    trainer.train()
    trainer.evaluate()
    trainer.create_model_card()
    assert trainer.card_facts.teacher_accuracy is None
    assert "| teacher |" not in (tmp_path / "run" / "README.md").read_text()
    from hf_rcka.models.labels import has_other_classes

    # another number of classes (an ImageNet-1k teacher of a 10-class run's features) alike
    wider = named(tiny_resnet(num_labels=5), ["v", "w", "x", "y", "z"])
    other = build(make_args(tmp_path, losses=["ce", "feature_cka"], teacher_accuracy_check="warn"),
                  named(tiny_vit(), ["a", "b", "c"]), wider)
    assert other.args.teacher_accuracy_check == "off" and has_other_classes(wider)
    # and a teacher object reused by a run of its own classes is scored again
    same = named(tiny_resnet(), ["a", "b", "c"])
    build(make_args(tmp_path, losses=["ce", "feature_cka"]), named(tiny_vit(), ["a", "b", "c"]),
          named(tiny_resnet(), ["x", "y", "z"]))
    teacher = trainer.distillation_model.teacher
    assert has_other_classes(teacher)
    teacher.config.id2label, teacher.config.label2id = same.config.id2label, same.config.label2id
    build(make_args(tmp_path, losses=["ce", "kd"]), named(tiny_vit(), ["a", "b", "c"]), teacher.requires_grad_(True))
    assert not has_other_classes(teacher)
    args = make_args(tmp_path, losses=["ce", "feature_cka"], teacher_accuracy_check="warn")
    teacher = named(tiny_resnet(), ["x", "y", "z"])
    align_teacher(teacher, args, ["a", "b", "c"], "by_name")
    assert args.teacher_accuracy_check == "off" and not teacher._forward_hooks
    with pytest.raises(LabelError, match="teacher_label_mapping: by_index"):
        align_teacher(teacher, make_args(tmp_path, losses=["ce", "kd"]), ["a", "b", "c"], "by_name")


def test_a_wider_teacher_whose_features_alone_are_distilled_needs_no_class_names(tmp_path):
    """Its class count differs from the student's whatever the names: with a numbered student and data
    without a ClassLabel it was not marked as of other classes, so the default teacher check scored
    its 5-way argmax against labels 0..2 and stopped the run (a named student's run trained)."""
    from hf_rcka.models.labels import has_other_classes

    wider = named(tiny_resnet(num_labels=5), ["v", "w", "x", "y", "z"])
    with torch.no_grad():
        wider.classifier[-1].bias[4] = 100.0  # always its 5th class: near chance on the run's labels
    trainer = build(make_args(tmp_path, losses=["ce", "feature_cka"], teacher_accuracy_check="error", max_steps=1),
                    tiny_vit(), wider, eval_dataset=pixel_dataset(6, seed=1))
    assert trainer.args.teacher_accuracy_check == "off" and has_other_classes(wider)
    trainer.train()
    trainer.create_model_card()
    assert "| teacher |" not in (tmp_path / "run" / "README.md").read_text()


def test_a_teacher_paired_by_position_is_said_once(tmp_path, caplog):
    """The command line pairs the teacher before the trainer is built, and the trainer's check said it again."""
    from hf_rcka.cli.run_inputs import align_teacher

    args, teacher = make_args(tmp_path, losses=["ce", "kd"]), named(tiny_resnet(), ["x", "y", "z"])
    with caplog.at_level("INFO", logger="hf_rcka"):
        align_teacher(teacher, args, ["a", "b", "c"], "by_index")
        build(args, named(tiny_vit(), ["a", "b", "c"]), teacher, teacher_label_mapping="by_index")
    assert caplog.text.count("teacher classes paired by position") == 1


def test_equal_class_lists_with_a_repeated_name_are_left_alone(tmp_path):
    """ImageNet's names hold 'crane' twice: index() paired both with the first, and a hook copied
    logit 1 over logit 3 of a teacher whose names equal the run's."""
    names = ["a", "crane", "b", "crane"]
    teacher = named(tiny_resnet(num_labels=4), names)
    build(make_args(tmp_path), named(tiny_vit(num_labels=4), names), teacher,
          train_dataset=pixel_dataset(10, num_labels=4))
    assert not teacher._forward_hooks
    with pytest.raises(LabelError, match=r"names \['crane'\] repeat.*by_index"):
        build(make_args(tmp_path), named(tiny_vit(num_labels=4), names),
              named(tiny_resnet(num_labels=4), ["crane", "a", "b", "crane"]), train_dataset=pixel_dataset(10, num_labels=4))


def test_a_teacher_with_another_number_of_classes_keeps_the_plain_message(tmp_path):
    with pytest.raises(ValueError, match="student predicts 3 classes but the teacher 5"):
        build(make_args(tmp_path), named(tiny_vit(), ["a", "b", "c"]), tiny_resnet(num_labels=5))


def test_numbered_class_names_say_nothing_of_the_classes(tmp_path):
    """ClassLabel(num_classes=3) names its classes '0', '1', '2': no order to compare with."""
    data = pixel_dataset(10).with_format(None).cast_column("labels", datasets.ClassLabel(num_classes=3))
    build(make_args(tmp_path), named(tiny_vit(), ["cat", "dog", "eel"]), named(tiny_resnet(), ["cat", "dog", "eel"]),
          train_dataset=data.with_format("torch"))


def test_numerals_that_name_the_data_beside_a_teacher_of_other_names_are_refused_as_the_command_line_does(tmp_path):
    """Digits, or a ClassLabel cast from integers, name their classes '0', '1'...: with a student that
    names none, a teacher of 'cat', 'dog', 'eel' was paired with them by position with a warning and
    trained, where the command line refuses the same data and teacher."""
    data = pixel_dataset(10).with_format(None).cast_column("labels", datasets.ClassLabel(num_classes=3))
    data = data.with_format("torch")
    teacher = named(tiny_resnet(), ["cat", "dog", "eel"])
    with pytest.raises(LabelError, match=r"the teacher's classes do not match those of the dataset's ClassLabel.*"
                                         r"teacher_label_mapping: by_index"):
        build(make_args(tmp_path), tiny_vit(), teacher, train_dataset=data)
    build(make_args(tmp_path), tiny_vit(), teacher, train_dataset=data, teacher_label_mapping="by_index")
    build(make_args(tmp_path, losses=["ce", "feature_cka"]), tiny_vit(), teacher, train_dataset=data)  # no logits read


def test_a_dataset_without_rows_is_refused_before_anything_runs(tmp_path):
    """An empty training set failed at train() in torch's sampler ("num_samples should be a positive
    integer"); an empty evaluation set was evaluated into metrics without accuracy or loss, unsaid (an
    empty stream failed in accelerate: "Batch does not contain any data (`None`)")."""
    empty = pixel_dataset(10).select([])
    with pytest.raises(DataError, match=r"^train_dataset has no rows: there is nothing to train on"):
        build(make_args(tmp_path, losses=["ce", "kd"]), tiny_vit(), tiny_resnet(), train_dataset=empty)
    with pytest.raises(DataError, match=r"^eval_dataset\['b'\] has no rows: there is nothing to evaluate"):
        build(make_args(tmp_path, losses=["ce", "kd"]), tiny_vit(), tiny_resnet(),
              eval_dataset={"a": pixel_dataset(5), "b": empty})
    trainer = build(make_args(tmp_path, losses=["ce", "kd"]), tiny_vit(), tiny_resnet())
    for call, role in ((trainer.evaluate, "eval_dataset"), (trainer.predict, "test_dataset")):
        with pytest.raises(DataError, match=f"^{role} has no rows"):
            call(empty)
    # a stream (read ahead for evaluation only) whose filter kept nothing
    stream = pixel_dataset(4).to_iterable_dataset().filter(lambda item: False)
    with pytest.raises(DataError, match=r"^eval_dataset has no rows: there is nothing to evaluate"):
        trainer.evaluate(stream)


def test_a_caller_collator_may_build_the_batch_from_other_keys(tmp_path):
    """The image-classification tutorial keeps 'label' in its items and builds 'labels' in collate_fn."""
    def collate_fn(items):
        return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                "labels": torch.tensor([int(i["label"]) for i in items])}

    build(make_args(tmp_path), tiny_vit(), tiny_resnet(), train_dataset=pixel_dataset(10).rename_column("labels", "label"),
          data_collator=collate_fn)


def test_the_dataset_names_the_run_classes_when_the_student_does_not(tmp_path):
    data = pixel_dataset(10).with_format(None).cast_column("labels", datasets.ClassLabel(names=["a", "b", "c"]))
    teacher = named(tiny_resnet(), ["b", "c", "a"])
    trainer = DistillationTrainer(model=tiny_vit(), teacher=teacher, args=make_args(tmp_path),
                                  train_dataset=data.with_format("torch"), processing_class=processor(16))
    assert trainer.distillation_model.teacher_order.tolist() == [2, 0, 1]  # a, b, c among the teacher's logits


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_a_multi_label_student_is_saved_single_label_as_the_command_line_saves_it(tmp_path, caplog, problem_type):
    """The trainer trains the student with softmax cross-entropy and scores the argmax, but saved its
    config as given: ``pipeline("image-classification")`` then scored the export with sigmoids (the
    command line's loader sets it single-label, with a warning; the Python API said nothing)."""
    from transformers import AutoConfig

    student = tiny_vit()
    student.config.problem_type = problem_type
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer = build(make_args(tmp_path, losses=["ce"]), student)
    assert f"the student's config says problem_type {problem_type!r}" in caplog.text
    trainer.save_model()
    assert AutoConfig.from_pretrained(tmp_path / "run").problem_type == "single_label_classification"


def test_a_student_that_names_the_classes_otherwise_than_the_dataset_is_refused(tmp_path):
    """eval_accuracy counted ids (0.97) while the exported model named 57% of its predictions right."""
    data = pixel_dataset(10).with_format(None).cast_column("labels", datasets.ClassLabel(names=["cat", "dog", "eel"]))
    with pytest.raises(LabelError, match="is not the dataset's class order"):
        DistillationTrainer(model=named(tiny_vit(), ["dog", "cat", "eel"]), args=make_args(tmp_path, losses=["ce"]),
                            train_dataset=data.with_format("torch"), processing_class=processor(16))


def test_repeats_of_identical_pixels_are_refused_from_python_too(tmp_path):
    """aug_repeats with no_aug and no mixing trained identical copies in the same batches."""
    from hf_rcka.augmentation import AugmentationArguments

    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1), tiny_vit(),
                    augmentation=AugmentationArguments(no_aug=True, aug_repeats=3))
    with pytest.raises(RecipeError, match="aug_repeats 3 with no_aug: true: each image comes 3 times"):
        trainer.train()


def test_numerals_that_a_model_lists_in_another_order_are_names(tmp_path):
    """A model trained on class folders 0..10 lists them as text sorts them (0, 1, 10, 2...); data
    cast to ClassLabel(num_classes=11) numbers them 0..10: the student was evaluated at 18% without a
    word, and a teacher was paired by position."""
    numerals = [str(i) for i in range(11)]
    as_text = sorted(numerals)
    data = pixel_dataset(22, num_labels=11).with_format(None).cast_column(
        "labels", datasets.ClassLabel(num_classes=11)).with_format("torch")
    with pytest.raises(LabelError, match="is not the dataset's class order"):
        DistillationTrainer(model=named(tiny_vit(num_labels=11), as_text), args=make_args(tmp_path, losses=["ce"]),
                            train_dataset=data, processing_class=processor(16))
    teacher = named(tiny_resnet(num_labels=11), as_text)
    trainer = build(make_args(tmp_path, losses=["ce", "kd"]), tiny_vit(num_labels=11), teacher, train_dataset=data)
    order = trainer.distillation_model.teacher_order.tolist()
    assert [as_text[i] for i in order] == numerals, "the teacher realigned by name"


def test_a_later_evaluation_set_numbering_the_students_numeral_classes_in_order_is_refused(tmp_path):
    """The check a dataset given to evaluate() gets: numbers 0..10 are the student's numeral names
    in another order (0, 1, 10, 2...), not ids of its classes."""
    as_text = sorted(str(i) for i in range(11))
    student = named(tiny_vit(num_labels=11), as_text)
    data = pixel_dataset(22, num_labels=11).with_format(None).cast_column(
        "labels", datasets.ClassLabel(names=as_text)).with_format("torch")
    trainer = DistillationTrainer(model=student, args=make_args(tmp_path, losses=["ce"]), train_dataset=data,
                                  processing_class=processor(16))
    numbered = data.with_format(None).cast_column("labels", datasets.ClassLabel(num_classes=11)).with_format("torch")
    with pytest.raises(LabelError, match="its accuracy would compare other classes' ids"):
        trainer.evaluate(eval_dataset=numbered)


def test_numerals_in_order_beside_the_same_numerals_in_another_order_are_refused(tmp_path, caplog):
    """A training set of class folders 0..10 (ClassLabel in text order: 0, 1, 10, 2...) beside an
    evaluation set cast to ClassLabel(num_classes=11) trained, the numerals in order being taken
    for names that say nothing: each evaluated image was scored against another class, exit 0.
    The same two orders spelled c0..c10 were refused; set later as the training set, too."""
    as_text = sorted(str(i) for i in range(11))
    in_text_order = pixel_dataset(22, num_labels=11).with_format(None).cast_column(
        "labels", datasets.ClassLabel(names=as_text)).with_format("torch")
    in_order = pixel_dataset(22, num_labels=11, seed=1).with_format(None).cast_column(
        "labels", datasets.ClassLabel(num_classes=11)).with_format("torch")
    refused = r"eval_dataset lists its classes as \['0', '1', '2', .*train_dataset as \['0', '1', '10', '2'"
    with pytest.raises(LabelError, match=refused):
        build(make_args(tmp_path, losses=["ce"]), tiny_vit(num_labels=11), train_dataset=in_text_order,
              eval_dataset=in_order)
    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1), tiny_vit(num_labels=11), train_dataset=in_order,
                    eval_dataset=in_order)
    trainer.train_dataset = in_text_order
    with pytest.raises(LabelError, match=refused):
        trainer.train()
    assert trainer.state.global_step == 0
    # a teacher of those numerals in text order, paired by position by a trainer built without names:
    # a later evaluation set numbering them in order is said
    teacher = named(tiny_resnet(num_labels=11), as_text)
    positional = build(make_args(tmp_path, losses=["ce", "kd"]), tiny_vit(num_labels=11), teacher,
                       train_dataset=pixel_dataset(22, num_labels=11))
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        positional.evaluate(in_order)
    assert "which this trainer pairs with the data by position" in caplog.text


def test_numerals_in_order_beside_a_set_that_names_the_classes_are_its_ids(tmp_path):
    """Numerals in order (an evaluation set cast to ClassLabel(num_classes=3)) say nothing of the
    classes, so beside a training set that names them they are that set's ids, not another order
    of its names: only the same numerals in another order are (above)."""
    names = pixel_dataset(10).with_format(None).cast_column(
        "labels", datasets.ClassLabel(names=["cat", "dog", "eel"])).with_format("torch")
    in_order = pixel_dataset(10, seed=1).with_format(None).cast_column(
        "labels", datasets.ClassLabel(num_classes=3)).with_format("torch")
    trainer = build(make_args(tmp_path, losses=["ce"]), tiny_vit(), train_dataset=names, eval_dataset=in_order)
    assert trainer.distillation_model.student.config.id2label == {0: "cat", 1: "dog", 2: "eel"}


def test_a_training_set_given_after_construction_names_the_students_classes_as_training_starts(tmp_path):
    """A training set that names the classes, assigned after the trainer was built
    (``trainer.train_dataset = ds``), was checked but no longer named a student of numbered classes:
    the exported model said LABEL_0, LABEL_1... . Before train() the caller's student is left as it is."""
    names = pixel_dataset(10).with_format(None).cast_column(
        "labels", datasets.ClassLabel(names=["cat", "dog", "eel"])).with_format("torch")
    trainer = build(make_args(tmp_path, losses=["ce"], max_steps=1), tiny_vit())
    student = trainer.distillation_model.student
    unnamed = dict(student.config.id2label)
    trainer.train_dataset = names
    assert student.config.id2label == unnamed, "renamed only once train() has passed its checks"
    trainer.train()
    assert student.config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    assert student.config.label2id == {"cat": 0, "dog": 1, "eel": 2}

def test_a_batch_with_keys_the_model_does_not_take_is_refused_before_the_forward():
    from hf_rcka.trainer.given_data import check_batch_keys

    batch = {"pixel_values": torch.zeros(2, 3, 16, 16), "labels": torch.zeros(2, dtype=torch.long)}
    check_batch_keys(batch)
    with pytest.raises(DataError, match=r"the batch has keys \['image_id'\] besides pixel_values and labels"):
        check_batch_keys({**batch, "image_id": torch.arange(2)})


@pytest.mark.parametrize("setting", [{"bf16_full_eval": True}, {"prediction_loss_only": True},
                                     {"label_names": ["label"]}, {"batch_eval_metrics": True}])
def test_plain_training_arguments_are_checked_too(tmp_path, setting):
    """bf16_full_eval exported a bfloat16 model; the others reported no accuracy or failed after training."""
    plain = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **setting)
    with pytest.raises(RecipeError, match=f"{next(iter(setting))}: .* is not supported"):
        build(plain, tiny_vit(), tiny_resnet())


def test_arguments_set_after_they_were_built_are_checked_too(tmp_path):
    """args.losses = ["ce", "kd"] (the README's short form) after construction failed as
    AttributeError: 'str' object has no attribute 'get'; a dict for args as AttributeError
    'label_names'; a misspelt teacher_accuracy_check on plain TrainingArguments read as 'warn';
    a fixed setting changed on DistillationTrainingArguments went unchecked."""
    args = make_args(tmp_path, max_steps=1)
    args.losses = ["ce", "kd"]
    trainer = build(args, tiny_vit(), tiny_resnet())
    assert list(trainer.distillation_model.losses) == ["ce", "kd"]
    with pytest.raises(TypeError, match="args must be DistillationTrainingArguments .* got dict"):
        build({"output_dir": str(tmp_path)}, tiny_vit(), tiny_resnet())
    plain = TrainingArguments(output_dir=str(tmp_path / "plain"), use_cpu=True, report_to="none")
    plain.teacher_accuracy_check = "eror"
    with pytest.raises(RecipeError, match="teacher_accuracy_check must be 'warn', 'error' or 'off', got 'eror'"):
        build(plain, tiny_vit(), tiny_resnet())
    # a fixed setting or a value out of range, set on the distillation's own arguments after they
    # were built: the evaluation reported no accuracy, or the first step failed
    late = make_args(tmp_path, max_steps=1)
    late.prediction_loss_only = True
    with pytest.raises(RecipeError, match="prediction_loss_only: True is not supported"):
        build(late, tiny_vit(), tiny_resnet())
    late = make_args(tmp_path, max_steps=1)
    late.per_device_train_batch_size = 0
    with pytest.raises(RecipeError, match="per_device_train_batch_size"):
        build(late, tiny_vit(), tiny_resnet())


def test_plain_training_arguments_get_the_distillation_defaults(tmp_path):
    plain = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = build(plain, tiny_vit(), tiny_resnet())
    assert trainer.args.label_names == ["labels"] and trainer.args.remove_unused_columns is False
    assert plain.label_names is None and plain.remove_unused_columns is True  # the caller's object is left as it was


def test_several_gpus_in_one_process_train_on_one_device_not_through_data_parallel(tmp_path, monkeypatch, caplog):
    """Run without accelerate launch on a 2-GPU machine, Trainer wrapped the distillation model in
    nn.DataParallel: copies in threads that shared the feature capture, a batch twice the
    recipe's, and lr_base scaled to that batch."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # what TrainingArguments counts, with use_cpu off
    ours = make_args(tmp_path, use_cpu=False, lr_base=1e-3, lr_base_size=10)
    plain = TrainingArguments(output_dir=str(tmp_path / "plain"), use_cpu=False, report_to="none",
                              per_device_train_batch_size=5)
    assert TrainingArguments.n_gpu.fget(ours) == 2 and plain.n_gpu == 2
    assert ours.n_gpu == 1 and ours.train_batch_size == 5 and ours.learning_rate == pytest.approx(5e-4)
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        for args in (ours, plain):
            trainer = build(args, tiny_vit(), tiny_resnet())
            assert trainer.args.n_gpu == 1 and trainer.args.train_batch_size == 5
            assert not isinstance(trainer._wrap_model(trainer.model), torch.nn.DataParallel)
    assert caplog.text.count("2 GPUs are visible to this one process") == 2
    assert "accelerate launch --multi_gpu --num_processes 2 scripts/distill.py" in caplog.text
    assert plain.n_gpu == 2  # the caller's object is left as it was


def test_one_visible_gpu_is_no_reason_to_warn(tmp_path, monkeypatch, caplog):
    """One GPU in one process is the ordinary single-GPU run: it was told to start one process per
    GPU (kills: the several-GPUs warning from one visible GPU on)."""
    from hf_rcka.trainer.data_parallel import one_device_per_process

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=False, report_to="none")
    assert TrainingArguments.n_gpu.fget(args) == 1
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        one_device_per_process(args)
    assert args.n_gpu == 1 and "GPUs are visible" not in caplog.text


def test_the_several_gpus_warning_counts_the_gpus_that_are_visible(tmp_path, monkeypatch, caplog):
    """On a 4-GPU machine the warning's command must start 4 processes, one per visible GPU (a
    command for another count trains on some GPUs only, or fails to start)."""
    from hf_rcka.trainer.data_parallel import one_device_per_process

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=False, report_to="none")
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        one_device_per_process(args)
    assert args.n_gpu == 1 and "4 GPUs are visible to this one process" in caplog.text
    assert "--num_processes 4 " in caplog.text and "--num_processes 2" not in caplog.text


def test_the_several_gpus_hint_launches_the_entry_point_the_run_was_started_with(monkeypatch):
    """The hint named scripts/distill.py, which a pip-installed hf-rcka-distill user does not have."""
    from hf_rcka.trainer.resume_hint import one_process_per_gpu_command

    for argv, entry in ((["/venv/bin/hf-rcka-distill", "r.yaml"], "-m hf_rcka"),
                        (["scripts/distill.py", "r.yaml"], "scripts/distill.py"),
                        (["/home/me/my_distill.py"], "my_distill.py")):
        monkeypatch.setattr(sys, "argv", argv)
        assert one_process_per_gpu_command(2) == f"accelerate launch --multi_gpu --num_processes 2 {entry}"


def test_a_script_of_the_users_launched_unjoined_is_refused_as_the_command_line_is(tmp_path, monkeypatch):
    """accelerate launch --cpu --num_processes 2 my_distill.py: each process trained alone on all the
    data and exited 0, where scripts/distill.py refused the launch."""
    for name, value in (("ACCELERATE_DYNAMO_BACKEND", "no"), ("MASTER_ADDR", "127.0.0.1"),
                        ("ACCELERATE_USE_CPU", "True")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RecipeError, match="accelerate launch --cpu with several processes"):
        build(make_args(tmp_path, losses=["ce"]), tiny_vit())
    monkeypatch.delenv("MASTER_ADDR")
    build(make_args(tmp_path, losses=["ce"]), tiny_vit())  # one process


def test_a_ready_distillation_model_with_arguments_it_would_ignore(tmp_path):
    args = make_args(tmp_path)
    ready = build_distillation_model(tiny_vit(), None, make_args(tmp_path, losses=["ce"]))
    with pytest.raises(ModelError, match="teacher given with a ready DistillationModel"):
        build(args, ready, tiny_resnet())
    with pytest.raises(RecipeError, match=r"losses \['ce', 'kd'\] in args, but the DistillationModel given computes \['ce'\]"):
        build(make_args(tmp_path, losses=["ce", "kd"]), ready)
    build(make_args(tmp_path, losses=["ce"]), ready)


def test_the_default_losses_and_the_pairs_of_a_loss_switched_off(tmp_path):
    """Without losses, a teacher adds RCKA on logits at the task loss's weight; feature pairs whose
    only reader weighs 0 build no adapter and capture nothing (the warning says they are ignored)."""
    defaults = build_distillation_model(tiny_vit(), tiny_resnet(), make_args(tmp_path))
    assert {name: loss.weight for name, loss in defaults.losses.items()} == {"ce": 1.0, "rcka": 1.0}
    pairs = [{"student_layer": 1, "teacher_layer": 1}]
    for weight, adapters in ((0, 0), (1, 1)):
        losses = ["ce", "rcka", {"name": "feature_cka", "weight": weight}]
        model = build_distillation_model(tiny_vit(), tiny_resnet(),
                                         make_args(tmp_path, losses=losses, feature_pairs=pairs))
        assert len(model.adapters) == adapters and model.needs_features is bool(weight)


def test_a_logit_loss_at_weight_0_does_not_make_the_run_read_the_teachers_logits():
    """A loss of weight 0 is not computed: a kd switched off beside feature_cka reads no logits, so
    the teacher's classes need not be the run's. A mutant that counted it made such a run align or
    refuse a teacher of other classes for logits nothing read."""
    from hf_rcka.modeling.assembly import run_reads_teacher_logits

    def losses(kd_weight):
        return SimpleNamespace(losses=[{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": kd_weight},
                                       {"name": "feature_cka", "weight": 1.0}])

    assert run_reads_teacher_logits(losses(0.5))
    assert not run_reads_teacher_logits(losses(0.0))


def test_a_student_sharing_weights_with_the_frozen_teacher(tmp_path):
    """The shared embeddings were frozen with the teacher and never trained; the run succeeded."""
    teacher = tiny_vit(seed=5)
    student = tiny_vit(seed=1)
    student.vit.embeddings = teacher.vit.embeddings
    with pytest.raises(ModelError, match=r"shares \d+ weight tensor\(s\) with the teacher.*copy.deepcopy"):
        build(make_args(tmp_path), student, teacher)


def test_a_student_whose_layers_share_weights_transformers_cannot_save(tmp_path):
    """timm's CoaT shares its position encodings between layers: save_pretrained refused the student at
    the first checkpoint, after the training, and nothing was written. Refused when training starts,
    for a bare student and a ready DistillationModel (the command line's) alike; evaluating it saves
    nothing and is not refused."""
    def sharing():
        student = tiny_vit(seed=1)
        layers = student.vit.layers
        layers[1].attention.o_proj = layers[0].attention.o_proj  # two layers, one weight
        return student

    refusal = (r"shares 2 weight tensor\(s\) between layers \(e.g. "
               r"vit.layers.0.attention.o_proj.weight = vit.layers.1.attention.o_proj.weight")
    ready = build_distillation_model(sharing(), tiny_resnet(), make_args(tmp_path))
    for student, teacher in ((sharing(), tiny_resnet()), (ready, None)):
        trainer = build(make_args(tmp_path), student, teacher, eval_dataset=pixel_dataset(10))
        with pytest.raises(ModelError, match=refusal):
            trainer.train()
        assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir()), "nothing trained or saved"
        assert "eval_accuracy" in trainer.evaluate()


def test_processors_the_distillation_needs(tmp_path):
    with pytest.raises(RecipeError, match="teacher_processor needs processing_class"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), processing_class=None, teacher_processor=processor(24))
    with pytest.raises(RecipeError, match=r"losses \['feature_cka'\] compare hidden states.*the student config's "
                                          r"224x224, but the data's images are 16x16. Pass processing_class"):
        student = tiny_vit()
        student.config.image_size = 224
        build(make_args(tmp_path, losses=["ce", "feature_cka"]), student, tiny_resnet(), processing_class=None)
    # the data's size is the config's: the pairs are planned right without a processor
    build(make_args(tmp_path, losses=["ce", "feature_cka"]), tiny_vit(), tiny_resnet(), processing_class=None)


def test_items_without_pixel_values_or_labels_are_named_before_training(tmp_path):
    """A label column named 'label' failed at the first batch with KeyError: 'labels'."""
    data = pixel_dataset(10).rename_column("labels", "label")
    with pytest.raises(DataError, match=r"train_dataset: its items have no \['labels'\] \(they have \['label', "
                                        r"'pixel_values'\]\): rename the label column"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), train_dataset=data)
    with pytest.raises(DataError, match=r"eval_dataset\['b'\]: its items have no \['labels'\]"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), eval_dataset={"a": pixel_dataset(5), "b": data})


def test_integer_pixel_values_are_refused_before_training(tmp_path):
    """uint8 pixels (images formatted as torch before a processor ran) trained without an error: the
    models cast them to floats of 0..255, and the exported model's pipeline() feeds it normalised ones."""
    rows = pixel_dataset(10)

    class Raw(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            pixels = (rows[i]["pixel_values"] * 40 + 128).clamp(0, 255).to(torch.uint8)
            return {"pixel_values": pixels, "labels": int(rows[i]["labels"])}

    raw = Raw()
    with pytest.raises(DataError, match=r"^train_dataset: its pixel_values are torch.uint8 \(raw pixel values\?\)"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), train_dataset=raw)
    with pytest.raises(DataError, match=r"^eval_dataset: its pixel_values are torch.uint8"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), eval_dataset=raw)
    trainer = build(make_args(tmp_path), tiny_vit(), tiny_resnet())
    with pytest.raises(DataError, match=r"^test_dataset: its pixel_values are torch.uint8"):
        trainer.predict(raw)
    stacked = lambda items: {"pixel_values": torch.stack([i["pixel_values"] for i in items]),  # noqa: E731
                             "labels": torch.tensor([int(i["labels"]) for i in items])}
    with pytest.raises(DataError, match=r"^the data_collator's batch: its pixel_values are torch.uint8"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), train_dataset=raw, data_collator=stacked)


def test_a_collators_soft_labels_are_refused_for_evaluation_before_training(tmp_path):
    """One-hot labels from a data_collator of one's own (a Mixup in it) trained, then failed at the
    teacher check or the first evaluation with 'The size of tensor a (5) must match the size of tensor b'."""
    def one_hot(items):
        return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                "labels": torch.nn.functional.one_hot(torch.tensor([int(i["labels"]) for i in items]), 3).float()}

    with pytest.raises(DataError, match=r"^the data_collator's batch of an eval_dataset item: its labels are a float32 "
                                        r"tensor of shape \(2, 3\), not class ids"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), eval_dataset=pixel_dataset(5), data_collator=one_hot)
    trainer = build(make_args(tmp_path, max_steps=1), tiny_vit(), tiny_resnet(), data_collator=one_hot)
    trainer.train()  # training reads them as the losses do (ce takes class probabilities)
    with pytest.raises(DataError, match=r"^an evaluation batch: its labels are a float32 tensor of shape \(5, 3\)"):
        trainer.evaluate(pixel_dataset(5))


def test_float_pixels_the_processor_never_made_are_refused_before_training(tmp_path):
    """0..255 floats (PILToTensor().float()) trained on without an error, while pipeline() feeds the
    export the processor's [-1, 1]; a processor that does not rescale makes 0..255 itself."""
    raw = pixel_dataset(10).with_format(None).map(
        lambda row: {"pixel_values": (np.asarray(row["pixel_values"]) * 60 + 128).clip(0, 255)}).with_format("torch")
    with pytest.raises(DataError, match=r"^train_dataset: its first image's pixel_values range over \[\d+(\.\d+)?, "
                                        r"\d+(\.\d+)?\], but processing_class makes \[-1, 1\]"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), train_dataset=raw)
    unscaled = processor(16, mean=0.0, std=1.0)
    unscaled.do_rescale = False
    build(make_args(tmp_path), tiny_vit(), tiny_resnet(), train_dataset=raw, processing_class=unscaled)


def test_random_erasing_noise_beside_a_processor_that_only_rescales_is_not_refused(tmp_path):
    """timm's random erasing ('pixel', the default remode) fills with standard-normal noise whatever the
    processor's std: beside a processor without normalisation ([0, 1], MobileViT's) a 224 px image's
    erased third held values below -4, and a third of such runs were refused as never made by it."""
    rows = pixel_dataset(10)

    class Erased(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            pixels = (rows[i]["pixel_values"] * 0.25 + 0.5).clamp(0, 1)
            pixels[:, :4, :4] = torch.tensor([-4.8, 5.3, 0.1]).view(3, 1, 1)  # the noise's tails, as drawn
            return {"pixel_values": pixels, "labels": int(rows[i]["labels"])}

    unnormalised = processor(16)
    unnormalised.do_normalize = False
    build(make_args(tmp_path, losses=["ce", "kd"]), tiny_vit(), tiny_resnet(), train_dataset=Erased(),
          processing_class=unnormalised)


def test_a_processor_whose_size_the_student_cannot_take_is_refused_before_training(tmp_path):
    """Without a feature loss nothing compared them: a ViT built for 16 px trained and was evaluated
    on 16 px data beside a 24 px processor, and pipeline() on the saved model failed ("Input image
    size (24*24) doesn't match model (16*16)")."""
    with pytest.raises(ModelError, match=r"^processing_class makes 24x24 images, which the student cannot take "
                                         r"\(Input image size \(24\*24\) doesn't match model \(16\*16\)\.\), though it "
                                         r"takes the training images' 16x16: it is saved"):
        build(make_args(tmp_path, losses=["ce", "kd"]), tiny_vit(), tiny_resnet(), processing_class=processor(24))
    student = tiny_vit()
    ready = build_distillation_model(student, tiny_resnet(), make_args(tmp_path, losses=["ce", "kd"]))
    with pytest.raises(ModelError, match=r"^processing_class makes 24x24 images, which the student cannot take"):
        build(make_args(tmp_path), ready, processing_class=processor(24))
    assert student.training, "the probe leaves the student in the mode it came in"
    # a CNN takes any size (it may be evaluated at a larger one than it trained at)
    build(make_args(tmp_path, losses=["ce", "kd"]), tiny_resnet(), tiny_resnet(), processing_class=processor(24))


def test_an_evaluation_at_another_size_than_the_saved_processors_is_said(tmp_path, caplog):
    """A CNN takes any size, so a 24 px processor beside 16 px data is not refused; but the run's (and
    the card's) accuracy was measured at 16 px while pipeline() feeds the export 24 px images."""
    args = make_args(tmp_path, losses=["ce", "kd"])
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        build(args, tiny_resnet(), tiny_resnet(), processing_class=processor(24), eval_dataset=pixel_dataset(5))
    said = [r.getMessage() for r in caplog.records if "measured at another size than its deployment" in r.getMessage()]
    assert said == ["eval_dataset: its images are 16x16, but processing_class, which is saved with the student and "
                    "which pipeline() feeds the exported model through, makes 24x24: the run's accuracy (and the "
                    "card's) is measured at another size than its deployment. Evaluate on images the processor "
                    "makes, or pass the processor of the evaluation size as processing_class"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):  # evaluated at the processor's size: nothing to say
        build(args, tiny_resnet(), tiny_resnet(), processing_class=processor(24), eval_dataset=pixel_dataset(5, size=24))
    assert not [r for r in caplog.records if "another size than its deployment" in r.getMessage()]


def test_channels_last_pixel_values_are_refused_before_training(tmp_path):
    """(height, width, channels) images failed in the teacher check or the first step, inside the
    model's forward: "Expected 3 but got 16"."""
    rows = pixel_dataset(10)

    class ChannelsLast(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return {"pixel_values": rows[i]["pixel_values"].permute(1, 2, 0), "labels": int(rows[i]["labels"])}

    with pytest.raises(DataError, match=r"^train_dataset: its first image's pixel_values have shape \(16, 16, 3\), but "
                                        r"the student reads 3-channel images as \(channels, height, width\); they look "
                                        r"channels-last: permute\(2, 0, 1\)"):
        build(make_args(tmp_path, losses=["ce", "kd"]), tiny_vit(), tiny_resnet(), train_dataset=ChannelsLast())


class _PerfectTeacher:
    class student:
        class config:
            num_labels = 3

    @staticmethod
    def teacher_accuracy(pixel_values, labels):
        return 1.0


def test_the_teacher_check_does_not_call_a_perfect_teacher_near_chance_on_two_images():
    """With n=2 the threshold was above 1: a perfect teacher raised TeacherNearChance."""
    labels = torch.tensor([0, 1])
    assert check_teacher_accuracy(_PerfectTeacher, torch.zeros(2, 3, 4, 4), labels, "error") == 1.0


def test_only_the_process_that_logs_says_the_teacher_check(caplog):
    """Every process judges the same gathered numbers: each printed the near-chance warning (8 copies on
    8 GPUs); the one that logs says it, and 'error' still stops every process."""
    import warnings

    class _WrongTeacher(_PerfectTeacher):
        @staticmethod
        def teacher_accuracy(pixel_values, labels):
            return 0.0

    labels = torch.zeros(40, dtype=torch.long)
    for say in (False, True):
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_teacher_accuracy(_WrongTeacher, torch.zeros(40, 3, 4, 4), labels, "warn", say=say)
        said = [r for r in caplog.records if "near chance" in r.getMessage()] + [w for w in caught if "near chance" in str(w.message)]
        assert bool(said) == say
    with pytest.raises(TeacherNearChance):
        check_teacher_accuracy(_WrongTeacher, torch.zeros(40, 3, 4, 4), labels, "error", say=False)


def test_only_the_process_that_logs_says_what_building_the_models_finds(tmp_path, caplog, monkeypatch):
    """Every process builds the same models and logged what it found alike (8 copies on 8 GPUs)."""
    import logging

    caplog.set_level(logging.WARNING, logger="hf_rcka")
    level = logging.getLogger("hf_rcka").level
    for should_log in (False, True):
        caplog.clear()
        monkeypatch.setattr(DistillationTrainingArguments, "should_log", property(lambda self: should_log))
        build(make_args(tmp_path, losses=["ce"]), tiny_vit(), tiny_resnet(), teacher_processor=processor(24))
        said = [r for r in caplog.records if "no loss uses it" in r.getMessage()]
        assert bool(said) == should_log
    assert logging.getLogger("hf_rcka").level == level, "the package's level is restored"


def test_every_process_judges_the_teacher_on_all_first_batches_together():
    """Each process judged its own first batch (0.094 on one, 0.109 on the other): with 'error', one
    could stop while the other trained on, waiting for it."""
    labels = torch.zeros(40, dtype=torch.long)
    other_process = torch.tensor([[0.0, 200.0]], dtype=torch.float64)  # 200 images, none right
    gather = lambda local: torch.cat([local, other_process])  # noqa: E731 - what accelerator.gather returns
    with pytest.raises(TeacherNearChance, match=r"on 240 evaluation images drawn from the set is 0.167, near chance"):
        check_teacher_accuracy(_PerfectTeacher, torch.zeros(40, 3, 4, 4), labels, "error", gather)
    assert check_teacher_accuracy(_PerfectTeacher, torch.zeros(40, 3, 4, 4), labels, "error") == 1.0


def _answering_one_class(teacher, answer: int):
    """The teacher gives class ``answer`` to every image, whatever it sees."""
    head = teacher.classifier[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(answer), head.out_features).float() * 10)
    return teacher


@pytest.mark.parametrize("plain", [False, True])
def test_a_teacher_near_chance_stops_the_run_before_its_first_step_by_default(tmp_path, plain):
    """It was a warning, and the run went on to exit 0 with a student taught garbage: a teacher of
    other classes paired by position (``by_index``) that scored 0.0 on the run's labels."""
    evaluation = pixel_dataset(60, seed=3).filter(lambda row: row["labels"] != 0)
    settings = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=5, per_device_eval_batch_size=40,
                    report_to="none", use_cpu=True, save_strategy="no", max_steps=2)
    args = TrainingArguments(**settings) if plain else DistillationTrainingArguments(**settings)
    teacher = _answering_one_class(named(tiny_resnet(), ["x", "y", "z"]), 0)
    trainer = build(args, named(tiny_vit(), ["a", "b", "c"]), teacher, eval_dataset=evaluation,
                    teacher_label_mapping="by_index")
    with pytest.raises(TeacherNearChance, match=r"is 0\.000, near chance.*teacher_accuracy_check: warn to train from "
                                                r"it anyway"):
        trainer.train()
    assert trainer.state.global_step == 0
    warned = build(make_args(tmp_path, teacher_accuracy_check="warn", per_device_eval_batch_size=40, max_steps=2),
                   named(tiny_vit(), ["a", "b", "c"]), teacher, eval_dataset=evaluation, teacher_label_mapping="by_index")
    with pytest.warns(UserWarning, match="near chance.*teacher_accuracy_check: off to skip"):
        warned.train()
    assert warned.state.global_step == 2


def test_a_teacher_is_judged_on_images_drawn_from_a_torch_dataset_listed_class_by_class(tmp_path):
    """A map-style torch Dataset (torchvision's ImageFolder lists its images class by class) gave the
    check its first batches: all of class 0, on which a teacher answering class 0 for every image
    scored 1.0, and the run trained from it. A datasets.Dataset was drawn at random already."""
    rows = pixel_dataset(900, seed=4).sort("labels").with_format("torch")[:]  # tensors: a row of the table is slow
    pixels, labels = rows["pixel_values"], rows["labels"].tolist()

    class ByClass(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, index):
            return {"pixel_values": pixels[index], "labels": labels[index]}

    assert set(labels[:260]) == {0}, "the first batches the check would read: one class"
    teacher = _answering_one_class(named(tiny_resnet(), ["a", "b", "c"]), 0)
    trainer = build(make_args(tmp_path, teacher_accuracy_check="error", per_device_eval_batch_size=50, max_steps=1),
                    named(tiny_vit(), ["a", "b", "c"]), teacher, eval_dataset=ByClass())
    with pytest.raises(TeacherNearChance, match="near chance"):
        trainer.train()
    assert trainer.state.global_step == 0
    # a stream that tells its length (webdataset's with_length) is read as it comes: it has no index
    class Stream(torch.utils.data.IterableDataset):
        def __len__(self):
            return len(labels)

        def __iter__(self):
            return ({"pixel_values": pixel, "labels": label} for pixel, label in zip(pixels, labels))

    trainer = build(make_args(tmp_path, teacher_accuracy_check="warn", per_device_eval_batch_size=50, max_steps=1),
                    named(tiny_vit(), ["a", "b", "c"]), named(tiny_resnet(), ["a", "b", "c"]), eval_dataset=Stream())
    trainer.train()
    assert trainer.state.global_step == 1


def test_a_student_loaded_in_half_precision_is_refused_before_training(tmp_path, caplog):
    """A student loaded with dtype=torch.bfloat16 trained in pure bf16 without a word: 43% of its
    weights never moved in 5 steps at 5e-5 (AdamW's updates round away), and the export was bf16.
    Frozen half-precision weights train nothing, and are let be."""
    trainer = build(make_args(tmp_path, max_steps=1), named(tiny_vit(), ["a", "b", "c"]).to(torch.bfloat16),
                    named(tiny_resnet(), ["a", "b", "c"]))
    with pytest.raises(ModelError, match=r"^the student's trainable weights are bfloat16 \(\d+ tensor\(s\), e\.g\. .*"
                                         r"To train it, load the student in float32"):
        trainer.train()
    assert trainer.state.global_step == 0
    student = named(tiny_vit(), ["a", "b", "c"])
    student.vit.embeddings.to(torch.bfloat16).requires_grad_(False)
    from hf_rcka.trainer.given_models import check_trainable_precision
    check_trainable_precision(student, own_optimizer=True)
    # an optimizer of the caller's may keep float32 copies (pure bf16 training on purpose): said, not refused
    student = named(tiny_vit(), ["a", "b", "c"]).to(torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        check_trainable_precision(student, own_optimizer=False)
    assert "unless the optimizer you gave keeps float32 copies of them" in caplog.text
    # an optimizer class of the caller's (optimizer_cls_and_kwargs) is the caller's optimizer too
    caplog.clear()
    trainer = build(make_args(tmp_path, max_steps=1), named(tiny_vit(), ["a", "b", "c"]).to(torch.bfloat16),
                    named(tiny_resnet(), ["a", "b", "c"]), optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.01}))
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer.train()
    assert "unless the optimizer you gave keeps float32 copies of them" in caplog.text
    assert trainer.state.global_step == 1


def test_a_good_teacher_is_judged_on_enough_images_to_tell_it_from_chance(tmp_path):
    """Judged on one batch of 8 (transformers' default evaluation batch), a teacher at 80% on 2
    classes was within two standard errors of chance about half the time: refused, now that the
    check stops the run by default. It scores at least 256 images, batch by batch."""
    scored = []

    class _Counting(_PerfectTeacher):
        student = SimpleNamespace(config=SimpleNamespace(num_labels=2))

        @staticmethod
        def teacher_accuracy(pixel_values, labels):
            scored.append(len(labels))
            return 0.75  # 6 of 8 right: within two standard errors of 0.5 on 8 images, not on 256

    from hf_rcka.trainer.teacher_check import CHECK_IMAGES, judge_teacher

    labels = torch.zeros(8, dtype=torch.long)
    with pytest.raises(TeacherNearChance):
        check_teacher_accuracy(_Counting, torch.zeros(8, 3, 4, 4), labels, "error")
    batches = [(torch.zeros(8, 3, 4, 4), labels)] * (CHECK_IMAGES // 8)
    assert judge_teacher(_Counting, iter(batches), "error") == 0.75 and scored[1:] == [8] * 32
    trainer = build(make_args(tmp_path, teacher_accuracy_check="error", per_device_eval_batch_size=8), tiny_vit(),
                    tiny_resnet(), eval_dataset=pixel_dataset(300, seed=1))
    seen = []
    trainer.distillation_model.teacher_accuracy = lambda pixel_values, labels: seen.append(len(labels)) or 1.0
    before = list(trainer.accelerator.gradient_state.dataloader_references)  # a singleton: earlier tests' too
    assert trainer.check_teacher() == 1.0 and seen == [8] * 32, "one batch at a time, 256 images"
    # the loader it left after 32 of 38 batches is not still accelerate's active one, for the whole run
    assert trainer.accelerator.gradient_state.dataloader_references == before


def test_the_teacher_check_reads_the_first_of_several_evaluation_sets(tmp_path):
    """A dict eval_dataset (which Trainer takes) failed train() at once with KeyError: 0."""
    trainer = build(make_args(tmp_path, teacher_accuracy_check="warn", per_device_eval_batch_size=10), tiny_vit(),
                    tiny_resnet(), eval_dataset={"clean": pixel_dataset(10, seed=1), "other": pixel_dataset(10, seed=2)})
    assert 0.0 <= trainer.check_teacher() <= 1.0


def test_the_teacher_check_scores_the_first_evaluation_set_not_another(tmp_path):
    """Of several evaluation sets, the first is the one the check scores (as its docstring and the
    card say): a teacher that answers class 0 is perfect on a first set of class 0 alone and at 0.0 on
    a second set without it; judged on the second, the run stopped."""
    teacher = _answering_one_class(named(tiny_resnet(), ["a", "b", "c"]), 0)
    data = pixel_dataset(90, seed=3)
    first, other = data.filter(lambda row: row["labels"] == 0), data.filter(lambda row: row["labels"] != 0)
    trainer = build(make_args(tmp_path, teacher_accuracy_check="error", per_device_eval_batch_size=20),
                    named(tiny_vit(), ["a", "b", "c"]), teacher, eval_dataset={"first": first, "other": other})
    assert trainer.check_teacher() == 1.0


def _class_labelled(data, names):
    return data.with_format(None).cast_column("labels", datasets.ClassLabel(names=names)).with_format("torch")


def test_an_eval_set_that_lists_the_classes_in_another_order_is_refused(tmp_path):
    """Trainer compares ids: a correct model scored 0.19 on such a copy of a set it scored 0.96 on."""
    train = _class_labelled(pixel_dataset(10), ["a", "b", "c"])
    permuted = _class_labelled(pixel_dataset(10, seed=1), ["b", "c", "a"])
    with pytest.raises(LabelError, match=r"eval_dataset\['x'\] lists its classes as \['b', 'c', 'a'\], train_dataset "
                                         r"as \['a', 'b', 'c'\].*align_labels_with_mapping"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), train_dataset=train, eval_dataset={"x": permuted})
    build(make_args(tmp_path), tiny_vit(), tiny_resnet(), train_dataset=train,
          eval_dataset=_class_labelled(pixel_dataset(10, seed=1), ["a", "b", "c"]))


def test_the_class_names_of_a_label_column_that_a_callers_collator_reads_are_compared(tmp_path):
    """The image-classification tutorial keeps its ClassLabel in 'label' and builds 'labels' in its
    collate_fn: read from 'labels' alone, a student naming the classes in another order trained on
    and was exported with the wrong names, and its accuracy counted ids."""
    def collate_fn(items):
        return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                "labels": torch.tensor([int(i["label"]) for i in items])}

    data = _class_labelled(pixel_dataset(10), ["cat", "dog", "eel"]).rename_column("labels", "label")
    with pytest.raises(LabelError, match=r"the student's id2label \['dog', 'cat', 'eel'\] is not the dataset's class "
                                         r"order \['cat', 'dog', 'eel'\]"):
        build(make_args(tmp_path, losses=["ce"]), named(tiny_vit(), ["dog", "cat", "eel"]), train_dataset=data,
              data_collator=collate_fn)
    build(make_args(tmp_path, losses=["ce"]), named(tiny_vit(), ["cat", "dog", "eel"]), train_dataset=data,
          data_collator=collate_fn)


def test_a_student_with_another_number_of_classes_than_the_data_is_refused(tmp_path):
    """LABEL_k names hid it: 5 outputs for 10 classes failed inside the loss, 1000 trained and exported."""
    data = _class_labelled(pixel_dataset(10), ["a", "b", "c"])
    for num_labels in (2, 5):
        with pytest.raises(LabelError, match=f"the student predicts {num_labels} classes but train_dataset's "
                                             "labels have 3: build it with num_labels=3"):
            build(make_args(tmp_path, losses=["ce"]), tiny_vit(num_labels=num_labels), train_dataset=data)
    ready = build_distillation_model(tiny_vit(num_labels=5), None, make_args(tmp_path, losses=["ce"]))
    with pytest.raises(LabelError, match="the student predicts 5 classes but train_dataset's labels have 3"):
        build(make_args(tmp_path, losses=["ce"]), ready, train_dataset=data)


def test_labels_mapped_by_hf_rckas_transform_are_read_in_the_order_it_gives(tmp_path):
    """with_transforms maps labels by name to the run's order, while the features keep the data's
    ClassLabel: a 3-class subset of 10-class data was refused as 10 classes."""
    from hf_rcka.data.datasets import with_transforms

    def images(names, seed):
        rng = np.random.default_rng(seed)
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        pictures = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(6)]
        return datasets.Dataset.from_dict({"image": pictures, "label": [i % 3 for i in range(6)]}, features=features)

    to_tensor = lambda image: torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(
        2, 0, 1)  # the processor's [-1, 1]
    run_order = ["a", "b", "c"]
    train = with_transforms(images(["a", "b", "c"], 0), to_tensor, "image", "label", run_order)
    evaluation = with_transforms(images(["b", "c", "a"], 1), to_tensor, "image", "label", run_order)
    build(make_args(tmp_path, losses=["ce"]), named(tiny_vit(), run_order), train_dataset=train, eval_dataset=evaluation)
    subset = with_transforms(images([str(i) for i in range(10)], 2), to_tensor, "image", "label", ["0", "1", "2"])
    build(make_args(tmp_path, losses=["ce"]), tiny_vit(), train_dataset=subset)


@pytest.mark.parametrize("settings, expected", [({}, False), ({"logging_nan_inf_filter": True}, True)])
def test_the_loss_filter_that_reads_every_step_back_is_off_from_python_as_on_the_command_line(settings, expected):
    """Only the command line turned Trainer's filter off without fp16: from Python it read every
    micro-step's loss back from the device (2 syncs a step) and hid a NaN loss from the log."""
    args = DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none", **settings)
    assert args.logging_nan_inf_filter is expected


def _decoded_here(names):
    """Six images of ``names``' classes that hf_rcka's own transform decodes."""
    from hf_rcka.data.datasets import with_transforms

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    pictures = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(6)]
    table = datasets.Dataset.from_dict({"image": pictures, "label": [i % 3 for i in range(6)]}, features=features)
    return with_transforms(table, lambda image: torch.zeros(3, 16, 16), "image", "label", names)


def test_the_card_says_who_decoded_the_images(tmp_path):
    """Given ready pixel_values, the card still said 'Decode images as training did ... this model saw
    them over white and scaled': the caller's code had decoded them, perhaps with a plain convert."""
    names = ["a", "b", "c"]
    decoded_here = _decoded_here(names)
    train_pixels = pixel_dataset(10)
    part = torch.utils.data.random_split(decoded_here, [4, 2])[0]  # read through (a reviewer's case)
    for train, says in ((train_pixels, "it came to the trainer as ready `pixel_values`"),
                        (decoded_here, "Decode images as training did"), (part, "Decode images as training did")):
        trainer = build(make_args(tmp_path, losses=["ce"]), named(tiny_vit(), names), train_dataset=train)
        trainer.create_model_card()
        card = (tmp_path / "run" / "README.md").read_text()
        assert says in card and ("over white and scaled" in card) == (train is not train_pixels)


def test_an_evaluation_on_sets_decoded_here_and_ready_pixels_says_the_callers_decoding(tmp_path):
    """The card's decoding line is hf_rcka's own only when hf_rcka decoded every set it describes:
    an evaluation-only run on a dict of sets, one decoded here and one of ready pixel_values, was
    said to have been decoded as training decodes, which the caller's pixels may not have been."""
    names = ["a", "b", "c"]
    decoded_here = _decoded_here(names)
    for sets, says in (({"here": decoded_here, "pixels": pixel_dataset(10)}, "it came to the trainer as ready"),
                       ({"here": decoded_here, "again": decoded_here}, "Decode images as training did")):
        trainer = build(make_args(tmp_path, losses=["ce"]), named(tiny_vit(), names), train_dataset=None,
                        eval_dataset=sets)
        trainer.create_model_card()
        assert says in (tmp_path / "run" / "README.md").read_text()


def test_a_ready_distillation_models_teacher_is_realigned_by_name(tmp_path):
    """Built by hand, its permuted teacher was distilled as it was (teacher accuracy 0.0)."""
    teacher = named(tiny_resnet(), ["c", "a", "b"]).eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        raw = teacher(pixel_values=images).logits
    args = make_args(tmp_path, losses=["ce", "kd"])
    ready = build_distillation_model(named(tiny_vit(), ["a", "b", "c"]), teacher, args)
    build(args, ready)
    with torch.no_grad():  # close: channels_last
        torch.testing.assert_close(ready.in_student_order(ready.teacher(pixel_values=images).logits), raw[:, [1, 2, 0]])
    other = build_distillation_model(named(tiny_vit(), ["a", "b", "c"]), named(tiny_resnet(), ["x", "y", "z"]), args)
    with pytest.raises(LabelError, match="teacher_label_mapping: by_index"):
        build(args, other)
    build(args, other, teacher_label_mapping="by_index")


@pytest.mark.parametrize("losses, batch, refused", [
    (["ce", "rcka"], 2, "rcka"), (["ce", "feature_cka"], 2, "feature_cka"),
    (["ce", {"name": "rcka", "intra_weight": 0.0}], 2, None), (["ce", "rcka"], 3, None),
    (["ce", {"name": "feature_cka", "center": False}], 2, None),
])
def test_a_batch_too_small_for_a_relation_over_its_samples(tmp_path, losses, batch, refused):
    """At batch 2 the centred CKA over samples is exactly 1: rcka_intra logged 0.0 and nothing was distilled."""
    trainer = build(make_args(tmp_path, losses=losses, per_device_train_batch_size=batch, max_steps=1), tiny_vit(),
                    tiny_resnet())
    if refused:
        with pytest.raises(RecipeError, match=f"{refused} relates the samples of a batch, and a relation over 2 "
                                              "sample.* per_device_train_batch_size >= 3"):
            trainer.train()
    else:
        trainer.train()


def test_an_optimizer_that_leaves_out_the_projectors_is_refused(tmp_path):
    """AdamW(student.parameters()) left srd's projector at its random start, silently."""
    student = tiny_vit()
    args = make_args(tmp_path, losses=["ce", "srd"])
    with pytest.raises(ModelError, match=r"does not train 2 trainable weight\(s\).*losses.srd.projector"):
        build(args, student, tiny_resnet(), optimizers=(torch.optim.AdamW(student.parameters()), None))
    ready = build_distillation_model(tiny_vit(), tiny_resnet(), args)
    build(args, ready, optimizers=(torch.optim.AdamW(ready.parameters()), None))


def test_a_refused_trainer_leaves_the_teacher_as_it_was(tmp_path, caplog):
    """A typo refused the trainer after the teacher was realigned, frozen and cast to bfloat16; the
    corrected run then trained with a bfloat16 teacher it had not asked for, without a word. Feature
    pairs out of range and an optimizer without the projectors are refused once the model is built:
    they, too, left the teacher re-indexed, and the pairs frozen and cast (the optimizer's fix builds the
    DistillationModel, which freezes it anyway)."""
    teacher = named(tiny_resnet(), ["c", "a", "b"])
    student = named(tiny_resnet(), ["a", "b", "c"])  # HF ResNet: no activation checkpointing
    for wrong, error in (({"metric_for_best_model": "top5_acuracy"}, RecipeError),
                         ({"activation_checkpointing": True}, ModelError),
                         ({"losses": ["ce", "kd", "feature_cka"], "feature_pairs": [{"student_layer": 9, "teacher_layer": 1}]},
                          LayerIndexError)):
        with pytest.raises(error):
            build(make_args(tmp_path, teacher_dtype="bfloat16", **wrong), student, teacher)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in teacher.parameters()) and teacher.training
    assert teacher.config.id2label == {0: "c", 1: "a", 2: "b"} and not teacher._forward_hooks
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        raw = teacher.eval()(pixel_values=images).logits
    with pytest.raises(ModelError, match="does not train"):
        build(make_args(tmp_path, losses=["ce", "kd", "srd"]), student, teacher,
              optimizers=(torch.optim.AdamW(student.parameters()), None))
    assert teacher.config.id2label == {0: "c", 1: "a", 2: "b"}
    with torch.no_grad():
        torch.testing.assert_close(teacher(pixel_values=images).logits, raw)  # not re-indexed (channels_last now)
    teacher.to(torch.bfloat16)  # given in half precision on purpose, or reused: the run says so
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        build(make_args(tmp_path), student, teacher)
    assert "its weights are torch.bfloat16 and teacher_dtype is unset" in caplog.text


def test_what_the_trainer_cannot_use_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="does not call compute_loss_func"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet(), compute_loss_func=lambda *a, **k: 0)
    with pytest.raises(ModelError, match="does not take model_init"):
        build(make_args(tmp_path), None, tiny_resnet(), model_init=tiny_vit)
    with pytest.raises(ModelError, match="model must be a transformers image classifier .* got Linear"):
        build(make_args(tmp_path), torch.nn.Linear(3, 3), tiny_resnet())


def test_a_bare_timm_model_is_refused_with_a_way_to_build_one_without_the_hub(tmp_path):
    """``timm.create_model``'s model has no config: the fix said only from_pretrained('timm/<arch>'),
    which needs the Hub and downloads weights, where a notebook offline or a student from scratch
    wants timm's random weights in the wrapper; the call the message names must give a student the
    trainer takes."""
    import timm

    from hf_rcka.models.loading import load_image_classifier

    with pytest.raises(ModelError, match=r"load_image_classifier\('timm/<arch>', num_labels=N, from_scratch=True\)"):
        build(make_args(tmp_path), timm.create_model("resnet10t", num_classes=3), tiny_resnet())
    student = load_image_classifier("timm/resnet10t", num_labels=3, from_scratch=True, image_size=16)
    assert build(make_args(tmp_path), student, tiny_resnet()).model.student is student


def test_a_metric_for_best_model_the_evaluation_never_reports(tmp_path):
    """transformers raised KeyError only after the first evaluation."""
    with pytest.raises(RecipeError, match="metric_for_best_model 'acuracy' is not a metric the evaluation reports"):
        build(make_args(tmp_path, metric_for_best_model="acuracy"), tiny_vit(), tiny_resnet())
    build(make_args(tmp_path, metric_for_best_model="eval_rcka_intra_loss"), tiny_vit(), tiny_resnet())
    build(make_args(tmp_path, metric_for_best_model="anything"), tiny_vit(), tiny_resnet(),
          compute_metrics=lambda pred: {"anything": 1.0})
    several = {"x": pixel_dataset(5), "y": pixel_dataset(5, seed=1)}  # Trainer reports eval_x_accuracy...
    build(make_args(tmp_path, metric_for_best_model="eval_x_accuracy"), tiny_vit(), tiny_resnet(), eval_dataset=several)
    with pytest.raises(RecipeError, match="did you mean .*'eval_x_accuracy'"):
        build(make_args(tmp_path, metric_for_best_model="eval_accuracy"), tiny_vit(), tiny_resnet(),
              eval_dataset=several)
    # the command line's hints too: one check serves both
    inter_only = [{"name": "ce"}, {"name": "rcka", "intra_weight": 0}]
    with pytest.raises(RecipeError, match=r"\(with these options, loss 'rcka' reports only rcka_inter_loss\)"):
        build(make_args(tmp_path, losses=inter_only, metric_for_best_model="rcka_intra_loss"), tiny_vit(), tiny_resnet())
    with pytest.raises(RecipeError, match="top5_accuracy is reported only with more than 5 classes, and this "
                                          "dataset has 3: use eval_accuracy"):
        build(make_args(tmp_path, metric_for_best_model="eval_top5_accuracy"), tiny_vit(), tiny_resnet())


def test_predict_on_images_without_labels(tmp_path):
    trainer = build(make_args(tmp_path), tiny_vit(), tiny_resnet())
    unlabeled = pixel_dataset(6).remove_columns("labels")
    output = trainer.predict(unlabeled)
    with torch.no_grad():
        expected = trainer.distillation_model.student.eval()(pixel_values=unlabeled[:]["pixel_values"]).logits
    assert output.label_ids is None and torch.allclose(torch.as_tensor(output.predictions), expected, atol=1e-5)


def test_a_processor_of_another_size_than_the_data(tmp_path):
    """patch_cka failed at the first step, deep in to_fmap, naming neither the processor nor the data."""
    with pytest.raises(RecipeError, match="processing_class's output size 24x24, but the data's images are 16x16"):
        build(make_args(tmp_path, losses=["ce", "feature_cka"]), tiny_vit(), tiny_resnet(), processing_class=processor(24))


def test_one_number_for_every_channel_in_an_image_processor(tmp_path):
    from transformers import ViTImageProcessor

    from hf_rcka.modeling.teacher_inputs import input_stats

    single = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=0.5, image_std=0.25)
    assert input_stats(single) == input_stats(processor(16, 0.5, 0.25))


def test_a_named_teacher_paired_by_position_with_unnamed_classes_is_said(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        build(make_args(tmp_path), tiny_vit(), named(tiny_resnet(), ["cat", "dog", "eel"]))
    assert "paired with the data's by position, unchecked" in caplog.text


def test_a_teacher_that_only_numbers_its_classes_is_not_said_to_be_paired_unchecked(tmp_path, caplog):
    """LABEL_0, LABEL_1... name no class, so nothing could check them: the warning that names a
    teacher's classes to have them matched would only ask for names no one has."""
    with caplog.at_level("WARNING"):
        build(make_args(tmp_path), tiny_vit(), tiny_resnet())
    assert "paired with the data's by position, unchecked" not in caplog.text


def test_fp16_on_a_cpu_is_refused(tmp_path):
    """accelerate turned it off and trained in float32, bit for bit, with no word (the CLI refused it)."""
    with pytest.raises(RecipeError, match="fp16 needs a GPU"):
        build(make_args(tmp_path, fp16=True, losses=["ce"]), tiny_vit())


def test_fp16_with_use_cpu_on_a_machine_with_a_gpu_is_refused(monkeypatch):
    """use_cpu keeps the run on the CPU where a GPU is present, and there accelerate turns fp16 off
    as it does on a machine without one: float32 training, with no word."""
    import transformers.utils

    from hf_rcka.training_values import check_half_precision

    monkeypatch.setattr(transformers.utils, "is_torch_cuda_available", lambda: True)
    check_half_precision(SimpleNamespace(fp16=True, use_cpu=False, mixed_precision=None))  # the GPU's fp16
    with pytest.raises(RecipeError, match="fp16 needs a GPU"):
        check_half_precision(SimpleNamespace(fp16=True, use_cpu=True, mixed_precision=None))
    with pytest.raises(RecipeError, match="the launcher asks for fp16"):
        check_half_precision(SimpleNamespace(fp16=False, use_cpu=True, mixed_precision="fp16"))


def test_resuming_a_checkpoint_without_optimizer_state_is_refused(tmp_path):
    """A save_only_model checkpoint resumed with a fresh optimizer and the schedule from its start
    (learning rate 0.001 at step 3 instead of 0.0005), exit 0; the CLI refused it."""
    args = make_args(tmp_path, losses=["ce"], max_steps=4, save_strategy="steps", save_steps=2, save_only_model=True)
    build(args, tiny_vit()).train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists() and not list(checkpoint.glob("optimizer*"))
    with pytest.raises(ModelError, match="holds no optimizer and scheduler state.*save_only_model"):
        build(args, tiny_vit()).train(resume_from_checkpoint=str(checkpoint))


def test_activation_checkpointing_a_student_that_cannot_is_one_line_before_training(tmp_path):
    """HF ResNet has no checkpointing in transformers: a ValueError traceback after everything had loaded."""
    with pytest.raises(ModelError, match=r"activation_checkpointing: the student \(ResNetForImageClassification\)"):
        build(make_args(tmp_path, losses=["ce"], gradient_checkpointing=True), tiny_resnet())


def test_activation_checkpointing_trains_a_distilled_student_without_the_deprecated_entry_point(tmp_path):
    import warnings

    trainer = build(make_args(tmp_path, losses=["ce", "kd", "feature_cka"], activation_checkpointing=True, max_steps=1),
                    tiny_vit(), tiny_resnet(), teacher_processor=processor(24))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*only defines `gradient_checkpointing_enable`")
        trainer.train()
    student = trainer.distillation_model.student
    assert any(getattr(module, "gradient_checkpointing", False) for module in student.modules())


def _weights_the_trainer_creates(tmp_path, seed: int, teacher_seed: int) -> dict[str, torch.Tensor]:
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / f"run{seed}-{teacher_seed}"), seed=seed, report_to="none", use_cpu=True,
        teacher_accuracy_check="off", losses=[{"name": "ce"}, {"name": "fitnet"}, {"name": "srd"}],
        feature_pairs=[{"student_layer": -1, "teacher_layer": -2, "adapter": "patch_match"}],
    )
    trainer = DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(seed=teacher_seed), args=args,
                                  train_dataset=pixel_dataset(8), processing_class=processor(16),
                                  teacher_processor=processor(24))
    model = trainer.distillation_model
    return {**{f"adapters.{k}": v for k, v in model.adapters.state_dict().items()},
            **{f"losses.{k}": v for k, v in model.losses.state_dict().items() if v.is_floating_point()}}


def test_the_seed_decides_the_adapters_and_loss_weights_and_the_teacher_does_not(tmp_path):
    """The trainer makes these weights: a sweep over seeds must start them apart, and a teacher
    built from another random state must not move them (they were drawn from whatever state the
    caller's model building left)."""
    base = _weights_the_trainer_creates(tmp_path, seed=0, teacher_seed=1)
    assert any(k.startswith("adapters.") for k in base) and any("projector" in k for k in base)
    other_teacher = _weights_the_trainer_creates(tmp_path, seed=0, teacher_seed=7)
    other_seed = _weights_the_trainer_creates(tmp_path, seed=1, teacher_seed=1)
    assert all(torch.equal(base[k], other_teacher[k]) for k in base)
    assert all(not torch.equal(base[k], other_seed[k]) for k in base if "weight" in k)


def test_building_the_distillation_model_leaves_the_callers_random_state_alone(tmp_path):
    student, teacher = tiny_vit(), tiny_resnet()
    args = make_args(tmp_path, losses=[{"name": "ce"}, {"name": "srd"}])
    state = torch.random.get_rng_state()
    build_distillation_model(student, teacher, args, None, None)
    assert torch.equal(state, torch.random.get_rng_state())


def test_the_losses_that_read_trained_adapters_or_their_own_state_can_be_left_out(tmp_path):
    args = make_args(tmp_path, losses=[{"name": "ce"}, {"name": "rcka"}, {"name": "fitnet"},
                                       {"name": "kernel_transfer", "weight": 0.04}],
                     feature_pairs=[{"student_layer": -1, "teacher_layer": -2, "adapter": "patch_match"}])
    model = build_distillation_model(tiny_vit(), tiny_resnet(), args, None, None).eval()
    assert model.leave_out_fresh_losses() == ["fitnet", "kernel_transfer"]
    batch = pixel_dataset(6)
    with torch.no_grad():
        output = model(pixel_values=torch.stack([batch[i]["pixel_values"] for i in range(6)]),
                       labels=torch.tensor([batch[i]["labels"] for i in range(6)]))
    assert set(output.loss_terms) == {"ce", "rcka_intra", "rcka_inter"}
    assert float(output.loss) == pytest.approx(sum(float(v) for v in output.loss_terms.values()))
    # when every loss is such, they are kept (a loss needs a term), and named for the caller to say so
    only = build_distillation_model(tiny_vit(), tiny_resnet(), make_args(tmp_path, losses=[{"name": "srd"}]), None, None)
    assert only.leave_out_fresh_losses() == ["srd"] and not only.left_out


def test_an_evaluation_only_trainer_takes_no_evaluation_image_for_a_training_image(tmp_path):
    """Without a train_dataset, nothing is planned at a training size: had the first evaluation item
    stood for the training images, a CNN evaluated at 24 px (as timm's test_input_size does) would
    be refused as data of another size than its processor's 16 px."""
    trainer = build(make_args(tmp_path, losses=["ce", "feature_cka"]), tiny_resnet(), tiny_resnet(),
                    train_dataset=None, eval_dataset=pixel_dataset(5, size=24))
    assert "eval_ce_loss" in trainer.evaluate()


def test_a_trainer_that_only_evaluates_a_student_leaves_out_losses_of_fresh_weights(tmp_path, caplog):
    """Built in Python to evaluate a saved student, it reported eval_srd_loss and eval_loss through a
    freshly initialised projector (3.78 against the training trainer's 3.25 on the same weights)."""
    args = make_args(tmp_path, losses=["ce", "srd"])
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer = build(args, tiny_vit(), tiny_resnet(), train_dataset=None, eval_dataset=pixel_dataset(10, seed=1))
    assert "evaluation only: ['srd'] not evaluated" in caplog.text
    metrics = trainer.evaluate()
    assert "eval_srd_loss" not in metrics and metrics["eval_loss"] == pytest.approx(metrics["eval_ce_loss"])
    trainer.train_dataset = pixel_dataset(10)  # given later, the left-out loss would not train
    with pytest.raises(RecipeError, match=r"built without a train_dataset, to evaluate, so losses \['srd'\]"):
        trainer.train()
    trained = build(make_args(tmp_path, losses=["ce", "srd"]), tiny_vit(), tiny_resnet(),
                    eval_dataset=pixel_dataset(10, seed=1))
    assert "eval_srd_loss" in trained.evaluate()  # a training trainer's projector is its own, evaluated


def test_the_card_of_a_run_with_named_evaluation_sets_and_a_teacher(tmp_path):
    """The card measured the teacher over the dict of sets as if it were one: KeyError 0 at
    create_model_card (and at push_to_hub, which then uploaded nothing), after training."""
    trainer = build(make_args(tmp_path, max_steps=1, eval_strategy="steps", eval_steps=1), named(tiny_vit(), ["a", "b", "c"]),
                    named(tiny_resnet(), ["a", "b", "c"]), eval_dataset={"x": pixel_dataset(10, seed=1), "y": pixel_dataset(7, seed=2)})
    trainer.train()
    trainer.create_model_card()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "eval_x_accuracy" in card and "eval_y_accuracy" in card and trainer.card_facts.teacher_accuracy is None



def test_named_evaluation_sets_evaluated_after_training_reach_the_card(tmp_path, caplog):
    """trainer.evaluate() of the trainer's own named sets was taken for another set's evaluation
    (each one is passed by its name): a warning said so, and the card read "No evaluation was run"."""
    sets = {"x": pixel_dataset(10, seed=1), "y": pixel_dataset(7, seed=2)}
    trainer = build(make_args(tmp_path, max_steps=1), named(tiny_vit(), ["a", "b", "c"]),
                    named(tiny_resnet(), ["a", "b", "c"]), eval_dataset=sets)
    trainer.train()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        metrics = trainer.evaluate()
    assert "the model card leaves these numbers out" not in caplog.text
    trainer.create_model_card()
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"| eval_x_accuracy | {metrics['eval_x_accuracy']:.4f} |" in card and "eval_y_accuracy" in card
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer.evaluate(pixel_dataset(12, seed=5))  # another set is still said
    assert "the model card leaves these numbers out" in caplog.text


def test_another_set_evaluated_under_the_eval_prefix_stays_off_the_card(tmp_path, caplog):
    """trainer.evaluate(test_set) after training put the test set's accuracy on the card beside the
    teacher's on the validation set, as "same images" of the validation split."""
    trainer = build(make_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2),
                    named(tiny_vit(), ["a", "b", "c"]), named(tiny_resnet(), ["a", "b", "c"]),
                    eval_dataset=pixel_dataset(10, seed=1))
    trainer.predict(pixel_dataset(12, seed=5), metric_key_prefix="eval")  # logs nothing, marks nothing
    trainer.train()
    own = trainer.state.log_history[-2]["eval_accuracy"]  # the evaluation at step 2, then the train summary
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        other = trainer.evaluate(pixel_dataset(12, seed=5))["eval_accuracy"]
    assert other != own and "the model card leaves these numbers out" in caplog.text
    trainer.create_model_card()
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"| eval_accuracy | {own:.4f} |" in card and f"| eval_accuracy | {other:.4f} |" not in card
    assert trainer.evaluate()["eval_accuracy"] == own  # the trainer's own set again: on the card as before
    teacher_on_own = trainer.card_facts.teacher_accuracy
    trainer.predict(pixel_dataset(7, seed=6), metric_key_prefix="eval")  # its teacher accuracy is not the card's
    assert trainer.card_facts.teacher_accuracy == teacher_on_own
    trainer.args.card_license = "cc-by-nc-4.0"  # the recipe key, from Python too
    trainer.create_model_card()
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"| eval_accuracy | {own:.4f} |" in card and "license: cc-by-nc-4.0" in card


def test_another_set_evaluated_after_a_training_that_raised_stays_off_the_card(tmp_path, caplog):
    """Trainer leaves is_in_train set when train() raises: evaluate(test_set) then counted as the
    trainer's own evaluation, and its numbers reached the card."""
    from transformers import TrainerCallback

    class StopAtFirstStep(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            raise RuntimeError("stopped (simulated)")

    trainer = build(make_args(tmp_path, max_steps=2), named(tiny_vit(), ["a", "b", "c"]),
                    named(tiny_resnet(), ["a", "b", "c"]), eval_dataset=pixel_dataset(10, seed=1))
    trainer.add_callback(StopAtFirstStep())
    with pytest.raises(RuntimeError, match="simulated"):
        trainer.train()
    assert trainer.is_in_train, "transformers' behaviour this test stands on"
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        other = trainer.evaluate(pixel_dataset(12, seed=5))["eval_accuracy"]
    assert "the model card leaves these numbers out" in caplog.text
    trainer.create_model_card()
    assert f"| eval_accuracy | {other:.4f} |" not in (tmp_path / "run" / "README.md").read_text()


def test_a_card_without_a_saved_image_processor_says_so(tmp_path, caplog):
    """Without processing_class no preprocessor_config.json is saved, and the card's snippet
    (AutoImageProcessor.from_pretrained on the folder) raised OSError, unsaid."""
    student = named(tiny_vit(), ["a", "b", "c"])
    trainer = DistillationTrainer(model=student, teacher=None, args=make_args(tmp_path, max_steps=1, losses=["ce"]),
                                  train_dataset=pixel_dataset(10))
    trainer.train()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer.create_model_card()
    assert "no processing_class was given" in caplog.text
    card = (tmp_path / "run" / "README.md").read_text()
    assert "This folder holds no image processor (`preprocessor_config.json`)" in card
    given = build(make_args(tmp_path, output_dir=str(tmp_path / "given"), max_steps=1, losses=["ce"]),
                  named(tiny_vit(), ["a", "b", "c"]))
    given.train()
    given.create_model_card()
    assert "holds no image processor" not in (tmp_path / "given" / "README.md").read_text()


def test_the_cards_peak_learning_rate_is_the_highest_a_step_trained_at(tmp_path, caplog):
    """A warm-up of 100 steps in a 4-step run: the card said "peak learning rate 0.003", a rate no
    step trained at."""
    trainer = build(make_args(tmp_path, max_steps=4, learning_rate=3e-3, warmup_steps=100, logging_steps=1,
                              losses=["ce"]), named(tiny_vit(), ["a", "b", "c"]))
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer.train()
    assert "a warm-up of 100 steps in a run of 4 never reaches the learning rate 0.003" in caplog.text  # as it starts
    trainer.create_model_card()
    highest = max(entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry)
    assert highest == pytest.approx(3e-3 * 3 / 100)
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"peak learning rate {highest:g} (its warm-up to 0.003 was longer than the run)" in card


def test_the_cards_peak_rate_under_a_callers_own_scheduler_is_the_highest_a_step_ran_at(tmp_path):
    """A caller's LinearLR warm-up (no LambdaLR to replay) logged every 50 steps: the card said the
    base rate 0.01, which no step reached."""
    student = named(tiny_vit(), ["a", "b", "c"])
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.01)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=100)
    trainer = build(make_args(tmp_path, max_steps=3, logging_steps=50, losses=["ce"]), student,
                    optimizers=(optimizer, schedule))
    trainer.train()
    reached, scheduled = trainer._peak_learning_rate()
    assert reached == pytest.approx(0.01 * (0.01 + 2 * 0.99 / 100)) and scheduled == pytest.approx(0.01)


def test_a_python_runs_card_claims_only_what_it_knows_and_takes_trainers_card_arguments(tmp_path, caplog):
    """A student given in Python was called "random (trained from scratch)" on its card (it may be a
    fine-tuned checkpoint), the card pointed at a distill_config.yaml only the command line writes,
    and finetuned_from, tags and language were dropped without a word."""
    trainer = build(make_args(tmp_path, max_steps=1), named(tiny_vit(), ["a", "b", "c"]), named(tiny_resnet(), ["a", "b", "c"]))
    trainer.train()
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert "- Student initialisation: not recorded\n" in card.text and "random" not in card.text
    assert "distill_config.yaml" not in card.text and card.data.base_model is None
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer.create_model_card(finetuned_from="acme/vit-start", tags=["pets"], language="en", tasks="x")
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert card.data.base_model == "acme/vit-start" and "the Hub checkpoint `acme/vit-start`" in card.text
    assert card.data.tags[-1] == "pets" and "knowledge-distillation" in card.data.tags and card.data.language == "en"
    assert "model card: tasks not used" in caplog.text


def test_evaluation_images_of_the_training_height_and_another_width_are_refused():
    """Only square sizes were tried: a check of the height alone would pass 16x24 images to feature
    pairs planned for 16x16 (their grids and adapters), to fail after training or compare other grids."""
    from hf_rcka.trainer.given_data import check_image_sizes

    def items(height, width):
        return [{"pixel_values": torch.zeros(3, height, width), "labels": 0}]

    for height, width in ((16, 24), (24, 16)):
        with pytest.raises(DataError, match=f"eval_dataset: its images are {height}x{width}, the training images the "
                                            "trainer was built on 16x16"):
            check_image_sizes(items(height, width), "eval_dataset", (16, 16))
    check_image_sizes(items(16, 24), "eval_dataset", (16, 24))


def test_evaluation_images_of_another_size_than_the_training_images_are_refused_before_training(tmp_path):
    """The feature pairs are planned at the training size: an eval set at another size trained to
    the end and failed at the evaluation (a feature map that no longer fits its adapter)."""
    student, teacher = tiny_vit(), tiny_resnet()
    args = make_args(tmp_path, losses=["ce", "rcka", "patch_cka"])
    with pytest.raises(DataError, match=r"eval_dataset\['big'\]: its images are 24x24, the training images the trainer was built on 16x16"):
        build(args, student, teacher, eval_dataset={"big": pixel_dataset(5, size=24)})
    trainer = build(args, student, teacher, eval_dataset=pixel_dataset(5))
    with pytest.raises(DataError, match="test_dataset: its images are 24x24"):
        trainer.predict(pixel_dataset(5, size=24))
    cnn = build(make_args(tmp_path, losses=["ce", "feature_cka"]), tiny_resnet(), tiny_resnet())
    assert cnn.predict(pixel_dataset(5, size=24).remove_columns("labels")).predictions.shape == (5, 3)  # no loss read
    for losses in (["ce"], ["ce", "kd"]):  # nothing planned at a size: CNNs take any (timm's test_input_size)
        other = build(make_args(tmp_path, losses=losses), tiny_resnet(), tiny_resnet() if "kd" in losses else None,
                      eval_dataset=pixel_dataset(5, size=24))
        assert "eval_accuracy" in other.evaluate()


def test_a_ready_distillation_model_refuses_the_settings_of_args_it_would_ignore(tmp_path):
    """Its losses' weights and options, its pairs and its teacher's precision are its own: args
    asking for others trained with the model's, without a word (fitnet at weight 1, not 7)."""
    built = make_args(tmp_path, losses=["ce", "fitnet"],
                      feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "adapter": "patch_match"}])
    ready = build_distillation_model(tiny_vit(), tiny_resnet(), built)
    build(built, ready)  # the args it was built from
    build(make_args(tmp_path), ready)  # args that set none of it
    for wrong, said in (({"losses": ["ce", {"name": "fitnet", "weight": 7.0}]}, "fitnet weight 7.0 (the model's: 1.0)"),
                        ({"label_smoothing_factor": 0.3}, "ce label_smoothing 0.3 (the model's: None)"),
                        ({"feature_pairs": [{"student_layer": 1, "teacher_layer": 2}]}, "feature_pairs"),
                        ({"teacher_dtype": "bfloat16"}, "teacher_dtype torch.bfloat16 (the model's: None)"),
                        ({"teacher_channels_last": False}, "teacher_channels_last False (the model's: True)")):
        with pytest.raises(RecipeError, match=re.escape(said) + ".*which the ready DistillationModel given would ignore"):
            build(make_args(tmp_path, **wrong), ready)


def test_a_teacher_without_its_processor_gets_its_own_timm_config_or_a_warning(tmp_path, caplog):
    """teacher_processor=None gave the teacher the student's inputs as they were, unsaid: a timm
    teacher (whose config carries its data config) saw the student's normalisation and size."""
    from hf_rcka.models.loading import load_image_classifier

    timm_teacher = load_image_classifier("timm/resnet10t", id2label={0: "a", 1: "b", 2: "c"}, from_scratch=True,
                                         image_size=24)
    trainer = build(make_args(tmp_path), named(tiny_vit(), ["a", "b", "c"]), timm_teacher)
    transform = trainer.distillation_model.teacher_transform
    assert transform is not None and transform.teacher.size == (24, 24)
    assert transform.teacher.mean == pytest.approx((0.485, 0.456, 0.406))
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        build(make_args(tmp_path), named(tiny_vit(), ["a", "b", "c"]), named(tiny_resnet(), ["a", "b", "c"]))
    assert "teacher_processor not given, so the teacher gets the student's inputs as they are" in caplog.text


def test_hyperparameter_search_is_refused_with_what_to_do_instead(tmp_path):
    """Trainer's own message asked for a model_init, which DistillationTrainer refuses."""
    trainer = build(make_args(tmp_path), named(tiny_vit(), ["a", "b", "c"]), named(tiny_resnet(), ["a", "b", "c"]))
    with pytest.raises(ModelError, match="does not run hyperparameter_search.*new student and DistillationTrainer per trial"):
        trainer.hyperparameter_search(n_trials=1)


def test_a_timm_teacher_whose_config_records_another_size_than_it_takes_is_not_resized_to_it(tmp_path):
    """Its config's data config said 224 px for a ViT built at 16: the teacher's inputs were resized
    to 224 and the first step failed (no teacher_processor given); the student's inputs it takes."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    config = TimmWrapperConfig(architecture="vit_tiny_patch16_224", num_labels=3,
                               model_args={"img_size": 16, "patch_size": 4, "depth": 1},
                               pretrained_cfg={"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    teacher = TimmWrapperForImageClassification(config)
    teacher.config.id2label, teacher.config.label2id = {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    trainer = build(make_args(tmp_path, max_steps=1), named(tiny_vit(), ["a", "b", "c"]), teacher)
    assert trainer.distillation_model.teacher_transform is None
    trainer.train()


def test_a_datasetdict_or_a_single_short_batch_does_not_train_zero_steps(tmp_path):
    """A DatasetDict's length is its number of splits: its 'last batch' of 2 was too short for rcka,
    dropped, and the run trained 0 steps, saved the untrained student and ended well."""
    args = make_args(tmp_path, max_steps=5, losses=[{"name": "ce"}, {"name": "rcka"}])
    whole = pixel_dataset(10).train_test_split(test_size=0.3, seed=0)
    with pytest.raises(DataError, match=r"train_dataset is a dict of 2 splits .*dataset\['train'\]"):
        build(args, tiny_vit(), tiny_resnet(), train_dataset=whole)
    trainer = build(args, tiny_vit(), tiny_resnet(), train_dataset=pixel_dataset(2))
    with pytest.raises(DataError, match="gives each process 2 image\\(s\\), one batch, and that is too few for rcka"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_timm_teacher_without_the_students_processor_is_refused(tmp_path):
    """Its data config (24 px, ImageNet's statistics) was announced as used and silently dropped."""
    from hf_rcka.models.loading import load_image_classifier

    teacher = load_image_classifier("timm/resnet10t", id2label={0: "0", 1: "1", 2: "2"}, from_scratch=True,
                                    image_size=24)
    with pytest.raises(RecipeError, match="without processing_class .* pass processing_class"):
        build(make_args(tmp_path, losses=[{"name": "kd"}]), tiny_vit(), teacher, processing_class=None)


def test_evaluated_labels_the_student_has_no_class_for_are_refused(tmp_path):
    """-1 (a test split's "no label") and ids past the head scored as misses: accuracy 0.0, no error."""
    trainer = build(make_args(tmp_path, losses=[{"name": "kd"}]), tiny_vit(), tiny_resnet())
    unlabelled = pixel_dataset(7).map(lambda row: {"labels": -1})
    with pytest.raises(DataError, match=r"7 evaluated label\(s\) \(-1\) are no class id .*remove_columns"):
        trainer.predict(unlabelled)
    assert "test_accuracy" not in trainer.predict(unlabelled.remove_columns("labels")).metrics


def test_labels_the_student_has_no_class_for_are_refused_before_the_losses_read_them(tmp_path):
    """With ce among the losses (the default), a test split's -1 and a training label past the head
    ended in 'IndexError: Target -1 is out of bounds' (a device-side assert on a GPU), a traceback
    from inside the forward, before the evaluation's own check of the labels could say what they were."""
    trainer = build(make_args(tmp_path, max_steps=1), tiny_vit(), tiny_resnet(), eval_dataset=pixel_dataset(5))
    unlabelled = pixel_dataset(7).map(lambda row: {"labels": -1})
    refused = r"5 label\(s\) of a batch \(-1\) are no class id of the student's 3 classes: .*remove_columns"
    with pytest.raises(DataError, match=refused):
        trainer.predict(unlabelled)
    with pytest.raises(DataError, match=refused):
        trainer.evaluate(unlabelled, metric_key_prefix="test")
    assert trainer.predict(unlabelled.remove_columns("labels")).predictions.shape == (7, 3)
    trainer = build(make_args(tmp_path, max_steps=1), tiny_vit(), train_dataset=pixel_dataset(10).map(
        lambda row: {"labels": 3}))
    past_the_head = r"5 label\(s\) of a batch \(3\) are no class id of the student's 3 classes: give the student a head"
    with pytest.raises(DataError, match=past_the_head):
        trainer.train()
    assert trainer.state.global_step == 0
    # Mixup/CutMix reads them too (timm's one_hot), with losses that read no labels: a RuntimeError
    from hf_rcka.arguments import DataArguments

    mixing = build(make_args(tmp_path, losses=["kd"], max_steps=1), tiny_vit(), tiny_resnet(),
                   train_dataset=pixel_dataset(10).map(lambda row: {"labels": 3}),
                   augmentation=DataArguments(dataset_name="builtin:digits", mixup=0.8))
    with pytest.raises(DataError, match=past_the_head):
        mixing.train()


def test_labels_from_a_callers_collator_are_checked_too(tmp_path):
    """A torchvision dataset of 10 classes collated by the caller for a 3-class student ended in
    'IndexError: Target 7 is out of bounds' from ce: only hf_rcka's own collator was checked."""
    class Folder(torch.utils.data.Dataset):  # ImageFolder-like: (image, target) items
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.zeros(3, 16, 16), 7

    def collate(items):
        return {"pixel_values": torch.stack([x for x, _ in items]), "labels": torch.tensor([y for _, y in items])}

    trainer = build(make_args(tmp_path, max_steps=1), tiny_vit(), train_dataset=Folder(), data_collator=collate)
    # the caller's collator stays theirs: one wrapped in its place took no setting changed on it since
    assert trainer.data_collator is collate
    with pytest.raises(DataError, match=r"5 label\(s\) of a batch \(7\) are no class id of the student's 3 classes"):
        trainer.train()
    assert trainer.state.global_step == 0 and trainer.data_collator is collate



def test_class_ids_of_another_integer_type_from_a_callers_collator_train(tmp_path):
    """int32 (or uint8) class ids are class ids: a caller's collator that made them stopped the first
    step inside cross-entropy ("expected scalar type Long"), a traceback after the models were built."""
    def collate(items):
        return {"pixel_values": torch.stack([item["pixel_values"] for item in items]),
                "labels": torch.tensor([item["labels"] for item in items], dtype=torch.int32)}

    trainer = build(make_args(tmp_path, max_steps=1), tiny_vit(), tiny_resnet(), data_collator=collate)
    trainer.train()
    assert trainer.state.global_step == 1


def test_a_batch_of_unreadable_images_alone_passes_the_label_check():
    """Every row of the batch a stand-in for an unreadable image (IGNORE_INDEX, which the losses
    leave out): nothing to check, where a min over no labels is a ValueError (zero-size array)."""
    from hf_rcka.losses import IGNORE_INDEX
    from hf_rcka.trainer.metrics import CheckedClassIds

    batch = {"pixel_values": torch.zeros(2, 3, 16, 16), "labels": torch.tensor([IGNORE_INDEX, IGNORE_INDEX])}
    assert CheckedClassIds(lambda items: batch, 3)([{}, {}]) is batch


def test_a_test_set_with_a_label_column_says_that_it_is_not_scored(tmp_path, caplog):
    """Its 'label' column was dropped by the collator: no accuracy, no loss, not a word (a Hub test
    split's -1s are predicted that way, so it is said, not refused)."""
    trainer = build(make_args(tmp_path), tiny_vit())
    with caplog.at_level("WARNING", logger="hf_rcka"):
        output = trainer.predict(pixel_dataset(7).rename_column("labels", "label"))
    assert output.predictions.shape == (7, 3) and "test_accuracy" not in output.metrics
    assert "test_dataset: its label column is not read, so predict() reports predictions and no accuracy" in caplog.text
    caplog.clear()  # CIFAR-100's test split names its labels fine_label and coarse_label
    with caplog.at_level("WARNING", logger="hf_rcka"):
        trainer.predict(pixel_dataset(7).rename_column("labels", "fine_label"))
    assert "test_dataset: its fine_label column is not read, so predict() reports predictions" in caplog.text


def test_items_that_are_tuples_get_one_clear_line(tmp_path):
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3, 16, 16), 0

    with pytest.raises(DataError, match=r"its items are tuples \(2 values\), not dicts"):
        build(make_args(tmp_path), tiny_vit(), train_dataset=Pairs())

    def collate(items):  # a caller's collator builds the batch from them
        return {"pixel_values": torch.stack([x for x, _ in items]), "labels": torch.tensor([y for _, y in items])}

    build(make_args(tmp_path), tiny_vit(), train_dataset=Pairs(), data_collator=collate)


def test_feature_pairs_read_only_by_a_loss_of_weight_zero_are_said_to_be_ignored(caplog):
    """A feature loss of weight 0 is not computed, so the pairs beside it are dropped when the model is
    built ("DistillationTrainingArguments said so"): the arguments must say so then, or the pairs go
    without a word."""
    pairs = [{"student_layer": 1, "teacher_layer": 1}]
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none", feature_pairs=pairs,
                                      losses=["ce", {"name": "feature_cka", "weight": 0}])
    assert caplog.text.count("feature_pairs are set but no loss computed reads hidden states") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none", feature_pairs=pairs,
                                      losses=["ce", {"name": "feature_cka", "weight": 0.5}])
    assert "feature_pairs" not in caplog.text


def test_feature_pairs_no_loss_reads_are_said_once_when_the_arguments_are_built(tmp_path, caplog):
    pairs = [{"student_layer": 1, "teacher_layer": 1}]
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        args = make_args(tmp_path, losses=["ce", "kd"], feature_pairs=pairs)
    assert caplog.text.count("feature_pairs are set but no loss computed reads hidden states") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer = build(args, tiny_vit(), tiny_vit())
    assert "feature_pairs" not in caplog.text  # not a second time once the models are there
    assert len(trainer.model.adapters) == 0 and trainer.model.feature_pairs == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        make_args(tmp_path, losses=["ce", {"name": "feature_cka", "weight": 0.0}], feature_pairs=pairs)
    assert caplog.text.count("feature_pairs are set") == 1  # a feature loss at weight 0 is not computed
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        make_args(tmp_path, losses=["ce", "feature_cka"], feature_pairs=pairs)
        make_args(tmp_path, losses=["ce", "kd"], feature_pairs="auto")
    assert "feature_pairs are set" not in caplog.text


def test_trainers_default_best_metric_with_several_evaluation_sets_is_named_as_such(tmp_path):
    """The error named a metric 'loss' the caller never set: Trainer's default."""
    args = make_args(tmp_path, load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps",
                     eval_steps=2, save_steps=2)
    with pytest.raises(RecipeError, match=r"'loss' \(Trainer's default with load_best_model_at_end: with several "
                                          r"evaluation sets, name one set's metric\).*did you mean 'v_loss'"):
        build(args, tiny_vit(), tiny_resnet(), eval_dataset={"v": pixel_dataset(5), "t": pixel_dataset(5)})


# rows labelled IGNORE_INDEX (stand-ins for unreadable images) are not counted in n
def test_the_teacher_check_counts_only_the_labelled_rows():
    from hf_rcka.losses import IGNORE_INDEX
    from hf_rcka.trainer.teacher_check import check_teacher_accuracy

    class _OneWrongAnswer:  # wrong on its one counted image, of 2 classes
        student = SimpleNamespace(config=SimpleNamespace(num_labels=2))

        @staticmethod
        def teacher_accuracy(pixel_values, labels):
            return 0.0

    labels = torch.tensor([0] + [IGNORE_INDEX] * 9)
    # one counted image cannot tell any teacher from chance: not refused (counting the 9 stand-ins, it was)
    assert check_teacher_accuracy(_OneWrongAnswer, torch.zeros(10, 3, 4, 4), labels, "error") == 0.0


def test_a_teacher_exactly_two_standard_errors_above_chance_is_near_chance():
    """The check refuses a teacher *within* two standard errors of chance, the bound included: on the
    256 images it scores, 144 right of 2 classes is 0.5625, exactly 0.5 + 2 * sqrt(0.25 / 256); a
    strict comparison let it train. 145 right is above the bound."""
    from hf_rcka.trainer.teacher_check import CHECK_IMAGES, judge_teacher

    def scoring(right):
        class _Teacher:
            student = SimpleNamespace(config=SimpleNamespace(num_labels=2))

            @staticmethod
            def teacher_accuracy(pixel_values, labels):
                return right / CHECK_IMAGES

        return _Teacher

    batch = [(torch.zeros(CHECK_IMAGES, 3, 4, 4), torch.zeros(CHECK_IMAGES, dtype=torch.long))]
    with pytest.raises(TeacherNearChance, match=r"on 256 evaluation images drawn from the set is 0\.562"):
        judge_teacher(scoring(144), batch, "error")
    assert judge_teacher(scoring(145), batch, "error") == pytest.approx(145 / 256)


def test_a_teacher_no_loss_reads_is_not_checked(tmp_path):
    """A run whose losses never run the teacher (ce alone, a teacher passed all the same) has nothing to
    check: scoring it cost a teacher pass over 256 images, and a teacher at chance stopped a run it
    could not harm."""
    teacher = _answering_one_class(named(tiny_resnet(), ["a", "b", "c"]), 0)
    runs = []
    teacher.register_forward_hook(lambda *_: runs.append(1) and None)
    trainer = build(make_args(tmp_path, losses=["ce"], teacher_accuracy_check="error", per_device_eval_batch_size=20),
                    named(tiny_vit(), ["a", "b", "c"]), teacher,
                    eval_dataset=pixel_dataset(60, seed=3).filter(lambda row: row["labels"] != 0))
    assert trainer.distillation_model.teacher is not None and not trainer.distillation_model.needs_teacher
    assert trainer.check_teacher() is None and not runs


def test_a_batch_with_no_counted_image_does_not_hide_a_teacher_at_chance():
    """A batch of stand-ins only (unreadable images, data-parallel repeats) has a NaN accuracy: added
    in, it made the whole check NaN, which no threshold refuses."""
    from hf_rcka.losses import IGNORE_INDEX
    from hf_rcka.trainer.teacher_check import judge_teacher

    class _Wrong(_PerfectTeacher):
        @staticmethod
        def teacher_accuracy(pixel_values, labels):
            return 0.0 if int((labels != IGNORE_INDEX).sum()) else float("nan")

    empty = torch.full((8,), IGNORE_INDEX, dtype=torch.long)
    batches = [(torch.zeros(40, 3, 4, 4), torch.zeros(40, dtype=torch.long)), (torch.zeros(8, 3, 4, 4), empty)]
    with pytest.raises(TeacherNearChance, match="on 40 evaluation images"):
        judge_teacher(_Wrong, batches, "error")


def test_the_teacher_check_rounds_its_batches_up_to_at_least_256_images(tmp_path):
    """256 images at 100 a batch is 3 batches (rounded down, 2: 200 images; and a batch of 300 scored none)."""
    trainer = build(make_args(tmp_path, teacher_accuracy_check="error", per_device_eval_batch_size=100), tiny_vit(),
                    tiny_resnet(), eval_dataset=pixel_dataset(300, seed=1))
    seen = []
    trainer.distillation_model.teacher_accuracy = lambda pixel_values, labels: seen.append(len(labels)) or 1.0
    assert trainer.check_teacher() == 1.0 and seen == [100, 100, 100]


def test_the_label_check_reads_no_labels_off_the_host_and_names_a_minus_one_among_others():
    """A collator that moved its labels to the device is not checked (reading them back is a device
    sync every batch, and ``.numpy()`` fails on a CUDA tensor); and labels with both a -1 and an id
    past the head say what -1 means, not only that the head is too small."""
    from hf_rcka.errors import DataError
    from hf_rcka.trainer.metrics import CheckedClassIds

    moved = {"labels": torch.tensor([0, 7], device="meta")}
    assert CheckedClassIds(lambda items: moved, 3)([{}, {}]) is moved
    mixed = {"labels": torch.tensor([-1, 7, 0])}
    with pytest.raises(DataError, match=r"2 label\(s\) of a batch \(-1, 7\) .*-1 marks an unlabelled image"):
        CheckedClassIds(lambda items: mixed, 3)([{}, {}, {}])


def test_a_single_tag_given_as_text_is_one_tag_on_the_card(tmp_path):
    """Trainer's create_model_card takes tags as a string or a list: tags="pets" was read letter by
    letter, and the card's metadata listed p, e, t and s as four tags."""
    trainer = build(make_args(tmp_path), named(tiny_vit(), ["a", "b", "c"]), named(tiny_resnet(), ["a", "b", "c"]))
    trainer.create_model_card(tags="pets")
    tags = ModelCard.load(tmp_path / "run" / "README.md").data.tags
    assert tags[-1] == "pets" and "p" not in tags and "knowledge-distillation" in tags


def test_a_teacher_no_loss_reads_is_named_nowhere_on_the_card(tmp_path):
    """A teacher given beside losses that read none of it (a baseline run of ce alone) is not run,
    and the card is a supervised run's: it said "distilled from the teacher" and tagged the model
    knowledge-distillation, though no image went through the teacher."""
    trainer = build(make_args(tmp_path, losses=["ce"]), named(tiny_vit(), ["a", "b", "c"]),
                    named(tiny_resnet(), ["a", "b", "c"]), teacher_name="acme/resnet-teacher")
    assert trainer.teacher_name is None
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert "none (supervised training)" in card.text and "acme/resnet-teacher" not in card.text
    assert "knowledge-distillation" not in card.data.tags


def test_a_set_evaluated_by_a_trainer_without_an_evaluation_set_of_its_own_reaches_the_card(tmp_path, caplog):
    """A trainer built without eval_dataset has no set of its own for evaluate(test_set) to be
    another than: its numbers are the only ones the run has, and belong on the card without a warning
    that they were left out."""
    trainer = build(make_args(tmp_path, max_steps=1), named(tiny_vit(), ["a", "b", "c"]),
                    named(tiny_resnet(), ["a", "b", "c"]))
    trainer.train()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        accuracy = trainer.evaluate(pixel_dataset(12, seed=5))["eval_accuracy"]
    assert "the model card leaves these numbers out" not in caplog.text
    trainer.create_model_card()
    assert f"| eval_accuracy | {accuracy:.4f} |" in (tmp_path / "run" / "README.md").read_text()


def test_without_load_best_model_at_end_the_card_shows_the_last_steps_metrics_not_the_best_checkpoints(tmp_path):
    """metric_for_best_model alone names a best checkpoint, but the exported weights are the last
    step's: the card showed the best checkpoint's evaluation as the model's."""
    trainer = build(make_args(tmp_path), named(tiny_vit(), ["a", "b", "c"]), named(tiny_resnet(), ["a", "b", "c"]))
    trainer.state.log_history = [{"eval_accuracy": 0.9, "step": 1}, {"eval_accuracy": 0.5, "step": 2}]
    trainer.state.global_step = 2
    trainer.state.best_model_checkpoint = str(tmp_path / "run" / "checkpoint-1")
    trainer.create_model_card()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| eval_accuracy | 0.5000 |" in card and "0.9000" not in card


def test_an_evaluation_only_trainer_leaves_out_a_feature_loss_that_reads_fresh_adapters(tmp_path, caplog):
    """A feature loss whose own state is none still reads the pairs' adapters, which trained beside
    the student and are not saved with it: evaluated through fresh ones, fitnet's term and eval_loss
    described random projections."""
    args = make_args(tmp_path, losses=["ce", "fitnet"])
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        trainer = build(args, tiny_vit(), tiny_resnet(), train_dataset=None, eval_dataset=pixel_dataset(10, seed=1))
    assert any(adapter.state_dict() for adapter in trainer.distillation_model.adapters), "adapters with weights"
    assert trainer.distillation_model.left_out == {"fitnet"}
    assert "evaluation only: ['fitnet'] not evaluated" in caplog.text


def test_a_callers_collator_that_resizes_may_batch_evaluation_images_of_another_size(tmp_path):
    """The feature pairs are planned at the size the model is fed: with a collator of the caller's,
    which may resize what it batches, the items' own size says nothing, and an evaluation set of
    24 px images resized to 16 by it was refused as of another size than the training images."""

    def resize_to_16(items):
        pixels = torch.stack([torch.as_tensor(item["pixel_values"]) for item in items])
        pixels = torch.nn.functional.interpolate(pixels, size=(16, 16), mode="bilinear", align_corners=False)
        return {"pixel_values": pixels, "labels": torch.tensor([int(item["labels"]) for item in items])}

    trainer = build(make_args(tmp_path, losses=["ce", "rcka", "patch_cka"]), tiny_vit(), tiny_resnet(),
                    eval_dataset=pixel_dataset(5, size=24), data_collator=resize_to_16)
    assert "eval_accuracy" in trainer.evaluate()


# G2, G3 (trainer/given_models.py check_model_objects): a student with some frozen weights trains the others,
# and no student at all is refused in the check's own words
def test_a_partly_frozen_student_is_taken_and_a_missing_one_is_named(tmp_path):
    """A student whose stem a caller froze (fine-tuning its later layers) is a student with trainable
    weights; model=None without model_init reached Trainer's own failure, not the check's line."""
    student = tiny_vit()
    student.vit.embeddings.requires_grad_(False)
    build(make_args(tmp_path), student, tiny_resnet())
    with pytest.raises(ModelError, match="model must be a transformers image classifier .* got NoneType"):
        build(make_args(tmp_path), None, tiny_resnet())


# G5, G6 (trainer/given_models.py check_ready_model): a ready model's teacher_processor is refused alone too,
# and args naming fewer losses than the model computes are refused as more would be
def test_a_ready_distillation_model_refuses_a_teacher_processor_and_args_of_fewer_losses(tmp_path):
    """teacher_processor beside a ready DistillationModel (without teacher) was dropped unsaid, and
    args.losses ['ce'] beside a model that computes ce and kd trained kd too."""
    ready = build_distillation_model(tiny_vit(), tiny_resnet(), make_args(tmp_path, losses=["ce", "kd"]))
    with pytest.raises(ModelError, match="teacher_processor given with a ready DistillationModel"):
        build(make_args(tmp_path), ready, teacher_processor=processor(16))
    with pytest.raises(RecipeError, match=r"losses \['ce'\] in args, but the DistillationModel given computes "
                                          r"\['ce', 'kd'\]"):
        build(make_args(tmp_path, losses=["ce"]), ready)


# G9 (trainer/given_models.py _same_option): an option whose == gives no truth value cannot be told apart
def test_a_loss_option_without_a_plain_equality_is_not_called_different():
    """A custom loss's option held as a numpy array (its == is elementwise): its truth raised, and the
    ready model built from the same args was refused as ignoring that option."""
    from hf_rcka.trainer.given_models import _same_option

    assert _same_option(np.array([1.0, 2.0]), np.array([1.0, 2.0])) is True
    assert _same_option(torch.tensor([1.0]), torch.tensor([2.0])) is False


# G13 (trainer/given_models.py _timm_teacher_processor; the original was wrong too: timm keeps dynamic_img_size on
# the model, not its patch_embed): a ViT built with dynamic_img_size takes its data config's size, whatever img_size
def test_a_timm_teacher_with_a_dynamic_image_size_reads_its_own_data_config():
    """A teacher built with dynamic_img_size: true (which resamples its position embeddings) was taken
    for one fixed at its build size: its data config (mean 0.5, 24 px) was dropped and it got the
    student's inputs as they were."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from hf_rcka.trainer.given_models import _timm_teacher_processor

    config = TimmWrapperConfig(architecture="vit_tiny_patch16_224", num_labels=3,
                               model_args={"img_size": 16, "patch_size": 4, "depth": 1, "dynamic_img_size": True},
                               pretrained_cfg={"input_size": (3, 24, 24), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    processor_ = _timm_teacher_processor(TimmWrapperForImageClassification(config))
    assert processor_ is not None and processor_.data_config["input_size"][-2:] == (24, 24)


# G11 (trainer/given_models.py _model_settings_ignored): pairs no loss reads are no setting the model ignores
def test_a_ready_model_built_from_args_whose_pairs_no_loss_reads_takes_those_args(tmp_path):
    """feature_pairs read only by a loss of weight 0 are dropped when the model is built (the arguments'
    warning says so): the same args beside the model built from them were refused as asking for pairs."""
    args = make_args(tmp_path, losses=["ce", "kd", {"name": "feature_cka", "weight": 0}],
                     feature_pairs=[{"student_layer": 1, "teacher_layer": 1}])
    ready = build_distillation_model(named(tiny_vit(), ["a", "b", "c"]), named(tiny_resnet(), ["a", "b", "c"]), args)
    build(args, ready)


def test_a_timm_teacher_with_a_dynamic_image_size_trains_at_its_own_data_config_s_size(tmp_path):
    """Its inputs are resized to its data config's 24 px, which its resampled position embeddings take."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    config = TimmWrapperConfig(architecture="vit_tiny_patch16_224", num_labels=3,
                               model_args={"img_size": 16, "patch_size": 4, "depth": 1, "dynamic_img_size": True},
                               pretrained_cfg={"input_size": (3, 24, 24), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    teacher = TimmWrapperForImageClassification(config)
    teacher.config.id2label, teacher.config.label2id = {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    trainer = build(make_args(tmp_path, max_steps=1), named(tiny_vit(), ["a", "b", "c"]), teacher)
    assert trainer.distillation_model.teacher_transform is not None
    trainer.train()


# G20 (trainer/given_models.py check_models): only losses that compare hidden states need the data at the planned size
def test_data_of_another_size_than_the_processor_is_taken_when_no_loss_reads_features(tmp_path):
    """A logits-only recipe (ce, kd) with a ResNet student, which takes any size, and 24 px data beside a
    16 px processor was refused as if its feature pairs were planned for another grid."""
    build(make_args(tmp_path, losses=["ce", "kd"]), named(tiny_resnet(), ["a", "b", "c"]),
          named(tiny_resnet(), ["a", "b", "c"]), train_dataset=pixel_dataset(10, size=24))


# G21 (trainer/given_models.py check_models): the data's size is compared with the planned one on both sides
def test_a_processor_of_the_datas_height_and_another_width_is_refused_for_feature_losses(tmp_path):
    """A 16x24 processor beside 16x16 data planned the feature pairs for another grid: only the heights
    were compared, and patch_cka failed at the first step."""
    from transformers import ViTImageProcessor

    wide = ViTImageProcessor(size={"height": 16, "width": 24}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    with pytest.raises(RecipeError, match="processing_class's output size 16x24, but the data's images are 16x16"):
        build(make_args(tmp_path, losses=["ce", "feature_cka"]), tiny_vit(), tiny_resnet(), processing_class=wide)


# G23 (trainer/given_models.py _timm_teacher_processor): a data config without mean and std is not the teacher's own
def test_a_timm_teacher_whose_data_config_has_no_mean_or_std_is_not_given_imagenets(tmp_path, caplog):
    """Its config records only the input size: timm's processor fills in ImageNet's mean and std, so the
    teacher's inputs were renormalised to statistics it was never said to take, announced as its own data
    config. It gets the student's inputs, with the warning that teacher_processor was not given."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    config = TimmWrapperConfig(architecture="vit_tiny_patch16_224", num_labels=3,
                               model_args={"img_size": 16, "patch_size": 4, "depth": 1},
                               pretrained_cfg={"input_size": (3, 16, 16)})
    teacher = TimmWrapperForImageClassification(config)
    teacher.config.id2label, teacher.config.label2id = {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    with caplog.at_level(logging.INFO, logger="hf_rcka"):
        trainer = build(make_args(tmp_path), named(tiny_vit(), ["a", "b", "c"]), teacher)
    assert trainer.distillation_model.teacher_transform is None
    assert "teacher_processor not given, so the teacher gets the student's inputs" in caplog.text
    assert "own data config is used" not in caplog.text
