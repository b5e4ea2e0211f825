"""The patch-CKA kernel module: both backends give the same values and gradients; CUDA defaults to autograd."""

import pytest
import torch

from hf_rcka import functional as fn
from hf_rcka.functional import pcka_kernel


def _maps(shape=(3, 5, 8, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    t = (0.5 * s.detach() + torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    return s, t


@pytest.mark.parametrize("center", [True, False])
def test_kernel_and_autograd_backends_agree(center):
    results = []
    for backend in ("kernel", "autograd"):
        s, t = _maps()
        value = fn.patch_cka(s, t, 4, center=center, backend=backend)
        value.mul(torch.arange(1.0, 6.0, dtype=value.dtype)).sum().backward()
        results.append((value.detach(), s.grad, t.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert results[0][1].abs().max() > 1e-4


def test_autograd_backend_is_twice_differentiable_and_the_kernel_says_it_is_not():
    s, t = _maps((2, 3, 4, 6), seed=1)
    assert torch.autograd.gradgradcheck(lambda a, b: fn.patch_cka(a, b, 2, backend="autograd"), (s, t))
    with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
        (grad,) = torch.autograd.grad(fn.patch_cka(s, t, 2, backend="kernel").sum(), s, create_graph=True)
        grad.sum().backward()


def test_default_backend_per_device_and_bad_names():
    assert pcka_kernel.default_backend(torch.device("cpu")) == "kernel"
    assert pcka_kernel.default_backend(torch.device("cuda")) == "kernel"  # measured faster on an H200 too
    assert pcka_kernel.default_backend(torch.device("mps")) == "autograd"  # not measured there
    s, t = _maps((2, 3, 4, 4))
    with pytest.raises(ValueError, match="backend must be one of"):
        fn.patch_cka(s, t, 2, backend="triton")


def _in_layout(x, layout):
    """The same values as ``x`` (B, C, H, W), stored in another memory order (a leaf either way)."""
    if layout == "channels_last":
        return x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    if layout == "channel_first_batch_last":
        return x.detach().permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2).requires_grad_()
    if layout == "batch_broadcast":  # stride 0 over the batch: no memory order to follow
        return x.detach()[:1].expand_as(x).requires_grad_()
    return x


@pytest.mark.parametrize("layout", ["channels_last", "channel_first_batch_last", "batch_broadcast"])
@pytest.mark.parametrize("patch", [4, 3])
def test_kernel_gives_contiguous_results_for_any_memory_layout(layout, patch):
    """The kernel cuts maps of any memory layout (a CNN teacher's are channels_last, a broadcast
    batch has stride 0); its values and gradients must be those of contiguous maps."""
    results = []
    for arrange in ("contiguous", layout):
        s, t = _maps((3, 5, 12, 12), seed=2)
        if layout == "batch_broadcast":
            s = s.detach()[:1].expand_as(s).contiguous().requires_grad_()
        s, t = _in_layout(s, arrange), _in_layout(t, "channel_first_batch_last" if arrange != "contiguous" else arrange)
        value = fn.patch_cka(s, t, patch, backend="kernel")
        value.mul(torch.arange(1.0, 6.0, dtype=value.dtype)).sum().backward()
        results.append((value.detach(), s.grad, t.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert results[0][1].abs().max() > 1e-4


def test_channels_last_maps_over_several_channel_blocks(monkeypatch):
    """Channel blocks (the last one shorter) go through one staging buffer, forward and backward."""
    s, t = _maps((3, 5, 12, 12), seed=3)
    value = fn.patch_cka(s, t, 4, backend="kernel")
    value.sum().backward()
    expected = (value.detach(), s.grad.clone(), t.grad.clone())
    monkeypatch.setattr(pcka_kernel, "_BLOCK_BYTES", 2 * 3 * 144 * s.element_size())  # blocks of 2, 2, 1 channels
    assert len(pcka_kernel._channel_blocks(5, 3 * 144 * s.element_size(), s.device)) == 3
    leaves = [_in_layout(m, "channels_last") for m in (s, t)]
    maps = [m * 1.0 for m in leaves]  # non-leaf: autograd.grad returns the gradient as the kernel made it
    value = fn.patch_cka(*maps, 4, backend="kernel")
    grads = torch.autograd.grad(value.sum(), maps)
    for a, b in zip(expected, (value.detach(), *grads)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # in the maps' own layout, so the ops upstream (a projection, a resize) get what they gave
    assert all(g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous() for g in grads)


class _LargestOutput(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the bytes of the largest tensor any op makes or writes while active."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_the_kernel_reads_half_precision_maps_that_need_resizing_block_by_block(monkeypatch, layout):
    """A bf16 student map of 14 x 14 (resized to 16 x 16 for 4-pixel patches) against a float32
    teacher: values and gradients are the upcast-and-resize composition's, the student map itself
    is the only map-sized tensor saved for the backward, and no op makes a float32 copy of a whole
    map, forward or backward (these copies were most of what patch CKA added to a step's peak)."""
    g = torch.Generator().manual_seed(5)
    shape = (4, 6, 14, 14)
    student = torch.randn(shape, generator=g).to(torch.bfloat16)
    teacher = 0.5 * student.float() + torch.randn(shape, generator=g)
    if layout == "channels_last":
        student, teacher = (m.contiguous(memory_format=torch.channels_last) for m in (student, teacher))
    weights = torch.arange(1.0, 7.0)
    want_s = student.clone().requires_grad_()
    want = fn.patch_cka(want_s, teacher, 4, backend="autograd")
    (want_grad,) = torch.autograd.grad(want.mul(weights).sum(), want_s)

    monkeypatch.setattr(pcka_kernel, "_BLOCK_BYTES", 2 * 4 * 256 * 4)  # blocks of 2 channels
    got_s = student.clone().requires_grad_()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    whole_float32 = student.numel() * 4
    with _LargestOutput() as forward, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        got = fn.patch_cka(got_s, teacher, 4, backend="kernel")
    with _LargestOutput() as backward:
        (got_grad,) = torch.autograd.grad(got.mul(weights).sum(), got_s)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert got_grad.dtype == torch.bfloat16 and got_grad.stride() == got_s.stride()
    torch.testing.assert_close(got_grad.float(), want_grad.float(), rtol=1e-2, atol=1e-5)
    assert got_grad.float().abs().max() > 1e-3
    big = [t for t in saved if t.numel() >= student.numel()]
    assert len(big) == 1 and big[0].data_ptr() == got_s.data_ptr() and big[0].dtype == torch.bfloat16
    assert forward.largest < whole_float32 and backward.largest < whole_float32, (forward.largest, backward.largest)


def test_the_kernel_joins_pairs_without_copying_their_maps(monkeypatch):
    """Pairs on one grid go through one kernel call as they are: bf16 and float32, standard and
    channels_last, a frozen teacher beside one with a gradient, over several channel blocks. Values
    and gradients are those of separate calls; the maps themselves are the only map-sized tensors
    saved, and no op makes a tensor the size of a side's maps together (a concatenation copied them,
    forward and backward, and held the copies beside the maps)."""
    g = torch.Generator().manual_seed(6)
    widths = (3, 5, 2)
    students = [torch.randn(4, c, 14, 14, generator=g).to(torch.bfloat16) for c in widths]
    teachers = [0.5 * s.float() + torch.randn(s.shape, generator=g) for s in students]
    students[1] = students[1].contiguous(memory_format=torch.channels_last)
    teachers[2] = teachers[2].contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(pcka_kernel, "_BLOCK_BYTES", 4 * 256 * 4)  # blocks of 1 channel

    def run(join):
        s = [m.clone().requires_grad_() for m in students]
        t = [m.clone().requires_grad_(i == 2) for i, m in enumerate(teachers)]
        saved = []
        with _LargestOutput() as forward, torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
            sims = (fn.patch_cka_many(s, t, 4, backend="kernel") if join
                    else [fn.patch_cka(a, b, 4, backend="kernel") for a, b in zip(s, t)])
        weights = torch.linspace(0.5, 1.5, sum(widths))
        with _LargestOutput() as backward:
            grads = torch.autograd.grad((torch.cat(sims) * weights).sum(), [*s, t[2]])
        return sims, grads, saved, max(forward.largest, backward.largest), (s, t)

    calls = []
    real = pcka_kernel.patch_cka_kernel
    monkeypatch.setattr(pcka_kernel, "patch_cka_kernel", lambda s, *a, **k: calls.append(len(s)) or real(s, *a, **k))
    want_sims, want_grads, _, _, _ = run(join=False)
    assert calls == [1, 1, 1]
    calls.clear()
    sims, grads, saved, largest, (s, t) = run(join=True)
    assert calls == [3]
    for a, b in zip([*sims, *grads], [*want_sims, *want_grads]):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6)
    assert all(a.dtype == b.dtype and a.stride() == b.stride() for a, b in zip(grads, [*s, t[2]]))
    maps = {m.data_ptr() for m in [*s, t[2]]}
    assert maps <= {x.data_ptr() for x in saved}
    rest = [x for x in saved if x.data_ptr() not in maps]
    # the rest: a (C, n, n) Gram direction per side and per-channel scalars (no column means)
    assert sum(x.numel() for x in rest) == 2 * sum(widths) * 16 * 16 + 3 * sum(widths)
    assert largest < 4 * sum(widths) * 196 * 2  # less than the bf16 student maps together


def test_constant_channels_give_the_autograd_values_and_gradients():
    """A channel whose patches are all alike (zero, or the same value over each image) has no
    patch relations after centering; the kernel tells it from a varied one by the uncentered
    norm, as linear_cka does, and gives plain autograd's values and gradients."""
    results = []
    for backend in ("kernel", "autograd"):
        s, t = _maps((3, 4, 8, 8), seed=7)
        with torch.no_grad():
            s[:, 0] = 0.0
            s[:, 1] = torch.tensor([0.5, -1.0, 2.0], dtype=s.dtype)[:, None, None]
            t[:, 2] = 1.5
        value = fn.patch_cka(s, t, 4, backend=backend)
        value.mul(torch.arange(1.0, 5.0, dtype=value.dtype)).sum().backward()
        results.append((value.detach(), s.grad, t.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert results[0][0][:3].abs().max() < 1e-6 and results[0][0][3] > 0.1


def test_a_teacher_reduced_to_its_patch_grams_gives_the_maps_values_and_gradients(monkeypatch):
    """``patch_cka_side`` reduces a frozen teacher map to its per-channel patch Grams; with them in
    place of the maps (alone or joined, bf16 or float32, channels_last, resized to whole patches,
    over several channel blocks) values and the student's gradients are the maps'. The side is
    not changed by being used, and serves only the settings it was made with."""
    g = torch.Generator().manual_seed(8)
    widths = (3, 5)
    students = [torch.randn(4, c, 14, 14, generator=g).to(torch.bfloat16) for c in widths]
    teachers = [0.5 * s.float() + torch.randn(s.shape, generator=g) for s in students]
    teachers[0] = teachers[0].to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(pcka_kernel, "_BLOCK_BYTES", 2 * 4 * 256 * 4)  # blocks of 2 channels
    sides = [fn.patch_cka_side(t, 4) for t in teachers]
    kept = [[x.clone() for x in side.side] for side in sides]
    assert all(side.shape == t.shape and side.side.gram.shape == (t.shape[1], 16, 16) for side, t in zip(sides, teachers))

    def run(teachers_or_sides, join):
        s = [m.clone().requires_grad_() for m in students]
        sims = (fn.patch_cka_many(s, teachers_or_sides, 4) if join
                else [fn.patch_cka(a, b, 4) for a, b in zip(s, teachers_or_sides)])
        return [*sims, *torch.autograd.grad((torch.cat(sims) * torch.linspace(0.5, 1.5, sum(widths))).sum(), s)]

    for join in (False, True):
        for a, b in zip(run(sides, join), run(teachers, join)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for side, before in zip(sides, kept):
        for x, y in zip(side.side, before):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    for kwargs in ({"patch_size": 2}, {"transpose": True}, {"center": False}, {"backend": "autograd"}):
        with pytest.raises(ValueError, match="serves the kernel's plain patch_cka with the same settings only"):
            fn.patch_cka(students[0], sides[0], **{"patch_size": 4, **kwargs})
    assert fn.patch_cka_side(teachers[0][:, :, :2, :1], 4) is None  # fewer patches than CKA relates
    # Grams no smaller than the map (many small patches): the map stays whole
    assert fn.patch_cka_side(torch.zeros(2, 3, 56, 56, dtype=torch.bfloat16), 4) is None  # 196 patches: 3*196^2*4 B
    assert fn.patch_cka_side(torch.zeros(16, 3, 14, 14, dtype=torch.bfloat16), 1) is None
    assert fn.patch_cka_side(torch.zeros(16, 3, 14, 14, dtype=torch.bfloat16), 4) is not None
    with pytest.raises(ValueError, match="all as maps or all reduced"):
        pcka_kernel.patch_cka_kernel(students, [sides[0].side, teachers[1]], 4, 4, (16, 16), True, 1e-8)
    # a float32 student against a float64 teacher's side compares in float64, as against its map
    student, teacher = _maps((3, 4, 8, 8), seed=9)
    student = student.detach().float().requires_grad_()
    want, got = fn.patch_cka(student, teacher.detach(), 4), fn.patch_cka(student, fn.patch_cka_side(teacher.detach(), 4), 4)
    assert got.dtype == want.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_a_teacher_map_of_fewer_patches_than_cka_relates_is_not_reduced():
    """A map of 2 patches (1 x 2) over a batch of 8 has Grams smaller than itself, but no patch
    relations: ``patch_cka_side`` keeps it whole (None), so that ``patch_cka`` gives its documented
    ones (a zero loss, no gradient) rather than a kernel CKA over 2 patches."""
    s, t = _maps((8, 3, 1, 2), seed=10)
    assert fn.patch_cka_side(t.detach(), 4) is None
    assert fn.patch_cka_side(t.detach(), 4, center=False) is not None  # uncentred, 2 patches relate
    torch.testing.assert_close(fn.patch_cka(s, t, 4), torch.ones(3, dtype=s.dtype))


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_channel_equal_up_to_rounding_is_constant_in_the_kernel_too(side):
    """The kernel's constant-channel check compares the centred norm with the uncentred one, as
    linear_cka does: a float32 channel whose 16 patches differ by 50 ulps is constant (CKA exactly 0,
    as through autograd), not its rounding noise aligned with a map that follows it (1.0)."""
    torch.manual_seed(0)
    ulp = torch.finfo(torch.float32).eps
    patch = (torch.rand(8, 2, 4, 4) + 1.0).repeat(1, 1, 4, 4)  # 16 equal 4 x 4 patches per image
    flat = patch * (1 + 50 * ulp * torch.randn(8, 2, 16, 16))  # (below 100 ulps of the norm with n ||mean||^2)
    varied = (flat - patch) / ulp + 0.1 * torch.randn(8, 2, 16, 16)  # follows the rounding noise
    pair = (flat, varied) if side == "student" else (varied, flat)
    for backend in ("kernel", "autograd"):
        assert (fn.patch_cka(*pair, 4, backend=backend) == 0).all(), backend


def test_a_half_precision_teacher_is_reduced_only_where_its_float32_grams_are_smaller():
    """The Grams are kept in float32 for a bf16 map, so their size is weighed at 4 bytes a value
    against the map's 2: a (6, 3, 8, 8) bf16 map in 2-pixel patches (16 patches: 3 KiB of Grams
    against 2.25 KiB of map) stays whole, while the same map in float32 (4.5 KiB) is reduced.
    Weighing the Grams at the map's own 2 bytes reduced the bf16 map, holding a third more memory
    through the student's forward than the map itself, and no test failed."""
    fmap = torch.randn(6, 3, 8, 8)
    assert fn.patch_cka_side(fmap.to(torch.bfloat16), 2) is None
    side = fn.patch_cka_side(fmap, 2)
    assert side is not None and side.side.gram.shape == (3, 16, 16)
    assert fn.patch_cka_side(fmap.to(torch.bfloat16), 4) is not None  # 4 patches of 4: 192 B of Grams


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_the_kernels_constant_check_weighs_the_mean_by_the_patch_count(side):
    """The uncentred norm the constant-channel check compares with is ``||X_c||^2 + n ||mean||^2``
    over the n patches: with 1-pixel patches on a batch of 2 (64 patches of 2 values), a channel
    equal up to 50 ulps at every pixel is constant (CKA 0, as through autograd). Weighing the mean
    by the p values of a patch (2) instead let the rounding noise through as a varied channel, its
    CKA with a map that follows the noise near 1, and no test failed."""
    torch.manual_seed(1)
    ulp = torch.finfo(torch.float32).eps
    level = (torch.rand(2, 2, 1, 1) + 1.0).expand(2, 2, 8, 8)
    flat = level * (1 + 50 * ulp * torch.randn(2, 2, 8, 8))
    varied = (flat - level) / ulp + 0.1 * torch.randn(2, 2, 8, 8)
    pair = (flat, varied) if side == "student" else (varied, flat)
    assert fn.patch.patch_count(8, 8, 1) == 64
    for backend in ("kernel", "autograd"):
        assert (fn.patch_cka(*pair, 1, backend=backend) == 0).all(), backend


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_patch_cka_is_invariant_to_the_scale_of_the_maps(dtype):
    """CKA is invariant to isotropic scaling; the kernel scales each Gram to unit trace so that it
    stays so in floating point (the epsilon is then negligible at any scale). Scaling by the
    inverse norm once instead of squared gave maps scaled by 1e-6 a CKA near 0 instead of 0.9,
    and no test failed."""
    s, t = _maps((3, 4, 8, 8), seed=11)
    s, t = s.detach(), t.detach()
    want = fn.patch_cka(s, t, 4, backend="autograd")
    assert want.min() > 0.5
    for scale in (1e-6, 1e6):
        for backend in ("kernel", "autograd"):
            got = fn.patch_cka((s * scale).to(dtype), (t * scale).to(dtype), 4, backend=backend)
            torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)


def test_maps_that_start_at_an_odd_offset_into_their_storage():
    """The patch copies move a patch row's pixels as one wide element where the strides allow it;
    a map that starts at an odd offset into its storage (a view into a flat buffer) does not, and
    must be read value by value: values and gradients are those of contiguous copies. Leaving the
    offset out of that check made such a map raise from ``Tensor.view``, and no test failed."""
    s, t = _maps((3, 4, 8, 8), seed=12)
    want = fn.patch_cka(s, t, 4)
    weights = torch.arange(1.0, 5.0, dtype=want.dtype)
    want_grads = torch.autograd.grad(want.mul(weights).sum(), (s, t))
    flats = [torch.cat([torch.zeros(1, dtype=m.dtype), m.detach().flatten()]).requires_grad_() for m in (s, t)]
    odd = [f[1:].view(s.shape) for f in flats]
    assert all(m.storage_offset() == 1 and m.is_contiguous() for m in odd)
    got = fn.patch_cka(*odd, 4)
    grads = torch.autograd.grad(got.mul(weights).sum(), flats)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    for g, w in zip(grads, want_grads):
        assert g[0] == 0
        torch.testing.assert_close(g[1:].view(w.shape), w, rtol=1e-12, atol=1e-14)


def test_a_frozen_teacher_costs_the_kernel_no_gram_direction_of_its_own():
    """The usual step distils from a frozen teacher: the kernel then saves the student's map, one
    (C, n, n) Gram direction (built in the teacher Gram's buffer) and per-channel scalars for the
    backward, and no direction for the teacher. Deciding each side's need from both sides' maps
    built and saved the teacher's direction too (twice the saved Grams, a clone more in the
    forward), and no test failed: the join test's teachers include one that needs a gradient."""
    s, t = _maps((3, 5, 12, 12), seed=13)
    t = t.detach()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        value = fn.patch_cka(s, t, 4, backend="kernel")
    n = 9  # 3 x 3 patches of 4 pixels
    rest = [x for x in saved if x.data_ptr() != s.data_ptr()]
    assert len(rest) == len(saved) - 1
    assert sum(x.numel() for x in rest) == 5 * n * n + 3 * 5
    (grad,) = torch.autograd.grad(value.sum(), s)
    torch.testing.assert_close(grad, torch.autograd.grad(fn.patch_cka(s, t, 4, backend="autograd").sum(), s)[0],
                               rtol=1e-10, atol=1e-12)
