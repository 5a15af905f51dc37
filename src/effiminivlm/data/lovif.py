"""The LoViF 2026 test layout: `input.csv` + an images folder, read into the prepared-dataset schema.

Why a separate reader: the challenge ships its test items as a CSV (`parent_asin, main_category, title,
features, description, image_paths`, with `;`-separated image paths relative to an images folder) and the
ground truth apart. Reading it into the same table `prepare` writes lets evaluation and prediction run one
code path. The paths come from a file we did not write, so a path that would leave the images folder
(`..`, absolute, a symlink pointing outside) is refused and counted, never opened.

`features` / `description` cells may be plain text or a JSON / Python list literal (`["a", "b"]`); lists are
joined with " " exactly like `prepare` joins the official schema's lists. A list literal that cannot be
read because of its shape (nested thousands deep, an integer of thousands of digits) is counted with its
`file:line` and kept as plain text, so the item is still scored; with `strict=True` it is a DataError.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.data.schema import SCHEMA as PREPARED_SCHEMA  # the contract of docs/ARCHITECTURE.md
from effiminivlm.data.text import clean_text
from effiminivlm.errors import DataError
from effiminivlm.files import MAX_LINE_BYTES, parse_number, read_csv_rows

INPUT_COLUMNS = ("parent_asin", "main_category", "title", "features", "description", "image_paths")


class _BadCell(ValueError):
    """A list-literal cell that cannot be read (too deep, too large a number); the message says why."""


@dataclass
class LovifStats:
    """What reading the layout found; `refused` paths tried to leave the images folder."""

    rows: int = 0
    images_found: int = 0
    images_missing: int = 0
    images_refused: int = 0
    rows_without_image: int = 0
    bad_cells: int = 0  # list literals that could not be read, kept as plain text
    bad_cell_examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = (f"{self.rows} items, {self.images_found} images found, {self.images_missing} missing, "
                f"{self.images_refused} refused (outside the images folder), "
                f"{self.rows_without_image} items without any image")
        if self.bad_cells:
            text += (f", {self.bad_cells} unreadable list cells kept as text "
                     f"(e.g. {self.bad_cell_examples[0]})")
        return text


def _require(path: Path, header: list[str], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; "
                        f"found: {', '.join(header) or 'none'}")


def _text_cell(value: str | None) -> str:
    """A text cell that may hold a list literal -> one cleaned string; `_BadCell` if it cannot be read.

    Text that merely looks like a list (`[not a list`, `[Note] ...`) is plain text, not an error; only a
    literal the parsers give up on for its size (nesting, digits) is a `_BadCell`.
    """
    s = (value or "").strip()
    if s.startswith("[") and s.endswith("]"):
        parsed = None
        try:
            parsed = json.loads(s)
        except json.JSONDecodeError:
            try:
                parsed = ast.literal_eval(s)
            except (RecursionError, MemoryError):
                raise _BadCell("a list literal nested too deep to read") from None
            except SyntaxError as e:
                if "nested" in str(e) or "digits" in str(e):  # "too many nested parentheses", int limit
                    raise _BadCell(f"a list literal that cannot be read: {e.msg}") from None
                parsed = None
            except ValueError:
                parsed = None
        except RecursionError:
            raise _BadCell("a list literal nested too deep to read") from None
        except ValueError as e:  # not a JSONDecodeError: an integer of more than 4,300 digits
            raise _BadCell(f"a list literal that cannot be read: {e}") from None
        if isinstance(parsed, list):
            try:
                s = " ".join(str(x) for x in parsed if x is not None)
            except (RecursionError, ValueError) as e:
                raise _BadCell(f"a list literal that cannot be made text: {type(e).__name__}") from None
    return clean_text(s)


def _safe_image(images_root: Path, rel: str) -> tuple[str | None, str]:
    """(absolute path, "found") or (None, "missing" | "refused") for one relative path."""
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return None, "refused"
    try:
        candidate = (images_root / rel).resolve()  # follows symlinks, so a link out of the folder is caught
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        return None, "refused"
    if not candidate.is_relative_to(images_root):
        return None, "refused"
    if not candidate.is_file():
        return None, "missing"
    return str(candidate), "found"


def read_lovif(input_csv: str | os.PathLike[str], images_dir: str | os.PathLike[str] | None = None,
               strict: bool = False, max_line_bytes: int = MAX_LINE_BYTES) -> tuple[pa.Table, LovifStats]:
    """Read `input_csv` (images relative to `images_dir`, default `<its folder>/images`) as a prepared table.

    Rows keep the file's order; `average_rating` / `rating_number` are null, `split` is "test" and
    `source` is `input.csv:<line>`. A row without a parent_asin, or a parent_asin seen twice, is a
    DataError (predictions are matched to truth by that id). An unreadable list-literal cell is counted in
    `stats.bad_cells` (with `file:line` examples) and kept as text; with `strict` it is a DataError.
    """
    path = Path(input_csv)
    images_root = (Path(images_dir) if images_dir is not None else path.parent / "images").resolve()
    header, rows = read_csv_rows(path, max_line_bytes)
    _require(path, header, INPUT_COLUMNS)
    stats = LovifStats()
    cols: dict[str, list] = {name: [] for name in PREPARED_SCHEMA.names}
    seen: dict[str, int] = {}
    for line, row in rows:
        asin = (row.get("parent_asin") or "").strip()
        if not asin:
            raise DataError(f"{path}:{line}: empty parent_asin")
        if asin in seen:
            raise DataError(f"{path}:{line}: parent_asin {asin!r} already on line {seen[asin]}")
        seen[asin] = line
        images = []
        for rel in (row.get("image_paths") or "").split(";"):
            rel = rel.strip()
            if not rel:
                continue
            found, status = _safe_image(images_root, rel)
            if found is not None:
                images.append(found)
            setattr(stats, f"images_{status}", getattr(stats, f"images_{status}") + 1)
        stats.rows += 1
        stats.rows_without_image += int(not images)
        cols["parent_asin"].append(asin)
        cols["category"].append(clean_text(row.get("main_category") or ""))
        for column in ("title", "features", "description"):
            cols[column].append(_read_cell(row.get(column), f"{path}:{line}: {column}", stats, strict))
        cols["details"].append("")
        cols["listing"].append(None)  # input.csv has no listing fields: models count the fallback
        cols["average_rating"].append(None)
        cols["rating_number"].append(None)
        cols["images"].append(images)
        cols["split"].append("test")
        cols["source"].append(f"{path.name}:{line}")
    return pa.table(cols, schema=PREPARED_SCHEMA), stats


def _read_cell(value: str | None, where: str, stats: LovifStats, strict: bool) -> str:
    """`_text_cell`, with an unreadable cell counted (or, with `strict`, raised) instead of crashing."""
    try:
        return _text_cell(value)
    except _BadCell as e:
        if strict:
            raise DataError(f"{where}: {e} (run without --strict to keep it as text and count it)") from None
        stats.bad_cells += 1
        if len(stats.bad_cell_examples) < 5:
            stats.bad_cell_examples.append(f"{where}: {e}")
        return clean_text(value or "")


def read_truth(truth_csv: str | os.PathLike[str]) -> dict[str, float]:
    """id -> average_rating from a truth CSV with `parent_asin` (or `item_id`) and `average_rating` columns.

    Ratings must be finite numbers in [1, 5] and ids unique; anything else is a DataError naming the line,
    because a silently skipped truth row would change the score.
    """
    path = Path(truth_csv)
    header, rows = read_csv_rows(path)
    id_col = next((c for c in ("parent_asin", "item_id") if c in header), "parent_asin or item_id")
    _require(path, header, (id_col, "average_rating"))
    if not rows:
        raise DataError(f"{path}: no rows")
    truth: dict[str, float] = {}
    for line, row in rows:
        key = (row.get(id_col) or "").strip()
        raw = (row.get("average_rating") or "").strip()
        if not key:
            raise DataError(f"{path}:{line}: empty {id_col}")
        if key in truth:
            raise DataError(f"{path}:{line}: {id_col} {key!r} appears twice")
        value = parse_number(raw, f"{path}:{line}", "average_rating")  # strict: "3_5" is not 35
        if not RATING_RANGE[0] <= value <= RATING_RANGE[1]:
            raise DataError(f"{path}:{line}: average_rating {raw!r} is outside [1, 5]")
        truth[key] = value
    return truth
