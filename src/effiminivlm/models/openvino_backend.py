"""A tower run by OpenVINO on the CPU, behind the same `nn.Module` call as the PyTorch tower it replaces.

Why: on a CPU, PyTorch eager runs EfficientNet's depthwise convolutions far below what the machine can do
(measured on the development CPU, batch 32, bf16: ~7 ms per 224 px image in PyTorch against ~1.9 ms in
OpenVINO, which fuses each convolution with its activation and picks the CPU's own kernels, AMX or AVX-512).
The fast scoring path (`models.optimize`, lever `image_backend` / `text_backend`) swaps a tower for this
wrapper; the rest of the model (fusion, head, has_image handling) stays PyTorch, so every caller keeps the
`model(batch)` surface and its checks.

The graph is converted from the in-memory fp32 tower (`openvino.convert_model`, no file, no network), with
dynamic batch (and, for text, sequence length) dimensions, and kept in a cache keyed by the weights' digest
(`cache_dir()`: the next process reads it in a fraction of a second instead of tracing again); it is
compiled once for the CPU with the precision hint of the scoring path (bf16 where the CPU has it; OpenVINO
falls back to f32 by itself where it has not) and the process's torch thread count. Calls are
thread-safe: one infer request per calling thread.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effiminivlm.models.blocks import TowerWrapper
from effiminivlm.ovgraph import CompiledGraph, cache_dir

__all__ = ["OpenVINOTower", "image_tower", "openvino_available", "text_tower", "tower_graph"]

#: Per input of a tower, the dimensions that may vary between calls.
Dynamic = tuple[tuple[int, ...], ...]


def openvino_available() -> bool:
    """True when the `openvino` package (a core dependency; a trimmed install may lack it) imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVINOTower(TowerWrapper):
    """`tower` compiled by OpenVINO (`ovgraph.CompiledGraph`): called with the tower's tensors, returns its
    float32 output.

    `example` are example inputs (their shapes fix the rank; `dynamic` lists, per input, which dimensions
    may vary). The fp32 PyTorch tower is kept as `inner` (its attributes, e.g. `num_features`, stay readable
    and `parameters()` still counts it) but never runs. `streams` > 1 runs a batch as that many slices at
    once, one per OpenVINO stream (the same rows in the same order, tested equal to one stream).

    `graph` (an OpenVINO model, or the path of its .xml) replaces the conversion of `tower`: a quantized
    variant of the same function. `precision` is what the CPU can compute natively (`native_precision`):
    the tower's `precision` says what it was compiled for. `graph_path` is the .xml the graph was read from
    or cached as (None for a graph only in memory): what a torch-free scorer compiles the same way.
    """

    def __init__(self, tower: nn.Module, example: tuple[torch.Tensor, ...], dynamic: Dynamic,
                 precision: str = "bf16", threads: int | None = None, streams: int = 1,
                 graph: Any = None) -> None:
        super().__init__(tower)
        path: Path | None = None
        if graph is None:
            graph, path = _cached_graph(tower.float().eval(), example, dynamic)
        elif isinstance(graph, str | Path):  # a stored graph (an int8 variant of `models.quantize`)
            path = Path(graph)
        self.graph_path = path
        self.graph = CompiledGraph(graph, precision, int(threads or torch.get_num_threads()), streams)
        self.compiled = self.graph.compiled
        self.precision = self.graph.precision
        self.threads = self.graph.threads
        self.streams = self.graph.streams

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = [t.detach().float().numpy() if t.is_floating_point() else t.detach().numpy() for t in inputs]
        return torch.from_numpy(self.graph.run(feeds))

    def __deepcopy__(self, memo: dict[int, Any]) -> OpenVINOTower:
        return self  # a compiled graph is immutable; copies of a fast model share it

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("an OpenVINO-compiled tower cannot be pickled: build the fast model in each process "
                        "(models.optimize.optimize_for_inference)")


