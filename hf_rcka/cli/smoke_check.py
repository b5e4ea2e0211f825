"""Check what a smoke test left in its output folder, as a user of the model would find it.

The folder must hold a plain transformers model that ``AutoModelForImageClassification`` and
``AutoImageProcessor`` load without hf_rcka, a model card, the resolved recipe and the metrics;
the reloaded model must classify the validation images into the dataset's classes. A run that
trained for fewer steps than asked (e.g. a sampler that yields nothing on a small dataset) fails
too: it would otherwise pass while training nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..run_record import RECIPE_RECORD

CARD_TAG = "knowledge-distillation"
CARD_LIBRARY = "transformers"


class SmokeTestFailure(RuntimeError):
    """The smoke run finished, but its output is not what a real run must produce."""


def check_output(
    output_dir: str | Path, data: Any, steps: int, *, do_train: bool, do_eval: bool, has_teacher: bool
) -> list[str]:
    """Check ``output_dir`` after a smoke run; return report lines.

    Args:
        output_dir: the smoke run's ``output_dir``.
        data: the run's ``SyntheticData`` (validation images, class names).
        steps: optimiser steps the run was asked for.
        do_train, do_eval: what the recipe ran (an eval-only run saves no model).
        has_teacher: a distilled student's card carries the knowledge-distillation tag.

    Raises:
        SmokeTestFailure: a file is missing, fewer steps ran, or the reloaded model is unusable.
    """
    out = Path(output_dir)
    _require(out, [RECIPE_RECORD, "README.md"] + (["all_results.json"] if do_eval else []))
    _check_card(out / "README.md", has_teacher)
    lines = []
    if do_train:
        lines.append(_training_line(out, steps))
    if do_eval:
        results = json.loads((out / "all_results.json").read_text(encoding="utf-8"))
        if "eval_accuracy" not in results:
            raise SmokeTestFailure(f"{out / 'all_results.json'} has no eval_accuracy: {sorted(results)}")
        lines.append(f"eval_accuracy {results['eval_accuracy']:.3f} on {data.num_eval} images (random weights)")
    if do_train:
        lines.append(_reload_line(out, data))
    lines.append(f"model card {out / 'README.md'}, recipe as run {out / 'distill_config.yaml'}")
    return lines


def _require(out: Path, names: list[str]) -> None:
    missing = [name for name in names if not (out / name).is_file()]
    if missing:
        raise SmokeTestFailure(f"the smoke run left no {', '.join(missing)} in {out}")


def _check_card(path: Path, has_teacher: bool) -> None:
    from huggingface_hub import ModelCard

    data = ModelCard.load(path).data
    if data.library_name != CARD_LIBRARY or (has_teacher and CARD_TAG not in (data.tags or [])):
        raise SmokeTestFailure(
            f"{path}: card metadata library_name={data.library_name!r}, tags={data.tags}; expected "
            f"{CARD_LIBRARY!r}" + (f" and the {CARD_TAG!r} tag" if has_teacher else "")
        )


def _training_line(out: Path, steps: int) -> str:
    _require(out, ["trainer_state.json"])
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    if state.get("global_step") != steps:
        raise SmokeTestFailure(
            f"the smoke run trained {state.get('global_step')} optimiser steps, not {steps}: does the train "
            "dataloader (sampler, drop_last, gradient accumulation) yield batches on a small dataset?"
        )
    losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
    if not losses or not all(torch.isfinite(torch.tensor(losses))):
        raise SmokeTestFailure(f"training losses are missing or not finite: {losses}")
    return f"trained {steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}"


def _reload_line(out: Path, data: Any) -> str:
    """Load the folder with plain transformers and classify the validation JPEGs."""
    import datasets
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    _require(out, ["config.json", "model.safetensors"])
    model = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    processor = AutoImageProcessor.from_pretrained(str(out))
    validation = datasets.Dataset.from_parquet(str(data.folder / "validation.parquet"))
    images = [image.convert("RGB") for image in validation[data.image_column]]
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits
    expected = (len(images), len(data.label_names))
    if tuple(logits.shape) != expected or not torch.isfinite(logits).all():
        raise SmokeTestFailure(f"the reloaded model gives logits {tuple(logits.shape)} (expected {expected}, finite)")
    return (
        f"saved {out}: reloads with AutoModelForImageClassification ({type(model).__name__}) and "
        f"AutoImageProcessor ({type(processor).__name__}); logits {tuple(logits.shape)} on the validation JPEGs"
    )
