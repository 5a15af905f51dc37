"""Tables of k-fold runs (`train --kfold`): the model beside the words-only baseline, and per category.

Why a script: docs/realdata.md reports the hybrid probe's block ablations and the cross-category table
from the run folders `train --kfold` writes; this reads each RUN/kfold.json (model and `words_only` groups,
mean +- sd over folds) and each fold's eval-test/metrics.json (`per_category`) and prints Markdown.

    PYTHONPATH=src python benchmarks/hybrid_tables.py runs/fashion-hybrid runs/fashion-tower ...
    PYTHONPATH=src python benchmarks/hybrid_tables.py --per-category runs/both-hybrid runs/fashion-hybrid
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = (("overall", "plcc"), ("overall", "srcc"), ("overall", "rmse"), ("rating_number_ge_10", "plcc"),
           ("words_only", "plcc"), ("words_only_rating_number_ge_10", "plcc"))


def _cell(values: list[float]) -> str:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "-"
    sd = f" +- {np.std(v, ddof=1):.4f}" if len(v) > 1 else ""
    return f"{np.mean(v):.4f}{sd}"


def fold_metrics(run: Path) -> list[dict[str, Any]]:
    """Every finished fold's test metrics (seed-0 runs), in fold order."""
    return [json.loads(p.read_text()) for p in sorted(run.glob("fold-*/seed-*/eval-test/metrics.json"))]


def ablation_table(runs: list[Path]) -> str:
    head = ["run", "folds", "PLCC", "SRCC", "RMSE", "PLCC >= 10 ratings", "words only PLCC",
            "words only, >= 10"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for run in runs:
        folds = fold_metrics(run)
        cells = [_cell([m.get(g, {}).get(k) for m in folds]) for g, k in COLUMNS]
        lines.append(f"| {run.name} | {len(folds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_category_table(runs: list[Path]) -> str:
    """Test PLCC (and RMSE) per `category` (the items' main_category) of each run."""
    lines = ["| run | category | items / fold | PLCC | RMSE |", "| --- | --- | ---: | ---: | ---: |"]
    for run in runs:
        folds = fold_metrics(run)
        cats = sorted({c for m in folds for c in m.get("per_category", {})})
        for c in cats:
            groups = [m["per_category"][c] for m in folds if c in m.get("per_category", {})]
            if np.mean([g["n"] for g in groups]) < 20:
                continue
            lines.append(f"| {run.name} | {c} | {np.mean([g['n'] for g in groups]):.0f} | "
                         f"{_cell([g['plcc'] for g in groups])} | {_cell([g['rmse'] for g in groups])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="k-fold run folders")
    ap.add_argument("--per-category", action="store_true", help="PLCC per category instead")
    args = ap.parse_args()
    print(per_category_table(args.runs) if args.per_category else ablation_table(args.runs))


if __name__ == "__main__":
    main()
