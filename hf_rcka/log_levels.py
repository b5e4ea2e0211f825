"""hf_rcka's own logging held to errors for a while: notes that another step says, or that
another process says, are not said twice."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def errors_only(when: bool = True) -> Iterator[None]:
    """Within the block, hf_rcka logs errors alone (when ``when``); its level is restored after."""
    package = logging.getLogger("hf_rcka")
    level = package.level
    if when:
        package.setLevel(logging.ERROR)
    try:
        yield
    finally:
        package.setLevel(level)
