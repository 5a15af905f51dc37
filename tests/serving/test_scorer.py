from __future__ import annotations

import csv

import numpy as np
import torch

from effiminivlm.data.dataset import ProductDataset
from effiminivlm.data.prepare import read_prepared
from effiminivlm.models.factory import create_transforms, load_model
from effiminivlm.serving.scorer import Scorer, create_scorer, products_table


def _direct_scores(model_dir, table) -> np.ndarray:
    """The model's own forward, one item at a time without padding or collation (fp32, no autocast)."""
    model, tokenizer = load_model(model_dir)
    ds = ProductDataset(table, create_transforms(model.cfg), images="first")
    out = []
    with torch.no_grad():
        for i in range(len(ds)):
            sample = ds[i]
            enc = tokenizer(sample.text, truncation=True, max_length=model.cfg.input.max_length,
                            return_tensors="pt")
            pixels = sample.images[0][None] if sample.images else None
            out.append(float(model(pixels, enc["input_ids"], enc["attention_mask"])[0]))
    return np.array(out)


def test_scores_are_the_models_own_forward_distinct_and_in_input_order(serve_model, prepared):
    table = read_prepared(prepared, "test")
    direct = _direct_scores(serve_model, table)
    assert np.all((direct > 1) & (direct < 5))  # nothing clipped: the comparison below is exact
    scorer = create_scorer(serve_model, precision="fp32", batch_size=7)
    scores = scorer.score_table(table, progress=False).pred
    np.testing.assert_allclose(scores, direct, rtol=0, atol=1e-6)
    assert len(set(scores.tolist())) == table.num_rows  # different items, different scores
    reversed_table = table.take(np.arange(table.num_rows)[::-1])
    res = scorer.score_table(reversed_table, progress=False)
    assert res.item_id == table.column("parent_asin").to_pylist()[::-1]
    np.testing.assert_allclose(res.pred, scores[::-1], rtol=0, atol=1e-6)


def test_default_precision_scores_stay_distinct(serve_model, prepared):
    """`precision="auto"` is bf16 on a CPU: the towers may round, the scores must not collapse."""
    table = read_prepared(prepared, "test")
    auto = create_scorer(serve_model, batch_size=7)
    assert auto.precision == "bf16"
    scores = auto.score_table(table, progress=False).pred
    assert scores.dtype == np.float64 and len(set(scores.tolist())) == table.num_rows
    np.testing.assert_allclose(scores, _direct_scores(serve_model, table), rtol=0, atol=0.05)


def test_score_table_matches_a_direct_forward_and_clips(serve_model, prepared):
    scorer = create_scorer(serve_model, precision="fp32", batch_size=7)
    table = read_prepared(prepared, "test")
    res = scorer.score_table(table, progress=False)
    assert res.item_id == table.column("parent_asin").to_pylist()
    assert np.all((res.pred >= 1) & (res.pred <= 5))
    assert res.image_status["ok"] == table.num_rows
    # the same rows one by one through the model give the same scores (batching and padding do not leak)
    one_by_one = Scorer.from_pretrained(serve_model, precision="fp32", batch_size=1)
    single = one_by_one.score_table(table, progress=False)
    np.testing.assert_allclose(single.pred, res.pred, atol=1e-5)


def test_mean_images_differs_from_first_only_for_multi_image_items(serve_model, prepared):
    table = read_prepared(prepared, "test")
    first = create_scorer(serve_model, precision="fp32").score_table(table, progress=False).pred
    mean = create_scorer(serve_model, precision="fp32", images="mean").score_table(table, progress=False).pred
    n_images = np.array([len(x) for x in table.column("images").to_pylist()])
    assert (n_images > 1).any() and (n_images == 1).any()
    np.testing.assert_allclose(mean[n_images == 1], first[n_images == 1], atol=1e-5)
    assert not np.allclose(mean[n_images > 1], first[n_images > 1], atol=1e-6)


def test_score_plain_dicts_without_images(serve_model):
    scorer = create_scorer(serve_model, precision="fp32")
    products = [{"title": "Sturdy boots", "features": ["leather"], "description": "",
                 "main_category": "Shoes"}, {"title": "x", "category": "Home"}]
    scores = scorer.score(products)
    assert scores.shape == (2,) and scores[0] != scores[1]
    direct = _direct_scores(serve_model, products_table(products))
    np.testing.assert_allclose(scores, direct, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scorer.score(products[::-1]), scores[::-1], rtol=0, atol=1e-6)
    t = products_table([{"title": "<b>Bold</b> http://x.y", "features": ["a", "b"]}])
    assert t.column("title")[0].as_py() == "Bold" and t.column("features")[0].as_py() == "a b"


def test_predict_writes_a_lovif_submission_from_each_input_kind(serve_model, prepared, synth_catalog,
                                                                 tmp_path):
    from effiminivlm.serving.predict import predict

    runs = {
        "prepared": ([str(prepared)], {"split": "test"}),
        "lovif": ([str(synth_catalog / "lovif" / "input.csv")], {}),
        "meta": ([str(synth_catalog / "meta_Synthetic.jsonl")], {}),
    }
    for kind, (inputs, kw) in runs.items():
        out = tmp_path / f"{kind}.csv"
        summary = predict(serve_model, inputs, out, precision="fp32", progress=False, **kw)
        assert summary["input_kind"] == kind
        rows = list(csv.DictReader(out.open()))
        assert list(rows[0]) == ["item_id", "score", "params", "flops"]
        assert len(rows) == summary["items"] > 0
        assert len({r["item_id"] for r in rows}) == len(rows)
        assert all(1 <= float(r["score"]) <= 5 for r in rows)
        assert {r["params"] for r in rows} == {f"{summary['params_m']:.4f}"}
        assert float(rows[0]["flops"]) > 0
    assert summary["items"] == 160  # every catalog item, rated or not, is scored from meta files
