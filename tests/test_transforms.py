"""Per-image transforms: timm's training augmentation, and evaluation equal to the saved processor."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from hf_rcka.augmentation import AugmentationArguments
from hf_rcka.cli.recipe import parse_arguments
from hf_rcka.errors import RecipeError
from hf_rcka.models.loading import load_image_classifier
from hf_rcka.models.processors import load_image_processor
from hf_rcka.data.transforms import eval_transform, student_data_config, train_transform

TINY_VIT = dict(hidden_size=36, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40, image_size=16,
                patch_size=4)
STUDENTS = {
    # DeiT's processor resizes to 18 x 18 (256/224 of the crop) and centre-crops 16, bicubic
    "hf_deit": ("config:deit", TINY_VIT),
    # ViT's processor stretches to (h, w)
    "hf_vit": ("config:vit", TINY_VIT),
    # ConvNeXt's processor resizes the short side by crop_pct and centre-crops
    "hf_convnext": ("config:convnext", dict(hidden_sizes=[8, 12, 16, 20], depths=[1, 1, 1, 1])),
    # timm: resize the short side to size / crop_pct, centre crop, bicubic, ImageNet mean/std
    "timm_resnet": ("timm/resnet18", dict(channels=(8, 12, 16, 20))),
}


def non_square_images(count=4, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(20, 13), (9, 31), (40, 40), (17, 6)][:count]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def saved_student(name, tmp_path):
    source, overrides = STUDENTS[name]
    model = load_image_classifier(source, num_labels=3, from_scratch=True, config_overrides=overrides, image_size=16)
    processor = load_image_processor(source, model, image_size=16)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return processor


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_eval_transform_is_exactly_what_the_saved_processor_does(name, tmp_path):
    processor = saved_student(name, tmp_path)
    deployed = AutoImageProcessor.from_pretrained(tmp_path)
    transform = eval_transform(processor)
    for image in non_square_images():
        ours = transform(image)
        theirs = deployed(images=image, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == (3, 16, 16)
        assert torch.equal(ours, theirs)


def test_stretching_is_not_what_a_cropping_processor_does(tmp_path):
    """The old eval path (``Resize((h, w))``) differs from DeiT's resize + centre crop: the test above can fail."""
    from torchvision import transforms as T

    processor = saved_student("hf_deit", tmp_path)
    image = non_square_images(1)[0]
    stretched = T.Compose([T.Resize((16, 16)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])(image)
    assert not torch.allclose(stretched, eval_transform(processor)(image), atol=1e-2)


def test_data_config_is_read_from_hf_and_timm_processors(tmp_path):
    deit = saved_student("hf_deit", tmp_path / "deit")
    assert student_data_config(deit) == {"input_size": (3, 16, 16), "interpolation": "bicubic",
                                         "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    timm = student_data_config(saved_student("timm_resnet", tmp_path / "timm"))
    assert timm["input_size"] == (3, 16, 16) and timm["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_train_transform_augments_at_the_student_size_and_normalisation(tmp_path):
    processor = saved_student("timm_resnet", tmp_path)
    plain = train_transform(processor, AugmentationArguments(hflip=0.0, color_jitter=0.0))
    heavy = train_transform(processor, AugmentationArguments(aa="rand-m9-mstd0.5-inc1", reprob=1.0, recount=2))
    names = [type(t).__name__ for t in heavy.transforms]
    assert "RandAugment" in names and "RandomErasing" in names and "RandomResizedCropAndInterpolation" in names
    image = Image.new("RGB", (23, 11), (124, 116, 104))  # ImageNet's mean colour: normalises to ~0
    torch.manual_seed(0)
    out = plain(image)
    assert out.shape == (3, 16, 16) and out.abs().max() < 0.02, "the student's mean/std normalise"
    torch.manual_seed(0)
    erased = heavy(image)
    assert erased.shape == (3, 16, 16) and erased.std() > 0.1, "random erasing fills boxes with noise (the plain image is uniform)"


@pytest.mark.parametrize("policy", ["rand-m10-n8-mstd0-inc1", "original"])
def test_posterize_at_full_magnitude_does_not_stop_training(policy, tmp_path):
    """timm's PosterizeIncreasing keeps 0 bits at magnitude 10, which Pillow 13 rejects."""
    processor = saved_student("timm_resnet", tmp_path)
    transform = train_transform(processor, AugmentationArguments(aa=policy))
    image = non_square_images(1)[0]
    for seed in range(30):
        torch.manual_seed(seed)
        np.random.seed(seed)
        __import__("random").seed(seed)
        assert transform(image).shape == (3, 16, 16)


def test_no_aug_trains_on_the_deployed_preprocessing(tmp_path):
    processor = saved_student("hf_deit", tmp_path)
    image = non_square_images(1)[0]
    transform = train_transform(processor, AugmentationArguments(no_aug=True, aa="rand-m9-mstd0.5-inc1"))
    assert torch.equal(transform(image), eval_transform(processor)(image))


def test_no_aug_names_the_per_image_settings_it_ignores(caplog):
    with caplog.at_level("WARNING"):
        AugmentationArguments(no_aug=True, aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8)
    assert "aa, reprob (set here) have no effect" in caplog.text  # mixup still mixes the batch
    caplog.clear()
    with caplog.at_level("WARNING"):
        AugmentationArguments(no_aug=True, mixup=0.8)
    assert not caplog.text


BASE = {"model_name_or_path": "config:vit", "dataset_name": "builtin:digits", "output_dir": "out"}


def test_timm_train_py_keys_parse_with_their_types():
    _, data, _ = parse_arguments({**BASE, "aa": "rand-m9-mstd0.5-inc1", "reprob": "0.25", "mixup": 0.8,
                                  "cutmix": "1.0", "cutmix_minmax": [0.2, 0.8], "aug_repeats": 3,
                                  "train_interpolation": "bicubic", "remode": "pixel", "recount": 1})
    assert data.aa == "rand-m9-mstd0.5-inc1" and data.reprob == 0.25 and data.cutmix == 1.0
    assert data.cutmix_minmax == [0.2, 0.8] and data.aug_repeats == 3 and data.mixup_active


@pytest.mark.parametrize("key, value, fragment", [
    ("aa", "rand-x9", "is not a timm augmentation policy"),
    # timm skipped a section without a number: a letter l for the 1 trained RandAugment's other ops
    ("aa", "rand-m9-mstd0.5-incl", "timm ignores 'incl' (each section is a key and its number"),
    ("mixup_mode", "row", "mixup_mode must be one of"),
    ("aug_repeats", 1, "aug_repeats must be 0 (off) or >= 2"),
    ("reprob", 1.5, "reprob must be in [0.0, 1.0]"),
    ("cutmix_minmax", [0.9, 0.1], "cutmix_minmax must be [min, max]"),
    ("train_interpolation", "cubic", "train_interpolation must be one of"),
    # each of these was accepted by a mutant with every test passing: a flip or mixing probability out
    # of range, a negative alpha or a count below one, taken by timm as some other valid setting
    ("hflip", 1.5, "hflip must be in [0.0, 1.0]"),
    ("mixup_prob", -0.5, "mixup_prob must be in [0.0, 1.0]"),
    ("mixup_switch_prob", 2.0, "mixup_switch_prob must be in [0.0, 1.0]"),
    ("cutmix", -1.0, "cutmix must be >= 0"),
    ("recount", 0, "recount must be >= 1"),
    ("aug_repeats", -3, "aug_repeats must be 0 (off) or >= 2"),
    ("cutmix_minmax", [0.1, 0.5, 0.9], "cutmix_minmax must be [min, max]"),
    ("aa", "augmix-m5-w4-dl", "timm ignores 'dl'"),  # AugMix skips a section without a number as RandAugment does
])
def test_bad_augmentation_values_name_the_key(key, value, fragment):
    with pytest.raises(RecipeError, match=None) as err:
        parse_arguments({**BASE, key: value})
    assert fragment in str(err.value)
    # from Python too: a user error, which the command line prints as one line (it was a ValueError)
    with pytest.raises(RecipeError, match=None) as err:
        AugmentationArguments(**{key: value})
    assert fragment in str(err.value)


@pytest.mark.parametrize("key, value", [("mixup", float("nan")), ("cutmix", float("nan")), ("mixup", float("inf")),
                                        ("cutmix", float("inf")), ("color_jitter", float("nan")),
                                        ("color_jitter", float("inf"))])
def test_a_non_finite_alpha_or_jitter_is_refused(key, value):
    """nan passed the >= 0 check: a nan alpha switched Mixup/CutMix off silently, an infinite one
    failed at the first batch (mixup's as a divergence blamed on the learning rate), and a nan or
    infinite colour jitter as a traceback once the transforms were built, after the models loaded."""
    with pytest.raises(RecipeError, match=None) as err:
        AugmentationArguments(**{key: value})
    assert str(err.value) == f"{key} must be >= 0 and finite, got {value}"


def test_the_old_augment_key_is_gone_with_a_pointer():
    with pytest.raises(RecipeError, match="unknown recipe key 'augment'"):
        parse_arguments({**BASE, "augment": "none"})


def test_hflip_and_train_interpolation_reach_the_training_transform(tmp_path):
    """hflip is the flip probability (0: never, 1: always) and train_interpolation the crop's filter."""
    processor = saved_student("timm_resnet", tmp_path)
    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], (30, 1, 3))  # dark left, bright right
    image = Image.fromarray(ramp)
    for hflip, bright_right in ((0.0, True), (1.0, False)):
        transform = train_transform(processor, AugmentationArguments(hflip=hflip, color_jitter=0.0))
        for seed in range(8):
            torch.manual_seed(seed)
            out = transform(image)
            assert (out[:, :, -4:].mean() > out[:, :, :4].mean()) == bright_right, (hflip, seed)
    stripes = Image.fromarray(np.kron(np.indices((6, 8)).sum(0) % 2 * 255, np.ones((5, 5))).astype(np.uint8)).convert("RGB")
    nearest = train_transform(processor, AugmentationArguments(train_interpolation="nearest", hflip=0.0, color_jitter=0.0))
    for seed in range(4):
        torch.manual_seed(seed)
        assert len(torch.unique(nearest(stripes)[0])) <= 2, "nearest keeps the two colours"


def test_random_erasing_settings_reach_the_training_transform(tmp_path):
    """reprob, remode and recount were each replaceable by a constant with every test passing
    (the existing test checks only that erasing adds noise)."""
    processor = saved_student("timm_resnet", tmp_path)
    transform = train_transform(processor, AugmentationArguments(reprob=0.25, remode="const", recount=3))
    erasing = next(t for t in transform.transforms if type(t).__name__ == "RandomErasing")
    assert (erasing.probability, erasing.mode, erasing.max_count) == (0.25, "const", 3)


def test_training_normalises_with_the_students_std_too(tmp_path):
    """An image of ImageNet's mean colour normalises to ~0 whatever the std (the existing test):
    a white image must come out at (1 - mean) / std, as the deployed processor gives it."""
    processor = saved_student("timm_resnet", tmp_path)
    plain = train_transform(processor, AugmentationArguments(hflip=0.0, color_jitter=0.0))
    white = Image.new("RGB", (23, 11), (255, 255, 255))
    torch.manual_seed(0)
    trained, deployed = plain(white), eval_transform(processor)(white)
    assert torch.allclose(trained.mean((1, 2)), deployed.mean((1, 2)), atol=1e-3)


def test_training_normalises_a_transformers_student_with_its_own_mean_and_std(tmp_path):
    """Training normalised with ImageNet's mean or std instead of the student's passed every test
    (their only students were timm's, which use ImageNet's): a DeiT student (mean and std 0.5)
    trained on other pixel values than its processor gives it when deployed."""
    processor = saved_student("hf_deit", tmp_path)
    plain = train_transform(processor, AugmentationArguments(hflip=0.0, color_jitter=0.0))
    for colour in ((255, 255, 255), (0, 0, 0)):
        image = Image.new("RGB", (23, 11), colour)
        torch.manual_seed(0)
        trained, deployed = plain(image), eval_transform(processor)(image)
        assert torch.allclose(trained.mean((1, 2)), deployed.mean((1, 2)), atol=1e-3), colour


def test_train_interpolation_null_is_the_students_own_interpolation(tmp_path):
    """train_interpolation: null ("the model's own") cropped with a fixed filter instead of the
    student's (bicubic for timm's resnet) with every test passing."""
    processor = saved_student("timm_resnet", tmp_path)
    assert student_data_config(processor)["interpolation"] == "bicubic"
    transform = train_transform(processor, AugmentationArguments(train_interpolation=None))
    crop = next(t for t in transform.transforms if type(t).__name__ == "RandomResizedCropAndInterpolation")
    from torchvision.transforms import InterpolationMode

    assert crop.interpolation == InterpolationMode.BICUBIC


def test_a_non_square_student_trains_at_its_own_height_and_width(tmp_path):
    """The processor's (height, width) swapped into timm's input_size passed every test (their
    students are square): a student whose processor gives 16 x 24 trained on 24 x 16 crops."""
    processor = saved_student("hf_vit", tmp_path)
    processor.size = {"height": 16, "width": 24}
    assert student_data_config(processor)["input_size"] == (3, 16, 24)
    image = non_square_images(1)[0]
    train = train_transform(processor, AugmentationArguments(hflip=0.0, color_jitter=0.0))
    assert train(image).shape == eval_transform(processor)(image).shape == (3, 16, 24)


def test_an_autoaugment_policy_that_keeps_0_bits_does_not_stop_training(tmp_path):
    """AutoAugment's v0 policy posterizes to 0 bits (its ('Posterize', 0.8, 2) sub-policy), and its
    ops are held in ``policy``, not ``ops``: leaving them unpatched passed every test (the
    'original' policy above keeps 4 to 8 bits), and a v0 run stopped at a random step."""
    processor = saved_student("timm_resnet", tmp_path)
    transform = train_transform(processor, AugmentationArguments(aa="v0"))
    image = non_square_images(1)[0]
    for seed in range(300):  # the 0-bit sub-policy is drawn with p 1/25 and runs with p 0.8
        torch.manual_seed(seed)
        np.random.seed(seed)
        __import__("random").seed(seed)
        assert transform(image).shape == (3, 16, 16)


def test_interpolations_timms_geometric_augmentations_refuse_and_the_ones_they_take():
    """box and hamming beside RandAugment were accepted by a mutant with every test passing (only
    lanczos was tested), and failed at the first batch; timm's 3a policy has no geometric op, so it
    takes lanczos, and a cutmix_minmax reaching 1 (the whole image) is a valid range."""
    for interpolation in ("lanczos", "box", "hamming"):
        with pytest.raises(RecipeError, match=f"train_interpolation '{interpolation}' cannot be used with aa="):
            AugmentationArguments(aa="rand-m9-mstd0.5-inc1", train_interpolation=interpolation)
    assert AugmentationArguments(aa="3a", train_interpolation="lanczos").train_interpolation == "lanczos"
    assert AugmentationArguments(cutmix_minmax=[0.2, 1.0]).mixup_active


def test_train_interpolation_null_with_a_processor_filter_timms_augmentations_refuse_is_one_line():
    """train_interpolation: null takes the student processor's filter: a lanczos one beside RandAugment
    passed the recipe check and failed at the first batch, a PIL traceback after the models loaded."""
    from transformers import ViTImageProcessor

    lanczos = ViTImageProcessor(size={"height": 16, "width": 16}, resample=1)
    with pytest.raises(RecipeError, match=r"the student processor's interpolation \(train_interpolation: null takes "
                                          r"it\) 'lanczos' cannot be used with aa='rand-m9-mstd0.5-inc1'.*"
                                          r"Set train_interpolation: bicubic"):
        train_transform(lanczos, AugmentationArguments(aa="rand-m9-mstd0.5-inc1", train_interpolation=None))
    image = non_square_images(1)[0]
    for fixed in ("bicubic", "random"):  # the advice, followed, trains
        transform = train_transform(lanczos, AugmentationArguments(aa="rand-m9-mstd0.5-inc1", train_interpolation=fixed))
        for seed in range(20):
            torch.manual_seed(seed)
            __import__("random").seed(seed)
            assert transform(image).shape == (3, 16, 16)
    assert train_transform(lanczos, AugmentationArguments(train_interpolation=None))(image).shape == (3, 16, 16)


def test_a_randaugment_transform_set_is_a_section_without_a_number():
    """RandAugment's 't' section names a transform set (timm's own example: rand-mstd1-tweights):
    refusing it as a section timm ignores passed every test."""
    assert AugmentationArguments(aa="rand-mstd1-tweights").aa == "rand-mstd1-tweights"
