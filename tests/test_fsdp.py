"""FSDP2 on 2 CPU processes (gloo): train -> checkpoint -> resume -> export -> reload, teacher never sharded.

accelerate's FSDP plugin does not switch on for CPU processes (MULTI_CPU runs as DDP). Two workers
cover the path anyway: fsdp_worker.py drives ``fully_shard`` and the full state dicts by hand, and
fsdp_trainer_worker.py runs DistillationTrainer through accelerate's own FSDP2 path with only the
CPU -> MULTI_CPU decision overridden.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

JOBS_WORKER = Path(__file__).parent / "fsdp_jobs_worker.py"  # runs fsdp_worker.py, fsdp_ac_worker.py, fsdp_trainer_worker.py

# one pytest-xdist worker runs this file (--dist loadgroup): its module fixtures are 2-process launches
pytestmark = pytest.mark.xdist_group("test_fsdp")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args: str) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """Every 2-process job of this file in two launches (each launch's interpreters pay ~25 CPU-seconds of
    imports): the hand-driven FSDP2 round trip, the activation checkpointing pair and the trainer's
    uninterrupted run in one; the trainer's resume in a fresh launch of its own, as a restarted run resumes."""
    out = tmp_path_factory.mktemp("fsdp_jobs")
    _torchrun(str(JOBS_WORKER), str(out), "fsdp", "plain", "checkpointed", "full")
    _torchrun(str(JOBS_WORKER), str(out), "resume")
    return out


@pytest.fixture(scope="module")
def trainer_run(launches):
    """Uninterrupted 4 steps (checkpoints at 2 and 4), then a fresh trainer resumed from checkpoint-2."""
    return launches / "trainer"


@pytest.mark.multiprocess
def test_trainer_under_accelerate_fsdp2_shards_student_and_adapters_but_not_the_teacher(trainer_run):
    expected = {"fsdp": True, "student_sharded": True, "adapters_sharded": True, "teacher_sharded": False}
    for mode in ("full", "resume"):
        assert json.loads((trainer_run / f"{mode}.json").read_text()) == expected


@pytest.mark.multiprocess
def test_trainer_fsdp2_resume_matches_the_uninterrupted_run_exactly(trainer_run):
    """Student and distillation state (adapters, SRD projector) go through the gathered save and
    the sharded load; the resumed run must end where the uninterrupted one did."""
    for name in ("model.safetensors", "checkpoint-4/model.safetensors", "checkpoint-4/distillation_state.safetensors"):
        uninterrupted, resumed = load_file(trainer_run / "full" / name), load_file(trainer_run / "resume" / name)
        assert set(resumed) == set(uninterrupted)
        for key, value in uninterrupted.items():
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=f"{name}: {key}")
    for checkpoint in ("full/checkpoint-2", "full/checkpoint-4", "resume/checkpoint-4"):
        # accelerate's copy of the whole wrapper, teacher included, is removed: resume never reads it
        assert not list((trainer_run / checkpoint).glob("pytorch_model_fsdp*")), checkpoint
        assert (trainer_run / checkpoint / "optimizer.bin").is_file()
    state = load_file(trainer_run / "full" / "checkpoint-2" / "distillation_state.safetensors")
    assert any(k.startswith("adapters.") for k in state) and any(k.startswith("losses.") for k in state)
    moved = load_file(trainer_run / "full" / "model.safetensors")
    start = load_file(trainer_run / "full" / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(moved[k], start[k]) for k in start), "steps 3-4 changed nothing"


@pytest.mark.multiprocess
def test_trainer_fsdp2_export_is_a_plain_student(trainer_run):
    exported = AutoModelForImageClassification.from_pretrained(trainer_run / "resume")
    saved = load_file(trainer_run / "resume" / "model.safetensors")
    assert not any(k.startswith(("teacher", "adapters", "losses")) for k in saved)
    assert exported.config.num_labels == 3
    logits = exported(pixel_values=torch.zeros(2, 3, 16, 16)).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def checkpointing_runs(launches):
    return launches / "ac"


