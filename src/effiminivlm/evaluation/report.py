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

from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.evaluation.metrics import check_predictions, metric_group
from effiminivlm.files import atomic_write_text, save_figure, to_jsonable, write_json

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n", "n"), ("plcc", "PLCC"), ("plcc_plus", "PLCC+"), ("srcc", "SRCC"),
    ("rmse", "RMSE"), ("mae", "MAE"), ("huber", "Huber"),
)


def _fmt(key: str, value: Any) -> str:
    """One Markdown cell: n with thousands separators, metrics to 4 decimals, undefined as "n/a"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if key == "n":
        return f"{int(value):,}"
    return f"{float(value):.4f}"


def _table(rows: list[tuple[str, dict[str, Any]]], first: str) -> list[str]:
    """A Markdown table with one row per group; "|" in a name is escaped so it cannot split a row."""
    head = [first, *(label for _, label in _COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(_COLUMNS)]
    for name, group in rows:
        cells = [name.replace("|", "\\|"), *(_fmt(k, group.get(k)) for k, _ in _COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(metrics: dict[str, Any], title: str | None = None,
                    meta: dict[str, Any] | None = None) -> str:
    """The metrics as Markdown: overall and rating-number subset(s) in one table, categories in another."""
    lines: list[str] = [f"# {title}", ""] if title else []
    for k, v in (meta or {}).items():
        text = json.dumps(to_jsonable(v)) if isinstance(v, dict | list | tuple) else str(v)
        lines.append(f"- **{k}**: {' '.join(text.splitlines())}")  # a newline would end the list item
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
    lines += ["", "PLCC/SRCC are n/a when a subset has fewer than 2 items or constant predictions/targets; "
              "PLCC+ then counts as 0, as the LoViF reference scorer does."]
    return "\n".join(lines) + "\n"


def pred_vs_true_figure(pred: Any, true: Any, title: str = "Predicted vs true rating",
                        metrics: dict[str, Any] | None = None, gridsize: int = 40) -> Figure:
    """Hexbin of predicted (y) against true (x) rating on 1-5 axes, log colour scale, identity line.

    Items outside 1-5 (a prediction, or a target of a foreign dataset) are drawn on the border and counted
    in the text box, so that no item silently disappears from the picture. `metrics` is a `metric_group`
    dict; it is computed when absent.
    """
    p, t = check_predictions(pred, true)
    group = metrics if metrics is not None else metric_group(p, t)
    lo, hi = RATING_RANGE
    outside = int(((p < lo) | (p > hi) | (t < lo) | (t > hi)).sum())
    stats = "   ".join([f"n = {group['n']:,}"] + [f"{label} = {_fmt(k, group.get(k))}" for k, label in
                                                  (("plcc", "PLCC"), ("srcc", "SRCC"), ("rmse", "RMSE"))])
    if outside:
        stats += f"\n{outside:,} item(s) outside 1-5 drawn at the edge"
    fig = Figure(figsize=(6.6, 5.6), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    if p.size:
        hb = ax.hexbin(np.clip(t, lo, hi), np.clip(p, lo, hi), gridsize=gridsize, extent=(lo, hi, lo, hi),
                       mincnt=1, cmap="viridis", norm=LogNorm(), linewidths=0.2)
        top = max(float(hb.get_array().max()), 1.0)
        ticks = [v for v in (m * 10**e for e in range(9) for m in (1, 2, 5)) if v <= top] or [1]
        if len(ticks) == 1:  # every hexagon holds one item: a flat colour scale still needs a range
            hb.set_clim(1, 2)
            ticks = [1, 2]
        cbar = fig.colorbar(hb, ax=ax, shrink=0.85, ticks=ticks, format="%d",
                            label="items per hexagon (log scale)")
        cbar.minorticks_off()  # log minor ticks would add "2x10^0"-style labels between ours
    else:
        ax.text(0.5, 0.5, "no items", ha="center", va="center", transform=ax.transAxes, fontsize=14)
    ax.plot([lo, hi], [lo, hi], ls="--", lw=1.2, color="tab:red", label="y = x")
    pad = 0.05
    ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), xlabel="True average rating",
           ylabel="Predicted rating", aspect="equal")
    ax.set_title(f"{title}\n{stats}", fontsize=10.5)
    ax.set_xticks(np.arange(lo, hi + 0.5, 0.5))
    ax.set_yticks(np.arange(lo, hi + 0.5, 0.5))
    ax.grid(True, lw=0.4, alpha=0.4)
    ax.legend(loc="lower right", fontsize=9)
    return fig


def plot_pred_vs_true(pred: Any, true: Any, path: str | Path, title: str = "Predicted vs true rating",
                      metrics: dict[str, Any] | None = None, gridsize: int = 40) -> Path:
    """Save `pred_vs_true_figure` as an image (format from the suffix: PNG in the report); return the path."""
    # A bare Figure renders through Agg: no pyplot global state, nothing to close, safe in threads.
    return save_figure(pred_vs_true_figure(pred, true, title=title, metrics=metrics, gridsize=gridsize), path)


def write_report(metrics: dict[str, Any], pred: Any, true: Any, out_dir: str | Path,
                 title: str = "EffiMiniVLM evaluation",
                 meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write metrics.json, metrics.md and pred_vs_true.png into `out_dir`; return their paths.

    `metrics` is a `compute_metrics` result; `pred`/`true` are the scored arrays for the plot. `meta`
    carries run context (model dir, split, counters of skipped or fallback items) into both text files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md", "plot": out / "pred_vs_true.png"}
    write_json({**metrics, "title": title, "meta": meta}, paths["json"])
    atomic_write_text(paths["markdown"], render_markdown(metrics, title=title, meta=meta))
    plot_pred_vs_true(pred, true, paths["plot"], title=title, metrics=metrics.get("overall"))
    return paths
