"""Model cards: metadata a Hub user expects, parsed back; a usage snippet that runs as written."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from conftest import processor, tiny_vit
from hf_rcka.arguments import DataArguments
from hf_rcka.arguments import ModelArguments
from hf_rcka.trainer.card_facts import (
    CardFacts, base_model_of, card_facts_of, describe_eval_data, image_folder_name, read_baseline, read_teacher_run,
    teacher_accuracy,
)
from hf_rcka.trainer.card import add_cka_to_card, write_model_card
from hf_rcka.losses import IGNORE_INDEX

LOSSES = {"ce": 1.0, "rcka": 1.0, "feature_cka": 1.0}


def _card(tmp_path, facts=None, **kwargs):
    student = tiny_vit()
    defaults = dict(model_name="tiny-student", student=student, teacher_name="acme/resnet-teacher", losses=LOSSES,
                    dataset="acme/shapes", metrics={"eval_accuracy": 0.91234, "eval_top5_accuracy": 1.0,
                                                    "eval_runtime": 3.2})
    write_model_card(str(tmp_path), facts=facts, **{**defaults, **kwargs})
    return ModelCard.load(tmp_path / "README.md"), student


def test_metadata_parses_back_with_license_tags_datasets_and_model_index(tmp_path):
    facts = CardFacts(teacher_accuracy=0.98, eval_data="acme/shapes", eval_images=540, dataset_label="Shapes",
                      eval_split="validation")
    card, _ = _card(tmp_path, facts)
    data = card.data
    assert data.license == "apache-2.0"
    assert "knowledge-distillation" in data.tags and "image-classification" in data.tags
    assert data.datasets == ["acme/shapes"]
    assert data.base_model is None, "a from-scratch student has no base model, and the teacher never is one"
    results = {r.metric_name: r for r in data.eval_results}
    top1 = results["Top-1 accuracy"]
    assert (top1.metric_type, top1.metric_value, top1.task_type) == ("accuracy", 0.9123, "image-classification")
    assert (top1.dataset_type, top1.dataset_name, top1.dataset_split) == ("acme/shapes", "Shapes", "validation")
    assert results["Top-5 accuracy"].metric_value == 1.0
    assert data.model_name == "tiny-student"
    # a card written from Python, where the split evaluated is not known, names none
    unknown, _ = _card(tmp_path / "unknown", CardFacts(teacher_accuracy=0.98))
    assert unknown.data.eval_results[0].dataset_split is None
    text = card.text
    assert "| teacher | 98.0% |" in text and "Measured on 540 images of acme/shapes." in text
    assert "eval_runtime" not in text


def test_base_model_is_the_students_hub_checkpoint_never_the_teacher(tmp_path):
    card, _ = _card(tmp_path, CardFacts(base_model="google/vit-base-patch16-224"))
    assert card.data.base_model == "google/vit-base-patch16-224"
    assert "the Hub checkpoint `google/vit-base-patch16-224`" in card.text
    # a student that starts from the teacher's own checkpoint (self-distillation) does derive from it
    card, _ = _card(tmp_path, CardFacts(base_model="acme/resnet-teacher"))
    assert card.data.base_model == "acme/resnet-teacher"
    assert "the Hub checkpoint `acme/resnet-teacher` (the teacher's own checkpoint)" in card.text


def test_a_student_fine_tuned_from_a_local_folder_is_not_called_random(tmp_path):
    """It said "random (trained from scratch)" for every student without a Hub checkpoint."""
    start = tmp_path / "runs" / "my-student"
    start.mkdir(parents=True)
    teacher = tmp_path / "runs" / "big-teacher"
    teacher.mkdir()
    facts = card_facts_of(ModelArguments(model_name_or_path=str(start)), DataArguments(dataset_name="acme/pets"), 6)
    card, _ = _card(tmp_path / "card", facts, teacher_name=str(teacher))
    assert "Student initialisation: the local checkpoint `my-student` (not on the Hub)" in card.text
    assert card.data.base_model is None
    assert "teacher `big-teacher` (a local checkpoint)" in card.text
    assert str(tmp_path) not in card.content, "a published card holds no local paths"
    scratch = card_facts_of(ModelArguments(model_name_or_path=str(start), student_from_scratch=True),
                            DataArguments(dataset_name="acme/pets"), 6)
    card, _ = _card(tmp_path / "card", scratch)
    assert "Student initialisation: random (trained from scratch)" in card.text


def test_a_student_whose_start_the_run_did_not_record_is_not_called_random(tmp_path):
    """A card written from Python (a trainer given a built student: CardFacts() knows nothing of its
    start) says the start is not recorded: a mutant that called every such student random passed
    every test, and a card of a student fine-tuned from pretrained weights claimed it began random."""
    card, _ = _card(tmp_path, CardFacts())
    assert "Student initialisation: not recorded" in card.text and "random" not in card.text


@pytest.mark.parametrize(
    "name, from_scratch, expected",
    [("google/vit-base-patch16-224", False, "google/vit-base-patch16-224"),
     ("google/vit-base-patch16-224", True, None),
     ("timm/resnet18.a1_in1k", False, "timm/resnet18.a1_in1k"),
     ("timm/resnet18", False, "timm/resnet18.a1_in1k"),  # the repo timm downloads; timm/resnet18 is none
     ("timm/resnet18.newer_tag", False, "timm/resnet18.newer_tag"),  # a tag this timm does not know
     ("timm/resnet18", True, None),
     ("config:vit", False, None)],
)
def test_base_model_of(name, from_scratch, expected):
    assert base_model_of(name, from_scratch) == expected


def test_base_model_of_a_local_folder_is_none(tmp_path):
    assert base_model_of(str(tmp_path), False) is None


def _cached_repo(cache, repo_id, commit):
    """A repository as the Hugging Face cache holds it once from_pretrained has read it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    return snapshot


