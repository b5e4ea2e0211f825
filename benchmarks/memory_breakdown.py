"""Where a feature variant's extra peak comes from, on CUDA: allocated and peak MiB read around
each part of one step of ``step_overhead.py``'s full-size pairs (teacher forward, the teacher sides
the adapters prepared and the loss reduced, student forward, each adapter, each loss), beside the
limit's step on the same models.

    python benchmarks/memory_breakdown.py [cuda|cpu]

On CPU it runs the same path at the scaled-down sizes and prints zeros (torch has no allocator
statistics there); it is for trying the script.
"""

from __future__ import annotations

import sys
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


def main() -> None:
    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
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
