"""Random class, distillation, position and register tokens for transformers models built from scratch.

transformers 5.x leaves some of these at exactly zero when it builds a model from a config: DeiT's
``_init_weights`` draws them from a truncated normal and then zeroes them (so a DeiT with a
distillation head starts with identical class and distillation tokens and no position signal),
BEiT, Data2Vec-vision and ViT-MSN leave their class token (ViT-MSN its position embeddings too)
at zero, and Dinov2WithRegisters its register tokens. DeiT, BEiT and timm draw the tokens from a
truncated normal of std 0.02 (transformers' own ViT uses ``initializer_range``, 0.02 by default),
DINOv2 and timm the registers from N(0, 1e-6), and a student trained from scratch should start
where the architecture's paper started.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

TOKEN_NAMES = ("cls_token", "distillation_token", "position_embeddings")
# Tokens drawn with their paper's tiny spread: DINOv2 and timm draw register tokens from N(0, 1e-6).
# transformers' Dinov2WithRegisters zeroes them, and zeroed registers are identical copies that
# receive identical gradients, so they stay one register however many the config asks for.
TINY_TOKEN_NAMES = ("register_tokens",)
TINY_STD = 1e-6


@torch.no_grad()
def draw_zeroed_tokens(model: PreTrainedModel) -> list[str]:
    """Draw every token parameter that construction left all zero; returns their names.

    Only for freshly built models: a loaded checkpoint's tokens are what it trained. A model built
    on the meta device (its architecture alone, ``loading.build_without_weights``) has no values to
    draw or to test for zero.
    """
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    drawn = []
    for name, param in model.named_parameters():
        if param.numel() == 0 or param.is_meta or param.any():
            continue
        if name.rsplit(".", 1)[-1] in TOKEN_NAMES:
            nn.init.trunc_normal_(param, mean=0.0, std=std)  # bounds +-2 (absolute), as DeiT and timm draw them
            drawn.append(name)
        elif name.rsplit(".", 1)[-1] in TINY_TOKEN_NAMES:
            nn.init.normal_(param, mean=0.0, std=TINY_STD)
            drawn.append(name)
    return drawn
