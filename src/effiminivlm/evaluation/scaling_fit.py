"""Accuracy against training-set size: fits, bootstrap intervals, extrapolation and the Figure-2 plot.

Two curves are fitted to the (n_train, PLCC) points of `effiminivlm scaling` (every seed's run is a point):

* ``log``: PLCC = a + b ln(n), the straight line the paper's Figure 2 suggests on a log axis; it never
  saturates, so its extrapolation is an optimistic upper reading (capped at PLCC 1);
* ``power``: PLCC = p_inf - c n^(-alpha) (p_inf in [0, 1], c > 0, alpha in (0, 2]), which bends towards a
  ceiling p_inf; its extrapolation is the cautious reading.

Intervals come from a bootstrap over runs (resampling the seeds' runs within each fraction, `B` times,
refitting both curves): the 2.5-97.5 percentiles of each prediction. With few fractions or a flat curve the
power law is weakly identified and its interval is wide; the report says so rather than hiding it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["fit_log", "fit_power", "fit_scaling", "plot_scaling"]


def fit_log(n: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of y = a + b ln n by least squares."""
    b, a = np.polyfit(np.log(n), y, 1)
    return float(a), float(b)


def fit_power(n: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """(p_inf, c, alpha) of y = p_inf - c n^-alpha, or None when the fit does not converge."""
    from scipy.optimize import OptimizeWarning, curve_fit

    def f(x: np.ndarray, p: float, c: float, a: float) -> np.ndarray:
        return p - c * np.power(x, -a)

    start = (min(max(float(y.max()) + 0.05, 0.0), 1.0), 1.0, 0.3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, _ = curve_fit(f, n.astype(np.float64), y, p0=start,
                                bounds=([0.0, 0.0, 1e-3], [1.0, 1e3, 2.0]),
                                maxfev=20_000)
    except (RuntimeError, ValueError):
        return None
    return float(popt[0]), float(popt[1]), float(popt[2])


def _log_at(p: tuple[float, float], n: np.ndarray | float) -> Any:
    """a + b ln n, capped to [-1, 1]: a correlation cannot leave it, however far the line is extrapolated."""
    return np.clip(p[0] + p[1] * np.log(n), -1.0, 1.0)


def _power_at(p: tuple[float, float, float], n: np.ndarray | float) -> Any:
    return p[0] - p[1] * np.power(n, -p[2])


def fit_scaling(points: list[dict[str, Any]], target_n: float, *, boot: int = 500, seed: int = 0
                ) -> dict[str, Any]:
    """Fits, bootstrap intervals and the predictions at `target_n` from runs {"n": n_train, "plcc": y}."""
    pts = [p for p in points if p.get("plcc") is not None and math.isfinite(p["plcc"])]
    if len({p["n"] for p in pts}) < 2:
        return {"error": "fewer than two training sizes with a defined PLCC: nothing to fit"}
    n = np.array([p["n"] for p in pts], dtype=np.float64)
    y = np.array([p["plcc"] for p in pts], dtype=np.float64)
    grid = np.geomspace(n.min(), max(target_n, n.max()), 60)
    log_p, pow_p = fit_log(n, y), fit_power(n, y)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(n == v) for v in np.unique(n)]
    log_t, pow_t, log_g, pow_g = [], [], [], []
    for _ in range(boot):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        lp = fit_log(n[idx], y[idx])
        log_t.append(_log_at(lp, target_n))
        log_g.append(_log_at(lp, grid))
        pp = fit_power(n[idx], y[idx]) if pow_p is not None else None
        if pp is not None:
            pow_t.append(_power_at(pp, target_n))
            pow_g.append(_power_at(pp, grid))

    def ci(v: list[Any]) -> list[float] | None:
        return [float(x) for x in np.percentile(v, [2.5, 97.5])] if v else None

    out: dict[str, Any] = {"target_n": target_n, "n_points": len(pts), "bootstrap": boot,
                           "log": {"a": log_p[0], "b": log_p[1], "at_target": float(_log_at(log_p, target_n)),
                                   "ci95": ci(log_t)},
                           "grid": grid.tolist(), "log_band": [ci([g[i] for g in log_g]) for i in
                                                               range(len(grid))]}
    if pow_p is not None:
        out["power"] = {"p_inf": pow_p[0], "c": pow_p[1], "alpha": pow_p[2],
                        "at_target": float(_power_at(pow_p, target_n)), "ci95": ci(pow_t),
                        "converged_boot": len(pow_t)}
        out["power_band"] = [ci([g[i] for g in pow_g]) for i in range(len(grid))] if pow_g else None
    else:
        out["power"] = None
    return out


def plot_scaling(path: str | Path, summary: list[dict[str, Any]], fit: dict[str, Any], title: str,
                 reference: tuple[str, float] | None = None) -> Path:
    """Figure 2: mean PLCC +- sd over seeds per training size, both fits, the bootstrap band to target n."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    ax = fig.add_subplot(111)
    shown = [s for s in summary if s["plcc_mean"] is not None]  # an undefined PLCC has no point
    xs = [s["n"] for s in shown]
    ax.errorbar(xs, [s["plcc_mean"] for s in shown], yerr=[s["plcc_sd"] or 0 for s in shown], fmt="o",
                color="black", capsize=3, label="test PLCC (mean +- sd over seeds)")
    if "grid" in fit:
        grid = np.array(fit["grid"])
        ax.plot(grid, _log_at((fit["log"]["a"], fit["log"]["b"]), grid), "--", color="tab:blue",
                label=f"a + b ln n (at {fit['target_n']:,.0f}: {fit['log']['at_target']:.3f})")
        band = fit.get("log_band")
        if band and all(b is not None for b in band):
            ax.fill_between(grid, [b[0] for b in band], [b[1] for b in band], color="tab:blue", alpha=0.12)
        if fit.get("power"):
            p = fit["power"]
            ax.plot(grid, _power_at((p["p_inf"], p["c"], p["alpha"]), grid), "-", color="tab:red",
                    label=f"p_inf - c n^-alpha (at target: {p['at_target']:.3f})")
            band = fit.get("power_band")
            if band and all(b is not None for b in band):
                ax.fill_between(grid, [b[0] for b in band], [b[1] for b in band], color="tab:red", alpha=0.15,
                                label="95% bootstrap band")
        ax.axvline(fit["target_n"], color="grey", lw=0.8, ls=":")
    if reference is not None:
        ax.axhline(reference[1], color="tab:green", lw=0.8, ls="-.", label=reference[0])
    if xs or "grid" in fit:
        ax.set_xscale("log")
    ax.set_xlabel("training items n (log scale)")
    ax.set_ylabel("test PLCC")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    from effiminivlm.files import save_figure

    return save_figure(fig, path)
