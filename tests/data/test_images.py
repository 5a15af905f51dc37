"""Images: loading (modes, tiny, corrupt, bombs), the offline ImageStore, and fetch_images against a local
HTTP server (404, timeout, corrupt body, 500-then-200, resume, --retry-failed, CLI).

No test can hang: the server runs in daemon threads and is shut down in the fixture's teardown; the slow
handler waits on an event the teardown sets; every client call has a sub-second timeout.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from effiminivlm.cli import main
from effiminivlm.data.images import (
    MANIFEST,
    ImageStore,
    fetch_images,
    load_image,
    load_image_with_reason,
    read_manifest,
)
from effiminivlm.errors import DataError
from tests.data.test_meta import record, write_jsonl


def png(size: tuple[int, int] = (24, 16), colour: tuple[int, int, int] = (200, 30, 40), mode: str = "RGB",
        **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(buf, "PNG", **save)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- loading


def test_palette_png_with_transparency_composites_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 0, 10, 20))  # left half palette index 1 (red), right half index 0 (transparent)
    img.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    assert out is not None and out.mode == "RGB" and out.size == (20, 20)
    assert out.getpixel((2, 5)) == (255, 0, 0) and out.getpixel((15, 5)) == (255, 255, 255)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((12, 12, 4), dtype=np.uint8)
    arr[:, :6] = (0, 0, 255, 255)  # opaque blue
    arr[:, 6:] = (0, 0, 0, 0)  # fully transparent black: must become white, not black
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out is not None and out.mode == "RGB"
    assert out.getpixel((1, 1)) == (0, 0, 255) and out.getpixel((10, 1)) == (255, 255, 255)


def test_grayscale_and_16_bit_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (16, 16), 77).save(tmp_path / "l.png")
    Image.fromarray(np.full((16, 16), 1000, dtype=np.uint16)).save(tmp_path / "i16.png")
    grey = load_image(tmp_path / "l.png")
    deep = load_image(tmp_path / "i16.png")
    assert grey is not None and grey.mode == "RGB" and grey.getpixel((3, 3)) == (77, 77, 77)
    assert deep is not None and deep.mode == "RGB" and deep.getpixel((3, 3)) == (255, 255, 255)  # rescaled


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (30, 12), (10, 20, 30)).save(tmp_path / "o.jpg", exif=exif)
    out = load_image(tmp_path / "o.jpg")
    assert out is not None and out.size == (12, 30)


@pytest.mark.parametrize(("size", "reason"), [((5, 5), "too_small"), ((9, 400), "too_small"),
                                              ((10, 10), None)])
def test_tiny_images_are_no_image(tmp_path: Path, size: tuple[int, int], reason: str | None) -> None:
    Image.new("RGB", size, (1, 2, 3)).save(tmp_path / "t.png")
    img, why = load_image_with_reason(tmp_path / "t.png")
    assert why == reason and (img is None) == (reason is not None)


def test_corrupt_truncated_and_missing_files(tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "html.jpg").write_bytes(b"<html><body>404 Not Found</body></html>")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("trunc.jpg", "html.jpg", "empty.png"):
        assert load_image_with_reason(tmp_path / name) == (None, "decode_error"), name
    assert load_image_with_reason(tmp_path / "nope.png") == (None, "missing")


@pytest.mark.parametrize("side", [40, 100])  # 1.6x the limit (Pillow only warns) and 10x (Pillow raises)
def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    Image.new("RGB", (side, side), (5, 5, 5)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(Image.DecompressionBombWarning) if side == 40 else contextlib.nullcontext():
        assert load_image_with_reason(tmp_path / "bomb.png") == (None, "decompression_bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    assert load_image(tmp_path / "bomb.png") is not None


# ---------------------------------------------------------------------------------------------- the store


def test_store_resolves_local_paths_and_file_urls_and_counts_the_rest(tmp_path: Path) -> None:
    f = tmp_path / "x y.png"
    f.write_bytes(png())
    store = ImageStore(None)
    assert store.resolve(str(f)) == f
    assert store.resolve(f.as_uri()) == f  # file:///.../x%20y.png
    assert store.resolve(f"file://localhost{f}") == f
    for ref in ("file://otherhost/x.png", "s3://bucket/x.png", "data:image/png;base64,AAAA", "", "  "):
        assert store.resolve(ref) is None, ref
    assert store.resolve(str(tmp_path / "gone.png")) is None
    assert store.resolve("https://example.com/a.jpg") is None  # never downloads
    assert store.open(str(f)) is not None
    (tmp_path / "bad.png").write_bytes(b"junk")
    assert store.open(str(tmp_path / "bad.png")) is None
    assert store.stats.resolved == 5 and store.stats.unsupported == 5 and store.stats.missing_file == 1
    assert store.stats.not_fetched == 1 and store.stats.load_failed == Counter(decode_error=1)
    assert store.stats.unresolved() == {"missing_file": 1, "not_fetched": 1, "unsupported": 5,
                                        "decode_error": 1}


def test_store_is_picklable_for_spawned_workers(tmp_path: Path) -> None:
    store = pickle.loads(pickle.dumps(ImageStore(tmp_path)))
    assert store.resolve("https://example.com/a.jpg") is None and store.stats.not_fetched == 1


def test_store_reads_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "abc.png").write_bytes(png())
    lines = [{"ref": "http://h/ok.png", "status": "ok", "path": "ab/abc.png"},
             {"ref": "http://h/gone.png", "status": "ok", "path": "ab/gone.png"},
             {"ref": "http://h/bad.png", "status": "failed", "error": "http_404"}]
    (tmp_path / MANIFEST).write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"ref": "http://h/t')
    store = ImageStore(tmp_path)
    assert store.resolve("http://h/ok.png") == tmp_path / "ab" / "abc.png"
    assert store.resolve(" http://h/ok.png ") == tmp_path / "ab" / "abc.png"
    assert [store.resolve(u) for u in ("http://h/gone.png", "http://h/bad.png", "http://h/t")] == [None] * 3
    assert store.stats.unresolved() == {"cache_file_missing": 1, "fetch_failed": 1, "not_fetched": 1}