def test_only_a_snapshot_folder_itself_of_its_kind_is_a_hub_repository_at_a_commit(tmp_path, monkeypatch):
    """A subfolder of a snapshot (a repository that holds several models, one of them given) is a
    local folder: named as the repository at that commit, the card's base_model was a model that does
    not load as such. A model's snapshot given where a dataset goes is no Hub dataset, and "." inside
    a snapshot is that snapshot."""
    from hf_rcka.models.sources import cache_snapshot

    commit = "4" * 40
    snapshot = _cached_repo(tmp_path / "hub", "acme/vit-small", commit)
    assert cache_snapshot(str(snapshot)) == cache_snapshot(f"{snapshot}/") == ("acme/vit-small", commit)
    (snapshot / "student").mkdir()
    assert cache_snapshot(str(snapshot / "student")) is None
    assert cache_snapshot(str(snapshot), "datasets") is None
    monkeypatch.chdir(snapshot)
    assert cache_snapshot(".") == ("acme/vit-small", commit)


def test_the_card_names_the_hub_commit_a_run_read_and_a_cache_folder_by_its_repository(tmp_path, monkeypatch):
    """No record said which revision of a Hub checkpoint a run read: rerun after the repository moved
    on, a student started from other weights under the same card. A folder of the cache given to
    pin a revision offline was called the local checkpoint `1111...` (not on the Hub), its teacher
    named by a hash too."""
    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    student_commit, teacher_commit = "1" * 40, "2" * 40
    snapshot = _cached_repo(cache, "acme/vit-small", student_commit)
    _cached_repo(cache, "acme/resnet-teacher", teacher_commit)
    for name in ("acme/vit-small", str(snapshot)):
        facts = card_facts_of(ModelArguments(model_name_or_path=name), DataArguments(dataset_name="acme/pets"), 6)
        assert (facts.base_model, facts.base_revision, facts.local_checkpoint) == ("acme/vit-small", student_commit, None)
        card, _ = _card(tmp_path / "card", facts)
        assert card.data.base_model == "acme/vit-small"
        assert f"Student initialisation: the Hub checkpoint `acme/vit-small` at revision `{student_commit}`" in card.text
        assert f"teacher `acme/resnet-teacher` at revision `{teacher_commit}`" in card.text
    card, _ = _card(tmp_path / "card", facts, teacher_name=str(snapshot))
    assert f"teacher `acme/vit-small` at revision `{student_commit}`" in card.text
    assert str(tmp_path) not in card.content, "a published card holds no local paths"
    from hf_rcka.trainer.teacher_record import teacher_fingerprint

    teacher = tiny_vit()
    teacher.config._name_or_path = str(snapshot)  # what a resume of another teacher names in its refusal
    assert teacher_fingerprint(teacher)["source"] == f"acme/vit-small at revision {student_commit}"
    # nothing cached (a Hub id read by another machine's cache): the id alone, as before
    facts = card_facts_of(ModelArguments(model_name_or_path="acme/other"), DataArguments(dataset_name="acme/pets"), 6)
    assert (facts.base_model, facts.base_revision) == ("acme/other", None)
    card, _ = _card(tmp_path / "card", facts, teacher_name="acme/unseen")
    assert "the Hub checkpoint `acme/other`" in card.text and "`acme/other` at revision" not in card.text
    assert "teacher `acme/unseen`" in card.text and "`acme/unseen` at revision" not in card.text


def test_usage_snippet_runs_as_written(tmp_path, monkeypatch):
    folder = tmp_path / "student"
    card, student = _card(folder, repo_id=str(folder))
    student.save_pretrained(folder)
    processor(16).save_pretrained(folder)
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert f'from_pretrained("{folder}")' in snippet
    from PIL import Image

    Image.new("L", (40, 30), 128).save(tmp_path / "image.jpg")  # a grayscale photo: the snippet converts it
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "card-snippet", "exec"), namespace)  # noqa: S102 - the card's own code
    assert namespace["logits"].shape == (1, student.config.num_labels)


@pytest.mark.parametrize("kind", ["exif_rotated_jpeg", "transparent_png", "sixteen_bit_png", "unit_float_tiff",
                                  "wide_float_tiff", "wide_int32_tiff", "overshooting_float_tiff",
                                  "eight_bit_float_tiff", "keyed_grey_png", "keyed_rgb_png", "keyed_sixteen_bit_png"])
def test_usage_snippet_decodes_images_as_training_did(tmp_path, monkeypatch, kind):
    """Deployment must see what training saw: a phone photo stored sideways with an EXIF
    orientation is turned upright (as datasets decodes it), transparency is shown over white,
    16-bit, 32-bit and float values are scaled to 8 bits by training's rule."""
    import numpy as np
    from PIL import Image

    from hf_rcka.data.images import decode_image

    folder = tmp_path / "student"
    card, student = _card(folder, repo_id=str(folder))
    student.save_pretrained(folder)
    processor(16).save_pretrained(folder)
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 4), dtype=np.uint8)
    if kind == "exif_rotated_jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
        Image.fromarray(pixels[..., :3]).save(tmp_path / "image.jpg", exif=exif)
    elif kind == "sixteen_bit_png":  # Pillow's convert clipped it to white: chance accuracy when deployed
        Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(tmp_path / "image.png")  # mode I;16
        snippet = snippet.replace("image.jpg", "image.png")
    elif kind.startswith("keyed"):  # a PNG colour key (tRNS): that value is transparent
        grey = pixels[..., 0]
        image = {"keyed_grey_png": Image.fromarray(grey), "keyed_rgb_png": Image.fromarray(pixels[..., :3]),
                 "keyed_sixteen_bit_png": Image.fromarray(grey.astype(np.uint16) * 257)}[kind]
        key = tuple(int(v) for v in pixels[0, 0, :3]) if kind == "keyed_rgb_png" else int(np.asarray(image)[0, 0])
        image.save(tmp_path / "image.png", transparency=key)
        snippet = snippet.replace("image.jpg", "image.png")
    elif kind.endswith("_tiff"):  # 32-bit float in [0, 1] (training scales it by 255; convert gave black), or wider
        values = {"unit_float_tiff": pixels[..., 0] / np.float32(255), "wide_float_tiff": pixels[..., 0] * 3.5 - 100.0,
                  "wide_int32_tiff": pixels[..., 0].astype(np.int32) * 1000,
                  "overshooting_float_tiff": pixels[..., 0] / np.float32(255) * 1.005 - 0.002,
                  "eight_bit_float_tiff": pixels[..., 0] * 0.9 + 10}[kind]
        Image.fromarray(values.astype(np.float32 if "float" in kind else np.int32)).save(tmp_path / "image.tiff")
        snippet = snippet.replace("image.jpg", "image.tiff")
    else:
        pixels[..., 3] = np.where(np.arange(40) < 20, 0, 128)  # left half transparent, right half half-opaque
        Image.fromarray(pixels, "RGBA").save(tmp_path / "image.png")
        snippet = snippet.replace("image.jpg", "image.png")
    file = next(tmp_path.glob("image.*"))
    trained_on = np.asarray(decode_image({"path": str(file), "bytes": None}))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "card-snippet", "exec"), namespace)  # noqa: S102 - the card's own code
    deployed = np.asarray(namespace["image"])
    assert deployed.shape == trained_on.shape and np.array_equal(deployed, trained_on)


