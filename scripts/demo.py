#!/usr/bin/env python
"""The hf_rcka demo, offline in a few minutes: does distillation beat training the student alone?

    python scripts/demo.py

Trains, on scikit-learn's handwritten digits, through the same CLI and recipes a user would run:

1. the teacher, a slim ResNet-10-T (``recipes/supervised-resnet10t-digits.yaml``),
2. the student alone, a small ViT (``recipes/supervised-vit_tiny-digits.yaml``),
3. the same ViT distilled from the teacher (``recipes/rcka-vit_tiny_from_resnet10t-digits.yaml``),

then prints accuracy, the gain over the student alone and the time of each, and where each model
was saved. All three are evaluated on the same stratified 30% of the images. Steps 1 and 2 do not
depend on each other and run side by side. Every run uses one thread: the models are small, and
on a busy machine OpenMP threads spin-wait on each other (a step took 6 s instead of 0.4 s with
two threads while other jobs ran). The distilled student's card gets a
layer-by-layer CKA picture (teacher vs the student alone and vs the distilled student) unless
``--no-cka``.

``--reuse`` keeps a step that finished in an earlier demo, only if its recipe, its command, the
steps it learned from, hf_rcka's source and the libraries' versions are unchanged: a retrained
teacher retrains the distilled student. A step cut short (Ctrl-C, a failure) leaves nothing to
reuse, so it runs again; the table marks the steps it reused.

``OUTPUT_ROOT/demo_results.json`` holds the table's numbers with where and when they were made
(commit, machine, date, library versions): the record a README cites.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(__file__).resolve().parents[1] / "hf_rcka"  # the code every step runs
LIBRARIES = ("torch", "torchvision", "transformers", "timm", "accelerate", "datasets", "pillow", "numpy", "scikit-learn")
STEPS = {
    "teacher": "supervised-resnet10t-digits",
    "student alone": "supervised-vit_tiny-digits",
    "distilled student": "rcka-vit_tiny_from_resnet10t-digits",
}


_PRINTING = threading.Lock()
_EPOCH = re.compile(r"'epoch': '?([0-9.]+)")
HEARTBEAT_SECONDS = 15  # a step that trains longer says how far it is, so the demo is never long silent


def say(line: str) -> None:
    """One whole line: the two side-by-side steps' lines, printed by two threads, ran into one."""
    with _PRINTING:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _wait(process: subprocess.Popen, step: str, log: Path) -> int:
    """The step's exit status, saying every ``HEARTBEAT_SECONDS`` which epoch its log has reached
    and for how long the step has run (before its first epoch, each line would read the same)."""
    start = time.monotonic()
    while True:
        try:
            return process.wait(timeout=HEARTBEAT_SECONDS)
        except subprocess.TimeoutExpired:
            epochs = _EPOCH.findall(log.read_text(errors="replace")) if log.is_file() else []
            say(f"  {step}: {'epoch ' + epochs[-1] if epochs else 'starting'} "
                f"({time.monotonic() - start:.0f} s)...")


def _env(threads: int) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def train(step: str, output_root: Path, threads: int, extra: list[str] | None = None, reuse: bool = False,
          after: tuple[dict, ...] = ()) -> dict:
    """Run one recipe through scripts/distill.py; its log goes to ``<output>.log``.

    Args:
        extra: flags added to the recipe's command.
        reuse: keep a finished earlier run of the step when nothing it depends on changed.
        after: results of the steps this one learns from; a rerun of any of them reruns this one.

    Returns:
        accuracy, seconds, path, and ``run``, an id of this training that later steps record.
    """
    recipe = STEPS[step]
    output = output_root / recipe
    record = output_root / f"{recipe}.demo.json"
    command = [sys.executable, str(ROOT / "scripts" / "distill.py"), str(ROOT / "recipes" / f"{recipe}.yaml"),
               "--output_dir", str(output), "--disable_tqdm", "true", *(extra or [])]
    if step == "distilled student":
        command += ["--teacher_model_name_or_path", str(output_root / STEPS["teacher"])]
    fingerprint = _fingerprint(recipe, command, after)
    kept = _finished(output, record, fingerprint) if reuse else None
    if kept:
        say(f"  {step}: reusing {output}")
        return {**kept, "reused": True}
    output_root.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)  # until this run finishes, there is nothing to reuse
    log = output_root / f"{recipe}.log"
    say(f"  {step}: python scripts/distill.py recipes/{recipe}.yaml  (log: {log})")
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env=_env(threads), stdout=handle, stderr=subprocess.STDOUT)
        try:
            returncode = _wait(process, step, log)
        finally:
            if process.poll() is None:  # the demo was interrupted (alone, or before the step): it stops too
                process.send_signal(signal.SIGINT)
                process.wait()
    if returncode in (130, -2):  # the run stopped on Ctrl-C (SIGINT)
        raise KeyboardInterrupt
    accuracy = _accuracy(output)
    if returncode != 0 or accuracy is None:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{step} failed (exit {returncode}); last lines of {log}:\n{tail}")
    result = {"accuracy": accuracy, "seconds": time.perf_counter() - start, "path": str(output), "run": uuid.uuid4().hex}
    say(f"  {step}: {100 * accuracy:.1f}% in {result['seconds']:.0f} s")
    stamp = (output / "all_results.json").stat().st_mtime_ns
    record.write_text(json.dumps({**result, "fingerprint": fingerprint, "results_written": stamp}))  # last
    return result


