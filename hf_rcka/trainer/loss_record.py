"""Which losses and feature pairs trained a checkpoint: recorded in it, and compared when a run
resumes from it.

The checkpoint's loss and adapter state only fits losses and adapters of the same structure, so a
resume with a loss option changed (rcka's ``intra_weight``, kd's ``temperature``, ce's smoothing)
or pairs of the same shapes between other layers loaded and went on silently. A loss's weight may
change (a schedule of the weights is a choice a resumed run may make); everything else must match.
The command line compares the recorded recipe before anything loads; this record serves the Python
API too.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..errors import ModelError
from ..file_writes import write_text
from ..modeling.assembly import active_specs, run_loss_specs
from ..recipe_specs import checked_pairs, earlier_defaults, loss_changes, resolved_specs

LOSS_RECORD_NAME = "loss_settings.json"

logger = logging.getLogger(__name__)


def loss_settings(args: Any, has_teacher: bool) -> dict[str, Any]:
    """The run's active loss specs (every option written out), feature pairs and label smoothing, as
    JSON holds them."""
    settings = {"losses": resolved_specs(active_specs(run_loss_specs(args, has_teacher))),
                "feature_pairs": checked_pairs(getattr(args, "feature_pairs", None)),
                "label_smoothing_factor": getattr(args, "label_smoothing_factor", 0.0) or None}
    return json.loads(json.dumps(settings, default=str))  # tuples as lists, as they come back


def write_loss_record(folder: str, settings: dict[str, Any]) -> None:
    """Whole or not at all: a record a kill cut short reads as none, and its checkpoint would
    resume with other losses unchecked."""
    write_text(os.path.join(folder, LOSS_RECORD_NAME), json.dumps(settings))


def check_loss_record(folder: str, settings: dict[str, Any]) -> list[str]:
    """Refuse to resume ``folder`` with other losses, loss options or feature pairs than its record's.

    A checkpoint without a record (an earlier version's) is not checked.

    Returns:
        The options the record leaves out whose default has changed since (``earlier_defaults``),
        for the caller to say.

    Raises:
        ModelError: naming each change and the ways on.
    """
    recorded = read_loss_record(folder)
    if recorded is None:
        return []
    changes = loss_changes(recorded.get("losses") or [], settings["losses"], recorded.get("label_smoothing_factor"),
                           settings["label_smoothing_factor"])
    if recorded.get("feature_pairs") != settings["feature_pairs"]:
        changes.append(f"feature_pairs {recorded.get('feature_pairs')!r} -> {settings['feature_pairs']!r}")
    if changes:
        raise ModelError(f"resume_from_checkpoint: {folder!r} was trained with other loss settings "
                         f"({'; '.join(changes)}): a resumed run continues the same training (a loss's weight may "
                         "change). Resume with its settings, or start a new run from its weights in a new output_dir")
    return earlier_defaults(recorded.get("losses") or [], settings["losses"])


def read_loss_record(folder: str) -> dict[str, Any] | None:
    """The loss record of the checkpoint ``folder``, or None: an earlier version wrote none, and one
    a kill cut short is no record (the checkpoint's own checks say what else is missing)."""
    try:
        with open(os.path.join(folder, LOSS_RECORD_NAME), encoding="utf-8") as handle:
            recorded = json.load(handle)
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def say_earlier_defaults(folder: str, unknown: list[str]) -> None:
    """Say the options a resumed checkpoint's record leaves out whose default has changed since
    (``earlier_defaults``): it resumed with the new default, silently (rcka's 1/1 where the run had
    trained at 15/15)."""
    if unknown:
        logger.warning("resume_from_checkpoint: %s records no value for %s (an earlier hf_rcka recorded only the loss "
                       "options a recipe set): a run started before the default changed trained with the earlier "
                       "one. To go on as it started, set them in the recipe's losses", folder, "; ".join(unknown))


__all__ = ["LOSS_RECORD_NAME", "check_loss_record", "loss_settings", "read_loss_record", "say_earlier_defaults",
           "write_loss_record"]
