"""The LoViF 2026 efficiency protocol: resource cost C, efficiency E and the ranking score CES.

Why a module of its own: users compare models by CES, so the number must be reproducible to the digit from
three inputs (params, FLOPs, PLCC) with no hidden choices. The formulas, with `ProtocolCfg` defaults::

    PLCC+ = max(0, PLCC)
    C     = (P / 1000M) ^ 0.5  *  (F / 20G) ^ 0.5          P = all parameters, F = FLOPs of one forward pass
    E     = min(1 + 0.05 * ln(1 / C), 1.10)   if C <= 1    (reward for being cheaper than the targets, capped)
          = 1 / (1 + 2 * ln C)                 if C  > 1    (penalty for being dearer)
    CES   = PLCC+ * E

Why the log form of E: it is the one that reproduces the official leaderboard. A linear reward (E growing
linearly as C falls, e.g. 1 + 0.05 (1 - C)) gives E = 1.03 and 1.05 for olacnqoddchl and yinloonkhor where
the leaderboard publishes 1.04 and 1.10. The packaged `leaderboard.json` holds every published row and the
tests reproduce each of them (C and E to two decimals, CES within 0.01 because the published PLCC is itself
rounded).

`score_submission` runs the leaderboard computation from files: a submission CSV (``item_id, score, params,
flops``; params in M and FLOPs in G, constant per file) against ground truth (a truth CSV read by
`data.lovif.read_truth`, or a prepared dataset folder whose test split is used). `read_report_plcc` takes
the PLCC from an evaluation report instead, for `effiminivlm profile`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from effiminivlm.errors import DataError
from effiminivlm.files import read_csv_rows, write_json


@dataclass(frozen=True)
class ProtocolCfg:
    """Targets, weights and E's constants. The defaults are the LoViF 2026 values."""

    params_target_m: float = 1000.0  # P target, millions of parameters
    flops_target_g: float = 20.0  # F target, GFLOPs (2 FLOPs per multiply-add)
    params_weight: float = 0.5  # exponent of P / target in C
    flops_weight: float = 0.5  # exponent of F / target in C
    alpha: float = 0.05  # reward slope: E = 1 + alpha * ln(1/C) for C <= 1
    beta: float = 1.10  # reward cap
    gamma: float = 2.0  # penalty slope: E = 1 / (1 + gamma * ln C) for C > 1

    def __post_init__(self) -> None:
        for name in ("params_target_m", "flops_target_g", "gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ProtocolCfg.{name} must be a positive number, got {value!r}")
        for name in ("params_weight", "flops_weight", "alpha"):  # 0 switches a term off
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ProtocolCfg.{name} must be >= 0, got {value!r}")
        if not (math.isfinite(self.beta) and self.beta >= 1):
            raise ValueError(f"ProtocolCfg.beta (the reward cap) must be >= 1, got {self.beta!r}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_PROTOCOL = ProtocolCfg()


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def resource_cost(params_m: float, flops_g: float, cfg: ProtocolCfg = DEFAULT_PROTOCOL) -> float:
    """C from params (millions) and FLOPs (GFLOPs); C = 1 exactly at the targets."""
    p = _positive(params_m, "params (M)") / cfg.params_target_m
    f = _positive(flops_g, "FLOPs (G)") / cfg.flops_target_g
    return p**cfg.params_weight * f**cfg.flops_weight


def efficiency(c: float, cfg: ProtocolCfg = DEFAULT_PROTOCOL) -> float:
    """E(C): a capped log reward below the targets (C <= 1), a log penalty above them."""
    c = _positive(c, "resource cost C")
    if c <= 1.0:
        return min(1.0 + cfg.alpha * math.log(1.0 / c), cfg.beta)
    return 1.0 / (1.0 + cfg.gamma * math.log(c))


def cap_cost(cfg: ProtocolCfg = DEFAULT_PROTOCOL) -> float:
    """The C below which E stays at its cap (exp(-(beta - 1) / alpha), 0.135 by default): no further gain."""
    return math.exp(-(cfg.beta - 1.0) / cfg.alpha) if cfg.alpha > 0 else 0.0


def plcc_plus(plcc: float) -> float:
    """max(0, PLCC); an undefined PLCC (NaN: constant predictions) stays NaN rather than becoming 0."""
    plcc = float(plcc)
    return plcc if math.isnan(plcc) else max(0.0, plcc)


@dataclass(frozen=True)
class ProtocolScore:
    """C, E and (when a PLCC is given) PLCC+ and CES for one model."""

    params_m: float
    flops_g: float
    c: float
    e: float
    plcc: float | None = None
    plcc_plus: float | None = None
    ces: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def protocol_score(params_m: float, flops_g: float, plcc: float | None = None,
                   cfg: ProtocolCfg = DEFAULT_PROTOCOL) -> ProtocolScore:
    """Everything the leaderboard prints for one model. CES is NaN when the PLCC is undefined."""
    c = resource_cost(params_m, flops_g, cfg)
    e = efficiency(c, cfg)
    if plcc is None:
        return ProtocolScore(float(params_m), float(flops_g), c, e)
    pp = plcc_plus(plcc)
    if not (math.isnan(pp) or -1.0 - 1e-9 <= float(plcc) <= 1.0 + 1e-9):
        raise ValueError(f"PLCC must lie in [-1, 1], got {plcc!r}")
    return ProtocolScore(float(params_m), float(flops_g), c, e, float(plcc), pp, pp * e)


def plcc_for_ces(ces: float, c: float, cfg: ProtocolCfg = DEFAULT_PROTOCOL) -> float:
    """The PLCC a model of cost C needs to reach a given CES (CES / E(C)): the iso-CES curves of the plot."""
    return float(ces) / efficiency(c, cfg)


# ----------------------------------------------------------------------------------------------- leaderboard


@dataclass(frozen=True)
class LeaderboardEntry:
    """One published row (values rounded as published)."""

    team: str
    params_m: float
    flops_g: float
    plcc: float
    c: float
    e: float
    ces: float
    model: str | None = None


def load_leaderboard() -> list[LeaderboardEntry]:
    """The official LoViF 2026 leaderboard shipped with the package, in published rank order."""
    data = json.loads((resources.files("effiminivlm") / "evaluation" / "leaderboard.json").read_text())
    return [LeaderboardEntry(**row) for row in data["entries"]]


def leaderboard_rank(ces: float, board: list[LeaderboardEntry] | None = None) -> int | None:
    """The rank a CES would take on the published leaderboard (1 = first; ties go to the published entry,
    which was there first); None for an undefined CES."""
    if ces is None or math.isnan(ces):
        return None
    return 1 + sum(e.ces >= round(ces, 2) for e in (load_leaderboard() if board is None else board))


# --------------------------------------------------------------------------------------------- file helpers


def read_report_plcc(path: str | Path) -> float:
    """``overall.plcc`` of an evaluation report (`effiminivlm evaluate`'s metrics.json); NaN when the report
    says it is undefined (``null``: constant predictions), a DataError when the file has no such number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected an evaluation report: eval-test/metrics.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON evaluation report ({e})") from None
    overall = data.get("overall") if isinstance(data, dict) else None
    if not isinstance(overall, dict) or "plcc" not in overall:
        raise DataError(f'{path}: no "overall": {{"plcc": ...}} (write it with effiminivlm evaluate)')
    value = overall["plcc"]
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1.0 <= value <= 1.0:
        raise DataError(f"{path}: overall.plcc is {value!r}; expected a number in [-1, 1] or null")
    return float(value)


# ------------------------------------------------------------------------------------------ scoring files


def _number(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {what} is {text!r}; it must be finite")
    return value


def _check_columns(header: list[str], path: Path, needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")


def _keyed(rows: list[tuple[int, dict[str, str]]], id_col: str, value_col: str, path: Path,
           what: str) -> dict[str, float]:
    """id -> value, with a file:line error for empty ids, duplicates and non-numeric values."""
    out: dict[str, float] = {}
    first_line: dict[str, int] = {}
    for line, row in rows:
        item = row[id_col]
        if not item:
            raise DataError(f"{path}:{line}: empty {id_col}")
        if item in out:
            raise DataError(f"{path}:{line}: duplicate {id_col} {item!r} (first on line {first_line[item]})")
        out[item] = _number(row[value_col], f"{path}:{line}", what)
        first_line[item] = line
    return out


def _constant(rows: list[tuple[int, dict[str, str]]], col: str, path: Path) -> float:
    """The one value of a per-file column (params, flops); DataError if it varies or is not positive."""
    values = {_number(row[col], f"{path}:{line}", col) for line, row in rows}
    if len(values) != 1:
        raise DataError(f"{path}: column {col} must be constant per file, found {len(values)} values "
                        f"({', '.join(f'{v:g}' for v in sorted(values)[:5])})")
    (value,) = values
    if value <= 0:
        raise DataError(f"{path}: column {col} must be positive, got {value:g}")
    return value


def load_truth(truth: str | Path) -> tuple[dict[str, float], str]:
    """Ground truth as id -> average_rating, and a label of where it came from.

    A CSV is read by `data.lovif.read_truth` (``parent_asin`` or ``item_id`` plus ``average_rating``, every
    rating in [1, 5]); a folder is read as a prepared dataset and its test split is used.
    """
    path = Path(truth)
    if not path.is_dir():
        from effiminivlm.data.lovif import read_truth

        out = read_truth(path)
        if not out:
            raise DataError(f"{path}: no truth rows")
        return out, str(path)
    from effiminivlm.data.prepare import read_prepared

    table = read_prepared(path, split="test")
    if table.num_rows == 0:
        raise DataError(f"{path}: the prepared dataset has no test rows")
    ids = [str(v) for v in table.column("parent_asin").to_pylist()]
    ratings = table.column("average_rating").to_pylist()
    if any(r is None for r in ratings):
        raise DataError(f"{path}: {sum(r is None for r in ratings)} test rows have no average_rating")
    out = dict(zip(ids, (float(r) for r in ratings), strict=True))
    if len(out) != len(ids):
        raise DataError(f"{path}: duplicate parent_asin in the test split")
    return out, f"{path} (test split)"


def score_submission(predictions: str | Path, truth: str | Path,
                     cfg: ProtocolCfg = DEFAULT_PROTOCOL) -> dict[str, Any]:
    """The leaderboard computation from files: PLCC, PLCC+, C (from the submission's params/flops), E, CES.

    Every submission id must be in the truth and every truth id must be predicted: a partial submission
    would be scored on a different item set than everyone else's, so mismatches are errors that say how
    many ids matched, never a silent subset.
    """
    from effiminivlm.evaluation.metrics import plcc as pearson

    sub_path = Path(predictions)
    header, rows = read_csv_rows(sub_path)
    _check_columns(header, sub_path, ("item_id", "score", "params", "flops"))
    if not rows:
        raise DataError(f"{sub_path}: no rows")
    scores = _keyed(rows, "item_id", "score", sub_path, "score")
    params_m = _constant(rows, "params", sub_path)
    flops_g = _constant(rows, "flops", sub_path)
    truth_map, truth_label = load_truth(truth)

    unknown = [i for i in scores if i not in truth_map]
    missing = [i for i in truth_map if i not in scores]
    matched = len(scores) - len(unknown)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} submission id(s) are not in the truth "
                         f"(e.g. {', '.join(unknown[:3])})")
        if missing:
            parts.append(f"{len(missing)} truth id(s) have no prediction (e.g. {', '.join(missing[:3])})")
        raise DataError(f"{sub_path} vs {truth_label}: {'; '.join(parts)}; {matched} of {len(scores)} "
                        f"submission ids matched the {len(truth_map)} truth ids")
    ids = list(scores)
    r = pearson([scores[i] for i in ids], [truth_map[i] for i in ids])
    result = protocol_score(params_m, flops_g, r, cfg)
    return {
        "submission": str(sub_path),
        "truth": truth_label,
        "n_items": len(ids),
        **result.to_dict(),
        "plcc_defined": not math.isnan(r),
        "leaderboard_rank": leaderboard_rank(result.ces),
        "protocol": cfg.to_dict(),
    }


def run_score(predictions: str | Path, truth: str | Path, cfg: ProtocolCfg = DEFAULT_PROTOCOL,
              json_out: str | Path | None = None, plot_out: str | Path | None = None) -> dict[str, Any]:
    """`effiminivlm score`: `score_submission`, then the JSON and the PLCC-vs-C plot when asked."""
    result = score_submission(predictions, truth, cfg)
    if json_out is not None:
        write_json(result, json_out)
    if plot_out is not None:
        from effiminivlm.evaluation.plots import PlotPoint, plot_protocol

        plot_protocol(plot_out, [PlotPoint(Path(predictions).name, result["c"], result["plcc"])], cfg=cfg)
    return result
