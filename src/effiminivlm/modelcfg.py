"""The `model:` and `input:` sections of a recipe (and of a saved model's config.json): one typed dataclass
per architecture, one shared input block, and the map of old spellings.

Why apart from config.py: the model section is a family (the `arch` key picks the dataclass, registered by
each architecture's module through `models.archs.register_arch`), and the old spellings (`model.options.*`,
`model.image_encoder.image_size`, `model.text_encoder.max_length` / `tokenizer`) must map the same way for a
user's recipe (with a one-line note) and for a version-1 model folder (silently).
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

from effiminivlm.errors import ConfigError, UnknownNameError
from effiminivlm.typed import check_choice, check_int, check_number, fail, suggest

MODALITIES = ("image_text", "image", "text")
# models.text_encoders.BertTextEncoder; mean_l2: the mean at unit length; mean_max: [mean; max] (2x hidden)
POOLINGS = ("cls", "mean", "mean_l2", "mean_max")
# Integer sizes a transformers text config may set, with the range that can build on one machine.
TEXT_CONFIG_INTS = {"hidden_size": (1, 16384), "num_hidden_layers": (1, 128),
                    "num_attention_heads": (1, 1024), "intermediate_size": (1, 65536),
                    "vocab_size": (1, 1_000_000), "max_position_embeddings": (1, 65536),
                    "type_vocab_size": (1, 1024)}
TEXT_CONFIG_PROBS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


@dataclass
class LoraCfg:
    """LoRA adapters on a tower's chosen projections (models.lora, peft). The tower's own weights are frozen;
    `merge` folds the adapters into them when the model is saved (an ordinary model: same params and FLOPs),
    otherwise the saved model keeps them (and reloads with them, offline)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    merge: bool = True

    def __post_init__(self) -> None:
        check_int("r", self.r, 1, 4096)
        check_number("alpha", self.alpha, gt=0)
        check_number("dropout", self.dropout, ge=0, lt=1)
        if not self.target_modules:
            fail("target_modules", "a non-empty list of module names", self.target_modules)


@dataclass
class InputCfg:
    """What the model reads, shared by every architecture (the recipe's top-level `input:`): the image size
    and normalisation, the tokenizer and the text length. The Processor reads it; unset values come from the
    weights (the image encoder's data config, the text weight source) when the model is built, and the
    architecture checks the rest against its towers' own configs as the recipe loads (`ModelCfg.check_input`).
    """

    image_size: int | None = None
    mean: list[float] | None = None  # None: the image weights' mean/std
    std: list[float] | None = None
    tokenizer: str | None = None  # None: the text weight source
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.image_size is not None:
            check_int("image_size", self.image_size, 16, 4096)
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != 3:
                fail(key, "3 numbers (R, G, B)", values)
        for v in self.std or []:
            check_number("std", v, gt=0)
        if self.max_length is not None:
            check_int("max_length", self.max_length, 1, 8192)


@dataclass
class ImageEncoderCfg:
    """EffiMiniVLM's image tower: a registered encoder name plus its weights (its input: `input:`)."""

    name: str = "tf_efficientnet_lite0"
    pretrained: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    lora: LoraCfg | None = None  # e.g. {r: 4, target_modules: [conv_pwl]} (timm EfficientNet convolutions)


@dataclass
class TextEncoderCfg:
    """EffiMiniVLM's text tower: a registered encoder name, a transformers config and weights (its
    tokenizer and length: `input:`)."""

    name: str = "bert"
    pretrained: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    pooling: str = "cls"
    lora: LoraCfg | None = None  # e.g. {r: 8, alpha: 16, target_modules: [query, value]}

    def __post_init__(self) -> None:
        check_choice("pooling", self.pooling, POOLINGS)
        cfg = self.config
        for key, (lo, hi) in TEXT_CONFIG_INTS.items():
            if key in cfg:
                check_int(f"config.{key}", cfg[key], lo, hi)
        for key in TEXT_CONFIG_PROBS:
            if key in cfg:
                check_number(f"config.{key}", cfg[key], ge=0, lt=1)
        hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
        if hidden is not None and heads is not None and hidden % heads:
            raise ConfigError(f"config.hidden_size {hidden} is not a multiple of config.num_attention_heads "
                              f"{heads}")


@dataclass
class HeadCfg:
    """The regression head on the concatenated [image; text] vector."""

    name: str = "mlp"
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for i, dim in enumerate(self.hidden_dims):
            check_int(f"hidden_dims[{i}]", dim, 1, 65536)
        check_number("dropout", self.dropout, ge=0, lt=1)


