"""benchmarks/baseline_tfidf.py on the synthetic prepared data: it learns from text, never from test rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from effiminivlm.data.prepare import read_prepared
from tests._scripts import load_benchmark


@pytest.fixture(scope="module")
def baseline():
    return load_benchmark("baseline_tfidf")


def test_fixed_split_uses_the_prepared_split(baseline, prepared: Path) -> None:
    res = baseline.run_fixed_split(prepared)
    sizes = {s: read_prepared(prepared, s).num_rows for s in ("train", "val", "test")}
    assert res["sizes"] == sizes
    assert res["test"]["overall"]["n"] == sizes["test"] == res["train_mean"]["n"]
    assert res["alpha"] in baseline.ALPHAS
    assert len(res["alpha_curve"]) == len(baseline.ALPHAS)
    assert {"per_category", "rating_number_ge_10"} <= set(res["test"])
    assert math.isnan(res["train_mean"]["plcc"])  # a constant prediction has no correlation


def test_kfold_predicts_every_row_once_and_learns_from_text(baseline, prepared: Path) -> None:
    # The synthetic rating has a quality-tier term written only in the text (data/synth.py), so a bag of
    # words must find real signal; the constant train-mean floor must lose on RMSE.
    res = baseline.run_kfold(prepared, k=5, seed=0)
    n = read_prepared(prepared).num_rows
    assert res["n"] == n and len(res["folds"]) == 5
    assert sum(f["n"] for f in res["folds"]) == n
    assert not np.isnan(res["oof_pred"]).any()  # each row was in exactly one test fold
    assert res["mean_std"]["plcc"]["mean"] > 0.3
    assert res["mean_std"]["rmse"]["mean"] < res["train_mean"]["rmse"]["mean"]
    assert res["mean_std"]["plcc"]["std"] > 0.0


def test_shuffled_targets_give_no_signal(baseline, prepared: Path) -> None:
    # The same procedure on targets shuffled across items: what remains is chance, so the real run's PLCC
    # is signal from the text, not an artefact of the procedure.
    rows = baseline.load_rows(prepared)
    honest = baseline.kfold_rows(rows, k=5, seed=0)["mean_std"]["plcc"]["mean"]
    rows.y = np.random.default_rng(0).permutation(rows.y)
    shuffled = baseline.kfold_rows(rows, k=5, seed=0)["mean_std"]["plcc"]["mean"]
    assert honest > 0.3 and honest > shuffled + 0.3


def test_test_rows_never_influence_the_fit(baseline, prepared: Path) -> None:
    rows = baseline.load_rows(prepared)
    train, val = rows.take(np.arange(0, 100)), rows.take(np.arange(100, 120))
    a = baseline.fit_select_predict(train, val, rows.take(np.arange(120, 140)))
    b = baseline.fit_select_predict(train, val, rows.take(np.arange(140, 160)))
    assert a["alpha"] == b["alpha"] and a["curve"] == b["curve"] and a["n_terms"] == b["n_terms"]


def test_main_writes_strict_json_and_fails_cleanly(baseline, prepared: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tfidf.json"
    assert baseline.main(["--data", str(prepared), "--kfold", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 3-fold (seed 0) | tfidf+ridge" in printed and "± " in printed
    data = json.loads(out.read_text(), parse_constant=lambda t: pytest.fail(f"{t} in JSON"))
    assert data["fixed_split"]["train_mean"]["plcc"] is None
    assert len(data["kfold"]["folds"]) == 3 and "oof_pred" not in data["kfold"]

    assert baseline.main(["--data", str(tmp_path / "missing")]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
    assert baseline.main(["--data", str(prepared), "--kfold", "1"]) == 2
    assert "--kfold must be in [2" in capsys.readouterr().err
