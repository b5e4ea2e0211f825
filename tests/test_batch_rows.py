"""Every batch a relation over samples sees holds enough of them, and the logged terms add up to the loss.

A centred CKA over 1 or 2 samples is a constant: such a term distilled nothing and was logged
(or evaluated) as a measurement.
"""

import logging

import pytest
import torch

from conftest import pixel_dataset, tiny_resnet, tiny_vit
from hf_rcka.errors import RecipeError
from hf_rcka.trainer.batch_rows import check_training_batches
from hf_rcka.losses.rcka import FeatureCKALoss, RCKALoss
from test_trainer import make_args, make_trainer

RELATIONAL = [{"name": "ce"}, {"name": "rcka"}, {"name": "feature_cka"}]


def _oom_above(module, rows: int, method: str = "forward"):
    """Make ``module.method`` run out of memory (the message accelerate retries on) above ``rows`` rows."""
    original = getattr(module, method)

    def patched(*args, **kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        if pixels is not None and pixels.shape[0] > rows:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return original(*args, **kwargs)

    setattr(module, method, patched)


def test_auto_find_batch_size_lowered_below_a_relation_is_refused(tmp_path):
    """Retries went 4, 3, 2 and trained at 2 images, rcka_intra and feature_cka logged 0.0 every step."""
    args = make_args(tmp_path, auto_find_batch_size=True, per_device_train_batch_size=4, max_steps=2, losses=RELATIONAL)
    trainer = make_trainer(args)
    _oom_above(trainer.distillation_model, 2)
    with pytest.raises(RecipeError, match=r"relation over 2 sample.*auto_find_batch_size lowered the batch"):
        trainer.train()


def test_auto_find_batch_size_retry_starts_the_term_log_anew(tmp_path):
    """The failed attempt's terms were averaged into the first log: the terms no longer added up to loss."""
    args = make_args(tmp_path, auto_find_batch_size=True, per_device_train_batch_size=5, max_steps=2, losses=RELATIONAL)
    trainer = make_trainer(args)
    original = trainer.accelerator.backward

    def backward(loss, **kwargs):
        if trainer._train_batch_size > 4:  # after the forward, so the terms of the attempt are logged
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return original(loss, **kwargs)

    trainer.accelerator.backward = backward
    trainer.train()
    assert trainer.state.train_batch_size == 4
    steps = [e for e in trainer.state.log_history if "loss" in e and "rcka_intra_loss" in e]
    assert steps and all(
        e["ce_loss"] + e["rcka_intra_loss"] + e["rcka_inter_loss"] + e["feature_cka_loss"] == pytest.approx(e["loss"], rel=1e-3)
        for e in steps)


def test_auto_find_batch_size_checks_the_last_batch_at_the_batch_it_lowered_to(tmp_path):
    """11 images at 6, retried at 5: batches of 5, 5 and 1, and BatchNorm failed on the lone image
    at the end of the epoch (the last batch had been checked at 6 only)."""
    args = make_args(tmp_path, auto_find_batch_size=True, per_device_train_batch_size=6, num_train_epochs=1,
                     losses=[{"name": "ce"}])
    trainer = make_trainer(args, student=tiny_resnet(), teacher=None, train=pixel_dataset(11, seed=0))
    _oom_above(trainer.distillation_model, 5)
    trainer.train()
    assert trainer.state.train_batch_size == 5 and trainer.args.dataloader_drop_last and trainer.state.global_step == 2


def test_a_last_batch_dropped_at_one_batch_size_is_kept_at_the_next(tmp_path):
    """13 images: at 6 the last batch is 1 (dropped for BatchNorm); retried at 5 it is 3, which was
    dropped too every epoch, with no word, because the first check's setting stuck."""
    args = make_args(tmp_path, auto_find_batch_size=True, per_device_train_batch_size=6, num_train_epochs=1,
                     losses=[{"name": "ce"}])
    trainer = make_trainer(args, student=tiny_resnet(), teacher=None, train=pixel_dataset(13, seed=0))
    _oom_above(trainer.distillation_model, 5)
    trainer.train()
    assert trainer.state.train_batch_size == 5 and not trainer.args.dataloader_drop_last and trainer.state.global_step == 3


def test_a_dropped_last_batch_is_said_once(tmp_path, caplog):
    """The trainer checks the last batch before training and again as it builds the loader: the
    line saying it is dropped was logged twice in every run that dropped one."""
    args = make_args(tmp_path, per_device_train_batch_size=5, num_train_epochs=1, losses=[{"name": "ce"}])
    trainer = make_trainer(args, student=tiny_resnet(), teacher=None, train=pixel_dataset(11, seed=0))
    with caplog.at_level(logging.INFO, logger="hf_rcka"):
        trainer.train()
    assert trainer.state.global_step == 2 and trainer.args.dataloader_drop_last
    assert caplog.text.count("each epoch's last training batch would hold 1 image(s)") == 1


def test_logged_terms_add_up_to_loss_with_an_uneven_last_accumulation(tmp_path):
    """20 images in batches of 4, 3 micro-batches a step: the second step has 2. Trainer's loss is
    the mean of each step's micro-batches; the terms weighted every micro-batch alike."""
    args = make_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=3, num_train_epochs=1,
                     logging_steps=2, losses=[{"name": "ce"}, {"name": "kd"}])
    trainer = make_trainer(args)
    trainer.train()
    (logged,) = [e for e in trainer.state.log_history if "kd_loss" in e]
    assert logged["ce_loss"] + logged["kd_loss"] == pytest.approx(logged["loss"], rel=1e-4)


