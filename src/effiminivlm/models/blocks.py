"""Blocks the architectures share, written once: the scaled-sigmoid output, mask-aware mean pooling,
projection, a small transformer fusion encoder, attention pooling, cross-attention, an MLP head, and the two
ways towers are built (transformers classes and timm models: random init from a config, or real weights
from a weight source).

Why one module: every peer system of the leaderboard is "towers + a small fusion + a head"; writing these
parts once keeps each architecture's module short enough to read whole and makes them comparable.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from typing import Any

import torch
from torch import nn

from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.errors import ConfigError, WeightsError
from effiminivlm.models.weights import load_into, load_state_dict, resolve_source


class TowerWrapper(nn.Module):
    """A module standing in for a tower (`inner`) whose attributes (`num_features`, `architecture()`, ...)
    stay readable through it, so code that inspects a model's towers works on a fast model's wrapped ones."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


def channels_last_inputs(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: 4-D tensor inputs in NHWC (channels-last), the layout oneDNN's CPU convolutions want;
    the fast scoring path and training's `image_channels_last` both register it on the image tower."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4
                 else a for a in args)


class ScaledSigmoid(nn.Module):
    """x -> 1 + 4 * sigmoid(x): a rating on [1, 5] by construction (the LoViF teams' output layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = RATING_RANGE
        return lo + (hi - lo) * torch.sigmoid(x)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, L, D] -> [B, D]: the mean over the positions `mask` [B, L] marks (all when None); a row with no
    marked position gives zeros, and whatever a masked position holds (even NaN) never leaks in."""
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).bool()
    total = hidden.masked_fill(~m, 0.0).sum(1)  # masked_fill, not a product: masked rows may hold NaN
    return total / m.sum(1).clamp(min=1).to(hidden.dtype)


def projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear + LayerNorm: a tower's tokens into the fusion width."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))


def fusion_encoder(dim: int, layers: int, heads: int, dropout: float = 0.1, ff_mult: int = 4
                   ) -> nn.TransformerEncoder:
    """A small post-norm TransformerEncoder (batch first, GELU) over fused tokens."""
    layer = nn.TransformerEncoderLayer(dim, heads, dim * ff_mult, dropout, activation="gelu",
                                       batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class AttentionPool(nn.Module):
    """[B, L, D] -> [B, D]: a softmax over one learned score per token (masked positions excluded)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.score(tokens).squeeze(-1).float()
        if mask is not None:
            logits = logits.masked_fill(~mask.bool(), torch.finfo(logits.dtype).min)
        weights = logits.softmax(-1).to(tokens.dtype)
        return (weights.unsqueeze(-1) * tokens).sum(1)


class CrossAttention(nn.Module):
    """Queries attend to keys/values (pre-norm), then a feed-forward block; both residual."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(4 * dim, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor | None = None) -> torch.Tensor:
        pad = None if kv_mask is None else ~kv_mask.bool()
        kv = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return q + self.ff(self.norm_ff(q))


def mlp_head(in_dim: int, hidden: int, dropout: float = 0.1, act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """Linear-act-Dropout-Linear(., 1)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), act(), nn.Dropout(dropout), nn.Linear(hidden, 1))


# ------------------------------------------------------------------------------------------------- towers


def hf_tower(model_cls: Any, config_cls: Any, config: dict[str, Any], source: str | None, what: str,
             attn: str = "sdpa", **kwargs: Any) -> Any:
    """A transformers model: random init from `config` (the published architecture written in the recipe,
    so it builds offline), or `from_pretrained` on a weight source (hf-hub id or local folder; offline a
    one-line WeightsError naming the option `what` and the local-dir form). `attn`: "eager" for a model
    transformers has no SDPA attention for (DeBERTa)."""
    if source is None:
        return model_cls(config_cls(**config, attn_implementation=attn), **kwargs)
    try:
        path = resolve_source(source)
    except WeightsError as e:
        raise WeightsError(f"{what}: {e}") from None
    try:
        return model_cls.from_pretrained(str(path), local_files_only=True, dtype=torch.float32,
                                         attn_implementation=attn, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{what}: cannot load {source} ({reason}); point it at a local copy: "
                           "local-dir:/path/to/folder") from None


_BOOKKEEPING = {"transformers_version", "architectures", "_name_or_path", "model_type", "dtype",
                "torch_dtype",
                "id2label", "label2id", "return_dict", "output_attentions", "output_hidden_states",
                "_attn_implementation_autoset", "use_cache"}


@functools.cache
def _hf_keys(config_name: str) -> frozenset[str]:
    """The keys transformers' `config_name` means something by: its defaults (and one level of their nested
    dicts, e.g. `rope_parameters.rope_theta`), its constructor's parameters and the attributes its modeling
    module reads (`config.x`, `getattr(config, "x", ...)`, as DeBERTa's `norm_rel_ebd`)."""
    import importlib

    import transformers

    cls = getattr(transformers, config_name)
    defaults = cls().to_dict()
    keys = set(defaults) | set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    keys |= {k for v in defaults.values() if isinstance(v, dict) for k in v if isinstance(k, str)}
    try:
        modeling = importlib.import_module(cls.__module__.replace(".configuration_", ".modeling_"))
        source = inspect.getsource(modeling)
    except (ImportError, OSError, TypeError):
        source = ""
    keys |= set(re.findall(r"\bconfig\.([a-z_][a-z0-9_]*)", source))
    keys |= set(re.findall(r"getattr\(\s*config\s*,\s*[\"']([a-z_][a-z0-9_]*)", source))
    return frozenset(keys)


def check_hf_keys(config_name: str, values: dict[str, Any], where: str) -> None:
    """Every key of `values` is one transformers' `config_name` (e.g. "CLIPVisionConfig") knows: a config
    class takes any keyword, so a typo such as `hiden_size` would silently build the default size. Fails
    with the first unknown key, named `where.key`, and the closest known one."""
    known = _hf_keys(config_name)
    unknown = sorted(set(values) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}.{unknown[0]}: not a {config_name} key{hint}")


def hf_config(model: Any, keep: dict[str, Any]) -> dict[str, Any]:
    """A built transformers model's architecture as recipe values: the keys of `keep` (the recipe's), or
    every non-default key when `keep` is empty, read back from the model's config, so a model loaded from
    a weight source saves what it really is and rebuilds offline."""
    cfg = model.config.to_dict()
    if keep:
        return {k: cfg.get(k, v) for k, v in keep.items()}
    return {k: v for k, v in model.config.to_diff_dict().items() if k not in _BOOKKEEPING}


def timm_tower(name: str, source: str | None, what: str, **kwargs: Any) -> nn.Module:
    """A timm model without classifier (`pretrained=False`: built offline), then a weight source's state
    dict (safetensors / weights-only .pt / hf folder) loaded strictly when given."""
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if source is not None:
        try:
            state = load_state_dict(source)
        except WeightsError as e:
            raise WeightsError(f"{what}: {e}") from None
        drop = ("classifier.", "head.fc.", "fc.", "head.")  # the classifier a tower does not keep
        state = {k: v for k, v in state.items() if not k.startswith(drop)}
        load_into(model, state, f"{what} from {source}")
    return model
