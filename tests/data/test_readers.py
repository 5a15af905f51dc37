"""One pathological row never stops a run, and an input that is not a regular file never hangs one.

Each row below used to crash the whole read (OverflowError, RecursionError, an encode error without
`file:line`); now it is a counted bad row at its `file:line`, or with `strict` a one-line DataError. The
same holds for the parquet reader, `read_meta_table` (predict's meta input) and prepare's CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from effiminivlm.cli import main
from effiminivlm.data import meta
from effiminivlm.data.prepare import prepare, read_prepared
from effiminivlm.data.readers import expand_inputs, iter_meta, read_meta_table
from effiminivlm.errors import DataError
from tests.data.test_meta import read_all, record, write_jsonl

ALL = {"frac": 1.0, "min_per_category": 0}
GOOD = json.dumps(record("G0"))


def _with(asin: str, old: str, new: str) -> str:
    """A valid record's JSON line with one raw token replaced (values json.dumps cannot write)."""
    line = json.dumps(record(asin))
    assert old in line
    return line.replace(old, new)


# (raw JSON line, counter kind, words of the message); every other field of the row is valid.
PATHOLOGICAL = [
    (_with("P1", '"rating_number": 12', '"rating_number": 1e20'), "bad_rating",
     "larger than 9223372036854775807"),
    (_with("P2", '"rating_number": 12', '"rating_number": ' + "7" * 4000), "bad_rating",
     "rating_number <integer of 4000 digits> is larger"),
    (_with("P3", '"average_rating": 4.3', '"average_rating": ' + "9" * 4000), "bad_rating",
     "average_rating <integer of 4000 digits> is not in [1, 5]"),
    ('{"parent_asin": "P4", "details": ' + "[" * 2000 + "]" * 2000 + "}", "invalid_json", "nested too deep"),
    (_with("P5", '"title": "Linen shirt P5"', '"title": "Linen \\ud800 shirt"'), "invalid_json",
     "not valid Unicode"),
    (_with("P6", '"rating_number": 12', '"rating_number": ' + "1" * 5000), "invalid_json",
     "4300 digits"),
    (_with("P7", '"details": {', '"details": {"deep": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + ', '),
     "bad_value", "nested too deep"),
]
IDS = ["count_1e20", "count_4000_digits", "rating_4000_digits", "json_2000_deep", "lone_surrogate",
       "int_5000_digits", "details_1000_deep"]


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block blocks, e.g. on a FIFO without a writer."""
    def fail(*_: object) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(("line", "kind", "words"), PATHOLOGICAL, ids=IDS)
def test_pathological_row_is_counted_with_file_and_line(tmp_path: Path, line: str, kind: str,
                                                        words: str) -> None:
    path = tmp_path / "meta_X.jsonl"
    path.write_text(f"{GOOD}\n{line}\n{json.dumps(record('G2'))}\n", encoding="utf-8")
    got, log = read_all([path])
    assert [g["parent_asin"] for g in got] == ["G0", "G2"]
    assert log.bad == {kind: 1} and log.rows_read == 3
    example = log.examples[kind][0]
    assert example.startswith(f"{path}:2: ") and words in example and len(example) < 300
    with pytest.raises(DataError, match=rf"meta_X\.jsonl:2: .*\({kind};") as info:
        read_all([path], strict=True)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    table, log = read_meta_table([path], require_rating=False)  # predict's reader of meta files
    assert table.column("parent_asin").to_pylist() == ["G0", "G2"] and log.bad == {kind: 1}


def test_prepare_counts_them_all_and_strict_names_the_first(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "meta_X.jsonl"
    lines = [GOOD, *(line for line, _, _ in PATHOLOGICAL), json.dumps(record("G9"))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = prepare([path], tmp_path / "out", **ALL)
    assert summary["kept"] == 2 and summary["bad_rows"] == len(PATHOLOGICAL)
    assert summary["bad_input"]["by_kind"] == {"bad_rating": 3, "bad_value": 1, "invalid_json": 3}
    assert sorted(read_prepared(tmp_path / "out").column("parent_asin").to_pylist()) == ["G0", "G9"]
    assert main(["prepare", str(path), "--out", str(tmp_path / "o2"), "--strict"]) == 2
    err = capsys.readouterr().err.strip()  # tqdm's progress bar comes first, then the one error line
    assert err.splitlines()[-1].startswith(f"error: {path}:2: rating_number 100000000000000000000 is larger")
    assert "Traceback" not in err and not (tmp_path / "o2").exists()


def _bad_utf8(values: list[bytes]) -> pa.Array:
    """A string column holding bytes that are not UTF-8 (Arrow does not validate on construction)."""
    raw = pa.array(values, type=pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


def test_parquet_rows_are_guarded_the_same_way(tmp_path: Path) -> None:
    n = 5
    recs = [record(f"Q{i}") for i in range(n)]
    titles = [r["title"].encode() for r in recs]
    titles[3] = b"bad \xed\xa0\x80 bytes"  # a UTF-8-encoded lone surrogate: invalid UTF-8
    table = pa.table({
        "parent_asin": [r["parent_asin"] for r in recs], "main_category": ["X"] * n,
        "title": _bad_utf8(titles),
        "average_rating": [4.0] * n, "rating_number": [3.0, 1e20, 3.0, 3.0, 3.0],
        "features": [r["features"] for r in recs], "description": [r["description"] for r in recs],
        "details": ["{}", "{}", '{"a": ' * 1000 + "1" + "}" * 1000, "{}", "{}"],
    })
    path = tmp_path / "raw_meta_X.parquet"
    pq.write_table(table, path)
    got, log = read_all([path])
    assert [g["parent_asin"] for g in got] == ["Q0", "Q4"]
    assert log.bad == {"bad_rating": 1, "bad_value": 2} and log.rows_read == n
    assert log.examples["bad_rating"] == [f"{path}:2: rating_number 100000000000000000000 is larger than "
                                          "9223372036854775807 (int64)"]
    assert [e.split(": ")[0] for e in log.examples["bad_value"]] == [f"{path}:3", f"{path}:4"]
    with pytest.raises(DataError, match=r"raw_meta_X\.parquet:2: rating_number"):
        read_all([path], strict=True)
    table, log = read_meta_table([path])
    assert table.num_rows == 2 and log.as_dict()["total"] == 3


def test_fifo_device_and_stdin_are_refused_without_hanging(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "meta_Pipe.jsonl"
    os.mkfifo(fifo)
    with deadline(10):
        with pytest.raises(DataError, match=r"meta_Pipe\.jsonl is a pipe \(FIFO\), not a regular file"):
            expand_inputs([fifo])
        with pytest.raises(DataError, match="/dev/null is a device, not a regular file"):
            expand_inputs(["/dev/null"])
        log = meta.InputLog()
        assert list(iter_meta([fifo], log)) == []  # called directly: counted as an unreadable file
        assert log.bad == {"unreadable_file": 1} and "pipe (FIFO)" in log.examples["unreadable_file"][0]
        assert main(["prepare", str(fifo), "--out", str(tmp_path / "out")]) == 2
        with pytest.raises(DataError, match="pipe"):
            read_meta_table([fifo])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err and not (tmp_path / "out").exists()
    (tmp_path / "shards").mkdir()
    os.mkfifo(tmp_path / "shards" / "meta_In.jsonl")  # a FIFO inside a folder is skipped, not read
    write_jsonl(tmp_path / "shards" / "meta_Ok.jsonl", [record("A1")])
    assert [p.name for p in expand_inputs([tmp_path / "shards"])] == ["meta_Ok.jsonl"]


def test_dev_stdin_as_input_is_one_clear_line(tmp_path: Path) -> None:
    """Through the console entry point with stdin a pipe nobody writes to: no hang, no traceback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from effiminivlm.cli import main; "
                             "sys.exit(main(sys.argv[1:]))", "prepare", "/dev/stdin", "--out",
                             str(tmp_path / "out")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, err = proc.communicate(timeout=60)  # stdin stays open: reading it would block forever
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert err.strip() == ("error: input /dev/stdin is a pipe (FIFO), not a regular file; give metadata "
                           "files or folders (stdin and pipes cannot be read)")


def test_predict_and_score_inputs_fail_in_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """predict reads its inputs before loading the model, score reads CSVs via files.read_csv_rows."""
    (tmp_path / "lovif").mkdir()
    os.mkfifo(tmp_path / "lovif" / "input.csv")
    os.mkfifo(tmp_path / "truth.csv")
    path = tmp_path / "meta_X.jsonl"
    path.write_text(f"{GOOD}\n{PATHOLOGICAL[3][0]}\n", encoding="utf-8")
    model = str(tmp_path / "no_model")
    cases = [
        (["predict", str(tmp_path / "lovif" / "input.csv"), "--model", model], "is a pipe (FIFO)"),
        (["predict", "/dev/null", "--model", model], "/dev/null is a device"),
        (["predict", str(path), "--model", model, "--strict"], f"{path}:2: invalid JSON: nested too deep"),
        (["score", "--predictions", str(tmp_path / "truth.csv"), "--truth", str(tmp_path / "truth.csv")],
         "is a pipe (FIFO)"),
    ]
    with deadline(30):
        for argv, words in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and words in err and "Traceback" not in err, err


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("chunk", [1024, 1 << 22])
def test_a_line_over_the_byte_budget_stops_its_file_before_it_is_parsed(tmp_path: Path, suffix: str,
                                                                       chunk: int, monkeypatch) -> None:
    """A valid line longer than the budget is refused while it is read (also when it spans many chunks, and
    when it is the unterminated last line); lines before it are kept, a line at the budget is read."""
    from effiminivlm.data import readers

    monkeypatch.setattr(readers, "_CHUNK", chunk)
    budget = 4096
    at_budget = json.dumps(record("AT", title="x" * 100))
    at_budget = at_budget.replace("x" * 100, "x" * (100 + budget - len(at_budget.encode())))
    huge = json.dumps(record("HUGE", title="y" * 20_000))
    for tail in ("\n", ""):
        path = tmp_path / f"meta_T{len(tail)}{suffix}"
        write_jsonl(path, [GOOD, at_budget, huge, GOOD.replace("G0", "G1")])
        if not tail:  # the huge line is the last one, without a newline
            write_jsonl(path, [GOOD, at_budget, huge.rstrip()])
        log = meta.InputLog(max_line_bytes=budget)
        rows = list(iter_meta([path], log))
        assert [r["parent_asin"] for r in rows] == ["G0", "AT"]
        assert log.bad == {"line_too_long": 1}
        assert log.examples["line_too_long"][0].startswith(f"{path}:3: a line longer than 4,096 bytes")
        with pytest.raises(DataError, match=r":3: a line longer than 4,096 bytes .*line_too_long"):
            list(iter_meta([path], meta.InputLog(strict=True, max_line_bytes=budget)))


def test_prepare_and_predict_take_the_budget_as_an_option(tmp_path: Path, capsys) -> None:
    path = write_jsonl(tmp_path / "meta_T.jsonl.gz", [json.dumps(record("HUGE", title="y" * 5000))])
    assert main(["prepare", str(path), "--out", str(tmp_path / "p"), "--max-line-bytes", "2048"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "line_too_long" in err and "a line longer than 2,048 bytes" in err
    assert main(["predict", str(path), "--model", str(tmp_path / "m"), "--max-line-bytes", "100"]) == 2
    assert "--max-line-bytes must be >= 1024, got 100" in capsys.readouterr().err


def test_a_csv_line_or_cell_over_the_budget_is_one_line(tmp_path: Path) -> None:
    from effiminivlm.files import read_csv_rows

    f = tmp_path / "input.csv"
    f.write_text("item_id,title\nA,short\nB," + "z" * 5000 + "\n")
    assert len(read_csv_rows(f)[1]) == 2
    with pytest.raises(DataError, match=r"input.csv:3: a line longer than 2,048 characters"):
        read_csv_rows(f, max_line_bytes=2048)
    f.write_text('item_id,title\nA,"' + "z\n" * 2000 + '"\n')  # one quoted cell over many short lines
    with pytest.raises(DataError, match=r"a cell longer than 2,048 characters"):
        read_csv_rows(f, max_line_bytes=2048)