# the split settings a digits run evaluated with (card_facts.SPLIT_KEYS), as read_baseline takes them
DIGITS_SPLIT = {"dataset_name": "builtin:digits", "dataset_config_name": None, "train_dir": None,
                "validation_dir": None, "train_val_split": 0.15, "split_seed": 42, "max_eval_samples": None,
                "label_column_name": "label"}


def _baseline_run(tmp_path: Path, steps: int | None = None) -> Path:
    """A student-alone run folder that scored 90%, with ``steps`` optimizer steps in its
    trainer_state.json (None: no trainer_state.json)."""
    baseline = tmp_path / "alone"
    baseline.mkdir()
    (baseline / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.9}))
    if steps is not None:
        (baseline / "trainer_state.json").write_text(json.dumps({"global_step": steps}))
    return baseline


def test_student_alone_baseline_and_gain(tmp_path):
    baseline = _baseline_run(tmp_path)
    settings = {**DIGITS_SPLIT, "train_val_split": 0.3}
    recorded = {"dataset_name": "builtin:digits", "train_val_split": 0.3, "seed": 3}  # split_seed left at its default
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump(recorded))
    student = {"model_name_or_path": "config:resnet", "student_from_scratch": False,
               "student_config_overrides": None, "image_size": None}
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump({**recorded, "model_name_or_path": "config:resnet"}))
    accuracy, note, comparable = read_baseline(str(baseline), settings, student)
    assert accuracy == 0.9 and note == "run `alone`, same images" and comparable
    _, other, comparable = read_baseline(str(baseline), {**settings, "split_seed": 7}, student)
    assert other.endswith("other evaluation images") and not comparable
    _, other, comparable = read_baseline(str(baseline), {**settings, "label_column_name": "target"}, student)
    assert other.endswith("other evaluation images") and not comparable  # a split stratified by another label
    facts = CardFacts(teacher_accuracy=0.99, baseline_accuracy=accuracy, baseline_note=note, baseline_comparable=True)
    card, _ = _card(tmp_path / "card", facts, metrics={"eval_accuracy": 0.95})
    assert "| the same student trained alone | 90.0% |" in card.text
    assert "+5.0 points over training the student alone" in card.text
    # another student architecture is no baseline of this one: named so, and no gain is claimed
    _, note, comparable = read_baseline(str(baseline), settings, {**student, "image_size": 32})
    assert note == "run `alone`, same images, another student (image_size differs)" and not comparable
    facts = CardFacts(baseline_accuracy=accuracy, baseline_note=note, baseline_comparable=comparable)
    card, _ = _card(tmp_path / "card", facts, metrics={"eval_accuracy": 0.95})
    assert "| baseline run (not comparable) | 90.0% |" in card.text and "points over" not in card.text
    with pytest.raises(FileNotFoundError, match="all_results.json"):
        read_baseline(str(tmp_path / "missing"), settings)


def test_a_baseline_of_an_unknown_student_is_not_comparable(tmp_path):
    """Without this run's student settings (a trainer built in Python, whose card facts hold none)
    a baseline of the same images is named but not comparable: a mutant that dropped that
    condition passed every test, and its card claimed a gain over a student it could not name."""
    baseline = _baseline_run(tmp_path)
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump({"dataset_name": "builtin:digits",
                                                                  "model_name_or_path": "config:resnet"}))
    accuracy, note, comparable = read_baseline(str(baseline), DIGITS_SPLIT)
    assert (accuracy, note, comparable) == (0.9, "run `alone`, same images", False)


def test_an_empty_recorded_setting_is_an_unset_one(tmp_path):
    """A baseline recorded with ``optim_args: ""`` trained as a run that left it unset: a mutant
    comparing "" with None passed every test (only {} was tested) and its card said "trained
    otherwise (optim_args differs)", with no gain."""
    from hf_rcka.trainer.card_facts import TrainingRecord

    baseline = _baseline_run(tmp_path, steps=10)
    recorded = {"dataset_name": "builtin:digits", "learning_rate": 1e-3}
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump({**recorded, "optim_args": ""}))
    note = read_baseline(str(baseline), DIGITS_SPLIT, None, TrainingRecord(recorded, 10, 64, 1e-3))[1]
    assert note == "run `alone`, same images"


