"""What the web service does, apart from HTTP: listings -> items with decoded images -> scores.

Why apart from app.py: the rules (which image references are read, how uploads are decoded and bounded, how
a batch is scored) are testable without a server, and the batch function is the one the batcher runs in its
worker thread. Scoring goes through `Scorer.score_table`, the same path as `effiminivlm predict`, so an item
scored through the API gets the same number as through `predict` (same text cleaning, same transform, same
precision; bit-identical when the batch holds the same items).

Image references a client may send: a path that resolves (symlinks followed) inside the server's images
folder, `upload:<part>` naming a file part of the same multipart request, a `data:image/...;base64,` URI, or
`{"base64": ...}`. A URL is never fetched and any other path is never opened: both are a 422 naming the
field. Every image is decoded here, with the size and pixel limits checked before the pixels are read.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from effiminivlm.data.images import ImageStore, confine, decode_image_bytes, local_path
from effiminivlm.errors import DataError
from effiminivlm.serving.predict import check_finite
from effiminivlm.serving.schemas import ImageData, ServeSettings
from effiminivlm.serving.scorer import Scorer, products_table

IMAGE_SIZE_STATUS = {"too_many_pixels": 413, "decompression_bomb": 413}
ROW_SCHEMA = products_table([]).schema  # the columns a batch needs, as `products_table` types them


class RequestError(Exception):
    """A client error: HTTP `status` and a one-line message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: A JSON token for `too_deep`: a string (escapes included) or one structural character.
_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{},:]')


def parse_json_body(raw: bytes | str) -> Any:
    """A request's JSON: bytes that are not UTF-8 are a 400 (never replaced and scored), nesting the parser
    cannot follow is a 422 naming the field where it happens, malformed JSON a 422 with line and column."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(400, f"body: not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise RequestError(422, f"body: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise RequestError(422, f"{too_deep(raw)}: nested too deep (a listing's fields are strings, lists "
                                "of strings or image objects)") from None


def too_deep(text: str, depth: int = 32) -> str:
    """The field (`items.0.title`) where `text`'s nesting first exceeds `depth`, named like pydantic does.

    Only called on the error path: a plain scan of tokens, no parsing, so any depth costs one pass."""
    stack: list[list[Any]] = []  # per open container: [its key or index]
    key: str | None = None
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok in "[{":
            stack.append(["" if tok == "{" else 0])
            if len(stack) > depth:
                break
        elif tok in "]}":
            if stack:
                stack.pop()
        elif tok == ",":
            if stack and isinstance(stack[-1][0], int):
                stack[-1][0] += 1
        elif tok == ":":
            if stack and key is not None:
                stack[-1][0] = key
        else:
            key = tok[1:-1]
    parts = [str(level[0]) for level in stack[:3]]
    if parts and parts[0] == "items":  # {"items": [...]}: the list is the items
        parts = parts[1:]
    elif stack and isinstance(stack[0][0], str):
        return ".".join(["body", *parts[:2]])
    return ".".join(["items", *parts[:2]])


@dataclass
class Item:
    """One listing ready for the model: a row in the prepared schema (text already cleaned, `images` holding
    references confined to the images folder) and the images decoded from the request, used first."""

    row: dict[str, Any]
    images: list[Image.Image] = field(default_factory=list)
    want_view: bool = False


@dataclass
class Scored:
    """One item's result from the worker thread."""

    score: float
    image_status: str
    view_png: bytes | None = None


def decode_upload(body: bytes, where: str, settings: ServeSettings) -> Image.Image:
    """Bytes of one image -> RGB image under the byte and pixel limits, else RequestError naming `where`."""
    if len(body) > settings.max_image_bytes:
        raise RequestError(413, f"{where}: image of {len(body):,} bytes is over the limit of "
                                f"{settings.max_image_bytes:,}")
    img, reason = decode_image_bytes(body, settings.max_image_pixels)
    if img is None:
        status = IMAGE_SIZE_STATUS.get(reason or "", 422)
        detail = {"too_many_pixels": f"more than {settings.max_image_pixels:,} pixels",
                  "decompression_bomb": "more pixels than the decoder allows",
                  "too_small": "smaller than 10 px on a side"}.get(reason or "", "not a readable image")
        raise RequestError(status, f"{where}: {detail}")
    return img


