"""Build or load an image classifier, from any name a recipe can give, that saves as plain transformers.

* a Hub id or a saved folder -> its checkpoint (``AutoModelForImageClassification`` or the class
  its ``architectures`` names); a head of another size is re-initialised, nothing else is;
* ``timm/<architecture>`` -> a timm model inside ``TimmWrapperForImageClassification``
  (``timm_models``), so the trained student still loads with ``AutoModelForImageClassification``;
* ``config:<model_type>`` -> that type's default config plus ``config_overrides``, random
  weights (``hf_config``).

DeiT's distillation head: ``config_overrides={"architectures": ["DeiTForImageClassificationWithTeacher"]}``
gives a student with both heads. A folder saved from it reloads with both, here and through
``AutoModelForImageClassification`` (transformers 5.23 picks deit's class from ``architectures``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoModelForImageClassification, PreTrainedConfig, PreTrainedModel, TimmWrapperConfig

from ..errors import first_names
from .hf_config import classifier_class, default_class, default_config, load_config, with_overrides
from .label_maps import LabelMaps, resolve_labels, set_labels
from .sources import parse_model_source
from .token_init import draw_zeroed_tokens
from .timm_models import build_timm_classifier, saved_model_args, timm_with_overrides

ImageSize = int | tuple[int, int] | None
logger = logging.getLogger(__name__)


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
    image_size: ImageSize = None,
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
        image_size: the resolution the model is trained and served at. timm models record it in
            their data config (``config.json``'s ``pretrained_cfg``), the only place a saved timm
            folder's processor is rebuilt from; other models' processors are saved as their own
            file, so for them this is ignored here (give it to ``load_image_processor``).

    Returns:
        A ``PreTrainedModel`` whose ``save_pretrained`` output loads with
        ``AutoModelForImageClassification`` and no hf_rcka.
    """
    labels = resolve_labels(num_labels, id2label, label2id)
    overrides = dict(config_overrides or {})
    source = parse_model_source(name_or_path)
    if source.kind == "config":
        return _build_from_config(default_config(source.name), labels, overrides, trust_remote_code, image_size)
    if source.kind == "timm" and from_scratch:
        return build_timm_classifier(source.name, labels, overrides, image_size=image_size)
    config = load_config(name_or_path, trust_remote_code)
    if from_scratch:
        return _build_from_config(config, labels, overrides, trust_remote_code, image_size)
    return _load_pretrained(name_or_path, config, labels, overrides, trust_remote_code, dtype, image_size)


def build_without_weights(
    name_or_path: str,
    *,
    num_labels: int | None = None,
    config_overrides: dict | None = None,
    trust_remote_code: bool = False,
    image_size: ImageSize = None,
) -> PreTrainedModel:
    """The architecture :func:`load_image_classifier` builds from ``name_or_path``, on the meta device.

    No weight is read or drawn: only the config (a folder's, or the Hub cache's) and the overrides
    decide it, so a recipe can be checked against the model (how many hidden states it has) in a
    second, where loading a large teacher takes minutes. Its head has ``num_labels`` classes, or
    the config's. Raises what building raises; an architecture whose construction reads values
    (not only shapes) cannot be built so.
    """
    with torch.device("meta"):
        return load_image_classifier(name_or_path, num_labels=num_labels, from_scratch=True,
                                     config_overrides=config_overrides, trust_remote_code=trust_remote_code,
                                     image_size=image_size)


def _build_from_config(
    config: PreTrainedConfig, labels: LabelMaps | None, overrides: dict, trust_remote_code: bool,
    image_size: ImageSize,
) -> PreTrainedModel:
    """Random weights from a config (timm configs keep timm's initialisation)."""
    if isinstance(config, TimmWrapperConfig):
        labels = labels or LabelMaps.from_config(config)
        model_args = {**saved_model_args(config), **overrides}
        base_cfg = getattr(config, "pretrained_cfg", None)
        return build_timm_classifier(config.architecture, labels, model_args, base_cfg, image_size)
    config = with_overrides(config, overrides)
    set_labels(config, labels)
    _single_label(config, labels)
    model_class = classifier_class(config, explicit="architectures" in overrides) or default_class(config)
    if model_class is not None:
        model = model_class(config)
    else:
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code)
    drawn = draw_zeroed_tokens(model)
    if drawn:
        logger.info("drew %s at random (as the architecture's paper does): transformers left them at zero",
                    ", ".join(drawn))
    return model


