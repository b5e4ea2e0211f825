"""Load image classifiers and their image processors from the names a recipe can give.

A recipe names a model in one of three forms:

* a Hub id or a local folder written by ``save_pretrained`` -> ``AutoModelForImageClassification``;
* ``timm/<architecture>`` -> a timm model inside transformers' ``TimmWrapperForImageClassification``,
  so that the trained student still loads with ``AutoModelForImageClassification``;
* ``config:<model_type>`` (hf_rcka's own form) -> a transformers architecture built from its default
  config plus ``config_overrides``, with random weights. It needs no Hub, so tests and tiny
  experiments run offline.

Two traps shape this module. ``TimmWrapperForImageClassification`` re-initialises every weight
with transformers' generic init when it is built from a config, which throws away timm's own
initialisation (zero-initialised last BatchNorm of each residual block, truncated-normal ViT
weights...); timm students are therefore created with ``timm.create_model`` and their weights
copied into the wrapper. And ``AutoImageProcessor`` only recognises a saved timm folder when its
``config.json`` holds timm's data config under ``pretrained_cfg``, so every wrapper built here
carries one that matches the model actually built (e.g. a smaller ``img_size``).

DeiT's distillation head: a model whose config lists a transformers image-classification class
under ``architectures`` is built as that class, so
``config_overrides={"architectures": ["DeiTForImageClassificationWithTeacher"]}`` gives a student
with a distillation head (``config:deit`` alone gives ``DeiTForImageClassification``). A folder
saved from such a student reloads with both heads, here and through
``AutoModelForImageClassification`` (transformers 5.23 picks deit's class from ``architectures``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import transformers
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
)
from transformers.utils import is_torchvision_available

from ..registry import close_matches

logger = logging.getLogger(__name__)

CONFIG_PREFIX = "config:"
TIMM_PREFIX = "timm/"
DEFAULT_IMAGE_SIZE = 224

_LABEL_KEYS = ("num_labels", "id2label", "label2id")
# timm.create_model arguments that load_image_classifier owns: a recipe must not set them.
_TIMM_RESERVED_ARGS = {
    "pretrained": "timm students are built with random weights here; name the Hub checkpoint instead",
    "num_classes": "pass num_labels (or id2label) instead",
    "checkpoint_path": "save the checkpoint with save_pretrained and pass its folder instead",
    "pretrained_cfg": "use pretrained_cfg_overlay to change the data config",
    "features_only": "an image classifier needs its head",
}
# Entries of timm's pretrained_cfg that say where pretrained weights come from. A model built with
# random weights keeps the data config (mean, std, input_size...) but not this provenance.
_TIMM_PROVENANCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "custom_load")


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """What a model name refers to.

    Attributes:
        kind: ``"config"`` (a transformers model type), ``"timm"`` (a timm architecture) or
            ``"pretrained"`` (a Hub id or a local folder).
        name: the model type, the timm architecture (tag included, e.g. ``resnet18.a1_in1k``), or
            the Hub id / folder as given.
    """

    kind: Literal["config", "timm", "pretrained"]
    name: str


def parse_model_source(name_or_path: str) -> ModelSource:
    """Classify a recipe's model name; an existing local folder always wins over the prefixes.

    Raises:
        FileNotFoundError: the name is neither an existing folder nor shaped like a Hub id
            (``owner/name``), so it can only be a mistyped path.
        NotADirectoryError: the name is a file (e.g. a ``.safetensors``), not a model folder.
        ValueError: an empty name, or a prefix with nothing after it.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"a model name must be a non-empty string, got {name_or_path!r}")
    if os.path.isdir(name_or_path):
        return ModelSource("pretrained", name_or_path)
    if name_or_path.startswith(CONFIG_PREFIX):
        return ModelSource("config", _suffix(name_or_path, CONFIG_PREFIX, "config:vit"))
    if name_or_path.startswith(TIMM_PREFIX):
        return ModelSource("timm", _suffix(name_or_path, TIMM_PREFIX, "timm/resnet18"))
    if os.path.exists(name_or_path):
        raise NotADirectoryError(
            f"{name_or_path!r} is a file; pass the folder that save_pretrained wrote (with config.json)"
        )
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise FileNotFoundError(
            f"model {name_or_path!r}: no such local folder, and it is not a Hub id (owner/name). "
            "Check the path, or use 'timm/<architecture>' or 'config:<model_type>'."
        ) from None
    return ModelSource("pretrained", name_or_path)


