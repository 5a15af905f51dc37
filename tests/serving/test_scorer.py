from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from effiminivlm.data.prepare import read_prepared
from effiminivlm.models.factory import create_model, create_tokenizer
from effiminivlm.serving.scorer import Scorer, create_scorer, products_table
from effiminivlm.training.loop import init_output_bias


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from effiminivlm.config import load_recipe

    cfg = load_recipe("tiny").model
    torch.manual_seed(0)
    model = create_model(cfg, pretrained=False)
    init_output_bias(model, 3.0)  # random-init outputs sit near 0 and would all clip to 1
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder, tokenizer=create_tokenizer(cfg.text_encoder))
    return folder


def test_score_table_matches_a_direct_forward_and_clips(saved_tiny, prepared):
    scorer = create_scorer(saved_tiny, precision="fp32", batch_size=7)
    table = read_prepared(prepared, "test")
    res = scorer.score_table(table, progress=False)
    assert res.item_id == table.column("parent_asin").to_pylist()
    assert np.all((res.pred >= 1) & (res.pred <= 5))
    assert res.image_status["ok"] == table.num_rows
    # the same rows one by one through the model give the same scores (batching and padding do not leak)
    one_by_one = Scorer.from_pretrained(saved_tiny, precision="fp32", batch_size=1)
    single = one_by_one.score_table(table, progress=False)
    np.testing.assert_allclose(single.pred, res.pred, atol=1e-5)


def test_mean_images_differs_from_first_only_for_multi_image_items(saved_tiny, prepared):
    table = read_prepared(prepared, "test")
    first = create_scorer(saved_tiny, precision="fp32").score_table(table, progress=False).pred
    mean = create_scorer(saved_tiny, precision="fp32", images="mean").score_table(table, progress=False).pred
    n_images = np.array([len(x) for x in table.column("images").to_pylist()])
    assert (n_images > 1).any() and (n_images == 1).any()
    np.testing.assert_allclose(mean[n_images == 1], first[n_images == 1], atol=1e-5)
    assert not np.allclose(mean[n_images > 1], first[n_images > 1], atol=1e-6)


def test_score_plain_dicts_without_images(saved_tiny):
    scorer = create_scorer(saved_tiny, precision="fp32")
    scores = scorer.score([{"title": "Sturdy boots", "features": ["leather"], "description": "",
                            "main_category": "Shoes"}, {"title": "x", "category": "Home"}])
    assert scores.shape == (2,) and np.all((scores >= 1) & (scores <= 5))
    t = products_table([{"title": "<b>Bold</b> http://x.y", "features": ["a", "b"]}])
    assert t.column("title")[0].as_py() == "Bold" and t.column("features")[0].as_py() == "a b"


def test_predict_writes_a_lovif_submission_from_each_input_kind(saved_tiny, prepared, synth_catalog,
                                                                 tmp_path):
    from effiminivlm.serving.predict import predict

    runs = {
        "prepared": ([str(prepared)], {"split": "test"}),
        "lovif": ([str(synth_catalog / "lovif" / "input.csv")], {}),
        "meta": ([str(synth_catalog / "meta_Synthetic.jsonl")], {}),
    }
    for kind, (inputs, kw) in runs.items():
        out = tmp_path / f"{kind}.csv"
        summary = predict(saved_tiny, inputs, out, precision="fp32", progress=False, **kw)
        assert summary["input_kind"] == kind
        rows = list(csv.DictReader(out.open()))
        assert list(rows[0]) == ["item_id", "score", "params", "flops"]
        assert len(rows) == summary["items"] > 0
        assert len({r["item_id"] for r in rows}) == len(rows)
        assert all(1 <= float(r["score"]) <= 5 for r in rows)
        assert {r["params"] for r in rows} == {f"{summary['params_m']:.4f}"}
        assert float(rows[0]["flops"]) > 0
    assert summary["items"] == 160  # every catalog item, rated or not, is scored from meta files
