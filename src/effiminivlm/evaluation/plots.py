"""The protocol plot: accuracy (PLCC) against resource cost C, with the leaderboard and iso-CES curves.

Why this picture: CES = PLCC+ x E(C) trades accuracy against cost in a way a table hides. Curves of equal
CES show how much PLCC a cheaper or dearer model needs to tie; the flat region left of the E cap shows that
shrinking a model below C = exp(-(beta - 1) / alpha) earns nothing more, and the shaded region right of
C = 1 shows where the penalty starts. The published leaderboard is drawn for reference and the user's
model is highlighted (as a star when its PLCC is known, as a vertical line at its C otherwise).

Built on a bare `matplotlib.figure.Figure` (Agg canvas, no pyplot global state), so it is safe in tests,
servers and threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from effiminivlm.evaluation.protocol import (
    DEFAULT_PROTOCOL,
    LeaderboardEntry,
    ProtocolCfg,
    cap_cost,
    efficiency,
    load_leaderboard,
)

_USER_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")


@dataclass(frozen=True)
class PlotPoint:
    """A model to highlight: its name, resource cost C and PLCC (None when not evaluated yet)."""

    label: str
    c: float
    plcc: float | None = None


def _spread_labels(ys: list[float], min_gap: float) -> list[float]:
    """Nudge label heights (sorted order kept) so neighbours are at least `min_gap` apart."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = list(ys)
    for prev, cur in zip(order, order[1:], strict=False):
        placed[cur] = max(placed[cur], placed[prev] + min_gap)
    return placed


def plot_protocol(out: str | Path, points: Sequence[PlotPoint] = (), *, cfg: ProtocolCfg = DEFAULT_PROTOCOL,
                  leaderboard: Sequence[LeaderboardEntry] | None = None, title: str | None = None) -> Path:
    """Write the PLCC-vs-C plot (PNG, or any format matplotlib knows from the suffix) and return its path."""
    board = list(load_leaderboard() if leaderboard is None else leaderboard)
    cs = [e.c for e in board] + [p.c for p in points]
    plccs = [e.plcc for e in board] + [p.plcc for p in points if p.plcc is not None and math.isfinite(p.plcc)]
    x_lo = min([*cs, cap_cost(cfg) or 0.1]) / 2.0
    x_hi = max([*cs, 1.0]) * 2.5
    y_hi = min(1.0, max([*plccs, 0.3]) + 0.12)
    y_lo = max(-0.05, min([*plccs, 0.0]) - 0.05)

    fig = Figure(figsize=(9.0, 6.0), dpi=120)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)

    # iso-CES curves: PLCC = CES / E(C); labelled where they leave the plot on the right
    grid = np.geomspace(x_lo, x_hi, 400)
    e_grid = np.array([efficiency(c, cfg) for c in grid])
    step = 0.05 if y_hi - y_lo <= 0.7 else 0.1
    for level in np.arange(step, 1.0 + 1e-9, step):
        ys = level / e_grid
        if ys.min() > y_hi:
            break
        ax.plot(grid, ys, color="0.6", lw=0.8, ls="--", zorder=1)
        inside = np.nonzero(ys <= y_hi - 0.01)[0]
        i = inside[-1] if ys[-1] > y_hi - 0.01 else len(grid) - 1
        ax.annotate(f"CES {level:.2f}", (grid[i], min(ys[i], y_hi - 0.01)), xytext=(-2, 2),
                    textcoords="offset points", ha="right", va="bottom", fontsize=7, color="0.45")

    c_cap = cap_cost(cfg)
    if c_cap > x_lo:
        ax.axvspan(x_lo, c_cap, color="#2ca02c", alpha=0.06, lw=0)
        ax.axvline(c_cap, color="#2ca02c", lw=0.8, alpha=0.6)
        ax.text(c_cap, y_hi, f" E capped at {cfg.beta:.2f}\n (C < {c_cap:.3f})", ha="right", va="top",
                fontsize=7.5, color="#2ca02c")
    ax.axvspan(1.0, x_hi, color="#d62728", alpha=0.06, lw=0)
    ax.axvline(1.0, color="#d62728", lw=0.8, alpha=0.6)
    ax.text(1.0, y_hi, f" C > 1: penalty\n E = 1/(1+{cfg.gamma:g} ln C)", ha="left", va="top", fontsize=7.5,
            color="#d62728")

    # leaderboard
    ax.scatter([e.c for e in board], [e.plcc for e in board], s=28, color="0.25", zorder=3,
               label="LoViF 2026 leaderboard")
    label_y = _spread_labels([e.plcc for e in board], min_gap=(y_hi - y_lo) * 0.028)
    for e, ly in zip(board, label_y, strict=True):
        name = f"{e.team} ({e.model})" if e.model else e.team
        ax.annotate(f"{name}  CES {e.ces:.2f}", (e.c, e.plcc), xytext=(e.c * 1.06, ly), textcoords="data",
                    fontsize=7, color="0.2", va="center",
                    arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5} if abs(ly - e.plcc) > 1e-9 else None)

    # the user's models
    for k, p in enumerate(points):
        colour = _USER_COLOURS[k % len(_USER_COLOURS)]
        e = efficiency(p.c, cfg)
        if p.plcc is None or not math.isfinite(p.plcc):
            ax.axvline(p.c, color=colour, lw=2, zorder=4)
            ax.text(p.c, y_lo + 0.02 * (y_hi - y_lo), f" {p.label}\n C={p.c:.3f}, E={e:.3f}\n (no PLCC yet)",
                    color=colour, fontsize=8.5, fontweight="bold", va="bottom", ha="left", zorder=5)
            continue
        ces = max(0.0, p.plcc) * e
        ax.scatter([p.c], [p.plcc], marker="*", s=260, color=colour, edgecolor="black", lw=0.6, zorder=6,
                   label=f"{p.label}: PLCC {p.plcc:.3f}, C {p.c:.3f}, E {e:.3f}, CES {ces:.3f}")
        ax.plot(grid, ces / e_grid, color=colour, lw=1.2, alpha=0.7, zorder=2)
        ax.annotate(p.label, (p.c, p.plcc), xytext=(0, -14), textcoords="offset points", ha="center",
                    va="top", fontsize=8.5, fontweight="bold", color=colour, zorder=6)

    ax.set_xlabel("resource cost C = (params / 1000M)^0.5 x (FLOPs / 20G)^0.5   (log scale)"
                  if (cfg.params_weight, cfg.flops_weight, cfg.params_target_m, cfg.flops_target_g)
                  == (0.5, 0.5, 1000.0, 20.0) else "resource cost C (log scale)")
    ax.set_ylabel("PLCC")
    ax.set_title(title or "LoViF 2026 efficiency protocol: CES = max(0, PLCC) x E(C)", fontsize=11)
    ax.grid(True, which="major", color="0.92", lw=0.6)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
