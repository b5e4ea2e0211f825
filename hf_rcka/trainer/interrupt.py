"""SIGTERM and SIGINT end training cleanly: checkpoint after the current step, then a resume hint.

Cluster pre-emption, ``docker stop`` and SLURM time limits send SIGTERM, which by default kills
the process and loses everything since the last scheduled checkpoint; Ctrl-C sends SIGINT, whose
``KeyboardInterrupt`` can land anywhere (mid optimizer step) and buries the hint under a
traceback. ``GracefulStop`` only sets a flag in the signal handler; at the end of the current
step the callback asks the Trainer to save a checkpoint and stop (``control.should_save`` and
``should_training_stop``), so the save is the Trainer's own, on every rank together as DDP and
FSDP need (the flag is combined across ranks, so ranks that did not get the signal stop at the
same step). A second signal while the first is handled raises ``KeyboardInterrupt`` at once;
``save_checkpoint_now`` then writes what the last finished step left, unless the signal came in
the middle of a step (then no checkpoint is written: from the step's first forward its BatchNorm
statistics, a loss's class centres and the random state move, then its weights, so the state
would match no step), or after the best checkpoint was loaded at the end (the weights are that
checkpoint's, not the last step's). A checkpoint the loop wrote whole is never written again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from transformers import TrainerCallback

from ..distributed import any_rank, host_group, world_size
from .checkpoint_folders import checkpoint_folder, last_checkpoint, written_whole
from .resume_hint import Stopped

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _MainProcessSignals:
    """A loader worker's ``worker_init_fn`` that leaves SIGTERM and SIGINT to the main process.

    A signal sent to the whole process group (GNU ``timeout``, ``kill -TERM -<pgid>``, a cluster's
    pre-emption) reaches the workers too: torch's handler ended a worker on a SIGTERM its parent had
    not sent, and the main process then raised "DataLoader worker ... is killed by signal" at the
    next batch, before the checkpoint of the stop; forked workers ran the main process's handler
    on SIGINT (the stop said three times, tracebacks during an evaluation). A worker now ignores
    SIGINT, and ends on a SIGTERM only when its parent sent it (as torch does when it shuts workers
    down): SIGTERM is blocked and a thread waits for it (``sigwaitinfo`` names the sender; without
    it, off Linux, SIGTERM stays torch's). Ignoring SIGTERM outright hung the run at its exit, whose
    clean-up ends workers with it, and so did taking the parent for the main process under
    ``forkserver`` (Python 3.14's default on Linux), whose workers a fork server starts.
    """

    def __init__(self, init: Any) -> None:
        self.init = init
        self.main = os.getpid()  # the loader's process: under forkserver, not the workers' parent

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if hasattr(signal, "sigwaitinfo"):
            senders = {os.getppid(), self.main}
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            threading.Thread(target=_end_on_sigterm_from, args=(senders,), daemon=True).start()
        if self.init is not None:
            self.init(worker_id)


def _end_on_sigterm_from(senders: set[int]) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid not in senders:
        pass
    os._exit(0)


def leave_signals_to_main_process(loader: Any) -> Any:
    """``loader`` with worker processes that leave stop signals to the main process (see
    ``_MainProcessSignals``); set on accelerate's base loader, which is the one that starts them."""
    base = getattr(loader, "base_dataloader", loader)
    if getattr(base, "num_workers", 0) and not isinstance(base.worker_init_fn, _MainProcessSignals):
        base.worker_init_fn = _MainProcessSignals(base.worker_init_fn)
    return loader


class Interrupted(BaseException):
    """A signal arrived outside training: nothing could be saved. ``signum`` is the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class GracefulStop(TrainerCallback):
    """Install with ``install()`` before loading; ``signum`` is set once a signal stopped training.

    Outside training a signal raises ``Interrupted`` immediately (there is nothing to save);
    during training the first signal stops after the current step with a checkpoint.
    """

    # The trainer runs it after its other callbacks, so that its on_step_end, which closes the
    # step's window, comes after theirs (the weight EMA updates in its own on_step_end).
    runs_last = True

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_at: int | None = None
        self.saved_model: str | None = None  # the trained model's folder, once saved (a later signal loses less)
        self.evaluated = False  # its final evaluation is recorded too
        self.evaluating_alone = False  # an evaluation-only run (do_train false): it has no steps to checkpoint
        # the flags whose resume finishes the run a signal cut short after its save: its checkpoint of the
        # last step (which trains nothing), or None without one (save_strategy no)
        self.finish_settings: dict[str, str] | None = None
        self.updating = False  # between a step's first forward and its end: the state matches no step
        self._training = False
        self._finishing = False
        self._says = True  # the process that logs; every process gets the signal, one says it
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (only possible from the main thread; elsewhere a no-op)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            logger.warning("not in the main thread: SIGTERM/SIGINT keep their default behaviour")
            return
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @contextlib.contextmanager
    def finishing(self) -> Iterator[None]:
        """While the trained model is saved: a first signal waits for the save to end (the caller
        then stops), where it cut the export short after ``config.json`` and, without checkpoints,
        lost the whole training; a second one stops at once."""
        self._finishing = True
        try:
            yield
        finally:
            self._finishing = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self._finishing and self.signum is None:
            self.signum = signum
            if self._says:
                logger.warning("%s received: stopping once the trained model is saved (send it again to stop at "
                               "once)", signal.Signals(signum).name)
            return
        if not self._training:
            raise Interrupted(signum)
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum = signum
        if self._says:  # on a line of its own, not after the progress bar's
            logger.warning("\n%s received: saving a checkpoint after the current step, then stopping "
                           "(send it again to stop at once)", signal.Signals(signum).name)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        self._training = True
        self._says = bool(getattr(args, "should_log", True))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        # Trainer still waits for its checkpoint uploads to the Hub after this (minutes, with
        # hub_strategy every_save), and the trained model is saved after that: a signal in between
        # was raised at once, outside the training steps, and the model was lost with save_strategy no
        self._training = False
        self._finishing = True  # until ``finishing`` ends, after the save

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        # from the step's first forward to its end the buffers (BatchNorm statistics, EKT's class
        # centres, SRD's norms) and the random state (Mixup, dropout) move, then the optimizer
        # updates the weights group by group, the schedule and the step count: a checkpoint written
        # in between would hold the state of no step
        self.updating = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        self.updating = False
        if any_rank(self.signum is not None, group=host_group() if world_size() > 1 else None):
            self.signum = self.signum or signal.SIGTERM  # a rank that got no signal stops for the others
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            if state.global_step < state.max_steps:
                # The run is cut short, not finished (a stop in its last step ends it as planned,
                # with the best checkpoint loaded and exported): Trainer's end of training would load
                # the best checkpoint and, with save_total_limit 1, delete every other one, the stop's
                # checkpoint among them; with save_strategy best it saves at an evaluation only a new
                # best, and the stop's save is written by the command line after training (see
                # ``job``). Set here, before Trainer's save decision. A checkpoint's own
                # training_args.bin keeps the settings for the resumed run; these are the trainer's copy.
                args.load_best_model_at_end = False
                args.save_total_limit = None


def stopped_by_signal(trainer: Trainer, stop: GracefulStop | None, argv: Sequence[str] = ()) -> Stopped | None:
    """What training that a ``KeyboardInterrupt`` ended leaves: a checkpoint of the last finished
    step, and the ``Stopped`` to raise (it says how to resume), or None without a ``GracefulStop``
    (the caller then lets the ``KeyboardInterrupt`` go on).

    The interrupt is a second signal, or Ctrl-C with no ``GracefulStop`` installed (the smoke
    test's runs, whose folders are thrown away). No checkpoint is written when it came in the
    middle of a step, as the ``GracefulStop`` tells (part of the next step's state has moved, so it
    would match no step).

    Args:
        argv: the command line's recipe and overrides, for the resume command.
    """
    if stop is not None and stop.updating:
        logger.warning("the signal came during step %d: no checkpoint is written, its state would match no step",
                       trainer.state.global_step + 1)
        checkpoint = None
    else:
        checkpoint = save_checkpoint_now(trainer)
    if stop is None:  # else the Stopped raised says it, with the command that resumes it, once
        if checkpoint is not None:
            logger.warning(
                "interrupted: saved checkpoint-%d in %s; continue with --resume_from_checkpoint true",
                trainer.state.global_step, trainer.args.output_dir,
            )
        return None
    return Stopped(stop.signum or signal.SIGINT, trainer.state.global_step, checkpoint, argv,
                   trainer.is_world_process_zero(), last_checkpoint(trainer.args.output_dir))


def save_checkpoint_now(trainer: Trainer) -> str | None:
    """Write the checkpoint of the last finished step, as a save step would; None before the first
    step, or once the best checkpoint was loaded at the end of training.

    For training that an exception ended (a second signal, Ctrl-C without ``GracefulStop``): the
    training loop is gone, so ``control.should_save`` can no longer ask the Trainer for the save.

    Returns:
        The checkpoint folder, ``<output_dir>/checkpoint-<global_step>``.
    """
    if trainer.state.global_step == 0:
        return None
    folder = checkpoint_folder(trainer)
    if written_whole(folder):  # the loop wrote this step's checkpoint
        return folder
    if getattr(trainer, "best_model_loaded", False):  # the weights are the best checkpoint's, not this step's
        logger.warning("the best checkpoint was loaded at the end of training: no checkpoint of step %d is written",
                       trainer.state.global_step)
        return None
    # Private on purpose: Trainer has no public method that writes a *resumable* checkpoint (weights,
    # optimizer, scheduler, RNG and trainer state) outside its loop; ``save_model`` + ``save_state``
    # would lose the optimizer and scheduler. ``_save_checkpoint(model, trial)`` is what the loop
    # calls at a save step; tests/test_interrupt.py pins its signature and the folder it writes.
    trainer._save_checkpoint(trainer.model, trial=None)
    return checkpoint_folder(trainer)
