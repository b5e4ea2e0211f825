"""Hidden states of Hugging Face and timm (TimmWrapper) models in one uniform description.

Every family hands out ``output_hidden_states`` differently:

* HF ViT / DeiT / Dinov2: tokens (B, N, D) with 1 CLS (DeiT: CLS + distillation, Dinov2 with
  registers: CLS + registers) prefix tokens; index 0 is the patch-embedding output and the last
  entry comes *before* the final LayerNorm.
* HF Swin, Swinv2, Donut-Swin: tokens without prefix; their ``reshaped_hidden_states`` hold the
  same tensors as (B, C, H, W) maps, which is what :func:`hidden_states_of` returns. Index 0 is the
  patch embedding; every later entry is a stage's end, *before* its patch merging (as
  :func:`forward_with_hidden_states` asks for them).
* HF Hiera: its token ``hidden_states`` are in an unrolled (mask-unit) order, not row-major, so
  they cannot be laid out on a grid; its ``reshaped_hidden_states`` are the re-rolled maps, but
  channels-last (B, H, W, C), and :func:`hidden_states_of` returns them permuted to (B, C, H, W).
* HF FocalNet: maps, index 0 the patch embedding, then each stage's end (before its patch merging,
  see ``_focalnet_stage_ends``).
* HF LeViT: tokens without prefix; index 0 the patch embedding, then each stage's end (see
  ``_levit_stage_ends``: transformers' own states are each stage after the next one's subsampling).
* HF CNNs (ResNet, RegNet, ConvNeXt, EfficientNet): maps, index 0 the stem. MobileNetV2 and
  MobileViT: maps of every layer / stage, with no stem entry.
* TimmWrapper: ``forward_intermediates`` maps (NCHW, prefix tokens removed, no embedding entry for
  ViTs), one per ``feature_info`` entry; for many CNNs the first one is the stem.

:func:`describe_hidden_states` probes a model once and returns one :class:`FeatureSpec` per
hidden state, so adapters, layer pairing and the trainer never need to know the family.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .layout import FeatureSpec, fmap_to_tokens, infer_grid, tokens_to_fmap

# Modules whose output is the embedding / stem (no block has run yet). ``pre_layrnorm``: CLIP's
# LayerNorm between the embeddings and the first block, whose output is its hidden state 0.
_EMBEDDING_MODULE = re.compile(
    r"(^|\.)(embeddings|patch_embeddings|embedder|embed|patch_embed|conv_stem|stem|pre_layrnorm)$"
)
# Output classes whose ``reshaped_hidden_states`` are documented channels-last (B, H, W, C); used
# only when the widths cannot tell (every map as tall as it is wide and as wide as it is deep).
_CHANNELS_LAST_RESHAPED = re.compile(r"^Hiera")
_TIMM_STEM_FEATURE = re.compile(r"^(stem|act1|bn1|conv1|conv_stem|patch_embed)(\.|$)")
_CLASSIFIER_NAMES = ("classifier", "cls_classifier", "head", "fc")
# transformers model types whose encoder hands out each stage's end (before its patch merging) on request
_STAGE_END_ENCODERS = ("swin", "swinv2", "donut-swin")


def forward_with_hidden_states(model: nn.Module, pixel_values: Tensor) -> Any:
    """``model(pixel_values=..., output_hidden_states=True)``, with each stage's end handed out.

    transformers' Swin hands out each stage after the patch merging that starts the next: state 1
    is stage 1 merged down to stride 8, and the auto pairs came out one stage too shallow (Swin-T's
    6-block stage 3 never paired, where timm's Swin pairs stage by stage).
    ``output_hidden_states_before_downsampling`` gives the stage ends, as timm's stages are; it is set
    on the encoder's call, as Swinv2's and Donut-Swin's models do not pass it on (Donut-Swin, a
    copy of Swin, handed out merged states). FocalNet's own path for it fails in transformers: its
    stage ends are read where its patch merging takes them. Every full forward for hidden states goes through here,
    so that probing, capture and the CKA report index the same states.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "levit":
        return _levit_stage_ends(model, pixel_values)
    if model_type == "focalnet":
        return _focalnet_stage_ends(model, pixel_values)
    base = getattr(model, "base_model", None) if model_type in _STAGE_END_ENCODERS else None
    encoder = getattr(base, "encoder", None)
    if encoder is None:
        return model(pixel_values=pixel_values, output_hidden_states=True)

    def stage_ends(_module, args, kwargs):
        return args, {**kwargs, "output_hidden_states_before_downsampling": True}

    handle = encoder.register_forward_pre_hook(stage_ends, with_kwargs=True)
    try:
        return model(pixel_values=pixel_values, output_hidden_states=True)
    finally:
        handle.remove()


