"""Dynamic batching: items of concurrent requests gathered into model batches, run off the event loop.

Why: one forward pass over 32 items costs far less than 32 passes over one, and a catalog system sends
listings one at a time from many connections. The first waiting item waits at most `max_wait_ms` for
company; a batch never exceeds `max_batch`. The model runs in ONE worker thread (one model in memory, no
two forward passes fighting for the same cores), so the event loop keeps accepting and answering requests.
The queue is bounded in items: a request that would overflow it is refused at once (`QueueFull` -> 503 with
Retry-After) instead of waiting longer than any client would. `close()` refuses new work and finishes
everything already accepted (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """The queue has no room for the request's items."""


class ShuttingDown(Exception):
    """The batcher no longer accepts work."""


@dataclass
class BatchStats:
    """Counters for /healthz and the benchmark: how well requests were merged."""

    batches: int = 0
    items: int = 0
    rejected: int = 0
    timed_out: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "items": self.items, "rejected_items": self.rejected,
                "timed_out_items": self.timed_out,
                "mean_batch": round(self.items / self.batches, 3) if self.batches else 0.0}


class Batcher(Generic[T, R]):
    """`await submit(items)` -> results in order; `run_batch(items) -> results` runs in the worker thread."""

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R]], *, max_batch: int = 32,
                 max_wait_ms: float = 10.0, max_queue: int = 256) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._pending = 0  # queued + running items: what the bound applies to
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="effiminivlm-model")
        self._closing = False

    @property
    def pending(self) -> int:
        """Items accepted and not yet answered."""
        return self._pending

    @property
    def closing(self) -> bool:
        """True once `close()` began: new work is refused."""
        return self._closing

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the worker task on the running loop (FastAPI lifespan)."""
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="effiminivlm-batcher")

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue `items`; their results in order. Raises QueueFull / ShuttingDown without queueing any."""
        if self._closing or self._wake is None:
            raise ShuttingDown("the server is shutting down")
        if self._pending + len(items) > self.max_queue:
            self.stats.rejected += len(items)
            raise QueueFull(f"{self._pending} items queued; room for {self.max_queue}")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending += len(items)
        for item, fut in zip(items, futures, strict=True):
            self._queue.append((item, fut))
        self._wake.set()
        try:
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:  # request timed out or client gone: queued items are dropped
            for fut in futures:
                if fut.cancel():
                    self.stats.timed_out += 1
            raise

    async def _worker(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            deadline = time.monotonic() + self.max_wait
            while len(self._queue) < self.max_batch and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            batch: list[tuple[T, asyncio.Future[R]]] = []
            while self._queue and len(batch) < self.max_batch:
                item, fut = self._queue.popleft()
                if fut.cancelled():
                    self._pending -= 1
                    continue
                batch.append((item, fut))
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [b[0] for b in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except Exception as e:  # noqa: BLE001 - handed to every waiting request, the worker goes on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
            else:
                for (_, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
            finally:
                self._pending -= len(batch)
                self.stats.batches += 1
                self.stats.items += len(batch)
                self.stats.batch_sizes[len(batch)] = self.stats.batch_sizes.get(len(batch), 0) + 1

    async def close(self) -> None:
        """Refuse new work, finish every accepted item, stop the worker."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
