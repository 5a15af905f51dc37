"""The one-time download of every http(s) image reference into the content-addressed cache.

Resumable and crash-safe: one manifest line per finished ref (written by the main thread only), files
written atomically under their sha256, failures recorded with their reason so a dead link is not retried
forever. A lock file makes a second run on the same cache wait instead of downloading the same images
again, and lets a run remove the temp files a killed run left. Each worker thread keeps one keep-alive
session (`net.Session`): addresses checked against the SSRF rule, redirects re-checked, a total deadline
per attempt (see `net`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effiminivlm.data.images.decode import image_extension
from effiminivlm.data.images.net import FetchError, Session
from effiminivlm.data.images.store import MANIFEST, cached_file, is_url, prepared_image_refs, read_manifest
from effiminivlm.errors import EffiMiniVLMError

LOCK_FILE = ".fetch.lock"
_TMP_SUFFIX = ".tmp"


@dataclass
class FetchSummary:
    """What one fetch run did; `failed` counts this run's failures by reason, `skipped_failed` the earlier
    failures it did not retry (by reason), `orphans_removed` the temp files a killed run had left."""

    cache_dir: Path
    refs: int = 0  # distinct http(s) references seen
    local: int = 0  # distinct local / file:// references (nothing to fetch)
    downloaded: int = 0
    cached: int = 0  # already in the cache from an earlier run
    failed: Counter[str] = field(default_factory=Counter)
    skipped_failed: Counter[str] = field(default_factory=Counter)
    orphans_removed: int = 0

    def __str__(self) -> str:
        def by_reason(c: Counter[str]) -> str:
            return " (" + ", ".join(f"{k}: {v}" for k, v in c.most_common()) + ")" if c else ""

        text = (f"{self.refs} image URLs -> {self.cache_dir}: {self.downloaded} downloaded, {self.cached} "
                f"already cached, {sum(self.failed.values())} failed{by_reason(self.failed)}")
        if self.skipped_failed:
            text += (f", {sum(self.skipped_failed.values())} failed in an earlier run and were not retried"
                     f"{by_reason(self.skipped_failed)}; pass --retry-failed to try them again")
        if self.local:
            text += f"; {self.local} local references need no download"
        if self.orphans_removed:
            text += f"; removed {self.orphans_removed} temp files left by an interrupted run"
        return text


class _Fetcher:
    """One download with retries and exponential backoff; writes the file atomically, returns its entry.
    Each worker thread gets its own session (keep-alive pool); `close` closes them all."""

    def __init__(self, cache_dir: Path, timeout: float, retries: int, backoff: float, max_backoff: float,
                 max_bytes: int, deadline: float, allow_private: bool) -> None:
        self.cache_dir, self.timeout, self.retries = cache_dir, timeout, retries
        self.backoff, self.max_backoff, self.max_bytes = backoff, max_backoff, max_bytes
        self.deadline, self.allow_private = deadline, allow_private
        self._local = threading.local()
        self._sessions: list[Session] = []
        self._sessions_lock = threading.Lock()
        self._ssl_context: Any = None

    def _session(self) -> Session:
        session = getattr(self._local, "session", None)
        if session is None:
            with self._sessions_lock:
                if self._ssl_context is None:  # one CA bundle load per run, shared by the workers
                    import httpx2

                    self._ssl_context = httpx2.create_ssl_context(trust_env=False)
                session = self._local.session = Session(self.timeout, self.allow_private, self._ssl_context)
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def __call__(self, ref: str) -> dict[str, Any]:
        attempts = 0
        while True:
            attempts += 1
            try:
                body = self._session().get(ref, self.deadline, self.max_bytes)
                ext, why = image_extension(body)
                if ext is None:
                    raise FetchError(why or "not_an_image", False)
            except FetchError as e:
                if not e.retryable or attempts > self.retries:
                    return {"ref": ref, "status": "failed", "error": e.reason, "retryable": e.retryable,
                            "attempts": attempts}
                delay = self.backoff * 2 ** (attempts - 1) * random.uniform(0.75, 1.25)  # jitter: no herd
                time.sleep(min(e.retry_after if e.retry_after is not None else delay, self.max_backoff))
                continue
            sha = hashlib.sha256(body).hexdigest()
            rel = f"{sha[:2]}/{sha}.{ext}"
            self._write(self.cache_dir / rel, body)
            return {"ref": ref, "status": "ok", "sha256": sha, "path": rel, "attempts": attempts}

    @staticmethod
    def _write(path: Path, body: bytes) -> None:
        """Atomic (temp file + rename), so a crash never leaves a truncated file under a valid name. A full
        disk or a read-only cache stops the run: every later download would fail the same way."""
        if path.is_file():  # content-addressed: same bytes already there
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{_TMP_SUFFIX}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(body)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise EffiMiniVLMError(f"cannot write to the image cache {path.parent}: {e}") from e


def _open_manifest(cache: Path) -> io.TextIOWrapper:
    """The manifest for appending; a torn last line is terminated first, or the next entry would be glued
    to it and lost too."""
    path = cache / MANIFEST
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            with path.open("a", encoding="utf-8") as f:
                f.write("\n")
    return path.open("a", encoding="utf-8")


def remove_orphans(cache: Path, started: float) -> int:
    """Delete the temp files (`<sha>/.<name>.<pid>.<thread>.tmp`) that a killed run left, older than this
    run's start. Called with the cache lock held, so no other run can be writing them."""
    removed = 0
    for tmp in cache.glob(f"*/.*{_TMP_SUFFIX}"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < started:
                tmp.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def _cache_lock(cache: Path) -> Any:
    """The cache's run lock, acquired: a second run waits (saying so) for the first to finish, then finds
    its downloads in the manifest instead of fetching them again."""
    from filelock import FileLock, Timeout

    lock = FileLock(cache / LOCK_FILE, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"fetch-images: waiting for another run on {cache} to finish (lock {cache / LOCK_FILE})",
              file=sys.stderr, flush=True)
        lock.acquire()
    return lock


def fetch_images(source: str | os.PathLike[str] | Iterable[str],
                 cache_dir: str | os.PathLike[str] | None = None, *, workers: int = 16,
                 timeout: float = 10.0, retries: int = 3, retry_failed: bool = False,
                 backoff: float = 0.5, max_backoff: float = 30.0, max_bytes: int = 50 << 20,
                 deadline: float | None = None, allow_private_hosts: bool = False,
                 progress: bool = True) -> FetchSummary:
    """Download every http(s) reference once into the content-addressed cache; resumable.

    `source` is a prepared dataset folder (cache defaults to `<it>/images`, where train / evaluate / predict
    look by default) or an iterable of references. `timeout` bounds each connect / read, `deadline` (default
    max(60, 6 x timeout) seconds) one whole attempt. `retries` is the number of retries after the first
    attempt, only for transient failures (timeouts, connection errors, 5xx, 408, 429; a Retry-After header
    is honoured up to `max_backoff`); 4xx, refused addresses and bodies that do not decode as images fail at
    once. A re-run skips what is cached and what failed before (each failure is recorded with its reason,
    so a dead link is not retried forever); `retry_failed` tries the failures again. `allow_private_hosts`
    allows loopback / private addresses (an internal CDN); see the module docstring for the address rule.
    """
    from tqdm.auto import tqdm

    deadline = max(60.0, 6 * timeout) if deadline is None else deadline
    if workers < 1 or retries < 0 or timeout <= 0 or deadline <= 0:
        raise EffiMiniVLMError(f"fetch-images: need --workers >= 1, --retries >= 0, --timeout > 0 and "
                               f"--deadline > 0 (got {workers}, {retries}, {timeout}, {deadline})")
    if isinstance(source, str | os.PathLike):
        refs_in = prepared_image_refs(source)
        cache = Path(cache_dir) if cache_dir is not None else Path(source) / "images"
    else:
        if cache_dir is None:
            raise ValueError("fetch_images: cache_dir is required when source is a list of references")
        refs_in, cache = list(source), Path(cache_dir)
    stripped = [r.strip() for r in refs_in if isinstance(r, str) and r.strip()]
    urls = list(dict.fromkeys(r for r in stripped if is_url(r)))
    summary = FetchSummary(cache_dir=cache, refs=len(urls), local=len({r for r in stripped if not is_url(r)}))
    if not urls:  # nothing to download: do not create a cache folder that would look like one
        return summary
    started = time.time()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = _cache_lock(cache)
    except OSError as e:
        raise EffiMiniVLMError(f"cannot create the image cache {cache}: {e}") from e
    fetch = _Fetcher(cache, timeout, retries, backoff, max_backoff, max_bytes, deadline, allow_private_hosts)
    try:
        summary.orphans_removed = remove_orphans(cache, started)
        manifest = read_manifest(cache)  # read under the lock: a run that just finished is seen whole
        todo = []
        for url in urls:
            entry = manifest.get(url) or {}
            if entry.get("status") == "ok" and cached_file(cache, entry)[0] is not None:
                summary.cached += 1
            elif entry.get("status") == "failed" and not retry_failed:
                summary.skipped_failed[str(entry.get("error"))] += 1
            else:
                todo.append(url)
        _run(todo, fetch, cache, workers, summary, progress, tqdm)
    finally:
        fetch.close()
        lock.release()
    return summary


def _run(todo: list[str], fetch: _Fetcher, cache: Path, workers: int, summary: FetchSummary, progress: bool,
         tqdm: Any) -> None:
    """Download `todo` on `workers` threads. The main thread is the manifest's only writer: one flushed
    line per finished ref, so a crash loses at most the downloads in flight. At most 4 * workers futures
    are pending, so memory stays flat."""
    with _open_manifest(cache) as out, ThreadPoolExecutor(workers, "fetch-images") as pool, \
            tqdm(total=len(todo), desc="fetch images", unit="img", disable=not progress) as bar:
        pending: set[Future[dict[str, Any]]] = set()

        def drain(done: Iterable[Future[dict[str, Any]]]) -> None:
            for fut in done:
                entry = fut.result()
                out.write(json.dumps(entry, ensure_ascii=False) + "\n")
                out.flush()
                if entry["status"] == "ok":
                    summary.downloaded += 1
                else:
                    summary.failed[entry["error"]] += 1
                bar.update(1)

        try:
            for url in todo:
                pending.add(pool.submit(fetch, url))
                if len(pending) >= 4 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    drain(done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                drain(done)
        except BaseException:  # Ctrl-C, a full disk: stop queued downloads, keep what the manifest has
            pool.shutdown(wait=False, cancel_futures=True)
            raise
