"""Images: loading (modes, tiny, corrupt, bombs: each exact status), the offline ImageStore and its
allowed-roots rule (local paths, file:// URLs, manifest entries). The downloader is in test_fetch.py."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effiminivlm.data.images import (
    MANIFEST,
    ImageStore,
    load_image,
    load_image_with_reason,
    to_rgb,
)
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


def test_each_decode_status_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (12, 12), (9, 8, 7)).save(tmp_path / "ok.png")
    Image.new("RGB", (9, 12)).save(tmp_path / "small.png")
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")  # 10x the limit below: Pillow raises
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    statuses = {name: load_image_with_reason(tmp_path / name)[1]
                for name in ("ok.png", "small.png", "big.png", "junk.jpg", "gone.png")}
    assert statuses == {"ok.png": None, "small.png": "too_small", "big.png": "decompression_bomb",
                        "junk.jpg": "decode_error", "gone.png": "missing"}
    ok = load_image(tmp_path / "ok.png")
    assert ok is not None and ok.mode == "RGB" and ok.getpixel((0, 0)) == (9, 8, 7)
    store = ImageStore(None)
    for name in statuses:
        store.open(str(tmp_path / name))
    assert store.stats.load_failed == Counter(too_small=1, decompression_bomb=1, decode_error=1)
    assert (store.stats.resolved, store.stats.missing_file) == (4, 1)


def test_to_rgb_is_idempotent_on_rgb_and_composites_alpha_on_white() -> None:
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    once = to_rgb(rgb)
    assert once.mode == "RGB" and np.array_equal(np.asarray(once), np.asarray(rgb))
    assert np.array_equal(np.asarray(to_rgb(once)), np.asarray(once))
    clear = Image.new("RGBA", (12, 12), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((3, 3)) == (255, 255, 255)


def test_store_with_allowed_roots_refuses_paths_outside_them(tmp_path: Path) -> None:
    root, cache, outside = tmp_path / "catalog", tmp_path / "cache", tmp_path / "elsewhere"
    for d in (root / "images", cache, outside):
        d.mkdir(parents=True)
    inside = root / "images" / "a.png"
    inside.write_bytes(png())
    secret = outside / "secret.png"
    secret.write_bytes(png())
    (root / "images" / "link.png").symlink_to(secret)  # a link out of the root is outside too
    store = ImageStore(cache, allowed_roots=[root])
    assert store.resolve(str(inside)) == inside.resolve()
    assert store.resolve(inside.as_uri()) == inside.resolve()
    assert store.resolve(str(root / "images" / ".." / "images" / "a.png")) == inside.resolve()
    refused = [str(secret), secret.as_uri(), str(root / ".." / "elsewhere" / "secret.png"),
               str(root / "images" / "link.png"), "/etc/passwd", "file:///etc/passwd", "~/secret.png"]
    assert [store.resolve(r) for r in refused] == [None] * len(refused)
    assert store.open("/etc/passwd") is None
    assert store.stats.outside_images_root == len(refused) + 1 and store.stats.resolved == 3
    assert store.stats.unresolved() == {"outside_images_root": len(refused) + 1}
    assert ImageStore(None).resolve(str(secret)) == secret  # no roots given: the caller vouched for them


def test_store_refuses_manifest_entries_outside_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "ab").mkdir(parents=True)
    (cache / "ab" / "abc.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    lines = [{"ref": "http://h/ok.png", "status": "ok", "path": "ab/abc.png"},
             {"ref": "http://h/up.png", "status": "ok", "path": "../secret.png"},
             {"ref": "http://h/abs.png", "status": "ok", "path": str(tmp_path / "secret.png")},
             {"ref": "http://h/etc.png", "status": "ok", "path": "/etc/passwd"}]
    (cache / MANIFEST).write_text("".join(json.dumps(x) + "\n" for x in lines))
    store = ImageStore(cache)
    assert store.resolve("http://h/ok.png") == (cache / "ab" / "abc.png").resolve()
    assert [store.resolve(f"http://h/{n}.png") for n in ("up", "abs", "etc")] == [None] * 3
    assert store.stats.unresolved() == {"outside_cache": 3}


def test_store_for_a_prepared_dataset_uses_its_recorded_roots(tmp_path: Path) -> None:
    from effiminivlm.data.prepare import prepare

    catalog = tmp_path / "catalog"
    (catalog / "images").mkdir(parents=True)
    (catalog / "images" / "a.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    meta = write_jsonl(catalog / "meta_Amazon_Fashion.jsonl", [
        record("A1", images=[{"large": "images/a.png", "variant": "MAIN"},
                             {"large": "../secret.png", "variant": "PT01"},
                             {"large": "/etc/passwd", "variant": "PT02"},
                             {"large": "file:///etc/passwd", "variant": "PT03"},
                             {"large": "~/.ssh/id_rsa", "variant": "PT04"}])])
    summary = prepare([meta], tmp_path / "prep", frac=1.0, min_per_category=0, progress=False)
    assert summary["refused_image_refs"] == {"outside_images_root": 4}
    assert summary["image_roots"] == [str(catalog.resolve())]
    # a shared prepared dataset whose rows were edited to point elsewhere is refused at read time too
    store = ImageStore.for_prepared(tmp_path / "prep")
    assert store.resolve(str(catalog / "images" / "a.png")) is not None
    assert store.resolve(str(tmp_path / "secret.png")) is None and store.stats.outside_images_root == 1
    extra = tmp_path / "extra"  # an explicit --images-dir is always allowed
    extra.mkdir()
    (extra / "b.png").write_bytes(png())
    assert ImageStore.for_prepared(tmp_path / "prep", extra).resolve(str(extra / "b.png")) is not None


def test_to_rgb_returns_a_plain_rgb_image_itself_and_still_rotates_exif():
    """The hot path converts each image twice (store, then transform): the second pass must not copy."""
    from PIL import Image

    from effiminivlm.data.images import to_rgb

    plain = Image.new("RGB", (4, 2), (10, 20, 30))
    assert to_rgb(plain) is plain
    rotated = Image.new("RGB", (4, 2), (10, 20, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.info["exif"] = exif.tobytes()
    out = to_rgb(rotated)
    assert out is not rotated and out.size == (2, 4)
