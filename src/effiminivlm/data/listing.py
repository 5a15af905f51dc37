"""A listing's cold-start fields (known the day it goes live) as numbers, and the store's rating prior.

Why: on a small catalog the words of a title and a sentence embedding say little about quality; what a shop
knows about a new listing does: its price, how many images / videos / feature bullets it has, how long its
description is, how many `details` it fills in, the year it first became available, and above all its store
(brand, publisher), whose other listings' ratings are known. Nothing here is derived from reviews:
`rating_number` and the item's own rating are never inputs.

`prepare` keeps what the text columns drop in the `listing` column (`listing_json`, a JSON object); images
and description come from their own columns. A row without it (a LoViF `input.csv`, an old prepared dataset)
scores with the training means of the fields it lacks (a counted fallback: `ListingEncoder.transform`).

The store becomes a smoothed target encoding, fit on the train split only: (sum of the ratings of the
store's train items + m x prior) / (their count + m). A train item's own rating never enters its own
encoding: train rows get out-of-fold values (folds by a hash of parent_asin), and a store seen only outside
train gets the prior.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LISTING_FEATURES", "LISTING_KEYS", "ListingEncoder", "listing_json", "parse_listing"]
# The raw metadata keys `listing_json` reads (a product dict with none of them has no listing fields).
LISTING_KEYS = ("store", "price", "videos", "details")

# The columns of the listing block, in order.
LISTING_FEATURES = ("log_price", "price_missing", "n_images", "n_videos", "n_features",
                    "log_description_chars", "n_details", "year", "year_missing", "store_prior",
                    "store_missing")
_YEAR = re.compile(r"\b(19[5-9]\d|20\d\d)\b")
_DATE_KEY = "Date First Available"
_YEAR_FILL = 2015.0  # a listing without a year: a typical year (the `year_missing` flag carries the rest)


def _count(value: Any) -> int:
    """Entries of a JSON list; of a Hugging Face parquet struct of lists ({url: [...], ...}), the longest."""
    if isinstance(value, dict):
        return max((len(v) for v in value.values() if isinstance(v, list)), default=0)
    return len(value) if isinstance(value, list) else 0


def _price(value: Any) -> float | None:
    """A positive finite price from a number or a string such as "$12.99"; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        found = re.search(r"\d+(?:\.\d+)?", value.replace(",", ""))
        value = float(found.group()) if found else None
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def listing_json(obj: dict[str, Any]) -> str:
    """The `listing` column of one raw metadata object: store, price and the counts the text columns lose.
    Lenient by design: a malformed optional field becomes null / 0, it never drops the row."""
    details = obj.get("details")
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except ValueError:
            details = {}
    details = details if isinstance(details, dict) else {}
    year = _YEAR.search(str(details.get(_DATE_KEY) or ""))
    store = obj.get("store")
    return json.dumps({
        "store": store.strip() or None if isinstance(store, str) else None,
        "price": _price(obj.get("price")),
        "n_videos": _count(obj.get("videos")), "n_features": _count(obj.get("features")),
        "n_details": len(details), "year": int(year.group()) if year else None,
    }, separators=(",", ":"), ensure_ascii=False)


