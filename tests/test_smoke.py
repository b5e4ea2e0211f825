"""``--smoke_test true``: every recipe in recipes/ runs end to end offline, and the pieces behave.

The parametrized test is the promise made to users: each recipe trains 2 steps on synthetic
images with its own architectures (random weights), losses and feature pairs, then saves a model
that plain transformers reloads. Recipes whose teacher is the user's own model get what a user
would have: the digits distillation uses the folder the digits teacher recipe writes, and the
CIFAR-100 PCKA recipe finds its teacher's config in a local Hugging Face cache (a fake one here).
"""

import json
import logging
import os
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType, PrecisionType
from transformers import ViTConfig, ViTImageProcessor

from hf_rcka.cli.main import main
from hf_rcka.errors import RecipeError
from hf_rcka.cli.recipe import resolve_values
from hf_rcka.cli.smoke import SMOKE_BATCH, SMOKE_STEPS, plan_smoke_test, smoke_output_dir
from hf_rcka.recipe_specs import loss_spec, resolved_specs
from hf_rcka.cli.smoke_check import SmokeTestFailure, check_output
from hf_rcka.cli.smoke_data import SyntheticData, class_names, write_synthetic_dataset

ROOT = Path(__file__).parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
DIGITS_TEACHER_RECIPE = "supervised-resnet10t-digits.yaml"
# Recipes whose teacher a user trains first; the value says what the test gives them instead.
TEACHER_FROM_DIGITS_RUN = {"rcka-vit_tiny_from_resnet10t-digits.yaml"}
TEACHER_FROM_HF_CACHE = {"pcka-resnet18_from_vit_base-cifar100.yaml": 100}  # its classes (CIFAR-100)
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
# A RegNetY-16GF or ViT-B/16 teacher at 224 px: 40-60 CPU-seconds each; `-m "not slow"` leaves them out.
SLOW = {
    "deit_from_regnet.yaml", "kd-deit_small_from_regnety160-imagenet.yaml",
    "deit_token-deit_small_distilled_from_regnety160-imagenet.yaml", "pcka-resnet18_from_vit_base-cifar100.yaml",
}


def _smoke(path: Path, output_dir: Path, capsys, *extra: str) -> str:
    assert main([str(path), "--smoke_test", "true", "--output_dir", str(output_dir), *extra]) == 0
    captured = capsys.readouterr()
    assert "is at chance" not in captured.err  # 2 steps from random weights: at chance by design, not a warning
    return captured.out


def _cache_config(cache: Path, repo_id: str, num_labels: int) -> None:
    """What ``hf download REPO config.json preprocessor_config.json`` leaves in a cache."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    ViTConfig(num_labels=num_labels, architectures=["ViTForImageClassification"]).save_pretrained(snapshot)
    ViTImageProcessor().save_pretrained(snapshot)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """The digits teacher recipe's smoke run: (its output folder, what it printed)."""
    import io
    from contextlib import redirect_stdout

    output_dir = tmp_path_factory.mktemp("digits") / "teacher"
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main([str(ROOT / "recipes" / DIGITS_TEACHER_RECIPE), "--smoke_test", "true",
                     "--output_dir", str(output_dir)]) == 0
    return Path(smoke_output_dir(str(output_dir))), printed.getvalue()


def test_every_recipe_is_covered_and_the_headline_is_there():
    names = {p.name for p in RECIPES}
    assert "deit_from_regnet.yaml" in names
    assert (TEACHER_FROM_DIGITS_RUN | set(TEACHER_FROM_HF_CACHE) | {DIGITS_TEACHER_RECIPE}) <= names


def _recipe_marks(path: Path) -> list:
    """Full-size recipes are slow; the two digits recipes share the module's trained teacher, so
    pytest-xdist (``--dist loadgroup``) runs them in one worker, which builds it once."""
    if path.name in SLOW:
        return [pytest.mark.slow]
    if path.name in TEACHER_FROM_DIGITS_RUN | {DIGITS_TEACHER_RECIPE}:
        return [pytest.mark.xdist_group("digits_teacher")]
    return []


