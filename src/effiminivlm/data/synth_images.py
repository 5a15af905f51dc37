"""Drawing of the synthetic catalog's product photos: a silhouette per product type, a colour and a pattern
on a plain background, encoded as JPEG or PNG. Kept apart from `synth` (which decides what each item is)
so the catalog's rules read on their own; `realistic` reuses the drawing for hi-res benchmark photos."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def _shape_mask(shape: str, size: int, box: tuple[float, float, float, float]) -> Image.Image:
    """A white-on-black mask of the product silhouette inside `box` (pixels)."""
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0

    def p(u: float, v: float) -> tuple[float, float]:
        return x0 + u * w, y0 + v * h

    def r(u0: float, v0: float, u1: float, v1: float) -> list[float]:
        return [*p(u0, v0), *p(u1, v1)]

    line = max(2, int(0.07 * w))
    if shape == "bag":
        d.rounded_rectangle(r(0.05, 0.35, 0.95, 1.0), radius=0.08 * w, fill=255)
        d.arc(r(0.25, 0.02, 0.75, 0.68), 180, 360, fill=255, width=line)
    elif shape == "tshirt":
        d.polygon([p(0.3, 0), p(0.42, 0.07), p(0.58, 0.07), p(0.7, 0), p(1.0, 0.2), p(0.88, 0.42),
                   p(0.78, 0.36), p(0.78, 1.0), p(0.22, 1.0), p(0.22, 0.36), p(0.12, 0.42), p(0, 0.2)],
                  fill=255)
    elif shape == "shoe":
        d.polygon([p(0, 0.88), p(0, 0.45), p(0.25, 0.4), p(0.4, 0.12), p(0.6, 0.12), p(0.7, 0.45),
                   p(1.0, 0.62), p(1.0, 0.88)], fill=255)
    elif shape == "cap":
        d.pieslice(r(0.05, 0.2, 0.8, 1.2), 180, 360, fill=255)
        d.ellipse(r(0.45, 0.6, 1.0, 0.8), fill=255)
    elif shape == "pillow":
        d.rounded_rectangle(r(0.05, 0.1, 0.95, 0.9), radius=0.2 * w, fill=255)
    elif shape == "mug":
        d.rectangle(r(0.1, 0.1, 0.72, 1.0), fill=255)
        d.ellipse(r(0.58, 0.3, 0.95, 0.78), outline=255, width=line)
    elif shape == "bottle":
        d.rounded_rectangle(r(0.3, 0.25, 0.7, 1.0), radius=0.08 * w, fill=255)
        d.rectangle(r(0.38, 0.1, 0.62, 0.26), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def draw_product(rng: np.random.Generator, shape: str, rgb: tuple[int, int, int], pattern: str, size: int,
                 transparent: bool = False) -> Image.Image:
    """One product photo: the coloured silhouette, a nuisance pattern, jittered pose and background."""
    jitter = rng.integers(-18, 19, size=3)
    colour = tuple(int(c) for c in np.clip(np.asarray(rgb) + jitter, 0, 255))
    shade = tuple(int(c * 0.72) for c in colour)
    scale = float(rng.uniform(0.6, 0.86)) * size
    cx, cy = (float(rng.uniform(0.42, 0.58)) * size for _ in range(2))
    box = (cx - scale / 2, cy - scale / 2, cx + scale / 2, cy + scale / 2)
    mask = _shape_mask(shape, size, box)
    if rng.random() < 0.5:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    fill = Image.new("RGB", (size, size), colour)
    d = ImageDraw.Draw(fill)
    step = max(4, size // int(rng.integers(6, 11)))
    if pattern == "stripes":
        for k in range(-size, 2 * size, step):
            d.line([(k, 0), (k + size, size)], fill=shade, width=max(1, step // 3))
    elif pattern == "dots":
        rad = max(1, step // 4)
        for yy in range(step // 2, size, step):
            for xx in range(step // 2, size, step):
                d.ellipse([xx - rad, yy - rad, xx + rad, yy + rad], fill=shade)
    grey = int(rng.integers(228, 256))
    if transparent:
        image = Image.new("RGBA", (size, size), (255, 255, 255, 0))
        image.paste(fill.convert("RGBA"), (0, 0), mask)
        return image
    image = Image.new("RGB", (size, size), (grey, grey, min(255, grey + int(rng.integers(0, 6)))))
    image.paste(fill, (0, 0), mask)
    return image


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, "JPEG", quality=90)
    else:
        image.save(buf, "PNG", optimize=False)
    return buf.getvalue()
