"""Tests for every registered loss in hf_rcka.LOSSES.

The per-loss cases live in ``CASES``; ``test_every_registered_loss_has_a_case`` iterates
``LOSSES.names()`` so a newly registered loss without a case fails the suite. Dimensions are
distinct: batch 5, 3 classes, 17 tokens of width 36, maps (5, 4, 8, 12), pooled 36 -> 24.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from hf_rcka import LOSSES, LossInputs, functional
from hf_rcka.losses import IGNORE_INDEX, LossContext, weigh_terms
from hf_rcka.losses.pcka import PatchCKALoss

B, P, TOKENS, WIDTH, POOLED_S, POOLED_T = 5, 3, 17, 36, 36, 24
MAP = (B, 4, 8, 12)
DOUBLE = torch.float64


def randn(*shape: int, seed: int, dtype: torch.dtype = DOUBLE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DOUBLE).to(dtype)


def related(teacher: torch.Tensor, seed: int) -> torch.Tensor:
    """A student tensor that resembles the teacher but differs from it."""
    return 0.8 * teacher + 0.6 * randn(*teacher.shape, seed=seed, dtype=teacher.dtype)


def labels() -> torch.Tensor:
    return torch.tensor([0, 2, 1, 2, 0])


# ----------------------------------------------------------------------------------------------
# One case per registered loss
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    """How to build and feed one registered loss.

    Attributes:
        make_inputs: seed -> float64 LossInputs (student and teacher different, related).
        student_fields: LossInputs fields the student produces (checked with gradcheck).
        options: recipe options for ``LOSSES.build``.
        context: passed to ``setup`` when the loss needs one.
        prepare: called on the built loss (e.g. to give kernel_transfer non-zero centres).
        mismatch: (LossInputs with mismatched shapes, regex the error must match).
        gradcheck_inputs: smaller inputs for the full (element-wise) gradcheck, where the
            standard ones have thousands of student entries.
    """

    make_inputs: Callable[[int], LossInputs]
    student_fields: tuple[str, ...]
    mismatch: Callable[[], tuple[LossInputs, str]]
    options: dict = field(default_factory=dict)
    context: LossContext | None = None
    prepare: Callable[[torch.nn.Module], None] | None = None
    gradcheck_inputs: Callable[[int], LossInputs] | None = None


def logit_inputs(seed: int) -> LossInputs:
    teacher = 3.0 * randn(B, P, seed=seed)
    return LossInputs(student_logits=related(teacher, seed + 1), labels=labels(), teacher_logits=teacher)


def deit_inputs(seed: int) -> LossInputs:
    base = logit_inputs(seed)
    return replace(base, distillation_logits=related(base.teacher_logits, seed + 2))


def token_and_map_inputs(seed: int) -> LossInputs:
    """Heterogeneous pairs: ViT-like tokens vs a CNN map, and pooled vectors of different widths."""
    t_tokens, t_map = randn(B, TOKENS, WIDTH, seed=seed), randn(B, 7, 6, 6, seed=seed + 1)
    s_map = related(t_tokens[:, :16, :28].reshape(B, 7, 8, 8), seed + 2)
    s_tokens = related(t_map.reshape(B, 36, 7), seed + 3)
    return LossInputs(
        student_logits=randn(B, P, seed=seed + 4),
        student_features=(s_map, s_tokens),
        teacher_features=(t_tokens, t_map),
    )


def aligned_map_inputs(seed: int) -> LossInputs:
    teachers = (randn(*MAP, seed=seed), randn(B, 6, 4, 4, seed=seed + 1))
    students = tuple(related(t, seed + 2 + i) for i, t in enumerate(teachers))
    return LossInputs(student_logits=randn(B, P, seed=seed + 4), student_features=students, teacher_features=teachers)


def pooled_inputs(seed: int) -> LossInputs:
    teacher = randn(B, POOLED_T, seed=seed)
    student = torch.cat([related(teacher, seed + 1), randn(B, POOLED_S - POOLED_T, seed=seed + 2)], dim=1)
    return LossInputs(
        student_logits=randn(B, P, seed=seed + 3), labels=labels(), student_pooled=student, teacher_pooled=teacher
    )


def small_feature_inputs(seed: int) -> LossInputs:
    """Tokens (5, 3, 4) vs a map (5, 2, 3, 3): few entries, so a full gradcheck stays fast."""
    t_tokens, t_map = randn(B, 3, 4, seed=seed), randn(B, 2, 3, 3, seed=seed + 1)
    students = (related(t_tokens.reshape(B, 2, 2, 3), seed + 2), related(t_map.reshape(B, 6, 3), seed + 3))
    return LossInputs(
        student_logits=randn(B, P, seed=seed + 4), student_features=students, teacher_features=(t_tokens, t_map)
    )


def small_map_inputs(seed: int) -> LossInputs:
    """Maps (5, 2, 4, 6) (2 x 3 patches of 2) and (5, 3, 3, 3) (smaller than a patch, resized)."""
    teachers = (randn(B, 2, 4, 6, seed=seed), randn(B, 3, 3, 3, seed=seed + 1))
    students = tuple(related(t, seed + 2 + i) for i, t in enumerate(teachers))
    return LossInputs(student_logits=randn(B, P, seed=seed + 4), student_features=students, teacher_features=teachers)


POOLED_CONTEXT = LossContext(num_labels=P, student_pooled_dim=POOLED_S, teacher_pooled_dim=POOLED_T)


def random_centres(loss: torch.nn.Module) -> None:
    """Non-zero class centres (zero centres make the loss and its gradient vanish), frozen in eval."""
    loss.student_centres.copy_(randn(P, POOLED_S, seed=90))
    loss.teacher_centres.copy_(randn(P, POOLED_T, seed=91))
    loss.eval()


def _logit_mismatch() -> tuple[LossInputs, str]:
    return replace(logit_inputs(0), teacher_logits=randn(B, P + 1, seed=5)), r"\(5, 3\).*\(5, 4\)"


def _ce_mismatch() -> tuple[LossInputs, str]:
    return replace(logit_inputs(0), labels=torch.tensor([0, 1, 2, 0])), r"\(5\).*\(4\)"


def _deit_mismatch() -> tuple[LossInputs, str]:
    return replace(deit_inputs(0), teacher_logits=randn(B, P + 1, seed=5)), r"\(5, 3\).*\(5, 4\)"


def _feature_batch_mismatch() -> tuple[LossInputs, str]:
    base = token_and_map_inputs(0)
    teachers = (base.teacher_features[0][:4], base.teacher_features[1])
    return replace(base, teacher_features=teachers), r"\(5, 448\).*\(4, 612\)"


def _map_mismatch() -> tuple[LossInputs, str]:
    base = aligned_map_inputs(0)
    teachers = (base.teacher_features[0][..., :11], base.teacher_features[1])
    return replace(base, teacher_features=teachers), r"\(5, 4, 8, 12\).*\(5, 4, 8, 11\)"


def _pooled_batch_mismatch() -> tuple[LossInputs, str]:
    base = pooled_inputs(0)
    return replace(base, teacher_pooled=base.teacher_pooled[:4]), r"\(5, 24\).*\(4, 24\)"


def _kernel_transfer_mismatch() -> tuple[LossInputs, str]:
    base = pooled_inputs(0)
    return replace(base, teacher_pooled=base.teacher_pooled[:4]), r"\(5, 36\).*\(4, 24\)"


CASES: dict[str, Case] = {
    "ce": Case(logit_inputs, ("student_logits",), _ce_mismatch),
    "kd": Case(logit_inputs, ("student_logits",), _logit_mismatch, {"temperature": 2.0}),
    "rcka": Case(logit_inputs, ("student_logits",), _logit_mismatch),
    "deit_token": Case(deit_inputs, ("distillation_logits",), _deit_mismatch),
    "feature_cka": Case(
        token_and_map_inputs, ("student_features",), _feature_batch_mismatch, gradcheck_inputs=small_feature_inputs
    ),
    "patch_cka": Case(
        aligned_map_inputs, ("student_features",), _map_mismatch, {"patch_size": 2}, gradcheck_inputs=small_map_inputs
    ),
    "fitnet": Case(aligned_map_inputs, ("student_features",), _map_mismatch),
    "srd": Case(pooled_inputs, ("student_pooled",), _pooled_batch_mismatch, context=POOLED_CONTEXT),
    "kernel_transfer": Case(
        pooled_inputs, ("student_pooled",), _kernel_transfer_mismatch, context=POOLED_CONTEXT, prepare=random_centres
    ),
}


def total(loss: torch.nn.Module, inputs: LossInputs) -> torch.Tensor:
    """The loss's terms on ``inputs``, weighted by its ``term_weights`` and summed (as DistillationModel does)."""
    return weigh_terms(loss(inputs), loss.term_weights)[0]


