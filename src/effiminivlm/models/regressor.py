"""EffiMiniVLM: encode the image, encode the text, concatenate, regress the rating.

    pixel_values [B,3,H,W] --image encoder--> [B, 1280] --+
                                                          +--concat--> [B, 1664] --MLP head--> [B] rating
    input_ids, attention_mask [B,L] --text encoder (CLS)--> [B, 384] --+

Several images per item: `forward(..., image_index=...)` takes every image of the batch [N_img,3,H,W] with
the item each belongs to, and uses the mean of an item's pooled image features as its image vector.

Precision: the towers may run under autocast (bf16/fp16), but the fusion and the regression head always run
in float32 outside autocast, so the returned rating is float32 and not rounded to bf16's 1/64 steps near 4.

Items without an image get an all-zero image vector (the model degrades to text-only; the paper's "zero
vector" fallback), and their placeholder pixels never reach the image encoder, so they neither change the
output nor pollute BatchNorm statistics. `modalities` drops a tower entirely for image-only / text-only
ablations. Saving follows Hugging Face: a folder with `config.json` and `model.safetensors` that rebuilds the
exact model offline, without unpickling anything.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effiminivlm.config import ModelCfg, from_dict
from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.files import atomic_write_text
from effiminivlm.models.archs import MODEL_ARCHS, check_model_names, get_arch
from effiminivlm.models.heads import create_head
from effiminivlm.models.image_encoders import create_image_encoder, resolve_image_cfg
from effiminivlm.models.lora import apply_lora, merged_copy, set_trainable, wants_merge
from effiminivlm.models.text_encoders import create_text_encoder

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@MODEL_ARCHS.register("effiminivlm")
class EffiMiniVLM(nn.Module):
    """Image tower + text tower + regression head from a `ModelCfg` (random init unless `pretrained`).

    `self.cfg` is the given config with the image mean/std resolved from the encoder when unset, so the saved
    config.json records the normalisation the model was trained with and reloads identically.
    """

    def __init__(self, cfg: ModelCfg, pretrained: bool = False) -> None:
        super().__init__()
        if get_arch(cfg.arch) is not type(self):
            raise EffiMiniVLMError(f"model.arch {cfg.arch!r} is not built by {type(self).__name__}; "
                                   "use effiminivlm.models.create_model(cfg)")
        self.cfg = copy.deepcopy(cfg)
        if cfg.modalities != "text":
            self.cfg.image_encoder = resolve_image_cfg(cfg.image_encoder)
        uses_image, uses_text = cfg.modalities != "text", cfg.modalities != "image"
        self.image_encoder = create_image_encoder(cfg.image_encoder, pretrained) if uses_image else None
        self.text_encoder = create_text_encoder(cfg.text_encoder, pretrained) if uses_text else None
        for tower, tower_cfg, key in ((self.image_encoder, cfg.image_encoder, "image_encoder"),
                                      (self.text_encoder, cfg.text_encoder, "text_encoder")):
            if tower is not None and tower_cfg.lora is not None:  # adapters on chosen projections (peft)
                apply_lora(tower, tower_cfg.lora, f"model.{key}.lora")
        self.image_dim = self.image_encoder.num_features if self.image_encoder is not None else 0
        self.text_dim = self.text_encoder.num_features if self.text_encoder is not None else 0
        self.head = create_head(cfg.head, in_dim=self.image_dim + self.text_dim)
        self._frozen = {"image": False, "text": False}
        self._frozen_parts: list[nn.Module] = []  # parts frozen inside a tower (training.optim.freeze_layers)
        self.eval()  # like Hugging Face's from_pretrained: call .train() to fine-tune

    def encode_image(self, pixel_values: torch.Tensor | None, has_image: torch.Tensor | None,
                     batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """[B, image_dim] features; rows without an image are zeros (of `like`'s dtype if none has one)."""
        if has_image is not None:
            has_image = torch.as_tensor(has_image, dtype=torch.bool, device=like.device)
            if has_image.shape != (batch_size,):
                raise ValueError(f"has_image must have shape ({batch_size},), got {tuple(has_image.shape)}")
        any_image = has_image is None or bool(has_image.any())
        if pixel_values is None and has_image is not None and any_image:
            raise ValueError("has_image marks rows with images but pixel_values is None")
        if pixel_values is None or not any_image:
            return like.new_zeros(batch_size, self.image_dim)  # whole batch text-only: skip the image encoder
        if pixel_values.shape[0] != batch_size:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows for a batch of {batch_size}")
        if has_image is None or bool(has_image.all()):
            return self.image_encoder(pixel_values)
        feats = self.image_encoder(pixel_values[has_image])
        out = feats.new_zeros(batch_size, feats.shape[-1])
        out[has_image] = feats
        return out

    def encode_images(self, pixel_values: torch.Tensor, image_index: torch.Tensor, batch_size: int
                      ) -> torch.Tensor:
        """[B, image_dim] float32: item i's vector is the mean of the pooled features of the images whose
        `image_index` is i (pixels [N_img,3,H,W], index [N_img]); items with no image get zeros. One encoder
        pass over all N_img images; the mean is taken in float32 even when the encoder ran in bf16."""
        if self.image_encoder is None:
            raise ValueError("this model has no image encoder (modalities: text)")
        index = torch.as_tensor(image_index, dtype=torch.long, device=pixel_values.device)
        if index.shape != (pixel_values.shape[0],):
            raise ValueError(f"image_index must have shape ({pixel_values.shape[0]},) (one entry per image), "
                             f"got {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch_size):
            raise ValueError(f"image_index values must lie in [0, {batch_size}) for a batch of {batch_size}")
        summed = torch.zeros(batch_size, self.image_dim, device=pixel_values.device)
        if index.numel():
            summed.index_add_(0, index, self.image_encoder(pixel_values).float())
        counts = torch.bincount(index, minlength=batch_size).clamp(min=1).unsqueeze(-1)
        return summed / counts

    def forward(self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor | None,
                attention_mask: torch.Tensor | None, has_image: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None, image_index: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Predicted rating [B], float32, from pixels, token ids/mask [B,L] and has_image [B].

        Without `image_index`, `pixel_values` is [B,3,H,W] (or None): one image per item. With `image_index`
        [N_img] (the item of each image), `pixel_values` is [N_img,3,H,W] holding every image of the batch and
        an item's image vector is the mean of its images' pooled features (`encode_images`); `has_image`, if
        given, must then mark exactly the items that own an image. `image_features` [B, image_dim] replaces
        the image tower's output; zero rows stand for "no image".
        """
        text = None
        if self.text_encoder is not None:
            if input_ids is None:
                raise ValueError("this model reads text: input_ids and attention_mask are required")
            text = self.text_encoder(input_ids, attention_mask)  # [B, text_dim]
        feats = [] if text is None else [text]
        if self.image_encoder is not None:
            if image_features is None and image_index is not None:
                image_features = self._mean_image_features(pixel_values, image_index, has_image, input_ids)
            elif image_features is None:
                batch = next(t.shape[0] for t in (input_ids, pixel_values, has_image) if t is not None)
                like = text if text is not None else next(self.head.parameters())
                image_features = self.encode_image(pixel_values, has_image, batch, like)
            feats.insert(0, image_features)  # [B, image_dim]
        head_dtype = next(self.head.parameters()).dtype  # float32 unless the caller cast the whole model
        with torch.autocast(feats[0].device.type, enabled=False):  # fusion + head in full precision
            fused = torch.cat([f.to(head_dtype) for f in feats], dim=-1)
            return self.head(fused).squeeze(-1).float()

    def _mean_image_features(self, pixel_values: torch.Tensor | None, image_index: torch.Tensor,
                             has_image: torch.Tensor | None, input_ids: torch.Tensor | None) -> torch.Tensor:
        """`encode_images` for forward's several-images input, checking it against `has_image`."""
        if pixel_values is None:
            raise ValueError("image_index is given but pixel_values is None")
        sized = input_ids if input_ids is not None else has_image
        if sized is None:
            raise ValueError("with image_index, the batch size comes from input_ids or has_image: pass one")
        batch = sized.shape[0]
        out = self.encode_images(pixel_values, image_index, batch)
        if has_image is not None:
            owns = torch.bincount(torch.as_tensor(image_index, device=out.device).long(), minlength=batch) > 0
            if not torch.equal(owns, torch.as_tensor(has_image, device=out.device).bool()):
                raise ValueError("has_image does not match image_index: an item marked with an image owns "
                                 "none, or one marked without an image owns some")
        return out

    # ------------------------------------------------------------------------------------------ bookkeeping

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameter count (all of them by default: the efficiency protocol counts frozen ones too)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def num_params_by_part(self) -> dict[str, int]:
        """{"image_encoder": n, "text_encoder": n, "head": n} (absent towers count 0)."""
        parts = {"image_encoder": self.image_encoder, "text_encoder": self.text_encoder, "head": self.head}
        return {k: sum(p.numel() for p in m.parameters()) if m is not None else 0 for k, m in parts.items()}

    def freeze(self, *, image: bool, text: bool) -> None:
        """Freeze (or unfreeze) towers. Frozen towers also stay in eval mode (BatchNorm statistics and dropout
        fixed), so a frozen encoder is truly a fixed feature extractor."""
        self._frozen = {"image": image, "text": text}
        for tower, frozen in ((self.image_encoder, image), (self.text_encoder, text)):
            if tower is not None:
                set_trainable(tower, not frozen)  # with LoRA: only the adapters
        self.train(self.training)

    def train(self, mode: bool = True) -> EffiMiniVLM:
        super().train(mode)
        for tower, key in ((self.image_encoder, "image"), (self.text_encoder, "text")):
            if tower is not None and self._frozen[key]:
                tower.eval()
        for part in self._frozen_parts:
            part.eval()
        return self

    # ------------------------------------------------------------------------------------------ save / load

    def config_dict(self, tokenizer_saved: bool = False) -> dict[str, Any]:
        """The ModelCfg as saved: weight sources cleared (weights come from model.safetensors) and the text
        architecture written out in full, so the folder rebuilds with no network and no source."""
        cfg = dataclasses.asdict(self.cfg)
        cfg["image_encoder"]["pretrained"] = None
        text = cfg["text_encoder"]
        if not tokenizer_saved:  # keep a pointer to where the tokenizer can still be found
            text["tokenizer"] = text["tokenizer"] or text["pretrained"]
        else:
            text["tokenizer"] = None
        text["pretrained"] = None
        if self.text_encoder is not None and hasattr(self.text_encoder, "architecture"):
            text["config"] = self.text_encoder.architecture()
        return {"format_version": FORMAT_VERSION, "effiminivlm_version": _version(), **cfg}

    def save_pretrained(self, save_dir: str | Path, tokenizer: Any = None) -> Path:
        """Write `config.json` + `model.safetensors` (+ the tokenizer's files) into `save_dir`; LoRA adapters
        are merged first unless their config says `merge: false` (models.lora)."""
        from safetensors.torch import save_model

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
    def from_pretrained(cls, load_dir: str | Path, device: str | torch.device = "cpu") -> EffiMiniVLM:
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
        cfg = from_dict(ModelCfg, data, "model")
        check_model_names(cfg)
    except (EffiMiniVLMError, ValueError, TypeError) as e:
        raise EffiMiniVLMError(f"{path}: {e}") from None
    return cfg


def _version() -> str:
    try:
        return metadata.version("effiminivlm")
    except metadata.PackageNotFoundError:
        return "unknown"
