"""Partial freezing of a tower: the recipe's `train.freeze_text_layers` / `train.freeze_image_blocks`.

Why in models: which layers a recipe freezes decides its trainable parameter count, which the protocol's
recipe table reports as well as training applies; both read it here, so the protocol needs no training code.

    freeze_text_layers N   the text tower's embeddings and its first N transformer layers
    freeze_image_blocks N  the image tower's stem and its first N stages (timm `blocks[i]`, torchvision
                           `features[1..N]`)
Frozen parts also stay in eval mode (BatchNorm statistics and dropout fixed; see EffiMiniVLM.train).

Gradual unfreezing (`train.unfreeze_per_epoch`, `GradualUnfreezing`): epoch 1 trains only what lies outside
the towers (the head), each later epoch opens that many more groups, from the output side down.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from effiminivlm.errors import ConfigError


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


def apply_recipe_freezing(model: nn.Module, train: Any) -> None:
    """A recipe's whole freezing (`train.freeze_image` / `freeze_text` towers, then the partial layers), as
    training applies it, so a model's trainable count is what its training updates."""
    if hasattr(model, "freeze"):
        model.freeze(image=train.freeze_image, text=train.freeze_text)
    if train.freeze_text_layers or train.freeze_image_blocks:
        freeze_layers(model, train.freeze_text_layers, train.freeze_image_blocks)


def unfreeze_groups(model: nn.Module) -> list[tuple[str, list[nn.Module], list[nn.Parameter]]]:
    """(name, modules, parameters) of the tower parts gradual unfreezing opens, in order: the text tower's
    top layer (with any parameter outside the layers and embeddings, e.g. the pooler), each layer below it,
    its embeddings; then the image tower whole. Why top down: the top layers are the most task-specific, and
    the head learns first against fixed features, so its first, largest gradients do not reach (and
    scramble) the pretrained lower layers."""
    groups: list[tuple[str, list[nn.Module], list[nn.Parameter]]] = []
    text = getattr(model, "text_encoder", None)
    if text is not None:
        below, layers = _text_layers(text)
        inner = {id(p) for m in (*below, *layers) for p in m.parameters()}
        rest = [p for p in text.parameters() if id(p) not in inner]
        rest_modules = [m for m in text.modules() if any(True for _ in m.parameters())
                        and all(id(p) not in inner for p in m.parameters())]  # eval mode only when closed
        n = len(layers)
        for i in reversed(range(n)):
            top = i == n - 1
            groups.append((f"text layer {i}", [layers[i], *(rest_modules if top else [])],
                           [*layers[i].parameters(), *(rest if top else [])]))
        groups.append(("text embeddings", below, [p for m in below for p in m.parameters()]))
    image = getattr(model, "image_encoder", None)
    if image is not None:
        groups.append(("image tower", [image], list(image.parameters())))
    return groups


class GradualUnfreezing:
    """Opens `per_epoch` more groups of `unfreeze_groups` at each epoch after the first. Only parameters the
    recipe left trainable when this was built are ever opened (a recipe's fixed freezing, LoRA's frozen base
    weights stay frozen), and the optimizer must already hold them all: a closed parameter has no gradient,
    so AdamW leaves it (and its moments) untouched until it opens. Closed groups stay in eval mode."""

    def __init__(self, model: nn.Module, per_epoch: int) -> None:
        if per_epoch < 1:
            raise ConfigError(f"train.unfreeze_per_epoch must be at least 1 here, got {per_epoch}")
        self.model, self.per_epoch = model, per_epoch
        self.groups = unfreeze_groups(model)
        self.trainable = {id(p) for p in model.parameters() if p.requires_grad}
        self.fixed_frozen = list(getattr(model, "_frozen_parts", []))

    def apply(self, epoch: int) -> list[str]:
        """Set what trains in `epoch` (1-based); returns the names of the open groups."""
        n_open = min(len(self.groups), self.per_epoch * (epoch - 1))
        closed: list[nn.Module] = []
        for i, (_, modules, params) in enumerate(self.groups):
            for p in params:
                p.requires_grad_(i < n_open and id(p) in self.trainable)
            if i >= n_open:
                closed += modules
        self.model._frozen_parts = self.fixed_frozen + closed  # EffiMiniVLM.train keeps them in eval mode
        self.model.train(self.model.training)
        return [name for name, _, _ in self.groups[:n_open]]
