"""Labels, data and model-loading errors of a run, each reported as a user error naming its key.

Loading code raises ``ValueError``/``OSError`` with good messages but no recipe key; here they become
``ModelError``/``DataError`` naming ``model_name_or_path``, ``teacher_model_name_or_path``,
``dataset_name`` or ``train_dir``. The run's class order and the teacher's alignment by name are
settled here too, before the trainer is built (``models.labels`` has the rules).
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Any, Iterator

from datasets.exceptions import DatasetGenerationError
from datasets.table import CastError
from safetensors import SafetensorError

from ..arguments import DataArguments, DistillationTrainingArguments, ModelArguments
from ..data.datasets import declared_label_names, load_raw_datasets
from ..errors import DataError, ModelError, UserError
from ..log_levels import errors_only
from ..models.label_maps import LabelMaps, set_labels
from ..modeling.assembly import run_reads_teacher_logits
from ..models.labels import BY_INDEX, BY_NAME, align_teacher_classes, check_teacher_names, is_generic, model_label_names


@contextmanager
def model_error(key: str) -> Iterator[None]:
    """Loading errors (bad folder, unknown architecture, offline Hub) become ModelErrors naming ``key``."""
    try:
        yield
    except (ValueError, OSError) as err:
        if isinstance(err, UserError):
            raise
        raise ModelError(f"{key}: {err}") from err
    except SafetensorError as err:  # a weights file cut short: a kill during its save
        raise ModelError(f"{key}: a .safetensors weights file there is incomplete or corrupt ({err}): a save cut short? "
                         "Save the model again; an hf_rcka run killed during its final save finishes it when resumed "
                         "(--resume_from_checkpoint true)") from None


def student_labels(model_args: ModelArguments) -> list[str] | None:
    """A pretrained student's class names (from its config, no weights), or None for a new head."""
    from ..models.hf_config import load_config
    from ..models.sources import parse_model_source

    name = model_args.model_name_or_path
    # a timm/<arch> name without student_from_scratch is a Hub checkpoint with its own head and names
    if model_args.student_from_scratch or parse_model_source(name).kind == "config":
        return None
    with model_error("model_name_or_path"):
        return model_label_names(load_config(name, model_args.trust_remote_code))


def check_teacher_labels(model_args: ModelArguments, args: DistillationTrainingArguments, labels: list[str]) -> None:
    """A teacher whose classes cannot pair with the run's, refused from its config before either
    model's weights load (a teacher of another dataset was refused after both had downloaded).

    ``align_teacher`` decides the same again once the teacher has loaded, and says what it
    decided; here only its errors count, so its notes are not said twice.
    """
    from ..models.hf_config import load_config
    from ..models.sources import parse_model_source

    name = model_args.teacher_model_name_or_path
    # a teacher built from scratch (smoke test, config:) has only generic names; features alone pair with any classes
    if not name or model_args.smoke_test or parse_model_source(name).kind == "config" \
            or not run_reads_teacher_logits(args):
        return
    with model_error("teacher_model_name_or_path"):
        teacher_labels = model_label_names(load_config(name, model_args.trust_remote_code))
    mapping = model_args.teacher_label_mapping or BY_NAME
    with errors_only():
        check_teacher_names(list(labels), teacher_labels, mapping, "teacher_model_name_or_path", "the dataset")


def checkpoint_labels(folder: str, trust_remote_code: bool = False) -> list[str]:
    """The class names, in id order, of the student saved in a checkpoint (its config.json)."""
    from ..models.hf_config import load_config

    with model_error("resume_from_checkpoint"):
        return model_label_names(load_config(folder, trust_remote_code))


def _check_cache_error(err: OSError | ValueError) -> None:
    """An error writing datasets' cache is the cache's, not the data's (it named train_dir), and so
    is a full disk that names no file: the arrow writer's ``write()`` names none, and the error
    blamed the dataset."""
    import datasets

    cache = os.path.abspath(datasets.config.HF_DATASETS_CACHE)
    filename = getattr(err, "filename", None)
    if filename is None and getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        raise DataError(f"a disk filled while the data loaded ({type(err).__name__}: {err.strerror or err}): datasets' "
                        f"cache {cache!r} (or, for a Hub dataset, the Hub's cache) is on a full disk or over your "
                        "quota: free space there, or point HF_DATASETS_CACHE (or HF_HOME) at another disk") from err
    if not isinstance(filename, str):
        return
    filename = os.path.abspath(filename)
    # in the cache, or a folder above it that could not be made (HF_HOME under a file)
    if (filename + os.sep).startswith(cache + os.sep) or (cache + os.sep).startswith(filename + os.sep):
        raise DataError(f"datasets' cache {cache!r} cannot be used ({type(err).__name__}: {err.strerror or err}): "
                        "point HF_DATASETS_CACHE (or HF_HOME) at a folder you can write to") from err


def load_data(data_args: DataArguments, eval_only: bool = False):
    """The raw splits; a dataset that cannot be loaded is a DataError naming its key."""
    with _loading_errors(data_args):
        return load_raw_datasets(data_args, eval_only=eval_only)


