"""scripts/demo.py's bookkeeping: which steps ``--reuse`` keeps, interruptions, the CKA step.

The training runs are replaced by a fake ``subprocess.run`` that writes what a finished (or cut
short) run leaves in its folder; the real demo runs in CI's README check, not here.
"""

import importlib.util
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The demo script with its recipes copied (so a test may edit one) and a fake training command."""
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "recipes", root / "recipes")
    monkeypatch.setattr(module, "ROOT", root)
    module.runs = []  # the recipes trained, in order
    module.outcome = {}  # recipe name -> "interrupted" / "failed" / "no eval"
    module.cka_failure = None

    real_run = module.subprocess.run

    def fake_run(command, **kwargs):
        if command[0] == "git":  # the record's commit
            return real_run(command, **kwargs)
        if command[1].endswith("cka_report.py"):
            module.runs.append("cka_report")
            failed = module.cka_failure is not None
            return SimpleNamespace(returncode=2 if failed else 0, stderr=module.cka_failure or "")
        raise AssertionError(f"a training step runs through Popen: {command}")

    class FakeTraining:
        """A training step's process: writes what a finished (or cut short) run leaves, and with
        ``module.slow`` set keeps the demo waiting once, with an epoch in its log."""

        def __init__(self, command, **kwargs):
            recipe = Path(command[2]).stem
            output = Path(kwargs["cwd"]) / command[command.index("--output_dir") + 1]  # relative to the run's cwd
            module.runs.append(recipe)
            output.mkdir(parents=True, exist_ok=True)
            outcome = module.outcome.get(recipe)
            results = {"train_loss": 1.0} if outcome in ("interrupted", "no eval") else {"eval_accuracy": 0.5 + len(module.runs) / 100}
            (output / "all_results.json").write_text(json.dumps(results))
            (output / "README.md").write_text("card")
            kwargs["stdout"].write("{'loss': '2.1', 'epoch': '3.5'}\n")
            kwargs["stdout"].flush()
            self.returncode = {"interrupted": 130, "failed": 1}.get(outcome, 0)
            self.waits = 1 if getattr(module, "slow", False) else 0

        def wait(self, timeout=None):
            if self.waits:
                self.waits -= 1
                raise module.subprocess.TimeoutExpired("distill.py", timeout)
            return self.returncode

        def poll(self):
            return self.returncode

    real_popen = module.subprocess.Popen

    def fake_popen(command, **kwargs):  # subprocess.run (the record's git) opens a Popen too
        if command[0] == "git":
            return real_popen(command, **kwargs)
        return FakeTraining(command, **kwargs)

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    monkeypatch.setattr(module.subprocess, "Popen", fake_popen)
    return module


TEACHER, ALONE, DISTILLED = "supervised-resnet10t-digits", "supervised-vit_tiny-digits", "rcka-vit_tiny_from_resnet10t-digits"


def _main(demo, tmp_path, *flags):
    demo.runs.clear()
    return demo.main(["--output_root", str(tmp_path / "out"), "--no-cka", *flags])


def test_reuse_keeps_finished_steps(demo, tmp_path):
    assert _main(demo, tmp_path) == 0
    assert sorted(demo.runs) == sorted([TEACHER, ALONE, DISTILLED])
    first = json.loads((tmp_path / "out" / "demo_results.json").read_text())
    assert _main(demo, tmp_path, "--reuse") == 0
    assert demo.runs == []
    again = json.loads((tmp_path / "out" / "demo_results.json").read_text())
    assert {s: r["accuracy"] for s, r in again["results"].items()} == \
        {s: r["accuracy"] for s, r in first["results"].items()}
    assert all(r.get("reused") for r in again["results"].values()) and not any(
        r.get("reused") for r in first["results"].values())
    # the record says what made the numbers
    assert {"commit", "date", "machine", "libraries", "total_seconds"} <= again.keys()
    assert again["libraries"]["torch"] and again["commit"]


def test_an_edit_of_the_package_or_an_upgrade_retrains_every_step(demo, tmp_path, monkeypatch, capsys):
    """It kept every step across a change of split_seed's default in hf_rcka, which changes the
    evaluated images."""
    assert _main(demo, tmp_path) == 0
    demo.code_version.cache_clear()
    monkeypatch.setattr(demo, "_versions", lambda: {"torch": "a later one"})
    capsys.readouterr()
    assert _main(demo, tmp_path, "--reuse") == 0
    assert sorted(demo.runs) == sorted([TEACHER, ALONE, DISTILLED])
    assert "(reused)" not in capsys.readouterr().out
    demo.code_version.cache_clear()


def test_a_changed_recipe_retrains_its_step_and_the_steps_that_learn_from_it(demo, tmp_path):
    """It reused every step whose folder had results: an edited teacher recipe kept the old teacher,
    and a retrained teacher was shown next to a student distilled from the old one."""
    assert _main(demo, tmp_path) == 0
    recipe = demo.ROOT / "recipes" / f"{TEACHER}.yaml"
    recipe.write_text(recipe.read_text() + "\nnum_train_epochs: 3\n")
    assert _main(demo, tmp_path, "--reuse") == 0
    assert sorted(demo.runs) == sorted([TEACHER, DISTILLED])


def test_a_run_changed_outside_the_demo_is_not_reused(demo, tmp_path):
    assert _main(demo, tmp_path) == 0
    results = tmp_path / "out" / ALONE / "all_results.json"
    results.write_text(json.dumps({"eval_accuracy": 0.1}))  # e.g. scripts/distill.py run again by hand
    assert _main(demo, tmp_path, "--reuse") == 0
    assert sorted(demo.runs) == sorted([ALONE, DISTILLED])


def test_an_interrupted_step_is_trained_again(demo, tmp_path, capsys):
    """Ctrl-C in a step's final evaluation left results without eval_accuracy next to an earlier
    run's time record: --reuse then failed with KeyError: 'eval_accuracy'."""
    assert _main(demo, tmp_path) == 0
    demo.outcome[DISTILLED] = "interrupted"
    assert _main(demo, tmp_path) == 130
    assert "interrupted: finished steps are kept" in capsys.readouterr().err
    demo.outcome.clear()
    assert _main(demo, tmp_path, "--reuse") == 0
    assert demo.runs == [DISTILLED]


