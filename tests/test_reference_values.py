"""Recipe options, metrics and boundaries checked against values computed independently (numpy, or
the formula written out): each of these once changed without any test failing, so a recipe option
that never reached the loss, a top-5 over four classes or an off-by-one at a boundary trained or
reported silently wrong."""
import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_rcka import LOSSES, LossInputs, functional
from hf_rcka.losses import LossContext

D = torch.float64


def rnd(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# ---- numpy references (the papers' formulas, written without hf_rcka)
def np_align(k, l, center):
    if center:
        n = k.shape[0]
        h = np.eye(n) - 1.0 / n
        k, l = h @ k @ h, h @ l @ h
    return (k * l).sum() / np.sqrt((k * k).sum() * (l * l).sum())


def np_public_rcka(x, y):  # uncentred, each Gram row divided by that sample's norm (RCKA's with_l2_norm)
    def g(a):
        a = a / np.linalg.norm(a)
        k = a @ a.T
        return k / np.sqrt(np.diag(k))[:, None]
    return np_align(g(x), g(y), center=False)


def np_rbf(x):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    med = np.median(d[~np.eye(len(x), dtype=bool)])
    return np.exp(-d / (2 * med))


def test_rcka_reference_mode_terms_are_the_public_codes():
    s, t = rnd(6, 4, seed=1) + rnd(6, 1, seed=2), rnd(6, 4, seed=3)
    terms = LOSSES.build("rcka", center=False, row_normalize=True)(LossInputs(student_logits=s, teacher_logits=t))
    S, T = s.numpy(), t.numpy()
    assert terms["rcka_intra"].item() == pytest.approx(1 - np_public_rcka(S, T), abs=1e-9)
    assert terms["rcka_inter"].item() == pytest.approx(1 - np_public_rcka(S.T, T.T), abs=1e-9)


@pytest.mark.parametrize("center", [True, False])
def test_rcka_rbf_terms_follow_the_center_option(center):
    s, t = rnd(7, 5, seed=4), rnd(7, 5, seed=5)
    terms = LOSSES.build("rcka", kernel="rbf", center=center)(LossInputs(student_logits=s, teacher_logits=t))
    S, T = s.numpy(), t.numpy()
    assert terms["rcka_intra"].item() == pytest.approx(1 - np_align(np_rbf(S), np_rbf(T), center), abs=1e-6)


def test_patch_cka_loss_transpose_option_reaches_the_functional():
    s, t = rnd(3, 4, 8, 8, seed=6), rnd(3, 4, 8, 8, seed=7)
    inputs = LossInputs(student_logits=rnd(3, 2, seed=0), student_features=(s,), teacher_features=(t,))
    got = LOSSES.build("patch_cka", patch_size=4, transpose=True)(inputs)["patch_cka"]
    want = 1 - functional.patch_cka(s, t, 4, transpose=True).mean()
    plain = 1 - functional.patch_cka(s, t, 4, transpose=False).mean()
    assert got.item() == pytest.approx(want.item(), abs=1e-9) and abs(want.item() - plain.item()) > 1e-3


@pytest.mark.parametrize("variant", ["distance", "correlation"])
def test_srd_alpha_option_is_used(variant):
    """``alpha`` raises SRD's distance to its power in both variants: ``variant: correlation`` (SRD's
    DeiT code, |c_d - 1|) dropped it (always 4), silently."""
    loss = LOSSES.build("srd", alpha=2.0, **({"variant": variant} if variant == "correlation" else {}))
    loss.setup(LossContext(num_labels=3, student_pooled_dim=6, teacher_pooled_dim=5))
    loss.to(D).eval()
    s, t = rnd(8, 6, seed=8), rnd(8, 5, seed=9)
    got = loss(LossInputs(student_logits=rnd(8, 3, seed=0), student_pooled=s, teacher_pooled=t))["srd"]
    with torch.no_grad():
        p, q = loss.projector(s).numpy(), loss.teacher_norm(t).numpy()
    powered = (np.abs((p * q).mean(0) - 1.0) ** 2).sum() if variant == "correlation" else (np.abs(p - q) ** 2).sum(1).mean()
    assert got.item() == pytest.approx(math.log(powered + 1e-5), abs=1e-9)


def test_top5_counts_a_label_ranked_fifth():
    from transformers import EvalPrediction

    from hf_rcka.trainer.metrics import accuracy_metrics
    logits = np.tile(np.arange(10, 0, -1, dtype=np.float32), (4, 1))   # class 0 ranked 1st ... class 9 10th
    m = accuracy_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 4, 5, 9])))
    assert m == {"accuracy": 0.25, "top5_accuracy": 0.5}
    five = accuracy_metrics(EvalPrediction(predictions=logits[:, :5], label_ids=np.array([0, 4, 1, 2])))
    assert "top5_accuracy" not in five  # with 5 classes top-5 is always right: not reported
    # ties and NaN rank as argmax ranks them, as a sort would: a model whose logits are all equal (or
    # all NaN) scores top-5 on classes 0-4 only, not on every image
    for flat in (np.zeros((4, 10), np.float32), np.full((4, 10), np.nan, np.float32)):
        assert accuracy_metrics(EvalPrediction(predictions=flat, label_ids=np.array([0, 4, 5, 9]))) == m
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((200, 50)).astype(np.float32), rng.integers(0, 50, 200)
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    assert accuracy_metrics(EvalPrediction(predictions=logits, label_ids=labels))["top5_accuracy"] == pytest.approx(
        (top5 == labels[:, None]).any(axis=-1).mean())


