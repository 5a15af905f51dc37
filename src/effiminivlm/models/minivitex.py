"""minivitex: MiniViTex (early token fusion): CNN feature-map tokens and BERT-Mini tokens in one encoder.

    pixels [B,3,384,384] --EfficientNetV2-S--> [B,1280,12,12] --> 144 tokens --proj--> [B,144,384] --+
                                               attention pool --> image pseudo-CLS [B,1,384] ----------+
    ids [B,32] --BERT-Mini (4 layers, 256-d)--> [B,32,256] --proj--> [B,32,384] --------------------+
    [CLS; image pseudo-CLS; visual tokens; text tokens] + one shared positional encoding
       --> 2-layer 4-head encoder (dropout 0.1) --> LayerNorm + Linear on CLS = rating [B]

The backbone is any timm model (`backbone`: tf_efficientnetv2_s, or resnet50 / deit_small_patch16_224 as
options); its feature map is average-pooled to `grid` x `grid` tokens (a ViT's patch tokens are laid back on
their grid first). `modalities: image` drops the text tokens (the ablation), `text` the visual ones.

The second head (`task: multilabel`): one logit per label of the item's `categories` (sigmoid + BCE, loss
`bce`). Its vocabulary is built from the TRAIN split (`fit_task`: labels in >= `min_label_freq` items, at
most `max_labels`), saved in config.json (`labels`) with the per-class `thresholds` tuned on val, so a
reloaded folder rebuilds the same head offline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from effiminivlm.config import ModelCfg
from effiminivlm.data.dataset import Sample
from effiminivlm.data.labels import LabelVocab, build_label_vocab
from effiminivlm.errors import ConfigError
from effiminivlm.models.archs import register_arch
from effiminivlm.models.base import RatingModel
from effiminivlm.models.blocks import (
    AttentionPool,
    check_hf_keys,
    fusion_encoder,
    hf_config,
    hf_tower,
    projection,
    timm_tower,
)
from effiminivlm.models.processor import Processor
from effiminivlm.typed import check_int, check_number


@dataclass
class MiniViTexCfg(ModelCfg):
    arch: str = "minivitex"
    backbone: str = "tf_efficientnetv2_s"  # a timm model name
    image_pretrained: str | None = None  # the backbone's weights: local-file:/path/x.safetensors, ...
    text_pretrained: str | None = None  # BERT-Mini: hf-hub:google/bert_uncased_L-4_H-256_A-4 or local-dir:
    text: dict[str, Any] = field(default_factory=dict)  # BertConfig values
    dim: int = 384
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    grid: int = 12  # visual tokens per side
    task: str = "rating"  # rating | multilabel (the `categories` head)
    min_label_freq: int = 5  # multilabel: a label is kept when in >= this many train items
    max_labels: int | None = None  # multilabel: at most this many (the most frequent)
    labels: list[str] | None = None  # multilabel: the vocabulary (set by fit_task, saved with the model)
    thresholds: list[float] | None = None  # multilabel: per-class thresholds tuned on val (None: 0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("dim", self.dim, 1, 8192)
        check_int("layers", self.layers, 1, 64)
        check_int("heads", self.heads, 1, self.dim)
        check_number("dropout", self.dropout, ge=0, lt=1)
        check_int("grid", self.grid, 1, 64)
        check_hf_keys("BertConfig", self.text, "text")
        if self.task not in ("rating", "multilabel"):
            raise ConfigError(f"model.task must be rating or multilabel, got {self.task!r}")
        check_int("min_label_freq", self.min_label_freq, 1, 10**9)
        if self.max_labels is not None:
            check_int("max_labels", self.max_labels, 1, 10**6)
        if self.labels is not None and (not all(isinstance(x, str) for x in self.labels)
                                        or len(set(self.labels)) != len(self.labels) or not self.labels):
            raise ConfigError("model.labels must be a non-empty list of distinct strings")
        if self.thresholds is not None and (self.labels is None or len(self.thresholds) != len(self.labels)):
            raise ConfigError(f"model.thresholds: {len(self.thresholds)} values for "
                              f"{len(self.labels or [])} labels")


class LabelProcessor(Processor):
    """MiniViTex's multi-label batches: the default fields, with `target` the items' multi-hot [B, K]
    `categories` over the model's vocabulary (labels outside it ignored)."""

    def __init__(self, cfg: ModelCfg, tokenizer: Any, labels: list[str]) -> None:
        super().__init__(cfg, tokenizer)
        self.vocab = LabelVocab(list(labels), {}, 1, 0)

    def extra(self, samples: list[Sample]) -> dict[str, Any]:
        return {"target": torch.from_numpy(self.vocab.encode_many([s.categories for s in samples]))}


