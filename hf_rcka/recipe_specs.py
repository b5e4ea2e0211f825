"""A recipe's ``losses:`` and ``feature_pairs:`` entries, checked against the registries.

A loss or adapter name with a typo, an option a loss does not take, or a value its constructor
refuses would fail only once the models are loaded. Each entry is checked here when
``DistillationTrainingArguments`` is built, and each error names ``losses[i]`` or
``feature_pairs[i]`` and, for a typo, the closest valid names.

Values arrive typed (a recipe's text is converted by ``hf_rcka.cli.coercion`` first); these
checks convert nothing, they only fill the default of a loss spec's ``weight``.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import RecipeError
from .features.layout import FeatureSpec
from .features.pairing import RESERVED_PAIR_KEYS
from .losses import reads_features
from .registry import ADAPTERS, LOSSES, close_matches

RESERVED_LOSS_KEYS = ("name", "weight")
_PLACEHOLDER_MAP = FeatureSpec("nchw", 1, (1, 1))
# what an adapter refused on the tiny placeholder is tried on before it is refused: a ViT-B's tokens
# and a ResNet's last stage, each side either (an adapter of one's own may need a channel count, such
# as GroupNorm's groups, or a layout: it was refused for the placeholder's sake)
_REAL_FEATURES = (FeatureSpec("nlc", 768, (14, 14), num_prefix_tokens=1), FeatureSpec("nchw", 512, (7, 7)))
DEFAULT_LOSS_WEIGHT = 1.0


def weighs_nothing(spec: Any) -> bool:
    """Whether a loss spec (or a recorded one) is at weight 0: it adds nothing to the loss, so a run
    leaves it out (its computation, and the teacher's forward when no other loss needs it)."""
    return isinstance(spec, dict) and spec.get("weight", DEFAULT_LOSS_WEIGHT) == 0


# the command line knows the built-in names: one's own are registered by a script that imports them
_OWN_HINT = (" (a {kind} of your own is registered when its module is imported: import it first, and for the command "
             "line run a script that imports it, then calls hf_rcka.cli.main.main())")

def loss_spec(spec: Any) -> Any:
    """A loss entry in its full form: ``"kd"`` -> ``{"name": "kd", "weight": 1.0}``; others as given.

    An omitted weight is the loss's own default (``kernel_transfer``: the public code's 0.04), so a
    recipe, ``--help losses`` and ``KernelTransferLoss()`` in Python agree; an unknown name gets
    ``DEFAULT_LOSS_WEIGHT`` here and its error from the name check.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict) and "name" in spec and "weight" not in spec:
        name = spec["name"]
        weight = LOSSES.default(name, "weight") if isinstance(name, str) and name in LOSSES else DEFAULT_LOSS_WEIGHT
        spec = {**spec, "weight": weight}
    return spec


def validate_losses(specs: Any) -> list[dict] | None:
    """Check every ``{name, weight, ...}`` entry against the loss registry; return full copies.

    Each loss's value rules (``kd``'s ``temperature > 0``...) live in its constructor, so each
    entry is constructed once here to apply them; the trainer builds the losses it trains.

    Raises:
        RecipeError: naming ``losses[i]`` and, for a typo, the closest loss or option names.
    """
    if specs is None:
        return None
    if not isinstance(specs, list) or not specs:
        raise RecipeError(f"losses must be a non-empty list of {{name: ..., weight: ...}}, got {specs!r}")
    normalised, seen = [], set()
    for i, spec in enumerate(specs):
        spec = loss_spec(spec)
        if not isinstance(spec, dict) or "name" not in spec:
            raise RecipeError(f"losses[{i}] must be a mapping with a 'name', got {spec!r}")
        name = spec["name"]
        if name not in LOSSES:
            raise RecipeError(f"losses[{i}]: unknown loss {name!r}: {_unknown_loss_hint(str(name))}"
                              f"{_OWN_HINT.format(kind='loss')}")
        if name in seen:
            raise RecipeError(f"losses[{i}]: loss {name!r} is listed twice; give it one entry")
        seen.add(name)
        normalised.append(_checked_loss(spec, f"losses[{i}]"))
    if not any(spec["weight"] > 0 for spec in normalised):
        raise RecipeError("every loss has weight 0, so nothing would train the student: give at least one a "
                          "positive weight")
    return normalised


# The papers' names for losses registered under others: no close match leads from 'ekt' to
# 'kernel_transfer', and 'pcka' is closer to 'rcka' than to 'patch_cka'.
_PAPER_NAMES = {"ekt": "kernel_transfer", "pcka": "patch_cka", "fitnets": "fitnet", "deit": "deit_token"}


def _unknown_loss_hint(name: str) -> str:
    paper = _PAPER_NAMES.get(name.lower())
    if paper in LOSSES:
        return f"that is the paper's name for the loss {paper!r}"
    return close_matches(name, LOSSES.names())


def _check_number_options(name: str, options: dict) -> None:
    """Options whose default is a number take a number: ``temperature: "4"`` (a quoted value in
    Python) failed inside the constructor with "'<' not supported between 'int' and 'str'"."""
    params = LOSSES.parameters(name)
    for key, value in options.items():
        default = params[key].default if key in params else None
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and not _is_number(value):
            raise RecipeError(f"option {key} must be a number, got {value!r}")


def _is_number(value: Any) -> bool:
    """A number of any kind (numpy and torch scalars from a sweep too), not text or a bool."""
    if isinstance(value, (str, bytes, bool)):
        return False
    try:
        float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        return False
    return True


def _checked_loss(spec: dict, where: str) -> dict:
    """One entry with a registered name: weight, option names and option values."""
    name, weight = spec["name"], spec["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise RecipeError(f"{where}.weight must be a number, got {weight!r}")
    if not 0 <= weight < math.inf:  # inf or nan: a non-finite loss and gradients from step 1
        raise RecipeError(f"{where}.weight must be >= 0 and finite, got {weight}")
    options = {k: v for k, v in spec.items() if k not in RESERVED_LOSS_KEYS}
    try:
        LOSSES.check_options(name, options, reserved=RESERVED_LOSS_KEYS)
        _check_number_options(name, options)
        loss = LOSSES.build(name, weight=weight, **options)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where} ({name}): {err}") from None
    _check_passed_on(name, loss, {"weight": weight, **options}, where)
    return {"name": name, "weight": float(weight), **options}


def _check_passed_on(name: str, loss: Any, given: dict, where: str) -> None:
    """Options a loss takes through ``**kwargs`` must reach its base: a constructor that keeps
    ``**kwargs`` to itself trained at the base's default weight (100x the 0.01 asked for), silently."""
    for option in LOSSES.passed_on(name):
        if option in given and hasattr(loss, option) and getattr(loss, option) != given[option]:
            raise RecipeError(f"{where} ({name}): {option} is {given[option]!r} here but the loss holds "
                              f"{getattr(loss, option)!r}: its __init__ takes {option} through **kwargs and does not "
                              f"pass them on (super().__init__(**kwargs))")


