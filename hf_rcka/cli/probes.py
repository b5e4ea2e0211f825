"""Checks that need the loaded model: run right after loading, before data and training."""

from __future__ import annotations

from typing import Any

from ..errors import ModelError
from ..models.image_sizes import window_problem


def probe_student(student: Any, stats: Any, image_size: int | None) -> None:
    """One forward pass of a single blank image at the training resolution.

    Catches what no config can tell before the first step (e.g. a timm ViT with a fixed
    ``img_size`` asked for another ``image_size``), for the cost of one image.
    """
    import torch

    height, width = stats.size
    if stats.channels != 3:  # what every image is decoded to (data.images): the first step failed on it
        raise ModelError(f"the student reads {stats.channels}-channel images (its processor's mean has "
                         f"{stats.channels} values), and every image is decoded to RGB: build it for 3 channels "
                         "(leave out in_chans, or its pretrained_cfg_overlay input_size)")
    _check_takes_images(student)
    _check_patch_grid(student, height, width, "image_size" if image_size is not None else "model_name_or_path")
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            student(pixel_values=torch.zeros(1, stats.channels, height, width))
    except (RuntimeError, ValueError, AssertionError) as err:
        key = "image_size" if image_size is not None else "model_name_or_path"
        config = getattr(student, "config", None)
        problem = window_problem(config.to_dict(), height, width) if hasattr(config, "to_dict") else None
        if problem:  # a Hub Swin, whose config no check before loading read
            raise ModelError(f"{key}: {problem}") from err
        raise ModelError(
            f"{key}: the student cannot take {height}x{width} inputs ({' '.join(str(err).split())}). "
            "Set an image_size the architecture accepts, or build the student for it (student_config_overrides: "
            "image_size for transformers ViTs, img_size for timm; a pretrained timm ViT keeps its weights with "
            "dynamic_img_size: true, which resamples its position embeddings)"
        ) from err
    except (AttributeError, TypeError, IndexError, KeyError) as err:  # an architecture built inconsistent
        raise ModelError(
            f"model_name_or_path: the student as built fails on a forward pass ({type(err).__name__}: "
            f"{' '.join(str(err).split())}): its student_config_overrides, if any, make an architecture that "
            "does not run (timm's resnet10t with three stage widths for its four stages, say)"
        ) from err
    finally:
        student.train(was_training)


def _check_takes_images(student: Any) -> None:
    """A classifier whose forward has no ``pixel_values`` (ImageGPT reads pixel-cluster token ids)
    swallows the images in ``**kwargs`` and fails for want of its own input; the image size is
    not at fault, so the message must not send the user after one."""
    import inspect

    if "pixel_values" in inspect.signature(student.forward).parameters:
        return
    config = getattr(student, "config", None)
    model_type = getattr(config, "model_type", None)
    name = f"{type(student).__name__} ({model_type})" if model_type else type(student).__name__
    raise ModelError(
        f"model_name_or_path: {name} takes no images (its forward has no pixel_values argument) and is not "
        "supported as an image classifier; choose an image model (ViT, DeiT, Swin, ConvNeXt, ResNet, a timm model...)"
    )


def _check_patch_grid(student: Any, height: int, width: int, key: str) -> None:
    """A patch embedding (the model's first convolution, when its stride equals its kernel: a ViT's,
    a ConvNeXt's or a Swin's stem) drops the rows and columns past the last whole patch without an
    error: a 40 px image in 16 px patches trains and evaluates on its top-left 32 x 32 px."""
    from torch import nn

    conv = next((m for m in student.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.kernel_size != conv.stride or conv.stride == (1, 1):
        return
    rows, cols = conv.stride
    if height % rows or width % cols:
        # at least one patch: a patch larger than the image suggested "e.g. 0x0"
        fit = f"{max(height // rows, 1) * rows}x{max(width // cols, 1) * cols}"
        raise ModelError(
            f"{key}: {height}x{width} inputs are not whole {rows}x{cols} patches, so the student's patch embedding would "
            f"ignore the last {height % rows} rows and {width % cols} columns of every image: use a size made of whole "
            f"patches (e.g. {fit}) for image_size and the student's own image size (student_config_overrides: "
            "image_size for transformers ViTs, img_size for timm)"
        )
