"""How many samples each batch must hold: relations over the batch need 3, BatchNorm more than 1.

A centred CKA over the samples of a batch is a constant below 3 samples (2 for an uncentred
linear one, see ``functional.cka.min_cka_items``): with n = 2 the centred Gram has rank 1 and its CKA with any
other is exactly 1. Such a term distils nothing and reads as a perfect match in the logs, so every
batch a relational loss sees is checked: the training batch before training, again whenever
``auto_find_batch_size`` lowers it, the evaluation batch, and each epoch's short last batch.
"""

from __future__ import annotations

import math

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..data.sampler import images_per_process
from ..errors import DataError, RecipeError
from ..modeling.parallel import has_running_stats

logger = logging.getLogger(__name__)


def _rows(loss: Any, batch: int, processes: int) -> int:
    """The samples one relation of ``loss`` holds: the process's batch, or every process's with ``gather``."""
    return batch * (processes if getattr(loss, "gather", False) else 1)


def too_few_rows(losses: Mapping[str, Any], batch: int, processes: int) -> dict[str, int]:
    """The relational losses whose relation over ``batch`` samples a process would be a constant,
    with the batch each needs."""
    short = {}
    for name, loss in losses.items():
        needed = getattr(loss, "min_relation_rows", 0)
        if _rows(loss, batch, processes) < needed:
            short[name] = needed
    return short


def _split_over(args: Any) -> int:
    """How many processes accelerate's ``split_batches`` splits each per-device batch over (1 without it)."""
    accelerator = getattr(args, "accelerator_config", None)
    return max(1, getattr(args, "world_size", 1)) if getattr(accelerator, "split_batches", False) else 1


def rows_per_process(args: Any, batch: int) -> int:
    """The rows of a ``per_device_*_batch_size`` batch that one process holds: all of them, or its
    share under ``split_batches``."""
    return batch // _split_over(args)


def check_relation_rows(losses: Mapping[str, Any], args: Any, batch: int | None = None,
                        setting: str = "per_device_train_batch_size", cause: str = "") -> None:
    """Refuse a batch of ``setting`` (training's by default) too small for a relational loss.

    Gradient accumulation does not help: each micro-batch is its own relation.
    """
    batch = rows_per_process(args, getattr(args, setting) if batch is None else batch)
    processes = max(1, getattr(args, "world_size", 1))
    for name, needed in too_few_rows(losses, batch, processes).items():
        gather = " or gather: true across processes" if processes > 1 and not getattr(losses[name], "gather", False) else ""
        rows = _rows(losses[name], batch, processes)
        parts = _split_over(args)
        # under split_batches, a multiple of the processes whose share (or, gathered, all of it) holds `needed`
        gathered = getattr(losses[name], "gather", False)
        least = needed if parts == 1 else (math.ceil(needed / parts) * parts if gathered else needed * parts)
        share = f" (split_batches gives each of the {parts} processes 1/{parts} of it)" if parts > 1 else ""
        raise RecipeError(
            f"{name} relates the samples of a batch, and a relation over {rows} sample(s) is a constant with no "
            f"gradient: {'its evaluation loss would measure nothing' if 'eval' in setting else 'nothing would be distilled'}"
            f"{cause}. Use {setting} >= {least}{share}{gather}")


def mixing_setting(args: Any) -> str:
    """How a refusal or warning names the training rows of one process that Mixup/CutMix mix."""
    return ("per_device_train_batch_size" if _split_over(args) == 1 else
            "each process's share of per_device_train_batch_size (split_batches)")


def check_mixing_rows(mixes: bool, args: Any, batch: int | None = None, cause: str = "") -> int:
    """Refuse Mixup/CutMix (``mixes``) on a training batch of one image per process, which mixes
    nothing: timm's Mixup pairs image i with image B-1-i. Returns the rows one process mixes.

    ``batch``: the per-process batch when ``auto_find_batch_size`` lowered it; ``cause`` says so.
    """
    size = mixing_setting(args)
    rows = rows_per_process(args, args.per_device_train_batch_size if batch is None else batch)
    if mixes and rows < 2:
        raise RecipeError(f"mixup/cutmix mix the images of one process's batch, and {size} is {rows}{cause}: a batch "
                          "of one mixes nothing. Use a batch of at least 2 (even), or turn mixup and cutmix off")
    return rows


