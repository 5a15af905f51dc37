"""LoRA adapters on a tower's projections (peft), from `model.<tower>.lora` (config.LoraCfg).

Why: fine-tuning a low-rank update of the attention projections (text) or the pointwise convolutions
(image) trains a few percent of the weights, which regularises on small data and, once merged, costs
nothing: the merged model is an ordinary EffiMiniVLM with the same parameters and FLOPs.

`apply_lora` injects peft's LoRA layers into the tower in place (`peft.inject_adapter_in_model`, no wrapper:
the tower keeps its forward) and freezes the tower's own weights. `merged_copy` returns a copy with every
adapter folded into its base layer and the `lora` entries cleared from its config: what `save_pretrained`
writes when `lora.merge` is true (the default). With `merge: false` the saved folder keeps the adapters and
its config keeps `lora`, so loading rebuilds the adapters (random init, no download) and reads their weights.
"""

from __future__ import annotations

import copy

from torch import nn

from effiminivlm.config import LoraCfg
from effiminivlm.errors import ConfigError

ADAPTER = "default"


def apply_lora(tower: nn.Module, cfg: LoraCfg, where: str) -> nn.Module:
    """Inject LoRA into the modules of `tower` named by `cfg.target_modules` (peft's suffix match); the
    tower's other weights are frozen. No matching module is a ConfigError naming `where`."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=list(cfg.target_modules), bias="none")
    try:
        inject_adapter_in_model(config, tower, adapter_name=ADAPTER)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in tower.named_modules()
                        if isinstance(m, nn.Linear | nn.Conv2d)})
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{where}.target_modules {list(cfg.target_modules)}: {reason[:120]} (Linear/Conv2d "
                          f"names in this tower: {', '.join(names[:20])})") from None
    set_trainable(tower, True)
    return tower


def lora_layers(module: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers inside `module` (empty when it has none; peft is imported only when it has)."""
    if not any("lora_" in name for name, _ in module.named_parameters()):
        return []
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


def set_trainable(tower: nn.Module, trainable: bool) -> None:
    """requires_grad for a tower: with LoRA only the adapters train (the base weights stay frozen)."""
    if not lora_layers(tower):
        tower.requires_grad_(trainable)
        return
    for name, p in tower.named_parameters():
        p.requires_grad_(trainable and "lora_" in name)


def merge_lora(module: nn.Module) -> None:
    """Fold every adapter of `module` into its base layer and put the base layer back in its place."""
    from peft.tuners.lora import LoraLayer

    for parent in list(module.modules()):
        for attr, sub in list(parent.named_children()):
            if isinstance(sub, LoraLayer):
                sub.merge(adapter_names=[ADAPTER])
                setattr(parent, attr, sub.get_base_layer())


def _merging_towers(model: nn.Module) -> list[str]:
    """The towers ("image_encoder", "text_encoder") whose adapters the config says to merge on save."""
    return [key for key in ("image_encoder", "text_encoder")
            if getattr(model, key, None) is not None and model.cfg.lora(key) is not None
            and model.cfg.lora(key).merge and lora_layers(getattr(model, key))]


def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy of an EffiMiniVLM with the adapters of the towers whose `lora.merge` is true folded into
    their weights, and `lora` cleared from those towers' config."""
    out = copy.deepcopy(model)
    for key in _merging_towers(out):
        merge_lora(getattr(out, key))
        out.cfg = out.cfg.without_lora(key)
    return out


def wants_merge(model: nn.Module) -> bool:
    """True when saving `model` must merge some adapters first."""
    return bool(_merging_towers(model))
