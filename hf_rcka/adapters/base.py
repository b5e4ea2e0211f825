"""The small base class every adapter shares: it keeps the two specs the adapter was built from."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

from torch import Tensor, nn

from ..features.layout import FeatureSpec
from ..registry import ADAPTERS


def check_flag(name: str, value: object, allow_none: bool = False) -> None:
    """Adapter switches must be real booleans: ``bool("false")`` would silently be True."""
    if not (isinstance(value, bool) or (allow_none and value is None)):
        raise ValueError(f"{name} must be true or false{' or unset' if allow_none else ''}, got {value!r}")


class FeatureAdapter(nn.Module):
    """Maps one (student, teacher) feature pair into the form a loss compares.

    Adapters are built from the two :class:`FeatureSpec` s alone (``ADAPTERS.build(name,
    student=..., teacher=..., **options)``), so recipes never do channel arithmetic. They live in
    the trainer's wrapper module, which DDP wraps, so their parameters stay in sync across ranks.
    The teacher tensor arrives without gradient; only the student side may carry parameters.
    Subclasses define ``forward(student, teacher) -> (student, teacher)``.

    ``forward`` gets the teacher's side as ``prepare_teacher`` left it, or, for an adapter that
    ``passes_teacher``, as the loss reduced it (``DistillationLoss.reduce_teacher_feature``:
    feature CKA's ``functional.GramSide``), which it hands on untouched. The student's side comes
    the same way: as ``prepare_student`` left it, or, for an adapter that ``passes_student``, as the
    loss reduced it (``DistillationLoss.reduce_student_feature``).
    """

    # Whether forward hands the teacher's side on as it gets it (identity, linear). Then a loss may
    # reduce that side right after the teacher's forward, and forward gets the reduced side. A
    # subclass that defines its own forward or prepare_teacher gets the teacher's side whole again,
    # unless it sets this itself: its forward may read or change that side.
    passes_teacher: ClassVar[bool] = False
    # The same for the student's side (identity): a loss may then reduce it where the student makes it.
    passes_student: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own = set(vars(cls))
        if "passes_teacher" not in own and ({"forward", "prepare_teacher"} & own):
            cls.passes_teacher = False
        if "passes_student" not in own and ({"forward", "prepare_student"} & own):
            cls.passes_student = False

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec) -> None:
        super().__init__()
        self.student_spec = student
        self.teacher_spec = teacher

    def prepare_teacher(self, teacher: Tensor) -> Any:
        """The teacher's side alone, run right after the teacher's forward; ``forward`` then gets
        its result as ``teacher``. The teacher's hidden states are held until the losses run, under
        the student's whole forward: an adapter that shrinks the teacher's side (pooling to a
        coarser grid, sampling channels) does it here, so that the full-size state can go first.
        The default hands the state over as it is."""
        return teacher

    def reduce_teacher(self, teacher: Any, reduce: Callable[[Tensor], Any]) -> Any:
        """``prepare_teacher``'s result with the loss's reduction (``reduce`` is the reading loss's
        ``reduce_teacher_feature``) applied to what ``forward`` hands on of it; ``forward`` then gets
        the result. The default reduces the whole side of an adapter that ``passes_teacher`` (a
        None from ``reduce`` keeps it whole) and leaves any other side as it is."""
        if not self.passes_teacher:
            return teacher
        reduced = reduce(teacher)
        return teacher if reduced is None else reduced

    def prepare_student(self, student: Tensor) -> Any:
        """The student's side alone, run where the student's forward makes the hidden state (when the
        model can hook the module that makes it; else after the forward); ``forward`` then gets its
        result as ``student``.

        Of the backward steps ready to run, autograd runs the one created last. So an adapter
        that shrinks the student's side (pooling to a coarser grid) does it here: the shrinking's
        backward, which hands back a gradient of the full hidden state, then runs where the
        student's own backward reaches that state, instead of first thing in the backward, where
        that gradient would be held through the backward of every later layer, at the step's peak.
        The default hands the state over as it is."""
        return student

    def extra_repr(self) -> str:
        s, t = self.student_spec, self.teacher_spec
        return f"student={s.layout} {s.channels}x{s.grid}, teacher={t.layout} {t.channels}x{t.grid}"


ADAPTERS.base = FeatureAdapter  # a class registered as an adapter must be one (see Registry._check_new)
