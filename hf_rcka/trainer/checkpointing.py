"""How a distillation run is saved and restored, through the Trainer methods that do it.

``Trainer.model`` is a ``DistillationModel`` (student + frozen teacher + adapters + loss state),
not a ``PreTrainedModel``. Left alone, transformers would save the wrapper's whole state dict,
teacher included, as one ``model.safetensors`` with no config, and on resume or at
``load_best_model_at_end`` would load that file into the wrapper by key. What a run needs
instead: every save writes the student alone as a plain transformers model (``from_pretrained``
works on it, the Hub shows a student), and checkpoints add the adapters' and losses' state and the
weight EMA, so resuming continues exactly.

transformers offers no public hook for these steps (``save_model`` is public but hands the
gathered FSDP/DeepSpeed state dict only to ``_save``; no callback event fires before a
checkpoint's weights are written or instead of the weight loading). So :class:`CheckpointingTrainer`
overrides private methods. Each says at its definition what transformers does there that
must change, and ``tests/test_trainer_contract.py`` pins the transformers behaviour each relies on
(signature, when it is called, what our override leaves on disk or in the weights), so an upgrade
that moves them fails loudly instead of silently saving the wrong model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Iterator

import safetensors.torch
import torch
from accelerate.utils.constants import FSDP_MODEL_NAME
from transformers import TimmWrapperImageProcessor, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, has_length, sort_checkpoints

from ..arguments import global_batch_size
from ..errors import ModelError, RecipeError, UserError
from ..file_writes import as_umask_allows, write_text
from ..models.timm_models import record_data_config, timm_native_state
from ..run_record import copy_run_record
from .checkpoint_folders import TRAINER_STATE_NAME, checkpoint_folder, checkpoint_step
from .divergence import has_finite_weights
from .hub_pushes import (
    check_private_repository, create_revision_branch, holds_earlier_model, remove_earlier_model, repository_files,
)
from .loss_record import check_loss_record, loss_settings, say_earlier_defaults, write_loss_record
from .resume_match import (
    BATCH_RECORD_NAME, check_epoch_steps, check_optimizer_settings, check_restored_rates, check_resume_batch,
    check_stream_readers, forward_batch, optimizer_settings, stream_readers, warn_other_split,
)
from .teacher_record import TEACHER_RECORD_NAME, check_teacher_record, teacher_fingerprint, write_teacher_record

logger = logging.getLogger(__name__)

TRAINING_ARGS_NAME = "training_args.bin"
LIVE_STUDENT_NAME = "live_student.safetensors"  # a model_ema_export checkpoint's live weights, for resuming


class CheckpointingTrainer(Trainer):
    """Trainer whose saves hold the student alone, and whose checkpoints restore a distillation.

    Subclasses provide ``distillation_model`` (the unwrapped ``DistillationModel``) and
    ``model_ema`` (a ``StudentEmaCallback`` or ``None``).
    """

    distillation_model: Any
    model_ema: Any = None
    _checkpointing = False
    # whether this run writes the record in output_dir (the command line's RecipeRecord), which each
    # checkpoint then keeps a copy of; a run from Python writes none, and a record found there is
    # another run's
    records_run = False
    _teacher_fingerprint: dict[str, Any] | None = None
    _epoch_steps: int | None = None  # optimizer steps per epoch (None: data without a length)
    _optimizer_kwargs: dict[str, Any] | None = None  # the settings create_optimizer built the optimizer with
    _starting_rates: list[float] | None = None  # each parameter group's rate before the first step
    _finished_already: FinishedAlready  # set by the subclass, which adds it as a callback
    _earlier_model_removed = False  # the Hub repository's earlier card and results (hub_pushes)
    _earlier_model: bool | None = None  # whether it held another model: the first listing's answer
    _hub_pushed = False  # a checkpoint push of this run went out
    _resumed = False  # this run resumed a checkpoint (whose run may have pushed)
    best_model_loaded = False  # at the end of training, load_best_model_at_end loaded the best checkpoint
    # the command line's: the last checkpoint outlives train() until the export is written (see _finalize_training)
    keeps_last_checkpoint_until_export = False
    _last_checkpoint_kept = False
    resumed_best: str | None = None  # a resumed run's best checkpoint (ResumedBest)

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple:
        """Trainer's, keeping the number of optimizer steps an epoch takes for the checkpoints."""
        values = super().set_initial_training_values(args, dataloader)
        self._epoch_steps = values[1] if has_length(dataloader) else None
        self._stream_readers = None if has_length(dataloader) else stream_readers(self.train_dataset, args)
        return values

    def teacher_record(self, teacher: torch.nn.Module) -> dict[str, Any]:
        """The frozen teacher's fingerprint, made once (it reads every weight)."""
        if self._teacher_fingerprint is None:
            self._teacher_fingerprint = teacher_fingerprint(teacher)
        return self._teacher_fingerprint

    @contextlib.contextmanager
    def _writing_checkpoint(self) -> Iterator[None]:
        self._checkpointing = True
        try:
            yield
        finally:
            self._checkpointing = False

    # Private override. Trainer writes a checkpoint's weights through save_model -> _save, the same
    # path as an export, and no callback runs before those weights are written (on_save runs after).
    # Marking the call is the only way _save can tell a checkpoint (live weights + adapter/loss
    # state + EMA state, to resume exactly) from an export (the EMA weights when model_ema_export).
    # Under FSDP, Trainer also has accelerate write the whole wrapper (teacher included, the bulk of
    # it for a RegNetY-16GF teacher) as pytorch_model_fsdp.bin, for its own resume path, which the
    # overrides below replace: nothing reads that file, so it is removed once the checkpoint is
    # complete.
    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        with self._writing_checkpoint():
            super()._save_checkpoint(model, trial)
        if self.is_fsdp_enabled and self.args.should_save:
            folder = checkpoint_folder(self, trial)
            for name in os.listdir(folder):
                if name.startswith(FSDP_MODEL_NAME):
                    os.remove(os.path.join(folder, name))

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Trainer's repository, and the branch ``hub_revision`` names (see ``create_revision_branch``).

        The Hub's refusal (a read-only token, a namespace the token may not write, the network) is one
        line naming the repository: it was a traceback from Trainer's constructor, after the models and
        the data had loaded."""
        try:
            super().init_hf_repo(token=token, private=private)
            if self.is_world_process_zero():
                create_revision_branch(self, token)
                check_private_repository(self, token, private if private is not None else self.args.hub_private_repo)
        except UserError:
            raise
        except Exception as err:  # the Hub's HTTP errors, the network's, OSError
            repo = self.hub_model_id or self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
            branch = f" (branch {self.args.hub_revision!r})" if self.args.hub_revision else ""
            first = str(err).splitlines()[0] if str(err) else ""
            raise UserError(
                f"push_to_hub: could not create or reach the Hub repository {repo!r}{branch} ({type(err).__name__}: "
                f"{first}): check hub_model_id, that the token may write there (a read token may not), and the "
                "network, or set push_to_hub: false") from err

    # Private override. Trainer's checkpoint push uploads the folder's weights and deletes nothing: a
    # repository's earlier card and results described the new weights (hub_pushes says more).
    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        listed = None
        if not self._earlier_model_removed and self.is_world_process_zero() and self.args.hub_strategy != "end":
            try:
                listed = repository_files(self)
            except Exception as err:  # the Hub's HTTP errors, httpx's, OSError: the next push tries again
                self._removal_failed(err)
        if listed is not None and self._earlier_model is None:  # the first answer holds (a retry lists our push)
            own_pushes = self._hub_pushed or self._resumed  # files of the output folder may be this run's then
            self._earlier_model = holds_earlier_model(listed, self.args.output_dir if own_pushes else None)
        super()._push_from_checkpoint(checkpoint_folder)
        self._hub_pushed = True
        if listed is None:
            return
        job = remove_earlier_model(self, listed) if self._earlier_model else None
        self._earlier_model_removed = True
        if job is not None:
            # its commit runs in the background: a failure there is said, and the next push tries again
            job.add_done_callback(lambda done: done.exception() is not None and self._removal_failed(done.exception()))
            if self.push_in_progress is not None:
                self.push_in_progress.jobs.append(job)  # waited for with the checkpoint's upload

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs: Any) -> Any:
        """Trainer's upload of the output folder, then the removal of the repository's results and
        weights the folder does not hold (Trainer's upload deletes nothing: another model's
        ``eval_results.json`` stayed beside the new weights, and its single ``model.safetensors``
        beside new sharded ones, which ``from_pretrained`` loads first). The command line's final
        upload does both in one commit."""
        if self.hub_model_id is None and self.is_world_process_zero():
            self.init_hf_repo(token=token, private=private)
        listed = None
        if self.is_world_process_zero():
            try:
                listed = repository_files(self, token, revision)
            except Exception as err:  # the Hub's HTTP errors, httpx's, OSError
                self._stale_kept(err)
        pushed = super().push_to_hub(commit_message, blocking, token, revision, private, **kwargs)
        if listed is None:
            return pushed
        try:  # non-blocking: queued after the upload, on the Hub client's one worker thread
            job = remove_earlier_model(self, listed, token, revision, final=True, background=not blocking)
        except Exception as err:
            self._stale_kept(err)
        else:
            if not blocking and job is not None:
                job.add_done_callback(lambda done: done.exception() is not None and self._stale_kept(done.exception()))
        return pushed

    def _stale_kept(self, err: BaseException) -> None:
        logger.warning("could not remove the earlier model's results from %s (%s): they stay beside this upload",
                       self.hub_model_id, err)

    def _removal_failed(self, err: BaseException) -> None:
        self._earlier_model_removed = False
        logger.warning("could not remove the earlier model's card and results from %s (%s): they stay beside this "
                       "run's checkpoints until its final upload or its next push", self.hub_model_id, err)

    # Private override. Trainer._save writes Trainer.model's state dict; ours is the wrapper, so it
    # would store teacher + adapters in one model.safetensors without a config. save_model (public)
    # cannot replace it: under FSDP/DeepSpeed it gathers the full state dict and passes it only here.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the student as a plain transformers model (+ processor); checkpoints add adapters."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.distillation_model
        student_state = None
        if state_dict is not None:  # FSDP/DeepSpeed gathered the wrapper's full state dict
            student_state = {k[len("student."):]: v for k, v in state_dict.items() if k.startswith("student.")}
        # With model_ema_export the average is what eval_* measures, in checkpoints too (a checkpoint
        # picked by its logged eval_accuracy must hold that model); the live weights that resume
        # continues from go next to it. (model_ema is refused under FSDP, so student_state is None.)
        export_ema = self.model_ema is not None and self.args.model_ema_export
        record_data_config(model.student)
        with self.model_ema.swapped_in() if export_ema else contextlib.nullcontext():
            model.student.save_pretrained(output_dir, state_dict=timm_native_state(model.student, student_state))
        # a timm student's processor is its config.json's data config; its save_pretrained only warns so
        if self.processing_class is not None and not isinstance(self.processing_class, TimmWrapperImageProcessor):
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self._checkpointing:
            model.save_distillation_state(output_dir, gathered=state_dict)
            if self.model_ema is not None:
                self.model_ema.save(output_dir)
            if export_ema:
                safetensors.torch.save_model(model.student, os.path.join(output_dir, LIVE_STUDENT_NAME))
            with open(os.path.join(output_dir, BATCH_RECORD_NAME), "w", encoding="utf-8") as handle:
                json.dump({"global_batch": global_batch_size(self.args), "processes": self.args.world_size,
                           "forward_batch": forward_batch(self.args, self._train_batch_size),
                           "epoch_steps": self._epoch_steps, "starting_rates": self._starting_rates,
                           "stream_readers": getattr(self, "_stream_readers", None)}, handle)
            write_loss_record(output_dir, loss_settings(self.args, model.teacher is not None))
            if self.records_run:
                copy_run_record(self.args.output_dir, output_dir, pushed=self._pushes_checkpoint_folders())
        if model.teacher is not None:  # the export's too: a rerun of its recipe compares its teacher
            write_teacher_record(output_dir, self.teacher_record(model.teacher))
        as_umask_allows(output_dir)  # safetensors writes its files readable by their owner alone

    def _pushes_checkpoint_folders(self) -> bool:
        """Whether Trainer uploads each checkpoint folder whole (it ignores no file there, where the
        output folder's upload leaves out names that start with "_")."""
        return bool(self.args.push_to_hub) and self.args.hub_strategy in (
            HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS)

    # Private override. On resume Trainer loads the checkpoint's model.safetensors into Trainer.model
    # by key, non-strictly: into our wrapper that restores nothing (the student's keys lack the
    # "student." prefix) and only warns. We restore student, adapters, loss state and EMA strictly.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if not os.path.isdir(resume_from_checkpoint):  # checked at the start: moved since, not a misfit
            raise ModelError(
                f"resume_from_checkpoint: {resume_from_checkpoint!r} is not there (removed as this run started, by "
                "another run's save_total_limit or set-aside?): resume from a checkpoint that is there")
        if not holds_training_state(resume_from_checkpoint):  # Trainer would start them afresh, silently
            raise ModelError(
                f"resume_from_checkpoint: {resume_from_checkpoint!r} holds no optimizer and scheduler state (saved "
                "with save_only_model: true?): resuming would restart the optimizer and the learning-rate schedule. "
                "Resume from a full checkpoint, or start a new run from these weights")
        self._resumed = True
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if target.teacher is not None:  # the checkpoint holds no teacher: another one went on silently
            check_teacher_record(resume_from_checkpoint, self.teacher_record(target.teacher))
        unknown = check_loss_record(resume_from_checkpoint, loss_settings(self.args, target.teacher is not None))
        if self.args.should_log:
            _say_what_is_not_compared(resume_from_checkpoint, target.teacher is not None, unknown)
        self.resumed_best = best_checkpoint(resume_from_checkpoint, self.args)
        logger.info("resuming student and distillation state from %s", resume_from_checkpoint)
        try:
            target.load_checkpoint(resume_from_checkpoint)
            _restore_live_student(target.student, resume_from_checkpoint)
            if self.model_ema is not None:
                self.model_ema.load(resume_from_checkpoint)
        except torch.OutOfMemoryError:  # a RuntimeError too, but says nothing about the checkpoint
            raise
        except (OSError, KeyError, RuntimeError, TypeError, ValueError) as err:  # OSError: no safetensors weights
            # a student, adapter or loss that differs from the saved run's (a ViT checkpoint for a ResNet
            # run fails with a TypeError): one line, not a traceback
            text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)  # KeyError quotes its str
            reason = (text.strip().splitlines() or [type(err).__name__])[0][:300]
            raise ModelError(
                f"resume_from_checkpoint: {resume_from_checkpoint!r} does not fit this run ({reason}). Resume with "
                "the settings it was saved with (the run's distill_config.yaml), or train into a new output_dir"
            ) from None
        # Checkpoints of a diverged run are no longer written, but older ones exist: resumed, such a
        # student ran on to the first check and was then reported as a new divergence.
        if not has_finite_weights(target.student, self.args.device):
            raise ModelError(
                f"resume_from_checkpoint: {resume_from_checkpoint!r} holds NaN or infinite student weights (saved "
                "after its training diverged): resume from an earlier checkpoint"
            )

    # Private override. Trainer restores the optimizer and schedule here, settings included, after
    # it has planned the epochs: the one place to compare what the checkpoint restores with what this
    # run says, through the Python API as through the command line (see resume_match).
    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        if self.state.global_step > self.state.max_steps:
            raise RecipeError(f"resume_from_checkpoint: {checkpoint!r} is at step {self.state.global_step}, past this "
                              f"run's last step ({self.state.max_steps}): it would be exported as this run's result. "
                              "Resume with the max_steps (or epochs) it was trained for, or evaluate it")
        check_resume_batch(checkpoint, self.args)
        if self.args.should_log:
            warn_other_split(checkpoint, self.args, self._train_batch_size)
        check_epoch_steps(checkpoint, self._epoch_steps)
        check_stream_readers(checkpoint, getattr(self, "_stream_readers", None))
        check_restored_rates(checkpoint, starting_rates(self.optimizer))
        # the settings this run built its optimizer with; none for the caller's own optimizer, whose
        # groups may hold what its schedule changes (OneCycleLR's momentum)
        keys = [*self._optimizer_kwargs, "weight_decay"] if self._optimizer_kwargs is not None else []
        own = optimizer_settings(self.optimizer, keys)
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except ValueError as err:  # torch's, after every model and the data had loaded
            if "parameter group" not in str(err):
                raise
            raise RecipeError(
                f"resume_from_checkpoint: {checkpoint!r} holds an optimizer whose parameter groups differ from this "
                f"run's ({err}): other weights decay (model_no_weight_decay; a checkpoint of hf_rcka before "
                "2026-12-02, which decayed a ViT's position embedding and tokens, resumes with --model_no_weight_decay "
                "false) or train (the student's frozen weights, the losses and adapters). Resume with the settings it "
                "was saved with (the run's distill_config.yaml)"
            ) from None
        check_optimizer_settings(checkpoint, own, optimizer_settings(self.optimizer, keys))

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's, noting the names of the settings it builds the optimizer with (for the resume
        checks) from its one call of ``get_optimizer_cls_and_kwargs``: a second call registered
        layer-wise GaLore's per-parameter hooks twice."""
        if self.optimizer is not None:  # the caller's (optimizers=...): its settings not compared
            return self._noting_starting_rates(super().create_optimizer(model))
        if self.optimizer_cls_and_kwargs is not None:
            self._optimizer_kwargs = dict.fromkeys(self.optimizer_cls_and_kwargs[1])
            return self._noting_starting_rates(super().create_optimizer(model))
        seen: dict[str, Any] = {}
        resolve = self.get_optimizer_cls_and_kwargs

        def noted(args: Any, model: Any = None) -> tuple[Any, Any]:
            cls, kwargs = resolve(args, model)
            seen.update(dict.fromkeys(kwargs))  # names only; Trainer pops "params" from kwargs afterwards
            return cls, kwargs

        self.get_optimizer_cls_and_kwargs = noted
        try:
            optimizer = super().create_optimizer(model)
        finally:
            del self.get_optimizer_cls_and_kwargs
        self._optimizer_kwargs = seen
        return self._noting_starting_rates(optimizer)

    def _noting_starting_rates(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Each parameter group's rate before any step, which checkpoints record (``BATCH_RECORD_NAME``)
        for the resume's rate check: ``reduce_lr_on_plateau``'s saved schedule holds no ``base_lrs``,
        so a resume at another rate went on at the checkpoint's with nothing said."""
        self._starting_rates = starting_rates(optimizer)
        return optimizer

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        """Trainer's, but a run resumed at its last step (an export cut short by a full disk or a
        second signal, resumed to finish it) gets no batch: Trainer checks the step count after a
        step, so it trained one step past ``max_steps`` and exported that. Nothing is evaluated or
        saved again either (``FinishedAlready``): the checkpoint resumed from stays as it was."""
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            self._finished_already.active = True
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    # Private override. With save_total_limit 1 Trainer deletes every checkpoint but the best here, at
    # the end of train(): the last one too, before the command line writes the export. A kill, or a
    # full disk, during the export then left the best checkpoint alone, and a resume trained every
    # step after it again. The command line keeps it until the export is whole
    # (drop_checkpoints_kept_for_export); the Python API, which writes no export, keeps Trainer's way.
    def _finalize_training(self, trial: Any, num_train_samples: int, start_time: float) -> Any:
        limit = self.args.save_total_limit
        self._last_checkpoint_kept = self.keeps_last_checkpoint_until_export and limit == 1
        if self._last_checkpoint_kept:
            self.args.save_total_limit = None
        try:
            return super()._finalize_training(trial, num_train_samples, start_time)
        finally:
            self.args.save_total_limit = limit

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """Trainer's ``<split>_results.json`` and ``all_results.json``, each replaced whole or not at
        all (``file_writes``): Trainer opens them with mode "w", so a full disk or a signal during the
        final evaluation's write left ``all_results.json`` cut short, the training's metrics in it
        lost too (the README says the results files are replaced whole)."""
        if not self.is_world_process_zero():
            return
        write_text(os.path.join(self.args.output_dir, f"{split}_results.json"),
                   json.dumps(metrics, indent=4, sort_keys=True))
        if combined:
            path = os.path.join(self.args.output_dir, "all_results.json")
            combined_metrics = {}
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    combined_metrics = json.load(handle)
            combined_metrics.update(metrics)
            write_text(path, json.dumps(combined_metrics, indent=4, sort_keys=True))

    def save_state(self) -> None:
        """Trainer's ``trainer_state.json`` in ``output_dir``, replaced whole or not at all: with the
        model it makes the run a finished one (``cli.output_folder``), which a copy cut short is not."""
        if not self.is_world_process_zero():
            return
        write_text(os.path.join(self.args.output_dir, TRAINER_STATE_NAME),
                   json.dumps(dataclasses.asdict(self.state), indent=2, sort_keys=True) + "\n")

    def drop_checkpoints_kept_for_export(self) -> None:
        """What Trainer's end of training would have deleted (save_total_limit 1: all but the best),
        once the export is written. Each checkpoint loses its trainer_state.json first, which a
        checkpoint's save writes last: one a kill leaves half deleted is not taken as whole."""
        best = self.state.best_model_checkpoint
        if not (self._last_checkpoint_kept and self.args.should_save and best):
            return
        for checkpoint in sort_checkpoints(output_dir=self.args.output_dir, best_model_checkpoint=best):
            if not os.path.samefile(checkpoint, best):
                logger.info("deleting %s (save_total_limit 1), now that the export is written", checkpoint)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(checkpoint, TRAINER_STATE_NAME))
                shutil.rmtree(checkpoint, ignore_errors=True)
        self._last_checkpoint_kept = False

    # Private override. With load_best_model_at_end Trainer loads the best checkpoint's weights file
    # into Trainer.model the same way (nothing matches, so nothing is restored); we load the student
    # and distillation state of that checkpoint, strictly.
    def _load_best_model(self) -> None:
        metric, best = self.args.metric_for_best_model or "loss", self.state.best_metric
        logger.info("loading the best student from %s (%s %s)", self.state.best_model_checkpoint,
                    metric if metric.startswith("eval_") else f"eval_{metric}",
                    f"{best:.6g}" if isinstance(best, (int, float)) else best)
        self.best_model_loaded = True  # the weights are no longer the last step's (see interrupt)
        self.distillation_model.load_checkpoint(self.state.best_model_checkpoint)
        _restore_live_student(self.distillation_model.student, self.state.best_model_checkpoint)
        if self.model_ema is not None:  # the average of that checkpoint, not of the last step
            self.model_ema.load(self.state.best_model_checkpoint)


