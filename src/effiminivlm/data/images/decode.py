"""Bytes / files -> RGB images, every refusal named (missing, decode_error, too_small, decompression_bomb).

One conversion (`to_rgb`) for training, scoring and the download check, so an image with transparency looks
the same to the model whichever path read it.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

MIN_SIDE = 10  # images smaller than this on a side carry no usable signal (spacer GIFs, tracking pixels)
EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


_ORIENTATION = 0x0112  # EXIF tag: how the camera held the picture


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (product photos sit on white; black would be a new cue).

    Idempotent, and free when there is nothing to do: an RGB image without transparency or EXIF rotation
    (what this function returns) comes back as the same object, so the dataset path, which converts in the
    image store and again in the transform, copies no full-size image twice."""
    if img.mode == "RGB" and "transparency" not in img.info and img.getexif().get(_ORIENTATION, 1) == 1:
        return img
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # high-bit-depth grayscale: rescale, don't clip
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        img = Image.fromarray((arr / hi * 255.0).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" or (img.mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def too_many_pixels(size: tuple[int, int]) -> bool:
    """Pillow's own decompression-bomb limit, applied at 1x (Pillow only warns between 1x and 2x).

    Checked explicitly instead of turning the warning into an error with `warnings.catch_warnings`, which
    swaps process-wide filters and is not safe in fetch_images' worker threads."""
    limit = Image.MAX_IMAGE_PIXELS
    return bool(limit) and size[0] * size[1] > limit


def load_image_with_reason(path: str | os.PathLike[str] | io.BytesIO, max_pixels: int | None = None,
                           draft: int | None = None) -> tuple[Image.Image | None, str | None]:
    """(RGB image, None) or (None, reason) with reason one of missing, decode_error, too_small,
    decompression_bomb, too_many_pixels. Pillow's decompression-bomb limit stays on: a bomb is a counted
    failure; `max_pixels` is a caller's tighter cap (a service's upload limit), checked on the header.

    `draft` (pixels): a JPEG is decoded straight at the smallest DCT scale (1/2, 1/4, 1/8) whose sides stay
    >= `draft`, ~3x cheaper for a 1000-1500 px photo headed for a 224 px model; other formats ignore it."""
    try:
        with Image.open(path) as img:  # reads the header only: size checks before paying for the decode
            if too_many_pixels(img.size):
                return None, "decompression_bomb"
            if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
                return None, "too_many_pixels"
            if min(img.size) < MIN_SIDE:
                return None, "too_small"
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", (draft, draft))
            img.load()
            return to_rgb(img), None
    except FileNotFoundError:
        return None, "missing"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the latter under `-W error`
        return None, "decompression_bomb"
    except Exception:  # noqa: BLE001 - a file we did not write may break a decoder in any way; it is counted
        return None, "decode_error"


def decode_image_bytes(body: bytes, max_pixels: int | None = None) -> tuple[Image.Image | None, str | None]:
    """`load_image_with_reason` for bytes already in memory (an upload): the same checks, the same RGB
    conversion, so an uploaded file and the same file read from disk give the same pixels."""
    return load_image_with_reason(io.BytesIO(body), max_pixels)


def load_image(path: str | os.PathLike[str]) -> Image.Image | None:
    """An RGB image, or None when the file is missing, corrupt, a bomb or smaller than 10 px on a side."""
    return load_image_with_reason(path)[0]


def image_extension(body: bytes) -> tuple[str | None, str | None]:
    """(file extension, None) for bytes that fully decode as an image, else (None, reason) with reason
    decompression_bomb or not_an_image (an HTML error page, a truncated body, a broken decoder)."""
    try:
        with Image.open(io.BytesIO(body)) as img:
            if too_many_pixels(img.size):
                return None, "decompression_bomb"
            img.load()
            return EXT.get(img.format or "", (img.format or "img").lower()), None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "decompression_bomb"
    except Exception:  # noqa: BLE001 - bytes from the network may break a decoder in any way; it is counted
        return None, "not_an_image"
