"""The evaluation report: strict JSON (null, never NaN), Markdown with the numbers, a real hexbin PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from PIL import Image

from effiminivlm.evaluation.metrics import compute_metrics
from effiminivlm.evaluation.report import (
    plot_pred_vs_true,
    pred_vs_true_figure,
    render_markdown,
    write_report,
)


def _reject_constant(token: str) -> float:
    raise AssertionError(f"non-strict JSON token {token!r} in metrics.json")


@pytest.fixture()
def scored() -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(1)
    true = np.round(rng.uniform(1, 5, 200), 1)
    pred = true + rng.normal(0, 0.6, 200)
    cats = np.array(["AMAZON FASHION"] * 150 + ["All Beauty"] * 49 + ["Odd|Name"])  # one single-item category
    counts = rng.integers(0, 40, 200)
    return pred, true, compute_metrics(pred, true, cats, counts)


def test_write_report_files_parse_and_agree(tmp_path: Path, scored) -> None:
    pred, true, metrics = scored
    paths = write_report(metrics, pred, true, tmp_path / "eval", title="Test run",
                         meta={"split": "test", "model": tmp_path / "m", "image_status": {"ok": 3}})
    assert set(paths) == {"json", "markdown", "plot"}
    assert all(p.is_file() and p.parent == tmp_path / "eval" for p in paths.values())

    data = json.loads(paths["json"].read_text(), parse_constant=_reject_constant)
    assert data["title"] == "Test run"
    assert data["meta"] == {"split": "test", "model": str(tmp_path / "m"), "image_status": {"ok": 3}}
    assert data["overall"]["n"] == 200
    assert data["overall"]["plcc"] == pytest.approx(metrics["overall"]["plcc"])
    assert data["rating_number_ge_10"]["n"] == metrics["rating_number_ge_10"]["n"]
    single = data["per_category"]["Odd|Name"]
    assert single["n"] == 1 and single["plcc"] is None and single["srcc"] is None  # NaN -> null
    assert single["rmse"] == pytest.approx(abs(pred[-1] - true[-1]))

    md = paths["markdown"].read_text()
    assert md.startswith("# Test run\n")
    assert f"{metrics['overall']['plcc']:.4f}" in md
    assert f"{metrics['overall']['rmse']:.4f}" in md
    assert f"{metrics['rating_number_ge_10']['plcc']:.4f}" in md
    assert "| rating_number >= 10 |" in md
    assert "| Odd\\|Name | 1 | n/a | 0.0000 | n/a |" in md  # escaped pipe; undefined PLCC n/a, its PLCC+ 0
    assert "- **split**: test" in md
    assert md == render_markdown(metrics, title="Test run", meta={"split": "test", "model": tmp_path / "m",
                                                                  "image_status": {"ok": 3}})

    with Image.open(paths["plot"]) as img:
        img.verify()
    with Image.open(paths["plot"]) as img:
        assert img.format == "PNG"
        assert 400 <= img.width <= 2000 and 400 <= img.height <= 2000
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # hexagons, colour bar and text, not a blank canvas


def test_markdown_without_optional_groups() -> None:
    md = render_markdown(compute_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
    assert "| overall | 3 | 1.0000 | 1.0000 | 1.0000 | 0.0000 | 0.0000 | 0.0000 |" in md
    assert "Per category" not in md and "rating_number" not in md and not md.startswith("#")


def test_markdown_meta_newlines_stay_in_one_item() -> None:
    md = render_markdown(compute_metrics([1.0, 2.0], [1.0, 2.0]), meta={"note": "two\nlines"})
    assert "- **note**: two lines\n" in md


def _figure_text(fig) -> str:
    ax = fig.axes[0]
    return "\n".join([ax.get_title(), *(t.get_text() for t in ax.texts)])


def _hex_counts(fig) -> np.ndarray:
    ax = fig.axes[0]
    hexes = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(hexes) == 1
    return np.asarray(hexes[0].get_array())


def test_every_item_is_in_the_hexbin_even_outside_the_range() -> None:
    pred = np.array([0.2, 7.0, 1.0, 5.0, 3.0, 3.0, 3.02])  # two outside 1-5, two on the edges
    true = np.array([1.0, 5.0, 1.0, 5.0, 3.0, 3.0, 3.0])
    fig = pred_vs_true_figure(pred, true)
    assert _hex_counts(fig).sum() == pred.size
    text = _figure_text(fig)
    assert "n = 7" in text and "2 item(s) outside 1-5" in text


@pytest.mark.parametrize(("pred", "true"), [([], []), ([3.0], [4.0]), ([3.0] * 20, np.linspace(1, 5, 20))])
def test_degenerate_inputs_still_plot(tmp_path: Path, pred, true) -> None:
    path = plot_pred_vs_true(pred, true, tmp_path / "p.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100
    text = _figure_text(pred_vs_true_figure(pred, true))
    assert "PLCC = n/a" in text and f"n = {len(pred)}" in text


def test_plot_rejects_nonfinite_predictions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not finite"):
        plot_pred_vs_true([1.0, math.nan], [1.0, 2.0], tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


