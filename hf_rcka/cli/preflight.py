"""The checks of a whole recipe that need no model weights and no data, run before anything expensive loads.

``check_run`` runs them all, cheapest first; each user error is one line naming the recipe key (or
path) and the fix, raised in seconds instead of after the models and the dataset have loaded, or
at the first step. This module holds the run-level ones (a run that would train nothing or
evaluate random weights, a multi-process launch that would be N runs, ``report_to``
integrations that are not installed, a ``metric_for_best_model`` the evaluation does not report,
work transformers accepts and the run would skip,
a mixing batch that mixes nothing) and calls those of their own modules: the output folder
(:mod:`.output_folder`), the models (:mod:`.model_sources`), the image folders
(:mod:`hf_rcka.data.image_folders`), ``fp16`` without a GPU (:mod:`hf_rcka.training_values`). A checkpoint to
resume is checked in :mod:`.resume_checks`.
"""

from __future__ import annotations

import importlib.util

import logging
import os
from pathlib import Path
from typing import Any

from transformers.training_args import ParallelMode

from ..arguments import fsdp_requested
from ..distributed import launched_processes
from ..errors import RecipeError
from ..data.image_folders import check_data_dirs
from ..data.sampler import check_identical_repeats, check_repeats_unsplit
from ..registry import close_matches
from ..modeling.assembly import active_specs, build_losses, check_label_smoothing, run_loss_specs, switched_off
from ..modeling.parallel import check_fsdp_settings
from ..trainer.data_parallel import check_processes_join
from ..trainer.batch_rows import (
    check_evaluation_rows, check_mixing_rows, check_relation_rows, evaluates, mixing_setting,
)
from ..trainer.metrics import check_metric_for_best_model
from ..training_values import check_best_model_evaluations, check_cpu_compiler, check_half_precision
from .model_sources import (
    check_feature_pairs, check_hub_access, check_image_processor, check_losses_fit_models, check_model_source,
    check_remote_code, check_student_config,
)
from .output_folder import check_output_dir_outside_data, check_output_dir_spares_inputs, check_output_dir_writable

logger = logging.getLogger("hf_rcka")
# report_to name -> (transformers' availability function suffix, what makes it available)
_INTEGRATIONS = {"azure_ml": ("azureml", "pip install azureml-core"), "comet_ml": ("comet", "pip install comet_ml"),
                 "flyte": ("flytekit", "pip install flytekit"), "dagshub": ("dagshub", "pip install dagshub mlflow"),
                 "kubeflow": ("kubeflow", "run inside a Kubeflow TrainJob (KUBEFLOW_TRAINER_SERVER_URL is unset)")}


def check_run(model_args: Any, data_args: Any, args: Any) -> None:
    """All checks below, cheapest first, but ``check_launch``, which the command line runs before
    it takes the output folder's lock. Raises a ``UserError`` subclass on the first problem."""
    check_output_dir_writable(args.output_dir)
    check_work(model_args, args)
    if args.do_train:  # an evaluation writes only its own _eval-<time> folder
        check_output_dir_spares_inputs(args.output_dir, {
            "model_name_or_path": model_args.model_name_or_path,
            "teacher_model_name_or_path": model_args.teacher_model_name_or_path,
            "baseline_dir": getattr(args, "baseline_dir", None),
        })
        check_output_dir_outside_data(args.output_dir, {key: getattr(data_args, key) for key in
                                                        ("train_dir", "validation_dir", "dataset_name")})
    check_report_to(args.report_to)
    check_unsupported_work(args)
    check_schedule_and_optimizer(args)
    check_half_precision(args)
    check_fsdp_settings(args)
    check_losses_fit_models(model_args, args)
    specs = active_specs(run_loss_specs(args, bool(model_args.teacher_model_name_or_path)))
    check_label_smoothing(specs, args.label_smoothing_factor)
    losses = {spec["name"]: loss for spec, loss in zip(specs, build_losses(specs))}
    if args.do_train:
        check_relation_rows(losses, args)
    if args.do_train and evaluates(args):  # an evaluation-only run: once built, knowing the losses it leaves out
        # max_eval_samples caps the evaluation set: one under a relation's rows is known before any data loads
        check_evaluation_rows(losses, args, getattr(data_args, "max_eval_samples", None))
    check_recipe_metric(model_args, args)
    for key in ("model_name_or_path", "teacher_model_name_or_path"):
        if getattr(model_args, key):
            # a smoke test builds both models from their configs, with random weights
            needs_weights = not getattr(model_args, "smoke_test", False) and (
                key == "teacher_model_name_or_path" or not model_args.student_from_scratch)
            check_model_source(key, getattr(model_args, key), needs_weights)
            check_remote_code(key, getattr(model_args, key), model_args.trust_remote_code)
            check_image_processor(key, getattr(model_args, key))
    teacher = model_args.teacher_model_name_or_path or ""
    if teacher.startswith("config:") and not getattr(model_args, "smoke_test", False):
        logger.warning("teacher_model_name_or_path %r is built from a config with random weights: it has nothing to "
                       "teach (fine for a pipeline test; give a trained teacher's folder or Hub id)", teacher)
    check_student_config(model_args)
    check_feature_pairs(model_args, args, list(losses.values()))
    check_data_dirs(data_args)
    check_mixing_batch(data_args, args)
    if args.do_train and not resuming(args.resume_from_checkpoint):  # a resumed run is warned by DistillationTrainer.train, once
        check_identical_repeats(data_args, resuming=False)
    check_repeats_unsplit(getattr(data_args, "aug_repeats", 0), args)
    if args.push_to_hub and not args.do_train:
        logger.warning("push_to_hub: an evaluation-only run uploads nothing (its results are a local record); "
                       "the Hub upload is a training run's")
    elif args.push_to_hub:
        check_hub_access(args, model_args)


