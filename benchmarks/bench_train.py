"""Training throughput end to end, the untuned configuration vs the fast one and each lever, in one run.

The goal is training samples/s >= 2x the 15.5 quoted for the untuned configuration (bf16, offline recipe,
224 px, dev-length text). This measures what a user's `train` does: realistic inputs (real development texts
+ generated JPEGs at Amazon hi_res size, 1000-1500 px) prepared by `prepare` into a training split, then
real optimizer steps through the training loop's OWN loader (`training.loop._loader`: the processor's
dataset, bucketing, draft decoding, workers) and its `train_step` (bf16 autocast forward, weighted Huber,
backward, clip, AdamW), the offline recipe's pretrained towers, batch 32, 224 px:

- `untuned`: bf16 autocast over fp32 weights, no bucketing, full JPEG decode, eager, 2 workers (the
  default then), PyTorch's default AdamW, no image-tower levers;
- `fast`: the recipe's own settings now (what `train --recipe offline` runs);
- one row per lever flipped from `fast` (bucketing, draft decode, workers 0/1/2, fused AdamW, depthwise fp32,
  channels-last, fast dropout, memory reuse, decode threads; compile with `--compile`: compiling takes
  minutes on 2 cores).

Clock: each configuration builds its loader (workers start) and runs `--warmup` steps outside the clock; the
figure is the steady state of the next `--steps` steps (loading overlapped with them), samples / seconds;
the spread is that of the per-step rates. Loader start to first batch is reported apart (`start_s`).
Writes report.json / report.md into `--out`. About 5 minutes on 2 idle cores with the defaults.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py --out bench-train
    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py --model-only   # the old train_step-only figure
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from effiminivlm.config import load_recipe
from effiminivlm.data.images import ImageStore
from effiminivlm.data.loader import text_lengths
from effiminivlm.data.prepare import prepare, read_prepared
from effiminivlm.data.realistic import write_hi_res_catalog
from effiminivlm.models.factory import create_model, create_tokenizer
from effiminivlm.runtime import default_num_workers
from effiminivlm.training.loop import _loader, train_fetch_threads, train_step
from effiminivlm.training.losses import build_loss
from effiminivlm.training.optim import param_groups
from effiminivlm.training.speed import CompiledOrEager, apply_train_levers, heap_reuse, make_adamw

DEV = (Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2023-fashion-dev"
       / "meta_Amazon_Fashion.jsonl")
QUOTED_FIGURE = 15.5  # training samples/s quoted for the untuned configuration (bf16, offline recipe, 224 px)
TARGET_RATIO = 2.0


class TrainConfig(NamedTuple):
    """How one configuration loads and steps (the recipe's maths is the same in all of them)."""

    bucket: bool
    draft: bool
    workers: int
    fused_adamw: bool
    depthwise_fp32: bool
    channels_last: bool
    compile: bool
    fast_dropout: bool = False
    fetch_threads: bool = False  # decode threads as training uses them (training.loop.train_fetch_threads)
    reuse_memory: bool = False  # glibc keeps freed memory for the next step (training.speed.heap_reuse)


def configurations(fast: TrainConfig, *, with_compile: bool) -> dict[str, TrainConfig]:
    """untuned, fast, then each lever flipped from fast (workers: each other count of 0/1/2)."""
    untuned = TrainConfig(bucket=False, draft=False, workers=2, fused_adamw=False, depthwise_fp32=False,
                        channels_last=False, compile=False, fast_dropout=False, fetch_threads=False,
                        reuse_memory=False)
    out = {"untuned": untuned, "fast": fast}
    keys = ("bucket", "draft", "fused_adamw", "depthwise_fp32", "channels_last", "fast_dropout",
            "reuse_memory", "fetch_threads")
    for key in keys if fast.workers == 0 else keys[:-1]:
        on = getattr(fast, key)
        out[f"{key} {'off' if on else 'on'}"] = fast._replace(**{key: not on})
    for n in (0, 1, 2):
        if n != fast.workers:
            out[f"workers {n}"] = fast._replace(workers=n)
    if with_compile:
        out[f"compile {'off' if fast.compile else 'on'}"] = fast._replace(compile=not fast.compile)
    return out


def realistic_split(out: Path, train_items: int, texts: Path | None, min_px: int, max_px: int
                    ) -> tuple[Path, str]:
    """A prepared dataset whose train split has >= `train_items` rows of real texts + hi_res JPEGs.

    The dev texts are first passed through `prepare` itself (the paper's filters), so every generated
    photo belongs to a row that training keeps; the catalog then goes through `prepare` like a user's."""
    source = "synthetic"
    if texts is not None:
        prepare([texts], out / "texts-prepared", frac=1.0, min_per_category=0, overwrite=True)
        keep = set(read_prepared(out / "texts-prepared").column("parent_asin").to_pylist())
        kept = [line for line in texts.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("parent_asin") in keep]
        (out / "texts.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
        texts, source = out / "texts.jsonl", f"{len(kept)} rows of {texts} kept by prepare"
    n = int(train_items / 0.8) + 24  # prepare splits 8:1:1
    cat = write_hi_res_catalog(out / "catalog", n, texts=texts, min_px=min_px, max_px=max_px,
                               overwrite=True)
    prepare([cat.meta_path], out / "prepared", frac=1.0, min_per_category=0, overwrite=True)
    return out / "prepared", f"{n} items, {cat.image_bytes / 1e6:.0f} MB of JPEGs ({min_px}-{max_px} px), " \
                             f"texts: {source}"


def load_avg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def time_config(cfg: TrainConfig, base: torch.nn.Module, recipe: Any, data: Path, tokenizer: Any, *,
                batch_size: int, warmup: int, steps: int, precision: str) -> dict[str, Any]:
    """Train `warmup` + `steps` steps of a copy of `base` with `cfg`; the clock covers the last `steps`."""
    dev = torch.device("cpu")
    tc = recipe.train
    model = copy.deepcopy(base).train()
    apply_train_levers(model, dev, precision, depthwise_fp32=cfg.depthwise_fp32,
                       channels_last=cfg.channels_last, fast_dropout=cfg.fast_dropout)
    net = CompiledOrEager(model, cfg.compile, log=print) if cfg.compile else model
    optimizer = make_adamw(param_groups(model, tc), tc.lr, dev, cfg.fused_adamw)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss_fn = build_loss(tc.loss, {"delta": tc.huber_delta})
    processor = model.processor(tokenizer)
    rows = read_prepared(data, "train")
    ds = processor.dataset(rows, ImageStore.for_prepared(data), "first", train=True,
                           augment=recipe.data.augment, draft=cfg.draft)
    lengths = text_lengths(ds) if cfg.bucket else None
    with heap_reuse(cfg.reuse_memory):  # scoped to this configuration, as train() scopes it to a run
        load0 = load_avg()
        started = time.perf_counter()
        loader = _loader(ds, processor.collator(), batch_size, cfg.workers, shuffle_seed=tc.seed, epoch=1,
                         lengths=lengths,
                         fetch_threads=train_fetch_threads(recipe.data, cfg.workers, False)
                         if cfg.fetch_threads else 1)
        it = iter(loader)
        first_batch_s = None
        marks: list[tuple[float, int, int]] = []  # (time after the step, items, padded tokens)
        t0 = None
        for i in range(warmup + steps):
            try:
                batch = next(it)
            except StopIteration:
                break
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - started
            if train_step(net, batch, dev, precision, loss_fn, optimizer, scaler, tc.grad_clip) is None:
                raise RuntimeError("a benchmark step had a non-finite loss")
            now = time.perf_counter()
            if i == warmup - 1:
                t0 = now
            if i >= warmup:
                marks.append((now, len(batch["item_id"]), int(batch["input_ids"].numel())))
        del it, loader  # workers stop
    if t0 is None or not marks:
        raise RuntimeError(f"the train split gave fewer than {warmup + 1} batches: raise --train-items")
    seconds = marks[-1][0] - t0
    items = sum(m[1] for m in marks)
    prev, rates = t0, []
    for t, n, _ in marks:
        rates.append(n / (t - prev))
        prev = t
    return {"settings": cfg._asdict(), "steps": len(marks), "items": items, "seconds": round(seconds, 3),
            "samples_per_s": items / seconds, "step_rate_min": min(rates),
            "step_rate_median": statistics.median(rates), "step_rate_max": max(rates),
            "padded_tokens_per_item": sum(m[2] for m in marks) / items,
            "start_s": round(first_batch_s or 0.0, 3), "load_before": load0, "load_after": load_avg(),
            "compile": net.report(True) if isinstance(net, CompiledOrEager) else None}


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (one row per configuration) with its header lines."""
    lines = [f"# Training throughput ({report['recipe']} recipe, batch {report['batch_size']}, "
             f"{report['image_size']} px, {report['precision']})", "",
             f"- inputs: {report['inputs']}", f"- clock: {report['clock']}",
             f"- machine: {report['cpus']} CPUs, {report['threads']} torch threads, load average "
             f"{report['load_start']} at start (the CPU may be shared: compare ratios, not absolute rates)",
             f"- fast: **{report['fast_samples_per_s']:.2f} samples/s = "
             f"{report['fast_vs_untuned']:.2f}x** the untuned configuration here; "
             f"{report['fast_vs_quoted_figure']:.2f}x the quoted "
             f"{QUOTED_FIGURE} (target {TARGET_RATIO:g}x = {TARGET_RATIO * QUOTED_FIGURE:g})", "",
             "| configuration | samples/s | x untuned | per-step min / median / max | padded tokens/item "
             "| start (s) | load avg |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["configs"].items():
        lines.append(f"| {name} | {r['samples_per_s']:.2f} | {r['ratio_to_untuned']:.2f} | "
                     f"{r['step_rate_min']:.1f} / {r['step_rate_median']:.1f} / {r['step_rate_max']:.1f} | "
                     f"{r['padded_tokens_per_item']:.0f} | {r['start_s']:.2f} | "
                     f"{r['load_before']}-{r['load_after']} |")
    settings = "; ".join(f"{k}={v}" for k, v in report["configs"]["fast"]["settings"].items())
    return "\n".join(lines + ["", f"fast settings: {settings}", ""])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `main` does, returning the report (tests call it with tiny settings)."""
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-train-"))
    out.mkdir(parents=True, exist_ok=True)
    texts = Path(args.texts) if args.texts and Path(args.texts).is_file() else None
    t_all = time.perf_counter()
    recipe = load_recipe(args.recipe, [f"train.batch_size={args.batch_size}"])
    data, inputs = realistic_split(out / "inputs", (args.warmup + args.steps) * args.batch_size, texts,
                                   args.min_px, args.max_px)
    print(f"inputs: {inputs} ({time.perf_counter() - t_all:.0f} s)")
    torch.manual_seed(0)
    base = create_model(recipe.model, pretrained=True)
    tokenizer = create_tokenizer(recipe.model)
    tc = recipe.train
    workers = default_num_workers(recipe.data.num_workers)
    fast = TrainConfig(bucket=recipe.data.bucket_by_length, draft=recipe.data.draft_decode,
                       workers=workers, fused_adamw=tc.fused_adamw,
                       depthwise_fp32=tc.depthwise_fp32, channels_last=tc.image_channels_last,
                       compile=tc.compile, fast_dropout=tc.fast_dropout,
                       fetch_threads=train_fetch_threads(recipe.data, workers, False) > 1,
                       reuse_memory=tc.reuse_memory)
    configs = configurations(fast, with_compile=args.compile)
    if args.configs:
        wanted = [c.strip() for c in args.configs.split(",")]
        unknown = [c for c in wanted if c not in configs]
        if unknown:
            raise SystemExit(f"unknown configuration(s) {unknown}; choose from {list(configs)}")
        configs = {k: v for k, v in configs.items() if k in wanted or k == "untuned"}
    report: dict[str, Any] = {
        "recipe": recipe.name, "batch_size": args.batch_size,
        "image_size": recipe.input.image_size,
        "precision": args.precision, "inputs": inputs, "warmup": args.warmup, "steps": args.steps,
        "clock": f"steady state: {args.steps} steps after {args.warmup} warmup steps per configuration "
                 "(loader construction, worker start and the warmup steps outside the clock; start_s = "
                 "loader start to first batch)",
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "load_start": load_avg(),
        "quoted_figure": QUOTED_FIGURE, "configs": {}}
    for name, cfg in configs.items():
        r = time_config(cfg, base, recipe, data, tokenizer, batch_size=args.batch_size, warmup=args.warmup,
                        steps=args.steps, precision=args.precision)
        report["configs"][name] = r
        print(f"{name:>22}: {r['samples_per_s']:6.2f} samples/s (per step {r['step_rate_min']:.1f}-"
              f"{r['step_rate_max']:.1f}, {r['padded_tokens_per_item']:.0f} padded tokens/item, start "
              f"{r['start_s']:.2f} s, load {r['load_before']}-{r['load_after']})", flush=True)
    untuned = report["configs"]["untuned"]["samples_per_s"]
    for r in report["configs"].values():
        r["ratio_to_untuned"] = r["samples_per_s"] / untuned
    if "fast" in report["configs"]:
        fast_sps = report["configs"]["fast"]["samples_per_s"]
        report.update(fast_samples_per_s=fast_sps, fast_vs_untuned=fast_sps / untuned,
                      fast_vs_quoted_figure=fast_sps / QUOTED_FIGURE,
                      target_met=fast_sps >= TARGET_RATIO * QUOTED_FIGURE)
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    if "fast" in report["configs"]:
        (out / "report.md").write_text(render_markdown(report))
        print(render_markdown(report))
    print(f"report: {out / 'report.json'} ({report['seconds']:.0f} s in all)")
    return report


def model_only(args: argparse.Namespace) -> None:
    """The old figure: `train_step` alone on pre-collated synthetic batches (random init), fp32 vs bf16 as
    in the untuned configuration, then bf16 with the recipe's step levers (fused AdamW, depthwise fp32,
    channels-last, fast dropout): the quoted 15.5 was the bf16 row of this measure."""
    from _synthetic import synthetic_batches

    recipe = load_recipe(args.recipe)
    cfg, tc = recipe.model, recipe.train
    batches = synthetic_batches(cfg, args.batch_size, args.steps + args.warmup)
    dev = torch.device("cpu")
    rates = {}
    for name, precision in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16 + step levers", "bf16")):
        torch.manual_seed(0)
        model = create_model(cfg, pretrained=False).train()
        levers = name.endswith("levers")
        if levers:
            apply_train_levers(model, dev, precision, depthwise_fp32=tc.depthwise_fp32,
                               channels_last=tc.image_channels_last, fast_dropout=tc.fast_dropout)
        opt = make_adamw(model.parameters(), 2e-5, dev, fused=levers and tc.fused_adamw)
        loss_fn = build_loss("weighted_huber", {"delta": 1.0})
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        t0 = 0.0
        for i, batch in enumerate(batches):
            if i == args.warmup:
                t0 = time.perf_counter()
            train_step(model, batch, dev, precision, loss_fn, opt, scaler, grad_clip=1.0)
        seconds = time.perf_counter() - t0
        rates[name] = args.steps * args.batch_size / seconds
        print(f"model only, {name}: {rates[name]:.2f} samples/s", flush=True)
    print(f"bf16 + step levers vs bf16: {rates['bf16 + step levers'] / rates['bf16']:.2f}x; "
          f"vs the quoted {QUOTED_FIGURE}: {rates['bf16 + step levers'] / QUOTED_FIGURE:.2f}x")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="offline")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--texts", default=str(DEV), help="real meta file for the texts (default: dev sample)")
    ap.add_argument("--min-px", type=int, default=1000)
    ap.add_argument("--max-px", type=int, default=1500)
    ap.add_argument("--configs", default="", help="comma-separated subset (untuned always runs)")
    ap.add_argument("--compile", action="store_true", help="also flip train.compile (minutes of compiling)")
    ap.add_argument("--model-only", action="store_true", help="the old train_step-only figure, fp32 vs bf16")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (default: PyTorch's, one per core); 1 keeps ratios meaningful on a "
                         "CPU other jobs share (a 2-thread OpenMP team stalls whenever a core is taken)")
    ap.add_argument("--out", default=None, help="folder for report.json / report.md (default: temp)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model_only:
        model_only(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
