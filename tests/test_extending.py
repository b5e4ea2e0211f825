"""A researcher's own losses and adapters: the mistakes one makes while writing them are named
where they are made. Each case below trained wrongly without a word, or failed with an error that
named neither the loss nor the fix, before."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit
from hf_rcka import ADAPTERS, LOSSES, DistillationTrainer, DistillationTrainingArguments
from hf_rcka.adapters.base import FeatureAdapter
from hf_rcka.errors import ModelError, RecipeError
from hf_rcka.losses import CrossEntropyLoss, DistillationLoss, KDLoss, LossInputs, weigh_terms
from hf_rcka.modeling.assembly import build_distillation_model
from hf_rcka.modeling.distillation_model import DistillationModel
from hf_rcka.registry import Registry


@pytest.fixture
def registered():
    """Register classes in the global registries for one test, and take them out after it."""
    added = []

    def register(registry: Registry, name: str, cls: type) -> type:
        registry.register(name)(cls)
        added.append((registry, name))
        return cls

    yield register
    for registry, name in added:
        registry._classes.pop(name, None)


def make_args(tmp_path, **overrides):
    defaults = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=5, per_device_eval_batch_size=5,
                    report_to="none", use_cpu=True, save_strategy="no", teacher_accuracy_check="off", max_steps=2)
    return DistillationTrainingArguments(**{**defaults, **overrides})


def trainer(tmp_path, teacher=True, **overrides):
    return DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet() if teacher else None,
                               args=make_args(tmp_path, **overrides), train_dataset=pixel_dataset(20),
                               processing_class=processor(16))


# ---------------------------------------------------------------------------- registering


def test_one_class_under_a_second_name_is_refused(registered):
    """The alias took over: kd's entry disappeared from a run naming both, and kd logged as 'hinton'."""
    with pytest.raises(ValueError, match="KDLoss is already registered as 'kd'; register a subclass"):
        registered(LOSSES, "hinton", KDLoss)
    assert KDLoss.registry_name == "kd"

    class Hinton(KDLoss):
        pass

    registered(LOSSES, "hinton", Hinton)  # the way the message says
    assert LOSSES.get("hinton") is Hinton and KDLoss.registry_name == "kd"


def test_the_same_definition_again_replaces_it_and_another_class_is_refused(registered):
    """A notebook cell run twice failed with 'already registered'."""
    def define():
        class Twice(DistillationLoss):
            def term(self, inputs):
                return inputs.student_logits.sum()
        return Twice

    first, second = define(), define()
    registered(LOSSES, "twice", first)
    registered(LOSSES, "twice", second)
    assert LOSSES.get("twice") is second

    class Other(DistillationLoss):
        pass

    with pytest.raises(ValueError, match="loss 'twice' is already registered .*; choose another name"):
        LOSSES.register("twice")(Other)


def test_a_record_leaves_out_defaults_it_could_not_read_back_as_themselves(registered):
    """A loss of one's own defaulting to a tuple was recorded with it: YAML read it back as a list,
    which differed from the default at the next resume (and a function default cannot be written)."""
    from hf_rcka.recipe_specs import resolved_specs

    class Shaped(DistillationLoss):
        def __init__(self, weight: float = 1.0, scale: float = 2.0, size: tuple = (2, 2), pick=max) -> None:
            super().__init__(weight=weight)
            self.scale, self.size, self.pick = scale, size, pick

        def term(self, inputs):
            return inputs.student_logits.sum()

    registered(LOSSES, "shaped", Shaped)
    assert resolved_specs([{"name": "shaped", "weight": 1.0}]) == [{"name": "shaped", "weight": 1.0, "scale": 2.0}]


def test_an_adapter_named_auto_is_refused_when_registered():
    """A recipe's 'auto' chooses among the built-in adapters: one registered under it was never built."""
    with pytest.raises(ValueError, match="adapter 'auto': the name is reserved"):
        ADAPTERS.register("auto")(type("Auto", (ADAPTERS.get("identity"),), {}))
    assert "auto" not in ADAPTERS


def test_a_class_that_is_no_loss_or_adapter_is_refused_when_registered():
    """A plain module registered as a loss failed at the first step: 'has no attribute requires'."""
    with pytest.raises(TypeError, match="must subclass hf_rcka.losses.base.DistillationLoss"):
        LOSSES.register("plain_loss")(type("PlainLoss", (nn.Module,), {}))
    with pytest.raises(TypeError, match="must subclass hf_rcka.adapters.base.FeatureAdapter"):
        ADAPTERS.register("plain_adapter")(type("PlainAdapter", (nn.Module,), {}))
    assert "plain_loss" not in LOSSES and "plain_adapter" not in ADAPTERS


