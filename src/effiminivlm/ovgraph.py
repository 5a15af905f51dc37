"""OpenVINO graphs compiled for this CPU and run on numpy arrays: the one place a tower graph is compiled
and called, free of torch.

Why stage 0 and torch-free: the fast path's PyTorch model wraps these graphs (`models.openvino_backend`),
and `predict` of a model whose graphs are already converted runs them without importing torch at all
(`serving.lean`), which is most of its start-up. Both compile a graph with the same settings and split a
batch over streams the same way, so a tower gives the same numbers through either door.

Also here: where converted graphs are cached (`cache_dir`) and the CPU facts a precision depends on
(`cpu_capabilities`, `native_precision`, `isa_facts`).
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from effiminivlm.runtime import cpu_flags

#: OpenVINO's inference precision hint per precision a tower is compiled for.
PRECISION_HINTS = {"bf16": "bf16", "fp16": "f16", "fp32": "f32"}
#: The /proc/cpuinfo flags a precision choice depends on (matrix units and dot-product instructions).
CPU_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_bf16", "amx_int8")


def cache_dir() -> Path:
    """Where converted graphs are kept: $EFFIMINIVLM_CACHE/openvino, else ~/.cache/effiminivlm/openvino."""
    root = os.environ.get("EFFIMINIVLM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                         Path.home() / ".cache") / "effiminivlm"
    return Path(root) / "openvino"


def core() -> Any:
    """An OpenVINO Core with its compiled-model cache in `cache_dir()/compiled`: the next process imports the
    compiled blob instead of compiling the graph again (OpenVINO keys it by graph, device and settings).
    An unwritable cache only costs the compilation."""
    import openvino as ov

    ov_core = ov.Core()
    compiled = cache_dir() / "compiled"
    try:
        compiled.mkdir(parents=True, exist_ok=True)
        ov_core.set_property({"CACHE_DIR": str(compiled)})
    except (OSError, RuntimeError):
        pass
    return ov_core


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> frozenset[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU (e.g. FP32, INT8, BF16): the ISA facts a precision
    choice depends on."""
    import openvino as ov

    return frozenset(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def native_precision(precision: str) -> str:
    """`precision`, or "fp32" when it is bf16 / fp16 and this CPU has no native kernels for it.

    Why: OpenVINO honours a bf16 hint on a CPU without AVX512_BF16 / AMX by emulating it, and that is not a
    little slower but tens of times slower (measured: a MiniLM text tower, batch 32 x 256 tokens, 2 threads,
    AVX-512 VNNI without BF16: f32 2.4 s, "bf16" 65-95 s); f32 is what such a CPU computes fastest."""
    want = {"bf16": "BF16", "fp16": "FP16"}.get(precision)
    return "fp32" if want is not None and want not in cpu_capabilities() else precision


def isa_facts() -> dict[str, list[str]]:
    """The facts of this CPU a stored precision choice was measured on: OpenVINO's optimization capabilities
    and the relevant CPU flags (empty where /proc/cpuinfo is absent)."""
    return {"openvino": sorted(cpu_capabilities()), "cpu_flags": sorted(cpu_flags().intersection(CPU_FLAGS))}


class CompiledGraph:
    """`graph` (an OpenVINO model, or the path of its .xml) compiled for the CPU in `precision` (made
    native: `native_precision`) on `threads` threads, called with numpy arrays.

    `streams` > 1 compiles for that many OpenVINO streams (the threads split between them) and runs a batch
    as that many consecutive slices at once, one per stream. Why: on a small CPU one stream per core, each
    with a slice of the batch, keeps every core busy through the many small layers (depthwise convolutions,
    the text tower's short matrices) that one stream cannot spread over two threads well; the outputs are
    the same rows in the same order. Calls are thread-safe: one set of infer requests per calling thread.
    """

    def __init__(self, graph: Any, precision: str, threads: int, streams: int = 1) -> None:
        ov_core = core()
        if isinstance(graph, str | Path):
            graph = ov_core.read_model(str(graph))
        self.precision = native_precision(precision)
        self.threads = int(threads)
        self.streams = max(1, min(int(streams), self.threads))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[self.precision],
                                  "INFERENCE_NUM_THREADS": self.threads}
        config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams} if self.streams > 1
                      else {"PERFORMANCE_HINT": "LATENCY"})
        self.compiled = ov_core.compile_model(graph, "CPU", config)
        self._local = threading.local()

    def _requests(self) -> list[Any]:
        reqs = getattr(self._local, "requests", None)
        if reqs is None:
            reqs = self._local.requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        return reqs

    def run(self, feeds: list[np.ndarray]) -> np.ndarray:
        """The graph's first output (float32, one row per input row) for `feeds` (one array per input, rows
        first), a slice of the rows per stream."""
        n = feeds[0].shape[0]
        reqs = self._requests()[:self.streams if n >= self.streams else 1]
        cuts = np.linspace(0, n, len(reqs) + 1).round().astype(int)
        for req, lo, hi in zip(reqs, cuts[:-1], cuts[1:], strict=True):
            req.start_async([np.ascontiguousarray(f[lo:hi]) for f in feeds])
        parts = []
        for req in reqs:
            req.wait()
            parts.append(np.array(req.get_output_tensor(0).data, dtype=np.float32, copy=True))
        return np.concatenate(parts)
