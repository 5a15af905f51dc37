"""Streaming readers of the Amazon Reviews 2023 item metadata, yielding normalised records (`data.meta`).

Reads the official `meta_<Category>.jsonl` / `.jsonl.gz` files and the Hugging Face parquet shards of
`raw_meta_<Category>` (where `images` is a struct of lists and `details` a JSON string) one row at a time, so
memory stays flat however large the category. The format is sniffed from the first bytes (gzip magic,
`PAR1`), not trusted from the suffix.

Why every row is guarded here: a row can break the reader itself (JSON nested 2,000 deep exhausts the
stack, a lone surrogate cannot be encoded, a parquet cell holds invalid UTF-8). Each such row is turned into
a counted bad row at its `file:line` (`InputLog`), so one row never stops a run, and `--strict` reports it
as one line. Inputs must be regular files: a FIFO, `/dev/stdin` or a device is refused up front, not read
(it would hang or be consumed).
"""

from __future__ import annotations

import json
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator, Sequence
from glob import glob, has_magic
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from effiminivlm.data.meta import BadRow, InputLog, normalize_record
from effiminivlm.data.schema import META_COLUMNS, ROW_SCHEMA
from effiminivlm.errors import DataError
from effiminivlm.files import MAX_LINE_BYTES, file_kind, open_regular

__all__ = ["META_COLUMNS", "META_SUFFIXES", "Progress", "category_from_path", "expand_inputs", "iter_meta",
           "iter_meta_file", "read_meta_table"]

META_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_CATEGORY = re.compile(r"^(?:raw_)?meta_(.+?)(?:[-_]\d{5}-of-\d{5})?$")
_CHUNK = 1 << 22  # bytes read at a time from (decompressed) JSON Lines
# What a pathological row can raise while it is parsed or normalised (deep nesting, huge ints, bad Unicode).
_ROW_ERRORS = (RecursionError, OverflowError, ValueError, UnicodeError)
Progress = Callable[[int], None]


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files, globs and folders -> an ordered, de-duplicated list of metadata files.

    A folder contributes every metadata file below it (a `raw_meta_<Category>/` shard folder); a missing
    path or a glob matching nothing is an error, because a typo must not produce a smaller dataset. So is a
    named FIFO, device or `/dev/stdin`: reading one would hang or consume a stream that cannot be read twice.
    """
    if not inputs:
        raise DataError("no input files given")
    out: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        if has_magic(text):
            matches = sorted(Path(m) for m in glob(text, recursive=True))
            if not matches:
                raise DataError(f"input glob matched no files: {text}")
        elif not os.path.exists(text):
            raise DataError(f"input not found: {text}")
        else:
            matches = [Path(text)]
        for p in matches:
            if p.is_dir():
                found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(META_SUFFIXES))
                if not found:
                    raise DataError(f"input folder has no {'/'.join(META_SUFFIXES)} files: {p}")
                out.extend(found)
            else:
                _require_regular(p)
                out.append(p)
    unique: dict[Path, Path] = {}  # the same file named twice (a path and a glob) is read once
    for p in out:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def _require_regular(path: Path) -> None:
    """A one-line DataError unless `path` is a regular file (stat only: nothing is opened or read)."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise DataError(f"input {path}: cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"input {path} is {file_kind(mode)}, not a regular file; give metadata files or "
                        "folders (stdin and pipes cannot be read)")


def category_from_path(path: Path) -> str:
    """`meta_Amazon_Fashion.jsonl.gz` or `raw_meta_Amazon_Fashion/full-00000-of-00001.parquet` -> "Amazon
    Fashion"; "" when neither the file nor its folder is named like the official dumps."""
    for name in (path.name, path.parent.name):
        stem = name
        for suffix in (".gz", ".jsonl", ".json", ".parquet"):
            stem = stem.removesuffix(suffix)
        m = _CATEGORY.match(stem)
        if m:
            return m.group(1).replace("_", " ").strip()
    return ""


def read_meta_table(inputs: Sequence[str | os.PathLike[str]], *, require_rating: bool = True,
                    strict: bool = False, max_line_bytes: int = MAX_LINE_BYTES) -> tuple[pa.Table, InputLog]:
    """All normalised rows of `inputs` in memory (`ROW_SCHEMA`), for scoring products rather than training.

    No paper filters and no sampling; a repeated `parent_asin` is dropped (first wins) and counted as
    `duplicate_parent_asin`. With `require_rating=False` rows without ratings are kept (ratings null).
    """
    log = InputLog(strict=strict, max_line_bytes=max_line_bytes)
    rows: dict[str, dict[str, Any]] = {}
    for rec in iter_meta(expand_inputs(inputs), log, require_rating=require_rating):
        asin = rec["parent_asin"]
        if asin in rows:
            log.record("duplicate_parent_asin", rec["source"], f"parent_asin {asin} read before")
        else:
            rows[asin] = rec
    return pa.Table.from_pylist(list(rows.values()), schema=ROW_SCHEMA), log


