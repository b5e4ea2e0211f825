"""SIGTERM / SIGINT on a real ``scripts/distill.py`` process: checkpoint, resume command last, no traceback."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

from hf_rcka.cli.main import main
from hf_rcka.trainer.interrupt import GracefulStop, Interrupted
from hf_rcka.trainer.resume_hint import Stopped

ROOT = Path(__file__).resolve().parents[1]
TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 12, 16, 20], "depths": [1, 1, 1, 1], "layer_type": "basic"}


def recipe(tmp_path: Path) -> Path:
    values = {
        "model_name_or_path": "config:resnet", "student_config_overrides": TINY_RESNET, "image_size": 16,
        "dataset_name": "builtin:digits", "no_aug": True, "max_train_samples": 50, "max_eval_samples": 10,
        "max_steps": 1000, "per_device_train_batch_size": 5, "report_to": "none", "use_cpu": True,
        "logging_steps": 1, "save_strategy": "no", "output_dir": str(tmp_path / "out"), "disable_tqdm": True,
        "student_accuracy_check": "warn",  # a few steps: at chance
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


def interrupt_after_first_step(command: list[str], signum: int) -> tuple[int, list[str]]:
    process = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "'loss'" in line and process.poll() is None:
                process.send_signal(signum)
                break
        lines += [line.rstrip("\n") for line in process.stdout]
        return process.wait(timeout=120), lines
    finally:
        if process.poll() is None:
            process.kill()


# Two tests read one SIGTERM-stopped scripts/distill.py process (each launch pays ~12 CPU-seconds of imports)
SIGTERM_RUN = pytest.mark.xdist_group("sigterm_run")  # one worker builds the module fixture


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    """A run stopped by SIGTERM after its first step: (its folder, exit code, output lines, a copy of its
    output folder as the stop left it, for a test that changes it; the first test resumes the run in place)."""
    root = tmp_path_factory.mktemp("sigterm_run")
    command = [sys.executable, "scripts/distill.py", str(recipe(root)), "--learning_rate", "1e-3"]
    code, lines = interrupt_after_first_step(command, signal.SIGTERM)
    as_stopped = tmp_path_factory.mktemp("sigterm_run_as_stopped") / "out"
    if (root / "out").is_dir():
        shutil.copytree(root / "out", as_stopped)
    return root, code, lines, as_stopped


@SIGTERM_RUN
def test_sigterm_saves_a_checkpoint_and_prints_the_resume_command_last(sigterm_run, capsys):
    signum = signal.SIGTERM
    tmp_path, code, lines, _ = sigterm_run
    output = "\n".join(lines)
    assert code == 128 + signum, output[-3000:]
    assert "Traceback" not in output
    last = [line for line in lines if line.strip()][-1]
    match = re.search(r"--resume_from_checkpoint (\S+)$", last)
    assert match, last
    checkpoint = Path(match.group(1))
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert checkpoint.name == f"checkpoint-{step}" and 1 <= step < 1000
    assert (checkpoint / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "model.safetensors").exists(), "an interrupted run does not look finished"
    assert f"interrupted by {signal.Signals(signum).name}" in output

    # the printed command resumes (two more steps, to keep it short; in this process, as the script's main)
    resumed = shlex.split(last) + ["--max_steps", str(step + 2)]
    assert resumed[:2] == ["python", "scripts/distill.py"] and "--learning_rate" in resumed
    assert main(resumed[2:]) == 0, capsys.readouterr().err[-3000:]
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == step + 2


class SignalAt(TrainerCallback):
    """Delivers a real signal to this process from inside step ``step`` (the handler runs in the main thread)."""

    def __init__(self, step: int, signum: int, times: int = 1):
        self.step, self.signum, self.times = step, signum, times

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def tiny_trainer(tmp_path, *callbacks, eval_dataset=None, **overrides):
    from conftest import pixel_dataset, processor, tiny_vit
    from hf_rcka import DistillationTrainer, DistillationTrainingArguments

    settings = {"max_steps": 6, "per_device_train_batch_size": 5, "save_strategy": "no", **overrides}
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True,
                                         disable_tqdm=True, **settings)
    return DistillationTrainer(model=tiny_vit(), args=args, train_dataset=pixel_dataset(30),
                               eval_dataset=eval_dataset, processing_class=processor(16), callbacks=list(callbacks))


def test_sigint_stops_after_the_current_step_with_a_checkpoint(tmp_path):
    from hf_rcka.cli.job import _train

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a process started in the background
    stop = GracefulStop()
    stop.install()
    try:
        trainer = tiny_trainer(tmp_path, stop, SignalAt(2, signal.SIGINT))
        with pytest.raises(Stopped) as stopped:
            _train(trainer, resume=None, stop=stop, argv=["r.yaml", "--resume_from_checkpoint", "old", "--seed", "3"])
    finally:
        stop.uninstall()
    assert stopped.value.exit_code == 130 and stopped.value.step == 2
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert stopped.value.checkpoint == str(checkpoint) and (checkpoint / "model.safetensors").is_file()
    last = stopped.value.message().splitlines()[-1]
    assert last.endswith(f"scripts/distill.py r.yaml --seed 3 --resume_from_checkpoint {checkpoint}")
    assert signal.getsignal(signal.SIGINT) is before, "handlers are restored"


def test_a_stop_is_said_once_and_never_called_a_completed_training(tmp_path, caplog):
    """Every process of a data-parallel run got the signal and said so; and transformers' "Training
    completed. Do not forget to share your model" came just before "interrupted by SIGINT"."""
    from types import SimpleNamespace

    from hf_rcka.arguments import DistillationTrainingArguments
    from hf_rcka.cli.job import _transformers_levels

    replica = GracefulStop()
    replica.on_train_begin(SimpleNamespace(should_log=False), None, None)
    with caplog.at_level("WARNING", logger="hf_rcka"):
        replica._handle(signal.SIGINT, None)
    assert replica.signum == signal.SIGINT and "SIGINT received" not in caplog.text
    _transformers_levels(DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    import logging

    said, trainer_logger = [], logging.getLogger("transformers.trainer")
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    trainer_logger.addHandler(handler)
    try:
        trainer_logger.info("\n\nTraining completed. Do not forget to share your model")
        trainer_logger.info("***** Running training *****")
    finally:
        trainer_logger.removeHandler(handler)
    assert said == ["***** Running training *****"]


def _stopped_keeping_the_best(tmp_path, at_step: int, max_steps: int):
    """Train with load_best_model_at_end and save_total_limit 1 (best: the highest loss, an early
    checkpoint), a SIGTERM in step ``at_step``; the trainer and what training raised."""
    from conftest import pixel_dataset

    from hf_rcka.cli.job import _train

    stop = GracefulStop()
    stop.install()
    try:
        trainer = tiny_trainer(
            tmp_path, stop, SignalAt(at_step, signal.SIGTERM), eval_dataset=pixel_dataset(10, seed=1),
            max_steps=max_steps, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
            save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True)
        try:
            _train(trainer, resume=None, stop=stop, argv=["r.yaml"])
        except (Stopped, Interrupted) as err:
            return trainer, err
        return trainer, None
    finally:
        stop.uninstall()


def test_the_checkpoint_of_a_stop_survives_best_model_clean_up(tmp_path):
    """With load_best_model_at_end and save_total_limit 1, Trainer's end of training deleted every
    checkpoint but the best, the stop's own among them: 'no checkpoint was saved, nothing to resume'."""
    _, stopped = _stopped_keeping_the_best(tmp_path, at_step=5, max_steps=20)
    checkpoint = tmp_path / "run" / "checkpoint-5"
    assert isinstance(stopped, Stopped) and stopped.step == 5 and stopped.checkpoint == str(checkpoint)
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()


def test_the_last_checkpoint_outlives_training_until_the_export_is_written(tmp_path):
    """With save_total_limit 1 and load_best_model_at_end, Trainer's end of training deleted the last
    checkpoint before the command line wrote the export: a kill or a full disk during the export
    left the best checkpoint alone, and a resume trained every step after it again."""
    from conftest import pixel_dataset

    from hf_rcka.cli.job import _train

    def trainer_of(name):
        return tiny_trainer(tmp_path / name, eval_dataset=pixel_dataset(10, seed=1), max_steps=6,
                            eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                            save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="loss",
                            greater_is_better=True)  # best: the highest loss, an early checkpoint

    trainer = trainer_of("full")
    export = trainer.save_model

    def disk_full(output_dir=None, _internal_call=False):
        if output_dir is None:  # the export, not a checkpoint's save
            raise OSError(28, "No space left on device")
        return export(output_dir, _internal_call)

    trainer.save_model = disk_full
    with pytest.raises(OSError):
        _train(trainer, resume=None)
    checkpoints = sorted(p.name for p in (tmp_path / "full" / "run").glob("checkpoint-*"))
    assert "checkpoint-6" in checkpoints and len(checkpoints) == 2, checkpoints
    trainer = trainer_of("whole")
    _train(trainer, resume=None)
    best = Path(trainer.state.best_model_checkpoint)
    assert [p.name for p in best.parent.glob("checkpoint-*")] == [best.name] != ["checkpoint-6"]
    assert (best.parent / "model.safetensors").is_file()


def test_the_best_checkpoint_is_kept_however_output_dir_is_spelt(tmp_path):
    """Trainer records the best checkpoint under output_dir as spelt (``out/./run/checkpoint-2``)
    and lists the checkpoints by a normalised path: compared as text, the best one would be
    deleted once the export is written."""
    from conftest import pixel_dataset

    from hf_rcka.cli.job import _train

    trainer = tiny_trainer(tmp_path, eval_dataset=pixel_dataset(10, seed=1), max_steps=6, eval_strategy="steps",
                           eval_steps=2, save_strategy="steps", save_steps=2, save_total_limit=1,
                           load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True)
    trainer.args.output_dir = f"{tmp_path}/./run"
    _train(trainer, resume=None)
    best = trainer.state.best_model_checkpoint
    assert "/./" in best and (Path(best) / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*")] == [Path(best).name]


def test_a_stop_in_the_last_step_still_exports_the_best_checkpoint(tmp_path):
    """The stop's clean-up guard also took the last step's ending as planned: the last weights were
    exported, not the best checkpoint load_best_model_at_end asked for."""
    import torch
    from transformers import AutoModelForImageClassification

    trainer, _ = _stopped_keeping_the_best(tmp_path, at_step=8, max_steps=8)
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-8"), "an earlier evaluation is the best here"
    student = trainer.distillation_model.student.state_dict()
    saved = AutoModelForImageClassification.from_pretrained(best).state_dict()
    assert all(torch.equal(student[k], saved[k]) for k in saved), "the best weights were loaded"


def test_a_second_signal_stops_at_once(tmp_path):
    from hf_rcka.cli.job import _train

    stop = GracefulStop()
    stop.install()
    try:
        trainer = tiny_trainer(tmp_path, stop, SignalAt(3, signal.SIGTERM, times=2))
        with pytest.raises(Stopped) as stopped:
            _train(trainer, resume=None, stop=stop)
    finally:
        stop.uninstall()
    assert stopped.value.step == 2, "stopped inside step 3, before finishing it"
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert (tmp_path / "run" / "checkpoint-2" / "model.safetensors").is_file()


class SignalInUpdate(TrainerCallback):
    """Two signals right after step ``step``'s optimizer update, before its step ends."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)
            os.kill(os.getpid(), self.signum)


def test_a_second_signal_inside_a_weight_update_writes_no_checkpoint(tmp_path):
    """checkpoint-2 was written with step 3's update applied: resumed, it ended 0.12 away from the
    uninterrupted run's weights, at another accuracy."""
    from hf_rcka.cli.job import _train

    stop = GracefulStop()
    stop.install()
    try:
        trainer = tiny_trainer(tmp_path, stop, SignalInUpdate(3, signal.SIGINT))
        with pytest.raises(Stopped) as stopped:
            _train(trainer, resume=None, stop=stop)
    finally:
        stop.uninstall()
    assert stopped.value.checkpoint is None and not list((tmp_path / "run").glob("checkpoint-*"))


class SignalInEvaluation(TrainerCallback):
    def __init__(self, step: int, signum: int):
        self.step, self.signum, self.sent = step, signum, False

    def on_prediction_step(self, args, state, control, **kwargs):
        if state.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def test_a_signal_in_the_last_steps_evaluation_keeps_the_trained_model(tmp_path):
    """Training was complete, but the run ended "no checkpoint was saved, nothing to resume" and
    left no model (save_strategy: no): on ImageNet, minutes of evaluation could lose the run."""
    from conftest import pixel_dataset
    from hf_rcka.cli.job import _train

    stop = GracefulStop()
    stop.install()
    try:
        trainer = tiny_trainer(tmp_path, stop, SignalInEvaluation(6, signal.SIGTERM))
        trainer.args.eval_strategy, trainer.args.eval_steps = "steps", 6
        trainer.eval_dataset = pixel_dataset(10, seed=1)
        with pytest.raises(Interrupted):
            _train(trainer, resume=None, stop=stop)
    finally:
        stop.uninstall()
    assert (tmp_path / "run" / "model.safetensors").is_file() and stop.saved_model == str(tmp_path / "run")


def test_a_signal_before_training_raises_at_once():
    stop = GracefulStop()
    stop.install()
    try:
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        stop.uninstall()


def test_a_second_signal_while_saving_stops_at_once():
    """The first waits for the trained model's save (the caller then stops); one sent again means
    now, as during training."""
    stop = GracefulStop()
    with stop.finishing():
        stop._handle(signal.SIGTERM, None)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(Interrupted):
            stop._handle(signal.SIGTERM, None)


def test_checkpoints_are_told_apart_by_step_and_by_what_they_hold(tmp_path):
    """The last checkpoint is the highest step (checkpoint-9 sorts after checkpoint-10 by name); a
    folder named beyond the pattern (a copy, checkpoint-10.bak) is none; resuming needs both the
    optimizer's and the schedule's state."""
    from hf_rcka.trainer.checkpoint_folders import checkpoint_step, last_checkpoint
    from hf_rcka.trainer.checkpointing import holds_training_state

    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-10.bak"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text("{}")
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert checkpoint_step("checkpoint-10.bak") is None and checkpoint_step(str(tmp_path / "checkpoint-9")) == 9
    (tmp_path / "checkpoint-10" / "optimizer.pt").write_bytes(b"")
    assert not holds_training_state(str(tmp_path / "checkpoint-10"))
    (tmp_path / "checkpoint-10" / "scheduler.pt").write_bytes(b"")
    assert holds_training_state(str(tmp_path / "checkpoint-10"))


def test_the_state_file_that_makes_a_checkpoint_whole_is_transformers_own():
    """``checkpoint_folders`` writes transformers' name for a checkpoint's last file itself (the
    module that defines it loads the whole Trainer): a rename upstream would make every checkpoint
    look cut short."""
    from transformers.trainer import TRAINER_STATE_NAME

    from hf_rcka.trainer import checkpoint_folders

    assert checkpoint_folders.TRAINER_STATE_NAME == TRAINER_STATE_NAME


def test_a_resumed_runs_best_checkpoint_counts_only_with_load_best_model_at_end(tmp_path):
    from types import SimpleNamespace

    from hf_rcka.trainer.checkpointing import best_checkpoint

    resumed = tmp_path / "checkpoint-4"
    resumed.mkdir()
    (resumed / "trainer_state.json").write_text(json.dumps({"best_global_step": 2}))
    (tmp_path / "checkpoint-2").mkdir()
    for load_best, expected in ((True, str(tmp_path / "checkpoint-2")), (False, None)):
        args = SimpleNamespace(load_best_model_at_end=load_best, output_dir=str(tmp_path))
        assert best_checkpoint(str(resumed), args) == expected


def test_save_checkpoint_now_relies_on_trainers_save_checkpoint(tmp_path):
    """``save_checkpoint_now`` calls the private ``Trainer._save_checkpoint(model, trial)``: pin its
    signature and that it writes a resumable ``checkpoint-<step>`` (weights, optimizer, scheduler, state)."""
    import inspect

    from transformers import Trainer

    from hf_rcka.trainer.interrupt import save_checkpoint_now

    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    trainer = tiny_trainer(tmp_path)
    assert save_checkpoint_now(trainer) is None, "nothing to save before the first step"
    trainer.args.max_steps = 2
    trainer.train()
    checkpoint = Path(save_checkpoint_now(trainer))
    assert checkpoint == tmp_path / "run" / "checkpoint-2"
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}
    # a checkpoint written whole is never written again (after the best one was loaded at the end,
    # a second signal rewrote it with that checkpoint's weights beside the last step's optimizer)
    written = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}
    assert save_checkpoint_now(trainer) == str(checkpoint)
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == written
    shutil.rmtree(checkpoint)
    trainer.best_model_loaded = True
    assert save_checkpoint_now(trainer) is None and not checkpoint.exists()