def test_an_evaluation_batch_too_small_for_a_relation_is_refused_before_training(tmp_path):
    """At an evaluation batch of 2, eval_rcka_intra_loss read 0.0 and eval_feature_cka_loss -0.0 (a
    'perfect match'), and eval_loss, which picks the best checkpoint, moved with the batch size."""
    evaluating = {"eval_strategy": "steps", "eval_steps": 1}
    trainer = make_trainer(make_args(tmp_path, per_device_eval_batch_size=2, max_steps=1, losses=RELATIONAL, **evaluating))
    with pytest.raises(RecipeError, match=r"rcka relates .* 2 sample.*evaluation loss would measure nothing.*"
                                          r"per_device_eval_batch_size >= 3"):
        trainer.train()
    make_trainer(make_args(tmp_path, per_device_eval_batch_size=3, max_steps=1, losses=RELATIONAL, **evaluating)).train()
    # a run that never evaluates is not refused (and on one process, gather is no advice)
    make_trainer(make_args(tmp_path, per_device_eval_batch_size=2, max_steps=1, eval_strategy="no",
                           losses=RELATIONAL)).train()


def test_an_evaluation_set_too_small_for_a_relation_is_refused(tmp_path):
    """2 evaluation images: no batch could hold a relation, rcka_intra was never reported, and a
    metric_for_best_model naming it failed with a KeyError after the first evaluation."""
    args = make_args(tmp_path, max_steps=1, losses=RELATIONAL, eval_strategy="steps", eval_steps=1)
    with pytest.raises(RecipeError, match=r"the evaluation set has 2 image\(s\), and rcka relates .* at least 3"):
        make_trainer(args, evaluation=pixel_dataset(2, seed=1)).train()


def test_a_short_last_evaluation_batch_counts_in_no_relation_over_samples(tmp_path, caplog):
    """10 images in batches of 4, 4 and 2: over the last 2 rcka's intra term is a constant, so its mean
    is over the first 8 images; its inter term (classes) and the others still count all 10."""
    trainer = make_trainer(make_args(tmp_path, per_device_eval_batch_size=4, losses=RELATIONAL))
    data = pixel_dataset(10, seed=1)
    with caplog.at_level("WARNING", logger="hf_rcka"):
        whole, first8, last2 = (trainer.evaluate(d) for d in (data, data.select(range(8)), data.select(range(8, 10))))
    # evaluate() takes a set of 2, and says which terms it leaves out (once)
    assert caplog.text.count("the evaluation set has 2 image(s): rcka, feature_cka relate the samples") == 1
    for relational in ("eval_rcka_intra_loss", "eval_feature_cka_loss"):
        assert whole[relational] == pytest.approx(first8[relational], rel=1e-5)
        assert relational not in last2, "a term measured on no batch is not reported"
    for other in ("eval_ce_loss", "eval_rcka_inter_loss"):
        assert whole[other] == pytest.approx(0.8 * first8[other] + 0.2 * last2[other], rel=1e-4)
    terms = [whole[f"eval_{n}_loss"] for n in ("ce", "rcka_intra", "rcka_inter", "feature_cka")]
    assert whole["eval_loss"] == pytest.approx(sum(terms), rel=1e-5)


