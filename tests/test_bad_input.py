"""One test per class of user error: one ``error:`` line naming the key/path, exit 2, nothing done.

Errors the recipe alone decides must come before any model or dataset loads: ``no_loading``
makes loading fail the test, and the output folder must not exist afterwards.
"""

import json
import logging
import os
import re
import threading
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from transformers.training_args import OptimizerNames

import hf_rcka.cli.job as cli
import hf_rcka.cli.run_inputs as run_inputs
from hf_rcka.cli import main as cli_main
from hf_rcka.cli.main import main
from hf_rcka.errors import DataError, ModelError, RecipeError
from hf_rcka.training_values import check_optim_target_modules

TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 12, 16, 20], "depths": [1, 1, 1, 1], "layer_type": "basic"}
TINY_VIT = {"hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 44,
            "image_size": 16, "patch_size": 4}


def base(tmp_path: Path, **changes) -> dict:
    recipe = {
        "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET, "image_size": 16,
        "dataset_name": "builtin:digits", "no_aug": True, "max_train_samples": 20, "max_eval_samples": 10,
        "max_steps": 2, "per_device_train_batch_size": 5, "per_device_eval_batch_size": 5, "report_to": "none",
        "use_cpu": True, "output_dir": str(tmp_path / "out"), "teacher_accuracy_check": "off",
        "student_accuracy_check": "warn",  # 2 steps: at chance
    }
    recipe.update(changes)
    return {k: v for k, v in recipe.items() if v is not None}


def run(tmp_path: Path, recipe: dict, *flags: str) -> int:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return main([str(path), *flags])


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model or dataset was loaded before the recipe was checked")

    for name in ("load_image_classifier", "load_image_processor"):
        monkeypatch.setattr(cli, name, refuse)
    monkeypatch.setattr(run_inputs, "load_raw_datasets", refuse)


def error_of(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err[-5:]
    assert "Traceback" not in "\n".join(err), "user errors print no traceback"
    return err[-1]


def image_folder(root: Path, classes: list[str], per_class: int = 4) -> str:
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (60 * k, 20 * i, 100)).save(root / name / f"{i}.png")
    return str(root)


# ------------------------------------------------------------------ checked before anything loads

@pytest.mark.parametrize("key,value,expected", [
    ("label_smoothing_factor", 1.5, "label_smoothing_factor must be in [0, 1), got 1.5"),
    ("label_smoothing_factor", 1.0, "label_smoothing_factor must be in [0, 1), got 1.0"),  # every target uniform
    ("learning_rate", -1e-3, "learning_rate must be >= 0 and finite, got -0.001"),
    ("per_device_train_batch_size", 0, "per_device_train_batch_size must be >= 1, got 0"),
    ("max_steps", 0, "max_steps must be > 0, or -1 to train num_train_epochs, got 0"),
    ("max_bad_images", -1, "max_bad_images must be >= 0"),
    ("split_seed", -1, "split_seed must be an integer >= 0, got -1"),
    ("teacher_label_mapping", "by_nmae", "teacher_label_mapping must be 'by_name' or 'by_index'"),
    # TrainingArguments' Enum | str settings: the line named no setting ("step is not a valid IntervalStrategy")
    ("eval_strategy", "step", "eval_strategy: 'step' is not valid: did you mean 'steps'"),
    ("lr_scheduler_type", "cosin", "lr_scheduler_type: 'cosin' is not valid: did you mean 'cosine'"),
    ("accelerator_config", "acc.jsn", "accelerator_config 'acc.jsn' is not a file"),  # was a traceback
    # round 37: numpy's "Seed must be between 0 and 2**32 - 1", a traceback (exit 1) once the output folder was taken
    ("seed", -1, "seed must be in [0, 2**32 - 1], got -1"),
    # transformers' "Default process group has not been initialized", which named neither the key nor the fix
    ("ddp_backend", "gloo", "ddp_backend: gloo is the backend of a multi-process launch's process group, and this is "
                            "one process"),
])
def test_values_out_of_range(tmp_path, capsys, no_loading, key, value, expected):
    assert run(tmp_path, base(tmp_path, **{key: value})) == 2
    assert expected in error_of(capsys)
    assert not (tmp_path / "out").exists()


def test_fp16_on_cpu_and_losses_that_all_weigh_zero(tmp_path, capsys, no_loading):
    assert run(tmp_path, base(tmp_path, fp16=True)) == 2
    assert "fp16 needs a GPU (on CPU it would silently train in float32): set bf16: true with use_cpu: true for CPU " \
           "autocast, or fp16: false" in error_of(capsys)
    zero = [{"name": "ce", "weight": 0}, {"name": "kd", "weight": 0.0}]
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path="config:resnet", losses=zero)) == 2
    assert "every loss has weight 0" in error_of(capsys)


def test_a_batch_too_small_for_a_relation_over_its_samples(tmp_path, capsys, no_loading):
    """At 2 images per batch rcka's intra term is a constant (logged 0.0): nothing was distilled."""
    distil = base(tmp_path, teacher_model_name_or_path="config:resnet", per_device_train_batch_size=2,
                  losses=[{"name": "ce"}, {"name": "kd", "weight": 0}, {"name": "rcka"}])
    assert run(tmp_path, distil) == 2
    assert "rcka relates the samples of a batch, and a relation over 2 sample(s)" in error_of(capsys)
    assert not (tmp_path / "out").exists()


def test_an_evaluation_batch_too_small_for_a_relation_over_its_samples(tmp_path, capsys, no_loading):
    """At an evaluation batch of 2 the relational evaluation losses were constants (a 'perfect match')."""
    distil = base(tmp_path, teacher_model_name_or_path="config:resnet", per_device_eval_batch_size=2,
                  losses=[{"name": "ce"}, {"name": "feature_cka"}])
    assert run(tmp_path, distil) == 2
    error = error_of(capsys)
    assert "feature_cka relates the samples of a batch, and a relation over 2 sample(s)" in error
    assert "per_device_eval_batch_size >= 3" in error
    assert not (tmp_path / "out").exists()


def test_an_evaluation_set_too_small_for_a_relation_is_refused_for_the_final_evaluation(tmp_path, capsys):
    """The command line's final evaluation (eval_strategy no) and an evaluation-only run took 2
    images without a word: the relational terms were missing from the results, exit 0."""
    distil = base(tmp_path, teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET,
                  max_eval_samples=2, max_steps=1, losses=[{"name": "ce"}, {"name": "feature_cka"}])
    assert run(tmp_path, distil) == 2
    assert "the evaluation set has 2 image(s), and feature_cka relates the samples of a batch" in error_of(capsys)
    assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "model.safetensors").exists()
    # a run that never evaluates takes any evaluation batch
    assert run(tmp_path, {**distil, "max_eval_samples": 10, "per_device_eval_batch_size": 2, "do_eval": False}) == 0
    capsys.readouterr()
    evaluation = {**distil, "do_train": False, "model_name_or_path": str(tmp_path / "out"), "student_from_scratch": False}
    assert run(tmp_path, evaluation) == 2
    assert "the evaluation set has 2 image(s), and feature_cka relates the samples of a batch" in error_of(capsys)


def test_an_evaluation_only_run_checks_its_batch_only_against_the_losses_it_evaluates(tmp_path, capsys):
    """An evaluation of a saved student leaves out a relation over trained adapters (fresh here):
    an evaluation batch too small for it is no error, though a training run is refused it."""
    adapted = [{"student_layer": 1, "teacher_layer": 1, "adapter": "linear"}]
    distil = base(tmp_path, teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET,
                  feature_pairs=adapted, losses=[{"name": "ce"}, {"name": "feature_cka"}])
    assert run(tmp_path, distil) == 0
    capsys.readouterr()
    evaluation = {**distil, "do_train": False, "model_name_or_path": str(tmp_path / "out"),
                  "student_from_scratch": False, "per_device_eval_batch_size": 2}
    assert run(tmp_path, evaluation) == 0
    assert "evaluation only: ['feature_cka'] not evaluated" in capsys.readouterr().err
    (record,) = (tmp_path / "out").glob("_eval-*")
    assert "eval_feature_cka_loss" not in json.loads((record / "eval_results.json").read_text())
    assert run(tmp_path, {**distil, "per_device_eval_batch_size": 2, "output_dir": str(tmp_path / "again")}) == 2
    assert "feature_cka relates the samples of a batch, and a relation over 2 sample(s)" in error_of(capsys)


LOAD_BEST = {"eval_strategy": "steps", "save_strategy": "steps", "load_best_model_at_end": True}


@pytest.mark.parametrize("best", [{}, LOAD_BEST])
def test_metric_for_best_model_that_the_evaluation_does_not_report(tmp_path, capsys, no_loading, best):
    assert run(tmp_path, base(tmp_path, **best, metric_for_best_model="acuracy")) == 2
    line = error_of(capsys)
    assert line.startswith("error: metric_for_best_model 'acuracy' is not a metric the evaluation reports")
    assert "did you mean 'accuracy'" in line
    distil = dict(best, teacher_model_name_or_path="config:resnet", losses=[{"name": "ce"}, {"name": "rcka"}])
    assert run(tmp_path, base(tmp_path, **distil, metric_for_best_model="eval_rcka_intra_los")) == 2
    assert "did you mean 'eval_rcka_intra_loss'" in error_of(capsys)
    assert run(tmp_path, base(tmp_path, **distil, metric_for_best_model="ema_accuracy")) == 2  # no model_ema
    inter_only = dict(distil, losses=[{"name": "ce"}, {"name": "rcka", "intra_weight": 0}])
    assert run(tmp_path, base(tmp_path, **inter_only, metric_for_best_model="rcka_intra_loss")) == 2
    assert ("'rcka_intra_loss' is not a metric the evaluation reports (with these options, loss 'rcka' reports "
            "only rcka_inter_loss)") in error_of(capsys)  # intra_weight 0: rcka_intra is not computed
    unweighted = dict(distil, losses=[{"name": "ce"}, {"name": "rcka"}, {"name": "kd", "weight": 0}])
    assert run(tmp_path, base(tmp_path, **unweighted, metric_for_best_model="eval_kd_loss")) == 2
    assert "(loss 'kd' has weight 0, so it is not computed)" in error_of(capsys)
    ema = dict(inter_only, model_ema=True)
    assert run(tmp_path, base(tmp_path, **ema, metric_for_best_model="eval_ema_rcka_intra_loss")) == 2
    assert ("(the ema weights are evaluated without the teacher, so loss 'rcka', which reads the teacher, is not "
            "reported for them)") in error_of(capsys)
    assert run(tmp_path, base(tmp_path, **ema, metric_for_best_model="ema_loss")) == 2
    assert "(the ema weights are evaluated without the teacher, so no total loss is reported" in error_of(capsys)
    assert not (tmp_path / "out").exists()
    # the average's score chooses what is exported only when the average is (see the next test)
    ema = [("eval_ema_accuracy", {"model_ema": True}), ("eval_ema_ce_loss", {"model_ema": True})] if not best \
        else [("eval_accuracy", {"model_ema": True})]
    for name, more in [("eval_rcka_inter_loss", {}), ("ce_loss", {}), ("loss", {}), ("top5_accuracy", {}),
                       *ema, ("eval_runtime", {})]:
        with pytest.raises(AssertionError, match="loaded before the recipe was checked"):  # checks passed
            run(tmp_path, base(tmp_path, **distil, **more, metric_for_best_model=name))


@pytest.mark.parametrize("export", [False, True])
def test_the_best_checkpoint_is_chosen_by_the_score_of_the_weights_it_exports(tmp_path, capsys, no_loading, export):
    """With EMA, load_best_model_at_end loads the best checkpoint's exported weights (the live ones,
    or the average with model_ema_export): chosen by the other set's score, the live weights of the
    step where the average scored best were exported, and the card called them the best evaluation."""
    ema = dict(LOAD_BEST, model_ema=True, model_ema_export=export)
    other, exported, fix = (("live", "average", "model_ema_export: false") if export
                            else ("ema", "live weights", "model_ema_export: true"))
    for metric in (f"eval_{other}_accuracy", f"{other}_loss"):
        assert run(tmp_path, base(tmp_path, **ema, metric_for_best_model=metric)) == 2
        line = error_of(capsys)
        assert line.startswith(f"error: metric_for_best_model {metric!r} scores the {other} weights, but "
                               f"load_best_model_at_end loads the best checkpoint's {exported}"), line
        assert fix in line and f"or choose by {metric.replace(other + '_', '', 1)!r}" in line
    assert not (tmp_path / "out").exists()
    for metric, more in [(f"eval_{other}_accuracy", {"load_best_model_at_end": False}), ("accuracy", {})]:
        with pytest.raises(AssertionError, match="loaded before the recipe was checked"):  # checks passed
            run(tmp_path, base(tmp_path, **{**ema, **more}, metric_for_best_model=metric))


def test_top5_accuracy_as_best_metric_with_five_classes_or_fewer(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the class count was checked")

    monkeypatch.setattr(cli, "load_image_classifier", refuse)
    train = image_folder(tmp_path / "train", ["cat", "dog", "eel"])
    recipe = base(tmp_path, dataset_name=None, train_dir=train, train_val_split=0.25,
                  metric_for_best_model="top5_accuracy")
    assert run(tmp_path, recipe) == 2
    assert "top5_accuracy is reported only with more than 5 classes, and this dataset has 3" in error_of(capsys)


@pytest.mark.parametrize("weight", [float("inf"), float("-inf"), float("nan")])
def test_loss_weights_that_are_not_finite(tmp_path, capsys, no_loading, weight):
    losses = [{"name": "ce"}, {"name": "kd", "weight": weight}]
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path="config:resnet", losses=losses)) == 2
    assert f"losses[1].weight must be >= 0 and finite, got {weight}" in error_of(capsys)
    rcka = [{"name": "ce"}, {"name": "rcka", "inter_weight": weight}]
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path="config:resnet", losses=rcka)) == 2
    assert f"rcka intra_weight/inter_weight must be >= 0 and finite, got 1.0/{weight}" in error_of(capsys)
    kd = [{"name": "ce"}, {"name": "kd", "temperature": weight}]
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path="config:resnet", losses=kd)) == 2
    assert f"kd temperature must be > 0 and finite, got {weight}" in error_of(capsys)


def test_yaml_syntax_errors(tmp_path, capsys, no_loading):
    path = tmp_path / "broken.yaml"
    path.write_text("model_name_or_path: config:resnet\nlosses: [ce, kd\noutput_dir: out\n")
    assert main([str(path)]) == 2
    assert error_of(capsys).startswith(f"error: recipe {str(path)!r} is not valid YAML at line 3, column")
    assert run(tmp_path, base(tmp_path), "--losses", "[ce, kd") == 2
    assert error_of(capsys).startswith("error: --losses '[ce, kd' is not valid YAML")


def test_unknown_key_without_a_close_match_points_at_help(tmp_path, capsys, no_loading):
    assert run(tmp_path, base(tmp_path, zzqx_frobnicate=1)) == 2
    line = error_of(capsys)
    assert "'zzqx_frobnicate'" in line and "--help" in line and len(line) < 200


def test_keys_that_are_no_setting_say_what_to_do_instead(tmp_path, capsys, no_loading):
    assert run(tmp_path, base(tmp_path, logging_dir=str(tmp_path / "tb"))) == 2
    assert "'logging_dir': transformers 5 removed it" in error_of(capsys)
    assert run(tmp_path, base(tmp_path, evaluation_strategy="steps")) == 2
    assert "'evaluation_strategy': removed from transformers' TrainingArguments: its name is eval_strategy" in \
        error_of(capsys)
    # it suggested hub_revision, the branch a run uploads to: following it loaded main without a word
    assert run(tmp_path, base(tmp_path, model_revision="v1")) == 2
    assert "'model_revision': hf_rcka loads a Hub model's main revision (hub_revision is the branch a run uploads " \
           "to): to train from another, download that revision" in error_of(capsys)
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path="acme/teacher@v1")) == 2
    assert "If it names a Hub revision after '@': a revision cannot follow the id; download that revision" \
        in error_of(capsys)
    assert run(tmp_path, base(tmp_path, ddp_backend="nccl")) == 2  # no GPU here: "Default process group ..."
    assert error_of(capsys).startswith("error: ddp_backend: nccl runs on CUDA GPUs, and this machine has none")
    # the close matches were label_names (itself refused) and num_train_epochs
    assert run(tmp_path, base(tmp_path, num_labels=3)) == 2
    assert "'num_labels': the run names and counts the student's classes from the dataset's labels" in error_of(capsys)


def test_misplaced_files_and_folders_and_a_flag_without_its_value(tmp_path, capsys, no_loading):
    assert main([str(tmp_path)]) == 2
    assert f"recipe {str(tmp_path)!r} is a folder: give the recipe's YAML file" in error_of(capsys)
    image = tmp_path / "cat.png"
    image.write_bytes(b"png")
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=str(image), validation_dir=str(image))) == 2
    assert f"train_dir {str(image)!r} is a file, not a folder" in error_of(capsys)
    assert run(tmp_path, base(tmp_path), "--learning_rate") == 2
    assert "--learning_rate needs a value (a bare flag is true, and learning_rate is not a true/false setting)" \
        in error_of(capsys)


