"""Shared fixtures: the `tiny` recipe's model config (random init, seconds on a CPU) and a random batch."""

from __future__ import annotations

import copy

import pytest
import torch

from effiminivlm.config import ModelCfg, load_recipe


@pytest.fixture(scope="session")
def _tiny_cfg() -> ModelCfg:
    return load_recipe("tiny").model


@pytest.fixture
def tiny_cfg(_tiny_cfg: ModelCfg) -> ModelCfg:
    """A fresh copy per test, so tests may edit it."""
    return copy.deepcopy(_tiny_cfg)


def make_batch(cfg: ModelCfg, batch_size: int = 3, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels and token ids with ragged padding (row i has length - i real tokens)."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.input.image_size
    vocab = cfg.text_encoder.config.get("vocab_size", 30522)
    input_ids = torch.randint(1000, vocab, (batch_size, length), generator=g)
    attention_mask = torch.ones(batch_size, length, dtype=torch.long)
    for i in range(batch_size):
        attention_mask[i, length - i:] = 0
    input_ids[:, 0] = 101  # [CLS]
    return {"pixel_values": torch.randn(batch_size, 3, size, size, generator=g), "input_ids": input_ids,
            "attention_mask": attention_mask}


@pytest.fixture
def batch_for():
    """`batch_for(cfg, batch_size=3, ...)` -> a random batch for that model config."""
    return make_batch