def _levit_stage_ends(model: nn.Module, pixel_values: Tensor) -> Any:
    """transformers' LeViT ends each stage but the last with the next one's subsampling attention,
    and hands out the stage outputs after it: its stride-16 stage (4 blocks in LeViT-128S) never
    appeared, and each state was labelled a stage shallower than its grid. The subsampling's input
    is the stage's end, as timm's LeViT hands it out: the states are the embedding, each stage's
    end, and the last stage's."""
    stages = model.base_model.encoder.stages
    ends: dict[int, Tensor] = {}
    handles = []
    for i, stage in enumerate(stages):
        for module in stage.modules():
            if type(module).__name__ == "LevitAttentionSubsample":
                handles.append(module.register_forward_pre_hook(lambda _m, args, i=i: ends.__setitem__(i, args[0])))
    try:
        outputs = model(pixel_values=pixel_values, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    # a stage that does not subsample (its down_ops "none") ends where transformers' next state starts
    states = outputs.hidden_states
    outputs.hidden_states = (states[0], *(ends.get(i, states[i + 1]) for i in range(len(stages))))
    return outputs


def _focalnet_stage_ends(model: nn.Module, pixel_values: Tensor) -> Any:
    """transformers' FocalNet hands out each stage after the patch merging that starts the next (its
    own ``output_hidden_states_before_downsampling`` path fails), as Swin did: state 1 was stage 1
    merged to stride 8, the auto pairs came out a stage too shallow, and FocalNet-T's 6-block stage 3,
    merged to the last stage's grid, never paired. Each stage returns its end before merging, read
    as a (B, C, H, W) map by ``_StageEnd`` around it: the states are the embedding, each stage's end,
    and the last stage's."""
    ends: dict[int, Tensor] = {}
    stages = model.base_model.encoder.stages
    originals = list(stages)
    for i, stage in enumerate(originals):
        if stage.downsample is not None:
            stages[i] = _StageEnd(stage, i, ends)
    try:
        outputs = model(pixel_values=pixel_values, output_hidden_states=True)
    finally:
        for i, stage in enumerate(originals):
            stages[i] = stage
    maps, tokens = outputs.reshaped_hidden_states, outputs.hidden_states
    outputs.reshaped_hidden_states = (maps[0], *(ends.get(i, maps[i + 1]) for i in range(len(maps) - 1)))
    outputs.hidden_states = (tokens[0], *(fmap_to_tokens(ends[i]) if i in ends else tokens[i + 1]
                                          for i in range(len(tokens) - 1)))
    return outputs


class _StageEnd(nn.Module):
    """A FocalNet stage whose end (its output before patch merging) is kept in ``ends``, read from
    what the stage returns, outside its own activation checkpoint: a hook inside the stage saw a
    reentrant checkpoint's forward, which runs without gradients, and the feature losses on those
    states trained nothing."""

    def __init__(self, stage: nn.Module, index: int, ends: dict[int, Tensor]) -> None:
        super().__init__()
        self.stage, self.index, self.ends = stage, index, ends

    def forward(self, hidden_states: Tensor, input_dimensions: tuple[int, int], *args: Any, **kwargs: Any) -> Any:
        outputs = self.stage(hidden_states, input_dimensions, *args, **kwargs)
        self.ends[self.index] = tokens_to_fmap(outputs[1], tuple(input_dimensions))  # before patch merging
        return outputs


def hidden_states_of(outputs: Any) -> tuple[Tensor, ...]:
    """The hidden states of a forward output made with ``output_hidden_states=True``.

    Prefers ``reshaped_hidden_states`` (Swin, Hiera and relatives): they are maps, which need no
    grid bookkeeping, and Hiera's token states are not even in row-major order. Channels-last
    ones (Hiera's (B, H, W, C)) are returned as permuted (B, C, H, W) views.

    Raises:
        ValueError: if the output carries no hidden states.
    """
    tokens = getattr(outputs, "hidden_states", None)
    reshaped = getattr(outputs, "reshaped_hidden_states", None)
    if reshaped is not None:
        if _channels_last(reshaped, tokens, type(outputs).__name__):
            return tuple(state.permute(0, 3, 1, 2) for state in reshaped)
        return tuple(reshaped)
    if tokens is None:
        raise ValueError(
            f"{type(outputs).__name__} carries no hidden states although the model was called with "
            "output_hidden_states=True: the model's forward must return them (hidden_states, as transformers "
            "models do), or use losses that read logits only"
        )
    return tuple(tokens)


def _channels_last(reshaped: Any, tokens: Any, output_name: str) -> bool:
    """Whether reshaped states are (B, H, W, C) rather than (B, C, H, W).

    Each token state (B, N, C) (or Dinat's (B, H, W, C)) carries the channel width C of its
    reshaped state, so the axis that holds C for every state tells the layout. When both axes fit
    every state, the output class decides (transformers documents Hiera's as channels-last).
    """
    if any(state.dim() != 4 for state in reshaped):
        return False
    if tokens is None or len(tokens) != len(reshaped):
        return bool(_CHANNELS_LAST_RESHAPED.match(output_name))
    widths = [t.shape[-1] for t in tokens]
    first = all(state.shape[1] == width for state, width in zip(reshaped, widths))
    last = all(state.shape[-1] == width for state, width in zip(reshaped, widths))
    if first != last:
        return last
    return bool(_CHANNELS_LAST_RESHAPED.match(output_name))


@dataclass
class Probe:
    """One probe forward of a model: what :func:`describe_hidden_states` and the capture's choice
    of how to take the hidden states (``features.capture``) read of it, so that one forward serves
    both (each ran its own forward of the same input before, and a large teacher's forwards were
    most of a run's start-up on a CPU).

    Attributes:
        pixels: the input, on the model's device and in its dtype.
        outputs: the model's output with every hidden state (:func:`forward_with_hidden_states`).
        states: ``hidden_states_of(outputs)``.
        embedding_outputs: every tensor the embedding / stem modules returned, kept alive so that
            no later state can reuse their memory (see :func:`_embedding_flags`).
        modules: with ``every_module``, each submodule's first output tensor as it returned it,
            in the order the calls finished, as ``(name, module, tensor, tensor._version)``
            (kept alive too: no tensor can take another's address); else None.
        calls: with ``every_module``, how often each submodule ran.
    """

    pixels: Tensor
    outputs: Any
    states: tuple[Tensor, ...]
    embedding_outputs: list[Tensor]
    modules: list[tuple[str, nn.Module, Tensor, int]] | None = None
    calls: dict[str, int] | None = None


def probe_forward(model: nn.Module, pixel_values: Tensor, every_module: bool = False) -> Probe:
    """One forward with every hidden state, in eval mode under ``no_grad`` (every submodule's own
    mode restored afterwards), recording the embedding modules' outputs and, with
    ``every_module``, every submodule's output (which module makes which state).

    Raises:
        ValueError: naming the model, if it cannot return hidden states.
    """
    pixel_values = _like_parameters(pixel_values, model)
    embedding_outputs: list[Tensor] = []
    modules: list[tuple[str, nn.Module, Tensor, int]] | None = [] if every_module else None
    calls: dict[str, int] | None = {} if every_module else None
    hooks = _hook_outputs(model, embedding_outputs, modules, calls)
    try:
        with eval_no_grad(model):
            outputs = forward_with_hidden_states(model, pixel_values)
    except ValueError as error:
        if "output_hidden_states" in str(error):
            raise ValueError(f"{_model_name(model)} cannot return hidden states: {error}") from error
        raise
    finally:
        for hook in hooks:
            hook.remove()
    return Probe(pixel_values, outputs, hidden_states_of(outputs), embedding_outputs, modules, calls)


def describe_hidden_states(model: nn.Module, pixel_values: Tensor | Probe) -> list[FeatureSpec]:
    """Describe every hidden state, in :func:`hidden_states_of` order, from one probe forward
    (:func:`probe_forward`, run here unless a :class:`Probe` of the model is given).

    The probe runs in eval mode under ``no_grad`` (so BatchNorm statistics are not touched and a
    batch of one works) and every submodule's train/eval mode is restored afterwards.

    Args:
        model: an HF image model or ``TimmWrapperForImageClassification``.
        pixel_values: (B, 3, H, W) input of the size used in training (strides are relative to
            it), or a probe of the model made on such an input.
    """
    probe = pixel_values if isinstance(pixel_values, Probe) else probe_forward(model, pixel_values)
    states = probe.states
    image_size = (int(probe.pixels.shape[-2]), int(probe.pixels.shape[-1]))
    embedding_flags = _embedding_flags(model, probe.outputs, states, probe.embedding_outputs)
    patch_size = _patch_size_of(model)
    branches = _timm_branches(model, len(states))
    return [
        _spec_of(state, image_size, patch_size, flag, branch)
        for state, flag, branch in zip(states, embedding_flags, branches)
    ]


def count_hidden_states(model: nn.Module, pixel_values: Tensor) -> int:
    """How many hidden states :func:`describe_hidden_states` describes, from the same forward.

    Runs on the meta device too (a model built without weights, a meta ``pixel_values``): shapes
    alone decide the count, so a recipe's layer indices can be checked before any weights load.
    """
    with eval_no_grad(model):
        return len(hidden_states_of(forward_with_hidden_states(model, pixel_values)))


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for a probe forward, every submodule's own mode restored afterwards.

    Eval, so BatchNorm statistics are not touched and a batch of one works; per module, because
    the modes may be mixed (a frozen BatchNorm in a training model).
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def classifier_of(model: nn.Module) -> nn.Module:
    """The module whose input is the pooled penultimate feature (B, d).

    A forward pre-hook on it gives the pooled features for pooled-feature losses. For Sequential
    heads (HF ResNet, RegNet: Flatten + Linear) it is the first Linear, whose input is flat. A
    ``classifier`` that is a ModuleList (HGNetV2, TextNet: the pooling their forward runs module by
    module) is never called, so a hook on it saw nothing; their ``fc`` is the head.

    Raises:
        ValueError: if the model has no recognisable classification head.
    """
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "get_classifier"):
        head = timm_model.get_classifier()
        head = head[0] if isinstance(head, (tuple, list)) else head  # distilled models: (head, head_dist)
        return _check_head(head, model)
    for name in _CLASSIFIER_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, (nn.ModuleList, nn.ModuleDict)):  # never called: HGNetV2's and TextNet's
            continue  # ``classifier`` lists the pooling and flattening their forward runs before ``fc``
        if isinstance(head, nn.Module):
            if isinstance(head, nn.Sequential):
                head = next((m for m in head.modules() if isinstance(m, nn.Linear)), head)
            return _check_head(head, model)
    raise ValueError(
        f"cannot find the classification head of {_model_name(model)}, which losses on the pooled feature "
        f"(srd, kernel_transfer) hook: none of the attributes {', '.join(_CLASSIFIER_NAMES)} is a module. Name the "
        "final linear layer one of them, or use losses that read logits or hidden states"
    )


