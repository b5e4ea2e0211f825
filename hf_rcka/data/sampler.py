"""Repeated augmentation (Hoffer et al. 2020; DeiT's ``RASampler``) for the Trainer's training loader.

Each epoch draws every image ``aug_repeats`` times, each copy augmented on its own, and spreads the
copies of one image over the data-parallel ranks (with more repeats than ranks, some copies share a
rank, as in DeiT and timm); each rank still sees only about
``len(dataset) / world_size`` images per epoch (rounded down to a multiple of 256 overall, as in
DeiT), so an epoch costs what it did without repeats. timm's ``RepeatAugSampler`` implements
DeiT's sampler; this module seeds it and keeps accelerate from sharding its output a second time.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from accelerate.data_loader import BatchSamplerShard
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from ..errors import RecipeError

logger = logging.getLogger(__name__)


class RepeatedAugmentationSampler(RepeatAugSampler):
    """timm's ``RepeatAugSampler`` whose shuffle depends on ``seed`` as well as the epoch.

    timm (like DeiT) seeds each epoch's permutation with the epoch alone, so runs with different
    seeds would see the same order; here it is ``seed + epoch``, as in torch's DistributedSampler.
    """

    def __init__(self, dataset: Any, num_repeats: int, num_replicas: int, rank: int, seed: int = 0) -> None:
        # DeiT keeps a multiple of 256 images per epoch; timm falls back to all of them when the
        # dataset has fewer than 256 (small datasets, tests).
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         num_repeats=num_repeats, selected_round=256)
        self.seed = int(seed)
        self.epoch = self.seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.seed + int(epoch)


class SamplerEpoch(TrainerCallback):
    """Gives the repeated-augmentation sampler each epoch's number as the epoch begins.

    Trainer and accelerate pass the epoch down through the loader's wrappers, but after a resume
    in several processes the loader is wrapped once more (to skip the batches already trained)
    and ``set_epoch`` no longer reaches this sampler: the rest of the interrupted epoch was drawn
    in epoch 0's order. A resumed epoch's fractional ``state.epoch`` rounds down to its number.
    """

    def __init__(self) -> None:
        self.sampler: RepeatedAugmentationSampler | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: D102
        if self.sampler is not None:
            self.sampler.set_epoch(math.floor(state.epoch + 1e-6))


def images_per_process(num_images: int, aug_repeats: int, world_size: int) -> int | None:
    """Training images one process sees per epoch under repeated augmentation (the dataset rounded
    down to a multiple of 256 first, split over the processes); None without it."""
    if not aug_repeats:
        return None
    return len(RepeatedAugmentationSampler(range(num_images), aug_repeats, num_replicas=world_size, rank=0))


def keep_rank_sharding(dataloader: DataLoader) -> DataLoader:
    """Make accelerate's batch sharding a pass-through for a sampler that already shards by rank.

    ``accelerator.prepare`` wraps every map-style loader in ``BatchSamplerShard``, which deals
    batch i to rank ``i % world_size``; on top of a rank-aware sampler that would drop
    ``(world_size - 1) / world_size`` of each rank's images. transformers does the same for its
    own rank-aware ``BatchRebalanceSampler``. ``even_batches`` goes too: it would pad the last
    batch with repeats of the first images, and every rank already gets the same number of images.
    """
    shard = getattr(dataloader, "batch_sampler", None)
    inner = getattr(shard, "batch_sampler", None)
    if isinstance(shard, BatchSamplerShard) and isinstance(getattr(inner, "sampler", None), RepeatedAugmentationSampler):
        shard.num_processes = 1
        shard.process_index = 0
        shard.even_batches = False
    return dataloader


def check_repeats_unsplit(aug_repeats: int, args: Any) -> None:
    """Repeated augmentation shares the images out by rank itself (``keep_rank_sharding``), so
    accelerate's ``split_batches`` cannot split its batches: each process trained a whole
    per-device batch, twice the global batch the run reported and scaled ``lr_base`` for.

    Raises:
        RecipeError: ``aug_repeats`` with ``split_batches`` under data parallelism.
    """
    if aug_repeats and getattr(args.accelerator_config, "split_batches", False) and max(1, args.world_size) > 1:
        raise RecipeError("aug_repeats with accelerator_config split_batches: the repeated-augmentation sampler deals each "
                          "process whole batches of its own images, so they are not split, and each process would train "
                          "per_device_train_batch_size images, not its share. Drop split_batches (give the per-process "
                          "batch as per_device_train_batch_size), or aug_repeats")


def check_identical_repeats(augmentation: Any, resuming: bool) -> None:
    """``aug_repeats`` with ``no_aug`` and nothing mixing the copies trains on identical pixels, each
    image several times in the same batches and relations. Refused for a new run; a resumed one
    (recorded so, and a resume may not change its repeats) is warned.

    Raises:
        RecipeError: for a run that is not resumed.
    """
    repeats = getattr(augmentation, "aug_repeats", 0)
    mixing = getattr(augmentation, "mixup_active", False) and getattr(augmentation, "mixup_prob", 1.0) > 0
    if not (repeats and getattr(augmentation, "no_aug", False)) or mixing:
        return
    message = (f"aug_repeats {repeats} with no_aug: true: each image comes {repeats} times as identical pixels "
               "(repeated augmentation counts on each copy's own augmentation), into the same batches and relations")
    if resuming:
        logger.warning("%s; this resumed run keeps its recorded repeats", message)
        return
    raise RecipeError(f"{message}: drop aug_repeats, or no_aug")


def check_iterable_dispatch(args: Any, datasets: Any) -> None:
    """An iterable dataset under data parallelism is read by the main process and its batches
    dispatched (accelerate's default for one). With ``dispatch_batches: false`` every process reads
    the stream itself: the shards were dealt unevenly (some images trained five times as often as
    others) and evaluation counted the last batch's repeats, or failed at the gather.

    Raises:
        RecipeError: ``dispatch_batches: false`` with an iterable training or evaluation set.
    """
    if getattr(args.accelerator_config, "dispatch_batches", None) is not False or max(1, args.world_size) == 1:
        return
    if any(data is not None and not hasattr(data, "__len__") for data in datasets):
        raise RecipeError("accelerator_config dispatch_batches: false with an iterable dataset: each process would read "
                          "the stream on its own, and the shards are dealt unevenly and the evaluation's repeats counted. "
                          "Drop dispatch_batches (the main process then reads the stream and deals its batches)")
