"""timm models inside transformers' ``TimmWrapperForImageClassification``, and their data config.

The wrapper lets a trained timm student load again with ``AutoModelForImageClassification`` and
no hf_rcka. Two traps shape this module:

* ``TimmWrapperForImageClassification`` re-initialises every weight with transformers' generic
  init when it is built from a config, which throws away timm's own initialisation
  (zero-initialised last BatchNorm of each residual block, truncated-normal ViT weights...).
  timm students are therefore created with ``timm.create_model`` and put into a wrapper built on
  the meta device.
* ``AutoImageProcessor`` rebuilds a saved timm model's processor from the data config in its
  ``config.json`` (``pretrained_cfg``; ``TimmWrapperImageProcessor.save_pretrained`` writes
  nothing). Every wrapper built here carries a data config that matches the model actually built
  (a smaller ``img_size``, the run's ``image_size``), resolved once when the model is built.

A saved timm student also loads in timm itself (``timm.create_model("hf-hub:<repo>",
pretrained=True)``), as timm's own Hub models do: its weights are saved under timm's names, without
the wrapper's ``timm_model.`` prefix (``timm_native_state``; transformers adds it back on load), and
its config keeps no ``pretrained_cfg_overlay`` among the ``model_args``, since the ``pretrained_cfg``
it records already holds it (timm refused the keyword twice).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Mapping

import torch
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from ..errors import spelt_boolean
from ..registry import close_matches
from .image_sizes import as_hw
from .label_maps import LabelMaps

logger = logging.getLogger(__name__)

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
# Entries that describe the registry's pretrained weights (their tag, licence, paper, the classes of
# their head): a model with random weights has none of them, and a card reader or timm taking the saved
# ``tag: augreg_in21k_ft_in1k`` would think the weights came from it.
_TIMM_WEIGHTS_DESCRIPTION = ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes", "label_names",
                             "label_descriptions", "label_offset")


def build_timm_classifier(
    architecture: str,
    labels: LabelMaps | None = None,
    model_args: dict | None = None,
    base_pretrained_cfg: Mapping[str, Any] | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> TimmWrapperForImageClassification:
    """A timm model with timm's own random initialisation, inside the transformers wrapper; its data
    config keeps nothing that describes pretrained weights (tag, licence, paper, head).

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
        image_size: input resolution to record in the data config (see ``resize_timm_data_config``).
    """
    model_args = dict(model_args or {})
    timm_model = _create_timm_model(architecture, labels, model_args)
    labels = labels or LabelMaps.default(timm_model.num_classes)
    data_cfg = timm_data_config(base_pretrained_cfg or timm_model.pretrained_cfg, model_args)
    data_cfg = {k: v for k, v in data_cfg.items() if k not in _TIMM_WEIGHTS_DESCRIPTION}
    data_cfg["num_classes"] = timm_model.num_classes  # as timm's own export records it, not the registry head's
    if image_size is not None:
        data_cfg = resize_timm_data_config(data_cfg, image_size)
    config = TimmWrapperConfig(
        architecture=architecture, model_args=_recorded_args(model_args, timm_model.pretrained_cfg),
        pretrained_cfg=data_cfg,
        id2label=dict(labels.id2label), label2id=dict(labels.label2id),
    )
    with torch.device("meta"):  # half the CPU time of building and initialising it for real
        wrapper = TimmWrapperForImageClassification(config)
    wrapper.timm_model = timm_model
    return wrapper


def _create_timm_model(architecture: str, labels: LabelMaps | None, model_args: dict) -> torch.nn.Module:
    import timm

    check_timm_args(architecture, model_args)
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
        raise _rejected(architecture, model_args, err) from None


def check_timm_kwargs(architecture: str, model_args: Mapping[str, Any]) -> None:
    """``model_args`` that ``timm.create_model`` takes for ``architecture``: the model is built on
    the meta device (no memory, no initialisation), so a misspelt override is found before the data
    loads instead of when the model is built after it. A build that fails otherwise (an architecture
    that cannot be built on the meta device) is left to the real build."""
    import timm

    check_timm_args(architecture, model_args)
    try:
        with torch.device("meta"):
            timm.create_model(architecture, pretrained=False, **model_args)
    except TypeError as err:
        if "keyword argument" not in str(err):
            return
        raise _rejected(architecture, model_args, err) from None
    except AssertionError as err:  # timm's own checks of its arguments (global_pool: maxx, "Invalid pool type"):
        # the real build failed on them as a traceback, after the data had loaded
        raise _rejected(architecture, model_args, err) from None
    except Exception:  # noqa: BLE001 - not an argument the architecture refused: the real build says what
        return


def _rejected(architecture: str, model_args: Mapping[str, Any], err: TypeError) -> ValueError:
    return ValueError(f"timm architecture {architecture!r} rejected a config_override ({err}); the ones given: "
                      f"{sorted(model_args)}")


def timm_with_overrides(
    config: TimmWrapperConfig, overrides: dict, image_size: int | tuple[int, int] | None = None
) -> TimmWrapperConfig:
    """A copy of a timm checkpoint's config with ``timm.create_model`` arguments as overrides.

    Overrides of a timm checkpoint are ``model_args``, not config fields. The copy also carries a
    ``pretrained_cfg`` that matches those arguments (and ``image_size``): without one,
    ``AutoImageProcessor`` could not load the folder this model is saved to.
    """
    model_args = {**saved_model_args(config), **overrides}
    check_timm_args(config.architecture, model_args)
    base = getattr(config, "pretrained_cfg", None)
    config = copy.deepcopy(config)
    config.model_args = _recorded_args(model_args, {**(base or {}), **(model_args.get("pretrained_cfg_overlay") or {})})
    if not base:
        try:
            base = timm_registry_cfg(config.architecture)
        except ValueError:
            logger.warning("timm model %r has no pretrained_cfg: its saved folder will lack an image "
                           "processor", config.architecture)
            return config
    data_cfg = timm_data_config(base, model_args)
    config.pretrained_cfg = data_cfg if image_size is None else resize_timm_data_config(data_cfg, image_size)
    return config


def _recorded_args(model_args: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model_args`` a config records: without the overlay that its ``pretrained_cfg`` holds,
    but with what the overlay set of the model itself (``data_cfg``: the model's data config)."""
    overlay = model_args.get("pretrained_cfg_overlay") or {}
    kept = {k: v for k, v in model_args.items() if k != "pretrained_cfg_overlay"}
    return {**_shaping_args(overlay, bool(data_cfg.get("fixed_input_size"))), **kept}


