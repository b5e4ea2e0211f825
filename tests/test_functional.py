"""Tests for hf_rcka.functional against naive float64 references written out here.

Dimensions are kept distinct (5 or 17 items, width 36, 3 or 7 features) so that a transposed or
mixed-up axis cannot pass by accident.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_rcka import functional as fn
from hf_rcka.functional import pcka_kernel
from hf_rcka.functional.cka import _gram_form_is_cheaper, min_cka_items

DOUBLE = torch.float64


# ----------------------------------------------------------------------------------------------
# Naive references (explicit centering matrix, O(n^3) traces), float64
# ----------------------------------------------------------------------------------------------


def centering_matrix(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=DOUBLE) - torch.ones(n, n, dtype=DOUBLE) / n


def naive_cka_from_grams(k: torch.Tensor, l: torch.Tensor, center: bool = True) -> torch.Tensor:
    """tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)) with an explicit H (H = I when center is False)."""
    n = k.shape[0]
    h = centering_matrix(n) if center else torch.eye(n, dtype=DOUBLE)
    kh, lh = k.double() @ h, l.double() @ h
    return torch.trace(kh @ lh) / torch.sqrt(torch.trace(kh @ kh) * torch.trace(lh @ lh))


def naive_linear_cka(x: torch.Tensor, y: torch.Tensor, center: bool = True) -> torch.Tensor:
    x, y = x.double(), y.double()
    return naive_cka_from_grams(x @ x.T, y @ y.T, center)


def naive_rbf_gram(x: torch.Tensor, sigma_frac: float) -> torch.Tensor:
    """RBF Gram, bandwidth^2 = sigma_frac^2 * (lower) median of the off-diagonal squared distances.

    The median is detached: the library treats the bandwidth as a constant scale choice.
    """
    x = x.double()
    sq = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    n = x.shape[0]
    off_diag = sorted(sq[i, j].item() for i in range(n) for j in range(n) if i != j)
    median = off_diag[(len(off_diag) - 1) // 2]
    return torch.exp(-sq / (2.0 * sigma_frac**2 * median))


def naive_rbf_cka(x, y, sigma_frac: float = 1.0, center: bool = True) -> torch.Tensor:
    return naive_cka_from_grams(naive_rbf_gram(x, sigma_frac), naive_rbf_gram(y, sigma_frac), center)


def naive_unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """U-centering (Szekely & Rizzo 2014): <U(K), U(L)> / (n (n - 3)), equal to Song et al.'s estimator."""

    def u_center(a: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        a = a.double().clone()
        a.fill_diagonal_(0.0)
        u = torch.zeros_like(a)
        total = a.sum()
        for i in range(n):
            for j in range(n):
                if i != j:
                    u[i, j] = a[i, j] - a[i].sum() / (n - 2) - a[:, j].sum() / (n - 2) + total / ((n - 1) * (n - 2))
        return u

    n = k.shape[0]
    return (u_center(k) * u_center(l)).sum() / (n * (n - 3))


def random_orthogonal(p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=DOUBLE))
    return q * torch.sign(torch.diagonal(r))


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = DOUBLE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DOUBLE).to(dtype)


def related_pair(n: int = 17, p: int = 36, q: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, p) and y (n, q) that share structure, so CKA is well inside (0, 1)."""
    x = randn(n, p, seed=seed)
    k = min(p, q)
    y = x[:, :k] @ randn(k, q, seed=seed + 1) + 0.7 * randn(n, q, seed=seed + 2)
    return x, y


# ----------------------------------------------------------------------------------------------
# Linear CKA: both computation paths against the naive reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize(
    "n,p,q,gram_path",
    [(5, 36, 7, True), (17, 36, 40, True), (300, 3, 7, False), (120, 5, 4, False)],
)
def test_linear_cka_matches_naive_reference_on_both_paths(n, p, q, gram_path, center):
    # The shapes force the path; check that they really do.
    assert _gram_form_is_cheaper(n, p, q) is gram_path
    x, y = related_pair(n, p, q, seed=n)
    got = fn.linear_cka(x, y, center=center)
    want = naive_linear_cka(x, y, center=center)
    assert got.dtype == DOUBLE
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert 0.05 < want.item() < 0.999  # a non-trivial value, so the comparison means something


@pytest.mark.parametrize("n,p,q", [(5, 36, 7), (300, 3, 7)])
def test_linear_cka_gradient_matches_naive_reference(n, p, q):
    x, y = related_pair(n, p, q, seed=3)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    fn.linear_cka(x1, y).backward()
    naive_linear_cka(x2, y).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("n,p,q", [(5, 36, 7), (300, 3, 7)])
def test_linear_cka_float32_close_to_float64_reference(n, p, q):
    x, y = related_pair(n, p, q, seed=4)
    got = fn.linear_cka(x.float(), y.float())
    assert got.dtype == torch.float32
    assert abs(got.item() - naive_linear_cka(x.float(), y.float()).item()) < 1e-5


# ----------------------------------------------------------------------------------------------
# RBF CKA
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_frac", [1.0, 0.5])
@pytest.mark.parametrize("center", [True, False])
def test_rbf_cka_matches_naive_reference(sigma_frac, center):
    x, y = related_pair(17, 36, 7, seed=5)
    got = fn.rbf_cka(x, y, sigma_frac=sigma_frac, center=center)
    want = naive_rbf_cka(x, y, sigma_frac, center)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert 0.05 < want.item() < 0.999


def test_gram_rbf_matches_naive_reference():
    x = randn(17, 36, seed=6)
    torch.testing.assert_close(fn.gram_rbf(x, 0.8), naive_rbf_gram(x, 0.8), rtol=1e-10, atol=1e-12)


def test_fewest_items_for_a_cka_that_is_not_constant():
    """Uncentred RBF CKA of 2 items is 1 whatever the items (the median bandwidth is their one
    distance, so both Grams are alike): a batch of 2 counted a constant term, where it is left
    out as for centred CKA; uncentred linear CKA of 2 items does vary."""
    from hf_rcka.losses.rcka import FeatureCKALoss, RCKALoss

    pairs = [(randn(2, 5, seed=s, dtype=torch.float32), randn(2, 3, seed=s + 9, dtype=torch.float32)) for s in range(4)]
    assert all(fn.rbf_cka(x, y, center=False).item() == pytest.approx(1.0, abs=1e-6) for x, y in pairs)
    assert len({round(fn.linear_cka(x, y, center=False).item(), 4) for x, y in pairs}) == 4
    assert [min_cka_items(center, kernel) for center, kernel in
            ((True, "linear"), (False, "linear"), (True, "rbf"), (False, "rbf"))] == [3, 2, 3, 3]
    assert RCKALoss(kernel="rbf", center=False).min_relation_rows == 3
    assert FeatureCKALoss(kernel="rbf", center=False).min_relation_rows == 3
    assert FeatureCKALoss(center=False).min_relation_rows == 2


def test_rbf_cka_gradient_matches_reference_with_constant_bandwidth():
    x, y = related_pair(17, 36, 7, seed=7)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    fn.rbf_cka(x1, y).backward()
    naive_rbf_cka(x2, y).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-7, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Properties: identity, symmetry, range, invariances
# ----------------------------------------------------------------------------------------------

CKA_FNS = {
    "linear": fn.linear_cka,
    "linear_feature_path": fn.linear_cka,
    "rbf": fn.rbf_cka,
}


def _pair_for(kind: str, seed: int = 0):
    if kind == "linear_feature_path":
        return related_pair(150, 5, 4, seed=seed)
    return related_pair(17, 36, 7, seed=seed)


@pytest.mark.parametrize("kind", list(CKA_FNS))
def test_cka_of_x_with_itself_is_one(kind):
    x, _ = _pair_for(kind)
    assert fn.linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert CKA_FNS[kind](x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert CKA_FNS[kind](x.float(), x.float()).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", list(CKA_FNS))
def test_cka_is_symmetric(kind):
    x, y = _pair_for(kind, seed=1)
    cka = CKA_FNS[kind]
    assert cka(x, y).item() == pytest.approx(cka(y, x).item(), abs=1e-12)


@pytest.mark.parametrize("kind", list(CKA_FNS))
@pytest.mark.parametrize("seed", range(4))
def test_cka_is_in_unit_interval(kind, seed):
    x, y = _pair_for(kind, seed=seed)
    for a, b in ((x, y), (x, randn(*y.shape, seed=seed + 50)), (x, -x[:, : y.shape[1]])):
        value = CKA_FNS[kind](a, b).item()
        assert 0.0 <= value <= 1.0 + 1e-12


@pytest.mark.parametrize("kind", list(CKA_FNS))
def test_cka_is_invariant_to_orthogonal_transforms(kind):
    x, y = _pair_for(kind, seed=2)
    cka = CKA_FNS[kind]
    base = cka(x, y).item()
    qx, qy = random_orthogonal(x.shape[1], 10), random_orthogonal(y.shape[1], 11)
    assert cka(x @ qx, y).item() == pytest.approx(base, abs=1e-10)
    assert cka(x, y @ qy).item() == pytest.approx(base, abs=1e-10)
    assert cka(x @ qx, y @ qy).item() == pytest.approx(base, abs=1e-10)
    # ... but not to an arbitrary (non-orthogonal) linear map, so the test can detect a broken kernel.
    skew = torch.diag(torch.linspace(0.1, 10.0, x.shape[1], dtype=DOUBLE))
    assert abs(cka(x @ skew, y).item() - base) > 1e-3


@pytest.mark.parametrize("kind", list(CKA_FNS))
@pytest.mark.parametrize("scale", [1e-3, 7.5, 1e4])
def test_cka_is_invariant_to_isotropic_scaling(kind, scale):
    x, y = _pair_for(kind, seed=3)
    cka = CKA_FNS[kind]
    base = cka(x, y).item()
    assert cka(scale * x, y).item() == pytest.approx(base, abs=1e-10)
    assert cka(x, scale * y).item() == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("kind", list(CKA_FNS))
def test_centered_cka_is_invariant_to_a_constant_row_offset(kind):
    x, y = _pair_for(kind, seed=4)
    cka = CKA_FNS[kind]
    offset_x = 3.0 + randn(1, x.shape[1], seed=20)
    offset_y = -2.0 + randn(1, y.shape[1], seed=21)
    base = cka(x, y).item()
    assert cka(x + offset_x, y + offset_y).item() == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("center", [True, False])
def test_linear_cka_many_gives_each_pairs_values_and_gradients(center):
    """Several pairs through one batch of the estimator's small ops: what per-pair calls give, for
    sides of other widths, sides reduced to Grams, a pair cheaper in the feature form (its own
    call), a float32 pair beside float64 ones (its own group), and constant features."""
    widths = [(40, 30), (9, 50), (3, 4), (25, 25), (60, 2)]
    students = [randn(8, p, seed=60 + i).requires_grad_() for i, (p, _) in enumerate(widths)]
    teachers = [randn(8, q, seed=70 + i) for i, (_, q) in enumerate(widths)]
    students[3] = (students[3].detach().float() * 0 + 1).requires_grad_()  # constant: CKA 0, no NaN
    teachers[3] = teachers[3].float()
    sides = [fn.linear_cka_side(t, center=center) if i in (0, 4) else t for i, t in enumerate(teachers)]
    want = torch.stack([fn.linear_cka(s, t, center=center) for s, t in zip(students, sides)])
    want_grads = torch.autograd.grad(want.sum(), students)
    got = fn.linear_cka_many(students, sides, center=center)
    got_grads = torch.autograd.grad(got.sum(), students)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got_grads, want_grads, rtol=1e-10, atol=1e-15)
    assert got.dtype == DOUBLE and (got[3].item() == 0.0 or not center)
    with pytest.raises(ValueError, match="as many student as teacher sides"):
        fn.linear_cka_many(students, sides[:2])
    with pytest.raises(ValueError, match="same n items"):
        fn.linear_cka_many([students[0]], [teachers[0][:5]])


def test_linear_cka_many_runs_the_estimator_once_for_pairs_of_grams():
    """Four pairs in the Gram form: one pass of the norms and the alignment, not four (each op a
    GPU launch; counted by the ops that run once per pass)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.rsqrt = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.rsqrt += func.overloadpacket is torch.ops.aten.rsqrt
            return func(*args, **(kwargs or {}))

    students = [randn(6, 20 + i, seed=80 + i) for i in range(4)]
    teachers = [fn.linear_cka_side(randn(6, 30, seed=90 + i)) for i in range(4)]
    with Count() as many:
        fn.linear_cka_many(students, teachers)
    with Count() as each:
        [fn.linear_cka(s, t) for s, t in zip(students, teachers)]
    assert (many.rsqrt, each.rsqrt) == (2, 8)