class _Args:
    def __init__(self, batch, drop_last=False, world_size=1):
        self.train_batch_size, self.dataloader_drop_last, self.world_size = batch, drop_last, world_size


@pytest.mark.parametrize("images, losses, dropped", [
    (22, {"rcka": RCKALoss()}, True),  # last batch of 2: a constant
    (23, {"rcka": RCKALoss()}, False),  # of 3
    (21, {"feature_cka": FeatureCKALoss(center=False)}, True),  # uncentred: 1 is too few, 2 enough
    (22, {"feature_cka": FeatureCKALoss(center=False)}, False),
    (22, {"rcka": RCKALoss(intra_weight=0.0)}, False),  # relates classes only
    (22, {}, False),
])
def test_a_short_last_training_batch_is_dropped_when_a_relation_needs_more(images, losses, dropped, caplog):
    """A last batch of 2 made that step's relational terms constants: the logged terms jumped
    (feature_cka 0.10 -> 6.0) and nothing was distilled through them."""
    args = _Args(batch=4)
    with caplog.at_level(logging.INFO, logger="hf_rcka"):
        check_training_batches(images, args, 0, tiny_vit(), losses)
    assert args.dataloader_drop_last is dropped
    assert ("it is dropped (dataloader_drop_last)" in caplog.text) is dropped


def test_a_lone_last_image_is_still_dropped_for_batchnorm_and_padded_batches_are_kept():
    args = _Args(batch=4)
    check_training_batches(21, args, 0, tiny_resnet(), {})
    assert args.dataloader_drop_last
    padded = _Args(batch=4, world_size=2)  # Trainer's sampler under data parallelism pads the last batches
    check_training_batches(22, padded, 0, tiny_vit(), {"rcka": RCKALoss()})
    assert not padded.dataloader_drop_last


def test_train_drops_the_short_last_batch_itself(tmp_path):
    """The Python API had no such check: only the command line dropped a lone BatchNorm image."""
    args = make_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=1, losses=RELATIONAL)
    trainer = make_trainer(args, train=pixel_dataset(22, seed=0))
    trainer.train()
    assert trainer.args.dataloader_drop_last and trainer.state.global_step == 5
    assert all(e["rcka_intra_loss"] > 0 for e in trainer.state.log_history if "rcka_intra_loss" in e)


def test_a_whole_number_of_batches_keeps_every_image(tmp_path):
    """Positive control: nothing is dropped when the split is a multiple of the batch."""
    args = make_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=1, losses=RELATIONAL)
    trainer = make_trainer(args, train=pixel_dataset(20, seed=0))
    trainer.train()
    assert not trainer.args.dataloader_drop_last and trainer.state.global_step == 5
    assert torch.isfinite(torch.tensor([e["loss"] for e in trainer.state.log_history if "loss" in e])).all()


def test_training_data_without_a_length_gets_the_checks_it_can(tmp_path, caplog):
    """An iterable dataset skipped every batch check: aug_repeats made no repeats (no sampler), an
    evaluation set with a 'label' key evaluated to no accuracy and no loss, and a last batch too small
    for the relations passed without a word."""
    from hf_rcka.augmentation import AugmentationArguments
    from hf_rcka.errors import DataError

    stream = pixel_dataset(10).to_iterable_dataset()
    args = make_args(tmp_path, max_steps=2, per_device_train_batch_size=4, losses=RELATIONAL)
    with caplog.at_level(logging.WARNING):
        make_trainer(args, train=stream).train()
    assert "the training data has no length, so the size of each pass's last batch is not checked" in caplog.text
    assert "a batch under 3 images leaves rcka, feature_cka constant" in caplog.text
    repeated = make_trainer(args, train=stream, augmentation=AugmentationArguments(aug_repeats=3))
    with pytest.raises(RecipeError, match="aug_repeats: 3 repeats images drawn by a sampler, and the training data "
                                          "has no length"):
        repeated.train()
    mislabelled = pixel_dataset(6).with_format(None).rename_column("labels", "label").with_format("torch")
    with pytest.raises(DataError, match=r"eval_dataset: its items have no \['labels'\]"):
        make_trainer(args, evaluation=mislabelled.to_iterable_dataset())
    # a training stream is not read ahead: a shuffled one filled its whole buffer for one item
    read = []
    shuffled = stream.map(lambda item: read.append(1) or item).shuffle(seed=0, buffer_size=8)
    make_trainer(args, train=shuffled)
    assert read == [], "constructing the trainer read the training stream"


