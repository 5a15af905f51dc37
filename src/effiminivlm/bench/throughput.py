"""`effiminivlm benchmark`: the runtime report (EffiMiniVLM's Table 3): how fast scoring is, and on what.

Why a dedicated, explicit benchmark: a "ms per sample" means nothing without the scope it timed and the
machine it ran on. Every run records both:

- **scope** `end_to_end`: iterate the DataLoader (read row, resolve + decode + resize the image, build the
  text, tokenise, collate) and run the model, as `predict` does; `model`: the forward pass only, on batches
  collated (and moved to the device) before the clock starts. The two differ by the data pipeline's cost.
- **warmup** batches run before the clock starts (allocator, oneDNN kernel selection, worker start-up) and
  are never counted; every measured batch is timed with `time.perf_counter` after a CUDA synchronise.
- **padding**: the collator pads each batch to its longest text ("dynamic", what `predict` runs);
  `pad_to_max` times the protocol's canonical fixed-length input instead. Real tokens (attention-mask sum)
  and padded positions are both reported, so ms/token can be read either way.
- **memory**: on CUDA the max allocated / reserved bytes since a peak reset right before the timed region;
  on CPU the process's peak RSS (a lifetime maximum: the OS cannot reset it, so in a multi-run report it
  covers every earlier run too) and the RSS change across the timed region. DataLoader workers' memory is
  not included.
- **environment**: device name (CPU model / CUDA device), torch version, intra/inter-op threads, the
  1-minute load average before the run and `cpu_busy` (main-process CPU seconds per wall second, about the
  thread count when undisturbed): on a shared machine torch's threads wait for descheduled peers and small
  models can slow down 10-100x; these two fields say when a number was taken under contention.

Reuses the one prediction path of `effiminivlm.inference`: `make_loader` (eval transforms, `ProductDataset`
+ `Collator`) and `forward_batch` under `torch.inference_mode` and `runtime.autocast`. The table is printed
by `cli.tables.print_report`.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from effiminivlm import files
from effiminivlm.config import Recipe
from effiminivlm.data.images import ImageStore
from effiminivlm.data.inputs import read_inputs
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.inference import forward_batch, image_mode, make_loader
from effiminivlm.models.factory import load_model_or_recipe
from effiminivlm.runtime import (
    PRECISIONS,
    autocast,
    default_num_workers,
    peak_rss_mb,
    resolve_device,
    resolve_precision,
    synchronize,
    torch_threads,
)

SCOPES = ("end_to_end", "model")
SCOPE_MEANING = {
    "end_to_end": "read + decode + tokenize + collate + forward (DataLoader iteration and model)",
    "model": "forward only, on batches collated and moved to the device before the clock starts",
}

#: The clock every timing reads; a module attribute so tests can observe when the timed region starts/ends.
_clock: Callable[[], float] = time.perf_counter


@dataclass
class BenchmarkResult:
    """One timed run: one (scope, precision) combination. Times in seconds / ms, memory in MB."""

    scope: str
    precision: str
    model: str
    params_m: float
    device: str
    device_name: str
    torch_version: str
    threads: int
    interop_threads: int
    load_avg_1m: float | None
    num_workers: int
    batch_size: int
    padding: str
    max_length: int
    images: str
    inputs: list[str]
    split: str | None
    rows_available: int
    warmup_batches: int
    measured_batches: int
    samples: int
    samples_with_image: int
    tokens: int
    padded_tokens: int
    seconds: float
    cpu_busy: float  # main-process CPU s / wall s: about `threads` when undisturbed, lower on shared cores
    ms_per_sample: float
    ms_per_token: float | None
    samples_per_s: float
    tokens_per_s: float
    ms_per_batch_median: float
    ms_per_batch_max: float
    peak_rss_mb: float | None = None
    rss_increase_mb: float | None = None
    cuda_max_allocated_mb: float | None = None
    cuda_max_reserved_mb: float | None = None
    timing: str = ""
    batch_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- environment

def device_name(device: torch.device) -> str:
    """CUDA device name, or the CPU model name (from /proc/cpuinfo on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def current_rss_mb() -> float | None:
    """Resident set size of this process now (Linux /proc/self/statm); None where unavailable."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def load_avg_1m() -> float | None:
    """The 1-minute load average, rounded (None where the OS has none): says when a timing ran under load."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------- planning

def expand_choice(value: str, choices: tuple[str, ...], what: str, both: tuple[str, ...] | None = None
                  ) -> list[str]:
    """`value` as a list of runs: one choice, or `both` -> the pair; anything else is a clear error."""
    if both is not None and value == "both":
        return list(both)
    if value not in choices:
        allowed = ", ".join((*choices, "both") if both is not None else choices)
        raise EffiMiniVLMError(f"--{what} must be one of {allowed}, got {value!r}")
    return [value]


def check_run_options(batch_size: int, warmup: int, batches: int | None, max_samples: int | None) -> None:
    """Refuse impossible sizes before anything is loaded."""
    if batch_size < 1 or warmup < 0:
        raise EffiMiniVLMError(f"--batch-size must be >= 1 and --warmup >= 0 (got {batch_size}, {warmup})")
    if batches is not None and max_samples is not None:
        raise EffiMiniVLMError("give --batches or --max-samples, not both")
    if (batches is not None and batches < 1) or (max_samples is not None and max_samples < 1):
        raise EffiMiniVLMError("--batches and --max-samples must be >= 1")


def plan_rows(rows: int, batch_size: int, warmup: int, batches: int | None = None,
              max_samples: int | None = None) -> tuple[int, int]:
    """(rows to read, measured batches). Warmup takes the first `warmup` full batches; the measured region
    is `batches` full batches, or `max_samples` rows, or everything left; the last batch may be partial."""
    check_run_options(batch_size, warmup, batches, max_samples)
    warm_rows = warmup * batch_size
    wanted = (batches * batch_size if batches is not None else max_samples if max_samples is not None
              else rows - warm_rows)
    if wanted < 1 or warm_rows + wanted > rows:
        what = "leave nothing to measure" if wanted < 1 else f"plus {wanted} measured rows do not fit"
        raise DataError(f"the input has {rows} rows: {warmup} warmup batch(es) of {batch_size} {what}; use "
                        "more data (e.g. --split all), fewer --batches / --warmup or a smaller --batch-size")
    return warm_rows + wanted, math.ceil(wanted / batch_size)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# ------------------------------------------------------------------------------------------- one run

def benchmark_model(model: torch.nn.Module, tokenizer: Any, table: pa.Table, store: ImageStore | None = None,
                    *, scope: str = "end_to_end", precision: str = "auto", batch_size: int = 32,
                    warmup: int = 2, batches: int | None = None, max_samples: int | None = None,
                    pad_to_max: bool = False, num_workers: int = 0, device: str | None = None,
                    images: str = "first", model_label: str = "", inputs: list[str] | None = None,
                    split: str | None = None) -> BenchmarkResult:
    """Time one (scope, precision) run of `model` over the first rows of `table` (see the module doc)."""
    expand_choice(scope, SCOPES, "scope")
    if table.num_rows == 0:
        raise DataError("no rows to benchmark: the table is empty")
    n_rows, n_measured = plan_rows(table.num_rows, batch_size, warmup, batches, max_samples)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    mode = image_mode(model, images)
    workers = default_num_workers(num_workers)
    max_length = model.cfg.input.max_length
    model = model.to(dev).eval()
    loader = make_loader(model, tokenizer, table.slice(0, n_rows), store, images=mode, batch_size=batch_size,
                         num_workers=workers, pad_to_max=pad_to_max)
    counts = {"samples": 0, "with_image": 0, "tokens": 0, "padded": 0}

    def count(batch: dict[str, Any]) -> None:
        counts["samples"] += len(batch["item_id"])
        counts["with_image"] += int(batch["has_image"].sum())
        counts["tokens"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["input_ids"].numel()

    def forward(batch: dict[str, Any]) -> None:
        with autocast(dev, prec):
            forward_batch(model, batch, dev)
        synchronize(dev)

    batch_s: list[float] = []
    mem: dict[str, Any] = {}

    def start_clock() -> float:
        synchronize(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        mem["rss_before"] = current_rss_mb()
        mem["cpu_before"] = time.process_time()
        return _clock()

    load_avg = load_avg_1m()
    with torch.inference_mode():
        # scope model: every batch read, decoded, tokenised, collated and moved to the device, untimed
        source = iter([_to_device(b, dev) for b in loader]) if scope == "model" else iter(loader)
        start = t = start_clock() if warmup == 0 else 0.0  # warmup 0 times a cold first batch
        for i in range(warmup + n_measured):
            batch = next(source)
            forward(batch)
            if i < warmup:
                if i == warmup - 1:
                    start = t = start_clock()
                continue
            now = _clock()
            batch_s.append(now - t)
            t = now
            count(batch)
        seconds = t - start
        cpu_seconds = time.process_time() - mem["cpu_before"]
        del source  # DataLoader workers shut down outside the timed region
    rss_after = current_rss_mb()
    if dev.type == "cuda":
        mem["cuda_alloc"] = torch.cuda.max_memory_allocated(dev) / 2**20
        mem["cuda_reserved"] = torch.cuda.max_memory_reserved(dev) / 2**20
    before = mem.get("rss_before")
    n, tokens = counts["samples"], counts["tokens"]
    ms = [round(s * 1e3, 3) for s in batch_s]
    return BenchmarkResult(
        scope=scope, precision=prec, model=model_label, params_m=round(model.num_params() / 1e6, 3),
        device=str(dev), device_name=device_name(dev), torch_version=torch.__version__,
        threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
        load_avg_1m=load_avg, num_workers=workers, batch_size=batch_size,
        padding=(f"canonical: every text padded to max_length={max_length}" if pad_to_max else
                 f"dynamic: padded to the longest text in the batch (truncated at {max_length})"),
        max_length=max_length, images=mode, inputs=list(inputs or []), split=split,
        rows_available=table.num_rows, warmup_batches=warmup, measured_batches=len(batch_s), samples=n,
        samples_with_image=counts["with_image"], tokens=tokens, padded_tokens=counts["padded"],
        seconds=round(seconds, 6), cpu_busy=round(cpu_seconds / seconds, 3),
        ms_per_sample=round(seconds * 1e3 / n, 4),
        ms_per_token=round(seconds * 1e3 / tokens, 5) if tokens else None,
        samples_per_s=round(n / seconds, 3), tokens_per_s=round(tokens / seconds, 1),
        ms_per_batch_median=round(statistics.median(ms), 3), ms_per_batch_max=max(ms),
        peak_rss_mb=round(peak_rss_mb(), 1) if dev.type == "cpu" else None,
        rss_increase_mb=(round(rss_after - before, 1) if dev.type == "cpu" and None not in (rss_after, before)
                         else None),
        cuda_max_allocated_mb=_round(mem.get("cuda_alloc")),
        cuda_max_reserved_mb=_round(mem.get("cuda_reserved")),
        timing=SCOPE_MEANING[scope], batch_ms=ms)


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


# ------------------------------------------------------------------------------------------- the command

def is_prepared(inputs: list[str]) -> bool:
    """Whether the inputs are one `prepare-data` folder (its splits apply) rather than files of items."""
    return len(inputs) == 1 and (Path(inputs[0]) / "summary.json").is_file()


def run_benchmark(inputs: list[str], *, model_dir: str | Path | None = None,
                  recipe: str | Recipe | None = None, split: str | None = None,
                  images_dir: str | None = None, scope: str = "end_to_end",
                  precision: str = "auto", batch_size: int = 32, warmup: int = 2, batches: int | None = None,
                  max_samples: int | None = None, pad_to_max: bool = False, num_workers: int = 0,
                  device: str | None = None, images: str = "first", threads: int | None = None,
                  json_out: str | Path | None = None, log: Callable[[str], None] | None = None
                  ) -> list[BenchmarkResult]:
    """Read `inputs` (a prepared folder — its `split`, default test, "all" for every row — a LoViF input.csv
    or meta files), load the model once, and time every (scope, precision) combination asked for.
    `threads` sets torch's intra-op threads for these runs (restored afterwards)."""
    scopes = expand_choice(scope, SCOPES, "scope", both=SCOPES)
    precisions = expand_choice(precision, PRECISIONS, "precision", both=("fp32", "bf16"))
    check_run_options(batch_size, warmup, batches, max_samples)
    if (model_dir is None) == (recipe is None):  # before reading any data
        raise EffiMiniVLMError("give exactly one of --model (a saved model folder) or --recipe (random init)")
    if threads is not None and threads < 1:
        raise EffiMiniVLMError(f"--threads must be >= 1, got {threads}")
    if is_prepared(inputs):
        split = split or "test"
    elif split not in (None, "all"):
        raise DataError("--split applies to a prepared dataset folder only")
    src = read_inputs(inputs, split=None if split == "all" else split, images_dir=images_dir)
    if src.table.num_rows == 0:
        empty = f" (split {split!r} is empty)" if split else ""
        raise DataError(f"no rows to benchmark in {', '.join(inputs)}{empty} "
                        f"(skipped while reading: {src.skipped or 'none'})")
    model, tokenizer, label = load_model_or_recipe(model_dir, recipe)
    results = []
    with torch_threads(threads):
        for sc in scopes:
            for prec in precisions:
                if log is not None:
                    log(f"benchmark: scope={sc} precision={prec} batch_size={batch_size} warmup={warmup}")
                results.append(benchmark_model(
                    model, tokenizer, src.table, src.store, scope=sc, precision=prec, batch_size=batch_size,
                    warmup=warmup, batches=batches, max_samples=max_samples, pad_to_max=pad_to_max,
                    num_workers=num_workers, device=device, images=images, model_label=label,
                    inputs=list(inputs), split=split))
    if json_out is not None:
        write_json(results, json_out)
    return results


def write_json(results: list[BenchmarkResult], path: str | Path) -> Path:
    """{"runs": [...]} with every field of every run, written atomically."""
    return files.write_json({"runs": [r.to_dict() for r in results]}, path)