@pytest.mark.parametrize("changes, expected", [
    ({"lr_scheduler_type": "cosine_with_min_lr"}, "lr_scheduler_type 'cosine_with_min_lr' with lr_scheduler_kwargs {}: "
                                                  "One of min_lr or min_lr_rate should be set"),
    ({"lr_scheduler_type": "cosine", "lr_scheduler_kwargs": {"min_lr": 1e-5}}, "unexpected keyword argument 'min_lr'"),
    ({"lr_scheduler_type": "warmup_stable_decay"}, "missing 1 required positional argument: 'num_decay_steps'"),
    ({"optim": "adamw_bnb_8bit"}, "optim 'adamw_bnb_8bit': You need to install `bitsandbytes`"),
    # taken and never used: every step at the peak rate, exit 0
    ({"lr_scheduler_type": "constant", "warmup_steps": 0.2}, "lr_scheduler_type 'constant' has no warm-up, so "
                                                             "warmup_steps 0.2 would not be used"),
    ({"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 0.2, "lr_scheduler_kwargs": {"min_lr": 1e-5}},
     "lr_scheduler_type 'constant_with_warmup' takes no lr_scheduler_kwargs, so {'min_lr': 1e-05} would not be used"),
    ({"lr_scheduler_type": "reduce_lr_on_plateau", "warmup_steps": 2, "eval_strategy": "epoch"},
     "lr_scheduler_type 'reduce_lr_on_plateau' has no warm-up"),
    ({"warmup_steps": 2.5}, "warmup_steps must be a fraction of the run below 1 or a whole number of steps, got 2.5"),
])
def test_a_schedule_or_optimizer_trainer_would_fail_to_build_is_refused_before_loading(
        tmp_path, capsys, no_loading, changes, expected):
    """Trainer builds them at the first step: a traceback after the models and data had loaded."""
    assert run(tmp_path, base(tmp_path, **changes)) == 2
    assert expected in error_of(capsys)


def test_output_dir_that_cannot_be_created(tmp_path, capsys, no_loading):
    (tmp_path / "afile").write_text("x")
    assert run(tmp_path, base(tmp_path, output_dir=str(tmp_path / "afile" / "out"))) == 2
    assert "output_dir" in error_of(capsys) and "is a file" in capsys.readouterr().err + "is a file"


def test_report_to_an_integration_that_is_not_installed(tmp_path, capsys, no_loading, monkeypatch):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    assert run(tmp_path, base(tmp_path, report_to="tensorboard")) == 2
    assert "report_to: 'tensorboard' is not available: pip install tensorboard" in error_of(capsys)
    assert run(tmp_path, base(tmp_path, report_to="tensorbord")) == 2
    assert "did you mean 'tensorboard'" in error_of(capsys)
    # a comma-separated override is a list: each name is checked (it was taken whole, as one name)
    assert run(tmp_path, base(tmp_path), "--report_to", "none,tensorboard") == 2
    assert "report_to: 'none' stands alone" in error_of(capsys)
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    monkeypatch.setattr(integration_utils, "is_dagshub_available", lambda: False)
    assert run(tmp_path, base(tmp_path), "--report_to", "tensorboard, dagshub") == 2
    assert "'dagshub' is not available: pip install dagshub mlflow" in error_of(capsys)
    # every tracker that is missing at once (one failed run per tracker before)
    monkeypatch.setattr(integration_utils, "is_wandb_available", lambda: False)
    assert run(tmp_path, base(tmp_path), "--report_to", "wandb,dagshub") == 2
    line = error_of(capsys)
    assert "'wandb' is not available: pip install wandb; report_to: 'dagshub' is not available" in line
    assert run(tmp_path, base(tmp_path), "--report_to", "wandb,mlfow") == 2
    line = error_of(capsys)
    assert "unknown integration 'mlfow'" in line and "'wandb' is not available" in line


@pytest.mark.parametrize("report_to", [None, [], ["tensorboard", "all"], ["none", "tensorboard"]])
def test_report_to_lists_transformers_would_fail_on_after_loading(tmp_path, capsys, no_loading, monkeypatch, report_to):
    """none and all stand alone, and an empty value is refused with the recipe, not as a traceback
    from Trainer once the models and data are loaded (an empty list is no tracker)."""
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    recipe = {**base(tmp_path), "report_to": report_to}
    if report_to == []:  # accepted: every check passes and the run goes on to load
        with pytest.raises(AssertionError, match="loaded before the recipe was checked"):
            run(tmp_path, recipe)
        return
    assert run(tmp_path, recipe) == 2
    line = error_of(capsys)
    assert ("report_to is empty" in line) if report_to is None else ("stands alone" in line)


@pytest.mark.parametrize("report_to", ["", " ", ["tensorboard", "  "]])
def test_a_blank_report_to_is_said_to_be_empty(report_to):
    """A blank name (a recipe's "report_to: ' '", or a trailing comma's part) is no tracker's name: it
    is said to be empty, with the fix, not offered as an unknown integration's close matches."""
    from hf_rcka.cli.preflight import check_report_to

    with pytest.raises(RecipeError, match=r"report_to is empty .*: set report_to: none to log to no tracker"):
        check_report_to(report_to)


def test_fsdp_settings_that_would_fail_after_loading(tmp_path, capsys, no_loading, monkeypatch):
    """Under accelerate launch with FSDP, cpu_ram_efficient_loading leaves the other processes' teacher
    on the meta device (FSDP broadcasts only what it wraps), and a sharded state dict exports no student."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    assert run(tmp_path, base(tmp_path)) == 2
    assert "set fsdp_cpu_ram_efficient_loading: false in the accelerate config" in error_of(capsys)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT")
    assert run(tmp_path, base(tmp_path)) == 2
    assert "FSDP state_dict_type is SHARDED_STATE_DICT" in error_of(capsys)
    assert not (tmp_path / "out").exists()


def test_push_to_hub_offline_or_without_a_token(tmp_path, capsys, no_loading, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert run(tmp_path, base(tmp_path, push_to_hub=True)) == 2
    assert "push_to_hub: the Hugging Face Hub is offline" in error_of(capsys)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert run(tmp_path, base(tmp_path, push_to_hub=True)) == 2
    assert "push_to_hub needs a Hugging Face token" in error_of(capsys)
    assert not (tmp_path / "out").exists()
    # an id the Hub refuses: Trainer's traceback after loading (and after setting an earlier run aside)
    assert run(tmp_path, base(tmp_path, push_to_hub=True, hub_model_id="me/my model")) == 2
    assert "push_to_hub: hub_model_id 'me/my model' is no Hub repository id" in error_of(capsys)
    assert run(tmp_path, base(tmp_path, push_to_hub=True, output_dir=str(tmp_path / "o ut"))) == 2
    assert "push_to_hub: the output_dir's folder name (the default hub_model_id) 'o ut'" in error_of(capsys)


def test_losses_that_do_not_fit_the_models(tmp_path, capsys, no_loading):
    from types import SimpleNamespace

    from hf_rcka.arguments import ModelArguments
    from hf_rcka.cli.model_sources import check_losses_fit_models
    from hf_rcka.errors import RecipeError

    assert run(tmp_path, base(tmp_path, losses=[{"name": "ce"}, {"name": "feature_cka"}])) == 2
    assert "losses ['feature_cka'] need a teacher: set teacher_model_name_or_path" in error_of(capsys)
    # a loss at weight 0 is not computed (the model leaves it out): it needs no teacher
    check_losses_fit_models(ModelArguments(model_name_or_path="config:resnet"),
                            SimpleNamespace(losses=[{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": 0}]))
    deit = base(tmp_path, model_name_or_path="config:vit", student_config_overrides=TINY_VIT,
                teacher_model_name_or_path="config:resnet", losses=[{"name": "ce"}, {"name": "deit_token"}])
    assert run(tmp_path, deit) == 2
    assert "deit_token needs a student with a distillation head" in error_of(capsys)

    # a timm student is judged by the model timm builds, not by its name: iformer_m_distilled has no
    # distillation head (a traceback at the first step), levit_128s has one (refused)
    def fits(student):
        model_args = ModelArguments(model_name_or_path=student, teacher_model_name_or_path="timm/resnet18")
        check_losses_fit_models(model_args, SimpleNamespace(losses=[{"name": "ce"}, {"name": "deit_token"}]))

    fits("timm/levit_128s.fb_dist_in1k")
    with pytest.raises(RecipeError, match="deit_token needs a student with a distillation head"):
        fits("timm/iformer_m_distilled")
    fits("facebook/deit-small-distilled-patch16-224")  # a Hub id not downloaded yet: judged once it loads


@pytest.mark.parametrize("model_type,expected", [
    ("hgnet_v2", "model_name_or_path: transformers has no default image processor for model type 'hgnet_v2'"),
    ("siglip2", "model_name_or_path: cannot tell the output size of Siglip2ImageProcessor"),
])
def test_a_config_type_without_a_fixed_size_processor_is_refused_before_loading(tmp_path, capsys, no_loading,
                                                                               model_type, expected):
    """The processor of a config: type is built from its config alone: it failed once the data had loaded."""
    assert run(tmp_path, base(tmp_path, model_name_or_path=f"config:{model_type}", student_config_overrides=None,
                              image_size=None)) == 2
    error = error_of(capsys)
    assert expected in error
    assert (f"A config:{model_type} student can only take its type's default processor: to train the type, "
            f"save_pretrained its config (AutoConfig.for_model('{model_type}', ...)) and an image processor of a fixed "
            "output size into one folder") in error
    assert not (tmp_path / "out").exists()


def test_the_advice_for_a_config_type_without_a_usable_processor_trains(tmp_path, caplog):
    """Its advice had been a processor of another kind, which a config: type cannot be given; then a
    saved model, whose weights the run warned it would not train from."""
    from transformers import AutoConfig, ViTImageProcessor

    folder = tmp_path / "hgnet"
    AutoConfig.for_model("hgnet_v2", num_labels=10).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    with caplog.at_level(logging.WARNING):
        assert run(tmp_path, base(tmp_path, model_name_or_path=str(folder), student_config_overrides=None,
                                  student_from_scratch=True)) == 0
    assert not [r for r in caplog.records if "holds trained weights" in r.getMessage()]


@pytest.mark.parametrize("options,expected", [
    ({"grid": "bogus"}, "patch_match grid must be one of ('min', 'student', 'teacher') or [h, w], got 'bogus'"),
    ({"grid": [0, 0]}, "patch_match grid must be two positive ints, got [0, 0]"),
    ({"bias": "false"}, "patch_match bias must be true or false, got 'false'"),
    ({"sample_channels": 0}, "patch_match sample_channels must be a positive int, 'student' or null, got 0"),
])
def test_adapter_option_values(tmp_path, capsys, no_loading, options, expected):
    pairs = [{"student_layer": -1, "teacher_layer": -1, "adapter": "patch_match", **options}]
    recipe = base(tmp_path, teacher_model_name_or_path="config:resnet", feature_pairs=pairs,
                  losses=[{"name": "ce"}, {"name": "patch_cka"}])
    assert run(tmp_path, recipe) == 2
    assert error_of(capsys) == f"error: feature_pairs[0]: {expected}"


@pytest.mark.parametrize("side,model,overrides,pair,expected", [
    ("student", "config:vit", TINY_VIT, {"student_layer": 3, "teacher_layer": -1},
     "student layer 3 is out of range: the student model has 3 hidden states, valid indices are -3..2"),
    ("teacher", "config:resnet", TINY_RESNET, {"student_layer": -1, "teacher_layer": -6},
     "teacher layer -6 is out of range: the teacher model has 5 hidden states, valid indices are -5..4"),
    ("student", "timm/resnet10t", None, {"student_layer": 5, "teacher_layer": 0},
     "student layer 5 is out of range: the student model has 5 hidden states, valid indices are -5..4"),
    ("teacher", "timm folder", None, {"student_layer": 0, "teacher_layer": 5},
     "teacher layer 5 is out of range: the teacher model has 5 hidden states, valid indices are -5..4"),
    ("teacher", "folder", None, {"student_layer": 0, "teacher_layer": 3},
     "teacher layer 3 is out of range: the teacher model has 3 hidden states, valid indices are -3..2"),
])
def test_a_layer_index_out_of_range_is_refused_before_loading(tmp_path, capsys, no_loading, side, model, overrides,
                                                              pair, expected):
    """It was refused once the data and both models had loaded (minutes for a large Hub teacher); the
    line is the one the check after loading gives."""
    from tests.conftest import tiny_vit

    name = model_source(tmp_path, model, tiny_vit)
    losses = [{"name": "ce"}, {"name": "feature_cka"}]
    recipe = base(tmp_path, teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET,
                  losses=losses, feature_pairs=[{"student_layer": 0, "teacher_layer": 0}, pair])
    if side == "student":
        recipe.update(model_name_or_path=name, student_config_overrides=overrides, student_from_scratch=True)
    else:
        recipe.update(teacher_model_name_or_path=name, teacher_config_overrides=overrides)
    assert run(tmp_path, {k: v for k, v in recipe.items() if v is not None}) == 2
    assert error_of(capsys) == f"error: feature_pairs[1]: {expected}"
    assert not (tmp_path / "out").exists()


def test_layer_indices_of_pairs_no_loss_reads_are_not_checked_before_loading():
    """Pairs that no loss computed reads are ignored after loading (with a warning): their indices
    must not stop the run before it."""
    from hf_rcka.arguments import DistillationTrainingArguments, ModelArguments
    from hf_rcka.cli.model_sources import check_feature_pairs
    from hf_rcka.modeling.assembly import active_specs, build_losses

    model_args = ModelArguments(model_name_or_path="config:resnet", student_config_overrides=TINY_RESNET,
                                teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET)
    beyond = [{"student_layer": 9, "teacher_layer": 9}]

    def early(losses):
        args = DistillationTrainingArguments(output_dir="unused", use_cpu=True, feature_pairs=beyond, losses=losses)
        check_feature_pairs(model_args, args, build_losses(active_specs(losses)))

    early([{"name": "ce"}, {"name": "kd"}])
    early([{"name": "ce"}, {"name": "kd"}, {"name": "feature_cka", "weight": 0}])
    with pytest.raises(RecipeError, match=r"^feature_pairs\[0\]: student layer 9 is out of range"):
        early([{"name": "ce"}, {"name": "feature_cka"}])


_VIT_TO_RESNET = {"model_name_or_path": "config:vit", "student_config_overrides": TINY_VIT,
                  "teacher_model_name_or_path": "config:resnet", "teacher_config_overrides": TINY_RESNET}


def _pair(student: int, teacher: int, **options) -> dict:
    return {"student_layer": student, "teacher_layer": teacher, **options}


@pytest.mark.parametrize("changes,expected", [
    ({"losses": [{"name": "ce"}, {"name": "feature_cka"}], "feature_pairs": [_pair(-1, -1), _pair(2, 4)]},
     "feature_pairs[1] pairs student hidden state 2 with teacher hidden state 4, as feature_pairs[0] already does "
     "(negative indices count from the end): list each pair once"),
    ({"losses": [{"name": "ce"}, {"name": "fitnet"}], "feature_pairs": [_pair(-1, -1, adapter="identity")]},
     "feature_pairs[0]: adapter 'identity' gives student features of shape (17, 36) and teacher features of shape "
     "(20, 7, 7), but the feature losses compare equal shapes: use adapter: patch_match with project: true, or "
     "adapter: auto"),
    ({"losses": [{"name": "ce"}, {"name": "patch_cka"}], "feature_pairs": [_pair(-1, -1, adapter="linear")]},
     "feature_pairs[0]: adapter 'linear' gives student features of shape (17, 20) and teacher features of shape "
     "(20, 7, 7), but the feature losses compare equal (B, C, H, W) maps: use adapter: patch_match with project: "
     "true, or adapter: auto"),
    ({"losses": [{"name": "ce"}, {"name": "feature_cka"}, {"name": "fitnet"}],
      "feature_pairs": [_pair(-1, 2, adapter="patch_match", sample_channels=4)]},
     "feature_pairs[0]: sample_channels compares a random subset of channels, which only estimates losses that "
     "average over channels (fitnet, patch_cka); another feature loss here compares all channels at once: drop "
     "sample_channels"),
    ({"losses": [{"name": "ce"}, {"name": "patch_cka"}], "feature_pairs": [_pair(2, -1), _pair(-1, -1)],
      "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET, "image_size": 32,
      "teacher_model_name_or_path": "config:vit", "teacher_config_overrides": TINY_VIT},
     "feature_pairs[1] (student 4 [nchw 20ch 1x1, stride 32], teacher 2 [nlc 36ch 4x4, stride 4], via patch_match): "
     "patch_cka relates the patches of a map, and this 1x1 map holds 1 (CKA over fewer than 3 is a constant, so the "
     "pair would train nothing). Pair a larger hidden state (an earlier stage), or train at a larger image_size"),
])
def test_feature_pairs_the_adapters_refuse_are_refused_before_loading(tmp_path, capsys, no_loading, changes,
                                                                      expected):
    """A pair listed twice, an adapter whose outputs the losses cannot compare, sample_channels beside
    a loss that compares every channel, a map too small for patch CKA: each was refused once the data
    and both models had loaded, and is now refused before, with the line the check after loading
    gives (the student probed at 16 px, the teacher at its processor's 224 px)."""
    assert run(tmp_path, base(tmp_path, **{**_VIT_TO_RESNET, **changes})) == 2
    assert error_of(capsys) == f"error: {expected}"
    assert not (tmp_path / "out").exists()


def test_the_layer_check_before_loading_builds_no_weights_and_leaves_a_model_it_cannot_build(monkeypatch):
    """Each model is built on the meta device (a ViT-L teacher built on the CPU drew its 300M weights
    for a count); one that cannot be built or run so (construction that reads values) is left to
    the check after loading: no traceback before the run starts."""
    from hf_rcka.arguments import DistillationTrainingArguments, ModelArguments
    from hf_rcka.cli.model_sources import check_feature_pairs
    from hf_rcka.modeling.assembly import active_specs, build_losses
    from hf_rcka.models import loading

    built, build = [], loading.build_without_weights
    monkeypatch.setattr(loading, "build_without_weights", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    model_args = ModelArguments(model_name_or_path="config:resnet", student_config_overrides=TINY_RESNET,
                                teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET)
    losses = [{"name": "ce"}, {"name": "feature_cka"}]
    args = DistillationTrainingArguments(output_dir="unused", use_cpu=True, losses=losses,
                                         feature_pairs=[{"student_layer": 9, "teacher_layer": 0}])
    with pytest.raises(RecipeError, match=r"^feature_pairs\[0\]: student layer 9 is out of range"):
        check_feature_pairs(model_args, args, build_losses(active_specs(losses)))
    assert len(built) == 2 and all(param.is_meta for model in built for param in model.parameters())

    def unbuildable(*args, **kwargs):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(loading, "build_without_weights", unbuildable)
    check_feature_pairs(model_args, args, build_losses(active_specs(losses)))  # left to choose_pairs once the models have loaded


def test_model_ema_under_fsdp(tmp_path, capsys, no_loading, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets for an FSDP config
    assert run(tmp_path, base(tmp_path, model_ema=True)) == 2
    assert "model_ema: true cannot run under FSDP" in error_of(capsys)


def test_image_size_a_vit_student_cannot_take(tmp_path, capsys, no_loading):
    vit = dict(model_name_or_path="config:vit", student_config_overrides=TINY_VIT)
    assert run(tmp_path, base(tmp_path, **vit, image_size=18)) == 2
    assert "image_size 18 is not a multiple of the student's patch_size 4" in error_of(capsys)
    assert run(tmp_path, base(tmp_path, **vit, image_size=32)) == 2
    assert "built for 16 px" in error_of(capsys)
    # DeiT's position embeddings fix its grid too (a mutant checking ViT alone passed every test)
    deit = dict(model_name_or_path="config:deit", student_config_overrides=TINY_VIT)
    assert run(tmp_path, base(tmp_path, **deit, image_size=32)) == 2
    assert "image_size 32, but the deit student is built for 16 px" in error_of(capsys)
    # I-JEPA's and ViT-MSN's too: they stopped after the data had loaded, at the student's first probe
    for model_type in ("ijepa", "vit_msn"):
        other = dict(model_name_or_path=f"config:{model_type}", student_config_overrides=TINY_VIT)
        assert run(tmp_path, base(tmp_path, **other, image_size=32)) == 2
        assert f"image_size 32, but the {model_type} student is built for 16 px" in error_of(capsys)
    # CLIP's and SigLIP's ViT is their vision_config's, which the advice names (a vision_config
    # without image_size is the default one's, 224)
    no_size = {key: value for key, value in TINY_VIT.items() if key != "image_size"}
    for model_type in ("clip", "siglip"):
        tower = dict(model_name_or_path=f"config:{model_type}", student_config_overrides={"vision_config": no_size})
        assert run(tmp_path, base(tmp_path, **tower, image_size=32)) == 2
        line = error_of(capsys)
        assert f"image_size 32, but the {model_type} student is built for 224 px" in line
        assert "image_size: 32 in student_config_overrides' vision_config" in line
        assert run(tmp_path, base(tmp_path, **tower, image_size=18)) == 2
        assert "image_size 18 is not a multiple of the student's patch_size 4" in error_of(capsys)


def test_typos_in_a_config_model_type_and_its_overrides(tmp_path, capsys, no_loading):
    assert run(tmp_path, base(tmp_path, model_name_or_path="config:resnett")) == 2
    line = error_of(capsys)
    assert line.startswith("error: model_name_or_path:") and "did you mean 'resnet'" in line
    assert run(tmp_path, base(tmp_path, student_config_overrides={**TINY_RESNET, "hiden_sizes": [8]})) == 2
    line = error_of(capsys)
    assert line.startswith("error: student_config_overrides:") and "'hiden_sizes'" in line and "hidden_sizes" in line


@pytest.mark.parametrize("side,model,overrides,named", [
    ("student", "config:vit", {**TINY_VIT, "num_attention_heads": 0}, "ZeroDivisionError"),
    ("student", "config:vit", {**TINY_VIT, "hidden_size": -4}, "hidden_size -4 out of range?"),
    ("student", "timm/vit_tiny_patch16_224", {"num_heads": 0}, "ZeroDivisionError"),
    ("teacher", "config:vit", {**TINY_VIT, "patch_size": 0}, "patch_size 0 out of range?"),
])
def test_overrides_no_model_can_be_built_with_are_refused_before_loading(tmp_path, capsys, no_loading, side, model,
                                                                         overrides, named):
    """Out-of-range overrides (``num_attention_heads: 0``, a negative ``hidden_size``) passed every
    check and were a traceback from the model's constructor once the data had loaded (``patch_size:
    0`` one from the image_size check itself): the model is now built on the meta device first."""
    if side == "student":
        recipe = base(tmp_path, model_name_or_path=model, student_config_overrides=overrides, student_from_scratch=True,
                      image_size=32)
    else:
        recipe = base(tmp_path, teacher_model_name_or_path=model, teacher_config_overrides=overrides)
    assert run(tmp_path, recipe) == 2
    line = error_of(capsys)
    assert line.startswith(f"error: {side}_config_overrides: {model!r} cannot be built with them (") and named in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model,key,expected", [
    ("config:resnet", "num_labels", "the run names the student's classes from the dataset's labels. "
                                    "Drop 'num_labels' from student_config_overrides"),
    ("timm/resnet10t", "num_classes", "the run names the student's classes from the dataset's labels"),
])
def test_overrides_that_set_the_students_classes_say_what_sets_them(tmp_path, capsys, no_loading, model, key,
                                                                     expected):
    """The refusal said to pass num_labels / id2label / label2id, which are no recipe keys."""
    recipe = base(tmp_path, model_name_or_path=model, student_from_scratch=True,
                  student_config_overrides={**(TINY_RESNET if model.startswith("config:") else {}), key: 3})
    assert run(tmp_path, recipe) == 2
    line = error_of(capsys)
    assert line.startswith(f"error: student_config_overrides sets {key!r}: ") and expected in line


def test_overrides_that_set_a_config_teachers_classes_say_what_it_has(tmp_path, capsys, no_loading):
    recipe = base(tmp_path, teacher_model_name_or_path="config:resnet",
                  teacher_config_overrides={**TINY_RESNET, "id2label": {0: "a"}})
    assert run(tmp_path, recipe) == 2
    assert "teacher_config_overrides sets 'id2label': the teacher keeps the classes it was trained with, paired with " \
           "the dataset's by name (teacher_label_mapping) (a config: teacher has its model type's default unnamed " \
           "classes, so only feature losses can distil from it). Drop 'id2label' from teacher_config_overrides" \
           in error_of(capsys)


@pytest.mark.parametrize("model,overrides_key,overrides,named", [
    ("timm/resnet10t", "student_config_overrides", {"in_chans": 1}, "in_chans 1"),
    ("timm/resnet10t", "student_config_overrides", {"pretrained_cfg_overlay": {"input_size": [1, 16, 16]}},
     "pretrained_cfg_overlay input_size 1"),
    ("config:resnet", "student_config_overrides", {**TINY_RESNET, "num_channels": 1}, "num_channels 1"),
    ("config:resnet", "teacher_config_overrides", {**TINY_RESNET, "num_channels": 4}, "num_channels 4"),
])
def test_overrides_for_other_than_rgb_images_are_refused_before_loading(tmp_path, capsys, no_loading, model,
                                                                      overrides_key, overrides, named):
    """A 1-channel timm student failed in timm's data config with a bare AssertionError once loaded;
    every image is decoded to 3 channels."""
    side = "model_name_or_path" if overrides_key.startswith("student") else "teacher_model_name_or_path"
    recipe = base(tmp_path, **{side: model, overrides_key: overrides}, student_from_scratch=True)
    assert run(tmp_path, recipe) == 2
    assert error_of(capsys).startswith(f"error: {overrides_key} sets {named}: every image is decoded to RGB")


def test_a_saved_model_for_other_than_rgb_images_is_refused_before_loading(tmp_path, capsys):
    """A folder whose config says num_channels 1 failed after loading, told to change its image size."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    folder = tmp_path / "gray"
    ResNetForImageClassification(ResNetConfig(**TINY_RESNET, num_channels=1)).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 16}).save_pretrained(folder)
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(folder))) == 2
    assert error_of(capsys).startswith(f"error: teacher_model_name_or_path: {str(folder)!r} is built for 1-channel "
                                       "images, and every image is decoded to RGB")
    # an override that builds it for RGB wins over the saved value
    rgb = base(tmp_path, model_name_or_path=str(folder), student_from_scratch=True,
               student_config_overrides={**TINY_RESNET, "num_channels": 3})
    assert run(tmp_path, rgb) == 0


def test_a_saved_timm_model_for_other_than_rgb_images_is_built_for_rgb_by_its_in_chans_override(tmp_path):
    """timm's in_chans override adapts the first convolution's weights to 3 channels, as num_channels
    builds a transformers model anew: the saved in_chans 1 is then not what is built, and no error."""
    from hf_rcka.cli.model_sources import _check_saved_channels

    folder = tmp_path / "gray"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet10t", "model_args": {"in_chans": 1}}))

    def model_args(overrides):
        return SimpleNamespace(model_name_or_path=str(folder), student_config_overrides=overrides,
                               teacher_model_name_or_path=None, teacher_config_overrides=None)

    with pytest.raises(RecipeError, match=r"model_name_or_path: '.*gray' is built for 1-channel images"):
        _check_saved_channels(model_args(None))
    _check_saved_channels(model_args({"in_chans": 3}))


def test_a_saved_students_distillation_head_is_read_from_its_config_and_the_overrides(tmp_path):
    """deit_token needs a distillation head: a saved timm distilled DeiT (its config names the timm
    architecture, no transformers class) and a folder whose overrides pick the class with the head
    have one; a folder whose overrides pick the class without it has none, whatever it was saved as."""
    from hf_rcka.cli.model_sources import _has_distillation_head

    def folder(name, config):
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
        return str(path)

    timm_deit = folder("timm_deit", {"architecture": "deit_tiny_distilled_patch16_224"})
    plain = folder("plain", {"model_type": "deit", "architectures": ["DeiTForImageClassification"]})
    headed = folder("headed", {"model_type": "deit", "architectures": ["DeiTForImageClassificationWithTeacher"]})
    with_head = {"architectures": ["DeiTForImageClassificationWithTeacher"]}
    without = {"architectures": ["DeiTForImageClassification"]}
    for name, overrides, has in ((timm_deit, None, True), (plain, None, False), (plain, with_head, True),
                                 (headed, None, True), (headed, without, False)):
        assert _has_distillation_head(SimpleNamespace(model_name_or_path=name, student_config_overrides=overrides)) is has


def test_model_paths_that_do_not_exist(tmp_path, capsys, no_loading, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path="runs/techer")) == 2
    assert "teacher_model_name_or_path: no such folder 'runs/techer'" in error_of(capsys)
    assert run(tmp_path, base(tmp_path, model_name_or_path="acme/not-cached")) == 2
    assert "'acme/not-cached' is not cached, and the Hub is offline" in error_of(capsys)
    assert run(tmp_path, base(tmp_path, model_name_or_path="timm/resnet81")) == 2
    assert "unknown timm architecture 'resnet81'" in error_of(capsys)


FAILING_HUB = {"acme/expired": 401, "acme/forbidden": 403, "acme/busy": 429, "acme/broken": 503}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """The Hub online, served by a fake: ``acme/ok`` has a config.json, ``acme/gated`` is gated,
    ``acme/bare`` has no config.json, ``acme/down`` cannot be reached, FAILING_HUB's ids answer
    their HTTP status, every other id does not exist."""
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils._http import default_client_factory

    config = b'{"model_type": "resnet"}'

    def serve(request):
        repo = "/".join(request.url.path.strip("/").split("/")[:2])
        if repo == "acme/down":
            raise httpx2.ConnectError("connection refused", request=request)
        if repo == "acme/ok":
            headers = {"x-repo-commit": "0" * 40, "etag": '"abc"', "content-length": str(len(config))}
            return httpx2.Response(200, headers=headers, content=b"" if request.method == "HEAD" else config)
        if repo in FAILING_HUB:  # what the Hub says to an expired token, or on a bad day
            return httpx2.Response(FAILING_HUB[repo], headers={"x-error-message": "Invalid credentials in Authorization header"})
        code, status = {"acme/gated": ("GatedRepo", 401), "acme/bare": ("EntryNotFound", 404)}.get(repo, ("RepoNotFound", 404))
        return httpx2.Response(status, headers={"x-error-code": code, "x-error-message": code})

    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda seconds: None)  # no retry back-off
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(serve)))
    yield
    huggingface_hub.set_client_factory(default_client_factory)


@pytest.mark.parametrize("name,expected", [
    ("acme/teachr", "there is no Hub model 'acme/teachr' that this machine can read: check the id"),
    ("acme/gated", "Hub model 'acme/gated' is gated: accept its conditions"),
    ("acme/bare", "Hub repository 'acme/bare' has no config.json"),
    ("acme/down", "cannot fetch 'acme/down' from the Hugging Face Hub: ConnectError: connection refused; check the network"),
    ("acme/expired", "the Hub refused this machine's token (401): log in again"),
    ("acme/forbidden", "this machine's token may not read 'acme/forbidden' (403)"),
    ("acme/busy", "too many requests (429): retry in a few minutes"),
    ("acme/broken", "the Hub answered 503: retry later"),
])
def test_hub_ids_that_cannot_be_loaded_online(tmp_path, capsys, no_loading, fake_hub, name, expected):
    """Online, a teacher id with a typo is found before the data loads, not after."""
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=name)) == 2
    line = error_of(capsys)
    assert line.startswith("error: teacher_model_name_or_path: ") and expected in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,online,hub_says", [
    ("outputs/teacher", False, "the Hub is offline"),
    ("outputs/teacher", True, "there is no Hub model 'outputs/teacher'"),
    ("acme/down", True, "cannot fetch 'acme/down' from the Hugging Face Hub: ConnectError"),  # no network
])
def test_a_relative_folder_that_does_not_exist_yet_names_the_recipe_that_writes_it(tmp_path, capsys, no_loading,
                                                                                    monkeypatch, request, name,
                                                                                    online, hub_says):
    """The digits teacher before its recipe ran: 'outputs/...' was taken for a Hub id and the error
    spoke only of the Hub (without a network: check the network)."""
    if online:
        request.getfixturevalue("fake_hub")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "teacher.yaml").write_text(f"output_dir: {name}\n")
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=name)) == 2
    line = error_of(capsys)
    assert line.startswith("error: teacher_model_name_or_path: ") and hub_says in line, line
    assert line.endswith(f"No folder {name!r} exists relative to the working directory '{tmp_path}' either: it is "
                         "the output_dir of recipes/teacher.yaml, which must run first"), line
    assert "is not a local folder" not in line  # said once, in the sentence above
    (tmp_path / "recipes" / "teacher.yaml").write_text("output_dir: outputs/elsewhere\n")
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=name)) == 2
    assert error_of(capsys).endswith(f"No folder {name!r} exists relative to the working directory '{tmp_path}' either")
    if name.startswith("outputs/"):  # once outputs/ exists (another run wrote there), it is a path
        (tmp_path / "outputs").mkdir()
        (tmp_path / "recipes" / "teacher.yaml").write_text(f"output_dir: {name}\n")
        assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=name)) == 2
        assert error_of(capsys).endswith(f"no such folder {name!r} (a folder written by save_pretrained): it is the "
                                         "output_dir of recipes/teacher.yaml, which must run first")


def test_a_readable_hub_id_passes_the_check(tmp_path, no_loading, fake_hub):
    with pytest.raises(AssertionError, match="loaded before the recipe was checked"):
        run(tmp_path, base(tmp_path, teacher_model_name_or_path="acme/ok"))  # checks passed: loading began


def test_class_folders_that_datasets_would_leave_out(tmp_path, capsys, no_loading):
    """datasets' imagefolder does not follow a symlinked folder and skips '__' folders: the class
    would silently lose its images, so both are refused before anything loads."""
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    image_folder(tmp_path / "elsewhere", ["eel"])
    (tmp_path / "train" / "eel").symlink_to(tmp_path / "elsewhere" / "eel")
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train)) == 2
    assert "class folder" in (line := error_of(capsys)) and "eel' is a symbolic link" in line
    (tmp_path / "train" / "eel").unlink()
    image_folder(tmp_path / "train", ["__background__"])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train)) == 2
    assert "__background__' starts with '__'" in error_of(capsys)


def test_phone_photos_in_a_format_no_reader_lists_are_refused_not_left_out(tmp_path, capsys, no_loading):
    """A class folder's iPhone photos (.HEIC) were left out unsaid (the count said 8 images, not 11),
    and a class of nothing but .heic photos was warned about as a sub-folder 'without images'; the
    run trained without them, exit 0."""
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    recipe = base(tmp_path, dataset_name=None, train_dir=train, train_val_split=0.25)
    for i in range(3):
        (tmp_path / "train" / "cat" / f"IMG_{i}.HEIC").write_bytes(b"")
    assert run(tmp_path, recipe) == 2
    assert f"error: '{train}' holds images in a format datasets' imagefolder does not read (['cat/IMG_0.HEIC', " \
           "'cat/IMG_1.HEIC', 'cat/IMG_2.HEIC']): they would be left out of the data" in error_of(capsys)


def test_files_in_image_folders_that_datasets_would_read_otherwise_than_the_folders_say(tmp_path, capsys,
                                                                                         no_loading):
    """Each trained, or stopped with advice that was no fix, without a word of the file: a metadata.csv
    relabelled every image by its own 'label' column (cat images trained as dog, eval_accuracy 1.0),
    .avif images were left out (a class of them vanished as 'without images'), a link to nothing was
    dropped, a link to a validation image trained on it, and an empty __pycache__ was refused as a
    class folder starting with '__'."""
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    validation = image_folder(tmp_path / "validation", ["cat", "dog"])
    recipe = base(tmp_path, dataset_name=None, train_dir=train, validation_dir=validation)
    for where in (tmp_path / "validation", tmp_path / "train" / "dog"):
        (where / "metadata.csv").write_text("file_name,label\n0.png,cat\n")
        assert run(tmp_path, recipe) == 2
        assert error_of(capsys) == (
            f"error: '{where / 'metadata.csv'}' is a datasets metadata file, which imagefolder reads as the images' "
            "labels and columns in place of their class folders (its 'label' column, if it has one, over the folder "
            "names): move it out of the image folder, or, to label the images by it, give the folder as dataset_name")
        (where / "metadata.csv").unlink()
    (tmp_path / "train" / "bird").mkdir()
    (tmp_path / "train" / "bird" / "0.avif").write_bytes(b"")
    assert run(tmp_path, recipe) == 2
    assert f"error: '{train}' holds images in a format datasets' imagefolder does not read (['bird/0.avif']): they " \
           "would be left out of the data, a class of them altogether" in error_of(capsys)
    (tmp_path / "train" / "bird" / "0.avif").unlink()
    (tmp_path / "train" / "bird" / "9.png").symlink_to(tmp_path / "gone.png")
    assert run(tmp_path, recipe) == 2
    assert f"'{tmp_path / 'train' / 'bird' / '9.png'}' is a symbolic link to nothing" in error_of(capsys)
    (tmp_path / "train" / "bird" / "9.png").unlink()
    (tmp_path / "train" / "bird").rmdir()
    (tmp_path / "train" / "dog" / "9.png").symlink_to(tmp_path / "validation" / "dog" / "0.png")
    assert run(tmp_path, recipe) == 2
    assert f"error: train_dir '{train}' holds '{tmp_path / 'train' / 'dog' / '9.png'}', a symbolic link to " \
           f"'{tmp_path / 'validation' / 'dog' / '0.png'}' in the other split's folder" in error_of(capsys)
    (tmp_path / "train" / "dog" / "9.png").unlink()
    # a pool both splits link to (a reviewer's case), a metadata file a folder deeper, loose .avif images
    image_folder(tmp_path / "pool", ["all"])
    (tmp_path / "train" / "dog" / "8.png").symlink_to(tmp_path / "pool" / "all" / "1.png")
    (tmp_path / "validation" / "dog" / "8.png").symlink_to(tmp_path / "pool" / "all" / "1.png")
    assert run(tmp_path, recipe) == 2
    assert "are symbolic links to one image" in error_of(capsys)
    (tmp_path / "validation" / "dog" / "8.png").unlink()
    (tmp_path / "train" / "dog" / "notes").mkdir()
    (tmp_path / "train" / "dog" / "notes" / "metadata.csv").write_text("file_name,label\n")
    assert run(tmp_path, recipe) == 2
    assert f"'{tmp_path / 'train' / 'dog' / 'notes' / 'metadata.csv'}' is a datasets metadata file" in error_of(capsys)
    (tmp_path / "train" / "dog" / "notes" / "metadata.csv").unlink()
    (tmp_path / "train" / "0.avif").write_bytes(b"")
    assert run(tmp_path, recipe) == 2
    assert "does not read (['0.avif'])" in error_of(capsys)
    (tmp_path / "train" / "0.avif").unlink()
    # what datasets reads as it should, or leaves out itself: no refusal
    (tmp_path / "train" / "__pycache__").mkdir()
    (tmp_path / "train" / "cat" / "3b.png").symlink_to(tmp_path / "train" / "cat" / "3.png")  # a link within a split
    (tmp_path / "train" / "cat" / "weights.h5").write_bytes(b"")  # Pillow's stub plugin: no image
    (tmp_path / "train" / ".meta").mkdir()
    (tmp_path / "train" / ".meta" / "metadata.jsonl").write_text("{}")  # in a folder datasets skips
    (tmp_path / "train" / "dog" / "__notes__").mkdir()
    (tmp_path / "train" / "dog" / "__notes__" / "metadata.csv").write_text("file_name,label\n")
    with pytest.raises(AssertionError, match="a model or dataset was loaded"):  # no_loading: past every check
        run(tmp_path, recipe)


def test_one_image_file_in_two_class_folders_or_in_both_splits(tmp_path, capsys, no_loading):
    """A hard link (or a symbolic link) from one class folder to an image of another trained that
    image under both labels without a word, and a hard link from the validation folder to a training
    image was scored as held out (only symbolic links were compared across the splits). Both are
    found from the inode numbers the listing reads, with no image read."""
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    validation = image_folder(tmp_path / "validation", ["cat", "dog"])
    recipe = base(tmp_path, dataset_name=None, train_dir=train, validation_dir=validation)
    os.link(tmp_path / "train" / "cat" / "0.png", tmp_path / "train" / "dog" / "a.png")
    (tmp_path / "train" / "dog" / "b.png").symlink_to(tmp_path / "train" / "cat" / "1.png")
    (tmp_path / "train" / "cat" / "c.png").symlink_to(tmp_path / "train" / "cat" / "2.png")  # one class: no word
    with pytest.raises(AssertionError, match="a model or dataset was loaded"):  # no_loading: past every check
        run(tmp_path, recipe)
    said = [line for line in capsys.readouterr().err.splitlines() if "more than one class folder" in line]
    assert len(said) == 1 and said[0].endswith(
        f"{train}: 2 image file(s) sit in more than one class folder (hard or symbolic links to one file), e.g. "
        f"'{tmp_path / 'train' / 'cat' / '0.png'}' and '{tmp_path / 'train' / 'dog' / 'a.png'}': each is trained "
        "under every one of those labels. Keep each image in the folder of its one class")
    os.link(tmp_path / "train" / "dog" / "3.png", tmp_path / "validation" / "dog" / "h.png")
    assert run(tmp_path, recipe) == 2
    assert error_of(capsys) == (f"error: '{tmp_path / 'train' / 'dog' / '3.png'}' and "
                                f"'{tmp_path / 'validation' / 'dog' / 'h.png'}' are one file (hard links): the "
                                "evaluation would score training images. Keep each image in one split")
    assert not (tmp_path / "out").exists()


def test_missing_or_empty_train_dir(tmp_path, capsys, no_loading):
    data = dict(dataset_name=None, train_dir=str(tmp_path / "nope"))
    assert run(tmp_path, base(tmp_path, **data)) == 2
    assert f"train_dir '{tmp_path / 'nope'}' does not exist" in error_of(capsys)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=str(tmp_path / "empty"))) == 2
    assert "holds no class sub-folders with images" in error_of(capsys)
    one = image_folder(tmp_path / "one", ["cat"])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=one)) == 2
    assert "holds one class folder ('cat'): a classifier needs at least two classes" in error_of(capsys)


def test_validation_classes_that_train_lacks(tmp_path, capsys, no_loading):
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    validation = image_folder(tmp_path / "validation", ["cat", "Dog"])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train, validation_dir=validation)) == 2
    line = error_of(capsys)
    assert "validation_dir has classes train_dir lacks: ['Dog']" in line and "lacks: ['dog']" in line
    assert not (tmp_path / "out").exists()


def test_class_folders_named_in_two_unicode_forms(tmp_path, capsys, no_loading):
    """'café' from macOS (NFD) next to 'café' from Linux (NFC): the error says the Unicode forms
    differ, not the case, before anything loads; two such folders in one split are refused too."""
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    train = image_folder(tmp_path / "train", ["cat", nfc])
    validation = image_folder(tmp_path / "validation", ["cat", nfd])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train, validation_dir=validation)) == 2
    line = error_of(capsys)
    assert line.startswith("error: validation_dir and train_dir write the class 'café' in different Unicode forms")
    assert "'cafe\\u0301', NFD" in line and "'caf\\xe9', NFC" in line and "case matters" not in line
    assert "Fix: rename the class folders so both use the same form, e.g. NFC" in line
    image_folder(tmp_path / "train", [nfd])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train)) == 2
    line = error_of(capsys)
    assert f"{train!r} has class folders 'cafe\\u0301', NFD and 'caf\\xe9', NFC that are the same name" in line
    assert not (tmp_path / "out").exists()
    # a space after a folder's name: two classes that print alike in a list
    spaced = image_folder(tmp_path / "spaced", ["cat", "cat "])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=spaced)) == 2
    assert f"{spaced!r} has class folders 'cat' and 'cat ' that differ only in surrounding spaces" in error_of(capsys)
    spaced = image_folder(tmp_path / "both", [nfc, nfd + " "])  # a space and the other form: still one class
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=spaced)) == 2
    assert "that differ only in surrounding spaces and in Unicode form" in error_of(capsys)


def test_teacher_folder_without_weights(tmp_path, capsys, no_loading):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher))) == 2
    assert f"teacher_model_name_or_path: folder '{teacher}' holds no weights (model.safetensors)" in error_of(capsys)
    # a student from scratch needs no weights; its teacher still does
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher), student_from_scratch=True)) == 2
    assert f"teacher_model_name_or_path: folder '{teacher}' holds no weights (model.safetensors)" in error_of(capsys)
    (teacher / "pytorch_model.bin").write_bytes(b"")  # passed, and failed after the data loaded
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher))) == 2
    assert f"folder '{teacher}' holds pytorch_model.bin only, and hf_rcka loads safetensors only (a pickle file can " \
           f"run code as it loads): convert it in a session that trusts the file, loading it with transformers' " \
           f"from_pretrained('{teacher}') and saving it with save_pretrained('{teacher}', safe_serialization=True)" \
           in error_of(capsys)
    # a sharded save over an earlier single file: transformers loaded the stale single file
    (teacher / "model.safetensors").write_bytes(b"")
    os.utime(teacher / "model.safetensors", (1, 1))
    (teacher / "model.safetensors.index.json").write_text("{}")
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher))) == 2
    assert "holds model.safetensors.index.json (sharded weights) and an older model.safetensors, which transformers " \
           "would load: remove model.safetensors, which an earlier save left" in error_of(capsys)


def test_a_model_folder_whose_weights_are_not_used_needs_none():
    """A student built from scratch from a folder's config reads no weights there: a mutant that
    asked every folder for weights passed every test, and refused such a recipe."""
    import tempfile

    from hf_rcka.cli.model_sources import check_model_source
    from hf_rcka.errors import ModelError

    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "config.json"), "w") as handle:
            json.dump({"model_type": "resnet"}, handle)
        check_model_source("model_name_or_path", folder, needs_weights=False)
        with pytest.raises(ModelError, match="holds no weights"):
            check_model_source("model_name_or_path", folder)


def test_a_model_folder_without_its_config_or_image_processor_is_refused_before_loading(tmp_path, capsys, no_loading):
    """Both were found once the data and the model had loaded (minutes for a large image folder)."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"")
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher))) == 2
    assert error_of(capsys) == (f"error: teacher_model_name_or_path: folder '{teacher}' has no config.json: give the "
                                "folder save_pretrained wrote (a run's output_dir, or one of its checkpoint-N folders)")
    (teacher / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher))) == 2
    assert error_of(capsys) == (f"error: teacher_model_name_or_path: {teacher} holds no preprocessor_config.json, so "
                                "how the model expects its images (size, normalisation) is unknown: save its image "
                                f"processor next to it (processor.save_pretrained('{teacher}'))")
    (teacher / "checkpoint-500").mkdir()  # a transformers Trainer's folder is no hf_rcka run to resume (reviewer)
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher))) == 2
    assert error_of(capsys).endswith(f"save its image processor next to it (processor.save_pretrained('{teacher}'))")
    # a run's export cut short (the processor is saved after the weights): finished by resuming the run
    (teacher / "distill_config.yaml").write_text("model_name_or_path: config:resnet\n")
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher))) == 2
    assert error_of(capsys).endswith("is unknown: the run there was stopped before its export was whole; finish it by "
                                     "resuming the run (--resume_from_checkpoint true with its recipe), or save its "
                                     "image processor next to it")
    # a timm model's folder carries its data config in config.json: it needs no processor file
    (teacher / "config.json").write_text(json.dumps({"architecture": "resnet10t", "num_classes": 3}))
    with pytest.raises(AssertionError, match="a model or dataset was loaded"):  # no_loading: past every check
        run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher)))