def build(name: str, dtype: torch.dtype = torch.float32, **options) -> torch.nn.Module:
    case = CASES[name]
    loss = LOSSES.build(name, **{**case.options, **options})
    if case.context is not None:
        loss.setup(case.context)
    loss.to(dtype)
    if case.prepare is not None:
        with torch.no_grad():
            case.prepare(loss)
    return loss


def cast(inputs: LossInputs, dtype: torch.dtype) -> LossInputs:
    """All floating tensors of ``inputs`` in ``dtype`` (labels stay integer)."""

    def conv(value):
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, (tuple, list)):
            return tuple(conv(v) for v in value)
        return value

    return LossInputs(**{k: conv(v) for k, v in vars(inputs).items()})


def with_students(inputs: LossInputs, fields: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> LossInputs:
    """Put flat student tensors back into their LossInputs fields (a field may hold a sequence)."""
    values, i = {}, 0
    for name in fields:
        current = getattr(inputs, name)
        if isinstance(current, (tuple, list)):
            values[name] = tuple(tensors[i : i + len(current)])
            i += len(current)
        else:
            values[name] = tensors[i]
            i += 1
    return replace(inputs, **values)


def student_tensors(inputs: LossInputs, fields: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    out = []
    for name in fields:
        value = getattr(inputs, name)
        out.extend(value if isinstance(value, (tuple, list)) else [value])
    return tuple(out)


NAMES = LOSSES.names()


# ----------------------------------------------------------------------------------------------
# Every registered loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_loss_has_a_case(name):
    assert name in CASES, f"loss {name!r} is registered but tests/test_losses.py has no case for it"


def test_expected_losses_are_registered():
    expected = {"ce", "kd", "rcka", "feature_cka", "patch_cka", "fitnet", "srd", "kernel_transfer", "deit_token"}
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_a_finite_float32_scalar(name):
    loss = build(name)
    inputs = cast(CASES[name].make_inputs(0), torch.float32)
    terms = loss(inputs)
    assert terms and set(terms) <= set(loss.term_weights)
    for value in (*terms.values(), total(loss, inputs)):
        assert value.dim() == 0 and value.dtype == torch.float32
        assert math.isfinite(value.item())
        assert value.item() != 0.0  # different student and teacher: a real, non-trivial value


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64_on_student_inputs(name):
    case = CASES[name]
    loss = build(name, DOUBLE)
    inputs = (case.gradcheck_inputs or case.make_inputs)(1)
    students = tuple(t.clone().requires_grad_() for t in student_tensors(inputs, case.student_fields))

    def run(*tensors):
        return total(loss, with_students(inputs, case.student_fields, tensors))

    assert run(*students).dtype == DOUBLE
    assert torch.autograd.gradcheck(run, students, eps=1e-6, atol=1e-6, rtol=1e-4)
    grads = torch.autograd.grad(run(*students), students, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_give_float32_accurate_values(name):
    loss = build(name)
    inputs_bf16 = cast(CASES[name].make_inputs(2), torch.bfloat16)
    got = total(loss, inputs_bf16)
    want = total(loss, cast(inputs_bf16, torch.float32))  # the same rounded values, in float32
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_errors_name_the_shapes(name):
    loss = build(name)
    inputs, pattern = CASES[name].mismatch()
    with pytest.raises(ValueError, match=pattern):
        total(loss, cast(inputs, torch.float32))


@pytest.mark.parametrize("name", NAMES)
def test_missing_required_input_is_a_clear_error(name):
    loss = build(name)
    required = sorted(loss.requires - {"student_logits"})
    inputs = cast(CASES[name].make_inputs(0), torch.float32)
    for field_name in required:
        empty = () if field_name.endswith("features") else None
        pattern = "distillation head" if field_name == "distillation_logits" else field_name
        with pytest.raises(ValueError, match=pattern):
            total(loss, replace(inputs, **{field_name: empty}))


@pytest.mark.parametrize("name", NAMES)
def test_negative_weight_is_rejected(name):
    with pytest.raises(ValueError, match="weight"):
        LOSSES.build(name, weight=-1.0)


# ----------------------------------------------------------------------------------------------
# Zero (or minimal) when the student equals the teacher
# ----------------------------------------------------------------------------------------------


def student_is_teacher(name: str) -> LossInputs:
    inputs = CASES[name].make_inputs(3)
    if name in ("rcka", "kd"):
        return replace(inputs, student_logits=inputs.teacher_logits.clone())
    if name in ("patch_cka", "fitnet"):
        return replace(inputs, student_features=tuple(t.clone() for t in inputs.teacher_features))
    if name == "feature_cka":  # same information in a different layout: tokens vs map, rotated
        q, _ = torch.linalg.qr(randn(WIDTH, WIDTH, seed=7))
        students = (inputs.teacher_features[0] @ q, 2.5 * inputs.teacher_features[1].permute(0, 2, 3, 1))
        return replace(inputs, student_features=students)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["rcka", "feature_cka", "patch_cka", "fitnet", "kd"])
def test_zero_when_student_equals_teacher(name):
    loss = build(name, DOUBLE)
    assert total(loss, CASES[name].make_inputs(3)).item() > 1e-3
    assert abs(total(loss, student_is_teacher(name)).item()) < 1e-10


def test_kernel_transfer_is_zero_when_features_and_centres_match():
    loss = build("kernel_transfer", DOUBLE)
    loss.student_centres = randn(P, POOLED_S, seed=8)
    loss.teacher_centres = loss.student_centres.clone()
    inputs = CASES["kernel_transfer"].make_inputs(3)
    inputs = replace(inputs, teacher_pooled=inputs.student_pooled.clone())
    assert total(loss, inputs).item() == 0.0
    loss.teacher_centres = randn(P, POOLED_S, seed=9)
    assert total(loss, inputs).item() > 1e-3


def test_srd_distance_is_minimal_when_projection_equals_teacher():
    teacher = randn(B, POOLED_T, seed=10)
    at_teacher = functional.srd_distance(teacher.clone(), teacher)
    assert at_teacher.item() == pytest.approx(math.log(1e-5))
    for seed in range(3):
        moved = teacher + 0.05 * randn(B, POOLED_T, seed=20 + seed)
        assert functional.srd_distance(moved, teacher).item() > at_teacher.item() + 1.0


# ----------------------------------------------------------------------------------------------
# Loss-specific behaviour
# ----------------------------------------------------------------------------------------------


def centered_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Naive float64 linear CKA with an explicit centering matrix."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=DOUBLE) - 1.0 / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return (k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum())


def test_rcka_matches_weighted_intra_and_inter_terms():
    inputs = logit_inputs(4)
    s, t = inputs.student_logits, inputs.teacher_logits
    got = total(build("rcka", DOUBLE, intra_weight=2.0, inter_weight=7.0), inputs)
    want = 2.0 * (1 - centered_cka(s, t)) + 7.0 * (1 - centered_cka(s.T, t.T))
    torch.testing.assert_close(got, want)
    only_inter = total(build("rcka", DOUBLE, intra_weight=0.0, inter_weight=7.0), inputs)
    torch.testing.assert_close(only_inter, 7.0 * (1 - centered_cka(s.T, t.T)))


def test_rcka_returns_intra_and_inter_terms_apart_with_their_weights():
    inputs = logit_inputs(4)
    s, t = inputs.student_logits, inputs.teacher_logits
    loss = build("rcka", DOUBLE, weight=0.5, intra_weight=2.0, inter_weight=7.0)
    terms = loss(inputs)
    assert set(terms) == {"rcka_intra", "rcka_inter"}
    torch.testing.assert_close(terms["rcka_intra"], 1 - centered_cka(s, t))
    torch.testing.assert_close(terms["rcka_inter"], 1 - centered_cka(s.T, t.T))
    assert loss.term_weights == {"rcka_intra": 1.0, "rcka_inter": 3.5}
    only_inter = build("rcka", DOUBLE, intra_weight=0.0)
    assert set(only_inter(inputs)) == {"rcka_inter"}  # a 0-weight term is skipped
    assert only_inter.term_weights == {"rcka_inter": 1.0}, "term_weights lists only the terms that are computed"
    assert build("rcka", DOUBLE, weight=0.0).term_weights == {"rcka_intra": 0.0, "rcka_inter": 0.0}  # computed
    with pytest.raises(ValueError, match="both 0"):
        LOSSES.build("rcka", intra_weight=0.0, inter_weight=0.0)


def test_weigh_terms_is_the_weighted_sum_and_needs_a_weight_for_every_term():
    terms = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    total_loss, weighted = weigh_terms(terms, {"a": 0.5, "b": 4.0, "unused": 9.0})
    assert weighted == {"a": 1.0, "b": 12.0} and total_loss.item() == 13.0
    with pytest.raises(KeyError, match="'b'"):
        weigh_terms(terms, {"a": 1.0})
    with pytest.raises(ValueError, match="no loss terms"):
        weigh_terms({}, {"a": 1.0})


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_takes_the_epoch_end(name):
    loss = build(name)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.on_epoch_end(1)  # declared on the base class: stateless losses do nothing
    if name != "kernel_transfer":
        assert all(torch.equal(before[k], v) for k, v in loss.state_dict().items())


def test_rcka_ignores_the_logit_scale_unlike_kd():
    inputs = logit_inputs(5)
    scaled = replace(inputs, student_logits=10.0 * inputs.student_logits)
    rcka, kd = build("rcka", DOUBLE), build("kd", DOUBLE)
    torch.testing.assert_close(total(rcka, scaled), total(rcka, inputs))
    assert abs(total(kd, scaled).item() - total(kd, inputs).item()) > 1e-2


def test_rcka_reference_mode_and_rbf_kernel_run():
    inputs = logit_inputs(6)
    reference = total(build("rcka", DOUBLE, center=False, row_normalize=True), inputs)
    default = total(build("rcka", DOUBLE), inputs)
    rbf = total(build("rcka", DOUBLE, kernel="rbf"), inputs)
    for value in (reference, rbf):
        assert math.isfinite(value.item()) and value.item() > 0
    assert abs(reference.item() - default.item()) > 1e-4
    with pytest.raises(ValueError, match="kernel"):
        LOSSES.build("rcka", kernel="cosine")


def test_feature_cka_sums_pairs_of_flattened_features():
    inputs = token_and_map_inputs(7)
    got = total(build("feature_cka", DOUBLE), inputs)
    want = sum(
        1 - centered_cka(s.flatten(1), t.flatten(1)) for s, t in zip(inputs.student_features, inputs.teacher_features)
    )
    torch.testing.assert_close(got, want)


def test_feature_count_mismatch_is_a_clear_error():
    inputs = token_and_map_inputs(8)
    for name in ("feature_cka", "fitnet", "patch_cka"):
        with pytest.raises(ValueError, match="2 student features and 1 teacher"):
            total(build(name), cast(replace(inputs, teacher_features=inputs.teacher_features[:1]), torch.float32))


def test_patch_cka_loss_is_one_minus_mean_channel_cka_summed_over_pairs():
    inputs = aligned_map_inputs(9)
    got = total(build("patch_cka", DOUBLE), inputs)
    want = sum(
        1 - functional.patch_cka(s, t, 2).mean() for s, t in zip(inputs.student_features, inputs.teacher_features)
    )
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"\(5, 17, 36\)"):
        total(build("patch_cka"), cast(token_and_map_inputs(0), torch.float32))


def test_fitnet_is_summed_mse():
    inputs = aligned_map_inputs(10)
    got = total(build("fitnet", DOUBLE), inputs)
    want = sum(((s - t) ** 2).mean() for s, t in zip(inputs.student_features, inputs.teacher_features))
    torch.testing.assert_close(got, want)


def test_kd_matches_formula():
    inputs = logit_inputs(11)
    s, t = inputs.student_logits, inputs.teacher_logits
    p_t = torch.softmax(t / 2.0, -1)
    want = 4.0 * (p_t * (p_t.log() - torch.log_softmax(s / 2.0, -1))).sum(-1).mean()
    torch.testing.assert_close(total(build("kd", DOUBLE), inputs), want)


def test_ce_matches_cross_entropy_with_label_smoothing():
    inputs = logit_inputs(12)
    got = total(build("ce", DOUBLE, label_smoothing=0.1), inputs)
    torch.testing.assert_close(got, F.cross_entropy(inputs.student_logits, inputs.labels, label_smoothing=0.1))
    # evaluation reports the model's plain cross-entropy, as timm's and DeiT's validation do
    evaluated = total(build("ce", DOUBLE, label_smoothing=0.1).eval(), inputs)
    torch.testing.assert_close(evaluated, F.cross_entropy(inputs.student_logits, inputs.labels))


def test_ce_label_smoothing_takes_0_and_refuses_1():
    """[0, 1), as its message says: a mutant that refused 0.0 turned down a recipe's explicit "no
    smoothing" (``{name: ce, label_smoothing: 0.0}``); one that took 1.0 trained on uniform targets."""
    inputs = logit_inputs(12)
    torch.testing.assert_close(total(build("ce", DOUBLE, label_smoothing=0.0), inputs),
                               F.cross_entropy(inputs.student_logits, inputs.labels))
    for wrong in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
            LOSSES.build("ce", label_smoothing=wrong)


# --- deit_token ---------------------------------------------------------------------------------


def test_deit_hard_mode_is_cross_entropy_to_the_teacher_argmax():
    inputs = deit_inputs(13)
    got = total(build("deit_token", DOUBLE, mode="hard"), inputs)
    targets = inputs.teacher_logits.argmax(-1)
    assert not torch.equal(targets, inputs.distillation_logits.argmax(-1))
    log_probs = torch.log_softmax(inputs.distillation_logits, -1)
    want = -log_probs[torch.arange(B), targets].mean()
    torch.testing.assert_close(got, want)
    # the CLS logits play no part in the distillation term
    other_cls = replace(inputs, student_logits=randn(B, P, seed=99))
    torch.testing.assert_close(total(build("deit_token", DOUBLE, mode="hard"), other_cls), want)


def test_deit_hard_mode_gives_nan_for_a_teacher_row_that_is_not_finite():
    """argmax made a NaN teacher row a class-0 target: a finite loss, where every loss reading the
    teacher's values is NaN and the divergence check sees it (an fp16 teacher that overflowed)."""
    inputs = deit_inputs(16)
    broken = inputs.teacher_logits.clone()
    broken[0] = float("nan")
    assert torch.isnan(total(build("deit_token", mode="hard"), replace(inputs, teacher_logits=broken)))
    assert torch.isfinite(total(build("deit_token", mode="hard"), inputs))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_batch_without_counted_rows_gives_no_value_and_no_error(name):
    """A data-parallel evaluation's last batch can be padding alone on one process: every row
    dropped by counted_rows. FitNets raised there (after hours of training); each term must give
    a value the evaluation weighs by its 0 counted images."""
    inputs = CASES[name].make_inputs(0)
    labels = torch.full((inputs_batch(inputs),), IGNORE_INDEX)
    empty = replace(inputs, labels=labels).counted_rows()
    with torch.no_grad():
        terms = build(name, DOUBLE)(empty)
    assert terms and all(value.ndim == 0 for value in terms.values())


def inputs_batch(inputs: LossInputs) -> int:
    return next(v.shape[0] for v in (inputs.student_logits, inputs.student_pooled, inputs.distillation_logits,
                                     *(inputs.student_features or ())) if v is not None)


def test_deit_soft_mode_is_kd_on_the_distillation_head():
    inputs = deit_inputs(14)
    got = total(build("deit_token", DOUBLE, mode="soft", temperature=3.0), inputs)
    torch.testing.assert_close(got, functional.kd_loss(inputs.distillation_logits, inputs.teacher_logits, 3.0))


def test_deit_without_distillation_logits_names_the_missing_head():
    inputs = replace(deit_inputs(15), distillation_logits=None)
    with pytest.raises(ValueError, match="distillation_logits.*DeiTForImageClassificationWithTeacher|"
                                         "DeiTForImageClassificationWithTeacher.*distillation_logits"):
        total(build("deit_token"), cast(inputs, torch.float32))
    with pytest.raises(ValueError, match="mode"):
        LOSSES.build("deit_token", mode="medium")


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_deit_temperature_must_be_positive_and_finite(temperature):
    """The constructor is the only check of deit_token's temperature (a recipe's is built once to
    apply it): mutants that let 0 or inf through trained soft mode on NaN or on uniform targets."""
    with pytest.raises(ValueError, match="deit_token temperature must be > 0 and finite"):
        LOSSES.build("deit_token", mode="soft", temperature=temperature)


# --- kernel_transfer --------------------------------------------------------------------------


def class_stream(step: int, means_s: torch.Tensor, means_t: torch.Tensor, batch: int = 64):
    """A batch of pooled features scattered around fixed class means, with their labels."""
    g = torch.Generator().manual_seed(1000 + step)
    y = torch.randint(0, P, (batch,), generator=g)
    s = means_s[y] + 0.3 * torch.randn(batch, POOLED_S, generator=g)
    t = means_t[y] + 0.3 * torch.randn(batch, POOLED_T, generator=g)
    return LossInputs(student_logits=torch.zeros(batch, P), labels=y, student_pooled=s, teacher_pooled=t)


def class_means(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """True class means in student (3, 36) and teacher (3, 24) space."""
    return randn(P, POOLED_S, seed=seed, dtype=torch.float32), randn(P, POOLED_T, seed=seed + 1, dtype=torch.float32)


def fresh_kernel_transfer(**options) -> torch.nn.Module:
    """Weight 1 unless given, so values compare with the unweighted functional form."""
    loss = LOSSES.build("kernel_transfer", **{"weight": 1.0, **options})
    loss.setup(POOLED_CONTEXT)
    return loss.train()


def test_kernel_transfer_defaults_to_the_public_codes_weight():
    """At weight 1 the normalised term swamps the task loss (benchmarks/quality_digits.py, ekt1)."""
    assert LOSSES.build("kernel_transfer").weight == pytest.approx(0.04)


def test_kernel_transfer_running_centres_converge_to_class_means():
    means_s, means_t = class_means(30)
    loss = fresh_kernel_transfer(centres="running", momentum=0.9)
    first = total(loss, class_stream(0, means_s, means_t))
    assert first.item() == 0.0  # no centres yet
    for step in range(1, 80):
        total(loss, class_stream(step, means_s, means_t, batch=256))
    torch.testing.assert_close(loss.student_centres, means_s, atol=0.05, rtol=0)
    torch.testing.assert_close(loss.teacher_centres, means_t, atol=0.05, rtol=0)
    assert total(loss, class_stream(200, means_s, means_t)).item() > 0


def test_kernel_transfer_epoch_centres_swap_at_epoch_end():
    means_s, means_t = class_means(32)
    loss = fresh_kernel_transfer(centres="epoch")
    batches = [class_stream(step, means_s, means_t) for step in range(4)]
    for batch in batches:
        assert total(loss, batch).item() == 0.0  # first epoch: no centres yet
    assert torch.equal(loss.student_centres, torch.zeros(P, POOLED_S))
    loss.on_epoch_end(1)
    labels_all = torch.cat([b.labels for b in batches])
    s_all = torch.cat([b.student_pooled for b in batches])
    t_all = torch.cat([b.teacher_pooled for b in batches])
    for c in range(P):
        torch.testing.assert_close(loss.student_centres[c], s_all[labels_all == c].mean(0))
        torch.testing.assert_close(loss.teacher_centres[c], t_all[labels_all == c].mean(0))
    swapped = loss.student_centres.clone()
    total(loss, class_stream(10, 2 * means_s, 2 * means_t))
    assert torch.equal(loss.student_centres, swapped)  # no change until the next epoch end
    assert loss.counts.sum().item() == 64


def test_kernel_transfer_training_step_backpropagates_through_the_pre_update_centres():
    means_s, means_t = class_means(34)
    loss = fresh_kernel_transfer(centres="running", momentum=0.5)
    total(loss, class_stream(0, means_s, means_t))  # first step sets the centres
    batch = class_stream(1, means_s, means_t)
    student = batch.student_pooled.clone().requires_grad_()
    before_s, before_t = loss.student_centres.clone(), loss.teacher_centres.clone()
    value = total(loss, replace(batch, student_pooled=student))
    assert not torch.equal(loss.student_centres, before_s)  # the step moved the centres in place ...
    value.backward()  # ... and backward still works, with the centres the loss was computed with
    reference = student.detach().clone().requires_grad_()
    functional.kernel_transfer_loss(reference, batch.teacher_pooled, before_s, before_t).backward()
    torch.testing.assert_close(student.grad, reference.grad)


def test_kernel_transfer_does_not_update_in_eval_and_needs_setup():
    loss = fresh_kernel_transfer().eval()
    batch = class_stream(0, torch.ones(P, POOLED_S), torch.ones(P, POOLED_T))
    total(loss, batch)
    assert torch.equal(loss.student_centres, torch.zeros(P, POOLED_S))
    with pytest.raises(RuntimeError, match="setup"):
        total(LOSSES.build("kernel_transfer"), batch)
    with pytest.raises(ValueError, match=r"labels \(4,\).*\(64, 36\)"):
        total(loss, replace(batch, labels=batch.labels[:4]))


# --- srd ----------------------------------------------------------------------------------------


def test_srd_projects_and_normalises_before_the_distance():
    loss = build("srd", DOUBLE)
    inputs = pooled_inputs(16)
    projected = F.batch_norm(
        inputs.student_pooled @ loss.projector[0].weight.T + loss.projector[0].bias, None, None, training=True, eps=1e-12
    )
    teacher = F.batch_norm(inputs.teacher_pooled, None, None, training=True, eps=1e-4)  # SRD's public code's eps
    torch.testing.assert_close(total(loss, inputs), functional.srd_distance(projected, teacher))
    corr = build("srd", DOUBLE, variant="correlation")
    corr.projector.load_state_dict(loss.projector.state_dict())
    torch.testing.assert_close(total(corr, inputs), functional.srd_correlation(projected, teacher))


def test_srd_trains_on_a_batch_of_one_with_the_running_statistics():
    """The last batch of an epoch can hold one image; BatchNorm in training refused it, ending the run."""
    loss = build("srd", DOUBLE).train()
    inputs = pooled_inputs(16)
    one = replace(inputs, student_pooled=inputs.student_pooled[:1], teacher_pooled=inputs.teacher_pooled[:1],
                  labels=inputs.labels[:1])
    projected = F.batch_norm(one.student_pooled @ loss.projector[0].weight.T + loss.projector[0].bias,
                             torch.zeros(POOLED_T, dtype=DOUBLE), torch.ones(POOLED_T, dtype=DOUBLE), eps=1e-12)
    teacher = F.batch_norm(one.teacher_pooled, torch.zeros(POOLED_T, dtype=DOUBLE), torch.ones(POOLED_T, dtype=DOUBLE),
                           eps=1e-4)
    torch.testing.assert_close(total(loss, one), functional.srd_distance(projected, teacher))
    assert loss.projector[1].training and loss.teacher_norm.training  # back in training mode for the next batch


def test_srd_cannot_lower_its_distance_by_shrinking_the_projection():
    """The distance term is lower for a smaller student output when the student is uncorrelated with the
    teacher; an eps in the student's BatchNorm let training shrink the projection's batch variance towards
    it (the output's scale is sqrt(v / (v + eps))), and the demo's ViT collapsed to chance at eps 1e-4.
    The student's norm has (practically) no eps: the term is the same at any scale of the projection."""
    loss = build("srd", DOUBLE)
    teacher = randn(64, POOLED_T, seed=3)
    student = randn(64, POOLED_S, seed=4)
    terms = []
    for scale in (1.0, 1e-2, 1e-3):  # a projection batch variance of ~1 down to ~1e-6
        with torch.no_grad():
            loss.projector[0].weight.copy_(randn(POOLED_T, POOLED_S, seed=5) * scale)
            loss.projector[0].bias.zero_()
        inputs = LossInputs(student_logits=randn(64, P, seed=6), labels=torch.zeros(64, dtype=torch.long),
                            student_pooled=student, teacher_pooled=teacher)
        terms.append(total(loss, inputs))
    torch.testing.assert_close(terms[1], terms[0])
    torch.testing.assert_close(terms[2], terms[0])


def test_srd_needs_setup_and_a_known_variant():
    with pytest.raises(RuntimeError, match="setup"):
        total(LOSSES.build("srd"), cast(pooled_inputs(0), torch.float32))
    with pytest.raises(ValueError, match="variant"):
        LOSSES.build("srd", variant="cosine")
    with pytest.raises(ValueError, match="student_eps must be > 0"):
        LOSSES.build("srd", student_eps=0.0)


def test_srd_eps_are_options_so_that_records_hold_them():
    """The norms' eps were constants, which no record held: a run resumed after they changed went on
    with the new ones, silently. The recipe's eps reach each norm."""
    loss = build("srd", DOUBLE, student_eps=1e-5, teacher_eps=1e-3)
    assert (loss.projector[1].eps, loss.teacher_norm.eps) == (1e-5, 1e-3)
    inputs = pooled_inputs(16)
    projected = F.batch_norm(
        inputs.student_pooled @ loss.projector[0].weight.T + loss.projector[0].bias, None, None, training=True, eps=1e-5
    )
    teacher = F.batch_norm(inputs.teacher_pooled, None, None, training=True, eps=1e-3)
    torch.testing.assert_close(total(loss, inputs), functional.srd_distance(projected, teacher))


def test_an_rbf_rcka_over_a_large_label_set_says_what_its_inter_term_costs(caplog):
    """The RBF kernel has no batch x batch form: its inter term builds classes x classes kernels
    (1.5 GB and 8 s a CPU step at 8,000 classes), unlike the linear kernel's. Said above 4,096
    classes (64 MB a kernel), not at ImageNet's 1,000."""
    from hf_rcka.losses import RCKALoss
    from hf_rcka.losses.base import LossContext

    with caplog.at_level("WARNING", logger="hf_rcka"):
        RCKALoss(kernel="linear").setup(LossContext(num_labels=21841))
        RCKALoss(kernel="rbf").setup(LossContext(num_labels=4096))
        RCKALoss(kernel="rbf", inter_weight=0.0).setup(LossContext(num_labels=21841))
    assert not caplog.text
    with caplog.at_level("WARNING", logger="hf_rcka"):
        RCKALoss(kernel="rbf").setup(LossContext(num_labels=4097))
        RCKALoss(kernel="rbf").setup(LossContext(num_labels=21841))
    assert "inter-class term builds 4097 x 4097 kernels each step (about 0.3 GB" in caplog.text
    assert "inter-class term builds 21841 x 21841 kernels each step (about 7.6 GB" in caplog.text


@pytest.mark.parametrize("center, smallest_kept", [(True, (1, 3)), (False, (1, 2))])
def test_patch_cka_keeps_the_smallest_map_whose_cka_is_not_a_constant(center, smallest_kept):
    """3 patches (centred) or 2 (uncentred) are the fewest CKA relates: kept; one patch fewer is refused."""
    loss = PatchCKALoss(patch_size=4, center=center)
    h, w = smallest_kept
    assert loss.feature_problem((8, h, w)) is None and loss.feature_problem((8, w, h)) is None
    assert "would train nothing" in loss.feature_problem((8, h, w - 1))


def test_ce_names_class_ids_of_shape_b_by_1_as_ids():
    """A collator's (B, 1) class ids were called 'soft targets of shape (4, 1)', which they are not."""
    ce = LOSSES.build("ce")
    inputs = LossInputs(student_logits=torch.randn(4, 3), labels=torch.tensor([[0], [1], [2], [0]]))
    with pytest.raises(ValueError, match=r"ce got class ids of shape \(4, 1\): give one id per image, shape \(4,\)"):
        ce.term(inputs)
    inputs = LossInputs(student_logits=torch.randn(4, 3), labels=torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"ce got soft targets of shape \(4, 2\) for logits \(4, 3\)"):
        ce.term(inputs)


@pytest.mark.parametrize("center", [True, False])
def test_feature_cka_reduces_each_side_with_its_own_center_option(center):
    """Feature CKA reduces a wide side to its Gram (``reduce_teacher_feature`` /
    ``reduce_student_feature``) as its own ``center`` says: a centred Gram in an uncentred loss was
    refused at the first step (the side's and the CKA's center differ). Reduced, the term is the
    features' own."""
    loss = LOSSES.build("feature_cka", center=center)
    student = randn(B, TOKENS, WIDTH, seed=40).requires_grad_()
    teacher = randn(B, 4, 8, 12, seed=41)
    sides = loss.reduce_student_feature(student), loss.reduce_teacher_feature(teacher)
    assert all(isinstance(side, functional.GramSide) and side.center == center for side in sides)
    whole = loss(LossInputs(student_logits=randn(B, P, seed=42), student_features=(student,), teacher_features=(teacher,)))
    reduced = loss(LossInputs(student_logits=randn(B, P, seed=42), student_features=(sides[0],), teacher_features=(sides[1],)))
    torch.testing.assert_close(reduced["feature_cka"], whole["feature_cka"], rtol=1e-10, atol=1e-12)


def test_counted_rows_drop_a_stand_in_from_a_teacher_side_reduced_to_its_gram():
    """In evaluation feature CKA's teacher side comes reduced to its Gram: ``counted_rows`` must cut
    the stand-in's row and column out of it too (kept, the Gram no longer matched the student's
    counted rows), giving the term of the counted images' features."""
    loss = LOSSES.build("feature_cka").eval()
    student, teacher = randn(B, TOKENS, WIDTH, seed=43), randn(B, 4, 8, 12, seed=44)
    labels = torch.tensor([0, IGNORE_INDEX, 2, 1, 0])
    keep = labels != IGNORE_INDEX
    inputs = LossInputs(student_logits=randn(B, P, seed=45), labels=labels, student_features=(student,),
                        teacher_features=(loss.reduce_teacher_feature(teacher),))
    counted = inputs.counted_rows()
    assert counted.teacher_features[0].gram.shape == (4, 4)
    want = loss(LossInputs(student_logits=randn(4, P, seed=45), student_features=(student[keep],),
                           teacher_features=(teacher[keep],)))
    torch.testing.assert_close(loss(counted)["feature_cka"], want["feature_cka"], rtol=1e-10, atol=1e-12)


def test_kernel_transfer_running_centres_start_at_a_class_first_mean_then_move_by_momentum():
    """A class's first batch sets its centre to that batch's class mean (blended with the zero
    start, the centres began at a tenth of their size and took ~20 steps to grow); later batches move
    it by ``momentum``, and a class absent from a batch keeps its centre."""
    means_s, means_t = class_means(36)
    loss = fresh_kernel_transfer(centres="running", momentum=0.9)
    first, second = class_stream(0, means_s, means_t), class_stream(1, means_s, means_t)
    second = replace(second, labels=second.labels.clamp_max(1))  # class 2 absent from the second batch
    total(loss, first)
    firsts = []
    for c in range(P):
        firsts.append(first.student_pooled[first.labels == c].mean(0))
        torch.testing.assert_close(loss.student_centres[c], firsts[c])
        torch.testing.assert_close(loss.teacher_centres[c], first.teacher_pooled[first.labels == c].mean(0))
    total(loss, second)
    for c in range(2):
        want = 0.9 * firsts[c] + 0.1 * second.student_pooled[second.labels == c].mean(0)
        torch.testing.assert_close(loss.student_centres[c], want)
    torch.testing.assert_close(loss.student_centres[2], firsts[2])


@pytest.mark.parametrize("center", [True, False])
def test_patch_cka_reduces_the_teacher_in_training_only_and_with_its_own_center(center):
    """Patch CKA reduces the teacher's map to its patch Grams as its own ``center`` says (a centred
    side in an uncentred loss was refused at the first step) and in training only: in evaluation
    the map stays whole, so that an unreadable image's stand-in can still be dropped from it."""
    loss = PatchCKALoss(patch_size=4, center=center)
    student, teacher = randn(*MAP, seed=46), randn(*MAP, seed=47)
    side = loss.train().reduce_teacher_feature(teacher)
    assert isinstance(side, functional.PatchGramSide) and side.center == center
    logits = randn(B, P, seed=48)
    reduced = loss(LossInputs(student_logits=logits, student_features=(student,), teacher_features=(side,)))
    whole = loss(LossInputs(student_logits=logits, student_features=(student,), teacher_features=(teacher,)))
    torch.testing.assert_close(reduced["patch_cka"], whole["patch_cka"], rtol=1e-10, atol=1e-12)
    assert loss.eval().reduce_teacher_feature(teacher) is None


# --- mutation round 34: options that must reach the loss, values it must refuse ---------------


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_kd_temperature_must_be_positive_and_finite(temperature):
    """The constructor is kd's only check of its temperature: a mutant that took 0 trained on
    logits divided by 0 (NaN from the first step)."""
    with pytest.raises(ValueError, match="kd temperature must be > 0 and finite"):
        LOSSES.build("kd", temperature=temperature)
    assert LOSSES.build("kd", temperature=0.5).temperature == 0.5


def test_loss_defaults_are_the_documented_ones():
    """A recipe that leaves an option out gets the default its loss's docstring and recipes describe:
    mutants that changed kd's temperature, patch CKA's patch side, EKT's centres or momentum went
    unnoticed (a changed default moves every run that omits the option, silently)."""
    for name, option, value in (("kd", "temperature", 4.0), ("patch_cka", "patch_size", 4),
                                ("kernel_transfer", "centres", "running"), ("kernel_transfer", "momentum", 0.9),
                                ("srd", "variant", "distance"), ("srd", "alpha", 4.0)):
        assert LOSSES.default(name, option) == value, (name, option)


def test_fitnet_of_a_single_image_is_its_mse():
    """A batch of one image (an epoch's last, or an evaluation batch with one counted image) is an
    MSE like any other: only a batch of none has no value (a mutant gave NaN from one image on)."""
    inputs = aligned_map_inputs(18)
    one = replace(inputs, student_features=tuple(s[:1] for s in inputs.student_features),
                  teacher_features=tuple(t[:1] for t in inputs.teacher_features))
    want = sum(((s - t) ** 2).mean() for s, t in zip(one.student_features, one.teacher_features))
    torch.testing.assert_close(total(build("fitnet", DOUBLE), one), want)


def test_patch_cka_patch_size_1_relates_pixels_and_0_is_refused():
    """``patch_size: 1`` makes every pixel a patch (per channel, a CKA over the H x W pixels, each row
    the pixel over the batch); a mutant refused it, another took 0 and silently trained it as 1."""
    teacher = randn(B, 3, 4, 5, seed=61)
    student = related(teacher, 60)
    got = LOSSES.build("patch_cka", patch_size=1)(
        LossInputs(student_logits=randn(B, P, seed=62), student_features=(student,), teacher_features=(teacher,)))
    want = 1 - torch.stack([centered_cka(student[:, c].reshape(B, -1).T, teacher[:, c].reshape(B, -1).T)
                            for c in range(3)]).mean()
    torch.testing.assert_close(got["patch_cka"], want)
    for wrong in (0, -1):
        with pytest.raises(ValueError, match="patch_size must be >= 1"):
            LOSSES.build("patch_cka", patch_size=wrong)


def test_patch_cka_with_transpose_keeps_the_teacher_map_in_training():
    """The transposed term reads the teacher's pixels, which its patch Grams do not hold: with
    ``transpose: true`` the teacher's map reaches the loss whole in training too (a mutant reduced
    it, and the first training step failed on the reduced side)."""
    teacher = randn(*MAP, seed=63)
    assert PatchCKALoss(patch_size=4, transpose=True).train().reduce_teacher_feature(teacher) is None
    assert PatchCKALoss(patch_size=4).train().reduce_teacher_feature(teacher) is not None


def test_feature_cka_student_gram_carries_the_gradient_of_the_features_own_term():
    """The student's side reduced to its Gram where the student makes it (``reduce_student_feature``)
    must hand back the feature's own gradient: a mutant's detached Gram trained the student through
    nothing, with the same loss value."""
    loss = LOSSES.build("feature_cka")
    teacher = randn(B, 4, 8, 12, seed=64)
    student = randn(B, TOKENS, WIDTH, seed=65).requires_grad_()
    whole = loss(LossInputs(student_logits=randn(B, P, seed=66), student_features=(student,), teacher_features=(teacher,)))
    (want,) = torch.autograd.grad(whole["feature_cka"], student)
    reduced = loss(LossInputs(student_logits=randn(B, P, seed=66), student_features=(loss.reduce_student_feature(student),),
                              teacher_features=(loss.reduce_teacher_feature(teacher),)))
    (got,) = torch.autograd.grad(reduced["feature_cka"], student)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("options", [{"kernel": "rbf"}, {"gather": True}])
def test_feature_cka_keeps_the_features_whole_for_the_rbf_kernel_and_under_gather(options):
    """Only the linear CKA of the process's own rows reads a side through its B x B Gram: the RBF
    kernel needs the rows' distances, and ``gather`` the other processes' rows, which a Gram of this
    process's rows no longer has (mutants reduced them: the RBF loss failed at its first step, the
    gathered one related each process's batch alone)."""
    loss = LOSSES.build("feature_cka", **options)
    wide = randn(B, TOKENS, WIDTH, seed=67)
    assert loss.reduce_teacher_feature(wide) is None and loss.reduce_student_feature(wide) is None
    assert isinstance(LOSSES.build("feature_cka").reduce_teacher_feature(wide), functional.GramSide)


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.inf, math.nan])
def test_srd_refuses_an_alpha_that_is_not_positive_and_finite(alpha):
    """The constructor is SRD's only check of alpha (its eps: test_loss_record_defaults.py): mutants
    took 0, which makes every |s - t|^alpha 1 (a constant term that trains nothing), and inf."""
    with pytest.raises(ValueError, match="srd alpha must be > 0 and finite"):
        LOSSES.build("srd", alpha=alpha)


