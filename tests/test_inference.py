"""The one prediction loop (`effiminivlm.inference`): loader order, targets carried along, eval mode restored,
the canonical loader (images, padding) and the image mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from effiminivlm.config import load_recipe
from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import read_prepared
from effiminivlm.inference import SCORE_RANGE, forward_batch, image_mode, make_loader, run_inference
from effiminivlm.models.factory import create_model, create_tokenizer


@pytest.fixture(scope="module")
def tiny():
    cfg = load_recipe("tiny").model
    torch.manual_seed(0)
    return create_model(cfg, pretrained=False), create_tokenizer(cfg)


def test_run_inference_keeps_loader_order_and_targets(tiny, prepared) -> None:
    model, tok = tiny
    table = read_prepared(prepared, "test")
    model.train()  # run_inference must predict in eval mode and restore the caller's mode
    res = run_inference(model, make_loader(model, tok, table, batch_size=5), torch.device("cpu"),
                        progress=False)
    assert model.training
    assert res.item_id == table.column("parent_asin").to_pylist()
    np.testing.assert_allclose(res.target, table.column("average_rating").to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.rating_number, table.column("rating_number").to_numpy())
    assert res.pred.shape == (table.num_rows,) and np.isfinite(res.pred).all()
    assert res.image_status["ok"] == table.num_rows and res.seconds > 0
    # the same rows in one batch give the same predictions: batching and padding do not leak
    whole = run_inference(model, make_loader(model, tok, table, batch_size=table.num_rows),
                          torch.device("cpu"), progress=False)
    np.testing.assert_allclose(whole.pred, res.pred, atol=1e-5)


def test_forward_batch_equals_the_model_call(tiny, prepared) -> None:
    model, tok = tiny
    model.eval()
    batch = next(iter(make_loader(model, tok, read_prepared(prepared, "val"), batch_size=4)))
    with torch.no_grad():
        direct = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["has_image"])
        np.testing.assert_allclose(forward_batch(model, batch, torch.device("cpu")).numpy(), direct.numpy(),
                                   atol=1e-6)


def test_make_loader_pads_to_max_only_when_asked(tiny, prepared) -> None:
    model, tok = tiny
    table = read_prepared(prepared, "val")
    max_length = model.cfg.input.max_length
    dynamic = next(iter(make_loader(model, tok, table, batch_size=4)))
    canonical = next(iter(make_loader(model, tok, table, batch_size=4, pad_to_max=True)))
    assert canonical["input_ids"].shape[1] == max_length
    assert dynamic["input_ids"].shape[1] == int(dynamic["attention_mask"].sum(1).max()) <= max_length
    size = model.cfg.input.image_size
    assert tuple(dynamic["pixel_values"].shape[1:]) == (3, size, size)


def test_make_loader_image_modes(tiny, prepared, tmp_path) -> None:
    model, tok = tiny
    table = read_prepared(prepared, "val").slice(0, 4)
    batch = next(iter(make_loader(model, tok, table, batch_size=4, images="none")))
    assert batch["pixel_values"] is None and not batch["has_image"].any()
    mean = next(iter(make_loader(model, tok, table, ImageStore(tmp_path), batch_size=4, images="mean")))
    n_images = [min(len(refs), 8) for refs in table.column("images").to_pylist()]
    assert torch.bincount(mean["image_index"], minlength=4).tolist() == n_images
    assert mean["all_pixel_values"].shape[0] == sum(n_images)


def test_image_mode() -> None:
    class NoImages(torch.nn.Module):
        image_encoder = None

    class WithImages(torch.nn.Module):
        image_encoder = torch.nn.Identity()

    assert image_mode(WithImages(), "mean") == "mean" and image_mode(WithImages(), "none") == "none"
    assert image_mode(NoImages(), "first") == "none"
    with pytest.raises(ValueError, match="images must be first, mean or none"):
        image_mode(WithImages(), "all")
    assert SCORE_RANGE == (1.0, 5.0)
