"""`quantize`: per-tower variants measured on this CPU, stored in a copy of the model folder, used on load."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from effiminivlm import ovgraph
from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.errors import WeightsError
from effiminivlm.evaluation.quantize import quantize_model
from effiminivlm.models import quantize as q
from effiminivlm.models.factory import create_model, create_tokenizer, load_model
from effiminivlm.serving.scorer import Scorer

pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    cfg = load_recipe("tiny").model
    torch.manual_seed(0)
    model = create_model(cfg, pretrained=False)
    with torch.no_grad():
        model.head[-1].bias.fill_(3.0)  # scores in the middle of the scale: nothing clips
    out = tmp_path_factory.mktemp("quantize") / "model"
    model.save_pretrained(out, tokenizer=create_tokenizer(cfg))
    return out


@pytest.fixture(scope="module")
def quantized(plain_model: Path, prepared: Path) -> tuple[Path, dict]:
    """Loose bounds, so int8 is accepted wherever it is the faster one (the choice is still timed)."""
    out = plain_model.with_name("model-fast")
    result = quantize_model(plain_model, prepared, out, items=40, batch_size=8, precisions=("fp32", "int8"),
                            max_plcc_change=10.0, min_corr=-1.0, log=lambda _m: None)
    return out, result


def _predict(folder: Path, prepared: Path) -> tuple[np.ndarray, list[str]]:
    from effiminivlm.data.prepare import read_prepared

    scorer = Scorer.from_pretrained(folder, batch_size=8)
    return scorer.score_table(read_prepared(prepared, "test"), progress=False).pred, scorer.runner.fast_levers


def test_the_choice_is_measured_and_stored_in_a_copy(plain_model: Path, quantized) -> None:
    out, result = quantized
    assert not (plain_model / q.VARIANTS_NAME).exists()  # the input folder is never changed
    stored = json.loads((out / q.VARIANTS_NAME).read_text())
    assert stored["isa"] == ovgraph.isa_facts()
    report = stored["report"]
    assert set(report["towers"]) == {"image", "text"} and report["choice"] == result["choice"]
    for tower, figures in report["towers"].items():
        assert set(figures) == {"fp32", "int8"}
        assert figures["fp32"]["corr"] == pytest.approx(1.0) and figures["fp32"]["max_abs_diff"] == 0.0
        assert figures["int8"]["ms_per_item"] > 0 and figures["int8"]["max_abs_diff"] > 0  # int8 rounds
        fastest = min(figures, key=lambda p: figures[p]["ms_per_item"])
        assert result["choice"][tower] == fastest  # every variant was accepted: the fastest wins
        if fastest == "int8":
            assert (out / stored["towers"][tower]["graph"]).is_file()
    assert set(report["fast_fp32_vs_exact"]) >= {"corr", "max_abs_diff", "plcc_change"}


def test_a_quantized_folder_reloads_and_predicts_identically(quantized, prepared: Path) -> None:
    out, result = quantized
    first, levers = _predict(out, prepared)
    again, _ = _predict(out, prepared)
    assert np.array_equal(first, again)
    for tower in ("image", "text"):
        want = "int8" if result["choice"][tower] == "int8" else None
        assert any(f"openvino {tower} tower" in lv for lv in levers)
        if want:
            assert f"openvino {tower} tower (int8)" in levers


def test_stored_int8_graphs_are_what_the_fast_path_runs(plain_model: Path, quantized, prepared: Path,
                                                        tmp_path: Path) -> None:
    out, _ = quantized
    forced = tmp_path / "forced"
    shutil.copytree(out, forced)
    model, _tok = load_model(plain_model)
    from effiminivlm.models import openvino_backend
    from effiminivlm.models.optimize import lean_copy

    lean = lean_copy(model)
    ids = torch.randint(5, 90, (4, 9))
    graph = q.int8_graph(openvino_backend.tower_graph(lean.text_encoder, "text"),
                         [(ids.numpy(), torch.ones_like(ids).numpy())], transformer=True)
    path = q.save_graph(graph, forced / q.GRAPH_DIR / "text-int8.xml")
    q.write_variants(forced, {"image": "fp32", "text": "int8"}, {"text": path}, {})
    variants = load_model(forced)[0].fast_variants
    assert variants["text"] == q.TowerVariant("int8", path) and variants["image"].precision == "fp32"
    preds, levers = _predict(forced, prepared)
    assert "openvino text tower (int8)" in levers and "openvino image tower (fp32)" in levers
    plain, _ = _predict(plain_model, prepared)
    assert np.isfinite(preds).all() and np.abs(preds - plain).max() < 0.5


def test_a_folder_without_a_choice_or_from_another_cpu_runs_the_default_path(plain_model: Path, quantized,
                                                                             prepared: Path,
                                                                             tmp_path: Path) -> None:
    assert load_model(plain_model)[0].fast_variants is None
    plain, plain_levers = _predict(plain_model, prepared)
    moved = tmp_path / "moved"
    shutil.copytree(quantized[0], moved)
    data = json.loads((moved / q.VARIANTS_NAME).read_text())
    flags = set(data["isa"]["cpu_flags"])
    data["isa"]["cpu_flags"] = sorted(flags ^ {"amx_bf16"})  # chosen on a CPU with (or without) AMX
    (moved / q.VARIANTS_NAME).write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="other ISA facts"):
        assert load_model(moved)[0].fast_variants is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again, levers = _predict(moved, prepared)
    assert np.array_equal(again, plain) and levers == plain_levers  # exactly the default path


def test_a_damaged_choice_is_one_clear_error(quantized, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(quantized[0], bad)
    (bad / q.VARIANTS_NAME).write_text(json.dumps({"towers": {"text": {"precision": "int4"}}}))
    with pytest.raises(WeightsError, match="precision in"):
        load_model(bad)
    (bad / q.VARIANTS_NAME).write_text(json.dumps({"towers": {"text": {"precision": "int8",
                                                                        "graph": "fast/none.xml"}}}))
    with pytest.raises(WeightsError, match="graph .* is missing"):
        load_model(bad)
    (bad / q.VARIANTS_NAME).write_text("{")
    with pytest.raises(WeightsError, match="unreadable"):
        load_model(bad)


def test_strict_bounds_refuse_every_variant_but_fp32(plain_model: Path, prepared: Path, tmp_path: Path,
                                                     capsys) -> None:
    code = main(["quantize", "--model", str(plain_model), "--data", str(prepared), "--out",
                 str(tmp_path / "strict"), "--items", "24", "--batch-size", "8", "--precisions", "fp32,int8",
                 "--min-corr", "1.01"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["choice"] == {"image": "fp32", "text": "fp32"}
    assert captured.err.count("int8") >= 2 and "refused, correlation with fp32" in captured.err
    combined = json.loads((tmp_path / "strict" / q.VARIANTS_NAME).read_text())["report"]["combined"]
    assert combined["max_abs_diff"] == 0.0  # all fp32 again: exactly the reference, whatever int8 was built
    assert main(["quantize", "--model", str(plain_model), "--data", str(prepared), "--out",
                 str(tmp_path / "x"), "--precisions", "int4"]) == 2
    assert "--precisions must list fp32" in capsys.readouterr().err


def test_split_keeps_the_calibration_sample_inside_one_split(plain_model: Path, prepared: Path,
                                                             tmp_path: Path) -> None:
    from effiminivlm.data.prepare import read_prepared

    train = read_prepared(prepared, "train").num_rows
    result = quantize_model(plain_model, prepared, tmp_path / "fast", items=10_000, batch_size=8,
                            precisions=("fp32",), split="train", log=lambda _m: None)
    items = result["report"]["items"]
    assert items["calibration"] + items["held_out"] == train < read_prepared(prepared).num_rows


def test_parity_benchmark_scores_held_out_items_per_tower(quantized, plain_model: Path,
                                                          prepared: Path) -> None:
    from effiminivlm.data.prepare import read_prepared
    from effiminivlm.errors import EffiMiniVLMError
    from tests._scripts import load_benchmark

    bench = load_benchmark("bench_quant_parity")
    out, result = quantized
    got = bench.measure(str(out), str(prepared), "test", batch_size=8)
    test_rows = read_prepared(prepared, "test").num_rows
    assert got["stored"] == result["choice"] and got["ran"] == result["choice"]  # what the stored choice ran
    rows = got["parity"]
    assert rows["fast vs fp32"]["items"] == test_rows == got["items"]
    per_tower = {f"{t} tower int8 alone vs fast fp32 towers" for t, p in result["choice"].items()
                 if p == "int8"}
    assert set(rows) == {"fast vs fp32", "fast, every tower fp32 vs fp32", *per_tower}
    for p in rows.values():
        lo, hi = p["plcc_change_ci95"]
        assert lo <= hi and 0 <= p["max_abs_diff"] < 1 and p["corr_fast_fp32"] > 0.5
    line = bench.markdown_row(got)
    assert line.startswith(f"| {out} | {test_rows} |") and line.count("|") == 9
    with pytest.raises(EffiMiniVLMError, match="quantize"):
        bench.measure(str(plain_model), str(prepared), "test")


def _projection_metric(compiled_ref, items: list, weights: np.ndarray):
    """A metric of the kind `quantize` gives the accuracy control: the correlation of a fixed linear read-out
    of the features with the fp32 graph's, and minus the absolute difference per item."""
    ref = np.array([float(np.asarray(compiled_ref(list(x))[0])[0] @ weights) for x, _ in items])

    def metric(compiled, chosen):
        chosen = list(chosen)
        idx = np.array([i for _, i in chosen])
        got = np.array([float(np.asarray(compiled(list(x))[0])[0] @ weights) for x, _ in chosen])
        per = -np.abs(got - ref[idx])
        return float(np.corrcoef(got, ref[idx])[0, 1]), per.tolist()

    return metric


