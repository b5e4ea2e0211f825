"""Only the hidden states the pairs use: the same tensors as output_hidden_states=True, fewer kept."""

from types import SimpleNamespace

import pytest
import torch

from hf_rcka.features.capture import HiddenStateCapture
from hf_rcka.features.hidden_states import forward_with_hidden_states, hidden_states_of

from _models import FAMILIES, pixels

# One family per capture path and model kind; the rest of FAMILIES take the same paths.
CASES = {
    "hf_vit": "hooks",
    "hf_resnet": "hooks",
    "hf_convnext": "hooks",
    "hf_swin": None,  # reshaped states are copies: hooks cannot see them, "all" is the honest fallback
    "hf_hiera": "all",  # re-rolled channels-last copies; its blocks' outputs are tokens in mask-unit order
    "hf_levit": "hooks",  # its stage ends are the subsamplings' inputs, which the blocks before them return
    "timm_vit": "timm_tokens",
    "timm_resnet": "timm",
    "timm_regnet": "timm",
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_capture_equals_the_full_hidden_states(family):
    spec = FAMILIES[family]
    model = spec.build().train()
    x = pixels(spec.image_size)
    with torch.no_grad():
        model.eval()
        full = hidden_states_of(forward_with_hidden_states(model, x))
        model.train()
    indices = sorted({1, len(full) - 1})
    capture = HiddenStateCapture(model, indices, x[:2])
    if CASES[family] is not None:
        assert capture.mode == CASES[family]
    assert model.training and all(m.training for m in model.modules()), "the probe must restore train mode"
    model.eval()
    with torch.no_grad():
        outputs, states = capture(x)
    assert sorted(states) == indices
    for i in indices:
        torch.testing.assert_close(states[i], full[i], rtol=0, atol=0)
    if capture.mode != "all":
        assert getattr(outputs, "hidden_states", None) is None or len(outputs.hidden_states) == len(indices)


def test_hooked_states_carry_the_student_graph():
    model = FAMILIES["hf_vit"].build().train()
    capture = HiddenStateCapture(model, [1], pixels()[:2])
    outputs, states = capture(pixels())
    assert capture.mode == "hooks" and states[1].requires_grad
    states[1].pow(2).mean().backward()
    grad = model.vit.embeddings.patch_embeddings.projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0, "the captured state is the live activation"
    assert model.classifier.weight.grad is None, "nothing after the captured layer took part"


def test_a_mode_whose_states_differ_in_value_only_is_not_chosen(monkeypatch):
    """Each mode's states are compared with the full output by value, not by shape alone: a hook on
    the wrong block of a ViT (every block's tokens have one shape) would distil another layer's
    tokens without an error."""
    model = FAMILIES["hf_vit"].build().eval()
    wrong = model.vit.layers[1]  # state 1 is block 0's output; block 1's has its shape
    monkeypatch.setattr(HiddenStateCapture, "_find_modules", lambda self, probe: {1: wrong})
    capture = HiddenStateCapture(model, [1], pixels()[:2])
    assert capture.mode == "all"


def test_timm_vit_states_are_views_of_its_tokens_with_the_same_gradients():
    """The token path hands out maps without timm's NCHW copy, and trains exactly like it."""
    spec = FAMILIES["timm_vit"]
    x = pixels(spec.image_size)
    grads = {}
    for mode in ("timm_tokens", "timm"):
        torch.manual_seed(0)
        model = spec.build().train()
        capture = HiddenStateCapture(model, [0, 1], x[:2])
        assert capture.mode == "timm_tokens"
        capture.mode = mode
        _, states = capture(x)
        if mode == "timm_tokens":  # a permuted view of prefix-free tokens: no copy was made
            assert all(not s.is_contiguous() and s.stride(1) == 1 for s in states.values())
        else:
            assert all(s.is_contiguous() for s in states.values())
        (states[0].pow(2).mean() + states[1].sin().mean()).backward()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["timm_tokens"].keys() == grads["timm"].keys() and grads["timm"]
    for name, grad in grads["timm"].items():
        torch.testing.assert_close(grads["timm_tokens"][name], grad, rtol=1e-5, atol=1e-7)


def test_hooks_are_silent_outside_the_capture():
    model = FAMILIES["hf_resnet"].build()
    capture = HiddenStateCapture(model, [2], pixels()[:2])
    with torch.no_grad():
        model(pixel_values=pixels())
    assert capture._states == {}, "a plain forward (e.g. evaluation, another wrapper) must not store tensors"
    capture.remove()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="did not capture"):
            capture(pixels())


