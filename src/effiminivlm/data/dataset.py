"""Prepared rows -> model inputs: a torch Dataset and a collate function that tokenises the batch.

Why here and not in training: evaluation, prediction and the runtime benchmark read products exactly the way
training does (same text template, same image choice, same preprocessing), or a model is scored on inputs it
never saw. Images are decoded and text is tokenised inside DataLoader workers; every sample carries the
status of its image so the main process can count fallbacks ("no image", decode errors) across workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
from PIL import Image

from effiminivlm.data.images import ImageStore
from effiminivlm.data.text import TEXT_COLUMNS, product_text

#: a training-only column: an additive term of the model's output per row (`training.offset` writes the
#: lexical block's leave-one-out prediction there); prepared datasets never hold it
OFFSET_COLUMN = "offset"


def rating_weight_mu(rating_numbers: Sequence[int] | Any) -> float:
    """mu = mean(log(1 + r)) over the TRAIN split: the normaliser of the paper's loss weights."""
    t = torch.as_tensor(list(rating_numbers) if not torch.is_tensor(rating_numbers) else rating_numbers,
                        dtype=torch.float64)
    if t.numel() == 0:
        raise ValueError("cannot compute the loss-weight normaliser mu of an empty training split")
    mu = float(torch.log1p(t.clamp(min=0)).mean())
    return mu if mu > 0 else 1.0  # every item unrated: all weights 0/1 = 0 would stop learning; use 1


@dataclass
class Sample:
    """One product, ready for collate."""

    item_id: str
    category: str
    text: str
    images: list[torch.Tensor]  # 0 (no usable image), 1 ("first") or several ("mean")
    image_status: str  # ok | fallback (a later image was used) | no_ref | unresolved | <load failure reason>
    target: float
    rating_number: float
    weight: float = 1.0  # the loss weight of the item (`sample_weight` column; 1 when absent)
    fields: dict[str, str] = field(default_factory=dict)  # the text columns (raw), listing
    n_refs: int = 0  # image references the row lists (a cold-start side feature)
    categories: list[str] = field(default_factory=list)  # the optional `categories` column (multi-label)
    offset: float | None = None  # the optional `offset` column (training only: training.offset)


class ProductDataset(torch.utils.data.Dataset[Sample]):
    """Random access over a prepared (or LoViF) Arrow table.

    `images="first"` uses the first reference that resolves and decodes (the main image: MAIN variant first);
    `"mean"` loads up to `max_images` usable images (the model averages their features); `"none"` skips images
    (text-only models never decode a file).

    `decoded` (one list per row, or None): images already in memory (a service's uploads, decoded with
    `data.images.decode_image_bytes`); a row with a non-empty list uses those, in order, instead of its
    references, through the same transform and the same first/mean rule, so no upload becomes a temp file.

    `draft` (pixels, the fast path): JPEG files are decoded at a reduced DCT scale whose sides stay >= it
    (`load_image_with_reason(draft=...)`); None decodes at full size.
    """

    def __init__(self, table: pa.Table, transform: Callable[[Image.Image], torch.Tensor] | None,
                 store: ImageStore | None = None, images: str = "first", max_images: int = 8,
                 decoded: Sequence[Sequence[Image.Image] | None] | None = None,
                 draft: int | None = None) -> None:
        if images not in ("first", "mean", "none"):
            raise ValueError(f"images must be first, mean or none, got {images!r}")
        if images != "none" and transform is None:
            raise ValueError("an image transform is required unless images='none'")
        missing = [c for c in ("parent_asin", *TEXT_COLUMNS, "images") if c not in table.column_names]
        if missing:
            raise ValueError(f"table lacks column(s) {', '.join(missing)}")
        self.table = table.combine_chunks()
        self.n = self.table.num_rows
        self.transform = transform
        self.store = store if store is not None else ImageStore(None)
        self.mode = images
        self.max_images = max_images
        if decoded is not None and len(decoded) != self.n:
            raise ValueError(f"decoded has {len(decoded)} entries for {self.n} rows")
        self.decoded = decoded
        self.draft = draft
        self._cols = {c: self.table.column(c) for c in ("parent_asin", *TEXT_COLUMNS, "images")}
        names = set(self.table.column_names)
        self._target = self.table.column("average_rating") if "average_rating" in names else None
        self._count = self.table.column("rating_number") if "rating_number" in names else None
        self._weight = self.table.column("sample_weight") if "sample_weight" in names else None
        self._categories = self.table.column("categories") if "categories" in names else None
        self._listing = self.table.column("listing") if "listing" in names else None  # data.listing
        self._offset = self.table.column(OFFSET_COLUMN) if OFFSET_COLUMN in names else None

    def __len__(self) -> int:
        return self.n

    def text(self, i: int) -> str:
        """The model's text for row i (the paper's template)."""
        return product_text(*(self._cols[c][i].as_py() or "" for c in TEXT_COLUMNS))

    def _load_images(self, refs: list[str]) -> tuple[list[torch.Tensor], str]:
        return self.store.load_images(refs, self.mode, self.transform,  # type: ignore[arg-type]
                                      self.max_images, self.draft)

    def _decoded_images(self, imgs: Sequence[Image.Image]) -> tuple[list[torch.Tensor], str]:
        if self.mode == "none":
            return [], "skipped"
        keep = imgs[:1] if self.mode == "first" else imgs[:self.max_images]
        return [self.transform(img) for img in keep], "ok"  # type: ignore[misc]

    def __getitem__(self, i: int) -> Sample:
        in_memory = self.decoded[i] if self.decoded is not None else None
        refs = self._cols["images"][i].as_py() or []
        if in_memory:
            images, status = self._decoded_images(in_memory)
        else:
            images, status = self._load_images(refs)
        target = self._target[i].as_py() if self._target is not None else None
        count = self._count[i].as_py() if self._count is not None else None
        weight = self._weight[i].as_py() if self._weight is not None else None
        fields = {c: self._cols[c][i].as_py() or "" for c in TEXT_COLUMNS}
        if self._listing is not None:
            fields["listing"] = self._listing[i].as_py() or ""
        return Sample(item_id=str(self._cols["parent_asin"][i].as_py()),
                      category=self._cols["category"][i].as_py() or "",
                      text=self.text(i), images=images, image_status=status,
                      target=math.nan if target is None else float(target),
                      rating_number=0.0 if count is None else float(count),
                      weight=1.0 if weight is None else float(weight), fields=fields,
                      n_refs=len(in_memory or refs),
                      categories=(self._categories[i].as_py() or []) if self._categories is not None else [],
                      offset=self._offset[i].as_py() if self._offset is not None else None)


