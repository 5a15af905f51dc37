"""Mean and standard deviation of evaluation metrics over folds and seeds, as JSON and Markdown.

Why its own module: `train --kfold`, `scaling` and the recipe comparison all summarise many runs the same
way, and a number reported as "0.31 +- 0.04" must say over what the spread was taken. Each run is
`{"fold": f, "seed": s, "metrics": compute_metrics(...)}`; for every group (overall, rating_number_ge_K)
and metric the summary holds `mean` (over all runs), `sd_folds` (sample sd over folds of the seed-averaged
values: the data noise), `sd_seeds` (sample sd over seeds of the fold-averaged values: the training noise,
None with one seed) and `n_runs`. NaN values (an undefined correlation in a fold) are left out and counted
as `undefined`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["AGG_METRICS", "aggregate_coverage", "aggregate_runs", "fmt_mean_sd", "render_aggregate_markdown"]
AGG_METRICS = ("plcc", "srcc", "rmse", "mae")


def _sd(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def aggregate_runs(runs: list[dict[str, Any]], metrics: tuple[str, ...] = AGG_METRICS) -> dict[str, Any]:
    """{group: {metric: {mean, sd_folds, sd_seeds, n_runs, undefined}, "n_mean": items per run}}."""
    groups = sorted({g for r in runs for g, v in r["metrics"].items() if isinstance(v, dict) and "n" in v
                     and g != "per_category"}, key=lambda g: (g != "overall", g))
    out: dict[str, Any] = {}
    for g in groups:
        rows = [r for r in runs if g in r["metrics"]]
        entry: dict[str, Any] = {"n_mean": float(np.mean([r["metrics"][g]["n"] for r in rows]))}
        for m in metrics:
            cells: dict[tuple[int, int], float] = {}
            for r in rows:
                v = r["metrics"][g].get(m)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    cells[(r["fold"], r["seed"])] = float(v)
            folds = sorted({f for f, _ in cells})
            seeds = sorted({s for _, s in cells})
            by_fold = [float(np.mean([v for (f, _), v in cells.items() if f == fo])) for fo in folds]
            by_seed = [float(np.mean([v for (_, s), v in cells.items() if s == se])) for se in seeds]
            entry[m] = {"mean": float(np.mean(list(cells.values()))) if cells else None,
                        "sd_folds": _sd(by_fold), "sd_seeds": _sd(by_seed), "n_runs": len(cells),
                        "undefined": len(rows) - len(cells)}
        out[g] = entry
    return out


def aggregate_coverage(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Conformal coverage and mean width (`metrics["conformal"]` of each run) as mean +- sd over runs:
    {group: {level: {"nominal", "coverage": {mean, sd}, "mean_width": {mean, sd}}}}; {} without intervals."""
    reports = [r["metrics"]["conformal"] for r in runs if "conformal" in r["metrics"]]
    out: dict[str, Any] = {}
    for rep in reports:
        for group, levels in rep.items():
            if group == "calibration":
                continue
            for level, c in levels.items():
                cell = out.setdefault(group, {}).setdefault(level, {"nominal": c["nominal"], "coverage": [],
                                                                    "mean_width": [], "n": []})
                for k in ("coverage", "mean_width", "n"):
                    if c[k] is not None and not (isinstance(c[k], float) and math.isnan(c[k])):
                        cell[k].append(float(c[k]))
    for levels in out.values():
        for cell in levels.values():
            for k in ("coverage", "mean_width"):
                v = cell[k]
                cell[k] = {"mean": float(np.mean(v)) if v else None, "sd": _sd(v), "n_runs": len(v)}
            cell["n"] = float(np.mean(cell["n"])) if cell["n"] else 0.0
    return out


def fmt_mean_sd(cell: dict[str, Any], digits: int = 4) -> str:
    """"0.3100 +- 0.0400" (sd over folds), "-" when undefined in every run."""
    if cell.get("mean") is None:
        return "-"
    sd = cell.get("sd_folds")
    return f"{cell['mean']:.{digits}f}" + (f" +- {sd:.{digits}f}" if sd is not None else "")


def render_aggregate_markdown(agg: dict[str, Any], title: str, meta: dict[str, Any] | None = None,
                              metrics: tuple[str, ...] = AGG_METRICS,
                              coverage: dict[str, Any] | None = None) -> str:
    """A Markdown table: one row per group, `mean +- sd over folds` per metric, sd over seeds below."""
    lines = [f"# {title}", ""]
    for k, v in (meta or {}).items():
        lines.append(f"- {k}: {v}")
    if meta:
        lines.append("")
    lines += ["| group | items/fold | " + " | ".join(m.upper() for m in metrics) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in metrics) + " |"]
    for g, entry in agg.items():
        lines.append(f"| {g} | {entry['n_mean']:.0f} | "
                     + " | ".join(fmt_mean_sd(entry[m]) for m in metrics) + " |")
    seeds = [(g, m, e[m]["sd_seeds"]) for g, e in agg.items() for m in metrics
             if e[m]["sd_seeds"] is not None]
    if seeds:
        lines += ["", "sd over seeds (of the fold means): "
                  + ", ".join(f"{g} {m.upper()} {sd:.4f}" for g, m, sd in seeds)]
    lines += ["", "mean +- sample sd over folds (seed-averaged); undefined correlations are left out."]
    if coverage:
        lines += ["", "Conformal intervals on the test folds (fitted on each fold's val split):", "",
                  "| group | level | items/fold | coverage | mean width |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for g, levels in coverage.items():
            for level, c in levels.items():
                lines.append(f"| {g} | {level}% | {c['n']:.0f} | {fmt_mean_sd(_sd_cell(c['coverage']), 3)} | "
                             f"{fmt_mean_sd(_sd_cell(c['mean_width']), 3)} |")
    return "\n".join(lines) + "\n"


def _sd_cell(c: dict[str, Any]) -> dict[str, Any]:
    return {"mean": c["mean"], "sd_folds": c["sd"]}
