"""What the machine can do and what the model achieves: matrix-multiply peak and model-only GFLOP/s.

Why measured, never looked up: the same code runs on CPUs with and without AMX / AVX-512 BF16, under other
jobs' load, with different thread counts; "50% of peak" only means something against the peak of this
machine, in this process, with these threads, measured in the same run. FLOPs are counted by the
protocol's counter (`protocol.flops.count_flops`, 2 per multiply-add) on the real, padded input shapes of
every batch, so a tower's GFLOP/s counts the padding it computes, as a matrix-multiply peak does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from effiminivlm.protocol.flops import count_flops
from effiminivlm.runtime import autocast, synchronize


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """Best GFLOP/s of an n x n x n `torch.matmul` in `dtype` over ~`seconds` (after one warmup call)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    end = time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < end:
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return 2 * n**3 / best / 1e9


@dataclass
class TowerRate:
    """Model-only time and achieved rate of one part over pre-collated batches."""

    part: str
    precision: str
    samples: int
    seconds: float
    gflop: float  # counted on the padded shapes that ran
    gflop_per_s: float
    ms_per_sample: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inputs(part: str, batch: dict[str, Any]) -> tuple[Any, ...]:
    if part == "text_encoder":
        return batch["input_ids"], batch["attention_mask"]
    if part == "image_encoder":
        return (batch["pixel_values"],)
    return batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["has_image"]


def _one_pass(run: torch.nn.Module, part: str, batches: list[dict[str, Any]], device: torch.device) -> None:
    """`run` over every batch's inputs for `part`, finished (CUDA synchronised) when it returns."""
    for b in batches:
        run(*(t.to(device) for t in _inputs(part, b)))
    synchronize(device)


def part_precision(part: str, precision: str, towers: dict[str, str] | None) -> str:
    """The precision `part` (text_encoder / image_encoder / model) computed in: its tower's entry of
    `towers` (`tower_precisions` of an optimised model), the towers' common one for the whole model or
    "mixed (...)" when they differ; `precision` (the path's) without `towers`."""
    if not towers:
        return precision
    if part != "model":
        return towers.get(part.removesuffix("_encoder"), precision)
    kinds = set(towers.values())
    if len(kinds) == 1:
        return kinds.pop()
    return "mixed (" + ", ".join(f"{t} {p}" for t, p in towers.items()) + ")"


def peak_for(precision: str, peak: dict[str, Any]) -> tuple[float | None, str]:
    """(the measured matmul peak a rate in `precision` is read against, its name), or (None, why not).

    Why per precision: an fp32 tower's rate against a bf16 peak reads as "> 100%" on a CPU that emulates
    bf16 (its bf16 peak is below its fp32 one) and as a small share on one with AMX; neither says how close
    the tower runs to what its own kernels can do. int8 has no peak unless one was measured
    (`peak["int8_gflops"]`); a whole model of mixed precisions has no single one."""
    base = precision.split(" ")[0]
    if base == "mixed":
        return None, "mixed precisions: no single peak"
    value = peak.get(f"{base}_gflops")
    if value:
        emulated = " (emulated)" if base == "bf16" and peak.get("bf16_native") is False else ""
        return float(value), f"{base}{emulated} peak"
    return None, f"no {base} peak measured"


def tower_rates(reference: torch.nn.Module, runner: torch.nn.Module, batches: list[dict[str, Any]],
                device: torch.device, precision: str, warmup: int = 1,
                flops_cache: dict[str, int] | None = None,
                towers: dict[str, str] | None = None) -> list[TowerRate]:
    """Model-only rate of the text tower, the image tower and the whole model of `runner` (the fast path's
    model) on `batches` (collated, untimed); FLOPs counted on `reference` (fp32) with the same shapes, once
    per part when the same `flops_cache` is passed for several runners. Each rate is labelled with the
    precision its part really computed in (`part_precision` of `towers`), `precision` is the autocast.

    Steady state: `warmup` untimed passes over every batch, then one timed pass over all of them. Why every
    batch: length-sorted batches each have their own text length, and a compiled backend (OpenVINO) builds
    its kernels for a shape the first time it sees it; a scorer that runs for hours has seen every length
    (at most max_length of them), so the model-only rate is the warm one. The end-to-end rows of the report
    pay for first sights as they come."""
    cache = flops_cache if flops_cache is not None else {}
    out = []
    for part in ("text_encoder", "image_encoder", "model"):
        ref = reference if part == "model" else getattr(reference, part, None)
        run = runner if part == "model" else getattr(runner, part, None)
        usable = [b for b in batches if part == "text_encoder" or b.get("pixel_values") is not None]
        if ref is None or run is None or not usable:
            continue
        if part not in cache:
            cache[part] = sum(count_flops(ref, _inputs(part, b)).total for b in usable)
        flops = cache[part]
        with torch.inference_mode(), autocast(device, precision):
            for _ in range(warmup):
                _one_pass(run, part, usable, device)
            start = time.perf_counter()
            _one_pass(run, part, usable, device)
            seconds = time.perf_counter() - start
        n = sum(len(b["item_id"]) for b in usable)
        out.append(TowerRate(part, part_precision(part, precision, towers), n, round(seconds, 4),
                             round(flops / 1e9, 6), round(flops / 1e9 / seconds, 3),
                             round(seconds * 1e3 / max(n, 1), 3)))
    return out


