"""How the pieces of a run depend on each other: the core never parses recipes, the command line
has no import cycle, loss specs are checked once, and each processor's input statistics are read once."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hf_rcka.arguments as arguments
import hf_rcka.cli.job as job
import hf_rcka.trainer.trainer as trainer_module
from hf_rcka.cli.recipe import parse_arguments
from hf_rcka.errors import RecipeError
from hf_rcka.registry import LOSSES

CLI = Path(__file__).parent.parent / "hf_rcka" / "cli"
BASE = {"model_name_or_path": "config:resnet", "output_dir": "unused", "dataset_name": "builtin:digits",
        "use_cpu": True, "report_to": "none"}
TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 12, 16, 20], "depths": [1, 1, 1, 1], "layer_type": "basic"}


# one pytest-xdist worker runs this file (--dist loadgroup): its module fixture starts an interpreter
pytestmark = pytest.mark.xdist_group("test_cli_layout")
CORE = ("hf_rcka.arguments", "hf_rcka.trainer.trainer", "hf_rcka.data.datasets")


@pytest.fixture(scope="module")
def modules_after_import() -> dict[str, set[str]]:
    """The modules a fresh interpreter holds after importing the core, then after also importing the
    smoke test: one interpreter for both (the smoke test's count holds as the core loads no cli)."""
    code = (f"import sys; import {', '.join(CORE)}; print(' '.join(sys.modules))\n"
            "import hf_rcka.cli.smoke; print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    core, smoke = out.splitlines()
    return {"core": set(core.split()), "hf_rcka.cli.smoke": set(smoke.split())}


def test_the_core_imports_no_recipe_parsing(modules_after_import):
    assert not {m for m in modules_after_import["core"] if m.startswith("hf_rcka.cli")}


def _cli_imports(module: str) -> set[str]:
    tree = ast.parse((CLI / f"{module}.py").read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}


def test_the_job_and_the_smoke_test_do_not_import_the_command_line(modules_after_import):
    assert "main" not in _cli_imports("smoke") | _cli_imports("job")
    assert "smoke" not in _cli_imports("job")
    assert "hf_rcka.cli.smoke" in modules_after_import["hf_rcka.cli.smoke"]
    assert "hf_rcka.cli.main" not in modules_after_import["hf_rcka.cli.smoke"]


def test_a_recipes_mistake_is_said_before_the_trainer_loads(tmp_path):
    """The command line imported the job (transformers.Trainer, datasets, timm: about half of its
    start-up) before reading the recipe, so a misspelt key took twice as long to be said."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: config:resnet\nlearnig_rate: 0.1\n")
    code = ("import sys; from hf_rcka.cli.main import main; code = main([sys.argv[1]]); "
            "print(code, *sorted({'transformers.trainer', 'datasets', 'timm'} & set(sys.modules)))")
    ran = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, check=True)
    assert ran.stdout.split() == ["2"], "nothing but the recipe's modules loaded"
    assert ran.stderr.strip().splitlines()[-1].startswith("error: unknown recipe key 'learnig_rate'")


def test_loss_specs_are_checked_once_and_the_trainer_builds_each_once(monkeypatch):
    checks, builds = [], []
    validate, build = arguments.validate_losses, LOSSES.build
    monkeypatch.setattr(arguments, "validate_losses", lambda specs: checks.append(specs) or validate(specs))
    _, _, args = parse_arguments({**BASE, "losses": [{"name": "ce", "weight": "0.5"}]})
    assert len(checks) == 1 and args.losses == [{"name": "ce", "weight": 0.5}]

    from conftest import tiny_vit

    monkeypatch.setattr(LOSSES, "build", lambda name, **options: builds.append(name) or build(name, **options))
    model = trainer_module.build_distillation_model(tiny_vit(), None, args)
    assert builds == ["ce"] and len(checks) == 1, "the trainer builds the checked specs without checking again"
    assert model.losses["ce"].weight == 0.5


def test_the_students_input_statistics_are_read_once(monkeypatch, tmp_path):
    counts = {"job": 0, "trainer": 0}

    def counting(module, name):
        original = getattr(module, "input_stats")

        def wrapper(processor):
            counts[name] += 1
            return original(processor)

        monkeypatch.setattr(module, "input_stats", wrapper)

    counting(job, "job")
    counting(trainer_module, "trainer")
    model_args, _, args = parse_arguments({**BASE, "student_config_overrides": TINY_RESNET, "image_size": 16,
                                           "losses": ["ce"], "output_dir": str(tmp_path)})  # the trainer makes it
    model, processor = job._distillation_model(model_args, args, ["a", "b"])
    trainer_module.DistillationTrainer(model=model, args=args, processing_class=processor)
    assert counts == {"job": 1, "trainer": 0}


@pytest.mark.parametrize("key", ["student_layer", "teacher_layer"])
def test_python_values_are_checked_not_converted(key):
    pair = {"student_layer": 1, "teacher_layer": 2, key: "1"}
    with pytest.raises(RecipeError, match=rf"feature_pairs\[0\]\.{key} must be an integer"):
        arguments.DistillationTrainingArguments(output_dir="unused", use_cpu=True, feature_pairs=[pair])


def test_the_command_leaves_the_imported_objects_out_of_full_collections(monkeypatch):
    """``python -m hf_rcka``, ``hf-rcka-distill`` and ``scripts/distill.py`` freeze what the imports
    made (gc.freeze) before the run; ``main``, which tests call many times in one process, does not."""
    import gc
    import signal

    import hf_rcka.cli.main as cli_main

    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(cli_main, "main", lambda: calls.append("main") or 0)
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as ended:
            cli_main.console_main()
    finally:  # console_main ignores Ctrl-C for the exit it leaves to (_quiet_exit): not this pytest's
        signal.signal(signal.SIGINT, interrupt)
    assert ended.value.code == 0 and calls == ["freeze", "main"]
    script = (Path(__file__).parent.parent / "scripts" / "distill.py").read_text()
    assert "console_main()" in script and "sys.exit(main())" not in script
