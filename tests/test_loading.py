"""Model and image-processor loading: config:<type>, timm/<arch>, saved folders; offline, tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, TimmWrapperImageProcessor

from hf_rcka.models.label_maps import LabelMaps, resolve_labels
from hf_rcka.models.loading import load_image_classifier
from hf_rcka.models.processors import load_image_processor, resize_image_processor
from hf_rcka.models.sources import ModelSource, parse_model_source

LABELS = {0: "cat", 1: "dog", 2: "fox"}
VIT = {"hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 72,
       "image_size": 32, "patch_size": 8}  # 16 patches + CLS = 17 tokens
DEIT_TEACHER = {**VIT, "architectures": ["DeiTForImageClassificationWithTeacher"]}
RESNET = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}
REGNET = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "groups_width": 8}
CONVNEXT = {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2, "image_size": 32}
TIMM_RESNET_32 = {"pretrained_cfg_overlay": {"input_size": (3, 32, 32)}}  # timm's way to change the data config
TIMM_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 36, "num_heads": 2}

CASES = {  # name -> (model name, overrides, processor image_size, expected class)
    "vit": ("config:vit", VIT, None, "ViTForImageClassification"),
    "deit": ("config:deit", VIT, None, "DeiTForImageClassification"),
    "deit_teacher": ("config:deit", DEIT_TEACHER, None, "DeiTForImageClassificationWithTeacher"),
    "resnet": ("config:resnet", RESNET, 32, "ResNetForImageClassification"),
    "regnet": ("config:regnet", REGNET, 32, "RegNetForImageClassification"),
    "convnext": ("config:convnext", CONVNEXT, None, "ConvNextForImageClassification"),
    "timm_resnet": ("timm/resnet18", TIMM_RESNET_32, None, "TimmWrapperForImageClassification"),
    "timm_vit": ("timm/vit_tiny_patch16_224", TIMM_VIT, None, "TimmWrapperForImageClassification"),
}
OFFLINE = bool(huggingface_hub.constants.HF_HUB_OFFLINE)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8) for _ in range(5)]


def _build(case: str):
    name, overrides, image_size, _ = CASES[case]
    model = load_image_classifier(name, id2label=LABELS, config_overrides=overrides, from_scratch=True).eval()
    return model, load_image_processor(name, model, image_size=image_size)


def _logits(model, processor, images) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=processor(images, return_tensors="pt").pixel_values).logits


# --- building ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["vit", "deit", "deit_teacher", "resnet", "regnet", "convnext", "timm_vit",
                                  "timm_resnet"])
def test_builds_runs_and_sets_labels(case: str, images) -> None:
    model, processor = _build(case)
    assert type(model).__name__ == CASES[case][3]
    assert model.config.num_labels == 3
    assert {int(k): v for k, v in model.config.id2label.items()} == LABELS
    assert model.config.label2id == {"cat": 0, "dog": 1, "fox": 2}
    pixels = processor(images, return_tensors="pt").pixel_values
    assert pixels.shape == (5, 3, 32, 32)
    logits = model(pixel_values=pixels).logits
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()


PVT = dict(image_size=32, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1])


def test_a_config_that_keeps_num_labels_as_its_own_field_gets_the_tasks_head(tmp_path: Path) -> None:
    """PvtConfig declares num_labels (1000) itself, so id2label alone left a 1000-class head: a
    config:pvt student stopped after the data had loaded, and a PVT checkpoint kept its head."""
    model = load_image_classifier("config:pvt", id2label=LABELS, config_overrides=PVT)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    model.save_pretrained(tmp_path)
    resized = load_image_classifier(str(tmp_path), num_labels=5)
    assert resized.config.num_labels == 5 and resized.classifier.out_features == 5
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert reloaded.classifier.out_features == 3 and reloaded.config.id2label == LABELS


def test_deit_teacher_class_has_distillation_head(images) -> None:
    model, processor = _build("deit_teacher")
    out = model(pixel_values=processor(images, return_tensors="pt").pixel_values)
    assert out.distillation_logits.shape == out.cls_logits.shape == (5, 3)


def test_scratch_deit_draws_the_tokens_transformers_leaves_at_zero(tmp_path: Path) -> None:
    """transformers 5.x's DeiT init zeroes the class, distillation and position tokens it drew:
    the distillation student started with two identical tokens and no position signal."""
    torch.manual_seed(0)
    model = load_image_classifier("config:deit", num_labels=3, config_overrides=DEIT_TEACHER)
    tokens = model.deit.embeddings
    for name in ("cls_token", "distillation_token", "position_embeddings"):
        assert 0.01 < getattr(tokens, name).std().item() < 0.03, name
    assert abs(tokens.position_embeddings.std().item() - 0.02) < 0.0015  # DeiT's: std 0.02, cut at +-2 (not +-2 std)
    assert not torch.equal(tokens.cls_token, tokens.distillation_token)
    with torch.no_grad():  # a checkpoint's tokens are what it trained, even zeros
        tokens.cls_token.zero_()
    model.save_pretrained(tmp_path)
    reloaded = load_image_classifier(str(tmp_path), num_labels=3)
    assert not reloaded.deit.embeddings.cls_token.any()


def test_scratch_register_tokens_are_drawn_apart_as_dinov2_draws_them() -> None:
    """transformers zeroes Dinov2WithRegisters' register tokens: identical copies get identical
    gradients, so a student built with 4 registers trained 4 copies of one. DINOv2 and timm draw
    them from N(0, 1e-6)."""
    torch.manual_seed(0)
    model = load_image_classifier("config:dinov2_with_registers", num_labels=3, config_overrides=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=1, image_size=32, patch_size=8,
        num_register_tokens=4))
    registers = model.dinov2_with_registers.embeddings.register_tokens[0]
    assert 0 < registers.std().item() < 1e-5
    assert all(not torch.equal(registers[0], registers[i]) for i in range(1, 4))


def test_drawn_tokens_follow_the_configs_initializer_range_and_a_meta_build_draws_none() -> None:
    """A recipe's initializer_range sets the drawn tokens' spread as it sets every other weight's: a
    mutant that drew them at 0.02 always gave a DeiT at initializer_range 0.2 near-zero tokens. A
    DeiT built on the meta device (the recipe check before loading) has no values to test for zero:
    a mutant that tested them could not build it, and the check was put off until after loading."""
    from hf_rcka.models.loading import build_without_weights

    torch.manual_seed(0)
    wide = load_image_classifier("config:deit", num_labels=3, config_overrides={**DEIT_TEACHER, "initializer_range": 0.2})
    for name in ("cls_token", "distillation_token", "position_embeddings"):
        assert 0.1 < getattr(wide.deit.embeddings, name).std().item() < 0.3, name
    meta = build_without_weights("config:deit", num_labels=3, config_overrides=DEIT_TEACHER)
    assert meta.deit.embeddings.cls_token.is_meta


def test_config_override_rebuilds_derived_fields() -> None:
    model = load_image_classifier("config:resnet", num_labels=2, config_overrides=RESNET)
    assert model.config.stage_names == ["stem", "stage1", "stage2"]
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}


def test_cnn_processor_defaults_to_224_and_takes_image_size() -> None:
    model = load_image_classifier("config:resnet", num_labels=2, config_overrides=RESNET)
    assert load_image_processor("config:resnet", model).size["shortest_edge"] == 224
    assert load_image_processor("config:resnet").size["shortest_edge"] == 224


def test_the_models_config_wins_over_a_config_given_beside_it() -> None:
    """``config=`` is for a check before anything loads; given the model too, the processor is the
    model's: a default config beside a ViT built at 32 px gave a 224 px processor, and a student
    trained on 224 px images that it had never seen at that size."""
    from hf_rcka.models.hf_config import default_config

    model = load_image_classifier("config:vit", num_labels=2, config_overrides=VIT)  # 32 px
    processor = load_image_processor("config:vit", model, config=default_config("vit"))
    assert processor.size["height"] == 32
    assert load_image_processor("config:vit", config=model.config).size["height"] == 32


def test_resize_image_processor_keeps_resize_to_crop_ratio() -> None:
    deit = load_image_processor("config:deit")  # 256 -> crop 224
    small = resize_image_processor(deit, 32)
    assert (small.size["height"], small.crop_size["height"]) == (37, 32)


@pytest.mark.parametrize(("name", "size"), [("config:deit", (32, 48)), ("config:vit", (24, 40)),
                                            ("config:convnext", (32, 32))])
def test_resized_processor_reads_back_at_its_size(name: str, size: tuple[int, int]) -> None:
    from hf_rcka.modeling.teacher_inputs import input_stats

    resized = resize_image_processor(load_image_processor(name), size)
    assert input_stats(resized).size == size  # one parser decides both: resizing and reading back


def test_resize_refuses_a_size_the_processor_cannot_output() -> None:
    with pytest.raises(ValueError, match="square"):
        resize_image_processor(load_image_processor("config:convnext"), (32, 48))


def test_a_shortest_edge_processor_resized_to_a_wide_crop_pads_no_image() -> None:
    """CLIP's processor (short side 224, crop 224) at 32 x 48 resized the short side to 32 and cropped
    48 wide: every square or upright image came out with black bands at its sides."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    resized = resize_image_processor(CLIPImageProcessor(), (32, 48))
    for width, height in ((100, 100), (60, 100), (100, 60)):
        pixels = resized(Image.new("RGB", (width, height), (255, 255, 255)), return_tensors="np",
                         do_rescale=False, do_normalize=False)["pixel_values"][0]
        assert pixels.shape == (3, 32, 48) and pixels.min() == 255, (width, height)


