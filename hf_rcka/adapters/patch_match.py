"""The 'patch_match' adapter: ViT tokens and CNN maps on one grid, with optional projection."""

from __future__ import annotations

from torch import Tensor, nn

from ..features.layout import FeatureSpec, resample, to_fmap
from ..registry import ADAPTERS
from .base import FeatureAdapter, check_flag

GRID_CHOICES = ("min", "student", "teacher")


@ADAPTERS.register("patch_match")
class PatchMatchAdapter(FeatureAdapter):
    """Turns both sides into prefix-free (B, C, h, w) maps on one common grid.

    Heterogeneous pairs (a DeiT student at stride 16 and a RegNet stage at stride 8 or 32) only
    become comparable patch by patch once both sit on the same grid: tokens are laid out as maps
    (prefix tokens dropped), then resampled (average pooling down, bilinear up). A 1x1 conv then
    projects student channels to the teacher's, so shape-sensitive losses (FitNets, patch CKA)
    see equal shapes.

    Args:
        student: spec of the student feature.
        teacher: spec of the teacher feature.
        grid: "min" (default: per dimension the coarser of the two grids, so nothing is invented
            by upsampling), "student", "teacher", or an explicit [h, w].
        project: learnable 1x1 conv from student to teacher channels; None projects only when the
            channel counts differ.
        bias: whether the projection has a bias.
    """

    def __init__(
        self,
        student: FeatureSpec,
        teacher: FeatureSpec,
        *,
        grid: str | tuple[int, int] = "min",
        project: bool | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__(student, teacher)
        check_flag("patch_match project", project, allow_none=True)
        check_flag("patch_match bias", bias)
        self.grid = _common_grid(grid, student.grid, teacher.grid)
        if project is None:
            project = student.channels != teacher.channels
        self.proj = nn.Conv2d(student.channels, teacher.channels, 1, bias=bias) if project else None

    def forward(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        student = to_fmap(student, self.student_spec)
        teacher = resample(to_fmap(teacher, self.teacher_spec), self.grid)
        if self.proj is None:
            return resample(student, self.grid), teacher
        # a 1x1 conv commutes with pooling and bilinear resampling: run it on the smaller grid
        if student.shape[-2] * student.shape[-1] > self.grid[0] * self.grid[1]:
            return self.proj(resample(student, self.grid)), teacher
        return resample(self.proj(student), self.grid), teacher

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid={self.grid}"


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
