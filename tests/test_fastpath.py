"""The fast scoring path: length-sorted batches come back in input order, JPEG draft decoding, the optimised
model copy (bf16 weights, channels-last, int8), the hi-res catalog, and the scorer's default path."""

from __future__ import annotations

import io
import pickle
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from effiminivlm import ovgraph
from effiminivlm.config import load_recipe
from effiminivlm.data.images import load_image_with_reason
from effiminivlm.data.images import store as store_module
from effiminivlm.data.inputs import read_inputs
from effiminivlm.data.loader import LengthSortedBatches, ThreadedFetch, restore_order
from effiminivlm.data.prepare import read_prepared
from effiminivlm.data.realistic import write_hi_res_catalog
from effiminivlm.inference import make_loader, run_inference
from effiminivlm.models.factory import create_model, create_tokenizer
from effiminivlm.models.optimize import ModelLevers, optimize_for_inference

from .conftest import SHARED_DEV

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    cfg = load_recipe("tiny", ["input.max_length=256",  # texts of many lengths, as real ones
                               "model.text_encoder.config.max_position_embeddings=256"]).model
    torch.manual_seed(0)
    return create_model(cfg, pretrained=False), create_tokenizer(cfg)


@pytest.fixture(scope="module")
def hi_res(tmp_path_factory):
    """24 items at 300-400 px (small for speed; the benchmark uses 1000-1500), real texts when present."""
    texts = SHARED_DEV / "meta_Amazon_Fashion.jsonl"
    out = tmp_path_factory.mktemp("hires") / "cat"
    write_hi_res_catalog(out, 24, texts=texts if texts.is_file() else None, min_px=300, max_px=400)
    return out


def test_length_sorted_batches_cover_every_row_once_longest_first() -> None:
    lengths = [5, 50, 20, 50, 1, 30, 7]
    batches = list(LengthSortedBatches(lengths, 3))
    assert batches == [[1, 3, 5], [2, 6, 0], [4]]  # stable: equal lengths keep input order
    rows = [r for b in batches for r in b]
    assert [rows[k] for k in restore_order(rows, 7)] == list(range(7))
    windowed = list(LengthSortedBatches(lengths, 2, window=4))  # sorts within rows 0-3, then 4-6
    assert windowed == [[1, 3], [2, 0], [5, 6], [4]]
    with pytest.raises(ValueError, match="covered"):
        restore_order([0, 0, 1], 3)


def test_sorted_loader_returns_input_order_and_less_padding(tiny, hi_res) -> None:
    model, tok = tiny
    src = read_inputs([str(hi_res / "meta_HiRes.jsonl")])
    plain = make_loader(model, tok, src.table, src.store, batch_size=8)
    fast = make_loader(model, tok, src.table, src.store, batch_size=8, sort_by_length=True)
    assert sum(b["input_ids"].numel() for b in fast) < sum(b["input_ids"].numel() for b in plain)
    a = run_inference(model, plain, CPU, progress=False)
    b = run_inference(model, fast, CPU, progress=False)
    assert b.item_id == a.item_id == src.table.column("parent_asin").to_pylist()
    assert b.item_image_status == a.item_image_status
    np.testing.assert_allclose(b.target, a.target)
    np.testing.assert_allclose(b.pred, a.pred, atol=1e-5)  # fp32: only the batch composition changed
    assert np.std(a.pred) > 0


