"""Metadata files -> prepared dataset: the paper's filters, per-category sampling, a stratified 8:1:1 split.

Two streaming passes keep memory bounded by the row count times a few bytes, not by the text:

1. read + normalise + filter every file (`data.meta`), spilling kept rows to a temporary Parquet file with two
   seeded 64-bit hashes of `parent_asin` (one to sample by, one to split by);
2. from a few columns of the spill (id, category, rating, hashes): drop duplicate ids (first occurrence wins),
   keep the `sample_size` smallest sample-hashes per category, rank each rating stratum by split-hash and cut
   it 8:1:1; then stream the spill once more into `DIR/data.parquet`.

Why hashes instead of a shuffled RNG: the same items and seed give the same sample and splits whatever the
order or sharding of the input files, and an id can never land in two splits. The result is written to a
hidden temporary folder that is renamed into place at the end, so a crash never leaves a half dataset that
looks complete. A killed run's temporary folder is deleted by the next run, a crash between the two
renames of `--overwrite` is repaired (`files.recover_dir`) at the next start or read, and inputs of which not
one row could be read are an error, not an empty dataset. Output contract: docs/ARCHITECTURE.md ("Prepared
dataset"; the columns are `data.schema.SCHEMA`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from bisect import bisect_right
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from effiminivlm.data.meta import InputLog
from effiminivlm.data.readers import expand_inputs, iter_meta
from effiminivlm.data.schema import ESSENTIAL, ROW_SCHEMA, SCHEMA, SPLITS
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.files import MAX_LINE_BYTES, partial_dir, recover_dir, remove_stale_partials, replace_dir

__all__ = ["ESSENTIAL", "SCHEMA", "SPLITS", "prepare", "print_summary", "read_prepared", "sample_size",
           "split_counts"]
SPLIT_RATIOS = (0.8, 0.1, 0.1)
FILE_ERRORS = frozenset({"empty_file", "not_json", "not_parquet", "unreadable_file"})
RULES = ("require_fields", "min_text_chars", "require_image", "duplicate_parent_asin")
HIST_EDGES = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
_ROW_COLUMNS = ROW_SCHEMA.names
_SPILL_SCHEMA = ROW_SCHEMA.append(pa.field("h_sample", pa.uint64())).append(pa.field("h_split", pa.uint64()))
_BATCH = 16_384  # spill rows per row group; bigger batches cost RSS (allocator retention), not speed


def sample_size(n: int, frac: float, min_per_category: int) -> int:
    """Items kept from a category of `n`: max(frac * n rounded down, min_per_category), capped at n."""
    return min(n, max(math.floor(frac * n + 1e-9), min_per_category))


def split_counts(m: int, ratios: tuple[float, ...] = SPLIT_RATIOS) -> tuple[int, ...]:
    """Cut `m` items by `ratios` with largest remainders (ties favour train, then val), summing to `m`."""
    exact = [r * m for r in ratios]
    base = [math.floor(x + 1e-9) for x in exact]
    for i in sorted(range(len(ratios)), key=lambda i: (-(exact[i] - base[i]), i))[: m - sum(base)]:
        base[i] += 1
    return tuple(base)


def prepare(inputs: list[str | os.PathLike[str]], out: str | os.PathLike[str], *, frac: float = 0.2,
            min_per_category: int = 10_000, seed: int = 0, strict: bool = False, require_fields: bool = True,
            min_text_chars: int = 30, require_image: bool = True, rare_threshold: int = 50,
            keep_missing_rating_number: bool = False, allow_titles_only: bool = False,
            overwrite: bool = False, progress: bool = False, max_line_bytes: int = MAX_LINE_BYTES
            ) -> dict[str, Any]:
    """Build `out/data.parquet` + `out/summary.json` from metadata files; returns the summary.

    Filters (the paper's, each a switch): `require_fields` drops rows with an empty category, title, features
    or description; `min_text_chars` drops rows whose title+features+description have at most that many
    characters (0 turns it off); `require_image` drops rows without an image reference. Rules apply in that
    order, each row counted by the first that drops it; duplicates are counted among the surviving rows.

    `keep_missing_rating_number` keeps rated rows without a `rating_number` (null in the dataset, counted
    per split as `missing_rating_number`; otherwise they are `missing_field` bad rows). `allow_titles_only`
    relaxes the paper's filters for catalogs that carry only titles: `require_fields` then needs category
    and title only, and `require_image` is off (text-only training).
    """
    if not 0.0 < frac <= 1.0:
        raise EffiMiniVLMError(f"--frac must be in (0, 1], got {frac}")
    for name, value in (("min-per-category", min_per_category), ("min-text-chars", min_text_chars),
                        ("rare-threshold", rare_threshold)):
        if value < 0:
            raise EffiMiniVLMError(f"--{name} must be >= 0, got {value}")
    paths = expand_inputs(inputs)
    out = Path(out)
    recover_dir(out)  # a crash mid-`--overwrite` left only the backup: put the old dataset back first
    remove_stale_partials(out)
    _check_out(out, overwrite)
    options = {"frac": frac, "min_per_category": min_per_category, "seed": seed, "strict": strict,
               "require_fields": require_fields, "min_text_chars": min_text_chars,
               "require_image": require_image, "rare_threshold": rare_threshold,
               "keep_missing_rating_number": keep_missing_rating_number,
               "allow_titles_only": allow_titles_only}
    tmp = partial_dir(out)
    try:
        log = InputLog(strict=strict, max_line_bytes=max_line_bytes)
        spill = tmp / "spill.parquet"
        total = sum(p.stat().st_size for p in paths)
        with tqdm(total=total, unit="B", unit_scale=True, desc="prepare: reading",
                  disable=not progress) as bar:
            cats, dropped_ex = _read_and_filter(paths, spill, log, options, bar.update)
        _require_rows(paths, log, cats)
        summary = _sample_split_write(spill, tmp / "data.parquet", cats, options, progress)
        spill.unlink()
        summary = {"inputs": log.files, "options": options, "rows_read": log.rows_read,
                   "bad_rows": sum(v for k, v in log.bad.items() if k not in FILE_ERRORS),
                   "bad_files": sum(v for k, v in log.bad.items() if k in FILE_ERRORS),
                   "bad_input": log.as_dict(), **summary}
        summary["dropped_examples"] = {**dropped_ex, **summary.pop("duplicate_examples")}
        summary["category_from_file_name"] = sum(c["category_from_file_name"] for c in cats.values())
        summary["unsupported_image_refs"] = log.unsupported_image_refs
        summary["refused_image_refs"] = log.refused_image_refs
        from effiminivlm.data.images.store import image_roots_of

        summary["image_roots"] = image_roots_of(log.files)  # where ImageStore.for_prepared reads local refs
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        replace_dir(tmp, out)
    finally:  # on success `tmp` was renamed away; on any error or interrupt it goes, spill and all
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def read_prepared(directory: str | os.PathLike[str], split: str | None = None) -> pa.Table:
    """The prepared rows (all, or one split) as a pyarrow Table with the contract's columns."""
    d = Path(directory)
    if not d.exists():
        recover_dir(d)  # `prepare --overwrite` died between its two renames: the backup is the dataset
    if not (d / "summary.json").is_file():
        raise DataError(f"{d} is not a prepared dataset (no summary.json); run `effiminivlm prepare` first")
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    source = d / "data.parquet" if (d / "data.parquet").exists() else d / "data"
    dataset = ds.dataset(source, format="parquet")
    table = dataset.to_table(filter=None if split is None else ds.field("split") == split)
    if "listing" not in table.column_names:  # prepared before the `listing` column: no listing fields
        field = SCHEMA.field("listing")
        index = min(SCHEMA.get_field_index("listing"), table.num_columns)
        table = table.add_column(index, field, pa.nulls(table.num_rows, field.type))
    return table


def _require_rows(paths: list[Path], log: InputLog, cats: dict[str, Counter[str]]) -> None:
    """A DataError when not one valid row was read: every file unreadable, or every row bad.

    A dataset of 0 rows would "succeed" and fail much later in `train`; the cause is here, in the inputs.
    """
    if cats:
        return
    bad = log.as_dict()
    kinds = ", ".join(f"{n} {k}" for k, n in bad["by_kind"].items()) or "no rows at all"
    first = next((ex[0] for ex in bad["examples"].values() if ex), "")
    raise DataError(f"no valid row in {len(paths)} input file(s) ({kinds})"
                    + (f"; e.g. {first}" if first else ""))


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse to clobber anything but an earlier prepared dataset, and that only with --overwrite."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"--out {out} is not empty; pass --overwrite to replace it")
        if not (out / "summary.json").is_file():
            raise DataError(f"--out {out} is not empty and is not a prepared dataset (no summary.json); "
                            "refusing to delete it even with --overwrite")


def _required(options: dict[str, Any]) -> tuple[str, ...]:
    """The fields `require_fields` needs non-empty: the paper's, or category + title for titles-only data."""
    return ("category", "title") if options.get("allow_titles_only") else ESSENTIAL


def _drop_reason(rec: dict[str, Any], options: dict[str, Any]) -> str | None:
    if options["require_fields"] and not all(rec[f] for f in _required(options)):
        return "require_fields"
    limit = options["min_text_chars"]
    if limit and len(rec["title"]) + len(rec["features"]) + len(rec["description"]) <= limit:
        return "min_text_chars"
    if options["require_image"] and not options.get("allow_titles_only") and not rec["images"]:
        return "require_image"
    return None


def _read_and_filter(paths: list[Path], spill: Path, log: InputLog, options: dict[str, Any],
                     progress: Any) -> tuple[dict[str, Counter[str]], dict[str, list[str]]]:
    """Pass 1: stream, filter, hash and spill; returns per-category counters and dropped-row examples."""
    key = f"effiminivlm-prepare:{options['seed']}".encode()[:64]
    cats: dict[str, Counter[str]] = {}
    examples: dict[str, list[str]] = {}
    cols: dict[str, list[Any]] = {n: [] for n in _SPILL_SCHEMA.names}
    writer = pq.ParquetWriter(spill, _SPILL_SCHEMA, compression="lz4")
    try:
        for rec in iter_meta(paths, log, progress,
                             require_rating_number=not options["keep_missing_rating_number"]):
            stats = cats.get(rec["category"])
            if stats is None:
                stats = cats[rec["category"]] = Counter()
            stats["rows_read"] += 1
            stats["category_from_file_name"] += rec["category_from_file"]
            reason = _drop_reason(rec, options)
            if reason is not None:
                stats[reason] += 1
                ex = examples.setdefault(reason, [])
                if len(ex) < 5:
                    missing = [f for f in _required(options) if not rec[f]]
                    ex.append(f"{rec['source']}: {'empty ' + ', '.join(missing) if missing else reason}")
                continue
            digest = hashlib.blake2b(rec["parent_asin"].encode(), digest_size=16, key=key).digest()
            rec["h_sample"] = int.from_bytes(digest[:8], "little")
            rec["h_split"] = int.from_bytes(digest[8:], "little")
            for name, values in cols.items():
                values.append(rec[name])
            if len(cols["parent_asin"]) >= _BATCH:
                writer.write_table(pa.table(cols, schema=_SPILL_SCHEMA))
                cols = {n: [] for n in _SPILL_SCHEMA.names}
        writer.write_table(pa.table(cols, schema=_SPILL_SCHEMA))
    finally:
        writer.close()
    return cats, examples


def _sample_split_write(spill: Path, dest: Path, cats: dict[str, Counter[str]], options: dict[str, Any],
                        progress: bool) -> dict[str, Any]:
    """Pass 2: dedupe, sample per category, split per rating stratum, stream the kept rows to `dest`."""
    pf = pq.ParquetFile(spill, buffer_size=1 << 20)
    t = pf.read(columns=["parent_asin", "category", "average_rating", "rating_number", "h_sample", "h_split"])
    n = t.num_rows
    ids = pa.table({"a": t["parent_asin"], "i": pa.array(np.arange(n, dtype=np.int64))})
    firsts = ids.group_by("a", use_threads=False).aggregate([("i", "min")])
    keep = np.zeros(n, dtype=bool)
    keep[firsts["i_min"].to_numpy()] = True
    enc = pc.dictionary_encode(t["category"].combine_chunks())
    names = enc.dictionary.to_pylist()
    cat = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    h_sample = t["h_sample"].to_numpy()
    h_split = t["h_split"].to_numpy()
    rating = t["average_rating"].to_numpy().astype(np.float64)
    no_count = t["rating_number"].is_null().to_numpy(zero_copy_only=False)
    dup = np.flatnonzero(~keep)
    dup_examples = [f"{s}: parent_asin {a} already read at {f}" for a, s, f in _dup_sources(pf, t, dup[:5])]
    del t, ids, firsts

    # Sample: the sample_size smallest seeded hashes of each category (independent of input order).
    kept_idx = np.flatnonzero(keep)
    order = kept_idx[np.lexsort((h_sample[kept_idx], cat[kept_idx]))]
    available = np.bincount(cat[kept_idx], minlength=len(names))
    starts = np.concatenate([[0], np.cumsum(available)])
    picked = [order[starts[c]: starts[c] + sample_size(int(available[c]), options["frac"],
                                                        options["min_per_category"])]
              for c in range(len(names))]
    sel = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)

    # Split: strata are rating values; values with <= rare_threshold items share one rare bucket.
    key = np.rint(rating[sel] * 100).astype(np.int64)
    values, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    rare = counts[inverse] <= options["rare_threshold"]
    stratum = np.where(rare, -1, key)
    by_stratum = np.lexsort((h_split[sel], stratum))
    order = sel[by_stratum]
    bounds = np.flatnonzero(np.diff(stratum[by_stratum])) + 1
    code = np.full(n, -1, dtype=np.int8)
    for group in np.split(order, bounds) if len(order) else []:
        tr, va, _ = split_counts(len(group))
        code[group[:tr]], code[group[tr:tr + va]], code[group[tr + va:]] = 0, 1, 2

    _write_rows(pf, dest, code, progress)
    by_cat = {}
    for c, name in enumerate(names):
        stats = cats[name]
        in_cat = cat == c
        by_cat[name] = {"rows_read": stats["rows_read"], **{r: stats[r] for r in RULES[:3]},
                        "duplicate_parent_asin": int(np.count_nonzero(in_cat & ~keep)),
                        "available": int(available[c]), "kept": int(len(picked[c])),
                        **{s: int(np.count_nonzero(in_cat & (code == i))) for i, s in enumerate(SPLITS)}}
    for name, stats in cats.items():  # categories whose every row was filtered never reached the spill
        if name not in by_cat:
            by_cat[name] = {"rows_read": stats["rows_read"], **{r: stats[r] for r in RULES[:3]},
                            "duplicate_parent_asin": 0, "available": 0, "kept": 0, **dict.fromkeys(SPLITS, 0)}
    per_split = {}
    for i, s in enumerate(SPLITS):
        r = rating[code == i]
        hist = np.histogram(r, bins=HIST_EDGES)[0] if len(r) else np.zeros(len(HIST_EDGES) - 1, int)
        per_split[s] = {"rows": int(len(r)), "missing_rating_number": int(no_count[code == i].sum()),
                        "mean_rating": round(float(r.mean()), 4) if len(r) else None,
                        "rating_histogram": {f"{lo:.1f}-{hi:.1f}": int(h) for lo, hi, h
                                             in zip(HIST_EDGES, HIST_EDGES[1:], hist, strict=False)}}
    dropped = {r: sum(c[r] for c in cats.values()) for r in RULES[:3]}
    dropped["duplicate_parent_asin"] = int(len(dup))
    kept = int(len(sel))
    return {"dropped": dropped, "kept_after_filters": int(len(kept_idx)),
            "not_sampled": int(len(kept_idx)) - kept,
            "kept": kept, "per_split": per_split, "per_category": dict(sorted(by_cat.items())),
            "strata": {"count": int(np.count_nonzero(counts > options["rare_threshold"])) + bool(rare.any()),
                       "rare_bucket_items": int(np.count_nonzero(rare)),
                       "rare_ratings": [float(v) / 100 for v, k in zip(values, counts, strict=True)
                                        if k <= options["rare_threshold"]]},
            "duplicate_examples": {"duplicate_parent_asin": dup_examples} if dup_examples else {}}


