"""Fine-tuning on top of the words-only ridge (`train.lexical_offset`).

    rating = tfidf(text) . w_lex + head([image; text] tower features)

Why: on small real catalogs a bag of word and char n-grams (the words-only baseline, the hybrid's lexical
block) fits brand and product-type words that a sentence embedding compresses away, and fine-tuning alone
does not catch up on a few thousand items (docs/realdata.md). Here the lexical block is fit first, in closed
form and exactly as the hybrid and the baseline fit it (`data.lexical` on the train texts, the recipe's
sample weights, alpha by exact leave-one-out MSE: `evaluation.dual_ridge`), then frozen; the towers and the
MLP head are fine-tuned on what it leaves.

What a train row adds to the head's output is the ridge's leave-one-out prediction of that row (minus the
intercept, which the head's bias takes over): the in-sample prediction would already contain the row's own
rating, leaving the towers no residual to learn on train that exists on new items. Val and test rows (and
every later scoring) use the ridge's prediction, computed by the model's processor from the saved
vocabulary. The model is a `models.hybrid.HybridProbe` (lexical block on, listing block off) with the
recipe's towers and head, so `predict`, `evaluate` and `serve` score it like any hybrid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from effiminivlm.config import Recipe
from effiminivlm.data.dataset import OFFSET_COLUMN
from effiminivlm.data.lexical import LexicalSettings
from effiminivlm.data.text import table_texts
from effiminivlm.errors import ConfigError
from effiminivlm.evaluation.baseline import fit_words_only
from effiminivlm.evaluation.metrics import compute_metrics
from effiminivlm.models.hybrid import HybridProbe, hybrid_from
from effiminivlm.training.weights import WEIGHT_COLUMN

__all__ = ["output_start", "with_lexical_offset"]


def with_lexical_offset(model: torch.nn.Module, recipe: Recipe, train_rows: pa.Table,
                        log: Callable[[str], None] = print) -> tuple[HybridProbe, pa.Table, dict[str, Any]]:
    """(the HybridProbe to fine-tune: `model`'s towers and head + the fitted, frozen lexical block; the train
    rows with their `offset` column; the run summary's `lexical_offset` fields). `train_rows` must already
    carry the loss's `sample_weight` column (`train_rows.mix_train_rows`)."""
    arch = getattr(getattr(model, "cfg", None), "arch", None)
    if arch != "effiminivlm":
        raise ConfigError(f"train.lexical_offset fine-tunes an EffiMiniVLM (model.arch effiminivlm), "
                          f"not {arch}")
    y = train_rows.column("average_rating").to_numpy().astype(np.float64)
    w = train_rows.column(WEIGHT_COLUMN).to_numpy().astype(np.float64)
    lex, fit = fit_words_only(table_texts(train_rows), y, w, LexicalSettings.from_cfg(recipe.train.lexical))
    hybrid = hybrid_from(model, lex, None)
    with torch.no_grad():
        hybrid.lexical_block.weight.copy_(torch.as_tensor(fit.coef, dtype=torch.float32))
    offset = fit.loo - fit.intercept  # the head's bias carries the intercept (`output_start`)
    rows = train_rows.append_column(OFFSET_COLUMN, pa.array(offset, pa.float32()))
    stats = {"terms": lex.n_terms, "alpha": fit.alpha, "intercept": fit.intercept,
             "train_loo_plcc": compute_metrics(fit.loo, y)["overall"]["plcc"]}
    log(f"lexical offset: {lex.n_terms} TF-IDF terms, alpha {fit.alpha:g}, leave-one-out PLCC on train "
        f"{stats['train_loo_plcc']:.4f}; the towers learn the rest")
    return hybrid, rows, stats


def output_start(train_rows: pa.Table) -> float:
    """Where the head's output starts: the train-split mean rating, less the mean lexical offset when the
    rows carry one (the head then starts at the ridge's intercept and learns only the residual)."""
    start = float(np.mean(train_rows.column("average_rating").to_numpy()))
    if OFFSET_COLUMN in train_rows.column_names:
        start -= float(np.mean(train_rows.column(OFFSET_COLUMN).to_numpy()))
    return start
