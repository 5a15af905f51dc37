"""`effiminivlm evaluate`: score one split of a prepared dataset and write the report.

Metrics overall, per category and for items with rating_number >= k (where the target is trustworthy), as
JSON, a Markdown table and a predicted-vs-true hexbin plot, plus the counts of image fallbacks, so a
number in the report can always be traced to how many items really had an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import DataError
from effiminivlm.evaluation.metrics import compute_metrics
from effiminivlm.evaluation.report import render_markdown, write_report
from effiminivlm.serving.scorer import Scorer


def evaluate(model_dir: str | Path, data_dir: str | Path, *, split: str = "test",
             out_dir: str | Path | None = None, images_dir: str | Path | None = None, images: str = "first",
             batch_size: int = 64,
             num_workers: int = 0, device: str | None = None, precision: str = "auto",
             min_rating_number: int = 10, progress: bool = True) -> dict[str, Any]:
    """Evaluate `model_dir` on `split` of `data_dir`; returns {"metrics", "paths", "markdown"}."""
    table = read_prepared(data_dir, split)
    if table.num_rows == 0:
        raise DataError(f"{data_dir}: split {split!r} is empty")
    scorer = Scorer.from_pretrained(model_dir, device=device, precision=precision, images=images,
                                    batch_size=batch_size, num_workers=num_workers)
    store = ImageStore.for_prepared(data_dir, images_dir)  # local refs confined to the recorded roots
    res = scorer.score_table(table, store, progress=progress)
    metrics = compute_metrics(res.pred, res.target, res.category, res.rating_number, min_rating_number)
    meta = {"model": str(model_dir), "data": str(data_dir), "split": split, "images": scorer.images,
            "precision": scorer.precision, "device": str(scorer.device),
            "image_status": dict(sorted(res.image_status.items())), "seconds": round(res.seconds, 3)}
    out = Path(out_dir) if out_dir is not None else Path(model_dir).parent / f"eval-{split}"
    title = f"EffiMiniVLM on {Path(data_dir).name} ({split})"
    paths = write_report(metrics, res.pred, res.target, out, title=title, meta=meta)
    return {"metrics": metrics, "paths": paths, "markdown": render_markdown(metrics, title=title, meta=meta)}