def validate_feature_pairs(pairs: Any) -> list[dict] | str | None:
    """``None``, ``'auto'`` or a list of ``{student_layer, teacher_layer, adapter, ...}``.

    Raises:
        RecipeError: naming ``feature_pairs[i]`` and, for a typo, the closest adapter or option names.
    """
    if pairs is None or pairs == "auto":
        return pairs
    if not isinstance(pairs, list) or not pairs:
        raise RecipeError(f"feature_pairs must be 'auto' or a non-empty list of mappings, got {pairs!r}")
    return [_checked_pair(pair, f"feature_pairs[{i}]") for i, pair in enumerate(pairs)]


def unused_feature_pairs(losses: list[dict] | None, pairs: Any) -> bool:
    """Whether ``pairs`` is a list that no loss computed reads (``losses`` None: the defaults, ce
    and logit RCKA, which read none). Such pairs are dropped: a run that lists them for a loss it
    does not compute (a baseline with ``--losses`` replaced) trains as if they were absent."""
    if not isinstance(pairs, list):
        return False
    return not any(spec["weight"] > 0 and reads_features(LOSSES.get(spec["name"])) for spec in losses or [])


def unused_pairs_message() -> str:
    readers = sorted(name for name in LOSSES.names() if reads_features(LOSSES.get(name)))
    return (f"feature_pairs are set but no loss computed reads hidden states ({', '.join(readers)} do): the pairs are "
            "ignored; add such a loss to losses, or drop feature_pairs")


