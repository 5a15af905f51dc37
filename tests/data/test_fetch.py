"""fetch_images against a local HTTP server on 127.0.0.1 (404, timeout, corrupt body, 500-then-200, resume,
--retry-failed, CLI, keep-alive, the run lock, orphan temp files, the total deadline), and the address rule:
loopback, private, link-local, multicast and redirects to them or to file:// are refused without the flag.

The downloader tests pass allow_private_hosts=True (the server is on loopback); names are resolved by a fake
getaddrinfo, and no test sends traffic to a non-loopback address. No test can hang: the server runs in daemon
threads and is shut down in the fixture's teardown; slow handlers wait on an event the teardown sets.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from PIL import Image

from effiminivlm.cli import main
from effiminivlm.data.images import (
    MANIFEST,
    ImageStore,
    address_refusal,
    fetch_images,
    read_manifest,
)
from effiminivlm.errors import DataError
from tests.data.test_images import png
from tests.data.test_meta import record, write_jsonl


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # never joined on close: a stuck handler cannot block the teardown

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.host = host
        self.lag = 0.0  # seconds every response waits (the lock test needs two runs to overlap)
        self.stop = threading.Event()
        self.hits: Counter[str] = Counter()
        self.hosts: list[str] = []  # Host header of each request
        self.connections: set[tuple[str, int]] = set()  # client (address, port): one per TCP connection
        self.lock = threading.Lock()
        self.redirects: dict[str, str] = {}  # path -> Location
        self.bodies = {"/ok.png": png(colour=(1, 2, 3)), "/same.png": png(colour=(1, 2, 3)),
                       "/flaky.png": png(colour=(4, 5, 6)), "/later.png": png(colour=(7, 8, 9)),
                       "/corrupt.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg"}
        self.fail_first = {"/flaky.png": 1}  # 500 this many times, then 200
        self.not_found = {"/missing.png", "/later.png"}

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.server_address[1]}{path}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hung up on the slow handler: expected, not worth a traceback


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: the client may reuse a connection

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        with srv.lock:
            srv.hits[self.path] += 1
            n = srv.hits[self.path]
            srv.hosts.append(self.headers.get("Host", ""))
            srv.connections.add(self.client_address)
        if self.path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if self.path == "/drip.png":  # headers at once, then one byte every 0.5 s: never a read timeout
            body = srv.bodies["/ok.png"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                if srv.stop.wait(0.5):
                    return None
            return None
        if srv.lag:
            srv.stop.wait(srv.lag)
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


@contextlib.contextmanager
def _serving(host: str = "127.0.0.1") -> Iterator[_Server]:
    srv = _Server(host)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def server() -> Iterator[_Server]:
    with _serving() as srv:
        yield srv


FAST: dict[str, Any] = {"timeout": 0.3, "backoff": 0.01, "progress": False, "workers": 4,
                        "allow_private_hosts": True}


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
                 "--retries", "0"]) == 0  # without --allow-private-hosts: 127.0.0.1 is refused
    assert "0 downloaded, 0 already cached, 2 failed (private_address: 2)" in capsys.readouterr().out
    assert server.hits == Counter()
    assert main(["fetch-images", str(tmp_path / "prep"), "--workers", "2", "--timeout", "0.5",
                 "--retries", "0", "--allow-private-hosts", "--retry-failed"]) == 0
    assert "2 image URLs -> " in (out := capsys.readouterr().out)
    assert "1 downloaded, 0 already cached, 1 failed (http_404: 1)" in out
    store = ImageStore(tmp_path / "prep" / "images")  # the default cache, where train / predict look
    assert store.resolve(server.url("/ok.png")) is not None
    assert server.hits == Counter({"/ok.png": 1, "/missing.png": 1})
    assert main(["fetch-images", "--data", str(tmp_path / "prep"), "--images-dir", str(tmp_path / "other"),
                 "--workers", "1", "--timeout", "0.5", "--retry-failed", "--allow-private-hosts"]) == 0
    assert (tmp_path / "other" / MANIFEST).is_file()


def test_fetch_images_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch-images", str(tmp_path / "nowhere")]) == 2
    assert "is not a prepared dataset" in capsys.readouterr().err
    with pytest.raises(DataError, match="not a prepared dataset"):
        fetch_images(tmp_path, progress=False)
    assert main(["fetch-images", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers >= 1" in capsys.readouterr().err
    assert main(["fetch-images", str(tmp_path), "--deadline", "0"]) == 2
    assert "--deadline > 0 (got 16, 3, 10.0, 0.0)" in capsys.readouterr().err


def test_fetch_images_with_only_local_refs_downloads_nothing(prepared: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch-images", str(prepared), "--cache", str(tmp_path / "cache")]) == 0  # the old name
    out, err = capsys.readouterr()
    assert err == "note: fetch-images --cache is deprecated; use --images-dir\n"
    assert out.startswith("0 image URLs") and "local references need no download" in out
    assert not (tmp_path / "cache").exists()  # no empty cache that train / predict would take for one


# ---------------------------------------------------------------------------------------------- robustness


def test_one_keep_alive_connection_per_worker(server: _Server, tmp_path: Path) -> None:
    server.bodies.update({f"/k{i}.png": png(colour=(i, 9, 9)) for i in range(6)})
    summary = fetch_images([server.url(f"/k{i}.png") for i in range(6)], tmp_path / "cache",
                           **{**FAST, "workers": 1})
    assert summary.downloaded == 6
    assert len(server.connections) == 1  # six requests, one TCP connection


def test_total_deadline_cuts_a_dripping_server(server: _Server, tmp_path: Path) -> None:
    start = time.monotonic()
    summary = fetch_images([server.url("/drip.png")], tmp_path / "cache",
                           **{**FAST, "timeout": 2.0, "deadline": 1.0, "retries": 0})
    elapsed = time.monotonic() - start
    assert summary.failed == Counter(timeout=1)
    assert 0.9 <= elapsed < 2.0  # each byte comes within the read timeout: only the deadline stops it


def test_two_runs_on_one_cache_download_each_image_once(server: _Server, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    server.lag = 0.2
    server.bodies.update({f"/l{i}.png": png(colour=(i, 7, 7)) for i in range(3)})
    refs = [server.url(f"/l{i}.png") for i in range(3)]
    summaries: list[Any] = []

    def run() -> None:
        summaries.append(fetch_images(refs, tmp_path / "cache", **FAST))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert server.hits == Counter({r: 1 for r in ("/l0.png", "/l1.png", "/l2.png")})
    assert sorted((s.downloaded, s.cached) for s in summaries) == [(0, 3), (3, 0)]
    assert "waiting for another run on" in capsys.readouterr().err


def test_orphan_temp_files_of_a_killed_run_are_removed(server: _Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "ab").mkdir(parents=True)
    old = cache / "ab" / ".abc.png.123.456.tmp"
    old.write_bytes(b"half an image")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    newer = cache / "ab" / ".abd.png.123.457.tmp"  # written after this run started: not ours to remove
    newer.write_bytes(b"x")
    os.utime(newer, (time.time() + 3600, time.time() + 3600))
    keep = cache / "ab" / "abc.png"
    keep.write_bytes(b"a finished file")
    summary = fetch_images([server.url("/ok.png")], cache, **FAST)
    assert summary.orphans_removed == 1 and not old.exists() and newer.exists() and keep.exists()
    assert "removed 1 temp files left by an interrupted run" in str(summary)


def test_a_manifest_entry_outside_the_cache_is_fetched_again(server: _Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "secret.png").write_bytes(png())
    entry = {"ref": server.url("/ok.png"), "status": "ok", "path": "../secret.png"}
    (cache / MANIFEST).write_text(json.dumps(entry) + "\n")
    summary = fetch_images([server.url("/ok.png")], cache, **FAST)
    assert (summary.cached, summary.downloaded) == (0, 1)
    assert read_manifest(cache)[server.url("/ok.png")]["path"] != "../secret.png"


# ---------------------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(("ip", "private_ok", "refusal"), [
    ("93.184.216.34", False, None), ("2606:2800:220:1::1", False, None),
    ("127.0.0.1", False, "private_address"), ("127.0.0.1", True, None),
    ("10.1.2.3", False, "private_address"), ("10.1.2.3", True, None),
    ("192.168.0.1", False, "private_address"), ("172.16.0.1", False, "private_address"),
    ("100.64.0.1", False, "private_address"), ("::1", False, "private_address"), ("::1", True, None),
    ("fd00::1", False, "private_address"), ("::ffff:127.0.0.1", False, "private_address"),
    ("::ffff:10.0.0.1", False, "private_address"),
    ("169.254.169.254", False, "blocked_address"), ("169.254.169.254", True, "blocked_address"),
    ("fe80::1", True, "blocked_address"), ("224.0.0.1", True, "blocked_address"),
    ("ff02::1", True, "blocked_address"), ("0.0.0.0", True, "blocked_address"),
    ("::", True, "blocked_address"), ("240.0.0.1", True, "blocked_address"),
    ("::ffff:169.254.169.254", True, "blocked_address"),
])
def test_address_rule(ip: str, private_ok: bool, refusal: str | None) -> None:
    assert address_refusal(ip, private_ok) == refusal


def _fake_dns(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> list[str]:
    """Resolve `names` to fixed addresses (anything else as usual); returns the names looked up."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        if host in names:
            return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (ip, port) if ":" not in ip else (ip, port, 0, 0)) for ip in names[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


def test_private_and_special_hosts_are_refused_without_the_flag(server: _Server, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"metadata.example": ["169.254.169.254"],
                            "mixed.example": ["93.184.216.34", "10.0.0.7"]})
    port = server.server_address[1]
    refs = [server.url("/ok.png"), f"http://localhost:{port}/ok.png", f"http://[::1]:{port}/ok.png",
            "http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data", "http://metadata.example/a.png",
            "http://mixed.example/a.png", "http://0.0.0.0/a.png", f"http://2130706433:{port}/ok.png",
            f"http://[::ffff:127.0.0.1]:{port}/ok.png"]  # 127.0.0.1 spelt as an integer / IPv4-mapped
    summary = fetch_images(refs, tmp_path / "cache", **{**FAST, "allow_private_hosts": False, "retries": 2})
    assert summary.failed == Counter(private_address=7, blocked_address=3)
    assert server.hits == Counter()  # nothing reached the server
    manifest = read_manifest(tmp_path / "cache")
    assert manifest["http://169.254.169.254/latest/meta-data"] == {
        "ref": "http://169.254.169.254/latest/meta-data", "status": "failed", "error": "blocked_address",
        "retryable": False, "attempts": 1}


