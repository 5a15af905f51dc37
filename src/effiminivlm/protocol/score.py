"""Scoring files by the LoViF 2026 protocol: a submission against the truth, and an evaluation report's PLCC.

Why strict: a leaderboard number must come from exactly what the files say. Numbers are parsed by a
decimal/scientific pattern, never by Python's `float` alone, which would read "3_5" as 35 (underscore
literals) or accept "nan"/"inf"; a value so large that the correlation's sums overflow is a DataError naming
its file:line instead of a silent NaN that would pass for "constant predictions". A constant truth file is
reported as such. What is legal but probably a mistake is returned as `warnings` (and printed by `score`):
params / FLOPs that look like raw counts rather than millions / GFLOPs, scores outside the rating scale
[1, 5], and fewer items than `MIN_ITEMS_FOR_RANK`, below which no leaderboard rank is given (a PLCC over a
handful of items says nothing about the test set's).

A leaderboard rank is claimed only when the caller says the truth is the LoViF 2026 test set
(`lovif_test`, `score --lovif-test`): the published rows were scored on those items, and a PLCC on any
other set (a synthetic catalog, a dev split) answers a different question. Otherwise the result says
`NOT_COMPARABLE` and carries no rank number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from effiminivlm.data.lovif import read_truth
from effiminivlm.data.prepare import read_prepared
from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.errors import DataError
from effiminivlm.evaluation.metrics import plcc as pearson
from effiminivlm.files import parse_number, read_csv_rows, write_json
from effiminivlm.protocol.formulas import (
    DEFAULT_PROTOCOL,
    NOT_COMPARABLE,
    ProtocolCfg,
    leaderboard_rank,
    protocol_score,
)

#: A decimal or scientific number in ASCII digits: no underscores, "nan"/"inf", hex or other scripts.
#: Largest |score| accepted: squares and sums over millions of items must stay finite in float64.
MAX_ABS_SCORE = 1e100
#: Fewer matched items than this get no leaderboard rank (stated in the result and the table).
MIN_ITEMS_FOR_RANK = 30
#: params (M) or FLOPs (G) above this look like raw counts (27706365 for 27.7 M).
RAW_COUNT_THRESHOLD = 1e5


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
        value = parse_number(row[value_col], f"{path}:{line}", what)
        if abs(value) > MAX_ABS_SCORE:
            raise DataError(f"{path}:{line}: {what} {row[value_col]!r} is too large (|{what}| > "
                            f"{MAX_ABS_SCORE:g} overflows the correlation); scores are ratings in [1, 5]")
        out[item] = value
        first_line[item] = line
    return out


def _constant(rows: list[tuple[int, dict[str, str]]], col: str, path: Path) -> float:
    """The one value of a per-file column (params, flops); DataError if it varies or is not positive."""
    values = {parse_number(row[col], f"{path}:{line}", col) for line, row in rows}
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
        out = read_truth(path)
        if not out:
            raise DataError(f"{path}: no truth rows")
        return out, str(path)
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


def _warnings(scores: dict[str, float], lines: dict[str, int], path: Path, params_m: float,
              flops_g: float) -> list[str]:
    """Legal but probably wrong: raw counts for params / FLOPs, scores off the rating scale."""
    out = []
    if params_m > RAW_COUNT_THRESHOLD:
        out.append(f"params {params_m:g} looks like a raw count; the protocol wants millions "
                   f"({params_m / 1e6:.2f} M?)")
    if flops_g > RAW_COUNT_THRESHOLD:
        out.append(f"flops {flops_g:g} looks like a raw count; the protocol wants GFLOPs "
                   f"({flops_g / 1e9:.2f} G?)")
    lo, hi = RATING_RANGE
    off = [i for i, v in scores.items() if not lo <= v <= hi]
    if off:
        first = off[0]
        out.append(f"{len(off)} of {len(scores)} scores lie outside [{lo:g}, {hi:g}] (first: {path}:"
                   f"{lines[first]} score {scores[first]:g}); predictions are meant on the rating scale")
    return out


def score_submission(predictions: str | Path, truth: str | Path, cfg: ProtocolCfg = DEFAULT_PROTOCOL,
                     min_items_for_rank: int = MIN_ITEMS_FOR_RANK, lovif_test: bool = False
                     ) -> dict[str, Any]:
    """The leaderboard computation from files: PLCC, PLCC+, C (from the submission's params/flops), E, CES.

    Every submission id must be in the truth and every truth id must be predicted: a partial submission
    would be scored on a different item set than everyone else's, so mismatches are errors that say how
    many ids matched, never a silent subset. Constant predictions leave PLCC undefined: PLCC+ and CES are 0
    (as the reference scorer), `plcc_defined` is False and a warning says why.
    """
    sub_path = Path(predictions)
    header, rows = read_csv_rows(sub_path)
    _check_columns(header, sub_path, ("item_id", "score", "params", "flops"))
    if not rows:
        raise DataError(f"{sub_path}: no rows")
    scores = _keyed(rows, "item_id", "score", sub_path, "score")
    lines = {row["item_id"]: line for line, row in rows}
    params_m = _constant(rows, "params", sub_path)
    flops_g = _constant(rows, "flops", sub_path)
    truth_map, truth_label = load_truth(truth)
    if len(truth_map) > 1 and len(set(truth_map.values())) == 1:
        raise DataError(f"{truth_label}: every average_rating is {next(iter(truth_map.values())):g} "
                        f"({len(truth_map)} rows); PLCC against a constant truth is undefined")

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
    warnings = _warnings(scores, lines, sub_path, params_m, flops_g)
    if not result.plcc_defined:
        warnings.append("PLCC is undefined: the predictions are constant (or fewer than 2 items); PLCC+ and "
                        "CES are 0, as the reference scorer counts them")
    rank, rank_note = None, NOT_COMPARABLE
    if lovif_test and len(ids) >= min_items_for_rank:
        rank, rank_note = leaderboard_rank(result.ces), None
    elif lovif_test:
        rank_note = f"no rank: fewer than {min_items_for_rank} items"
        warnings.append(f"no leaderboard rank: {len(ids)} items, fewer than the {min_items_for_rank} a "
                        "rank needs")
    return {
        "submission": str(sub_path),
        "truth": truth_label,
        "n_items": len(ids),
        **result.to_dict(),
        "lovif_test": lovif_test,
        "leaderboard_rank": rank,
        "rank_note": rank_note,
        "min_items_for_rank": min_items_for_rank,
        "warnings": warnings,
        "protocol": cfg.to_dict(),
    }


def run_score(predictions: str | Path, truth: str | Path, cfg: ProtocolCfg = DEFAULT_PROTOCOL,
              json_out: str | Path | None = None, plot_out: str | Path | None = None,
              lovif_test: bool = False) -> dict[str, Any]:
    """`effiminivlm score`: `score_submission`, then the JSON and the PLCC-vs-C plot when asked."""
    result = score_submission(predictions, truth, cfg, lovif_test=lovif_test)
    if json_out is not None:
        write_json(result, json_out)
    if plot_out is not None:
        from effiminivlm.protocol.plots import PlotPoint, plot_protocol

        point = PlotPoint(Path(predictions).name, result["c"], result["plcc"], comparable=lovif_test)
        plot_protocol(plot_out, [point], cfg=cfg)
    return result
