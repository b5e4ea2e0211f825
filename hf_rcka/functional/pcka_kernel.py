"""The hand-written patch-CKA kernel: per-channel CKA of patch matrices with its own backward.

Per channel, PCKA compares the n = gh * gw patches of a map as the rows of an (n, B * ph * pw)
matrix. Through patchify + linear_cka, more than half of a CPU step went to work around the three
batched matmuls that cannot be avoided (student Gram, teacher Gram, student gradient): a permuting
copy that moves 4-value runs, separate full-size passes for the centering, autograd bookkeeping
on the (C, n, n) Grams and page faults on the fresh map-sized buffers these allocate. _PatchCKA
computes the (non-transposed) PCKA with a hand-written backward, channel block by channel block,
from the maps as the model made them: each block is upcast and resized (up to whole patches)
as it is read, so no float32 or resized copy of a map is saved for the backward, and on CPU, where
maps are read in blocks of a few MiB, none of a whole map is made either. Off the CPU a map is one
block: its float32 resized copy exists while the forward (and again the backward) reads it.

``benchmarks/loss_cost.py --parts b`` times both paths. On CPU it was 1.5-1.9x as fast as plain
autograd on classification-size maps and 0.95-1.75x on detection-size ones; on an H200 GPU
(float32 maps of 64-768 channels in three settings) 1.06-1.31x, so :func:`default_backend` picks
it on both. ``patch_cka(backend="autograd")`` stays for twice differentiable calls and as the
reference the tests compare against. This module builds on ``cka``, ``numerics`` and ``resize``;
``patch`` dispatches to it.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import torch

from .cka import batch_trace, inverse_norm
from .numerics import upcast_dtype
from .resize import resize_bilinear, resize_bilinear_backward

BACKENDS = ("auto", "kernel", "autograd")


def default_backend(device: torch.device) -> str:
    """``"kernel"`` on CPU and CUDA, where it was measured faster; ``"autograd"`` elsewhere (not measured)."""
    return "kernel" if device.type in ("cpu", "cuda") else "autograd"


def patch_cka_kernel(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor | SideGram], ph: int, pw: int,
                     size: tuple[int, int], center: bool, eps: float) -> torch.Tensor:
    """Per-channel CKA (C,) of pairs of (B, C_i, H, W) maps on one grid, resized to ``size`` =
    (gh*ph, gw*pw), through the hand-written backward: the channels of all pairs, in order.

    The maps come as the model made them: in their own dtype (bf16 under autocast), size and
    layout. Each channel block is upcast and resized as it is read, in the forward and again in the
    backward, and the maps themselves are what is saved. On a distillation step the loss runs where
    the student's activations peak, and float32 resized copies of both sides (one of them saved
    until the backward) were most of what patch CKA added to the step's peak memory on the CPU. Off
    the CPU a map is read as one block (see the module docstring). Several pairs go through one
    call without being concatenated: PCKA never mixes channels, so the call reads each map's blocks
    in turn, and a concatenation would copy every map (forward and backward) and hold the copies
    beside the maps. The teachers may come reduced to their Grams (:func:`side_gram`, all of them).
    """
    reduced = any(isinstance(t, SideGram) for t in teachers)
    if reduced and not all(isinstance(t, SideGram) for t in teachers):
        raise ValueError("patch_cka_kernel takes the teachers all as maps or all reduced to their Grams, not both")
    maps = (*students, *([] if reduced else teachers))
    channels = [t.gram.shape[0] if reduced else t.shape[1] for t in teachers]
    if (len(students) != len(teachers) or not students or any(s.shape[1] != c for s, c in zip(students, channels))
            or len({(m.shape[0], *m.shape[2:], m.device) for m in maps}) > 1):
        raise ValueError(f"patch_cka_kernel needs pairs of maps of one batch, size and device, got student maps "
                         f"{[tuple(m.shape) for m in students]} and teachers of {channels} channels")
    # the dtype the maps would be compared in: the students' and the teachers' (a reduced side's Gram is in its map's)
    dtype = functools.reduce(torch.promote_types, [upcast_dtype(m) for m in maps] + [t.gram.dtype for t in teachers if reduced])
    # the reduced teachers joined into fresh tensors (cat copies even one), which the forward may
    # reuse as a Gram direction: the sides themselves are never changed
    side = SideGram(*(torch.cat([getattr(t, f) for t in teachers]).to(dtype) for f in SideGram._fields)) if reduced else None
    needs_grad = tuple(torch.is_grad_enabled() and fmap.requires_grad for fmap in maps)
    return _PatchCKA.apply(_Grid(ph, pw, tuple(size), dtype), center, eps, needs_grad, side, *maps)


@torch.no_grad()
def side_gram(fmap: torch.Tensor, ph: int, pw: int, size: tuple[int, int], center: bool, eps: float) -> SideGram:
    """One frozen map reduced to what the kernel reads of it: its per-channel patch Gram scaled to
    unit trace, ``<k, k>`` and the scale, in the map's :func:`upcast_dtype` (see _PatchCKA)."""
    return _side_gram([fmap], _Grid(ph, pw, tuple(size), upcast_dtype(fmap)), center, eps)