def test_requires_names_are_checked_when_the_class_is_defined():
    """An unknown field was an AttributeError at the first training step."""
    with pytest.raises(TypeError, match=r"requires names \['teacher_hidden'\], which are not LossInputs fields"):
        type("Typo", (DistillationLoss,), {"requires": frozenset({"student_logits", "teacher_hidden"})})


def test_options_passed_on_through_kwargs_are_the_base_classes(registered):
    """A subclass with **kwargs lost 'weight': a recipe naming it got 'has no option weight', one
    omitting it a KeyError traceback."""
    class Scaled(KDLoss):
        def __init__(self, scale: float = 2.0, **kwargs) -> None:
            super().__init__(**kwargs)
            self.scale = scale

    registered(LOSSES, "scaled_kd", Scaled)
    assert LOSSES.option_names("scaled_kd") == ["scale", "weight", "temperature"]
    assert LOSSES.default("scaled_kd", "weight") == 1.0 and LOSSES.default("scaled_kd", "temperature") == 4.0
    assert LOSSES.option_types("scaled_kd")["temperature"] is float
    args = DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none",
                                         losses=["ce", {"name": "scaled_kd", "weight": 0.5, "scale": 3.0}])
    assert args.losses[1] == {"name": "scaled_kd", "weight": 0.5, "scale": 3.0}


# ---------------------------------------------------------------------------- what a loss returns


def test_a_term_that_is_not_a_scalar_is_named():
    """A per-sample term trained on the batch sum (5 x the loss) and failed at evaluation in torch.stack."""
    with pytest.raises(ValueError, match=r"loss term 'per_sample' must be a 0-dim tensor .*got \(5,\)"):
        weigh_terms({"ce": torch.tensor(1.0), "per_sample": torch.ones(5)}, {"ce": 1.0, "per_sample": 1.0})
    with pytest.raises(ValueError, match="got float"):
        weigh_terms({"ce": 1.5}, {"ce": 1.0})


class _ClashingTerms(DistillationLoss):
    registry_name = "clashing"
    requires = frozenset({"student_logits"})

    def terms(self, inputs):
        return {"ce": inputs.student_logits.sum() * 0 + 7.0}

    @property
    def term_weights(self):
        return {"ce": self.weight}


class _ReturnsATensor(DistillationLoss):
    registry_name = "returns_a_tensor"

    def forward(self, inputs):
        return inputs.student_logits.pow(2).mean()


def _forward(losses, **kwargs):
    model = DistillationModel(tiny_vit(), None, losses, **kwargs).train()
    pixels, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    return model(pixel_values=pixels, labels=labels)


def test_a_term_named_like_another_losss_is_refused():
    """Its 7.0 replaced the real cross-entropy in the total: the student got no task gradient."""
    with pytest.raises(ValueError, match=r"loss 'clashing' returns terms \['ce'\], which another loss already returns"):
        _forward([CrossEntropyLoss(), _ClashingTerms()])


def test_two_losses_under_one_name_are_refused():
    """The ModuleDict kept the second: kd at temperature 1 was silently not trained."""
    with pytest.raises(ValueError, match="two losses are registered as 'kd'"):
        DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), KDLoss(1.0, 1.0), KDLoss(5.0, 8.0)])


def test_a_loss_whose_forward_returns_a_tensor_is_named():
    with pytest.raises(TypeError, match="loss 'returns_a_tensor' returned Tensor, not a dict of terms"):
        _forward([CrossEntropyLoss(), _ReturnsATensor()])


def test_a_loss_reading_only_teacher_features_gets_feature_pairs():
    """needs_features looked at student_features only: the pairs were 'ignored', then the first
    step failed with 'needs teacher_features'."""
    class TeacherFeaturesOnly(DistillationLoss):
        registry_name = "teacher_features_only"
        requires = frozenset({"student_logits", "teacher_features"})

        def term(self, inputs):
            return inputs.teacher_features[0].float().mean() * 0 + inputs.student_logits.mean()

    loss = TeacherFeaturesOnly()
    assert loss.needs_features
    model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), loss],
                              feature_pairs=[{"student_layer": -1, "teacher_layer": -1}]).train()
    out = model(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 0]))
    assert set(out.loss_terms) == {"ce", "teacher_features_only"}


