"""The distill job end to end on the built-in digits data: teacher, then student, then reload."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_rcka.cli.main import main

TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 12, 16, 20], "depths": [1, 1, 1, 1], "layer_type": "basic"}
TINY_VIT = {"hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 44,
            "image_size": 16, "patch_size": 4}
COMMON = {
    "dataset_name": "builtin:digits", "no_aug": True, "max_train_samples": 60, "max_eval_samples": 30,
    "max_steps": 3, "per_device_train_batch_size": 10, "per_device_eval_batch_size": 15, "report_to": "none",
    "use_cpu": True, "logging_steps": 1, "save_strategy": "steps", "save_steps": 3, "image_size": 16,
    # a student of 3 steps is at chance: said, not an error (the test of the check sets its own)
    "student_accuracy_check": "warn",
}

# one pytest-xdist worker runs this file (--dist loadgroup): its module fixture trains two models
pytestmark = pytest.mark.xdist_group("test_cli")


def write(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    teacher_dir, student_dir = root / "teacher", root / "student"
    teacher = {**COMMON, "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET,
               "output_dir": str(teacher_dir), "learning_rate": "1e-2"}
    assert main([write(root / "teacher.yaml", teacher)]) == 0
    student = {
        **COMMON, "model_name_or_path": "config:vit", "student_config_overrides": TINY_VIT,
        "teacher_model_name_or_path": str(teacher_dir), "output_dir": str(student_dir),
        "losses": [{"name": "ce"}, {"name": "rcka"}, {"name": "feature_cka"}], "feature_pairs": "auto",
        "teacher_accuracy_check": "off", "card_license": "cc-by-nc-4.0",
    }
    recipe = write(root / "student.yaml", student)
    assert main([recipe, "--learning_rate", "2e-3"]) == 0
    return root, teacher_dir, student_dir, recipe


def test_output_dir_holds_a_plain_model_card_recipe_and_results(runs):
    _, _, student_dir, _ = runs
    names = {p.name for p in student_dir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md",
            "distill_config.yaml", "all_results.json"} <= names
    assert "distillation_state.safetensors" not in names
    results = json.loads((student_dir / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    recorded = (student_dir / "distill_config.yaml").read_text()
    assert recorded.startswith("# Global batch: 10 images (1 process x 10 images) per optimizer step.\n"
                               "# To train it again (into a new folder): python scripts/distill.py "
                               f"{student_dir / 'distill_config.yaml'} --output_dir '<new folder>'\n"), \
        "the launch is recorded with the recipe"
    resolved = yaml.safe_load(recorded)
    assert resolved["learning_rate"] == pytest.approx(2e-3), "flags override the recipe and are recorded"
    assert [loss["name"] for loss in resolved["losses"]] == ["ce", "rcka", "feature_cka"]
    card = (student_dir / "README.md").read_text()
    assert "knowledge-distillation" in card.split("---")[1] and "base_model" not in card
    assert "license: cc-by-nc-4.0" in card.split("---")[1], "the recipe's card_license, not apache-2.0"
    assert "`rcka_intra` (1), `rcka_inter` (1)" in card, "the card lists each weighted term, as trained"
    assert "- Training: 3 optimizer steps (0.5 epochs), global batch 10 images (1 process x 10 images), " \
           "peak learning rate 0.002\n" in card
    # what a rerun needs besides the recipe: the seed, the precision, the libraries' versions
    from importlib.metadata import version

    assert f"- Reproduction: seed {resolved.get('seed', 42)}, float32; hf_rcka " in card
    assert f"torch {version('torch')}, transformers {version('transformers')}, timm {version('timm')}, " in card
    assert "Each `eval_<term>_loss` is the term times its weight (the weights are listed above), and `eval_loss` " \
           "is their sum. `eval_ce_loss` is plain cross-entropy, without label smoothing." in card
    # the teacher through the student's inputs (what distillation fed it), and as its own run evaluated it
    own = json.loads((runs[1] / "all_results.json").read_text())["eval_accuracy"]
    assert "| teacher | " in card and (f"| teacher, its own preprocessing | {100 * own:.1f}% | same images, as the "
                                      "run that trained it evaluated it |") in card
    # relational terms change with the evaluation batch: the card says over how many images they were taken
    assert "depend on its size: `eval_rcka_intra_loss`, `eval_rcka_inter_loss`, `eval_feature_cka_loss` over 15 " \
           "images at once." in card
    assert "Measured on 30 images of scikit-learn handwritten digits: a random subset (max_eval_samples" in card
    assert "of the 270 images of a stratified 15% validation split" in card, "max_eval_samples drew from 270"


def test_exported_student_loads_without_hf_rcka(runs):
    _, _, student_dir, _ = runs
    code = (
        "import sys, torch; sys.modules['hf_rcka'] = None\n"
        "from transformers import AutoModelForImageClassification, AutoImageProcessor\n"
        f"m = AutoModelForImageClassification.from_pretrained({str(student_dir)!r})\n"
        f"p = AutoImageProcessor.from_pretrained({str(student_dir)!r})\n"
        "x = p(images=[__import__('PIL.Image').Image.new('RGB', (8, 8))], return_tensors='pt')['pixel_values']\n"
        "print(tuple(m(pixel_values=x).logits.shape), m.config.id2label[3])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["(1,", "10)", "3"]


def test_teacher_run_is_plain_supervised_training(runs):
    _, teacher_dir, _, _ = runs
    model = AutoModelForImageClassification.from_pretrained(teacher_dir)
    assert model.config.num_labels == 10
    assert AutoImageProcessor.from_pretrained(teacher_dir) is not None
    card = (teacher_dir / "README.md").read_text()
    assert "knowledge-distillation" not in card.split("---")[1]


def test_existing_run_is_never_overwritten_and_resume_continues(runs, capsys):
    _, _, student_dir, recipe = runs
    before = (student_dir / "model.safetensors").read_bytes()
    assert main([recipe]) == 2
    assert "already holds a model or checkpoints" in capsys.readouterr().err
    assert (student_dir / "model.safetensors").read_bytes() == before
    # resumed with the flags it ran with (another learning rate would not be applied, and is refused)
    last = max(int(p.name.split("-")[1]) for p in student_dir.glob("checkpoint-*"))
    record = (student_dir / "distill_config.yaml").read_text()
    copy = student_dir / f"checkpoint-{last}" / "distill_config.yaml"
    # the checkpoint keeps the record it trained with, its command to train it again naming the copy
    # (the run folder's is rewritten by a later launch)
    copied = copy.read_text()
    assert copied == record.replace(f" {student_dir / 'distill_config.yaml'} ", f" {copy} ", 1) != record
    assert (copy.parent / "_working_dir.json").read_text() == (student_dir / "_working_dir.json").read_text()
    assert main([recipe, "--learning_rate", "2e-3", "--resume_from_checkpoint", "true", "--max_steps", "4"]) == 0
    state = json.loads((student_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # transformers' train_loss averages this call's steps only: said, not passed off as the run's
    results = json.loads((student_dir / "all_results.json").read_text())
    assert results["train_loss_from_step"] == last < 4 and "train_loss" in results
    # the record's command trains from step 0 in one go, and the card's steps ran in two launches:
    # both said nothing of the resume
    assert f"# Resumed at step {last} from a checkpoint: that command gives this run's numbers only with " \
           "no_aug" in (student_dir / "distill_config.yaml").read_text()
    assert copy.read_text() == copied, "the resume rewrote it"
    assert f"; resumed at step {last} from a checkpoint of an earlier launch" in (student_dir / "README.md").read_text()


def test_bad_recipes_fail_fast_with_exit_code_2(tmp_path, capsys):
    recipe = write(tmp_path / "bad.yaml", {"model_name_or_path": "config:vit", "output_dir": str(tmp_path / "o"),
                                           "dataset_name": "builtin:digits", "losses": [{"name": "rcak"}]})
    assert main([recipe]) == 2
    assert "did you mean 'rcka'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "nothing is created before the recipe is valid"
    assert main([str(tmp_path / "missing.yaml")]) == 2


def test_interrupted_training_leaves_a_checkpoint_to_resume(tmp_path):
    from transformers import TrainerCallback

    from conftest import pixel_dataset, processor, tiny_vit
    from hf_rcka import DistillationTrainer, DistillationTrainingArguments
    from hf_rcka.cli.job import _train

    class CtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    args = DistillationTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=5, per_device_train_batch_size=5,
                                         report_to="none", use_cpu=True, save_strategy="no")
    trainer = DistillationTrainer(model=tiny_vit(), args=args, train_dataset=pixel_dataset(20),
                                  processing_class=processor(16), callbacks=[CtrlC()])
    with pytest.raises(KeyboardInterrupt):
        _train(trainer, resume=None)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2


def test_the_card_compares_with_a_baseline_only_of_the_same_student(runs):
    """A baseline_dir of another student (here the ResNet teacher's run) was shown as "the same
    student trained alone" with a gain over it."""
    root, teacher_dir, _, _ = runs
    alone = {**COMMON, "model_name_or_path": "config:vit", "student_config_overrides": TINY_VIT,
             "output_dir": str(root / "alone"), "max_steps": 1}
    assert main([write(root / "alone.yaml", alone)]) == 0
    # a baseline trained for 1 step against 2 distilled ones measured the training length, not the teacher
    for baseline, comparable, steps in ((root / "alone", True, 1), (teacher_dir, False, 1), (root / "alone", False, 2)):
        distilled = {**alone, "teacher_model_name_or_path": str(teacher_dir), "teacher_accuracy_check": "off",
                     "output_dir": str(root / f"against-{baseline.name}-{steps}"), "baseline_dir": str(baseline),
                     "losses": [{"name": "ce"}, {"name": "rcka"}], "max_steps": steps}
        assert main([write(root / "distilled.yaml", distilled)]) == 0
        card = (root / f"against-{baseline.name}-{steps}" / "README.md").read_text()
        if comparable:
            assert "| the same student trained alone |" in card and "run `alone`, same images |" in card
            assert "points over training the student alone" in card
        else:
            assert "| baseline run (not comparable) |" in card and "points over" not in card
        if baseline == teacher_dir:
            assert "another student (model_name_or_path, student_config_overrides differ)" in card
        if steps == 2:
            assert "trained otherwise (1 optimizer steps against this run's 2)" in card


@pytest.mark.parametrize(("levels", "expected"), [({}, "INFO"), ({"log_level": "warning"}, "WARNING"),
                                                  ({"log_level": "debug"}, "DEBUG")])
def test_a_recipes_log_level_reaches_hf_rckas_own_lines(tmp_path, levels, expected):
    """log_level reached only transformers' logger (Trainer sets it); hf_rcka logged at INFO whatever it said."""
    import logging

    from hf_rcka.arguments import DistillationTrainingArguments
    from hf_rcka.cli.job import _setup_logging

    root, ours, trainer = logging.getLogger(), logging.getLogger("hf_rcka"), logging.getLogger("transformers.trainer")
    saved = root.handlers[:], root.level, ours.level, trainer.level
    try:
        _setup_logging(DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **levels))
        assert logging.getLevelName(ours.level) == expected and logging.getLevelName(trainer.level) == expected
        # other libraries' DEBUG lines (PIL: two per decoded image) stay out of a debug log
        assert root.level == max(logging.getLevelName(expected), logging.INFO)
    finally:
        root.handlers[:], (root.level, ours.level, trainer.level) = saved[0], saved[1:]