def check_work(model_args: Any, args: Any) -> None:
    """The run must train something, and an evaluation must evaluate trained weights.

    ``num_train_epochs: 0`` trained nothing and saved the untrained model as the run's result
    (replacing a previous run's); ``do_train: false`` on a recipe with ``student_from_scratch:
    true`` (every supervised and distillation recipe) evaluated a freshly initialised student built
    from the folder's config, and reported chance accuracy for a trained model.
    """
    if args.do_train and args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise RecipeError(f"num_train_epochs {args.num_train_epochs:g} and no max_steps: the run would train nothing "
                          "and save an untrained model. Set num_train_epochs > 0 or max_steps > 0, or do_train: false "
                          "to evaluate a trained model")
    name = model_args.model_name_or_path
    if getattr(model_args, "smoke_test", False):
        return
    if args.do_train:
        if model_args.student_from_scratch and os.path.isdir(name) and any(Path(name).glob("*.safetensors")):
            logger.warning("model_name_or_path %r holds trained weights, but student_from_scratch: true trains a new "
                           "model of its architecture from random weights (student_from_scratch: false fine-tunes "
                           "those weights)", name)
        return
    if name.startswith("config:"):
        raise RecipeError(f"do_train: false evaluates model_name_or_path, but {name!r} has random weights: give the "
                          "folder (or Hub id) of a trained model")
    if model_args.student_from_scratch:
        fix = ("add --student_from_scratch false" if os.path.isdir(name) else  # a Hub id: its pretrained weights
               "give the trained run's folder: --model_name_or_path <its output_dir> --student_from_scratch false")
        raise RecipeError(f"do_train: false with student_from_scratch: true would evaluate random weights built from "
                          f"{name!r}'s config, not trained ones: {fix}")


def check_unsupported_work(args: Any) -> None:
    """Settings transformers accepts that this run would ignore, or fail on after loading.

    ``do_predict`` predicted nothing and ended well (the command line trains and evaluates; test
    splits are predicted from Python); ``load_best_model_at_end`` without evaluations during
    training exported the last step's weights without a word; an unknown
    ``torch_compile_backend`` was a traceback as the trainer was built, after the set-aside of the
    run it was to replace; ``enable_jit_checkpoint`` took SIGTERM from the command line's own
    handler, and a stopped run exited 0 with its model exported as finished.
    """
    if getattr(args, "do_predict", False):
        raise RecipeError("do_predict: the command line trains and evaluates, and predicts no test split: drop "
                          "do_predict (--do_train false evaluates a trained model), or predict from Python with "
                          "DistillationTrainer.predict")
    if getattr(args, "enable_jit_checkpoint", False):
        raise RecipeError("enable_jit_checkpoint: the command line saves a checkpoint after the current step on "
                          "SIGTERM and prints the command that resumes it; transformers' handler replaced that one, and "
                          "a stopped run then exported its model and card as finished: drop enable_jit_checkpoint")
    check_best_model_evaluations(args)
    _check_compile_settings(getattr(args, "torch_compile_backend", None), getattr(args, "torch_compile_mode", None))
    check_cpu_compiler(args)


