"""Rating-regression metrics: PLCC, SRCC, RMSE, MAE, Huber, overall, per category and for well-rated items.

Why these rules: a benchmark number has to be honest about when it is undefined. A correlation of a
constant prediction, or of fewer than two items, does not exist, so PLCC/SRCC are NaN there (written as
``null`` in JSON), never a silent 0 that would look like a real, bad score. A NaN or inf prediction means
the model or the pipeline broke; averaging it away would hide that, so it raises a ``ValueError`` that says
how many there are. Error metrics of an empty set are NaN too.

`compute_metrics` returns the dict every later stage reads::

    {"overall": {"n", "plcc", "plcc_plus", "srcc", "rmse", "mae", "huber"},
     "per_category": {category: {...same keys...}},        # only when categories are given
     "rating_number_ge_10": {...same keys...}}             # only when rating numbers are given

The efficiency protocol's CES reads ``metrics["overall"]["plcc"]``; `plcc_plus` is defined here, below the
protocol, so evaluation never imports a higher stage.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from effiminivlm.errors import DataError


def plcc_plus(plcc: float) -> float:
    """max(0, PLCC), the LoViF protocol's PLCC+; an undefined PLCC (NaN: constant predictions) gives 0, as
    the challenge's reference scorer does (the PLCC itself stays NaN, so the report still says why)."""
    plcc = float(plcc)
    return 0.0 if math.isnan(plcc) else max(0.0, plcc)


#: Keys of one metrics group, in reporting order.
METRIC_KEYS: tuple[str, ...] = ("n", "plcc", "plcc_plus", "srcc", "rmse", "mae", "huber")


def _as_vector(values: Any, name: str) -> np.ndarray:
    """A 1-D float64 array, or ValueError naming the argument (shape errors surface early, not as NaN)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} must be numbers: {e}") from None
    if arr.ndim == 2 and 1 in arr.shape:  # a (N, 1) model output is a common, harmless shape
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array, got shape {arr.shape}")
    return arr


def check_predictions(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate predictions and targets together: same length, all finite (counted when not)."""
    p = _as_vector(pred, "pred")
    t = _as_vector(true, "true")
    if p.shape != t.shape:
        raise DataError(f"pred and true differ in length: {p.shape[0]} vs {t.shape[0]}")
    for arr, name in ((p, "predictions"), (t, "targets")):
        bad = ~np.isfinite(arr)
        if bad.any():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(bad.sum()) - n_nan
            raise DataError(f"{int(bad.sum())} of {arr.size} {name} are not finite "
                             f"({n_nan} NaN, {n_inf} inf); fix the model or the data before scoring")
    return p, t


# The underscored functions take arrays already checked by `check_predictions`, so `metric_group` validates
# once per group instead of once per metric.

def _undefined_correlation(p: np.ndarray, t: np.ndarray) -> bool:
    """True when a correlation does not exist: fewer than two items or either side constant."""
    return p.size < 2 or bool(np.ptp(p) == 0.0) or bool(np.ptp(t) == 0.0)


def _plcc(p: np.ndarray, t: np.ndarray) -> float:
    return math.nan if _undefined_correlation(p, t) else float(stats.pearsonr(p, t).statistic)


def _srcc(p: np.ndarray, t: np.ndarray) -> float:
    return math.nan if _undefined_correlation(p, t) else float(stats.spearmanr(p, t).statistic)


def _rmse(p: np.ndarray, t: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p - t) ** 2))) if p.size else math.nan


def _mae(p: np.ndarray, t: np.ndarray) -> float:
    return float(np.mean(np.abs(p - t))) if p.size else math.nan


def _huber(p: np.ndarray, t: np.ndarray, delta: float = 1.0) -> float:
    if not delta > 0:
        raise DataError(f"huber delta must be > 0, got {delta}")
    if not p.size:
        return math.nan
    err = np.abs(p - t)
    return float(np.mean(np.where(err <= delta, 0.5 * err**2, delta * (err - 0.5 * delta))))


def plcc(pred: Any, true: Any) -> float:
    """Pearson linear correlation; NaN when undefined (< 2 items or a constant side)."""
    return _plcc(*check_predictions(pred, true))