_RUN_DTYPES = {16: torch.complex128, 8: torch.int64, 4: torch.int32, 2: torch.int16}


def _as_runs(a: torch.Tensor, b: torch.Tensor, run: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``a`` and ``b`` reinterpreted so that each run of ``run`` trailing values is few wide elements.

    The patch copies move runs of pw contiguous values (16 bytes for 4-pixel float32 patches);
    moving each run as one complex128 instead of four floats made them about 5x faster on CPU. The
    bytes are only moved, never computed on. Returns the tensors unchanged (and ``run``) where the
    strides do not allow it or off CPU, where it was not measured. The copies get maps whose pixel
    rows are contiguous (the map itself, or its block in the staging buffer), whose strides allow it
    unless the map starts at an odd offset into its storage; the check keeps the copies correct for
    any layout.
    """
    size = a.element_size()
    width = math.gcd(run * size, 16)  # the widest element (<= 16 bytes) that tiles a run
    ratio = width // size
    if ratio == 1 or a.device.type != "cpu":
        return a, b, run
    for t in (a, b):
        if t.stride(-1) != 1 or t.storage_offset() % ratio or any(s % ratio for s in t.stride()[:-1]):
            return a, b, run
    return a.view(_RUN_DTYPES[width]), b.view(_RUN_DTYPES[width]), run // ratio


def _copy_to_patches(out: torch.Tensor, fmap: torch.Tensor, ph: int, pw: int) -> None:
    """Write the patch rows of ``fmap`` (B, c, gh*ph, gw*pw), whose pixel rows are contiguous, into
    ``out`` (c, gh*gw, B*ph*pw)."""
    b, c, h, w = fmap.shape
    dst, src, k = _as_runs(out, fmap, pw)
    dst = dst.view(c, h // ph, w // pw, b, ph, k).permute(3, 0, 1, 4, 2, 5)
    dst.copy_(src.view(b, c, h // ph, ph, w // pw, k))


def _copy_from_patches(out: torch.Tensor, patches: torch.Tensor, ph: int, pw: int) -> None:
    """The inverse of :func:`_copy_to_patches`: patch rows (c, n, p) back into ``out`` (B, c, H, W)."""
    b, c, h, w = out.shape
    dst, src, k = _as_runs(out, patches, pw)
    src = src.view(c, h // ph, w // pw, b, ph, k).permute(3, 0, 1, 4, 2, 5)
    dst.view(b, c, h // ph, ph, w // pw, k).copy_(src)


class _BlockReader:
    """One map, read channel block by channel block as the patch copies need it, and its gradient
    written back the same way.

    A block is read upcast to the kernel's dtype, resized (bilinear) to whole patches and with
    contiguous pixel rows: the patch copies move runs of a row's pixels. Each step that the map
    needs goes through a block-sized buffer reused for every block, so no map-sized copy is made;
    on CPU every fresh buffer also costs page faults. A channels_last map (a CNN teacher's, or a 1x1
    projection of ViT tokens) has no pixel rows to move, and gathering it value by value is slow on
    CPU, so even a map that needs no cast or resize is transposed into a buffer block by block,
    while the block is in cache for the patch copy that follows. The gradient runs the same steps
    backwards: the patch rows into a block of the resized map, the resize's adjoint, the cast into
    the map's own dtype and layout.
    """

    def __init__(self, fmap: torch.Tensor, dtype: torch.dtype, size: tuple[int, int], channels: int) -> None:
        self.fmap, self.dtype, self.size, self.channels = fmap, dtype, size, channels
        self.cast = fmap.dtype != dtype
        self.resized = tuple(fmap.shape[-2:]) != size
        self._flat: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, channels: int, hw: tuple[int, int], last: bool = False) -> torch.Tensor:
        """A (B, channels, *hw) view of one reused buffer, sized for the largest block: standard
        layout, or channels_last when ``last``."""
        b = self.fmap.shape[0]
        if name not in self._flat:
            self._flat[name] = torch.empty(b * self.channels * hw[0] * hw[1], dtype=self.dtype, device=self.fmap.device)
        flat = self._flat[name][: b * channels * hw[0] * hw[1]]
        return flat.view(b, *hw, channels).permute(0, 3, 1, 2) if last else flat.view(b, channels, *hw)

    def read(self, block: slice) -> torch.Tensor:
        """Channels ``block`` as (B, c, *size) in the kernel's dtype, with contiguous pixel rows.

        A block to resize goes through channels_last buffers: torch's bilinear kernels, forward and
        backward, were 8x faster on them than on a standard-layout map of many channels and few
        pixels (CPU, (16, 124, 14, 14) -> 16 x 16: 0.12 against 0.97 ms, the backward 0.22
        against 1.9 ms), which cost more than the transposing copies in and out."""
        part = self.fmap[:, block]
        c, hw = part.shape[1], tuple(part.shape[-2:])
        if self.resized:
            if self.cast or not part.is_contiguous(memory_format=torch.channels_last):
                part = self._buffer("map", c, hw, last=True).copy_(part)
            resized = resize_bilinear(part, self.size, out=self._buffer("resized", c, self.size, last=True))
            return self._buffer("rows", c, self.size).copy_(resized)
        if self.cast or part.stride(-1) != 1:
            part = self._buffer("map", c, hw).copy_(part)
        return part

    def write_grad(self, grad: torch.Tensor, block: slice, patches: torch.Tensor, ph: int, pw: int) -> None:
        """The gradient w.r.t. the patch rows (c, n, p) of ``block``, into ``grad`` (the map's shape)."""
        target = grad[:, block]
        c, hw = target.shape[1], tuple(target.shape[-2:])
        if not (self.cast or self.resized) and target.stride(-1) == 1:
            _copy_from_patches(target, patches, ph, pw)
            return
        if not self.resized:
            source = self._buffer("map", c, hw)
            _copy_from_patches(source, patches, ph, pw)
        else:
            rows = self._buffer("rows", c, self.size)
            _copy_from_patches(rows, patches, ph, pw)
            resized = self._buffer("resized", c, self.size, last=True).copy_(rows)
            source = resize_bilinear_backward(resized, target.shape, out=self._buffer("map", c, hw, last=True))
        target.copy_(source)


_BLOCK_BYTES = 2 << 20


def _channel_blocks(channels: int, bytes_per_channel: int, device: torch.device) -> list[slice]:
    """Equal channel blocks whose patch matrices take at most about 2 MiB on CPU (one block elsewhere).

    Block by block, the patches just copied are still in cache for the centering and the Gram, and
    no patch-layout buffer exists at full size: on CPU every fresh map-sized buffer costs page
    faults (measured at up to a third of a step), and the per-block Python cost is small.
    """
    count = 1 if device.type != "cpu" else max(1, -(-channels * bytes_per_channel // _BLOCK_BYTES))
    step = -(-channels // min(count, channels))
    return [slice(i, min(channels, i + step)) for i in range(0, channels, step)]


class _Grid(NamedTuple):
    """How _PatchCKA cuts both maps: into ph x pw patches of the map resized to ``size``, in ``dtype``."""

    ph: int
    pw: int
    size: tuple[int, int]
    dtype: torch.dtype

    def blocks(self, fmap: torch.Tensor) -> list[slice]:
        """``fmap``'s channel blocks, sized by their patch matrices in the kernel's dtype."""
        values = fmap.shape[0] * self.size[0] * self.size[1]
        return _channel_blocks(fmap.shape[1], values * self.dtype.itemsize, fmap.device)

    def scratch(self, fmap: torch.Tensor, channels: int) -> torch.Tensor:
        """A (channels, n, p) buffer for patch matrices."""
        n, p = (self.size[0] // self.ph) * (self.size[1] // self.pw), fmap.shape[0] * self.ph * self.pw
        return torch.empty((channels, n, p), dtype=self.dtype, device=fmap.device)


class SideGram(NamedTuple):
    """One side of _PatchCKA: its Gram scaled to unit trace and what the gradient needs of it."""

    gram: torch.Tensor  # k = X_c X_c^T / ||X_c||^2, (C, n, n)
    scale: torch.Tensor  # 1 / ||X_c||^2 per channel, 0 for a constant channel
    self_dot: torch.Tensor  # <k, k> per channel


def _side_gram(fmaps: Sequence[torch.Tensor], grid: _Grid, center: bool, eps: float) -> SideGram:
    """Per-channel Gram of one side's patch matrices (columns centered), scaled to unit trace: the
    channels of ``fmaps`` in order, each map read block by block through one scratch buffer.

    Subtracting the detached column mean from the copied patches keeps the Gram entries small
    (accurate in float32) and needs no gradient term (see _PatchCKA). The constant-feature check
    of linear_cka uses the uncentered squared norm ``||X_c||^2 + n ||mean||^2``.
    """
    blocks = [grid.blocks(fmap) for fmap in fmaps]
    scratch = grid.scratch(fmaps[0], max(b[0].stop for b in blocks))
    n = scratch.shape[1]
    c = sum(fmap.shape[1] for fmap in fmaps)
    gram = torch.empty((c, n, n), dtype=grid.dtype, device=fmaps[0].device)
    mean_sq = torch.zeros(c, dtype=grid.dtype, device=fmaps[0].device)  # n ||mean||^2 per channel
    for fmap, own, offset in zip(fmaps, blocks, _offsets(fmaps)):
        reader = _BlockReader(fmap, grid.dtype, grid.size, own[0].stop)
        for block in own:
            rows, out = scratch[: block.stop - block.start], slice(offset + block.start, offset + block.stop)
            _copy_to_patches(rows, reader.read(block), grid.ph, grid.pw)
            if center:
                _center(rows, out=mean_sq[out])
            torch.bmm(rows, rows.transpose(1, 2), out=gram[out])
        del reader  # its block buffers go before the next map's are made
    sq = batch_trace(gram)
    inv = inverse_norm(sq, sq + mean_sq if center else None, eps)
    scale = inv * inv
    gram.mul_(scale[:, None, None])
    return SideGram(gram, scale, _self_dot(gram))


def _center(rows: torch.Tensor, out: torch.Tensor | None = None) -> None:
    """Subtract each column's mean over the patches from ``rows`` (c, n, p), in place; ``out``
    gets ``n ||mean||^2`` per channel. The backward recomputes the same means from the same rows,
    so no (C, 1, p) means are saved."""
    mean = rows.mean(dim=1, keepdim=True)
    if out is not None:
        torch.mul(_self_dot(mean), rows.shape[1], out=out)
    rows.sub_(mean)


def _offsets(fmaps: Sequence[torch.Tensor]) -> list[int]:
    """Where each map's channels start among the side's."""
    return [sum(f.shape[1] for f in fmaps[:i]) for i in range(len(fmaps))]


def _self_dot(a: torch.Tensor) -> torch.Tensor:
    """Per-channel ``<a, a>_F`` of a (C, ...) tensor, in one reduction without temporaries."""
    return torch.linalg.vector_norm(a.flatten(1), dim=1).square()


def _cross_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-channel ``<a, b>_F`` of (C, n, n) tensors, block by block (no (C, n, n) temporary)."""
    blocks = _channel_blocks(a.shape[0], a[0].numel() * a.element_size(), a.device)
    return torch.cat([torch.linalg.vecdot(a[blk].flatten(1), b[blk].flatten(1)) for blk in blocks])


def _gram_direction(own: torch.Tensor, other: torch.Tensor, other_sq, r, eps: float, reuse: bool) -> torch.Tensor:
    """``other - r <other, other> own - r eps^2 I``: the gradient w.r.t. one side's Gram, up to the
    per-channel factor ``g s`` that only the backward knows (see _PatchCKA). Built in ``other``'s
    buffer when ``reuse`` (that Gram is not needed any more), so a side saves one (C, n, n) tensor."""
    direction = other if reuse else other.clone()
    direction.addcmul_(own, (r * other_sq)[:, None, None], value=-1.0)
    direction.diagonal(dim1=1, dim2=2).sub_((r * (eps * eps))[:, None])
    return direction


class _PatchCKA(torch.autograd.Function):
    """Per-channel biased linear CKA of the patch matrices of pairs of maps (the student maps, then
    the teacher maps, as ``*maps``), with a hand-written backward.

    Forward: k, l = the Grams of the centered patches scaled to unit trace, and
    ``CKA = <k, l> / D`` with ``D = sqrt(<k, k> <l, l> + eps^2)``, as linear_cka computes it.

    Backward, for the student (the teacher is symmetric): with ``s = 1 / (||X_c||^2 + eps^2)``,
    ``r = <k, l> / D^2`` and ``g`` the incoming gradient over D, the gradient w.r.t. the centered
    patches is ``2 M X_c`` for the small symmetric ``M = g s (l - r <l, l> k - r eps^2 I)``; the
    identity term is the scale's own derivative, which only the eps terms keep from vanishing.
    The detached mean needs no term: k and l have zero row sums, so ``M X_c`` is already centered,
    which is what the gradient through the mean would make it.

    Besides the input maps themselves (in their own dtype and size), only ``M / (g s)`` (C, n, n)
    and per-channel scalars are saved: the backward rebuilds X_c from the map block by block (cast,
    resize, patch copy, centering), so no map-sized buffer outlives the forward (on CPU each fresh one costs
    page faults, more than rebuilding the block does). A side's backward is then one batched
    matmul, two copies and, for a resized map, the resize's adjoint. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, grid, center, eps, needs_grad, reduced, *maps):
        # ``reduced``: the teachers' joined SideGram (made for this call), or None for teacher maps
        # after the student maps
        half = len(maps) if reduced is not None else len(maps) // 2
        students, teachers = maps[:half], maps[half:]
        x = _side_gram(students, grid, center, eps)
        y = reduced if reduced is not None else _side_gram(teachers, grid, center, eps)
        kl = _cross_dot(x.gram, y.gram)
        d = torch.sqrt(x.self_dot * y.self_dot + eps * eps)
        r = kl / (d * d)
        need_x, need_y = any(needs_grad[:half]), any(needs_grad[half:])
        dir_x = _gram_direction(x.gram, y.gram, y.self_dot, r, eps, reuse=not need_y) if need_x else None
        dir_y = _gram_direction(y.gram, x.gram, x.self_dot, r, eps, reuse=True) if need_y else None
        ctx.save_for_backward(
            dir_x, dir_y,
            x.scale, y.scale, d,
            *(fmap if need else None for fmap, need in zip(maps, needs_grad)),
        )
        ctx.grid, ctx.center = grid, center
        ctx.channels = [slice(o, o + m.shape[1]) for side in (students, teachers) for m, o in zip(side, _offsets(side))]
        ctx.half = half
        return kl / d

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: this backward is not itself differentiable
            raise RuntimeError(
                "patch_cka has a hand-written first-order backward and cannot be differentiated twice "
                "(backward with create_graph=True)"
            )
        dir_x, dir_y, s_x, s_y, d, *maps = ctx.saved_tensors
        g = 2 * grad / d  # the 2: K = X X^T is symmetric, so dX = (M + M^T) X
        half = ctx.half
        grads = []
        for side, direction, s in ((slice(0, half), dir_x, s_x), (slice(half, None), dir_y, s_y)):
            factor = None if direction is None else g * s
            # a map that needs no gradient was saved as None; its channels still count in the offsets
            for fmap, channels in zip(maps[side], ctx.channels[side]):
                grads.append(None if fmap is None else _map_gradient(
                    direction[channels], factor[channels], fmap, ctx.center, ctx.grid))
        return (None, None, None, None, None, *grads)


def _map_gradient(
    direction: torch.Tensor, factor: torch.Tensor, fmap: torch.Tensor, center: bool, grid: _Grid
) -> torch.Tensor:
    """``factor * direction @ X_c`` per channel, taken back through the resize and the cast into
    ``fmap``'s shape, dtype and layout, block by block."""
    grad = torch.empty_like(fmap)  # in the map's own dtype and layout, as autograd passes it on
    blocks = grid.blocks(fmap)
    rows, out = grid.scratch(fmap, 2 * blocks[0].stop).chunk(2)
    reader = _BlockReader(fmap, grid.dtype, grid.size, blocks[0].stop)
    for block in blocks:
        size = block.stop - block.start
        _copy_to_patches(rows[:size], reader.read(block), grid.ph, grid.pw)
        if center:
            _center(rows[:size])
        torch.bmm(direction[block] * factor[block, None, None], rows[:size], out=out[:size])
        reader.write_grad(grad, block, out[:size], grid.ph, grid.pw)
    return grad
