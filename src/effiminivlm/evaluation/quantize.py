"""`effiminivlm quantize`: the fastest accurate precision per tower, chosen by measurement on this machine.

Why measured, not assumed: on a CPU with AMX bf16 beats int8 (int8's quantize / dequantize steps cost more
than they save), on AVX-512 VNNI without native bf16 OpenVINO emulates bf16 and int8 is the candidate; and
whether int8 keeps a model's ranking depends on the model. So for each tower (the other one in fp32):

- candidates fp32, bf16 (only where the CPU computes it natively: emulated bf16 is refused unmeasured) and
  int8 (NNCF post-training quantization calibrated on a sample of the user's own items; `models.quantize`);
- speed: the tower alone on the calibration batches, ms per item, here;
- accuracy: the whole model's scores on held-out items against the fast path with fp32 towers (the same
  loading and decode, so the figures are the precision's alone; the fp32 fast path's own figures against
  the exact path are reported beside them): correlation with fp32,
  max abs difference and, when the items have ratings, the PLCC change with its 95% paired bootstrap
  interval; a variant is used only when |PLCC change| <= `max_plcc_change` and the correlation >= `min_corr`
  (a refused variant gets one line with its figures);
- the fastest accepted variant wins; the combination is checked once more (fp32 everywhere if it fails).

The choice and the figures are stored in the output model folder (`models.quantize.write_variants`), a copy
of the input folder published atomically; the input folder is never changed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effiminivlm.data.inputs import read_inputs
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.evaluation.metrics import plcc, plcc_change_interval
from effiminivlm.files import partial_dir, replace_dir
from effiminivlm.inference import fast_loading, make_loader, run_inference
from effiminivlm.models import openvino_backend
from effiminivlm.models.factory import load_model
from effiminivlm.models.optimize import lean_copy, optimize_for_inference
from effiminivlm.models.quantize import (
    GRAPH_DIR,
    PRECISIONS,
    VARIANTS_NAME,
    TowerVariant,
    int8_graph,
    int8_graph_within,
    int8_ops,
    op_types,
    save_graph,
    write_variants,
)
from effiminivlm.ovgraph import native_precision

CPU = torch.device("cpu")
FP32 = TowerVariant("fp32")


def _sample(table: Any, items: int, held_out: float, seed: int) -> tuple[Any, Any]:
    """(calibration rows, held-out rows): a seeded sample of `items` rows split by `held_out`."""
    n = min(items, table.num_rows)
    if n < 10:
        raise DataError(f"quantize needs at least 10 items to calibrate and check on, got {table.num_rows}")
    rows = np.random.default_rng(seed).permutation(table.num_rows)[:n]
    cut = max(2, min(n - 3, round(n * (1 - held_out))))
    return table.take(np.sort(rows[:cut])), table.take(np.sort(rows[cut:]))


def _compare(pred: np.ndarray, ref: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """A variant's scores against the fp32 scores of the same items (and their ratings, when known)."""
    out: dict[str, Any] = {"corr": float(np.corrcoef(pred, ref)[0, 1]) if np.std(ref) > 0 else float("nan"),
                           "max_abs_diff": float(np.abs(pred - ref).max()), "plcc_change": None,
                           "plcc_change_ci": None}
    rated = np.isfinite(target) & (target > 0)
    if rated.sum() >= 3 and np.std(target[rated]) > 0:
        out["plcc_change"] = plcc(pred[rated], target[rated]) - plcc(ref[rated], target[rated])
        out["plcc_change_ci"] = list(plcc_change_interval(pred[rated], ref[rated], target[rated]))
    return out


def _accepts(fig: dict[str, Any], max_plcc_change: float, min_corr: float) -> str | None:
    """None when the figures are within the bounds, else why not."""
    if not fig["corr"] >= min_corr:  # NaN (constant fp32 scores) refuses too
        return f"correlation with fp32 {fig['corr']:.5f} < {min_corr}"
    if fig["plcc_change"] is not None and not abs(fig["plcc_change"]) <= max_plcc_change:
        return f"|PLCC change| {abs(fig['plcc_change']):.4f} > {max_plcc_change}"
    return None