def model_source(tmp_path: Path, model: str, hf_model) -> str:
    """``model`` as a recipe names it: a saved transformers folder (of ``hf_model()``, with a
    processor), a saved timm folder, or the name itself."""
    from tests.conftest import processor

    folder = tmp_path / "model"
    if model == "folder":
        hf_model().save_pretrained(folder)
        processor(16).save_pretrained(folder)
    elif model == "timm folder":
        from hf_rcka.models.timm_models import build_timm_classifier
        build_timm_classifier("resnet10t").save_pretrained(folder)
    return str(folder) if "folder" in model else model

@pytest.mark.parametrize("side,model,overrides,expected", [
    ("teacher", "folder", {"hidden_sizez": [8]}, "config_overrides key 'hidden_sizez' is not a field of ResNetConfig"),
    ("teacher", "folder", {"architectures": ["ResNetForImageClassificationn"]},
     "config_overrides architectures=['ResNetForImageClassificationn'] names no transformers image-classification "
     "class for model type 'resnet'"),
    # no closing parenthesis: Python 3.13's TypeError goes on with ". Did you mean 'drop_rate'?"
    ("student", "timm/resnet10t", {"drop_rat": 0.1}, "timm architecture 'resnet10t' rejected a config_override "
                                                     "(ResNet.__init__() got an unexpected keyword argument 'drop_rat'"),
    ("student", "timm folder", {"drop_rat": 0.1}, "timm architecture 'resnet10t' rejected a config_override"),
    ("student", "config:vit", {**TINY_VIT, "architectures": ["DeiTForImageClassificationWithTeacher"]},
     "names no transformers image-classification class for model type 'vit'"),
    # round 37: each of these passed the checks and failed (or was dropped) once the data had loaded.
    # transformers' configs check their fields' types: a StrictDataclassFieldValidationError traceback
    ("student", "config:vit", {**TINY_VIT, "num_hidden_layers": "2"},
     "Field 'num_hidden_layers' expected int, got str (value: '2')"),
    ("teacher", "folder", {"hidden_sizes": "8"}, "Field 'hidden_sizes' expected"),
    # timm's own assertion: an AssertionError traceback as the student was built
    ("student", "timm/resnet10t", {"global_pool": "maxx"},
     "timm architecture 'resnet10t' rejected a config_override (Invalid pool type: maxx)"),
    # timm evaluated another crop_mode as a centre crop without a word
    ("student", "timm/resnet10t", {"pretrained_cfg_overlay": {"crop_mode": "squish"}},
     "pretrained_cfg_overlay crop_mode 'squish' is not one of timm's: did you mean 'squash'?"),
    # a KeyError traceback as the student's processor was built
    ("student", "timm/resnet10t", {"pretrained_cfg_overlay": {"interpolation": "bicubicc"}},
     "pretrained_cfg_overlay interpolation 'bicubicc' is not one of timm's: did you mean 'bicubic'?"),
    # refused at the student's probe as "the student cannot take 16x16 inputs", with an image_size fix
    ("student", "timm/resnet10t", {"drop_rate": 1.5}, "drop_rate is a probability, in [0, 1], got 1.5"),
    # timm builds no stochastic depth for a negative rate, without a word
    ("student", "timm folder", {"drop_path_rate": -0.1}, "drop_path_rate is a probability, in [0, 1], got -0.1"),
    # text under YAML 1.2, which timm took as true: each block's last BatchNorm zeroed, the opposite of the recipe
    ("student", "timm/resnet10t", {"zero_init_last": "no"},
     "zero_init_last is the text 'no', which timm takes as true: write zero_init_last: false"),
])
def test_overrides_of_timm_folder_and_hub_models_are_checked_before_loading(tmp_path, capsys, no_loading, side,
                                                                           model, overrides, expected):
    """Only a config: type's overrides were checked before the data loaded; the others failed when the
    model was built after it."""
    from tests.conftest import tiny_resnet

    name = model_source(tmp_path, model, tiny_resnet)
    if side == "teacher":
        overrides_key = "teacher_config_overrides"
        recipe = base(tmp_path, teacher_model_name_or_path=name, teacher_config_overrides=overrides)
    else:
        overrides_key = "student_config_overrides"
        recipe = base(tmp_path, model_name_or_path=name, student_config_overrides=overrides, student_from_scratch=True)
    assert run(tmp_path, recipe) == 2
    line = error_of(capsys)
    assert line.startswith(f"error: {overrides_key}: ") and expected in line, line


def test_a_teacher_with_code_of_its_own_needs_trust_remote_code(tmp_path, capsys, no_loading):
    """It was transformers' three-line error, after the data had loaded."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "acme-net", "auto_map": {
        "AutoModelForImageClassification": "modeling_acme.AcmeForImageClassification"}}))
    (teacher / "model.safetensors").write_bytes(b"")
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher))) == 2
    assert error_of(capsys) == (f"error: teacher_model_name_or_path: '{teacher}' is a model of type 'acme-net' with "
                                "code of its own (its config's auto_map), which transformers does not know: set "
                                "trust_remote_code: true if you trust that repository's code (it runs as the model "
                                "loads)")


def test_an_image_processor_with_code_of_its_own_needs_trust_remote_code(tmp_path, capsys, no_loading):
    """The model was built-in, its processor custom: transformers' three-line error, with a broken URL."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (teacher / "preprocessor_config.json").write_text(json.dumps({"auto_map": {
        "AutoImageProcessor": "processing_acme.AcmeProcessor"}}))
    (teacher / "model.safetensors").write_bytes(b"")
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path=str(teacher))) == 2
    assert error_of(capsys) == (f"error: teacher_model_name_or_path: '{teacher}' has an image processor with code of "
                                "its own (preprocessor_config.json's auto_map): set trust_remote_code: true if you "
                                "trust that code (it runs as the processor loads), or replace the file with a "
                                "built-in processor's")


def test_a_known_model_type_with_an_auto_map_or_a_trusted_one_passes_the_remote_code_check(tmp_path):
    """A known type's auto_map is not used without trust_remote_code (it loads as transformers'
    class, with a warning), and trust_remote_code lets any through: a mutant that refused every
    auto_map passed every test, and turned away a ViT checkpoint that loads."""
    from hf_rcka.cli.model_sources import check_remote_code
    from hf_rcka.errors import ModelError

    for model_type in ("vit", "acme-net"):
        (tmp_path / model_type).mkdir()
        (tmp_path / model_type / "config.json").write_text(json.dumps({"model_type": model_type, "auto_map": {
            "AutoModelForImageClassification": "modeling_acme.AcmeForImageClassification"}}))
    check_remote_code("teacher_model_name_or_path", str(tmp_path / "vit"), False)
    check_remote_code("teacher_model_name_or_path", str(tmp_path / "acme-net"), True)
    with pytest.raises(ModelError, match="is a model of type 'acme-net' with code of its own"):
        check_remote_code("teacher_model_name_or_path", str(tmp_path / "acme-net"), False)


def test_output_dir_that_would_overwrite_the_teacher(tmp_path, capsys, no_loading):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    for output_dir in (teacher, tmp_path):  # the teacher's folder itself, or a folder holding it
        recipe = base(tmp_path, teacher_model_name_or_path=str(teacher), output_dir=str(output_dir),
                      overwrite_output_dir=True)
        assert run(tmp_path, recipe) == 2
        assert f"would overwrite teacher_model_name_or_path '{teacher}'" in error_of(capsys)
    assert (teacher / "config.json").read_text() == "{}"
    # the training images' folder, or a folder in it: checkpoints would sit among the classes
    train = image_folder(tmp_path / "images" / "train", ["cat", "dog"])
    for output_dir in (train, os.path.join(train, "run")):
        recipe = base(tmp_path, dataset_name=None, train_dir=train, output_dir=output_dir)
        assert run(tmp_path, recipe) == 2
        assert f"output_dir {output_dir!r} is inside train_dir {train!r}" in error_of(capsys)


def test_class_folders_that_would_train_other_classes(tmp_path, capsys, no_loading):
    # datasets labels an image by the folder it is in: train/0/2019/1.png would be class '2019'
    nested = tmp_path / "nested"
    for name in ("0", "1"):
        image_folder(nested / name, ["2019", "2020"])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=str(nested))) == 2
    assert "keeps images in sub-folders (['2019', '2020'])" in error_of(capsys)
    # the dataset's root, holding train/ and validation/: not "put the images in their class folders"
    root = tmp_path / "root"
    for split in ("train", "validation"):
        image_folder(root / split, ["cat", "dog"])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=str(root))) == 2
    assert f"{str(root)!r} holds split folders ('train' among them), not class folders" in error_of(capsys)
    # a class whose training folder holds no image (only a README) would never be trained
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    (tmp_path / "train" / "eel").mkdir()
    (tmp_path / "train" / "eel" / "README.txt").write_text("images to come")
    validation = image_folder(tmp_path / "validation", ["cat", "dog", "eel"])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train, validation_dir=validation)) == 2
    assert "validation_dir has classes train_dir lacks: ['eel']" in error_of(capsys)


def test_corrupt_checkpoint_on_resume(tmp_path, capsys, no_loading):
    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert run(tmp_path, base(tmp_path), "--resume_from_checkpoint", "true") == 2
    line = error_of(capsys)
    assert f"{checkpoint / 'model.safetensors'}" in line and "is corrupt or incomplete" in line


def test_a_checkpoint_whose_save_was_cut_short_names_the_one_before_it(tmp_path, capsys, no_loading):
    """A full disk at optimizer.pt left checkpoint-4 with its weights alone; resume_from_checkpoint:
    true picked it and said to give "a checkpoint-N folder of the run, or --resume_from_checkpoint
    true", the command just run."""
    import torch
    from safetensors.torch import save_file

    out = tmp_path / "out"
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        save_file({"w": torch.zeros(2)}, str(out / f"checkpoint-{step}" / "model.safetensors"))
    assert run(tmp_path, base(tmp_path), "--resume_from_checkpoint", "true") == 2
    line = error_of(capsys)
    assert f"{str(out / 'checkpoint-4')!r} is incomplete (it holds weights but no optimizer and scheduler state" in line
    assert f"or resume from an earlier one (--resume_from_checkpoint {out / 'checkpoint-2'}" in line
    assert "or --resume_from_checkpoint true" not in line


def test_a_run_records_every_loss_option_so_a_changed_default_does_not_change_it(tmp_path, capsys, monkeypatch):
    """The records held the options as the recipe spelt them, and a resume (or a rerun of the record)
    read the left-out ones with the running version's defaults: a run started when rcka defaulted to
    15/15 went on at 1/1 after an upgrade, exit 0."""
    from hf_rcka.losses.rcka import RCKALoss

    teacher = save_teacher(tmp_path / "teacher", [str(digit) for digit in range(10)])
    first = base(tmp_path, teacher_model_name_or_path=teacher, save_strategy="steps", save_steps=2,
                 losses=[{"name": "ce"}, {"name": "rcka"}])
    assert run(tmp_path, first) == 0
    out = tmp_path / "out"
    recorded = yaml.safe_load((out / "distill_config.yaml").read_text())
    rcka = next(spec for spec in recorded["losses"] if spec["name"] == "rcka")
    assert rcka["intra_weight"] == 1.0 and rcka["inter_weight"] == 1.0 and rcka["kernel"] == "linear"
    saved = json.loads((out / "checkpoint-2" / "loss_settings.json").read_text())
    assert next(spec for spec in saved["losses"] if spec["name"] == "rcka")["intra_weight"] == 1.0
    # an upgrade changes rcka's default intra_weight to 5
    defaults = RCKALoss.__init__.__defaults__
    monkeypatch.setattr(RCKALoss.__init__, "__defaults__", (defaults[0], 5.0, *defaults[2:]))
    assert run(tmp_path, {**first, "max_steps": 3}, "--resume_from_checkpoint", "true") == 2  # its recipe as written
    assert "rcka intra_weight 1.0 -> 5.0" in error_of(capsys)
    recipe = str(out / "distill_config.yaml")  # the run's record resumes at the value it trained with
    assert main([recipe, "--max_steps", "3", "--resume_from_checkpoint", "true"]) == 0
    again = yaml.safe_load((out / "distill_config.yaml").read_text())
    assert next(spec for spec in again["losses"] if spec["name"] == "rcka")["intra_weight"] == 1.0


def change_default(monkeypatch, cls: type, key: str, value) -> None:
    """As an upgrade would: the argument dataclass ``cls`` defaults ``key`` to ``value``."""
    import inspect

    names = list(inspect.signature(cls.__init__).parameters)[1:]
    defaults = list(cls.__init__.__defaults__)
    defaults[len(defaults) - len(names) + names.index(key)] = value
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))
    monkeypatch.setattr(cls.__dataclass_fields__[key], "default", value)


def test_a_run_records_the_settings_it_left_out_so_a_changed_default_does_not_change_it(tmp_path, capsys,
                                                                                          monkeypatch):
    """The record held the recipe as written: a rerun of it, or a resume, read every setting the
    recipe left out at the running version's default, so an upgrade that changed one (as
    model_no_weight_decay's once did) changed how the run went on, unsaid."""
    from hf_rcka.arguments import DataArguments, DistillationTrainingArguments

    first = base(tmp_path, no_aug=False, save_strategy="steps", save_steps=1)
    assert run(tmp_path, first) == 0
    record = tmp_path / "out" / "distill_config.yaml"
    recorded = yaml.safe_load(record.read_text())
    assert recorded["color_jitter"] == 0.4 and recorded["hflip"] == 0.5 and recorded["model_no_weight_decay"] is True
    assert recorded["learning_rate"] == 5e-5 and recorded["split_seed"] == 42 and recorded["seed"] == 42
    assert "aa" not in recorded and "lr_base" not in recorded, "no value (None) is written"
    assert "\n# Written by hf_rcka " in record.read_text()
    change_default(monkeypatch, DataArguments, "color_jitter", 0.1)  # an upgrade
    change_default(monkeypatch, DistillationTrainingArguments, "max_grad_norm", 5.0)
    capsys.readouterr()
    assert main([str(record), "--max_steps", "3", "--resume_from_checkpoint", "true"]) == 0
    assert "other settings" not in capsys.readouterr().err, "the record resumes as it trained"
    again = yaml.safe_load(record.read_text())
    assert again["color_jitter"] == 0.4 and again["max_grad_norm"] == 1.0
    assert run(tmp_path, {**first, "max_steps": 4}, "--resume_from_checkpoint", "true") == 0  # the recipe as written
    err = capsys.readouterr().err
    assert "was trained with other settings (color_jitter 0.4 -> 0.1; max_grad_norm 1 -> 5): its steps from here " \
           "on train with these" in err
    # the recipe to go on with is the checkpoint's copy of its launch's record, named where it is
    assert re.search(r"resume with the recipe it recorded, \S+/out/checkpoint-3/distill_config\.yaml", err), err[-800:]
    assert yaml.safe_load(record.read_text())["color_jitter"] == 0.1, "the record names the values it went on with"
    # said by the process that logs, not once by every process (8 copies on 8 GPUs)
    monkeypatch.setattr(DistillationTrainingArguments, "should_log", property(lambda self: False))
    assert run(tmp_path, {**first, "max_steps": 5, "max_grad_norm": 2.0}, "--resume_from_checkpoint", "true") == 0
    assert "other settings" not in capsys.readouterr().err


def test_the_record_writes_out_every_setting_that_decides_the_training():
    """Each setting the record leaves out is read at the running version's default by a rerun or a
    resume: one missing from the written defaults changes the run unsaid when an upgrade changes it."""
    import dataclasses

    from hf_rcka.arguments import left_out_defaults
    from hf_rcka.augmentation import AugmentationArguments

    written = left_out_defaults({})
    augmentation = {f.name for f in dataclasses.fields(AugmentationArguments)} - {"aa", "cutmix_minmax"}  # None
    deciding = {"student_from_scratch", "teacher_label_mapping", "image_column_name", "label_column_name",
                "train_val_split", "split_seed", "learning_rate", "lr_base_size", "lr_base_scale", "optim",
                "weight_decay", "model_no_weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                "num_train_epochs", "lr_scheduler_type", "warmup_steps", "seed", "label_smoothing_factor",
                "per_device_train_batch_size", "gradient_accumulation_steps", "model_ema", "model_ema_decay",
                "model_ema_warmup", "model_ema_export", *augmentation}
    assert deciding <= set(written), f"not written: {sorted(deciding - set(written))}"
    assert "aa" not in written and "cutmix_minmax" not in written, "no value (None) is written"
    assert set(left_out_defaults({"seed": 3, "hflip": 0.0})) == set(written) - {"seed", "hflip"}, "the recipe's own stay"
    assert "learning_rate" not in left_out_defaults({"lr_base": 1e-3}), "lr_base sets the rate"


def test_a_recipe_with_lr_base_records_no_learning_rate(tmp_path, capsys):
    """The learning rate lr_base sets is not the default's: a record holding both was refused. The
    log says the rate and its base size (256 unless given: DeiT's rate, for 512, trained at twice
    its rate without a word)."""
    assert run(tmp_path, base(tmp_path, lr_base=1e-3)) == 0
    assert ("learning rate: 1.95313e-05, lr_base 0.001 for lr_base_size 256 images, scaled (linear) to the global "
            "batch of 5") in capsys.readouterr().err
    record = tmp_path / "out" / "distill_config.yaml"
    recorded = yaml.safe_load(record.read_text())
    assert recorded["lr_base"] == 1e-3 and "learning_rate" not in recorded and recorded["lr_base_size"] == 256
    assert main([str(record), "--output_dir", str(tmp_path / "again")]) == 0


def test_the_rate_line_names_the_global_batch_the_rate_is_scaled_to():
    """The rate lr_base gives is scaled to the global batch (processes x per-device batch x
    accumulation), not to the per-device batch."""
    from hf_rcka.arguments import DistillationTrainingArguments

    args = DistillationTrainingArguments(output_dir="unused", use_cpu=True, lr_base=1e-3, per_device_train_batch_size=5,
                                         gradient_accumulation_steps=4)
    assert cli._rate_line(args) == ("learning rate: 7.8125e-05, lr_base 0.001 for lr_base_size 256 images, scaled "
                                    "(linear) to the global batch of 20")


def test_a_loss_of_ones_own_whose_defaults_no_record_reads_back_resumes(tmp_path):
    """A tuple, an enum or a function as a custom loss's default: written into the records, they came
    back as a list or a string that differed from the default at the next resume (refused, with the
    run's own record too), or could not be written (a traceback once the run had started)."""
    import enum

    from hf_rcka import LOSSES
    from hf_rcka.losses import DistillationLoss

    class Mode(enum.Enum):
        SOFT = "soft"

    class Shaped(DistillationLoss):
        requires = frozenset({"student_logits"})

        def __init__(self, weight=1.0, temps=(2.0, 4.0), mode=Mode.SOFT, act=torch.relu, scale=1.0):
            super().__init__(weight)
            self.scale = scale

        def term(self, inputs):
            return self.scale * inputs.student_logits.float().pow(2).mean()

    LOSSES.register("shaped")(Shaped)
    try:
        first = base(tmp_path, save_strategy="steps", save_steps=2, losses=[{"name": "ce"}, {"name": "shaped"}])
        assert run(tmp_path, first) == 0
        record = tmp_path / "out" / "distill_config.yaml"
        shaped = next(spec for spec in yaml.safe_load(record.read_text())["losses"] if spec["name"] == "shaped")
        assert shaped == {"name": "shaped", "weight": 1.0, "scale": 1.0}
        assert run(tmp_path, {**first, "max_steps": 3}, "--resume_from_checkpoint", "true") == 0
        assert main([str(record), "--max_steps", "4", "--resume_from_checkpoint", "true"]) == 0
    finally:
        LOSSES._classes.pop("shaped", None)


def _run_recorded_as_before_every_option(tmp_path: Path) -> tuple[dict, Path]:
    """A distillation run with rcka, its records rewritten as an earlier version wrote them (rcka's
    weights left out); its recipe and its checkpoint-2."""
    teacher = save_teacher(tmp_path / "teacher", [str(digit) for digit in range(10)])
    first = base(tmp_path, teacher_model_name_or_path=teacher, save_strategy="steps", save_steps=2,
                 losses=[{"name": "ce"}, {"name": "rcka"}])
    assert run(tmp_path, first) == 0
    checkpoint = tmp_path / "out" / "checkpoint-2"
    (checkpoint / "distill_config.yaml").unlink()  # an earlier version's checkpoint kept no copy of the record
    for path in (tmp_path / "out" / "distill_config.yaml", checkpoint / "loss_settings.json"):
        text = path.read_text()
        for option in ("intra_weight", "inter_weight"):
            text = re.sub(rf"[,\s]*\"?{option}\"?: 1\.0", "", text)
        assert "intra_weight" not in text
        path.write_text(text)
    return first, checkpoint


def test_a_checkpoint_of_an_earlier_version_resumed_once_still_takes_the_value_it_was_told_to_set(tmp_path, capsys):
    """A resume of an earlier version's checkpoint rewrote the run's record with today's defaults, and
    a resume of the same checkpoint with the earlier value, as the warning said, was then refused as
    a change of options: the checkpoint's own loss record decides."""
    first, checkpoint = _run_recorded_as_before_every_option(tmp_path)
    resume = ["--resume_from_checkpoint", str(checkpoint), "--overwrite_output_dir", "true"]
    assert run(tmp_path, {**first, "max_steps": 3}, *resume) == 0  # at today's 1/1, said
    assert "records no value for rcka intra_weight" in capsys.readouterr().err
    earlier = {**first, "losses": [{"name": "ce"}, {"name": "rcka", "intra_weight": 15.0, "inter_weight": 15.0}]}
    assert run(tmp_path, {**earlier, "max_steps": 3}, *resume) == 0
    assert "records no value" not in capsys.readouterr().err  # the recipe set them: its choice, not a default


