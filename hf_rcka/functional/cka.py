"""Kernel alignment: Grams, centering, HSIC and linear/RBF CKA (Kornblith et al. 2019).

Everything here sees tensors only (never models or hooks) and is batched over leading dimensions,
so PCKA can run all channels of a feature map in one call. All CKA functions run in float32 or
better with autocast off (see ``numerics``), scale each side to unit Frobenius norm first (CKA is
invariant to isotropic scaling, so this changes nothing but the floating-point range) and add an
epsilon so constant or zero features give a finite value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gram import gram_and_means
from .numerics import DEFAULT_EPS, common_dtype, full_precision, upcast, upcast_dtype

__all__ = [
    "gram_linear", "gram_rbf", "center_gram", "hsic", "cka_from_grams", "linear_cka", "rbf_cka", "sample_rows",
    "min_cka_items", "GramSide", "linear_cka_side", "linear_cka_many",
]


def min_cka_items(center: bool, kernel: str = "linear") -> int:
    """The fewest items (the rows of its Grams) for which CKA is more than a constant.

    After centring, 2 items leave a Gram of rank 1, whose CKA with any other is exactly 1 (1 item:
    0); without centring 1 item gives a 1 x 1 Gram, CKA 1. Either way there is no gradient. An RBF
    Gram's bandwidth is the median distance (``gram_rbf``), which for 2 items is their one distance:
    every pair's Gram is [[1, e^-1/2], [e^-1/2, 1]], so uncentred RBF CKA needs 3 items too.
    """
    return 3 if center or kernel == "rbf" else 2


def sample_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, everything else), the features in the order they lie in memory.

    Linear and RBF Grams (and so CKA) do not depend on the order of the feature columns, so a
    channels_last map (a CNN teacher's) is flattened as (B, H, W, C): a view, where ``flatten(1)``
    would copy the whole map every step.
    """
    order = sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    return x.permute(0, *order).flatten(1)


def _check_rows(x: torch.Tensor, y: torch.Tensor, what: str = "CKA") -> None:
    if x.dim() < 2 or y.dim() < 2:
        raise ValueError(f"{what} needs (..., n, features) inputs, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(
            f"{what} compares the same n items on both sides: got x {tuple(x.shape)} and y {tuple(y.shape)} "
            f"(all but the last dimension must match)"
        )