def _parallel_args(**settings):
    """What the batch checks read of a 2-process run's arguments (TrainingArguments reads the
    process count from the launcher)."""
    from types import SimpleNamespace

    from transformers.trainer_pt_utils import AcceleratorConfig

    accelerator = AcceleratorConfig(**{k: settings.pop(k) for k in ("split_batches", "dispatch_batches") if k in settings})
    return SimpleNamespace(world_size=2, accelerator_config=accelerator, **settings)


def test_split_batches_gives_each_process_part_of_the_batch_the_relations_are_checked_on():
    """4 images split over 2 processes left 2 per relation: rcka_intra logged 0.0 every step and
    nothing was distilled, where the same 2 rows without split_batches were refused."""
    from hf_rcka.trainer.batch_rows import check_relation_rows

    losses = {"rcka": RCKALoss()}
    with pytest.raises(RecipeError, match=r"a relation over 2 sample\(s\) is a constant .* Use per_device_train_batch_"
                                          r"size >= 6 \(split_batches gives each of the 2 processes 1/2 of it\)"):
        check_relation_rows(losses, _parallel_args(split_batches=True, per_device_train_batch_size=4))
    check_relation_rows(losses, _parallel_args(split_batches=True, per_device_train_batch_size=6))
    check_relation_rows(losses, _parallel_args(per_device_train_batch_size=4))
    # gathered, the shares make one relation: a batch of 4 (2 + 2) is enough
    with pytest.raises(RecipeError, match=r"Use per_device_train_batch_size >= 4 \(split_batches"):
        check_relation_rows({"rcka": RCKALoss(gather=True)}, _parallel_args(split_batches=True, per_device_train_batch_size=2))
    check_relation_rows({"rcka": RCKALoss(gather=True)}, _parallel_args(split_batches=True, per_device_train_batch_size=4))


def test_split_batches_share_is_what_mixup_and_the_last_batch_checks_see():
    """Mixup on 2 images split over 2 processes mixed nothing (1 row each), said nothing; a drop_last
    run of 12 images at 8 split over 2 was refused as fewer than one batch of 16."""
    from types import SimpleNamespace

    from hf_rcka.cli.preflight import check_mixing_batch

    mixing = SimpleNamespace(mixup_active=True)
    with pytest.raises(RecipeError, match="a batch of one mixes nothing"):
        check_mixing_batch(mixing, _parallel_args(split_batches=True, per_device_train_batch_size=2, do_train=True))
    check_mixing_batch(mixing, _parallel_args(per_device_train_batch_size=2, do_train=True))
    student = tiny_vit()
    split = _parallel_args(split_batches=True, train_batch_size=8, dataloader_drop_last=True)
    check_training_batches(12, split, 0, student, {})
    with pytest.raises(Exception, match=r"fewer than one batch \(16\)"):
        check_training_batches(12, _parallel_args(train_batch_size=8, dataloader_drop_last=True), 0, student, {})


