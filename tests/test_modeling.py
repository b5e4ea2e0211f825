"""DistillationModel: per-call features come back by value; nothing stays on a module between calls."""

import gc
import weakref
from unittest import mock

import pytest
import torch
from conftest import IMAGENET_MEAN, IMAGENET_STD, processor, tiny_resnet, tiny_vit

from hf_rcka.features.capture import Captured, ForwardCapture, HiddenStateCapture, PooledCapture
from hf_rcka.features.hidden_states import classifier_of
from hf_rcka.losses import CrossEntropyLoss, FeatureCKALoss, PatchCKALoss, SRDLoss
from hf_rcka.modeling import DistillationModel
from hf_rcka.modeling.teacher_inputs import input_stats


def _model(*losses) -> DistillationModel:
    return DistillationModel(
        tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), *losses], feature_pairs="auto",
        student_input=input_stats(processor(16)),
        teacher_input=input_stats(processor(24, IMAGENET_MEAN, IMAGENET_STD)),
    )


def _batch(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=generator), torch.arange(n) % 3


def _loose_tensors(model: DistillationModel) -> list[str]:
    """Tensors held by the model outside its parameters and buffers, or by its captures."""
    found = [name for name, value in vars(model).items() if isinstance(value, torch.Tensor)]
    for role, capture in model._captures.items():
        parts = {"pooled": capture.pooled, "hidden": capture.hidden}
        for part_name, part in parts.items():
            for name, value in (vars(part) if part is not None else {}).items():
                values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
                if any(isinstance(v, torch.Tensor) for v in values):
                    found.append(f"{role}.{part_name}.{name}")
    return found


def _head_inputs(model: DistillationModel) -> tuple[list[weakref.ref], list]:
    """Weak references to every tensor the two heads receive (the pooled features)."""
    refs: list[weakref.ref] = []
    handles = [
        classifier_of(m).register_forward_pre_hook(lambda _m, args: refs.append(weakref.ref(args[0])))
        for m in (model.student, model.teacher)
    ]
    return refs, handles


def test_pooled_features_reach_the_losses_by_value():
    model = _model(SRDLoss())
    pixels, labels = _batch()
    out = model.train()(pixel_values=pixels, labels=labels)
    assert set(out.loss_terms) == {"ce", "srd"} and torch.isfinite(out.loss_terms["srd"])
    out.loss_terms["srd"].backward()
    assert model.student.classifier.weight.grad is None, "srd reads the pooled feature, not the logits"
    assert any(p.grad is not None for p in model.student.vit.parameters())
    assert not hasattr(model, "_pooled") and _loose_tensors(model) == []


@pytest.mark.parametrize("with_labels", [False, True])
def test_an_eval_forward_leaves_no_tensor_behind(with_labels: bool):
    model = _model(SRDLoss(), FeatureCKALoss()).eval()
    pixels, labels = _batch()
    model.train()(pixel_values=pixels, labels=labels)  # a training step first: its features must not linger
    model.eval()
    refs, handles = _head_inputs(model)
    with torch.no_grad():
        out = model(pixel_values=pixels, labels=labels if with_labels else None)
    for handle in handles:
        handle.remove()
    assert (out.loss_terms is not None) == with_labels
    assert len(refs) == (2 if with_labels else 1), "prediction runs the student alone"
    del out
    gc.collect()
    assert all(ref() is None for ref in refs), "a pooled feature outlived its forward"
    assert _loose_tensors(model) == []


def _probe_batches(*models: torch.nn.Module) -> list[list[int]]:
    """Per model, the batch size of each forward it runs from now on (a forward pre-hook)."""
    batches: list[list[int]] = [[] for _ in models]
    for model, seen in zip(models, batches):
        model.register_forward_pre_hook(lambda _m, _args, kwargs, seen=seen: seen.append(len(kwargs["pixel_values"])),
                                        with_kwargs=True)
    return batches