#: Profiler op names whose time is matrix-multiply work (linear layers run as addmm / mm on a CPU).
MATMUL_OPS = ("addmm", "mm", "bmm", "_addmm_activation")
#: The ops whose work the FLOP count is made of, at the level a forward under inference mode calls them
#: (`linear` and `scaled_dot_product_attention` arrive whole; `mm` / `bmm` / `matmul` from other code).
COUNTED_OPS = (*MATMUL_OPS, "linear", "matmul", "baddbmm", "scaled_dot_product_attention",
               "_scaled_dot_product_flash_attention_for_cpu")


@dataclass
class IsolatedOp:
    """One distinct counted call of a forward (op and input shapes), how often it ran and its best time
    run alone."""

    op: str
    shapes: list[list[int]]
    calls: int
    seconds: float  # best single run alone

    @property
    def kind(self) -> str:
        return "attention" if _is_attention(self.op) else "matmul"


def _is_attention(op: str) -> bool:
    """Whether an op name (aten's, with or without overload or namespace) is an attention kernel."""
    return "scaled_dot_product" in op


class _CountedCalls(TorchDispatchMode):
    """Records, per distinct (op, input shapes, arguments), the first call's inputs and how often it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[Any, list[Any]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func.__name__.split(".")[0] in COUNTED_OPS:
            key = (func, *(tuple(a.shape) if isinstance(a, torch.Tensor) else repr(a) for a in args),
                   repr(sorted(kwargs.items())))
            if key in self.calls:
                self.calls[key][0] += 1
            else:
                kept = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
                self.calls[key] = [1, func, kept, kwargs]
        return func(*args, **kwargs)


def isolated_ops(runner: torch.nn.Module, inputs: tuple[Any, ...], device: torch.device,
                 repeats: int = 5) -> list[IsolatedOp]:
    """Every distinct matrix product and attention call of one forward of `runner`, each timed alone
    (same inputs, best of `repeats` after one warmup) and weighted by how often the forward calls it.

    Why: their summed time is the least a forward can take with this machine's kernels; the tower's FLOPs
    over it are the rate a tower doing nothing else (no LayerNorm, GELU, residual adds, copies) would
    reach: the ceiling that an achieved "% of peak" is read against."""
    mode = _CountedCalls()
    with torch.inference_mode():
        with mode:
            runner(*inputs)
        out = []
        for calls, func, args, kwargs in mode.calls.values():
            func(*args, **kwargs)
            synchronize(device)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                func(*args, **kwargs)
                synchronize(device)
                best = min(best, time.perf_counter() - start)
            shapes = [list(a.shape) for a in args if isinstance(a, torch.Tensor)]
            out.append(IsolatedOp(func.__name__, shapes, calls, best))
    return out


def op_breakdown(reference: torch.nn.Module, runner: torch.nn.Module, inputs: tuple[Any, ...],
                 device: torch.device, precision: str, repeats: int = 2) -> dict[str, float]:
    """Where one forward of `runner` spends its time: matmuls, attention, the rest (bias copies, GELU,
    LayerNorm, residual adds, layout copies), each as a share of the time and, for the first two, at what
    rate; and its ceiling (`isolated_ops`): the rate it would reach if its matrix products and attention
    ran as fast as each does alone and nothing else took time. Why: "% of peak" of a whole tower mixes
    matmuls, which can run near the peak, with attention (its softmax) and elementwise ops bound by
    memory; the split says which one a tower's rate is waiting on, the ceiling how far any backend could
    take it on this machine. FLOPs come from `reference` (fp32, the same function), time from
    torch.profiler's self time per op (after one warmup)."""
    from torch.profiler import ProfilerActivity, profile

    flops = count_flops(reference, inputs)
    mm_flops = sum(n for op, n in flops.by_op.items()
                   if op.split(".")[1] in MATMUL_OPS)
    with torch.inference_mode(), autocast(device, precision):
        runner(*inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                runner(*inputs)
        alone = isolated_ops(runner, inputs, device)
    times: dict[str, float] = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        op = ev.key.removeprefix("aten::")
        kind = "matmul" if op in MATMUL_OPS else "attention" if _is_attention(op) else "other"
        times[kind] += ev.self_cpu_time_total / 1e6 / repeats  # seconds per forward
    floor = {k: sum(o.calls * o.seconds for o in alone if o.kind == k) for k in ("matmul", "attention")}
    total = sum(times.values()) or float("nan")
    return {"matmul_time_share": round(times["matmul"] / total, 3),
            "attention_time_share": round(times["attention"] / total, 3),
            "other_time_share": round(times["other"] / total, 3),
            "matmul_gflop_per_s": round(mm_flops / 1e9 / max(times["matmul"], 1e-9), 1),
            "attention_gflop_per_s": round(flops.attention / 1e9 / max(times["attention"], 1e-9), 1),
            "alone_matmul_ms": round(floor["matmul"] * 1e3, 4),
            "alone_attention_ms": round(floor["attention"] * 1e3, 4),
            "ceiling_gflop_per_s": round(flops.total / 1e9 / max(sum(floor.values()), 1e-9), 1)}
