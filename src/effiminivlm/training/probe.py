"""Probe recipes (`train.probe: ridge | head`): frozen pretrained towers, only the head is fitted, on
cached features (`training.embed`).

* ``ridge``: the head is one Linear layer (`model.head.hidden_dims: []`) solved in closed form: weighted
  ridge on the standardised [image; text] features, the recipe's sample weights (`train.sample_weights`,
  `train.missing_rating_number` for unknown counts), alpha chosen from `ALPHAS` by `train.probe_alpha`:
  exact leave-one-out over the train split (`training.ridge`; weighted MSE, the default, or PLCC of the LOO
  predictions) or the validation PLCC (ties: the larger alpha, the simpler model). Seconds for thousands of
  items.
* ``head``: the recipe's MLP head trained alone on the cached features with the recipe's loss (a name or a
  mixture), sample weights, AdamW and schedule, early-stopped on validation PLCC like `training.loop`; each
  epoch costs a few milliseconds.

Both take the training loop's train rows (`train_rows.mix_train_rows`): sample weights, and with
`train.distill.teacher` the teacher's soft labels blended into the targets. Pseudo-labelled rows are refused:
their items have no cached features.

Either way the result is an ordinary model folder (towers + fitted head) that `evaluate`, `predict` and the
scorer load like any other, and the run folder has `recipe.yaml`, `train_summary.json` and `model/`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effiminivlm.config import Recipe
from effiminivlm.data.images import ImageStore
from effiminivlm.data.lexical import LexicalSettings
from effiminivlm.data.prepare import read_prepared
from effiminivlm.data.text import table_texts
from effiminivlm.errors import ConfigError, DataError
from effiminivlm.evaluation.baseline import add_words_only, baseline_line, words_only
from effiminivlm.evaluation.conformal import (
    coverage_report,
    load_conformal,
    render_coverage_markdown,
)
from effiminivlm.evaluation.metrics import compute_metrics
from effiminivlm.files import atomic_write_text, write_json
from effiminivlm.models.factory import create_model, create_tokenizer
from effiminivlm.models.hybrid import HybridProbe
from effiminivlm.runtime import resolve_compute_precision, resolve_device
from effiminivlm.training.embed import embed_table, feature_matrix, load_features, model_signature
from effiminivlm.training.hybrid import choose_depth, fit_hybrid, hybrid_side_scores
from effiminivlm.training.losses import build_loss
from effiminivlm.training.ridge import fit_ridge, select_alpha
from effiminivlm.training.rundir import open_run_dir
from effiminivlm.training.skeleton import publish_model, read_train_val, weighted_train_rows
from effiminivlm.training.train_rows import mix_train_rows
from effiminivlm.training.weights import WEIGHT_COLUMN

__all__ = ["ALPHAS", "build_probe_model", "evaluate_on_features", "fit_ridge", "train_probe"]
ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))




def build_probe_model(recipe: Recipe) -> torch.nn.Module:
    """The recipe's model with frozen towers. Built under a fixed seed (0), not the run's: towers without
    pretrained weights are random features, and every seed, fold and fraction must see the same ones (the
    ones `embed` cached); the run's seed still drives the head's training."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = create_model(recipe.model, pretrained=True)
    finally:
        torch.random.set_rng_state(state)
    model.freeze(image=True, text=True)
    return model


