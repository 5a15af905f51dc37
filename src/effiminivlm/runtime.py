"""Device and precision choices shared by training, evaluation, prediction and the runtime benchmark.

Why one place: "auto" must mean the same everywhere (bf16 on CPU: the fast scoring path, whose OpenVINO towers
compile in f32 where the CPU has no native bf16; fp16 AMP with a grad scaler on CUDA, bf16 there when the GPU
supports it). Work PyTorch computes itself (training, embedding) asks `resolve_compute_precision`, which is
fp32 on a CPU that would emulate bf16: there bf16 matrix products ran 5x slower than fp32.

torch is imported inside the functions that need it: `predict` on a CPU asks `cuda_absent` and
`resolve_precision` before it knows whether it will import torch at all (`serving.lean`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from effiminivlm.config import PRECISIONS
from effiminivlm.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: Files that exist where an NVIDIA driver is loaded: without any, torch can see no CUDA GPU.
NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0")


def resolve_device(device: str | None = None) -> torch.device:
    """`None`/"auto" -> cuda when available, else cpu."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: no CUDA GPU is available here (use cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def cuda_absent(device: str | None = None) -> bool:
    """True when `device` (None / "auto" / "cpu") certainly resolves to the CPU, known without importing
    torch: "cpu" asked, or auto on a machine with no NVIDIA driver loaded. False means "ask torch"."""
    if device == "cpu":
        return True
    return device in (None, "auto") and not any(os.path.exists(f) for f in NVIDIA_DRIVER_FILES)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (x86 `flags`, Arm `Features`); empty where they cannot
    be read (another OS). The one reader: precision choices and `quantize`'s stored ISA facts use it."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[-1].split())
    return frozenset(flags)


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AMX or AVX512_BF16 on x86; bf16 on Arm).

    Why: without them PyTorch and OpenVINO emulate bf16, and emulated it is slower than fp32, not faster
    (measured on AVX-512 VNNI without BF16, 2 cores: bf16 matmul peak 60 GFLOP/s vs fp32 312). Where the
    flags cannot be read (not Linux), bf16 is assumed, as before."""
    flags = cpu_flags(cpuinfo)
    return not flags or bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Concrete precision for `device` (a torch device, or its type: "cpu" needs no torch): auto -> bf16 on
    CPU, bf16/fp16 on CUDA; fp16 on CPU is refused."""
    kind = device if isinstance(device, str) else device.type
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if kind == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16"
    if precision == "fp16" and kind != "cuda":
        raise ValueError("fp16 autocast needs CUDA; use bf16 or fp32 on CPU")
    return precision


def resolve_compute_precision(precision: str, device: torch.device) -> str:
    """`resolve_precision` for work PyTorch computes itself (training steps, embedding passes): "auto" is
    fp32 on a CPU without native bf16, where autocast would emulate bf16 slower than fp32. An explicit bf16
    is honoured (it is what the user asked)."""
    resolved = resolve_precision(precision, device)
    if precision == "auto" and device.type == "cpu" and not cpu_has_native_bf16():
        return "fp32"
    return resolved


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for the forward pass (no-op for fp32). Only the towers run in reduced precision:
    EffiMiniVLM runs its fusion and regression head in fp32 outside autocast, so scores and the training
    loss's inputs are float32 (bf16 would round ratings near 4 to 1/64 steps and tie different products)."""
    if precision == "fp32":
        yield
        return
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued work (CUDA runs asynchronously; a timer read before it finishes measures
    the launch, not the work); nothing on a CPU."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB. Linux: VmHWM of /proc/self/status, the high-water mark
    of this program's own memory; ru_maxrss would be wrong there for a process started by fork + exec (as
    `subprocess` does), since getrusage's figures survive execve and report the parent's size when it was
    larger. Elsewhere ru_maxrss (KB on Linux, bytes on macOS)."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def default_num_workers(requested: int) -> int:
    """Never more DataLoader workers than cores (2 here); 0 means load in the main process."""
    return max(0, min(requested, os.cpu_count() or 1))


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def fetch_threads(num_workers: int) -> int:
    """Threads that decode a batch's images when loading runs in the main process (`num_workers=0`): every
    usable core (the model is idle while a batch loads, and Pillow decodes without the GIL); 1 when worker
    processes load instead (`data.loader.ThreadedFetch`)."""
    return usable_cores() if num_workers == 0 else 1


def scoring_threads(num_workers: int, device: torch.device) -> int | None:
    """Intra-op threads for the fast path's model on a CPU: the cores the loader workers leave, at least one
    (None elsewhere: keep torch's setting). Why: a model whose threads share a core with a decoding worker
    waits at every parallel op for the thread the worker pre-empted; on 2 cores with 1 worker, one model
    thread beside the worker beats two that keep stalling (`bench_fast.py` measures both)."""
    if device.type != "cpu":
        return None
    return max(1, usable_cores() - num_workers)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside the block (None: unchanged), restored after."""
    import torch

    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)