def test_an_odd_batch_mixes_the_targets_of_the_mixed_pixels():
    from hf_rcka.augmentation import AugmentationArguments
    from hf_rcka.data.mixing import build_mixup, mix_batch
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, 4, 4, dtype=D), torch.tensor([0, 2, 1, 2, 1])
    mixed, targets = mix_batch(build_mixup(AugmentationArguments(mixup=0.8, mixup_prob=1.0), 3), x.clone(), y)
    lam = float(((mixed[:4] - x[:4].flip(0)) / (x[:4] - x[:4].flip(0)))[0].mean())
    one_hot = torch.nn.functional.one_hot(y[:4], 3).double()
    torch.testing.assert_close(targets[:4].double(), lam * one_hot + (1 - lam) * one_hot.flip(0), atol=1e-6, rtol=0)


def test_present_classes_never_reads_minus_one_as_the_last_class():
    from hf_rcka.data.label_values import present_classes
    ds = datasets.Dataset.from_dict({"label": [0, -1, 0]}, features=datasets.Features({"label": datasets.ClassLabel(names=["a", "b", "c"])}))
    assert present_classes(ds, "label") == {"a"}


def test_a_float_image_whose_maximum_is_one_is_not_stretched():
    from hf_rcka.data.images import to_rgb
    arr = np.array([[0.25, 1.0]], dtype=np.float32)
    assert np.asarray(to_rgb(Image.fromarray(arr, mode="F")))[0, :, 0].tolist() == [64, 255]


def test_sixteen_bit_uses_the_exact_range_divisor():
    from hf_rcka.data.images import to_rgb
    arr = np.array([[257 * 100 + 128, 257 * 200]], dtype=np.uint16)   # 100.498 -> 100 ; /256 gives 101
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [100, 200]


def test_ra_sampler_order_depends_on_seed_after_set_epoch():
    from hf_rcka.data.sampler import RepeatedAugmentationSampler
    a, b = RepeatedAugmentationSampler(range(30), 3, 1, 0, seed=0), RepeatedAugmentationSampler(range(30), 3, 1, 0, seed=1)
    a.set_epoch(0)
    b.set_epoch(0)                                    # what Trainer does at each epoch's start
    assert list(a) != list(b)