def parse_listing(text: str | None) -> dict[str, Any] | None:
    """The `listing` column's value as a dict; None when absent or unreadable (scored as a fallback)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _store_key(listing: dict[str, Any] | None) -> str | None:
    store = (listing or {}).get("store")
    return store.strip().casefold() or None if isinstance(store, str) else None


def _fold(item_id: str, k: int) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big") % k


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class ListingEncoder:
    """Listing fields -> the [n, len(LISTING_FEATURES)] block; fit on train rows, saved as plain data."""

    smoothing: float = 10.0  # m: pseudo-items at the prior in a store's smoothed mean
    folds: int = 5  # out-of-fold groups of the train rows' own store encoding
    prior: float = 4.0
    stores: dict[str, list[float]] = field(default_factory=dict)  # store key -> [sum of ratings, count]
    fill: list[float] = field(default_factory=list)  # train means: a row without `listing` takes them

    def fit(self, listings: Sequence[dict[str, Any] | None], y: np.ndarray) -> ListingEncoder:
        """Store sums over the train rows, the prior (their mean rating) and the fallback means."""
        self.prior = float(np.mean(y))
        self.stores = {}
        for listing, target in zip(listings, y, strict=True):
            key = _store_key(listing)
            if key is not None:
                entry = self.stores.setdefault(key, [0.0, 0.0])
                entry[0] += float(target)
                entry[1] += 1.0
        self.fill = []
        return self

    def encode_store(self, key: str | None, minus: tuple[float, float] = (0.0, 0.0)) -> float:
        """The smoothed mean of the store's train ratings, `minus` a (sum, count) left out; the prior for an
        unknown store or none."""
        total, n = self.stores.get(key, (0.0, 0.0)) if key is not None else (0.0, 0.0)
        total, n = total - minus[0], n - minus[1]
        return (total + self.smoothing * self.prior) / (n + self.smoothing) if n > 0 else self.prior

    def _oof_minus(self, listings: Sequence[dict[str, Any] | None], y: np.ndarray,
                   item_ids: Sequence[str]) -> list[tuple[float, float]]:
        """Per train row, the (sum, count) of its own fold's rows of its store: left out of its encoding."""
        groups: dict[tuple[str, int], list[float]] = {}
        keys = [_store_key(x) for x in listings]
        folds = [_fold(i, self.folds) for i in item_ids]
        for key, f, target in zip(keys, folds, y, strict=True):
            if key is not None:
                g = groups.setdefault((key, f), [0.0, 0.0])
                g[0] += float(target)
                g[1] += 1.0
        return [tuple(groups[(k, f)]) if k is not None else (0.0, 0.0)  # type: ignore[misc]
                for k, f in zip(keys, folds, strict=True)]

    def transform(self, listings: Sequence[dict[str, Any] | None], n_images: Sequence[int],
                  descriptions: Sequence[str], *, y: np.ndarray | None = None,
                  item_ids: Sequence[str] | None = None) -> tuple[np.ndarray, int]:
        """(block [n, k] float64, rows without listing fields). With `y` and `item_ids` (the train rows the
        encoder was fit on) the store column is out-of-fold, so no row sees its own rating."""
        minus = self._oof_minus(listings, y, item_ids) if y is not None and item_ids is not None else None
        out = np.empty((len(listings), len(LISTING_FEATURES)))
        missing = 0
        for i, listing in enumerate(listings):
            known = listing is not None
            missing += not known
            lst = listing or {}
            price, year, key = _num(lst.get("price")), _num(lst.get("year")), _store_key(listing)
            store = self.encode_store(key, minus[i] if minus is not None else (0.0, 0.0))
            out[i] = [math.log1p(price) if price else 0.0, float(price is None), float(n_images[i]),
                      _num(lst.get("n_videos")) or 0.0, _num(lst.get("n_features")) or 0.0,
                      math.log1p(len(descriptions[i] or "")), _num(lst.get("n_details")) or 0.0,
                      year or _YEAR_FILL, float(year is None), store, float(key is None)]
            if not known and self.fill:  # no listing fields: the train means of those it lacks
                for j, name in enumerate(LISTING_FEATURES):
                    if name not in ("n_images", "log_description_chars"):
                        out[i, j] = self.fill[j]
        return out, missing

    def set_fill(self, block: np.ndarray) -> None:
        """Remember the train block's column means (after `transform` of the train rows)."""
        self.fill = [float(v) for v in block.mean(axis=0)]

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(LISTING_FEATURES), "smoothing": self.smoothing, "folds": self.folds,
                "prior": self.prior, "stores": self.stores, "fill": self.fill}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ListingEncoder:
        if list(data.get("features", [])) != list(LISTING_FEATURES):
            raise ValueError(f"listing features {data.get('features')} differ from this version's "
                             f"{list(LISTING_FEATURES)}")
        return cls(smoothing=float(data["smoothing"]), folds=int(data["folds"]), prior=float(data["prior"]),
                   stores={str(k): [float(a), float(b)] for k, (a, b) in data["stores"].items()},
                   fill=[float(v) for v in data["fill"]])
