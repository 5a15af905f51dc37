"""Text towers, created by name: ``(input_ids, attention_mask) [B,L] -> pooled features [B, num_features]``.

Why BertModel with its pooler kept: the paper loads MiniLM with ``AutoModel`` (which includes BERT's pooler
layer) and its 27.7M parameter count includes it, so the efficiency protocol must count it too; the feature
we regress on is the CLS token of the last hidden state, not the pooler output.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from effiminivlm.config import POOLINGS, TextEncoderCfg
from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.models.blocks import TowerWrapper
from effiminivlm.models.weights import (
    find_weights_file,
    load_into,
    read_hf_config,
    read_state_dict_file,
    resolve_source,
)
from effiminivlm.registry import Registry

TEXT_ENCODERS: Registry = Registry("text encoder")


class BertTextEncoder(nn.Module):
    """A transformers BertModel (pooler kept) whose last hidden state is pooled by CLS, masked mean, masked
    mean scaled to unit length (`mean_l2`), or masked mean and masked max side by side (`mean_max`)."""

    def __init__(self, bert: BertModel, pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise EffiMiniVLMError(f"text_encoder.pooling must be one of {', '.join(POOLINGS)}, "
                                   f"got {pooling!r}")
        self.bert = bert
        self.pooling = pooling
        self.num_features: int = bert.config.hidden_size * (2 if pooling == "mean_max" else 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
        return self._pool(hidden, attention_mask)

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        # mean_l2: sentence-transformers' Normalize after the mean, the feature the sentence encoder was
        # trained to compare by cosine (docs/realdata.md: a frozen probe on it alone +0.004 PLCC on Fashion,
        # level with the raw mean inside the hybrid)
        if self.pooling == "mean_max":
            # mean_max: the strongest activation of each feature over the tokens, beside the mean (a word that
            # matters in a long title is not averaged away). On 5,773 real Fashion items, 5-fold: +0.004 PLCC
            # in the hybrid without its neighbours block, +0.001 with it (docs/realdata.md). The mask is a
            # large negative, not -inf: an all-padding row stays finite
            peak = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(1)
            return torch.cat([pooled, peak], dim=-1)
        return F.normalize(pooled, dim=-1) if self.pooling == "mean_l2" else pooled

    @property
    def depth(self) -> int:
        return len(self.bert.encoder.layer)

    def depth_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """[B, depth, H]: entry d-1 is what this tower cut to its first d layers returns (`truncate(d)`),
        all depths from one pass. Why: a frozen sentence encoder's last layer is tuned for similarity, and
        on small rating data an intermediate layer can carry more of the signal (docs/realdata.md)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=True).hidden_states  # embeddings, then one per layer
        return torch.stack([self._pool(h, attention_mask) for h in hidden[1:]], dim=1)

    def truncate(self, depth: int) -> BertTextEncoder:
        """Keep the first `depth` transformer layers (in place; the config records the new depth, so a
        saved model rebuilds at it). The layers dropped are never computed, counted or stored."""
        if not 1 <= depth <= self.depth:
            raise EffiMiniVLMError(f"text tower depth {depth}: this tower has layers 1..{self.depth}")
        self.bert.encoder.layer = self.bert.encoder.layer[:depth]
        self.bert.config.num_hidden_layers = depth
        return self

    def cls_only(self) -> ClsOnlyLastLayer | None:
        """This tower computing its last layer for the CLS position only (the fast path's lever), or None
        where that is not the same function (mean pooling, a decoder / cross-attention BERT)."""
        cfg = self.bert.config
        layers = len(self.bert.encoder.layer)
        if self.pooling != "cls" or cfg.is_decoder or cfg.add_cross_attention or not layers:
            return None
        return ClsOnlyLastLayer(self)

    def architecture(self) -> dict[str, Any]:
        """The BertConfig values needed to rebuild this tower without its weight source (for saving)."""
        keep = bert_config_keys()  # drops bookkeeping and legacy keys such as position_embedding_type
        return {k: v for k, v in self.bert.config.to_dict().items() if k in keep}