def declared_labels(data_args: DataArguments) -> list[str] | None:
    """The class names a Hub dataset's card declares (``declared_label_names``), read before its
    files download; a dataset that cannot be loaded is the DataError ``load_data`` gives, sooner."""
    with _loading_errors(data_args):
        return declared_label_names(data_args)


@contextmanager
def _loading_errors(data_args: DataArguments) -> Iterator[None]:
    """datasets' errors loading the recipe's data, as one DataError naming the recipe's key."""
    key = "dataset_name" if data_args.dataset_name else "train_dir"
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as err:  # datasets' FileNotFoundError, DatasetNotFoundError...
        _check_cache_error(err)
        hint = ""
        if isinstance(err, ConnectionError) and data_args.dataset_name:
            _refuse_offline_dataset(data_args.dataset_name, err)
            hint = _OFFLINE_NOT_CACHED if _hub_offline() else _UNREACHABLE_HUB
        raise DataError(f"{key} {getattr(data_args, key)!r}: cannot load the dataset ({type(err).__name__}: {err})"
                        f"{hint}") from err
    except DatasetGenerationError as err:  # what went wrong is its cause (a CastError: splits with other columns)
        cause = err.__cause__ or err
        if isinstance(cause, OSError):  # writing the prepared data into the cache
            _check_cache_error(cause)
        text = " ".join(str(cause).split())[:400]
        hint = ". Every split must have the same columns and types" if isinstance(cause, CastError) else ""
        raise DataError(f"{key} {getattr(data_args, key)!r}: cannot load the dataset ({type(cause).__name__}: "
                        f"{text}){hint}") from err


# datasets' ConnectionError with the Hub online: its requests failed after their retries, and
# nothing it cached answers them (its cause, the failed request, is not kept)
_UNREACHABLE_HUB = (": this machine could not reach the Hugging Face Hub. Check the network (and HF_ENDPOINT, proxy "
                    "settings); on a machine without network, set HF_HUB_OFFLINE=1 to read the copy that "
                    "datasets.load_dataset cached where there was network")


# datasets' ConnectionError with the Hub offline, for a name _refuse_offline_dataset does not look up
# (no namespace, as 'cifar10', or a bucket): the network was not tried, so it is not to be checked
_OFFLINE_NOT_CACHED = (": the Hub is offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set) and datasets' cache "
                       "lacks it: load it once where there is network, with this HF_HOME (datasets.load_dataset)")


def _hub_offline() -> bool:
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)  # HF_DATASETS_OFFLINE too


def _refuse_offline_dataset(name: str, err: ConnectionError) -> None:
    """A Hub dataset offline that datasets' own cache lacks: what to do, and where the files are when
    ``hf download --repo-type dataset`` put them in the Hugging Face cache (datasets offline reads only
    the data it prepared itself, under HF_DATASETS_CACHE; the error said only "Couldn't reach")."""
    import datasets
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not _hub_offline() or name.count("/") != 1 or os.path.exists(name):
        return
    try:
        validate_repo_id(name)
    except HFValidationError:
        return
    repo = os.path.join(constants.HF_HUB_CACHE, f"datasets--{name.replace('/', '--')}")
    try:
        with open(os.path.join(repo, "refs", "main"), encoding="utf-8") as handle:
            snapshot = os.path.join(repo, "snapshots", handle.read().strip())
    except OSError:
        snapshots = sorted(os.scandir(os.path.join(repo, "snapshots")), key=lambda e: e.stat().st_mtime) \
            if os.path.isdir(os.path.join(repo, "snapshots")) else []
        snapshot = snapshots[-1].path if snapshots else None
    fixes = [f"give that folder as dataset_name (the Hugging Face cache holds its files there, from hf download, "
             f"which datasets does not read offline): {snapshot}"] if snapshot and os.path.isdir(snapshot) else []
    fixes.append(f"load it once where there is network, with this HF_HOME (datasets.load_dataset({name!r}))")
    raise DataError(f"dataset_name {name!r} is not in datasets' cache ({datasets.config.HF_DATASETS_CACHE}), and the "
                    "Hub is offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set): " + ", or ".join(fixes)) from err


def align_teacher(teacher: Any, args: DistillationTrainingArguments, labels: list[str], mapping: str) -> None:
    """Teacher classes by name, before the trainer is built: realigned, or an error, when its logits
    are distilled; when only its features are, other classes are fine but its accuracy means nothing."""
    if teacher is None:
        return
    align_teacher_classes(teacher, labels, mapping, run_reads_teacher_logits(args), args)
    by_position = is_generic(model_label_names(teacher.config)) or mapping == BY_INDEX
    if by_position and len(teacher.config.id2label) == len(labels):
        # paired by position, and said so above: the run's own teacher (never saved) takes the run's
        # names, so that the trainer's check of the same pairing does not say it again
        set_labels(teacher.config, LabelMaps.of(labels))
