"""TeacherInputTransform gives the teacher what its own image processor would have produced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    CLIPImageProcessor,
    ConvNextImageProcessor,
    DeiTImageProcessor,
    TimmWrapperImageProcessor,
    ViTImageProcessor,
)

from hf_rcka.errors import ModelError
from hf_rcka.modeling.teacher_inputs import (
    InputStats, TeacherInputTransform, _timm_stats, describe_view, input_stats, needed_transform,
)

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
HALF = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def _vit_processor(size: int, stats: dict = HALF, resample: int = 2) -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": size, "width": size}, resample=resample, **stats)


@pytest.fixture(scope="module")
def smooth_image() -> np.ndarray:
    """A 256x256 uint8 RGB image with little high-frequency content, so resampling paths agree."""
    low = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    image = F.interpolate(low, size=(256, 256), mode="bicubic", align_corners=False).clamp(0, 1)
    return (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _pixels(processor, image: np.ndarray) -> torch.Tensor:
    return processor(image, return_tensors="pt").pixel_values


# --- normalisation: exact against the teacher's processor -------------------------------------


def test_renormalisation_equals_teacher_processor(smooth_image: np.ndarray) -> None:
    raw = smooth_image[:32, :32]  # both processors resize 32 -> 32: only normalisation differs
    student, teacher = _vit_processor(32, HALF), _vit_processor(32, IMAGENET)
    transform = TeacherInputTransform.from_processors(student, teacher)
    assert not transform.is_identity
    torch.testing.assert_close(transform(_pixels(student, raw)), _pixels(teacher, raw), atol=1e-5, rtol=0)


def test_renormalisation_equals_timm_teacher_processor(smooth_image: np.ndarray) -> None:
    raw = smooth_image[:32, :32]
    student = _vit_processor(32, HALF)
    teacher = TimmWrapperImageProcessor(
        pretrained_cfg={"input_size": (3, 32, 32), "mean": IMAGENET["image_mean"], "std": IMAGENET["image_std"],
                        "crop_pct": 1.0, "interpolation": "bilinear"}
    )
    transform = TeacherInputTransform.from_processors(student, teacher)
    torch.testing.assert_close(transform(_pixels(student, raw)), teacher(raw).pixel_values, atol=1e-5, rtol=0)


# --- resolution: close to the teacher's processor, exact against interpolate ------------------


@pytest.mark.parametrize("student_size", [112, 320])
def test_resize_close_to_teacher_processor(smooth_image: np.ndarray, student_size: int) -> None:
    student, teacher = _vit_processor(student_size, HALF), _vit_processor(224, IMAGENET)
    transform = TeacherInputTransform.from_processors(student, teacher)
    got, want = transform(_pixels(student, smooth_image)), _pixels(teacher, smooth_image)
    assert got.shape == want.shape == (1, 3, 224, 224)
    error = (got - want).abs()
    # two resamplings (raw -> student -> teacher) against one: small, never systematic
    assert error.mean() < 0.03 and error.max() < 0.2, (error.mean(), error.max())


@pytest.mark.parametrize("student_size", [40, 16])
def test_resize_is_bilinear_then_affine(student_size: int) -> None:
    student = InputStats((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (student_size, student_size))
    teacher = InputStats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (24, 24))
    x = torch.randn(5, 3, student_size, student_size, generator=torch.Generator().manual_seed(1))
    resized = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(student.mean).view(1, 3, 1, 1), torch.tensor(student.std).view(1, 3, 1, 1)
    t_mean, t_std = torch.tensor(teacher.mean).view(1, 3, 1, 1), torch.tensor(teacher.std).view(1, 3, 1, 1)
    want = (resized * std + mean - t_mean) / t_std
    torch.testing.assert_close(TeacherInputTransform(student, teacher)(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest"])
def test_upsizing_resamples_as_pil_does(mode: str) -> None:
    """A teacher trained on PIL's resizes gets PIL's: its antialiased kernels (bicubic's is not
    interpolate's plain one) and, for bicubic, each of its two passes clamped to the pixel range.
    One plain bicubic pass was 12/255 off PIL's upsizing of a sharp-edged image."""
    blocks = torch.rand(1, 3, 7, 7, generator=torch.Generator().manual_seed(3))
    image = (F.interpolate(blocks, size=(56, 56), mode="nearest")[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    filters = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # PIL.Image.Resampling values
    student, teacher = _vit_processor(56, HALF, filters[mode]), _vit_processor(112, HALF, filters[mode])
    got = TeacherInputTransform.from_processors(student, teacher)(_pixels(student, image))
    error = (got - _pixels(teacher, image)).abs() * 0.5 * 255  # HALF: one unit is 127.5 pixel levels
    assert error.max() < 1.5, error.max()  # PIL rounds to 8 bits
    assert got.min() >= -1 and got.max() <= 1


def test_same_stats_other_size_only_resizes() -> None:
    student, teacher = InputStats((0.5,) * 3, (0.5,) * 3, (32, 32)), InputStats((0.5,) * 3, (0.5,) * 3, (16, 16))
    x = torch.randn(2, 3, 32, 32)
    want = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(TeacherInputTransform(student, teacher)(x), want)


# --- identity, dtype, buffers ------------------------------------------------------------------


def test_identity_returns_the_input_tensor() -> None:
    processor = _vit_processor(32, IMAGENET)
    transform = TeacherInputTransform.from_processors(processor, _vit_processor(32, IMAGENET))
    x = torch.randn(2, 3, 32, 32)
    assert transform.is_identity
    assert transform(x) is x


def test_identity_stats_still_resize_an_off_size_tensor() -> None:
    stats = InputStats((0.5,) * 3, (0.5,) * 3, (32, 32))
    transform = TeacherInputTransform(stats, stats)
    assert transform(torch.randn(1, 3, 48, 48)).shape == (1, 3, 32, 32)


def test_keeps_input_dtype() -> None:
    transform = TeacherInputTransform(InputStats((0.5,) * 3, (0.5,) * 3, (32, 32)),
                                      InputStats(IMAGENET["image_mean"], IMAGENET["image_std"], (24, 24)))
    x = torch.randn(2, 3, 32, 32)
    out = transform(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), transform(x), atol=0.05, rtol=0.02)


def test_buffers_move_but_stay_out_of_state_dict() -> None:
    transform = TeacherInputTransform(InputStats((0.5,) * 3, (0.5,) * 3, (8, 8)),
                                      InputStats(IMAGENET["image_mean"], IMAGENET["image_std"], (8, 8)))
    assert transform.state_dict() == {}
    assert transform.to(torch.float64).scale.dtype == torch.float64
    assert transform(torch.randn(1, 3, 8, 8)).dtype == torch.float32


# --- input_stats -------------------------------------------------------------------------------


def test_input_stats_of_hf_processors() -> None:
    assert input_stats(_vit_processor(48, IMAGENET)) == InputStats(IMAGENET["image_mean"], IMAGENET["image_std"], (48, 48))
    deit = DeiTImageProcessor(size={"height": 37, "width": 37}, crop_size={"height": 32, "width": 30})
    assert input_stats(deit).size == (32, 30)
    assert input_stats(ConvNextImageProcessor(size={"shortest_edge": 64})).size == (64, 64)
    assert input_stats(CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})).size == (32, 32)


