"""A text-only reference point: TF-IDF + ridge regression on a prepared dataset (not a test).

Why it exists: a multimodal model's PLCC means little without a cheap baseline beside it. If a bag of words
with a linear model gets close, the image tower and the transformer earn little; if it is far behind, the
gap is what they buy. The text is exactly what EffiMiniVLM reads (`data.text.product_text`), so the only
difference is the model.

Protocol (no test data ever touches the fit):

* fixed split: the TF-IDF vocabulary/IDF and the ridge are fit on `train`; alpha is the one of `ALPHAS` with
  the best PLCC on `val` (ties: the larger alpha, i.e. the simpler model); `compute_metrics` is reported on
  `test`. Predictions are clipped to the rating range 1-5 (a known bound, as any rating model would do).
* `--kfold K`: the same procedure repeated over K shuffled folds of ALL rows (the prepared split column is
  ignored): each fold is the test set once, and 1/9 of the remaining rows (the prepared 8:1 train:val ratio)
  is the validation set that picks alpha. Reports mean ± std over folds, which on a few hundred items says
  more than one 30-item test split.

A "train mean" row (predict the training mean for every item) is the floor for RMSE/MAE; its PLCC is
undefined by construction.

    .venv/bin/python benchmarks/baseline_tfidf.py --data /tmp/prep
    .venv/bin/python benchmarks/baseline_tfidf.py --data /tmp/prep --kfold 5 --json /tmp/tfidf.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from effiminivlm.data.prepare import read_prepared
from effiminivlm.data.text import product_text
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.evaluation.metrics import compute_metrics, metric_group
from effiminivlm.evaluation.report import to_jsonable

ALPHAS: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
RATING_RANGE = (1.0, 5.0)
VAL_FRACTION = 1 / 9  # the prepared 8:1:1 split's val share of the non-test rows
SUMMARY_KEYS = ("plcc", "srcc", "rmse", "mae")


@dataclass
class Rows:
    """The columns the baseline needs, as aligned arrays."""

    text: np.ndarray  # object array of str
    y: np.ndarray
    category: np.ndarray
    rating_number: np.ndarray
    split: np.ndarray

    def take(self, idx: np.ndarray) -> Rows:
        return Rows(self.text[idx], self.y[idx], self.category[idx], self.rating_number[idx], self.split[idx])


def load_rows(data_dir: str | Path) -> Rows:
    """All prepared rows with the model's text template applied."""
    t = read_prepared(data_dir).to_pydict()
    if not t["parent_asin"]:
        raise DataError(f"{data_dir}: the prepared dataset has no rows")
    text = [product_text(c, ti, f, d) for c, ti, f, d in
            zip(t["category"], t["title"], t["features"], t["description"], strict=True)]
    return Rows(np.array(text, dtype=object), np.asarray(t["average_rating"], dtype=np.float64),
                np.array(t["category"], dtype=object),
                np.asarray([0 if r is None else r for r in t["rating_number"]], dtype=np.int64),
                np.array(t["split"], dtype=object))


def make_vectorizer() -> TfidfVectorizer:
    """Word uni+bigrams, sublinear tf, terms in >= 2 training items (a one-item term is an id, not signal)."""
    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, strip_accents="unicode",
                           dtype=np.float64)


def fit_select_predict(train: Rows, val: Rows, test: Rows,
                       alphas: tuple[float, ...] = ALPHAS) -> dict[str, Any]:
    """Fit TF-IDF on train, pick alpha by val PLCC, predict test. Returns alpha, val curve, test preds."""
    for name, part, need in (("train", train, 2), ("val", val, 2), ("test", test, 1)):
        if part.y.size < need:
            raise DataError(f"the {name} part has {part.y.size} rows; the baseline needs at least {need}")
    vec = make_vectorizer()
    try:
        x_train = vec.fit_transform(train.text)
    except ValueError as e:  # every term below min_df: too few or too uniform training texts
        raise DataError(f"TF-IDF found no usable terms in {train.y.size} training texts: {e}") from None
    x_val, x_test = vec.transform(val.text), vec.transform(test.text)
    curve: list[dict[str, float]] = []
    best: tuple[float, float] | None = None  # (val PLCC, alpha)
    for alpha in alphas:
        model = Ridge(alpha=alpha).fit(x_train, train.y)
        group = metric_group(np.clip(model.predict(x_val), *RATING_RANGE), val.y)
        curve.append({"alpha": alpha, "val_plcc": group["plcc"], "val_rmse": group["rmse"]})
        score = -math.inf if math.isnan(group["plcc"]) else group["plcc"]
        if best is None or score >= best[0]:  # >= : on a tie the larger alpha wins
            best = (score, alpha)
    assert best is not None  # alphas is never empty (checked by the callers' argument parsing)
    model = Ridge(alpha=best[1]).fit(x_train, train.y)
    return {"alpha": best[1], "val_plcc": best[0] if math.isfinite(best[0]) else math.nan, "curve": curve,
            "pred": np.clip(model.predict(x_test), *RATING_RANGE), "n_terms": len(vec.vocabulary_)}


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics["overall"][k] for k in ("n", *SUMMARY_KEYS)}


