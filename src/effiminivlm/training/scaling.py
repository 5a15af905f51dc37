"""`effiminivlm scaling`: test PLCC against the number of training items (the paper's Figure 2).

For each seed s, the train split is put in a seeded hash order and each fraction takes a prefix of it, so the
subsets are nested (0.05 within 0.1 within ...); val and test stay the prepared ones for every run, so the
points differ only in training data. One run per fraction x seed (`training.kfold.run_and_test`:
resumable, finished runs skipped), then `evaluation.scaling_fit` fits PLCC = a + b ln n and a saturating
power law with bootstrap intervals and extrapolates both to `target_n`.

Layout of `RUN`: scaling_plan.json, data/frac-F-seed-S/ (the subset as a prepared dataset),
runs/frac-F/seed-S/ (run + eval-test), features.safetensors (probe recipes: every item embedded once),
scaling.json, scaling.md, scaling.png.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from effiminivlm.config import Recipe
from effiminivlm.data.folds import write_subset_dataset
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.evaluation.scaling_fit import fit_scaling, plot_scaling
from effiminivlm.files import atomic_write_text, write_json
from effiminivlm.training.kfold import check_plan, probe_features, run_and_test
from effiminivlm.training.skeleton import is_probe

__all__ = ["run_scaling"]
PLAN = "scaling_plan.json"


def run_scaling(recipe: Recipe, data_dir: str | Path, out_dir: str | Path, *, fractions: list[float],
                seeds: int = 3, target_n: float = 1.6e6, overwrite: bool = False,
                images_dir: str | Path | None = None, device: str | None = None,
                reference: tuple[str, float] | None = None, boot: int = 500,
                features: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train + test `recipe` on nested train subsets; returns the scaling.json dict (+ markdown, paths)."""
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise EffiMiniVLMError(f"--fractions must lie in (0, 1], got {fractions}")
    if seeds < 1:
        raise EffiMiniVLMError(f"--seeds must be at least 1, got {seeds}")
    data, out = Path(data_dir), Path(out_dir)
    n_train = read_prepared(data, "train").num_rows
    plan = {"data": str(data.resolve()), "recipe": recipe.to_dict(), "fractions": sorted(fractions),
            "seeds": seeds}
    check_plan(out, plan, overwrite, PLAN, keys=("data", "recipe"))
    if images_dir is None and (data / "images").is_dir():
        images_dir = data / "images"
    if features is None:
        features = probe_features(recipe, data, out, images_dir, device, False, log)
    elif not is_probe(recipe):
        raise EffiMiniVLMError("--features serves probe recipes only (train.probe ridge | head)")
    points = []
    for frac in sorted(fractions):
        n = max(2, math.ceil(frac * n_train - 1e-9))
        for s in range(seeds):
            sub = out / "data" / f"frac-{frac:g}-seed-{s}"
            if not (sub / "summary.json").is_file():
                write_subset_dataset(data, sub, n, seed=s)
            run = run_and_test(recipe, sub, out / "runs" / f"frac-{frac:g}" / f"seed-{s}", 0,
                               recipe.train.seed + s, images_dir=images_dir, device=device, progress=False,
                               log=lambda msg, f=frac: log(f"fraction {f:g}: {msg}"), features=features)
            m = run["metrics"]
            ge = next((v for k, v in m.items() if k.startswith("rating_number_ge_")), {})
            points.append({"fraction": frac, "seed": s, "n": n, **{k: m["overall"].get(k) for k in
                                                                  ("plcc", "srcc", "rmse")},
                           "plcc_ge": ge.get("plcc"), "n_test": m["overall"]["n"]})
    summary = _summarise(points)
    fit = fit_scaling(points, target_n, boot=boot)
    result = {"plan": plan, "n_train_full": n_train, "points": points, "summary": summary, "fit": fit,
              "reference": list(reference) if reference else None}
    paths = {"json": out / "scaling.json", "markdown": out / "scaling.md", "plot": out / "scaling.png"}
    title = f"{recipe.name} recipe on {data.name}: test PLCC vs training items ({seeds} seeds)"
    write_json(result, paths["json"])
    markdown = render_scaling_markdown(result, title)
    atomic_write_text(paths["markdown"], markdown)
    plot_scaling(paths["plot"], summary, fit, title, reference)
    return {**result, "markdown": markdown, "paths": paths}


def _summarise(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for frac in sorted({p["fraction"] for p in points}):
        rows = [p for p in points if p["fraction"] == frac]
        vals = [p["plcc"] for p in rows if p["plcc"] is not None and math.isfinite(p["plcc"])]
        out.append({"fraction": frac, "n": rows[0]["n"], "runs": len(rows),
                    "plcc_mean": float(np.mean(vals)) if vals else None,
                    "plcc_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                    "rmse_mean": float(np.mean([p["rmse"] for p in rows]))})
    return out


def render_scaling_markdown(result: dict[str, Any], title: str) -> str:
    """Points, fits and the extrapolation as Markdown."""
    fit = result["fit"]
    lines = [f"# {title}", "", "| fraction | train items | runs | test PLCC (mean +- sd over seeds) | RMSE |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for s in result["summary"]:
        plcc = "-" if s["plcc_mean"] is None else f"{s['plcc_mean']:.4f}" + (
            f" +- {s['plcc_sd']:.4f}" if s["plcc_sd"] is not None else "")
        lines.append(f"| {s['fraction']:g} | {s['n']:,} | {s['runs']} | {plcc} | {s['rmse_mean']:.4f} |")
    lines.append("")
    if "error" in fit:
        lines.append(f"No fit: {fit['error']}.")
        return "\n".join(lines) + "\n"

    def ci(v: list[float] | None) -> str:
        return f"[{v[0]:.3f}, {v[1]:.3f}]" if v else "n/a"

    lg = fit["log"]
    lines += [f"Fits over {fit['n_points']} runs, {fit['bootstrap']} bootstrap resamples; extrapolated to "
              f"n = {fit['target_n']:,.0f}:", "",
              "| fit | parameters | PLCC at target n | 95% interval |", "| --- | --- | ---: | ---: |",
              f"| a + b ln n | a={lg['a']:.4f}, b={lg['b']:.4f} | {lg['at_target']:.3f} | {ci(lg['ci95'])} |"]
    pw = fit.get("power")
    if pw:
        params = f"p_inf={pw['p_inf']:.3f}, c={pw['c']:.3f}, alpha={pw['alpha']:.3f}"
        lines.append(f"| p_inf - c n^-alpha | {params} | {pw['at_target']:.3f} | {ci(pw['ci95'])} |")
    else:
        lines.append("| p_inf - c n^-alpha | did not converge | - | - |")
    if result.get("reference"):
        lines += ["", f"Reference: {result['reference'][0]} = {result['reference'][1]:.3f}."]
    lines += ["", "The log fit never saturates (an optimistic reading); the power law bends to p_inf "
              "(cautious). Extrapolating 2-3 orders of magnitude beyond the data is a forecast, not a "
              "measurement."]
    return "\n".join(lines) + "\n"
