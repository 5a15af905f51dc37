"""Checkpoints of the reference implementation -> an ordinary EffiMiniVLM model folder.

Why: teams that trained with the reference code (github yinloonkhor/CVPR2026-EffiMiniVLM, `model.py`'s
`MultimodalRegressor`) hold a `.pt` state dict of that module. Its layout is ours under other names:

    image_backbone = Sequential(efficientnet_b0.features, avgpool, Flatten)  -> image_encoder.model.features
    text_backbone  = transformers AutoModel (BERT / MiniLM, pooler kept)     -> text_encoder.bert
    head           = Sequential(Linear-LN-GELU-Dropout x2, Linear)           -> head (same indices)

and the forward pass is the same (image features zeroed for items without an image, CLS token of the last
hidden state, concat [image; text], raw linear output that inference clamps to [1, 5]). The checkpoint is read
with `torch.load(weights_only=True)`, never unpickling code; the text architecture and tokenizer come from
`--text-model` (the state dict cannot tell the number of attention heads). Every key must be accounted for:
a foreign file, extra or missing keys and shape mismatches fail as one line naming a few of them.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from effiminivlm.config import EffiMiniVLMCfg, HeadCfg, ImageEncoderCfg, InputCfg, TextEncoderCfg
from effiminivlm.errors import WeightsError
from effiminivlm.files import partial_dir, remove_stale_partials, replace_dir
from effiminivlm.models.factory import create_model, create_tokenizer
from effiminivlm.models.regressor import EffiMiniVLM
from effiminivlm.models.text_encoders import bert_config_keys
from effiminivlm.models.weights import PREFIXES as PREFIXES_OF_SOURCES
from effiminivlm.models.weights import read_hf_config, read_state_dict_file

# Reference prefix -> our prefix (the reference's Sequential index 0 is torchvision's `features`).
PREFIXES = (("image_backbone.0.", "image_encoder.model.features."),
            ("text_backbone.", "text_encoder.bert."),
            ("head.", "head."))
# Buffers some transformers versions save and others do not; never weights.
_IGNORED = re.compile(r"^text_backbone\.embeddings\.position_ids$")
_HEAD_LINEAR = re.compile(r"^head\.(\d+)\.weight$")
# The reference's training defaults (config.py TRAIN_DEFAULTS): dropout is not in the state dict.
REFERENCE_DROPOUT = 0.1
REFERENCE_IMAGE_SIZE = 224
REFERENCE_MAX_LENGTH = 256


@dataclass(frozen=True)
class ConvertResult:
    """What `convert_reference` wrote: the folder, the inferred head and how many tensors were mapped."""

    out: Path
    hidden_dims: list[int]
    tensors: int
    params: int


def _rename(key: str) -> str | None:
    for ref, ours in PREFIXES:
        if key.startswith(ref):
            return ours + key[len(ref):]
    return None


def _reference_name(key: str) -> str:
    for ref, ours in PREFIXES:
        if key.startswith(ours):
            return ref + key[len(ours):]
    return key


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def read_reference_state(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (weights_only), checked to look like a MultimodalRegressor state dict."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    if path.suffix not in (".pt", ".pth", ".bin", ".ckpt", ".safetensors"):
        raise WeightsError(f"{path}: expected a .pt state dict of the reference MultimodalRegressor")
    state = read_state_dict_file(path)
    for wrapper in ("module.", "_orig_mod."):  # DataParallel / torch.compile key prefixes
        if state and all(k.startswith(wrapper) for k in state):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    unknown = sorted(k for k in state if _rename(k) is None and not _IGNORED.match(k))
    if unknown:
        raise WeightsError(f"{path}: not a reference MultimodalRegressor checkpoint: {len(unknown)} "
                           f"unexpected key(s) (e.g. {_few(unknown)}); expected only image_backbone.0.*, "
                           "text_backbone.*, head.*")
    if not any(k.startswith("head.") for k in state):
        raise WeightsError(f"{path}: not a reference MultimodalRegressor checkpoint: no head.* keys")
    return {k: v for k, v in state.items() if not _IGNORED.match(k)}


def head_dims(state: dict[str, torch.Tensor], where: str) -> list[int]:
    """Hidden sizes of the reference MLP head from its Linear weights (head.0, head.4, ...; last: 1 out)."""
    linears = sorted((int(m.group(1)), v) for k, v in state.items() if (m := _HEAD_LINEAR.match(k))
                     and v.ndim == 2)
    if not linears or [i for i, _ in linears] != list(range(0, 4 * len(linears), 4)):
        found = ", ".join(f"head.{i}" for i, _ in linears) or "none"
        raise WeightsError(f"{where}: head Linear layers at {found}; the reference head has them at "
                           "head.0, head.4, head.8 (Linear-LayerNorm-GELU-Dropout blocks)")
    out = int(linears[-1][1].shape[0])
    if out != 1:
        raise WeightsError(f"{where}: head.{linears[-1][0]}.weight has {out} outputs; only single-target "
                           "regression (num_outputs=1) converts to an effiminivlm model")
    return [int(v.shape[0]) for _, v in linears[:-1]]


def text_config(source: str) -> dict[str, Any]:
    """The BERT architecture of `source`'s config.json (keys BertConfig knows), refusing other model types."""
    config = read_hf_config(source)
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise WeightsError(f"{source}: model_type {model_type!r}; only BERT-family text backbones (MiniLM, "
                           "BERT) convert (the effiminivlm arch's text tower is BertModel)")
    keep = bert_config_keys()
    return {k: v for k, v in config.items() if k in keep}


