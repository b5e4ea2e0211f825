"""The teacher runs under no_grad, channels_last and half precision without changing results."""

import pytest
import torch
from conftest import tiny_resnet, tiny_vit

from hf_rcka.functional import sample_rows
from hf_rcka.losses import FitNetLoss, KDLoss, CrossEntropyLoss, FeatureCKALoss
from hf_rcka.modeling.distillation_model import DistillationModel
from hf_rcka.modeling.parallel import default_broadcast_buffers, has_running_stats, ignore_teacher_in_ddp
from hf_rcka.modeling.teacher_runtime import TeacherRuntime, is_convolutional, resolve_teacher_dtype


def _batch(n=5, size=16):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_convolutional_teacher_goes_channels_last_and_keeps_its_outputs():
    teacher = tiny_resnet().eval()
    x, _ = _batch()
    with torch.no_grad():
        expected = teacher(pixel_values=x).logits
    runtime = TeacherRuntime(teacher, channels_last=True)
    assert runtime.channels_last and is_convolutional(teacher) and not is_convolutional(tiny_vit())
    conv = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with runtime.running():
        got = teacher(pixel_values=runtime.inputs(x)).logits
    torch.testing.assert_close(runtime.release(got), expected, rtol=1e-4, atol=1e-5)


def test_nhwc_teacher_state_dict_hands_out_standard_layout_copies():
    """Broadcast loading (torch's broadcast_from_rank0) would permute NHWC tensors on other ranks, so
    the state dict holds contiguous copies of the same values; the live weights stay NHWC, and
    keep_vars still hands out the parameters themselves."""
    model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), KDLoss()])
    conv = next(n for n, m in model.teacher.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    live = model.teacher.get_submodule(conv).weight
    state = model.state_dict()
    saved = state[f"teacher.{conv}.weight"]
    assert live.is_contiguous(memory_format=torch.channels_last) and not live.is_contiguous()
    assert saved.is_contiguous() and torch.equal(saved, live)
    assert all(v.is_contiguous() for v in state.values())
    assert model.state_dict(keep_vars=True)[f"teacher.{conv}.weight"] is live
    fresh = DistillationModel(tiny_vit(), tiny_resnet(seed=5), [CrossEntropyLoss(), KDLoss()])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.teacher.get_submodule(conv).weight, live)
    assert fresh.teacher.get_submodule(conv).weight.is_contiguous(memory_format=torch.channels_last)


def test_half_precision_teacher_hands_its_own_precision_to_the_losses():
    """No float32 copies of a bf16 teacher's outputs: they are held under the student's forward,
    where float32 doubled their memory; the losses upcast what they read."""
    teacher = tiny_resnet().eval()
    runtime = TeacherRuntime(teacher, dtype=resolve_teacher_dtype("bfloat16"))
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    x, _ = _batch()
    with runtime.running():
        logits = teacher(pixel_values=runtime.inputs(x)).logits
    assert logits.dtype == torch.bfloat16 and runtime.release(logits) is logits
    with pytest.raises(ValueError, match="teacher_dtype must be one of"):
        resolve_teacher_dtype("float8")


def test_float32_outputs_reach_the_losses_without_a_copy():
    """The teacher runs under no_grad, not inference_mode, so its float32 outputs are normal tensors
    the losses may save for backward: handing them over costs nothing (the copies out of
    inference_mode showed in the step-overhead benchmark)."""
    runtime = TeacherRuntime(tiny_resnet().eval())
    with runtime.running():
        assert not torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        fmap = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert runtime.release(fmap) is fmap and runtime.release(None) is None
    tokens = torch.randn(2, 1 + 9, 4)
    patch_map = tokens[:, 1:].unflatten(1, (3, 3)).permute(0, 3, 1, 2)
    assert runtime.release(patch_map) is patch_map  # views all but the class token: no copy


def test_a_pooled_class_token_does_not_keep_its_sequence_alive():
    """A ViT's pooled feature is the class token, a view of the whole last token sequence: handed
    over as it is, the (B, N, C) sequence would stay in memory through the backward."""
    runtime = TeacherRuntime(tiny_vit().eval())
    sequence = torch.randn(4, 197, 8)
    pooled = runtime.release(sequence[:, 0])
    assert torch.equal(pooled, sequence[:, 0])
    assert pooled.untyped_storage().nbytes() == pooled.numel() * pooled.element_size()


