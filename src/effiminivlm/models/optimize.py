"""The model half of the fast scoring path: bf16 weights, channels-last convolutions, int8 linears, compile.

Why a separate step and a copy: the levers change how a model computes, not what it is, and each is only
worth it where it measurably pays on the machine at hand (`benchmarks/bench_fast.py` times each on and off in
one run). `optimize_for_inference` returns a new module, so the caller's model (a training run's, a user's)
keeps its fp32 weights; `--precision fp32` never calls it (the exact path).

- `bf16_weights`: the towers' weights stored in bf16, not only autocast: autocast re-casts every fp32 weight
  on every call (a copy of the whole model per batch); the head stays fp32, so scores keep their resolution.
- `channels_last`: the image tower's convolutions run NHWC, the layout oneDNN's depthwise and 1x1 kernels
  want on a CPU (NCHW costs reorders around every convolution).
- `int8_linear`: dynamic int8 quantisation of the text tower's linear layers (VNNI), fp32 activations; it
  rounds more than bf16, so it is off by default and kept only where parity holds.
- `compile`: `torch.compile` of the text tower (dynamic shapes: bucketed lengths vary); compilation takes
  minutes on a small CPU, so it is off by default and the benchmark says whether it pays.
- `cls_only`: a CLS-pooled BERT text tower computes its last layer for the CLS position only
  (`models.text_encoders.ClsOnlyLastLayer`): the same function with ~1/7 less work at 6 layers.
- `image_backend` / `text_backend`: "torch" or "openvino" (`models.openvino_backend`: the tower converted
  in memory and compiled for this CPU). Only for architectures with plain towers (`RatingModel.plain_towers`:
  pixels -> features, (ids, mask) -> features); a missing package or a failed conversion falls back to
  PyTorch with one warning, and `fast_levers` / `fast_fallbacks` say what ran. With a tower in OpenVINO,
  the regression head runs there too, in f32 ("openvino head"): the graph the torch-free `predict` runs
  (`serving.lean`), so both give the same bits.

A fast model also takes uint8 pixels [B,3,S,S] (`inference.make_loader(raw_pixels=True)`: the loader ships
4x fewer bytes from its workers and skips ToTensor + Normalize per item): its image tower normalises them
first, in one batched pass with the processor's mean / std (`_PixelNormalize`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from effiminivlm.models import openvino_backend
from effiminivlm.models.blocks import TowerWrapper, channels_last_inputs
from effiminivlm.models.openvino_backend import openvino_available
from effiminivlm.runtime import cpu_has_native_bf16

BACKENDS = ("torch", "openvino")


@dataclass(frozen=True)
class ModelLevers:
    """Which model-side techniques the fast path applies (defaults: what paid on the development CPU)."""

    bf16_weights: bool = True
    channels_last: bool = True
    int8_linear: bool = False
    compile: bool = False
    image_backend: str = "openvino"
    text_backend: str = "openvino"
    image_fp32: bool = True  # an OpenVINO image tower computes in f32 (bf16 failed the parity check)
    cls_only: bool = True  # a CLS-pooled BERT's last layer for the CLS position only (same function)
    ov_streams: int = 2  # OpenVINO towers: a batch split over this many streams (capped at the threads)

    def __post_init__(self) -> None:
        for name in ("image_backend", "text_backend"):
            if getattr(self, name) not in BACKENDS:
                raise ValueError(f"{name} must be one of {', '.join(BACKENDS)}, got {getattr(self, name)!r}")

    def used(self) -> list[str]:
        """The names of the levers that are on ("openvino image tower" for a backend other than torch)."""
        out = []
        for k, v in asdict(self).items():
            if k.endswith("_backend"):
                out += [f"{v} {k.removesuffix('_backend')} tower"] if v != "torch" else []
            elif k == "ov_streams":
                out += [f"{v} openvino streams"] if v > 1 and "openvino" in (self.image_backend,
                                                                             self.text_backend) else []
            elif v and (k != "image_fp32" or self.image_backend == "openvino"):
                out.append(k)
        return out


class _Fp32Island(TowerWrapper):
    """Runs `inner` with autocast off and float32 inputs (dynamically quantised linears take fp32 only)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        dev = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(dev, enabled=False):
            return self.inner(*args, **kwargs)