def test_uncentered_linear_cka_does_change_with_a_row_offset():
    x, y = related_pair(seed=5)
    shifted = x + 3.0
    assert abs(fn.linear_cka(shifted, y, center=False) - fn.linear_cka(x, y, center=False)).item() > 1e-3


# ----------------------------------------------------------------------------------------------
# Unbiased estimator
# ----------------------------------------------------------------------------------------------


def test_unbiased_hsic_matches_u_centering_reference():
    x, y = related_pair(9, 36, 7, seed=6)
    k, l = x @ x.T, y @ y.T
    torch.testing.assert_close(fn.hsic(k, l, unbiased=True), naive_unbiased_hsic(k, l), rtol=1e-10, atol=1e-12)
    want = naive_unbiased_hsic(k, l) / torch.sqrt(naive_unbiased_hsic(k, k) * naive_unbiased_hsic(l, l))
    torch.testing.assert_close(fn.linear_cka(x, y, unbiased=True), want, rtol=1e-10, atol=1e-12)


def test_biased_hsic_matches_trace_formula():
    x, y = related_pair(17, 36, 7, seed=7)
    k, l = x @ x.T, y @ y.T
    h = centering_matrix(17)
    want = torch.trace(k @ h @ l @ h) / 16**2
    torch.testing.assert_close(fn.hsic(k, l), want, rtol=1e-10, atol=1e-12)


def test_unbiased_is_near_zero_for_independent_features_while_biased_is_not():
    x, y = randn(400, 60, seed=8), randn(400, 60, seed=9)
    biased, unbiased = fn.linear_cka(x, y).item(), fn.linear_cka(x, y, unbiased=True).item()
    assert biased > 0.08
    assert abs(unbiased) < 0.02
    rbf_biased, rbf_unbiased = fn.rbf_cka(x, y).item(), fn.rbf_cka(x, y, unbiased=True).item()
    assert rbf_biased > 0.08
    assert abs(rbf_unbiased) < 0.02


@pytest.mark.parametrize("n", [9, 1000])
def test_unbiased_and_biased_are_one_for_identical_features(n):
    x = randn(n, 36, seed=10)
    for dtype, tol in ((DOUBLE, 1e-9), (torch.float32, 1e-5)):
        xd = x.to(dtype)
        assert fn.linear_cka(xd, xd).item() == pytest.approx(1.0, abs=tol)
        assert fn.linear_cka(xd, xd, unbiased=True).item() == pytest.approx(1.0, abs=tol)


def test_unbiased_needs_more_than_three_items():
    with pytest.raises(ValueError, match="more than 3 items"):
        fn.linear_cka(randn(3, 36), randn(3, 7), unbiased=True)


# ----------------------------------------------------------------------------------------------
# Reproducing the public RCKA code
# ----------------------------------------------------------------------------------------------


