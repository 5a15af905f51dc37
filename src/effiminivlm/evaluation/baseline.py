"""The words-only baseline beside every evaluation: TF-IDF + ridge fit on the same train rows as the model.

Why: on small real catalogs a model's PLCC means little without a bag of words beside it (docs/realdata.md:
on 5,773 Fashion items it beat every tower-based recipe). `train`, `train --kfold` and `evaluate` print
`model 0.250 | words only 0.236`, so a user always sees what the model adds. The baseline is a fair one:
the hybrid probe's own lexical block (`data.lexical`, same vectorizers), the same rating-count sample
weights, alpha by the same exact leave-one-out MSE (`evaluation.dual_ridge`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from effiminivlm.data.lexical import LexicalFeatures, LexicalSettings
from effiminivlm.data.prepare import read_prepared
from effiminivlm.data.text import table_texts
from effiminivlm.errors import DataError
from effiminivlm.evaluation.dual_ridge import DualRidge, fit_dual_ridge
from effiminivlm.evaluation.metrics import metric_group, rating_number_key

__all__ = ["add_words_only", "baseline_line", "fit_words_only", "words_only", "words_only_groups",
           "words_only_split"]
SCORE_RANGE = (1.0, 5.0)


def rating_count_weights(table: pa.Table) -> np.ndarray:
    """The paper's sample weights log(1 + r) / mu, rows without a count at the median (the probe's
    defaults, `training.weights`); all ones if no row has a count."""
    counts = [c for c in table.column("rating_number").to_pylist()]
    known = np.array([math.log1p(c) for c in counts if c is not None], dtype=np.float64)
    if known.size == 0 or known.mean() <= 0:
        return np.ones(len(counts))
    fill = float(np.median(known))
    w = np.array([math.log1p(c) if c is not None else fill for c in counts]) / known.mean()
    return np.minimum(w, 5.0) if w.any() else np.ones(len(counts))


def fit_words_only(train_texts: Sequence[str], y: np.ndarray, w: np.ndarray,
                   settings: LexicalSettings | None = None) -> tuple[LexicalFeatures, DualRidge]:
    """(the vectorizers, the ridge) of TF-IDF + ridge on the train rows: vocabulary and idf from the train
    texts only, the sample weights `w` (plain least squares where none is usable), alpha by exact
    leave-one-out MSE. The one fit behind the baseline and the fine-tuning offset (`training.offset`)."""
    lex = LexicalFeatures(settings).fit(train_texts)
    return lex, fit_dual_ridge(lex.transform(train_texts), y, w if w.any() else np.ones_like(y))


def words_only(train_texts: Sequence[str], y: np.ndarray, w: np.ndarray, eval_texts: Sequence[str],
               settings: LexicalSettings | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(predictions of `eval_texts` clipped to 1-5, {"alpha", "n_terms"}) of TF-IDF + ridge on the train
    rows, alpha by leave-one-out MSE."""
    lex, fit = fit_words_only(train_texts, y, w, settings)
    pred = np.clip(fit.predict(lex.transform(eval_texts)), *SCORE_RANGE)
    return pred, {"alpha": fit.alpha, "n_terms": lex.n_terms}


def words_only_groups(train: pa.Table, evaluated: pa.Table, settings: LexicalSettings | None = None,
                      min_rating_number: int = 10) -> dict[str, Any]:
    """The baseline's metric groups on `evaluated`, fit on `train` (weights from its rating counts):
    `words_only` (every item) and `words_only_<rating_number_ge_K>`, ready to sit beside the model's."""
    y = train.column("average_rating").to_numpy().astype(np.float64)
    pred, _ = words_only(table_texts(train), y, rating_count_weights(train), table_texts(evaluated), settings)
    target = evaluated.column("average_rating").to_numpy().astype(np.float64)
    counts = np.array([0 if c is None else c for c in evaluated.column("rating_number").to_pylist()])
    well = counts >= min_rating_number
    out = {"words_only": metric_group(pred, target)}
    if well.sum() >= 2:
        out[f"words_only_{rating_number_key(min_rating_number)}"] = metric_group(pred[well], target[well])
    return out


def add_words_only(metrics: dict[str, Any], data_dir: str | Path, evaluated: pa.Table,
                   log: Callable[[str], None] | None = None, min_rating_number: int = 10,
                   settings: LexicalSettings | None = None) -> None:
    """Put the words-only groups (fit on DATA's train split) into `metrics` and print the comparison line;
    nothing when DATA has no train split (a LoViF input, unrated listings) or no usable terms."""
    train = read_prepared(data_dir, "train")
    if train.num_rows < 2 or any(v is None for v in evaluated.column("average_rating").to_pylist()):
        return
    try:
        metrics.update(words_only_groups(train, evaluated, settings, min_rating_number))
    except DataError as e:
        if log is not None:
            log(f"words-only baseline skipped: {e}")
        return
    if log is not None:
        log(baseline_line(metrics["overall"]["plcc"], metrics["words_only"]["plcc"]))


def words_only_split(data_dir: str | Path, split: str = "val", settings: LexicalSettings | None = None
                     ) -> dict[str, Any]:
    """The baseline's groups on DATA's `split`, fit on its train split (`train` reports it on val)."""
    return words_only_groups(read_prepared(data_dir, "train"), read_prepared(data_dir, split), settings)


def baseline_line(model_plcc: float, words_plcc: float, what: str = "PLCC") -> str:
    """`model 0.250 | words only 0.236 (PLCC)`: what the model adds over a bag of words."""
    return f"model {model_plcc:.3f} | words only {words_plcc:.3f} ({what})"
