"""`effiminivlm predict`: score products from any of the supported inputs and write `submission.csv`.

Inputs, detected from what is given:
  - a prepared dataset folder (has summary.json), optionally one split;
  - the LoViF 2026 test layout: an `input.csv` (images relative to `--images-dir`, default its `images/`);
  - item-metadata files (`meta_<Category>.jsonl[.gz]`, parquet shards): products need no rating to be
    scored (cold start), so unrated rows are kept; unreadable rows are counted and reported.
The submission has the LoViF columns `item_id, score, params, flops` (params in M, FLOPs in G, counted by the
protocol's rules), scores clipped to [1, 5]. It is written to a temporary file and renamed, so a crash never
leaves half a submission.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from effiminivlm.data.images import ImageStore
from effiminivlm.errors import DataError
from effiminivlm.files import atomic_write_text
from effiminivlm.serving.scorer import Scorer


@dataclass
class PredictInputs:
    """The rows to score, where their images resolve, and what reading them skipped."""

    table: pa.Table
    store: ImageStore
    kind: str
    skipped: dict[str, Any] = field(default_factory=dict)


def read_inputs(inputs: list[str], *, split: str | None = None, images_dir: str | None = None,
                strict: bool = False) -> PredictInputs:
    """Detect the input kind and read it into the prepared schema."""
    if not inputs:
        raise DataError("nothing to predict: give a prepared folder, an input.csv or metadata files")
    first = Path(inputs[0])
    if len(inputs) == 1 and first.is_dir() and (first / "summary.json").is_file():
        from effiminivlm.data.prepare import read_prepared

        store = ImageStore.for_prepared(first, images_dir)  # local refs confined to the recorded roots
        return PredictInputs(read_prepared(first, split), store, "prepared")
    if split is not None:
        raise DataError("--split applies to a prepared dataset folder only")
    if len(inputs) == 1 and first.suffix.lower() == ".csv":
        from effiminivlm.data.lovif import read_lovif

        table, stats = read_lovif(first, images_dir)
        return PredictInputs(table, ImageStore(None), "lovif", skipped=_nonzero(vars(stats)))
    from effiminivlm.data.meta import read_meta_table

    table, log = read_meta_table(inputs, require_rating=False, strict=strict)
    cache = images_dir if images_dir is not None else None
    return PredictInputs(table, ImageStore(cache), "meta", skipped=log.as_dict())


def _nonzero(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v}


def model_cost(scorer: Scorer) -> tuple[float, float]:
    """(params in M, canonical FLOPs in G) of the scorer's model, by the protocol's rules."""
    from effiminivlm.evaluation.efficiency import profile_model

    prof = profile_model(scorer.model)
    return prof.params_m, prof.flops_g


def write_submission(path: str | Path, item_ids: list[str], scores: Any, params_m: float, flops_g: float
                     ) -> Path:
    """`item_id, score, params, flops` rows, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["item_id", "score", "params", "flops"])
    for item, score in zip(item_ids, scores, strict=True):
        w.writerow([item, f"{float(score):.8f}", f"{params_m:.4f}", f"{flops_g:.4f}"])
    return atomic_write_text(path, buf.getvalue())


def predict(model_dir: str | Path, inputs: list[str], out: str | Path, *, split: str | None = None,
            images_dir: str | None = None, images: str = "first", batch_size: int = 64, num_workers: int = 0,
            device: str | None = None, precision: str = "auto", strict: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Score `inputs` with `model_dir`; write the submission; return a summary of what happened."""
    src = read_inputs(inputs, split=split, images_dir=images_dir, strict=strict)
    if src.table.num_rows == 0:
        raise DataError(f"no products to score in {', '.join(inputs)} (skipped: {src.skipped})")
    scorer = Scorer.from_pretrained(model_dir, device=device, precision=precision, images=images,
                                    batch_size=batch_size, num_workers=num_workers)
    res = scorer.score_table(src.table, src.store, progress=progress)
    params_m, flops_g = model_cost(scorer)
    path = write_submission(out, res.item_id, res.pred, params_m, flops_g)
    return {"submission": str(path), "items": len(res.item_id), "input_kind": src.kind,
            "skipped_input": src.skipped, "image_status": dict(sorted(res.image_status.items())),
            "params_m": params_m, "flops_g": flops_g, "images": scorer.images,
            "seconds": round(res.seconds, 3)}
