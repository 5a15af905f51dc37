"""Training throughput of a recipe on this machine, fp32 vs bf16, in one run.

Measures the training loop's own optimizer step (`train_step`: forward + weighted Huber + backward + clip +
AdamW) on pre-collated batches of a synthetic catalog, so the figure is the model's training cost, not the
data pipeline's. Prints samples/s per precision and the bf16/fp32 ratio.

    .venv/bin/python benchmarks/bench_train.py --recipe offline --batch-size 32 --steps 6
"""

from __future__ import annotations

import argparse
import time

import torch
from _synthetic import synthetic_batches

from effiminivlm.config import load_recipe
from effiminivlm.models.factory import create_model
from effiminivlm.training.loop import train_step
from effiminivlm.training.losses import create_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="offline")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pad-to-max", action="store_true", help="canonical fixed-length text")
    args = ap.parse_args()

    recipe = load_recipe(args.recipe)
    cfg = recipe.model
    batches = synthetic_batches(cfg, args.batch_size, args.steps + args.warmup, pad_to_max=args.pad_to_max)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[args.warmup:])
    print(f"recipe {args.recipe}: image {cfg.image_encoder.image_size}px, "
          f"max {cfg.text_encoder.max_length} tokens "
          f"({'padded to max' if args.pad_to_max else 'dynamic padding'}), batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warmup, {torch.get_num_threads()} threads, "
          f"{tokens / (args.steps * args.batch_size):.0f} real tokens/sample")
    dev = torch.device("cpu")
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = create_model(cfg, pretrained=False).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
        loss_fn = create_loss("weighted_huber", mu=2.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        t0 = 0.0
        for i, batch in enumerate(batches):
            if i == args.warmup:
                t0 = time.perf_counter()
            train_step(model, batch, dev, precision, loss_fn, opt, scaler, grad_clip=1.0)
        seconds = time.perf_counter() - t0
        results[precision] = args.steps * args.batch_size / seconds
        print(f"{precision}: {seconds:.2f} s for {args.steps * args.batch_size} samples -> "
              f"{results[precision]:.2f} samples/s ({1000 * seconds / args.steps:.0f} ms/step)")
    print(f"bf16 / fp32 throughput: {results['bf16'] / results['fp32']:.2f}x")


if __name__ == "__main__":
    main()
