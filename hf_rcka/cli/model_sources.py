"""A recipe's models, checked from their names and configs before any weights load.

Each error is one line naming the recipe key and the fix, raised in seconds instead of after the
data and the models have loaded: a model path that does not exist or a folder without weights, its
config or its image processor, a timm architecture or Hub id that is not there (or not reachable
offline, or gated), a typo in a ``config:`` model type or in any model's overrides, class settings a
run decides itself, an ``image_size`` a ViT cannot take, losses that need a teacher or a DeiT
distillation head, feature pairs the models or the losses refuse (``check_feature_pairs``), and
``push_to_hub`` without Hub access.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ModelError, RecipeError, UserError
from ..features.pairing import check_layer_indices
from ..log_levels import errors_only
from ..models.image_sizes import window_problem
from ..models.processors import PROCESSOR_FILES, carries_data_config, no_processor
from ..losses import reads_teacher
from ..modeling.assembly import active_specs, run_loss_specs
from ..modeling.distilled_heads import timm_has_distillation_head
from ..registry import LOSSES, close_matches

_PATH_PREFIXES = (".", "/", "~")
# HF model types whose position embeddings fix the input resolution (no interpolation in forward)
_FIXED_GRID_TYPES = ("vit", "deit", "ijepa", "vit_msn")  # their patch embedding refuses any other input size
# types whose fixed-grid ViT is their vision_config's (its image_size and patch_size are set there)
_VISION_TOWER_TYPES = ("clip", "siglip", "metaclip_2")


def check_hub_access(args: Any, model_args: Any = None) -> None:
    """``push_to_hub`` needs a valid repository id, the Hub online and a token; found now, not after
    hours of training (an id with a space was Trainer's traceback after loading, and after an earlier
    run in the folder had been set aside). The repository is not the teacher's own: a hub_model_id
    copied from the teacher's id replaced the teacher's weights and card on the Hub by the student's."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))  # Trainer's default: the folder
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        where = "hub_model_id" if args.hub_model_id else "the output_dir's folder name (the default hub_model_id)"
        raise RecipeError(f"push_to_hub: {where} {repo!r} is no Hub repository id ({err}): set hub_model_id to "
                          "'you/name' of letters, digits, '-', '_' and '.'") from None

    if constants.HF_HUB_OFFLINE:
        raise RecipeError("push_to_hub: the Hugging Face Hub is offline (HF_HUB_OFFLINE is set): unset it, "
                          "or set push_to_hub: false")
    token = args.hub_token or get_token()
    if not token:
        raise RecipeError("push_to_hub needs a Hugging Face token: run `hf auth login`, set HF_TOKEN, "
                          "or set push_to_hub: false")
    try:
        account = whoami(token)
    except Exception as err:  # noqa: BLE001 - any failure here means "cannot push"
        raise RecipeError(f"push_to_hub: cannot reach the Hugging Face Hub with this token "
                          f"({type(err).__name__}: {err}); check the network and the token, or set push_to_hub: false") from None
    auth = account.get("auth") if isinstance(account, dict) else None
    role = ((auth or {}).get("accessToken") or {}).get("role") if isinstance(auth, dict) else None
    if role == "read":  # the Hub refused the repository's creation or the upload, after the models had loaded
        raise RecipeError("push_to_hub: this Hugging Face token is a read token: it cannot create the repository or "
                          "upload to it. Use a write token (hub_token, HF_TOKEN or `hf auth login`), or set "
                          "push_to_hub: false")
    teacher = getattr(model_args, "teacher_model_name_or_path", None)
    teacher_repo = _hub_repository(teacher) if teacher else None
    name = account.get("name") if isinstance(account, dict) else None
    target = repo if "/" in repo or not name else f"{name}/{repo}"  # a bare name is the token's account's
    if teacher_repo is not None and target.casefold() == teacher_repo.casefold():
        raise RecipeError(f"push_to_hub: the repository {target!r} is the teacher's own "
                          f"(teacher_model_name_or_path {teacher!r}): the upload would replace the teacher's weights "
                          "and card by the student's. Set hub_model_id to another repository")


