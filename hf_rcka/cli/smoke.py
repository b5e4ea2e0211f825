"""``--smoke_test true``: run any recipe end to end, offline, in minutes on a CPU.

A recipe written for 8 GPUs x 300 epochs should fail here, on a laptop, and not after the GPUs
are rented. The smoke test runs the recipe's *own* path (models, losses, feature
pairs, adapters, augmentation, Trainer, save, model card: ``job.run``) with a few overrides:

* models: the same architectures with random weights. ``timm/<arch>`` and ``config:<type>`` build
  offline; a Hub id is replaced by its snapshot in the local Hugging Face cache (config only), and
  one that is not cached is an error that names the missing files and the command that fetches
  them. The teacher is built from its config too (``ModelArguments.smoke_test``).
* data: a handful of synthetic JPEGs, a little larger than the student's resolution and not
  square (so resizing and cropping run as on photos), under the recipe's column names, with the
  dataset's class count (a table of well-known datasets, an image folder's class folders, the
  teacher's classes, else 10 with a note);
* training: 2 optimiser steps of batch 4 per device, one eval batch, no workers, bf16/fp16 and
  ``torch_compile`` off without CUDA, no Hub push and no loggers, written to ``<output_dir>-smoke``
  so that a real run's output is never touched.

Afterwards the saved folder is reloaded with ``AutoModelForImageClassification`` and
``AutoImageProcessor`` (no hf_rcka code) and run on the synthetic validation images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml

from ..arguments import check_teacher_dtype, run_mixed_precision
from ..errors import RecipeError
from ..models.processors import PROCESSOR_FILES, carries_data_config
from ..models.sources import parse_model_source
from .job import run
from .output_folder import REPLACING, holds_run
from .preflight import check_report_to
from ..run_record import RECIPE_RECORD
from .recipe import build_arguments, resolve_values
from .smoke_check import check_output
from .smoke_data import SyntheticData, class_names, student_resolution, write_synthetic_dataset

logger = logging.getLogger(__name__)

SMOKE_STEPS = 2
# Four images a batch: with two, every centred batch Gram is rank one, so batch-relational CKA is
# identically 1 and rcka's intra term and feature_cka give zero loss and no gradient.
SMOKE_BATCH = 4
SMOKE_SUFFIX = "-smoke"
DEFAULT_NUM_CLASSES = 10
DEFAULT_RESOLUTION = 224
# Class counts of datasets recipes name, so that heads, logit losses and label checks see the real
# shapes without the dataset (ImageNet is gated and 150 GB).
KNOWN_NUM_CLASSES = {
    "ilsvrc/imagenet-1k": 1000, "imagenet-1k": 1000, "timm/imagenet-1k-wds": 1000, "imagenet": 1000,
    "timm/imagenet-22k-wds": 21841, "uoft-cs/cifar100": 100, "cifar100": 100, "uoft-cs/cifar10": 10,
    "cifar10": 10, "ylecun/mnist": 10, "mnist": 10, "zalando-datasets/fashion_mnist": 10,
    "fashion_mnist": 10, "ethz/food101": 101, "food101": 101, "zh-plus/tiny-imagenet": 200,
    "builtin:digits": 10,
}
# Size and side effects of a short offline run, whatever the recipe says (no Hub push, no loggers,
# no resume, no workers: their start-up costs more than two steps).
_FIXED = {
    "max_steps": SMOKE_STEPS, "per_device_train_batch_size": SMOKE_BATCH, "per_device_eval_batch_size": SMOKE_BATCH,
    "dataloader_num_workers": 0, "dataloader_persistent_workers": False, "dataloader_prefetch_factor": None,
    "dataloader_multiprocessing_context": None,
    "logging_steps": 1, "report_to": "none", "push_to_hub": False, "resume_from_checkpoint": None,
    "overwrite_output_dir": True, "max_train_samples": None, "max_eval_samples": None,
    "dataset_config_name": None, "train_dir": None, "validation_dir": None,
    # random teachers, and a student of two steps, are at chance by construction
    "teacher_accuracy_check": "off", "student_accuracy_check": "off",
    # the recipe's delay is for its own length: past the 2 steps, load_best_model_at_end is refused
    "eval_delay": 0,
}
_HALF_PRECISION = ("bf16", "fp16", "bf16_full_eval", "fp16_full_eval")
_MODEL_KEYS = ("model_name_or_path", "teacher_model_name_or_path")


@dataclasses.dataclass
class SmokePlan:
    """What the smoke test runs: the overridden recipe, its synthetic data, and why it differs."""

    recipe: dict[str, Any]
    data: SyntheticData
    notes: list[str]


def plan_smoke_test(recipe: dict[str, Any]) -> SmokePlan:
    """Overrides that make ``recipe`` (resolved values) a short offline run; writes nothing.

    Raises:
        RecipeError: a model cannot be built offline (e.g. a Hub id whose config is not cached).
    """
    notes: list[str] = []
    # the smoke test logs to no tracker; the real run will, and stops on a name it does not know,
    # or on a tracker not installed where it runs
    notes.extend(f"{line} here; the real run needs it" for line in
                 check_report_to(recipe.get("report_to", "none"), unavailable_ok=True))
    # before bf16/fp16 are switched off for a machine without CUDA, where the real run keeps them
    check_teacher_dtype(recipe.get("teacher_dtype"), run_mixed_precision(SimpleNamespace(**recipe)))
    values = dict(recipe)
    for key in _MODEL_KEYS:
        if values.get(key):
            values[key] = offline_model_name(key, values[key], notes)
    values["student_from_scratch"] = True  # the teacher too: ModelArguments.smoke_test
    values["smoke_test"] = True
    values["output_dir"] = smoke_output_dir(recipe["output_dir"])
    check_smoke_folder(values["output_dir"])
    values.update(_FIXED)
    values.update(_step_overrides(recipe))
    values.update(_device_overrides(recipe, notes))
    data = _synthetic_data(recipe, values, notes)
    values["dataset_name"] = str(data.folder)
    return SmokePlan(resolve_values(values), data, notes)


def smoke_output_dir(output_dir: str) -> str:
    """``<output_dir>-smoke``: a smoke test never writes into a real run's folder."""
    output_dir = str(output_dir).rstrip("/\\") or "."
    return output_dir if output_dir.endswith(SMOKE_SUFFIX) else output_dir + SMOKE_SUFFIX