def _suffix(name: str, prefix: str, example: str) -> str:
    rest = name[len(prefix):].strip()
    if not rest:
        raise ValueError(f"{name!r} names no model after {prefix!r}; e.g. {example!r}")
    return rest


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelMaps:
    """A consistent pair of label maps (ids 0..n-1)."""

    id2label: dict[int, str]
    label2id: dict[str, int]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @classmethod
    def default(cls, num_labels: int) -> LabelMaps:
        """transformers' placeholder names LABEL_0..LABEL_{n-1}."""
        names = {i: f"LABEL_{i}" for i in range(num_labels)}
        return cls(names, {v: k for k, v in names.items()})

    @classmethod
    def from_config(cls, config: PreTrainedConfig) -> LabelMaps:
        id2label = {int(k): str(v) for k, v in config.id2label.items()}
        return cls(id2label, {v: k for k, v in id2label.items()})


def resolve_labels(
    num_labels: int | None = None,
    id2label: Mapping[int | str, str] | None = None,
    label2id: Mapping[str, int | str] | None = None,
) -> LabelMaps | None:
    """Turn the three optional label arguments into one consistent ``LabelMaps``.

    Keys may be strings (JSON and YAML keep them so). ``None`` for all three means "keep the
    checkpoint's labels".

    Raises:
        ValueError: the arguments disagree, ids are not 0..n-1, or num_labels < 1.
    """
    if id2label is None and label2id is not None:
        id2label = {int(v): str(k) for k, v in label2id.items()}
    if id2label is None:
        if num_labels is None:
            return None
        if int(num_labels) < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        return LabelMaps.default(int(num_labels))
    maps = _maps_from_id2label(id2label)
    if num_labels is not None and int(num_labels) != maps.num_labels:
        raise ValueError(f"num_labels={num_labels} but id2label has {maps.num_labels} entries")
    if label2id is not None and {str(k): int(v) for k, v in label2id.items()} != maps.label2id:
        raise ValueError("label2id is not the inverse of id2label; pass only one of them")
    return maps


def _maps_from_id2label(id2label: Mapping[int | str, str]) -> LabelMaps:
    maps = {int(k): str(v) for k, v in id2label.items()}
    if sorted(maps) != list(range(len(maps))) or not maps:
        raise ValueError(f"id2label keys must be 0..n-1 with n >= 1, got {sorted(maps)}")
    if len(set(maps.values())) != len(maps):
        raise ValueError("id2label has duplicate label names; label2id would be ambiguous")
    return LabelMaps(maps, {v: k for k, v in maps.items()})


