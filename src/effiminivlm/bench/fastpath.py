"""`effiminivlm benchmark --baseline reference`: the fast scoring path against the reference pipeline.

Why one run: a speed-up is a ratio of two timings, and on a shared CPU two timings taken minutes apart in
different processes measure the neighbours as much as the code. Every path here scores the same items in
the same process, one after the other, each after the same warmup rows:

- **reference**: what the reference implementation does: fp32 weights, eager, per-image PIL open + RGB +
  Resize(S, S) + ToTensor + Normalize in the main process, the tokenizer padding to the longest text of the
  batch and truncating at 256 (or the model's max_length when shorter), batches in input order.
- **fp32, no acceleration**: this package's exact path (`--precision fp32`): fp32, full JPEG decode,
  input-order batches, loading in the main process.
- **fast**: the default path below fp32 (`inference.make_loader(sort_by_length, draft, raw_pixels,
  fetch_threads)` + `models.optimize.optimize_for_inference`): loading in the main process with a batch's
  images decoded on every core, then the forward on every core.
- **ablation** (optional): the fast path with one lever flipped at a time, so each lever shows what it pays.

Parity: the fast path's predictions against the fp32 path's on the same items (PLCC against the targets
for both, the change, max / mean absolute difference).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torchvision import transforms as T

from effiminivlm.data.dataset import ProductDataset
from effiminivlm.data.images import ImageStore
from effiminivlm.evaluation.metrics import plcc, plcc_change_interval
from effiminivlm.inference import make_loader, run_inference
from effiminivlm.models.optimize import ModelLevers, optimize_for_inference
from effiminivlm.runtime import fetch_threads, scoring_threads, torch_threads, usable_cores

REFERENCE_MAX_LENGTH = 256
CPU = torch.device("cpu")


@dataclass(frozen=True)
class PathConfig:
    """One way of scoring: precision, model levers and loading levers."""

    name: str
    precision: str = "bf16"
    levers: ModelLevers = ModelLevers()
    sort_by_length: bool = True
    draft: bool = True
    raw_pixels: bool = True
    num_workers: int = 0
    threads: int | None = None
    fetch_threads: int | None = None  # decode threads in the main process; None: runtime.fetch_threads

    def decode_threads(self) -> int:
        """Threads that decode a batch's images: 1 on the exact path, else `fetch_threads` or the default of
        `runtime.fetch_threads` (every core when loading in the main process)."""
        if self.precision == "fp32":
            return 1
        return self.fetch_threads if self.fetch_threads is not None else fetch_threads(self.num_workers)

    def techniques(self, used: list[str] | None = None, threads: int | None = None,
                   towers: dict[str, str] | None = None) -> list[str]:
        """The acceleration techniques this path uses, as the report lists them; `used`: the model levers
        that really ran (`fast_levers` of the optimised model: a backend may have fallen back); `threads`:
        the model's thread count when the path sets one (default: the cores the loader workers leave);
        `towers`: the precision each tower really computed in (`tower_precisions` of the optimised model),
        named instead of the path's autocast precision, which a CPU without native bf16 never runs."""
        out = [] if self.precision == "fp32" else (
            [precision_label(towers)] if towers else [f"{self.precision} autocast"])
        fetch = self.decode_threads()
        if self.precision != "fp32":
            out += [lever for lever in (self.levers.used() if used is None else used)
                    if lever != "bf16_weights" or self.precision == "bf16"]
        fast = self.precision != "fp32"
        out += ["length-sorted batches" if self.sort_by_length and fast else None,
                "JPEG draft decode" if self.draft and fast else None,
                "uint8 pixels, batched normalise" if self.raw_pixels and fast else None,
                f"{self.num_workers} loader worker(s)" if self.num_workers else None,
                f"{fetch} decode thread(s)" if fetch > 1 else None,
                f"model on {threads or self.threads} thread(s)" if (threads or self.threads) else None]
        return [t for t in out if t]


def precision_label(towers: dict[str, str]) -> str:
    """What the towers computed in, e.g. "image tower fp32, text tower int8"."""
    return ", ".join(f"{name} tower {prec}" for name, prec in towers.items())


FP32_EXACT = PathConfig("fp32, no acceleration", precision="fp32",
                        levers=ModelLevers(False, False, image_backend="torch"), sort_by_length=False,
                        draft=False, raw_pixels=False, num_workers=0)
FAST = PathConfig("fast")