class _PixelNormalize(TowerWrapper):
    """uint8 pixels [B,3,S,S] (0-255) -> (x / 255 - mean) / std as float32, then `inner`; float pixels
    (already normalised by the loader) pass through unchanged. One batched pass instead of ToTensor +
    Normalize per item in the loader, and the workers ship a quarter of the bytes."""

    def __init__(self, inner: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(inner)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t,
                             persistent=False)

    def forward(self, pixels: torch.Tensor, *args: Any) -> Any:
        if pixels.dtype == torch.uint8:  # a product, then a sum: numpy's two roundings (`serving.lean`)
            pixels = pixels.float() * self.scale + self.shift
        return self.inner(pixels, *args)


def _openvino(build: Callable[[], nn.Module], what: str, fallbacks: list[str]) -> nn.Module | None:
    """`build()` (an OpenVINO tower), or None with one warning when the package is missing or conversion
    fails (the tower stays PyTorch; `fallbacks` records why)."""
    if not openvino_available():
        reason = f"{what} tower: openvino is not installed (pip install openvino)"
    else:
        try:
            return build()
        except Exception as exc:  # noqa: BLE001  (conversion of a user's model: any failure falls back)
            reason = f"{what} tower: OpenVINO conversion failed ({type(exc).__name__}: {exc})"
    warnings.warn(f"{reason}; it runs in PyTorch", stacklevel=3)
    fallbacks.append(reason)
    return None


def _label(variant: Any, tower: nn.Module) -> str:
    """What an OpenVINO tower computes in: its stored variant's int8, else the precision it compiled for."""
    return "int8" if variant is not None and variant.precision == "int8" else str(tower.precision)


def tower_precisions(fast: nn.Module, precision: str, variants: dict[str, Any], cpu: bool) -> dict[str, str]:
    """Per tower of an optimised copy, the precision it really computes in: an OpenVINO tower's int8 graph
    or compiled precision (f32 where the CPU lacks native bf16, whatever was asked), "int8" for dynamically
    quantised linears, else `precision` (PyTorch towers run under its autocast; "bf16 (emulated)" on a CPU
    without native bf16, `runtime.cpu_has_native_bf16`). Why: a report must name what ran, not what the
    path asked for; on a CPU without native bf16 the "bf16" path runs f32 / int8. `variants`: the stored
    variants the copy applied (`models.quantize`)."""
    out: dict[str, str] = {}
    for name in ("image", "text"):
        tower = getattr(fast, f"{name}_encoder", None)
        if tower is None:
            continue
        if isinstance(tower, openvino_backend.OpenVINOTower):
            out[name] = _label(variants.get(name), tower)
        elif isinstance(tower, _Fp32Island):
            out[name] = "int8"
        elif precision == "bf16" and cpu and not cpu_has_native_bf16():
            out[name] = "bf16 (emulated)"
        else:
            out[name] = precision
    return out


def lean_copy(model: nn.Module) -> nn.Module:
    """A fp32 eval copy of `model` with the fast path's same-function changes only (the CLS-only last text
    layer): the towers whose OpenVINO graphs `models.quantize` calibrates."""
    lean = copy.deepcopy(model).float().eval()
    text = getattr(lean, "text_encoder", None)
    if text is not None and hasattr(text, "cls_only") and (short := text.cls_only()) is not None:
        lean.text_encoder = short
    return lean


