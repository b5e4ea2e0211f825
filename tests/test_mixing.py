"""Mixup/CutMix on the batch both models see, and what every label-reading loss does with mixed labels."""

import pytest
import torch
import torch.nn.functional as F

from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit
from hf_rcka import LOSSES, DistillationTrainer, DistillationTrainingArguments, LossInputs
from hf_rcka.augmentation import AugmentationArguments
from hf_rcka.losses import LossContext
from hf_rcka.data.mixing import build_mixup, mix_batch

P = 3
MIXUP_ONLY = AugmentationArguments(mixup=0.8, mixup_prob=1.0)


def smoothed_one_hot(labels, smoothing, classes=P):
    return F.one_hot(labels, classes).double() * (1 - smoothing) + smoothing / classes


def test_no_mixup_unless_asked():
    assert build_mixup(AugmentationArguments(), P) is None
    assert build_mixup(AugmentationArguments(cutmix_minmax=[0.2, 0.8]), P) is not None


def test_mixup_mixes_pixels_and_targets_with_one_lambda_and_folds_smoothing_once():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 5, 7, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    mixed, targets = mix_batch(build_mixup(MIXUP_ONLY, P, label_smoothing=0.1), x.clone(), y)
    # mixup pairs image i with image B-1-i: recover lambda from the pixels
    lam = float(((mixed - x.flip(0)) / (x - x.flip(0)))[0].mean())
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0))
    expected = lam * smoothed_one_hot(y, 0.1) + (1 - lam) * smoothed_one_hot(y.flip(0), 0.1)
    assert torch.allclose(targets.double(), expected, atol=1e-6)
    assert torch.allclose(targets.sum(-1), torch.ones(4))


def test_mixing_labels_that_are_not_class_indices_is_a_clear_error():
    """Soft or one-hot labels (B, P) went into timm's one-hot of a one-hot, an error deep in timm (or
    wrong targets); they are refused by name."""
    x, soft = torch.randn(4, 3, 4, 4), F.one_hot(torch.tensor([0, 1, 2, 0]), P).float()
    with pytest.raises(ValueError, match=r"needs class indices of shape \(B,\), got labels of shape \(4, 3\)"):
        mix_batch(build_mixup(MIXUP_ONLY, P), x, soft)


def test_an_odd_last_batch_keeps_its_last_image_unmixed():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, 4, 4), torch.tensor([0, 2, 1, 2, 1])
    mixed, targets = mix_batch(build_mixup(MIXUP_ONLY, P, label_smoothing=0.1), x.clone(), y)
    assert torch.equal(mixed[4], x[4]) and not torch.allclose(mixed[:4], x[:4])
    assert torch.allclose(targets[4].double(), smoothed_one_hot(y[4:], 0.1)[0], atol=1e-6)
    single, target = mix_batch(build_mixup(MIXUP_ONLY, P), x[:1].clone(), y[:1])
    assert torch.equal(single, x[:1]) and torch.equal(target, F.one_hot(y[:1], P).float())


def test_ce_on_soft_targets_is_soft_target_cross_entropy_without_a_second_smoothing():
    logits = torch.randn(5, P, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 2, 1, 2, 0])
    soft = torch.softmax(torch.randn(5, P, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), -1)
    ce = LOSSES.build("ce", label_smoothing=0.1)
    naive = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(ce(LossInputs(student_logits=logits, labels=soft))["ce"], naive)
    # smoothing folded into the target by Mixup == ce's own smoothing on hard labels: applied once
    folded = ce(LossInputs(student_logits=logits, labels=smoothed_one_hot(y, 0.1)))["ce"]
    assert torch.allclose(folded, ce(LossInputs(student_logits=logits, labels=y))["ce"])
    with pytest.raises(ValueError, match="one column per class"):
        ce(LossInputs(student_logits=logits, labels=soft[:, :2]))


