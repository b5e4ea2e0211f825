"""A large image-folder split is memory-mapped from an Arrow file in datasets' cache: it pickles as
that file's path (what a spawned loader worker receives), reads the rows it held in memory, and
falls back to memory where the cache cannot be written."""

import os
import pickle
import threading
from pathlib import Path

import datasets
import pytest
from PIL import Image

from hf_rcka.arguments import DataArguments
from hf_rcka.data import mapped_splits
from hf_rcka.data.datasets import image_folder_splits, seeded_subset


def _folder(root: Path, classes: dict[str, int]) -> str:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (2, 2)).save(root / name / f"image_{i}.png")
    return str(root)


def _rows(split: datasets.Dataset) -> list:
    return split.with_format("arrow")[:].to_pylist()


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    train = _folder(tmp_path / "train", {"cat": 6, "dog": 5})
    validation = _folder(tmp_path / "val", {"cat": 2, "dog": 2})
    return DataArguments(train_dir=train, validation_dir=validation)


def _mapped_folder(tmp_path) -> Path:
    return tmp_path / "cache" / mapped_splits.LOCAL_FOLDERS / mapped_splits.KIND


def test_a_large_split_pickles_as_its_file_and_reads_the_rows_it_held_in_memory(folders, tmp_path, monkeypatch,
                                                                                   caplog):
    """A spawned DataLoader worker unpickled a copy of every row of an in-memory split (about 90 MB
    at ImageNet's size, in each worker), and a max_train_samples subset carried the whole table.
    Where a file is written is said once (its size, and that files of other listings stay)."""
    in_memory = image_folder_splits(folders)
    assert not in_memory["train"].cache_files  # the tests' small folders stay in memory: nothing is written
    monkeypatch.setattr(mapped_splits, "MAPPED_FROM_BYTES", 1)
    with caplog.at_level("INFO", logger="hf_rcka"):
        mapped = image_folder_splits(folders)
    written = sorted(os.listdir(_mapped_folder(tmp_path)))
    assert len(written) == 2  # one file a split, named by its content
    said = [r.getMessage() for r in caplog.records if "memory-mapped from it" in r.getMessage()]
    assert len(said) == 2 and "the train split's 11 rows are written to " in said[0], said
    assert os.path.join(str(_mapped_folder(tmp_path)), "") in said[0] and "not removed" in said[0]
    for split in ("train", "validation"):
        assert [Path(f["filename"]).name for f in mapped[split].cache_files] in ([name] for name in written)
        assert mapped[split].features == in_memory[split].features
        assert mapped[split].info.builder_name == "imagefolder" and mapped[split].split == split
        assert _rows(mapped[split]) == _rows(in_memory[split])
        dumped = pickle.dumps(mapped[split])
        assert b"image_0.png" in pickle.dumps(in_memory[split]) and b"image_0.png" not in dumped  # no row
        assert _rows(pickle.loads(dumped)) == _rows(in_memory[split])
    subset = seeded_subset(mapped["train"], 3, 42)
    assert b"image_0.png" not in pickle.dumps(subset)
    assert _rows(pickle.loads(pickle.dumps(subset))) == _rows(seeded_subset(in_memory["train"], 3, 42))
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_rcka"):
        again = image_folder_splits(folders)  # a later run, or another process: the same file, the same fingerprint
    assert sorted(os.listdir(_mapped_folder(tmp_path))) == written and "memory-mapped from it" not in caplog.text
    assert again["train"]._fingerprint == mapped["train"]._fingerprint
    assert again["train"].cache_files == mapped["train"].cache_files


@pytest.mark.parametrize("cache", ["under_a_file", "full"])
def test_a_cache_that_cannot_be_written_keeps_the_split_in_memory(folders, tmp_path, monkeypatch, caplog, cache):
    """Reading an image folder needs no cache: one that cannot be written keeps the rows in memory,
    said in one line a split, and leaves no partial file behind."""
    import errno

    expected = {split: _rows(rows) for split, rows in image_folder_splits(folders).items()}
    monkeypatch.setattr(mapped_splits, "MAPPED_FROM_BYTES", 1)
    if cache == "under_a_file":
        (tmp_path / "file").write_text("")
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "file" / "datasets"))
    else:
        def full(*args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "replace", full)
    with caplog.at_level("INFO", logger="hf_rcka"):
        splits = image_folder_splits(folders)
    for split in ("train", "validation"):
        assert not splits[split].cache_files and _rows(splits[split]) == expected[split]
    said = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(said) == 2 and "the train split's 11 rows are held in memory" in said[0], said
    if cache == "full":
        assert os.listdir(_mapped_folder(tmp_path)) == []  # the temporary files were removed


