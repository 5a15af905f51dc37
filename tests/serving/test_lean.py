"""The torch-free fast path of `predict`: a plan recorded by the PyTorch scorer, then the same scores from
OpenVINO + tokenizers + Pillow + numpy, the fallback to PyTorch whenever the plan does not apply, and a whole
`predict` process that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from effiminivlm.config import load_recipe
from effiminivlm.data.images import load_image_with_reason
from effiminivlm.data.inputs import read_inputs
from effiminivlm.data.realistic import write_hi_res_catalog
from effiminivlm.models.factory import create_model, create_tokenizer
from effiminivlm.serving import plan as plan_module
from effiminivlm.serving.lean import LeanScorer
from effiminivlm.serving.predict import predict
from effiminivlm.serving.scorer import Scorer

from ..conftest import SHARED_DEV

SRC = Path(__file__).resolve().parents[2] / "src"
HEAVY = ("torch", "timm", "torchvision", "transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny random-init model (texts up to 256 tokens, as real ones) saved with its tokenizer."""
    cfg = load_recipe("tiny", ["input.max_length=256",
                               "model.text_encoder.config.max_position_embeddings=256"]).model
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("lean") / "model"
    create_model(cfg, pretrained=False).save_pretrained(out, tokenizer=create_tokenizer(cfg))
    return out


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> Path:
    """20 items with real texts (when present) and JPEGs, plus items whose images fall back or fail: no
    image, a missing file, a broken first image before a good one, a broken only image."""
    out = tmp_path_factory.mktemp("lean-items") / "cat"
    write_hi_res_catalog(out, 20, texts=SHARED_DEV / "meta_Amazon_Fashion.jsonl"
                         if (SHARED_DEV / "meta_Amazon_Fashion.jsonl").is_file() else None,
                         min_px=120, max_px=200)
    (out / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows = [json.loads(line) for line in (out / "meta_HiRes.jsonl").read_text().splitlines()]
    good = rows[0]["images"][0]
    broken = {**good, **dict.fromkeys(("hi_res", "large", "thumb"), "images/broken.jpg")}
    missing = {**good, **dict.fromkeys(("hi_res", "large", "thumb"), "images/none.jpg")}
    for i, imgs in enumerate(([], [missing], [broken, good], [broken])):
        rows.append({**rows[i + 1], "parent_asin": f"X{i}", "images": imgs})
    (out / "meta_HiRes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / "meta_HiRes.jsonl"


@pytest.fixture(scope="module")
def warm(folder, items, tmp_path_factory):
    """(graph cache, summary, submission) of a first `predict` in a cache of its own: nothing was recorded
    before it (the lean scorer does not apply), the PyTorch scorer ran and recorded the folder's plan."""
    root = tmp_path_factory.mktemp("warm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFIMINIVLM_CACHE", str(root / "cache"))
        assert LeanScorer.load(folder) is None
        summary = predict(folder, [str(items)], root / "torch.csv", batch_size=8, progress=False)
        yield root / "cache", summary, root / "torch.csv"


@pytest.fixture()
def cache(warm, monkeypatch) -> Path:
    """The warm graph cache, with the folder's plan."""
    monkeypatch.setenv("EFFIMINIVLM_CACHE", str(warm[0]))
    return warm[0]


def test_the_lean_path_scores_as_the_pytorch_fast_path(folder, items, warm, cache, tmp_path) -> None:
    src = read_inputs([str(items)])
    _, first, torch_csv = warm
    plans = list((cache / "openvino" / "plans").iterdir())
    assert len(plans) == 1 and (plans[0] / "plan.json").is_file()
    lean = LeanScorer.load(folder, batch_size=8)
    assert lean is not None and set(lean.graphs) == {"image", "text", "head"}
    second = predict(folder, [str(items)], tmp_path / "b.csv", batch_size=8, progress=False)
    assert second["image_status"] == first["image_status"]
    assert set(first["image_status"]) >= {"ok", "no_ref", "fallback", "decode_error", "unresolved"}
    assert (tmp_path / "b.csv").read_text() == torch_csv.read_text()  # the same submission, byte for byte
    # the same batches, tokens, pixels and graphs: the same bits
    torch_scorer = Scorer.from_pretrained(folder, batch_size=8)
    want = torch_scorer.score_table(src.table, src.store, progress=False)
    got = lean.score_table(src.table, src.store, progress=False)
    assert got.item_id == want.item_id and got.item_image_status == want.item_image_status
    assert np.array_equal(got.pred, want.pred)
    texts = [f"{t} and some more words" * k for k, t in enumerate(["a", "b", "c"], start=1)] + ["x " * 400]
    enc = torch_scorer.tokenizer(texts, padding="longest", truncation=True, max_length=256,
                                 return_tensors="np")
    mine = lean.tokenizer.encode_batch(texts)
    assert np.array_equal(enc["input_ids"], [e.ids for e in mine])
    assert np.array_equal(enc["attention_mask"], [e.attention_mask for e in mine])
    transform = torch_scorer.model.processor(None).transform(raw=True)
    for path in sorted((items.parent / "images").glob("hr*.jpg"))[:4]:
        img, _ = load_image_with_reason(path, draft=64)
        assert np.array_equal(transform(img).numpy(), lean.pixels(img))


def test_pytorch_runs_whenever_the_plan_does_not_apply(folder, items, warm, cache, tmp_path, monkeypatch
                                                       ) -> None:
    assert LeanScorer.load(folder) is not None
    for kwargs in ({"precision": "fp32"}, {"images": "mean"}, {"num_workers": 1}, {"device": "cuda"}):
        assert LeanScorer.load(folder, **kwargs) is None, kwargs
    monkeypatch.setattr(plan_module, "isa_facts", lambda: {"openvino": ["FP32"], "cpu_flags": []})
    assert LeanScorer.load(folder) is None  # another CPU: another key, no plan
    monkeypatch.undo()
    monkeypatch.setenv("EFFIMINIVLM_CACHE", str(cache))
    for plan in (cache / "openvino" / "plans").iterdir():  # a plan whose graph is gone is no plan
        graph = Path(json.loads((plan / "plan.json").read_text())["towers"]["text"]["graph"])
        graph.with_suffix(".bin").rename(graph.with_suffix(".bak"))
        assert LeanScorer.load(folder) is None
        graph.with_suffix(".bak").rename(graph.with_suffix(".bin"))
        recorded = json.loads((plan / "plan.json").read_text())
        del recorded["cost"]  # a plan older than its params / FLOPs: it cannot stand in for cost.json
        (plan / "plan.json").write_text(json.dumps(recorded))
        assert LeanScorer.load(folder) is None
        (plan / "plan.json").write_text("{")  # a damaged plan: PyTorch runs and records it again
        assert LeanScorer.load(folder) is None
        predict(folder, [str(items)], tmp_path / "again.csv", batch_size=8, progress=False)
        assert json.loads((plan / "plan.json").read_text())["towers"]["text"]["graph"] == str(graph)
    assert LeanScorer.load(folder) is not None
    copy = tmp_path / "edited"  # other weights: another key
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert LeanScorer.load(copy) is None
    cost = folder / "cost.json"  # a folder without cost.json (read-only): the plan has the counts
    saved = cost.read_bytes()
    cost.unlink()
    try:
        lean = LeanScorer.load(folder)
        assert lean is not None and lean.cost == (warm[1]["params_m"], warm[1]["flops_g"])
    finally:
        cost.write_bytes(saved)


def test_a_warm_predict_process_never_imports_torch(folder, items, warm, cache, tmp_path) -> None:
    code = ("import sys; from effiminivlm.cli import main; "
            f"rc = main(['predict', {str(items)!r}, '--model', {str(folder)!r}, '--out', "
            f"{str(tmp_path / 'out.csv')!r}, '--batch-size', '8']); "
            f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(SRC), "EFFIMINIVLM_CACHE": str(cache), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout
    assert (tmp_path / "out.csv").read_text() == warm[2].read_text()