def test_a_hub_or_datasets_warning_is_printed_once(tmp_path):
    """Both libraries print through their own handler; the run's root handler printed them again."""
    import io
    import logging

    from hf_rcka.arguments import DistillationTrainingArguments
    from hf_rcka.cli.job import _setup_logging

    root = logging.getLogger()
    libraries = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
    saved = root.handlers[:], root.level, [library.propagate for library in libraries]
    # the libraries' own handlers: pytest >= 9.2 also attaches its capture handlers (on the root
    # too) to loggers that do not propagate, as earlier tests' runs left these two
    streams = {handler: handler.stream for library in libraries for handler in library.handlers
               if handler not in root.handlers}
    try:
        _setup_logging(DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
        printed = io.StringIO()  # every handler a record can reach writes here
        for handler in [*streams, *(h for h in root.handlers if isinstance(h, logging.StreamHandler))]:
            handler.setStream(printed)
        for library in libraries:
            library.warning("retrying in 1s (simulated)")
        assert printed.getvalue().count("retrying in 1s (simulated)") == 2, printed.getvalue()  # once per library
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for library, propagate in zip(libraries, saved[2]):
            library.propagate = propagate
        for handler, stream in streams.items():
            handler.setStream(stream)


def test_an_evaluation_only_run_keeps_its_tensorboard_events_in_its_own_folder(tmp_path, monkeypatch):
    """TensorBoard's callback picks output_dir/runs when training begins; an evaluation-only run
    never begins training, and its events went to ./runs in the working directory."""
    from types import SimpleNamespace

    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import TrainerControl, TrainerState

    from hf_rcka.cli.job import tensorboard_into

    folders = []

    class Writer:  # tensorboard is not installed here: the callback's writer, as it is called
        def __init__(self, log_dir=None):
            folders.append(log_dir)

        def add_scalar(self, *args):
            pass

        def flush(self):
            pass

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    callback = TensorBoardCallback.__new__(TensorBoardCallback)
    callback.tb_writer, callback.logging_dir, callback._SummaryWriter = None, None, Writer
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[callback]))
    tensorboard_into(trainer, str(tmp_path / "_eval-1"))
    callback.on_log(None, TrainerState(), TrainerControl(), logs={"eval_accuracy": 0.5})
    assert folders == [str(tmp_path / "_eval-1" / "runs")]


