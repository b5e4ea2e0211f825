"""The run's output folder: writable, apart from what the run reads, refused when it holds another
run, and that run set aside when replaced.

transformers' Trainer writes into ``output_dir`` and deletes nothing. A training run that replaced
another one there (``overwrite_output_dir: true``) therefore lived among the old run's files:
its higher-numbered checkpoints, which ``resume_from_checkpoint: true`` then resumed (the old
run's weights, optimizer and schedule); its results, into which ``save_metrics`` merges (an
EMA's numbers in a run without one, another model's evaluation in a run with ``do_eval:
false``); its CKA picture in the new card; its loss state in checkpoint folders written again.
Deleting them first would lose a user's work if the new run then failed, so a fresh training run
moves the previous run's files (``RUN_OUTPUTS``; anything else is the user's and stays) into
``_replaced/`` inside the folder: out of the new run's way, still on disk, and left out of a Hub
upload (which skips names that start with ``_``). One level is kept: the run set aside there
before is deleted when a newer one takes its place and the run that set it aside starts training
(a run refused or stopped before its first step puts both back: ``put_back``), except that an unfinished run never pushes out
a finished one: it goes to ``_replaced/_unfinished/``, and a failed attempt's leftovers push out
neither (``_settle``). A run is finished when it holds its model and
the training state saved after it (an export cut short by a full disk or a signal, or the model a
Hub push copied in from a checkpoint, is not). The files move into ``_replacing/`` first, which
becomes ``_replaced/`` once they are all there: a set-aside cut short leaves them there, the folder
counts as holding a run until the next set-aside completes it.

Resuming is continuing the run in the folder, so nothing is set aside, with two exceptions that
are new runs in all but name: a checkpoint from another folder (its run replaces the one here),
and an earlier checkpoint of this folder while later ones exist (the later ones are a branch the
resumed run abandons; left in place, ``resume_from_checkpoint: true`` would pick them up again).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

try:
    import fcntl
except ImportError:  # Windows: runs started in one folder at once are not kept apart
    fcntl = None

from ..arguments import DistillationTrainingArguments
from ..data.bad_images import LEDGER_NAME
from ..errors import OutputWriteError, RecipeError, UserError
from ..file_writes import TEMPORARY_PREFIX, missing_folders, remove_empty
from ..trainer.checkpoint_folders import checkpoint_step, written_whole
from ..run_record import RECIPE_RECORD, WORKING_DIR_NAME
from ..trainer.teacher_record import TEACHER_RECORD_NAME

logger = logging.getLogger(__name__)

MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CARD_NAME = "README.md"
# Written once the final model is saved (job._train; a resumed run drops its earlier ones first)
SAVED_AFTER_MODEL = ("trainer_state.json", "train_results.json")
# The final results, written after the model: save_metrics merges into all_results.json, so earlier
# ones would stay beside the newer model as if they were its own
RESULTS = ("eval_results.json", "all_results.json")
EARLIER_CARD = "_README.earlier.md"  # a resumed run's card before it (see drop_stale_export)
EARLIER_CARDS = "_README.earlier*.md"  # and the ones before that: _README.earlier-2.md, ...
CKA_PICTURE = ("cka.png", "cka.md")  # scripts/cka_report.py's, of one model
REPLACED = "_replaced"
REPLACING = "_replacing"  # where a set-aside gathers the files before it becomes REPLACED
UNFINISHED = "_unfinished"  # inside REPLACED: a run set aside before it saved a model
LEFTOVERS = "_leftovers"  # inside REPLACED: an attempt both places above outrank (_leftovers-2, ...)
PUSHED_OUT = "_pushed_out"  # the run a set-aside pushed out of REPLACED, deleted once the new run trains
# What runs leave in their output_dir: Trainer's model, state and results files, its TensorBoard
# logs, checkpoints, hf_rcka's records and card, and scripts/cka_report.py's picture.
RUN_OUTPUTS = (
    "checkpoint-*", "_eval-*", "eval-*", "runs", "model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "config.json", "preprocessor_config.json", "training_args.bin", "trainer_state.json", "all_results.json",
    "train_results.json", "eval_results.json", "README.md", EARLIER_CARDS, RECIPE_RECORD, WORKING_DIR_NAME,
    LEDGER_NAME, "skipped_images.tsv", *CKA_PICTURE,  # skipped_images.tsv: the ledger's older name
    "emissions.csv",  # report_to: codecarbon
    TEACHER_RECORD_NAME,  # the export's teacher record
    TEMPORARY_PREFIX + "*",  # a card or record whose write a SIGKILL cut short
)
# What a resumed run keeps from the branch it abandons: its recipe, the folder it ran in, its logs
# and image ledger (the resumed run writes them on), and evaluation-only records.
_BRANCH_KEEPS = (RECIPE_RECORD, WORKING_DIR_NAME, LEDGER_NAME, "runs", "_eval-*", "eval-*")


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else its nearest existing ancestor: where a folder not created yet will
    be made, so what decides whether it can be written, and on which disk."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def writable_folder(path: str | os.PathLike) -> bool:
    """Whether ``path``, or the folder it would be created in, takes new files (nothing is created)."""
    probe = nearest_existing(path)
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def check_output_dir_writable(output_dir: str) -> None:
    """The nearest existing ancestor of ``output_dir`` must be a writable folder (nothing is created)."""
    probe = nearest_existing(output_dir)
    if not probe.is_dir():
        raise RecipeError(f"output_dir {output_dir!r} cannot be created: {str(probe)!r} is a file. Choose another output_dir")
    if not writable_folder(probe):
        raise RecipeError(f"output_dir {output_dir!r} is not writable (no write permission in {str(probe)!r}). "
                          "Choose another output_dir")


def check_output_dir_spares_inputs(output_dir: str, inputs: dict[str, str | None]) -> None:
    """``output_dir`` must not be, or contain, a local folder the run reads.

    The run writes its model, card and recipe there; with ``overwrite_output_dir: true`` (which
    the digits recipes set) a teacher given as ``--output_dir`` too would be replaced by the
    student, and the run would still end well.
    """
    out = Path(output_dir).expanduser().resolve()
    for key, value, source in _local_folders(inputs):
        if source == out or out in source.parents:
            raise RecipeError(f"output_dir {output_dir!r} would overwrite {key} {value!r}, which this run reads: "
                              "choose another output_dir")


def check_output_dir_outside_data(output_dir: str, data: dict[str, str | None]) -> None:
    """``output_dir`` must not be, or sit inside, a local data folder: its checkpoint folders and
    files would land among the images (an image folder's next run reads them as classes)."""
    out = Path(output_dir).expanduser().resolve()
    for key, value, folder in _local_folders(data):
        if folder == out or folder in out.parents:
            raise RecipeError(f"output_dir {output_dir!r} is inside {key} {value!r}: the run's model, checkpoints and "
                              "card would be written among the data. Choose an output_dir outside it")


def _local_folders(settings: dict[str, str | None]) -> Iterator[tuple[str, str, Path]]:
    """Each setting that names an existing local folder: its key, value and resolved path."""
    for key, value in settings.items():
        if value and os.path.isdir(os.path.expanduser(value)):
            yield key, value, Path(value).expanduser().resolve()


@contextlib.contextmanager
def training_alone_in(output_dir: str, evaluating: bool = False) -> Iterator[str | None]:
    """Hold ``output_dir`` for one training run; yields None, or why another run holds it or it
    cannot be made (every rank must refuse, so the caller shares this and raises).

    Two runs in one folder both exited 0, one's model and card beside the other's recorded
    recipe, and the other's model lost. An evaluation-only run (``evaluating``) shares the folder
    with other evaluations but not with a training run: a training run that set the evaluated
    model aside meanwhile got the evaluation's record, of the model it replaced, in its own
    folder. The lock is ``flock`` on the folder itself (no file is
    left behind; it goes when the process ends, however it ends; DataLoader workers forked
    meanwhile close their copy). Folders made here for the lock are removed again if the run
    leaves them empty. Where the file system has no locks (some network file systems), runs are
    not kept apart.
    """
    if fcntl is None:
        yield None
        return
    made: list[Path] = []
    try:
        check_output_dir_writable(output_dir)
        made = missing_folders(output_dir)
        os.makedirs(output_dir, exist_ok=True)
    except (OSError, RecipeError) as err:  # a name too long, a file system that takes no folders (/proc)
        remove_empty(made)  # the folders made before the one refused
        yield str(err) if isinstance(err, RecipeError) else (
            f"output_dir {output_dir!r} cannot be created ({err.strerror or err}). Choose another output_dir")
        return
    refusal = None
    try:
        with contextlib.ExitStack() as held:
            if not _lock(output_dir, shared=evaluating, held=held):
                made = []  # the folder is the holder's now: removing it (empty yet) left the holder's lock on no folder
                other = "a training run" if evaluating else (
                    "another run (training there, evaluating its model, or loading it as a teacher or starting model)")
                holder = lock_holder(output_dir)
                refusal = (f"output_dir {output_dir!r} is in use by {other}{f' (pid {holder})' if holder else ''}: it "
                           "holds the folder's lock. Wait for it to end, or choose another output_dir")
            yield refusal
    finally:
        remove_empty(made)


_HELD: set[int] = set()  # the descriptors of held folder locks


@contextlib.contextmanager
def reading_models(folders: dict[str, str | None], output_dir: str | None = None) -> Iterator[str | None]:
    """Share the locks of the local folders whose models a run loads (the teacher, the starting
    model, the reference of a CKA report) while it loads them; yields None, or why a training run
    holds one (every rank must refuse, so the caller shares this and raises).

    A training run into the teacher's folder set the teacher aside while a student loaded it (the
    student failed on a config.json moved away), and a student loaded a folder whose run was
    replacing its model with checkpoints: the training run waits now, or this one is refused. A
    ``checkpoint-<n>`` folder is not held: its run writes it once (taking a checkpoint of a run
    that goes on is a branch of it); nor is ``output_dir``, which this run holds already.
    """
    if fcntl is None:
        yield None
        return
    own = Path(output_dir).resolve() if output_dir else None
    with contextlib.ExitStack() as held:
        for key, value, run_folder in _local_folders(folders):
            if checkpoint_step(run_folder.name) is not None or run_folder == own:
                continue
            if not _lock(run_folder, shared=True, held=held):
                holder = lock_holder(str(run_folder))
                yield (f"{key} {value!r} is in use by a training run{f' (pid {holder})' if holder else ''} that "
                       "replaces the model there. Wait for that run to end, or load another model")
                return
        yield None


def _lock(folder: str | Path, shared: bool, held: contextlib.ExitStack) -> bool:
    """Take ``folder``'s lock (``flock`` on the folder itself) without waiting, until ``held`` closes;
    False when another process holds it (exclusively, or at all for an exclusive lock). A folder
    that cannot be opened or locked (some network file systems) gives True with no lock: runs there
    are not kept apart."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return True
    held.callback(_release, descriptor)
    try:
        fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        logger.debug("no lock on %s (%s): runs there are not kept apart", folder, err)
        return True
    _HELD.add(descriptor)  # a DataLoader worker forked meanwhile closes its copy (_close_held_in_child)
    return True


def _release(descriptor: int) -> None:
    _HELD.discard(descriptor)
    os.close(descriptor)


def lock_holder(folder: str) -> int | None:
    """The process that holds ``folder``'s lock, as Linux lists it in /proc/locks; None elsewhere.

    A lock file could say it too, but would outlive a killed run; the kernel's list does not."""
    try:
        stat = os.stat(folder)
        with open("/proc/locks", encoding="ascii") as listed:
            lines = listed.read().splitlines()
    except OSError:
        return None
    key = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for fields in (line.split() for line in lines):  # "1: FLOCK ADVISORY WRITE <pid> <dev>:<inode> 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key and fields[4].isdigit():
            return int(fields[4])
    return None


def _close_held_in_child() -> None:
    """A forked child (a DataLoader worker) shares the lock: closing its copy leaves it to the run alone."""
    for descriptor in _HELD:
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def check_output_dir(args: DistillationTrainingArguments, resume: str | None) -> None:
    """Refuse to overwrite a finished model or checkpoints unless asked to, and someone else's files
    always (``overwrite_output_dir`` replaces a run: it sets aside only what runs write)."""
    if not args.do_train:
        return
    others = _files_of_others(Path(args.output_dir), holds_run(args.output_dir))
    if others:
        raise RecipeError(
            f"output_dir {args.output_dir!r} holds {', '.join(others)}, which no run of hf_rcka wrote (a card of its "
            "keeps its front matter with the hf_rcka tag) and this run would overwrite with its model card and "
            "processor: choose an empty output_dir, or move them"
        )
    if args.overwrite_output_dir:
        _check_set_aside_folders(Path(args.output_dir))
        return
    if resume is None and holds_run(args.output_dir):
        if _cut_short_only(Path(args.output_dir)):  # resume_from_checkpoint: true refuses them: said so, not looped
            raise RecipeError(
                f"output_dir {args.output_dir!r} holds only checkpoints whose save was cut short (no "
                "trainer_state.json, which a save writes last): nothing to resume. Pass --overwrite_output_dir true "
                "to set them aside and start again, or choose another output_dir")
        if not any(path.is_dir() for path in Path(args.output_dir).glob("checkpoint-*")):  # save_strategy no
            raise RecipeError(
                f"output_dir {args.output_dir!r} already holds a model or checkpoints, but no checkpoint-* folder to "
                "resume (a run with save_strategy 'no' saves none): pass --overwrite_output_dir true to replace it "
                "(it is kept in _replaced/), or choose another output_dir")
        raise RecipeError(
            f"output_dir {args.output_dir!r} already holds a model or checkpoints: pass --resume_from_checkpoint true "
            f"to continue, --overwrite_output_dir true to replace it, or choose another output_dir"
        )
    if resume is not None and not resumes_in(args.output_dir, resume) and holds_run(args.output_dir):
        raise RecipeError(
            f"output_dir {args.output_dir!r} holds another run's model or checkpoints, and resume_from_checkpoint "
            f"{resume!r} is a checkpoint of another folder: its run would overwrite them. Pass --overwrite_output_dir "
            "true to set them aside, or resume into a new output_dir"
        )
    later = later_checkpoints(args.output_dir, resume) if resume is not None else []
    # one whose save was cut short (no trainer_state.json, written last) holds nothing to resume: it
    # is set aside with the abandoned branch without asking (resume_from_checkpoint: true skips it)
    later = [name for name in later if written_whole(Path(args.output_dir) / name)]
    if later:
        raise RecipeError(
            f"output_dir {args.output_dir!r} holds {', '.join(later)}, later than the {os.path.basename(resume)} this "
            "run resumes from: they would be left among its checkpoints (resume_from_checkpoint: true picks the last). "
            "Pass --overwrite_output_dir true to set them aside, or resume into a new output_dir"
        )
    finished = finished_after(args.output_dir, resume) if resume is not None else None
    if finished is not None:  # save_total_limit 1 with load_best_model_at_end keeps the best checkpoint alone
        raise RecipeError(
            f"output_dir {args.output_dir!r} holds the finished run's model of step {finished}, later than the "
            f"{os.path.basename(resume)} this run resumes from: it would train those steps again and replace it. "
            "Pass --overwrite_output_dir true to set it aside, or resume into a new output_dir"
        )


def _cut_short_only(out: Path) -> bool:
    """Whether ``out`` holds checkpoints, none written whole, and no model (a run killed during its
    first checkpoint's save)."""
    checkpoints = [path for path in out.glob("checkpoint-*") if path.is_dir()]
    model = any((out / name).exists() for name in MODEL_FILES) or _run_config(out)
    return (bool(checkpoints) and not any(written_whole(path) for path in checkpoints) and not model
            and not set_aside_pending(out))


def _check_set_aside_folders(out: Path) -> None:
    """The folders a set-aside moves the earlier run into must be folders of ``output_dir`` itself:
    a symbolic link would be replaced (or refused by ``rmtree``) after the models have loaded."""
    for folder in (out / REPLACING, out / REPLACED, out / REPLACED / UNFINISHED, out / REPLACED / LEFTOVERS,
                   out / PUSHED_OUT):
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            kind = "a symbolic link" if folder.is_symlink() else "not a folder"
            raise RecipeError(f"{folder} is {kind}: with overwrite_output_dir the earlier run is set aside there, "
                              "and it must be a folder of output_dir itself. Move it away, or choose another output_dir")


# Files a run writes at its end whatever the folder holds; in a folder without a run (no model, no
# model's config.json: see holds_run), a user's own.
_OVERWRITTEN = ("README.md", "preprocessor_config.json", "config.json")


def _files_of_others(out: Path, run_here: bool) -> list[str]:
    """The files of ``_OVERWRITTEN`` in ``out`` (or links, which a write would follow out of it) that
    no run of hf_rcka wrote: a README.md that is not an hf_rcka model card (a card from an earlier
    run is left there when its model was moved), and, where no run is, a processor config or a
    config.json that is not a model's (a model's config.json alone is a run whose export was cut
    short). Beside a run's model its README.md still has to be a card: a project's own README
    would otherwise go with the run being replaced, and be deleted by the replacement after it."""
    names = ("README.md",) if run_here else _OVERWRITTEN
    found = [out / name for name in names if (out / name).exists() or (out / name).is_symlink()]
    return [p.name for p in found if p.is_symlink() or not (p.name == "README.md" and _is_our_card(p))]


def drop_stale_export(output_dir: str) -> None:
    """Take an earlier run's card (hf_rcka's only), CKA picture, results and final training state
    out of ``output_dir`` before the model is saved.

    A resumed run writes them anew once its model is saved; until then the earlier card would
    describe the new weights, and a run whose export failed (a full disk) would look finished, so
    that setting it aside would push the finished run kept in ``_replaced/`` out. The earlier CKA
    picture is the earlier model's: the new card showed it as the new one's. The earlier results
    (``RESULTS``) stayed beside the newer model: a resumed run with ``do_eval: false`` kept the
    earlier model's ``eval_*`` numbers, one resumed at its last step the earlier leg's
    ``train_loss``. The earlier card is kept as ``EARLIER_CARD`` (never uploaded), since a user
    may have written in it; one kept there by an earlier resumed run moves to the next free
    ``_README.earlier-<n>.md`` (the second extension of a run overwrote the first one's copy).
    """
    out = Path(output_dir)
    card = out / CARD_NAME
    if card.is_file() and not card.is_symlink() and _is_our_card(card):
        kept = out / EARLIER_CARD
        if kept.is_file() and kept.read_bytes() != card.read_bytes():
            kept.replace(_free_name(out, "_README.earlier", ".md"))
        card.replace(kept)
        logger.info("output_dir: the earlier model card is kept as %s (this run writes its own)", kept)
    for name in (*SAVED_AFTER_MODEL, *RESULTS, *CKA_PICTURE):
        if (out / name).is_file():
            (out / name).unlink()


def _is_our_card(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8-sig", errors="replace")[:2000]  # an editor's byte-order mark too
    except OSError:
        return False
    return head.startswith("---") and "hf_rcka" in head


def resumes_in(output_dir: str, resume: str) -> bool:
    """Whether the checkpoint ``resume`` is one of ``output_dir``'s own."""
    return Path(resume).resolve().parent == Path(output_dir).resolve()


def later_checkpoints(output_dir: str, resume: str) -> list[str]:
    """``output_dir``'s checkpoints after ``resume``, when ``resume`` is one of them (by step)."""
    step = checkpoint_step(Path(resume).name)
    if not resumes_in(output_dir, resume) or step is None:
        return []
    later = [(s, p.name) for p in Path(output_dir).glob("checkpoint-*")
             if (s := checkpoint_step(p.name)) is not None and s > step]
    return [name for _, name in sorted(later)]


def finished_after(output_dir: str, resume: str) -> int | None:
    """The step of ``output_dir``'s finished run, when ``resume`` is an earlier checkpoint of it."""
    out, step = Path(output_dir), checkpoint_step(Path(resume).name)
    if not resumes_in(output_dir, resume) or step is None or not _finished(out):
        return None
    try:
        finished = int(json.loads((out / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return finished if finished > step else None


def set_aside_abandoned_branch(output_dir: str, resume: str) -> str | None:
    """With ``overwrite_output_dir``, resuming an earlier checkpoint sets aside what came after it.

    The later checkpoints and the results and model of the run that made them are moved into
    ``_replaced/`` (as a replaced run is); the resumed checkpoint and those before it stay.
    """
    later = later_checkpoints(output_dir, resume)
    finished = finished_after(output_dir, resume) is not None
    if not later and not finished:
        return None
    step = checkpoint_step(Path(resume).name)
    out = Path(output_dir)
    entries = [out / name for name in later]
    # Later checkpoints that saves cut short alone (a full disk, a kill) are no branch: the model and
    # results here are the resumed leg's, which the resumed run replaces as it saves its own; moved,
    # they made a finished run that pushed the one kept in _replaced/ out
    if finished or any(written_whole(path) for path in entries):
        entries += [e for e in out.iterdir() if not e.name.startswith("checkpoint-")
                    and any(fnmatch.fnmatchcase(e.name, p) for p in RUN_OUTPUTS)
                    and not any(fnmatch.fnmatchcase(e.name, p) for p in _BRANCH_KEEPS)]
    model = any(entry.name in MODEL_FILES for entry in entries)  # named in the warning with the checkpoints
    target = _move_aside(out, entries)
    _copy_records(out, target)
    logger.warning("output_dir: resuming checkpoint-%d sets aside the later %s (%s)", step,
                   ", ".join(later + (["finished run's model and results"] if model else [])), _where(target))
    return target


def _copy_records(out: Path, target: str | None) -> None:
    """The branch set aside keeps a copy of the run's records, which stay with the resumed run (it
    writes them anew): a resume from the set-aside checkpoints is compared with the settings that
    trained them, and a resume refused before its first step, put back, brings them back with it."""
    for name in (RECIPE_RECORD, WORKING_DIR_NAME):
        if target is not None and (out / name).is_file():
            shutil.copy2(out / name, Path(target) / name)


def holds_run(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a run's model or checkpoints (not just a failed attempt's records).

    A ``config.json`` counts only as a model's (``model_type`` or ``architectures``): any project
    may keep a config.json of its own, and counting it as a run would set the project's files
    aside as the run being replaced.
    """
    out = Path(output_dir)
    return out.is_dir() and (any((out / name).exists() for name in MODEL_FILES) or _run_config(out)
                             or any(out.glob("checkpoint-*")) or set_aside_pending(out))


def _run_config(out: Path) -> bool:
    """Whether ``out/config.json`` is a model's, or one whose write was cut short (unreadable) beside
    a run's own records."""
    path = out / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        return False
    except ValueError:
        return any((out / name).exists() for name in (RECIPE_RECORD, WORKING_DIR_NAME))
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


def set_aside_pending(out: str | Path) -> bool:
    """Whether a set-aside cut short left files in ``_replacing/`` (the next one completes it)."""
    staging = Path(out) / REPLACING
    return staging.is_dir() and any(staging.iterdir())


def set_aside_previous_run(output_dir: str, keep: Iterable[str | None] = ()) -> str | None:
    """Move a previous run's files in ``output_dir`` into ``output_dir/_replaced/``; returns that folder, or None.

    Called only for a folder that :func:`holds_run` (with ``overwrite_output_dir``): the leftovers of
    an attempt that failed before its first checkpoint must not push a real run out of
    ``_replaced/``, and an evaluation-only record is no run to replace.

    Args:
        output_dir: the folder a fresh training run is about to write.
        keep: paths this run reads that may lie inside it (a smoke test's generated images, an
            image folder), which stay where they are.
    """
    out = Path(output_dir)
    if not out.is_dir():
        return None
    kept = [Path(p).resolve() for p in keep if p]
    entries = [e for e in out.iterdir() if any(fnmatch.fnmatchcase(e.name, p) for p in RUN_OUTPUTS)
               and not _holds_any(e.resolve(), kept)]
    if not entries and not set_aside_pending(out):
        return None
    if _holds_any((out / REPLACED).resolve(), kept):
        raise RecipeError(f"{out / REPLACED} holds a path this run reads (a checkpoint to resume from?), and setting "
                          "the run here aside would replace it: copy it out of the folder first")
    target = _move_aside(out, entries)
    logger.warning("output_dir: this run replaces the one in %s; its files were %s", out, _where(target))
    return target


def _finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run: a model and the training state saved after it (not
    the card, which a run stopped during its final evaluation never writes).

    ``save_pretrained`` writes ``config.json`` before the weights, and a Hub push during training
    copies a checkpoint's model in: neither is a run that finished, and setting one aside must
    not delete the finished run kept in ``_replaced/`` (a retry after a full disk did).
    """
    return (any((folder / name).is_file() for name in SAVED_AFTER_MODEL)
            and any((folder / name).exists() for name in MODEL_FILES))


def _move_aside(out: Path, entries: list[Path]) -> str | None:
    """Move ``entries`` out of the way, as one run, through ``_replacing/`` (see ``_settle``); where
    they went, or None when they were deleted.

    The files gather in ``_replacing/``, which replaces the target only once they are all there: a
    set-aside cut short (a signal) deletes nothing, and the next set-aside moves the rest of the same
    run in beside them. A move refused (a folder the user may not write, whose ``..`` a move
    rewrites) moves back those before it: the new run was refused, and the run it was to replace
    was left split between the folder and ``_replacing/``, its model unloadable.

    Raises:
        OutputWriteError: an entry cannot be moved; the run is as it was.
    """
    staging = out / REPLACING
    if any((staging / entry.name).exists() for entry in entries):  # another run's pending files: theirs first
        _settle(out)
    staging.mkdir(exist_ok=True)
    moved: list[Path] = []
    for entry in entries:
        try:
            os.replace(entry, staging / entry.name)
        except OSError as err:
            raise OutputWriteError(f"cannot set aside the run in {out}: moving {entry} into {staging} failed "
                                   f"({err.strerror or err}); {_moved_back(moved, staging)}. Make {entry} writable "
                                   "for you (moving a folder needs it), or choose another output_dir") from err
        moved.append(entry)
    return _settle(out)


def _moved_back(moved: list[Path], staging: Path) -> str:
    """Move ``moved`` back out of ``staging`` after a set-aside was refused; what the user is told."""
    try:
        for entry in reversed(moved):
            os.replace(staging / entry.name, entry)
    except OSError:
        return f"part of it is in {staging}: move it back into {staging.parent}"
    remove_empty([staging])
    return "it was left as it was"


def _settle(out: Path) -> str | None:
    """Make the run gathered in ``_replacing/`` the one kept in ``_replaced/``, unless that keeps more
    of a run (``_worth``): then it goes to ``_replaced/_unfinished/``, unless that too keeps more.
    A failed attempt's leftovers never push out a model or a checkpoint that can be resumed (a
    retry after a save that a full disk cut short did): when they hold weights (a checkpoint whose
    state alone was cut short) or a card, they go to a ``_replaced/_leftovers*/`` folder of their
    own, and are deleted otherwise (kept there too when they cannot be: a folder the user may not
    write)."""
    staging = out / REPLACING
    worth = _worth(staging)
    for target in (out / REPLACED, out / REPLACED / UNFINISHED):
        if not target.exists() or _worth(target) <= worth:
            break
    else:
        kept = ("model*.safetensors", "pytorch_model*.bin", CARD_NAME, EARLIER_CARDS)
        if not any(next(staging.rglob(pattern), None) for pattern in kept):
            try:
                shutil.rmtree(staging)
            except OSError as err:
                logger.warning("output_dir: could not delete a failed attempt's leftovers in %s (%s): they are "
                               "kept with the earlier runs in %s, delete them yourself", staging, err, out / REPLACED)
            else:
                logger.warning("output_dir: the files set aside hold no weights and no card (a failed attempt's "
                               "leftovers): deleted, keeping the earlier runs in %s", out / REPLACED)
                return None
        target = _free_name(out / REPLACED, LEFTOVERS)  # earlier leftovers are kept: none outranks another
    if target.exists():
        _park(out, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    return str(target)


def _park(out: Path, pushed_out: Path) -> None:
    """Keep the run a set-aside pushes out in ``_pushed_out/`` until the new run trains (see
    ``put_back``); one parked by an attempt killed before it could put it back goes first, or, when
    it cannot be deleted (a folder the user may not write), out of the way."""
    parked = out / PUSHED_OUT
    if parked.exists():
        try:
            shutil.rmtree(parked)
        except OSError as err:
            kept = _free_name(out, PUSHED_OUT)
            os.replace(parked, kept)
            logger.warning("output_dir: could not delete %s, a run an earlier attempt pushed out of %s (%s): it is "
                           "in %s now, delete it yourself", parked, REPLACED, err, kept)
    os.replace(pushed_out, parked)
    logger.info("output_dir: the run kept in %s waits in %s until this run starts training, then is deleted",
                pushed_out, parked)


def drop_pushed_out(output_dir: str) -> None:
    """Delete the run a set-aside pushed out: the run that replaced it has started training.

    One that cannot be deleted (a folder the user may not write) is a warning: the error ended the
    run that had just trained its first step, before it saved a model.
    """
    parked = Path(output_dir) / PUSHED_OUT
    if parked.is_dir() and not parked.is_symlink():
        try:
            shutil.rmtree(parked)
        except OSError as err:
            logger.warning("output_dir: could not delete %s, the earlier run this one pushed out of %s (%s): delete "
                           "it yourself", parked, Path(output_dir) / REPLACED, err)
            return
        logger.info("output_dir: deleted the earlier run this one pushed out of %s", Path(output_dir) / REPLACED)


def parked_run(output_dir: str) -> int | None:
    """Which folder waits in ``_pushed_out/`` (its inode), or None: tells the run a set-aside parked
    from one an attempt killed before its first step left there."""
    try:
        return (Path(output_dir) / PUSHED_OUT).stat().st_ino
    except OSError:
        return None


def put_back(output_dir: str, moved: str, parked: bool = True) -> None:
    """Undo a set-aside: the run moved to ``moved`` goes back into ``output_dir`` and the run it
    pushed out back to ``moved``, for a run refused (or stopped) before its first step. The set-aside
    comes once the models have loaded, and the trainer's checks and those at the start of training
    come after it: a refused run deleted the earlier run it pushed out, having trained nothing. A
    file the refused run wrote in the meantime (its image ledger, logs) gives way to the run's own.
    ``parked``: whether this set-aside pushed a run out (one an earlier, killed attempt left in
    ``_pushed_out/`` stays there)."""
    out, target = Path(output_dir), Path(moved)
    for entry in list(target.iterdir()):
        back = out / entry.name
        if back.is_dir() and not back.is_symlink():
            shutil.rmtree(back)
        elif back.exists() or back.is_symlink():
            back.unlink()
        os.replace(entry, back)
    target.rmdir()
    if parked and (out / PUSHED_OUT).is_dir():
        os.replace(out / PUSHED_OUT, target)
    elif target.parent != out:  # _replaced/ made for it alone
        remove_empty([target.parent])


def _worth(folder: Path) -> int:
    """How much of a run ``folder`` holds: 3 a finished run (``_finished``), 2 a checkpoint written
    whole (to resume), 1 a model without its training state (an export cut short, or a model a Hub
    push copied in), 0 none of them."""
    if _finished(folder):
        return 3
    if any(written_whole(path) for path in folder.glob("checkpoint-*")):
        return 2
    return int(any((folder / name).exists() for name in MODEL_FILES))


def _free_name(folder: Path, stem: str, suffix: str = "") -> Path:
    """``folder/<stem><suffix>``, or the first of ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, ... not taken."""
    path, n = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    return path


def _where(target: str | None) -> str:
    return f"moved to {target}" if target else "deleted: they held no weights and no card"


class Replacement(TrainerCallback):
    """The run this one set aside (``moved``, on the process that moved it): put back where it was
    when this run is refused, stopped or fails before the end of its first step (the trainer's
    checks, the batch and teacher checks at the start of ``train()``, a first batch out of memory),
    with the run it pushed out (``parked``: this set-aside parked one); once this run has trained a
    step, or ended training without one, the pushed-out run is deleted (``output_folder``).

    A run that an earlier attempt, killed before its first step, left in ``_pushed_out/`` is
    deleted too, but only by a run that takes that attempt's place (``replaces``: it set a run
    aside, or the folder held none): a resume of the run that attempt had set aside, moved back
    by hand, replaces nothing, and the pushed-out run is kept for the user to put back."""

    def __init__(self, output_dir: str, moved: str | None, parked: bool = False, replaces: bool = True) -> None:
        self.output_dir, self.moved, self.parked, self.training = output_dir, moved, parked, False
        self.replaces = replaces or moved is not None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        self._trained(args)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:  # noqa: D102
        self._trained(args)  # a resumed last step trains none

    def _trained(self, args: Any) -> None:
        if not self.training:
            self.training = True
            if not args.should_save:
                return
            if self.replaces:  # one an attempt killed before its first step left too
                drop_pushed_out(self.output_dir)
            elif parked_run(self.output_dir) is not None:
                logger.warning("output_dir: %s holds the run an attempt killed before its first step pushed out of "
                               "%s; this run replaces no run, so it is kept: move it back to %s, or delete it",
                               Path(self.output_dir) / PUSHED_OUT, REPLACED, Path(self.output_dir) / REPLACED)

    @contextlib.contextmanager
    def saying_where_it_went(self) -> Iterator[None]:
        """A refusal, a signal or a failure after the set-aside says where the replaced run is now."""
        try:
            yield
        except BaseException as err:  # a refusal, a signal, or a failure inside transformers (a traceback)
            if self.moved:
                err.add_note(self._where_now())
            raise

    def _where_now(self) -> str:
        if self.training:
            return f"the run this one was to replace is in {self.moved}"
        try:
            put_back(self.output_dir, self.moved, self.parked)
        except OSError as err:
            logger.warning("output_dir: the run set aside in %s could not be put back (%s)", self.moved, err)
            return f"the run this one was to replace is in {self.moved}"
        return f"the run this one was to replace is back in {self.output_dir}"


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_ALLOWED = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def said_write_errors(output_dir: str) -> Iterator[None]:
    """Turn a failed write (a full disk, a quota, a read-only path) into one ``OutputWriteError``
    line: safetensors and torch report a full disk as their own errors, torch's without saying so
    (``unexpected pos``), and each ended the run in a traceback that named no fix."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the writers' own error types; any other is re-raised
        said = write_error(err, output_dir)
        if said is None:
            raise
        raise said from err


def write_error(err: BaseException, output_dir: str) -> OutputWriteError | None:
    """The one-line error for ``err`` if it is a failed write into ``output_dir``, else None.

    Only errors about that folder: a full ``/dev/shm`` (a DataLoader worker's "No space left on
    device") or a file the run reads that it may not open are other problems, whose traceback stays.
    """
    text = " ".join(str(err).split()) or type(err).__name__
    code = getattr(err, "errno", None)
    filename = getattr(err, "filename", None)
    inside = isinstance(filename, str) and _inside(filename, output_dir)
    low = _free_bytes(output_dir) < 256 * 2**20
    said = any(words in str(err) for words in ("No space left on device", "Disk quota exceeded", "unexpected pos"))
    # a quota fills with the disk's space free (HPC file systems), and a file's write() names no file
    quota = (code == errno.EDQUOT or "Disk quota exceeded" in str(err)) and (inside or filename is None)
    if (code in _DISK_FULL and (inside or low)) or (said and low) or quota:  # torch's zip writer: "unexpected pos"
        full = f"the disk holding {output_dir} is full"
        if quota and not low:  # a write() names no file: output_dir's quota, or a cache's on another disk
            full = (f"your disk quota for {output_dir} is used up" if inside else
                    f"a disk quota is used up (the error names no file: {output_dir}'s, or a cache's)")
        return OutputWriteError(f"{full}: a write failed ({type(err).__name__}: "
                                f"{text[:300]}). Free space there or choose another output_dir; what was saved "
                                "before is kept (a checkpoint cut short is refused on resume, which names the one "
                                "before it)")
    if code in _NOT_ALLOWED and inside:
        return OutputWriteError(f"cannot write {filename}: {err.strerror}. Choose an output_dir you can write to")
    return None


def _inside(path: str, folder: str) -> bool:
    path_, folder_ = Path(path).absolute(), Path(folder).absolute()
    return path_ == folder_ or folder_ in path_.parents


def _free_bytes(folder: str) -> int:
    try:
        return shutil.disk_usage(nearest_existing(folder)).free
    except OSError:
        return 2**62


def _holds_any(entry: Path, paths: list[Path]) -> bool:
    return any(path == entry or entry in path.parents for path in paths)