def test_threaded_fetch_decodes_on_several_threads_into_the_same_batches(tiny, hi_res, monkeypatch) -> None:
    model, tok = tiny
    src = read_inputs([str(hi_res / "meta_HiRes.jsonl")])
    seen: set[str] = set()
    load = store_module.load_image_with_reason

    def spy(*args, **kwargs):
        seen.add(threading.current_thread().name)
        return load(*args, **kwargs)

    monkeypatch.setattr(store_module, "load_image_with_reason", spy)
    kw = dict(batch_size=8, sort_by_length=True, draft=True, raw_pixels=True)
    one = list(make_loader(model, tok, src.table, src.store, **kw))
    assert seen == {threading.current_thread().name}
    seen.clear()
    loader = make_loader(model, tok, src.table, src.store, fetch_threads=3, **kw)
    assert isinstance(loader.dataset, ThreadedFetch)
    three = list(loader)
    assert len(seen) > 1 and all(name.startswith("effiminivlm-fetch") for name in seen)
    assert len(one) == len(three)
    for a, b in zip(one, three, strict=True):  # the same items in the same order, the same pixels
        assert torch.equal(a["row"], b["row"]) and torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["image_status"] == b["image_status"]
    # worker processes never get the pool: with workers, threads are not used at all
    assert not isinstance(make_loader(model, tok, src.table, src.store, num_workers=1, fetch_threads=3,
                                      **kw).dataset, ThreadedFetch)
    assert pickle.loads(pickle.dumps(loader.dataset))._pool is None
    with pytest.raises(ValueError):
        ThreadedFetch(loader.dataset.dataset, 0)


def test_draft_decodes_a_big_jpeg_at_a_reduced_scale_covering_the_size() -> None:
    big = Image.new("RGB", (1200, 1000), (200, 30, 40))
    jpeg, png = io.BytesIO(), io.BytesIO()
    big.save(jpeg, "JPEG")
    big.save(png, "PNG")
    img, reason = load_image_with_reason(io.BytesIO(jpeg.getvalue()), draft=224)
    assert reason is None and img.mode == "RGB" and img.size == (300, 250)  # 1/4 scale: both sides >= 224
    assert load_image_with_reason(io.BytesIO(jpeg.getvalue()), draft=450)[0].size == (600, 500)
    assert load_image_with_reason(io.BytesIO(jpeg.getvalue()))[0].size == (1200, 1000)
    assert load_image_with_reason(io.BytesIO(png.getvalue()), draft=224)[0].size == (1200, 1000)


def test_optimized_copy_has_bf16_towers_fp32_head_and_close_scores(tiny, prepared) -> None:
    model, tok = tiny
    table = read_prepared(prepared, "test")
    torch_only = ModelLevers(image_backend="torch", text_backend="torch")
    fast = optimize_for_inference(model, CPU, "bf16", torch_only)
    assert fast is not model and fast.fast_levers == ["cls_only", "bf16_weights", "channels_last"]
    assert {p.dtype for p in fast.image_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fast.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fast.head.parameters()} == {torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the caller's model is untouched
    assert optimize_for_inference(model, CPU, "fp32") is model
    exact = run_inference(model, make_loader(model, tok, table, batch_size=8), CPU, "fp32", progress=False)
    for levers in (torch_only, ModelLevers(bf16_weights=False, int8_linear=True, image_backend="torch",
                                           text_backend="torch")):
        runner = optimize_for_inference(model, CPU, "bf16", levers)
        got = run_inference(runner, make_loader(model, tok, table, batch_size=8, sort_by_length=True),
                            CPU, "bf16", progress=False)
        assert got.pred.dtype == np.float64 and got.item_id == exact.item_id
        assert np.abs(got.pred - exact.pred).max() < 0.005  # on the 1-5 scale (bf16 rounding of features)
    int8 = optimize_for_inference(model, CPU, "bf16", ModelLevers(int8_linear=True, text_backend="torch"))
    assert "DynamicQuantizedLinear" in repr(int8.text_encoder)
    assert int8.text_encoder.num_features == model.text_encoder.num_features


def test_openvino_towers_score_like_pytorch_and_the_graph_cache_is_reused(tiny, prepared, monkeypatch,
                                                                          tmp_path) -> None:
    import openvino as ov

    # a cache of its own: other tests of this worker convert towers of the same tiny model into the shared one
    monkeypatch.setenv("EFFIMINIVLM_CACHE", str(tmp_path / "cache"))
    model, tok = tiny
    table = read_prepared(prepared, "test")
    exact = run_inference(model, make_loader(model, tok, table, batch_size=8), CPU, "fp32", progress=False)
    both = ModelLevers()  # the default: both towers in OpenVINO, the image one in f32
    fast = optimize_for_inference(model, CPU, "bf16", both)
    streams = min(2, torch.get_num_threads())  # ov_streams, capped at the threads a tower gets
    text_prec = ovgraph.native_precision("bf16")  # fp32 on a CPU without native bf16
    assert fast.fast_levers == ["cls_only", "openvino image tower (fp32)",
                                f"openvino text tower ({text_prec})",
                                *([f"{streams} openvino streams"] if streams > 1 else []), "openvino head"]
    assert fast.fast_fallbacks == []
    assert fast.image_encoder.num_features == model.image_encoder.num_features  # read through the wrappers
    graphs = [p for p in ovgraph.cache_dir().iterdir() if p.name != "compiled"]
    assert len(graphs) == 3  # one converted graph per tower, and the head's
    assert len(list((ovgraph.cache_dir() / "compiled").glob("*.blob"))) == 3  # and compiled once
    for raw in (False, True):  # batches of other sizes and lengths than the conversion's example
        got = run_inference(fast, make_loader(model, tok, table, batch_size=7, sort_by_length=True,
                                              raw_pixels=raw), CPU, "bf16", progress=False)
        assert got.item_id == exact.item_id and np.abs(got.pred - exact.pred).max() < 0.005
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("traced")))
    again = optimize_for_inference(model, CPU, "bf16", both)  # every graph comes from the cache now
    assert again.fast_levers == fast.fast_levers


