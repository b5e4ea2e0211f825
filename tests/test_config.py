"""Recipe parsing: every recipe parses, typos are named with suggestions, values are coerced."""

import dataclasses
import logging
import os
import re
from pathlib import Path

import pytest

from hf_rcka.cli.recipe import (
    dump_recipe,
    load_recipe,
    parse_arguments,
    parse_cli_overrides,
    parse_recipe_file,
    resolve_values,
)
from hf_rcka.errors import RecipeError

RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").glob("*.yaml"))
BASE = {"model_name_or_path": "config:vit", "output_dir": "unused", "dataset_name": "builtin:digits"}


def test_there_are_recipes_including_the_headline():
    assert "deit_from_regnet.yaml" in {p.name for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(path):
    # GPU recipes ask for bf16; TrainingArguments only accepts that on this CPU machine with use_cpu.
    model_args, data_args, args = parse_recipe_file(path, ["--use_cpu", "true"])
    assert model_args.model_name_or_path
    assert args.output_dir
    assert args.losses is None or all("name" in spec for spec in args.losses)


def test_numbers_written_like_1e_minus_4_are_floats():
    _, _, args = parse_arguments({**BASE, "learning_rate": "1e-4", "num_train_epochs": "2"})
    assert args.learning_rate == pytest.approx(1e-4)
    assert args.num_train_epochs == 2.0


def test_yaml_no_means_the_string_no_for_text_fields(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: config:vit\noutput_dir: out\ndataset_name: builtin:digits\neval_strategy: no\n")
    _, _, args = parse_recipe_file(recipe, ["--save_strategy", "no", "--do_train", "no"])
    assert args.eval_strategy == "no" and args.save_strategy == "no" and args.do_train is False


def test_loss_options_are_coerced_and_weights_default_to_one():
    _, _, args = parse_arguments({**BASE, "losses": ["ce", {"name": "rcka", "intra_weight": "15"}]})
    assert args.losses == [
        {"name": "ce", "weight": 1.0},
        {"name": "rcka", "weight": 1.0, "intra_weight": 15.0},
    ]


def test_distillation_defaults_keep_columns_and_name_labels():
    _, _, args = parse_arguments(BASE)
    assert args.remove_unused_columns is False
    assert args.label_names == ["labels"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"learnin_rate": 1}, r"unknown recipe key 'learnin_rate'.*'learning_rate'"),
        ({"losses": [{"name": "rcak"}]}, r"unknown loss 'rcak'.*'rcka'.*a loss of your own is registered when its module is imported"),
        # the papers' names (README and the recipes say EKT, PCKA): 'ekt' listed every loss, 'pcka' suggested 'rcka'
        ({"losses": [{"name": "ekt"}]}, r"unknown loss 'ekt': that is the paper's name for the loss 'kernel_transfer'"),
        ({"losses": [{"name": "PCKA"}]}, r"unknown loss 'PCKA': that is the paper's name for the loss 'patch_cka'"),
        ({"losses": [{"name": "rcka", "intra": 1}]}, r"no option 'intra'.*'intra_weight'"),
        ({"losses": [{"name": "kd", "temperature": -1}]}, r"temperature must be > 0"),
        ({"losses": [{"name": "ce", "weight": -2}]}, r"weight must be >= 0"),
        ({"losses": [{"name": "ce"}, {"name": "ce"}]}, r"listed twice"),
        # the names the word begins first: difflib suggested 'grokadamw', 'adamw_8bit' and 'adalomo'
        ({"optim": "adamw"}, r"optim: 'adamw' is not valid: did you mean 'adamw_torch' or"),
        ({"learning_rate": "abc"}, r"learning_rate must be a number"),
        ({"num_train_epochs": [1]}, r"num_train_epochs must be a number"),
        ({"do_train": "maybe"}, r"do_train must be true or false"),
        ({"feature_pairs": [{"student_layer": 1, "teacher_layer": 2, "adapter": "patch_mach"}]},
         r"unknown adapter 'patch_mach'.*'patch_match'"),
        ({"feature_pairs": [{"student_layer": 1}]}, r"needs 'teacher_layer'"),
        ({"feature_pairs": [{"student_layer": 1, "teacher_layer": 2, "adapter": "patch_match", "gird": "min"}]},
         r"no option 'gird'.*'grid'"),
        ({"max_train_samples": 0}, r"max_train_samples must be >= 1"),
        ({"teacher_accuracy_check": "loud"}, r"teacher_accuracy_check must be"),
        ({"student_accuracy_check": "on"}, r"student_accuracy_check must be 'warn', 'error' or 'off', got 'on'"),
        # the card took it as typed, and the Hub refused the upload after the whole run
        ({"card_license": "MIT license"}, r"card_license 'MIT license' is not a Hub license id"),
        ({"card_license": "mit license"}, r"card_license 'mit license' is not a Hub license id"),  # a valid start
        ({"dataset_name": None}, r"no data"),
        # torch refused these at the first loader, a traceback after the data and models had loaded
        ({"dataloader_persistent_workers": True}, r"dataloader_persistent_workers sets up dataloader worker "
                                                  r"processes, and dataloader_num_workers is 0: set"),
        ({"dataloader_multiprocessing_context": "spawn"}, r"dataloader_multiprocessing_context sets up"),
        # the edges of each range: every one of these was accepted when its comparison was off by one
        ({"image_size": 0}, r"image_size must be >= 1, got 0"),
        ({"train_val_split": 1.0}, r"train_val_split must be in \(0, 1\), got 1.0"),
        # a decay of 1 never moves the average: model_ema_export would export the starting weights
        ({"model_ema": True, "model_ema_decay": 1.0}, r"model_ema_decay must be in \[0, 1\), got 1.0"),
        ({"model_ema_export": True}, r"model_ema_export: true needs model_ema: true"),
        ({"lr_base": 0}, r"lr_base must be > 0"),  # it would train at a rate of 0
        # TrainingArguments takes each of these: Adam with a beta of 1 never updates its averages, an
        # epsilon of 0 divides by zero on a parameter whose gradient is 0, and no accumulation step
        # divides by zero as training starts
        ({"adam_beta1": 1.0}, r"adam_beta1 must be in \[0, 1\), got 1.0"),
        ({"adam_beta2": 1.0}, r"adam_beta2 must be in \[0, 1\), got 1.0"),
        ({"adam_epsilon": 0.0}, r"adam_epsilon must be > 0, got 0.0"),
        ({"gradient_accumulation_steps": 0}, r"gradient_accumulation_steps must be >= 1, got 0"),
        ({"per_device_eval_batch_size": 0}, r"per_device_eval_batch_size must be >= 1, got 0"),
        ({"feature_pairs": [{"student_layer": True, "teacher_layer": 2}]},
         r"feature_pairs\[0\].student_layer must be an integer, got True$"),  # no flag is named so (round 37)
        ({"per_device_train_batch_size": True}, r"per_device_train_batch_size must be an integer, got True \(true is "
                                                r"no number; .*--per_device_train_batch_size 3\)$"),
        # an auto pair becomes patch_match with some losses: its options are checked before anything loads
        ({"feature_pairs": [{"student_layer": 1, "teacher_layer": 2, "grdi": "min"}]},
         r"feature_pairs\[0\] \(adapter auto takes patch_match's options\): .*no option 'grdi'.*'grid'"),
        ({"feature_pairs": [{"student_layer": 1, "teacher_layer": 2, "bias": "no"}]},
         r"adapter auto takes patch_match's options\): patch_match bias must be true or false"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(bad, message):
    with pytest.raises(RecipeError, match=message):
        parse_arguments({**BASE, **bad})


def test_missing_required_keys():
    with pytest.raises(RecipeError, match="model_name_or_path"):
        parse_arguments({"output_dir": "x", "dataset_name": "builtin:digits"})


def test_cli_flags_override_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: config:vit\noutput_dir: out\ndataset_name: builtin:digits\nlearning_rate: 1e-3\n")
    _, _, args = parse_recipe_file(recipe, ["--learning_rate", "5e-5", "--use_cpu", "--bf16", "--losses=[ce, kd]", "--seed=7"])
    assert args.learning_rate == pytest.approx(5e-5)
    assert args.bf16 is True
    assert args.seed == 7
    assert [spec["name"] for spec in args.losses] == ["ce", "kd"]


def test_flags_mean_what_was_typed():
    """--output_dir= (an empty $OUT) wrote the run to ./true; --run_name "teacher #3" recorded
    'teacher' (YAML read ' #3' as a comment); --train_sampling_strategy sequentail trained with the
    random sampler, and the record kept the typo."""
    with pytest.raises(RecipeError, match="--output_dir needs a value"):
        parse_cli_overrides(["--output_dir"])
    assert parse_cli_overrides(["--output_dir="]) == {"output_dir": ""}
    with pytest.raises(RecipeError, match="the recipe needs 'output_dir'"):
        resolve_values(BASE, parse_cli_overrides(["--output_dir="]))
    assert parse_cli_overrides(["--resume_from_checkpoint", "--bf16"]) == {"resume_from_checkpoint": True, "bf16": True}
    assert parse_cli_overrides(["--run_name", "teacher #3"]) == {"run_name": "teacher #3"}
    assert parse_cli_overrides(["--run_name", "#3 ün"]) == {"run_name": "#3 ün"}  # was recorded as null
    with pytest.raises(RecipeError, match="YAML reads ' #' and what follows as a comment"):
        parse_cli_overrides(["--seed", "#3"])
    with pytest.raises(RecipeError, match=r"--seed '3 #4': YAML reads ' #' and what follows as a comment"):
        parse_cli_overrides(["--seed", "3 #4"])
    with pytest.raises(RecipeError, match=r"train_sampling_strategy: 'sequentail' is not one of .*did you mean "
                                          r"'sequential'"):
        resolve_values(BASE, {"train_sampling_strategy": "sequentail"})


def test_a_home_folder_is_expanded_in_every_path_setting(monkeypatch, tmp_path):
    """~ reached a call that expands it for output_dir and the data folders, but not for the
    teacher, the student or baseline_dir."""
    monkeypatch.setenv("HOME", str(tmp_path))
    values = resolve_values({**BASE, "teacher_model_name_or_path": "~/teacher", "baseline_dir": "~/alone"}, {})
    assert values["teacher_model_name_or_path"] == str(tmp_path / "teacher")
    assert values["baseline_dir"] == str(tmp_path / "alone")


def test_image_folder_flags_replace_the_recipes_dataset():
    """--train_dir on a recipe naming a dataset was refused ("set either dataset_name or train_dir,
    not both") with nothing saying that --dataset_name null was the way."""
    recipe = {**BASE, "dataset_config_name": "full"}
    values = resolve_values(recipe, {"train_dir": "d/train", "validation_dir": "d/val"})
    assert "dataset_name" not in values and "dataset_config_name" not in values and values["train_dir"] == "d/train"
    back = resolve_values({**BASE, "dataset_name": None, "train_dir": "d/train", "validation_dir": "d/val"},
                          {"dataset_name": "acme/pets"})
    assert "train_dir" not in back and "validation_dir" not in back and back["dataset_name"] == "acme/pets"
    # one way only: a --validation_dir alone keeps the recipe's dataset, --dataset_config_name its folders
    assert resolve_values(recipe, {"validation_dir": "d/val"})["dataset_name"] == "builtin:digits"
    folders = {**BASE, "dataset_name": None, "train_dir": "d/train"}
    assert resolve_values(folders, {"dataset_config_name": "full"})["train_dir"] == "d/train"
    # an empty flag clears the recipe's value, as null does ("not both" named a dataset that was not there)
    values = resolve_values(recipe, parse_cli_overrides(["--dataset_name=", "--train_dir", "d/t"]))
    assert values["dataset_name"] is None, "the record holds it as unset"
    _, data, _ = parse_arguments(values)
    assert data.dataset_name is None and data.dataset_config_name is None and data.train_dir == "d/t"
    with pytest.raises(RecipeError, match="^no data: set dataset_name"):
        parse_arguments(recipe, parse_cli_overrides(["--dataset_name="]))
    for cleared in ("--dataset_name=", "--dataset_name=null"):  # and replaces nothing of the recipe's folders
        kept = resolve_values({**folders, "validation_dir": "d/val"}, parse_cli_overrides([cleared, "--train_dir", "d/t"]))
        assert kept["validation_dir"] == "d/val" and kept["train_dir"] == "d/t"
    # every data flag given empty clears the recipe's: --train_dir= beside --dataset_name was "not both"
    _, data, _ = parse_arguments(folders, parse_cli_overrides(["--train_dir=", "--dataset_name", "builtin:digits"]))
    assert data.train_dir is None and data.dataset_name == "builtin:digits"
    for key in ("dataset_config_name", "validation_dir"):
        assert resolve_values({**recipe, key: "x"}, parse_cli_overrides([f"--{key}="]))[key] is None, key


def test_cli_rejects_positional_garbage():
    with pytest.raises(RecipeError, match="--key value"):
        parse_cli_overrides(["oops"])


def test_an_omitted_loss_weight_is_the_losses_own_default():
    losses = [{"name": "ce"}, "kd", {"name": "kernel_transfer"}, {"name": "srd", "weight": 2}]
    values = resolve_values({**BASE, "teacher_model_name_or_path": "config:resnet", "losses": losses}, {})
    assert [spec["weight"] for spec in values["losses"]] == [1.0, 1.0, 0.04, 2.0]


@pytest.mark.parametrize("weight", [True, False])
def test_a_loss_weight_of_true_or_false_is_refused_not_read_as_one_or_zero(weight):
    """YAML reads ``weight: yes`` / ``weight: on`` as True: it trained as weight 1.0 (or 0, the loss
    left out) without a word, since a bool is an int to Python."""
    from hf_rcka.recipe_specs import validate_losses

    with pytest.raises(RecipeError, match=rf"^losses\[1\]\.weight must be a number, got {weight}$"):
        validate_losses([{"name": "ce"}, {"name": "kd", "weight": weight}])


def test_a_numeric_loss_option_of_true_is_refused_not_read_as_one():
    """``temperature: yes`` in YAML is True, which float() reads as 1.0: kd trained at temperature 1."""
    from hf_rcka.recipe_specs import validate_losses

    with pytest.raises(RecipeError, match=r"^losses\[1\] \(kd\): option temperature must be a number, got True$"):
        validate_losses([{"name": "ce"}, {"name": "kd", "temperature": True}])


def test_resolved_recipe_round_trips(tmp_path):
    values = resolve_values({**BASE, "learning_rate": "2e-4", "losses": [{"name": "ce"}]}, {"seed": "3"})
    assert values["learning_rate"] == pytest.approx(2e-4) and values["seed"] == 3
    assert values["losses"] == [{"name": "ce", "weight": 1.0}]
    dump_recipe(values, tmp_path / "distill_config.yaml")
    again = parse_arguments(load_recipe(tmp_path / "distill_config.yaml"))
    assert again[2].learning_rate == pytest.approx(2e-4) and again[2].seed == 3
    assert again[2].losses == values["losses"]


def test_exponents_are_numbers_inside_mappings_and_a_mapping_flag_merges():
    """YAML 1.1 read 1e-5 as a string: lr_scheduler_kwargs' min_lr failed after the data loaded."""
    from hf_rcka.cli.recipe import parse_cli_overrides, resolve_values

    recipe = {"model_name_or_path": "m", "output_dir": "o", "student_config_overrides": {"hidden_size": 64, "depth": 4}}
    flags = parse_cli_overrides(["--lr_scheduler_kwargs", "{min_lr: 1e-5}", "--student_config_overrides", "{depth: 2}"])
    values = resolve_values(recipe, flags)
    assert values["lr_scheduler_kwargs"] == {"min_lr": 1e-5}
    assert values["student_config_overrides"] == {"hidden_size": 64, "depth": 2}  # not the flag's mapping alone


def test_recipes_read_yaml_1_2_numbers_and_text_settings_as_written(tmp_path):
    """YAML 1.1 turned ``run_name: 0123`` into "83" (octal), ``1:30`` into 90 and a short commit
    hash ``1e51234`` into the float inf; text settings now keep what was written."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model_name_or_path: config:vit\noutput_dir: runs/2026-12-02\nrun_name: 0123\nseed: 010\n"
        "hub_model_id: '1.10'\nlr_scheduler_kwargs: {min_lr: 1e-5, at: 1:30}\ndataset_name: builtin:digits\n"
        "student_config_overrides: &shared {depth: 2}\nteacher_config_overrides: {<<: *shared, depth: 3}\n"
    )
    flags = parse_cli_overrides(["--hub_revision", "1e51234", "--project", "0o17"])
    values = resolve_values(load_recipe(recipe), flags)
    assert values["run_name"] == "0123" and values["output_dir"] == "runs/2026-12-02"
    assert values["seed"] == 10  # a number setting: decimal, never octal
    assert values["hub_revision"] == "1e51234" and values["project"] == "0o17"
    assert values["lr_scheduler_kwargs"] == {"min_lr": 1e-5, "at": "1:30"}
    assert values["teacher_config_overrides"] == {"depth": 3}
    assert parse_cli_overrides(["--run_name", "0123"])["run_name"] == "0123"
    recipe.write_text("<<: {run_name: '0123'}\nrun_name: 0456\n")  # the explicit key wins over a merged one
    assert load_recipe(recipe) == {"run_name": "0456"}
    recipe.write_bytes("run_name: x  # r\u00e9sum\u00e9\n".encode("latin-1"))  # a traceback (UnicodeDecodeError)
    with pytest.raises(RecipeError, match=r"is not UTF-8 text \(byte 0xe9 at offset 16\): save it as UTF-8"):
        load_recipe(recipe)


def test_recorded_recipes_read_back_as_written_under_both_yaml_versions(tmp_path):
    """safe_dump quoted only what YAML 1.1 misreads: "0o17" and "1e5" came back as numbers."""
    import yaml

    values = {**BASE, "student_config_overrides": {"tags": ["1e5", "0o17", "yes", "1:30", "~"], "1e5": "0o17"},
              "learning_rate": 1e-5, "run_name": "0123"}
    dump_recipe(values, tmp_path / "distill_config.yaml")
    assert load_recipe(tmp_path / "distill_config.yaml") == values
    assert yaml.safe_load((tmp_path / "distill_config.yaml").read_text()) == values  # what card_facts reads


def test_lr_base_scales_to_the_global_batch_as_deit_does():
    """DeiT's main.py: lr = 5e-4 x global batch / 512; recipes give lr_base and hold on any number of GPUs."""
    base = {**BASE, "lr_base": 1e-3, "lr_base_size": 64, "per_device_train_batch_size": 8}
    _, _, args = parse_arguments({**base, "gradient_accumulation_steps": 4})
    assert args.learning_rate == pytest.approx(1e-3 * 32 / 64)  # 8 images x 1 process x 4 accumulation steps
    _, _, args = parse_arguments({**base, "lr_base_scale": "sqrt"})
    assert args.learning_rate == pytest.approx(1e-3 * (8 / 64) ** 0.5)
    assert dataclasses.replace(args).learning_rate == args.learning_rate  # rebuilt from its values: not scaled twice
    with pytest.raises(RecipeError, match="both given"):
        parse_arguments({**base, "learning_rate": 1e-4})
    with pytest.raises(RecipeError, match="lr_base_scale"):
        parse_arguments({**base, "lr_base_scale": "cubic"})
    with pytest.raises(RecipeError, match="lr_base_scale must be 'linear' or 'sqrt'"):  # a typo without lr_base too
        parse_arguments({**BASE, "lr_base_scale": "cube"})
    with pytest.raises(RecipeError, match="both given"):  # even at TrainingArguments' default value
        parse_arguments({**base, "learning_rate": 5e-5})
    with pytest.raises(RecipeError, match="auto_find_batch_size"):  # it may train with a smaller batch
        parse_arguments({**base, "auto_find_batch_size": True})


def test_a_learning_rate_given_from_python_with_lr_base_is_never_taken_silently(tmp_path, caplog):
    """From Python, learning_rate=5e-5 (Trainer's default) with lr_base trained at the scaled lr_base
    unsaid; other rates are refused. Arguments rebuilt with lr_base from ones built without a rate
    (dataclasses.replace) hold 5e-5 as a value: said, not refused."""
    from hf_rcka import DistillationTrainingArguments

    settings = dict(output_dir=str(tmp_path), lr_base=1e-3, lr_base_size=64, per_device_train_batch_size=8,
                    use_cpu=True, report_to="none")
    with pytest.raises(RecipeError, match="both given"):
        DistillationTrainingArguments(learning_rate=1e-4, **settings)
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        args = DistillationTrainingArguments(learning_rate=5e-5, **settings)
    assert "learning_rate 5e-05 (Trainer's default) is taken as unset" in caplog.text
    assert args.learning_rate == pytest.approx(1e-3 * 8 / 64)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        args = DistillationTrainingArguments(**settings)
    assert args.learning_rate == pytest.approx(1e-3 * 8 / 64) and type(args.learning_rate) is float
    assert "taken as unset" not in caplog.text
    plain = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=8)
    assert plain.learning_rate == 5e-5
    assert dataclasses.replace(plain, lr_base=1e-3, lr_base_size=64).learning_rate == pytest.approx(1e-3 * 8 / 64)


def test_a_learning_rate_flag_replaces_the_recipes_lr_base():
    values = resolve_values({**BASE, "lr_base": 5e-4, "lr_base_size": 512}, parse_cli_overrides(["--learning_rate", "1e-4"]))
    assert values["learning_rate"] == 1e-4 and "lr_base" not in values
    values = resolve_values({**BASE, "learning_rate": 1e-4}, parse_cli_overrides(["--lr_base", "5e-4"]))
    assert values["lr_base"] == 5e-4 and "learning_rate" not in values


def test_the_recorded_launch_says_how_the_global_batch_was_made(tmp_path, monkeypatch):
    """The same recipe under 8 processes trains with 8 times the batch: the record must say which."""
    from transformers import TrainingArguments

    from hf_rcka.arguments import describe_batch
    from hf_rcka.trainer.resume_hint import launch_command

    _, _, args = parse_arguments({**BASE, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 4})
    assert describe_batch(args) == "32 images (1 process x 8 images x 4 accumulation steps)"
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    assert describe_batch(args) == "64 images (2 processes x 8 images x 4 accumulation steps)"
    args.accelerator_config.split_batches = True
    assert describe_batch(args) == "32 images (8 images split over 2 processes x 4 accumulation steps)"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert launch_command("out/distill_config.yaml") == \
        "torchrun --nproc_per_node 2 scripts/distill.py out/distill_config.yaml"
    # the record is uploaded: a script named by a relative path keeps it, an absolute one (someone's
    # folders) is the repository's
    monkeypatch.setattr("sys.argv", ["../hf_rcka/scripts/distill.py"])
    assert "torchrun --nproc_per_node 2 ../hf_rcka/scripts/distill.py " in launch_command("r.yaml")
    monkeypatch.setattr("sys.argv", ["/home/alice/hf_rcka/scripts/distill.py"])
    assert " scripts/distill.py r.yaml" in launch_command("r.yaml") and "alice" not in launch_command("r.yaml")
    # a user's own entry script (it may register losses the repository's does not know) keeps its name
    monkeypatch.setattr("sys.argv", ["/home/alice/project/my_distill.py"])
    assert launch_command("r.yaml") == "torchrun --nproc_per_node 2 my_distill.py r.yaml"
    monkeypatch.setattr("sys.argv", ["train_kd.py"])
    assert launch_command("r.yaml") == "torchrun --nproc_per_node 2 train_kd.py r.yaml"
    # an installed package has no scripts/: the console script, or the module under a launcher
    import hf_rcka

    main_module = str(Path(hf_rcka.__file__).parent / "__main__.py")
    for entry in ("/home/alice/venv/bin/hf-rcka-distill", main_module):
        monkeypatch.setattr("sys.argv", [entry])
        assert launch_command("r.yaml") == "torchrun --nproc_per_node 2 -m hf_rcka r.yaml"
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert launch_command("r.yaml") == "python -m hf_rcka r.yaml"
    monkeypatch.setattr("sys.argv", ["/home/alice/venv/bin/hf-rcka-distill"])
    assert launch_command("r.yaml") == "hf-rcka-distill r.yaml"
    monkeypatch.setattr("sys.argv", ["/home/alice/other/__main__.py"])  # another package's module
    assert launch_command("r.yaml") == "python scripts/distill.py r.yaml"

    dump_recipe({**BASE, "seed": 3, "hub_token": "hf_SECRET"}, tmp_path / "distill_config.yaml",
                comment="Global batch: 64.\nRun: it")
    assert "hf_SECRET" not in (tmp_path / "distill_config.yaml").read_text(), "the recorded recipe is uploaded"
    text = (tmp_path / "distill_config.yaml").read_text()
    assert text.startswith("# Global batch: 64.\n# Run: it\nmodel_name_or_path: config:vit\n")
    assert load_recipe(tmp_path / "distill_config.yaml") == {**BASE, "seed": 3}, "the comment is no recipe value"


def test_a_resume_at_another_learning_rate_is_refused(tmp_path):
    """Trainer restores the optimizer's and the schedule's rates: resumed at 0.1, a run went on at
    its 0.01 (logged rates unchanged) while its recipe record and card said 0.1."""
    import torch

    from hf_rcka.cli.resume_checks import check_resume_rate

    torch.save({"base_lrs": [0.01, 0.01], "last_epoch": 2}, tmp_path / "scheduler.pt")
    _, _, same = parse_arguments({**BASE, "learning_rate": "1e-2"})
    check_resume_rate(str(tmp_path), same)
    _, _, other = parse_arguments({**BASE, "learning_rate": 0.1})
    with pytest.raises(RecipeError, match=r"was trained at a learning rate of 0.01, and this run sets 0.1: a resumed "
                                          r"run keeps the checkpoint's optimizer and schedule"):
        check_resume_rate(str(tmp_path), other)


def test_a_resume_with_another_schedule_is_said(tmp_path, caplog):
    """Resumed with more epochs, a run went on along a recomputed cosine (lr 0.002995 at step 60
    instead of 0.002805) without a word; extending a run is allowed, but it is now said."""
    from hf_rcka.cli.resume_checks import warn_resume_schedule

    recorded = {**BASE, "num_train_epochs": 3, "lr_scheduler_type": "cosine"}
    dump_recipe(recorded, tmp_path / "distill_config.yaml")
    checkpoint = tmp_path / "checkpoint-50"
    checkpoint.mkdir()
    (checkpoint / "distill_config.yaml").write_text((tmp_path / "distill_config.yaml").read_text())
    _, _, same = parse_arguments({**recorded, "num_train_epochs": "3"})
    assert warn_resume_schedule(str(checkpoint), same) == []
    _, _, longer = parse_arguments({**recorded, "num_train_epochs": 6, "warmup_steps": 0.1})
    with caplog.at_level("WARNING", logger="hf_rcka"):
        changed = warn_resume_schedule(str(checkpoint), longer)
    assert changed == ["num_train_epochs 3 -> 6", "warmup_steps 0 -> 0.1"]
    assert "other schedule settings (num_train_epochs 3 -> 6; warmup_steps 0 -> 0.1)" in caplog.text
    _, _, linear = parse_arguments({**recorded, "lr_scheduler_type": "linear"})
    assert warn_resume_schedule(str(checkpoint), linear) == ["lr_scheduler_type cosine -> linear"]


def test_a_resume_says_the_settings_it_takes_as_given_where_they_act(tmp_path, caplog):
    """Augmentation, columns, clipping and the weight average are taken as given by a resume (a
    changed default among them, after an upgrade, too): said against the run's record, but not
    where the setting acts on neither side (per-image augmentation under no_aug, the weight
    average's options without one)."""
    from hf_rcka.cli.resume_checks import warn_resume_settings

    recorded = {**BASE, "no_aug": True, "color_jitter": 0.4, "model_ema_decay": 0.999}
    dump_recipe(recorded, tmp_path / "distill_config.yaml")
    _, data, training = parse_arguments({**recorded, "color_jitter": 0.1, "model_ema_decay": 0.99})
    assert warn_resume_settings(str(tmp_path), data, training) == [], "no_aug on both sides, no average"
    _, data, training = parse_arguments({**recorded, "no_aug": False, "model_ema": True, "max_grad_norm": 5})
    with caplog.at_level("WARNING", logger="hf_rcka"):
        changed = warn_resume_settings(str(tmp_path), data, training)
    assert changed == ["no_aug True -> False", "max_grad_norm 1 -> 5", "model_ema False -> True"]
    _, data, training = parse_arguments({**recorded, "no_aug": False, "color_jitter": 0.1})
    assert warn_resume_settings(str(tmp_path), data, training) == ["no_aug True -> False", "color_jitter 0.4 -> 0.1"]
    _, data, training = parse_arguments({**recorded, "model_ema": True, "model_ema_decay": 0.99})
    assert warn_resume_settings(str(tmp_path), data, training) == [
        "model_ema False -> True", "model_ema_decay 0.999 -> 0.99"]
    assert "was trained with other settings (no_aug True -> False; max_grad_norm 1 -> 5" in caplog.text
    _, data, training = parse_arguments({**recorded, "mixup_prob": 0.5, "remode": "const"})
    assert warn_resume_settings(str(tmp_path), data, training) == [], "no mixing, no erasing"
    _, data, training = parse_arguments({**recorded, "mixup": 0.8, "mixup_prob": 0.5})
    assert warn_resume_settings(str(tmp_path), data, training) == ["mixup 0 -> 0.8", "mixup_prob 1 -> 0.5"]
    _, data, training = parse_arguments({**recorded, "cutmix_minmax": [0.2, 0.8], "mixup_prob": 0.5})
    assert warn_resume_settings(str(tmp_path), data, training) == [  # timm turns CutMix on for it alone
        "cutmix_minmax None -> [0.2, 0.8]", "mixup_prob 1 -> 0.5"]
    _, data, training = parse_arguments({**recorded, "image_column_name": "img"})  # another of the dataset's columns
    assert warn_resume_settings(str(tmp_path), data, training) == ["image_column_name image -> img"]
    dump_recipe({**recorded, "cutmix": 1.0, "reprob": 0.25}, tmp_path / "distill_config.yaml")
    _, data, training = parse_arguments({**recorded, "cutmix": 1.0, "reprob": 0.25, "mixup_prob": 0.5})
    assert warn_resume_settings(str(tmp_path), data, training) == ["mixup_prob 1 -> 0.5"], "CutMix alone mixes"
    _, data, training = parse_arguments({**recorded, "cutmix": 1.0, "reprob": 0.25, "remode": "const"})
    assert warn_resume_settings(str(tmp_path), data, training) == [], "no erasing under no_aug on both sides"
    erasing = tmp_path / "erasing"
    erasing.mkdir()
    dump_recipe(BASE, erasing / "distill_config.yaml")  # per-image augmentation on, erasing off (reprob 0)
    _, data, training = parse_arguments({**BASE, "remode": "const", "recount": 2})
    assert warn_resume_settings(str(erasing), data, training) == [], "erasing off on both sides"
    _, data, training = parse_arguments({**BASE, "reprob": 0.25, "remode": "const"})
    assert warn_resume_settings(str(erasing), data, training) == ["reprob 0 -> 0.25", "remode pixel -> const"]
    # what timm leaves idle: colour jitter under an auto-augment policy but its 3a ones, the
    # mixup/CutMix switch with one of them, CutMix's alpha beside cutmix_minmax (which sets it to 1)
    for recorded_here, change in (({"aa": "rand-m9-mstd0.5-inc1", "mixup": 0.8}, {"color_jitter": 0.1, "mixup_switch_prob": 0.2}),
                                  ({"cutmix_minmax": [0.2, 0.8]}, {"cutmix": 0.5})):
        folder = tmp_path / f"idle-{len(change)}"
        folder.mkdir()
        dump_recipe({**BASE, **recorded_here}, folder / "distill_config.yaml")
        _, data, training = parse_arguments({**BASE, **recorded_here, **change})
        assert warn_resume_settings(str(folder), data, training) == [], change
    _, data, training = parse_arguments({**BASE, "aa": "3a", "color_jitter": 0.1})
    assert warn_resume_settings(str(erasing), data, training) == ["aa None -> 3a", "color_jitter 0.4 -> 0.1"]
    jittered = tmp_path / "jittered"  # a 3a policy on both sides: its colour jitter acts, and a change is said
    jittered.mkdir()
    dump_recipe({**BASE, "aa": "3a"}, jittered / "distill_config.yaml")
    assert warn_resume_settings(str(jittered), data, training) == ["color_jitter 0.4 -> 0.1"]
    both_mix = tmp_path / "both-mix"  # MixUp beside a cutmix_minmax (CutMix on at alpha 1): the switch draws
    both_mix.mkdir()
    dump_recipe({**BASE, "mixup": 0.8, "cutmix_minmax": [0.2, 0.8]}, both_mix / "distill_config.yaml")
    _, data, training = parse_arguments({**BASE, "mixup": 0.8, "cutmix_minmax": [0.2, 0.8], "mixup_switch_prob": 0.2})
    assert warn_resume_settings(str(both_mix), data, training) == ["mixup_switch_prob 0.5 -> 0.2"]


def test_a_resume_through_a_link_is_compared_with_the_run_that_holds_the_checkpoint(tmp_path):
    """A checkpoint given through a link (latest -> run/checkpoint-6) read no record beside the link:
    every check that compares a resume with its run was skipped, exit 0. Another label column trains
    other targets, and is refused like another dataset."""
    from hf_rcka.cli.records import recorded_recipe
    from hf_rcka.cli.resume_checks import check_resume_recipe, warn_resume_settings

    run = tmp_path / "run"
    (run / "checkpoint-6").mkdir(parents=True)
    (run / "checkpoint-6" / "trainer_state.json").write_text("{}")
    recorded = {**BASE, "hflip": 0.3, "label_column_name": "fine"}
    dump_recipe(recorded, run / "distill_config.yaml")
    link = tmp_path / "latest"
    link.symlink_to(run / "checkpoint-6")
    assert recorded_recipe(str(link))["hflip"] == 0.3
    model, data, training = parse_arguments({**recorded, "hflip": 0.5})
    assert warn_resume_settings(str(link), data, training) == ["hflip 0.3 -> 0.5"]
    check_resume_recipe(str(link), model, data, training)
    model, data, training = parse_arguments({**recorded, "label_column_name": "coarse"})
    with pytest.raises(RecipeError, match="label_column_name 'fine' -> 'coarse'"):
        check_resume_recipe(str(link), model, data, training)
    nested = run / "checkpoint-6" / "checkpoint-2"  # a run of its own, named like a checkpoint: its record is its own
    nested.mkdir()
    (nested / "trainer_state.json").write_text("{}")
    dump_recipe({**recorded, "hflip": 0.7}, nested / "distill_config.yaml")
    assert recorded_recipe(str(nested))["hflip"] == 0.7
    exported = run / "checkpoint-9"  # a model saved under a checkpoint's name, no training state: not the run's
    exported.mkdir()
    assert recorded_recipe(str(exported)) is None


def test_a_resume_compares_a_checkpoint_with_the_record_that_describes_it(tmp_path):
    """A resume rewrites the run's record: a checkpoint saved before the step it resumed from was
    trained by the earlier launch, and was said to have trained with the resume's settings (and the
    advice to resume with the record applied them). A checkpoint now keeps a copy of its launch's
    record: only an earlier version's, without one, is left uncompared."""
    import shutil

    from hf_rcka.cli.resume_checks import warn_resume_schedule, warn_resume_settings
    from hf_rcka.run_record import RESUMED_HEADER

    recorded = {**BASE, "hflip": 0.3, "num_train_epochs": 6}
    dump_recipe(recorded, tmp_path / "distill_config.yaml", comment=f"{RESUMED_HEADER}1,000 from a checkpoint: ...")
    for step in (500, 1000, 1500):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")  # a checkpoint reads its run's
    _, data, training = parse_arguments({**BASE, "hflip": 0.5, "num_train_epochs": 3})
    for step in (500, 1000):
        assert warn_resume_settings(str(tmp_path / f"checkpoint-{step}"), data, training) == []
        assert warn_resume_schedule(str(tmp_path / f"checkpoint-{step}"), training) == []
    assert warn_resume_settings(str(tmp_path / "checkpoint-1500"), data, training) == ["hflip 0.3 -> 0.5"]
    assert warn_resume_schedule(str(tmp_path / "checkpoint-1500"), training) == ["num_train_epochs 6 -> 3"]
    (tmp_path / "earliest").symlink_to(tmp_path / "checkpoint-500")  # a link is the checkpoint it names
    assert warn_resume_settings(str(tmp_path / "earliest"), data, training) == []
    kept = tmp_path / "kept"  # a copy of the run under another name (no checkpoint-N): its record describes it
    kept.mkdir()
    (kept / "trainer_state.json").write_text("{}")
    shutil.copy2(tmp_path / "distill_config.yaml", kept / "distill_config.yaml")
    assert warn_resume_settings(str(kept), data, training) == ["hflip 0.3 -> 0.5"]
    # a checkpoint that keeps a copy of its launch's record is compared with that one, whatever its step
    dump_recipe({**recorded, "hflip": 0.2}, tmp_path / "checkpoint-500" / "distill_config.yaml")
    assert warn_resume_settings(str(tmp_path / "checkpoint-500"), data, training) == ["hflip 0.2 -> 0.5"]
    assert warn_resume_schedule(str(tmp_path / "checkpoint-500"), training) == ["num_train_epochs 6 -> 3"]


def test_a_resume_with_other_settings_names_the_record_it_trained_with(tmp_path, caplog):
    """The advice 'resume with the recipe it recorded' names the file that recorded the checkpoint:
    an earlier version's checkpoint keeps no copy, so the run folder's record, not a path inside
    the checkpoint where there is none (the copy's own is named by the command-line resume test)."""
    from hf_rcka.cli.resume_checks import warn_resume_settings

    run = Path(os.path.realpath(tmp_path))
    dump_recipe({**BASE, "hflip": 0.3}, run / "distill_config.yaml")
    checkpoint = run / "checkpoint-10"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    _, data, training = parse_arguments({**BASE, "hflip": 0.5})
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert warn_resume_settings(str(checkpoint), data, training) == ["hflip 0.3 -> 0.5"]
    assert f"resume with the recipe it recorded, {run / 'distill_config.yaml'}" in " ".join(caplog.text.split())


def test_a_record_that_is_not_text_names_no_header_number(tmp_path):
    """The header is read before the recipe is known to be readable (the resume's step, a baseline's
    batch for the card): a record that is not UTF-8 (a disk error, a file written over) is none."""
    from hf_rcka.run_record import BATCH_HEADER, RESUMED_HEADER, recorded_header_number

    (tmp_path / "distill_config.yaml").write_bytes(b"# Global batch: \xff\xfe 64 images\n\x80seed: 1\n")
    assert recorded_header_number(str(tmp_path), BATCH_HEADER) is None
    assert recorded_header_number(str(tmp_path), RESUMED_HEADER) is None


def test_a_checkout_whose_changes_cannot_be_read_is_not_called_clean(monkeypatch):
    """A git status that failed (or timed out) read as no local changes."""
    from hf_rcka import __version__, version

    package = Path(version.__file__).parent
    answers = {"rev-parse": f"{package.parent}\n{'a' * 40}", "ls-files": "__init__.py", "status": None}
    monkeypatch.setattr(version, "_git", lambda folder, command, *rest: answers[command])
    assert version.code_version.__wrapped__() == f"hf_rcka {__version__} (git {'a' * 12}, local changes unknown)"
    answers["status"] = ""
    assert version.code_version.__wrapped__() == f"hf_rcka {__version__} (git {'a' * 12})"


def test_the_code_is_named_as_the_command_starts(monkeypatch):
    """The code that trains a run is the checkout as the command started: one changed (a git pull,
    a branch switched) while the models loaded was named on the card instead."""
    from hf_rcka import version
    from hf_rcka.cli import main as cli_main

    seen = []
    version.code_version.cache_clear()
    monkeypatch.setattr(cli_main, "_run_recipe", lambda argv, stop: seen.append(version.code_version.cache_info().currsize))
    assert cli_main.main(["recipe.yaml"]) == 0
    assert seen == [1], "named before the recipe is read"


def test_git_is_asked_without_taking_the_checkouts_lock(monkeypatch):
    """Runs started together each ask git: a status that refreshes the index takes its lock, which
    a commit made in the checkout meanwhile then meets."""
    import subprocess

    from hf_rcka import version

    envs = []

    def fake_run(command, **kwargs):
        envs.append(kwargs.get("env"))
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    monkeypatch.setattr(version.subprocess, "run", fake_run)
    version._git(".", "status", "--porcelain")
    assert envs and envs[0]["GIT_OPTIONAL_LOCKS"] == "0"


def _code_version_of(package_parent: Path) -> str:
    """``code_version()`` of the copy of hf_rcka in ``package_parent``: its version.py loaded on its own
    (it reads where its file lies), without the package's imports a fresh interpreter would pay for."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_copied_version", package_parent / "hf_rcka" / "version.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.code_version()


def test_cards_and_records_name_the_commit_that_trained_the_run(tmp_path):
    """Every card and record said "hf_rcka 0.1.0", a version never raised: which code trained a run
    could not be told. A git checkout (as the README installs it) adds its commit, and says when
    the package differs from it; a copy inside another project's checkout does not take its commit."""
    import shutil
    import subprocess

    import hf_rcka

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    shutil.copytree(Path(hf_rcka.__file__).parent, repo / "hf_rcka", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".gitignore").write_text("__pycache__/\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert _code_version_of(repo) == f"hf_rcka {hf_rcka.__version__} (git {commit})"
    (repo / "runs").mkdir()  # a run's output folder beside the package (as the README's commands write) is no change to it
    (repo / "runs" / "distill_config.yaml").write_text("")
    assert _code_version_of(repo) == f"hf_rcka {hf_rcka.__version__} (git {commit})", "a file outside the package"
    (repo / "hf_rcka" / "new_module.py").write_text("")
    assert _code_version_of(repo) == f"hf_rcka {hf_rcka.__version__} (git {commit}, local changes)", "a new file"
    (repo / "hf_rcka" / "new_module.py").unlink()
    with open(repo / "hf_rcka" / "version.py", "a") as handle:
        handle.write("# changed\n")
    assert _code_version_of(repo) == f"hf_rcka {hf_rcka.__version__} (git {commit}, local changes)"
    inner = repo / "vendored"
    shutil.copytree(repo / "hf_rcka", inner / "hf_rcka")
    assert _code_version_of(inner) == f"hf_rcka {hf_rcka.__version__}", "another project's commit is not hf_rcka's"
    subprocess.run([*git, "add", "vendored"], check=True)  # committed there too: still not hf_rcka's own checkout
    subprocess.run([*git, "commit", "-qm", "vendor"], check=True)
    assert _code_version_of(inner) == f"hf_rcka {hf_rcka.__version__}", "a copy committed inside another tree"
    other = tmp_path / "other"  # a copy at the top of another project's checkout, not committed there
    (other / "src").mkdir(parents=True)
    (other / "src" / "main.py").write_text("")
    other_git = [*git[:2], str(other), *git[3:]]
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "theirs"]):
        subprocess.run([*other_git, *command], check=True)
    shutil.copytree(repo / "hf_rcka", other / "hf_rcka")
    assert _code_version_of(other) == f"hf_rcka {hf_rcka.__version__}"