def _shaping_args(overlay: Mapping[str, Any], fixed_input_size: bool) -> dict[str, Any]:
    """The ``timm.create_model`` arguments timm derives from a data config when they are not given
    (its ``_update_default_model_kwargs``): the channels, a fixed-size model's image size and the
    pooling an overlay sets. A model rebuilt from ``model_args`` alone must get them."""
    shaping: dict[str, Any] = {}
    if overlay.get("input_size") is not None:
        channels, *size = overlay["input_size"]
        shaping["in_chans"] = int(channels)
        if fixed_input_size:
            shaping["img_size"] = tuple(int(s) for s in size)
    if overlay.get("global_pool") is not None:
        shaping["global_pool"] = overlay["global_pool"]
    return shaping


def record_data_config(model: Any) -> None:
    """Give a timm student built in Python (``TimmWrapperConfig(architecture=...)``, no
    ``pretrained_cfg``) the data config it was built with, before it is saved: without one,
    ``timm.create_model("local-dir:...")`` and ``AutoImageProcessor`` could not load the folder."""
    if not isinstance(model, TimmWrapperForImageClassification) or getattr(model.config, "pretrained_cfg", None):
        return
    built_with = getattr(model.timm_model, "pretrained_cfg", None)
    if built_with:
        model.config.pretrained_cfg = timm_data_config(dict(built_with), model.config.model_args or {})


