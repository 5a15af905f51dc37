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
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from effiminivlm.errors import DataError

MANIFEST = "manifest.jsonl"
MIN_SIDE = 10  # images smaller than this on a side carry no usable signal (spacer GIFs, tracking pixels)
USER_AGENT = "effiminivlm-fetch/0.1 (one-time research image cache; python-urllib)"
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def is_url(ref: str) -> bool:
    """True for http(s) references, the only ones that need the download cache."""
    return ref[:8].lower().startswith(("http://", "https://"))


# ---------------------------------------------------------------------------------------------- loading


def _to_rgb(img: Image.Image) -> Image.Image:
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


def load_image_with_reason(path: str | os.PathLike[str]) -> tuple[Image.Image | None, str | None]:
    """(RGB image, None) or (None, reason) with reason one of missing, decode_error, too_small,
    decompression_bomb. Pillow's decompression-bomb limit stays on: a bomb is a counted failure."""
    try:
        with warnings.catch_warnings():  # over MAX_IMAGE_PIXELS is already a bomb for us, not a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                if min(img.size) < MIN_SIDE:
                    return None, "too_small"
                return _to_rgb(img), None
    except FileNotFoundError:
        return None, "missing"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "decompression_bomb"
    except (OSError, ValueError, SyntaxError, EOFError):  # PIL raises all of these for corrupt files
        return None, "decode_error"


def load_image(path: str | os.PathLike[str]) -> Image.Image | None:
    """An RGB image, or None when the file is missing, corrupt, a bomb or smaller than 10 px on a side."""
    return load_image_with_reason(path)[0]


# ---------------------------------------------------------------------------------------------- manifest