def test_a_precision_the_cpu_lacks_compiles_as_fp32(tiny, monkeypatch) -> None:
    from effiminivlm.models import openvino_backend

    model, _ = tiny
    monkeypatch.setattr(ovgraph, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    assert [ovgraph.native_precision(p) for p in ("bf16", "fp16", "fp32")] == ["fp32"] * 3
    tower = openvino_backend.text_tower(model.text_encoder, "bf16", threads=1)
    assert tower.precision == "fp32"
    assert str(tower.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    monkeypatch.setattr(ovgraph, "cpu_capabilities", lambda: frozenset({"FP32", "BF16"}))
    assert ovgraph.native_precision("bf16") == "bf16"
    assert ovgraph.native_precision("fp16") == "fp32"


def test_openvino_streams_split_a_batch_and_give_the_same_rows(tiny) -> None:
    from effiminivlm.models import openvino_backend

    model, _ = tiny
    torch.manual_seed(1)
    pixels = torch.randn(7, 3, 64, 64)
    ids = torch.randint(5, 90, (5, 11))
    mask = torch.ones_like(ids)
    mask[3:, 6:] = 0
    one_i = openvino_backend.image_tower(model.image_encoder, 64, "fp32", threads=2, streams=1)
    two_i = openvino_backend.image_tower(model.image_encoder, 64, "fp32", threads=2, streams=2)
    one_t = openvino_backend.text_tower(model.text_encoder, "fp32", threads=2, streams=1)
    two_t = openvino_backend.text_tower(model.text_encoder, "fp32", threads=2, streams=2)
    assert (one_i.streams, two_i.streams) == (1, 2)
    capped = openvino_backend.text_tower(model.text_encoder, "fp32", threads=1, streams=2)
    assert capped.streams == 1  # never more streams than threads
    with torch.no_grad():
        for one, two, args in ((one_i, two_i, (pixels,)), (one_t, two_t, (ids, mask))):
            a, b = one(*args), two(*args)
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)  # the same rows, in order
            assert torch.allclose(two(*(t[:1] for t in args)), a[:1], atol=1e-5)  # fewer rows than streams
        want = model.image_encoder.float()(pixels)
    assert torch.allclose(two_i(pixels), want, atol=1e-3)


def test_a_tower_openvino_cannot_build_falls_back_to_pytorch_with_a_warning(tiny, prepared,
                                                                            monkeypatch) -> None:
    from effiminivlm.models import openvino_backend, optimize

    model, tok = tiny
    monkeypatch.setattr(optimize, "openvino_available", lambda: False)
    with pytest.warns(UserWarning, match="openvino is not installed"):
        fast = optimize_for_inference(model, CPU, "bf16")
    assert fast.fast_levers == ["cls_only", "bf16_weights", "channels_last"]
    assert fast.fast_fallbacks == [f"{t} tower: openvino is not installed (pip install openvino)"
                                   for t in ("image", "text")]
    monkeypatch.setattr(optimize, "openvino_available", lambda: True)
    monkeypatch.setattr(openvino_backend, "text_tower",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("op X")))
    with pytest.warns(UserWarning, match=r"text tower: OpenVINO conversion failed \(RuntimeError: op X\)"):
        fast = optimize_for_inference(model, CPU, "bf16", ModelLevers(image_fp32=False, ov_streams=1))
    image_prec = ovgraph.native_precision("bf16")
    assert fast.fast_levers == ["cls_only", f"openvino image tower ({image_prec})", "openvino head",
                                "bf16_weights"]
    table = read_prepared(prepared, "test")
    got = run_inference(fast, make_loader(model, tok, table, batch_size=8), CPU, "bf16", progress=False)
    assert np.isfinite(got.pred).all() and len(got.pred) == table.num_rows


