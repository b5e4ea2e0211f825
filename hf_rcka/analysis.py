"""Layer-by-layer linear CKA between two models: what did the student learn from the teacher?

Kornblith et al. (ICML 2019) compare two networks by linear CKA between the activations of every
pair of layers on the same images. Here the activations come from the same machinery that
training uses (``features.hidden_states_of`` / ``describe_hidden_states``, ``layout.to_fmap``), so
ViT tokens (prefix tokens dropped, laid out on their patch grid) and CNN maps are handled alike,
and the similarity is ``functional.linear_cka`` in float32, the quantity ``feature_cka`` trains,
with one difference: training takes it over each batch's images, the report over all of them at
once (the biased estimator, centred Grams of the N images; batch values differ a little). Each
hidden state is flattened to (images, C * h * w). A teacher-vs-student heatmap before
and after distillation shows which layers moved towards the teacher.

A ViT's token rows are its patch tokens: the class token its head reads is dropped with the other
prefix tokens, so the last row or column is each model's ``logits``, the output the classifier
gives (and the quantity the logit losses align). A layer whose activation is the same for every
image has no CKA (0 / 0); it is NaN in the matrix and ``n/a`` in the table, not 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from . import functional
from .features.hidden_states import describe_hidden_states, forward_with_hidden_states, hidden_states_of
from .data.images import decode_image
from .errors import ModelError
from .file_writes import replacing_path
from .features.layout import FeatureSpec, to_fmap


@dataclass
class LayerCKA:
    """CKA of every (row layer, column layer) pair; rows are model A's hidden states, columns B's.

    Attributes:
        matrix: (layers of A, layers of B) float32 values in [0, 1], NaN where a layer is constant
            over the images (CKA undefined).
        row_names / column_names: one label per hidden state (index, kind, shape).
        row_model / column_model: how to name the two models in tables and titles.
        num_images: how many images the activations were taken on.
    """

    matrix: Tensor
    row_names: list[str]
    column_names: list[str]
    row_model: str
    column_model: str
    num_images: int

    def to_markdown(self) -> str:
        """A markdown table: one row per layer of A, one column per layer of B (a "|" in a model's
        or layer's name escaped, or it would end its cell)."""
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        header = (f"| {cell(self.row_model)} \\ {cell(self.column_model)} | "
                  + " | ".join(map(cell, self.column_names)) + " |")
        lines = [header, "|---" * (len(self.column_names) + 1) + "|"]
        for name, row in zip(self.row_names, self.matrix.tolist()):
            lines.append(f"| {cell(name)} | " + " | ".join("n/a" if math.isnan(v) else f"{v:.2f}" for v in row) + " |")
        return "\n".join(lines) + "\n"


def layer_name(index: int, spec: FeatureSpec) -> str:
    """``"3: tokens 4x4x64"`` / ``"2: map 2x2x32"``: the hidden-state index and its shape."""
    kind = {"nlc": "tokens", "nchw": "map", "pooled": "pooled"}[spec.layout]
    stem = " (embedding)" if spec.is_embedding else ""
    return f"{index}: {kind} {spec.grid[0]}x{spec.grid[1]}x{spec.channels}{stem}"


LOGITS_NAME = "logits"


@torch.no_grad()
def layer_activations(model: nn.Module, pixel_values: Tensor, batch_size: int = 128) -> tuple[list[Tensor], list[str]]:
    """Every hidden state of ``model`` on ``pixel_values``, then its logits, as float32 (images, features)
    matrices, with one name per matrix (see :func:`layer_name`).

    Runs in eval mode (restored afterwards) in batches, so only one batch of activations at a
    time is alive besides the flattened results.
    """
    specs = describe_hidden_states(model, pixel_values[:2])
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    chunks: list[list[Tensor]] = [[] for _ in range(len(specs) + 1)]
    try:
        for start in range(0, len(pixel_values), batch_size):
            batch = pixel_values[start : start + batch_size].to(parameter.device, parameter.dtype)
            outputs = forward_with_hidden_states(model, batch)
            for chunk, state, spec in zip(chunks, hidden_states_of(outputs), specs):
                chunk.append(to_fmap(state, spec).flatten(1).float().cpu())
            chunks[-1].append(outputs.logits.float().cpu())
    finally:
        model.train(was_training)
    activations = [torch.cat(chunk) for chunk in chunks]
    names = [layer_name(i, s) for i, s in enumerate(specs)]
    names.append(f"{len(specs)}: {LOGITS_NAME} ({activations[-1].shape[1]} classes)")
    return activations, names


def _check_finite(activations: Sequence[Tensor], names: Sequence[str], model: str) -> None:
    """A NaN or inf activation has no CKA either, and it read ``n/a``, which says the layer is the
    same for every image: a diverged model's layers passed for constant ones."""
    for activation, name in zip(activations, names):
        if not bool(torch.isfinite(activation).all()):
            raise ModelError(f"model {model!r}: hidden state {name!r} holds NaN or inf on these images, so its CKA is "
                             "undefined (not a constant layer's n/a): check that the model's weights are finite "
                             "(a run that diverged?)")


def _is_constant(activation: Tensor) -> bool:
    """The same (to float32 rounding) for every image: centring leaves nothing, so CKA is 0 / 0."""
    spread = (activation - activation.mean(0)).abs().amax()
    return bool(spread <= 1e-6 * activation.abs().amax().clamp_min(1e-30))


def layer_cka(
    row_model: nn.Module,
    row_pixels: Tensor,
    column_model: nn.Module,
    column_pixels: Tensor,
    names: tuple[str, str] = ("A", "B"),
    batch_size: int = 128,
) -> LayerCKA:
    """Linear CKA between every hidden state (and the logits) of two models on the same images.

    Args:
        row_model / column_model: HF or timm (TimmWrapper) image models.
        row_pixels / column_pixels: the same images, each prepared the way its model expects
            (own normalisation and resolution), (N, 3, H, W).
        names: how the table and plot call the two models.

    Raises:
        ValueError: if the two inputs do not hold the same number of images, or fewer than 3
            (CKA over fewer images is degenerate); ``ModelError`` (a ValueError) if an activation is
            NaN or inf.
    """
    if len(row_pixels) != len(column_pixels):
        raise ValueError(f"both models must see the same images: got {len(row_pixels)} and {len(column_pixels)}")
    if len(row_pixels) < 3:
        raise ValueError(f"layer CKA needs at least 3 images, got {len(row_pixels)}")
    rows, row_names = layer_activations(row_model, row_pixels, batch_size)
    columns, column_names = layer_activations(column_model, column_pixels, batch_size)
    _check_finite(rows, row_names, names[0])
    _check_finite(columns, column_names, names[1])
    return LayerCKA(
        matrix=cka_matrix(rows, columns),
        row_names=row_names,
        column_names=column_names,
        row_model=names[0],
        column_model=names[1],
        num_images=len(row_pixels),
    )


def cka_matrix(rows: Sequence[Tensor], columns: Sequence[Tensor]) -> Tensor:
    """Linear CKA of every (N, D) row activation with every column one; NaN where a side is the
    same for every image (0 / 0, whatever the epsilon gave).

    Each activation is centred over the images and scaled to a largest value of 1 first: CKA
    changes with neither, but its epsilon does not scale, and the states of a freshly initialised
    model (centred norms near 1e-11), or a small spread around a large shared value, read 0.00
    where their CKA was 0.9.
    """
    constant_rows, constant_columns = [_is_constant(r) for r in rows], [_is_constant(c) for c in columns]
    rows, columns = [_unit_spread(a) for a in rows], [_unit_spread(a) for a in columns]
    matrix = torch.tensor([[float(functional.linear_cka(r, c).clamp(0.0, 1.0)) for c in columns] for r in rows])
    matrix[torch.tensor(constant_rows)] = float("nan")
    matrix[:, torch.tensor(constant_columns)] = float("nan")
    return matrix


def _unit_spread(activation: Tensor) -> Tensor:
    centred = activation - activation.mean(0)
    return centred / centred.abs().amax().clamp_min(torch.finfo(centred.dtype).tiny)


def prepare_pixels(images: Sequence, transform: Callable) -> Tensor:
    """Stack ``transform(image)`` for PIL images into (N, 3, H, W), decoded as training decodes them
    (``decode_image``: turned upright by their EXIF orientation, then to RGB)."""
    return torch.stack([transform(decode_image(image)) for image in images])


def save_heatmaps(reports: Sequence[LayerCKA], path: str | Path, title: str | None = None) -> Path:
    """One heatmap per report, side by side, with a shared 0-1 colour scale (matplotlib, Agg);
    undefined values (constant layers) are grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = matplotlib.colormaps["magma"].with_extremes(bad="lightgrey")
    fig, axes = plt.subplots(1, len(reports), figsize=(4.8 * len(reports), 4.4), squeeze=False)
    image = None
    for n, (ax, report) in enumerate(zip(axes[0], reports)):
        image = ax.imshow(report.matrix.numpy(), vmin=0.0, vmax=1.0, cmap=cmap, origin="lower", aspect="auto")
        same_rows = n > 0 and report.row_names == reports[0].row_names  # label shared rows once, no overlap
        ax.set_yticks(range(len(report.row_names)), [] if same_rows else report.row_names, fontsize=6)
        ax.set_xticks(range(len(report.column_names)), report.column_names, fontsize=6, rotation=45, ha="right")
        ax.set_ylabel(report.row_model, fontsize=8)
        ax.set_xlabel(report.column_model, fontsize=8)
        ax.set_title(f"{report.row_model} vs {report.column_model}", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), label=f"linear CKA ({reports[0].num_images} images)")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing_path(path) as temporary:  # a full disk or a signal leaves the earlier picture whole
            fig.savefig(temporary, format=path.suffix[1:] or "png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
