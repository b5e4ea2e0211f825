"""Checks that need no model weights and no data, run before anything expensive is loaded.

Every user error found here is one line naming the recipe key (or path) and the fix, raised in
seconds instead of after the models and the dataset have loaded, or at the first step: losses that
need a teacher or a DeiT distillation head, an ``image_size`` a ViT cannot take, typos in a
``config:`` model type or its overrides, model paths that do not exist or folders without weights,
image folders that are missing, empty, nested one level too deep or whose train/validation classes
differ, an unwritable ``output_dir`` or one that would overwrite a model the run reads, ``fp16``
without a GPU, a ``metric_for_best_model`` the evaluation does not report, ``report_to``
integrations that are not installed, ``push_to_hub`` without Hub access, and a checkpoint to
resume that is corrupt or not a checkpoint at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..errors import DataError, ModelError, RecipeError
from ..models.labels import check_split_classes, class_folders
from ..registry import LOSSES, close_matches
from ..losses import reads_teacher
from ..modeling.assembly import active_specs, build_losses, run_loss_specs, switched_off
from ..modeling.parallel import check_fsdp_settings
from ..trainer.batch_rows import check_evaluation_rows, check_relation_rows
from ..trainer.checkpointing import checkpoint_step, holds_training_state
from ..trainer.metrics import check_metric_for_best_model
from ..training_values import check_half_precision
from .records import recorded_recipe

logger = logging.getLogger("hf_rcka")
_PATH_PREFIXES = (".", "/", "~")
# HF model types whose position embeddings fix the input resolution (no interpolation in forward)
_FIXED_GRID_TYPES = ("vit", "deit")
# report_to name -> (transformers' availability function suffix, pip package)
_INTEGRATIONS = {"azure_ml": ("azureml", "azureml-core"), "comet_ml": ("comet", "comet_ml"), "flyte": ("flytekit", "flytekit")}


def check_run(model_args: Any, data_args: Any, args: Any) -> None:
    """All checks below, cheapest first. Raises a ``UserError`` subclass on the first problem."""
    check_output_dir_writable(args.output_dir)
    check_work(model_args, args)
    if args.do_train:  # an evaluation writes only its own _eval-<time> folder
        check_output_dir_spares_inputs(args.output_dir, {
            "model_name_or_path": model_args.model_name_or_path,
            "teacher_model_name_or_path": model_args.teacher_model_name_or_path,
            "baseline_dir": getattr(args, "baseline_dir", None),
        })
    check_report_to(args.report_to)
    check_launch(args)
    check_half_precision(args)
    check_fsdp_settings(args)
    check_losses_fit_models(model_args, args)
    specs = active_specs(run_loss_specs(args, bool(model_args.teacher_model_name_or_path)))
    losses = {spec["name"]: loss for spec, loss in zip(specs, build_losses(specs))}
    if args.do_train:
        check_relation_rows(losses, args)
    check_evaluation_rows(losses, args)  # every run evaluates
    check_recipe_metric(model_args, args)
    for key in ("model_name_or_path", "teacher_model_name_or_path"):
        if getattr(model_args, key):
            # a smoke test builds both models from their configs, with random weights
            needs_weights = not getattr(model_args, "smoke_test", False) and (
                key == "teacher_model_name_or_path" or not model_args.student_from_scratch)
            check_model_source(key, getattr(model_args, key), needs_weights)
    teacher = model_args.teacher_model_name_or_path or ""
    if teacher.startswith("config:") and not getattr(model_args, "smoke_test", False):
        logger.warning("teacher_model_name_or_path %r is built from a config with random weights: it has nothing to "
                       "teach (fine for a pipeline test; give a trained teacher's folder or Hub id)", teacher)
    check_student_config(model_args)
    check_data_dirs(data_args)
    check_mixing_batch(data_args, args)
    if args.push_to_hub:
        check_hub_access(args)


def check_work(model_args: Any, args: Any) -> None:
    """The run must train something, and an evaluation must evaluate trained weights.

    ``num_train_epochs: 0`` trained nothing and saved the untrained model as the run's result
    (replacing a previous run's); ``do_train: false`` on a recipe with ``student_from_scratch:
    true`` (every supervised and distillation recipe) evaluated a freshly initialised student built
    from the folder's config, and reported chance accuracy for a trained model.
    """
    if args.do_train and args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise RecipeError(f"num_train_epochs {args.num_train_epochs:g} and no max_steps: the run would train nothing "
                          "and save an untrained model. Set num_train_epochs > 0 or max_steps > 0, or do_train: false "
                          "to evaluate a trained model")
    name = model_args.model_name_or_path
    if getattr(model_args, "smoke_test", False):
        return
    if args.do_train:
        if model_args.student_from_scratch and os.path.isdir(name) and any(Path(name).glob("*.safetensors")):
            logger.warning("model_name_or_path %r holds trained weights, but student_from_scratch: true trains a new "
                           "model of its architecture from random weights (student_from_scratch: false fine-tunes "
                           "those weights)", name)
        return
    if name.startswith("config:"):
        raise RecipeError(f"do_train: false evaluates model_name_or_path, but {name!r} has random weights: give the "
                          "folder (or Hub id) of a trained model")
    if model_args.student_from_scratch:
        fix = ("add --student_from_scratch false" if os.path.isdir(name) else  # a Hub id: its pretrained weights
               "give the trained run's folder: --model_name_or_path <its output_dir> --student_from_scratch false")
        raise RecipeError(f"do_train: false with student_from_scratch: true would evaluate random weights built from "
                          f"{name!r}'s config, not trained ones: {fix}")


def check_launch(args: Any) -> None:
    """A multi-process launch must give one data-parallel run, not N independent ones.

    On a machine without GPUs, transformers sets up torchrun's or ``accelerate launch``'s
    processes as separate single-process runs unless ``use_cpu`` is set: each then trains alone on
    all the data and all write the same ``output_dir`` (one crashed reading another's
    ``all_results.json``).
    """
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and args.world_size == 1:
        raise RecipeError(f"launched as {launched} processes, but each would train alone on all the data and write "
                          "the same output_dir: on a machine without GPUs add --use_cpu true, so that they train "
                          "together")


# --------------------------------------------------------------------------------------------- output


def check_output_dir_writable(output_dir: str) -> None:
    """The nearest existing ancestor of ``output_dir`` must be a writable folder (nothing is created)."""
    path = Path(output_dir).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RecipeError(f"output_dir {output_dir!r} cannot be created: {str(probe)!r} is a file. Choose another output_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RecipeError(f"output_dir {output_dir!r} is not writable (no write permission in {str(probe)!r}). "
                          "Choose another output_dir")


def check_output_dir_spares_inputs(output_dir: str, inputs: dict[str, str | None]) -> None:
    """``output_dir`` must not be, or contain, a local folder the run reads.

    The run writes its model, card and recipe there; with ``overwrite_output_dir: true`` (which
    the digits recipes set) a teacher given as ``--output_dir`` too would be replaced by the
    student, and the run would still end well.
    """
    out = Path(output_dir).expanduser().resolve()
    for key, value in inputs.items():
        if not value or not os.path.isdir(os.path.expanduser(value)):
            continue
        source = Path(value).expanduser().resolve()
        if source == out or out in source.parents:
            raise RecipeError(f"output_dir {output_dir!r} would overwrite {key} {value!r}, which this run reads: "
                              "choose another output_dir")


def check_recipe_metric(model_args: Any, args: Any, num_labels: int | None = None) -> None:
    """The recipe's ``metric_for_best_model`` against the losses it configures, before anything
    loads (``trainer.metrics.check_metric_for_best_model`` has the rules; the trainer checks again
    with the model built). ``num_labels`` is known once the data has loaded; before that,
    ``top5_accuracy`` passes."""
    if args.metric_for_best_model is None:
        return
    specs = run_loss_specs(args, bool(model_args.teacher_model_name_or_path))
    check_metric_for_best_model(args, build_losses(specs), num_labels, switched_off(specs))


def check_report_to(report_to: Any) -> None:
    """Every ``report_to`` integration must be known to transformers and installed."""
    from transformers.integrations import integration_utils

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    known = list(integration_utils.INTEGRATION_TO_CALLBACK)
    for name in names:
        if name in ("none", "all"):
            continue
        if name not in known:
            raise RecipeError(f"report_to: unknown integration {name!r}: {close_matches(name, known)}")
        suffix, package = _INTEGRATIONS.get(name, (name, name))
        available = getattr(integration_utils, f"is_{suffix}_available", None)
        if available is not None and not available():
            raise RecipeError(f"report_to: {name!r} is not installed: pip install {package}, or set report_to: none")


def check_hub_access(args: Any) -> None:
    """``push_to_hub`` needs the Hub online and a token; found now, not after hours of training."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise RecipeError("push_to_hub: the Hugging Face Hub is offline (HF_HUB_OFFLINE is set): unset it, "
                          "or set push_to_hub: false")
    token = args.hub_token or get_token()
    if not token:
        raise RecipeError("push_to_hub needs a Hugging Face token: run `hf auth login`, set HF_TOKEN, "
                          "or set push_to_hub: false")
    try:
        whoami(token)
    except Exception as err:  # noqa: BLE001 - any failure here means "cannot push"
        raise RecipeError(f"push_to_hub: cannot reach the Hugging Face Hub with this token "
                          f"({type(err).__name__}: {err}); check the network and the token, or set push_to_hub: false") from None


