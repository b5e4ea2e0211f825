"""Which teacher trained a checkpoint or an export: recorded in it, and compared when a run resumes
from it (or, for an export, runs its recorded recipe again).

A checkpoint holds the student and the distillation state, not the teacher, so a run resumed with
another teacher (a retrained one at the same path, another folder, another Hub model) went on
distilling from it, and its card named only the new one. Paths are no proof: folders move between
machines and a path may hold a retrained model. So the record holds a hash of the teacher's
weights, every floating tensor by name, rounded to bfloat16 first: a teacher kept in bfloat16
(``teacher_dtype``) hashes as the float32 one it was cast from, and any other change of a weight
beyond that rounding changes the hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import torch

from ..errors import ModelError
from ..file_writes import write_text
from ..models.sources import cache_snapshot

logger = logging.getLogger(__name__)

TEACHER_RECORD_NAME = "teacher.json"


@torch.no_grad()
def teacher_fingerprint(teacher: torch.nn.Module) -> dict[str, Any]:
    """The teacher's source, value count and weight hash (see the module's docstring)."""
    digest, count = hashlib.sha256(), 0
    tensors = sorted([*teacher.named_parameters(), *teacher.named_buffers()], key=lambda item: item[0])
    for name, tensor in tensors:
        if not tensor.is_floating_point():
            continue
        values = tensor.detach().to(torch.bfloat16).reshape(-1).cpu()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(values.view(torch.int16).numpy().tobytes())
        count += values.numel()
    source = getattr(getattr(teacher, "config", None), "_name_or_path", None) or None
    snapshot = cache_snapshot(source) if source else None  # a folder of the Hugging Face cache: not by its hash
    if snapshot:
        source = f"{snapshot[0]} at revision {snapshot[1]}"
    elif source and os.path.isabs(source):  # a local folder by its name: checkpoints may be pushed to the Hub
        source = os.path.basename(os.path.normpath(source))
    return {"source": source, "values": count, "sha256": digest.hexdigest()}


def write_teacher_record(folder: str, fingerprint: dict[str, Any]) -> None:
    write_text(os.path.join(folder, TEACHER_RECORD_NAME), json.dumps(fingerprint))  # whole or not at all


def check_teacher_record(folder: str, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume ``folder`` with a teacher other than the one its record names.

    A checkpoint without a record (no teacher, or an earlier version's) is not checked.

    Raises:
        ModelError: naming both teachers' sources and the ways on.
    """
    recorded = recorded_teacher(folder)
    if recorded is None or recorded.get("sha256") == fingerprint["sha256"]:
        return
    raise ModelError(
        f"resume_from_checkpoint: {folder!r} was trained with another teacher (its record: {recorded.get('source')!r}, "
        f"{recorded.get('values')} values; this run's: {fingerprint['source']!r}, {fingerprint['values']} values, "
        "other weights, or the same in float16): a resumed run continues the same distillation. Resume with the teacher it was trained "
        "with, or start a new run from its weights in a new output_dir"
    )


def recorded_teacher(folder: str) -> dict[str, Any] | None:
    """The teacher record a run left in ``folder`` (its export or a checkpoint), if any."""
    path = os.path.join(folder, TEACHER_RECORD_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            recorded = json.load(handle)
    except (OSError, ValueError) as err:  # an earlier version's record cut short by a kill
        logger.warning("%s cannot be read (%s): the teacher it records is not compared", path, err)
        return None
    return recorded if isinstance(recorded, dict) else None


__all__ = ["TEACHER_RECORD_NAME", "check_teacher_record", "recorded_teacher", "teacher_fingerprint",
           "write_teacher_record"]
