"""Image references -> local files -> RGB images.

Why split this way: downloading is slow, flaky and needs a network, so it happens once, up front
(`fetch_images` / `effiminivlm fetch-images`, in `fetch`), into a content-addressed cache with an append-only
manifest that survives a crash. Training and prediction only *resolve* references through that manifest
(`ImageStore`, in `store`, which also confines local paths to allowed roots), so they are fast, offline and
reproducible, and every reference that does not resolve or decode is counted with its reason (`decode`).
"""

from effiminivlm.data.images.decode import (
    MIN_SIDE,
    decode_image_bytes,
    image_extension,
    load_image,
    load_image_with_reason,
    to_rgb,
    too_many_pixels,
)
from effiminivlm.data.images.fetch import FetchSummary, fetch_images, remove_orphans
from effiminivlm.data.images.net import address_refusal, checked_addresses
from effiminivlm.data.images.store import (
    MANIFEST,
    ImageStore,
    ResolveStats,
    cached_file,
    confine,
    image_roots_of,
    is_url,
    local_path,
    prepared_image_refs,
    prepared_image_roots,
    read_manifest,
)

__all__ = [
    "MANIFEST", "MIN_SIDE", "FetchSummary", "ImageStore", "ResolveStats", "address_refusal", "cached_file",
    "checked_addresses", "confine", "decode_image_bytes", "fetch_images", "image_extension", "image_roots_of",
    "is_url",
    "load_image", "load_image_with_reason", "local_path", "prepared_image_refs", "prepared_image_roots",
    "read_manifest", "remove_orphans", "to_rgb", "too_many_pixels",
]
