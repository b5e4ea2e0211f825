"""Cost of hf_rcka's CKA-family losses against the straightforward formulations they replace.

Three measurements, each forward + backward (gradient w.r.t. the student side), sides timed
interleaved in one process and reported as medians, with ratios taken within one run:

  (a) ``linear_cka`` vs the naive O(n^3) trace formula (explicit H, ``tr(KHLH)`` through full
      matrix products), for n items at a feature width p = q (a feature case and a logits case).
  (b) ``patch_cka`` batched over channels vs a per-channel Python loop that builds each channel's
      patch Gram and takes O(n^3) traces (the public reference code's style). The batched side is
      timed with both backends: the hand-written kernel and plain autograd, so a run on a device
      says which ``backend="auto"`` should pick there.
  (c) ``kernel_transfer`` (B x m against m class centres) vs the full B x B Gram feature CKA as the
      batch grows, with the growth factor per batch doubling; ``linear_cka`` (which switches to the
      d x d feature form for large B) is shown as a third column.

Usage::

    python benchmarks/loss_cost.py                       # CPU, default sizes (a few minutes at most)
    python benchmarks/loss_cost.py --device cuda --sizes 256,512,1024,2048,4096 --batches 64,...,16384
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hf_rcka, not an installed one

import _provenance  # noqa: E402  (benchmarks/, the script's folder)
from hf_rcka import functional  # noqa: E402
from hf_rcka.functional import pcka_kernel  # noqa: E402

Step = Callable[[], None]


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Step, device: torch.device, number: int) -> float:
    """Seconds per call, averaged over ``number`` back-to-back calls."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(number):
        step()
    _sync(device)
    return (time.perf_counter() - start) / number


