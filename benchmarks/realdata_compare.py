"""The real-data comparison of issues 9 and 13 in one resumable run: recipes and training techniques on the
same K folds (text only), mean +- sd over folds, as Markdown + JSON (not a test).

Rows (every one trained and tested on the folds of `train --kfold K --fold-seed 0`, `data.folds`):

* TF-IDF + ridge (`baseline_tfidf.run_same_folds`): the bar.
* probe ridge (the small-data default) with its alpha chosen by leave-one-out PLCC / MSE or by val PLCC,
  and with each sample weighting (rating_count, inverse_bin_freq, none).
* probe head (the MLP head alone on cached features) with each loss: weighted_huber (the default), plcc,
  composite, weighted_huber + rank, kl; trained with 3 seeds, the single-seed row is seed 42.
* soups of those 3 seeds (uniform, greedy on val PLCC): `training.soup.soup` with the feature cache.
* distillation: the probe (ridge and head) with `train.distill.teacher` = the TF-IDF model's OUT-OF-FOLD
  predictions within each fold's train split (inner 5-fold cross-fitting, alpha picked on the fold's val):
  no teacher score of a train item comes from a model that saw it, and no test item is touched.
* backbone rows (`offline` full fine-tuning, LoRA), read from their `train --kfold` folders when present
  (--backbone DIR, repeatable; they take hours on a CPU and are run separately, see docs/realdata.md).

Resumable: each row is a folder of OUT whose row.json records its settings; finished fold runs are skipped
(`kfold.run_and_test`), a row whose settings changed is redone. The towers' features are computed once
(OUT/features.safetensors) unless --features names a cache of DATA.

    PYTHONPATH=src python benchmarks/realdata_compare.py --data real --out runs/compare \
        --set input.max_length=64 --backbone runs/offline-k5 --backbone runs/lora-k5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tfidf import fit_select_predict, load_rows, run_same_folds  # noqa: E402

from effiminivlm.config import Recipe, load_recipe  # noqa: E402
from effiminivlm.data.folds import write_fold_dataset  # noqa: E402
from effiminivlm.data.prepare import read_prepared  # noqa: E402
from effiminivlm.evaluation.aggregate import aggregate_coverage, aggregate_runs, fmt_mean_sd  # noqa: E402
from effiminivlm.evaluation.metrics import compute_metrics  # noqa: E402
from effiminivlm.files import atomic_write_text, write_json  # noqa: E402
from effiminivlm.models.heads import create_head  # noqa: E402
from effiminivlm.training.embed import feature_matrix, load_features  # noqa: E402
from effiminivlm.training.kfold import probe_features, run_and_test  # noqa: E402
from effiminivlm.training.probe import _ridge_head, _train_head  # noqa: E402
from effiminivlm.training.soup import average_state  # noqa: E402
from effiminivlm.training.train_rows import mix_train_rows  # noqa: E402
from effiminivlm.training.weights import WEIGHT_COLUMN, fill_missing_rating_number  # noqa: E402

# The MLP head alone on cached features. Batches of 512 (8 steps an epoch): on this shared CPU a step costs
# ~0.4 s of wall time whatever its size, so batch 32 (129 steps an epoch) took ~10 minutes per fit.
HEAD = ["train.probe=head", "model.head.hidden_dims=[512,256]", "model.head.dropout=0.1",
        "train.batch_size=512", "train.lr=3e-3"]
SEEDS = 3
# name -> (label, overrides, seeds)
PROBE_ROWS: dict[str, tuple[str, list[str], int]] = {
    "ridge-loo-plcc": ("probe ridge, alpha by LOO PLCC", ["train.probe_alpha=loo_plcc"], 1),
    "ridge-loo-mse": ("probe ridge, alpha by LOO MSE", ["train.probe_alpha=loo_mse"], 1),
    "ridge-val-plcc": ("probe ridge, alpha by val PLCC (before)", ["train.probe_alpha=val_plcc"], 1),
    "ridge-w-none": ("probe ridge, sample weights none", ["train.sample_weights=none"], 1),
    "ridge-w-invfreq": ("probe ridge, sample weights inverse_bin_freq",
                        ["train.sample_weights=inverse_bin_freq"], 1),
    "head-huber": ("probe head, weighted_huber (default loss)", HEAD, SEEDS),
    "head-plcc": ("probe head, plcc", [*HEAD, "train.loss=plcc"], 1),
    "head-composite": ("probe head, composite", [*HEAD, "train.loss=composite"], 1),
    "head-rank": ("probe head, weighted_huber + 0.5 rank",
                  [*HEAD, "train.loss={weighted_huber: 1.0, rank: 0.5}"], 1),
    "head-kl": ("probe head, kl", [*HEAD, "train.loss=kl"], 1),
}
DISTILL_ROWS = {"distill-ridge": ("probe ridge, distilled from TF-IDF (out-of-fold)", []),
                "distill-head": ("probe head, distilled from TF-IDF (out-of-fold)", HEAD)}


def _row_dir(out: Path, name: str, settings: dict[str, Any]) -> Path:
    """OUT/name, emptied when it holds a row made with other settings."""
    d = out / name
    meta = d / "row.json"
    if meta.is_file() and json.loads(meta.read_text()) != settings:
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    write_json(settings, meta)
    return d


def _folds(data: Path, out: Path, k: int) -> list[Path]:
    paths = []
    for f in range(k):
        fold = out / "folds" / f"fold-{f}"
        if not (fold / "summary.json").is_file():
            write_fold_dataset(data, fold, k, f, 0)
        paths.append(fold)
    return paths


def _probe_row(recipe: Recipe, folds: list[Path], d: Path, seeds: int, features: Path
               ) -> list[dict[str, Any]]:
    runs = []
    for f, fold in enumerate(folds):
        for i in range(seeds):
            seed = recipe.train.seed + i
            runs.append(run_and_test(recipe, fold, d / f"fold-{f}" / f"seed-{seed}", f, seed, images_dir=None,
                                     device="cpu", progress=False, log=lambda m: None, features=features))
    return runs


def teacher_csv(fold: Path, path: Path, inner_k: int = 5) -> dict[str, Any]:
    """TF-IDF out-of-fold scores of the fold's TRAIN items (inner K-fold over train, alpha by the fold's
    val PLCC per inner fit): the teacher never scores an item it was fitted on."""
    rows = load_rows(fold)
    ids = np.array(read_prepared(fold).column("parent_asin").to_pylist(), dtype=object)
    tr, va = np.flatnonzero(rows.split == "train"), np.flatnonzero(rows.split == "val")
    oof = np.full(tr.size, np.nan)
    for inner_train, inner_out in KFold(inner_k, shuffle=True, random_state=0).split(tr):
        fit = fit_select_predict(rows.take(tr[inner_train]), rows.take(va), rows.take(tr[inner_out]))
        oof[inner_out] = fit["pred"]
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["item_id,score"] + [f"{i},{s:.6f}" for i, s in zip(ids[tr], oof, strict=True)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return {"items": int(tr.size), "oof_plcc": float(np.corrcoef(oof, rows.y[tr])[0, 1])}

class _HeadOnly(torch.nn.Module):
    """What `probe._train_head` needs of a model: its `head`. The lean path fits heads without building,
    saving and reloading the 23M-parameter towers for every fit (minutes each on a loaded CPU)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head


