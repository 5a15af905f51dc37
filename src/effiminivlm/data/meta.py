"""Record normalisation of the Amazon Reviews 2023 item metadata, and the bad-input log every reader fills.

One raw metadata object (a JSON line or a parquet row, read by `data.readers`) becomes one record with the
prepared-row fields of `data.schema.ROW_SCHEMA`. Every value is checked against what its Arrow type can hold
(`rating_number` fits int64, text is valid UTF-8), so a record that leaves here can always be written and
a bad value is reported at its `file:line`, never later as a crash of the whole batch.

Why a log instead of exceptions: one broken line must not sink a 30 GB run. Every bad row or file is
counted by kind with `file:line` examples (`InputLog`); with `strict=True` the first one raises `DataError`
naming file and line instead. Nothing is dropped silently. Kinds: `invalid_json` (also nested too deep,
lone surrogates), `not_object`, `missing_field` (no `parent_asin`, `average_rating` or `rating_number`: no
identity, target or weight), `bad_type`, `bad_rating` (NaN or outside [1, 5], negative or beyond int64
count), `bad_value` (a value no field can hold, e.g. nested too deep to flatten); per file `empty_file`,
`not_json`, `not_parquet`, `unreadable_file` (also a FIFO or device). Empty text fields are not bad input: the
paper's `require_fields` filter (in `prepare`) is about them, so records carry them as "".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import orjson

from effiminivlm.data.listing import listing_json
from effiminivlm.data.schema import INT64_MAX, RATING_RANGE
from effiminivlm.data.text import clean_text
from effiminivlm.errors import DataError
from effiminivlm.files import MAX_LINE_BYTES

__all__ = ["BadRow", "InputLog", "image_refs", "normalize_record"]


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
    max_line_bytes: int = MAX_LINE_BYTES  # per JSON line, enforced by the readers
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


def normalize_record(obj: Any, *, base_dir: Path, file_category: str, source: str,
                     log: InputLog | None = None, require_rating: bool = True,
                     require_rating_number: bool = True) -> dict[str, Any]:
    """One raw metadata object -> the prepared-row fields (docs/ARCHITECTURE.md); raises `BadRow`.

    `require_rating_number=False` keeps a rated row whose `rating_number` is missing (null count): real
    dumps such as the titles sample have ratings but no counts, and the training recipe decides their loss
    weight (`train.missing_rating_number`).

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
        # Compared, never converted first: NaN and inf fail the test, and a 4,000-digit int neither
        # overflows float() nor reaches the float32 column.
        if not RATING_RANGE[0] <= rating <= RATING_RANGE[1]:
            raise BadRow("bad_rating", f"average_rating {_short(rating)} is not in [1, 5]")
        rating = float(rating)
    if count is None and require_rating and require_rating_number:
        raise BadRow("missing_field", "missing rating_number")
    if isinstance(count, float) and math.isfinite(count) and count.is_integer():
        count = int(count)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        raise BadRow("bad_type", f"rating_number must be an integer, got {_short(count)}")
    if count is not None and count < 0:
        raise BadRow("bad_rating", f"rating_number {_short(count)} is negative")
    if count is not None and count > INT64_MAX:  # 1e20: Arrow's int64 column cannot hold it
        raise BadRow("bad_rating", f"rating_number {_short(count)} is larger than {INT64_MAX} (int64)")
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
        "listing": listing_json(obj),
        "source": source,
    }


def _short(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: an error line must stay one readable line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        try:
            digits = f"{len(str(abs(value)))}"
        except ValueError:  # beyond the interpreter's int -> str digit limit
            digits = f"about {int(value.bit_length() * 0.30103) + 1}"
        return f"<{'-' if value < 0 else ''}integer of {digits} digits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
