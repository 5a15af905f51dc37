"""The hybrid probe's fit (`train.probe: ridge` with `train.probe_features` beyond [tower]): lexical TF-IDF,
frozen tower features and listing fields, each block a weighted ridge in closed form, and the nearest train
items' ratings (neighbours), combined linearly.

Why: on small real catalogs the blocks are complementary (a bag of n-grams catches brand and product-type
words, the sentence embedding their meaning, the listing block the store's track record), and each is cheap
to fit exactly. Two combinations (`train.probe_combine`):

* ``stack`` (default): each block's ridge picks its own alpha by exact leave-one-out MSE; a second level (a
  weighted least-squares fit with intercept) is fit on the blocks' LOO predictions of the train rows, which
  are out-of-sample for every row, so the weights are not those of an overfit block. Final rating =
  c + sum_b g_b x block_b (`models.hybrid.HybridProbe`), linear in every block's output.
* ``joint``: one ridge over the concatenated blocks, each standardised and scaled to unit total variance
  (so no block wins by its column count), alpha by leave-one-out MSE (`evaluation.dual_ridge`).

With `train.probe_text_depth: auto` the tower block is fit on the text tower cut to each depth (features of
every depth come from one embedding pass) and the depth of lowest weighted LOO MSE is kept: the saved
model's tower is cut to it. Why: all-MiniLM-L6-v2's last layer is tuned for sentence similarity; on 5,773
real Fashion items its intermediate layers carry more of the rating signal (docs/realdata.md), and a cut
tower costs fewer FLOPs. The choice sees only train rows, so it is no peek at the test split.

The neighbours block (`train.probe_features: [..., neighbours]`) is no ridge: the similarity-weighted mean
rating of a listing's k nearest train items in the tower features the tower block reads (`models.hybrid`),
k and the temperature picked by leave-one-out MSE over `train.neighbours`' grids (each train row scored
without itself); it enters the stack by its LOO predictions like every block.

Both use the recipe's train rows and sample weights. The lexical block's own fit is exactly the words-only
baseline (`evaluation.baseline`), so a hybrid run reports it for free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch

from effiminivlm.config import NeighboursCfg, Recipe
from effiminivlm.data.lexical import LexicalFeatures, LexicalSettings
from effiminivlm.data.listing import ListingEncoder, parse_listing
from effiminivlm.data.text import table_texts
from effiminivlm.evaluation.dual_ridge import fit_dual_ridge
from effiminivlm.evaluation.metrics import compute_metrics
from effiminivlm.models.hybrid import HybridProbe, NeighbourTable, hybrid_from, nearest, neighbour_mean
from effiminivlm.training.ridge import fit_ridge, loo_predictions, select_alpha

__all__ = ["choose_depth", "fit_hybrid", "fit_neighbours", "hybrid_side_scores", "listing_inputs",
           "pick_depth"]


def _plcc(pred: np.ndarray, y: np.ndarray) -> float:
    return compute_metrics(pred, y)["overall"]["plcc"]


def listing_inputs(rows: pa.Table) -> tuple[list[dict[str, Any] | None], list[int], list[str]]:
    """(parsed `listing` per row (None without), number of image references, description) of a table."""
    listings = ([parse_listing(v) for v in rows.column("listing").to_pylist()]
                if "listing" in rows.column_names else [None] * rows.num_rows)
    n_images = [len(v or []) for v in rows.column("images").to_pylist()]
    return listings, n_images, [v or "" for v in rows.column("description").to_pylist()]


def dense_block(x: np.ndarray, y: np.ndarray, w: np.ndarray, alphas: tuple[float, ...]) -> dict[str, Any]:
    """A dense block's ridge, alpha by LOO MSE: coef, intercept, alpha, LOO predictions at that alpha."""
    pick, _ = select_alpha(x, y, w, alphas, "loo_mse")
    coef, b = fit_ridge(x, y, w, alphas[pick])  # coef in the raw scale
    loo = loo_predictions(x, y, w, [alphas[pick]])[0]
    return {"coef": coef, "intercept": b, "alpha": float(alphas[pick]), "loo": loo}


