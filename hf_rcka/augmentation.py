"""Training-augmentation settings, named and defaulted as in timm's ``train.py``.

The names (``aa``, ``reprob``, ``mixup``, ``cutmix``, ``aug_repeats``...) and their defaults are
those of timm's training script, so a recipe written from a paper's timm command line reads the
same here. ``DataArguments`` inherits these fields; ``data/transforms.py`` turns them into per-image
transforms (timm's data factory), ``data/mixing.py`` into batch Mixup/CutMix and ``data/sampler.py`` into
repeated augmentation.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, fields

from .errors import RecipeError

_INTERPOLATIONS = ("random", "bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
_NOT_FOR_AA = ("lanczos", "box", "hamming")  # PIL's affine transforms refuse them (timm's RandAugment/AutoAugment ops)
_REMODES = ("const", "rand", "pixel")
_MIXUP_MODES = ("batch", "pair", "elem")
# the settings of timm's per-image transform, which no_aug replaces (batch mixing stays)
PER_IMAGE_KEYS = ("aa", "color_jitter", "hflip", "train_interpolation", "reprob", "remode", "recount")

logger = logging.getLogger(__name__)


class AugmentationError(RecipeError):
    """An augmentation setting is invalid; the message names the key and the fix (a user error, as
    every other invalid setting is: the command line prints it as one line)."""


@dataclass
class AugmentationArguments:
    """Per-image augmentation (timm's data factory), batch mixing and repeated augmentation."""

    no_aug: bool = field(
        default=False,
        metadata={"help": "No training augmentation: train images get the saved processor's own preprocessing."},
    )
    aa: str | None = field(
        default=None, metadata={"help": "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment)."}
    )
    color_jitter: float = field(default=0.4, metadata={
        "help": "Colour jitter strength (ignored when aa is set, but for timm's 3a policies)."})
    hflip: float = field(default=0.5, metadata={"help": "Horizontal flip probability."})
    train_interpolation: str | None = field(
        default="random",
        metadata={"help": "Interpolation of the random resized crop ('random' as timm; null: the model's own)."},
    )
    reprob: float = field(default=0.0, metadata={"help": "Random erasing probability."})
    remode: str = field(default="pixel", metadata={"help": "Random erasing fill: const, rand or pixel."})
    recount: int = field(default=1, metadata={"help": "Random erasing: number of boxes."})
    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha; mixup is on when > 0."})
    cutmix: float = field(default=0.0, metadata={"help": "CutMix alpha; CutMix is on when > 0."})
    cutmix_minmax: list[float] | None = field(
        default=None, metadata={"help": "CutMix min/max box ratio [min, max]; overrides the cutmix alpha."}
    )
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of mixing a batch at all."})
    mixup_switch_prob: float = field(
        default=0.5, metadata={"help": "Probability of CutMix instead of mixup when both are on."}
    )
    mixup_mode: str = field(default="batch", metadata={"help": "Mix per 'batch', 'pair' or 'elem'."})
    aug_repeats: int = field(
        default=0, metadata={"help": "Repeated augmentation: copies of each image per epoch (DeiT: 3); 0 = off."}
    )

    def per_image_settings(self) -> list[str]:
        """The per-image transform's settings (``PER_IMAGE_KEYS``) set to other than their defaults."""
        return [f.name for f in fields(AugmentationArguments)
                if f.name in PER_IMAGE_KEYS and getattr(self, f.name) != f.default]

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None

    def __post_init__(self) -> None:
        _check_choice("train_interpolation", self.train_interpolation, _INTERPOLATIONS, allow_none=True)
        _check_choice("remode", self.remode, _REMODES)
        _check_choice("mixup_mode", self.mixup_mode, _MIXUP_MODES)
        for key in ("hflip", "reprob", "mixup_prob", "mixup_switch_prob"):
            _check_range(key, getattr(self, key), 0.0, 1.0)
        for key in ("color_jitter", "mixup", "cutmix"):
            # nan passed a plain < 0: nan switched Mixup/CutMix off silently, inf failed at the first
            # batch (or diverged, said as a learning-rate problem), and colour jitter failed as a traceback
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise AugmentationError(f"{key} must be >= 0 and finite, got {getattr(self, key)}")
        if self.recount < 1:
            raise AugmentationError(f"recount must be >= 1, got {self.recount}")
        if self.aug_repeats < 0 or self.aug_repeats == 1:
            raise AugmentationError(
                f"aug_repeats must be 0 (off) or >= 2 copies of each image, got {self.aug_repeats} (DeiT uses 3)"
            )
        if self.aa is not None:
            _check_aa(self.aa)
            check_aa_interpolation(self.aa, self.train_interpolation, "train_interpolation")
        if self.no_aug:
            ignored = self.per_image_settings()
            if ignored:
                logger.warning("no_aug: true trains on the processor's own preprocessing, so %s (set here) have no "
                               "effect; drop no_aug to use them", ", ".join(ignored))
        if self.cutmix_minmax is not None:
            low_high = list(self.cutmix_minmax)
            if len(low_high) != 2 or not 0.0 < low_high[0] < low_high[1] <= 1.0:
                raise AugmentationError(f"cutmix_minmax must be [min, max] with 0 < min < max <= 1, got {low_high}")


def check_aa_interpolation(policy: str | None, interpolation: str | None, source: str) -> None:
    """timm's geometric augmentations (PIL affine transforms) take nearest, bilinear or bicubic only:
    another filter failed at the first batch. ``train_interpolation: null`` takes the student
    processor's filter, known only once the student is loaded (``source`` names where it came from).

    Raises:
        AugmentationError: ``policy`` applies geometric ops and ``interpolation`` is not one of those.
    """
    if policy is None or interpolation not in _NOT_FOR_AA or policy.startswith("3a"):
        return
    fix = "Use bicubic (DeiT's) or bilinear" if source == "train_interpolation" else (
        "Set train_interpolation: bicubic (DeiT's) or bilinear, or random")
    raise AugmentationError(
        f"{source} {interpolation!r} cannot be used with aa={policy!r}: timm's geometric "
        f"augmentations take nearest, bilinear or bicubic only (they failed at the first batch). {fix}")


def _check_choice(key: str, value: str | None, choices: tuple[str, ...], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in choices:
        raise AugmentationError(f"{key} must be one of {choices}, got {value!r}")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise AugmentationError(f"{key} must be in [{low}, {high}], got {value}")


def _check_aa(policy: str) -> None:
    """Parse the policy with timm now, so a typo fails before any model or data is loaded."""
    from timm.data.auto_augment import auto_augment_transform, rand_augment_transform
    from timm.data.auto_augment import augment_and_mix_transform

    hparams = {"translate_const": 100, "img_mean": (124, 116, 104)}
    builders = {"rand": rand_augment_transform, "augmix": augment_and_mix_transform}
    kind, *sections = policy.split("-")
    build = builders.get(kind, auto_augment_transform)
    # timm skips a section without a number: 'incl' for 'inc1' trained RandAugment's other ops
    skipped = [s for s in sections if not re.search(r"\d", s) and not (kind == "rand" and s.startswith("t"))]
    if kind in builders and skipped:
        raise AugmentationError(f"aa={policy!r}: timm ignores {', '.join(map(repr, skipped))} (each section is a key "
                                "and its number, e.g. m9, mstd0.5, inc1 in rand-m9-mstd0.5-inc1)")
    try:
        build(policy, hparams)
    except Exception as err:  # timm raises AssertionError/KeyError/ValueError for bad policies
        raise AugmentationError(
            f"aa={policy!r} is not a timm augmentation policy ({type(err).__name__}: {err}); "
            "e.g. rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w4-d2, or original / v0 (AutoAugment)"
        ) from None
