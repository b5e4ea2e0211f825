"""Give the teacher its own input normalisation and resolution.

The data pipeline prepares images for the *student* (its processor's mean, std and size). A
teacher trained with other statistics (HF ViT uses 0.5/0.5, timm ResNets ImageNet mean/std) or at
another resolution still returns confident logits on the student's tensor, so nothing fails and
the student quietly learns from garbage, with no error anywhere. ``TeacherInputTransform``
maps the student's tensor to what the teacher's own processor would have produced: undo the
student's normalisation, resize, apply the teacher's normalisation.

All statistics here are in the [0, 1] image domain (raw uint8 divided by 255): a processor's
``rescale_factor`` or ``do_rescale=False`` is folded into its mean and std, so two processors
compare correctly whatever their rescaling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..models.image_sizes import OutputSize, processor_output_size

logger = logging.getLogger(__name__)

_UINT8_MAX = 255.0
_MODES = ("bilinear", "bicubic", "nearest")
# PIL resampling filter ids (PIL.Image.Resampling and transformers' PILImageResampling agree)
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class InputStats:
    """How a model expects its ``pixel_values``: ``(image01 - mean) / std`` at ``size``.

    Attributes:
        mean: per-channel mean in the [0, 1] image domain.
        std: per-channel std in the [0, 1] image domain (all > 0).
        size: (height, width) of the model's input.
        interpolation: the resize filter of the model's processor, by timm's name (``"bilinear"``,
            ``"bicubic"``, ``"nearest"``, ``"lanczos"``, ``"box"``, ``"hamming"``).
        view: which part of an image the processor keeps: ``("crop", f)``, a centre crop of the
            fraction ``f`` of the short side, or ``("squash", f)``, the centre fraction ``f`` of the
            image squashed to the input's shape, or ``("border", f)``, the whole image fitted inside
            the input with borders (timm's letterbox); None when unknown (see ``describe_view``).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int]
    interpolation: str = "bilinear"
    view: tuple[str, float] | None = field(default=None, compare=False)  # equal stats are equal inputs

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel each")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0 in every channel, got {self.std}")
        if len(self.size) != 2 or any(s < 1 for s in self.size):
            raise ValueError(f"size must be (height, width) with both >= 1, got {self.size}")

    @property
    def channels(self) -> int:
        return len(self.mean)


def input_stats(processor: Any) -> InputStats:
    """Read the normalisation and output size of an image processor.

    Supports transformers' image processors (``image_mean``, ``image_std``, ``size`` /
    ``crop_size``, ``rescale_factor``) and ``TimmWrapperImageProcessor`` (timm's data config).

    Raises:
        ValueError: the processor's output size depends on the image (e.g. resize of the shortest
            edge with no crop), or it has no normalisation attributes; build ``InputStats`` by hand.
    """
    data_config = getattr(processor, "data_config", None)
    if isinstance(data_config, dict) and "input_size" in data_config:
        return _timm_stats(data_config)
    if hasattr(processor, "image_mean") or hasattr(processor, "do_normalize"):
        return _hf_stats(processor)
    raise ValueError(
        f"cannot read input statistics from {type(processor).__name__}: it is neither a transformers "
        "image processor nor a TimmWrapperImageProcessor; build InputStats(mean, std, size) yourself"
    )


def _timm_stats(data_config: dict) -> InputStats:
    _, height, width = data_config["input_size"]
    from timm.data import DEFAULT_CROP_PCT  # what timm's eval transform crops when the config says nothing

    crop_pct, mode = float(data_config.get("crop_pct") or DEFAULT_CROP_PCT), data_config.get("crop_mode", "center")
    # timm's "border" letterboxes: the whole image fitted inside the input, the rest filled
    view = {"center": ("crop", crop_pct), "squash": ("squash", crop_pct), "border": ("border", crop_pct)}.get(mode)
    return InputStats(tuple(data_config["mean"]), tuple(data_config["std"]), (height, width),
                      data_config.get("interpolation", "bilinear"), view)


def describe_view(view: tuple[str, float]) -> str:
    """``InputStats.view`` in words."""
    mode, fraction = view
    if mode == "crop":
        return f"a centre crop of {fraction:.1%} of the short side"
    if mode == "border":
        return "the whole image fitted inside the input, with borders"
    return ("the whole image squashed to the input's shape" if round(fraction, 3) == 1.0
            else f"the centre {fraction:.1%} of the image squashed to the input's shape")