def evaluates(args: Any) -> bool:
    """Whether a run evaluates: during training (``eval_strategy``, ``eval_on_start``) or at its end
    (``do_eval``, the command line's final evaluation)."""
    return args.eval_strategy != "no" or bool(args.do_eval) or bool(getattr(args, "eval_on_start", False))


def check_evaluation_rows(losses: Mapping[str, Any], args: Any, num_images: int | None = None) -> None:
    """The evaluation batch, as :func:`check_relation_rows` checks the training batch; and an
    evaluation set of ``num_images`` too small for any relation, whose relational terms no
    evaluation could report (``metric_for_best_model`` naming one failed after the first)."""
    check_relation_rows(losses, args, setting="per_device_eval_batch_size")
    if num_images is None:
        return
    for name, needed in too_few_rows(losses, num_images, 1).items():
        raise RecipeError(f"the evaluation set has {num_images} image(s), and {name} relates the samples of a batch: "
                          f"a relation over fewer than {needed} is a constant, so its evaluation loss would measure "
                          f"nothing. Evaluate at least {needed} images")


def check_training_batches(num_images: int, args: Any, aug_repeats: int, student: torch.nn.Module,
                           losses: Mapping[str, Any], batch_size: int | None = None,
                           requested_drop_last: bool | None = None, said: set | None = None) -> None:
    """Every epoch must have a training step, and its last step enough images for BatchNorm and
    for the relations over the batch.

    With ``dataloader_drop_last`` a split smaller than one batch yields no step (under repeated
    augmentation each process sees the dataset rounded down to a multiple of 256, divided by the
    processes: 1257 images gave 1024, and a batch of 1100 trained nothing and exited 0). Without it,
    an epoch whose last batch holds one image failed after a whole epoch with a BatchNorm student,
    and a last batch of 1 or 2 images made every relational term of that step a constant (the
    logged terms jumped to their maximum). Dropping that batch, a few images an epoch, is what
    ``dataloader_drop_last`` does, so it is set. ``batch_size``: the per-process batch when
    ``auto_find_batch_size`` lowered it (``args.train_batch_size`` otherwise);
    ``requested_drop_last``: the run's own ``dataloader_drop_last``, which each check starts from
    (a batch dropped at one batch size may be whole at the next). ``said``: the lines said so far,
    which are not said again (the trainer checks before training and again as it builds the loader,
    and the drop was said twice in every run that had one).
    """
    if requested_drop_last is not None:
        args.dataloader_drop_last = requested_drop_last
    _check_last_batch(num_images, args, aug_repeats, student, losses, batch_size, said)
    _check_accumulation(num_images, args, aug_repeats, batch_size)


def _epoch_images(num_images: int, args: Any, aug_repeats: int, batch_size: int | None) -> tuple[int, int, int | None]:
    """The batch each process reads, the images it reads them from in an epoch, and those images
    when repeated augmentation's sampler deals them (None: Trainer's sampler)."""
    processes = max(1, args.world_size)
    local = batch_size or args.train_batch_size
    per_process = images_per_process(num_images, aug_repeats, processes)
    if per_process is None:  # Trainer's sampler: batches dealt to the processes, the last ones padded
        return local * processes // _split_over(args), num_images, None  # split_batches: one batch over them
    return local, per_process, per_process


def _check_accumulation(num_images: int, args: Any, aug_repeats: int, batch_size: int | None) -> None:
    """Trainer ends an accumulation at the end of each epoch: with fewer batches an epoch than
    ``gradient_accumulation_steps``, every optimizer step summed fewer images than the global batch
    the card, the recorded recipe and ``lr_base``'s scaling counted (3200 said, 1257 summed)."""
    accumulation = getattr(args, "gradient_accumulation_steps", 1)
    batch, seen, _ = _epoch_images(num_images, args, aug_repeats, batch_size)
    batches = seen // batch if args.dataloader_drop_last else -(-seen // batch)
    if 0 < batches < accumulation:
        raise RecipeError(f"gradient_accumulation_steps is {accumulation}, and an epoch holds "
                          f"{batches} training batch(es) of {batch} images: Trainer ends each accumulation with the "
                          f"epoch, so no optimizer step would sum the global batch it counts. Set "
                          f"gradient_accumulation_steps to {batches} or less, or lower per_device_train_batch_size")