def test_an_adapter_that_returns_one_tensor_is_named(registered):
    class OneSide(ADAPTERS.get("identity")):
        def forward(self, student, teacher):
            return student

    registered(ADAPTERS, "one_side", OneSide)
    model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), LOSSES.build("feature_cka")],
                              feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "adapter": "one_side"}]).train()
    with pytest.raises(TypeError, match=r"adapter OneSide must return \(student, teacher\), got Tensor"):
        model(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 0]))


# ---------------------------------------------------------------------------- weights made too late


def test_weights_a_loss_creates_in_its_first_forward_are_refused(tmp_path, registered):
    """They were never in the optimizer: 4 steps left them at their random start, and resuming
    then blamed the checkpoint."""
    class LazyProjection(DistillationLoss):
        requires = frozenset({"student_logits", "teacher_logits"})

        def term(self, inputs):
            if not hasattr(self, "projection"):
                self.projection = nn.Linear(inputs.student_logits.shape[1], inputs.teacher_logits.shape[1])
            return F.mse_loss(self.projection(inputs.student_logits), inputs.teacher_logits)

    registered(LOSSES, "lazy_projection", LazyProjection)
    run = trainer(tmp_path, losses=["ce", "lazy_projection"])
    with pytest.raises(ModelError, match=r"weight\(s\) appeared during the first forward.*losses.lazy_projection"
                                         r".projection.weight.*setup\(\)"):
        run.train()


def test_a_loss_term_without_a_gradient_is_refused_at_the_first_step(tmp_path, registered, caplog):
    """A term computed from detached tensors trained nothing, and the run logged it and listed it
    on the card, exit 0."""
    class Detached(DistillationLoss):
        requires = frozenset({"student_logits", "teacher_logits"})

        def term(self, inputs):
            return F.mse_loss(inputs.student_logits.detach(), inputs.teacher_logits)

    registered(LOSSES, "detached_mse", Detached)
    model = build_distillation_model(tiny_vit(), tiny_resnet(), make_args(tmp_path, losses=["ce", "kd"]))
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):  # a term its term_weights weigh and it never returns
        model.check_training_terms({"ce": torch.ones((), requires_grad=True)})
    assert "loss 'kd' returned no kd on the first training step" in caplog.text and "'ce'" not in caplog.text
    run = trainer(tmp_path, losses=["ce", "detached_mse"])
    with pytest.raises(ModelError, match=r"loss 'detached_mse' returned training term\(s\) \['detached_mse'\] "
                                         r"without a gradient"):
        run.train()
    assert run.state.global_step == 0
    # evaluation computes it without a gradient, as it should
    assert "eval_detached_mse_loss" in run.evaluate(pixel_dataset(10, seed=1))


def test_a_losss_weights_that_no_backward_reaches_are_said_at_the_first_step(tmp_path, registered, caplog):
    """A teacher-side projection in reduce_teacher_feature (run with the teacher's forward, under
    no_grad) or under no_grad in term() kept its random start while the term trained the student
    and the other projection, exit 0."""
    class HalfReached(DistillationLoss):
        requires = frozenset({"student_logits", "teacher_logits"})

        def setup(self, context):
            self.student_map = nn.Linear(context.num_labels, context.num_labels)
            self.teacher_map = nn.Linear(context.num_labels, context.num_labels)

        def term(self, inputs):
            with torch.no_grad():
                target = self.teacher_map(inputs.teacher_logits.float())
            return F.mse_loss(self.student_map(inputs.student_logits.float()), target)

    registered(LOSSES, "half_reached", HalfReached)
    run = trainer(tmp_path, losses=["ce", "half_reached"])
    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        run.train()
    said = [r.getMessage() for r in caplog.records if "got no gradient" in r.getMessage()]
    assert len(said) == 1 and "2 trainable weight(s)" in said[0]
    assert "losses.half_reached.teacher_map.weight, losses.half_reached.teacher_map.bias" in said[0]
    assert "student_map" not in said[0]


