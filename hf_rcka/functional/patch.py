"""Patch-wise CKA (PCKA, Zhou et al. 2024): per channel, the relations between a map's patches.

Per channel, PCKA compares the n = gh * gw patches of a (B, C, H, W) map as the rows of an
(n, B * ph * pw) matrix: row j holds patch j's pixels over the whole batch. This module cuts maps
into those rows and computes the CKA either by plain autograd (patch rows + batched
``linear_cka``) or by the hand-written kernel of ``pcka_kernel``, which also takes a frozen
teacher map already reduced to its patch Grams (:class:`PatchGramSide`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

from . import pcka_kernel
from .cka import linear_cka, min_cka_items
from .numerics import DEFAULT_EPS, compute_dtype, full_precision, upcast_dtype
from .resize import resize_bilinear

__all__ = ["PatchGramSide", "patchify", "patch_cka", "patch_cka_many", "patch_cka_side", "patch_count"]


def _effective_patch(size: int, patch_size: int) -> int:
    """Patch side for one axis: ``patch_size``, shrunk so a small map still has >= 2 patches."""
    return max(1, min(patch_size, size // 2))


def patch_count(height: int, width: int, patch_size: int) -> int:
    """How many patches ``patch_cka`` relates on a ``height`` x ``width`` map: the rows of its Grams."""
    ph, pw = _effective_patch(height, patch_size), _effective_patch(width, patch_size)
    return -(-height // ph) * -(-width // pw)


def _check_map(fmap: torch.Tensor) -> None:
    if fmap.dim() != 4:
        raise ValueError(f"patchify expects a (B, C, H, W) feature map, got shape {tuple(fmap.shape)}")


def _patch_layout(height: int, width: int, patch_size: int) -> tuple[int, int, tuple[int, int]]:
    """The patch sides (ph, pw) for a ``height`` x ``width`` map and the size it is resized to
    (bilinear, up to whole patches)."""
    ph, pw = _effective_patch(height, patch_size), _effective_patch(width, patch_size)
    return ph, pw, (-(-height // ph) * ph, -(-width // pw) * pw)


def _fit_to_patches(fmap: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, int, int]:
    """The patch sides (ph, pw) for ``fmap``, and ``fmap`` resized (bilinear) up to whole patches."""
    ph, pw, size = _patch_layout(fmap.shape[2], fmap.shape[3], patch_size)
    if size != tuple(fmap.shape[2:]):
        fmap = resize_bilinear(fmap, size)
    return fmap, ph, pw


def _patch_rows(fmap: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(B, C, gh*ph, gw*pw) -> (C, gh*gw, B*ph*pw) through differentiable views and one copy."""
    b, c, h, w = fmap.shape
    patches = fmap.reshape(b, c, h // ph, ph, w // pw, pw).permute(1, 2, 4, 0, 3, 5)
    return patches.reshape(c, (h // ph) * (w // pw), b * ph * pw)


def patchify(fmap: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut (B, C, H, W) into non-overlapping patches -> (C, num_patches, B * ph * pw).

    Row j of channel c holds patch j's pixels over the whole batch, which is what PCKA compares.
    Maps are resized (bilinear) up to the next multiple of the patch side when needed; maps
    smaller than two patches per axis use a smaller patch so at least two patches exist.
    """
    _check_map(fmap)
    return _patch_rows(*_fit_to_patches(fmap, patch_size))


@dataclass(frozen=True)
class PatchGramSide:
    """A frozen (teacher's) map reduced to what :func:`patch_cka` reads of it: per channel, the Gram
    of its patches, for the hand-written kernel's non-transposed CKA.

    A distillation step holds the teacher's side of each pair from the teacher's forward, through
    the student's whole forward, to the loss; on classification maps the (C, n, n) Grams over n
    patches are a fraction of the (B, C, H, W) map (DeiT-B's 768 channels on a 14 x 14 grid in
    4-pixel patches at batch 16: 0.8 MiB in float32 against 4.6 MiB of bf16 map), and the loss,
    where the student's activations peak, then reads only the student's maps. Made by
    :func:`patch_cka_side`, which keeps a map whose Grams would not be smaller (many small
    patches); pass it to ``patch_cka`` or ``patch_cka_many`` in place of the teacher map. It has no
    gradient, and it mixes the images of the batch, so no image can be dropped from it afterwards.
    The Gram is in the map's own compute dtype (float32 for bf16, fp16 and float32 maps): against
    a float64 student the CKA then differs from the map's in the eighth digit.

    Attributes:
        side: the kernel's reduced side (the Gram scaled to unit trace, ``<k, k>`` and the scale).
        shape: the map's shape (B, C, H, W), which the student's must equal.
        dtype: the map's dtype.
        patch_size, center, eps: what the Gram was made with; the CKA must use the same.
    """

    side: pcka_kernel.SideGram
    shape: torch.Size
    dtype: torch.dtype
    patch_size: int
    center: bool
    eps: float


@full_precision
def patch_cka_side(teacher_fmap: torch.Tensor, patch_size: int = 16, center: bool = True,
                   eps: float = DEFAULT_EPS) -> PatchGramSide | None:
    """``teacher_fmap`` (B, C, H, W) reduced to its :class:`PatchGramSide`, or None where
    ``patch_cka`` would not read it through the kernel (another device's default backend, a map of
    fewer patches than CKA relates) or its Grams would take no less memory than the map: keep such
    a map whole. The transposed CKA (``transpose=True``) reads the pixels, so it takes maps only."""
    _check_map(teacher_fmap)
    _, channels, height, width = teacher_fmap.shape
    n = patch_count(height, width, patch_size)
    if _resolved("auto", teacher_fmap.device) != "kernel" or n < min_cka_items(center):
        return None
    if channels * n * n * upcast_dtype(teacher_fmap).itemsize >= teacher_fmap.numel() * teacher_fmap.element_size():
        return None
    ph, pw, size = _patch_layout(height, width, patch_size)
    side = pcka_kernel.side_gram(teacher_fmap, ph, pw, size, center, eps)
    return PatchGramSide(side, teacher_fmap.shape, teacher_fmap.dtype, patch_size, center, eps)


def check_aligned(student_fmap: torch.Tensor, teacher_fmap: torch.Tensor | PatchGramSide) -> None:
    """Both maps (B, C, H, W) of one shape (the teacher's may be reduced to its
    :class:`PatchGramSide`), or a ValueError that names the adapter that aligns them."""
    if student_fmap.shape != teacher_fmap.shape:
        raise ValueError(
            f"patch_cka needs aligned maps of equal shape, got student {tuple(student_fmap.shape)} and "
            f"teacher {tuple(teacher_fmap.shape)}; use the 'patch_match' adapter with project: true"
        )
    _check_map(student_fmap)


def _resolved(backend: str, device: torch.device) -> str:
    if backend not in pcka_kernel.BACKENDS:
        raise ValueError(f"patch_cka backend must be one of {pcka_kernel.BACKENDS}, got {backend!r}")
    return pcka_kernel.default_backend(device) if backend == "auto" else backend


@full_precision
def patch_cka(
    student_fmap: torch.Tensor,
    teacher_fmap: torch.Tensor,
    patch_size: int = 16,
    transpose: bool = False,
    center: bool = True,
    eps: float = DEFAULT_EPS,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-channel patch-relation CKA between two aligned maps (B, C, H, W) -> (C,).

    Values and gradients are those of ``linear_cka(patchify(student), patchify(teacher))`` with both
    maps upcast (float32, or float64 if either is), computed for all channels together (no loop
    over channels). ``backend``: ``"kernel"`` is the hand-written forward/backward of
    ``pcka_kernel`` (a few batched ops per block of channels, measured faster on CPU and CUDA; it
    reads the maps in their own dtype and size, upcasting and resizing block by block, so a bf16
    map gets no full-size float32 copy; not twice differentiable: a backward with
    ``create_graph=True`` raises), ``"autograd"`` the plain composition, ``"auto"`` the kernel on
    CPU and CUDA and autograd elsewhere. With ``transpose=True`` the CKA of the transposed patch
    matrices (pixel relations) is averaged in, where a patch holds enough pixels (over the batch)
    to relate. A map of fewer
    patches than CKA needs (``min_cka_items``: 1 x 1 or 1 x 2, centred) has no patch relations to
    align: it returns ones (a zero loss, no gradient); ``PatchCKALoss`` refuses such pairs.
    """
    check_aligned(student_fmap, teacher_fmap)
    return _grid_patch_cka([student_fmap], [teacher_fmap], patch_size, transpose, center, eps, backend)


@full_precision
def _grid_patch_cka(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor], patch_size: int,
                    transpose: bool, center: bool, eps: float, backend: str) -> torch.Tensor:
    """:func:`patch_cka` of aligned pairs on one grid, their channels in order (autocast off). The
    teachers are maps, or all :class:`PatchGramSide` (through the kernel's plain CKA only)."""
    if isinstance(teachers[0], PatchGramSide):
        return _reduced_patch_cka(students, teachers, patch_size, transpose, center, eps, backend)
    dtype = functools.reduce(torch.promote_types, (compute_dtype(s, t) for s, t in zip(students, teachers)))
    _, _, height, width = students[0].shape
    if patch_count(height, width, patch_size) < min_cka_items(center):
        channels = sum(s.shape[1] for s in students)
        return torch.ones(channels, dtype=dtype, device=students[0].device) + 0.0 * sum(s.sum(dtype=dtype) for s in students)
    kernel = _resolved(backend, students[0].device) == "kernel"
    if transpose or not kernel:
        # the patch rows in plain autograd, for that backend and for the transposed CKA (made once for both)
        rows_s, rows_t = (patchify(_joined(maps).to(dtype), patch_size) for maps in (students, teachers))
    if kernel:
        ph, pw, size = _patch_layout(height, width, patch_size)
        sim = pcka_kernel.patch_cka_kernel(students, teachers, ph, pw, size, center, eps)
    else:
        sim = linear_cka(rows_s, rows_t, center=center, eps=eps)
    if transpose:
        # the transposed CKA relates the B * ph * pw pixels of a patch; over too few it is a
        # constant, which would hold the loss off 0 (identical maps: 0.5) or add nothing, so a last
        # batch of one image on a small map keeps the patch term alone
        if rows_s.shape[-1] >= min_cka_items(center):
            sim = 0.5 * (sim + linear_cka(rows_s.transpose(-2, -1), rows_t.transpose(-2, -1), center=center, eps=eps))
    return sim


def _reduced_patch_cka(students: Sequence[torch.Tensor], teachers: Sequence[PatchGramSide], patch_size: int,
                       transpose: bool, center: bool, eps: float, backend: str) -> torch.Tensor:
    made = {(t.patch_size, t.center, t.eps) for t in teachers}
    if made != {(patch_size, center, eps)} or transpose or _resolved(backend, students[0].device) != "kernel":
        raise ValueError(
            f"a teacher reduced to its PatchGramSide (patch_size, center, eps = {sorted(made)}) serves the kernel's plain "
            f"patch_cka with the same settings only, not patch_size={patch_size}, center={center}, eps={eps}, "
            f"transpose={transpose}, backend={backend!r}; pass the teacher's map instead")
    _, _, height, width = students[0].shape
    ph, pw, size = _patch_layout(height, width, patch_size)
    return pcka_kernel.patch_cka_kernel(students, [t.side for t in teachers], ph, pw, size, center, eps)


def _joined(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    return maps[0] if len(maps) == 1 else torch.cat(list(maps), 1)


# Where pairs must be concatenated to share a call (plain autograd, or the transposed CKA), they
# are joined while their student maps take at most this much together: the concatenation copies
# both sides' maps, which costs more than a call's fixed work on full-size maps (DeiT-B ->
# ResNet-50 at 224 px, batch 32: 38 MB per side; joined, the work patch CKA added to a CPU step
# grew from 1.18 to 1.76 s). The kernel reads the pairs' maps where they are, so it joins any.
_JOIN_BYTES = 8 << 20


def patch_cka_many(
    student_fmaps: Sequence[torch.Tensor],
    teacher_fmaps: Sequence[torch.Tensor],
    patch_size: int = 16,
    transpose: bool = False,
    center: bool = True,
    eps: float = DEFAULT_EPS,
    backend: str = "auto",
) -> list[torch.Tensor]:
    """:func:`patch_cka` of each pair of maps, with the pairs that share a grid in one call.

    PCKA never mixes channels (each is a CKA of its own), so the channels of several pairs on one
    grid can go through one call. On classification-size maps a call's cost is mostly fixed (some
    sixty tensor ops forward and backward, whatever the channel count), so joining three of four
    pairs cut the work patch CKA adds to a CPU step by 12-18% (benchmarks/README.md). The kernel
    reads each pair's maps where they are; the plain-autograd path and the transposed CKA
    concatenate them, so there large maps keep a call each (``_JOIN_BYTES``). Values and
    gradients are those of separate calls.

    Returns:
        The per-channel CKA (C_i,) of each pair, in the order given.
    """
    if len(student_fmaps) != len(teacher_fmaps):
        raise ValueError(f"patch_cka_many got {len(student_fmaps)} student maps and {len(teacher_fmaps)} teacher maps")
    groups: dict[tuple, list[int]] = {}
    for i, (student, teacher) in enumerate(zip(student_fmaps, teacher_fmaps)):
        check_aligned(student, teacher)
        key = (student.shape[0], *student.shape[2:], student.dtype, teacher.dtype, student.device,
               isinstance(teacher, PatchGramSide))
        groups.setdefault(key, []).append(i)
    sims: list[torch.Tensor | None] = [None] * len(student_fmaps)
    for members in groups.values():
        students, teachers = [student_fmaps[i] for i in members], [teacher_fmaps[i] for i in members]
        copies = (transpose or _resolved(backend, students[0].device) != "kernel") and isinstance(teachers[0], torch.Tensor)
        if not copies or sum(s.numel() * s.element_size() for s in students) <= _JOIN_BYTES:
            joined = _grid_patch_cka(students, teachers, patch_size, transpose, center, eps, backend)
            parts = joined.split([s.shape[1] for s in students])
        else:
            parts = [patch_cka(s, t, patch_size, transpose, center, eps, backend) for s, t in zip(students, teachers)]
        for i, sim in zip(members, parts):
            sims[i] = sim
    return sims