def _check_last_batch(num_images: int, args: Any, aug_repeats: int, student: torch.nn.Module,
                      losses: Mapping[str, Any], batch_size: int | None, said: set | None = None) -> None:
    processes = max(1, args.world_size)
    local = batch_size or args.train_batch_size
    batch, seen, per_process = _epoch_images(num_images, args, aug_repeats, batch_size)
    if args.dataloader_drop_last and seen < batch:
        where = (f"{num_images} images" if per_process is None else
                 f"{num_images} images, of which repeated augmentation gives "
                 f"{'its one process' if processes == 1 else f'each of {processes} processes'} {per_process}")
        raise DataError(f"the training split has {where}, fewer than one batch ({batch}), and dataloader_drop_last: "
                        "true drops it: lower per_device_train_batch_size or set dataloader_drop_last: false")
    if args.dataloader_drop_last or (per_process is None and processes > 1):  # padded to whole batches
        return
    last = seen % local
    if not last:
        return
    reason = None
    if last == 1 and has_running_stats(student):
        reason = "the student's BatchNorm cannot train on 1 image"
    short = too_few_rows(losses, last, processes)
    if short:
        name, needed = next(iter(short.items()))
        reason = f"too few for {name}'s relation over the batch (it needs {needed})"
    if reason and seen < local:  # dropping it would train nothing, and the run would end as if it had
        raise DataError(f"the training split gives each process {seen} image(s), one batch, and that is {reason}: "
                        "add images, or train without what needs more")
    if reason:
        if said is None or (last, reason) not in said:
            logger.info("data: each epoch's last training batch would hold %d image(s), %s: it is dropped "
                        "(dataloader_drop_last)", last, reason)
        if said is not None:
            said.add((last, reason))
        args.dataloader_drop_last = True


def check_unsized_training(aug_repeats: int, student: torch.nn.Module, losses: Mapping[str, Any],
                           accumulation: int = 1) -> None:
    """Training data without a length (a ``datasets.IterableDataset``, a stream): what
    ``check_training_batches`` cannot check is refused or said. ``accumulation``: the run's
    ``gradient_accumulation_steps``, which a pass's batches must be a multiple of (a pass that ends
    inside one is refused at its end, perhaps hours in: said as training starts).

    Raises:
        RecipeError: for ``aug_repeats``, whose sampler draws an order of known images: an
            iterable dataset has no sampler, and the repeats were silently not made.
    """
    if aug_repeats:
        raise RecipeError(f"aug_repeats: {aug_repeats} repeats images drawn by a sampler, and the training data has "
                          "no length (an iterable dataset has no sampler): use a map-style dataset, or aug_repeats: 0")
    needs = {name: loss.min_relation_rows for name, loss in losses.items() if getattr(loss, "min_relation_rows", 0)}
    batch_norm = has_running_stats(student)
    if batch_norm or needs:
        why = ("a batch of 1 fails a BatchNorm student" if batch_norm else
               f"a batch under {max(needs.values())} images leaves {', '.join(needs)} constant for that step")
        logger.warning("data: the training data has no length, so the size of each pass's last batch is not checked "
                       "(and dataloader_drop_last does not apply to it): %s. Give the stream a multiple of the global "
                       "batch, or use a map-style dataset", why)
    if accumulation > 1:
        logger.warning("data: the training data has no length, and gradient_accumulation_steps is %d: each pass must hold "
                       "a multiple of %d batches per process (Trainer ends no accumulation with a stream's pass), or the "
                       "run stops at the end of the first pass that does not", accumulation, accumulation)


__all__ = ["check_evaluation_rows", "check_mixing_rows", "check_relation_rows", "check_training_batches",
           "check_unsized_training", "evaluates", "mixing_setting", "rows_per_process", "too_few_rows"]