def test_writers_of_one_file_at_once_each_end_with_the_whole_file(tmp_path, monkeypatch):
    """The processes of a data-parallel launch list the same folder and write its file at the same
    time: each writes its own temporary file and renames it into place, so every one reads a whole
    file, whichever rename came last; a file cut short (a crash before it was whole) is written anew."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    args = DataArguments(train_dir=_folder(tmp_path / "train", {"cat": 4, "dog": 3}))
    expected = _rows(image_folder_splits(args)["train"])  # in memory
    monkeypatch.setattr(mapped_splits, "MAPPED_FROM_BYTES", 1)
    replace, renamed = os.replace, []

    def second_writer_first(source, target):  # another process writes and renames between our write and rename
        renamed.append(source)
        if len(renamed) == 1:
            renamed.append(image_folder_splits(args)["train"])
        replace(source, target)

    monkeypatch.setattr(os, "replace", second_writer_first)
    first = image_folder_splits(args)["train"]
    monkeypatch.setattr(os, "replace", replace)
    path = Path(first.cache_files[0]["filename"])
    _, second_source, second = renamed
    assert second_source != renamed[0] and second.cache_files == first.cache_files
    assert _rows(first) == _rows(second) == expected
    assert os.listdir(path.parent) == [path.name]  # no temporary file left

    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])  # cut short
    barrier, results = threading.Barrier(4), []

    def writer():
        barrier.wait()
        results.append(_rows(image_folder_splits(args)["train"]))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4
    assert os.listdir(path.parent) == [path.name]
    assert _rows(datasets.Dataset.from_file(str(path))) == expected


def test_a_split_s_fingerprint_is_its_content_digest_not_its_file_s_time(folders, tmp_path, monkeypatch):
    """datasets' own fingerprint of a memory-mapped table hashes its file's modification time: a file
    rewritten (by another process of the launch, or after one cut short) gave the same rows another
    fingerprint, in each process and each run, and every cache keyed on it was missed."""
    monkeypatch.setattr(mapped_splits, "MAPPED_FROM_BYTES", 1)
    first = image_folder_splits(folders)["train"]
    path = Path(first.cache_files[0]["filename"])
    assert first._fingerprint == path.stem  # the content's digest
    os.utime(path, ns=(1, 1))  # the same bytes, written at another time
    assert image_folder_splits(folders)["train"]._fingerprint == first._fingerprint


def test_a_cache_file_that_is_not_arrow_keeps_the_split_in_memory(folders, tmp_path, monkeypatch, caplog):
    """A file of the right size whose bytes are not Arrow's (another program's, a damaged disk) is
    taken as whole and not written again: reading it raised ArrowInvalid, a traceback, and no run
    of that folder could start until the file was found and removed."""
    monkeypatch.setattr(mapped_splits, "MAPPED_FROM_BYTES", 1)
    expected = _rows(image_folder_splits(folders)["train"])
    path = Path(image_folder_splits(folders)["train"].cache_files[0]["filename"])
    path.write_bytes(b"x" * path.stat().st_size)
    with caplog.at_level("INFO", logger="hf_rcka"):
        train = image_folder_splits(folders)["train"]
    assert not train.cache_files and _rows(train) == expected
    assert any("cannot be written or read (ArrowInvalid" in r.getMessage() for r in caplog.records)


def test_a_whole_file_is_read_not_written_again(folders, tmp_path, monkeypatch):
    """Every run, and every process of a launch, wrote the split's file anew (87 MB for ImageNet's
    training folder, 8 times at once on 8 GPUs) where the first run's whole file was there to read."""
    monkeypatch.setattr(mapped_splits, "MAPPED_FROM_BYTES", 1)
    path = Path(image_folder_splits(folders)["train"].cache_files[0]["filename"])
    before = path.stat()
    monkeypatch.setattr(mapped_splits.uuid, "uuid4", lambda: pytest.fail("a whole file was written again"))
    again = image_folder_splits(folders)["train"]
    assert again.cache_files[0]["filename"] == str(path) and path.stat().st_ino == before.st_ino