@pytest.mark.parametrize("path", [pytest.param(p, marks=_recipe_marks(p)) for p in RECIPES], ids=lambda p: p.stem)
def test_recipe_smoke_tests_offline(path, tmp_path, capsys, request):
    output_dir = tmp_path / "run"
    if path.name == DIGITS_TEACHER_RECIPE:
        smoke_dir, printed = request.getfixturevalue("digits_teacher")
    else:
        extra = []
        if path.name in TEACHER_FROM_DIGITS_RUN:
            extra = ["--teacher_model_name_or_path", str(request.getfixturevalue("digits_teacher")[0])]
        if path.name in TEACHER_FROM_HF_CACHE:
            teacher = yaml.safe_load(path.read_text())["teacher_model_name_or_path"]
            _cache_config(request.getfixturevalue("hf_cache"), teacher, TEACHER_FROM_HF_CACHE[path.name])
        printed = _smoke(path, output_dir, capsys, *extra)
        smoke_dir = tmp_path / "run-smoke"
        assert not output_dir.exists(), "a smoke test never writes into the recipe's output_dir"
    assert "smoke test passed" in printed and f"trained {SMOKE_STEPS} steps" in printed
    assert "reloads with AutoModelForImageClassification" in printed
    assert {"config.json", "model.safetensors", "README.md", "distill_config.yaml", "all_results.json"} <= {
        p.name for p in smoke_dir.iterdir()
    }
    recorded = yaml.safe_load((smoke_dir / "distill_config.yaml").read_text())
    recipe = yaml.safe_load(path.read_text())
    assert recorded["smoke_test"] is True
    # the recipe's losses, every option written out (a later default must not change a rerun)
    assert recipe.get("losses") is None or recorded["losses"] == resolved_specs([loss_spec(spec)
                                                                                 for spec in recipe["losses"]])
    assert recorded.get("feature_pairs") == recipe.get("feature_pairs"), "the recipe's own feature pairs run"
    assert recorded.get("bf16", False) is False and recorded.get("fp16", False) is False
    # Batch-relational CKA needs more than two samples a batch, or it is identically 1 (zero loss).
    first_log = json.loads((smoke_dir / "trainer_state.json").read_text())["log_history"][0]
    for term in ("rcka_intra_loss", "rcka_inter_loss", "feature_cka_loss"):
        assert first_log.get(term, 1.0) > 1e-4, f"{term} did no work in the smoke run: {first_log}"


