"""How many tensor ops one distillation step dispatches, against the limit's step.

On a GPU a step of small-matrix math (CKA on B x B Grams, a few patch Grams) is bound by how fast
the host dispatches and launches ops, not by arithmetic: each op costs microseconds of host time
whatever its size, and a loss's ops cannot overlap the model's large kernels the way the
forward's and backward's own launches do. So the ops a variant adds to the limit's step are a
proxy for its GPU time overhead that a CPU machine can measure exactly: the count does not
depend on the machine's speed or load.

Counts every ATen op dispatched in one optimizer step (forward, backward, AdamW step), after
two warm-up steps, through a ``TorchDispatchMode``; *kernel ops* leave out those that only make
views or read metadata (``view``, ``detach``, ``expand``, ...), which launch nothing on a GPU.
The step is ``step_overhead.py``'s (the same models, variants and bf16 autocast), at batch 2 by
default. The models' and the logit losses' counts do not depend on the batch; the feature
losses' grow with it where the CPU reads a large map in blocks or chunks, which on a GPU is one
block, so the smallest batch comes closest to a GPU step's count (and keeps the full-size models
quick on a CPU).

    python benchmarks/op_count.py [--full] [--pairs cnn2vit,vit2cnn] [--variants ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _provenance  # noqa: E402  (benchmarks/, the script's folder)
import step_overhead as so  # noqa: E402

# ops that make a view or read metadata: no kernel on a GPU
METADATA_OPS = frozenset({
    "aten.view", "aten._unsafe_view", "aten.detach", "aten.alias", "aten.expand", "aten.unsqueeze",
    "aten.squeeze", "aten.transpose", "aten.t", "aten.permute", "aten.slice", "aten.select", "aten.diagonal",
    "aten.as_strided", "aten._reshape_alias", "aten.split", "aten.split_with_sizes", "aten.unbind",
    "aten.chunk", "aten.narrow", "aten.promote_types", "aten.result_type", "aten.is_same_size",
    "aten.lift_fresh", "aten.sym_size", "aten.sym_stride", "aten.sym_numel", "aten.sym_storage_offset",
})
VARIANTS = ["limit", "kd", "rcka", "rcka+feature_cka", "rcka+patch_cka", "all"]


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_step(step) -> collections.Counter:
    """The ops one call of ``step`` dispatches, by name, after two warm-up calls."""
    step(), step()
    with _OpCounter() as counter:
        step()
    return counter.ops


def _kernel_ops(ops: collections.Counter) -> int:
    return sum(n for name, n in ops.items() if name not in METADATA_OPS)


def measure(pair: str, full: bool, variants: list[str], batch: int) -> dict[str, dict]:
    device = torch.device("cpu")
    teacher, student, size, _ = so.build_models(pair, full, device, None)
    counts = {v: count_step(so.make_step(v, teacher, student, size, batch, device, True)) for v in variants}
    limit = counts["limit"]
    result = {}
    for variant, ops in counts.items():
        added = collections.Counter(ops)
        added.subtract(limit)
        result[variant] = {
            "ops": sum(ops.values()), "kernel_ops": _kernel_ops(ops),
            "added_ops": sum(ops.values()) - sum(limit.values()), "added_kernel_ops": _kernel_ops(ops) - _kernel_ops(limit),
            "top_added": [[name, n] for name, n in added.most_common(8) if n > 0],
        }
    return result


def print_table(pair: str, teacher: str, student: str, result: dict[str, dict]) -> None:
    print(f"\n### {pair}: teacher {teacher} -> student {student}\n")
    print("| variant | ops per step | added over the limit | kernel ops | added kernel ops | most added |")
    print("|---|---|---|---|---|---|")
    for variant, r in result.items():
        top = ", ".join(f"{name.removeprefix('aten.')} {n}" for name, n in r["top_added"][:4]) or "-"
        print(f"| {variant} | {r['ops']} | {r['added_ops']:+d} | {r['kernel_ops']} | {r['added_kernel_ops']:+d} | {top} |")


def _positive(text: str) -> int:
    """A batch of 1 or more: ``--batch 0`` counted a step of empty tensors and wrote it as a record."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give 1 or more")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full-size pairs (the GPU benchmark's models)")
    parser.add_argument("--pairs", default="cnn2vit,vit2cnn")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch", type=_positive, default=2, help="batch size (the models' and logit losses' counts do not depend on it; a "
                        "feature loss's grow with it where the CPU reads a large map in blocks: keep it small)")
    parser.add_argument("--json", default="bench_results/op_count.json")
    args = parser.parse_args()
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    variants = ["limit", *(v.strip() for v in args.variants.split(",") if v.strip() and v.strip() != "limit")]
    unknown = sorted(set(pairs) - set(so.PAIRS)) + sorted(set(variants) - {"limit", *so.LOSS_SPECS})
    if unknown:
        raise SystemExit(f"unknown pairs or variants {unknown}; pairs {sorted(so.PAIRS)}, variants {sorted(so.LOSS_SPECS)}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    measured = _provenance.commit(["hf_rcka", "benchmarks/step_overhead.py", "benchmarks/op_count.py"])  # at the start
    results = {}
    for pair in pairs:
        teacher, student, _, _ = so.PAIRS[pair]["full" if args.full else "cpu"]
        results[pair] = measure(pair, args.full, variants, args.batch)
        print_table(pair, teacher, student, results[pair])
    meta = {"commit": measured,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "full": args.full, "batch": args.batch}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