def public_rcka_alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The public RCKA code's formula: uncentered, each Gram row divided by that sample's norm."""

    def gram(a):
        g = a.double() @ a.double().T
        return g / torch.sqrt(torch.diag(g))[:, None]

    gx, gy = gram(x), gram(y)
    return torch.trace(gx @ gy.T) / torch.sqrt(torch.trace(gx @ gx.T) * torch.trace(gy @ gy.T))


@pytest.mark.parametrize("n,p,q", [(5, 36, 7), (17, 3, 40)])
def test_reference_mode_equals_public_rcka_formula(n, p, q):
    x, y = related_pair(n, p, q, seed=11)
    x = x + randn(n, 1, seed=12)  # rows of different norms, so the row normalisation matters
    got = fn.linear_cka(x, y, center=False, row_normalize=True)
    torch.testing.assert_close(got, public_rcka_alignment(x, y), rtol=1e-10, atol=1e-12)
    assert abs(got.item() - fn.linear_cka(x, y, center=False).item()) > 1e-4


# ----------------------------------------------------------------------------------------------
# Batching over leading dimensions
# ----------------------------------------------------------------------------------------------


def _loop(cka, x, y, **kw):
    flat_x, flat_y = x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])
    out = torch.stack([cka(a, b, **kw) for a, b in zip(flat_x, flat_y)])
    return out.reshape(x.shape[:-2])


@pytest.mark.parametrize(
    "cka,n,p,q,kw",
    [
        (fn.linear_cka, 17, 36, 7, {}),
        (fn.linear_cka, 150, 5, 4, {}),
        (fn.linear_cka, 17, 36, 7, {"center": False, "row_normalize": True}),
        (fn.linear_cka, 17, 36, 7, {"unbiased": True}),
        (fn.rbf_cka, 17, 36, 7, {}),
    ],
)
def test_batched_leading_dims_equal_per_item_loop(cka, n, p, q, kw):
    x, y = randn(2, 3, n, p, seed=13), randn(2, 3, n, q, seed=14)
    y = y + x[..., :q]
    got = cka(x, y, **kw)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, _loop(cka, x, y, **kw), rtol=1e-10, atol=1e-12)
    assert got.std() > 0  # items really differ


# ----------------------------------------------------------------------------------------------
# dtype contract, autocast, degenerate inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cka", [fn.linear_cka, fn.rbf_cka])
@pytest.mark.parametrize("n,p,q", [(17, 36, 7), (150, 5, 4)])
def test_low_precision_inputs_give_float32_values(dtype, cka, n, p, q):
    # Large entries: a float16 Gram (entries ~36 * 150^2) would overflow to inf.
    x, y = related_pair(n, p, q, seed=15)
    x, y = (150.0 * x).to(dtype), (150.0 * y).to(dtype)
    got = cka(x, y)
    assert got.dtype == torch.float32 and got.dim() == 0
    want = cka(x.double(), y.double())  # the same rounded inputs, computed in float64
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(want.item(), abs=2e-6)


def test_float64_inputs_stay_float64_and_mixed_inputs_promote():
    x, y = related_pair(seed=16)
    assert fn.linear_cka(x, y).dtype == DOUBLE
    assert fn.linear_cka(x.float(), y).dtype == DOUBLE
    assert fn.linear_cka(x.bfloat16(), y.half()).dtype == torch.float32


def test_autocast_region_still_computes_in_float32():
    x, y = related_pair(17, 36, 7, seed=17)
    x, y = x.float(), y.float()
    xf, yf = related_pair(150, 5, 4, seed=18)
    xf, yf = xf.float(), yf.float()
    maps = randn(5, 4, 8, 12, seed=19, dtype=torch.float32)
    other = maps + 0.5 * randn(5, 4, 8, 12, seed=20, dtype=torch.float32)
    outside = [fn.linear_cka(x, y), fn.linear_cka(xf, yf), fn.rbf_cka(x, y), fn.patch_cka(maps, other, 4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ y[:, :1].expand(17, 36).T).dtype == torch.bfloat16  # autocast really is active
        inside = [fn.linear_cka(x, y), fn.linear_cka(xf, yf), fn.rbf_cka(x, y), fn.patch_cka(maps, other, 4)]
    for a, b in zip(outside, inside):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_patch_cka_many_under_autocast_computes_in_float32():
    """PatchCKALoss calls ``patch_cka_many``, which hands each grid's pairs to ``_grid_patch_cka``
    directly, inside the model's autocast region: that call must turn autocast off itself. Without
    it the kernel's values came out 3.5e-3 off (bf16 arithmetic), and no test failed: the autocast
    test called ``patch_cka`` only, whose own wrapper hid it."""
    maps = [randn(3, 4, 8, 8, seed=73, dtype=torch.float32), randn(3, 2, 8, 8, seed=74, dtype=torch.float32)]
    others = [m + 0.6 * randn(*m.shape, seed=75 + i, dtype=torch.float32) for i, m in enumerate(maps)]
    for backend in ("kernel", "autograd"):
        for transpose in (False, True):
            outside = fn.patch_cka_many(maps, others, 4, transpose=transpose, backend=backend)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert (maps[0][0, 0] @ maps[0][0, 0]).dtype == torch.bfloat16  # autocast really is active
                inside = fn.patch_cka_many(maps, others, 4, transpose=transpose, backend=backend)
            for a, b in zip(outside, inside):
                assert b.dtype == torch.float32
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_full_precision_turns_autocast_off_on_the_inputs_own_device(monkeypatch):
    """Autocast is per device type, so the region each function turns off must be its inputs'
    device's (a GPU's in training), found among plain tensors, lists of maps (``patch_cka_many``'s
    joined pairs) and sides reduced to their Grams. A CPU suite runs on one device type, so a
    wrapper that always asked about "cpu", skipped the lists or the Gram sides passed every test
    while leaving a GPU's bf16 autocast on inside the losses; meta tensors stand in for that other
    device here (the recorder stops each call before any work)."""
    from hf_rcka.functional.cka import GramSide

    asked = []

    class Asked(Exception):
        pass

    def is_autocast_enabled(device_type=None):
        asked.append(device_type)
        raise Asked

    monkeypatch.setattr(torch, "is_autocast_enabled", is_autocast_enabled)
    x, y = (torch.empty(6, 5, device="meta") for _ in range(2))
    side = GramSide(torch.empty(6, 6, device="meta"), torch.empty((), device="meta"), True)
    maps = [torch.empty(2, 3, 8, 8, device="meta")]
    calls = [lambda: fn.linear_cka(x, y), lambda: fn.linear_cka_many([x], [y]), lambda: fn.linear_cka(side, side),
             lambda: fn.patch._grid_patch_cka(maps, maps, 4, False, True, 1e-8, "autograd"), lambda: fn.kd_loss(x, y)]
    for call in calls:
        with pytest.raises(Asked):
            call()
    assert asked == ["meta"] * len(calls)


def _constant_cases():
    varied = randn(17, 7, seed=21, dtype=torch.float32)
    return {
        "constant_x": (torch.full((17, 36), 0.3), varied),
        "zero_x": (torch.zeros(17, 36), varied),
        "both_constant": (torch.full((17, 36), -1.7), torch.full((17, 7), 2.5)),
        "both_zero": (torch.zeros(17, 36), torch.zeros(17, 7)),
        "feature_path_constant": (torch.full((150, 5), 0.3), randn(150, 4, seed=22, dtype=torch.float32)),
    }


@pytest.mark.parametrize("case", list(_constant_cases()))
@pytest.mark.parametrize(
    "cka,kw",
    [
        (fn.linear_cka, {}),
        (fn.linear_cka, {"center": False, "row_normalize": True}),
        (fn.linear_cka, {"unbiased": True}),
        (fn.rbf_cka, {}),
        (fn.rbf_cka, {"unbiased": True}),
    ],
)
def test_constant_or_zero_features_give_finite_value_and_gradients(case, cka, kw):
    x, y = _constant_cases()[case]
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    value = cka(x, y, **kw)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    if kw.get("center", True) and case != "both_zero":
        assert abs(value.item()) < 1e-4  # a constant has no (centered) structure to align


# ----------------------------------------------------------------------------------------------
# Centering and Grams
# ----------------------------------------------------------------------------------------------


def test_center_gram_equals_hkh_and_column_centering():
    x = randn(17, 36, seed=23)
    h = centering_matrix(17)
    k = x @ x.T
    torch.testing.assert_close(fn.center_gram(k), h @ k @ h, rtol=1e-10, atol=1e-10)
    xc = x - x.mean(0)
    torch.testing.assert_close(fn.center_gram(k), xc @ xc.T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fn.gram_linear(x), k)


def test_gram_linear_gradients_first_and_second_order():
    x = randn(3, 5, 4, seed=45).requires_grad_()
    torch.testing.assert_close(fn.gram_linear(x), x @ x.transpose(-2, -1))
    assert torch.autograd.gradcheck(fn.gram_linear, (x,))
    assert torch.autograd.gradgradcheck(fn.gram_linear, (x,))
    # a non-symmetric upstream gradient (the custom backward must symmetrise it)
    weights = randn(3, 5, 5, seed=46)
    (fn.gram_linear(x) * weights).sum().backward()
    ref = x.detach().clone().requires_grad_()
    ((ref @ ref.transpose(-2, -1)) * weights).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)


def test_cka_from_grams_matches_naive_reference():
    x, y = related_pair(seed=24)
    k, l = x @ x.T, y @ y.T
    for center in (True, False):
        torch.testing.assert_close(fn.cka_from_grams(k, l, center=center), naive_cka_from_grams(k, l, center))


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_row_mismatch_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(17, 36\).*\(16, 7\)"):
        fn.linear_cka(randn(17, 36), randn(16, 7))
    with pytest.raises(ValueError, match=r"\(17, 36\).*\(16, 7\)"):
        fn.rbf_cka(randn(17, 36), randn(16, 7))
    with pytest.raises(ValueError, match=r"\(17,\)"):
        fn.linear_cka(randn(17), randn(17, 7))


def test_grams_must_be_square_and_of_the_same_items():
    """A 6 x 4 feature matrix passed as a Gram gave CKA 1.0; Grams of 6 and 1 items an HSIC."""
    x = randn(6, 4)
    with pytest.raises(ValueError, match=r"k must be a square \(\.\.\., n, n\) Gram matrix, got shape \(6, 4\)"):
        fn.cka_from_grams(x, x)
    with pytest.raises(ValueError, match="different numbers of items: 6 and 5"):
        fn.hsic(torch.eye(6), torch.eye(5))
    assert float(fn.cka_from_grams(x @ x.T, x @ x.T)) == pytest.approx(1.0)


def test_integer_inputs_are_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        fn.linear_cka(torch.ones(17, 36, dtype=torch.long), randn(17, 7))


# ----------------------------------------------------------------------------------------------
# Patch CKA
# ----------------------------------------------------------------------------------------------


def loop_patches(fmap: torch.Tensor, ph: int, pw: int) -> list[torch.Tensor]:
    """Per channel, the (patches, B*ph*pw) matrix built with explicit slicing (row-major patches)."""
    b, c, h, w = fmap.shape
    out = []
    for ch in range(c):
        rows = []
        for i in range(h // ph):
            for j in range(w // pw):
                rows.append(fmap[:, ch, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw].reshape(-1))
        out.append(torch.stack(rows))
    return out


def loop_patch_cka(s, t, ph, pw, transpose=False, center=True):
    """The reference code's style: a Python loop over channels, each with O(n^3) traces."""
    values = []
    for a, b in zip(loop_patches(s, ph, pw), loop_patches(t, ph, pw)):
        v = naive_linear_cka(a, b, center)
        if transpose:
            v = 0.5 * (v + naive_linear_cka(a.T, b.T, center))
        values.append(v)
    return torch.stack(values)


def map_pair(shape, seed):
    s = randn(*shape, seed=seed)
    t = 0.6 * s + randn(*shape, seed=seed + 1)
    return s, t


def test_patchify_rows_are_patches_over_the_batch():
    fmap = randn(2, 3, 4, 6, seed=25)
    got = fn.patchify(fmap, 2)
    assert got.shape == (3, 6, 2 * 2 * 2)
    want = torch.stack(loop_patches(fmap, 2, 2))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("center", [True, False])
def test_patch_cka_equals_per_channel_loop(transpose, center):
    s, t = map_pair((5, 6, 8, 12), seed=26)
    got = fn.patch_cka(s, t, patch_size=4, transpose=transpose, center=center)
    want = loop_patch_cka(s, t, 4, 4, transpose, center)
    assert got.shape == (6,)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert want.std() > 1e-3


def test_patch_cka_resizes_non_multiple_sizes():
    s, t = map_pair((5, 4, 10, 7), seed=27)
    got = fn.patch_cka(s, t, patch_size=4)
    # 10 -> 3 patches of 4 (resized to 12); 7 is less than two patches of 4, so 3-pixel patches (7 -> 9).
    rs = F.interpolate(s, size=(12, 9), mode="bilinear", align_corners=False)
    rt = F.interpolate(t, size=(12, 9), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, loop_patch_cka(rs, rt, 4, 3), rtol=1e-10, atol=1e-12)


def test_patch_cka_handles_maps_smaller_than_one_patch():
    s, t = map_pair((5, 4, 3, 3), seed=28)
    s.requires_grad_()
    got = fn.patch_cka(s, t, patch_size=16)
    # A 3 x 3 map gets 1-pixel patches: 9 patches with B pixels each.
    torch.testing.assert_close(got, loop_patch_cka(s.detach(), t, 1, 1), rtol=1e-10, atol=1e-12)
    got.sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("height, width", [(1, 1), (1, 2), (2, 1)])
