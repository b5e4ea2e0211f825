"""Writing a text file whole or not at all.

Opening a file with mode ``"w"`` empties it first: a full disk or a signal in the middle of the
write leaves a file cut short where a whole one was (a model card holding a section its user wrote,
a run's recorded recipe, its results). The text goes to a temporary file beside the target, which
replaces it once complete: ``os.replace`` within one folder is atomic, so readers see the old file
or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, TextIO

# Names that start with "_" stay out of Hub uploads and are no run's output (see cli.output_folder).
TEMPORARY_PREFIX = "_writing-"


@contextlib.contextmanager
def replacing_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path``, with its suffix, for a writer that takes a file name
    (matplotlib's ``savefig``, a copy), which replaces ``path`` when the block ends without an
    exception.

    The new file gets the old one's permissions (or the umask's, for a new file): ``mkstemp``
    would leave it readable by its owner alone. A symbolic link is written through, as ``open(path,
    "w")`` writes: replacing the link itself would cut a file its user placed elsewhere (results a
    dashboard reads) off from what the run writes.
    """
    path = Path(os.path.realpath(path))
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX + path.name + ".",
                                             suffix=path.suffix)
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.chmod(temporary, _mode_for(path))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def replacing(path: str | os.PathLike, newline: str | None = None) -> Iterator[TextIO]:
    """A text handle whose contents replace ``path`` when the block ends without an exception."""
    with replacing_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline=newline) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_text(path: str | os.PathLike, text: str, newline: str | None = None) -> None:
    """Replace ``path``'s contents with ``text``, whole or not at all."""
    with replacing(path, newline=newline) as handle:
        handle.write(text)


def _read_umask() -> int:
    """The process's umask, read once at import: setting it to read it, later, would open a window
    in which another thread (a background Hub upload, a TensorBoard writer) creates files with no mask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def as_umask_allows(folder: str | os.PathLike, pattern: str = "*.safetensors") -> None:
    """Give ``folder``'s files matching ``pattern`` the permissions the umask gives new files.

    The safetensors library writes its files with mode 0600 (``model.safetensors``, the EMA and
    distillation state): in a shared folder, a model others could not load or resume. Files more
    open than the umask's are left alone.
    """
    wanted = 0o666 & ~_UMASK
    for path in Path(folder).glob(pattern):
        try:
            mode = path.stat().st_mode & 0o777
            if mode | wanted != mode:
                os.chmod(path, mode | wanted)
        except OSError:
            continue  # a file it may not change is the file system's to say


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """The folders ``os.makedirs(path)`` would make, deepest first: a run refused or failed before
    it wrote anything removes them again (:func:`remove_empty`)."""
    missing, folder = [], Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) that are empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
