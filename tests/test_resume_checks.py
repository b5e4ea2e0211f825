"""A checkpoint resumes the run that wrote it: what the resume compares before anything loads (the
recipe, the learning rate, the epoch's length) and how it names a checkpoint it cannot use. Each
test here failed when one comparison in the checks was loosened or left out."""

import json
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import save_file

from hf_rcka.cli.recipe import parse_arguments
from hf_rcka.cli.resume_checks import _earlier, check_checkpoint, check_resume_rate, check_resume_recipe
from hf_rcka.errors import ModelError, RecipeError
from hf_rcka.trainer.resume_match import (
    BATCH_RECORD_NAME, check_epoch_steps, check_optimizer_settings, check_restored_rates,
)

BASE = {"model_name_or_path": "config:vit", "output_dir": "unused", "dataset_name": "builtin:digits"}


def resume(tmp_path, recorded_extra: dict, **changes) -> None:
    """check_resume_recipe of a run recorded with a small recipe plus ``recorded_extra``, resumed
    with the same settings plus ``changes``."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    recorded = {"model_name_or_path": "config:resnet", "dataset_name": "builtin:digits", "output_dir": str(run),
                **recorded_extra}
    (run / "distill_config.yaml").write_text(yaml.safe_dump(recorded))
    values = {"model_name_or_path": "config:resnet", "student_from_scratch": False, "teacher_model_name_or_path": None,
              "teacher_config_overrides": None, "teacher_label_mapping": "by_name", "image_size": None,
              "student_config_overrides": None, "dataset_name": "builtin:digits", "dataset_config_name": None,
              "feature_pairs": None, "losses": None, "seed": 42, "data_seed": None, "aug_repeats": 0,
              "max_train_samples": None, "label_smoothing_factor": 0.0, "label_column_name": "label", **changes}
    namespace = SimpleNamespace(**values)
    check_resume_recipe(str(run), namespace, namespace, namespace)


def test_an_image_folder_run_recorded_with_a_dataset_config_resumes_without_it(tmp_path):
    """dataset_config_name beside train_dir was accepted and ignored before it was refused: such a
    run's recorded recipe is now refused, and resumed without the setting it was refused as another
    configuration ('full' -> 'default'), so its checkpoints could not be resumed at all."""
    (tmp_path / "images").mkdir()
    resume(tmp_path, {"dataset_name": None, "train_dir": str(tmp_path / "images"), "dataset_config_name": "full"},
           dataset_name=None, dataset_config_name=None)


def test_an_empty_overrides_mapping_is_an_unset_one(tmp_path):
    """Not a change: a record that wrote ``student_config_overrides: {}`` resumes with it unset."""
    resume(tmp_path, {"student_config_overrides": {}})
    resume(tmp_path, {}, student_config_overrides={})


@pytest.mark.parametrize("recorded,changes,message", [
    ({"max_train_samples": 100}, {"max_train_samples": 200}, "max_train_samples 100 -> 200"),
    ({"seed": 1}, {"seed": 2}, "seed 1 -> 2"),
], ids=["max_train_samples", "seed"])
def test_a_resume_that_draws_another_epoch_is_refused(tmp_path, recorded, changes, message):
    """The order of the epoch being resumed is drawn from the seed and the training subset: another
    one skips and repeats images."""
    with pytest.raises(RecipeError, match=f"other settings \\({message}\\)"):
        resume(tmp_path, recorded, **changes)


def test_a_dataset_folder_may_move_but_not_change_its_configuration(tmp_path):
    """A folder's path is not compared (a run resumed on another machine), its configuration is: a
    local dataset with configurations of its own, resumed on another one, trained other images under
    a record naming the first."""
    old, new = tmp_path / "old_data", tmp_path / "new_data"
    old.mkdir()
    new.mkdir()
    resume(tmp_path, {"dataset_name": str(old), "dataset_config_name": "clean"},
           dataset_name=str(new), dataset_config_name="clean")
    with pytest.raises(RecipeError, match="dataset_config_name 'clean' -> 'noisy'"):
        resume(tmp_path, {"dataset_name": str(old), "dataset_config_name": "clean"},
               dataset_name=str(old), dataset_config_name="noisy")
    # datasets names an unnamed configuration "default" (a folder of parquet files)
    resume(tmp_path, {"dataset_name": str(old), "dataset_config_name": "default"}, dataset_name=str(new))
    # a Hub dataset's copy saved to disk has no configurations to give: not compared
    resume(tmp_path, {"dataset_name": "acme/flowers", "dataset_config_name": "full"}, dataset_name=str(new))
    with pytest.raises(RecipeError, match="dataset_config_name 'full' -> 'small'"):
        resume(tmp_path, {"dataset_name": "acme/flowers", "dataset_config_name": "full"},
               dataset_name="acme/flowers", dataset_config_name="small")


def test_a_whole_weights_only_checkpoint_is_not_called_a_save_cut_short(tmp_path):
    """A checkpoint saved with save_only_model is whole: the fix is another checkpoint or new run,
    not deleting it as half-written."""
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    save_file({"w": torch.zeros(2)}, str(checkpoint / "model.safetensors"))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    with pytest.raises(ModelError, match=r"is not a checkpoint \(it holds no optimizer and scheduler state\)"):
        check_checkpoint(str(checkpoint))


def test_a_broken_checkpoint_names_the_latest_earlier_one_by_step(tmp_path):
    for step in (9, 10, 12):  # by name, checkpoint-9 sorts after checkpoint-10
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert f"--resume_from_checkpoint {tmp_path / 'checkpoint-10'} " in _earlier(str(tmp_path / "checkpoint-12"))


def test_a_resume_at_a_slightly_other_learning_rate_is_refused(tmp_path):
    torch.save({"base_lrs": [0.01], "last_epoch": 2}, tmp_path / "scheduler.pt")
    _, _, same = parse_arguments({**BASE, "learning_rate": 0.01})
    check_resume_rate(str(tmp_path), same)
    _, _, other = parse_arguments({**BASE, "learning_rate": 0.0105})
    with pytest.raises(RecipeError, match="was trained at a learning rate of 0.01, and this run sets 0.0105"):
        check_resume_rate(str(tmp_path), other)


def test_a_resume_that_changes_one_groups_rate_is_refused(tmp_path):
    torch.save({"base_lrs": [0.01, 0.001], "last_epoch": 2}, tmp_path / "scheduler.pt")
    check_restored_rates(str(tmp_path), [0.01, 0.001])
    with pytest.raises(RecipeError, match="was trained at a learning rate of"):
        check_restored_rates(str(tmp_path), [0.01, 0.002])


def test_a_python_resume_at_a_slightly_other_rate_is_refused_as_the_command_lines_is(tmp_path):
    """The trainer's rate check was tested only on rates far apart (0.001 against 0.002): a
    tolerance of 10% would let a Python resume at 0.0105 go on at the checkpoint's 0.01, the new
    rate recorded and never applied, where the command line refuses it."""
    torch.save({"base_lrs": [0.01, 0.01], "last_epoch": 2}, tmp_path / "scheduler.pt")
    check_restored_rates(str(tmp_path), [0.01, 0.01 * (1 + 1e-9)])
    with pytest.raises(RecipeError, match="was trained at a learning rate of 0.01, and this run sets 0.0105"):
        check_restored_rates(str(tmp_path), [0.0105, 0.0105])


def test_a_checkpoint_whose_schedule_keeps_no_base_rates_resumes(tmp_path):
    """reduce_lr_on_plateau's scheduler.pt holds no ``base_lrs``: with no rate to compare, its
    resume at its own rate must go on (compared with an empty list, it would end in max()'s
    ValueError traceback before anything loaded)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([parameter], lr=0.01))
    torch.save(schedule.state_dict(), tmp_path / "scheduler.pt")
    _, _, same = parse_arguments({**BASE, "learning_rate": 0.01})
    check_resume_rate(str(tmp_path), same)
    check_restored_rates(str(tmp_path), [0.01])
    # the rates it started from, which its batch record holds, are compared instead (resumed at 0.5,
    # such a run went on at the checkpoint's 0.01 with nothing said)
    (tmp_path / BATCH_RECORD_NAME).write_text(json.dumps({"global_batch": 8, "processes": 1, "starting_rates": [0.01]}))
    check_resume_rate(str(tmp_path), same)
    _, _, other = parse_arguments({**BASE, "learning_rate": 0.5})
    for check in (lambda: check_resume_rate(str(tmp_path), other), lambda: check_restored_rates(str(tmp_path), [0.5])):
        with pytest.raises(RecipeError, match="trained at a learning rate of 0.01, and this run sets 0.5"):
            check()


