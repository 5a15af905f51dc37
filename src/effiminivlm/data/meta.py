"""Streaming readers of the Amazon Reviews 2023 item metadata, yielding normalised records.

Reads the official `meta_<Category>.jsonl` / `.jsonl.gz` files and the Hugging Face parquet shards of
`raw_meta_<Category>` (where `images` is a struct of lists and `details` a JSON string) one row at a time, so
memory stays flat however large the category. The format is sniffed from the first bytes (gzip magic,
`PAR1`), not trusted from the suffix.

Why a log instead of exceptions: one broken line must not sink a 30 GB run. Every bad row or file is
counted by kind with `file:line` examples (`InputLog`); with `strict=True` the first one raises `DataError`
naming file and line instead. Nothing is dropped silently. Kinds: `invalid_json`, `not_object`,
`missing_field` (no `parent_asin`, `average_rating` or `rating_number`: no identity, target or weight),
`bad_type`, `bad_rating` (NaN or outside [1, 5], negative count); per file `empty_file`, `not_json`,
`not_parquet`, `unreadable_file`. Empty text fields are not bad input: the paper's `require_fields` filter
(in `prepare`) is about them, so records carry them as "".
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from glob import glob, has_magic
from itertools import zip_longest
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from effiminivlm.data.text import clean_text
from effiminivlm.errors import DataError

META_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
META_COLUMNS = ("parent_asin", "main_category", "title", "average_rating", "rating_number", "features",
                "description", "details", "images")
_CATEGORY = re.compile(r"^(?:raw_)?meta_(.+?)(?:[-_]\d{5}-of-\d{5})?$")
_CHUNK = 1 << 22  # bytes read at a time from (decompressed) JSON Lines
Progress = Callable[[int], None]
# The prepared dataset's columns but `split` (docs/ARCHITECTURE.md); `prepare` adds the split.
ROW_SCHEMA = pa.schema([
    ("parent_asin", pa.string()), ("category", pa.string()), ("title", pa.string()),
    ("features", pa.string()), ("description", pa.string()), ("details", pa.string()),
    ("average_rating", pa.float32()), ("rating_number", pa.int64()), ("images", pa.list_(pa.string())),
    ("source", pa.string()),
])


class BadRow(Exception):
    """One row that violates the schema; `kind` is the counter it lands in."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class InputLog:
    """Counts of bad input by kind, a few `file:line: message` examples each, and per-file row counts."""

    strict: bool = False
    max_examples: int = 5
    rows_read: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    unsupported_image_refs: int = 0
    refused_image_refs: dict[str, int] = field(default_factory=dict)  # by reason, see image_refs

    def record(self, kind: str, source: str, message: str) -> None:
        """Count one bad row/file; in strict mode raise instead so the user fixes the data first."""
        if self.strict:
            raise DataError(f"{source}: {message} ({kind}; run without --strict to skip and count such rows)")
        self.bad[kind] = self.bad.get(kind, 0) + 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < self.max_examples:
            ex.append(f"{source}: {message}")

    def as_dict(self) -> dict[str, Any]:
        return {"total": sum(self.bad.values()), "by_kind": dict(sorted(self.bad.items())),
                "examples": {k: self.examples[k] for k in sorted(self.examples)}}


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files, globs and folders -> an ordered, de-duplicated list of metadata files.

    A folder contributes every metadata file below it (a `raw_meta_<Category>/` shard folder); a missing
    path or a glob matching nothing is an error, because a typo must not produce a smaller dataset.
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
                out.append(p)
    unique: dict[Path, Path] = {}  # the same file named twice (a path and a glob) is read once
    for p in out:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


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
                    strict: bool = False) -> tuple[pa.Table, InputLog]:
    """All normalised rows of `inputs` in memory (`ROW_SCHEMA`), for scoring products rather than training.

    No paper filters and no sampling; a repeated `parent_asin` is dropped (first wins) and counted as
    `duplicate_parent_asin`. With `require_rating=False` rows without ratings are kept (ratings null).
    """
    log = InputLog(strict=strict)
    rows: dict[str, dict[str, Any]] = {}
    for rec in iter_meta(expand_inputs(inputs), log, require_rating=require_rating):
        asin = rec["parent_asin"]
        if asin in rows:
            log.record("duplicate_parent_asin", rec["source"], f"parent_asin {asin} read before")
        else:
            rows[asin] = rec
    return pa.Table.from_pylist(list(rows.values()), schema=ROW_SCHEMA), log


