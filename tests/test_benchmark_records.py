"""The committed benchmark records render as they were reported."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality_digits"


def _benchmark_script(name: str, monkeypatch) -> object:
    """benchmarks/<name>.py as a module, with benchmarks/ on the path as ``python benchmarks/<name>.py``
    puts it (its _provenance, _quality_report); the path and sys.modules are restored after the test."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("study", ["quality_digits", "quality_digits_core", "quality_digits_confirm_spaced",
                                   "quality_digits_vit2cnn_kd"])
def test_report_only_renders_every_recorded_variant_and_seed(tmp_path, monkeypatch, study):
    """--report-only with its default variants left out the settings search's rows and rewrote the
    committed JSON without them (alone_mix, rcka_fcka6, rcka_fcka_kd were gone); the README's render
    commands name no seeds or variants."""
    out = tmp_path / study
    shutil.copytree(RESULTS.parent / study, out)
    assert _benchmark_script("quality_digits", monkeypatch).main(["--report-only", "--out", str(out)]) == 0
    committed = json.loads((RESULTS.parent / study / "quality_digits.json").read_text())
    rendered = json.loads((out / "quality_digits.json").read_text())
    assert rendered["seeds"] == committed["seeds"] and rendered["validation_images"] == committed["validation_images"]
    # the studies committed before data_seed was spaced have no such key: their seeds' orders were consecutive
    assert rendered["data_orders"] == committed.get("data_orders", "consecutive")
    for name, direction in committed["directions"].items():
        variants = rendered["directions"][name]["variants"]
        assert list(variants) == list(direction["variants"])
        for key, variant in direction["variants"].items():
            assert variants[key]["per_seed"] == variant["per_seed"], (name, key)



def test_report_only_of_a_subset_writes_nothing(tmp_path, monkeypatch, capsys):
    """--variants (or --directions) with --report-only rewrote the study's JSON, plot and READMEs
    with those rows alone; as with --seeds, a subset is printed and nothing is written."""
    out = tmp_path / "quality_digits"
    shutil.copytree(RESULTS, out)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    quality_digits = _benchmark_script("quality_digits", monkeypatch)
    assert quality_digits.main(["--report-only", "--out", str(out), "--variants", "kd"]) == 0
    assert quality_digits.main(["--report-only", "--out", str(out), "--directions", "vit2cnn"]) == 0
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    assert "are left as they were" in capsys.readouterr().out


def test_benchmarks_measure_this_checkouts_hf_rcka(tmp_path):
    """A benchmark stamps its record with this checkout's commit, so it must import this checkout's
    hf_rcka, not an installed one (from another clone, an editable install points elsewhere)."""
    import os
    import subprocess

    scripts = ["loss_cost", "data_throughput", "step_overhead", "device_syncs", "quality_digits", "gpu_checks"]
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); path = list(sys.path)\n"
            f"for name in {scripts!r}:\n"
            "    __import__(name)\n"
            "    print(name, __import__('hf_rcka').__file__)  # imported as the script's functions import it\n"
            "    sys.path[:] = path  # each script on its own: none finds another's path or modules\n"
            f"    for m in [m for m in sys.modules if m.split('.')[0] in {[*scripts, 'hf_rcka']!r}]:\n"
            "        del sys.modules[m]\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in done.stdout.splitlines():
        name, path = line.split()
        assert Path(path).resolve().is_relative_to(ROOT), f"{name} measured {path}, not {ROOT}"


def test_gpu_scripts_print_help_and_say_when_there_is_no_cuda(monkeypatch, capsys):
    """gpu_checks.py took ``--help`` for a device string, and both GPU scripts ended in a CUDA
    traceback on a machine without one. Run in this process (the scripts' ``main``, as ``python
    script.py`` calls it): the interpreter prints a SystemExit's message alone, as one line."""
    import torch

    def run(script, *args):
        module = _benchmark_script(script, monkeypatch)
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
        with pytest.raises(SystemExit) as stopped:
            module.main()
        return stopped.value.code

    assert run("gpu_checks", "--help") == 0 and "usage: gpu_checks.py" in capsys.readouterr().out
    if torch.cuda.is_available():
        return
    for script in ("gpu_checks", "memory_breakdown"):
        message = run(script)
        assert isinstance(message, str) and "no CUDA device" in message and "\n" not in message, message