def test_a_processors_own_settings_are_kept_where_they_already_hold() -> None:
    """A grayscale model's processor was set to convert every image to RGB (3 channels into a
    1-channel model), and a resize whose short side equals its crop (CLIP's 224 and 224) was
    changed to resize to 256 first, another view than the processor's."""
    from types import SimpleNamespace

    from transformers import CLIPImageProcessor

    from hf_rcka.models.processors import _converting_to_rgb, _crop_within_the_image

    for channels, converts in ((3, True), (1, None)):
        processor = CLIPImageProcessor(do_convert_rgb=None)
        assert _converting_to_rgb(processor, SimpleNamespace(num_channels=channels)).do_convert_rgb is converts
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    _crop_within_the_image(processor)
    assert processor.size["shortest_edge"] == 224


def test_a_folder_whose_processor_fails_to_load_is_not_said_to_have_none(tmp_path) -> None:
    """Only a folder with no processor file is told to save one; a broken preprocessor_config.json
    was said to be missing, and an hf_rcka run stopped before its export was whole is told to resume."""
    from hf_rcka.models.processors import no_processor

    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(OSError):
        load_image_processor(str(tmp_path))
    assert "save its image processor next to it" in no_processor(str(tmp_path))
    (tmp_path / "distill_config.yaml").write_text("dataset_name: builtin:digits\n")
    assert "the run there was stopped before its export was whole; finish it by resuming" in no_processor(str(tmp_path))


# --- timm: timm's own initialisation, data config ----------------------------------------------


@pytest.mark.parametrize(("arch", "kwargs"), [("resnet18", {}), ("vit_tiny_patch16_224", TIMM_VIT)])
def test_timm_from_scratch_keeps_timm_init(arch: str, kwargs: dict) -> None:
    torch.manual_seed(123)
    model = load_image_classifier(f"timm/{arch}", num_labels=3, config_overrides=kwargs, from_scratch=True)
    torch.manual_seed(123)
    reference = timm.create_model(arch, pretrained=False, num_classes=3, **kwargs)
    ours, theirs = model.timm_model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    assert model.config.model_args == kwargs


def test_timm_resnet_init_is_timms_not_transformers() -> None:
    model = load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True)
    # timm zero-initialises the last BatchNorm of each residual block; transformers' init sets 1
    assert torch.all(model.timm_model.layer1[0].bn2.weight == 0)


def test_timm_pretrained_cfg_follows_overrides() -> None:
    model = load_image_classifier("timm/vit_tiny_patch16_224", num_labels=3, config_overrides=TIMM_VIT,
                                  from_scratch=True)
    cfg = model.config.pretrained_cfg
    assert tuple(cfg["input_size"]) == (3, 32, 32)
    assert "hf_hub_id" not in cfg and "url" not in cfg  # random weights: no weight provenance
    processor = load_image_processor("timm/vit_tiny_patch16_224", model)
    assert isinstance(processor, TimmWrapperImageProcessor)
    assert processor.data_config["input_size"] == (3, 32, 32)


def test_timm_processor_without_model_comes_from_timms_registry() -> None:
    processor = load_image_processor("timm/resnet18.a1_in1k")
    assert processor.data_config["input_size"] == (3, 224, 224)
    assert processor.data_config["crop_pct"] == 0.95
    with pytest.raises(ValueError, match="needs the model"):
        load_image_processor("timm/resnet18", image_size=32)


def test_a_timm_processor_for_an_architecture_timm_does_not_know_is_a_clear_error() -> None:
    """timm's registry has no data config for a misspelt name: a mutant that did not check for that
    failed with "'NoneType' object has no attribute 'to_dict'"."""
    with pytest.raises(ValueError, match="timm has no data config for 'resnett18'"):
        load_image_processor("timm/resnett18")