class SignalInForward(TrainerCallback):
    """Two signals from inside step ``step``'s first forward, before its optimizer update."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum, self.armed = step, signum, False

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.armed = state.global_step + 1 == self.step
        if self.armed and not hasattr(self, "hook"):
            self.hook = model.student.register_forward_hook(lambda *_: self.fire())

    def fire(self):
        if self.armed:
            self.armed = False
            os.kill(os.getpid(), self.signum)
            os.kill(os.getpid(), self.signum)


def test_a_second_signal_inside_a_steps_forward_writes_no_checkpoint(tmp_path):
    """The forward had moved BatchNorm statistics, a loss's class centres and the random state of
    the next step: the checkpoint of step 2 held them, and its resumed run trained otherwise."""
    from hf_rcka.cli.job import _train

    stop = GracefulStop()
    stop.install()
    try:
        trainer = tiny_trainer(tmp_path, stop, SignalInForward(3, signal.SIGINT), save_strategy="steps", save_steps=1)
        with pytest.raises(Stopped) as stopped:
            _train(trainer, resume=None, stop=stop, argv=["r.yaml"])
    finally:
        stop.uninstall()
    checkpoints = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert stopped.value.checkpoint is None and checkpoints == ["checkpoint-1", "checkpoint-2"]
    # checkpoint-2 is the loop's own, written at step 2's end, and the message names it
    assert stopped.value.earlier == str(tmp_path / "run" / "checkpoint-2")
    assert stopped.value.message().splitlines()[-1].endswith(f"--resume_from_checkpoint {tmp_path / 'run' / 'checkpoint-2'}")


def _stopped_at_step_4_saving_only_the_best(tmp_path):
    """A SIGTERM in step 4 of a run with save_strategy best (best: the highest loss, step 2's
    evaluation); the trainer and the ``Stopped`` it ended with."""
    from conftest import pixel_dataset

    from hf_rcka.cli import job

    stop = GracefulStop()
    stop.install()
    try:
        trainer = tiny_trainer(
            tmp_path, stop, SignalAt(4, signal.SIGTERM), eval_dataset=pixel_dataset(10, seed=1), max_steps=20,
            eval_strategy="steps", eval_steps=2, save_strategy="best", metric_for_best_model="loss",
            greater_is_better=True)
        with pytest.raises(Stopped) as stopped:
            job._train(trainer, resume=None, stop=stop, argv=["r.yaml"])
    finally:
        stop.uninstall()
    return trainer, stopped.value


def test_a_stop_at_an_evaluation_that_is_no_new_best_still_saves_with_save_strategy_best(tmp_path):
    """Trainer saves only a new best under save_strategy best, also at the stop's step: the run
    said 'no checkpoint was saved, nothing to resume' and lost its steps since the last best."""
    trainer, stopped = _stopped_at_step_4_saving_only_the_best(tmp_path)
    assert trainer.state.best_global_step == 2, "step 4's evaluation is no new best here"
    checkpoint = tmp_path / "run" / "checkpoint-4"
    assert stopped.checkpoint == str(checkpoint) and (checkpoint / "trainer_state.json").is_file()


def test_a_second_signal_during_the_stops_own_save_names_the_checkpoint_before(tmp_path, monkeypatch):
    """The save after training (save_strategy best) cut short by a second signal: the run said no
    checkpoint was written, and named none."""
    def cut_short(trainer):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr("hf_rcka.cli.job.save_checkpoint_now", cut_short)
    _, stopped = _stopped_at_step_4_saving_only_the_best(tmp_path)
    assert stopped.checkpoint is None and stopped.earlier == str(tmp_path / "run" / "checkpoint-2")


@pytest.mark.parametrize("argv,kept", [
    (["r.yaml", "--resume_from_checkpoint", "--logging_steps", "5"], ["r.yaml", "--logging_steps", "5"]),
    (["r.yaml", "--resume_from_checkpoint", "out/checkpoint-2", "--seed", "1"], ["r.yaml", "--seed", "1"]),
    (["r.yaml", "--resume_from_checkpoint=true", "--seed", "1"], ["r.yaml", "--seed", "1"]),  # (main strips a bare --debug)
])
def test_resume_command_drops_the_old_resume_flag_and_only_its_value(argv, kept):
    from hf_rcka.trainer.resume_hint import resume_command

    tokens = shlex.split(resume_command(argv, "out/checkpoint-7"))
    assert tokens[tokens.index("r.yaml"):] == [*kept, "--resume_from_checkpoint", "out/checkpoint-7"]


def test_a_signal_during_the_final_evaluation_says_the_model_is_saved(tmp_path):
    """It said "no checkpoint was written", though the trained model was: a user would train it again."""
    path = recipe(tmp_path)
    values = yaml.safe_load(path.read_text())
    values.update(max_steps=2, max_eval_samples=400, per_device_eval_batch_size=1)
    path.write_text(yaml.safe_dump(values))
    process = subprocess.Popen([sys.executable, "scripts/distill.py", str(path)], cwd=ROOT, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "Running Evaluation" in line:
                process.send_signal(signal.SIGTERM)
                break
        lines += [line.rstrip("\n") for line in process.stdout]
        assert process.wait(timeout=120) == 128 + signal.SIGTERM, "\n".join(lines[-20:])
    finally:
        if process.poll() is None:
            process.kill()
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file()
    assert lines[-1].startswith(f"interrupted by SIGTERM after training: the trained model is saved in {out}")
    command = shlex.split(lines[-1].split("Evaluate it with: ", 1)[1])
    assert command[command.index("--do_train") + 1] == "false" and command[command.index("--model_name_or_path") + 1] == str(out)


@pytest.mark.parametrize("env, launcher", [
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_DYNAMO_BACKEND": "NO"},
     ["accelerate", "launch", "--num_processes", "2", "--multi_gpu", "--mixed_precision", "bf16"]),
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, ["torchrun", "--nproc_per_node", "2"]),
    ({"WORLD_SIZE": "1", "ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO"},
     ["accelerate", "launch", "--num_processes", "1", "--cpu"]),
    # recipes/accelerate/cpu_2proc.yaml (use_cpu: true in the config) is a --multi_gpu launch, not --cpu
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "True", "ACCELERATE_DYNAMO_BACKEND": "NO"},
     ["accelerate", "launch", "--num_processes", "2", "--multi_gpu"]),
    # an FSDP launch resumed without its config file trained without FSDP (round 29's H12)
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "ACCELERATE_DYNAMO_BACKEND": "NO"},
     ["accelerate", "launch", "--num_processes", "2", "--config_file", "<the FSDP config file it was launched with>"]),
    # a user's own ACCELERATE_LOG_LEVEL on a plain run was taken for an accelerate launch
    ({"ACCELERATE_LOG_LEVEL": "warning"}, ["python"]),
    # two machines: `torchrun --nproc_per_node 1 --nnodes 2` alone made each machine node 0 of a
    # rendezvous at its own 127.0.0.1, waiting for the other; `accelerate launch --num_processes 2
    # --multi_gpu` started both processes on one machine
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29611"},
     ["torchrun", "--nproc_per_node", "1", "--nnodes", "2", "--node_rank",
      "<rank of this machine, 0 to 1>", "--master_addr", "10.0.0.5", "--master_port", "29611"]),
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29611",
      "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO"},
     ["accelerate", "launch", "--num_processes", "4", "--multi_gpu", "--num_machines", "2", "--machine_rank",
      "<rank of this machine, 0 to 1>", "--main_process_ip", "10.0.0.5", "--main_process_port",
      "29611"]),
])
def test_the_resume_command_launches_as_many_processes_as_the_run(monkeypatch, env, launcher):
    """It printed `accelerate launch --num_processes 2` alone, which on a CPU starts one process:
    the resumed run went on at half the global batch and exited 0."""
    from hf_rcka.trainer.resume_hint import resume_command

    for key in [k for k in os.environ if k.startswith("ACCELERATE_") or k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    tokens = shlex.split(resume_command(["r.yaml"], "out/checkpoint-7"))
    assert tokens[:len(launcher)] == launcher and tokens[len(launcher)].endswith("distill.py")
    # the recorded recipe's command, uploaded with the model, names no cluster's address
    from hf_rcka.trainer.resume_hint import launch_command

    public = launch_command("r.yaml")
    assert "10.0.0.5" not in public and "29611" not in public
    if "MASTER_ADDR" in env:
        assert "<address of machine 0>" in shlex.split(public)


def test_a_stop_that_saved_its_checkpoint_says_so_though_it_is_also_the_last_one():
    """The stop passes the last checkpoint written whole along with its own, and its own is that
    one: the message must say it saved it, not that no checkpoint of the step was saved."""
    saved = Stopped(signal.SIGTERM, 4, "out/checkpoint-4", ["r.yaml"], True, "out/checkpoint-4").message()
    assert saved.startswith("interrupted by SIGTERM: saved out/checkpoint-4 (step 4); resume with:\n")
    assert saved.endswith("r.yaml --resume_from_checkpoint out/checkpoint-4") and "no checkpoint" not in saved
    earlier = Stopped(signal.SIGTERM, 5, None, ["r.yaml"], True, "out/checkpoint-4").message()
    assert earlier.startswith("interrupted by SIGTERM at step 5: no checkpoint of it was saved; the last one is "
                              "out/checkpoint-4") and earlier.endswith("r.yaml --resume_from_checkpoint out/checkpoint-4")
    none = Stopped(signal.SIGINT, 0, None, ["r.yaml"]).message()
    assert none == "interrupted by SIGINT at step 0: no checkpoint was saved, nothing to resume"


def test_the_resume_command_runs_the_script_from_where_it_was_run(monkeypatch):
    """A run started by its script's absolute path (a job script's ``python /home/alice/project/my_distill.py``)
    must be resumed by that path: the resume command is printed for the user's own shell, and only the
    recorded recipe's command (uploaded with the model) names the script without someone's folders."""
    from hf_rcka.trainer.resume_hint import launch_command, resume_command

    for key in [k for k in os.environ if k.startswith("ACCELERATE_") or k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE")]:
        monkeypatch.delenv(key)
    for script, public in (("/home/alice/project/my_distill.py", "my_distill.py"),
                           ("/home/alice/hf_rcka/scripts/distill.py", "scripts/distill.py")):
        monkeypatch.setattr("sys.argv", [script])
        assert resume_command(["r.yaml"], "out/checkpoint-7") == \
            f"python {script} r.yaml --resume_from_checkpoint out/checkpoint-7"
        assert launch_command("r.yaml") == f"python {public} r.yaml"


def test_a_resumed_repeated_augmentation_epoch_draws_its_own_order():
    """Resumed in 2 processes, the rest of epoch 1 was drawn in epoch 0's order (set_epoch did not
    reach the sampler under the resume's extra loader wrapper)."""
    from transformers import TrainerControl, TrainerState

    from hf_rcka.data.sampler import RepeatedAugmentationSampler, SamplerEpoch

    callback = SamplerEpoch()
    callback.sampler = RepeatedAugmentationSampler(range(40), 3, num_replicas=2, rank=0, seed=5)
    callback.on_epoch_begin(None, TrainerState(epoch=1.25), TrainerControl())
    assert callback.sampler.epoch == 5 + 1