# what a backend torch lists needs installed besides torch
_BACKEND_PACKAGES = {"tvm": "tvm", "openxla": "torch_xla", "openxla_eval": "torch_xla"}


def _check_compile_settings(backend: str | None, mode: str | None) -> None:
    """A backend accelerate names but this torch cannot run (``onnxrt``, ``tensorrt``...), one whose
    package is missing, or a mode inductor does not have: each was a traceback at the first step,
    after the models and data were loaded. A mode with another backend was ignored without a word."""
    if backend:
        import torch._dynamo
        from accelerate.utils import DynamoBackend

        names = [b.value.lower() for b in DynamoBackend]
        backend = str(backend).lower()
        if backend not in names:
            raise RecipeError(f"torch_compile_backend: unknown backend {backend!r}: {close_matches(backend, names)}")
        runnable = set(torch._dynamo.list_backends(exclude_tags=()))
        if backend != "no" and backend not in runnable:
            raise RecipeError(f"torch_compile_backend: {backend!r} is accelerate's name for a backend this torch "
                              f"{torch.__version__} does not have; it has {', '.join(sorted(runnable & set(names)))}")
        package = _BACKEND_PACKAGES.get(backend)
        if package and importlib.util.find_spec(package) is None:
            raise RecipeError(f"torch_compile_backend: {backend!r} needs the {package} package, which is not installed")
    if mode:
        import torch._inductor

        modes = list(torch._inductor.list_mode_options())
        if mode not in modes:
            raise RecipeError(f"torch_compile_mode: unknown mode {mode!r}: {close_matches(str(mode), modes)}")
        if backend and backend != "inductor":  # "no" compiles nothing: accelerate skips torch.compile
            raise RecipeError(f"torch_compile_mode {mode!r} is a mode of the inductor backend, and "
                              f"torch_compile_backend is {backend!r}, which would ignore it: drop one of them")


def resuming(value: Any) -> bool:
    """Whether a ``resume_from_checkpoint`` value asks for a checkpoint: a flag's ``false`` or
    ``none`` arrives as text, in any case, and means no resume, as YAML's would."""
    return str(value or "").lower() not in ("", "false", "none")


def _value(setting: Any) -> Any:
    return getattr(setting, "value", setting)  # TrainingArguments holds enums


def check_launch(args: Any) -> None:
    """A multi-process launch must give one data-parallel run, not N independent ones.

    On a machine without GPUs, transformers sets up torchrun's or ``accelerate launch``'s
    processes as separate single-process runs unless ``use_cpu`` is set: each then trains alone on
    all the data and all write the same ``output_dir`` (one crashed reading another's
    ``all_results.json``).
    """
    launched, _ = launched_processes()
    if launched > 1 and args.world_size == 1:
        raise RecipeError(f"launched as {launched} processes, but each would train alone on all the data and write "
                          "the same output_dir: on a machine without GPUs add --use_cpu true, so that they train "
                          "together")
    check_processes_join(args)
    if getattr(args, "fsdp", None) and getattr(args, "parallel_mode", None) != ParallelMode.DISTRIBUTED:  # Trainer's refusal
        raise RecipeError("fsdp shards the student over the processes of a launch, and this is one process: launch "
                          "several (accelerate launch with an FSDP config file, as the repository's "
                          "recipes/accelerate/fsdp_8gpu_bf16.yaml, or torchrun --nproc_per_node N), or drop fsdp")
    if launched > 1 and fsdp_requested(args) and (args.use_cpu or not _has_accelerator()):
        # accelerate turns MULTI_CPU into FSDP nowhere: the run trained as plain DDP, treated as FSDP
        raise RecipeError("an FSDP launch on CPU processes: accelerate shards models on accelerators only, so this run "
                          "would train as plain data parallelism while its settings and records said FSDP. On CPUs "
                          "launch with accelerate launch --multi_gpu --num_processes N ... --use_cpu true (the "
                          "repository's recipes/accelerate/cpu_2proc.yaml)")


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or bool(getattr(torch, "xpu", None) and torch.xpu.is_available())