def _set_labels(config: PreTrainedConfig, labels: LabelMaps | None) -> None:
    if labels is not None:
        config.id2label = dict(labels.id2label)
        config.label2id = dict(labels.label2id)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def load_image_classifier(
    name_or_path: str,
    *,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    label2id: dict[str, int] | None = None,
    from_scratch: bool = False,
    config_overrides: dict | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str = torch.float32,
) -> PreTrainedModel:
    """Build or load an image classifier that saves as a plain transformers model.

    Args:
        name_or_path: a Hub id, a folder written by ``save_pretrained``, ``timm/<architecture>``
            or ``config:<model_type>`` (random weights; implies ``from_scratch``).
        num_labels, id2label, label2id: the task's labels. When they differ in number from a
            checkpoint's, the head is re-initialised and the body kept; any other weight that
            would be re-initialised is an error.
        from_scratch: random weights from the model's config. timm models keep timm's own
            initialisation; ``timm/<architecture>`` from scratch needs no Hub.
        config_overrides: transformers config attributes (checked against the config's fields),
            or, for timm models, ``timm.create_model`` keyword arguments such as ``img_size``,
            ``embed_dim``, ``depth`` (stored as the wrapper's ``model_args`` so the saved model
            rebuilds identically). ``architectures: [<class name>]`` picks the model class, e.g.
            ``DeiTForImageClassificationWithTeacher``.
        trust_remote_code: passed to transformers; keep False unless the repository is trusted.
        dtype: dtype of loaded checkpoints; float32 by default so that training keeps float32
            master weights even when a checkpoint is stored in half precision ("auto" keeps it).

    Returns:
        A ``PreTrainedModel`` whose ``save_pretrained`` output loads with
        ``AutoModelForImageClassification`` and no hf_rcka.
    """
    labels = resolve_labels(num_labels, id2label, label2id)
    overrides = dict(config_overrides or {})
    source = parse_model_source(name_or_path)
    if source.kind == "config":
        return _build_from_model_type(source.name, labels, overrides, trust_remote_code)
    if source.kind == "timm" and from_scratch:
        return build_timm_classifier(source.name, labels, overrides)
    config = _load_config(name_or_path, trust_remote_code)
    if from_scratch:
        return _build_from_config(config, labels, overrides, trust_remote_code)
    return _load_pretrained(name_or_path, config, labels, overrides, trust_remote_code, dtype)


def _load_config(name_or_path: str, trust_remote_code: bool) -> PreTrainedConfig:
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise FileNotFoundError(
            f"folder {name_or_path!r} has no config.json; pass the folder that save_pretrained wrote"
        )
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        where = "local folder" if os.path.isdir(name_or_path) else "Hub repository"
        raise OSError(
            f"could not read the config of {where} {name_or_path!r}. A folder needs the config.json "
            "that save_pretrained writes; a Hub id needs network access (HF_HUB_OFFLINE unset) or a "
            f"cached copy; 'timm/<arch>' and 'config:<type>' with from_scratch need neither. Cause: {err}"
        ) from err


def _build_from_model_type(
    model_type: str, labels: LabelMaps | None, overrides: dict, trust_remote_code: bool
) -> PreTrainedModel:
    """``config:<model_type>``: the default config of that type, overridden, random weights."""
    config = _default_config(model_type)
    return _build_from_config(config, labels, overrides, trust_remote_code)


def _default_config(model_type: str) -> PreTrainedConfig:
    if model_type == "timm_wrapper":
        raise ValueError("use 'timm/<architecture>' for timm models, not 'config:timm_wrapper'")
    types = sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    if model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(
            f"'config:{model_type}': {model_type!r} is not a transformers model type with an "
            f"image-classification head; {close_matches(model_type, types)}"
        )
    return AutoConfig.for_model(model_type)


def _build_from_config(
    config: PreTrainedConfig, labels: LabelMaps | None, overrides: dict, trust_remote_code: bool
) -> PreTrainedModel:
    """Random weights from a config (timm configs keep timm's initialisation)."""
    if isinstance(config, TimmWrapperConfig):
        labels = labels or LabelMaps.from_config(config)
        model_args = {**_saved_model_args(config), **overrides}
        base_cfg = getattr(config, "pretrained_cfg", None)
        return build_timm_classifier(config.architecture, labels, model_args, base_cfg)
    config = _with_overrides(config, overrides)
    _set_labels(config, labels)
    model_class = _classifier_class(config, explicit="architectures" in overrides) or _default_class(config)
    if model_class is not None:
        return model_class(config)
    return AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code)


