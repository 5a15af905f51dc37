"""`effiminivlm export`: a saved model -> a deployable graph (ONNX, or OpenVINO IR) + tokenizer +
preprocessing config, checked against the PyTorch model before it is published.

Why a graph plus its preprocessing: a runtime that is not this package (ONNX Runtime in a service written in
another language, OpenVINO on an edge box) needs the exact input recipe too, or it scores other pixels and
other tokens. The folder holds `model.onnx` (or `model.xml` + `model.bin`), the tokenizer files and
`preprocess.json` (text template, truncation, image size / resize / mean / std, the score clip range).

The graph's inputs are `pixel_values` [B,3,S,S] float32, `input_ids` / `attention_mask` [B,L] int64 and
`has_image` [B] bool; its output `score` [B] float32 (unclipped, like `forward`). B and L are dynamic. An item
without an image gets zero image features (the pixels are multiplied out), exactly as `EffiMiniVLM.forward`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.files import atomic_write_text
from effiminivlm.models.factory import load_model

FORMATS = ("onnx", "openvino")
INPUTS = ("pixel_values", "input_ids", "attention_mask", "has_image")


class ScoringGraph(nn.Module):
    """EffiMiniVLM's forward without data-dependent Python branches (what a traced graph can hold)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                has_image: torch.Tensor) -> torch.Tensor:
        m = self.model
        feats = []
        if m.image_encoder is not None:
            feats.append(m.image_encoder(pixel_values) * has_image.to(pixel_values.dtype).unsqueeze(-1))
        if m.text_encoder is not None:
            feats.append(m.text_encoder(input_ids, attention_mask))
        return m.head(torch.cat(feats, dim=-1)).squeeze(-1)


def example_inputs(model: nn.Module, tokenizer: Any, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """A small batch of the graph's inputs: real tokenised texts of two lengths, random pixels, one item
    without an image."""
    size = model.cfg.input.image_size  # type: ignore[attr-defined]
    texts = ["Red cotton t-shirt", "Leather crossbody purse with adjustable strap, three pockets, gift box"]
    enc = tokenizer([texts[i % 2] for i in range(batch)], padding="longest", truncation=True,
                    max_length=model.cfg.input.max_length, return_tensors="pt")  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(0)
    has = torch.ones(batch, dtype=torch.bool)
    has[-1] = False
    return torch.randn(batch, 3, size, size, generator=gen), enc["input_ids"], enc["attention_mask"], has


def preprocess_config(model: nn.Module) -> dict[str, Any]:
    """What a runtime must do to raw products before the graph (mirrors `factory.create_transforms` and
    `data.text.product_text` + `data.dataset.Collator`)."""
    cfg = model.cfg  # type: ignore[attr-defined]
    image = cfg.input if model.image_encoder is not None else None  # resolved by the model
    return {
        "inputs": list(INPUTS), "output": "score",
        "text": {"template": "effiminivlm.data.text.product_text(category, title, features, description)",
                 "max_length": cfg.input.max_length, "truncation": True, "padding": "longest",
                 "tokenizer": "tokenizer files in this folder"},
        "image": None if image is None else {
            "size": [image.image_size, image.image_size], "resize": "stretch (no crop)",
            "interpolation": "bicubic", "antialias": True, "to_rgb": "transparency composited on white",
            "scale": "1/255", "mean": list(image.mean), "std": list(image.std), "layout": "NCHW"},
        "no_image": "has_image false (pixels may be zeros)",
        "score_clip": list(RATING_RANGE),
    }


def export_model(model_dir: str | Path, out: str | Path, fmt: str = "onnx", opset: int = 18,
                 atol: float = 1e-3) -> dict[str, Any]:
    """Export `model_dir` to `out` (a new or empty folder) and check the graph against PyTorch on an example
    batch (ONNX Runtime for onnx, OpenVINO's CPU plugin for openvino); returns what was written and the
    check's max abs difference. A difference above `atol` is an error and nothing is left behind."""
    if fmt not in FORMATS:
        raise EffiMiniVLMError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise EffiMiniVLMError(f"{target} exists and is not an empty folder")
    model, tokenizer = load_model(model_dir)
    if getattr(model, "exportable", True) is False:
        raise EffiMiniVLMError(f"{model_dir}: {model.cfg.arch} cannot be exported (its TF-IDF and listing "
                               "blocks run in Python, not in a graph); score it with predict or serve")
    graph = ScoringGraph(model.float().eval())
    inputs = example_inputs(model, tokenizer)
    with torch.no_grad():
        want = graph(*inputs).numpy()
    tmp = target.parent / f".{target.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        onnx_path = tmp / "model.onnx"
        _to_onnx(graph, inputs, onnx_path, opset)
        if fmt == "onnx":
            got, files = _run_onnx(onnx_path, inputs), ["model.onnx"]
        else:
            got, files = _to_openvino(onnx_path, tmp, inputs), ["model.xml", "model.bin"]
            onnx_path.unlink()
        diff = float(np.abs(got - want).max())
        if not diff <= atol:
            raise EffiMiniVLMError(f"exported graph differs from the PyTorch model by {diff:.2e} (> {atol})")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        atomic_write_text(tmp / "preprocess.json", json.dumps(preprocess_config(model), indent=2) + "\n")
        atomic_write_text(tmp / "config.json", json.dumps(model.config_dict(tokenizer_saved=True), indent=2)
                          + "\n")
        if target.exists():
            target.rmdir()
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(target), "format": fmt, "files": [*files, "preprocess.json", "config.json"],
            "check_max_abs_diff": diff, "check_items": len(want)}


def _to_onnx(graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    """TorchScript-based exporter with dynamic batch and length (self-contained single file)."""
    dims = {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "length"},
            "attention_mask": {0: "batch", 1: "length"}, "has_image": {0: "batch"}, "score": {0: "batch"}}
    with warnings.catch_warnings():  # tracer warnings about Python bools in the towers' shape checks
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, inputs, str(path), input_names=list(INPUTS), output_names=["score"],
                          dynamic_axes=dims, opset_version=opset, dynamo=False)


def _feeds(inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in zip(INPUTS, inputs, strict=True)}


def _run_onnx(path: Path, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EffiMiniVLMError("--format onnx needs onnxruntime: pip install 'effiminivlm[export]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(["score"], {k: v for k, v in _feeds(inputs).items() if k in names})[0]


def _to_openvino(onnx_path: Path, folder: Path, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    try:
        import openvino as ov
    except ImportError:
        raise EffiMiniVLMError("--format openvino needs openvino: pip install 'effiminivlm[openvino]'"
                               ) from None
    ov_model = ov.convert_model(str(onnx_path))
    ov.save_model(ov_model, str(folder / "model.xml"), compress_to_fp16=False)  # the fp32 weights as trained
    # checked in f32: the CPU plugin would otherwise pick bf16 on AMX machines (a deployment may choose it)
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = {p.get_any_name() for p in compiled.inputs}
    result = compiled({k: v for k, v in _feeds(inputs).items() if k in names})
    return np.asarray(result[compiled.output(0)])
