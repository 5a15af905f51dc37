"""The PLCC-vs-C figure (points where they belong, readable labels, the would-be rank) and the terminal
tables of `profile` and `score`."""

from __future__ import annotations

import itertools
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D

from effiminivlm.protocol.formulas import ProtocolCfg, efficiency, load_leaderboard
from effiminivlm.protocol.plots import (
    PlotPoint,
    plot_protocol,
    protocol_figure,
)

BOARD = load_leaderboard()


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _user_lines(side_ax) -> list[str]:
    return [t.get_text() for t in side_ax.texts if t.get_text().lstrip().startswith("*")]


def test_user_model_is_a_star_at_its_c_and_plcc_with_its_iso_ces_curve() -> None:
    fig = protocol_figure([PlotPoint("mine", 0.0971, 0.36)])
    ax, side = fig.axes
    stars = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets()) == 1]
    assert len(stars) == 1 and np.allclose(stars[0].get_offsets()[0], [0.0971, 0.36])
    board = [c for c in ax.collections
             if isinstance(c, PathCollection) and len(c.get_offsets()) == len(BOARD)]
    assert np.allclose(board[0].get_offsets(), [[e.c, e.plcc] for e in BOARD])
    ces = 0.36 * efficiency(0.0971)
    curves = [ln for ln in ax.lines if isinstance(ln, Line2D) and ln.get_linestyle() == "-"
              and len(ln.get_xdata()) > 2]
    x, y = curves[0].get_xdata(), curves[0].get_ydata()
    assert np.allclose(y, [ces / efficiency(c) for c in x])  # PLCC needed for the same CES at every C
    legend = [t.get_text() for t in side.get_legend().get_texts()]
    assert any(f"CES {ces:.3f}" in t and t.startswith("mine\n") for t in legend)


def test_side_table_inserts_the_user_at_its_would_be_rank() -> None:
    side = protocol_figure([PlotPoint("mine", 0.0971, 0.36)]).axes[1]
    rows = [t for t in _texts(side) if t[:2].strip().isdigit() or t.startswith((" * ", " B "))]
    order = [r.split()[0] for r in rows]
    # CES 0.396 rounds to 0.40: after yinloonkhor (3); the unranked baseline keeps its place, uncounted
    assert order == ["1", "2", "B", "3", "*", "4", "5", "6", "7", "8", "9"]
    assert any("rank #4 of 10" in t for t in _user_lines(side))
    assert any(t.startswith(" B wleach baseline") for t in rows)


def test_a_run_on_another_test_set_sits_at_its_place_without_a_rank() -> None:
    side = protocol_figure([PlotPoint("mine", 0.0971, 0.36, comparable=False)]).axes[1]
    rows = [t for t in _texts(side) if t[:2].strip().isdigit() or t.startswith((" * ", " B "))]
    assert [r.split()[0] for r in rows] == ["1", "2", "B", "3", "*", "4", "5", "6", "7", "8", "9"]
    notes = _user_lines(side)
    assert any("not comparable: a different test set" in t for t in notes)
    assert not any("rank #" in t for t in notes)


def test_model_without_plcc_is_a_vertical_line_with_the_plcc_it_needs() -> None:
    fig = protocol_figure([PlotPoint("untrained", 0.02, None), PlotPoint("nan", 0.5, math.nan)])
    ax, side = fig.axes
    verticals = sorted(ln.get_xdata()[0] for ln in ax.lines if len(set(ln.get_xdata())) == 1
                       and ln.get_color() != "#2ca02c" and ln.get_xdata()[0] != 1.0)
    assert verticals == [0.02, 0.5]
    need = BOARD[0].ces / efficiency(0.02)
    assert any(f"{need:.3f} would tie #1" in t for t in _user_lines(side))


def test_axes_cover_extreme_models() -> None:
    ax = protocol_figure([PlotPoint("tiny", 1e-3, 0.05), PlotPoint("huge", 12.0, 0.8)]).axes[0]
    (x_lo, x_hi), (y_lo, y_hi) = ax.get_xlim(), ax.get_ylim()
    assert x_lo < 1e-3 and x_hi > 12.0 and y_lo < 0.05 and y_hi > 0.8
    assert ax.get_xscale() == "log"


def test_leaderboard_labels_do_not_overlap_points_or_each_other() -> None:
    fig = protocol_figure([PlotPoint("mine", 0.0971, 0.36)])
    ax = fig.axes[0]
    canvas = FigureCanvasAgg(fig)  # what savefig renders through
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text().isdigit() or t.get_text() == "B"]
    assert sorted(t.get_text() for t in labels) == sorted([*map(str, range(1, len(BOARD))), "B"])
    boxes = [t.get_window_extent(renderer) for t in labels]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    points = ax.transData.transform([(e.c, e.plcc) for e in BOARD])
    for box in boxes:
        assert not any(box.contains(x, y) for x, y in points)
    for box in boxes:  # labels stay inside the plot
        assert ax.get_window_extent(renderer).contains(box.x0, box.y0)


def test_user_label_stays_clear_of_the_leaderboard() -> None:
    """A model just above EffiMiniVLM's point: its name must not cover that point or its rank number."""
    fig = protocol_figure([PlotPoint("submission.csv", 0.097, 0.39)])
    ax = fig.axes[0]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (label,) = [t for t in ax.texts if t.get_text() == "submission.csv"]
    box = label.get_window_extent(renderer)
    points = ax.transData.transform([(e.c, e.plcc) for e in BOARD])
    assert not any(box.contains(x, y) for x, y in points)
    numbers = [t.get_window_extent(renderer) for t in ax.texts if t.get_text().isdigit()]
    assert not any(box.overlaps(n) for n in numbers)
    star = ax.transData.transform([(0.097, 0.39)])[0]
    assert not box.contains(*star)


def test_plot_protocol_writes_the_file(tmp_path) -> None:
    png = plot_protocol(tmp_path / "nested" / "p.png", [PlotPoint("mine", 0.2, 0.3)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = plot_protocol(tmp_path / "p.svg")
    assert b"<svg" in svg.read_bytes()[:500]


def test_custom_protocol_and_empty_leaderboard() -> None:
    cfg = ProtocolCfg(params_target_m=100, flops_target_g=5, gamma=0.2)
    fig = protocol_figure([PlotPoint("mine", 0.5, 0.4), PlotPoint("no plcc", 0.3)], cfg=cfg, leaderboard=[])
    ax, side = fig.axes
    assert ax.get_xlabel() == "resource cost C (log scale)"
    assert any("E capped at 1.20" in t for t in _texts(ax))
    assert any("min(1 + 0.05 ln(1/C), 1.20)" in t for t in _texts(side))
