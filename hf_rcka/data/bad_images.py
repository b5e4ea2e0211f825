"""Unreadable image files: skipped with a warning that names them, counted, reported, bounded.

Design. A truncated JPEG or a text file named ``.jpg`` used to end a run hours in with
``OSError: image file is truncated`` and no file name. Two ways out were possible:

* an up-front check. Opening every header is cheap (Pillow reads a few bytes), but a header
  check does not find truncated files, and a full decode of ImageNet's 1.28M files costs about
  as much as a training epoch's decoding (tens of CPU-minutes) before the first step;
* skipping at training time, which costs nothing for good files.

hf_rcka skips: the data pipeline decodes each image itself (``images.decode_image``); a file
that fails is logged with its name and appended to ``_skipped_images.tsv`` in the run's output
folder, once (the ledger is shared by dataloader workers and ranks, so the count is the run's;
a file met again, in the next epoch or evaluation, is not logged again). Its place in its batch
is filled by another image of the same batch, so batch shapes stay equal on every rank: in
training with that image's label, in evaluation with the label ``IGNORE_INDEX``, so that no
metric counts the copy (``datasets.collate``). A callback stops the run with the list once more
than ``max_bad_images`` files were skipped: a handful of bad files in a million is noise,
hundreds mean a broken copy of the data. The run's end reports the count and the ledger's path.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers import TrainerCallback

from ..distributed import any_rank
from ..errors import DataError

logger = logging.getLogger(__name__)

# "_": Trainer's Hub uploads leave "_*" out; the ledger names local paths, which stay local.
LEDGER_NAME = "_skipped_images.tsv"
_LISTED = 10


class SkippedImages:
    """The ledger of skipped files: ``path<TAB>reason`` lines in ``<folder>/_skipped_images.tsv``.

    Picklable (it holds only paths), so dataloader worker processes append to the same file.

    Args:
        folder: the run's output folder.
        limit: the run stops once more than this many files were skipped.
    """

    def __init__(self, folder: str, limit: int) -> None:
        self.path = os.path.join(folder, LEDGER_NAME)
        self.limit = int(limit)

    def reset(self) -> None:
        """Start a new run's count (a resumed run keeps counting)."""
        if os.path.exists(self.path):
            os.remove(self.path)

    def record(self, source: str, reason: str) -> None:
        """Log one skipped file and append it to the ledger (one short write, so appends interleave whole).

        A file already in the ledger is neither logged nor appended again: evaluation meets the
        same unreadable validation images at every evaluation, training at every epoch. The
        ledger is read only when a file is unreadable, which is rare. Two processes meeting the
        same file at once may both append it; ``entries`` drops the repeat.
        """
        if source in self.entries():
            return
        logger.warning("skipped unreadable image %s: %s", source, reason)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        line = f"{source}\t{' '.join(reason.split())}\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)

    def entries(self) -> list[str]:
        """The skipped files' names, in the order they were met (repeats dropped)."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as handle:
            names = [line.split("\t", 1)[0] for line in handle if line.strip()]
        return list(dict.fromkeys(names))

    def count(self) -> int:
        return len(self.entries())

    def over_limit_error(self) -> DataError:
        names = self.entries()
        shown = ", ".join(names[:_LISTED]) + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
        return DataError(
            f"{len(names)} image files could not be read (more than max_bad_images={self.limit}): {shown}. "
            f"The full list is in {self.path}; fix or remove those files, or raise max_bad_images"
        )

    def summary(self) -> str | None:
        """One line for the end of a run, or None when nothing was skipped."""
        count = self.count()
        if count == 0:
            return None
        return (f"skipped {count} unreadable image file(s) (in training each replaced by another image of its "
                f"batch, in evaluation not counted); list: {self.path}")


class SkippedImagesCallback(TrainerCallback):
    """Stops the run (at a logging step, an epoch's or training's end, after an evaluation; on every rank) once
    over the limit."""

    def __init__(self, ledger: SkippedImages) -> None:
        self.ledger = ledger
        self._size = -1
        self._over = False

    def _over_limit(self) -> bool:
        size = os.path.getsize(self.ledger.path) if os.path.exists(self.ledger.path) else 0
        if size != self._size:  # read the file only when it grew
            self._size = size
            self._over = self.ledger.count() > self.ledger.limit
        return self._over

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        # Checked at logging steps (the same steps on every rank): the collective syncs the host.
        every = max(1, int(args.logging_steps)) if args.logging_steps >= 1 else 1
        if state.global_step % every == 0:
            self._check(args)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        self._check(args)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        self._check(args)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        # after every evaluation too: the final one and an evaluation-only run's come after any training check
        self._check(args)

    def _check(self, args: Any) -> None:
        if any_rank(self._over_limit(), args.device):
            raise self.ledger.over_limit_error()
