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

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from effiminivlm.config import EffiMiniVLMCfg, InputCfg
from effiminivlm.errors import EffiMiniVLMError, UnknownNameError
from effiminivlm.models.archs import register_arch
from effiminivlm.models.base import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, RatingModel, read_model_config
from effiminivlm.models.heads import create_head
from effiminivlm.models.image_encoders import create_image_encoder, resolve_image_input
from effiminivlm.models.lora import apply_lora
from effiminivlm.models.text_encoders import create_text_encoder

__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "EffiMiniVLM", "read_model_config"]


@register_arch("effiminivlm")
class EffiMiniVLM(RatingModel):
    """Image tower + text tower + regression head from an `EffiMiniVLMCfg` (random init unless `pretrained`).

    `self.cfg.input` is the given input block with the image size and mean/std resolved from the encoder's
    data config when unset, so the saved config.json records the input the model was trained with and
    reloads identically.
    """

    Config = EffiMiniVLMCfg
    tiny_recipe = "tiny"
    plain_towers = True  # pixels -> pooled vector, (ids, mask) -> CLS vector: the fast path may swap them

    @classmethod
    def check_names(cls, cfg: EffiMiniVLMCfg, where: str = "model") -> None:
        """The encoder and head names, each against its registry."""
        from effiminivlm.models.heads import HEADS
        from effiminivlm.models.image_encoders import IMAGE_ENCODERS
        from effiminivlm.models.text_encoders import TEXT_ENCODERS

        for key, registry, name in ((f"{where}.image_encoder.name", IMAGE_ENCODERS, cfg.image_encoder.name),
                                    (f"{where}.text_encoder.name", TEXT_ENCODERS, cfg.text_encoder.name),
                                    (f"{where}.head.name", HEADS, cfg.head.name)):
            try:
                registry.get(name)
            except EffiMiniVLMError as e:
                raise UnknownNameError(f"{key}: {e}") from None

    def resolve_input(self, cfg: EffiMiniVLMCfg) -> InputCfg:
        if cfg.modalities != "text":  # the image weights' size and mean/std where the recipe sets none
            cfg = dataclasses.replace(cfg, input=resolve_image_input(cfg.image_encoder, cfg.input))
        return super().resolve_input(cfg)

    def __init__(self, cfg: EffiMiniVLMCfg, pretrained: bool = False) -> None:
        super().__init__(cfg)
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

    def forward_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The model surface: a collated batch; several images per item come as `all_pixel_values` with
        their `image_index` (the "mean" mode), else one image per item as `pixel_values`."""
        if batch.get("all_pixel_values") is not None:
            return self._rate(batch["all_pixel_values"], batch.get("input_ids"), batch.get("attention_mask"),
                              batch.get("has_image"), image_index=batch["image_index"])
        return self._rate(batch.get("pixel_values"), batch.get("input_ids"), batch.get("attention_mask"),
                          batch.get("has_image"))

    def forward(self, pixel_values: torch.Tensor | Mapping[str, Any] | None,  # type: ignore[override]
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                has_image: torch.Tensor | None = None, image_features: torch.Tensor | None = None,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted rating [B], float32, from pixels, token ids/mask [B,L] and has_image [B]; a mapping as
        the first argument is a collated batch (`forward_batch`, the surface every architecture shares).

        Without `image_index`, `pixel_values` is [B,3,H,W] (or None): one image per item. With `image_index`
        [N_img] (the item of each image), `pixel_values` is [N_img,3,H,W] holding every image of the batch and
        an item's image vector is the mean of its images' pooled features (`encode_images`); `has_image`, if
        given, must then mark exactly the items that own an image. `image_features` [B, image_dim] replaces
        the image tower's output; zero rows stand for "no image".
        """
        if isinstance(pixel_values, Mapping):
            return self.forward_batch(pixel_values)
        return self._rate(pixel_values, input_ids, attention_mask, has_image, image_features, image_index)

    def _rate(self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor | None,
              attention_mask: torch.Tensor | None, has_image: torch.Tensor | None = None,
              image_features: torch.Tensor | None = None, image_index: torch.Tensor | None = None
              ) -> torch.Tensor:
        """`forward`'s computation (called once however a subclass wraps `forward`)."""
        text = None
        if self.text_encoder is not None:
            if input_ids is None:
                raise ValueError("this model reads text: input_ids and attention_mask are required")
            text = self.text_encoder(input_ids, attention_mask)  # [B, text_dim]
        image = None
        if self.image_encoder is not None:
            image = image_features
            if image is None and image_index is not None:
                image = self._mean_image_features(pixel_values, image_index, has_image, input_ids)
            elif image is None:
                batch = next(t.shape[0] for t in (input_ids, pixel_values, has_image) if t is not None)
                like = text if text is not None else next(self.head.parameters())
                image = self.encode_image(pixel_values, has_image, batch, like)
        device = (image if image is not None else text).device
        with torch.autocast(device.type, enabled=False):  # fusion + head in full precision
            return self.score_features(self.fuse(image, text))

    def fuse(self, image: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
        """[B, image_dim + text_dim]: the towers' features side by side, in the head's order and dtype
        (float32 unless the caller cast the whole model); an item without an image holds zeros
        (`encode_image`). One fusion for `forward` and for scoring tower features computed apart
        (`quantize`)."""
        head_dtype = next(self.head.parameters()).dtype
        return torch.cat([f.to(head_dtype) for f in (image, text) if f is not None], dim=-1)

    def score_features(self, fused: torch.Tensor) -> torch.Tensor:
        """Rating [B] float32 of the fused tower features [B, image_dim + text_dim]: the head. One function
        for `forward` and for a probe scored from cached features (`training.probe`), so both agree."""
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

    def num_params_by_part(self) -> dict[str, int]:
        """{"image_encoder": n, "text_encoder": n, "head": n} (absent towers count 0)."""
        parts = {"image_encoder": self.image_encoder, "text_encoder": self.text_encoder, "head": self.head}
        return {k: sum(p.numel() for p in m.parameters()) if m is not None else 0 for k, m in parts.items()}

    # ------------------------------------------------------------------------------------------ save / load

    def config_dict(self, tokenizer_saved: bool = False) -> dict[str, Any]:
        """The base's saved config with the text architecture written out in full, so the folder rebuilds
        with no network and no source."""
        cfg = super().config_dict(tokenizer_saved)
        if self.text_encoder is not None and hasattr(self.text_encoder, "architecture"):
            cfg["model"]["text_encoder"]["config"] = self.text_encoder.architecture()
        return cfg