@pytest.mark.parametrize("checkpoint_record", [True, False], ids=["loss_settings", "no_loss_settings"])
def test_a_record_of_an_earlier_version_that_leaves_a_changed_default_out_is_said(tmp_path, capsys, checkpoint_record):
    """Records written before every option was (rcka's weights left out, when their default was
    15/15): the resume goes on and says which value it trains with. Said once: by the checkpoint's
    own loss record as it loads, or from the run's recorded recipe before anything loads (older
    checkpoints)."""
    first, checkpoint = _run_recorded_as_before_every_option(tmp_path)
    (checkpoint / "teacher.json").unlink()
    if not checkpoint_record:
        (checkpoint / "loss_settings.json").unlink()
    assert run(tmp_path, {**first, "max_steps": 3}, "--resume_from_checkpoint", "true") == 0
    said = " ".join(capsys.readouterr().err.split())
    assert (f"{str(checkpoint)} records no value for rcka intra_weight (its default was 15.0 before 2026-12-01; this "
            "run: 1.0); rcka inter_weight (its default was 15.0 before 2026-12-01; this run: 1.0)") in said
    assert said.count("records no value for") == 1
    assert f"{str(checkpoint)} records no teacher (teacher.json, written by an earlier hf_rcka)" in said


def test_resume_that_does_not_fit_the_checkpoint(tmp_path, capsys):
    teacher = dict(teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET,
                   save_strategy="steps", save_steps=2)
    first = base(tmp_path, **teacher, losses=[{"name": "ce"}, {"name": "srd"}])
    assert run(tmp_path, first) == 0
    out = tmp_path / "out"
    recorded = (out / "distill_config.yaml").read_text()
    # the run folder instead of one of its checkpoints: found before anything loads
    assert run(tmp_path, {**first, "max_steps": 3}, "--resume_from_checkpoint", str(out)) == 2
    assert f"{str(out)!r} is not a checkpoint" in (line := error_of(capsys)) and "checkpoint-2" in line
    # other losses than the checkpoint's: one line, and the run's recorded recipe is kept
    other = base(tmp_path, **teacher, losses=[{"name": "ce"}, {"name": "kernel_transfer"}], max_steps=3)
    assert run(tmp_path, other, "--resume_from_checkpoint", "true") == 2
    assert f"{str(out / 'checkpoint-2')!r} continues a run recorded with other settings (losses ['ce', 'srd'] -> " \
           "['ce', 'kernel_transfer'])" in error_of(capsys)
    assert (out / "distill_config.yaml").read_text() == recorded
    # without the run's record (nor the checkpoint's copy of it), the checkpoint's own loss record
    # finds it when it loads, and without that (an earlier version's checkpoint) its loss state
    (out / "distill_config.yaml").unlink()
    (out / "checkpoint-2" / "distill_config.yaml").unlink()
    assert run(tmp_path, other, "--resume_from_checkpoint", "true") == 2
    assert f"{str(out / 'checkpoint-2')!r} was trained with other loss settings (losses ['ce', 'srd'] -> " \
           "['ce', 'kernel_transfer'])" in error_of(capsys)
    settings = (out / "checkpoint-2" / "loss_settings.json").read_text()
    (out / "checkpoint-2" / "loss_settings.json").unlink()
    assert run(tmp_path, other, "--resume_from_checkpoint", "true") == 2
    assert f"{str(out / 'checkpoint-2')!r} does not fit this run" in error_of(capsys)
    (out / "checkpoint-2" / "loss_settings.json").write_text(settings)
    for folder in (out, out / "checkpoint-2"):
        (folder / "distill_config.yaml").write_text(recorded)
    # another global batch (a 2-process run resumed in 1 went on at half its batch, exit 0)
    assert run(tmp_path, {**first, "max_steps": 3, "per_device_train_batch_size": 10}, "--resume_from_checkpoint",
               "true") == 2
    said = error_of(capsys)
    assert "was trained with a global batch of 5 (1 process); this launch gives 10 images (1 process x 10 images)" \
        in said
    # a checkpoint that no launch of today's can repeat as it was (per-device x GPUs in one process, before
    # one process trained on one device) is told how to make its batch
    assert "gradient_accumulation_steps so that this launch's processes make 5 images a step" in said


def test_a_resume_that_splits_the_global_batch_otherwise_is_said(tmp_path, capsys):
    """2 processes x 32 images resumed as 1 x 64 (the same global batch) went on unsaid: batch
    normalisation and the relational losses saw other batches (weights 4e-3 away from the
    uninterrupted run's, with no_aug), and the record and card described the whole run as 1 x 64."""
    first = base(tmp_path, per_device_train_batch_size=4, max_train_samples=16, save_strategy="steps", save_steps=1)
    assert run(tmp_path, first) == 0
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert json.loads((checkpoint / "global_batch.json").read_text())["forward_batch"] == 4
    capsys.readouterr()
    resume = ["--resume_from_checkpoint", str(checkpoint), "--overwrite_output_dir", "true"]
    assert run(tmp_path, {**first, "max_steps": 3}, *resume) == 0
    assert "the same global batch, split otherwise" not in capsys.readouterr().err
    split = {**first, "max_steps": 3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
    assert run(tmp_path, split, *resume) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"{checkpoint} was trained as 1 process x 4 images a forward; this launch runs 1 process x 2 (the same " \
           "global batch, split otherwise)" in said



def test_a_resume_split_over_other_processes_is_said_and_an_earlier_record_is_not(tmp_path, caplog):
    """The split is the processes and each one's forward: 2 processes x 2 images resumed as 1 x 2
    accumulating 2 (the same forward, the same global batch) went on unsaid with the processes left
    out of the comparison. A checkpoint of an earlier version records no forward: compared by its
    processes alone, not said to differ. With split_batches, a process's forward is its share."""
    from hf_rcka.trainer.resume_match import forward_batch, warn_other_split

    def launch(processes, split_batches=False):
        return SimpleNamespace(world_size=processes, accelerator_config=SimpleNamespace(split_batches=split_batches))

    record = tmp_path / "global_batch.json"
    record.write_text(json.dumps({"global_batch": 4, "processes": 2, "forward_batch": 2, "epoch_steps": 5}))
    with caplog.at_level("WARNING", logger="hf_rcka"):
        warn_other_split(str(tmp_path), launch(2), 2)
        assert not caplog.text, "launched as it was"
        warn_other_split(str(tmp_path), launch(1), 2)
    assert "was trained as 2 processes x 2 images a forward; this launch runs 1 process x 2 (the same global batch" \
        in " ".join(caplog.text.split())
    caplog.clear()
    record.write_text(json.dumps({"global_batch": 4, "processes": 1, "epoch_steps": 5}))  # no forward_batch
    with caplog.at_level("WARNING", logger="hf_rcka"):
        warn_other_split(str(tmp_path), launch(1), 4)
    assert not caplog.text
    assert forward_batch(launch(2, split_batches=True), 64) == 32
    assert forward_batch(launch(2), 64) == forward_batch(launch(1, split_batches=True), 64) == 64

def test_resume_with_another_split_or_other_losses_is_refused(tmp_path, capsys):
    """Both resumed and exited 0: another split evaluated on images the checkpoint trained on, and
    swapped losses went on under a record and card that named only the new ones."""
    first = base(tmp_path, teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET,
                 save_strategy="steps", save_steps=2, max_train_samples=None, max_eval_samples=None,
                 losses=[{"name": "ce"}, {"name": "feature_cka"}])
    assert run(tmp_path, first) == 0
    resume = ("--resume_from_checkpoint", "true")
    assert run(tmp_path, {**first, "max_steps": 3, "split_seed": 7}, *resume) == 2
    assert "was trained holding out split_seed 42 (now 7): the evaluation would take images it trained on" in \
        error_of(capsys)
    assert run(tmp_path, {**first, "max_steps": 3, "train_val_split": 0.1}, *resume) == 2
    assert "train_val_split 0.15 (now 0.1)" in error_of(capsys)
    swapped = {**first, "max_steps": 3, "losses": [{"name": "ce"}, {"name": "fitnet"}]}
    assert run(tmp_path, swapped, *resume) == 2
    assert "(losses ['ce', 'feature_cka'] -> ['ce', 'fitnet'])" in error_of(capsys)
    # another teacher, loss option, pairs or image size: each went on under a record naming only the new one
    for change, said in [
        ({"teacher_config_overrides": {**TINY_RESNET, "hidden_sizes": [8, 12, 16, 24]}}, "teacher_config_overrides"),
        ({"losses": [{"name": "ce"}, {"name": "feature_cka", "center": False}]}, "feature_cka center True -> False"),
        ({"feature_pairs": [{"student_layer": 1, "teacher_layer": 1}]}, "feature_pairs 'auto' -> [{'student_layer': 1"),
        ({"image_size": 24}, "image_size 16 -> 24"),
        # the resumed epoch's order is drawn from them: another one skipped and repeated images
        ({"seed": 1}, "seed 42 -> 1"),
        ({"aug_repeats": 2, "no_aug": False}, "aug_repeats 0 -> 2"),
        # another student: refused only as the checkpoint loaded, after the data and models had
        ({"model_name_or_path": "config:regnet", "student_config_overrides": None},
         "model_name_or_path 'config:resnet' -> 'config:regnet'"),
    ]:
        assert run(tmp_path, {**first, "max_steps": 3, **change}, *resume) == 2
        line = error_of(capsys)
        assert f"continues a run recorded with other settings ({said}" in line, line
    # refused once the data has loaded, before the run it would replace is set aside
    other = tmp_path / "other"
    assert run(tmp_path, {**first, "output_dir": str(other)}) == 0
    before = sorted(p.name for p in other.iterdir())
    assert run(tmp_path, {**first, "output_dir": str(other), "max_steps": 3, "split_seed": 7}, "--resume_from_checkpoint",
               str(tmp_path / "out" / "checkpoint-2"), "--overwrite_output_dir", "true") == 2
    assert "was trained holding out split_seed 42 (now 7)" in error_of(capsys)
    assert sorted(p.name for p in other.iterdir()) == before
    reweighted = {**first, "max_steps": 3, "losses": [{"name": "ce"}, {"name": "feature_cka", "weight": 2.0,
                                                                        "center": True}]}
    assert run(tmp_path, reweighted, *resume) == 0  # the same losses (a default spelt out), weighed otherwise


def test_resume_with_another_split_seed_is_fine_where_nothing_is_carved(tmp_path):
    """With validation_dir the split settings choose no images: refusing them was wrong."""
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    validation = image_folder(tmp_path / "val", ["cat", "dog"], per_class=2)
    first = base(tmp_path, dataset_name=None, train_dir=train, validation_dir=validation, max_train_samples=None,
                 max_eval_samples=None, save_strategy="steps", save_steps=1, max_steps=1)
    assert run(tmp_path, first) == 0
    assert run(tmp_path, {**first, "max_steps": 2, "split_seed": 7}, "--resume_from_checkpoint", "true") == 0


def test_a_truncated_optimizer_file_is_found_before_loading(tmp_path, capsys, monkeypatch):
    first = base(tmp_path, save_strategy="steps", save_steps=2)
    assert run(tmp_path, first) == 0
    optimizer = tmp_path / "out" / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:200])
    for name in ("load_image_classifier", "load_image_processor"):
        monkeypatch.setattr(cli, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert run(tmp_path, {**first, "max_steps": 3}, "--resume_from_checkpoint", "true") == 2
    assert f"{str(optimizer)!r} is corrupt or incomplete" in error_of(capsys)


def test_resume_keeps_the_checkpoint_classes(tmp_path, capsys, monkeypatch):
    """A resumed head keeps its class order when the data lists the same classes in another
    order (the labels are mapped by name), and data with other classes is an error: before this,
    a permuted or renamed class list silently relabelled the trained head."""
    import datasets

    def pets(order):
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(24)]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=order)})
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(
            {"image": images, "label": [i % 3 for i in range(24)]}, features=features)})

    order = ["cat", "dog", "eel"]
    fake_hub_dataset(monkeypatch, lambda: pets(order))
    first = base(tmp_path, dataset_name="acme/pets", save_strategy="steps", save_steps=2)
    assert run(tmp_path, first) == 0
    out = tmp_path / "out"
    order = ["eel", "cat", "dog"]  # the same classes, listed in another order
    assert run(tmp_path, {**first, "max_steps": 3}, "--resume_from_checkpoint", "true") == 0
    saved = json.loads((out / "config.json").read_text())["id2label"]
    assert [saved[str(i)] for i in range(3)] == ["cat", "dog", "eel"]
    order = ["cat", "dog", "emu"]
    assert run(tmp_path, {**first, "max_steps": 4}, "--resume_from_checkpoint", "true") == 2
    assert error_of(capsys) == (
        "error: resume_from_checkpoint: the checkpoint was trained on other classes: the dataset has ['emu'] "
        "that the checkpoint lacks; the checkpoint has ['eel'] that the dataset lacks. Resume with the data it "
        "was trained on, or train into a new output_dir")


def test_resuming_a_checkpoint_of_nan_weights_is_refused_before_training(tmp_path, capsys):
    """Such a checkpoint (written before the divergence check guarded saves) used to train on until
    the first check, which then blamed the learning rate for a new divergence."""
    import torch
    from safetensors.torch import load_file, save_file

    first = base(tmp_path, save_strategy="steps", save_steps=2, max_steps=2)
    assert run(tmp_path, first) == 0
    checkpoint = tmp_path / "out" / "checkpoint-2"
    weights = load_file(checkpoint / "model.safetensors")
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    assert run(tmp_path, {**first, "max_steps": 4}, "--resume_from_checkpoint", "true") == 2
    assert error_of(capsys) == (
        f"error: resume_from_checkpoint: {str(checkpoint)!r} holds NaN or infinite student weights (saved after "
        "its training diverged): resume from an earlier checkpoint")
    assert not (tmp_path / "out" / "checkpoint-4").exists(), "no step trained on NaN weights"


def _string_labelled(tmp_path, split_classes: dict[str, list[str]]):
    """A dataset like a CSV's: a column of image file paths and a column of class names."""
    import datasets

    splits = {}
    for split, classes in split_classes.items():
        files = [f"{tmp_path / split}/{name}/{i}.png" for name in classes for i in range(4)]
        image_folder(tmp_path / split, classes)
        splits[split] = datasets.Dataset.from_dict({"file": files, "label": [f.split("/")[-2] for f in files]})
    return datasets.DatasetDict(splits)


def test_validation_classes_the_training_split_lacks(tmp_path, capsys, monkeypatch):

    data = _string_labelled(tmp_path, {"train": ["cat", "dog"], "validation": ["cat", "dog", "eel"]})
    fake_hub_dataset(monkeypatch, lambda: data)
    assert run(tmp_path, base(tmp_path, dataset_name="acme/pets", image_column_name="file")) == 2
    assert error_of(capsys) == ("error: the validation split has classes the training split lacks: ['eel']; the "
                                "student has no output for them. Give a validation split with the training split's classes")


def test_an_image_column_of_file_paths_trains(tmp_path, monkeypatch):

    data = _string_labelled(tmp_path, {"train": ["cat", "dog"], "validation": ["cat", "dog"]})
    fake_hub_dataset(monkeypatch, lambda: data)
    assert run(tmp_path, base(tmp_path, dataset_name="acme/pets", image_column_name="file")) == 0
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["eval_accuracy"] >= 0


def test_feature_pairs_that_do_not_fit_the_models(tmp_path, capsys):
    pair = base(tmp_path, model_name_or_path="config:vit", student_config_overrides=TINY_VIT,
                teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET)
    identity = [{"student_layer": -1, "teacher_layer": -1, "adapter": "identity"}]
    assert run(tmp_path, {**pair, "losses": [{"name": "ce"}, {"name": "patch_cka"}], "feature_pairs": identity}) == 2
    assert "feature_pairs[0]: adapter 'identity' gives student features of shape (17, 36)" in error_of(capsys)
    beyond = [{"student_layer": 12, "teacher_layer": -1}]
    assert run(tmp_path, {**pair, "losses": [{"name": "ce"}, {"name": "feature_cka"}], "feature_pairs": beyond}) == 2
    assert "feature_pairs[0]: student layer 12 is out of range" in error_of(capsys)  # which pair, as the others say
    sampled = [{"student_layer": -1, "teacher_layer": -1, "adapter": "patch_match", "sample_channels": 8}]
    both = [{"name": "ce"}, {"name": "feature_cka"}, {"name": "patch_cka"}]
    assert run(tmp_path, {**pair, "losses": both, "feature_pairs": sampled}) == 2
    assert "feature_pairs[0]: sample_channels compares a random subset of channels" in error_of(capsys)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_training_split_smaller_than_one_dropped_batch(tmp_path, capsys):
    recipe = base(tmp_path, dataloader_drop_last=True, per_device_train_batch_size=32)  # 20 training images
    assert run(tmp_path, recipe) == 2
    assert "the training split has 20 images, fewer than one batch (32" in error_of(capsys)
    # repeated augmentation keeps 256 of 300 images per epoch: a batch of 280 trained nothing, exit 0
    recipe = base(tmp_path, dataloader_drop_last=True, per_device_train_batch_size=280, max_train_samples=300,
                  no_aug=None, aug_repeats=3)
    assert run(tmp_path, recipe) == 2
    assert "of which repeated augmentation gives its one process 256, fewer than one batch (280)" in error_of(capsys)


def test_a_last_training_batch_of_one_image_is_dropped_for_a_batchnorm_student(tmp_path, capsys):
    """21 images in batches of 5 left one image for the last step: BatchNorm failed after an epoch."""
    recipe = base(tmp_path, max_train_samples=21, max_steps=None, num_train_epochs=2)
    assert run(tmp_path, recipe) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 8  # 4 full batches per epoch, the lone image dropped


def test_debug_shows_the_traceback(tmp_path, capsys, no_loading):
    assert run(tmp_path, base(tmp_path, learning_rate=-1.0), "--debug") == 2
    assert "Traceback" in capsys.readouterr().err


def test_debug_shows_the_failure_a_user_error_replaced(tmp_path, capsys, no_loading):
    """A user error raised ``from None`` (one line without --debug) hid the exception under it, a bug
    of our own in a check too, even with --debug."""
    recipe = base(tmp_path, losses=[{"name": "ce"}, {"name": "kd", "temperature": "warm"}])
    assert run(tmp_path, recipe) == 2
    assert "During handling" not in capsys.readouterr().err
    assert run(tmp_path, recipe, "--debug") == 2
    err = capsys.readouterr().err
    assert "During handling of the above exception, another exception occurred" in err
    assert err.index("Traceback") < err.index("RecipeError")


def test_debug_with_a_value_is_the_trainer_setting():
    """``--debug underflow_overflow`` lost its --debug and failed as a stray argument."""
    from hf_rcka.cli.main import _pop_debug_flag

    argv = ["recipe.yaml", "--debug", "underflow_overflow", "--seed", "3", "--debug"]
    assert _pop_debug_flag(argv) and argv == ["recipe.yaml", "--debug", "underflow_overflow", "--seed", "3"]
    argv = ["recipe.yaml", "--debug", "--seed", "3"]
    assert _pop_debug_flag(argv) and argv == ["recipe.yaml", "--seed", "3"]
    argv = ["--debug", "recipe.yaml"]  # the bare flag before the recipe, as the README allows
    assert _pop_debug_flag(argv) and argv == ["recipe.yaml"]
    # spelled as --key value: "true" was left behind as a stray argument
    argv = ["recipe.yaml", "--debug", "true", "--seed", "3"]
    assert _pop_debug_flag(argv) and argv == ["recipe.yaml", "--seed", "3"]
    argv = ["recipe.yaml", "--debug", "False"]
    assert not _pop_debug_flag(argv) and argv == ["recipe.yaml"]
    from hf_rcka.trainer.resume_hint import relaunch_command

    kept = relaunch_command(["recipe.yaml", "--debug", "underflow_overflow"], {"resume_from_checkpoint": "out/c"})
    assert kept.endswith("recipe.yaml --debug underflow_overflow --resume_from_checkpoint out/c")


# ------------------------------------------------------------------ found once models/data are known

def save_teacher(path: Path, names: list[str], nan: bool = False) -> str:
    """A tiny ResNet saved with its processor; ``nan``: one BatchNorm statistic is NaN, as in a diverged run."""
    import torch
    from conftest import tiny_resnet

    teacher = tiny_resnet(num_labels=len(names))
    teacher.config.id2label = dict(enumerate(names))
    teacher.config.label2id = {n: i for i, n in enumerate(names)}
    if nan:
        with torch.no_grad():
            next(b for name, b in teacher.named_buffers() if name.endswith("running_var"))[0] = float("nan")
    teacher.save_pretrained(path)
    from conftest import processor

    processor(16).save_pretrained(path)
    return str(path)


def test_teacher_with_other_class_names(tmp_path, capsys, monkeypatch):
    teacher = save_teacher(tmp_path / "teacher", ["cat", "dog", "eel"])
    train = image_folder(tmp_path / "train", ["cat", "dog", "fox"])

    def refuse(*args, **kwargs):
        raise AssertionError("a model loaded before the teacher's config was compared with the data's classes")

    for name in ("load_image_classifier", "load_image_processor"):  # its config says it, before any weights load
        monkeypatch.setattr(cli, name, refuse)
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train, teacher_model_name_or_path=teacher,
                             train_val_split=0.25)) == 2
    line = error_of(capsys)
    assert "teacher_model_name_or_path" in line and "['fox']" in line and "['eel']" in line
    assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "model.safetensors").exists()


class _Downloaded(Exception):
    """Raised where a Hub dataset's files would download."""


def fake_hub_dataset(monkeypatch, load, features=None) -> list[str]:
    """A Hub dataset, offline: datasets' builder reads its card, which declares ``features`` (by
    default those of ``load()``'s training split), and load_dataset gives ``load()``. Returns the ids
    whose cards were read."""
    import datasets

    read = []

    def builder(name, config=None, **kwargs):
        read.append(name)
        return SimpleNamespace(info=datasets.DatasetInfo(features=features or load()["train"].features),
                               config=SimpleNamespace(data_files=None), name="parquet")

    monkeypatch.setattr(datasets, "load_dataset_builder", builder)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, **kwargs: load())
    return read


def _not_downloaded():
    raise _Downloaded


def _pets_card(names: list[str]):
    import datasets

    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})


def test_a_hub_dataset_of_other_classes_than_the_teacher_is_refused_before_its_download(tmp_path, capsys, monkeypatch):
    """ImageNet's card names its 1000 classes: a teacher of other classes was refused after its 150 GB."""
    teacher = save_teacher(tmp_path / "teacher", ["cat", "dog", "eel"])
    read = fake_hub_dataset(monkeypatch, _not_downloaded, _pets_card(["cat", "dog", "fox"]))
    assert run(tmp_path, base(tmp_path, dataset_name="someone/pets", teacher_model_name_or_path=teacher)) == 2
    line = error_of(capsys)
    assert read == ["someone/pets"]
    assert "teacher_model_name_or_path" in line and "['fox']" in line and "['eel']" in line


@pytest.mark.parametrize("mapping, names", [("by_name", ["eel", "cat", "dog"]), ("by_index", ["a", "b", "c"])])
def test_a_hub_dataset_whose_classes_the_teacher_pairs_goes_on_to_its_download(tmp_path, monkeypatch, mapping, names):
    """The early check refuses nothing the check on the loaded data accepts: the same names in another
    order, or any names paired by position."""
    teacher = save_teacher(tmp_path / "teacher", ["cat", "dog", "eel"])
    fake_hub_dataset(monkeypatch, _not_downloaded, _pets_card(names))
    with pytest.raises(_Downloaded):
        run(tmp_path, base(tmp_path, dataset_name="someone/pets", teacher_model_name_or_path=teacher,
                           teacher_label_mapping=mapping))


def test_a_teacher_whose_weights_file_was_cut_short_is_one_line(tmp_path, capsys):
    """A kill during a save leaves half a model.safetensors: safetensors' own error was a traceback."""
    teacher = Path(save_teacher(tmp_path / "teacher", ["cat", "dog", "eel"]))
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    train = image_folder(tmp_path / "train", ["cat", "dog", "eel"])
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train, teacher_model_name_or_path=str(teacher),
                             train_val_split=0.25)) == 2
    line = error_of(capsys)
    assert line.startswith("error: teacher_model_name_or_path: a .safetensors weights file there is incomplete or "
                           "corrupt") and "--resume_from_checkpoint true" in line


def test_permuted_teacher_and_unreadable_images_still_train(tmp_path, capsys):
    teacher = save_teacher(tmp_path / "teacher", ["dog", "eel", "cat"])
    train = image_folder(tmp_path / "train", ["cat", "dog", "eel"])
    truncated, text = Path(train) / "cat" / "truncated.jpg", Path(train) / "dog" / "notes.png"
    noise = np.random.default_rng(0).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    text.write_text("not an image")
    recipe = base(tmp_path, dataset_name=None, train_dir=train, teacher_model_name_or_path=teacher,
                  max_train_samples=None, max_eval_samples=None, per_device_train_batch_size=14,
                  per_device_eval_batch_size=14, train_val_split=0.25, max_steps=1)
    assert run(tmp_path, recipe) == 0
    ledger = (tmp_path / "out" / "_skipped_images.tsv").read_text()
    assert str(truncated) in ledger and str(text) in ledger
    log = capsys.readouterr().err
    assert "re-indexed by name" in log and f"skipped unreadable image {text}: UnidentifiedImageError" in log

    assert run(tmp_path, {**recipe, "output_dir": str(tmp_path / "strict"), "max_bad_images": 0}) == 2
    line = error_of(capsys)
    assert "could not be read (more than max_bad_images=0)" in line and "_skipped_images.tsv" in line


def test_too_many_unreadable_evaluation_images_found_after_training_name_the_saved_model(tmp_path, capsys):
    """The error came after training had saved a model, and did not say that one was there, unevaluated."""
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    validation = image_folder(tmp_path / "val", ["cat", "dog"])
    for name in ("cat", "dog"):
        (Path(validation) / name / "broken.png").write_text("not an image")
    recipe = base(tmp_path, dataset_name=None, train_dir=train, validation_dir=validation, max_train_samples=None,
                  max_eval_samples=None, max_bad_images=1, max_steps=1)
    assert run(tmp_path, recipe) == 2
    line = error_of(capsys)
    assert "more than max_bad_images=1" in line
    assert f"The trained model is saved in {tmp_path / 'out'}, not evaluated" in line
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_eval_only_run_keeps_the_training_records(tmp_path, capsys):
    assert run(tmp_path, base(tmp_path)) == 0
    out = tmp_path / "out"
    before = {name: (out / name).read_bytes() for name in ("distill_config.yaml", "all_results.json", "README.md")}
    evaluate = base(tmp_path, model_name_or_path=str(out), student_config_overrides=None, do_train=False)
    assert run(tmp_path, evaluate) == 0
    assert before == {name: (out / name).read_bytes() for name in before}
    record = next(out.glob("_eval-*"))
    assert "eval_accuracy" in json.loads((record / "eval_results.json").read_text())
    assert yaml.safe_load((record / "eval_config.yaml").read_text())["do_train"] is False


def test_a_model_of_nan_weights_is_refused_before_it_is_evaluated_or_trained(tmp_path, capsys):
    """An eval-only run of a diverged student used to report the accuracy of argmax over NaN and exit 0."""
    train = image_folder(tmp_path / "train", ["cat", "dog", "eel"])
    nan_model = save_teacher(tmp_path / "nan", ["cat", "dog", "eel"], nan=True)
    data = dict(dataset_name=None, train_dir=train, train_val_split=0.25, max_train_samples=None)
    evaluate = base(tmp_path, **data, model_name_or_path=nan_model, student_config_overrides=None, do_train=False)
    assert run(tmp_path, evaluate) == 2
    line = error_of(capsys)
    assert line.startswith(f"error: model_name_or_path {nan_model!r}: the student's weights are NaN or infinite "
                           "(1 tensor: resnet.embedder.embedder.normalization.running_var)")
    assert "cannot be evaluated, trained or exported" in line
    assert not (tmp_path / "out").exists(), "no eval record of a NaN model"
    train_from_it = dict(evaluate, do_train=True)
    assert run(tmp_path, train_from_it) == 2 and "the student's weights are NaN" in error_of(capsys)
    teacher = base(tmp_path, **data, teacher_model_name_or_path=nan_model)  # would train toward NaN logits
    assert run(tmp_path, teacher) == 2
    assert error_of(capsys).startswith(f"error: teacher_model_name_or_path {nan_model!r}: the teacher's weights are")
    assert not list((tmp_path / "out").glob("*")), "nothing trained or saved"


def test_help_lists_every_key_grouped_with_defaults(capsys):
    from hf_rcka.cli.recipe import field_table as _field_table

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for title in ("model:", "data:", "distillation:", "training (transformers.TrainingArguments):"):
        assert f"\n{title}\n" in text
    for key in _field_table():
        assert f"\n  {key} (" in text, key
    assert "  teacher_label_mapping (str; default: 'by_name')" in text
    feature_pairs = re.search(r"\n  feature_pairs \(.*\n((?:      .*\n)+)", text).group(1)
    assert "None (the default) pairs them automatically, as 'auto' does" in " ".join(feature_pairs.split())
    # settings the run refuses say so, not what transformers' help says they do
    assert "  bf16_full_eval (bool; default: False)\n      Fixed at False: it casts the whole model" in text
    assert "true for the last checkpoint in output_dir" in text
    assert "%%" not in text, "argparse's escaped percent signs are printed as they read"
    # a wheel install has no scripts/: the usage names its commands too
    assert "hf-rcka-distill RECIPE.yaml" in text and "accelerate launch -m hf_rcka RECIPE.yaml" in text
    assert main(["recipe.yaml", "--help"]) == 0, "--help after the recipe is help, not a recipe key"
    assert capsys.readouterr().out == text
    assert main(["recipe.yaml", "--help", "losses"]) == 0
    after_recipe = capsys.readouterr().out
    assert main(["--help", "losses"]) == 0
    text = capsys.readouterr().out
    assert after_recipe == text
    assert "  rcka: weight=1.0, intra_weight=1.0" in text and "patch_match" in text
    assert "  auto: (the default" in text and "(feature_cka); patch_match with" in text
    assert "unset (None), the pairs are chosen as 'auto' chooses them" in text


