"""One trainer choice (training.trainer.run_training) and the steps both trainers share (skeleton)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from effiminivlm.config import load_recipe
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import ConfigError, DataError
from effiminivlm.training import loop, probe, trainer
from effiminivlm.training.skeleton import is_probe, read_train_val, weighted_train_rows


def test_the_recipe_alone_decides_the_trainer(monkeypatch, tmp_path: Path) -> None:
    called: list[str] = []
    monkeypatch.setattr(trainer, "train", lambda *a, **k: called.append("loop") or {"via": "loop"})
    monkeypatch.setattr(trainer, "train_probe", lambda *a, **k: called.append("probe") or {"via": "probe"})
    assert trainer.run_training(load_recipe("tiny"), "data", tmp_path)["via"] == "loop"
    assert trainer.run_training(load_recipe("probe"), "data", tmp_path)["via"] == "probe"
    assert trainer.run_training(None, "data", tmp_path, resume=True)["via"] == "loop"  # the run's own recipe
    assert called == ["loop", "probe", "loop"]
    assert is_probe(load_recipe("probe")) and is_probe(load_recipe("hybrid-probe-tiny"))
    assert not is_probe(load_recipe("offline"))


def test_each_trainer_refuses_what_only_the_other_takes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rerun it with --overwrite"):
        trainer.run_training(load_recipe("probe"), "data", tmp_path, resume=True)
    with pytest.raises(ConfigError, match="--features is for probe recipes"):
        trainer.run_training(load_recipe("tiny"), "data", tmp_path, features="cache.safetensors")
    assert trainer.train is loop.train and trainer.train_probe is probe.train_probe


def test_both_trainers_read_the_same_splits_with_the_same_error(prepared: Path, tmp_path: Path) -> None:
    train_rows, val_rows = read_train_val(prepared)
    assert (train_rows.num_rows, val_rows.num_rows) == (read_prepared(prepared, "train").num_rows,
                                                       read_prepared(prepared, "val").num_rows)
    empty = tmp_path / "empty"  # a prepared dataset whose splits hold no row
    empty.mkdir()
    pq.write_table(read_prepared(prepared).slice(0, 0), empty / "data.parquet")
    (empty / "summary.json").write_text((prepared / "summary.json").read_text())
    for run in (lambda: loop.train(load_recipe("tiny"), empty, tmp_path / "a", progress=False, log=print),
                lambda: probe.train_probe(load_recipe("hybrid-probe-tiny"), empty, tmp_path / "b")):
        with pytest.raises(DataError, match="training needs non-empty train and val splits"):
            run()


def test_rows_without_a_rating_count_are_weighted_and_said_once(prepared: Path) -> None:
    rows = read_prepared(prepared, "train")
    counts = rows.column("rating_number").to_pylist()
    rows = rows.set_column(rows.schema.get_field_index("rating_number"), "rating_number",
                           pa.array([None] * 3 + counts[3:], rows.schema.field("rating_number").type))
    said: list[str] = []
    out, weighting = weighted_train_rows(rows, load_recipe("tiny").train, said.append)
    assert weighting["missing"] == 3 and out.column("rating_number").null_count == 0
    assert said == [f"3 of {rows.num_rows} train rows lack rating_number: weight {weighting['weight']:.3f} "
                    f"(count {weighting['filled_with']:g}) (train.missing_rating_number=median)"]
