"""Model cards for distilled students.

``Trainer.create_model_card(finetuned_from=teacher)`` would record the teacher as the student's
``base_model``, which is wrong: the student's weights do not derive from the teacher's. The card
is written with ``huggingface_hub.ModelCard`` instead, tagged ``knowledge-distillation``, with the
teacher named as teacher in the text. Uploads go through ``Trainer.push_to_hub`` (and so through
``transformers``' shared ``HfApi``), which calls ``DistillationTrainer.create_model_card``.
"""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

CARD_TAGS = ["knowledge-distillation", "image-classification", "hf_rcka"]

_TEMPLATE = """---
{card_data}
---

# {model_name}

{summary}

## Distillation

- Teacher: {teacher}
- Student architecture: `{architecture}` ({num_parameters:,} parameters, {num_labels} classes)
- Losses (weight): {losses}
- Trained with hf_rcka's `DistillationTrainer`; the full recipe is in `distill_config.yaml` next to
  this card.

## Evaluation

{results}

## Usage

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModelForImageClassification.from_pretrained("{repo}")
logits = model(**processor(images, return_tensors="pt")).logits
```
"""


_TIMING_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")


def _results_table(metrics: dict[str, float]) -> str:
    metrics = {k: v for k, v in metrics.items() if not k.endswith(_TIMING_SUFFIXES)}
    if not metrics:
        return "No evaluation was run."
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items()))
    return "| metric | value |\n|---|---|\n" + rows


def _hub_dataset(dataset: str | None) -> list[str] | None:
    """Only real Hub dataset ids go into the metadata (not image folders or builtin:digits)."""
    if not dataset or ":" in dataset or os.path.exists(dataset):
        return None
    return [dataset]


def write_model_card(
    output_dir: str,
    model_name: str,
    student: Any,
    teacher_name: str | None,
    losses: dict[str, float],
    dataset: str | None = None,
    metrics: dict[str, float] | None = None,
) -> ModelCard:
    """Write ``output_dir/README.md`` for a distilled (or, without teacher, supervised) student."""
    metrics = metrics or {}
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=CARD_TAGS if teacher_name else ["image-classification", "hf_rcka"],
        datasets=_hub_dataset(dataset),
        metrics=["accuracy"],
    )
    if teacher_name:
        summary = f"This model was distilled from the teacher `{teacher_name}`" + (f" on `{dataset}`." if dataset else ".")
    else:
        summary = "This model was trained without a teacher (supervised baseline)" + (f" on `{dataset}`." if dataset else ".")
    card = ModelCard(
        _TEMPLATE.format(
            card_data=data.to_yaml(),
            model_name=model_name,
            summary=summary,
            teacher=f"`{teacher_name}`" if teacher_name else "none (supervised training)",
            architecture=type(student).__name__,
            num_parameters=sum(p.numel() for p in student.parameters()),
            num_labels=student.config.num_labels,
            losses=", ".join(f"`{name}` ({weight:g})" for name, weight in losses.items()),
            results=_results_table(metrics),
            repo=model_name,
        )
    )
    os.makedirs(output_dir, exist_ok=True)
    card.save(os.path.join(output_dir, "README.md"))
    return card
