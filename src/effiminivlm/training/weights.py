"""Per-item sample weights of the training loss (`train.sample_weights`), computed once over the TRAIN split.

    rating_count      the paper's w_i = min(log(1 + r_i) / mu, cap), mu = mean log(1 + r) over the train set:
                      an item rated by thousands has a trustworthy average, one rated twice is mostly noise
    inverse_bin_freq  PinCO's w_i = n / (K_used x n_bin(i)) over `weight_bins` equal-width rating bins of
                      [1, 5], capped: rare ratings (the extremes) count as much as the crowded 4.x band;
                      the weights average 1 over the split before the cap
    none              w_i = 1

The weights become the `sample_weight` column the dataset hands to the loss; rows that arrive with their own
weight (pseudo-labels: --pseudo-weight x confidence) keep it. Validation is always unweighted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from effiminivlm.data.dataset import rating_weight_mu

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