def pooled_dim(model: nn.Module) -> int:
    """Width d of the pooled penultimate feature (the classifier's input)."""
    head = classifier_of(model)
    for module in head.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"cannot tell the input width of {type(head).__name__}, the head of {_model_name(model)}")


# ------------------------------------------------------------------------------ probe helpers


def _spec_of(state: Tensor, image_size: tuple[int, int], patch_size: tuple[int, int] | None,
             is_embedding: bool, branch: int = 0) -> FeatureSpec:
    if state.dim() == 4:
        grid, channels, prefix = tuple(state.shape[-2:]), state.shape[1], 0
        layout = "nchw"
    elif state.dim() == 3:
        grid, prefix = _token_grid(state.shape[1], image_size, patch_size)
        channels, layout = state.shape[2], "nlc"
    else:
        raise ValueError(f"cannot describe a hidden state of shape {tuple(state.shape)}")
    return FeatureSpec(layout, int(channels), grid, prefix, image_size[0] / grid[0], is_embedding, branch)


def _token_grid(num_tokens: int, image_size: tuple[int, int],
                patch_size: tuple[int, int] | None) -> tuple[tuple[int, int], int]:
    """(grid, num_prefix_tokens) of NLC tokens: from the patch size, else the fewest prefix tokens
    that leave a grid, first one near the stride their count implies (a count that still holds
    prefix tokens otherwise passed for a rounded grid: 14 tokens of a 16 x 40 image read as 2 x 7,
    not 2 x 6 after 2 prefix tokens)."""
    if patch_size is not None:
        grid = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        if 0 <= num_tokens - grid[0] * grid[1]:
            return grid, num_tokens - grid[0] * grid[1]
    for near in (True, False):
        for prefix in range(num_tokens):
            try:
                return infer_grid(num_tokens - prefix, image_size, near_count_stride=near), prefix
            except ValueError:
                continue
    raise ValueError(f"cannot lay out {num_tokens} tokens on a grid for a {image_size} input")