def test_timm_image_size_is_carried_by_the_saved_config(tmp_path) -> None:
    # the model records the size where it is built; the processor only reads the model's config
    model = load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True, image_size=32)
    processor = load_image_processor("timm/resnet18", model, image_size=32)
    assert processor.data_config["input_size"] == (3, 32, 32)
    model.save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)  # timm processors live in config.json
    assert reloaded.data_config["input_size"] == (3, 32, 32)
    # timm's validate.py prefers test_input_size / test_crop_pct: they would evaluate at resnet18's 224 px
    saved = json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]
    assert not [key for key in saved if key.startswith("test_")]


@pytest.mark.parametrize("start", ["scratch", "folder"])
def test_timm_student_at_its_own_size_keeps_no_test_size(tmp_path, start) -> None:
    """A timm student trained and evaluated at its registry input size (no image_size given) kept
    timm's test_input_size / test_crop_pct in its saved config: resnet10t's card reported eval_accuracy
    at 176 px with crop 0.875, while timm's validate.py on the folder (resolve_data_config with
    use_test_size=True) evaluated at 224 px with crop 0.95, another number for the same model.
    Those entries describe timm's own recipe for its pretrained weights, not this student's run."""
    from timm.data import resolve_data_config

    from hf_rcka.models.timm_models import timm_native_state

    if start == "folder":  # a saved timm folder whose config still carries them (exported before this fix)
        saved = load_image_classifier("timm/resnet10t", num_labels=3, from_scratch=True,
                                      config_overrides={"channels": [8, 8, 8, 8]})
        saved.config.pretrained_cfg = {**saved.config.pretrained_cfg, "test_input_size": (3, 224, 224),
                                       "test_crop_pct": 0.95}
        saved.save_pretrained(tmp_path / "start")
        model = load_image_classifier(str(tmp_path / "start"))
    else:
        model = load_image_classifier("timm/resnet10t", num_labels=3, from_scratch=True,
                                      config_overrides={"channels": [8, 8, 8, 8]})
    processor = load_image_processor("timm/resnet10t", model)
    assert processor.data_config["input_size"] == (3, 176, 176)  # what evaluation ran at
    model.save_pretrained(tmp_path / "out", state_dict=timm_native_state(model))  # as the run exports it
    timm_model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    validate = resolve_data_config({}, model=timm_model, use_test_size=True)  # timm's validate.py
    assert tuple(validate["input_size"]) == (3, 176, 176)
    assert validate["crop_pct"] == processor.data_config["crop_pct"]


def test_timm_processor_image_size_leaves_the_model_config_alone(caplog) -> None:
    model = load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True)
    before = dict(model.config.pretrained_cfg)
    with caplog.at_level("WARNING", logger="hf_rcka.models.processors"):
        processor = load_image_processor("timm/resnet18", model, image_size=32)
    assert processor.data_config["input_size"] == (3, 32, 32)
    assert model.config.pretrained_cfg == before
    assert "Pass image_size to load_image_classifier" in caplog.text  # the saved folder would differ


def test_timm_checkpoint_reloaded_at_another_image_size(tmp_path) -> None:
    load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True).save_pretrained(tmp_path)
    model = load_image_classifier(str(tmp_path), image_size=(32, 48))
    assert tuple(model.config.pretrained_cfg["input_size"]) == (3, 32, 48)
    assert load_image_processor(str(tmp_path), model).data_config["input_size"] == (3, 32, 48)
    assert tuple(AutoImageProcessor.from_pretrained(tmp_path).data_config["input_size"]) == (3, 224, 224)


# --- save / reload ------------------------------------------------------------------------------


def test_a_saved_timm_student_loads_in_timm_itself_and_in_transformers(tmp_path) -> None:
    """The export kept the wrapper's timm_model. prefix and the overlay in model_args: timm's own
    create_model("hf-hub:...") refused both (missing keys, a keyword given twice)."""
    from conftest import pixel_dataset

    from hf_rcka import DistillationTrainer, DistillationTrainingArguments

    student = load_image_classifier("timm/resnet10t", num_labels=3, from_scratch=True, image_size=16,
                                    config_overrides={"pretrained_cfg_overlay": {"crop_pct": 1.0}})
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True,
                                         max_steps=1, per_device_train_batch_size=4, save_strategy="no")
    trainer = DistillationTrainer(model=student, args=args, train_dataset=pixel_dataset(8),
                                  processing_class=load_image_processor("timm/resnet10t", student, image_size=16))
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    pixels = torch.randn(2, 3, 16, 16)
    student.eval()
    expected = student(pixel_values=pixels).logits
    native = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    wrapped = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(native(pixels), expected)
        torch.testing.assert_close(wrapped(pixel_values=pixels).logits, expected)
    assert native.pretrained_cfg["crop_pct"] == 1.0
    assert AutoImageProcessor.from_pretrained(tmp_path / "out").data_config["crop_pct"] == 1.0
    # an overlay's input_size shapes a fixed-size ViT (timm derives img_size from it): the config
    # records that size among model_args, or the student would not load back at all
    vit = load_image_classifier("timm/vit_tiny_patch16_224", num_labels=3, from_scratch=True, config_overrides={
        "pretrained_cfg_overlay": {"input_size": (3, 32, 32)}, "patch_size": 8, "embed_dim": 36, "depth": 1,
        "num_heads": 2}).eval()
    vit.save_pretrained(tmp_path / "vit")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = vit(pixel_values=pixels).logits
        for loaded in (AutoModelForImageClassification.from_pretrained(tmp_path / "vit"),
                       load_image_classifier(str(tmp_path / "vit"))):
            torch.testing.assert_close(loaded.eval()(pixel_values=pixels).logits, expected)

_RELOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    images = list(np.load(sys.argv[1]))
    classes = {}
    for folder in sys.argv[2:]:
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        processor = AutoImageProcessor.from_pretrained(folder)
        with torch.no_grad():
            logits = model(pixel_values=processor(images, return_tensors="pt").pixel_values).logits
        np.save(folder + "/reloaded_logits.npy", logits.numpy())
        classes[folder] = [type(model).__name__, type(processor).__name__]
    assert "hf_rcka" not in sys.modules
    print(json.dumps(classes))
    """
)


def test_saved_models_reload_without_hf_rcka(tmp_path: Path, images) -> None:
    cases = ["vit", "deit_teacher", "resnet", "convnext", "timm_resnet", "timm_vit"]
    expected = {}
    for case in cases:
        model, processor = _build(case)
        folder = tmp_path / case
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        expected[str(folder)] = (_logits(model, processor, images), type(model).__name__, type(processor).__name__)
    np.save(tmp_path / "images.npy", np.stack(images))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _RELOAD_SCRIPT, str(tmp_path / "images.npy"), *expected],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    classes = json.loads(result.stdout.strip().splitlines()[-1])
    for folder, (logits, model_class, processor_class) in expected.items():
        assert classes[folder] == [model_class, processor_class]
        reloaded = torch.from_numpy(np.load(Path(folder) / "reloaded_logits.npy"))
        torch.testing.assert_close(reloaded, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["vit", "resnet"])
def test_saved_processor_converts_to_rgb_like_training(case: str, tmp_path: Path) -> None:
    from PIL import Image

    from hf_rcka.data.images import to_rgb

    _, processor = _build(case)
    processor.save_pretrained(tmp_path)
    saved = AutoImageProcessor.from_pretrained(tmp_path)
    rgba = Image.new("RGBA", (40, 40), (200, 30, 30, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 20, 40))  # left half transparent
    gray = Image.new("L", (40, 40), 90)

    def pixels(image):
        return saved(images=image, return_tensors="pt")["pixel_values"]

    torch.testing.assert_close(pixels(rgba), pixels(to_rgb(rgba)))
    torch.testing.assert_close(pixels(gray), pixels(to_rgb(gray)))


@pytest.mark.parametrize("case", ["vit", "timm_vit"])
def test_folder_round_trip_through_our_loader(case: str, tmp_path: Path, images) -> None:
    model, processor = _build(case)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = load_image_classifier(str(tmp_path)).eval()
    again_processor = load_image_processor(str(tmp_path), again)
    assert again.config.id2label == model.config.id2label
    torch.testing.assert_close(_logits(again, again_processor, images), _logits(model, processor, images))


@pytest.mark.parametrize(("case", "head"), [("vit", "classifier"), ("timm_vit", "timm_model.head")])
def test_num_labels_change_reinitialises_only_the_head(case: str, head: str, tmp_path: Path) -> None:
    model, _ = _build(case)
    model.save_pretrained(tmp_path)
    loaded = load_image_classifier(str(tmp_path), id2label={0: "a", 1: "b", 2: "c", 3: "d", 4: "e"})
    assert loaded.config.num_labels == 5 and loaded.config.label2id["e"] == 4
    saved, new = model.state_dict(), loaded.state_dict()
    assert new[f"{head}.weight"].shape[0] == 5
    body = [k for k in saved if not k.startswith(head)]
    assert body and all(torch.equal(saved[k], new[k]) for k in body)


def test_timm_format_checkpoint_loads_like_a_timm_hub_repo(tmp_path: Path) -> None:
    """timm's own save format (no model_type, timm key names) is what 'timm/<arch>' repos hold."""
    from timm.models._hub import save_for_hf

    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **TIMM_VIT).eval()
    save_for_hf(reference, str(tmp_path), model_args=TIMM_VIT, safe_serialization=True)
    model = load_image_classifier(str(tmp_path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, reference(x))
    resized = load_image_classifier(str(tmp_path), num_labels=3)
    assert resized.timm_model.head.weight.shape == (3, 36)
    assert torch.equal(resized.timm_model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    assert load_image_processor(str(tmp_path), model).data_config["input_size"] == (3, 32, 32)


def test_same_num_labels_keeps_the_head(tmp_path: Path) -> None:
    model, _ = _build("vit")
    model.save_pretrained(tmp_path)
    loaded = load_image_classifier(str(tmp_path), num_labels=3)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)


def test_body_change_while_resizing_head_is_an_error(tmp_path: Path) -> None:
    model, _ = _build("vit")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="position_embeddings"):
        load_image_classifier(str(tmp_path), num_labels=4, config_overrides={"image_size": 64})


def test_from_scratch_folder_keeps_config_not_weights(tmp_path: Path) -> None:
    model, _ = _build("vit")
    model.save_pretrained(tmp_path)
    fresh = load_image_classifier(str(tmp_path), from_scratch=True)
    assert fresh.config.hidden_size == 36 and fresh.config.id2label == model.config.id2label
    assert not torch.equal(fresh.classifier.weight, model.classifier.weight)


def test_saved_deit_teacher_class_reloads_with_both_heads(tmp_path: Path) -> None:
    model, _ = _build("deit_teacher")
    model.save_pretrained(tmp_path)
    assert type(load_image_classifier(str(tmp_path))).__name__ == "DeiTForImageClassificationWithTeacher"
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)).__name__ == (
        "DeiTForImageClassificationWithTeacher"
    )


# --- names, labels and errors -------------------------------------------------------------------


def test_parse_model_source(tmp_path: Path) -> None:
    assert parse_model_source("config:vit").kind == "config"
    assert parse_model_source("timm/resnet18.a1_in1k").name == "resnet18.a1_in1k"
    assert parse_model_source("google/vit-base-patch16-224").kind == "pretrained"
    assert parse_model_source(str(tmp_path)).kind == "pretrained"


def test_a_local_folder_wins_over_the_prefixes_and_names_are_read_without_their_spaces(tmp_path, monkeypatch):
    """A folder save_pretrained wrote under ./timm/resnet18 or ./config:vit is that model, not a
    fresh timm or transformers architecture of that name (random weights, exit 0); a space after a
    prefix, or a bare blank name, is no model either."""
    monkeypatch.chdir(tmp_path)
    for name in ("timm/resnet18", "config:vit"):
        Path(name).mkdir(parents=True)
        assert parse_model_source(name) == ModelSource("pretrained", name)
    assert parse_model_source("config: deit ").name == "deit" and parse_model_source("timm/ resnet10t").name == "resnet10t"
    with pytest.raises(ValueError, match="a model name must be a non-empty string, got '  '"):
        parse_model_source("  ")


def test_a_name_that_is_no_hub_id_says_how_to_spell_it(tmp_path, monkeypatch):
    """The hints for a Hub id written another library's way were said for no name the tests give: timm's
    hf-hub: prefix, a subfolder of a repository (owner/name/sub); a mistyped folder (./runs/a/b,
    runs/a/b where ./runs exists) gets none, since it is no Hub repository."""
    monkeypatch.chdir(tmp_path)

    def said(name: str) -> str:
        with pytest.raises(FileNotFoundError) as caught:
            parse_model_source(name)
        return str(caught.value)

    assert said("hf-hub:timm/resnet18.a1_in1k").endswith(
        "(write 'timm/resnet18.a1_in1k', without timm's hf-hub: prefix).")
    subfolder = ". If it names a subfolder of a Hub repository: that cannot be loaded"
    assert subfolder in said("acme/models/student")
    assert "If it names" not in said("acme/vit base"), "one slash: no subfolder"
    (tmp_path / "runs").mkdir()
    for mistyped in ("./runs/a/b", "runs/a/b", str(tmp_path / "runs" / "a" / "b")):
        assert said(mistyped).endswith("or 'config:<model_type>'."), mistyped