def test_the_command_line_runs_as_a_module_without_the_repositorys_scripts(tmp_path):
    """An install from a wheel has no scripts/ folder: python -m hf_rcka is the same command line."""
    done = subprocess.run([sys.executable, "-m", "hf_rcka", str(tmp_path / "missing.yaml")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"error: recipe {str(tmp_path / 'missing.yaml')!r} does not exist")


def test_log_level_info_keeps_transformers_file_chatter_out_and_quiet_runs_draw_no_bars(tmp_path, capsys):
    """Trainer set all of transformers to the recipe's level once built: every saved config was a line.
    disable_tqdm left the weight-loading and shard-writing bars in the log."""
    import transformers

    recipe = {**COMMON, "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET,
              "output_dir": str(tmp_path / "out"), "max_steps": 1, "log_level": "info", "disable_tqdm": True}
    try:
        assert main([write(tmp_path / "r.yaml", recipe)]) == 0
        err = capsys.readouterr().err
        assert "Configuration saved in" not in err and "INFO hf_rcka: the trained student is in" in err
        assert not transformers.utils.logging.is_progress_bar_enabled()
    finally:
        import datasets
        import huggingface_hub

        transformers.utils.logging.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()
        datasets.enable_progress_bars()


def test_an_evaluation_only_run_leaves_out_the_losses_that_read_what_trained_beside_the_student(runs, tmp_path, capsys):
    """srd's projector trains with the run and is not saved with the student: an evaluation-only
    re-check reported eval_srd_loss (and an eval_loss holding it) of a fresh projector."""
    root, teacher_dir, _, _ = runs
    out = tmp_path / "srd"
    recipe = {**COMMON, "model_name_or_path": "config:vit", "student_config_overrides": TINY_VIT,
              "teacher_model_name_or_path": str(teacher_dir), "output_dir": str(out), "teacher_accuracy_check": "off",
              "losses": [{"name": "ce"}, {"name": "kd"}, {"name": "srd"}]}
    path = write(tmp_path / "srd.yaml", recipe)
    assert main([path]) == 0
    trained = json.loads((out / "all_results.json").read_text())
    assert "eval_srd_loss" in trained
    capsys.readouterr()
    card = (out / "README.md").read_text()
    assert main([str(out / "distill_config.yaml"), "--do_train", "false", "--model_name_or_path", str(out),
                 "--student_from_scratch", "false"]) == 0
    assert "evaluation only: ['srd'] not evaluated" in capsys.readouterr().err
    assert (out / "README.md").read_text() == card, "an evaluation-only run wrote the trained model's card again"
    (record,) = out.glob("_eval-*")
    checked = json.loads((record / "eval_results.json").read_text())
    assert "eval_srd_loss" not in checked
    assert checked["eval_accuracy"] == trained["eval_accuracy"]
    assert "epoch" not in checked and "eval_model_preparation_time" not in checked  # epoch 0 of a trained model
    for term in ("ce", "kd"):  # what the student alone decides is reported as the training run did
        assert checked[f"eval_{term}_loss"] == pytest.approx(trained[f"eval_{term}_loss"], rel=1e-5)
    assert checked["eval_loss"] == pytest.approx(checked["eval_ce_loss"] + checked["eval_kd_loss"], rel=1e-6)
    # a recipe of such losses only keeps them (a loss needs a term) and says their values are of fresh weights
    capsys.readouterr()
    assert main([str(out / "distill_config.yaml"), "--do_train", "false", "--model_name_or_path", str(out),
                 "--student_from_scratch", "false", "--losses", "[{name: srd}]"]) == 0
    assert "evaluation only: every loss of this recipe (['srd']) reads weights" in capsys.readouterr().err


@pytest.mark.parametrize("settings, expected", [({}, False), ({"fp16": True}, True),
                                                ({"logging_nan_inf_filter": True}, True), ("launcher fp16", True)])
def test_the_loss_filter_that_reads_every_step_back_is_off_unless_fp16_needs_it(tmp_path, monkeypatch, settings,
                                                                                   expected):
    """Trainer's logging_nan_inf_filter reads each micro-step's loss from the device (a stall a step
    on a GPU) to hide a NaN loss from the log; only fp16's skipped steps call for it, also when the
    launcher sets fp16 (accelerate launch --mixed_precision fp16 leaves the recipe's flag False)."""
    from hf_rcka.cli import job

    if settings == "launcher fp16":
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
        settings = {}

    seen = {}
    monkeypatch.setattr(job, "_run", lambda model_args, data_args, args, *rest: seen.setdefault("args", args) and {})
    monkeypatch.setattr(job, "check_run", lambda *args: None)  # fp16 on a CPU is refused there
    recipe = {**COMMON, "model_name_or_path": "config:resnet", "output_dir": str(tmp_path / "out"), **settings}
    assert main([write(tmp_path / "r.yaml", recipe)]) == 0
    assert seen["args"].logging_nan_inf_filter is expected


@pytest.mark.parametrize("best_at_end", [False, True])
def test_the_last_steps_evaluation_is_the_final_one_unless_other_weights_were_loaded(tmp_path, monkeypatch,
                                                                                     best_at_end):
    """Trainer evaluates at the last step, and the final evaluation ran the whole set again on the
    same weights (a second teacher and student pass over the validation set at the end of every
    recipe that evaluates while it trains). load_best_model_at_end may load other weights: those
    are evaluated."""
    from hf_rcka.trainer.trainer import DistillationTrainer

    steps = []
    evaluate = DistillationTrainer.evaluate
    monkeypatch.setattr(DistillationTrainer, "evaluate",
                        lambda self, *a, **k: steps.append(self.state.global_step) or evaluate(self, *a, **k))
    recipe = {**COMMON, "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET,
              "output_dir": str(tmp_path / "out"), "eval_strategy": "steps", "eval_steps": 2,
              "load_best_model_at_end": best_at_end, "save_steps": 2}
    assert main([write(tmp_path / "r.yaml", recipe)]) == 0
    assert steps == [2, 3]  # the best checkpoint's weights were evaluated at its step: not again
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_accuracy" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 3]  # trackers got no third point at step 3
    best = next(entry for entry in evaluations if entry["step"] == (state["best_global_step"] if best_at_end else 3))
    assert results["eval_accuracy"] == best["eval_accuracy"]
    assert results["eval_loss"] == best["eval_loss"]
    # the run's epoch, as a fresh evaluate() says it (all_results.json merges it with training's)
    assert results["epoch"] == pytest.approx(state["epoch"])


def test_trainer_state_holds_the_final_evaluation(tmp_path):
    """A recipe that evaluates only at the end (the digits recipes): trainer_state.json was written
    before the final evaluation, and its log_history had no eval entry, unlike the card and results."""
    recipe = {**COMMON, "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET,
              "output_dir": str(tmp_path / "out"), "eval_strategy": "no"}
    assert main([write(tmp_path / "r.yaml", recipe)]) == 0
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert [entry["eval_accuracy"] for entry in history if "eval_accuracy" in entry] == [results["eval_accuracy"]]
    # Trainer counts no floating-point operations for a DistillationModel: it reported 0.0
    train_results = json.loads((tmp_path / "out" / "train_results.json").read_text())
    assert "train_loss" in train_results and "total_flos" not in train_results
    assert not any("total_flos" in entry for entry in history)


def test_a_run_resumed_at_its_last_step_reports_no_train_loss():
    """No step ran, and transformers reported train_loss 0.0 (a sum over no steps)."""
    from hf_rcka.cli.job import _train_metrics

    assert _train_metrics({"train_loss": 0.0, "train_steps_per_second": 0.0}, "/runs/a/checkpoint-4") == {
        "train_steps_per_second": 0.0, "train_loss_from_step": 4}
    assert _train_metrics({"train_loss": 0.3, "train_steps_per_second": 2.0}, None) == {
        "train_loss": 0.3, "train_steps_per_second": 2.0}


@pytest.mark.parametrize("plan", [{"max_steps": 2, "save_steps": 2},  # stopped inside the first epoch
                                  {"max_steps": 2, "save_steps": 2, "ignore_data_skip": True},  # the epoch restarts
                                  {"max_steps": -1, "num_train_epochs": 1.5, "save_steps": 9},  # and in the second
                                  {"max_steps": -1, "num_train_epochs": 1, "save_strategy": "epoch",  # at its end
                                   "eval_strategy": "epoch"},
                                  # the epoch cut short by max_steps ends again when resumed, and saved again
                                  {"max_steps": 2, "save_strategy": "epoch", "eval_strategy": "epoch"}])
def test_a_run_resumed_at_its_last_step_trains_nothing_more_and_keeps_no_earlier_train_loss(tmp_path, plan):
    """Resumed to finish it (an export cut short), a run at its last step trained a step past it and
    exported that: Trainer checks max_steps after a step. And save_metrics' merge kept the earlier
    leg's train_loss beside the resumed run's train_loss_from_step, as if it were the resumed run's."""
    recipe = write(tmp_path / "r.yaml", {**COMMON, "model_name_or_path": "config:vit", "student_config_overrides": TINY_VIT,
                                         "output_dir": str(tmp_path / "out"), "save_strategy": "steps", **plan})
    assert main([recipe]) == 0  # 60 images in batches of 10: 6 steps an epoch
    steps = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"]
    exported = (tmp_path / "out" / "model.safetensors").read_bytes()
    checkpoint = tmp_path / "out" / f"checkpoint-{steps}" / "model.safetensors"
    written = checkpoint.stat().st_mtime_ns
    assert "train_loss" in json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert main([recipe, "--resume_from_checkpoint", "true"]) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == steps, "nothing is trained past the last step"
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == exported
    assert checkpoint.stat().st_mtime_ns == written, "the checkpoint resumed from is not written again"
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["train_loss_from_step"] == steps and "train_loss" not in results and "eval_accuracy" in results


@pytest.mark.parametrize("rate, check", [(0.0, "error"), (0.0, "warn"), (None, "error"), (0.0, None)])
def test_a_student_at_chance_after_training_ends_the_run_with_an_error_that_keeps_it(tmp_path, capsys, rate, check):
    """A run whose student learned nothing ended with exit 0, a model and a card (srd's projector
    once collapsed the demo's ViT to 19% on 10 classes while every loss fell); then with a warning
    and still exit 0, which a sweep or a pipeline reading the exit status took for success. The
    error is the default (check None); an evaluation-only run of such a model is no error."""
    recipe = {**COMMON, "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET,
              "output_dir": str(tmp_path / "out"), "max_train_samples": 200, "max_eval_samples": 150,
              "max_steps": 40, "learning_rate": 0.01, "seed": 1, "student_accuracy_check": check}
    if check is None:
        del recipe["student_accuracy_check"]
        check = "error"
    at_chance = rate is not None
    if at_chance:
        recipe["learning_rate"] = rate  # untrained: its random start
        recipe["max_steps"] = 1
        recipe["seed"] = 4  # a start at 5% of 150 images (seed 1's scores 14%, one standard error above chance)
    assert main([write(tmp_path / "r.yaml", recipe)]) == (2 if at_chance and check == "error" else 0)
    out = tmp_path / "out"
    accuracy = json.loads((out / "eval_results.json").read_text())["eval_accuracy"]
    assert (out / "model.safetensors").exists() and (out / "README.md").exists(), "the model and its card are kept"
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if "is at chance" in line]
    assert bool(said) is at_chance, (accuracy, said)
    if at_chance:
        assert f"is at chance (eval_accuracy {accuracy:.3f}, chance 0.100 for 10 classes, 150 images, eval " \
               "cross-entropy" in said[0]
        # how long it trained comes first in the advice (a run cut short is the commonest cause)
        assert "it learned nothing usable. It trained 1 optimizer step (" in said[0]
    if at_chance and check == "error":
        assert err[-1] == (f"error: the trained student is at chance on the evaluation set (eval_accuracy {accuracy:.4f}, "
                           f"the !!! warning above says why it may be): it is saved in {out} with its card and results. "
                           "Train longer, or lower the learning rate or the distillation terms' weights "
                           "(student_accuracy_check: warn ends such a run with exit status 0)")
    if "student_accuracy_check" not in recipe:  # evaluating it trains nothing: said, never an error
        assert main([str(out / "distill_config.yaml"), "--do_train", "false", "--model_name_or_path", str(out),
                     "--student_from_scratch", "false", "--output_dir", str(out)]) == 0