@pytest.mark.multiprocess
def test_fsdp_activation_checkpointing_trains_and_exports_as_without_it(checkpointing_runs):
    """fsdp_config activation_checkpointing: accelerate wraps the student's blocks in torch's
    checkpoint_wrapper as it prepares the model. Their BatchNorms counted each step twice (the
    recomputation in the backward: num_batches_tracked 6 after 3 steps, other running statistics in
    the export), and the recomputation drew other drop-path masks than the forward
    (preserve_rng_state=False): gradients of another network. Exit 0 both times."""
    assert json.loads((checkpointing_runs / "checkpointed.json").read_text()) == {"wrapped": True}
    plain = load_file(checkpointing_runs / "plain" / "model.safetensors")
    checkpointed = load_file(checkpointing_runs / "checkpointed" / "model.safetensors")
    assert set(checkpointed) == set(plain)
    for key, value in plain.items():
        torch.testing.assert_close(checkpointed[key], value, rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def fsdp_run(launches):
    return launches / "fsdp"


@pytest.mark.multiprocess
def test_fsdp2_round_trip_keeps_the_teacher_out_and_exports_a_plain_student(fsdp_run):
    info = json.loads((fsdp_run / "info.json").read_text())
    assert info == {"student_sharded": True, "teacher_sharded": False, "teacher_optimised": False,
                    "teacher_unchanged": True}
    resumed, checkpoint = load_file(fsdp_run / "b.safetensors"), load_file(fsdp_run / "checkpoint.safetensors")
    trained = [k for k in resumed if not k.startswith("teacher.")]
    assert any(k.startswith("adapters.") for k in trained) and any(k.startswith("student.") for k in trained)
    assert all(torch.isfinite(resumed[k]).all() for k in trained)
    assert any(not torch.equal(resumed[k], checkpoint[k]) for k in trained), "training continued after resume"
    exported = AutoModelForImageClassification.from_pretrained(fsdp_run / "export")
    state = exported.state_dict()
    for key, value in resumed.items():
        if key.startswith("student."):
            torch.testing.assert_close(state[key[len("student."):]], value, rtol=0, atol=0)


@pytest.mark.multiprocess
def test_fsdp2_resume_matches_an_uninterrupted_run(fsdp_run):
    uninterrupted, resumed = load_file(fsdp_run / "a.safetensors"), load_file(fsdp_run / "b.safetensors")
    for key in (k for k in uninterrupted if not k.startswith("teacher.")):
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=f"{key} after resume")


@pytest.mark.multiprocess
def test_fsdp2_resume_restores_the_same_teacher_on_every_rank(fsdp_run):
    """The checkpoint carries the (unsharded) teacher; loading broadcasts rank 0's copy, which
    scrambled NHWC weights on rank 1 until the teacher's state dict used standard layout."""
    assert json.loads((fsdp_run / "resume.json").read_text()) == {"teacher_equal_on_every_rank": True}


@pytest.mark.multiprocess
def test_torch_broadcast_loading_still_permutes_nhwc_tensors(fsdp_run):
    """Pins the upstream behaviour teacher_runtime.standard_layout_state works around: with
    broadcast_from_rank0, rank 0 sends an NHWC tensor's memory as it lies and rank 1 receives it into
    a contiguous buffer. If this starts failing, torch keeps the layout now; the hook may go."""
    upstream = json.loads((fsdp_run / "upstream.json").read_text())
    assert upstream == {"nhwc_broadcast_arrives_intact": False}


def test_sharded_state_dict_type_is_refused_before_training():
    """With SHARDED_STATE_DICT, Trainer.save_model writes no model: the run would end with no student."""
    from types import SimpleNamespace

    from hf_rcka.modeling.parallel import require_full_state_dict

    def accelerator(kind):
        return SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace(state_dict_type=kind)))

    with pytest.raises(ValueError, match="FULL_STATE_DICT"):
        require_full_state_dict(accelerator("StateDictType.SHARDED_STATE_DICT"))
    require_full_state_dict(accelerator("StateDictType.FULL_STATE_DICT"))
    require_full_state_dict(SimpleNamespace(state=SimpleNamespace()))  # no FSDP


def test_fsdp_settings_are_read_from_fsdp_config_or_accelerate_launch(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from hf_rcka import DistillationTrainingArguments
    from hf_rcka.errors import RecipeError
    from hf_rcka.modeling.parallel import check_fsdp_settings

    for name in ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING", "FSDP_STATE_DICT_TYPE"):
        monkeypatch.delenv(name, raising=False)
    launched = SimpleNamespace(fsdp_plugin_args=None)  # no fsdp in TrainingArguments: accelerate launch decides
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")  # transformers loads on meta only under FSDP
    check_fsdp_settings(launched)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RecipeError, match="set fsdp_cpu_ram_efficient_loading: false"):
        check_fsdp_settings(launched)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    for full in ("FULL_STATE_DICT", "1", "StateDictType.FULL_STATE_DICT"):
        monkeypatch.setenv("FSDP_STATE_DICT_TYPE", full)
        check_fsdp_settings(launched)
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "3")
    with pytest.raises(RecipeError, match="needs the full state dict"):
        check_fsdp_settings(launched)

    def configured(**fsdp_config):  # the Trainer builds its plugin from these, whatever the launcher said
        return DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, fsdp="full_shard",
                                             fsdp_config={"fsdp_version": 2, **fsdp_config})

    check_fsdp_settings(configured())  # SHARDED_STATE_DICT in the environment is overridden (FULL by default)
    with pytest.raises(RecipeError, match="needs the full state dict"):
        check_fsdp_settings(configured(state_dict_type="SHARDED_STATE_DICT"))
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(RecipeError, match="cpu_ram_efficient_loading"):  # accelerate's prepare fails on it too
        check_fsdp_settings(configured(cpu_ram_efficient_loading="true"))