@pytest.mark.parametrize("channels_last, teacher_batches", [(False, [2, 2]), (True, [1, 2, 2])])
def test_building_probes_each_model_once_for_the_description_and_the_choice(channels_last, teacher_batches):
    """One probe forward of each model serves the description of its hidden states and the
    capture's choice of how to take them (its reference, and which module makes which state);
    the mode tried (hooks here) runs one more. They ran four forwards each: the description, the
    reference, the module search and the try. A teacher that its runtime makes NHWC afterwards
    is described on one image (the description reads shapes and storages alone) and probed
    again as it runs, for the choice."""
    student, teacher = tiny_vit(), tiny_resnet()
    batches = _probe_batches(student, teacher)
    model = DistillationModel(
        student, teacher, [CrossEntropyLoss(), FeatureCKALoss()], feature_pairs="auto",
        student_input=input_stats(processor(16)),
        teacher_input=input_stats(processor(24, IMAGENET_MEAN, IMAGENET_STD)), teacher_channels_last=channels_last,
    )
    assert {role: capture.hidden.mode for role, capture in model._captures.items()} == {"student": "hooks",
                                                                                         "teacher": "hooks"}
    assert batches == [[2, 2], teacher_batches]


def test_pooled_capture_records_only_inside_its_block():
    model = tiny_resnet()
    capture = PooledCapture(model)
    pixels = _batch()[0]
    with torch.no_grad():
        model(pixel_values=pixels)  # a plain forward: nothing recorded
        assert capture._record is None
        with capture.capturing() as record:
            model(pixel_values=pixels)
    assert capture._record is None and len(record) == 1 and record[0].shape == (5, 20)
    capture.remove()


def test_pooled_capture_flattens_the_input_of_a_1x1_convolution_head():
    """A head that is a 1x1 convolution (timm's conv classifiers) takes (B, C, 1, 1): the pooled feature
    the losses read must be (B, C), as SRD's projector and EKT's class centres take it."""
    from torch import nn

    class ConvHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.classifier = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 3, 1)

        def forward(self, pixel_values):
            return self.classifier(self.stem(pixel_values).mean((2, 3), keepdim=True)).flatten(1)

    model = ConvHead()
    capture = PooledCapture(model)
    with torch.no_grad(), capture.capturing() as record:
        model(pixel_values=torch.randn(5, 3, 8, 8))
    assert len(record) == 1 and record[0].shape == (5, 8)
    capture.remove()


def test_forward_capture_returns_states_and_pooled_together():
    model = tiny_vit()
    pixels = _batch()[0]
    capture = ForwardCapture(model, [1], pixels[:2], pooled=True)
    assert isinstance(capture.hidden, HiddenStateCapture)
    with torch.no_grad():
        result = capture(pixels)
    assert isinstance(result, Captured)
    assert set(result.states) == {1} and result.states[1].shape == (5, 17, 36)
    assert result.pooled.shape == (5, 36) and result.outputs.logits.shape == (5, 3)
    plain = ForwardCapture(model)
    assert plain.hidden is None and plain.pooled is None
    with torch.no_grad():
        assert plain(pixels).states == {} and plain(pixels).pooled is None


def _cnn_student_model(*losses) -> DistillationModel:
    """A ResNet student (widths 8-20) under the ViT (width 36): every teacher stage is wider."""
    return DistillationModel(
        tiny_resnet(), tiny_vit(), [CrossEntropyLoss(), *losses], feature_pairs="auto",
        student_input=input_stats(processor(16)), teacher_input=input_stats(processor(16)),
    )


def test_patch_cka_alone_samples_teacher_channels_and_feature_cka_turns_it_off():
    sampled = _cnn_student_model(PatchCKALoss()).adapters
    assert sampled and all(a.sample_channels == a.student_spec.channels < a.teacher_spec.channels for a in sampled)
    assert all(a.sample_channels is None for a in _cnn_student_model(FeatureCKALoss(), PatchCKALoss()).adapters)


def test_building_the_adapters_draws_nothing_from_the_global_random_stream():
    """The alignment check runs in eval mode: no channel draw shifts what is initialised next."""
    after = []
    for losses in ([PatchCKALoss()], [FeatureCKALoss(), PatchCKALoss()]):  # sampling on / off
        model = _cnn_student_model(*losses)  # seeds its models itself
        after.append(torch.rand(3))
    assert model.adapters[0].sample_channels is None
    torch.testing.assert_close(after[0], after[1])