def test_a_collapsed_student_above_the_accuracy_threshold_is_at_chance_by_its_cross_entropy(caplog):
    """srd's collapse scored 19.4% on 540 images of 10 classes, above two standard errors of chance
    (12.6%), with a cross-entropy of a uniform guess (2.29 nats, ln 10 = 2.30): nothing was said."""
    import logging

    from hf_rcka.trainer.chance import warn_if_student_at_chance

    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert warn_if_student_at_chance(0.194, 540, 10, cross_entropy=2.29)
        assert not warn_if_student_at_chance(0.194, 540, 10)  # the accuracy alone does not tell
        assert not warn_if_student_at_chance(0.6, 540, 10, cross_entropy=1.4)  # a weak student that learned
        # confidently wrong on a few images: as much cross-entropy as a uniform guess, and far from chance
        assert not warn_if_student_at_chance(0.898, 540, 2, cross_entropy=0.715)
        assert not warn_if_student_at_chance(0.70, 540, 10, cross_entropy=2.1)
        assert warn_if_student_at_chance(0.11, 540, 10, cross_entropy=1.9)  # at chance by its accuracy
    assert caplog.text.count("is at chance") == 2


def test_the_chance_warning_counts_one_epoch_as_one(caplog):
    """A 2-process run that trained one epoch was told "It trained 3 optimizer steps (1 epochs)"."""
    import logging

    from hf_rcka.trainer.chance import warn_if_student_at_chance

    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        warn_if_student_at_chance(0.1, 540, 10, steps=3, epochs=1.0)
        warn_if_student_at_chance(0.1, 540, 10, steps=1, epochs=2.5)
    assert "It trained 3 optimizer steps (1 epoch): enough" in caplog.text
    assert "It trained 1 optimizer step (2.5 epochs): enough" in caplog.text


