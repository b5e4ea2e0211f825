"""Hidden states of every supported HF and timm family, layer indices, heads and automatic pairing."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import transformers as tf
from torch import nn

from _models import BATCH, FAMILIES, NUM_LABELS, hf_hiera, hf_resnet, hf_vit, pixels, timm_model
from hf_rcka.errors import ModelError, UserError
from hf_rcka.features.capture import HiddenStateCapture
from hf_rcka.features.hidden_states import (
    classifier_of, describe_hidden_states, forward_with_hidden_states, hidden_states_of, pooled_dim, probe_forward,
)
from hf_rcka.features.pairing import auto_feature_pairs, choose_pairs, resolve_layer
from hf_rcka.features.layout import FeatureSpec, to_fmap
from hf_rcka.losses import CrossEntropyLoss, FeatureCKALoss
from hf_rcka.modeling import DistillationModel
from hf_rcka.modeling.teacher_inputs import InputStats


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _forward(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return forward_with_hidden_states(model, x)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_specs_describe_every_hidden_state(family: str):
    fam = FAMILIES[family]
    model, x = fam.build(), pixels(fam.image_size)
    specs = describe_hidden_states(model, x)
    states = hidden_states_of(_forward(model, x))
    assert len(specs) == len(states) >= 2
    for spec, state in zip(specs, states):
        assert spec.layout == fam.layout
        assert spec.num_prefix_tokens == fam.num_prefix_tokens
        assert tuple(state.shape) == (BATCH, *spec.shape)
        assert spec.stride == fam.image_size / spec.grid[0]
        assert to_fmap(state, spec).shape == (BATCH, spec.channels, *spec.grid)
    assert [s.is_embedding for s in specs] == [fam.embedding_first] + [False] * (len(specs) - 1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_classifier_input_is_the_pooled_feature(family: str):
    fam = FAMILIES[family]
    model = fam.build()
    seen = []
    handle = classifier_of(model).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        logits = model(pixel_values=pixels(fam.image_size)).logits
    handle.remove()
    assert logits.shape == (BATCH, NUM_LABELS)
    assert len(seen) == 1 and seen[0].shape == (BATCH, pooled_dim(model))


def test_hf_vit_prefix_tokens_are_the_leading_tokens():
    """The CLS token of the embedding output is cls_token + its position embedding: it must be dropped."""
    model, x = hf_vit(), pixels(32)
    spec = describe_hidden_states(model, x)[0]
    embedding = hidden_states_of(_forward(model, x))[0]
    cls = model.vit.embeddings.cls_token[0, 0] + model.vit.embeddings.position_embeddings[0, 0]
    torch.testing.assert_close(embedding[:, 0], cls.expand(BATCH, -1).detach())
    patches = to_fmap(embedding, spec)
    assert not torch.allclose(patches[:, :, 0, 0], embedding[:, 0])


def test_non_square_inputs():
    vit, x = hf_vit(image_size=(32, 48)), pixels((32, 48))
    specs = describe_hidden_states(vit, x)
    assert {(s.grid, s.num_prefix_tokens, s.stride) for s in specs} == {((4, 6), 1, 8.0)}
    resnet_specs = describe_hidden_states(hf_resnet(), pixels((32, 64)))
    assert [s.grid for s in resnet_specs] == [(8, 16), (8, 16), (4, 8), (2, 4), (1, 2)]


@pytest.mark.parametrize("training", [True, False])
def test_probe_restores_mode_and_leaves_batchnorm_statistics_alone(training: bool):
    model = hf_resnet().train(training)
    model.resnet.embedder.eval()  # a frozen stem in a training model: mixed modes must survive
    modes = [m.training for m in model.modules()]
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    describe_hidden_states(model, pixels(32, batch=1))
    assert [m.training for m in model.modules()] == modes
    assert any(modes) == training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in statistics.items())


def test_hiera_channels_last_states_become_maps_with_their_own_grid():
    """Hiera's reshaped states are (B, H, W, C): read as (B, C, H, W) a 32x64 input gave C=8 on a 16x16 grid."""
    model, x = hf_hiera(image_size=(32, 64)), pixels((32, 64))
    specs = describe_hidden_states(model, x)
    assert [(s.channels, s.grid, s.stride) for s in specs] == [(12, (8, 16), 4.0), (12, (8, 16), 4.0),
                                                               (24, (4, 8), 8.0)]
    assert [s.is_embedding for s in specs] == [True, False, False]
    outputs = _forward(model, x)
    for state, channels_last in zip(hidden_states_of(outputs), outputs.reshaped_hidden_states):
        assert torch.equal(state, channels_last.permute(0, 3, 1, 2))


