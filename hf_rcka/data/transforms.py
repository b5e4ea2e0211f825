"""Per-image transforms: timm's data factory for training, the saved image processor for evaluation.

Training follows timm (``timm.data.create_transform``: random resized crop, flip, RandAugment or
colour jitter, random erasing), sized and normalised from the *student's* data config, read from
a timm ``pretrained_cfg`` or a transformers image processor alike.

Evaluation must measure the model as it is deployed: a user reloads the output folder with
``AutoImageProcessor`` and feeds it images. Re-implementing that preprocessing invites drift
(resizing the short side vs stretching, interpolation, crop_pct), so the eval transform *is* the
processor: for timm students the processor's own ``val_transforms`` (what
``TimmWrapperImageProcessor`` runs on every image), for transformers students the processor's call.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from PIL import Image

from ..augmentation import AugmentationArguments, check_aa_interpolation
from ..modeling.teacher_inputs import input_stats

def student_data_config(processor: Any) -> dict[str, Any]:
    """timm-style data config (``input_size``, ``interpolation``, ``mean``, ``std``) of a processor.

    Mean and std are in the [0, 1] image domain whatever the processor's rescaling (see
    ``teacher_inputs.input_stats``), which is what timm's transforms expect.
    """
    data_config = getattr(processor, "data_config", None)
    if isinstance(data_config, dict) and "input_size" in data_config:
        return dict(data_config)
    stats = input_stats(processor)
    return {"input_size": (stats.channels, *stats.size), "interpolation": stats.interpolation,
            "mean": stats.mean, "std": stats.std}


def train_transform(processor: Any, augmentation: AugmentationArguments) -> Callable[[Image.Image], torch.Tensor]:
    """timm's training transform at the student's input size and normalisation.

    ``no_aug`` gives the evaluation transform (the deployed preprocessing) rather than timm's
    no-aug resize: with augmentation off, training and deployment then see the same geometry.
    """
    if augmentation.no_aug:
        return eval_transform(processor)
    from timm.data import create_transform

    config = student_data_config(processor)
    interpolation = augmentation.train_interpolation or config["interpolation"]
    check_aa_interpolation(augmentation.aa, interpolation,
                           "the student processor's interpolation (train_interpolation: null takes it)")
    transform = create_transform(
        config["input_size"],
        is_training=True,
        hflip=augmentation.hflip,
        color_jitter=augmentation.color_jitter,
        auto_augment=augmentation.aa,
        interpolation=interpolation,
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        re_prob=augmentation.reprob,
        re_mode=augmentation.remode,
        re_count=augmentation.recount,
    )
    return _with_zero_bit_posterize(transform)


def _with_zero_bit_posterize(transform: Any) -> Any:
    """Let timm's posterize ops keep 0 bits again, as Pillow < 13 allowed.

    RandAugment's ``PosterizeIncreasing`` maps magnitude 10 to "keep 0 bits" (a black image), and
    ``rand-m9-mstd0.5`` reaches 10 on ~2% of its draws; Pillow 13's ``ImageOps.posterize`` raises
    on 0 bits, which would stop a DeiT run at a random step. The ops get a posterize that keeps
    the old behaviour; everything else in the transform is timm's.
    """
    from timm.data.auto_augment import posterize

    for policy in (getattr(t, "ops", None) or getattr(t, "policy", None) for t in transform.transforms):
        for op in _flatten(policy or ()):
            if getattr(op, "aug_fn", None) is posterize:
                op.aug_fn = _posterize
    return transform


def _flatten(ops: Any) -> list[Any]:
    """AutoAugment holds a list of sub-policies (lists of ops); RandAugment and AugMix a list of ops."""
    return [op for item in ops for op in (item if isinstance(item, (list, tuple)) else (item,))]


def _posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)  # no bit kept: black, as Pillow < 13 gave
    return ImageOps.posterize(image, bits_to_keep)


def eval_transform(processor: Any) -> Callable[[Image.Image], torch.Tensor]:
    """What the saved processor does to one RGB image at inference, as a (C, H, W) tensor."""
    val_transforms = getattr(processor, "val_transforms", None)
    if val_transforms is not None:  # TimmWrapperImageProcessor: exactly what it runs per image
        return val_transforms
    return ProcessorTransform(processor)


class ProcessorTransform:
    """Runs a transformers image processor on one image (picklable for dataloader workers)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ProcessorTransform({type(self.processor).__name__})"