def test_train_mode_reaches_everything_but_the_teacher_without_walking_it_each_step(monkeypatch):
    model = _model(FeatureCKALoss())
    model.train()
    assert all(m.training for m in model.student.modules()) and all(m.training for m in model.adapters.modules())
    assert not any(m.training for m in model.teacher.modules())
    model.teacher.train()  # someone switched it: the next train() puts every teacher module back
    model.train()
    assert not any(m.training for m in model.teacher.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    walked = []
    monkeypatch.setattr(type(model.teacher), "train", lambda self, mode=True: walked.append(mode) or self)
    model.train()  # Trainer calls this every step: a teacher in eval mode is not walked
    assert walked == [] and model.student.training


def test_a_compiled_evaluation_under_autocast_compiles_once():
    """An autocast object made per batch and handed to _forward: torch.compile guarded on it and
    compiled the whole forward again at every evaluation batch, until its recompile limit."""
    import torch._dynamo

    torch._dynamo.reset()
    model = _model(FeatureCKALoss()).eval()
    compiled = torch.compile(model, backend="eager")
    graphs = []
    for seed in range(4):
        x, y = _batch()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            compiled(pixel_values=x + seed, labels=y)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    assert graphs[1] == graphs[-1], f"graphs compiled after each batch: {graphs}"


def test_the_teachers_outputs_break_no_compiled_graph():
    """Each output's storage size was read to decide on a copy, which dynamo cannot trace: one
    graph break per teacher output (10-17 a compile), and the function compiled again per shape."""
    import torch._dynamo

    from hf_rcka.modeling.teacher_runtime import TeacherRuntime

    runtime = TeacherRuntime(tiny_vit())
    tokens = torch.randn(4, 17, 8)

    def outputs(tokens):
        return runtime.release(tokens[:, 0]), runtime.release(tokens), runtime.release(tokens[:, 1:])

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    pooled, whole, patches = torch.compile(outputs, backend="eager")(tokens)
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    torch._dynamo.reset()
    assert breaks == 0
    # the views that keep the whole sequence alive are copied, as eagerly, and equal
    assert pooled.is_contiguous() and patches.is_contiguous() and whole.data_ptr() == tokens.data_ptr()
    assert torch.equal(pooled, tokens[:, 0]) and torch.equal(patches, tokens[:, 1:])


def test_a_training_step_reads_nothing_back_from_the_device():
    """Every read from an accelerator stalls the step until the device catches up: EKT's bincount
    and boolean masks did 10 a step, the RBF bandwidth's mask one per Gram. On the CPU the reads
    are recorded as the operators that cause them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from hf_rcka.losses import KernelTransferLoss, RCKALoss

    reads = {"aten.nonzero", "aten._local_scalar_dense", "aten.bincount", "aten.masked_select", "aten.unique"}

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            boolean_index = name == "aten.index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())
            if name in reads or boolean_index:
                self.seen.append(name)
            return func(*args, **(kwargs or {}))

    for losses in ([KernelTransferLoss(), RCKALoss(kernel="rbf")], [KernelTransferLoss(centres="epoch"), FeatureCKALoss()]):
        model = _model(*losses).train()
        x, y = _batch()
        model(pixel_values=x, labels=y)  # the first step takes the class means as they are
        with Reads() as recorded:
            output = model(pixel_values=x, labels=y)
            output.loss.backward()
        assert recorded.seen == [], f"{[type(l).__name__ for l in losses]}: {recorded.seen}"


def test_a_feature_pair_whose_grid_patch_cka_cannot_relate_is_refused_or_left_out_of_auto(caplog):
    """At a small image size the deepest stage is 1 x 1: patch_cka on it is a constant, and the
    pair trained nothing, its term logged as 0 at every step, without a word (CIFAR's 32 px)."""
    from hf_rcka.errors import RecipeError

    with caplog.at_level("WARNING", logger="hf_rcka"):
        model = _model(PatchCKALoss())  # the teacher's last stage is 1 x 1 at 24 px
    assert [(p.student_layer, p.teacher_layer) for p in model.feature_pairs] == [(1, 2)] and len(model.adapters) == 1
    assert "teacher 4 [nchw 20ch 1x1, stride 24] left out of the automatic pairs: patch_cka" in caplog.text
    with pytest.raises(RecipeError, match=r"feature_pairs\[0\] .*this 1x1 map holds 1 \(CKA over fewer than 3"):
        DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), PatchCKALoss()],
                          feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "adapter": "patch_match"}],
                          student_input=input_stats(processor(16)), teacher_input=input_stats(processor(24)))
    with pytest.raises(RecipeError, match="auto found no pair of hidden states the feature losses can learn from"):
        DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), PatchCKALoss()], feature_pairs="auto",
                          student_input=input_stats(processor(16)), teacher_input=input_stats(processor(4)))


