"""The evaluation report: `metrics.json` (machine-readable), `metrics.md` (for people) and a hexbin plot.

Why three files: later stages (the efficiency protocol's CES, leaderboards) read the JSON, people read the
Markdown table in a terminal or a pull request, and the predicted-vs-true plot shows what a single PLCC
hides (a model that predicts the mean, a compressed range, a bias at the low end). Undefined metrics are
NaN in Python and ``null`` in JSON (strict JSON has no NaN), "n/a" in Markdown.

The JSON keeps the `compute_metrics` layout at the top level (``{"overall": {"plcc": ...}, ...}``) so a
reader needs no knowledge of the report, plus ``title`` and ``meta`` (model dir, split, counters, ...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from effiminivlm.evaluation.metrics import check_predictions, metric_group

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n", "n"), ("plcc", "PLCC"), ("plcc_plus", "PLCC+"), ("srcc", "SRCC"),
    ("rmse", "RMSE"), ("mae", "MAE"), ("huber", "Huber"),
)
RATING_RANGE: tuple[float, float] = (1.0, 5.0)


def to_jsonable(value: Any) -> Any:
    """Recursively turn NaN/inf into None, numpy scalars/arrays and Paths into JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if key == "n":
        return f"{int(value):,}"
    return f"{float(value):.4f}"


def _table(rows: list[tuple[str, dict[str, Any]]], first: str) -> list[str]:
    head = [first, *(label for _, label in _COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(_COLUMNS)]
    for name, group in rows:
        cells = [name.replace("|", "\\|"), *(_fmt(k, group.get(k)) for k, _ in _COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(metrics: dict[str, Any], title: str | None = None, meta: dict[str, Any] | None = None) -> str:
    """The metrics as Markdown: overall and rating-number subset(s) in one table, categories in another."""
    lines: list[str] = [f"# {title}", ""] if title else []
    for k, v in (meta or {}).items():
        lines.append(f"- **{k}**: {v if not isinstance(v, dict) else json.dumps(to_jsonable(v))}")
    if meta:
        lines.append("")
    subsets = [("overall", metrics["overall"])] if "overall" in metrics else []
    for key, group in metrics.items():
        if key.startswith("rating_number_ge_") and isinstance(group, dict):
            subsets.append((f"rating_number >= {key.rsplit('_', 1)[-1]}", group))
    lines += _table(subsets, "subset")
    per_cat = metrics.get("per_category") or {}
    if per_cat:
        lines += ["", "Per category:", ""]
        lines += _table(list(per_cat.items()), "category")
    lines += ["", "PLCC/SRCC are n/a when a subset has fewer than 2 items or constant predictions/targets."]
    return "\n".join(lines) + "\n"


def plot_pred_vs_true(pred: Any, true: Any, path: str | Path, title: str = "Predicted vs true rating",
                      metrics: dict[str, Any] | None = None, gridsize: int = 40) -> Path:
    """Hexbin of predicted (y) against true (x) rating on 1-5 axes, log colour scale, identity line.

    Predictions outside 1-5 are drawn on the border (and counted in the text box) so that no item
    silently disappears from the picture. `metrics` is a `metric_group` dict; it is computed when absent.
    """
    p, t = check_predictions(pred, true)
    group = metrics if metrics is not None else metric_group(p, t)
    lo, hi = RATING_RANGE
    outside = int(((p < lo) | (p > hi)).sum())
    fig = Figure(figsize=(6.4, 5.6), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    if p.size:
        hb = ax.hexbin(np.clip(t, lo, hi), np.clip(p, lo, hi), gridsize=gridsize, extent=(lo, hi, lo, hi),
                       mincnt=1, cmap="viridis", norm=LogNorm(), linewidths=0.2)
        fig.colorbar(hb, ax=ax, label="items per hexagon (log scale)")
    else:
        ax.text(0.5, 0.5, "no items", ha="center", va="center", transform=ax.transAxes, fontsize=14)
    ax.plot([lo, hi], [lo, hi], ls="--", lw=1.2, color="tab:red", label="identity (y = x)")
    pad = 0.05
    ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), xlabel="True average rating",
           ylabel="Predicted rating", aspect="equal", title=title)
    ax.set_xticks(np.arange(lo, hi + 0.5, 0.5))
    ax.set_yticks(np.arange(lo, hi + 0.5, 0.5))
    ax.grid(True, lw=0.4, alpha=0.4)
    ax.legend(loc="lower right", fontsize=9)
    lines = [f"n = {group['n']:,}"] + [f"{label} = {_fmt(k, group.get(k))}"
                                      for k, label in (("plcc", "PLCC"), ("srcc", "SRCC"), ("rmse", "RMSE"))]
    if outside:
        lines.append(f"{outside:,} pred. outside 1-5 (shown at edge)")
    ax.text(0.03, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=10,
            family="monospace", bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
    path = Path(path)
    fig.savefig(path)  # a bare Figure renders through Agg; no pyplot global state
    return path


def write_report(metrics: dict[str, Any], pred: Any, true: Any, out_dir: str | Path,
                 title: str = "EffiMiniVLM evaluation", meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write metrics.json, metrics.md and pred_vs_true.png into `out_dir`; return their paths.

    `metrics` is a `compute_metrics` result; `pred`/`true` are the scored arrays for the plot. `meta`
    carries run context (model dir, split, counters of skipped or fallback items) into both text files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    payload = {**to_jsonable(metrics), "title": title, "meta": to_jsonable(meta)}
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md", "plot": out / "pred_vs_true.png"}
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(render_markdown(metrics, title=title, meta=meta))
    plot_pred_vs_true(pred, true, paths["plot"], title=title, metrics=metrics.get("overall"))
    return paths