def _single_label(config: PreTrainedConfig, labels: LabelMaps | None) -> None:
    """A classifier given the task's labels learns one class per image (softmax cross-entropy, top-1
    of the argmax): a checkpoint's other ``problem_type`` (a multi-label tagger's, a regressor's) is
    replaced, or its export would tell ``pipeline("image-classification")`` to score the classes with
    independent sigmoids and transformers' own loss to expect multi-hot or float targets."""
    if labels is not None:
        as_single_label(config)


def as_single_label(config: PreTrainedConfig, whose: str = "the model's") -> None:
    """Set a config's ``problem_type`` other than single-label to single-label, and say so (see
    ``_single_label``; ``DistillationTrainer`` does it to the student a Python caller gives)."""
    problem_type = getattr(config, "problem_type", None)
    if problem_type in (None, "single_label_classification"):
        return
    logger.warning("%s config says problem_type %r; it is trained for one class per image here, and saved with "
                   "problem_type 'single_label_classification'", whose, problem_type)
    config.problem_type = "single_label_classification"


def _load_pretrained(
    name_or_path: str,
    config: PreTrainedConfig,
    labels: LabelMaps | None,
    overrides: dict,
    trust_remote_code: bool,
    dtype: torch.dtype | str,
    image_size: ImageSize,
) -> PreTrainedModel:
    """Checkpoint weights; a head of a different size is re-initialised, nothing else is."""
    old_num_labels = config.num_labels
    explicit = "architectures" in overrides
    if isinstance(config, TimmWrapperConfig):
        config = timm_with_overrides(config, overrides, image_size)
    else:
        config = with_overrides(config, overrides)
    set_labels(config, labels)
    _single_label(config, labels)
    resize_head = labels is not None and labels.num_labels != old_num_labels
    model_class = classifier_class(config, explicit=explicit)
    loader = model_class or AutoModelForImageClassification
    extra = {} if model_class is not None else {"trust_remote_code": trust_remote_code}
    try:
        model, info = loader.from_pretrained(
            name_or_path, config=config, ignore_mismatched_sizes=resize_head, output_loading_info=True,
            use_safetensors=True, dtype=dtype, **extra,
        )
    except OSError as err:
        if "safetensors" not in str(err):
            raise
        if isinstance(err, FileNotFoundError) and "-of-" in str(err):  # a shard the index lists is missing
            raise OSError(f"{name_or_path!r}: a shard its safetensors index lists is missing ({err}): copy the whole "
                          "folder save_pretrained wrote") from None
        # a Hub model with pickled weights only (a local folder is refused before the data loads)
        raise OSError(f"{name_or_path!r} has no safetensors weights, and hf_rcka loads no others (a pickle file can "
                      "run code as it loads): convert them in a session that trusts them, with transformers' "
                      "from_pretrained and then save_pretrained(folder, safe_serialization=True), and give that "
                      "folder") from None
    except RuntimeError as err:
        if overrides and "mismatched" in str(err):  # transformers' size-mismatch refusal, whose report went to the log
            dynamic = (" (a timm ViT takes another image size with its weights through dynamic_img_size: true "
                       "instead of img_size)" if "img_size" in overrides else "")
            raise ValueError(f"config_overrides {sorted(overrides)} change the shapes of {name_or_path!r}'s weights, "
                             "which cannot load into them: drop those overrides, or build the model from scratch "
                             f"(student_from_scratch: true){dynamic}") from None
        if "mismatched" in str(err):
            raise ValueError(f"{name_or_path!r} holds weights of other shapes than its config.json describes (a "
                             "config of another model beside these weights): give the folder save_pretrained wrote, "
                             "config and weights together") from None
        raise
    if resize_head:
        _check_only_head_resized(name_or_path, info, old_num_labels, labels.num_labels)
    _check_no_new_weights(name_or_path, model, info, overrides, head_may_be_new=labels is not None)
    _check_no_dropped_weights(name_or_path, model, info, overrides, student=labels is not None)
    return model


