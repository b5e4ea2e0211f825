"""How often a step makes the host wait for the device: sync-like calls per step, counted on a CPU.

On a GPU the host queues kernels ahead of the device; a call that needs a device value on the host
(``.item()``, ``float``/``int``/``bool(t)``, ``.tolist()``, ``.cpu()``, a boolean-mask index, whose
size is read back) stops it until the device catches up, and the device then idles while the host
queues the next kernels. Which calls a step makes does not depend on the device, so they are
counted on a CPU, exactly: each would be a sync on a GPU. Copies of host values to the device
(``torch.tensor``/``as_tensor`` with a ``device``, ``new_tensor``: torch copies from pageable memory
and waits) are counted apart, as ``h2d``. Not counted: the data loader building a batch, and reads
of host tensors (what ``.cpu()`` returned, a copy here as on a GPU, its views, and what torch
computes from host tensors alone, as accelerate's ``max(sizes) == n``; a host tensor moved back to
the device would be missed, since ``.to(device)`` returns it as it is on a CPU).

Cases: plain ``transformers.Trainer`` (with hf_rcka's default ``compute_metrics``, so that it
evaluates through the same loop); ``DistillationTrainer`` with ``ce``, ``ce`` + ``kd``, and ``demo``:
the losses and feature pairs of ``recipes/rcka-vit_tiny_from_resnet10t-digits.yaml``, its ViT student
and the ResNet-10-T teacher (widths 16-128), built from configs with random weights, 16 px. Phases:
a training step that does not log, one that logs (``logging_steps`` 1), an evaluation batch. A
count per step is (a run of 2N steps or batches - a run of N) / N, so setup, first-step checks and
a run's end cancel; a fraction means something happens every few steps. ``logging_nan_inf_filter``
is off, as hf_rcka's arguments leave it without fp16 (``--nan-inf-filter``, Trainer's default: 2 more
per step).

    python benchmarks/device_syncs.py [--cases plain,ce,ce+kd,demo] [--steps 3] [--sites] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _provenance  # noqa: E402  (benchmarks/, the script's folder)
from hf_rcka import DistillationTrainer, DistillationTrainingArguments  # noqa: E402
from hf_rcka.trainer.metrics import accuracy_metrics  # noqa: E402

DEMO = yaml.safe_load((ROOT / "recipes" / "rcka-vit_tiny_from_resnet10t-digits.yaml").read_text())
LOSSES = {"plain": None, "ce": [{"name": "ce"}], "ce+kd": [{"name": "ce"}, {"name": "kd", "temperature": 4.0}],
          "demo": DEMO["losses"]}
PHASES = {"train": "training step, no log", "train_log": "training step that logs", "eval": "evaluation batch"}
READS = ("item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__")
NUM_LABELS = 10
TORCH_DIR = str(Path(torch.__file__).parent) + os.sep
LOADER = (TORCH_DIR + os.path.join("utils", "data"), os.path.join("accelerate", "data_loader.py"))


class SyncCounter:
    """Counts sync-like calls by (kind, site) while ``active``; the site is the first frame outside torch."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.active = False
        self._host: set[int] = set()  # storages of host tensors, kept alive so that no address is reused
        self._kept: list[torch.Tensor] = []

    def on_host(self, tensor: torch.Tensor) -> bool:
        return tensor.untyped_storage().data_ptr() in self._host

    def mark(self, tensor: torch.Tensor) -> torch.Tensor:
        """Take ``tensor`` and its views for host tensors from now on."""
        if tensor.numel():
            self._kept.append(tensor)
            self._host.add(tensor.untyped_storage().data_ptr())
        return tensor

    def _call(self, kind: str, read: torch.Tensor | None, original: Callable, *args, **kwargs) -> Any:
        """``original(*args, **kwargs)``, counted unless ``read`` is a host tensor or the data loader
        calls; nothing it calls in turn counts (torch dispatches a wrapped method back to the wrapper)."""
        self.active = False
        try:
            frame, site = sys._getframe(1), "?"
            while frame is not None:
                name = frame.f_code.co_filename
                if any(part in name for part in LOADER):
                    return original(*args, **kwargs)  # the data loader assembling a batch on the host
                if site == "?" and not name.startswith(TORCH_DIR) and name != __file__:
                    short = name.split(str(ROOT) + os.sep)[-1].split("site-packages" + os.sep)[-1]
                    site = f"{short}:{frame.f_lineno}"
                frame = frame.f_back
            if read is None or not self.on_host(read):
                self.counts[kind, site] += 1
            result = original(*args, **kwargs)
            return self.mark(result.clone()) if kind == "cpu" else result
        finally:
            self.active = True

    def install(self) -> None:
        """Wrap the counted torch functions (once per process)."""
        def read(name: str, original: Callable) -> Callable:
            def counted(tensor, *args, **kwargs):
                what = tensor if name != "__getitem__" else _bool_mask(args[0])
                if not self.active or what is None:
                    return original(tensor, *args, **kwargs)
                return self._call("bool_mask_index" if name == "__getitem__" else name, what, original, tensor,
                                  *args, **kwargs)
            return counted

        def copy(name: str, original: Callable) -> Callable:
            def counted(*args, **kwargs):
                if not self.active or (name != "new_tensor" and kwargs.get("device") is None):
                    return original(*args, **kwargs)
                return self._call(f"h2d:{name}", None, original, *args, **kwargs)
            return counted

        for name in (*READS, "__getitem__"):
            setattr(torch.Tensor, name, read(name, getattr(torch.Tensor, name)))
        torch.Tensor.new_tensor = copy("new_tensor", torch.Tensor.new_tensor)
        torch.tensor, torch.as_tensor = copy("tensor", torch.tensor), copy("as_tensor", torch.as_tensor)

    def during(self, run: Callable[[], Any]) -> collections.Counter:
        """The counts of what ``run()`` calls (Trainer's printed logs swallowed)."""
        self.counts.clear()
        self.active = True
        try:
            with contextlib.redirect_stdout(io.StringIO()), _HostResults(self):
                run()
        finally:
            self.active = False
            self._host.clear()
            self._kept.clear()
        return collections.Counter(self.counts)