def test_patch_cka_on_a_map_of_fewer_than_three_patches_is_one_with_zero_gradient(height, width):
    """Centred CKA over 2 patches is 1 whatever the maps (a rank-1 Gram): exactly a constant."""
    s, t = map_pair((5, 4, height, width), seed=29)
    s.requires_grad_()
    got = fn.patch_cka(s, t, patch_size=4)
    torch.testing.assert_close(got, torch.ones(4, dtype=DOUBLE))
    got.sum().backward()
    assert s.grad is not None and torch.equal(s.grad, torch.zeros_like(s))
    assert fn.patch.patch_count(height, width, 4) < 3 <= fn.patch.patch_count(2, 2, 4)
    assert fn.patch.patch_count(7, 10, 4) == 3 * 3  # 3-pixel patches on 7 rows, 4-pixel ones on 10 columns


@pytest.mark.parametrize("height, width, center", [(1, 3, True), (3, 1, True), (1, 2, False)])
def test_patch_cka_on_a_map_of_exactly_as_many_patches_as_cka_relates_is_the_real_cka(height, width, center):
    """3 patches centred (or 2 uncentred) are the fewest that CKA relates: their CKA is the loop
    reference's, with a gradient. Taking the boundary for one more patch (``<=`` for ``<``) gave
    ones, a zero loss with no gradient, on 1 x 3 maps, and no test failed."""
    s, t = map_pair((5, 4, height, width), seed=71)
    s.requires_grad_()
    assert fn.patch.patch_count(height, width, 4) == min_cka_items(center)
    for backend in ("kernel", "autograd"):
        got = fn.patch_cka(s, t, patch_size=4, center=center, backend=backend)
        want = loop_patch_cka(s.detach(), t, 1, 1, center=center)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        assert (want - 1).abs().min() > 1e-2, want
        (grad,) = torch.autograd.grad(got.sum(), s)
        assert grad.abs().max() > 1e-3


def test_patch_cka_is_one_for_equal_maps_and_rejects_unequal_shapes():
    s, _ = map_pair((5, 4, 8, 12), seed=30)
    torch.testing.assert_close(fn.patch_cka(s, s.clone(), 4), torch.ones(4, dtype=DOUBLE))
    with pytest.raises(ValueError, match=r"\(5, 4, 8, 12\).*\(5, 4, 8, 11\)"):
        fn.patch_cka(s, s[..., :11], 4)
    with pytest.raises(ValueError, match=r"\(5, 4, 8\)"):
        fn.patchify(s[..., 0], 4)


def composed_patch_cka(s, t, patch_size, center=True):
    """What patch_cka's own forward/backward replaces: patchify + batched linear_cka, through autograd."""
    return fn.linear_cka(fn.patchify(s, patch_size), fn.patchify(t, patch_size), center=center)


def patch_cka_and_grads(cka, s, t, *args, **kwargs):
    """Value and the gradients of a fixed weighting of the channels w.r.t. both maps."""
    s, t = s.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    value = cka(s, t, *args, **kwargs)
    (value * torch.linspace(0.5, 1.5, value.shape[0], dtype=value.dtype)).sum().backward()
    return value, s.grad, t.grad


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape,patch", [((5, 6, 8, 12), 4), ((3, 5, 10, 7), 4), ((2, 3, 9, 9), 3), ((4, 2, 3, 3), 16)])
def test_patch_cka_values_and_gradients_match_the_composed_autograd_path(shape, patch, center):
    s, t = map_pair(shape, seed=31)
    got = patch_cka_and_grads(fn.patch_cka, s, t, patch, center=center)
    want = patch_cka_and_grads(composed_patch_cka, s, t, patch, center=center)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert got[1].abs().max() > 1e-3 and got[2].abs().max() > 1e-3


@pytest.mark.parametrize("center", [True, False])
def test_patch_cka_gradcheck_on_both_maps(center):
    s, t = map_pair((2, 3, 4, 6), seed=32)
    s.requires_grad_()
    t.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fn.patch_cka(a, b, 2, center=center), (s, t))


@pytest.mark.parametrize("block_bytes", [1, 3000])
def test_patch_cka_channel_blocks_do_not_change_values_or_gradients(monkeypatch, block_bytes):
    s, t = map_pair((2, 7, 8, 8), seed=33)
    want = patch_cka_and_grads(fn.patch_cka, s, t, 4)
    monkeypatch.setattr(pcka_kernel, "_BLOCK_BYTES", block_bytes)
    assert len(pcka_kernel._channel_blocks(7, 4 * 32 * 8, s.device)) > 1  # really several blocks
    got = patch_cka_and_grads(fn.patch_cka, s, t, 4)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, DOUBLE])
def test_patch_cka_constant_channels_give_zero_with_finite_gradients(dtype):
    s, t = map_pair((4, 5, 8, 8), seed=34)
    s[:, 0] = 0.3  # constant
    s[:, 1] = 0.0  # zero
    s[:, 2] = randn(4, 2, 2, seed=35).repeat(1, 4, 4) + 7.0  # every patch the same: no patch relations
    t[:, 3] = -2.5  # constant on the teacher side
    value, grad_s, grad_t = patch_cka_and_grads(fn.patch_cka, s.to(dtype), t.to(dtype), 2)
    assert value.dtype == dtype
    assert torch.isfinite(grad_s).all() and torch.isfinite(grad_t).all()
    assert value[:4].abs().max() < 1e-4
    torch.testing.assert_close(value[4].double(), loop_patch_cka(s[:, 4:], t[:, 4:], 2, 2)[0], rtol=1e-5, atol=1e-6)


def test_patch_cka_float32_with_large_means_is_close_to_float64():
    s, t = map_pair((4, 8, 16, 16), seed=36)
    s, t = s + 20.0, t - 5.0  # column means far above the spread: what subtracting the mean first is for
    want = patch_cka_and_grads(fn.patch_cka, s, t, 4)
    got = patch_cka_and_grads(fn.patch_cka, s.float(), t.float(), 4)
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0].double(), want[0], rtol=0, atol=1e-5)
    for a, b in zip(got[1:], want[1:]):
        assert (a.double() - b).abs().max() < 1e-4 * b.abs().max()


def test_patch_cka_float32_gradients_with_means_far_above_the_spread_are_close_to_float64():
    """The kernel's backward multiplies the Gram direction with the centred patches, as the
    forward made them: in exact arithmetic the direction's zero row sums make the mean drop out,
    but in float32 they are only zero to rounding. Multiplying the uncentred patches instead
    (means 1000 times the spread) gave gradients 10% off the float64 ones, against 1e-4 centred,
    and no test failed."""
    s, t = map_pair((4, 8, 16, 16), seed=36)
    s, t = s + 1e3, t - 1e3
    want = patch_cka_and_grads(fn.patch_cka, s, t, 4)
    got = patch_cka_and_grads(fn.patch_cka, s.float(), t.float(), 4)
    torch.testing.assert_close(got[0].double(), want[0], rtol=0, atol=1e-5)
    for a, b in zip(got[1:], want[1:]):
        assert (a.double() - b).abs().max() < 1e-3 * b.abs().max()


