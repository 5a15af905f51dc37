"""`effiminivlm scaling`: nested subsets, resumable runs, fits with bootstrap intervals, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.data.folds import nested_order, write_subset_dataset
from effiminivlm.data.prepare import read_prepared
from effiminivlm.evaluation.scaling_fit import fit_log, fit_power, fit_scaling
from effiminivlm.training import trainer
from effiminivlm.training.scaling import run_scaling

PROBE = ["train.probe=ridge", "model.head.hidden_dims=[]", "train.freeze_image=true",
         "train.freeze_text=true", "data.num_workers=0", "train.eval_batch_size=32"]


def test_fits_recover_known_curves() -> None:
    n = np.repeat([100, 300, 1000, 3000, 10_000, 30_000], 3).astype(float)
    y = 0.5 - 0.9 * n ** -0.35 + np.random.default_rng(0).normal(0, 0.003, len(n))
    p_inf, c, alpha = fit_power(n, y)
    assert p_inf == pytest.approx(0.5, abs=0.03) and alpha == pytest.approx(0.35, abs=0.08)
    a, b = fit_log(n, 0.1 + 0.05 * np.log(n))
    assert (a, b) == (pytest.approx(0.1), pytest.approx(0.05))
    fit = fit_scaling([{"n": x, "plcc": v} for x, v in zip(n, y, strict=True)], 1.6e6, boot=100)
    lo, hi = fit["power"]["ci95"]
    assert lo <= fit["power"]["at_target"] <= hi and hi - lo < 0.1
    assert fit["log"]["at_target"] > fit["power"]["at_target"]  # the log line never bends
    assert "error" in fit_scaling([{"n": 10, "plcc": 0.1}], 100)
    steep = fit_scaling([{"n": x, "plcc": 0.2 * np.log10(x) - 0.2} for x in (100, 1000, 10_000)], 1e9,
                        boot=20)
    assert steep["log"]["at_target"] == 1.0  # a + b ln n would say 1.6: a correlation stops at 1


def test_subsets_are_nested_and_val_test_fixed(prepared: Path, tmp_path: Path) -> None:
    ids = [f"X{i}" for i in range(50)]
    assert (nested_order(ids, 1) == nested_order(ids, 1)).all() and not (
        nested_order(ids, 1) == nested_order(ids, 2)).all()
    small = write_subset_dataset(prepared, tmp_path / "s", 20, seed=0)
    big = write_subset_dataset(prepared, tmp_path / "b", 60, seed=0)
    assert small["train"] == 20 and big["train"] == 60 and small["test"] == big["test"] == 16
    train_ids = {s: set(read_prepared(tmp_path / s, "train")["parent_asin"].to_pylist()) for s in "sb"}
    assert train_ids["s"] < train_ids["b"]


def test_run_scaling_writes_json_markdown_png_and_resumes(prepared: Path, tmp_path: Path, monkeypatch):
    recipe = load_recipe("tiny", PROBE)
    out = tmp_path / "sc"
    res = run_scaling(recipe, prepared, out, fractions=[0.25, 0.5, 1.0], seeds=2, target_n=1e5, boot=50,
                      reference=("paper", 0.36), log=lambda _: None)
    assert [s["n"] for s in res["summary"]] == [32, 64, 128] and len(res["points"]) == 6
    assert all(s["runs"] == 2 and s["plcc_mean"] is not None for s in res["summary"])
    assert (out / "scaling.png").stat().st_size > 10_000 and "a + b ln n" in (out / "scaling.md").read_text()
    stored = json.loads((out / "scaling.json").read_text())
    assert stored["fit"]["target_n"] == 1e5 and stored["fit"]["log"]["ci95"] is not None
    assert (out / "features.safetensors").is_file()  # embedded once for the probe recipe

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer, "train_probe", no_training)
    again = run_scaling(recipe, prepared, out, fractions=[0.25, 0.5, 1.0], seeds=2, target_n=1e5, boot=50,
                        log=lambda _: None)
    assert again["points"] == res["points"]


def test_cli_scaling_checks_fractions(prepared: Path, tmp_path: Path, capsys) -> None:
    """A bad --fractions is one line naming the option and the values, before any study folder exists."""
    out = tmp_path / "x"
    assert main(["scaling", "--data", str(prepared), "--out", str(out), "--fractions", "0,1"]) == 2
    assert capsys.readouterr().err == "error: --fractions must lie in (0, 1], got [0.0, 1.0]\n"
    assert main(["scaling", "--data", str(prepared), "--out", str(out), "--fractions", "0.5,a"]) == 2
    assert capsys.readouterr().err == "error: --fractions must be comma-separated numbers, got '0.5,a'\n"
    assert not out.exists()
