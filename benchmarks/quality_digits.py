#!/usr/bin/env python
"""Does distillation make a better student? Seeds x variants x directions on real digits.

Every run goes through hf_rcka's own command line (``scripts/distill.py`` + the digits recipes in
``recipes/``), so the benchmark measures what a user gets. scikit-learn's 1,797 handwritten digits
are split once, stratified, 30% held out (540 images, ``--split_seed``): every seed and every
variant is evaluated on the same images, so accuracies pair up by seed and the paired difference
to the student alone gets a t-interval over seeds. The recommended setting is also compared with
KD, paired the same way.

Two directions: ``cnn2vit`` (a slim ResNet-10-T teacher, a 4-block ViT student) and ``vit2cnn``
(that ViT trained alone for longer as teacher, a MobileNetV3 student). One teacher per direction
(seed 0, trained on the same split's training images) serves every seed. Runs are as short as a meaningful run can be: 16 px, one evaluation at
the end, no checkpoints, no dataloader workers. Each run writes ``runs/<direction>/<variant>/
seed<k>.json`` under ``--out`` (models go to ``--work``, by default a folder per ``--out``) with
the commit, CPU and date it ran on; a run whose JSON exists is skipped, so an interrupted
benchmark resumes. A teacher is reused only if its recorded command is the one it would run now,
and student records of another teacher run are run again.

    python benchmarks/quality_digits.py --quick                 # 3 seeds, core variants
    python benchmarks/quality_digits.py                         # 5 seeds, every variant
    python benchmarks/quality_digits.py --directions cnn2vit --variants alone rcka --seeds 0 1
    python benchmarks/quality_digits.py --quick --readme benchmarks/README.md   # table into README
    python benchmarks/quality_digits.py --split_seed 1 --seeds 10 11 12 13 14 --variants alone kd rcka \
        rcka_fcka3_srd --out benchmarks/results/quality_digits_confirm    # fresh images and seeds
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import _provenance  # noqa: E402
from _quality_report import render_markdown, replace_block, save_plot, summarise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SELECTION_SPLIT_SEED = 42  # the held-out images the recommended setting was chosen on
# The Trainer shuffles epoch e with data_seed + e (data_seed defaults to seed), so seeds k and k + 1
# would read the same orders one epoch apart: seed k shuffles with data_seed STRIDE * k instead,
# an order of its own as long as a run has fewer epochs than the stride.
DATA_SEED_STRIDE = 1000
CE = {"name": "ce", "weight": 1.0}
RCKA = {"name": "rcka", "weight": 1.0, "intra_weight": 1.0, "inter_weight": 1.0}
# Fixed for the benchmark whatever the recipes say: one evaluation, no checkpoints, quiet logs.
RUN_SETTINGS = {"eval_strategy": "no", "save_strategy": "no", "dataloader_num_workers": 0,
                "disable_tqdm": True, "report_to": "none", "train_val_split": 0.3, "logging_steps": 1000}


@dataclass
class Variant:
    """A student loss setting: ``losses`` None trains the student alone (no teacher)."""

    label: str
    losses: list | None = None
    overrides: dict = field(default_factory=dict)
    directions: tuple[str, ...] = ("cnn2vit", "vit2cnn")
    compare_to: str | None = None  # another variant's key: also report the paired difference to it


FCKA = {"name": "feature_cka", "weight": 1.0}
FCKA3 = {**FCKA, "weight": 3.0}
PAIRS = {"feature_pairs": "auto"}
VARIANTS = {
    "alone": Variant("ce alone (no teacher)"),
    "kd": Variant("ce + kd (T 4)", [CE, {"name": "kd", "weight": 1.0, "temperature": 4.0}]),
    "rcka": Variant("ce + rcka logits (1/1)", [CE, RCKA]),
    "rcka_fcka3_srd": Variant("**ce + rcka + feature_cka x3 + srd 2 (recommended, the demo)**",
                              [CE, RCKA, FCKA3, {"name": "srd", "weight": 2.0}], PAIRS, compare_to="kd"),
    "rcka_fcka3": Variant("ce + rcka + feature_cka x3 (auto pairs)", [CE, RCKA, FCKA3], PAIRS),
    "rcka_fcka": Variant("ce + rcka + feature_cka x1 (auto pairs)", [CE, RCKA, FCKA], PAIRS),
    "fcka": Variant("ce + feature_cka (auto pairs)", [CE, FCKA], PAIRS),
    "kd_fcka3": Variant("ce + kd (T 4) + feature_cka x3 (auto pairs)",
                        [CE, {"name": "kd", "weight": 1.0, "temperature": 4.0}, FCKA3], PAIRS, compare_to="kd"),
    "rcka_pcka": Variant("ce + rcka + patch_cka (patch_match, auto pairs; channels sampled)",
                         [CE, RCKA, {"name": "patch_cka", "weight": 1.0}], PAIRS),
    # The same with every teacher channel in every step: the auto pairs of vit2cnn, sample_channels off
    # ((4, 4), on a 1 x 1 grid, is left out: patch_cka has nothing to align there, and refuses it).
    "rcka_pcka_all": Variant("ce + rcka + patch_cka, all channels per step (sample_channels: null)",
                             [CE, RCKA, {"name": "patch_cka", "weight": 1.0}],
                             {"feature_pairs": [{"student_layer": s, "teacher_layer": t, "adapter": "patch_match",
                                                 "project": True, "sample_channels": None}
                                                for s, t in ((1, 1), (2, 3))]},
                             directions=("vit2cnn",), compare_to="rcka_pcka"),
    "rcka15": Variant("ce + rcka logits (paper's 15/15)", [CE, {**RCKA, "intra_weight": 15.0, "inter_weight": 15.0}]),
    "deit_token": Variant(
        "DeiT student: ce 0.5 + deit_token hard 0.5",
        [{"name": "ce", "weight": 0.5}, {"name": "deit_token", "weight": 0.5, "mode": "hard"}],
        {"model_name_or_path": "config:deit", "student_config_overrides_extra": {
            "architectures": ["DeiTForImageClassificationWithTeacher"]}},
        directions=("cnn2vit",),
    ),
    "ekt": Variant("ce + kernel_transfer 0.04 (EKT, public code's weight)", [CE, {"name": "kernel_transfer", "weight": 0.04}]),
    "ekt1": Variant("ce + kernel_transfer 1", [CE, {"name": "kernel_transfer", "weight": 1.0}]),
    "srd": Variant("ce + srd (2.0)", [CE, {"name": "srd", "weight": 2.0}]),
    # The settings search behind the recommendation (run with --variants; CNN -> ViT only).
    "rcka_fcka6": Variant("search: ce + rcka + feature_cka x6", [CE, RCKA, {**FCKA, "weight": 6.0}], PAIRS,
                          directions=("cnn2vit",)),
    "rcka_fcka_kd": Variant("search: ce + rcka + feature_cka + kd (T 4)",
                            [CE, RCKA, FCKA, {"name": "kd", "weight": 1.0, "temperature": 4.0}], PAIRS,
                            directions=("cnn2vit",)),
    "alone_mix": Variant("search: ce alone, mixup 0.8", None, {"mixup": 0.8}, directions=("cnn2vit",)),
    "rcka_fcka3_mix": Variant("search: ce + rcka + feature_cka x3, mixup 0.8", [CE, RCKA, FCKA3],
                              {**PAIRS, "mixup": 0.8}, directions=("cnn2vit",)),
}
SEARCH = ("rcka_fcka6", "rcka_fcka_kd", "alone_mix", "rcka_fcka3_mix")  # rcka_fcka3_mix: not run to completion
CORE = ("alone", "kd", "rcka", "rcka_fcka3_srd")


@dataclass
class Direction:
    """Teacher run, then the student's base recipe; ``student`` overrides apply to every student run."""

    label: str
    teacher_recipe: str
    teacher: dict
    student_recipe: str
    student: dict