def whoami(token: str) -> dict:
    """The Hub account of ``token`` (one request); a function so that tests can replace it."""
    from huggingface_hub import HfApi

    return HfApi().whoami(token=token)


# --------------------------------------------------------------------------------------------- models


def _loss_names(args: Any, has_teacher: bool) -> list[str]:
    return [spec["name"] for spec in run_loss_specs(args, has_teacher)]


def check_losses_fit_models(model_args: Any, args: Any) -> None:
    """Losses that need a teacher need one; ``deit_token`` needs a student with a distillation head."""
    teacher = model_args.teacher_model_name_or_path
    names = _loss_names(args, bool(teacher))
    needing = [n for n in names if reads_teacher(LOSSES.get(n))]
    if needing and not teacher:
        raise RecipeError(f"losses {needing} need a teacher: set teacher_model_name_or_path, or remove them "
                          "(without a teacher the student trains on ce alone)")
    if "deit_token" in names and not _has_distillation_head(model_args):
        raise RecipeError(
            f"losses: deit_token needs a student with a distillation head (DeiTForImageClassificationWithTeacher); "
            f"model_name_or_path {model_args.model_name_or_path!r} has none. Use a timm distilled DeiT "
            "(timm/deit_small_distilled_patch16_224), config:deit with student_config_overrides: {architectures: "
            "[DeiTForImageClassificationWithTeacher]}, or a distilled DeiT checkpoint"
        )