def _default_class(config: PreTrainedConfig) -> type[PreTrainedModel] | None:
    """The Auto class's first choice for this config (None for remote code).

    Resolved here because ``AutoModelForImageClassification.from_config`` fails in transformers
    5.23 for types with several classes (deit, levit) when ``architectures`` is unset.
    """
    if "AutoModelForImageClassification" in (getattr(config, "auto_map", None) or {}):
        return None
    if type(config) not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        raise ValueError(f"model type {config.model_type!r} has no transformers image-classification class")
    classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    return classes[0] if isinstance(classes, (list, tuple)) else classes


def _with_overrides(config: PreTrainedConfig, overrides: dict) -> PreTrainedConfig:
    """A copy of ``config`` rebuilt with ``overrides``.

    Rebuilding (rather than setattr) lets configs recompute derived fields, e.g. ResNet's
    ``stage_names`` from ``depths``.
    """
    if not overrides:
        return config
    _check_config_keys(config, overrides)
    if not dataclasses.is_dataclass(config):  # e.g. remote code: no way to tell derived fields
        for key, value in overrides.items():
            setattr(config, key, value)
        return config
    derived = _derived_keys(type(config))
    state = {k: v for k, v in config.to_dict().items() if k not in derived}
    return type(config).from_dict({**state, **overrides})


def _derived_keys(config_class: type[PreTrainedConfig]) -> set[str]:
    """Serialised keys a config computes itself (not dataclass fields): dropped before a rebuild."""
    fields = {field.name for field in dataclasses.fields(config_class)}
    return set(config_class().to_dict()) - fields - {"_name_or_path"}


def _check_config_keys(config: PreTrainedConfig, overrides: dict) -> None:
    valid = _config_keys(config)
    for key in overrides:
        if key in _LABEL_KEYS:
            raise ValueError(f"config_overrides sets {key!r}: pass num_labels / id2label / label2id instead")
        if key not in valid:
            raise ValueError(
                f"config_overrides key {key!r} is not a field of {type(config).__name__} "
                f"(model type {config.model_type!r}); {close_matches(key, sorted(valid))}"
            )


def _config_keys(config: PreTrainedConfig) -> set[str]:
    keys = set(config.to_dict()) | set(getattr(config, "attribute_map", {}) or {})
    if dataclasses.is_dataclass(config):
        keys |= {field.name for field in dataclasses.fields(config)}
    return keys - {"model_type", "transformers_version", "_name_or_path"}


def _classifier_class(config: PreTrainedConfig, *, explicit: bool) -> type[PreTrainedModel] | None:
    """The image-classification class the config's ``architectures`` names, if transformers has it.

    Returns None (use the Auto class) when ``architectures`` names no such class, e.g. a backbone
    checkpoint listing ``ViTModel``. ``explicit`` (the recipe set ``architectures``) turns that
    case into an error instead.
    """
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        model_class = getattr(transformers, name, None) if "ForImageClassification" in name else None
        if model_class is not None and isinstance(config, model_class.config_class):
            return model_class
    if explicit:
        raise ValueError(
            f"config_overrides architectures={names} names no transformers image-classification class "
            f"for model type {config.model_type!r}; e.g. DeiTForImageClassificationWithTeacher for 'deit'"
        )
    return None


def _load_pretrained(
    name_or_path: str,
    config: PreTrainedConfig,
    labels: LabelMaps | None,
    overrides: dict,
    trust_remote_code: bool,
    dtype: torch.dtype | str,
) -> PreTrainedModel:
    """Checkpoint weights; a head of a different size is re-initialised, nothing else is."""
    old_num_labels = config.num_labels
    explicit = "architectures" in overrides
    if isinstance(config, TimmWrapperConfig):
        config = _timm_with_overrides(config, overrides)
    else:
        config = _with_overrides(config, overrides)
    _set_labels(config, labels)
    resize_head = labels is not None and labels.num_labels != old_num_labels
    model_class = _classifier_class(config, explicit=explicit)
    loader = model_class or AutoModelForImageClassification
    extra = {} if model_class is not None else {"trust_remote_code": trust_remote_code}
    model, info = loader.from_pretrained(
        name_or_path, config=config, ignore_mismatched_sizes=resize_head, output_loading_info=True,
        use_safetensors=True, dtype=dtype, **extra,
    )
    if resize_head:
        _check_only_head_resized(name_or_path, info, old_num_labels, labels.num_labels)
    return model


