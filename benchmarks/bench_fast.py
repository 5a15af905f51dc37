"""Fast CPU scoring vs the reference pipeline, every figure of the fast path in one run (the Table 3 report).

Writes realistic inputs (real development texts + generated JPEGs at Amazon hi_res size, 1000-1500 px),
builds the offline recipe with its pretrained towers and a head fitted by ridge regression on the warmup
items' features (the measured items stay out of the fit; `--model DIR` measures a trained model instead),
then `quantize`s it on the warmup items (the fastest accurate precision per tower, measured here; the
measured items stay out), times whole-process `predict` of 32 items (benchmarks/bench_startup.py), and
runs `benchmark --baseline reference --ablation` on the same items: reference pipeline, fp32 "no
acceleration", the fast path, each lever flipped, a row per precision variant, parity (fast vs fp32: PLCC
change, max / mean abs diff, correlation), model-only GFLOP/s of each tower next to the bf16 / fp32 matmul
peak it measures, where the text tower's time goes, and its ceiling (its matrix products and attention
each timed alone: the most any backend with kernels that fast could reach). About 10-12 minutes on 2 idle
cores (more with --compile).

The fitted head is a hard case for parity: ~160 items of weak signal give predictions that barely vary (sd
~0.04 on the 1-5 scale, out-of-sample PLCC ~0.05), so the same rounding moves its PLCC more than a trained
model's; the report prints that sd next to the differences.

    .venv/bin/python benchmarks/bench_fast.py --out bench-fast            # 1000 measured items
    .venv/bin/python benchmarks/bench_fast.py --items 200 --no-ablation   # a quick look
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from effiminivlm.bench.baseline import render_markdown, run_table3
from effiminivlm.config import load_recipe
from effiminivlm.data.inputs import read_inputs
from effiminivlm.data.realistic import write_hi_res_catalog
from effiminivlm.evaluation.quantize import quantize_model
from effiminivlm.inference import make_loader
from effiminivlm.models.factory import create_model, create_tokenizer

DEV = (Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2023-fashion-dev"
       / "meta_Amazon_Fashion.jsonl")


def fit_head(model: torch.nn.Module, tokenizer: object, meta: Path, rows: int, batch_size: int) -> float:
    """Ridge-fit the head's last linear layer on the first `rows` items (fp32); returns the fit's PLCC."""
    src = read_inputs([str(meta)])
    table = src.table.slice(0, rows)
    last = model.head[-1]
    feats: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _m, inp, _out: feats.append(inp[0].detach().float()))
    with torch.no_grad():
        for b in make_loader(model, tokenizer, table, src.store, batch_size=batch_size):
            model(b["pixel_values"], b["input_ids"], b["attention_mask"], b["has_image"])
    hook.remove()
    x = torch.cat(feats).double()
    y = torch.tensor(table.column("average_rating").to_pylist(), dtype=torch.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w = torch.linalg.solve(z.T @ z + 10.0 * rows * torch.eye(z.shape[1], dtype=torch.float64),
                           z.T @ (y - y.mean()))
    with torch.no_grad():
        last.weight.copy_((w / sd).float().unsqueeze(0))
        last.bias.fill_(float(y.mean() - (w / sd) @ mu))
    pred = (z @ w + y.mean()).numpy()
    return float(np.corrcoef(pred, y.numpy())[0, 1])


def subset_meta(meta: Path, name: str, rows: int) -> Path:
    """The first `rows` items of `meta` as a meta file beside it (its images stay inside the same folder)."""
    lines = meta.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]
    out = meta.with_name(f"meta_{name}.jsonl")
    out.write_text("".join(lines), encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000, help="measured items (after the warmup batches)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=5, help="warmup batches (also the head's fitting items)")
    ap.add_argument("--texts", default=str(DEV), help="real meta file for the texts (default: dev sample)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the lever-by-lever runs")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile in the ablation")
    ap.add_argument("--out", default=None, help="folder for report.json / report.md (default: temp)")
    ap.add_argument("--model", default=None,
                    help="a saved model folder to measure instead of the offline towers + fitted head")
    ap.add_argument("--no-quantize", action="store_true",
                    help="measure the folder as it is (default: `quantize` it on the warmup items first)")
    ap.add_argument("--startup-runs", type=int, default=3,
                    help="whole-process `predict` runs of 32 items timed (0: skip)")
    args = ap.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-fast-"))
    out.mkdir(parents=True, exist_ok=True)
    texts = Path(args.texts) if Path(args.texts).is_file() else None
    n = args.items + args.warmup * args.batch_size
    t0 = time.perf_counter()
    cat = write_hi_res_catalog(out / "catalog", n, texts=texts, overwrite=True)
    print(f"inputs: {n} items, {cat.image_bytes / 1e6:.0f} MB of JPEGs (1000-1500 px), texts from "
          f"{cat.text_source} ({time.perf_counter() - t0:.0f} s)")

    model_dir = Path(args.model) if args.model else out / "model"
    if args.model is None:
        recipe = load_recipe("offline")
        torch.manual_seed(0)
        model = create_model(recipe.model, pretrained=True)
        tokenizer = create_tokenizer(recipe.model)
        fit = fit_head(model, tokenizer, cat.meta_path, args.warmup * args.batch_size, args.batch_size)
        print(f"model: offline towers (pretrained) + head fitted by ridge on the "
              f"{args.warmup * args.batch_size} warmup items (in-sample PLCC {fit:.3f})")
        model.save_pretrained(model_dir, tokenizer=tokenizer)
    warm_items = args.warmup * args.batch_size
    if not args.no_quantize and warm_items >= 10:
        calib = subset_meta(cat.meta_path, "Calibration", warm_items)  # never the measured items
        t1 = time.perf_counter()
        fast_dir = out / "model-fast"
        result = quantize_model(model_dir, calib, fast_dir, items=warm_items, batch_size=args.batch_size,
                                log=print)
        print(f"quantize: chose {result['choice']} ({time.perf_counter() - t1:.0f} s)")
        model_dir = fast_dir
    if args.startup_runs > 0:
        first32 = subset_meta(cat.meta_path, "First32", min(32, warm_items or 32))
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_startup.py")), "--model",
                        str(model_dir), "--inputs", str(first32), "--runs", str(args.startup_runs)],
                       check=True)
    report = run_table3([str(cat.meta_path)], model_dir=model_dir, batch_size=args.batch_size,
                        warmup=args.warmup, max_samples=args.items, ablation=not args.no_ablation,
                        compile_lever=args.compile, json_out=out / "report.json",
                        markdown_out=out / "report.md", log=print)
    print(render_markdown(report))
    print(f"report: {out / 'report.json'}, {out / 'report.md'} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