@dataclass
class ModelCfg:
    """What every architecture's config has: `arch` (which class builds it) and `modalities` (image+text,
    image-only or text-only). Each architecture subclasses it with its own typed fields and registers the
    pair (`models.archs.register_arch`); the `model:` section of a recipe is checked against the subclass
    its `arch` names, so a key no field holds fails by its dotted name.

    `input` is the recipe's top-level `input:` block (the same object), carried here so that whatever holds
    a model config also holds what the model reads; it is not a key of the `model:` section.
    """

    arch: str = "effiminivlm"
    modalities: str = "image_text"
    input: InputCfg = field(default_factory=InputCfg, repr=False, metadata={"internal": True})
    #: old spellings this architecture's `model:` section still accepts: {old dotted key: new dotted key}
    #: (relative to `model.`; a new key starting with `input.` moves to the input block)
    LEGACY: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        check_choice("modalities", self.modalities, MODALITIES)

    def check_input(self) -> None:
        """Check `self.input` against the towers' own configs (e.g. a second image size that disagrees)
        and fill what they fix. Nothing by default."""

    def tokenizer_source(self) -> str | None:
        """Where the tokenizer comes from: `input.tokenizer` (an architecture may add a default)."""
        return self.input.tokenizer

    def lora(self, tower: str) -> LoraCfg | None:
        """The LoRA settings of tower "image_encoder" / "text_encoder" (models.lora); none by default."""
        return None

    def without_lora(self, tower: str) -> ModelCfg:
        """A copy with `tower`'s LoRA settings cleared (its adapters merged into the weights)."""
        return self

    def section(self) -> dict[str, Any]:
        """The `model:` section as plain data (without the input block)."""
        out = asdict(self)
        out.pop("input")
        return out

    @classmethod
    def typed_select(cls, data: dict[str, Any], where: str) -> type:
        """The config class registered for `data["arch"]` (typed.from_dict asks before building)."""
        return model_config_class(data.get("arch", "effiminivlm"), f"{where}.arch")


@dataclass
class EffiMiniVLMCfg(ModelCfg):
    """EffiMiniVLM: an image encoder, a text encoder and a head, each chosen by a registered name."""

    image_encoder: ImageEncoderCfg = field(default_factory=ImageEncoderCfg)
    text_encoder: TextEncoderCfg = field(default_factory=TextEncoderCfg)
    head: HeadCfg = field(default_factory=HeadCfg)

    def tokenizer_source(self) -> str | None:
        """`input.tokenizer`, else the text weights' own (their folder holds the tokenizer)."""
        return self.input.tokenizer or self.text_encoder.pretrained

    def lora(self, tower: str) -> LoraCfg | None:
        return getattr(self, tower).lora  # type: ignore[no-any-return]

    def without_lora(self, tower: str) -> ModelCfg:
        return replace(self, **{tower: replace(getattr(self, tower), lora=None)})


#: `model.arch` -> its config class; built-in architectures register on import of effiminivlm.models
#: (`models.archs.register_arch`), which `model_config_class` imports by name the first time a name is missing
#: (the config stage never imports the models stage's code).
MODEL_CONFIGS: dict[str, type[ModelCfg]] = {"effiminivlm": EffiMiniVLMCfg}
ARCH_PACKAGE = "effiminivlm.models"


def model_config_class(arch: Any, where: str = "model.arch") -> type[ModelCfg]:
    """The config class of architecture `arch`; an unknown name fails with the known ones."""
    if not isinstance(arch, str):
        fail(where, "an architecture name", arch)
    if arch not in MODEL_CONFIGS:  # the built-in architectures, then those of $EFFIMINIVLM_ARCH_PATH
        importlib.import_module(ARCH_PACKAGE).load_env_archs()
    if arch not in MODEL_CONFIGS:
        close = suggest(arch, MODEL_CONFIGS)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"{where}: unknown model arch {arch!r}{hint} (known: "
                               f"{', '.join(sorted(MODEL_CONFIGS))})")
    return MODEL_CONFIGS[arch]


# ------------------------------------------------------------------------------------- old spellings

#: keys of EffiMiniVLM's former `model:` layout that every architecture now reads from `input:`
INPUT_LEGACY = {"image_encoder.image_size": "input.image_size", "image_encoder.mean": "input.mean",
                "image_encoder.std": "input.std", "text_encoder.tokenizer": "input.tokenizer",
                "text_encoder.max_length": "input.max_length"}