def test_transposed_patch_term_is_kept_at_exactly_three_pixels():
    s, t = rnd(3, 2, 2, 2, seed=10), rnd(3, 2, 2, 2, seed=11)        # patch 1x1: B*ph*pw = 3 pixels per patch
    from hf_rcka.functional.patch import _patch_rows
    rs, rt = _patch_rows(s, 1, 1), _patch_rows(t, 1, 1)
    want = 0.5 * (functional.linear_cka(rs, rt) + functional.linear_cka(rs.transpose(-2, -1), rt.transpose(-2, -1)))
    torch.testing.assert_close(functional.patch_cka(s, t, 1, transpose=True), want)


def test_constant_features_give_a_finite_cka_on_wide_gram_path():
    """Its centred trace rounded to -7e-16 on the Gram path: rsqrt gave NaN, which the constant-side
    mask (a multiplication by 0) kept, so feature_cka on a constant teacher map was NaN."""
    x = (torch.rand(1, 500, generator=torch.Generator().manual_seed(0)) * 10).expand(300, 500).contiguous()
    assert torch.isfinite(functional.linear_cka(x, torch.randn(300, 6))).item()


def test_capture_refuses_a_mode_whose_states_differ():
    from conftest import tiny_vit

    from hf_rcka.features.capture import HiddenStateCapture
    model = tiny_vit().eval()
    pixels = torch.randn(2, 3, 16, 16)
    cap = HiddenStateCapture(model, [1], pixels)
    _, states = cap(pixels)
    assert not cap._matches(cap.mode, pixels, {1: states[1] + 1.0})


def test_timm_distilled_heads_are_read_in_order():
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from hf_rcka.modeling.distilled_heads import DistilledHeads
    pytest.importorskip("timm")
    cfg = TimmWrapperConfig(architecture="deit_tiny_distilled_patch16_224", num_labels=3,
                            model_args={"img_size": 32, "embed_dim": 24, "depth": 1, "num_heads": 2})
    student = TimmWrapperForImageClassification(cfg).eval()
    with torch.no_grad():
        student.timm_model.head_dist.weight.zero_()
        student.timm_model.head_dist.bias.copy_(torch.tensor([7.0, 8.0, 9.0]))
    heads = DistilledHeads(student)
    with heads.reading():
        student(pixel_values=torch.randn(2, 3, 32, 32))
    cls, dist = heads.take()
    torch.testing.assert_close(dist, torch.tensor([[7.0, 8.0, 9.0]] * 2))


def _trainer(tmp_path, losses):
    from conftest import pixel_dataset, processor, tiny_resnet, tiny_vit

    from hf_rcka import DistillationTrainer, DistillationTrainingArguments
    args = DistillationTrainingArguments(output_dir=str(tmp_path / "r"), report_to="none", use_cpu=True, losses=losses,
                                         teacher_accuracy_check="off", per_device_eval_batch_size=3)
    return DistillationTrainer(model=tiny_vit(), teacher=tiny_resnet(), args=args, eval_dataset=pixel_dataset(6),
                               processing_class=processor(16), teacher_processor=processor(16))


def test_a_batch_of_exactly_min_relation_rows_counts(tmp_path):
    trainer = _trainer(tmp_path, [{"name": "ce"}, {"name": "rcka"}])
    terms = dict.fromkeys(["ce", "rcka_intra", "rcka_inter"], torch.tensor(0.5))
    assert trainer._evaluation_weights(torch.tensor([0, 1, 2]), terms) == {"ce": 3.0, "rcka_intra": 3.0, "rcka_inter": 3.0}
    assert trainer._evaluation_weights(torch.tensor([0, 1]), terms)["rcka_intra"] == 0.0


def test_teacher_accuracy_leaves_out_ignored_rows(tmp_path):
    trainer = _trainer(tmp_path, [{"name": "ce"}, {"name": "kd"}])
    model = trainer.distillation_model
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        pred = model.teacher(pixel_values=model.teacher_pixels(pixels)).logits.argmax(-1)
    assert model.teacher_accuracy(pixels, torch.tensor([int(pred[0]), -100])) == 1.0