def test_the_memory_table_gives_each_peak_above_the_runtime_both_sides_hold(monkeypatch):
    """On CPU a child's peak includes its runtime (Python, torch...: about 790 MiB of a 1.1 GiB
    limit), which pulls the whole-process ratio toward 1: the table gives (peak - runtime) /
    (limit's peak - limit's runtime) and its trained-state floor in their own columns beside it."""
    from types import SimpleNamespace

    step_overhead = _benchmark_script("step_overhead", monkeypatch)
    children = {"limit": {"peak_mib": 1100.0, "base_mib": 900.0, "runtime_mib": 800.0, "trainable": 1000},
                "fcka": {"peak_mib": 1400.0, "base_mib": 950.0, "runtime_mib": 790.0, "trainable": 1000 + 2**16}}
    monkeypatch.setattr(step_overhead, "_memory_child", lambda args, variant: dict(children[variant]))
    memory = step_overhead.measure_memory(SimpleNamespace(memory_jobs=1), ["limit", "fcka"])
    # 2**16 trainable parameters of 16 bytes of state each: 1 MiB over the limit's peak
    assert memory["fcka"]["ratio_above_runtime"] == pytest.approx((1400 - 790) / (1100 - 800))
    assert memory["fcka"]["state_floor_above_runtime"] == pytest.approx((1100 - 800 + 1) / (1100 - 800))
    row = step_overhead.table("vit2cnn", ["limit", "fcka"], None, memory).splitlines()[-1]
    # peak, whole-process ratio, above the post-build baseline, its floor, above the runtime, its floor
    assert row == "| fcka | - | - | - | 1400 | 1.273 | 2.250 | 1.001 | 2.033 | 1.003 | - |"