def test_resolve_labels() -> None:
    assert resolve_labels() is None
    assert resolve_labels(num_labels=2) == LabelMaps.default(2)
    from_json = resolve_labels(id2label={"1": "dog", "0": "cat"})
    assert from_json.id2label == {0: "cat", 1: "dog"} and from_json.label2id == {"cat": 0, "dog": 1}
    assert resolve_labels(label2id={"cat": 0, "dog": 1}) == from_json


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_labels": 2, "id2label": LABELS}, "num_labels=2"),
     ({"id2label": {0: "a", 2: "b"}}, "0..n-1"),
     ({"id2label": LABELS, "label2id": {"cat": 1, "dog": 0, "fox": 2}}, "inverse"),
     ({"num_labels": 0}, ">= 1")],
)
def test_inconsistent_labels_are_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_labels(**kwargs)


def test_labels_with_no_class_or_one_name_twice_are_errors() -> None:
    """An empty id2label built a head of no class, and one naming two ids alike a label2id that
    read both classes as the second (its names are how labels are matched to the data's)."""
    for given in ({"id2label": {}}, {"id2label": {}, "num_labels": 0}, {"label2id": {}}):
        with pytest.raises(ValueError, match="0..n-1 with n >= 1"):
            resolve_labels(**given)
    with pytest.raises(ValueError, match="duplicate label names"):
        resolve_labels(id2label={0: "cat", 1: "dog", 2: "cat"})
    with pytest.raises(ValueError, match="duplicate label names"):
        resolve_labels(id2label={"0": "1", "1": 1})  # alike once read as text, as configs keep them


@pytest.mark.parametrize(
    ("name", "overrides", "error", "match"),
    [("./no/such/folder", {}, FileNotFoundError, "no such local folder"),
     ("config:vitt", {}, ValueError, "'vit'"),
     ("config:bert", {}, ValueError, "image-classification"),
     ("config:", {}, ValueError, "config:vit"),
     ("config:timm_wrapper", {}, ValueError, "use 'timm/<architecture>' for timm models"),
     ("config:vit", {"hiden_size": 8}, ValueError, "'hiden_size'.*'hidden_size'"),
     # the type is the config's class, not a field an override sets (it was ignored unsaid by a mutant)
     ("config:vit", {"model_type": "deit"}, ValueError, "config_overrides key 'model_type' is not a field of ViTConfig"),
     # the label fields have their own arguments: a mutant without that check passed with num_labels
     # refused as "not a field" and id2label accepted, the classes then set twice
     ("config:vit", {"num_labels": 8}, ValueError, "config_overrides sets 'num_labels': pass num_labels / id2label"),
     ("config:vit", {"id2label": {0: "a"}}, ValueError, "config_overrides sets 'id2label': pass num_labels"),
     ("config:vit", {"architectures": ["BertForSequenceClassification"]}, ValueError, "architectures"),
     # a class of the model's own type without a classification head (a backbone) is no classifier
     ("config:vit", {**VIT, "architectures": ["ViTModel"]}, ValueError, "names no transformers image-classification"),
     ("timm/resnet_18", {}, ValueError, "'resnet18'"),
     ("timm/resnet18", {"no_such_arg": 1}, ValueError, "rejected"),
     ("timm/resnet18", {"num_classes": 3}, ValueError, "num_labels")],
)
def test_errors_name_the_problem(name: str, overrides: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_image_classifier(name, num_labels=3, config_overrides=overrides, from_scratch=True)


def test_a_timm_build_that_fails_for_another_reason_is_not_called_an_unknown_architecture() -> None:
    """Only timm's "Unknown model" is an unknown architecture: a mutant that read every RuntimeError
    of timm.create_model so said "unknown timm architecture 'resnet18'" (with close matches) for a
    known one whose override (a negative channel count) failed to build, and hid timm's own message."""
    with pytest.raises(RuntimeError, match="negative dimension -12"):
        load_image_classifier("timm/resnet18", num_labels=3, config_overrides={"channels": [8, -12, 16, 20]},
                              from_scratch=True)


def test_a_file_is_not_a_model_folder(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="save_pretrained"):
        load_image_classifier(str(path))


def test_folder_without_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="config.json"):
        load_image_classifier(str(tmp_path))


@pytest.mark.skipif(not OFFLINE, reason="needs HF_HUB_OFFLINE=1 so that no network call is attempted")
@pytest.mark.parametrize("name", ["timm/resnet18", "someone/no-such-model"])
def test_hub_paths_fail_clearly_offline(name: str) -> None:
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        load_image_classifier(name, num_labels=3)


def test_overrides_that_would_leave_pretrained_weights_random_are_errors(tmp_path: Path) -> None:
    """num_hidden_layers 3 on a 2-layer checkpoint trained with a random third layer (transformers only
    logged it); a wider hidden_size ended in transformers' size-mismatch traceback."""
    load_image_classifier("config:vit", num_labels=3, config_overrides=VIT).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"give .* weights its checkpoint does not have \(vit\.layers\.2\."):
        load_image_classifier(str(tmp_path), num_labels=3, config_overrides={"num_hidden_layers": 3})
    with pytest.raises(ValueError, match=r"change the shapes of .*student_from_scratch: true"):
        load_image_classifier(str(tmp_path), num_labels=3, config_overrides={"hidden_size": 48, "intermediate_size": 96})
    model = load_image_classifier(str(tmp_path), num_labels=5, config_overrides={"hidden_dropout_prob": 0.1})
    assert model.config.num_labels == 5  # a new head and a setting that adds no weights are fine


def test_a_checkpoint_whose_weights_do_not_fit_its_model_class_is_an_error(tmp_path: Path) -> None:
    """Weights saved under other names (a wrapper's 'model.' prefix) all started random, student and
    teacher, and the run ended well at chance; a backbone alone may start a student's head, never a
    teacher's."""
    from safetensors.torch import load_file, save_file

    renamed, backbone = tmp_path / "renamed", tmp_path / "backbone"
    load_image_classifier("config:vit", num_labels=3, config_overrides=VIT).save_pretrained(renamed)
    weights = load_file(renamed / "model.safetensors")
    save_file({f"model.{k}": v for k, v in weights.items()}, renamed / "model.safetensors", metadata={"format": "pt"})
    for labels in ({"num_labels": 3}, {}):
        with pytest.raises(ValueError, match=r"checkpoint has no weights for .* of ViTForImageClassification: they "
                                             "would start random"):
            load_image_classifier(str(renamed), **labels)
    load_image_classifier("config:vit", num_labels=3, config_overrides=VIT).save_pretrained(backbone)
    weights = load_file(backbone / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, backbone / "model.safetensors",
              metadata={"format": "pt"})
    assert load_image_classifier(str(backbone), num_labels=3).config.num_labels == 3  # a student's new head
    with pytest.raises(ValueError, match=r"no weights for classifier\.bias, classifier\.weight"):
        load_image_classifier(str(backbone))  # a teacher's: random logits
    # torch starts a missing BatchNorm step counter at 0 (older conversions lack them); a new
    # normalisation layer starts as the identity: a student may begin from either
    save_file({k: v for k, v in weights.items() if not k.startswith(("vit.layernorm.", "classifier."))},
              backbone / "model.safetensors", metadata={"format": "pt"})
    assert load_image_classifier(str(backbone), num_labels=3).config.num_labels == 3
    with pytest.raises(ValueError, match=r"no weights for .*vit\.layernorm\.bias"):
        load_image_classifier(str(backbone))
    # a norm inside a block is body: its learned gain would be lost
    save_file({k: v for k, v in weights.items() if "layer.1.layernorm_before" not in k}, backbone / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"no weights for .*layernorm_before"):
        load_image_classifier(str(backbone), num_labels=3)
    tiny_resnet = {"embedding_size": 8, "hidden_sizes": [8, 8, 8, 8], "depths": [1, 1, 1, 1]}
    load_image_classifier("config:resnet", num_labels=3, config_overrides=tiny_resnet).save_pretrained(tmp_path / "r")
    resnet = load_file(tmp_path / "r" / "model.safetensors")
    assert any(k.endswith("num_batches_tracked") for k in resnet)
    save_file({k: v for k, v in resnet.items() if not k.endswith("num_batches_tracked")},
              tmp_path / "r" / "model.safetensors", metadata={"format": "pt"})
    load_image_classifier(str(tmp_path / "r"))  # a teacher too


