"""The PLCC-vs-C plot of the protocol (matplotlib only; the terminal tables are in `cli.tables`).

Why this picture: CES = PLCC+ x E(C) trades accuracy against cost in a way a table hides. Curves of equal
CES show how much PLCC a cheaper or dearer model needs to tie; the flat region left of the E cap shows that
shrinking a model below C = exp(-gamma / alpha) earns nothing more, and the shaded region right of
C = 1 shows where the penalty starts. The published leaderboard is drawn as numbered points (their rank),
with the full table beside the axes, so no label covers a point; the user's model is a star with its own
iso-CES curve and its would-be rank in that table (a vertical line at its C when no PLCC is known yet,
with the PLCC it would need to reach first place). A model scored on another test set is drawn where it
would sit, marked "not comparable: a different test set", with no rank number.

Built on a bare `matplotlib.figure.Figure` (Agg canvas, no pyplot global state), so it is safe in tests,
servers and threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from effiminivlm.protocol.formulas import (
    DEFAULT_PROTOCOL,
    NOT_COMPARABLE,
    LeaderboardEntry,
    ProtocolCfg,
    cap_cost,
    efficiency,
    leaderboard_rank,
    load_leaderboard,
    plcc_for_ces,
    ranked_count,
)

if TYPE_CHECKING:
    pass

_USER_COLOURS = ("#d62728", "#1f77b4", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass(frozen=True)
class PlotPoint:
    """A model to highlight: its name, resource cost C and PLCC (None or NaN when not known)."""

    label: str
    c: float
    plcc: float | None = None
    comparable: bool = True  # PLCC measured on the LoViF 2026 test set: a rank among the published rows

    @property
    def has_plcc(self) -> bool:
        return self.plcc is not None and math.isfinite(self.plcc)


def _place_labels(ax: Any, anchors: list[tuple[float, float]], texts: list[str],
                  pads: list[float] | None = None) -> list[tuple[float, float, str]]:
    """Per anchor, an (dx, dy, ha) offset in points (for a ``va="bottom"`` label) that keeps its label clear
    of every anchor and of the labels placed before it (greedy over right, left, above, below; the first
    stays when none is clear). `pads` is each anchor's marker radius in points (6 by default)."""
    scale = ax.figure.dpi / 72.0
    pts = ax.transData.transform(np.asarray(anchors, dtype=float))
    placed: list[np.ndarray] = []
    out = []
    for (x, y), text, pad in zip(pts, texts, pads or [6.0] * len(texts), strict=True):
        width = 5.5 * len(text) * scale
        choices = [(pad, 3, "left"), (-pad, 3, "right"), (0, pad + 2, "center"), (0, -pad - 7, "center")]
        best = choices[0]
        for dx, dy, ha in choices:
            cx = x + dx * scale + {"left": width / 2, "right": -width / 2, "center": 0.0}[ha]
            cy = y + dy * scale + 4 * scale
            box = np.array([cx, cy])
            clear_points = all(abs(px - cx) > width / 2 + 4 * scale or abs(py - cy) > 8 * scale
                               for px, py in pts if (px, py) != (x, y))
            clear_labels = all(abs(b[0] - cx) > (width + b[2]) / 2 or abs(b[1] - cy) > 10 * scale
                               for b in placed)
            if clear_points and clear_labels:
                best = (dx, dy, ha)
                placed.append(np.array([*box, width]))
                break
        else:
            placed.append(np.array([x + pad * scale + width / 2, y + 7 * scale, width]))
        out.append(best)
    return out