def timm_native_state(model: Any, state: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A timm student's state dict (``state``, or its own) under timm's names; None for other models
    (``save_pretrained`` then takes their state itself)."""
    if not isinstance(model, TimmWrapperForImageClassification):
        return state
    state = model.state_dict() if state is None else state
    return {key.removeprefix("timm_model."): value for key, value in state.items()}


def saved_model_args(config: TimmWrapperConfig) -> dict[str, Any]:
    """A checkpoint's ``model_args`` without ``num_classes`` and ``pretrained_cfg_overlay``.

    timm's own ``save_for_hf`` stores ``num_classes`` there too; the wrapper passes the config's
    ``num_labels`` as well, which would make ``timm.create_model`` fail on the duplicate. An
    overlay (which exports before its removal from ``model_args`` kept) is in the checkpoint's
    ``pretrained_cfg`` already, with what came after it (the run's ``image_size``): applied again,
    it undid those.
    """
    args = {k: v for k, v in (config.model_args or {}).items() if k != "num_classes"}
    return _recorded_args(args, getattr(config, "pretrained_cfg", None) or {})


_TIMM_CROP_MODES = ("center", "squash", "border")  # timm's transforms_imagenet_eval
_TIMM_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's str_to_interp_mode


def check_timm_args(architecture: str, model_args: Mapping[str, Any]) -> None:
    """Arguments ``load_image_classifier`` sets itself are errors in a recipe's overrides."""
    for key, hint in _TIMM_RESERVED_ARGS.items():
        if key in model_args:
            raise ValueError(f"config_overrides for timm model {architecture!r} sets {key!r}: {hint}")
    for key, value in model_args.items():
        spelt = spelt_boolean(value)
        if spelt is not None:  # timm's arguments are not typed: any text is true, and ``zero_init_last: no``
            # (text under YAML 1.2) zeroed each block's last BatchNorm, the opposite of the recipe, without a word
            raise ValueError(f"config_overrides for timm model {architecture!r}: {key} is the text {value!r}, which "
                             f"timm takes as true: write {key}: {str(spelt).lower()} "
                             "(YAML 1.2 reads only true and false as booleans)")
    for key, rate in model_args.items():  # drop_rate, drop_path_rate, attn_drop_rate...: probabilities
        # drop_rate 1.5 failed at the student's probe, blamed on image_size, after the data had loaded;
        # a negative drop_path_rate built no stochastic depth, without a word
        if "drop" in key and key.endswith("_rate") and not isinstance(rate, bool) and isinstance(rate, (int, float)) \
                and not 0 <= rate <= 1:
            raise ValueError(f"config_overrides for timm model {architecture!r}: {key} is a probability, in [0, 1], "
                             f"got {rate}")
    overlay = model_args.get("pretrained_cfg_overlay") or {}
    for key, names in (("crop_mode", _TIMM_CROP_MODES), ("interpolation", _TIMM_INTERPOLATIONS)):
        # timm evaluated another crop_mode as a centre crop without a word, and an unknown interpolation
        # was a KeyError traceback as the student's processor was built, after the data had loaded
        if overlay.get(key) is not None and overlay[key] not in names:
            raise ValueError(f"config_overrides for timm model {architecture!r}: pretrained_cfg_overlay {key} "
                             f"{overlay[key]!r} is not one of timm's: {close_matches(str(overlay[key]), names)}")
    weights = [key for key in _TIMM_PROVENANCE_KEYS if overlay.get(key)]
    if weights:  # timm reads them only with pretrained=True, which is never passed: the weights were dropped
        raise ValueError(f"config_overrides for timm model {architecture!r}: pretrained_cfg_overlay sets {weights}, "
                         "where timm finds pretrained weights, and hf_rcka loads none from there. Load them in a "
                         "session (timm.create_model(..., pretrained=True, pretrained_cfg_overlay=...)), "
                         "save_pretrained it to a folder, and give that folder")


def timm_data_config(base: Mapping[str, Any], model_args: Mapping[str, Any]) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for a model built with ``model_args``.

    Keeps the data config (mean, std, crop_pct, interpolation...), drops where pretrained weights
    would come from, and sets ``input_size`` from ``img_size`` / ``in_chans`` overrides: timm
    does not, and ``TimmWrapperImageProcessor`` would otherwise resize to the original size.
    timm's ``test_input_size``/``test_crop_pct`` are dropped too, whatever the size: the model is
    trained and evaluated at ``input_size`` (``eval_accuracy``, the card), and timm's validate.py
    on the saved folder would otherwise measure it at timm's own recipe's test size (resnet10t:
    224 px and crop 0.95 for a student evaluated at 176 px and 0.875).
    """
    overlay = dict(model_args.get("pretrained_cfg_overlay") or {})  # timm applies it over the model's cfg
    cfg = {k: v for k, v in {**dict(base), **overlay}.items() if v is not None and k not in _TIMM_PROVENANCE_KEYS}
    cfg = _without_test_size(cfg)
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    if "in_chans" in model_args:
        channels = int(model_args["in_chans"])
    if "img_size" in model_args:
        height, width = as_hw(model_args["img_size"])
    cfg["input_size"] = (int(channels), int(height), int(width))
    return cfg


def _without_test_size(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A data config without timm's ``test_input_size``/``test_crop_pct``: they describe timm's own
    recipe for its pretrained weights, and timm's own evaluation (``resolve_data_config(use_test_size=True)``,
    what its validate.py does) would prefer them over the size the model was trained and evaluated at."""
    return {k: v for k, v in cfg.items() if not k.startswith("test_")}


def resize_timm_data_config(data_cfg: Mapping[str, Any], image_size: int | tuple[int, int]) -> dict[str, Any]:
    """A copy of a timm data config whose processor outputs ``image_size`` (height, width).

    Only the preprocessing changes (the architecture keeps its ``img_size``; set that in
    ``config_overrides`` to change a ViT's patch grid). ``crop_pct`` and the interpolation are
    kept, as timm's train.py keeps them with ``--img-size`` and as the transformers processors keep
    their crop ratio: stating a model's own size changed nothing else. A recipe that wants no
    crop sets it (``pretrained_cfg_overlay: {crop_pct: 1.0}`` in ``config_overrides``).
    """
    height, width = as_hw(image_size)
    channels = tuple(data_cfg.get("input_size", (3,)))[0]
    return {**_without_test_size(data_cfg), "input_size": (int(channels), height, width)}


def timm_registry_cfg(architecture: str) -> dict[str, Any]:
    """timm's own data config for an architecture (its registry entry, offline).

    Raises:
        ValueError: timm has no data config for it.
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture)
    if cfg is None:
        raise ValueError(f"timm has no data config for {architecture!r}; load the model first and pass it")
    return timm_data_config(cfg.to_dict(), {})
