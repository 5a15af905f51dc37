"""Multi-label targets from the Amazon `categories` field: a counted label vocabulary and multi-hot encoding.

Why a vocabulary with a minimum frequency: `categories` is a free-form path per item (e.g. ["Clothing, Shoes
& Jewelry", "Women", "Handbags"]) with a long tail of labels seen once or twice, which no classifier can
learn and which make mAP noisy. Labels are counted once per item over the items given (the train split, so
nothing is learnt from validation or test), kept when seen in at least `min_freq` items (optionally only the
`max_labels` most frequent), and ordered by count (then name) so the vocabulary is deterministic. Labels
outside it are counted as dropped, never silently: `LabelVocab.dropped` says how many item-labels were lost.

`read_categories` streams meta files (JSON Lines, plain or gzip, and parquet) for `parent_asin` and
`categories`; a row whose `categories` is not a list of strings is counted in the `InputLog` with its
`file:line` (`strict`: a one-line DataError), like every other bad row.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effiminivlm.data.meta import BadRow, InputLog
from effiminivlm.errors import DataError
from effiminivlm.files import atomic_write_text

VOCAB_KIND = "effiminivlm_label_vocab"


def clean_labels(categories: Sequence[str]) -> list[str]:
    """Stripped, non-empty, de-duplicated labels in their original order."""
    out: list[str] = []
    for c in categories:
        c = " ".join(c.split())
        if c and c not in out:
            out.append(c)
    return out


@dataclass
class LabelVocab:
    """The kept labels (index = position), their item counts, and what the minimum frequency dropped."""

    labels: list[str]
    counts: dict[str, int]
    min_freq: int
    n_items: int
    items_without_labels: int = 0
    dropped_labels: int = 0  # distinct labels below min_freq (or beyond max_labels)
    dropped: int = 0  # item-label pairs those labels had
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {label: i for i, label in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, categories: Sequence[str]) -> np.ndarray:
        """Multi-hot float32 [num_labels] of one item's categories (labels outside the vocabulary ignored)."""
        out = np.zeros(len(self.labels), dtype=np.float32)
        for label in clean_labels(categories):
            i = self.index.get(label)
            if i is not None:
                out[i] = 1.0
        return out

    def encode_many(self, items: Iterable[Sequence[str]]) -> np.ndarray:
        """Multi-hot float32 [N, num_labels]."""
        rows = [self.encode(c) for c in items]
        return np.stack(rows) if rows else np.zeros((0, len(self.labels)), dtype=np.float32)

    def decode(self, row: Sequence[float], threshold: float = 0.5) -> list[str]:
        """The labels whose value reaches `threshold` (a multi-hot row or per-label probabilities)."""
        return [label for label, v in zip(self.labels, row, strict=True) if v >= threshold]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": VOCAB_KIND, "labels": self.labels, "counts": self.counts, "min_freq": self.min_freq,
                "n_items": self.n_items, "items_without_labels": self.items_without_labels,
                "dropped_labels": self.dropped_labels, "dropped": self.dropped}

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LabelVocab:
        """A vocabulary written by `save`; anything else fails naming the file."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{p}: no such label vocabulary file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: not a label vocabulary (invalid JSON: {e})") from None
        if not isinstance(data, dict) or data.get("kind") != VOCAB_KIND:
            raise DataError(f"{p}: not a label vocabulary (kind is not {VOCAB_KIND!r})")
        labels, counts = data.get("labels"), data.get("counts")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or \
                len(set(labels)) != len(labels) or not isinstance(counts, dict):
            raise DataError(f"{p}: `labels` must be a list of distinct strings and `counts` a mapping")
        return cls(labels, {str(k): int(v) for k, v in counts.items()}, int(data.get("min_freq", 1)),
                   int(data.get("n_items", 0)), int(data.get("items_without_labels", 0)),
                   int(data.get("dropped_labels", 0)), int(data.get("dropped", 0)))


def build_label_vocab(items: Iterable[Sequence[str]], min_freq: int = 5, max_labels: int | None = None
                      ) -> LabelVocab:
    """Count each label once per item; keep those in >= `min_freq` items (at most `max_labels`, the most
    frequent), ordered by count descending then name."""
    if min_freq < 1:
        raise DataError(f"min_freq must be >= 1, got {min_freq}")
    if max_labels is not None and max_labels < 1:
        raise DataError(f"max_labels must be >= 1, got {max_labels}")
    counts: Counter[str] = Counter()
    n_items = empty = 0
    for categories in items:
        labels = clean_labels(categories)
        n_items += 1
        empty += not labels
        counts.update(labels)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [label for label, n in ranked if n >= min_freq][:max_labels]
    kept_set = set(kept)
    lost = [n for label, n in counts.items() if label not in kept_set]
    return LabelVocab(kept, {label: counts[label] for label in kept}, min_freq, n_items, empty, len(lost),
                      sum(lost))


def _check_categories(obj: Any, source: str, log: InputLog) -> tuple[str, list[str]] | None:
    """(parent_asin, categories) of one raw row, or None after counting why it is unusable."""
    if not isinstance(obj, dict):
        log.record("not_an_object", source, "not a JSON object")
        return None
    asin = obj.get("parent_asin")
    if not isinstance(asin, str) or not asin.strip():
        log.record("missing_parent_asin", source, "no parent_asin")
        return None
    cats = obj.get("categories")
    if cats is None:
        cats = []
    if not isinstance(cats, list | tuple) or not all(isinstance(c, str) for c in cats):
        log.record("bad_categories", source, f"categories must be a list of strings, got {str(cats)[:60]}")
        return None
    return asin.strip(), list(cats)


def read_categories(paths: Sequence[str | Path], log: InputLog | None = None) -> dict[str, list[str]]:
    """parent_asin -> categories of every row of the meta files (first occurrence wins; later duplicates
    are counted as `duplicate_parent_asin`). Bad rows go to `log` with their file:line."""
    import pyarrow.parquet as pq

    from effiminivlm.data.readers import jsonl_rows  # the readers' streaming JSONL (gzip, BOM, errors)

    log = log or InputLog()
    out: dict[str, list[str]] = {}
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            log.record("unreadable_file", str(path), "no such file")
            continue
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic == b"PAR1":
            table = pq.read_table(path, columns=["parent_asin", "categories"])
            rows = ((f"{path}:{i + 1}", r) for i, r in enumerate(table.to_pylist()))
        else:
            info: dict[str, Any] = {"format": "jsonl.gz" if magic[:2] == b"\x1f\x8b" else "jsonl"}
            rows = jsonl_rows(path, info, log, None)
        for source, obj in rows:
            if isinstance(obj, BadRow):  # a line the reader could not parse as JSON
                log.record(obj.kind, source, str(obj))
                continue
            got = _check_categories(obj, source, log)
            if got is None:
                continue
            asin, cats = got
            if asin in out:
                log.record("duplicate_parent_asin", source, f"parent_asin {asin} seen before; kept the first")
                continue
            out[asin] = cats
    return out



def attach_categories(table: Any, data_dir: str | Path, log: InputLog | None = None) -> Any:
    """`table` (prepared rows) with a `categories` list<string> column read from the meta files its
    `prepare` run read (summary.json `inputs`).

    Why from the sources and not a prepared column: the prepared schema is the rating task's, and only a
    multi-label model needs the category paths, so they are joined on `parent_asin` when such a model asks
    (`RatingModel.data_columns`). A row whose item is in none of the files gets no labels and is counted in
    `log` as `no_categories` with its parent_asin."""
    import pyarrow as pa

    if "categories" in table.column_names:
        return table
    summary = Path(data_dir) / "summary.json"
    try:
        inputs = [f["path"] for f in json.loads(summary.read_text(encoding="utf-8"))["inputs"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{summary}: cannot read the meta files it lists under `inputs` ({e})") from None
    missing = [p for p in inputs if not Path(p).is_file()]
    if missing:
        raise DataError(f"{summary}: meta file {missing[0]} (listed under inputs) is gone; the multi-label "
                        "task reads `categories` from it")
    log = log or InputLog()
    cats = read_categories(inputs, log)
    column = []
    for asin in table.column("parent_asin").to_pylist():
        got = cats.get(asin)
        if got is None:
            log.record("no_categories", f"{summary}: parent_asin {asin}", "not in any listed meta file")
        column.append(clean_labels(got or []))
    return table.append_column("categories", pa.array(column, type=pa.list_(pa.string())))
