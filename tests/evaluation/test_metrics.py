"""Metrics against hand-computed values and scipy/torch references; undefined cases; subsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from effiminivlm.evaluation.metrics import (
    METRIC_KEYS,
    compute_metrics,
    huber,
    mae,
    metric_group,
    plcc,
    plcc_change_interval,
    rmse,
    srcc,
)

# pred/true with hand-derivable numbers: deviations from the mean 2.5 are (-1.5, -.5, .5, 1.5) and
# (-1.5, .5, -.5, 1.5), so the covariance sum is 4 and both variance sums are 5: PLCC = 0.8. Ranks equal the
# values, so SRCC = 0.8 too. Errors are (0, 1, 1, 0).
P4, T4 = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]


def test_hand_computed_values() -> None:
    assert plcc(P4, T4) == pytest.approx(0.8)
    assert srcc(P4, T4) == pytest.approx(0.8)
    assert rmse(P4, T4) == pytest.approx(math.sqrt(0.5))
    assert mae(P4, T4) == pytest.approx(0.5)
    assert huber(P4, T4) == pytest.approx(0.25)  # |e| = 1 sits on the quadratic side: 0.5 * 1^2, twice, / 4


def test_huber_linear_branch_and_delta() -> None:
    assert huber([4.0], [1.0]) == pytest.approx(2.5)  # 1 * (3 - 0.5)
    assert huber([1.5], [1.0]) == pytest.approx(0.125)  # 0.5 * 0.5^2
    assert huber([4.0], [1.0], delta=2.0) == pytest.approx(2.0 * (3.0 - 1.0))
    with pytest.raises(ValueError, match="delta"):
        huber(P4, T4, delta=0.0)


def test_against_scipy_and_torch_references() -> None:
    rng = np.random.default_rng(0)
    t = np.round(rng.uniform(1, 5, 300), 1)  # one decimal like real ratings: many ties for SRCC
    p = np.round(t + rng.normal(0, 0.9, 300), 1)
    assert plcc(p, t) == pytest.approx(stats.pearsonr(p, t).statistic, abs=1e-12)
    assert srcc(p, t) == pytest.approx(stats.spearmanr(p, t).statistic, abs=1e-12)
    assert rmse(p, t) == pytest.approx(float(np.sqrt(((p - t) ** 2).mean())), abs=1e-12)
    assert mae(p, t) == pytest.approx(float(np.abs(p - t).mean()), abs=1e-12)
    ref = torch.nn.functional.huber_loss(torch.from_numpy(p), torch.from_numpy(t), delta=1.0)
    assert huber(p, t) == pytest.approx(float(ref), abs=1e-12)
    assert 0.0 < plcc(p, t) < 1.0


def test_column_vector_predictions_are_accepted() -> None:
    assert plcc(np.array(P4).reshape(-1, 1), T4) == pytest.approx(0.8)


@pytest.mark.parametrize(("pred", "true"), [
    ([3.0, 3.0, 3.0], [1.0, 2.0, 5.0]),  # constant prediction
    ([1.0, 2.0, 5.0], [4.0, 4.0, 4.0]),  # constant target
    ([2.0], [3.0]),                      # a single item
    ([], []),                            # no items
])
def test_undefined_correlations_are_nan(pred: list[float], true: list[float]) -> None:
    assert math.isnan(plcc(pred, true))
    assert math.isnan(srcc(pred, true))
    g = metric_group(pred, true)
    assert math.isnan(g["plcc"]) and g["plcc_plus"] == 0.0  # PLCC+ as the reference scorer: 0, not undefined
    assert g["n"] == len(pred)


def test_error_metrics_of_empty_set_are_nan_and_defined_otherwise() -> None:
    g = metric_group([], [])
    assert all(math.isnan(g[k]) for k in ("rmse", "mae", "huber"))
    g = metric_group([3.0, 3.0], [2.0, 4.0])  # constant prediction: correlation undefined, errors are not
    assert (g["rmse"], g["mae"], g["huber"]) == pytest.approx((1.0, 1.0, 0.5))


def test_plcc_plus_clips_negative_correlation() -> None:
    g = metric_group([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert g["plcc"] == pytest.approx(-1.0)
    assert g["plcc_plus"] == 0.0
    assert tuple(g) == METRIC_KEYS


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_predictions_raise(bad: float) -> None:
    with pytest.raises(ValueError, match=r"1 of 3 predictions are not finite"):
        compute_metrics([1.0, bad, 3.0], [1.0, 2.0, 3.0])


def test_nonfinite_targets_and_shape_errors_raise() -> None:
    with pytest.raises(ValueError, match="targets are not finite"):
        plcc([1.0, 2.0], [1.0, math.nan])
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        compute_metrics([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="1-D"):
        compute_metrics(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="must be numbers"):
        compute_metrics(["a", "b"], [1.0, 2.0])


def test_overall_only_without_subsets() -> None:
    out = compute_metrics(P4, T4)
    assert set(out) == {"overall"}
    assert out["overall"]["plcc"] == pytest.approx(0.8)


def test_per_category_grouping_and_order() -> None:
    pred = [1.0, 2.0, 3.0, 4.0, 2.0, 5.0, 4.0]
    true = [1.0, 3.0, 2.0, 4.0, 2.0, 4.0, 4.5]
    cats = ["shoes", "bags", "shoes", "shoes", "bags", "hats", "bags"]
    out = compute_metrics(pred, true, categories=cats)
    assert list(out["per_category"]) == ["bags", "shoes", "hats"]  # by count, ties by name
    for name in ("bags", "shoes", "hats"):
        idx = [i for i, c in enumerate(cats) if c == name]
        expected = metric_group([pred[i] for i in idx], [true[i] for i in idx])
        got = out["per_category"][name]
        assert got["n"] == len(idx)
        for k in METRIC_KEYS[1:]:
            assert got[k] == pytest.approx(expected[k], nan_ok=True)
    assert out["per_category"]["shoes"]["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert math.isnan(out["per_category"]["hats"]["plcc"])  # one item


def test_categories_must_match_and_be_present() -> None:
    with pytest.raises(ValueError, match="categories has 2 items, predictions 4"):
        compute_metrics(P4, T4, categories=["a", "b"])
    with pytest.raises(ValueError, match="1 of 4 categories are missing"):
        compute_metrics(P4, T4, categories=["a", None, "a", "b"])


def test_rating_number_filter() -> None:
    pred = [1.0, 2.0, 3.0, 4.0, 5.0]
    true = [1.5, 2.0, 2.5, 4.5, 4.0]
    counts = [10, 3, 12, 9, 100]  # >= 10 keeps items 0, 2, 4; the boundary 10 is included
    out = compute_metrics(pred, true, rating_numbers=counts)
    assert set(out) == {"overall", "rating_number_ge_10"}
    sub = out["rating_number_ge_10"]
    assert sub["n"] == 3
    assert sub["rmse"] == pytest.approx(rmse([1.0, 3.0, 5.0], [1.5, 2.5, 4.0]))
    assert sub["plcc"] == pytest.approx(plcc([1.0, 3.0, 5.0], [1.5, 2.5, 4.0]))
    out = compute_metrics(pred, true, rating_numbers=counts, min_rating_number=50)
    assert out["rating_number_ge_50"]["n"] == 1
    assert math.isnan(out["rating_number_ge_50"]["plcc"])
    out = compute_metrics(pred, true, rating_numbers=counts, min_rating_number=1000)
    empty = out["rating_number_ge_1000"]
    assert empty["n"] == 0 and math.isnan(empty["rmse"])  # kept, visibly empty, not dropped


def test_rating_number_errors() -> None:
    with pytest.raises(ValueError, match="rating_numbers has 3 items"):
        compute_metrics(P4, T4, rating_numbers=[1, 2, 3])
    with pytest.raises(ValueError, match="1 of 4 rating_numbers are NaN"):
        compute_metrics(P4, T4, rating_numbers=[1, 2, math.nan, 4])
    with pytest.raises(ValueError, match="min_rating_number must be an integer"):
        compute_metrics(P4, T4, rating_numbers=[1, 2, 3, 4], min_rating_number=2.5)


def test_plcc_change_interval_is_paired_seeded_and_widens_with_the_difference():
    rng = np.random.default_rng(0)
    y = rng.normal(size=1000)
    base = 0.3 * y + rng.normal(size=1000)
    assert plcc_change_interval(base, base, y) == (0.0, 0.0)  # paired: the same predictions never differ
    near, far = base + 0.05 * rng.normal(size=1000), base + 0.5 * rng.normal(size=1000)
    lo, hi = plcc_change_interval(near, base, y)
    change = plcc(near, y) - plcc(base, y)
    assert lo < change < hi and plcc_change_interval(near, base, y) == (lo, hi)  # same seed, same interval
    far_lo, far_hi = plcc_change_interval(far, base, y)
    assert far_hi - far_lo > 3 * (hi - lo)  # larger perturbations: a change other items would move more
    assert all(math.isnan(v) for v in plcc_change_interval([1.0, 2.0], [1.0, 3.0], [0.0, 1.0]))
    tied = plcc_change_interval([1, 1, 1, 2, 3], [1, 2, 1, 2, 2], [0, 1, 0, 1, 2])  # constant resamples
    assert all(math.isnan(v) for v in tied)
