"""Images per second of hf_rcka's training input pipeline next to timm's own loader, same folder, same run.

The folder holds realistic JPEGs this script writes (ImageNet-like sizes around 500 x 375, smooth
shapes plus sensor-like noise, quality 90, so decoding costs what it costs on real photos), one
sub-folder per class. Both sides do the same work per image with DeiT's training augmentation:
decode, random resized crop to 224 (bicubic), flip, RandAugment rand-m9-mstd0.5-inc1, normalise,
random erasing 0.25 in pixel mode, then collate into batches, with N worker processes. The two
transforms are compared before anything is measured, and the script stops if they differ:

* ours: ``load_raw_datasets`` + ``prepare_datasets`` (hf_rcka's listing of the image folder,
  timm's transform built from the student's processor) fed through ``DistillationTrainer.get_train_dataloader``,
  the loader training really uses (accelerate-prepared, our collate, the RA sampler when asked);
* timm: ``timm.data.create_dataset`` + ``timm.data.create_loader`` (no prefetcher, so the
  normalisation and erasing also happen in the workers, as in ours; ``re_mode`` is passed, since
  its default is ``const`` and DeiT's is ``pixel``). Its RandAugment gets the same
  zero-bit posterize fix ours has: unpatched, timm's loader stops with a Pillow 13 ValueError on
  the first magnitude-10 posterize draw.

Each sample is one pass over the folder after a warm-up pass (worker start-up excluded); the
sides alternate (A B, B A, ...), and each round's two passes give one paired ratio ours / timm
(>= 1.0: ours is no slower): the table gives the median of those ratios with their range and how
many fell below 1.0, next to each side's median rate.
On a shared machine wall-clock rates swing with other people's load, so the same comparison is
also made in CPU time: both loaders again with no workers, where the process's CPU time is all
the work (decode, augmentation, collate), reported as CPU ms per image and its ratio.

Usage::

    python benchmarks/data_throughput.py                        # 256 images, 2 workers (~2 min on 2 cores)
    python benchmarks/data_throughput.py --images 2048 --workers 8 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hf_rcka, not an installed one

import _provenance  # noqa: E402  (benchmarks/, the script's folder)

ARCH = "deit_small_patch16_224"
AUGMENTATION = dict(aa="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", train_interpolation="bicubic",
                    color_jitter=0.3)


def write_jpegs(root: Path, images: int, classes: int, seed: int = 0) -> None:
    """Photo-like JPEGs: blurred random shapes over a gradient, plus per-pixel noise."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        width, height = int(rng.integers(400, 640)), int(rng.integers(300, 480))
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([(x * rng.uniform(0.1, 0.5) + y * rng.uniform(0.1, 0.5) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=-1)
        image = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            box = sorted(rng.integers(0, width, 2)), sorted(rng.integers(0, height, 2))
            draw.ellipse([box[0][0], box[1][0], box[0][1], box[1][1]], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image = image.filter(ImageFilter.GaussianBlur(2))
        noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def ours_loader(folder: Path, batch_size: int, workers: int, output_dir: str):
    """The loader ``scripts/distill.py`` trains with, for a DeiT-S student (a tiny model stands in)."""
    from transformers import ViTConfig, ViTForImageClassification

    from hf_rcka import DistillationTrainer, DistillationTrainingArguments
    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.datasets import label_names, load_raw_datasets, prepare_datasets
    from hf_rcka.models.processors import load_image_processor

    data_args = DataArguments(train_dir=str(folder), validation_dir=str(folder), **AUGMENTATION)
    raw = load_raw_datasets(data_args)
    labels = label_names(raw["train"], data_args.label_column_name)
    processor = load_image_processor(f"timm/{ARCH}")
    train, _ = prepare_datasets(raw, data_args, processor, labels)
    args = DistillationTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0, use_cpu=True, report_to="none", losses=[{"name": "ce"}],
        dataloader_pin_memory=False,
    )
    model = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=32, num_labels=len(labels)))
    trainer = DistillationTrainer(model=model, args=args, train_dataset=train, processing_class=processor,
                                  augmentation=data_args)
    return trainer.get_train_dataloader()


def timm_loader(folder: Path, batch_size: int, workers: int):
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.models import get_pretrained_cfg

    from hf_rcka.data.transforms import _with_zero_bit_posterize

    config = resolve_data_config(get_pretrained_cfg(ARCH).to_dict())
    dataset = create_dataset("", root=str(folder), split="train", is_training=True)
    loader = create_loader(
        dataset, input_size=config["input_size"], batch_size=batch_size, is_training=True, use_prefetcher=False,
        auto_augment=AUGMENTATION["aa"], re_prob=AUGMENTATION["reprob"], re_mode=AUGMENTATION["remode"],
        color_jitter=AUGMENTATION["color_jitter"], interpolation=AUGMENTATION["train_interpolation"],
        mean=config["mean"], std=config["std"], num_workers=workers, persistent_workers=workers > 0, pin_memory=False,
    )
    dataset.transform = _with_zero_bit_posterize(dataset.transform)  # before any worker starts
    check_same_augmentation(dataset.transform)
    return loader