def _fingerprint(recipe: str, command: list[str], after: tuple[dict, ...]) -> str:
    """What decides a step's result: its recipe's text, its command, the runs it learned from, and
    the code (``code_version``)."""
    text = (ROOT / "recipes" / f"{recipe}.yaml").read_text()
    inputs = json.dumps({"recipe": text, "command": command[1:], "after": [a["run"] for a in after],
                         "code": code_version()})
    return hashlib.sha256(inputs.encode()).hexdigest()


@functools.cache
def code_version() -> str:
    """hf_rcka's source files and the libraries' versions, hashed: an edit of the package (a default
    that changes the evaluated images) or an upgrade kept every step's earlier result."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(_versions()).encode())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def provenance() -> dict:
    """Where and when the numbers were made: the commit (``+dirty`` with uncommitted changes to the
    package, scripts or recipes), the machine, the date and the libraries."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=PACKAGE.parent, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "hf_rcka", "scripts", "recipes"):
        commit += "+dirty"
    return {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({_cpu_name()})",
            "python": platform.python_version(), "libraries": _versions()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _finished(output: Path, record: Path, fingerprint: str) -> dict | None:
    """The earlier result of this step, if it finished with the same inputs and its folder is untouched."""
    try:
        kept = json.loads(record.read_text())
        stamp = (output / "all_results.json").stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    accuracy = _accuracy(output)
    if kept.get("fingerprint") != fingerprint or kept.get("results_written") != stamp or accuracy is None \
            or not (output / "README.md").is_file():
        return None
    return {"accuracy": accuracy, "seconds": kept["seconds"], "path": str(output), "run": kept["run"]}


def _accuracy(output: Path) -> float | None:
    """``eval_accuracy`` of a finished run (None while the run has not evaluated its model)."""
    try:
        return json.loads((output / "all_results.json").read_text()).get("eval_accuracy")
    except (OSError, ValueError):
        return None


def cka_picture(output_root: Path) -> bool:
    """Teacher vs student alone and vs distilled student, embedded in the distilled student's card.

    Returns whether it was made; a failure is reported and skipped (the accuracies stand without it).
    """
    teacher, alone, distilled = (str(output_root / STEPS[s]) for s in STEPS)
    report = output_root / "cka_report"
    for name in ("cka.png", "cka.md"):  # no picture of an earlier demo's models is left to mistake (and
        (report / name).unlink(missing_ok=True)  # nothing else in the folder, which may be someone's, is touched)
    command = [sys.executable, str(ROOT / "scripts" / "cka_report.py"), teacher, alone, distilled,
               "--names", "teacher", "student alone", "distilled student", "--dataset_name", "builtin:digits",
               "--num_images", "256", "--output", str(report), "--card", distilled]
    say(f"  CKA picture: python scripts/cka_report.py ... --output {os.path.relpath(report, Path.cwd())}")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=_env(2), capture_output=True, text=True)
    if done.returncode in (130, -2):
        raise KeyboardInterrupt
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        say(f"  the CKA picture failed and was skipped: {last}")
        return False
    say(f"  CKA picture: made in {time.perf_counter() - start:.0f} s")
    return True