def ablations(fast: PathConfig = FAST, compile_lever: bool = False) -> list[PathConfig]:
    """The fast path with one lever flipped at a time (int8 and compile switched on instead of off)."""
    lv = fast.levers
    flip = dataclasses.replace
    out = []
    if lv.image_backend == "openvino":
        out.append(flip(fast, name="image tower in PyTorch (not OpenVINO)",
                        levers=flip(lv, image_backend="torch")))
        out.append(flip(fast, name=f"OpenVINO image tower in {'bf16' if lv.image_fp32 else 'f32'}",
                        levers=flip(lv, image_fp32=not lv.image_fp32)))
    else:
        out.append(flip(fast, name="+ image tower in OpenVINO", levers=flip(lv, image_backend="openvino")))
        out.append(flip(fast, name="no channels-last", levers=flip(lv, channels_last=False)))
    if lv.text_backend == "openvino":
        out.append(flip(fast, name="text tower in PyTorch (not OpenVINO)",
                        levers=flip(lv, text_backend="torch")))
        out.append(flip(fast, name="text tower in PyTorch + int8 dynamic linears",
                        levers=flip(lv, text_backend="torch", int8_linear=True)))
    else:
        out.append(flip(fast, name="+ text tower in OpenVINO", levers=flip(lv, text_backend="openvino")))
        out.append(flip(fast, name="+ int8 dynamic linears (text)", levers=flip(lv, int8_linear=True)))
    if "openvino" in (lv.image_backend, lv.text_backend):
        out.append(flip(fast, name="OpenVINO on 1 stream" if lv.ov_streams > 1 else "+ 2 OpenVINO streams",
                        levers=flip(lv, ov_streams=1 if lv.ov_streams > 1 else 2)))
    out += [flip(fast, name="cls_only off" if lv.cls_only else "+ cls_only",
                 levers=flip(lv, cls_only=not lv.cls_only)),
            *([flip(fast, name="bf16 autocast only (fp32 weights)", levers=flip(lv, bf16_weights=False))]
              if "torch" in (lv.image_backend, lv.text_backend) else []),
            flip(fast, name="float pixels from the loader", raw_pixels=False),
            flip(fast, name="no length sorting", sort_by_length=False),
            flip(fast, name="no draft decode", draft=False),
            *[flip(fast, name=f"{n} loader worker(s)", num_workers=n)
              for n in (0, 1, 2) if n != fast.num_workers],
            *([flip(fast, name="decode on 1 thread", fetch_threads=1)]
              if fast.num_workers == 0 and fetch_threads(0) > 1 and fast.fetch_threads != 1 else []),
            *[flip(fast, name=f"model on {n} thread(s)", threads=n)
              for n in (1, usable_cores()) if n != (fast.threads or scoring_threads(fast.num_workers, CPU))]]
    if compile_lever:
        out.append(flip(fast, name="text tower in PyTorch + torch.compile",
                        levers=flip(lv, text_backend="torch", compile=True)))
    return out


@dataclass
class PathRun:
    """One timed path over the measured items."""

    name: str
    techniques: list[str]
    precision: str
    samples: int
    seconds: float
    samples_per_s: float
    ms_per_sample: float
    cpu_busy: float
    threads: int
    speedup_vs_reference: float | None = None
    towers: dict[str, str] | None = None  # the precision each tower computed in (None: the path's own)
    pred: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("pred")
        return d


def _timed(name: str, techniques: list[str], precision: str, fn: Any,
           towers: dict[str, str] | None = None) -> PathRun:
    t0, c0 = time.perf_counter(), time.process_time()
    pred = fn()
    seconds = time.perf_counter() - t0
    n = len(pred)
    return PathRun(name, techniques, precision, n, round(seconds, 4), round(n / seconds, 2),
                   round(seconds * 1e3 / n, 3), round((time.process_time() - c0) / seconds, 2),
                   torch.get_num_threads(), towers=towers, pred=np.asarray(pred, dtype=np.float64))


# ------------------------------------------------------------------------------------------- reference

def reference_transform(model: torch.nn.Module) -> T.Compose:
    """The reference code's preprocessing: Resize((S, S)) (torchvision default, bilinear) + ToTensor +
    Normalize with the image weights' mean / std."""
    cfg = model.cfg.input  # type: ignore[attr-defined]  (resolved by the model)
    return T.Compose([T.Resize((cfg.image_size, cfg.image_size)), T.ToTensor(),
                      T.Normalize(list(cfg.mean), list(cfg.std))])