def test_hiera_capture_gives_channels_first_maps_of_its_reshaped_states():
    """Not its token states (unrolled into mask units) and not its channels-last (B, H, W, C) maps."""
    model, x = FAMILIES["hf_hiera"].build(), pixels(32)
    with torch.no_grad():
        reshaped = model(pixel_values=x, output_hidden_states=True).reshaped_hidden_states
        _, states = HiddenStateCapture(model, [1, 2], x[:2])(x)
    for i in (1, 2):
        torch.testing.assert_close(states[i], reshaped[i].permute(0, 3, 1, 2), rtol=0, atol=0)
    assert states[2].shape == (x.shape[0], 24, 4, 4)


def test_a_state_an_inplace_op_finishes_is_hooked_after_it():
    """BatchNorm's output, then an in-place ReLU: the hook on the BatchNorm read the state before the
    ReLU (half of it negative), in training's preparation (pooling, the student's Gram), with no
    error; timm's resnet stem and every stage of vgg_bn."""
    from _models import timm_model

    model = timm_model("resnet18")
    x = pixels(32, 2)
    capture = HiddenStateCapture(model, [0], x, prefer_hooks=True)
    assert capture.mode == "hooks"
    _, got = capture(x, prepare=lambda index, state: state.clone())
    expected = hidden_states_of(forward_with_hidden_states(model, x))[0]
    assert torch.equal(got[0], expected) and expected.min() >= 0


def test_levit_hands_out_each_stage_end():
    """transformers' LeViT hands out each stage after the next one's subsampling: the first stage's
    end (LeViT-128S's 4 stride-16 blocks) never appeared, and each state was a stage deeper than its
    place. The states are the embedding and each stage's end, as timm's LeViT's stages."""
    spec = FAMILIES["hf_levit"]
    states = hidden_states_of(forward_with_hidden_states(spec.build(), pixels(spec.image_size)))
    assert [tuple(state.shape[1:]) for state in states] == [(16, 16), (16, 16), (4, 24), (1, 32)]
    # a stage that does not subsample (down_ops "none") ends where the next state starts
    import transformers as tf

    config = tf.LevitConfig(image_size=64, hidden_sizes=[16, 24, 24], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
                            key_dim=[8, 8, 8], down_ops=[["Subsample", 8, 2, 4, 2, 2], ["none"]], num_labels=3)
    states = hidden_states_of(forward_with_hidden_states(tf.LevitForImageClassification(config).eval(), pixels(64)))
    assert [tuple(state.shape[1:]) for state in states] == [(16, 16), (16, 16), (4, 24), (4, 24)]


@pytest.mark.parametrize("model_type", ["swinv2", "donut-swin"])
def test_swinv2_hands_out_each_stage_end(model_type):
    """Swinv2's and Donut-Swin's states were each stage after the next one's patch merging: auto paired
    one stage too shallow and never reached the deepest stage of blocks."""
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.for_model(model_type, image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 2, 1],
                                  num_heads=[1, 1, 1, 1], window_size=2, num_labels=3)
    model = AutoModelForImageClassification.from_config(config).eval()
    states = hidden_states_of(forward_with_hidden_states(model, pixels(64, 2)))
    # the embeddings, then each stage as it ends: its own width and grid (merged: 16, 32, 64, 64 wide)
    assert [tuple(state.shape[1:]) for state in states] == [(8, 16, 16), (8, 16, 16), (16, 8, 8), (32, 4, 4),
                                                            (64, 2, 2)]


