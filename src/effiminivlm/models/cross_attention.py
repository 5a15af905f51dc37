"""cross-attention: team PinCO's student: text queries cross-attend to a Swin collage, then 5 fused tokens.

    up to 3 images --collage 256x384--> Swin-V2-Tiny --> [B,96,768] --proj--> vision V [B,96,D] ---------+
    ids [B,256] --DeBERTa-v3-small--> [B,L,768] --proj--> text T [B,L,D] --cross-attend to V--> X [B,L,D]
    5 tokens: [mean T; mean V; mean X; category embedding; projected numeric features]
       --> 2 self-attention layers --> mean --> 2-layer MLP --> 1 + 4*sigmoid = rating [B]

The collage puts an item's first `collage` usable images side by side, each resized to image_size x
`tile_width` (a missing tile is the mean colour). The category is an id over `categories` (0: any other);
the numeric features are what a cold-start listing has (`models.processor.NUMERIC_FEATURES`: image count and
text lengths; never rating_number).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from effiminivlm.config import ModelCfg
from effiminivlm.data.dataset import Sample
from effiminivlm.errors import ConfigError
from effiminivlm.models.archs import register_arch
from effiminivlm.models.base import RatingModel
from effiminivlm.models.blocks import (
    CrossAttention,
    ScaledSigmoid,
    check_hf_keys,
    fusion_encoder,
    hf_config,
    hf_tower,
    masked_mean,
    mlp_head,
    projection,
    timm_tower,
)
from effiminivlm.models.processor import NUMERIC_FEATURES, Processor, category_ids, numeric_features
from effiminivlm.typed import check_int

#: Amazon Reviews 2023 main categories (the LoViF items' `main_category`).
AMAZON_CATEGORIES = [
    "All Beauty", "AMAZON FASHION", "Amazon Home", "Appliances", "Arts, Crafts & Sewing", "Automotive",
    "Baby", "Books", "Cell Phones & Accessories", "Clothing, Shoes & Jewelry", "Electronics", "Grocery",
    "Health & Personal Care", "Home", "Industrial & Scientific", "Musical Instruments", "Office Products",
    "Patio, Lawn & Garden", "Pet Supplies", "Sports & Outdoors", "Tools & Home Improvement", "Toys & Games",
    "Video Games"]


@dataclass
class CrossAttentionCfg(ModelCfg):
    arch: str = "cross-attention"
    backbone: str = "swinv2_tiny_window8_256"  # timm
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    image_pretrained: str | None = None
    text_pretrained: str | None = None  # DeBERTa-v3-small: hf-hub:microsoft/deberta-v3-small or local-dir:
    text: dict[str, Any] = field(default_factory=dict)  # DebertaV2Config values
    collage: int = 3
    tile_width: int = 128
    dim: int = 512
    heads: int = 8
    head_hidden: int = 256
    dropout: float = 0.1
    categories: list[str] = field(default_factory=lambda: list(AMAZON_CATEGORIES))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("collage", self.collage, 1, 16)
        check_int("tile_width", self.tile_width, 8, 4096)
        check_int("dim", self.dim, 1, 8192)
        check_int("heads", self.heads, 1, self.dim)
        check_hf_keys("DebertaV2Config", self.text, "text")


@register_arch("cross-attention")
class CrossAttentionFusion(RatingModel):
    Config = CrossAttentionCfg

    def __init__(self, cfg: CrossAttentionCfg, pretrained: bool = False) -> None:
        from transformers import DebertaV2Config, DebertaV2Model

        super().__init__(cfg)
        if cfg.modalities != "image_text":
            raise ConfigError("cross-attention reads image and text: model.modalities must be image_text")
        o = self.cfg
        size = (self.cfg.input.image_size, o.collage * o.tile_width)
        self.image_encoder = timm_tower(o.backbone, o.image_pretrained if pretrained else None,
                                        "model.image_pretrained", img_size=size, **o.backbone_kwargs)
        self.text_encoder = hf_tower(DebertaV2Model, DebertaV2Config, o.text,
                                     o.text_pretrained if pretrained else None,
                                     "model.text_pretrained (DeBERTa-v3)", attn="eager")
        self.image_proj = projection(self.image_encoder.num_features, o.dim)
        self.text_proj = projection(self.text_encoder.config.hidden_size, o.dim)
        self.cross = CrossAttention(o.dim, o.heads, o.dropout)
        self.category = nn.Embedding(len(o.categories) + 1, o.dim)
        self.numeric = nn.Linear(len(NUMERIC_FEATURES), o.dim)
        self.fusion = fusion_encoder(o.dim, 2, o.heads, o.dropout)
        self.head = nn.Sequential(mlp_head(o.dim, o.head_hidden, o.dropout), ScaledSigmoid())
        self.eval()

    def processor(self, tokenizer: Any) -> Processor:
        return CollageProcessor(self.cfg, tokenizer)

    def example_batch(self, image_size: int | None = None, length: int | None = None) -> dict[str, Any]:
        batch = super().example_batch(None, length)
        ref = batch["input_ids"]
        height = image_size or self.cfg.input.image_size
        batch["pixel_values"] = torch.zeros(1, 3, height, self.cfg.collage * self.cfg.tile_width,
                                            device=ref.device, dtype=self.category.weight.dtype)
        batch["category_id"] = torch.zeros(1, dtype=torch.long, device=ref.device)
        batch["numeric"] = torch.zeros(1, len(NUMERIC_FEATURES), device=ref.device)
        return batch

    def forward_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        mask = batch["attention_mask"]
        vision = self.image_proj(self.image_encoder.forward_features(batch["pixel_values"]).flatten(1, 2))
        text = self.text_proj(self.text_encoder(input_ids=batch["input_ids"], attention_mask=mask)
                              .last_hidden_state)
        crossed = self.cross(text, vision)
        tokens = torch.stack([masked_mean(text, mask), vision.mean(1), masked_mean(crossed, mask),
                              self.category(batch["category_id"]).to(text.dtype),
                              self.numeric(batch["numeric"].to(text.dtype))], 1)  # [B, 5, D]
        fused = self.fusion(tokens).mean(1)
        with torch.autocast(fused.device.type, enabled=False):  # head in fp32
            return self.head(fused.float()).squeeze(-1)

    def saved_section(self) -> dict[str, Any]:
        out = super().saved_section()
        out["image_pretrained"] = out["text_pretrained"] = None
        out["text"] = hf_config(self.text_encoder, out["text"])
        return out


class CollageProcessor(Processor):
    """Up to `collage` images per item, each image_size x tile_width, side by side; category id and the
    numeric side features as extra fields."""

    fixed_images = "collage"

    def __init__(self, cfg: CrossAttentionCfg, tokenizer: Any) -> None:
        super().__init__(cfg, tokenizer)
        self.max_images = cfg.collage
        self.image_hw = (cfg.input.image_size, cfg.tile_width)

    def extra(self, samples: list[Sample]) -> dict[str, Any]:
        h, w, k = *self.image_hw, self.cfg.collage
        collage = torch.zeros(len(samples), 3, h, k * w)
        for i, s in enumerate(samples):
            for j, img in enumerate(s.images[:k]):
                collage[i, :, :, j * w:(j + 1) * w] = img
        return {"pixel_values": collage, "all_pixel_values": None, "image_index": None,
                "category_id": category_ids(samples, self.cfg.categories),
                "numeric": numeric_features(samples)}