def test_raw_pixel_batches_are_uint8_and_score_as_the_normalised_ones(tiny, hi_res) -> None:
    model, tok = tiny
    src = read_inputs([str(hi_res / "meta_HiRes.jsonl")])
    raw = next(iter(make_loader(model, tok, src.table, src.store, batch_size=6, draft=True, raw_pixels=True)))
    flt = next(iter(make_loader(model, tok, src.table, src.store, batch_size=6, draft=True)))
    assert raw["pixel_values"].dtype == torch.uint8 and flt["pixel_values"].dtype == torch.float32
    mean, std = model.processor(tok).norm_stats()
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    expect = (raw["pixel_values"].float() / 255 - mean_t) / std_t
    assert torch.allclose(expect, flt["pixel_values"], atol=1e-6)  # same pixels, normalised later
    fast = optimize_for_inference(model, CPU, "bf16", ModelLevers(image_backend="torch",
                                                                  text_backend="torch"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = fast(raw), fast(flt)
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(RuntimeError):  # the exact model never takes raw pixels: loud, not silently wrong
        model(raw)


def test_hi_res_catalog_has_real_texts_and_big_jpegs(hi_res) -> None:
    lines = (hi_res / "meta_HiRes.jsonl").read_text().splitlines()
    assert len(lines) == 24
    src = read_inputs([str(hi_res / "meta_HiRes.jsonl")])
    assert src.table.num_rows == 24 and len(set(src.table.column("parent_asin").to_pylist())) == 24
    sizes = [Image.open(p).size for p in sorted((hi_res / "images").glob("*.jpg"))]
    assert len(sizes) == 24 and all(300 <= w <= 400 and w == h for w, h in sizes)
    paths = [src.store.resolve(refs[0]) for refs in src.table.column("images").to_pylist()]
    assert all(p is not None for p in paths)
    if (SHARED_DEV / "meta_Amazon_Fashion.jsonl").is_file():  # real titles, not the generator's
        first = (SHARED_DEV / "meta_Amazon_Fashion.jsonl").read_text().splitlines()[0]
        assert src.table.column("title")[0].as_py()[:20] in first
    with pytest.raises(Exception, match="not empty"):
        write_hi_res_catalog(hi_res, 2)


@pytest.fixture(scope="module")
def saved_tiny(tiny, tmp_path_factory):
    model, tok = tiny
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder, tokenizer=tok)
    return folder


def test_export_onnx_matches_the_pytorch_model_at_other_batch_and_length(tmp_path, saved_tiny) -> None:
    ort = pytest.importorskip("onnxruntime")
    import json

    from effiminivlm.cli import main
    from effiminivlm.models.factory import load_model

    out = tmp_path / "exported"
    assert main(["export", "--model", str(saved_tiny), "--out", str(out), "--format", "onnx"]) == 0
    written = {p.name for p in out.iterdir()}
    assert {"model.onnx", "preprocess.json", "config.json", "tokenizer.json"} <= written
    pre = json.loads((out / "preprocess.json").read_text())
    model, tok = load_model(saved_tiny)
    assert pre["image"]["size"] == [64, 64] and pre["text"]["max_length"] == model.cfg.input.max_length
    texts = ["a", "blue canvas tote bag with zip " * 4, "mug", "leather shoe, size 9", "x " * 80]
    enc = tok(texts, padding="longest", truncation=True, max_length=256, return_tensors="np")
    pixels = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    has = torch.tensor([True, False, True, True, False])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["score"], {"pixel_values": pixels.numpy(), "input_ids": enc["input_ids"],
                                  "attention_mask": enc["attention_mask"], "has_image": has.numpy()})[0]
    with torch.no_grad():
        want = model(pixels, torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]), has)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    assert np.std(want.numpy()) > 0
    assert main(["export", "--model", str(saved_tiny), "--out", str(out)]) == 2  # not empty: refused


