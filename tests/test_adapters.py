"""Adapters: registry and options, each adapter's maths, and real model pairs in all four directions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _models import BATCH, FAMILIES, pixels
from hf_rcka import ADAPTERS
from hf_rcka.adapters import IdentityAdapter, LinearAdapter, PatchMatchAdapter, build_adapter
from hf_rcka.features.hidden_states import describe_hidden_states, forward_with_hidden_states, hidden_states_of
from hf_rcka.features.pairing import auto_feature_pairs
from hf_rcka.features.layout import FeatureSpec, pooled_spec, resample, to_fmap

VIT = FeatureSpec("nlc", 36, (4, 4), num_prefix_tokens=1, stride=8.0)  # student tokens (B, 17, 36)
CNN = FeatureSpec("nchw", 20, (8, 8), stride=4.0)  # teacher map (B, 20, 8, 8)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _features(spec: FeatureSpec, requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(BATCH, *spec.shape, requires_grad=requires_grad)


def test_importing_the_package_registers_every_adapter():
    assert {"identity", "linear", "patch_match"} <= set(ADAPTERS.names())
    adapter = ADAPTERS.build("patch_match", student=VIT, teacher=CNN, grid="teacher")
    assert isinstance(adapter, PatchMatchAdapter) and adapter.grid == (8, 8)


def test_build_adapter_rejects_unknown_options_and_names():
    with pytest.raises(ValueError, match="did you mean 'grid'"):
        build_adapter("patch_match", VIT, CNN, grd="min")
    with pytest.raises(ValueError, match="'identity' takes no options \\(got 'project'\\)"):
        build_adapter("identity", VIT, CNN, project=True)
    with pytest.raises(KeyError, match="patch_match"):
        build_adapter("patch_mach", VIT, CNN)


def test_identity_passes_features_through():
    student, teacher = _features(VIT), _features(CNN)
    out = build_adapter("identity", VIT, CNN)(student, teacher)
    assert isinstance(build_adapter("identity", VIT, CNN), IdentityAdapter)
    assert out[0] is student and out[1] is teacher


@pytest.mark.parametrize(
    "student_spec",
    [pooled_spec(36), FeatureSpec("nlc", 36, (4, 4), num_prefix_tokens=1), FeatureSpec("nchw", 36, (4, 2))],
)
def test_linear_projects_student_channels(student_spec: FeatureSpec):
    teacher_spec = FeatureSpec("nchw", 20, (8, 8))
    adapter = build_adapter("linear", student_spec, teacher_spec)
    assert isinstance(adapter, LinearAdapter)
    student, teacher = _features(student_spec, requires_grad=True), _features(teacher_spec)
    out_student, out_teacher = adapter(student, teacher)
    assert out_teacher is teacher
    weight, bias = adapter.proj.weight, adapter.proj.bias
    if student.dim() == 4:  # a 1x1 convolution on the channel dimension
        expected = F.conv2d(student, weight[:, :, None, None], bias)
    else:
        expected = student @ weight.T + bias
    torch.testing.assert_close(out_student, expected)
    out_student.square().mean().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_linear_rejects_a_wrong_width():
    adapter = build_adapter("linear", pooled_spec(36), pooled_spec(20), bias=False)
    assert adapter.proj.bias is None
    with pytest.raises(ValueError, match="expects 36 student channels"):
        adapter(torch.randn(BATCH, 20), torch.randn(BATCH, 20))


@pytest.mark.parametrize(("grid", "expected"), [("min", (4, 4)), ("student", (4, 4)), ("teacher", (8, 8)),
                                                 ([2, 3], (2, 3))])
def test_patch_match_gives_equal_shapes_on_the_chosen_grid(grid, expected):
    adapter = build_adapter("patch_match", VIT, CNN, grid=grid, project=True)
    student, teacher = adapter(_features(VIT), _features(CNN))
    assert student.shape == teacher.shape == (BATCH, CNN.channels, *expected)


def test_patch_match_min_grid_is_per_dimension():
    wide = FeatureSpec("nchw", 20, (2, 8))
    assert build_adapter("patch_match", CNN, wide).grid == (2, 8)
    assert build_adapter("patch_match", FeatureSpec("nchw", 20, (4, 16)), wide).grid == (2, 8)


@pytest.mark.parametrize("grid", ["min", "teacher"])  # downsample the teacher / upsample the student
def test_patch_match_drops_prefix_tokens_and_projects_patch_by_patch(grid: str):
    adapter = build_adapter("patch_match", VIT, CNN, grid=grid)
    student, teacher = _features(VIT), _features(CNN)
    out_student, out_teacher = adapter(student, teacher)
    patches = student[:, 1:].transpose(1, 2).reshape(BATCH, 36, 4, 4)  # CLS token dropped, row-major
    expected = F.conv2d(resample(patches, adapter.grid), adapter.proj.weight, adapter.proj.bias)
    torch.testing.assert_close(out_student, expected)
    torch.testing.assert_close(out_teacher, resample(teacher, adapter.grid))


def test_patch_match_map_student_downsampled_then_projected():
    adapter = build_adapter("patch_match", CNN, VIT)  # 20-channel 8x8 map -> 36-channel 4x4 token grid
    student, teacher = _features(CNN), _features(VIT)
    out_student, out_teacher = adapter(student, teacher)
    expected = F.conv2d(student, adapter.proj.weight, adapter.proj.bias).reshape(BATCH, 36, 4, 2, 4, 2).mean((3, 5))
    torch.testing.assert_close(out_student, expected)
    torch.testing.assert_close(out_teacher, teacher[:, 1:].transpose(1, 2).reshape(BATCH, 36, 4, 4))


def test_patch_match_projects_only_when_asked_or_needed():
    same_width = FeatureSpec("nchw", 36, (8, 8))
    assert build_adapter("patch_match", VIT, same_width).proj is None
    assert build_adapter("patch_match", VIT, same_width, project=True).proj is not None
    adapter = build_adapter("patch_match", VIT, CNN, project=False)
    assert adapter.proj is None and not list(adapter.parameters())
    student, teacher = adapter(_features(VIT), _features(CNN))
    assert student.shape == (BATCH, 36, 4, 4) and teacher.shape == (BATCH, 20, 4, 4)
    with pytest.raises(ValueError, match="grid must be one of"):
        build_adapter("patch_match", VIT, CNN, grid="max")


def test_patch_match_samples_teacher_channels_in_training_only():
    adapter = build_adapter("patch_match", VIT, CNN, sample_channels=6)  # 20 teacher channels
    student, teacher = _features(VIT), _features(CNN)
    full_student, full_teacher = adapter.eval()(student, teacher)
    assert full_student.shape[1] == full_teacher.shape[1] == 20
    out_student, out_teacher = adapter.train()(student, teacher)
    assert out_student.shape == out_teacher.shape == (BATCH, 6, 4, 4)
    # each sampled channel is one of the full outputs, on both sides the same one
    picked = [int((full_teacher - out_teacher[:, [j]]).abs().flatten(2).amax((0, 2)).argmin()) for j in range(6)]
    assert len(set(picked)) == 6
    torch.testing.assert_close(out_teacher, full_teacher[:, picked])
    torch.testing.assert_close(out_student, full_student[:, picked])


def test_patch_match_channel_sampling_is_uniform():
    """Every channel equally likely, so the mean over a sample estimates the mean over all."""
    spec = FeatureSpec("nchw", 10, (8, 8))
    adapter = build_adapter("patch_match", spec, spec, sample_channels=4)
    teacher = torch.arange(10.0).view(1, 10, 1, 1).expand(1, 10, 8, 8)
    counts = torch.zeros(10)
    for _ in range(2000):
        _, picked = adapter(torch.zeros(1, *spec.shape), teacher)
        counts[picked[0, :, 0, 0].long()] += 1
    torch.testing.assert_close(counts / 2000, torch.full((10,), 0.4), atol=0.05, rtol=0)


def test_patch_match_sample_channels_values():
    assert build_adapter("patch_match", VIT, CNN, sample_channels="student").sample_channels == 36
    wide = build_adapter("patch_match", VIT, CNN, sample_channels=20).train()  # not fewer than the teacher has
    assert wide(_features(VIT), _features(CNN))[1].shape[1] == 20
    for bad in (0, -3, 2.5, True, "teacher"):
        with pytest.raises(ValueError, match="sample_channels must be a positive int, 'student' or null"):
            build_adapter("patch_match", VIT, CNN, sample_channels=bad)


def test_patch_match_bfloat16():
    adapter = build_adapter("patch_match", VIT, CNN).to(torch.bfloat16)
    student, teacher = adapter(_features(VIT).bfloat16(), _features(CNN).bfloat16())
    assert student.dtype == teacher.dtype == torch.bfloat16 and student.shape == teacher.shape


# ------------------------------------------------------------- real models, four directions

DIRECTIONS = {  # name: (student family, teacher family, expected (student_layer, teacher_layer) pairs)
    "cnn_to_cnn": ("hf_resnet", "timm_regnet", [(1, 1), (2, 2), (3, 3), (4, 4)]),
    "cnn_to_cnn_many_layers": ("hf_mobilenet_v2", "hf_convnext", [(1, 1), (4, 2), (11, 3), (15, 4)]),
    "vit_to_vit": ("timm_vit", "hf_deit", [(0, 1), (1, 2)]),
    "cnn_teacher_vit_student": ("hf_deit", "timm_regnet", [(1, 2), (2, 4)]),
    "vit_teacher_cnn_student": ("timm_resnet", "hf_vit", [(2, 1), (4, 2)]),
    "swin_teacher_dinov2_student": ("hf_dinov2_registers", "timm_swin", [(1, 1), (2, 2)]),
}


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_real_pairs_align_and_train_the_adapters(direction: str):
    student_family, teacher_family, expected_pairs = DIRECTIONS[direction]
    student_fam, teacher_fam = FAMILIES[student_family], FAMILIES[teacher_family]
    student_model, teacher_model = student_fam.build().train(), teacher_fam.build()
    x = pixels(student_fam.image_size)
    teacher_x = pixels(teacher_fam.image_size)
    student_specs = describe_hidden_states(student_model, x)
    teacher_specs = describe_hidden_states(teacher_model, teacher_x)
    pairs = auto_feature_pairs(student_specs, teacher_specs)
    assert [(s, t) for s, t, _ in pairs] == expected_pairs

    adapters = [build_adapter("patch_match", student_specs[s], teacher_specs[t], project=True) for s, t, _ in pairs]
    student_states = hidden_states_of(forward_with_hidden_states(student_model, x))
    with torch.no_grad():
        teacher_states = hidden_states_of(forward_with_hidden_states(teacher_model, teacher_x))
    loss = torch.zeros(())
    for adapter, (s, t, _) in zip(adapters, pairs):
        out_student, out_teacher = adapter(student_states[s], teacher_states[t])
        assert out_student.shape == out_teacher.shape
        assert out_student.shape[-2:] == tuple(min(a, b) for a, b in zip(student_specs[s].grid, teacher_specs[t].grid))
        assert not out_teacher.requires_grad
        loss = loss + F.mse_loss(out_student, out_teacher)
    loss.backward()
    for adapter in adapters:
        assert adapter.proj.weight.grad is not None and adapter.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_model.parameters())


def test_to_fmap_matches_adapter_input_for_real_tokens():
    """The spec of an HF DeiT hidden state turns its tokens into the map patch_match works on."""
    model, x = FAMILIES["hf_deit"].build(), pixels(32)
    spec = describe_hidden_states(model, x)[-1]
    with torch.no_grad():
        tokens = hidden_states_of(model(pixel_values=x, output_hidden_states=True))[-1]
    fmap = to_fmap(tokens, spec)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), tokens[:, 2:])


def test_feature_adapters_sample_channels_only_for_per_channel_losses():
    from hf_rcka import LOSSES
    from hf_rcka.errors import RecipeError
    from hf_rcka.modeling.feature_adapters import build_feature_adapters

    assert LOSSES.get("patch_cka").channel_mean and LOSSES.get("fitnet").channel_mean
    assert not LOSSES.get("feature_cka").channel_mean
    auto = [{"student_layer": 0, "teacher_layer": 0}]
    pairs, adapters = build_feature_adapters(auto, [VIT], [CNN], "map", channel_mean=True)
    assert adapters[0].sample_channels == 36 and pairs[0].options["sample_channels"] == "student"
    _, adapters = build_feature_adapters(auto, [VIT], [CNN], "map", channel_mean=False)
    assert adapters[0].sample_channels is None
    explicit = [{"student_layer": 0, "teacher_layer": 0, "adapter": "patch_match", "sample_channels": None}]
    assert build_feature_adapters(explicit, [VIT], [CNN], "map", channel_mean=True)[1][0].sample_channels is None
    with pytest.raises(RecipeError, match="only estimates losses that average over channels"):
        build_feature_adapters([{**explicit[0], "sample_channels": 8}], [VIT], [CNN], "map", channel_mean=False)


def test_patch_match_prepares_the_teacher_side_alone_with_the_same_result():
    """The model prepares each pair's teacher side right after the teacher's forward (so that the
    full-size stage need not be held through the student's); the pair comes out the same."""
    adapter = build_adapter("patch_match", VIT, CNN, sample_channels=6).train()
    student, teacher = _features(VIT), _features(CNN)
    torch.manual_seed(3)
    expected = adapter(student, teacher)
    torch.manual_seed(3)
    prepared = adapter.prepare_teacher(teacher)
    assert prepared.fmap.shape == (BATCH, 6, *adapter.grid) and prepared.channels.shape == (6,)
    got = adapter(student, prepared)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    assert build_adapter("identity", VIT, CNN).prepare_teacher(teacher) is teacher


def test_a_teacher_side_to_be_grown_is_held_at_its_own_size():
    """A grid finer than the teacher's (grid: student, the ViT teacher's 4 x 4 under a CNN student's
    8 x 8) is reached in forward: the prepared side stays 4 x 4, the pair comes out as before."""
    adapter = build_adapter("patch_match", CNN, VIT, grid="student").train()
    student, teacher = _features(CNN), _features(VIT)
    prepared = adapter.prepare_teacher(teacher)
    assert adapter.grid == (8, 8) and prepared.fmap.shape == (BATCH, 36, 4, 4)
    got, expected = adapter(student, prepared), adapter(student, teacher)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    assert got[1].shape == (BATCH, 36, 8, 8)


def test_an_auto_pairs_own_project_option_wins_over_the_automatic_one():
    """adapter: auto becomes patch_match with a projection for shape-reading losses (identity for
    the others); a pair that says project: false keeps its own choice."""
    from hf_rcka.features.pairing import FeaturePair
    from hf_rcka.modeling.feature_adapters import adapter_choice

    assert adapter_choice(FeaturePair(1, 2, "auto", {}), needs_shape=True) == ("patch_match", {"project": True})
    own = FeaturePair(1, 2, "auto", {"project": False, "grid": "min"})
    assert adapter_choice(own, needs_shape=True) == ("patch_match", {"project": False, "grid": "min"})
    assert adapter_choice(FeaturePair(1, 2, "auto", {}), needs_shape=False) == ("identity", {})


def test_an_auto_pairs_patch_match_options_are_refused_where_auto_passes_features_unchanged():
    """With losses that compare features of any shape (feature_cka alone) adapter auto is the
    identity: a pair's patch_match options (grid: min) were otherwise ignored without a word, for a
    Python user whose pairs no recipe check read first."""
    from hf_rcka.errors import RecipeError
    from hf_rcka.features.pairing import FeaturePair
    from hf_rcka.modeling.feature_adapters import adapter_choice

    with pytest.raises(RecipeError, match=r"options \['grid'\] are patch_match's"):
        adapter_choice(FeaturePair(1, 2, "auto", {"grid": "min"}), needs_shape=False)


def test_patch_match_without_projection_samples_the_same_channels_on_both_sides():
    """With no projection (equal widths) the student's map must be cut to the teacher's sampled
    channels, the same ones: the student's whole map beside the sampled teacher's gave a pair of
    unequal widths (or, at equal widths, channels compared with other channels)."""
    spec = FeatureSpec("nchw", 10, (8, 8))
    adapter = build_adapter("patch_match", spec, spec, sample_channels=4).train()
    assert adapter.proj is None
    fmap = _features(spec)
    student, teacher = adapter(fmap, fmap)
    assert student.shape == teacher.shape == (BATCH, 4, 8, 8)
    torch.testing.assert_close(student, teacher)


def test_a_teacher_side_to_be_grown_is_reduced_on_the_common_grid():
    """The reading loss reduces the teacher's map on the common grid, the one the student's side
    comes out on: a side prepared at its own smaller size (grid: student, a 4 x 4 teacher under an
    8 x 8 student) is grown first. Reduced at 4 x 4, patch CKA's Grams no longer matched the
    student's 8 x 8 map (patch_cka refuses the pair as unaligned)."""
    adapter = build_adapter("patch_match", CNN, VIT, grid="student").train()
    student, teacher = _features(CNN), _features(VIT)
    seen = []
    reduced = adapter.reduce_teacher(adapter.prepare_teacher(teacher), lambda fmap: seen.append(fmap) or fmap)
    assert [tuple(fmap.shape) for fmap in seen] == [(BATCH, 36, 8, 8)]
    got, expected = adapter(student, reduced), adapter(student, teacher)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_adapter_switches_refuse_null_where_they_take_no_default():
    """``bias: null`` is not a switch: it was built as no bias, silently (``project`` alone may be
    unset, meaning 'when the widths differ')."""
    for name in ("patch_match", "linear"):
        with pytest.raises(ValueError, match="bias must be true or false, got None"):
            build_adapter(name, VIT, CNN, bias=None)
    assert build_adapter("patch_match", VIT, CNN, project=None).proj is not None


def test_the_strictest_alignment_of_the_feature_losses_is_what_a_pair_is_checked_for():
    """fitnet compares equal shapes, patch_cka equal (B, C, H, W) maps: together, a pair must give
    maps. A mutant that took the first of ("shape", "map") checked it for equal shapes only, and an
    identity pair of two equal token states, which patch_cka cannot read, was accepted."""
    from hf_rcka.errors import RecipeError
    from hf_rcka.losses.fitnet import FitNetLoss
    from hf_rcka.losses.pcka import PatchCKALoss
    from hf_rcka.modeling.feature_adapters import adapters_for_losses

    identity = [{"student_layer": 0, "teacher_layer": 0, "adapter": "identity"}]
    assert len(adapters_for_losses(identity, [VIT], [VIT], [FitNetLoss()])[1]) == 1
    with pytest.raises(RecipeError, match=r"feature_pairs\[0\]: adapter 'identity' .*equal \(B, C, H, W\) maps"):
        adapters_for_losses(identity, [VIT], [VIT], [FitNetLoss(), PatchCKALoss()])


def test_auto_pairs_give_each_feature_loss_the_alignment_it_compares():
    """FitNets and patch CKA compare equal shapes, so ``adapter: auto`` projects the student onto the
    teacher's shape for them (a mutant that declared FitNets shape-free got the identity adapter, and
    its first step failed on a ViT student's tokens against a CNN teacher's map); feature CKA takes
    any shapes, as they are."""
    from hf_rcka.losses import FeatureCKALoss, FitNetLoss, PatchCKALoss
    from hf_rcka.modeling.feature_adapters import adapters_for_losses

    auto = [{"student_layer": 0, "teacher_layer": 0}]
    for loss, kind in ((FitNetLoss(), PatchMatchAdapter), (PatchCKALoss(), PatchMatchAdapter),
                       (FeatureCKALoss(), IdentityAdapter)):
        assert isinstance(adapters_for_losses(auto, [VIT], [CNN], [loss])[1][0], kind), type(loss).__name__
    adapter = adapters_for_losses(auto, [VIT], [CNN], [FitNetLoss()])[1][0]
    student, teacher = adapter(_features(VIT), _features(CNN))
    assert student.shape == teacher.shape