def _check_only_head_resized(name: str, info: dict, old: int, new: int) -> None:
    """``ignore_mismatched_sizes`` would silently re-initialise any weight; allow only the head."""
    body = [entry[0] for entry in info.get("mismatched_keys", ())
            if isinstance(entry, tuple) and not _is_head_shape(entry[1], entry[2], old, new)]
    if body:
        raise ValueError(
            f"loading {name!r} with {new} labels (checkpoint: {old}) would also re-initialise "
            f"{sorted(body)}: config_overrides change the model body. Drop those overrides or pass "
            "from_scratch=True."
        )


def _is_head_shape(ckpt_shape: Any, model_shape: Any, old: int, new: int) -> bool:
    ckpt, model = tuple(ckpt_shape), tuple(model_shape)
    return len(ckpt) == len(model) >= 1 and ckpt[0] == old and model[0] == new and ckpt[1:] == model[1:]


# ---------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------


def build_timm_classifier(
    architecture: str,
    labels: LabelMaps | None = None,
    model_args: dict | None = None,
    base_pretrained_cfg: Mapping[str, Any] | None = None,
) -> TimmWrapperForImageClassification:
    """A timm model with timm's own random initialisation, inside the transformers wrapper.

    The timm model is created first, so under a fixed seed its weights equal
    ``timm.create_model(architecture, pretrained=False, num_classes=n, **model_args)``; the wrapper
    (which would re-initialise with transformers' init) is built on the meta device, with no
    memory and no second set of random weights, and then holds that timm model.

    Args:
        architecture: timm model name, optionally with a pretrained tag (``resnet18.a1_in1k``);
            the tag selects timm's data config, no weights are downloaded.
        labels: label maps; None keeps timm's default number of classes.
        model_args: extra ``timm.create_model`` keyword arguments, saved as ``model_args``.
        base_pretrained_cfg: data config to start from (e.g. a saved folder's); default timm's.
    """
    model_args = dict(model_args or {})
    timm_model = _create_timm_model(architecture, labels, model_args)
    labels = labels or LabelMaps.default(timm_model.num_classes)
    data_cfg = timm_data_config(base_pretrained_cfg or timm_model.pretrained_cfg, model_args)
    config = TimmWrapperConfig(
        architecture=architecture, model_args=model_args, pretrained_cfg=data_cfg,
        id2label=dict(labels.id2label), label2id=dict(labels.label2id),
    )
    with torch.device("meta"):  # half the CPU time of building and initialising it for real
        wrapper = TimmWrapperForImageClassification(config)
    wrapper.timm_model = timm_model
    return wrapper


def _create_timm_model(architecture: str, labels: LabelMaps | None, model_args: dict) -> torch.nn.Module:
    import timm

    _check_timm_args(architecture, model_args)
    kwargs = dict(model_args)
    if labels is not None:
        kwargs["num_classes"] = labels.num_labels
    try:
        return timm.create_model(architecture, pretrained=False, **kwargs)
    except RuntimeError as err:
        if "Unknown model" not in str(err):
            raise
        base = architecture.split(".")[0]
        raise ValueError(
            f"unknown timm architecture {architecture!r}; {close_matches(base, timm.list_models())}"
        ) from None
    except TypeError as err:
        raise ValueError(
            f"timm architecture {architecture!r} rejected config_overrides {sorted(model_args)}: {err}"
        ) from None