def test_version_names_the_code_and_the_libraries_that_compute_a_run(capsys):
    """What a bug report needs, as the card's reproduction line gives it: ``--version`` was taken
    for a recipe (the recipe file comes first, exit 2)."""
    import torch
    import transformers

    from hf_rcka import __version__

    assert main(["--version"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"hf_rcka {__version__}") and "\n" not in line
    assert f"torch {torch.__version__.split('+')[0]}" in line and f"transformers {transformers.__version__}" in line
    assert main(["recipe.yaml", "--version"]) == 0, "after the recipe too, as --help"
    assert capsys.readouterr().out.strip() == line


def test_help_states_what_the_command_line_does(capsys, monkeypatch):
    """Defaults the command line sets itself, keys it requires or refuses, and the options a recipe may
    give: an adapter's sides are build_adapter's own (a recipe setting them is refused), and a loss
    written as the README shows (its **kwargs passed on to the base) lists the base's options."""
    import torch

    from hf_rcka import registry
    from hf_rcka.losses import DistillationLoss

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "  output_dir (str | None; required)" in text
    assert "  logging_nan_inf_filter (bool | None; default: False; True with fp16)" in text
    assert "  dataloader_pin_memory (bool; default: True; False without an accelerator)" in text
    assert re.search(r"  do_predict \(bool; default: False\)\n      Refused", text)
    monkeypatch.setattr(registry.LOSSES, "_classes", dict(registry.LOSSES._classes))  # registered for this test only

    @registry.LOSSES.register("scaled_kd")
    class ScaledKD(DistillationLoss):
        requires = frozenset({"student_logits", "teacher_logits"})

        def __init__(self, scale: float = 2.0, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale

        def term(self, inputs):
            return self.scale * torch.nn.functional.mse_loss(inputs.student_logits, inputs.teacher_logits)

    assert main(["--help", "losses"]) == 0
    text = capsys.readouterr().out
    assert "  scaled_kd: scale=2.0, weight=1.0" in text
    assert "  identity: (no options)" in text and "  linear: bias=True" in text and "student" not in re.search(
        r"  patch_match: (.*)", text).group(1)


def test_help_gives_the_defaults_the_command_line_runs_with(capsys):
    """--help said ``do_train (bool; default: False)``, transformers' default, for a command line that
    trains and evaluates when a recipe is silent; and a key whose default is built by a factory
    (``include_for_metrics``) was listed as required. ``--help losses`` printed whole docstrings."""
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "\n  do_train (bool; default: True)\n" in text and "\n  do_eval (bool; default: True)\n" in text
    assert re.search(r"\n  include_for_metrics \([^;]*; default: \[\]\)\n", text)
    assert [line.split(" (")[0].strip() for line in text.splitlines() if line.endswith("; required)")] == [
        "model_name_or_path", "output_dir"]
    # --help losses gives each docstring's first paragraph, not its Args: (a page per loss)
    assert main(["--help", "losses"]) == 0
    text = capsys.readouterr().out
    assert "  linear: bias=True\n      Projects student channels to the teacher's width; the teacher passes unchanged.\n  " \
        in text and "Args:" not in text


def test_image_size_a_timm_vit_cannot_take_is_found_by_one_probe(tmp_path, capsys, monkeypatch):
    """Found before the teacher loads: the probe came after both models were loaded (a Hub teacher
    downloaded first)."""
    timm_vit = base(tmp_path, model_name_or_path="timm/vit_tiny_patch16_224", student_from_scratch=True,
                    student_config_overrides={"depth": 1}, image_size=64, teacher_model_name_or_path="config:resnet",
                    teacher_config_overrides=TINY_RESNET)
    loaded = []
    load = cli.load_image_classifier
    monkeypatch.setattr(cli, "load_image_classifier", lambda name, **kw: loaded.append(name) or load(name, **kw))
    assert run(tmp_path, timm_vit) == 2
    assert "config:resnet" not in loaded, "the teacher was loaded before the student's probe"
    line = error_of(capsys)
    assert line.startswith("error: image_size: the student cannot take 64x64 inputs") and "img_size" in line
    assert "dynamic_img_size: true" in line, "the way that keeps a pretrained ViT's weights is named"
    assert not (tmp_path / "out").exists()



def test_a_timm_student_whose_overrides_do_not_run_is_one_line(tmp_path, capsys):
    """Three stage widths for resnet10t's four stages built, and failed its probe with an AttributeError
    traceback (the probe caught only what an image size causes)."""
    student = base(tmp_path, model_name_or_path="timm/resnet10t", student_from_scratch=True,
                   student_config_overrides={"channels": [16, 32, 64]})
    assert run(tmp_path, student) == 2
    line = error_of(capsys)
    assert line.startswith("error: model_name_or_path: the student as built fails on a forward pass (AttributeError")
    assert "student_config_overrides" in line and not (tmp_path / "out").exists()


def test_a_model_that_takes_no_images_is_named_not_the_image_size(tmp_path, capsys):
    """ImageGPT's forward reads token ids: blaming a 16x16 image size would send the user the wrong way."""
    image_gpt = base(tmp_path, model_name_or_path="config:imagegpt",
                     student_config_overrides={"n_embd": 16, "n_layer": 1, "n_head": 1, "n_positions": 256})
    assert run(tmp_path, image_gpt) == 2
    line = error_of(capsys)
    assert line.startswith("error: model_name_or_path: ImageGPTForImageClassification (imagegpt) takes no images")
    assert "not supported as an image classifier" in line and "image_size" not in line
    assert not (tmp_path / "out").exists()


def test_image_size_that_is_not_whole_patches(tmp_path, capsys):
    """Both trained and exited 0: the patch embedding silently dropped the border (36% of a 40 px image)."""
    timm_vit = base(tmp_path, model_name_or_path="timm/vit_tiny_patch16_224", student_from_scratch=True,
                    student_config_overrides={"depth": 1, "img_size": 40}, image_size=40)
    assert run(tmp_path, timm_vit) == 2
    assert "40x40 inputs are not whole 16x16 patches" in error_of(capsys)
    hf_vit = base(tmp_path, model_name_or_path="config:vit", student_config_overrides={**TINY_VIT, "image_size": 18},
                  image_size=None)
    assert run(tmp_path, hf_vit) == 2
    assert "18x18 inputs are not whole 4x4 patches" in error_of(capsys)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ found while training

def finite_weights(folder: Path) -> bool:
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors").values()
    return all(bool(t.isfinite().all()) for t in tensors if t.is_floating_point())


def test_the_divergence_error_names_the_fixes_that_apply_to_the_run():
    from types import SimpleNamespace

    import torch

    from hf_rcka.trainer.divergence import diverged_error

    def fixes(**settings):
        args = SimpleNamespace(**{"learning_rate": 1e-3, "max_grad_norm": 1.0, "fp16": False, "bf16": False,
                                  "device": torch.device("cpu"), **settings})
        return str(diverged_error(args, 3)).split("To fix: ", 1)[1]

    assert fixes() == "lower learning_rate (now 0.001) or check the loss weights"
    assert fixes(bf16=True).endswith("or train without bf16 on the CPU (bf16: false)")
    assert "bf16" not in fixes(bf16=True, device=torch.device("meta"))  # an accelerator's bf16 is not suspected
    assert fixes(fp16=True, max_grad_norm=0).endswith(
        "train with bf16 instead of fp16 or clip gradients with max_grad_norm: 1.0")


def test_a_diverged_run_fails_and_writes_no_model_of_nan_weights(tmp_path, capsys):
    """learning_rate 1e30 makes the weights NaN within a few steps; such a run used to exit 0."""
    diverging = dict(learning_rate=1e30, max_steps=6, save_strategy="no")
    assert run(tmp_path, base(tmp_path, **diverging)) == 2  # no logging or saving step: found after training
    line = error_of(capsys)
    assert line.startswith("error: training diverged: by step 6 the student's weights are NaN or infinite")
    assert "lower learning_rate (now 1e+30)" in line and "check the loss weights" in line
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"distill_config.yaml", "_working_dir.json"}, \
        "no model, card or metrics"

    logged = base(tmp_path, **diverging, logging_steps=1, output_dir=str(tmp_path / "logged"))
    assert run(tmp_path, logged) == 2  # found at the first logging step with a NaN loss: training stops there
    line = error_of(capsys)
    # the logged loss too: the command line turns Trainer's logging_nan_inf_filter off without fp16
    assert int(re.search(r"by step (\d+)", line)[1]) < 6 and "(logged loss = nan, ce_loss = nan" in line

    saved = base(tmp_path, **{**diverging, "save_strategy": "steps"}, save_steps=1, warmup_steps=1,
                 output_dir=str(tmp_path / "saved"))
    assert run(tmp_path, saved) == 2  # found before a checkpoint is written: the finite ones stay
    assert "training diverged" in error_of(capsys)
    checkpoints = list((tmp_path / "saved").glob("checkpoint-*"))
    assert checkpoints and all(finite_weights(folder) for folder in checkpoints)

    # save_strategy best: Trainer decides to save after the evaluation, and a NaN model can score best
    best = base(tmp_path, **{**diverging, "save_strategy": "best"}, eval_strategy="steps", eval_steps=2,
                metric_for_best_model="accuracy", output_dir=str(tmp_path / "best"))
    assert run(tmp_path, best) == 2
    assert "training diverged" in error_of(capsys)
    assert all(finite_weights(folder) for folder in (tmp_path / "best").glob("checkpoint-*"))


def test_validation_images_of_a_class_no_training_image_has(tmp_path, capsys, monkeypatch):
    """A ClassLabel's names are shared by every split, so only the label values show the gap."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "eel"])})
    images = [Image.new("RGB", (8, 8), (30 * i, 0, 0)) for i in range(12)]
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 6}, features=features),
        "validation": datasets.Dataset.from_dict({"image": images[:6], "label": [0, 1, 2] * 2}, features=features),
    })
    fake_hub_dataset(monkeypatch, lambda: data)
    assert run(tmp_path, base(tmp_path, dataset_name="acme/pets")) == 2
    assert "the validation split has images of classes no training image has: ['eel']" in error_of(capsys)


def test_images_directly_in_train_dir_next_to_class_folders(tmp_path, capsys):
    """datasets drops the label column when images sit at two depths; the error blamed label_column_name."""
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "stray.png")
    assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train, train_val_split=0.5)) == 2
    assert "has images directly in it (['stray.png']) next to its class folders" in error_of(capsys)


@pytest.mark.parametrize("setting", [{"label_names": ["label"]}, {"prediction_loss_only": True},
                                     {"eval_do_concat_batches": False}, {"batch_eval_metrics": True},
                                     {"remove_unused_columns": True}, {"bf16_full_eval": True},
                                     {"use_liger_kernel": True}, {"neftune_noise_alpha": 5.0},
                                     {"include_num_input_tokens_seen": "all"}, {"eval_use_gather_object": True},
                                     {"parallelism_config": {"dp_shard_size": 1}}])
def test_trainer_settings_that_empty_or_break_the_evaluation(tmp_path, capsys, no_loading, setting):
    """Trainer accepts them; the run then reported no accuracy (exit 0) or failed after training."""
    (key, value), = setting.items()
    assert run(tmp_path, base(tmp_path, **setting)) == 2
    assert error_of(capsys).startswith(f"error: {key}: {value!r} is not supported (")


@pytest.mark.parametrize("setting, message", [
    ({"do_predict": True}, "do_predict: the command line trains and evaluates, and predicts no test split"),
    # transformers' SIGTERM handler replaced the command line's: a stopped run exited 0, its model exported as finished
    ({"enable_jit_checkpoint": True}, "enable_jit_checkpoint: the command line saves a checkpoint after the current "
                                      "step on SIGTERM"),
    ({"eval_delay": -1}, "eval_delay must be >= 0, got -1"),
    # transformers drops it for every optimizer but GaLore's and APOLLO's
    ({"optim_target_modules": ["query"]}, "optim_target_modules names the layers a GaLore or APOLLO optimizer "
                                          "projects (optim: galore_* or apollo_*), and optim adamw_torch"),
    ({"load_best_model_at_end": True, "save_strategy": "no"},
     "load_best_model_at_end keeps the best of the evaluations during training, and eval_strategy is no"),
    # transformers' own message, of three lines: one
    ({"load_best_model_at_end": True}, "invalid DistillationTrainingArguments: --load_best_model_at_end requires the "
                                       "save and eval strategy to match"),
    ({"deepspeed": "ds.json"}, "invalid DistillationTrainingArguments: a setting needs a package that is not installed"),
    # identical copies of each image in the same batches, every step
    ({"aug_repeats": 3}, "aug_repeats 3 with no_aug: true: each image comes 3 times as identical pixels"),
    ({"aug_repeats": 3, "mixup": 0.8, "mixup_prob": 0.0}, "aug_repeats 3 with no_aug: true"),  # mixup_prob 0 mixes none
    ({"aug_repeats": 3, "resume_from_checkpoint": False}, "aug_repeats 3 with no_aug: true"),  # 'false' is no resume
    # ce's own smoothing applied, and the card's baseline comparison read the other
    ({"label_smoothing_factor": 0.1, "losses": [{"name": "ce", "label_smoothing": 0.2}]},
     "label_smoothing_factor 0.1 and ce's label_smoothing 0.2 disagree (ce's would apply): give one of them"),
    ({"torch_compile": True, "torch_compile_backend": "inductr"}, "torch_compile_backend: unknown backend 'inductr': "
                                                                   "did you mean"),
    # accelerate's names that torch 2.14 cannot run, an unknown mode, a mode the backend ignores: each
    # loaded models and data, set the earlier run aside, then failed at the first step (the last: exit 0)
    ({"torch_compile_backend": "onnxrt"}, "torch_compile_backend: 'onnxrt' is accelerate's name for a backend this "
                                          "torch"),
    ({"torch_compile_mode": "fastest"}, "torch_compile_mode: unknown mode 'fastest': "),
    ({"torch_compile_backend": "aot_eager", "torch_compile_mode": "max-autotune"},
     "torch_compile_mode 'max-autotune' is a mode of the inductor backend, and torch_compile_backend is 'aot_eager'"),
    # accelerate compiles nothing with backend "no": the mode was dropped without a word
    ({"torch_compile_backend": "no", "torch_compile_mode": "max-autotune"},
     "torch_compile_mode 'max-autotune' is a mode of the inductor backend, and torch_compile_backend is 'no'"),
])
def test_work_transformers_accepts_and_the_run_would_skip_or_fail_on(tmp_path, capsys, no_loading, setting, message):
    """do_predict predicted nothing and load_best_model_at_end exported the last step (exit 0 both); an
    unknown compile backend was a traceback as the trainer was built, after the previous run was set aside."""
    assert run(tmp_path, base(tmp_path, **setting)) == 2
    assert error_of(capsys).startswith(f"error: {message}")


@pytest.mark.parametrize("value", [None, False, "", "false", "False", "FALSE", "none", "None"])
def test_every_spelling_of_no_resume_means_no_resume_throughout(tmp_path, value):
    """The start-up checks took 'none' (any case) and 'FALSE' for no resume, and the job then
    refused them: "resume_from_checkpoint 'none' is not a folder". One rule serves both."""
    from hf_rcka.cli.job import resolve_resume
    from hf_rcka.cli.preflight import resuming

    assert not resuming(value)
    assert resolve_resume(SimpleNamespace(resume_from_checkpoint=value, output_dir=str(tmp_path))) is None
    for true in (True, "true", "TRUE"):
        assert resuming(true)
        with pytest.raises(RecipeError, match="holds no checkpoint-\\* folder"):
            resolve_resume(SimpleNamespace(resume_from_checkpoint=true, output_dir=str(tmp_path)))


def test_accelerates_no_compile_backend_is_not_refused_as_one_torch_lacks():
    """torch_compile_backend 'no' is accelerate's "compile nothing" (DynamoBackend.NO), which torch's
    list of backends cannot hold: checked against that list, a recipe that turns compiling off was refused."""
    from hf_rcka.cli.preflight import _check_compile_settings

    _check_compile_settings("no", None)
    _check_compile_settings("NO", None)
    with pytest.raises(RecipeError, match="'onnxrt' is accelerate's name for a backend this torch"):
        _check_compile_settings("onnxrt", None)


def test_a_compile_backend_whose_package_is_missing_is_refused(monkeypatch):
    """torch lists tvm among its backends without tvm installed: the run loaded its models and data
    and failed at the first compiled step."""
    import importlib.util

    from hf_rcka.cli.preflight import _check_compile_settings

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)  # as where tvm is not installed
    with pytest.raises(RecipeError, match="torch_compile_backend: 'tvm' needs the tvm package, which is not installed"):
        _check_compile_settings("tvm", None)


def test_inductor_on_the_cpu_without_a_cpp_compiler_is_refused_before_loading(tmp_path, capsys, no_loading,
                                                                              monkeypatch):
    """torch_compile's default backend needs a C++ compiler for a CPU run's kernels: without one, the run
    loaded its models and data and stopped at its first step with torch's InvalidCxxCompiler traceback."""
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, str(tmp_path / "no-g++")))  # as where none is installed
    assert run(tmp_path, base(tmp_path, torch_compile=True, use_cpu=True)) == 2
    assert error_of(capsys).startswith("error: torch_compile: the inductor backend builds a CPU run's kernels with a "
                                       "C++ compiler, and none was found")
    from hf_rcka.training_values import check_cpu_compiler

    check_cpu_compiler(SimpleNamespace(torch_compile=True, torch_compile_backend="aot_eager", use_cpu=True))  # the fix it names


def test_inductor_on_the_cpu_without_a_cpp_compiler_is_refused_by_the_trainer_too(tmp_path, monkeypatch):
    """A DistillationTrainer built in Python with torch_compile on a CPU run without a C++ compiler got
    torch's InvalidCxxCompiler traceback at its first step: only the command line checked."""
    import torch._inductor.config

    from hf_rcka import DistillationTrainer, DistillationTrainingArguments
    from tests.conftest import pixel_dataset, tiny_resnet, tiny_vit

    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, str(tmp_path / "no-g++")))  # as where none is installed
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, torch_compile=True,
                                         report_to="none", teacher_accuracy_check="off")
    with pytest.raises(RecipeError, match="torch_compile: the inductor backend builds a CPU run's kernels"):
        DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(), args=args, train_dataset=pixel_dataset(10))


def test_identical_repeats_are_refused_for_a_new_run_and_left_to_the_resume_of_a_recorded_one(tmp_path, capsys,
                                                                                             no_loading):
    """A run recorded with aug_repeats and no_aug resumes with its recorded repeats, warned once by the
    trainer: refused at the recipe check, the run could not be resumed at all."""
    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    assert run(tmp_path, base(tmp_path, aug_repeats=3)) == 2
    assert error_of(capsys).startswith("error: aug_repeats 3 with no_aug: true")
    assert run(tmp_path, base(tmp_path, aug_repeats=3, resume_from_checkpoint=str(checkpoint))) == 2
    assert "aug_repeats" not in error_of(capsys)  # the checkpoint's own check speaks (no weights)


def test_a_key_or_flag_given_twice(tmp_path, capsys, no_loading):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base(tmp_path)) + "learning_rate: 3\nlearning_rate: 0.1\n")
    assert main([str(path)]) == 2
    assert "'learning_rate' is given twice (lines" in error_of(capsys)
    assert run(tmp_path, base(tmp_path), "--max_steps", "1", "--max_steps", "2") == 2
    assert error_of(capsys) == "error: --max_steps is given twice: give it once"


def test_a_multi_process_launch_that_would_train_each_process_alone(tmp_path, capsys, no_loading, monkeypatch):
    """Without use_cpu on a GPU-less machine, torchrun's processes were independent runs in one output_dir."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run(tmp_path, base(tmp_path, use_cpu=False)) == 2
    assert "launched as 2 processes, but each would train alone" in error_of(capsys)


def test_an_accelerate_cpu_launch_of_several_processes_is_refused(monkeypatch):
    """`accelerate launch --cpu --num_processes 2` (or `--num_machines 2`) started one process per
    machine, unjoined: each trained alone at its own batch and exited 0 (a second machine sharing the
    disk was refused only by the folder lock)."""
    from hf_rcka.cli.preflight import check_launch

    for key in ("WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU", "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(key, raising=False)
    args = SimpleNamespace(world_size=1, use_cpu=True, fsdp="")
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    check_launch(args)  # accelerate launch --cpu, one process: no MASTER_ADDR
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(RecipeError, match="accelerate launch --cpu with several processes or machines"):
        check_launch(args)
    check_launch(SimpleNamespace(world_size=2, use_cpu=True, fsdp=""))  # under mpirun: joined
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")
    check_launch(args)  # a plain run in a shell that exports MASTER_ADDR


def test_a_joined_cpu_launch_of_one_process_is_not_refused_as_unjoined(monkeypatch):
    """``accelerate launch --multi_gpu --num_processes 1 --use_cpu true`` sets WORLD_SIZE=1 beside
    MASTER_ADDR: a launch its launcher joined (of one process), not the simple launcher's unjoined
    ones, which set no WORLD_SIZE; it was refused as ``accelerate launch --cpu`` of several."""
    from hf_rcka.cli.preflight import check_launch

    for key in ("ACCELERATE_USE_FSDP", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("ACCELERATE_USE_CPU", "True"),
                       ("ACCELERATE_DYNAMO_BACKEND", "NO")):
        monkeypatch.setenv(key, value)
    check_launch(SimpleNamespace(world_size=1, use_cpu=True, fsdp=""))


def test_save_on_each_node_over_several_machines_is_refused(monkeypatch):
    """Two machines with save_on_each_node: the second's checkpoints held the optimizer and trainer state
    but no model (its resume failed: 'holds no .safetensors weights'); on a shared disk both machines
    wrote optimizer.pt, scheduler.pt and trainer_state.json of each checkpoint at once."""
    from hf_rcka.cli.preflight import check_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(RecipeError, match="save_on_each_node: this run writes its model and records"):
        check_launch(SimpleNamespace(world_size=2, use_cpu=True, fsdp="", save_on_each_node=True))
    check_launch(SimpleNamespace(world_size=2, use_cpu=True, fsdp="", save_on_each_node=False))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # one machine: its first process is the run's
    check_launch(SimpleNamespace(world_size=2, use_cpu=True, fsdp="", save_on_each_node=True))


def test_an_fsdp_launch_on_cpu_processes_is_refused(monkeypatch):
    """accelerate shards on accelerators only: the FSDP config on CPU trained as plain DDP (exit 0) while
    the run refused EMA as under FSDP and recorded an FSDP launch."""
    from types import SimpleNamespace

    from hf_rcka.cli.preflight import check_launch
    from hf_rcka.errors import RecipeError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RecipeError, match="an FSDP launch on CPU processes: accelerate shards models on accelerators"):
        check_launch(SimpleNamespace(world_size=2, use_cpu=True, fsdp=""))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    check_launch(SimpleNamespace(world_size=2, use_cpu=True, fsdp=""))  # plain CPU data parallelism
    # fsdp in one process: Trainer's traceback once the models had loaded
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RecipeError, match="fsdp shards the student over the processes of a launch, and this is one"):
        check_launch(SimpleNamespace(world_size=1, use_cpu=False, fsdp=["full_shard"], parallel_mode="not_distributed"))
    # torchrun --nproc_per_node 1 is a distributed launch of one process, where Trainer takes fsdp
    from transformers.training_args import ParallelMode
    check_launch(SimpleNamespace(world_size=1, use_cpu=False, fsdp=["full_shard"], parallel_mode=ParallelMode.DISTRIBUTED))


def test_runs_that_would_train_nothing_or_evaluate_random_weights(tmp_path, capsys, no_loading):
    """Both exited 0: 0 epochs saved the untrained model; an evaluation of a trained folder under a
    recipe's student_from_scratch: true evaluated a new random model built from its config."""
    assert run(tmp_path, base(tmp_path, max_steps=None, num_train_epochs=0)) == 2
    assert "would train nothing and save an untrained model" in error_of(capsys)
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "config.json").write_text("{}")
    (trained / "model.safetensors").write_bytes(b"")
    evaluate = base(tmp_path, model_name_or_path=str(trained), student_from_scratch=True, do_train=False)
    assert run(tmp_path, evaluate) == 2
    line = error_of(capsys)
    assert "would evaluate random weights" in line and "--student_from_scratch false" in line
    assert run(tmp_path, base(tmp_path, do_train=False)) == 2  # config:resnet
    assert "has random weights: give the folder" in error_of(capsys)


def test_validation_dir_that_is_the_training_data(tmp_path, capsys, no_loading):
    train = image_folder(tmp_path / "data" / "train", ["cat", "dog"])
    for validation in (train, str(tmp_path / "data" / "train" / "cat" / "..")):  # the same folder, written two ways
        assert run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train, validation_dir=validation)) == 2
        assert "share images: the evaluation would report accuracy on training images" in error_of(capsys)


def test_baseline_dir_whose_run_was_not_evaluated(tmp_path, capsys, no_loading):
    """It failed after training, when the card was written, and the card and push were lost."""
    baseline = tmp_path / "alone"
    baseline.mkdir()
    (baseline / "all_results.json").write_text('{"train_loss": 1.0}')
    assert run(tmp_path, base(tmp_path, baseline_dir=str(baseline))) == 2
    assert "has no eval_accuracy (that run was not evaluated)" in error_of(capsys)
    # a distilled run as the "student trained alone": the card credited distillation with the gap
    (baseline / "all_results.json").write_text('{"eval_accuracy": 0.3}')
    (baseline / "distill_config.yaml").write_text("teacher_model_name_or_path: outputs/teacher\n")
    assert run(tmp_path, base(tmp_path, baseline_dir=str(baseline))) == 2
    assert "is a distilled run (teacher 'outputs/teacher'), not the student trained alone" in error_of(capsys)
    # a teacher set and losses [ce] (the README's student-alone pattern): the student trained alone
    (baseline / "distill_config.yaml").write_text("teacher_model_name_or_path: outputs/teacher\n"
                                                  "losses: [{name: ce, weight: 1.0}, {name: kd, weight: 0}]\n")
    from hf_rcka import DistillationTrainingArguments

    DistillationTrainingArguments(output_dir=str(tmp_path / "o"), baseline_dir=str(baseline), use_cpu=True)
    (baseline / "distill_config.yaml").write_text("teacher_model_name_or_path: outputs/teacher\n"
                                                  "losses: [{name: ce, weight: 1.0}, {name: kd, weight: 0.5}]\n")
    assert run(tmp_path, base(tmp_path, baseline_dir=str(baseline))) == 2
    assert "is a distilled run (teacher 'outputs/teacher')" in error_of(capsys)


def test_teacher_trained_on_the_students_validation_images(tmp_path, capsys):
    """The teacher held out split_seed 7's images, the student split_seed 42's: 70% of the student's
    validation images were teacher training images, and the card said "same images"."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    (teacher / "preprocessor_config.json").write_text("{}")
    (teacher / "model.safetensors").write_bytes(b"")
    (teacher / "distill_config.yaml").write_text("dataset_name: builtin:digits\nsplit_seed: 7\n")
    recipe = base(tmp_path, teacher_model_name_or_path=str(teacher))
    assert run(tmp_path, recipe) == 2
    line = error_of(capsys)
    assert "most of the student's validation images would be teacher training images" in line
    assert "Set train_val_split: 0.15, split_seed: 7 and label_column_name: label as the teacher did" in line
    # the same split settings stratified by another label column hold out other images too
    (teacher / "distill_config.yaml").write_text("dataset_name: builtin:digits\nlabel_column_name: target\n")
    assert run(tmp_path, recipe) == 2
    assert "stratified by 'target'" in error_of(capsys)
    (teacher / "distill_config.yaml").write_text("dataset_name: builtin:digits\nsplit_seed: 7\n")
    # evaluated on data of its own (no split carved), the same teacher is fine: the run goes on to
    # load it (and fails there, its weights being a stand-in)
    train = image_folder(tmp_path / "train", ["cat", "dog"])
    (teacher / "distill_config.yaml").write_text(f"train_dir: {train}\nsplit_seed: 7\n")
    validation = image_folder(tmp_path / "validation", ["cat", "dog"])
    assert run(tmp_path, {**base(tmp_path, dataset_name=None, train_dir=train, validation_dir=validation),
                          "teacher_model_name_or_path": str(teacher)}) == 2
    assert "teacher training images" not in error_of(capsys)


def test_evaluating_a_hub_student_of_a_from_scratch_recipe_names_the_trained_folder(tmp_path, capsys, no_loading):
    """Adding --student_from_scratch false to a Hub id would evaluate its pretrained weights as the run's."""
    recipe = base(tmp_path, model_name_or_path="timm/resnet18", student_config_overrides=None,
                  student_from_scratch=True, do_train=False)
    assert run(tmp_path, recipe) == 2
    assert "give the trained run's folder: --model_name_or_path <its output_dir>" in error_of(capsys)


