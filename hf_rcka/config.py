"""Argument dataclasses and recipe (flat YAML) parsing.

A recipe is a flat YAML mapping whose keys are the fields of ``ModelArguments``,
``DataArguments`` and ``DistillationTrainingArguments`` (which includes every
``transformers.TrainingArguments`` field). Everything is validated *before* a model or dataset
is touched: an unknown key, loss or adapter, a value of the wrong type or out of range raises a
``RecipeError`` that names the key and the closest valid names. Values are coerced from their
field's annotation, so ``learning_rate: 1e-4`` (a string to PyYAML) works.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from transformers import TrainingArguments

from . import adapters as _adapters  # noqa: F401  (registers the adapters)
from . import losses as _losses  # noqa: F401  (registers the losses)
from .errors import RecipeError
from .data.augmentation import AugmentationArguments
from .registry import ADAPTERS, LOSSES, close_matches
from .value_checks import check_training_values

RESERVED_LOSS_KEYS = ("name", "weight")
from .features.pairing import RESERVED_PAIR_KEYS  # noqa: E402  (the one definition, from FeaturePair)


@dataclass
class ModelArguments:
    """Which student and teacher to load.

    ``model_name_or_path`` / ``teacher_model_name_or_path``: a Hub id, a folder saved with
    ``save_pretrained``, ``timm/<architecture>``, or ``config:<model_type>`` for a randomly
    initialised transformers model built offline from ``*_config_overrides``.
    """

    model_name_or_path: str = field(metadata={"help": "Student: Hub id, local folder, timm/<arch> or config:<type>."})
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher (same forms). None trains the student alone (plain supervised)."}
    )
    student_from_scratch: bool = field(
        default=False, metadata={"help": "Build the student from its config with random weights."}
    )
    student_config_overrides: dict | None = field(
        default=None, metadata={"help": "Config attributes (or timm kwargs) applied to the student's config."}
    )
    teacher_config_overrides: dict | None = field(
        default=None, metadata={"help": "Config attributes (or timm kwargs) for a config:<type> teacher."}
    )
    teacher_label_mapping: str = field(
        default="by_name",
        metadata={"help": "How teacher classes pair with the dataset's: 'by_name' (realign a permuted teacher, "
                          "error on other names) or 'by_index' (trust the order)."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train the student at this square resolution (its saved image processor is updated)."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow Hub code for custom architectures."})
    smoke_test: bool = field(
        default=False,
        metadata={"help": "Run the recipe offline in minutes: same architectures with random weights, a few "
                          "synthetic images, 2 steps, output in <output_dir>-smoke, then reload the saved model."},
    )

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size < 1:
            raise RecipeError(f"image_size must be >= 1, got {self.image_size}")
        if self.teacher_label_mapping not in ("by_name", "by_index"):
            raise RecipeError(f"teacher_label_mapping must be 'by_name' or 'by_index', got {self.teacher_label_mapping!r}")


@dataclass
class DataArguments(AugmentationArguments):
    """Where the images come from (a Hub dataset, image folders, or ``builtin:digits``) and how they
    are augmented (timm ``train.py`` names, inherited from ``AugmentationArguments``)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "datasets Hub id, or builtin:digits (scikit-learn's digits, offline)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "datasets configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder for training, one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder for evaluation."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels."})
    max_bad_images: int = field(
        default=20,
        metadata={"help": "Unreadable image files are skipped (named in the log and skipped_images.tsv); "
                          "the run stops once more than this many were skipped."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for evaluation when there is no validation split."}
    )
    split_seed: int = field(
        default=42,
        metadata={"help": "Seed of the stratified validation split carved from train (independent of `seed`)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        sources = [self.dataset_name is not None, self.train_dir is not None]
        if not any(sources):
            raise RecipeError("no data: set dataset_name (a Hub dataset or builtin:digits) or train_dir (an image folder)")
        if all(sources):
            raise RecipeError("set either dataset_name or train_dir, not both")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise RecipeError(f"{key} must be >= 1, got {value}")
        if self.max_bad_images < 0:
            raise RecipeError(f"max_bad_images must be >= 0, got {self.max_bad_images}")
        if not 0.0 < self.train_val_split < 1.0:
            raise RecipeError(f"train_val_split must be in (0, 1), got {self.train_val_split}")


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the distillation settings.

    Defaults that distillation needs differ from ``TrainingArguments``: the batch keeps all its
    columns (``remove_unused_columns=False``) and the labels are called ``labels``.
    """

    losses: list | None = field(
        default=None,
        metadata={"help": "List of {name, weight, options...}. Default: ce + rcka with a teacher, ce without."},
    )
    feature_pairs: Any = field(
        default=None,
        metadata={"help": "'auto' or a list of {student_layer, teacher_layer, adapter, options...}."},
    )
    teacher_accuracy_check: str = field(
        default="warn",
        metadata={"help": "Before training, measure the teacher on one eval batch: 'warn', 'error' or 'off'."},
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={"help": "Keep the frozen teacher's weights in 'bfloat16' or 'float16' (GPU); unset: as loaded."},
    )
    teacher_channels_last: bool = field(
        default=True, metadata={"help": "Run a convolutional teacher in channels_last (NHWC) memory format."}
    )
    baseline_dir: str | None = field(
        default=None,
        metadata={"help": "Run folder of the same student trained alone; its accuracy goes into the model card."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into an output_dir that already holds a model or checkpoints."},
    )
    model_ema: bool = field(
        default=False, metadata={"help": "Keep an EMA of the student's weights (timm ModelEmaV3); eval reports eval_ema_*."}
    )
    model_ema_decay: float = field(default=0.9998, metadata={"help": "EMA decay per optimizer step (timm's default)."})
    model_ema_warmup: bool = field(default=False, metadata={"help": "timm's EMA decay warm-up."})
    model_ema_export: bool = field(
        default=False, metadata={"help": "Save the EMA weights (not the live ones) as the final model in output_dir."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Distillation needs every batch column."})
    label_names: list[str] | None = field(default_factory=lambda: ["labels"], metadata={"help": "Label keys."})

    def __post_init__(self) -> None:
        check_training_values(self)
        self.losses = validate_losses(self.losses)
        self.feature_pairs = validate_feature_pairs(self.feature_pairs)
        if not 0.0 <= self.model_ema_decay < 1.0:
            raise RecipeError(f"model_ema_decay must be in [0, 1), got {self.model_ema_decay}")
        if self.model_ema_export and not self.model_ema:
            raise RecipeError("model_ema_export: true needs model_ema: true (there is no average to export)")
        if self.teacher_dtype not in (None, "bfloat16", "float16"):
            raise RecipeError(f"teacher_dtype must be 'bfloat16', 'float16' or unset, got {self.teacher_dtype!r}")
        if self.baseline_dir and not Path(self.baseline_dir, "all_results.json").is_file():
            raise RecipeError(
                f"baseline_dir {self.baseline_dir!r} holds no all_results.json: train the student alone there first, "
                f"or drop baseline_dir"
            )
        if self.teacher_accuracy_check not in ("warn", "error", "off"):
            raise RecipeError(
                f"teacher_accuracy_check must be 'warn', 'error' or 'off', got {self.teacher_accuracy_check!r}"
            )
        super().__post_init__()


ARGUMENT_CLASSES = (ModelArguments, DataArguments, DistillationTrainingArguments)


# --------------------------------------------------------------------------------------------
# Losses and feature pairs
# --------------------------------------------------------------------------------------------


def validate_losses(specs: Any) -> list[dict] | None:
    """Check every ``{name, weight, ...}`` entry against the loss registry; return normalised copies."""
    if specs is None:
        return None
    if not isinstance(specs, list) or not specs:
        raise RecipeError(f"losses must be a non-empty list of {{name: ..., weight: ...}}, got {specs!r}")
    normalised, seen = [], set()
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise RecipeError(f"losses[{i}] must be a mapping with a 'name', got {spec!r}")
        name = spec["name"]
        if name not in LOSSES:
            raise RecipeError(f"losses[{i}]: unknown loss {name!r}: {close_matches(str(name), LOSSES.names())}")
        if name in seen:
            raise RecipeError(f"losses[{i}]: loss {name!r} is listed twice; give it one entry")
        seen.add(name)
        spec = dict(spec)
        spec["weight"] = _coerce(spec.get("weight", 1.0), float, f"losses[{i}].weight")
        if spec["weight"] < 0:
            raise RecipeError(f"losses[{i}].weight must be >= 0, got {spec['weight']}")
        options = {k: v for k, v in spec.items() if k not in RESERVED_LOSS_KEYS}
        try:
            LOSSES.check_options(name, options, reserved=RESERVED_LOSS_KEYS)
            options = _coerce_options(LOSSES.get(name), options, f"losses[{i}]")
            LOSSES.build(name, weight=spec["weight"], **options)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"losses[{i}] ({name}): {err}") from None
        normalised.append({"name": name, "weight": spec["weight"], **options})
    return normalised


def validate_feature_pairs(pairs: Any) -> list[dict] | str | None:
    """``None``, ``'auto'`` or a list of ``{student_layer, teacher_layer, adapter, ...}``."""
    if pairs is None or pairs == "auto":
        return pairs
    if not isinstance(pairs, list) or not pairs:
        raise RecipeError(f"feature_pairs must be 'auto' or a non-empty list of mappings, got {pairs!r}")
    normalised = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise RecipeError(f"feature_pairs[{i}] must be a mapping, got {pair!r}")
        for key in ("student_layer", "teacher_layer"):
            if key not in pair:
                raise RecipeError(f"feature_pairs[{i}] needs {key!r} (an index into the hidden states, negatives allowed)")
        pair = dict(pair)
        pair["student_layer"] = _coerce(pair["student_layer"], int, f"feature_pairs[{i}].student_layer")
        pair["teacher_layer"] = _coerce(pair["teacher_layer"], int, f"feature_pairs[{i}].teacher_layer")
        adapter = pair.setdefault("adapter", "auto")
        if adapter != "auto":
            if adapter not in ADAPTERS:
                raise RecipeError(
                    f"feature_pairs[{i}]: unknown adapter {adapter!r}: {close_matches(str(adapter), ADAPTERS.names())}"
                )
            options = {k: v for k, v in pair.items() if k not in RESERVED_PAIR_KEYS}
            try:
                ADAPTERS.check_options(adapter, options, reserved=("student", "teacher"))
            except ValueError as err:
                raise RecipeError(f"feature_pairs[{i}]: {err}") from None
        normalised.append(pair)
    return normalised


def _coerce_options(cls: type, options: dict, where: str) -> dict:
    """Coerce loss options by the constructor's annotations (``1e-4`` strings become floats)."""
    hints = typing.get_type_hints(cls.__init__)
    return {k: _coerce(v, hints.get(k, Any), f"{where}.{k}") for k, v in options.items()}


# --------------------------------------------------------------------------------------------
# Type coercion
# --------------------------------------------------------------------------------------------


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to ``annotation`` or raise a RecipeError naming ``key``."""
    if annotation is Any:
        return value
    if isinstance(value, bool) and _is_text(annotation):
        value = "true" if value else "false"  # e.g. resume_from_checkpoint: true
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {annotation}")
    if origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
        raise RecipeError(f"{key} must be one of {typing.get_args(annotation)}, got {value!r}")
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key} must be a mapping, got {value!r}")
        return value
    if isinstance(annotation, type) and issubclass(annotation, bool):
        return _coerce_bool(value, key)
    if annotation in (int, float):
        return _coerce_number(value, annotation, key)
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{key} must be a string, got {value!r}")
        return value if isinstance(value, str) else str(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            valid = [m.value for m in annotation]
            raise RecipeError(f"{key}: {value!r} is not valid: {close_matches(str(value), valid)}") from None
    return value


def _is_text(annotation: Any) -> bool:
    """True for ``str``/enum annotations (or unions of them and None) that accept no bool."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    accepts_bool = any(a is bool for a in options)
    is_text = all(a is str or (isinstance(a, type) and issubclass(a, enum.Enum)) for a in options)
    return is_text and not accepts_bool


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
        raise RecipeError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
        if kind is int:
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        return float(number)
    except (TypeError, ValueError):
        raise RecipeError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None


# --------------------------------------------------------------------------------------------
# Recipes and command lines
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _field_table() -> dict[str, tuple[type, dataclasses.Field, Any]]:
    """Every recipe key -> (owning dataclass, field, resolved annotation)."""
    table: dict[str, tuple[type, dataclasses.Field, Any]] = {}
    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and f.name not in table:
                table[f.name] = (cls, f, hints[f.name])
    return table


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false are bools, so ``eval_strategy: no`` stays the string "no"."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)


def parse_cli_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / bare ``--flag`` (true). Values are read as YAML."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise RecipeError(f"unexpected argument {token!r}: overrides look like --key value")
        key, _, inline = token[2:].partition("=")
        key = key.replace("-", "_")
        if inline:
            raw = inline
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw = argv[i + 1]
            i += 1
        else:
            raw = "true"
        overrides[key] = _load_yaml(raw) if raw != "" else ""
        i += 1
    return overrides


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        recipe = _load_yaml(handle.read()) or {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe {str(path)!r} must be a flat YAML mapping of argument names to values")
    return recipe


def resolve_values(recipe: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``recipe`` and CLI ``overrides`` (which win), check every key and coerce every value.

    The result is what ``distill_config.yaml`` records: the recipe exactly as it was run.
    """
    values = {**recipe, **(overrides or {})}
    table = _field_table()
    for key in values:
        if key not in table:
            raise RecipeError(f"unknown recipe key {key!r}: {_key_hint(key, list(table))}")
    for required in ("model_name_or_path", "output_dir"):
        if values.get(required) in (None, ""):
            raise RecipeError(f"the recipe needs {required!r}")
    resolved = {key: _coerce(value, table[key][2], key) for key, value in values.items()}
    if resolved.get("losses") is not None:
        resolved["losses"] = validate_losses(resolved["losses"])
    if resolved.get("feature_pairs") is not None:
        resolved["feature_pairs"] = validate_feature_pairs(resolved["feature_pairs"])
    return resolved


def _key_hint(key: str, keys: list[str]) -> str:
    """Close matches, or a pointer to ``--help`` rather than all ~180 keys on one line."""
    hint = close_matches(key, keys)
    return hint if hint.startswith("did you mean") else "no key is close; scripts/distill.py --help lists them all"


def build_arguments(values: dict[str, Any]) -> tuple[ModelArguments, DataArguments, DistillationTrainingArguments]:
    """The three argument dataclasses from resolved values (see ``resolve_values``)."""
    table = _field_table()
    grouped: dict[type, dict[str, Any]] = {cls: {} for cls in ARGUMENT_CLASSES}
    for key, value in values.items():
        grouped[table[key][0]][key] = value
    built = []
    for cls in ARGUMENT_CLASSES:
        try:
            built.append(cls(**grouped[cls]))
        except RecipeError:
            raise
        except (TypeError, ValueError) as err:
            raise RecipeError(f"invalid {cls.__name__}: {err}") from None
    return tuple(built)  # type: ignore[return-value]


def parse_arguments(
    recipe: dict[str, Any], overrides: dict[str, Any] | None = None
) -> tuple[ModelArguments, DataArguments, DistillationTrainingArguments]:
    """Validate ``recipe`` (+ CLI ``overrides``, which win) and build the three dataclasses."""
    return build_arguments(resolve_values(recipe, overrides))


def parse_recipe_file(
    path: str | Path, argv: Sequence[str] = ()
) -> tuple[ModelArguments, DataArguments, DistillationTrainingArguments]:
    """Read a recipe file and apply ``--key value`` overrides from ``argv``."""
    return parse_arguments(load_recipe(path), parse_cli_overrides(argv))


def dump_recipe(values: dict[str, Any], path: str | Path) -> None:
    """Write resolved values as a recipe that ``scripts/distill.py`` can run again."""
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(_plain(values), handle, sort_keys=False)


def _plain(value: Any) -> Any:
    """Make a value YAML-safe (enums to their values, tuples to lists)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