def test_the_record_holds_the_batch_trained_with_and_no_resume(tmp_path):
    """auto_find_batch_size trained at 9 images where the card and record said 10; a resumed run's
    record kept resume_from_checkpoint, so running it again resumed and trained nothing."""
    from transformers import TrainerState

    from hf_rcka.cli.records import RecipeRecord
    from hf_rcka.trainer.card import training_text

    _, _, args = parse_arguments({**BASE, "per_device_train_batch_size": 10, "auto_find_batch_size": True})
    path = tmp_path / "distill_config.yaml"
    record = RecipeRecord({**BASE, "per_device_train_batch_size": 10, "resume_from_checkpoint": "true"}, str(path))
    record.on_train_begin(args, TrainerState(train_batch_size=9), None)
    assert path.read_text().startswith("# Global batch: 9 images (1 process x 9 images) per optimizer step.\n")
    assert "resume_from_checkpoint" not in load_recipe(path)
    # without auto_find_batch_size the state's batch is a resumed checkpoint's, which trained at another
    _, _, resumed = parse_arguments({**BASE, "per_device_train_batch_size": 10})
    record.on_train_begin(resumed, TrainerState(train_batch_size=5), None)
    assert path.read_text().startswith("# Global batch: 10 images (1 process x 10 images) per optimizer step.\n")
    assert training_text(8, 2.0, "9 images", 0.01, 0.01, exported_step=4) == (
        "8 optimizer steps (2 epochs), global batch 9 images, peak learning rate 0.01; the weights here are "
        "step 4's, the best evaluation")
    assert training_text(8, 2.0, "9 images", 0.01, 0.01, exported_step=8).endswith("peak learning rate 0.01")
    assert training_text(8, 2.0, "9 images", 0.01, 0.01, ema_decay=0.9998).endswith(
        "; `eval_ema_*` measures an exponential moving average of the weights (decay 0.9998), which is not the model here")


