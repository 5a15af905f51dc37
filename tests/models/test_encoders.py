"""Every registered encoder and head builds small and runs forward; encoder-specific behaviour."""

from __future__ import annotations

import pytest
import torch

from effiminivlm.config import HeadCfg, ImageEncoderCfg, TextEncoderCfg
from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.models import (
    HEADS,
    IMAGE_DATA_CONFIGS,
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    create_head,
    create_text_encoder,
    image_data_config,
)
from effiminivlm.models.image_encoders import lite0_state_dict_to_timm

# Small build arguments per registry entry; a new entry without one here fails test_every_entry_has_a_case.
IMAGE_CASES = {
    "timm": {"model_name": "test_efficientnet"},
    "tf_efficientnet_lite0": {},
    "efficientnet_b0": {},
    "timm_efficientnet_b0": {},
}
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "vocab_size": 200, "max_position_embeddings": 32}
TEXT_CASES = {"bert": {"config": TINY_BERT}}
HEAD_CASES = {"mlp": {"hidden_dims": [8, 4], "dropout": 0.1}}


def test_every_entry_has_a_case() -> None:
    assert set(IMAGE_ENCODERS.names()) == set(IMAGE_CASES)
    assert set(IMAGE_DATA_CONFIGS.names()) == set(IMAGE_CASES)  # every encoder declares its mean/std
    assert set(TEXT_ENCODERS.names()) == set(TEXT_CASES)
    assert set(HEADS.names()) == set(HEAD_CASES)


@pytest.mark.parametrize("name", IMAGE_ENCODERS.names())
def test_image_encoder_forward(name: str) -> None:
    torch.manual_seed(0)
    encoder = IMAGE_ENCODERS.build(name, source=None, **IMAGE_CASES[name]).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = encoder(pixels)
        alone = encoder(pixels[1:])
    assert out.shape == (2, encoder.num_features)
    assert torch.isfinite(out).all()
    scale = out.abs().max()  # random-init torchvision B0 gives features near 1e-14: compare relative to it
    assert (out[0] - out[1]).abs().max() > 1e-3 * scale  # the features depend on the image ...
    torch.testing.assert_close(alone[0] / scale, out[1] / scale, rtol=0, atol=1e-4)  # ... not on the batch
    assert encoder.data_config == image_data_config(ImageEncoderCfg(name=name, kwargs=IMAGE_CASES[name]))
    if name != "timm":
        assert encoder.num_features == 1280  # the paper's pooled EfficientNet vector


@pytest.mark.parametrize("name", TEXT_ENCODERS.names())
def test_text_encoder_forward(name: str) -> None:
    torch.manual_seed(0)
    encoder = TEXT_ENCODERS.build(name, source=None, **TEXT_CASES[name]).eval()
    ids = torch.randint(0, 200, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        out = encoder(ids, mask)
    assert out.shape == (2, encoder.num_features)
    # Padding must not leak into row 1's features: changing its padded tokens changes nothing.
    ids2 = ids.clone()
    ids2[1, 5:] = 7
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids2, mask), out)


@pytest.mark.parametrize("name", HEADS.names())
def test_head_forward(name: str) -> None:
    torch.manual_seed(0)
    head = HEADS.build(name, in_dim=12, **HEAD_CASES[name]).eval()
    x = torch.randn(5, 12)
    out = head(x)
    assert out.shape == (5, 1)
    assert len(set(out.squeeze(-1).tolist())) == 5  # distinct inputs, distinct outputs
    torch.testing.assert_close(head(x[2:3]), out[2:3])  # rows are independent


def test_mlp_head_is_the_papers_layout() -> None:
    head = create_head(HeadCfg(hidden_dims=[512, 256], dropout=0.1), in_dim=1280 + 384)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Dropout"] * 2 + ["Linear"]
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, torch.nn.Linear)] == [
        (1664, 512), (512, 256), (256, 1)]
    assert head[3].p == 0.1


def test_bert_keeps_the_pooler_and_returns_cls() -> None:
    torch.manual_seed(0)
    encoder = TEXT_ENCODERS.build("bert", config=TINY_BERT).eval()
    assert encoder.bert.pooler is not None  # counted by the protocol, as in the paper's AutoModel
    assert encoder.bert.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 200, (2, 6))
    with torch.no_grad():
        hidden = encoder.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        torch.testing.assert_close(encoder(ids, torch.ones_like(ids)), hidden[:, 0])