def _hub_repository(name: str) -> str | None:
    """The Hub repository a model name reads: a Hub id, or the repository of a folder of the
    Hugging Face cache; None for a local folder, a ``config:`` or ``timm/`` name."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from ..models.sources import CONFIG_PREFIX, TIMM_PREFIX, cache_snapshot

    snapshot = cache_snapshot(name)
    if snapshot is not None:
        return snapshot[0]
    if os.path.exists(name) or name.startswith((CONFIG_PREFIX, TIMM_PREFIX)):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def whoami(token: str) -> dict:
    """The Hub account of ``token`` (one request); a function so that tests can replace it."""
    from huggingface_hub import HfApi

    return HfApi().whoami(token=token)


def _loss_names(args: Any, has_teacher: bool) -> list[str]:
    """The losses the run computes (one at weight 0 is left out, as the model leaves it out)."""
    return [spec["name"] for spec in active_specs(run_loss_specs(args, has_teacher))]


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
    if name.startswith("timm/"):
        return _timm_has_distillation_head(name.split("/", 1)[1].split(".", 1)[0])
    if name.startswith("config:"):
        architectures = (model_args.student_config_overrides or {}).get("architectures") or []
    else:
        config = _local_config(name)
        if config is None:
            return True
        if config.get("architecture"):  # a saved timm model's TimmWrapperConfig
            return _timm_has_distillation_head(config["architecture"])
        architectures = (model_args.student_config_overrides or {}).get("architectures") or config.get("architectures") or []
    return any("WithTeacher" in a for a in architectures)


def _timm_has_distillation_head(architecture: str) -> bool:
    """Built without weights, on the meta device: the name does not say (levit_128s has a distillation
    head, iformer_m_distilled none). True when timm cannot build it (the loading names that error)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(architecture, pretrained=False)
    except Exception:  # noqa: BLE001 - an unknown or unbuildable name: the model check after loading says it
        return True
    return timm_has_distillation_head(model)


def _local_config(name: str, file: str = "config.json") -> dict | None:
    path = os.path.join(name, file)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def check_remote_code(key: str, name: str, trust_remote_code: bool, fix: str = "set trust_remote_code: true") -> None:
    """A model whose config names code of its own (``auto_map``) for a type transformers does not
    know loads only with ``trust_remote_code``: refused in one line before the data loads (it was
    transformers' three-line error after). Read from the folder's or the Hub cache's config.json,
    which ``check_model_source`` fetched. ``fix``: how this command allows it (a recipe's key, a
    script's flag)."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import CONFIG_MAPPING

    if trust_remote_code:
        return
    try:
        if os.path.isdir(name):
            config = _local_config(name)
        elif "/" in name and not name.startswith(("config:", "timm/")):
            cached = try_to_load_from_cache(name, "config.json")
            config = _local_config(os.path.dirname(cached)) if isinstance(cached, str) else None
        else:
            return
    except (OSError, ValueError):
        return  # an unreadable config is the loader's to report
    if isinstance(config, dict) and config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        raise ModelError(f"{key}: {name!r} is a model of type {config.get('model_type')!r} with code of its own (its "
                         f"config's auto_map), which transformers does not know: {fix} if you trust that repository's "
                         "code (it runs as the model loads)")
    processor = _local_config(name, "preprocessor_config.json") if os.path.isdir(name) else None
    if isinstance(processor, dict) and (processor.get("auto_map") or {}).get("AutoImageProcessor"):
        raise ModelError(f"{key}: {name!r} has an image processor with code of its own (preprocessor_config.json's "
                         f"auto_map): {fix} if you trust that code (it runs as the processor "
                         "loads), or replace the file with a built-in processor's")


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
        _check_hub_id(key, name, needs_weights)
    elif source.kind == "pretrained":
        _check_config_file(key, name)
        if needs_weights:
            _check_weights(key, name)


def _check_config_file(key: str, folder: str) -> None:
    """A model folder holds the ``config.json`` its weights are built from (found only once the data
    had loaded, minutes for an image folder of ImageNet's size)."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelError(f"{key}: folder {folder!r} has no config.json: give the folder save_pretrained wrote (a "
                         "run's output_dir, or one of its checkpoint-N folders)")
    try:
        _local_config(folder)
    except (OSError, ValueError) as err:
        raise ModelError(f"{key}: {os.path.join(folder, 'config.json')} cannot be read ({err}): give the folder "
                         "save_pretrained wrote") from None