def test_half_token_maps_reach_the_losses_without_a_copy():
    """A ViT teacher's block reaches the losses as a map viewing prefix-free tokens (a gap per
    sample). A bf16 teacher's stays that view, in bf16, and the losses flatten it per sample
    without a copy."""
    runtime = TeacherRuntime(tiny_vit().eval(), dtype="bfloat16")
    with runtime.running():
        tokens = torch.randn(4, 1 + 6 * 5, 8).to(torch.bfloat16)
        fmap = tokens[:, 1:].unflatten(1, (6, 5)).permute(0, 3, 1, 2)
    released = runtime.release(fmap)
    assert released is fmap and released.dtype == torch.bfloat16
    rows = sample_rows(released)
    assert rows.data_ptr() == fmap.data_ptr() and rows.shape == (4, 6 * 5 * 8)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_teacher_outputs_work_in_every_loss_that_saves_them(dtype):
    """mse (FitNet) and a trainable teacher-side projector save the teacher tensor for backward,
    which inference tensors would forbid."""
    losses = [CrossEntropyLoss(), KDLoss(), FitNetLoss(), FeatureCKALoss()]
    model = DistillationModel(tiny_vit(), tiny_resnet(), losses,
                              feature_pairs=[{"student_layer": -1, "teacher_layer": -2, "adapter": "patch_match"}],
                              teacher_dtype=dtype).train()
    x, y = _batch()
    terms = model(pixel_values=x, labels=y).loss_terms
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters.parameters())


def test_ddp_ignores_the_teacher_and_broadcasts_only_when_the_student_has_bn():
    model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), KDLoss()])
    names = ignore_teacher_in_ddp(model)
    assert names and all(n.startswith("teacher.") for n in names)
    assert any(n.endswith("running_mean") for n in names)
    assert set(model._ddp_params_and_buffers_to_ignore) == set(names)
    assert not has_running_stats(model.student) and has_running_stats(model.teacher)
    assert default_broadcast_buffers(tiny_vit(), None) is False
    assert default_broadcast_buffers(tiny_resnet(), None) is None  # DDP's default: keep BN stats in sync
    assert default_broadcast_buffers(tiny_vit(), True) is True


def test_fsdp_plugin_gets_the_teacher_as_ignored_module_unless_the_user_chose():
    from types import SimpleNamespace

    from hf_rcka.modeling.parallel import keep_teacher_out_of_fsdp

    model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), KDLoss()])
    plugin = SimpleNamespace(ignored_modules=None)
    assert keep_teacher_out_of_fsdp(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)), model, "cpu")
    assert plugin.ignored_modules == [model.teacher]
    chosen = SimpleNamespace(ignored_modules="student.*")
    assert not keep_teacher_out_of_fsdp(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=chosen)), model, "cpu")
    assert chosen.ignored_modules == "student.*"
    assert not keep_teacher_out_of_fsdp(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=None)), model, "cpu")


def test_an_evaluation_batch_in_bf16_reaches_a_float32_teacher_as_float32():
    """FSDP's mixed-precision policy hands the wrapper bf16 inputs; the unsharded float32 teacher, run
    without autocast in evaluation, failed on them (mixed input and weight dtypes)."""
    teacher = tiny_resnet().eval()
    runtime = TeacherRuntime(teacher)
    x, _ = _batch()
    with runtime.running():
        logits = teacher(pixel_values=runtime.inputs(x.to(torch.bfloat16))).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("teacher_dtype, autocast", [("float16", torch.bfloat16), ("bfloat16", None),
                                                     ("bfloat16", torch.bfloat16)])
