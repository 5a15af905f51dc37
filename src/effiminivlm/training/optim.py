"""What the optimizer updates and how fast: per-part learning rates (partial freezing of a tower is
`models.freezing`).

Why: fine-tuning pretrained towers with a small learning rate while the new head (and any LoRA adapter)
learns faster is how MiniViTex and iamxredz fine-tune; it leaves the architecture (params, FLOPs) untouched.

Groups (AdamW): "backbone" = the towers' own parameters, "head" = everything else (the head, LoRA adapters),
each split into decay / no-decay (biases and normalisation weights, 1-d tensors) as BERT/timm recipes do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from effiminivlm.config import TrainCfg


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
