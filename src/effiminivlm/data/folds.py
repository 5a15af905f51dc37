"""K-fold assignment of a prepared dataset: seeded, by hashed `parent_asin`, stratified like prepare's split.

Why: on a few thousand items one 10% test split is noise (98 items give a PLCC interval of +-0.2), so small
catalogs are judged over K folds. The assignment must be the same for every recipe and baseline compared on
the data (`train --kfold`, `scaling`, `benchmarks/baseline_tfidf.py --same-folds`), whatever the row order:
hence a keyed hash of the item id rather than a shuffled RNG, and the rating strata of `prepare` (rating
values with at most `rare_threshold` items share one bucket) so every fold sees the rating distribution.

Within each stratum items are ranked by hash and dealt to folds 0..K-1 in turn (each stratum starting where
the previous one stopped, so fold sizes differ by at most one). For fold f, the test rows are fold f; the
other rows are cut train:val 8:1 (the prepared split's ratio), again per stratum by a second hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from effiminivlm.data.prepare import read_prepared, split_counts
from effiminivlm.data.schema import SCHEMA
from effiminivlm.errors import DataError

__all__ = ["assign_folds", "fold_splits", "nested_order", "write_fold_dataset", "write_subset_dataset"]


def _hashes(ids: list[str], seed: int, salt: str) -> np.ndarray:
    key = f"effiminivlm-{salt}:{seed}".encode()[:64]
    return np.array([int.from_bytes(hashlib.blake2b(a.encode(), digest_size=8, key=key).digest(), "little")
                     for a in ids], dtype=np.uint64)


def _strata(rating: np.ndarray, rare_threshold: int) -> np.ndarray:
    """prepare's strata: the rating value (x100), or -1 for values held by at most `rare_threshold` items."""
    key = np.rint(np.asarray(rating, dtype=np.float64) * 100).astype(np.int64)
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return np.where(counts[inverse] <= rare_threshold, -1, key)


def assign_folds(ids: list[str], rating: np.ndarray, k: int, seed: int = 0, rare_threshold: int = 50
                 ) -> np.ndarray:
    """Fold index (0..k-1) of every row; ids must be unique. Same ids, ratings and seed: same folds."""
    if k < 2:
        raise DataError(f"--kfold must be at least 2, got {k}")
    if len(ids) < k:
        raise DataError(f"{len(ids)} items cannot be cut into {k} folds")
    stratum = _strata(rating, rare_threshold)
    order = np.lexsort((_hashes(ids, seed, "fold"), stratum))
    fold = np.empty(len(ids), dtype=np.int64)
    fold[order] = np.arange(len(ids)) % k  # consecutive strata continue the round robin: balanced sizes
    return fold


def fold_splits(ids: list[str], rating: np.ndarray, fold: np.ndarray, f: int, seed: int = 0,
                rare_threshold: int = 50) -> np.ndarray:
    """The split ("train" / "val" / "test") of every row for fold `f`: test = fold f, the rest 8:1."""
    out = np.full(len(ids), "test", dtype=object)
    rest = np.flatnonzero(fold != f)
    stratum = _strata(rating, rare_threshold)[rest]
    order = rest[np.lexsort((_hashes([ids[i] for i in rest], seed, f"fold-val-{f}"), stratum))]
    sorted_strata = _strata(rating, rare_threshold)[order]
    bounds = np.flatnonzero(np.diff(sorted_strata)) + 1
    for group in np.split(order, bounds):
        tr, _ = split_counts(len(group), (8 / 9, 1 / 9))
        out[group[:tr]] = "train"
        out[group[tr:]] = "val"
    return out


def write_fold_dataset(data_dir: str | os.PathLike[str], out: str | os.PathLike[str], k: int, f: int,
                       seed: int = 0) -> dict[str, Any]:
    """Write fold `f` of `data_dir` as a prepared dataset at `out` (every row, `split` reassigned); returns
    its counts. The source's summary.json is carried (image roots: images resolve as in the source)."""
    src = Path(data_dir)
    table = read_prepared(src)
    summary = json.loads((src / "summary.json").read_text())
    rare = int(summary.get("options", {}).get("rare_threshold", 50))
    ids = table.column("parent_asin").to_pylist()
    if len(set(ids)) != len(ids):
        raise DataError(f"{src}: parent_asin is not unique; re-run `effiminivlm prepare`")
    rating = table.column("average_rating").to_numpy(zero_copy_only=False)
    split = fold_splits(ids, rating, assign_folds(ids, rating, k, seed, rare), f, seed, rare)
    table = table.set_column(table.schema.get_field_index("split"), SCHEMA.field("split"),
                             pa.array(split.tolist(), type=pa.string()))
    counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    summary["kfold"] = {"source": str(src), "k": k, "fold": f, "seed": seed, "rows": counts}
    _write(table, summary, Path(out))
    return counts


def nested_order(ids: list[str], seed: int) -> np.ndarray:
    """A seeded order of `ids` (keyed hash): its prefixes are nested subsets, whatever the row order."""
    return np.argsort(_hashes(ids, seed, "subset"), kind="stable")


def write_subset_dataset(data_dir: str | os.PathLike[str], out: str | os.PathLike[str], n_train: int,
                         seed: int = 0) -> dict[str, Any]:
    """`data_dir` with its train split cut to the first `n_train` items of `nested_order` (val and test
    unchanged), written as a prepared dataset at `out`; returns its split counts."""
    src = Path(data_dir)
    table = read_prepared(src)
    summary = json.loads((src / "summary.json").read_text())
    is_train = np.asarray(table.column("split").to_pylist(), dtype=object) == "train"
    train_idx = np.flatnonzero(is_train)
    ids = [table.column("parent_asin")[int(i)].as_py() for i in train_idx]
    chosen = train_idx[nested_order(ids, seed)[:n_train]]
    keep = ~is_train
    keep[chosen] = True
    table = table.filter(pa.array(keep))
    split = np.asarray(table.column("split").to_pylist(), dtype=object)
    counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    summary["subset"] = {"source": str(src), "n_train": n_train, "seed": seed, "rows": counts}
    _write(table, summary, Path(out))
    return counts


def _write(table: pa.Table, summary: dict[str, Any], dest: Path) -> None:
    """data.parquet (atomically renamed) then summary.json: a folder without summary.json is unfinished."""
    dest.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.select(SCHEMA.names).cast(SCHEMA), dest / ".data.parquet.tmp")
    os.replace(dest / ".data.parquet.tmp", dest / "data.parquet")
    (dest / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
