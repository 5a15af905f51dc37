"""Images already in memory (service uploads): the same decode rules and the same tensors as files."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from effiminivlm.data.dataset import ProductDataset
from effiminivlm.data.images import decode_image_bytes, load_image_with_reason


def _png(size, mode="RGBA", color=(10, 120, 200, 128)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def test_bytes_decode_like_the_file(tmp_path):
    body = _png((40, 30))
    (tmp_path / "a.png").write_bytes(body)
    from_file, _ = load_image_with_reason(tmp_path / "a.png")
    from_bytes, reason = decode_image_bytes(body)
    assert reason is None and from_bytes.mode == "RGB"  # transparency composited, as for files
    assert np.array_equal(np.asarray(from_file), np.asarray(from_bytes))


@pytest.mark.parametrize(("body", "limit", "reason"), [
    (_png((5, 40)), None, "too_small"),
    (b"<html>not an image</html>", None, "decode_error"),
    (_png((100, 100)), 9_999, "too_many_pixels"),
])
def test_bytes_refusals_are_named(body, limit, reason):
    assert decode_image_bytes(body, limit) == (None, reason)


def test_decoded_images_replace_references_through_the_same_transform(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((32, 32), "RGB", (200, 10, 10)))
    img = decode_image_bytes(_png((32, 32), "RGB", (200, 10, 10)))[0]
    table = pa.table({"parent_asin": ["x", "y", "z"], "category": ["c"] * 3, "title": ["t"] * 3,
                      "features": [""] * 3, "description": [""] * 3,
                      "images": [[str(tmp_path / "a.png")], [], ["/nowhere.png"]]})
    transform = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32).copy())  # noqa: E731
    by_ref = ProductDataset(table, transform)
    in_mem = ProductDataset(table, transform, decoded=[None, [img], [img]])
    assert torch.equal(by_ref[0].images[0], in_mem[1].images[0])  # same pixels either way
    assert in_mem[0].image_status == "ok" and in_mem[1].image_status == "ok"
    assert in_mem[2].image_status == "ok" and by_ref[2].image_status != "ok"  # in-memory wins over refs
    assert ProductDataset(table, None, images="none", decoded=[[img]] * 3)[0].images == []
    with pytest.raises(ValueError, match="3 rows"):
        ProductDataset(table, transform, decoded=[[img]])