def test_a_teacher_dtype_other_than_the_autocast_is_refused_before_anything_runs(teacher_dtype, autocast):
    """float16 BatchNorm weights under bf16 autocast: a traceback at the first step (and the smoke
    test, run in float32 on a CPU, passed)."""
    from hf_rcka.arguments import check_teacher_dtype
    from hf_rcka.errors import RecipeError

    mixed = {torch.bfloat16: "bf16", None: None}[autocast]
    model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), KDLoss()], teacher_dtype=teacher_dtype)
    x, y = _batch()
    if mixed and teacher_dtype != "bfloat16":
        with pytest.raises(RecipeError, match=r"teacher_dtype 'float16' with bf16: true: .* Set teacher_dtype: bfloat16"):
            check_teacher_dtype(teacher_dtype, mixed)
        with pytest.raises(RuntimeError), torch.autocast("cpu", dtype=autocast):  # what the check spares
            model.train()(pixel_values=x, labels=y)
        return
    check_teacher_dtype(teacher_dtype, mixed)
    with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
        assert torch.isfinite(model.train()(pixel_values=x, labels=y).loss)


def test_models_already_on_their_device_get_the_teacher_inputs_there():
    """Built on the CPU, the re-normalisation of the teacher's inputs met models a caller had
    moved to a GPU ('meta' stands in for it here) and failed before training."""
    from conftest import IMAGENET_MEAN, IMAGENET_STD, processor
    from hf_rcka.modeling.teacher_inputs import input_stats

    model = DistillationModel(tiny_vit().to("meta"), tiny_resnet().to("meta"), [CrossEntropyLoss(), KDLoss()],
                              student_input=input_stats(processor(16)),
                              teacher_input=input_stats(processor(24, IMAGENET_MEAN, IMAGENET_STD)))
    assert {b.device.type for b in model.teacher_transform.buffers()} == {"meta"}
    assert model.teacher_pixels(torch.zeros(2, 3, 16, 16, device="meta")).shape == (2, 3, 24, 24)


def test_a_teacher_dtype_other_than_the_launchers_mixed_precision_is_refused(monkeypatch):
    """accelerate launch --mixed_precision bf16 (or its config file) leaves the recipe's bf16 False."""
    from hf_rcka import DistillationTrainingArguments
    from hf_rcka.errors import RecipeError

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(RecipeError, match="teacher_dtype 'float16' with bf16: true"):
        DistillationTrainingArguments(output_dir="unused", teacher_dtype="float16", report_to="none", use_cpu=True)


# TRT2 (modeling/teacher_runtime.py resolve_teacher_dtype): a torch dtype other than bf16/fp16 is refused
def test_a_float32_torch_dtype_is_not_a_teacher_dtype():
    from hf_rcka.modeling.teacher_runtime import resolve_teacher_dtype

    assert resolve_teacher_dtype(torch.bfloat16) is torch.bfloat16
    for dtype in (torch.float32, torch.float64, torch.int8):
        with pytest.raises(ValueError, match="teacher_dtype must be one of"):
            resolve_teacher_dtype(dtype)


def test_teacher_channels_last_false_keeps_a_convolutional_teacher_in_standard_layout():
    """teacher_channels_last: false (recipe key, DistillationModel argument) turns NHWC off: the CNN
    teacher's weights and inputs stay in standard layout (kills: the flag ignored in TeacherRuntime)."""
    teacher = tiny_resnet()
    model = DistillationModel(tiny_vit(), teacher, [CrossEntropyLoss(), KDLoss()], teacher_channels_last=False)
    assert not model.teacher_runtime.channels_last
    conv = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16)
    assert model.teacher_runtime.inputs(x).is_contiguous()


def test_channels_last_leaves_a_vit_teacher_in_standard_layout():
    """channels_last is for convolutional teachers: a ViT's single patch-embedding conv gains nothing
    from NHWC, and every batch would be copied into NHWC for it (kills: channels_last taken from the
    flag alone, without is_convolutional)."""
    teacher = tiny_vit()
    runtime = TeacherRuntime(teacher, channels_last=True)
    assert not runtime.channels_last
    conv = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16)
    assert runtime.inputs(x).is_contiguous()


def test_a_users_ddp_broadcast_buffers_false_holds_for_a_batchnorm_student():
    """ddp_broadcast_buffers: false saves the per-step broadcast of a BatchNorm student's statistics;
    read as unset, DDP's default (on) came back without a word (kills: only a true setting kept)."""
    assert default_broadcast_buffers(tiny_resnet(), False) is False
    assert default_broadcast_buffers(tiny_resnet(), True) is True


