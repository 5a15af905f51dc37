"""The hybrid probe (lexical + tower + listing blocks), its dual ridge, the listing block and the words-only
baseline beside train and evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.data.images import ImageStore
from effiminivlm.data.listing import LISTING_FEATURES, ListingEncoder, listing_json, parse_listing
from effiminivlm.data.prepare import read_prepared
from effiminivlm.data.schema import SCHEMA
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.evaluation.dual_ridge import fit_dual_ridge
from effiminivlm.evaluation.metrics import compute_metrics
from effiminivlm.inference import make_loader, run_inference
from effiminivlm.models.export import export_model
from effiminivlm.models.factory import load_model
from effiminivlm.models.hybrid import HYBRID_NAME, HybridProbe
from effiminivlm.protocol.flops import count_params
from effiminivlm.training.embed import (
    embed_table,
    feature_matrix,
    load_features,
    model_signature,
    save_features,
)
from effiminivlm.training.hybrid import hybrid_side_scores
from effiminivlm.training.probe import build_probe_model, evaluate_on_features, train_probe

HYBRID = ["train.probe=ridge", "model.head.hidden_dims=[]", "train.freeze_image=true",
          "train.freeze_text=true", "data.num_workers=0", "train.eval_batch_size=32",
          "model.modalities=text", "train.lexical.min_df=1"]


def test_dual_ridge_loo_is_the_refit_without_the_item() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 40))  # wider than long, as a TF-IDF block
    y = x[:, 0] - 0.5 * x[:, 1] + rng.normal(scale=0.3, size=25) + 4
    w = rng.uniform(0.5, 2.0, 25)
    fit = fit_dual_ridge(x, y, w, alphas=(0.3, 3.0, 30.0))
    for i in (0, 7, 24):
        keep = np.arange(25) != i
        same_lam = fit.alpha * w.mean() / w[keep].mean()  # the penalty is alpha x mean(w)
        refit = fit_dual_ridge(x[keep], y[keep], w[keep], alphas=(same_lam,))
        assert refit.predict(x[i:i + 1])[0] == pytest.approx(fit.loo[i], abs=1e-8)
    mse = [c["loo_mse"] for c in fit.curve]
    assert fit.alpha == (0.3, 3.0, 30.0)[int(np.argmin(mse))]


def test_listing_fields_and_store_prior_never_see_their_own_rating() -> None:
    raw = {"store": " Acme ", "price": "$1,299.50", "videos": [{}], "features": ["a", "b"],
           "details": {"Date First Available": "June 2, 2019", "Brand": "Acme"}}
    parsed = parse_listing(listing_json(raw))
    assert parsed == {"store": "Acme", "price": 1299.5, "n_videos": 1, "n_features": 2, "n_details": 2,
                      "year": 2019}
    assert parse_listing(listing_json({"price": "n/a", "details": "oops"}))["price"] is None
    lst = [{"store": "A"}, {"store": "A"}, {"store": "B"}, None]
    ids = ["i0", "i1", "i2", "i3"]
    y = np.array([5.0, 1.0, 2.0, 4.0])
    enc = ListingEncoder(smoothing=1.0, folds=2).fit(lst, y)
    col = LISTING_FEATURES.index("store_prior")
    block, _ = enc.transform(lst, [0] * 4, [""] * 4, y=y, item_ids=ids)
    assert block[2, col] == pytest.approx(enc.prior)  # B's only train item: its own rating is left out
    moved, _ = enc.fit(lst, np.array([5.0, 1.0, 5.0, 4.0])).transform(lst, [0] * 4, [""] * 4,
                                                                       y=np.array([5.0, 1.0, 5.0, 4.0]),
                                                                       item_ids=ids)
    assert moved[2, col] == pytest.approx(enc.prior)  # ... whatever that rating is
    enc.fit(lst, y)
    unseen, _ = enc.transform([{"store": "only-in-test"}], [0], [""])
    assert unseen[0, col] == pytest.approx(enc.prior)
    seen, _ = enc.transform([{"store": "a"}], [0], [""])  # case-insensitive; both A items count here
    assert seen[0, col] == pytest.approx((6.0 + enc.prior) / 3.0)


def _with_listing(src: Path, dest: Path, listing: str | None) -> Path:
    """A copy of the prepared dataset `src` whose `listing` column is `listing` on every row."""
    shutil.copytree(src, dest)
    table = pq.read_table(dest / "data.parquet")
    i = table.schema.get_field_index("listing")
    column = pa.array([listing] * table.num_rows, pa.string())
    pq.write_table(table.set_column(i, SCHEMA.field("listing"), column), dest / "data.parquet")
    return dest


def test_hybrid_saves_reloads_and_scores_like_its_cached_features(prepared: Path, tmp_path: Path) -> None:
    data = _with_listing(prepared, tmp_path / "data", listing_json({"store": "S", "price": 5, "videos": []}))
    recipe = load_recipe("tiny", [*HYBRID, "train.probe_features=[lexical,tower,listing,neighbours]"])
    summary = train_probe(recipe, data, tmp_path / "run", log=lambda _: None)
    assert summary["probe_features"] == ["lexical", "tower", "listing", "neighbours"]
    assert "words_only_val_plcc" in summary and summary["neighbours"]["k"] in recipe.train.neighbours.ks
    folder = tmp_path / "run" / "model"
    saved = json.loads((folder / HYBRID_NAME).read_text())  # vocabulary and idf as plain data
    assert len(saved["lexical"]["word"]["terms"]) == len(saved["lexical"]["word"]["idf"]) > 0
    test = read_prepared(data, "test")
    preds = []
    for _ in range(2):
        model, tok = load_model(folder)
        assert isinstance(model, HybridProbe) and model.lexical_block.weight.abs().sum() > 0
        loader = make_loader(model, tok, test, ImageStore.for_prepared(data))
        preds.append(run_inference(model, loader, torch.device("cpu"), "fp32", progress=False).pred)
    assert np.array_equal(preds[0], preds[1])
    probe = build_probe_model(recipe)  # the cache `embed` makes for the recipe fits the hybrid it trains
    feats = embed_table(probe, tok, read_prepared(data), ImageStore.for_prepared(data))
    cache = save_features(feats, tmp_path / "f.safetensors", model_signature(probe))
    assert model_signature(probe) == model_signature(model)
    report = evaluate_on_features(folder, data, cache, tmp_path / "eval")  # head(cache) + the blocks
    target = test.column("average_rating").to_numpy()
    direct = compute_metrics(np.clip(preds[0], 1, 5), target)["overall"]
    for key in ("plcc", "rmse"):
        assert report["metrics"]["overall"][key] == pytest.approx(direct[key], abs=1e-4)
    assert "words_only" in report["metrics"]
    assert model.num_params_by_part()["lexical"] == model.lexical_block.weight.numel()
    parts = count_params(model).by_module  # profile's P lists the blocks, so P without them is at hand
    assert parts["lexical_block"] == model.cfg.lexical_terms
    assert parts["listing_block"] == len(LISTING_FEATURES)
    items, dim = summary["neighbours"]["items"], model.image_dim + model.text_dim
    assert parts["neighbour_block"] == items * dim + 2 * items + 2 * dim + 1  # its train table is in P
    assert model.neighbour_block.weight.item() != 0  # the stack uses it
    with pytest.raises(EffiMiniVLMError, match="cannot be exported"):
        export_model(folder, tmp_path / "exported")


@pytest.mark.parametrize("train_has,score_has", [(False, True), (True, False)])
def test_listing_fields_may_be_absent_on_either_side(prepared: Path, tmp_path: Path, train_has: bool,
                                                     score_has: bool) -> None:
    value = listing_json({"store": "S", "price": 12.5, "videos": [1, 2]})
    train_data = _with_listing(prepared, tmp_path / "a", value if train_has else None)
    score_data = _with_listing(prepared, tmp_path / "b", value if score_has else None)
    recipe = load_recipe("tiny", [*HYBRID, "train.probe_features=[lexical,listing]"])
    train_probe(recipe, train_data, tmp_path / "run", log=lambda _: None)
    model, tok = load_model(tmp_path / "run" / "model")
    test = read_prepared(score_data, "test")
    loader = make_loader(model, tok, test, ImageStore.for_prepared(score_data))
    pred = run_inference(model, loader, torch.device("cpu"), "fp32", progress=False).pred
    assert np.isfinite(pred).all() and len(pred) == test.num_rows
    assert loader.collate_fn.processor.listing_fallbacks == (0 if score_has else test.num_rows)


def test_baseline_line_in_train_and_evaluate_output(prepared: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    sets = [a for s in [*HYBRID, "train.probe_features=[lexical,listing]"] for a in ("--set", s)]
    run = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--out", str(run), "--recipe", "tiny", *sets]) == 0
    assert "| words only " in capsys.readouterr().out
    assert main(["evaluate", "--model", str(run / "model"), "--data", str(prepared), "--split", "test",
                 "--precision", "fp32", "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "model " in out and "| words only " in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["words_only"]["n"] == metrics["overall"]["n"]


def _generated(path: Path, n: int = 1200, seed: int = 0) -> Path:
    """A prepared dataset whose rating depends on words and the store (a real conformal test needs more
    items than the synthetic catalog has)."""
    rng = np.random.default_rng(seed)
    good, bad, filler = ["sturdy", "soft", "lovely"], ["flimsy", "cheap", "itchy"], ["shirt", "sock", "hat"]
    rows = []
    for i in range(n):
        g, b = rng.integers(0, 3), rng.integers(0, 3)
        store = f"store{rng.integers(0, 40)}"
        words = rng.choice(good, g).tolist() + rng.choice(bad, b).tolist() + rng.choice(filler, 2).tolist()
        rating = float(np.clip(3.5 + 0.4 * g - 0.4 * b + 0.02 * int(store[5:]) - 0.4
                               + rng.normal(scale=0.5), 1, 5))
        rows.append({"parent_asin": f"P{i}", "category": "Gen", "title": " ".join(words), "features": "",
                     "description": "", "details": "", "average_rating": rating,
                     "rating_number": int(rng.integers(1, 50)), "images": [],
                     "listing": listing_json({"store": store}),
                     "split": "train" if i < 0.6 * n else "val" if i < 0.75 * n else "test", "source": "gen"})
    path.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path / "data.parquet")
    (path / "summary.json").write_text("{}")
    return path


def test_conformal_intervals_of_the_hybrid_cover(tmp_path: Path) -> None:
    data = _generated(tmp_path / "gen")
    recipe = load_recipe("tiny", [*HYBRID, "train.probe_features=[lexical,listing]"])
    summary = train_probe(recipe, data, tmp_path / "run", log=lambda _: None)
    assert summary["best_val_plcc"] > summary["words_only_val_plcc"]  # the store block adds signal
    report = evaluate_on_features(tmp_path / "run" / "model", data, tmp_path / "none", tmp_path / "eval")
    cover = report["metrics"]["conformal"]["overall"]
    assert abs(cover["80"]["coverage"] - 0.8) < 0.08 and abs(cover["90"]["coverage"] - 0.9) < 0.06


def test_a_dataset_prepared_before_the_listing_column_still_reads(prepared: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(prepared, old)
    table = pq.read_table(old / "data.parquet")
    pq.write_table(table.drop_columns(["listing"]), old / "data.parquet")
    back = read_prepared(old)
    assert back.schema.names == SCHEMA.names and back.column("listing").null_count == back.num_rows


def test_a_damaged_hybrid_config_fails_by_its_key() -> None:
    from effiminivlm.errors import ConfigError
    from effiminivlm.models.hybrid import HybridCfg

    with pytest.raises(ConfigError, match="lexical_terms must be an integer >= 0, got -1"):
        HybridCfg(lexical_terms=-1)
    with pytest.raises(ConfigError, match="listing_features"):
        HybridCfg(listing_features="7")


def test_the_probe_pooling_flows_from_the_feature_cache_to_the_scorer(prepared: Path, tmp_path: Path) -> None:
    """The probe recipe pools its text tower as all-MiniLM-L6-v2 does (mean, unit length): the cache `embed`
    makes, the hybrid trained on it, the saved folder and the Scorer scoring raw text must all pool the same
    way, or the tower block's weights meet other features at scoring time than at fit time."""
    from effiminivlm.models.factory import create_tokenizer
    from effiminivlm.serving.scorer import Scorer

    pooling = load_recipe("probe").model.text_encoder.pooling
    assert pooling != "cls"
    recipe = load_recipe("tiny", [*HYBRID, f"model.text_encoder.pooling={pooling}",
                                  "train.probe_features=[lexical,tower]"])
    probe = build_probe_model(recipe)
    assert probe.text_encoder.pooling == pooling
    feats = embed_table(probe, create_tokenizer(recipe.model), read_prepared(data := prepared),
                        ImageStore.for_prepared(data))
    cache = save_features(feats, tmp_path / "probe.safetensors", model_signature(probe))
    cls_recipe = load_recipe("tiny", [*HYBRID, "train.probe_features=[lexical,tower]"])
    with pytest.raises(EffiMiniVLMError, match="made by another model"):  # a CLS cache cannot fit it
        train_probe(cls_recipe, data, tmp_path / "cls", features=cache, log=lambda _: None)
    train_probe(recipe, data, tmp_path / "run", features=cache, log=lambda _: None)
    folder = tmp_path / "run" / "model"
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model"]["text_encoder"]["pooling"] == pooling
    scorer = Scorer.from_pretrained(folder, precision="fp32")
    assert scorer.model.text_encoder.pooling == pooling
    test = read_prepared(data, "test")
    raw = scorer.score_table(test, ImageStore.for_prepared(data), progress=False).pred
    model, _ = load_model(folder)
    ids = [str(v) for v in test.column("parent_asin").to_pylist()]
    x = torch.as_tensor(feature_matrix(load_features(cache), ids), dtype=torch.float32)
    with torch.no_grad():
        tower = model.head(x).squeeze(-1).double().numpy()  # the tower block's part, from the mean cache
    assert tower.std() > 1e-3  # the tower block weighs in, so a pooling mismatch would show
    from_cache = np.clip(tower + hybrid_side_scores(model, test), 1, 5)
    np.testing.assert_allclose(raw, from_cache, atol=1e-4)


