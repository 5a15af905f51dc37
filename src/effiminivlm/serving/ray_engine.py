"""`effiminivlm predict --engine ray`: batch scoring on a Ray cluster (or a local Ray on this machine).

Why Ray Data: a catalog of tens of millions of products is more than one process can score in reasonable
time, and a team that outgrows one process already runs a cluster. The pipeline, streamed end to end:

    read         prepared Parquet files with `ray.data.read_parquet` (one read task per file / row group);
                 a LoViF input.csv or metadata files through the single-process readers (same bad-row log,
                 same duplicate handling), handed to Ray as Arrow
    repartition  blocks of exactly `batch_size` rows, in input order (`strict=True`)
    collate      Ray tasks: decode + resize the images and tokenise the text of one block into one batch,
                 with the model's own processor (`ProductDataset` + collate)
    score        an actor pool (`--num-actors`, CPU or GPU actors) that loads the model once per actor
    write        the driver streams the scores, in input order, into the submission CSV (or a Parquet of
                 `item_id, score` when `--out` ends in .parquet), via a temporary file and a rename

Identical scores: every batch holds the same rows as the single-process `predict` batch (rows
k*B .. k*B+B-1), goes through the same collate code and the same `forward_batch` under the same precision,
so the scores are the same numbers, bit for bit.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import pickle
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from effiminivlm.data.images import ImageStore
from effiminivlm.data.inputs import read_inputs
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.files import output_path, recover_dir
from effiminivlm.inference import SCORE_RANGE, forward_batch, image_mode
from effiminivlm.models.factory import load_model
from effiminivlm.models.optimize import optimize_for_inference
from effiminivlm.runtime import autocast, resolve_precision
from effiminivlm.serving.predict import non_finite_error, submission_row
from effiminivlm.serving.scorer import check_rates

#: The prepared-dataset columns scoring reads (the rest stay on disk).
COLUMNS = ("parent_asin", "category", "title", "features", "description", "images")


def import_ray() -> Any:
    """`ray` (with Ray Data), or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EffiMiniVLMError("--engine ray needs Ray: pip install 'effiminivlm[scale]'") from None
    return ray


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to the cluster at `address` ("auto", "ray://head:10001", "host:6379"), or start a local Ray
    with this machine's cores. Returns True when this call started it (the caller then shuts it down);
    a Ray already initialised in this process (a notebook, a test) is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": never an ambient RAY_ADDRESS
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EffiMiniVLMError(f"cannot start or reach Ray at {address or 'local'}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return True


@functools.lru_cache(maxsize=4)
def _preprocessing(model_dir: str, images: str) -> tuple[Any, str, bool]:
    """(the saved model's processor, image mode, whether it takes uint8 pixels), once per worker process."""
    model, tokenizer = load_model(model_dir)
    return model.processor(tokenizer), image_mode(model, images), bool(getattr(model, "plain_towers", False))


def collate_block(table: pa.Table, *, model_dir: str, images: str, store: ImageStore, batch_size: int,
                  draft: bool = False) -> dict[str, list[Any]]:
    """Ray task: rows -> one pickled collated batch per `batch_size` rows (the decode + tokenise stage);
    `draft`: the fast path's loading, as `predict` below fp32: JPEG draft decoding and, for a model with
    plain towers, uint8 pixels (the actor's fast model normalises them)."""
    processor, mode, plain = _preprocessing(model_dir, images)
    ds = processor.dataset(table, store, mode, draft=draft, raw_pixels=draft and plain)
    collate = processor.collator()
    payloads, sizes = [], []
    for start in range(0, len(ds), batch_size):
        batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
        # dense tensors travel as numpy; a sparse one (the hybrid probe's TF-IDF rows) pickles as itself
        plain = {k: (v.numpy() if isinstance(v, torch.Tensor) and v.layout == torch.strided else v)
                 for k, v in batch.items()}
        payloads.append(pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL))
        sizes.append(len(batch["item_id"]))
    return {"payload": payloads, "n": sizes}