def read_allowed_file(ref: str, where: str, settings: ServeSettings) -> bytes:
    """The bytes of a path reference, only when it resolves inside the images folder (never a URL)."""
    if ref[:8].lower().startswith(("http://", "https://")) or ref.lower().startswith("ftp:"):
        raise RequestError(422, f"{where}: URLs are not fetched by the server; send the image bytes")
    if settings.images_dir is None:
        raise RequestError(422, f"{where}: image paths are not accepted (the server has no --images-dir); "
                                "send the image bytes")
    path, why = local_path(ref)
    if path is None:
        raise RequestError(422, f"{where}: unsupported image reference {ref[:80]!r}")
    if not path.is_absolute() and not os.fspath(path).startswith("~"):
        path = settings.images_dir / path  # relative paths are relative to the images folder
    found = confine(path, [settings.images_dir])
    if found is None:
        raise RequestError(422, f"{where}: {ref[:200]!r} is outside the images folder")
    try:
        size = found.stat().st_size
        if not found.is_file():
            raise FileNotFoundError(found)
    except OSError:
        raise RequestError(422, f"{where}: {ref[:200]!r} does not exist in the images folder") from None
    if size > settings.max_image_bytes:
        raise RequestError(413, f"{where}: image of {size:,} bytes is over the limit of "
                                f"{settings.max_image_bytes:,}")
    return found.read_bytes()


def image_bytes(ref: Any, where: str, settings: ServeSettings, uploads: dict[str, bytes]) -> bytes:
    """One image reference of a listing -> its bytes (upload, base64, data URI or allowed path)."""
    if isinstance(ref, ImageData | dict):
        data = ref.base64 if isinstance(ref, ImageData) else str(ref.get("base64", ""))
        return _b64(data, where, settings)
    ref = str(ref).strip()
    if ref.startswith("upload:"):
        name = ref[len("upload:"):]
        if name not in uploads:
            raise RequestError(422, f"{where}: no uploaded file part named {name!r}")
        return uploads[name]
    if ref[:5].lower() == "data:":
        head, _, data = ref.partition(",")
        if not head.lower().endswith(";base64"):
            raise RequestError(422, f"{where}: a data: URI must be base64")
        return _b64(data, where, settings)
    return read_allowed_file(ref, where, settings)


def _b64(data: str, where: str, settings: ServeSettings) -> bytes:
    if len(data) * 3 // 4 > settings.max_image_bytes + 3:
        raise RequestError(413, f"{where}: image of about {len(data) * 3 // 4:,} bytes is over the limit of "
                                f"{settings.max_image_bytes:,}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"{where}: not valid base64") from None


def build_items(listings: list[Any], settings: ServeSettings, uploads: dict[str, bytes] | None = None,
                want_view: bool = False) -> list[Item]:
    """Validated listings -> items with decoded images; RequestError names the first bad field."""
    if len(listings) > settings.max_items:
        raise RequestError(413, f"items: {len(listings)} listings, more than the limit of "
                                f"{settings.max_items}")
    items = []
    for i, listing in enumerate(listings):
        data = listing.model_dump() if hasattr(listing, "model_dump") else dict(listing)
        refs = getattr(listing, "images", None) or data.get("images") or []
        imgs = [decode_upload(image_bytes(ref, f"items.{i}.images.{k}", settings, uploads or {}),
                              f"items.{i}.images.{k}", settings) for k, ref in enumerate(refs)]
        items.append(Item({"parent_asin": data.get("parent_asin") or str(i),
                            "category": data.get("category") or data.get("main_category") or "",
                            "title": data.get("title"), "features": data.get("features"),
                            "description": data.get("description"), "images": [],
                            "store": data.get("store"), "price": data.get("price")}, imgs, want_view))
    rows = products_table([it.row for it in items]).to_pylist()  # text cleaned as `prepare` cleans it
    for item, row in zip(items, rows, strict=True):
        item.row = row
    return items


def score_batch(scorer: Scorer, items: list[Item], settings: ServeSettings) -> list[Scored]:
    """Score one model batch (runs in the batcher's worker thread) through `Scorer.score_table`, the
    `predict` path: row references through an ImageStore confined to the images folder, request images
    in memory."""
    roots = [settings.images_dir] if settings.images_dir is not None else []
    table = pa.Table.from_pylist([it.row for it in items], schema=ROW_SCHEMA)
    images = [it.images for it in items]
    res = scorer.score_table(table, ImageStore(None, allowed_roots=roots), progress=False, decoded=images)
    try:
        check_finite(res.pred, scorer.source)
    except DataError as e:  # the server's model is broken, not the request: 500 with the reason, no NaN
        raise RequestError(500, str(e)) from None
    out = [Scored(float(s), st) for s, st in zip(res.pred, res.item_image_status, strict=True)]
    for i, item in enumerate(items):
        if item.want_view and item.images:
            out[i].view_png = model_view_png(scorer, item.images[0])
    return out


def model_view_png(scorer: Scorer, img: Image.Image) -> bytes | None:
    """The image as the model saw it: the eval transform's tensor, un-normalised back to 8-bit RGB."""
    if scorer.images == "none":
        return None
    processor = scorer.model.processor(scorer.tokenizer)  # the model's own image size and normalisation
    tensor = processor.transform(train=False)(img)
    mean = np.asarray(processor.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(processor.std, dtype=np.float32)[:, None, None]
    arr = ((tensor.numpy() * std + mean).clip(0, 1) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def version() -> str:
    """The installed effiminivlm version (the package itself is a higher layer than serving)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("effiminivlm")
    except PackageNotFoundError:
        return "0+unknown"