DIRECTIONS = {
    "cnn2vit": Direction("CNN teacher (ResNet-10-T) -> ViT student", "supervised-resnet10t-digits.yaml", {},
                         "supervised-vit_tiny-digits.yaml", {}),
    "vit2cnn": Direction(
        "ViT teacher -> CNN student (MobileNetV3-S 0.5)", "supervised-vit_tiny-digits.yaml", {"num_train_epochs": 30},
        "supervised-resnet10t-digits.yaml",
        {"model_name_or_path": "timm/mobilenetv3_small_050", "num_train_epochs": 5,
         # a flag's mapping merges into the recipe's: drop the ResNet's channels, keep its whole-image view
         "student_config_overrides": {"channels": None,
                                      "pretrained_cfg_overlay": {"crop_pct": 1.0, "crop_mode": "squash"}}},
    ),
}


def _flags(values: dict) -> list[str]:
    """``--key value`` pairs; values are written as JSON, which the CLI reads as YAML."""
    flags = []
    for key, value in values.items():
        flags += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return flags


def _student_overrides(direction: Direction, variant: Variant) -> dict:
    overrides = {**direction.student, **variant.overrides}
    extra = overrides.pop("student_config_overrides_extra", None)
    if extra:  # e.g. a DeiT head on the ViT student: keep the recipe's sizes, add the extra keys
        import yaml

        base = yaml.safe_load((RECIPES / direction.student_recipe).read_text())["student_config_overrides"]
        overrides["student_config_overrides"] = {**base, **extra}
    return overrides


