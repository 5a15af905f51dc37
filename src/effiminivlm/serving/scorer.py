"""One scoring API: a saved model folder -> product scores (pyiqa-style `create_scorer`).

Python users, `effiminivlm evaluate`, `effiminivlm predict` and the runtime benchmark all score through
`Scorer`, so a score is the same number whichever door it came through. Canonical inference: fixed image
size, fixed text truncation, one forward pass, no test-time augmentation; scores are clipped to [1, 5].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader

from effiminivlm.data.images import ImageStore
from effiminivlm.data.listing import LISTING_KEYS, listing_json
from effiminivlm.data.text import clean_text
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.evaluation.conformal import intervals, load_conformal
from effiminivlm.inference import (
    SCORE_RANGE,
    InferenceResult,
    fast_loading,
    image_mode,
    make_loader,
    run_inference,
)
from effiminivlm.models.factory import load_model
from effiminivlm.models.optimize import optimize_for_inference
from effiminivlm.runtime import (
    default_num_workers,
    resolve_device,
    resolve_precision,
    scoring_threads,
    torch_threads,
)


def check_rates(model: torch.nn.Module, model_dir: str | Path) -> None:
    """Refuse, in one line, a model that does not predict ratings: a label head's logits are no rating to
    clip, and a submission of them would look valid."""
    if getattr(model, "task", "rating") != "rating":
        raise EffiMiniVLMError(f"{model_dir} is a {model.task} model (model.task): it scores "
                               "labels, not ratings; use `effiminivlm evaluate` for its mAP / F1")


class Scorer:
    """Scores products with a trained EffiMiniVLM. `images`: "first" (main image) or "mean" (the mean of
    the item's image features; still one forward pass per batch).

    Below fp32 (the default "auto" is bf16 on a CPU) scoring takes the fast path: `runner` is the model
    with bf16 weights and channels-last convolutions (`models.optimize`), batches are length-sorted with
    bucketed padding and JPEGs are draft-decoded (`inference.make_loader`); scores come back in input order.
    `precision="fp32"` keeps the exact path (fp32 weights, full decode, rows batched in input order).
    `model` stays the unmodified fp32 model (what profiles and reports describe)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, device: str | None = None,
                 precision: str = "auto", images: str = "first", batch_size: int = 64,
                 num_workers: int = 0) -> None:
        self.images = image_mode(model, images)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.fast = self.precision != "fp32"
        self.num_workers = default_num_workers(num_workers)
        # the fast path's model threads: the cores the loader workers leave (OpenVINO takes them at build)
        self.threads = scoring_threads(self.num_workers, self.device) if self.fast else None
        with torch_threads(self.threads):
            self.runner = optimize_for_inference(self.model, self.device, self.precision)  # fp32: the model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = model.cfg.input.max_length
        self.conformal: dict[str, Any] | None = None  # conformal.json of the model folder, if it has one
        self.model_dir: Path | None = None  # the folder it was loaded from (its stored cost.json)
        self.source = "the model"  # what error messages call it: the model folder, once loaded from one

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **kwargs: Any) -> Scorer:
        """Load a folder written by `save_pretrained` (offline)."""
        model, tokenizer = load_model(model_dir)
        check_rates(model, model_dir)
        scorer = cls(model, tokenizer, **kwargs)
        scorer.conformal = load_conformal(model_dir)
        scorer.model_dir = Path(model_dir)
        scorer.source = str(model_dir)
        return scorer

    @property
    def cost(self) -> tuple[float, float]:
        """(params in M, canonical FLOPs in G) by the protocol's rules, stored in the folder after the first
        count (`protocol.cost`); `serving.lean.LeanScorer.cost` is the same pair, read without torch."""
        from effiminivlm.protocol.cost import stored_profile

        prof = stored_profile(self.model, self.model_dir)
        return prof.params_m, prof.flops_g

    def intervals(self, scores: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{"80": (low, high), "90": ...} around `scores` (the model's split-conformal intervals, fitted on
        its validation split); {} for a model saved without them."""
        return intervals(scores, self.conformal) if self.conformal is not None else {}

    def loader(self, table: pa.Table, store: ImageStore | None = None, pad_to_max: bool = False,
               decoded: Sequence[Sequence[Image.Image] | None] | None = None) -> DataLoader:
        """A DataLoader of collated batches over `table` (prepared or LoViF schema). Text is padded to the
        longest in the batch, or with `pad_to_max` to max_length (the protocol's canonical input).
        `decoded`: per-row images already in memory (uploads), used instead of the row's references."""
        return make_loader(self.model, self.tokenizer, table, store, images=self.images,
                           batch_size=self.batch_size, num_workers=self.num_workers, pad_to_max=pad_to_max,
                           decoded=decoded, **fast_loading(self.fast, self.num_workers))

    def score_table(self, table: pa.Table, store: ImageStore | None = None, progress: bool = True,
                    decoded: Sequence[Sequence[Image.Image] | None] | None = None) -> InferenceResult:
        """Predictions (clipped to [1, 5]) for every row of `table`, in row order."""
        with torch_threads(self.threads):
            res = run_inference(self.runner, self.loader(table, store, decoded=decoded), self.device,
                                self.precision, progress=progress, desc="score")
        res.pred = np.clip(res.pred, *SCORE_RANGE)
        return res

    def score(self, products: Sequence[dict[str, Any]], progress: bool = False) -> np.ndarray:
        """Scores for plain dicts with `title`, `features`, `description`, `category` (or `main_category`) and
        optional `images` (list of local paths / file:// URLs / fetched URLs)."""
        return self.score_table(products_table(products), progress=progress).pred


#: How far a score may move when its item is scored in another batch (docs/ROBUSTNESS.md). fp32: float32
#: rounding only (kernels split their sums by the batch's shape; measured up to 5e-7 on a 1-5 scale). The
#: fast path (bf16, OpenVINO): 1.7e-4 on random-init `offline` towers, up to 0.005 with trained weights
#: (benchmarks/bench_parity.py, docs/ROBUSTNESS.md).
FP32_BATCH_TOLERANCE = 1e-5
FAST_BATCH_TOLERANCE = 0.01


def products_table(products: Sequence[dict[str, Any]]) -> pa.Table:
    """Plain product dicts -> a table in the prepared schema (text cleaned as `prepare` does)."""
    def text(value: Any) -> str:
        if isinstance(value, list | tuple):
            value = " ".join(str(v) for v in value)
        return clean_text(str(value or ""))

    rows = [{
        "parent_asin": str(p.get("parent_asin", p.get("item_id", i))),
        "category": text(p.get("category", p.get("main_category", ""))),
        "title": text(p.get("title")), "features": text(p.get("features")),
        "description": text(p.get("description")),
        "images": [str(r) for r in (p.get("images") or [])],
        # the cold-start listing fields (store, price, ...) a hybrid probe reads; null when none is given
        "listing": listing_json(p) if any(p.get(k) is not None for k in LISTING_KEYS) else None,
    } for i, p in enumerate(products)]
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("parent_asin", pa.string()), ("category", pa.string()), ("title", pa.string()),
        ("features", pa.string()), ("description", pa.string()), ("images", pa.list_(pa.string())),
        ("listing", pa.string())]))


def create_scorer(model_dir: str | Path, **kwargs: Any) -> Scorer:
    """The uniform entry point: `create_scorer("runs/x/model").score([...])`."""
    return Scorer.from_pretrained(model_dir, **kwargs)