def _lean_split(fold: Path, feats: dict[str, Any], split: str) -> tuple[Any, np.ndarray, np.ndarray]:
    rows = read_prepared(fold, split)
    return rows, feature_matrix(feats, rows.column("parent_asin").to_pylist()), \
        rows.column("average_rating").to_numpy().astype(np.float64)


def lean_head(recipe: Recipe, fold: Path, feats: dict[str, Any], seed: int, cache: Path
              ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(test metrics, head state) of the recipe's probe head fitted on `fold` from the feature cache, with
    the probe's own pieces (train rows with sample weights and teacher labels, `probe._train_head`);
    cached in `cache` (a .pt of the metrics and state), so reruns skip it."""
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        return json.loads(saved["metrics"]), saved["state"]
    tc = recipe.train
    rows, x_tr, _ = _lean_split(fold, feats, "train")
    _, x_va, y_va = _lean_split(fold, feats, "val")
    te_rows, x_te, y_te = _lean_split(fold, feats, "test")
    rows, weighting = fill_missing_rating_number(rows, tc.missing_rating_number)
    rows, _ = mix_train_rows(rows, tc, weighting["mu"], log=lambda m: None)
    y_tr = rows.column("average_rating").to_numpy().astype(np.float64)
    w = rows.column(WEIGHT_COLUMN).to_numpy().astype(np.float64)
    torch.manual_seed(0)  # every seed starts from the same head, as build_probe_model does
    model = _HeadOnly(create_head(recipe.model.head, x_tr.shape[1]))
    torch.manual_seed(seed)
    if tc.probe == "ridge":
        _ridge_head(model, x_tr, y_tr, w, x_va, y_va, tc.probe_alpha)
    else:
        _train_head(model, recipe, x_tr, y_tr, w, x_va, y_va, lambda m: None)
    metrics = _head_metrics(model.head, x_te, y_te, te_rows)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"metrics": json.dumps(metrics), "state": model.head.state_dict()}, cache)
    return metrics, model.head.state_dict()


def _head_metrics(head: torch.nn.Module, x: np.ndarray, y: np.ndarray, rows: Any) -> dict[str, Any]:
    head.eval()
    with torch.no_grad():
        pred = np.clip(head(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).double().numpy(), 1, 5)
    counts = np.array([0.0 if c is None else float(c) for c in rows.column("rating_number").to_pylist()])
    m = compute_metrics(pred, y, None, counts, 10)
    return {g: v for g, v in m.items() if isinstance(v, dict) and "n" in v}


def lean_soups(recipe: Recipe, folds: list[Path], feats: dict[str, Any], states: dict[tuple[int, int], Any]
               ) -> dict[str, list[dict[str, Any]]]:
    """Uniform and greedy (Wortsman: best member first, add one only if val PLCC improves) soups of the
    seeds' heads per fold, with `soup.average_state`."""
    out: dict[str, list[dict[str, Any]]] = {"soup-uniform": [], "soup-greedy": []}
    for f, fold in enumerate(folds):
        _, x_va, y_va = _lean_split(fold, feats, "val")
        te_rows, x_te, y_te = _lean_split(fold, feats, "test")
        members = [states[(f, s)] for s in sorted(s for g, s in states if g == f)]
        head = create_head(recipe.model.head, x_va.shape[1])

        va_rows = read_prepared(fold, "val")

        def val_plcc(state: dict[str, torch.Tensor], head: torch.nn.Module = head, x: np.ndarray = x_va,
                     y: np.ndarray = y_va, r: Any = va_rows) -> float:
            head.load_state_dict(state)
            return _head_metrics(head, x, y, r)["overall"]["plcc"]

        head.load_state_dict(average_state(members))
        uniform = _head_metrics(head, x_te, y_te, te_rows)
        out["soup-uniform"].append({"fold": f, "seed": 0, "metrics": uniform})
        own = [val_plcc(m) for m in members]
        order = sorted(range(len(members)), key=lambda i: -own[i])
        chosen, best = [order[0]], own[order[0]]
        for i in order[1:]:
            p = val_plcc(average_state([members[j] for j in [*chosen, i]]))
            if p > best:
                chosen, best = [*chosen, i], p
        head.load_state_dict(average_state([members[j] for j in chosen]))
        out["soup-greedy"].append({"fold": f, "seed": 0, "metrics": _head_metrics(head, x_te, y_te, te_rows),
                                   "members": len(chosen)})
    return out


def _summary(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    agg = aggregate_runs(runs)
    seed42 = [r for r in runs if r["seed"] in (0, 42)] if len({r["seed"] for r in runs}) > 1 else runs
    return {"label": label, "runs": len(runs), "aggregate": aggregate_runs(seed42), "all_seeds": agg,
            "conformal": aggregate_coverage(runs) if any("conformal" in r["metrics"] for r in runs) else None,
            "per_fold_plcc": [r["metrics"]["overall"]["plcc"] for r in seed42]}


def render(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| row | PLCC | SRCC | RMSE | PLCC, >= 10 ratings |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows.values():
        agg = r["aggregate"]
        well = next((g for g in agg if g.startswith("rating_number_ge")), None)
        cells = [fmt_mean_sd(agg["overall"][m]) for m in ("plcc", "srcc", "rmse")]
        cells.append(fmt_mean_sd(agg[well]["plcc"]) if well else "-")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _backbone(path: Path) -> dict[str, Any] | None:
    report = path / "kfold.json"
    if not report.is_file():
        done = sorted(path.glob("fold-*/seed-*/eval-test/metrics.json"))
        if not done:
            return None
        runs = [{"fold": int(p.parts[-4].split("-")[1]), "seed": int(p.parts[-3].split("-")[1]),
                 "metrics": json.loads(p.read_text())} for p in done]
        label = f"{path.name} ({len(runs)} folds done)"
    else:
        runs = json.loads(report.read_text())["runs"]
        label = path.name
    runs = [{**r, "metrics": {g: v for g, v in r["metrics"].items() if isinstance(v, dict)}} for r in runs]
    return _summary(label, runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--kfold", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], help="override of the probe recipe (repeat)")
    ap.add_argument("--features", type=Path, help="feature cache of DATA made with the same towers")
    ap.add_argument("--backbone", action="append", default=[], type=Path, help="a `train --kfold` folder")
    ap.add_argument("--only", action="append", default=[], help="run only these rows (repeat)")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    base = ["model.modalities=text", "data.num_workers=0", *args.set]
    probe = load_recipe("probe", base)
    features = args.features or probe_features(probe, args.data, out, None, "cpu", False, print)
    folds = _folds(args.data, out, args.kfold)
    rows: dict[str, dict[str, Any]] = {}

    def want(name: str) -> bool:
        return not args.only or name in args.only

    tfidf_json = out / "tfidf.json"
    if not tfidf_json.is_file():
        write_json(run_same_folds(args.data, args.kfold, 0), tfidf_json)
    rows["tfidf"] = _summary("TF-IDF + ridge (`baseline_tfidf.py --same-folds`)",
                             json.loads(tfidf_json.read_text())["runs"])
    for path in args.backbone:
        found = _backbone(path)
        if found is not None:
            rows[path.name] = found
    feats = load_features(features)
    states: dict[tuple[int, int], Any] = {}
    for name, (label, overrides, seeds) in PROBE_ROWS.items():
        if not want(name):
            continue
        recipe = load_recipe("probe", [*base, *overrides])
        d = _row_dir(out, name, {"recipe": recipe.to_dict(), "seeds": seeds, "features": str(features)})
        if recipe.train.probe == "ridge":  # the real path: train_probe + evaluate_on_features, models saved
            runs = _probe_row(recipe, folds, d, seeds, features)
        else:  # heads: the lean path (same fitting code, no towers built or saved per fit)
            runs = []
            for f, fold in enumerate(folds):
                for i in range(seeds):
                    seed = recipe.train.seed + i
                    metrics, state = lean_head(recipe, fold, feats, seed, d / f"fold-{f}-seed-{seed}.pt")
                    runs.append({"fold": f, "seed": seed, "metrics": metrics})
                    if name == "head-huber":
                        states[(f, seed)] = state
        rows[name] = _summary(label, runs)
        print(f"{name}: PLCC {fmt_mean_sd(rows[name]['aggregate']['overall']['plcc'])}", flush=True)
    if want("soup") and states:
        for name, runs in lean_soups(load_recipe("probe", [*base, *HEAD]), folds, feats, states).items():
            rows[name] = _summary(f"probe head, {name.split('-')[1]} soup of {SEEDS} seeds", runs)
            print(f"{name}: PLCC {fmt_mean_sd(rows[name]['aggregate']['overall']['plcc'])}", flush=True)
    teachers = {}
    for f, fold in enumerate(folds):
        path = out / "teacher" / f"fold-{f}.csv"
        if not path.is_file() and any(want(n) for n in DISTILL_ROWS):
            teachers[f] = teacher_csv(fold, path)
    for name, (label, overrides) in DISTILL_ROWS.items():
        if not want(name):
            continue
        runs = []
        d = _row_dir(out, name, {"recipe": load_recipe("probe", [*base, *overrides]).to_dict(),
                                 "features": str(features)})
        for f, fold in enumerate(folds):
            teacher = (out / "teacher" / f"fold-{f}.csv").resolve()
            recipe = load_recipe("probe", [*base, *overrides, f"train.distill.teacher={teacher}"])
            metrics, _ = lean_head(recipe, fold, feats, 42, d / f"fold-{f}-seed-42.pt")
            runs.append({"fold": f, "seed": 42, "metrics": metrics})
        rows[name] = _summary(label, runs)
        print(f"{name}: PLCC {fmt_mean_sd(rows[name]['aggregate']['overall']['plcc'])}", flush=True)
    table = render(rows)
    write_json({"rows": rows, "teachers": teachers, "folds": args.kfold, "data": str(args.data)},
               out / "compare.json")
    atomic_write_text(out / "compare.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