def test_a_resume_with_longer_or_shorter_epochs_is_refused(tmp_path):
    (tmp_path / BATCH_RECORD_NAME).write_text(json.dumps({"global_batch": 8, "processes": 1, "epoch_steps": 10}))
    check_epoch_steps(str(tmp_path), 10)
    check_epoch_steps(str(tmp_path), None)
    for steps in (9, 12):
        with pytest.raises(RecipeError, match=f"trained with 10 optimizer steps per epoch, and this run plans {steps}"):
            check_epoch_steps(str(tmp_path), steps)


def test_a_batch_record_cut_short_or_emptied_is_one_error(tmp_path):
    """An empty or cut-short global_batch.json ended in a JSONDecodeError traceback, and one that
    held no mapping in an AttributeError; an earlier version's checkpoint, without one, is compared
    with nothing."""
    check_epoch_steps(str(tmp_path), 10)  # none: nothing to compare
    for text in ("", "{", "null", "[8]"):
        (tmp_path / BATCH_RECORD_NAME).write_text(text)
        with pytest.raises(RecipeError, match="holds no record of the checkpoint's batch .*resume from another checkpoint"):
            check_epoch_steps(str(tmp_path), 10)


def test_a_resume_that_changes_one_value_of_a_pair_setting_is_refused():
    """Adam's betas are one setting of two values: a resume at adam_beta2 0.99 from a checkpoint
    trained at 0.999 would keep the checkpoint's 0.999 while the recipe recorded 0.99, were only
    the first value compared. The same pair, as a tuple or a list, is the same setting."""
    restored = [{"betas": (0.9, 0.999), "weight_decay": 0.05}]
    check_optimizer_settings("ckpt", [{"betas": [0.9, 0.999], "weight_decay": 0.05}], restored)
    with pytest.raises(RecipeError, match=r"restores its optimizer with betas \(0.9, 0.999\) \(this run: \(0.9, 0.99\)\)"):
        check_optimizer_settings("ckpt", [{"betas": (0.9, 0.99), "weight_decay": 0.05}], restored)


