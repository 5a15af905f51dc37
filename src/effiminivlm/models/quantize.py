"""Per-tower precision variants of the fast path (fp32 / bf16 / int8) and their record in a model folder.

Why: which precision is fastest depends on the CPU (bf16 wins where AMX computes it; on AVX-512 VNNI without
native bf16 OpenVINO emulates bf16 and int8 is the candidate), and whether a variant is accurate enough
depends on the model. So `effiminivlm quantize` (`evaluation.quantize`) measures both on the machine at hand
and stores the choice here: `fast.json` in the model folder (per tower its variant, plus the ISA facts it
was chosen on and the figures) and, for int8, the quantized OpenVINO graph under `fast/`. `load_model`
attaches it to the model (`fast_variants`), so predict / evaluate / serve / Ray / benchmark all use it
through `models.optimize`. On a CPU whose ISA facts differ, the stored choice is not assumed: it is set
aside with one warning (the default fast path runs) until `quantize` measures again on that CPU.

int8 is NNCF post-training quantization of the tower's fp32 OpenVINO graph (the very graph the fast path
compiles), calibrated on the user's own items; the text tower is quantized as a transformer
(`ModelType.TRANSFORMER`: softmax, layer norms and the residual adds stay in higher precision). Where the
whole-tower int8 is not accurate enough, `int8_graph_within` keeps the few ops that measure most sensitive in
fp32 (NNCF's accuracy control), so a mixed graph is still stored as the tower's int8 variant.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effiminivlm.errors import WeightsError
from effiminivlm.ovgraph import isa_facts

VARIANTS_NAME = "fast.json"
GRAPH_DIR = "fast"
TOWERS = ("image", "text")
PRECISIONS = ("fp32", "bf16", "int8")
__all__ = ["GRAPH_DIR", "PRECISIONS", "TOWERS", "VARIANTS_NAME", "TowerVariant", "int8_graph",
           "int8_graph_within", "int8_ops", "op_types", "read_variants", "save_graph", "write_variants"]


@dataclass(frozen=True)
class TowerVariant:
    """How the fast path runs one tower: `precision` (fp32 | bf16 | int8) and, for int8, its graph (the
    stored .xml path, or the OpenVINO model itself while `quantize` measures it)."""

    precision: str
    graph: Any = None

    @property
    def compile_precision(self) -> str:
        """The OpenVINO precision hint: int8 layers run int8 whatever the hint; the rest stays f32."""
        return "fp32" if self.precision == "int8" else self.precision


def _parse(folder: Path, data: Any) -> tuple[dict[str, TowerVariant], dict[str, Any]]:
    where = folder / VARIANTS_NAME
    if not isinstance(data, dict) or not isinstance(data.get("towers"), dict):
        raise WeightsError(f"{where}: not a variants file (no 'towers' object)")
    out = {}
    for tower, entry in data["towers"].items():
        prec = entry.get("precision") if isinstance(entry, dict) else None
        if tower not in TOWERS or prec not in PRECISIONS:
            raise WeightsError(f"{where}: towers.{tower} must be one of {TOWERS} with a precision in "
                               f"{PRECISIONS}, got {entry!r}")
        graph = None
        if prec == "int8":
            graph = folder / str(entry.get("graph", ""))
            if graph.suffix != ".xml" or not graph.is_file() or not graph.with_suffix(".bin").is_file():
                raise WeightsError(f"{where}: the int8 {tower} tower's graph {graph} is missing")
        out[tower] = TowerVariant(prec, graph)
    return out, data.get("isa", {})


def read_variants(folder: str | Path) -> dict[str, TowerVariant] | None:
    """The stored per-tower variants of a model folder; None without fast.json (the default fast path), or
    with one warning when it was chosen on a CPU with other ISA facts. A damaged file is a WeightsError."""
    folder = Path(folder)
    path = folder / VARIANTS_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    variants, isa = _parse(folder, data)
    here = isa_facts()
    if isa != here:
        warnings.warn(f"{path} was chosen on a CPU with other ISA facts ({isa} vs this CPU's {here}); the "
                      "default fast path runs: measure again here with `effiminivlm quantize`", stacklevel=2)
        return None
    return variants


def write_variants(folder: str | Path, choice: dict[str, str], graphs: dict[str, Path],
                   report: dict[str, Any]) -> Path:
    """Record `choice` (tower -> precision; int8 towers with their graph, relative to `folder`), this CPU's
    ISA facts and the measured `report` as the folder's fast.json."""
    from effiminivlm.files import write_json

    folder = Path(folder)
    towers = {t: {"precision": p, **({"graph": str(graphs[t].relative_to(folder))} if p == "int8" else {})}
              for t, p in choice.items()}
    return write_json({"towers": towers, "isa": isa_facts(), "report": report}, folder / VARIANTS_NAME)