def reference_model_cfg(source: str, hidden_dims: list[int], dropout: float = REFERENCE_DROPOUT,
                        image_size: int = REFERENCE_IMAGE_SIZE, max_length: int = REFERENCE_MAX_LENGTH
                        ) -> EffiMiniVLMCfg:
    """The EffiMiniVLM config that is the reference MultimodalRegressor: torchvision B0 (ImageNet mean/std,
    224 px), the BERT text tower of `source` with CLS pooling, and the MLP head of `hidden_dims`."""
    return EffiMiniVLMCfg(
        arch="effiminivlm",
        input=InputCfg(image_size=image_size, tokenizer=source, max_length=max_length),
        image_encoder=ImageEncoderCfg(name="efficientnet_b0", pretrained=None),
        text_encoder=TextEncoderCfg(name="bert", pretrained=None, config=text_config(source), pooling="cls"),
        head=HeadCfg(name="mlp", hidden_dims=list(hidden_dims), dropout=dropout))


def text_source(text_model: str) -> str:
    """A weight source for `--text-model`: a bare path to an existing folder means ``local-dir:<path>``."""
    kind = text_model.partition(":")[0]
    if kind not in PREFIXES_OF_SOURCES and Path(text_model).expanduser().is_dir():
        return f"local-dir:{Path(text_model).expanduser()}"
    return text_model


def load_reference(ckpt: str | Path, text_model: str, dropout: float = REFERENCE_DROPOUT,
                   image_size: int = REFERENCE_IMAGE_SIZE, max_length: int = REFERENCE_MAX_LENGTH
                   ) -> EffiMiniVLM:
    """The reference checkpoint as an EffiMiniVLM in eval mode (strict: every tensor mapped, shapes equal)."""
    path = Path(ckpt)
    text_model = text_source(text_model)
    state = read_reference_state(path)
    cfg = reference_model_cfg(text_model, head_dims(state, str(path)), dropout, image_size, max_length)
    model = create_model(cfg, pretrained=False)
    own = model.state_dict()
    renamed = {_rename(k): v for k, v in state.items()}
    missing = sorted(_reference_name(k) for k in own if k not in renamed)
    unexpected = sorted(k for k in state if _rename(k) not in own)
    shapes = [f"{_reference_name(k)} {tuple(v.shape)} vs {tuple(own[k].shape)}"
              for k, v in renamed.items() if k in own and v.shape != own[k].shape]
    problems = [f"{len(keys)} {label} (e.g. {_few(keys)})"
                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("shape mismatch(es)", shapes)) if keys]
    if problems:
        raise WeightsError(f"{path} does not match a MultimodalRegressor with the text model {text_model}: "
                           + "; ".join(problems))
    model.load_state_dict(renamed, strict=True)
    return model.eval()


def convert_reference(ckpt: str | Path, text_model: str, out: str | Path, *,
                      dropout: float = REFERENCE_DROPOUT, image_size: int = REFERENCE_IMAGE_SIZE,
                      max_length: int = REFERENCE_MAX_LENGTH, overwrite: bool = False) -> ConvertResult:
    """Write `out` (config.json + model.safetensors + the tokenizer of `text_model`), published atomically."""
    dest = Path(out)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not overwrite:
        raise WeightsError(f"{dest} already exists and is not empty; pass --overwrite to replace it")
    model = load_reference(ckpt, text_model, dropout, image_size, max_length)
    tokenizer = create_tokenizer(model.cfg)
    remove_stale_partials(dest)
    tmp = partial_dir(dest)
    try:
        model.save_pretrained(tmp, tokenizer=tokenizer)
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a publish; a failed save leaves nothing behind
    return ConvertResult(dest, list(model.cfg.head.hidden_dims), len(model.state_dict()), model.num_params())