def stack_blocks(loo: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """(g [B], c): weighted least squares of y on the blocks' LOO predictions, with an intercept."""
    a = np.hstack([loo, np.ones((len(y), 1))])
    sw = np.sqrt(w)[:, None]
    sol, *_ = np.linalg.lstsq(a * sw, y * sw[:, 0], rcond=None)
    return sol[:-1], float(sol[-1])


def fit_neighbours(x: np.ndarray, y: np.ndarray, w: np.ndarray, cfg: NeighboursCfg, seed: int,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """The neighbours block on train features `x`: its table (the train items it keeps: those of positive
    weight, a seeded sample of `cfg.max_items` when more) at the k and temperature of lowest weighted LOO
    MSE over the grids, and the LOO predictions of every train row at that choice (kept items scored
    without themselves). Returns {"table": NeighbourTable (gain 1), "loo", "items", "loo_mse": {...}}."""
    keep = np.flatnonzero(w > 0)
    if len(keep) < 2:
        raise ValueError("the neighbours block needs at least 2 train rows of positive weight")
    if len(keep) > cfg.max_items:
        keep = np.sort(np.random.default_rng(seed).choice(keep, cfg.max_items, replace=False))
        log(f"neighbours: {cfg.max_items} of {int((w > 0).sum())} train items kept "
            "(train.neighbours.max_items)")
    sd = x[keep].std(0)
    scale = 1.0 / np.where(sd > 1e-12, sd, 1.0)  # a constant feature stays constant (zero after the shift)
    k_max = min(max(cfg.ks), len(keep) - 1)
    table = NeighbourTable(len(keep), x.shape[1], k_max, 0.0).fill(x[keep], y[keep], w[keep], x[keep].mean(0),
                                                                    scale)
    # every train row's neighbours once at the largest k (sorted); each grid point is a prefix of them
    inside = torch.zeros(len(y), dtype=torch.bool)
    inside[torch.as_tensor(keep)] = True
    sims, idx = torch.empty(len(y), k_max), torch.empty(len(y), k_max, dtype=torch.long)
    with torch.no_grad():
        sims[inside], idx[inside] = nearest(table.keys, table.keys, k_max, self_offset=0)
        if not inside.all():  # rows of zero weight, or beyond max_items: scored by all kept items
            sims[~inside], idx[~inside] = nearest(table.embed(torch.as_tensor(x[~inside.numpy()])),
                                                  table.keys, k_max)
    scores = {}
    for k in sorted({min(k, k_max) for k in cfg.ks}):
        for temperature in cfg.temperatures:
            loo = neighbour_mean(sims[:, :k], idx[:, :k], table.values, table.weights, temperature)
            loo = loo.double().numpy()
            scores[(k, float(temperature))] = (float(np.average((loo - y) ** 2, weights=w)), loo)
    table.k, table.temperature = min(scores, key=lambda c: scores[c][0])
    choice = (table.k, table.temperature)
    log(f"neighbours: k {table.k}, temperature {table.temperature:g} (LOO MSE {scores[choice][0]:.4f}) of "
        f"{len(scores)} choices, {len(keep)} train items")
    return {"table": table, "loo": scores[choice][1], "items": len(keep),
            "loo_mse": {f"{k}/{t:g}": v[0] for (k, t), v in scores.items()}}


def _joint(blocks: dict[str, Any], y: np.ndarray, w: np.ndarray) -> dict[str, dict[str, Any]]:
    """One ridge over the standardised blocks, each scaled to unit total variance; per block coef in the raw
    scale (the shared intercept is returned on the first block)."""
    wn = w / w.sum()
    parts, meta = [], {}
    for name, x in blocks.items():
        if sp.issparse(x):  # lexical: not centred (the solver centres), scaled by its total variance
            mean = np.asarray(wn @ x).ravel()
            var = float(np.asarray(wn @ x.multiply(x).sum(axis=1)).ravel()[0] - mean @ mean)
            sd, scale = None, 1.0 / np.sqrt(max(var, 1e-12))
            parts.append(x * scale)
        else:
            mean = wn @ x
            sd = np.sqrt(wn @ (x - mean) ** 2)
            sd[sd < 1e-12] = 1.0
            scale = 1.0 / np.sqrt(x.shape[1])
            parts.append(sp.csr_matrix((x - mean) / sd * scale))
        meta[name] = (x.shape[1], sd, scale)
    fit = fit_dual_ridge(sp.hstack(parts, format="csr"), y, w)
    out, start, intercept = {}, 0, fit.intercept
    for name, x in blocks.items():
        d, sd, scale = meta[name]
        coef = fit.coef[start:start + d] * scale
        start += d
        if sd is not None:  # undo the centring / scaling of a dense block: fold its mean into the intercept
            coef = coef / sd
            intercept -= float((wn @ x) @ coef)
        out[name] = {"coef": coef, "alpha": fit.alpha}
    out[next(iter(blocks))]["intercept_all"] = intercept
    return out


def pick_depth(depth_x: dict[int, tuple[np.ndarray, np.ndarray]], y: np.ndarray, w: np.ndarray,
               alphas: tuple[float, ...]) -> tuple[int, dict[int, float], dict[str, Any]]:
    """(depth, {depth: weighted LOO MSE}, that depth's dense-block fit): the text-tower depth whose features'
    ridge has the lowest leave-one-out MSE on the train rows (`depth_x`: depth -> (train, val) features)."""
    fits = {d: dense_block(x[0], y, w, alphas) for d, x in depth_x.items()}
    mse = {d: float(np.average((fits[d]["loo"] - y) ** 2, weights=w)) for d in sorted(fits)}
    best = min(mse, key=lambda d: (mse[d], -d))  # ties: the deeper (the uncut) tower
    return best, mse, fits[best]


def choose_depth(model: torch.nn.Module, depth_x: dict[int, tuple[np.ndarray, np.ndarray]], y: np.ndarray,
                 w: np.ndarray, alphas: tuple[float, ...], log: Callable[[str], None]
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """`pick_depth`, then cut `model`'s text tower to that depth in place (the probe's own model, which the
    fitted one replaces); returns (train, val) features at that depth, its tower-block fit and the run
    summary's `text_depth` fields. One step for the hybrid and the tower-only ridge probe."""
    depth, mse, fit = pick_depth(depth_x, y, w, alphas)
    model.text_encoder.truncate(depth)  # the full depth keeps every layer
    log("tower depth: " + ", ".join(f"{d} LOO MSE {m:.4f}" for d, m in mse.items()) + f" -> {depth}")
    fields = {"text_depth": depth, "text_depth_loo_mse": {str(d): m for d, m in mse.items()}}
    return *depth_x[depth], fit, fields


def fit_hybrid(recipe: Recipe, model: torch.nn.Module, train_rows: pa.Table, val_rows: pa.Table,
               x_tr: np.ndarray, x_va: np.ndarray, y_tr: np.ndarray, w: np.ndarray, y_va: np.ndarray,
               alphas: tuple[float, ...], log: Callable[[str], None],
               depth_x: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
               ) -> tuple[HybridProbe, dict[str, Any]]:
    """Fit the blocks of `train.probe_features` on the train rows; returns (the hybrid model, the run
    summary's fields). `model` is the probe's frozen EffiMiniVLM; its towers are copied into the hybrid.
    `depth_x` (with `probe_text_depth: auto`): the tower features of every text-tower depth, the full
    depth's being (x_tr, x_va)."""
    tc = recipe.train
    tower_fit, depth_fields = None, {}
    if depth_x is not None:  # (only with a tower block: TrainCfg.probe_picks_depth)
        x_tr, x_va, tower_fit, depth_fields = choose_depth(model, depth_x, y_tr, w, alphas, log)
    names = [b for b in ("lexical", "tower", "listing", "neighbours") if b in tc.probe_features]
    lex = listing = None
    blocks_tr: dict[str, Any] = {}
    blocks_va: dict[str, Any] = {}
    if "lexical" in names:
        lex = LexicalFeatures(LexicalSettings.from_cfg(tc.lexical))
        texts_tr = table_texts(train_rows)
        blocks_tr["lexical"] = lex.fit(texts_tr).transform(texts_tr)
        blocks_va["lexical"] = lex.transform(table_texts(val_rows))
    if "tower" in names:
        blocks_tr["tower"], blocks_va["tower"] = x_tr, x_va
    if "listing" in names:
        listing = ListingEncoder(tc.listing.store_smoothing, tc.listing.store_folds)
        lst, n_img, desc = listing_inputs(train_rows)
        listing.fit(lst, y_tr)
        ids = [str(v) for v in train_rows.column("parent_asin").to_pylist()]
        blocks_tr["listing"], _ = listing.transform(lst, n_img, desc, y=y_tr, item_ids=ids)
        listing.set_fill(blocks_tr["listing"])
        blocks_va["listing"], missing = listing.transform(*listing_inputs(val_rows))
        if missing:
            log(f"hybrid: {missing} of {val_rows.num_rows} val rows have no listing fields "
                "(train means used)")
    fits: dict[str, dict[str, Any]] = {}
    table, nb_fields = None, {}
    for name in names:
        if name == "lexical":
            f = fit_dual_ridge(blocks_tr[name], y_tr, w)
            fits[name] = {"coef": f.coef, "intercept": f.intercept, "alpha": f.alpha, "loo": f.loo}
        elif name == "tower" and tower_fit is not None:
            fits[name] = tower_fit
        elif name == "neighbours":  # on the features the tower block reads (at its depth)
            nb = fit_neighbours(x_tr, y_tr, w, tc.neighbours, tc.seed, log)
            table = nb["table"]
            fits[name] = {"loo": nb["loo"], "alpha": None}
            nb_fields = {"neighbours": {"k": table.k, "temperature": table.temperature, "items": nb["items"],
                                        "loo_mse": nb["loo_mse"]}}
        else:
            fits[name] = dense_block(blocks_tr[name], y_tr, w, alphas)
    val_pred = {n: table.predict(x_va) if n == "neighbours" and table is not None else
                np.asarray(blocks_va[n] @ fits[n]["coef"]).ravel() + fits[n]["intercept"] for n in names}
    linear = [n for n in names if n != "neighbours"]
    if tc.probe_combine == "joint" and len(names) > 1:  # (config refuses joint with neighbours)
        joint = _joint(blocks_tr, y_tr, w)
        gains = dict.fromkeys(names, 1.0)
        coefs = {n: joint[n]["coef"] for n in names}
        bias = joint[names[0]]["intercept_all"]
        pred_va = bias + sum(np.asarray(blocks_va[n] @ coefs[n]).ravel() for n in names)
    else:
        g, c = stack_blocks(np.column_stack([fits[n]["loo"] for n in names]), y_tr, w)
        gains = {n: float(v) for n, v in zip(names, g, strict=True)}
        coefs = {n: fits[n]["coef"] * gains[n] for n in linear}
        bias = c + sum(gains[n] * fits[n]["intercept"] for n in linear)
        pred_va = c + sum(gains[n] * val_pred[n] for n in names)
    if table is not None:
        table.weight.fill_(gains["neighbours"])
    hybrid = _build(model, names, lex, listing, coefs, bias, table)
    result = {"probe_features": names, "combine": tc.probe_combine if len(names) > 1 else "single",
              "block_alpha": {n: fits[n]["alpha"] for n in linear}, "stack_weights": gains,
              "block_val_plcc": {n: _plcc(val_pred[n], y_va) for n in names},
              "best_val_plcc": _plcc(pred_va, y_va), "alpha_by": "loo_mse",
              "alpha": fits[linear[0]]["alpha"] if linear else None,  # none: the neighbours block alone
              "lexical_terms": lex.n_terms if lex else 0, **depth_fields, **nb_fields}
    if "lexical" in names:
        result["words_only_val_plcc"] = result["block_val_plcc"]["lexical"]
    log("hybrid blocks: " + ", ".join(
        f"{n} val PLCC {result['block_val_plcc'][n]:.4f} ("
        + (f"k {table.k}, temperature {table.temperature:g}" if n == "neighbours" and table is not None
           else f"alpha {fits[n]['alpha']:g}") + f", weight {gains[n]:.3f})" for n in names))
    return hybrid, {**result, "val_pred": pred_va}


def _build(model: torch.nn.Module, names: list[str], lex: LexicalFeatures | None,
           listing: ListingEncoder | None, coefs: dict[str, np.ndarray], bias: float,
           table: NeighbourTable | None) -> HybridProbe:
    """A HybridProbe with `model`'s towers (at their depth: `hybrid_from`) and the fitted weights."""
    sizes = (table.keys.shape[0], table.k, table.temperature) if table is not None else (0, 0, 0.0)
    hybrid = hybrid_from(model, lex, listing, tower="tower" in names, neighbours=sizes)
    hybrid.freeze(image=True, text=True)
    linear = hybrid.head[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coefs.get("tower", np.zeros(linear.in_features)),
                                            dtype=torch.float32).unsqueeze(0))
        linear.bias.fill_(bias)
        if lex is not None:
            hybrid.lexical_block.weight.copy_(torch.as_tensor(coefs["lexical"], dtype=torch.float32))
        if listing is not None:
            hybrid.listing_block.weight.copy_(torch.as_tensor(coefs["listing"], dtype=torch.float32))
        if table is not None:
            hybrid.neighbour_block.load_state_dict(table.state_dict())
    return hybrid.eval()


def hybrid_side_scores(model: HybridProbe, rows: pa.Table) -> np.ndarray:
    """The lexical + listing part of the model's output for `rows` (the tower part is the head's), as the
    model's processor computes it: for scoring from cached tower features."""
    out = np.zeros(rows.num_rows)
    if model.lexical is not None:
        weight = model.lexical_block.weight.detach().double().numpy()
        out += np.asarray(model.lexical.transform(table_texts(rows)) @ weight).ravel()
    if model.listing is not None:
        block, _ = model.listing.transform(*listing_inputs(rows))
        out += block @ model.listing_block.weight.detach().double().numpy()
    return out
