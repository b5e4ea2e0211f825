"""Statistics, markdown and plot for the quality benchmarks (kept apart from the run driver).

Accuracies of one variant over seeds give a mean and a sample standard deviation. Every variant
is evaluated on the same images as the student alone and shares its seeds, so the comparison is
paired: per seed, ``variant - alone``; the 95% interval of the mean difference is a Student-t
interval over seeds (``mean +- t_{0.975, n-1} * sd / sqrt(n)``). Pairing removes the seed-to-seed
spread the two runs share, which unpaired intervals would count twice.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from statistics import mean, stdev

BASELINE = "alone"


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t interval of the mean; None for fewer than two values."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * stdev(values) / math.sqrt(len(values))
    return mean(values) - half, mean(values) + half


def paired_difference(runs: dict, reference: dict) -> dict | None:
    """Mean and 95% interval of ``runs - reference`` over the seeds both have run."""
    shared = [seed for seed in sorted(runs) if seed in reference]
    if not shared:
        return None
    differences = [runs[seed]["eval_accuracy"] - reference[seed]["eval_accuracy"] for seed in shared]
    return {"mean": mean(differences), "ci95": t_interval(differences), "n": len(shared)}


def summarise(variants: dict[str, dict]) -> dict[str, dict]:
    """Add mean/std and the paired difference to ``alone`` to each ``{label, runs: {seed: result}}``.

    A variant with ``compare_to`` (another variant's key) also gets its paired difference to that
    one, ``vs_variant``: the question an ablation asks (one setting against another, not alone).
    """
    baseline = variants.get(BASELINE, {}).get("runs", {})
    summary = {}
    for key, variant in variants.items():
        runs = variant["runs"]
        accuracies = [runs[seed]["eval_accuracy"] for seed in sorted(runs)]
        entry = {
            "label": variant["label"],
            "per_seed": {str(seed): runs[seed]["eval_accuracy"] for seed in sorted(runs)},
            "seconds": {str(seed): runs[seed]["seconds"] for seed in sorted(runs)},
            "mean": mean(accuracies),
            "std": stdev(accuracies) if len(accuracies) > 1 else None,  # one run has no spread to tell
        }
        if key != BASELINE and (difference := paired_difference(runs, baseline)):
            entry["paired_difference"] = difference
        other = variant.get("compare_to")
        if other in variants and (difference := paired_difference(runs, variants[other]["runs"])):
            entry["vs_variant"] = {"variant": other, "label": variants[other]["label"], **difference}
        summary[key] = entry
    return summary


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _difference_cell(entry: dict) -> str:
    difference = entry.get("paired_difference")
    if difference is None:
        return "(baseline)"
    return _with_interval(difference)


def _std_cell(entry: dict) -> str:
    return "-" if entry["std"] is None else f"{100 * entry['std']:.1f}"


def _with_interval(difference: dict) -> str:
    interval = difference["ci95"]
    span = f" [{_points(interval[0])}, {_points(interval[1])}]" if interval else ""
    return f"{_points(difference['mean'])}{span}"


def _overlap(report: dict) -> str:
    shared = report.get("selection_overlap")
    if shared is None:
        return ""
    return f"; {shared} of them are also among split_seed 42's, on which the settings were chosen"


def _orders(report: dict) -> str:
    """How the seeds' data orders relate: the Trainer shuffles epoch e with data_seed + e."""
    orders, spaced = report.get("data_orders"), f"data_seed {report.get('data_seed_stride')} x seed"
    if orders == "spaced":
        return f" Each seed shuffles the images in orders of its own ({spaced})."
    if orders == "mixed":
        return f" Some runs shuffled with {spaced}, others with their seed (orders one epoch apart)."
    return (" Seed k shuffled epoch e as seed k + 1 shuffled epoch e - 1 (data_seed = seed, epoch e seeded with"
            " data_seed + e), so consecutive seeds share most of their data orders.")


def render_markdown(report: dict) -> str:
    """One table per direction: mean, std, paired difference (points) with its 95% interval."""
    lines = []
    for direction in report["directions"].values():
        lines += [
            f"**{direction['label']}**: teacher {100 * direction['teacher_accuracy']:.1f}% top-1; "
            f"seeds {', '.join(map(str, report['seeds']))} (n: how many of them each variant has run; "
            f"its mean and std are over those, its difference is paired over the seeds it shares with the "
            f"student alone), {report['validation_images']} validation images "
            f"(split_seed {report.get('split_seed', 42)}, the same for every run{_overlap(report)}).{_orders(report)}",
            "",
            "| student loss | n | mean top-1 | std | vs student alone (points, 95% CI) | per seed | s/run |",
            "|---|---|---|---|---|---|---|",
        ]
        for entry in direction["variants"].values():
            per_seed = " ".join(f"{100 * v:.1f}" for v in entry["per_seed"].values())
            seconds = mean(entry["seconds"].values())
            lines.append(
                f"| {entry['label']} | {len(entry['per_seed'])} | {100 * entry['mean']:.1f} | {_std_cell(entry)} | "
                f"{_difference_cell(entry)} | {per_seed} | {seconds:.0f} |"
            )
        lines.append("")
        for entry in direction["variants"].values():
            if "vs_variant" in entry:
                other = entry["vs_variant"]
                lines += [f"{entry['label']} minus {other['label']}, paired over {other['n']} seeds: "
                          f"{_with_interval(other)} points (95% CI).", ""]
    return "\n".join(lines).rstrip() + "\n"


def save_plot(report: dict, path: Path) -> None:
    """Mean accuracy per variant with std error bars, one panel per direction (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directions = list(report["directions"].values())
    fig, axes = plt.subplots(1, len(directions), figsize=(6 * len(directions), 4.5), squeeze=False)
    for ax, direction in zip(axes[0], directions):
        entries = list(direction["variants"].values())
        means = [100 * e["mean"] for e in entries]
        errors = [100 * (e["std"] or 0.0) for e in entries]  # no bar for a single run
        ax.bar(range(len(entries)), means, yerr=errors, capsize=4, color="#4c72b0")
        ax.axhline(100 * direction["teacher_accuracy"], color="#c44e52", linestyle="--", label="teacher")
        if BASELINE in direction["variants"]:
            ax.axhline(100 * direction["variants"][BASELINE]["mean"], color="grey", linestyle=":", label="student alone")
        ax.set_xticks(range(len(entries)), [e["label"] for e in entries], rotation=35, ha="right", fontsize=7)
        ax.set_ylim(max(0.0, min(means) - 3 * max(errors + [1.0])), 100)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(direction["label"], fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replace_block(path: Path, name: str, text: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``.

    Raises:
        ValueError: if the markers are missing, so a table is never silently not written.
    """
    content = path.read_text()
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(content):
        raise ValueError(f"{path} has no '<!-- {name}:begin -->' ... '<!-- {name}:end -->' block to fill")
    path.write_text(pattern.sub(lambda m: m.group(1) + text + m.group(2), content))
