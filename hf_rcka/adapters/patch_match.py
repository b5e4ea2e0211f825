"""The 'patch_match' adapter: ViT tokens and CNN maps on one grid, with optional projection."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features.layout import FeatureSpec, resample, to_fmap
from ..registry import ADAPTERS
from .base import FeatureAdapter, check_flag

GRID_CHOICES = ("min", "student", "teacher")


class PreparedTeacher(NamedTuple):
    """A patch_match pair's teacher side on the common grid (or what the reading loss reduced that
    map to), and its sampled channels (None: all)."""

    fmap: Any
    channels: Tensor | None


class PreparedStudent(NamedTuple):
    """A patch_match pair's student side as a prefix-free map, pooled down towards the common grid."""

    fmap: Tensor


@ADAPTERS.register("patch_match")
class PatchMatchAdapter(FeatureAdapter):
    """Turns both sides into prefix-free (B, C, h, w) maps on one common grid.

    Heterogeneous pairs (a DeiT student at stride 16 and a RegNet stage at stride 8 or 32) only
    become comparable patch by patch once both sit on the same grid: tokens are laid out as maps
    (prefix tokens dropped), then resampled (average pooling down, bilinear up). A 1x1 conv then
    projects student channels to the teacher's, so shape-sensitive losses (FitNets, patch CKA)
    see equal shapes.

    A wide teacher stage makes that projection the largest single cost of a patch-CKA step (DeiT-S's
    384 channels to RegNetY-16GF's 1232 and 3024), and every compared channel also costs the loss
    its patch copies and Gram. Losses that average a term per channel (patch CKA, FitNets) only
    need an unbiased estimate of that mean per step, so ``sample_channels`` compares a fresh random
    subset of the teacher's channels in each training step, projecting only those: every channel
    is equally likely, so the expected loss and gradient are those of all channels, as a
    mini-batch estimates the mean over the data. Evaluation always compares all channels.

    Args:
        student: spec of the student feature.
        teacher: spec of the teacher feature.
        grid: "min" (default: per dimension the coarser of the two grids, so nothing is invented
            by upsampling), "student", "teacher", or an explicit [h, w].
        project: learnable 1x1 conv from student to teacher channels; None projects only when the
            channel counts differ.
        bias: whether the projection has a bias.
        sample_channels: channels compared per training step when the teacher has more: an int,
            "student" (the student's width, which bounds the rank of the projection anyway) or
            None (all). Only for losses that average over channels.
    """

    # forward hands the teacher's map on, once on the common grid: reduce_teacher lets the reading
    # loss reduce it there (a subclass with its own forward or prepare_teacher gets the map whole)
    passes_teacher = True

    def __init__(
        self,
        student: FeatureSpec,
        teacher: FeatureSpec,
        *,
        grid: str | tuple[int, int] = "min",
        project: bool | None = None,
        bias: bool = True,
        sample_channels: int | str | None = None,
    ) -> None:
        super().__init__(student, teacher)
        check_flag("patch_match project", project, allow_none=True)
        check_flag("patch_match bias", bias)
        self.grid = _common_grid(grid, student.grid, teacher.grid)
        self.sample_channels = _sample_size(sample_channels, student.channels)
        if project is None:
            project = student.channels != teacher.channels
        self.proj = _Projection(student.channels, teacher.channels, 1, bias=bias) if project else None

    def prepare_teacher(self, teacher: Tensor) -> PreparedTeacher:
        """The teacher's map with this step's sampled channels only, pooled down towards the common
        grid (growing it waits for ``forward``, so that no larger map is held).

        Right after the teacher's forward this is what the pair holds through the student's
        forward, instead of the stage itself: RegNetY-16GF's four stages hold 1.44 M values per
        image at 224 px, their maps on DeiT-S's 14 x 14 grid with 384 sampled channels 0.21 M.
        A subclass that overrides ``forward`` gets this result as ``teacher`` inside the model.
        """
        teacher = to_fmap(teacher, self.teacher_spec)
        channels = self._sampled(teacher)
        teacher = _select(teacher, channels, self.grid)
        return PreparedTeacher(resample(teacher, _shrunk(teacher, self.grid)), channels)

    def reduce_teacher(self, teacher: PreparedTeacher, reduce: Callable[[Tensor], Any]) -> PreparedTeacher:
        """The prepared side with its map, on the common grid, reduced by the reading loss (patch
        CKA's per-channel patch Grams in training: ``PatchCKALoss.reduce_teacher_feature``), so that
        the map is not held through the student's forward; the sampled channels stay for the
        projection."""
        if not self.passes_teacher:
            return teacher
        reduced = reduce(resample(teacher.fmap, self.grid))
        return teacher if reduced is None else PreparedTeacher(reduced, teacher.channels)

    def prepare_student(self, student: Tensor) -> PreparedStudent:
        """The student's hidden state as a map, pooled down towards the common grid where the student
        makes it: the pooling's backward, which hands back a gradient of the whole state (a ResNet-50
        first stage's 56 x 56 map for DeiT-B's 14 x 14 grid), then runs where the student's backward
        reaches that state (see ``FeatureAdapter.prepare_student``)."""
        student = to_fmap(student, self.student_spec)
        return PreparedStudent(resample(student, _shrunk(student, self.grid)))

    def forward(self, student: Tensor | PreparedStudent, teacher: Tensor | PreparedTeacher) -> tuple[Tensor, Tensor]:
        prepared = teacher if isinstance(teacher, PreparedTeacher) else self.prepare_teacher(teacher)
        teacher, channels = prepared.fmap, prepared.channels
        if isinstance(teacher, Tensor):  # else the loss reduced it on the grid (reduce_teacher)
            teacher = resample(teacher, self.grid)
        student = (student if isinstance(student, PreparedStudent) else self.prepare_student(student)).fmap
        if self.proj is None:
            return resample(_select(student, channels, self.grid), self.grid), teacher
        # a 1x1 conv commutes with pooling and bilinear resampling: it runs on the pooled map, before
        # any growing, so on the smaller of the two grids per dimension
        return resample(self.proj(student, channels), self.grid), teacher

    def _sampled(self, teacher: Tensor) -> Tensor | None:
        """This step's sorted random teacher channels, or None for all (evaluation, narrow teachers)."""
        total = teacher.shape[1]
        if not self.training or self.sample_channels is None or self.sample_channels >= total:
            return None
        return torch.randperm(total, device=teacher.device)[: self.sample_channels].sort().values

    def extra_repr(self) -> str:
        sampled = f", sample_channels={self.sample_channels}" if self.sample_channels else ""
        return f"{super().extra_repr()}, grid={self.grid}{sampled}"


