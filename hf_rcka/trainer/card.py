"""Model cards for distilled students.

``Trainer.create_model_card(finetuned_from=teacher)`` would record the teacher as the student's
``base_model``, which is wrong: the student's weights do not derive from the teacher's. The card
is written with ``huggingface_hub.ModelCard`` instead: ``base_model`` only when the *student*
started from a Hub checkpoint, ``model-index`` eval results through ``EvalResult`` (so the Hub
shows the accuracy in its widget and leaderboards), tagged ``knowledge-distillation``, with the
teacher named as teacher in the text together with its accuracy on the same images, the
student-alone baseline when the run knows it, and the layer-CKA picture when one was made. The
command line writes the card through ``DistillationTrainer.create_model_card`` once the run is
evaluated, and uploads the folder as written (``transformers``' shared ``HfApi``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from ..file_writes import write_text
from ..models.sources import cache_snapshot, cached_commit
from ..run_record import RECIPE_RECORD
from ..version import library_versions
from .card_facts import CardFacts, image_folder_name

CARD_TAGS = ["knowledge-distillation", "image-classification", "hf_rcka"]
DEFAULT_LICENSE = "apache-2.0"
CKA_IMAGE = "cka.png"
_CKA_HEADING = "## Layer-by-layer CKA"
# The CKA section sits between these comments, so a later report replaces it and nothing else: a
# user's own sections after it survive (Hub markdown does not render comments).
_CKA_START, _CKA_END = "<!-- hf_rcka:cka-start -->", "<!-- hf_rcka:cka-end -->"

PROCESSOR_FILE = "preprocessor_config.json"

_TEMPLATE = """---
{card_data}
---

# {model_name}

{summary}

## Distillation

- Teacher: {teacher}
- Student architecture: {architecture} ({num_parameters:,} parameters, {num_labels} classes)
- Student initialisation: {initialisation}
- Loss terms (weight): {losses}
{training}- Trained with hf_rcka's `DistillationTrainer`{recipe}.
{reproduction}
## Evaluation

{evaluation}

{results}

## Usage

{decoding}{processor_note}