def test_pick_depth_keeps_the_depth_whose_ridge_predicts_best_out_of_sample() -> None:
    from effiminivlm.training.hybrid import pick_depth
    from effiminivlm.training.probe import ALPHAS

    rng = np.random.default_rng(0)
    signal = rng.normal(size=(300, 4))
    y = 3 + signal @ np.array([0.5, -0.3, 0.2, 0.1]) + 0.1 * rng.normal(size=300)
    w = rng.uniform(0.5, 2, 300)
    noise = rng.normal(size=(300, 4))
    depth_x = {1: (noise, noise[:10]), 2: (signal, signal[:10]), 3: (0.5 * signal + noise, noise[:10])}
    depth, mse, fit = pick_depth(depth_x, y, w, ALPHAS)
    assert depth == 2 and mse[2] < mse[3] < mse[1]
    assert np.corrcoef(fit["loo"], y)[0, 1] > 0.9
    same = {1: (signal, signal[:10]), 2: (signal, signal[:10])}
    assert pick_depth(same, y, w, ALPHAS)[0] == 2  # a tie keeps the uncut tower


@pytest.mark.parametrize("blocks", ["[lexical,tower]", "[tower]"])
def test_auto_text_depth_cuts_the_saved_tower_and_its_cache_still_fits(
        prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocks: str) -> None:
    """`probe_text_depth: auto`: one embedding pass caches every depth; a tower cut to depth D computes what
    the cache holds as `text@D`; the hybrid fit on it saves the cut tower, which reloads, scores raw text as
    its cached features say, and finds its features in the full model's cache."""
    import effiminivlm.training.hybrid as hybrid_mod
    from effiminivlm.models.factory import create_tokenizer

    recipe = load_recipe("tiny", [*HYBRID, "model.text_encoder.config.num_hidden_layers=3",
                                  "model.text_encoder.pooling=mean", f"train.probe_features={blocks}",
                                  "train.probe_text_depth=auto"])
    probe = build_probe_model(recipe)
    tok = create_tokenizer(recipe.model)
    rows = read_prepared(prepared)
    feats = embed_table(probe, tok, rows, ImageStore.for_prepared(prepared), depths=True)
    assert sorted(k for k in feats if k.startswith("text@")) == ["text@1", "text@2"]
    torch.testing.assert_close(feats["text"], embed_table(probe, tok, rows, None)["text"])  # full depth
    cache = save_features(feats, tmp_path / "f.safetensors", model_signature(probe))
    chosen = {}
    real_pick = hybrid_mod.pick_depth

    def pick_one(depth_x: dict, y: np.ndarray, w: np.ndarray, alphas: tuple) -> tuple:
        _, mse, _ = real_pick(depth_x, y, w, alphas)
        chosen["mse"] = mse
        return 1, mse, hybrid_mod.dense_block(depth_x[1][0], y, w, alphas)  # force a cut

    monkeypatch.setattr(hybrid_mod, "pick_depth", pick_one)
    summary = train_probe(recipe, prepared, tmp_path / "run", features=cache, log=lambda _: None)
    assert summary["text_depth"] == 1 and set(chosen["mse"]) == {1, 2, 3}
    folder = tmp_path / "run" / "model"
    assert json.loads((folder / "config.json").read_text())["model"]["text_encoder"]["config"][
        "num_hidden_layers"] == 1
    model, _ = load_model(folder)
    assert model.text_encoder.depth == 1
    cut = embed_table(model, tok, rows, None)["text"]
    torch.testing.assert_close(cut, feats["text@1"], atol=1e-5, rtol=1e-5)  # the cut tower = text@1
    test = read_prepared(prepared, "test")
    direct = run_inference(model, make_loader(model, tok, test, None), torch.device("cpu"), "fp32",
                           progress=False).pred
    report = evaluate_on_features(folder, prepared, cache, tmp_path / "eval")  # the full model's cache
    target = test.column("average_rating").to_numpy()
    assert report["metrics"]["overall"]["plcc"] == pytest.approx(
        compute_metrics(np.clip(direct, 1, 5), target)["overall"]["plcc"], abs=1e-4)
    assert count_params(model).total < count_params(probe).total  # the dropped layers are not counted
    monkeypatch.undo()
    uncached = train_probe(recipe, prepared, tmp_path / "run3", log=lambda _: None)  # embeds every depth
    assert uncached["text_depth"] in (1, 2, 3) and set(uncached["text_depth_loo_mse"]) == {"1", "2", "3"}
    with pytest.raises(EffiMiniVLMError, match="every text-tower depth"):  # a cache without depths
        plain = save_features(embed_table(probe, tok, rows, None), tmp_path / "p.safetensors",
                              model_signature(probe))
        train_probe(recipe, prepared, tmp_path / "run2", features=plain, log=lambda _: None)