def _graph_key(tower: nn.Module, example: tuple[torch.Tensor, ...], dynamic: Dynamic) -> str:
    """A digest of everything the converted graph depends on: the tower's class, weights and buffers, the
    input signature and the OpenVINO version."""
    import openvino as ov

    digest = hashlib.sha256(f"{type(tower).__qualname__}|{ov.__version__}|{torch.__version__}".encode())
    for ex, dims in zip(example, dynamic, strict=True):
        digest.update(f"{tuple(ex.shape)}:{ex.dtype}:{dims}".encode())
    for name, t in tower.state_dict().items():
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _cached_graph(tower: nn.Module, example: tuple[torch.Tensor, ...], dynamic: Dynamic
                  ) -> tuple[Any, Path | None]:
    """(the tower's OpenVINO graph with its dynamic dimensions, its .xml in the cache): read from the cache
    when converted before (tracing takes seconds, reading ~0.1 s), else converted and written there (best
    effort: an unwritable cache only costs the next run the conversion again; the path is then None)."""
    import openvino as ov

    key = _graph_key(tower, example, dynamic)
    path = cache_dir() / key / "model.xml"
    if path.is_file():
        try:
            return ov.Core().read_model(str(path)), path
        except RuntimeError:  # a damaged entry: convert again and replace it
            shutil.rmtree(path.parent, ignore_errors=True)
    with warnings.catch_warnings(), torch.no_grad():  # tracing warnings of transformers' mask code
        warnings.simplefilter("ignore")
        graph = ov.convert_model(tower, example_input=example)
    shapes = {}
    for port, ex, dims in zip(graph.inputs, example, dynamic, strict=True):
        shapes[port] = ov.PartialShape([-1 if d in dims else int(s) for d, s in enumerate(ex.shape)])
    graph.reshape(shapes)
    try:
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=path.parent.parent))
        ov.save_model(graph, str(tmp / "model.xml"), compress_to_fp16=False)
        try:
            tmp.rename(path.parent)  # atomic: a reader sees the whole entry or none
        except OSError:  # another process published the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        return graph, None
    return graph, path


def _signature(kind: str, image_size: int | None) -> tuple[tuple[torch.Tensor, ...], Dynamic]:
    """Example inputs and dynamic dimensions of an image tower (pixels [B,3,S,S], dynamic batch) or a text
    tower ((input_ids, attention_mask) [B,L], dynamic batch and length)."""
    if kind == "image":
        return (torch.zeros(2, 3, int(image_size or 0), int(image_size or 0)),), ((0,),)
    ids = torch.tensor([[1, 5, 6, 7, 8, 2], [1, 5, 2, 0, 0, 0]], dtype=torch.long)  # valid in any vocabulary
    return (ids, (ids != 0).long()), ((0, 1), (0, 1))


def tower_graph(tower: nn.Module, kind: str, image_size: int | None = None) -> Any:
    """The fp32 OpenVINO graph of an image or text tower, exactly as the towers below compile it (the graph
    `models.quantize` calibrates)."""
    example, dynamic = _signature(kind, image_size)
    return _cached_graph(tower.float().eval(), example, dynamic)[0]


def image_tower(tower: nn.Module, image_size: int, precision: str, threads: int | None = None,
                streams: int = 1, graph: Any = None) -> OpenVINOTower:
    """An image tower (pixels [B,3,S,S] -> features [B,D]) compiled with a dynamic batch."""
    return OpenVINOTower(tower, *_signature("image", image_size), precision, threads, streams, graph)


def text_tower(tower: nn.Module, precision: str, threads: int | None = None, streams: int = 1,
               graph: Any = None) -> OpenVINOTower:
    """A text tower ((input_ids, attention_mask) [B,L] -> features [B,D]) with dynamic batch and length."""
    return OpenVINOTower(tower, *_signature("text", None), precision, threads, streams, graph)


def head_graph(head: nn.Module, in_dim: int, threads: int | None = None) -> OpenVINOTower:
    """A regression head (fused features [B, in_dim] -> [B, 1]) compiled in f32 with a dynamic batch, one
    stream. Why in OpenVINO, though it is a tiny part of the work: the torch-free scorer (`serving.lean`)
    runs this very graph, so a score is the same bits whether `predict` imported torch or not."""
    return OpenVINOTower(head, (torch.zeros(2, in_dim),), ((0,),), "fp32", threads, 1)