def test_pickled_weights_only_are_refused_with_how_to_convert(tmp_path):
    """A Hub model with only pytorch_model.bin failed with transformers' 'no file named
    model.safetensors', which said neither why nor what to do (a local folder is refused in preflight)."""
    model = load_image_classifier("config:resnet", num_labels=2, config_overrides=RESNET)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # transformers 5 saves safetensors only
    with pytest.raises(OSError, match=r"has no safetensors weights, and hf_rcka loads no others .*"
                                      r"save_pretrained\(folder, safe_serialization=True\)"):
        load_image_classifier(str(tmp_path), num_labels=2)


def test_a_timm_models_crop_ratio_is_kept_at_any_image_size() -> None:
    """image_size replaced timm's crop_pct with 1.0: stating resnet18.a1_in1k's own 224 px evaluated
    it without its centre crop (timm's train.py keeps crop_pct with --img-size, and transformers'
    processors keep their ratio); a recipe turns the crop off in its config's pretrained_cfg_overlay."""
    for size in (224, 32):
        model = load_image_classifier("timm/resnet18.a1_in1k", num_labels=3, from_scratch=True, image_size=size)
        config = load_image_processor("timm/resnet18.a1_in1k", model, image_size=size).data_config
        assert config["input_size"] == (3, size, size) and config["crop_pct"] == 0.95
        assert config["interpolation"] == "bicubic"
    uncropped = load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True, image_size=16,
                                      config_overrides={"pretrained_cfg_overlay": {"crop_pct": 1.0}})
    assert load_image_processor("timm/resnet18", uncropped, image_size=16).data_config["crop_pct"] == 1.0


@pytest.mark.parametrize("from_scratch", [True, False])
def test_a_pretrained_cfg_overlay_reaches_a_saved_timm_folders_processor(tmp_path, from_scratch) -> None:
    """A timm checkpoint's own data config won over the overlay (crop 0.95, ImageNet's statistics),
    while timm_model.pretrained_cfg and the saved model_args said the overlay's: trained, evaluated
    and exported with what the recipe had asked to change, without a word."""
    load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True).save_pretrained(tmp_path / "base")
    overlay = {"crop_pct": 1.0, "crop_mode": "squash", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    model = load_image_classifier(str(tmp_path / "base"), from_scratch=from_scratch,
                                  config_overrides={"pretrained_cfg_overlay": overlay})
    config = load_image_processor(str(tmp_path / "base"), model).data_config
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in overlay} == overlay
    model.save_pretrained(tmp_path / "out")
    saved = AutoImageProcessor.from_pretrained(tmp_path / "out").data_config
    assert saved["crop_pct"] == 1.0 and tuple(saved["mean"]) == (0.5, 0.5, 0.5)
    # the saved data config holds the overlay and the run's image_size after it: reloaded, the
    # overlay is not applied a second time over that size
    sized = load_image_classifier(str(tmp_path / "base"), from_scratch=from_scratch, image_size=24,
                                  config_overrides={"pretrained_cfg_overlay": {"input_size": (3, 32, 32)}})
    sized.save_pretrained(tmp_path / "sized")
    config = json.loads((tmp_path / "sized" / "config.json").read_text())
    config["model_args"]["pretrained_cfg_overlay"] = {"input_size": [3, 32, 32]}  # as exports before kept it
    (tmp_path / "sized" / "config.json").write_text(json.dumps(config))
    again = load_image_classifier(str(tmp_path / "sized"), from_scratch=from_scratch)
    assert load_image_processor(str(tmp_path / "sized"), again).data_config["input_size"] == (3, 24, 24)


def test_a_timm_argument_given_beside_an_overlay_is_recorded_as_timm_built_it(tmp_path) -> None:
    """timm derives in_chans from an overlay's input_size only when it is not given: a mutant that let
    the overlay's channels win in the recorded model_args saved a 1-channel student as in_chans 3,
    whose folder then rebuilt a 3-channel stem the trained 1-channel weights did not fit. Its data
    config reads 1 channel too, at the run's image_size: mutants that took the overlay's channel
    count, or 3 whenever the size changed, recorded (3, 24, 24) for it."""
    model = load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True, image_size=24, config_overrides={
        "in_chans": 1, "pretrained_cfg_overlay": {"input_size": (3, 32, 32)}})
    assert model.timm_model.conv1.in_channels == 1 and model.config.model_args["in_chans"] == 1
    assert tuple(model.config.pretrained_cfg["input_size"]) == (1, 24, 24)
    model.save_pretrained(tmp_path)
    reloaded = load_image_classifier(str(tmp_path))
    assert torch.equal(reloaded.timm_model.conv1.weight, model.timm_model.conv1.weight)