def test_data_parallel_settings_that_share_the_data_out_wrongly_are_refused():
    from hf_rcka.data.sampler import check_iterable_dispatch, check_repeats_unsplit

    # the repeated-augmentation sampler's batches are whole per process: trained at twice the reported batch
    with pytest.raises(RecipeError, match="aug_repeats with accelerator_config split_batches"):
        check_repeats_unsplit(2, _parallel_args(split_batches=True))
    check_repeats_unsplit(0, _parallel_args(split_batches=True))
    check_repeats_unsplit(2, _parallel_args())
    # each process read the stream itself: uneven shards in training, counted repeats in evaluation
    stream, table = pixel_dataset(4).to_iterable_dataset(), pixel_dataset(4)
    with pytest.raises(RecipeError, match="dispatch_batches: false with an iterable dataset"):
        check_iterable_dispatch(_parallel_args(dispatch_batches=False), [table, stream])
    check_iterable_dispatch(_parallel_args(dispatch_batches=False), [table, None])
    check_iterable_dispatch(_parallel_args(), [stream])


def test_batch_settings_that_hang_or_fail_inside_transformers_are_refused(tmp_path):
    from transformers.trainer_pt_utils import AcceleratorConfig

    from hf_rcka.training_values import check_batch_settings

    with pytest.raises(RecipeError, match="group_by_length groups text by its number of tokens"):
        make_args(tmp_path, train_sampling_strategy="group_by_length")
    uneven = _parallel_args(per_device_train_batch_size=4, per_device_eval_batch_size=4)
    uneven.accelerator_config = AcceleratorConfig(even_batches=False)
    with pytest.raises(RecipeError, match="even_batches: false is not supported"):
        check_batch_settings(uneven)
    make_args(tmp_path, accelerator_config={"even_batches": False})  # one process: nothing to even out


def test_resuming_on_a_stream_says_where_the_resume_lands(tmp_path, caplog):
    """Trainer skips the trained batches from the stream's start: past the first pass it resumed
    elsewhere than where the run stopped, and said nothing."""
    args = make_args(tmp_path, max_steps=2, per_device_train_batch_size=4)
    trainer = make_trainer(args, train=pixel_dataset(8).to_iterable_dataset())
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError):  # no such checkpoint: Trainer refuses after
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert "resuming on training data without a length" in caplog.text


# a split of exactly one batch trains one step under drop_last
def test_a_split_of_exactly_one_batch_is_kept_under_drop_last():
    from types import SimpleNamespace

    from hf_rcka.errors import DataError
    from hf_rcka.trainer.batch_rows import check_training_batches

    args = SimpleNamespace(train_batch_size=4, dataloader_drop_last=True, world_size=1)
    check_training_batches(4, args, 0, torch.nn.Linear(2, 2), {})  # one whole batch: nothing dropped
    with pytest.raises(DataError, match=r"fewer than one batch \(4\)"):
        check_training_batches(3, args, 0, torch.nn.Linear(2, 2), {})


@pytest.mark.parametrize("images, drop_last, refused", [(40, False, False), (39, False, False), (39, True, True),
                                                        (30, False, True)])
def test_an_accumulation_longer_than_an_epoch_is_refused(images, drop_last, refused):
    """Trainer ends each accumulation with the epoch: 50 accumulation steps over 20 batches an epoch
    summed 1257 images a step, and the card, the recorded recipe and lr_base counted 3200."""
    from types import SimpleNamespace

    args = SimpleNamespace(train_batch_size=4, dataloader_drop_last=drop_last, world_size=1,
                           gradient_accumulation_steps=10)
    if not refused:
        check_training_batches(images, args, 0, torch.nn.Linear(2, 2), {})
        return
    with pytest.raises(RecipeError, match=r"gradient_accumulation_steps is 10, and an epoch holds [89] training "
                                          r"batch\(es\) of 4 images.*Set gradient_accumulation_steps to [89] or less"):
        check_training_batches(images, args, 0, torch.nn.Linear(2, 2), {})


def test_an_odd_mixing_batch_is_said_and_an_even_one_is_not(caplog):
    """An odd batch leaves one image of every step unmixed: the warning could be dropped with every
    test passing (only the batch of one is tested)."""
    import logging
    from types import SimpleNamespace

    from hf_rcka.cli.preflight import check_mixing_batch

    mixing = SimpleNamespace(mixup_active=True)
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        check_mixing_batch(mixing, _parallel_args(per_device_train_batch_size=4, do_train=True))
    assert "odd" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        check_mixing_batch(mixing, _parallel_args(per_device_train_batch_size=3, do_train=True))
    assert "per_device_train_batch_size is 3, odd: mixup/cutmix leave one image of every batch unmixed" in caplog.text