def test_each_earlier_default_is_an_option_whose_default_changed():
    """An entry that names no option, or the current default, would excuse any record from the
    comparison of that option without a reason."""
    from hf_rcka.recipe_specs import EARLIER_DEFAULTS
    from hf_rcka.registry import LOSSES

    for (loss, option), (earlier, _since) in EARLIER_DEFAULTS.items():
        assert LOSSES.default(loss, option) != earlier, (loss, option)


def test_a_checkpoint_without_a_batch_record_resumes_uncompared_and_one_with_it_is_compared(tmp_path, caplog):
    """An earlier version's checkpoint records no batch: its resume is neither refused for another
    global batch nor said to split the batch otherwise (an absent record read as an empty one
    compared its missing batch and processes with this launch's). A record is compared."""
    from hf_rcka.trainer.resume_match import check_resume_batch, warn_other_split

    launch = SimpleNamespace(world_size=1, train_batch_size=4, gradient_accumulation_steps=1,
                             accelerator_config=SimpleNamespace(split_batches=False))
    with caplog.at_level("WARNING", logger="hf_rcka"):
        check_resume_batch(str(tmp_path), launch)
        warn_other_split(str(tmp_path), launch, 4)
    assert not caplog.text
    (tmp_path / BATCH_RECORD_NAME).write_text(json.dumps({"global_batch": 8, "processes": 2, "forward_batch": 4}))
    with pytest.raises(RecipeError, match=r"global batch of 8 \(2 processes\); this launch gives 4 images"):
        check_resume_batch(str(tmp_path), launch)


def test_a_checkpoint_without_weights_is_refused_before_loading_naming_the_one_before(tmp_path):
    """A checkpoint with its optimizer, scheduler and trainer state but no .safetensors weights (a
    save that lost them, a bin-only copy) passed the check and failed as the models loaded, with no
    hint of the earlier checkpoint that would do."""
    (tmp_path / "checkpoint-2").mkdir()
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({"state": {}}, checkpoint / name)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    with pytest.raises(ModelError, match=r"holds no \.safetensors weights: .*--resume_from_checkpoint .*checkpoint-2 "):
        check_checkpoint(str(checkpoint))
    save_file({"w": torch.zeros(2)}, str(checkpoint / "model.safetensors"))
    check_checkpoint(str(checkpoint))  # whole: nothing to say


