"""FSDP2 on 2 CPU processes (gloo): train -> checkpoint -> resume -> export -> reload, teacher never sharded.

accelerate's FSDP plugin does not switch on for CPU processes (MULTI_CPU runs as DDP), so the
worker drives ``fully_shard`` and the full state dicts by hand; see fsdp_worker.py.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

WORKER = Path(__file__).parent / "fsdp_worker.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(WORKER), str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


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