def test_neighbours_loo_scores_each_train_item_without_itself() -> None:
    """The neighbours block's leave-one-out predictions equal a brute-force search over the other train
    items (standardised cosine, top k, weights x exp((cos - cos_max) / T)); a train item's own rating never
    enters its LOO prediction; the grid point of lowest weighted LOO MSE is kept; the table scores new rows
    as the brute force does."""
    from effiminivlm.config import NeighboursCfg
    from effiminivlm.training.hybrid import fit_neighbours

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8))
    group = rng.integers(0, 6, 120)
    x = centres[group] * 3 + rng.normal(size=(120, 8))
    y = 1 + group * 0.7 + 0.1 * rng.normal(size=120)  # the rating follows the cluster
    w = rng.uniform(0.5, 2.0, 120)
    cfg = NeighboursCfg(ks=[3, 10, 200], temperatures=[0.05, 0.0])
    fit = fit_neighbours(x, y, w, cfg, seed=0, log=lambda _: None)
    table = fit["table"]
    assert set(fit["loo_mse"]) == {"3/0.05", "3/0", "10/0.05", "10/0", "119/0.05", "119/0"}  # k <= n - 1
    assert fit["loo_mse"][f"{table.k}/{table.temperature:g}"] == min(fit["loo_mse"].values())
    assert table.k < 119  # the whole catalogue is not the nearest cluster

    z = (x - x.mean(0)) / x.std(0)
    z /= np.linalg.norm(z, axis=1, keepdims=True)

    def brute(q: np.ndarray, exclude: int | None) -> float:
        sims = z @ q
        if exclude is not None:
            sims[exclude] = -np.inf
        top = np.argsort(-sims, kind="stable")[:table.k]
        a = w[top] * (np.exp((sims[top] - sims[top].max()) / table.temperature) if table.temperature else 1)
        return float((a * y[top]).sum() / a.sum())

    for i in (0, 17, 119):
        assert fit["loo"][i] == pytest.approx(brute(z[i], i), abs=1e-4)
    moved = y.copy()
    moved[17] = 5.0
    again = fit_neighbours(x, moved, w, NeighboursCfg(ks=[table.k], temperatures=[table.temperature]), seed=0,
                           log=lambda _: None)
    assert again["loo"][17] == pytest.approx(fit["loo"][17], abs=1e-6)  # its own rating is left out
    new = rng.normal(size=(5, 8)) + centres[2] * 3
    with torch.no_grad():
        scored = table(torch.as_tensor(new, dtype=torch.float32)).numpy()
    qs = (new - x.mean(0)) / x.std(0)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    np.testing.assert_allclose(scored, [brute(q, None) for q in qs], atol=1e-4)
    few = fit_neighbours(x, y, w, NeighboursCfg(ks=[3], temperatures=[0.0], max_items=50), seed=0,
                         log=lambda _: None)
    assert few["items"] == 50 and len(few["loo"]) == 120  # a capped table still scores every train row


