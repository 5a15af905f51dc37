"""A sixth architecture in one module: a strided convolution for the image, mean-pooled token embeddings for
the text, one Linear on both. Registered from this folder ($EFFIMINIVLM_ARCH_PATH), it trains, saves,
reloads, predicts and profiles through the CLI like the built-in ones, with no file of the package edited."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effiminivlm.config import ModelCfg
from effiminivlm.models import RatingModel, register_arch
from effiminivlm.typed import check_int


@dataclass
class ToyCfg(ModelCfg):
    arch: str = "toy"
    width: int = 8
    vocab_size: int = 30522  # the offline WordPiece tokenizer's

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("width", self.width, 1, 1024)
        check_int("vocab_size", self.vocab_size, 1, 1_000_000)


@register_arch("toy")
class Toy(RatingModel):
    Config = ToyCfg
    tiny_recipe = str(Path(__file__).with_name("toy-tiny.yaml"))

    def __init__(self, cfg: ToyCfg, pretrained: bool = False) -> None:
        super().__init__(cfg)
        width = cfg.width
        if cfg.modalities != "text":
            self.image_encoder = nn.Sequential(nn.Conv2d(3, width, 3, stride=4), nn.ReLU(),
                                               nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if cfg.modalities != "image":
            self.text_encoder = nn.Embedding(cfg.vocab_size, width)
        self.head = nn.Sequential(nn.Linear(2 * width, 1))
        self.eval()

    def forward_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        parts = []
        ids = batch.get("input_ids")
        size = len(ids) if ids is not None else len(batch["pixel_values"])
        if self.image_encoder is not None:
            pixels, has = batch.get("pixel_values"), batch.get("has_image")
            feats = (self.image_encoder(pixels) if pixels is not None
                     else torch.zeros(size, self.cfg.width))
            parts.append(feats * (has.float().unsqueeze(1) if has is not None else 1.0))
        else:
            parts.append(torch.zeros(size, self.cfg.width))
        if self.text_encoder is not None:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            parts.append((self.text_encoder(ids) * mask).sum(1) / mask.sum(1).clamp(min=1))
        else:
            parts.append(torch.zeros(size, self.cfg.width))
        return self.head(torch.cat(parts, 1).float()).squeeze(-1)