def test_a_variant_of_one_run_has_no_spread_to_report(tmp_path, monkeypatch):
    """One seed (a variant that has run once, ``--seeds 0``) printed "std 0.0", as if every seed had
    scored alike; it has no spread to tell, so its cell is "-" and its bar has no error bar."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _quality_report as report

    one = {"eval_accuracy": 0.9, "seconds": 1.0}
    variants = report.summarise({"alone": {"label": "student alone", "runs": {0: one, 1: {**one, "eval_accuracy": 0.8}}},
                                 "kd": {"label": "KD", "runs": {0: one}}})
    assert variants["kd"]["std"] is None and variants["alone"]["std"] == pytest.approx(0.0707, abs=1e-4)
    study = {"seeds": [0, 1], "validation_images": 540, "directions": {"cnn2vit": {
        "label": "CNN -> ViT", "teacher_accuracy": 0.95, "variants": variants}}}
    rows = [line for line in report.render_markdown(study).splitlines() if line.startswith("| ")]
    assert rows[-2].split(" | ")[3] == "7.1" and rows[-1].split(" | ")[3] == "-", rows
    report.save_plot(study, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def _epoch_order(tmp_path, seed, data_seed, epoch):
    from test_sampler_ema import indexed_dataset, make_args

    from conftest import processor, tiny_vit
    from hf_rcka import DistillationTrainer

    trainer = DistillationTrainer(model=tiny_vit(), args=make_args(tmp_path, seed=seed, data_seed=data_seed),
                                  train_dataset=indexed_dataset(24), processing_class=processor(16))
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)
    return [int(i) for batch in loader for i in batch["pixel_values"][:, 0, 0, 0]]


def test_study_seeds_shuffle_in_orders_of_their_own(tmp_path, monkeypatch):
    """The Trainer shuffles epoch e with data_seed + e, so with data_seed = seed the study's seeds 0 and
    1 read the same orders one epoch apart; each run now passes data_seed 1000 x seed, and the tables
    say which kind of orders a study's records had."""
    quality_digits = _benchmark_script("quality_digits", monkeypatch)
    commands = {}

    def recorded(recipe, overrides, output_dir, log):
        commands[overrides["seed"]] = quality_digits._command(recipe, overrides, output_dir)[1:]
        return {"eval_accuracy": 0.5 + overrides["seed"] / 10, "seconds": 1.0, "command": commands[overrides["seed"]]}

    monkeypatch.setattr(quality_digits, "run_cli", recorded)
    direction = quality_digits.DIRECTIONS["cnn2vit"]
    for seed in (0, 1):
        quality_digits.student_run(tmp_path, tmp_path, "cnn2vit", direction, "alone", seed, tmp_path / "teacher")
    data_seeds = [int(commands[seed][commands[seed].index("--data_seed") + 1]) for seed in (0, 1)]
    assert data_seeds == [0, 1000]
    assert _epoch_order(tmp_path, 0, None, 1) == _epoch_order(tmp_path, 1, None, 0), "the premise: shared orders"
    assert _epoch_order(tmp_path, 0, data_seeds[0], 1) != _epoch_order(tmp_path, 1, data_seeds[1], 0)

    records = [json.loads((tmp_path / "runs" / "cnn2vit" / "alone" / f"seed{s}.json").read_text()) for s in (0, 1)]
    assert {quality_digits._data_orders(r) for r in records} == {"spaced"}
    import _quality_report as report

    study = {"seeds": [0, 1], "validation_images": 540, "data_orders": "spaced", "data_seed_stride": 1000, "directions": {"cnn2vit": {
        "label": "CNN -> ViT", "teacher_accuracy": 0.95,
        "variants": report.summarise({"alone": {"label": "alone", "runs": dict(enumerate(records))}})}}}
    assert "orders of its own (data_seed 1000 x seed)" in report.render_markdown(study)
    assert "consecutive seeds share" in report.render_markdown({**study, "data_orders": "consecutive"})


def test_folder_listing_builds_folders_hf_rcka_takes(tmp_path, monkeypatch):
    """folder_listing.py hard-linked one JPEG per class into both splits, which hf_rcka now refuses
    as one file in train and validation (DataError before any table, at every size): each split
    links to sources of its own."""
    folder_listing = _benchmark_script("folder_listing", monkeypatch)
    train, val = folder_listing.write_folder(tmp_path, 12, 2)
    splits = folder_listing.ours(train, val)
    assert len(splits["train"]) == 12 and len(splits["validation"]) == 2


