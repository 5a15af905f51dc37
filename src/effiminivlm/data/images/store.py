"""Image references -> local files, offline: the download manifest, and the allowed-roots rule.

Why a rule for local paths: references come from files we did not write (metadata, a shared prepared
dataset, a cache manifest). Read as given, `file:///etc/passwd`, `/home/x/.ssh/id_rsa`, `~/...` or
`../../secret` would be opened by Pillow. So a local reference is read only when it resolves (symlinks
followed) inside an allowed root: the folder of the metadata file it came from (recorded in the prepared
dataset's summary.json as `image_roots`), the image cache, or an `--images-dir` the user named. Everything
else is refused and counted as `outside_images_root`; a manifest entry that points out of its cache is
refused as `outside_cache`.

Cache layout: `CACHE/manifest.jsonl` (one JSON object a line: ref, status ok|failed, sha256 + path or error,
retryable, attempts; the last line for a ref wins) and `CACHE/<sha[:2]>/<sha256>.<ext>` files named by the
sha256 of their bytes, so identical images behind different URLs are stored once.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from effiminivlm.data.images.decode import load_image_with_reason
from effiminivlm.errors import DataError

MANIFEST = "manifest.jsonl"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # 2+ letters: C:/x is a Windows path


def is_url(ref: str) -> bool:
    """True for http(s) references, the only ones that need the download cache."""
    return ref[:8].lower().startswith(("http://", "https://"))


def local_path(ref: str) -> tuple[Path | None, str | None]:
    """(path, None) for a local path or a file:// URL on this host, else (None, "unsupported") for other
    schemes, file://otherhost and empty references. The path is not checked against any root here."""
    if not ref:
        return None, "unsupported"
    if _SCHEME.match(ref):
        if ref[:5].lower() != "file:":
            return None, "unsupported"  # s3://, data:, ftp://: nothing here can read them
        parsed = urllib.parse.urlparse(ref)
        if parsed.netloc not in ("", "localhost"):
            return None, "unsupported"  # file://otherhost/...
        return Path(urllib.request.url2pathname(parsed.path)), None
    return Path(ref), None


