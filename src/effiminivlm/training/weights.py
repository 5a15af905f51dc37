"""Loss weights of training rows whose `rating_number` is unknown (`train.missing_rating_number`).

Why a policy: the paper weights each item by w = min(log(1 + r) / mu, cap), r its rating count. Real dumps
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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from effiminivlm.config import MISSING_RATING_NUMBER
from effiminivlm.data.dataset import rating_weight_mu
from effiminivlm.errors import ConfigError, DataError

__all__ = ["fill_missing_rating_number"]


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
