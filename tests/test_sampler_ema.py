"""Repeated augmentation (DeiT's RASampler semantics) in the Trainer, and the student weight EMA."""

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from conftest import pixel_dataset, processor, tiny_vit
from hf_rcka import DistillationTrainer, DistillationTrainingArguments
from hf_rcka.augmentation import AugmentationArguments
from hf_rcka.trainer.ema import EMA_STATE_NAME
from hf_rcka.data.sampler import RepeatedAugmentationSampler
from types import SimpleNamespace
from hf_rcka.trainer.ema import StudentEmaCallback


def indexed_dataset(n):
    """Pixel tensors whose first value is the sample's index, so batches say which images they hold."""
    pixels = np.zeros((n, 3, 16, 16), dtype=np.float32)
    pixels[:, 0, 0, 0] = np.arange(n)
    return datasets.Dataset.from_dict({"pixel_values": pixels, "labels": [i % 3 for i in range(n)]}).with_format("torch")


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_copy_of_an_image_goes_to_a_different_rank(replicas):
    n, repeats = 30, 3
    per_rank = [list(RepeatedAugmentationSampler(range(n), repeats, replicas, rank, seed=5)) for rank in range(replicas)]
    assert all(len(indices) == -(-n // replicas) for indices in per_rank), "an epoch stays one dataset long"
    if replicas == repeats:  # one copy of each selected image per rank, in the same order
        assert per_rank[0] == per_rank[1] == per_rank[2]
    else:  # one process: the copies are consecutive, so they share a batch
        assert all(per_rank[0][i] == per_rank[0][i + 1] == per_rank[0][i + 2] for i in range(0, 27, 3))


def test_the_order_depends_on_seed_and_epoch():
    a, b = RepeatedAugmentationSampler(range(30), 3, 1, 0, seed=0), RepeatedAugmentationSampler(range(30), 3, 1, 0, seed=1)
    first = list(a)
    assert first != list(b)
    a.set_epoch(1)
    assert list(a) != first


def make_args(tmp_path, **overrides):
    defaults = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=6, per_device_eval_batch_size=5,
                    learning_rate=1e-2, report_to="none", use_cpu=True, seed=0, save_strategy="no",
                    teacher_accuracy_check="off", losses=[{"name": "ce"}])
    return DistillationTrainingArguments(**{**defaults, **overrides})


def test_trainer_uses_the_repeated_augmentation_sampler(tmp_path):
    trainer = DistillationTrainer(model=tiny_vit(), args=make_args(tmp_path), train_dataset=indexed_dataset(12),
                                  processing_class=processor(16), augmentation=AugmentationArguments(aug_repeats=3))
    ids = [int(i) for batch in trainer.get_train_dataloader() for i in batch["pixel_values"][:, 0, 0, 0]]
    assert len(ids) == 12 and len(set(ids)) == 4, "12 draws per epoch: 4 images, 3 copies each"
    assert all(ids[i] == ids[i + 1] == ids[i + 2] for i in range(0, 12, 3))
    plain = DistillationTrainer(model=tiny_vit(), args=make_args(tmp_path), train_dataset=indexed_dataset(12),
                                processing_class=processor(16))
    assert sorted(int(i) for b in plain.get_train_dataloader() for i in b["pixel_values"][:, 0, 0, 0]) == list(range(12))


def test_data_seed_0_fixes_the_repeated_augmentation_order(tmp_path):
    """data_seed 0 is a seed (it was read as unset and the order followed seed), as in Trainer's own sampler."""
    def sampler_seed(seed):
        trainer = DistillationTrainer(model=tiny_vit(), args=make_args(tmp_path, seed=seed, data_seed=0),
                                      train_dataset=indexed_dataset(12), processing_class=processor(16),
                                      augmentation=AugmentationArguments(aug_repeats=3))
        return trainer._get_train_sampler().seed

    assert sampler_seed(3) == sampler_seed(4) == 0


def ema_trainer(tmp_path, **overrides):
    args = make_args(tmp_path, model_ema=True, max_steps=3, **overrides)
    return DistillationTrainer(model=tiny_vit(), args=args, train_dataset=pixel_dataset(18, seed=0),
                               eval_dataset=pixel_dataset(10, seed=1), processing_class=processor(16))


def test_each_weight_sets_evaluation_has_its_own_progress_bar(tmp_path):
    """The second pass (the other weight set) kept counting on the first pass's bar: 6 of 3 batches."""
    from transformers import ProgressCallback

    bars = []

    class Bars(ProgressCallback):
        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)
            if self.prediction_bar is not None:
                # the bar itself, kept alive: a closed bar's id could be the next bar's
                bars.append((self.prediction_bar, self.prediction_bar.n, self.prediction_bar.total))

    trainer = ema_trainer(tmp_path, per_device_eval_batch_size=4)
    trainer.add_callback(Bars())
    trainer.train()
    bars.clear()
    trainer.evaluate()
    assert len({id(bar) for bar, _, _ in bars}) == 2  # one bar a pass
    assert [n for _, n, _ in bars] == [1, 2, 3, 1, 2, 3] and {total for _, _, total in bars} == {3}