def _dup_sources(pf: pq.ParquetFile, t: pa.Table, rows: np.ndarray) -> list[tuple[str, str, str]]:
    """(id, source of the duplicate, source of the first occurrence) for a few duplicate rows."""
    starts = np.concatenate([[0], np.cumsum([pf.metadata.row_group(g).num_rows
                                             for g in range(pf.num_row_groups)])]).tolist()

    def source(row: int) -> str:
        g = bisect_right(starts, row) - 1
        return pf.read_row_group(g, columns=["source"]).column(0)[row - starts[g]].as_py()

    out = []
    for row in rows.tolist():
        asin = t["parent_asin"][row].as_py()
        first = int(pc.index(t["parent_asin"], asin).as_py())
        out.append((asin, source(row), source(first)))
    return out


def _write_rows(pf: pq.ParquetFile, dest: Path, code: np.ndarray, progress: bool) -> None:
    """Stream the spill's selected rows, with their split, into the final Parquet file.

    Small read batches keep RSS low (the allocator holds on to big ones); kept rows are gathered into row
    groups of about `_BATCH` rows so readers do not pay for thousands of tiny row groups.
    """
    names = np.array(SPLITS, dtype=object)
    offset, pending, n_pending = 0, [], 0
    with pq.ParquetWriter(dest, SCHEMA, compression="zstd") as writer, \
            tqdm(total=len(code), unit="row", desc="prepare: writing", disable=not progress) as bar:
        for batch in pf.iter_batches(batch_size=8192, columns=_ROW_COLUMNS, use_threads=False):
            c = code[offset: offset + batch.num_rows]
            offset += batch.num_rows
            bar.update(batch.num_rows)
            mask = c >= 0
            if not mask.any():
                continue
            rows = pa.Table.from_batches([batch]).filter(pa.array(mask))
            pending.append(rows.add_column(SCHEMA.get_field_index("split"), SCHEMA.field("split"),
                                           pa.array(names[c[mask]], type=pa.string())))
            n_pending += rows.num_rows
            if n_pending >= _BATCH:
                writer.write_table(pa.concat_tables(pending))
                pending, n_pending = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending))