def test_export_openvino_ir_matches_the_pytorch_model(tmp_path, saved_tiny) -> None:
    ov = pytest.importorskip("openvino")
    from effiminivlm.models.export import example_inputs, export_model
    from effiminivlm.models.factory import load_model

    info = export_model(saved_tiny, tmp_path / "ov", "openvino")
    assert info["files"][:2] == ["model.xml", "model.bin"] and info["check_max_abs_diff"] < 1e-3
    model, tok = load_model(saved_tiny)
    inputs = example_inputs(model, tok, batch=4)
    compiled = ov.Core().compile_model(str(tmp_path / "ov" / "model.xml"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    names = ("pixel_values", "input_ids", "attention_mask", "has_image")
    got = compiled({n: t.numpy() for n, t in zip(names, inputs, strict=True)})[compiled.output(0)]
    with torch.no_grad():
        want = model(*inputs)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_bucketed_training_batches_cover_each_row_once_with_similar_lengths() -> None:
    from effiminivlm.data.loader import BucketedShuffledBatches

    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, size=200).tolist()
    batches = list(BucketedShuffledBatches(lengths, 8, seed=3, pool_batches=5))
    assert sorted(r for b in batches for r in b) == list(range(200)) and len(batches) == 25
    assert [b for b in BucketedShuffledBatches(lengths, 8, seed=3, pool_batches=5)] == batches  # reproducible
    assert list(BucketedShuffledBatches(lengths, 8, seed=4, pool_batches=5)) != batches  # a new epoch differs
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    random_spread = np.mean([np.ptp(rng.choice(lengths, 8)) for _ in range(200)])
    assert spread < 0.5 * random_spread  # similar lengths in a batch: little padding


def test_train_with_bucketed_batches_and_draft_decoding(tiny_recipe, prepared, tmp_path) -> None:
    from effiminivlm.config import load_recipe
    from effiminivlm.training import loop

    recipe = load_recipe(tiny_recipe.to_dict(), ["data.bucket_by_length=true", "data.draft_decode=true"])
    seen: list[list[str]] = []
    step = loop.train_step

    def spy(model, batch, *args, **kwargs):
        seen.append(list(batch["item_id"]))
        return step(model, batch, *args, **kwargs)

    loop.train_step = spy
    try:
        summary = loop.train(recipe, prepared, tmp_path / "run", progress=False, log=lambda _: None)
    finally:
        loop.train_step = step
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file() and summary
    assert len(seen) == 6 and all(len(b) == 8 for b in seen)
    assert seen[:3] != seen[3:]  # each epoch draws its own bucketed batches


def test_benchmark_baseline_reference_reports_every_path_on_the_same_items(hi_res, saved_tiny, tmp_path,
                                                                           capsys) -> None:
    import json

    from effiminivlm.cli import main

    args = ["benchmark", "--baseline", "reference", "--model", str(saved_tiny), "--data",
            str(hi_res / "meta_HiRes.jsonl"), "--batch-size", "4", "--warmup", "1", "--max-samples", "12",
            "--json", str(tmp_path / "t3.json"), "--markdown", str(tmp_path / "t3.md")]
    assert main(args) == 0
    report = json.loads((tmp_path / "t3.json").read_text())
    names = [r["name"] for r in report["runs"]]
    from effiminivlm.bench.variants import variant_models
    from effiminivlm.models.factory import load_model

    assert names[:3] == ["reference pipeline", "fp32, no acceleration", "fast"]
    assert names[3:] == [n for n, _ in variant_models(load_model(saved_tiny)[0])]  # a row per variant
    assert names[3] == "variant: every tower fp32" and report["parity"][f"{names[3]} vs fp32"]["items"] == 12
    assert all(r["samples"] == 12 and r["samples_per_s"] > 0 for r in report["runs"])
    ref = report["runs"][0]["samples_per_s"]
    assert report["fast_speedup_vs_reference"] == round(report["runs"][2]["samples_per_s"] / ref, 2)
    assert "length-sorted batches" in report["runs"][2]["techniques"]
    par = report["parity"]["fast_vs_fp32"]
    assert par["items"] == 12 and 0 < par["max_abs_diff"] < 0.01 and abs(par["plcc_change"]) < 0.5
    lo, hi = par["plcc_change_ci95"]  # paired bootstrap over the 12 items
    assert -2 <= lo <= hi <= 2
    assert report["matmul_peak"]["bf16_gflops"] > 0 and report["matmul_peak"]["fp32_gflops"] > 0
    parts = [(t["part"], t["precision"]) for t in report["model_only"]]  # the fast model's, then fp32's
    text_prec = ovgraph.native_precision("bf16")  # what the OpenVINO text tower really ran in on this CPU
    assert parts[:2] == [("text_encoder", text_prec), ("image_encoder", "fp32")]
    assert parts[2] == ("model", "fp32" if text_prec == "fp32" else "mixed (image fp32, text bf16)")
    assert all(t["gflop"] > 0 and t["gflop_per_s"] > 0 for t in report["model_only"])
    text_gflop = [t["gflop"] for t in report["model_only"] if t["part"] == "text_encoder"]
    assert text_gflop[0] < text_gflop[1]  # the cls_only tower is credited only with what it runs
    assert report["runs"][2]["techniques"][0] == f"image tower fp32, text tower {text_prec}"
    assert report["text_tower_share_of_peak"]["peak"] == f"{text_prec} peak"
    bd = report["text_tower_breakdown"]  # where the fast text tower's time went, shares of one forward
    assert abs(bd["matmul_time_share"] + bd["attention_time_share"] + bd["other_time_share"] - 1) < 0.01
    assert bd["matmul_gflop_per_s"] > 0 and bd["matmul_time_share"] > 0
    assert bd["ceiling_gflop_per_s"] > 0 and bd["alone_attention_ms"] > 0  # the isolated-op ceiling
    assert report["active_params_m"] > 0 and report["flops_g_canonical"] > 0 and report["warmup_batches"] == 1
    md = (tmp_path / "t3.md").read_text()
    assert "| reference pipeline |" in md and "x reference" in md and "share of peak" in md
    assert "Ceiling of the text tower" in md and "95% bootstrap" in md
    assert "| fast |" in capsys.readouterr().out
    assert main([*args[:2], "best", *args[3:]]) == 2
    assert "--baseline must be one of reference" in capsys.readouterr().err
