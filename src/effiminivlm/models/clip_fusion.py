"""clip-fusion: team iamxredz's LoViFModel (LoViF 2026, rank 2): CLIP towers, token-level fusion.

    pixels [B,3,224,224] --CLIP ViT-B/32--> [B,50,768] --proj--> [B,50,512] --+
                                                                             +--concat--> 2-layer 8-head
    ids [B,77] --CLIP text--> [B,77,512] --proj--> [B,77,512] ---------------+   encoder --> masked mean
                                                                 --> MLP --> 1 + 4*sigmoid = rating [B]

The embeddings and the first `frozen_layers` (11) layers of each tower are frozen, so only the last layer of
each tower, the projections, the fusion encoder and the head train. Items without an image: their image
tokens are masked out of the fusion (the model reads the text alone). `modalities` drops a tower.

`vision` / `text` are CLIPVisionConfig / CLIPTextConfig values, checked key by key as the recipe loads; the
vision tower's `image_size` is the model's input size, so `input.image_size` defaults to it and may not
disagree with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from effiminivlm.config import ModelCfg
from effiminivlm.errors import ConfigError
from effiminivlm.models.archs import register_arch
from effiminivlm.models.base import RatingModel
from effiminivlm.models.blocks import (
    ScaledSigmoid,
    check_hf_keys,
    fusion_encoder,
    hf_config,
    hf_tower,
    masked_mean,
    mlp_head,
)
from effiminivlm.models.blocks import projection as proj
from effiminivlm.typed import check_int

CLIP_IMAGE_SIZE = 224  # CLIPVisionConfig's default


@dataclass
class ClipFusionCfg(ModelCfg):
    arch: str = "clip-fusion"
    pretrained: str | None = None  # a CLIPModel: hf-hub:openai/clip-vit-base-patch32 or local-dir:/path
    vision: dict[str, Any] = field(default_factory=dict)  # CLIPVisionConfig values (the architecture)
    text: dict[str, Any] = field(default_factory=dict)  # CLIPTextConfig values
    dim: int = 512
    fusion_layers: int = 2
    fusion_heads: int = 8
    head_hidden: int = 256
    dropout: float = 0.1
    frozen_layers: int = 11

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("dim", self.dim, 1, 8192)
        check_int("fusion_layers", self.fusion_layers, 1, 64)
        check_int("fusion_heads", self.fusion_heads, 1, self.dim)
        check_int("frozen_layers", self.frozen_layers, 0, 1000)
        check_hf_keys("CLIPVisionConfig", self.vision, "vision")
        check_hf_keys("CLIPTextConfig", self.text, "text")

    def check_input(self) -> None:
        """The vision tower's position embeddings fix the image size: `input.image_size` defaults to
        `model.vision.image_size` (CLIP's 224 when neither is set) and a second size that disagrees fails
        here, before anything is built, not in the first forward pass."""
        own = self.vision.get("image_size")
        if self.input.image_size is None:
            self.input.image_size = own if own is not None else CLIP_IMAGE_SIZE
        elif own is not None and own != self.input.image_size:
            raise ConfigError(f"input.image_size {self.input.image_size} disagrees with "
                              f"model.vision.image_size {own} (the CLIP vision tower's own size): set one "
                              "of them")


@register_arch("clip-fusion")
class ClipFusion(RatingModel):
    Config = ClipFusionCfg

    def __init__(self, cfg: ClipFusionCfg, pretrained: bool = False) -> None:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

        super().__init__(cfg)
        o, source = self.cfg, self.cfg.pretrained if pretrained else None
        if cfg.modalities != "text":
            self.image_encoder = hf_tower(CLIPVisionModel, CLIPVisionConfig, o.vision, source,
                                          "model.pretrained (CLIP vision)")
            self.image_proj = proj(self.image_encoder.config.hidden_size, o.dim)
        if cfg.modalities != "image":
            self.text_encoder = hf_tower(CLIPTextModel, CLIPTextConfig, o.text, source,
                                         "model.pretrained (CLIP text)")
            self.text_proj = proj(self.text_encoder.config.hidden_size, o.dim)
        for tower in (self.image_encoder, self.text_encoder):
            if tower is not None:  # what runs before layer frozen_layers + 1
                below = [tower.embeddings, *([tower.pre_layrnorm] if hasattr(tower, "pre_layrnorm") else [])]
                self.keep_frozen(*below, *tower.encoder.layers[:o.frozen_layers])
        self.fusion = fusion_encoder(o.dim, o.fusion_layers, o.fusion_heads, o.dropout)
        self.head = nn.Sequential(mlp_head(o.dim, o.head_hidden, o.dropout), ScaledSigmoid())
        self.eval()

    def forward_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        tokens, masks = [], []
        pixels, ids = batch.get("pixel_values"), batch.get("input_ids")
        if self.image_encoder is not None and pixels is not None:
            hidden = self.image_encoder(pixel_values=pixels).last_hidden_state  # [B, 1 + patches, 768]
            has = batch.get("has_image")
            has = torch.ones(len(pixels), dtype=torch.bool, device=pixels.device) if has is None else has
            tokens.append(self.image_proj(hidden))
            masks.append(has.bool().unsqueeze(1).expand(-1, hidden.shape[1]))
        if self.text_encoder is not None:
            mask = batch["attention_mask"]
            hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            tokens.append(self.text_proj(hidden))
            masks.append(mask.bool())
        x, mask = torch.cat(tokens, 1), torch.cat(masks, 1)
        fused = self.fusion(x, src_key_padding_mask=~mask)
        with torch.autocast(x.device.type, enabled=False):  # head in fp32: ratings are not rounded to bf16
            return self.head(masked_mean(fused.float(), mask)).squeeze(-1)

    def saved_section(self) -> dict[str, Any]:
        out = super().saved_section()
        for key, tower in (("vision", self.image_encoder), ("text", self.text_encoder)):
            if tower is not None:
                out[key] = hf_config(tower, out[key])
        return out
