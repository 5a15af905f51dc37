"""Realistic scoring inputs: real product texts with generated photos at Amazon's `hi_res` size.

Why: a speed figure measured on 96 px synthetic images and template texts hides the two costs production
pays, decoding a 1000-1500 px JPEG per item and tokenising ~250-token real descriptions. This writes a meta
catalog (`meta_HiRes.jsonl` + `images/`) that `read_inputs` / `prepare` / `benchmark` read like any other:
texts (title, features, description, details, rating) come from a real meta file when one is given (e.g. the
development sample in shared/, never copied into the repository), else from the synthetic generator; every
item gets one JPEG of a random side in [min_px, max_px], drawn by `synth.draw_product` plus mild sensor
noise, so its entropy (and so its decode cost) resembles a product photo rather than flat colour.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from effiminivlm.data.synth import COLOURS, PRODUCTS, make_item
from effiminivlm.data.synth_images import draw_product
from effiminivlm.errors import DataError, EffiMiniVLMError

META_NAME = "meta_HiRes.jsonl"


@dataclass
class HiResSummary:
    """What `write_hi_res_catalog` wrote."""

    out: Path
    items: int
    image_bytes: int
    text_source: str
    seconds: float

    @property
    def meta_path(self) -> Path:
        return self.out / META_NAME


def _real_records(path: Path) -> list[dict[str, Any]]:
    """The usable records (objects with a title) of a meta JSONL file; a bad line names file:line."""
    records = []
    with path.open(encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{k}: invalid JSON ({e.msg})") from None
            if isinstance(rec, dict) and rec.get("title"):
                records.append(rec)
    if not records:
        raise DataError(f"{path}: no record with a title to take texts from")
    return records


def _records(n: int, texts: Path | None, seed: int) -> Iterator[dict[str, Any]]:
    """n meta records: the real ones cycled (ids suffixed on repeats so they stay unique), else synthetic."""
    if texts is None:
        for i in range(n):
            yield make_item(i, seed, image_size=32).record
        return
    real = _real_records(texts)
    for i in range(n):
        rec = dict(real[i % len(real)])
        repeat = i // len(real)
        asin = str(rec.get("parent_asin") or f"ITEM{i}")
        rec["parent_asin"] = asin if repeat == 0 else f"{asin}-{repeat}"
        yield rec


def hi_res_photo(rng: np.random.Generator, side: int) -> Image.Image:
    """A product photo of side x side pixels: a drawn silhouette with pattern, plus Gaussian noise (sd 4)."""
    shape_row = PRODUCTS[int(rng.integers(len(PRODUCTS)))]
    colour = sorted(COLOURS)[int(rng.integers(len(COLOURS)))]
    pattern = ("solid", "stripes", "dots")[int(rng.integers(3))]
    img = draw_product(rng, shape_row[2], COLOURS[colour][0], pattern, side)
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 4, size=(side, side, 1)).astype(np.int16)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def write_hi_res_catalog(out: str | Path, n: int, *, texts: str | Path | None = None, seed: int = 0,
                         min_px: int = 1000, max_px: int = 1500, quality: int = 90,
                         overwrite: bool = False) -> HiResSummary:
    """Write `n` items (meta JSONL with local `hi_res` image refs + one JPEG each) into `out`."""
    if n < 1:
        raise EffiMiniVLMError(f"n must be >= 1, got {n}")
    if not 32 <= min_px <= max_px:
        raise EffiMiniVLMError(f"image sides must satisfy 32 <= min_px <= max_px, got {min_px}, {max_px}")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        if not (overwrite and (root / META_NAME).is_file()):
            raise DataError(f"{root} is not empty (pass overwrite=True to replace an earlier hi-res catalog)")
        shutil.rmtree(root)
    text_path = Path(texts) if texts is not None else None
    if text_path is not None and not text_path.is_file():
        raise DataError(f"{text_path}: no such meta file")
    start = time.perf_counter()
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    with (root / META_NAME).open("w", encoding="utf-8") as meta:
        for i, rec in enumerate(_records(n, text_path, seed)):
            side = int(rng.integers(min_px, max_px + 1))
            buf = io.BytesIO()
            hi_res_photo(rng, side).save(buf, "JPEG", quality=quality)
            name = f"images/hr{i:07d}.jpg"
            (root / name).write_bytes(buf.getvalue())
            total += buf.tell()
            rec["images"] = [{"thumb": name, "large": name, "hi_res": name, "variant": "MAIN"}]
            meta.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return HiResSummary(root, n, total, str(text_path) if text_path else "synthetic",
                        time.perf_counter() - start)
