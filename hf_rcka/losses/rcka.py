"""Relation-Centered Kernel Alignment (Zhou et al., IJCAI 2024): logit RCKA and feature CKA."""

from __future__ import annotations

import logging
import math

import torch

from .. import functional
from ..registry import LOSSES
from .base import LossContext, LossInputs, RelationalLoss

logger = logging.getLogger(__name__)
_LARGE_RBF_CLASSES = 4096  # 64 MB per kernel; above it a step's kernels take a GB or more


def _cka(x: torch.Tensor, y: torch.Tensor, kernel: str, center: bool, row_normalize: bool) -> torch.Tensor:
    if kernel == "rbf":
        return functional.rbf_cka(x, y, center=center)
    return functional.linear_cka(x, y, center=center, row_normalize=row_normalize)


def _check_kernel(kernel: str) -> str:
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    return kernel


@LOSSES.register("rcka")
class RCKALoss(RelationalLoss):
    """Logit RCKA: ``w_intra (1 - CKA(N x N)) + w_inter (1 - CKA(P x P))``.

    The intra term aligns sample relations (rows of the B x P logits), the inter term class
    relations (the transposes). CKA ignores the logits' scale, so an over-confident teacher does
    not push the student to extreme logits the way KD's temperature matching can (and a
    temperature would change nothing: CKA is scale invariant). Raw logits, as
    in the paper; ``center: false, row_normalize: true`` reproduces the public code's uncentered,
    row-normalised alignment. The public code weights the inter term with the intra weight; here
    each term has its own weight.

    The defaults are 1 and 1, not the paper's 15 and 15: on short schedules 15/15 swamps the task
    loss and the student collapses (``benchmarks/quality_digits.py``, variant ``rcka15``, in both
    directions), while 1/1 never did worse than the student alone on average. The RCKA ImageNet
    recipes, on the papers' full schedules (100 epochs for ResNet-18, DeiT's 300 for DeiT-S), set
    15/15 explicitly.

    ``gather: true`` computes the relations over the global batch under data parallelism. The two
    terms are returned (and logged) apart, as ``rcka_intra`` and ``rcka_inter``.

    Recipe::

        losses:
          - {name: ce, weight: 1.0}
          - {name: rcka, weight: 1.0, intra_weight: 1.0, inter_weight: 1.0}
    """

    requires = frozenset({"student_logits", "teacher_logits"})

    def __init__(
        self,
        weight: float = 1.0,
        intra_weight: float = 1.0,
        inter_weight: float = 1.0,
        center: bool = True,
        row_normalize: bool = False,
        kernel: str = "linear",
        gather: bool = False,
    ) -> None:
        super().__init__(weight, gather)
        if not (0 <= intra_weight < math.inf and 0 <= inter_weight < math.inf):
            raise ValueError(
                f"rcka intra_weight/inter_weight must be >= 0 and finite, got {intra_weight}/{inter_weight}"
            )
        if not (intra_weight or inter_weight):
            raise ValueError("rcka intra_weight and inter_weight are both 0: drop the rcka loss instead")
        self.intra_weight = float(intra_weight)
        self.inter_weight = float(inter_weight)
        self.center = bool(center)
        self.row_normalize = bool(row_normalize)
        self.kernel = _check_kernel(kernel)
        if self.row_normalize and self.kernel == "rbf":
            raise ValueError("rcka row_normalize applies to the linear kernel (the public code's with_l2_norm); "
                             "kernel: rbf would ignore it: drop one of them")

    @property
    def term_weights(self) -> dict[str, float]:
        """``rcka_intra``: ``weight * intra_weight``; ``rcka_inter``: ``weight * inter_weight``.

        A term whose own weight (``intra_weight`` / ``inter_weight``) is 0 is left out: :meth:`terms`
        does not compute it, so no evaluation reports it, and the names checked up front against
        ``metric_for_best_model`` come from here. (``weight: 0`` keeps both: they are computed.)
        """
        own = {self._intra: self.intra_weight, self._inter: self.inter_weight}
        return {term: self.weight * weight for term, weight in own.items() if weight}

    def setup(self, context: LossContext) -> None:
        """An RBF inter term has no cheaper form than its classes x classes kernels: said when large."""
        classes = context.num_labels
        if self.kernel == "rbf" and self.inter_weight and classes > _LARGE_RBF_CLASSES:
            logger.warning("rcka kernel: rbf: its inter-class term builds %d x %d kernels each step (about %.1f GB "
                           "with their gradients): the linear kernel relates classes through batch x batch products "
                           "instead", classes, classes, 4 * 4 * classes * classes / 1e9)

    @property
    def min_relation_rows(self) -> int:
        """Only the intra term relates samples; the inter term relates classes, over any batch."""
        return super().min_relation_rows if self.intra_weight else 0

    @property
    def sample_relation_terms(self) -> tuple[str, ...]:
        return (self._intra,) if self.intra_weight else ()

    @property
    def _intra(self) -> str:
        return f"{self.registry_name}_intra"

    @property
    def _inter(self) -> str:
        return f"{self.registry_name}_inter"

    def terms(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        """``1 - CKA`` of sample relations (intra) and of class relations (inter), for the terms in
        :attr:`term_weights` only: one list decides what is computed and what is reported."""
        student, teacher = self.rows(inputs.student_logits), self.rows(inputs.teacher_logits)
        if student.shape != teacher.shape:
            raise ValueError(
                f"rcka needs student and teacher logits of equal shape, got {tuple(student.shape)} and "
                f"{tuple(teacher.shape)}: do both models predict the same label set?"
            )
        relations = {self._intra: (student, teacher), self._inter: (student.T, teacher.T)}
        return {term: 1.0 - _cka(*relations[term], self.kernel, self.center, self.row_normalize)
                for term in self.term_weights}


@LOSSES.register("feature_cka")
class FeatureCKALoss(RelationalLoss):
    """Batch-relational CKA on hidden states: ``sum_pairs (1 - CKA(B x B))``.

    Each feature (tokens, maps or pooled vectors of any shape) is flattened to B x (everything
    else); the B x B Gram does not depend on the channel count, so no projector is needed and
    CNN maps can be compared with ViT tokens directly (the 'identity' adapter suffices).

    With the linear kernel and no ``gather``, each teacher feature wider than the batch is reduced
    to its B x B Gram right after the teacher's forward (``reduce_teacher_feature``), so a CNN
    teacher's stages are not held through the student's forward. The value is the same. This
    needs feature CKA to be the only loss reading the pairs, through adapters that hand the
    teacher's side on unchanged (identity, linear). Under the same conditions, through the
    identity adapter, each student feature is reduced to its Gram where the student makes it
    (``reduce_student_feature``): the Gram's backward then hands back the feature's gradient
    where the student's backward reaches that feature, so a CNN student's stage gradients are
    not held through the backward of its later stages. Value and gradients are the same.

    Recipe::

        feature_pairs: auto
        losses:
          - {name: ce, weight: 1.0}
          - {name: feature_cka, weight: 1.0}
    """

    requires = frozenset({"student_features", "teacher_features"})

    def __init__(
        self, weight: float = 1.0, center: bool = True, kernel: str = "linear", gather: bool = False
    ) -> None:
        super().__init__(weight, gather)
        self.center = bool(center)
        self.kernel = _check_kernel(kernel)

    def reduce_teacher_feature(self, teacher: torch.Tensor) -> functional.GramSide | None:
        """The teacher's B x B Gram (``functional.GramSide``), all the linear CKA reads of it; None
        (the feature whole) for the RBF kernel, under ``gather`` (the Gram of the global batch needs
        every rank's rows) and for a feature no wider than the batch (it is no larger than its Gram)."""
        return self._gram_side(teacher)

    def reduce_student_feature(self, student: torch.Tensor) -> functional.GramSide | None:
        """The student's B x B Gram, with its gradient, under the conditions of ``reduce_teacher_feature``."""
        return self._gram_side(student)

    def _gram_side(self, feature: torch.Tensor) -> functional.GramSide | None:
        # not the public methods calling each other: a subclass's teacher reduction (under
        # no_grad, say) would otherwise become the student's too
        if self.kernel != "linear" or self.gather or not isinstance(feature, torch.Tensor):
            return None
        rows = functional.sample_rows(feature)
        if rows.shape[-1] <= rows.shape[-2]:
            return None
        return functional.linear_cka_side(rows, center=self.center)

    def term(self, inputs: LossInputs) -> torch.Tensor:
        sides = [[side if isinstance(side, functional.GramSide) else self.rows(functional.sample_rows(side))
                  for side in pair] for pair in self.feature_pairs(inputs)]
        if self.kernel == "linear":  # the pairs' CKAs from their Grams in one batch
            students, teachers = zip(*sides)
            return (1.0 - functional.linear_cka_many(list(students), list(teachers), center=self.center)).sum()
        return torch.stack([1.0 - _cka(s, t, self.kernel, self.center, row_normalize=False) for s, t in sides]).sum()