class Collator:
    """Tokenises a batch (pad to the longest, truncate at max_length) and stacks its images.

    Returns a dict with `input_ids`, `attention_mask`, `pixel_values` ([B,3,H,W], each item's first usable
    image, zeros where `has_image` is False; None when no item has one), `has_image` [B], `target` [B],
    `rating_number` [B], `sample_weight` [B] (the loss weight), the python lists `item_id`, `category`,
    `image_status`, and, when some item carries several images ("mean" mode), `all_pixel_values`
    [N_img,3,H,W] with `image_index` [N_img] (owner item).
    """

    def __init__(self, tokenizer: Any, max_length: int, pad_to_max: bool = False) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_max = pad_to_max

    def __call__(self, batch: list[Sample]) -> dict[str, Any]:
        enc = self.tokenizer([s.text for s in batch], padding="max_length" if self.pad_to_max else "longest",
                             truncation=True, max_length=self.max_length, return_tensors="pt")
        first = next((s.images[0] for s in batch if s.images), None)
        out: dict[str, Any] = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": None if first is None else torch.stack(
                [s.images[0] if s.images else torch.zeros_like(first) for s in batch]),
            "has_image": torch.tensor([bool(s.images) for s in batch]),
            "target": torch.tensor([s.target for s in batch], dtype=torch.float32),
            "rating_number": torch.tensor([s.rating_number for s in batch], dtype=torch.float32),
            "sample_weight": torch.tensor([s.weight for s in batch], dtype=torch.float32),
            "item_id": [s.item_id for s in batch],
            "category": [s.category for s in batch],
            "image_status": [s.image_status for s in batch],
        }
        if any(len(s.images) > 1 for s in batch):
            out["all_pixel_values"] = torch.stack([img for s in batch for img in s.images])
            out["image_index"] = torch.tensor([i for i, s in enumerate(batch) for _ in s.images])
        return out


def mean_token_length(dataset: ProductDataset, tokenizer: Any, max_length: int, limit: int = 2000
                      ) -> tuple[float, int]:
    """(mean token count after truncation, rows read) over up to ~`limit` evenly spaced rows: the typical
    text cost (the mean is stable long before every row of a million-item dataset is tokenised)."""
    n = len(dataset)
    if n == 0:
        return float("nan"), 0
    step = max(1, n // limit)
    texts = [dataset.text(i) for i in range(0, n, step)]
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return float(sum(len(ids) for ids in enc["input_ids"]) / len(texts)), len(texts)
