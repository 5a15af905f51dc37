"""Fine-tuning on top of the words-only ridge (`train.lexical_offset`) and gradual unfreezing
(`train.unfreeze_per_epoch`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.data.dataset import OFFSET_COLUMN
from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import read_prepared
from effiminivlm.data.text import table_texts
from effiminivlm.errors import ConfigError
from effiminivlm.evaluation.dual_ridge import fit_dual_ridge
from effiminivlm.inference import forward_batch, make_loader, run_inference
from effiminivlm.models.factory import create_model, create_tokenizer, load_model
from effiminivlm.models.freezing import GradualUnfreezing, apply_recipe_freezing
from effiminivlm.models.hybrid import HybridProbe
from effiminivlm.training import loop
from effiminivlm.training.hybrid import hybrid_side_scores
from effiminivlm.training.offset import output_start, with_lexical_offset
from effiminivlm.training.skeleton import weighted_train_rows
from effiminivlm.training.train_rows import mix_train_rows

OFFSET = ["model.modalities=text", "train.lexical_offset=true", "train.lexical.min_df=1"]


def _offset_rows(recipe, prepared: Path):
    rows, weighting = weighted_train_rows(read_prepared(prepared, "train"), recipe.train, lambda _: None)
    rows, _ = mix_train_rows(rows, recipe.train, weighting["mu"], log=lambda _: None)
    return rows


def test_train_rows_carry_the_ridges_leave_one_out_prediction_not_its_fit(prepared: Path) -> None:
    recipe = load_recipe("tiny", OFFSET)
    rows = _offset_rows(recipe, prepared)
    torch.manual_seed(0)
    base = create_model(recipe.model, pretrained=False)
    model, with_offset, stats = with_lexical_offset(base, recipe, rows, log=lambda _: None)
    assert isinstance(model, HybridProbe) and model.cfg.head.hidden_dims == [32, 16]  # the recipe's MLP head
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in model.state_dict().items()
               if not k.startswith(HybridProbe.side_modules))  # the towers and head it was given
    # the lexical block is the words-only ridge: same texts, same sample weights, same alpha rule
    y = rows.column("average_rating").to_numpy().astype(np.float64)
    w = rows.column("sample_weight").to_numpy().astype(np.float64)
    x = model.lexical.transform(table_texts(rows))
    fit = fit_dual_ridge(x, y, w)
    assert stats["alpha"] == fit.alpha and stats["terms"] == model.cfg.lexical_terms == x.shape[1]
    assert np.allclose(model.lexical_block.weight.numpy(), fit.coef, atol=1e-6)
    assert not model.lexical_block.weight.requires_grad  # solved in closed form, never trained
    offset = with_offset.column(OFFSET_COLUMN).to_numpy()
    assert np.allclose(offset, fit.loo - fit.intercept, atol=1e-5)
    in_sample = np.asarray(x @ fit.coef).ravel()
    assert np.abs(offset - in_sample).max() > 1e-3  # leave-one-out, not the fit of the row's own rating
    assert output_start(with_offset) == pytest.approx(y.mean() - offset.mean(), rel=1e-6)
    # a training batch adds its offsets; the same rows scored (no offset column) add TF-IDF . w
    model.eval()
    tok = create_tokenizer(recipe.model)
    store = ImageStore.for_prepared(prepared)
    dev = torch.device("cpu")
    batch = next(iter(make_loader(model, tok, with_offset, store, batch_size=8)))
    plain = next(iter(make_loader(model, tok, rows, store, batch_size=8)))
    assert "lexical_offset" in batch and "lexical" not in batch and "lexical" in plain
    with torch.no_grad():
        diff = (forward_batch(model, plain, dev) - forward_batch(model, batch, dev)).numpy()
    assert np.allclose(diff, in_sample[:8] - offset[:8], atol=1e-4)


def test_a_lexical_offset_run_saves_a_hybrid_that_reloads_and_scores_the_same(prepared: Path,
                                                                               tmp_path: Path) -> None:
    recipe = load_recipe("tiny", [*OFFSET, "train.epochs=1", "train.max_steps_per_epoch=2"])
    summary = loop.train(recipe, prepared, tmp_path / "run", progress=False, log=lambda _: None)
    assert summary["lexical_offset"]["terms"] > 0
    folder = tmp_path / "run" / "model"
    test = read_prepared(prepared, "test")
    preds, models = [], []
    for src in (folder, tmp_path / "again"):
        model, tok = load_model(src)
        assert isinstance(model, HybridProbe) and model.lexical_block.weight.abs().sum() > 0
        loader = make_loader(model, tok, test, ImageStore.for_prepared(prepared))
        preds.append(run_inference(model, loader, torch.device("cpu"), "fp32", progress=False).pred)
        models.append(model)
        model.save_pretrained(tmp_path / "again", tokenizer=tok)
    assert np.array_equal(preds[0], preds[1])
    towers_only = preds[0] - hybrid_side_scores(models[0], test)  # the fine-tuned part learns a residual
    assert np.abs(towers_only - towers_only.mean()).max() > 0
    assert main(["evaluate", "--model", str(folder), "--data", str(prepared), "--split", "test",
                 "--out", str(tmp_path / "eval"), "--precision", "fp32"]) == 0
    plcc = json.loads((tmp_path / "eval" / "metrics.json").read_text())["overall"]["plcc"]
    target = test.column("average_rating").to_numpy()
    assert plcc == pytest.approx(float(np.corrcoef(np.clip(preds[0], 1, 5), target)[0, 1]), abs=1e-4)


def test_offset_and_unfreezing_are_fine_tuning_settings() -> None:
    with pytest.raises(ConfigError, match="probe must be none"):
        load_recipe("tiny", ["train.probe=ridge", "train.lexical_offset=true"])
    with pytest.raises(ConfigError, match="unfreeze_per_epoch"):
        load_recipe("tiny", ["train.unfreeze_per_epoch=-1"])
    with pytest.raises(ConfigError, match="fine-tunes an EffiMiniVLM"):
        with_lexical_offset(torch.nn.Linear(2, 1), load_recipe("tiny", OFFSET), None)  # type: ignore[arg-type]


def _trainable(model, prefix: str) -> set[bool]:
    return {p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix)}


def test_gradual_unfreezing_opens_the_text_tower_top_down_one_group_per_epoch() -> None:
    recipe = load_recipe("tiny", ["train.unfreeze_per_epoch=1"])
    model = create_model(recipe.model, pretrained=False)
    apply_recipe_freezing(model, recipe.train)
    steps = GradualUnfreezing(model, 1)
    layers = "text_encoder.bert.encoder.layer"
    assert steps.apply(1) == []
    assert _trainable(model, "head.") == {True} and _trainable(model, "text_encoder.") == {False}
    assert _trainable(model, "image_encoder.") == {False}
    model.train()
    assert not model.text_encoder.bert.encoder.layer[1].training  # closed parts keep dropout off
    assert steps.apply(2) == ["text layer 1"]
    assert _trainable(model, f"{layers}.1.") == {True}
    assert _trainable(model, "text_encoder.bert.pooler") == {True}  # above the layers: opens with the top one
    assert _trainable(model, f"{layers}.0.") == _trainable(model, "text_encoder.bert.embeddings") == {False}
    assert model.text_encoder.bert.encoder.layer[1].training
    assert steps.apply(3)[-1] == "text layer 0" and _trainable(model, f"{layers}.0.") == {True}
    assert steps.apply(4)[-1] == "text embeddings"
    assert _trainable(model, "text_encoder.") == {True} and _trainable(model, "image_encoder.") == {False}
    assert steps.apply(5)[-1] == "image tower" and _trainable(model, "image_encoder.") == {True}
    assert steps.apply(9) == steps.apply(5)
    fixed = load_recipe("tiny", ["train.freeze_text_layers=1"])  # the recipe's own freezing stays
    model = create_model(fixed.model, pretrained=False)
    apply_recipe_freezing(model, fixed.train)
    GradualUnfreezing(model, 100).apply(2)
    assert _trainable(model, f"{layers}.0.") == {False} and _trainable(model, f"{layers}.1.") == {True}


def test_a_gradually_unfrozen_run_moves_only_what_was_open(prepared: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe("tiny", ["model.modalities=text", "train.unfreeze_per_epoch=1", "train.epochs=2",
                                  "train.max_steps_per_epoch=2", "train.patience=5"])
    real_create, built = loop.create_model, []

    def create_and_snapshot(*a, **k):
        model = real_create(*a, **k)
        built.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(loop, "create_model", create_and_snapshot)
    lines: list[str] = []
    loop.train(recipe, prepared, tmp_path / "run", progress=False, log=lines.append)
    assert "epoch 1 trains the head + no tower part" in lines
    assert "epoch 2 trains the head + text layer 1" in lines
    state = torch.load(tmp_path / "run" / "checkpoint" / "last.pt", weights_only=True)["model"]
    before, = built

    def moved(prefix: str) -> bool:
        return any(not torch.equal(v, before[k]) for k, v in state.items() if k.startswith(prefix))

    assert moved("head.") and moved("text_encoder.bert.encoder.layer.1.")
    assert not moved("text_encoder.bert.encoder.layer.0.") and not moved("text_encoder.bert.embeddings.")