```python
import numpy as np
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained({repo}{revision})
model = AutoModelForImageClassification.from_pretrained({repo}{revision})
# decoded as in training: turned upright by its EXIF orientation, 16-bit, 32-bit and float values
# scaled to 8 bits (Pillow's convert clips them to white or black), transparency shown over white
image = ImageOps.exif_transpose(Image.open("image.jpg"))
if image.mode.startswith("I") or image.mode == "F":
    raw, key = np.asarray(image), image.info.get("transparency")
    values = np.nan_to_num(raw.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = values.min(), values.max()
    if image.mode != "F" and 0 <= low and high <= 65535:  # 16-bit values
        values = values / 257
    elif image.mode == "F" and -0.01 <= low and high <= 1.01:  # floats in [0, 1]
        values = values * 255
    elif image.mode == "F" and -0.01 <= low and high <= 255.01:  # 8-bit values as floats
        pass
    elif high > low:  # any other range is stretched to 0..255
        values = (values - low) * (255 / (high - low))
    image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if isinstance(key, int) and not raw.dtype.kind == "f":  # a PNG colour key: those pixels are transparent
        image.putalpha(Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8)))
image = image.convert("RGBA")
image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
logits = model(**processor(images=image, return_tensors="pt")).logits
print(model.config.id2label[logits.argmax(-1).item()])
```
{cka}"""

_TIMING_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")


def _results_table(metrics: dict[str, float], relation_batches: dict[str, int]) -> str:
    metrics = {k: v for k, v in metrics.items() if not k.endswith(_TIMING_SUFFIXES)}
    if not metrics:
        return "No evaluation was run."
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items()))
    note = ""
    if any(k.endswith("_loss") and k != "eval_loss" for k in metrics):
        note = ("\n\nEach `eval_<term>_loss` is the term times its weight (the weights are listed above), and "
                "`eval_loss` is their sum.")
        if "eval_ce_loss" in metrics:
            note += " `eval_ce_loss` is plain cross-entropy, without label smoothing."
        note += _relation_note(metrics, relation_batches)
    return "| metric | value |\n|---|---|\n" + rows + note


def _relation_note(metrics: dict[str, float], relation_batches: dict[str, int]) -> str:
    """Which reported terms compare a batch's images with each other, and over how many images:
    their values change with the evaluation batch, so they compare only between equal batches."""
    by_batch: dict[int, list[str]] = {}
    for term, batch in relation_batches.items():
        if f"eval_{term}_loss" in metrics:
            by_batch.setdefault(batch, []).append(f"`eval_{term}_loss`")
    if not by_batch:
        return ""
    parts = [f"{', '.join(names)} over {batch} images at once" for batch, names in sorted(by_batch.items())]
    return (" Relational terms compare the images of an evaluation batch with each other, so their values "
            f"depend on its size: {'; '.join(parts)}.")


def _hub_dataset(dataset: str | None, facts: CardFacts) -> list[str] | None:
    """Only real Hub dataset ids go into the metadata (not image folders or builtin:digits).

    The Hub links every ``datasets:`` entry as a dataset id: an image-folder run's data is never
    one, whatever ``dataset`` says (a path that no longer exists, or a bare folder name, would
    pass for an id).
    """
    snapshot = cache_snapshot(dataset, "datasets") if dataset else None  # a folder of the Hugging Face cache
    if snapshot:
        return [snapshot[0]]
    if not dataset or facts.image_folder or ":" in dataset or os.path.exists(dataset):
        return None
    return [dataset]


def _trained_on(dataset: str | None, facts: CardFacts) -> str:
    """The end of the card's first sentence: the data, marked local when it is an image folder,
    and the part of it trained on when ``max_train_samples`` drew one."""
    notes = []
    if facts.image_folder:
        place, notes = f"the local image folder `{image_folder_name(facts.image_folder)}`", ["not a Hub dataset"]
    elif dataset and (snapshot := cache_snapshot(dataset, "datasets")):  # a folder of the Hugging Face cache
        place = f"`{snapshot[0]}` at revision `{snapshot[1]}`"
    elif dataset and os.path.isdir(dataset):
        place, notes = f"the local dataset folder `{image_folder_name(dataset)}`", ["not a Hub dataset"]
    else:
        place = f"`{dataset}`" if dataset else None
    if facts.train_subset:
        notes.append(facts.train_subset)
    return (f" on {place}" if place else "") + (f" ({'; '.join(notes)})" if notes else "") + "."


def _eval_results(facts: CardFacts, dataset: str | None, metrics: dict[str, float]) -> list[EvalResult] | None:
    """``model-index`` entries: top-1 (and top-5 when measured) on the evaluation split."""
    names = {"eval_accuracy": ("accuracy", "Top-1 accuracy"), "eval_top5_accuracy": ("accuracy", "Top-5 accuracy")}
    dataset_type = facts.dataset_type or dataset
    if not dataset_type:
        return None
    results = [
        EvalResult(
            task_type="image-classification", dataset_type=dataset_type,
            dataset_name=facts.dataset_label or dataset_type, dataset_split=facts.eval_split,
            dataset_config=facts.dataset_config,
            metric_type=kind, metric_name=label, metric_value=round(float(metrics[key]), 4),
        )
        for key, (kind, label) in names.items() if isinstance(metrics.get(key), (int, float))
    ]
    return results or None


def _measured_on(facts: CardFacts) -> str:
    """Which images the metrics count: the readable ones; the unreadable ones are named apart."""
    if not facts.eval_data:
        return "Measured on the run's evaluation split."
    if not facts.eval_images:
        return f"Measured on the images of {facts.eval_data}."
    unreadable = facts.unreadable_eval_images
    sentence = f"Measured on {facts.eval_images - unreadable:,} images of {facts.eval_data}."
    if unreadable:
        sentence += (f" {unreadable:,} more image file(s) of this set could not be read and are not counted "
                     "(the run lists them in a local `_skipped_images.tsv`, not uploaded: it names local paths).")
    return sentence


def _evaluation_text(facts: CardFacts, metrics: dict[str, float], distilled: bool) -> str:
    """Where the metrics come from, and the teacher and the student alone on the same images."""
    lines = [_measured_on(facts)]
    accuracy = metrics.get("eval_accuracy")
    rows = []
    if isinstance(accuracy, (int, float)):
        rows.append(("this student (distilled)" if distilled else "this model", accuracy, ""))
    if distilled and facts.teacher_accuracy is not None:
        rows.append(("teacher", facts.teacher_accuracy, facts.teacher_accuracy_note))
    if distilled and facts.teacher_own_accuracy is not None:
        rows.append(("teacher, its own preprocessing", facts.teacher_own_accuracy,
                     "same images, as the run that trained it evaluated it"))
    if facts.baseline_accuracy is not None:
        name = "the same student trained alone" if facts.baseline_comparable else "baseline run (not comparable)"
        rows.append((name, facts.baseline_accuracy, facts.baseline_note))
    if len(rows) > 1:
        lines += ["", "| model | top-1 | note |", "|---|---|---|"]
        for name, value, note in rows:
            cell = note.replace("|", "\\|")  # a folder name with a "|" (a baseline run's) would end its cell
            lines.append(f"| {name} | {100 * value:.1f}% | {cell} |")
        if isinstance(accuracy, (int, float)) and facts.baseline_accuracy is not None and facts.baseline_comparable:
            gain = 100 * (accuracy - facts.baseline_accuracy)
            lines += ["", f"Distillation changed top-1 by {gain:+.1f} points over training the student alone."]
    return "\n".join(lines)


def _initialisation(facts: CardFacts, teacher_name: str | None) -> str:
    """Where the student's weights started: a Hub checkpoint, a local one, or random."""
    if facts.base_model:
        same = " (the teacher's own checkpoint)" if facts.base_model == teacher_name else ""
        revision = f" at revision `{facts.base_revision}`" if facts.base_revision else ""
        return f"the Hub checkpoint `{facts.base_model}`{revision}{same}"
    if facts.local_checkpoint:
        return f"the local checkpoint `{facts.local_checkpoint}` (not on the Hub)"
    if facts.start_recorded:
        return "random (trained from scratch)"
    return "not recorded"