def test_a_loss_reading_a_field_its_requires_does_not_name_is_told_so(registered):
    """The field is empty (the model computes what some loss requires), and the AttributeError on
    None named neither the loss nor requires."""
    class Forgetful(DistillationLoss):
        requires = frozenset({"student_logits"})

        def term(self, inputs):
            return F.mse_loss(inputs.student_logits, inputs.teacher_logits.softmax(-1))

    registered(LOSSES, "forgetful", Forgetful)
    inputs = LossInputs(student_logits=torch.randn(4, 3), labels=torch.arange(4) % 3)
    with pytest.raises(AttributeError) as raised:
        Forgetful()(inputs)
    assert "loss 'forgetful'" not in str(raised.value)  # the note, not the message: the traceback stays the user's
    assert any("distillation_logits, student_features, student_pooled, teacher_features, teacher_logits, "
               "teacher_pooled of its LossInputs are empty here" in note for note in raised.value.__notes__)

    class OwnBug(Forgetful):
        def term(self, inputs):
            return inputs.student_logits.sum() + "a string"  # TypeError: not a NoneType

    registered(LOSSES, "own_bug", OwnBug)
    with pytest.raises(TypeError) as raised:  # an error of the loss's own gets no advice about requires
        OwnBug()(inputs)
    assert not getattr(raised.value, "__notes__", None)


def test_a_loss_with_lazy_modules_is_refused_when_the_trainer_is_built(tmp_path, registered):
    """nn.LazyLinear, the way around weights made in the first forward, failed with transformers'
    traceback as training started."""
    class LazyProjection(DistillationLoss):
        requires = frozenset({"student_logits", "teacher_logits"})

        def __init__(self, weight: float = 1.0):
            super().__init__(weight)
            self.projection = nn.LazyLinear(3)

        def term(self, inputs):
            return F.mse_loss(self.projection(inputs.student_logits), inputs.teacher_logits)

    registered(LOSSES, "lazy_linear", LazyProjection)
    with pytest.raises(ModelError, match=r"2 weight\(s\) of lazy modules have no shape before the first forward "
                                         r"\(losses.lazy_linear.projection.weight"):
        trainer(tmp_path, losses=["ce", "lazy_linear"])


# ---------------------------------------------------------------------------- feature pairs


class _TeacherProjection(FeatureAdapter):
    """A learned map on the teacher's side in prepare_teacher, which runs under no_grad."""

    def __init__(self, student, teacher):
        super().__init__(student, teacher)
        self.down = nn.Linear(teacher.channels, student.channels)

    def prepare_teacher(self, teacher):
        return self.down(teacher.flatten(2).mean(2))

    def forward(self, student, teacher):
        return student[:, 1:].mean(1), teacher


class _PoolFirst(FeatureAdapter):
    """Pools the teacher's map as it comes out of the teacher's forward, projects the student."""

    def __init__(self, student, teacher):
        super().__init__(student, teacher)
        self.up = nn.Linear(student.channels, teacher.channels)

    def prepare_teacher(self, teacher):
        return teacher.flatten(2).mean(2)

    def forward(self, student, teacher):
        return self.up(student[:, 1:].mean(1)), teacher


def test_trainable_weights_in_prepare_teacher_are_refused_when_the_adapters_are_built(registered):
    """prepare_teacher runs with the teacher's forward under no_grad: its weights kept their random
    start (identical in every checkpoint), exit 0."""
    registered(ADAPTERS, "teacher_projection", _TeacherProjection)
    with pytest.raises(RecipeError, match=r"feature_pairs\[0\]: adapter 'teacher_projection' applies trainable "
                                          r"weights in prepare_teacher"):
        DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), LOSSES.build("fitnet")],
                          feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "adapter": "teacher_projection"}])


def test_the_shape_check_sees_each_side_as_prepare_student_and_prepare_teacher_hand_it_on(registered):
    """An adapter pooling the teacher's map in prepare_teacher (as the README advises) was refused:
    the check ran forward on the raw map, (128,) against (128, 1, 1), and said to use patch_match."""
    registered(ADAPTERS, "pool_first", _PoolFirst)
    model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), LOSSES.build("fitnet")],
                              feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "adapter": "pool_first"}]).train()
    out = model(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.arange(4) % 3)
    out.loss.backward()
    assert model.adapters[0].up.weight.grad.abs().sum() > 0


def test_feature_pairs_no_loss_reads_are_dropped_for_a_ready_model_as_for_a_built_one(tmp_path):
    """Warned as ignored when the model was built, then refused by the trainer (the model's pairs,
    'auto', against the arguments'), even for a model built as the message advised."""
    args = make_args(tmp_path, losses=["ce", "kd"], feature_pairs=[{"student_layer": -1, "teacher_layer": -1}])
    model = build_distillation_model(tiny_vit(), tiny_resnet(), args)
    run = DistillationTrainer(model=model, args=args, train_dataset=pixel_dataset(20), processing_class=processor(16))
    assert not run.distillation_model.needs_features


