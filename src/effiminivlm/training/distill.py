"""Distillation from a bigger model's scores (`train --teacher SCORES`, `train.distill`).

The teacher's predictions are soft labels: less noisy than an average of few ratings, and they carry what
the teacher learned from far more capacity. SCORES is a submission-format CSV (`item_id,score[,params,
flops]`, as `effiminivlm predict` writes). The training target of a train item the teacher scored becomes

    (1 - alpha) x average_rating + alpha x teacher score

and an item the teacher did not score keeps its true label; both are counted in the log and the run summary.
A bad row of SCORES (empty id, a score that is not a finite number in [1, 5], an id given twice with
different scores) is counted with its file:line, and its item falls back to the true label; `--strict`
turns the first one into a one-line DataError. Only the train split is blended: validation keeps the truth.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.errors import DataError
from effiminivlm.files import read_csv_rows


@dataclass
class TeacherScores:
    """Scores by item id, and the bad rows (kind -> count, first examples as file:line: reason)."""

    scores: dict[str, float]
    bad: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def read_teacher_scores(path: str | Path, *, strict: bool = False) -> TeacherScores:
    """Parse a submission-format CSV of teacher scores (see the module doc for what is a bad row)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"teacher scores {path} do not exist (expected a submission CSV: item_id,score)")
    header, rows = read_csv_rows(path)
    missing = [c for c in ("item_id", "score") if c not in header]
    if missing:
        raise DataError(f"{path}:1: the header lacks {', '.join(missing)} (expected item_id,score,...)")
    out = TeacherScores({})
    conflicting: set[str] = set()

    def bad(kind: str, line: int, reason: str) -> None:
        if strict:
            raise DataError(f"{path}:{line}: {reason}")
        out.bad[kind] += 1
        if len(out.examples) < 5:
            out.examples.append(f"{path}:{line}: {reason}")

    for line, row in rows:
        item, raw = row["item_id"], row["score"]
        if not item:
            bad("empty_id", line, "empty item_id")
            continue
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not math.isfinite(score) or not RATING_RANGE[0] <= score <= RATING_RANGE[1]:
            bad("bad_score", line, f"score {raw!r} is not a number in [1, 5]")
            continue
        if item in out.scores and out.scores[item] != score:
            bad("conflicting_duplicate", line, f"item {item!r} scored twice with different scores")
            conflicting.add(item)
            continue
        out.scores[item] = score
    for item in conflicting:  # neither score can be trusted
        out.scores.pop(item, None)
    return out


def blend_teacher(table: pa.Table, teacher: TeacherScores, alpha: float) -> tuple[pa.Table, dict[str, int]]:
    """`table` with `average_rating` blended toward the teacher's score where it has one; returns the counts
    {"teacher_scored": n, "teacher_fallback_true_label": n}."""
    ids = table.column("parent_asin").to_pylist()
    truth = table.column("average_rating").to_numpy(zero_copy_only=False).astype(np.float64)
    soft = np.array([teacher.scores.get(i, math.nan) for i in ids], dtype=np.float64)
    has = np.isfinite(soft)
    blended = np.where(has, (1.0 - alpha) * truth + alpha * np.nan_to_num(soft), truth)
    index = table.column_names.index("average_rating")
    table = table.set_column(index, "average_rating", pa.array(blended, pa.float32()))
    return table, {"teacher_scored": int(has.sum()), "teacher_fallback_true_label": int((~has).sum())}


def apply_teacher(table: pa.Table, path: str | Path, alpha: float, *, strict: bool = False,
                  log: Callable[[str], None] = print) -> tuple[pa.Table, dict[str, Any]]:
    """Read the teacher's scores and blend them into the train rows, logging what was used and skipped."""
    teacher = read_teacher_scores(path, strict=strict)
    table, counts = blend_teacher(table, teacher, alpha)
    stats: dict[str, Any] = {"teacher": str(path), "alpha": alpha, **counts,
                             "teacher_bad_rows": dict(teacher.bad)}
    log(f"distillation from {path} (alpha {alpha}): {counts['teacher_scored']} train items blended with the "
        f"teacher's score, {counts['teacher_fallback_true_label']} not scored by it keep their true label"
        + (f"; {sum(teacher.bad.values())} bad teacher rows skipped ({dict(teacher.bad)}), e.g. "
           f"{teacher.examples[0]}" if teacher.bad else ""))
    return table, stats