def _hf_view(processor: Any, output: OutputSize) -> tuple[str, float] | None:
    """Which part of an image a transformers processor keeps (see ``InputStats.view``)."""
    size = dict(getattr(processor, "size", None) or {})
    if not getattr(processor, "do_resize", True):
        return None
    if output.rule == "size":
        return "squash", 1.0
    if output.rule == "shortest_edge":  # ConvNeXt: below 384 the short side is resized and cropped, else warped
        crop_pct = float(processor.crop_pct)
        return ("crop", crop_pct) if size["shortest_edge"] < 384 else ("squash", 1.0)
    if size.get("shortest_edge"):  # PoolFormer's resizes the edge to edge / crop_pct first
        return "crop", output.height * float(getattr(processor, "crop_pct", None) or 1.0) / size["shortest_edge"]
    if size.get("height"):
        return "squash", output.height / size["height"]
    return None


def _hf_stats(processor: Any) -> InputStats:
    # transformers also takes one number for every channel (image_mean=0.5)
    image_mean, image_std = (_per_channel(getattr(processor, key, None)) for key in ("image_mean", "image_std"))
    channels = len(image_mean or (0.0, 0.0, 0.0))
    mean, std = (0.0,) * channels, (1.0,) * channels
    if getattr(processor, "do_normalize", True):
        mean, std = image_mean, image_std
    # EfficientNet's: raw * r - 1 (to [-1, 1]) before normalising, and its include_top divides by std again
    offset = 1.0 if getattr(processor, "rescale_offset", False) else 0.0
    if getattr(processor, "include_top", False) and image_std:
        std = tuple(s * t for s, t in zip(std, image_std))
    # pixel = (raw * r - offset - mean) / std with raw = 255 * image01  ->  stats / (255 r) in image01 units
    rescale = processor.rescale_factor if getattr(processor, "do_rescale", True) else 1.0
    unit = _UINT8_MAX * float(rescale)
    output = processor_output_size(processor, fix=(
        ": give the model folder a preprocessor_config.json with size {height, width} or do_center_crop and "
        "crop_size (or, from Python, build InputStats by hand)"))
    stats = InputStats(tuple((offset + m) / unit for m in mean), tuple(s / unit for s in std), output.hw,
                       _filter_name(getattr(processor, "resample", None)), _hf_view(processor, output))
    _check_reproduced(processor, stats)
    return stats


_PROBE_COLOUR = (200, 100, 10)  # distinct channels, so that a channel flip shows