def read_manifest(cache_dir: Path) -> dict[str, dict[str, Any]]:
    """ref -> its last manifest entry. A torn last line (crash mid-write) is skipped, not fatal."""
    entries: dict[str, dict[str, Any]] = {}
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return entries
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                entries[entry["ref"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return entries


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
    """Resolves references to local files; never downloads (run `effiminivlm fetch-images` first)."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.manifest = read_manifest(self.cache_dir) if self.cache_dir is not None else {}
        self.stats = ResolveStats()
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _local(self, ref: str) -> Path | None:
        if ref[:5].lower() == "file:":
            parsed = urllib.parse.urlparse(ref)
            if parsed.netloc not in ("", "localhost"):
                return None
            return Path(urllib.request.url2pathname(parsed.path))
        return Path(ref)

    def resolve(self, ref: str) -> Path | None:
        """The local file behind `ref` (http(s) URL, local path or file:// URL), or None (counted)."""
        ref = (ref or "").strip()
        if not ref:
            self._count("unsupported")
            return None
        if is_url(ref):
            entry = self.manifest.get(ref)
            if entry is None:
                self._count("not_fetched")
                return None
            if entry.get("status") != "ok":
                self._count("fetch_failed")
                return None
            path = self.cache_dir / entry["path"]  # type: ignore[operator]
            if not path.is_file():
                self._count("cache_file_missing")
                return None
            self._count("resolved")
            return path
        if "://" in ref and ref[:5].lower() != "file:":
            self._count("unsupported")
            return None
        path = self._local(ref)
        if path is None:
            self._count("unsupported")
            return None
        if not path.is_file():
            self._count("missing_file")
            return None
        self._count("resolved")
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
    """What one fetch run did. `failed` counts this run's failures by reason."""

    cache_dir: Path
    refs: int = 0  # distinct http(s) references seen
    local: int = 0  # local / file:// references (nothing to fetch)
    downloaded: int = 0
    cached: int = 0  # already in the cache from an earlier run
    skipped_failed: int = 0  # failed permanently before; retried only with retry_failed=True
    failed: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        fails = sum(self.failed.values())
        reasons = ", ".join(f"{k}: {v}" for k, v in self.failed.most_common())
        text = (f"{self.refs} image URLs -> {self.cache_dir}: {self.downloaded} downloaded, {self.cached} "
                f"cached, {fails} failed" + (f" ({reasons})" if reasons else ""))
        if self.skipped_failed:
            text += f", {self.skipped_failed} skipped (failed permanently before; use --retry-failed)"
        if self.local:
            text += f"; {self.local} local references need no download"
        return text


def _http_get(url: str, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (http(s) checked)
            body = resp.read(max_bytes + 1)
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
    except (ConnectionError, http.client.HTTPException):
        raise _FetchError("connection", True) from None
    if len(body) > max_bytes:
        raise _FetchError("too_large", False)
    return body


def _check_image(body: bytes) -> str:
    """The file extension for a body that fully decodes as an image; raise _FetchError otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body)) as img:
                img.load()
                return _EXT.get(img.format or "", (img.format or "img").lower())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _FetchError("decompression_bomb", False) from None
    except (OSError, ValueError, SyntaxError, EOFError):
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
                sha = hashlib.sha256(body).hexdigest()
                rel = f"{sha[:2]}/{sha}.{ext}"
                self._write(self.cache_dir / rel, body)
                return {"ref": ref, "status": "ok", "sha256": sha, "path": rel, "attempts": attempts}
            except _FetchError as e:
                if not e.retryable or attempts > self.retries:
                    return {"ref": ref, "status": "failed", "error": e.reason, "retryable": e.retryable,
                            "attempts": attempts}
                delay = self.backoff * 2 ** (attempts - 1)
                time.sleep(min(e.retry_after if e.retry_after is not None else delay, self.max_backoff))

    @staticmethod
    def _write(path: Path, body: bytes) -> None:
        if path.is_file():  # content-addressed: same bytes already there
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(body)
        os.replace(tmp, path)


def prepared_image_refs(prepared_dir: str | os.PathLike[str]) -> list[str]:
    """Every image reference of a prepared dataset, in order. Reads only the `images` column (a full
    read_prepared of a large catalog would load all its text for nothing)."""
    import pyarrow.dataset as ds

    root = Path(prepared_dir)
    source = root / "data.parquet" if (root / "data.parquet").is_file() else root / "data"
    if not source.exists():
        raise DataError(f"{root} is not a prepared dataset (no data.parquet or data/); run `effiminivlm prepare`")
    try:
        column = ds.dataset(source, format="parquet").to_table(columns=["images"]).column("images")
    except Exception as e:  # pyarrow raises several types for a missing column / bad file
        raise DataError(f"{source}: cannot read the images column: {e}") from e
    return [ref for refs in column.to_pylist() for ref in (refs or [])]


def fetch_images(source: str | os.PathLike[str] | Iterable[str], cache_dir: str | os.PathLike[str] | None = None,
                 *, workers: int = 16, timeout: float = 10.0, retries: int = 3, retry_failed: bool = False,
                 backoff: float = 0.5, max_backoff: float = 30.0, max_bytes: int = 50 << 20,
                 progress: bool = True) -> FetchSummary:
    """Download every http(s) reference once into the content-addressed cache; resumable.

    `source` is a prepared dataset folder (cache defaults to `<it>/images`) or an iterable of references.
    `retries` is the number of retries after the first attempt, only for retryable failures (timeouts,
    connection errors, 5xx, 408, 429); 4xx and bodies that do not decode as images fail at once. Already
    downloaded refs are skipped, so are refs that failed permanently unless `retry_failed`; refs whose
    retries ran out on a transient error are tried again on the next run.
    """
    from tqdm.auto import tqdm

    if isinstance(source, str | os.PathLike):
        refs_in = prepared_image_refs(source)
        cache = Path(cache_dir) if cache_dir is not None else Path(source) / "images"
    else:
        if cache_dir is None:
            raise ValueError("fetch_images: cache_dir is required when source is a list of references")
        refs_in, cache = list(source), Path(cache_dir)
    if workers < 1 or retries < 0 or timeout <= 0:
        raise ValueError("fetch_images: need workers >= 1, retries >= 0 and timeout > 0")
    summary = FetchSummary(cache_dir=cache)
    urls = list(dict.fromkeys(r.strip() for r in refs_in if r and is_url(r.strip())))
    summary.refs, summary.local = len(urls), sum(1 for r in refs_in if r and not is_url(r.strip()))
    cache.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cache)
    todo = []
    for url in urls:
        entry = manifest.get(url)
        if entry and entry.get("status") == "ok" and (cache / entry.get("path", "")).is_file():
            summary.cached += 1
        elif entry and entry.get("status") == "failed" and not entry.get("retryable") and not retry_failed:
            summary.skipped_failed += 1
        else:
            todo.append(url)
    fetch = _Fetcher(cache, timeout, retries, backoff, max_backoff, max_bytes)
    # The main thread is the manifest's only writer: one flushed line per finished ref, so a crash loses
    # at most the downloads in flight. At most 4 * workers futures are pending, so memory stays flat.
    with (cache / MANIFEST).open("a", encoding="utf-8") as out, ThreadPoolExecutor(workers) as pool, \
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
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            raise
    return summary