def test_the_teacher_sides_held_through_the_student_forward_are_the_prepared_ones():
    """A CNN student under a wider ViT teacher: patch_match samples the teacher's channels. What
    the teacher's run hands on is each pair's sampled map, not a view keeping its hidden state."""
    from hf_rcka.adapters.patch_match import PreparedTeacher

    model = _cnn_student_model(PatchCKALoss()).train()
    model._reducing_loss = None  # the maps themselves (patch CKA would hold their Grams: next test)
    x, _ = _batch()
    sides = model._teacher_sides(model._run_teacher(x)[2])
    assert len(sides) == len(model.adapters) > 0
    for side, adapter in zip(sides, model.adapters):
        assert isinstance(side, PreparedTeacher)
        assert side.fmap.shape[1] == adapter.sample_channels < adapter.teacher_spec.channels
        assert side.fmap.untyped_storage().nbytes() == side.fmap.numel() * side.fmap.element_size()


@pytest.mark.parametrize("build", [_model, _cnn_student_model], ids=["cnn_teacher", "vit_teacher"])
def test_patch_cka_holds_each_teacher_side_as_its_patch_grams_in_training_with_the_same_losses(build):
    """Patch CKA alone reads the pairs: in training, patch_match hands the reduction the teacher's
    map on the common grid, and what is held through the student's forward is its per-channel
    patch Grams (the sampled channels stay for the projection). Terms and the student's and
    projections' gradients are those of the maps. Evaluation, which may drop an image's stand-in
    from the batch, holds the maps."""
    from hf_rcka.adapters.patch_match import PreparedTeacher
    from hf_rcka.functional import PatchGramSide
    from hf_rcka.losses import IGNORE_INDEX

    model = build(PatchCKALoss()).train()
    pixels, labels = _batch(16)  # (at batch 5 the tiny maps' Grams would be no smaller than the maps)
    sides = model._teacher_sides(model._run_teacher(pixels)[2])
    assert sides and all(isinstance(side, PreparedTeacher) and isinstance(side.fmap, PatchGramSide) for side in sides)
    for side, adapter in zip(sides, model.adapters):
        channels = adapter.teacher_spec.channels if side.channels is None else len(side.channels)
        assert side.fmap.shape[:2] == (16, channels) and side.fmap.shape[2:] == adapter.grid
    model.eval()
    assert not any(isinstance(side.fmap, PatchGramSide) for side in model._teacher_sides(model._run_teacher(pixels)[2]))
    eval_labels = labels.clone()
    eval_labels[2] = IGNORE_INDEX
    loss = model.losses["patch_cka"]
    made = []
    loss.reduce_teacher_feature = lambda fmap: made.append(type(loss).reduce_teacher_feature(loss, fmap)) or made[-1]

    def run(batch_labels):
        terms, grads = _terms_and_grads(model, pixels, batch_labels)
        return terms, grads + [p.grad.clone() for p in model.adapters.parameters() if p.grad is not None]

    for mode, batch_labels in ((True, labels), (False, eval_labels)):
        model.train(mode)
        made.clear()
        reduced_terms, reduced_grads = run(batch_labels)
        assert len(made) == len(model.adapters) and all(isinstance(m, PatchGramSide) == mode for m in made)
        model._reducing_loss = None
        whole_terms, whole_grads = run(batch_labels)
        model._reducing_loss = "patch_cka"
        assert reduced_terms.keys() == whole_terms.keys() == {"ce", "patch_cka"}
        for name in whole_terms:
            torch.testing.assert_close(reduced_terms[name], whole_terms[name], rtol=1e-5, atol=1e-6)
        trained = len(list(model.student.parameters())) + len(list(model.adapters.parameters()))
        assert len(reduced_grads) == len(whole_grads) == (trained if mode else 0)
        for got, expected in zip(reduced_grads, whole_grads):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def _terms_and_grads(model: DistillationModel, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[dict, list]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(pixel_values=pixels, labels=labels)
    if model.training:
        out.loss.backward()
    return ({k: v.detach() for k, v in out.loss_terms.items()},
            [p.grad.clone() for p in model.student.parameters() if p.grad is not None])


@pytest.mark.parametrize("build", [_model, _cnn_student_model], ids=["cnn_teacher", "vit_teacher"])
def test_feature_cka_holds_each_teacher_side_as_its_gram_with_the_same_losses(build):
    """Alone among the feature losses, feature CKA reduces each teacher side to its B x B Gram right
    after the teacher's forward, so the stages are not held through the student's forward; the
    terms and the student's gradients are those of the whole features, in training and in an
    evaluation that drops an unreadable image's stand-in."""
    from hf_rcka.functional import GramSide
    from hf_rcka.losses import IGNORE_INDEX

    model = build(FeatureCKALoss()).train()
    pixels, labels = _batch()
    sides = model._teacher_sides(model._run_teacher(pixels)[2])
    assert sides and all(isinstance(side, GramSide) and side.gram.shape == (5, 5) for side in sides)
    eval_labels = labels.clone()
    eval_labels[2] = IGNORE_INDEX
    for mode, batch_labels in ((True, labels), (False, eval_labels)):
        model.train(mode)
        reduced_terms, reduced_grads = _terms_and_grads(model, pixels, batch_labels)
        model._reducing_loss = None
        whole_terms, whole_grads = _terms_and_grads(model, pixels, batch_labels)
        model._reducing_loss = "feature_cka"
        assert reduced_terms.keys() == whole_terms.keys() == {"ce", "feature_cka"}
        for name in whole_terms:
            torch.testing.assert_close(reduced_terms[name], whole_terms[name], rtol=1e-5, atol=1e-6)
        assert len(reduced_grads) == len(whole_grads) == (len(list(model.student.parameters())) if mode else 0)
        for got, expected in zip(reduced_grads, whole_grads):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_a_loss_that_reduces_no_teacher_side_gets_no_adapter_work_for_it():
    """FitNets alone on patch_match pairs with a grid finer than the teacher's map: the adapter
    would grow the map to hand it to a reduction that returns None, and grow it again in forward."""
    from hf_rcka.losses.fitnet import FitNetLoss

    model = DistillationModel(
        tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), FitNetLoss()],
        feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "adapter": "patch_match", "grid": "student"}],
        student_input=input_stats(processor(16)), teacher_input=input_stats(processor(24)),
    ).train()
    adapter = model.adapters[0]
    assert adapter.grid != adapter.teacher_spec.grid  # the map would be grown
    calls = []
    adapter.reduce_teacher = lambda side, reduce: calls.append(side) or side
    model(*_batch()).loss.backward()
    assert calls == []