def test_augmentation_settings_that_failed_at_the_first_batch_or_did_nothing(tmp_path, capsys, no_loading):
    recipe = base(tmp_path, no_aug=None, aa="rand-m9-mstd0.5-inc1", train_interpolation="lanczos")
    assert run(tmp_path, recipe) == 2  # timm's affine ops refuse it, at the first batch
    assert "train_interpolation 'lanczos' cannot be used with aa='rand-m9-mstd0.5-inc1'" in error_of(capsys)
    recipe = base(tmp_path, mixup=0.8, per_device_train_batch_size=1)
    assert run(tmp_path, recipe) == 2  # Mixup pairs images within a batch: it trained unmixed, exit 0
    assert "per_device_train_batch_size is 1: a batch of one mixes nothing" in error_of(capsys)


def test_a_teacher_on_a_local_dataset_folder_spelled_otherwise_is_the_same_data(tmp_path, monkeypatch):
    """A local dataset_name recorded as a relative path was another dataset than its absolute path:
    the split check passed a teacher that had trained on the student's validation images."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.teacher_data import check_teacher_data
    from hf_rcka.errors import DataError

    (tmp_path / "pets").mkdir()
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "distill_config.yaml").write_text("dataset_name: pets\nsplit_seed: 7\n")
    monkeypatch.chdir(tmp_path)
    student_data = DataArguments(dataset_name=str(tmp_path / "pets") + "/")
    with pytest.raises(DataError, match="teacher training images"):
        check_teacher_data(str(teacher), student_data, carved=True)
    check_teacher_data(str(teacher), DataArguments(dataset_name="acme/pets"), carved=True)


def test_a_teacher_that_evaluated_on_its_own_folder_trained_on_all_of_this_data(tmp_path):
    """A teacher trained on all of a dataset (its validation_dir elsewhere) passed the split check of
    a student carving the same split settings from it; a checkpoint of such a run resumed with a
    carved split was said to hold out the same images; such a model's eval-only run evaluated a
    split it never held out; and a student evaluated on the dataset's own validation split (none
    carved) was refused for a teacher that held out another carve. Another configuration of the
    dataset is other data."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.teacher_data import check_teacher_data, held_out_by, split_change
    from hf_rcka.errors import DataError

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "distill_config.yaml").write_text(f"dataset_name: acme/pets\nvalidation_dir: {tmp_path / 'val'}\n")
    student = DataArguments(dataset_name="acme/pets")
    with pytest.raises(DataError, match=r"holding out none of it \(it had validation_dir\).*Give the student a "
                                        "validation_dir the teacher did not train on"):
        check_teacher_data(str(teacher), student, carved=True)
    assert split_change(str(teacher), student) == (
        f"none of this data (it had validation_dir {str(tmp_path / 'val')!r}; now carved)")
    assert held_out_by(str(teacher), student) is None
    (teacher / "distill_config.yaml").write_text("dataset_name: acme/pets\nsplit_seed: 7\n")
    assert held_out_by(str(teacher), student) == {"train_val_split": 0.15, "split_seed": 7, "label_column_name": "label"}
    check_teacher_data(str(teacher), student, carved=False)  # the dataset's own validation split: no one trained on it
    with pytest.raises(DataError, match="split_seed 7"):
        check_teacher_data(str(teacher), student, carved=True)
    (teacher / "distill_config.yaml").write_text("dataset_name: acme/pets\ndataset_config_name: cats\nsplit_seed: 7\n")
    check_teacher_data(str(teacher), student, carved=True)  # another configuration of the dataset: other images
    assert held_out_by(str(teacher), student) is None


def test_a_resume_that_carves_by_another_label_column_is_a_split_change_and_other_data_is_none(tmp_path):
    """A carved split is stratified by the label column: a resume with another label_column_name
    holds out other images (mostly ones the checkpoint trained on), and must be said as a change of
    split like split_seed is; a resume on other data is no split change (its classes are checked
    against the checkpoint's once it loads)."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.teacher_data import split_change

    run = tmp_path / "run"
    run.mkdir()
    (run / "distill_config.yaml").write_text("dataset_name: acme/pets\nlabel_column_name: breed\n")
    assert split_change(str(run), DataArguments(dataset_name="acme/pets", label_column_name="breed")) is None
    assert split_change(str(run), DataArguments(dataset_name="acme/pets")) == "label_column_name 'breed' (now 'label')"
    assert split_change(str(run), DataArguments(dataset_name="acme/cars", split_seed=7)) is None


def test_a_teacher_checkpoint_is_checked_with_its_runs_recorded_split(tmp_path):
    """checkpoint-N folders hold no recipe: a teacher given as one skipped the split check."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.teacher_data import check_teacher_data
    from hf_rcka.errors import DataError

    run = tmp_path / "teacher"
    (run / "checkpoint-100").mkdir(parents=True)
    (run / "checkpoint-100" / "trainer_state.json").write_text("{}")
    (run / "distill_config.yaml").write_text("dataset_name: builtin:digits\nsplit_seed: 7\n")
    with pytest.raises(DataError, match="teacher training images"):
        check_teacher_data(str(run / "checkpoint-100"), DataArguments(dataset_name="builtin:digits"), carved=True)


def test_a_datasets_default_configuration_is_no_configuration(tmp_path):
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.teacher_data import check_teacher_data
    from hf_rcka.errors import DataError

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "distill_config.yaml").write_text("dataset_name: acme/pets\nsplit_seed: 7\n")
    with pytest.raises(DataError, match="teacher training images"):
        check_teacher_data(str(teacher), DataArguments(dataset_name="acme/pets", dataset_config_name="default"), carved=True)


def test_only_a_checkpoint_n_folder_takes_its_runs_recipe(tmp_path):
    """A model saved inside a run folder (with a trainer_state.json of its own) is not that run's checkpoint."""
    from hf_rcka.cli.records import recorded_recipe

    run = tmp_path / "vit_run"
    for child in ("finetuned_on_cifar", "checkpoint-20"):
        (run / child).mkdir(parents=True)
        (run / child / "trainer_state.json").write_text("{}")
    (run / "distill_config.yaml").write_text("dataset_name: builtin:digits\nsplit_seed: 7\n")
    assert recorded_recipe(str(run / "finetuned_on_cifar")) is None
    assert recorded_recipe(str(run / "checkpoint-20"))["split_seed"] == 7


def test_an_uncached_pretrained_timm_student_offline_says_how_to_train_it_from_scratch(tmp_path, capsys, no_loading):
    """Its weights come from the Hub: one line before loading, with the fix for a student."""
    recipe = base(tmp_path, model_name_or_path="timm/resnet10t", student_config_overrides=None,
                  student_from_scratch=False)
    assert run(tmp_path, recipe) == 2
    line = error_of(capsys)
    assert line.startswith("error: model_name_or_path: 'timm/resnet10t' is not cached, and the Hub is offline")
    assert "set student_from_scratch: true" in line


def _cached_snapshot(cache: Path, repo_id: str, files: dict[str, str]) -> None:
    """What ``hf download REPO FILE...`` leaves in a Hugging Face cache: the snapshot of main's commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, text in files.items():
        (repo / "snapshots" / commit / name).write_text(text)


@pytest.mark.parametrize("key,repo_id,files,needs_weights,missing", [
    ("teacher_model_name_or_path", "acme/vit", {"config.json": '{"model_type": "vit"}',
                                                "preprocessor_config.json": "{}"}, True, "model.safetensors"),
    ("teacher_model_name_or_path", "acme/vit", {"config.json": '{"model_type": "vit"}', "model.safetensors": ""},
     True, "preprocessor_config.json"),
    ("model_name_or_path", "acme/vit", {"config.json": '{"model_type": "vit"}'}, False, "preprocessor_config.json"),
    ("teacher_model_name_or_path", "timm/resnet10t.c3_in1k", {"config.json": '{"architecture": "resnet10t"}'}, True,
     "model.safetensors"),
    ("teacher_model_name_or_path", "acme/big", {"config.json": '{"model_type": "vit"}', "preprocessor_config.json": "{}",
                                                "model.safetensors.index.json": '{"weight_map": {"a": "model-1.safetensors"}}'},
     True, "model-1.safetensors"),
])
def test_offline_a_cached_config_without_the_files_loading_reads_is_one_line_before_loading(
        tmp_path, monkeypatch, key, repo_id, files, needs_weights, missing):
    """A cache filled with config.json alone (``hf download NAME config.json preprocessor_config.json``,
    as the smoke test asks) passed, and the run stopped once the data had loaded: the weights were
    said to be pickled ones to convert, a processor was transformers' text about huggingface.co."""
    from huggingface_hub import constants

    from hf_rcka.cli.model_sources import check_model_source
    from hf_rcka.errors import ModelError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _cached_snapshot(tmp_path / "hub", repo_id, files)
    with pytest.raises(ModelError) as caught:
        check_model_source(key, repo_id, needs_weights)
    line = str(caught.value)
    assert line.startswith(f"{key}: the Hugging Face cache") and f"not its {missing}," in line, line
    assert f"hf download {repo_id} {missing}" in line and "\n" not in line
    # and all of it cached: nothing to say
    snapshot = next((tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir())
    for name in ("model.safetensors", "model-1.safetensors", "preprocessor_config.json"):
        (snapshot / name).write_text("" if name != "preprocessor_config.json" else "{}")
    check_model_source(key, repo_id, needs_weights)


def test_offline_a_cache_s_record_of_a_missing_file_is_not_the_file_and_either_processor_file_serves(
        tmp_path, monkeypatch):
    """The Hugging Face cache records a file a repository lacks (``.no_exist/COMMIT/model.safetensors``,
    left by an earlier load of a repository of pickled weights): that record is no cached weights, and
    taken for them the run stopped once the data had loaded. A processor cached as
    ``processor_config.json`` (the other name transformers reads) is a processor."""
    from huggingface_hub import constants

    from hf_rcka.cli.model_sources import check_model_source
    from hf_rcka.errors import ModelError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _cached_snapshot(tmp_path / "hub", "acme/vit", {"config.json": '{"model_type": "vit"}',
                                                    "processor_config.json": "{}"})
    repo = tmp_path / "hub" / "models--acme--vit"
    commit = (repo / "refs" / "main").read_text()
    (repo / ".no_exist" / commit).mkdir(parents=True)
    (repo / ".no_exist" / commit / "model.safetensors").write_text("")
    with pytest.raises(ModelError, match=r"holds the config\.json of 'acme/vit' but not its model\.safetensors,"):
        check_model_source("teacher_model_name_or_path", "acme/vit", True)
    check_model_source("model_name_or_path", "acme/vit", False)  # its processor_config.json is cached


def test_a_local_timm_wrapper_folder_needs_no_processor_file(tmp_path):
    """A folder saved by transformers' TimmWrapper (``model_type: timm_wrapper``, no timm
    ``architecture`` key) carries its data config in config.json: it was asked for a processor file."""
    from hf_rcka.cli.model_sources import check_image_processor
    from hf_rcka.errors import ModelError

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "timm_wrapper"}')
    check_image_processor("teacher_model_name_or_path", str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(ModelError):
        check_image_processor("teacher_model_name_or_path", str(tmp_path / "m"))


def test_offline_a_hub_dataset_datasets_has_not_prepared_says_where_its_downloaded_files_are(tmp_path, monkeypatch):
    """datasets offline reads only what it prepared itself: files ``hf download --repo-type dataset``
    put in the Hugging Face cache were "Couldn't reach 'acme/pics' on the Hub (OfflineModeIsEnabled)"."""
    import datasets
    from huggingface_hub import constants

    from hf_rcka.arguments import DataArguments

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    with pytest.raises(DataError) as caught:
        run_inputs.declared_labels(DataArguments(dataset_name="acme/pics"))
    line = str(caught.value)
    assert "is not in datasets' cache" in line and "datasets.load_dataset('acme/pics')" in line
    assert "give that folder" not in line
    snapshot = tmp_path / "hub" / "datasets--acme--pics" / "snapshots" / ("1" * 40)
    (snapshot / "data").mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("1" * 40)
    with pytest.raises(DataError) as caught:
        run_inputs.declared_labels(DataArguments(dataset_name="acme/pics"))
    assert "give that folder as dataset_name" in str(caught.value) and str(snapshot) in str(caught.value)
    # the snapshot refs/main names, not a newer one beside it; without refs/main, the newest
    newer = snapshot.parent / ("2" * 40)
    (newer / "data").mkdir(parents=True)
    os.utime(snapshot, (1, 1))
    for refs_main, named in ((True, snapshot), (False, newer)):
        if not refs_main:
            (snapshot.parent.parent / "refs" / "main").unlink()
        with pytest.raises(DataError) as caught:
            run_inputs.declared_labels(DataArguments(dataset_name="acme/pics"))
        assert str(caught.value).endswith(f"{named}, or load it once where there is network, with this HF_HOME "
                                          "(datasets.load_dataset('acme/pics'))"), caught.value


def test_offline_a_hub_dataset_s_newest_snapshot_is_the_one_named_and_a_missing_one_is_not(tmp_path, monkeypatch):
    """Without refs/main the snapshot named is the newest one written, not the last by its commit's
    name (a hash: an older download); a refs/main whose snapshot folder is gone names no folder
    (the fix pointed at a folder that does not exist)."""
    import datasets
    from huggingface_hub import constants

    from hf_rcka.arguments import DataArguments

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    repo = tmp_path / "hub" / "datasets--acme--pics"
    older, newer = repo / "snapshots" / ("f" * 40), repo / "snapshots" / ("0" * 40)
    for snapshot in (older, newer):
        (snapshot / "data").mkdir(parents=True)
    os.utime(older, (1, 1))
    with pytest.raises(DataError) as caught:
        run_inputs.declared_labels(DataArguments(dataset_name="acme/pics"))
    assert f"give that folder as dataset_name (the Hugging Face cache holds its files there, from hf download, which " \
           f"datasets does not read offline): {newer}, or" in str(caught.value), caught.value
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)  # its snapshot deleted
    with pytest.raises(DataError) as caught:
        run_inputs.declared_labels(DataArguments(dataset_name="acme/pics"))
    assert "give that folder" not in str(caught.value) and "1" * 40 not in str(caught.value), caught.value
    assert "load it once where there is network" in str(caught.value)


@pytest.mark.parametrize("offline, name, said, not_said", [
    # the Hub unreachable, HF_HUB_OFFLINE unset: datasets retried for half a minute and ended in "Couldn't
    # reach 'acme/pics' on the Hub (LocalEntryNotFoundError)", saying neither whether the network or the
    # name was wrong, nor that a machine without network reads datasets' cache with HF_HUB_OFFLINE=1
    (False, "acme/pics", ["could not reach the Hugging Face Hub", "set HF_HUB_OFFLINE=1"], []),
    # HF_HUB_OFFLINE set and 'cifar10' (no namespace: not looked up in the Hugging Face cache) not in
    # datasets' cache: it was told to check the network and set HF_HUB_OFFLINE=1, which was set
    (True, "cifar10", ["the Hub is offline", "load it once where there is network"],
     ["Check the network", "set HF_HUB_OFFLINE=1"]),
])
def test_a_hub_dataset_that_cannot_be_reached_says_why_and_what_to_do(monkeypatch, offline, name, said, not_said):
    import datasets

    from hf_rcka.arguments import DataArguments

    def unreachable(name, *args, **kwargs):  # what datasets raises, online once its retries are spent
        cause = "OfflineModeIsEnabled" if offline else "LocalEntryNotFoundError"
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub ({cause})")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(datasets, "load_dataset_builder", unreachable)
    with pytest.raises(DataError) as caught:
        run_inputs.declared_labels(DataArguments(dataset_name=name))
    line = str(caught.value)
    assert line.startswith(f"dataset_name '{name}': cannot load the dataset (ConnectionError: Couldn't reach"), line
    assert all(text in line for text in said) and not any(text in line for text in not_said), line
    assert "\n" not in line


def test_a_teachers_relative_train_dir_is_read_from_where_it_ran(tmp_path, monkeypatch):
    """A recorded 'train_dir: imgs/train' was read from the student's working directory: run from
    another folder, a student evaluated on the teacher's training images passed the check."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.records import write_working_dir
    from hf_rcka.cli.teacher_data import check_teacher_data
    from hf_rcka.errors import DataError

    first, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    train = Path(image_folder(first / "imgs" / "train", ["cat", "dog"]))
    other = image_folder(tmp_path / "other", ["cat", "dog"])
    teacher = first / "teacher"
    teacher.mkdir()
    (teacher / "distill_config.yaml").write_text("train_dir: imgs/train\nvalidation_dir: imgs/val\n")
    monkeypatch.chdir(first)
    write_working_dir(str(teacher))  # what the teacher's run recorded, in the folder it ran in
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    student = DataArguments(train_dir=other, validation_dir=str(train))
    with pytest.raises(DataError, match="teacher's training images"):
        check_teacher_data(str(teacher), student, carved=False)


def test_an_eval_only_run_of_a_model_trained_on_this_data_evaluates_its_held_out_images(tmp_path, capsys):
    """Without a validation split an eval-only run evaluated every image: re-checking a digits run
    with its own recipe scored its 1,257 training images too (0.995 for a 0.985 model), exit 0."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.teacher_data import held_out_by

    assert run(tmp_path, base(tmp_path, train_val_split=0.3, split_seed=7)) == 0
    out = tmp_path / "out"
    evaluate = base(tmp_path, model_name_or_path=str(out), student_config_overrides=None, do_train=False,
                    max_eval_samples=None)  # the recipe's own split settings left at their defaults
    capsys.readouterr()
    assert run(tmp_path, evaluate) == 0
    log = capsys.readouterr().err
    assert f"{out} was trained on this data; its held-out 0.3 (split_seed 7) is evaluated" in log
    record = next(out.glob("_eval-*"))
    assert yaml.safe_load((record / "eval_config.yaml").read_text())["split_seed"] == 7
    assert "/ 540 eval images" in log  # 30% of 1,797, not all of them
    # other data, or a model no run of this data made, is evaluated on all of the data given
    assert held_out_by(str(out), DataArguments(dataset_name="acme/pets")) is None
    assert held_out_by("timm/resnet18", DataArguments(dataset_name="builtin:digits")) is None


def test_flags_without_a_recipe_say_the_recipe_comes_first(capsys):
    """'--model_name_or_path OUT --do_train false' alone said "recipe '--model_name_or_path' does not exist"."""
    assert main(["--model_name_or_path", "outputs/run", "--do_train", "false"]) == 2
    line = error_of(capsys)
    assert line.startswith("error: the recipe file comes first") and "--do_train false --model_name_or_path OUT --student_from_scratch false" in line
    assert main(["--debug", "--model_name_or_path", "x"]) == 2  # a bare --debug is still the run's flag
    assert "the recipe file comes first" in capsys.readouterr().err


def test_hints_name_the_command_that_was_run(capsys, monkeypatch, tmp_path):
    """A pip-installed user has no scripts/distill.py: the hints name the command they ran."""
    monkeypatch.setattr("sys.argv", ["/home/alice/venv/bin/hf-rcka-distill"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["--do_train", "false"]) == 2
    line = error_of(capsys)
    assert "hf-rcka-distill RECIPE.yaml" in line and "hf-rcka-distill OUT/distill_config.yaml" in line
    assert "scripts/distill.py" not in line
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: config:vit\nzzqx_unknown: 1\n")
    assert main([str(recipe)]) == 2
    line = error_of(capsys)
    assert "no key is close; hf-rcka-distill --help lists them all" in line


# ------------------------------------------------------------------ label columns that are no classes

def _parquet_dataset(folder: Path, train: dict, validation: dict | None = None, train_features=None,
                     validation_features=None) -> str:
    import datasets

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, columns, features in (("train", train, train_features), ("validation", validation, validation_features)):
        if columns is None:
            continue
        n = len(next(iter(columns.values())))
        images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]
        schema = datasets.Features({"image": datasets.Image(), **features}) if features else None
        datasets.Dataset.from_dict({"image": images, **columns}, features=schema).to_parquet(str(folder / f"{name}.parquet"))
    return str(folder)


def _cycle(values, n):
    return [values[i % len(values)] for i in range(n)]


@pytest.mark.parametrize("case, expected", [
    ("fractional", "labels are fractional (e.g. 0.5), like a regression target"),
    ("one_class", "holds one class (['0']): a classifier of one class learns nothing and scores 100%"),
    ("identifier", "every training image has a 'id' of its own (24 images, 24 classes): that is an identifier"),
    ("multi_label", "holds lists (multi-label), not one class per image"),
    ("image_column", "label_column_name and image_column_name are both 'image'"),
])
def test_a_label_column_that_holds_no_classes_is_refused(tmp_path, capsys, case, expected):
    """Each trained and reported an accuracy that meant nothing (one class: 100%), or crashed with
    a traceback (lists: unhashable type)."""
    import datasets

    columns = {
        "fractional": ({"label": _cycle([0.5, 1.7, 2.3, 3.1], 24)}, {"label": _cycle([0.5, 1.7], 12)}, None),
        "one_class": ({"label": [0] * 24}, {"label": [0] * 12}, None),
        "identifier": ({"label": _cycle([0, 1, 2], 24), "id": list(range(24))},
                       {"label": _cycle([0, 1, 2], 12), "id": list(range(12))}, None),
        "multi_label": ({"label": _cycle([[0], [1, 2]], 24)}, {"label": _cycle([[0], [1]], 12)},
                        {"label": datasets.Sequence(datasets.ClassLabel(names=["a", "b", "c"]))}),
        "image_column": ({"label": _cycle([0, 1], 24)}, {"label": _cycle([0, 1], 12)}, None),
    }[case]
    train, validation, features = columns
    data = _parquet_dataset(tmp_path / "data", train, validation, features, features)
    label = {"identifier": "id", "image_column": "image"}.get(case, "label")
    recipe = base(tmp_path, dataset_name=data, label_column_name=label, max_train_samples=None, max_eval_samples=None)
    assert run(tmp_path, recipe) == 2
    assert expected in error_of(capsys)


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_a_split_whose_class_names_differ_by_case_or_order_is_matched_by_name(tmp_path, layout):
    """Validation saved with ClassLabel ["dog", "cat"] (save_to_disk) or ["dog ", "Cat"] (parquet)
    next to a training split's ["cat", "dog"] was read by index: every validation label swapped."""
    import datasets

    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.datasets import load_raw_datasets

    names = ["dog", "cat"] if layout == "save_to_disk" else ["dog ", "Cat"]
    train = {"label": _cycle([0, 1], 24)}  # cat, dog
    validation = {"label": _cycle([1, 0], 12)}  # also cat, dog, stored with the other order's ids
    train_features = {"label": datasets.ClassLabel(names=["cat", "dog"])}
    validation_features = {"label": datasets.ClassLabel(names=names)}
    folder = tmp_path / "data"
    if layout == "parquet":
        _parquet_dataset(folder, train, validation, train_features, validation_features)
    else:
        parts = _parquet_dataset(tmp_path / "parts", train, validation, train_features, validation_features)
        datasets.DatasetDict({split: datasets.Dataset.from_parquet(f"{parts}/{split}.parquet")
                              for split in ("train", "validation")}).save_to_disk(str(folder))
    raw = load_raw_datasets(DataArguments(dataset_name=str(folder), label_column_name="label"))
    feature = raw["validation"].features["label"]
    assert [feature.names[v] for v in raw["validation"]["label"][:4]] == ["cat", "dog", "cat", "dog"]


def test_a_saved_dataset_s_cache_files_are_not_read_as_rows(tmp_path):
    """A .map() of the loaded DatasetDict writes cache-*.arrow files into its saved folder, and the
    run read them as more rows: 80 evaluation images for 40, without a word."""
    import datasets
    from PIL import Image

    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.datasets import load_raw_datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    split = {"image": [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(20)], "label": _cycle([0, 1], 20)}
    folder = tmp_path / "data"
    datasets.DatasetDict({name: datasets.Dataset.from_dict(split, features=features)
                          for name in ("train", "validation")}).save_to_disk(str(folder))
    datasets.load_from_disk(str(folder))["validation"].map(lambda row: row)  # its cache lands in the folder
    assert list((folder / "validation").glob("cache-*.arrow"))
    raw = load_raw_datasets(DataArguments(dataset_name=str(folder), label_column_name="label"))
    assert (len(raw["train"]), len(raw["validation"])) == (20, 20)
    assert raw["validation"].features["label"].names == ["cat", "dog"]


def test_real_classes_that_look_odd_still_load(tmp_path):
    """Each was refused or crashed after the checks above first landed: a one-shot ClassLabel set
    (taken for ids), float16 labels (no floor kernel), save_to_disk names that differ only in case
    in the same order, and a validation ClassLabel listing a class it has no image of."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.datasets import load_raw_datasets
    from hf_rcka.data.label_values import check_class_count

    def loaded(folder):
        return load_raw_datasets(DataArguments(dataset_name=str(folder), label_column_name="label"))

    ten = [str(i) for i in range(10)]
    one_shot = _parquet_dataset(tmp_path / "one_shot", {"label": list(range(10))}, {"label": list(range(10))},
                                {"label": datasets.ClassLabel(names=ten)}, {"label": datasets.ClassLabel(names=ten)})
    raw = loaded(one_shot)
    check_class_count(raw["train"], "label", carved=raw.carved)
    ids = datasets.Dataset.from_dict({"label": list(range(10))})  # plain: one shot each after a carve
    check_class_count(ids, "label", carved=True)
    with pytest.raises(Exception, match="that is an identifier"):
        check_class_count(ids, "label", carved=False)

    half = tmp_path / "half"
    _parquet_dataset(half, {"label": _cycle([0, 1, 2], 24)}, {"label": _cycle([0, 1, 2], 12)})
    for name in ("train", "validation"):
        table = pq.read_table(half / f"{name}.parquet")
        pq.write_table(table.set_column(table.schema.get_field_index("label"), "label",
                                        table["label"].cast(pa.float16())), half / f"{name}.parquet")
    assert sorted(set(loaded(half)["train"]["label"])) == [0.0, 1.0, 2.0]

    for names, validation_labels, expected in ((["cat", "Dog"], [0, 1], ["cat", "dog"]),
                                               (["cat", "dog", "eel"], [0, 1], ["cat", "dog"])):
        parts = _parquet_dataset(tmp_path / f"parts{len(names)}", {"label": _cycle([0, 1], 24)},
                                 {"label": _cycle(validation_labels, 12)},
                                 {"label": datasets.ClassLabel(names=["cat", "dog"])},
                                 {"label": datasets.ClassLabel(names=names)})
        folder = tmp_path / f"disk{len(names)}"
        datasets.DatasetDict({split: datasets.Dataset.from_parquet(f"{parts}/{split}.parquet")
                              for split in ("train", "validation")}).save_to_disk(str(folder))
        validation = loaded(folder)["validation"]
        assert [validation.features["label"].names[v] for v in validation["label"][:2]] == expected


def test_a_broken_checkpoint_is_told_to_resume_from_an_earlier_one_only(tmp_path):
    """Resuming a broken checkpoint-2 was told to resume from checkpoint-5, a later one."""
    from hf_rcka.cli.resume_checks import _earlier

    for step in (2, 5, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert _earlier(str(tmp_path / "checkpoint-2")) == (
        f"start again without resume_from_checkpoint, with --overwrite_output_dir true where output_dir holds "
        f"{str(tmp_path / 'checkpoint-2')!r} (it is set aside), or delete it")
    assert f"--resume_from_checkpoint {tmp_path / 'checkpoint-5'} " in _earlier(str(tmp_path / "checkpoint-10"))


def test_the_digits_without_scikit_learn_is_one_error_line(monkeypatch):
    """It was an ImportError traceback."""
    import builtins
    import importlib.util

    from hf_rcka.data.digits import digits_dataset
    from hf_rcka.errors import DataError

    real_import, real_find_spec = builtins.__import__, importlib.util.find_spec
    # the data file is found without importing scikit-learn: not installed, there is no such package either
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.startswith("sklearn") else real_find_spec(name, *args))

    def without_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_sklearn)
    with pytest.raises(DataError, match=r"builtin:digits needs scikit-learn, which is not installed: pip install"):
        digits_dataset()


def test_a_teacher_with_unnamed_classes_is_said_once(tmp_path, capsys):
    """The command line pairs its LABEL_k classes with the data's named ones by position and says so;
    the trainer's check of the same pairing said it again (an ImageNet run with a timm teacher)."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    teacher = tmp_path / "teacher"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                                              layer_type="basic", num_labels=3)).save_pretrained(teacher)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(teacher)
    recipe = base(tmp_path, dataset_name=None, train_dir=image_folder(tmp_path / "train", ["cat", "dog", "eel"]),
                  validation_dir=image_folder(tmp_path / "val", ["cat", "dog", "eel"]),
                  teacher_model_name_or_path=str(teacher), teacher_accuracy_check="off")
    assert run(tmp_path, recipe) == 0
    assert capsys.readouterr().err.count("the teacher's classes are unnamed (LABEL_0...)") == 1


