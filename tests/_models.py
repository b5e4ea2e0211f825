"""Tiny randomly initialised models of every supported family, for fast offline tests.

Every builder seeds torch, builds from a config (no Hub access) and returns the model in eval
mode. Dimensions are small and distinct (width 36, 3 classes) so a transposed or mixed-up axis
shows up as a shape error. ``FAMILIES`` lists, for each family, the builder, the input size and
what its hidden states should look like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import transformers as tf

NUM_LABELS = 3
BATCH = 5


def _vit_kwargs(image_size: Any = 32) -> dict[str, Any]:
    return dict(hidden_size=36, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
                image_size=image_size, patch_size=8, num_labels=NUM_LABELS)


def _eval(model: torch.nn.Module) -> torch.nn.Module:
    return model.eval()


def hf_vit(image_size: Any = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return _eval(tf.ViTForImageClassification(tf.ViTConfig(**_vit_kwargs(image_size))))


def hf_deit(with_teacher: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.DeiTConfig(**_vit_kwargs())
    cls = tf.DeiTForImageClassificationWithTeacher if with_teacher else tf.DeiTForImageClassification
    return _eval(cls(config))


def hf_dinov2(num_register_tokens: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = _vit_kwargs()
    kwargs.pop("intermediate_size")
    if num_register_tokens:
        config = tf.Dinov2WithRegistersConfig(mlp_ratio=1, num_register_tokens=num_register_tokens, **kwargs)
        return _eval(tf.Dinov2WithRegistersForImageClassification(config))
    return _eval(tf.Dinov2ForImageClassification(tf.Dinov2Config(mlp_ratio=1, **kwargs)))


def hf_swin() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.SwinConfig(image_size=32, patch_size=2, embed_dim=12, depths=[1, 1, 1], num_heads=[1, 2, 2],
                           window_size=2, num_labels=NUM_LABELS)
    return _eval(tf.SwinForImageClassification(config))


def hf_hiera(image_size: tuple[int, int] = (32, 32)) -> torch.nn.Module:
    """Hiera: channels-last reshaped states, token states in unrolled (not row-major) order."""
    torch.manual_seed(0)
    config = tf.HieraConfig(embed_dim=12, depths=[1, 1], num_heads=[1, 2], image_size=list(image_size),
                            masked_unit_size=[4, 4], query_stride=[2, 2], num_query_pool=1, mlp_ratio=1.0,
                            num_labels=NUM_LABELS)
    return _eval(tf.HieraForImageClassification(config))


def hf_convnext() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.ConvNextConfig(hidden_sizes=[8, 12, 16, 20], depths=[1, 1, 1, 1], num_labels=NUM_LABELS)
    return _eval(tf.ConvNextForImageClassification(config))


def hf_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 12, 16, 20], depths=[1, 1, 1, 1],
                             layer_type="basic", num_labels=NUM_LABELS)
    return _eval(tf.ResNetForImageClassification(config))


def hf_regnet() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                             groups_width=8, num_labels=NUM_LABELS)
    return _eval(tf.RegNetForImageClassification(config))


def hf_mobilenet_v2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.MobileNetV2Config(depth_multiplier=0.25, image_size=32, num_labels=NUM_LABELS)
    return _eval(tf.MobileNetV2ForImageClassification(config))


def hf_efficientnet() -> torch.nn.Module:
    torch.manual_seed(0)
    # hidden_dim must equal the rounded top-conv width (1280 * width_coefficient)
    config = tf.EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, image_size=32,
                                   hidden_dim=128, num_labels=NUM_LABELS)
    return _eval(tf.EfficientNetForImageClassification(config))


def hf_mobilevit() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.MobileViTConfig(image_size=32, patch_size=2, hidden_sizes=[16, 20, 24],
                                neck_hidden_sizes=[8, 8, 12, 12, 16, 16, 32], num_labels=NUM_LABELS)
    return _eval(tf.MobileViTForImageClassification(config))


def hf_levit() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.LevitConfig(image_size=64, hidden_sizes=[16, 24, 32], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
                            key_dim=[8, 8, 8], num_labels=NUM_LABELS)
    return _eval(tf.LevitForImageClassification(config))


TIMM_TINY_ARGS: dict[str, dict[str, Any]] = {
    "resnet18": dict(channels=(8, 12, 16, 20)),
    "regnetx_002": {},
    "convnext_atto": dict(dims=(8, 12, 16, 20), depths=(1, 1, 1, 1)),
    "test_efficientnet": {},
    "mobilenetv3_small_050": {},
    "vit_tiny_patch16_224": dict(img_size=32, patch_size=8, embed_dim=36, depth=2, num_heads=2),
    "deit_tiny_distilled_patch16_224": dict(img_size=32, patch_size=8, embed_dim=36, depth=2, num_heads=2),
    "swin_tiny_patch4_window7_224": dict(img_size=32, patch_size=2, embed_dim=12, depths=(1, 1, 1),
                                         num_heads=(1, 2, 2), window_size=4),
    "levit_128s": dict(img_size=64, embed_dim=(16, 24, 32), depth=(1, 1, 1), num_heads=(1, 2, 2), key_dim=8),
}


def timm_model(architecture: str) -> torch.nn.Module:
    """A TimmWrapperForImageClassification built from config (random weights, no download)."""
    torch.manual_seed(0)
    config = tf.TimmWrapperConfig(architecture=architecture, model_args=TIMM_TINY_ARGS[architecture],
                                  num_labels=NUM_LABELS)
    return _eval(tf.TimmWrapperForImageClassification(config))


@dataclass(frozen=True)
class Family:
    """A model family and what its hidden states must look like.

    Attributes:
        build: returns the model.
        image_size: square input side the model is built for.
        layout: layout of every hidden state ("nlc" or "nchw").
        num_prefix_tokens: prefix tokens of the NLC hidden states.
        embedding_first: whether hidden state 0 is the embedding / stem output.
    """

    build: Callable[[], torch.nn.Module]
    image_size: int = 32
    layout: str = "nchw"
    num_prefix_tokens: int = 0
    embedding_first: bool = True


FAMILIES: dict[str, Family] = {
    "hf_vit": Family(hf_vit, layout="nlc", num_prefix_tokens=1),
    "hf_deit": Family(hf_deit, layout="nlc", num_prefix_tokens=2),
    "hf_deit_with_teacher": Family(lambda: hf_deit(with_teacher=True), layout="nlc", num_prefix_tokens=2),
    "hf_dinov2": Family(hf_dinov2, layout="nlc", num_prefix_tokens=1),
    "hf_dinov2_registers": Family(lambda: hf_dinov2(num_register_tokens=3), layout="nlc", num_prefix_tokens=4),
    "hf_swin": Family(hf_swin),
    "hf_hiera": Family(hf_hiera),
    "hf_convnext": Family(hf_convnext),
    "hf_resnet": Family(hf_resnet),
    "hf_regnet": Family(hf_regnet),
    "hf_mobilenet_v2": Family(hf_mobilenet_v2, embedding_first=False),
    "hf_efficientnet": Family(hf_efficientnet),
    "hf_mobilevit": Family(hf_mobilevit, embedding_first=False),
    "hf_levit": Family(hf_levit, image_size=64, layout="nlc"),
    "timm_resnet": Family(lambda: timm_model("resnet18")),
    "timm_regnet": Family(lambda: timm_model("regnetx_002")),
    "timm_convnext": Family(lambda: timm_model("convnext_atto"), embedding_first=False),
    "timm_efficientnet": Family(lambda: timm_model("test_efficientnet"), embedding_first=False),
    "timm_mobilenetv3": Family(lambda: timm_model("mobilenetv3_small_050")),
    "timm_vit": Family(lambda: timm_model("vit_tiny_patch16_224"), embedding_first=False),
    "timm_deit_distilled": Family(lambda: timm_model("deit_tiny_distilled_patch16_224"), embedding_first=False),
    "timm_swin": Family(lambda: timm_model("swin_tiny_patch4_window7_224"), embedding_first=False),
    "timm_levit": Family(lambda: timm_model("levit_128s"), image_size=64, embedding_first=False),
}


def pixels(image_size: int | tuple[int, int] = 32, batch: int = BATCH) -> torch.Tensor:
    """Seeded random input images (B, 3, H, W)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))
