"""Batch-scoring throughput: single-process `predict` vs `predict --engine ray` with 1 and 2 actors, one run.

Builds a synthetic catalog (real JPEG files), prepares it, saves a random-init model of `--recipe` (scores
are not the point; the architecture's cost is), then scores the same prepared folder three or more ways and
checks that every engine wrote the same submission. Ray runs inside one local Ray session whose start-up is
timed apart; each Ray figure includes its actors' model loading (paid once per actor, per run).

    .venv/bin/python benchmarks/bench_ray.py --recipe offline --items 2000 --actors 1 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from effiminivlm.config import load_recipe
from effiminivlm.data.prepare import prepare
from effiminivlm.data.synth import write_synth
from effiminivlm.models.factory import create_model, create_tokenizer
from effiminivlm.serving.predict import predict
from effiminivlm.serving.ray_engine import import_ray, predict_ray
from effiminivlm.training.loop import init_output_bias


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="tiny", help="architecture to score with (random init)")
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--num-workers", type=int, default=1, help="DataLoader workers of the single process")
    args = ap.parse_args()

    ray = import_ray()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_synth(t / "cat", n=args.items, seed=0, progress=False)
        prepare([t / "cat" / "meta_Synthetic.jsonl"], t / "prep", frac=1.0, min_per_category=0)
        cfg = load_recipe(args.recipe).model
        torch.manual_seed(0)
        model = create_model(cfg, pretrained=False)
        init_output_bias(model, 3.0)
        model.save_pretrained(t / "model", tokenizer=create_tokenizer(cfg))
        print(f"recipe {args.recipe}: {args.items} items, batch {args.batch_size}, precision "
              f"{args.precision}, {cpus} CPUs (shared machine: figures vary with other load)")

        local = predict(t / "model", [str(t / "prep")], t / "local.csv", batch_size=args.batch_size,
                        num_workers=args.num_workers, device="cpu", precision=args.precision, progress=False)
        base = local["items"] / local["seconds"]
        print(f"single process ({args.num_workers} loader workers): {local['seconds']:.2f} s -> "
              f"{base:.1f} items/s ({1000 / base:.2f} ms/item)")

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        print(f"local Ray start: {time.perf_counter() - t0:.2f} s (once per session)")
        try:
            for n in args.actors:
                out = t / f"ray{n}.csv"
                s = predict_ray(t / "model", [str(t / "prep")], out, batch_size=args.batch_size, device="cpu",
                                precision=args.precision, num_actors=n, progress=False)
                same = out.read_bytes() == (t / "local.csv").read_bytes()
                rate = s["items"] / s["seconds"]
                print(f"ray, {n} actor(s): {s['seconds']:.2f} s -> {rate:.1f} items/s "
                      f"({rate / base:.2f}x single process); submission identical: {same}")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