def test_a_repeated_augmentation_epoch_resumed_late_or_begun_on_a_rounded_count_keeps_its_number():
    """The epoch a resume lands in is its number rounded down, however late in it the resume comes
    (kills: rounded to the nearest, which drew the rest of epoch 1 in epoch 2's order: some images
    twice in the epoch, others never); an epoch count a hair under the next whole number (float
    rounding of steps / steps per epoch) is that number (kills: floor without the tolerance)."""
    from transformers import TrainerControl, TrainerState

    from hf_rcka.data.sampler import RepeatedAugmentationSampler, SamplerEpoch

    callback = SamplerEpoch()
    callback.sampler = RepeatedAugmentationSampler(range(40), 3, num_replicas=2, rank=0, seed=5)
    callback.on_epoch_begin(None, TrainerState(epoch=1.75), TrainerControl())
    assert callback.sampler.epoch == 5 + 1
    callback.on_epoch_begin(None, TrainerState(epoch=2 - 1e-9), TrainerControl())
    assert callback.sampler.epoch == 5 + 2


def test_the_signal_handler_closes_the_update_window_after_the_weight_ema(tmp_path):
    """Its on_step_end ran before the EMA's: a second signal in the EMA update wrote a checkpoint
    of step 3's weights with step 2's average."""
    from conftest import pixel_dataset, processor, tiny_vit
    from hf_rcka import DistillationTrainer, DistillationTrainingArguments
    from hf_rcka.trainer.ema import StudentEmaCallback

    stop = GracefulStop()
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=5,
                                         report_to="none", use_cpu=True, save_strategy="no", model_ema=True)
    trainer = DistillationTrainer(model=tiny_vit(), args=args, train_dataset=pixel_dataset(10),
                                  processing_class=processor(16), callbacks=[stop])
    callbacks = trainer.callback_handler.callbacks
    ema = max(i for i, c in enumerate(callbacks) if isinstance(c, StudentEmaCallback))
    assert callbacks.index(stop) > ema


