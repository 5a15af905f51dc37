"""The one model surface every architecture shares (`RatingModel`): what train, evaluate, predict, profile,
benchmark and serve rely on, so none of them needs to know which architecture it runs.

Why a base class: the surface is the contract (`model(batch) -> [B]` float32 ratings, `num_params`,
`processor(tokenizer)`, `example_batch()` for canonical FLOPs, `freeze`, `save_pretrained` /
`from_pretrained` as config.json + model.safetensors, no pickle). An architecture subclass writes only its
`__init__` (towers named `image_encoder` / `text_encoder`, so freezing and the backbone/head parameter groups
work unchanged), `forward_batch` and, when it reads more than one image + one text, its own `Processor`.
Its `model:` section is its own dataclass (`Config`, a `config.ModelCfg` subclass) that a recipe or a saved
config is checked against as it loads: an unknown key fails by its dotted name.

The saved config.json (format_version 2) holds `{"model": {...}, "input": {...}}`; version-1 folders (a flat
EffiMiniVLM-shaped section with `options`) are read through the recipes' old-spelling map
(`config.migrate_legacy`), so they load and predict as before.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from effiminivlm.config import InputCfg, ModelCfg, from_dict, migrate_legacy, model_config_class
from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.files import atomic_write_text
from effiminivlm.models.archs import check_model_names, get_arch
from effiminivlm.models.blocks import ScaledSigmoid
from effiminivlm.models.processor import Processor

FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class RatingModel(nn.Module):
    """Base of every architecture: `forward(batch)` -> [B] float32 ratings, plus the shared bookkeeping."""

    Config: ClassVar[type[ModelCfg]] = ModelCfg  # the architecture's own `model:` dataclass
    #: what `forward` returns: "rating" ([B] ratings) or "multilabel" ([B, K] logits, `target` multi-hot);
    #: the loop and `evaluate` choose their metrics by it, never by the architecture
    task: str = "rating"
    #: True when `image_encoder(pixels) -> [B, D]` and `text_encoder(input_ids, attention_mask) -> [B, D]` are
    #: pure functions of those tensors and the processor's images go to the image tower unchanged: the fast
    #: scoring path may then swap a tower for a compiled graph and feed it uint8 pixels (`models.optimize`)
    plain_towers: bool = False

    def __init__(self, cfg: ModelCfg) -> None:
        super().__init__()
        if get_arch(cfg.arch) is not type(self):
            raise EffiMiniVLMError(f"model.arch {cfg.arch!r} is not built by {type(self).__name__}; "
                                   "use effiminivlm.models.create_model(cfg)")
        self.cfg: Any = copy.deepcopy(cfg)  # the subclass's Config; its `input` the model's own copy
        self.cfg.input = self.resolve_input(self.cfg)
        self.image_encoder: nn.Module | None = None  # the towers: set by the subclass (None: absent)
        self.text_encoder: nn.Module | None = None
        self._frozen = {"image": False, "text": False}
        self._frozen_parts: list[nn.Module] = []  # parts frozen inside a tower (models.freezing)
        self._fixed_frozen: list[nn.Module] = []  # frozen by the architecture itself (`keep_frozen`)

    # ----------------------------------------------------------------------------------- the model surface

    #: the recipe the architecture's smoke runs and tests use (None: the packaged `<arch>-tiny`)
    tiny_recipe: ClassVar[str | None] = None
    #: `input.image_size` / `input.max_length` when neither the recipe nor the weights set them
    default_image_size = 224
    default_max_length = 256

    def resolve_input(self, cfg: Any) -> InputCfg:
        """`cfg.input` with its unset sizes filled (the saved config.json then records what the model read);
        an architecture whose weights fix more (mean/std) fills those too."""
        inp = cfg.input
        return dataclasses.replace(
            inp, image_size=inp.image_size if inp.image_size is not None else self.default_image_size,
            max_length=inp.max_length if inp.max_length is not None else self.default_max_length)

    @classmethod
    def check_names(cls, cfg: Any, where: str = "model") -> None:
        """Check the registered names `cfg` holds (before anything is built); none by default."""

    def forward_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """[B] float32 ratings from a collated batch (the keys this model's `Processor` writes)."""
        raise NotImplementedError

    def processor(self, tokenizer: Any) -> Processor:
        """This model's preprocessing: rows -> collated batches (image size, images, tokenizer, extras)."""
        return Processor(self.cfg, tokenizer)

    def example_batch(self, image_size: int | None = None, length: int | None = None) -> dict[str, Any]:
        """The protocol's canonical input (batch 1, one image, every token attended), on the model's
        device: what `protocol.profile` counts FLOPs on. Subclasses add the extra fields they read."""
        first = next(self.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        batch: dict[str, Any] = {}
        if image_size is not None:
            batch["pixel_values"] = torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype)
            batch["has_image"] = torch.ones(1, dtype=torch.bool, device=device)
        if length is not None:  # the ids' values do not change the cost; 1 is in every vocabulary
            batch["input_ids"] = torch.ones(1, length, dtype=torch.long, device=device)
            batch["attention_mask"] = torch.ones(1, length, dtype=torch.long, device=device)
        return batch

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.forward_batch(batch)

    @property
    def data_columns(self) -> tuple[str, ...]:
        """Columns beyond the prepared schema this model's processor reads (e.g. `categories`, which
        `data.labels.attach_categories` joins from the source meta files); none by default."""
        return ()

    def fit_task(self, train_rows: Any) -> None:
        """Fit what the task learns from the TRAIN split before training (e.g. a label vocabulary and the
        head's size); deterministic, so a resumed run rebuilds the same shapes. Nothing for ratings."""

    def init_output_bias(self, rating: float) -> None:
        """Make the output start at `rating` (the train-split mean): the bias of the last Linear of `head`,
        through the inverse of a final scaled sigmoid (1 + 4*sigmoid) when the head ends with one."""
        parts = list(self.head.modules())  # type: ignore[union-attr]
        last = [m for m in parts if isinstance(m, nn.Linear)][-1]
        if last.bias is None:
            return
        if isinstance(parts[-1], ScaledSigmoid):
            p = min(max((rating - 1.0) / 4.0, 0.01), 0.99)
            rating = math.log(p / (1.0 - p))
        with torch.no_grad():
            last.bias.fill_(rating)

    # ------------------------------------------------------------------------------------------ bookkeeping

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameter count (all of them by default: the efficiency protocol counts frozen ones too)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def freeze(self, *, image: bool, text: bool) -> None:
        """Freeze (or unfreeze) towers. Frozen towers also stay in eval mode (BatchNorm statistics and dropout
        fixed), so a frozen encoder is truly a fixed feature extractor."""
        from effiminivlm.models.lora import set_trainable

        self._frozen = {"image": image, "text": text}
        for tower, frozen in ((self.image_encoder, image), (self.text_encoder, text)):
            if tower is not None:
                set_trainable(tower, not frozen)  # with LoRA: only the adapters
        for part in self._fixed_frozen:
            part.requires_grad_(False)
        self.train(self.training)

    def keep_frozen(self, *parts: nn.Module) -> None:
        """Parts the architecture itself freezes (e.g. CLIP's first 11 layers): no gradient and eval mode,
        whatever `freeze` is later told."""
        self._fixed_frozen += parts
        for part in parts:
            part.requires_grad_(False)

    def train(self, mode: bool = True) -> RatingModel:
        super().train(mode)
        for tower, key in ((self.image_encoder, "image"), (self.text_encoder, "text")):
            if tower is not None and self._frozen[key]:
                tower.eval()
        for part in (*self._frozen_parts, *self._fixed_frozen):
            part.eval()
        return self

    # ------------------------------------------------------------------------------------------ save / load

    def config_dict(self, tokenizer_saved: bool = False) -> dict[str, Any]:
        """config.json: the `model:` section with weight sources cleared (weights come from
        model.safetensors) and whatever a rebuild needs written out (`saved_section`), and the `input:` block
        (the tokenizer source kept unless the folder holds the tokenizer's files), so the folder rebuilds
        with no network."""
        inp = dataclasses.asdict(self.cfg.input)
        inp["tokenizer"] = None if tokenizer_saved else self.cfg.tokenizer_source()
        return {"format_version": FORMAT_VERSION, "effiminivlm_version": _version(),
                "model": self.saved_section(), "input": inp}

    def saved_section(self) -> dict[str, Any]:
        """The `model:` section as saved: by default the config's with every weight source (a `pretrained`
        or `*_pretrained` field, also one level down) cleared."""
        out = self.cfg.section()
        for node in (out, *(v for v in out.values() if isinstance(v, dict))):
            for key in node:
                if key == "pretrained" or key.endswith("_pretrained"):
                    node[key] = None
        return out

    def save_pretrained(self, save_dir: str | Path, tokenizer: Any = None) -> Path:
        """Write `config.json` + `model.safetensors` (+ the tokenizer's files) into `save_dir`; LoRA adapters
        are merged first unless their config says `merge: false` (models.lora)."""
        from safetensors.torch import save_model

        from effiminivlm.models.lora import merged_copy, wants_merge

        if wants_merge(self):
            return merged_copy(self).save_pretrained(save_dir, tokenizer=tokenizer)
        out = Path(save_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{WEIGHTS_NAME}.tmp"
        save_model(self, str(tmp), metadata={"format": "pt", "format_version": str(FORMAT_VERSION)})
        os.replace(tmp, out / WEIGHTS_NAME)  # atomic: an interrupted save never leaves a half-written file
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        config = json.dumps(self.config_dict(tokenizer_saved=tokenizer is not None), indent=2)
        atomic_write_text(out / CONFIG_NAME, config + "\n")
        return out

    @classmethod
    def from_pretrained(cls, load_dir: str | Path, device: str | torch.device = "cpu") -> RatingModel:
        """Rebuild a model saved by `save_pretrained`: offline, strict (every tensor must match)."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_model

        folder = Path(load_dir)
        cfg = read_model_config(folder)
        arch = get_arch(cfg.arch, f"{folder / CONFIG_NAME}: arch")
        if arch is not cls:  # the folder holds another registered architecture: let it load itself
            return arch.from_pretrained(folder, device=device)
        model = cls(cfg, pretrained=False)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise WeightsError(f"{weights} is missing; a saved model folder holds {CONFIG_NAME} and "
                               f"{WEIGHTS_NAME}")
        try:
            with safe_open(str(weights), framework="pt") as f:  # header only: check shapes before loading
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            bad = [f"{k} {shapes[k]} vs {own[k]}" for k in own if k in shapes and shapes[k] != own[k]]
            if bad:
                raise WeightsError(f"{weights} does not match {folder / CONFIG_NAME}: {len(bad)} shape "
                                   f"mismatch(es), e.g. {', '.join(bad[:3])}")
            missing, unexpected = load_model(model, str(weights), strict=False, device="cpu")
        except (SafetensorError, RuntimeError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else ""
            raise WeightsError(f"{weights}: cannot load ({type(e).__name__}: {reason})") from None
        if missing or unexpected:
            raise WeightsError(f"{weights} does not match {folder / CONFIG_NAME}: "
                               f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        return model.to(device).eval()


def read_model_config(folder: Path) -> ModelCfg:
    """The ModelCfg stored in `folder/config.json`; any problem names the file."""
    path = Path(folder) / CONFIG_NAME
    if not Path(folder).is_dir():
        raise EffiMiniVLMError(f"{folder}: no such model folder (save one with model.save_pretrained)")
    if not path.is_file():
        raise EffiMiniVLMError(f"{path} is missing: {folder} is not a saved effiminivlm model")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EffiMiniVLMError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise EffiMiniVLMError(f"{path} is not an effiminivlm model config (no format_version)")
    version = data.pop("format_version")
    data.pop("effiminivlm_version", None)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EffiMiniVLMError(f"{path}: format_version {version!r} is newer than this effiminivlm supports "
                               f"({FORMAT_VERSION}); upgrade effiminivlm")
    try:
        data = _from_version_1(data) if version < 2 else data
        unknown = sorted(set(data) - {"model", "input"})
        if unknown:
            raise EffiMiniVLMError(f"unknown key(s) {', '.join(unknown)} (format_version 2 holds model and "
                                   "input)")
        section = data.get("model")
        if not isinstance(section, dict):
            raise EffiMiniVLMError("model: expected a mapping")
        cfg = from_dict(model_config_class(section.get("arch", "effiminivlm")), section, "model")
        cfg.input = from_dict(InputCfg, data.get("input") or {}, "input")
        cfg.check_input()
        check_model_names(cfg)
    except (EffiMiniVLMError, ValueError, TypeError) as e:
        raise EffiMiniVLMError(f"{path}: {e}") from None
    return cfg


#: sections of the version-1 layout every architecture's config carried, read only by EffiMiniVLM
_V1_EFFIMINIVLM_SECTIONS = ("image_encoder", "text_encoder", "head")


def _from_version_1(flat: dict[str, Any]) -> dict[str, Any]:
    """A version-1 config (the model section flat at the top, peers' settings under `options`, the input
    inside the towers' sections) as version 2, through the recipes' map of old spellings; the EffiMiniVLM
    sections a peer's version-1 config carried unread are dropped."""
    data = {"model": dict(flat), "input": {}}
    arch = flat.get("arch", "effiminivlm")
    migrate_legacy(data, arch, "format_version 1", quiet=True)
    if arch != "effiminivlm":
        for key in _V1_EFFIMINIVLM_SECTIONS:
            data["model"].pop(key, None)
    return data


def _version() -> str:
    try:
        return metadata.version("effiminivlm")
    except metadata.PackageNotFoundError:
        return "unknown"