@pytest.mark.parametrize("optim,optim_args,expected", [
    ("sgd", "momentun=0.9", "optim_args 'momentun': transformers does not pass it to optim 'sgd' (SGD) from "
                            "optim_args: the value given there would not be used. Did you mean 'momentum'?"),
    ("sgd", "momentum=0.9,nestrov=True", "Did you mean 'nesterov'?"),
    ("adamw_torch", "momentum=0.9", "optim_args 'momentum': transformers does not pass it to optim 'adamw_torch'"),
    ("adamw_torch", "eps=1e-3", "(eps comes from the training argument adam_epsilon: set it there)"),
    ("adafactor", "relative_step=True", "optim_args 'relative_step'"),  # transformers sets it False, always
    ("sgd", "momentum", "optim_args 'momentum' must be key=value pairs separated by commas"),
])
def test_optim_args_that_never_reach_the_optimizer_are_refused(tmp_path, optim, optim_args, expected):
    """transformers drops the optim_args its setup for an optimizer does not read: a misspelt
    momentum trained SGD without momentum, and said nothing."""
    from transformers import TrainingArguments

    from hf_rcka.arguments import DistillationTrainingArguments, check_arguments

    with pytest.raises(RecipeError, match=re.escape(expected)):
        DistillationTrainingArguments(str(tmp_path), optim=optim, optim_args=optim_args, use_cpu=True)
    with pytest.raises(RecipeError, match=re.escape(expected)):  # plain TrainingArguments given to the trainer
        check_arguments(TrainingArguments(str(tmp_path), optim=optim, optim_args=optim_args, use_cpu=True))
    DistillationTrainingArguments(str(tmp_path), optim="sgd", optim_args="momentum=0.9,nesterov=True", use_cpu=True)
    DistillationTrainingArguments(str(tmp_path), optim="adafactor", optim_args="scale_parameter=False", use_cpu=True)