def run_cli(recipe: str, overrides: dict, output_dir: Path, log: Path) -> dict:
    """One ``scripts/distill.py`` run; returns its ``all_results.json`` plus the wall time and
    where it ran (commit, CPU, date), so a record says what made it."""
    command = _command(recipe, overrides, output_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           # one thread per run: on a shared machine OpenMP threads spin-wait on each other (seen:
           # 6 s instead of 0.4 s per step with 2 threads while other jobs ran)
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    # a student at chance ends its run with exit status 2 once everything is saved: a result here
    # (rcka15's collapse is one), kept without changing the command that the stored records match
    if done.returncode != 0 and not _ended_at_chance(done.returncode, log):
        raise RuntimeError(f"run failed ({done.returncode}): {' '.join(command)}\nsee {log}")
    results = json.loads((output_dir / "all_results.json").read_text())
    return {"eval_accuracy": results["eval_accuracy"], "seconds": round(seconds, 1), "command": command[1:],
            "code": code_version(), **provenance()}


def _ended_at_chance(returncode: int, log: Path) -> bool:
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return returncode == 2 and bool(lines) and lines[-1].startswith("error: the trained student is at chance")


def _command(recipe: str, overrides: dict, output_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "distill.py"), str(RECIPES / recipe),
            *_flags({**RUN_SETTINGS, **overrides, "output_dir": str(output_dir), "overwrite_output_dir": True})]


@functools.cache
def code_version() -> str:
    """hf_rcka's sources, the recipes, the CLI and the libraries' versions, hashed. A run's command
    holds none of them: after an edit of the package or an upgrade a study reused its earlier runs
    beside new ones in one table (their records' commits told apart, the tables did not)."""
    digest = hashlib.sha256()
    files = [*sorted((ROOT / "hf_rcka").rglob("*.py")), *sorted(RECIPES.rglob("*.yaml")), ROOT / "scripts" / "distill.py"]
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    for name in ("torch", "transformers", "timm", "accelerate", "datasets"):
        try:
            digest.update(f"{name} {importlib.metadata.version(name)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{name} -".encode())
    return digest.hexdigest()[:16]


