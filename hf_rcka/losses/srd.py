"""SRD (Miles & Mikolajczyk, AAAI 2024): a linear projector plus parameter-free batch norm."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .. import functional
from ..distributed import gather_rows
from ..registry import LOSSES
from .base import DistillationLoss, LossContext, LossInputs

_VARIANTS = ("distance", "correlation")


@LOSSES.register("srd")
class SRDLoss(DistillationLoss):
    """Student pooled -> Linear(d_s, d_t) -> BatchNorm1d(affine=False, eps ~0); teacher -> BatchNorm1d (eps 1e-4).

    Two variants of the paper's public code:
      * ``distance`` (ResNet code, the default variant): ``log(mean_b sum_d |s - t|^alpha)``, alpha 4;
        that code weighs it 2 (the loss's own default weight is 1, so the recipe below sets 2).
      * ``correlation`` (DeiT code): ``c_d = mean_b(s_bd t_bd)``, ``log(sum_d |c_d - 1|^alpha)``.
    The projector is a trainable parameter of this loss; the trainer optimises it with the student
    and checkpoints keep it. The paper's ResNet recipe adds KL at T=1 (add ``kd`` with temperature 1).

    ``teacher_eps`` is the teacher's norm's eps: SRD's public code (OurDistillationLoss) sets 1e-4;
    the teacher side has no gradient, so it only damps the teacher's near-constant channels.
    ``student_eps`` is practically none (torch refuses 0 in training). The student's norm's input is
    the trained projection, and an eps makes its output's scale sqrt(v / (v + eps)) shrink with the
    projection's batch variance v: the distance term is lower at a smaller scale for a student
    uncorrelated with the teacher (E|c u - t|^4 = 3 (1 + c^2)^2 for independent unit Gaussians,
    least at c = 0), so training shrank v towards eps instead of learning, collapsing the student's
    pooled feature over the batch (the demo's ViT, whose projection starts at v ~ 1e-3, ended at
    chance with eps 1e-4 on each of seeds 0-4, and with 3e-5 on seed 0). Without an eps the output's
    scale is 1 whatever v is. The price, as for any normalisation without a floor: a batch whose
    projections nearly agree on a channel sends a gradient scaled by 1 / sqrt(v) through it (16
    near-identical rows: ~1e5 where eps 1e-5 gave ~1e2), which max_grad_norm bounds; a batch of
    real images differs far more than that.

    The batch norms and the mean over the batch see the process's own batch; ``gather: true``
    gathers every process's pooled features first (differentiably), so that they see the global
    batch, as the public code's one process (DataParallel) does with all 256 images.

    Recipe::

        losses:
          - {name: ce, weight: 1.0}
          - {name: srd, weight: 2.0, variant: distance, alpha: 4.0}
          - {name: kd, weight: 1.0, temperature: 1.0}
    """

    requires = frozenset({"student_pooled", "teacher_pooled"})

    def __init__(self, weight: float = 1.0, variant: str = "distance", alpha: float = 4.0, gather: bool = False,
                 student_eps: float = 1e-12, teacher_eps: float = 1e-4) -> None:
        super().__init__(weight)
        self.gather = bool(gather)
        if variant not in _VARIANTS:
            raise ValueError(f"srd variant must be one of {_VARIANTS}, got {variant!r}")
        if not 0 < alpha < math.inf:
            raise ValueError(f"srd alpha must be > 0 and finite, got {alpha}")
        for option, eps in (("student_eps", student_eps), ("teacher_eps", teacher_eps)):
            if not 0 < eps < math.inf:  # torch's BatchNorm divides by sqrt(var + eps) in training
                raise ValueError(f"srd {option} must be > 0 and finite, got {eps}")
        self.student_eps, self.teacher_eps = float(student_eps), float(teacher_eps)
        self.variant = variant
        self.alpha = float(alpha)
        self.projector: nn.Module | None = None
        self.teacher_norm: nn.Module | None = None

    def setup(self, context: LossContext) -> None:
        if context.student_pooled_dim is None or context.teacher_pooled_dim is None:
            raise ValueError("srd needs the pooled feature sizes of student and teacher")
        d_s, d_t = context.student_pooled_dim, context.teacher_pooled_dim
        self.projector = nn.Sequential(nn.Linear(d_s, d_t), nn.BatchNorm1d(d_t, eps=self.student_eps, affine=False))
        self.teacher_norm = nn.BatchNorm1d(d_t, eps=self.teacher_eps, affine=False)

    def term(self, inputs: LossInputs) -> torch.Tensor:
        if self.projector is None:
            raise RuntimeError("srd.setup() was not called: build it through DistillationModel")
        student, teacher = inputs.student_pooled, inputs.teacher_pooled
        if self.gather:  # the global batch: every process computes the same term (see RelationalLoss.rows)
            student, teacher = gather_rows(student), gather_rows(teacher)
        # A batch of one row (the last of an epoch can hold one image) has no batch statistics, and
        # BatchNorm refuses it in training: that batch is normalised with the running statistics.
        one_row = self.training and student.shape[0] < 2
        with torch.autocast(device_type=student.device.type, enabled=False), _running_norms(self, one_row):
            projected = self.projector(functional.upcast(student))
            teacher = self.teacher_norm(functional.upcast(teacher))
        if self.variant == "distance":
            return functional.srd_distance(projected, teacher, self.alpha)
        return functional.srd_correlation(projected, teacher, self.alpha)


@contextmanager
def _running_norms(loss: nn.Module, active: bool) -> Iterator[None]:
    """The loss's BatchNorm layers in eval mode (running statistics) while ``active``."""
    norms = [m for m in loss.modules() if isinstance(m, nn.BatchNorm1d) and m.training] if active else []
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        for norm in norms:
            norm.train()