def test_a_record_run_again_from_another_folder_reads_its_paths_where_its_run_ran(tmp_path, monkeypatch):
    """Run again from another working directory, a recorded recipe's relative data/train named that
    folder's data/train (3 classes trained for the record's 31, exit 0)."""
    import json

    from hf_rcka.cli.recipe import recipe_as_recorded
    from hf_rcka.run_record import WORKING_DIR_NAME

    first, other, run = tmp_path / "first", tmp_path / "other", tmp_path / "first" / "out"
    for where in (first, other):
        (where / "data" / "train").mkdir(parents=True)
    (first / "teacher").mkdir()
    run.mkdir()
    (run / WORKING_DIR_NAME).write_text(json.dumps({"working_dir": str(first)}))
    recipe = {"train_dir": "data/train", "teacher_model_name_or_path": "teacher", "model_name_or_path": "timm/resnet18"}
    monkeypatch.chdir(other)
    anchored = recipe_as_recorded(str(run / "distill_config.yaml"), recipe)
    assert anchored == {"train_dir": str(first / "data" / "train"), "teacher_model_name_or_path": str(first / "teacher"),
                        "model_name_or_path": "timm/resnet18"}
    # the recipe tests' reader reads it as the command line does
    (run / "distill_config.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    _, data_args, _ = parse_recipe_file(run / "distill_config.yaml", ["--use_cpu", "true", "--output_dir", str(run)])
    assert data_args.train_dir == str(first / "data" / "train")
    (run / "distill_config.yaml").unlink()
    import shutil

    shutil.rmtree(first / "data")  # the data moved since: read here, and said
    assert recipe_as_recorded(str(run / "distill_config.yaml"), recipe)["train_dir"] == "data/train"
    monkeypatch.chdir(first)  # where it ran: as written
    assert recipe_as_recorded(str(run / "distill_config.yaml"), recipe) == recipe
    assert recipe_as_recorded(str(tmp_path / "plain.yaml"), recipe) == recipe  # no record beside it


def test_a_layer_index_of_true_is_refused_from_python_too(tmp_path):
    """Python reads True as 1: a pair given from Python (no recipe coercion) named layer 1."""
    from hf_rcka.arguments import DistillationTrainingArguments

    with pytest.raises(RecipeError, match=r"feature_pairs\[0\].student_layer must be an integer, got True"):
        DistillationTrainingArguments(str(tmp_path), feature_pairs=[{"student_layer": True, "teacher_layer": 2}],
                                      use_cpu=True)


def test_a_recipe_reads_hex_and_octal_integers_as_yaml_1_2_does(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 0x10\ndata_seed: 0o17\n")
    assert load_recipe(recipe) == {"seed": 16, "data_seed": 15}
    assert parse_cli_overrides(["--seed", "0x10"]) == {"seed": 16}


def test_a_text_flag_with_a_hash_keeps_what_was_typed_without_surrounding_blanks():
    assert parse_cli_overrides(["--run_name", " teacher #3 "]) == {"run_name": "teacher #3"}


def test_a_bare_tilde_is_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_values({**BASE, "output_dir": "~"}, {})["output_dir"] == str(tmp_path)


def test_a_record_run_from_another_folder_reads_baseline_dir_there_and_warns_only_for_what_is_gone(
        tmp_path, monkeypatch, caplog):
    """A run's record names its paths as written, relative to where it ran: baseline_dir among them."""
    import json

    from hf_rcka.cli.recipe import recipe_as_recorded
    from hf_rcka.run_record import WORKING_DIR_NAME

    first, other = tmp_path / "first", tmp_path / "other"
    (first / "data" / "train").mkdir(parents=True)
    (first / "alone").mkdir()
    other.mkdir()
    run = first / "out"
    run.mkdir()
    (run / WORKING_DIR_NAME).write_text(json.dumps({"working_dir": str(first)}))
    monkeypatch.chdir(other)
    recipe = {"train_dir": "data/train", "baseline_dir": "alone", "model_name_or_path": "timm/resnet18"}
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        read = recipe_as_recorded(str(run / "distill_config.yaml"), recipe)
    assert read["baseline_dir"] == str(first / "alone")
    assert read["train_dir"] == str(first / "data" / "train")
    assert "is gone from" not in caplog.text


def test_the_cards_training_line_says_a_resumed_run_began_in_an_earlier_launch():
    """A mutant that dropped the resumed step from the card's training line passed every test: the
    card of a resumed run then read as one launch with the settings of the last."""
    from hf_rcka.trainer.card import training_text

    text = training_text(8, 2.0, "9 images", 0.01, 0.01, resumed_step=4)
    assert text.endswith("; resumed at step 4 from a checkpoint of an earlier launch"), text
    assert "resumed" not in training_text(8, 2.0, "9 images", 0.01, 0.01)


def test_a_fresh_runs_record_says_nothing_of_a_resume(tmp_path):
    from transformers import TrainerState

    from hf_rcka.cli.records import RecipeRecord

    _, _, args = parse_arguments(dict(BASE))
    path = tmp_path / "distill_config.yaml"
    RecipeRecord(dict(BASE), str(path)).on_train_begin(args, TrainerState(global_step=0), None)
    assert "Resumed" not in path.read_text()
    RecipeRecord(dict(BASE), str(path)).on_train_begin(args, TrainerState(global_step=4), None)
    assert "Resumed at step 4 from a checkpoint" in path.read_text()
    RecipeRecord(dict(BASE), str(path)).on_train_begin(args, TrainerState(global_step=1), None)
    assert "Resumed at step 1 from a checkpoint" in path.read_text(), "a resume after one step is a resume"


def test_a_checkpoint_named_folder_without_trainer_state_takes_no_runs_recipe(tmp_path):
    """A save cut short, or someone's model named so, is not a checkpoint of the run around it."""
    from hf_rcka.cli.records import recorded_recipe

    run = tmp_path / "vit_run"
    (run / "checkpoint-20").mkdir(parents=True)
    (run / "distill_config.yaml").write_text("dataset_name: builtin:digits\nsplit_seed: 7\n")
    assert recorded_recipe(str(run / "checkpoint-20")) is None


def test_a_checkpoints_own_record_reads_its_paths_where_its_run_ran(tmp_path, monkeypatch):
    """A checkpoint keeps a copy of its run's record; one whose folder Trainer uploads keeps no
    working folder beside it (a path of the user's machine), and its relative paths are read where
    the run ran, from the run folder's record of it, not where the resume is launched."""
    import json

    from hf_rcka.cli.records import recorded_recipe
    from hf_rcka.run_record import WORKING_DIR_NAME

    first, other, run = tmp_path / "first", tmp_path / "other", tmp_path / "first" / "out"
    checkpoint = run / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    for where in (first, other):
        (where / "data" / "train").mkdir(parents=True)
    (checkpoint / "distill_config.yaml").write_text("train_dir: data/train\n")
    (checkpoint / "trainer_state.json").write_text("{}")
    (run / WORKING_DIR_NAME).write_text(json.dumps({"working_dir": str(first)}))
    monkeypatch.chdir(other)
    assert recorded_recipe(str(checkpoint))["train_dir"] == str(first / "data" / "train")
    (checkpoint / WORKING_DIR_NAME).write_text(json.dumps({"working_dir": str(other)}))  # its own, when it has one
    assert recorded_recipe(str(checkpoint))["train_dir"] == str(other / "data" / "train")


def test_a_checkpoints_copy_of_the_record_names_itself_in_a_folder_with_a_space(tmp_path):
    """The copy's command to train it again names the copy, quoted as the command quotes it: under
    a folder with a space ('my runs/out') the quoted run record was not found and the copy's
    command kept naming the run folder's record, which a later launch rewrites."""
    import shlex

    import yaml

    from hf_rcka.run_record import copy_run_record
    from hf_rcka.trainer.resume_hint import launch_command

    run = tmp_path / "my runs" / "out"
    checkpoint = run / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    record = run / "distill_config.yaml"
    command = launch_command(str(record), "--output_dir", "<new folder>")
    dump_recipe({**BASE, "hflip": 0.3}, record, comment=f"To train it again (into a new folder): {command}")
    copy_run_record(str(run), str(checkpoint), pushed=True)
    copied = (checkpoint / "distill_config.yaml").read_text()
    assert f" {shlex.quote(str(checkpoint / 'distill_config.yaml'))} " in copied and str(record) not in copied, copied
    assert yaml.safe_load(copied) == yaml.safe_load(record.read_text())


def test_a_run_folder_without_a_working_folder_reads_no_other_runs(tmp_path, monkeypatch):
    """Only a checkpoint reads its run's working folder: a run folder that records none (an
    earlier version's) inside another run's folder (a student trained into teacher/student) read
    its relative paths where that other run ran."""
    import json

    from hf_rcka.cli.records import recorded_recipe
    from hf_rcka.run_record import WORKING_DIR_NAME

    outer, here = tmp_path / "outer", tmp_path / "here"
    run = outer / "student"
    run.mkdir(parents=True)
    for where in (outer, here):
        (where / "data" / "train").mkdir(parents=True)
    (outer / WORKING_DIR_NAME).write_text(json.dumps({"working_dir": str(outer)}))
    (run / "distill_config.yaml").write_text("train_dir: data/train\n")
    monkeypatch.chdir(here)
    assert recorded_recipe(str(run))["train_dir"] == "data/train"  # read here, as the command line reads it


def test_a_link_to_an_earlier_checkpoint_reads_its_paths_where_its_run_ran(tmp_path, monkeypatch):
    """A link to a checkpoint that keeps no record (an earlier version's: latest -> out/checkpoint-4)
    is read as the run that holds it: the run folder's recipe, and its relative paths where that
    run ran; read beside the link, they were read where the resume is launched."""
    import json

    from hf_rcka.cli.records import recorded_recipe
    from hf_rcka.run_record import WORKING_DIR_NAME

    first, other = tmp_path / "first", tmp_path / "other"
    run = first / "out"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoint-4" / "trainer_state.json").write_text("{}")
    for where in (first, other):
        (where / "data" / "train").mkdir(parents=True)
    (run / "distill_config.yaml").write_text("train_dir: data/train\n")
    (run / WORKING_DIR_NAME).write_text(json.dumps({"working_dir": str(first)}))
    (tmp_path / "latest").symlink_to(run / "checkpoint-4")
    monkeypatch.chdir(other)
    assert recorded_recipe(str(tmp_path / "latest"))["train_dir"] == str(first / "data" / "train")


def test_a_pushed_checkpoint_keeps_no_working_folder_and_a_local_one_does(tmp_path):
    """Trainer uploads a checkpoint folder whole (push_to_hub, hub_strategy: checkpoint): the
    working folder, a local path, must stay out of a pushed copy; a local checkpoint keeps it, so
    that its record's relative paths are read where its run ran."""
    import json

    from hf_rcka.run_record import RECIPE_RECORD, WORKING_DIR_NAME, copy_run_record

    run = tmp_path / "out"
    for name in ("checkpoint-2", "checkpoint-4"):
        (run / name).mkdir(parents=True)
    dump_recipe(BASE, run / RECIPE_RECORD)
    (run / WORKING_DIR_NAME).write_text(json.dumps({"working_dir": str(tmp_path / "private" / "home")}))
    copy_run_record(str(run), str(run / "checkpoint-2"), pushed=True)
    assert sorted(p.name for p in (run / "checkpoint-2").iterdir()) == [RECIPE_RECORD]
    copy_run_record(str(run), str(run / "checkpoint-4"))
    assert sorted(p.name for p in (run / "checkpoint-4").iterdir()) == sorted([RECIPE_RECORD, WORKING_DIR_NAME])


@pytest.mark.parametrize("push, strategy, pushed", [
    (True, "checkpoint", True), (True, "all_checkpoints", True), (True, "every_save", False), (True, "end", False),
    (False, "all_checkpoints", False)])
def test_which_hub_strategies_upload_checkpoint_folders_whole(push, strategy, pushed):
    """hub_strategy all_checkpoints uploads every checkpoint folder whole, as checkpoint uploads the last:
    taken for a strategy that pushes no folder, its checkpoints kept the working folder, a local path,
    and published it."""
    from types import SimpleNamespace

    from transformers.trainer_utils import HubStrategy

    from hf_rcka.trainer.checkpointing import CheckpointingTrainer

    trainer = SimpleNamespace(args=SimpleNamespace(push_to_hub=push, hub_strategy=HubStrategy(strategy)))
    assert CheckpointingTrainer._pushes_checkpoint_folders(trainer) is pushed


def test_a_record_that_is_empty_or_not_a_mapping_is_read_as_such(tmp_path):
    """An empty record holds no settings (read as none, as a run from Python); one that is a YAML
    list, not a mapping, is a ValueError naming it (callers warn and compare nothing), not an
    AttributeError from deep in the reading; an empty path setting is no folder of the run's."""
    import json

    from hf_rcka.run_record import RECIPE_RECORD, WORKING_DIR_NAME, read_recorded_recipe

    run = tmp_path / "run"
    run.mkdir()
    (run / WORKING_DIR_NAME).write_text(json.dumps({"working_dir": str(tmp_path)}))
    (run / RECIPE_RECORD).write_text("")
    assert read_recorded_recipe(str(run)) == {}
    (run / RECIPE_RECORD).write_text("- train_dir\n- data\n")
    with pytest.raises(ValueError, match="is not a mapping of recipe keys"):
        read_recorded_recipe(str(run))
    (run / RECIPE_RECORD).write_text("validation_dir: ''\ntrain_dir: run\n")
    assert read_recorded_recipe(str(run)) == {"validation_dir": "", "train_dir": str(tmp_path / "run")}


def test_optim_args_that_say_what_transformers_sets_anyway_are_compared_as_numbers(tmp_path):
    """optim_args lr=1e-3 beside learning_rate 0.001 says what transformers passes anyway: accepted
    however the number is spelt; another value would not be used, so it is refused naming its field."""
    from hf_rcka import DistillationTrainingArguments

    DistillationTrainingArguments(str(tmp_path), optim="adamw_torch", optim_args="lr=1e-3", learning_rate=0.001,
                                  use_cpu=True)
    DistillationTrainingArguments(str(tmp_path), optim="adamw_torch", optim_args="eps=1e-8", adam_epsilon=1e-08,
                                  use_cpu=True)
    with pytest.raises(RecipeError, match="lr comes from the training argument learning_rate"):
        DistillationTrainingArguments(str(tmp_path), optim="adamw_torch", optim_args="lr=1e-2", learning_rate=0.001,
                                      use_cpu=True)


def test_a_yaml_true_for_a_text_setting_is_the_text_true():
    """YAML reads ``resume_from_checkpoint: true`` as a bool: a text setting takes it as "true" (the
    last checkpoint), not Python's "True", which named a folder that does not exist."""
    from hf_rcka.cli.coercion import coerce

    assert coerce(True, str | None, "resume_from_checkpoint") == "true"
    assert coerce(False, str, "eval_strategy") == "false"


def test_an_unknown_member_of_an_enum_or_text_setting_is_refused_with_the_close_ones():
    """TrainingArguments' ``SchedulerType | str``: the text must be a member. Taken as plain text,
    a misspelt scheduler passed the recipe check and failed in TrainingArguments without its key."""
    with pytest.raises(RecipeError, match=r"lr_scheduler_type: 'cosin' is not valid: .*cosine"):
        parse_arguments({**BASE, "lr_scheduler_type": "cosin"})


def test_a_value_that_fails_the_one_member_of_an_optional_setting_names_why():
    """``int | None`` has one member that can fail: its own message (must be an integer) is the
    error, not "fits none of int | None"."""
    with pytest.raises(RecipeError, match=r"data_seed must be an integer, got 'abc'"):
        parse_arguments({**BASE, "data_seed": "abc"})


def test_comma_text_is_a_list_without_empty_items():
    """``--losses ce,kd,`` (a trailing comma) and ``--report_to tensorboard,wandb``: the text is a
    list of its items; an empty item became a loss or an integration named ''. report_to, text or a
    list, takes comma text as a list, not as one integration named "tensorboard,wandb"."""
    from hf_rcka.cli.coercion import coerce

    assert coerce("ce, kd,", list[str], "losses") == ["ce", "kd"]
    assert coerce("tensorboard,wandb", str | list[str] | None, "report_to") == ["tensorboard", "wandb"]
    assert coerce("tensorboard", str | list[str] | None, "report_to") == "tensorboard"


def test_numbers_and_switches_written_as_text():
    """Text from the command line or YAML: yes/on are true; an integer setting takes "1e3" as 1000
    but refuses "1.5" (it trained with seed 1); a loss weight written "0.5" is the number 0.5."""
    from hf_rcka.cli.coercion import coerce

    assert coerce("yes", bool, "do_train") is True and coerce("On", bool, "do_train") is True
    assert coerce("1e3", int, "max_steps") == 1000
    with pytest.raises(RecipeError, match=r"seed must be an integer, got '1.5'"):
        parse_arguments({**BASE, "seed": "1.5"})
    _, _, args = parse_arguments({**BASE, "losses": [{"name": "ce", "weight": "0.5"}]})
    assert args.losses[0]["weight"] == 0.5 and isinstance(args.losses[0]["weight"], float)


def test_a_list_or_mapping_for_a_text_setting_is_refused():
    """``model_name_or_path: [a, b]`` was read as the text "['a', 'b']" and failed as a model name."""
    with pytest.raises(RecipeError, match=r"model_name_or_path must be a string, got \['a', 'b'\]"):
        parse_arguments({**BASE, "model_name_or_path": ["a", "b"]})


def test_both_layer_indices_of_a_pair_given_as_text_are_integers():
    """``--feature_pairs`` text gives each index as a string: the teacher's index too must become an
    integer (a string index reached the layer check as text)."""
    _, _, args = parse_arguments({**BASE, "feature_pairs": [{"student_layer": "1", "teacher_layer": "-2"}]})
    assert (args.feature_pairs[0]["student_layer"], args.feature_pairs[0]["teacher_layer"]) == (1, -2)


def test_a_record_this_version_cannot_read_is_no_recipe_to_compare(tmp_path):
    """A folder's distill_config.yaml that is no recipe of this version (another tool's list, a
    Latin-1 comment, broken YAML) is nothing to compare: the teacher, the checkpoint or the model
    it holds was refused with the record's error instead, a run the record does not describe."""
    from hf_rcka.cli.records import recorded_recipe

    for text in (b"- a list\n- of things\n", b"# caf\xe9\nhflip: 0.3\n", b"hflip: [0.3\n"):
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        (run / "checkpoint-2").mkdir(parents=True)
        (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
        (run / "distill_config.yaml").write_bytes(text)
        with pytest.raises(RecipeError):
            load_recipe(run / "distill_config.yaml")
        assert recorded_recipe(str(run)) is None, text
        assert recorded_recipe(str(run / "checkpoint-2")) is None, text


def test_a_launchers_mixed_precision_no_is_no_mixed_precision(monkeypatch):
    """accelerate's default config says mixed_precision: 'no' (and fp8 is none this run autocasts to):
    taken as it came, the run said "precision: no mixed precision" and its record held the key
    ``no: true``, which the record's rerun refused as an unknown recipe key."""
    from types import SimpleNamespace

    from hf_rcka.arguments import run_mixed_precision

    for value in ("no", "fp8"):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", value)
        assert run_mixed_precision(SimpleNamespace(bf16=False, fp16=False)) is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert run_mixed_precision(SimpleNamespace(bf16=False, fp16=False)) == "bf16"


def test_a_record_of_an_lr_base_run_holds_no_learning_rate_beside_it():
    """A recipe that sets lr_base leaves learning_rate to it: recorded at Trainer's default 5e-5
    beside lr_base, the record's rerun was refused ("learning_rate and lr_base are both given")."""
    from hf_rcka.arguments import left_out_defaults

    assert "learning_rate" not in left_out_defaults({"lr_base": 5e-4})
    assert left_out_defaults({})["learning_rate"] == 5e-5


def test_the_nan_filter_of_the_logged_loss_follows_fp16_when_unset(monkeypatch, tmp_path):
    """logging_nan_inf_filter unset is on under fp16 alone (the launcher's too): left None, Trainer
    read it as off, and an fp16 run's log showed the overflowing steps that loss scaling skips."""
    from hf_rcka import DistillationTrainingArguments

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True).logging_nan_inf_filter is False
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True).logging_nan_inf_filter is True
    assert DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                         logging_nan_inf_filter=False).logging_nan_inf_filter is False