def test_resume_recipe_check_lets_folders_move_and_fills_what_a_recipe_leaves_out(tmp_path):
    """False refusals of a legitimate resume: pairs that leave their adapter out (the arguments
    fill in 'auto'), a dataset or teacher folder that moved, an image size spelt out; and what
    must still be refused: another builtin dataset, another teacher label mapping."""
    from types import SimpleNamespace

    from hf_rcka.cli.resume_checks import check_resume_recipe
    from hf_rcka.errors import RecipeError
    from hf_rcka.recipe_specs import validate_feature_pairs

    run = tmp_path / "run"
    run.mkdir()
    pairs = [{"student_layer": 1, "teacher_layer": 1}]
    recorded = {"model_name_or_path": "config:resnet", "teacher_model_name_or_path": str(tmp_path / "old_teacher"),
                "dataset_name": str(tmp_path / "old_data"), "feature_pairs": pairs,
                "losses": [{"name": "ce"}, {"name": "feature_cka"}], "output_dir": str(run)}
    (run / "distill_config.yaml").write_text(yaml.safe_dump(recorded))
    (tmp_path / "new_teacher").mkdir()
    (tmp_path / "new_data").mkdir()

    def check(**changes):
        values = {"model_name_or_path": "config:resnet", "student_from_scratch": False,
                  "teacher_model_name_or_path": str(tmp_path / "new_teacher"), "teacher_config_overrides": None,
                  "teacher_label_mapping": "by_name", "image_size": 16, "student_config_overrides": None,
                  "dataset_name": str(tmp_path / "new_data"), "dataset_config_name": None,
                  "feature_pairs": validate_feature_pairs(pairs), "losses": [{"name": "ce"}, {"name": "feature_cka"}],
                  "seed": 42, "data_seed": None, "aug_repeats": 0, "max_train_samples": None, "label_column_name": "label",
                  **changes}
        check_resume_recipe(str(run), SimpleNamespace(**values), SimpleNamespace(**values), SimpleNamespace(**values))

    check()
    with pytest.raises(RecipeError, match="teacher_label_mapping 'by_name' -> 'by_index'"):
        check(teacher_label_mapping="by_index")
    recorded["dataset_name"] = "builtin:digits"
    (run / "distill_config.yaml").write_text(yaml.safe_dump(recorded))
    with pytest.raises(RecipeError, match="dataset_name 'builtin:digits' -> 'builtin:other'"):
        check(dataset_name="builtin:other")
    # ce's smoothing, set as its option or through label_smoothing_factor: compared as what ce gets
    recorded["label_smoothing_factor"] = 0.1
    (run / "distill_config.yaml").write_text(yaml.safe_dump(recorded))
    check(dataset_name="builtin:digits", label_smoothing_factor=0.0,
          losses=[{"name": "ce", "label_smoothing": 0.1}, {"name": "feature_cka"}])
    with pytest.raises(RecipeError, match="ce label_smoothing 0.1 -> 0.2"):
        check(dataset_name="builtin:digits", label_smoothing_factor=0.2)


def test_a_student_of_other_than_three_channels_is_one_line(tmp_path, capsys):
    """Every image is decoded to RGB: a 1-channel timm student loaded, then failed at its first step
    with a convolution's RuntimeError."""
    recipe = base(tmp_path, model_name_or_path="timm/resnet10t", student_from_scratch=True,
                  student_config_overrides={"in_chans": 1, "pretrained_cfg_overlay": {"mean": [0.5], "std": [0.5]}})
    assert run(tmp_path, recipe) == 2
    assert "student_config_overrides sets in_chans 1: every image is decoded to RGB" in error_of(capsys)
    assert not (tmp_path / "out").exists(), "refused from the recipe, before anything loads"


def test_an_output_dir_that_cannot_be_made_is_one_line_before_anything_loads(tmp_path, capsys, no_loading):
    """A folder name too long for the file system ended in a traceback once models and data had loaded."""
    too_long = tmp_path / ("x" * 300)
    assert run(tmp_path, base(tmp_path, output_dir=str(too_long))) == 2
    assert error_of(capsys).startswith(f"error: output_dir {str(too_long)!r} cannot be created (File name too long)")


def test_folder_names_with_glob_characters_or_a_trailing_slash_read_their_own_files(tmp_path, caplog, monkeypatch):
    """datasets reads data files as glob patterns: a saved DatasetDict "ds[12]" trained on its
    sibling "ds2"'s rows, exit 0; a parquet folder "pq[12]" read "pq1"; train_dir "plain/" failed
    with "corresponds to no data"; a hidden class folder ".inf" vanished with its images."""
    import datasets
    from PIL import Image

    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.datasets import load_raw_datasets
    from hf_rcka.errors import DataError

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})

    def saved(folder, rows):
        split = {"image": [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(rows)], "label": _cycle([0, 1], rows)}
        datasets.DatasetDict({name: datasets.Dataset.from_dict(split, features=features)
                              for name in ("train", "validation")}).save_to_disk(str(folder))

    saved(tmp_path / "ds[12]", 12)
    saved(tmp_path / "ds2", 6)
    raw = load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "ds[12]"), label_column_name="label"))
    assert len(raw["train"]) == 12
    (tmp_path / "pq[12]").mkdir()
    (tmp_path / "pq[12]" / "train.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"holds a \[, \* or \? that would match other folders' files"):
        load_raw_datasets(DataArguments(dataset_name=str(tmp_path / "pq[12]")))
    for name in ("cat", "dog", ".inf"):
        (tmp_path / "plain" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "plain" / name / f"{i}.png")
    from hf_rcka.data.image_folders import check_data_dirs

    data = DataArguments(train_dir=f"{tmp_path / 'plain'}/", train_val_split=0.5)
    with caplog.at_level("WARNING", logger="hf_rcka"):
        check_data_dirs(data)  # as the command line checks it before loading
    assert "hidden folders (a leading '.') are skipped, images and all: ['.inf']" in caplog.text
    raw = load_raw_datasets(data)
    assert len(raw["train"]) + len(raw["validation"]) == 12
    # a relative folder under a working folder whose name holds a "[" ("corresponds to no data")
    import shutil

    shutil.copytree(tmp_path / "plain", tmp_path / "runs[1]" / "data")
    monkeypatch.chdir(tmp_path / "runs[1]")
    raw = load_raw_datasets(DataArguments(train_dir="data", train_val_split=0.5))
    assert len(raw["train"]) + len(raw["validation"]) == 12


def test_a_recipe_error_is_said_once_in_a_data_parallel_launch(tmp_path, capsys, monkeypatch):
    """Every process printed it (twice in a 2-process launch), above the launcher's traceback. A
    replica waits for the launcher to stop it (process 0 failed on it too, and said it); a stop
    that came during that wait raised a second traceback, and an error met by the replica alone
    was said by no one."""
    import signal

    from hf_rcka.cli import main as cli

    def stopped_by_the_launcher(seconds):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli.time, "sleep", stopped_by_the_launcher)
    recipe = base(tmp_path)
    recipe["learnig_rate"] = 1e-3
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run(tmp_path, recipe) == 2
    assert capsys.readouterr().err == ""
    from hf_rcka.errors import DataError

    def missing_data(argv, stop):  # every process meets a missing data folder too (each printed it)
        raise DataError("train_dir 'nowhere' does not exist")

    with monkeypatch.context() as patch:
        patch.setattr(cli, "_run_recipe", missing_data)
        assert cli.main(["recipe.yaml"]) == 2
        assert capsys.readouterr().err == ""
        patch.setattr(cli.time, "sleep", lambda seconds: None)
        assert cli.main(["recipe.yaml"]) == 2
        assert capsys.readouterr().err == "error: train_dir 'nowhere' does not exist (met by process 1 alone)\n"
    monkeypatch.setattr(cli.time, "sleep", lambda seconds: None)  # not stopped: process 0 goes on without it
    assert run(tmp_path, recipe) == 2
    assert "error: unknown recipe key 'learnig_rate'" in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert run(tmp_path, recipe) == 2
    assert "error: unknown recipe key 'learnig_rate'" in capsys.readouterr().err
    # a cluster's RANK on a plain run (no launcher) is no replica: its error is said
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("RANK", "1")
    assert run(tmp_path, recipe) == 2
    assert "error: unknown recipe key 'learnig_rate'" in capsys.readouterr().err



def test_a_model_folders_name_without_its_folder_is_said_without_asking_the_hub(tmp_path, capsys, no_loading,
                                                                                 monkeypatch):
    """'supervised-resnet10t-digits' for outputs/supervised-resnet10t-digits went to the Hub, with
    its retries, for 23 s before the error, which did not name the folder that exists."""
    import hf_rcka.cli.model_sources as sources

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "teach").mkdir(parents=True)
    (tmp_path / "outputs" / "teach" / "config.json").write_text("{}")
    monkeypatch.setattr(sources, "_check_hub_reachable", lambda *a, **k: pytest.fail("asked the Hub"))
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path="teach")) == 2
    assert ("error: teacher_model_name_or_path: no folder 'teach' here, and 'outputs/teach' is a model folder of "
            "that name: give its path") in error_of(capsys)
    # two levels down too (outputs/<project>/<run>): a mutant that looked one level down passed every test
    (tmp_path / "outputs" / "pets" / "deep").mkdir(parents=True)
    (tmp_path / "outputs" / "pets" / "deep" / "config.json").write_text("{}")
    assert run(tmp_path, base(tmp_path, teacher_model_name_or_path="deep")) == 2
    assert "no folder 'deep' here, and 'outputs/pets/deep' is a model folder of that name" in error_of(capsys)


def test_a_class_folder_with_a_backslash_is_named(tmp_path):
    """datasets read the backslash as a separator, dropped the label column, and the error blamed
    label_column_name."""
    from PIL import Image

    from hf_rcka.data.image_folders import class_folders
    from hf_rcka.errors import LabelError

    for name in ("cat", "a\\b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "1.png")
    with pytest.raises(LabelError, match=r"has a backslash in its name"):
        class_folders(str(tmp_path))


def test_fp16_from_the_launcher_on_a_cpu_is_refused(tmp_path, capsys, no_loading, monkeypatch):
    """accelerate launch --mixed_precision fp16 (or its config file) on a CPU trained in float32 silently,
    and the card said fp16 mixed precision."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert run(tmp_path, base(tmp_path)) == 2
    assert "ACCELERATE_MIXED_PRECISION=fp16" in error_of(capsys)


def test_a_datasets_cache_that_cannot_be_written_is_named_not_the_data(tmp_path, monkeypatch):
    """HF_DATASETS_CACHE under a file (or a folder without write access) was 'dataset_name ...: cannot
    load the dataset', sending the user to data that is fine. Image folders need no cache at all: a
    large one, memory-mapped from a file there, is held in memory instead."""
    import datasets

    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.run_inputs import load_data
    from hf_rcka.data import mapped_splits
    from hf_rcka.errors import DataError

    monkeypatch.setattr(mapped_splits, "MAPPED_FROM_BYTES", 1)  # as if train_dir were large

    data = _parquet_dataset(tmp_path / "data", {"label": [0, 1] * 4})
    train = image_folder(tmp_path / "train", ["a", "b"])
    (tmp_path / "file").write_text("")
    for cache in (tmp_path / "file" / "cache", tmp_path / "file" / "hf" / "datasets"):  # HF_HOME under a file too
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
        with pytest.raises(DataError, match=r"datasets' cache .*cannot be used .*point HF_DATASETS_CACHE \(or HF_HOME\)"):
            load_data(DataArguments(dataset_name=data, train_val_split=0.5))
        assert len(load_data(DataArguments(train_dir=train, train_val_split=0.5))["train"]) > 0


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])
def test_a_full_datasets_cache_is_named_not_the_data(tmp_path, monkeypatch, code):
    """The arrow writer's 'No space left on device' names no file: it was 'dataset_name ...: cannot
    load the dataset', sending the user to data that is fine."""
    import errno

    import datasets
    from datasets.exceptions import DatasetGenerationError

    from hf_rcka.arguments import DataArguments

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    full = OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
    generating = DatasetGenerationError("An error occurred while generating the dataset")
    generating.__cause__ = full  # as datasets raises it while it writes the prepared data
    for raised in (full, generating):
        def loading(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(run_inputs, "load_raw_datasets", loading)
        with pytest.raises(DataError) as refused:
            run_inputs.load_data(DataArguments(dataset_name=str(tmp_path / "data")))
        assert str(refused.value) == (
            f"a disk filled while the data loaded (OSError: {os.strerror(getattr(errno, code))}): datasets' cache "
            f"{str(tmp_path / 'cache')!r} (or, for a Hub dataset, the Hub's cache) is on a full disk or over your "
            "quota: free space there, or point HF_DATASETS_CACHE (or HF_HOME) at another disk")


def test_a_shipped_recipe_asked_for_outside_the_repository_says_where_recipes_are(tmp_path, monkeypatch, capsys):
    """An installed user's 'recipes/...' said only 'does not exist': the wheel holds no recipes."""
    from hf_rcka.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["recipes/supervised-resnet10t-digits.yaml"]) == 2
    assert "not part of the installed package; run from a checkout of the repository" in capsys.readouterr().err
    (tmp_path / "recipes").mkdir()  # in a checkout, a misspelt recipe is only missing
    assert main(["recipes/supervised-resnet10t-digit.yaml"]) == 2
    assert capsys.readouterr().err.strip().endswith("does not exist")


def test_a_moved_projects_teacher_is_checked_against_the_data_it_reads_here(tmp_path, monkeypatch):
    """A project moved since its teacher trained (old/ -> new/): the record's relative train_dir was
    read under the gone old/, so the split check compared another folder and passed a student with
    another split_seed, most of whose validation images the teacher had trained on."""
    import json

    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.teacher_data import check_teacher_data
    from hf_rcka.errors import DataError

    image_folder(tmp_path / "new" / "data" / "train", ["a", "b"])
    teacher = tmp_path / "new" / "teacher"
    teacher.mkdir()
    (teacher / "distill_config.yaml").write_text("train_dir: data/train\ntrain_val_split: 0.5\nsplit_seed: 7\n")
    (teacher / "_working_dir.json").write_text(json.dumps({"working_dir": str(tmp_path / "old")}))
    monkeypatch.chdir(tmp_path / "new")
    with pytest.raises(DataError, match="teacher training images"):
        check_teacher_data(str(teacher), DataArguments(train_dir="data/train", train_val_split=0.5, split_seed=42),
                           carved=True)


def _ce():
    from hf_rcka.modeling.assembly import build_losses
    return build_losses([{"name": "ce"}])


# a metric of the other weight set under a named evaluation set
def test_the_other_weight_sets_metric_of_a_named_evaluation_set_is_refused_for_load_best():
    from types import SimpleNamespace

    from hf_rcka.errors import RecipeError
    from hf_rcka.trainer.metrics import check_metric_for_best_model

    args = SimpleNamespace(metric_for_best_model="eval_val_ema_accuracy", load_best_model_at_end=True,
                           model_ema=True, model_ema_export=False)
    with pytest.raises(RecipeError, match="scores the ema weights"):
        check_metric_for_best_model(args, _ce(), num_labels=10, eval_sets=["val", "test"])
    args.metric_for_best_model = "eval_val_accuracy"  # the exported (live) weights' score: accepted
    check_metric_for_best_model(args, _ce(), num_labels=10, eval_sets=["val", "test"])


# top5_accuracy needs more than 5 classes
def test_top5_accuracy_is_not_a_metric_of_exactly_five_classes():
    from types import SimpleNamespace

    from hf_rcka.errors import RecipeError
    from hf_rcka.trainer.metrics import check_metric_for_best_model, evaluation_metric_names

    assert "top5_accuracy" not in evaluation_metric_names(["ce"], SimpleNamespace(), num_labels=5)
    assert "top5_accuracy" in evaluation_metric_names(["ce"], SimpleNamespace(), num_labels=6)
    with pytest.raises(RecipeError, match="top5_accuracy is reported only with more than 5 classes, and this dataset has 5"):
        check_metric_for_best_model(SimpleNamespace(metric_for_best_model="top5_accuracy"), _ce(), num_labels=5)


def _two_stage_resnet(num_labels=3, num_channels=3):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic",
        num_labels=num_labels))


# PR1 (cli/probes.py _check_patch_grid): a width that is not whole patches is refused like a height
def test_a_width_that_is_not_whole_patches_is_refused():
    from transformers import ViTConfig, ViTForImageClassification

    from hf_rcka.cli.probes import _check_patch_grid
    from hf_rcka.errors import ModelError

    vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=8, num_hidden_layers=1,
                                              num_attention_heads=1, intermediate_size=8, num_labels=2))
    _check_patch_grid(vit, 16, 20, "image_size")
    with pytest.raises(ModelError, match="16x18 inputs are not whole 4x4 patches"):
        _check_patch_grid(vit, 16, 18, "image_size")


def test_a_patch_larger_than_the_image_suggests_a_size_of_one_patch_not_0x0():
    """Round 37: a ViT of 32 px patches asked for 16 px images was told to use "e.g. 0x0"."""
    from transformers import ViTConfig, ViTForImageClassification

    from hf_rcka.cli.probes import _check_patch_grid
    from hf_rcka.errors import ModelError

    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=32, hidden_size=8, num_hidden_layers=1,
                                              num_attention_heads=1, intermediate_size=8, num_labels=2))
    with pytest.raises(ModelError, match=r"16x16 inputs are not whole 32x32 patches.*\(e\.g\. 32x32\)"):
        _check_patch_grid(vit, 16, 16, "image_size")


# PR2 (cli/probes.py probe_student): a student built for 4-channel images is refused (images are RGB)
def test_a_four_channel_student_is_refused_by_the_probe():
    from hf_rcka.cli.probes import probe_student
    from hf_rcka.errors import ModelError

    with pytest.raises(ModelError, match="reads 4-channel images"):
        probe_student(_two_stage_resnet(num_channels=4), SimpleNamespace(size=(16, 16), channels=4), 16)


@pytest.mark.parametrize("optim", ["galore_adamw", "galore_adafactor_layerwise", "apollo_adamw",
                                   "apollo_adamw_layerwise"])
def test_galore_and_apollo_optimizers_keep_their_target_modules(optim):
    for value in (optim, OptimizerNames(optim)):  # a recipe's string, and TrainingArguments' enum
        check_optim_target_modules(SimpleNamespace(optim=value, optim_target_modules=["attn", "mlp"]))
    with pytest.raises(RecipeError, match="and optim adamw_torch trains every layer alike"):
        check_optim_target_modules(SimpleNamespace(optim=OptimizerNames("adamw_torch"), optim_target_modules=["attn"]))


REPLICA_LINE = "error: train_dir 'nowhere' does not exist"


def _replica_missing_data(argv, stop):
    raise DataError("train_dir 'nowhere' does not exist")


@pytest.fixture
def replica_waits(monkeypatch):
    """The command line's run fails with a user error; the seconds it sleeps are recorded (no stop comes)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli_main, "_run_recipe", _replica_missing_data)
    seconds = []
    monkeypatch.setattr(cli_main.time, "sleep", seconds.append)
    return seconds


@pytest.mark.parametrize("env", [
    {},
    {"RANK": "1"},  # a cluster scheduler's RANK on a plain run
    {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "2"},  # a second machine's first process
    {"WORLD_SIZE": "1", "LOCAL_RANK": "1"},  # one process that a scheduler numbered
])
def test_a_process_that_is_no_replica_says_its_error_at_once(replica_waits, env, monkeypatch, capsys):
    """Only a launcher's replica waits for the launcher's stop; a machine's first process (it fails
    first, and its line is the one the launcher's summary points to) and a plain run say the error
    at once, without '(met by process N alone)'."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli_main.main(["recipe.yaml"]) == 2
    assert capsys.readouterr().err == REPLICA_LINE + "\n"
    assert replica_waits == [], "no wait"


def test_a_replica_waits_as_long_as_a_launcher_takes_to_see_process_zero_fail(replica_waits, monkeypatch, capsys):
    """Process 0's failure is seen once its interpreter exits (over 2 s on a busy 2-core machine): a
    replica that waited less said every shared error a second time."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert cli_main.main(["recipe.yaml"]) == 2
    assert replica_waits == [cli_main.REPLICA_WAIT_S] and cli_main.REPLICA_WAIT_S >= 5
    assert capsys.readouterr().err == REPLICA_LINE + " (met by process 1 alone)\n"


def test_a_replica_run_outside_the_main_thread_says_its_error(replica_waits, monkeypatch, capsys):
    """Signal handlers are the main thread's: a command line run in another thread (a notebook's
    worker, a test harness) cannot wait for a stop signal, and says its error."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    codes = []
    worker = threading.Thread(target=lambda: codes.append(cli_main.main(["recipe.yaml"])))
    worker.start()
    worker.join()
    assert codes == [2]
    assert capsys.readouterr().err == REPLICA_LINE + " (met by process 1 alone)\n"


def test_save_strategy_best_without_a_metric_is_one_line_before_anything_loads(tmp_path, capsys, no_loading):
    """transformers refused it as the trainer was built: a traceback, after the data and the models
    had loaded (it fills metric_for_best_model in for load_best_model_at_end alone)."""
    assert run(tmp_path, base(tmp_path, save_strategy="best", eval_strategy="steps", eval_steps=1)) == 2
    assert error_of(capsys) == ("error: save_strategy: best saves a checkpoint when an evaluation scores a new best, "
                                "and no metric_for_best_model says by what: set metric_for_best_model (accuracy, loss...)")


def test_max_eval_samples_under_a_relations_rows_is_refused_before_anything_loads(tmp_path, capsys, no_loading):
    """The cap is in the recipe, and the refusal came after both models had loaded (and the set-aside)."""
    recipe = base(tmp_path, max_eval_samples=2, teacher_model_name_or_path="config:resnet",
                  teacher_config_overrides=TINY_RESNET, losses=[{"name": "ce"}, {"name": "rcka"}])
    assert run(tmp_path, recipe) == 2
    assert error_of(capsys).startswith("error: the evaluation set has 2 image(s), and rcka relates the samples of a batch")


def test_max_steps_trains_whatever_num_train_epochs_says():
    """max_steps > 0 overrides num_train_epochs (Trainer's rule): num_train_epochs 0 with max_steps
    5 trains 5 steps and must not be refused as training nothing."""
    from types import SimpleNamespace

    from hf_rcka.cli.preflight import check_work
    from hf_rcka.errors import RecipeError

    model_args = SimpleNamespace(model_name_or_path="config:resnet", smoke_test=False, student_from_scratch=True)
    check_work(model_args, SimpleNamespace(do_train=True, max_steps=5, num_train_epochs=0))
    with pytest.raises(RecipeError, match="would train nothing"):
        check_work(model_args, SimpleNamespace(do_train=True, max_steps=-1, num_train_epochs=0))


def test_a_configuration_of_the_builtin_digits_is_refused(tmp_path, capsys):
    """It was ignored, and the card named the data 'scikit-learn handwritten digits, configuration foo'."""
    assert run(tmp_path, base(tmp_path, dataset_config_name="foo")) == 2
    assert error_of(capsys) == ("error: dataset_config_name 'foo': builtin:digits has no configurations; "
                                "remove dataset_config_name")


def test_a_misspelt_builtin_data_set_is_named(tmp_path, capsys):
    """datasets said "Couldn't find any data file at .../builtin:digit"."""
    assert run(tmp_path, base(tmp_path, dataset_name="builtin:digit")) == 2
    assert error_of(capsys) == "error: dataset_name 'builtin:digit': the one built-in data set is builtin:digits"


@pytest.mark.parametrize("changes", [{"teacher_label_mapping": "by_index"}, {"losses": ["ce", "feature_cka"]}])
def test_the_teacher_config_check_follows_the_pairing_and_the_losses(tmp_path, capsys, monkeypatch, changes):
    """The check from the teacher's config follows teacher_label_mapping, and leaves out a teacher whose features alone
    are distilled (its classes pair with any)."""
    teacher = save_teacher(tmp_path / "teacher", ["ant", "bee", "cow"])
    train = image_folder(tmp_path / "train", ["cat", "dog", "eel"])

    class Loading(Exception):
        pass

    def loading(*args, **kwargs):
        raise Loading  # the config check let it through

    monkeypatch.setattr(cli, "load_image_classifier", loading)
    with pytest.raises(Loading):
        run(tmp_path, base(tmp_path, dataset_name=None, train_dir=train, teacher_model_name_or_path=teacher,
                           train_val_split=0.25, **changes))


def test_a_hub_dataset_of_several_configurations_with_one_named_goes_on_to_its_download(tmp_path, monkeypatch):
    """The early read of the card's class names takes the recipe's dataset_config_name, as loading does."""
    import datasets

    fake_hub_dataset(monkeypatch, _not_downloaded, _pets_card(["cat", "dog", "eel"]))
    card = datasets.load_dataset_builder

    def builder(name, config=None, **kwargs):
        if config is None:
            raise ValueError("Config name is missing.\nPlease pick one among the available configs: ['full', 'small']"
                             "\nExample of usage:\n\t`load_dataset('someone/pets', 'full')`")
        return card(name, config, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset_builder", builder)
    with pytest.raises(_Downloaded):
        run(tmp_path, base(tmp_path, dataset_name="someone/pets", dataset_config_name="small"))


def test_a_hub_dataset_whose_card_cannot_be_read_is_one_line(tmp_path, capsys, monkeypatch):
    """datasets' own error reading the card (a dataset that is not there, the Hub unreachable) is the
    one-line DataError loading gives, not a traceback."""
    import datasets

    def builder(name, config=None, **kwargs):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset_builder", builder)
    assert run(tmp_path, base(tmp_path, dataset_name="someone/pets")) == 2
    assert error_of(capsys).startswith("error: dataset_name 'someone/pets': cannot load the dataset (FileNotFoundError")


def test_the_early_class_check_reads_the_recipes_label_column(tmp_path, monkeypatch):
    """A card with two label columns (CIFAR-100's coarse and fine): the teacher is paired with the one
    label_column_name names."""
    import datasets

    teacher = save_teacher(tmp_path / "teacher", ["cat", "dog", "eel"])
    card = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["ant", "bee", "cow"]),
                              "fine": datasets.ClassLabel(names=["cat", "dog", "eel"])})
    fake_hub_dataset(monkeypatch, _not_downloaded, card)
    with pytest.raises(_Downloaded):
        run(tmp_path, base(tmp_path, dataset_name="someone/pets", label_column_name="fine",
                           teacher_model_name_or_path=teacher))


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, "PNG")


def test_image_folder_edges_read_as_datasets_reads_them(tmp_path):
    """Each went untested: a split folder named ``Train`` is a split folder too; a class whose images are ``.PNG`` is a class;
    a sub-folder whose only images are in a ``__MACOSX`` below it (which datasets skips) is no nesting."""
    from hf_rcka.data.image_folders import class_folders
    from hf_rcka.errors import LabelError

    for name in ("cat", "dog"):
        _png(tmp_path / "splits" / "Train" / name / "1.png")
    with pytest.raises(LabelError, match=r"holds split folders \('Train' among them\)"):
        class_folders(str(tmp_path / "splits"))
    _png(tmp_path / "upper" / "cat" / "1.PNG")
    _png(tmp_path / "upper" / "dog" / "1.png")
    _png(tmp_path / "upper" / "dog" / "extra" / "__MACOSX" / "1.png")  # datasets reads no image under extra
    assert class_folders(str(tmp_path / "upper")) == ["cat", "dog"]


def test_a_special_named_folder_of_unread_images_is_refused_not_skipped(tmp_path):
    """``__birds/`` holding only ``.avif`` images: skipped as if it were ``__pycache__``, its images
    (a class of them) were left out without a word."""
    from hf_rcka.data.image_folders import class_folders
    from hf_rcka.errors import LabelError

    for name in ("cat", "dog"):
        _png(tmp_path / "train" / name / "1.png")
    (tmp_path / "train" / "__birds").mkdir()
    (tmp_path / "train" / "__birds" / "0.avif").write_bytes(b"")
    with pytest.raises(LabelError, match=r"__birds.*starts with '__'"):
        class_folders(str(tmp_path / "train"))


def test_hidden_files_and_empty_hidden_folders_beside_the_classes_are_neither_refused_nor_warned_about(tmp_path, caplog):
    """datasets leaves out hidden files and folders itself: a macOS ``._0.avif`` beside the class
    folders would be refused as an image datasets does not read, and a ``.cache`` folder holding no
    image warned about as a hidden class folder, were the leading '.' not looked at."""
    from hf_rcka.data.image_folders import class_folders

    for name in ("cat", "dog"):
        _png(tmp_path / "train" / name / "1.png")
    (tmp_path / "train" / "._0.avif").write_bytes(b"")
    (tmp_path / "train" / ".cache").mkdir()
    (tmp_path / "train" / ".cache" / "notes.txt").write_text("")
    with caplog.at_level("WARNING", logger="hf_rcka"):
        assert class_folders(str(tmp_path / "train")) == ["cat", "dog"]
    assert "hidden folders" not in caplog.text