def _has_distillation_head(model_args: Any) -> bool:
    """What the config can tell; True when it cannot tell (a Hub id not yet downloaded)."""
    name = model_args.model_name_or_path
    if name.startswith("timm/"):  # timm's distilled DeiTs (deit_*_distilled_patch16_*) have one
        return "distilled" in name.split("/", 1)[1].split(".", 1)[0]
    if name.startswith("config:"):
        architectures = (model_args.student_config_overrides or {}).get("architectures") or []
    else:
        config = _local_config(name)
        if config is None:
            return True
        if config.get("architecture"):  # a saved timm model's TimmWrapperConfig
            return "distilled" in config["architecture"]
        architectures = (model_args.student_config_overrides or {}).get("architectures") or config.get("architectures") or []
    return any("WithTeacher" in a for a in architectures)


def _local_config(name: str) -> dict | None:
    path = os.path.join(name, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def check_model_source(key: str, name: str, needs_weights: bool = True) -> None:
    """A model name must be a local folder (with weights when they are used), a ``config:``/``timm/``
    name, or a reachable Hub id."""
    from ..models.sources import parse_model_source

    try:
        source = parse_model_source(name)
    except (ValueError, OSError) as err:
        raise ModelError(f"{key}: {err}") from None
    if source.kind == "timm":
        _check_timm_architecture(key, source.name)
        if needs_weights:  # pretrained timm weights load from the Hub repository of that name
            scratch = " or, for a student trained from scratch, set student_from_scratch: true" \
                if key == "model_name_or_path" else ""
            _check_hub_reachable(key, name, f"its pretrained weights are on the Hub: unset HF_HUB_OFFLINE to download "
                                            f"them{scratch}")
    elif source.kind == "pretrained" and not os.path.isdir(name):
        _check_hub_id(key, name)
    elif source.kind == "pretrained" and needs_weights:
        _check_weights(key, name)


def _check_weights(key: str, folder: str) -> None:
    """A model folder must hold safetensors weights, the only ones hf_rcka loads.

    Pickled weights (``pytorch_model.bin``) can run code as they load, so the loader refuses
    them; a folder holding only those passed here and failed after the data had loaded.
    """
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    if any(os.path.isfile(os.path.join(folder, name)) for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)):
        return
    pickled = [name for name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME) if os.path.isfile(os.path.join(folder, name))]
    if pickled:
        raise ModelError(f"{key}: folder {folder!r} holds {pickled[0]} only, and hf_rcka loads safetensors only (a "
                         "pickle file can run code as it loads): convert it in a session that trusts the file, "
                         f"loading it with transformers' from_pretrained({folder!r}) and saving it with "
                         f"save_pretrained({folder!r}, safe_serialization=True)")
    raise ModelError(f"{key}: folder {folder!r} holds no weights ({SAFE_WEIGHTS_NAME}): give the folder "
                     "save_pretrained wrote (a run's output_dir, or one of its checkpoint-N folders)")