def test_only_an_accuracy_at_chance_ends_a_run_with_an_error():
    """The cross-entropy's test is said, not an error: a calibrated student at 30% on 10 classes,
    three times chance, has 2.15 nats against 0.9 ln 10 = 2.07 (and one at 65% on 2 classes, 0.647
    against 0.624): with the error, such runs would have ended with exit status 2."""
    from hf_rcka.trainer.chance import at_chance, warn_if_student_at_chance

    assert warn_if_student_at_chance(0.3, 540, 10, cross_entropy=2.149) and not at_chance(0.3, 540, 10)
    assert warn_if_student_at_chance(0.65, 1000, 2, cross_entropy=0.647) and not at_chance(0.65, 1000, 2)
    assert at_chance(0.11, 540, 10) and not at_chance(0.5, 3, 2)  # 3 images cannot tell
    # one standard error, not two: a student at 62% on 50 images of 2 classes learned (it was an error)
    assert warn_if_student_at_chance(0.62, 50, 2) and not at_chance(0.62, 50, 2) and at_chance(0.55, 50, 2)



def test_a_recorded_recipe_run_again_with_a_retrained_teacher_is_said(tmp_path, capsys):
    """The record names the teacher by its path: a teacher retrained there made the record train
    another run (other numbers, another teacher accuracy on the card), exit 0 and not a word."""
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    teacher = {**COMMON, "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET,
               "output_dir": str(teacher_dir), "learning_rate": "1e-2", "save_strategy": "no"}
    assert main([write(tmp_path / "teacher.yaml", teacher)]) == 0
    student = {**COMMON, "model_name_or_path": "config:vit", "student_config_overrides": TINY_VIT,
               "teacher_model_name_or_path": str(teacher_dir), "output_dir": str(student_dir), "save_strategy": "no",
               "losses": [{"name": "ce"}, {"name": "kd"}], "teacher_accuracy_check": "off"}
    assert main([write(tmp_path / "student.yaml", student)]) == 0
    assert json.loads((student_dir / "teacher.json").read_text())["source"] == "teacher"  # the export's record
    record = str(student_dir / "distill_config.yaml")
    capsys.readouterr()
    assert main([record, "--output_dir", str(tmp_path / "again")]) == 0
    assert "other teacher weights" not in capsys.readouterr().err  # the same teacher: nothing to say
    assert main([write(tmp_path / "teacher.yaml", {**teacher, "seed": 7, "overwrite_output_dir": True})]) == 0
    capsys.readouterr()
    assert main([record, "--output_dir", str(tmp_path / "retrained")]) == 0
    assert f"!!! {record} was recorded by a run that distilled from other teacher weights" in capsys.readouterr().err