def test_a_signal_during_the_final_save_waits_for_the_model(tmp_path, monkeypatch, capsys):
    """A SIGTERM once training had ended cut the export short after config.json (with save_strategy
    "no", the whole training was lost), and the message said no checkpoint was written."""
    from transformers import AutoModelForImageClassification, PreTrainedModel

    save = PreTrainedModel.save_pretrained

    def signalled_while_saving(self, folder, *args, **kwargs):
        self.config.save_pretrained(folder)
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs here, in the main thread
        return save(self, folder, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", signalled_while_saving)
    path = recipe(tmp_path)
    assert main([str(path), "--max_steps", "2"]) == 128 + signal.SIGTERM
    out = tmp_path / "out"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by SIGTERM after training: the trained model is saved in {out}"), last
    assert {"model.safetensors", "trainer_state.json", "train_results.json"} <= {p.name for p in out.iterdir()}
    AutoModelForImageClassification.from_pretrained(out)  # whole


@pytest.mark.parametrize("env, said", [
    ({"RANK": "1"}, True),  # a plain run under a cluster scheduler that exports its own RANK
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "2"}, True),  # a second machine's first process
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1", "RANK": "1"}, False),  # a launcher's replica
    ({"WORLD_SIZE": "1", "LOCAL_RANK": "1"}, True),  # one process that a scheduler numbered: no replica
])
def test_an_interruption_is_said_by_each_machines_first_process(env, said, monkeypatch, capsys):
    """A plain run whose environment held RANK=1 stopped on a signal with no word of why."""
    from hf_rcka.cli import main as cli

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def interrupted(argv, stop):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(cli, "_run_recipe", interrupted)
    assert cli.main(["recipe.yaml"]) == 128 + signal.SIGINT
    assert ("interrupted by SIGINT outside the training steps" in capsys.readouterr().err) is said