def _check_timm_architecture(key: str, architecture: str) -> None:
    import timm

    base = architecture.split(".")[0]
    if not timm.is_model(base):
        raise ModelError(f"{key}: unknown timm architecture {architecture!r}; {close_matches(base, timm.list_models())}")


def _check_hub_id(key: str, name: str) -> None:
    """A name that looks like a path, or a Hub id that cannot be fetched offline, is an error now."""
    first = name.split("/")[0]
    if name.startswith(_PATH_PREFIXES) or os.path.isdir(first):
        recipe = _recipe_writing(name)
        fix = f": it is the output_dir of {recipe}, which must run first" if recipe else ". Check the path"
        raise ModelError(f"{key}: no such folder {name!r} (a folder written by save_pretrained){fix}")
    _check_hub_reachable(key, name, local=_no_local_folder(name))


def _no_local_folder(name: str) -> str:
    """What to add when ``name`` (shaped like a Hub id, so also like a relative path) is not found
    on the Hub: there is no such folder here either, and the recipe that writes it, if one does.

    ``outputs/supervised-resnet10t-digits`` (a demo teacher not trained yet) was only said to be
    unreachable on the Hub, with advice to check the network.
    """
    text = f". No folder {name!r} exists relative to the working directory {os.getcwd()!r} either"
    recipe = _recipe_writing(name)
    if recipe is not None:
        text += f": it is the output_dir of {recipe}, which must run first"
    return text


