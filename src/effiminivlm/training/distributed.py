"""Multi-process training under torchrun: process group, rank guards, and the reductions `train` needs.

Why a module of its own: `training.loop` stays one readable loop whatever the world size. Under
`torchrun --nproc_per_node N [--nnodes M ...] effiminivlm train ...` every process runs the same `train`;
this module tells each one who it is (from torchrun's RANK / WORLD_SIZE / LOCAL_RANK variables), sets up
DDP (gloo on CPU, NCCL on CUDA, one GPU per local rank) and gives the few collective operations the loop
uses: sum of metrics, gather of validation predictions, one decision broadcast from rank 0, barrier.
Without torchrun (or with WORLD_SIZE=1) `Dist` is the single process and every operation is a no-op, so
single-process training does not change by a single bit.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch.utils.data import Dataset, Subset

from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.inference import InferenceResult
from effiminivlm.training.checkpoint import set_rng_state

#: How long a collective waits for the slowest rank before failing (a dead rank must not hang the others).
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; `world_size == 1` is the plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder (recipe, metrics, checkpoint, model, summary) and logs."""
        return self.rank == 0


def env_dist() -> Dist:
    """Rank, world size and local rank from torchrun's environment (the single process without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise EffiMiniVLMError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (torchrun sets them): {e}"
                               ) from None
    if world < 1 or not 0 <= rank < world:
        raise EffiMiniVLMError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return Dist(rank, world, local)


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun -> (Dist, this rank's device).

    CUDA ranks each take the GPU of their local rank and talk over NCCL; CPU ranks use gloo. An explicit
    `cuda:K` device is only honoured by a single process (under torchrun the local rank chooses the GPU).
    """
    dist = env_dist()
    if not dist.enabled:
        return dist, device
    if device.type == "cuda":
        if dist.local_rank >= torch.cuda.device_count():
            raise EffiMiniVLMError(f"local rank {dist.local_rank} has no GPU ({torch.cuda.device_count()} "
                                   "visible): use --nproc_per_node <= the GPUs per node, or --device cpu")
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        tdist.init_process_group(backend=backend, timeout=TIMEOUT, **kwargs)
    if tdist.get_world_size() != dist.world_size:
        raise EffiMiniVLMError(f"process group has {tdist.get_world_size()} ranks, WORLD_SIZE says "
                               f"{dist.world_size}")
    return dist, device


def teardown(dist: Dist) -> None:
    """Leave the process group (torchrun's processes then exit cleanly)."""
    if dist.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap_model(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: `model` itself, or DDP around it (gradients averaged over ranks).

    `find_unused_parameters`: a batch whose items have no usable image skips the image tower on that rank
    only, and DDP must not wait for gradients that rank never produces.
    """
    if not dist.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def per_rank_batch(global_batch: int, dist: Dist) -> int:
    """Each rank's share of `train.batch_size`, which stays the global batch whatever the world size."""
    if global_batch % dist.world_size:
        raise EffiMiniVLMError(f"train.batch_size={global_batch} is the global batch and must be divisible "
                               f"by the number of processes ({dist.world_size})")
    return global_batch // dist.world_size


def sum_values(dist: Dist, values: list[float]) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64; the inputs themselves on a single process)."""
    if not dist.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)  # gloo reduces CPU tensors; NCCL builds copy through GPU
    return t.tolist()


def all_true(dist: Dist, flag: bool) -> bool:
    """True only when `flag` holds on every rank (e.g. a finite loss: all ranks skip a step together)."""
    if not dist.enabled:
        return flag
    return sum_values(dist, [0.0 if flag else 1.0])[0] == 0.0


def gather(dist: Dist, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (pickled; for small per-epoch results, not tensors of a model)."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, obj)
    return out


def broadcast(dist: Dist, obj: Any) -> Any:
    """Rank 0's `obj` on every rank: one decision (start, stop) taken once for the whole job."""
    if not dist.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    """Wait for every rank (e.g. until rank 0 has written the checkpoint the others may read)."""
    if dist.enabled:
        tdist.barrier()


def sync_buffers(model: torch.nn.Module, dist: Dist) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so all ranks validate one model.

    DDP broadcasts buffers at the start of each training forward, but the last step's update stays local.
    """
    if not dist.enabled:
        return
    for buf in model.buffers():
        tdist.broadcast(buf.data, src=0)


def rank0_first(dist: Dist, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `fn` on rank 0 only and hand its result (or its user error, as one line) to every rank.

    Why: deciding what to do with a run folder writes to it (repairs, cleanup), so one rank must do it;
    if it refuses (EffiMiniVLMError), every rank must stop with the same message instead of waiting forever.
    """
    if not dist.enabled:
        return fn(*args, **kwargs)
    result: tuple[str, Any] = ("ok", None)
    if dist.is_main:
        try:
            result = ("ok", fn(*args, **kwargs))
        except EffiMiniVLMError as e:
            result = ("error", (type(e), str(e)))
    result = broadcast(dist, result)
    if result[0] == "error":
        kind, msg = result[1]
        raise kind(msg)
    return result[1]


def shard(ds: Dataset[Any], dist: Dist) -> Dataset[Any]:
    """This rank's contiguous share of an evaluation dataset (all of it on a single process); the shares
    of ranks 0..N-1 in order are the dataset in order, so gathered predictions keep their row order."""
    if not dist.enabled:
        return ds
    bounds = np.linspace(0, len(ds), dist.world_size + 1).round().astype(int)  # type: ignore[arg-type]
    return Subset(ds, range(int(bounds[dist.rank]), int(bounds[dist.rank + 1])))


def gather_inference(dist: Dist, res: InferenceResult) -> InferenceResult:
    """Every rank's share of a validation pass, joined in rank order (= row order of `shard`): each rank
    then computes the same metrics from the same predictions and takes the same decisions."""
    if not dist.enabled:
        return res
    parts: list[InferenceResult] = gather(dist, res)
    out = InferenceResult(seconds=max(p.seconds for p in parts))
    for p in parts:
        out.item_id.extend(p.item_id)
        out.category.extend(p.category)
        out.image_status.update(p.image_status)
    out.pred, out.target, out.rating_number = (np.concatenate([getattr(p, k) for p in parts])
                                               for k in ("pred", "target", "rating_number"))
    return out


def restore_rng(checkpoint: dict[str, Any], dist: Dist, seed: int, epoch: int) -> None:
    """Each rank's RNG streams as the checkpoint saved them (`rng_ranks`, one per rank), so a resumed
    torchrun job draws the same dropout masks as one never stopped. A checkpoint from another world size
    has no stream for some ranks: rank 0 takes the saved main stream, the others a fresh seed per epoch."""
    ranks = checkpoint.get("rng_ranks")
    if ranks is not None and len(ranks) == dist.world_size:
        set_rng_state(ranks[dist.rank])
        return
    set_rng_state(checkpoint["rng"])
    if dist.rank:
        fresh = seed + dist.rank + 7919 * epoch
        random.seed(fresh)
        np.random.seed(fresh)
        torch.manual_seed(fresh)


def merged_status(counts: list[Counter[str]]) -> Counter[str]:
    """Sum of per-rank image-status counters."""
    return sum(counts, Counter())
