"""smolvlm2-regressor: the Snap Inc. baseline (teams wleach, olacnqoddchl): SmolVLM2 as a rating regressor.

    pixels [B,3,384,384] --SigLIP vision + pixel-shuffle connector (frozen)--> [B,36,576] image tokens --+
    prompt ids [B,L] (each field cut to 100 tokens) --token embeddings--> [B,L,576] -------------------+
       [image tokens; text embeddings] --SmolLM2 decoder (LM head dropped)--> masked mean --> [B,576]
       --> Linear(576,288)-ReLU-Linear(288,1) --> 1 + 4*sigmoid = rating [B]

transformers' SmolVLM classes (the Idefics3 family) build it; one image at a fixed size (no image
splitting/tiling). The image tokens are placed before the prompt as inputs_embeds, which is where the chat
template puts a single image; an item without an image has its image tokens masked out. Freezing the vision
tower and connector is the recipe's `train.freeze_image: true`.
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
from effiminivlm.models.blocks import ScaledSigmoid, check_hf_keys, hf_config, hf_tower, masked_mean, mlp_head
from effiminivlm.models.processor import Processor, base_fields
from effiminivlm.typed import check_int

#: text_config.model_type -> the transformers config class its keys are checked against
TEXT_CONFIGS = {"llama": "LlamaConfig"}

PROMPT = ("User: How would shoppers rate this product from 1 to 5?", ("Category", "category"),
          ("Title", "title"), ("Features", "features"), ("Description", "description"), "Assistant:")


@dataclass
class SmolVLMCfg(ModelCfg):
    arch: str = "smolvlm2-regressor"
    pretrained: str | None = None  # hf-hub:HuggingFaceTB/SmolVLM2-256M-Video-Instruct or local-dir:/path
    config: dict[str, Any] = field(default_factory=dict)  # SmolVLMConfig values (vision_config, text_config)
    head_hidden: int = 288
    field_tokens: int = 100  # each text field is cut to this many tokens before the prompt is joined

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("head_hidden", self.head_hidden, 1, 65536)
        check_int("field_tokens", self.field_tokens, 1, 8192)
        check_hf_keys("SmolVLMConfig", self.config, "config")
        vision, text = self.config.get("vision_config") or {}, self.config.get("text_config") or {}
        check_hf_keys("SmolVLMVisionConfig", vision, "config.vision_config")
        text_class = TEXT_CONFIGS.get(text.get("model_type", "llama"))
        if text_class is None:
            raise ConfigError(f"config.text_config.model_type must be one of {', '.join(TEXT_CONFIGS)}, "
                              f"got {text.get('model_type')!r}")
        check_hf_keys(text_class, {k: v for k, v in text.items() if k != "model_type"}, "config.text_config")


class VisionConnector(nn.Module):
    """The vision transformer + the pixel-shuffle connector: pixels -> image tokens in the text width."""

    def __init__(self, vision_model: nn.Module, connector: nn.Module) -> None:
        super().__init__()
        self.vision_model, self.connector = vision_model, connector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.connector(self.vision_model(pixel_values=pixel_values).last_hidden_state)


@register_arch("smolvlm2-regressor")
class SmolVLMRegressor(RatingModel):
    Config = SmolVLMCfg

    def __init__(self, cfg: SmolVLMCfg, pretrained: bool = False) -> None:
        from transformers import SmolVLMConfig, SmolVLMModel

        super().__init__(cfg)
        if cfg.modalities != "image_text":
            raise ConfigError("smolvlm2-regressor reads image and text: model.modalities must be image_text")
        source = self.cfg.pretrained if pretrained else None
        vlm = hf_tower(SmolVLMModel, SmolVLMConfig, self.cfg.config, source,
                       "model.pretrained (SmolVLM)")
        self.image_encoder = VisionConnector(vlm.vision_model, vlm.connector)
        self.text_encoder = vlm.text_model  # the decoder without its LM head
        self._config = vlm.config
        width = vlm.config.text_config.hidden_size
        self.head = nn.Sequential(mlp_head(width, self.cfg.head_hidden, 0.0, nn.ReLU), ScaledSigmoid())
        self.eval()

    def processor(self, tokenizer: Any) -> Processor:
        return PromptProcessor(self.cfg, tokenizer, self.cfg.field_tokens)

    def forward_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        mask = batch["attention_mask"]
        embeds = self.text_encoder.get_input_embeddings()(batch["input_ids"])
        if batch.get("pixel_values") is not None:
            image = self.image_encoder(batch["pixel_values"]).to(embeds.dtype)  # [B, T_img, width]
            has = batch.get("has_image")
            has = torch.ones(len(image), dtype=torch.bool, device=image.device) if has is None else has
            embeds = torch.cat([image, embeds], 1)
            mask = torch.cat([has.to(mask.dtype).unsqueeze(1).expand(-1, image.shape[1]), mask], 1)
        hidden = self.text_encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        with torch.autocast(hidden.device.type, enabled=False):  # head in fp32
            return self.head(masked_mean(hidden.float(), mask)).squeeze(-1)

    def saved_section(self) -> dict[str, Any]:
        out = super().saved_section()
        out["config"] = {**out["config"], "scale_factor": self._config.scale_factor,
                         "vision_config": hf_config(self.image_encoder.vision_model, {}),
                         "text_config": {"model_type": self._config.text_config.model_type,
                                         **hf_config(self.text_encoder, {})}}
        return out


class PromptProcessor(Processor):
    """One image at the recipe's fixed size; the text as an instruction prompt whose fields are each cut to
    `field_tokens` tokens before joining (so a long description cannot crowd out the title), then the
    whole prompt to max_length."""

    def __init__(self, cfg: ModelCfg, tokenizer: Any, field_tokens: int) -> None:
        super().__init__(cfg, tokenizer)
        self.field_tokens = field_tokens

    def collator(self, pad_to_max: bool = False) -> Any:
        return PromptCollate(self, pad_to_max)


class PromptCollate:
    def __init__(self, processor: PromptProcessor, pad_to_max: bool) -> None:
        self.p, self.pad_to_max = processor, pad_to_max

    def ids(self, sample: Sample) -> list[int]:
        tok, out = self.p.tokenizer, []
        for part in PROMPT:
            if isinstance(part, str):
                out += tok(part + "\n", add_special_tokens=False)["input_ids"]
                continue
            label, key = part
            value = tok(sample.fields.get(key, ""), add_special_tokens=False)["input_ids"]
            value = value[:self.p.field_tokens]
            out += tok(f"{label}: ", add_special_tokens=False)["input_ids"] + value
            out += tok("\n", add_special_tokens=False)["input_ids"]
        return out[:self.p.max_length]

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        rows = [self.ids(s) for s in samples]
        width = self.p.max_length if self.pad_to_max else max(len(r) for r in rows)
        pad = self.p.tokenizer.pad_token_id or 0
        out = base_fields(samples)
        out["input_ids"] = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        out["attention_mask"] = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return out