def _teacher_text(teacher_name: str) -> str:
    """The teacher by its Hub id (at the commit the run read, where the local cache says), or a
    local folder by its name (its full path says nothing to a reader)."""
    repo, commit = cache_snapshot(teacher_name) or (teacher_name, None)
    if repo == teacher_name and os.path.isdir(teacher_name):
        return f"`{os.path.basename(os.path.abspath(teacher_name))}` (a local checkpoint)"
    commit = commit or cached_commit(repo)
    return f"`{repo}` at revision `{commit}`" if commit else f"`{repo}`"


def _cka_section(output_dir: str) -> str:
    if not os.path.exists(os.path.join(output_dir, CKA_IMAGE)):
        return ""
    return "\n" + _cka_block(CKA_IMAGE)


def _cka_block(image: str, tables: str = "", images: str = "") -> str:
    details = f"\n<details><summary>CKA values</summary>\n\n{tables}\n</details>\n" if tables else ""
    over = f", over {images}" if images else ""
    return (f"{_CKA_START}\n{_CKA_HEADING}\n\nLinear CKA between the hidden states of the models the picture "
            f"names, the first one's in rows (hf_rcka's CKA report){over}:\n\n![layer CKA]({image})\n{details}{_CKA_END}\n")


def write_model_card(
    output_dir: str,
    model_name: str,
    student: Any,
    teacher_name: str | None,
    losses: dict[str, float],
    dataset: str | None = None,
    metrics: dict[str, float] | None = None,
    facts: CardFacts | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    license: str | None = None,
    training: str | None = None,
    reproduction: str | None = None,
    has_processor: bool = True,
    decoded: bool = True,
) -> ModelCard:
    """Write ``output_dir/README.md`` for a distilled (or, without teacher, supervised) student.

    Args:
        facts: what the run knows beyond the model (base model, teacher and baseline accuracy,
            the evaluation data); see ``card_facts.CardFacts``.
        repo_id: the id the usage snippet loads (the pushed repo); default ``model_name``.
        revision: the branch the snippet loads (``hub_revision``: the card and weights are there, and
            the default branch may hold another model, or none).
        license: SPDX-style Hub license id; default apache-2.0 (hf_rcka's own). Set it to the
            data's or the teacher's terms when they are stricter.
        training: how long and with what batch the student trained (``training_text``); the
            recipe alone does not say it, since the number of processes sets the global batch.
        reproduction: the seed, precision and library versions (``reproduction_text``).
        has_processor: whether the run saves an image processor with the model (one was given).
        decoded: whether hf_rcka decoded the training images (False: the caller gave ready pixels).
    """
    metrics, facts = metrics or {}, facts or CardFacts()
    data = _card_data(model_name, teacher_name, dataset, metrics, facts, license)
    where = _trained_on(dataset, facts)
    if teacher_name:
        summary = f"This model was distilled from the teacher {_teacher_text(teacher_name)}{where}"
    else:
        summary = f"This model was trained without a teacher (supervised baseline){where}"
    card = ModelCard(
        _TEMPLATE.format(
            card_data=data.to_yaml(),
            model_name=model_name,
            summary=summary,
            teacher=_teacher_text(teacher_name) if teacher_name else "none (supervised training)",
            architecture=_architecture_text(student),
            num_parameters=sum(p.numel() for p in student.parameters()),
            num_labels=student.config.num_labels,
            initialisation=_initialisation(facts, teacher_name),
            losses=", ".join(f"`{name}` ({weight:g})" for name, weight in losses.items()),
            training=f"- Training: {training}\n" if training else "",
            reproduction=f"- Reproduction: {reproduction}\n" if reproduction else "",
            recipe=(f"; the full recipe is in `{RECIPE_RECORD}` next to this card"
                    if os.path.exists(os.path.join(output_dir, RECIPE_RECORD)) else ""),
            evaluation=_evaluation_text(facts, metrics, distilled=bool(teacher_name)),
            results=_results_table(metrics, facts.relation_batches),
            repo=json.dumps(repo_id or model_name, ensure_ascii=False),  # a Python string literal, whatever the name holds
            revision=f", revision={json.dumps(revision, ensure_ascii=False)}" if revision else "",
            decoding=_decoding_text(decoded),
            processor_note=_processor_note(has_processor),
            cka=_cka_section(output_dir),
        )
    )
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, "README.md"), str(card), newline="")  # as RepoCard.save, whole or not at all
    return card


