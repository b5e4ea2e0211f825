"""Checks that need the loaded model: run right after loading, before data and training."""

from __future__ import annotations

from typing import Any

from ..errors import ModelError


def probe_student(student: Any, stats: Any, image_size: int | None) -> None:
    """One forward pass of a single blank image at the training resolution.

    Catches what no config can tell before the first step (e.g. a timm ViT with a fixed
    ``img_size`` asked for another ``image_size``), for the cost of one image.
    """
    import torch

    height, width = stats.size
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            student(pixel_values=torch.zeros(1, stats.channels, height, width))
    except (RuntimeError, ValueError, AssertionError) as err:
        key = "image_size" if image_size is not None else "model_name_or_path"
        raise ModelError(
            f"{key}: the student cannot take {height}x{width} inputs ({' '.join(str(err).split())}). "
            "Set an image_size the architecture accepts, or build the student for it (student_config_overrides: "
            "image_size for transformers ViTs, img_size for timm)"
        ) from err
    finally:
        student.train(was_training)
