"""Pseudo-labels (`effiminivlm pseudo-label`, `train --pseudo P --pseudo-weight w`).

A trained model scores items that have no rating (or, with `--include-rated`, every item: e.g. a test set
whose ratings are hidden) and writes them as a prepared dataset of training rows: `average_rating` = the
prediction (clipped to [1, 5]), `rating_number` = 0, `split` = train, plus a `confidence` column in (0, 1].

Confidence: with one model it is 1 (nothing to measure it by). With several (`--model` repeated: seeds, folds
or a soup's members) the label is their mean and the confidence comes from their agreement,
`1 / (1 + (sd / scale)^2)`, sd the standard deviation of their scores and `scale` `--agreement-scale`
(default 0.25 rating points: members 0.25 apart count half). `train` gives a pseudo row the loss weight
`train.pseudo.weight x confidence` (the rating-count weighting does not apply: the row has no ratings).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from effiminivlm.data.inputs import read_inputs
from effiminivlm.data.schema import SCHEMA
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.files import partial_dir, replace_dir, write_json
from effiminivlm.inference import SCORE_RANGE, make_loader, run_inference
from effiminivlm.models.factory import load_model
from effiminivlm.runtime import resolve_device, resolve_precision

CONFIDENCE = "confidence"


def agreement_confidence(preds: np.ndarray, scale: float = 0.25) -> np.ndarray:
    """[n] confidence of the mean of `preds` [models, n]: 1 / (1 + (sd / scale)^2); 1 with one model."""
    if preds.shape[0] < 2:
        return np.ones(preds.shape[1], dtype=np.float32)
    sd = preds.std(axis=0)
    return (1.0 / (1.0 + (sd / scale) ** 2)).astype(np.float32)


def pseudo_label(model_dirs: list[str], inputs: list[str], out: str | Path, *, split: str | None = None,
                 include_rated: bool = False, images_dir: str | None = None, images: str = "first",
                 batch_size: int = 64, device: str | None = None, precision: str = "auto",
                 agreement_scale: float = 0.25, overwrite: bool = False, strict: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the unrated items of `inputs` with the models and write them to `out`; returns the summary."""
    if not model_dirs:
        raise EffiMiniVLMError("pseudo-label needs at least one --model")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise EffiMiniVLMError(f"--out {out} exists; pass --overwrite to replace it")
        if not (out / "summary.json").is_file():
            raise EffiMiniVLMError(f"--out {out} is not a pseudo-label folder; refusing to replace it")
    data = read_inputs(inputs, split=split, images_dir=images_dir, strict=strict)
    table = data.table
    rated = np.zeros(table.num_rows, dtype=bool)
    if "average_rating" in table.column_names:
        rated = ~np.isnan(table.column("average_rating").to_numpy(zero_copy_only=False).astype(np.float64))
    todo = table if include_rated else table.filter(pa.array(~rated))
    if todo.num_rows == 0:
        raise DataError(f"{', '.join(inputs)}: no unrated item to pseudo-label ({int(rated.sum())} rated; "
                        "--include-rated scores them too)")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    preds = []
    for model_dir in model_dirs:
        model, tokenizer = load_model(model_dir)
        loader = make_loader(model, tokenizer, todo, data.store, images=images, batch_size=batch_size)
        res = run_inference(model.to(dev), loader, dev, prec, progress=progress, desc=f"label {model_dir}")
        preds.append(np.clip(res.pred, *SCORE_RANGE))
    stacked = np.stack(preds)
    confidence = agreement_confidence(stacked, agreement_scale)
    rows = _as_training_rows(todo, stacked.mean(axis=0), confidence)
    tmp = partial_dir(out)
    try:
        pq.write_table(rows, tmp / "data.parquet")
        summary = {"kind": "pseudo_labels", "models": [str(m) for m in model_dirs],
                   "inputs": [str(i) for i in inputs], "input_kind": data.kind, "split": split,
                   "include_rated": include_rated, "rows": rows.num_rows, "skipped_rated": int(rated.sum())
                   if not include_rated else 0, "agreement_scale": agreement_scale,
                   "confidence_mean": float(confidence.mean()), "input_skipped": data.skipped,
                   "image_roots": _image_roots(data.kind, data.store, inputs, images_dir)}
        write_json(summary, tmp / "summary.json")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"pseudo-labelled {rows.num_rows} items with {len(model_dirs)} model(s) "
        f"(mean confidence {summary['confidence_mean']:.3f}) -> {out}")
    return summary


def _image_roots(kind: str, store: Any, inputs: list[str], images_dir: str | None) -> list[str]:
    """The folders the rows' local image references may resolve in (summary.json `image_roots`), so that
    `train --pseudo` can read their images under the same confinement as the input's own reader."""
    if kind == "prepared":
        return [str(r) for r in store.allowed_roots or []]
    if kind == "lovif":
        return [str((Path(images_dir) if images_dir else Path(inputs[0]).parent / "images").resolve())]
    return sorted({str(Path(i).resolve().parent) for i in inputs})


def pseudo_image_roots(path: str | Path) -> list[Path]:
    """The `image_roots` recorded by `pseudo_label` in the folder's summary.json."""
    summary = json.loads((Path(path) / "summary.json").read_text(encoding="utf-8"))
    return [Path(r) for r in summary.get("image_roots") or []]


def _as_training_rows(table: pa.Table, score: np.ndarray, confidence: np.ndarray) -> pa.Table:
    """The prepared schema (split train, rating_number 0, average_rating = the label) + `confidence`."""
    n = table.num_rows
    cols: dict[str, pa.Array] = {}
    for f in SCHEMA:
        if f.name == "average_rating":
            cols[f.name] = pa.array(score, pa.float32())
        elif f.name == "rating_number":
            cols[f.name] = pa.array(np.zeros(n, dtype=np.int64))
        elif f.name == "split":
            cols[f.name] = pa.array(["train"] * n, pa.string())
        elif f.name in table.column_names:
            cols[f.name] = table.column(f.name).cast(f.type)
        elif f.name == "images":
            cols[f.name] = pa.array([[] for _ in range(n)], f.type)
        else:
            cols[f.name] = pa.array(["pseudo"] * n if f.name == "source" else [""] * n, f.type)
    cols[CONFIDENCE] = pa.array(confidence, pa.float32())
    return pa.table(cols)


def read_pseudo_rows(path: str | Path, weight: float) -> pa.Table:
    """Rows written by `pseudo_label`, in the prepared schema, with `sample_weight` = weight x confidence."""
    from effiminivlm.data.prepare import read_prepared

    folder = Path(path)
    try:
        kind = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError):
        kind = None
    if kind != "pseudo_labels":
        raise DataError(f"train.pseudo.path {folder} is not a folder written by `effiminivlm pseudo-label`")
    table = read_prepared(folder)
    if CONFIDENCE not in table.column_names:
        raise DataError(f"{folder}: the pseudo-labels lack their `{CONFIDENCE}` column")
    conf = table.column(CONFIDENCE).to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.all(np.isfinite(conf) & (conf >= 0) & (conf <= 1)):
        raise DataError(f"{folder}: `{CONFIDENCE}` must lie in [0, 1]")
    rows = table.select(SCHEMA.names).cast(SCHEMA)
    return rows.append_column("sample_weight", pa.array(weight * conf, pa.float32()))
