"""`effiminivlm evaluate`: score one split of a prepared dataset and write the report.

Metrics overall, per category and for items with rating_number >= k (where the target is trustworthy), as
JSON, a Markdown table and a predicted-vs-true hexbin plot, plus the counts of image fallbacks, so a
number in the report can always be traced to how many items really had an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from effiminivlm.data.images import ImageStore
from effiminivlm.data.labels import attach_categories
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import DataError
from effiminivlm.evaluation.baseline import add_words_only
from effiminivlm.evaluation.classification import multilabel_report, render_multilabel_markdown
from effiminivlm.evaluation.conformal import coverage_report, load_conformal, render_coverage_markdown
from effiminivlm.evaluation.metrics import compute_metrics
from effiminivlm.evaluation.report import render_markdown, write_report
from effiminivlm.files import atomic_write_text, write_json
from effiminivlm.inference import SCORE_RANGE, fast_loading, image_mode, make_loader, run_inference
from effiminivlm.models.factory import load_model
from effiminivlm.models.optimize import optimize_for_inference
from effiminivlm.runtime import (
    default_num_workers,
    resolve_device,
    resolve_precision,
    scoring_threads,
    torch_threads,
)


def evaluate(model_dir: str | Path, data_dir: str | Path, *, split: str = "test",
             out_dir: str | Path | None = None, images_dir: str | Path | None = None, images: str = "first",
             batch_size: int = 64,
             num_workers: int = 0, device: str | None = None, precision: str = "auto",
             min_rating_number: int = 10, progress: bool = True) -> dict[str, Any]:
    """Evaluate `model_dir` on `split` of `data_dir`; returns {"metrics", "paths", "markdown"}."""
    table = read_prepared(data_dir, split)
    if table.num_rows == 0:
        raise DataError(f"{data_dir}: split {split!r} is empty")
    model, tokenizer = load_model(model_dir)
    if "categories" in model.data_columns:  # a multi-label head: its targets come from the meta files
        table = attach_categories(table, data_dir)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    mode = image_mode(model, images)
    store = ImageStore.for_prepared(data_dir, images_dir)  # local refs confined to the recorded roots
    fast = prec != "fp32"  # the fast path below fp32 (see serving.scorer.Scorer); fp32 is the exact one
    workers = default_num_workers(num_workers)
    loader = make_loader(model, tokenizer, table, store, images=mode, batch_size=batch_size,
                         num_workers=workers, **fast_loading(fast, workers))
    with torch_threads(scoring_threads(workers, dev) if fast else None):  # see serving.scorer.Scorer
        runner = optimize_for_inference(model, dev, prec)
        res = run_inference(runner, loader, dev, prec, progress=progress, desc="score")
    meta = {"model": str(model_dir), "data": str(data_dir), "split": split, "images": mode,
            "precision": prec, "device": str(dev),
            "image_status": dict(sorted(res.image_status.items())), "seconds": round(res.seconds, 3)}
    out = Path(out_dir) if out_dir is not None else Path(model_dir).parent / f"eval-{split}"
    if model.task == "multilabel":
        return _multilabel(model, res, out, meta, f"MiniViTex labels on {Path(data_dir).name} ({split})")
    res.pred = np.clip(res.pred, *SCORE_RANGE)  # the same clipping as every served score
    metrics = compute_metrics(res.pred, res.target, res.category, res.rating_number, min_rating_number)
    lines: list[str] = []  # the words-only baseline on the same split, fit on DATA's train rows
    add_words_only(metrics, data_dir, table, lines.append, min_rating_number)
    conf = load_conformal(model_dir)
    if conf is not None:  # the model's intervals: empirical coverage and width on this split
        metrics["conformal"] = coverage_report(res.pred, res.target, conf, res.rating_number,
                                               min_rating_number)
    title = f"EffiMiniVLM on {Path(data_dir).name} ({split})"
    paths = write_report(metrics, res.pred, res.target, out, title=title, meta=meta)
    markdown = render_markdown(metrics, title=title, meta=meta)
    if lines:
        markdown += "\n" + "\n".join(lines) + "\n"
    if conf is not None:
        markdown += render_coverage_markdown(metrics["conformal"])
        with paths["markdown"].open("a") as f:
            f.write(render_coverage_markdown(metrics["conformal"]))
    return {"metrics": metrics, "paths": paths, "markdown": markdown}


def _multilabel(model: Any, res: Any, out: Path, meta: dict[str, Any], title: str) -> dict[str, Any]:
    """A multi-label model's report: mAP, micro / macro / sample F1 at 0.5 and at its tuned thresholds
    (out/metrics.json + out/report.md)."""
    metrics = multilabel_report(res.target, res.pred, model.cfg.thresholds, model.cfg.labels)
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_multilabel_markdown(metrics, title)
    paths = {"json": write_json({"meta": meta, "metrics": metrics}, out / "metrics.json"),
             "markdown": atomic_write_text(out / "report.md", markdown)}
    return {"metrics": metrics, "paths": paths, "markdown": markdown}
