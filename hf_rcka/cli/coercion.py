"""Recipe text to typed values: each value is converted by its field's annotation.

YAML and the command line give text where a setting needs a number (PyYAML reads ``1e-4`` as a
string; ``--seed 3`` is text), a list (``--losses ce,kd``) or a bool (``--bf16``). Converting by
the dataclass field's annotation, and by the loss constructors' annotations for loss options,
makes ``learning_rate: 1e-4`` work and turns a value that fits no annotation into a
``RecipeError`` naming its key.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

from ..arguments import SECRET_KEYS
from ..errors import RecipeError
from ..registry import LOSSES, close_matches
from ..recipe_specs import RESERVED_LOSS_KEYS, loss_spec


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to ``annotation`` or raise a RecipeError naming ``key``; a secret's
    value is never part of the message (``hub_token: [hf_...]`` printed the token)."""
    try:
        return _coerce(value, annotation, key)
    except RecipeError:
        if key not in SECRET_KEYS:
            raise
        raise RecipeError(f"{key} must be text (the token itself), got a {type(value).__name__}; its value is not "
                          "shown") from None


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    if annotation is Any:
        return value
    if isinstance(value, bool) and is_text(annotation):
        value = "true" if value else "false"  # e.g. resume_from_checkpoint: true
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, annotation, key)
    if origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
        raise RecipeError(f"{key} must be one of {typing.get_args(annotation)}, got {value!r}")
    if origin in (list, tuple) or annotation in (list, tuple):
        return _coerce_list(value, annotation, key)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key} must be a mapping, got {value!r}")
        return value
    if isinstance(annotation, type) and issubclass(annotation, bool):
        return _coerce_bool(value, key)
    if annotation in (int, float):
        return _coerce_number(value, annotation, key)
    if annotation is str:
        if value is None:  # str(None) named a column 'None' (found missing only once the dataset had loaded)
            raise RecipeError(f"{key} must be text, got null (YAML's ~, null or nothing after the colon): give a "
                              f"value, or leave {key} out for its default")
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{key} must be a string, got {value!r}")
        return value if isinstance(value, str) else str(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _coerce_enum(value, annotation, key)
    return value


# Text-or-list settings whose names never hold a comma: "a,b" is a list (else the text member takes it whole).
_COMMA_LISTS = ("report_to",)


def _coerce_union(value: Any, annotation: Any, key: str) -> Any:
    """The first member of ``A | B | None`` that takes ``value``; else the one error (or all failed)."""
    options = typing.get_args(annotation)
    if value is None and type(None) in options:
        return None
    if key in _COMMA_LISTS and isinstance(value, str) and "," in value:
        return coerce(value, next(o for o in options if typing.get_origin(o) is list), key)
    enums = [o for o in options if isinstance(o, type) and issubclass(o, enum.Enum)]
    if enums and str in options and isinstance(value, str):  # TrainingArguments' ``Enum | str``: the text must be a member
        return _coerce_enum(value, enums[0], key)
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            return coerce(value, option, key)
        except RecipeError as err:
            errors.append(str(err))
    raise RecipeError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {annotation}")


def _coerce_list(value: Any, annotation: Any, key: str) -> list:
    """A list, or comma-separated text (``--report_to tensorboard,wandb``); items by their type."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise RecipeError(f"{key} must be a list, got {value!r}")
    args = typing.get_args(annotation)
    item_type = args[0] if args else Any
    return [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]


def is_text(annotation: Any) -> bool:
    """True for ``str``/enum annotations (or unions of them and None) that accept no bool."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):  # list[str] is a list, not text
        return annotation is str or (isinstance(annotation, type) and issubclass(annotation, enum.Enum))
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    accepts_bool = any(a is bool for a in options)
    text_only = all(a is str or (isinstance(a, type) and issubclass(a, enum.Enum)) for a in options)
    return text_only and not accepts_bool


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
        return False
    raise RecipeError(f"{key} must be true or false, got {value!r}")


def _coerce_number(value: Any, kind: type, key: str) -> int | float:
    if isinstance(value, bool):
        what, example = ("an integer", "3") if kind is int else ("a number", "0.001")
        # a flag's name: a value inside losses or feature_pairs (losses[0].weight) has none, and a bare flag there
        # is no value of it
        bare = f" (true is no number; on the command line, --{key} without a value reads as true: give one, " \
               f"--{key} {example})" if value and key.isidentifier() else ""
        raise RecipeError(f"{key} must be {what}, got {value!r}{bare}")
    try:
        number = float(value) if isinstance(value, str) else value
        if kind is int:
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        return float(number)
    except (TypeError, ValueError):
        raise RecipeError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def _coerce_enum(value: Any, annotation: type[enum.Enum], key: str) -> enum.Enum:
    try:
        return annotation(value)
    except ValueError:
        valid = [m.value for m in annotation]
        raise RecipeError(f"{key}: {value!r} is not valid: {close_matches(str(value), valid)}") from None


# --------------------------------------------------------------------------------------------
# Values inside the losses and feature_pairs lists
# --------------------------------------------------------------------------------------------


def coerce_losses(specs: Any) -> Any:
    """Loss entries in full form, their weights and options converted by the loss's constructor.

    Entries whose name is not a registered loss are left as they are: ``validate_losses`` (run when
    ``DistillationTrainingArguments`` is built) names the problem.
    """
    if not isinstance(specs, list):
        return specs
    return [_coerce_loss(loss_spec(spec), f"losses[{i}]") for i, spec in enumerate(specs)]


def _coerce_loss(spec: Any, where: str) -> Any:
    if not isinstance(spec, dict) or spec.get("name") not in LOSSES:
        return spec
    hints = LOSSES.option_types(spec["name"])
    coerced = {"name": spec["name"], "weight": coerce(spec["weight"], float, f"{where}.weight")}
    for key, value in spec.items():
        if key not in RESERVED_LOSS_KEYS:
            coerced[key] = coerce(value, hints.get(key, Any), f"{where}.{key}")
    return coerced


def coerce_feature_pairs(pairs: Any) -> Any:
    """Layer indices of each pair as integers (``--feature_pairs`` text gives strings)."""
    if not isinstance(pairs, list):
        return pairs
    return [_coerce_pair(pair, f"feature_pairs[{i}]") for i, pair in enumerate(pairs)]


def _coerce_pair(pair: Any, where: str) -> Any:
    if not isinstance(pair, dict):
        return pair
    layers = {key: coerce(pair[key], int, f"{where}.{key}") for key in ("student_layer", "teacher_layer") if key in pair}
    return {**pair, **layers}