def test_an_image_folder_s_start_says_what_it_counts_and_lists_it_once_without_datasets_listing(tmp_path, caplog,
                                                                                                monkeypatch):
    """An ImageNet-size train_dir started silently for minutes: datasets' imagefolder resolved and
    timed every file through fsspec, on every run and every process. The check says how many images
    it found (opening none), and the splits are built from one listing, without datasets' listing."""
    import datasets as hf_datasets

    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.datasets import load_raw_datasets
    from hf_rcka.data.image_folders import check_data_dirs

    for split, counts in (("train", {"cat": 3, "dog": 2}), ("val", {"cat": 1, "dog": 1})):
        for name, count in counts.items():
            for i in range(count):
                _png(tmp_path / split / name / f"{i}.png")
    (tmp_path / "train" / "dog" / ".hidden.png").write_bytes(b"")  # datasets leaves it out: not counted
    data = DataArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("an image was opened"))
    with caplog.at_level("INFO", logger="hf_rcka"):
        check_data_dirs(data)
    monkeypatch.undo()
    assert "data: train_dir 5 images in 2 class folders, validation_dir 2 in 2 (checked: no image is read)" in caplog.text
    listings = []
    monkeypatch.setattr(hf_datasets.data_files.DataFilesDict, "from_patterns",
                        classmethod(lambda *a, **k: listings.append(a) or pytest.fail("datasets listed the files")))
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_rcka"):
        raw = load_raw_datasets(data)
    assert (len(raw["train"]), len(raw["validation"])) == (5, 2) and not listings
    assert "data: listed 5 train images, 2 validation images" in caplog.text
    assert raw["train"].info.builder_name == "imagefolder"  # the model card's model-index type


@pytest.mark.parametrize("mapped, checked", [(False, False), (True, False), (False, True)])
def test_image_folder_splits_are_the_rows_datasets_imagefolder_reads(tmp_path, monkeypatch, mapped, checked):
    """The splits built from hf_rcka's listing have datasets' imagefolder rows, in its order, with its
    features: upper-case and mixed-case extensions, every format it lists, hidden files, a file named
    like a special folder, a linked file, glob characters, spaces and accents in names, a class the
    validation folder lacks, and non-image files. ``mapped``: as a large folder's splits are read,
    memory-mapped from their file in datasets' cache; ``checked``: from the listing the run's check
    of the folders made (a run's way), not a listing of their own."""
    import glob

    import datasets as hf_datasets

    from hf_rcka.arguments import DataArguments
    from hf_rcka.data import image_folders, mapped_splits
    from hf_rcka.data.datasets import image_folder_splits
    from hf_rcka.data.image_folders import check_data_dirs

    monkeypatch.setattr(hf_datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    if mapped:
        monkeypatch.setattr(mapped_splits, "MAPPED_FROM_BYTES", 1)

    train, val = tmp_path / "train", tmp_path / "val"
    for name in ("cat", "dog", "émeu", "b c", "a[1]"):
        _png(train / name / "1.png")
        _png(val / name / "1.png") if name != "émeu" else None
    for path, kind in (("cat/2.PNG", "PNG"), ("cat/3.jpeg", "JPEG"), ("cat/4.Jpg", "JPEG"), ("dog/5.webp", "WEBP"),
                       ("dog/.hidden.png", "PNG"), ("dog/__special.png", "PNG"), ("dog/x.tif", "TIFF"),
                       ("dog/y.bmp", "BMP"), ("cat/b*.png", "PNG"), ("cat/c d.png", "PNG"), ("cat/ü.png", "PNG")):
        (train / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2)).save(train / path, kind)
    (train / "dog" / "notes.txt").write_text("x")
    _png(tmp_path / "outside" / "z.png")
    (train / "cat" / "link.png").symlink_to(tmp_path / "outside" / "z.png")
    folders = DataArguments(train_dir=str(train), validation_dir=str(val))
    if checked:
        check_data_dirs(folders)
        monkeypatch.setattr(image_folders, "_scan_image_folder", lambda *a, **k: pytest.fail("listed again"))
    ours = image_folder_splits(folders)  # (checked: with no listing of its own)
    theirs = hf_datasets.load_dataset("imagefolder", drop_labels=False, data_files={
        split: os.path.join(glob.escape(str(folder)), "**") for split, folder in (("train", train), ("validation", val))})

    def rows(split):
        return [(row["image"]["path"], row["label"]) for row in split.cast_column("image", hf_datasets.Image(decode=False))]

    for split in ("train", "validation"):
        assert ours[split].features == theirs[split].features
        assert rows(ours[split]) == rows(theirs[split])
        assert bool(ours[split].cache_files) == mapped
    assert len(ours["train"]) == 16  # 5 classes, 11 more files less the hidden one, the link


def test_a_folder_is_listed_again_when_checked_again_or_loaded_twice(tmp_path):
    """The load takes the listing the check made, once: an image added after one check is in the
    splits after the next check, and a second load lists the folder itself (a listing kept from an
    earlier check, or handed out already, would miss the image)."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.image_folders import check_data_dirs, image_files

    for name in ("cat", "dog"):
        _png(tmp_path / "train" / name / "1.png")
    folders = DataArguments(train_dir=str(tmp_path / "train"))
    check_data_dirs(folders)
    _png(tmp_path / "train" / "cat" / "2.png")
    check_data_dirs(folders)
    assert len(image_files(str(tmp_path / "train"))) == 3
    _png(tmp_path / "train" / "dog" / "2.png")
    assert len(image_files(str(tmp_path / "train"))) == 4


def test_relative_image_folders_are_listed_once_and_their_listing_is_not_kept(tmp_path, monkeypatch):
    """The load takes the check's listing by the folder's absolute path: a recipe's relative
    ``train_dir: train`` kept under its relative name was listed a second time by the load (an
    ImageNet's 1.28M entries again), and the unused listing stayed in memory for the process."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.data import image_folders
    from hf_rcka.data.datasets import image_folder_splits
    from hf_rcka.data.image_folders import check_data_dirs

    for split, count in (("train", 2), ("val", 1)):
        for name in ("cat", "dog"):
            for i in range(count):
                _png(tmp_path / split / name / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(image_folders, "_listed", {})
    folders = DataArguments(train_dir="train", validation_dir="val")
    check_data_dirs(folders)
    monkeypatch.setattr(image_folders, "_scan_image_folder", lambda *a, **k: pytest.fail("listed again"))
    splits = image_folder_splits(folders)
    assert (len(splits["train"]), len(splits["validation"])) == (4, 2)
    assert image_folders._listed == {}


def test_a_listing_kept_by_a_check_is_dropped_when_the_next_check_of_the_folder_fails(tmp_path):
    """A check that passed keeps its listing for the load; a later check of the same folder that fails
    must drop it: kept, the next load of the folder took the earlier listing (a class folder since
    removed, trained on under its old name) instead of listing the folder as it is now."""
    import shutil

    from hf_rcka.data.image_folders import image_files, image_folder_classes

    train = tmp_path / "train"
    for name in ("cat", "dog"):
        _png(train / name / "1.png")
    assert image_folder_classes("train_dir", str(train)) == ["cat", "dog"]  # its listing kept
    shutil.rmtree(train / "dog")
    _png(train / "cat" / "2.png")
    with pytest.raises(DataError, match="holds one class folder"):
        image_folder_classes("train_dir", str(train))
    assert image_files(str(train)) == [(str(train / "cat" / "1.png"), "cat"), (str(train / "cat" / "2.png"), "cat")]


def test_splits_with_other_columns_say_that_every_split_needs_the_same_columns(tmp_path):
    """datasets' CastError names two column lists; what to change was not said."""
    from hf_rcka.arguments import DataArguments

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text('{"image": "a.png", "label": 1}\n')
    (tmp_path / "ds" / "test.jsonl").write_text('{"img": "a.png", "label": 1}\n')
    with pytest.raises(DataError) as caught:
        run_inputs.load_data(DataArguments(dataset_name=str(tmp_path / "ds")))
    assert "(CastError: " in str(caught.value), caught.value
    assert str(caught.value).endswith(". Every split must have the same columns and types"), caught.value


def test_a_named_teacher_paired_by_index_takes_the_runs_class_names(tmp_path):
    """``teacher_label_mapping: by_index`` pairs a teacher's classes with the run's by position: the
    run's own teacher (never saved) took the run's names only when its own were generic, so a named
    one kept 'x', 'y', and the trainer's check said the pairing a second time."""
    from transformers import ViTConfig, ViTForImageClassification

    from hf_rcka.arguments import DistillationTrainingArguments
    from hf_rcka.models.labels import BY_INDEX

    config = ViTConfig(**TINY_VIT, num_labels=2, id2label={0: "x", 1: "y"},
                       label2id={"x": 0, "y": 1})
    teacher = ViTForImageClassification(config)
    args = DistillationTrainingArguments(output_dir=str(tmp_path), losses=["ce", "kd"], report_to="none")
    run_inputs.align_teacher(teacher, args, ["cat", "dog"], BY_INDEX)
    assert teacher.config.id2label == {0: "cat", 1: "dog"} and teacher.config.label2id == {"cat": 0, "dog": 1}


def test_a_user_error_while_a_model_loads_keeps_its_own_kind_and_words():
    """A loading step that already raises a user error (a recipe's wrong value, found as the model
    loads) is not wrapped again as a ModelError naming the model's key: it kept its kind (another
    exit code) and its message, which began with its own key."""
    with pytest.raises(RecipeError) as caught:
        with run_inputs.model_error("teacher_model_name_or_path"):
            raise RecipeError("teacher_config_overrides: hidden_size must be an integer")
    assert str(caught.value) == "teacher_config_overrides: hidden_size must be an integer"


def _folder_with_parts_datasets_skips(train, images_per_class):
    """Class folders cat and dog, beside the two parts a listing warns of: a hidden folder of images
    (``.cache``) and a sub-folder without images (``misc``)."""
    for name in ("cat", "dog", ".cache"):
        for i in range(images_per_class):
            _png(train / name / f"{i}.png")
    (train / "misc").mkdir()
    (train / "misc" / "README").write_text("x")


def test_an_image_folders_warnings_are_said_once_though_it_is_scanned_again(tmp_path, caplog):
    """The listing that builds the splits scans the folder check_data_dirs checked: its warnings (a
    sub-folder without images, a hidden folder of images) were said twice a process (the CKA report's
    class check and its loading too)."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.datasets import load_raw_datasets
    from hf_rcka.data.image_folders import check_data_dirs

    _folder_with_parts_datasets_skips(tmp_path / "train", 4)
    data = DataArguments(train_dir=str(tmp_path / "train"))
    with caplog.at_level("WARNING", logger="hf_rcka"):
        check_data_dirs(data)
        raw = load_raw_datasets(data)
    assert len(raw["train"]) + len(raw["validation"]) == 8
    assert caplog.text.count("sub-folders without images are not classes: ['misc']") == 1
    assert caplog.text.count("hidden folders (a leading '.') are skipped") == 1


def test_an_image_folder_listed_again_after_its_check_is_not_warned_about_again(tmp_path, caplog):
    """A second load of a checked folder (the check's listing already taken) lists it again: that
    listing said the check's warnings (a sub-folder without images, a hidden folder of images) a
    second time, as if of another folder."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.image_folders import check_data_dirs, image_files

    _folder_with_parts_datasets_skips(tmp_path / "train", 1)
    with caplog.at_level("WARNING", logger="hf_rcka"):
        check_data_dirs(DataArguments(train_dir=str(tmp_path / "train")))
        assert len(image_files(str(tmp_path / "train"))) == 2  # the check's listing
        assert len(image_files(str(tmp_path / "train"))) == 2  # a listing of its own
    assert caplog.text.count("sub-folders without images are not classes: ['misc']") == 1
    assert caplog.text.count("hidden folders (a leading '.') are skipped") == 1


def test_class_folders_still_warns_of_what_datasets_leaves_out(tmp_path, caplog):
    """``class_folders`` (the layout alone, no listing kept) says what datasets would leave out: a
    sub-folder without images, a hidden folder of images; only a listing after a check is silent."""
    from hf_rcka.data.image_folders import class_folders

    _folder_with_parts_datasets_skips(tmp_path / "train", 1)
    with caplog.at_level("WARNING", logger="hf_rcka"):
        assert class_folders(str(tmp_path / "train")) == ["cat", "dog"]
    assert "sub-folders without images are not classes: ['misc']" in caplog.text
    assert "hidden folders (a leading '.') are skipped" in caplog.text


def test_the_cka_report_s_class_check_s_listing_is_the_one_its_load_takes(tmp_path, monkeypatch):
    """``image_folder_classes`` (the CKA report's check of --validation_dir) lists the folder as it
    checks it; without that listing kept, the load listed the folder a second time."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.data import image_folders
    from hf_rcka.data.datasets import image_folder_splits
    from hf_rcka.data.image_folders import image_folder_classes

    for name in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / "val" / name / f"{i}.png")
    assert image_folder_classes("--validation_dir", str(tmp_path / "val")) == ["cat", "dog"]
    monkeypatch.setattr(image_folders, "_scan_image_folder", lambda *a, **k: pytest.fail("listed again"))
    assert len(image_folder_splits(DataArguments(train_dir=str(tmp_path / "val")))["train"]) == 6


def test_an_image_whose_name_is_not_utf8_is_named_before_loading(tmp_path):
    """A Latin-1 file name (b'caf\\xe9.png', from an old archive) failed the load with Arrow's
    "surrogates not allowed", naming no file (datasets' imagefolder failed on it too)."""
    import os

    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.image_folders import check_data_dirs

    for name in ("cat", "dog"):
        _png(tmp_path / "train" / name / "1.png")
    _png(tmp_path / "train" / "cat" / "été.png")  # non-ASCII UTF-8: read as it is
    check_data_dirs(DataArguments(train_dir=str(tmp_path / "train")))
    with open(os.path.join(os.fsencode(tmp_path / "train" / "cat"), b"caf\xe9.png"), "wb") as handle:
        handle.write((tmp_path / "train" / "cat" / "1.png").read_bytes())
    with pytest.raises(DataError, match=r"caf\\udce9\.png'?: its name is not UTF-8 text"):
        check_data_dirs(DataArguments(train_dir=str(tmp_path / "train")))
    os.remove(os.path.join(os.fsencode(tmp_path / "train" / "cat"), b"caf\xe9.png"))
    os.rename(tmp_path / "train" / "dog", os.path.join(os.fsencode(tmp_path / "train"), b"d\xf6g"))  # a class's name
    with pytest.raises(DataError, match=r"d\\udcf6g'?: its name is not UTF-8 text"):
        check_data_dirs(DataArguments(train_dir=str(tmp_path / "train")))


# P5, P8, P9 (cli/probes.py _check_patch_grid): only a patch embedding (kernel = stride) is checked, and the
# message counts the rows and columns it drops, and a size to use, each along its own side
def test_the_patch_grid_check_reads_each_side_and_leaves_a_strided_stem_alone():
    """A ResNet's stem (7x7 kernel, stride 2) drops nothing of a 33 px image and was refused as 2x2
    patches; a 18x21 image in 4 px patches drops 2 rows and 1 column, and 16x20 is made of patches."""
    from transformers import ViTConfig, ViTForImageClassification

    from hf_rcka.cli.probes import _check_patch_grid
    from hf_rcka.errors import ModelError

    _check_patch_grid(_two_stage_resnet(), 33, 33, "image_size")
    vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=8, num_hidden_layers=1,
                                              num_attention_heads=1, intermediate_size=8, num_labels=2))
    with pytest.raises(ModelError, match=r"18x21 inputs are not whole 4x4 patches, so the student's patch "
                                         r"embedding would ignore the last 2 rows and 1 columns .*\(e.g. 16x20\)"):
        _check_patch_grid(vit, 18, 21, "image_size")


# P7 (cli/probes.py probe_student): the probe's image is height x width, as the processor's size says
def test_the_probe_feeds_a_student_of_a_non_square_size_its_own_shape():
    """A student built for 16x24 (height x width) inputs was probed with a 24x16 image and refused as
    unable to take its own size."""
    from transformers import ViTConfig, ViTForImageClassification

    from hf_rcka.cli.probes import probe_student

    vit = ViTForImageClassification(ViTConfig(image_size=[16, 24], patch_size=4, hidden_size=8, num_hidden_layers=1,
                                              num_attention_heads=1, intermediate_size=8, num_labels=2))
    probe_student(vit, SimpleNamespace(size=(16, 24), channels=3), 16)


# P6 (cli/probes.py probe_student): every channel count but 3 is refused, fewer ones too
def test_a_one_channel_student_is_refused_by_the_probe():
    """A student built for grayscale images passed the probe (one blank 1-channel image runs), and the
    first training step failed on the RGB images the data is decoded to."""
    from hf_rcka.cli.probes import probe_student
    from hf_rcka.errors import ModelError

    with pytest.raises(ModelError, match="reads 1-channel images"):
        probe_student(_two_stage_resnet(num_channels=1), SimpleNamespace(size=(16, 16), channels=1), 16)


# P4 (cli/probes.py probe_student): an IndexError or KeyError of an architecture built inconsistent is one line
@pytest.mark.parametrize("error", [IndexError("list index out of range"), KeyError("stage4")])
def test_a_student_whose_forward_raises_an_index_or_key_error_is_one_line(error):
    """Only AttributeError and TypeError were said as an architecture that does not run: an IndexError
    (a list of stage widths shorter than its stages) left the probe as a traceback."""
    from hf_rcka.cli.probes import probe_student
    from hf_rcka.errors import ModelError

    class Broken(torch.nn.Module):
        def forward(self, pixel_values):
            raise error

    with pytest.raises(ModelError, match=rf"the student as built fails on a forward pass \({type(error).__name__}"):
        probe_student(Broken(), SimpleNamespace(size=(16, 16), channels=3), 16)


def test_what_a_run_did_before_its_error_or_stop_is_said_with_it(monkeypatch, capsys):
    """An error (or a stop) met after the output folder set the run it replaces aside carries where
    that run is now as a note: the command line printed the error without it, and the user was left
    to look for the earlier run."""
    import signal

    from hf_rcka.cli import main as cli
    from hf_rcka.trainer.interrupt import Interrupted

    def raising(error):
        def run(argv, stop):
            error.add_note("the run this one was to replace is back in out")
            raise error
        return run

    monkeypatch.setattr(cli, "_run_recipe", raising(DataError("train_dir 'nowhere' does not exist")))
    assert cli.main(["recipe.yaml"]) == 2
    assert capsys.readouterr().err == \
        "error: train_dir 'nowhere' does not exist (the run this one was to replace is back in out)\n"
    monkeypatch.setattr(cli, "_run_recipe", raising(Interrupted(signal.SIGTERM)))
    assert cli.main(["recipe.yaml"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.rstrip("\n").endswith(" (the run this one was to replace is back in out)")


def test_a_stop_is_said_by_the_main_process_alone(monkeypatch, capsys):
    """Every process of a launch stops with the same checkpoint: each printed the resume message,
    and a 4-process run ended with the same lines four times over."""
    import signal

    from hf_rcka.cli import main as cli
    from hf_rcka.trainer.resume_hint import Stopped

    def stopping(argv, stop):
        raise Stopped(signal.SIGTERM, 4, "out/checkpoint-4", ["r.yaml"], main_process)

    monkeypatch.setattr(cli, "_run_recipe", stopping)
    for main_process in (False, True):
        assert cli.main(["recipe.yaml"]) == 128 + signal.SIGTERM
        err = capsys.readouterr().err
        assert (err == "") != main_process and err.count("interrupted by SIGTERM") == int(main_process)


def test_progress_bars_an_error_or_a_stop_left_open_are_closed_before_its_message(monkeypatch, capsys):
    """A user error (or a stop) raised while a progress bar ran (loading a dataset, a training step)
    left the bar open: its last refresh, drawn as the bar was collected, came after the error line,
    which was then not the last line the user (or ``tail -n 1``) saw."""
    import signal

    from tqdm import tqdm

    from hf_rcka.cli import main as cli
    from hf_rcka.trainer.resume_hint import Stopped

    def failing(argv, stop, error):
        bar = tqdm(total=10, desc="Map")
        bar.update(3)
        failing.bars.append(bar)
        raise error

    failing.bars = []
    for error, code in ((DataError("train_dir 'nowhere' does not exist"), 2),
                        (Stopped(signal.SIGTERM, 4, "out/checkpoint-4", ["r.yaml"]), 128 + signal.SIGTERM)):
        monkeypatch.setattr(cli, "_run_recipe", lambda argv, stop: failing(argv, stop, error))
        assert cli.main(["recipe.yaml"]) == code
        assert failing.bars[-1].disable, "the bar was closed"
    capsys.readouterr()


def test_hf_rcka_debug_set_to_0_or_false_is_off(monkeypatch):
    """HF_RCKA_DEBUG=0 (or false), as a job script turns it off, turned tracebacks on like 1."""
    from hf_rcka.cli.main import _pop_debug_flag

    for value, on in (("0", False), ("false", False), ("", False), ("1", True), ("true", True)):
        monkeypatch.setenv("HF_RCKA_DEBUG", value)
        assert _pop_debug_flag(["recipe.yaml"]) is on, value


def test_the_command_line_gives_the_signal_handlers_back_however_it_ends(monkeypatch, capsys):
    """main() installs its stop handler for SIGINT and SIGTERM: a script that calls it (a sweep over
    recipes) kept it after main returned, and a later Ctrl-C or SIGTERM raised the run's
    Interrupted in code that no run was in, instead of KeyboardInterrupt or the default exit."""
    import signal

    from hf_rcka.cli import main as cli

    def failing(argv, stop):
        raise DataError("train_dir 'nowhere' does not exist")

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for run in (lambda argv, stop: None, failing):
        monkeypatch.setattr(cli, "_run_recipe", run)
        cli.main(["recipe.yaml"])
        assert {signum: signal.getsignal(signum) for signum in before} == before
    capsys.readouterr()


# J5 (cli/job.py _checked_trainer): a resumed run keeps the ledger of the images skipped before it
def test_a_resumed_run_keeps_the_images_skipped_before_the_resume_in_its_ledger(tmp_path):
    """The ledger counts the run's unreadable images against max_bad_images and lists them at its end:
    deleted at the resume, the images skipped before it were no longer listed nor counted."""
    first = base(tmp_path, save_strategy="steps", save_steps=1, max_steps=1)
    assert run(tmp_path, first) == 0
    ledger = tmp_path / "out" / "_skipped_images.tsv"
    ledger.write_text("/data/train/cat/broken.jpg\timage file is truncated\n")  # skipped in the first part
    assert run(tmp_path, {**first, "max_steps": 2}, "--resume_from_checkpoint", "true") == 0
    assert ledger.read_text().splitlines() == ["/data/train/cat/broken.jpg\timage file is truncated"]


# J17 (cli/job.py _evaluate_alone): a refused evaluation-only run leaves no record folder behind
def test_a_refused_evaluation_only_run_leaves_the_evaluated_folder_as_it_was(tmp_path, capsys):
    """Its _eval-<time> record folder is made before the models and data are checked: a refused
    evaluation left it empty in the trained run's folder, one more at every retry."""
    distil = base(tmp_path, teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET,
                  max_eval_samples=2, max_steps=1, do_eval=False, losses=[{"name": "ce"}, {"name": "feature_cka"}])
    assert run(tmp_path, distil) == 0
    before = sorted(path.name for path in (tmp_path / "out").iterdir())
    capsys.readouterr()
    evaluation = {**distil, "do_train": False, "do_eval": True, "model_name_or_path": str(tmp_path / "out"),
                  "student_from_scratch": False}
    assert run(tmp_path, evaluation) == 2
    assert "the evaluation set has 2 image(s), and feature_cka relates the samples of a batch" in error_of(capsys)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == before


# T4 (cli/teacher_data.py _same_source): a teacher of another train_dir, or of a Hub dataset, trained on other images
def test_a_teacher_of_another_image_folder_is_not_refused_for_its_split(tmp_path):
    """A teacher trained on a train_dir that holds out another carve than the student's: refused as if
    it had trained on the student's validation images only when both read the same folder (or the same
    dataset), not beside a student of another folder or of a Hub dataset."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.teacher_data import check_teacher_data
    from hf_rcka.errors import DataError

    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "distill_config.yaml").write_text(f"train_dir: {tmp_path / 'cats'}\nsplit_seed: 7\n")
    check_teacher_data(str(teacher), DataArguments(train_dir=str(tmp_path / "dogs")), carved=True)
    check_teacher_data(str(teacher), DataArguments(dataset_name="acme/pets"), carved=True)
    with pytest.raises(DataError, match="split_seed 7"):
        check_teacher_data(str(teacher), DataArguments(train_dir=str(tmp_path / "cats")), carved=True)


# T1, T8 (cli/teacher_data.py check_teacher_data): a student's validation_dir that is the teacher's train_dir
def test_a_student_validation_dir_the_teacher_trained_on_is_refused_however_it_is_spelled(tmp_path):
    """The student evaluated on its own folder, the one the teacher trained on (recorded with a
    trailing slash): both accuracies are inflated, so the run is refused; a validation_dir the
    teacher did not train on is not."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.cli.teacher_data import check_teacher_data
    from hf_rcka.errors import DataError

    for name in ("train", "val", "other"):
        (tmp_path / name).mkdir()
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "distill_config.yaml").write_text(f"train_dir: {tmp_path / 'val'}/\n")
    student = DataArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    with pytest.raises(DataError, match=r"was trained on train_dir .*the student's validation_dir"):
        check_teacher_data(str(teacher), student, carved=False)
    check_teacher_data(str(teacher), DataArguments(train_dir=str(tmp_path / "train"),
                                                   validation_dir=str(tmp_path / "other")), carved=False)


def test_a_layer_index_on_a_model_without_blocks_names_the_fix(tmp_path, capsys, no_loading):
    """A ViT of num_hidden_layers 0 has no hidden state to pair: an explicit pair was refused with
    "valid indices are 0..-1"; the line now says why and what to do, as feature_pairs: auto does."""
    recipe = base(tmp_path, teacher_model_name_or_path="config:resnet", teacher_config_overrides=TINY_RESNET,
                  losses=[{"name": "ce"}, {"name": "feature_cka"}],
                  feature_pairs=[{"student_layer": -1, "teacher_layer": -1}],
                  model_name_or_path="config:vit", student_from_scratch=True,
                  student_config_overrides={**TINY_VIT, "num_hidden_layers": 0})
    assert run(tmp_path, recipe) == 2
    error = error_of(capsys)
    assert "0..-1" not in error
    assert error == ("error: feature_pairs[0]: student layer -1 is out of range: the student model has no hidden "
                     "states to pair (a model without blocks, e.g. student_config_overrides num_hidden_layers: 0): "
                     "give it blocks, or distil the logits only (no feature losses)")
    assert not (tmp_path / "out").exists()


def test_a_swin_window_larger_than_its_last_grid_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    """transformers' Swin shrinks a window larger than a stage's grid but not its position-bias table,
    and failed on the mismatch after the data had loaded, advising another image_size alone."""
    from hf_rcka.cli import probes

    overrides = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 7}
    recipe = base(tmp_path, model_name_or_path="config:swin", image_size=32, student_from_scratch=True,
                  student_config_overrides=overrides)
    expected = ("error: image_size 32: at 32x32 the student's last stage has a 1x1 grid, smaller than its window_size 7, "
                "which transformers' Swin attention fails on: set student_config_overrides window_size: 1, or a "
                "larger image_size")
    with monkeypatch.context() as patched:
        patched.setattr(cli, "load_image_classifier", lambda *a, **k: pytest.fail("loaded before the check"))
        patched.setattr(run_inputs, "load_raw_datasets", lambda *a, **k: pytest.fail("loaded before the check"))
        assert run(tmp_path, recipe) == 2
    assert error_of(capsys) == expected
    # a Hub Swin's config is read by no check before loading: the probe after loading says the same
    from transformers import SwinConfig, SwinForImageClassification

    student = SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, num_labels=3, **overrides))
    with pytest.raises(ModelError, match=r"^model_name_or_path: at 32x32 the student's last stage has a 1x1 grid"):
        probes.probe_student(student, SimpleNamespace(size=(32, 32), channels=3), None)
    recipe["student_config_overrides"] = {**overrides, "window_size": 1}  # the fix, followed, trains
    assert run(tmp_path, recipe) == 0


@pytest.mark.parametrize("size", [200, 216, 224])
def test_a_swin_whose_padded_last_grid_holds_its_window_is_not_refused(size):
    """transformers' Swin pads a remainder at its patch embedding and each patch merging: at 200 px
    a window-7 Swin's last grid is 7 (50, 25, 13, 7), and it runs; 200 // 32 = 6 refused it."""
    from transformers import SwinConfig, SwinForImageClassification

    from hf_rcka.models.image_sizes import window_problem

    config = SwinConfig(image_size=size, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                        num_labels=3)
    SwinForImageClassification(config).eval()(pixel_values=torch.zeros(1, 3, size, size))  # it takes the size
    assert window_problem(config.to_dict(), size, size) is None
    assert window_problem(config.to_dict(), 192, 192).startswith("at 192x192 the student's last stage has a 6x6 grid")
