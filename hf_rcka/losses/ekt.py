"""Efficient Kernel Transfer (Qian et al. 2020): Nystrom partial kernels against class centres."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import functional
from ..distributed import world_size
from ..registry import LOSSES
from .base import DistillationLoss, LossContext, LossInputs

_MODES = ("running", "epoch")


@LOSSES.register("kernel_transfer")
class KernelTransferLoss(DistillationLoss):
    """EKT: ``smooth_l1(F_s M_s^T, F_t M_t^T, sum) / ||F_t M_t^T||_F`` on pooled features.

    The whole-dataset Gram is approximated through landmarks (Nystrom), here the per-class
    feature centres kept separately in student space (``M_s``) and teacher space (``M_t``), so no
    projector is needed and each step costs O(B m d) instead of O(B^2 d). Centres are buffers:
    checkpoints keep them and data-parallel ranks sum their class statistics so they stay equal.

    ``centres: running`` updates them every training step by an exponential moving average
    (``momentum``); ``centres: epoch`` uses the previous epoch's means as in the paper (the loss is
    zero during the first epoch, which stands in for a warm-up: the public code trains 5 epochs of
    cross-entropy alone before the term starts). The weight defaults to the public code's 0.04 (its
    CIFAR-100 setting, at batch 256): the normalised term is several times the task loss, and at weight 1 it
    swamps it (``benchmarks/quality_digits.py``, variant ``ekt1``).

    Scale: the term is a sum over the process's B x m partial kernel divided by its norm, so it
    grows as sqrt(B * m) with the per-process batch B and the classes m (gradients too, measured:
    about 36 times stronger at 21,841 classes than at 10 for the same batch). Each process
    computes it on its own batch (the public code ran one process over its whole batch of 256),
    and data parallelism averages the processes' gradients: the same global batch over 8 processes of 32 gives it 1/sqrt(8) of the
    strength that one process of 256 does. Moving a recipe to another per-process batch or
    label set changes its effective weight: scale ``weight`` by sqrt(B_old m_old / (B_new m_new))
    to keep it.

    Under Mixup/CutMix the class centres need one class per image: a mixed image counts for its
    dominant class (the argmax of its soft target, i.e. the image with the larger mixing weight),
    which is its true class when the image was not mixed. The loss term itself reads no labels.

    Recipe::

        losses:
          - {name: ce, weight: 1.0}
          - {name: kernel_transfer, weight: 0.04, centres: running, momentum: 0.9}
    """

    requires = frozenset({"student_pooled", "teacher_pooled", "labels"})

    def __init__(self, weight: float = 0.04, centres: str = "running", momentum: float = 0.9) -> None:
        super().__init__(weight)
        if centres not in _MODES:
            raise ValueError(f"kernel_transfer centres must be one of {_MODES}, got {centres!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"kernel_transfer momentum must be in [0, 1), got {momentum}")
        self.centres = centres
        self.momentum = float(momentum)
        self.num_classes = 0

    def setup(self, context: LossContext) -> None:
        if context.student_pooled_dim is None or context.teacher_pooled_dim is None:
            raise ValueError("kernel_transfer needs the pooled feature sizes of student and teacher")
        m, ds, dt = context.num_labels, context.student_pooled_dim, context.teacher_pooled_dim
        self.num_classes = m
        self.register_buffer("student_centres", torch.zeros(m, ds))
        self.register_buffer("teacher_centres", torch.zeros(m, dt))
        self.register_buffer("seen", torch.zeros(m))
        if self.centres == "epoch":
            self.register_buffer("student_sums", torch.zeros(m, ds))
            self.register_buffer("teacher_sums", torch.zeros(m, dt))
            self.register_buffer("counts", torch.zeros(m))

    def term(self, inputs: LossInputs) -> torch.Tensor:
        if not hasattr(self, "student_centres"):
            raise RuntimeError("kernel_transfer.setup() was not called: build it through DistillationModel")
        if inputs.labels.shape[0] != inputs.student_pooled.shape[0]:
            raise ValueError(
                f"kernel_transfer got labels {tuple(inputs.labels.shape)} for pooled features "
                f"{tuple(inputs.student_pooled.shape)}: one label per sample is needed"
            )
        # Clones: the centres are updated in place below, while backward still needs these values.
        loss = functional.kernel_transfer_loss(
            inputs.student_pooled, inputs.teacher_pooled, self.student_centres.clone(), self.teacher_centres.clone()
        )
        if self.training:
            self._update(inputs.student_pooled.detach(), inputs.teacher_pooled.detach(), inputs.hard_labels())
        return loss

    @torch.no_grad()
    def _update(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> None:
        s_sums, counts = functional.class_sums(student.float(), labels, self.num_classes)
        t_sums, _ = functional.class_sums(teacher.float(), labels, self.num_classes)
        if world_size() > 1:  # one collective for the three
            packed = torch.cat([s_sums, t_sums, counts[:, None]], dim=1)
            dist.all_reduce(packed)
            s_sums, t_sums, counts = packed.split([s_sums.shape[1], t_sums.shape[1], 1], dim=1)
            counts = counts.squeeze(1)
        if self.centres == "epoch":
            self.student_sums += s_sums
            self.teacher_sums += t_sums
            self.counts += counts
            return
        # Classes of this batch move toward its means (taken as they are the first time); the others
        # keep their centres. Selected with where, not boolean indexing: a mask reads its count back
        # from the device, a stall per use.
        keep = torch.where(self.seen == 0, 0.0, self.momentum)[:, None]
        for centres, sums in ((self.student_centres, s_sums), (self.teacher_centres, t_sums)):
            _replace_present(centres, counts, keep * centres + (1 - keep) * (sums / counts.clamp_min(1)[:, None]))
        self.seen += counts

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        """Swap in this epoch's class means (``centres: epoch``); called by the trainer."""
        if self.centres != "epoch" or not hasattr(self, "counts"):
            return
        scale = self.counts.clamp_min(1)[:, None]
        _replace_present(self.student_centres, self.counts, self.student_sums / scale)
        _replace_present(self.teacher_centres, self.counts, self.teacher_sums / scale)
        self.seen += self.counts
        for buffer in (self.student_sums, self.teacher_sums, self.counts):
            buffer.zero_()


def _replace_present(centres: torch.Tensor, counts: torch.Tensor, updated: torch.Tensor) -> None:
    """``centres`` rows of the classes with a count take ``updated``'s; the others stay."""
    centres.copy_(torch.where((counts > 0)[:, None], updated, centres))
