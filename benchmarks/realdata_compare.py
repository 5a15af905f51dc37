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
        --set model.text_encoder.max_length=64 --backbone runs/offline-k5 --backbone runs/lora-k5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tfidf import fit_select_predict, load_rows, run_same_folds  # noqa: E402

from effiminivlm.config import Recipe, load_recipe  # noqa: E402
from effiminivlm.data.folds import write_fold_dataset  # noqa: E402
from effiminivlm.data.prepare import read_prepared  # noqa: E402
from effiminivlm.evaluation.aggregate import aggregate_coverage, aggregate_runs, fmt_mean_sd  # noqa: E402
from effiminivlm.files import atomic_write_text, write_json  # noqa: E402
from effiminivlm.training.kfold import probe_features, run_and_test  # noqa: E402
from effiminivlm.training.probe import evaluate_on_features  # noqa: E402
from effiminivlm.training.soup import soup  # noqa: E402

HEAD = ["train.probe=head", "model.head.hidden_dims=[512,256]", "model.head.dropout=0.1"]
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
    "head-w-invfreq": ("probe head, sample weights inverse_bin_freq",
                       [*HEAD, "train.sample_weights=inverse_bin_freq"], 1),
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


def _soup_rows(head_dir: Path, folds: list[Path], out: Path, features: Path, seeds: list[int]
               ) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {"soup-uniform": [], "soup-greedy": []}
    for name, greedy in (("soup-uniform", False), ("soup-greedy", True)):
        d = _row_dir(out, name, {"members": str(head_dir), "seeds": seeds, "greedy": greedy})
        for f, fold in enumerate(folds):
            model, report = d / f"fold-{f}" / "model", d / f"fold-{f}" / "eval-test" / "metrics.json"
            if not report.is_file():
                members = [str(head_dir / f"fold-{f}" / f"seed-{s}") for s in seeds]
                soup(members, model, greedy=greedy, data=str(fold), features=features, overwrite=True,
                     progress=False, log=lambda m: None)
                evaluate_on_features(model, fold, features, report.parent)
            metrics = json.loads(report.read_text())
            rows[name].append({"fold": f, "seed": 0, "metrics": {g: v for g, v in metrics.items()
                                                                  if isinstance(v, dict) and "n" in v}})
    return rows


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
    for name, (label, overrides, seeds) in PROBE_ROWS.items():
        if not want(name):
            continue
        recipe = load_recipe("probe", [*base, *overrides])
        d = _row_dir(out, name, {"recipe": recipe.to_dict(), "seeds": seeds, "features": str(features)})
        rows[name] = _summary(label, _probe_row(recipe, folds, d, seeds, features))
        print(f"{name}: PLCC {fmt_mean_sd(rows[name]['aggregate']['overall']['plcc'])}", flush=True)
    if want("soup") and (out / "head-huber").is_dir():
        seeds = [probe.train.seed + i for i in range(SEEDS)]
        for name, runs in _soup_rows(out / "head-huber", folds, out, features, seeds).items():
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
            runs.append(run_and_test(recipe, fold, d / f"fold-{f}" / "seed-42", f, 42, images_dir=None,
                                     device="cpu", progress=False, log=lambda m: None, features=features))
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