@SIGTERM_RUN
def test_resume_true_skips_a_checkpoint_whose_save_was_cut_short(sigterm_run, tmp_path, capsys):
    """A kill during a save (a preempted job's grace period ending) left the last checkpoint without
    its trainer_state.json: resume_from_checkpoint true was refused, so a requeued job failed at
    every restart. It resumes the one before, and sets the cut-short one aside (nothing deleted)."""
    _, code, lines, as_stopped = sigterm_run  # the stopped run (learning_rate 1e-3), moved into this test's folder
    assert code == 128 + signal.SIGTERM, "\n".join(lines[-20:])
    recipe(tmp_path)
    out = tmp_path / "out"
    shutil.copytree(as_stopped, out)
    (whole,) = out.glob("checkpoint-*")
    step = json.loads((whole / "trainer_state.json").read_text())["global_step"]
    cut = out / f"checkpoint-{step + 2}"
    cut.mkdir()
    shutil.copy(whole / "model.safetensors", cut / "model.safetensors")  # the weights come first, the state last
    code = main([str(tmp_path / "recipe.yaml"), "--learning_rate", "1e-3", "--resume_from_checkpoint", "true",
                 "--max_steps", str(step + 3)])
    stderr = capsys.readouterr().err
    assert code == 0, stderr[-3000:]
    assert f"resuming from {whole}, the last checkpoint written whole ({cut.name} in {out}: cut short while " \
           "saving" in stderr
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == step + 3
    assert not cut.exists() and list((out / "_replaced").rglob(f"checkpoint-{step + 2}/model.safetensors"))


