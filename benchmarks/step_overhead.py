"""What a distillation step costs over the step it cannot beat: a teacher forward + a student step.

The "limit" is one teacher forward under ``no_grad`` plus one plain student training step (task
loss, backward, optimizer step) on the same model objects. Every variant below is one full
optimizer step, timed interleaved with the limit (round-robin, one step of each per round) in one
process and reported as the median over rounds of ``variant / limit`` within each round, so
machine noise that hits a whole round cancels. Peak memory is measured per variant in a fresh
child process (CPU: the process's own resident high-water mark, ``VmHWM``, because tracemalloc
cannot see torch's allocator, with glibc's mmap threshold fixed so that it follows the live
tensors; CUDA: ``torch.cuda.max_memory_allocated``), as a ratio to the limit's child. On CPU that
peak includes the process's runtime (Python, torch, timm, transformers: about 790 MiB of a 1.1 GiB
limit at CPU size), which both sides hold and which pulls the ratio toward 1; so each child also
records its resident memory after the imports, before it builds anything, and the table gives
``(peak - runtime) / (limit's peak - limit's runtime)`` beside the whole-process ratio. On CUDA the
runtime is 0 and the two are the same.

``--extra-ops N`` measures what step times on a small CPU cannot resolve: it profiles N rounds of
one step of each variant (round-robin, like the timed steps) and prices only the calls (per op and
input shape) a variant adds to the limit's or drops, each at its own cost, as a ratio to the
limit's op time in the same round; the median over rounds is reported (see ``added_work``).
Whenever steps run, the table also gives each variant's matmul and convolution FLOPs over the
limit's (``flop_ratios``): the arithmetic a variant cannot shed without changing its method.

Variants: ``limit``; timm's ``LogitDistillationTask`` and ``FeatureDistillationTask`` (the same
timm models, unwrapped); hf_rcka ``kd``, ``rcka`` (logits), ``rcka+feature_cka`` and
``rcka+patch_cka`` (4 auto-paired hidden states each; patch CKA compares a random subset of the
teacher's channels per step, as many as the student has), ``rcka+patch_cka_all`` (the same with
every channel) and ``all`` (every loss at once).

Usage::

    python benchmarks/step_overhead.py                         # CPU, scaled down (a few minutes)
    python benchmarks/step_overhead.py --device cuda --full    # DeiT-S <- RegNetY-16GF, 224 px, batch 128, bf16
    python benchmarks/step_overhead.py --profile rcka+patch_cka  # where the time of one variant goes
    python benchmarks/step_overhead.py --rounds 0 --no-memory --extra-ops 7  # the work each variant adds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _provenance  # noqa: E402  (benchmarks/, the script's folder)
from hf_rcka.models.label_maps import LabelMaps  # noqa: E402
from hf_rcka.models.timm_models import build_timm_classifier  # noqa: E402
from hf_rcka.registry import LOSSES  # noqa: E402
from hf_rcka.modeling.distillation_model import DistillationModel  # noqa: E402
from hf_rcka.modeling.teacher_inputs import InputStats  # noqa: E402
from hf_rcka.modeling.teacher_runtime import is_convolutional  # noqa: E402

NUM_CLASSES = 100
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# (teacher, student, image size, batch): CPU-sized and the full-size GPU setting of the issue.
PAIRS = {
    "cnn2vit": {"cpu": ("regnety_008", "deit_tiny_patch16_224", 128, 16),
                "full": ("regnety_160", "deit_small_patch16_224", 224, 128)},
    "vit2cnn": {"cpu": ("deit_tiny_patch16_224", "resnet18", 128, 16),
                "full": ("deit_base_patch16_224", "resnet50", 224, 128)},
}
LOSS_SPECS = {
    "kd": [{"name": "ce"}, {"name": "kd"}],
    "rcka": [{"name": "ce"}, {"name": "rcka"}],
    "rcka+feature_cka": [{"name": "ce"}, {"name": "rcka"}, {"name": "feature_cka"}],
    "rcka+patch_cka": (PATCH_CKA := [{"name": "ce"}, {"name": "rcka"}, {"name": "patch_cka", "weight": 10.0}]),
    "rcka+patch_cka_all": PATCH_CKA,
    "all": [{"name": n} for n in ("ce", "kd", "rcka", "feature_cka", "patch_cka", "fitnet", "srd", "kernel_transfer")],
}
# rcka+patch_cka samples as many teacher channels per step as the student has (patch_match's default
# for per-channel losses); rcka+patch_cka_all compares every channel in every step, the same pairs.
ALL_CHANNELS = {"rcka+patch_cka_all"}
VARIANTS = ["limit", "timm_logit", "timm_feature", *LOSS_SPECS]
Step = Callable[[], None]


def build_models(pair: str, full: bool, device: torch.device, teacher_dtype: str | None, size: int | None = None):
    """The TimmWrapper teacher and student of ``pair`` (random weights), and input size and batch.

    ``size`` overrides the pair's input size; a ViT is built for it (timm's ViTs take one size)."""
    teacher_name, student_name, default_size, batch = PAIRS[pair]["full" if full else "cpu"]
    size = size or default_size
    models = []
    for seed, name in ((0, teacher_name), (1, student_name)):
        torch.manual_seed(seed)
        args = {"img_size": size} if "deit" in name or "vit" in name else {}
        models.append(build_timm_classifier(name, LabelMaps.default(NUM_CLASSES), model_args=args).to(device))
    teacher, student = models
    teacher.requires_grad_(False).eval()
    if is_convolutional(teacher):  # as DistillationModel would leave it; every variant shares this object
        teacher.to(memory_format=torch.channels_last)
    if teacher_dtype:
        teacher.to(getattr(torch, teacher_dtype))
    return teacher, student.train(), size, batch


def _optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def make_step(variant: str, teacher, student, size: int, batch: int, device: torch.device, bf16: bool,
              compile_student: bool = False) -> Step:
    """One optimizer step of ``variant`` on fresh random data of the pair's shape."""
    ce = torch.nn.CrossEntropyLoss()
    if variant == "limit":
        opt = _optimizer(student.parameters())

        # The limit gets the teacher's best case too: a CNN teacher shared with the hf_rcka variants
        # holds channels_last weights, so its input is made channels_last as well.
        layout = torch.channels_last if is_convolutional(teacher) else torch.contiguous_format

        def forward(x, y):
            with torch.no_grad():
                teacher(pixel_values=x.contiguous(memory_format=layout))
            return ce(student(pixel_values=x).logits, y)
    elif variant.startswith("timm_"):
        from timm.task import FeatureDistillationTask, LogitDistillationTask

        if variant == "timm_logit":
            task = LogitDistillationTask(student.timm_model, teacher.timm_model, criterion=ce, verbose=False)
        else:
            task = FeatureDistillationTask(
                student.timm_model, teacher.timm_model, criterion=ce, verbose=False,
                student_feature_dim=student.timm_model.num_features, teacher_feature_dim=teacher.timm_model.num_features,
            ).to(device)
        opt = _optimizer(task.trainable_module.parameters())

        def forward(x, y):
            return task(x, y)["loss"]
    else:
        stats = InputStats(*IMAGENET, (size, size))
        losses = [LOSSES.build(s["name"], **{k: v for k, v in s.items() if k != "name"}) for s in LOSS_SPECS[variant]]
        model = DistillationModel(student, teacher, losses, "auto", stats, stats).to(device).train()
        if variant in ALL_CHANNELS:
            pairs = [replace(p, options={**p.options, "sample_channels": None}) for p in model.feature_pairs]
            model = DistillationModel(student, teacher, losses, pairs, stats, stats).to(device).train()
        if compile_student:
            model.student = torch.compile(student)  # the wrapper calls self.student
        opt = _optimizer(model.parameters())

        def forward(x, y):
            return model(pixel_values=x, labels=y).loss

    def step() -> None:
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
        with _autocast(device, bf16):
            loss = forward(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.trainable = sum(p.numel() for group in opt.param_groups for p in group["params"])  # type: ignore[attr-defined]
    step.model = None if variant == "limit" or variant.startswith("timm_") else model  # type: ignore[attr-defined]
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Step, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def time_variants(steps: dict[str, Step], device: torch.device, rounds: int, warmup: int) -> dict[str, dict]:
    """Round-robin: per round one step of each variant; ratios to the limit taken within a round."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # no variant always follows the same one
        for name in order:
            samples[name].append(_timed(steps[name], device))
    result = {}
    for name, times in samples.items():
        ratios = sorted(t / lim for t, lim in zip(times, samples["limit"]))
        result[name] = {
            "median_s": statistics.median(times),
            "ratio": statistics.median(ratios),
            "ratio_q1": ratios[len(ratios) // 4],
            "ratio_q3": ratios[(3 * len(ratios)) // 4],
        }
    return result


def flop_ratios(steps: dict[str, Step]) -> dict[str, dict]:
    """The matmul and convolution FLOPs of one step of each variant (forward and backward), as a
    ratio to the limit's.

    This is the arithmetic a variant adds, whatever the machine. A learned projection's matmuls
    (patch CKA's adapters) cannot be dropped without changing the method, so unless they run
    faster per FLOP than the models' own layers, a variant's time ratio stays at or above its
    FLOP ratio. Counted by torch's ``FlopCounterMode`` (matmuls, convolutions and attention; not
    elementwise ops, which the time ratios price).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for name, step in steps.items():
        with FlopCounterMode(display=False) as counter:
            step()
        counts[name] = counter.get_total_flops()
    return {name: {"gflops": n / 1e9, "ratio": n / counts["limit"]} for name, n in counts.items()}


def _rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its peak (``VmHWM``), in MiB.

    The peak is ``VmHWM``, not ``getrusage().ru_maxrss``: Linux carries a parent's maxrss over
    into a child it starts, so every memory child reported the timing parent's peak (all ratios
    1.000 after a timed run); ``VmHWM`` starts anew with each program.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_memory(args: argparse.Namespace) -> None:
    """Child process: build the models, run warm-up + a few steps of one variant, print its peak.

    Also printed: ``runtime_mib``, what the process holds after its imports and before it builds
    anything (on CPU its ``VmRSS``: Python, torch, timm, transformers, about 790 MiB at CPU size;
    on CUDA the memory allocated then, 0). A CPU peak (``VmHWM``) includes it, a CUDA peak does not.
    """
    device = torch.device(args.device)
    import timm.task  # noqa: F401  (the timm variants import it in make_step; every child holds it)

    runtime = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mib()
    teacher, student, size, batch = build_models(args.pair, args.full, device, args.teacher_dtype, args.size)
    step = make_step(args.child, teacher, student, size, args.batch or batch, device, args.bf16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = _rss_mib()
    for _ in range(3):
        step()
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _rss_mib("VmHWM")
    if not peak >= base:
        raise RuntimeError(f"peak memory {peak:.0f} MiB below the post-build {base:.0f} MiB: the measure is broken")
    print(json.dumps({"peak_mib": peak, "base_mib": base, "runtime_mib": runtime, "trainable": step.trainable}))


def _child_env(device: str) -> dict[str, str]:
    """The memory children's environment. On CPU, glibc's malloc gets a fixed mmap threshold.

    By default glibc raises its mmap threshold each time a large mmapped block is freed, and the
    blocks of that size that follow come from the heap, where freed memory stays resident. So a
    process's peak depended on its allocation history, not only on what a step keeps alive: the
    batch-2 probe forward that plans the feature pairs raised every feature variant's peak by
    about 18 MiB that its steps could not reuse (vit2cnn at CPU size: limit steps after a
    teacher probe peaked 18 MiB higher than without it, 3 MiB with the threshold fixed). With a
    fixed threshold every large tensor is mapped and unmapped on its own, so ``VmHWM`` follows the
    live tensors, as CUDA's ``max_memory_allocated`` does.
    """
    env = dict(os.environ)
    if not device.startswith("cuda"):
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    return env


def _memory_child(args: argparse.Namespace, variant: str) -> dict:
    command = [sys.executable, __file__, "--child", variant, *_forwarded(args)]
    out = subprocess.run(command, capture_output=True, text=True, check=False, env=_child_env(args.device))
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_memory(args: argparse.Namespace, variants: list[str]) -> dict[str, dict]:
    """Each variant's peak in its own child. ``--memory-jobs`` children run at once: a peak is
    per process (``VmHWM``, ``max_memory_allocated``), so only the wall time changes, which on a
    GPU machine is mostly each child's imports and model build."""
    with ThreadPoolExecutor(max_workers=max(args.memory_jobs, 1)) as pool:
        peaks = pool.map(lambda variant: _memory_child(args, variant), variants)
        results = dict(zip(variants, peaks))
    limit = results["limit"]
    for r in results.values():
        r["ratio"] = r["peak_mib"] / limit["peak_mib"]
        # The peaks without the runtime (imported code) both sides hold: on CPU ``ratio`` counts it,
        # about 790 MiB of a 1.1 GiB limit at CPU size, which pulls every ratio toward 1. On CUDA
        # the runtime is 0 and this equals ``ratio``.
        r["ratio_above_runtime"] = ((r["peak_mib"] - r["runtime_mib"])
                                    / max(limit["peak_mib"] - limit["runtime_mib"], 1e-9))
        r["delta_ratio"] = (r["peak_mib"] - r["base_mib"]) / max(limit["peak_mib"] - limit["base_mib"], 1e-9)
        r["state_floor"] = state_floor(r["trainable"] - limit["trainable"], limit["peak_mib"])
        r["state_floor_above_runtime"] = state_floor(r["trainable"] - limit["trainable"],
                                                     limit["peak_mib"] - limit["runtime_mib"])
    return results


# float32 weight, gradient and AdamW's two moments: what each trainable parameter holds at the peak
STATE_BYTES = 16


def state_floor(added_params: int, limit_peak_mib: float) -> float:
    """The least peak over the limit's that a variant's own trainable weights allow.

    The projectors and regressors a loss trains (FitNets' regressors, SRD's projector, a 1 x 1
    projection to a wide teacher stage) are part of its method: their weights, gradients and
    optimizer moments are held at the peak whatever the implementation. Above this floor is what
    an implementation can still shed (kept activations, copies).
    """
    return (limit_peak_mib + added_params * STATE_BYTES / 2**20) / limit_peak_mib


def _activities(device: torch.device) -> list:
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def profile_variant(step: Step, device: torch.device, rows: int = 15) -> str:
    """The ops that take the time of ``step`` (torch.profiler, 3 steps after the warm-up)."""
    from torch.profiler import profile

    activities = _activities(device)
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def op_profile(step: Step, device: torch.device) -> dict[tuple[str, str], tuple[float, float]]:
    """Per (op, input shapes): calls and self time (ms) of one profiled step."""
    from torch.profiler import profile

    with profile(activities=_activities(device), record_shapes=True) as prof:
        step()
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {(e.key, str(e.input_shapes)): (e.count, getattr(e, key) / 1e3)
            for e in prof.key_averages(group_by_input_shape=True)}


def added_work(steps: dict[str, Step], device: torch.device, rounds: int) -> dict[str, dict]:
    """:func:`extra_op_ratio` of every variant, profiled round-robin like the timed steps.

    Each round profiles one step of every variant (the order reversed every other round), so a
    change in the machine's state between rounds (load, cache, memory) hits a variant and the
    limit it is compared with alike. The ratio is the median over rounds of each round's ratio,
    with its interquartile range; the largest added calls are priced over all rounds together.
    """
    for step in steps.values():
        step()  # unprofiled: the optimizer creates its state in the first step, which no later step does
    profiles: dict[str, list[dict]] = {v: [] for v in steps}
    for r in range(rounds):
        for v in (list(steps) if r % 2 == 0 else list(reversed(steps))):
            profiles[v].append(op_profile(steps[v], device))
    mean_limit = _mean_profile(profiles["limit"])
    results = {}
    for v, rows in profiles.items():
        per_round = [extra_op_ratio(row, limit) for row, limit in zip(rows, profiles["limit"])]
        ratios = sorted(e["ratio"] for e in per_round)
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        summary = {key: statistics.median(e[key] for e in per_round) for key in ("limit_ms", "added_ms", "dropped_ms")}
        pooled = extra_op_ratio(_mean_profile(rows), mean_limit)
        results[v] = {**summary, "ratio": statistics.median(ratios), "ratio_q1": q1, "ratio_q3": q3,
                      "rounds": rounds, "top_added": pooled["top_added"]}
    return results


def _mean_profile(profiles: list[dict]) -> dict[tuple[str, str], tuple[float, float]]:
    keys = {k for p in profiles for k in p}
    zero = (0.0, 0.0)
    return {k: tuple(statistics.fmean(p.get(k, zero)[i] for p in profiles) for i in (0, 1)) for k in keys}


def extra_op_ratio(variant: dict, limit: dict) -> dict[str, float]:
    """The variant's cost over the limit's, counting only the calls it adds or drops.

    Both steps run the same teacher and student ops; on a CPU those identical calls swing by
    10-40% between steps (page faults on fresh buffers, cache state), which no number of rounds
    averages away on two cores. Taking each (op, shapes) call that the variant adds (or drops)
    at its own mean cost, and leaving out the calls both run, measures the work the variant puts
    on top: loss math, adapters, layer capture, copies.
    """
    added_calls = {k: max(0.0, n - limit.get(k, (0.0, 0.0))[0]) * (ms / n) for k, (n, ms) in variant.items() if n}
    dropped = sum(max(0.0, n - variant.get(k, (0.0, 0.0))[0]) * (ms / n) for k, (n, ms) in limit.items() if n)
    base, added = sum(ms for _, ms in limit.values()), sum(added_calls.values())
    top = sorted(((ms, *k) for k, ms in added_calls.items() if ms > 0), reverse=True)[:12]
    return {"limit_ms": base, "added_ms": added, "dropped_ms": dropped, "ratio": (base + added - dropped) / base,
            "top_added": [{"ms": ms, "op": op, "shapes": shapes} for ms, op, shapes in top]}


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--pair", args.pair, "--threads", str(args.threads)]
    for flag in ("size", "batch", "teacher_dtype"):
        if getattr(args, flag):
            out += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return out + [flag for flag, on in (("--full", args.full), ("--bf16", args.bf16)) if on]


def table(pair: str, variants: list[str], timing: dict | None, memory: dict | None, flops: dict | None = None) -> str:
    head = ("| variant | median step (s) | time / limit | q1-q3 | peak mem (MiB) | "
            "peak mem / limit's (whole process, runtime included) | mem above baseline / limit's | "
            "trained-state floor (of the whole-process ratio) | (peak - runtime) / (limit's peak - runtime) | "
            "its trained-state floor | FLOPs / limit |")
    lines = [f"\n### {pair}\n", head, "|" + "---|" * 11]
    for name in variants:
        t, m, f = (timing or {}).get(name), (memory or {}).get(name), (flops or {}).get(name)
        tim = f"{t['median_s']:.3f} | {t['ratio']:.3f} | {t['ratio_q1']:.3f}-{t['ratio_q3']:.3f}" if t else "- | - | -"
        mem = (f"{m['peak_mib']:.0f} | {m['ratio']:.3f} | {m['delta_ratio']:.3f} | {m['state_floor']:.3f} | "
               f"{m['ratio_above_runtime']:.3f} | {m['state_floor_above_runtime']:.3f}" if m else "- | - | - | - | - | -")
        lines.append(f"| {name} | {tim} | {mem} | {f['ratio']:.4f} |" if f else f"| {name} | {tim} | {mem} | - |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", default="cnn2vit,vit2cnn", help="comma-separated: " + ",".join(PAIRS))
    parser.add_argument("--pair", default="cnn2vit", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--full", action="store_true", help="the full-size (GPU) models, 224 px, batch 128")
    parser.add_argument("--size", type=int, help="override the input size")
    parser.add_argument("--batch", type=int, help="override the batch size")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default on CUDA)")
    parser.add_argument("--teacher-dtype", choices=["bfloat16", "float16"], help="teacher weights in half precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student in the hf_rcka variants")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (0: memory only)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads on CPU (0 = torch's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory children")
    parser.add_argument("--memory-jobs", type=int, default=1, metavar="N",
                        help="memory children run at once (peaks are per process; on a GPU machine, 3-4 saves minutes)")
    parser.add_argument("--extra-ops", type=int, default=0, metavar="ROUNDS",
                        help="profile ROUNDS rounds (one step of each variant per round) and report the work "
                             "each variant's added ops cost")
    parser.add_argument("--profile", metavar="VARIANT", help="also print a profile of this variant")
    parser.add_argument("--json", default="bench_results/step_overhead.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _check_args(parser, args)
    args.bf16 = args.bf16 or args.device.startswith("cuda")
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A typo in ``--pairs`` stopped in a KeyError after the pairs before it had been measured (the
    JSON is written at the end, so their minutes were lost), and ``--device cuda`` on a machine
    without CUDA in torch's traceback: both are said in one line before anything is built."""
    unknown = sorted(set(args.pairs.split(",")) - set(PAIRS))
    if unknown:
        parser.error(f"unknown pairs {unknown}; --pairs takes a comma-separated list of {sorted(PAIRS)}")
    checked_device(parser, args.device, "--device", "step_overhead.py",
                   "leave --device out for the scaled-down CPU run")


def checked_device(parser: argparse.ArgumentParser, name: str, flag: str, script: str, cpu_run: str) -> torch.device:
    """``name`` as a torch device, or one line: a device torch cannot parse, or CUDA on a machine
    without it (torch's own error was a traceback once the models were built). ``cpu_run`` says
    how to run the script here instead."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        parser.error(f"{flag}: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{script}: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU "
                         f"machine, or {cpu_run}")
    return device


def run_pair(args: argparse.Namespace, pair: str, variants: list[str]) -> dict:
    device = torch.device(args.device)
    args.pair = pair
    teacher, student, size, batch = build_models(pair, args.full, device, args.teacher_dtype, args.size)
    batch = args.batch or batch
    steps = {} if not (args.rounds or args.profile or args.extra_ops) else {
        v: make_step(v, teacher, student, size, batch, device, args.bf16, args.compile) for v in variants}
    timing = time_variants(steps, device, args.rounds, args.warmup) if args.rounds else None
    images_per_s = {v: batch / t["median_s"] for v, t in (timing or {}).items()}
    profile = profile_variant(steps[args.profile], device) if args.profile in steps else None
    extra = added_work(steps, device, args.extra_ops) if args.extra_ops else {}
    flops = flop_ratios(steps) if steps and not args.compile else None
    memory = None if args.no_memory else measure_memory(args, variants)
    print(table(f"{pair}: teacher {PAIRS[pair]['full' if args.full else 'cpu'][0]} -> student "
                f"{PAIRS[pair]['full' if args.full else 'cpu'][1]}, {size} px, batch {batch}", variants, timing, memory,
                flops))
    if profile:
        print(f"\nprofile of {args.profile} ({pair}, 3 steps):\n{profile}")
    if extra:
        print(extra_table(extra, args.extra_ops))
    return {"size": size, "batch": batch, "timing": timing, "memory": memory, "images_per_s": images_per_s,
            "extra_ops": extra, "flops": flops}


def extra_table(extra: dict[str, dict], rounds: int) -> str:
    lines = [f"\nwork added over the limit (ops each variant adds or drops; {rounds} rounds of one profiled step of "
             f"each variant, medians over rounds):\n",
             "| variant | limit self time (ms) | added (ms) | dropped (ms) | ratio | q1-q3 |", "|---|---|---|---|---|---|"]
    lines += [f"| {v} | {e['limit_ms']:.0f} | {e['added_ms']:.1f} | {e['dropped_ms']:.1f} | {e['ratio']:.3f} | "
              f"{e['ratio_q1']:.3f}-{e['ratio_q3']:.3f} |" for v, e in extra.items() if v != "limit"]
    for v, e in extra.items():
        if v != "limit" and e["top_added"]:
            lines.append(f"\n{v}: largest added calls (ms per step, op, input shapes)")
            lines += [f"  {c['ms']:9.1f}  {c['op']}  {c['shapes'][:120]}" for c in e["top_added"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.child:
        return child_memory(args)
    variants = ["limit", *(v for v in args.variants.split(",") if v and v != "limit")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {VARIANTS}")
    if args.profile and args.profile not in variants:  # it printed no profile, unsaid
        raise SystemExit(f"--profile {args.profile} is not among the variants measured ({', '.join(variants)}); "
                         "name one of them, or add it to --variants")
    measured = _provenance.commit(["hf_rcka", "benchmarks/step_overhead.py"])  # as the measurement starts
    results = {p: run_pair(args, p, variants) for p in args.pairs.split(",")}
    meta = {"commit": measured,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": args.device, "torch": torch.__version__, "platform": platform.platform(),
            "load_avg": os.getloadavg(), "threads": torch.get_num_threads(), "bf16": args.bf16,
            "compile": args.compile, "teacher_dtype": args.teacher_dtype, "rounds": args.rounds}
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"\nwrote {args.json} (load average {meta['load_avg'][0]:.2f})")


if __name__ == "__main__":
    main()
