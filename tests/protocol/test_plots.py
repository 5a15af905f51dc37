"""The PLCC-vs-C figure (points where they belong, readable labels, the would-be rank) and the terminal
tables of `profile` and `score`."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D
from rich.console import Console

from effiminivlm.evaluation.plots import (
    PlotPoint,
    plot_protocol,
    protocol_figure,
    render_profile,
    render_score,
)
from effiminivlm.evaluation.protocol import ProtocolCfg, efficiency, load_leaderboard, protocol_score

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
    rows = [t for t in _texts(side) if t[:2].strip().isdigit() or t.startswith(" * ")]
    order = [r.split()[0] for r in rows]
    assert order == ["1", "2", "3", "4", "*", "5", "6", "7", "8", "9"]  # CES 0.396 rounds to 0.40: after 3, 4
    assert any("rank #5 of 10" in t for t in _user_lines(side))


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
    labels = [t for t in ax.texts if t.get_text().isdigit()]
    assert sorted(int(t.get_text()) for t in labels) == list(range(1, len(BOARD) + 1))
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
    cfg = ProtocolCfg(params_target_m=100, flops_target_g=5, beta=1.2)
    fig = protocol_figure([PlotPoint("mine", 0.5, 0.4), PlotPoint("no plcc", 0.3)], cfg=cfg, leaderboard=[])
    ax, side = fig.axes
    assert ax.get_xlabel() == "resource cost C (log scale)"
    assert any("E capped at 1.20" in t for t in _texts(ax))
    assert any("min(1 + 0.05 ln(1/C), 1.20)" in t for t in _texts(side))


# ------------------------------------------------------------------------------------------ terminal tables


def _render(renderable) -> str:
    console = Console(record=True, width=140)
    console.print(renderable)
    return console.export_text()


def test_render_score_shows_every_number() -> None:
    s = protocol_score(152.12, 31.14, 0.41)
    result = {"submission": "sub.csv", "truth": "truth.csv", "n_items": 1234, **s.to_dict(),
              "plcc_defined": True, "protocol": ProtocolCfg().to_dict()}
    text = _render(render_score(result))
    for expected in ("sub.csv", "truth.csv", "1,234", "152.12", "31.14", f"{s.c:.4f}", f"{s.e:.4f}",
                     f"{s.ces:.4f}", "would rank #3 of 10"):  # 0.4248 rounds to 0.42: after 0.43, 0.42
        assert expected in text
    undefined = protocol_score(152.12, 31.14, math.nan)
    text = _render(render_score({**result, **undefined.to_dict(), "plcc_defined": False}))
    assert "undefined" in text and "would rank" not in text


def test_render_profile_warns_about_uncounted_ops() -> None:
    from effiminivlm.config import load_recipe
    from effiminivlm.evaluation.efficiency import profile_model, with_plcc
    from effiminivlm.models.factory import create_model

    p = profile_model(create_model(load_recipe("tiny").model, pretrained=False), mean_tokens=30, label="tiny")
    text = _render(render_profile(with_plcc(p, 0.2, "--plcc")))
    for expected in ("tiny", "image_encoder", "text_encoder", "head", f"{p.params_m:.3f}", f"{p.flops_g:.3f}",
                     "GFLOPs at 30 tokens", f"{p.c:.4f}", "capped at 1.10", f"{0.2 * p.e:.4f}", p.method,
                     "64x64 image", "64 tokens"):
        assert expected in text, expected
    assert "WARNING" not in text
    p.uncounted_ops["aten.conv_tbc"] = 2
    assert "WARNING: ops with a cost but no FLOP formula ran and are NOT counted: aten.conv_tbc (x2)" in \
        _render(render_profile(p)).replace("\n", " ")


@pytest.mark.parametrize("c, phrase", [(0.05, "capped at"), (0.5, "1 + 0.05 ln(1/C)"), (3.0, "penalty")])
def test_render_profile_names_the_branch_of_e(c: float, phrase: str) -> None:
    from effiminivlm.evaluation.efficiency import ModelProfile

    fields = {f: None for f in ModelProfile.__dataclass_fields__}
    p = ModelProfile(**{**fields, "label": "x", "params": 1, "params_m": 1e-6, "trainable_m": 1e-6,
                        "flops": 1, "flops_g": 1e-9, "modalities": "image_text", "params_by_module_m": {},
                        "flops_by_module_g": {}, "flops_by_op_g": {}, "flops_by_module_op": {},
                        "attention_g": 0.0, "c": c, "e": efficiency(c), "method": "m", "uncounted_ops": {},
                        "protocol": ProtocolCfg().to_dict()})
    assert phrase in _render(render_profile(p))