def test_options_on_an_auto_pair_that_auto_would_not_use_are_refused_with_the_recipe():
    """With batch-relational losses auto is identity: the run failed after loading its models
    ('adapter identity takes no options'), a traceback in the CLI."""
    with pytest.raises(RecipeError, match=r"feature_pairs\[0\]: options \['project'\] are patch_match's"):
        DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none",
                                      losses=["ce", "feature_cka"],
                                      feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "project": True}])
    with pytest.raises(RecipeError, match=r"feature_pairs\[0\] \(adapter auto takes patch_match's options\): "
                                          r"adapter 'patch_match' has no option 'projct': did you mean 'project'"):
        DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none",
                                      losses=["ce", "feature_cka"],
                                      feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "projct": True}])
    # an adapter named for itself takes its own options, whatever the losses
    DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none",
                                  losses=["ce", "feature_cka"],
                                  feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "adapter": "patch_match",
                                                  "project": True}])
    # with a loss that compares maps, auto is patch_match and the option is its own
    DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none",
                                  losses=["ce", "feature_cka", "patch_cka"],
                                  feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "project": True}])


def test_an_adapter_that_needs_a_channel_count_is_not_refused_for_the_placeholders_sake(registered):
    """The recipe's check built adapters on a 1-channel placeholder: GroupNorm's 8 groups refused it
    there, before any model loaded, though it fits every real feature; its option errors still count."""

    class GroupNormAdapter(FeatureAdapter):
        def __init__(self, student, teacher, *, groups: int = 8):
            super().__init__(student, teacher)
            if groups < 1:
                raise ValueError(f"groupnorm_adapter groups must be >= 1, got {groups}")
            self.norm = nn.GroupNorm(groups, student.channels)
            self.proj = nn.Linear(student.channels, teacher.channels)

        def forward(self, student, teacher):
            return self.proj(self.norm(student.transpose(1, 2)).transpose(1, 2)), teacher

    registered(ADAPTERS, "groupnorm_adapter", GroupNormAdapter)
    pair = {"student_layer": -1, "teacher_layer": -1, "adapter": "groupnorm_adapter"}
    DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none",
                                  losses=["ce", "feature_cka"], feature_pairs=[pair])
    with pytest.raises(RecipeError, match=r"feature_pairs\[0\]: groupnorm_adapter groups must be >= 1, got 0"):
        DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none",
                                      losses=["ce", "feature_cka"], feature_pairs=[{**pair, "groups": 0}])

    class MapsOnly(FeatureAdapter):  # fits the second real feature only (CNN maps), not ViT tokens
        def __init__(self, student, teacher):
            super().__init__(student, teacher)
            if student.layout != "nchw" or student.channels < 8:
                raise ValueError(f"maps_only takes maps of 8 channels or more, got {student.layout}")

        def forward(self, student, teacher):
            return student, teacher

    registered(ADAPTERS, "maps_only", MapsOnly)
    DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none", losses=["ce", "feature_cka"],
                                  feature_pairs=[{"student_layer": -1, "teacher_layer": -1, "adapter": "maps_only"}])


def test_a_pair_listed_twice_is_refused():
    """It counted twice in feature_cka's sum; -1 and the last index are the same hidden state."""
    with pytest.raises(RecipeError, match=r"feature_pairs\[1\] pairs student hidden state 2 with teacher hidden "
                                          r"state 4, as feature_pairs\[0\] already does"):
        DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), LOSSES.build("feature_cka")],
                          feature_pairs=[{"student_layer": 2, "teacher_layer": 4},
                                         {"student_layer": -1, "teacher_layer": -1}])


# ---------------------------------------------------------------------------- the README's example


def test_the_readmes_example_loss_trains_and_logs_its_term(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if '@LOSSES.register("logit_mse")' in b)
    try:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
        run = trainer(tmp_path, losses=["ce", {"name": "logit_mse", "weight": 0.5}], logging_steps=1)
        run.train()
        logged = [entry["logit_mse_loss"] for entry in run.state.log_history if "logit_mse_loss" in entry]
        assert len(logged) == 2 and all(value > 0 for value in logged)
    finally:
        LOSSES._classes.pop("logit_mse", None)