class _SharedActivationModel(torch.nn.Module):
    """Two stages that end with one shared nn.ReLU (called once per stage): each stage is the
    producer of its hidden state; the ReLU, called twice a forward, is no state's producer."""

    class Stage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x, act):
            return act(self.conv(x))

    def __init__(self):
        super().__init__()
        self.act = torch.nn.ReLU()
        self.stem = torch.nn.Conv2d(3, 4, 1)
        self.stage1, self.stage2 = self.Stage(), self.Stage()
        self.classifier = torch.nn.Linear(4, 2)

    def forward(self, pixel_values, output_hidden_states=False):
        x0 = self.stem(pixel_values)
        x1 = self.stage1(x0, self.act)
        x2 = self.stage2(x1, self.act)
        return SimpleNamespace(logits=self.classifier(x2.mean((2, 3))), hidden_states=(x0, x1, x2))


def _assert_hooks_keep_the_states(model, x, indices):
    """The capture of ``model``'s states ``indices`` keeps the hooks mode, and hands back the states
    of the model's own full output (the toy models below each trap a wrong choice)."""
    capture = HiddenStateCapture(model, indices, x)
    assert capture.mode == "hooks"
    _, states = capture(x)
    full = model(x, output_hidden_states=True).hidden_states
    for index in indices:
        assert torch.equal(states[index], full[index]), index


# CA3 (features/capture.py _find_modules): a module called more than once a forward is never hooked;
# hooking the shared activation (the first to finish) lost the hooks mode, and every state was kept
def test_a_module_called_twice_a_forward_is_not_taken_for_a_states_producer():
    torch.manual_seed(0)
    model, x = _SharedActivationModel(), torch.randn(2, 3, 8, 8)
    _assert_hooks_keep_the_states(model, x, [1, 2])


class _DropoutAfterStageModel(torch.nn.Module):
    """A stage whose output (the hidden state) feeds the next stage through a dropout: in eval mode
    the dropout hands on that very tensor, in training a masked copy that is no hidden state."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 1)
        self.stage1 = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU())
        self.drop = torch.nn.Dropout(0.5)
        self.stage2 = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU())
        self.classifier = torch.nn.Linear(4, 2)

    def forward(self, pixel_values, output_hidden_states=False):
        x0 = self.stem(pixel_values)
        x1 = self.stage1(x0)
        x2 = self.stage2(self.drop(x1))
        return SimpleNamespace(logits=self.classifier(x2.mean((2, 3))), hidden_states=(x0, x1, x2))


# CA4 (features/capture.py _find_modules): among siblings that return the state, the first to finish
# (its producer) is hooked; the dropout after it returned a masked copy in training
def test_the_producer_is_hooked_not_a_dropout_after_it():
    from hf_rcka.features.capture import HiddenStateCapture

    torch.manual_seed(0)
    model, x = _DropoutAfterStageModel().train(), torch.randn(2, 3, 8, 8)
    capture = HiddenStateCapture(model, [1], x)
    assert capture.mode == "hooks"
    outputs, states = capture(x)  # training: the dropout masks what it hands on
    assert torch.equal(states[1], outputs.hidden_states[1])


def test_choosing_the_mode_again_leaves_one_hook_per_state():
    """``choose_again`` (activation checkpointing turned on after the trainer was built) installs the
    hooks anew: those of the first choice stayed on the modules, each hooked state written twice a
    forward, and piled up with every later choice (a notebook that trains again)."""
    spec = FAMILIES["hf_vit"]
    model = spec.build()
    x = pixels(spec.image_size)[:2]
    capture = HiddenStateCapture(model, [1, 2], x, True)
    assert capture.mode == "hooks"
    hooked = sum(len(m._forward_hooks) for m in model.modules())
    capture.choose_again(x, True)
    capture.choose_again(x, True)
    assert capture.mode == "hooks" and len(capture._handles) == 2
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooked
    capture.remove()
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooked - 2


class _StageHandsOnTokensModel(torch.nn.Module):
    """A stage that returns its block's map as tokens (a view of the same memory, another shape)
    first, and the map itself second (as Swin's stages return a state before and after a change)."""

    class Stage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU())

        def forward(self, x):
            y = self.block(x)
            return y.flatten(2).transpose(1, 2), y

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 1)
        self.stage1 = self.Stage()
        self.classifier = torch.nn.Linear(4, 2)

    def forward(self, pixel_values, output_hidden_states=False):
        x0 = self.stem(pixel_values)
        tokens, x1 = self.stage1(x0)
        return SimpleNamespace(logits=self.classifier(tokens.mean(1)), hidden_states=(x0, x1))


