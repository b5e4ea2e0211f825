"""The message an interrupted run ends with: where its checkpoint is and the command to resume.

The command is the one that was run (same recipe, same overrides) plus
``--resume_from_checkpoint <checkpoint>``, printed alone on the last line so that it can be
copied, or run with ``tail -n 1``.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from typing import Sequence

from ..arguments import SECRET_KEYS
from ..distributed import launched_processes

SCRIPT = "scripts/distill.py"
CONSOLE_SCRIPT = "hf-rcka-distill"  # setup.cfg's console_scripts entry


class Stopped(Exception):
    """Training stopped on a signal. ``exit_code`` follows the shell's 128 + signal convention."""

    def __init__(self, signum: int, step: int, checkpoint: str | None, argv: Sequence[str], main_process: bool = True,
                 earlier: str | None = None):
        self.signum, self.step, self.checkpoint, self.main_process = signum, step, checkpoint, main_process
        self.argv, self.earlier = list(argv), earlier  # earlier: the last checkpoint saved before, when none now
        super().__init__(self.message())

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        if self.checkpoint is None and self.earlier is not None:
            return (f"interrupted by {name} at step {self.step}: no checkpoint of it was saved; the last one is "
                    f"{self.earlier}: resume with{secrets_note(self.argv)}:\n{resume_command(self.argv, self.earlier)}")
        if self.checkpoint is None:
            return f"interrupted by {name} at step {self.step}: no checkpoint was saved, nothing to resume"
        return (f"interrupted by {name}: saved {self.checkpoint} (step {self.step}); resume with"
                f"{secrets_note(self.argv)}:\n{resume_command(self.argv, self.checkpoint)}")


def resume_command(argv: Sequence[str], checkpoint: str) -> str:
    """``argv`` (recipe + overrides) relaunched the way this run was, resuming from ``checkpoint``."""
    return relaunch_command(argv, {"resume_from_checkpoint": checkpoint})


def relaunch_command(argv: Sequence[str], settings: dict[str, str]) -> str:
    """``argv`` (recipe + overrides) relaunched the way this run was, with ``settings`` replacing
    the flags of the same keys (a flag given twice is an error)."""
    kept, skip = [], False
    for token in argv:
        if skip and not token.startswith("--"):  # the value of a dropped flag (a bare flag has none)
            skip = False
            continue
        key = _flag_key(token)
        dropped = key in settings or key in SECRET_KEYS  # a token printed to a log is a token published
        skip = dropped and "=" not in token
        if dropped:  # (main took a bare --debug out of argv; --debug VALUE is a setting and stays)
            continue
        kept.append(token)
    replaced = [part for key, value in settings.items() for part in (f"--{key}", value)]
    return shlex.join([*_command(), *kept, *replaced])


def launch_command(recipe: str, *flags: str) -> str:
    """``recipe`` run the way this run was launched (processes, launcher), with ``flags``.

    For the recorded recipe, which is uploaded with the model: the script as the run named it when
    that was a relative path, else the repository's (an absolute path names someone's folders).
    """
    return shlex.join([*_command(public=True), recipe, *flags])


def entry_command() -> str:
    """The launcher and entry point this run was started with, for hints that show a command."""
    return shlex.join(_command(public=True))


def _command(public: bool = False) -> list[str]:
    """The launcher and the entry point this run was started with.

    ``pip install`` users have no ``scripts/distill.py``: a run started as ``hf-rcka-distill`` or
    ``python -m hf_rcka`` is relaunched that way (a launcher takes the module, ``-m hf_rcka``).
    ``public``: a script's absolute path (someone's folders) is printed as the repository's script,
    or as its own name when it is an entry script of the user's (``my_distill.py``, which may
    register losses the repository's script does not know).
    """
    launcher = _launcher(public)
    entry = os.path.basename(sys.argv[0]) if sys.argv else ""
    if entry == CONSOLE_SCRIPT and launcher == ["python"]:
        return [CONSOLE_SCRIPT]
    return [*launcher, *_entry(public)]