def check_image_processor(key: str, name: str) -> None:
    """A model folder holds its image processor (how the model expects its images), unless its config
    is a timm model's, which carries its data config: without one the run stopped once the data and
    the model had loaded."""
    if not os.path.isdir(name) or carries_data_config(_local_config(name) or {}):  # a timm model's
        return
    if not any(os.path.isfile(os.path.join(name, file)) for file in PROCESSOR_FILES):
        raise ModelError(f"{key}: {no_processor(name)}")


def _check_weights(key: str, folder: str) -> None:
    """A model folder must hold safetensors weights, the only ones hf_rcka loads.

    Pickled weights (``pytorch_model.bin``) can run code as they load, so the loader refuses
    them; a folder holding only those passed here and failed after the data had loaded.
    """
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    single, index = (os.path.join(folder, name) for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))
    if os.path.isfile(single) and os.path.isfile(index) and os.path.getmtime(index) > os.path.getmtime(single):
        # transformers loads the single file; save_pretrained writing shards leaves an older one in place
        raise ModelError(f"{key}: folder {folder!r} holds {SAFE_WEIGHTS_INDEX_NAME} (sharded weights) and an older "
                         f"{SAFE_WEIGHTS_NAME}, which transformers would load: remove {SAFE_WEIGHTS_NAME}, which an "
                         "earlier save left")
    if os.path.isfile(single) or os.path.isfile(index):
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


def _check_hub_id(key: str, name: str, needs_weights: bool = True) -> None:
    """A name that looks like a path, or a Hub id that cannot be fetched offline, is an error now."""
    first = name.split("/")[0]
    if name.startswith(_PATH_PREFIXES) or os.path.isdir(first):
        recipe = _recipe_writing(name)
        fix = f": it is the output_dir of {recipe}, which must run first" if recipe else ". Check the path"
        raise ModelError(f"{key}: no such folder {name!r} (a folder written by save_pretrained){fix}")
    nearby = _model_folder_named(name) if "/" not in name else None  # Hub ids of today are owner/name
    if nearby is not None:  # a folder's name without the folder it is in, not a Hub id: said at once
        raise ModelError(f"{key}: no folder {name!r} here, and {nearby!r} is a model folder of that name: give its "
                         f"path ({key}: {nearby}), or, if {name!r} is a Hub id, rename or move that folder")
    _check_hub_reachable(key, name, local=_no_local_folder(name), needs_weights=needs_weights)


def _model_folder_named(name: str) -> str | None:
    """A folder one or two levels below the working directory called ``name`` holding a
    ``config.json``: ``supervised-resnet10t-digits`` for ``outputs/supervised-...``
    went to the Hub, with retries, for 23 s before the error."""
    base = glob.escape(name)
    for pattern in (os.path.join("*", base), os.path.join("*", "*", base)):
        found = sorted(path for path in glob.glob(pattern) if os.path.isfile(os.path.join(path, "config.json")))
        if found:
            return found[0]
    return None


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


def _check_hub_reachable(key: str, name: str, fix: str | None = None, local: str = "",
                         needs_weights: bool = True) -> None:
    """Offline, a Hub id needs a cached copy; online, one request reads its config. ``local``: what
    to add when the id names nothing there, as it may be a relative path."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:
        config = try_to_load_from_cache(name, "config.json")
        if not isinstance(config, str):
            what = f"{name!r} is not cached" if fix or local else f"{name!r} is not a local folder"
            raise ModelError(
                f"{key}: {what}, and the Hub is offline (HF_HUB_OFFLINE=1) with no cached copy. "
                + (fix[0].upper() + fix[1:] if fix else "Check the path, or unset HF_HUB_OFFLINE to download it")
                + local
            )
        _check_cached_files(key, name, config, needs_weights)
        return
    _check_hub_repository(key, name, local)


def _check_cached_files(key: str, name: str, config_file: str, needs_weights: bool) -> None:
    """Offline, the cached snapshot whose config.json was found must also hold what loading reads from
    it: the safetensors weights (every shard an index lists) and, but for a timm model (whose
    config.json carries its data config), an image processor. A cache filled with ``hf download NAME
    config.json preprocessor_config.json`` (what the smoke test asks for) passed here, and the run
    stopped once the data had loaded, saying the model had no safetensors weights and to convert
    pickled ones; a missing processor was transformers' text about https://huggingface.co/models."""
    from huggingface_hub import constants, try_to_load_from_cache
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

    def cached(file: str) -> str | None:
        path = try_to_load_from_cache(name, file)
        return path if isinstance(path, str) else None

    missing: list[str] = []
    try:
        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # an unreadable config is the loader's to report
    if not carries_data_config(config) and not any(cached(file) for file in PROCESSOR_FILES):
        missing.append(PROCESSOR_FILES[0])
    if needs_weights and not cached(SAFE_WEIGHTS_NAME):
        index = cached(SAFE_WEIGHTS_INDEX_NAME)
        if index is None:
            missing.append(SAFE_WEIGHTS_NAME)
        else:
            try:
                shards = sorted(set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError):
                shards = []
            missing += [shard for shard in shards if not cached(shard)]
    if missing:
        them = "it" if len(missing) == 1 else "them"
        raise ModelError(
            f"{key}: the Hugging Face cache ({constants.HF_HUB_CACHE}) holds the config.json of {name!r} but not "
            f"its {' and '.join(missing)}, and the Hub is offline (HF_HUB_OFFLINE=1): fetch {them} once where there "
            f"is network, into this cache (hf download {name} {' '.join(missing)}), or unset HF_HUB_OFFLINE"
        )


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


