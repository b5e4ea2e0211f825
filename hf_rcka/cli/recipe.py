"""Recipes: flat YAML files (and ``--key value`` overrides) to the three argument dataclasses.

A recipe is a flat YAML mapping whose keys are the fields of ``ModelArguments``,
``DataArguments`` and ``DistillationTrainingArguments`` (which includes every
``transformers.TrainingArguments`` field). An unknown key is a ``RecipeError`` that names the
closest valid keys; values are converted by their field's annotation (``coercion``), and the
dataclasses then check them, all before a model or dataset is touched.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..arguments import ARGUMENT_CLASSES, REQUIRED_KEYS, SECRET_KEYS, DataArguments, DistillationTrainingArguments, ModelArguments
from ..errors import RecipeError, spelt_boolean
from ..file_writes import replacing
from ..models.sources import PIN_REVISION
from ..registry import close_matches
from ..run_record import ANCHORED_KEYS, WORKING_DIR_NAME, anchored, is_relative_path, recorded_working_dir
from ..trainer.resume_hint import entry_command
from .coercion import coerce, coerce_feature_pairs, coerce_losses, is_text

logger = logging.getLogger(__name__)

Arguments = tuple[ModelArguments, DataArguments, DistillationTrainingArguments]


@functools.lru_cache(maxsize=1)
def field_table() -> dict[str, tuple[type, dataclasses.Field, Any]]:
    """Every recipe key -> (owning dataclass, field, resolved annotation)."""
    table: dict[str, tuple[type, dataclasses.Field, Any]] = {}
    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and f.name not in table:
                table[f.name] = (cls, f, hints[f.name])
    return table


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2's core schema instead of PyYAML's YAML 1.1 one, and no key given twice.

    YAML 1.1 reads ``eval_strategy: no`` as false, ``0123`` as octal 83, ``1:30`` as 90 and
    ``2026-12-02`` as a date, and ``1e-5`` as a string (it wants ``1.0e-5``). Under the core
    schema only true/false are bools, integers are decimal (or ``0o``/``0x``), ``1e-5`` is a float
    (also inside a mapping such as ``lr_scheduler_kwargs``) and dates stay text. A key given twice
    is an error (YAML would keep the last silently).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *shared``: merged by the base constructor, its keys may be overridden
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):  # ``? [a, b]``: a TypeError traceback (unhashable) from the check below
                raise yaml.constructor.ConstructorError(None, None, f"a key must be a name, got {key!r}",
                                                        key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node)
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text)  # 0123 is 123, not octal


_CORE_SCHEMA = {
    "tag:yaml.org,2002:null": (r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    "tag:yaml.org,2002:bool": (r"true|True|TRUE|false|False|FALSE", "tTfF"),
    "tag:yaml.org,2002:int": (r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    "tag:yaml.org,2002:float": (
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+.0123456789",
    ),
    "tag:yaml.org,2002:merge": (r"<<", "<"),  # anchors and ``<<: *shared`` still share settings
}
_RecipeLoader.yaml_implicit_resolvers = {}
for _tag, (_pattern, _first) in _CORE_SCHEMA.items():
    _RecipeLoader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))
_RecipeLoader.add_constructor("tag:yaml.org,2002:int", _RecipeLoader.construct_yaml_int)


def _construct(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """The document's node (for its scalars' text) and its value; a syntax error is one line naming
    ``where`` and the line and column."""
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise RecipeError(f"{where} is not valid YAML{at}: {problem}") from None
    finally:
        loader.dispose()


def _takes_text(key: str) -> bool:
    """Whether recipe key ``key`` is a text setting (a run name, a revision, a path)."""
    entry = field_table().get(key)
    return entry is not None and is_text(entry[2])


def _as_written(key: str, value: Any, text: str) -> Any:
    """A text setting keeps the number-like text it was given: ``run_name: 0123`` is "0123", not
    "123", and a revision ``1e51234`` is not the float inf."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and _takes_text(key):
        return text
    return value