def iter_meta(paths: Sequence[Path], log: InputLog, progress: Progress | None = None,
              require_rating: bool = True) -> Iterator[dict[str, Any]]:
    """Normalised records of every file in order (see `normalize_record`); bad input goes to `log`."""
    for path in paths:
        yield from iter_meta_file(path, log, progress, require_rating)


def iter_meta_file(path: Path, log: InputLog, progress: Progress | None = None,
                   require_rating: bool = True) -> Iterator[dict[str, Any]]:
    """Normalised records of one JSON Lines (plain or gzip) or parquet file; `progress(n)` gets raw bytes."""
    info: dict[str, Any] = {"path": str(path), "category_from_name": category_from_path(path), "rows_read": 0,
                            "bad_rows": 0}
    log.files.append(info)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        _file_error(log, info, "unreadable_file", str(path), f"cannot open: {e.strerror or e}")
        return
    info["format"] = "parquet" if magic == b"PAR1" else "jsonl.gz" if magic[:2] == b"\x1f\x8b" else "jsonl"
    if path.name.endswith(".parquet") and info["format"] != "parquet":
        kind, msg = ("empty_file", "empty file") if not magic else ("not_parquet", "not a parquet file")
        _file_error(log, info, kind, str(path), msg)
        return
    base_dir = path.absolute().parent
    reader = _parquet_rows if info["format"] == "parquet" else _jsonl_rows
    for source, obj in reader(path, info, log, progress):
        info["rows_read"] += 1
        log.rows_read += 1
        try:
            yield normalize_record(obj, base_dir=base_dir, file_category=info["category_from_name"],
                                   source=source, log=log, require_rating=require_rating)
        except BadRow as e:
            info["bad_rows"] += 1
            log.record(e.kind, source, str(e))


def _file_error(log: InputLog, info: dict[str, Any], kind: str, source: str, message: str) -> None:
    info["error"] = f"{kind}: {message}"
    log.record(kind, source, message)


def _jsonl_rows(path: Path, info: dict[str, Any], log: InputLog,
                progress: Progress | None) -> Iterator[tuple[str, Any]]:
    """(`file:line`, parsed object) per non-blank line, reading large decompressed chunks for speed."""
    lineno, pos, rest, first = 0, 0, b"", True
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
                lineno += 1
                if line.strip():
                    yield f"{path}:{lineno}", _parse_line(line)
    if rest.strip():
        lineno += 1
        yield f"{path}:{lineno}", _parse_line(rest)
    if first:
        _file_error(log, info, "empty_file", str(path), "empty file (no JSON lines)")


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


def _parse_line(line: bytes) -> Any:
    """The parsed object, or a `BadRow` that `normalize_record` raises (so it is counted like any bad row)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        try:  # the stdlib also reads NaN/Infinity, which then fail the rating check with a clearer message
            return json.loads(line)
        except ValueError as e:
            return BadRow("invalid_json", f"invalid JSON: {e}")


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
            for obj in batch.to_pylist():
                row += 1
                yield f"{path}:{row}", obj
            if progress is not None:
                progress(size * batch.num_rows // total)
    except (pa.ArrowException, OSError) as e:
        _file_error(log, info, "unreadable_file", f"{path}:{row + 1}", f"stopped after row {row}: {e}")


def normalize_record(obj: Any, *, base_dir: Path, file_category: str, source: str,
                     log: InputLog | None = None, require_rating: bool = True) -> dict[str, Any]:
    """One raw metadata object -> the prepared-row fields (docs/ARCHITECTURE.md); raises `BadRow`.

    Text fields go through `clean_text` (lists joined with " ", `details` as "key: value" joined with "; ").
    `category` is `main_category`, else the category in the file name (`category_from_file` says which).
    """
    if isinstance(obj, BadRow):
        raise obj
    if not isinstance(obj, dict):
        raise BadRow("not_object", f"expected a JSON object, got {type(obj).__name__}")
    asin = obj.get("parent_asin")
    if isinstance(asin, str):
        asin = asin.strip()
    if asin is None or asin == "":
        raise BadRow("missing_field", "missing parent_asin")
    if not isinstance(asin, str):
        raise BadRow("bad_type", f"parent_asin must be a string, got {type(asin).__name__}")
    rating, count = obj.get("average_rating"), obj.get("rating_number")
    if rating is None and require_rating:
        raise BadRow("missing_field", "missing average_rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, int | float):
            raise BadRow("bad_type", f"average_rating must be a number, got {type(rating).__name__}")
        if not (math.isfinite(rating) and 1.0 <= rating <= 5.0):
            raise BadRow("bad_rating", f"average_rating {rating!r} is not in [1, 5]")
        rating = float(rating)
    if count is None and require_rating:
        raise BadRow("missing_field", "missing rating_number")
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        raise BadRow("bad_type", f"rating_number must be an integer, got {count!r}")
    if count is not None and count < 0:
        raise BadRow("bad_rating", f"rating_number {count} is negative")
    main_category = clean_text(_string(obj, "main_category"))
    return {
        "parent_asin": asin,
        "category": main_category or file_category,
        "category_from_file": not main_category,
        "title": clean_text(_string(obj, "title")),
        "features": clean_text(" ".join(_strings(obj, "features"))),
        "description": clean_text(" ".join(_strings(obj, "description"))),
        "details": clean_text(_details(obj.get("details"))),
        "average_rating": rating,
        "rating_number": count,
        "images": image_refs(obj.get("images"), base_dir, log),
        "source": source,
    }


def _string(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRow("bad_type", f"{key} must be a string, got {type(value).__name__}")
    return value or ""


def _strings(obj: dict[str, Any], key: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRow("bad_type", f"{key} must be a list of strings, got {type(value).__name__}")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            out.append(str(item))
        elif item is not None:
            raise BadRow("bad_type", f"{key} must be a list of strings, has a {type(item).__name__}")
    return out


def _details(value: Any) -> str:
    """`details` dict (JSON) or JSON-encoded dict (HF parquet) -> "key: value; key: value"."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            return text
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    if not isinstance(value, dict):
        raise BadRow("bad_type", f"details must be an object, got {type(value).__name__}")
    pairs = ((k, (v if isinstance(v, str) else _flat(v)).strip()) for k, v in value.items() if v is not None)
    return "; ".join(f"{k}: {v}" for k, v in pairs if v)  # strip: "M\n" must not end up as "M ;"


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_flat(v) for v in value)
    return str(value)