class ClsOnlyLastLayer(TowerWrapper):
    """A CLS-pooled BERT tower whose last layer runs for the CLS position only: the same function, ~1/7 less
    work at 6 layers. Why it is exact: the pooled feature is the last layer's output at position 0, which
    reads every position's keys and values but only its own query, attention output and feed-forward; the
    other positions' outputs of that layer are never used. Earlier layers run unchanged, with the padding
    mask as SDPA's boolean key mask."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        bert = self.inner.bert
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        keep = mask.bool()[:, None, None, :]  # [B, 1, 1, L]: which keys each query may read
        hidden = bert.embeddings(input_ids=input_ids)
        for layer in bert.encoder.layer[:-1]:
            out = layer(hidden, keep)
            hidden = out[0] if isinstance(out, tuple) else out  # transformers 4.x returns a tuple
        last = bert.encoder.layer[-1]
        sa = last.attention.self
        b, n, _ = hidden.shape
        d = sa.attention_head_size
        cls = hidden[:, :1]
        q = sa.query(cls).view(b, 1, -1, d).transpose(1, 2)
        k = sa.key(hidden).view(b, n, -1, d).transpose(1, 2)
        v = sa.value(hidden).view(b, n, -1, d).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=d**-0.5)
        att = last.attention.output(ctx.transpose(1, 2).reshape(b, 1, -1), cls)
        return last.output(last.intermediate(att), att)[:, 0]


_NOT_ARCHITECTURE = {"transformers_version", "architectures", "dtype", "model_type", "_name_or_path",
                     "id2label", "label2id", "problem_type", "return_dict", "output_attentions",
                     "output_hidden_states"}


def bert_config_keys() -> set[str]:
    """BertConfig keys that describe the network (what a recipe may set and a saved model records)."""
    return set(BertConfig().to_dict()) - _NOT_ARCHITECTURE


def _check_config_keys(config: dict[str, Any]) -> None:
    """A typo such as `hiden_size` would silently build a default-size BERT: refuse unknown keys."""
    known = bert_config_keys()
    unknown = sorted(set(config) - known)
    if unknown:
        hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        words = [f"{k} (did you mean {h[0]}?)" if h else k for k, h in hints.items()]
        raise EffiMiniVLMError(f"unknown BERT config key(s) in model.text_encoder.config: {', '.join(words)}")


def _random_bert(config: dict[str, Any]) -> BertModel:
    """A randomly initialised BertModel (pooler kept, SDPA attention) from config.json-style values."""
    return BertModel(BertConfig.from_dict(config, attn_implementation="sdpa"), add_pooling_layer=True)


def _bert_from_folder(folder: Path, overrides: dict[str, Any], what: str) -> BertModel:
    """`BertModel.from_pretrained` on a local HF folder, offline, float32, failing on any missing weight."""
    try:
        model, info = BertModel.from_pretrained(str(folder), add_pooling_layer=True,
                                                attn_implementation="sdpa", dtype=torch.float32,
                                                local_files_only=True, output_loading_info=True, **overrides)
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"cannot load BERT weights for {what} from {folder}: {e}") from None
    bad = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise WeightsError(f"weights for {what} do not match the architecture: {bad or info['error_msgs']}")
    return model


@TEXT_ENCODERS.register("bert")
def bert(config: dict[str, Any] | None = None, source: str | None = None, pooling: str = "cls",
         config_source: str | None = None) -> BertTextEncoder:
    """BERT/MiniLM with the pooler layer kept.

    Without `source`: random init from `config`, or, when `config` is empty, from the config.json of
    `config_source` (so a preset builds at its real size without loading its weights). With `source`: the
    architecture comes from the source's config.json (the recipe's `config` overrides single values, as
    `from_pretrained` kwargs) and every weight must load; a bare state-dict file needs `config`.
    """
    config = dict(config or {})
    _check_config_keys(config)
    if source is None:
        if not config and config_source:
            config = read_hf_config(config_source)
        if not config:
            raise EffiMiniVLMError("model.text_encoder.config is empty and no weights are loaded: set its "
                                   "hidden_size, num_hidden_layers, ... (or a weight source)")
        return BertTextEncoder(_random_bert(config), pooling)
    path = resolve_source(source)  # hf-hub: a snapshot via huggingface_hub (internet or the HF cache)
    if path.is_dir() and (path / "config.json").is_file():
        return BertTextEncoder(_bert_from_folder(path, config, source), pooling)
    # A bare state dict (file, or folder without config.json): the architecture must come from `config`.
    encoder = BertTextEncoder(_random_bert(config or read_hf_config(source)), pooling)
    state = read_state_dict_file(find_weights_file(path) if path.is_dir() else path)
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    load_into(encoder.bert, state, f"bert from {source}")
    return encoder


def create_text_encoder(cfg: TextEncoderCfg, pretrained: bool = True) -> nn.Module:
    """Build `cfg.name` from the registry; load `cfg.pretrained` only when `pretrained` (else random init,
    with the architecture read from the weight source when `cfg.config` is empty)."""
    source = cfg.pretrained if pretrained else None
    return TEXT_ENCODERS.build(cfg.name, config=dict(cfg.config), source=source, pooling=cfg.pooling,
                               config_source=None if pretrained else cfg.pretrained)