@pytest.mark.parametrize("losses", [
    [FeatureCKALoss(gather=True)], [FeatureCKALoss(kernel="rbf")], [FeatureCKALoss(), PatchCKALoss()],
], ids=["gather", "rbf", "with_patch_cka"])
def test_teacher_sides_stay_whole_where_a_gram_would_not_serve(losses):
    """Under gather the Gram needs every rank's rows, the RBF kernel reads distances, and another
    loss reading the same pairs needs the features: then no side is reduced. The loss's None (the
    feature whole) keeps the side itself: taken as the side, it reached the loss as None."""
    from hf_rcka.functional import GramSide

    model = _model(*losses).train()
    sides = model._teacher_sides(model._run_teacher(_batch()[0])[2])
    assert sides and not any(isinstance(side, GramSide) for side in sides)
    assert all(side is not None for side in sides)
    model(*_batch()).loss.backward()


def _backward_order(loss: torch.Tensor, nodes: dict[str, torch.autograd.graph.Node]) -> list[str]:
    """The order in which autograd runs the backward of the named nodes."""
    order: list[str] = []
    handles = [node.register_prehook(lambda grads, name=name: order.append(name)) for name, node in nodes.items()]
    loss.backward()
    for handle in handles:
        handle.remove()
    return order


def _find_node(node: torch.autograd.graph.Node, name: str) -> torch.autograd.graph.Node:
    seen, todo = set(), [node]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        if name in node.name():
            return node
        seen.add(node)
        todo.extend(next_node for next_node, _ in node.next_functions)
    raise AssertionError(f"no {name} node")


