"""CPU seconds from an image folder on disk to the training split, hf_rcka's listing next to datasets' imagefolder.

DeiT's training code reads ImageNet as a folder (``train/<wnid>/*.JPEG``, 1.28M files), and so do
users with a local copy (``train_dir``/``validation_dir``). Both sides below start from the same
folder and end with the same rows (checked before anything is reported):

* imagefolder: ``datasets.load_dataset("imagefolder", data_files=...)``, how hf_rcka read
  ``train_dir`` until it built the splits itself: datasets lists the files through fsspec and reads
  each one's metadata to key its cache, on every run; the first run also writes an Arrow copy.
  Measured "cold" (a fresh cache folder) and "warm" (the same cache again, as a second run);
* hf_rcka: ``check_data_dirs`` (the class-folder checks every run makes, listing the files as
  they go) plus ``load_raw_datasets`` of the same recipe, which builds the splits from that
  listing, every run; "listed twice": the load lists the class folders once more itself, as it
  did until it took the check's listing. A large split is then memory-mapped from an Arrow file of
  its rows in datasets' cache (``hf_rcka/data/mapped_splits.py``): measured "first" (a fresh cache:
  the file is written) and on every later run (it is there); and "in memory", the split held in
  memory as small ones are (and, before that module, every one was).

What a DataLoader worker started with ``spawn`` or ``forkserver`` receives of the training split is
measured too, in memory and memory-mapped: its pickled size, that of a ``max_train_samples`` subset
of a tenth of it, and (``--workers``, Linux) the resident memory of that many spawned workers after
their first batch: ``RssAnon``, the worker's own memory, where an unpickled copy of the rows lives,
and ``RssFile``, pages of files (its libraries, and those of the mapped file it has read).

The images are one small JPEG per class and split, hard-linked under every name (no image is decoded by either side:
the cost is the listing), in ImageNet-like class folders (``n00000000``...). Times are the
process's CPU time (``time.process_time``), which other load on a shared machine disturbs less
than wall time; each side runs ``--repeats`` times, the median is reported. The per-file rates
scale linearly with the folder's size (the table's last column gives them), which is how an
ImageNet-size folder is extrapolated.

Usage::

    python benchmarks/folder_listing.py                      # 20,000 files in 1,000 classes (~1 min)
    python benchmarks/folder_listing.py --files 200000       # closer to ImageNet (~8 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hf_rcka, not an installed one

import _provenance  # noqa: E402  (benchmarks/, the script's folder)

IMAGENET_FILES = 1_281_167 + 50_000  # ImageNet-1k's training and validation images


def write_folder(root: Path, files: int, classes: int) -> tuple[Path, Path]:
    """``root/train`` and ``root/val``, class folders of hard links to an 8x8 JPEG, one per class and
    split (a file takes at most 65,000 links on ext4, and hf_rcka refuses one file in both splits);
    val holds a tenth as many files."""
    folders = root / "train", root / "val"
    for folder, count in zip(folders, (files, max(classes, files // 10))):
        sources = root / "sources" / folder.name
        sources.mkdir(parents=True)
        for k in range(classes):
            Image.fromarray(np.full((8, 8, 3), k % 256, np.uint8)).save(sources / f"{k}.jpg")
        for i in range(count):
            k = i % classes
            class_folder = folder / f"n{k:08d}"
            class_folder.mkdir(parents=True, exist_ok=True)
            os.link(sources / f"{k}.jpg", class_folder / f"n{k:08d}_{i}.JPEG")
    return folders


def _cpu(work) -> tuple[float, object]:
    start = time.process_time()
    result = work()
    return time.process_time() - start, result


def imagefolder(train: Path, val: Path, cache: Path):
    import datasets

    files = {"train": os.path.join(str(train), "**"), "validation": os.path.join(str(val), "**")}
    return datasets.load_dataset("imagefolder", data_files=files, drop_labels=False, cache_dir=str(cache))


def ours(train: Path, val: Path, listed_again: bool = False):
    """``listed_again``: the load lists the folders itself, not taking the check's listing (as
    hf_rcka did before the load took it)."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.data import image_folders
    from hf_rcka.data.datasets import load_raw_datasets

    args = DataArguments(train_dir=str(train), validation_dir=str(val))
    image_folders.check_data_dirs(args)
    if listed_again:
        image_folders._listed.clear()
    return load_raw_datasets(args)


