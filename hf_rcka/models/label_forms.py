"""Class names that differ only in Unicode normalisation (or, in one image folder, in spaces
around them): one class written two ways.

An accented name has two spellings in Unicode: ``café`` with one code point for ``é`` (NFC, what
Linux tools and keyboards usually write) or with ``e`` plus a combining accent (NFD, what macOS
file systems and files copied from them can hold). Both print the same, so an error that lists
``'café'`` as missing on one side and extra on the other, or blames letter case, sends the user
looking for a difference they cannot see.

Such names are refused, not merged: labels are matched by exact name everywhere (datasets'
imagefolder labels images by their folder's name, a checkpoint's or teacher's ``id2label`` is
compared name by name), and the saved model's ``id2label`` would carry one spelling that later
compares unequal to folders written the other way. The error names each spelling and its form,
escaped so the difference is visible, and the fix: use one form, e.g. NFC.
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

from ..errors import LabelError

# renames every name under a folder to NFC (convmv is packaged for Linux distributions and Homebrew)
TO_NFC = "convmv -r -f utf8 -t utf8 --nfc --notest <folder>"


def form_of(name: str) -> str:
    """``NFC``, ``NFD`` or ``mixed`` (neither) for a name that has accents; ``NFC`` otherwise."""
    if unicodedata.is_normalized("NFC", name):
        return "NFC"
    return "NFD" if unicodedata.is_normalized("NFD", name) else "mixed"


def form_clashes(ours: Sequence[str], theirs: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of a name in ``ours`` and a different name in ``theirs`` that are equal once NFC-normalised."""
    by_nfc: dict[str, list[str]] = {}
    for name in theirs:
        by_nfc.setdefault(unicodedata.normalize("NFC", name), []).append(name)
    return sorted({(a, b) for a in ours for b in by_nfc.get(unicodedata.normalize("NFC", a), ()) if a != b})


def _spelled(name: str) -> str:
    """The name escaped (``'cafe\\u0301'``) with its form, so two spellings look different."""
    return f"{ascii(name)}, {form_of(name)}"


def check_same_forms(
    ours: Sequence[str], theirs: Sequence[str], ours_who: str, theirs_who: str, fix: str, key: str | None = None
) -> None:
    """Refuse names of ``ours`` that match a name of ``theirs`` only after Unicode normalisation.

    Args:
        ours, theirs: the two sets of class names compared by exact name.
        ours_who, theirs_who: what each side is (``validation_dir``, ``the teacher's id2label``).
        fix: what to rename, ending the message; ``{form}`` in it becomes the form of
            ``theirs``' spelling (``NFC``).
        key: the recipe key the message starts with, if any.

    Raises:
        LabelError: one line naming both spellings of the first clash and how many more there are.
    """
    clashes = form_clashes(ours, theirs)
    if not clashes:
        return
    a, b = clashes[0]
    more = f" (and {len(clashes) - 1} more such classes)" if len(clashes) > 1 else ""
    prefix = f"{key}: " if key else ""
    raise LabelError(
        f"{prefix}{ours_who} and {theirs_who} write the class {unicodedata.normalize('NFC', a)!r} in different "
        f"Unicode forms ({ours_who}: {_spelled(a)}; {theirs_who}: {_spelled(b)}){more}: the names look alike but "
        f"differ, and not in letter case. Fix: {fix.format(form=form_of(b))}"
    )


def check_one_form_each(folder: str, classes: Sequence[str]) -> None:
    """Refuse class folders of one image folder whose names differ only in Unicode form, or in
    spaces around them.

    datasets would make them two classes that print as one name, each with part of the images.

    Raises:
        LabelError: naming both spellings and the fix (merge them into one folder).
    """
    clashes = form_clashes(classes, classes)
    if clashes:
        a, b = clashes[0]
        raise LabelError(
            f"{folder!r} has class folders {_spelled(a)} and {_spelled(b)} that are the same name "
            f"{unicodedata.normalize('NFC', a)!r} in different Unicode forms: datasets would make them two classes "
            "that print alike. Fix: merge them into one folder named in one form, e.g. NFC"
        )
    by_stripped: dict[str, str] = {}
    for name in sorted(classes):  # 'cat' and 'cat ' (a space typed or pasted after the name)
        twin = by_stripped.setdefault(unicodedata.normalize("NFC", name).strip(), name)
        if twin != name:
            forms = " and in Unicode form" if form_of(twin) != form_of(name) else ""
            raise LabelError(
                f"{folder!r} has class folders {twin!r} and {name!r} that differ only in surrounding spaces{forms}: "
                "datasets would make them two classes. Fix: merge them into one folder"
            )