def _check_reproduced(processor: Any, stats: InputStats) -> None:
    """The processor's own output on one uniform image is what ``stats`` describe.

    hf_rcka's transforms and the teacher's inputs reproduce a processor from its mean, std, size
    and filter. A processor that does more trained the model on other pixels than its saved
    processor feeds it in deployment, silently: MobileViT's flips the channels to BGR, Perceiver's
    crops before it resizes. Such a processor is refused; one this check cannot call is trusted.

    Raises:
        ModelError: the output differs from what ``stats`` predict.
    """
    from PIL import Image

    try:
        output = processor(images=Image.new("RGB", (37, 29), _PROBE_COLOUR), return_tensors="pt")["pixel_values"][0]
    except Exception as error:  # noqa: BLE001 - an exotic processor: its settings are taken as they read
        logger.debug("image processor %s not checked against its settings: %s", type(processor).__name__, error)
        return
    name = type(processor).__name__
    if tuple(output.shape[-2:]) != stats.size:
        raise ModelError(f"image processor {name} outputs {output.shape[-2]}x{output.shape[-1]} images, not the "
                         f"{stats.size[0]}x{stats.size[1]} its size settings describe, which hf_rcka's transforms "
                         "would reproduce: use a processor that resizes (or crops) straight to its output size")
    if output.shape[0] != stats.channels:
        return
    centre = output[:, output.shape[-2] // 2, output.shape[-1] // 2].double()
    predicted = torch.tensor([(c / _UINT8_MAX - m) / s for c, m, s in zip(_PROBE_COLOUR, stats.mean, stats.std)],
                             dtype=torch.float64)
    if torch.allclose(centre, predicted, rtol=1e-3, atol=1e-3):
        return
    if torch.allclose(centre, predicted.flip(0), rtol=1e-3, atol=1e-3):
        switch = ("; one built from its config (config:<model_type>, trained from scratch) gets an RGB processor"
                  if getattr(processor, "do_flip_channel_order", False) else
                  ": this processor flips them in its own preprocessing, which cannot be turned off")
        raise ModelError(f"image processor {name} flips the channels to BGR, which hf_rcka's transforms and teacher "
                         "inputs do not: the model would see RGB where it expects BGR (a pretrained one, or one "
                         f"deployed with this processor). Models trained on BGR are not supported{switch}")
    raise ModelError(f"image processor {name} outputs {centre.tolist()} for the colour {_PROBE_COLOUR}, not the "
                     f"{predicted.tolist()} its mean, std and rescale settings describe: hf_rcka's transforms would "
                     "train on other pixels than it feeds the model in deployment. Use a processor that only rescales "
                     "and normalises")


def _per_channel(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    return (float(value),) * 3 if isinstance(value, (int, float)) else tuple(float(v) for v in value)


def _filter_name(resample: Any) -> str:
    """A transformers processor's ``resample`` (a PIL filter id) by timm's name; unset: bilinear."""
    return _PIL_FILTERS.get(int(resample), "bilinear") if resample is not None else "bilinear"


class TeacherInputTransform(nn.Module):
    """Maps student-normalised ``pixel_values`` to the teacher's normalisation and resolution.

    Per channel, ``teacher = student * (s_std / t_std) + (s_mean - t_mean) / t_std``, applied
    after resizing: an affine per-channel map commutes with the resize (bilinear and bicubic
    weights sum to 1), and resizing first keeps the arithmetic at the smaller size when downsizing.
    The result matches the teacher's processor up to resampling differences when both keep the
    same part of each image (``InputStats.view``): the student's image was already resized and
    cropped for the student, and that view is all the teacher gets (``needed_transform`` warns
    when the two views differ).

    Args:
        student: what the student's processor produces.
        teacher: what the teacher's processor produces.
        mode: interpolation for the resize, "bilinear", "bicubic" or "nearest" (default: the teacher
            processor's filter, so a teacher trained on bicubic resizes gets bicubic ones; PIL's
            lanczos, box and hamming, which ``F.interpolate`` lacks, become bilinear). "bilinear" and "bicubic" resize as PIL
            does, which made the teacher's training images: antialiased kernels both ways (PIL's
            bicubic kernel is not ``F.interpolate``'s plain one, upsizing too) and, for bicubic,
            width then height, each pass clamped to the pixel range as PIL's 8-bit passes are.
            One plain bicubic pass was up to 12.7/255 off PIL's upsizing of a sharp-edged image;
            this is 1/255 at most, PIL's own rounding. (Random erasing's noise, drawn in the
            normalised space, is clamped to the pixel range too where bicubic resizes it.)

    Raises:
        ValueError: the two have different channel counts.
    """

    def __init__(self, student: InputStats, teacher: InputStats, mode: str | None = None) -> None:
        super().__init__()
        if mode is None:  # the teacher's filter where F.interpolate has it, else bilinear
            mode = teacher.interpolation if teacher.interpolation in ("bicubic", "nearest") else "bilinear"
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if student.channels != teacher.channels:
            raise ValueError(
                f"student inputs have {student.channels} channels (mean {student.mean}) but the teacher "
                f"expects {teacher.channels} (mean {teacher.mean}); check the two image processors"
            )
        self.student, self.teacher, self.mode = student, teacher, mode
        s_mean, s_std = _column(student.mean), _column(student.std)
        t_mean, t_std = _column(teacher.mean), _column(teacher.std)
        # non-persistent: follow .to(device) but stay out of checkpoints, which need not know them
        self.register_buffer("scale", s_std / t_std, persistent=False)
        self.register_buffer("shift", (s_mean - t_mean) / t_std, persistent=False)
        # the pixel range [0, 1] in the student's normalisation: bicubic overshoot is clamped there
        self.register_buffer("low", -s_mean / s_std, persistent=False)
        self.register_buffer("high", (1 - s_mean) / s_std, persistent=False)
        same_stats = torch.allclose(self.scale, torch.ones_like(self.scale), atol=1e-6) and torch.allclose(
            self.shift, torch.zeros_like(self.shift), atol=1e-6
        )
        self._same_stats = same_stats
        self._same_size = student.size == teacher.size

    @classmethod
    def from_processors(
        cls, student_processor: Any, teacher_processor: Any, mode: str | None = None
    ) -> TeacherInputTransform:
        """Build from the two image processors (see ``input_stats``)."""
        return cls(input_stats(student_processor), input_stats(teacher_processor), mode=mode)

    @property
    def is_identity(self) -> bool:
        """True when the teacher expects exactly what the student gets.

        ``forward`` then returns its input itself (for inputs at the declared size), so a
        wrapper can skip the transform without a copy.
        """
        return self._same_stats and self._same_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, C, H_s, W_s) in the student's normalisation -> (N, C, H_t, W_t) in the teacher's."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.student.channels:
            raise ValueError(
                f"expected pixel_values of shape (N, {self.student.channels}, H, W), "
                f"got {tuple(pixel_values.shape)}"
            )
        # the tensor's own size decides, not the declared one: augmentations may change it
        resize = tuple(pixel_values.shape[-2:]) != self.teacher.size
        if self._same_stats and not resize:
            return pixel_values
        x = pixel_values.float()
        if resize:
            x = self._resize(x)
        if not self._same_stats:
            x = x * self.scale.float() + self.shift.float()
        return x.to(pixel_values.dtype)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.teacher.size
        if self.mode == "nearest":  # PIL's nearest is interpolate's nearest-exact (its "nearest" shifts)
            return F.interpolate(x, size=(height, width), mode="nearest-exact")
        if self.mode == "bilinear":  # no overshoot to clamp: one pass
            return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        x = self._in_pixel_range(F.interpolate(x, size=(x.shape[-2], width), mode="bicubic", align_corners=False,
                                               antialias=True))
        return self._in_pixel_range(F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False,
                                                  antialias=True))

    def _in_pixel_range(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, self.high.float()), self.low.float())

    def extra_repr(self) -> str:
        return f"student={self.student}, teacher={self.teacher}, mode={self.mode!r}"



