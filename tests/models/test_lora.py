"""LoRA (peft) on either tower: only adapters train, saved models merge (same params/FLOPs) or keep them."""

from __future__ import annotations

import json

import pytest
import torch

from effiminivlm.config import LoraCfg, ModelCfg
from effiminivlm.errors import ConfigError
from effiminivlm.models import create_model
from effiminivlm.models.base import read_model_config
from effiminivlm.models.factory import load_model
from effiminivlm.models.lora import lora_layers


def _lora_model(cfg: ModelCfg, merge: bool = True, image: bool = False) -> torch.nn.Module:
    cfg.text_encoder.lora = LoraCfg(r=4, alpha=8, target_modules=["query", "value"], merge=merge)
    if image:
        cfg.image_encoder.lora = LoraCfg(r=2, alpha=4, target_modules=["conv_pwl"], merge=merge)
    torch.manual_seed(0)
    model = create_model(cfg, pretrained=False)
    with torch.no_grad():  # B starts at 0 (the adapter is a no-op); make it do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def test_only_adapters_and_head_train_and_freezing_keeps_it_so(tiny_cfg):
    model = _lora_model(tiny_cfg, image=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any("text_encoder" in n for n in trainable) and any("image_encoder" in n for n in trainable)
    assert len(lora_layers(model.text_encoder)) == 2 * tiny_cfg.text_encoder.config["num_hidden_layers"]
    model.freeze(image=False, text=False)  # the loop's call must not unfreeze the base weights
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    model.freeze(image=True, text=False)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert model.num_params() > model.num_params(trainable_only=True) > 0


def test_merged_save_reloads_as_a_plain_model_with_the_same_predictions(tiny_cfg, batch_for, tmp_path):
    model = _lora_model(tiny_cfg, image=True)
    batch = batch_for(tiny_cfg)
    with torch.no_grad():
        before = model(**batch)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["model"]["text_encoder"]["lora"] is None and saved["model"]["image_encoder"]["lora"] is None
    loaded, _ = load_model(tmp_path / "m")
    assert not lora_layers(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), before, rtol=1e-5, atol=1e-5)
    plain = create_model(read_model_config(tmp_path / "m"), pretrained=False)
    assert loaded.num_params() == plain.num_params()  # merged: the base architecture's params (and FLOPs)
    assert lora_layers(model)  # the training model keeps its adapters


def test_kept_adapters_reload_offline_with_the_same_predictions(tiny_cfg, batch_for, tmp_path):
    model = _lora_model(tiny_cfg, merge=False)
    batch = batch_for(tiny_cfg)
    with torch.no_grad():
        before = model(**batch)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["text_encoder"]["lora"]["r"] == 4
    loaded, _ = load_model(tmp_path / "m")
    assert lora_layers(loaded.text_encoder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), before)


def test_unknown_target_modules_fail_in_one_line(tiny_cfg):
    tiny_cfg.text_encoder.lora = LoraCfg(target_modules=["qkv_proj"])
    message = r"model.text_encoder.lora.target_modules \['qkv_proj'\].*query"
    with pytest.raises(ConfigError, match=message) as e:
        create_model(tiny_cfg, pretrained=False)
    assert "\n" not in str(e.value)