def _figures(fig: dict[str, Any]) -> str:
    """One log line's worth of a variant's figures (and why it was refused)."""
    return (f"{fig['ms_per_item']:.2f} ms/item, corr {fig['corr']:.5f}, max abs diff "
            f"{fig['max_abs_diff']:.4f}, PLCC change {fig['plcc_change']}"
            + ("" if fig["why"] is None else f": refused, {fig['why']}"))


def _tower_ms(tower: torch.nn.Module, inputs: list[tuple[np.ndarray, ...]], repeats: int = 2) -> float:
    """ms per item of `tower` alone over the calibration batches (best of `repeats`, after a warmup call)."""
    feeds = [tuple(torch.from_numpy(a) for a in batch) for batch in inputs]
    with torch.no_grad():
        tower(*feeds[0])
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for f in feeds:
                tower(*f)
            best = min(best, time.perf_counter() - start)
    return 1000.0 * best / sum(len(f[0]) for f in feeds)


Item = tuple[tuple[np.ndarray, ...], int]  # a validation item: one item's tower inputs and its index


class _ScoreCheck:
    """What the accuracy control measures a tower's int8 graph by, on the calibration items: the whole
    model's score with this tower's features from the graph under test and the other tower's in fp32,
    against the all-fp32 score. The fp32 features are computed once, for whichever towers are searched.
    The bound itself is checked afterwards on the held-out items, which this never sees."""

    def __init__(self, model: torch.nn.Module, towers: dict[str, torch.nn.Module],
                 inputs: dict[str, list[tuple[np.ndarray, ...]]], has_image: list[np.ndarray]) -> None:
        self.model, self.inputs = model, inputs
        self.present = np.concatenate(has_image)
        with torch.no_grad():
            feats = {k: torch.cat([t(*(torch.from_numpy(a) for a in batch)).float() for batch in inputs[k]])
                     for k, t in towers.items()}
            if "image" in feats:
                feats["image"][~torch.from_numpy(self.present)] = 0.0  # as `encode_image` leaves them
            self.fused = model.fuse(feats.get("image"), feats.get("text"))
            self.ref = model.score_features(self.fused).double().numpy()

    def items(self, name: str) -> list[Item]:
        """One validation item per calibration item with an input for tower `name`."""
        out, i = [], 0
        for batch in self.inputs[name]:
            for r in range(len(batch[0])):
                if name != "image" or self.present[i]:
                    out.append((tuple(a[r:r + 1] for a in batch), i))
                i += 1
        return out

    def metric(self, name: str) -> Callable[[Any, Any], tuple[float, list[float]]]:
        """(compiled graph of tower `name`, items) -> (correlation with the fp32 scores; per item, minus the
        absolute difference, for the ranking)."""
        cols = slice(0, self.model.image_dim) if name == "image" else slice(self.model.image_dim, None)

        def metric(compiled: Any, chosen: Any) -> tuple[float, list[float]]:
            chosen = list(chosen)
            idx = np.array([j for _, j in chosen])
            rows = self.fused[idx].clone()
            got = np.concatenate([np.asarray(compiled(list(x))[0]) for x, _ in chosen])
            rows[:, cols] = torch.from_numpy(got).to(rows.dtype)
            with torch.no_grad():
                pred = self.model.score_features(rows).double().numpy()
            ref = self.ref[idx]
            per = -np.abs(pred - ref)
            if len(idx) < 3 or np.std(ref) == 0:
                return float(per.mean()), per.tolist()
            return float(np.nan_to_num(np.corrcoef(pred, ref)[0, 1], nan=-1.0)), per.tolist()

        return metric