# Each model's name key and its overrides key
_MODEL_KEYS = (("model_name_or_path", "student_config_overrides"),
               ("teacher_model_name_or_path", "teacher_config_overrides"))


def check_student_config(model_args: Any) -> None:
    """``config:`` types and override keys exist; ``image_size`` fits a ViT's patch grid."""
    from ..models.hf_config import check_hf_overrides, default_config, with_overrides

    check_class_overrides(model_args)
    check_channel_overrides(model_args)
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
            check_hf_overrides(config, overrides)
        except ValueError as err:
            raise RecipeError(f"{overrides_key}: {err}") from None
        _check_builds(model_args, key, overrides_key)
        size = model_args.image_size if key == "model_name_or_path" else None
        try:
            _check_default_processor(name, with_overrides(config, overrides), size)
        except ValueError as err:
            raise ModelError(f"{key}: {err}") from None
        if key == "model_name_or_path":
            # the built config's: an override of a nested vision_config replaces it whole
            _check_image_size(model_args.image_size, config.model_type, with_overrides(config, overrides).to_dict())
    check_model_overrides(model_args)
    _check_saved_channels(model_args)
    local = _local_config(model_args.model_name_or_path)
    if local is not None:
        _check_image_size(model_args.image_size, local.get("model_type"), {**local, **(model_args.student_config_overrides or {})},
                          pretrained=not model_args.student_from_scratch)


def _check_builds(model_args: Any, key: str, overrides_key: str) -> None:
    """The model is built on the meta device (no weight drawn or read, a fraction of a second), as
    the loader builds it after the data: overrides out of range (``num_attention_heads: 0``, a
    negative ``hidden_size``, a timm ViT's ``embed_dim`` its ``num_heads`` do not divide) or a
    ``config:`` type whose package is missing were a traceback there, after the data had loaded.

    What fails only because the device is meta (construction that reads values), what cannot be
    read here (a config not in the Hub cache) and code of the model's own are left to the loader,
    which stays the final word.
    """
    from ..models.loading import build_without_weights

    name, overrides = getattr(model_args, key), getattr(model_args, overrides_key) or {}
    if model_args.trust_remote_code:
        return  # its construction may do anything, a download included
    student = key == "model_name_or_path"
    try:
        with errors_only():  # the loader says what it says of the model once, when it builds it
            build_without_weights(name, num_labels=2 if student else None, config_overrides=overrides,
                                  image_size=model_args.image_size if student else None)
    except UserError:
        raise
    except OSError:
        return  # a config that cannot be read: check_model_source and the loader say why
    except Exception as err:  # noqa: BLE001 - whatever the construction raises on these values
        reason = " ".join(str(err).split()) or type(err).__name__
        if "meta" in reason.lower():
            return  # the device's limit, not the recipe's
        if isinstance(err, ImportError):
            raise ModelError(f"{key}: {name!r} cannot be built here: {reason}") from None
        if not overrides:
            raise ModelError(f"{key}: {name!r} cannot be built ({type(err).__name__}: {reason})") from None
        # torch's own words for a negative size on the meta device name no value
        suspects = [f"{k} {v}" for k, v in overrides.items() if type(v) is int and v <= 0]
        hint = f"{', '.join(suspects)} out of range?" if suspects else "a size, count or ratio out of range?"
        raise RecipeError(f"{overrides_key}: {name!r} cannot be built with them ({type(err).__name__}: {reason}): "
                          f"{hint} Give values the architecture takes") from None