def worker_memory(split, workers: int) -> dict:
    """What ``workers`` DataLoader workers started with ``spawn`` receive of ``split`` (its pickled
    bytes, and a tenth of it as ``max_train_samples`` draws it) and, on Linux, the kB of memory each
    holds after its first batch (``RssAnon``, ``RssFile``; the mean of the workers)."""
    import pickle

    import datasets
    import torch

    from hf_rcka.data.datasets import seeded_subset

    split = split.cast_column("image", datasets.Image(decode=False))  # as training reads it: no image decoded here
    out = {"pickled_bytes": len(pickle.dumps(split)),
           "subset_pickled_bytes": len(pickle.dumps(seeded_subset(split, len(split) // 10, 42)))}
    if workers and sys.platform.startswith("linux"):
        loader = torch.utils.data.DataLoader(split, batch_size=64, num_workers=workers, collate_fn=len,
                                             multiprocessing_context="spawn")
        batches = iter(loader)
        next(batches)
        held = [_status_kb(process.pid) for process in batches._workers]
        out.update({key: statistics.mean(worker[key] for worker in held) for key in ("RssAnon", "RssFile")})
        del batches
    return out


def _status_kb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) for key in ("RssAnon", "RssFile")}


def rows(raw) -> dict:
    """Each split's (path, class name) rows, in order, and the class names: what training reads."""
    out = {}
    for split in ("train", "validation"):
        table = raw[split].with_format("arrow")[:]
        names = raw[split].features["label"].names
        paths = [image["path"] for image in table.column("image").to_pylist()]
        out[split] = (names, list(zip(paths, (names[i] for i in table.column("label").to_pylist()))))
    return out


def measure(files: int, classes: int, repeats: int, workers: int) -> dict:
    import datasets

    import hf_rcka.data.datasets  # noqa: F401  (imported before any timing: both sides' imports are excluded)
    from hf_rcka.data import mapped_splits

    datasets.disable_progress_bars()
    mapped_from = mapped_splits.MAPPED_FROM_BYTES
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, val = write_folder(root, files, classes)
        paths = [str(path) for folder in (train, val) for path in folder.rglob("*.JPEG")]
        total, mean_path_length = len(paths), sum(map(len, paths)) / len(paths)
        times: dict[str, list[float]] = {side: [] for side in SIDES}
        theirs = mine = in_memory = None
        mapped_splits.MAPPED_FROM_BYTES = float("inf")
        ours(train, val)  # not timed: the first listing's one-time costs (Pillow's plugins) fall on no side
        mapped_splits.MAPPED_FROM_BYTES = mapped_from
        for k in range(repeats):  # alternated, so that a slow spell of the machine falls on both
            cache = root / f"cache{k}"
            seconds, theirs = _cpu(lambda: imagefolder(train, val, cache))
            times["imagefolder_cold"].append(seconds)
            times["imagefolder_warm"].append(_cpu(lambda: imagefolder(train, val, cache))[0])
            datasets.config.HF_DATASETS_CACHE = str(cache / "hf_rcka")  # where hf_rcka maps its splits from
            for side in HF_RCKA_ORDERS[k % len(HF_RCKA_ORDERS)]:  # the first after imagefolder pays more: rotated
                mapped_splits.MAPPED_FROM_BYTES = float("inf") if side == "hf_rcka_in_memory" else mapped_from
                seconds, splits = _cpu(lambda: ours(train, val, listed_again=side == "hf_rcka_listed_twice"))
                times[side].append(seconds)
                if side == "hf_rcka_in_memory":
                    in_memory = splits
                elif side != "hf_rcka_listed_twice":
                    mine = splits
            mapped_splits.MAPPED_FROM_BYTES = mapped_from
            if k < repeats - 1:
                shutil.rmtree(cache)
        if not rows(theirs) == rows(mine) == rows(in_memory):
            raise SystemExit("the sides read different rows: nothing to compare")
        held = sum(in_memory[split].data.nbytes for split in ("train", "validation"))  # in memory, on each process
        mapped = {split: bool(mine[split].cache_files) for split in ("train", "validation")}
        workers_got = {"in_memory": worker_memory(in_memory["train"], workers),
                       "mapped": worker_memory(mine["train"], workers)}
    medians = {side: statistics.median(values) for side, values in times.items()}
    return {"files": total, "mean_path_length": mean_path_length, "classes": classes, "repeats": repeats, "cpu_seconds": times, "median_cpu_seconds": medians,
            "ms_per_file": {side: 1000 * value / total for side, value in medians.items()},
            "hf_rcka_bytes_in_memory": held, "hf_rcka_bytes_per_file": held / total,
            "mapped_from_bytes": mapped_from, "mapped": mapped, "workers": workers, "train_split_in_a_worker": workers_got,
            "imagenet_estimate_seconds": {side: value / total * IMAGENET_FILES for side, value in medians.items()}}


# hf_rcka's sides in each repeat: "first" (a fresh cache) before "hf_rcka" and "listed_twice" (the file is there)
HF_RCKA_ORDERS = (("hf_rcka_first", "hf_rcka", "hf_rcka_listed_twice", "hf_rcka_in_memory"),
                  ("hf_rcka_in_memory", "hf_rcka_first", "hf_rcka_listed_twice", "hf_rcka"),
                  ("hf_rcka_first", "hf_rcka_in_memory", "hf_rcka", "hf_rcka_listed_twice"))
SIDES = {"imagefolder_cold": "datasets imagefolder, first run (lists + writes its Arrow copy)",
         "imagefolder_warm": "datasets imagefolder, later runs (lists to find its cache)",
         "hf_rcka_first": "hf_rcka, first run: folder checks (listing the files) + writes the mapped file",
         "hf_rcka": "hf_rcka, later runs: folder checks (listing the files; the file is there)",
         "hf_rcka_listed_twice": "hf_rcka, later runs, the folders listed again after the checks (as before 2026-12-07)",
         "hf_rcka_in_memory": "hf_rcka, the splits held in memory (as before the mapped file)"}


def table(result: dict) -> str:
    lines = [f"{result['files']:,} files in {result['classes']:,} class folders (train + val), median of "
             f"{result['repeats']} (process CPU seconds)", "",
             "| side | CPU s | ratio to datasets' later runs | ms per file | ImageNet-size estimate (1.33M files) |",
             "|---|---|---|---|---|"]
    baseline = result["median_cpu_seconds"]["imagefolder_warm"]  # what every run of datasets' imagefolder costs
    for side, label in SIDES.items():
        seconds = result["median_cpu_seconds"][side]
        estimate = result["imagenet_estimate_seconds"][side]
        lines.append(f"| {label} | {seconds:.2f} | {seconds / baseline:.3f} | {result['ms_per_file'][side]:.4f} | "
                     f"{estimate / 60:.1f} min |")
    per_file = result["hf_rcka_bytes_per_file"]
    lines += ["", f"hf_rcka's splits in memory: {result['hf_rcka_bytes_in_memory'] / 2**20:.1f} MiB, {per_file:.0f} bytes a "
              f"file (these paths are {result['mean_path_length']:.0f} characters on average), "
              f"{per_file * IMAGENET_FILES / 2**20:.0f} MiB at ImageNet's size; memory-mapped from "
              f"{result['mapped_from_bytes'] / 2**20:g} MiB a split: {result['mapped']}", "",
              ("| training split | pickled (a spawned worker receives it) | a tenth of it (max_train_samples) | "
               f"RssAnon of a worker ({result['workers']} spawned) | RssFile |"), "|---|---|---|---|---|"]
    for kind, got in result["train_split_in_a_worker"].items():
        rss = [f"{got[key] / 1024:.1f} MiB" if key in got else "-" for key in ("RssAnon", "RssFile")]
        lines.append(f"| {kind.replace('_', ' ')} | {got['pickled_bytes'] / 2**20:.2f} MiB | "
                     f"{got['subset_pickled_bytes'] / 2**20:.2f} MiB | {rss[0]} | {rss[1]} |")
    return "\n".join(lines)


def _positive(text: str) -> int:
    """A count of 1 or more: 0 ended in a ZeroDivisionError or the median of no samples, a traceback."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=_positive, default=20_000, help="training images (validation: a tenth more)")
    parser.add_argument("--classes", type=_positive, default=1000)
    parser.add_argument("--repeats", type=_positive, default=3)
    parser.add_argument("--workers", type=int, default=2, help="spawned DataLoader workers measured (0: none)")
    parser.add_argument("--json", default="bench_results/folder_listing.json")
    args = parser.parse_args(argv)
    if args.files < args.classes:  # val fills every class folder, train would leave some empty
        parser.error(f"--files {args.files} is fewer than --classes {args.classes}: give each class an image")
    measured = _provenance.commit(["hf_rcka", "benchmarks/folder_listing.py"])  # the code as the measurement starts
    result = measure(args.files, args.classes, args.repeats, args.workers)
    result.update(commit=measured,
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                  date=time.strftime("%Y-%m-%d"))
    print(table(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.json} (hf_rcka at {result['commit']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