def test_options_a_constructor_keeps_to_itself_are_refused(registered):
    """Followed through **kwargs, a weight that never reached the base trained at 1.0, not the 0.01 asked."""
    class Swallows(DistillationLoss):
        requires = frozenset({"student_logits", "teacher_logits"})

        def __init__(self, scale: float = 2.0, **kwargs) -> None:
            super().__init__()
            self.scale = scale

    registered(LOSSES, "swallows", Swallows)
    with pytest.raises(RecipeError, match=r"losses\[1\] \(swallows\): weight is 0.01 here but the loss holds 1.0: "
                                          r"its __init__ takes weight through \*\*kwargs and does not pass them on"):
        DistillationTrainingArguments(output_dir="unused", use_cpu=True, report_to="none",
                                      losses=["ce", {"name": "swallows", "weight": 0.01}])


def test_requires_set_per_instance_is_still_allowed():
    """A property that picks the inputs from an option was a TypeError when the class was defined."""
    class PerInstance(DistillationLoss):
        def __init__(self, weight: float = 1.0, on_teacher: bool = True) -> None:
            super().__init__(weight)
            self.on_teacher = on_teacher

        @property
        def requires(self):
            return frozenset({"student_logits", "teacher_logits"} if self.on_teacher else {"student_logits"})

    assert PerInstance(on_teacher=False).requires == frozenset({"student_logits"})


def test_a_ready_model_with_a_loss_that_keeps_its_option_as_a_tensor(registered, tmp_path):
    """Comparing a ready model's loss options with the args' asked a tensor for its truth value:
    RuntimeError for a loss that keeps an option as a buffer. Equal tensors pass, other ones are
    refused as another option would be."""

    class WeightedCE(DistillationLoss):
        requires = frozenset({"student_logits", "labels"})

        def __init__(self, weight: float = 1.0, class_weights: tuple = (1.0, 1.0, 1.0)) -> None:
            super().__init__(weight)
            self.register_buffer("class_weights", torch.tensor(class_weights))

        def term(self, inputs):
            return torch.nn.functional.cross_entropy(inputs.student_logits, inputs.labels, weight=self.class_weights)

    registered(LOSSES, "weighted_ce", WeightedCE)
    args = make_args(tmp_path, losses=[{"name": "weighted_ce", "class_weights": [1.0, 2.0, 3.0]}, "kd"])
    ready = build_distillation_model(tiny_vit(), tiny_resnet(), args)
    DistillationTrainer(model=ready, args=args, train_dataset=pixel_dataset(20), processing_class=processor(16))
    other = make_args(tmp_path, losses=[{"name": "weighted_ce", "class_weights": [1.0, 1.0, 3.0]}, "kd"])
    with pytest.raises(RecipeError, match="weighted_ce class_weights"):
        DistillationTrainer(model=ready, args=other, train_dataset=pixel_dataset(20), processing_class=processor(16))


# ---------------------------------------------------------------------------- reduced teacher sides


def test_an_adapter_or_loss_of_ones_own_gets_the_teacher_features_whole():
    """feature CKA reduces the teacher's side to a Gram for adapters that hand it on unchanged. A
    subclass of such an adapter whose forward changes the teacher's side (it would get a GramSide
    and fail, or train another loss without a word), or a feature CKA subclass with its own term,
    gets the features whole again, unless it says otherwise."""
    from hf_rcka.features.pairing import FeaturePair
    from hf_rcka.functional import GramSide
    from hf_rcka.losses import FeatureCKALoss
    from hf_rcka.adapters import IdentityAdapter, LinearAdapter

    class Squared(IdentityAdapter):
        def forward(self, student, teacher):
            return student, teacher.pow(2)

    class Declared(IdentityAdapter):
        passes_teacher = True

        def forward(self, student, teacher):
            return student, teacher

    class OwnTerm(FeatureCKALoss):
        def term(self, inputs):
            return sum(1.0 - F.cosine_similarity(s.flatten(1).mean(0), t.flatten(1).mean(0), dim=0)
                       for s, t in self.feature_pairs(inputs))

    class OwnPairs(FeatureCKALoss):
        def feature_pairs(self, inputs):
            return [(s, t.abs()) for s, t in super().feature_pairs(inputs)]

    assert IdentityAdapter.passes_teacher and LinearAdapter.passes_teacher and Declared.passes_teacher
    assert not Squared.passes_teacher
    from hf_rcka.adapters.patch_match import PatchMatchAdapter

    class OwnGrid(PatchMatchAdapter):
        def forward(self, student, teacher):
            return super().forward(student, teacher)

    assert PatchMatchAdapter.passes_teacher and not OwnGrid.passes_teacher  # its map, on the grid
    # the student's side likewise: only the identity hands it on (the linear adapter projects it)
    assert IdentityAdapter.passes_student and not LinearAdapter.passes_student
    assert not Squared.passes_student and not Declared.passes_student
    teacher = torch.randn(4, 30)
    assert isinstance(FeatureCKALoss().reduce_teacher_feature(teacher), GramSide)
    assert OwnTerm().reduce_teacher_feature(teacher) is None and OwnPairs().reduce_teacher_feature(teacher) is None
    student = torch.randn(4, 30, requires_grad=True)
    assert isinstance(FeatureCKALoss().reduce_student_feature(student), GramSide)
    assert OwnTerm().reduce_student_feature(student) is None and OwnPairs().reduce_student_feature(student) is None

    model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), FeatureCKALoss()],
                              feature_pairs=[FeaturePair(-1, -1, "identity")])
    model.adapters[0].__class__ = Squared  # the same pair through the subclass
    x = torch.randn(4, 3, 16, 16)
    sides = model._teacher_sides(model._run_teacher(x)[2])
    assert isinstance(sides[0], torch.Tensor)
    out = model.train()(pixel_values=x, labels=torch.arange(4) % 3)
    assert torch.isfinite(out.loss)