class FinishedAlready(TrainerCallback):
    """Once a run resumed at its last step found no batch left (``get_batch_samples``), the end of
    its epoch neither evaluates nor saves: an epoch strategy rewrote the checkpoint it resumed from,
    the one good copy when the export it finishes was cut short by a full disk.

    So does the end of a stream's pass that a resumed run reached by skipping alone (a checkpoint at
    the pass's last step, saved after its evaluation under the epoch strategies): it evaluated that
    step again and rewrote the checkpoint it resumed from, whose record then held the evaluation twice.
    """

    def __init__(self) -> None:
        self.active, self.resumed_step = False, 0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.active, self.resumed_step = False, state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: D102
        if self.active or (0 < state.global_step == self.resumed_step and _evaluated_at(state, state.global_step)):
            control.should_evaluate = control.should_save = False


def _evaluated_at(state: Any, step: int) -> bool:
    """Whether the run's log holds an evaluation of ``step`` (one the checkpoint resumed brought)."""
    return any(entry.get("step") == step and any(key.startswith("eval_") for key in entry)
               for entry in state.log_history)


class ResumedRate(TrainerCallback):
    """A resumed run's first step at the rate its own schedule gives, not the checkpoint's.

    Trainer restores the optimizer's rates (the last ones the checkpoint's schedule set) and
    rebuilds the schedule from this run's settings, which apply from the next step: a run extended
    from 4 to 8 cosine steps trained its step 5 at the 4-step schedule's end, rate 0. Here each
    group starts at its base rate times this schedule's factor at the resumed step, which is the
    restored rate whenever the schedule is unchanged. Only for ``LambdaLR`` schedules (all of
    Trainer's but ``reduce_lr_on_plateau``); ``check_resume_rate`` keeps the base rates the same.
    """

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):  # noqa: D102
        schedule = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
        if state.global_step == 0 or optimizer is None or not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
            return
        for group, base, factor in zip(optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas):
            group["lr"] = base * factor(schedule.last_epoch)
        # the rate Trainer logs for the step (get_last_lr()): the checkpoint's schedule's, 0.0 at its end
        schedule._last_lr = [group["lr"] for group in optimizer.param_groups]


