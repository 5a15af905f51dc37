"""Label vocabulary from `categories` (counted, min frequency) and the synthetic multi-label target, which
needs both the image and the text: an image-only classifier loses mAP."""

from __future__ import annotations

import gzip
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effiminivlm.data.labels import LabelVocab, build_label_vocab, read_categories
from effiminivlm.data.meta import InputLog
from effiminivlm.data.synth import make_item
from effiminivlm.errors import DataError
from effiminivlm.evaluation.classification import classification_metrics


def test_vocab_counts_each_label_once_per_item_and_keeps_frequent_ones() -> None:
    items = [["Home", "Kitchen", "Home"], ["Home", " Kitchen  "], ["Home", "Bath"], [], ["Toys"]]
    vocab = build_label_vocab(items, min_freq=2)
    assert vocab.labels == ["Home", "Kitchen"] and vocab.counts == {"Home": 3, "Kitchen": 2}
    assert (vocab.n_items, vocab.items_without_labels, vocab.dropped_labels, vocab.dropped) == (5, 1, 2, 2)
    assert vocab.encode(["Kitchen", "Bath"]).tolist() == [0.0, 1.0]
    assert vocab.encode_many(items).shape == (5, 2) and vocab.decode([0.7, 0.2]) == ["Home"]
    top3 = build_label_vocab(items, min_freq=1, max_labels=3).labels
    assert top3 == ["Home", "Kitchen", "Bath"]  # ties in count go by name
    with pytest.raises(DataError, match="min_freq"):
        build_label_vocab(items, min_freq=0)


def test_vocab_saves_and_loads(tmp_path: Path) -> None:
    vocab = build_label_vocab([["a", "b"], ["a"]], min_freq=1)
    loaded = LabelVocab.load(vocab.save(tmp_path / "labels.json"))
    assert loaded.labels == ["a", "b"] and loaded.index == {"a": 0, "b": 1} and loaded.counts == vocab.counts
    (tmp_path / "x.json").write_text('{"labels": []}')
    with pytest.raises(DataError, match=r"x\.json: not a label vocabulary"):
        LabelVocab.load(tmp_path / "x.json")
    with pytest.raises(DataError, match="no such label vocabulary"):
        LabelVocab.load(tmp_path / "missing.json")


def test_read_categories_counts_bad_rows_with_file_and_line(tmp_path: Path) -> None:
    rows = [{"parent_asin": "A1", "categories": ["Home", "Kitchen"]}, "not json",
            {"parent_asin": "A2", "categories": "Home"}, {"categories": ["x"]},
            {"parent_asin": "A1", "categories": ["Other"]}, {"parent_asin": "A3"}]
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    plain = tmp_path / "meta_Home.jsonl"
    plain.write_text(text)
    zipped = tmp_path / "meta_Toys.jsonl.gz"
    zipped.write_bytes(gzip.compress(json.dumps({"parent_asin": "B1", "categories": ["Toys"]}).encode()))
    log = InputLog()
    cats = read_categories([plain, zipped], log)
    assert cats == {"A1": ["Home", "Kitchen"], "A3": [], "B1": ["Toys"]}
    assert log.bad == {"invalid_json": 1, "bad_categories": 1, "missing_parent_asin": 1,
                       "duplicate_parent_asin": 1}
    assert any(e.startswith(f"{plain}:3: categories must be a list") for e in log.examples["bad_categories"])
    with pytest.raises(DataError, match=re.escape(f"{plain}:2: ")):
        read_categories([plain], InputLog(strict=True))


def test_synthetic_catalog_carries_categories(synth_catalog: Path) -> None:
    cats = read_categories([synth_catalog / "meta_Synthetic.jsonl"])
    assert len(cats) == 160 and all(len(c) == 5 for c in cats.values())
    vocab = build_label_vocab(cats.values(), min_freq=3)
    assert {"Red Collection", "Premium Selection", "Value Buys"} <= set(vocab.labels)


# ------------------------------------------------------------------ the target needs both modalities


def _features(n: int, start: int) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """4x4 mean-colour image features, product texts and categories of synthetic items [start, start+n)."""
    images, texts, cats = [], [], []
    for i in range(start, start + n):
        item = make_item(i, seed=3, image_size=32)
        img = Image.open(io.BytesIO(item.images[0][1])).convert("RGB").resize((4, 4), Image.Resampling.BOX)
        images.append(np.asarray(img, dtype=np.float32).ravel() / 255.0)
        rec = item.record
        texts.append(" ".join([rec["main_category"], rec["title"], *rec["features"], *rec["description"]]))
        cats.append(rec["categories"])
    return np.stack(images), texts, cats


def _bag_of_words(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
    out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z0-9-]+", t.lower()):
            if w in vocab:
                out[i, vocab[w]] = 1.0
    return out


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """One-vs-rest logistic regression, full-batch gradient descent with a little L2 (deterministic)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    w = np.zeros((a.shape[1], y_train.shape[1]))
    bias = np.zeros(y_train.shape[1])
    for _ in range(200):
        p = 1 / (1 + np.exp(-(a @ w + bias)))
        w -= 0.5 * (a.T @ (p - y_train) / len(a) + 1e-3 * w)
        bias -= 0.5 * (p - y_train).mean(0)
    return 1 / (1 + np.exp(-(b @ w + bias)))


def test_the_multilabel_target_needs_both_the_image_and_the_text() -> None:
    img_tr, txt_tr, cat_tr = _features(200, 0)
    img_te, txt_te, cat_te = _features(100, 200)
    vocab = build_label_vocab(cat_tr, min_freq=5)
    y_tr, y_te = vocab.encode_many(cat_tr), vocab.encode_many(cat_te)
    words = sorted({w for t in txt_tr for w in re.findall(r"[a-z0-9-]+", t.lower())})
    index = {w: i for i, w in enumerate(words)}
    bow_tr, bow_te = _bag_of_words(txt_tr, index), _bag_of_words(txt_te, index)
    maps = {}
    for name, (tr, te) in {"image": (img_tr, img_te), "text": (bow_tr, bow_te),
                           "both": (np.hstack([img_tr, bow_tr]), np.hstack([img_te, bow_te]))}.items():
        maps[name] = classification_metrics(y_te, _fit_predict(tr, y_tr, te))["map"]
    assert maps["both"] > 0.9
    assert maps["both"] - maps["image"] > 0.15  # the quality-line and audience labels are only in the text
    assert maps["both"] - maps["text"] > 0.05  # the colour labels are only in the image