def test_hiera_hidden_state_0_is_its_patch_embedding_in_row_major_order():
    """Its token states are unrolled into mask units: the map must come from the re-rolled states."""
    model, x = hf_hiera(image_size=(32, 64)), pixels((32, 64))
    state = hidden_states_of(_forward(model, x))[0]
    with torch.no_grad():
        embedding = model.hiera.embeddings(x)[0]  # (B, h * w, C), row-major
    torch.testing.assert_close(state, embedding.transpose(1, 2).unflatten(2, (8, 16)), rtol=0, atol=0)


def _levit() -> nn.Module:
    torch.manual_seed(0)
    config = tf.LevitConfig(image_size=64, hidden_sizes=[16, 24, 32], depths=[1, 1, 1], num_attention_heads=[1, 2, 2],
                            key_dim=[8, 8, 8], num_labels=NUM_LABELS)
    return tf.LevitForImageClassification(config).eval()


def _clip() -> nn.Module:
    torch.manual_seed(0)
    vision = dict(hidden_size=36, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40, image_size=32,
                  patch_size=8)
    return tf.CLIPForImageClassification(tf.CLIPConfig(vision_config=vision, num_labels=NUM_LABELS)).eval()


@pytest.mark.parametrize("build, image_size", [(_levit, 64), (_clip, 32)], ids=["levit", "clip"])
def test_embedding_outputs_are_flagged_and_never_paired(build, image_size: int):
    """LeViT's state 0 is its conv stem (``patch_embeddings``), CLIP's the ``pre_layrnorm`` of its embeddings."""
    model = build()
    specs = describe_hidden_states(model, pixels(image_size))
    assert [s.is_embedding for s in specs] == [True] + [False] * (len(specs) - 1)
    paired = {s for s, _, _ in auto_feature_pairs(specs, specs)}
    assert 0 not in paired and max(paired) == len(specs) - 1


def _crossvit() -> nn.Module:
    torch.manual_seed(0)
    args = dict(embed_dim=[12, 24], depth=[[1, 1, 0]] * 2, num_heads=[1, 1], mlp_ratio=[1, 1, 1])
    config = tf.TimmWrapperConfig(architecture="crossvit_tiny_240", model_args=args, num_labels=NUM_LABELS)
    return tf.TimmWrapperForImageClassification(config).eval()


def test_multi_branch_timm_model_is_not_auto_paired():
    """CrossViT lists its small-patch blocks, then its large-patch ones: not one sequence of stages."""
    crossvit, x = _crossvit(), pixels(240, batch=2)
    specs, resnet_specs = describe_hidden_states(crossvit, x), describe_hidden_states(hf_resnet(), x)
    for student, teacher, side in ((resnet_specs, specs, "teacher"), (specs, resnet_specs, "student")):
        with pytest.raises(ModelError, match=rf"feature_pairs: auto cannot pair the {side}'s hidden states: .*"
                                             r"\(branch 0: hidden states 0-1, branch 1: hidden states 2-3\)") as caught:
            choose_pairs("auto", student, teacher)
        assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)
    assert [(s.branch, s.grid) for s in specs] == [(0, (20, 20)), (0, (20, 20)), (1, (14, 14)), (1, (14, 14))]
    assert {s.branch for s in resnet_specs} == {0}


def test_multi_branch_timm_model_takes_explicit_pairs():
    """Each state is a real map of its branch, so a pair that names it is honest and captured exactly."""
    crossvit, x = _crossvit(), pixels(240, batch=2)
    specs = describe_hidden_states(crossvit, x)
    (pair,) = choose_pairs([{"student_layer": -1, "teacher_layer": 1}], describe_hidden_states(hf_resnet(), x), specs)
    assert (pair.teacher_layer, specs[pair.teacher_layer].grid) == (1, (20, 20))
    full = hidden_states_of(_forward(crossvit, x))
    _, states = HiddenStateCapture(crossvit, [1, 3], x)(x)
    assert all(torch.equal(states[i], full[i]) for i in (1, 3))