def test_one_process_trains_on_one_gpu_however_many_it_sees(monkeypatch, tmp_path):
    """With several GPUs visible to one process, Trainer wraps the model in nn.DataParallel, whose
    threads share the feature capture and keep the losses' statistics on the first copy alone: the
    arguments count one device per process, and the batch lr_base scales to is that one's."""
    from transformers import TrainingArguments

    from hf_rcka import DistillationTrainingArguments

    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 4))
    args = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=8)
    assert args.n_gpu == 1 and args.train_batch_size == 8


# R4 (cli/recipe.py parse_cli_overrides): only text after the value is a comment, not the spaces after it
def test_a_flag_value_with_spaces_after_it_is_read_as_the_value():
    """A value with trailing spaces (a quoted shell variable, "$LR ") is whole: taken for a value followed
    by a YAML comment, --learning_rate '1e-4 ' was refused as ' #' and a comment."""
    assert parse_cli_overrides(["--learning_rate", "1e-4 ", "--seed", "3  "]) == {"learning_rate": 1e-4, "seed": 3}


# R16 (cli/recipe.py _plain): settings resolved to transformers' enums are recorded as their text
def test_a_record_of_enum_settings_is_written_and_read_back_as_their_text(tmp_path):
    """resolve_values gives lr_scheduler_type, save_strategy and optim as transformers' enums, which
    YAML's safe dumper cannot write: the run's record of how it ran failed to be written."""
    values = resolve_values({**BASE, "lr_scheduler_type": "cosine", "save_strategy": "steps", "optim": "adamw_torch"})
    dump_recipe(values, tmp_path / "distill_config.yaml")
    recorded = load_recipe(tmp_path / "distill_config.yaml")
    assert (recorded["lr_scheduler_type"], recorded["save_strategy"], recorded["optim"]) == ("cosine", "steps",
                                                                                             "adamw_torch")