def image_refs(images: Any, base_dir: Path, log: InputLog | None = None) -> list[str]:
    """Ordered image references: one per image (hi_res, else large), the MAIN variant first.

    Accepts the JSON layout (list of {hi_res, large, thumb, variant}) and the HF parquet layout (a struct of
    lists). Local references (relative, absolute or file://) must resolve inside the meta file's folder
    `base_dir`, its images root; they are stored as absolute paths, so the prepared dataset works from any
    working directory. Others are dropped and counted in `log`: other URL schemes in
    `unsupported_image_refs`, paths leaving the root (`..`, `~`, absolute elsewhere, a symlink out) in
    `refused_image_refs["outside_images_root"]`.
    """
    if isinstance(images, dict):  # HF parquet: {hi_res: [...], large: [...], thumb: [...], variant: [...]}
        cols = [images.get(k) or [] for k in ("hi_res", "large", "variant")]
        if not all(isinstance(c, list) for c in cols):
            raise BadRow("bad_type", "images struct must hold lists")
        images = [{"hi_res": h, "large": la, "variant": v} for h, la, v in zip_longest(*cols)]
    if not isinstance(images, list | None):
        raise BadRow("bad_type", f"images must be a list, got {type(images).__name__}")
    main: list[str] = []
    rest: list[str] = []
    for im in images or []:
        if isinstance(im, str):
            ref, variant = im, None
        elif isinstance(im, dict):
            ref, variant = im.get("hi_res") or im.get("large"), im.get("variant")
        elif im is None:
            continue
        else:
            raise BadRow("bad_type", f"images entries must be objects, got {type(im).__name__}")
        if not ref:
            continue
        if not isinstance(ref, str):
            raise BadRow("bad_type", f"image reference must be a string, got {type(ref).__name__}")
        ref, refusal = _resolve_ref(ref.strip(), base_dir)
        if ref is None:
            if log is not None and refusal == "unsupported":
                log.unsupported_image_refs += 1
            elif log is not None and refusal is not None:
                log.refused_image_refs[refusal] = log.refused_image_refs.get(refusal, 0) + 1
            continue
        (main if variant == "MAIN" else rest).append(ref)
    return list(dict.fromkeys(main + rest))


def _resolve_ref(ref: str, base_dir: Path) -> tuple[str | None, str | None]:
    """(http(s) URL as it is, or local path made absolute inside `base_dir`, None), or (None, reason) with
    reason "unsupported" (another scheme, file://otherhost, empty) or "outside_images_root"."""
    from effiminivlm.data.images.store import confine, is_url, local_path

    if is_url(ref):
        return ref, None
    path, why = local_path(ref)
    if path is None:
        return None, why
    if str(path).startswith("~"):  # never expanded: data must not depend on who runs the tool
        return None, "outside_images_root"
    confined = confine(path if path.is_absolute() else base_dir / path, [base_dir])
    return (str(confined), None) if confined is not None else (None, "outside_images_root")