def check_smoke_folder(folder: str) -> None:
    """A smoke test replaces the run in its folder (``overwrite_output_dir``), and the next one
    deletes what it set aside: the folder may hold an earlier smoke test only. A real run can be
    there when its own ``output_dir`` ends in ``-smoke``, or when a folder of that name was made
    by hand."""
    if holds_run(folder) and not _recorded_smoke_test(Path(folder)):
        raise RecipeError(
            f"the smoke test writes to {folder}, which holds a run that is not a smoke test (no smoke_test: true in "
            f"its {RECIPE_RECORD}); replacing it would lose it: move that run, or give the recipe another output_dir")


def _recorded_smoke_test(folder: Path) -> bool:
    # a set-aside that a kill or Ctrl-C cut short may have moved the record into _replacing/ already
    record = next((path for path in (folder / RECIPE_RECORD, folder / REPLACING / RECIPE_RECORD) if path.exists()),
                  folder / RECIPE_RECORD)
    try:
        recorded = yaml.safe_load(record.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(recorded, dict) and recorded.get("smoke_test") is True


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def offline_model_name(key: str, name: str, notes: list[str]) -> str:
    """``name`` in a form that builds with no network: a Hub id becomes its cached snapshot folder."""
    try:
        source = parse_model_source(name)
    except (ValueError, OSError) as err:
        raise RecipeError(f"{key}: {err}") from None
    if source.kind == "config" or os.path.isdir(name):
        return name
    folder = cached_config_folder(name)
    if folder is None and source.kind == "timm":  # built from timm's registry
        return name
    if folder is None:
        raise RecipeError(_not_cached_message(key, name, ["config.json", "preprocessor_config.json"]))
    # a pretrained timm model's cached config too, as the run loads it (its classes and data config;
    # timm's registry gave 1000 unnamed classes, so a teacher of the recipe's own classes was refused)
    missing = [] if source.kind == "timm" else _missing_files(folder)
    if missing:
        raise RecipeError(_not_cached_message(key, name, missing))
    notes.append(f"{key}: {name} built from the config in the local Hugging Face cache ({folder})")
    return str(folder)


def cached_config_folder(repo_id: str) -> Path | None:
    """The cached snapshot folder holding ``repo_id``'s ``config.json``, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json")
    return Path(path).parent if isinstance(path, str) else None


def _missing_files(folder: Path) -> list[str]:
    """What the smoke test reads that the cached snapshot lacks: its config.json and, but for a timm
    model's (which keeps its data config in config.json), a processor file, as the run's preflight
    (``check_model_source``) asks (a timm config of ``architecture`` without ``model_type``, or a
    ``processor_config.json``, was refused here and accepted by the run)."""
    if not (folder / "config.json").is_file():
        return ["config.json", PROCESSOR_FILES[0]]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if carries_data_config(config) or any((folder / file).is_file() for file in PROCESSOR_FILES):
        return []
    return [PROCESSOR_FILES[0]]


def _not_cached_message(key: str, name: str, files: list[str]) -> str:
    from huggingface_hub import constants

    return (
        f"smoke test: {key} {name!r} is not a local folder, and the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) lacks its {' and '.join(files)}. If a run of another recipe writes "
        f"that folder, run it (or its smoke test) first and pass its output folder; if it is a Hub id, "
        f"fetch the config once where there is network: hf download {name} {' '.join(files)}; "
        f"or name the architecture as timm/<architecture> or config:<model_type>"
    )


def _teacher_labels(values: dict[str, Any]) -> list[str] | None:
    """Class names of a teacher given as a folder (its config.json), else None."""
    teacher = values.get("teacher_model_name_or_path")
    config_file = Path(teacher) / "config.json" if teacher and os.path.isdir(teacher) else None
    if config_file is None or not config_file.is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("label_names"):  # a saved timm model (TimmWrapperConfig) names its classes here
        return [str(name) for name in config["label_names"]]
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)] or None


# --------------------------------------------------------------------------------------------
# Training settings and data
# --------------------------------------------------------------------------------------------


def _step_overrides(recipe: dict[str, Any]) -> dict[str, Any]:
    """Step-based evaluation and checkpoints happen within the smoke run's steps."""
    from transformers import TrainingArguments

    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    overrides = {}
    for strategy, steps in (("eval_strategy", "eval_steps"), ("save_strategy", "save_steps")):
        value = recipe.get(strategy, defaults[strategy])
        if getattr(value, "value", value) == "steps":
            overrides[steps] = SMOKE_STEPS
    return overrides


def _device_overrides(recipe: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Without CUDA: float32 (no bf16/fp16 autocast, no TF32), no torch.compile, and ``use_cpu``
    (without it, processes started by torchrun on a CPU machine do not form a gloo group)."""
    if torch.cuda.is_available() and not recipe.get("use_cpu"):
        return {}
    overrides: dict[str, Any] = {key: False for key in _HALF_PRECISION if recipe.get(key)}
    if recipe.get("tf32"):
        overrides["tf32"] = None
    if overrides:
        notes.append(f"{', '.join(overrides)} switched off: no CUDA device, so this smoke test runs in float32")
    overrides["use_cpu"] = True
    compiling = [key for key in ("torch_compile", "torch_compile_backend", "torch_compile_mode") if recipe.get(key)]
    if compiling:  # transformers turns torch_compile on for a backend or a mode alone
        overrides.update(torch_compile=False, torch_compile_backend=None, torch_compile_mode=None)
        notes.append(f"{', '.join(compiling)} switched off: compiling on a CPU takes longer than the smoke test")
    return overrides


def _synthetic_data(recipe: dict[str, Any], values: dict[str, Any], notes: list[str]) -> SyntheticData:
    """Enough images for SMOKE_STEPS optimiser steps and one eval batch on every process."""
    names, note = class_names(
        recipe.get("dataset_name"), recipe.get("train_dir"), _teacher_labels(values), KNOWN_NUM_CLASSES,
        DEFAULT_NUM_CLASSES,
    )
    resolution, size_note = student_resolution(values, DEFAULT_RESOLUTION)
    notes.extend(n for n in (note, size_note) if n)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = int(values.get("gradient_accumulation_steps") or 1)
    return SyntheticData(
        folder=Path(values["output_dir"]) / "smoke_data",
        image_column=recipe.get("image_column_name", "image"),
        label_column=recipe.get("label_column_name", "label"),
        label_names=tuple(names),
        resolution=resolution,
        num_train=SMOKE_BATCH * accumulation * SMOKE_STEPS * world,
        num_eval=SMOKE_BATCH * world,
        seed=int(recipe.get("seed", 42)),
    )


# --------------------------------------------------------------------------------------------
# Run and check
# --------------------------------------------------------------------------------------------


def run_smoke_test(recipe: dict[str, Any]) -> dict[str, Any]:
    """Run ``recipe`` (resolved values) as a smoke test through ``job.run``; check and report it.

    Returns:
        The run's metrics. Prints a short report on the main process.

    Raises:
        RecipeError: the recipe cannot run offline (names what is missing).
        RuntimeError: the run finished but its output is not a usable model folder.
    """
    start = time.perf_counter()
    plan = plan_smoke_test(recipe)
    model_args, data_args, args = build_arguments(plan.recipe)  # checks every value before writing
    if args.use_cpu and args.mixed_precision != "no" and not (args.fp16 or args.bf16):  # the launcher's (env)
        plan.notes.append(f"the launcher's {args.mixed_precision} mixed precision switched off: this smoke test runs "
                          "in float32")
        args.mixed_precision = "no"
    for note in plan.notes:
        logger.warning("smoke test: %s", note)
    write_synthetic_dataset(plan.data)
    metrics = run(model_args, data_args, args, plan.recipe)
    if args.process_index == 0:
        teacher = model_args.teacher_model_name_or_path
        checked = check_output(
            args.output_dir, plan.data, SMOKE_STEPS, do_train=args.do_train, do_eval=args.do_eval,
            has_teacher=bool(teacher),
        )
        lines = [*_plan_lines(plan, recipe), *checked]
        print(f"smoke test passed in {time.perf_counter() - start:.1f} s:", *lines, sep="\n  ")
    return metrics


def _plan_lines(plan: SmokePlan, recipe: dict[str, Any]) -> list[str]:
    """What ran instead of the full recipe: models, data, and every switched-off setting."""
    data = plan.data
    teacher = recipe.get("teacher_model_name_or_path")
    models = f"student {recipe['model_name_or_path']}" + (f", teacher {teacher}" if teacher else ", no teacher")
    height, width = data.image_size
    return [
        f"models: {models} (same architectures, random weights)",
        f"data: {data.num_train} train / {data.num_eval} validation synthetic {height}x{width} JPEGs for a "
        f"{data.resolution[0]}x{data.resolution[1]} student, {len(data.label_names)} classes",
        *(f"note: {note}" for note in plan.notes),
    ]