def check_auto_pair_options(losses: list[dict] | None, pairs: Any) -> None:
    """Options on an ``adapter: auto`` pair are patch_match's, which auto picks only when a loss
    compares equal shapes (patch CKA, FitNets); with batch-relational feature losses alone it picks
    identity, which takes none, and the run would fail after loading its models."""
    if not isinstance(pairs, list) or not losses:
        return
    feature_losses = [LOSSES.get(spec["name"]) for spec in losses
                      if spec["weight"] > 0 and reads_features(LOSSES.get(spec["name"]))]
    if not feature_losses or any(cls.feature_alignment != "any" for cls in feature_losses):
        return
    for i, pair in enumerate(pairs):
        options = sorted(k for k in pair if k not in RESERVED_PAIR_KEYS)
        if pair["adapter"] == "auto" and options:
            raise RecipeError(
                f"feature_pairs[{i}]: options {options} are patch_match's, but with these losses "
                f"({', '.join(cls.registry_name for cls in feature_losses)}, which compare features of any shape) "
                "adapter auto passes features unchanged: drop the options, or set adapter: patch_match")


def _checked_pair(pair: Any, where: str) -> dict:
    if not isinstance(pair, dict):
        raise RecipeError(f"{where} must be a mapping, got {pair!r}")
    for key in ("student_layer", "teacher_layer"):
        if key not in pair:
            raise RecipeError(f"{where} needs {key!r} (an index into the hidden states, negatives allowed)")
        if isinstance(pair[key], bool) or not isinstance(pair[key], int):
            raise RecipeError(f"{where}.{key} must be an integer, got {pair[key]!r}")
    pair = {**pair, "adapter": pair.get("adapter", "auto")}
    adapter = pair["adapter"]
    options = {k: v for k, v in pair.items() if k not in RESERVED_PAIR_KEYS}
    if adapter == "auto" and not options:
        return pair
    if adapter == "auto":  # options only mean something to patch_match, what auto picks for shape-bound losses
        _check_adapter_options("patch_match", options, f"{where} (adapter auto takes patch_match's options)")
        return pair
    if adapter not in ADAPTERS:
        raise RecipeError(f"{where}: unknown adapter {adapter!r}: {close_matches(str(adapter), ADAPTERS.names())}"
                          f"{_OWN_HINT.format(kind='adapter')}")
    _check_adapter_options(adapter, options, where)
    return pair


def _check_adapter_options(adapter: str, options: dict[str, Any], where: str) -> None:
    try:
        ADAPTERS.check_options(adapter, options, reserved=("student", "teacher"))
        # the adapter's own value rules (patch_match's grid...), on placeholder features
        ADAPTERS.build(adapter, student=_PLACEHOLDER_MAP, teacher=_PLACEHOLDER_MAP, **options)
    except (TypeError, ValueError) as err:
        if not _builds_on_real_features(adapter, options):
            raise RecipeError(f"{where}: {err}") from None


def _builds_on_real_features(adapter: str, options: dict[str, Any]) -> bool:
    for student in _REAL_FEATURES:
        for teacher in _REAL_FEATURES:
            try:
                ADAPTERS.build(adapter, student=student, teacher=teacher, **options)
            except (TypeError, ValueError):
                continue
            return True
    return False


# Loss options whose default has changed, with the earlier default and the day the new one came.
# Records held only the options a recipe set until every option was written out (resolved_specs):
# one that leaves such an option out may have trained with the earlier default, and a resume or a
# rerun of it took the new one silently (rcka from 15/15 to 1/1 in mid-run).
EARLIER_DEFAULTS: dict[tuple[str, str], tuple[Any, str]] = {
    ("rcka", "intra_weight"): (15.0, "2026-12-01"),
    ("rcka", "inter_weight"): (15.0, "2026-12-01"),
    ("srd", "student_eps"): (1e-5, "2026-12-05"),
    ("srd", "teacher_eps"): (1e-5, "2026-12-05"),
}