def test_a_model_folder_without_its_image_processor_is_one_line_with_the_fix(tmp_path) -> None:
    """transformers' own message spoke of the Hub and of local folders named like a repo id."""
    from transformers import ResNetConfig, ResNetForImageClassification

    ResNetForImageClassification(ResNetConfig(hidden_sizes=[8, 8, 8, 8], embedding_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds no preprocessor_config.json, .*processor.save_pretrained\("):
        load_image_processor(str(tmp_path))


def test_a_local_timm_folder_reads_its_processor_from_its_config(tmp_path) -> None:
    """A timm folder keeps its data config in config.json: the check for a missing
    preprocessor_config.json refused it (and the smoke test fell back to 224 px)."""
    model = load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True, image_size=16)
    model.save_pretrained(tmp_path)
    assert load_image_processor(str(tmp_path)).data_config["input_size"] == (3, 16, 16)


def test_a_mobilevit_built_from_its_config_gets_an_rgb_processor() -> None:
    """MobileViT's processor flips the channels to BGR, which no transform of a run reproduces: a
    config:mobilevit student (from scratch) was refused with a fix no recipe could apply."""
    from hf_rcka.modeling.teacher_inputs import input_stats

    processor = load_image_processor("config:mobilevit", load_image_classifier(
        "config:mobilevit", num_labels=3, config_overrides={"image_size": 32}))
    assert processor.do_flip_channel_order is False and input_stats(processor).size == (32, 32)


@pytest.mark.parametrize("image_size", [None, 32])
def test_a_default_processor_crops_within_the_image(image_size) -> None:
    """MobileViT's class defaults resize the short side to 224 and crop 256: every image of a
    config:mobilevit run, the teacher's view and the saved processor's included, had black borders
    (23% of a square image's pixels at 32 px)."""
    from PIL import Image

    from hf_rcka.data.transforms import eval_transform

    overrides = {"image_size": 32} if image_size else {}
    student = load_image_classifier("config:mobilevit", num_labels=3, config_overrides=overrides)
    processor = load_image_processor("config:mobilevit", student, image_size=image_size)
    white = Image.fromarray(np.full((40, 40, 3), 255, np.uint8))
    for pixels in (processor(white, return_tensors="pt").pixel_values[0], eval_transform(processor)(white)):
        assert pixels.min() == pixels.max(), "no black border: every pixel of a white image is white"


def test_dinov2_with_registers_from_its_config_gets_dinov2s_processor() -> None:
    """transformers lists no image processor for dinov2_with_registers: config:dinov2_with_registers was
    refused ("no default image processor"); its checkpoints use Dinov2's BitImageProcessor."""
    from transformers import BitImageProcessor

    student = load_image_classifier("config:dinov2_with_registers", num_labels=3, config_overrides={
        "image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 1})
    processor = load_image_processor("config:dinov2_with_registers", student, image_size=32)
    assert isinstance(processor, BitImageProcessor) and processor.crop_size["height"] == 32


def test_overrides_or_a_class_that_leave_checkpoint_layers_unused_are_errors(tmp_path: Path, caplog) -> None:
    """num_hidden_layers 1 on a 4-block checkpoint ran the teacher on its first block (its check
    passed at 63%, the card blamed preprocessing) and started a student from one block, exit 0:
    transformers only logged the unused weights."""
    load_image_classifier("config:vit", num_labels=3, config_overrides=VIT).save_pretrained(tmp_path)
    for labels in ({"num_labels": 3}, {}):  # student and teacher
        with pytest.raises(ValueError, match=r"config_overrides \['num_hidden_layers'\] leave .*'s weights "
                                             r"vit\.layers\.1\..* unused: the model would run without those layers"):
            load_image_classifier(str(tmp_path), **labels, config_overrides={"num_hidden_layers": 1})
        with pytest.raises(ValueError, match=r"config_overrides \['qkv_bias'\] leave .*q_proj\.bias"):
            load_image_classifier(str(tmp_path), **labels, config_overrides={"qkv_bias": False})  # a layer kept, its bias not
    # weights outside the blocks that the class has no place for (another class's head) are said
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "model.safetensors")
    save_file({**weights, "pooler.dense.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with caplog.at_level("WARNING", logger="hf_rcka"):
        load_image_classifier(str(tmp_path))
    assert "weights pooler.dense.weight have no place in ViTForImageClassification and are not used" in caplog.text


def test_a_teacher_whose_config_leaves_checkpoint_blocks_unused_is_refused_and_a_student_told(tmp_path: Path,
                                                                                            caplog) -> None:
    """Without any override: a config.json of 1 block beside the weights of 2 (another model's config
    copied in) ran the teacher on its first block, as num_hidden_layers 1 did. A student, which
    trains on, is told."""
    load_image_classifier("config:vit", num_labels=3, config_overrides=VIT).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match=r"ViTForImageClassification leaves .*'s weights vit\.layers\.1\..* unused: the "
                                         r"model would run without those layers\. Drop the overrides, or give a "
                                         r"checkpoint of this architecture$"):
        load_image_classifier(str(tmp_path))  # a teacher
    with caplog.at_level("WARNING", logger="hf_rcka"):
        load_image_classifier(str(tmp_path), num_labels=3)
    assert "weights vit.layers.1." in caplog.text and "are not used" in caplog.text


def test_a_students_stem_norm_is_body_and_a_new_head_is_said(tmp_path: Path, caplog) -> None:
    """A CNN checkpoint without its stem BatchNorm started it anew (statistics reset, 91% instead of
    99% for the digits ResNet), allowed as if it were a final norm; a head that starts anew was
    said only in transformers' table."""
    from safetensors.torch import load_file, save_file

    tiny_resnet = {"embedding_size": 8, "hidden_sizes": [8, 8], "depths": [1, 1]}
    load_image_classifier("config:resnet", num_labels=3, config_overrides=tiny_resnet).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".embedder.normalization." not in k}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"no weights for resnet\.embedder\.embedder\.normalization"):
        load_image_classifier(str(tmp_path), num_labels=3)
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with caplog.at_level("WARNING", logger="hf_rcka"):
        load_image_classifier(str(tmp_path), num_labels=3)
    assert "its checkpoint has no weights for classifier.1.bias, classifier.1.weight, which start random" in caplog.text


def test_a_timm_overlay_naming_weights_is_refused() -> None:
    """timm reads pretrained_cfg_overlay's file/url/hf_hub_id only with pretrained=True, which is
    never passed: the student trained from random weights, exit 0."""
    with pytest.raises(ValueError, match=r"pretrained_cfg_overlay sets \['file'\], where timm finds pretrained weights"):
        load_image_classifier("timm/resnet18", num_labels=3, from_scratch=True,
                              config_overrides={"pretrained_cfg_overlay": {"file": "/weights/resnet18.safetensors"}})


def test_weight_files_that_do_not_fit_are_named_for_what_they_are(tmp_path: Path, caplog) -> None:
    """A missing shard was reported as "no safetensors weights ... a pickle file"; a config of
    another model beside the weights was transformers' traceback; a known model type's auto_map
    was ignored unsaid and kept in the export, which then failed with trust_remote_code."""
    model = load_image_classifier("config:vit", num_labels=3, config_overrides=VIT)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    with pytest.raises(OSError, match=r"a shard its safetensors index lists is missing .*model-00002-of"):
        load_image_classifier(str(tmp_path / "sharded"))
    model.save_pretrained(tmp_path / "other")
    config = json.loads((tmp_path / "other" / "config.json").read_text())
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "hidden_size": 48, "intermediate_size": 48}))
    with pytest.raises(ValueError, match="holds weights of other shapes than its config.json describes"):
        load_image_classifier(str(tmp_path / "other"))
    model.save_pretrained(tmp_path / "mapped")
    auto_map = {"AutoModelForImageClassification": "modeling_acme.Acme"}
    (tmp_path / "mapped" / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    with caplog.at_level("WARNING", logger="hf_rcka"):
        loaded = load_image_classifier(str(tmp_path / "mapped"))
    assert "names code of its own (auto_map ['AutoModelForImageClassification']), which is not used" in caplog.text
    loaded.save_pretrained(tmp_path / "export")
    assert "auto_map" not in json.loads((tmp_path / "export" / "config.json").read_text())



def test_a_trusted_configs_auto_map_is_kept(tmp_path: Path) -> None:
    """With trust_remote_code the config's auto_map is what loads the repository's own class:
    dropping it whatever trust_remote_code says passed every test (the model then loaded as
    transformers' built-in class, the code the user trusted never ran)."""
    from hf_rcka.models.hf_config import load_config

    auto_map = {"AutoModelForImageClassification": "modeling_acme.Acme"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", **VIT, "auto_map": auto_map}))
    assert load_config(str(tmp_path), trust_remote_code=True).auto_map == auto_map
    assert not getattr(load_config(str(tmp_path)), "auto_map", None)


def test_a_final_norm_before_a_sequential_head_and_an_older_saves_buffers_are_no_body(tmp_path: Path) -> None:
    """BiT's head is a Sequential (classifier.1), which counted as the last block, so its final
    norm could no longer start anew; a teacher checkpoint holding LeViT's non-persistent index
    buffers (an older save) was refused as a dropped layer."""
    import transformers as tf
    from safetensors.torch import load_file, save_file

    from _models import hf_levit

    bit = tf.BitForImageClassification(tf.BitConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                    layer_type="preactivation", num_groups=4, num_labels=3))
    bit.save_pretrained(tmp_path / "bit")
    weights = load_file(tmp_path / "bit" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("bit.norm.")}, tmp_path / "bit" / "model.safetensors",
              metadata={"format": "pt"})
    assert load_image_classifier(str(tmp_path / "bit"), num_labels=5).config.num_labels == 5
    levit = hf_levit()
    levit.save_pretrained(tmp_path / "levit")
    persistent = set(levit.state_dict())
    extra = {name: buffer.clone() for name, buffer in levit.named_buffers() if name not in persistent}
    assert extra
    weights = load_file(tmp_path / "levit" / "model.safetensors")
    save_file({**weights, **extra}, tmp_path / "levit" / "model.safetensors", metadata={"format": "pt"})
    load_image_classifier(str(tmp_path / "levit"))  # a teacher


