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
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

#: Names of the model-side levers, as reports list them.
LEVERS = ("bf16_weights", "channels_last", "int8_linear", "compile")


@dataclass(frozen=True)
class ModelLevers:
    """Which model-side techniques the fast path applies (defaults: what paid on the development CPU)."""

    bf16_weights: bool = True
    channels_last: bool = True
    int8_linear: bool = False
    compile: bool = False

    def used(self) -> list[str]:
        """The names of the levers that are on."""
        return [k for k, v in asdict(self).items() if v]


def _to_channels_last(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4
                 else a for a in args)


class _Fp32Island(nn.Module):
    """Runs `inner` with autocast off and float32 inputs (dynamically quantised linears take fp32 only)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        dev = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(dev, enabled=False):
            return self.inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # num_features, architecture(), ... of the wrapped tower
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


def optimize_for_inference(model: nn.Module, device: torch.device, precision: str,
                           levers: ModelLevers | None = None) -> nn.Module:
    """A copy of `model` (eval mode, on `device`) with the `levers` that apply to `precision` and `device`.

    bf16 weights apply under bf16 only (fp16 on CUDA keeps its AMP casts); channels-last and int8 on CPU
    only (int8 dynamic quantisation has no CUDA kernels); fp32 returns the model unchanged (same object).
    """
    levers = levers or ModelLevers()
    if precision == "fp32":
        return model.to(device).eval()
    fast = copy.deepcopy(model).to(device).eval()
    image, text = getattr(fast, "image_encoder", None), getattr(fast, "text_encoder", None)
    if levers.int8_linear and text is not None and device.type == "cpu":
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            fast.text_encoder = _Fp32Island(quantize_dynamic(text.float(), {nn.Linear}, dtype=torch.qint8))
        text = None  # stays fp32 around its int8 linears
    if levers.bf16_weights and precision == "bf16":
        for tower in (image, text):
            if tower is not None:
                tower.to(torch.bfloat16)
    if levers.channels_last and image is not None and device.type == "cpu":
        image.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        image.register_forward_pre_hook(_to_channels_last)
    if levers.compile and getattr(fast, "text_encoder", None) is not None:
        fast.text_encoder = torch.compile(fast.text_encoder, dynamic=True)  # type: ignore[assignment]
    fast.fast_levers = levers.used()  # type: ignore[assignment]
    return fast