def test_a_baseline_that_ran_in_another_folder_is_compared_by_the_images_it_read(tmp_path, monkeypatch):
    """Its recorded validation_dir data/val named its own working folder's images: read from this
    run's folder, the card called another folder's images "same images". A record that cannot be
    read passed the check before training and raised while the card was written after it."""
    from hf_rcka import DistillationTrainingArguments
    from hf_rcka.errors import RecipeError

    for side in ("A", "B"):
        for split in ("train", "val"):
            (tmp_path / side / "data" / split).mkdir(parents=True)
    baseline = tmp_path / "A" / "alone"
    baseline.mkdir()
    (baseline / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.9}))
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump({"train_dir": "data/train", "validation_dir": "data/val"}))
    (baseline / "_working_dir.json").write_text(json.dumps({"working_dir": str(tmp_path / "A")}))
    settings = {"dataset_name": None, "dataset_config_name": None, "train_dir": "data/train",
                "validation_dir": "data/val", "train_val_split": 0.15, "split_seed": 42, "max_eval_samples": None,
                "label_column_name": "label"}
    monkeypatch.chdir(tmp_path / "B")
    _, note, comparable = read_baseline(str(baseline), settings)
    assert note.endswith("other evaluation images") and not comparable
    monkeypatch.chdir(tmp_path / "A")
    _, note, _ = read_baseline(str(baseline), settings)
    assert note.endswith("same images")
    # the student it started from, a folder of its own working directory, is read there too
    for side in ("A", "B"):
        (tmp_path / side / "student").mkdir()
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump(
        {"train_dir": "data/train", "validation_dir": "data/val", "model_name_or_path": "student"}))
    student = {"model_name_or_path": "student", "student_from_scratch": False, "student_config_overrides": None,
               "image_size": None}
    assert read_baseline(str(baseline), settings, student)[2]
    monkeypatch.chdir(tmp_path / "B")
    settings = {**settings, "train_dir": str(tmp_path / "A" / "data" / "train"),
                "validation_dir": str(tmp_path / "A" / "data" / "val")}
    _, note, comparable = read_baseline(str(baseline), settings, student)
    assert "another student (model_name_or_path differs)" in note and not comparable

    (baseline / "distill_config.yaml").write_text("validation_dir: [data/val\n")  # cut short
    with pytest.raises(RecipeError, match="baseline_dir: .*distill_config.yaml cannot be read"):
        DistillationTrainingArguments(output_dir=str(tmp_path / "run"), baseline_dir=str(baseline), use_cpu=True)
    _, note, comparable = read_baseline(str(baseline), settings)  # edited during the run: nothing claimed from it
    assert note.endswith("other evaluation images") and not comparable


def test_a_baseline_is_compared_by_the_training_in_effect_not_by_its_spelling(tmp_path):
    """lr_base against the learning_rate it gives, 1 process x 64 against 2 x 32, lr_scheduler_kwargs
    {} against unset and a colour jitter under no_aug were called "trained otherwise"; half the
    global batch at the same per-device batch was called comparable."""
    from hf_rcka.trainer.card_facts import TrainingRecord

    baseline = _baseline_run(tmp_path, steps=100)
    settings = dict(DIGITS_SPLIT)
    recorded = {"dataset_name": "builtin:digits", "lr_base": 1e-3, "lr_base_size": 512, "no_aug": True,
                "color_jitter": 0.4, "per_device_train_batch_size": 64}

    def compare(global_batch, rate, steps=100, **own):
        (baseline / "distill_config.yaml").write_text(f"# Global batch: {global_batch} images (1 process x "
                                                      f"{global_batch} images) per optimizer step.\n" + yaml.safe_dump(recorded))
        mine = {"dataset_name": "builtin:digits", "no_aug": True, "lr_scheduler_kwargs": {}, **own}
        return read_baseline(str(baseline), settings, None, TrainingRecord(mine, steps, 64, rate))[1]

    assert compare(64, 1.25e-4, learning_rate=1.25e-4, per_device_train_batch_size=32) == "run `alone`, same images"
    assert compare(64, 1.25e-4, steps=90, learning_rate=1.25e-4) == (
        "run `alone`, same images, trained otherwise (100 optimizer steps against this run's 90)")
    recorded["lr_base_scale"] = "sqrt"  # DeiT's linear scaling is the default; the square root scales less
    assert compare(64, 1e-3 * math.sqrt(64 / 512), lr_base=1e-3, lr_base_scale="sqrt") == "run `alone`, same images"
    del recorded["lr_base_scale"]
    assert compare(32, 1.25e-4) == ("run `alone`, same images, trained otherwise (a global batch of 32 images against "
                                    "this run's 64; a learning rate of 6.25e-05 against this run's 0.000125)")
    assert "trained otherwise (mixup differs)" in compare(64, 1.25e-4, mixup=0.8)
    # an export chosen among evaluations on these images against the baseline's last step (+8.3 points
    # claimed where the last steps differed by -13), and how often it chose
    assert "trained otherwise (load_best_model_at_end, metric_for_best_model, greater_is_better, eval_strategy, " \
           "eval_steps differ)" in \
        compare(64, 1.25e-4, load_best_model_at_end=True, metric_for_best_model="accuracy", eval_strategy="steps",
                eval_steps=3)
    # the same selection spelt two ways (transformers' defaults: the loss, lower is better)
    recorded.update(load_best_model_at_end=True, eval_strategy="epoch", metric_for_best_model="eval_loss",
                    greater_is_better=False)
    assert "trained otherwise" not in compare(64, 1.25e-4, learning_rate=1.25e-4, load_best_model_at_end=True,
                                              eval_strategy="epoch")
    for key in ("load_best_model_at_end", "eval_strategy", "metric_for_best_model", "greater_is_better"):
        del recorded[key]
    # settings without effect there: a metric without best-model loading, EMA settings without EMA
    assert "trained otherwise" not in compare(64, 1.25e-4, metric_for_best_model="accuracy", greater_is_better=True,
                                              model_ema_warmup=True, model_ema_decay=0.99)
    recorded["model_ema"] = True  # averaged on both sides: the average's settings are compared
    assert "trained otherwise (model_ema_decay differs)" in compare(64, 1.25e-4, model_ema=True, model_ema_decay=0.99)
    del recorded["model_ema"]
    # and mixing options where neither side mixes (a cutmix_minmax alone turns CutMix on)
    assert "trained otherwise" not in compare(64, 1.25e-4, mixup_prob=0.5, mixup_mode="pair")
    assert "trained otherwise (cutmix_minmax, mixup_prob differ)" in compare(64, 1.25e-4, mixup_prob=0.5,
                                                                             cutmix_minmax=[0.2, 0.8])
    # every per-image setting is idle under no_aug on both sides, and compared where either side augments
    assert "trained otherwise" not in compare(64, 1.25e-4, aa="rand-m9-mstd0.5", hflip=0.0, reprob=0.25)
    assert "trained otherwise (no_aug, color_jitter differ)" in compare(64, 1.25e-4, no_aug=False, color_jitter=0.1)
    # the smoothing in effect, however spelt: ce's own or label_smoothing_factor
    recorded["label_smoothing_factor"] = 0.1
    assert "trained otherwise (label smoothing differs)" in compare(
        64, 1.25e-4, label_smoothing_factor=0.1, losses=[{"name": "ce", "label_smoothing": 0.0}, {"name": "kd"}])
    assert "trained otherwise" not in compare(64, 1.25e-4, learning_rate=1.25e-4, losses=[
        {"name": "ce", "label_smoothing": 0.1}, {"name": "kd"}])
    assert "trained otherwise (adam_beta2 differs)" in compare(64, 1.25e-4, learning_rate=1.25e-4,
                                                               label_smoothing_factor=0.1, adam_beta2=0.5)
    # the precision (a bf16 baseline was called comparable, +28 points against the true +5.6)
    assert "trained otherwise (bf16 differs)" in compare(64, 1.25e-4, learning_rate=1.25e-4,
                                                         label_smoothing_factor=0.1, bf16=True)
    # the schedule as it ran: a baseline resumed with other schedule settings recorded the same recipe
    (baseline / "trainer_state.json").write_text(json.dumps({"global_step": 100, "log_history": [
        {"step": 50, "learning_rate": 1e-4}, {"step": 100, "learning_rate": 0.0}]}))
    rates = {50: 6e-5, 100: 0.0}
    (baseline / "distill_config.yaml").write_text("# Global batch: 64 images (1 process x 64 images) per optimizer "
                                                  "step.\n" + yaml.safe_dump(recorded))
    mine = {"dataset_name": "builtin:digits", "no_aug": True, "lr_scheduler_kwargs": {}, "learning_rate": 1.25e-4,
            "label_smoothing_factor": 0.1}
    note = read_baseline(str(baseline), settings, None, TrainingRecord(mine, 100, 64, 1.25e-4, rates))[1]
    assert note.endswith("trained otherwise (another learning-rate schedule (at step 50: 0.0001 against this "
                         "run's 6e-05))")
    assert read_baseline(str(baseline), settings, None, TrainingRecord(mine, 100, 64, 1.25e-4, {50: 1e-4}))[1] \
        == "run `alone`, same images"
    # a schedule that differs because the runs are of other lengths is said once, as the lengths
    # (a mutant that added the schedule beside any other difference passed every test)
    note = read_baseline(str(baseline), settings, None, TrainingRecord(mine, 90, 64, 1.25e-4, rates))[1]
    assert note.endswith("trained otherwise (100 optimizer steps against this run's 90)")