def test_a_hub_model_that_is_not_cached_is_one_clear_error_before_anything_runs(tmp_path, hf_cache, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": "someone/not-cached-vit", "dataset_name": "ILSVRC/imagenet-1k",
        "output_dir": str(tmp_path / "out"),
    }))
    assert main([str(recipe), "--smoke_test", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: smoke test: model_name_or_path 'someone/not-cached-vit'")
    assert "hf download someone/not-cached-vit config.json preprocessor_config.json" in err[0]
    assert "timm/<architecture>" in err[0]
    assert not (tmp_path / "out-smoke").exists() and not (tmp_path / "out").exists()


def test_a_cached_config_without_its_processor_names_the_missing_file(tmp_path, hf_cache):
    _cache_config(hf_cache, "someone/vit", num_labels=3)
    plan = plan_smoke_test(_resolved(tmp_path, model_name_or_path="someone/vit"))
    assert Path(plan.recipe["model_name_or_path"]) == hf_cache / "models--someone--vit" / "snapshots" / FAKE_COMMIT
    next((hf_cache / "models--someone--vit" / "snapshots").iterdir()).joinpath("preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match=r"lacks its preprocessor_config\.json.*hf download someone/vit "
                                         r"preprocessor_config\.json"):
        plan_smoke_test(_resolved(tmp_path, model_name_or_path="someone/vit"))


def test_a_cached_snapshot_the_run_accepts_is_accepted_by_the_smoke_test(tmp_path, hf_cache):
    """The smoke test asked every snapshot but a ``model_type: timm_wrapper`` one for a
    preprocessor_config.json, where the run's preflight takes a processor_config.json too and needs
    none for a timm config.json (``architecture``, no model_type): the smoke test refused caches the
    run read."""
    from unittest.mock import patch

    from hf_rcka.cli.model_sources import check_model_source
    from hf_rcka.cli.smoke import offline_model_name

    for name, files in {"someone/timm-net": {"config.json": json.dumps({"architecture": "resnet18", "num_classes": 3})},
                        "someone/vit-proc": {"config.json": json.dumps({"model_type": "vit"}),
                                             "processor_config.json": "{}"}}.items():
        repo = hf_cache / f"models--{name.replace('/', '--')}"
        snapshot = repo / "snapshots" / FAKE_COMMIT
        snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(FAKE_COMMIT)
        for file, text in {**files, "model.safetensors": ""}.items():
            (snapshot / file).write_text(text)
        with patch("huggingface_hub.constants.HF_HUB_OFFLINE", True):
            check_model_source("teacher_model_name_or_path", name)  # the run's own check
        assert offline_model_name("teacher_model_name_or_path", name, []) == str(snapshot)


def test_a_cached_pretrained_timm_teacher_is_built_from_its_cached_config(tmp_path, hf_cache):
    """A ``timm/<arch>`` teacher trained on the recipe's classes (its Hub repository cached, as the
    real run loads it) was built from timm's registry, with 1000 unnamed classes, and the smoke test
    refused it as not matching the dataset's classes, which it assumed were 10."""
    repo = hf_cache / "models--timm--resnet10t.c3_in1k"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": "resnet10t", "num_classes": 3, "label_names": ["cat", "dog", "fox"],
        "pretrained_cfg": {"input_size": [3, 64, 64], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5],
                           "crop_pct": 1.0, "interpolation": "bicubic"}}))
    plan = plan_smoke_test(_resolved(tmp_path, dataset_name="someone/pets",
                                     teacher_model_name_or_path="timm/resnet10t.c3_in1k"))
    assert Path(plan.recipe["teacher_model_name_or_path"]) == snapshot
    assert list(plan.data.label_names) == ["cat", "dog", "fox"]
    # not cached: timm's registry builds it, as before
    plan = plan_smoke_test(_resolved(tmp_path, dataset_name="someone/pets",
                                     teacher_model_name_or_path="timm/resnet14t.c3_in1k"))
    assert plan.recipe["teacher_model_name_or_path"] == "timm/resnet14t.c3_in1k"


def _resolved(tmp_path, **values):
    base = {"model_name_or_path": "timm/resnet18", "dataset_name": "ILSVRC/imagenet-1k",
            "output_dir": str(tmp_path / "out")}
    return resolve_values({**base, **values})


def test_plan_overrides_only_what_a_short_offline_cpu_run_needs(tmp_path, monkeypatch):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    recipe = _resolved(
        tmp_path, bf16=True, torch_compile=True, per_device_train_batch_size=128, gradient_accumulation_steps=3,
        dataloader_num_workers=8, report_to="tensorboard", push_to_hub=True, save_strategy="steps",
        save_steps=5000, eval_strategy="epoch", learning_rate="5e-4", label_smoothing_factor=0.1,
    )
    plan = plan_smoke_test(recipe)
    values = plan.recipe
    assert values["output_dir"] == str(tmp_path / "out-smoke")
    assert smoke_output_dir(values["output_dir"]) == values["output_dir"], "a smoke folder gets no second suffix"
    assert values["bf16"] is False and values["torch_compile"] is False and values["use_cpu"] is True
    assert any("bf16" in note and "float32" in note for note in plan.notes)
    # a backend or a mode alone turns compiling on in transformers: the smoke test compiled with inductor
    mode_only = plan_smoke_test(_resolved(tmp_path, torch_compile_mode="default"))
    assert (mode_only.recipe["torch_compile"], mode_only.recipe["torch_compile_backend"],
            mode_only.recipe["torch_compile_mode"]) == (False, None, None)
    assert any(note.startswith("torch_compile_mode switched off") for note in mode_only.notes)
    assert (values["max_steps"], values["per_device_train_batch_size"], values["dataloader_num_workers"]) == (
        SMOKE_STEPS, SMOKE_BATCH, 0)
    assert values["save_steps"] == SMOKE_STEPS, "a step-based checkpoint is written within the smoke run"
    assert values["report_to"] == "none" and values["push_to_hub"] is False and values["student_from_scratch"]
    # the recipe's own training settings are untouched
    assert values["learning_rate"] == pytest.approx(5e-4) and values["label_smoothing_factor"] == 0.1
    assert values["gradient_accumulation_steps"] == 3 and values["eval_strategy"].value == "epoch"
    data = plan.data
    assert len(data.label_names) == 1000 and data.resolution == (224, 224)
    assert data.num_train == SMOKE_BATCH * 3 * SMOKE_STEPS, "one epoch is exactly the smoke run's steps"
    assert values["dataset_name"] == str(data.folder) and values["train_dir"] is None