def check_recipe_metric(model_args: Any, args: Any, num_labels: int | None = None) -> None:
    """The recipe's ``metric_for_best_model`` against the losses it configures, before anything
    loads (``trainer.metrics.check_metric_for_best_model`` has the rules; the trainer checks again
    with the model built). ``num_labels`` is known once the data has loaded; before that,
    ``top5_accuracy`` passes."""
    if args.metric_for_best_model is None:
        return
    specs = run_loss_specs(args, bool(model_args.teacher_model_name_or_path))
    check_metric_for_best_model(args, build_losses(specs), num_labels, switched_off(specs))


def check_report_to(report_to: Any, unavailable_ok: bool = False) -> list[str]:
    """Every ``report_to`` integration must be known to transformers and installed; ``none`` and
    ``all`` stand alone (transformers fails on them in a list, once the models and data are loaded).

    Returns what is not installed here, when ``unavailable_ok`` (the smoke test: the real run may
    run where it is); else that is an error too.
    """
    from transformers.integrations import integration_utils

    names = [report_to] if isinstance(report_to, str) or report_to is None else list(report_to)
    if any(not isinstance(name, str) or not name.strip() for name in names):
        raise RecipeError(f"report_to is empty ({report_to!r}): set report_to: none to log to no tracker, or name "
                          "the integrations (e.g. report_to: tensorboard)")
    alone = [name for name in names if name in ("none", "all")]
    if alone and len(names) > 1:
        raise RecipeError(f"report_to: {alone[0]!r} stands alone, not in a list with other names ({names}): give "
                          f"{'none' if alone[0] == 'none' else 'all'} by itself, or list only the integrations")
    known = list(integration_utils.INTEGRATION_TO_CALLBACK)
    unknown, unavailable = [], []
    for name in names:
        if name in ("none", "all"):
            continue
        if name not in known:
            unknown.append(f"report_to: unknown integration {name!r}: {close_matches(name, known)}")
            continue
        suffix, remedy = _INTEGRATIONS.get(name, (name, f"pip install {name}"))
        available = getattr(integration_utils, f"is_{suffix}_available", None)
        if available is not None and not available():
            unavailable.append(f"report_to: {name!r} is not available: {remedy}")
    # all of them at once: one failed run per tracker otherwise
    if unknown:
        raise RecipeError("; ".join(unknown + ([] if unavailable_ok else unavailable)))
    if unavailable and not unavailable_ok:
        raise RecipeError(f"{'; '.join(unavailable)}; or set report_to: none")
    return unavailable


def check_schedule_and_optimizer(args: Any) -> None:
    """The learning-rate schedule with its ``lr_scheduler_kwargs``, and the optimizer's package, as
    Trainer builds them at its first step (a missing ``min_lr``, a misspelled kwarg or an absent
    bitsandbytes failed there, as a traceback after the models and data had loaded)."""
    import torch
    from transformers import Trainer, get_scheduler

    try:
        Trainer.get_optimizer_cls_and_kwargs(args)
    except ImportError as err:  # its package is not installed
        raise RecipeError(f"optim {getattr(args.optim, 'value', args.optim)!r}: {err}") from None
    except ValueError as err:  # an optim_args value it converts (momentum=abc: float('abc')), a traceback
        raise RecipeError(f"optim {getattr(args.optim, 'value', args.optim)!r} with optim_args {args.optim_args!r}: "
                          f"{err}") from None
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate or 1e-3)
    try:
        get_scheduler(args.lr_scheduler_type, optimizer=probe, num_warmup_steps=1, num_training_steps=10,
                      scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
    except (TypeError, ValueError) as err:
        kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        raise RecipeError(f"lr_scheduler_type {kind!r} with lr_scheduler_kwargs {args.lr_scheduler_kwargs or {}}: "
                          f"{err}. Give the settings this schedule takes in lr_scheduler_kwargs") from None


# --------------------------------------------------------------------------------------------- data


def check_mixing_batch(data_args: Any, args: Any) -> None:
    """Mixup/CutMix pair image i with image B-1-i of a batch: a batch of one mixes nothing (the run
    trained without it and said nothing), and an odd batch leaves one image of every step unmixed."""
    if not getattr(data_args, "mixup_active", False) or not args.do_train:
        return
    batch = check_mixing_rows(True, args)
    if batch % 2:
        logger.warning("%s is %d, odd: mixup/cutmix leave one image of every batch unmixed (timm's Mixup needs an even "
                       "batch); an even size mixes them all", mixing_setting(args), batch)