def test_a_baseline_that_spells_its_image_folder_otherwise_saw_the_same_images(tmp_path, monkeypatch):
    (tmp_path / "data" / "pets" / "train").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    baseline = tmp_path / "alone"
    baseline.mkdir()
    (baseline / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.8}))
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump({"train_dir": "data/pets/train"}))
    defaults = {k: getattr(DataArguments(train_dir="x"), k) for k in ("dataset_name", "dataset_config_name",
                "validation_dir", "train_val_split", "split_seed", "max_eval_samples", "label_column_name")}
    for spelling in (str(tmp_path / "data" / "pets" / "train"), "data/pets/train/"):
        _, note, _ = read_baseline(str(baseline), {**defaults, "train_dir": spelling})
        assert note == "run `alone`, same images", spelling


def test_a_local_dataset_folder_is_named_not_its_path(tmp_path):
    folder = tmp_path / "home" / "me" / "pets"
    folder.mkdir(parents=True)
    facts = card_facts_of(STUDENT, DataArguments(dataset_name=str(folder)), 6)
    card, _ = _card(tmp_path / "card", facts, dataset=str(folder))
    assert "on the local dataset folder `pets` (not a Hub dataset)." in card.text
    assert card.data.datasets is None and card.data.eval_results[0].dataset_name == "pets (local dataset folder)"
    assert str(tmp_path) not in card.content
    # the model-index type is a Hub dataset id: the folder's name put the result under the Hub's `pets`
    assert card.data.eval_results[0].dataset_type == "local"
    parquet = card_facts_of(STUDENT, DataArguments(dataset_name=str(folder)), 6, data_format="parquet")
    assert parquet.dataset_type == "parquet"
    # a folder of the Hugging Face cache (hf download's, given offline) is the Hub dataset at that commit,
    # where it was called the local dataset folder `3333...`
    snapshot = tmp_path / "hub" / "datasets--acme--pets" / "snapshots" / ("3" * 40)
    snapshot.mkdir(parents=True)
    facts = card_facts_of(STUDENT, DataArguments(dataset_name=str(snapshot)), 6, data_format="parquet")
    card, _ = _card(tmp_path / "card", facts, dataset=str(snapshot))
    assert f"on `acme/pets` at revision `{'3' * 40}`." in card.text and "local dataset folder" not in card.text
    assert card.data.datasets == ["acme/pets"] and card.data.eval_results[0].dataset_type == "acme/pets"
    assert card.data.eval_results[0].dataset_name == f"acme/pets at revision {'3' * 40}"
    assert str(tmp_path) not in card.content


def test_eval_data_says_when_max_eval_samples_drew_a_subset():
    folders = DataArguments(train_dir="data/train", validation_dir="data/val", split_seed=5, max_eval_samples=100)
    subset = describe_eval_data(folders, 100, 2000)
    assert subset["eval_images"] == 100 and subset["eval_data"] == (
        "data (local image folder): a random subset (max_eval_samples, drawn with split_seed 5) of the 2,000 images of its "
        "image folder `val`")
    whole = describe_eval_data(DataArguments(train_dir="data/train", validation_dir="data/val"), 2000, 2000)
    assert whole["eval_data"] == "data (local image folder): its image folder `val`"