@register_arch("minivitex")
class MiniViTex(RatingModel):
    Config = MiniViTexCfg

    def __init__(self, cfg: MiniViTexCfg, pretrained: bool = False) -> None:
        from transformers import BertConfig, BertModel

        super().__init__(cfg)
        o = self.cfg
        n_text = 0
        if cfg.modalities != "text":
            self.image_encoder = timm_tower(o.backbone, o.image_pretrained if pretrained else None,
                                            "model.image_pretrained")
            self.image_proj = projection(self.image_encoder.num_features, o.dim)
            self.image_pool = AttentionPool(o.dim)  # the image-only pseudo-CLS
        if cfg.modalities != "image":
            text_source = o.text_pretrained if pretrained else None
            self.text_encoder = hf_tower(BertModel, BertConfig, o.text, text_source,
                                         "model.text_pretrained (BERT-Mini)",
                                         add_pooling_layer=False)
            self.text_proj = projection(self.text_encoder.config.hidden_size, o.dim)
            n_text = self.cfg.input.max_length
        self.cls = nn.Parameter(torch.zeros(1, 1, o.dim))
        self.pos = nn.Parameter(torch.randn(1, 2 + o.grid**2 + n_text, o.dim) * 0.02)  # shared by all tokens
        self.encoder = fusion_encoder(o.dim, o.layers, o.heads, o.dropout)
        self.task = o.task
        self.head = nn.Sequential(nn.LayerNorm(o.dim), nn.Linear(o.dim, len(o.labels or [None])))
        nn.init.constant_(self.head[1].bias, 3.0 if o.task == "rating" else 0.0)  # rating: mid of 1-5
        self.eval()

    @property
    def data_columns(self) -> tuple[str, ...]:
        return ("categories",) if self.task == "multilabel" else ()

    def processor(self, tokenizer: Any) -> Processor:
        if self.task != "multilabel":
            return super().processor(tokenizer)
        if not self.cfg.labels:
            raise ConfigError("a multilabel MiniViTex has no label vocabulary yet: call fit_task(train_rows)")
        return LabelProcessor(self.cfg, tokenizer, self.cfg.labels)

    def fit_task(self, train_rows: Any) -> None:
        """Multilabel: the vocabulary of the train split's `categories`, a head of that size, its biases at
        each label's log-odds in train (the first steps then learn differences, not the base rates)."""
        if self.task != "multilabel":
            return
        cats = train_rows.column("categories").to_pylist()
        vocab = build_label_vocab(cats, self.cfg.min_label_freq, self.cfg.max_labels)
        if not len(vocab):
            raise ConfigError(f"no label of `categories` is in >= {self.cfg.min_label_freq} of the "
                              f"{len(cats)} train items; lower model.min_label_freq")
        ref = self.head[1].weight
        head = nn.Linear(self.cfg.dim, len(vocab)).to(device=ref.device, dtype=ref.dtype)
        p = torch.tensor([vocab.counts[x] / max(vocab.n_items, 1) for x in vocab.labels]).clamp(1e-3, 0.999)
        with torch.no_grad():
            head.bias.copy_(torch.log(p / (1 - p)))
        self.head[1] = head
        self.cfg.labels, self.cfg.thresholds = list(vocab.labels), None

    def init_output_bias(self, rating: float) -> None:
        if self.task == "rating":  # multilabel: fit_task set the label base rates
            super().init_output_bias(rating)

    def set_thresholds(self, thresholds: Any) -> None:
        """Per-class decision thresholds (tuned on val), saved with the model."""
        self.cfg.thresholds = [float(t) for t in thresholds]

    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, grid*grid, num_features]: the backbone's last feature map, pooled to the grid."""
        fmap = self.image_encoder.forward_features(pixels)
        if fmap.ndim == 3:  # a ViT: patch tokens back onto their square grid
            tokens = fmap[:, getattr(self.image_encoder, "num_prefix_tokens", 1):]
            side = math.isqrt(tokens.shape[1])
            fmap = tokens.transpose(1, 2).reshape(len(tokens), -1, side, side)
        return F.adaptive_avg_pool2d(fmap, self.cfg.grid).flatten(2).transpose(1, 2)

    def forward_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        ref = batch["input_ids"] if batch.get("input_ids") is not None else batch["pixel_values"]
        size, dev = len(ref), ref.device
        g2 = self.cfg.grid ** 2  # position slots: CLS 0, pseudo-CLS 1, visual 2..g2+1, text after
        tokens = [self.cls.expand(size, -1, -1) + self.pos[:, :1]]
        masks = [torch.ones(size, 1, dtype=torch.bool, device=dev)]
        pixels = batch.get("pixel_values")
        if self.image_encoder is not None and pixels is not None:
            vis = self.image_proj(self.visual_tokens(pixels))
            has = batch.get("has_image")
            has = torch.ones(size, dtype=torch.bool, device=dev) if has is None else has.bool()
            tokens.append(torch.cat([self.image_pool(vis).unsqueeze(1), vis], 1) + self.pos[:, 1:2 + g2])
            masks.append(has.unsqueeze(1).expand(-1, 1 + g2))
        if self.text_encoder is not None:
            mask = batch["attention_mask"]
            hidden = self.text_encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
            tokens.append(self.text_proj(hidden) + self.pos[:, 2 + g2:2 + g2 + hidden.shape[1]])
            masks.append(mask.bool())
        x, mask = torch.cat(tokens, 1), torch.cat(masks, 1)
        x = self.encoder(x, src_key_padding_mask=~mask)
        with torch.autocast(x.device.type, enabled=False):  # head in fp32
            out = self.head(x[:, 0].float())
        return out if self.task == "multilabel" else out.squeeze(-1)

    def saved_section(self) -> dict[str, Any]:
        out = super().saved_section()
        out["image_pretrained"] = out["text_pretrained"] = None
        if self.text_encoder is not None:
            out["text"] = hf_config(self.text_encoder, out["text"])
        return out
