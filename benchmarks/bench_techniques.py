"""What training techniques cost per step, in one run: losses, exact gradient accumulation, LoRA, freezing.

Each variant runs the training loop's own step (`train_step`) on the same pre-collated batches of a synthetic
catalog, fp32, random init (the cost does not depend on the weights' values), and prints samples/s, the
ratio to the baseline (weighted Huber, every weight trained) and the trainable parameter count. Gradient
accumulation runs each micro-batch twice (no-grad, then with grad) to keep batch-level losses exact: its
figure shows that price. The CPU may be shared with other jobs: compare ratios within one run.

    .venv/bin/python benchmarks/bench_techniques.py --recipe offline --modalities text --batch-size 16
"""

from __future__ import annotations

import argparse
import time

import torch
from _synthetic import synthetic_batches

from effiminivlm.config import load_recipe
from effiminivlm.models.factory import create_model
from effiminivlm.models.freezing import freeze_layers
from effiminivlm.training.loop import train_step
from effiminivlm.training.losses import build_loss
from effiminivlm.training.optim import param_groups

LORA = "model.text_encoder.lora={r: 8, alpha: 16, target_modules: [query, value]}"
VARIANTS = [  # name, recipe overrides
    ("weighted_huber (baseline)", []),
    ("weighted_huber + plcc + rank", ["train.loss={weighted_huber: 1, plcc: 0.5, rank: 0.2}"]),
    ("kl over 9 bins", ["train.loss=kl"]),
    ("same mixture, grad_accum_steps=4", ["train.loss={weighted_huber: 1, plcc: 0.5, rank: 0.2}",
                                          "train.grad_accum_steps=4"]),
    ("freeze half the text layers", ["train.freeze_text_layers=HALF"]),
    ("LoRA r=8 on query/value", [LORA]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="offline")
    ap.add_argument("--modalities", default="text", help="image_text | image | text")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    base = load_recipe(args.recipe, [f"model.modalities={args.modalities}",
                                     f"train.batch_size={args.batch_size}"])
    cfg = base.model
    mode = "none" if args.modalities == "text" else "first"
    batches = synthetic_batches(cfg, args.batch_size, args.steps + args.warmup, images=mode)
    print(f"recipe {args.recipe} ({args.modalities}), batch {args.batch_size}, {args.steps} timed steps "
          f"after {args.warmup} warmup, fp32, {torch.get_num_threads()} threads (CPU possibly shared)")
    dev, baseline = torch.device("cpu"), None
    layers = create_model(cfg, pretrained=False).text_encoder.bert.config.num_hidden_layers
    for name, overrides in VARIANTS:
        recipe = load_recipe(base.to_dict(), [o.replace("HALF", str(layers // 2)) for o in overrides])
        tc = recipe.train
        torch.manual_seed(0)
        model = create_model(recipe.model, pretrained=False).train()
        freeze_layers(model, tc.freeze_text_layers, tc.freeze_image_blocks)
        opt = torch.optim.AdamW(param_groups(model, tc), lr=1e-5)
        loss_fn = build_loss(tc.loss, {"delta": tc.huber_delta})
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        t0 = 0.0
        for i, batch in enumerate(batches):
            if i == args.warmup:
                t0 = time.perf_counter()
            train_step(model, batch, dev, "fp32", loss_fn, opt, scaler, 1.0, tc.grad_accum_steps)
        rate = args.steps * args.batch_size / (time.perf_counter() - t0)
        baseline = baseline or rate
        print(f"{name:36s} {rate:7.2f} samples/s  x{rate / baseline:.2f}  trainable "
              f"{model.num_params(trainable_only=True) / 1e6:6.2f}M of {model.num_params() / 1e6:.2f}M")


if __name__ == "__main__":
    main()