def test_a_signal_after_the_training_steps_waits_for_the_trained_model_to_be_saved(tmp_path, monkeypatch, capsys):
    """Trainer waits for its checkpoint uploads after its on_train_end (minutes, with hub_strategy
    every_save), and the trained model is saved after that: a SIGTERM there stopped the run at once,
    "outside the training steps", and with save_strategy no the trained weights were lost."""
    from hf_rcka.trainer.trainer import DistillationTrainer

    monkeypatch.setattr(DistillationTrainer, "_finish_current_push", lambda self: os.kill(os.getpid(), signal.SIGTERM),
                        raising=False)
    path = recipe(tmp_path)
    assert main([str(path), "--max_steps", "2"]) == 128 + signal.SIGTERM
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and json.loads((out / "trainer_state.json").read_text())[
        "global_step"] == 2
    assert f"interrupted by SIGTERM after training: the trained model is saved in {out}" in capsys.readouterr().err


def test_sigterm_to_the_process_group_with_loader_workers_saves_a_checkpoint(tmp_path):
    """GNU timeout, kill -TERM -<pgid> and a cluster's pre-emption signal every process of the group:
    torch's handler ended the loader workers, and the run failed at its next batch ("DataLoader
    worker ... is killed by signal: Terminated", a traceback, exit 1) before the stop's checkpoint."""
    command = [sys.executable, "scripts/distill.py", str(recipe(tmp_path)), "--dataloader_num_workers", "2"]
    process = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "'loss'" in line and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                break
        lines += [line.rstrip("\n") for line in process.stdout]
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = "\n".join(lines)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output and "killed by signal" not in output
    assert output.count("SIGTERM received") == 1, "said by the main process alone"
    checkpoints = list((tmp_path / "out").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").is_file()


def test_a_user_error_in_a_loader_worker_is_its_own_message():
    """torch re-raises it as 'Caught DataError in DataLoader worker process 0.' with the worker's
    traceback, which the command line printed as its error line."""
    import torch

    from hf_rcka.errors import DataError, user_message

    class Unreadable(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise DataError("all 2 images of a batch are unreadable (simulated)")

    with pytest.raises(DataError) as raised:
        next(iter(torch.utils.data.DataLoader(Unreadable(), num_workers=1)))
    assert "DataLoader worker process 0" in str(raised.value)
    assert user_message(raised.value) == "all 2 images of a batch are unreadable (simulated)"
    assert user_message(DataError("a plain one")) == "a plain one"


def test_no_checkpoint_of_the_last_step_is_written_once_the_best_weights_are_loaded(tmp_path):
    """After load_best_model_at_end the weights are an earlier checkpoint's: saved as
    checkpoint-<last step> they would resume as if trained that far. The guard could be dropped with
    every test passing."""
    from types import SimpleNamespace

    from hf_rcka.trainer.interrupt import save_checkpoint_now

    saved = []
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=7), best_model_loaded=True, model=None,
                              _get_output_dir=lambda trial=None: str(tmp_path),
                              _save_checkpoint=lambda model, trial: saved.append(model))
    assert save_checkpoint_now(trainer) is None and saved == []
    trainer.best_model_loaded = False
    assert save_checkpoint_now(trainer) == str(tmp_path / "checkpoint-7") and saved == [None]