def test_srd_trains_the_projector_alone_and_its_norms_have_no_parameters():
    """SRD's batch norms are parameter-free (``affine=False``): with a scale and shift the teacher's
    norm became a trained part of the loss (the optimiser could move the teacher's side toward the
    student). The projector's Linear trains, and the term's gradient reaches it and the student."""
    loss = build("srd", DOUBLE)
    assert [name for name, _ in loss.named_parameters()] == ["projector.0.weight", "projector.0.bias"]
    inputs = pooled_inputs(19)
    student = inputs.student_pooled.clone().requires_grad_()
    total(loss, replace(inputs, student_pooled=student)).backward()
    assert student.grad.abs().sum() > 0 and loss.projector[0].weight.grad.abs().sum() > 0


def test_srd_gather_normalises_over_the_gathered_rows(monkeypatch):
    """``gather: true`` gathers both sides' pooled features before the norms and the batch mean (a
    mutant dropped the option: each process normalised its own rows). ``gather_rows`` is replaced by
    one that appends "another process's" rows."""
    import hf_rcka.losses.srd as srd

    inputs = pooled_inputs(20)
    others = {inputs.student_pooled.data_ptr(): randn(3, POOLED_S, seed=68),
              inputs.teacher_pooled.data_ptr(): randn(3, POOLED_T, seed=69)}
    monkeypatch.setattr(srd, "gather_rows", lambda x: torch.cat([x, others[x.data_ptr()]]))
    loss = build("srd", DOUBLE, gather=True)
    s, t = (torch.cat([x, others[x.data_ptr()]]) for x in (inputs.student_pooled, inputs.teacher_pooled))
    projected = F.batch_norm(s @ loss.projector[0].weight.T + loss.projector[0].bias, None, None, training=True,
                             eps=1e-12)
    teacher = F.batch_norm(t, None, None, training=True, eps=1e-4)
    want = torch.log(((projected - teacher).abs() ** 4).sum(1).mean() + 1e-5)
    torch.testing.assert_close(total(loss, inputs), want)


