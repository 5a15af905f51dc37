"""Fast-path loading: length-sorted batches with bucketed padding, rows carried through so outputs can be put
back in input order, and the options that say how images are decoded.

Why: on a CPU the text tower's cost grows with the padded length of a batch, and real product texts vary from
20 to 256 tokens, so a batch padded to its longest text is ~35% padding. Sorting rows by text length before
batching makes each batch's texts about equally long (padding nearly vanishes) while every item still gets
exactly its own tokens; the attention mask keeps the predictions those of the unsorted order. The batches then
leave in length order, so each batch carries its rows (`"row"`) and `inference.run_inference` restores the
input order of every output. Character length is the sort key: it is known without tokenising (the collator
tokenises once, in the worker), and it orders texts by token count closely enough for bucketing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from effiminivlm.data.batches import length_sorted_batches, restore_order
from effiminivlm.data.dataset import Collator, ProductDataset, Sample

__all__ = ["BucketedShuffledBatches", "LengthSortedBatches", "RowCollator", "RowDataset", "ThreadedFetch",
           "length_sorted_batches", "restore_order", "text_lengths", "with_fetch_threads"]


def text_lengths(dataset: ProductDataset) -> list[int]:
    """Character length of every row's model text (the paper's template): the bucketing key."""
    return [len(dataset.text(i)) for i in range(len(dataset))]


class LengthSortedBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of row indices sorted by `lengths` (longest first), cut every `batch_size` rows.

    Longest first: the biggest batch runs first, so a memory problem shows at once and the allocator is sized
    for the rest. `window` (rows, default: all) sorts only within consecutive windows, which bounds how far
    an output can lag its input for streaming callers; a stable sort keeps equal lengths in input order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, window: int | None = None) -> None:
        self.batches = length_sorted_batches(lengths, batch_size, window)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class RowDataset(torch.utils.data.Dataset[tuple[int, Sample]]):
    """`dataset` with each sample paired with its row index, for `RowCollator`."""

    def __init__(self, dataset: ProductDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Sample]:
        return i, self.dataset[i]


class ThreadedFetch(torch.utils.data.Dataset[Any]):
    """`dataset` whose batches are fetched on `threads` threads (the DataLoader's `__getitems__` hook), for
    loading in the main process (`num_workers=0`).

    Why: with no worker processes, a batch's JPEG decodes and resizes ran one after the other on one core
    while the other cores idled between forward passes. Pillow releases the GIL while it decodes and
    resamples, so threads decode a batch's images in parallel with no process start, no pickling of samples
    and no second copy of the model's memory; the model then gets every core for the forward. Items come
    back in the order asked (`map`), so batches are the same as without threads. The pool starts on first
    use and is not pickled (worker processes never see it: use it only with `num_workers=0`).
    """

    def __init__(self, dataset: torch.utils.data.Dataset[Any], threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.dataset = dataset
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    def __getitems__(self, rows: Sequence[int]) -> list[Any]:
        if self.threads == 1 or len(rows) < 2:
            return [self.dataset[i] for i in rows]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="effiminivlm-fetch")
        return list(self._pool.map(self.dataset.__getitem__, rows))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)  # absent when __init__ refused its arguments
        if pool is not None:
            pool.shutdown(wait=False)


def with_fetch_threads(dataset: torch.utils.data.Dataset[Any], threads: int, num_workers: int
                       ) -> torch.utils.data.Dataset[Any]:
    """`dataset` as a DataLoader with `num_workers` should read it: wrapped in `ThreadedFetch` when loading
    runs in the main process and more than one thread is asked for, else unchanged."""
    return ThreadedFetch(dataset, threads) if threads > 1 and num_workers == 0 else dataset


class RowCollator:
    """`Collator` plus `"row"` [B] (int64): the input row of each batch item, whatever order batches run."""

    def __init__(self, collator: Collator) -> None:
        self.collator = collator

    def __call__(self, items: list[tuple[int, Sample]]) -> dict[str, Any]:
        out = self.collator([s for _, s in items])
        out["row"] = torch.tensor([i for i, _ in items], dtype=torch.long)
        return out


class BucketedShuffledBatches(torch.utils.data.Sampler[list[int]]):
    """Training batches of similar text length in a random order (bucketed padding for the training step).

    Rows are shuffled with `seed`, cut into pools of `pool_batches` batches, each pool is sorted by length and
    cut into batches, and the batches are shuffled again: every epoch still sees every row once in a fresh
    order, but a batch's texts are about equally long, so little of the step's compute is padding. The
    same (lengths, batch_size, seed) always gives the same batches (resume and reruns are reproducible)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, pool_batches: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(lengths), generator=gen).tolist()
        pool = batch_size * max(1, pool_batches)
        batches: list[list[int]] = []
        for start in range(0, len(order), pool):
            rows = sorted(order[start:start + pool], key=lambda i: -lengths[i])
            batches += [rows[k:k + batch_size] for k in range(0, len(rows), batch_size)]
        self.batches = [batches[k] for k in torch.randperm(len(batches), generator=gen).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