def test_fsdp_puts_the_teacher_it_leaves_unsharded_on_the_training_device():
    """FSDP moves only what it shards: the teacher it ignores stayed on the CPU while the student
    trained on the GPU, and the first forward failed on mixed devices ('meta' stands in for the GPU)."""
    from types import SimpleNamespace

    from hf_rcka.modeling.parallel import keep_teacher_out_of_fsdp

    model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), KDLoss()])
    plugin = SimpleNamespace(ignored_modules=None)
    assert keep_teacher_out_of_fsdp(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)), model, "meta")
    assert {t.device.type for t in (*model.teacher.parameters(), *model.teacher.buffers())} == {"meta"}
    assert {p.device.type for p in model.student.parameters()} == {"cpu"}  # FSDP's to place


def test_the_teacher_stays_in_eval_mode_from_construction_and_train_does_not_walk_it():
    """The teacher runs in eval mode (its BatchNorm statistics and dropout frozen) from the moment it
    is wrapped, before any train()/eval() call (kills: eval() at construction dropped), and is put
    back when something else switched it to training (kills: the check in train() dropped);
    train() does not walk a teacher already in eval mode, 1.5-3 ms of host time a step for a large
    one (kills: train(mode) sent to every child)."""
    teacher = tiny_resnet().train()
    model = DistillationModel(tiny_vit(), teacher, [CrossEntropyLoss(), KDLoss()])
    assert not teacher.training and not any(m.training for m in teacher.modules())
    x, y = _batch()
    stats = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k}
    model(pixel_values=x, labels=y)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in stats.items())
    teacher.train()
    model.train()
    assert model.student.training and not any(m.training for m in teacher.modules())
    calls = []
    teacher.train = lambda mode=True: calls.append(mode) or teacher
    model.train()
    model.eval()
    assert calls == []


def test_a_class_token_of_a_short_sequence_is_copied_too():
    """The class token of a short sequence (a ViT at a small image size: 1 + 8 tokens) still keeps
    9 times its size alive through the backward when handed over as a view; a view is kept only
    while its storage is at most twice its size (kills: a threshold far above 2). The copy keeps the
    view's order of strides, each sample's row in one piece (kills: the copy made in reverse order)."""
    runtime = TeacherRuntime(tiny_vit().eval())
    sequence = torch.randn(4, 1 + 8, 8)
    pooled = runtime.release(sequence[:, 0])
    assert torch.equal(pooled, sequence[:, 0])
    assert pooled.untyped_storage().nbytes() == pooled.numel() * pooled.element_size() and pooled.is_contiguous()
    twice = torch.randn(4, 2, 8)[:, 0]  # at most twice: no copy
    assert runtime.release(twice) is twice


def test_batchnorm_without_running_statistics_leaves_nothing_to_broadcast():
    """BatchNorm with track_running_stats=False normalises by each batch and keeps no statistics: DDP's
    per-step buffer broadcast has nothing to keep in sync, so it stays off by default (kills: every
    BatchNorm counted as holding running statistics)."""
    from torch import nn

    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert not has_running_stats(student) and default_broadcast_buffers(student, None) is False
    assert has_running_stats(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


def test_share_running_stats_sends_rank_0s_every_running_statistic(monkeypatch):
    """Before an evaluation over several processes every rank takes rank 0's BatchNorm statistics
    (the export's). Only a 2-process run showed a mutant that skipped it; one that sent the first
    buffer alone (running_mean, not running_var) passed every test. Faked here: no process group."""
    from types import SimpleNamespace

    from torch import nn

    from hf_rcka.modeling import parallel

    sent, world = [], [2]
    monkeypatch.setattr(parallel, "dist", SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True, get_world_size=lambda: world[0],
        broadcast=lambda tensor, src: sent.append((tensor.data_ptr(), src))))
    norm, untracked = nn.BatchNorm2d(3), nn.BatchNorm2d(3, track_running_stats=False)
    student = nn.Sequential(nn.Conv2d(3, 3, 1), norm, untracked, nn.Sequential(nn.BatchNorm1d(2)), nn.LayerNorm(2))
    parallel.share_running_stats(student)
    inner = student[3][0]
    expected = [b.data_ptr() for m in (norm, inner) for b in (m.running_mean, m.running_var, m.num_batches_tracked)]
    assert sent == [(ptr, 0) for ptr in expected]
    sent.clear()
    world[0] = 1  # one process: nothing to share
    parallel.share_running_stats(student)
    assert sent == []