def _last_stage_output(model: DistillationModel) -> list[torch.Tensor]:
    kept: list[torch.Tensor] = []
    model.student.resnet.encoder.stages[-1].register_forward_hook(lambda _m, _a, out: kept.append(out))
    return kept


def _recording_student_sides(model: DistillationModel) -> dict[int, dict]:
    """Wraps the model's student-side preparation to keep what it made, by hidden-state index."""
    made: dict[int, dict] = {}
    prepare = model._student_sides

    def recording(index, state):
        made[index] = prepare(index, state)
        return made[index]

    model._student_sides = recording
    return made


def test_feature_cka_reduces_a_cnn_students_stages_where_the_student_makes_them():
    """With the identity adapter, feature CKA reduces each student stage to its Gram inside the
    student's forward (the capture hooks the stage). Of the backward steps ready to run, autograd
    runs the one created last, so the Gram's backward, which hands back the whole stage's gradient,
    runs after the backward of the student's later stages: that gradient is not held through them.
    Made after the forward, the Gram's backward ran first. (The terms and gradients are those of
    the whole features: test_feature_cka_holds_each_teacher_side_as_its_gram_with_the_same_losses.)"""
    from hf_rcka.functional import GramSide

    model = _cnn_student_model(FeatureCKALoss()).train()
    assert model._captures["student"].hidden.mode == "hooks"
    last_stage, made = _last_stage_output(model), _recording_student_sides(model)
    out = model(pixel_values=_batch()[0], labels=_batch()[1])
    sides = [side for index in sorted(made) for side in made[index].values()]
    assert len(sides) == len(model.feature_pairs) > 1
    assert all(isinstance(side, GramSide) and side.gram.requires_grad and side.gram.shape == (5, 5) for side in sides)
    order = _backward_order(out.loss, {"first pair's gram": sides[0].gram.grad_fn, "last stage": last_stage[-1].grad_fn})
    assert order == ["last stage", "first pair's gram"]