def _takes_bare(key: str) -> bool:
    """Whether a bare ``--key`` (true) is a value of ``key``: a true/false setting, resume_from_checkpoint
    (``true`` resumes the last checkpoint), or an unknown key (reported by ``resolve_values``)."""
    entry = field_table().get(key)
    if entry is None or key == "resume_from_checkpoint":
        return True
    annotation = entry[2]
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return any(option is bool for option in options)


def parse_cli_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / bare ``--flag`` (true). Values are read as YAML."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise RecipeError(f"unexpected argument {token!r}: overrides look like --key value")
        key, has_inline, inline = token[2:].partition("=")
        key = key.replace("-", "_")
        if key in overrides:
            raise RecipeError(f"--{key} is given twice: give it once")
        if has_inline:  # --key=value; --key= is the empty text, as --key "" is
            raw = inline
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw = argv[i + 1]
            i += 1
        elif _takes_bare(key):
            raw = "true"
        else:
            raise RecipeError(f"--{key} needs a value (a bare flag is true, and {key} is not a true/false setting)")
        node, value = _construct(raw, f"--{key} {raw!r}") if raw != "" else (None, "")
        # ' #...' is a YAML comment, and a value that starts with '#' is one whole (it read as null)
        commented = node.end_mark.index < len(raw.rstrip()) if node is not None else raw.strip().startswith("#")
        if commented:
            if not _takes_text(key):
                raise RecipeError(f"--{key} {raw!r}: YAML reads ' #' and what follows as a comment: drop it, or quote "
                                  "the value")
            value = raw.strip()
        overrides[key] = _as_written(key, value, raw.strip())
        i += 1
    return overrides


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe file's mapping, read with YAML 1.2's core schema; text settings as written."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe {str(path)!r} is a folder: give the recipe's YAML file (e.g. recipes/deit_from_regnet.yaml"
                          f"; a trained run's is {str(path / 'distill_config.yaml')!r} if it is a run folder)")
    if not path.is_file():
        # the repository's recipes/, asked for outside a checkout: the installed package does not hold it
        shipped = path.parts[:1] == ("recipes",) and not Path("recipes").is_dir()
        raise RecipeError(f"recipe {str(path)!r} does not exist" + (
            f" here ({os.getcwd()}): the recipes/ folder is the repository's (and its sdist's), not part of the "
            "installed package; run from a checkout of the repository, or give the recipe's own path" if shipped else ""))
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as err:  # an editor's Latin-1 accent in a comment: a traceback
        raise RecipeError(f"recipe {str(path)!r} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}): save it as UTF-8") from None
    node, recipe = _construct(text, f"recipe {str(path)!r}")
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe {str(path)!r} must be a flat YAML mapping of argument names to values")
    # the last node of a key is its value (``<<: *shared`` puts the merged keys first)
    written = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    for key, value_node in written.items():
        if isinstance(value_node, yaml.ScalarNode) and key in recipe:
            recipe[key] = _as_written(key, recipe[key], value_node.value)
    return recipe


# Where the images come from: an empty one is none (it would name a dataset or folder "")
_DATA_KEYS = ("dataset_name", "dataset_config_name", "train_dir", "validation_dir")
# Settings that name a file or folder (a model name may be a folder, a dataset name too)
_PATH_KEYS = ("model_name_or_path", "teacher_model_name_or_path", "baseline_dir", "train_dir", "validation_dir",
              "output_dir", "resume_from_checkpoint", "dataset_name", "logging_dir")