def check_feature_pairs(model_args: Any, args: Any, losses: Sequence[Any]) -> None:
    """A recipe's feature pairs that the models or the losses refuse, refused before the data and
    any weights load (they were refused once both models had loaded: minutes for a large teacher
    downloaded from the Hub).

    Each model is built without weights (``build_without_weights``) and its hidden states are
    described on the meta device as the model wrapper describes them after loading: at the size its
    processor gives, the teacher's through the transform from the student's inputs to its own. The
    pairs and their adapters are then planned by the function that plans them after loading
    (``adapters_for_losses``, for ``losses``, the run's computed ones), so each refusal is the same
    line: a layer index out of range, a pair listed twice, an adapter whose outputs the losses
    cannot compare, ``sample_channels`` beside a loss that compares every channel, a map too small
    for patch CKA. Where a processor cannot be read without its model, only the layer indices are
    checked (how many hidden states there are does not depend on the size). A model that cannot be
    built or run so (construction that reads values, code of its own) is left to the check after
    loading, which stays the final word; so are automatic pairs, which read values (what is an
    embedding).
    """
    from ..recipe_specs import unused_feature_pairs

    pairs = getattr(args, "feature_pairs", None)
    teacher = model_args.teacher_model_name_or_path
    if not isinstance(pairs, list) or not teacher:
        return
    if unused_feature_pairs(active_specs(run_loss_specs(args, has_teacher=True)), pairs):
        return  # ignored after loading (with a warning), whatever they say
    # the run's classes are known once the data has loaded; the student gets a head of its own for
    # them (a timm backbone without one fails to build with none), and its body does not change
    student = _MetaModel.build(model_args.model_name_or_path, model_args.student_config_overrides,
                               model_args.trust_remote_code, model_args.image_size, num_labels=2)
    teacher = _MetaModel.build(teacher, model_args.teacher_config_overrides, model_args.trust_remote_code)
    specs = _meta_specs(student, teacher)
    if specs is None:
        check_layer_indices(pairs, student.count(), teacher.count())
    else:
        _plan_adapters(pairs, *specs, losses)


@dataclass
class _MetaModel:
    """A recipe's model built on the meta device (None where it cannot be built so), with the
    input statistics of its processor (None where they cannot be read without the model's files
    loading or code of its own running)."""

    name: str
    model: Any = None
    inputs: Any = None
    image_size: int | None = None

    @classmethod
    def build(cls, name: str, overrides: dict | None, trust_remote_code: bool, image_size: int | None = None,
              num_labels: int | None = None) -> "_MetaModel":
        """Remote code is not run for it (its construction may do anything, a download included)."""
        from ..models.loading import build_without_weights
        from ..models.processors import load_image_processor
        from ..modeling.teacher_inputs import input_stats

        if trust_remote_code:
            return cls(name)
        try:
            model = build_without_weights(name, num_labels=num_labels, config_overrides=overrides,
                                          image_size=image_size)
        except Exception:  # noqa: BLE001 - not buildable without weights: the check after loading decides
            return cls(name)
        try:  # the processor the run reads its input size from, built from the model's config as after loading
            inputs = input_stats(load_image_processor(name, model, image_size=image_size))
        except Exception:  # noqa: BLE001 - the loader says what is wrong with it
            inputs = None
        return cls(name, model, inputs, image_size)

    def count(self) -> int | None:
        """How many hidden states the model has (at any size it takes), or None."""
        import torch

        from ..features.hidden_states import count_hidden_states
        from ..models.image_sizes import as_hw

        if self.model is None:
            return None
        height, width = as_hw(self.image_size) if self.image_size is not None else _input_size(self.model)
        try:
            return count_hidden_states(self.model, torch.empty(1, 3, height, width, device="meta"))
        except Exception:  # noqa: BLE001 - not countable without weights: the check after loading decides
            return None


