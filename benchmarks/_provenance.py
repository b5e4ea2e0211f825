"""Which code a benchmark measured: the commit, marked when the measured files had uncommitted changes.

A result recorded at ``abc1234`` while ``hf_rcka/`` was being edited did not measure ``abc1234``;
``+dirty`` says so. Each benchmark names the paths (git pathspecs) its numbers depend on.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit(paths: Sequence[str]) -> str:
    """The short commit of HEAD (``unknown`` outside a git checkout), ``+dirty`` when ``paths`` differ from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", *paths) else "")