class _Projection(nn.Conv2d):
    """The 1x1 projection, optionally to some output channels only (its own forward, so that FSDP's
    hooks gather a separately sharded weight before it is sliced)."""

    def forward(self, fmap: Tensor, channels: Tensor | None = None) -> Tensor:
        if channels is None:
            return super().forward(fmap)
        bias = None if self.bias is None else self.bias[channels]
        return F.conv2d(fmap, self.weight[channels], bias)


def _sample_size(value: int | str | None, student_channels: int) -> int | None:
    if value is None:
        return None
    if value == "student":
        return student_channels
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"patch_match sample_channels must be a positive int, 'student' or null, got {value!r}")
    return value


def _shrunk(fmap: Tensor, grid: tuple[int, int]) -> tuple[int, int]:
    """The size ``fmap`` is pooled to on its way to ``grid``: per dimension the smaller of the two."""
    return min(fmap.shape[-2], grid[0]), min(fmap.shape[-1], grid[1])


def _select(fmap: Tensor, channels: Tensor | None, grid: tuple[int, int]) -> Tensor:
    """``fmap``'s ``channels``, taken after shrinking it to ``grid`` (less to gather), before growing.

    Indexing gathers them from any layout into a standard-layout map, which the patch-CKA kernel
    reads without transposing; ``index_select`` would first copy a channels_last map (a CNN
    teacher's) whole, every channel of it, into a fresh buffer.
    """
    if channels is None:
        return fmap
    if fmap.shape[-2] * fmap.shape[-1] > grid[0] * grid[1]:
        fmap = resample(fmap, grid)
    return fmap[:, channels]


def _common_grid(choice: str | tuple[int, int], student: tuple[int, int], teacher: tuple[int, int]) -> tuple[int, int]:
    if isinstance(choice, (tuple, list)):
        if len(choice) != 2 or min(int(v) for v in choice) < 1:
            raise ValueError(f"patch_match grid must be two positive ints, got {choice!r}")
        return int(choice[0]), int(choice[1])
    if choice == "min":
        return min(student[0], teacher[0]), min(student[1], teacher[1])
    if choice == "student":
        return student
    if choice == "teacher":
        return teacher
    raise ValueError(f"patch_match grid must be one of {GRID_CHOICES} or [h, w], got {choice!r}")
