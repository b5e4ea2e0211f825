"""Image processors that prepare inputs the way a model expects them, at the run's resolution.

* timm models: a ``TimmWrapperImageProcessor`` from the model's data config (``pretrained_cfg``),
  offline. A saved timm model's processor is rebuilt from its ``config.json``, so the resolution
  it is served at is recorded there when the model is built (``load_image_classifier``'s
  ``image_size``), never by this module.
* ``config:<model_type>``: that type's default processor class, at the config's ``image_size``.
* Hub ids and folders: ``AutoImageProcessor.from_pretrained``.

The default processor classes are read from transformers' ``IMAGE_PROCESSOR_MAPPING`` (what
``AutoImageProcessor`` consults): transformers has no public call that gives a model type's
processor class without a saved ``preprocessor_config.json``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from transformers import AutoImageProcessor, PreTrainedConfig, PreTrainedModel, TimmWrapperConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.utils import is_torchvision_available

from ..run_record import RECIPE_RECORD
from .hf_config import default_config
from .image_sizes import as_hw, processor_output_size
from .sources import ModelSource, parse_model_source
from .timm_models import resize_timm_data_config, timm_registry_cfg

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224
# Model types transformers lists no image processor for, and the type whose processor their checkpoints
# use (facebook/dinov2-with-registers-*: Dinov2's BitImageProcessor)
_PROCESSOR_OF = {"dinov2_with_registers": "dinov2"}
# The centre crop's share of the resized short side that a default processor keeps when its class's
# own defaults resize below the crop: timm's and the ImageNet convention's 224 of 256.
DEFAULT_CROP_PCT = 0.875
# The files AutoImageProcessor reads a saved processor from
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def carries_data_config(config: dict) -> bool:
    """Whether a ``config.json`` (as read) is a timm model's, which carries its data config and needs
    no processor file: timm's own (``architecture``) or transformers' ``timm_wrapper``."""
    return isinstance(config, dict) and bool(config.get("architecture") or config.get("model_type") == "timm_wrapper")


def load_image_processor(
    name_or_path: str,
    model: PreTrainedModel | None = None,
    *,
    trust_remote_code: bool = False,
    image_size: int | tuple[int, int] | None = None,
    config: PreTrainedConfig | None = None,
):
    """The image processor that prepares inputs for ``model`` the way it expects them.

    Reads the model's config and never changes it.

    Args:
        name_or_path: the same name given to ``load_image_classifier``.
        model: the loaded model; its config decides sizes and the timm data config.
        config: that config without the model (the recipe checks a ``config:`` type's processor
            before anything loads); ``model``'s wins when both are given.
        trust_remote_code: passed to ``AutoImageProcessor``.
        image_size: output resolution to force (e.g. a CNN built from ``config:resnet`` trained at
            32 px). A timm model's saved folder rebuilds its processor from the model's own data
            config, so build the model with the same ``image_size`` (``load_image_classifier``);
            a mismatch is logged.
    """
    source = parse_model_source(name_or_path)
    config = model.config if model is not None else config
    if isinstance(config, TimmWrapperConfig) or (source.kind == "timm" and config is None):
        return _timm_processor(source, config, image_size)
    if source.kind == "config":
        processor = default_image_processor(config or default_config(source.name))
    else:
        processor = _from_pretrained(name_or_path, trust_remote_code)
    processor = resize_image_processor(processor, image_size) if image_size is not None else processor
    return _converting_to_rgb(processor, config)


def _from_pretrained(name_or_path: str, trust_remote_code: bool):
    """``AutoImageProcessor.from_pretrained``; a local folder without a processor is one line with
    the fix (transformers' message talks of the Hub and of folders named like a repo id)."""
    try:
        return AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError:
        if not os.path.isdir(name_or_path) or any(os.path.exists(os.path.join(name_or_path, name))
                                                  for name in PROCESSOR_FILES):
            raise
        raise ValueError(no_processor(name_or_path)) from None


def no_processor(folder: str) -> str:
    """What a model folder without an image processor lacks, and the fix."""
    lacks = (f"{folder} holds no preprocessor_config.json, so how the model expects its images (size, "
             "normalisation) is unknown")
    # an hf_rcka run's export writes the processor after the weights: a kill in between left this (its
    # recipe record tells it from a transformers Trainer folder, which holds checkpoint-* folders too)
    if os.path.isfile(os.path.join(folder, RECIPE_RECORD)):
        return (f"{lacks}: the run there was stopped before its export was whole; finish it by resuming the run "
                f"(--resume_from_checkpoint true with its recipe), or save its image processor next to it")
    return f"{lacks}: save its image processor next to it (processor.save_pretrained({folder!r}))"


def _converting_to_rgb(processor, config: PreTrainedConfig | None):
    """``processor`` set to convert images to RGB itself, as training and evaluation do.

    Evaluation converts every image to RGB (transparency over white) before the processor. Most
    processors leave ``do_convert_rgb`` unset, so the saved one would fail on a grayscale photo
    and read an RGBA one differently from what ``eval_accuracy`` measured; transformers'
    conversion also composites transparency over white. A processor that says False is kept.
    """
    if getattr(processor, "do_convert_rgb", False) is None and getattr(config, "num_channels", 3) == 3:
        processor.do_convert_rgb = True
    return processor


def _timm_processor(source: ModelSource, config: TimmWrapperConfig | None, image_size: Any):
    from transformers import TimmWrapperImageProcessor

    if image_size is not None and config is None:
        raise ValueError("image_size for a timm model needs the model, whose config carries the input size")
    if config is not None and getattr(config, "pretrained_cfg", None):
        architecture, data_cfg = config.architecture, dict(config.pretrained_cfg)
    else:
        architecture = config.architecture if config is not None else source.name
        data_cfg = timm_registry_cfg(architecture)
    if image_size is not None:
        data_cfg = _timm_at_size(data_cfg, image_size, architecture)
    return TimmWrapperImageProcessor(pretrained_cfg=data_cfg, architecture=architecture)


def _timm_at_size(data_cfg: dict[str, Any], image_size: Any, architecture: str) -> dict[str, Any]:
    resized = resize_timm_data_config(data_cfg, image_size)
    if tuple(resized["input_size"]) != tuple(data_cfg.get("input_size", ())):
        logger.warning(
            "timm model %r records input_size %s in its config; its saved folder will preprocess at that "
            "size, not %s. Pass image_size to load_image_classifier as well", architecture,
            data_cfg.get("input_size"), resized["input_size"],
        )
    return resized


def default_image_processor(config: PreTrainedConfig):
    """The default processor class of a transformers model type, at the config's ``image_size``.

    Configs without ``image_size`` (ResNet, RegNet) get 224, the ImageNet convention: the class
    defaults differ (ConvNeXt's processor, which ResNet uses, defaults to 384).

    Prefers the torchvision backend when installed, like ``AutoImageProcessor``, so that the saved
    processor reloads as the same class.
    """
    alias = _PROCESSOR_OF.get(getattr(config, "model_type", None))
    config_class = CONFIG_MAPPING[alias] if alias else type(config)
    mapping = IMAGE_PROCESSOR_MAPPING[config_class] if config_class in IMAGE_PROCESSOR_MAPPING else {}
    processor_class = _pick_backend(mapping)
    if processor_class is None:
        raise ValueError(f"transformers has no default image processor for model type {config.model_type!r}")
    image_size = getattr(config, "image_size", None) or DEFAULT_IMAGE_SIZE
    processor = processor_class()
    if getattr(processor, "do_flip_channel_order", False):
        # MobileViT's flips to BGR, which no transform of the run reproduces: a model built here
        # (from scratch) learns the RGB the run feeds it, and its saved processor gives it RGB too
        processor.do_flip_channel_order = False
    _crop_within_the_image(processor)
    return resize_image_processor(processor, image_size)


def _crop_within_the_image(processor) -> None:
    """A class whose defaults resize the short side below its crop (MobileViT's: 224, then a 256 crop)
    pads every image with black borders, in training, evaluation, the teacher's view and the saved
    processor alike (a quarter of a square image's pixels at 32 px); it resizes to the crop's
    ``DEFAULT_CROP_PCT`` instead."""
    size, crop = getattr(processor, "size", None) or {}, getattr(processor, "crop_size", None) or {}
    edge = size.get("shortest_edge")
    crop_edge = max(crop.get("height") or 0, crop.get("width") or 0)
    if edge and getattr(processor, "do_center_crop", True) and edge < crop_edge:
        processor.size = {"shortest_edge": round(crop_edge / DEFAULT_CROP_PCT)}


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
        ValueError: a processor whose output size depends on the image (no crop, shortest edge),
            or a non-square size for a shortest-edge processor.
    """
    height, width = as_hw(image_size)
    fix = "; save one next to the model and load that folder"
    current = processor_output_size(processor, fix=fix)
    state = processor.to_dict()
    if current.rule == "crop_size":
        state["crop_size"] = {"height": height, "width": width}
        state["size"] = _scaled_size(dict(state.get("size") or {}), height / current.height, width / current.width)
    elif current.rule == "shortest_edge":
        if height != width:
            raise ValueError(
                f"{type(processor).__name__} crops a square (shortest_edge with crop_pct): it cannot output "
                f"{height} x {width}; use a square image_size"
            )
        state["size"] = {"shortest_edge": height}
    else:
        state["size"] = {"height": height, "width": width}
    return type(processor).from_dict(state)


def _scaled_size(size: dict, scale_h: float, scale_w: float) -> dict[str, int]:
    if size.get("height"):
        return {"height": round(size["height"] * scale_h), "width": round(size["width"] * scale_w)}
    if size.get("shortest_edge"):
        # the short side must cover the crop's longer one: scaled by the smaller ratio, a square or
        # upright image was padded with black to the crop's width
        return {"shortest_edge": round(size["shortest_edge"] * max(scale_h, scale_w))}
    raise ValueError(f"cannot scale image processor size {size}")
