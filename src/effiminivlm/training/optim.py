"""What the optimizer updates and how fast: partial freezing of a tower and per-part learning rates.

Why: fine-tuning pretrained towers with a small learning rate while the new head (and any LoRA adapter)
learns faster, and keeping the lowest layers fixed, are how MiniViTex and iamxredz fine-tune; both leave the
architecture (params, FLOPs) untouched.

    freeze_text_layers N   the text tower's embeddings and its first N transformer layers
    freeze_image_blocks N  the image tower's stem and its first N stages (timm `blocks[i]`, torchvision
                           `features[1..N]`)
Frozen parts also stay in eval mode (BatchNorm statistics and dropout fixed; see EffiMiniVLM.train).

Groups (AdamW): "backbone" = the towers' own parameters, "head" = everything else (the head, LoRA adapters),
each split into decay / no-decay (biases and normalisation weights, 1-d tensors) as BERT/timm recipes do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from effiminivlm.errors import ConfigError

if TYPE_CHECKING:
    from effiminivlm.config import TrainCfg


def _text_layers(tower: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(modules below the layers, the ordered transformer layers) of a text tower."""
    bert = getattr(tower, "bert", None)
    if bert is None or not hasattr(bert, "encoder"):
        raise ConfigError(f"train.freeze_text_layers: the text encoder {type(tower).__name__} has no "
                          "transformer layers this knows how to freeze")
    return [bert.embeddings], list(bert.encoder.layer)


def _image_blocks(tower: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(stem modules, the ordered stages) of an image tower (timm or torchvision EfficientNet-style)."""
    net = getattr(tower, "model", tower)
    if hasattr(net, "blocks") and hasattr(net, "conv_stem"):  # timm EfficientNet / MobileNet family
        return [net.conv_stem, net.bn1], list(net.blocks)
    if isinstance(getattr(net, "features", None), nn.Sequential):  # torchvision: features[0] is the stem
        return [net.features[0]], list(net.features[1:])
    raise ConfigError(f"train.freeze_image_blocks: the image encoder {type(net).__name__} has no stages this "
                      "knows how to freeze")


def freeze_layers(model: nn.Module, text_layers: int = 0, image_blocks: int = 0) -> list[nn.Module]:
    """Freeze the first `text_layers` / `image_blocks` of the towers (with what lies below them); returns the
    frozen modules, which the model keeps in eval mode. More layers than the tower has is a ConfigError."""
    frozen: list[nn.Module] = []
    for n, tower, split, key in ((text_layers, getattr(model, "text_encoder", None), _text_layers,
                                  "freeze_text_layers"),
                                 (image_blocks, getattr(model, "image_encoder", None), _image_blocks,
                                  "freeze_image_blocks")):
        if not n:
            continue
        if tower is None:
            raise ConfigError(f"train.{key}={n}, but the model has no such tower (model.modalities)")
        below, layers = split(tower)
        if n > len(layers):
            raise ConfigError(f"train.{key} is {n}, but the tower has only {len(layers)}")
        frozen += below + layers[:n]
    for m in frozen:
        m.requires_grad_(False)
    model._frozen_parts = frozen  # EffiMiniVLM.train keeps them in eval mode
    model.train(model.training)
    return frozen


def param_groups(model: nn.Module, cfg: TrainCfg) -> list[dict[str, Any]]:
    """AdamW parameter groups: backbone (towers) and head (the rest), each with its own lr / weight decay
    (falling back to train.lr / train.weight_decay), and no decay on 1-d tensors. Empty groups are left out;
    each group carries a `name` for the log."""
    towers = [getattr(model, k, None) for k in ("image_encoder", "text_encoder")]
    backbone_ids = set()
    for tower in towers:
        if tower is not None:
            backbone_ids |= {id(p) for n, p in tower.named_parameters() if "lora_" not in n}
    settings = {
        "backbone": (cfg.lr_backbone or cfg.lr, cfg.weight_decay if cfg.weight_decay_backbone is None
                     else cfg.weight_decay_backbone),
        "head": (cfg.lr_head or cfg.lr, cfg.weight_decay if cfg.weight_decay_head is None
                 else cfg.weight_decay_head),
    }
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            part = "backbone" if id(p) in backbone_ids else "head"
            buckets.setdefault((part, p.ndim > 1), []).append(p)
    groups = []
    for (part, decays), params in sorted(buckets.items()):
        lr, wd = settings[part]
        groups.append({"params": params, "lr": lr, "weight_decay": wd if decays else 0.0,
                       "name": f"{part}{'' if decays else '/no_decay'}"})
    return groups
