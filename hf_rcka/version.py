"""Which code this is: hf_rcka's version, and the git commit of the checkout it runs from.

The cards and run records name it, so that a run can be traced to the code that trained it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess

__version__ = "0.1.0"


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """``hf_rcka <version>``, with the git commit of the source tree it runs from when that tree is
    hf_rcka's own git checkout (as the README installs it), and ``local changes`` when its package
    differs from that commit (new files included): the version number alone names every commit
    since it was last raised, so a card or a record could not say which code trained a run.

    Cached: the command line asks once as it starts, so a checkout changed while a run loads its
    models is not named as the code that trains it.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    found = _git(package, "rev-parse", "--show-toplevel", "HEAD")
    top, commit = found.splitlines() if found and len(found.splitlines()) == 2 else (None, None)
    if not top or os.path.realpath(top) != os.path.realpath(os.path.dirname(package)) \
            or _git(package, "ls-files", "--error-unmatch", "__init__.py") is None:
        return f"hf_rcka {__version__}"  # an installed copy, or a copy inside another project's checkout
    changed = _git(package, "status", "--porcelain", "--", ".")  # None: it failed, and nothing is known
    state = {None: ", local changes unknown", "": ""}.get(changed, ", local changes")
    return f"hf_rcka {__version__} (git {commit[:12]}{state})"


# what decides a rerun's numbers besides the recipe: the libraries that compute them
LIBRARIES = ("torch", "transformers", "timm", "accelerate", "datasets")


def library_versions() -> list[str]:
    """``code_version()`` and the installed versions of ``LIBRARIES`` (another torch computes other
    roundings), read from the packages' metadata without importing them: for the card's
    reproduction line, and ``--version`` in a bug report."""
    versions = [code_version()]  # the tree imported, which an installed copy's metadata may not be
    for name in LIBRARIES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
            continue
    return versions


def _git(folder: str, *command: str) -> str | None:
    """A git command's output in ``folder``, or None where git is missing, fails there or takes
    more than a few seconds. It takes no lock (``GIT_OPTIONAL_LOCKS``): runs started together each
    ask, and a status that refreshes the index would make them wait on one another."""
    try:
        done = subprocess.run(["git", "-C", folder, *command], capture_output=True, text=True, timeout=5,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()
