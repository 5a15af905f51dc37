"""EffiMiniVLM behaviour: missing images, modality variants, freezing, parameter counts."""

from __future__ import annotations

import pytest
import torch

from effiminivlm.config import load_recipe
from effiminivlm.models import EffiMiniVLM, create_model


@pytest.fixture
def tiny_model(tiny_cfg) -> EffiMiniVLM:
    torch.manual_seed(0)
    return create_model(tiny_cfg, pretrained=False).eval()


def test_forward_shape_and_paper_dims(tiny_model, tiny_cfg, batch_for) -> None:
    batch = batch_for(tiny_cfg, batch_size=4)
    with torch.no_grad():
        out = tiny_model(**batch)
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert tiny_model.head[0].in_features == tiny_model.image_encoder.num_features + 32


def test_missing_image_zeroes_the_image_vector(tiny_model, tiny_cfg, batch_for) -> None:
    batch = batch_for(tiny_cfg)
    has_image = torch.tensor([True, False, True])
    with torch.no_grad():
        mixed = tiny_model(**batch, has_image=has_image)
        text_only = tiny_model(None, batch["input_ids"], batch["attention_mask"])
        other_pixels = dict(batch, pixel_values=batch["pixel_values"].clone())
        other_pixels["pixel_values"][1] = 10 * torch.randn_like(other_pixels["pixel_values"][1])
        mixed2 = tiny_model(**other_pixels, has_image=has_image)
        full = tiny_model(**batch)
    torch.testing.assert_close(mixed[1], text_only[1])  # no image -> exactly the text-only path
    torch.testing.assert_close(mixed2, mixed)  # ... whatever placeholder pixels row 1 carries
    torch.testing.assert_close(mixed[[0, 2]], full[[0, 2]])  # rows with images are unaffected
    assert not torch.allclose(full[1], text_only[1])  # and the image does matter when present


def test_image_encoder_sees_only_rows_with_images(tiny_model, tiny_cfg, batch_for) -> None:
    seen: list[int] = []
    tiny_model.image_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    batch = batch_for(tiny_cfg, batch_size=4)
    with torch.no_grad():
        tiny_model(None, batch["input_ids"], batch["attention_mask"])
        tiny_model(**batch, has_image=torch.zeros(4, dtype=torch.bool))
        assert seen == []  # a batch without images skips the image encoder entirely
        tiny_model(**batch, has_image=torch.tensor([True, False, False, True]))
        tiny_model(**batch)
    assert seen == [2, 4]


def test_has_image_shape_is_checked(tiny_model, tiny_cfg, batch_for) -> None:
    batch = batch_for(tiny_cfg)
    with pytest.raises(ValueError, match="has_image must have shape"):
        tiny_model(**batch, has_image=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="pixel_values is None"):
        tiny_model(None, batch["input_ids"], batch["attention_mask"], torch.tensor([True, False, False]))


@pytest.mark.parametrize("modalities", ["image_text", "image", "text"])
def test_modality_variants(tiny_cfg, batch_for, modalities: str) -> None:
    tiny_cfg.modalities = modalities
    torch.manual_seed(0)
    model = create_model(tiny_cfg, pretrained=False).eval()
    assert (model.image_encoder is not None) == (modalities != "text")
    assert (model.text_encoder is not None) == (modalities != "image")
    assert model.head[0].in_features == model.image_dim + model.text_dim > 0
    batch = batch_for(tiny_cfg)
    with torch.no_grad():
        out = model(**batch)
        assert out.shape == (3,)
        if modalities == "image":
            torch.testing.assert_close(model(batch["pixel_values"], None, None), out)  # text ignored
        if modalities == "text":
            torch.testing.assert_close(model(None, batch["input_ids"], batch["attention_mask"]), out)
    parts = model.num_params_by_part()
    assert sum(parts.values()) == model.num_params()
    assert (parts["image_encoder"] == 0) == (modalities == "text")


def test_text_model_requires_tokens(tiny_model, tiny_cfg, batch_for) -> None:
    with pytest.raises(ValueError, match="input_ids"):
        tiny_model(batch_for(tiny_cfg)["pixel_values"], None, None)


def test_freeze_counts_and_keeps_frozen_towers_in_eval(tiny_model) -> None:
    total = tiny_model.num_params()
    parts = tiny_model.num_params_by_part()
    assert tiny_model.num_params(trainable_only=True) == total
    tiny_model.freeze(image=True, text=False)
    assert tiny_model.num_params(trainable_only=True) == total - parts["image_encoder"]
    tiny_model.train()
    assert not tiny_model.image_encoder.training  # BatchNorm statistics of a frozen tower stay fixed
    assert tiny_model.text_encoder.training and tiny_model.head.training
    tiny_model.freeze(image=False, text=True)
    assert tiny_model.image_encoder.training and not tiny_model.text_encoder.training
    assert tiny_model.num_params(trainable_only=True) == total - parts["text_encoder"]
    tiny_model.freeze(image=False, text=False)
    assert tiny_model.num_params(trainable_only=True) == total