@pytest.mark.parametrize("context", ["fork", "forkserver"])
def test_a_loader_worker_ends_on_the_main_processs_sigterm(context):
    """torch and multiprocessing end workers with SIGTERM from the main process, which the workers
    must still obey while they leave a SIGTERM to the group to it: ignoring SIGTERM hung the run at
    its exit. (Under forkserver a worker's parent is the fork server; taken for the main process,
    a busy worker ignored its SIGTERM and a run with persistent workers never exited: a reviewer's
    repro with a slow data set, which this idle worker does not reproduce.)"""
    import time

    import torch

    from hf_rcka.trainer.interrupt import leave_signals_to_main_process

    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=1,
                                         multiprocessing_context=context)
    batches = iter(leave_signals_to_main_process(loader))
    next(batches)
    worker = batches._workers[0]
    try:
        worker.terminate()
        deadline = time.monotonic() + 20
        while worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not worker.is_alive(), "the worker ignored the main process's SIGTERM"
    finally:
        if worker.is_alive():
            os.kill(worker.pid, signal.SIGKILL)
        del batches


_WORKER_INIT = {}


def _mark_worker_init(worker_id):
    _WORKER_INIT["ran"] = worker_id


class _SignalsSeen(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return signal.getsignal(signal.SIGINT) == signal.SIG_IGN, _WORKER_INIT.get("ran", -1)


def test_a_loader_worker_ignores_sigint_and_still_runs_the_loaders_own_init():
    """Ctrl-C reaches the workers too: they ran the main process's handler (the stop said three
    times). And the loader's own worker_init_fn (transformers' seed_worker, which seeds numpy for
    RandAugment's choices in each worker) still runs inside the wrapper."""
    from torch.utils.data import DataLoader

    from hf_rcka.trainer.interrupt import leave_signals_to_main_process

    loader = leave_signals_to_main_process(DataLoader(_SignalsSeen(), batch_size=None, num_workers=1,
                                                      worker_init_fn=_mark_worker_init))
    assert [(bool(ignored), int(ran)) for ignored, ran in loader] == [(True, 0), (True, 0)]


def test_a_chained_user_error_in_a_loader_worker_is_its_own_message_not_its_causes():
    """The worker's traceback names the cause first (raise ... from err): the message is the user error's."""
    from hf_rcka.errors import DataError, user_message

    text = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            "  File \"a.py\", line 1, in f\nKeyError: 'labels'\n\nThe above exception was the direct cause of the "
            "following exception:\n\nTraceback (most recent call last):\n  File \"b.py\", line 2, in g\n"
            "hf_rcka.errors.DataError: train_dataset: its items have no ['labels']\n")
    assert user_message(DataError(text)) == "train_dataset: its items have no ['labels']"


def test_a_user_error_raised_while_handling_another_in_a_loader_worker_is_its_own_message():
    """A DataError raised while handling another (an unreadable image, said again for its batch) has
    two tracebacks in the worker's text, each ending in a DataError line: the command line printed the
    first one's message and the whole traceback after it, where without workers it says one line."""
    import torch

    from hf_rcka.errors import DataError, user_message

    class Unreadable(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            try:
                raise DataError("image 3.png is unreadable (simulated)")
            except DataError:
                raise DataError("all 2 images of a batch are unreadable (simulated)")  # as a user's dataset may

    for workers in (0, 1):
        with pytest.raises(DataError) as raised:
            next(iter(torch.utils.data.DataLoader(Unreadable(), num_workers=workers)))
        assert user_message(raised.value) == "all 2 images of a batch are unreadable (simulated)", workers


@pytest.mark.parametrize("limit", [None, 2])
def test_checkpoints_a_limit_other_than_1_keeps_outlive_the_export(tmp_path, limit):
    """Only save_total_limit 1 keeps the last checkpoint for the export: with no limit (or 2) every checkpoint the
    limit keeps is still there after the command line's export, and the limit is the user's again."""
    from conftest import pixel_dataset

    from hf_rcka.cli.job import _train

    trainer = tiny_trainer(tmp_path, eval_dataset=pixel_dataset(10, seed=1), max_steps=6, eval_strategy="steps",
                           eval_steps=2, save_strategy="steps", save_steps=2, save_total_limit=limit,
                           load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True)
    _train(trainer, resume=None)
    kept = sorted(p.name for p in Path(trainer.args.output_dir).glob("checkpoint-*"))
    assert len(kept) == (3 if limit is None else 2), kept
    assert trainer.args.save_total_limit == limit


def test_save_total_limit_1_is_set_back_after_training(tmp_path):
    """The limit is set back after training (training_args.bin of the export records the user's 1)."""
    from conftest import pixel_dataset

    from hf_rcka.cli.job import _train

    trainer = tiny_trainer(tmp_path, eval_dataset=pixel_dataset(10, seed=1), max_steps=4, eval_strategy="steps",
                           eval_steps=2, save_strategy="steps", save_steps=2, save_total_limit=1,
                           load_best_model_at_end=True, metric_for_best_model="loss")
    _train(trainer, resume=None)
    assert trainer.args.save_total_limit == 1


def test_resume_true_names_only_the_cut_short_checkpoints_after_the_one_it_resumes(tmp_path, caplog):
    """resume_from_checkpoint: true passes over the later checkpoints whose save was cut short, and
    says which: the earlier, whole ones are not among them (kills: every other checkpoint named as
    cut short), nor is a file named like a checkpoint."""
    from hf_rcka.trainer.checkpoint_folders import resumable_checkpoint

    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (1, 2):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4").write_text("")  # a file, not a checkpoint
    with caplog.at_level("WARNING", logger="hf_rcka"):
        assert resumable_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert f"(checkpoint-3 in {tmp_path}: cut short while saving" in caplog.text
    caplog.clear()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    with caplog.at_level("WARNING", logger="hf_rcka"):
        assert resumable_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")
    assert caplog.text == ""


def test_resume_true_with_only_checkpoints_cut_short_resumes_none_of_them(tmp_path, caplog):
    """A first save cut short (the job killed while writing checkpoint-2), then requeued with
    resume_from_checkpoint: true: no checkpoint is whole, and the choice is none (Trainer's own
    message follows), not a TypeError from comparing the later steps with a missing one."""
    from hf_rcka.trainer.checkpoint_folders import resumable_checkpoint

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "model.safetensors").write_text("cut")
    with caplog.at_level("WARNING", logger="hf_rcka"):
        assert resumable_checkpoint(str(tmp_path)) is None
    assert caplog.text == "", "nothing is resumed, so nothing is passed over"