def test_the_neighbours_block_alone_saves_and_scores_like_its_cached_features(prepared: Path,
                                                                                tmp_path: Path) -> None:
    """`[neighbours]` on its own: no ridge block (no alpha), the towers' features still read, and the saved
    model's direct scores equal its scores from the feature cache (the top-k search runs in both)."""
    recipe = load_recipe("tiny", [*HYBRID, "train.probe_features=[neighbours]"])
    summary = train_probe(recipe, prepared, tmp_path / "run", log=lambda _: None)
    assert summary["alpha"] is None and summary["stack_weights"]["neighbours"] != 0
    folder = tmp_path / "run" / "model"
    model, tok = load_model(folder)
    test = read_prepared(prepared, "test")
    direct = run_inference(model, make_loader(model, tok, test, None), torch.device("cpu"), "fp32",
                           progress=False).pred
    probe = build_probe_model(recipe)
    cache = save_features(embed_table(probe, tok, read_prepared(prepared), None), tmp_path / "f.safetensors",
                          model_signature(probe))
    report = evaluate_on_features(folder, prepared, cache, tmp_path / "eval")
    target = test.column("average_rating").to_numpy()
    assert report["metrics"]["overall"]["plcc"] == pytest.approx(
        compute_metrics(np.clip(direct, 1, 5), target)["overall"]["plcc"], abs=1e-4)