class ResumeStep(TrainerCallback):
    """The step this ``train()`` call starts at, for the card: a resumed run's checkpoint step, 0
    for a fresh one. Trainer loads the checkpoint's state before ``on_train_begin`` and keeps this
    step only in a private attribute, whose rename would drop the card's line without a word."""

    def __init__(self) -> None:
        self.step = 0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self.step = state.global_step


class ResumedBest(TrainerCallback):
    """A resumed run's best checkpoint is the one of its own output folder (``best_checkpoint``).

    ``trainer_state.json`` records the best checkpoint's path as it was when saved: for a run folder
    since moved, a path that no longer exists (Trainer then exports the last step, with one log
    line), and for a checkpoint copied out of a folder since reused, another run's checkpoint,
    exported as this run's best. It also decides which checkpoint ``save_total_limit`` keeps.

    Args:
        best: returns the path ``best_checkpoint`` resolved when the checkpoint was loaded, or None.
    """

    def __init__(self, best: Any) -> None:
        self.best = best

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        if state.global_step and self.best() is not None:
            state.best_model_checkpoint = self.best()


def best_checkpoint(resume: str, args: Any) -> str | None:
    """Where a resumed run's best checkpoint is, with ``load_best_model_at_end``: ``checkpoint-<best
    step>`` of ``output_dir``, the resumed checkpoint when it is the best one, or the one beside it (a
    run resumed into another folder); None without one.

    Raises:
        ModelError: the recorded best step's checkpoint is in neither place.
    """
    try:
        with open(os.path.join(resume, TRAINER_STATE_NAME)) as handle:
            recorded = json.load(handle)
    except (OSError, ValueError):
        return None
    step = recorded.get("best_global_step")
    if not getattr(args, "load_best_model_at_end", False) or not step:
        return None
    name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
    if os.path.isdir(os.path.join(args.output_dir, name)):
        return os.path.join(args.output_dir, name)
    if checkpoint_step(resume) == step:
        return resume
    beside = os.path.join(os.path.dirname(os.path.normpath(resume)), name)  # the resumed run's own folder
    if os.path.isdir(beside):
        return beside
    raise ModelError(
        f"resume_from_checkpoint: the run's best checkpoint, {PREFIX_CHECKPOINT_DIR}-{step} (recorded as "
        f"{recorded.get('best_model_checkpoint')!r}), is not in output_dir {args.output_dir!r}: load_best_model_at_end "
        "would export another model. Copy it there, or resume with load_best_model_at_end: false")


