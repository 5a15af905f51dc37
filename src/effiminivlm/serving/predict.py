"""`effiminivlm predict`: score products from any of the supported inputs and write `submission.csv`.

Inputs are detected and read by `data.inputs.read_inputs` (a prepared folder, a LoViF input.csv, or
item-metadata files).
The submission has the LoViF columns `item_id, score, params, flops` (params in M, FLOPs in G, counted by the
protocol's rules), scores clipped to [1, 5]. It is written to a temporary file and renamed, so a crash never
leaves half a submission.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from effiminivlm.data.inputs import read_inputs
from effiminivlm.errors import DataError
from effiminivlm.files import MAX_LINE_BYTES, atomic_write_text
from effiminivlm.serving.lean import LeanScorer

if TYPE_CHECKING:
    from effiminivlm.serving.scorer import Scorer


def check_finite(scores: Any, source: str) -> None:
    """A one-line DataError if any score is NaN or infinite: a diverged model's output is never written as a
    score (a NaN submission row, a service answer); `evaluate` refuses the same model the same way."""
    arr = np.asarray(scores, dtype=np.float64)
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise non_finite_error(bad, arr.size, source)


def non_finite_error(bad: int, total: int, source: str) -> DataError:
    """The one line for `bad` of `total` non-finite predictions of the model `source`."""
    return DataError(f"model {source}: {bad} of {total} predictions are not finite (NaN or inf); nothing "
                     "written (retrain or check the weights)")


def _scorer(model_dir: str | Path, **kwargs: Any) -> Scorer | LeanScorer:
    """The torch-free scorer when the folder's fast path was recorded on this machine (`serving.lean`),
    else the PyTorch one (which records it for the next run)."""
    lean = LeanScorer.load(model_dir, **kwargs)
    if lean is not None:
        return lean
    from effiminivlm.serving.plan import record_plan
    from effiminivlm.serving.scorer import Scorer

    scorer = Scorer.from_pretrained(model_dir, **kwargs)
    record_plan(scorer)
    return scorer


def submission_text(item_ids: list[str], scores: Any, params_m: float, flops_g: float,
                    bounds: dict[str, tuple[Any, Any]] | None = None,
                    image_status: list[str] | None = None) -> str:
    """The submission CSV as text: `item_id, score, params, flops` (also what the service returns);
    `bounds` ({"80": (low, high), ...}) adds the columns `low_80, high_80, ...` and `image_status` (the
    service's CSV endpoint) a last column `image_status` AFTER the LoViF columns, which stay exactly as
    they are."""
    bounds = bounds or {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["item_id", "score", "params", "flops",
                *(f"{side}_{k}" for k in bounds for side in ("low", "high")),
                *(["image_status"] if image_status is not None else [])])
    for i, (item, score) in enumerate(zip(item_ids, scores, strict=True)):
        extra = [f"{float(b[j][i]):.8f}" for b in bounds.values() for j in (0, 1)]
        status = [image_status[i]] if image_status is not None else []
        w.writerow([*submission_row(item, score, params_m, flops_g), *extra, *status])
    return buf.getvalue()


def submission_row(item_id: str, score: float, params_m: float, flops_g: float) -> list[str]:
    """One submission line's fields: the format every engine writes (`--engine ray` streams them)."""
    return [item_id, f"{float(score):.8f}", f"{params_m:.4f}", f"{flops_g:.4f}"]


def write_submission(path: str | Path, item_ids: list[str], scores: Any, params_m: float, flops_g: float,
                     bounds: dict[str, tuple[Any, Any]] | None = None) -> Path:
    """`item_id, score, params, flops` (+ interval columns) rows, atomically."""
    return atomic_write_text(path, submission_text(item_ids, scores, params_m, flops_g, bounds))


def predict(model_dir: str | Path, inputs: list[str], out: str | Path, *, split: str | None = None,
            images_dir: str | None = None, images: str = "first", batch_size: int = 64, num_workers: int = 0,
            device: str | None = None, precision: str = "auto", strict: bool = False,
            progress: bool = True, with_intervals: bool = False, max_line_bytes: int = MAX_LINE_BYTES
            ) -> dict[str, Any]:
    """Score `inputs` with `model_dir`; write the submission; return a summary of what happened.

    With `with_intervals` and a model that carries conformal.json, each row also gets its intervals.
    """
    src = read_inputs(inputs, split=split, images_dir=images_dir, strict=strict,
                      max_line_bytes=max_line_bytes)
    if src.table.num_rows == 0:
        raise DataError(f"no products to score in {', '.join(inputs)} (skipped: {src.skipped})")
    scorer = _scorer(model_dir, device=device, precision=precision, images=images, batch_size=batch_size,
                     num_workers=num_workers)
    res = scorer.score_table(src.table, src.store, progress=progress)
    check_finite(res.pred, scorer.source)
    params_m, flops_g = scorer.cost
    bounds = scorer.intervals(res.pred) if with_intervals else {}
    path = write_submission(out, res.item_id, res.pred, params_m, flops_g, bounds)
    return {"submission": str(path), "items": len(res.item_id), "input_kind": src.kind,
            "skipped_input": src.skipped, "image_status": dict(sorted(res.image_status.items())),
            "params_m": params_m, "flops_g": flops_g, "images": scorer.images,
            "intervals": sorted(bounds, key=float),
            "seconds": round(res.seconds, 3)}