def test_training_step_updates_towers_and_head(tiny_cfg, batch_for) -> None:
    torch.manual_seed(0)
    model = create_model(tiny_cfg, pretrained=False).train()
    batch = batch_for(tiny_cfg, batch_size=4)
    loss = (model(**batch, has_image=torch.tensor([True, True, False, True])) - 4.0).pow(2).mean()
    loss.backward()
    for part in (model.image_encoder, model.text_encoder, model.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_paper_preset_builds_at_27_7m_params() -> None:
    """The paper's EffiMiniVLM (torchvision EfficientNet-B0 + MiniLM-L6-H384 with pooler + head): 27.7M."""
    torch.manual_seed(0)
    model = create_model(load_recipe("paper").model, pretrained=False)
    parts = model.num_params_by_part()
    head = (1664 * 512 + 512) + 2 * 512 + (512 * 256 + 256) + 2 * 256 + (256 + 1)
    assert parts["head"] == head
    assert model.image_dim == 1280 and model.text_dim == 384
    assert round(model.num_params() / 1e6, 1) == 27.7, model.num_params()


# ------------------------------------------------------------------------------- several images per item


def _multi(tiny_cfg, batch_for):
    """Item 0 owns images a, b; item 1 owns none; item 2 owns image c (pixels in [a, c, b] order)."""
    batch = batch_for(tiny_cfg, batch_size=3)
    g = torch.Generator().manual_seed(5)
    size = tiny_cfg.input.image_size
    a, b, c = (torch.randn(3, size, size, generator=g) for _ in range(3))
    return batch, (a, b, c), torch.stack([a, c, b]), torch.tensor([0, 2, 0])


def test_image_index_takes_the_mean_of_each_items_image_features(tiny_model, tiny_cfg, batch_for) -> None:
    batch, (a, b, c), pixels, index = _multi(tiny_cfg, batch_for)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    has_image = torch.tensor([True, False, True])
    with torch.no_grad():
        out = tiny_model(pixels, ids, mask, has_image, image_index=index)
        enc = tiny_model.image_encoder(torch.stack([a, b, c]))
        expected = torch.stack([(enc[0] + enc[1]) / 2, torch.zeros_like(enc[0]), enc[2]])
        torch.testing.assert_close(tiny_model.encode_images(pixels, index, 3), expected)
        torch.testing.assert_close(out, tiny_model(None, ids, mask, image_features=expected))
        # one image per item through image_index equals the plain one-image path
        firsts = torch.stack([a, a, c])
        single = tiny_model(firsts, ids, mask, has_image)
        torch.testing.assert_close(tiny_model(torch.stack([a, c]), ids, mask, has_image,
                                              image_index=torch.tensor([0, 2])), single)
        text_only = tiny_model(None, ids, mask)
        only_a = tiny_model(torch.stack([a, a, a]), ids, mask)
    torch.testing.assert_close(out[1], text_only[1])  # no image: the text-only path
    assert not torch.allclose(out[0], only_a[0])  # image b does count for item 0


def test_image_index_is_order_free_and_checked(tiny_model, tiny_cfg, batch_for) -> None:
    batch, _, pixels, index = _multi(tiny_cfg, batch_for)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = tiny_model(pixels, ids, mask, image_index=index)
        torch.testing.assert_close(tiny_model(pixels[perm], ids, mask, image_index=index[perm]), out)
    with pytest.raises(ValueError, match="has_image does not match image_index"):
        tiny_model(pixels, ids, mask, torch.tensor([True, True, True]), image_index=index)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        tiny_model(pixels, ids, mask, image_index=torch.tensor([0, 3, 0]))
    with pytest.raises(ValueError, match="one entry per image"):
        tiny_model(pixels, ids, mask, image_index=torch.tensor([0, 2]))


def test_forward_batch_passes_several_images_to_the_model(tiny_model, tiny_cfg, batch_for) -> None:
    from effiminivlm.inference import forward_batch

    batch, (a, _, c), pixels, index = _multi(tiny_cfg, batch_for)
    has_image = torch.tensor([True, False, True])
    collated = {**batch, "pixel_values": torch.stack([a, torch.zeros_like(a), c]), "has_image": has_image,
                "all_pixel_values": pixels, "image_index": index}
    with torch.no_grad():
        ids, mask = batch["input_ids"], batch["attention_mask"]
        expected = tiny_model(pixels, ids, mask, has_image, image_index=index)
        torch.testing.assert_close(forward_batch(tiny_model, collated, torch.device("cpu")), expected)
        first_only = {k: v for k, v in collated.items() if k not in ("all_pixel_values", "image_index")}
        assert not torch.allclose(forward_batch(tiny_model, first_only, torch.device("cpu"))[0], expected[0])