def test_deit_token_reads_no_labels_so_mixing_changes_nothing():
    g = torch.Generator().manual_seed(0)
    dist, teacher = torch.randn(5, P, generator=g), torch.randn(5, P, generator=g)
    loss = LOSSES.build("deit_token", mode="hard")
    expected = F.cross_entropy(dist, teacher.argmax(-1))
    values = []
    for labels in (None, torch.tensor([0, 1, 2, 0, 1]), torch.softmax(torch.randn(5, P, generator=g), -1)):
        inputs = LossInputs(student_logits=dist, labels=labels, distillation_logits=dist, teacher_logits=teacher)
        values.append(loss(inputs)["deit_token"])
    assert all(torch.equal(value, values[0]) for value in values)  # the labels change nothing
    torch.testing.assert_close(values[0], expected, rtol=1e-6, atol=0)  # the mean of per-image terms


def test_kernel_transfer_counts_a_mixed_image_for_its_dominant_class():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, generator=g), torch.randn(6, 5, generator=g)
    hard = torch.tensor([0, 2, 1, 2, 0, 1])
    lam = 0.7  # the first image of each pair dominates
    mixed = lam * F.one_hot(hard, P).float() + (1 - lam) * F.one_hot(hard.flip(0), P).float()
    centres = []
    for labels in (hard, mixed):
        loss = LOSSES.build("kernel_transfer", centres="running")
        loss.setup(LossContext(num_labels=P, student_pooled_dim=4, teacher_pooled_dim=5))
        loss.train()
        loss(LossInputs(student_logits=torch.zeros(6, P), labels=labels, student_pooled=student,
                        teacher_pooled=teacher))
        centres.append((loss.student_centres.clone(), loss.teacher_centres.clone()))
    assert torch.equal(centres[0][0], centres[1][0]) and torch.equal(centres[0][1], centres[1][1])
    assert LossInputs(student_logits=torch.zeros(6, P), labels=1 - mixed).hard_labels().tolist() != hard.tolist()


def test_student_and_teacher_see_the_same_mixed_batch(tmp_path):
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, report_to="none",
        use_cpu=True, seed=0, save_strategy="no", teacher_accuracy_check="off", label_smoothing_factor=0.1,
        losses=[{"name": "ce"}, {"name": "rcka"}],
    )
    same = processor(16)
    trainer = DistillationTrainer(
        model=tiny_vit(), teacher=tiny_resnet(), args=args, train_dataset=pixel_dataset(8, seed=0),
        processing_class=same, teacher_processor=processor(16), augmentation=AugmentationArguments(cutmix=1.0),
    )
    assert trainer.mixup.label_smoothing == pytest.approx(0.1), "ce's smoothing is folded into the targets"
    seen, labels_seen = {}, []

    def recorder(role):
        def hook(module, args, kwargs):
            seen.setdefault(role, kwargs["pixel_values"].clone())
        return hook

    trainer.model.student.register_forward_pre_hook(recorder("student"), with_kwargs=True)
    trainer.model.teacher.register_forward_pre_hook(recorder("teacher"), with_kwargs=True)
    trainer.model.losses["ce"].register_forward_pre_hook(lambda m, a: labels_seen.append(a[0].labels) and None)
    trainer.train()
    assert torch.equal(seen["student"], seen["teacher"])
    originals = torch.stack([pixel_dataset(8, seed=0)[i]["pixel_values"] for i in range(8)])
    assert not any(torch.equal(img, orig) for img in seen["student"] for orig in originals), "the batch was mixed"
    assert labels_seen[0].shape == (4, P) and labels_seen[0].min() >= 0.1 / P - 1e-6


def test_evaluation_is_never_mixed(tmp_path):
    """Mixing is training's: an evaluation batch reaches the model as it came, with its integer labels."""
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True,
                                         teacher_accuracy_check="off", losses=[{"name": "ce"}])
    trainer = DistillationTrainer(model=tiny_vit(), args=args, processing_class=processor(16),
                                  augmentation=AugmentationArguments(mixup=0.8, cutmix=1.0, mixup_prob=1.0))
    data = pixel_dataset(6, seed=0)
    pixels = torch.stack([data[i]["pixel_values"] for i in range(6)])
    labels = torch.tensor([data[i]["labels"] for i in range(6)])
    seen = {}
    trainer.model.student.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(pixels=kwargs["pixel_values"].clone()), with_kwargs=True)
    trainer.model.losses["ce"].register_forward_pre_hook(lambda m, a: seen.update(labels=a[0].labels) and None)
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, {"pixel_values": pixels.clone(), "labels": labels})
    assert torch.equal(seen["pixels"], pixels) and torch.equal(seen["labels"], labels)
    trainer.model.train()  # and in training the same call mixes them
    trainer.compute_loss(trainer.model, {"pixel_values": pixels.clone(), "labels": labels})
    assert not torch.equal(seen["pixels"], pixels) and seen["labels"].shape == (6, P)