def _side_table(ax: Any, board: list[LeaderboardEntry], points: Sequence[PlotPoint],
                cfg: ProtocolCfg) -> float:
    """The leaderboard as text beside the plot, the user's rows inserted at their would-be rank, then the
    formulas and one note per user model; returns the height (axes fraction) where the text ends."""
    ax.axis("off")
    rows: list[tuple[float, str, str]] = []  # (sort key, text, colour)
    position = {}  # published rank -> row position (unranked baselines keep their published place)
    for pos, e in enumerate(board, 1):
        name = f"{e.team} ({e.model})" if e.model else e.team
        mark = f"{e.rank:>2}" if e.ranked else " B"
        if e.ranked:
            position[e.rank] = pos
        name = name if e.ranked else f"{name} baseline"
        text = f"{mark} {name[:25]:<25} {e.plcc:5.2f} {e.c:5.2f} {e.e:5.2f} {e.ces:5.2f}"
        rows.append((pos, text, "0.15"))
    n_ranked = ranked_count(board)
    notes = []
    for k, p in enumerate(points):
        colour = _USER_COLOURS[k % len(_USER_COLOURS)]
        e = efficiency(p.c, cfg)
        if p.has_plcc:
            ces = max(0.0, float(p.plcc)) * e
            rank = leaderboard_rank(ces, board)
            rows.append((position.get(rank or 0, len(board) + 1) - 0.5,
                         f" * {p.label[:25]:<25} {p.plcc:5.2f} {p.c:5.2f} {e:5.2f} {ces:5.2f}", colour))
            place = f"rank #{rank} of {n_ranked + 1}" if p.comparable else NOT_COMPARABLE
            notes.append((f"* {p.label[:32]}: CES {ces:.3f}, {place}", colour))
        elif n_ranked:
            first = next(b for b in board if b.ranked)
            need = plcc_for_ces(first.ces, p.c, cfg)
            notes.append((f"* {p.label[:32]}: C {p.c:.3f}, E {e:.3f}\n"
                          f"  no PLCC yet; {need:.3f} would tie #1 (CES {first.ces:.2f})", colour))
    lines = [(" # team                       PLCC     C     E   CES", "0.15")]
    lines += [(text, colour) for _, text, colour in sorted(rows, key=lambda r: r[0])]
    ax.text(0.0, 1.0, "LoViF 2026 leaderboard (published, rounded)", transform=ax.transAxes, fontsize=9,
            fontweight="bold", va="top", ha="left")
    y = 0.94
    for text, colour in lines:
        ax.text(0.0, y, text, transform=ax.transAxes, fontsize=7.5, family="monospace", va="top", ha="left",
                color=colour, fontweight="bold" if colour != "0.15" else "normal")
        y -= 0.045
    formula = (f"CES = max(0, PLCC) x E(C)\nE = min(1 + {cfg.alpha:g} ln(1/C), {cfg.e_cap:.2f}) for C <= 1\n"
               f"E = 1 / (1 + {cfg.beta:g} ln C) for C > 1;  B = baseline, unranked")
    ax.text(0.0, y - 0.01, formula, transform=ax.transAxes, fontsize=7.5, va="top", ha="left", color="0.35")
    y -= 0.16
    for text, colour in notes:
        ax.text(0.0, y, text, transform=ax.transAxes, fontsize=7.5, family="monospace", va="top",
                color=colour, fontweight="bold")
        y -= 0.045 * (1 + text.count("\n")) + 0.015
    return y


def plot_protocol(out: str | Path, points: Sequence[PlotPoint] = (), *, cfg: ProtocolCfg = DEFAULT_PROTOCOL,
                  leaderboard: Sequence[LeaderboardEntry] | None = None, title: str | None = None) -> Path:
    """Write the PLCC-vs-C plot (PNG, or any format matplotlib knows from the suffix) and return its path."""
    from effiminivlm.files import save_figure

    return save_figure(protocol_figure(points, cfg=cfg, leaderboard=leaderboard, title=title), out)