def plcc_change_interval(pred: Any, base: Any, true: Any, resamples: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap interval of PLCC(pred, true) - PLCC(base, true): the items resampled with
    replacement `resamples` times, both predictions scored on the same resample.

    Why: two nearly equal predictors (a fast path and its exact twin) differ in PLCC by an amount that other
    items would change; the interval says how much, so a PLCC change is read against its own noise rather
    than taken as exact. Seeded: the same inputs give the same interval. NaN when fewer than 3 items, or
    when some resample has a constant side (few, heavily tied items: too little to bootstrap). The
    resampling is scipy's (`stats.bootstrap`, paired, percentile method)."""
    p, t = check_predictions(pred, true)
    b, _ = check_predictions(base, true)
    if _undefined_correlation(p, t) or _undefined_correlation(b, t) or len(t) < 3:
        return math.nan, math.nan

    def change(p: np.ndarray, b: np.ndarray, t: np.ndarray, axis: int = -1) -> np.ndarray:
        return stats.pearsonr(p, t, axis=axis).statistic - stats.pearsonr(b, t, axis=axis).statistic

    with warnings.catch_warnings():  # a constant-side resample warns and makes the interval NaN
        warnings.simplefilter("ignore")
        ci = stats.bootstrap((p, b, t), change, paired=True, vectorized=True, n_resamples=resamples,
                             confidence_level=level, method="percentile",
                             random_state=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def srcc(pred: Any, true: Any) -> float:
    """Spearman rank correlation (ties get average ranks); NaN when undefined."""
    return _srcc(*check_predictions(pred, true))


def rmse(pred: Any, true: Any) -> float:
    """Root mean squared error; NaN for no items."""
    return _rmse(*check_predictions(pred, true))


def mae(pred: Any, true: Any) -> float:
    """Mean absolute error; NaN for no items."""
    return _mae(*check_predictions(pred, true))


def huber(pred: Any, true: Any, delta: float = 1.0) -> float:
    """Unweighted mean Huber loss (0.5 e^2 inside |e| <= delta, linear outside), as torch's HuberLoss.

    Unweighted on purpose: training weights items by rating count, but an evaluation number must not
    depend on that choice.
    """
    return _huber(*check_predictions(pred, true), delta=delta)


def metric_group(pred: Any, true: Any) -> dict[str, float | int]:
    """All metrics for one set of items, keyed as `METRIC_KEYS`. PLCC+ = max(0, PLCC), NaN stays NaN."""
    p, t = check_predictions(pred, true)
    r = _plcc(p, t)
    return {"n": int(p.size), "plcc": r, "plcc_plus": plcc_plus(r), "srcc": _srcc(p, t),
            "rmse": _rmse(p, t), "mae": _mae(p, t), "huber": _huber(p, t)}


def rating_number_key(min_rating_number: int) -> str:
    """The result key of the well-rated subset, e.g. ``rating_number_ge_10``."""
    return f"rating_number_ge_{int(min_rating_number)}"


def _category_labels(categories: Any, n: int) -> np.ndarray:
    """Categories as a string array of length `n`; a missing (None) category is an error, not a group."""
    cats = np.asarray(categories, dtype=object).reshape(-1)
    if cats.shape[0] != n:
        raise DataError(f"categories has {cats.shape[0]} items, predictions {n}")
    missing = int(sum(c is None for c in cats))
    if missing:
        raise DataError(f"{missing} of {n} categories are missing (None); every item needs a category")
    return cats.astype(str)


def compute_metrics(
    pred: Any,
    true: Any,
    categories: Sequence[str] | np.ndarray | None = None,
    rating_numbers: Sequence[int] | np.ndarray | None = None,
    min_rating_number: int = 10,
) -> dict[str, Any]:
    """Metrics overall, per category and on items with at least `min_rating_number` ratings.

    Why the subsets: an average of two ratings is mostly noise, so the well-rated subset shows how the
    model does where the target is trustworthy; per-category rows show whether one category carries the
    overall number. Categories are listed by item count (largest first), then name. Groups absent from the
    input (no `categories`, no `rating_numbers`) are left out of the result rather than faked; a subset
    with no items is kept, with n = 0 and NaN metrics, so a reader sees it was asked for.
    """
    p, t = check_predictions(pred, true)
    out: dict[str, Any] = {"overall": metric_group(p, t)}
    if categories is not None:
        names, inverse, counts = np.unique(_category_labels(categories, p.size), return_inverse=True,
                                           return_counts=True)
        order = sorted(range(len(names)), key=lambda i: (-int(counts[i]), str(names[i])))
        out["per_category"] = {str(names[i]): metric_group(p[inverse == i], t[inverse == i]) for i in order}
    if rating_numbers is not None:
        if isinstance(min_rating_number, bool) or int(min_rating_number) != min_rating_number:
            raise DataError(f"min_rating_number must be an integer, got {min_rating_number!r}")
        rn = _as_vector(rating_numbers, "rating_numbers")
        if rn.shape != p.shape:
            raise DataError(f"rating_numbers has {rn.shape[0]} items, predictions {p.shape[0]}")
        if np.isnan(rn).any():
            raise DataError(f"{int(np.isnan(rn).sum())} of {rn.size} rating_numbers are NaN")
        keep = rn >= min_rating_number
        out[rating_number_key(min_rating_number)] = metric_group(p[keep], t[keep])
    return out