# R18 (cli/recipe.py _check_accelerator_config): a text accelerator_config is a file that must be there
def test_an_accelerator_config_path_that_is_no_file_is_one_line(tmp_path):
    """A typo in the JSON file's path was a FileNotFoundError traceback from TrainingArguments."""
    with pytest.raises(RecipeError, match=r"accelerator_config '.*nope.json' is not a file: give the path of a JSON"):
        parse_arguments({**BASE, "accelerator_config": str(tmp_path / "nope.json")})


# R24 (cli/recipe.py load_recipe): an empty recipe file (or one of comments only) is a recipe of no settings
def test_an_empty_recipe_file_is_told_what_it_needs(tmp_path):
    """A recipe file still empty (or only commented) was an AttributeError traceback on None, not the
    recipe's missing keys."""
    recipe = tmp_path / "empty.yaml"
    for text in ("", "# to be written\n"):
        recipe.write_text(text)
        assert load_recipe(recipe) == {}
        with pytest.raises(RecipeError, match="the recipe needs 'model_name_or_path'"):
            parse_recipe_file(recipe)


# --------------------------------------------------------------------------------------------
# Round 37 (a fuzzer of the shipped recipes): values the checks let through
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    ({"label_column_name": None}, r"^label_column_name must be text, got null .*leave label_column_name out for its "
                                  r"default$"),
    ({"teacher_label_mapping": None}, r"^teacher_label_mapping must be text, got null"),
    ({"losses": [{"name": "rcka", "kernel": None}]}, r"^losses\[0\]\.kernel must be text, got null"),
])
def test_a_null_text_setting_is_refused_not_read_as_the_text_None(values, message):
    """``label_column_name: ~`` (or ``--label_column_name null``) was the text 'None': the run refused a
    column 'None' once the dataset had loaded, and other settings said "got 'None'" for a null."""
    with pytest.raises(RecipeError, match=message):
        resolve_values({**BASE, **values})


