"""The parameters a model itself exempts from weight decay, on top of Trainer's biases and norms.

timm's optimizer factory, which DeiT's training script uses, skips what a model names in its
``no_weight_decay()`` (ViT and DeiT: position embedding, class and distillation tokens; Swin:
relative position bias tables; LeViT: attention biases) besides biases and norm weights.
transformers' Trainer skips only biases and norms, so a DeiT recipe would otherwise shrink its
position embedding and tokens towards zero for 300 epochs at weight decay 0.05. transformers' own
ViT family has no such method; its embeddings hold the same parameters under the names below.
"""

from __future__ import annotations

import fnmatch

from torch import nn

# transformers' ViT-family embeddings (ViT, DeiT, BEiT, DINOv2...): tokens and position embedding
HF_TOKEN_PARAMETERS = frozenset({"cls_token", "distillation_token", "mask_token", "position_embeddings"})


def model_no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of ``model``'s parameters that any of its modules exempts from weight decay.

    Each module's ``no_weight_decay()`` names (or fnmatch patterns, as timm allows) are relative to
    that module, so a student wrapped by transformers or by the distillation model is handled.
    """
    names = [name for name, _ in model.named_parameters()]
    exempt = {name for name in names if name.rsplit(".", 1)[-1] in HF_TOKEN_PARAMETERS}
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if not callable(declared):
            continue
        patterns = [f"{prefix}.{pattern}" if prefix else pattern for pattern in declared()]
        exempt.update(name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns))
    return exempt