def _check_no_new_weights(name: str, model: PreTrainedModel, info: dict, overrides: dict,
                          head_may_be_new: bool) -> None:
    """Weights the checkpoint lacks start random, and transformers only logs it: overrides that add
    layers (``num_hidden_layers: 6`` on a 4-layer checkpoint), a checkpoint of another class or
    with other key names (every weight random, the run ending well at chance). Only a model trained
    for the run's classes (the student) may start its own head anew (a checkpoint of a backbone
    alone) and the normalisation layers outside its blocks (``_head_and_norm_weights``); a model
    used as it is (the teacher) may not."""
    allowed = _head_and_norm_weights(model) if head_may_be_new else set()
    # a checkpoint without BatchNorm's step counters (older conversions): torch starts them at 0
    missing = sorted(key for key in info.get("missing_keys", ()) if not key.endswith("num_batches_tracked"))
    new = [key for key in missing if key not in allowed]
    if not new:
        if missing:  # a backbone's checkpoint: said here too, not only in transformers' table
            logger.warning("%s: its checkpoint has no weights for %s, which start random and train with the run (a "
                           "checkpoint of the backbone alone)", name, first_names(missing))
        return
    shown = first_names(new)
    if overrides:
        raise ValueError(f"config_overrides {sorted(overrides)} give {name!r} weights its checkpoint does not have "
                         f"({shown}): they would start random. Drop those overrides, or build the model from scratch "
                         "(student_from_scratch: true)")
    raise ValueError(f"{name!r}'s checkpoint has no weights for {shown} of {type(model).__name__}: they would start "
                     "random (a checkpoint of another model class, or whose weights are named otherwise). Give a "
                     "checkpoint of this architecture saved with save_pretrained")


def _check_no_dropped_weights(name: str, model: PreTrainedModel, info: dict, overrides: dict, student: bool) -> None:
    """Checkpoint weights the model has no place for are dropped, and transformers only logs it:
    ``num_hidden_layers: 1`` ran a 4-block teacher on its first block (the teacher check passed at
    63%, and the card pointed at preprocessing). A block's weights (a path with a block number)
    left out by overrides, or by a teacher, are refused; others (a pooler, the head of another
    class, a pre-training decoder) are said."""
    dropped = sorted(key for key in info.get("unexpected_keys", ()) if not key.endswith("num_batches_tracked"))
    if not dropped:
        return
    # not a buffer the model computes itself, which an older save held (LeViT's attention indices)
    buffers = {name for name, _ in model.named_buffers()}
    in_blocks = [key for key in dropped if any(part.isdigit() for part in key.split(".")) and key not in buffers]
    if in_blocks and (overrides or not student):
        cause = f"config_overrides {sorted(overrides)} leave" if overrides else f"{type(model).__name__} leaves"
        raise ValueError(f"{cause} {name!r}'s weights {first_names(in_blocks)} unused: the model would run without "
                         "those layers. Drop the overrides, or give a checkpoint of this architecture"
                         + (", or build the model from scratch (student_from_scratch: true)" if student else ""))
    logger.warning("%s: its checkpoint's weights %s have no place in %s and are not used", name, first_names(dropped),
                   type(model).__name__)


# The attributes transformers' image classifiers keep their heads in (DeiT's and LeViT's distillation heads too)
_HEAD_ATTRIBUTES = ("classifier", "cls_classifier", "distillation_classifier", "head", "fc")


def _head_and_norm_weights(model: PreTrainedModel) -> set[str]:
    """What a student may start anew from a checkpoint of a backbone: its heads (the model's own:
    timm's ``get_classifier()``, transformers' classifier attributes) and the normalisation layers
    after its last repeated block (a pooler's or final norm: a masked-image-modelling checkpoint has
    none), which start as the identity. A norm inside a block (a path with a block number) or
    before the blocks (a CNN's stem norm, whose statistics the blocks were trained on) is body.
    """
    heads = []
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "get_classifier"):
        found = timm_model.get_classifier()
        heads += list(found) if isinstance(found, (tuple, list)) else [found]
    heads += [getattr(model, name) for name in _HEAD_ATTRIBUTES if isinstance(getattr(model, name, None), torch.nn.Module)]
    head_ids = {id(head) for head in heads}
    names = set()
    modules = list(model.named_modules())
    head_names = [name for name, module in modules if id(module) in head_ids]
    in_head = [any(name == head or name.startswith(f"{head}.") for head in head_names) for name, _ in modules]
    in_block = [any(part.isdigit() for part in name.split(".")) and not head
                for (name, _), head in zip(modules, in_head)]  # a Sequential head's classifier.1 is no block
    last_block = max((i for i, inside in enumerate(in_block) if inside), default=-1)
    for i, (module_name, module) in enumerate(modules):
        norm = isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._NormBase))
        if id(module) in head_ids or norm and i > last_block:
            prefix = f"{module_name}." if module_name else ""
            names |= {prefix + name for name, _ in module.named_parameters()}
            names |= {prefix + name for name, _ in module.named_buffers()}
    return names


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