def test_kernel_transfer_momentum_takes_0_refuses_1_and_reaches_the_centres():
    """[0, 1), as its message says: momentum 0 (centres are the last batch's means) is a setting
    (a mutant refused it), 1 (centres frozen at a class's first batch) is not; and the momentum given
    is the one applied (a mutant kept 0.9 whatever the recipe said)."""
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        LOSSES.build("kernel_transfer", momentum=1.0)
    means_s, means_t = class_means(38)
    first, second = class_stream(0, means_s, means_t), class_stream(1, means_s, means_t)
    for momentum in (0.0, 0.5):
        loss = fresh_kernel_transfer(centres="running", momentum=momentum)
        total(loss, first)
        total(loss, second)
        for c in range(P):
            old, new = (b.student_pooled[b.labels == c].mean(0) for b in (first, second))
            torch.testing.assert_close(loss.student_centres[c], momentum * old + (1 - momentum) * new)


@pytest.mark.parametrize("option", ["intra_weight", "inter_weight"])
@pytest.mark.parametrize("value", [-1.0, math.inf, math.nan])
def test_rcka_term_weights_must_be_non_negative_and_finite(option, value):
    """Either term weight, not only the inter one: a mutant took an infinite ``intra_weight`` (a
    non-finite loss and gradients from the first step)."""
    with pytest.raises(ValueError, match="rcka intra_weight/inter_weight must be >= 0 and finite"):
        LOSSES.build("rcka", **{option: value})


