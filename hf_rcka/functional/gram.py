"""Linear Grams of large feature sides, without whole upcast or centred copies of them.

A side of a batch-relational loss can be a whole hidden state, B x C*H*W (RegNetY-16GF's first
stage holds 702,464 values per image). Its Gram is computed in float32 or better with the column
means taken off first, so that the entries stay small; done whole, that makes a float32 copy and
a centred copy of the side at the end of the student's forward, where its activations peak, and
again in the backward. Here a large side is read in column blocks instead, and the Gram's backward
saves the side itself (a student's hidden state, which its own backward holds anyway). ``cka``
builds its estimators on :func:`gram_and_means`.
"""

from __future__ import annotations

import torch

__all__ = ["gram_and_means"]


class _SymmetricGram(torch.autograd.Function):
    """``X_c X_c^T`` in ``dtype``, ``X_c`` being ``x`` with its detached column means subtracted when
    ``center`` (else ``x``); returns the Gram and the column means (None without ``center``).

    Its backward is one matmul per column block, ``(G + G^T) X_c``, instead of autograd's two plus a
    sum (the Gram's backward dominates batch-relational losses on large features, so this saves
    about a third of their matmul work), and it rebuilds ``X_c`` from the saved ``x``. The detached
    mean needs no gradient term: ``H X_c = H X``, and the Grams are double-centred after. The
    backward of a backward (``create_graph``) runs whole, in differentiable ops.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype, center: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        gram, means = _centred_gram(x, dtype, center)
        ctx.save_for_backward(x, means)
        ctx.dtype = dtype
        if means is not None:
            ctx.mark_non_differentiable(means)
        return gram, means

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _means_grad: None) -> tuple[torch.Tensor, None, None]:
        x, means = ctx.saved_tensors
        both = grad + grad.transpose(-2, -1)
        columns = _column_blocks(x)
        if torch.is_grad_enabled() or len(columns) == 1:
            return (both @ _offset_rows(x, means, ctx.dtype)).to(x.dtype), None, None
        grad_x = torch.empty_like(x)
        for block in columns:
            grad_x[..., block].copy_(both @ _offset_rows(x[..., block], _columns(means, block), ctx.dtype))
        return grad_x, None, None


# Values per column block in which a large side is upcast and centred for its Gram. A teacher's paired
# map is often the largest tensor of the step (RegNetY-16GF's first stage holds 702,464 values per
# image): whole, its float32 copy and its centred copy would both exist at once, on top of the
# student's activations. A block's float32 rows and the matmul that reads them in the backward
# exist at once, at the start of the backward, where the step's memory peaks for a CNN student.
# On a GPU blocks hold 2**22 values (16 MiB in float32) and a side is cut in at most 8 of them
# (larger ones at a GPU's batch sizes), so that its few extra kernel launches per block stay few;
# on the CPU, where a block's Python and launch cost is small next to its copies, blocks hold
# 2**20 values (4 MiB), up to 64 of them. A block is at least _MIN_BLOCK_COLUMNS wide, so many
# small Grams (patch CKA's (C, n, n)) still get matmuls of some size.
_BLOCK_VALUES = {"cpu": 1 << 20}
_MAX_BLOCKS = {"cpu": 64}
_DEFAULT_BLOCK_VALUES, _DEFAULT_MAX_BLOCKS = 1 << 22, 8
_MIN_BLOCK_COLUMNS = 256


def _column_blocks(x: torch.Tensor) -> list[slice]:
    """The column blocks :func:`_centred_gram` reads ``x`` (..., n, p) in: one for a small ``x`` and
    under ``torch.compile``, where a loop whose length follows the batch size would recompile the
    graph for every new batch size."""
    p = x.shape[-1]
    values = _BLOCK_VALUES.get(x.device.type, _DEFAULT_BLOCK_VALUES)
    if x.numel() <= values or torch.compiler.is_compiling():
        return [slice(0, p)]
    most = _MAX_BLOCKS.get(x.device.type, _DEFAULT_MAX_BLOCKS)
    width = max(_MIN_BLOCK_COLUMNS, values // max(1, x[..., :1].numel()), -(-p // most))
    return [slice(start, start + width) for start in range(0, p, width)]


def _columns(means: torch.Tensor | None, block: slice) -> torch.Tensor | None:
    return None if means is None else means[..., block]


def _offset_rows(x: torch.Tensor, means: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    return _minus(x.to(dtype), x, means)


def _minus(rows: torch.Tensor, x: torch.Tensor, means: torch.Tensor | None) -> torch.Tensor:
    """``rows`` (``x`` upcast) minus ``means``, in place where the upcast made a copy of ``x``: the
    block's upcast and centred rows then share one buffer (a subtraction of mixed dtypes would
    still make its own upcast copy first, on the CPU). Only a change of dtype is sure to have made
    a copy (under ``torch.func`` a same-dtype ``to`` hands out another object for ``x`` itself)."""
    if means is None:
        return rows
    return rows - means if rows.dtype == x.dtype else rows.sub_(means)


def _centred_rows(x: torch.Tensor, dtype: torch.dtype, center: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` upcast to ``dtype``, minus its detached column means when ``center`` (taken from the
    upcast rows, so ``x`` is read once); and those means."""
    rows = x.to(dtype)  # not detached: forward-mode AD (jvp) passes through the path without gradient
    means = rows.detach().mean(dim=-2, keepdim=True) if center else None
    return _minus(rows, x, means), means


def _centred_gram(x: torch.Tensor, dtype: torch.dtype, center: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``X_c X_c^T`` in ``dtype`` and the column means (see :class:`_SymmetricGram`), summed over column
    blocks (``_column_blocks``), each upcast and centred on its own: no whole upcast or centred copy
    of ``x`` exists, and ``x`` is read once. Column means are per column, so the blocks' means are the
    whole side's."""
    columns = _column_blocks(x)
    if len(columns) == 1:
        rows, means = _centred_rows(x, dtype, center)
        return rows @ rows.transpose(-2, -1), means
    n = x.shape[-2]
    gram = x.new_zeros((*x.shape[:-1], n), dtype=dtype)
    means = x.new_empty((*x.shape[:-2], 1, x.shape[-1]), dtype=dtype) if center else None
    stacked = gram.view(-1, n, n)
    for block in columns:
        rows, block_means = _centred_rows(x[..., block], dtype, center)
        if center:
            means[..., block] = block_means
        rows = rows.reshape(-1, n, rows.shape[-1])
        stacked.baddbmm_(rows, rows.transpose(-2, -1))
    return gram, means


def gram_and_means(x: torch.Tensor, dtype: torch.dtype, center: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Linear-kernel Gram over the rows of ``x`` (..., n, p) -> (..., n, n) in ``dtype``, of the rows
    minus their detached column means when ``center``; and those means (None without ``center``)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _SymmetricGram.apply(x, dtype, center)
    return _centred_gram(x, dtype, center)