def _nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise WeightsError("int8 variants need NNCF: pip install 'effiminivlm[export]' (nncf)") from None
    return nncf


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's progress bars to stderr and its INFO lines (its logger writes to the stdout it found at import)
    off: a command's stdout stays its result; `quantize` logs what it decided itself."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def int8_graph(graph: Any, calibration: Sequence[tuple[Any, ...]], *, transformer: bool) -> Any:
    """`graph` (fp32 OpenVINO model) quantized to int8 by NNCF on `calibration` (per batch, the tower's
    input arrays); which ops stay in fp32 is `int8_graph_within`'s measured choice."""
    nncf = _nncf()
    kwargs: dict[str, Any] = {"subset_size": len(calibration)}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    with _quiet():
        return nncf.quantize(graph, nncf.Dataset(list(calibration)), **kwargs)


def int8_graph_within(graph: Any, calibration: Sequence[tuple[Any, ...]],
                      validation: Sequence[tuple[tuple[Any, ...], int]],
                      metric: Callable[[Any, Iterable[Any]], tuple[float, list[float]]], max_drop: float,
                      *, transformer: bool, max_steps: int | None = None) -> Any:
    """`graph` quantized to int8 with NNCF's accuracy control: after the plain quantization, the quantized
    ops whose int8 moves `metric` most (ranked by measurement on `validation`) go back to fp32 one at a time
    until `metric` is within `max_drop` of the fp32 graph's.

    Why: one int8 layer can cost most of a tower's error (in an EfficientNet the first convolution and the
    first depthwise ones), so keeping the few that measure worst in fp32 keeps most of int8's speed where
    a whole-tower choice would have to refuse it. `validation` items are (the tower's inputs for one item,
    the item's index); `metric(compiled_model, items)` returns (the metric, higher is better; one value
    per item, for the ranking). `max_steps` caps how many ops (or groups of ops NNCF reverts together) go
    back, so a hopeless search ends early; the graph may then miss `max_drop`: check it."""
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    kwargs: dict[str, Any] = {"subset_size": len(calibration), "max_drop": max_drop}
    if max_steps is not None:
        kwargs["advanced_accuracy_restorer_parameters"] = AdvancedAccuracyRestorerParameters(
            max_num_iterations=max(1, int(max_steps)))
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    with _quiet():
        return nncf.quantize_with_accuracy_control(
            graph, nncf.Dataset(list(calibration)), nncf.Dataset(list(validation), lambda item: item[0]),
            metric, **kwargs)


_COMPUTE_OPS = frozenset({"Convolution", "GroupConvolution", "MatMul", "ScaledDotProductAttention"})
_LAYOUT_OPS = frozenset({"Pad", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert"})


def _quantized_input(source: Any) -> bool:
    node = source.get_node()
    while node.get_type_name() in _LAYOUT_OPS:  # e.g. the stem convolution's Pad after its quantizer
        node = node.input(0).get_source_output().get_node()
    return node.get_type_name() == "FakeQuantize"


def int8_ops(graph: Any) -> set[str]:
    """The names of the convolutions, matrix products and attention ops of `graph` that compute in int8:
    those with an input from a FakeQuantize (through layout-only ops). The difference between a plain int8
    graph and an accuracy-controlled one is what went back to fp32."""
    return {op.get_friendly_name() for op in graph.get_ordered_ops() if op.get_type_name() in _COMPUTE_OPS
            and any(_quantized_input(i.get_source_output()) for i in op.inputs())}


def op_types(graph: Any, names: Iterable[str]) -> list[str]:
    """`names` as "Type name" (e.g. "GroupConvolution Multiply_23147"), for a report a reader can follow."""
    by_name = {op.get_friendly_name(): op.get_type_name() for op in graph.get_ordered_ops()}
    return [f"{by_name.get(n, '?')} {n}" for n in sorted(names)]


def save_graph(graph: Any, path: Path) -> Path:
    """Write an OpenVINO graph as `path` (.xml + .bin), its weights kept as they are (no fp16 compression)."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(graph, str(path), compress_to_fp16=False)
    return path
