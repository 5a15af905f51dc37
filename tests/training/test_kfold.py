"""K-fold: the fold assignment, the per-fold runs (resumable), and mean +- sd over folds and seeds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from effiminivlm.cli import main
from effiminivlm.data.folds import assign_folds, fold_splits, write_fold_dataset
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.evaluation.aggregate import aggregate_runs, render_aggregate_markdown
from effiminivlm.training import trainer
from effiminivlm.training.kfold import run_kfold


def _data(n: int = 1000) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    return [f"B{i:06d}" for i in range(n)], rng.choice([1.0, 3.0, 4.0, 4.5, 5.0, 2.2], n, p=[.1, .2, .3, .3,
                                                                                          .09, .01])


def test_folds_are_balanced_stratified_and_independent_of_row_order() -> None:
    ids, rating = _data()
    fold = assign_folds(ids, rating, 5, seed=3)
    sizes = np.bincount(fold, minlength=5)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 1000
    for value in (1.0, 3.0, 4.0, 4.5, 5.0):  # every common rating is spread evenly over the folds
        per_fold = np.bincount(fold[rating == value], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    perm = np.random.default_rng(1).permutation(1000)
    again = assign_folds([ids[i] for i in perm], rating[perm], 5, seed=3)
    assert (again == fold[perm]).all()
    assert not (assign_folds(ids, rating, 5, seed=4) == fold).all()


def test_fold_splits_test_is_the_fold_and_the_rest_is_8_to_1() -> None:
    ids, rating = _data()
    fold = assign_folds(ids, rating, 5)
    seen_test: Counter[str] = Counter()
    for f in range(5):
        split = fold_splits(ids, rating, fold, f)
        assert ((split == "test") == (fold == f)).all()
        n_tr, n_va = int((split == "train").sum()), int((split == "val").sum())
        assert abs(n_va - (n_tr + n_va) / 9) <= 6  # one rounding per stratum
        seen_test.update(i for i, s in zip(ids, split, strict=True) if s == "test")
    assert set(seen_test.values()) == {1} and len(seen_test) == 1000  # every item tested exactly once


def test_too_few_items_or_folds_is_a_data_error() -> None:
    with pytest.raises(DataError, match="at least 2"):
        assign_folds(["a", "b"], np.array([1.0, 2.0]), 1)
    with pytest.raises(DataError, match="3 items cannot be cut into 5 folds"):
        assign_folds(["a", "b", "c"], np.array([1.0, 2.0, 3.0]), 5)


def test_write_fold_dataset_is_a_prepared_dataset(prepared: Path, tmp_path: Path) -> None:
    counts = write_fold_dataset(prepared, tmp_path / "f1", 4, 1)
    t = read_prepared(tmp_path / "f1")
    assert t.num_rows == read_prepared(prepared).num_rows == sum(counts.values())
    assert read_prepared(tmp_path / "f1", "test").num_rows == counts["test"] == 40
    summary = json.loads((tmp_path / "f1" / "summary.json").read_text())
    assert summary["kfold"]["fold"] == 1 and summary["image_roots"]


def test_aggregate_mean_and_sd_over_folds_and_seeds() -> None:
    def m(p: float, n: int = 10) -> dict:
        return {"overall": {"n": n, "plcc": p, "srcc": p, "rmse": 1 - p, "mae": 1 - p}}

    runs = [{"fold": f, "seed": s, "metrics": m(0.1 * f + 0.01 * s)} for f in range(3) for s in range(2)]
    runs.append({"fold": 3, "seed": 0, "metrics": m(float("nan"))})
    agg = aggregate_runs(runs)["overall"]["plcc"]
    assert agg["mean"] == pytest.approx(np.mean([0.1 * f + 0.01 * s for f in range(3) for s in range(2)]))
    assert agg["sd_folds"] == pytest.approx(np.std([0.005, 0.105, 0.205], ddof=1))
    assert agg["sd_seeds"] == pytest.approx(np.std([0.1, 0.11], ddof=1))
    assert agg["undefined"] == 1 and agg["n_runs"] == 6
    assert "0.1050 +- 0.1000" in render_aggregate_markdown(aggregate_runs(runs), "t")


def test_run_kfold_trains_tests_aggregates_and_skips_finished_runs(tiny_recipe, prepared, tmp_path,
                                                                  monkeypatch) -> None:
    tiny_recipe.train.epochs = 1
    out = tmp_path / "kf"
    res = run_kfold(tiny_recipe, prepared, out, k=3, log=lambda _: None)
    assert [(r["fold"], r["seed"]) for r in res["runs"]] == [(0, 42), (1, 42), (2, 42)]
    for f in range(3):
        assert (out / f"fold-{f}" / "seed-42" / "model" / "config.json").is_file()
    n_test = [r["metrics"]["overall"]["n"] for r in res["runs"]]
    assert sum(n_test) == read_prepared(prepared).num_rows  # every item tested once
    stored = json.loads((out / "kfold.json").read_text())
    assert stored["aggregate"]["overall"]["plcc"]["n_runs"] + stored["aggregate"]["overall"]["plcc"][
        "undefined"] == 3
    assert "rating_number_ge_10" in stored["aggregate"] and "| overall |" in (out / "kfold.md").read_text()

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer, "train", no_training)
    again = run_kfold(tiny_recipe, prepared, out, k=3, log=lambda _: None)
    assert again["aggregate"] == res["aggregate"]
    with pytest.raises(EffiMiniVLMError, match="another k"):
        run_kfold(tiny_recipe, prepared, out, k=4, log=lambda _: None)


def test_a_killed_fold_is_resumed_and_only_unevaluated_runs_are_evaluated(tiny_recipe, prepared, tmp_path,
                                                                          monkeypatch) -> None:
    tiny_recipe.train.epochs = 1
    out = tmp_path / "kf"
    real_train = trainer.train
    calls: list[bool] = []

    def crash_on_fold_1(recipe, data, run, **kw):
        calls.append(kw["resume"])
        if "fold-1" in str(run) and len(calls) == 2:
            (run).mkdir(parents=True)
            (run / "recipe.yaml").write_text(recipe.to_yaml())  # as a run killed before its first epoch
            raise KeyboardInterrupt
        return real_train(recipe, data, run, **kw)

    monkeypatch.setattr(trainer, "train", crash_on_fold_1)
    with pytest.raises(KeyboardInterrupt):
        run_kfold(tiny_recipe, prepared, out, k=2, log=lambda _: None)
    res = run_kfold(tiny_recipe, prepared, out, k=2, log=lambda _: None)
    assert calls == [False, False, True] and len(res["runs"]) == 2


def test_cli_train_kfold(prepared, tmp_path) -> None:
    out = tmp_path / "kf"
    args = ["train", "--data", str(prepared), "--out", str(out), "--recipe", "tiny", "--kfold", "2",
            "--set", "train.max_steps_per_epoch=2", "--epochs", "1", "--seeds", "2"]
    assert main(args) == 0
    agg = json.loads((out / "kfold.json").read_text())["aggregate"]["overall"]["rmse"]
    assert agg["n_runs"] == 4 and agg["sd_seeds"] is not None and agg["sd_folds"] is not None
    assert main([*args[:-2], "--resume"]) == 2


def test_a_plan_written_before_a_new_setting_existed_is_continued_and_a_real_change_named(tmp_path) -> None:
    """A study stored by an older version lacks settings added since: they take their defaults and the
    study continues; a recipe that truly differs is refused naming the dotted keys."""
    from effiminivlm.config import load_recipe
    from effiminivlm.training.kfold import PLAN, check_plan

    recipe = load_recipe("tiny").to_dict()
    old = json.loads(json.dumps(recipe))
    del old["data"]["draft_decode"], old["train"]["probe_alpha"]  # written before these settings existed
    (tmp_path / "fold-0").mkdir()
    (tmp_path / PLAN).write_text(json.dumps({"k": 3, "fold_seed": 0, "data": "d", "recipe": old}))
    plan = {"k": 3, "fold_seed": 0, "data": "d", "recipe": recipe}
    check_plan(tmp_path, plan, overwrite=False)  # continued, not refused
    changed = json.loads(json.dumps(recipe))
    changed["train"]["lr"] = 0.5
    with pytest.raises(EffiMiniVLMError, match=r"another recipe \(train\.lr\)"):
        check_plan(tmp_path, {**plan, "recipe": changed}, overwrite=False)