def reference_scores(model: torch.nn.Module, tokenizer: Any, table: pa.Table, store: ImageStore | None,
                     batch_size: int = 32) -> np.ndarray:
    """Scores of the reference pipeline (module doc), in input order; `model` is run as given (fp32)."""
    texts = ProductDataset(table, None, images="none")
    refs = table.column("images").to_pylist()
    store = store if store is not None else ImageStore(None)
    uses_images = getattr(model, "image_encoder", None) is not None
    tf = reference_transform(model) if uses_images else None
    size = model.cfg.input.image_size  # type: ignore[attr-defined]
    max_length = min(REFERENCE_MAX_LENGTH, model.cfg.input.max_length)  # type: ignore[attr-defined]
    dev = next(model.parameters()).device
    preds = []
    with torch.no_grad():
        for start in range(0, table.num_rows, batch_size):
            rows = range(start, min(table.num_rows, start + batch_size))
            pixels, has = [], []
            for i in rows:
                path = next((p for p in map(store.resolve, refs[i] or []) if p is not None), None)
                if tf is not None and path is not None:
                    with Image.open(path) as img:
                        pixels.append(tf(img.convert("RGB")))
                    has.append(True)
                else:
                    pixels.append(torch.zeros(3, size, size))
                    has.append(False)
            enc = tokenizer([texts.text(i) for i in rows], padding="longest", truncation=True,
                            max_length=max_length, return_tensors="pt")
            out = model(torch.stack(pixels).to(dev) if uses_images else None, enc["input_ids"].to(dev),
                        enc["attention_mask"].to(dev), torch.tensor(has, device=dev))
            preds.append(out.float().cpu().numpy())  # the copy back also waits for a CUDA device
    return np.concatenate(preds) if preds else np.zeros(0)


def run_reference(model: torch.nn.Module, tokenizer: Any, table: pa.Table, store: ImageStore | None,
                  batch_size: int, warm_rows: int) -> PathRun:
    """Time the reference pipeline over the rows after `warm_rows` (those run first, untimed)."""
    model = model.float().eval()
    if warm_rows:
        reference_scores(model, tokenizer, table.slice(0, warm_rows), store, batch_size)
    return _timed("reference pipeline", ["none (fp32, eager, PIL in the main process)"], "fp32",
                  lambda: reference_scores(model, tokenizer, table.slice(warm_rows), store, batch_size))


# ------------------------------------------------------------------------------------------- our paths

def run_path(model: torch.nn.Module, tokenizer: Any, table: pa.Table, store: ImageStore | None,
             cfg: PathConfig, batch_size: int, warm_rows: int, device: torch.device) -> PathRun:
    """Time one `PathConfig` over the rows after `warm_rows`: loader construction, worker start, decode,
    tokenisation and forward are all inside the clock; building the optimised model copy is not (a
    service does it once)."""
    fast = cfg.precision != "fp32"
    threads = cfg.threads if cfg.threads is not None else (
        scoring_threads(cfg.num_workers, device) if fast else None)

    def score(runner: torch.nn.Module, part: pa.Table) -> np.ndarray:
        loader = make_loader(model, tokenizer, part, store, batch_size=batch_size,
                             num_workers=cfg.num_workers,
                             sort_by_length=cfg.sort_by_length and fast, draft=cfg.draft and fast,
                             raw_pixels=cfg.raw_pixels and fast, fetch_threads=cfg.decode_threads())
        return run_inference(runner, loader, device, cfg.precision, progress=False).pred

    with torch_threads(threads):  # before building too: an OpenVINO tower keeps the count it is built with
        runner = optimize_for_inference(model, device, cfg.precision, cfg.levers)
        if warm_rows:
            score(runner, table.slice(0, warm_rows))
        towers = getattr(runner, "tower_precisions", None)
        return _timed(cfg.name, cfg.techniques(getattr(runner, "fast_levers", None), threads, towers),
                      cfg.precision, lambda: score(runner, table.slice(warm_rows)), towers)


def parity(fast: np.ndarray, exact: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """Fast vs exact predictions on the same items: PLCC of each against the targets, the change with its
    95% paired-bootstrap interval (how much other items would move it), and the largest / mean absolute
    difference of the predictions."""
    ok = np.isfinite(target)
    p_fast = plcc(fast[ok], target[ok]) if ok.sum() > 2 else float("nan")
    p_exact = plcc(exact[ok], target[ok]) if ok.sum() > 2 else float("nan")
    lo, hi = plcc_change_interval(fast[ok], exact[ok], target[ok])  # NaN for < 3 items, as the PLCCs
    diff = np.abs(fast - exact)
    return {"items": int(len(fast)), "items_with_target": int(ok.sum()), "plcc_fast": round(p_fast, 6),
            "plcc_fp32": round(p_exact, 6), "plcc_change": round(p_fast - p_exact, 6),
            "plcc_change_ci95": [round(lo, 6), round(hi, 6)],
            "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
            "mean_abs_diff": float(diff.mean()) if len(diff) else 0.0,
            "pred_sd_fp32": float(np.std(exact)) if len(exact) else 0.0,
            "corr_fast_fp32": round(plcc(fast, exact), 6) if len(fast) > 2 else float("nan")}