_RECORDABLE = (type(None), bool, int, float, str)  # what YAML and JSON read back as itself


def resolved_specs(specs: list[dict]) -> list[dict]:
    """Loss specs (full form) with every option a spec leaves out written at its default, for the
    run's records: a record of the options as given is read with the reader's defaults, so a run
    recorded before a default changed resumed, or ran again, with the new one. ``label_smoothing``
    stays out where it is (ce then takes the trainer's ``label_smoothing_factor``), and so do
    defaults a record cannot read back as themselves (a loss of one's own may default to a tuple,
    an enum or a function: YAML could not write the function, and the others came back as a list or
    a string, which differed from the default at the next resume)."""
    resolved = []
    for spec in specs:
        name = spec.get("name")
        if name in LOSSES:
            defaults = {option: parameter.default for option, parameter in LOSSES.parameters(name).items()
                        if option not in spec and option != "label_smoothing"
                        and isinstance(parameter.default, _RECORDABLE)}
            spec = {**spec, **defaults}
        resolved.append(spec)
    return resolved


def earlier_defaults(recorded: list[dict], now: list[dict]) -> list[str]:
    """What a record leaves out of ``EARLIER_DEFAULTS`` and this run takes the current default for,
    as ``rcka intra_weight`` lines saying the earlier default and this run's value (``now``: the
    run's specs in full form): the run it records trained with the earlier one if it started
    before the change."""
    now_by_name = {spec.get("name"): spec for spec in now}
    lines = []
    for spec in recorded:
        name = spec.get("name")
        for (loss, option), (earlier, since) in EARLIER_DEFAULTS.items():
            if loss != name or option in spec or name not in now_by_name:
                continue
            value = _option(now_by_name[name], name, option, None)
            if value == LOSSES.default(name, option):  # another value is the recipe's own choice
                lines.append(f"{name} {option} (its default was {earlier!r} before {since}; this run: {value!r})")
    return lines


def loss_changes(before: list[dict], now: list[dict], before_smoothing: float | None = None,
                 now_smoothing: float | None = None) -> list[str]:
    """How two runs' losses differ where a resumed run must not: by name, and by option but the
    weight (an option left out is its default, and ``label_smoothing`` left out is the trainer's
    ``label_smoothing_factor``, as ce gets it). Both lists hold the active specs in full form.
    An option ``before`` leaves out whose default has changed is not compared: which one trained
    it is unknown (``earlier_defaults`` says so).
    """
    by_name = [{spec["name"]: spec for spec in specs} for specs in (before, now)]
    if sorted(by_name[0]) != sorted(by_name[1]):
        return [f"losses {sorted(by_name[0])} -> {sorted(by_name[1])}"]
    changes = []
    for name, spec in by_name[0].items():
        other = by_name[1][name]
        for option in sorted((set(spec) | set(other) | {"label_smoothing"}) - set(RESERVED_LOSS_KEYS)):
            if name not in LOSSES or option not in LOSSES.option_names(name):
                continue
            if option not in spec and (name, option) in EARLIER_DEFAULTS:  # unknown: see earlier_defaults
                continue
            old, new = (_option(s, name, option, smoothing)
                        for s, smoothing in ((spec, before_smoothing), (other, now_smoothing)))
            if old != new:
                changes.append(f"{name} {option} {old!r} -> {new!r}")
    return changes


def _option(spec: dict[str, Any], name: str, option: str, smoothing: float | None) -> Any:
    if spec.get(option) is not None:
        return spec[option]
    if option == "label_smoothing":
        return smoothing or None
    try:
        return LOSSES.default(name, option)
    except KeyError:
        return None


def checked_pairs(value: Any) -> Any:
    """Feature pairs as the arguments hold them once checked (an unset adapter is 'auto'; None pairs
    them automatically, as 'auto' does), for comparing two runs' pairs; a value that no longer
    passes the checks as it is."""
    try:
        return validate_feature_pairs(value) or "auto"
    except RecipeError:
        return value

