"""The ImageNet recipes carry their papers' training settings, and the headline student builds offline."""

from pathlib import Path

import pytest

from hf_rcka.cli.recipe import parse_recipe_file
from hf_rcka.models.loading import load_image_classifier
from hf_rcka.models.processors import load_image_processor

RECIPES = Path(__file__).parent.parent / "recipes"
DEIT = ["deit_from_regnet.yaml", "kd-deit_small_from_regnety160-imagenet.yaml",
        "deit_token-deit_small_distilled_from_regnety160-imagenet.yaml"]
RESNET = ["rcka-resnet18_from_resnet34-imagenet.yaml", "srd-resnet18_from_resnet34-imagenet.yaml",
          "ekt-resnet18_from_resnet34-imagenet.yaml"]


def parse(name):
    return parse_recipe_file(RECIPES / name, ["--use_cpu", "true"])


@pytest.mark.parametrize("name", DEIT)
def test_deit_recipes_follow_deit_main_py(name):
    _, data, args = parse(name)
    assert (data.aa, data.mixup, data.cutmix, data.reprob, data.aug_repeats) == ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.25, 3)
    assert data.train_interpolation == "bicubic" and args.label_smoothing_factor == 0.1
    assert (args.lr_base, args.lr_base_size, args.lr_base_scale) == (5e-4, 512, "linear")  # main.py's scaling
    assert args.per_device_train_batch_size * 8 == 1024  # one process here: 128 images
    assert args.learning_rate == pytest.approx(5e-4 * args.per_device_train_batch_size / 512)
    assert (args.weight_decay, args.num_train_epochs, args.max_grad_norm) == (0.05, 300, 0.0)
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-5} and args.warmup_steps == pytest.approx(5 / 300, abs=1e-4)
    assert args.model_ema and args.model_ema_decay == 0.99996 and args.dataloader_drop_last
    assert not args.load_best_model_at_end  # DeiT exports its last epoch, not one picked on validation


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_sgd_recipes_set_momentum(name):
    # transformers' sgd has no momentum unless optim_args says so; no paper here trains without it
    _, _, args = parse(name)
    if args.optim.value == "sgd":
        assert "momentum=0.9" in (args.optim_args or "")


@pytest.mark.parametrize("name", RESNET)
def test_resnet_recipes_follow_the_torchvision_imagenet_protocol(name):
    _, data, args = parse(name)
    assert (data.aa, data.mixup, data.color_jitter, data.aug_repeats) == (None, 0.0, 0.0, 0)
    assert args.per_device_train_batch_size * 8 == 256 and (args.lr_base, args.lr_base_size) == (0.1, 256)
    assert args.optim.value == "sgd" and "momentum=0.9" in args.optim_args and args.weight_decay == 1e-4
    assert args.num_train_epochs == 100 and args.max_grad_norm == 0.0


def test_headline_student_builds_offline_with_drop_path_and_deit_eval_crop():
    model_args, _, _ = parse("deit_from_regnet.yaml")
    student = load_image_classifier(model_args.model_name_or_path, num_labels=10, from_scratch=True,
                                    config_overrides=model_args.student_config_overrides)
    drop = [float(getattr(block.drop_path1, "drop_prob", 0.0)) for block in student.timm_model.blocks]
    assert drop[0] == 0.0 and drop[-1] == pytest.approx(0.1)
    config = load_image_processor(model_args.model_name_or_path, student).data_config
    assert config["crop_pct"] == 0.875 and config["interpolation"] == "bicubic" and config["input_size"] == (3, 224, 224)


def test_resnet_students_start_from_torchvisions_init():
    """timm zeroes each residual block's last BatchNorm weight; torchvision's recipe (zero_init_residual=False) does not."""
    model_args, _, _ = parse("rcka-resnet18_from_resnet34-imagenet.yaml")
    student = load_image_classifier(model_args.model_name_or_path, num_labels=10, from_scratch=True,
                                    config_overrides=model_args.student_config_overrides)
    assert student.timm_model.layer1[0].bn2.weight.abs().min() > 0


def test_deit_token_baseline_is_deits_own_distilled_model():
    """It was transformers' DeiT: no stochastic depth, tokens at zero, 256 x 256 stretched evaluation."""
    from hf_rcka.cli.model_sources import check_losses_fit_models
    from hf_rcka.modeling.distilled_heads import DistilledHeads

    model_args, _, args = parse("deit_token-deit_small_distilled_from_regnety160-imagenet.yaml")
    check_losses_fit_models(model_args, args)  # the recipe's student has a distillation head
    student = load_image_classifier(model_args.model_name_or_path, num_labels=10, from_scratch=True,
                                    config_overrides=model_args.student_config_overrides)
    assert DistilledHeads.applies(student)
    assert float(student.timm_model.blocks[-1].drop_path1.drop_prob) == pytest.approx(0.1)
    assert load_image_processor(model_args.model_name_or_path, student).data_config["crop_pct"] == 0.875
