"""Multi-label metrics against direct formulas (no sklearn): AP, mAP, micro/macro/sample-wise F1, tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from effiminivlm.errors import DataError
from effiminivlm.evaluation.classification import (
    average_precision,
    classification_metrics,
    f1_scores,
    mean_average_precision,
    predict_labels,
    tune_thresholds,
)


def _random(seed: int = 0, n: int = 40, k: int = 5):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(int)
    scores = np.clip(0.5 * y + rng.random((n, k)) * 0.8, 0, 1)  # informative, with overlap
    return y, scores


def test_ap_without_ties_is_the_mean_precision_at_each_positive() -> None:
    y, s = _random()
    for k in range(y.shape[1]):
        order = np.argsort(-s[:, k])
        hits = y[order, k]
        ranks = np.flatnonzero(hits) + 1  # 1-based rank of each positive
        expected = np.mean([hits[:r].sum() / r for r in ranks])
        assert average_precision(y[:, k], s[:, k]) == pytest.approx(expected)


def test_ap_takes_tied_scores_together_and_is_nan_without_positives() -> None:
    # threshold 0.9: P 1, R 1/2; threshold 0.5 (two tied items, one positive): P 2/3, R 1
    assert average_precision([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision([1, 1, 0], [0.2, 0.3, 0.9]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0, 1], [0.1, 0.9]) == 1.0
    assert math.isnan(average_precision([0, 0], [0.1, 0.9]))
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.7]])
    assert mean_average_precision(y, s) == (1.0, 1)  # the class without positives is left out, and counted


def test_f1s_match_direct_loops() -> None:
    y, s = _random(1, n=30, k=4)
    pred = predict_labels(s, 0.5)
    got = f1_scores(y, pred)
    tp = fp = fn = 0
    per_class = []
    for k in range(y.shape[1]):
        t = sum(1 for i in range(len(y)) if y[i, k] and pred[i, k])
        f = sum(1 for i in range(len(y)) if not y[i, k] and pred[i, k])
        m = sum(1 for i in range(len(y)) if y[i, k] and not pred[i, k])
        tp, fp, fn = tp + t, fp + f, fn + m
        per_class.append(2 * t / (2 * t + f + m))
    samples = [2 * (y[i] & pred[i]).sum() / (y[i].sum() + pred[i].sum()) for i in range(len(y))
               if y[i].sum() + pred[i].sum()]
    assert got["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert got["macro_f1"] == pytest.approx(np.mean(per_class))
    assert got["per_class_f1"] == pytest.approx(per_class)
    assert got["samples_f1"] == pytest.approx(np.mean(samples))


def test_undefined_f1_cases_are_left_out_and_counted() -> None:
    y = np.array([[1, 0, 0], [0, 0, 0]])
    pred = np.array([[1, 0, 0], [0, 0, 0]])
    got = f1_scores(y, pred)
    assert got["macro_f1"] == 1.0 and got["classes_undefined_f1"] == 2 and got["per_class_f1"][1] is None
    assert got["samples_f1"] == 1.0 and got["items_undefined_f1"] == 1


def test_tuned_thresholds_reach_each_class_best_f1_on_val() -> None:
    y, s = _random(2, n=60, k=4)
    t = tune_thresholds(y, s)
    for k in range(y.shape[1]):
        grid = np.linspace(0, 1, 2001)
        best = max(f1_scores(y[:, [k]], (s[:, [k]] >= g))["micro_f1"] for g in grid)
        assert f1_scores(y[:, [k]], s[:, [k]] >= t[k])["micro_f1"] == pytest.approx(best)
    tuned = classification_metrics(y, s, t)
    fixed = classification_metrics(y, s)
    assert tuned["macro_f1"] >= fixed["macro_f1"] and tuned["map"] == fixed["map"]
    assert fixed["thresholds"] == 0.5 and len(tuned["thresholds"]) == 4
    assert tune_thresholds(np.zeros((3, 1)), np.array([[0.1], [0.2], [0.9]]))[0] == 0.5  # no positives


def test_bad_input_fails_clearly() -> None:
    with pytest.raises(DataError, match="0 or 1"):
        mean_average_precision([[2, 0]], [[0.1, 0.2]])
    with pytest.raises(DataError, match="shape"):
        classification_metrics(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(DataError, match="1 score"):
        classification_metrics(np.ones((2, 1)), np.array([[0.5], [np.nan]]))
    with pytest.raises(DataError, match="3 thresholds for 2 classes"):
        predict_labels(np.zeros((1, 2)), [0.5, 0.5, 0.5])