def test_an_override_may_use_the_configs_own_alias_of_a_field() -> None:
    """transformers configs alias some fields (ImageGPT's hidden_size is n_embd, its
    num_hidden_layers n_layer): a mutant that no longer read ``attribute_map`` refused them as "not
    a field" with every test passing."""
    from hf_rcka.models.hf_config import default_config, with_overrides

    config = with_overrides(default_config("imagegpt"), {"hidden_size": 64, "num_hidden_layers": 2})
    assert (config.n_embd, config.n_layer) == (64, 2)


def test_a_backbone_checkpoints_architectures_build_the_classifier_of_its_type() -> None:
    """A checkpoint listing ``ViTModel`` (a backbone, no head) gets the Auto class's classifier: a
    mutant that took any class of the config's type passed every test and built the headless model."""
    from transformers import ViTConfig

    from hf_rcka.models.hf_config import classifier_class, default_class

    config = ViTConfig(**VIT, architectures=["ViTModel"])
    assert classifier_class(config, explicit=False) is None
    assert default_class(config).__name__ == "ViTForImageClassification"


def test_a_name_given_twice_takes_its_first_id() -> None:
    """ImageNet-1k names two classes 'crane' (134, 517) and two 'maillot': the teacher's logit a
    run's 'crane' reads is the first, as list.index finds it; read from the end, it was the last."""
    from hf_rcka.models.label_maps import first_ids

    names = ["crane", "maillot", "dog", "crane", "maillot"]
    assert first_ids(names) == {name: names.index(name) for name in names} == {"crane": 0, "maillot": 1, "dog": 2}


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_a_student_from_a_multi_label_checkpoint_exports_as_single_label(tmp_path, problem_type) -> None:
    """A student started from a checkpoint saved with another ``problem_type`` (a multi-label tagger)
    trained single-label (softmax cross-entropy, accuracy of the argmax), and the run exited 0, but its
    export kept the old ``problem_type``: ``pipeline("image-classification")`` scored its classes with
    independent sigmoids (0.69, 0.47, 0.39 for one image), and ``model(**inputs, labels=class_ids)``,
    transformers' own loss, failed ("Target size (torch.Size([1])) must be the same as input size")."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                          image_size=16, patch_size=8, num_labels=3, problem_type=problem_type)
    tf.ViTForImageClassification(config).save_pretrained(tmp_path / "tagger")
    student = load_image_classifier(str(tmp_path / "tagger"), id2label=LABELS)
    student.save_pretrained(tmp_path / "out")
    exported = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert exported.config.problem_type in (None, "single_label_classification")
    out = exported(pixel_values=torch.zeros(2, 3, 16, 16), labels=torch.tensor([0, 2]))
    assert torch.isfinite(out.loss)
    scratch = load_image_classifier("config:vit", id2label=LABELS, from_scratch=True,
                                    config_overrides={"image_size": 16, "patch_size": 8, "hidden_size": 16,
                                                      "num_hidden_layers": 1, "num_attention_heads": 2,
                                                      "intermediate_size": 16, "problem_type": problem_type})
    assert scratch.config.problem_type in (None, "single_label_classification")


def test_a_timm_student_from_scratch_records_nothing_of_pretrained_weights(tmp_path) -> None:
    """Its saved data config kept the registry entry's ``tag: augreg_in21k_ft_in1k``, licence and
    ``num_classes: 1000`` for a 3-class student of random weights: the folder (and timm reading it)
    said the weights came from in21k pretraining. timm's own export records the model's classes."""
    import json

    from hf_rcka.models.timm_models import timm_native_state

    model = load_image_classifier("timm/vit_tiny_patch16_224", num_labels=3, from_scratch=True, image_size=32,
                                  config_overrides={"depth": 1})
    model.save_pretrained(tmp_path / "out", state_dict=timm_native_state(model))  # as the run exports it
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    assert not {"tag", "license", "origin_url"} & set(saved), saved
    assert saved["num_classes"] == 3 and saved["mean"] == [0.5, 0.5, 0.5] and saved["input_size"] == [3, 32, 32]
    timm_model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    assert timm_model.num_classes == 3 and not timm_model.pretrained_cfg.get("tag")
