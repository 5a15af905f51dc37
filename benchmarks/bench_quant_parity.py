"""Parity of a model's stored fast variant (`effiminivlm quantize`) against fp32, on held-out items.

`quantize` checks each candidate on a third of its own sample; this scores items it never saw (e.g. the
test split of the data the model was trained on, calibration taken from the train split) with

- **fp32**: the exact path (`--precision fp32`: fp32 PyTorch towers, full decode, input order);
- **fast**: the fast path with the stored variant of every tower (what `predict` / `serve` run);
- **fast, every tower fp32**: the same fast path with fp32 towers, so the loading and backend's share
  (draft JPEG decode, OpenVINO) is told apart from the precision's;
- **per tower**: each tower in its stored variant alone (the other in fp32) against the fast fp32 path:
  which tower's precision moves the scores.

Each row: PLCC of both against the ratings, the change with its 95% paired bootstrap interval, correlation
with the reference scores, max / mean abs difference (`bench.fastpath.parity`). Printed as JSON, then one
markdown row for the fast variant. Parity figures do not depend on the machine's load.

    PYTHONPATH=src python benchmarks/bench_quant_parity.py --model runs/x/model-fast --data data/prep
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch

from effiminivlm.bench.fastpath import parity
from effiminivlm.bench.variants import FP32
from effiminivlm.data.inputs import read_inputs
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.inference import fast_loading, make_loader, run_inference
from effiminivlm.models.factory import load_model

CPU = torch.device("cpu")


def measure(model_dir: str, data: str, split: str | None = "test", images_dir: str | None = None,
            batch_size: int = 32) -> dict[str, Any]:
    """Every row of the module doc for the model folder `model_dir` (it must hold a stored choice)."""
    from effiminivlm.models.optimize import optimize_for_inference

    model, tok = load_model(model_dir)
    stored = dict(getattr(model, "fast_variants", None) or {})
    if not stored:
        raise EffiMiniVLMError(f"{model_dir} holds no usable fast.json: run `effiminivlm quantize` first")
    src = read_inputs([data], split=split, images_dir=images_dir)
    exact = run_inference(model, make_loader(model, tok, src.table, src.store, batch_size=batch_size), CPU,
                          "fp32", progress=False)

    def fast(variants: dict[str, Any]) -> tuple[np.ndarray, dict[str, str]]:
        model.fast_variants = variants  # type: ignore[assignment]
        runner = optimize_for_inference(model, CPU, "bf16")
        got = run_inference(runner, make_loader(model, tok, src.table, src.store, batch_size=batch_size,
                                                **fast_loading(True, 0)), CPU, "bf16", progress=False)
        return got.pred, getattr(runner, "tower_precisions", {})

    pred, towers = fast(stored)
    all_fp32, _ = fast({t: FP32 for t in stored})
    rows = {"fast vs fp32": parity(pred, exact.pred, exact.target),
            "fast, every tower fp32 vs fp32": parity(all_fp32, exact.pred, exact.target)}
    for tower, variant in stored.items():
        if variant.precision != "fp32":
            alone, _ = fast({**{t: FP32 for t in stored}, tower: variant})
            rows[f"{tower} tower {variant.precision} alone vs fast fp32 towers"] = parity(alone, all_fp32,
                                                                                        exact.target)
    return {"model": model_dir, "data": data, "split": split, "items": int(len(pred)),
            "stored": {t: v.precision for t, v in stored.items()}, "ran": towers, "parity": rows}


def markdown_row(result: dict[str, Any]) -> str:
    """The fast variant's row: model, items, precision per tower, PLCC fp32 / fast, change (95% CI),
    correlation, max abs diff."""
    p = result["parity"]["fast vs fp32"]
    lo, hi = p["plcc_change_ci95"]
    towers = ", ".join(f"{t} {v}" for t, v in result["ran"].items())
    return (f"| {result['model']} | {result['items']} | {towers} | {p['plcc_fp32']:.4f} | "
            f"{p['plcc_fast']:.4f} | {p['plcc_change']:+.5f} ({lo:+.4f} to {hi:+.4f}) | "
            f"{p['corr_fast_fp32']:.5f} | {p['max_abs_diff']:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model folder written by `effiminivlm quantize`")
    ap.add_argument("--data", required=True, help="prepared folder (or input.csv / meta file) to score")
    ap.add_argument("--split", default="test", help="split of a prepared folder ('none' for other inputs)")
    ap.add_argument("--images-dir", default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    result = measure(args.model, args.data, None if args.split == "none" else args.split, args.images_dir,
                     args.batch_size)
    print(json.dumps(result, indent=2))
    print(markdown_row(result))


if __name__ == "__main__":
    main()