def test_each_loss_says_what_it_reads():
    """The reading flags decide what the model computes and checks: whether a teacher is needed,
    whether the teacher's classes must be the run's (its logits are read), and which hidden states or
    pooled features are captured. A loss that reads only the teacher's side of a field needs its
    capture as much as one reading both."""
    from hf_rcka.losses import DistillationLoss, reads_features, reads_teacher, reads_teacher_logits

    want = {  # name: (teacher, teacher logits, features, pooled)
        "ce": (False, False, False, False), "kd": (True, True, False, False), "rcka": (True, True, False, False),
        "deit_token": (True, True, False, False), "feature_cka": (True, False, True, False),
        "patch_cka": (True, False, True, False), "fitnet": (True, False, True, False),
        "srd": (True, False, False, True), "kernel_transfer": (True, False, False, True),
    }
    for name, flags in want.items():
        cls, loss = LOSSES.get(name), build(name)
        assert (reads_teacher(cls), reads_teacher_logits(cls), reads_features(cls), loss.needs_pooled) == flags, name
        assert (loss.needs_teacher, loss.needs_features) == (flags[0], flags[2]), name

    class TeacherFeatures(DistillationLoss):
        requires = frozenset({"student_logits", "teacher_features"})

    class TeacherPooled(DistillationLoss):
        requires = frozenset({"student_logits", "teacher_pooled"})

    assert reads_features(TeacherFeatures) and TeacherPooled().needs_pooled and reads_teacher(TeacherPooled)
    assert not reads_teacher_logits(TeacherFeatures)


