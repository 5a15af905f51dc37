"""Train EffiMiniVLM on a prepared dataset: the paper's loss and schedule, resumable, early-stopped on PLCC.

Run folder (`--out`):
    recipe.yaml       the resolved recipe (every value the run used)
    metrics.jsonl     one JSON line per epoch (train loss, val metrics, lr, throughput, image fallbacks)
    checkpoint/last.pt  full training state after the last finished epoch (for --resume)
    model/            the best epoch by validation PLCC, as a Hugging Face-style folder (the run's output)
    train_summary.json  best epoch, its metrics, stop reason, counters
What a rerun or `--resume` does with a folder a killed run left: see `training.rundir`.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from effiminivlm.config import DataCfg, Recipe, from_dict
from effiminivlm.data.dataset import ProductDataset
from effiminivlm.data.images import ImageStore
from effiminivlm.data.labels import attach_categories
from effiminivlm.data.loader import BucketedShuffledBatches, text_lengths, with_fetch_threads
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.evaluation.classification import sigmoid, tune_thresholds, validation_metrics
from effiminivlm.evaluation.metrics import compute_metrics
from effiminivlm.files import atomic_write_text, to_jsonable, write_json
from effiminivlm.inference import forward_batch, run_inference
from effiminivlm.models.factory import create_model, create_tokenizer
from effiminivlm.models.freezing import GradualUnfreezing, apply_recipe_freezing
from effiminivlm.runtime import (
    autocast,
    default_num_workers,
    fetch_threads,
    resolve_compute_precision,
    resolve_device,
)
from effiminivlm.training import distributed
from effiminivlm.training.accumulate import backward_in_parts
from effiminivlm.training.checkpoint import load_checkpoint, rng_state, save_checkpoint
from effiminivlm.training.embed_distill import setup_embedding_distillation
from effiminivlm.training.losses import build_loss, check_recipe_names
from effiminivlm.training.offset import output_start, with_lexical_offset
from effiminivlm.training.optim import param_groups
from effiminivlm.training.rundir import checkpoint_path, open_run_dir, sync_metrics
from effiminivlm.training.skeleton import publish_model, read_train_val, weighted_train_rows
from effiminivlm.training.speed import CompiledOrEager, apply_train_levers, heap_reuse, make_adamw
from effiminivlm.training.train_rows import mix_train_rows

MAX_NONFINITE_STEPS = 20


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0  # epochs finished
    step: int = 0
    best_plcc: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    nonfinite_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loader(ds: ProductDataset, collate: Callable[..., dict[str, Any]], batch_size: int, workers: int, *,
            shuffle_seed: int | None, dist: distributed.Dist | None = None, epoch: int = 0,
            lengths: list[int] | None = None, pin_memory: bool = False, fetch_threads: int = 1
            ) -> DataLoader:
    """`fetch_threads` > 1 with `workers=0` decodes each batch's images on that many threads in the main
    process (`data.loader.ThreadedFetch`): on a CPU, worker processes take cores from the training step
    itself, while threads decode only between steps, on every core (benchmarks/bench_train.py measures both).
    Under torchrun each rank draws its share of the same permutation (`DistributedSampler` seeded with
    `shuffle_seed`, reseeded per epoch): the seed + epoch permutation a single process uses, so each step's
    global batch holds the items of the single-process step (`batch_size` is then the per-rank share).
    `pin_memory` (CUDA): batches land in page-locked memory, so the copy to the GPU is a DMA."""
    sampler: torch.utils.data.Sampler[int] | None = None
    ds = with_fetch_threads(ds, fetch_threads, workers)  # type: ignore[assignment]  (same items, order)
    if shuffle_seed is not None and lengths is not None and not (dist is not None and dist.enabled):
        batches = BucketedShuffledBatches(lengths, batch_size, shuffle_seed + epoch)  # data.bucket_by_length
        return DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                          pin_memory=pin_memory)
    if shuffle_seed is not None and dist is not None and dist.enabled:
        sampler = DistributedSampler(ds, dist.world_size, dist.rank, shuffle=True, seed=shuffle_seed)
        sampler.set_epoch(epoch)
    elif shuffle_seed is not None:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(shuffle_seed + epoch))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collate,
                      num_workers=workers, persistent_workers=False, pin_memory=pin_memory)


def train_fetch_threads(data: DataCfg, workers: int, distributed: bool) -> int:
    """Decode threads for training's loader (`runtime.fetch_threads`), only where the training transform
    draws no random numbers (threads would share one generator in a scheduling-dependent order: runs would
    not repeat) and one process has the cores (torchrun ranks already split them)."""
    return fetch_threads(workers) if data.augment == "none" and not distributed else 1


def train_step(model: torch.nn.Module, batch: dict[str, Any], dev: torch.device, precision: str,
               loss_fn: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, grad_clip: float, accum_steps: int = 1,
               dist: distributed.Dist | None = None) -> float | None:
    """One optimisation step (forward under autocast, loss, backward, clip, update); returns the loss, or
    None without touching the weights when the loss is not finite. `accum_steps` > 1 runs the model on that
    many micro-batches (see `accumulate.backward_in_parts`) with the loss still taken over the whole batch.
    Under torchrun (`dist`) a loss that is not finite on any rank makes every rank skip the step."""
    target = batch["target"].to(dev)
    weight = batch.get("sample_weight")
    weight = weight.to(dev) if weight is not None else torch.ones_like(target)
    optimizer.zero_grad(set_to_none=True)
    if accum_steps > 1 and len(target) > 1:
        loss = backward_in_parts(model, batch, dev, precision, loss_fn, target, weight, scaler, accum_steps)
        if loss is None:
            return None
    else:
        with autocast(dev, precision):
            pred = forward_batch(model, batch, dev)
        loss = loss_fn(pred, target, weight)
        finite = bool(torch.isfinite(loss))
        if not (distributed.all_true(dist, finite) if dist is not None else finite):
            return None
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def train(recipe: Recipe | None, data_dir: str | Path, out_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, images_dir: str | Path | None = None, device: str | None = None,
          progress: bool = True, strict: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, validate each epoch, keep the best model by val PLCC; returns the run summary.

    `recipe=None` is allowed with `resume`: the run continues with the recipe stored in its checkpoint (or in
    its recipe.yaml when it was killed before its first checkpoint). `overwrite` deletes an earlier run in
    `out_dir` (its model included) and starts anew. `strict` makes a bad row of the teacher's scores
    (train.distill.teacher) an error instead of a counted fallback to the true label.
    """
    out = Path(out_dir)
    dist, dev = distributed.setup(resolve_device(device))  # under torchrun: this rank's place and device
    if not dist.is_main:
        log, progress = (lambda _msg: None), False  # rank 0 speaks for the job
    start = distributed.rank0_first(dist, open_run_dir, out, resume=resume, overwrite=overwrite, log=log)
    ckpt_path = checkpoint_path(out)
    checkpoint = load_checkpoint(ckpt_path) if start.from_checkpoint else None
    stored = from_dict(Recipe, checkpoint["recipe"]) if checkpoint is not None else start.recipe
    if stored is not None:  # the run continues with the recipe it started with
        ignored = _diff(recipe.to_dict(), stored.to_dict()) if recipe is not None else []
        if ignored:
            log(f"--resume continues with the run's own recipe; ignoring: {', '.join(ignored)}")
        recipe = stored
    if recipe is None:
        raise EffiMiniVLMError("a recipe is needed to start a run (only --resume can do without one)")
    check_recipe_names(recipe)
    tc = recipe.train
    precision = resolve_compute_precision(tc.precision, dev)
    rank_batch = distributed.per_rank_batch(tc.batch_size, dist)
    if dist.enabled and (tc.grad_accum_steps > 1 or tc.unfreeze_per_epoch):
        raise EffiMiniVLMError("train.grad_accum_steps > 1 and train.unfreeze_per_epoch are not supported "
                               "under torchrun yet; set them to 1 and 0")
    seed_everything(tc.seed + dist.rank)  # dropout / augmentation differ per rank; rank 0 = single process

    train_rows, val_rows = read_train_val(data_dir)
    train_rows, weighting = weighted_train_rows(train_rows, tc, log)
    mu = weighting["mu"]
    store = ImageStore.for_prepared(data_dir, images_dir)  # local refs confined to the recorded roots
    train_rows, mixed = mix_train_rows(train_rows, tc, mu, store=store, strict=strict, log=log)

    model = create_model(recipe.model, pretrained=checkpoint is None)
    if tc.lexical_offset:  # the towers + head fine-tuned on top of the fitted words-only ridge
        model, train_rows, mixed["lexical_offset"] = with_lexical_offset(model, recipe, train_rows, log)
    model = model.to(dev)
    if "categories" in model.data_columns:  # a multi-label head's targets, joined from the meta files
        train_rows, val_rows = attach_categories(train_rows, data_dir), attach_categories(val_rows, data_dir)
    model.fit_task(train_rows)  # e.g. the label vocabulary of the TRAIN split (models.base)
    apply_recipe_freezing(model, tc)
    tokenizer = create_tokenizer(recipe.model)
    processor = model.processor(tokenizer)  # the architecture's own preprocessing (models.processor)
    draft = recipe.data.draft_decode  # JPEGs decoded near the model's size
    train_ds = processor.dataset(train_rows, store, "first", train=True, augment=recipe.data.augment,
                                 draft=draft)
    val_ds = processor.dataset(val_rows, store, recipe.data.images, draft=draft)  # first | mean, as evaluate
    lengths = text_lengths(train_ds) if recipe.data.bucket_by_length and not dist.enabled else None
    collate = processor.collator()
    workers = default_num_workers(recipe.data.num_workers)
    fetch = train_fetch_threads(recipe.data, workers, dist.enabled)
    val_loader = _loader(distributed.shard(val_ds, dist), collate, tc.eval_batch_size, workers,
                         shuffle_seed=None, fetch_threads=fetch)

    steps_per_epoch = math.ceil(len(train_ds) / tc.batch_size)
    if tc.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tc.max_steps_per_epoch)
    total_steps = steps_per_epoch * tc.epochs
    optimizer = make_adamw(param_groups(model, tc), tc.lr, dev, tc.fused_adamw)  # fused: same update
    unfreezing = GradualUnfreezing(model, tc.unfreeze_per_epoch) if tc.unfreeze_per_epoch else None
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, int(tc.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    loss_fn = build_loss(tc.loss, {"delta": tc.huber_delta})
    distiller, embed_stats = setup_embedding_distillation(
        tc, model, train_rows.column("parent_asin").to_pylist(), strict=strict, log=log)
    if distiller is not None:  # + the relational term of per-item teacher embeddings (--teacher DIR)
        loss_fn, mixed["distill_embeddings"] = distiller.wrap(loss_fn), embed_stats

    state = TrainState()
    records: list[dict[str, Any]] = []  # the metrics.jsonl lines, also kept in each checkpoint
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except ValueError as e:  # e.g. a checkpoint of a version with other parameter groups
            raise EffiMiniVLMError(f"{ckpt_path}: its optimizer state does not fit this run's parameter "
                                   f"groups ({e}); start anew with --overwrite") from None
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = TrainState(**checkpoint["state"])
        distributed.restore_rng(checkpoint, dist, tc.seed, state.epoch)
        if dist.is_main:
            records, changed = sync_metrics(out, checkpoint.get("metrics"), state.epoch)
            if changed:
                log(changed)
        best = (f"best val PLCC {state.best_plcc:.4f} at epoch {state.best_epoch}" if state.best_epoch
                else "no best model yet")
        log(f"resumed {out} after epoch {state.epoch} (step {state.step}, {best})")
    else:
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
        init_output_bias(model, output_start(train_rows))  # the mean rating (less the lexical offset's)
    log(f"train {len(train_ds)} / val {len(val_ds)} items, mu={mu:.4f}, {steps_per_epoch} steps/epoch, "
        f"device {dev}, precision {precision}, params {model.num_params() / 1e6:.2f}M "
        f"({model.num_params(trainable_only=True) / 1e6:.2f}M trainable)"
        + (f", {dist.world_size} processes x {rank_batch} items per step" if dist.enabled else ""))
    levers = apply_train_levers(model, dev, precision, depthwise_fp32=tc.depthwise_fp32,
                                channels_last=tc.image_channels_last,
                                fast_dropout=tc.fast_dropout)  # in place; state_dict unchanged
    stepper = CompiledOrEager(model, tc.compile, log)  # checkpoints keep saving the plain `model`
    levers += ["fused_adamw"] * bool(optimizer.defaults.get("fused")) + ["compile"] * stepper.active
    net = distributed.wrap_model(stepper if tc.compile else model, dist, dev)  # the step calls it (DDP...)

    with heap_reuse(tc.reuse_memory and dev.type == "cpu") as reused:  # scoped: see training.speed
        levers += ["reuse_memory"] * reused
        log(f"training levers: {', '.join(levers) or 'none'}")
        stop_reason = "max_epochs"
        if state.bad_epochs >= tc.patience and state.epoch > 0:
            stop_reason = "early_stopping"
        while state.epoch < tc.epochs and stop_reason != "early_stopping":
            epoch = state.epoch + 1
            if unfreezing is not None:
                opened = unfreezing.apply(epoch)  # train.unfreeze_per_epoch
                log(f"epoch {epoch} trains the head + {', '.join(opened) or 'no tower part'}")
            loader = _loader(train_ds, collate, rank_batch, workers, shuffle_seed=tc.seed, dist=dist,
                             epoch=epoch, lengths=lengths, pin_memory=dev.type == "cuda", fetch_threads=fetch)
            model.train()
            t0, seen, loss_sum, n_steps = time.perf_counter(), 0, 0.0, 0
            statuses: Counter[str] = Counter()
            term_sums: Counter[str] = Counter()  # each loss term of a mixture, unweighted
            bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch}/{tc.epochs}", unit="batch",
                       disable=not progress)
            for i, batch in enumerate(bar):
                if i >= steps_per_epoch:
                    break
                statuses.update(batch["image_status"])
                if distiller is not None:
                    distiller.ids = batch["item_id"]
                loss = train_step(net, batch, dev, precision, loss_fn, optimizer, scaler, tc.grad_clip,
                                  tc.grad_accum_steps, dist if dist.enabled else None)
                scheduler.step()
                if loss is None:
                    state.nonfinite_steps += 1  # skipped, counted, and fatal if it keeps happening
                    if state.nonfinite_steps > MAX_NONFINITE_STEPS:
                        raise EffiMiniVLMError(f"loss was not finite in {state.nonfinite_steps} steps; "
                                               "lower train.lr or use train.precision=fp32")
                    continue
                state.step += 1
                n_steps += 1
                seen += len(batch["item_id"])
                loss_sum += loss
                term_sums.update(loss_fn.last)
                bar.set_postfix(loss=f"{loss_sum / n_steps:.4f}",
                                samples_s=f"{seen / (time.perf_counter() - t0):.1f}")
            bar.close()
            train_seconds = time.perf_counter() - t0
            if dist.enabled:  # the job's figures: every rank's items, losses of every rank's share of a step
                seen_f, loss_sum, steps_f = distributed.sum_values(dist, [seen, loss_sum, n_steps])
                seen, n_steps = int(seen_f), int(steps_f)
                statuses = distributed.merged_status(distributed.gather(dist, statuses))
                term_sums = distributed.merged_status(distributed.gather(dist, term_sums))

            distributed.sync_buffers(model, dist)
            val = distributed.gather_inference(
                dist, run_inference(model, val_loader, dev, precision, progress=progress, desc="validate"))
            bad = int((~np.isfinite(val.pred)).sum())
            if bad:
                raise EffiMiniVLMError(f"epoch {epoch}: {bad} of {len(val.pred)} validation predictions are "
                                       "not finite (the model diverged); lower train.lr or use "
                                       "train.precision=fp32. "
                                       + (f"The last good state (epoch {state.epoch}) is in {ckpt_path}"
                                          if state.epoch else "No epoch finished, so there is no checkpoint"))
            metrics = _val_metrics(model.task, val.pred, val.target)
            plcc = metrics[SELECT_METRIC[model.task]]  # the selection metric (PLCC, or mAP for labels)
            improved = not math.isnan(plcc) and plcc > state.best_plcc
            record = {
                "epoch": epoch, "step": state.step, "lr": scheduler.get_last_lr()[0],
                "train_loss": loss_sum / max(n_steps, 1), "train_samples": seen,
                "train_loss_terms": {k: v / max(n_steps, 1) for k, v in term_sums.items()},
                "train_seconds": round(train_seconds, 3),
                "samples_per_s": round(seen / max(train_seconds, 1e-9), 2),
                "val_loss": metrics["loss"], **{f"val_{k}": v for k, v in metrics.items() if k != "loss"},
                "best": improved, "image_status": dict(statuses), "val_image_status": dict(val.image_status),
                "nonfinite_steps": state.nonfinite_steps,
            }
            if improved:
                state.best_plcc, state.best_epoch, state.bad_epochs = plcc, epoch, 0
                if dist.is_main:
                    if model.task == "multilabel":  # per-class thresholds from this epoch's val, saved too
                        model.set_thresholds(tune_thresholds(val.target, sigmoid(val.pred)))
                    rating = model.task == "rating"  # intervals from this val
                    publish_model(out, model, tokenizer, val.pred if rating else None, val.target)
            else:
                state.bad_epochs += 1
            state.epoch = epoch
            state.history.append({"epoch": epoch, "train_loss": record["train_loss"],
                                  "val_loss": record["val_loss"], f"val_{SELECT_METRIC[model.task]}": plcc})
            records.append(to_jsonable(record))
            rngs = distributed.gather(dist, rng_state())  # every rank's streams, for an exact --resume
            if dist.is_main:
                with (out / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(records[-1], allow_nan=False) + "\n")
                save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "state": state.__dict__, "rng": rngs[0], "recipe": recipe.to_dict(), "metrics": records,
                    **({"rng_ranks": rngs} if dist.enabled else {}),
                })
            distributed.barrier(dist)
            log(f"epoch {epoch}: train loss {record['train_loss']:.4f}, val loss {metrics['loss']:.4f}, "
                f"val {SELECT_METRIC[model.task]} {plcc:.4f}{' (best)' if improved else ''}, "
                f"{record['samples_per_s']} samples/s")
            if distributed.broadcast(dist, state.bad_epochs >= tc.patience):  # rank 0 decides for all
                stop_reason = "early_stopping"

    if state.best_epoch == 0:
        raise EffiMiniVLMError("no epoch produced a defined validation PLCC (constant predictions?); "
                               "no model was saved")
    summary = {"best_epoch": state.best_epoch, "best_val_plcc": state.best_plcc, "epochs_run": state.epoch,
               "select_metric": SELECT_METRIC[model.task],
               "stop_reason": stop_reason, "mu": mu, "missing_rating_number": weighting, "steps": state.step,
               "precision": precision, "device": str(dev), "model_dir": str(out / "model"),
               "levers": levers, "compile": stepper.report(tc.compile),
               "history": state.history, **mixed}
    if dist.is_main:
        write_json(summary, out / "train_summary.json")
    distributed.barrier(dist)
    distributed.teardown(dist)
    return summary


#: the validation metric a model's task keeps its best checkpoint by
SELECT_METRIC = {"rating": "plcc", "multilabel": "map"}


def _val_metrics(task: str, pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """The epoch's validation metrics for the model's task, with its loss under `loss`."""
    if task == "multilabel":
        return validation_metrics(target, pred)
    metrics = compute_metrics(pred, target)["overall"]
    metrics["loss"] = metrics.pop("huber")
    return metrics


def init_output_bias(model: torch.nn.Module, value: float) -> None:
    """Start the model's output at the train-split mean rating instead of 0 (`RatingModel.init_output_bias`:
    the first steps then learn differences between products rather than climbing from 0 to ~4)."""
    model.init_output_bias(value)  # type: ignore[operator]


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested recipe dicts (`key: a != b`)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} != {vb!r}")
    return out