def test_only_the_logging_process_draws_the_libraries_progress_bars(tmp_path, monkeypatch):
    """Every process of a 2-process run drew transformers' "Loading weights" bar."""
    import datasets
    import transformers

    from hf_rcka.arguments import DistillationTrainingArguments
    from hf_rcka.cli.job import _setup_logging

    args = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    monkeypatch.setattr(DistillationTrainingArguments, "should_log", property(lambda self: False))
    try:
        _setup_logging(args)
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert not datasets.is_progress_bar_enabled()
    finally:
        transformers.utils.logging.enable_progress_bar()
        datasets.enable_progress_bars()


def test_trainers_resume_argument_warning_is_said_by_the_logging_process_alone(tmp_path, monkeypatch):
    """A 2-process resume at another split of the global batch printed transformers' "The following
    arguments do not match the ones in the `trainer_state.json`" once per process: the check reads the
    same arguments and checkpoint on each, and replicas print warnings."""
    import logging
    from types import SimpleNamespace

    from transformers.trainer_utils import compare_trainer_and_checkpoint_args

    from hf_rcka.arguments import DistillationTrainingArguments
    from hf_rcka.cli.job import _transformers_levels

    said, checks = [], logging.getLogger("transformers.trainer_utils")
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    checks.addHandler(handler)
    state = SimpleNamespace(logging_steps=1, eval_steps=4, save_steps=3, train_batch_size=10)
    args = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                         per_device_train_batch_size=5, logging_steps=1, eval_steps=4, save_steps=3)
    try:
        for logs in (True, False):
            monkeypatch.setattr(DistillationTrainingArguments, "should_log", property(lambda self, logs=logs: logs))
            _transformers_levels(args)
            checks.warning_once.cache_clear()  # transformers says it once per process; here both are one
            compare_trainer_and_checkpoint_args(args, state)
    finally:
        checks.removeHandler(handler)
        _transformers_levels(DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert len(said) == 1 and "per_device_train_batch_size: 5 (from args) != 10" in said[0], said


def test_the_run_says_its_precision_and_whose_setting_chose_it(tmp_path, monkeypatch):
    """An accelerate config file's mixed_precision applied to every run unsaid (only the card named it)."""
    from hf_rcka import DistillationTrainingArguments
    from hf_rcka.cli.job import _precision_line

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert _precision_line(DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True)) == "precision: float32"
    recipe = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, bf16=True)
    assert _precision_line(recipe) == "precision: bf16 mixed precision, the recipe's setting"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    launched = _precision_line(DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    assert launched.startswith("precision: bf16 mixed precision, the launcher's (accelerate launch --mixed_precision")


def test_the_launchers_mixed_precision_is_recorded_as_the_recipe_key_it_equals(tmp_path, monkeypatch):
    """A run of the record trained in float32, and the card compared a launcher-bf16 run with a
    float32 baseline as trained alike (their records had the same precision keys)."""
    from hf_rcka import DistillationTrainingArguments
    from hf_rcka.cli.job import recipe_to_record

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    plain = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    record = recipe_to_record({"seed": 1}, plain, [{"name": "ce"}])
    assert record["seed"] == 1 and record["losses"] == [{"name": "ce"}] and not {"bf16", "fp16"} & record.keys()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    launched = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert recipe_to_record({"seed": 1}, launched, [])["bf16"] is True
    own = DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, bf16=True)
    assert "bf16" not in recipe_to_record({"seed": 1}, own, [])  # the recipe's own key is in the recipe already