def test_accuracy_control_keeps_the_most_sensitive_ops_in_fp32(plain_model: Path) -> None:
    import openvino as ov

    from effiminivlm.models import openvino_backend
    from effiminivlm.models.optimize import lean_copy

    model, _tok = load_model(plain_model)
    tower = lean_copy(model).image_encoder
    size = model.cfg.input.image_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(24, 3, size, size, generator=gen).numpy() * 2 - 1
    calibration = [(pixels[i:i + 8],) for i in range(0, 24, 8)]
    items = [((pixels[i:i + 1],), i) for i in range(24)]

    def fresh():
        return openvino_backend.tower_graph(tower, "image", size)

    compiled_ref = ov.Core().compile_model(fresh(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    weights = np.random.default_rng(0).standard_normal(model.image_dim)
    metric = _projection_metric(compiled_ref, items, weights)
    plain = q.int8_graph(fresh(), calibration, transformer=False)
    quantized = q.int8_ops(plain)
    assert quantized  # the plain graph computes convolutions in int8

    def score(graph) -> float:
        return metric(ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), items)[0]

    plain_corr = score(plain)
    assert plain_corr < 1.0  # int8 moved the read-out
    loose = q.int8_graph_within(fresh(), calibration, items, metric, max_drop=1.0, transformer=False)
    assert q.int8_ops(loose) == quantized  # within the bound already: nothing goes back to fp32
    drop = (1.0 - plain_corr) / 3  # a bound the plain graph misses
    mixed = q.int8_graph_within(fresh(), calibration, items, metric, max_drop=drop, transformer=False)
    kept = quantized - q.int8_ops(mixed)
    assert kept and q.int8_ops(mixed) < quantized  # some ops went back to fp32, not all of them need to
    assert score(mixed) >= 1.0 - drop - 1e-9 and score(mixed) > plain_corr
    assert not any(name.startswith("?") for name in q.op_types(mixed, kept))  # ops of the graph, typed


def test_a_refused_int8_tower_is_tried_again_with_its_sensitive_ops_in_fp32(
        plain_model: Path, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openvino as ov

    import effiminivlm.evaluation.quantize as eq

    calls = []

    def spy(graph, calibration, validation, metric, max_drop, *, transformer, max_steps=None):
        fp32 = metric(ov.Core().compile_model(graph), validation)
        calls.append({"text": transformer, "max_drop": max_drop, "max_steps": max_steps,
                      "items": len(validation), "fp32_metric": fp32})
        if transformer:
            raise RuntimeError("no luck")  # a failing search: the plain figures stay, with the reason
        mixed = q.int8_graph_within(graph, calibration, validation, metric, max_drop, transformer=transformer,
                                    max_steps=max_steps)
        calls[-1]["int8_ops"] = len(q.int8_ops(mixed))
        return mixed

    monkeypatch.setattr(eq, "int8_graph_within", spy)
    result = quantize_model(plain_model, prepared, tmp_path / "fast", items=24, batch_size=8,
                            precisions=("fp32", "int8"), max_plcc_change=10.0, min_corr=0.9999999,
                            log=lambda _m: None)
    towers = json.loads((tmp_path / "fast" / q.VARIANTS_NAME).read_text())["report"]["towers"]
    assert [c["text"] for c in calls] == [False, True]  # both plain int8 towers missed so strict a bound
    for call in calls:
        assert call["max_drop"] == pytest.approx(0.5e-7) and call["max_steps"] >= 1
        assert call["fp32_metric"][0] == pytest.approx(1.0)  # the fp32 graph scores as fp32 does
        assert len(call["fp32_metric"][1]) == call["items"] > 0  # one value per item, for the ranking
    image, text = towers["image"]["int8"], towers["text"]["int8"]
    assert not image["whole_tower"]["accepted"] and image["int8_ops"] > 0
    assert calls[0]["max_steps"] == image["int8_ops"] // 4
    assert len(image["kept_fp32"]) == image["int8_ops"] - calls[0]["int8_ops"]  # what the search put back
    assert image["ms_per_item"] > 0 and set(image) >= {"corr", "max_abs_diff", "plcc_change", "accepted"}
    assert "no luck" in text["within_bound"] and not text["accepted"] and "kept_fp32" not in text
    assert result["choice"] == {"image": "fp32", "text": "fp32"}