def test_a_record_that_names_no_student_resumes_with_the_one_given(tmp_path):
    """A recorded recipe that leaves model_name_or_path out says nothing of the student (its weights
    are compared as the checkpoint loads): a resume naming one was refused as "another student"."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "distill_config.yaml").write_text(yaml.safe_dump({"dataset_name": "builtin:digits", "output_dir": str(run)}))
    values = {"model_name_or_path": "config:resnet", "student_from_scratch": False, "teacher_model_name_or_path": None,
              "teacher_config_overrides": None, "teacher_label_mapping": "by_name", "image_size": None,
              "student_config_overrides": None, "dataset_name": "builtin:digits", "dataset_config_name": None,
              "feature_pairs": None, "losses": None, "seed": 42, "data_seed": None, "aug_repeats": 0,
              "max_train_samples": None, "label_smoothing_factor": 0.0, "label_column_name": "label"}
    namespace = SimpleNamespace(**values)
    check_resume_recipe(str(run), namespace, namespace, namespace)
    with pytest.raises(RecipeError, match="seed 42 -> 7"):  # the record is compared all the same
        namespace = SimpleNamespace(**{**values, "seed": 7})
        check_resume_recipe(str(run), namespace, namespace, namespace)


def test_an_image_size_left_unset_on_one_side_is_not_a_change(tmp_path):
    """An unset image_size is the processor's own size, which the other side's spelt-out one may
    equal: a run recorded with image_size 224 and resumed without it (or the other way round) was
    refused as another image size. Two sizes spelt out and different still are."""
    resume(tmp_path, {"image_size": 224})
    resume(tmp_path, {}, image_size=224)
    with pytest.raises(RecipeError, match="image_size 224 -> 160"):
        resume(tmp_path, {"image_size": 224}, image_size=160)


def test_a_teacher_label_mapping_left_null_is_by_name(tmp_path):
    """A teacher_label_mapping of None (a record holding null, a Python run that sets None) maps by
    name: a run recorded so and resumed with by_name (or the other way round) was refused as another
    mapping. by_index is another."""
    resume(tmp_path, {"teacher_label_mapping": None})
    resume(tmp_path, {"teacher_label_mapping": "by_name"}, teacher_label_mapping=None)
    with pytest.raises(RecipeError, match="teacher_label_mapping 'by_name' -> 'by_index'"):
        resume(tmp_path, {}, teacher_label_mapping="by_index")


def test_a_dataset_folder_moved_from_a_path_gone_here_keeps_its_configuration(tmp_path):
    """A run resumed on another machine: its record names the folder by an absolute path that does
    not exist here. That path is still a folder on disk, so the configuration is compared with the
    folder's here; read as a Hub id, the configuration went uncompared and another one trained."""
    here = tmp_path / "data"
    here.mkdir()
    gone = str(tmp_path / "elsewhere" / "data")
    resume(tmp_path, {"dataset_name": gone, "dataset_config_name": "clean"}, dataset_name=str(here),
           dataset_config_name="clean")
    with pytest.raises(RecipeError, match="dataset_config_name 'clean' -> 'noisy'"):
        resume(tmp_path, {"dataset_name": gone, "dataset_config_name": "clean"}, dataset_name=str(here),
               dataset_config_name="noisy")


def test_a_broken_checkpoint_never_names_a_later_one(tmp_path):
    """A broken checkpoint given by name, with later ones beside it: the fix names the latest one
    before it, never a later one (which trained on from it, or from another launch)."""
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    hint = _earlier(str(tmp_path / "checkpoint-4"))
    assert f"--resume_from_checkpoint {tmp_path / 'checkpoint-2'} " in hint and "checkpoint-6" not in hint
    assert "start again without resume_from_checkpoint" in _earlier(str(tmp_path / "checkpoint-2"))


def test_another_split_seed_is_refused_only_where_the_split_is_carved(tmp_path):
    """split_seed and train_val_split choose the held-out images only when the split is carved: data
    with a validation split of its own (or a validation_dir) resumes with any of them. Checking them
    there refused a resume whose evaluation images had not changed."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.resume_checks import check_resume_split

    run = tmp_path / "run"
    run.mkdir()
    (run / "distill_config.yaml").write_text(yaml.safe_dump(
        {"model_name_or_path": "config:resnet", "dataset_name": "builtin:digits", "output_dir": str(run),
         "split_seed": 1}))
    data_args = DataArguments(dataset_name="builtin:digits", split_seed=2)
    check_resume_split(str(run), data_args, carved=False)
    with pytest.raises(RecipeError, match="split_seed 1"):
        check_resume_split(str(run), data_args, carved=True)


def test_a_resume_with_other_teacher_config_overrides_is_refused(tmp_path):
    """Other teacher_config_overrides build another teacher (a config: teacher's size, a dropout):
    a resume with them trained on under a record naming the first."""
    with pytest.raises(RecipeError, match=r"teacher_config_overrides \{'hidden_size': 32\} -> \{'hidden_size': 64\}"):
        resume(tmp_path, {"teacher_config_overrides": {"hidden_size": 32}},
               teacher_config_overrides={"hidden_size": 64})
    resume(tmp_path, {"teacher_config_overrides": {"hidden_size": 32}}, teacher_config_overrides={"hidden_size": 32})
