"""The models a Python caller hands ``DistillationTrainer``, checked as the command line checks what it loads.

The command line builds the student and the teacher itself, and checks them before training
(``cli.run_inputs``). A caller of the Python API builds them, and each mistake below used to
train to the end and report a number, or fail after the expensive work:

* a ready ``DistillationModel`` next to a ``teacher`` or losses that it would silently ignore;
* a student that shares weights with the (frozen) teacher, which froze them in the student too;
* feature losses without ``processing_class``: pairs planned at 224 px for 16 px data;
* an image processor whose size is not the data's: feature pairs planned for another grid;
* a ``compute_loss_func`` (never called), a bare timm model or ``model_init``;
* a teacher without ``teacher_processor`` fed the student's inputs unsaid (a timm teacher's config
  carries its own data config: ``teacher_input_stats``);
* a ready ``DistillationModel`` next to arguments that ask for other settings than its own;
* ``activation_checkpointing`` on a student transformers cannot checkpoint;
* a student whose layers share weights transformers cannot save (refused at the first save;
  checked when training starts, as evaluating such a student saves nothing);
* a trainer that only evaluates a saved student, whose losses read a projector, adapters or class
  centres built fresh beside it (``leave_out_fresh_losses``, as the command line's evaluation).

The other checks of what a caller gives are each in their own module: the class names of the
student, the data and the teacher (:mod:`.given_labels`), the datasets' items (:mod:`.given_data`),
the optimizer (:mod:`.optimizer_checks`), ``metric_for_best_model`` (:mod:`.metrics`) and the
arguments themselves (:mod:`hf_rcka.training_values`, and ``hf_rcka.arguments.check_arguments``
for plain ``TrainingArguments``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from transformers.modeling_utils import remove_tied_weights_from_state_dict

from ..errors import ModelError, RecipeError
from ..losses import reads_features
from ..modeling.assembly import active_specs, build_losses, run_loss_specs
from ..modeling.distillation_model import DistillationModel
from ..modeling.teacher_inputs import InputStats, input_stats, planned_input_size
from ..modeling.teacher_runtime import resolve_teacher_dtype
from ..recipe_specs import unused_feature_pairs
from ..models.timm_models import timm_native_state
from ..registry import LOSSES
from ..models.labels import listed_names
from .given_labels import check_labels

logger = logging.getLogger(__name__)


def check_activation_checkpointing(student: torch.nn.Module, args: Any) -> None:
    """``activation_checkpointing`` (``gradient_checkpointing``) needs a student transformers can
    checkpoint; HF ResNet and ConvNeXt cannot, which was a traceback after the models and data had
    loaded."""
    if not getattr(args, "activation_checkpointing", False) or getattr(student, "supports_gradient_checkpointing", False):
        return
    raise ModelError(f"activation_checkpointing: the student ({type(student).__name__}) does not support it in "
                     "transformers: set activation_checkpointing: false, or train a student that does (timm's "
                     "version of the architecture, through a timm/ model id)")


def check_model_objects(model: Any, teacher: Any, kwargs: Mapping[str, Any]) -> None:
    """What ``DistillationTrainer`` cannot use, refused in one line instead of an ``AttributeError``
    from deep inside (a bare timm model has no ``config``; ``model_init`` leaves ``model`` None)
    or silently ignored (``compute_loss_func``: the loss is the losses' weighted sum)."""
    if kwargs.get("model_init") is not None:
        raise ModelError("DistillationTrainer does not take model_init (the distillation model wraps one student and "
                         "its teacher): build the student and pass it as model")
    if kwargs.get("compute_loss_func") is not None:
        raise RecipeError("DistillationTrainer does not call compute_loss_func: its loss is the weighted sum of "
                          "args.losses. Register a loss of your own (hf_rcka.registry.LOSSES) and name it in losses")
    for role, module in (("model", model), ("teacher", teacher)):
        if module is None and role == "teacher":
            continue
        if isinstance(module, DistillationModel):  # its student is checked as a student given alone
            module = module.student
        if not isinstance(module, torch.nn.Module) or getattr(module, "config", None) is None:
            raise ModelError(
                f"DistillationTrainer: {role} must be a transformers image classifier (a model with a config), got "
                f"{type(module).__name__}. A timm model: load it through transformers, "
                "AutoModelForImageClassification.from_pretrained('timm/<arch>') (a TimmWrapperForImageClassification), "
                "or build one with timm's random weights and no Hub: hf_rcka.models.loading.load_image_classifier("
                "'timm/<arch>', num_labels=N, from_scratch=True)")
        if role == "model" and not any(p.requires_grad for p in module.parameters()):
            # every loss would train nothing of it (or fail on a loss without gradient), and it
            # would be saved as it came; a model frozen as an earlier run's teacher stays frozen
            raise ModelError(f"DistillationTrainer: the student {type(module).__name__} has no trainable weights "
                             "(requires_grad is False for all of them; a teacher is frozen in place): call "
                             "model.requires_grad_(True) before training it")
        if role == "model" and not callable(getattr(module, "save_pretrained", None)):
            # it would train to the end and fail at its first checkpoint or the final save
            raise ModelError(
                f"DistillationTrainer: model {type(module).__name__} has a config but no save_pretrained, so the "
                "trained student could not be saved: subclass transformers.PreTrainedModel (with its config_class)")


def check_ready_model(model: DistillationModel, teacher: Any, teacher_processor: Any, args: Any, mapping: str,
                      datasets: tuple[Any, ...] = ()) -> list[int] | None:
    """A ready ``DistillationModel`` brings its teacher and losses: arguments that would build
    others are refused rather than ignored. Its student is checked against the data
    (``datasets``: training and evaluation sets), and its teacher's classes against its student's
    by name, as models passed on their own are: returns the order to read its teacher's logits in
    (``check_labels``)."""
    given = [name for name, value in (("teacher", teacher), ("teacher_processor", teacher_processor)) if value is not None]
    if given:
        raise ModelError(f"DistillationTrainer: {' and '.join(given)} given with a ready DistillationModel, which "
                         "has its own teacher and inputs: build the DistillationModel with them, or pass the student")
    specs = getattr(args, "losses", None)
    wanted = {spec["name"] for spec in active_specs(specs)} if specs else None
    if wanted is not None and wanted != set(model.losses):
        raise RecipeError(f"losses {sorted(wanted)} in args, but the DistillationModel given computes "
                          f"{sorted(model.losses)}: build it with these losses, or leave args.losses unset")
    ignored = _loss_settings_ignored(model, args) + _model_settings_ignored(model, args)
    if ignored:
        raise RecipeError(
            f"DistillationTrainer: args ask for {'; '.join(ignored)}, which the ready DistillationModel given would "
            "ignore: it computes with the settings it was built with. Build it from these args "
            "(build_distillation_model(student, teacher, args)), or leave them unset")
    teacher = model.teacher if model.teacher is not None and model.needs_teacher else None
    return check_labels(model.student, teacher, args, datasets, mapping, loss_names=list(model.losses))


def _loss_settings_ignored(model: DistillationModel, args: Any) -> list[str]:
    """Each loss option ``args`` sets (``args.losses``' own, and ``label_smoothing_factor`` for a
    loss that takes ``label_smoothing``) that the model's loss holds otherwise: the weights and
    options of a ready model's losses were silently its own."""
    specs = active_specs(getattr(args, "losses", None) or [{"name": name} for name in model.losses])
    smoothing = getattr(args, "label_smoothing_factor", 0.0)
    found = []
    for spec, fresh in zip(specs, build_losses(specs, smoothing)):
        held = model.losses[spec["name"]]
        keys = [key for key in spec if key != "name"]
        keys += ["label_smoothing"] if smoothing and "label_smoothing" in LOSSES.option_names(spec["name"]) else []
        for key in dict.fromkeys(keys):
            given, own = getattr(fresh, key, _UNSET), getattr(held, key, _UNSET)
            if not _same_option(given, own):
                found.append(f"{spec['name']} {key} {given!r} (the model's: {own!r})")
    return found


def _same_option(given: Any, own: Any) -> bool:
    """Whether a loss option holds the same value in two losses; True where it cannot tell (an
    option not kept as an attribute of that name, or kept as a module: a custom loss's own state)."""
    if given is _UNSET or own is _UNSET or isinstance(given, torch.nn.Module) or isinstance(own, torch.nn.Module):
        return True
    if isinstance(given, torch.Tensor) or isinstance(own, torch.Tensor):
        return (isinstance(given, torch.Tensor) and isinstance(own, torch.Tensor) and given.shape == own.shape
                and torch.equal(given.cpu(), own.cpu()))
    try:
        return bool(given == own)
    except (TypeError, ValueError, RuntimeError):  # a value without a plain equality
        return True


def _model_settings_ignored(model: DistillationModel, args: Any) -> list[str]:
    """The model-building arguments ``args`` sets (away from their defaults) otherwise than the
    ready model was built with."""
    own = {**model.built_with, "teacher_dtype": resolve_teacher_dtype(model.built_with["teacher_dtype"])}
    pairs = getattr(args, "feature_pairs", None)
    if not model.needs_features and unused_feature_pairs(active_specs(run_loss_specs(args, model.teacher is not None)), pairs):
        pairs = None  # no loss reads them: the assembly dropped them, as the arguments' warning said
    given = {"feature_pairs": pairs,
             "teacher_dtype": resolve_teacher_dtype(getattr(args, "teacher_dtype", None)),
             "teacher_channels_last": False if getattr(args, "teacher_channels_last", True) is False else None}
    return [f"{key} {value!r} (the model's: {own[key]!r})" for key, value in given.items()
            if value is not None and value != own[key]]


_UNSET = object()


def _timm_teacher_processor(teacher: Any) -> Any:
    """A timm teacher's processor from the data config its config carries, when that config is
    complete (size, mean and std; timm would fill in ImageNet's otherwise) and its size is one the
    model takes (a ViT built for another ``img_size`` than its config records is not resized to it)."""
    config = getattr(teacher, "config", None)
    data_config = dict(getattr(config, "pretrained_cfg", None) or {})
    if not {"input_size", "mean", "std"} <= set(data_config):
        return None
    timm_model = getattr(teacher, "timm_model", None)
    patch_embed = getattr(timm_model, "patch_embed", None)
    # timm keeps dynamic_img_size on the model (its patch embedding is then not strict about the size)
    dynamic = getattr(timm_model, "dynamic_img_size", False) or not getattr(patch_embed, "strict_img_size", True)
    fixed = getattr(patch_embed, "img_size", None) if not dynamic else None
    if fixed is not None and tuple(fixed) != tuple(data_config["input_size"][-2:]):
        logger.info("teacher inputs: the timm teacher's config records %s inputs, but it takes %s: its data config "
                    "is not used", tuple(data_config["input_size"][-2:]), tuple(fixed))
        return None
    from transformers import TimmWrapperImageProcessor

    logger.info("teacher inputs: teacher_processor not given; the timm teacher's own data config is used")
    return TimmWrapperImageProcessor(pretrained_cfg=data_config, architecture=config.architecture)


def teacher_input_stats(teacher: Any, teacher_processor: Any, student_input: InputStats | None) -> InputStats | None:
    """What the teacher expects: its processor's, else a timm teacher's own data config (its
    config carries it), else unknown: the teacher then gets the student's inputs
    (``student_input``, ``processing_class``'s) as they are, said once, since a teacher trained on
    other statistics or sizes loses accuracy without an error."""
    if teacher is None:
        return None
    if teacher_processor is None:
        teacher_processor = _timm_teacher_processor(teacher)
        if teacher_processor is not None and student_input is None:  # it would be dropped without a word
            raise RecipeError("the timm teacher's data config says how it reads images, but without processing_class "
                              "(the student's image processor) the student's inputs are unknown and cannot be turned "
                              "into the teacher's: pass processing_class")
    if teacher_processor is None:
        logger.warning("teacher inputs: teacher_processor not given, so the teacher gets the student's inputs as they "
                       "are (%s): pass the teacher's own image processor (AutoImageProcessor.from_pretrained(<its "
                       "checkpoint>)) if it was trained with another normalisation or size",
                       student_input if student_input is not None else "unknown: no processing_class either")
    return input_stats(teacher_processor) if teacher_processor is not None else None


def check_saveable(student: Any) -> None:
    """A student whose layers share weight tensors that transformers does not know as tied (timm's
    CoaT shares its convolutional position encodings) cannot be saved: ``save_pretrained`` refused
    it at the first checkpoint or the final save, after the training, and nothing was written.
    transformers' own check of what it saves is run on the student here, before training starts."""
    state = timm_native_state(student) or student.state_dict()
    try:
        remove_tied_weights_from_state_dict(dict(state), student)
    except RuntimeError:
        groups = _shared_tensor_names(state)
        example = " = ".join(groups[0]) if groups else "see save_pretrained's error"
        raise ModelError(
            f"the student ({type(student).__name__}) shares {len(groups)} weight tensor(s) between layers (e.g. "
            f"{example}), which transformers cannot save (save_pretrained refuses them at the first checkpoint): "
            "train an architecture whose layers have weights of their own") from None


def check_trainable_precision(student: Any, own_optimizer: bool) -> None:
    """A student loaded in half precision (``from_pretrained(..., dtype=torch.bfloat16)``, or a
    checkpoint stored so and loaded with ``dtype="auto"``) trained in it without a word: updates
    below the weights' resolution are rounded away (AdamW at 5e-5 for 5 steps left 43% of a tiny
    ViT's weights unmoved; a LayerNorm weight near 1 cannot move by 5e-5 in bfloat16), and the
    export was half precision. Mixed precision (``bf16: true``) keeps float32 weights and computes
    in half. Refused with Trainer's own optimizer (``own_optimizer``); said with a caller's, which
    may keep float32 copies of its own (pure half-precision training done on purpose)."""
    half = [(name, p.dtype) for name, p in student.named_parameters()
            if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    if not half:
        return
    what = (f"the student's trainable weights are {str(half[0][1]).removeprefix('torch.')} ({len(half)} tensor(s), "
            f"e.g. {half[0][0]}): trained so, updates smaller than their resolution round away and the export is half "
            "precision")
    fix = ("load the student in float32 (from_pretrained(..., dtype=torch.float32), or student.float()) and set bf16: "
           "true (or fp16) for mixed precision")
    if own_optimizer:
        raise ModelError(f"{what}. To train it, {fix}")
    logger.warning("%s, unless the optimizer you gave keeps float32 copies of them. Otherwise %s", what, fix)


def _shared_tensor_names(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """The names of each tensor the state holds under several (same storage, offset and shape)."""
    names: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            names.setdefault(key, []).append(name)
    return [sorted(group) for group in names.values() if len(group) > 1]


def check_models(student: Any, teacher: Any, args: Any, processing_class: Any, teacher_processor: Any,
                 first_item: Mapping | None = None) -> None:
    """Shared weights and missing processors, before the distillation model is built.

    ``first_item``: the first training item (``check_columns``), whose image size the feature
    pairs must be planned at.
    """
    if teacher is not None:
        shared = {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}
        if shared:
            raise ModelError(
                f"the student shares {len(shared)} weight tensor(s) with the teacher, which is frozen: those would "
                "never train (or the first step fails). Give the student its own copy (copy.deepcopy(teacher))")
    if teacher_processor is not None and processing_class is None:
        raise RecipeError("teacher_processor needs processing_class (the student's image processor): the teacher's "
                          "inputs are the student's, re-normalised and resized from its processor's settings")
    specs = active_specs(run_loss_specs(args, teacher is not None))
    features = [spec["name"] for spec in specs if reads_features(LOSSES.get(spec["name"]))]
    pixels = first_item.get("pixel_values") if first_item is not None else None
    if not features or not isinstance(pixels, torch.Tensor) or pixels.ndim < 2:
        return
    planned = planned_input_size(student, input_stats(processing_class) if processing_class is not None else None)
    if processing_class is not None:
        source = "processing_class's output size"
        fix = "Give the data the processor's size (dataset.set_transform with processing_class), or pass its processor"
    else:
        source = "without processing_class, the student config's"
        fix = "Pass processing_class=<the student's image processor>"
    if tuple(pixels.shape[-2:]) != tuple(planned):
        raise RecipeError(
            f"losses {features} compare hidden states, whose grids are planned at the input size: {source} "
            f"{planned[0]}x{planned[1]}, but the data's images are {pixels.shape[-2]}x{pixels.shape[-1]}. {fix}")


def check_processor_size_taken(student: Any, stats: InputStats, data_size: tuple[int, int] | None) -> None:
    """The student takes the images ``processing_class`` makes (``stats``), when it takes the
    training images (of ``data_size``) and they are of another size: one blank image at each size,
    as the command line probes the student it builds.

    The processor is saved with the student, and ``pipeline()`` feeds the export through it. A ViT
    built for 16 px trained and was evaluated on 16 px data beside a 24 px processor, and the saved
    model failed in ``pipeline()`` ("Input image size (24*24) doesn't match model (16*16)"). A
    student that fails at both sizes is left to the first step, whose error is about the student.
    """
    if data_size is None or tuple(data_size) == tuple(stats.size):
        return
    error = _forward_error(student, stats.channels, stats.size)
    if error is not None and _forward_error(student, stats.channels, data_size) is None:
        height, width = stats.size
        raise ModelError(f"processing_class makes {height}x{width} images, which the student cannot take ({error}), "
                         f"though it takes the training images' {data_size[0]}x{data_size[1]}: it is saved with the "
                         "student, so pipeline() on the exported model would fail. Pass the image processor the "
                         "training images are made with as processing_class")


def _forward_error(student: Any, channels: int, size: tuple[int, int]) -> str | None:
    """What a forward of one blank image of ``size`` raises in the student (None: it runs), in eval
    mode and without gradients, so that nothing of it changes."""
    weight = next(student.parameters(), None)
    if weight is None or weight.device.type == "meta":
        return None
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            student(pixel_values=torch.zeros(1, channels, *size, device=weight.device, dtype=weight.dtype))
    except (RuntimeError, ValueError, AssertionError) as err:
        return " ".join(str(err).split())
    finally:
        student.train(was_training)
    return None


def leave_out_fresh_losses(model: DistillationModel) -> None:
    """An evaluation of a student loaded alone: losses that read what trained beside it (srd's
    projector, feature adapters, kernel_transfer's centres) are not evaluated, as their values
    would be those of fresh weights, and ``eval_loss`` sums the others; said either way."""
    fresh = model.leave_out_fresh_losses()
    if model.left_out:
        logger.warning("evaluation only: %s not evaluated: they read weights or statistics that trained with the run "
                       "(a projector, adapters, class centres) and are not saved with the student; eval_loss sums "
                       "the other terms", listed_names(fresh))
    elif fresh:
        logger.warning("evaluation only: every loss of this recipe (%s) reads weights or statistics that trained with "
                       "the run and are not saved with the student: its eval_*_loss values are those of fresh ones, "
                       "and only the accuracy describes the student", listed_names(fresh))


__all__ = [
    "check_activation_checkpointing", "check_model_objects", "check_models", "check_processor_size_taken",
    "check_ready_model", "check_saveable", "leave_out_fresh_losses", "teacher_input_stats",
]