def test_the_smoke_plan_starts_evaluating_within_its_steps(tmp_path):
    """A recipe's eval_delay is for its own length: past the smoke run's 2 steps, load_best_model_at_end
    (refused when no evaluation picks a best checkpoint) failed the smoke test of a recipe that trains."""
    recipe = _resolved(tmp_path, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                       eval_delay=1.5, num_train_epochs=2)
    assert plan_smoke_test(recipe).recipe["eval_delay"] == 0


def test_the_smoke_test_checks_the_trackers_the_real_run_logs_to(tmp_path, monkeypatch):
    """It logs to none itself; a misspelled tracker, or one not installed, passed the smoke test unsaid."""
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_wandb_available", lambda: False)
    notes = plan_smoke_test(_resolved(tmp_path, report_to="wandb")).notes
    assert "report_to: 'wandb' is not available: pip install wandb here; the real run needs it" in notes
    with pytest.raises(RecipeError, match="unknown integration 'tensorbord'"):
        plan_smoke_test(_resolved(tmp_path, report_to="tensorbord"))


def test_with_cuda_the_recipes_mixed_precision_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = plan_smoke_test(_resolved(tmp_path, bf16=True, torch_compile=True))
    assert plan.recipe["bf16"] is True and plan.recipe["torch_compile"] is True
    assert not plan.recipe.get("use_cpu") and not plan.notes


def test_class_names_come_from_the_table_a_folder_or_the_teacher(tmp_path):
    for name in ("b", "a"):
        (tmp_path / "train" / name).mkdir(parents=True)
    known = {"some/dataset": 4}
    assert class_names("some/dataset", None, None, known, 10) == (["class_0", "class_1", "class_2", "class_3"], None)
    assert class_names(None, str(tmp_path / "train"), None, known, 10) == (["a", "b"], None)
    assert class_names("mine/unknown", None, ["cat", "dog"], known, 10) == (["cat", "dog"], None)
    assert class_names("some/dataset", None, ["w", "x", "y", "z"], known, 10)[0] == ["w", "x", "y", "z"]
    names, note = class_names("mine/unknown", None, None, known, 10)
    assert len(names) == 10 and "unknown" in note


def test_synthetic_data_loads_as_a_dataset_with_the_recipes_columns(tmp_path):
    data = SyntheticData(tmp_path / "d", "img", "fine_label", ("x", "y", "z"), (32, 40), num_train=4, num_eval=2)
    write_synthetic_dataset(data)
    raw = datasets.load_dataset(str(data.folder))
    assert {name: len(split) for name, split in raw.items()} == {"train": 4, "validation": 2}
    assert raw["train"].features["fine_label"].names == ["x", "y", "z"]
    image = raw["validation"][0]["img"]
    assert (image.height, image.width) == data.image_size and image.height > 32 and image.width > image.height
    assert image.format == "JPEG"