def provenance() -> dict:
    """The commit (``+dirty`` with uncommitted changes), the CPU and the UTC date of a run."""
    # code and recipes only: the benchmark's own results and the READMEs it fills change as it runs
    commit = _provenance.commit(["hf_rcka", "recipes", "scripts", "benchmarks", ":(exclude)benchmarks/results",
                                 ":(exclude)*.md"])
    return {"commit": commit, "cpu": _cpu_name(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def teacher_dir(out: Path, work: Path, name: str, direction: Direction, report_only: bool = False) -> tuple[Path, dict]:
    """Train the direction's teacher once (seed 0), or reuse it: only when its record holds the
    command it would run now and its model is there (``report_only``: only its record)."""
    folder, record = work / "teachers" / name, out / "teachers" / f"{name}.json"
    overrides = {**direction.teacher, "seed": 0}
    if report_only:
        return folder, json.loads(record.read_text())
    current = _command(direction.teacher_recipe, overrides, folder)[1:]
    kept = json.loads(record.read_text()) if record.exists() else None
    if kept is None or kept.get("command") != current or kept.get("code") != code_version() \
            or not (folder / "config.json").exists():
        record.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{name}] teacher: {direction.teacher_recipe}", flush=True)
        kept = run_cli(direction.teacher_recipe, overrides, folder, record.with_suffix(".log"))
        record.write_text(json.dumps(kept, indent=1))
    return folder, kept


def _run_id(record: dict) -> str:
    """Which training a record describes (student records name their teacher's): a hash of the record."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def student_run(out: Path, work: Path, name: str, direction: Direction, variant_key: str, seed: int, teacher: Path,
                report_only: bool = False, teacher_record: dict | None = None) -> dict | None:
    """One student run, skipped when its result JSON holds the command it would run now and, when
    distilled, this teacher run (``report_only``: never run, None if missing)."""
    variant = VARIANTS[variant_key]
    record = out / "runs" / name / variant_key / f"seed{seed}.json"
    teacher_run = _run_id(teacher_record) if teacher_record and variant.losses is not None else None
    if report_only:
        kept = json.loads(record.read_text()) if record.exists() else None
        # None: records before the id; the first ids were the teacher's commit and date
        earlier = f"{teacher_record.get('commit')} {teacher_record.get('date')}" if teacher_run else None
        if kept is not None and kept.get("teacher_run") not in (None, teacher_run, earlier):
            raise SystemExit(f"{record} was distilled from another teacher than {name}'s recorded one (retrained "
                             "since): its accuracy would be reported beside the other teacher's; rerun it")
        return kept
    overrides = {**_student_overrides(direction, variant), "seed": seed, "data_seed": DATA_SEED_STRIDE * seed}
    if variant.losses is not None:
        overrides.update({"teacher_model_name_or_path": str(teacher), "losses": variant.losses})
    folder = work / "models" / name / variant_key / f"seed{seed}"
    if record.exists():
        kept = json.loads(record.read_text())
        if kept.get("command") == _command(direction.student_recipe, overrides, folder)[1:] \
                and kept.get("teacher_run") == teacher_run and kept.get("code") == code_version():
            return kept
    record.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {variant_key} seed {seed}", flush=True)
    result = {**run_cli(direction.student_recipe, overrides, folder, record.with_suffix(".log")), "teacher_run": teacher_run}
    record.write_text(json.dumps(result, indent=1))
    return result


def _data_orders(record: dict) -> str:
    """"spaced" when a student run shuffled with ``DATA_SEED_STRIDE`` x its seed, "consecutive" when
    with its seed (records from before the stride), by the command it recorded."""
    return "spaced" if "--data_seed" in record["command"] else "consecutive"


def validation_size() -> int:
    """How many images the runs were evaluated on (the same carved split the CLI makes)."""
    return len(_validation_images(RUN_SETTINGS["split_seed"]))


def selection_overlap() -> int | None:
    """How many of the evaluated images are also among the images the settings were chosen on
    (``SELECTION_SPLIT_SEED``'s held-out 30%), counted as (pixels, label); None for that split itself."""
    if RUN_SETTINGS["split_seed"] == SELECTION_SPLIT_SEED:
        return None
    chosen_on = _validation_images(SELECTION_SPLIT_SEED)
    return sum((_validation_images(RUN_SETTINGS["split_seed"]) & chosen_on).values())


def _validation_images(split_seed: int) -> Counter:
    """The carved validation split's images as a multiset of (pixel bytes, label)."""
    from hf_rcka.arguments import DataArguments
    from hf_rcka.data.datasets import load_raw_datasets

    split = load_raw_datasets(DataArguments(dataset_name="builtin:digits", train_val_split=RUN_SETTINGS["train_val_split"],
                                            split_seed=split_seed))["validation"]
    return Counter((row["image"].tobytes(), row["label"]) for row in split)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, core variants (alone, kd, rcka, rcka_fcka3_srd)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0-4 (--quick: 0-2)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="default: all but the settings search (--quick: core)")
    parser.add_argument("--directions", nargs="+", choices=list(DIRECTIONS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_digits")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each); 1 on a busy machine")
    parser.add_argument("--work", type=Path,
                        help="where the trained models go (the results stay in --out); default "
                             "outputs/quality_digits/<--out's name>-<hash of its path>, one per study")
    parser.add_argument("--split_seed", type=int,
                        help="draws the held-out 30%% (default 42, training's; --report-only: the records'); "
                             "teachers train on the rest")
    parser.add_argument("--report-only", action="store_true",
                        help="summarise the runs already recorded in --out; train nothing")
    parser.add_argument("--readme", type=Path, nargs="+", default=[],
                        help="markdown files whose '<!-- BLOCK:begin/end -->' block gets the tables")
    parser.add_argument("--block", default="quality_digits", help="the block's name in --readme (default quality_digits)")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    args.seeds_given, args.variants_given = args.seeds is not None, args.variants is not None
    args.subset = args.seeds_given or args.variants_given or args.directions is not None
    args.directions = args.directions or list(DIRECTIONS)
    args.seeds = args.seeds or list(range(3 if args.quick else 5))
    if args.work is None:  # one per study: the resolved --out, not just its name, which two studies may share
        key = hashlib.sha256(str(args.out.resolve()).encode()).hexdigest()[:8]
        args.work = ROOT / "outputs" / "quality_digits" / f"{args.out.name}-{key}"
    if not args.report_only:
        args.split_seed = 42 if args.split_seed is None else args.split_seed
        RUN_SETTINGS["split_seed"] = args.split_seed
    args.variants = args.variants or list(CORE if args.quick else [v for v in VARIANTS if v not in SEARCH])
    if "alone" not in args.variants:
        args.variants.insert(0, "alone")  # the baseline every difference is taken against
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--jobs 0`` stopped in a ValueError after the teachers had trained, and a ``--readme`` that
    is missing or has no ``--block`` in a traceback after the whole study: both are said first. A
    seed given twice ran twice into one run folder (at once with ``--jobs 2``), and the tables'
    header listed it twice."""
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more runs at a time")
    twice = sorted({seed for seed in args.seeds or [] if args.seeds.count(seed) > 1})
    if twice:  # with --jobs 2 both runs of a seed trained into one folder at once
        parser.error(f"--seeds names {twice} more than once; give each seed once")
    for path in args.readme:
        marker = f"<!-- {args.block}:begin -->"
        if not path.is_file() or marker not in path.read_text(encoding="utf-8"):
            parser.error(f"--readme {path} has no '{marker}' ... '<!-- {args.block}:end -->' block to fill; "
                         "name a file that has one, or its block with --block")


def _from_records(args: argparse.Namespace) -> None:
    """``--report-only`` reads what the records hold: the directions with a teacher, the split its
    teachers ran with (records before ``--split_seed`` existed ran with training's 42) and, unless
    given, every seed and every variant recorded (the default variants leave out the settings
    search, whose records the committed study holds: a render with them would drop its rows)."""
    args.directions = [d for d in args.directions if (args.out / "teachers" / f"{d}.json").exists()]
    recorded = set()
    for name in args.directions:
        command = json.loads((args.out / "teachers" / f"{name}.json").read_text()).get("command", [])
        recorded.add(int(command[command.index("--split_seed") + 1]) if "--split_seed" in command else 42)
    if len(recorded) > 1 or (args.split_seed is not None and {args.split_seed} != recorded):
        raise SystemExit(f"{args.out}: the teachers ran with split_seed {sorted(recorded)}"
                         + (f", not {args.split_seed}" if args.split_seed is not None else ""))
    args.split_seed = recorded.pop() if recorded else 42
    RUN_SETTINGS["split_seed"] = args.split_seed
    if not args.seeds_given:
        args.seeds = sorted({int(p.stem[len("seed"):]) for d in args.directions
                             for p in (args.out / "runs" / d).glob("*/seed*.json")})
    if not args.variants_given:
        args.variants = [v for v in VARIANTS if any(any((args.out / "runs" / d / v).glob("seed*.json"))
                                                    for d in args.directions)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        _from_records(args)
    report = {"seeds": args.seeds, "split_seed": args.split_seed, "validation_images": None, "directions": {}}
    orders: set[str] = set()
    for name in args.directions:
        direction = DIRECTIONS[name]
        teacher, teacher_result = teacher_dir(args.out, args.work, name, direction, args.report_only)
        keys = [(v, s) for v in args.variants if name in VARIANTS[v].directions for s in args.seeds]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own process
            results = list(pool.map(
                lambda key: student_run(args.out, args.work, name, direction, *key, teacher, args.report_only,
                                        teacher_result), keys))
        runs: dict[str, dict[int, dict]] = {}
        for (variant, seed), result in zip(keys, results):
            if result is not None:
                runs.setdefault(variant, {})[seed] = result
        orders.update(_data_orders(r) for by_seed in runs.values() for r in by_seed.values())
        report["directions"][name] = {
            "label": direction.label, "teacher_accuracy": teacher_result["eval_accuracy"],
            "variants": summarise({v: {"label": VARIANTS[v].label, "runs": r, "compare_to": VARIANTS[v].compare_to}
                                   for v, r in runs.items()}),
        }
    if not any(d["variants"] for d in report["directions"].values()):
        raise SystemExit(f"no run records in {args.out} for these directions, variants and seeds: nothing to report")
    report["validation_images"] = validation_size()
    report["selection_overlap"] = selection_overlap()
    report["data_orders"] = orders.pop() if len(orders) == 1 else "mixed"
    report["data_seed_stride"] = DATA_SEED_STRIDE
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    print(markdown)
    if args.report_only and args.subset:  # a subset of the study's runs: shown, never its record
        print(f"(--seeds, --variants or --directions with --report-only: {args.out / 'quality_digits.json'}, its "
              "plot and the READMEs are left as they were)")
        return 0
    save_plot(report, args.out / "quality_digits.png")
    (args.out / "quality_digits.json").write_text(json.dumps(report, indent=1))  # last: a failure keeps the old one
    print(f"JSON: {args.out / 'quality_digits.json'}\nplot: {args.out / 'quality_digits.png'}")
    for path in args.readme:
        replace_block(path, args.block, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
