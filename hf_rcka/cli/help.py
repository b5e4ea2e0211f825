"""``scripts/distill.py --help``: every recipe key with its help text and default, grouped.

Built from the argument dataclasses (their field metadata is the help text), rather than through
``HfArgumentParser``, which cannot build fields typed ``list | None`` or ``dict | None`` (losses,
feature pairs, config overrides). ``--help losses`` lists every registered loss and adapter with
its options, read from the constructors, so a new loss documents itself.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
import typing
from typing import Any

from transformers import TrainingArguments

from ..arguments import REQUIRED_KEYS, RUN_DEFAULTS, DataArguments, DistillationTrainingArguments, ModelArguments
from ..training_values import FIXED_SETTINGS
from ..losses import per_channel_losses, reads_features
from ..adapters import ADAPTER_SIDES
from ..registry import ADAPTERS, LOSSES, Registry

USAGE = ("usage: accelerate launch scripts/distill.py RECIPE.yaml [--key value ...]   (--help losses, --debug, --version)\n"
         "       installed without the repository: hf-rcka-distill RECIPE.yaml ..., or accelerate launch -m hf_rcka "
         "RECIPE.yaml ...")
_WIDTH = 100
_INDENT = 6
_TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
# TrainingArguments fields whose transformers help says something else than what the CLI does.
_HELP = {
    "resume_from_checkpoint": "Continue a run: a checkpoint folder, or true for the last checkpoint in output_dir "
                              "(with its adapters, loss state and EMA; refused at another global batch, learning rate, loss set or "
                              "held-out split; other schedule settings are logged).",
    "debug": "transformers' debug features ('underflow_overflow', 'tpu_metrics_debug'), as --debug VALUE. A bare "
             "--debug instead prints user errors with their traceback.",
    "do_predict": "Refused: the command line trains and evaluates; predict a test split with "
                  "DistillationTrainer.predict, or evaluate one as the validation set with do_train: false.",
}
# Defaults the command line sets itself where a recipe is silent (cli.job), unlike transformers'.
_CLI_DEFAULTS = {
    "logging_nan_inf_filter": "default: False; True with fp16",
    "dataloader_pin_memory": "default: True; False without an accelerator",
}


def _help(f: dataclasses.Field) -> str:
    if f.name in FIXED_SETTINGS:
        value, reason = FIXED_SETTINGS[f.name]
        return f"Fixed at {value!r}: {reason}."
    # transformers escapes % for argparse ("~20%% slower"); printed here as it reads
    return _HELP.get(f.name, f.metadata.get("help", "").replace("%%", "%"))


def _groups() -> list[tuple[str, list[dataclasses.Field]]]:
    own = [f for f in dataclasses.fields(DistillationTrainingArguments) if f.init]
    return [
        ("model", [f for f in dataclasses.fields(ModelArguments) if f.init]),
        ("data", [f for f in dataclasses.fields(DataArguments) if f.init]),
        ("distillation", [f for f in own if f.name not in _TRAINING_FIELDS]),
        ("training (transformers.TrainingArguments)", [f for f in own if f.name in _TRAINING_FIELDS]),
    ]


def _default(f: dataclasses.Field) -> str:
    if f.name in REQUIRED_KEYS:
        return "required"
    if f.name in _CLI_DEFAULTS:
        return _CLI_DEFAULTS[f.name]
    if f.name in RUN_DEFAULTS:
        return f"default: {RUN_DEFAULTS[f.name]!r}"
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    value = getattr(value, "value", value)  # enums
    return f"default: {value!r}"


def _type_name(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return str(text).replace("typing.", "")


def _entry(name: str, annotation: Any, default: str, text: str) -> str:
    head = f"  {name} ({_type_name(annotation)}; {default})"
    body = textwrap.fill(" ".join(text.split()) or "(no description)", _WIDTH,
                         initial_indent=" " * _INDENT, subsequent_indent=" " * _INDENT)
    return f"{head}\n{body}"


def recipe_help() -> str:
    """Every recipe key by group: ``name (type; default)`` and its help text."""
    lines = [USAGE, "", "A recipe is a flat YAML mapping of these keys; --key value on the command line overrides it."]
    for title, fields in _groups():
        hints = {}
        for cls in (ModelArguments, DataArguments, DistillationTrainingArguments):
            try:
                hints.update(typing.get_type_hints(cls))
            except Exception:  # noqa: BLE001 - fall back to the raw annotation strings
                hints.update({f.name: f.type for f in dataclasses.fields(cls)})
        lines += ["", f"{title}:"]
        lines += [_entry(f.name, hints.get(f.name, f.type), _default(f), _help(f)) for f in fields]
    return "\n".join(lines)


def _options(registry: Registry, name: str) -> list[str]:
    """The options a recipe may set, with their defaults: those a ``**kwargs`` passes on to a base
    class included, an adapter's two sides (which ``build_adapter`` passes itself) left out."""
    reserved = ADAPTER_SIDES if registry is ADAPTERS else ()
    return [option if param.default is inspect.Parameter.empty else f"{option}={param.default!r}"
            for option, param in registry.parameters(name).items() if option not in reserved]


def _registry_help(registry: Registry, title: str) -> list[str]:
    lines = [f"{title}:"]
    for name in registry.names():
        doc = inspect.getdoc(registry.get(name)) or ""
        summary = doc.split("\n\n")[0]
        lines.append(f"  {name}: {', '.join(_options(registry, name)) or '(no options)'}")
        lines.append(textwrap.fill(" ".join(summary.split()), _WIDTH, initial_indent=" " * _INDENT,
                                   subsequent_indent=" " * _INDENT))
    return lines


def _auto_adapter_help() -> list[str]:
    """What ``adapter: auto`` (a pair without ``adapter``) picks, by the feature losses' needs."""
    feature_losses = [n for n in LOSSES.names() if reads_features(LOSSES.get(n))]
    shaped = [n for n in feature_losses if LOSSES.get(n).feature_alignment != "any"]
    relational = [n for n in feature_losses if n not in shaped]
    text = (f"identity when every feature loss relates whole batches ({', '.join(relational)}); patch_match with "
            f"project: true when one compares shapes or maps ({', '.join(shaped)})")
    return ["  auto: (the default, or a pair without adapter)",
            textwrap.fill(text, _WIDTH, initial_indent=" " * _INDENT, subsequent_indent=" " * _INDENT)]


def losses_help() -> str:
    """Every loss and adapter a recipe can name, with its options and defaults."""
    lines = ["losses: a list of {name: <loss>, weight: <float>, <option>: <value>...}", ""]
    lines += _registry_help(LOSSES, "losses")
    lines += ["", "feature_pairs: 'auto' or a list of {student_layer, teacher_layer, adapter: <adapter>, <option>...}; "
              "unset (None), the pairs are chosen as 'auto' chooses them", ""]
    lines += _registry_help(ADAPTERS, "adapters")
    lines += _auto_adapter_help()
    lines += ["", f"patch_match's sample_channels is 'student' when the only feature losses are {per_channel_losses()} "
              "(each training step compares a random subset of the teacher's channels); null compares all"]
    return "\n".join(lines)