@pytest.mark.parametrize("values, message", [
    # numpy's seeding took it, after the checks: a ValueError traceback (exit 1) once the output folder was taken
    ({"seed": -1}, r"^seed must be in \[0, 2\*\*32 - 1\], got -1$"),
    ({"seed": 2**32}, r"^seed must be in \[0, 2\*\*32 - 1\], got 4294967296$"),
    # every weight NaN at the first step: found as a divergence after training
    ({"learning_rate": float("inf")}, r"^learning_rate must be >= 0 and finite, got inf$"),
    ({"weight_decay": float("inf")}, r"^weight_decay must be >= 0 and finite, got inf$"),
    # Trainer's ceil(inf * steps per epoch): an OverflowError traceback after the models and data had loaded
    ({"num_train_epochs": float("inf")}, r"^num_train_epochs must be >= 0 and finite, got inf$"),
    # transformers' int(inf): an OverflowError traceback
    ({"logging_steps": float("inf")}, r"^logging_steps must be a number of steps, .*got inf$"),
    ({"save_steps": float("inf")}, r"^save_steps must be a number of steps, .*got inf$"),
    # logged, evaluated or saved at other steps (or never), without a word
    ({"logging_steps": float("nan")}, r"^logging_steps must be .*got nan$"),
    ({"eval_strategy": "steps", "eval_steps": -0.5}, r"^eval_steps must be .*got -0.5$"),
    # lr_base scaled to an infinite or NaN rate
    ({"lr_base": float("inf")}, r"^lr_base must be > 0 and finite and lr_base_size >= 1, got inf and 256$"),
    ({"lr_base": float("nan")}, r"^lr_base must be > 0 and finite and lr_base_size >= 1, got nan and 256$"),
])
def test_values_outside_what_the_run_can_use_are_refused_before_anything_loads(values, message):
    """Each passed ``build_arguments`` and failed later: a traceback, a divergence after training, or a
    schedule of logs, evaluations and checkpoints other than the recipe's."""
    with pytest.raises(RecipeError, match=message):
        parse_arguments({**BASE, **values})