def measured_gain() -> str:
    """What several seeds measured for the demo's pair and setting, read from the benchmark's
    committed record, so the demo says what its one seed cannot."""
    study = ROOT / "benchmarks" / "results" / "quality_digits_confirm_spaced" / "quality_digits.json"
    try:
        difference = json.loads(study.read_text())["directions"]["cnn2vit"]["variants"]["rcka_fcka3_srd"][
            "paired_difference"]
        low, high = difference["ci95"]
    except (OSError, ValueError, KeyError, TypeError):
        return ("benchmarks/quality_digits.py measures the gain over several seeds on held-out images "
                "(README.md, 'Does distillation help?').")
    return (f"Over {difference['n']} seeds, each with data orders of its own, on another held-out 30% of the "
            f"images, benchmarks/quality_digits.py measured this setting {100 * difference['mean']:+.1f} points "
            f"over the student alone (95% interval {100 * low:+.1f} to {100 * high:+.1f}; "
            f"{study.relative_to(ROOT)}; README.md, 'Does distillation help?').")


def table(results: dict[str, dict]) -> str:
    """The three-row summary: accuracy, gain over the student alone, time, where it was saved."""
    alone = results["student alone"]["accuracy"]
    lines = ["| model | top-1 | vs student alone | time | saved to |", "|---|---|---|---|---|"]
    for step, result in results.items():
        gain = "" if step == "teacher" else f"{100 * (result['accuracy'] - alone):+.1f} points"
        if step == "student alone":
            gain = "(baseline)"
        took = f"{result['seconds']:.0f} s" + (" (reused)" if result.get("reused") else "")
        lines.append(f"| {step} | {100 * result['accuracy']:.1f}% | {gain} | {took} | "
                     f"`{os.path.relpath(result['path'], Path.cwd())}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_root", type=Path, default=ROOT / "outputs")
    parser.add_argument("--no-cka", dest="cka", action="store_false", help="skip the layer-CKA picture")
    parser.add_argument("--reuse", action="store_true",
                        help="keep steps that finished in an earlier run with the same recipes and inputs")
    args = parser.parse_args(argv)
    default_root = args.output_root == parser.get_default("output_root")
    args.output_root = args.output_root.resolve()  # the runs start in ROOT: a relative folder is this one's
    unwritable = _unwritable(args.output_root)
    if unwritable:
        print(f"error: --output_root {args.output_root} {unwritable}: give a folder you can write to", file=sys.stderr)
        return 2
    try:
        _demo(args)
    except KeyboardInterrupt:
        root = "" if default_root else f" --output_root {shlex.quote(str(args.output_root))}"
        print(f"\ninterrupted: finished steps are kept; `python scripts/demo.py --reuse{root}` goes on from them",
              file=sys.stderr, flush=True)
        return 130
    return 0


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot take the demo's files, or None; it is created and written to before any
    step (a read-only one, the default in a read-only checkout, ended the demo in a traceback at
    its first log, or at its record after every step was reused)."""
    probe = folder / f".demo-probe-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        named = "" if err.filename == str(probe) else f": {err.filename}"  # the probe's name tells the user nothing
        return f"cannot be written ({err.strerror or err}{named})"
    return None


def _demo(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    say("hf_rcka demo: teacher and student alone side by side, then the distilled student")
    with ThreadPoolExecutor(max_workers=2) as pool:
        teacher = pool.submit(train, "teacher", args.output_root, 1, None, args.reuse)
        alone = pool.submit(train, "student alone", args.output_root, 1, None, args.reuse)
        results = {"teacher": teacher.result(), "student alone": alone.result()}
    baseline = ["--baseline_dir", results["student alone"]["path"]]
    results["distilled student"] = train("distilled student", args.output_root, 1, baseline, args.reuse,
                                         after=(results["teacher"], results["student alone"]))
    pictured = args.cka and cka_picture(args.output_root)
    total = time.perf_counter() - start
    print(f"\n{table(results)}\n\nTotal {total:.0f} s. The distilled student's model card "
          f"(with the teacher, the baseline{' and the CKA picture' if pictured else ''}) is "
          f"{os.path.relpath(results['distilled student']['path'], Path.cwd())}/README.md.\n"
          f"This is one seed, and one seed's accuracy moves by a point or two. {measured_gain()}")
    record = {**provenance(), "total_seconds": total, "results": results}
    (args.output_root / "demo_results.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    sys.exit(main())