def _unit_frobenius(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each (n, p) matrix to unit Frobenius norm; a zero matrix stays zero."""
    norm = torch.sqrt(x.pow(2).sum(dim=(-2, -1), keepdim=True) + eps * eps)
    return x / norm


def _center_columns(x: torch.Tensor) -> torch.Tensor:
    """Subtract the column means of each (n, p) matrix.

    A matrix whose centered part is only rounding noise (constant features: below ~100 ulps of
    its uncentered norm) becomes exactly zero; otherwise the unit-norm scaling that follows would
    blow that noise up and CKA would be noise / noise (an unbiased CKA of 1.49 was seen).
    """
    centered = x - x.mean(dim=-2, keepdim=True)
    tol = 100.0 * torch.finfo(x.dtype).eps

    def sq_norm(a: torch.Tensor) -> torch.Tensor:
        return a.detach().pow(2).sum(dim=(-2, -1), keepdim=True)

    return centered * (sq_norm(centered) > tol * tol * sq_norm(x))


def _frob_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=(-2, -1))


def _gram_linear(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram ``x x^T`` over the rows of ``x`` (..., n, p) -> (..., n, n)."""
    return gram_and_means(x, x.dtype, center=False)[0]


def _off_diagonal(square: torch.Tensor) -> torch.Tensor:
    """The n(n-1) off-diagonal entries of (..., n, n) as (..., n(n-1)), without a boolean mask (which
    reads its count back from the device): after the first entry, rows of n + 1 start right after a
    diagonal entry and end on the next one."""
    n = square.shape[-1]
    return square.flatten(-2)[..., 1:].unflatten(-1, (n - 1, n + 1))[..., :-1].flatten(-2)


@full_precision
def gram_rbf(x: torch.Tensor, sigma_frac: float = 1.0, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """RBF Gram with bandwidth ``sigma_frac * median pairwise distance`` (Kornblith et al. 2019).

    The median is taken over off-diagonal distances and detached: the bandwidth is a scale choice,
    not something the student should learn to move.
    """
    x = upcast(x)
    sq = torch.cdist(x, x).pow(2)
    n = x.shape[-2]
    if n > 1:
        median_sq = _off_diagonal(sq.detach()).median(dim=-1).values
    else:
        median_sq = torch.zeros(x.shape[:-2], dtype=x.dtype, device=x.device)
    # The floor is relative to the features' own spread (their mean squared pairwise distance), so
    # RBF CKA stays invariant to scale and shift: an absolute one changed the kernel of features
    # below 1e-4 (CKA 0.79 -> 0.74 at 1e-6). It matters only when most rows coincide (median 0).
    spread = sq.detach().mean(dim=(-2, -1))
    sigma_sq = (sigma_frac**2) * torch.maximum(median_sq, eps * spread).clamp_min(torch.finfo(x.dtype).tiny)
    return torch.exp(-sq / (2.0 * sigma_sq[..., None, None]))


def _center_gram(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11^T/n``, computed as row/column mean removal (O(n^2), no H)."""
    return k - k.mean(dim=-1, keepdim=True) - k.mean(dim=-2, keepdim=True) + k.mean(dim=(-2, -1), keepdim=True)


def _hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Hilbert-Schmidt independence criterion of two Grams (..., n, n).

    The biased estimator is ``<HKH, HLH>_F / (n-1)^2``. The unbiased one (Song et al. 2012) zeroes
    the diagonals and corrects the bias terms; it needs n > 3 and can be slightly negative.
    """
    _check_grams(k, l)
    n = k.shape[-1]
    if not unbiased:
        return _frob_inner(_center_gram(k), _center_gram(l)) / max(n - 1, 1) ** 2
    return _unbiased_hsic_numerator(k, l) / (n * (n - 3))


def _check_grams(k: torch.Tensor, l: torch.Tensor) -> None:
    """Two (..., n, n) Grams of the same n items: broadcasting features or unequal Grams gave a
    number (1.0 for a 6 x 4 feature matrix against itself) instead of an error."""
    for name, gram in (("k", k), ("l", l)):
        if gram.ndim < 2 or gram.shape[-1] != gram.shape[-2]:
            raise ValueError(f"{name} must be a square (..., n, n) Gram matrix, got shape {tuple(gram.shape)}")
    if k.shape[-1] != l.shape[-1]:
        raise ValueError(f"the Grams relate different numbers of items: {k.shape[-1]} and {l.shape[-1]}")


def _unbiased_hsic_numerator(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al.'s unbiased HSIC times ``n (n - 3)``.

    CKA is a ratio of HSICs, so the common ``1 / (n (n - 3))`` cancels; leaving it out keeps the
    values far above the epsilon added to the denominator (with it, an n = 1000 CKA of identical
    features came out as 0.94 instead of 1).
    """
    n = k.shape[-1]
    if n <= 3:
        raise ValueError(f"unbiased HSIC needs more than 3 items, got n={n}")
    # The estimator ignores additive row/column terms, so double-centering first is exact; it
    # removes the large constant part (e.g. an all-ones RBF Gram) that would otherwise cancel to noise.
    k, l = _center_gram(k), _center_gram(l)
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    k = k.masked_fill(eye, 0.0)
    l = l.masked_fill(eye, 0.0)
    trace_kl = _frob_inner(k, l)
    sum_k = k.sum(dim=(-2, -1))
    sum_l = l.sum(dim=(-2, -1))
    cross = (k.sum(dim=-1) * l.sum(dim=-1)).sum(dim=-1)  # 1^T K L 1 for symmetric K
    return trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)


def _cka_from_grams(
    k: torch.Tensor, l: torch.Tensor, center: bool = True, unbiased: bool = False, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """Kernel alignment of two Grams; ``center=False`` gives the uncentered alignment."""
    _check_grams(k, l)
    if unbiased:
        xy, xx, yy = (_unbiased_hsic_numerator(a, b) for a, b in ((k, l), (k, k), (l, l)))
    else:
        if center:
            k, l = _center_gram(k), _center_gram(l)
        xy, xx, yy = _frob_inner(k, l), _frob_inner(k, k), _frob_inner(l, l)
    return xy / torch.sqrt((xx * yy).clamp_min(0.0) + eps * eps)


def _row_normalized_gram(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Gram whose row i is divided by ||x_i||, as the public RCKA code's ``with_l2_norm`` does."""
    k = _gram_linear(x)
    diag = torch.diagonal(k, dim1=-2, dim2=-1)
    return k / torch.sqrt(diag.clamp_min(0.0) + eps * eps)[..., :, None]


def _row_normalized_alignment(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The uncentered alignment of :func:`_row_normalized_gram`'s Grams in the p x q feature form.

    With ``K = diag(a) X X^T`` (``a_i = 1 / ||x_i||``) and ``L = diag(b) Y Y^T``, ``<K, L> =
    sum_ij a_i b_i (x_i . x_j)(y_i . y_j) = <X^T Y, X^T diag(a b) Y>``, and likewise for ``<K, K>``
    and ``<L, L>``: RCKA's inter-class term on 21,841 classes then multiplies batch x batch
    matrices instead of building 21,841 x 21,841 ones (11 GB).
    """
    a = torch.rsqrt(x.pow(2).sum(dim=-1, keepdim=True) + eps * eps)
    b = torch.rsqrt(y.pow(2).sum(dim=-1, keepdim=True) + eps * eps)
    xt, yt = x.transpose(-2, -1), y.transpose(-2, -1)
    xy = _frob_inner(xt @ y, xt @ (y * (a * b)))
    xx = _frob_inner(xt @ x, xt @ (x * (a * a)))
    yy = _frob_inner(yt @ y, yt @ (y * (b * b)))
    return xy / torch.sqrt((xx * yy).clamp_min(0.0) + eps * eps)


def _gram_form_is_cheaper(n: int, p: int, q: int) -> bool:
    """n x n Grams cost n^2 (p + q); the feature form X^T X, Y^T Y, Y^T X costs n (p^2 + q^2 + pq)."""
    return n * (p + q) <= p * p + q * q + p * q


@dataclass(frozen=True)
class GramSide:
    """One side of the default linear CKA, reduced to what that estimator reads of it.

    Linear CKA sees a side X only through its n x n Gram, so a side wider than the batch can be
    reduced to that Gram as soon as it exists (:func:`linear_cka_side`) and the features dropped:
    a teacher's hidden state need not be held through the student's whole forward. Pass it to
    :func:`linear_cka` in place of either side's features; a student's side reduced with gradient
    (``linear_cka_side`` of a tensor that requires grad) passes it back to the features.

    Attributes:
        gram: (..., n, n) Gram of the rows, double-centred (``H K H``) when ``center``, float32 or better.
        mean_sq: (...) squared norm of the column means when ``center`` (the constant-feature check
            needs the uncentred norm, ``trace + n * mean_sq``), else None.
        center: whether the side was centred; it must match the CKA it is used in.
    """

    gram: torch.Tensor
    mean_sq: torch.Tensor | None
    center: bool

    def rows(self, keep: torch.Tensor) -> "GramSide":
        """The side of the kept rows only (``keep``: a boolean mask over the n rows).

        The centred Gram of a subset is the subset of the centred Gram, centred again (``H`` removes
        any constant offset, the old column means included). ``mean_sq`` stays the whole side's: the
        constant-feature check compares the centred norm with ``n`` times it, which is exact for a
        constant side (every row equals the mean) and far from the threshold for any other.
        """
        gram = self.gram[..., keep, :][..., keep]
        return GramSide(_center_gram(gram) if self.center else gram, self.mean_sq, self.center)


@full_precision
def linear_cka_side(y: torch.Tensor, center: bool = True) -> GramSide:
    """``y`` (..., n, q) reduced to its :class:`GramSide`, for a later ``linear_cka(x, side)``.

    Costs what ``linear_cka`` would spend on this side in its n x n Gram form; a large side is read
    in column blocks, as there. For a side no wider than n (``q <= n``) the Gram is no smaller than
    the side, and ``linear_cka`` would have used the cheaper q x q feature form: keep such a side whole.
    """
    if y.dim() < 2:
        raise ValueError(f"a CKA side needs (..., n, features) rows, got shape {tuple(y.shape)}")
    gram, mean_sq = _side_gram(y, upcast_dtype(y), center)
    return GramSide(gram, mean_sq, center)


@full_precision
def linear_cka(
    x: torch.Tensor | GramSide,
    y: torch.Tensor | GramSide,
    center: bool = True,
    row_normalize: bool = False,
    unbiased: bool = False,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Linear CKA between the rows of ``x`` (..., n, p) and ``y`` (..., n, q).

    Returns a float32 tensor of the leading shape ``x.shape[:-2]`` (0-dim for 2-D inputs; float64 for float64
    inputs) in [0, 1]. Differentiable. Picks the cheaper of the n x n Gram form and the p x q
    feature form (``<XX^T, YY^T> = ||Y^T X||^2``), so n = 4096 samples of 64-dim logits never
    builds a 4096 x 4096 matrix and 16 patches of 8192 pixels never builds an 8192 x 8192 one.

    Args:
        center: subtract the column means (equivalent to ``H K H``). ``False`` reproduces the
            public RCKA code's uncentered alignment.
        row_normalize: divide each Gram row by that item's norm (the RCKA code's
            ``with_l2_norm``); only meaningful with ``center=False`` to reproduce that code.
        unbiased: use the unbiased HSIC estimator (Song et al. 2012); implies centering and may
            return slightly negative values for unrelated features.

    Either side may be a :class:`GramSide` made with the same ``center``, for the default estimator
    (not ``row_normalize`` or ``unbiased``): the value, and the gradient through a side reduced
    with one, are the same as with the features it was made from (up to the precision the side was
    reduced in: float32 for a float32 side, where a float64 other side would otherwise promote
    it), always through the n x n Gram form.
    """
    if isinstance(x, GramSide) or isinstance(y, GramSide):
        _check_gram_sides(x, y, center, row_normalize or unbiased)
        return _linear_cka_biased(x, y, center, eps)
    _check_rows(x, y)
    if not (row_normalize or unbiased):
        return _linear_cka_biased(x, y, center, eps)
    x, y = common_dtype(x, y)
    if row_normalize:
        x, y = _unit_frobenius(x, eps), _unit_frobenius(y, eps)
        if not (center or unbiased) and not _gram_form_is_cheaper(x.shape[-2], x.shape[-1], y.shape[-1]):
            return _row_normalized_alignment(x, y, eps)
        k, l = _row_normalized_gram(x, eps), _row_normalized_gram(y, eps)
        return _cka_from_grams(k, l, center=center, unbiased=unbiased, eps=eps)
    # The unbiased HSIC ignores additive row/column terms of the Grams, so centering the columns
    # first changes nothing but removes the large constant parts that cancel badly.
    x, y = _unit_frobenius(_center_columns(x), eps), _unit_frobenius(_center_columns(y), eps)
    return _cka_from_grams(_gram_linear(x), _gram_linear(y), unbiased=True, eps=eps)


def _check_gram_sides(x: torch.Tensor | GramSide, y: torch.Tensor | GramSide, center: bool,
                      other_estimator: bool) -> None:
    if other_estimator:
        raise ValueError("a GramSide serves the default linear CKA only: row_normalize and unbiased need the features")
    for side in (x, y):
        if isinstance(side, GramSide) and side.center != center:
            raise ValueError(f"the GramSide was made with center={side.center}, and this CKA has center={center}")
    if any(not isinstance(side, GramSide) and side.dim() < 2 for side in (x, y)) or _items(x) != _items(y):
        raise ValueError(f"CKA compares the same n items on both sides: got {_describe(x)} and {_describe(y)}")


def _items(side: torch.Tensor | GramSide) -> torch.Size:
    """The leading dims and n of a side: ``(..., n)``."""
    return side.gram.shape[:-1] if isinstance(side, GramSide) else side.shape[:-1]


def _describe(side: torch.Tensor | GramSide) -> str:
    return f"a GramSide of {tuple(side.gram.shape)}" if isinstance(side, GramSide) else f"features {tuple(side.shape)}"


def batch_trace(a: torch.Tensor) -> torch.Tensor:
    """Trace of each (..., n, n) matrix: the squared Frobenius norm of X when ``a = X X^T``."""
    return torch.diagonal(a, dim1=-2, dim2=-1).sum(dim=-1)


def inverse_norm(sq_norm: torch.Tensor, sq_norm_uncentered: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``1 / ||X||_F`` of a side from its squared norm, or 0 where the side is numerically constant.

    A side whose centered norm is below ~100 ulps of its uncentered norm (constant features) holds
    only the rounding noise of the mean; it gets weight 0, so its CKA is 0 rather than noise / noise.
    """
    # a centred trace can round below 0 (-7e-16): rsqrt's NaN would survive the mask (NaN * 0 is NaN)
    inv = torch.rsqrt(sq_norm.clamp_min(0) + eps * eps)
    if sq_norm_uncentered is None:
        return inv
    tol = 100.0 * torch.finfo(sq_norm.dtype).eps
    return inv * (sq_norm.detach() > tol * tol * sq_norm_uncentered)


def _side_gram(x: torch.Tensor, dtype: torch.dtype, center: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One side's n x n Gram ``H K H`` (uncentered when not ``center``) in ``dtype``, and the squared
    norm of its column means (None when not ``center``).

    ``H (X - 1 m^T) = H X`` for any constant m, so subtracting the *detached* mean first keeps the
    Gram entries small (accurate in float32) and costs no backward pass over X; ``H K H`` on the
    small Gram then removes what rounding left of the offset. A large side is read in column
    blocks, each upcast and centred on its own (``gram.gram_and_means``), with or without gradient.
    """
    gram, means = gram_and_means(x, dtype, center)
    if not center:
        return gram, None
    return _center_gram(gram), means.pow(2).sum(dim=(-2, -1))


def _feature_products(x: torch.Tensor, y: torch.Tensor, center: bool) -> tuple[torch.Tensor | None, ...]:
    """``X_c^T X_c`` (p x p), ``Y_c^T Y_c`` (q x q), ``Y_c^T X_c`` (q x p), and the squared norms of
    the two sides' column means (None when not ``center``)."""
    mean_sq_x = mean_sq_y = None
    if center:
        mean_x, mean_y = x.mean(dim=-2, keepdim=True), y.mean(dim=-2, keepdim=True)
        mean_sq_x, mean_sq_y = (m.detach().pow(2).sum(dim=(-2, -1)) for m in (mean_x, mean_y))
        x, y = x - mean_x, y - mean_y
    xt, yt = x.transpose(-2, -1), y.transpose(-2, -1)
    return _gram_linear(xt), _gram_linear(yt), yt @ x, mean_sq_x, mean_sq_y


def _linear_cka_biased(x: torch.Tensor | GramSide, y: torch.Tensor | GramSide, center: bool, eps: float) -> torch.Tensor:
    """The default estimator, with as few passes over the (possibly large) feature tensors as possible.

    The features are centered once; scaling each side to unit Frobenius norm (which keeps the
    products in float range) and the constant-feature check act on the small n x n or p x q
    products: ``||X_c||_F^2`` is the trace of either, and ``||X||^2 = ||X_c||^2 + n ||mean||^2``.
    ``x`` and ``y`` come in their own dtypes: the Gram form upcasts a large side block by block
    (``_side_gram``). Either side may already be reduced to its :class:`GramSide`.
    """
    return _cka_of_products(_items(x)[-1], *_products(x, y, center), center, eps)


def _products(x: torch.Tensor | GramSide, y: torch.Tensor | GramSide, center: bool) -> tuple[torch.Tensor | None, ...]:
    """The cheaper form's products of a pair: the two n x n Grams (``cross`` None), or the p x p,
    q x q and q x p feature products; and the squared norms of the column means (None uncentered)."""
    n, reduced = _items(x)[-1], isinstance(x, GramSide) or isinstance(y, GramSide)
    dtype = torch.promote_types(_side_dtype(x), _side_dtype(y))
    if reduced or _gram_form_is_cheaper(n, x.shape[-1], y.shape[-1]):
        (k, mean_sq_x), (l, mean_sq_y) = _reduced_gram(x, dtype, center), _reduced_gram(y, dtype, center)
        return k, l, None, mean_sq_x, mean_sq_y
    return _feature_products(x.to(dtype), y.to(dtype), center)


def _cka_of_products(n: int, k: torch.Tensor, l: torch.Tensor, cross: torch.Tensor | None,
                     mean_sq_x: torch.Tensor | None, mean_sq_y: torch.Tensor | None, center: bool,
                     eps: float) -> torch.Tensor:
    """CKA from :func:`_products`, batched over any leading dims (pairs stacked, channels)."""
    sq_x, sq_y = batch_trace(k), batch_trace(l)
    if not center:
        inv_x, inv_y = inverse_norm(sq_x, None, eps), inverse_norm(sq_y, None, eps)
    else:
        inv_x = inverse_norm(sq_x, sq_x.detach() + n * mean_sq_x, eps)
        inv_y = inverse_norm(sq_y, sq_y.detach() + n * mean_sq_y, eps)
    k = k * (inv_x * inv_x)[..., None, None]
    l = l * (inv_y * inv_y)[..., None, None]
    if cross is None:
        xy = _frob_inner(k, l)
    else:
        xy = (cross * (inv_x * inv_y)[..., None, None]).pow(2).sum(dim=(-2, -1))
    return xy / torch.sqrt(_frob_inner(k, k) * _frob_inner(l, l) + eps * eps)


@full_precision
def linear_cka_many(xs: list[torch.Tensor | GramSide], ys: list[torch.Tensor | GramSide], center: bool = True,
                    eps: float = DEFAULT_EPS) -> torch.Tensor:
    """The default linear CKA of several pairs of 2-D sides over the same n items, as a (pairs,) tensor.

    The values and gradients of ``linear_cka`` per pair. Each pair still makes its own Grams (the
    sides' widths differ), but the pairs whose Grams share a dtype stack them and go through the
    rest of the estimator (norms, the constant-feature check, the alignment) as one batch: a few
    dozen small ops, and as many in the backward, once instead of once per pair. On a GPU such ops
    cost their launch more than their arithmetic. A pair cheaper in the p x q feature form keeps
    its own call.
    """
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"linear_cka_many needs as many student as teacher sides, at least one: got {len(xs)} and "
                         f"{len(ys)}")
    values: list[torch.Tensor | None] = [None] * len(xs)
    groups: dict[tuple[torch.dtype, int], list[tuple[int, tuple[torch.Tensor | None, ...]]]] = {}
    for i, (x, y) in enumerate(zip(xs, ys)):
        if isinstance(x, GramSide) or isinstance(y, GramSide):
            _check_gram_sides(x, y, center, False)
        else:
            _check_rows(x, y)
        products, items = _products(x, y, center), _items(x)
        if products[2] is None and len(items) == 1:  # two n x n Grams of one set of items
            groups.setdefault((products[0].dtype, items[0]), []).append((i, products))
        else:
            values[i] = _cka_of_products(items[-1], *products, center, eps)
    for (_, n), group in groups.items():
        stacked = [torch.stack([products[j] for _, products in group]) if center or j < 2 else None
                   for j in (0, 1, 3, 4)]
        batch = _cka_of_products(n, stacked[0], stacked[1], None, stacked[2], stacked[3], center, eps)
        if len(group) == len(xs):  # every pair, in order
            return batch
        for (i, _), value in zip(group, batch.unbind(0)):
            values[i] = value
    return torch.stack(values)


def _side_dtype(side: torch.Tensor | GramSide) -> torch.dtype:
    return side.gram.dtype if isinstance(side, GramSide) else upcast_dtype(side)


def _reduced_gram(side: torch.Tensor | GramSide, dtype: torch.dtype, center: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A side's Gram and squared column-mean norm, as :func:`_side_gram` gives them, in ``dtype``."""
    if isinstance(side, GramSide):
        return side.gram.to(dtype), side.mean_sq
    return _side_gram(side, dtype, center)


@full_precision
def rbf_cka(
    x: torch.Tensor,
    y: torch.Tensor,
    sigma_frac: float = 1.0,
    center: bool = True,
    unbiased: bool = False,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """CKA with RBF kernels (bandwidth ``sigma_frac`` x the median distance on each side).

    Same shapes, dtype and range as :func:`linear_cka`; always builds n x n Grams.
    """
    _check_rows(x, y)
    x, y = upcast(x), upcast(y)
    k, l = gram_rbf(x, sigma_frac, eps), gram_rbf(y, sigma_frac, eps)
    return _cka_from_grams(k, l, center=center, unbiased=unbiased, eps=eps)


# The public Gram-level functions follow the module's rule (float32 or better, autocast off) for
# callers who hand them low-precision tensors: float16 Grams gave an infinite HSIC and a NaN CKA,
# bfloat16 Grams a CKA of 1.0. The losses call the private versions on inputs already upcast.


@full_precision
def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram ``x x^T`` over the rows of floating-point ``x`` (..., n, p) -> (..., n, n),
    in float32 or better."""
    return _gram_linear(upcast(x))


@full_precision
def center_gram(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11^T/n``, computed as row/column mean removal (O(n^2), no H)."""
    return _center_gram(upcast(k))


@full_precision
def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Hilbert-Schmidt independence criterion of two Grams (..., n, n).

    The biased estimator is ``<HKH, HLH>_F / (n-1)^2``. The unbiased one (Song et al. 2012) zeroes
    the diagonals and corrects the bias terms; it needs n > 3 and can be slightly negative.
    """
    return _hsic(*common_dtype(k, l), unbiased=unbiased)


@full_precision
def cka_from_grams(
    k: torch.Tensor, l: torch.Tensor, center: bool = True, unbiased: bool = False, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """Kernel alignment of two Grams; ``center=False`` gives the uncentered alignment."""
    return _cka_from_grams(*common_dtype(k, l), center=center, unbiased=unbiased, eps=eps)