def test_hidden_states_of_requires_hidden_states():
    with torch.no_grad():
        outputs = hf_vit()(pixel_values=pixels(32))
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        hidden_states_of(outputs)


class _NoIntermediates(nn.Module):
    """A timm-like model without forward_intermediates."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, NUM_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))

    def get_classifier(self) -> nn.Module:
        return self.head


def test_timm_model_without_intermediates_names_the_model():
    model = timm_model("resnet18")
    model.timm_model = _NoIntermediates()
    with pytest.raises(ValueError, match=r"TimmWrapperForImageClassification \(resnet18\) cannot return hidden states"):
        describe_hidden_states(model, pixels(32))


def test_classifier_errors():
    headless = tf.ViTForImageClassification(tf.ViTConfig(hidden_size=36, num_hidden_layers=1, num_attention_heads=2,
                                                         intermediate_size=40, image_size=32, patch_size=8,
                                                         num_labels=0))
    with pytest.raises(ValueError, match="no classification head"):
        classifier_of(headless)
    with pytest.raises(ValueError, match="cannot find the classification head of Sequential"):
        classifier_of(nn.Sequential(nn.Conv2d(3, 4, 1)))


def test_classifier_of_deit_with_teacher_is_the_cls_head():
    model = FAMILIES["hf_deit_with_teacher"].build()
    assert classifier_of(model) is model.cls_classifier


def test_classifier_of_a_distilled_timm_deit_is_the_cls_head():
    """timm's distilled DeiT names two heads, (head, head_dist): the pooled-feature losses hooked
    the first, the CLS token's; taking the other read the distillation token instead, with the same
    width, so nothing failed."""
    model = FAMILIES["timm_deit_distilled"].build()
    assert classifier_of(model) is model.timm_model.head


@pytest.mark.parametrize("model_type, config", [
    ("hgnet_v2", dict(stem_channels=[3, 8, 8], stage_in_channels=[8, 12], stage_mid_channels=[8, 12],
                      stage_out_channels=[12, 16], stage_num_blocks=[1, 1], stage_downsample=[False, True],
                      stage_light_block=[False, False], stage_kernel_size=[3, 3], stage_numb_of_layers=[1, 1],
                      hidden_sizes=[12, 16], depths=[1, 1], out_features=["stage2"])),
    ("textnet", dict(stem_out_channels=8, conv_layer_kernel_sizes=[[[3, 3]], [[3, 3]]],
                     conv_layer_strides=[[1], [2]], hidden_sizes=[8, 12, 16], out_features=["stage2"])),
])
def test_a_classifier_list_never_called_is_not_taken_for_the_head(model_type: str, config: dict):
    """HGNetV2 and TextNet name the pooling they run before ``fc`` ``classifier``, a ModuleList that
    is never called: srd with one of them stopped with a traceback, 'cannot tell the input width of
    ModuleList'."""
    model = tf.AutoModelForImageClassification.from_config(
        tf.AutoConfig.for_model(model_type, num_labels=NUM_LABELS, **config)).eval()
    seen = []
    handle = classifier_of(model).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(pixel_values=pixels(32))
    handle.remove()
    assert classifier_of(model) is model.fc and seen[0].shape == (BATCH, pooled_dim(model)) == (BATCH, 16)