PUBLIC_STANDIN = "127.0.0.2"  # a loopback address the test treats as public: no traffic leaves the machine


def test_each_redirect_hop_is_checked_and_the_checked_address_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import effiminivlm.data.images.net as net_mod

    real = net_mod.address_refusal
    monkeypatch.setattr(net_mod, "address_refusal",
                        lambda ip, allow=False: None if ip == PUBLIC_STANDIN else real(ip, allow))
    asked = _fake_dns(monkeypatch, {"cdn.example": [PUBLIC_STANDIN]})
    with _serving(PUBLIC_STANDIN) as public, _serving() as private:
        port = public.server_address[1]
        base = f"http://cdn.example:{port}"
        private.bodies["/secret.png"] = png(colour=(6, 6, 6))
        public.redirects.update({
            "/to-private.png": private.url("/secret.png"), "/to-file.png": "file:///etc/passwd",
            "/to-localhost.png": f"http://localhost:{private.server_address[1]}/secret.png",
            "/to-ok.png": "/ok.png", "/loop.png": "/loop.png"})
        refs = [f"{base}{p}" for p in ("/to-private.png", "/to-file.png", "/to-localhost.png", "/to-ok.png",
                                       "/loop.png")]
        summary = fetch_images(refs, tmp_path / "cache", **{**FAST, "allow_private_hosts": False})
        assert summary.failed == Counter(private_address=2, redirect_scheme=1, too_many_redirects=1)
        assert summary.downloaded == 1 and public.hits["/ok.png"] == 1
        assert private.hits == Counter()  # the redirects to it never connected
        assert set(public.hosts) == {f"cdn.example:{port}"}  # the name stays in the Host header
        assert "cdn.example" in asked
        manifest = read_manifest(tmp_path / "cache")
        assert manifest[f"{base}/to-file.png"]["error"] == "redirect_scheme"
        # with the flag the internal redirect target is allowed
        again = fetch_images([f"{base}/to-private.png"], tmp_path / "cache",
                             **{**FAST, "retry_failed": True})
        assert again.downloaded == 1 and private.hits["/secret.png"] == 1
