"""Input-kind detection: whatever the user points a command at -> rows in the prepared schema.

Why in `data`: `predict`, `benchmark` and `profile --data` all accept the same three kinds of input, and
deciding which kind a path is (and reading it) is a data concern, so the commands above share one reader
instead of importing each other. Kinds, detected from what is given:
  - a prepared dataset folder (has summary.json), optionally one split;
  - the LoViF 2026 test layout: an `input.csv` (images relative to `--images-dir`, default its `images/`);
  - item-metadata files (`meta_<Category>.jsonl[.gz]`, parquet shards): products need no rating to be
    scored (cold start), so unrated rows are kept; unreadable rows are counted and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from effiminivlm.data.images import ImageStore
from effiminivlm.errors import DataError
from effiminivlm.files import MAX_LINE_BYTES, recover_dir


@dataclass
class PredictInputs:
    """The rows to score, where their images resolve, and what reading them skipped."""

    table: pa.Table
    store: ImageStore
    kind: str
    skipped: dict[str, Any] = field(default_factory=dict)


def read_inputs(inputs: list[str], *, split: str | None = None, images_dir: str | None = None,
                strict: bool = False, max_line_bytes: int = MAX_LINE_BYTES) -> PredictInputs:
    """Detect the input kind and read it into the prepared schema (lines / cells up to `max_line_bytes`).

    An `images_dir` that is missing or not a folder is an error: a typo must not score every item as text
    only with exit 0.
    """
    if images_dir is not None and not Path(images_dir).is_dir():
        what = "is not a folder" if Path(images_dir).exists() else "does not exist"
        raise DataError(f"--images-dir {images_dir}: {what}")
    if not inputs:
        raise DataError("nothing to predict: give a prepared folder, an input.csv or metadata files")
    first = Path(inputs[0])
    if len(inputs) == 1:
        recover_dir(first)  # a prepared folder whose --overwrite replacement was interrupted comes back
    if len(inputs) == 1 and first.is_dir() and (first / "summary.json").is_file():
        from effiminivlm.data.prepare import read_prepared

        store = ImageStore.for_prepared(first, images_dir)  # local refs confined to the recorded roots
        return PredictInputs(read_prepared(first, split), store, "prepared")
    if split is not None:
        raise DataError("--split applies to a prepared dataset folder only")
    if len(inputs) == 1 and first.suffix.lower() == ".csv":
        from effiminivlm.data.lovif import read_lovif

        table, stats = read_lovif(first, images_dir, strict=strict, max_line_bytes=max_line_bytes)
        return PredictInputs(table, ImageStore(None), "lovif", skipped=_nonzero(vars(stats)))
    from effiminivlm.data.readers import read_meta_table

    table, log = read_meta_table(inputs, require_rating=False, strict=strict, max_line_bytes=max_line_bytes)
    cache = images_dir if images_dir is not None else None
    return PredictInputs(table, ImageStore(cache), "meta", skipped=log.as_dict())


def _nonzero(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v}
