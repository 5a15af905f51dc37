"""MiniViTex's multi-label head (models/minivitex `task: multilabel`): the vocabulary comes from the TRAIN
split's `categories`, training selects by val mAP, the folder (labels + tuned thresholds) reloads to the same
logits, and `evaluate` reports mAP and the F1s at 0.5 and tuned thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.data.images import ImageStore
from effiminivlm.data.labels import attach_categories, build_label_vocab
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import ConfigError
from effiminivlm.inference import make_loader, run_inference
from effiminivlm.models import load_model
from effiminivlm.training.losses import check_recipe_names, create_loss

SETS = ["--set", "model.task=multilabel", "--set", "train.loss=bce", "--set", "train.epochs=2",
        "--set", "train.max_steps_per_epoch=4", "--set", "train.batch_size=16"]


def _logits(model, tokenizer, table, prepared) -> tuple[np.ndarray, np.ndarray]:
    loader = make_loader(model, tokenizer, table, ImageStore.for_prepared(prepared), batch_size=16)
    res = run_inference(model, loader, torch.device("cpu"), "fp32", progress=False)
    return res.pred, res.target


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    run = tmp_path_factory.mktemp("ml") / "run"
    args = ["train", "--data", str(prepared), "--out", str(run), "--recipe", "minivitex-tiny", *SETS]
    assert main(args) == 0
    return run


def test_multilabel_head_trains_saves_reloads_with_the_same_logits(trained, prepared, tmp_path):
    model, tok = load_model(trained / "model")
    assert model.task == "multilabel" and model.data_columns == ("categories",)
    train = attach_categories(read_prepared(prepared, "train"), prepared)
    vocab = build_label_vocab(train.column("categories").to_pylist(), 5)
    assert model.cfg.labels == vocab.labels and len(vocab) > 5  # the TRAIN split's vocabulary
    assert len(model.cfg.thresholds) == len(vocab)  # tuned on val, saved with the model
    assert any(t != 0.5 for t in model.cfg.thresholds)
    test = attach_categories(read_prepared(prepared, "test"), prepared)
    logits, target = _logits(model, tok, test, prepared)
    assert logits.shape == target.shape == (test.num_rows, len(vocab))
    assert np.array_equal(target, vocab.encode_many(test.column("categories").to_pylist()))
    model.save_pretrained(tmp_path / "again", tokenizer=tok)
    again, tok2 = load_model(tmp_path / "again")
    np.testing.assert_allclose(_logits(again, tok2, test, prepared)[0], logits, atol=1e-5)
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["select_metric"] == "map" and 0 < summary["best_val_plcc"] <= 1
    line = json.loads((trained / "metrics.jsonl").read_text().splitlines()[0])
    assert {"val_map", "val_micro_f1", "val_macro_f1", "val_samples_f1", "val_loss"} <= set(line)
    assert not (trained / "model" / "conformal.json").exists()


def test_evaluate_reports_map_and_f1_at_half_and_tuned(trained, prepared, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(trained / "model"), "--data", str(prepared), "--out", str(out),
                 "--num-workers", "0", "--precision", "fp32"]) == 0
    text = capsys.readouterr().out
    assert "| 0.5 |" in text and "| tuned on val |" in text
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["task"] == "multilabel" and 0 < m["map"] <= 1
    for block in ("at_0.5", "tuned"):
        assert {"micro_f1", "macro_f1", "samples_f1"} <= set(m[block])
    assert m["tuned"]["thresholds"] == load_model(trained / "model")[0].cfg.thresholds


def test_loss_must_fit_the_task():
    with pytest.raises(ConfigError, match="multilabel head trains with loss bce"):
        check_recipe_names(load_recipe("minivitex-tiny", ["model.task=multilabel"]))
    with pytest.raises(ConfigError, match="does not fit"):
        check_recipe_names(load_recipe("minivitex-tiny", ["train.loss=bce"]))
    with pytest.raises(ConfigError, match="task must be rating or multilabel"):
        check_recipe_names(load_recipe("minivitex-tiny", ["model.task=tags"]))


def test_bce_loss_is_the_weighted_mean_of_per_item_bce():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    w = torch.tensor([1.0, 3.0])
    per_item = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)
    assert torch.isclose(create_loss("bce")(logits, y, w), (w * per_item).mean())


def test_attach_categories_counts_items_missing_from_the_meta_files(prepared):
    from effiminivlm.data.meta import InputLog

    table = read_prepared(prepared, "val")
    table = table.set_column(0, "parent_asin", [["NOPE"] + table.column("parent_asin").to_pylist()[1:]])
    log = InputLog()
    got = attach_categories(table, prepared, log).column("categories").to_pylist()
    assert got[0] == [] and all(got[1:]) and log.bad == {"no_categories": 1}


def test_predict_refuses_a_multilabel_model_in_one_line(trained, prepared, tmp_path, capsys):
    out = tmp_path / "s.csv"
    code = main(["predict", str(prepared), "--model", str(trained / "model"), "--out", str(out),
                 "--num-workers", "0"])
    cap = capsys.readouterr()
    assert code != 0 and not out.exists()
    assert "is a multilabel model" in cap.err + cap.out and "Traceback" not in cap.err
    code = main(["predict", str(prepared), "--model", str(trained / "model"), "--out", str(out),
                 "--engine", "ray"])  # refused by the driver before a Ray worker starts
    cap = capsys.readouterr()
    assert code != 0 and not out.exists() and "is a multilabel model" in cap.err + cap.out