def test_patch_match_pools_a_cnn_students_stage_where_the_student_makes_it():
    """patch_match pools a student stage finer than the common grid inside the student's forward,
    so the pooling's backward (a gradient of the whole stage) runs after the student's later
    stages' backward; the pair is what the adapter makes of the state itself."""
    from hf_rcka.adapters.patch_match import PreparedStudent

    from hf_rcka.features.pairing import FeaturePair

    model = DistillationModel(  # the first stage, 8 x 8 at 32 px, for the ViT's 4 x 4 grid
        tiny_resnet(), tiny_vit(), [CrossEntropyLoss(), PatchCKALoss()], feature_pairs=[FeaturePair(1, 1, "patch_match")],
        student_input=input_stats(processor(32)), teacher_input=input_stats(processor(16)),
    ).train()
    assert model._captures["student"].hidden.mode == "hooks"
    last_stage, made = _last_stage_output(model), _recording_student_sides(model)
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = model(pixel_values=pixels, labels=_batch()[1])
    pooled = [side for index in sorted(made) for side in made[index].values()
              if isinstance(side, PreparedStudent) and side.fmap.grad_fn is not None
              and "AdaptiveAvgPool" in side.fmap.grad_fn.name()]
    assert pooled, "no student stage was pooled: the test needs a stage finer than the grid"
    order = _backward_order(out.loss, {"pooling": pooled[0].fmap.grad_fn, "last stage": last_stage[-1].grad_fn})
    assert order == ["last stage", "pooling"]
    # the adapter makes the same pair of a raw state as of the state it prepared
    adapter, state = model.adapters[0], torch.randn(2, *model.adapters[0].student_spec.shape)
    teacher = torch.randn(2, *adapter.teacher_spec.shape)
    torch.manual_seed(3)
    direct = adapter(state, teacher)
    torch.manual_seed(3)
    prepared = adapter(adapter.prepare_student(state), teacher)
    for a, b in zip(direct, prepared):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_a_stage_prepared_inside_a_checkpointed_region_trains_as_without_it(reentrant):
    """Accelerate's FSDP activation checkpointing wraps a layer in a checkpoint, with the capture's
    hook inside: the Gram made there must not count among the region's saved tensors (its
    recomputation runs with the hook off, and the checkpoint refuses a different count). A
    reentrant checkpoint runs the region without gradient: the stage gets its gradient only when
    the region returns, so a Gram made inside would train nothing, silently."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    impl = CheckpointImpl.REENTRANT if reentrant else CheckpointImpl.NO_REENTRANT
    results = []
    for wrap in (False, True):
        model = _cnn_student_model(FeatureCKALoss()).train()
        if wrap:  # the hooks stay on the stages, now inside the checkpoints
            stages = model.student.resnet.encoder.stages
            for i, stage in enumerate(stages):
                stages[i] = checkpoint_wrapper(stage, checkpoint_impl=impl)
        results.append(_terms_and_grads(model, *_batch()))
    (terms, grads), (wrapped_terms, wrapped_grads) = results
    torch.testing.assert_close(wrapped_terms, terms)
    assert len(grads) == len(wrapped_grads) > 0
    for got, expected in zip(wrapped_grads, grads):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("architecture", ["resnet10t", "mobilenetv3_small_050"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_keeps_batchnorm_statistics_as_without_it(architecture, reentrant):
    """The recomputation updated every BatchNorm's statistics a second time; and where a block ends in
    a BatchNorm (MobileNet's), a non-reentrant checkpoint stops recomputing inside that call, so a
    forward hook that restored the momentum never ran and the layer stayed at momentum 0 for good."""
    from hf_rcka.models.label_maps import LabelMaps
    from hf_rcka.models.timm_models import build_timm_classifier
    from hf_rcka.modeling.recomputed_norms import keep_statistics_in_recomputation

    buffers = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        student = build_timm_classifier(architecture, LabelMaps.default(3)).train()
        if checkpointing:
            student.timm_model.set_grad_checkpointing(True)
            keep_statistics_in_recomputation(student)
        for step in range(3):
            pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step))
            with mock.patch("timm.models._manipulate.use_reentrant_ckpt", return_value=reentrant):
                student(pixel_values=pixels).logits.sum().backward()
        buffers.append({k: v.clone() for k, v in student.state_dict().items() if "running" in k or "tracked" in k})
        assert all(m.momentum == 0.1 for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert buffers[0].keys() == buffers[1].keys() and buffers[0]
    for key, value in buffers[0].items():
        torch.testing.assert_close(buffers[1][key], value, msg=key)


def test_a_backward_that_raised_leaves_no_batchnorm_paused():
    """An error inside the recomputation (an out-of-memory error, which auto_find_batch_size retries)
    skipped the callback that restores the momentum: the layer stayed at momentum 0 for good."""
    from hf_rcka.modeling.recomputed_norms import keep_statistics_in_recomputation

    norm = torch.nn.BatchNorm1d(4)
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), norm)
    keep_statistics_in_recomputation(block)
    fail = [True]

    def run(x):
        out = block(x)
        if fail[0] and torch._C._current_graph_task_id() != -1:
            raise RuntimeError("out of memory (simulated)")
        return out

    x = torch.randn(8, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="simulated"):
        torch.utils.checkpoint.checkpoint(run, x, use_reentrant=True).sum().backward()
    fail[0] = False
    torch.utils.checkpoint.checkpoint(run, x, use_reentrant=True).sum().backward()
    assert norm.momentum == 0.1 and int(norm.num_batches_tracked) == 2, "two forward passes, each counted once"
    assert "_paused_momentum" not in norm.__dict__


def test_a_batchnorm_hooked_again_for_wrapped_checkpoints_counts_each_step_once():
    """Under FSDP's activation_checkpointing the trainer hooks the student's BatchNorms again at
    every train() (keep_statistics_in_wrapped_checkpoints), also where the student checkpoints of
    its own and activation_checkpointing_enable hooked them already: a second hook on a layer took
    each recomputation back twice, and num_batches_tracked ran backwards a step at a time."""
    from hf_rcka.models.label_maps import LabelMaps
    from hf_rcka.models.timm_models import build_timm_classifier

    student = build_timm_classifier("resnet10t", LabelMaps.default(3))
    model = DistillationModel(student, None, [CrossEntropyLoss()])
    model.activation_checkpointing_enable()
    model.keep_statistics_in_wrapped_checkpoints()  # the first train()
    model.keep_statistics_in_wrapped_checkpoints()  # a second train() of the same trainer
    norms = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    model.train()
    for step in range(2):
        pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step))
        model(pixel_values=pixels, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
        assert all(int(norm.num_batches_tracked) == step + 1 for norm in norms), f"step {step}"
        assert all(norm.momentum == 0.1 for norm in norms)
    assert all(len(norm._forward_pre_hooks) == 1 for norm in norms)


def test_a_batchnorm_called_twice_in_a_checkpointed_block_keeps_its_statistics_as_without_it():
    """A block that calls one BatchNorm twice (shared weights): the second recomputed call paused
    the momentum again, saving the 0 the first had set, and counted its calls anew; the layer stayed
    at momentum 0 for good, or num_batches_tracked went up a step each step the layer was recomputed."""
    from hf_rcka.modeling.recomputed_norms import keep_statistics_in_recomputation

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.norm = torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)

        def forward(self, x):
            return self.norm(self.linear(self.norm(x)))

    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        block = Twice()
        if checkpointing:
            keep_statistics_in_recomputation(block)
        for step in range(3):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step), requires_grad=True)
            out = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
            out.square().sum().backward()
        assert block.norm.momentum == 0.1
        results.append({k: v.clone() for k, v in block.norm.state_dict().items() if "running" in k or "tracked" in k})
    assert int(results[0]["num_batches_tracked"]) == 6
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, msg=key)


def test_a_batchnorm_in_eval_mode_recomputed_in_a_backward_keeps_its_count():
    """A BatchNorm in eval mode counts no batch, in the forward or its recomputation: the hook took
    its recomputed calls back all the same, and a student whose norms were frozen in eval mode (or
    a gradient taken through an evaluated, checkpointed student) had num_batches_tracked run below 0."""
    from hf_rcka.modeling.recomputed_norms import keep_statistics_in_recomputation

    norm = torch.nn.BatchNorm1d(4)
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), norm)
    keep_statistics_in_recomputation(block)
    norm.eval()
    x = torch.randn(8, 4, requires_grad=True)
    torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).square().sum().backward()
    torch.utils.checkpoint.checkpoint(block, x, use_reentrant=True).square().sum().backward()
    assert int(norm.num_batches_tracked) == 0 and norm.momentum == 0.1


def test_a_timm_student_checkpointing_its_stages_has_its_states_taken_by_timm_again():
    """timm's checkpoint_seq runs a stage's blocks, never the stage: a hook on the stage would see
    nothing. Turning checkpointing on chooses the capture anew; the step trains as without it."""
    from hf_rcka.models.label_maps import LabelMaps
    from hf_rcka.models.timm_models import build_timm_classifier

    results, statistics = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        student = build_timm_classifier("resnet10t", LabelMaps.default(3))
        model = DistillationModel(student, tiny_vit(), [CrossEntropyLoss(), FeatureCKALoss()], feature_pairs="auto",
                                  student_input=input_stats(processor(32)), teacher_input=input_stats(processor(16))).train()
        assert model._captures["student"].hidden.mode == "hooks"  # the Grams are made inside the forward
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model._captures["student"].hidden.mode == "timm"
        pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        results.append(_terms_and_grads(model, pixels, _batch()[1]))
        statistics.append({k: v.clone() for k, v in student.state_dict().items() if "running" in k or "tracked" in k})
    (terms, grads), (checkpointed_terms, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed_terms, terms)
    # the recomputation inside the backward updated every BatchNorm's statistics a second time
    assert statistics[1].keys() == statistics[0].keys() and any("num_batches_tracked" in k for k in statistics[0])
    for key, value in statistics[0].items():
        torch.testing.assert_close(statistics[1][key], value, msg=key)
    assert len(grads) == len(checkpointed_grads) > 0
    for got, expected in zip(checkpointed_grads, grads):
        torch.testing.assert_close(got, expected)


def test_the_models_output_holds_only_what_data_parallel_gathers():
    """Trainer wraps the model in torch's nn.DataParallel with several GPUs in one process; its
    gather takes tensors, mappings and sequences of them and None, and fails on a plain number."""
    model = _model()
    pixels, labels = _batch()

    def gatherable(value) -> bool:
        if isinstance(value, dict):
            return all(gatherable(v) for v in value.values())
        return value is None or isinstance(value, torch.Tensor)

    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            out = model(pixel_values=pixels, labels=labels)
        assert all(gatherable(value) for value in vars(out).values()), {k: type(v) for k, v in vars(out).items()}
