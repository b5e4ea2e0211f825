"""Where a feature variant's extra peak comes from.

On CUDA: allocated and peak MiB read around each part of one step of ``step_overhead.py``'s
full-size pairs (teacher forward, the teacher sides the adapters prepared and the loss reduced,
student forward, each adapter, each loss), beside the limit's step on the same models.

On CPU, where torch keeps no allocator statistics, one step of each is profiled with memory
events instead (``torch.profiler``, ``profile_memory=True``): the step's peak above what was
allocated when it started, and the tensors alive at that peak, summed by the ops that made them
(innermost op first, allocation-only ops skipped) and their input shapes. At full size in bf16
(``--full``, batch 16 by default) one case takes about a minute on two cores.

    python benchmarks/memory_breakdown.py [cuda|cpu] [--full] [--batch N] [--rows N] [--cases cnn2vit:all,...] [--versus-limit]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import step_overhead as so  # noqa: E402  (benchmarks/, the script's folder)

MiB = 2**20
CASES = (("cnn2vit", "rcka+feature_cka"), ("cnn2vit", "rcka+patch_cka"), ("vit2cnn", "rcka+patch_cka"))


def _mark(log: list[str], device: torch.device, what: str) -> None:
    allocated = peak = 0.0
    if device.type == "cuda":
        torch.cuda.synchronize()
        allocated, peak = torch.cuda.memory_allocated() / MiB, torch.cuda.max_memory_allocated() / MiB
    log.append(f"{what}: allocated {allocated:.0f}, peak {peak:.0f}")


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def limit_log(teacher, student, size: int, batch: int, device: torch.device, bf16: bool) -> list[str]:
    step, log = so.make_step("limit", teacher, student, size, batch, device, bf16), []
    step(), step()
    _reset(device)
    _mark(log, device, "limit start")
    step()
    _mark(log, device, "limit after step")
    return log


def variant_log(variant: str, teacher, student, size: int, batch: int, device: torch.device, bf16: bool) -> list[str]:
    step, log = so.make_step(variant, teacher, student, size, batch, device, bf16), []
    step(), step()
    model = step.model
    run_teacher, run, teacher_sides = model._run_teacher, model._run, model._teacher_sides

    def teacher_then_mark(pixel_values):
        out = run_teacher(pixel_values)
        _mark(log, device, "after teacher forward")
        return out

    def sides_then_mark(states):
        sides = teacher_sides(states)
        _mark(log, device, "after the teacher sides (prepared, reduced)")
        return sides

    def run_then_mark(role, pixel_values, capture, prepare=None):
        out = run(role, pixel_values, capture, prepare)
        if role == "student":
            _mark(log, device, "after student forward")
        return out

    model._run_teacher, model._run, model._teacher_sides = teacher_then_mark, run_then_mark, sides_then_mark
    hooks = [m.register_forward_hook(lambda *_, n=n: _mark(log, device, f"after loss {n}")) for n, m in model.losses.items()]
    hooks += [a.register_forward_hook(lambda *_, k=k: _mark(log, device, f"after adapter {k}"))
              for k, a in enumerate(model.adapters)]
    _reset(device)
    _mark(log, device, "start")
    step()
    _mark(log, device, "after step")
    for hook in hooks:
        hook.remove()
    del model._run_teacher, model._run, model._teacher_sides  # back to the class's methods
    return log


# ops that only allocate: a tensor they make is charged to the op that asked for it
_ALLOCATING = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty", "aten::new_empty_strided",
               "aten::zeros", "aten::zeros_like", "aten::zero_", "aten::resize_"}


def _trace_events(step) -> list[dict]:
    """The chrome-trace events of one profiled CPU step (its memory events and its ops)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True, record_shapes=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(path))
        return json.loads(path.read_text())["traceEvents"]


def _owner(event: dict, ops: list[dict]) -> str:
    """The innermost ops (up to three) running when ``event`` allocated, with the first one's input shapes."""
    around = sorted((op for op in ops if op["ts"] <= event["ts"] <= op["ts"] + op["dur"] and op.get("tid") == event.get("tid")
                     and op["name"] not in _ALLOCATING), key=lambda op: op["dur"])
    if not around:
        return "(outside any op)"
    shapes = str(around[0].get("args", {}).get("Input Dims", ""))[:100]
    return " < ".join(op["name"] for op in around[:3]) + f"  {shapes}"