def _patch_size_of(model: nn.Module) -> tuple[int, int] | None:
    """The patch size of an HF model's config (ViT-like models), else None."""
    size = getattr(getattr(model, "config", None), "patch_size", None)
    if getattr(model, "timm_model", None) is not None or size is None:
        return None
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def first_tensor(output: Any) -> Tensor | None:
    """A module's output as a forward hook sees it: the tensor, or the first of a tuple or list."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def _hook_outputs(model: nn.Module, embedding_outputs: list[Tensor],
                  modules: list[tuple[str, nn.Module, Tensor, int]] | None, calls: dict[str, int] | None) -> list[Any]:
    """Forward hooks that collect the outputs of embedding / stem modules, to recognise them
    among the hidden states (a state sharing storage with one of them is the embedding output
    itself or a view of it: Swin's reshaped states), and, where ``modules`` is a list, every
    submodule's first output and ``calls`` per submodule (see :class:`Probe`)."""

    def record(name: str, embedding: bool):
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            items = output if isinstance(output, (tuple, list)) else (output,)
            if embedding:
                embedding_outputs.extend(item for item in items if isinstance(item, Tensor))
            if modules is not None:
                calls[name] = calls.get(name, 0) + 1
                first = first_tensor(output)
                if first is not None:
                    modules.append((name, module, first, first._version))
        return hook

    hooked = [(name, m, bool(_EMBEDDING_MODULE.search(name))) for name, m in model.named_modules() if name]
    return [m.register_forward_hook(record(name, embedding))
            for name, m, embedding in hooked if embedding or modules is not None]


def _embedding_flags(model: nn.Module, outputs: Any, states: tuple[Tensor, ...],
                     embedding_outputs: list[Tensor]) -> list[bool]:
    """Which hidden states are embedding / stem outputs.

    HF: a state sharing storage with an embedding module's output. Swin's reshaped states are
    contiguous copies, so its token ``hidden_states`` (same order, same length) are checked too;
    Hiera's are copies of unrolled copies, so a map is also compared by value with the embedding
    tokens. TimmWrapper: timm's ``feature_info`` names the module each intermediate comes from.
    On the meta device (a model built without weights) no tensor has storage or values, so only
    ``feature_info`` tells: every meta storage is one address, which flagged every state.
    """
    stems = _timm_stem_flags(model, len(states))
    if any(state.is_meta for state in states):
        return stems
    storages = {_storage(t) for t in embedding_outputs}
    raw = tuple(getattr(outputs, "hidden_states", None) or ())
    raw = raw if len(raw) == len(states) else states
    return [
        stems[i] or _storage(states[i]) in storages or _storage(raw[i]) in storages
        or _holds_embedding_tokens(states[i], embedding_outputs)
        for i in range(len(states))
    ]


def _holds_embedding_tokens(state: Tensor, embedding_outputs: list[Tensor]) -> bool:
    """Whether a (B, C, H, W) map is an embedding output's (B, H * W, C) tokens laid out as a map."""
    if state.dim() != 4:
        return False
    tokens = fmap_to_tokens(state)
    return any(t.shape == tokens.shape and t.dtype == tokens.dtype and torch.equal(t, tokens)
               for t in embedding_outputs)


def _timm_stem_flags(model: nn.Module, num_states: int) -> list[bool]:
    """For TimmWrapper models, which intermediates come from the stem (per timm's feature_info)."""
    info = getattr(getattr(model, "timm_model", None), "feature_info", None)
    names = [entry.get("module", "") for entry in info] if isinstance(info, list) else []
    if len(names) != num_states:
        return [False] * num_states
    return [bool(_TIMM_STEM_FEATURE.match(name)) for name in names]


def _timm_branches(model: nn.Module, num_states: int) -> list[int]:
    """For multi-branch timm models (CrossViT), the branch of each intermediate; else all 0.

    CrossViT's ``forward_intermediates`` lists every block of its small-patch branch, then every
    block of its large-patch branch: timm's ``feature_info`` names each block once per branch.
    HRNet also has ``num_branches``, but hands out one map per resolution, stride increasing, which
    pairs by stride like any CNN's stages; its module names do not repeat, so it stays branch 0.
    """
    timm_model = getattr(model, "timm_model", None)
    num_branches = int(getattr(timm_model, "num_branches", 1) or 1)
    info = getattr(timm_model, "feature_info", None)
    names = [entry.get("module", "") for entry in info] if isinstance(info, list) else []
    if num_branches < 2 or len(names) != num_states or len(set(names)) == len(names) or num_states % num_branches:
        return [0] * num_states
    per_branch = num_states // num_branches
    return [i // per_branch for i in range(num_states)]


def _storage(tensor: Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _like_parameters(pixel_values: Tensor, model: nn.Module) -> Tensor:
    """Move the probe input to the model's device and floating dtype (HF convs do not cast)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return pixel_values
    dtype = parameter.dtype if parameter.is_floating_point() else pixel_values.dtype
    return pixel_values.to(device=parameter.device, dtype=dtype)


def _check_head(head: nn.Module, model: nn.Module) -> nn.Module:
    if isinstance(head, nn.Identity):
        raise ValueError(f"{_model_name(model)} has no classification head (num_labels=0?)")
    return head


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    architecture = getattr(config, "architecture", None) or getattr(config, "model_type", None)
    return f"{type(model).__name__} ({architecture})" if architecture else type(model).__name__


__all__ = [
    "classifier_of",
    "count_hidden_states",
    "describe_hidden_states",
    "first_tensor",
    "Probe",
    "probe_forward",
    "hidden_states_of",
    "eval_no_grad",
    "pooled_dim",
]