def planned_input_size(student: Any, student_input: InputStats | None = None) -> tuple[int, int]:
    """The (height, width) at which a student's hidden states are probed, so feature pairs, their
    grids and adapters are planned at it.

    The student processor's output size when there is one (what the data will be resized to),
    else the student config's ``image_size`` (224 when unset). The trainer checks the data's
    images against this same size, so the two cannot disagree about what was planned.
    """
    if student_input is not None:
        return student_input.size
    size = getattr(student.config, "image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def needed_transform(student: InputStats | None, teacher: InputStats | None) -> TeacherInputTransform | None:
    """The transform from the student's inputs to the teacher's, or ``None`` when none is needed.

    ``None`` also when either side is unknown (no processor given): the batch is then passed on
    as it is, which is what a single shared processor means.
    """
    if student is None or teacher is None:
        return None
    if student.view and teacher.view and student.view[0] != teacher.view[0]:
        # the student's tensor is all the teacher gets: evaluation, the teacher check and the card
        # measure the teacher on the student's view; squashed against cropped, on images that are
        # not square, that scored far below the teacher as deployed
        logger.warning("teacher inputs: the teacher sees what the student's processor keeps of each image (%s), "
                       "resized, not what its own keeps (%s): on images that are not square its logits are those "
                       "of other shapes, and can be far worse. A student processor that crops (or squashes) as the "
                       "teacher's does avoids it", describe_view(student.view), describe_view(teacher.view))
    elif student.view and teacher.view and abs(student.view[1] - teacher.view[1]) > 0.005:
        # another crop fraction of the same kind (DeiT's 87.5% student crop under a 95% RegNet) is
        # what DeiT's own training does: a slightly different framing, said once
        logger.info("teacher inputs: the teacher sees the student's view of each image (%s), not its own (%s)",
                    describe_view(student.view), describe_view(teacher.view))
    (student_h, student_w), (teacher_h, teacher_w) = student.size, teacher.size
    if abs(student_w / student_h - teacher_w / teacher_h) > 0.01 * teacher_w / teacher_h:
        logger.warning("teacher inputs: the student's %dx%d images are stretched to the teacher's %dx%d, another "
                       "shape: the teacher sees every image distorted and can score far below its own accuracy. "
                       "Give the student inputs of the teacher's aspect ratio (image_size)",
                       student_h, student_w, teacher_h, teacher_w)
    transform = TeacherInputTransform(student, teacher)
    if transform.is_identity:
        return None
    logger.info("teacher inputs: %s -> %s", student, teacher)
    return transform

def _column(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
