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


# ---------------------------------------------------------------------------------------------- fetching


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # never joined on close: a stuck handler cannot block the teardown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stop = threading.Event()
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.bodies = {"/ok.png": png(colour=(1, 2, 3)), "/same.png": png(colour=(1, 2, 3)),
                       "/flaky.png": png(colour=(4, 5, 6)), "/later.png": png(colour=(7, 8, 9)),
                       "/corrupt.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg"}
        self.fail_first = {"/flaky.png": 1}  # 500 this many times, then 200
        self.not_found = {"/missing.png", "/later.png"}

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hung up on the slow handler: expected, not worth a traceback


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        with srv.lock:
            srv.hits[self.path] += 1
            n = srv.hits[self.path]
        if self.path == "/slow.png":
            srv.stop.wait(3.0)  # longer than the client's timeout; the teardown releases it at once
            return self._send(200, srv.bodies["/ok.png"])
        if self.path == "/always500.png" or n <= srv.fail_first.get(self.path, 0):
            return self._send(500, b"try again")
        if self.path in srv.not_found or self.path not in srv.bodies:
            return self._send(404, b"not found")
        self._send(200, srv.bodies[self.path])

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


FAST = {"timeout": 0.3, "backoff": 0.01, "progress": False, "workers": 4}


def test_fetch_downloads_retries_and_records_failures(server: _Server, tmp_path: Path) -> None:
    paths = ["/ok.png", "/same.png", "/missing.png", "/corrupt.jpg", "/flaky.png", "/slow.png",
             "/always500.png"]
    refs = [server.url(p) for p in paths] + [server.url("/ok.png"), str(tmp_path / "local.png")]
    summary = fetch_images(refs, tmp_path / "cache", retries=2, **FAST)
    assert (summary.refs, summary.local, summary.downloaded, summary.cached) == (7, 1, 3, 0)
    assert summary.failed == Counter(http_404=1, not_an_image=1, timeout=1, http_500=1)
    # 404 and a non-image body fail at once; 5xx and timeouts are retried (1 + 2 retries); duplicates once
    assert server.hits == Counter({"/ok.png": 1, "/same.png": 1, "/missing.png": 1, "/corrupt.jpg": 1,
                                   "/flaky.png": 2, "/slow.png": 3, "/always500.png": 3})
    manifest = read_manifest(tmp_path / "cache")
    assert manifest[server.url("/flaky.png")]["attempts"] == 2
    assert manifest[server.url("/missing.png")] == {"ref": server.url("/missing.png"), "status": "failed",
                                                    "error": "http_404", "retryable": False, "attempts": 1}
    assert manifest[server.url("/slow.png")]["retryable"] is True
    # content-addressed: identical bytes behind two URLs are one file
    assert manifest[server.url("/ok.png")]["path"] == manifest[server.url("/same.png")]["path"]
    assert len(list((tmp_path / "cache").glob("*/*.png"))) == 2
    store = ImageStore(tmp_path / "cache")
    img = store.open(server.url("/same.png"))
    assert img is not None and img.getpixel((0, 0)) == (1, 2, 3)
    assert store.resolve(server.url("/slow.png")) is None and store.stats.fetch_failed == 1
    assert "3 downloaded, 0 already cached, 4 failed (" in str(summary) and "http_404: 1" in str(summary)


def test_fetch_resumes_and_retries_failures_only_when_asked(server: _Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    refs = [server.url(p) for p in ("/ok.png", "/flaky.png", "/later.png", "/same.png")]
    first = fetch_images(refs, cache, retries=0, **FAST)
    assert (first.downloaded, first.failed) == (2, Counter(http_500=1, http_404=1))
    hits = server.hits.copy()

    again = fetch_images(refs, cache, retries=0, **FAST)  # a re-run downloads nothing new
    assert (again.downloaded, again.cached, sum(again.failed.values())) == (0, 2, 0)
    assert again.skipped_failed == Counter(http_500=1, http_404=1) and server.hits == hits
    assert "--retry-failed" in str(again)

    # A crash mid-write: the manifest keeps ok.png's entry and half of flaky.png's line. The torn line is
    # ignored and the next run appends on a fresh line, so its own entries stay readable.
    manifest = cache / MANIFEST
    lines = {urlparse(json.loads(line)["ref"]).path: line for line in manifest.read_text().splitlines(True)}
    manifest.write_text(lines["/ok.png"] + lines["/flaky.png"][:30])
    server.not_found.discard("/later.png")  # the link works now
    resumed = fetch_images(refs, cache, retries=0, **FAST)
    assert (resumed.cached, resumed.downloaded, resumed.failed) == (1, 3, Counter())
    assert server.hits["/ok.png"] == hits["/ok.png"]  # still in the manifest: not fetched again
    assert len(read_manifest(cache)) == 4
    assert all(e["status"] == "ok" for e in read_manifest(cache).values())

    # --retry-failed: a fresh failure is skipped by default and retried on request
    server.not_found.add("/missing.png")
    fetch_images([server.url("/missing.png")], cache, retries=0, **FAST)
    before = server.hits["/missing.png"]
    fetch_images([server.url("/missing.png")], cache, retries=0, **FAST)
    assert server.hits["/missing.png"] == before
    retried = fetch_images([server.url("/missing.png")], cache, retries=0, retry_failed=True, **FAST)
    assert server.hits["/missing.png"] == before + 1 and retried.failed == Counter(http_404=1)


def test_fetch_refuses_a_decompression_bomb(server: _Server, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # the 24x16 test images are 384 px
    with pytest.warns(Image.DecompressionBombWarning):
        summary = fetch_images([server.url("/ok.png")], tmp_path / "cache", retries=3, **FAST)
    assert summary.failed == Counter(decompression_bomb=1) and server.hits["/ok.png"] == 1


def test_fetch_images_cli_on_a_prepared_dataset(server: _Server, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from effiminivlm.data.prepare import prepare

    images = [{"large": server.url("/ok.png"), "variant": "MAIN"},
              {"large": server.url("/missing.png"), "variant": "PT01"}]
    meta = write_jsonl(tmp_path / "meta_Amazon_Fashion.jsonl",
                       [record(f"A{i}", images=images) for i in range(3)])
    prepare([meta], tmp_path / "prep", frac=1.0, min_per_category=0)
    assert main(["fetch-images", str(tmp_path / "prep"), "--workers", "2", "--timeout", "0.5",
                 "--retries", "0"]) == 0
    assert "2 image URLs -> " in (out := capsys.readouterr().out)
    assert "1 downloaded, 0 already cached, 1 failed (http_404: 1)" in out
    store = ImageStore(tmp_path / "prep" / "images")  # the default cache, where train / predict look
    assert store.resolve(server.url("/ok.png")) is not None
    assert server.hits == Counter({"/ok.png": 1, "/missing.png": 1})
    assert main(["fetch-images", str(tmp_path / "prep"), "--cache", str(tmp_path / "other"), "--workers", "1",
                 "--timeout", "0.5", "--retry-failed"]) == 0
    assert (tmp_path / "other" / MANIFEST).is_file()


def test_fetch_images_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch-images", str(tmp_path / "nowhere")]) == 2
    assert "is not a prepared dataset" in capsys.readouterr().err
    with pytest.raises(DataError, match="not a prepared dataset"):
        fetch_images(tmp_path, progress=False)
    assert main(["fetch-images", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers >= 1" in capsys.readouterr().err


def test_fetch_images_with_only_local_refs_downloads_nothing(prepared: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch-images", str(prepared), "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 image URLs") and "local references need no download" in out
    assert not (tmp_path / "cache").exists()  # no empty cache that train / predict would take for one