def _meta_specs(student: _MetaModel, teacher: _MetaModel) -> tuple[list, list] | None:
    """Both models' hidden states as ``DistillationModel`` probes them (the student at its planned
    size, the teacher on the student's probe through ``TeacherInputTransform``), on the meta device;
    None where either cannot be told."""
    import torch

    from ..features.hidden_states import describe_hidden_states
    from ..modeling.teacher_inputs import TeacherInputTransform, planned_input_size

    if student.inputs is None or teacher.inputs is None:
        return None
    try:
        pixels = torch.empty(2, 3, *planned_input_size(student.model, student.inputs), device="meta")
        teacher_pixels = TeacherInputTransform(student.inputs, teacher.inputs).to("meta")(pixels)
        return describe_hidden_states(student.model, pixels), describe_hidden_states(teacher.model, teacher_pixels)
    except Exception:  # noqa: BLE001 - not described without weights: the check after loading decides
        return None


def _plan_adapters(pairs: list, student_specs: list, teacher_specs: list, losses: Sequence[Any]) -> None:
    """Plan the pairs' adapters as after loading, on the meta device (no memory, no random draw),
    raising its refusal of the recipe; what fails otherwise there is left to the check after loading."""
    import torch

    from ..modeling.feature_adapters import adapters_for_losses

    try:
        # each pair is said once, as the model wrapper builds it after loading
        with torch.device("meta"), errors_only():
            adapters_for_losses(pairs, student_specs, teacher_specs, losses)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - an adapter that needs values: the check after loading decides
        return


def _input_size(model: Any) -> tuple[int, int]:
    """The (height, width) a model is built for: a timm model's data config records it, a
    transformers model's config has ``image_size`` (``planned_input_size``, as the probe after
    loading falls back to)."""
    from ..modeling.teacher_inputs import planned_input_size

    data_cfg = getattr(model.config, "pretrained_cfg", None) or {}
    if data_cfg.get("input_size"):
        return tuple(int(side) for side in data_cfg["input_size"][-2:])
    return planned_input_size(model)


def _check_default_processor(name: str, config: Any, image_size: int | None) -> None:
    """A ``config:`` type's image processor, built by the loader from the config alone, must have a
    fixed output size: transformers has none for some types (hgnet_v2), and others resize each
    image by its own aspect ratio (textnet, siglip2). Either stopped the run once the data had
    loaded."""
    from ..modeling.teacher_inputs import input_stats
    from ..models.processors import load_image_processor

    try:
        input_stats(load_image_processor(name, config=config, image_size=image_size))
    except ValueError as err:  # its advice ("use a processor that...") could not be followed for a config: type
        raise ValueError(f"{str(err).rstrip('.')}. A {name} student can only take its type's default processor: "
                         f"to train the type, save_pretrained its config (AutoConfig.for_model({config.model_type!r}, "
                         "...)) and an image processor of a fixed output size into one folder and give that folder as "
                         "model_name_or_path (student_from_scratch: true), or choose another model type") from None


def check_model_overrides(model_args: Any) -> None:
    """The overrides of a timm architecture, a model folder or a Hub model (a ``config:`` type's
    are checked with its default config): a misspelt field or timm argument, or ``architectures``
    naming no image-classification class, was refused only when the model was built, after the
    data had loaded."""
    for key, overrides_key in _MODEL_KEYS:
        name, overrides = getattr(model_args, key), getattr(model_args, overrides_key) or {}
        if not name or not overrides or name.startswith("config:"):
            continue
        try:
            _check_overrides_of(name, overrides, model_args.trust_remote_code)
        except ValueError as err:
            raise RecipeError(f"{overrides_key}: {err}") from None
        _check_builds(model_args, key, overrides_key)  # a config: type's are built by check_student_config


def _check_overrides_of(name: str, overrides: dict, trust_remote_code: bool) -> None:
    from transformers import TimmWrapperConfig

    from ..models.hf_config import check_hf_overrides, load_config
    from ..models.sources import parse_model_source
    from ..models.timm_models import check_timm_kwargs, saved_model_args

    source = parse_model_source(name)
    if source.kind == "timm":
        check_timm_kwargs(source.name, overrides)
        return
    try:
        config = load_config(name, trust_remote_code)  # a folder's, or the Hub cache's that check_model_source filled
    except (OSError, ValueError):
        return  # the loader says what is wrong with the config itself
    if isinstance(config, TimmWrapperConfig):
        check_timm_kwargs(config.architecture, {**saved_model_args(config), **overrides})
    else:
        check_hf_overrides(config, overrides)


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