def _recipe_writing(folder: str) -> str | None:
    """The recipe in ``recipes/`` (here, or next to hf_rcka's own sources) whose output_dir is ``folder``."""
    import yaml

    target = os.path.normpath(folder)
    for recipes in dict.fromkeys((Path("recipes").resolve(), Path(__file__).resolve().parents[2] / "recipes")):
        for recipe in sorted(recipes.glob("*.yaml")):
            try:
                values = yaml.safe_load(recipe.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            output_dir = values.get("output_dir") if isinstance(values, dict) else None
            if isinstance(output_dir, str) and os.path.normpath(output_dir) == target:
                here = os.path.relpath(recipe)
                return str(recipe) if here.startswith("..") else here
    return None


def _check_hub_reachable(key: str, name: str, fix: str | None = None, local: str = "") -> None:
    """Offline, a Hub id needs a cached copy; online, one request reads its config. ``local``: what
    to add when the id names nothing there, as it may be a relative path."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:
        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            what = f"{name!r} is not cached" if fix or local else f"{name!r} is not a local folder"
            raise ModelError(
                f"{key}: {what}, and the Hub is offline (HF_HUB_OFFLINE=1) with no cached copy. "
                + (fix[0].upper() + fix[1:] if fix else "Check the path, or unset HF_HUB_OFFLINE to download it")
                + local
            )
        return
    _check_hub_repository(key, name, local)


def _check_hub_repository(key: str, name: str, local: str = "") -> None:
    """An online Hub id must name a model this machine can read: its config.json is fetched now (one
    request, cached for the load), so a typo, a private or gated repository without a login, or a
    dataset id is one line before the data loads, not an error after it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

    try:
        hf_hub_download(name, "config.json")
    except GatedRepoError:
        raise ModelError(f"{key}: Hub model {name!r} is gated: accept its conditions on https://huggingface.co/{name} "
                         "and log in on this machine (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{key}: there is no Hub model {name!r} that this machine can read: check the id (owner/name), "
                         f"or log in (`hf auth login`) if it is private{local}") from None
    except RemoteEntryNotFoundError:
        raise ModelError(f"{key}: Hub repository {name!r} has no config.json, so it holds no transformers or timm "
                         "model: check the id") from None
    except Exception as err:  # noqa: BLE001 - every other failure means "cannot fetch", with its reason
        raise ModelError(f"{key}: cannot fetch {name!r} from the Hugging Face Hub: {_fetch_failure(err, name)}{local}"
                         ) from None


def _fetch_failure(err: Exception, name: str) -> str:
    """Why a Hub download failed and what to do. huggingface_hub has already fallen back to a cached
    copy where one exists, so none does; its ``LocalEntryNotFoundError`` says only that and keeps
    the real failure (an HTTP status, a refused connection) as its cause."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        err = err.__cause__
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status == 401:
        return "the Hub refused this machine's token (401): log in again (`hf auth login`) or unset HF_TOKEN"
    if status == 403:
        return f"this machine's token may not read {name!r} (403): give the token read access to it"
    if status == 429:
        return "too many requests (429): retry in a few minutes"
    if status is not None and status >= 500:
        return f"the Hub answered {status}: retry later"
    reason = (str(err).strip().splitlines() or [""])[0]
    return (f"{type(err).__name__}: {reason}; check the network (and HF_ENDPOINT, proxy settings), or copy the "
            "model into the Hugging Face cache from a machine that can reach the Hub")


def check_student_config(model_args: Any) -> None:
    """``config:`` types and override keys exist; ``image_size`` fits a ViT's patch grid."""
    from ..models.hf_config import check_config_keys, default_config

    check_class_overrides(model_args)
    for key, name, overrides_key in (
        ("model_name_or_path", model_args.model_name_or_path, "student_config_overrides"),
        ("teacher_model_name_or_path", model_args.teacher_model_name_or_path, "teacher_config_overrides"),
    ):
        if not name or not name.startswith("config:"):
            continue
        try:
            config = default_config(name[len("config:"):].strip())
        except ValueError as err:
            raise RecipeError(f"{key}: {err}") from None
        overrides = getattr(model_args, overrides_key) or {}
        try:
            check_config_keys(config, overrides)
        except ValueError as err:
            raise RecipeError(f"{overrides_key}: {err}") from None
        if key == "model_name_or_path":
            _check_image_size(model_args.image_size, config.model_type, {**config.to_dict(), **overrides})
    local = _local_config(model_args.model_name_or_path)
    if local is not None:
        _check_image_size(model_args.image_size, local.get("model_type"), {**local, **(model_args.student_config_overrides or {})},
                          pretrained=not model_args.student_from_scratch)


# override keys that set a model's classes (timm's num_classes too): the run sets them, not the recipe
_CLASS_KEYS = ("num_labels", "id2label", "label2id", "num_classes")


def check_class_overrides(model_args: Any) -> None:
    """Overrides must not set the classes, and the refusal names what does.

    The loaders' own refusal says to pass ``num_labels``..., which are arguments of the Python API
    but no recipe keys: the CLI takes the student's classes from the dataset's labels, and a
    teacher keeps those it was trained with. Checked for every kind of model, before any loads.

    Raises:
        RecipeError: ``student_config_overrides`` or ``teacher_config_overrides`` sets one.
    """
    teacher = model_args.teacher_model_name_or_path or ""
    config_teacher = (" (a config: teacher has its model type's default unnamed classes, so only feature losses "
                      "can distil from it)") if teacher.startswith("config:") else ""
    why = {"student_config_overrides": "the run names the student's classes from the dataset's labels",
           "teacher_config_overrides": "the teacher keeps the classes it was trained with, paired with the dataset's "
                                       f"by name (teacher_label_mapping){config_teacher}"}
    for overrides_key, reason in why.items():
        for key in getattr(model_args, overrides_key) or {}:
            if key in _CLASS_KEYS:
                raise RecipeError(f"{overrides_key} sets {key!r}: {reason}. Drop {key!r} from {overrides_key}")


def _check_image_size(image_size: int | None, model_type: str | None, config: dict, pretrained: bool = False) -> None:
    patch, built = config.get("patch_size"), config.get("image_size")
    if image_size is None or not isinstance(patch, int):
        return
    if image_size % patch:
        raise RecipeError(f"image_size {image_size} is not a multiple of the student's patch_size {patch}; "
                          f"use e.g. {max(patch, image_size // patch * patch)}")
    if model_type in _FIXED_GRID_TYPES and isinstance(built, int) and built != image_size:
        fix = (f"build a new student (student_from_scratch: true, student_config_overrides: {{image_size: {image_size}}})"
               if pretrained else f"also set student_config_overrides: {{image_size: {image_size}}}")
        raise RecipeError(
            f"image_size {image_size}, but the {'pretrained ' if pretrained else ''}{model_type} student is built for "
            f"{built} px (its position embeddings fix the patch grid): {fix}, or drop image_size"
        )


# --------------------------------------------------------------------------------------------- data


def check_mixing_batch(data_args: Any, args: Any) -> None:
    """Mixup/CutMix pair image i with image B-1-i of a batch: a batch of one mixes nothing (the run
    trained without it and said nothing), and an odd batch leaves one image of every step unmixed."""
    if not getattr(data_args, "mixup_active", False) or not args.do_train:
        return
    batch = args.per_device_train_batch_size
    if batch < 2:
        raise RecipeError(f"mixup/cutmix mix the images of one per-device batch, and per_device_train_batch_size is "
                          f"{batch}: nothing would be mixed. Use a batch of at least 2 (even), or turn mixup and cutmix off")
    if batch % 2:
        logger.warning("per_device_train_batch_size %d is odd: mixup/cutmix leave one image of every batch unmixed "
                       "(timm's Mixup needs an even batch); an even size mixes them all", batch)


def check_data_dirs(data_args: Any) -> None:
    """Image folders exist, hold class sub-folders with images, and train/validation classes agree."""
    if data_args.train_dir is None:
        return
    train = image_folder_classes("train_dir", data_args.train_dir)
    if data_args.validation_dir is not None:
        check_split_classes(train, image_folder_classes("validation_dir", data_args.validation_dir))
        train_path, validation_path = (Path(d).expanduser().resolve() for d in (data_args.train_dir, data_args.validation_dir))
        if train_path == validation_path or train_path in validation_path.parents or validation_path in train_path.parents:
            raise DataError(f"validation_dir {data_args.validation_dir!r} and train_dir {data_args.train_dir!r} share "
                            "images: the evaluation would report accuracy on training images. Give a held-out folder, "
                            "or drop validation_dir to hold out part of train_dir")


def image_folder_classes(key: str, folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DataError(f"{key} {folder!r} does not exist" + (" (it is a file)" if os.path.exists(folder) else "")
                        + ": give a folder with one sub-folder of images per class")
    classes = class_folders(folder)
    if not classes:
        raise DataError(f"{key} {folder!r} holds no class sub-folders with images: give a folder with one "
                        "sub-folder of images per class (e.g. train/cat/1.jpg, train/dog/2.jpg)")
    if len(classes) == 1:  # datasets then drops the label column, and the error would name that instead
        raise DataError(f"{key} {folder!r} holds one class folder ({classes[0]!r}): a classifier needs at least two "
                        "classes, one sub-folder of images each")
    return classes


# --------------------------------------------------------------------------------------------- resume


def check_checkpoint(folder: str) -> None:
    """A checkpoint to resume from must have readable weights and trainer state.

    A run killed while saving leaves a truncated ``model.safetensors``; loading it fails deep in
    safetensors with no hint that an earlier checkpoint would do. Reading the headers is cheap.
    """
    from safetensors import safe_open

    weights = sorted(Path(folder).glob("*.safetensors"))
    if not weights:
        raise ModelError(f"resume_from_checkpoint: {folder!r} holds no .safetensors weights: {_earlier(folder)}")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelError(f"resume_from_checkpoint: {str(path)!r} is corrupt or incomplete ({err}): {_earlier(folder)}") from None
    inner = _checkpoints_in(Path(folder))
    if inner or not holds_training_state(folder):
        hint = (f"give one of its checkpoints (--resume_from_checkpoint {Path(folder) / inner[-1]})" if inner
                else "give a checkpoint-N folder of the run")
        raise ModelError(f"resume_from_checkpoint: {folder!r} is not a checkpoint (it holds no optimizer and "
                         f"scheduler state): {hint}, or --resume_from_checkpoint true for the last one in output_dir")
    state = Path(folder) / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"resume_from_checkpoint: {str(state)!r} is missing or unreadable ({err}): {_earlier(folder)}") from None
    _check_torch_files(folder)


def _check_torch_files(folder: str) -> None:
    """The optimizer, scheduler and RNG files are whole: a truncated one failed after the models had
    loaded, with a ``PytorchStreamReader`` traceback. ``torch.save`` writes a zip archive whose
    directory sits at its end, so reading that directory finds a cut file without reading the data."""
    import zipfile

    for path in sorted(p for pattern in ("*.pt", "*.pth") for p in Path(folder).glob(pattern)):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (OSError, zipfile.BadZipFile) as err:
            raise ModelError(f"resume_from_checkpoint: {str(path)!r} is corrupt or incomplete ({err}): "
                             f"{_earlier(folder)}") from None


def check_resume_batch(folder: str, args: Any) -> None:
    """A checkpoint resumes at the global batch it was trained with.

    Its step count, learning-rate schedule and epoch position are in steps of that batch: resumed
    in 1 process instead of 2 (the printed command once dropped the launcher's settings), a run
    went on at half the batch, fast-forwarded half the epochs it had trained, and exited 0.
    """
    from ..arguments import global_batch_size
    from ..trainer.checkpointing import BATCH_RECORD_NAME

    path = Path(folder) / BATCH_RECORD_NAME
    if not path.is_file():  # a checkpoint of an earlier version
        return
    recorded = json.loads(path.read_text(encoding="utf-8"))
    batch = global_batch_size(args)
    if recorded.get("global_batch") != batch:
        raise RecipeError(
            f"resume_from_checkpoint: {folder!r} was trained with a global batch of {recorded.get('global_batch')} "
            f"({_processes(recorded.get('processes'))}); this launch gives {batch} ({_processes(args.world_size)} x "
            f"{args.train_batch_size} x {args.gradient_accumulation_steps} accumulation steps). Launch it as it was "
            "(the same accelerate config or torchrun --nproc_per_node), with the same batch settings"
        )


def check_resume_recipe(folder: str, model_args: Any, data_args: Any, args: Any) -> None:
    """A checkpoint resumes with the losses its run recorded: other losses (a loss with no saved
    state swapped for another) went on training a run whose record and card then named only the
    new ones. (Its held-out split is checked once the data has loaded: ``check_resume_split``.)
    """
    from ..recipe_specs import loss_spec

    recorded = recorded_recipe(folder)
    specs = [loss_spec(spec) for spec in (recorded or {}).get("losses") or []]
    if not specs or not all(isinstance(spec, dict) and "name" in spec for spec in specs):
        return  # no record, or one this version cannot read: the loss state's own check stays
    has_teacher = bool(model_args.teacher_model_name_or_path)
    before = sorted(spec["name"] for spec in active_specs(specs))
    now = sorted(spec["name"] for spec in active_specs(run_loss_specs(args, has_teacher)))
    if before != now:
        raise RecipeError(f"resume_from_checkpoint: {folder!r} was trained with losses {before}, and this run names "
                          f"{now}: a resumed run continues the same training. Resume with its losses, or start a new "
                          "run from its weights (model_name_or_path) in a new output_dir")


# The settings the learning-rate schedule is computed from. Trainer rebuilds the schedule from the
# resumed run's values, so changing one reshapes the curve from the resumed step on.
SCHEDULE_KEYS = ("num_train_epochs", "max_steps", "warmup_steps", "lr_scheduler_type", "lr_scheduler_kwargs",
                 "learning_rate", "lr_base", "lr_base_size", "lr_base_scale")


def warn_resume_schedule(folder: str, args: Any) -> list[str]:
    """Say when a resumed run changes how its learning-rate schedule is computed (more epochs to
    extend a run is common, and allowed): its first steps followed one schedule and the rest follow
    another, which neither the recorded recipe nor the card would otherwise show.

    Returns:
        The changed settings, as ``key before -> now``.
    """
    recorded = recorded_recipe(folder)
    if not recorded:
        return []
    fields = type(args).__dataclass_fields__
    changed = []
    for key in SCHEDULE_KEYS:
        if key not in fields:
            continue
        field = fields[key]
        before = recorded[key] if key in recorded else (
            field.default_factory() if field.default is dataclasses.MISSING else field.default)
        now = getattr(args, key)
        if key == "learning_rate" and args.lr_base is not None:
            continue  # scaled from lr_base, compared through it
        if before != now and not (isinstance(before, (int, float)) and isinstance(now, (int, float))
                                  and math.isclose(before, now)):
            changed.append(f"{key} {_setting(before)} -> {_setting(now)}")
    if changed:
        logger.warning("resume_from_checkpoint: %s was trained with other schedule settings (%s): the learning rate "
                       "follows a schedule recomputed from these values from its step on, so the run's first steps "
                       "followed another one", folder, "; ".join(changed))
    return changed


def _setting(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def check_resume_split(folder: str, data_args: Any, carved: bool) -> None:
    """A checkpoint resumes with the validation split its run held out, when the split is carved
    (``carved``: the data has no validation split of its own and no ``validation_dir``).

    Another ``split_seed`` or ``train_val_split`` carves another validation set, mostly of images
    the checkpoint has trained on: the resumed run evaluated on them and exited 0.
    """
    from .teacher_data import split_change

    changed = split_change(folder, data_args) if carved else None
    if changed:
        raise RecipeError(f"resume_from_checkpoint: {folder!r} was trained holding out {changed}: the evaluation "
                          "would take images it trained on. Resume with the split it was saved with, or train into "
                          "a new output_dir")


def _checkpoints_in(folder: Path) -> list[str]:
    """Names of the ``checkpoint-N`` folders in ``folder``, by step."""
    names = (p.name for p in folder.glob("checkpoint-*") if p.is_dir())
    return sorted(names, key=lambda n: -1 if checkpoint_step(n) is None else checkpoint_step(n))


def _processes(count: Any) -> str:
    return f"{count} process" + ("" if count == 1 else "es")


def _earlier(folder: str) -> str:
    """The fix for a broken checkpoint: the latest one before it, if any (not merely another one)."""
    parent, step = Path(folder).absolute().parent, checkpoint_step(Path(folder).name)
    earlier = [name for name in _checkpoints_in(parent)
               if step is not None and checkpoint_step(name) is not None and checkpoint_step(name) < step]
    if earlier:
        return (f"delete {folder!r}, or resume from an earlier one (--resume_from_checkpoint {parent / earlier[-1]} "
                "--overwrite_output_dir true, which sets the later checkpoints aside)")
    return f"delete {folder!r} and start again"