def test_a_student_side_reduced_without_its_gradient_is_refused_at_the_first_step():
    """A reduction of the student's side must keep the hidden state's gradient: one made under
    no_grad would leave the feature loss training nothing, without a word."""
    from hf_rcka.losses import FeatureCKALoss

    class Detached(FeatureCKALoss):
        @torch.no_grad()
        def reduce_student_feature(self, student):
            return super().reduce_student_feature(student)

    from hf_rcka.modeling.teacher_inputs import input_stats

    model = DistillationModel(tiny_resnet(), tiny_vit(), [CrossEntropyLoss(), Detached()], feature_pairs="auto",
                              student_input=input_stats(processor(16)), teacher_input=input_stats(processor(16))).train()
    with pytest.raises(RuntimeError, match="without a gradient, so the feature loss would not train the student"):
        model(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.arange(4) % 3)
    with torch.no_grad():  # evaluation needs no gradient
        model.eval()(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.arange(4) % 3)


def test_a_reduced_side_without_rows_is_named_when_evaluation_drops_a_row():
    from hf_rcka.losses import IGNORE_INDEX, LossInputs

    inputs = LossInputs(student_logits=torch.randn(3, 2), labels=torch.tensor([0, IGNORE_INDEX, 1]),
                        student_features=(torch.randn(3, 5),), teacher_features=({"gram": torch.eye(3)},))
    with pytest.raises(TypeError, match="a dict in the loss inputs has no rows\\(keep\\) method"):
        inputs.counted_rows()


# each train() checks its first step again
def test_the_late_weight_check_runs_again_in_a_second_train():
    from transformers import TrainerControl, TrainerState

    from hf_rcka.errors import ModelError
    from hf_rcka.trainer.optimizer_checks import LateParameterCheck

    model = torch.nn.Linear(2, 2)
    check = LateParameterCheck(lambda: model)
    args, state, control = SimpleNamespace(), TrainerState(), TrainerControl()
    whole = torch.optim.SGD(model.parameters(), lr=0.1)
    check.on_train_begin(args, state, control)
    check.on_step_end(args, state, control, optimizer=whole)  # the first train(): every weight held
    model.extra = torch.nn.Linear(2, 2)  # a weight made after that optimizer was built
    check.on_train_begin(args, state, control)  # a second train() on the same trainer
    with pytest.raises(ModelError, match="appeared during the first forward"):
        check.on_step_end(args, state, control, optimizer=whole)


