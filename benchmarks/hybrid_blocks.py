"""Every block subset of the hybrid probe on the folds of a `train --kfold` run, in one pass per fold.

Why a script: a `train --kfold` run per ablation row refits the lexical block (an n x n eigendecomposition)
in every run and again for the words-only baseline of every evaluation; on 4,106 train items that is minutes
per fold. Here each fold fits each block once (the same code as `training.hybrid`: the lexical dual ridge,
the dense blocks' ridge, alpha by LOO MSE, the listing encoder out-of-fold) and stacks every subset on the
blocks' leave-one-out predictions, so the rows of a table differ only in the blocks. Several feature caches
(e.g. two poolings or lengths of the tower, `effiminivlm embed`) are compared side by side as tower blocks.
Features are read as stored: a cache of another pooling is another tower block, nothing is renormalised.
With `--depths` a cache embedded with every text-tower depth (`train.probe_text_depth: auto`) gives a block
per depth (`NAME@D`) and `NAME@auto`, the depth the probe picks (lowest LOO MSE on each fold's train rows).
The neighbours block (`neighbours(NAME)`, `training.hybrid.fit_neighbours`, k and temperature by LOO) runs on
each cache's features (at the picked depth with `--depths`); a row pairs it with a tower block of the same
cache only.

    PYTHONPATH=src python benchmarks/hybrid_blocks.py runs/fashion-hybrid/folds \\
        --features mean64=both-text64.safetensors --features mean_l2_128=both-text128-l2.safetensors
    PYTHONPATH=src python benchmarks/hybrid_blocks.py runs/fashion-hybrid/folds --depths \
        --features mean64=both-text64-depths.safetensors
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from effiminivlm.config import NeighboursCfg
from effiminivlm.data.lexical import LexicalFeatures
from effiminivlm.data.listing import ListingEncoder
from effiminivlm.data.text import table_texts
from effiminivlm.evaluation.baseline import SCORE_RANGE, rating_count_weights
from effiminivlm.evaluation.dual_ridge import fit_dual_ridge
from effiminivlm.training.embed import feature_matrix, load_features
from effiminivlm.training.hybrid import dense_block, fit_neighbours, listing_inputs, pick_depth, stack_blocks
from effiminivlm.training.probe import ALPHAS


def _plcc(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(np.clip(pred, *SCORE_RANGE), y)[0, 1])


def _depth_caches(caches: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """NAME@D for every `text@D` of each cache, and NAME@<full> for the cache's own `text`."""
    out = {}
    for name, feats in caches.items():
        cut = sorted(int(k.removeprefix("text@")) for k in feats if k.startswith("text@"))
        if not cut:
            raise SystemExit(f"--depths: cache {name} has no per-depth features (embed with "
                             "--set train.probe_text_depth=auto)")
        out.update({f"{name}@{d}": {**feats, "text": feats[f"text@{d}"]} for d in cut})
        out[f"{name}@{cut[-1] + 1}"] = feats
    return out


def fold_blocks(fold: Path, caches: dict[str, dict[str, Any]], depths: bool = False
                ) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray, np.ndarray, np.ndarray]:
    """Per block {"loo": train LOO predictions, "test": test predictions}, and (y_train, w, y_test)."""
    t = pq.read_table(fold / "data.parquet")
    split = np.array(t.column("split").to_pylist())
    tr, te = np.where(split == "train")[0], np.where(split == "test")[0]
    rating = t.column("average_rating").to_numpy().astype(np.float64)
    y, w = rating[tr], rating_count_weights(t.take(tr))
    texts = table_texts(t)
    ids = [str(v) for v in t.column("parent_asin").to_pylist()]
    out: dict[str, dict[str, np.ndarray]] = {}
    lex = LexicalFeatures().fit([texts[i] for i in tr])
    x = lex.transform(texts)
    fit = fit_dual_ridge(x[tr], y, w)
    out["lexical"] = {"loo": fit.loo, "test": fit.predict(x[te])}
    dense = {name: feature_matrix(feats, ids, name)
             for name, feats in (_depth_caches(caches) if depths else caches).items()}
    for name in caches:
        nb_x = dense[name] if not depths else None
        if depths:  # the depth the probe picks, from the train rows only
            per = {int(k.rsplit("@", 1)[1]): (dense[k][tr], dense[k][te])
                   for k in dense if k.startswith(f"{name}@")}
            best, _, f = pick_depth(per, y, w, ALPHAS)
            out[f"{name}@auto"] = {"loo": f["loo"], "test": per[best][1] @ f["coef"] + f["intercept"]}
            nb_x = dense[f"{name}@{best}"]
        nb = fit_neighbours(nb_x[tr], y, w, NeighboursCfg(), seed=0, log=lambda _: None)
        out[f"neighbours({name})"] = {"loo": nb["loo"], "test": nb["table"].predict(nb_x[te])}
    enc = ListingEncoder()
    lst, n_img, desc = listing_inputs(t.take(tr))
    enc.fit(lst, y)
    block_tr, _ = enc.transform(lst, n_img, desc, y=y, item_ids=[ids[i] for i in tr])  # out-of-fold stores
    enc.set_fill(block_tr)
    block, _ = enc.transform(*listing_inputs(t))
    block[tr] = block_tr
    dense["listing"] = block
    for name, xd in dense.items():
        f = dense_block(xd[tr], y, w, ALPHAS)
        out[name] = {"loo": f["loo"], "test": xd[te] @ f["coef"] + f["intercept"]}
    return out, y, w, rating[te]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folds", help="a k-fold run's folds/ directory (fold-0, fold-1, ...)")
    ap.add_argument("--features", action="append", required=True, help="NAME=CACHE: a tower block")
    ap.add_argument("--depths", action="store_true", help="a block per text-tower depth of each cache, and "
                    "the depth the probe picks (caches embedded with train.probe_text_depth=auto)")
    ap.add_argument("--json", help="write the per-fold PLCCs here")
    args = ap.parse_args()
    caches = {k: load_features(v) for k, v in (s.split("=", 1) for s in args.features)}
    folds = sorted(Path(args.folds).glob("fold-*"))
    rows: dict[str, list[float]] = {}
    for fold in folds:
        blocks, y, w, y_test = fold_blocks(fold, caches, args.depths)
        names = list(blocks)
        towers = {n for n in names if n not in ("lexical", "listing") and not n.startswith("neighbours(")}
        for r in range(1, len(names) + 1):
            for combo in itertools.combinations(names, r):
                tower = [n.split("@")[0] for n in combo if n in towers]
                near = [n[len("neighbours("):-1] for n in combo if n.startswith("neighbours(")]
                if len(tower) > 1 or len(near) > 1 or (tower and near and tower != near):
                    continue  # one tower block and one neighbours block per row, of the same cache
                if len(combo) == 1:
                    pred = blocks[combo[0]]["test"]
                else:
                    g, c = stack_blocks(np.column_stack([blocks[n]["loo"] for n in combo]), y, w)
                    pred = c + sum(gi * blocks[n]["test"] for gi, n in zip(g, combo, strict=True))
                rows.setdefault("[" + ", ".join(combo) + "]", []).append(_plcc(pred, y_test))
        print(f"{fold.name}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in rows.items()), flush=True)
    print(f"\n| blocks ({len(folds)} folds) | PLCC | per fold |\n| --- | ---: | --- |")
    for name, v in rows.items():
        sd = f" +- {np.std(v, ddof=1):.4f}" if len(v) > 1 else ""
        print(f"| `{name}` | {np.mean(v):.4f}{sd} | {' / '.join(f'{x:.3f}' for x in v)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