def test_ema_follows_timm_decay_and_is_evaluated_next_to_the_live_weights(tmp_path):
    trainer = ema_trainer(tmp_path, model_ema_decay=0.5)
    history = []

    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            history.append({k: v.detach().clone() for k, v in model.student.state_dict().items()})

    trainer.add_callback(Snapshot())
    trainer.train()
    # timm: the first update copies the weights, later ones decay by 0.5 (callbacks run in order)
    name = "classifier.weight"
    expected = history[0][name]
    for weights in history[1:]:
        expected = 0.5 * expected + 0.5 * weights[name]
    assert torch.allclose(trainer.model_ema.module.state_dict()[name], expected, atol=1e-6)
    assert not torch.allclose(expected, history[-1][name])
    metrics = trainer.evaluate()
    assert {"eval_accuracy", "eval_ema_accuracy", "eval_ema_loss"} <= set(metrics)
    assert metrics["eval_ema_loss"] != metrics["eval_loss"], "the average is evaluated, not the live weights"
    live = trainer.model.student.state_dict()[name]
    assert torch.equal(live, history[-1][name]), "evaluation swaps the live weights back"


def test_ema_is_checkpointed_resumed_and_exported_when_asked(tmp_path):
    trainer = ema_trainer(tmp_path, save_strategy="steps", save_steps=3, model_ema_export=True)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    saved_ema = load_file(checkpoint / EMA_STATE_NAME)
    ema = trainer.model_ema.module.state_dict()
    assert all(torch.equal(saved_ema[k], ema[k]) for k in ema)
    trainer.save_model()
    exported = AutoModelForImageClassification.from_pretrained(tmp_path / "run").state_dict()
    assert torch.equal(exported["classifier.weight"], ema["classifier.weight"])
    # a checkpoint holds the model its logged eval_* measured, the average (it held the live weights:
    # a checkpoint picked by its eval_accuracy deployed another model)
    checkpointed = AutoModelForImageClassification.from_pretrained(checkpoint).state_dict()
    live = {k: v.clone() for k, v in trainer.model.student.state_dict().items()}
    assert torch.equal(checkpointed["classifier.weight"], ema["classifier.weight"])
    assert not torch.equal(live["classifier.weight"], ema["classifier.weight"])

    resumed = ema_trainer(tmp_path)
    resumed._load_from_checkpoint(str(checkpoint))  # training goes on from the live weights
    assert all(torch.equal(resumed.model_ema.module.state_dict()[k], ema[k]) for k in ema)
    assert all(torch.equal(resumed.model.student.state_dict()[k], live[k]) for k in live)



def test_an_evaluation_before_any_average_reports_one_set_of_weights(tmp_path):
    """An evaluation-only re-check of an EMA run reported eval_live_* equal to eval_*: a fresh
    'average' of the loaded weights, as if the run had two models."""
    for export in (False, True):
        metrics = ema_trainer(tmp_path, model_ema_export=export).evaluate()
        assert "eval_accuracy" in metrics
        assert not [k for k in metrics if k.startswith(("eval_ema_", "eval_live_"))], metrics
    # in training both sets are reported from the start, which metric_for_best_model may name
    trainer = ema_trainer(tmp_path, eval_on_start=True, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                          save_steps=2, metric_for_best_model="ema_accuracy")
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["step"] == 0 and "eval_ema_accuracy" in first


