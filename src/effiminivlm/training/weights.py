"""Per-item sample weights of the training loss (`train.sample_weights`), computed once over the TRAIN split.

    rating_count      the paper's w_i = min(log(1 + r_i) / mu, cap), mu = mean log(1 + r) over the train set:
                      an item rated by thousands has a trustworthy average, one rated twice is mostly noise
    inverse_bin_freq  PinCO's w_i = n / (K_used x n_bin(i)) over `weight_bins` equal-width rating bins of
                      [1, 5], capped: rare ratings (the extremes) count as much as the crowded 4.x band;
                      the weights average 1 over the split before the cap
    none              w_i = 1

The weights become the `sample_weight` column the dataset hands to the loss; rows that arrive with their own
weight (pseudo-labels: --pseudo-weight x confidence) keep it. Validation is always unweighted.

Rows whose `rating_number` is unknown (`train.missing_rating_number`) get a count first. Why a policy:
the paper weights each item by w = min(log(1 + r) / mu, cap), r its rating count. Real dumps
can carry the rating without the count (the 4,771-item titles sample has no count at all); the dataset
stores a null there. Treating null as 0 would give those rows weight 0, silently dropping them from the
loss, so the recipe chooses instead:

* ``median``: the weight of the median known count of the train split (a typical item);
* ``one``: weight 1, the weight of an item with the average log-count;
* ``drop``: leave those rows out of training (they still count in validation and evaluation).

mu is always the mean of log(1 + r) over the train rows whose count is KNOWN, so filling never shifts the
weights of the other items. With no known count at all, every weight is 1 (mu = 1, r = e - 1). What was
done is returned as a dict for the training log and train_summary.json.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from effiminivlm.config import MISSING_RATING_NUMBER
from effiminivlm.data.dataset import rating_weight_mu
from effiminivlm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from effiminivlm.config import TrainCfg

WEIGHT_COLUMN = "sample_weight"


def compute_sample_weights(scheme: str, rating_number: np.ndarray, rating: np.ndarray, *, cap: float = 5.0,
                           bins: int = 8, mu: float | None = None) -> np.ndarray:
    """float32 weights of the rows of one (train) split under `scheme`."""
    if scheme == "none":
        return np.ones(len(rating), dtype=np.float32)
    if scheme == "rating_count":
        mu = rating_weight_mu(rating_number) if mu is None else mu
        counts = np.clip(np.asarray(rating_number, dtype=np.float64), 0, None)
        return np.minimum(np.log1p(counts) / mu, cap).astype(np.float32)
    if scheme == "inverse_bin_freq":
        index = rating_bins(np.asarray(rating, dtype=np.float64), bins)
        freq = np.bincount(index, minlength=bins).astype(np.float64)
        used = int((freq > 0).sum())
        w = len(index) / (used * freq[index])
        return np.minimum(w, cap).astype(np.float32)
    raise ValueError(f"unknown sample weighting {scheme!r}")


def rating_bins(rating: np.ndarray, bins: int) -> np.ndarray:
    """Bin index in [0, bins) of each rating, equal-width bins over [1, 5] (5.0 falls in the last one)."""
    return np.clip(((rating - 1.0) / 4.0 * bins).astype(np.int64), 0, bins - 1)


def with_sample_weights(table: pa.Table, train_cfg: TrainCfg, mu: float) -> pa.Table:
    """`table` (the train split) with a float32 `sample_weight` column under the recipe's scheme."""
    w = compute_sample_weights(train_cfg.sample_weights, table.column("rating_number").to_numpy(),
                               table.column("average_rating").to_numpy(), cap=train_cfg.weight_cap,
                               bins=train_cfg.weight_bins, mu=mu)
    if WEIGHT_COLUMN in table.column_names:
        table = table.drop_columns([WEIGHT_COLUMN])
    return table.append_column(WEIGHT_COLUMN, pa.array(w, pa.float32()))


def fill_missing_rating_number(rows: pa.Table, policy: str) -> tuple[pa.Table, dict[str, Any]]:
    """(train rows with every `rating_number` set, as float64, or the unknown ones removed; the report).

    The report holds `policy`, `rows` (before), `missing`, `dropped`, `filled_with` (the count given to
    the filled rows), `weight` (their loss weight before the cap) and `mu`.
    """
    if policy not in MISSING_RATING_NUMBER:
        raise ConfigError(f"train.missing_rating_number must be one of {', '.join(MISSING_RATING_NUMBER)}, "
                          f"got {policy!r}")
    counts = rows.column("rating_number")
    missing = counts.is_null()
    n_missing = int(pc.sum(missing).as_py() or 0)
    known = pc.drop_null(counts).to_numpy(zero_copy_only=False).astype(np.float64)
    mu = rating_weight_mu(known) if len(known) else 1.0
    report: dict[str, Any] = {"policy": policy, "rows": rows.num_rows, "missing": n_missing, "dropped": 0,
                              "filled_with": None, "weight": None, "mu": mu}
    if n_missing == 0:
        return rows, report
    if policy == "drop":
        kept = rows.filter(pc.invert(missing))
        if kept.num_rows == 0:
            raise DataError(f"train.missing_rating_number=drop leaves no training row: all {n_missing} train "
                            "rows lack rating_number; use median or one")
        report["dropped"] = n_missing
        return kept, report
    # "one", or "median" without a single known count: the count whose weight is exactly 1
    fill = float(np.median(known)) if policy == "median" and len(known) else math.expm1(mu)
    report["filled_with"] = round(fill, 6)
    report["weight"] = round(math.log1p(max(fill, 0.0)) / mu, 6)
    filled = pc.fill_null(counts.cast(pa.float64()), fill)
    index = rows.schema.get_field_index("rating_number")
    return rows.set_column(index, pa.field("rating_number", pa.float64()), filled), report