# C10 (features/capture.py _same_tensor): a module's output is a state's tensor only at the state's
# shape and strides too; by address alone the stage's token view counted as the state, the stage was
# hooked instead of its block, and the hooks mode was lost: every hidden state was kept
def test_a_view_of_a_state_at_another_shape_is_not_taken_for_the_state():
    torch.manual_seed(0)
    model, x = _StageHandsOnTokensModel(), torch.randn(2, 3, 8, 8)
    _assert_hooks_keep_the_states(model, x, [1])



class _CountsFromTheEndModel(torch.nn.Module):
    """A timm-style wrapper (it takes a list of indices for ``output_hidden_states``) that counts
    them from the last block, where its full output counts from the first. Every block's tokens
    have one shape, so the states its list gives look right and are other blocks'."""

    def __init__(self):
        super().__init__()
        self.timm_model = torch.nn.Identity()  # what marks a timm wrapper: the timm mode is tried first
        self.embed = torch.nn.Linear(3, 4)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        self.head = torch.nn.Linear(4, 2)

    def forward(self, pixel_values, output_hidden_states=False):
        x = self.embed(pixel_values.flatten(2).transpose(1, 2))
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        if isinstance(output_hidden_states, list):
            states = [states[len(states) - 1 - i] for i in output_hidden_states]
        hidden_states = tuple(states) if output_hidden_states else None
        return SimpleNamespace(logits=self.head(x.mean(1)), hidden_states=hidden_states)


def test_a_timm_mode_that_gives_other_blocks_states_at_the_right_shape_is_not_chosen():
    """The timm mode is checked against the full output by value: by shape alone, this wrapper's
    block 1 tokens were taken for block 0's, and the pair distilled another layer without a word."""
    torch.manual_seed(0)
    model, x = _CountsFromTheEndModel(), torch.randn(2, 3, 4, 4)
    _assert_hooks_keep_the_states(model, x, [1])


class _TupleStageModel(torch.nn.Module):
    """Stages that return ``(state, aux)``, as HF layers return tuples: the state is the tuple's
    first tensor, made by the stage itself (a functional activation), not by a submodule."""

    class Stage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            state = torch.relu(self.conv(x))
            return state, state.mean((2, 3))

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 1)
        self.stage1, self.stage2 = self.Stage(), self.Stage()
        self.classifier = torch.nn.Linear(4, 2)

    def forward(self, pixel_values, output_hidden_states=False):
        x0 = self.stem(pixel_values)
        x1, _ = self.stage1(x0)
        x2, pooled = self.stage2(x1)
        return SimpleNamespace(logits=self.classifier(pooled), hidden_states=(x0, x1, x2))


def test_a_stage_that_returns_a_tuple_is_hooked_on_its_first_tensor():
    """A module's output seen by a hook is the tensor, or the first of a tuple (``first_tensor``):
    taking another of the tuple's tensors found no producer for such a stage's state, and the
    capture fell back to keeping every hidden state of every forward."""
    torch.manual_seed(0)
    model, x = _TupleStageModel(), torch.randn(2, 3, 8, 8)
    _assert_hooks_keep_the_states(model, x, [1, 2])