def print_summary(summary: dict[str, Any], console: Any = None) -> None:
    """Render a prepare summary as rich tables: rows through each rule, per category, per split."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: rich would assume 80 columns and elide the numbers
            console.width = max(console.width, 132)
    compact = {"box": box.SIMPLE_HEAD, "pad_edge": False, "collapse_padding": True}
    flow = Table(title="prepare: rows", show_header=False)
    flow.add_row("rows read", f"{summary['rows_read']:,}")
    for kind, n in summary["bad_input"]["by_kind"].items():
        flow.add_row(f"bad input: {kind}", f"-{n:,}")
    for rule, n in summary["dropped"].items():
        flow.add_row(f"dropped: {rule}", f"-{n:,}")
    flow.add_row("not sampled", f"-{summary['not_sampled']:,}")
    flow.add_row("kept", f"{summary['kept']:,}", style="bold")
    console.print(flow)

    heads = {"rows_read": "read", "require_fields": "-fields", "min_text_chars": "-text",
             "require_image": "-image", "duplicate_parent_asin": "-dup", "available": "avail", "kept": "kept",
             **{s: s for s in SPLITS}}
    per_cat = Table(title="per category (read: valid rows; -rule: dropped by it)", **compact)
    per_cat.add_column("category", no_wrap=True, overflow="ellipsis", max_width=24)
    for head in heads.values():
        per_cat.add_column(head, justify="right", no_wrap=True)
    for name, row in summary["per_category"].items():
        per_cat.add_row(name or "(none)", *(f"{row[c]:,}" for c in heads))
    console.print(per_cat)

    per_split = Table(title="per split: rating histogram, bins [x, x+0.5)", **compact)
    for head in ("split", "rows", "mean"):
        per_split.add_column(head, justify="left" if head == "split" else "right", no_wrap=True)
    bins = list(summary["per_split"]["train"]["rating_histogram"])
    for b in bins:
        per_split.add_column(b.split("-")[0], justify="right", no_wrap=True)
    for name, row in summary["per_split"].items():
        mean = "-" if row["mean_rating"] is None else f"{row['mean_rating']:.3f}"
        per_split.add_row(name, f"{row['rows']:,}", mean, *(f"{row['rating_histogram'][b]:,}" for b in bins))
    console.print(per_split)
    missing = sum(row.get("missing_rating_number", 0) for row in summary["per_split"].values())
    if missing:
        console.print(f"kept {missing:,} rows without rating_number "
                      "(their loss weight: train.missing_rating_number)")
    for kind, examples in summary["bad_input"]["examples"].items():
        console.print(f"[yellow]{kind}[/yellow] e.g. " + escape("; ".join(examples[:2])), soft_wrap=True,
                      highlight=False)