def test_with_ema_export_eval_metrics_are_the_exported_models(tmp_path):
    trainer = ema_trainer(tmp_path, model_ema_export=True, model_ema_decay=0.5)
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_live_loss", "eval_live_accuracy"} <= set(metrics) and "eval_ema_loss" not in metrics
    trainer.save_model()
    exported = AutoModelForImageClassification.from_pretrained(tmp_path / "run")
    plain = DistillationTrainer(model=exported, args=make_args(tmp_path, output_dir=str(tmp_path / "plain")),
                                eval_dataset=pixel_dataset(10, seed=1), processing_class=processor(16))
    alone = plain.evaluate()
    assert alone["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert alone["eval_loss"] != pytest.approx(metrics["eval_live_loss"], rel=1e-5)
    # the card says which of its two sets of numbers the exported weights scored
    trainer.create_model_card()
    assert ("the weights here are the exponential moving average of the trained ones (decay 0.5): `eval_*` "
            "measures them, `eval_live_*` the trained weights") in (tmp_path / "run" / "README.md").read_text()


def test_loading_the_best_checkpoint_restores_its_average(tmp_path):
    trainer = ema_trainer(tmp_path, save_strategy="steps", save_steps=1, model_ema_decay=0.5)
    trainer.train()
    first = tmp_path / "run" / "checkpoint-1"
    trainer.state.best_model_checkpoint = str(first)
    trainer._load_best_model()
    saved = load_file(first / EMA_STATE_NAME)
    ema = trainer.model_ema.module.state_dict()
    assert all(torch.equal(saved[k], ema[k].cpu()) for k in saved)
    assert not torch.equal(saved["classifier.weight"], load_file(tmp_path / "run" / "checkpoint-3" / EMA_STATE_NAME)["classifier.weight"])


def test_the_other_weight_set_is_evaluated_without_a_second_teacher_pass(tmp_path):
    """Both weight sets ran the teacher over the whole evaluation set: with the DeiT recipe's
    RegNetY-16GF, a second teacher pass at every evaluation for terms nobody chooses by."""
    from conftest import tiny_resnet

    teacher = tiny_resnet()
    args = make_args(tmp_path, model_ema=True, max_steps=2, model_ema_decay=0.5, losses=["ce", "kd"],
                     per_device_eval_batch_size=5)
    trainer = DistillationTrainer(model=tiny_vit(), teacher=teacher, args=args, train_dataset=pixel_dataset(18, seed=0),
                                  eval_dataset=pixel_dataset(10, seed=1), processing_class=processor(16))
    trainer.train()
    runs = []
    teacher.register_forward_hook(lambda *_: runs.append(1) and None)
    metrics = trainer.evaluate()
    assert len(runs) == 2, "one teacher pass over the 2 evaluation batches"
    assert {"eval_loss", "eval_kd_loss", "eval_ema_accuracy", "eval_ema_ce_loss"} <= set(metrics)
    assert not {"eval_ema_kd_loss", "eval_ema_loss"} & set(metrics)
    assert metrics["eval_ema_ce_loss"] != metrics["eval_ce_loss"], "the average is evaluated"


def test_the_other_weight_set_of_a_run_whose_losses_all_read_the_teacher_reports_its_accuracy(tmp_path):
    """With no loss left once the teacher's are skipped, every evaluation raised 'no loss terms to weigh'."""
    from conftest import tiny_resnet

    args = make_args(tmp_path, model_ema=True, max_steps=2, losses=["kd"], eval_strategy="steps", eval_steps=2)
    trainer = DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(), args=args,
                                  train_dataset=pixel_dataset(18, seed=0), eval_dataset=pixel_dataset(10, seed=1),
                                  processing_class=processor(16))
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_kd_loss", "eval_loss", "eval_ema_accuracy"} <= set(metrics)
    assert not [k for k in metrics if k.startswith("eval_ema_") and k.endswith("_loss")]


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_decay_follows_the_optimizer_step(warmup):
    """timm's ModelEmaV3 reads the step: step 1 copies, and model_ema_warmup's decay ramps up
    from the step count (1 - (1 + s)^(-2/3)); without the step every update decays by `decay`."""
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    ema = StudentEmaCallback(student, decay=0.9999, warmup=warmup)
    _ = ema.module  # made before training (as an evaluation at step 0 would)
    with torch.no_grad():
        student.weight.add_(1.0)
    ema.on_step_end(None, SimpleNamespace(global_step=1), None)
    assert torch.equal(ema.module.weight, student.weight), "the first update copies the weights"
    before = student.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema.on_step_end(None, SimpleNamespace(global_step=2), None)
    decay = 1 - 2 ** (-2 / 3) if warmup else 0.9999
    torch.testing.assert_close(ema.module.weight, decay * before + (1 - decay) * student.weight)