def test_the_largest_seed_numpy_takes_is_accepted():
    assert parse_arguments({**BASE, "seed": 2**32 - 1})[2].seed == 2**32 - 1


@pytest.mark.parametrize("text, message", [
    ("1: 2\n", r"^recipe key 1 is not a name"),
    ("true: x\n", r"^recipe key True is not a name"),
    ("? [a, b]\n: 2\n", r"is not valid YAML at line \d+, column 3: a key must be a name, got \['a', 'b'\]$"),
])
def test_a_key_that_is_not_a_name_is_one_line_not_a_traceback(tmp_path, text, message):
    """A TypeError traceback: the unknown key's close matches (difflib) could not read a number, and
    a list key was unhashable in the check for keys given twice."""
    path = tmp_path / "recipe.yaml"
    path.write_text("model_name_or_path: config:vit\noutput_dir: out\ndataset_name: builtin:digits\n" + text)
    with pytest.raises(RecipeError, match=message):
        parse_recipe_file(path)


def test_a_loss_weight_of_true_names_no_flag_that_does_not_exist():
    """The hint for a bare flag named ``--losses[0].weight``, which no command line takes."""
    with pytest.raises(RecipeError, match=r"^losses\[0\]\.weight must be a number, got True$"):
        resolve_values({**BASE, "losses": [{"name": "ce", "weight": True}]})


@pytest.mark.parametrize("written", ["no", "off", "false"])
def test_accelerator_config_settings_are_read_by_their_type(written):
    """``accelerator_config: {split_batches: no}`` (text under YAML 1.2, as a quoted "false" is) was kept
    as the text, a true value: the batches were split over the processes and the global batch (and
    lr_base's rate) computed for that, the opposite of what the recipe said."""
    values = resolve_values({**BASE, "accelerator_config": {"split_batches": written, "dispatch_batches": None}})
    assert values["accelerator_config"] == {"split_batches": False, "dispatch_batches": None}
    assert parse_arguments({**BASE, "accelerator_config": {"split_batches": written}})[2].accelerator_config \
        .split_batches is False
    with pytest.raises(RecipeError, match=r"^accelerator_config\.even_batches must be true or false, got 'maybe'$"):
        resolve_values({**BASE, "accelerator_config": {"even_batches": "maybe"}})


def test_an_optim_args_value_the_optimizer_cannot_read_is_one_line():
    """``optim_args: momentum=abc`` was a ValueError traceback (float('abc')) in the checks before loading."""
    from hf_rcka.cli.preflight import check_schedule_and_optimizer

    _, _, args = parse_arguments({**BASE, "optim": "sgd", "optim_args": "momentum=abc"})
    with pytest.raises(RecipeError, match=r"^optim 'sgd' with optim_args 'momentum=abc': could not convert string to "
                                          r"float: 'abc'$"):
        check_schedule_and_optimizer(args)


def test_a_gradient_checkpointing_kwarg_written_as_yes_or_no_is_refused():
    """``gradient_checkpointing_kwargs: {use_reentrant: no}`` reached torch's checkpoint as the text 'no',
    a true value: the reentrant variant ran, the opposite of the recipe."""
    with pytest.raises(RecipeError, match=r"^gradient_checkpointing_kwargs use_reentrant: 'no' is text, which torch "
                                          r"takes as true: write false \(YAML 1.2"):
        resolve_values({**BASE, "gradient_checkpointing_kwargs": {"use_reentrant": "no"}})
    assert resolve_values({**BASE, "gradient_checkpointing_kwargs": {"use_reentrant": False}})[
        "gradient_checkpointing_kwargs"] == {"use_reentrant": False}