def iter_meta(paths: Sequence[Path], log: InputLog, progress: Progress | None = None,
              require_rating: bool = True, require_rating_number: bool = True) -> Iterator[dict[str, Any]]:
    """Normalised records of every file in order (see `normalize_record`); bad input goes to `log`."""
    for path in paths:
        yield from iter_meta_file(path, log, progress, require_rating, require_rating_number)


def iter_meta_file(path: Path, log: InputLog, progress: Progress | None = None,
                   require_rating: bool = True, require_rating_number: bool = True
                   ) -> Iterator[dict[str, Any]]:
    """Normalised records of one JSON Lines (plain or gzip) or parquet file; `progress(n)` gets raw bytes."""
    info: dict[str, Any] = {"path": str(path), "category_from_name": category_from_path(path), "rows_read": 0,
                            "bad_rows": 0}
    log.files.append(info)
    try:
        with open_regular(path) as fh:  # a FIFO or device is refused, never waited on
            magic = fh.read(4)
    except DataError as e:  # missing, unreadable, or not a regular file
        _file_error(log, info, "unreadable_file", str(path), str(e).removeprefix(f"{path}: "))
        return
    except OSError as e:
        _file_error(log, info, "unreadable_file", str(path), f"cannot read: {e.strerror or e}")
        return
    info["format"] = "parquet" if magic == b"PAR1" else "jsonl.gz" if magic[:2] == b"\x1f\x8b" else "jsonl"
    if path.name.endswith(".parquet") and info["format"] != "parquet":
        kind, msg = ("empty_file", "empty file") if not magic else ("not_parquet", "not a parquet file")
        _file_error(log, info, kind, str(path), msg)
        return
    base_dir = path.absolute().parent
    reader = _parquet_rows if info["format"] == "parquet" else jsonl_rows
    for source, obj in reader(path, info, log, progress):
        info["rows_read"] += 1
        log.rows_read += 1
        try:
            rec = _normalize(obj, base_dir=base_dir, file_category=info["category_from_name"], source=source,
                             log=log, require_rating=require_rating,
                             require_rating_number=require_rating_number)
        except BadRow as e:
            info["bad_rows"] += 1
            log.record(e.kind, source, str(e))
            continue
        yield rec


def _normalize(obj: Any, **kwargs: Any) -> dict[str, Any]:
    """`normalize_record`, with what Python itself cannot handle in one row (`details` nested too deep to
    flatten, a number too large) raised as a `BadRow` of that row instead of ending the run."""
    try:
        return normalize_record(obj, **kwargs)
    except _ROW_ERRORS as e:
        raise BadRow("bad_value", _row_error(e)) from None


def _file_error(log: InputLog, info: dict[str, Any], kind: str, source: str, message: str) -> None:
    info["error"] = f"{kind}: {message}"
    log.record(kind, source, message)


def jsonl_rows(path: Path, info: dict[str, Any], log: InputLog,
                progress: Progress | None) -> Iterator[tuple[str, Any]]:
    """(`file:line`, parsed object) per non-blank line, reading large decompressed chunks for speed.

    A line longer than `log.max_line_bytes` stops the file as a counted `line_too_long` error as soon as the
    budget is passed, before the line is held whole or parsed: one valid 3 GB line in a 14 MB gzip would
    otherwise cost minutes and gigabytes.
    """
    lineno, pos, rest, first, limit = 0, 0, b"", True, log.max_line_bytes
    with open(path, "rb") as raw:
        chunks = _chunks(raw, gz=info["format"] == "jsonl.gz")
        while True:
            try:
                chunk = next(chunks, b"")
            except (OSError, EOFError, zlib.error) as e:
                _file_error(log, info, "unreadable_file", f"{path}:{lineno + 1}",
                            f"stopped reading after line {lineno}: {e}")
                return
            if progress is not None:
                progress(raw.tell() - pos)
                pos = raw.tell()
            if first and chunk.strip():
                first = False
                chunk = chunk.lstrip().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM is not data
                if not chunk.startswith(b"{"):
                    _file_error(log, info, "not_json", str(path), "not JSON Lines (does not start with '{')")
                    return
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if len(line) > limit:
                    _line_too_long(log, info, f"{path}:{lineno + 1}", limit)
                    return
                lineno += 1
                if line.strip():
                    yield f"{path}:{lineno}", _parse_line(line)
            if len(rest) > limit:  # an unfinished line already over budget: it may go on for gigabytes
                _line_too_long(log, info, f"{path}:{lineno + 1}", limit)
                return
    if rest.strip():
        lineno += 1
        yield f"{path}:{lineno}", _parse_line(rest)
    if first:
        _file_error(log, info, "empty_file", str(path), "empty file (no JSON lines)")


