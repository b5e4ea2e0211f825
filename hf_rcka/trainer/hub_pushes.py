"""What a run's pushes leave of the Hub repository's earlier model.

Trainer's checkpoint pushes (``hub_strategy`` every_save, checkpoint, all_checkpoints) upload the
output folder's weights and config into the repository and delete nothing. Into a repository that
already held a model, the first push paired the new weights with the earlier model's card and
results (its accuracy, its training) until the final upload replaced them, and for good when the
run stopped before that. So a run's first checkpoint push is followed, in a commit of its own, by
the removal of the earlier model's card and result files that the output folder does not hold
(the repository is listed before the push's own upload; a README.md in a repository that holds no
model is its owner's, and stays; whether it held one is the first listing's answer, and a listing
after this run's own pushes, or in a resumed run, does not count the files the output folder
holds). The final upload of ``scripts/distill.py`` replaces the card and
deletes the result files its folder lacks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import transformers.trainer
from huggingface_hub import CommitOperationDelete
from huggingface_hub.utils import filter_repo_objects

from ..errors import RecipeError

logger = logging.getLogger(__name__)

# Run files that describe one model: removed from the repository when this run's folder lacks them
PUBLISHED_RESULTS = (
    "model.safetensors", "model-?????-of-?????.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model-?????-of-?????.bin", "pytorch_model.bin.index.json",
    "all_results.json", "train_results.json", "eval_results.json", "trainer_state.json", "cka.png", "cka.md",
)
_EARLIER_MODEL = ("README.md", *PUBLISHED_RESULTS)


def create_revision_branch(trainer: Any, token: str | None = None) -> None:
    """The branch ``hub_revision`` names, made from the default one when the repository lacks it: an
    upload to a branch does not create it, so every push of a run that named a new branch failed,
    the final one after the whole run."""
    args = trainer.args
    if args.hub_revision:
        transformers.trainer.hf_api().create_branch(trainer.hub_model_id, branch=args.hub_revision, exist_ok=True,
                                                    token=token if token is not None else args.hub_token)


def check_private_repository(trainer: Any, token: str | None, private: bool | None) -> None:
    """A run asked for a private repository (``hub_private_repo``) uploads into none that is public:
    ``create_repo`` makes a new repository private but leaves an existing one as it is, so the run
    published its model in a public repository without a word."""
    if not private:
        return
    args = trainer.args
    info = transformers.trainer.hf_api().repo_info(trainer.hub_model_id,
                                                  token=token if token is not None else args.hub_token)
    if getattr(info, "private", None) is False:
        raise RecipeError(
            f"hub_private_repo: true, but the Hub repository {trainer.hub_model_id!r} exists and is public: the "
            "uploads would publish the model. Make it private on the Hub, choose another hub_model_id, or set "
            "hub_private_repo: false")


def holds_earlier_model(repo_files: list[str], own_files_in: str | None = None) -> bool:
    """Whether the repository holds weights or results of another model (when it holds none, its
    README.md is its owner's, not a model's card).

    Args:
        own_files_in: the output folder, when the repository may hold this run's own pushes (a
            listing retried after this run pushed, a resumed run): a file it holds is no sign of
            another model then (the weights of a model that wrote only those are not told apart,
            and its card stays until the final upload replaces it).
    """
    published = filter_repo_objects(repo_files, allow_patterns=list(PUBLISHED_RESULTS))
    return any(own_files_in is None or not os.path.exists(os.path.join(own_files_in, name)) for name in published)


def stale_files(repo_files: list[str], output_dir: str) -> list[str]:
    """The repository's card and result files (top level only) that ``output_dir`` does not hold."""
    return [name for name in filter_repo_objects(repo_files, allow_patterns=list(_EARLIER_MODEL))
            if not os.path.exists(os.path.join(output_dir, name))]


def repository_files(trainer: Any, token: str | None = None, revision: str | None = None) -> list[str]:
    """The repository's files as this push finds them, before its own upload (raises what the Hub
    client raises when it cannot list them). ``token``/``revision``: the run's when None."""
    args = trainer.args
    return transformers.trainer.hf_api().list_repo_files(trainer.hub_model_id, revision=revision or args.hub_revision,
                                                         token=token or args.hub_token)


def remove_earlier_model(trainer: Any, repo_files: list[str], token: str | None = None, revision: str | None = None,
                         final: bool = False, background: bool = True) -> Any:
    """Remove the earlier model's card and results among ``repo_files`` (listed before this push's
    upload); ``None`` when nothing is stale.

    Args:
        final: the final upload's removal (its commit message says no training is in progress).
        background: queue the commit after the upload on the Hub client's one worker thread, like
            Trainer's own pushes, and return its ``Future``; otherwise commit now.
    """
    api, args = transformers.trainer.hf_api(), trainer.args
    stale = stale_files(repo_files, args.output_dir)
    if not stale:
        return None
    logger.info("removing the earlier model's %s from %s: they described other weights", ", ".join(stale),
                trainer.hub_model_id)
    progress = "" if final else "Training in progress: "
    return api.create_commit(
        repo_id=trainer.hub_model_id, operations=[CommitOperationDelete(path_in_repo=name) for name in stale],
        commit_message=f"{progress}the earlier model's card and results removed", token=token or args.hub_token,
        revision=revision or args.hub_revision, run_as_future=background)