def run_fixed_split(data_dir: str | Path, alphas: tuple[float, ...] = ALPHAS,
                    min_rating_number: int = 10) -> dict[str, Any]:
    """The prepared train/val/test split: alpha chosen on val, `compute_metrics` on test."""
    rows = load_rows(data_dir)
    train, val, test = (rows.take(np.flatnonzero(rows.split == s)) for s in ("train", "val", "test"))
    fit = fit_select_predict(train, val, test, alphas)
    metrics = compute_metrics(fit["pred"], test.y, test.category, test.rating_number, min_rating_number)
    mean_pred = np.full(test.y.shape, train.y.mean())
    return {"sizes": {"train": int(train.y.size), "val": int(val.y.size), "test": int(test.y.size)},
            "alpha": fit["alpha"], "val_plcc": fit["val_plcc"], "n_terms": fit["n_terms"],
            "alpha_curve": fit["curve"], "test": metrics,
            "train_mean": compute_metrics(mean_pred, test.y)["overall"]}


def run_kfold(data_dir: str | Path, k: int = 5, seed: int = 0,
              alphas: tuple[float, ...] = ALPHAS) -> dict[str, Any]:
    """K shuffled folds over all prepared rows (see `kfold_rows`)."""
    return kfold_rows(load_rows(data_dir), k, seed, alphas)


def kfold_rows(rows: Rows, k: int = 5, seed: int = 0, alphas: tuple[float, ...] = ALPHAS) -> dict[str, Any]:
    """K shuffled folds; per fold the fixed-split procedure. Mean ± std (ddof=1) over folds.

    ``oof_pred`` holds each row's prediction from the one fold where it was a test row.
    """
    if not 2 <= k <= rows.y.size:
        raise EffiMiniVLMError(f"--kfold must be in [2, {rows.y.size}] for {rows.y.size} rows, got {k}")
    rng = np.random.default_rng(seed)
    oof = np.full(rows.y.shape, np.nan)
    folds, floors = [], []
    for fold, (rest, test_idx) in enumerate(KFold(k, shuffle=True, random_state=seed).split(rows.y)):
        rest = rng.permutation(rest)
        n_val = max(2, round(VAL_FRACTION * rest.size))
        val_idx, train_idx = rest[:n_val], rest[n_val:]
        fit = fit_select_predict(rows.take(train_idx), rows.take(val_idx), rows.take(test_idx), alphas)
        oof[test_idx] = fit["pred"]
        m = _summary(compute_metrics(fit["pred"], rows.y[test_idx]))
        folds.append({"fold": fold, "alpha": fit["alpha"], **m})
        floors.append(_summary(compute_metrics(np.full(test_idx.size, rows.y[train_idx].mean()),
                                               rows.y[test_idx])))
    return {"k": k, "seed": seed, "n": int(rows.y.size), "folds": folds, "mean_std": _mean_std(folds),
            "train_mean": _mean_std(floors), "oof_pred": oof}