def test_an_evaluation_only_run_with_mixing_settings_is_not_refused_for_its_batch():
    """Mixing happens in training only: an evaluation-only run of a mixup recipe at batch 1 runs."""
    from types import SimpleNamespace

    from hf_rcka.cli.preflight import check_mixing_batch

    check_mixing_batch(SimpleNamespace(mixup_active=True), _parallel_args(per_device_train_batch_size=1, do_train=False))


def test_a_last_batch_dropped_for_batchnorm_counts_in_the_accumulation_check():
    """37 images at 4 leave a last batch of 1, which a BatchNorm student drops: 9 batches an epoch, fewer
    than 10 accumulation steps. Counted before the drop (10 batches), the run summed 36 images a step."""
    from types import SimpleNamespace

    args = SimpleNamespace(train_batch_size=4, dataloader_drop_last=False, world_size=1, gradient_accumulation_steps=10)
    with pytest.raises(RecipeError, match=r"an epoch holds 9 training batch"):
        check_training_batches(37, args, 0, tiny_resnet(), {})


def test_a_lone_last_image_of_a_student_without_batchnorm_is_kept(caplog):
    """Only BatchNorm fails on a batch of 1: a ViT student (no relational loss) at 21 images in batches
    of 4 trains on all 21. Dropping the lone image for every student lost it each epoch, with a log line
    blaming a BatchNorm the student does not have."""
    from types import SimpleNamespace

    args = SimpleNamespace(train_batch_size=4, dataloader_drop_last=False, world_size=1, gradient_accumulation_steps=1)
    with caplog.at_level(logging.INFO, logger="hf_rcka"):
        check_training_batches(21, args, 0, torch.nn.Linear(2, 2), {})
    assert not args.dataloader_drop_last and "dropped" not in caplog.text
    check_training_batches(21, args, 0, torch.nn.BatchNorm1d(2), {})
    assert args.dataloader_drop_last


def test_eval_on_start_alone_counts_as_evaluating():
    """eval_strategy: no with eval_on_start: true evaluates before the first step: the evaluation
    batch and set checks were skipped for it, and a batch of 2 reported rcka_intra as a perfect match."""
    from types import SimpleNamespace

    from hf_rcka.trainer.batch_rows import evaluates

    assert evaluates(SimpleNamespace(eval_strategy="no", do_eval=False, eval_on_start=True))
    assert evaluates(SimpleNamespace(eval_strategy="no", do_eval=True, eval_on_start=False))
    assert evaluates(SimpleNamespace(eval_strategy="steps", do_eval=False, eval_on_start=False))
    assert not evaluates(SimpleNamespace(eval_strategy="no", do_eval=False, eval_on_start=False))


def test_a_gathered_relation_on_an_evaluation_set_too_small_for_it_is_refused():
    """The evaluation set is counted whole, not per process: with gather: true over 2 processes, an
    evaluation set of 2 images relates 2 samples at most (a constant); counted as a batch on each
    process and multiplied by the processes, it passed."""
    from hf_rcka.trainer.batch_rows import check_evaluation_rows

    args = _parallel_args(per_device_eval_batch_size=4)
    with pytest.raises(RecipeError, match=r"the evaluation set has 2 image\(s\), and rcka relates"):
        check_evaluation_rows({"rcka": RCKALoss(gather=True)}, args, 2)
    check_evaluation_rows({"rcka": RCKALoss(gather=True)}, args, 3)


def test_one_process_may_split_batches_under_repeats_and_read_a_stream_itself():
    """With one process nothing is shared out: split_batches beside aug_repeats, and dispatch_batches:
    false beside an iterable dataset, change nothing and were refused all the same (kills: the process
    count dropped from either check)."""
    from types import SimpleNamespace

    from transformers.trainer_pt_utils import AcceleratorConfig

    from hf_rcka.data.sampler import check_iterable_dispatch, check_repeats_unsplit

    alone = SimpleNamespace(world_size=1, accelerator_config=AcceleratorConfig(split_batches=True, dispatch_batches=False))
    check_repeats_unsplit(2, alone)
    check_iterable_dispatch(alone, [pixel_dataset(4).to_iterable_dataset()])
