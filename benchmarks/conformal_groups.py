"""Would per-group (Mondrian) conformal intervals fix the over-coverage of well-rated items? (not a test)

The split-conformal intervals are calibrated marginally: on the real data the items with >= 10 ratings are
covered ~99% by the 80% interval, because their averages are less noisy. `rating_number` would separate them
but is not an input at inference (a cold-start item has no ratings), so a group must come from the item
itself. This script tries the one such signal that differs between the two kinds of items here, the length
of the model's text (well-rated items are the development sample's items, with long feature lists and
descriptions): groups by quantiles of the calibration (val) items' text length, one half-width per group and
level, against the single global half-width. It reruns each fold's probe ridge (the alpha its run chose,
`fit_ridge`, so the predictions are the saved model's) from the feature cache: no tower pass.

    PYTHONPATH=src python benchmarks/conformal_groups.py --runs runs/compare/ridge-loo-plcc \
        --folds runs/compare/folds --features runs/probe-k5/features.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from effiminivlm.data.prepare import read_prepared
from effiminivlm.data.text import product_text
from effiminivlm.training.embed import feature_matrix, load_features
from effiminivlm.training.ridge import fit_ridge
from effiminivlm.training.weights import compute_sample_weights, fill_missing_rating_number

SCHEMES = {"global": [], "2 groups (val length p80)": [0.8], "2 groups (p90)": [0.9],
           "3 groups (p50, p85)": [0.5, 0.85]}
LEVELS = (0.8, 0.9)


def _split(fold: Path, feats: dict, split: str) -> dict[str, np.ndarray]:
    t = read_prepared(fold, split)
    d = t.to_pydict()
    chars = [len(product_text(c, ti, f, de)) for c, ti, f, de in
             zip(d["category"], d["title"], d["features"], d["description"], strict=True)]
    return {"x": feature_matrix(feats, d["parent_asin"]), "y": np.asarray(d["average_rating"], float),
            "chars": np.asarray(chars, float), "table": t,
            "count": np.asarray([np.nan if c is None else c for c in d["rating_number"]], float)}


def _q(resid: np.ndarray, level: float) -> float:
    k = math.ceil((len(resid) + 1) * level)
    return float(np.sort(resid)[k - 1]) if k <= len(resid) else 4.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, required=True, help="a probe ridge row (fold-F/seed-42/)")
    ap.add_argument("--folds", type=Path, required=True, help="the fold datasets (fold-F/)")
    ap.add_argument("--features", type=Path, required=True)
    args = ap.parse_args(argv)
    feats = load_features(args.features)
    folds = sorted(args.folds.glob("fold-*"))
    out: dict[str, dict[str, list[float]]] = {s: {} for s in SCHEMES}
    for fold in folds:
        summary = json.loads((args.runs / fold.name / "seed-42" / "train_summary.json").read_text())
        tr, va, te = (_split(fold, feats, s) for s in ("train", "val", "test"))
        rows, _ = fill_missing_rating_number(tr["table"], summary["missing_rating_number"]["policy"])
        w = compute_sample_weights("rating_count", rows.column("rating_number").to_numpy(), tr["y"],
                                   mu=summary["mu"])
        coef, b = fit_ridge(tr["x"], tr["y"], w.astype(float), summary["alpha"])
        rv = np.abs(va["y"] - np.clip(va["x"] @ coef + b, 1, 5))
        rt = np.abs(te["y"] - np.clip(te["x"] @ coef + b, 1, 5))
        well = te["count"] >= 10
        for name, qs in SCHEMES.items():
            edges = np.quantile(va["chars"], qs) if qs else np.array([])
            gv = np.searchsorted(edges, va["chars"], "right")
            gt = np.searchsorted(edges, te["chars"], "right")
            for level in LEVELS:
                half = np.array([_q(rv[gv == g], level) for g in range(len(edges) + 1)])[gt]
                inside = rt <= half + 1e-9
                for key, v in ((f"cov{level:g}", inside.mean()), (f"cov{level:g}_ge10", inside[well].mean()),
                               (f"width{level:g}", 2 * half.mean()),
                               (f"width{level:g}_ge10", 2 * half[well].mean())):
                    out[name].setdefault(key, []).append(float(v))
    print("| calibration | 80% coverage (all / >= 10) | 80% width (all / >= 10) | 90% coverage (all / >= 10) "
          "| 90% width (all / >= 10) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, m in out.items():
        cells = []
        for level in ("0.8", "0.9"):
            cells.append(f"{np.mean(m['cov' + level]):.3f} +- {np.std(m['cov' + level], ddof=1):.3f} / "
                         f"{np.mean(m['cov' + level + '_ge10']):.3f}")
            cells.append(f"{np.mean(m['width' + level]):.3f} / {np.mean(m['width' + level + '_ge10']):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
