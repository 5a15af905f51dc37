"""models.dropout_attention: the same attention as PyTorch's math path, a cheaper dropout mask, evaluation
untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from effiminivlm.models import dropout_attention as da
from effiminivlm.models.text_encoders import bert

CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
          "vocab_size": 100, "max_position_embeddings": 64}


def test_drop_mask_has_the_asked_rate_shape_and_seeded_reproducibility():
    torch.manual_seed(3)
    a = da.drop_mask((64, 8, 128, 128), 0.1, torch.device("cpu"))
    torch.manual_seed(3)
    b = da.drop_mask((64, 8, 128, 128), 0.1, torch.device("cpu"))
    assert a.shape == (64, 8, 128, 128) and a.dtype == torch.bool and torch.equal(a, b)
    assert abs(a.float().mean().item() - 0.1) < 2e-3  # 8.4M draws: sd of the rate ~1e-4
    # every one of the four 16-bit words of a draw is used, none biased (the sign bit is random too)
    per_word = a.reshape(-1, 4).float().mean(0)
    assert torch.all((per_word - 0.1).abs() < 3e-3)
    odd = da.drop_mask((3, 5, 7), 0.5, torch.device("cpu"))  # sizes not a multiple of 4
    assert odd.shape == (3, 5, 7)
    assert not da.drop_mask((1000,), 0.0, torch.device("cpu")).any()
    with pytest.raises(ValueError):
        da.drop_mask((4,), 1.0, torch.device("cpu"))


def _qkv(b: int = 2, h: int = 3, length: int = 9, d: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(b, h, length, d, generator=g, dtype=torch.float64, requires_grad=True)
                 for _ in range(3))


@pytest.mark.parametrize("mask_kind", ["none", "bool_expanded", "additive"])
def test_training_attention_is_dropout_of_softmax_with_the_same_mask(mask_kind: str):
    q, k, v = _qkv()
    keep_len = torch.tensor([9, 5])
    pad = torch.arange(9)[None, :] < keep_len[:, None]  # [B, L] True = real token
    if mask_kind == "none":
        mask = None
    elif mask_kind == "bool_expanded":  # how Hugging Face's sdpa_mask hands an encoder's padding mask over
        mask = pad[:, None, None, :].expand(2, 1, 9, 9)
    else:
        mask = torch.where(pad, 0.0, -1e9)[:, None, None, :].double()
    module = nn.Module().train()
    p = 0.25
    torch.manual_seed(11)
    out, weights = da.dropout_attention(module, q, k, v, mask, dropout=p, scaling=0.3)
    torch.manual_seed(11)
    drop = da.drop_mask((2, 3, 9, 9), p, torch.device("cpu"))
    scores = (q @ k.transpose(-1, -2)) * 0.3
    if mask is not None:
        scores = scores.masked_fill(~pad[:, None, None, :], float("-inf"))
    want = (torch.softmax(scores, -1).masked_fill(drop, 0.0) / (1 - p)) @ v
    assert weights is None and out.shape == (2, 9, 3, 8)  # Hugging Face's layout: [B, L, H, D]
    assert torch.allclose(out, want.transpose(1, 2), atol=1e-10)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    want_grads = torch.autograd.grad(want.transpose(1, 2).square().sum(), (q, k, v))
    for got, ref in zip(grads, want_grads, strict=True):
        assert torch.allclose(got, ref, atol=1e-9)


def test_without_live_dropout_it_is_huggingface_sdpa():
    q, k, v = (t.detach().float() for t in _qkv())
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    for training in (False, True):  # Hugging Face passes dropout=0 in evaluation
        module = nn.Module().train(training)
        module.is_causal = False
        got, _ = da.dropout_attention(module, q, k, v, None, dropout=0.0)
        want, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.0)
        assert torch.equal(got, want)


def test_use_fast_dropout_on_a_bert_tower_trains_under_bf16_and_evaluates_unchanged(monkeypatch):
    torch.manual_seed(0)
    tower = bert(dict(CONFIG))
    before = copy.deepcopy(tower)
    keys = list(tower.state_dict())
    assert da.use_fast_dropout(tower) == 1
    assert da.use_fast_dropout(tower) == 0  # already switched: idempotent
    assert tower.bert.config._attn_implementation == da.NAME
    assert list(tower.state_dict()) == keys
    assert any(isinstance(m, da.MaskDropout) for m in tower.modules())
    ids = torch.randint(0, 100, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 7:] = 0
    tower.eval()
    before.eval()
    with torch.no_grad():
        assert torch.allclose(tower(ids, mask), before(ids, mask), atol=1e-6)  # evaluation: SDPA, no dropout
    tower.train()
    shapes: list[tuple[int, ...]] = []
    draw = da.drop_mask
    monkeypatch.setattr(da, "drop_mask",
                        lambda shape, p, dev: shapes.append(tuple(shape)) or draw(shape, p, dev))
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = tower(ids, mask)
        a.float().sum().backward()
    assert shapes.count((4, 4, 12, 12)) == 2  # each layer's attention weights: this module's path
    assert shapes.count((4, 12, 64)) == 5  # embeddings + 2 per layer: MaskDropout
    assert torch.isfinite(a.float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for n, p in tower.named_parameters() if "pooler" not in n)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = tower(ids, mask)
    assert torch.equal(a, again)  # seeded: the same dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16):
        other = tower(ids, mask)
    assert not torch.equal(a, other)  # and dropout is live in training


def test_mask_dropout_keeps_expectation_and_is_identity_in_eval():
    layer = da.MaskDropout(0.2)
    x = torch.ones(200_000)
    torch.manual_seed(0)
    y = layer(x)
    assert abs((y == 0).float().mean().item() - 0.2) < 5e-3
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1.25))
    assert abs(y.mean().item() - 1.0) < 1e-2
    assert torch.equal(layer.eval()(x), x)