def _timm_with_overrides(config: TimmWrapperConfig, overrides: dict) -> TimmWrapperConfig:
    """Overrides of a timm checkpoint are ``timm.create_model`` arguments, not config fields.

    Also makes sure the config carries a ``pretrained_cfg`` that matches those arguments.
    """
    model_args = {**_saved_model_args(config), **overrides}
    _check_timm_args(config.architecture, model_args)
    config.model_args = model_args
    # without pretrained_cfg, AutoImageProcessor could not load the folder this model is saved to
    base = getattr(config, "pretrained_cfg", None)
    if not base:
        try:
            base = _timm_registry_cfg(config.architecture)
        except ValueError:
            logger.warning("timm model %r has no pretrained_cfg: its saved folder will lack an image "
                           "processor", config.architecture)
            return config
    config.pretrained_cfg = timm_data_config(base, model_args)
    return config


def _saved_model_args(config: TimmWrapperConfig) -> dict[str, Any]:
    """A checkpoint's ``model_args`` without ``num_classes``.

    timm's own ``save_for_hf`` stores ``num_classes`` there too; the wrapper passes the config's
    ``num_labels`` as well, which would make ``timm.create_model`` fail on the duplicate.
    """
    return {k: v for k, v in (config.model_args or {}).items() if k != "num_classes"}


def _check_timm_args(architecture: str, model_args: Mapping[str, Any]) -> None:
    for key, hint in _TIMM_RESERVED_ARGS.items():
        if key in model_args:
            raise ValueError(f"config_overrides for timm model {architecture!r} sets {key!r}: {hint}")


