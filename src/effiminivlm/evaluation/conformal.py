"""Split-conformal prediction intervals: a calibrated [low, high] with every score.

Why: a rating model's PLCC says how well it ranks on average, not how far one score may be off. Split
conformal prediction turns held-out residuals into an interval with a finite-sample guarantee: if the
calibration items and a new item are exchangeable, P(true in [score - q, score + q]) >= level, where q is the
ceil((n + 1) * level)-th smallest absolute residual of the n calibration items (Vovk et al.; Lei et al. 2018).

Fitted on the validation split at the end of training (the best epoch's predictions), saved in the model
folder as `conformal.json`, and read by the scorer, `predict` (extra columns `low_80, high_80, ...` after the
LoViF columns, which never change) and `evaluate` (empirical coverage and mean width on test, overall and
for well-rated items). Scores and bounds are clipped to the rating range [1, 5]; clipping a bound never
uncovers a true rating, which always lies in that range. Caveat, stated in every report: the validation
split also chose the epoch (and a probe's alpha), which makes the residuals slightly optimistic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.errors import DataError

__all__ = ["CONFORMAL_FILE", "DEFAULT_LEVELS", "coverage_report", "fit_conformal", "intervals",
           "level_key", "load_conformal", "render_coverage_markdown", "save_conformal"]
CONFORMAL_FILE = "conformal.json"
DEFAULT_LEVELS = (0.8, 0.9)
RANGE = RATING_RANGE  # scores and bounds are clipped to the rating scale


def level_key(level: float) -> str:
    """0.8 -> "80" (the column suffix and JSON key)."""
    return f"{level * 100:g}"


def fit_conformal(pred: Any, target: Any, levels: tuple[float, ...] = DEFAULT_LEVELS) -> dict[str, Any]:
    """Half-widths q per level from absolute residuals of (clipped) predictions on calibration items.

    With too few items for a level (ceil((n+1) level) > n) the interval is the whole rating range, and
    `too_few` lists that level: an honest "no information", never a too-narrow interval.
    """
    p = np.clip(np.asarray(pred, dtype=np.float64), *RANGE)
    t = np.asarray(target, dtype=np.float64)
    ok = np.isfinite(p) & np.isfinite(t)
    if not ok.any():
        raise DataError("conformal calibration needs at least one item with a prediction and a rating")
    resid = np.sort(np.abs(t[ok] - p[ok]))
    n = len(resid)
    q: dict[str, float] = {}
    too_few = []
    for level in levels:
        if not 0 < level < 1:
            raise DataError(f"conformal level must be in (0, 1), got {level}")
        k = math.ceil((n + 1) * level)
        if k > n:
            q[level_key(level)] = RANGE[1] - RANGE[0]
            too_few.append(level_key(level))
        else:
            q[level_key(level)] = float(resid[k - 1])
    return {"method": "split conformal, absolute residual", "calibration": "val", "n_calibration": n,
            "levels": [float(v) for v in levels], "q": q, "too_few": too_few, "range": list(RANGE)}


def save_conformal(model_dir: str | Path, conf: dict[str, Any]) -> Path:
    path = Path(model_dir) / CONFORMAL_FILE
    path.write_text(json.dumps(conf, indent=2) + "\n")
    return path


def load_conformal(model_dir: str | Path) -> dict[str, Any] | None:
    """The model's intervals, or None for a model saved without them (older runs)."""
    path = Path(model_dir) / CONFORMAL_FILE
    if not path.is_file():
        return None
    try:
        conf = json.loads(path.read_text())
        _ = {k: float(v) for k, v in conf["q"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: not a conformal.json written by effiminivlm ({e})") from None
    return conf


def intervals(pred: Any, conf: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"80": (low, high), ...} around clipped `pred`, bounds clipped to [1, 5]."""
    p = np.clip(np.asarray(pred, dtype=np.float64), *RANGE)
    return {k: (np.clip(p - q, *RANGE), np.clip(p + q, *RANGE)) for k, q in conf["q"].items()}


def _coverage(pred: np.ndarray, target: np.ndarray, conf: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (lo, hi) in intervals(pred, conf).items():
        inside = (target >= lo - 1e-9) & (target <= hi + 1e-9)
        out[key] = {"n": int(len(target)), "nominal": float(key) / 100,
                    "coverage": float(inside.mean()) if len(target) else math.nan,
                    "mean_width": float((hi - lo).mean()) if len(target) else math.nan}
    return out


def coverage_report(pred: Any, target: Any, conf: dict[str, Any], rating_number: Any = None,
                    min_rating_number: int = 10) -> dict[str, Any]:
    """Empirical coverage and mean width per level, overall and for items with >= `min_rating_number`."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    report = {"overall": _coverage(p, t, conf)}
    if rating_number is not None:
        well = np.asarray(rating_number, dtype=np.float64) >= min_rating_number
        report[f"rating_number_ge_{min_rating_number}"] = _coverage(p[well], t[well], conf)
    report["calibration"] = {k: conf[k] for k in ("method", "calibration", "n_calibration", "q", "too_few")}
    return report


def render_coverage_markdown(report: dict[str, Any]) -> str:
    """A table: subset x level -> coverage (nominal) and mean width."""
    lines = ["", "Conformal intervals (fitted on val; val also chose the epoch, so slightly optimistic):", "",
             "| subset | level | n | coverage | mean width |", "| --- | ---: | ---: | ---: | ---: |"]
    for group, levels in report.items():
        if group == "calibration":
            continue
        for key, c in levels.items():
            cov = "n/a" if math.isnan(c["coverage"]) else f"{c['coverage']:.3f}"
            width = "n/a" if math.isnan(c["mean_width"]) else f"{c['mean_width']:.3f}"
            lines.append(f"| {group} | {key}% | {c['n']:,} | {cov} | {width} |")
    return "\n".join(lines) + "\n"
