"""Batched inference over a DataLoader of collated products: the one prediction loop.

Why shared: validation during training, `evaluate`, `predict` and the runtime benchmark must run the model
the same way (same precision, same image handling), so their numbers agree.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from effiminivlm.data.loader import (
    LengthSortedBatches,
    RowCollator,
    RowDataset,
    restore_order,
    text_lengths,
    with_fetch_threads,
)
from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.runtime import autocast
from effiminivlm.runtime import fetch_threads as decode_threads  # make_loader's parameter has the name


@dataclass
class InferenceResult:
    """Predictions with the identifiers and targets of the rows they belong to."""

    item_id: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    pred: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    target: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    rating_number: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    image_status: Counter[str] = field(default_factory=Counter)
    item_image_status: list[str] = field(default_factory=list)  # per row, in order (the service reports it)
    seconds: float = 0.0


def forward_batch(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Model output [B] (float32) for a collated batch: its tensors moved to `device`, then `model(batch)`,
    the surface every architecture shares (`models.base.RatingModel`); the model reads the keys its own
    processor wrote (e.g. "mean" mode's `all_pixel_values` + `image_index`)."""
    on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return model(on_device)


@torch.no_grad()
def run_inference(model: torch.nn.Module, loader: Any, device: torch.device, precision: str = "fp32",
                  progress: bool = True, desc: str = "predict") -> InferenceResult:
    """Predict every batch of `loader` in eval mode; returns predictions in loader order, or, when batches
    carry their input rows (`make_loader(sort_by_length=True)`), in input-row order."""
    was_training = model.training
    model.eval()
    res = InferenceResult()
    preds, targets, counts, rows = [], [], [], []
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)
    for batch in bar:
        with autocast(device, precision):
            out = forward_batch(model, batch, device)
        preds.append(out.float().cpu().numpy())
        targets.append(batch["target"].numpy())
        counts.append(batch["rating_number"].numpy())
        res.item_id.extend(batch["item_id"])
        res.category.extend(batch["category"])
        res.image_status.update(batch["image_status"])
        res.item_image_status.extend(batch["image_status"])
        if "row" in batch:
            rows.extend(batch["row"].tolist())
    res.seconds = time.perf_counter() - start
    if preds:
        res.pred = np.concatenate(preds).astype(np.float64)
        res.target = np.concatenate(targets).astype(np.float64)
        res.rating_number = np.concatenate(counts).astype(np.float64)
    if rows:
        _to_input_order(res, restore_order(rows, len(res.item_id)))
    model.train(was_training)
    return res


def _to_input_order(res: InferenceResult, where: list[int]) -> None:
    """Reorder every per-row field of `res` so row r of the input is position r (`where[r]` = its slot)."""
    res.pred, res.target, res.rating_number = res.pred[where], res.target[where], res.rating_number[where]
    res.item_id = [res.item_id[k] for k in where]
    res.category = [res.category[k] for k in where]
    res.item_image_status = [res.item_image_status[k] for k in where]


#: Every score is clipped to the rating scale (`data.schema.RATING_RANGE`) before anyone sees it.
SCORE_RANGE = RATING_RANGE


def image_mode(model: torch.nn.Module, images: str) -> str:
    """Which images feed the model: "first" (main image), "mean" (mean of the item's image features, still
    one forward pass), or "none" (text only; always for a model without an image tower)."""
    if images not in ("first", "mean", "none"):
        raise ValueError(f"images must be first, mean or none, got {images!r}")
    return images if getattr(model, "image_encoder", None) is not None else "none"


def fast_loading(fast: bool, num_workers: int) -> dict[str, Any]:
    """`make_loader`'s options for the fast path (`fast`) or the exact one: length-sorted batches, draft JPEG
    decoding, uint8 pixels and, loading in the main process, a batch's images decoded on every core. The
    scorer and `evaluate` both load this way."""
    return {"sort_by_length": fast, "draft": fast, "raw_pixels": fast,
            "fetch_threads": decode_threads(num_workers) if fast else 1}


def make_loader(model: torch.nn.Module, tokenizer: Any, table: Any, store: Any = None, *,
                images: str = "first", batch_size: int = 64, num_workers: int = 0,
                pad_to_max: bool = False, decoded: Any = None, sort_by_length: bool = False,
                draft: bool = False, raw_pixels: bool = False, fetch_threads: int = 1) -> DataLoader:
    """The canonical DataLoader of collated batches over `table` (prepared or LoViF schema), built by the
    model's own processor (`model.processor(tokenizer)`): eval transforms at the model's image size, text
    truncated at its max_length and padded to the longest in the batch, or with `pad_to_max` to max_length
    (the protocol's canonical input). Shared by every stage that predicts. `decoded`: per-row in-memory
    images (see `ProductDataset`), used instead of the row's references.

    The fast path's loading levers: `sort_by_length` batches rows of similar text length (bucketed padding;
    batches carry `"row"` and `run_inference` returns input order); `draft` decodes JPEGs straight at the
    smallest DCT scale that still covers the model's image size; `raw_pixels` ships images as uint8 (for the
    model of `models.optimize.optimize_for_inference`, which normalises them; only for models with plain
    towers, float pixels otherwise); `fetch_threads` > 1 with `num_workers=0` decodes a batch's images on
    that many threads (`data.loader.ThreadedFetch`)."""
    processor = model.processor(tokenizer)  # type: ignore[operator]  (models.base.RatingModel)
    raw = raw_pixels and bool(getattr(model, "plain_towers", False))
    ds = processor.dataset(table, store, image_mode(model, images), decoded=decoded, draft=draft,
                           raw_pixels=raw)
    collate = processor.collator(pad_to_max=pad_to_max)
    if sort_by_length and not pad_to_max:
        return DataLoader(with_fetch_threads(RowDataset(ds), fetch_threads, num_workers),
                          batch_sampler=LengthSortedBatches(text_lengths(ds), batch_size),
                          num_workers=num_workers, collate_fn=RowCollator(collate))
    return DataLoader(with_fetch_threads(ds, fetch_threads, num_workers), batch_size=batch_size,
                      shuffle=False, num_workers=num_workers, collate_fn=collate)