def test_focalnet_hands_out_each_stages_end_before_its_patch_merging():
    """transformers' FocalNet hands out each stage merged to the next stage's stride: state 1 was
    stage 1 at stride 8, the auto pairs were a stage too shallow, and stage 3, merged to the last
    stage's grid, never paired. Each state is now its stage's last block, as Swin's are."""
    config = tf.FocalNetConfig(image_size=64, embed_dim=8, depths=[1, 1, 2, 1], focal_levels=[2] * 4,
                               focal_windows=[3] * 4, num_labels=NUM_LABELS)
    model = tf.FocalNetForImageClassification(config).eval()
    blocks = {}
    handles = [stage.layers[-1].register_forward_hook(lambda _m, _a, out, i=i: blocks.__setitem__(i, out))
               for i, stage in enumerate(model.focalnet.encoder.stages)]
    specs = describe_hidden_states(model, pixels(64))
    for handle in handles:
        handle.remove()
    assert [spec.stride for spec in specs] == [4, 4, 8, 16, 32] and specs[0].is_embedding
    with torch.no_grad():
        states = hidden_states_of(forward_with_hidden_states(model, pixels(64)))
    for i, block in blocks.items():
        torch.testing.assert_close(states[i + 1],
                                   block.transpose(1, 2).reshape(states[i + 1].shape))


def test_the_width_of_a_convolutional_head_is_its_input():
    """A 1x1 convolution as the classifier (a head whose input is the pooled map): the pooled feature
    is as wide as the convolution's input; its output width is the number of classes, which sized the
    pooled-feature adapters wrongly."""

    class ConvHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = nn.Conv2d(24, NUM_LABELS, 1)

    assert pooled_dim(ConvHead()) == 24


def test_a_bfloat16_model_is_probed_in_its_own_dtype():
    """The probe input is float32 pixels; a model held in bfloat16 (a teacher in the dtype asked)
    is probed with them cast to its dtype: HF convolutions do not cast, and the probe failed."""
    model = hf_resnet().to(torch.bfloat16)
    specs = describe_hidden_states(model, pixels(32))
    assert len(specs) > 1 and specs[-1].layout == "nchw"


@pytest.mark.parametrize(("index", "expected"), [(0, 0), (12, 12), (-1, 12), (-13, 0), (-4, 9)])
def test_resolve_layer(index: int, expected: int):
    assert resolve_layer(index, 13, "student") == expected


@pytest.mark.parametrize("index", [13, -14, 100])
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_resolve_layer_out_of_range_says_how_many(index: int, side: str):
    with pytest.raises(IndexError, match=rf"{side} layer {index} .* the {side} model has 13 hidden states.*-13\.\.12"):
        resolve_layer(index, 13, side)


