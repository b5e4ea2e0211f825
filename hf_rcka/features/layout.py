"""Tokens <-> feature maps: prefix tokens, grid inference and resampling.

Vision transformers hand out hidden states as tokens ``(B, N, D)``: ``num_prefix_tokens`` CLS,
distillation or register tokens followed by ``h * w`` patch tokens in row-major order. CNNs hand
out feature maps ``(B, C, H, W)``. Distilling between the two (or between two models with
different strides) needs both in one form on one grid; this module does that conversion and
nothing else, so adapters and losses never reshape by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch.nn.functional as F
from torch import Tensor

from ..functional.resize import resize_bilinear

LAYOUTS = ("nchw", "nlc", "pooled")


@dataclass(frozen=True)
class FeatureSpec:
    """What one hidden state looks like, batch dimension excluded.

    Adapters are built from two specs alone, so a spec carries everything needed to turn the
    tensor into a prefix-free ``(B, C, h, w)`` map and to size projections.

    Attributes:
        layout: ``"nchw"`` for maps ``(B, C, H, W)``, ``"nlc"`` for tokens ``(B, N, D)``,
            ``"pooled"`` for vectors ``(B, D)`` (grid ``(1, 1)``).
        channels: C for maps, D for tokens and pooled vectors.
        grid: spatial ``(h, w)`` of the map, or the patch grid of the tokens.
        num_prefix_tokens: CLS / distillation / register tokens before the patch tokens (NLC only).
        stride: input pixels per grid cell (input height / h), used to match stages by scale.
        is_embedding: the entry is a stem or patch-embedding output (no block has run yet); such
            entries carry little more than pixels and are skipped when pairing layers.
        branch: which parallel branch of a multi-branch model (timm CrossViT) the entry comes
            from; 0 for single-branch models. Such models list their entries branch after branch,
            so index order is not depth order and automatic pairing refuses them.
    """

    layout: str
    channels: int
    grid: tuple[int, int]
    num_prefix_tokens: int = 0
    stride: float | None = None
    is_embedding: bool = False
    branch: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.channels < 1 or len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"channels and grid must be positive, got {self.channels} and {self.grid}")
        if self.num_prefix_tokens < 0 or (self.num_prefix_tokens and self.layout != "nlc"):
            raise ValueError(f"num_prefix_tokens={self.num_prefix_tokens} needs layout 'nlc' and must be >= 0")
        object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))

    @property
    def num_tokens(self) -> int:
        """Tokens per image for NLC features: prefix tokens plus ``h * w`` patch tokens."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor shape this spec describes, without the batch dimension."""
        if self.layout == "nchw":
            return (self.channels, *self.grid)
        if self.layout == "nlc":
            return (self.num_tokens, self.channels)
        return (self.channels,)