def measure(steps: dict[str, Step], device: torch.device, repeats: int, min_sample_s: float = 0.05) -> dict[str, float]:
    """Median seconds per call of each step; the steps are interleaved within every repeat.

    Each step is warmed up once, then run enough times per sample that a sample lasts at least
    ``min_sample_s`` (so fast steps are not dominated by timer resolution).
    """
    numbers: dict[str, int] = {}
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():
        step()  # warm-up: allocator, kernels, autograd graph caches
        first = _time(step, device, 1)
        numbers[name] = max(1, int(min_sample_s / max(first, 1e-9)))
        if numbers[name] == 1:  # a slow step: its calibration run is already a valid sample
            samples[name].append(first)
    for _ in range(repeats):
        for name, step in steps.items():
            if len(samples[name]) < repeats:
                samples[name].append(_time(step, device, numbers[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


def forward_backward(loss_fn: Callable[..., torch.Tensor], student: torch.Tensor, *rest: torch.Tensor) -> Step:
    """One training-style step: loss forward, backward into ``student``, gradient cleared."""

    def step() -> None:
        loss_fn(student, *rest).backward()
        student.grad = None

    return step


# ----------------------------------------------------------------------------------------------
# The naive formulations being compared against
# ----------------------------------------------------------------------------------------------


def naive_trace_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``tr(KHLH) / sqrt(tr(KHKH) tr(LHLH))`` with an explicit centering matrix: O(n^3)."""
    n = x.shape[0]
    h = torch.eye(n, dtype=x.dtype, device=x.device) - 1.0 / n
    kh, lh = (x @ x.T) @ h, (y @ y.T) @ h
    return torch.trace(kh @ lh) / torch.sqrt(torch.trace(kh @ kh) * torch.trace(lh @ lh))


def loop_patch_cka(student: torch.Tensor, teacher: torch.Tensor, patch: int) -> torch.Tensor:
    """Per-channel Python loop: build each channel's (patches x pixels) matrices, O(n^3) CKA."""
    b, c, h, w = student.shape
    gh, gw = h // patch, w // patch

    def patches(fmap: torch.Tensor, ch: int) -> torch.Tensor:
        grid = fmap[:, ch].reshape(b, gh, patch, gw, patch).permute(1, 3, 0, 2, 4)
        return grid.reshape(gh * gw, b * patch * patch)

    values = [naive_trace_cka(patches(student, ch), patches(teacher, ch)) for ch in range(c)]
    return torch.stack(values).mean()


def full_gram_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Feature CKA through the B x B Grams (what a batch-relational feature loss computes)."""
    return functional.cka_from_grams(functional.gram_linear(x), functional.gram_linear(y))


# ----------------------------------------------------------------------------------------------
# The three benchmarks
# ----------------------------------------------------------------------------------------------


def _pair(rows: int, p: int, q: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, p, generator=g)
    y = 0.5 * x[:, :q] @ torch.randn(min(p, q), q, generator=g) if q <= p else torch.randn(rows, q, generator=g)
    y = y + torch.randn(rows, q, generator=g)
    return x.to(device).requires_grad_(), y.to(device)


def bench_cka_vs_naive(sizes: list[int], widths: list[int], device: torch.device, repeats: int) -> list[dict]:
    rows = []
    for width in widths:
        for n in sizes:
            x, y = _pair(n, width, width, device, seed=n + width)
            ours, naive = functional.linear_cka(x, y), naive_trace_cka(x, y)
            assert abs(ours.item() - naive.item()) < 1e-3, (ours.item(), naive.item())
            steps = {
                "ours": forward_backward(functional.linear_cka, x, y),
                "naive": forward_backward(naive_trace_cka, x, y),
            }
            times = measure(steps, device, repeats)
            rows.append({"width": width, "n": n, "ours_ms": 1e3 * times["ours"], "naive_ms": 1e3 * times["naive"],
                         "speedup": times["naive"] / times["ours"]})
            print(f"  (a) p=q={width} n={n}: {rows[-1]['speedup']:.1f}x", flush=True)
    return rows


def _student_grad(loss_fn: Callable[..., torch.Tensor], student: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    loss_fn(student, *rest).backward()
    grad, student.grad = student.grad, None
    return grad


def bench_patch_cka(channels: list[int], device: torch.device, repeats: int, batch: int = 8, side: int = 28,
                    patch: int = 4) -> list[dict]:
    rows = []
    for c in channels:
        g = torch.Generator().manual_seed(c)
        teacher = torch.randn(batch, c, side, side, generator=g)
        student = (0.7 * teacher + torch.randn(batch, c, side, side, generator=g)).to(device).requires_grad_()
        teacher = teacher.to(device)
        sides = {
            "kernel": lambda s, t: functional.patch_cka(s, t, patch, backend="kernel").mean(),
            "autograd": lambda s, t: functional.patch_cka(s, t, patch, backend="autograd").mean(),
            "loop": lambda s, t: loop_patch_cka(s, t, patch),
        }
        values = {name: loss(student, teacher).item() for name, loss in sides.items()}
        assert max(values.values()) - min(values.values()) < 1e-4, values
        grads = {name: _student_grad(loss, student, teacher) for name, loss in sides.items()}
        for name in ("kernel", "autograd"):
            assert (grads[name] - grads["loop"]).abs().max() < 1e-4 * grads["loop"].abs().max(), f"{name} gradient"
        times = measure({name: forward_backward(loss, student, teacher) for name, loss in sides.items()},
                        device, repeats)
        auto = pcka_kernel.default_backend(device)
        rows.append({"channels": c, "shape": [batch, c, side, side], "patch": patch,
                     **{f"{name}_ms": 1e3 * seconds for name, seconds in times.items()},
                     "auto_backend": auto, "batched_ms": 1e3 * times[auto],
                     "speedup": times["loop"] / times[auto], "kernel_speedup": times["autograd"] / times["kernel"]})
        print(f"  (b) ({batch}, {c}, {side}, {side}) patch {patch}: {rows[-1]['speedup']:.1f}x over the loop, "
              f"kernel {rows[-1]['kernel_speedup']:.2f}x as fast as autograd", flush=True)
    return rows


def bench_kernel_transfer(batches: list[int], device: torch.device, repeats: int, dim: int = 512,
                          classes: int = 100) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    centres_s = torch.randn(classes, dim, generator=g).to(device)
    centres_t = torch.randn(classes, dim, generator=g).to(device)
    rows = []
    for b in batches:
        student, teacher = _pair(b, dim, dim, device, seed=b)
        times = measure(
            {
                "kernel_transfer": forward_backward(
                    lambda s, t: functional.kernel_transfer_loss(s, t, centres_s, centres_t), student, teacher
                ),
                "full_gram_cka": forward_backward(lambda s, t: 1.0 - full_gram_cka(s, t), student, teacher),
                "linear_cka": forward_backward(lambda s, t: 1.0 - functional.linear_cka(s, t), student, teacher),
            },
            device,
            repeats,
        )
        row = {"batch": b, **{f"{k}_ms": 1e3 * v for k, v in times.items()}}
        if rows:
            for key in ("kernel_transfer", "full_gram_cka", "linear_cka"):
                row[f"{key}_growth"] = row[f"{key}_ms"] / rows[-1][f"{key}_ms"]
        rows.append(row)
        print(f"  (c) B={b} done", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def report(results: dict) -> str:
    parts = [f"Device: {results['device']} ({results['device_name']}), torch {results['torch']}, "
             f"{results['threads']} intra-op threads; forward + backward, median of {results['repeats']} repeats."]
    if results.get("cka_vs_naive"):
        parts.append("\n(a) linear_cka vs naive O(n^3) trace CKA (explicit H)\n")
        parts.append(_table(
            ["p = q", "n", "linear_cka (ms)", "naive (ms)", "speed-up"],
            [[str(r["width"]), str(r["n"]), _ms(r["ours_ms"]), _ms(r["naive_ms"]), f"{r['speedup']:.1f}x"]
             for r in results["cka_vs_naive"]],
        ))
    if results.get("patch_cka"):
        parts.append("\n(b) patch_cka batched (hand-written kernel and plain autograd) vs per-channel loop; "
                     "speed-up = loop / the backend 'auto' picks on this device\n")
        parts.append(_table(
            ["maps (B, C, H, W)", "patch", "patches x values", "kernel (ms)", "autograd (ms)", "kernel speed-up",
             "per-channel loop (ms)", "speed-up (auto)"],
            [[f"({r['shape'][0]}, {r['channels']}, {r['shape'][2]}, {r['shape'][3]})", str(r["patch"]),
              f"{(r['shape'][2] // r['patch']) ** 2} x {r['shape'][0] * r['patch'] ** 2}",
              _ms(r["kernel_ms"]), _ms(r["autograd_ms"]), f"{r['kernel_speedup']:.2f}x", _ms(r["loop_ms"]),
              f"{r['speedup']:.1f}x ({r['auto_backend']})"]
             for r in results["patch_cka"]],
        ))
    if results.get("kernel_transfer"):
        parts.append("\n(c) kernel_transfer (100 class centres) vs B x B feature CKA, d = 512; "
                     "growth = time / time at the previous batch size (--batches; 2x per doubling is linear)\n")

        def growth(row: dict, key: str) -> str:
            return f"{row[key + '_growth']:.2f}x" if key + "_growth" in row else "-"

        rows = results["kernel_transfer"]
        upper = rows[len(rows) // 2 :]
        doublings = math.log2(upper[-1]["batch"] / upper[0]["batch"]) if len(upper) > 1 else 0

        def per_doubling(key: str) -> str:
            if not doublings:
                return "-"
            return f"{(upper[-1][key + '_ms'] / upper[0][key + '_ms']) ** (1 / doublings):.2f}x"

        parts.append(_table(
            ["B", "kernel_transfer (ms)", "growth", "full B x B CKA (ms)", "growth", "linear_cka auto (ms)", "growth"],
            [[str(r["batch"]), _ms(r["kernel_transfer_ms"]), growth(r, "kernel_transfer"), _ms(r["full_gram_cka_ms"]),
              growth(r, "full_gram_cka"), _ms(r["linear_cka_ms"]), growth(r, "linear_cka")]
             for r in rows]
            + [[f"per doubling, B {upper[0]['batch']}-{upper[-1]['batch']}", "", per_doubling("kernel_transfer"), "",
                per_doubling("full_gram_cka"), "", per_doubling("linear_cka")]],
        ))
    return "\n".join(parts)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _settings(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sizes", type=_ints, default=[256, 512, 1024, 2048], help="(a) item counts n")
    parser.add_argument("--widths", type=_ints, default=[384, 100], help="(a) feature widths p = q")
    parser.add_argument("--channels", type=_ints, default=[64, 128, 256], help="(b) channel counts")
    parser.add_argument(
        "--pcka-settings", type=_settings, default=[(8, 28, 4), (2, 64, 16)],
        help="(b) BATCHxSIDExPATCH list: a classification-size map (8 images, 28 x 28, 4 px patches) and the "
             "reference's detection setting (2 images per device, an FPN-level 64 x 64 map, 16 px patches)",
    )
    parser.add_argument("--batches", type=_ints, default=[64, 128, 256, 512, 1024, 2048, 4096], help="(c) batch sizes")
    parser.add_argument("--parts", default="a,b,c", help="which benchmarks to run, e.g. 'a,c'")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="intra-op threads (default: 1 on CPU, so other work on a shared machine cannot stall OpenMP "
             "barriers and skew one side; 0 keeps torch's default)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per side (median reported)")
    parser.add_argument("--json", type=Path, default=Path("bench_results/loss_cost.json"))
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--parts`` with no known part (``ab``, ``d``) measured nothing and wrote a JSON of the run's
    metadata alone, exit 0; ``--repeats 0`` took the median of no samples in a traceback."""
    unknown = sorted(set(args.parts.split(",")) - {"a", "b", "c"})
    if unknown:
        parser.error(f"--parts: unknown {unknown}; give a comma-separated list of a, b and c (e.g. 'a,c')")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give 1 or more timed samples per side")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    results: dict = {"commit": _provenance.commit(["hf_rcka", "benchmarks/loss_cost.py"]),
                     "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "device": args.device, "device_name": name, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "repeats": args.repeats}
    parts = set(args.parts.split(","))
    if "a" in parts:
        results["cka_vs_naive"] = bench_cka_vs_naive(args.sizes, args.widths, device, args.repeats)
    if "b" in parts:
        results["patch_cka"] = [
            row
            for batch, side, patch in args.pcka_settings
            for row in bench_patch_cka(args.channels, device, args.repeats, batch, side, patch)
        ]
    if "c" in parts:
        results["kernel_transfer"] = bench_kernel_transfer(args.batches, device, args.repeats)
    print(report(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
