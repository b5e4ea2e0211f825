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
import re

from torch import nn

# transformers' ViT-family embeddings (ViT, DeiT, BEiT, DINOv2...): tokens and position embedding
HF_TOKEN_PARAMETERS = frozenset({"cls_token", "distillation_token", "mask_token", "position_embeddings",
                                 "register_tokens"})

# Norms over each sample's features (instance norms, timm's RmsNorm, SimpleNorm and LayerNorm2d, transformers'
# *LayerNorm / *RMSNorm classes): their weights are spared, as nn.LayerNorm's are. Matched by class
# name where the class does not derive from torch's.
_SAMPLE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.instancenorm._InstanceNorm)
_SAMPLE_NORM_NAMES = re.compile(r"(layer|rms|group|simple)_?norm", re.IGNORECASE)


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


def norm_weights(model: nn.Module) -> tuple[set[str], set[str]]:
    """Full names of the weights of ``model``'s per-sample norms (LayerNorm, RMSNorm, GroupNorm) and
    of its batch norms.

    Trainer tells norms apart by name (``norm``, ``layernorm`` or ``rmsnorm`` in the name, besides
    ``nn.LayerNorm`` itself), so a timm ViT built with RMSNorm decayed its blocks' ``norm1`` and
    spared its final ``norm``, and transformers' EfficientNet spared the BatchNorms it names
    ``*_norm``: by type, the weights go where the rule says they go.
    """
    per_sample, batch = set(), set()
    for prefix, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        name = f"{prefix}.weight" if prefix else "weight"
        if isinstance(module, _SAMPLE_NORMS) or _SAMPLE_NORM_NAMES.search(type(module).__name__):
            per_sample.add(name)
        elif isinstance(module, nn.modules.batchnorm._NormBase):  # batch norms (instance norms are per sample)
            batch.add(name)
    return per_sample, batch