def _early_check(model_args, pairs, losses) -> None:
    """The recipe check of ``pairs`` for ``losses`` (specs), as the command line runs it before loading."""
    from hf_rcka.arguments import DistillationTrainingArguments
    from hf_rcka.cli.model_sources import check_feature_pairs
    from hf_rcka.modeling.assembly import build_losses

    args = DistillationTrainingArguments(output_dir="unused", use_cpu=True, feature_pairs=pairs, losses=losses)
    check_feature_pairs(model_args, args, build_losses(losses))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layer_indices_are_checked_before_loading_as_after(family: str, tmp_path):
    """Before any weights load, each model is built on the meta device from its config and its
    hidden states counted (a folder without a processor: their size is unknown, not their number):
    the count must be the probe's, so that the early check accepts every index ``choose_pairs``
    accepts once the models have loaded, and refuses the others with its line."""
    from hf_rcka.arguments import ModelArguments

    fam = FAMILIES[family]
    model = fam.build()
    model.config.save_pretrained(tmp_path)  # the architecture alone: no weights to load
    specs = describe_hidden_states(model, pixels(fam.image_size))
    n = len(specs)
    model_args = ModelArguments(model_name_or_path=str(tmp_path), teacher_model_name_or_path=str(tmp_path))
    losses = [{"name": "ce"}, {"name": "feature_cka"}]
    valid = [{"student_layer": 0, "teacher_layer": -1}, {"student_layer": n - 1, "teacher_layer": -n},
             {"student_layer": -1, "teacher_layer": n - 1}]
    _early_check(model_args, valid, losses)
    choose_pairs(valid, specs, specs)
    for beyond in ([{"student_layer": n, "teacher_layer": 0}], [{"student_layer": 0, "teacher_layer": -n - 1}]):
        with pytest.raises(IndexError) as after:
            choose_pairs(beyond, specs, specs)
        with pytest.raises(IndexError, match="^" + re.escape(str(after.value)) + "$"):
            _early_check(model_args, beyond, losses)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_feature_pairs_are_planned_before_loading_as_after(family: str, tmp_path, monkeypatch, caplog):
    """The check before loading plans the pairs' adapters from hidden states described on the meta
    device: they must be the ones the model wrapper plans from once the models have loaded (the
    same layouts, widths, grids and prefix tokens), or a valid recipe could be refused, and a
    refusal would not be the one after loading. Each family's saved folder is student and teacher,
    at the family's input size, with a loss that compares equal shapes (patch_match adapters). The
    check before loading logs no pair: each is said once, as the model wrapper builds it."""
    import dataclasses

    from tests.conftest import processor

    from hf_rcka.arguments import DistillationTrainingArguments, ModelArguments
    from hf_rcka.cli import job
    from hf_rcka.modeling import distillation_model, feature_adapters

    fam = FAMILIES[family]
    fam.build().save_pretrained(tmp_path)
    if not family.startswith("timm"):
        processor(fam.image_size).save_pretrained(tmp_path)
    planned, plan = [], feature_adapters.adapters_for_losses

    def recording(pairs, student_specs, teacher_specs, losses):
        planned.append([[dataclasses.replace(spec, is_embedding=False) for spec in specs]
                        for specs in (student_specs, teacher_specs)])  # which is an embedding reads values
        return plan(pairs, student_specs, teacher_specs, losses)

    monkeypatch.setattr(feature_adapters, "adapters_for_losses", recording)
    monkeypatch.setattr(distillation_model, "adapters_for_losses", recording)
    model_args = ModelArguments(model_name_or_path=str(tmp_path), teacher_model_name_or_path=str(tmp_path),
                                image_size=fam.image_size)
    losses = [{"name": "ce"}, {"name": "fitnet"}]
    pairs = [{"student_layer": 0, "teacher_layer": -1}, {"student_layer": -1, "teacher_layer": 0}]
    with caplog.at_level("INFO", logger="hf_rcka"):
        _early_check(model_args, pairs, losses)
    assert not [r for r in caplog.records if "feature pair" in r.getMessage()], "each pair is said once, after loading"
    args = DistillationTrainingArguments(output_dir="unused", use_cpu=True, feature_pairs=pairs, losses=losses)
    job._distillation_model(model_args, args, ["a", "b", "c"])  # what loads and plans after the check
    assert len(planned) == 2, "the check before loading planned nothing"
    assert planned[0] == planned[1]


def test_resolve_layer_rejects_non_integers():
    with pytest.raises(TypeError):
        resolve_layer(True, 13, "student")
    with pytest.raises(TypeError):
        resolve_layer(1.0, 13, "student")


# ------------------------------------------------------------------ auto_feature_pairs, by hand