@pytest.mark.parametrize("patch_size", [3, 5])
def test_patch_cka_reduces_the_teacher_with_its_own_patch_size(patch_size):
    """The teacher's patch Grams are cut with the loss's ``patch_size``, whatever it is: a mutant
    cut them at the default 4, and a recipe with any other patch size failed at its first training
    step (the reduced side no longer matched the CKA's settings)."""
    loss = PatchCKALoss(patch_size=patch_size).train()
    student, teacher = randn(*MAP, seed=70), randn(*MAP, seed=71)
    side = loss.reduce_teacher_feature(teacher)
    assert isinstance(side, functional.PatchGramSide) and side.patch_size == patch_size
    logits = randn(B, P, seed=72)
    reduced = loss(LossInputs(student_logits=logits, student_features=(student,), teacher_features=(side,)))
    whole = loss(LossInputs(student_logits=logits, student_features=(student,), teacher_features=(teacher,)))
    torch.testing.assert_close(reduced["patch_cka"], whole["patch_cka"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("weight", [math.inf, math.nan])
def test_a_weight_that_is_not_finite_is_rejected(name, weight):
    """The class checks its weight too (the recipe check is not the only way in: ``LOSSES.build``,
    the Python API): a mutant took an infinite weight, a non-finite loss from the first step."""
    with pytest.raises(ValueError, match="weight must be >= 0 and finite"):
        LOSSES.build(name, weight=weight)


def test_the_sample_relation_terms_are_the_relational_losses_batch_terms():
    """An evaluation leaves a batch of fewer than ``min_relation_rows`` out of these terms' means (their
    values there are constants): feature CKA's one term, RCKA's intra term only (its inter term
    relates classes), none for a loss that relates no samples. A mutant named none, and the constant
    terms of a short last batch were averaged into the reported feature_cka."""
    assert LOSSES.build("feature_cka").sample_relation_terms == ("feature_cka",)
    assert LOSSES.build("rcka").sample_relation_terms == ("rcka_intra",)
    assert LOSSES.build("rcka", intra_weight=0.0).sample_relation_terms == ()
    assert not hasattr(LOSSES.build("kd"), "sample_relation_terms")