# two binomial standard errors, as documented
def test_the_chance_threshold_is_two_standard_errors_above_chance(caplog):
    import logging

    from hf_rcka.trainer.chance import chance_threshold, warn_if_student_at_chance

    chance, threshold = chance_threshold(10, 100)
    assert chance == pytest.approx(0.1) and threshold == pytest.approx(0.1 + 2 * math.sqrt(0.1 * 0.9 / 100))  # 0.16
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert warn_if_student_at_chance(0.15, 100, 10)  # within two standard errors: at chance
        assert not warn_if_student_at_chance(0.17, 100, 10)


# no counted image (a first eval batch of unreadable images) is no crash
def test_no_counted_image_cannot_tell_chance_and_says_nothing():
    from hf_rcka.trainer.chance import chance_threshold, warn_if_student_at_chance

    assert chance_threshold(10, 0) == (pytest.approx(0.1), 1.0)
    assert not warn_if_student_at_chance(0.0, 0, 10)


# with the best checkpoint loaded, the final metrics are its evaluation's, not the last step's
def test_the_final_metrics_are_the_loaded_best_checkpoints_not_the_last_steps():
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from hf_rcka.cli.final_evaluation import LastEvaluation, final_evaluation

    last = LastEvaluation()
    for step, accuracy in ((2, 0.9), (3, 0.4)):
        last.on_evaluate(None, SimpleNamespace(global_step=step), TrainerControl(),
                         metrics={"eval_accuracy": accuracy, "epoch": step / 3})
    state = TrainerState(global_step=3, epoch=1.0, best_model_checkpoint="out/checkpoint-2")

    def evaluate():
        raise AssertionError("evaluated again: both steps' evaluations are known")

    trainer = SimpleNamespace(state=state, best_model_loaded=True, evaluate=evaluate)
    assert final_evaluation(trainer, last) == {"eval_accuracy": 0.9, "epoch": 1.0}
    trainer.best_model_loaded = False  # the last step's weights
    assert final_evaluation(trainer, last) == {"eval_accuracy": 0.4, "epoch": 1.0}


