"""Worker for test_fsdp.py: several of its 2-process jobs in one torchrun launch.

Each launch's two interpreters spend about 12 CPU-seconds each importing torch, transformers and
hf_rcka, and a job's own work is a few seconds: five launches were mostly imports. The jobs run one
after another on one process group, closed once at the end (a gloo group set up again on the
launcher's store meets the first one's keys), each starting
from what a fresh process has: accelerate's shared state reset and the environment put back (the
Trainer exports ACCELERATE_USE_FSDP and the FSDP_* settings of its fsdp_config).

Usage (torchrun, 2 processes): ``fsdp_jobs_worker.py OUT JOB...``, JOB one of ``fsdp`` (fsdp_worker.py,
into OUT/fsdp; first, as it sets the group up itself), ``plain`` / ``checkpointed`` (fsdp_ac_worker.py,
into OUT/ac) and ``full`` / ``resume`` (fsdp_trainer_worker.py, into OUT/trainer).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import fsdp_trainer_worker  # noqa: E402  (runs FSDP on CPU processes; see there)
import fsdp_ac_worker  # noqa: E402
import fsdp_worker  # noqa: E402
import torch  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from hf_rcka.distributed import close_process_group  # noqa: E402

WORKERS = {"fsdp": fsdp_worker, "plain": fsdp_ac_worker, "checkpointed": fsdp_ac_worker,
           "full": fsdp_trainer_worker, "resume": fsdp_trainer_worker}
FOLDERS = {fsdp_worker: "fsdp", fsdp_ac_worker: "ac", fsdp_trainer_worker: "trainer"}


def main(out: str, jobs: list[str]) -> None:
    for job in jobs:
        worker = WORKERS[job]
        folder = os.path.join(out, FOLDERS[worker])
        os.makedirs(folder, exist_ok=True)
        environ = dict(os.environ)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        if worker is fsdp_worker:
            worker.main(folder)
        else:
            worker.main(folder, job)
        os.environ.clear()
        os.environ.update(environ)
    close_process_group()  # not dist.destroy_process_group(): see its docstring


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything the tests read is on disk by now. Even with the group closed, interpreter teardown
    # aborted a finished worker once, on a loaded machine ("terminate called without an active
    # exception": a C++ thread of torch's destroyed while joinable), and the test failed on the exit
    # code of a run that had done everything right. The exit code here is the run's.
    os._exit(0)