def _architecture_text(student: Any) -> str:
    """The student's class; for a timm student, the timm model it wraps and its ``create_model``
    arguments too (the transformers wrapper class is the same for every timm model)."""
    name = f"`{type(student).__name__}`"
    architecture = getattr(student.config, "architecture", None)
    if not architecture or not hasattr(student, "timm_model"):
        return name
    args = ", ".join(f"{key}={value!r}" for key, value in sorted((student.config.model_args or {}).items()))
    return f"timm `{architecture}`" + (f" (`{args}`)" if args else "") + f", loaded by transformers as {name}"


def _decoding_text(decoded: bool) -> str:
    """What the usage snippet's decoding is: training's own, or, where the caller handed the trainer
    ready pixels (decoded by the caller's code), hf_rcka's, which the caller's may not match."""
    if decoded:
        return ('Decode images as training did: `pipeline("image-classification")` and a plain `.convert("RGB")` '
                "show transparent pixels in the colour stored under them (often black, sometimes noise) and clip "
                "16-bit images to white, where this model saw them over white and scaled.")
    return ("Decode images as the training data's were: it came to the trainer as ready `pixel_values`, decoded by "
            "its author's code, not hf_rcka's. The snippet decodes as hf_rcka's own data pipeline does (upright by "
            "the EXIF orientation, 16-bit values scaled, transparency over white); where that code decoded "
            "otherwise (a plain `.convert(\"RGB\")`), use its decoding instead.")


def _processor_note(has_processor: bool) -> str:
    """A run given no image processor saves none, and the snippet's ``AutoImageProcessor`` then
    fails on the folder: said where the snippet is."""
    if has_processor:
        return ""
    return (f"\n\nThis folder holds no image processor (`{PROCESSOR_FILE}`): the run was given none. Save the one "
            "the model was trained with next to it (`processor.save_pretrained(folder)`) before using the snippet.")


def reproduction_text(seed: int, mixed_precision: str | None) -> str:
    """The card's line of what a rerun needs besides the recipe: the seed, the precision the run
    computed in (``arguments.run_mixed_precision``'s), and the versions of the libraries it ran
    (another torch computes other roundings)."""
    precision = f"{mixed_precision} mixed precision" if mixed_precision else "float32"
    return f"seed {seed}, {precision}; {', '.join(library_versions())}"


