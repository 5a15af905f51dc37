"""The Table 3 runtime report of the EffiMiniVLM paper, complete, from one run (`benchmark --baseline
reference`): FLOPs (G), active params, the techniques each row uses, the fp32 "no acceleration" row, the
reference pipeline, the fast path (+ each lever on/off with `ablation`), the fast path's parity with fp32,
and model-only achieved GFLOP/s next to this machine's measured bf16 and fp32 matrix-multiply peak.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from effiminivlm import files
from effiminivlm.bench.fastpath import (
    FAST,
    FP32_EXACT,
    PathConfig,
    ablations,
    parity,
    run_path,
    run_reference,
)
from effiminivlm.bench.peak import matmul_peak_gflops, op_breakdown, peak_for, tower_rates
from effiminivlm.bench.throughput import device_name, is_prepared, load_avg_1m
from effiminivlm.bench.variants import variant_models
from effiminivlm.config import Recipe
from effiminivlm.data.dataset import ProductDataset, mean_token_length
from effiminivlm.data.images import ImageStore
from effiminivlm.data.inputs import read_inputs
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.inference import make_loader
from effiminivlm.models.factory import load_model_or_recipe
from effiminivlm.models.optimize import optimize_for_inference
from effiminivlm.protocol.profile import profile_model
from effiminivlm.runtime import cpu_has_native_bf16, resolve_device

BASELINES = ("reference",)


def run_table3(inputs: list[str], *, model_dir: str | Path | None = None, recipe: str | Recipe | None = None,
               split: str | None = None, images_dir: str | None = None, batch_size: int = 32,
               warmup: int = 5, max_samples: int | None = None, ablation: bool = False,
               compile_lever: bool = False, fast: PathConfig = FAST, model_batches: int = 6,
               device: str | None = None, json_out: str | Path | None = None,
               markdown_out: str | Path | None = None, log: Callable[[str], None] | None = None
               ) -> dict[str, Any]:
    """Run every path on the same items (the `warmup` batches first, untimed) and return the report."""
    say = log or (lambda _msg: None)
    if batch_size < 1 or warmup < 0 or (max_samples is not None and max_samples < 1):
        raise EffiMiniVLMError("--batch-size and --max-samples must be >= 1 and --warmup >= 0")
    split = (split or "test") if is_prepared(inputs) else split
    src = read_inputs(inputs, split=None if split == "all" else split, images_dir=images_dir)
    warm_rows = warmup * batch_size
    wanted = max_samples if max_samples is not None else src.table.num_rows - warm_rows
    if wanted < 1 or warm_rows + wanted > src.table.num_rows:
        raise DataError(f"{', '.join(inputs)}: {src.table.num_rows} rows do not hold {warmup} warmup "
                        f"batch(es) of {batch_size} plus {max(wanted, 1)} measured rows")
    table = src.table.slice(0, warm_rows + wanted)
    model, tokenizer, label = load_model_or_recipe(model_dir, recipe)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    load_before = load_avg_1m()

    say("measuring the matrix-multiply peak (bf16, fp32)")
    peak = {"bf16_gflops": round(matmul_peak_gflops(torch.bfloat16), 1),
            "fp32_gflops": round(matmul_peak_gflops(torch.float32), 1),
            "bf16_native": cpu_has_native_bf16()} if dev.type == "cpu" else {}
    say(f"reference pipeline on {wanted} items")
    runs = [run_reference(model, tokenizer, table, src.store, batch_size, warm_rows)]
    say(f"  {runs[0].samples_per_s:.2f} samples/s")
    for cfg in (FP32_EXACT, fast, *(ablations(fast, compile_lever) if ablation else [])):
        say(f"{cfg.name} on {wanted} items")
        runs.append(run_path(model, tokenizer, table, src.store, cfg, batch_size, warm_rows, dev))
        rate = runs[-1].samples_per_s
        say(f"  {rate:.2f} samples/s ({rate / runs[0].samples_per_s:.2f}x the reference)")
    for name, twin in variant_models(model) if dev.type == "cpu" else []:  # bench.variants
        say(f"{name} on {wanted} items")
        runs.append(run_path(twin, tokenizer, table, src.store, dataclasses.replace(fast, name=name),
                             batch_size, warm_rows, dev))
        say(f"  {runs[-1].samples_per_s:.2f} samples/s")
    ref = runs[0].samples_per_s
    for r in runs:
        r.speedup_vs_reference = round(r.samples_per_s / ref, 2)
    target = _targets(table.slice(warm_rows))
    by_name = {r.name: r for r in runs}
    checks = {"fast_vs_fp32": parity(by_name[fast.name].pred, by_name[FP32_EXACT.name].pred, target)}
    for r in runs[3:]:
        checks[f"{r.name} vs fp32"] = parity(r.pred, by_name[FP32_EXACT.name].pred, target)

    say("model-only rates (pre-collated, length-sorted batches)")
    rates, breakdown = _model_only(model, tokenizer, table, src.store, fast, batch_size, model_batches, dev)
    texts = ProductDataset(table, None, images="none")
    mean_tokens, _ = mean_token_length(texts, tokenizer, model.cfg.input.max_length)
    prof = profile_model(model, mean_tokens=mean_tokens if model.text_encoder is not None else None)
    report = {
        "model": label, "inputs": list(inputs), "split": split, "items": wanted, "batch_size": batch_size,
        "warmup_batches": warmup, "device": str(dev), "device_name": device_name(dev),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_avg_1m_before": load_before, "load_avg_1m_after": load_avg_1m(),
        "params_m": round(prof.params_m, 3), "active_params_m": round(prof.params_m, 3),
        "flops_g_canonical": round(prof.flops_g, 3),
        "flops_g_mean_length": (None if prof.flops_g_mean_length is None
                                else round(prof.flops_g_mean_length, 3)),
        "mean_tokens": round(mean_tokens, 1), "matmul_peak": peak,
        "runs": [r.to_dict() for r in runs], "parity": checks,
        "model_only": [t.to_dict() for t in rates], "text_tower_breakdown": breakdown,
        "fast_speedup_vs_reference": by_name[fast.name].speedup_vs_reference,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = next((t for t in rates if t.part == "text_encoder"), None)  # the fast path's text tower
    ref, ref_name = peak_for(text.precision, peak) if text is not None else (None, "")
    if text is not None and peak:  # against the peak of the precision it really ran in
        share = None if ref is None else round(text.gflop_per_s / ref, 3)
        report["text_tower_share_of_peak"] = {"share": share, "peak": ref_name}
    if json_out is not None:
        files.write_json(report, json_out)
    if markdown_out is not None:
        files.atomic_write_text(markdown_out, render_markdown(report))
    return report


def _targets(table: pa.Table) -> np.ndarray:
    if "average_rating" not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.array([np.nan if v is None else float(v) for v in table.column("average_rating").to_pylist()])


def _model_only(model: torch.nn.Module, tokenizer: Any, table: pa.Table, store: ImageStore | None,
                fast: PathConfig, batch_size: int, n_batches: int, dev: torch.device
                ) -> tuple[list[Any], dict[str, float] | None]:
    """Model-only rates of the fast path's model (bf16) and of the fp32 model, on the same `n_batches`
    collated batches (length-sorted, like the fast path's, taken evenly across the length range), and where
    the fast text tower's time goes on the longest batch (`peak.op_breakdown`; None for a tower that is not
    PyTorch's to profile)."""
    loader = make_loader(model, tokenizer, table, store, batch_size=batch_size, sort_by_length=True,
                         draft=True)
    batches = list(loader)
    step = max(1, len(batches) // max(n_batches, 1))
    batches = batches[::step][:n_batches]  # each runs once untimed, then timed (peak.tower_rates)
    runner = optimize_for_inference(model, dev, fast.precision, fast.levers)
    counted = _counted_twin(model, runner)
    rates = [*tower_rates(counted, runner, batches, dev, fast.precision,
                          towers=getattr(runner, "tower_precisions", None)),
             *tower_rates(model, model, batches, dev, "fp32")]
    breakdown = None
    if getattr(model, "text_encoder", None) is not None and dev.type == "cpu":  # profiled in PyTorch
        eager = optimize_for_inference(model, dev, fast.precision,  # no image tower conversion to build
                                       dataclasses.replace(fast.levers, text_backend="torch",
                                                           image_backend="torch"))
        text = eager.text_encoder
        longest = max(batches, key=lambda b: b["input_ids"].numel())
        inputs = (longest["input_ids"], longest["attention_mask"])
        breakdown = op_breakdown(_counted_twin(model, eager).text_encoder, text, inputs, dev, fast.precision)
        breakdown["precision"] = getattr(eager, "tower_precisions", {}).get("text", fast.precision)
    return rates, breakdown


def _counted_twin(model: torch.nn.Module, runner: torch.nn.Module) -> torch.nn.Module:
    """The fp32 model doing the work `runner` does, for counting its FLOPs: with the `cls_only` lever the
    fast text tower skips most of its last layer, and a rate counted on the full tower would credit it with
    FLOPs it never ran."""
    if "cls_only" not in getattr(runner, "fast_levers", []):
        return model
    twin = copy.copy(model)  # shallow: shares the towers' weights; only the text tower slot differs
    twin._modules = dict(model._modules)
    twin._modules["text_encoder"] = model.text_encoder.cls_only()  # type: ignore[union-attr,operator]
    return twin


def _bf16_note(peak: dict[str, Any]) -> str:
    """" (emulated: no native bf16 on this CPU)" where the peak was measured without native bf16."""
    return " (emulated: no native bf16 on this CPU)" if peak.get("bf16_native") is False else ""


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the setup, the Table 3 rows, parity and the model-only rates."""
    peak = report.get("matmul_peak") or {}
    lines = [
        f"# EffiMiniVLM runtime (Table 3): {report['model']}", "",
        f"{report['device_name']}, torch {report['torch_version']}, {report['threads']} threads; load avg "
        f"{report['load_avg_1m_before']} before / {report['load_avg_1m_after']} after; measured "
        f"{report['measured_at']}.",
        f"{report['items']} items of {', '.join(report['inputs'])}, batch {report['batch_size']}, "
        f"{report['warmup_batches']} warmup batch(es) excluded; mean {report['mean_tokens']} real tokens.",
        f"Active params {report['active_params_m']} M; FLOPs {report['flops_g_canonical']} G canonical, "
        f"{report['flops_g_mean_length']} G at the mean length.", "",
        "| path | techniques | samples/s | ms/sample | x reference | CPU busy |",
        "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in report["runs"]:
        lines.append(f"| {r['name']} | {', '.join(r['techniques']) or 'none'} | {r['samples_per_s']:.1f} | "
                     f"{r['ms_per_sample']:.2f} | {r['speedup_vs_reference']:.2f} | {r['cpu_busy']:.2f} |")
    lines += ["", "| parity (vs fp32 exact) | items | PLCC fp32 | PLCC | change | change, 95% bootstrap "
              "| max abs diff | mean abs diff | corr with fp32 |", "| --- |" + " ---: |" * 8]
    for name, p in report["parity"].items():
        lo, hi = p.get("plcc_change_ci95") or (float("nan"), float("nan"))
        lines.append(f"| {name} | {p['items']} | {p['plcc_fp32']:.4f} | {p['plcc_fast']:.4f} | "
                     f"{p['plcc_change']:+.5f} | {lo:+.4f} to {hi:+.4f} | {p['max_abs_diff']:.5f} | "
                     f"{p['mean_abs_diff']:.5f} | {p.get('corr_fast_fp32', float('nan')):.5f} |")
    sd = report["parity"].get("fast_vs_fp32", {}).get("pred_sd_fp32")
    if sd is not None:
        lines.append(f"\nThe fp32 predictions' sd over these items: {sd:.4f} (differences read against it). "
                     "The bootstrap interval is how far other items of the same kind would move the PLCC "
                     "change: a change inside a wide interval is noise, not a measured loss or gain.")
    lines += ["", f"Model only (pre-collated batches, steady state: each batch's shape run once untimed "
              f"first). Measured matmul peak: bf16 {peak.get('bf16_gflops')} "
              f"GFLOP/s{_bf16_note(peak)}, fp32 {peak.get('fp32_gflops')} GFLOP/s; no int8 peak measured. "
              "Each rate is read against the peak of the precision its part really ran in. GFLOP: what "
              "each model computes on the padded shapes (a `cls_only` text tower skips most of its last "
              "layer: counted without it).",
              "",
              "| part | precision | samples | GFLOP | GFLOP/s | ms/sample | share of peak |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for t in report["model_only"]:
        ref, ref_name = peak_for(t["precision"], peak)
        share = f"{t['gflop_per_s'] / ref:.0%} of the {ref_name}" if ref else ref_name
        lines.append(f"| {t['part']} | {t['precision']} | {t['samples']} | {t['gflop']:.1f} | "
                     f"{t['gflop_per_s']:.1f} | {t['ms_per_sample']:.2f} | {share} |")
    bd = report.get("text_tower_breakdown")
    if bd:
        bd_peak, bd_name = peak_for(bd.get("precision", "bf16"), peak)
        mm_share = f" ({bd['matmul_gflop_per_s'] / bd_peak:.0%} of the {bd_name})" if bd_peak else ""
        lines += ["", "Where the text tower's time goes in PyTorch (the fast path's levers, its longest "
                  f"batch, in {bd.get('precision', 'bf16')}, torch.profiler): matmuls "
                  f"{bd['matmul_time_share']:.0%} of the time at {bd['matmul_gflop_per_s']} GFLOP/s"
                  f"{mm_share}; attention {bd['attention_time_share']:.0%} at {bd['attention_gflop_per_s']} "
                  "GFLOP/s; the rest (bias copies, GELU, LayerNorm, residual adds, layout copies: "
                  f"memory-bound, no FLOPs counted) {bd['other_time_share']:.0%}."]
        if bd.get("ceiling_gflop_per_s"):
            ceiling = bd["ceiling_gflop_per_s"]
            ceil_share = f" = {ceiling / bd_peak:.0%} of the {bd_name}" if bd_peak else ""
            mm_ms, att_ms = bd["alone_matmul_ms"], bd["alone_attention_ms"]
            lines += ["", "Ceiling of the text tower on this machine (same batch): its matrix products take "
                      f"{mm_ms:.1f} ms and its attention {att_ms:.1f} ms when each runs alone "
                      "(PyTorch kernels, best of 5); a tower doing nothing else would reach "
                      f"{ceiling} GFLOP/s{ceil_share}: the most it can reach with kernels as fast as "
                      "these, even with LayerNorm, GELU and residual adds fused away."]
    return "\n".join(lines) + "\n"
