"""Image references -> local files -> RGB images: the store, the one-time download cache, and loading.

Why split this way: downloading is slow, flaky and needs a network, so it happens once, up front
(`fetch_images` / `effiminivlm fetch-images`), into a content-addressed cache with an append-only manifest
that survives a crash. Training and prediction only *resolve* references through that manifest
(`ImageStore`), so they are fast, offline and reproducible, and every reference that does not resolve or
decode is counted with its reason instead of silently turning into "no image".

Cache layout: `CACHE/manifest.jsonl` (one JSON object a line: ref, status ok|failed, sha256 + path or error,
retryable, attempts; the last line for a ref wins) and `CACHE/<sha[:2]>/<sha256>.<ext>` files named by the
sha256 of their bytes, so identical images behind different URLs are stored once.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from effiminivlm.errors import DataError, EffiMiniVLMError

MANIFEST = "manifest.jsonl"
MIN_SIDE = 10  # images smaller than this on a side carry no usable signal (spacer GIFs, tracking pixels)
USER_AGENT = "effiminivlm-fetch/0.1 (one-time research image cache; python-urllib)"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # 2+ letters: C:/x is a Windows path
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def is_url(ref: str) -> bool:
    """True for http(s) references, the only ones that need the download cache."""
    return ref[:8].lower().startswith(("http://", "https://"))


# ---------------------------------------------------------------------------------------------- loading


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (product photos sit on white; black would be a new cue)."""
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


def _too_many_pixels(size: tuple[int, int]) -> bool:
    """Pillow's own decompression-bomb limit, applied at 1x (Pillow only warns between 1x and 2x).

    Checked explicitly instead of turning the warning into an error with `warnings.catch_warnings`, which
    swaps process-wide filters and is not safe in fetch_images' worker threads."""
    limit = Image.MAX_IMAGE_PIXELS
    return bool(limit) and size[0] * size[1] > limit


def load_image_with_reason(path: str | os.PathLike[str]) -> tuple[Image.Image | None, str | None]:
    """(RGB image, None) or (None, reason) with reason one of missing, decode_error, too_small,
    decompression_bomb. Pillow's decompression-bomb limit stays on: a bomb is a counted failure."""
    try:
        with Image.open(path) as img:  # reads the header only: size checks before paying for the decode
            if _too_many_pixels(img.size):
                return None, "decompression_bomb"
            if min(img.size) < MIN_SIDE:
                return None, "too_small"
            img.load()
            return to_rgb(img), None
    except FileNotFoundError:
        return None, "missing"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the latter under `-W error`
        return None, "decompression_bomb"
    except Exception:  # noqa: BLE001 - a file we did not write may break a decoder in any way; it is counted
        return None, "decode_error"


def load_image(path: str | os.PathLike[str]) -> Image.Image | None:
    """An RGB image, or None when the file is missing, corrupt, a bomb or smaller than 10 px on a side."""
    return load_image_with_reason(path)[0]


# ---------------------------------------------------------------------------------------------- manifest


