"""DistillationTrainer built from Python: what a caller hands it is checked as the command line
checks what it loads. Each case below trained to the end (or failed after training) before."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import TrainingArguments

from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit
from hf_rcka import DistillationTrainer, DistillationTrainingArguments
from hf_rcka.errors import DataError, LabelError, ModelError, RecipeError
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
    build(make_args(tmp_path), named(tiny_vit(), ["a", "b", "c"]), teacher)
    with torch.no_grad():
        assert torch.equal(teacher(pixel_values=images).logits, raw[:, [1, 2, 0]])
    assert teacher.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_a_teacher_of_other_classes_is_an_error_unless_paired_by_position(tmp_path):
    student = named(tiny_vit(), ["a", "b", "c"])
    with pytest.raises(LabelError, match="teacher_label_mapping: by_index"):
        build(make_args(tmp_path), student, named(tiny_resnet(), ["x", "y", "z"]))
    build(make_args(tmp_path), student, named(tiny_resnet(), ["x", "y", "z"]), teacher_label_mapping="by_index")


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
    DistillationTrainer(model=tiny_vit(), teacher=teacher, args=make_args(tmp_path),
                        train_dataset=data.with_format("torch"), processing_class=processor(16))
    assert teacher.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_a_student_that_names_the_classes_otherwise_than_the_dataset_is_refused(tmp_path):
    """eval_accuracy counted ids (0.97) while the exported model named 57% of its predictions right."""
    data = pixel_dataset(10).with_format(None).cast_column("labels", datasets.ClassLabel(names=["cat", "dog", "eel"]))
    with pytest.raises(LabelError, match="is not the dataset's class order"):
        DistillationTrainer(model=named(tiny_vit(), ["dog", "cat", "eel"]), args=make_args(tmp_path, losses=["ce"]),
                            train_dataset=data.with_format("torch"), processing_class=processor(16))


@pytest.mark.parametrize("setting", [{"bf16_full_eval": True}, {"prediction_loss_only": True},
                                     {"label_names": ["label"]}, {"batch_eval_metrics": True}])
def test_plain_training_arguments_are_checked_too(tmp_path, setting):
    """bf16_full_eval exported a bfloat16 model; the others reported no accuracy or failed after training."""
    plain = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **setting)
    with pytest.raises(RecipeError, match=f"{next(iter(setting))}: .* is not supported"):
        build(plain, tiny_vit(), tiny_resnet())


def test_plain_training_arguments_get_the_distillation_defaults(tmp_path):
    plain = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    build(plain, tiny_vit(), tiny_resnet())
    assert plain.label_names == ["labels"] and plain.remove_unused_columns is False


def test_a_ready_distillation_model_with_arguments_it_would_ignore(tmp_path):
    args = make_args(tmp_path)
    ready = build_distillation_model(tiny_vit(), None, make_args(tmp_path, losses=["ce"]))
    with pytest.raises(ModelError, match="teacher given with a ready DistillationModel"):
        build(args, ready, tiny_resnet())
    with pytest.raises(RecipeError, match=r"losses \['ce', 'kd'\] in args, but the DistillationModel given computes \['ce'\]"):
        build(make_args(tmp_path, losses=["ce", "kd"]), ready)
    build(make_args(tmp_path, losses=["ce"]), ready)


def test_a_student_sharing_weights_with_the_frozen_teacher(tmp_path):
    """The shared embeddings were frozen with the teacher and never trained; the run succeeded."""
    teacher = tiny_vit(seed=5)
    student = tiny_vit(seed=1)
    student.vit.embeddings = teacher.vit.embeddings
    with pytest.raises(ModelError, match=r"shares \d+ weight tensor\(s\) with the teacher.*copy.deepcopy"):
        build(make_args(tmp_path), student, teacher)


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


def test_the_teacher_check_reads_the_first_of_several_evaluation_sets(tmp_path):
    """A dict eval_dataset (which Trainer takes) failed train() at once with KeyError: 0."""
    trainer = build(make_args(tmp_path, teacher_accuracy_check="warn", per_device_eval_batch_size=10), tiny_vit(),
                    tiny_resnet(), eval_dataset={"clean": pixel_dataset(10, seed=1), "other": pixel_dataset(10, seed=2)})
    assert 0.0 <= trainer.check_teacher() <= 1.0
