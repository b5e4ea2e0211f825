"""Pure tensor math behind every hf_rcka loss: Grams, centering, HSIC, CKA, Nystrom, KD terms.

Everything here sees tensors only (never models or hooks) and is batched over leading dimensions
where that is natural, so PCKA can run all channels of a feature map in one call.

Numerics: kernel alignment multiplies feature entries twice (Gram entries are sums of products),
which overflows float16 and loses most digits in bfloat16. All CKA/Gram functions therefore run
with autocast disabled in float32 (float64 inputs stay float64, which gradcheck needs), scale each
side to unit Frobenius norm first (CKA is invariant to isotropic scaling, so this changes nothing
but the floating-point range) and add an epsilon so constant or zero features give a finite value.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F

__all__ = [
    "gram_linear",
    "gram_rbf",
    "center_gram",
    "hsic",
    "cka_from_grams",
    "linear_cka",
    "rbf_cka",
    "patchify",
    "patch_cka",
    "landmark_similarity",
    "nystrom_approximation",
    "class_sums",
    "kernel_transfer_loss",
    "kd_loss",
    "srd_distance",
    "srd_correlation",
    "upcast",
]

DEFAULT_EPS = 1e-8
_Fn = TypeVar("_Fn", bound=Callable)


def _full_precision(fn: _Fn) -> _Fn:
    """Run ``fn`` with autocast off, so matmuls inside stay in float32 under bf16/fp16 training."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device_type = next(
            (a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu"
        )
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def upcast(x: torch.Tensor) -> torch.Tensor:
    """The dtype losses compute in: float64 stays float64 (for gradcheck), every other float
    dtype (bf16, fp16, fp32) becomes float32. Use this instead of ``.float()``, which would
    silently drop float64 inputs to float32."""
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    return x if x.dtype == torch.float64 else x.float()


_upcast = upcast


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


class _SymmetricGram(torch.autograd.Function):
    """``x x^T`` whose backward is one matmul, ``(G + G^T) x``, instead of autograd's two plus a sum.

    The Gram's backward dominates batch-relational losses on large features (B x C*H*W), so this
    saves about a third of their matmul work. The backward is written in differentiable ops, so
    double backward still works.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x @ x.transpose(-2, -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return (grad + grad.transpose(-2, -1)) @ x


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram ``x x^T`` over the rows of ``x`` (..., n, p) -> (..., n, n)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _SymmetricGram.apply(x)
    return x @ x.transpose(-2, -1)


@_full_precision
def gram_rbf(x: torch.Tensor, sigma_frac: float = 1.0, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """RBF Gram with bandwidth ``sigma_frac * median pairwise distance`` (Kornblith et al. 2019).

    The median is taken over off-diagonal distances and detached: the bandwidth is a scale choice,
    not something the student should learn to move.
    """
    x = _upcast(x)
    sq = torch.cdist(x, x).pow(2)
    n = x.shape[-2]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=x.device)
    if n > 1:
        median_sq = sq.detach()[..., off_diag].median(dim=-1).values
    else:
        median_sq = torch.zeros(x.shape[:-2], dtype=x.dtype, device=x.device)
    sigma_sq = (sigma_frac**2) * median_sq.clamp_min(eps)
    return torch.exp(-sq / (2.0 * sigma_sq[..., None, None]))


def center_gram(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11^T/n``, computed as row/column mean removal (O(n^2), no H)."""
    return k - k.mean(dim=-1, keepdim=True) - k.mean(dim=-2, keepdim=True) + k.mean(dim=(-2, -1), keepdim=True)


def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Hilbert-Schmidt independence criterion of two Grams (..., n, n).

    The biased estimator is ``<HKH, HLH>_F / (n-1)^2``. The unbiased one (Song et al. 2012) zeroes
    the diagonals and corrects the bias terms; it needs n > 3 and can be slightly negative.
    """
    n = k.shape[-1]
    if not unbiased:
        return _frob_inner(center_gram(k), center_gram(l)) / max(n - 1, 1) ** 2
    return _unbiased_hsic_numerator(k, l) / (n * (n - 3))


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
    k, l = center_gram(k), center_gram(l)
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    k = k.masked_fill(eye, 0.0)
    l = l.masked_fill(eye, 0.0)
    trace_kl = _frob_inner(k, l)
    sum_k = k.sum(dim=(-2, -1))
    sum_l = l.sum(dim=(-2, -1))
    cross = (k.sum(dim=-1) * l.sum(dim=-1)).sum(dim=-1)  # 1^T K L 1 for symmetric K
    return trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)


def cka_from_grams(
    k: torch.Tensor, l: torch.Tensor, center: bool = True, unbiased: bool = False, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """Kernel alignment of two Grams; ``center=False`` gives the uncentered alignment."""
    if unbiased:
        xy, xx, yy = (_unbiased_hsic_numerator(a, b) for a, b in ((k, l), (k, k), (l, l)))
    else:
        if center:
            k, l = center_gram(k), center_gram(l)
        xy, xx, yy = _frob_inner(k, l), _frob_inner(k, k), _frob_inner(l, l)
    return xy / torch.sqrt((xx * yy).clamp_min(0.0) + eps * eps)


def _row_normalized_gram(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Gram whose row i is divided by ||x_i||, as the public RCKA code's ``with_l2_norm`` does."""
    k = gram_linear(x)
    diag = torch.diagonal(k, dim1=-2, dim2=-1)
    return k / torch.sqrt(diag.clamp_min(0.0) + eps * eps)[..., :, None]


