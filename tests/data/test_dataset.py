from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from PIL import Image

from effiminivlm.data.dataset import Collator, ProductDataset, mean_token_length
from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import read_prepared
from effiminivlm.models.factory import create_tokenizer, create_transforms


@pytest.fixture(scope="module")
def tok_and_tf():
    from effiminivlm.config import load_recipe

    cfg = load_recipe("tiny").model
    return create_tokenizer(cfg), create_transforms(cfg)


def _table(tmp_path, refs_per_row):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    names = {"good": str(good), "broken": str(broken), "tiny": str(tiny), "gone": str(tmp_path / "gone.jpg"),
             "url": "https://example.com/x.jpg"}
    n = len(refs_per_row)
    return pa.table({
        "parent_asin": [f"A{i}" for i in range(n)], "category": ["Cat"] * n, "title": ["A title"] * n,
        "features": ["f1 f2"] * n, "description": ["desc"] * n,
        "images": [[names[r] for r in refs] for refs in refs_per_row],
        "average_rating": [4.0] * n, "rating_number": [3] * n,
    })


def test_image_fallbacks_are_reported_per_sample(tmp_path, tok_and_tf):
    _, tf = tok_and_tf
    t = _table(tmp_path, [["good"], ["broken", "good"], ["broken"], ["tiny"], ["gone"], [], ["url"]])
    ds = ProductDataset(t, tf, ImageStore(None), "first")
    statuses = [ds[i].image_status for i in range(len(ds))]
    assert statuses[:2] == ["ok", "fallback"]
    assert statuses[5] == "no_ref" and statuses[4] == "unresolved" and statuses[6] == "unresolved"
    assert statuses[2] not in ("ok", "fallback") and statuses[3] not in ("ok", "fallback")
    assert [len(ds[i].images) for i in range(len(ds))] == [1, 1, 0, 0, 0, 0, 0]
    assert ds.text(0) == "Main category: Cat\nTitle: A title\nFeatures: f1 f2\nDescription: desc"


def test_collate_pads_to_longest_and_zero_fills_missing_images(tmp_path, tok_and_tf):
    tok, tf = tok_and_tf
    t = _table(tmp_path, [["good"], []])
    ds = ProductDataset(t, tf, None, "first")
    batch = Collator(tok, max_length=64)([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["has_image"].tolist() == [True, False]
    assert torch.all(batch["pixel_values"][1] == 0)
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())  # longest, not max_length
    assert "all_pixel_values" not in batch
    only_text = Collator(tok, max_length=8)([ds[1]])
    assert only_text["pixel_values"] is None and only_text["input_ids"].shape[1] == 8  # truncated


def test_mean_mode_keeps_every_usable_image(tmp_path, tok_and_tf):
    tok, tf = tok_and_tf
    t = _table(tmp_path, [["good", "broken", "good"], ["good"]])
    ds = ProductDataset(t, tf, None, "mean")
    batch = Collator(tok, 32)([ds[0], ds[1]])
    assert batch["all_pixel_values"].shape[0] == 3 and batch["image_index"].tolist() == [0, 0, 1]


def test_text_only_mode_never_opens_images(tmp_path):
    t = _table(tmp_path, [["broken"]])
    ds = ProductDataset(t, None, None, "none")
    assert ds[0].images == [] and ds[0].image_status == "skipped"


def test_prepared_rows_round_trip(prepared, tok_and_tf):
    tok, tf = tok_and_tf
    table = read_prepared(prepared, "train")
    ds = ProductDataset(table, tf, None, "first")
    s = ds[0]
    assert 1 <= s.target <= 5 and s.image_status == "ok"
    assert s.text.startswith("Main category: ")
    mean, rows = mean_token_length(ds, tok, 64)
    assert 5 < mean <= 64 and rows == len(ds)  # small datasets are read whole