def protocol_figure(points: Sequence[PlotPoint] = (), *, cfg: ProtocolCfg = DEFAULT_PROTOCOL,
                    leaderboard: Sequence[LeaderboardEntry] | None = None, title: str | None = None
                    ) -> Figure:
    """The PLCC-vs-C figure: the plot axes first, the leaderboard table (and legend) axes second."""
    board = list(load_leaderboard() if leaderboard is None else leaderboard)
    cs = [e.c for e in board] + [p.c for p in points]
    plccs = [e.plcc for e in board] + [float(p.plcc) for p in points if p.has_plcc]
    c_cap = cap_cost(cfg)
    x_lo = min([*cs, c_cap or 0.1]) / 1.6
    x_hi = max([*cs, 1.0]) * 2.2
    y_hi = min(1.05, max([*plccs, 0.3]) + 0.1)
    y_lo = max(-0.05, min([*plccs, 0.0]) - 0.03)

    fig = Figure(figsize=(13.5, 6.5), dpi=120)
    grid_spec = fig.add_gridspec(1, 2, width_ratios=(2.3, 1.0), wspace=0.03, left=0.06, right=0.99, top=0.93,
                                 bottom=0.09)  # final layout first: label placement reads display coordinates
    ax = fig.add_subplot(grid_spec[0, 0])
    ax.set_xscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)

    # iso-CES curves PLCC = CES / E(C), labelled at the left edge where they are flat (E capped) and apart
    grid = np.geomspace(x_lo, x_hi, 400)
    e_grid = np.array([efficiency(c, cfg) for c in grid])
    step = 0.05 if y_hi - y_lo <= 0.7 else 0.1
    for level in np.arange(step, 1.0 + 1e-9, step):
        ys = level / e_grid
        if ys[0] > y_hi:
            break
        ax.plot(grid, ys, color="0.72", lw=0.7, ls="--", zorder=1)
        if y_lo + 0.01 < ys[0] < y_hi - 0.03:
            ax.text(x_lo * 1.04, ys[0] + 0.003, f"CES {level:.2f}", fontsize=7, color="0.5", va="bottom",
                    ha="left", zorder=1)

    box = {"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
    if c_cap > x_lo:
        ax.axvspan(x_lo, c_cap, color="#2ca02c", alpha=0.07, lw=0)
        ax.axvline(c_cap, color="#2ca02c", lw=0.8, alpha=0.6)
        ax.text(c_cap / 1.04, y_lo + 0.015 * (y_hi - y_lo), f"E capped at {cfg.e_cap:.2f}\n(C < {c_cap:.3f})",
                ha="right", va="bottom", fontsize=8, color="#2ca02c", bbox=box, zorder=5)
    ax.axvspan(1.0, x_hi, color="#d62728", alpha=0.06, lw=0)
    ax.axvline(1.0, color="#d62728", lw=0.8, alpha=0.6)
    ax.text(x_hi / 1.03, y_lo + 0.015 * (y_hi - y_lo), f"C > 1: penalty\nE = 1/(1+{cfg.beta:g} ln C)",
            ha="right", va="bottom", fontsize=8, color="#d62728", bbox=box, zorder=5)

    # the leaderboard: numbered points, the numbers placed clear of the other points
    ax.scatter([e.c for e in board], [e.plcc for e in board], s=30, color="0.25", zorder=3,
               label="LoViF 2026 leaderboard\n(number = published rank, B = baseline)")
    # one placement for the rank numbers and the user's labels, so none covers a point or another label
    starred = [p for p in points if p.has_plcc]
    anchors = [(e.c, e.plcc) for e in board] + [(p.c, float(p.plcc)) for p in starred]
    texts = [str(e.rank) if e.ranked else "B" for e in board] + [p.label for p in starred]
    offsets = _place_labels(ax, anchors, texts, [6.0] * len(board) + [11.0] * len(starred))
    for k, (dx, dy, ha) in enumerate(offsets[:len(board)]):
        ax.annotate(texts[k], anchors[k], xytext=(dx, dy), textcoords="offset points", ha=ha, va="bottom",
                    fontsize=8, color="0.15", zorder=4)
    user_offsets = dict(zip([id(p) for p in starred], offsets[len(board):], strict=True))

    # the user's models
    for k, p in enumerate(points):
        colour = _USER_COLOURS[k % len(_USER_COLOURS)]
        e = efficiency(p.c, cfg)
        if not p.has_plcc:
            ax.axvline(p.c, color=colour, lw=2, zorder=4,
                       label=f"{p.label}\nC {p.c:.3f}, E {e:.3f} (no PLCC yet)")
            continue
        ces = max(0.0, float(p.plcc)) * e
        ax.scatter([p.c], [p.plcc], marker="*", s=280, color=colour, edgecolor="black", lw=0.6, zorder=6,
                   label=f"{p.label}\nPLCC {p.plcc:.3f}, C {p.c:.3f}, E {e:.3f}, CES {ces:.3f}")
        ax.plot(grid, ces / e_grid, color=colour, lw=1.2, alpha=0.8, zorder=2)
        dx, dy, ha = user_offsets[id(p)]
        ax.annotate(p.label, (p.c, p.plcc), xytext=(dx, dy), textcoords="offset points", ha=ha,
                    va="bottom", fontsize=8.5, fontweight="bold", color=colour, zorder=6, bbox=box)

    standard = (cfg.params_weight, cfg.flops_weight, cfg.params_target_m,
                cfg.flops_target_g) == (0.5, 0.5, 1000.0, 20.0)
    ax.set_xlabel("resource cost C = (params / 1000M)^0.5 x (FLOPs / 20G)^0.5   (log scale)" if standard
                  else "resource cost C (log scale)")
    ax.set_ylabel("PLCC")
    ax.set_title(title or "LoViF 2026 efficiency protocol: accuracy vs resource cost", fontsize=11)
    ax.grid(True, which="major", color="0.92", lw=0.6)
    side = fig.add_subplot(grid_spec[0, 1])
    y = _side_table(side, board, points, cfg)
    side.legend(*ax.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(-0.02, y), fontsize=7.5,
                frameon=False)  # beside the axes, so it never hides a point or a region label
    return fig
