"""transformers configs for image classifiers: read, defaulted by model type, overridden, checked.

A recipe's ``config_overrides`` are checked against the config's own fields, so that a typo is an
error naming the closest field rather than an attribute transformers silently ignores. The model
class comes from the config's ``architectures`` when it names a transformers image-classification
class: ``{"architectures": ["DeiTForImageClassificationWithTeacher"]}`` gives a DeiT student with
a distillation head (``config:deit`` alone gives ``DeiTForImageClassification``).

The model types with an image-classification head, and each type's first class, are read from
transformers' Auto mappings (``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[_NAMES]``): they are what
``AutoModelForImageClassification`` itself consults, and transformers offers no public function
that lists them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os

import transformers
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
)

from ..registry import close_matches

logger = logging.getLogger(__name__)

# label fields have their own arguments, checked together (see label_maps.resolve_labels)
LABEL_KEYS = ("num_labels", "id2label", "label2id")


def load_config(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedConfig:
    """The config of a Hub id or a saved folder (no weights), with errors that say what to fix.

    Raises:
        FileNotFoundError: a folder without ``config.json``.
        OSError: the config cannot be read (offline Hub, no cache...).
    """
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise FileNotFoundError(
            f"folder {name_or_path!r} has no config.json; pass the folder that save_pretrained wrote"
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        where = "local folder" if os.path.isdir(name_or_path) else "Hub repository"
        raise OSError(
            f"could not read the config of {where} {name_or_path!r}. A folder needs the config.json "
            "that save_pretrained writes; a Hub id needs network access (HF_HUB_OFFLINE unset) or a "
            f"cached copy; 'timm/<arch>' and 'config:<type>' with from_scratch need neither. Cause: {err}"
        ) from err
    if getattr(config, "auto_map", None) and not trust_remote_code:
        # a type transformers knows loads as its built-in class: the repository's own code never
        # runs, and an export that kept the auto_map would point at files it does not hold
        logger.warning("%s names code of its own (auto_map %s), which is not used without trust_remote_code: it "
                       "loads as transformers' %s, and the auto_map is dropped from its config", name_or_path,
                       sorted(config.auto_map), config.model_type)
        del config.auto_map
    return config


def default_config(model_type: str) -> PreTrainedConfig:
    """The default config of a transformers model type that has an image-classification head.

    Raises:
        ValueError: no such type (with the closest names), or ``timm_wrapper`` (use ``timm/``).
    """
    if model_type == "timm_wrapper":
        raise ValueError("use 'timm/<architecture>' for timm models, not 'config:timm_wrapper'")
    types = sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    if model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ValueError(
            f"'config:{model_type}': {model_type!r} is not a transformers model type with an "
            f"image-classification head; {close_matches(model_type, types)}"
        )
    return AutoConfig.for_model(model_type)


def with_overrides(config: PreTrainedConfig, overrides: dict) -> PreTrainedConfig:
    """A copy of ``config`` rebuilt with ``overrides`` (checked); ``config`` itself when there are none.

    Rebuilding (rather than setattr) lets configs recompute derived fields, e.g. ResNet's
    ``stage_names`` from ``depths``. Configs that are not dataclasses (remote code) cannot tell
    derived fields apart; a copy of them gets the overrides as attributes.
    """
    if not overrides:
        return config
    check_config_keys(config, overrides)
    if not dataclasses.is_dataclass(config):
        config = copy.deepcopy(config)
        for key, value in overrides.items():
            setattr(config, key, value)
        return config
    derived = _derived_keys(type(config))
    state = {k: v for k, v in config.to_dict().items() if k not in derived}
    try:
        return type(config).from_dict({**state, **overrides})
    except StrictDataclassError as err:  # transformers' configs check each field's type: a traceback, before
        # the data had loaded (``num_hidden_layers: "4"``, a YAML 1.1 ``qkv_bias: yes``, which YAML 1.2 reads as text)
        reason = str(err.__cause__ or err).strip()
        raise ValueError(f"config_overrides: {reason} (a value of another type than {type(config).__name__}'s "
                         "field; quoted numbers and yes/no are text)") from None


def _derived_keys(config_class: type[PreTrainedConfig]) -> set[str]:
    """Serialised keys a config computes itself (not dataclass fields): dropped before a rebuild."""
    fields = {field.name for field in dataclasses.fields(config_class)}
    return set(config_class().to_dict()) - fields - {"_name_or_path"}


def check_config_keys(config: PreTrainedConfig, overrides: dict) -> None:
    """Every override must be a field of ``config``; label fields have their own arguments.

    Raises:
        ValueError: naming the key and the closest fields.
    """
    valid = _config_keys(config)
    for key in overrides:
        if key in LABEL_KEYS:
            raise ValueError(f"config_overrides sets {key!r}: pass num_labels / id2label / label2id instead")
        if key not in valid:
            raise ValueError(
                f"config_overrides key {key!r} is not a field of {type(config).__name__} "
                f"(model type {config.model_type!r}); {close_matches(key, sorted(valid))}"
            )


def check_hf_overrides(config: PreTrainedConfig, overrides: dict) -> None:
    """``overrides`` build a config, and an ``architectures`` among them names an image-classification
    class of its model type (what loading will ask of them).

    Raises:
        ValueError: naming the key or the class.
    """
    built = with_overrides(config, overrides)
    if "architectures" in overrides:
        classifier_class(built, explicit=True)


def _config_keys(config: PreTrainedConfig) -> set[str]:
    keys = set(config.to_dict()) | set(getattr(config, "attribute_map", {}) or {})
    if dataclasses.is_dataclass(config):
        keys |= {field.name for field in dataclasses.fields(config)}
    return keys - {"model_type", "transformers_version", "_name_or_path"}


def classifier_class(config: PreTrainedConfig, *, explicit: bool) -> type[PreTrainedModel] | None:
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


def default_class(config: PreTrainedConfig) -> type[PreTrainedModel] | None:
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
