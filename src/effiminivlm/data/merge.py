"""Merge prepared datasets written by separate `prepare` runs (one per category, run in parallel) into one.

Why: `prepare` streams its input, but one process reads one file at a time; the 48M-item catalog comes as
one metadata file per category, so the fast path is one `prepare` per category (on as many cores or
machines as there are) and a merge. Sampling and the 8:1:1 split are per category already, so the parts are
the dataset one run over every file would give (up to each part's own seed stream). The merge copies each
part's Parquet files into `OUT/data/part-NNNNN.parquet` (read back as one pyarrow dataset, in part order),
checks that `parent_asin` stays unique across parts, and writes a summary.json that adds up the parts' counts
and keeps every part's image roots. Like `prepare`, it builds OUT in a hidden folder and publishes it whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from effiminivlm.data.schema import SCHEMA
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.files import partial_dir, replace_dir, write_json

#: summary.json counters that add up across parts.
SUMMED = ("rows_read", "bad_rows", "bad_files", "kept_after_filters", "not_sampled", "kept",
          "category_from_file_name", "unsupported_image_refs")


def _part_files(part: Path) -> list[Path]:
    if not (part / "summary.json").is_file():
        raise DataError(f"{part} is not a prepared dataset (no summary.json); run `effiminivlm prepare` "
                        "first")
    files = [part / "data.parquet"] if (part / "data.parquet").is_file() else sorted(
        (part / "data").glob("*.parquet"))
    if not files:
        raise DataError(f"{part}: no data.parquet or data/*.parquet")
    return files


def merge_prepared(parts: list[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                   overwrite: bool = False) -> dict[str, Any]:
    """Merge the prepared folders `parts` into `out`; returns the merged summary."""
    dirs = [Path(p) for p in parts]
    if len(dirs) < 2:
        raise EffiMiniVLMError("merge-prepared needs at least two prepared folders")
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise EffiMiniVLMError(f"--out {dest} exists and is not empty; pass --overwrite to replace it")
    files = [(d, _part_files(d)) for d in dirs]
    for _, fs in files:
        for f in fs:
            if not pq.read_schema(f).equals(SCHEMA):
                raise DataError(f"{f}: columns differ from the prepared schema (prepared by another "
                                "version?)")
    _check_unique(files)
    summaries = [json.loads((d / "summary.json").read_text(encoding="utf-8")) for d in dirs]
    tmp = partial_dir(dest)
    (tmp / "data").mkdir(parents=True)
    k = 0
    for _, fs in files:
        for f in fs:
            shutil.copyfile(f, tmp / "data" / f"part-{k:05d}.parquet")
            k += 1
    summary = _merged_summary(dirs, summaries)
    write_json(summary, tmp / "summary.json")
    replace_dir(tmp, dest)
    return summary


def _check_unique(files: list[tuple[Path, list[Path]]]) -> None:
    """parent_asin must stay unique across the whole dataset: one id column in Arrow memory, no Python set."""
    ids = pa.chunked_array([c for _, fs in files for c in
                            ds.dataset([str(f) for f in fs], format="parquet").to_table(
                                columns=["parent_asin"]).column("parent_asin").chunks], pa.string())
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    owners = [str(d) for d, fs in files
              if pc.any(pc.equal(ds.dataset([str(f) for f in fs], format="parquet").to_table(
                  columns=["parent_asin"]).column("parent_asin"), dup)).as_py()]
    raise DataError(f"parent_asin {dup} is in more than one part ({', '.join(owners)}); "
                    "a product must be prepared in one part only")


def _merged_summary(dirs: list[Path], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"merged_from": [str(d) for d in dirs], "inputs": [], "per_category": {},
                              "per_split": {}, "image_roots": []}
    for s in summaries:
        merged["inputs"] += s.get("inputs", [])
        merged["per_category"].update(s.get("per_category", {}))
        for split, info in (s.get("per_split") or {}).items():
            merged["per_split"].setdefault(split, {"rows": 0})["rows"] += int(info.get("rows", 0))
        for root in s.get("image_roots", []):
            if root not in merged["image_roots"]:
                merged["image_roots"].append(root)
        for key in SUMMED:
            merged[key] = merged.get(key, 0) + int(s.get(key, 0) or 0)
        for key, n in (s.get("dropped") or {}).items():
            merged.setdefault("dropped", {})[key] = merged.get("dropped", {}).get(key, 0) + int(n)
    merged["options"] = [s.get("options") for s in summaries]
    return merged