def test_the_resize_uses_the_teacher_processors_filter() -> None:
    student = _vit_processor(32, HALF)  # ViT: bilinear
    teacher = DeiTImageProcessor(size={"height": 24, "width": 24}, crop_size={"height": 24, "width": 24})  # bicubic
    timm = TimmWrapperImageProcessor(pretrained_cfg={"input_size": (3, 24, 24), "mean": IMAGENET["image_mean"],
                                                     "std": IMAGENET["image_std"], "interpolation": "bicubic"})
    assert input_stats(student).interpolation == "bilinear"
    assert input_stats(teacher).interpolation == input_stats(timm).interpolation == "bicubic"
    assert TeacherInputTransform.from_processors(student, teacher).mode == "bicubic"
    assert TeacherInputTransform.from_processors(student, teacher, mode="bilinear").mode == "bilinear"


def test_input_stats_of_timm_processor() -> None:
    processor = TimmWrapperImageProcessor(pretrained_cfg={"input_size": (3, 40, 48), "mean": (0.1, 0.2, 0.3),
                                                          "std": (0.4, 0.5, 0.6), "crop_pct": 0.9})
    # timm's data config fills in its default filter, bicubic
    assert input_stats(processor) == InputStats((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), (40, 48), "bicubic")


def test_input_stats_fold_rescaling_and_disabled_normalisation() -> None:
    plain = ViTImageProcessor(size={"height": 8, "width": 8}, do_normalize=False)
    assert input_stats(plain) == InputStats((0.0,) * 3, (1.0,) * 3, (8, 8))
    raw_scale = ViTImageProcessor(size={"height": 8, "width": 8}, do_rescale=False, image_mean=[127.5] * 3,
                                  image_std=[127.5] * 3)
    assert input_stats(raw_scale) == input_stats(_vit_processor(8, HALF))


def test_input_stats_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        input_stats(CLIPImageProcessor(size={"shortest_edge": 32}, do_center_crop=False))
    with pytest.raises(ValueError, match="InputStats"):
        input_stats(object())