def test_eval_data_of_a_lone_train_dir_is_the_carved_split():
    """datasets reads only train_dir then: no split can be the dataset's own validation split."""
    carved = describe_eval_data(DataArguments(train_dir="data/train", train_val_split=0.2, split_seed=3), 50, 50)
    assert carved["eval_data"] == ("data (local image folder): a stratified 20% validation split carved from train "
                                   "(split_seed 3, independent of the training seed)")


@pytest.mark.parametrize("train_dir, expected", [
    ("/data/pets/train", "pets"), ("/data/pets/Training/", "pets"), ("/data/pets/val", "pets"),
    ("/data/pets/validation", "pets"), ("/data/pets/test", "pets"), ("/data/pet_photos", "pet_photos"),
    ("/train", "train"), ("train", "pets"),  # relative: read from the working directory, /data/pets
])
def test_an_image_folder_is_named_by_its_data_not_its_split(train_dir, expected, monkeypatch, tmp_path):
    (tmp_path / "data" / "pets").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "data" / "pets")
    assert image_folder_name(train_dir) == expected


STUDENT = ModelArguments(model_name_or_path="config:resnet")


@pytest.mark.parametrize("train_dir", ["/data/pets/train", "pets"])  # neither exists when the card is written
def test_card_of_an_image_folder_run_names_the_data_as_local_never_as_a_hub_dataset(tmp_path, train_dir):
    """train_dir /data/pets/train is the local 'pets' data: the card must not call the dataset
    'train', and the folder must not reach the `datasets:` metadata the Hub links as dataset ids,
    whatever `dataset` the caller passed (the CLI used to pass train_dir, a path that need not
    exist where the card is written, and a bare folder name reads as an id)."""
    facts = card_facts_of(STUDENT, DataArguments(train_dir=train_dir), 6)
    for dataset in (train_dir, None):
        card, _ = _card(tmp_path, facts, dataset=dataset, teacher_name=None)
        assert card.data.datasets is None, card.data.datasets
        result = card.data.eval_results[0]
        assert (result.dataset_type, result.dataset_name) == ("imagefolder", f"{image_folder_name(train_dir)} "
                                                                             "(local image folder)")
        assert f"on the local image folder `{image_folder_name(train_dir)}` (not a Hub dataset)." in card.text
    assert "Measured on 6 images of pets (local image folder)" in card.text


def test_card_of_a_hub_dataset_run_keeps_its_id():
    facts = card_facts_of(STUDENT, DataArguments(dataset_name="acme/pets"), 6)
    assert (facts.image_folder, facts.dataset_type, facts.dataset_label) == (None, "acme/pets", "acme/pets")


def test_card_counts_readable_evaluation_images_and_names_the_unreadable_apart(tmp_path):
    facts = CardFacts(eval_data="acme/shapes: its validation split", eval_images=10, unreadable_eval_images=1)
    card, _ = _card(tmp_path, facts)
    assert ("Measured on 9 images of acme/shapes: its validation split. 1 more image file(s) of this set could "
            "not be read and are not counted (the run lists them in a local `_skipped_images.tsv`, not uploaded: "
            "it names local paths).") in card.text


def test_cka_picture_is_embedded_once(tmp_path):
    _card(tmp_path)
    (tmp_path / "cka.png").write_bytes(b"\x89PNG fake")
    add_cka_to_card(tmp_path, "cka.png", "| a | b |")
    card = add_cka_to_card(tmp_path, "cka.png", "| a | b |")
    assert card.text.count("![layer CKA](cka.png)") == 1
    reloaded = ModelCard.load(tmp_path / "README.md")
    assert reloaded.data.license == "apache-2.0" and "![layer CKA](cka.png)" in reloaded.text
    torch.manual_seed(0)  # a regenerated card keeps the picture when it is in the folder
    card, _ = _card(tmp_path)
    assert "![layer CKA](cka.png)" in card.text


def test_a_new_cka_report_replaces_only_the_cka_section(tmp_path):
    """It cut the card at the CKA heading: a user's section written after it was deleted."""
    _card(tmp_path)
    (tmp_path / "cka.png").write_bytes(b"\x89PNG fake")
    add_cka_to_card(tmp_path, "cka.png", "| old | table |")
    path = tmp_path / "README.md"
    path.write_text(path.read_text() + "\n## Limitations\n\nOnly digits.\n")
    card = add_cka_to_card(tmp_path, "cka.png", "| new | table |")
    assert "## Limitations\n\nOnly digits." in card.text and "| new | table |" in card.text
    assert "| old | table |" not in card.text and card.text.count("## Layer-by-layer CKA") == 1
    assert card.text.index("## Layer-by-layer CKA") < card.text.index("## Limitations")


def test_a_cka_section_without_markers_is_replaced_up_to_the_next_section(tmp_path):
    """Cards written before the section had markers: the old section goes, the user's next one stays."""
    _card(tmp_path)
    (tmp_path / "cka.png").write_bytes(b"\x89PNG fake")
    path = tmp_path / "README.md"
    path.write_text(path.read_text() + "\n## Layer-by-layer CKA\n\n![layer CKA](old.png)\n\n### a vs b\n\n"
                    "| x |\n\n## Citation\n\nUs.\n")
    card = add_cka_to_card(tmp_path, "cka.png", "| new |")
    assert "old.png" not in card.text and "## Citation\n\nUs." in card.text
    assert card.text.count("## Layer-by-layer CKA") == 1