def peak_report(step, rows: int) -> tuple[float, list[str], collections.Counter]:
    """One step's peak (MiB above its start), its ``rows`` largest groups of live tensors there,
    and every group's bytes."""
    events = _trace_events(step)
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")]
    if not memory:
        raise RuntimeError("the profiler recorded no memory events: nothing to report")
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    peak = max(memory, key=lambda e: e["args"]["Total Allocated"])
    live: dict[int, dict] = {}
    for event in memory:
        if event["ts"] > peak["ts"]:
            break
        if event["args"]["Bytes"] > 0:
            live[event["args"]["Addr"]] = event
        else:
            live.pop(event["args"]["Addr"], None)
    groups: collections.Counter = collections.Counter()
    for event in live.values():
        groups[_owner(event, ops)] += event["args"]["Bytes"]
    lines = [f"{size / MiB:8.1f} MiB  {owner}" for owner, size in groups.most_common(rows)]
    lines.append(f"the peak came inside: {_owner(peak, ops)}")
    return (peak["args"]["Total Allocated"] - start) / MiB, lines, groups


def versus_limit(variant: collections.Counter, limit: collections.Counter, rows: int) -> list[str]:
    """The groups whose live bytes at the variant's peak differ most from the limit's at its peak.

    The models' own activations carry the same names in both steps and cancel, so what is left is
    what the variant adds (or holds at another moment of the step).
    """
    change = collections.Counter({owner: variant[owner] - limit[owner] for owner in set(variant) | set(limit)})
    largest = sorted((item for item in change.items() if item[1]), key=lambda item: -abs(item[1]))[:rows]
    return [f"{size / MiB:+8.1f} MiB  {owner}" for owner, size in largest]


def cpu_main(args: argparse.Namespace) -> None:
    device = torch.device("cpu")
    cases = CASES + (("vit2cnn", "rcka+feature_cka"),)
    if args.cases:
        cases = tuple(tuple(part.strip() for part in case.split(":", 1)) for case in args.cases.split(","))
    for pair, variant in cases:
        teacher, student, size, batch = so.build_models(pair, args.full, device, None)
        batch = args.batch or (16 if args.full else batch)
        reports = {}
        for name in ("limit", variant):
            step = so.make_step(name, teacher, student, size, batch, device, args.full)
            step(), step()
            reports[name] = peak_report(step, args.rows)
        print(f"\n{pair} {variant} (batch {batch}, {size} px{', bf16' if args.full else ''}): peak above the step's "
              f"start {reports[variant][0]:.0f} MiB, the limit's {reports['limit'][0]:.0f} MiB; alive at the peak:")
        print("\n".join("  " + line for line in reports[variant][1]))
        if args.versus_limit:
            print("  against the limit's peak, the largest differences:")
            print("\n".join("  " + line for line in versus_limit(reports[variant][2], reports["limit"][2], args.rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device", nargs="?", default="cuda",
                        help="cuda (the default; cuda:N for another GPU) or cpu (the profiler's breakdown)")
    parser.add_argument("--full", action="store_true", help="CPU: the full-size models in bf16")
    parser.add_argument("--batch", type=int, default=None, help="CPU: batch size (16 with --full)")
    parser.add_argument("--rows", type=int, default=12, help="CPU: groups of live tensors to list")
    parser.add_argument("--cases", default=None,
                        help="CPU: pair:variant,... to profile (default: feature and patch CKA in both pairs)")
    parser.add_argument("--versus-limit", action="store_true",
                        help="CPU: also list the groups whose live bytes differ most from the limit's at its peak")
    args = parser.parse_args()
    for case in (args.cases or "").split(",") if args.cases else []:
        pair, _, variant = (part.strip() for part in case.partition(":"))
        if pair not in so.PAIRS or variant not in (*so.LOSS_SPECS, "limit", "timm_logit", "timm_feature"):
            parser.error(f"--cases takes pair:variant, pairs {sorted(so.PAIRS)}, variants {sorted(so.LOSS_SPECS)}; "
                         f"got {case!r}")
    if args.device == "cpu":
        cpu_main(args)
        return
    device = so.checked_device(parser, args.device, "device", "memory_breakdown.py",
                               "give `cpu` for the profiler's CPU breakdown")
    full = device.type == "cuda"
    for pair, variant in CASES:
        teacher, student, size, batch = so.build_models(pair, full, device, None)
        log = limit_log(teacher, student, size, batch, device, full)
        log += variant_log(variant, teacher, student, size, batch, device, full)
        print(f"\n{pair} {variant}:")
        print("\n".join("  " + line for line in log))
        del teacher, student
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