def test_an_output_size_that_cannot_be_told_says_what_is_set_and_the_way_on() -> None:
    """The error listed every unset field of the processor's SizeDict (height=None, longest_edge=None,
    ...) and could leave out the caller's fix; a size of height alone failed with a KeyError, and an
    image_size of three numbers ((224, 224, 3), channels included) was taken for (224, 224)."""
    from types import SimpleNamespace

    from hf_rcka.models.image_sizes import as_hw, processor_output_size

    with pytest.raises(ValueError) as caught:
        input_stats(CLIPImageProcessor(size={"shortest_edge": 32}, do_center_crop=False))
    said = str(caught.value)
    assert "(size={'shortest_edge': 32}, crop_size={'height': 224, 'width': 224})" in said, said
    assert said.endswith("(or, from Python, build InputStats by hand)."), said
    with pytest.raises(ValueError, match="cannot tell the output size of SimpleNamespace"):
        processor_output_size(SimpleNamespace(size={"height": 32}))
    with pytest.raises(ValueError, match=r"\(size=\{'shortest_edge': 32\}, crop_size=\{\}\)"):  # a fast one's SizeDict
        processor_output_size(SimpleNamespace(size={"height": None, "width": None, "shortest_edge": 32,
                                                    "longest_edge": None}, crop_size=None))
    with pytest.raises(ValueError, match=r"int or \(height, width\), got \(224, 224, 3\)"):
        as_hw((224, 224, 3))
    assert as_hw([32, 48]) == (32, 48) and as_hw(40) == (40, 40)


# --- validation --------------------------------------------------------------------------------


def test_channel_count_mismatch_is_an_error() -> None:
    gray = InputStats((0.5,), (0.5,), (32, 32))
    rgb = InputStats((0.5,) * 3, (0.5,) * 3, (32, 32))
    with pytest.raises(ValueError, match="channels"):
        TeacherInputTransform(gray, rgb)


@pytest.mark.parametrize(
    ("mean", "std", "size", "match"),
    [((0.5, 0.5, 0.5), (0.5, 0.5), (8, 8), "per channel"), ((0.5,), (0.0,), (8, 8), "std"),
     ((0.5,), (0.5,), (8,), "height, width"), ((), (), (8, 8), "per channel"), ((0.5,), (0.5,), (0, 8), "height, width")],
)
def test_input_stats_validation(mean, std, size, match) -> None:
    with pytest.raises(ValueError, match=match):
        InputStats(mean, std, size)


def test_rejects_wrong_channels_at_call_time_and_unknown_mode() -> None:
    stats = InputStats((0.5,) * 3, (0.5,) * 3, (8, 8))
    with pytest.raises(ValueError, match="shape"):
        TeacherInputTransform(stats, InputStats((0.4,) * 3, (0.5,) * 3, (8, 8)))(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="mode"):
        TeacherInputTransform(stats, stats, mode="lanczos")


def test_a_processor_whose_output_its_settings_do_not_describe_is_refused_or_read_in_full():
    """input_stats read mean, std, rescale and size only: MobileViT's processor (channels flipped to
    BGR) trained a student on RGB that its saved processor then fed BGR, EfficientNet's (std applied
    twice with include_top) trained on half the contrast it deploys with, Perceiver's (crop, then
    resize) on another size. Each was silent."""
    from PIL import Image
    from transformers import EfficientNetImageProcessor, MobileViTImageProcessor, PerceiverImageProcessor

    image = Image.new("RGB", (40, 30), (30, 160, 220))
    for processor in (EfficientNetImageProcessor(size={"height": 24, "width": 24}),
                      EfficientNetImageProcessor(size={"height": 24, "width": 24}, rescale_offset=True),
                      MobileViTImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24},
                                              do_flip_channel_order=False)):
        stats = input_stats(processor)
        own = processor(images=image, return_tensors="pt")["pixel_values"][0, :, 12, 12].double()
        described = [(c / 255 - m) / s for c, m, s in zip((30, 160, 220), stats.mean, stats.std)]
        assert torch.allclose(own, torch.tensor(described, dtype=torch.float64), atol=1e-4)
    with pytest.raises(ModelError, match="MobileViTImageProcessor flips the channels to BGR"):
        input_stats(MobileViTImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}))
    with pytest.raises(ModelError, match="PerceiverImageProcessor outputs 224x224 images, not the 256x256"):
        input_stats(PerceiverImageProcessor())