def test_step_overhead_refuses_an_unknown_pair_or_a_missing_gpu_in_one_line(monkeypatch, capsys):
    """``--pairs cnn2vit,vit2cn`` measured cnn2vit for minutes, then stopped in a KeyError before
    the JSON was written; ``--device cuda`` without CUDA ended in torch's traceback."""
    import torch

    step_overhead = _benchmark_script("step_overhead", monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        step_overhead.parse_args(["--pairs", "cnn2vit,vit2cn"])
    assert stopped.value.code == 2 and "unknown pairs ['vit2cn']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as stopped:
            step_overhead.parse_args(["--device", "cuda"])
        assert isinstance(stopped.value.code, str) and "no CUDA device" in stopped.value.code


def test_quality_digits_refuses_bad_jobs_or_readme_before_training(tmp_path, monkeypatch, capsys):
    """``--jobs 0`` stopped in a ValueError after the teachers trained, and a ``--readme`` without
    the ``--block`` (or missing) in a traceback after every run of the study: both are usage errors."""
    quality_digits = _benchmark_script("quality_digits", monkeypatch)
    monkeypatch.setattr(quality_digits, "teacher_dir", lambda *args: pytest.fail("trained before the check"))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- other:begin -->\n<!-- other:end -->\n")
    for flags, said in ((["--jobs", "0"], "--jobs 0"), (["--readme", str(readme)], "quality_digits:begin"),
                        (["--readme", str(tmp_path / "missing.md")], "missing.md has no")):
        with pytest.raises(SystemExit) as stopped:
            quality_digits.main(["--out", str(tmp_path / "study"), *flags])
        assert stopped.value.code == 2 and said in capsys.readouterr().err, flags
    assert quality_digits.parse_args(["--readme", str(readme), "--block", "other"]).readme == [readme]


def test_loss_cost_refuses_unknown_parts_and_no_repeats(monkeypatch, capsys):
    """``--parts ab`` measured nothing and wrote a JSON of metadata alone (exit 0); ``--repeats 0``
    ended in statistics' "no median for empty data" traceback."""
    loss_cost = _benchmark_script("loss_cost", monkeypatch)
    for flags, said in ((["--parts", "ab"], "unknown ['ab']"), (["--parts", "a,d"], "unknown ['d']"),
                        (["--repeats", "0"], "--repeats 0")):
        with pytest.raises(SystemExit) as stopped:
            loss_cost.parse_args(flags)
        assert stopped.value.code == 2 and said in capsys.readouterr().err, flags
    assert loss_cost.parse_args(["--parts", "a,c"]).parts == "a,c"


@pytest.mark.parametrize("script, flags", [
    ("data_throughput", ["--classes", "0"]), ("data_throughput", ["--repeats", "0"]),
    ("folder_listing", ["--classes", "0"]), ("folder_listing", ["--repeats", "0"]),
    ("folder_listing", ["--files", "5", "--classes", "10"]),
])
def test_data_benchmarks_refuse_counts_they_cannot_measure(monkeypatch, capsys, script, flags):
    """A zero count ended in a ZeroDivisionError or the median of no samples, and folder_listing's
    fewer files than classes in hf_rcka's LabelError (validation classes train lacks), each after
    the folder was written: now a usage error."""
    module = _benchmark_script(script, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *flags])
    with pytest.raises(SystemExit) as stopped:
        module.main(flags) if script == "folder_listing" else module.main()
    assert stopped.value.code == 2 and "error: " in capsys.readouterr().err