def training_text(steps: int, epochs: float | None, batch: str, learning_rate: float, scheduled_peak: float,
                  exported_step: int | None = None, ema_decay: float | None = None,
                  ema_exported: bool = False, resumed_step: int = 0,
                  ema_last_decay: float | None = None) -> str | None:
    """The card's training line; None before any step was taken.

    ``learning_rate``: the highest rate a step trained at; ``scheduled_peak``: the rate the
    schedule rises to, which a warm-up longer than the run never reached.

    ``exported_step``: the step whose weights are exported when it is not the last one (the best
    checkpoint that ``load_best_model_at_end`` loaded). ``ema_decay``: the run kept a weight
    average (``model_ema``), exported with ``ema_exported``; the results table then holds two
    sets of numbers, and which one the weights here scored is said. ``resumed_step``: the step a
    resumed run started from (its earlier steps ran in another launch, perhaps with other settings).
    ``ema_last_decay``: the decay of the average's last update under timm's warm-up
    (``model_ema_warmup``), which rises from 0 towards ``ema_decay`` and may not reach it in a run.
    """
    if steps <= 0:
        return None
    span = f"{steps:,} optimizer {'step' if steps == 1 else 'steps'}"
    if epochs:
        span += f" ({round(epochs, 2):g} {'epoch' if round(epochs, 2) == 1 else 'epochs'})"
    text = f"{span}, global batch {batch}, peak learning rate {learning_rate:g}"
    if learning_rate < scheduled_peak * (1 - 1e-6):
        text += f" (its warm-up to {scheduled_peak:g} was longer than the run)"
    if resumed_step:
        text += f"; resumed at step {resumed_step:,} from a checkpoint of an earlier launch"
    if exported_step is not None and exported_step != steps:
        text += f"; the weights here are step {exported_step:,}'s, the best evaluation"
    decay = f"decay {ema_decay:g}" if ema_decay is not None else ""
    if ema_decay is not None and ema_last_decay is not None and ema_last_decay < ema_decay:
        decay += f", warmed up from 0: {ema_last_decay:.4g} at the last step"  # as the rate's warm-up is said
    if ema_decay is not None and ema_exported:
        text += (f"; the weights here are the exponential moving average of the trained ones ({decay}): "
                 "`eval_*` measures them, `eval_live_*` the trained weights")
    elif ema_decay is not None:
        text += (f"; `eval_ema_*` measures an exponential moving average of the weights ({decay}), "
                 "which is not the model here")
    return text


def _card_data(model_name: str, teacher_name: str | None, dataset: str | None, metrics: dict[str, float],
               facts: CardFacts, license: str | None) -> ModelCardData:
    """The card's front matter: what the Hub indexes (license, datasets, base model, eval results)."""
    tags = CARD_TAGS if teacher_name else ["image-classification", "hf_rcka"]
    return ModelCardData(
        license=license or DEFAULT_LICENSE,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=[*tags, *(tag for tag in facts.tags if tag not in tags)],
        language=facts.language,
        datasets=_hub_dataset(dataset, facts),
        metrics=["accuracy"],
        base_model=facts.base_model,  # the student's own start; the teacher only when the student began as it
        model_name=model_name,
        eval_results=_eval_results(facts, dataset, metrics),
    )


def add_cka_to_card(model_dir: str | os.PathLike, image: str = CKA_IMAGE, tables: str = "",
                    images: str = "") -> ModelCard:
    """Embed a layer-CKA picture (already copied into ``model_dir``) in that folder's card.

    ``images``: which images the CKA was taken over (``64 images of ...``), for the card's reader:
    the picture says only how many.

    Replaces an earlier CKA section in place, so running the report again does not stack pictures,
    and leaves every other section alone, also one a user added after it.

    Raises:
        FileNotFoundError: if the folder has no ``README.md`` card or no ``image``.
    """
    path = os.path.join(model_dir, "README.md")
    if not os.path.exists(os.path.join(model_dir, image)):
        raise FileNotFoundError(f"{os.path.join(model_dir, image)} does not exist: copy the picture there first")
    with open(path, encoding="utf-8", newline="") as handle:
        content = handle.read()
    header, text = _split_metadata(content)
    before, after = _around_cka_section(text)
    text = f"{before.rstrip()}\n\n{_cka_block(image, tables, images)}" + (f"\n{after.lstrip()}" if after.strip() else "")
    write_text(path, header + text, newline="")  # a cut-short write would lose the sections a user added
    return ModelCard(header + text)


def _split_metadata(content: str) -> tuple[str, str]:
    """The card's YAML metadata block, exactly as written, and the text after it.

    ModelCard re-dumps the metadata it parsed: a user's YAML comments were dropped, ``version: 1.10``
    became ``1.1``, and a card without metadata got an empty ``{}`` block.
    """
    match = REGEX_YAML_BLOCK.search(content)
    return (match.group(0), content[match.end():]) if match else ("", content)


def _around_cka_section(text: str) -> tuple[str, str]:
    """The card's text before and after its CKA section (all of it, and nothing, when it has none)."""
    if _CKA_START in text and _CKA_END in text.split(_CKA_START, 1)[1]:
        before, rest = text.split(_CKA_START, 1)
        return before, rest.split(_CKA_END, 1)[1]
    heading = f"\n{_CKA_HEADING}\n"
    if heading not in text:
        return text, ""
    # a card written before the markers: its section runs to the next level-2 heading
    before, rest = text.split(heading, 1)
    following = rest.find("\n## ")
    return before, "" if following < 0 else rest[following + 1:]
