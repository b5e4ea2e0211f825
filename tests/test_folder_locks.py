"""The folder locks where the file system cannot lock, and their descriptors once released."""
from __future__ import annotations

import errno
import os

from hf_rcka.cli import output_folder
from hf_rcka.cli.output_folder import _HELD, reading_models, training_alone_in


def test_a_folder_whose_file_system_refuses_locks_is_not_refused(tmp_path, monkeypatch):
    """flock failing with ENOLCK (an NFS mount without lockd): runs there are not kept apart, never refused."""
    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(output_folder.fcntl, "flock", no_locks)
    model = tmp_path / "teacher"
    model.mkdir()
    with training_alone_in(str(tmp_path / "out")) as refusal:
        assert refusal is None
        with training_alone_in(str(tmp_path / "out"), evaluating=True) as again:
            assert again is None
    with reading_models({"teacher_model_name_or_path": str(model)}) as in_use:
        assert in_use is None
    assert not _HELD


def test_a_folder_that_cannot_be_opened_to_lock_is_not_refused(tmp_path, monkeypatch):
    """A folder os.open refuses (no read permission, some file systems): not kept apart, and the folder made
    for the lock is removed again when the run leaves it empty."""
    real = os.open

    def no_folders(path, flags, *args, **kwargs):
        if flags & os.O_DIRECTORY:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *args, **kwargs)

    model = tmp_path / "teacher"
    model.mkdir()
    monkeypatch.setattr(os, "open", no_folders)
    with training_alone_in(str(tmp_path / "out")) as refusal:
        assert refusal is None
    with reading_models({"teacher_model_name_or_path": str(model)}) as in_use:
        assert in_use is None
    monkeypatch.undo()
    assert not (tmp_path / "out").exists()


def test_a_released_lock_leaves_no_descriptor_for_a_forked_worker_to_close(tmp_path):
    """A descriptor number kept in _HELD after its lock is released is closed by the next DataLoader
    worker forked, by then another file the run opened under the same number."""
    with training_alone_in(str(tmp_path / "out")) as refusal:
        assert refusal is None and len(_HELD) == 1
    assert not _HELD
    model = tmp_path / "teacher"
    model.mkdir()
    with reading_models({"teacher_model_name_or_path": str(model)}) as in_use:
        assert in_use is None and len(_HELD) == 1
    assert not _HELD


def test_two_runs_may_load_one_teacher_at_once(tmp_path):
    """Two students distilled from one teacher (or a CKA report comparing it) at once: the loads share its lock."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    with reading_models({"teacher_model_name_or_path": str(teacher)}) as first:
        assert first is None
        with reading_models({"teacher_model_name_or_path": str(teacher)}) as second:
            assert second is None
        with training_alone_in(str(teacher), evaluating=True) as evaluation:
            assert evaluation is None