def test_top5_breaks_ties_toward_the_lower_class_id_and_reads_the_logits_of_a_tuple():
    """Equal logits rank the lower class id first, as argmax does: with ties broken the other way,
    all-equal logits put classes 0-3 out of the top 5 (a top-5 of 0.0 where argmax's ranking gives
    1.0; labels 0, 4, 5, 9 scored the same either way, so the tie-break went untested). Predictions
    given as a tuple are scored on their first element, the logits (a second, e.g. hidden states,
    scored instead gave another accuracy)."""
    from transformers import EvalPrediction

    from hf_rcka.trainer.metrics import accuracy_metrics
    flat = np.zeros((4, 10), np.float32)
    assert accuracy_metrics(EvalPrediction(predictions=flat, label_ids=np.array([0, 1, 2, 3]))) == {
        "accuracy": 0.25, "top5_accuracy": 1.0}
    logits = np.tile(np.arange(10, 0, -1, dtype=np.float32), (4, 1))  # class 0 ranked 1st
    other = np.tile(np.arange(10, dtype=np.float32), (4, 1))  # class 9 ranked 1st
    labels = np.array([0, 1, 2, 9])
    assert accuracy_metrics(EvalPrediction(predictions=(logits, other), label_ids=labels)) == {
        "accuracy": 0.25, "top5_accuracy": 0.75}


@pytest.mark.parametrize("center", [True, False])
def test_feature_cka_rbf_sums_the_pairs_terms(center):
    """``feature_cka`` is ``sum_pairs (1 - CKA)`` with the RBF kernel too (its own code path): a
    mutant averaged the pairs, halving the loss of a two-pair recipe."""
    s1, t1 = rnd(7, 3, 4, seed=20), rnd(7, 2, 2, 2, seed=21)
    s2, t2 = rnd(7, 6, seed=22), rnd(7, 5, seed=23)
    loss = LOSSES.build("feature_cka", kernel="rbf", center=center)
    got = loss(LossInputs(student_logits=rnd(7, 3, seed=0), student_features=(s1, s2), teacher_features=(t1, t2)))
    want = sum(1 - np_align(np_rbf(s.reshape(7, -1).numpy()), np_rbf(t.reshape(7, -1).numpy()), center)
               for s, t in ((s1, t1), (s2, t2)))
    assert got["feature_cka"].item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("name", ["rcka", "feature_cka"])
def test_gather_option_relates_the_gathered_rows(name, monkeypatch):
    """``gather: true`` relates every process's rows: what ``gather_rows`` returns (here replaced by
    one that appends "another process's" rows) reaches both sides' relations; a mutant that dropped
    the option related each process's own rows, and no single-process test saw it."""
    import hf_rcka.losses.base as base

    s, t = rnd(4, 3, seed=24), rnd(4, 3, seed=25)
    others = {s.data_ptr(): rnd(3, 3, seed=26), t.data_ptr(): rnd(3, 3, seed=27)}
    monkeypatch.setattr(base, "gather_rows", lambda x: torch.cat([x, others[x.data_ptr()]]))
    S, T = (torch.cat([x, others[x.data_ptr()]]).numpy() for x in (s, t))
    if name == "rcka":
        terms = LOSSES.build("rcka", gather=True)(LossInputs(student_logits=s, teacher_logits=t))
        assert terms["rcka_intra"].item() == pytest.approx(1 - np_align(S @ S.T, T @ T.T, True), abs=1e-9)
        assert terms["rcka_inter"].item() == pytest.approx(1 - np_align(S.T @ S, T.T @ T, True), abs=1e-9)
    else:
        terms = LOSSES.build("feature_cka", gather=True)(
            LossInputs(student_logits=s, student_features=(s,), teacher_features=(t,)))
        assert terms["feature_cka"].item() == pytest.approx(1 - np_align(S @ S.T, T @ T.T, True), abs=1e-9)