class ScoreActor:
    """One model per actor, loaded once; scores the collated batches Ray hands it (in their order)."""

    def __init__(self, model_dir: str, device: str, precision: str, threads: int) -> None:
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = torch.device(device)
        self.precision = precision
        model, _ = load_model(model_dir)
        self.model = optimize_for_inference(model, self.device, precision)  # predict's fast path below fp32

    def __call__(self, batches: pa.Table) -> dict[str, list[Any]]:
        ids: list[str] = []
        scores: list[float] = []
        statuses: list[str] = []
        for payload in batches.column("payload").to_pylist():
            batch = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
                     for k, v in pickle.loads(payload).items()}
            with torch.no_grad(), autocast(self.device, self.precision):
                out = forward_batch(self.model, batch, self.device)
            pred = np.clip(out.float().cpu().numpy().astype(np.float64), *SCORE_RANGE)
            ids.extend(batch["item_id"])
            scores.extend(pred.tolist())
            statuses.extend(batch["image_status"])
        return {"item_id": ids, "score": scores, "image_status": statuses}


def _source(ray: Any, inputs: list[str], split: str | None, images_dir: str | None, strict: bool
            ) -> tuple[Any, ImageStore, str, dict[str, Any]]:
    """(Ray Dataset of rows in input order, image store, input kind, what reading skipped)."""
    first = Path(inputs[0]) if inputs else None
    if first is not None and len(inputs) == 1:
        recover_dir(first)
    if first is not None and len(inputs) == 1 and first.is_dir() and (first / "summary.json").is_file():
        files = ([first / "data.parquet"] if (first / "data.parquet").is_file()
                 else sorted((first / "data").glob("*.parquet")))
        if not files:
            raise DataError(f"{first}: no data.parquet or data/*.parquet")
        cols = list(COLUMNS) + (["split"] if split is not None else [])
        ds = ray.data.read_parquet([str(f.resolve()) for f in files]).select_columns(cols)
        if split is not None:
            ds = ds.map_batches(_keep_split, fn_kwargs={"split": split}, batch_format="pyarrow",
                                batch_size=None, zero_copy_batch=True)
        return ds, ImageStore.for_prepared(first.resolve(), images_dir), "prepared", {}
    src = read_inputs(inputs, split=split, images_dir=images_dir, strict=strict)
    return ray.data.from_arrow(src.table), src.store, src.kind, src.skipped


def _keep_split(table: pa.Table, split: str) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.equal(table.column("split"), split)).drop_columns(["split"])