def test_synthetic_data_is_written_beside_another_writers_file_of_the_same_process_id(tmp_path):
    """The processes of a launch over several machines (or containers) sharing one disk each write
    the seeded data; a temporary file named by the PID alone was another's on an equal PID."""
    data = SyntheticData(tmp_path / "d", "image", "label", ("a", "b"), (16, 16), num_train=4, num_eval=2)
    others = [data.folder / f".{split}.{os.getpid()}.partial" for split in ("train", "validation")]
    for other in others:  # another machine's process, writing now
        other.mkdir(parents=True)
    write_synthetic_dataset(data)
    assert all(other.is_dir() for other in others)
    assert sorted(p.name for p in data.folder.iterdir() if not p.is_dir()) == ["train.parquet", "validation.parquet"]


def test_synthetic_data_gets_the_umasks_permissions(tmp_path):
    """Written through mkstemp's file, the data was readable by its owner alone (0600), where every
    other file of the output folder is as the umask allows."""
    from hf_rcka.file_writes import _UMASK

    data = SyntheticData(tmp_path / "d", "image", "label", ("a", "b"), (16, 16), num_train=4, num_eval=2)
    write_synthetic_dataset(data)
    for split in ("train", "validation"):
        assert (data.folder / f"{split}.parquet").stat().st_mode & 0o777 == 0o666 & ~_UMASK


def test_check_output_fails_when_fewer_steps_ran_or_the_card_is_wrong(tmp_path):
    data = SyntheticData(tmp_path / "d", "image", "label", ("a", "b"), (16, 16), num_train=4, num_eval=2)
    (tmp_path / "distill_config.yaml").write_text("smoke_test: true\n")
    (tmp_path / "README.md").write_text("---\nlibrary_name: transformers\ntags: [hf_rcka]\n---\n# x\n")
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 0, "log_history": []}))
    with pytest.raises(SmokeTestFailure, match="knowledge-distillation"):
        check_output(tmp_path, data, 2, do_train=False, do_eval=False, has_teacher=True)
    with pytest.raises(SmokeTestFailure, match="trained 0 optimiser steps, not 2"):
        check_output(tmp_path, data, 2, do_train=True, do_eval=False, has_teacher=False)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_configs_parse_as_accelerate_configs(path):
    _check_accelerate_config(path)


def test_the_accelerate_config_check_catches_a_misspelt_fsdp_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    config = yaml.safe_load((ROOT / "recipes" / "accelerate" / "fsdp_8gpu_bf16.yaml").read_text())
    config["fsdp_config"]["fsdp_min_num_param"] = config["fsdp_config"].pop("fsdp_min_num_params")
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(AssertionError, match="fsdp_min_num_param"):
        _check_accelerate_config(bad)


def _check_accelerate_config(path: Path) -> None:
    """What ``accelerate launch --config_file`` reads: accelerate's own loader (it rejects unknown
    top-level keys), valid enums, and fsdp_config keys that are ``accelerate launch`` options."""
    config = load_config_from_file(str(path))
    assert isinstance(config.distributed_type, DistributedType)
    assert str(config.mixed_precision) in {p.value for p in PrecisionType}
    assert config.num_processes >= 1 and config.num_machines >= 1
    options = {action.dest for action in launch_command_parser()._actions}
    unknown = sorted(set(config.fsdp_config or {}) - options)
    assert not unknown, f"{path.name}: fsdp_config keys {unknown} are not accelerate launch options"


def test_a_trained_timm_teachers_class_names_are_read_for_the_smoke_data(tmp_path):
    """A saved timm model's config.json names its classes in label_names, with no id2label: the smoke
    test of the demo's distillation recipe failed on its own trained teacher."""
    from hf_rcka.cli.smoke import _teacher_labels

    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet10t", "label_names": ["0", "1", "2"]}))
    assert _teacher_labels({"teacher_model_name_or_path": str(tmp_path)}) == ["0", "1", "2"]


def test_a_teachers_id2label_gives_the_smoke_classes_in_id_order(tmp_path):
    """id2label's keys are strings: a mutant that sorted them as text ('10' before '2') passed every
    test, and the smoke data of a teacher of 12 classes named them in another order than its ids."""
    from hf_rcka.cli.smoke import _teacher_labels

    names = [f"class {i}" for i in range(12)]
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {str(i): name for i, name in enumerate(names)}}))
    assert _teacher_labels({"teacher_model_name_or_path": str(tmp_path)}) == names


