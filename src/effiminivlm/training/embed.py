"""`effiminivlm embed`: each item's pooled image and text features, computed once and cached (safetensors).

Why: the towers are ~99% of the compute and, when frozen, give the same features in every epoch, fold, seed
and data fraction. A probe (`training.probe`: a closed-form ridge head, or the MLP head trained alone) on
cached features trains in seconds instead of hours, which is what makes k-fold comparisons, scaling curves
and sweeps feasible on a CPU.

The cache (`save_features` / `load_features`) holds float32 `image` [N, image_dim] (zeros where the item has
no usable image, as the model's zero-vector fallback) and `text` [N, text_dim], uint8 `has_image` [N], and
in its metadata the item ids (row order), the model's config and the image mode, so a cache made by another
model is refused instead of silently fitting a head to the wrong features. With `depths` (a probe's
`train.probe_text_depth: auto`) it also holds `text@D`, the text tower cut to its first D layers, with the
signature of that cut model: a probe whose tower was cut to D finds its features in its full model's cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from effiminivlm.config import MODEL_CONFIGS
from effiminivlm.errors import DataError
from effiminivlm.inference import make_loader
from effiminivlm.runtime import autocast

__all__ = ["depth_signatures", "embed_table", "feature_matrix", "load_features", "model_signature",
           "save_features"]


def model_signature(model: torch.nn.Module) -> str:
    """The towers' config and a digest of their weights: two caches are interchangeable only if this
    matches (the config alone would accept two random initialisations, or another fine-tuned model)."""
    saved = model.config_dict()  # type: ignore[attr-defined]
    side = tuple(f"{m}." for m in getattr(model, "side_modules", ()))
    if side:  # the hybrid probe: an EffiMiniVLM's towers plus blocks that never touch the features
        tower_keys = {f.name for f in fields(MODEL_CONFIGS[model.tower_arch])}  # type: ignore[attr-defined]
        section = {k: v for k, v in saved["model"].items() if k in tower_keys}
        saved = {**saved, "model": {**section, "arch": model.tower_arch}}  # type: ignore[attr-defined]
    cfg = _signature_config(saved)
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(("head.", *side)):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return json.dumps({**cfg, "weights_blake2b": digest.hexdigest()}, sort_keys=True)


def depth_signatures(model: torch.nn.Module) -> dict[str, str]:
    """{"model@D": signature of `model` with its text tower cut to D layers} for every depth D (metadata of
    a cache embedded with depths)."""
    import copy

    out = {}
    for depth in range(1, model.text_encoder.depth):
        cut = copy.deepcopy(model)
        cut.text_encoder.truncate(depth)  # config_dict reads the cut architecture
        out[f"model@{depth}"] = model_signature(cut)
    return out


def _signature_config(saved: dict[str, Any]) -> dict[str, Any]:
    """What of a saved config.json the features depend on, in the version-1 layout (the towers' sections
    holding their input sizes, peers' keys under `options`), so caches written before format_version 2 stay
    valid; the head and the weights' and tokenizer's sources are left out (a saved model and the recipe it
    was trained from differ only there)."""
    section, inp = dict(saved["model"]), saved["input"]
    section.pop("head", None)
    if "image_encoder" in section:  # EffiMiniVLM
        image, text = dict(section.pop("image_encoder")), dict(section.pop("text_encoder"))
        image.update(image_size=inp["image_size"], mean=inp["mean"], std=inp["std"])
        text["max_length"] = inp["max_length"]
        for tower in (image, text):
            tower.pop("pretrained", None)
        return {"format_version": 1, **section, "image_encoder": image, "text_encoder": text}
    arch, modalities = section.pop("arch"), section.pop("modalities")
    return {"format_version": 1, "arch": arch, "modalities": modalities, "options": section,
            "input": {k: v for k, v in inp.items() if k != "tokenizer"}}


@torch.no_grad()
def embed_table(model: torch.nn.Module, tokenizer: Any, table: pa.Table, store: Any = None, *,
                images: str = "first", batch_size: int = 64, num_workers: int = 0,
                device: torch.device | None = None, precision: str = "fp32",
                progress: bool = False, depths: bool = False) -> dict[str, Any]:
    """Pooled features of every row of `table`, in row order: {ids, image, text, has_image, images}; with
    `depths`, also `text@D` for every depth D of the text tower below its full depth (one pass)."""
    dev = device or torch.device("cpu")
    model = model.to(dev).eval()
    loader = make_loader(model, tokenizer, table, store, images=images, batch_size=batch_size,
                         num_workers=num_workers)
    ids: list[str] = []
    texts, imgs, has, by_depth = [], [], [], []
    depths = depths and model.text_encoder is not None  # an image-only model has no text depth to choose
    if depths and not hasattr(model.text_encoder, "depth_features"):
        raise DataError("features per text-tower depth (train.probe_text_depth=auto) need a BERT text tower")
    for batch in tqdm(loader, desc="embed", unit="batch", disable=not progress, leave=False):
        n = len(batch["item_id"])
        ids.extend(batch["item_id"])
        with autocast(dev, precision):
            text = None
            if model.text_encoder is not None:
                tokens = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
                if depths:
                    every = model.text_encoder.depth_features(*tokens).float()
                    by_depth.append(every.cpu())
                    text = every[:, -1]
                else:
                    text = model.text_encoder(*tokens).float()
                texts.append(text.cpu())
            if model.image_encoder is not None:
                if "all_pixel_values" in batch:
                    img = model.encode_images(batch["all_pixel_values"].to(dev),
                                              batch["image_index"].to(dev), n)
                else:
                    pix = batch.get("pixel_values")
                    like = text if text is not None else torch.zeros(1, device=dev)
                    img = model.encode_image(pix.to(dev) if pix is not None else None,
                                             batch["has_image"].to(dev), n, like)
                imgs.append(img.float().cpu())
        has.append(batch["has_image"].to(torch.uint8).cpu())
    empty = torch.zeros(len(ids), 0)
    out = {"ids": ids, "text": torch.cat(texts) if texts else empty,
           "image": torch.cat(imgs) if imgs else empty,
           "has_image": torch.cat(has) if has else torch.zeros(0, dtype=torch.uint8),
           "images": "none" if model.image_encoder is None else images}
    if by_depth:
        every = torch.cat(by_depth)
        out.update({f"text@{d + 1}": every[:, d] for d in range(every.shape[1] - 1)})
        out["depth_signatures"] = depth_signatures(model)
    return out


def save_features(feats: dict[str, Any], path: str | os.PathLike[str], signature: str,
                  extra: dict[str, str] | None = None) -> Path:
    """Write a feature cache atomically (safetensors; ids and the model signature in its metadata)."""
    from safetensors.torch import save_file

    from effiminivlm.files import output_path

    meta = {"ids": json.dumps(feats["ids"]), "model": signature, "images": feats["images"],
            **feats.get("depth_signatures", {}), **(extra or {})}
    keys = ("image", "text", "has_image", *(k for k in feats if k.startswith("text@")))
    with output_path(path) as tmp:
        save_file({k: feats[k].contiguous() for k in keys}, str(tmp), metadata=meta)
    return Path(path)


def load_features(path: str | os.PathLike[str], signature: str | None = None) -> dict[str, Any]:
    """Read a cache written by `save_features`; with `signature`, refuse a cache of another model. A
    signature of the cached model cut to depth D (`depth_signatures`) reads `text@D` as its `text`."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise DataError(f"feature cache {p} does not exist; make it with `effiminivlm embed`")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, KeyError) as e:
        raise DataError(f"feature cache {p}: cannot read it ({e})") from None
    if "ids" not in meta:
        raise DataError(f"feature cache {p} has no item ids: not written by `effiminivlm embed`")
    cut = [k.removeprefix("model@") for k, v in meta.items() if k.startswith("model@") and v == signature]
    if signature is not None and cut and f"text@{cut[0]}" in tensors:
        tensors["text"] = tensors[f"text@{cut[0]}"]
    elif signature is not None and meta.get("model") != signature:
        raise DataError(f"feature cache {p} was made by another model (towers or max_length differ); "
                        "embed again with this model")
    return {**tensors, "ids": json.loads(meta["ids"]), "images": meta.get("images", "first"), "meta": meta}


def feature_matrix(feats: dict[str, Any], ids: list[str], where: str = "the feature cache") -> np.ndarray:
    """[len(ids), image_dim + text_dim] float64 rows for `ids` ([image; text], the model's concat order)."""
    index = {a: i for i, a in enumerate(feats["ids"])}
    missing = [a for a in ids if a not in index]
    if missing:
        raise DataError(f"{where} lacks {len(missing)} item(s) of the data, e.g. {missing[0]}; "
                        "embed the same prepared dataset")
    rows = np.fromiter((index[a] for a in ids), dtype=np.int64, count=len(ids))
    x = torch.cat([feats["image"], feats["text"]], dim=1).numpy().astype(np.float64)
    return x[rows]
