"""Split-conformal intervals: the quantile rule, coverage, and the model folder -> evaluate / predict path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from effiminivlm.cli import main
from effiminivlm.errors import DataError
from effiminivlm.evaluation.conformal import (
    coverage_report,
    fit_conformal,
    intervals,
    load_conformal,
    save_conformal,
)
from effiminivlm.serving.scorer import create_scorer
from effiminivlm.training import loop


def test_q_is_the_ceil_n_plus_1_level_th_smallest_residual() -> None:
    target = np.full(9, 3.0)
    pred = 3.0 + np.arange(1, 10) / 10  # residuals 0.1 .. 0.9
    conf = fit_conformal(pred, target, (0.8, 0.5))
    assert conf["q"]["80"] == pytest.approx(0.8) and conf["q"]["50"] == pytest.approx(0.5)  # k = 8, 5
    assert conf["n_calibration"] == 9 and conf["too_few"] == []
    few = fit_conformal(pred[:3], target[:3], (0.9,))  # ceil(4 * 0.9) = 4 > 3 items
    assert few["q"]["90"] == 4.0 and few["too_few"] == ["90"]
    with pytest.raises(DataError):
        fit_conformal([np.nan], [3.0])


def test_predictions_and_bounds_are_clipped_to_the_rating_range() -> None:
    conf = fit_conformal([4.0, 4.0, 4.0, 4.0], [4.5, 3.5, 4.0, 4.2], (0.6,))
    low, high = intervals([6.0, 1.2], conf)["60"]
    assert high.max() <= 5.0 and low.min() >= 1.0 and low[0] == pytest.approx(5.0 - conf["q"]["60"])


def test_coverage_is_nominal_on_exchangeable_data() -> None:
    rng = np.random.default_rng(0)
    y = np.clip(rng.normal(4, 0.8, 40_000), 1, 5)
    pred = np.clip(y + rng.standard_t(3, 40_000) * 0.3, 1, 5)  # heavy-tailed errors
    conf = fit_conformal(pred[:2000], y[:2000])
    rep = coverage_report(pred[2000:], y[2000:], conf, rating_number=np.arange(38_000) % 20)
    for key, nominal in (("80", 0.8), ("90", 0.9)):
        assert rep["overall"][key]["coverage"] == pytest.approx(nominal, abs=0.02)
        assert rep["rating_number_ge_10"][key]["n"] == 19_000
    assert rep["overall"]["90"]["mean_width"] > rep["overall"]["80"]["mean_width"]


def test_load_refuses_a_broken_file(tmp_path: Path) -> None:
    assert load_conformal(tmp_path) is None
    save_conformal(tmp_path, fit_conformal([3.0, 3.5], [3.2, 3.1]))
    assert set(load_conformal(tmp_path)["q"]) == {"80", "90"}
    (tmp_path / "conformal.json").write_text("{\"q\": 3}")
    with pytest.raises(DataError, match="conformal.json"):
        load_conformal(tmp_path)


def test_trained_model_carries_intervals_to_evaluate_predict_and_scorer(tiny_recipe, prepared, tmp_path):
    loop.train(tiny_recipe, prepared, tmp_path / "run", progress=False, log=lambda _: None)
    model = tmp_path / "run" / "model"
    conf = json.loads((model / "conformal.json").read_text())
    assert conf["n_calibration"] == 16 and conf["calibration"] == "val"  # the 16 val items of the fixture
    assert main(["evaluate", "--model", str(model), "--data", str(prepared), "--out", str(tmp_path / "ev"),
                 "--num-workers", "0", "--precision", "fp32"]) == 0
    rep = json.loads((tmp_path / "ev" / "metrics.json").read_text())["conformal"]
    assert rep["overall"]["80"]["n"] == 16 and 0 <= rep["overall"]["90"]["coverage"] <= 1
    assert "rating_number_ge_10" in rep
    assert "Conformal intervals" in (tmp_path / "ev" / "metrics.md").read_text()
    sub, plain = tmp_path / "s.csv", tmp_path / "p.csv"
    for out, flag in ((sub, "--intervals"), (plain, "--no-intervals")):
        assert main(["predict", str(prepared), "--model", str(model), "--out", str(out), "--split", "test",
                     "--num-workers", "0", "--precision", "fp32", flag]) == 0
    rows = list(csv.DictReader(sub.open()))
    assert list(rows[0]) == ["item_id", "score", "params", "flops", "low_80", "high_80", "low_90", "high_90"]
    assert [r[k] for r in rows for k in ("item_id", "score", "params", "flops")] == [
        r[k] for r in csv.DictReader(plain.open()) for k in ("item_id", "score", "params", "flops")]
    for r in rows:
        assert 1 <= float(r["low_90"]) <= float(r["low_80"]) <= float(r["score"]) <= float(r["high_80"]) \
            <= float(r["high_90"]) <= 5
    scorer = create_scorer(model, precision="fp32")
    (lo, hi) = scorer.intervals(np.array([3.0]))["80"]
    assert hi[0] - lo[0] == pytest.approx(min(2 * conf["q"]["80"], 4.0), abs=1e-6) or hi[0] == 5.0
    assert main(["score", "--predictions", str(sub), "--truth", str(prepared)]) == 0  # extra columns are fine