def check_channel_overrides(model_args: Any) -> None:
    """Overrides must not build a model for other than 3-channel images: every image is decoded to
    RGB (``data.images``), so a 1-channel model failed in timm's data config (an assertion) or at
    its first forward, after the models loaded.

    Raises:
        RecipeError: naming the override (``in_chans``, ``num_channels`` or the first value of a
        ``pretrained_cfg_overlay`` ``input_size``).
    """
    for overrides_key in ("student_config_overrides", "teacher_config_overrides"):
        overrides = getattr(model_args, overrides_key) or {}
        overlay = overrides.get("pretrained_cfg_overlay")
        size = overlay.get("input_size") if isinstance(overlay, dict) else None
        given = {"in_chans": overrides.get("in_chans"), "num_channels": overrides.get("num_channels"),
                 "pretrained_cfg_overlay input_size": size[0] if isinstance(size, (list, tuple)) and size else None}
        for key, channels in given.items():
            if channels is not None and channels != 3:
                raise RecipeError(f"{overrides_key} sets {key} {channels!r}: every image is decoded to RGB, 3 channels "
                                  f"(a grayscale one too, its value repeated). Drop {key} from {overrides_key}")


def _check_saved_channels(model_args: Any) -> None:
    """A model folder's config built for other than 3-channel images (``num_channels``, a timm
    model's ``in_chans``) is refused as the overrides are (see ``check_channel_overrides``), unless
    an override sets the channels (timm adapts a first convolution's weights to them)."""
    for key, overrides_key in _MODEL_KEYS:
        name, overrides = getattr(model_args, key), getattr(model_args, overrides_key) or {}
        if "num_channels" in overrides or "in_chans" in overrides:  # what is built (check_channel_overrides)
            continue
        saved = (_local_config(name) if name else None) or {}
        channels = saved.get("num_channels", (saved.get("model_args") or {}).get("in_chans"))
        if channels is not None and channels != 3:
            raise RecipeError(f"{key}: {name!r} is built for {channels}-channel images, and every image is decoded "
                              "to RGB, 3 channels: give a model built for RGB images")


def _check_image_size(image_size: int | None, model_type: str | None, config: dict, pretrained: bool = False) -> None:
    """An ``image_size`` the student's patch grid cannot take. CLIP's and SigLIP's ViT is their
    ``vision_config``'s: they stopped after the data had loaded, with advice (``image_size`` at the
    top of the overrides) that their config refuses."""
    tower = model_type in _VISION_TOWER_TYPES and isinstance(config.get("vision_config"), dict)
    if tower:
        config = config["vision_config"]
    patch, built = config.get("patch_size"), config.get("image_size")
    if image_size is None or not isinstance(patch, int):
        return
    if image_size % patch:
        raise RecipeError(f"image_size {image_size} is not a multiple of the student's patch_size {patch}; "
                          f"use e.g. {max(patch, image_size // patch * patch)}")
    problem = window_problem({**config, "model_type": model_type}, image_size, image_size)
    if problem:  # found after the data had loaded, advising another image_size alone
        raise RecipeError(f"image_size {image_size}: {problem}")
    if (model_type in _FIXED_GRID_TYPES or tower) and isinstance(built, int) and built != image_size:
        setting = (f"image_size: {image_size} in student_config_overrides' vision_config" if tower
                   else f"student_config_overrides: {{image_size: {image_size}}}")
        fix = (f"build a new student (student_from_scratch: true, {setting})" if pretrained else f"also set {setting}")
        raise RecipeError(
            f"image_size {image_size}, but the {'pretrained ' if pretrained else ''}{model_type} student is built for "
            f"{built} px (its position embeddings fix the patch grid): {fix}, or drop image_size"
        )


__all__ = [
    "check_channel_overrides", "check_class_overrides", "check_feature_pairs", "check_hub_access",
    "check_image_processor", "check_losses_fit_models", "check_model_overrides", "check_model_source",
    "check_student_config", "whoami",
]
