"""A model's own preprocessing: prepared (or LoViF) rows -> the collated batch its `forward` reads.

Why it belongs to the model: image size and layout (one image, a collage, the top-k), normalisation, the
tokenizer and its truncation, and extra fields (category id, numeric side features) differ per
architecture; the loaders of train / evaluate / predict / benchmark / serve ask `model.processor(tokenizer)`
and never branch on the architecture. The default is EffiMiniVLM's: one image (or the item's images for the
"mean" mode) resized to S x S, the paper's text template, padded to the longest in the batch.

Extra fields come only from what a LoViF `input.csv` and a cold-start listing have (category, texts, image
references); `rating_number` is never an input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import torch
from PIL import Image
from torchvision import transforms as T

from effiminivlm.config import AUGMENTS, ModelCfg
from effiminivlm.data.dataset import Collator, ProductDataset, Sample
from effiminivlm.data.images import ImageStore, to_rgb
from effiminivlm.errors import EffiMiniVLMError


def image_transform(size: tuple[int, int], mean: Sequence[float], std: Sequence[float], train: bool = False,
                    augment: str = "none") -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> float tensor [3, H, W]: RGB with transparency on white (`data.images.to_rgb`, as the
    image store), bicubic resize (not crop), normalised; `augment="flip"` flips at random only in `train`."""
    if augment not in AUGMENTS:
        raise EffiMiniVLMError(f"data.augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    steps: list[Callable[..., Any]] = [
        to_rgb, T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    if train and augment == "flip":
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    return T.Compose(steps)


class Processor:
    """Rows -> batches for one model. Subclasses change `image_hw`, `max_images`, `fixed_images` (a layout
    the model always reads: "collage" / "topk") or add fields in `extra`."""

    max_images = 8  # images read per item in "mean" mode
    fixed_images: str | None = None  # None: the caller's first / mean choice; else the model's own layout

    def __init__(self, cfg: ModelCfg, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        inp = cfg.input  # the model's: unset values filled from its weights (RatingModel.resolve_input)
        self.max_length = inp.max_length
        self.uses_image = cfg.modalities != "text"
        self.uses_text = cfg.modalities != "image"
        self.image_hw = (inp.image_size, inp.image_size)
        self.mean, self.std = inp.mean, inp.std

    def image_mode(self, images: str = "first") -> str:
        """How the dataset reads an item's images: "first", "mean" (several) or "none"."""
        if images not in ("first", "mean", "none"):
            raise ValueError(f"images must be first, mean or none, got {images!r}")
        if not self.uses_image or images == "none":
            return "none"
        return "mean" if self.fixed_images else images

    def norm_stats(self) -> tuple[Sequence[float], Sequence[float]]:
        """(mean, std) the pixels are normalised with (0.5 each where the weights name none)."""
        return self.mean or (0.5,) * 3, self.std or (0.5,) * 3

    def transform(self, train: bool = False, augment: str = "none",
                  raw: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        """The PIL -> tensor transform; `raw`: uint8 [3,H,W] after the resize, unnormalised (the fast path's
        model normalises the batch, `models.optimize`)."""
        if raw:
            return T.Compose([to_rgb, T.Resize(self.image_hw, interpolation=T.InterpolationMode.BICUBIC,
                                                antialias=True), T.PILToTensor()])
        return image_transform(self.image_hw, *self.norm_stats(), train, augment)

    def dataset(self, table: pa.Table, store: ImageStore | None = None, images: str = "first", *,
                train: bool = False, augment: str = "none",
                decoded: Sequence[Sequence[Image.Image] | None] | None = None,
                draft: bool = False, raw_pixels: bool = False) -> ProductDataset:
        """`draft` (the fast path): JPEGs decoded at the smallest DCT scale that still covers the model's
        image size (see `ProductDataset`); `raw_pixels`: images as uint8 tensors (`transform(raw=True)`),
        for a model that normalises them itself, at scoring only."""
        mode = self.image_mode(images)
        transform = (self.transform(raw=True) if raw_pixels and not train else self.transform(train, augment)
                     ) if mode != "none" else None
        size = max(self.image_hw) if draft and mode != "none" else None
        return ProductDataset(table, transform, store, mode, max_images=self.max_images, decoded=decoded,
                              draft=size)

    def collator(self, pad_to_max: bool = False) -> Callable[[list[Sample]], dict[str, Any]]:
        """The collate function (text padded to the longest, or with `pad_to_max` to max_length); a
        picklable object, for DataLoader workers."""
        return _Collate(self, pad_to_max)

    def extra(self, samples: list[Sample]) -> dict[str, Any]:
        """Fields beyond images and tokens (none by default)."""
        return {}


class _Collate:
    """Tokens and images through `data.dataset.Collator` (no tokens without a tokenizer), then the
    processor's `extra` fields."""

    def __init__(self, processor: Processor, pad_to_max: bool) -> None:
        self.processor = processor
        tok = processor.tokenizer
        self.base = Collator(tok, processor.max_length, pad_to_max=pad_to_max) if tok is not None else None

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        out = self.base(samples) if self.base is not None else base_fields(samples)
        out.update(self.processor.extra(samples))
        return out


def base_fields(samples: list[Sample]) -> dict[str, Any]:
    """The Collator's fields without tokens (an image-only model's batch; a processor that tokenises its own
    way adds `input_ids` / `attention_mask`)."""
    first = next((s.images[0] for s in samples if s.images), None)
    return {
        "input_ids": None, "attention_mask": None,
        "pixel_values": None if first is None else torch.stack(
            [s.images[0] if s.images else torch.zeros_like(first) for s in samples]),
        "has_image": torch.tensor([bool(s.images) for s in samples]),
        "target": torch.tensor([s.target for s in samples], dtype=torch.float32),
        "rating_number": torch.tensor([s.rating_number for s in samples], dtype=torch.float32),
        "sample_weight": torch.tensor([s.weight for s in samples], dtype=torch.float32),
        "item_id": [s.item_id for s in samples], "category": [s.category for s in samples],
        "image_status": [s.image_status for s in samples],
    }


def stack_images(samples: list[Sample], k: int, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, k, 3, H, W] the first k images of each item, zeros after the last; [B, k] bool mask)."""
    pixels = torch.zeros(len(samples), k, 3, *hw)
    mask = torch.zeros(len(samples), k, dtype=torch.bool)
    for i, s in enumerate(samples):
        for j, img in enumerate(s.images[:k]):
            pixels[i, j], mask[i, j] = img, True
    return pixels, mask


def category_ids(samples: list[Sample], categories: Sequence[str]) -> torch.Tensor:
    """[B] long: 1 + the index of the item's category in `categories` (case-insensitive), 0 for any other."""
    index = {c.lower(): i + 1 for i, c in enumerate(categories)}
    return torch.tensor([index.get(s.category.strip().lower(), 0) for s in samples], dtype=torch.long)


NUMERIC_FEATURES = ("n_images", "title_chars", "features_chars", "description_chars")


def numeric_features(samples: list[Sample]) -> torch.Tensor:
    """[B, 4] float32 log1p of what a cold-start listing has: image references, title / features /
    description length in characters (never rating_number)."""
    rows = [[s.n_refs, *(len(s.fields.get(k, "")) for k in ("title", "features", "description"))]
            for s in samples]
    return torch.tensor([[math.log1p(v) for v in r] for r in rows], dtype=torch.float32)