def resolve_values(recipe: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``recipe`` and CLI ``overrides`` (which win), check every key and convert every value.

    A mapping given as a flag (``--student_config_overrides '{num_hidden_layers: 2}'``) is merged
    into the recipe's mapping; a list (``losses``, ``feature_pairs``) replaces the recipe's.

    The result is what ``distill_config.yaml`` records: the recipe exactly as it was run, loss
    entries in full form. Value rules are checked when ``build_arguments`` builds the dataclasses.
    """
    overrides = overrides or {}
    recipe = {k: v for k, v in recipe.items() if not _replaced_by_flag(k, overrides)}
    values = {**recipe, **overrides}
    for key, value in overrides.items():  # a mapping flag changes the recipe's mapping, key by key
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            values[key] = {**recipe[key], **value}
    if {"learning_rate", "lr_base"} <= values.keys():
        raise RecipeError("learning_rate and lr_base are both given: keep lr_base (the rate for lr_base_size images, "
                          "scaled to the global batch) or learning_rate (as is), not both")
    table = field_table()
    for key in values:
        if not isinstance(key, str):  # ``1: 2`` or ``true: x``: the hint's close matches failed on it (a traceback)
            raise RecipeError(f"recipe key {key!r} is not a name: every key is a setting's name, such as "
                              "learning_rate")
        if key not in table:
            raise RecipeError(f"unknown recipe key {key!r}: {_key_hint(key, list(table))}")
    for required in REQUIRED_KEYS:
        if values.get(required) in (None, ""):
            raise RecipeError(f"the recipe needs {required!r}")
    resolved = {key: coerce(value, table[key][2], key) for key, value in values.items()}
    for key in _DATA_KEYS:  # --dataset_name= clears the recipe's, as --dataset_name null does
        if resolved.get(key) == "":
            resolved[key] = None
    for key in _PATH_KEYS:  # as a shell would: only some of them reached a call that expands it
        if isinstance(resolved.get(key), str) and resolved[key].startswith("~"):
            resolved[key] = os.path.expanduser(resolved[key])
    for key, value in resolved.items():  # transformers lists them in metadata and checks only some
        choices = table[key][1].metadata.get("choices")
        if choices and isinstance(value, str) and value not in choices:
            raise RecipeError(f"{key}: {value!r} is not one of {list(choices)}: {close_matches(value, list(choices))}")
    if isinstance(resolved.get("accelerator_config"), dict):
        resolved["accelerator_config"] = _coerce_accelerator_config(resolved["accelerator_config"])
    checkpointing = resolved.get("gradient_checkpointing_kwargs")
    for name, value in checkpointing.items() if isinstance(checkpointing, dict) else ():
        # torch's checkpoint takes any text as true: use_reentrant: no (text under YAML 1.2) was reentrant
        if spelt_boolean(value) is not None:
            raise RecipeError(f"gradient_checkpointing_kwargs {name}: {value!r} is text, which torch takes as true: "
                              f"write {str(spelt_boolean(value)).lower()} (YAML 1.2 reads only true and false as "
                              "booleans)")
    if resolved.get("losses") is not None:
        resolved["losses"] = coerce_losses(resolved["losses"])
    if resolved.get("feature_pairs") is not None:
        resolved["feature_pairs"] = coerce_feature_pairs(resolved["feature_pairs"])
    return resolved


def _coerce_accelerator_config(config: dict[str, Any]) -> dict[str, Any]:
    """A mapping's settings by AcceleratorConfig's annotations: transformers keeps what it is given, so
    ``split_batches: no`` (text under YAML 1.2, as a quoted "false" is) was a true value, and the batches
    were split over the processes, the global batch and lr_base's rate computed for it, opposite to what
    the recipe said. Keys it does not have are left to transformers, which names them."""
    from transformers.trainer_pt_utils import AcceleratorConfig

    hints = typing.get_type_hints(AcceleratorConfig)
    return {key: coerce(value, hints[key], f"accelerator_config.{key}") if key in hints else value
            for key, value in config.items()}


# What a flag replaces of the recipe: the other way to set the same thing (``--learning_rate 1e-4``
# on a recipe that gives ``lr_base`` trains at 1e-4; the two given together are an error), and the
# other source of the data (``--train_dir`` on a recipe that names a dataset reads the image
# folders; ``--validation_dir`` or ``--dataset_config_name`` alone replace nothing).
_REPLACES = {"learning_rate": {"lr_base"}, "lr_base": {"learning_rate"},
             "train_dir": {"dataset_name", "dataset_config_name"}, "dataset_name": {"train_dir", "validation_dir"}}


def _replaced_by_flag(key: str, overrides: dict[str, Any]) -> bool:
    """A flag that clears its setting (``--dataset_name=`` or ``null``) replaces nothing: the recipe's
    image folders stay with their validation_dir (dropped, the run evaluated on a carved split)."""
    return key not in overrides and any(key in _REPLACES.get(flag, ()) for flag, value in overrides.items()
                                        if value not in (None, ""))


# Keys a recipe may reach for that are not settings here, and what to do instead: a TrainingArguments
# setting transformers 5 removed (recipes written for 4.x still carry it), and the class count, which
# the data decides (the close matches would be label_names, itself refused, or num_train_epochs).
_CLASSES_FROM_DATA = ("the run names and counts the student's classes from the dataset's labels (label_column_name, "
                      "or the class folders): drop it")
_KEY_HINTS = {
    "logging_dir": "transformers 5 removed it: TensorBoard writes to output_dir/runs, or to the folder the "
                   "TENSORBOARD_LOGGING_DIR environment variable names",
    **dict.fromkeys(("num_labels", "num_classes", "id2label", "label2id"), _CLASSES_FROM_DATA),
    **dict.fromkeys(("revision", "model_revision", "teacher_revision"),
                    "hf_rcka loads a Hub model's main revision (hub_revision is the branch a run uploads to): "
                    f"to train from another, {PIN_REVISION}"),
    # TrainingArguments fields of earlier transformers versions that this one no longer has
    "evaluation_strategy": "removed from transformers' TrainingArguments: its name is eval_strategy",
    "no_cuda": "removed from transformers' TrainingArguments: use_cpu: true",
    "push_to_hub_token": "removed from transformers' TrainingArguments: hub_token (or hf auth login)",
    "torchdynamo": "removed from transformers' TrainingArguments: torch_compile: true, with torch_compile_backend",
    "save_safetensors": "removed from transformers' TrainingArguments: weights are always saved as safetensors",
    **dict.fromkeys(("past_index", "jit_mode_eval", "use_ipex", "use_mps_device", "tpu_num_cores", "fp16_backend",
                     "ray_scope", "use_legacy_prediction_loop"), "removed from transformers' TrainingArguments: drop it"),
}


def _key_hint(key: str, keys: list[str]) -> str:
    """What replaced a removed key, close matches, or a pointer to ``--help`` rather than all ~180 keys."""
    if key in _KEY_HINTS:
        return _KEY_HINTS[key]
    hint = close_matches(key, keys)
    return hint if hint.startswith("did you mean") else f"no key is close; {entry_command()} --help lists them all"


def build_arguments(values: dict[str, Any]) -> Arguments:
    """The three argument dataclasses from resolved values (see ``resolve_values``); each checks its values."""
    table = field_table()
    grouped: dict[type, dict[str, Any]] = {cls: {} for cls in ARGUMENT_CLASSES}
    for key, value in values.items():
        grouped[table[key][0]][key] = value
    _check_backend(values)
    _check_accelerator_config(values)
    built = []
    for cls in ARGUMENT_CLASSES:
        try:
            built.append(cls(**grouped[cls]))
        except RecipeError:
            raise
        except (TypeError, ValueError) as err:  # transformers' messages span lines: one line here
            raise RecipeError(f"invalid {cls.__name__}: {'; '.join(_lines(err))}") from None
        except ImportError as err:  # deepspeed without the package (PackageNotFoundError)
            raise RecipeError(f"invalid {cls.__name__}: a setting needs a package that is not installed "
                              f"({'; '.join(_lines(err))}): install it, or drop the setting") from None
    return tuple(built)  # type: ignore[return-value]


def _check_backend(values: dict[str, Any]) -> None:
    """``ddp_backend: nccl`` without a CUDA device failed inside TrainingArguments with "Default
    process group has not been initialized", which named neither the key nor the fix."""
    import torch

    if values.get("ddp_backend") == "nccl" and not torch.cuda.is_available():
        raise RecipeError("ddp_backend: nccl runs on CUDA GPUs, and this machine has none: drop ddp_backend (gloo is "
                          "the CPU default; a multi-process CPU launch also needs use_cpu: true)")
    from ..distributed import launched_processes

    # any backend on a plain run failed in TrainingArguments with the same "Default process group has not been
    # initialized", which named neither the key nor the fix (the nccl line above says gloo is the CPU default)
    if values.get("ddp_backend") and launched_processes()[0] <= 1:
        raise RecipeError(f"ddp_backend: {values['ddp_backend']} is the backend of a multi-process launch's process "
                          "group, and this is one process (not started by torchrun or accelerate launch): drop "
                          "ddp_backend, or launch several processes")


def _check_accelerator_config(values: dict[str, Any]) -> None:
    """A text ``accelerator_config`` is a JSON file's path: a typo failed as a FileNotFoundError traceback."""
    config = values.get("accelerator_config")
    if isinstance(config, str) and not os.path.isfile(config):
        raise RecipeError(f"accelerator_config {config!r} is not a file: give the path of a JSON file of "
                          "AcceleratorConfig settings, or the settings themselves as a mapping")


def _lines(err: BaseException) -> list[str]:
    lines = (line.strip() for line in str(err).splitlines())
    return [line.removeprefix("- ") for line in lines if line.strip("- ")]  # bullets as items


def recipe_as_recorded(path: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded recipe (``path`` beside its ``_working_dir.json``) read as its run read it:
    run again from another folder, its relative data, teacher and student paths named that
    folder's (another ``data/train`` of 3 classes trained for the record's 31, exit 0)."""
    working_dir = recorded_working_dir(os.path.dirname(os.path.abspath(path)))
    if working_dir is None or os.path.realpath(working_dir) == os.path.realpath(os.getcwd()):
        return recipe
    read_there = anchored(dict(recipe), working_dir, (*ANCHORED_KEYS, "baseline_dir"))
    moved = sorted(key for key in read_there if read_there[key] != recipe.get(key))
    gone = [key for key in ("train_dir", "validation_dir") if key not in moved and is_relative_path(recipe.get(key))]
    for key in gone:  # the run folder was copied, or its data moved: read here, and said
        logger.warning("%s: %s %r is gone from %s, where its run ran: it is read from this folder (%s); give --%s to "
                       "read another", path, key, recipe[key], working_dir, os.getcwd(), key)
    if moved:
        logger.info("%s: %s read from %s, where its run ran (as recorded in %s)", path, ", ".join(moved), working_dir,
                    WORKING_DIR_NAME)
    return read_there


def read_recipe(path: str, argv: Sequence[str] = ()) -> dict[str, Any]:
    """The recipe file at ``path`` with the ``--key value`` overrides of ``argv``, checked and
    converted, as the command line runs it (a recorded recipe's relative paths read where it ran)."""
    return resolve_values(recipe_as_recorded(path, load_recipe(path)), parse_cli_overrides(argv))


def parse_arguments(recipe: dict[str, Any], overrides: dict[str, Any] | None = None) -> Arguments:
    """Validate ``recipe`` (+ CLI ``overrides``, which win) and build the three dataclasses."""
    return build_arguments(resolve_values(recipe, overrides))


def parse_recipe_file(path: str | Path, argv: Sequence[str] = ()) -> Arguments:
    """Read a recipe file and apply ``--key value`` overrides from ``argv`` (``read_recipe``)."""
    return build_arguments(read_recipe(str(path), argv))


class _RecipeDumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 (``yaml.safe_load``, which other tools use) or the recipe
    loader's YAML 1.2 would read as something else (``"1e5"``, ``"0o17"``, ``"yes"``)."""


_RecipeDumper.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()
}
for _first, _resolvers in _RecipeLoader.yaml_implicit_resolvers.items():
    _RecipeDumper.yaml_implicit_resolvers.setdefault(_first, []).extend(_resolvers)


def dump_recipe(values: dict[str, Any], path: str | Path, comment: str = "") -> None:
    """Write resolved values as a recipe that ``scripts/distill.py`` can run again (without secrets).

    ``comment``: lines written above the values as YAML comments (what the values alone do not
    say, such as the launch they ran under); reading the recipe back ignores them.
    """
    public = {key: value for key, value in values.items() if key not in SECRET_KEYS}
    with replacing(path) as handle:  # whole or not at all: the run's record of how it ran
        handle.writelines(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
        yaml.dump(_plain(public), handle, Dumper=_RecipeDumper, sort_keys=False)


def _plain(value: Any) -> Any:
    """Make a value YAML-safe (enums to their values, tuples to lists)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