def test_the_cka_section_leaves_the_cards_metadata_as_written(tmp_path):
    """The card went through ModelCard, which re-dumps its YAML: a user's comment there was lost,
    ``version: 1.10`` became ``1.1``, and a card without metadata got a ``{}`` block."""
    (tmp_path / "cka.png").write_bytes(b"\x89PNG fake")
    path = tmp_path / "README.md"
    header = "---\n# reviewed by legal\nlicense: apache-2.0\nversion: 1.10\nbase_model: 'org/teacher'\n---\n"
    path.write_text(header + "# student\n\nMy words.\n")
    add_cka_to_card(tmp_path, "cka.png", "| a | b |")
    assert path.read_text().startswith(header + "# student\n\nMy words.\n\n<!-- hf_rcka:cka-start -->")
    path.write_text("# student\n\nNo metadata.\n")
    card = add_cka_to_card(tmp_path, "cka.png", "| a | b |")
    assert path.read_text().startswith("# student\n\nNo metadata.\n\n") and "| a | b |" in card.text


def test_the_usage_snippet_is_python_whatever_the_folder_is_called(tmp_path):
    """A folder name with a quote or a backslash wrote from_pretrained("we"ird"), broken Python."""
    import ast

    card, _ = _card(tmp_path, model_name='we"ird\\name', repo_id=None)
    code = card.text.split("```python")[1].split("```")[0]
    ast.parse(code)
    assert 'from_pretrained("we\\"ird\\\\name")' in code



def test_a_baseline_folder_with_a_bar_stays_in_its_table_cell(tmp_path):
    """A baseline run named 'base|line' rendered as "run `base" in the card's results table."""
    facts = CardFacts(teacher_accuracy=0.9, baseline_accuracy=0.4, baseline_note="run `base|line`, same images",
                      baseline_comparable=True)
    card, _ = _card(tmp_path, facts)
    assert "| the same student trained alone | 40.0% | run `base\\|line`, same images |" in card.text


def test_the_cards_teacher_accuracy_weighs_batches_by_their_counted_images():
    """A batch's accuracy counts its readable images only, so it weighs by them: 3 of 3 readable
    right in the first batch (one stand-in), 0 of 2 in the second: 3/5, not 4/6."""

    class Model:
        def teacher_accuracy(self, pixel_values, labels):
            return 1.0 if labels[0] == 0 else 0.0

    batches = [{"pixel_values": torch.zeros(4, 3, 2, 2), "labels": torch.tensor([0, 0, 0, IGNORE_INDEX])},
               {"pixel_values": torch.zeros(2, 3, 2, 2), "labels": torch.tensor([1, 1])}]
    assert teacher_accuracy(Model(), batches) == 3 / 5


SETTINGS = {"dataset_name": "builtin:digits", "dataset_config_name": None, "train_dir": None, "validation_dir": None,
            "train_val_split": 0.3, "split_seed": 42, "max_eval_samples": None, "label_column_name": "label"}