def test_the_unreached_weights_warning_is_said_once_per_train_and_only_of_some(caplog):
    """A second train() on the same trainer said nothing of weights its first step left unreached
    (the flag was reset for the late-weights check alone); a warning of 0 weights is none; and every
    process of a launch said it again."""
    from transformers import TrainerControl, TrainerState

    from hf_rcka.trainer.optimizer_checks import LateParameterCheck

    unreached: list[str] = []
    check = LateParameterCheck(lambda: SimpleNamespace(unreached_weights=lambda: list(unreached)))
    args, state, control = SimpleNamespace(), TrainerState(), TrainerControl()

    def said_in_a_train() -> list[str]:
        caplog.clear()
        check.on_train_begin(args, state, control)
        for _ in range(2):  # two optimizer steps: said at the first alone
            check.on_pre_optimizer_step(args, state, control)
        return [r.getMessage() for r in caplog.records if "got no gradient" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="hf_rcka"):
        assert said_in_a_train() == [], "every weight reached: nothing to say"
        unreached.append("losses.mine.projector.weight")
        for _ in range(2):  # the same trainer's first and second train()
            said = said_in_a_train()
            assert len(said) == 1 and "1 trainable weight(s)" in said[0] and "losses.mine.projector.weight" in said[0]
        state = TrainerState(is_world_process_zero=False)  # another process of the launch: said once, by the first
        assert said_in_a_train() == []


def test_an_optimizer_given_in_a_list_is_checked_too():
    """Trainer takes optimizers=[optimizer, scheduler] as it takes the tuple; given so, an optimizer
    over the student alone was not checked and left the projectors at their random start."""
    from hf_rcka.trainer.optimizer_checks import check_optimizer

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    over_the_first = torch.optim.SGD(model[0].parameters(), lr=0.1)
    for optimizers in ((over_the_first, None), [over_the_first, None]):
        with pytest.raises(ModelError, match=r"does not train 2 trainable weight\(s\) of the distillation model \(1\.weight"):
            check_optimizer(model, optimizers)
    check_optimizer(model, [torch.optim.SGD(model.parameters(), lr=0.1), None])


def test_a_single_lazy_weight_is_refused_too():
    """One lazy weight (a LazyLinear without bias) is as shapeless before the first forward as two."""
    from hf_rcka.trainer.optimizer_checks import check_lazy_parameters

    with pytest.raises(ModelError, match=r"1 weight\(s\) of lazy modules have no shape .*\(0\.weight\)"):
        check_lazy_parameters(nn.Sequential(nn.LazyLinear(2, bias=False)))
    check_lazy_parameters(nn.Sequential(nn.Linear(2, 2)))


def test_a_feature_loss_beside_feature_cka_gets_the_features_whole():
    """Only a loss that is alone in reading the pairs may reduce their sides: with two feature
    losses, feature CKA's reduction to B x B Grams was handed to the other loss too, which then
    read a Gram where it asked for the teacher's and the student's features."""
    from hf_rcka.features.pairing import FeaturePair
    from hf_rcka.losses import FeatureCKALoss

    seen = []

    class ReadsWhole(DistillationLoss):
        registry_name = "reads_whole"
        requires = frozenset({"student_features", "teacher_features"})

        def term(self, inputs):
            seen.extend((type(s), type(t)) for s, t in zip(inputs.student_features, inputs.teacher_features))
            return inputs.student_logits.float().mean() * 0

    for losses in ([FeatureCKALoss(), ReadsWhole()], [ReadsWhole(), FeatureCKALoss()]):
        seen.clear()
        model = DistillationModel(tiny_vit(), tiny_resnet(), [CrossEntropyLoss(), *losses],
                                  feature_pairs=[FeaturePair(-1, -1, "identity")]).train()
        out = model(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.arange(4) % 3)
        assert seen == [(torch.Tensor, torch.Tensor)] and torch.isfinite(out.loss)


def test_a_long_list_of_weights_names_the_first_four_and_counts_the_rest():
    """The one error line names a few of the weights at fault and how many more: a wrong count ("and
    7 more" of 7 in all) or a fifth name shown as the fourth misled whoever checked the model."""
    from hf_rcka.errors import first_names
    from hf_rcka.trainer.optimizer_checks import check_lazy_parameters

    lazy = [f"{i}.weight" for i in range(7)]
    with pytest.raises(ModelError, match=r"7 weight\(s\) of lazy modules have no shape before the first forward "
                                         r"\(0\.weight, 1\.weight, 2\.weight, 3\.weight and 3 more\)"):
        check_lazy_parameters(nn.Sequential(*(nn.LazyLinear(2, bias=False) for _ in range(7))))
    assert first_names(lazy[:4]) == "0.weight, 1.weight, 2.weight, 3.weight", "four are all: no 'and 0 more'"
    assert first_names(lazy[:5]) == "0.weight, 1.weight, 2.weight, 3.weight and 1 more"
    assert first_names(lazy, shown=2) == "0.weight, 1.weight and 5 more" and first_names([]) == ""
