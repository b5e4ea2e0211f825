"""Decode image files and turn every PIL mode into the 8-bit RGB image it depicts.

``Image.convert("RGB")`` is right for 8-bit modes only. On 16-bit (``I;16``, ``I;16B``, ``I``) and
float (``F``) images it clips every value above 255 to white, so a 16-bit PNG of a cat becomes
an almost white square and the model sees nothing; on images with transparency it keeps the
colour stored under fully transparent pixels (often black, sometimes junk). Here:

* 16-bit modes are scaled by their range (0..65535 -> 0..255, i.e. divided by 257);
* ``I`` (32-bit integer, which is how older Pillow and some TIFFs give 16-bit data) is read as
  16-bit when its values fit in 0..65535, otherwise stretched from its min..max;
* ``F`` is read as [0, 1] when its values lie there (the usual float-image convention),
  otherwise stretched from its min..max; NaN becomes 0;
* alpha (``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``, ``P`` with a transparent colour) is
  composited over ``BACKGROUND`` (white, what viewers and browsers show behind transparency);
* ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX``, ``1``, ``L``, ``P`` use Pillow's own conversions, and
  ``LAB`` goes through Pillow's colour management (its plain ``convert`` reinterprets channels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ..errors import DataError

BACKGROUND = (255, 255, 255)
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_UINT16_MAX = 65535.0
# Errors Pillow raises for files it cannot read: unknown format, truncated data, bad headers
# (PIL's own parsers raise SyntaxError), absurd sizes, missing files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class UnreadableImage(DataError):
    """An image file that cannot be decoded; ``source`` names it, ``reason`` says why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read image {source}: {reason}")
        self.source, self.reason = source, reason


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """The 8-bit RGB image that ``image`` depicts, whatever its mode (see the module docstring).

    Args:
        image: a PIL image in any mode.
        background: colour shown through transparent pixels.

    Raises:
        DataError: a mode Pillow cannot convert to RGB.
    """
    mode = image.mode
    key = image.info.get("transparency")
    if key is not None and mode in ("1", "L", "RGB"):  # a PNG tRNS colour key: that colour is transparent
        return _composite(image.convert("RGBA"), background)
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = Image.fromarray(_to_uint8(image), mode="L")
        if isinstance(key, int) and mode != "F":
            alpha = np.where(np.asarray(image) == key, 0, 255).astype(np.uint8)
            return _composite(Image.merge("LA", [gray, Image.fromarray(alpha, mode="L")]), background)
        return gray.convert("RGB")
    if mode == "P":
        return to_rgb(image.convert("RGBA" if "transparency" in image.info else "RGB"), background)
    if mode in _ALPHA_MODES:
        return _composite(image, background)
    if mode == "LAB":
        return _lab_to_rgb(image)
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise DataError(f"cannot convert an image of PIL mode {mode!r} to RGB ({err}); convert the file first") from None


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned by its EXIF orientation, as ``datasets`` turns the files it decodes (a
    camera's portrait photo is stored sideways with a tag that says so); untagged images as they are.
    The tag is honoured whatever was done to the image: ``ImageOps.exif_transpose`` removes it, but
    Pillow's ``rotate``/``transpose`` keep it, so an image turned by hand that way turns again."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


_FLOAT_SLACK = 0.01  # how far float pixels may stray outside their range and still be read in it


def _to_uint8(image: Image.Image) -> np.ndarray:
    """One channel of 16-bit, 32-bit integer or float pixels scaled to 0..255: floats in [0, 1] or
    in [0, 255] (each give or take ``_FLOAT_SLACK``) as such, other ranges stretched to their own
    minimum and maximum."""
    values = np.asarray(image).astype(np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and low >= 0 and high <= _UINT16_MAX):
        scaled = values / 257.0
    elif image.mode == "F" and low >= -_FLOAT_SLACK and high <= 1 + _FLOAT_SLACK:
        scaled = values * 255.0  # resampling overshoots [0, 1] a little: a per-image stretch changed every pixel
    elif image.mode == "F" and low >= -_FLOAT_SLACK and high <= 255 + _FLOAT_SLACK:
        scaled = values  # 8-bit values stored as floats
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.clip(values, 0, 255)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if image.mode == "La":  # premultiplied: Pillow converts it to RGBA only through LA
        image = image.convert("LA")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    from PIL import ImageCms

    transform = ImageCms.buildTransformFromOpenProfiles(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
    return ImageCms.applyTransform(image, transform)


def describe_source(value: Any) -> str:
    """The file name of a datasets image value (``{"path", "bytes"}``), for error messages."""
    if isinstance(value, dict):
        if value.get("path"):
            return str(value["path"])
        size = len(value["bytes"]) if value.get("bytes") is not None else 0
        return f"<{size} bytes without a file name>"
    if isinstance(value, str):
        return value
    return f"<{type(value).__name__}>"


def _local_file_uri(value: dict) -> dict:
    """A ``file://`` URI (``Path.as_uri()``, Spark's paths) as the local path it names: datasets
    read ``file:///data/a.jpg`` as ``data/a.jpg`` under the working folder, and every image was
    skipped as missing."""
    path = value.get("path")
    if value.get("bytes") is not None or not isinstance(path, str) or path[:7].lower() != "file://":
        return value
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(path)
    return {**value, "path": unquote(parts.path)} if parts.netloc in ("", "localhost") else value


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _lfs_pointer(value: dict) -> str | None:
    """Why a file that is a Git LFS pointer cannot be read, or None for any other file: a dataset
    cloned without ``git lfs`` holds 130-byte text files under its images' names, and every image
    was skipped as 'cannot identify image file', the run then stopping at its first batch."""
    head = value.get("bytes")
    if head is None and isinstance(value.get("path"), str):
        try:
            with open(value["path"], "rb") as handle:
                head = handle.read(len(_LFS_POINTER))
        except OSError:
            return None
    if not head or bytes(head[:len(_LFS_POINTER)]) != _LFS_POINTER:
        return None
    return ("the file is a Git LFS pointer, not the image: the data was cloned without its LFS files "
            "(run 'git lfs pull' in its repository)")


def _decode_reason(err: Exception) -> str:
    """Why Pillow could not decode a file, with the way out where there is one: an image over
    Pillow's pixel limit (a scan or a satellite tile) is refused as a possible decompression bomb,
    and training, which resizes it to a few hundred pixels anyway, reads it once it is downscaled."""
    reason = f"{type(err).__name__}: {err}"
    if isinstance(err, Image.DecompressionBombError):
        reason += " (downscale the file, e.g. to a few thousand pixels a side, and run again)"
    return reason


def decode_image(value: Any) -> Image.Image:
    """Decode one datasets image value (``{"path", "bytes"}``, a path, bytes or a PIL image) to RGB.

    Decoding happens here rather than inside ``datasets`` so that a bad file raises an error
    that names it (datasets' own says ``image file is truncated`` and nothing else). A column's
    own ``Image(mode=...)`` is not applied: datasets would run Pillow's plain ``convert(mode)``
    first, which clips 16-bit images to white and turns transparency black, before ``to_rgb``
    could convert them for what they depict.

    Args:
        value: the raw value of an image column read with ``datasets.Image(decode=False)``.

    Raises:
        UnreadableImage: the file cannot be read as an RGB image; the message names it.
    """
    if isinstance(value, Image.Image):  # a caller's own dataset: turned upright as a decoded file is
        return to_rgb(_upright(value))
    if value is None or not isinstance(value, (dict, str, bytes, bytearray)):
        # the data's loading checks refuse nulls up front; a caller's own dataset may still hold them
        raise UnreadableImage(describe_source(value), "the row holds no image file, bytes or PIL image")
    import datasets

    if isinstance(value, str):  # a column of file paths (a CSV or JSON dataset), not an Image feature
        value = {"path": value, "bytes": None}
    elif isinstance(value, (bytes, bytearray)):  # a column of encoded files
        value = {"path": None, "bytes": bytes(value)}
    value = _local_file_uri(value)
    try:
        image = datasets.Image().decode_example(value)
    except DECODE_ERRORS as err:
        raise UnreadableImage(describe_source(value), _lfs_pointer(value) or _decode_reason(err)) from None
    try:
        return to_rgb(image)
    except DataError as err:
        raise UnreadableImage(describe_source(value), str(err)) from None