def test_mean_pooling_ignores_padding() -> None:
    torch.manual_seed(0)
    encoder = TEXT_ENCODERS.build("bert", config=TINY_BERT, pooling="mean").eval()
    ids = torch.randint(0, 200, (1, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        hidden = encoder.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(encoder(ids, mask), hidden[:, :3].mean(1))
    unit = TEXT_ENCODERS.build("bert", config=TINY_BERT, pooling="mean_l2").eval()
    unit.load_state_dict(encoder.state_dict())
    with torch.no_grad():  # sentence-transformers' Normalize: the same direction, unit length
        mean = hidden[:, :3].mean(1)
        torch.testing.assert_close(unit(ids, mask), mean / mean.norm(dim=-1, keepdim=True))
    assert unit.cls_only() is None
    both = TEXT_ENCODERS.build("bert", config=TINY_BERT, pooling="mean_max").eval()
    both.load_state_dict(encoder.state_dict())
    assert both.num_features == 2 * encoder.num_features
    with torch.no_grad():  # [mean; max] over the real tokens: padding (however extreme) never wins the max
        hidden[:, 3:] = 1e4
        torch.testing.assert_close(both(ids, mask), torch.cat([mean, hidden[:, :3].amax(1)], dim=-1))


def test_cls_only_last_layer_is_the_same_function_with_padding() -> None:
    torch.manual_seed(0)
    encoder = TEXT_ENCODERS.build("bert", config=TINY_BERT).eval()
    lean = encoder.cls_only()
    ids = torch.randint(1, 200, (3, 9))
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [1] * 2 + [0] * 7])
    ids = ids * mask  # padded positions hold the pad id, as the tokenizer writes them
    with torch.no_grad():
        torch.testing.assert_close(lean(ids, mask), encoder(ids, mask), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lean(ids), encoder(ids), atol=1e-5, rtol=1e-5)
    assert lean.num_features == encoder.num_features  # read through the wrapper
    assert TEXT_ENCODERS.build("bert", config=TINY_BERT, pooling="mean").cls_only() is None


def test_bert_config_typo_fails_with_a_suggestion() -> None:
    with pytest.raises(EffiMiniVLMError, match="hiden_size.*did you mean hidden_size"):
        TEXT_ENCODERS.build("bert", config={**TINY_BERT, "hiden_size": 32})


def test_bert_without_config_or_source_refuses_to_guess() -> None:
    with pytest.raises(EffiMiniVLMError, match="text_encoder.config is empty"):
        create_text_encoder(TextEncoderCfg(config={}, pretrained=None), pretrained=False)


def test_unknown_pooling_and_unknown_names() -> None:
    with pytest.raises(EffiMiniVLMError, match="pooling"):
        TEXT_ENCODERS.build("bert", config=TINY_BERT, pooling="max")
    with pytest.raises(KeyError, match="did you mean efficientnet_b0"):
        IMAGE_ENCODERS.get("efficientnet_b1")
    with pytest.raises(EffiMiniVLMError, match="kwargs.model_name"):
        IMAGE_ENCODERS.build("timm", source=None)
    with pytest.raises(EffiMiniVLMError, match="no model"):
        IMAGE_ENCODERS.build("timm", source=None, model_name="not_a_timm_model")


def test_lite0_mapping_rejects_unknown_keys() -> None:
    with pytest.raises(WeightsError, match="_blocks.0._se_reduce"):
        lite0_state_dict_to_timm({"_conv_stem.weight": torch.zeros(1),
                                  "_blocks.0._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="_blocks.16"):
        lite0_state_dict_to_timm({"_blocks.16._bn0.weight": torch.zeros(1)})


def test_timm_b0_takes_torchvision_weights_and_swaps_in_the_paper_recipe(tmp_path) -> None:
    """The three 1280-d towers swap by name in one recipe; timm's B0 is torchvision's B0 tensor for tensor."""
    from safetensors.torch import save_file

    from effiminivlm.config import InputCfg, load_recipe
    from effiminivlm.models import create_image_encoder, resolve_image_input

    counts, means = {}, {}
    for name in ("efficientnet_b0", "timm_efficientnet_b0", "tf_efficientnet_lite0"):
        cfg = load_recipe("paper", [f"model.image_encoder.name={name}"]).model.image_encoder
        encoder = create_image_encoder(cfg, pretrained=False)
        assert encoder.num_features == 1280
        counts[name] = sum(p.numel() for p in encoder.parameters())
        means[name] = resolve_image_input(cfg, InputCfg()).mean
    assert counts["efficientnet_b0"] == counts["timm_efficientnet_b0"] == 4_007_548
    assert counts["tf_efficientnet_lite0"] == 3_371_008
    assert means["efficientnet_b0"] == means["timm_efficientnet_b0"] == [0.485, 0.456, 0.406]
    assert means["tf_efficientnet_lite0"] == [0.5, 0.5, 0.5]
    torch.manual_seed(0)
    tv = IMAGE_ENCODERS.build("efficientnet_b0", source=None)
    with torch.no_grad():  # non-default BatchNorm statistics, so the running buffers must map too
        tv.train()(torch.randn(4, 3, 64, 64))
    save_file({k: v.contiguous() for k, v in tv.model.state_dict().items()}, str(tmp_path / "tv.safetensors"))
    timm_b0 = IMAGE_ENCODERS.build("timm_efficientnet_b0", source=f"local-file:{tmp_path / 'tv.safetensors'}")
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = tv.eval()(pixels), timm_b0.eval()(pixels)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    with pytest.raises(EffiMiniVLMError, match="no efficientnet_b0 tag 'nope'"):
        IMAGE_ENCODERS.build("timm_efficientnet_b0", source=None, tag="nope")
    save_file({"features.0.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="do not match the architecture"):
        IMAGE_ENCODERS.build("timm_efficientnet_b0", source=f"local-file:{tmp_path / 'bad.safetensors'}")
    save_file({"features.0.0.weight": torch.zeros(1), "features.9.x": torch.zeros(1)},
              str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="features.9.x.*not a B0 state dict"):
        IMAGE_ENCODERS.build("timm_efficientnet_b0", source=f"local-file:{tmp_path / 'bad.safetensors'}")