def check_same_augmentation(timm_transform) -> None:
    """Stop if timm's loader would augment differently from ours (a default of one side changed)."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.transforms import train_transform
    from hf_rcka.models.processors import load_image_processor

    ours = train_transform(load_image_processor(f"timm/{ARCH}"), DataArguments(train_dir=".", **AUGMENTATION))
    if repr(ours) != repr(timm_transform):
        raise RuntimeError(f"the two loaders augment differently:\nours: {ours}\ntimm: {timm_transform}")


def images_per_second(loader: Iterable) -> tuple[float, int]:
    """One full pass; images per second and the number of images seen."""
    count, start = 0, time.perf_counter()
    for batch in loader:
        pixels = batch["pixel_values"] if isinstance(batch, dict) else batch[0]
        count += pixels.shape[0]
    return count / (time.perf_counter() - start), count


def cpu_ms_per_image(loader: Iterable) -> float:
    """CPU time of this process per image over one pass (meaningful with no worker processes)."""
    start = time.process_time()
    _, count = images_per_second(loader)
    return 1000.0 * (time.process_time() - start) / count


def interleaved(loaders: dict[str, Iterable], measure, repeats: int) -> dict[str, list[float]]:
    for loader in loaders.values():
        images_per_second(loader)  # warm-up pass: worker start-up, file cache
    samples: dict[str, list[float]] = {name: [] for name in loaders}
    # The same loader's passes drift within a process (a profile of this benchmark: 3.4 s, then
    # 4.5 s for identical work in the C decoders), so the order alternates (A B, B A, ...) and no
    # side always runs first.
    names = list(loaders)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            samples[name].append(measure(loaders[name]))
    return samples


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    measured = _provenance.commit(["hf_rcka", "benchmarks/data_throughput.py"])  # as the measurement starts
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_jpegs(folder, args.images, args.classes)

        def build(workers: int) -> dict[str, Iterable]:
            return {"ours": ours_loader(folder, args.batch_size, workers, os.path.join(tmp, f"out{workers}")),
                    "timm": timm_loader(folder, args.batch_size, workers)}

        loaders = build(args.workers)
        seen = {name: sum(len(b["pixel_values"] if isinstance(b, dict) else b[0]) for b in loader)
                for name, loader in loaders.items()}
        rates = interleaved(loaders, lambda loader: images_per_second(loader)[0], args.repeats)
        cpu = interleaved(build(0), cpu_ms_per_image, args.repeats) if args.cpu_time else {}
    medians = {name: statistics.median(values) for name, values in rates.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    paired = [ours / timm for ours, timm in zip(rates["ours"], rates["timm"])]  # the same round's two passes
    return {
        "paired_ratios_ours_over_timm": paired, "median_paired_ratio": statistics.median(paired),
        "images": args.images, "images_per_pass": seen, "workers": args.workers, "batch_size": args.batch_size,
        "repeats": args.repeats, "augmentation": AUGMENTATION, "samples_images_per_s": rates,
        "median_images_per_s": medians, "ratio_ours_over_timm": medians["ours"] / medians["timm"],
        "samples_cpu_ms_per_image": cpu, "median_cpu_ms_per_image": cpu_medians,
        "cpu_ratio_timm_over_ours": cpu_medians["timm"] / cpu_medians["ours"] if cpu_medians else None,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        **_measured_when(measured),
    }


def _measured_when(commit: str) -> dict:
    """When, at which commit (read as the measurement started) and on how loaded a machine the
    numbers were taken."""
    from datetime import datetime, timezone

    return {"commit": commit, "load_average_at_end": os.getloadavg()[0],
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def table(result: dict) -> str:
    medians, ratio = result["median_images_per_s"], result["ratio_ours_over_timm"]
    cpu, paired = result["median_cpu_ms_per_image"], result["paired_ratios_ours_over_timm"]
    lines = [
        f"Training input pipeline, {result['images']} JPEGs, {result['workers']} workers, batch "
        f"{result['batch_size']}, median of {result['repeats']} passes",
        "",
        "| loader | images/s | CPU ms / image (no workers) | images per pass |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {medians[name]:.1f} | {cpu[name]:.2f} | {result['images_per_pass'][name]} |" if cpu else
          f"| {name} | {medians[name]:.1f} | - | {result['images_per_pass'][name]} |" for name in medians),
        "",
        f"paired ratio ours / timm per round: median **{result['median_paired_ratio']:.2f}** images/s "
        f"(target >= 1.0; range {min(paired):.2f}-{max(paired):.2f}, {sum(r < 1.0 for r in paired)} of "
        f"{len(paired)} rounds below 1.0); ratio of the medians {ratio:.2f}"
        + (f"; **{result['cpu_ratio_timm_over_ours']:.2f}** in CPU time per image (timm / ours)" if cpu else ""),
    ]
    return "\n".join(lines)


def _positive(text: str) -> int:
    """A count of 1 or more: 0 ended in a ZeroDivisionError or the median of no samples, a traceback."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give 1 or more")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=_positive, default=256)
    parser.add_argument("--classes", type=_positive, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=_positive, default=32)
    parser.add_argument("--repeats", type=_positive, default=3)
    parser.add_argument("--no-cpu-time", dest="cpu_time", action="store_false",
                        help="skip the single-process CPU-time comparison")
    parser.add_argument("--json", default="bench_results/data_throughput.json")
    args = parser.parse_args()
    result = run(args)
    print(table(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")  # as the other benchmarks say where their record is


if __name__ == "__main__":
    main()