def read_manifest(cache_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """ref -> its last manifest entry. A torn line (crash mid-write) is skipped, not fatal."""
    entries: dict[str, dict[str, Any]] = {}
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return entries
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
                entries[entry["ref"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return entries


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


# ---------------------------------------------------------------------------------------------- the store


@dataclass
class ResolveStats:
    """Why references did (not) resolve; per process (each DataLoader worker counts its own)."""

    resolved: int = 0
    missing_file: int = 0  # a local path / file:// URL whose file does not exist
    not_fetched: int = 0  # an http(s) URL absent from the manifest (or no cache given)
    fetch_failed: int = 0  # the manifest records a failed download
    cache_file_missing: int = 0  # the manifest says ok but the cached file is gone
    unsupported: int = 0  # empty, or a scheme we do not read (s3://, data:, ...)
    load_failed: Counter[str] = field(default_factory=Counter)  # resolved, but load_image refused it

    def unresolved(self) -> dict[str, int]:
        """Non-zero failure counters, for reports."""
        counts = {k: getattr(self, k) for k in
                  ("missing_file", "not_fetched", "fetch_failed", "cache_file_missing", "unsupported")}
        counts.update(self.load_failed)
        return {k: v for k, v in counts.items() if v}


class ImageStore:
    """Resolves references to local files; never downloads (run `effiminivlm fetch-images` first).

    Picklable (the lock is recreated), so a Dataset holding one works with spawn-started DataLoader workers.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.manifest = read_manifest(self.cache_dir) if self.cache_dir is not None else {}
        self.stats = ResolveStats()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _lookup(self, ref: str) -> tuple[Path | None, str]:
        """(path, "resolved") or (None, the ResolveStats counter to bump)."""
        if not ref:
            return None, "unsupported"
        if is_url(ref):
            entry = self.manifest.get(ref)
            if entry is None or self.cache_dir is None:
                return None, "not_fetched"
            if entry.get("status") != "ok" or not entry.get("path"):
                return None, "fetch_failed"
            path = self.cache_dir / entry["path"]
            return (path, "resolved") if path.is_file() else (None, "cache_file_missing")
        if _SCHEME.match(ref):
            if ref[:5].lower() != "file:":
                return None, "unsupported"  # s3://, data:, ftp://: nothing here can read them
            parsed = urllib.parse.urlparse(ref)
            if parsed.netloc not in ("", "localhost"):
                return None, "unsupported"  # file://otherhost/...
            path = Path(urllib.request.url2pathname(parsed.path))
        else:
            path = Path(ref)
        return (path, "resolved") if path.is_file() else (None, "missing_file")

    def resolve(self, ref: str) -> Path | None:
        """The local file behind `ref` (http(s) URL, local path or file:// URL), or None (counted)."""
        path, outcome = self._lookup((ref or "").strip())
        self._count(outcome)
        return path

    def open(self, ref: str) -> Image.Image | None:
        """resolve + load_image, counting decode failures in `stats.load_failed` by reason."""
        path = self.resolve(ref)
        if path is None:
            return None
        img, reason = load_image_with_reason(path)
        if reason is not None:
            with self._lock:
                self.stats.load_failed[reason] += 1
        return img


# ---------------------------------------------------------------------------------------------- fetching


class _FetchError(Exception):
    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retryable, self.retry_after = reason, retryable, retry_after


@dataclass
class FetchSummary:
    """What one fetch run did; `failed` counts this run's failures by reason, `skipped_failed` the earlier
    failures it did not retry (by reason)."""

    cache_dir: Path
    refs: int = 0  # distinct http(s) references seen
    local: int = 0  # distinct local / file:// references (nothing to fetch)
    downloaded: int = 0
    cached: int = 0  # already in the cache from an earlier run
    failed: Counter[str] = field(default_factory=Counter)
    skipped_failed: Counter[str] = field(default_factory=Counter)

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
        return text


def _http_get(url: str, timeout: float, max_bytes: int) -> bytes:
    """The body of `url`. `timeout` bounds each connect/read; the whole transfer gets max(60, 6 x timeout)
    seconds, so a server that drips bytes cannot hold a worker forever."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    deadline = time.monotonic() + max(60.0, 6 * timeout)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (http(s) checked)
            chunks, size = [], 0
            while chunk := resp.read(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise _FetchError("too_large", False)
                if time.monotonic() > deadline:
                    raise _FetchError("timeout", True)
            return b"".join(chunks)
    except urllib.error.HTTPError as e:
        e.close()
        retry_after = e.headers.get("Retry-After") if e.headers else None
        delay = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
        raise _FetchError(f"http_{e.code}", e.code >= 500 or e.code in (408, 429), delay) from None
    except urllib.error.URLError as e:
        timed_out = isinstance(e.reason, TimeoutError | socket.timeout)
        raise _FetchError("timeout" if timed_out else "connection", True) from None
    except TimeoutError:
        raise _FetchError("timeout", True) from None
    except (OSError, http.client.HTTPException):  # resets, TLS errors, truncated bodies
        raise _FetchError("connection", True) from None
    except ValueError:  # http.client.InvalidURL, non-ASCII URLs
        raise _FetchError("invalid_url", False) from None


def _check_image(body: bytes) -> str:
    """The file extension for a body that fully decodes as an image; raise _FetchError otherwise."""
    try:
        with Image.open(io.BytesIO(body)) as img:
            if _too_many_pixels(img.size):
                raise _FetchError("decompression_bomb", False)
            img.load()
            return _EXT.get(img.format or "", (img.format or "img").lower())
    except _FetchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _FetchError("decompression_bomb", False) from None
    except Exception:  # noqa: BLE001 - an HTML error page, a truncated body, a broken decoder
        raise _FetchError("not_an_image", False) from None


class _Fetcher:
    """One download with retries and exponential backoff; writes the file atomically, returns its entry."""

    def __init__(self, cache_dir: Path, timeout: float, retries: int, backoff: float, max_backoff: float,
                 max_bytes: int) -> None:
        self.cache_dir, self.timeout, self.retries = cache_dir, timeout, retries
        self.backoff, self.max_backoff, self.max_bytes = backoff, max_backoff, max_bytes

    def __call__(self, ref: str) -> dict[str, Any]:
        attempts = 0
        while True:
            attempts += 1
            try:
                body = _http_get(ref, self.timeout, self.max_bytes)
                ext = _check_image(body)
            except _FetchError as e:
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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(body)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise EffiMiniVLMError(f"cannot write to the image cache {path.parent}: {e}") from e


def prepared_image_refs(prepared_dir: str | os.PathLike[str]) -> list[str]:
    """Every image reference of a prepared dataset, in order. Reads only the `images` column (a full
    read_prepared of a large catalog would load all its text for nothing)."""
    import pyarrow.dataset as ds

    root = Path(prepared_dir)
    source = root / "data.parquet" if (root / "data.parquet").is_file() else root / "data"
    if not source.exists():
        raise DataError(f"{root} is not a prepared dataset (no data.parquet or data/); "
                        "run `effiminivlm prepare` first")
    try:
        column = ds.dataset(source, format="parquet").to_table(columns=["images"]).column("images")
    except Exception as e:  # pyarrow raises several types for a missing column / bad file
        raise DataError(f"{source}: cannot read the images column: {e}") from e
    return [ref for refs in column.to_pylist() for ref in (refs or [])]


def fetch_images(source: str | os.PathLike[str] | Iterable[str],
                 cache_dir: str | os.PathLike[str] | None = None, *, workers: int = 16,
                 timeout: float = 10.0, retries: int = 3, retry_failed: bool = False,
                 backoff: float = 0.5, max_backoff: float = 30.0, max_bytes: int = 50 << 20,
                 progress: bool = True) -> FetchSummary:
    """Download every http(s) reference once into the content-addressed cache; resumable.

    `source` is a prepared dataset folder (cache defaults to `<it>/images`, where train / evaluate / predict
    look by default) or an iterable of references. `retries` is the number of retries after the first
    attempt, only for transient failures (timeouts, connection errors, 5xx, 408, 429; a Retry-After header
    is honoured up to `max_backoff`); 4xx and bodies that do not decode as images fail at once. A re-run
    skips what is cached and what failed before (each failure is recorded with its reason, so a dead link
    is not retried forever); `retry_failed` tries the failures again.
    """
    from tqdm.auto import tqdm

    if workers < 1 or retries < 0 or timeout <= 0:
        raise EffiMiniVLMError(f"fetch-images: need --workers >= 1, --retries >= 0 and --timeout > 0 "
                               f"(got {workers}, {retries}, {timeout})")
    if isinstance(source, str | os.PathLike):
        refs_in = prepared_image_refs(source)
        cache = Path(cache_dir) if cache_dir is not None else Path(source) / "images"
    else:
        if cache_dir is None:
            raise ValueError("fetch_images: cache_dir is required when source is a list of references")
        refs_in, cache = list(source), Path(cache_dir)
    stripped = [r.strip() for r in refs_in if r and r.strip()]
    urls = list(dict.fromkeys(r for r in stripped if is_url(r)))
    summary = FetchSummary(cache_dir=cache, refs=len(urls), local=len({r for r in stripped if not is_url(r)}))
    if not urls:  # nothing to download: do not create a cache folder that would look like one
        return summary
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EffiMiniVLMError(f"cannot create the image cache {cache}: {e}") from e
    manifest = read_manifest(cache)
    todo = []
    for url in urls:
        entry = manifest.get(url) or {}
        if entry.get("status") == "ok" and entry.get("path") and (cache / entry["path"]).is_file():
            summary.cached += 1
        elif entry.get("status") == "failed" and not retry_failed:
            summary.skipped_failed[str(entry.get("error"))] += 1
        else:
            todo.append(url)
    fetch = _Fetcher(cache, timeout, retries, backoff, max_backoff, max_bytes)
    # The main thread is the manifest's only writer: one flushed line per finished ref, so a crash loses
    # at most the downloads in flight. At most 4 * workers futures are pending, so memory stays flat.
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
    return summary
