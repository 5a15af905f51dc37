"""`train.missing_rating_number`: the loss weight of train rows without a rating count."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from effiminivlm.config import load_recipe
from effiminivlm.data.prepare import prepare, read_prepared
from effiminivlm.errors import ConfigError, DataError
from effiminivlm.training import loop
from effiminivlm.training.losses import rating_weights
from effiminivlm.training.weights import fill_missing_rating_number


def rows(counts: list[int | None]) -> pa.Table:
    return pa.table({"parent_asin": [f"A{i}" for i in range(len(counts))],
                     "rating_number": pa.array(counts, type=pa.int64())})


def weights_of(t: pa.Table, mu: float) -> np.ndarray:
    return rating_weights(torch.tensor(t["rating_number"].to_pylist()), mu, cap=100.0).numpy()


def test_median_gives_the_median_known_count_and_mu_ignores_the_filled_rows() -> None:
    t, rep = fill_missing_rating_number(rows([1, 9, 99, None, None]), "median")
    assert rep["mu"] == pytest.approx(np.mean(np.log1p([1, 9, 99])))
    assert t["rating_number"].to_pylist() == [1, 9, 99, 9, 9] and rep["missing"] == 2
    assert weights_of(t, rep["mu"])[3] == pytest.approx(rep["weight"], abs=1e-6)


def test_one_gives_weight_exactly_one() -> None:
    t, rep = fill_missing_rating_number(rows([3, 300, None]), "one")
    assert weights_of(t, rep["mu"])[2] == pytest.approx(1.0) and rep["weight"] == pytest.approx(1.0)


def test_drop_removes_the_rows_and_says_so() -> None:
    t, rep = fill_missing_rating_number(rows([3, None, 5, None]), "drop")
    assert t["parent_asin"].to_pylist() == ["A0", "A2"] and rep["dropped"] == 2
    with pytest.raises(DataError, match="all 2 train rows lack rating_number"):
        fill_missing_rating_number(rows([None, None]), "drop")


@pytest.mark.parametrize("policy", ["median", "one"])
def test_no_known_count_at_all_weights_every_row_one(policy: str) -> None:
    t, rep = fill_missing_rating_number(rows([None, None, None]), policy)
    assert np.allclose(weights_of(t, rep["mu"]), 1.0)


def test_complete_counts_are_untouched_and_bad_policy_fails() -> None:
    t0 = rows([1, 2])
    t, rep = fill_missing_rating_number(t0, "median")
    assert t is t0 and rep["missing"] == 0
    with pytest.raises(ConfigError, match="missing_rating_number"):
        load_recipe("tiny", ["train.missing_rating_number=zero"])


@pytest.fixture(scope="module")
def half_unrated(synth_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic catalog with rating_number removed from every second row."""
    src = synth_catalog / "meta_Synthetic.jsonl"
    lines = src.read_text().splitlines()
    out_lines = []
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if i % 2:
            del obj["rating_number"]
        out_lines.append(json.dumps(obj))
    dst = tmp_path_factory.mktemp("unrated") / "meta_Synthetic.jsonl"
    dst.write_text("\n".join(out_lines) + "\n")
    # images are referenced relative to the meta file's folder (a symlink out of it is refused): copy them
    shutil.copytree(synth_catalog / "images", dst.parent / "images")
    out = dst.parent / "prep"
    prepare([dst], out, frac=1.0, min_per_category=0, keep_missing_rating_number=True)
    return out


@pytest.mark.parametrize("policy", ["median", "one", "drop"])
def test_training_on_rows_without_counts_reports_the_policy(tiny_recipe, half_unrated, tmp_path,
                                                            policy) -> None:
    tiny_recipe.train.missing_rating_number = policy
    logs: list[str] = []
    summary = loop.train(tiny_recipe, half_unrated, tmp_path / "run", progress=False, log=logs.append)
    rep = summary["missing_rating_number"]
    n_train = read_prepared(half_unrated, "train").num_rows
    assert rep["policy"] == policy and rep["rows"] == n_train and 0 < rep["missing"] < n_train
    assert any("lack rating_number" in line and policy in line for line in logs)
    if policy == "drop":
        assert rep["dropped"] == rep["missing"]
    else:
        assert rep["weight"] > 0 and not rep["dropped"]
    assert math.isfinite(summary["history"][-1]["train_loss"])
    saved = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert saved["missing_rating_number"] == rep