def test_patch_cka_accepts_channels_last_and_sliced_maps():
    s, t = map_pair((3, 4, 8, 12), seed=37)
    want = patch_cka_and_grads(fn.patch_cka, s, t, 4)
    channels_last = [m.contiguous(memory_format=torch.channels_last) for m in (s, t)]
    wide = [torch.cat([m, m[..., :3]], dim=-1)[:, :, :, :12] for m in (s, t)]  # strided, not contiguous
    assert not wide[0].is_contiguous()
    for maps in (channels_last, wide):
        got = patch_cka_and_grads(fn.patch_cka, *maps, 4)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_patch_cka_under_no_grad_and_with_a_frozen_teacher():
    s, t = map_pair((3, 4, 8, 8), seed=38)
    want = fn.patch_cka(s, t, 4)
    with torch.no_grad():
        got = fn.patch_cka(s.clone().requires_grad_(), t, 4)
    assert not got.requires_grad
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    student = s.clone().requires_grad_()
    weights = torch.linspace(0.5, 1.5, 4, dtype=DOUBLE)
    (fn.patch_cka(student, t, 4) * weights).sum().backward()  # the usual case: a frozen teacher
    torch.testing.assert_close(student.grad, patch_cka_and_grads(composed_patch_cka, s, t, 4)[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["kernel", "autograd"])
def test_patch_cka_many_equals_one_call_per_pair(monkeypatch, backend):
    """Pairs on one grid share a call; values and gradients are those of separate calls, in the
    order given, whatever the grids, layouts and transposes. Where pairs would be concatenated
    (plain autograd, the transposed CKA), large ones keep a call each; the kernel joins any."""
    shapes = [(3, 2, 8, 8), (3, 5, 4, 4), (3, 4, 8, 8), (3, 1, 8, 8), (3, 3, 4, 4)]
    pairs = [map_pair(shape, seed=60 + i) for i, shape in enumerate(shapes)]
    pairs[2] = tuple(m.contiguous(memory_format=torch.channels_last) for m in pairs[2])
    students = [s.clone().requires_grad_() for s, _ in pairs]
    teachers = [t.clone().requires_grad_() for _, t in pairs]
    calls = []
    real = fn.patch._grid_patch_cka
    monkeypatch.setattr(fn.patch, "_grid_patch_cka", lambda s, *a, **k: calls.append(sum(m.shape[1] for m in s)) or real(s, *a, **k))
    separate = [1, 2, 3, 4, 5] if backend == "autograd" else [7, 8]
    for transpose, join_bytes, want_calls in ((False, 8 << 20, [7, 8]), (True, 8 << 20, [7, 8]), (False, 900, separate),
                                              (True, 900, [1, 2, 3, 4, 5])):
        monkeypatch.setattr(fn.patch, "_JOIN_BYTES", join_bytes)
        calls.clear()
        got = fn.patch_cka_many(students, teachers, 4, transpose=transpose, backend=backend)
        # one call per grid (2 + 4 + 1 channels on 8x8, 5 + 3 on 4x4), or per pair for larger maps
        # (the 8x8 group is 7 * 192 doubles, the 4x4 one 8 * 48; neither fits 900 bytes)
        assert sorted(calls) == want_calls
        want = [fn.patch_cka(s, t, 4, transpose=transpose, backend=backend) for s, t in zip(students, teachers)]
        assert [g.shape for g in got] == [(shape[1],) for shape in shapes]
        weights = [torch.linspace(0.5, 1.5, w.numel(), dtype=DOUBLE) for w in want]
        grads_got = torch.autograd.grad(sum((g * w).sum() for g, w in zip(got, weights)), students + teachers)
        grads_want = torch.autograd.grad(sum((g * w).sum() for g, w in zip(want, weights)), students + teachers)
        for a, b in zip([*got, *grads_got], [*want, *grads_want]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["kernel", "autograd"])
def test_patch_cka_of_mixed_precision_pairs_computes_in_each_pairs_wider_dtype(backend):
    """A float32 student map against a float64 teacher map (float32 buffers meet float64 features
    in gradcheck) is compared in float64, on both backends and with the transposed term, as the
    float64 student would be; pairs joined in one call keep the dtypes of separate calls. The
    plain-autograd rows took the students' dtype alone (the teacher cut to float32), and pairs of
    other dtypes joined on one grid came back in the wider one, and no test failed."""
    s, t = map_pair((3, 4, 8, 8), seed=72)
    for transpose in (False, True):
        want = fn.patch_cka(s.float().double(), t, 4, transpose=transpose, backend=backend)
        got = fn.patch_cka(s.float(), t, 4, transpose=transpose, backend=backend)
        assert got.dtype == DOUBLE
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    for students, teachers in (([s.float(), s.float()[:, :2]], [t.float(), t[:, :2]]),
                               ([s.float(), s[:, :2]], [t.float(), t[:, :2].float()])):
        got = fn.patch_cka_many(students, teachers, 4, backend=backend)
        assert [g.dtype for g in got] == [torch.float32, DOUBLE]
        for g, a, b in zip(got, students, teachers):
            torch.testing.assert_close(g, fn.patch_cka(a, b, 4, backend=backend), rtol=0, atol=0)


def test_patch_cka_many_names_a_misaligned_pair():
    s, t = map_pair((2, 3, 8, 8), seed=70)
    with pytest.raises(ValueError, match=r"equal shape, got student \(2, 3, 8, 8\) and teacher \(2, 2, 8, 8\)"):
        fn.patch_cka_many([s, s], [t, t[:, :2]], 4)
    with pytest.raises(ValueError, match="got 2 student maps and 1 teacher maps"):
        fn.patch_cka_many([s, s], [t], 4)


def test_patch_cka_refuses_create_graph_instead_of_dropping_second_order_terms():
    s, t = map_pair((2, 3, 4, 4), seed=39)
    s.requires_grad_()
    with pytest.raises(RuntimeError, match="differentiated twice"):
        torch.autograd.grad(fn.patch_cka(s, t, 2).sum(), s, create_graph=True)


# ----------------------------------------------------------------------------------------------
# Nystrom / kernel transfer
# ----------------------------------------------------------------------------------------------


def test_nystrom_is_exact_when_landmarks_span_the_features():
    x = randn(17, 36, seed=31)
    torch.testing.assert_close(fn.nystrom_approximation(x, x[:, :]), x @ x.T, rtol=1e-8, atol=1e-8)
    low_rank = randn(17, 3, seed=32) @ randn(3, 36, seed=33)
    landmarks = low_rank[:5]  # 5 rows of a rank-3 matrix span its row space
    approx = fn.nystrom_approximation(low_rank, landmarks)
    torch.testing.assert_close(approx, low_rank @ low_rank.T, rtol=1e-7, atol=1e-7)


def test_class_sums_match_a_loop():
    x = randn(17, 36, seed=34)
    labels = torch.tensor([0, 2, 2, 1, 0, 2, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0, 2])
    sums, counts = fn.class_sums(x, labels, num_classes=4)
    for c in range(4):
        want = x[labels == c].sum(0) if (labels == c).any() else torch.zeros(36, dtype=DOUBLE)
        torch.testing.assert_close(sums[c], want)
        assert counts[c].item() == (labels == c).sum().item()


def test_landmark_similarity_computes_in_float32_or_better_and_in_the_wider_dtype():
    """The public ``landmark_similarity`` returned bfloat16 partial kernels for bfloat16 features (it
    skipped the upcast its docstring promises); float32 features meeting float64 landmarks compare in
    float64, whichever comes first."""
    x, d = randn(5, 36, seed=60), randn(3, 36, seed=61)
    half = fn.landmark_similarity(x.bfloat16(), d.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, (x.bfloat16().float() @ d.bfloat16().float().T))
    assert fn.landmark_similarity(x.float(), d).dtype == DOUBLE
    assert fn.landmark_similarity(x, d.float()).dtype == DOUBLE


def test_kernel_transfer_loss_matches_naive_formula():
    fs, ft = randn(5, 36, seed=35), randn(5, 24, seed=36)
    ms, mt = randn(3, 36, seed=37), randn(3, 24, seed=38)
    cs, ct = fs @ ms.T, ft @ mt.T
    diff = (cs - ct).abs()
    smooth = torch.where(diff < 1.0, 0.5 * diff**2, diff - 0.5).sum()
    want = smooth / torch.sqrt((ct**2).sum())
    torch.testing.assert_close(fn.kernel_transfer_loss(fs, ft, ms, mt), want)
    # float32 landmark buffers meet float64 features
    assert fn.kernel_transfer_loss(fs, ft, ms.float(), mt.float()).dtype == DOUBLE
    assert fn.kernel_transfer_loss(fs, fs, ms, ms).item() == 0.0


def test_kernel_transfer_errors_name_shapes():
    with pytest.raises(ValueError, match=r"\(5, 36\).*\(4, 24\)"):
        fn.kernel_transfer_loss(randn(5, 36), randn(4, 24), randn(3, 36), randn(3, 24))
    with pytest.raises(ValueError, match=r"\(3, 36\).*\(2, 24\)"):
        fn.kernel_transfer_loss(randn(5, 36), randn(5, 24), randn(3, 36), randn(2, 24))
    with pytest.raises(ValueError, match=r"\(5, 36\).*\(3, 35\)"):
        fn.landmark_similarity(randn(5, 36), randn(3, 35))


# ----------------------------------------------------------------------------------------------
# Logit and projector terms
# ----------------------------------------------------------------------------------------------


def test_kd_loss_matches_naive_formula():
    s, t = randn(5, 3, seed=39) * 3, randn(5, 3, seed=40) * 3
    temp = 2.5
    p_t = torch.softmax(t / temp, -1)
    want = (p_t * (torch.log(p_t) - torch.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
    torch.testing.assert_close(fn.kd_loss(s, t, temp), want)
    assert fn.kd_loss(t, t, temp).abs().item() < 1e-12
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(5, 4\)"):
        fn.kd_loss(s, randn(5, 4), temp)


@pytest.mark.parametrize("dtype, teacher_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16),
                                                  (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_hint_loss_is_the_mse_of_the_upcast_maps_and_keeps_no_new_map_but_the_difference(dtype, teacher_dtype, monkeypatch):
    """FitNets' hint: the value and gradient of ``F.mse_loss`` on the upcast maps, whatever their
    layouts, with neither map changed. What the backward keeps is the maps themselves when the
    student's is in half precision (no new buffer: under autocast another loss or the teacher's
    hidden state keeps them anyway), or else one float32 difference (mse_loss kept a float32 copy
    of each side); the gradient comes back in the student's dtype and is its backward's only
    map-sized buffer."""
    monkeypatch.setattr(fn.kd, "_SUM_CHUNK", 300)  # a few images at a time, the last slice shorter
    g = torch.Generator().manual_seed(46)
    student = torch.randn(5, 6, 7, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    teacher = torch.randn(5, 6, 7, 7, generator=g).to(teacher_dtype)
    want_s = student.clone().requires_grad_()
    want = F.mse_loss(want_s.float(), teacher.float())
    (want_grad,) = torch.autograd.grad(want, want_s)
    got_s, kept = student.clone().requires_grad_(), (student.clone(), teacher.clone())
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        got = fn.hint_loss(got_s, teacher)
    with torch.profiler.profile(profile_memory=True) as prof:
        (got_grad,) = torch.autograd.grad(got, got_s)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=0 if dtype != torch.float32 else 1e-6, atol=0)
    assert got_grad.dtype == dtype
    torch.testing.assert_close(got_s.detach(), kept[0], rtol=0, atol=0)
    torch.testing.assert_close(teacher, kept[1], rtol=0, atol=0)
    big = [x for x in saved if x.numel() == student.numel()]
    if dtype == torch.float32:
        assert len(big) == 1 and big[0].dtype == torch.float32
    else:
        assert [x.data_ptr() for x in big] == [got_s.data_ptr(), teacher.data_ptr()]
        sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
        assert max(sizes) == got_grad.numel() * got_grad.element_size()  # float32 made a few images at a time
    with pytest.raises(ValueError, match=r"hint needs equal shapes.*\(5, 6, 7, 7\).*\(5, 5, 7, 7\)"):
        fn.hint_loss(student, teacher[:, :5])


def test_hint_loss_gradients_for_both_sides_over_several_chunks(monkeypatch):
    monkeypatch.setattr(fn.kd, "_SUM_CHUNK", 7)  # the squared difference summed in chunks, the last shorter
    s, t = randn(2, 3, 4, 5, seed=47).requires_grad_(), randn(2, 3, 4, 5, seed=48).requires_grad_()
    assert torch.autograd.gradcheck(fn.hint_loss, (s, t))
    torch.testing.assert_close(fn.hint_loss(s, t), F.mse_loss(s, t), rtol=1e-12, atol=0)
    with pytest.raises(RuntimeError, match="differentiate twice|does not require grad"):  # loud, not a silent zero
        (grad,) = torch.autograd.grad(fn.hint_loss(s, t), s, create_graph=True)
        grad.sum().backward()
    # the pair kept as it is (both in half precision): both sides' gradients, rebuilt slice by slice
    s, t = (randn(3, 4, 5, 6, seed=seed).to(torch.bfloat16).requires_grad_() for seed in (49, 50))
    want_s, want_t = (x.detach().clone().requires_grad_() for x in (s, t))
    torch.autograd.backward(F.mse_loss(want_s.float(), want_t.float()))
    torch.autograd.backward(fn.hint_loss(s, t))
    torch.testing.assert_close((s.grad, t.grad), (want_s.grad, want_t.grad), rtol=0, atol=0)


def test_hint_loss_takes_a_teacher_made_under_inference_mode():
    """Inference tensors cannot be saved for the backward: such a teacher's map is not kept."""
    student = randn(2, 3, 4, 4, seed=51).to(torch.bfloat16).requires_grad_()
    with torch.inference_mode():
        teacher = randn(2, 3, 4, 4, seed=52).to(torch.bfloat16)
    fn.hint_loss(student, teacher).backward()
    want = student.detach().clone().requires_grad_()
    F.mse_loss(want.float(), teacher.float()).backward()
    torch.testing.assert_close(student.grad, want.grad, rtol=0, atol=0)


def test_compiled_hint_loss_follows_the_batch_size_without_recompiling(monkeypatch):
    """The eager path loops over chunks whose count follows the batch size; under torch.compile
    that would pin the batch size and recompile for every new one."""
    from torch._dynamo.testing import CompileCounter

    monkeypatch.setattr(fn.kd, "_SUM_CHUNK", 1000)  # chunks smaller than an image, as on full-size maps
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(fn.hint_loss, backend=counter)
    for batch in (16, 16, 12, 8, 10, 6):
        student = torch.randn(batch, 30, 40, requires_grad=True)
        teacher = torch.randn(batch, 30, 40).to(torch.bfloat16)
        value = compiled(student, teacher)
        torch.testing.assert_close(value, F.mse_loss(student, teacher.float()), rtol=1e-5, atol=0)
        value.backward()
    assert counter.frame_count <= 2, f"{counter.frame_count} compilations for 5 batch sizes"
    torch._dynamo.reset()
    assert fn.hint_loss(torch.tensor(1.0), torch.tensor(3.0)).item() == 4.0  # a 0-d pair too


def test_srd_distance_matches_formula_and_is_minimal_at_the_teacher():
    s, t = randn(5, 24, seed=41), randn(5, 24, seed=42)
    want = torch.log((s - t).abs().pow(4).sum(-1).mean() + 1e-5)
    torch.testing.assert_close(fn.srd_distance(s, t), want)
    at_teacher = fn.srd_distance(t, t)
    assert at_teacher.item() == pytest.approx(math.log(1e-5))
    for seed in range(3):
        nudged = t + 1e-2 * randn(5, 24, seed=100 + seed)
        assert fn.srd_distance(nudged, t) > at_teacher
    with pytest.raises(ValueError, match=r"\(5, 24\).*\(5, 23\)"):
        fn.srd_distance(s, t[:, :23])


def test_srd_correlation_matches_formula():
    s, t = randn(5, 24, seed=43), randn(5, 24, seed=44)
    corr = (s * t).mean(0)
    want = torch.log((corr - 1).abs().pow(4).sum() + 1e-5)
    torch.testing.assert_close(fn.srd_correlation(s, t), want)
    with pytest.raises(ValueError, match=r"\(5, 24\).*\(4, 24\)"):
        fn.srd_correlation(s, t[:4])


def test_the_per_sample_terms_compute_in_float32_from_half_precision_inputs_and_under_autocast():
    """KD, SRD's two variants, FitNets' hint and EKT's kernel transfer are upcast to float32 and run
    with autocast off: from bf16 inputs their values are the float32 computation's of the same
    (bf16-rounded) values, and under bf16 autocast they equal the values outside it. SRD took
    bf16 inputs as they were (a bf16 loss), and EKT's partial kernels were bf16 matmuls under
    autocast, and no test failed."""
    s, t = randn(6, 36, seed=76), randn(6, 36, seed=77)
    s0, t0 = (0.3 * s / s.norm(dim=-1, keepdim=True)).float(), (0.3 * t / t.norm(dim=-1, keepdim=True)).float()
    ms, mt = randn(3, 36, seed=78, dtype=torch.float32), randn(3, 36, seed=79, dtype=torch.float32)
    terms = {  # each with the scale of its usual inputs (logits, normalised features, maps)
        "kd": (lambda a, b: fn.kd_loss(a, b, 4.0), 10.0),
        "srd_distance": (fn.srd_distance, 1.0),
        "srd_correlation": (fn.srd_correlation, 5.0),
        "hint": (fn.hint_loss, 1.0),
        "kernel_transfer": (lambda a, b: fn.kernel_transfer_loss(a, b, ms, mt), 1.0),
    }
    for name, (term, scale) in terms.items():
        s, t = s0 * scale, t0 * scale
        half = term(s.bfloat16(), t.bfloat16())
        assert half.dtype == torch.float32, name
        torch.testing.assert_close(half, term(s.bfloat16().float(), t.bfloat16().float()), rtol=1e-6, atol=1e-7, msg=name)
        outside = term(s, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert (s @ t.T).dtype == torch.bfloat16  # autocast really is active
            inside = term(s, t)
        assert inside.dtype == torch.float32, name
        torch.testing.assert_close(inside, outside, rtol=1e-6, atol=1e-7, msg=name)


def _sibling_imports(path) -> set[str]:
    """Modules of hf_rcka.functional that ``path`` imports (``from .x import ...`` or ``from . import x``)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


def test_functional_modules_import_each_other_without_a_cycle():
    from pathlib import Path

    package = Path(fn.__file__).parent
    graph = {p.stem: _sibling_imports(p) for p in package.glob("*.py") if p.stem != "__init__"}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle in hf_rcka.functional: {' -> '.join(path + (name,))}"
        if name not in done:
            for imported in graph.get(name, ()):
                visit(imported, path + (name,))
            done.add(name)

    for name in graph:
        visit(name, ())
    assert {"cka", "patch", "pcka_kernel", "nystrom", "kd", "numerics"} <= set(graph)
    assert all(hasattr(fn, name) for name in fn.__all__)


def test_sample_rows_flattens_channels_last_maps_without_a_copy_and_keeps_cka():
    fmap = torch.randn(5, 3, 4, 6).to(memory_format=torch.channels_last)
    rows = fn.sample_rows(fmap)
    assert rows.shape == (5, 72) and rows.data_ptr() == fmap.data_ptr(), "a channels_last map must not be copied"
    other = torch.randn(5, 11)
    torch.testing.assert_close(fn.linear_cka(rows, other), fn.linear_cka(fmap.flatten(1), other), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fn.rbf_cka(rows, other), fn.rbf_cka(fmap.flatten(1), other), rtol=1e-5, atol=1e-6)
    tokens = torch.randn(5, 7, 2)
    assert torch.equal(fn.sample_rows(tokens), tokens.flatten(1))


def test_the_public_gram_functions_compute_in_float32_whatever_they_are_given():
    """float16 Grams gave an infinite HSIC and a NaN CKA; under bf16 autocast gram_linear returned
    bfloat16 and cka_from_grams 1.0 for a CKA of 0.998."""
    torch.manual_seed(0)
    x = torch.randn(64, 256)
    y = x + 0.1 * torch.randn(64, 256)
    reference = fn.linear_cka(x.double(), y.double())
    half = fn.cka_from_grams(fn.gram_linear(x.half()), fn.gram_linear(y.half()))
    assert half.dtype == torch.float32 and abs(float(half) - float(reference)) < 1e-3
    assert torch.isfinite(fn.hsic(fn.gram_linear(x.half()), fn.gram_linear(y.half())))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k, l = fn.gram_linear(x), fn.gram_linear(y)
        assert k.dtype == torch.float32
        assert abs(float(fn.cka_from_grams(k, l)) - float(reference)) < 1e-4
        assert fn.center_gram(k).dtype == torch.float32
        assert fn.landmark_similarity(x, y[:5]).dtype == torch.float32


def test_rbf_cka_is_scale_invariant_for_small_features():
    """An absolute bandwidth floor changed the kernel below 1e-4: 0.792 became 0.744 at 1e-6 (and
    a floor on the uncentred norm made it depend on a shift: 0.744 for x * 1e-3 + 100)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 32, dtype=torch.float64), torch.randn(16, 32, dtype=torch.float64)
    at_one = float(fn.rbf_cka(x, y))
    for scale in (1e-5, 1e-6, 1e-9):
        assert abs(float(fn.rbf_cka(x * scale, y)) - at_one) < 1e-9
        assert abs(float(fn.rbf_cka(x * scale, x)) - 1.0) < 1e-9
    for scale, shift in ((1e-3, 100.0), (1e-2, 300.0)):  # and shift invariant: distances ignore offsets
        assert abs(float(fn.rbf_cka(x * scale + shift, y)) - at_one) < 1e-6
        assert abs(float(fn.rbf_cka((x * scale + shift).float(), y.float())) - at_one) < 1e-3


def test_the_transposed_patch_term_is_left_out_where_a_patch_has_too_few_pixels():
    """Over one pixel (batch 1, 1-pixel patches) it is a constant 0: identical maps scored 0.5."""
    from hf_rcka.functional.patch import patch_cka

    x = torch.randn(1, 4, 3, 3)
    assert torch.allclose(patch_cka(x, x.clone(), patch_size=4, transpose=True), torch.ones(4))
    y = torch.randn(2, 4, 8, 8)
    both = patch_cka(y, y.clone(), patch_size=2, transpose=True)
    assert torch.allclose(both, torch.ones(4), atol=1e-5)


def test_rcka_refuses_row_normalize_with_the_rbf_kernel():
    from hf_rcka.losses.rcka import RCKALoss

    with pytest.raises(ValueError, match="row_normalize applies to the linear kernel"):
        RCKALoss(kernel="rbf", center=False, row_normalize=True)


@pytest.mark.parametrize("shape", [(2, 2), (5, 5), (3, 4, 4)])
def test_the_rbf_bandwidths_off_diagonal_entries_are_the_masked_ones(shape):
    """Read as a view: a boolean mask reads its count back from the device at every Gram."""
    from hf_rcka.functional.cka import _off_diagonal

    square = torch.randn(*shape)
    n = shape[-1]
    assert torch.equal(_off_diagonal(square), square[..., ~torch.eye(n, dtype=torch.bool)])



def test_row_normalized_cka_of_many_items_never_builds_their_gram(monkeypatch):
    """RCKA's inter term with row_normalize (the public code's setting) relates classes: at 21,841
    classes it built two 21,841 x 21,841 Grams (11 GB, 90 s a CPU step). In the feature form it is
    the same alignment, values and gradients."""
    from hf_rcka.functional import cka

    x = torch.randn(300, 7, dtype=DOUBLE, requires_grad=True)
    y = torch.randn(300, 5, dtype=DOUBLE)
    xs, ys = cka._unit_frobenius(x, 1e-8), cka._unit_frobenius(y, 1e-8)
    gram = cka._cka_from_grams(cka._row_normalized_gram(xs, 1e-8), cka._row_normalized_gram(ys, 1e-8), center=False)
    expected = torch.autograd.grad(gram, x)[0]
    monkeypatch.setattr(cka, "_row_normalized_gram", lambda *a: pytest.fail("built the 300 x 300 Gram"))
    got = fn.linear_cka(x, y, center=False, row_normalize=True)
    torch.testing.assert_close(got, gram, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], expected, rtol=1e-10, atol=1e-14)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the channels_last path is taken on CUDA only")
def test_resize_bilinear_on_cuda_takes_the_channels_last_kernel_with_the_same_values():
    from hf_rcka.functional.resize import resize_bilinear

    fmap = torch.randn(4, 96, 7, 7, device="cuda", requires_grad=True)
    got = resize_bilinear(fmap, (9, 9))
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, F.interpolate(fmap, size=(9, 9), mode="bilinear", align_corners=False))
    got.sum().backward()
    assert fmap.grad is not None and fmap.grad.shape == fmap.shape


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "tokens"])
def test_resize_bilinear_is_torchs_bilinear_resize_for_any_layout(layout):
    from hf_rcka.functional.resize import resize_bilinear

    torch.manual_seed(0)
    fmap = torch.randn(3, 5, 7, 6)
    if layout == "channels_last":
        fmap = fmap.contiguous(memory_format=torch.channels_last)
    elif layout == "tokens":  # a ViT's tokens after the class token, seen as a map: neither layout
        fmap = torch.randn(3, 1 + 7 * 6, 5)[:, 1:].transpose(1, 2).reshape(3, 5, 7, 6)
    for size in ((9, 8), (4, 3), (7, 6)):
        expected = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(resize_bilinear(fmap, size), expected, rtol=0, atol=0)


@pytest.mark.parametrize("lead", [(), (3,)], ids=["rows", "batched"])
@pytest.mark.parametrize("center", [True, False])
def test_large_sides_are_read_in_blocks_with_the_same_cka_and_gradient(monkeypatch, center, lead):
    """Both sides are upcast and centred block by block (never a whole float32 copy at once), the
    student's in its backward too; blocks of 5 columns, the last one short, give the CKA and student
    gradient of the whole-side computation."""
    from hf_rcka.functional import gram

    torch.manual_seed(0)
    student = torch.randn(*lead, 6, 40, dtype=torch.float64, requires_grad=True)
    teacher = (torch.randn(*lead, 6, 23, dtype=torch.float64) + 3.0).to(torch.bfloat16)  # offset: centring matters
    whole = fn.linear_cka(student, teacher.double().requires_grad_(), center=center)  # the side with a gradient
    (whole_grad,) = torch.autograd.grad(whole.sum(), student)
    monkeypatch.setattr(gram, "_BLOCK_VALUES", {"cpu": 6 * 5 * (lead[0] if lead else 1)})  # 5 columns a block
    monkeypatch.setattr(gram, "_MIN_BLOCK_COLUMNS", 1)
    blocked = fn.linear_cka(student, teacher, center=center)
    (blocked_grad,) = torch.autograd.grad(blocked.sum(), student)
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(blocked_grad, whole_grad, rtol=1e-10, atol=1e-12)
    if center:  # a constant side is told from its rounding noise by its column means: CKA 0, not noise / noise
        constant = torch.full((*lead, 6, 23), 5.0, dtype=torch.bfloat16)
        assert (fn.linear_cka(student, constant, center=True) == 0).all()


def test_compiled_cka_with_a_no_gradient_side_follows_the_batch_size_without_recompiling():
    """The teacher's side is read in blocks whose width follows the batch size; taken under
    torch.compile that would pin the batch size and recompile for every new one (the last
    training batch, each evaluation size)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(fn.linear_cka, backend=counter)
    for batch in (16, 16, 12, 8, 10, 6):
        student = torch.randn(batch, 50, requires_grad=True)
        compiled(student, torch.randn(batch, 50).to(torch.bfloat16)).backward()
    assert counter.frame_count <= 2, f"{counter.frame_count} compilations for 5 batch sizes"
    torch._dynamo.reset()


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_the_student_side_holds_no_upcast_or_centred_copy_for_its_backward(center, dtype):
    """The loss saves the student's hidden state itself for the Gram's backward (the student's own
    backward holds it anyway), not a float32 or centred copy of it, and the gradient is autograd's
    of the plain formula."""
    torch.manual_seed(0)
    student = (torch.randn(8, 300) * 2 + 5).to(dtype).requires_grad_()
    teacher = torch.randn(8, 200)
    big = []

    def pack(saved: torch.Tensor) -> torch.Tensor:
        if saved.numel() >= student.numel():
            big.append(saved)
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved):
        value = fn.linear_cka(student, teacher, center=center)
    assert big and all(saved.data_ptr() == student.data_ptr() and saved.dtype == dtype for saved in big)
    (grad,) = torch.autograd.grad(value, student)
    reference = student.detach().double().requires_grad_()
    x, y = (reference - reference.mean(0), teacher.double() - teacher.double().mean(0)) if center else (reference, teacher.double())
    k, l = x @ x.T, y @ y.T
    expected = (k * l).sum() / ((k * k).sum() * (l * l).sum()).sqrt()
    (expected_grad,) = torch.autograd.grad(expected, reference)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad.to(dtype).double(), rtol=2e-2 if dtype == torch.bfloat16 else 1e-4, atol=1e-6)


@pytest.mark.parametrize("lead", [(), (3,)], ids=["rows", "batched"])
@pytest.mark.parametrize("center", [True, False])
def test_a_side_reduced_to_its_gram_gives_the_cka_of_its_features(center, lead):
    """feature CKA reduces the teacher's side to a GramSide right after the teacher's forward: the CKA
    and the student's gradient are those of the features, for any subset of rows too (evaluation
    drops unreadable images' stand-ins), and a constant side still gives 0."""
    torch.manual_seed(0)
    student = torch.randn(*lead, 7, 30, dtype=torch.float64, requires_grad=True)
    teacher = (torch.randn(*lead, 7, 50, dtype=torch.float64) + 3.0).to(torch.bfloat16)
    side = fn.linear_cka_side(teacher, center=center)
    assert side.gram.shape == (*lead, 7, 7) and side.gram.dtype == torch.float32
    (expected_grad,) = torch.autograd.grad(expected := fn.linear_cka(student, teacher, center=center), student, torch.ones_like(expected))
    got = fn.linear_cka(student, side, center=center)
    (got_grad,) = torch.autograd.grad(got, student, torch.ones_like(got))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-8)
    keep = torch.tensor([True, False, True, True, False, True, True])
    torch.testing.assert_close(fn.linear_cka(student[..., keep, :], side.rows(keep), center=center),
                               fn.linear_cka(student[..., keep, :], teacher[..., keep, :], center=center), rtol=1e-6, atol=1e-7)
    if center:
        constant = fn.linear_cka_side(torch.full((*lead, 7, 50), 5.0, dtype=torch.bfloat16))
        assert (fn.linear_cka(student, constant) == 0).all()
        assert (fn.linear_cka(student[..., keep, :], constant.rows(keep)) == 0).all()