def test_the_final_metrics_of_a_dict_eval_dataset_hold_every_sets():
    """Trainer evaluates a dict ``eval_dataset`` set by set, each a callback of its own at one step:
    a mutant that kept only the last callback's metrics passed every test, and the run's final
    metrics (all_results.json, the card) lost every set but the last."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from hf_rcka.cli.final_evaluation import LastEvaluation, final_evaluation

    last = LastEvaluation()
    for name, accuracy in (("cifar", 0.8), ("stl", 0.6)):
        last.on_evaluate(None, SimpleNamespace(global_step=3), TrainerControl(),
                         metrics={f"eval_{name}_accuracy": accuracy, "epoch": 1.0})

    def evaluate():
        raise AssertionError("evaluated again: the last step's evaluation is known")

    trainer = SimpleNamespace(state=TrainerState(global_step=3, epoch=1.0), best_model_loaded=False, evaluate=evaluate)
    assert final_evaluation(trainer, last) == {"eval_cifar_accuracy": 0.8, "eval_stl_accuracy": 0.6, "epoch": 1.0}


def test_the_cross_entropy_test_reads_ce_unweighted(caplog):
    """eval_ce_loss is ce's weighted term: at ce weight 0.5 a collapsed student's 2.29 nats logged as
    1.145, far under 0.9 ln 10, and the warning that it is at chance was never said."""
    from types import SimpleNamespace

    from hf_rcka.cli.job import _say_if_at_chance

    trainer = SimpleNamespace(
        eval_dataset=list(range(540)), card_facts=SimpleNamespace(unreadable_eval_images=0),
        distillation_model=SimpleNamespace(losses={"ce": SimpleNamespace(term_weights={"ce": 0.5})},
                                           student=SimpleNamespace(config=SimpleNamespace(num_labels=10))),
        args=SimpleNamespace(should_log=True), state=SimpleNamespace(global_step=100, epoch=1.0))
    with caplog.at_level("WARNING", logger="hf_rcka"):
        assert not _say_if_at_chance(trainer, {"eval_accuracy": 0.194, "eval_ce_loss": 0.5 * 2.29})
    assert "is at chance" in caplog.text and "eval cross-entropy 2.290" in caplog.text


def test_the_exit_follows_the_accuracys_test_and_counts_only_readable_images():
    """_say_if_at_chance decides the exit with at_chance alone (not the warning's cross-entropy
    test), on the evaluation images that could be read."""
    from types import SimpleNamespace

    from hf_rcka.cli.job import _say_if_at_chance

    def trainer(unreadable):
        return SimpleNamespace(
            eval_dataset=list(range(540)), card_facts=SimpleNamespace(unreadable_eval_images=unreadable),
            distillation_model=SimpleNamespace(losses={"ce": SimpleNamespace(term_weights={"ce": 1.0})},
                                               student=SimpleNamespace(config=SimpleNamespace(num_labels=10))),
            args=SimpleNamespace(should_log=True), state=SimpleNamespace(global_step=100, epoch=1.0))

    assert not _say_if_at_chance(trainer(0), {"eval_accuracy": 0.3, "eval_ce_loss": 2.149})  # said, no error
    assert _say_if_at_chance(trainer(0), {"eval_accuracy": 0.11, "eval_ce_loss": 2.3})
    # 40 readable images: 0.13 is within one standard error of chance (0.147); on 540 it would not be (0.113)
    assert _say_if_at_chance(trainer(500), {"eval_accuracy": 0.13})
