"""``accelerate launch scripts/distill.py RECIPE.yaml [--key value ...]``: the command line.

``main`` reads the recipe and its overrides, runs the job (``job.run``) or its smoke test
(``smoke.run_smoke_test``), and turns what ends it into an exit code: user errors print one
``error: ...`` line (exit 2), signals print where the checkpoint is and how to resume (128 + signal).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time
import traceback
from typing import Iterator, Sequence

from ..distributed import close_process_group
from ..errors import RecipeError, UserError, user_message
from ..version import code_version, library_versions
from ..trainer.interrupt import GracefulStop, Interrupted
from ..trainer.resume_hint import Stopped, entry_command, relaunch_command, secrets_note
from .help import USAGE, losses_help, recipe_help
from .recipe import build_arguments, read_recipe


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; user errors print ``error: ...`` and return 2, interruptions 128 + signal."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _pop_debug_flag(argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if "--version" in argv:  # what a bug report needs: this code and the libraries that compute the run
        print(", ".join(library_versions()))
        return 0
    asked = next((i for i, token in enumerate(argv) if token in ("-h", "--help")), None)
    if asked is not None:  # also after the recipe (RECIPE.yaml --help), as other command lines take it
        print(losses_help() if argv[asked + 1:asked + 2] == ["losses"] else recipe_help())
        return 0
    stop = GracefulStop()
    stop.install()
    code_version()  # the code as it starts: a checkout changed while the models load is not what trains them
    try:
        _run_recipe(argv, stop)
    except UserError as err:
        _close_progress_bars()
        if debug:
            _print_whole_traceback(err)
        notes = "".join(f" ({note})" for note in getattr(err, "__notes__", ()))  # what the run did before it
        if _launched_replica():
            if _process_zero_failed_too():
                return 2
            notes += f" (met by process {os.environ.get('RANK', os.environ.get('LOCAL_RANK'))} alone)"
        print(f"error: {user_message(err)}{notes}", file=sys.stderr, flush=True)
        return 2
    except Stopped as stopped:
        _close_progress_bars()
        if stopped.main_process:
            print(stopped.message(), file=sys.stderr, flush=True)
        return stopped.exit_code
    except Interrupted as interrupted:
        notes = "".join(f" ({note})" for note in getattr(interrupted, "__notes__", ()))
        if not _launched_replica():  # every process stops; each machine's first says so
            print(_interrupted_message(signal.Signals(interrupted.signum).name, stop, argv) + notes,
                  file=sys.stderr, flush=True)
        return 128 + interrupted.signum
    finally:
        stop.uninstall()
        with _ctrl_c_ignored():  # see _quiet_exit: its garbage collection runs finalizers
            close_process_group()
    return 0


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """SIGINT ignored for a moment (in the main thread; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _process_zero_failed_too() -> bool:
    """Whether the launcher stopped this replica within a moment of its error.

    The recipe, flags and data are every process's, so each machine's process 0 meets the same
    error, says it and fails first (the launcher's summary then names its failure as the root
    cause), and the launcher stops the other processes: their copies of the line would only repeat
    it, or, with the stop signal arriving while they wait, add a traceback. An error this process
    met alone (what only its shard of the data holds) is not said by anyone else, so when no stop
    comes it says it. The wait takes the stop signals itself: the run's own handler only marks a
    stop while training, and an error raised there would have left it so.
    """
    def stopped(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():  # signal handlers are the main thread's
        return False
    previous = {signum: signal.signal(signum, stopped) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        time.sleep(REPLICA_WAIT_S)
    except Interrupted:
        return True
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return False


# The launchers look at their processes every 0.1 s (torchrun's, accelerate's default), but process 0
# is seen failing only once its interpreter has exited, which took over 2 s on a busy 2-core machine.
REPLICA_WAIT_S = 10.0


def _launched_replica() -> bool:
    """Whether this is a launcher's process other than its machine's first (torchrun and accelerate
    set ``LOCAL_RANK`` and ``WORLD_SIZE``; a cluster's ``RANK`` alone, on a plain run, is not one)."""
    local = os.environ.get("LOCAL_RANK")
    return local not in (None, "", "0") and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def console_main() -> None:
    """The ``hf-rcka-distill`` command that ``pip install`` puts on the PATH (and ``python -m hf_rcka``,
    ``scripts/distill.py``): ``main`` in a process of its own."""
    _freeze_imported_objects()
    code = main()
    _quiet_exit()
    sys.exit(code)


def _quiet_exit() -> None:
    """Ignore Ctrl-C once ``main`` has returned: the run has said how it ended, and only the
    interpreter's exit is left (its finalizers and the garbage collection of a large heap: a second or
    more). ``main`` gives SIGINT back to Python's handler before it closes the process group, whose
    ``KeyboardInterrupt`` then landed in a finalizer (the group's closing collects garbage too; so
    does the exit) and printed "Exception ignored in: <finalize object ...> ... KeyboardInterrupt"
    under the run's last line. A launcher's Ctrl-C reaches every process: in a 2-process run the
    second one finishes first (it writes no card or results) and waits in its exit while the first
    finishes the run, and a Ctrl-C then printed that traceback, from one process or both. SIGTERM
    keeps its default (it ends the process without a word), so a stuck exit can still be stopped."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _freeze_imported_objects() -> None:
    """Leave what the imports made (torch's, transformers' and datasets' modules, classes and
    functions, which live as long as the process) out of the garbage collector's full passes
    (``gc.freeze``). Every full pass walked all of them: the one Trainer runs before the first step
    (accelerate's ``free_memory``) took 0.5 s, and the interpreter's passes at exit 3-6 s of the
    run's end, on a 2-core machine; frozen, 0.01 s and about 1 s. Only objects that exist now are
    frozen, so the run's own (models, data) are collected as before; not in ``main``, which a
    process may call many times (the tests): each call would keep the earlier runs' garbage."""
    gc.freeze()


def _interrupted_message(name: str, stop: GracefulStop, argv: list[str]) -> str:
    saved_model = stop.saved_model
    if stop.evaluating_alone:  # no training steps, no checkpoints: "no checkpoint was written" said nothing
        return f"interrupted by {name}: the evaluation-only run stopped before it recorded its results"
    if saved_model is None:
        return f"interrupted by {name} outside the training steps: no checkpoint was written by this signal"
    finish = stop.finish_settings
    if stop.evaluated:
        said = (f"interrupted by {name} while finishing: the trained model and its evaluation are saved in "
                f"{saved_model}; the model card or the Hub upload may be incomplete")
        if finish is None:
            return said
        return (f"{said}. Its checkpoint of the last step writes them again, training nothing, with"
                f"{secrets_note(argv)}:\n{relaunch_command(argv, finish)}")
    if finish is not None:  # resuming it finishes the run: an evaluation-only run writes no card, uploads nothing
        return (f"interrupted by {name} after training: the trained model is saved in {saved_model}, but its final "
                f"evaluation, model card and Hub upload did not complete. Its checkpoint of the last step runs "
                f"them, training nothing, with{secrets_note(argv)}:\n{relaunch_command(argv, finish)}")
    evaluate = relaunch_command(argv, {"do_train": "false", "model_name_or_path": saved_model,
                                       "student_from_scratch": "false", "output_dir": saved_model})
    return (f"interrupted by {name} after training: the trained model is saved in {saved_model}, but its final "
            f"evaluation, model card and Hub upload did not complete (an evaluation-only run writes no card and "
            f"uploads nothing). Evaluate it with{secrets_note(argv)}: {evaluate}")


def _run_recipe(argv: list[str], stop: GracefulStop) -> None:
    """``argv[0]`` is the recipe, the rest its ``--key value`` overrides."""
    if argv[0].startswith("--"):  # flags alone: there is no recipe-less mode to fall back on
        command = entry_command()
        raise RecipeError(f"the recipe file comes first, then its overrides: {command} RECIPE.yaml "
                          f"[--key value ...] (got {argv[0]!r} first). To evaluate a trained run folder OUT: "
                          f"{command} OUT/distill_config.yaml --do_train false --model_name_or_path OUT "
                          "--student_from_scratch false --output_dir OUT")
    recipe = read_recipe(argv[0], argv[1:])
    if recipe.get("smoke_test"):
        from .smoke import run_smoke_test

        run_smoke_test(recipe)
        return
    model_args, data_args, training_args = build_arguments(recipe)
    # Imported once the recipe is read: the job loads transformers.Trainer, datasets and timm, about
    # half of the command's start-up, which a recipe's mistake is said without.
    from .job import run

    run(model_args, data_args, training_args, recipe, stop=stop, argv=argv)


def _print_whole_traceback(err: BaseException) -> None:
    """``err``'s traceback with the exceptions it replaced: a user error raised ``from None`` keeps its
    one line short, and hid the failure under it (our own bug in a check, too) even with ``--debug``."""
    link: BaseException | None = err
    while link is not None:
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    traceback.print_exception(err)


def _pop_debug_flag(argv: list[str]) -> bool:
    """A bare ``--debug`` (anywhere) or ``HF_RCKA_DEBUG=1``: user errors show their traceback too.

    ``--debug VALUE`` is TrainingArguments' ``debug`` setting and stays in ``argv``.
    """
    flag, i = False, 0
    while i < len(argv):
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if argv[i] == "--debug" and following.lower() in ("true", "false"):  # the flag, spelled as --key value
            flag = following.lower() == "true"
            del argv[i:i + 2]
        elif argv[i] == "--debug" and not _is_debug_value(following):
            flag = True
            del argv[i]
        else:
            i += 1
    return flag or os.environ.get("HF_RCKA_DEBUG", "") not in ("", "0", "false")


def _is_debug_value(token: str) -> bool:
    """Whether ``token`` is a value of TrainingArguments' ``debug`` (space-separated DebugOption names)."""
    from transformers.debug_utils import DebugOption

    names = {option.value for option in DebugOption}
    return bool(token.split()) and all(word in names for word in token.split())


def _close_progress_bars() -> None:
    """Close progress bars an exception left open, so that our message stays the last line."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
