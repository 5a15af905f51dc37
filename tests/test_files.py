from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from effiminivlm.errors import DataError
from effiminivlm.files import (
    atomic_write_text,
    open_regular,
    partial_dir,
    read_csv_rows,
    remove_stale_partials,
    to_jsonable,
    write_json,
)


def test_to_jsonable() -> None:
    class Device:
        def __str__(self) -> str:
            return "cpu"

    value = {1: np.float32(0.5), "a": [np.int64(3), math.nan, (math.inf, -math.inf)], "p": Path("/x"),
             "s": {"b", "a"}, "arr": np.array([1.0, np.nan]), "d": Device(), "none": None,
             "flag": np.bool_(True)}
    out = to_jsonable(value)
    assert out == {"1": 0.5, "a": [3, None, [None, None]], "p": "/x", "s": ["a", "b"], "arr": [1.0, None],
                   "d": "cpu", "none": None, "flag": True}
    json.dumps(out, allow_nan=False)


def test_write_json_is_strict_and_atomic(tmp_path: Path) -> None:
    out = write_json({"plcc": float("nan"), "c": 0.1, "path": tmp_path}, tmp_path / "sub" / "x.json")
    assert json.loads(out.read_text()) == {"plcc": None, "c": 0.1, "path": str(tmp_path)}
    assert not list(out.parent.glob(".*.tmp"))
    atomic_write_text(out, "replaced\n")
    assert out.read_text() == "replaced\n" and not list(out.parent.glob(".*.tmp"))


def test_read_csv_rows(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text('\ufeffItem_ID , Score\nA, 1.5\n\n"B","long ""quoted""\ntext"\n', encoding="utf-8")
    header, rows = read_csv_rows(f)
    assert header == ["item_id", "score"]
    assert rows == [(2, {"item_id": "A", "score": "1.5"}),
                    (5, {"item_id": "B", "score": 'long "quoted"\ntext'})]


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"a,b\n1,2,3\n", "a.csv:2: 3 fields, the header has 2"),
    (b"a,b\n\xff\xfe,1\n", "not UTF-8"),
])
def test_read_csv_rows_errors_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_csv_rows(f)
    with pytest.raises(DataError, match="file not found"):
        read_csv_rows(tmp_path / "missing.csv")


def test_replace_dir_publishes_and_recovers_from_a_crash_between_renames(tmp_path):
    from effiminivlm.files import recover_dir, replace_dir

    dest, tmp = tmp_path / "model", tmp_path / ".model.tmp"
    dest.mkdir()
    (dest / "w").write_text("old")
    tmp.mkdir()
    (tmp / "w").write_text("new")
    replace_dir(tmp, dest)
    assert (dest / "w").read_text() == "new" and not tmp.exists()
    assert not (tmp_path / ".model.old").exists()
    # crash after the first rename: only the backup is left; it goes back into place
    (tmp_path / "model").rename(tmp_path / ".model.old")
    assert recover_dir(dest).startswith("restored")
    assert (dest / "w").read_text() == "new"
    # crash after the publish, before the backup was deleted: the stale backup goes
    (tmp_path / ".model.old").mkdir()
    assert recover_dir(dest).startswith("removed")
    assert not (tmp_path / ".model.old").exists() and (dest / "w").read_text() == "new"
    assert recover_dir(dest) is None


def test_open_regular_refuses_what_would_hang_or_mislead(tmp_path: Path) -> None:
    (tmp_path / "ok.csv").write_bytes(b"a\n1\n")
    with open_regular(tmp_path / "ok.csv") as fh:
        assert fh.read() == b"a\n1\n"  # blocking reads again after the non-blocking open
    os.mkfifo(tmp_path / "p.csv")
    for path, words in ((tmp_path / "p.csv", "is a pipe (FIFO)"), ("/dev/null", "is a device"),
                        (tmp_path, "is a folder"), (tmp_path / "missing.csv", "file not found")):
        with pytest.raises(DataError) as info:
            read_csv_rows(path)  # a FIFO without a writer returns at once instead of blocking
        assert str(info.value).startswith(f"{path}: {words}")


def test_partial_dirs_of_dead_processes_are_removed_live_ones_kept(tmp_path: Path) -> None:
    dest = tmp_path / "data[1]"  # glob characters in the name are matched literally
    mine = partial_dir(dest)
    assert mine.name.startswith(f".data[1].partial-{os.getpid()}-") and mine.is_dir()
    dead = tmp_path / ".data[1].partial-999999999-0badc0de"
    legacy = tmp_path / ".data[1].partial-0badc0de"
    other = tmp_path / ".data1.partial-999999999-0badc0de"  # another destination's: not ours to touch
    for folder in (dead, legacy, other):
        folder.mkdir()
    assert remove_stale_partials(dest) == sorted([dead, legacy])
    assert mine.is_dir() and other.is_dir() and not dead.exists() and not legacy.exists()
