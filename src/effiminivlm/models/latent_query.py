"""latent-query: team Hope's LatentQuery Fusion: learned latent queries read every image and text token.

    top-k images [B,k,3,224,224] --DINOv2-base (+LoRA q/v)--> [B, k*(1+256), 768] --proj--> D --+
    ids [B,256] --DistilBERT-base (+LoRA q/v)--> [B, L, 768] --proj--> D -----------------------+-- all tokens
    8 learned latent queries --3 cross-attention layers over all tokens--> [B,8,D]
       --> query-weighted sum (softmax over a score per query) --> MLP --> linear calibration = rating [B]

LoRA adapters (peft) sit on the query/value projections of both towers (`model.image_lora` /
`model.text_lora`, merged into the weights on save like EffiMiniVLM's). The published FLOPs use
k = 1 (`topk`), the team's default is 2; a missing image's tokens are masked out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from effiminivlm.config import LoraCfg, ModelCfg
from effiminivlm.data.dataset import Sample
from effiminivlm.errors import ConfigError
from effiminivlm.models.archs import register_arch
from effiminivlm.models.base import RatingModel
from effiminivlm.models.blocks import CrossAttention, check_hf_keys, hf_config, hf_tower, mlp_head, projection
from effiminivlm.models.lora import apply_lora
from effiminivlm.models.processor import Processor, stack_images
from effiminivlm.typed import check_int


@dataclass
class LatentQueryCfg(ModelCfg):
    arch: str = "latent-query"
    image_pretrained: str | None = None  # DINOv2-base: hf-hub:facebook/dinov2-base or local-dir:
    text_pretrained: str | None = None  # DistilBERT-base: hf-hub:distilbert-base-uncased or local-dir:
    vision: dict[str, Any] = field(default_factory=dict)  # Dinov2Config values
    text: dict[str, Any] = field(default_factory=dict)  # DistilBertConfig values
    topk: int = 2
    queries: int = 8
    layers: int = 3
    dim: int = 768
    heads: int = 8
    head_hidden: int = 384
    dropout: float = 0.1
    image_lora: LoraCfg | None = None  # e.g. {r: 8, alpha: 16, target_modules: [q_proj, v_proj]}
    text_lora: LoraCfg | None = None  # e.g. {r: 8, alpha: 16, target_modules: [q_lin, v_lin]}
    LEGACY: ClassVar[dict[str, str]] = {"image_encoder.lora": "image_lora", "text_encoder.lora": "text_lora",
                                        "vision.intermediate_size": ""}  # DINOv2: mlp_ratio x hidden_size

    def __post_init__(self) -> None:
        super().__post_init__()
        check_hf_keys("Dinov2Config", self.vision, "vision")
        check_hf_keys("DistilBertConfig", self.text, "text")
        for key, hi in (("topk", 16), ("queries", 256), ("layers", 64), ("dim", 8192)):
            check_int(key, getattr(self, key), 1, hi)
        check_int("heads", self.heads, 1, self.dim)

    def lora(self, tower: str) -> LoraCfg | None:
        return self.image_lora if tower == "image_encoder" else self.text_lora

    def without_lora(self, tower: str) -> LatentQueryCfg:
        return replace(self, **{"image_lora" if tower == "image_encoder" else "text_lora": None})


@register_arch("latent-query")
class LatentQuery(RatingModel):
    Config = LatentQueryCfg

    def __init__(self, cfg: LatentQueryCfg, pretrained: bool = False) -> None:
        from transformers import Dinov2Config, Dinov2Model, DistilBertConfig, DistilBertModel

        super().__init__(cfg)
        if cfg.modalities != "image_text":
            raise ConfigError("latent-query reads image and text: model.modalities must be image_text")
        o = self.cfg
        image_source, text_source = (o.image_pretrained, o.text_pretrained) if pretrained else (None, None)
        self.image_encoder = hf_tower(Dinov2Model, Dinov2Config, o.vision, image_source,
                                      "model.image_pretrained (DINOv2)")
        self.text_encoder = hf_tower(DistilBertModel, DistilBertConfig, o.text, text_source,
                                     "model.text_pretrained (DistilBERT)")
        for tower, key in ((self.image_encoder, "image_lora"), (self.text_encoder, "text_lora")):
            if getattr(cfg, key) is not None:
                apply_lora(tower, getattr(cfg, key), f"model.{key}")
        self.image_proj = projection(self.image_encoder.config.hidden_size, o.dim)
        self.text_proj = projection(self.text_encoder.config.dim, o.dim)
        self.latents = nn.Parameter(torch.randn(1, o.queries, o.dim) * 0.02)
        self.blocks = nn.ModuleList([CrossAttention(o.dim, o.heads, o.dropout) for _ in range(o.layers)])
        self.query_score = nn.Linear(o.dim, 1)
        self.head = nn.Sequential(mlp_head(o.dim, o.head_hidden, o.dropout), nn.Linear(1, 1))  # + calibration
        self.eval()

    def processor(self, tokenizer: Any) -> Processor:
        return TopKProcessor(self.cfg, tokenizer, self.cfg.topk)

    def example_batch(self, image_size: int | None = None, length: int | None = None) -> dict[str, Any]:
        batch = super().example_batch(image_size, length)  # the published count: one image (k = 1)
        batch["pixel_values"] = batch["pixel_values"].unsqueeze(1)
        batch["image_mask"] = batch.pop("has_image").unsqueeze(1)
        return batch

    def forward_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        pixels, image_mask = batch["pixel_values"], batch["image_mask"].bool()  # [B,k,3,H,W], [B,k]
        size, k = image_mask.shape
        hidden = self.image_encoder(pixel_values=pixels.flatten(0, 1)).last_hidden_state  # [B*k, T, 768]
        vision = self.image_proj(hidden).reshape(size, k * hidden.shape[1], -1)
        vis_mask = image_mask.repeat_interleave(hidden.shape[1], dim=1)
        text_mask = batch["attention_mask"].bool()
        text = self.text_proj(self.text_encoder(input_ids=batch["input_ids"], attention_mask=text_mask.long())
                              .last_hidden_state)
        tokens, mask = torch.cat([vision, text], 1), torch.cat([vis_mask, text_mask], 1)
        q = self.latents.repeat(size, 1, 1).to(tokens.dtype)  # a copy, not a view of the parameter
        for block in self.blocks:
            q = block(q, tokens, mask)
        weights = self.query_score(q).softmax(1)  # [B, Q, 1]: how much each latent query speaks
        with torch.autocast(q.device.type, enabled=False):  # head in fp32
            return self.head((weights * q).sum(1).float()).squeeze(-1)

    def saved_section(self) -> dict[str, Any]:
        out = super().saved_section()
        out["image_pretrained"] = out["text_pretrained"] = None
        out["vision"] = hf_config(self.image_encoder, out["vision"])
        out["text"] = hf_config(self.text_encoder, out["text"])
        return out


class TopKProcessor(Processor):
    """The first `topk` usable images of an item, stacked [B, k, 3, S, S] with an image mask [B, k]."""

    fixed_images = "topk"

    def __init__(self, cfg: ModelCfg, tokenizer: Any, topk: int) -> None:
        super().__init__(cfg, tokenizer)
        self.max_images = topk

    def extra(self, samples: list[Sample]) -> dict[str, Any]:
        pixels, mask = stack_images(samples, self.max_images, self.image_hw)
        return {"pixel_values": pixels, "image_mask": mask, "all_pixel_values": None, "image_index": None}