def _say_what_is_not_compared(folder: str, has_teacher: bool, unknown: list[str]) -> None:
    """An earlier hf_rcka's checkpoint lacks records this run compares (its teacher's weights, its
    loss options): the resume goes on, said once (it went on silently with a retrained teacher, and
    with rcka's new 1/1 weights where the run had trained at 15/15)."""
    if has_teacher and not os.path.isfile(os.path.join(folder, TEACHER_RECORD_NAME)):
        logger.warning("resume_from_checkpoint: %s records no teacher (%s, written by an earlier hf_rcka): the teacher "
                       "of this run is not compared with the one it trained with", folder, TEACHER_RECORD_NAME)
    say_earlier_defaults(folder, unknown)


def holds_training_state(folder: str) -> bool:
    """Whether ``folder`` holds the optimizer and scheduler state that resuming continues from
    (``save_only_model`` checkpoints do not; FSDP saves its optimizer as a folder)."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return any(n.startswith("optimizer") for n in names) and any(n.startswith("scheduler") for n in names)


def _restore_live_student(student: torch.nn.Module, folder: str) -> None:
    """A ``model_ema_export`` checkpoint's ``model.safetensors`` holds the average: training goes on
    from the live weights saved next to it."""
    path = os.path.join(folder, LIVE_STUDENT_NAME)
    if os.path.isfile(path):
        safetensors.torch.load_model(student, path, device=str(next(student.parameters()).device))


class HubToken(str):
    """``hub_token``'s value, which never leaves memory: pickled (``training_args.bin``) it becomes
    None, and its ``repr`` hides it; copies (shallow or deep) keep it, and as a string it is the
    token itself."""

    def __reduce__(self) -> tuple:
        return type(None), ()

    def __copy__(self) -> "HubToken":
        return self

    def __deepcopy__(self, memo: dict) -> "HubToken":
        return self

    def __repr__(self) -> str:
        return "'<hub_token>'"


def keep_token_out_of_files(args: Any) -> None:
    """Keep ``hub_token`` on ``args``, where transformers reads it for its uploads, as a
    :class:`HubToken`, which no file gets.

    transformers pickles the whole ``args`` into ``training_args.bin`` (in ``_save`` and again in
    ``_push_from_checkpoint``), and ``push_to_hub`` uploads it: the token was published with every
    pushed checkpoint. Moving it into ``HF_TOKEN`` instead changed the caller's whole process: every
    later Hub call of a notebook used it, even after the trainer was refused.
    """
    token = getattr(args, "hub_token", None)
    if token and not isinstance(token, HubToken):
        args.hub_token = HubToken(token)


def starting_rates(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each parameter group's starting rate: the schedule's ``initial_lr`` where one set it (a warm-up
    starts below it), else the group's rate, as numbers (a caller's optimizer may hold a tensor, which
    the batch record's json cannot write)."""
    return [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]


__all__ = [
    "BATCH_RECORD_NAME", "LIVE_STUDENT_NAME", "TRAINING_ARGS_NAME", "CheckpointingTrainer", "ResumedBest", "ResumedRate", "checkpoint_folder",
    "checkpoint_step",
    "holds_training_state", "HubToken", "keep_token_out_of_files",
]