def optimize_for_inference(model: nn.Module, device: torch.device, precision: str,
                           levers: ModelLevers | None = None) -> nn.Module:
    """A copy of `model` (eval mode, on `device`) with the `levers` that apply to `precision` and `device`.

    bf16 weights apply under bf16 only (fp16 on CUDA keeps its AMP casts); channels-last, int8 and the
    OpenVINO backends on CPU only (int8 dynamic quantisation has no CUDA kernels), the backends and uint8
    pixels only for plain towers (`RatingModel.plain_towers`); fp32 returns the model unchanged (same
    object). `fast_levers` lists what the copy really uses, `fast_fallbacks` what it could not."""
    levers = levers or ModelLevers()
    if precision == "fp32":
        return model.to(device).eval()
    fast = copy.deepcopy(model).to(device).eval()
    used: list[str] = []
    fallbacks: list[str] = []
    cpu, plain = device.type == "cpu", bool(getattr(fast, "plain_towers", False))
    image, text = getattr(fast, "image_encoder", None), getattr(fast, "text_encoder", None)
    image_prec = "fp32" if levers.image_fp32 else precision
    if levers.cls_only and text is not None and hasattr(text, "cls_only"):
        lean = text.cls_only()
        if lean is not None:
            fast.text_encoder = text = lean
            used.append("cls_only")
    # per-tower variants measured and stored by `effiminivlm quantize` (models.quantize); the text tower's
    # graph was taken with its CLS-only last layer, so it applies only with that lever on
    variants = dict(getattr(model, "fast_variants", None) or {})
    if not levers.cls_only:
        variants.pop("text", None)
    if image is not None and cpu and plain and levers.image_backend == "openvino":
        size = fast.cfg.input.image_size  # type: ignore[union-attr]
        iv = variants.get("image")
        ov_image = _openvino(lambda: openvino_backend.image_tower(
            image, size, iv.compile_precision if iv else image_prec, streams=levers.ov_streams,
            graph=iv.graph if iv else None), "image", fallbacks)
        if ov_image is not None:
            fast.image_encoder, image = ov_image, None
            used.append(f"openvino image tower ({_label(iv, ov_image)})")
    if text is not None and cpu and plain and levers.text_backend == "openvino":
        tv = variants.get("text")
        ov_text = _openvino(lambda: openvino_backend.text_tower(
            text, tv.compile_precision if tv else precision, streams=levers.ov_streams,
            graph=tv.graph if tv else None), "text", fallbacks)
        if ov_text is not None:
            fast.text_encoder, text = ov_text, None
            used.append(f"openvino text tower ({_label(tv, ov_text)})")
    towers = (getattr(fast, "image_encoder", None), getattr(fast, "text_encoder", None))
    streams = max((getattr(t, "streams", 1) for t in towers
                   if isinstance(t, openvino_backend.OpenVINOTower)), default=1)
    if streams > 1:
        used.append(f"{streams} openvino streams")
    if any(isinstance(t, openvino_backend.OpenVINOTower) for t in towers):  # the head follows the towers
        in_dim = int(getattr(fast, "image_dim", 0)) + int(getattr(fast, "text_dim", 0))
        ov_head = _openvino(lambda: openvino_backend.head_graph(fast.head, in_dim), "head", fallbacks)
        if ov_head is not None:
            fast.head = ov_head
            used.append("openvino head")
    if levers.int8_linear and text is not None and cpu:
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            fast.text_encoder = _Fp32Island(quantize_dynamic(text.float(), {nn.Linear}, dtype=torch.qint8))
        text = None  # stays fp32 around its int8 linears
        used.append("int8_linear")
    if levers.bf16_weights and precision == "bf16" and (image is not None or text is not None):
        for tower in (image, text):
            if tower is not None:
                tower.to(torch.bfloat16)
        used.append("bf16_weights")
    if levers.channels_last and image is not None and cpu:
        image.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        image.register_forward_pre_hook(channels_last_inputs)
        used.append("channels_last")
    if levers.compile and text is not None:
        fast.text_encoder = torch.compile(text, dynamic=True)  # type: ignore[assignment]
        used.append("compile")
    fast.tower_precisions = tower_precisions(fast, precision, variants, cpu)  # type: ignore[assignment]
    if plain and getattr(fast, "image_encoder", None) is not None:
        mean, std = fast.processor(None).norm_stats()  # type: ignore[operator]
        fast.image_encoder = _PixelNormalize(fast.image_encoder, mean, std).to(device)
    fast.fast_levers = used  # type: ignore[assignment]
    fast.fast_fallbacks = fallbacks  # type: ignore[assignment]
    return fast