def test_a_teacher_whose_processor_keeps_another_part_of_each_image_is_said(caplog):
    """The teacher gets the student's view of each image, resized: a squashing student under a
    cropping teacher fed it squashed images (on 8 x 16 digits its accuracy fell from 99% to 18%),
    and nothing said so."""
    from transformers import ConvNextImageProcessor, DeiTImageProcessor

    squash = input_stats(ViTImageProcessor(size={"height": 32, "width": 32}))
    crop = input_stats(ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875))
    assert describe_view(squash.view) == "the whole image squashed to the input's shape"
    assert describe_view(crop.view) == "a centre crop of 87.5% of the short side"
    deit = input_stats(DeiTImageProcessor(size={"height": 37, "width": 37}, crop_size={"height": 32, "width": 32}))
    assert describe_view(deit.view) == "the centre 86.5% of the image squashed to the input's shape"
    with caplog.at_level("WARNING", logger="hf_rcka"):
        needed_transform(squash, crop)
    assert "the teacher sees what the student's processor keeps of each image (the whole image squashed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_rcka"):
        assert needed_transform(crop, crop) is None
        needed_transform(crop, InputStats((0.5,) * 3, (0.5,) * 3, (64, 64), view=crop.view))
        needed_transform(crop, InputStats((0.5,) * 3, (0.5,) * 3, (64, 64), view=("crop", 0.95)))  # DeiT's own way
    assert "teacher sees" not in caplog.text and "stretched" not in caplog.text
    # a square student under a 4:3 teacher (or the reverse): each image reached the teacher distorted
    with caplog.at_level("WARNING", logger="hf_rcka"):
        needed_transform(crop, InputStats((0.5,) * 3, (0.5,) * 3, (48, 64), view=crop.view))
    assert "the student's 32x32 images are stretched to the teacher's 48x64" in caplog.text
    # timm's letterbox (crop_mode border) had no view: a squashing student under it was not said
    border = _timm_stats({"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_mode": "border"})
    assert describe_view(border.view) == "the whole image fitted inside the input, with borders"
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_rcka"):
        needed_transform(squash, border)
    assert "its own keeps (the whole image fitted inside the input, with borders)" in caplog.text


def test_a_teacher_input_a_few_percent_wider_than_the_students_is_said(caplog):
    """A 224x224 student under a teacher of 224x240 inputs stretches every image the teacher sees
    by 7%: well past the 1% that is said, and small enough to pass a looser tolerance unsaid."""
    square = InputStats((0.5,) * 3, (0.5,) * 3, (224, 224))
    with caplog.at_level("WARNING", logger="hf_rcka"):
        needed_transform(square, InputStats((0.5,) * 3, (0.5,) * 3, (224, 240)))
    assert "the student's 224x224 images are stretched to the teacher's 224x240" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_rcka"):
        needed_transform(square, InputStats((0.5,) * 3, (0.5,) * 3, (256, 257)))  # 0.4%: resampling, not a shape
    assert "stretched" not in caplog.text


def test_a_convnext_processor_of_384_or_more_squashes_the_whole_image():
    """ConvNeXt's processor resizes the short side and crops below 384, and warps the whole image
    to the square from 384 on: read as a crop there, a cropping student under a 384 ConvNeXt teacher
    would not be told that the teacher sees another part of each image."""
    assert input_stats(ConvNextImageProcessor(size={"shortest_edge": 384})).view == ("squash", 1.0)
    assert input_stats(ConvNextImageProcessor(size={"shortest_edge": 383}, crop_pct=0.875)).view == ("crop", 0.875)


def test_a_timm_squash_teacher_is_read_as_squashing_and_an_uncallable_processor_as_its_settings(caplog):
    """timm's crop_mode squash keeps the whole image (its crop_pct of it), squashed: read as a crop,
    a squashing student under it was told the teacher sees another part of each image, and a
    cropping one was not. A processor the probe cannot call is taken as its settings read, not an
    error."""
    squash = _timm_stats({"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_mode": "squash",
                          "crop_pct": 1.0})
    assert squash.view == ("squash", 1.0)
    with caplog.at_level("WARNING", logger="hf_rcka"):
        needed_transform(input_stats(_vit_processor(32)), squash)
    assert "teacher sees" not in caplog.text

    class NeedsABatch(ViTImageProcessor):
        def __call__(self, images, **kwargs):
            raise RuntimeError("give at least 4 images")

    assert input_stats(NeedsABatch(size={"height": 8, "width": 8}, **HALF)) == input_stats(_vit_processor(8))


def test_a_processor_whose_output_is_a_little_off_its_settings_is_refused():
    """A processor that brightens its images by 0.05 (6 pixel levels under a 0.5/0.5 normalisation)
    feeds the deployed model other pixels than hf_rcka's transforms would train it on: the probe
    compares to a thousandth, not to a tenth that would let this pass."""
    class Brighter(ViTImageProcessor):
        def __call__(self, images, **kwargs):
            output = super().__call__(images, **kwargs)
            output["pixel_values"] = output["pixel_values"] + 0.05
            return output

    with pytest.raises(ModelError, match="image processor Brighter outputs .* its mean, std and rescale settings describe"):
        input_stats(Brighter(size={"height": 8, "width": 8}, **HALF))
