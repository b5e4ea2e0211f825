"""Image sizes: a recipe's ``image_size``, and the output size a transformers image processor fixes.

Reading a processor's output size and changing it are the same question, which setting decides
the size: the centre crop, a ConvNeXt-style shortest edge with ``crop_pct``, or a plain
height x width resize. ``processor_output_size`` answers it once, for resizing a processor
(``processors.resize_image_processor``) and for reading what a teacher expects
(``modeling.teacher_inputs.input_stats``) alike, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


def as_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``image_size`` as (height, width): an int is a square.

    Raises:
        ValueError: neither an int nor a pair.
    """
    if isinstance(size, int):
        return size, size
    if len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"an image size must be an int or (height, width), got {size!r}")


# transformers' Swins whose windows are fixed tables: a stage grid smaller than window_size shrinks
# the window but not its relative-position-bias table, and attention fails on the mismatch (Swinv2's
# biases come from a small network over coordinates and take any window)
_FIXED_WINDOW_TYPES = ("swin", "donut-swin")


def window_problem(config: dict[str, Any], height: int, width: int) -> str | None:
    """Why a transformers Swin built from ``config`` (a config's ``to_dict()``) cannot take
    ``height`` x ``width`` images, with the fix, or None. Its error ("The size of tensor a (16)
    must match the size of tensor b (49)") names neither the window nor the stage."""
    window, patch, depths = (config.get(key) for key in ("window_size", "patch_size", "depths"))
    if config.get("model_type") not in _FIXED_WINDOW_TYPES or not (
            isinstance(window, int) and isinstance(patch, int) and isinstance(depths, (list, tuple)) and depths):
        return None
    grid = min(_last_grid(height, patch, len(depths)), _last_grid(width, patch, len(depths)))
    if grid >= window:
        return None
    return (f"at {height}x{width} the student's last stage has a {grid}x{grid} grid, smaller than its window_size "
            f"{window}, which transformers' Swin attention fails on: set student_config_overrides window_size: "
            f"{max(grid, 1)}, or a larger image_size")


def _last_grid(side: int, patch: int, stages: int) -> int:
    """A Swin's last stage's grid along a ``side`` of pixels: its patch embedding and each patch
    merging pad a remainder (a 200 px side is 50, 25, 13, 7 patches, not 200 // 32 = 6)."""
    grid = -(-side // patch)
    for _ in range(stages - 1):
        grid = -(-grid // 2)
    return grid


@dataclass(frozen=True)
class OutputSize:
    """Which setting of an image processor fixes its output size, and that size.

    Attributes:
        rule: ``"crop_size"`` (resize, then centre-crop to ``crop_size``), ``"shortest_edge"``
            (ConvNeXt style: resize the shortest edge to ``edge / crop_pct`` and crop a square of
            side ``edge``, or warp to it) or ``"size"`` (a plain height x width resize).
        height: output height in pixels.
        width: output width in pixels.
    """

    rule: Literal["crop_size", "shortest_edge", "size"]
    height: int
    width: int

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width


def processor_output_size(processor: Any, fix: str = "") -> OutputSize:
    """The fixed output size of a transformers image processor and the setting that fixes it.

    Args:
        processor: a transformers image processor (``size``, ``crop_size``, ``do_center_crop``,
            ``crop_pct`` are read as attributes).
        fix: what the caller suggests instead, appended to the error.

    Raises:
        ValueError: the output size depends on each image's aspect ratio (e.g. a shortest-edge
            resize with no crop).
    """
    size = getattr(processor, "size", None) or {}
    crop = getattr(processor, "crop_size", None) or {}
    if getattr(processor, "do_center_crop", False) and crop.get("height"):
        return OutputSize("crop_size", int(crop["height"]), int(crop["width"]))
    if size.get("height") and size.get("width"):
        return OutputSize("size", int(size["height"]), int(size["width"]))
    if getattr(processor, "crop_pct", None) and size.get("shortest_edge"):
        edge = int(size["shortest_edge"])
        return OutputSize("shortest_edge", edge, edge)
    raise ValueError(
        f"cannot tell the output size of {type(processor).__name__} (size={_shown(size)}, "
        f"crop_size={_shown(crop)}): it depends on each image's aspect ratio. Use a processor with a "
        f"fixed output size (height/width or a centre crop){fix}."
    )


def _shown(size: Any) -> dict[str, Any]:
    """A size setting without the fields it leaves unset (``SizeDict`` lists all of them)."""
    return {k: v for k, v in dict(size).items() if v is not None}