def test_the_teachers_own_accuracy_is_taken_only_from_a_run_on_the_same_images(tmp_path):
    """The card calls it 'same images, as the run that trained it evaluated it': a teacher run that
    evaluated another split (another split_seed, another validation fraction) gives no figure."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.97}))
    recorded = {"dataset_name": "builtin:digits", "train_val_split": 0.3}
    (teacher / "distill_config.yaml").write_text(yaml.safe_dump(recorded))
    assert read_teacher_run(str(teacher), SETTINGS) == 0.97
    for other in ({"split_seed": 7}, {"train_val_split": 0.2}, {"max_eval_samples": 50}):
        (teacher / "distill_config.yaml").write_text(yaml.safe_dump({**recorded, **other}))
        assert read_teacher_run(str(teacher), SETTINGS) is None, other
    # read when the run starts: a retrain of the teacher's folder meanwhile put another teacher's figure
    # beside this one's on the card (its 5% next to the 90% of the teacher that taught the student)
    (teacher / "distill_config.yaml").write_text(yaml.safe_dump(recorded))
    data = DataArguments(**{key: value for key, value in SETTINGS.items() if value is not None})
    facts = card_facts_of(ModelArguments(model_name_or_path="config:vit", teacher_model_name_or_path=str(teacher)),
                          data, 6)
    assert facts.teacher_own_accuracy == 0.97


def test_a_baseline_with_no_recorded_recipe_is_claimed_neither_same_nor_another(tmp_path):
    """A student-alone run from Python records no recipe: nothing is known of its images or its
    student. It was called "same images" (and comparable, with a gain) where this run's data
    settings were the defaults, and "another student" where its student was not the default one."""
    from hf_rcka.arguments import recipe_defaults
    from hf_rcka.trainer.card_facts import SPLIT_KEYS, STUDENT_KEYS, TrainingRecord

    baseline = _baseline_run(tmp_path, steps=10)
    defaults = recipe_defaults()
    settings = {k: defaults.get(k) for k in SPLIT_KEYS}
    student = {k: defaults.get(k) for k in STUDENT_KEYS}
    _, note, comparable = read_baseline(str(baseline), settings, student, TrainingRecord({}, 10, 64, 1e-3))
    assert note == "run `alone`, other evaluation images" and not comparable
    _, note, comparable = read_baseline(str(baseline), settings, {**student, "model_name_or_path": "config:resnet"})
    assert "another student" not in note and not comparable
    assert read_teacher_run(str(baseline), settings) is None


def test_a_baseline_that_recorded_no_optimizer_steps_is_not_comparable(tmp_path):
    """A baseline folder without trainer_state.json (its state not saved, or removed) trained for
    an unknown number of steps: it was called comparable, and the card claimed a gain over it."""
    from hf_rcka.arguments import recipe_defaults
    from hf_rcka.trainer.card_facts import STUDENT_KEYS, TrainingRecord

    baseline = _baseline_run(tmp_path)
    settings = dict(DIGITS_SPLIT)
    recorded = {"dataset_name": "builtin:digits", "learning_rate": 1e-3}
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump(recorded))
    student = {k: recipe_defaults().get(k) for k in STUDENT_KEYS}
    _, note, comparable = read_baseline(str(baseline), settings, student, TrainingRecord(recorded, 10, 64, 1e-3))
    assert note == "run `alone`, same images, trained otherwise (unrecorded optimizer steps against this run's 10)"
    assert not comparable
    (baseline / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    assert read_baseline(str(baseline), settings, student, TrainingRecord(recorded, 10, 64, 1e-3))[2]


def test_a_baseline_is_compared_by_its_evaluations_and_smoothing_in_effect(tmp_path):
    """eval_steps unset evaluates every logging_steps (transformers), so a best-model baseline of
    eval_steps unset and logging_steps 10 chose among the same evaluations as a run of eval_steps
    10; and a ce spec at weight 0 is left out, so its label_smoothing trains nothing: both were
    called "trained otherwise" (no gain on the card) with the same training."""
    from hf_rcka.trainer.card_facts import TrainingRecord

    baseline = _baseline_run(tmp_path, steps=10)
    settings = dict(DIGITS_SPLIT)
    selecting = {"dataset_name": "builtin:digits", "learning_rate": 1e-3, "load_best_model_at_end": True,
                 "eval_strategy": "steps", "save_strategy": "steps", "logging_steps": 10}
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump(selecting))
    mine = {**selecting, "eval_steps": 10}
    assert read_baseline(str(baseline), settings, None, TrainingRecord(mine, 10, 64, 1e-3))[1] == \
        "run `alone`, same images"
    assert "eval_steps differ" in read_baseline(str(baseline), settings, None,
                                                TrainingRecord({**selecting, "eval_steps": 5}, 10, 64, 1e-3))[1]
    # evaluated once per epoch on both sides, eval_steps decides nothing (a mutant comparing it
    # whenever either side kept its best checkpoint passed every test)
    per_epoch = {**selecting, "eval_strategy": "epoch", "save_strategy": "epoch"}
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump(per_epoch))
    assert read_baseline(str(baseline), settings, None, TrainingRecord({**per_epoch, "eval_steps": 5}, 10, 64, 1e-3)
                         )[1] == "run `alone`, same images"
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump(selecting))
    plain = {"dataset_name": "builtin:digits", "learning_rate": 1e-3,
             "losses": [{"name": "ce", "weight": 0, "label_smoothing": 0.3}, {"name": "kd"}]}
    (baseline / "distill_config.yaml").write_text(yaml.safe_dump(plain))
    mine = {**plain, "losses": [{"name": "kd"}]}
    assert read_baseline(str(baseline), settings, None, TrainingRecord(mine, 10, 64, 1e-3))[1] == \
        "run `alone`, same images"


def test_a_card_of_a_folder_without_a_processor_says_so_at_the_snippet(tmp_path):
    """A run given no image processor saves none, and the snippet's AutoImageProcessor fails on the
    folder: a mutant that never wrote the note passed every test."""
    card, _ = _card(tmp_path / "none", has_processor=False)
    assert "This folder holds no image processor (`preprocessor_config.json`)" in card.text
    card, _ = _card(tmp_path / "saved")
    assert "holds no image processor" not in card.text


def test_the_loss_notes_name_only_the_terms_the_table_holds(tmp_path):
    """The results table explains `eval_<term>_loss` and, for `eval_ce_loss`, that it is plain
    cross-entropy (the training loss may smooth labels). Mutants that dropped the cross-entropy
    sentence, or wrote the per-term note under a table with `eval_loss` alone (a supervised run's),
    passed every test."""
    terms = {"eval_accuracy": 0.9, "eval_loss": 1.5, "eval_ce_loss": 1.0, "eval_kd_loss": 0.5}
    card, _ = _card(tmp_path / "terms", metrics=terms)
    assert "Each `eval_<term>_loss` is the term times its weight" in card.text
    assert "`eval_ce_loss` is plain cross-entropy, without label smoothing." in card.text
    card, _ = _card(tmp_path / "plain", teacher_name=None, losses={"ce": 1.0},
                    metrics={"eval_accuracy": 0.9, "eval_loss": 1.0})
    assert "| eval_loss | 1.0000 |" in card.text
    assert "eval_<term>_loss" not in card.text and "plain cross-entropy" not in card.text


def test_the_card_counts_a_relation_over_the_processes_only_where_it_gathers_them():
    """A relational term evaluated on 2 processes compares each process's batch alone unless its
    loss gathers the rows: without gather the card said it compared 2 x 8 images at once."""
    from types import SimpleNamespace

    from hf_rcka import LOSSES
    from hf_rcka.trainer.card_facts import complete_card_facts

    losses = {"rcka": LOSSES.build("rcka"), "kd": LOSSES.build("kd")}
    model = SimpleNamespace(teacher=None, needs_teacher=False, teacher_other_classes=False, losses=losses)
    args = SimpleNamespace(per_device_eval_batch_size=8, world_size=2, baseline_dir=None)
    trainer = SimpleNamespace(card_facts=CardFacts(), distillation_model=model, eval_dataset=[], args=args)
    assert complete_card_facts(trainer).relation_batches == {"rcka_intra": 8, "rcka_inter": 8}
    losses["rcka"] = LOSSES.build("rcka", gather=True)
    assert complete_card_facts(trainer).relation_batches == {"rcka_intra": 16, "rcka_inter": 16}


def test_the_card_names_a_timm_students_architecture_and_its_arguments(tmp_path):
    """A timm student's card said `TimmWrapperForImageClassification` for its architecture, whatever
    timm model it held: a reader could not tell a ViT from a ResNet (the transformers class only
    wraps it; the timm name and its create_model arguments are what a user rebuilds it with)."""
    from hf_rcka.models.loading import load_image_classifier

    student = load_image_classifier("timm/resnet10t", num_labels=3, from_scratch=True,
                                    config_overrides={"channels": [8, 8, 8, 8]})
    card, _ = _card(tmp_path, student=student)
    line = next(line for line in card.text.splitlines() if line.startswith("- Student architecture:"))
    assert "timm `resnet10t`" in line and "channels=[8, 8, 8, 8]" in line, line
    assert "`TimmWrapperForImageClassification`" in line  # how transformers loads it, still said
    card, _ = _card(tmp_path / "hf")
    assert "- Student architecture: `ViTForImageClassification` (" in card.text
