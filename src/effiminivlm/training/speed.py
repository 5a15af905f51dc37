"""Training-speed levers that keep the recipe's maths: fused AdamW, the image tower's layout and depthwise
precision under bf16 autocast on a CPU, the text tower's dropout on a CPU, and `torch.compile` of the
training forward with a counted fallback.

Why each (measured by `benchmarks/bench_train.py`, which flips each one from the fast configuration):
- `train.fused_adamw`: PyTorch's AdamW runs a Python loop over ~200 parameter tensors on a CPU (its
  multi-tensor path is CUDA-only by default), ~10 passes over 26M floats per step; the fused kernel makes
  one. Same update rule, same state_dict.
- `train.depthwise_fp32`: oneDNN's bf16 kernels for the backward of depthwise convolutions are several
  times slower than its fp32 ones (EfficientNet-Lite0's 16 depthwise layers were ~half of the image tower's
  step); under bf16 autocast those layers run in fp32 while training (more exact, never less), and keep
  bf16 in evaluation, where the forward alone is faster in bf16.
- `train.image_channels_last`: the image tower's input goes NHWC, the layout oneDNN's convolutions want on
  a CPU; weights keep their layout, so a saved model is byte-for-byte the same format.
- `train.fast_dropout`: with dropout live, PyTorch's SDPA has no fused CPU kernel and falls back to its math
  path: q, k, v cast up to fp32 and a serial `bernoulli_` draw per attention weight, about half of a step
  at 256 tokens. `models.dropout_attention` computes the same attention with bf16 products and draws every
  dropout mask (attention and hidden states) four elements per generator call; evaluation is untouched.
- `train.reuse_memory`: glibc serves every allocation over 32 MB (a step's attention weights, the image
  tower's early activations) with a fresh `mmap` and unmaps it on free, so each step page-faults and
  zero-fills gigabytes again (seen as high system time). `heap_reuse` makes glibc keep freed memory in its
  heap for the next step instead, for the duration of the training run; the process's RSS stays at its peak
  meanwhile. Linux with glibc only; elsewhere it reports that it did nothing.
- `train.compile`: `torch.compile` of the training forward (dynamic shapes: bucketed text lengths and the
  short last batch must not recompile); the backward is compiled with the forward, so a compilation that
  fails anywhere fails in the forward, where `CompiledOrEager` counts it, warns once and runs eager from
  then on. Checkpoints and the published model come from the plain module, so no `_orig_mod.` keys.

All of these change only how a step computes; none touches the model, the loss, the schedule or the data.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from effiminivlm.models.blocks import channels_last_inputs
from effiminivlm.models.dropout_attention import use_fast_dropout


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether this PyTorch has a fused AdamW kernel for `device` (CPU since 2.4, CUDA)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # an older or newer PyTorch without the helper: the loop path is always there
        return False
    return device.type in _get_fused_kernels_supported_devices()


def make_adamw(groups: Iterable[dict[str, Any]] | Iterable[nn.Parameter], lr: float, device: torch.device,
               fused: bool) -> torch.optim.AdamW:
    """AdamW over `groups`, fused when asked and supported on `device` (else PyTorch's default path)."""
    if fused and fused_adamw_supported(device):
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    return torch.optim.AdamW(groups, lr=lr)


def is_depthwise(module: nn.Module) -> bool:
    """A 2-D convolution with one group per channel (MobileNet / EfficientNet's depthwise layers)."""
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


class _TrainFp32:
    """Mixin for a depthwise convolution: in training under autocast, run it in fp32 (input cast up, autocast
    off); in evaluation, or without autocast, exactly the convolution's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_autocast_enabled(x.device.type):  # type: ignore[attr-defined]
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x.float())  # type: ignore[misc]
        return super().forward(x)  # type: ignore[misc]


_FP32_CLASSES: dict[type, type] = {}


def _fp32_class(cls: type) -> type:
    """The `_TrainFp32` subclass of a convolution class (one per class, so modules of a class share it)."""
    if cls not in _FP32_CLASSES:
        _FP32_CLASSES[cls] = type(f"TrainFp32{cls.__name__}", (_TrainFp32, cls), {})
    return _FP32_CLASSES[cls]


def depthwise_to_fp32(tower: nn.Module) -> int:
    """Make every depthwise convolution of `tower` train in fp32 (see `_TrainFp32`); returns how many.

    The module keeps its parameters and names (its class gains the mixin), so state_dict, saving and loading
    are unchanged."""
    n = 0
    for module in tower.modules():
        if is_depthwise(module) and not isinstance(module, _TrainFp32):
            module.__class__ = _fp32_class(type(module))
            n += 1
    return n


def apply_train_levers(model: nn.Module, device: torch.device, precision: str, *, depthwise_fp32: bool,
                       channels_last: bool, fast_dropout: bool = False) -> list[str]:
    """Apply the levers that fit `device` and `precision` to `model` in place; returns the names of those
    applied. All are CPU levers (CUDA's cuDNN and fused attention kernels have none of these problems), and
    depthwise fp32 only matters under bf16 autocast."""
    if device.type != "cpu":
        return []
    used = ["fast_dropout"] if fast_dropout and use_fast_dropout(model) else []
    image = getattr(model, "image_encoder", None)
    if image is None:
        return used
    if depthwise_fp32 and precision == "bf16" and depthwise_to_fp32(image):
        used.append("depthwise_fp32")
    if channels_last:
        image.register_forward_pre_hook(channels_last_inputs)
        used.append("image_channels_last")
    return used


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}


def _glibc() -> Any:
    """The C library when it is glibc (has `mallopt` and `gnu_get_libc_version`), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


@contextlib.contextmanager
def heap_reuse(enabled: bool = True) -> Iterator[bool]:
    """Inside: glibc serves large allocations from its heap and keeps freed memory for reuse (no `mmap`, no
    trimming), so a training step reuses the previous step's pages instead of faulting in new ones; yields
    whether that is in effect. On exit glibc's defaults come back and the kept memory goes back to the OS."""
    libc = _glibc() if enabled else None
    on = libc is not None and libc.mallopt(M_MMAP_MAX, 0) == 1
    if on:
        libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
    try:
        yield on
    finally:
        if on:
            for param, value in GLIBC_DEFAULTS.items():
                libc.mallopt(param, value)
            libc.malloc_trim(0)


class CompiledOrEager(nn.Module):
    """`model` called through `torch.compile` until a compilation fails, then eagerly (counted, one warning).

    The training step calls this module (or DDP around it); `model` stays the plain module whose state_dict
    checkpoints and the published model hold. `compile=False` is a plain pass-through. A failing compiled
    call is retried eagerly at once: if the eager call fails too, its error is the real one and propagates.
    """

    def __init__(self, model: nn.Module, compile: bool = True, log: Callable[[str], None] = print) -> None:
        super().__init__()
        self.model = model
        self.log = log
        self.fallbacks = 0
        self.reason: str | None = None
        self.compiled_calls = 0
        compiled = None
        if compile:
            try:
                compiled = torch.compile(model, dynamic=True)
            except Exception as e:  # noqa: BLE001 - any failure to set compilation up means eager
                self._fall_back(e)
        self.__dict__["_compiled"] = compiled  # not a submodule: parameters stay the plain model's

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled module."""
        return self.__dict__["_compiled"] is not None

    def _fall_back(self, error: BaseException) -> None:
        self.fallbacks += 1
        self.__dict__["_compiled"] = None
        first = (str(error).strip().splitlines() or [""])[0][:200]
        self.reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
        self.log(f"warning: train.compile: torch.compile failed ({self.reason}); training continues eagerly")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        compiled = self.__dict__["_compiled"]
        if compiled is None:
            return self.model(*args, **kwargs)
        try:
            with _compile_backward_now():
                out = compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - compilation errors come in many types; eager re-raises real ones
            self._fall_back(e)
            return self.model(*args, **kwargs)
        self.compiled_calls += 1
        return out

    def report(self, requested: bool) -> dict[str, Any]:
        """What a run summary records: asked for, still in use, fallbacks and the first failure."""
        return {"requested": requested, "active": self.active, "fallbacks": self.fallbacks,
                "compiled_calls": self.compiled_calls, "reason": self.reason}


def _compile_backward_now() -> Any:
    """Compile the backward graph together with the forward (AOTAutograd otherwise compiles a static graph's
    backward lazily, inside `loss.backward()`, where a failure could not fall back cleanly)."""
    try:
        from torch._functorch import config as functorch_config
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(functorch_config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return functorch_config.patch(force_non_lazy_backward_lowering=True)