def run_same_folds(data_dir: str | Path, k: int = 5, seed: int = 0, alphas: tuple[float, ...] = ALPHAS,
                   min_rating_number: int = 10) -> dict[str, Any]:
    """The folds of `effiminivlm train --kfold K --fold-seed SEED` (`data.folds`: hashed ids, stratified,
    val = 1/9 of the rest), so the baseline is compared with a recipe on exactly the same test items;
    `aggregate` is `evaluation.aggregate.aggregate_runs` over the folds (overall and rating_number >= k)."""
    from effiminivlm.data.folds import assign_folds, fold_splits
    from effiminivlm.evaluation.aggregate import aggregate_runs

    rows = load_rows(data_dir)
    ids = read_prepared(data_dir).column("parent_asin").to_pylist()
    rare = int(json.loads((Path(data_dir) / "summary.json").read_text()).get("options", {})
               .get("rare_threshold", 50))
    fold = assign_folds(ids, rows.y, k, seed, rare)
    runs = []
    for f in range(k):
        split = fold_splits(ids, rows.y, fold, f, seed, rare)
        train, val, test = (rows.take(np.flatnonzero(split == s)) for s in ("train", "val", "test"))
        fit = fit_select_predict(train, val, test, alphas)
        metrics = compute_metrics(fit["pred"], test.y, None, test.rating_number, min_rating_number)
        runs.append({"fold": f, "seed": 0, "alpha": fit["alpha"], "metrics": metrics})
    return {"k": k, "fold_seed": seed, "n": int(rows.y.size), "runs": runs, "aggregate": aggregate_runs(runs)}


def _mean_std(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample std of each metric over folds; a fold with an undefined metric makes it undefined."""
    out = {}
    for key in SUMMARY_KEYS:
        v = np.array([f[key] for f in folds], dtype=np.float64)
        out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else math.nan}
    return out


def _cell(v: float, std: float | None = None) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v:.4f}" if std is None else f"{v:.4f} ± {std:.4f}"


def format_table(name: str, fixed: dict[str, Any] | None, kfold: dict[str, Any] | None) -> str:
    """A Markdown table of the results (pasteable into a pull request or the README)."""
    lines = [f"TF-IDF + ridge on {name}", "", "| setting | model | n | PLCC | SRCC | RMSE | MAE |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    if fixed is not None:
        s = fixed["sizes"]
        setting = f"fixed split {s['train']}/{s['val']}/{s['test']}"
        groups = [(f"tfidf+ridge (alpha={fixed['alpha']:g})", fixed["test"]["overall"])]
        groups += [(f"tfidf+ridge, {key.replace('rating_number_ge_', 'rating_number >= ')}", g)
                   for key, g in fixed["test"].items() if key.startswith("rating_number_ge_")]
        groups.append(("train mean", fixed["train_mean"]))
        for model, g in groups:
            lines.append(f"| {setting} | {model} | {g['n']} | "
                         + " | ".join(_cell(g[k]) for k in SUMMARY_KEYS) + " |")
    if kfold is not None:
        setting = f"{kfold['k']}-fold (seed {kfold['seed']})"
        alphas = sorted({f["alpha"] for f in kfold["folds"]})
        for model, ms in ((f"tfidf+ridge (alpha in {{{', '.join(f'{a:g}' for a in alphas)}}})",
                           kfold["mean_std"]), ("train mean", kfold["train_mean"])):
            lines.append(f"| {setting} | {model} | {kfold['n']} | "
                         + " | ".join(_cell(ms[k]["mean"], ms[k]["std"]) for k in SUMMARY_KEYS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared dataset folder (`effiminivlm prepare --out`)")
    ap.add_argument("--kfold", type=int, default=0, metavar="K",
                    help="also run K-fold cross-validation over all rows (0: only the fixed split)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the K-fold shuffle and inner val split")
    ap.add_argument("--same-folds", action="store_true",
                    help="with --kfold: use the folds of `effiminivlm train --kfold K --fold-seed SEED` "
                         "instead of sklearn's KFold (compare with a recipe on the same test items)")
    ap.add_argument("--min-rating-number", type=int, default=10, help="threshold of the well-rated subset")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write all results here")
    args = ap.parse_args(argv)
    try:
        fixed = run_fixed_split(args.data, min_rating_number=args.min_rating_number)
        same = (run_same_folds(args.data, args.kfold, args.seed, min_rating_number=args.min_rating_number)
                if args.kfold and args.same_folds else None)
        kfold = run_kfold(args.data, args.kfold, args.seed) if args.kfold and not args.same_folds else None
    except EffiMiniVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(str(args.data), fixed, kfold))
    if same is not None:
        from effiminivlm.evaluation.aggregate import render_aggregate_markdown

        print(render_aggregate_markdown(same["aggregate"], f"TF-IDF + ridge, {args.kfold}-fold (the folds of "
                                        f"train --kfold, fold seed {args.seed})"))
    if args.json is not None:
        if kfold is not None:
            kfold = {k: v for k, v in kfold.items() if k != "oof_pred"}
        payload = {"data": str(args.data), "fixed_split": fixed, "kfold": kfold, "same_folds": same}
        args.json.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
