"""The one loader of the measuring commands (`profile`, `benchmark`): saved folder or recipe, random init."""

from __future__ import annotations

import pytest
import torch

from effiminivlm.config import load_recipe
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.models.factory import create_model, create_tokenizer, load_model_or_recipe


def test_recipe_name_overrides_and_recipe_object() -> None:
    loaded = load_model_or_recipe(recipe="tiny", overrides=["input.image_size=32"])
    assert loaded.label == "recipe tiny (random init)"
    assert loaded.model.cfg.input.image_size == 32 and loaded.tokenizer is not None
    model, tok, label = load_model_or_recipe(recipe=load_recipe("tiny"), tokenizer=False,
                                             overrides=["input.image_size=48"])
    assert tok is None and model.cfg.input.image_size == 48
    assert label == "recipe tiny (random init)"


def test_saved_folder_gives_back_the_same_weights(tmp_path) -> None:
    cfg = load_recipe("tiny").model
    torch.manual_seed(0)
    model = create_model(cfg, pretrained=False)
    model.save_pretrained(tmp_path / "m", tokenizer=create_tokenizer(cfg))
    loaded = load_model_or_recipe(tmp_path / "m")
    assert loaded.label == str(tmp_path / "m") and loaded.tokenizer is not None
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert load_model_or_recipe(tmp_path / "m", tokenizer=False).tokenizer is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one of --model"),
    ({"model_dir": "x", "recipe": "tiny"}, "exactly one of --model"),
    ({"model_dir": "x", "overrides": ["a=1"]}, "--set overrides a recipe"),
])
def test_bad_choices(kwargs, message) -> None:
    with pytest.raises(EffiMiniVLMError, match=message):
        load_model_or_recipe(**kwargs)