def confine(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> Path | None:
    """`path` resolved (symlinks followed, `..` collapsed) when that lies inside one of `roots`, else None.

    A `~` path is never expanded: a reference in data must not depend on who runs the tool."""
    text = os.fspath(path)
    if text.startswith("~"):
        return None
    try:
        resolved = Path(text).resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loops, NUL bytes
        return None
    for root in roots:
        try:
            if resolved.is_relative_to(Path(root).resolve()):
                return resolved
        except (OSError, RuntimeError, ValueError):
            continue
    return None


def image_roots_of(files: Iterable[dict[str, Any]]) -> list[str]:
    """The allowed image roots of a prepared dataset: the absolute folders of its metadata files
    (`InputLog.files` entries), stored as `image_roots` in summary.json by `prepare`."""
    return sorted({str(Path(f["path"]).resolve().parent) for f in files if f.get("path")})


def prepared_image_roots(prepared_dir: str | os.PathLike[str]) -> list[Path]:
    """The roots recorded by `prepare` in summary.json; for datasets prepared before `image_roots` existed,
    the folders of its recorded inputs (relative ones taken from the current folder)."""
    try:
        summary = json.loads((Path(prepared_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(summary, dict):
        return []
    roots = summary.get("image_roots")
    if not isinstance(roots, list):
        inputs = summary.get("inputs") if isinstance(summary.get("inputs"), list) else []
        roots = image_roots_of(f for f in inputs if isinstance(f, dict))
    return [Path(r) for r in roots if isinstance(r, str)]


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


def cached_file(cache_dir: Path, entry: dict[str, Any]) -> tuple[Path | None, str]:
    """(file, "resolved") for an ok manifest entry whose file is inside the cache, else (None, counter)."""
    rel = entry.get("path")
    if entry.get("status") != "ok" or not isinstance(rel, str) or not rel:
        return None, "fetch_failed"
    path = confine(cache_dir / rel, [cache_dir])
    if path is None:
        return None, "outside_cache"  # "../../etc/passwd" or an absolute path in a tampered manifest
    return (path, "resolved") if path.is_file() else (None, "cache_file_missing")


@dataclass
class ResolveStats:
    """Why references did (not) resolve; per process (each DataLoader worker counts its own)."""

    resolved: int = 0
    missing_file: int = 0  # a local path / file:// URL whose file does not exist
    not_fetched: int = 0  # an http(s) URL absent from the manifest (or no cache given)
    fetch_failed: int = 0  # the manifest records a failed download
    cache_file_missing: int = 0  # the manifest says ok but the cached file is gone
    unsupported: int = 0  # empty, or a scheme we do not read (s3://, data:, ...)
    outside_images_root: int = 0  # a local path outside the allowed roots (refused, never opened)
    outside_cache: int = 0  # a manifest entry pointing out of the cache folder (refused, never opened)
    load_failed: Counter[str] = field(default_factory=Counter)  # resolved, but load_image refused it

    def unresolved(self) -> dict[str, int]:
        """Non-zero failure counters, for reports."""
        counts = {k: getattr(self, k) for k in
                  ("missing_file", "not_fetched", "fetch_failed", "cache_file_missing", "unsupported",
                   "outside_images_root", "outside_cache")}
        counts.update(self.load_failed)
        return {k: v for k, v in counts.items() if v}


class ImageStore:
    """Resolves references to local files; never downloads (run `effiminivlm fetch-images` first).

    `allowed_roots`: local references resolving outside these folders (or the cache) are refused and
    counted; None reads any local path, for references an earlier reader already confined (metadata and
    LoViF readers do). Use `ImageStore.for_prepared` for a prepared dataset. Picklable (the lock is
    recreated), so a Dataset holding one works with spawn-started DataLoader workers.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None,
                 allowed_roots: Iterable[str | os.PathLike[str]] | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.manifest = read_manifest(self.cache_dir) if self.cache_dir is not None else {}
        self.allowed_roots: list[Path] | None = None
        if allowed_roots is not None:
            roots = [Path(r) for r in allowed_roots]
            self.allowed_roots = roots + ([self.cache_dir] if self.cache_dir is not None else [])
        self.stats = ResolveStats()
        self._lock = threading.Lock()

    @classmethod
    def for_prepared(cls, data_dir: str | os.PathLike[str],
                     images_dir: str | os.PathLike[str] | None = None) -> ImageStore:
        """The store for a prepared dataset: cache `images_dir` (default DATA/images when present); local
        references allowed inside the dataset's recorded metadata folders, the cache and `images_dir`."""
        cache: Path | None = Path(images_dir) if images_dir is not None else Path(data_dir) / "images"
        if images_dir is None and not cache.is_dir():
            cache = None
        return cls(cache, allowed_roots=prepared_image_roots(data_dir))

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
        if is_url(ref):
            entry = self.manifest.get(ref)
            if entry is None or self.cache_dir is None:
                return None, "not_fetched"
            return cached_file(self.cache_dir, entry)
        path, why = local_path(ref)
        if path is None:
            return None, why or "unsupported"
        if self.allowed_roots is not None:
            confined = confine(path, self.allowed_roots)
            if confined is None:
                return None, "outside_images_root"
            path = confined
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

    def load_images(self, refs: list[str], mode: str, transform: Callable[[Image.Image], Any],
                    max_images: int = 8, draft: int | None = None) -> tuple[list[Any], str]:
        """(transformed images, status) of an item's references, the rule every scorer shares: "first"
        takes the first reference that resolves and decodes ("ok", or "fallback" when a later one was used),
        "mean" up to `max_images` of them, "none" none ("skipped"); no usable image gives "no_ref" or the
        first failure's reason (unresolved, missing, decode_error, ...). `draft`: see
        `load_image_with_reason`."""
        if mode == "none":
            return [], "skipped"
        if not refs:
            return [], "no_ref"
        out: list[Any] = []
        first_failure = None
        for k, ref in enumerate(refs):
            path = self.resolve(ref)
            if path is None:
                first_failure = first_failure or "unresolved"
                continue
            img, reason = load_image_with_reason(path, draft=draft)
            if img is None:
                first_failure = first_failure or (reason or "load_failed")
                continue
            out.append(transform(img))
            if mode == "first":
                return out, "ok" if k == 0 else "fallback"
            if len(out) >= max_images:
                break
        if out:
            return out, "ok"
        return [], first_failure or "unresolved"


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
