"""Feature cache (`embed`) and probe recipes: ridge / head on cached features, saved as ordinary models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import ConfigError, DataError
from effiminivlm.inference import make_loader, run_inference
from effiminivlm.models.factory import create_model, create_tokenizer, load_model
from effiminivlm.training.embed import (
    embed_table,
    feature_matrix,
    load_features,
    model_signature,
    save_features,
)
from effiminivlm.training.kfold import run_kfold
from effiminivlm.training.probe import train_probe
from effiminivlm.training.ridge import fit_ridge

PROBE = ["train.probe=ridge", "model.head.hidden_dims=[]", "train.freeze_image=true",
         "train.freeze_text=true", "data.num_workers=0", "train.eval_batch_size=32"]


def test_fit_ridge_recovers_a_weighted_linear_function() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * [1, 10, 0.1, 3, 1]
    y = x @ np.array([0.5, -0.02, 3.0, 0.1, 0.0]) + 4
    w = rng.uniform(0.5, 2, 200)
    y_bad = y.copy()
    y_bad[:20] += 50  # rows of weight 0 must not matter
    w[:20] = 0
    coef, b = fit_ridge(x, y_bad, w, 1e-8)
    assert np.allclose(x[20:] @ coef + b, y[20:], atol=1e-6)
    shrunk, _ = fit_ridge(x, y, np.ones(200), 1e5)
    assert np.abs(shrunk).sum() < np.abs(coef).sum() / 10


def test_embed_cache_roundtrip_and_refusals(tiny_recipe, prepared: Path, tmp_path: Path) -> None:
    model = create_model(tiny_recipe.model, pretrained=False)
    tok = create_tokenizer(tiny_recipe.model)
    table = read_prepared(prepared)
    feats = embed_table(model, tok, table, ImageStore.for_prepared(prepared))
    assert feats["text"].shape == (table.num_rows, model.text_dim)
    assert feats["image"].shape == (table.num_rows, model.image_dim) and feats["has_image"].all()
    path = save_features(feats, tmp_path / "f.safetensors", model_signature(model))
    back = load_features(path, model_signature(model))
    assert back["ids"] == table.column("parent_asin").to_pylist() and torch.equal(back["text"], feats["text"])
    other = create_model(load_recipe("tiny", ["input.max_length=32"]).model, pretrained=False)
    with pytest.raises(DataError, match="another model"):
        load_features(path, model_signature(other))
    reinit = create_model(tiny_recipe.model, pretrained=False)  # same config, other random weights
    with pytest.raises(DataError, match="another model"):
        load_features(path, model_signature(reinit))
    with pytest.raises(DataError, match="lacks 1 item"):
        feature_matrix(back, ["nope"])


def test_ridge_probe_model_predicts_what_the_features_say(prepared: Path, tmp_path: Path) -> None:
    recipe = load_recipe("tiny", PROBE)
    summary = train_probe(recipe, prepared, tmp_path / "run", log=lambda _: None)
    assert summary["probe"] == "ridge" and -1 <= summary["best_val_plcc"] <= 1
    assert len(summary["alpha_curve"]) == 15
    model, tok = load_model(tmp_path / "run" / "model")  # an ordinary model folder
    val = read_prepared(prepared, "val")
    res = run_inference(model, make_loader(model, tok, val, ImageStore.for_prepared(prepared)),
                        torch.device("cpu"), "fp32", progress=False)
    feats = embed_table(model, tok, val, ImageStore.for_prepared(prepared))
    head = model.head[-1]
    direct = feature_matrix(feats, val.column("parent_asin").to_pylist()) @ head.weight.detach().double(
        ).numpy()[0] + float(head.bias.detach())
    assert np.allclose(res.pred, direct, atol=1e-3)
    from effiminivlm.evaluation.metrics import compute_metrics
    from effiminivlm.training.probe import evaluate_on_features

    cache = save_features(embed_table(model, tok, read_prepared(prepared), ImageStore.for_prepared(prepared)),
                          tmp_path / "f.safetensors", model_signature(model))
    fast = evaluate_on_features(tmp_path / "run" / "model", prepared, cache, tmp_path / "ev", split="val")
    assert fast["metrics"]["overall"]["plcc"] == pytest.approx(
        compute_metrics(np.clip(res.pred, 1, 5), res.target)["overall"]["plcc"], abs=1e-4)
    assert "conformal" in fast["metrics"]

    assert compute_metrics(res.pred, res.target)["overall"]["plcc"] == pytest.approx(
        summary["best_val_plcc"], abs=1e-3)


def test_head_probe_and_bad_settings(prepared: Path, tmp_path: Path) -> None:
    recipe = load_recipe("tiny", [*PROBE, "train.probe=head", "model.head.hidden_dims=[16]",
                                  "train.epochs=5"])
    s = train_probe(recipe, prepared, tmp_path / "run", log=lambda _: None)
    assert 1 <= s["best_epoch"] <= s["epochs_run"] <= 5
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["probe"] == "head"
    with pytest.raises(ConfigError, match="linear head"):
        train_probe(load_recipe("tiny", [*PROBE[:1], "data.num_workers=0"]), prepared, tmp_path / "x")
    with pytest.raises(ConfigError, match="train.probe"):
        load_recipe("tiny", ["train.probe=lasso"])


def test_kfold_probe_embeds_once(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    from effiminivlm.training import trainer  # every k-fold run goes through the one trainer choice

    calls = []
    real = trainer.train_probe

    def spy(*a, **k):
        calls.append(k["features"])
        return real(*a, **k)

    monkeypatch.setattr(trainer, "train_probe", spy)
    res = run_kfold(load_recipe("tiny", PROBE), prepared, tmp_path / "kf", k=3, log=lambda _: None)
    assert len(res["runs"]) == 3 and len(set(calls)) == 1 and calls[0].name == "features.safetensors"
    assert res["aggregate"]["overall"]["rmse"]["n_runs"] == 3
    assert res["aggregate"]["overall"]["plcc"]["n_runs"] == 3  # the cached features are this model's


def test_cli_embed_then_train_with_features(prepared: Path, tmp_path: Path) -> None:
    cache = tmp_path / "f.safetensors"
    sets = sum((["--set", s] for s in PROBE), [])
    assert main(["embed", str(prepared), "--out", str(cache), "--recipe", "tiny", *sets]) == 0
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "r"), "--recipe", "tiny", *sets,
                 "--features", str(cache)]) == 0
    assert (tmp_path / "r" / "model" / "model.safetensors").is_file()
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "r"), "--recipe", "tiny", *sets,
                 "--resume"]) == 2
    assert main(["embed", str(prepared), "--out", str(cache)]) == 2  # neither --model nor --recipe


def test_probe_takes_loss_mixtures_sample_weights_teacher_and_a_shared_cache(prepared: Path, tmp_path: Path
                                                                             ) -> None:
    """The probe's train rows are the loop's (sample weights, teacher labels); a head takes a loss mixture;
    `run_kfold(features=...)` reuses one cache; `soup(features=...)` scores heads on it."""
    from effiminivlm.training.soup import soup

    ids = read_prepared(prepared, "train").column("parent_asin").to_pylist()
    teacher = tmp_path / "t.csv"
    teacher.write_text("item_id,score\n" + "".join(f"{i},5.0\n" for i in ids))
    base = load_recipe("tiny", PROBE)
    plain = train_probe(base, prepared, tmp_path / "plain", log=lambda _: None)
    taught = train_probe(load_recipe("tiny", [*PROBE, f"train.distill.teacher={teacher}",
                                              "train.distill.alpha=1.0"]), prepared, tmp_path / "t",
                         log=lambda _: None)
    assert taught["distill"]["teacher_scored"] == len(ids) and plain["sample_weights"] == "rating_count"
    bias = load_model(tmp_path / "t" / "model")[0].head[-1].bias.item()
    assert bias == pytest.approx(5.0, abs=1e-3)  # every target is the teacher's 5.0: a constant fit
    assert plain["alpha_by"] == "loo_mse" and all("loo_mse" in c for c in plain["alpha_curve"])
    cache = tmp_path / "plain-kf"
    head = [*PROBE, "train.probe=head", "model.head.hidden_dims=[8]", "train.epochs=2",
            "train.loss={weighted_huber: 1.0, plcc: 0.5, rank: 0.2}", "train.sample_weights=inverse_bin_freq"]
    first = run_kfold(base, prepared, cache, k=2, log=lambda _: None)
    shared = run_kfold(load_recipe("tiny", head), prepared, tmp_path / "head-kf", k=2, seeds=2,
                       features=cache / "features.safetensors", log=lambda _: None)
    assert not (tmp_path / "head-kf" / "features.safetensors").exists() and len(shared["runs"]) == 4
    assert first["aggregate"]["overall"]["rmse"]["n_runs"] == 2
    members = [str(tmp_path / "head-kf" / "fold-0" / f"seed-{s}") for s in (42, 43)]
    fold = tmp_path / "head-kf" / "folds" / "fold-0"
    via_features = soup(members, tmp_path / "s1", data=str(fold), features=cache / "features.safetensors",
                        progress=False, log=lambda _: None)
    via_towers = soup(members, tmp_path / "s2", data=str(fold), precision="fp32", progress=False,
                      log=lambda _: None)
    assert via_features["val_plcc"] == pytest.approx(via_towers["val_plcc"], abs=1e-4)


def test_signature_of_a_version_1_model_is_what_the_version_1_code_gave() -> None:
    """Feature caches written before config.json format_version 2 stay valid: the signature keeps the
    version-1 layout (the fixture's expected.json holds the signature the version-1 code computed)."""
    folder = Path(__file__).resolve().parents[1] / "fixtures" / "v1" / "effiminivlm-image"
    model, _ = load_model(folder)
    expected = json.loads((folder / "expected.json").read_text())["feature_signature"]
    assert model_signature(model) == expected


def test_signature_of_a_peer_names_its_own_keys() -> None:
    torch.manual_seed(0)
    model = create_model(load_recipe("clip-fusion-tiny", ["model.modalities=image"]).model, pretrained=False)
    sig = json.loads(model_signature(model))
    assert sig["options"]["dim"] == 32 and "head_hidden" in sig["options"]
    assert "tokenizer" not in sig["input"]