@pytest.mark.parametrize("center", [True, False])
def test_both_sides_reduced_to_grams_give_the_cka_and_student_gradient_of_the_features(center):
    """feature CKA reduces a student's side too, inside its forward: the gradient flows back through
    the student's GramSide to its features, equal to the features' CKA gradient."""
    torch.manual_seed(0)
    student = (torch.randn(2, 7, 300, dtype=torch.float64) + 1.0).requires_grad_()
    teacher = torch.randn(2, 7, 50, dtype=torch.float64) + 3.0
    expected = fn.linear_cka(student, teacher, center=center)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    got = fn.linear_cka(fn.linear_cka_side(student, center), fn.linear_cka_side(teacher, center), center=center)
    (got_grad,) = torch.autograd.grad(got.sum(), student)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-8, atol=1e-12)
    assert got_grad.abs().max() > 1e-4
    with pytest.raises(ValueError, match="the same n items"):
        fn.linear_cka(fn.linear_cka_side(student[0], center), fn.linear_cka_side(teacher[0, :5], center), center=center)


def test_a_gram_side_is_refused_where_its_features_would_be_needed():
    x, side = torch.randn(6, 4), fn.linear_cka_side(torch.randn(6, 9))
    with pytest.raises(ValueError, match="made with center=True, and this CKA has center=False"):
        fn.linear_cka(x, side, center=False)
    with pytest.raises(ValueError, match="row_normalize and unbiased need the features"):
        fn.linear_cka(x, side, unbiased=True)
    with pytest.raises(ValueError, match="the same n items"):
        fn.linear_cka(torch.randn(5, 4), side)


