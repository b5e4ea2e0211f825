"""What a Hub upload of the output folder publishes: the run's files, nothing else, nothing stale.

Trainer uploads the whole ``output_dir`` (its checkpoint pushes during training, and the final
upload of ``scripts/distill.py``), leaving out only names that start with ``_`` and checkpoint
folders. A folder that also held an image folder the run trained on, a ``.env`` or a user's notes
published them beside the model, and the run ended well. So a run that pushes refuses such a folder
before it loads anything, and the final upload leaves out whatever appeared in it since.

The final upload also deletes, in the same commit, the run files an earlier push of the repository
left and this run does not hold (a first model's ``eval_results.json`` beside a second model trained
without evaluation; a ``model.safetensors`` beside a sharded export).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..arguments import DistillationTrainingArguments
from ..errors import RecipeError
from ..trainer.hub_pushes import PUBLISHED_RESULTS
from .output_folder import CARD_NAME, RUN_OUTPUTS, later_checkpoints, resumes_in

# What Trainer's uploads leave out of every one of them
TRAINER_IGNORES = ("_*", f"{PREFIX_CHECKPOINT_DIR}-*")
# Left out by huggingface_hub itself (its own cache is .cache/huggingface alone), or part of any Hub repository
_HUB_OWN = (".git", ".gitattributes")


def unpublishable_entries(output_dir: str) -> list[str]:
    """``output_dir``'s entries that no run writes and an upload would publish (folders end in ``/``)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    code = _remote_code(out)
    return sorted(entry.name + ("/" if entry.is_dir() else "") for entry in out.iterdir()
                  if not any(fnmatch.fnmatchcase(entry.name, p) for p in (*TRAINER_IGNORES, *_HUB_OWN, *RUN_OUTPUTS))
                  and not (code and entry.suffix == ".py") and not _hub_cache_only(entry))


def _hub_cache_only(entry: Path) -> bool:
    """A ``.cache`` folder that holds huggingface_hub's upload cache alone, which it never uploads."""
    return entry.name == ".cache" and entry.is_dir() and all(p.name == "huggingface" for p in entry.iterdir())


def _remote_code(out: Path) -> bool:
    """Whether the saved model brings its own code (``auto_map``): ``save_pretrained`` copied its
    ``.py`` files beside it, and the uploaded model needs them."""
    try:
        return "auto_map" in json.loads((out / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_push_contents(args: DistillationTrainingArguments, resume: str | None) -> None:
    """Refuse, before anything loads, a pushing run whose uploads would publish what is not its own."""
    if not (args.push_to_hub and args.do_train):
        return
    foreign = unpublishable_entries(args.output_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RecipeError(
            f"push_to_hub uploads output_dir {args.output_dir!r}, which holds {shown}: no run of hf_rcka wrote "
            "them, and the upload would publish them beside the model. Move them out (data included), choose "
            "another output_dir, or set push_to_hub: false")
    # resuming an earlier checkpoint sets the export aside with the later checkpoints (overwrite_output_dir)
    if (resume is not None and args.hub_strategy != "end" and resumes_in(args.output_dir, resume) and _exported(args)
            and not later_checkpoints(args.output_dir, resume)):
        raise RecipeError(
            f"resuming the finished run in {args.output_dir!r} with hub_strategy {_value(args.hub_strategy)}: each "
            "checkpoint's upload would publish the new weights beside the earlier export's card and results "
            "(README.md, all_results.json) until the run ends. Set hub_strategy: end for this run (one upload, "
            "the card and results with the weights they describe)")


def _value(setting: object) -> object:
    return getattr(setting, "value", setting)  # TrainingArguments holds an enum


def _exported(args: DistillationTrainingArguments) -> bool:
    out = Path(args.output_dir)
    return (out / CARD_NAME).is_file() or (out / "all_results.json").is_file()


def upload_filters(unpublishable: list[str]) -> dict[str, list[str]]:
    """The final upload's ``ignore_patterns`` (Trainer's, and the ``unpublishable_entries`` that
    appeared during the run) and ``delete_patterns``."""
    ignored = [*TRAINER_IGNORES]
    for name in unpublishable:
        ignored += [name.rstrip("/"), name.rstrip("/") + "/*"]
    return {"ignore_patterns": ignored, "delete_patterns": list(PUBLISHED_RESULTS)}