def default_actors(ray: Any, device: str) -> int:
    """One actor per GPU for CUDA scoring; on CPUs half the cluster's cores (the rest decode and tokenise)."""
    res = ray.cluster_resources()
    if device == "cuda":
        return max(1, int(res.get("GPU", 0)))
    return max(1, int(res.get("CPU", 1)) // 2)


def predict_ray(model_dir: str | Path, inputs: list[str], out: str | Path, *, split: str | None = None,
                images_dir: str | None = None, images: str = "first", batch_size: int = 64,
                device: str | None = None, precision: str = "auto", strict: bool = False,
                address: str | None = None, num_actors: int | None = None, progress: bool = True,
                num_cpus: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Score `inputs` on Ray and write the submission (or a Parquet of scores); returns a summary like
    `serving.predict.predict`'s, plus the engine's own figures.

    `threads`: torch threads per CPU actor, default this process's `torch.get_num_threads()`, i.e. what a
    single-process `predict` here uses. CPU kernels split their sums by thread count (scores then differ in
    the last float32 bit), so the same thread count is what makes the scores bit-identical."""
    from effiminivlm.protocol.cost import stored_profile

    if device not in (None, "auto", "cpu", "cuda"):
        raise EffiMiniVLMError(f"--engine ray takes --device cpu, cuda or auto (one GPU per actor), got "
                               f"{device!r}")
    if threads is not None and threads < 1:
        raise EffiMiniVLMError(f"--threads must be >= 1, got {threads}")
    if num_actors is not None and num_actors < 1:
        raise EffiMiniVLMError(f"--num-actors must be >= 1, got {num_actors}")
    ray = import_ray()
    model_dir = str(Path(model_dir).resolve())
    model, _ = load_model(model_dir)  # the driver checks the folder and counts params / FLOPs once
    check_rates(model, model_dir)
    prof = stored_profile(model, model_dir)
    mode = image_mode(model, images)
    started = start_ray(address, num_cpus)
    try:
        cluster = ray.cluster_resources()
        auto_gpu = device in (None, "auto") and cluster.get("GPU", 0) > 0
        dev = "cuda" if device == "cuda" or auto_gpu else "cpu"
        prec = resolve_precision(precision, torch.device(dev))
        actors = num_actors or default_actors(ray, dev)
        cpus = float(cluster.get("CPU", 1))
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # the submission keeps the input order
        ctx.enable_progress_bars = progress
        ds, store, kind, skipped = _source(ray, inputs, split, images_dir, strict)
        # Actors reserve at most one CPU each and always leave one whole CPU free: Ray Data's read and
        # repartition tasks ask for one, and would wait forever behind actors that held every core.
        actor_cpus = max(0.0, min(1.0, (cpus - 1) / actors))
        scored = (ds.repartition(target_num_rows_per_block=batch_size, strict=True)
                  .map_batches(collate_block, batch_size=batch_size, batch_format="pyarrow", num_cpus=0.5,
                               fn_kwargs={"model_dir": model_dir, "images": images, "store": store,
                                          "batch_size": batch_size,
                                          "draft": prec != "fp32"})
                  .map_batches(ScoreActor, batch_size=1, batch_format="pyarrow",
                               compute=ray.data.ActorPoolStrategy(size=actors),
                               num_cpus=actor_cpus, num_gpus=1 if dev == "cuda" else 0,
                               fn_constructor_kwargs={"model_dir": model_dir, "device": dev,
                                                      "precision": prec,
                                                      "threads": threads or torch.get_num_threads()}))
        t0 = time.perf_counter()
        n, statuses, path = _write(scored, Path(out), prof.params_m, prof.flops_g, str(model_dir),
                                   f"no products to score in {', '.join(inputs)} (skipped: {skipped})")
        seconds = time.perf_counter() - t0
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, EffiMiniVLMError):
            raise type(cause)(str(cause)) from None
        raise
    finally:
        if started:
            ray.shutdown()
    return {"submission": str(path), "items": n, "input_kind": kind, "skipped_input": skipped,
            "image_status": dict(sorted(statuses.items())), "params_m": prof.params_m,
            "flops_g": prof.flops_g, "images": mode, "seconds": round(seconds, 3), "engine": "ray",
            "num_actors": actors, "threads_per_actor": threads or torch.get_num_threads(), "device": dev,
            "precision": prec,
            "items_per_s": round(n / max(seconds, 1e-9), 2)}


def _write(scored: Any, out: Path, params_m: float, flops_g: float, source: str, empty: str
           ) -> tuple[int, Counter[str], Path]:
    """Stream the scored rows into `out` (CSV submission, or Parquet when it ends in .parquet) by the output
    rule (`files.output_path`: a temporary file renamed when complete, or a FIFO / device written into): a
    failed run leaves no half submission; a run with non-finite scores (`check_finite`) or with no rows
    (DataError `empty`) publishes nothing, so an older file at `out` stays as it was."""
    n, statuses, bad = 0, Counter(), 0
    schema = pa.schema([("item_id", pa.string()), ("score", pa.float64())])
    with output_path(out) as tmp, contextlib.ExitStack() as stack:
        if out.suffix.lower() == ".parquet":
            pq_writer = stack.enter_context(pq.ParquetWriter(tmp, schema))

            def emit(ids: list[str], scores: list[float]) -> None:
                pq_writer.write_table(pa.table({"item_id": ids, "score": scores}, schema=schema))
        else:
            rows = csv.writer(stack.enter_context(tmp.open("w", newline="", encoding="utf-8")),
                              lineterminator="\n")
            rows.writerow(["item_id", "score", "params", "flops"])

            def emit(ids: list[str], scores: list[float]) -> None:
                rows.writerows(submission_row(i, s, params_m, flops_g)
                               for i, s in zip(ids, scores, strict=True))
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            ids, scores = batch.column("item_id").to_pylist(), batch.column("score").to_pylist()
            bad += sum(not math.isfinite(s) for s in scores)
            emit(ids, scores)
            statuses.update(batch.column("image_status").to_pylist())
            n += len(ids)
        stack.close()
        if bad:
            raise non_finite_error(bad, n, source)  # the temporary file is dropped, nothing published
        if n == 0:
            raise DataError(empty)
    return n, statuses, out