def _within_bound(name: str, graph: Any, plain: Any, plain_fig: dict[str, Any], check: _ScoreCheck,
                  max_drop: float, measure: Callable[[str, TowerVariant], dict[str, Any]],
                  log: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """A refused whole-tower int8 (`plain`) tried again from the fp32 `graph` with its most sensitive ops in
    fp32 (`int8_graph_within`, aiming at half the correlation bound on the calibration items); (its
    figures, its graph) when built, else the plain figures and graph with the reason. Either way the
    held-out check decides. At most a quarter of the int8 ops go back: past that little of int8's speed is
    left (an EfficientNet-Lite0 tower with about a third of its int8 ops back in fp32 measured 3.62
    ms/item against fp32's 4.14 and whole int8's 1.63; with 8 of its 49 int8 convolutions back, 2.58
    against 4.22 and 1.59)."""
    quantized = int8_ops(plain)
    try:
        mixed = int8_graph_within(graph, check.inputs[name], check.items(name), check.metric(name), max_drop,
                                  transformer=name == "text", max_steps=len(quantized) // 4)
    except Exception as e:  # NNCF's search failing is a refusal with its reason, never a lost quantize run
        plain_fig["within_bound"] = f"accuracy control failed: {type(e).__name__}: {e}"
        log(f"{name} tower int8 with sensitive ops in fp32: {plain_fig['within_bound']}")
        return plain_fig, plain
    kept = quantized - int8_ops(mixed)
    fig = measure(name, TowerVariant("int8", mixed))
    fig.update(kept_fp32=op_types(mixed, kept), int8_ops=len(quantized), whole_tower=plain_fig)
    log(f"{name} tower int8 with {len(kept)} of its {len(quantized)} int8 ops kept in fp32 (the most "
        f"sensitive, measured): {_figures(fig)}")
    return fig, mixed


def quantize_model(model_dir: str | Path, data: str | Path, out: str | Path, *, items: int = 300,
                   held_out: float = 0.34, batch_size: int = 32, images_dir: str | None = None,
                   precisions: tuple[str, ...] = PRECISIONS, max_plcc_change: float = 0.005,
                   min_corr: float = 0.995, seed: int = 0, split: str | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every variant of every tower, choose, and publish `model_dir` + the choice as `out`.
    `split`: one split of a prepared folder (e.g. train, so the items a model is later tested on stay out
    of the calibration); None reads every row."""
    if not openvino_backend.openvino_available():
        raise EffiMiniVLMError("quantize needs OpenVINO: pip install openvino")
    if Path(out).resolve() == Path(model_dir).resolve():
        raise EffiMiniVLMError("--out must be a new folder, not the input model folder")
    model, tok = load_model(model_dir)
    model.fast_variants = None  # type: ignore[assignment]  # measured from scratch
    if not getattr(model, "plain_towers", False):
        raise EffiMiniVLMError(f"{model_dir}: quantize needs an architecture with plain towers (effiminivlm)")
    src = read_inputs([str(data)], split=split, images_dir=images_dir)
    calib, held = _sample(src.table, items, held_out, seed)
    log(f"calibration items {calib.num_rows}, held-out items {held.num_rows}")
    lean = lean_copy(model)
    towers = {k: t for k, t in (("image", lean.image_encoder), ("text", lean.text_encoder)) if t is not None}
    inputs: dict[str, list[tuple[np.ndarray, ...]]] = {k: [] for k in towers}
    has_image: list[np.ndarray] = []
    for b in make_loader(model, tok, calib, src.store, batch_size=batch_size):
        has_image.append(b["has_image"].bool().numpy())
        if "image" in towers:
            inputs["image"].append((b["pixel_values"].float().numpy(),))
        if "text" in towers:
            inputs["text"].append((b["input_ids"].numpy(), b["attention_mask"].numpy()))
    exact = run_inference(model, make_loader(model, tok, held, src.store, batch_size=batch_size), CPU,
                          "fp32", progress=False)

    def scores(variants: dict[str, TowerVariant]) -> tuple[np.ndarray, torch.nn.Module]:
        model.fast_variants = variants  # type: ignore[assignment]
        fast = optimize_for_inference(model, CPU, "bf16")
        got = run_inference(fast, make_loader(model, tok, held, src.store, batch_size=batch_size,
                                              **fast_loading(True, 0)), CPU, "bf16", progress=False)
        return got.pred, fast

    # the reference: the fast path with both towers in fp32 (same loading, same decode), so a variant's
    # figures are its precision's alone; the exact path's are reported for the chosen combination
    ref, _ = scores({k: FP32 for k in ("image", "text")})

    def score(variants: dict[str, TowerVariant]) -> tuple[dict[str, Any], torch.nn.Module]:
        pred, fast = scores(variants)
        return _compare(pred, ref, exact.target), fast

    size = model.cfg.input.image_size if "image" in towers else None
    report: dict[str, Any] = {"items": {"calibration": calib.num_rows, "held_out": held.num_rows},
                              "bounds": {"max_plcc_change": max_plcc_change, "min_corr": min_corr},
                              "towers": {}}
    choice: dict[str, str] = {}
    graphs: dict[str, Any] = {}
    check: _ScoreCheck | None = None  # built when the first int8 tower is refused

    def measure(name: str, variant: TowerVariant) -> dict[str, Any]:
        others = {k: FP32 for k in towers if k != name}
        fig, fast = score({name: variant, **others})
        encoder = fast.image_encoder if name == "image" else fast.text_encoder
        fig["ms_per_item"] = _tower_ms(encoder, inputs[name])
        why = _accepts(fig, max_plcc_change, min_corr) if variant.precision != "fp32" else None
        fig.update(accepted=why is None, why=why)
        return fig

    for name, tower in towers.items():
        figures: dict[str, Any] = {}
        for prec in precisions:
            if prec == "bf16" and native_precision("bf16") != "bf16":
                figures[prec] = {"accepted": False, "why": "no native bf16 on this CPU (OpenVINO would "
                                 "emulate it, tens of times slower): not measured"}
                log(f"{name} tower bf16: refused, {figures[prec]['why']}")
                continue
            graph = None
            if prec == "int8":
                graph = int8_graph(openvino_backend.tower_graph(tower, name, size), inputs[name],
                                   transformer=name == "text")
            fig = measure(name, TowerVariant(prec, graph))  # an int8 graph stays in memory until published
            log(f"{name} tower {prec}: {_figures(fig)}")
            if graph is not None and not fig["accepted"] and min_corr < 1:  # (>= 1: only fp32 can pass)
                check = check or _ScoreCheck(model, towers, inputs, has_image)
                fig, graph = _within_bound(name, openvino_backend.tower_graph(tower, name, size), graph, fig,
                                           check, (1 - min_corr) / 2, measure, log)
            if graph is not None:
                graphs[name] = graph
            figures[prec] = fig
        accepted = {p: f for p, f in figures.items() if f["accepted"]}
        choice[name] = min(accepted, key=lambda p: accepted[p]["ms_per_item"]) if accepted else "fp32"
        report["towers"][name] = figures
    chosen, _ = scores({k: TowerVariant(p, graphs[k] if p == "int8" else None) for k, p in choice.items()})
    combined = _compare(chosen, ref, exact.target)
    why = _accepts(combined, max_plcc_change, min_corr)
    if why is not None:
        log(f"combined {choice}: refused, {why}; every tower stays fp32")
        choice = {k: "fp32" for k in towers}
    report.update(choice=choice, combined=combined, combined_refused=why,
                  fast_fp32_vs_exact=_compare(ref, exact.pred, exact.target))
    log(f"chosen: {choice}")
    return {"model": str(_publish(model_dir, out, choice, graphs, report)), "choice": choice,
            "report": report}


def _publish(model_dir: str | Path, out: str | Path, choice: dict[str, str], graphs: dict[str, Any],
             report: dict[str, Any]) -> Path:
    """A copy of `model_dir` (without an older choice) + the chosen int8 graphs + fast.json, published
    atomically as `out`."""
    tmp = partial_dir(out)
    shutil.copytree(model_dir, tmp, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(VARIANTS_NAME, GRAPH_DIR))
    paths = {t: save_graph(graphs[t], tmp / GRAPH_DIR / f"{t}-int8.xml") for t, p in choice.items()
             if p == "int8"}
    write_variants(tmp, choice, paths, report)
    return replace_dir(tmp, out)
