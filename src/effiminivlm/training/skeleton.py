"""The steps every trainer shares, and the one place that decides which trainer a recipe runs.

Why one module: the fine-tuning loop (`training.loop.train`) and the probe (`training.probe.train_probe`)
read the same splits, weight the same train rows and publish the same model folder; written twice, the two
drifted (one logged rows without a rating count, the other did not). And "is this a probe run?" was asked
in several commands with slightly different words; `is_probe` is now the only question, and
`training.trainer.run_training` the only dispatch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import DataError
from effiminivlm.evaluation.conformal import fit_conformal, save_conformal
from effiminivlm.files import replace_dir
from effiminivlm.training.rundir import MODEL_TMP
from effiminivlm.training.weights import fill_missing_rating_number

if TYPE_CHECKING:
    from effiminivlm.config import Recipe, TrainCfg


def is_probe(recipe: Recipe) -> bool:
    """Whether `recipe` fits only a head on frozen towers' cached features (`train.probe: ridge | head`,
    the hybrid included) rather than fine-tuning the model."""
    return recipe.train.probe != "none"


def read_train_val(data_dir: str | Path) -> tuple[pa.Table, pa.Table]:
    """The prepared train and val splits; both must hold rows (val chooses the model)."""
    train_rows, val_rows = read_prepared(data_dir, "train"), read_prepared(data_dir, "val")
    if train_rows.num_rows == 0 or val_rows.num_rows == 0:
        raise DataError(f"{data_dir}: training needs non-empty train and val splits "
                        f"(train {train_rows.num_rows}, val {val_rows.num_rows})")
    return train_rows, val_rows


def weighted_train_rows(rows: pa.Table, tc: TrainCfg, log: Callable[[str], None] = print
                        ) -> tuple[pa.Table, dict[str, Any]]:
    """Train rows with every rating count filled as `train.missing_rating_number` says (mu over the TRAIN
    split's known counts: training.weights), and one line saying what was done to rows without one."""
    rows, weighting = fill_missing_rating_number(rows, tc.missing_rating_number)
    if weighting["missing"]:
        how = ("dropped" if weighting["dropped"] else
               f"weight {weighting['weight']:.3f} (count {weighting['filled_with']:g})")
        log(f"{weighting['missing']} of {weighting['rows']} train rows lack rating_number: {how} "
            f"(train.missing_rating_number={tc.missing_rating_number})")
    return rows, weighting


def publish_model(out: Path, model: Any, tokenizer: Any, val_pred: Any = None,
                  val_target: Any = None) -> Path:
    """Write the model folder next to `out/model`, with conformal intervals from validation when the
    predictions are given (ratings; a multi-label head has none), then swap it in whole: a crash leaves the
    previous model or the new one, never half of either (training.rundir recovers the swap)."""
    tmp = out / MODEL_TMP
    model.save_pretrained(tmp, tokenizer=tokenizer)
    if val_pred is not None:
        save_conformal(tmp, fit_conformal(val_pred, val_target))
    replace_dir(tmp, out / "model")
    return out / "model"