def test_quality_digits_refuses_a_seed_given_twice(tmp_path, monkeypatch, capsys):
    """``--seeds 5 6 6`` trained seed 6 twice into one run folder (at once with ``--jobs 2``), and a
    render's header read "seeds 5, 6, 6" over two runs."""
    quality_digits = _benchmark_script("quality_digits", monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        quality_digits.parse_args(["--out", str(tmp_path), "--seeds", "5", "6", "6"])
    assert stopped.value.code == 2 and "[6] more than once" in capsys.readouterr().err


def test_op_count_refuses_an_empty_batch(monkeypatch, capsys):
    """``--batch 0`` counted the ops of a step on empty tensors (more than at batch 1) and wrote
    them as a record, exit 0."""
    op_count = _benchmark_script("op_count", monkeypatch)
    monkeypatch.setattr(op_count, "measure", lambda *args: pytest.fail("counted a batch of 0"))
    monkeypatch.setattr(sys, "argv", ["op_count.py", "--batch", "0"])
    with pytest.raises(SystemExit) as stopped:
        op_count.main()
    assert stopped.value.code == 2 and "--batch: 0: give 1 or more" in capsys.readouterr().err


def test_step_overhead_refuses_a_profile_of_a_variant_it_does_not_run(monkeypatch):
    """``--profile rcka+feature-cka`` (a typo) or a variant left out of ``--variants`` printed the
    tables without the profile asked for, and nothing said why."""
    step_overhead = _benchmark_script("step_overhead", monkeypatch)
    monkeypatch.setattr(step_overhead, "run_pair", lambda *args: pytest.fail("measured before the check"))
    for flags in (["--profile", "rcka+feature-cka"], ["--variants", "kd", "--profile", "rcka"]):
        with pytest.raises(SystemExit) as stopped:
            step_overhead.main(["--no-memory", "--threads", "0", *flags])
        assert isinstance(stopped.value.code, str) and "is not among the variants measured" in stopped.value.code


def test_a_study_trains_again_after_the_code_changed(tmp_path, monkeypatch):
    """A run was reused when its record held the command it would run now, and the command names
    no code: after an edit of hf_rcka (or an upgrade) a study's table set its earlier runs beside
    new ones, as if one code had made them. A record now holds a hash of the code it ran."""
    quality_digits = _benchmark_script("quality_digits", monkeypatch)
    trained = []

    def recorded(recipe, overrides, output_dir, log):
        trained.append(overrides["seed"])
        code = getattr(quality_digits, "code_version", lambda: None)()  # as run_cli records it
        return {"eval_accuracy": 0.5, "seconds": 1.0, "code": code,
                "command": quality_digits._command(recipe, overrides, output_dir)[1:]}

    monkeypatch.setattr(quality_digits, "run_cli", recorded)
    direction = quality_digits.DIRECTIONS["cnn2vit"]
    for _ in range(2):
        quality_digits.student_run(tmp_path, tmp_path, "cnn2vit", direction, "alone", 0, tmp_path / "teacher")
    assert trained == [0], "an interrupted study resumes: the same command and code are not run again"
    monkeypatch.setattr(quality_digits, "code_version", lambda: "an edited hf_rcka", raising=False)
    quality_digits.student_run(tmp_path, tmp_path, "cnn2vit", direction, "alone", 0, tmp_path / "teacher")
    assert trained == [0, 0]


def test_demo_records_refuses_a_folder_without_records(tmp_path, monkeypatch, capsys):
    """A mistyped ``--results`` printed the table's header alone, as if no demo had been recorded."""
    demo_records = _benchmark_script("demo_records", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["demo_records.py", "--results", str(tmp_path / "reslts")])
    with pytest.raises(SystemExit) as stopped:
        demo_records.main()
    assert stopped.value.code == 2 and "holds no demo_*.json record" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["step_overhead", "op_count", "device_syncs"])
def test_a_record_names_the_commit_its_measurement_started_at(tmp_path, monkeypatch, script):
    """The commit was read after the measurement (minutes at full size): a run started on an edited
    tree that was committed before it ended was recorded as that clean commit, and
    op_count_full_b2.json names b6b7b0c, committed seconds after its run ended."""
    from types import SimpleNamespace

    import torch

    module = _benchmark_script(script, monkeypatch)
    measured = []
    monkeypatch.setattr(module._provenance, "commit", lambda paths: "later" if measured else "at the start")
    # the scripts' settings for a process of their own stay out of this one (threads, quiet loggers)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    if script == "device_syncs":
        monkeypatch.setattr(module.transformers.logging, "set_verbosity_error", lambda: None)
        monkeypatch.setattr(module, "logging", SimpleNamespace(getLogger=lambda name: SimpleNamespace(setLevel=lambda level: None),
                                                               ERROR=40))
    if script == "step_overhead":
        monkeypatch.setattr(module, "run_pair", lambda *args: measured.append(1) or {})
    elif script == "op_count":
        monkeypatch.setattr(module, "measure", lambda *args: measured.append(1) or {})
        monkeypatch.setattr(module, "print_table", lambda *args: None)
    else:
        monkeypatch.setattr(module, "measure", lambda *args: measured.append(1) or {})
        monkeypatch.setattr(module, "summarize", lambda sites: {})
        monkeypatch.setattr(module, "print_table", lambda *args: None)
        monkeypatch.setattr(module.SyncCounter, "install", lambda self: None)
    out = tmp_path / "record.json"
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--json", str(out)])
    module.main(["--no-memory", "--threads", "0", "--json", str(out)]) if script == "step_overhead" else module.main()
    assert measured and json.loads(out.read_text())["meta"]["commit"] == "at the start"