def test_a_stop_through_the_python_api_keeps_its_checkpoint_under_save_total_limit_1(tmp_path):
    """A script of the user's with a GracefulStop and save_total_limit 1 (no export, so Trainer's own
    end of training runs): Trainer deleted every checkpoint but the best, the stop's own among them,
    and there was nothing to resume (kills: the limit left as it was on a stop)."""
    from conftest import pixel_dataset

    stop = GracefulStop()
    stop.install()
    try:
        trainer = tiny_trainer(
            tmp_path, stop, SignalAt(5, signal.SIGTERM), eval_dataset=pixel_dataset(10, seed=1), max_steps=20,
            eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, save_total_limit=1,
            metric_for_best_model="loss", greater_is_better=True)  # best: the highest loss, an early checkpoint
        trainer.train()
    finally:
        stop.uninstall()
    assert stop.stopped_at == 5
    assert (tmp_path / "run" / "checkpoint-5" / "optimizer.pt").is_file()


def test_a_signal_after_training_names_the_checkpoint_that_finishes_the_run(tmp_path):
    """A signal during the final evaluation of a run with checkpoints said to evaluate the model with an
    evaluation-only run, which writes no card and uploads nothing, though its checkpoint of the last step,
    resumed, runs the evaluation, card and upload and trains nothing (with checkpoint pushes, a resume of
    the finished run needs hub_strategy end, or it is refused)."""
    from hf_rcka.cli.job import _train
    from hf_rcka.cli.main import _interrupted_message

    stop = GracefulStop()
    trainer = tiny_trainer(tmp_path, stop, max_steps=2, save_strategy="steps", save_steps=1)
    _train(trainer, resume=None, stop=stop, argv=["r.yaml", "--seed", "3"])
    said = _interrupted_message("SIGTERM", stop, ["r.yaml", "--seed", "3"])
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert said.splitlines()[-1].endswith(f"r.yaml --seed 3 --resume_from_checkpoint {checkpoint}"), said
    # a signal in the final evaluation's metrics block comes after its numbers were printed: it ran, unsaved
    assert "evaluation, model card and Hub upload did not complete" in said and "did not run" not in said
    trainer.args.push_to_hub, trainer.args.hub_strategy = True, "every_save"
    from hf_rcka.cli.job import _finish_settings
    assert _finish_settings(trainer) == {"resume_from_checkpoint": str(checkpoint), "hub_strategy": "end"}
    stop.evaluated = True
    assert "--resume_from_checkpoint" in _interrupted_message("SIGTERM", stop, ["r.yaml"]).splitlines()[-1]


@pytest.mark.parametrize("where", ["closing", "exit"])
def test_a_ctrl_c_after_the_run_ended_prints_no_traceback(tmp_path, where):
    """Ctrl-C to a 2-process run while its first process finished (its final evaluation, card): each
    process that had returned from its run was closing its process group (a garbage collection) or in
    the interpreter's exit, where Python's SIGINT handler (given back by main) raised KeyboardInterrupt
    in a finalizer: "Exception ignored in: <finalize object ...> ... KeyboardInterrupt" under the run's
    last line, from one process or both. Here the SIGINT comes while the group closes, or in the exit."""
    program = (
        "import atexit, os, signal, sys, time\n"
        "import hf_rcka.cli.main as cli\n"
        "def ctrl_c():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.5)\n"
        "cli._run_recipe = lambda argv, stop: None\n"
        f"if {where!r} == 'closing':\n"
        "    cli.close_process_group = ctrl_c\n"
        "else:\n"
        "    atexit.register(ctrl_c)\n"
        "sys.argv = ['distill.py', 'recipe.yaml']\n"
        "cli.console_main()\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0 and "KeyboardInterrupt" not in result.stderr, result.stderr[-2000:]


def test_main_gives_ctrl_c_back_after_closing_the_process_group(monkeypatch):
    """main (which tests and scripts call many times in one process) leaves SIGINT as it found it."""
    import hf_rcka.cli.main as cli

    monkeypatch.setattr(cli, "_run_recipe", lambda argv, stop: None)
    seen = []
    monkeypatch.setattr(cli, "close_process_group", lambda: seen.append(signal.getsignal(signal.SIGINT)))
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["recipe.yaml"]) == 0
    assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is before


def test_a_second_signal_says_the_stop_once(tmp_path, caplog):
    """A second signal between steps said the stop twice, with two resume commands: a warning
    "interrupted: saved checkpoint-2 ...; continue with --resume_from_checkpoint true", then the
    Stopped message naming checkpoint-2 itself (a warning meant for a run without GracefulStop)."""
    from hf_rcka.cli.job import _train

    stop = GracefulStop()
    stop.install()
    try:
        trainer = tiny_trainer(tmp_path, stop, SignalAt(3, signal.SIGTERM, times=2))
        with caplog.at_level("WARNING", logger="hf_rcka"), pytest.raises(Stopped) as stopped:
            _train(trainer, resume=None, stop=stop, argv=["r.yaml"])
    finally:
        stop.uninstall()
    assert stopped.value.checkpoint == str(tmp_path / "run" / "checkpoint-2")
    assert "interrupted: saved" not in caplog.text, caplog.text


def test_a_signal_during_an_evaluation_only_run_says_the_evaluation_stopped(tmp_path, monkeypatch, capsys):
    """Ctrl-C during an evaluation-only run said "interrupted by SIGINT outside the training steps: no
    checkpoint was written by this signal", of a run that has no training steps and writes no checkpoint."""
    import hf_rcka.cli.job as job

    path = recipe(tmp_path)

    def signal_during_the_evaluation(*args, **kwargs):
        raise Interrupted(signal.SIGINT)

    assert main([str(path), "--max_steps", "1"]) == 0
    out = str(tmp_path / "out")
    capsys.readouterr()
    monkeypatch.setattr(job, "_evaluate", signal_during_the_evaluation)
    evaluate = [str(path), "--do_train", "false", "--model_name_or_path", out, "--student_from_scratch", "false"]
    assert main(evaluate) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "interrupted by SIGINT: the evaluation-only run stopped before it recorded its results", line