def test_every_process_of_a_smoke_launch_gets_its_own_batches(tmp_path, monkeypatch):
    """Under torchrun each process trains SMOKE_STEPS batches and evaluates one full batch: a mutant
    that wrote one process's evaluation images for all passed every test, and each of 2 processes
    then evaluated half a batch (2 images: every relational term is degenerate there)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    data = plan_smoke_test(_resolved(tmp_path)).data
    assert (data.num_train, data.num_eval) == (SMOKE_BATCH * SMOKE_STEPS * 2, SMOKE_BATCH * 2)


def test_a_real_run_in_the_smoke_folder_is_never_replaced(tmp_path):
    """A recipe whose output_dir ends in -smoke had its trained model set aside by one smoke test
    and deleted by the next."""
    folder = tmp_path / "my-smoke"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "distill_config.yaml").write_text("model_name_or_path: timm/resnet18\n")
    with pytest.raises(RecipeError, match="holds a run that is not a smoke test"):
        plan_smoke_test(_resolved(tmp_path, output_dir=str(folder)))
    with pytest.raises(RecipeError, match="holds a run that is not a smoke test"):
        plan_smoke_test(_resolved(tmp_path, output_dir=str(tmp_path / "my")))  # my -> my-smoke
    (folder / "distill_config.yaml").write_text("model_name_or_path: timm/resnet18\nsmoke_test: true\n")
    assert plan_smoke_test(_resolved(tmp_path, output_dir=str(folder))).recipe["output_dir"] == str(folder)
    # a set-aside cut short (a kill, Ctrl-C) moved the earlier smoke test's record into _replacing/: every
    # later smoke test was refused; a real run's record there still is
    (folder / "_replacing").mkdir()
    (folder / "distill_config.yaml").rename(folder / "_replacing" / "distill_config.yaml")
    assert plan_smoke_test(_resolved(tmp_path, output_dir=str(folder))).recipe["output_dir"] == str(folder)
    (folder / "_replacing" / "distill_config.yaml").write_text("model_name_or_path: timm/resnet18\n")
    with pytest.raises(RecipeError, match="holds a run that is not a smoke test"):
        plan_smoke_test(_resolved(tmp_path, output_dir=str(folder)))


def test_a_real_run_whose_record_says_smoke_test_false_is_never_replaced(tmp_path):
    """A recipe that spells out ``smoke_test: false`` (turned on with ``--smoke_test true`` for a check)
    records it: a mutant that took any recorded smoke_test (not only true) for a smoke test's passed
    every test, and the smoke test set aside a trained model in a folder ending in -smoke, which the
    next one deleted."""
    from hf_rcka.cli.recipe import dump_recipe

    folder = tmp_path / "my-smoke"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    recorded = _resolved(tmp_path, output_dir=str(folder), smoke_test=False)
    dump_recipe(recorded, folder / "distill_config.yaml")
    with pytest.raises(RecipeError, match="holds a run that is not a smoke test"):
        plan_smoke_test(_resolved(tmp_path, output_dir=str(folder)))


def test_the_smoke_test_never_resumes_the_recipes_checkpoint(tmp_path):
    """A recipe that resumes a real run's checkpoint: the smoke test trains its 2 steps from random
    weights in its own folder; a mutant that kept resume_from_checkpoint passed every test (the
    smoke run then loaded the real run's checkpoint and its trainer state, past its 2 steps)."""
    checkpoint = tmp_path / "out" / "checkpoint-500"
    recipe = _resolved(tmp_path, resume_from_checkpoint=str(checkpoint))
    assert recipe["resume_from_checkpoint"] == str(checkpoint)
    assert plan_smoke_test(recipe).recipe["resume_from_checkpoint"] is None


def test_the_launchers_fp16_is_switched_off_for_the_cpu_smoke_test(tmp_path, capsys, monkeypatch, caplog):
    """fp16 from the launcher is refused on a CPU (it trained in float32 unsaid); the smoke test, a
    CPU run of a GPU recipe, runs in float32 and says so, as it does for the recipe's own fp16."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with caplog.at_level(logging.WARNING):
        printed = _smoke(ROOT / "recipes" / "supervised-resnet10t-digits.yaml", tmp_path / "run", capsys)
    assert "smoke test passed" in printed
    assert "the launcher's fp16 mixed precision switched off" in caplog.text


def _two_stage_resnet(num_labels=3, num_channels=3):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic",
        num_labels=num_labels))


def _smoke_folder(tmp_path, state):
    (tmp_path / "distill_config.yaml").write_text("smoke_test: true\n")
    (tmp_path / "README.md").write_text("---\nlibrary_name: transformers\ntags: [knowledge-distillation]\n---\n# x\n")
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))


# SC2 (cli/smoke_check.py _training_line): a run that logged no training loss fails the smoke check
def test_a_smoke_run_that_logged_no_loss_fails(tmp_path):
    from hf_rcka.cli.smoke_check import SmokeTestFailure, _training_line

    _smoke_folder(tmp_path, {"global_step": 2, "log_history": [{"eval_loss": 1.0}]})
    with pytest.raises(SmokeTestFailure, match="training losses are missing"):
        _training_line(tmp_path, 2)


def test_a_smoke_run_whose_loss_went_nan_fails(tmp_path):
    """A mutant that checked only that some loss was logged passed every test: a recipe whose loss
    is NaN (a bad learning rate, an fp16 overflow) passed its smoke test."""
    from hf_rcka.cli.smoke_check import SmokeTestFailure, _training_line

    _smoke_folder(tmp_path, {"global_step": 2, "log_history": [{"loss": 2.3}, {"loss": float("nan")}]})
    with pytest.raises(SmokeTestFailure, match="not finite"):
        _training_line(tmp_path, 2)


# SC1 (cli/smoke_check.py _reload_line): a reloaded model with the wrong number of classes fails
def test_a_reloaded_model_with_other_classes_than_the_data_fails(tmp_path):
    from hf_rcka.cli.smoke_check import SmokeTestFailure, _reload_line
    from hf_rcka.cli.smoke_data import SyntheticData, write_synthetic_dataset
    from transformers import ViTImageProcessor

    data = SyntheticData(tmp_path / "d", "image", "label", ("a", "b"), (16, 16), num_train=4, num_eval=2)
    write_synthetic_dataset(data)
    out = tmp_path / "out"
    _two_stage_resnet(num_labels=2).save_pretrained(out)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(out)
    assert "logits (2, 2)" in _reload_line(out, data)
    _two_stage_resnet(num_labels=3).save_pretrained(out)
    with pytest.raises(SmokeTestFailure, match=r"logits \(2, 3\) \(expected \(2, 2\)"):
        _reload_line(out, data)


def test_the_smoke_classes_of_a_train_dir_are_its_class_folders_alone(tmp_path):
    """A file beside the class folders (a README, a labels list) was counted as a class: the smoke
    data had one class more than the run reads, and its heads and label checks another count."""
    for name in ("b", "a"):
        (tmp_path / "train" / name).mkdir(parents=True)
    (tmp_path / "train" / "README.txt").write_text("two classes\n")
    assert class_names(None, str(tmp_path / "train"), None, {}, 10) == (["a", "b"], None)


def test_the_smoke_classes_leave_out_the_folders_a_run_skips(tmp_path):
    """Jupyter's .ipynb_checkpoints and a zip's __MACOSX beside the class folders were counted as
    classes: the smoke data had 4 classes where the run reads 2 (class_folders), and its heads and
    label checks (a teacher of 2 classes) another count than the run's."""
    from PIL import Image

    from hf_rcka.data.image_folders import class_folders

    train = tmp_path / "train"
    for name in ("b", "a"):
        (train / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(train / name / "x.jpg")
    for name in (".ipynb_checkpoints", "__MACOSX"):
        (train / name).mkdir()
    assert class_folders(str(train)) == ["a", "b"]
    assert class_names(None, str(train), None, {}, 10) == (["a", "b"], None)


def test_a_train_dir_that_is_missing_or_holds_no_class_folders_is_said(tmp_path):
    """A train_dir not on this machine (the data comes later) failed the smoke test with
    FileNotFoundError instead of assuming the default count; and an empty one assumed it unsaid."""
    names, note = class_names(None, str(tmp_path / "not-here"), None, {}, 10)
    assert names == [f"class_{i}" for i in range(10)] and "unknown offline" in note
    (tmp_path / "empty").mkdir()
    names, note = class_names(None, str(tmp_path / "empty"), None, {}, 7)
    assert len(names) == 7 and note == f"{tmp_path / 'empty'} has no class folders: 7 classes assumed"


def test_a_teachers_names_of_another_count_are_not_the_smoke_classes(tmp_path):
    """The dataset's count wins: a teacher of 5 classes named the 4 classes of a known dataset with
    its own 5 names, and the smoke data had the teacher's count, not the dataset's."""
    known = {"some/dataset": 4}
    assert class_names("some/dataset", None, ["a", "b", "c", "d", "e"], known, 10) == (
        ["class_0", "class_1", "class_2", "class_3"], None)
    assert class_names("some/dataset", None, ["a", "b", "c"], known, 10)[0] == [f"class_{i}" for i in range(4)]


def test_the_synthetic_data_is_the_same_on_every_process(tmp_path):
    """Every process of a launch writes the data (the last replace wins): unseeded, each wrote other
    images and labels, and a process could read another's; and every class is drawn."""
    first, again = (SyntheticData(tmp_path / d, "image", "label", ("a", "b"), (16, 16), num_train=24, num_eval=2)
                    for d in ("one", "two"))
    write_synthetic_dataset(first)
    write_synthetic_dataset(again)
    one, two = (datasets.load_dataset(str(d.folder))["train"] for d in (first, again))
    assert one["label"] == two["label"] and set(one["label"]) == {0, 1}
    assert [a.tobytes() for a in one["image"]] == [b.tobytes() for b in two["image"]]


def test_the_students_resolution_is_read_as_height_and_width_in_order_of_precedence(tmp_path):
    """A recipe's image_size [height, width] was read as (width, height), and the student's
    config overrides won over the recipe's image_size; a processor of no fixed size ended the
    smoke test with a traceback instead of a note."""
    import transformers

    from hf_rcka.cli.smoke_data import student_resolution

    values = {"model_name_or_path": str(tmp_path / "student"), "image_size": [32, 48],
              "student_config_overrides": {"image_size": 64}}
    assert student_resolution(values, 224) == ((32, 48), None)
    assert student_resolution({**values, "image_size": None}, 224) == ((64, 64), None)
    assert student_resolution({**values, "image_size": None, "student_config_overrides": {"img_size": [40, 24]}},
                              224) == ((40, 24), None)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 40}, crop_pct=None).save_pretrained(
        tmp_path / "student")  # the output size follows each image's aspect
    size, note = student_resolution({"model_name_or_path": str(tmp_path / "student")}, 224)
    assert size == (224, 224) and note.startswith("student resolution unknown (") and note.endswith("224 px images")


def test_a_folder_without_images_beside_class_folders_is_no_smoke_class(tmp_path):
    """A README-only or empty folder beside class folders of images is no class of the run
    (class_folders warns of it): the smoke data had 4 classes where the run reads 2."""
    from PIL import Image

    from hf_rcka.data.image_folders import class_folders

    train = tmp_path / "train"
    for name in ("b", "a"):
        (train / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(train / name / "x.jpg")
    (train / "misc").mkdir()
    (train / "misc" / "README.txt").write_text("notes")
    (train / "empty").mkdir()
    assert class_folders(str(train)) == ["a", "b"]
    assert class_names(None, str(train), None, {}, 10) == (["a", "b"], None)