def _gram_form_is_cheaper(n: int, p: int, q: int) -> bool:
    """n x n Grams cost n^2 (p + q); the feature form X^T X, Y^T Y, Y^T X costs n (p^2 + q^2 + pq)."""
    return n * (p + q) <= p * p + q * q + p * q


@_full_precision
def linear_cka(
    x: torch.Tensor,
    y: torch.Tensor,
    center: bool = True,
    row_normalize: bool = False,
    unbiased: bool = False,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Linear CKA between the rows of ``x`` (..., n, p) and ``y`` (..., n, q).

    Returns a float32 tensor of shape ``x.shape[:-2]`` (0-dim for 2-D inputs; float64 for float64
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
    """
    _check_rows(x, y)
    x, y = _upcast(x), _upcast(y)
    if x.dtype != y.dtype:
        x, y = x.double(), y.double()
    if row_normalize:
        x, y = _unit_frobenius(x, eps), _unit_frobenius(y, eps)
        k, l = _row_normalized_gram(x, eps), _row_normalized_gram(y, eps)
        return cka_from_grams(k, l, center=center, unbiased=unbiased, eps=eps)
    if unbiased:
        # The unbiased HSIC ignores additive row/column terms of the Grams, so centering the
        # columns first changes nothing but removes the large constant parts that cancel badly.
        x, y = _unit_frobenius(_center_columns(x), eps), _unit_frobenius(_center_columns(y), eps)
        return cka_from_grams(gram_linear(x), gram_linear(y), unbiased=True, eps=eps)
    return _linear_cka_biased(x, y, center, eps)


def _trace(a: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(a, dim1=-2, dim2=-1).sum(dim=-1)


def _inverse_norm(sq_norm: torch.Tensor, sq_norm_uncentered: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``1 / ||X||_F`` of a side from its squared norm, or 0 where the side is numerically constant.

    A side whose centered norm is below ~100 ulps of its uncentered norm (constant features) holds
    only the rounding noise of the mean; it gets weight 0, so its CKA is 0 rather than noise / noise.
    """
    inv = torch.rsqrt(sq_norm + eps * eps)
    if sq_norm_uncentered is None:
        return inv
    tol = 100.0 * torch.finfo(sq_norm.dtype).eps
    return inv * (sq_norm.detach() > tol * tol * sq_norm_uncentered)


def _gram_products(x: torch.Tensor, y: torch.Tensor, means: tuple | None) -> tuple[torch.Tensor, ...]:
    """Centered n x n Grams ``H K H`` and ``H L H`` (uncentered when ``means`` is None).

    ``H (X - 1 m^T) = H X`` for any constant m, so subtracting the *detached* mean first keeps the
    Gram entries small (accurate in float32) and costs no backward pass over X; ``H K H`` on the
    small Gram then removes what rounding left of the offset.
    """
    if means is None:
        return gram_linear(x), gram_linear(y), None
    k, l = gram_linear(x - means[0]), gram_linear(y - means[1])
    return center_gram(k), center_gram(l), None


def _feature_products(x: torch.Tensor, y: torch.Tensor, center: bool) -> tuple[torch.Tensor, ...]:
    """``X_c^T X_c`` (p x p), ``Y_c^T Y_c`` (q x q) and ``Y_c^T X_c`` (q x p)."""
    if center:
        x, y = x - x.mean(dim=-2, keepdim=True), y - y.mean(dim=-2, keepdim=True)
    xt, yt = x.transpose(-2, -1), y.transpose(-2, -1)
    return gram_linear(xt), gram_linear(yt), yt @ x


def _linear_cka_biased(x: torch.Tensor, y: torch.Tensor, center: bool, eps: float) -> torch.Tensor:
    """The default estimator, with as few passes over the (possibly large) feature tensors as possible.

    The features are centered once; scaling each side to unit Frobenius norm (which keeps the
    products in float range) and the constant-feature check act on the small n x n or p x q
    products: ``||X_c||_F^2`` is the trace of either, and ``||X||^2 = ||X_c||^2 + n ||mean||^2``.
    """
    n = x.shape[-2]
    means = (x.detach().mean(dim=-2, keepdim=True), y.detach().mean(dim=-2, keepdim=True)) if center else None
    if _gram_form_is_cheaper(n, x.shape[-1], y.shape[-1]):
        k, l, cross = _gram_products(x, y, means)
    else:
        k, l, cross = _feature_products(x, y, center)
    sq_x, sq_y = _trace(k), _trace(l)
    if means is None:
        inv_x, inv_y = _inverse_norm(sq_x, None, eps), _inverse_norm(sq_y, None, eps)
    else:
        uncentered = [sq.detach() + n * m.pow(2).sum(dim=(-2, -1)) for sq, m in zip((sq_x, sq_y), means)]
        inv_x, inv_y = _inverse_norm(sq_x, uncentered[0], eps), _inverse_norm(sq_y, uncentered[1], eps)
    k = k * (inv_x * inv_x)[..., None, None]
    l = l * (inv_y * inv_y)[..., None, None]
    if cross is None:
        xy = _frob_inner(k, l)
    else:
        xy = (cross * (inv_x * inv_y)[..., None, None]).pow(2).sum(dim=(-2, -1))
    return xy / torch.sqrt(_frob_inner(k, k) * _frob_inner(l, l) + eps * eps)


@_full_precision
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
    x, y = _upcast(x), _upcast(y)
    k, l = gram_rbf(x, sigma_frac, eps), gram_rbf(y, sigma_frac, eps)
    return cka_from_grams(k, l, center=center, unbiased=unbiased, eps=eps)


# --------------------------------------------------------------------------------------------
# Patch-wise CKA (PCKA)
# --------------------------------------------------------------------------------------------
#
# Per channel, PCKA compares the n = gh * gw patches of a map as the rows of an (n, B * ph * pw)
# matrix. The hand-written kernel that computes it on CPU (and the plain autograd path used
# elsewhere) live in pcka_kernel.py.


def _effective_patch(size: int, patch_size: int) -> int:
    """Patch side for one axis: ``patch_size``, shrunk so a small map still has >= 2 patches."""
    return max(1, min(patch_size, size // 2))


def _check_map(fmap: torch.Tensor) -> None:
    if fmap.dim() != 4:
        raise ValueError(f"patchify expects a (B, C, H, W) feature map, got shape {tuple(fmap.shape)}")


def _fit_to_patches(fmap: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, int, int]:
    """The patch sides (ph, pw) for ``fmap``, and ``fmap`` resized (bilinear) up to whole patches."""
    _, _, h, w = fmap.shape
    ph, pw = _effective_patch(h, patch_size), _effective_patch(w, patch_size)
    gh, gw = -(-h // ph), -(-w // pw)
    if (gh * ph, gw * pw) != (h, w):
        fmap = F.interpolate(fmap, size=(gh * ph, gw * pw), mode="bilinear", align_corners=False)
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


@_full_precision
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

    Values and gradients are those of ``linear_cka(patchify(student), patchify(teacher))``, computed
    for all channels together (no loop over channels). ``backend``: ``"kernel"`` is the
    hand-written forward/backward of ``pcka_kernel`` (a few batched ops per block of channels,
    measured faster on CPU; not twice differentiable: a backward with ``create_graph=True``
    raises), ``"autograd"`` the plain composition, ``"auto"`` the kernel on CPU and autograd
    elsewhere. With ``transpose=True`` the CKA of the transposed patch matrices (pixel relations)
    is averaged in. A 1 x 1 map has a single patch and no relations to align: it returns ones (a
    zero loss).
    """
    if student_fmap.shape != teacher_fmap.shape:
        raise ValueError(
            f"patch_cka needs aligned maps of equal shape, got student {tuple(student_fmap.shape)} and "
            f"teacher {tuple(teacher_fmap.shape)}; use the 'patch_match' adapter with project: true"
        )
    _check_map(student_fmap)
    s, t = _upcast(student_fmap), _upcast(teacher_fmap)
    if s.dtype != t.dtype:
        s, t = s.double(), t.double()
    s, ph, pw = _fit_to_patches(s, patch_size)
    t, _, _ = _fit_to_patches(t, patch_size)
    if (s.shape[2] // ph) * (s.shape[3] // pw) < 2:
        return torch.ones(s.shape[1], dtype=s.dtype, device=s.device) + 0.0 * s.sum()
    from . import pcka_kernel  # the kernel module builds on this one

    if backend not in pcka_kernel.BACKENDS:
        raise ValueError(f"patch_cka backend must be one of {pcka_kernel.BACKENDS}, got {backend!r}")
    backend = pcka_kernel.default_backend(s.device) if backend == "auto" else backend
    kernel = pcka_kernel.patch_cka_kernel if backend == "kernel" else pcka_kernel.patch_cka_autograd
    sim = kernel(s, t, ph, pw, center, eps)
    if transpose:
        rows_s, rows_t = _patch_rows(s, ph, pw), _patch_rows(t, ph, pw)
        sim = 0.5 * (sim + linear_cka(rows_s.transpose(-2, -1), rows_t.transpose(-2, -1), center=center, eps=eps))
    return sim


# --------------------------------------------------------------------------------------------
# Nystrom kernel transfer (EKT)
# --------------------------------------------------------------------------------------------


def landmark_similarity(features: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """The Nystrom partial kernel ``C = X D^T``: (B, d) x (m, d) -> (B, m)."""
    if features.shape[-1] != landmarks.shape[-1]:
        raise ValueError(
            f"features {tuple(features.shape)} and landmarks {tuple(landmarks.shape)} differ in feature size"
        )
    return features @ landmarks.transpose(-2, -1)


@_full_precision
def nystrom_approximation(features: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Full-Gram approximation ``C W^+ C^T`` (n x n); for analysis and tests, not training."""
    features, landmarks = _upcast(features), _upcast(landmarks)
    c = landmark_similarity(features, landmarks)
    w = gram_linear(landmarks)
    return c @ torch.linalg.pinv(w, hermitian=True) @ c.transpose(-2, -1)


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums (num_classes, d) and counts (num_classes,), for running class centres."""
    sums = torch.zeros(num_classes, features.shape[-1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    return sums, counts


def _common_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upcast both and promote to one dtype (float32 landmark buffers meet float64 features)."""
    a, b = _upcast(a), _upcast(b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


@_full_precision
def kernel_transfer_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    student_landmarks: torch.Tensor,
    teacher_landmarks: torch.Tensor,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """EKT: match the student's and teacher's (B, m) partial kernels against their own landmarks.

    ``smooth_l1(C_s, C_t, sum) / ||C_t||_F`` as in the public EKT code. Landmarks live in each
    model's own feature space, so no projector is needed; cost is O(B m d), linear in the batch.
    """
    if student_features.shape[0] != teacher_features.shape[0]:
        raise ValueError(
            f"student features {tuple(student_features.shape)} and teacher features "
            f"{tuple(teacher_features.shape)} have different batch sizes"
        )
    if student_landmarks.shape[0] != teacher_landmarks.shape[0]:
        raise ValueError(
            f"student landmarks {tuple(student_landmarks.shape)} and teacher landmarks "
            f"{tuple(teacher_landmarks.shape)} differ in count"
        )
    c_s = landmark_similarity(*_common_dtype(student_features, student_landmarks))
    c_t = landmark_similarity(*_common_dtype(teacher_features, teacher_landmarks))
    norm = torch.sqrt(c_t.pow(2).sum() + eps * eps)
    return F.smooth_l1_loss(c_s, c_t, reduction="sum") / norm


# --------------------------------------------------------------------------------------------
# Logit and projector terms
# --------------------------------------------------------------------------------------------


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} needs equal shapes, got {a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)}")


@_full_precision
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: ``T^2 KL(softmax(t/T) || softmax(s/T))``, averaged over the batch."""
    _check_same_shape(student_logits, teacher_logits, "KD", "student logits", "teacher logits")
    log_p_s = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    log_p_t = F.log_softmax(_upcast(teacher_logits) / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


@_full_precision
def srd_distance(projected: torch.Tensor, teacher: torch.Tensor, alpha: float = 4.0, eps: float = 1e-5) -> torch.Tensor:
    """SRD's distance ``log(mean_b sum_d |s - t|^alpha + eps)`` on normalised (B, d) features.

    The public code takes the log of the sum over the batch too; the batch mean only shifts the
    loss by log(B) and leaves its gradient unchanged, and keeps its value comparable across batch sizes.
    """
    _check_same_shape(projected, teacher, "SRD", "projected student features", "teacher features")
    diff = (_upcast(projected) - _upcast(teacher)).abs().pow(alpha)
    return torch.log(diff.sum(dim=-1).mean() + eps)


@_full_precision
def srd_correlation(projected: torch.Tensor, teacher: torch.Tensor, alpha: float = 4.0, eps: float = 1e-5) -> torch.Tensor:
    """SRD's DeiT-code variant: ``c_d = mean_b(s_bd t_bd)``, loss ``log(sum_d |c_d - 1|^alpha + eps)``."""
    _check_same_shape(projected, teacher, "SRD", "projected student features", "teacher features")
    corr = (_upcast(projected) * _upcast(teacher)).mean(dim=0)
    return torch.log((corr - 1.0).abs().pow(alpha).sum() + eps)