def evaluate_on_features(model_dir: str | Path, data_dir: str | Path, features: str | Path,
                         out_dir: str | Path, split: str = "test", min_rating_number: int = 10
                         ) -> dict[str, Any]:
    """`evaluate`'s report for a probe model, from the cached features instead of the towers: the towers
    are frozen, so head(cached features) is the model's output (tests/training/test_probe.py checks it
    against `run_inference`), and a scaling study or k-fold needs no tower pass per run."""
    from effiminivlm.evaluation.report import render_markdown, write_report
    from effiminivlm.inference import SCORE_RANGE
    from effiminivlm.models.factory import load_model

    model, _ = load_model(model_dir)
    rows = read_prepared(data_dir, split)
    if rows.num_rows == 0:
        raise DataError(f"{data_dir}: split {split!r} is empty")
    hybrid = isinstance(model, HybridProbe)
    reads = not hybrid or model.cfg.reads_towers
    feats = load_features(features, model_signature(model)) if reads else None
    x = _tower_matrix(feats, rows, model)
    with torch.no_grad():  # the head (and a hybrid's neighbours block) on the cached features
        pred = model.score_features(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
    if hybrid:  # + the lexical and listing blocks, as the model's processor computes them
        pred = pred + hybrid_side_scores(model, rows)
    pred = np.clip(pred, *SCORE_RANGE)
    target = rows.column("average_rating").to_numpy().astype(np.float64)
    counts = np.array([0.0 if c is None else float(c) for c in rows.column("rating_number").to_pylist()])
    metrics = compute_metrics(pred, target, rows.column("category").to_pylist(), counts, min_rating_number)
    lines: list[str] = []
    add_words_only(metrics, data_dir, rows, lines.append, min_rating_number)
    conf = load_conformal(model_dir)
    if conf is not None:
        metrics["conformal"] = coverage_report(pred, target, conf, counts, min_rating_number)
    meta = {"model": str(model_dir), "data": str(data_dir), "split": split, "features": str(features)}
    title = f"EffiMiniVLM probe on {Path(data_dir).name} ({split})"
    paths = write_report(metrics, pred, target, out_dir, title=title, meta=meta)
    if conf is not None:
        with paths["markdown"].open("a") as f:
            f.write(render_coverage_markdown(metrics["conformal"]))
    markdown = render_markdown(metrics, title=title, meta=meta) + "".join(f"\n{line}\n" for line in lines)
    return {"metrics": metrics, "paths": paths, "markdown": markdown}


def _plcc(pred: np.ndarray, y: np.ndarray) -> float:
    return compute_metrics(pred, y)["overall"]["plcc"]


def train_probe(recipe: Recipe, data_dir: str | Path, out_dir: str | Path, *,
                features: str | Path | None = None, overwrite: bool = False,
                images_dir: str | Path | None = None, device: str | None = None, progress: bool = False,
                log: Callable[[str], None] = print, strict: bool = False, **_: Any) -> dict[str, Any]:
    """Fit the head of `recipe` (train.probe ridge | head) on cached features; returns the run summary."""
    tc = recipe.train
    if tc.probe not in ("ridge", "head"):
        raise ConfigError(f"train.probe must be ridge or head for a probe run, got {tc.probe!r}")
    if tc.pseudo.path:
        raise ConfigError("train.pseudo: probe recipes fit on cached features of the dataset's items; "
                          "pseudo-labelled rows have none (fine-tune, or prepare them as a dataset)")
    if tc.distill.embeddings:
        raise ConfigError("train.distill.embeddings shapes the towers' representation; a probe's towers are "
                          "frozen (use the teacher's scores, --teacher SCORES.csv, or fine-tune)")
    if tc.probe == "ridge" and recipe.model.head.hidden_dims:
        raise ConfigError("train.probe=ridge needs a linear head: set model.head.hidden_dims=[]")
    out = Path(out_dir)
    open_run_dir(out, resume=False, overwrite=overwrite, log=log)
    dev = resolve_device(device)
    model = build_probe_model(recipe)
    torch.manual_seed(tc.seed)
    tokenizer = create_tokenizer(recipe.model) if model.text_encoder is not None else None
    train_rows, val_rows = read_train_val(data_dir)
    train_rows, weighting = weighted_train_rows(train_rows, tc, log)
    hybrid = tc.probe == "ridge" and tc.probe_features != ["tower"]
    if not tc.probe_reads_towers:  # lexical / listing blocks only: no tower features are read
        feats = None
    elif features is not None:
        feats = load_features(features, model_signature(model))
    else:
        store = ImageStore.for_prepared(data_dir, images_dir)
        both = read_prepared(data_dir)
        feats = embed_table(model, tokenizer, both, store, images=recipe.data.images,
                            batch_size=tc.eval_batch_size, device=dev,
                            precision=resolve_compute_precision(tc.precision, dev), progress=progress,
                            depths=tc.probe_picks_depth)
    x_tr, x_va = (_tower_matrix(feats, rows, model) for rows in (train_rows, val_rows))
    y_va = val_rows.column("average_rating").to_numpy().astype(np.float64)
    train_rows, mixed = mix_train_rows(train_rows, tc, weighting["mu"], strict=strict, log=log)
    y_tr = train_rows.column("average_rating").to_numpy().astype(np.float64)  # teacher-blended if distilling
    x_tr = _tower_matrix(feats, train_rows, model)  # mix_train_rows may drop or add rows
    w = train_rows.column(WEIGHT_COLUMN).to_numpy().astype(np.float64)
    if not w.any():  # no usable weight: plain least squares
        w = np.ones_like(y_tr)
    depth_x = None  # the tower's features at every text-tower depth, when the probe picks one
    if tc.probe_picks_depth and model.text_encoder is not None:
        depth_x = _depth_matrices(feats, train_rows, val_rows, model, x_tr, x_va)
    if hybrid:
        model, result = fit_hybrid(recipe, model, train_rows, val_rows, x_tr, x_va, y_tr, w, y_va, ALPHAS,
                                   log, depth_x)
        val_pred = result.pop("val_pred")
    elif tc.probe == "ridge":
        depth = {}
        if depth_x is not None:  # the tower-only probe picks it too
            x_tr, x_va, _, depth = choose_depth(model, depth_x, y_tr, w, ALPHAS, log)
        result = {**_ridge_head(model, x_tr, y_tr, w, x_va, y_va, tc.probe_alpha), **depth}
    else:
        result = _train_head(model, recipe, x_tr, y_tr, w, x_va, y_va, log)
    if not hybrid:
        with torch.no_grad():
            val_pred = model.head(torch.as_tensor(x_va, dtype=torch.float32)).squeeze(-1).double().numpy()
    if "words_only_val_plcc" not in result:  # the baseline beside the model: same rows, same weights
        words, _ = words_only(table_texts(train_rows), y_tr, w, table_texts(val_rows),
                              LexicalSettings.from_cfg(tc.lexical))
        result["words_only_val_plcc"] = _plcc(words, y_va)
    atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
    publish_model(out, model, tokenizer, val_pred, y_va)
    summary = {"probe": tc.probe, **result, "mu": weighting["mu"], "missing_rating_number": weighting,
               **mixed, "train_items": len(y_tr), "val_items": len(y_va), "model_dir": str(out / "model")}
    write_json(summary, out / "train_summary.json")
    log(f"probe {tc.probe}: val PLCC {summary['best_val_plcc']:.4f} "
        + (f"(epoch {result['best_epoch']})" if tc.probe != "ridge" else
           f"(alpha {result['alpha']:g})" if result["alpha"] is not None else "(no ridge block)"))
    log(f"val {baseline_line(summary['best_val_plcc'], summary['words_only_val_plcc'])}")
    return summary


def _tower_matrix(feats: dict[str, Any] | None, rows: Any, model: torch.nn.Module) -> np.ndarray:
    """The cached tower features of `rows`; zero columns when the tower block is off (never read)."""
    if feats is None:
        return np.zeros((rows.num_rows, model.head[-1].in_features))
    return feature_matrix(feats, rows.column("parent_asin").to_pylist())


def _depth_matrices(feats: dict[str, Any], train_rows: Any, val_rows: Any, model: torch.nn.Module,
                    x_tr: np.ndarray, x_va: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{depth: (train, val) tower features with the text tower cut to that depth}, the full depth's being
    (x_tr, x_va), for `train.probe_text_depth: auto`."""
    full = getattr(model.text_encoder, "depth", None)
    cut = sorted(int(k.removeprefix("text@")) for k in feats if k.startswith("text@"))
    if full is None or len(cut) != full - 1:
        raise DataError(f"train.probe_text_depth=auto needs tower features of every text-tower depth; this "
                        f"cache has {len(cut)} of {(full or 1) - 1} (embed again with a recipe that sets it: "
                        "`effiminivlm embed --recipe ... --set train.probe_text_depth=auto`)")
    out = {full: (x_tr, x_va)}
    for d in cut:
        view = {**feats, "text": feats[f"text@{d}"]}
        out[d] = (_tower_matrix(view, train_rows, model), _tower_matrix(view, val_rows, model))
    return out


def _ridge_head(model: torch.nn.Module, x_tr: np.ndarray, y_tr: np.ndarray, w: np.ndarray,
                x_va: np.ndarray, y_va: np.ndarray, criterion: str) -> dict[str, Any]:
    """Closed-form ridge over ALPHAS, alpha by `criterion` (LOO on train, or val PLCC), written into the
    model's Linear head. The val PLCC of every alpha is kept in the curve either way."""
    curve = []
    fits = []
    for alpha in ALPHAS:
        coef, b = fit_ridge(x_tr, y_tr, w, alpha)
        fits.append((coef, b))
        curve.append({"alpha": alpha, "val_plcc": _plcc(x_va @ coef + b, y_va)})
    if criterion == "val_plcc":
        scores = [-math.inf if math.isnan(c["val_plcc"]) else c["val_plcc"] for c in curve]
        pick = max(i for i, v in enumerate(scores) if v == max(scores))  # ties: the larger alpha
    else:
        pick, loo = select_alpha(x_tr, y_tr, w, ALPHAS, criterion)
        for c, extra in zip(curve, loo, strict=True):
            c.update({k: v for k, v in extra.items() if k != "alpha"})
    coef, b = fits[pick]
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32).unsqueeze(0))
        linear.bias.fill_(b)
    model.head.eval()
    return {"alpha": ALPHAS[pick], "alpha_by": criterion, "best_val_plcc": curve[pick]["val_plcc"],
            "alpha_curve": curve}