@pytest.mark.parametrize("device, most", [("meta", 8), ("cpu", 64)])
def test_a_side_is_cut_in_few_contiguous_blocks(device, most):
    """At most 8 blocks off the CPU (each costs a GPU a few kernel launches), up to 64 on it, where
    4 MiB blocks keep the backward's float32 rows small beside a CNN student's activations."""
    from hf_rcka.functional.gram import _column_blocks

    counts = []
    for shape in ((256, 160007), (256, 320007), (64, 560007), (16, 702464), (4, 16, 100000), (16, 802816)):
        side = torch.empty(shape, device="meta") if device == "meta" else torch.empty(()).expand(shape)  # no memory
        blocks = _column_blocks(side)
        assert 1 < len(blocks) <= most, shape
        assert blocks[0].start == 0 and all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))
        assert blocks[-1].start < shape[-1] <= blocks[-1].stop
        counts.append(len(blocks))
    if device == "cpu":  # 16 x 802,816 values (a ResNet-50 first stage at batch 16): 4 MiB float32 blocks
        assert counts[-1] == 13


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's forward AD, inside
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_torch_func_transforms_pass_through_linear_cka(dtype):
    """Under torch.func a same-dtype ``to`` hands out another object for the captured input itself:
    centring that in place mutated the input, which jvp refuses."""
    torch.manual_seed(0)
    x, y, tangent = torch.randn(6, 40).to(dtype), torch.randn(6, 23), torch.randn(6, 40).to(dtype)
    value, derivative = torch.func.jvp(lambda a: fn.linear_cka(a, y), (x,), (tangent,))
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(fn.linear_cka(leaf, y), leaf)
    torch.testing.assert_close(value.double(), fn.linear_cka(x, y).double())
    torch.testing.assert_close(derivative.double(), (grad.double() * tangent.double()).sum(), rtol=2e-2, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's forward AD, inside
def test_forward_mode_derivatives_pass_through_linear_cka():
    """jvp through the path without gradient: detaching the whole side (not only its mean) gave a
    tangent of 0 without a word."""
    torch.manual_seed(0)
    x, y, tangent = torch.randn(6, 40, dtype=torch.float64), torch.randn(6, 23, dtype=torch.float64), None
    tangent = torch.randn_like(x)
    import torch.autograd.forward_ad as forward_ad

    for center in (True, False):
        with forward_ad.dual_level():
            jvp = forward_ad.unpack_dual(fn.linear_cka(forward_ad.make_dual(x, tangent), y, center=center)).tangent
        step = 1e-6
        finite = (fn.linear_cka(x + step * tangent, y, center=center) - fn.linear_cka(x - step * tangent, y, center=center)) / (2 * step)
        assert abs(float(jvp) - float(finite)) < 1e-7 and abs(float(finite)) > 1e-4


@pytest.mark.parametrize("side", ["x", "y"])
@pytest.mark.parametrize("p", [4, 4000], ids=["feature_form", "gram_form"])
def test_the_constant_feature_threshold_is_relative_to_the_whole_uncentred_norm(side, p):
    """Documented: a side whose centred norm is below ~100 ulps of its uncentred norm is constant.
    Images 20 ulps apart (n = 64) are below it, on either side and through either form;
    10,000 ulps apart they are not."""
    torch.manual_seed(0)
    n, ulp = 64, torch.finfo(torch.float32).eps
    base = torch.rand(p) + 1.0
    other = torch.randn(n, 8)
    for spread, constant in ((20 * ulp, True), (1e4 * ulp, False)):
        jittered = base * (1 + spread * torch.randn(n, p))
        other[:, 0] = jittered[:, 0]  # follows the jitter
        value = fn.linear_cka(jittered, other) if side == "x" else fn.linear_cka(other, jittered)
        assert (value == 0) == constant, (spread, float(value))


def test_a_side_equal_up_to_rounding_is_constant_in_column_blocks_too(monkeypatch):
    """The block path's column means feed the constant-feature check: a side whose images differ
    only by float32 rounding gives CKA 0, read whole or in blocks, with or without gradient.
    (torch.full sides centre to exact zeros, so they pass whatever the means are.)"""
    from hf_rcka.functional import gram

    torch.manual_seed(0)
    constant = (torch.rand(23) + 1.0) * (1 + 1e-7 * torch.randn(6, 23))  # float32, 1-2 ulps apart
    student = torch.randn(6, 40)
    student[:, 0] = constant[:, :5].sum(1)  # follows the rounding noise: noise / noise would be large
    assert fn.linear_cka(student, constant) == 0
    monkeypatch.setattr(gram, "_BLOCK_VALUES", {"cpu": 6 * 5})
    monkeypatch.setattr(gram, "_MIN_BLOCK_COLUMNS", 1)
    assert fn.linear_cka(student, constant) == 0
    assert fn.linear_cka(student, constant.clone().requires_grad_()) == 0
    assert fn.linear_cka_side(constant).mean_sq > 0


def test_centred_row_normalized_cka_of_many_items_is_that_of_its_centred_grams():
    """``row_normalize`` with ``center=True`` (which RCKALoss accepts) centres the row-normalised
    Grams: the uncentred feature form, cheaper for many items of few features, must not be taken
    for it (it would give the public code's uncentred alignment instead, a different value)."""
    from hf_rcka.functional import cka

    n, p, q = 300, 7, 5
    assert not cka._gram_form_is_cheaper(n, p, q)
    x, y = related_pair(n, p, q, seed=31)
    x = x + randn(n, 1, seed=32)  # rows of different norms, so the row normalisation matters

    def centred_row_gram(a):
        g = a.double() @ a.double().T
        h = centering_matrix(a.shape[0])
        return h @ (g / torch.sqrt(torch.diag(g))[:, None]) @ h

    gx, gy = centred_row_gram(x), centred_row_gram(y)
    want = (gx * gy).sum() / torch.sqrt((gx * gx).sum() * (gy * gy).sum())
    got = fn.linear_cka(x, y, center=True, row_normalize=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert abs(got.item() - fn.linear_cka(x, y, center=False, row_normalize=True).item()) > 1e-3


def test_the_rbf_gram_of_two_items_takes_their_one_distance_as_the_median():
    """Two items have one pairwise distance, the median the bandwidth is made from: their RBF Gram
    is the reference's (off-diagonal exp(-1/2)), not an identity (a bandwidth of ~0, from the
    floor that serves one item)."""
    x = randn(2, 36, seed=33)
    torch.testing.assert_close(fn.gram_rbf(x), naive_rbf_gram(x, 1.0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fn.gram_rbf(x, 0.5)[0, 1], torch.exp(torch.tensor(-2.0, dtype=DOUBLE)))


@pytest.mark.parametrize("side", ["x", "y"])
def test_the_unbiased_estimator_takes_a_side_equal_up_to_rounding_as_constant(side):
    """The unbiased CKA centres the columns itself, and must apply the same constant-feature check
    as the default estimator: images 20 ulps apart are constant (CKA exactly 0, not their rounding
    noise aligned with a column that follows it: 0.012), 10,000 ulps apart they are not."""
    torch.manual_seed(0)
    n, ulp = 64, torch.finfo(torch.float32).eps
    base = torch.rand(40) + 1.0
    other = torch.randn(n, 8)
    for spread, constant in ((20 * ulp, True), (1e4 * ulp, False)):
        jittered = base * (1 + spread * torch.randn(n, 40))
        other[:, 0] = jittered[:, 0]  # follows the jitter
        pair = (jittered, other) if side == "x" else (other, jittered)
        value = fn.linear_cka(*pair, unbiased=True)
        assert (value == 0) == constant, (spread, float(value))


def test_hsic_of_half_precision_grams_is_computed_in_float32():
    """``hsic`` is public and takes Grams a caller made in any precision: float16 Grams of 256
    features summed to an infinite HSIC in float16 (it must upcast them, as ``cka_from_grams`` does)."""
    torch.manual_seed(0)
    x = torch.randn(64, 256)
    y = x + 0.1 * torch.randn(64, 256)
    k, l = x @ x.T, y @ y.T
    want = fn.hsic(k.double(), l.double())
    for unbiased in (False, True):
        got = fn.hsic(k.half(), l.half(), unbiased=unbiased)
        assert got.dtype == torch.float32 and torch.isfinite(got), (unbiased, got)
    got = fn.hsic(k.half(), l.half())
    assert abs(float(got) - float(want)) < 1e-3 * abs(float(want))


def test_linear_cka_many_under_autocast_computes_in_float32():
    """Feature CKA's pairs go through ``linear_cka_many``, inside the model's autocast region in
    bf16 training: its Grams must stay float32 there (bf16 ones returned a bfloat16 CKA 4e-3 off)."""
    torch.manual_seed(0)
    xs = [torch.randn(16, 300), torch.randn(16, 500)]
    ys = [x[:, :200] + 0.5 * torch.randn(16, 200) for x in xs]
    outside = fn.linear_cka_many(xs, ys)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (xs[0] @ xs[0].T).dtype == torch.bfloat16  # autocast really is active
        inside = fn.linear_cka_many(xs, ys)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, outside, rtol=0, atol=1e-6)