def test_a_failed_step_leaves_nothing_to_reuse(demo, tmp_path):
    assert _main(demo, tmp_path) == 0
    demo.outcome[TEACHER] = "failed"
    with pytest.raises(SystemExit, match="teacher failed"):
        _main(demo, tmp_path)
    demo.outcome.clear()
    assert _main(demo, tmp_path, "--reuse") == 0
    assert sorted(demo.runs) == sorted([TEACHER, DISTILLED])  # the student alone finished both times


def test_a_step_that_ends_without_evaluating_is_a_failure(demo, tmp_path):
    demo.outcome[ALONE] = "no eval"
    with pytest.raises(SystemExit, match="student alone failed"):
        _main(demo, tmp_path)


def test_a_failed_cka_picture_is_one_line_and_not_claimed(demo, tmp_path, capsys):
    stale = tmp_path / "out" / "cka_report"
    stale.mkdir(parents=True)
    (stale / "cka.png").write_bytes(b"old")
    (stale / "notes.txt").write_text("someone's")
    demo.cka_failure = "Traceback...\nerror: the compared runs held out different validation images"
    assert demo.main(["--output_root", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "the CKA picture failed and was skipped: error: the compared runs held out different" in out
    assert "CKA picture)" not in out and "(with the teacher, the baseline) is" in out
    assert not (stale / "cka.png").exists()  # no earlier demo's picture is left to mistake for this one's
    assert (stale / "notes.txt").read_text() == "someone's"  # and nothing else there is deleted


def test_an_output_root_that_cannot_be_written_is_one_line_before_any_step(demo, tmp_path, capsys):
    """A read-only --output_root (the default of a read-only checkout) ended the demo in a traceback."""
    (tmp_path / "file").write_text("not a folder")
    root = tmp_path / "file" / "out"  # cannot be made, even as root
    assert demo.main(["--output_root", str(root), "--no-cka"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --output_root {root} cannot be written (Not a directory: "
                                               f"{root}): give a folder you can write to")
    assert demo.runs == []
    assert _main(demo, tmp_path) == 0 and not list((tmp_path / "out").glob(".*")), "the check left a file"


def test_a_relative_output_root_is_the_callers_folder(demo, tmp_path, monkeypatch, capsys):
    """The runs start in the repository: a relative --output_root from elsewhere was written there,
    and the demo, reading its own folder, said 'teacher failed (exit 0)'."""
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--output_root", "rel", "--no-cka"]) == 0
    assert (tmp_path / "rel" / DISTILLED / "all_results.json").exists()
    demo.outcome[DISTILLED] = "interrupted"
    (tmp_path / "rel" / f"{DISTILLED}.demo.json").unlink()
    assert demo.main(["--output_root", "rel", "--no-cka", "--reuse"]) == 130
    assert f"python scripts/demo.py --reuse --output_root {tmp_path / 'rel'}" in capsys.readouterr().err


def test_the_demo_says_how_far_each_step_is_and_announces_the_cka_picture(demo, tmp_path, capsys):
    """It was silent for 27-50 s at a time, then for the CKA picture's 12-19 s, which no row timed;
    the side-by-side steps' lines once ran into one; before a step's first epoch, each line read
    "starting..." alike."""
    demo.slow = True
    assert demo.main(["--output_root", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    for step in ("teacher", "distilled student"):  # with the time it has run: each line says something new
        assert any(re.fullmatch(rf"  {step}: epoch 3\.5 \(\d+ s\)\.\.\.", line) for line in out), out
    assert any(line.startswith("  teacher: ") and line.endswith("% in 0 s") for line in out)
    assert any(line.startswith("  CKA picture: python scripts/cka_report.py") for line in out)
    assert "  CKA picture: made in 0 s" in out
    assert all(line.count("python scripts/distill.py") <= 1 for line in out)



def test_the_readmes_demo_figures_are_its_record(tmp_path):
    """The quick start's demo figures were typed from a record: a later edit could drift from it
    with nothing to notice. They must be the ones its cited ``demo_<commit>.json`` holds, as the
    demo printed them, and the records table must list every record."""
    spec = importlib.util.spec_from_file_location("demo_records", ROOT / "benchmarks" / "demo_records.py")
    records = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(records)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    quoted = re.search(r"From a clean clone at commit (\w+), .*? it printed teacher ([\d.]+)%, student alone "
                       r"([\d.]+)%, distilled student ([\d.]+)% \(([+-][\d.]+) points\) in (\d+) s", readme)
    assert quoted, "the quick start no longer quotes a demo record as this test reads it"
    commit, *figures = quoted.groups()
    record = json.loads((ROOT / "benchmarks" / "results" / f"demo_{commit}.json").read_text(encoding="utf-8"))
    row = records.row(record, f"demo_{commit}.json")
    for figure in figures[:3]:
        assert f"| {figure}% |" in row
    assert f"| {figures[3]} | {figures[4]} |" in row, row
    table = records.table(ROOT / "benchmarks" / "results")
    assert table.count("\n") == 1 + len(list((ROOT / "benchmarks" / "results").glob("demo_*.json")))
    benchmarks_readme = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert table in benchmarks_readme, "benchmarks/README.md's table is not demo_records.py's output: run it again"


def test_the_demo_ends_with_what_several_seeds_measured(demo, tmp_path, capsys):
    """One seed's gain moves by a point or two, so the demo also says what the benchmark measured
    over several seeds for its pair and setting, read from the committed record (not typed)."""
    study = Path("benchmarks") / "results" / "quality_digits_confirm_spaced" / "quality_digits.json"
    assert _main(demo, tmp_path) == 0
    assert "benchmarks/quality_digits.py measures the gain over several seeds" in capsys.readouterr().out
    (demo.ROOT / study).parent.mkdir(parents=True)
    shutil.copy(ROOT / study, demo.ROOT / study)
    gain = json.loads((ROOT / study).read_text())["directions"]["cnn2vit"]["variants"]["rcka_fcka3_srd"]
    gain = gain["paired_difference"]
    assert _main(demo, tmp_path) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"Over {gain['n']} seeds, each with data orders of its own" in printed, printed[-600:]
    low, high = gain["ci95"]
    assert (f"{100 * gain['mean']:+.1f} points over the student alone (95% interval {100 * low:+.1f} to "
            f"{100 * high:+.1f}; {study};") in printed, printed[-600:]