def tokens_to_fmap(tokens: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
    """Drop the prefix tokens and lay the patch tokens out as a map.

    Args:
        tokens: (B, N, D) with ``N = num_prefix_tokens + h * w``, patches in row-major order.
        grid: (h, w) patch grid; may be non-square.
        num_prefix_tokens: leading CLS / distillation / register tokens to drop.

    Returns:
        (B, D, h, w) feature map, a view of ``tokens`` (no copy).
    """
    h, w = grid
    if tokens.dim() != 3 or tokens.shape[1] != num_prefix_tokens + h * w:
        raise ValueError(
            f"expected tokens (B, N, D) with N = {num_prefix_tokens + h * w} ({num_prefix_tokens} prefix + "
            f"{h}x{w} patches), got shape {tuple(tokens.shape)}"
        )
    patches = tokens[:, num_prefix_tokens:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def fmap_to_tokens(fmap: Tensor) -> Tensor:
    """(B, C, H, W) map -> (B, H*W, C) tokens in row-major order (the inverse of tokens_to_fmap)."""
    if fmap.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) map, got shape {tuple(fmap.shape)}")
    return fmap.flatten(2).transpose(1, 2)


def infer_grid(num_patch_tokens: int, image_size: tuple[int, int] | None = None, *,
               near_count_stride: bool = False) -> tuple[int, int]:
    """Find the (h, w) patch grid of ``num_patch_tokens`` tokens.

    Without ``image_size`` only square grids can be recovered. With it, the grid must follow the
    image's aspect ratio at one common stride (up to the rounding a patch embedding does).
    ``near_count_stride`` also asks the grid to lie within a patch, each way, of the stride that
    the token count implies (``sqrt(height * width / tokens)``): where the number of prefix tokens
    is unknown, a count that still holds some fits a rounded grid more often than that.

    Raises:
        ValueError: if no grid fits, with the numbers that did not fit.
    """
    n = int(num_patch_tokens)
    if n < 1:
        raise ValueError(f"cannot lay out {n} patch tokens on a grid")
    if image_size is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens form no square grid; pass image_size to infer a non-square one")
        return side, side
    height, width = image_size
    stride = math.sqrt(height * width / n)
    for h in range(1, n + 1):
        w = n // h
        if h * w != n or not _one_stride(height, h, width, w):
            continue
        if not near_count_stride or (abs(h - height / stride) < 1 and abs(w - width / stride) < 1):
            return h, w
    raise ValueError(f"{n} patch tokens form no grid with the aspect ratio of a {height}x{width} image")


def _one_stride(height: int, h: int, width: int, w: int) -> bool:
    """Whether one stride ``s`` makes an ``h`` x ``w`` grid of a ``height`` x ``width`` image, as a
    patch embedding rounds: down (a strided convolution, ``floor(height / s) == h``) or up (one
    that pads the image, ``ceil``). A stride guessed from the token count alone missed grids that
    rounding had cut: 210 tokens of a 105 x 420 image at 14 px are 7 x 30."""
    down = (max(Fraction(height, h + 1), Fraction(width, w + 1)), min(Fraction(height, h), Fraction(width, w)))
    up = (max(Fraction(height, h), Fraction(width, w)),
          min(Fraction(height, h - 1) if h > 1 else math.inf, Fraction(width, w - 1) if w > 1 else math.inf))
    return down[0] < down[1] or up[0] < up[1]


def resample(fmap: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring a (B, C, H, W) map onto an (h, w) grid.

    Shrinking uses adaptive average pooling (each target cell summarises the region it covers, as
    a coarser stride would), growing uses bilinear interpolation; a dimension that shrinks while
    the other grows gets both in turn. Equal sizes return the input itself.
    """
    size = (int(size[0]), int(size[1]))
    current = tuple(fmap.shape[-2:])
    if current == size:
        return fmap
    pooled_size = (min(current[0], size[0]), min(current[1], size[1]))
    if pooled_size != current:
        fmap = F.adaptive_avg_pool2d(fmap, pooled_size)
    if pooled_size != size:
        fmap = resize_bilinear(fmap, size)
    return fmap


def to_fmap(x: Tensor, spec: FeatureSpec) -> Tensor:
    """Turn any feature described by ``spec`` into a prefix-free (B, C, h, w) map.

    Pooled (B, D) vectors become (B, D, 1, 1). Raises ValueError if ``x`` does not match ``spec``,
    which catches a wrong layer index or a spec from another model early.
    """
    if tuple(x.shape[1:]) != spec.shape:
        raise ValueError(f"feature of shape {tuple(x.shape)} does not match {spec} (expected (B, *{spec.shape}))")
    if spec.layout == "nlc":
        return tokens_to_fmap(x, spec.grid, spec.num_prefix_tokens)
    if spec.layout == "pooled":
        return x[:, :, None, None]
    return x


def pooled_spec(dim: int) -> FeatureSpec:
    """Spec of a pooled (B, dim) penultimate feature, e.g. for the 'linear' adapter."""
    return FeatureSpec(layout="pooled", channels=int(dim), grid=(1, 1))


__all__ = [
    "FeatureSpec",
    "fmap_to_tokens",
    "infer_grid",
    "pooled_spec",
    "resample",
    "to_fmap",
    "tokens_to_fmap",
]