def timm_data_config(base: Mapping[str, Any], model_args: Mapping[str, Any]) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for a model built with ``model_args``.

    Keeps the data config (mean, std, crop_pct, interpolation...), drops where pretrained weights
    would come from, and sets ``input_size`` from ``img_size`` / ``in_chans`` overrides: timm
    does not, and ``TimmWrapperImageProcessor`` would otherwise resize to the original size.
    """
    cfg = {k: v for k, v in dict(base).items() if v is not None and k not in _TIMM_PROVENANCE_KEYS}
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    if "in_chans" in model_args:
        channels = int(model_args["in_chans"])
    if "img_size" in model_args:
        height, width = _as_hw(model_args["img_size"])
        cfg.pop("test_input_size", None)
    cfg["input_size"] = (int(channels), int(height), int(width))
    return cfg


def _as_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"an image size must be an int or (height, width), got {size!r}")


# ---------------------------------------------------------------------------------------------
# Image processors
# ---------------------------------------------------------------------------------------------


def load_image_processor(
    name_or_path: str,
    model: PreTrainedModel | None = None,
    *,
    trust_remote_code: bool = False,
    image_size: int | tuple[int, int] | None = None,
):
    """The image processor that prepares inputs for ``model`` the way it expects them.

    * timm models (``timm/<arch>``, or any model with a timm config): a
      ``TimmWrapperImageProcessor`` from the model's ``pretrained_cfg`` (offline; without a model,
      from timm's registry entry for the architecture). It is saved inside ``config.json``.
    * ``config:<model_type>``: that type's default processor class, resized to the config's
      ``image_size`` when it has one.
    * Hub ids and folders: ``AutoImageProcessor.from_pretrained``.

    Args:
        name_or_path: the same name given to ``load_image_classifier``.
        model: the loaded model; its config decides sizes and the timm data config.
        trust_remote_code: passed to ``AutoImageProcessor``.
        image_size: output resolution to force (e.g. a CNN built from ``config:resnet`` trained at
            32 px). timm processors are rebuilt from the model config's ``pretrained_cfg`` when
            the model is reloaded, so for them the model's ``pretrained_cfg`` is updated too (the
            architecture itself is unchanged: ViTs keep their ``img_size``, set it in
            ``config_overrides`` to change the patch grid).
    """
    source = parse_model_source(name_or_path)
    config = model.config if model is not None else None
    if isinstance(config, TimmWrapperConfig) or (source.kind == "timm" and config is None):
        if image_size is not None:
            if config is None:
                raise ValueError("image_size for a timm model needs the model, whose config carries the input size")
            height, width = _as_hw(image_size)
            config.pretrained_cfg = {**config.pretrained_cfg, "input_size": [3, height, width], "crop_pct": 1.0}
        return _timm_processor(source, config)
    if source.kind == "config":
        processor = default_image_processor(config or _default_config(source.name))
    else:
        processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return resize_image_processor(processor, image_size) if image_size is not None else processor


def _timm_processor(source: ModelSource, config: TimmWrapperConfig | None):
    from transformers import TimmWrapperImageProcessor

    if config is not None and getattr(config, "pretrained_cfg", None):
        architecture, data_cfg = config.architecture, dict(config.pretrained_cfg)
    else:
        architecture = config.architecture if config is not None else source.name
        data_cfg = _timm_registry_cfg(architecture)
    return TimmWrapperImageProcessor(pretrained_cfg=data_cfg, architecture=architecture)


def _timm_registry_cfg(architecture: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture)
    if cfg is None:
        raise ValueError(f"timm has no data config for {architecture!r}; load the model first and pass it")
    return timm_data_config(cfg.to_dict(), {})


def default_image_processor(config: PreTrainedConfig):
    """The default processor class of a transformers model type, at the config's ``image_size``.

    Configs without ``image_size`` (ResNet, RegNet) get 224, the ImageNet convention: the class
    defaults differ (ConvNeXt's processor, which ResNet uses, defaults to 384).

    Prefers the torchvision backend when installed, like ``AutoImageProcessor``, so that the saved
    processor reloads as the same class.
    """
    mapping = IMAGE_PROCESSOR_MAPPING[type(config)] if type(config) in IMAGE_PROCESSOR_MAPPING else {}
    processor_class = _pick_backend(mapping)
    if processor_class is None:
        raise ValueError(f"transformers has no default image processor for model type {config.model_type!r}")
    image_size = getattr(config, "image_size", None) or DEFAULT_IMAGE_SIZE
    return resize_image_processor(processor_class(), image_size)


def _pick_backend(mapping: Mapping[str, Any]) -> type | None:
    order = ("torchvision", "pil") if is_torchvision_available() else ("pil", "torchvision")
    for backend in order + tuple(k for k in mapping if k not in ("torchvision", "pil")):
        candidate = mapping.get(backend)
        if isinstance(candidate, type) and not getattr(candidate, "is_dummy", False):
            return candidate
    return None


def resize_image_processor(processor, image_size: int | tuple[int, int]):
    """A copy of a transformers image processor whose output is ``image_size`` (height, width).

    A processor that resizes then centre-crops keeps its resize-to-crop ratio (DeiT: 256 -> 224
    becomes 37 -> 32); ConvNeXt-style ``shortest_edge`` + ``crop_pct`` becomes that edge; a plain
    ``height``/``width`` resize is replaced.

    Raises:
        ValueError: a processor whose output size depends on the image (no crop, shortest edge).
    """
    height, width = _as_hw(image_size)
    state = processor.to_dict()
    size, crop = dict(state.get("size") or {}), dict(state.get("crop_size") or {})
    if state.get("do_center_crop") and crop.get("height"):
        scale_h, scale_w = height / crop["height"], width / crop["width"]
        state["crop_size"] = {"height": height, "width": width}
        state["size"] = _scaled_size(size, scale_h, scale_w)
    elif state.get("crop_pct") and size.get("shortest_edge") and height == width:
        state["size"] = {"shortest_edge": height}
    elif size.get("height"):
        state["size"] = {"height": height, "width": width}
    else:
        raise ValueError(
            f"cannot set the output size of {type(processor).__name__} (size={size}, crop_size={crop}); "
            "save a processor with a fixed output size next to the model instead"
        )
    return type(processor).from_dict(state)


def _scaled_size(size: dict, scale_h: float, scale_w: float) -> dict[str, int]:
    if size.get("height"):
        return {"height": round(size["height"] * scale_h), "width": round(size["width"] * scale_w)}
    if size.get("shortest_edge"):
        return {"shortest_edge": round(size["shortest_edge"] * min(scale_h, scale_w))}
    raise ValueError(f"cannot scale image processor size {size}")