def test_loading_the_best_checkpoint_of_an_ema_export_restores_its_live_weights(tmp_path):
    """With model_ema_export a checkpoint's model.safetensors is the average: loading the best one left
    the average in the student too, so the final evaluation's eval_live_* measured the average twice."""
    from hf_rcka.trainer.checkpointing import LIVE_STUDENT_NAME

    trainer = ema_trainer(tmp_path, save_strategy="steps", save_steps=1, model_ema_decay=0.5, model_ema_export=True)
    trainer.train()
    best = tmp_path / "run" / "checkpoint-2"  # at step 1 the average is the live weights yet
    trainer.state.best_model_checkpoint = str(best)
    trainer._load_best_model()
    live, student = load_file(best / LIVE_STUDENT_NAME), trainer.model.student.state_dict()
    assert all(torch.equal(live[k], student[k].cpu()) for k in live)
    average = load_file(best / "model.safetensors")
    assert not torch.equal(average["classifier.weight"], student["classifier.weight"].cpu())


def test_accelerates_batch_sharding_passes_the_rank_aware_sampler_through():
    """accelerate deals batch i to rank i % world_size: on top of the repeated-augmentation sampler,
    which deals the images by rank already, each rank trained only every other batch of its share
    (kills: the shard left at 2 processes), and even_batches padded the short last batch with the
    first batch's images (kills: even_batches kept). A loader of another sampler keeps accelerate's
    sharding (kills: every sampler passed through)."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from hf_rcka.data.sampler import keep_rank_sharding

    def loader(sampler):
        shard = BatchSamplerShard(BatchSampler(sampler, 3, drop_last=False), num_processes=2, process_index=0)
        return DataLoader(list(range(10)), batch_sampler=shard)

    sampler = RepeatedAugmentationSampler(range(10), 3, num_replicas=2, rank=0, seed=1)
    share = list(BatchSampler(sampler, 3, drop_last=False))
    assert [len(batch) for batch in share] == [3, 2]  # 5 of the 30 draws: a short last batch
    assert [batch.tolist() for batch in keep_rank_sharding(loader(sampler))] == share
    plain = keep_rank_sharding(loader(SequentialSampler(range(10))))
    assert plain.batch_sampler.num_processes == 2 and [batch.tolist() for batch in plain][0] == [0, 1, 2]


def test_an_epoch_of_repeated_augmentation_is_the_dataset_rounded_down_to_256_split_over_the_ranks():
    """DeiT's epoch: the dataset rounded down to a multiple of 256, split over the ranks (1000 images on
    2 ranks: 384 each), whatever the repeats; the batch checks count the same (kills: no rounding, 500
    each). Under 256 images all are kept."""
    from hf_rcka.data.sampler import images_per_process

    assert len(RepeatedAugmentationSampler(range(1000), 3, num_replicas=2, rank=1)) == 384
    assert images_per_process(1000, 3, 2) == 384 and images_per_process(1000, 0, 2) is None
    assert images_per_process(100, 3, 2) == 50


def test_a_checkpoint_without_an_average_restarts_it_from_the_student_and_one_with_it_counts_as_trained(tmp_path):
    """load() of a checkpoint without model_ema.safetensors (saved before model_ema was turned on) says
    the average restarts from the resumed student: the average made before it (of other weights) must
    not go on. One with the file holds an average: an evaluation right after it (a resumed run with no
    step left) reports the average next to the live weights, as the run it resumes did."""
    from safetensors.torch import save_file

    student = torch.nn.Linear(3, 2)
    ema = StudentEmaCallback(student, decay=0.5)
    _ = ema.module  # an average of the weights as they were (an evaluation at step 0 makes it)
    with torch.no_grad():
        student.weight.add_(1.0)  # the resumed checkpoint's weights
    (tmp_path / "bare").mkdir()
    ema.load(str(tmp_path / "bare"))
    assert torch.equal(ema.module.weight, student.weight), "restarted from the resumed student"
    assert not ema.has_average

    saved = {k: v + 3.0 for k, v in student.state_dict().items()}
    save_file(saved, str(tmp_path / EMA_STATE_NAME))
    fresh = StudentEmaCallback(student, decay=0.5)
    fresh.load(str(tmp_path))
    assert torch.equal(fresh.module.weight, saved["weight"]) and fresh.has_average


def test_the_card_says_how_far_the_ema_warm_up_got(tmp_path):
    """With model_ema_warmup the decay rises as 1 - (1 + step)^(-2/3) and reaches 0.9998 only after
    some 350k steps; the card named the target alone ("decay 0.9998") for an average whose last
    update decayed by 0.52, as it says a learning-rate warm-up longer than the run."""
    from hf_rcka.trainer.card import training_text

    trainer = ema_trainer(tmp_path, model_ema_decay=0.9998, model_ema_warmup=True)
    trainer.train()
    last = trainer._ema_last_decay()
    assert last == pytest.approx(1 - 3 ** (-2 / 3))  # timm's step 3 counts two updates after the copy
    text = training_text(3, 1.0, "6 images", 0.01, 0.01, ema_decay=0.9998, ema_last_decay=last)
    assert "exponential moving average of the weights (decay 0.9998, warmed up from 0: 0.5193 at the last step)" in text
    assert ema_trainer(tmp_path, model_ema_decay=0.9998)._ema_last_decay() is None  # no warm-up: the decay is the one


def test_an_exported_average_too_slow_for_the_run_is_blamed_not_the_learning_rate(tmp_path, capsys):
    """A student that learned (eval_live_accuracy 0.89) exported as an average with decay 0.9998 over
    60 steps (still 99% its first step's weights) ended at chance with the advice to train longer or
    lower the learning rate; the fix is the average's decay, or exporting the trained weights."""
    import yaml

    from hf_rcka.cli.main import main

    tiny_resnet = {"embedding_size": 8, "hidden_sizes": [8, 12, 16, 20], "depths": [1, 1, 1, 1], "layer_type": "basic"}
    recipe = {"model_name_or_path": "config:resnet", "student_config_overrides": tiny_resnet, "image_size": 16,
              "dataset_name": "builtin:digits", "no_aug": True, "max_train_samples": 600, "max_eval_samples": 200,
              "losses": [{"name": "ce"}], "learning_rate": 1e-2, "per_device_train_batch_size": 32,
              "per_device_eval_batch_size": 100, "max_steps": 60, "report_to": "none", "use_cpu": True,
              "save_strategy": "no", "output_dir": str(tmp_path / "run"), "model_ema": True, "model_ema_export": True,
              "model_ema_decay": 0.9998}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main([str(tmp_path / "recipe.yaml")]) == 2
    said = capsys.readouterr().err
    warning, error = said[said.index("!!! "):], said[said.index("error: "):]
    assert "but the trained weights score eval_live_accuracy" in warning
    assert "with model_ema_decay 0.9998 over 60 optimizer steps it still holds 99% of the first step's weights" in warning
    assert "Lower model_ema_decay (e.g. 0.8333 for 60 steps), set model_ema_warmup: true, or model_ema_export: false" in error
    assert "lower the learning rate" not in error