def one_process_per_gpu_command(processes: int) -> str:
    """This run's entry point under ``accelerate launch`` with one process per GPU, for the hint of a
    process that sees several GPUs (a console script is launched as its module, ``-m hf_rcka``)."""
    return shlex.join(["accelerate", "launch", "--multi_gpu", "--num_processes", str(processes), *_entry(True)])


def _entry(public: bool) -> list[str]:
    """The entry point this run was started with, after its launcher (see ``_command``)."""
    entry = os.path.basename(sys.argv[0]) if sys.argv else ""
    if entry == CONSOLE_SCRIPT or (sys.argv and _is_package_main(sys.argv[0])):
        return ["-m", "hf_rcka"]
    # a script of the user's (another package's __main__.py, or pytest's, is not an entry of hf_rcka)
    script = sys.argv[0] if entry.endswith(".py") and entry != "__main__.py" else SCRIPT
    if public and os.path.isabs(script):
        script = SCRIPT if entry == os.path.basename(SCRIPT) else entry
    return [script]


def _is_package_main(path: str) -> bool:
    """Whether ``path`` is this package's ``__main__.py`` (``python -m hf_rcka``)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.abspath(path) == os.path.join(package, "__main__.py")


def secrets_note(argv: Sequence[str]) -> str:
    """What a relaunch command left out: a secret flag's value is never printed."""
    left_out = sorted({key for key in map(_flag_key, argv) if key in SECRET_KEYS})
    return f" ({', '.join('--' + key for key in left_out)} left out: give it again, or set HF_TOKEN)" if left_out else ""


def _flag_key(token: str) -> str | None:
    return token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else None


def _launcher(public: bool = False) -> list[str]:
    """How this process was started, as far as the environment tells.

    ``accelerate launch`` leaves its settings in ``ACCELERATE_*`` variables (its config file itself
    is not recorded: an FSDP run's is named as a placeholder), torchrun in ``LOCAL_WORLD_SIZE``.
    Reprinted as ``accelerate launch --num_processes N`` alone, a 2-process CPU run resumed as one
    process at half the global batch (a resume at another global batch is now refused too).

    A run over several machines (``WORLD_SIZE`` over ``LOCAL_WORLD_SIZE``) is relaunched on each of
    them, with its own rank and machine 0's address: ``torchrun --nnodes 2`` alone made every
    machine node 0 of a rendezvous at its own 127.0.0.1, which waited for the others until it timed
    out. ``public``: the address, a cluster's own, is a placeholder (the recorded recipe is uploaded).
    """
    env = os.environ
    world, per_node = launched_processes()
    nodes = world // max(1, per_node)
    address = "<address of machine 0>" if public else env.get("MASTER_ADDR", "<address of machine 0>")
    port = "<a free port of machine 0>" if public else env.get("MASTER_PORT", "<a free port of machine 0>")
    rank = f"<rank of this machine, 0 to {nodes - 1}>"
    # every accelerate launch sets it, one process or many; others (ACCELERATE_LOG_LEVEL, even
    # ACCELERATE_MIXED_PRECISION) may be the user's own shell's, under a plain run
    if "ACCELERATE_DYNAMO_BACKEND" in env:
        command = ["accelerate", "launch", "--num_processes", str(world)]
        if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
            return [*command, "--config_file", "<the FSDP config file it was launched with>"]
        if world > 1:  # through torchrun, as recipes/accelerate's configs do (with --use_cpu true on a CPU)
            command.append("--multi_gpu")
            if nodes > 1:
                command += ["--num_machines", str(nodes), "--machine_rank", rank, "--main_process_ip", address,
                            "--main_process_port", port]
        elif env.get("ACCELERATE_USE_CPU", "").lower() == "true":
            command.append("--cpu")
        precision = env.get("ACCELERATE_MIXED_PRECISION", "no")
        return command + (["--mixed_precision", precision] if precision not in ("", "no") else [])
    if world > 1:  # torchrun
        machines = ["--nnodes", str(nodes), "--node_rank", rank, "--master_addr", address, "--master_port", port]
        return ["torchrun", "--nproc_per_node", str(per_node)] + (machines if nodes > 1 else [])
    return ["python"]
