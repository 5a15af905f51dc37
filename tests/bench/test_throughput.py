"""The runtime benchmark: complete reports, consistent counts, honest timing scopes, CLI and errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from effiminivlm.bench import throughput as bm
from effiminivlm.cli import main
from effiminivlm.data.dataset import ProductDataset
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.models.factory import load_model_or_recipe


@pytest.fixture(scope="module")
def tiny_model():
    """(model, tokenizer, label) of the tiny recipe, random init, built once for the module."""
    return load_model_or_recipe(recipe="tiny")


@pytest.fixture(scope="module")
def table(prepared):
    return read_prepared(prepared)  # all 160 rows: enough for warmup + a few batches


def _run(tiny_model, table, **kw):
    model, tok, label = tiny_model
    opts = {"batch_size": 4, "warmup": 1, "precision": "fp32", "device": "cpu", "model_label": label} | kw
    return bm.benchmark_model(model, tok, table, **opts)


def _expected_tokens(table, tok, max_length, start, stop, batch_size):
    """Real tokens and padded positions of rows [start, stop), tokenised independently of the collator."""
    ds = ProductDataset(table, None, images="none")
    lengths = [len(ids) for ids in tok([ds.text(i) for i in range(start, stop)], truncation=True,
                                       max_length=max_length)["input_ids"]]
    chunks = [lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size)]
    return sum(lengths), sum(len(c) * max(c) for c in chunks)


def test_report_has_every_field_and_consistent_counts(tiny_model, table, tmp_path):
    r = _run(tiny_model, table, batches=3)
    d = r.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(bm.BenchmarkResult)}
    assert r.scope == "end_to_end" and r.precision == "fp32" and r.device == "cpu"
    assert r.device_name and r.torch_version and r.threads >= 1 and r.params_m > 0
    assert r.warmup_batches == 1 and r.measured_batches == 3 and len(r.batch_ms) == 3
    assert r.samples == 12  # 3 x 4; the warmup batch's 4 rows are not counted
    assert r.samples_with_image == 12  # every synthetic item has a readable image
    tokens, padded = _expected_tokens(table, tiny_model[1], r.max_length, 4, 16, 4)
    assert (r.tokens, r.padded_tokens) == (tokens, padded)
    assert r.padding.startswith("dynamic")
    assert r.seconds > 0 and r.ms_per_sample == pytest.approx(r.seconds * 1e3 / 12, rel=1e-3)
    assert r.ms_per_token == pytest.approx(r.seconds * 1e3 / r.tokens, rel=1e-3)
    assert r.samples_per_s == pytest.approx(12 / r.seconds, rel=1e-3)
    assert r.tokens_per_s == pytest.approx(r.tokens / r.seconds, rel=1e-3)
    assert sum(r.batch_ms) == pytest.approx(r.seconds * 1e3, rel=1e-3)
    assert r.peak_rss_mb > 0 and r.rss_increase_mb is not None  # CPU memory fields
    assert r.cuda_max_allocated_mb is None and r.cuda_max_reserved_mb is None

    path = bm.write_json([r], tmp_path / "out" / "bench.json")
    assert json.loads(path.read_text()) == {"runs": [d]}


def test_remainder_batch_and_canonical_padding(tiny_model, table):
    r = _run(tiny_model, table, max_samples=7, pad_to_max=True)
    assert (r.measured_batches, r.samples) == (2, 7)  # 4 + a remainder of 3
    assert r.padded_tokens == 7 * r.max_length and r.padding.startswith("canonical")
    tokens, _ = _expected_tokens(table, tiny_model[1], r.max_length, 4, 11, 4)
    assert r.tokens == tokens  # padding never adds real tokens


@pytest.mark.parametrize(("scope", "loads_timed"), [("end_to_end", 8), ("model", 0)])
def test_timed_region_loads_data_only_end_to_end(tiny_model, table, monkeypatch, scope, loads_timed):
    """Count dataset reads at every clock read: the first read starts the timed region, the last ends it."""
    loads = {"n": 0}
    at_clock: list[int] = []
    getitem = ProductDataset.__getitem__

    def counting_getitem(self, i):
        loads["n"] += 1
        return getitem(self, i)

    def clock():
        at_clock.append(loads["n"])
        return bm.time.perf_counter()

    monkeypatch.setattr(ProductDataset, "__getitem__", counting_getitem)
    monkeypatch.setattr(bm, "_clock", clock)
    r = _run(tiny_model, table, scope=scope, batches=2, num_workers=0)
    assert r.samples == 8 and loads["n"] == 12  # 1 warmup + 2 measured batches of 4, each row read once
    assert at_clock[-1] - at_clock[0] == loads_timed
    assert at_clock[0] == (4 if scope == "end_to_end" else 12)  # warmup rows are read before the clock


def test_plan_rows():
    assert bm.plan_rows(10, 4, 1) == (10, 2)  # everything after warmup, last batch partial
    assert bm.plan_rows(10, 4, 1, max_samples=5) == (9, 2)
    assert bm.plan_rows(10, 4, 0, batches=2) == (8, 2)
    with pytest.raises(DataError, match="leave nothing to measure"):
        bm.plan_rows(8, 4, 2)
    with pytest.raises(DataError, match="do not fit"):
        bm.plan_rows(10, 4, 1, batches=3)
    with pytest.raises(EffiMiniVLMError, match="not both"):
        bm.plan_rows(10, 4, 1, batches=1, max_samples=1)
    with pytest.raises(EffiMiniVLMError, match="batch-size"):
        bm.plan_rows(10, 0, 1)


def test_cli_runs_every_combination_and_writes_json(prepared, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["benchmark", "--data", str(prepared), "--recipe", "tiny", "--split", "all",
                 "--batch-size", "4", "--warmup", "1", "--batches", "1", "--scope", "both",
                 "--precision", "both", "--json", str(out)])
    assert code == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["scope"], r["precision"]) for r in runs] == [
        ("end_to_end", "fp32"), ("end_to_end", "bf16"), ("model", "fp32"), ("model", "bf16")]
    assert all(r["samples"] == 4 and r["split"] == "all" for r in runs)
    printed = capsys.readouterr().out
    assert "end_to_end" in printed and "bf16" in printed and "ms/" in printed


def test_lovif_input_csv_is_benchmarked(synth_catalog):
    csv = str(synth_catalog / "lovif" / "input.csv")
    model_runs = bm.run_benchmark([csv], recipe="tiny", batch_size=8, warmup=0, batches=1, precision="fp32")
    assert model_runs[0].samples == 8 and model_runs[0].split is None
    assert model_runs[0].samples_with_image == 8  # images resolved relative to the csv's images/ folder
    with pytest.raises(DataError, match="prepared dataset folder only"):
        bm.run_benchmark([csv], recipe="tiny", split="test")


def test_cli_errors_are_one_line(prepared, tmp_path, capsys):
    empty = tmp_path / "train-only"
    empty.mkdir()
    t = read_prepared(prepared)
    pq.write_table(t.filter(pc.equal(t["split"], "train")), empty / "data.parquet")
    shutil.copy(prepared / "summary.json", empty / "summary.json")
    assert main(["benchmark", "--data", str(empty), "--recipe", "tiny"]) == 2
    assert "split 'test' is empty" in capsys.readouterr().err

    assert main(["benchmark", "--data", str(prepared), "--recipe", "tiny", "--scope", "forward"]) == 2
    assert "--scope must be one of end_to_end, model, both, got 'forward'" in capsys.readouterr().err
    assert main(["benchmark", "--data", str(prepared), "--recipe", "tiny", "--precision", "fp8"]) == 2
    assert "--precision must be one of" in capsys.readouterr().err
    assert main(["benchmark", "--data", str(prepared)]) == 2
    assert "exactly one of --model" in capsys.readouterr().err
    assert main(["benchmark", "--data", str(prepared), "--recipe", "tiny", "--batches", "50"]) == 2
    assert "do not fit" in capsys.readouterr().err