class _HostResults(TorchFunctionMode):
    """Marks what torch computes from host tensors alone as a host tensor too."""

    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.counter._host and isinstance(out, torch.Tensor):
            given = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if given and all(map(self.counter.on_host, given)):
                self.counter.mark(out)
        return out


def _bool_mask(index: Any) -> torch.Tensor | None:
    """The boolean mask in an index (its count of True sizes the result: a sync), if any."""
    parts = index if isinstance(index, tuple) else (index,)
    return next((p for p in parts if isinstance(p, torch.Tensor) and p.dtype == torch.bool), None)


def images(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` random 16 px images with labels, in memory."""
    g = torch.Generator().manual_seed(seed)
    labels, pixels = torch.randint(0, NUM_LABELS, (n,), generator=g).tolist(), torch.randn(n, 3, 16, 16, generator=g)
    return [{"pixel_values": x, "labels": y} for x, y in zip(pixels, labels, strict=True)]


def build_trainer(case: str, steps: int, logging_steps: int, batch: int, out: str,
                  nan_filter: bool) -> transformers.Trainer:
    """A fresh trainer of ``case`` with tiny random-weight models built from configs (offline)."""
    torch.manual_seed(0)
    student = transformers.ViTForImageClassification(transformers.ViTConfig(**DEMO["student_config_overrides"],
                                                                            num_labels=NUM_LABELS))
    common = dict(output_dir=out, per_device_train_batch_size=batch, per_device_eval_batch_size=batch, max_steps=steps,
                  logging_steps=logging_steps, logging_nan_inf_filter=nan_filter, save_strategy="no",
                  eval_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    train = images(batch * steps, seed=0)
    if case == "plain":
        return transformers.Trainer(model=student, args=transformers.TrainingArguments(**common), train_dataset=train,
                                    compute_metrics=accuracy_metrics)
    teacher = None
    if case != "ce":
        torch.manual_seed(1)
        teacher = transformers.TimmWrapperForImageClassification(transformers.TimmWrapperConfig(
            architecture="resnet10t", model_args={"channels": (16, 32, 64, 128)}, num_labels=NUM_LABELS)).eval()
    args = DistillationTrainingArguments(**common, losses=LOSSES[case], teacher_accuracy_check="off",
                                         feature_pairs=DEMO["feature_pairs"] if case == "demo" else None)

    def processor(mean: list[float], std: list[float]) -> transformers.ViTImageProcessor:
        return transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=mean, image_std=std)

    teacher_processor = processor([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if teacher else None
    return DistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=train,
                               processing_class=processor([0.5] * 3, [0.5] * 3), teacher_processor=teacher_processor)


def measure(counter: SyncCounter, case: str, phase: str, n: int, batch: int, nan_filter: bool) -> dict[str, float]:
    """``"kind site"`` -> calls per step of ``phase``: (runs of 2n steps - runs of n) / n, zeros left out."""
    with tempfile.TemporaryDirectory() as out:
        if phase == "eval":  # one untrained trainer evaluating sets of n and 2n batches
            trainer = build_trainer(case, 1, 10**6, batch, out, nan_filter)
            sets = [images(batch * k, seed=1) for k in (n, 2 * n)]
            short, long = (counter.during(functools.partial(trainer.evaluate, data, metric_key_prefix="test"))
                           for data in sets)
        else:
            every = 1 if phase == "train_log" else 10**6
            trainers = (build_trainer(case, k, every, batch, out, nan_filter) for k in (n, 2 * n))
            short, long = (counter.during(trainer.train) for trainer in trainers)
    steps = {f"{kind} {site}": (long[kind, site] - short[kind, site]) / n for kind, site in set(short) | set(long)}
    return dict(sorted(((k, v) for k, v in steps.items() if v), key=lambda kv: (-abs(kv[1]), kv[0])))


def summarize(sites: dict[str, float]) -> dict[str, Any]:
    """Syncs (reads) per step, hf_rcka's share of them, h2d copies, and the count by kind."""
    kinds: collections.Counter = collections.Counter()
    for key, n in sites.items():
        kinds[key.split(" ")[0]] += n
    reads = sum(n for kind, n in kinds.items() if not kind.startswith("h2d"))
    ours = sum(n for key, n in sites.items() if not key.startswith("h2d") and key.split(" ")[1].startswith("hf_rcka"))
    return {"syncs": reads, "hf_rcka": ours, "h2d": sum(kinds.values()) - reads, "by_kind": dict(kinds)}


def print_table(results: dict[str, dict[str, dict]], show_sites: bool) -> None:
    print("| case | phase | syncs per step | of which hf_rcka's | by kind | h2d copies |")
    print("|---|---|---|---|---|---|")
    for case, phases in results.items():
        for phase, r in phases.items():
            s = r["summary"]
            kinds = ", ".join(f"{k} {n:.3g}" for k, n in sorted(s["by_kind"].items()) if not k.startswith("h2d")) or "-"
            print(f"| {case} | {PHASES[phase]} | {s['syncs']:.3g} | {s['hf_rcka']:.3g} | {kinds} | {s['h2d']:.3g} |")
    for case, phases in results.items() if show_sites else ():
        for phase, r in phases.items():
            print(f"\n{case}, {PHASES[phase]}:" + ("" if r["sites"] else " none"))
            for key, n in r["sites"].items():
                print(f"  {n:>5.3g} {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(LOSSES))
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--steps", type=int, default=3, help="N: runs of N and 2N steps (evaluation batches)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--nan-inf-filter", action="store_true", help="Trainer's logging_nan_inf_filter on")
    parser.add_argument("--sites", action="store_true", help="also print where each sync comes from, per step")
    parser.add_argument("--json", default="bench_results/device_syncs.json")
    args = parser.parse_args()
    cases, phases = ([x.strip() for x in names.split(",") if x.strip()] for names in (args.cases, args.phases))
    unknown = sorted(set(cases) - set(LOSSES)) + sorted(set(phases) - set(PHASES))
    if unknown or args.steps < 1:
        raise SystemExit(f"unknown {unknown} (cases {list(LOSSES)}, phases {list(PHASES)}), or --steps below 1")
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    logging.getLogger("hf_rcka").setLevel(logging.ERROR)
    counter = SyncCounter()
    counter.install()
    measured = _provenance.commit(["hf_rcka", "benchmarks/device_syncs.py"])  # as the counting starts
    results: dict[str, dict[str, dict]] = {}
    for case in cases:
        for phase in phases:
            sites = measure(counter, case, phase, args.steps, args.batch, args.nan_inf_filter)
            results.setdefault(case, {})[phase] = {"summary": summarize(sites), "sites": sites}
    print_table(results, args.sites)
    meta = {"commit": measured,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
            "transformers": transformers.__version__, "steps": args.steps, "batch": args.batch,
            "logging_nan_inf_filter": args.nan_inf_filter}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