def _train_head(model: torch.nn.Module, recipe: Recipe, x_tr: np.ndarray, y_tr: np.ndarray,
                w: np.ndarray, x_va: np.ndarray, y_va: np.ndarray,
                log: Callable[[str], None]) -> dict[str, Any]:
    """The MLP head alone on cached features: the recipe's loss (a mixture too) with the sample weights `w`,
    AdamW, cosine schedule, early stopping on val PLCC."""
    from transformers import get_cosine_schedule_with_warmup

    tc = recipe.train
    head = model.head.float()
    xt, yt = torch.as_tensor(x_tr, dtype=torch.float32), torch.as_tensor(y_tr, dtype=torch.float32)
    xv = torch.as_tensor(x_va, dtype=torch.float32)
    last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias.fill_(float(y_tr.mean()))
    steps = math.ceil(len(yt) / tc.batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(tc.warmup_ratio * steps * tc.epochs), steps * tc.epochs)
    loss_fn = build_loss(tc.loss, {"delta": tc.huber_delta})
    wt = torch.as_tensor(w, dtype=torch.float32)
    gen = torch.Generator().manual_seed(tc.seed)
    best = {"best_val_plcc": -math.inf, "best_epoch": 0}
    best_state = None
    bad = 0
    for epoch in range(1, tc.epochs + 1):
        head.train()
        for idx in torch.randperm(len(yt), generator=gen).split(tc.batch_size):
            loss = loss_fn(head(xt[idx]).squeeze(-1), yt[idx], wt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
        head.eval()
        with torch.no_grad():
            p = _plcc(head(xv).squeeze(-1).double().numpy(), y_va)
        if not math.isnan(p) and p > best["best_val_plcc"]:
            best = {"best_val_plcc": p, "best_epoch": epoch}
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
            bad = 0
        else:
            bad += 1
            if bad > tc.patience:
                break
    if best_state is None:
        raise DataError("no epoch of the probe head produced a defined validation PLCC")
    head.load_state_dict(best_state)
    log(f"probe head: best val PLCC {best['best_val_plcc']:.4f} at epoch {best['best_epoch']}")
    return {**best, "epochs_run": epoch}