def arch_of(data: dict[str, Any]) -> str:
    """The `model.arch` of recipe mapping `data` (EffiMiniVLM when unset)."""
    model = data.get("model")
    arch = model.get("arch") if isinstance(model, dict) else None
    return arch if isinstance(arch, str) else ("effiminivlm" if arch is None else arch)


def legacy_key(keys: list[str], cls: type[ModelCfg]) -> list[str] | None:
    """The current spelling of dotted key `keys` (from the top of the recipe) when it is an old one with
    one meaning: `model.X` -> `model.X`, `input.image_size` -> `input.image_size`, the
    architecture's own `LEGACY` entries ([] for a key nothing reads, dropped); None when `keys` is not an old
    spelling."""
    if len(keys) < 2 or keys[0] != "model":
        return None
    if keys[1] == "options" and len(keys) > 2:  # a peer's former options, then its own old spellings
        keys = ["model", *keys[2:]]
        return legacy_key(keys, cls) if legacy_key(keys, cls) is not None else keys
    for old, new in {**INPUT_LEGACY, **cls.LEGACY}.items():
        old_keys = old.split(".")
        if keys[1:1 + len(old_keys)] == old_keys:
            rest = keys[1 + len(old_keys):]
            if not new:
                return []
            return [*new.split("."), *rest] if new.startswith("input.") else ["model", *new.split("."), *rest]
    return None


def _leaves(node: dict[str, Any], keys: list[str]) -> list[tuple[list[str], Any]]:
    out = []
    for k, v in node.items():
        out += _leaves(v, [*keys, k]) if isinstance(v, dict) and v else [([*keys, k], v)]
    return out


def migrate_legacy(data: dict[str, Any], arch: str, where: str, *, quiet: bool = False) -> None:
    """Rewrite the old spellings in recipe mapping `data` (in place) to the current ones, with a one-line
    note each (none when `quiet`: a saved folder's format is not the user's to change). Both spellings of
    one key with different values is an error; an emptied old section is removed."""
    model = data.get("model")
    if not isinstance(model, dict):
        return
    if "input" in model:
        raise ConfigError(f"{where}: model.input: the input block is top-level (input.image_size, "
                          "input.mean, "
                          "input.std, input.tokenizer, input.max_length)")
    cls = model_config_class(arch)
    for keys, value in _leaves({"model": model}, []):
        new = legacy_key(keys, cls)
        if new is None:
            continue
        parents = [model]
        for k in keys[1:-1]:
            parents.append(parents[-1][k])
        parents[-1].pop(keys[-1])
        for parent, k in zip(parents[-2::-1], keys[-2:0:-1], strict=True):  # sections the move emptied
            if parent[k] == {}:
                parent.pop(k)
        if not new:
            if not quiet:
                note_old_spelling(f"{'.'.join(keys)} is read by nothing: dropped", where)
            continue
        dest = data
        for k in new[:-1]:
            dest = dest.setdefault(k, {})
            if not isinstance(dest, dict):
                raise ConfigError(f"{where}: {'.'.join(new)}: {k} is not a section")
        if new[-1] in dest and dest[new[-1]] != value:
            raise ConfigError(f"{where}: {'.'.join(keys)} {value!r} and {'.'.join(new)} {dest[new[-1]]!r} "
                              f"disagree: set only {'.'.join(new)}")
        dest[new[-1]] = value
        if not quiet:
            note_old_spelling(f"{'.'.join(keys)} is now {'.'.join(new)}", where)
    for section in ("options", "image_encoder", "text_encoder"):
        if model.get(section) == {}:
            model.pop(section)
    if not issubclass(cls, EffiMiniVLMCfg):  # a resolved recipe.yaml of the former layout: EffiMiniVLM's
        for section, default in (("image_encoder", ImageEncoderCfg()), ("text_encoder", TextEncoderCfg()),
                                 ("head", HeadCfg())):  # default sections, which say nothing here
            values, defaults = model.get(section), asdict(default)
            if isinstance(values, dict) and all(defaults.get(k, ...) == v for k, v in values.items()):
                model.pop(section)
                if not quiet:
                    note_old_spelling(f"model.{section}: EffiMiniVLM's defaults, read by nothing: dropped",
                                      where)


def note_old_spelling(text: str, where: str) -> None:
    """One line per old spelling read: a FutureWarning (the CLI prints it as a `note:` line)."""
    warnings.warn(f"{where}: {text} (the old spelling is read for now)", FutureWarning, stacklevel=3)