def test_every_mixing_setting_of_the_recipe_reaches_timms_mixup():
    """mixup_mode, mixup_switch_prob and cutmix_minmax were each replaceable by timm's default with
    every test passing: a recipe's 'elem' mode or switch probability would be ignored without a word."""
    aug = AugmentationArguments(mixup=0.3, cutmix=0.6, mixup_prob=0.7, mixup_switch_prob=0.2, mixup_mode="elem")
    m = build_mixup(aug, 5, label_smoothing=0.1)
    assert (m.mixup_alpha, m.cutmix_alpha, m.cutmix_minmax, m.mix_prob, m.switch_prob, m.mode, m.label_smoothing,
            m.num_classes) == (0.3, 0.6, None, 0.7, 0.2, "elem", 0.1, 5)
    assert build_mixup(AugmentationArguments(cutmix_minmax=[0.2, 0.8]), 5).cutmix_minmax == [0.2, 0.8]


def test_an_odd_batch_mixes_the_targets_of_the_images_it_mixes():
    """The first B-1 images of an odd batch are mixed: their targets must be mixed with the same
    lambda (the existing odd-batch test checks only the last, unmixed, image)."""
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 2, 1, 2, 1])
    mixed, targets = mix_batch(build_mixup(MIXUP_ONLY, P, label_smoothing=0.1), x.clone(), y)
    head, labels = x[:4], y[:4]
    lam = float(((mixed[:4] - head.flip(0)) / (head - head.flip(0)))[0].mean())
    expected = lam * smoothed_one_hot(labels, 0.1) + (1 - lam) * smoothed_one_hot(labels.flip(0), 0.1)
    assert torch.allclose(targets[:4].double(), expected, atol=1e-6)


def test_a_trainer_built_in_python_refuses_to_mix_batches_of_one(tmp_path):
    """The command line refused mixup at per_device_train_batch_size 1; a DistillationTrainer built
    in Python trained every step unmixed (timm's Mixup pairs image i with B-1-i) and said nothing."""
    from hf_rcka.errors import RecipeError

    args = DistillationTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=1,
                                         report_to="none", use_cpu=True, save_strategy="no",
                                         teacher_accuracy_check="off", losses=[{"name": "ce"}])
    trainer = DistillationTrainer(model=tiny_vit(), args=args, train_dataset=pixel_dataset(8, seed=0),
                                  processing_class=processor(16), augmentation=MIXUP_ONLY)
    with pytest.raises(RecipeError, match="per_device_train_batch_size is 1: a batch of one mixes nothing"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_per_image_settings_given_to_the_trainer_beside_ready_pixels_are_said_to_do_nothing(tmp_path, caplog):
    """The trainer applies Mixup/CutMix and repeated augmentation; aa and reprob act through the
    dataset's transform. Given to a DistillationTrainer whose train_dataset holds ready pixel_values,
    they changed nothing and the run said nothing."""
    import logging

    def trained(augmentation):
        args = DistillationTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4,
                                             report_to="none", use_cpu=True, save_strategy="no",
                                             teacher_accuracy_check="off", losses=[{"name": "ce"}])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_rcka"):
            DistillationTrainer(model=tiny_vit(), args=args, train_dataset=pixel_dataset(8, seed=0),
                                processing_class=processor(16), augmentation=augmentation).train()
        return caplog.text

    said = trained(AugmentationArguments(aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8))
    assert "augmentation: aa, reprob act through the training set's own per-image transform" in said
    # a dataset transformed with train_transform(processor, augmentation), as advised, does apply them
    assert "so they have no effect" not in said
    assert "give the trainer's augmentation= only mixup, cutmix and aug_repeats" in said
    assert "act through" not in trained(MIXUP_ONLY)  # what the trainer applies itself
    assert "act through" not in trained(AugmentationArguments(no_aug=True, reprob=0.25))  # said by no_aug's own warning
