"""User errors: a bad recipe, model or dataset, reported as one line that names the fix.

``scripts/distill.py`` prints a ``UserError`` as ``error: <message>`` and exits with status 2,
without a traceback (``--debug`` or ``HF_RCKA_DEBUG=1`` shows it). Anything else is a bug in
hf_rcka or a library and keeps its traceback. Every message names the recipe key, path or file
at fault and what to change.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def first_names(names: Sequence[str], shown: int = 4) -> str:
    """The first ``shown`` of ``names`` and how many more, for a message: a long list (every weight
    of a layer) would bury the one line that names the fix."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


# Text that YAML 1.1 (and people) read as a boolean; under YAML 1.2 only true and false are one
_SPELT_TRUE = ("yes", "y", "on", "true")
_SPELT_FALSE = ("no", "n", "off", "false")


def spelt_boolean(value: object) -> bool | None:
    """The boolean a text value spells (``"no"`` is False), or None: for a setting no type converts
    (a timm argument, a checkpoint keyword), whose reader takes any non-empty text as true."""
    if not isinstance(value, str):
        return None
    word = value.lower()
    return True if word in _SPELT_TRUE else False if word in _SPELT_FALSE else None


class UserError(ValueError):
    """Something the user can fix in the recipe, the data or the environment.

    A ``ValueError`` so that callers catching the library's historical error type still work.
    """


class RecipeError(UserError):
    """A recipe or command-line value is invalid; the message names the key and the fix."""


class ModelError(UserError):
    """A student, teacher or checkpoint cannot be used as the recipe asks."""


class DataError(UserError):
    """The dataset, an image folder or an image file cannot be used as the recipe asks."""


class LabelError(DataError):
    """Class names of the dataset, the student and the teacher do not match."""


class HubUploadError(UserError):
    """The upload at the end of a run failed; everything it would have uploaded is saved locally.

    A user error because the fix is outside the code (network, token, repository permissions) and
    the message carries the command that uploads the saved folder.
    """


class OutputWriteError(UserError, OSError):
    """Writing the run's files failed: a full disk, a quota, a read-only or forbidden path.

    A user error because the fix is outside the code (free space, another ``output_dir``); also an
    ``OSError``, the type the failed write raised. What was saved before the failure is kept.
    """


class TrainingDiverged(UserError):
    """The student's weights became NaN or infinite during training; the final model is not saved.

    A user error because the recipe holds the fix (learning rate, loss weights, precision), and
    so that the command line prints it as one ``error:`` line and exits non-zero.
    """


class TeacherNearChance(ModelError, RuntimeError):
    """``teacher_accuracy_check: error`` and the teacher is near chance on evaluation images drawn from the set.

    Also a ``RuntimeError``, the type this check raised before user errors had their own class.
    """


class StudentNearChance(UserError):
    """The trained student scores at chance on the final evaluation: it learned nothing usable.

    Raised by the command line after the model, its results and card are saved (not uploaded), so
    that a run which trained a useless model does not end with exit 0 (a sweep or a pipeline reads
    the exit status, not the log); the fix is in the recipe (steps, learning rate, loss weights).
    """


class LayerIndexError(RecipeError, IndexError):
    """A feature pair's layer index is out of range for the model's hidden states.

    Also an ``IndexError``, the type this check raised before user errors had their own class.
    """


# torch re-raises an exception from a loader worker as its own type, with this message
_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")
_TRACEBACK = "Traceback (most recent call last):\n"  # also ends the worker's own "Original Traceback ..." line


def user_message(err: BaseException) -> str:
    """``err``'s message; for a user error raised in a dataloader worker ('Caught DataError in
    DataLoader worker process 0.' and the worker's traceback), the worker's message alone, so the
    command line prints the same one line as without workers. The message is read from the last
    traceback, the one raised: a user error raised while handling another of its type (or from one)
    has the other's traceback, ending in a line of the same type, first."""
    text = str(err)
    found = _WORKER_ERROR.match(text)
    raised = found and re.search(rf"^(?:[\w.]+\.)?{found.group(1)}: (.*)", text.rsplit(_TRACEBACK, 1)[-1],
                                 re.DOTALL | re.MULTILINE)
    return raised.group(1).strip() if raised else text