def _line_too_long(log: InputLog, info: dict[str, Any], source: str, limit: int) -> None:
    _file_error(log, info, "line_too_long", source, f"a line longer than {limit:,} bytes (the per-line "
                "budget; raise it with --max-line-bytes if the line is real); stopped reading this file")


def _chunks(raw: Any, gz: bool) -> Iterator[bytes]:
    """Decompressed chunks of at most `_CHUNK` bytes. Unlike `gzip.GzipFile.read`, a truncated file still
    yields everything before the break, then raises `EOFError`; concatenated gzip members are read on."""
    if not gz:
        while chunk := raw.read(_CHUNK):
            yield chunk
        return
    d, started = zlib.decompressobj(wbits=31), False
    while data := raw.read(1 << 20):
        while data:
            started = True
            out = d.decompress(data, _CHUNK)
            if out:
                yield out
            if d.eof:
                data, d, started = d.unused_data, zlib.decompressobj(wbits=31), False
            else:
                data = d.unconsumed_tail
    if started:
        out = d.flush()
        if out:
            yield out
        if not d.eof:
            raise EOFError("compressed file ended before the end of the gzip stream")


def _row_error(e: BaseException) -> str:
    """One short line for an exception a pathological row raised."""
    if isinstance(e, RecursionError):
        return "nested too deep to read"
    if isinstance(e, UnicodeError):
        return "text is not valid Unicode (e.g. a lone surrogate \\udxxx or invalid UTF-8)"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _parse_line(line: bytes) -> Any:
    """The parsed object, or a `BadRow` that `normalize_record` raises (so it is counted like any bad row).

    orjson rejects lone surrogates, numbers beyond 64 bits and nesting beyond 1,024 levels; the stdlib
    fallback (kept because it reads NaN/Infinity, which then fail the rating check with a clearer message)
    accepts the first two and overflows the stack on the third, so its result is checked to be encodable.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            obj = json.loads(line)
            json.dumps(obj, ensure_ascii=False).encode("utf-8")  # a lone surrogate fails here, not in Arrow
            return obj
        except (RecursionError, ValueError) as e:  # also an integer of more than 4,300 digits
            return BadRow("invalid_json", f"invalid JSON: {_row_error(e)}")


def _parquet_rows(path: Path, info: dict[str, Any], log: InputLog,
                  progress: Progress | None) -> Iterator[tuple[str, Any]]:
    """(`file:row`, row dict) per parquet row, reading only the metadata columns in record batches."""
    try:
        pf = pq.ParquetFile(path)
        columns = [c for c in META_COLUMNS if c in pf.schema_arrow.names]
        total = max(pf.metadata.num_rows, 1)
    except (pa.ArrowException, OSError) as e:
        _file_error(log, info, "not_parquet", str(path), f"not a readable parquet file: {e}")
        return
    if pf.metadata.num_rows == 0:
        _file_error(log, info, "empty_file", str(path), "empty parquet file (0 rows)")
        return
    size, row = path.stat().st_size, 0
    try:
        for batch in pf.iter_batches(batch_size=8192, columns=columns):
            for obj in _batch_rows(batch):
                row += 1
                yield f"{path}:{row}", obj
            if progress is not None:
                progress(size * batch.num_rows // total)
    except (pa.ArrowException, OSError) as e:
        _file_error(log, info, "unreadable_file", f"{path}:{row + 1}", f"stopped after row {row}: {e}")


def _batch_rows(batch: pa.RecordBatch) -> list[Any]:
    """The batch's rows as dicts; if one cell cannot be converted (invalid UTF-8 in a string column), the
    rows are converted one by one and that row alone becomes a `BadRow`."""
    try:
        return batch.to_pylist()
    except _ROW_ERRORS:
        rows: list[Any] = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except _ROW_ERRORS as e:
                rows.append(BadRow("bad_value", _row_error(e)))
        return rows