def test_full_state_dict_loading_rejects_missing_and_unexpected_keys():
    """torch's full-state-dict loader fills missing keys with current values; ours must not resume from a partial file."""
    from hf_rcka.modeling.sharded_state import load_full_state_dict

    module = torch.nn.Linear(3, 2)
    state = {k: torch.ones_like(v) for k, v in module.state_dict().items()}
    with pytest.raises(KeyError, match="missing \\['bias'\\]"):
        load_full_state_dict(module, {"weight": state["weight"]}, "adapters")
    with pytest.raises(KeyError, match="unexpected \\['extra'\\]"):
        load_full_state_dict(module, {**state, "extra": torch.zeros(1)}, "adapters")
    load_full_state_dict(module, state, "adapters")
    assert torch.equal(module.weight, torch.ones(2, 3))


def test_fsdp_checkpoint_wrappers_recompute_with_the_forwards_dropout_masks():
    """accelerate's FSDP activation_checkpointing wraps blocks with preserve_rng_state=False: the
    backward's recomputation drew other dropout masks than the forward, and the gradients were those of
    another network than the one the loss measured. The wrappers are given the RNG state back."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    from hf_rcka.modeling.activation_checkpoints import restore_rng_in_wrapped_checkpoints

    def grads(wrap: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 8))
        model = torch.nn.Sequential(torch.nn.Linear(8, 8),
                                    checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT,
                                                       preserve_rng_state=False) if wrap else block)
        if wrap:
            assert restore_rng_in_wrapped_checkpoints(model) == 1
            assert restore_rng_in_wrapped_checkpoints(model) == 0, "changed once"
        torch.manual_seed(1)
        model(torch.randn(16, 8)).square().sum().backward()
        return [p.grad for p in model.parameters()]

    for got, expected in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, expected)


_SHARDED_PROJECTION = """
import os, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from hf_rcka.adapters import build_adapter
from hf_rcka.distributed import close_process_group
from hf_rcka.features.layout import FeatureSpec
dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (1,))
adapter = build_adapter("patch_match", FeatureSpec("nlc", 8, (4, 4), num_prefix_tokens=1),
                        FeatureSpec("nchw", 24, (4, 4)), sample_channels=8)
fully_shard(adapter.proj, mesh=mesh)  # its own unit, as a size-based wrap policy makes it
fully_shard(adapter, mesh=mesh)
for training in (True, False):
    student, teacher = adapter.train(training)(torch.randn(2, 17, 8), torch.randn(2, 24, 4, 4))
    assert student.shape == teacher.shape == (2, 8 if training else 24, 4, 4), student.shape
    student.square().mean().backward()
close_process_group()
"""


def test_a_separately_sharded_projection_is_gathered_before_channel_sampling(tmp_path):
    """The adapter slices the projection's weight for the sampled channels inside the projection's
    own forward, where FSDP2 has gathered it; slicing from outside met a sharded DTensor."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", _SHARDED_PROJECTION], capture_output=True, text=True,
                            timeout=300, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-4000:]


def test_fsdp_config_values_are_read_as_accelerate_reads_them(tmp_path):
    """A recipe's YAML gives cpu_ram_efficient_loading as a boolean (True, not "true") and accelerate
    upper-cases the state_dict_type it is given: the boolean slipped past the refusal, and the
    lower-case full state dict was refused as sharded."""
    from hf_rcka import DistillationTrainingArguments
    from hf_rcka.errors import RecipeError
    from hf_rcka.modeling.parallel import check_fsdp_settings

    def configured(**fsdp_config):
        return DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, fsdp="full_shard",
                                             fsdp_config={"fsdp_version": 2, **fsdp_config})

    with pytest.raises(RecipeError, match="cpu_ram_efficient_loading"):
        check_fsdp_settings(configured(cpu_ram_efficient_loading=True))
    check_fsdp_settings(configured(cpu_ram_efficient_loading=False, state_dict_type="full_state_dict"))
    with pytest.raises(RecipeError, match="needs the full state dict"):
        check_fsdp_settings(configured(state_dict_type="sharded_state_dict"))


def test_accelerate_use_fsdp_false_is_no_fsdp_launch(monkeypatch):
    """ACCELERATE_USE_FSDP=false (an exported setting; accelerate reads only "true" as FSDP)
    launches no FSDP: its FSDP_* settings do not apply, and a run was refused for a setting FSDP alone
    reads (kills: any non-empty ACCELERATE_USE_FSDP read as FSDP)."""
    from types import SimpleNamespace

    from hf_rcka.modeling.parallel import check_fsdp_settings

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT")
    check_fsdp_settings(SimpleNamespace(fsdp_plugin_args=None))
