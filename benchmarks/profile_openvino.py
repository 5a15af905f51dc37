"""Where an OpenVINO text-tower graph spends its time: OpenVINO's per-layer counters, summed by layer type.

Why: "is attention fused, and what do the copies cost" is answered by the runtime graph the CPU plugin
really runs, not by the converted one. Compiles the graph (fp32 hint; an int8 graph keeps its int8
layers) on `--threads` threads, runs `--repeats` batches of random token ids of each length after a warmup,
and prints ms per item and each layer type's share of the summed layer time (`Subgraph` is the plugin's
fused attention: the transposes, scale, mask add, softmax and the two matrix products of one layer).

    python benchmarks/profile_openvino.py M-fast/fast/text-int8.xml --batch 32 --tokens 128 256
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np


def profile(xml: str, batch: int, tokens: int, threads: int, repeats: int) -> tuple[float, dict[str, float]]:
    """(ms per item, {layer type: share of the summed layer time}) for one (batch, tokens) shape."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(xml), "CPU", {
        "PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    ids = np.random.default_rng(0).integers(1000, 20000, size=(batch, tokens)).astype(np.int64)
    feed = {p.get_any_name(): ids if p.get_any_name() == "input_ids" else np.ones_like(ids)
            for p in compiled.inputs}
    for _ in range(3):
        request.infer(feed)
    per_type: collections.Counter[str] = collections.Counter()
    start = time.perf_counter()
    for _ in range(repeats):
        request.infer(feed)
        for layer in request.profiling_info:
            per_type[layer.node_type] += layer.real_time.total_seconds()
    ms = (time.perf_counter() - start) / repeats / batch * 1e3
    total = sum(per_type.values()) or 1.0
    return ms, {k: v / total for k, v in per_type.most_common()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", help="an OpenVINO IR (.xml) of a text tower (inputs input_ids, attention_mask)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    for tokens in args.tokens:
        ms, shares = profile(args.graph, args.batch, tokens, args.threads, args.repeats)
        print(f"batch {args.batch} x {tokens} tokens: {ms:.2f} ms/item")
        for name, share in list(shares.items())[:10]:
            print(f"  {name:32s} {100 * share:5.1f}%")


if __name__ == "__main__":
    main()