def _cnn_specs(strides: list[int], image: int = 224, stem: bool = True) -> list[FeatureSpec]:
    """One spec per hidden state of a CNN whose entries have these strides (the first the stem)."""
    return [FeatureSpec("nchw", 8 * (i + 1), (image // s, image // s), stride=float(s), is_embedding=stem and i == 0)
            for i, s in enumerate(strides)]


def _vit_specs(depth: int, image: int = 224, patch: int = 16, prefix: int = 1) -> list[FeatureSpec]:
    grid = (image // patch, image // patch)
    return [FeatureSpec("nlc", 384, grid, prefix, float(patch), is_embedding=i == 0) for i in range(depth + 1)]


REGNET = _cnn_specs([2, 4, 8, 16, 32])  # stem + 4 stages, like HF/timm RegNet or ResNet
MOBILENET = _cnn_specs([4, 4, 8, 8, 8, 16, 16, 16, 16, 32, 32], stem=False)  # every layer, no stem


def test_pairs_cnn_teacher_vit_student_by_relative_depth():
    pairs = auto_feature_pairs(_vit_specs(12), REGNET)
    assert [(s, t) for s, t, _ in pairs] == [(3, 1), (6, 2), (9, 3), (12, 4)]
    assert pairs[0][2] == ("student block 3/12 [hidden state 3] (stride 16) <-> teacher stage 1/4 [hidden state 1] "
                           "(stride 4): closest relative depth (0.25 vs 0.25)")


def test_pairs_vit_teacher_cnn_student():
    pairs = auto_feature_pairs(REGNET, _vit_specs(12), num_pairs=2)
    assert [(s, t) for s, t, _ in pairs] == [(2, 6), (4, 12)]


def test_pairs_vit_to_vit_spreads_over_depth():
    assert [(s, t) for s, t, _ in auto_feature_pairs(_vit_specs(6), _vit_specs(12), num_pairs=3)] == [
        (2, 4), (4, 8), (6, 12)]
    assert [(s, t) for s, t, _ in auto_feature_pairs(_vit_specs(12), _vit_specs(12), num_pairs=4)] == [
        (3, 3), (6, 6), (9, 9), (12, 12)]


def test_pairs_cnn_to_cnn_match_stage_outputs_by_stride():
    pairs = auto_feature_pairs(MOBILENET, REGNET)
    assert [(s, t) for s, t, _ in pairs] == [(1, 1), (4, 2), (8, 3), (10, 4)]
    assert all("same stride" in reason for _, _, reason in pairs)


def test_pairs_swin_like_stages_skip_the_missing_stride():
    swin = _cnn_specs([4, 8, 16, 32, 32])  # patch embedding, then stage outputs after merging
    pairs = auto_feature_pairs(swin, REGNET)
    assert [(s, t) for s, t, _ in pairs] == [(1, 2), (2, 3), (4, 4)]


def test_pairs_few_requested_take_the_deepest():
    assert [(s, t) for s, t, _ in auto_feature_pairs(_vit_specs(12), REGNET, num_pairs=1)] == [(12, 4)]
    with pytest.raises(ValueError, match="num_pairs"):
        auto_feature_pairs(_vit_specs(12), REGNET, num_pairs=0)


def test_transformers_swin_hands_out_its_stage_ends_as_timm_swin_does():
    """Its hidden states came after each stage's patch merging (state 1 was stage 1 merged to the
    next stride), so auto pairs sat one stage too shallow and its deepest-but-one stage never
    paired; and a zero probe made stage 1 equal the embedding, taken for a stem."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    swin = SwinForImageClassification(SwinConfig(image_size=32, patch_size=2, embed_dim=8, depths=[1, 1, 1, 1],
                                                 num_heads=[1, 1, 1, 1], window_size=2, num_labels=3)).eval()
    specs = describe_hidden_states(swin, torch.randn(1, 3, 32, 32))
    assert [s.grid[0] for s in specs] == [16, 16, 8, 4, 2] and [s.channels for s in specs] == [8, 8, 16, 32, 64]
    assert [s.is_embedding for s in specs] == [True, False, False, False, False]
    assert [(s, t) for s, t, _ in auto_feature_pairs(specs, specs)] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    model = DistillationModel(swin, copy.deepcopy(swin), [CrossEntropyLoss(), FeatureCKALoss()], feature_pairs="auto",
                              student_input=InputStats((0.5,) * 3, (0.5,) * 3, (32, 32)))
    assert [(p.student_layer, p.teacher_layer) for p in model.feature_pairs] == [(1, 1), (2, 2), (3, 3), (4, 4)]


@pytest.mark.parametrize("student, teacher, expected", [
    (_vit_specs(6), _vit_specs(12), [(2, 4), (3, 6), (5, 10), (6, 12)]),  # 4 of 6 blocks: 6/4 is no integer
    (_vit_specs(12), _vit_specs(7), [(3, 2), (7, 4), (10, 6), (12, 7)]),
    # ties in relative depth go to the deeper candidate: 0.75 lies as far from 4/6 as from 5/6
    (_vit_specs(4), _vit_specs(6), [(1, 2), (2, 3), (3, 5), (4, 6)]),
    (_vit_specs(6), REGNET, [(2, 1), (3, 2), (5, 3), (6, 4)]),
], ids=["vit6_vit12", "vit12_vit7", "vit4_vit6", "vit6_regnet"])
def test_auto_pairs_of_depths_that_do_not_divide_evenly(student, teacher, expected):
    """The anchors are ceil((i + 1) n / k) - 1: spread toward the deep end; a tie goes deeper."""
    assert [(s, t) for s, t, _ in auto_feature_pairs(student, teacher)] == expected


@pytest.mark.parametrize("family", ["hf_vit", "hf_swin", "timm_resnet"])
def test_hidden_states_on_the_meta_device_are_embeddings_only_as_feature_info_says(family: str):
    """A model built without weights has no storage and no values: every meta storage has one
    address, which flagged every hidden state as the embedding. Only timm's feature_info tells."""
    fam = FAMILIES[family]
    with torch.device("meta"):
        model = fam.build()
    flags = [spec.is_embedding for spec in describe_hidden_states(model, pixels(fam.image_size).to("meta"))]
    assert flags == [family.startswith("timm") and i == 0 for i in range(len(flags))]


def test_an_early_stage_leaves_room_for_the_later_ones_when_strides_run_past_the_other_model():
    """A student whose two stages end at strides 32 and 64, against a teacher whose last stage ends at
    32: the stride-32 stage matched the teacher's last stage, which left nothing for the stride-64
    one (min() of an empty sequence, a traceback). Each stage keeps room for those after it."""
    student = _cnn_specs([2, 32, 64])  # stem + two stages
    pairs = auto_feature_pairs(student, REGNET)
    assert [(s, t) for s, t, _ in pairs] == [(1, 3), (2, 4)]


def test_stages_of_unknown_stride_are_paired_by_depth():
    """A spec's stride defaults to None (not known): stages of such a model were matched by stride
    anyway, and log2 of None / a stride ended the run in a TypeError."""
    student = [FeatureSpec("nchw", 8, (g, g)) for g in (56, 28, 14, 7)]  # four stages, strides unknown
    pairs = auto_feature_pairs(student, REGNET)
    assert [(s, t) for s, t, _ in pairs] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert all("closest relative depth" in why for _, _, why in pairs)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_probe_image_describes_the_states_as_two_do(family: str):
    """A teacher that its runtime casts or makes NHWC is described on one probe image, not two
    (``DistillationModel._build_adapters``): the description reads the states' shapes and storages
    and compares copies with their originals, which the batch does not change."""
    fam = FAMILIES[family]
    model, x = fam.build(), pixels(fam.image_size)[:2]
    assert describe_hidden_states(model, x[:1]) == describe_hidden_states(model, x)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_description_s_probe_chooses_the_capture_as_its_own_forwards_did(family: str):
    """The capture's choice made on the description's probe (one forward, every module recorded)
    takes the mode and hooks the modules that its own reference and module search forwards did."""
    fam = FAMILIES[family]
    model, x = fam.build(), pixels(fam.image_size)[:2]
    probe = probe_forward(model, x, every_module=True)
    indices = sorted({0, len(probe.states) // 2, len(probe.states) - 1})
    own, shared = HiddenStateCapture(model, indices, x, True), HiddenStateCapture(model, indices, probe, True)
    assert shared.mode == own.mode
    assert shared._find_modules(probe) == own._find_modules(probe_forward(model, x))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_probe_that_records_every_module_describes_the_states_as_a_plain_one(family: str):
    """The student is described from a probe that records every module's output (for the capture's
    choice, ``DistillationModel._build_adapters``): taken for embedding outputs, those would flag
    every state as an embedding, and the automatic pairing, finding none usable, could pair the stem."""
    fam = FAMILIES[family]
    model, x = fam.build(), pixels(fam.image_size)[:2]
    plain = describe_hidden_states(model, x)
    assert describe_hidden_states(model, probe_forward(model, x, every_module=True)) == plain
    assert not all(spec.is_embedding for spec in plain)


def test_focalnet_stage_ends_carry_gradients_under_a_reentrant_checkpoint():
    """A hook inside a FocalNet stage read its end in the forward of a reentrant checkpoint, which
    runs without gradients: a feature loss on stages 1..3 reached none of the student's weights."""
    config = tf.FocalNetConfig(image_size=32, embed_dim=8, depths=[1, 1, 1, 1], num_labels=NUM_LABELS)
    model = tf.FocalNetForImageClassification(config).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    states = hidden_states_of(forward_with_hidden_states(model, pixels(32)))
    states[2].sum().backward()
    stages = model.focalnet.encoder.stages
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stages[1].layers[0].parameters())
    assert all(type(stage) is tf.models.focalnet.modeling_focalnet.FocalNetStage for stage in stages)
