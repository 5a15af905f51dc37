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
(`ModelType.TRANSFORMER`: softmax, layer norms and the residual adds stay in higher precision).
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Sequence
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
           "read_variants", "save_graph", "write_variants"]


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


def int8_graph(graph: Any, calibration: Sequence[tuple[Any, ...]], *, transformer: bool,
               ignored: Sequence[str] = ()) -> Any:
    """`graph` (fp32 OpenVINO model) quantized to int8 by NNCF on `calibration` (per batch, the tower's
    input arrays); `ignored` names ops kept in fp32 (measured choices: e.g. the first convolution)."""
    try:
        import nncf
    except ImportError:
        raise WeightsError("int8 variants need NNCF: pip install 'effiminivlm[export]' (nncf)") from None
    kwargs: dict[str, Any] = {"subset_size": len(calibration)}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored), validate=False)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):  # its progress bars: not output
        warnings.simplefilter("ignore")
        return nncf.quantize(graph, nncf.Dataset(list(calibration)), **kwargs)


def save_graph(graph: Any, path: Path) -> Path:
    """Write an OpenVINO graph as `path` (.xml + .bin), its weights kept as they are (no fp16 compression)."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(graph, str(path), compress_to_fp16=False)
    return path
