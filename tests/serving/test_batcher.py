"""The dynamic batcher alone (no model): merging, order, bounds, errors, draining; and a real server's
graceful shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from effiminivlm.serving.batcher import Batcher, QueueFull, ShuttingDown


def test_concurrent_requests_are_merged_into_batches_in_order():
    seen: list[list[int]] = []
    threads: set[str] = set()

    def run(items):
        seen.append(list(items))
        threads.add(threading.current_thread().name)
        return [x * 10 for x in items]

    async def main():
        b = Batcher(run, max_batch=8, max_wait_ms=50, max_queue=100)
        b.start()
        results = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(10)))
        await b.close()
        return results, b

    results, b = asyncio.run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(10)]  # each request gets its own, in order
    assert max(len(s) for s in seen) == 8 and sum(len(s) for s in seen) == 20
    assert len(seen) == 3  # 20 items, batches of at most 8: 8 + 8 + 4, not 10 separate calls
    assert b.stats.batches == 3 and b.stats.items == 20 and b.pending == 0
    assert len(threads) == 1 and threading.current_thread().name not in threads  # off the event loop


def test_max_batch_one_turns_batching_off():
    sizes: list[int] = []

    async def main():
        b = Batcher(lambda items: (sizes.append(len(items)), items)[1], max_batch=1, max_wait_ms=5)
        b.start()
        out = await asyncio.gather(*(b.submit([i]) for i in range(6)))
        await b.close()
        return out

    assert asyncio.run(main()) == [[i] for i in range(6)] and sizes == [1] * 6


def test_full_queue_refuses_at_once_and_close_finishes_accepted_work():
    gate = threading.Event()

    def run(items):
        gate.wait(5)
        return items

    async def main():
        b = Batcher(run, max_batch=2, max_wait_ms=0, max_queue=3)
        b.start()
        first = asyncio.ensure_future(b.submit([1, 2]))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await b.submit([3, 4])  # 2 pending + 2 > 3
        third = asyncio.ensure_future(b.submit([5]))
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.05)
        with pytest.raises(ShuttingDown):
            await b.submit([6])
        gate.set()
        await closing
        return await first, await third, b

    first, third, b = asyncio.run(main())
    assert first == [1, 2] and third == [5]  # accepted before close: finished, not dropped
    assert b.stats.rejected == 2 and b.pending == 0


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on():
    def run(items):
        if "bad" in items:
            raise ValueError("boom")
        return items

    async def main():
        b = Batcher(run, max_batch=4, max_wait_ms=0)
        b.start()
        with pytest.raises(ValueError, match="boom"):
            await b.submit(["bad"])
        ok = await b.submit(["good"])
        await b.close()
        return ok

    assert asyncio.run(main()) == ["good"]


def test_graceful_shutdown_finishes_in_flight_requests(make_app):
    from effiminivlm.serving.local import LocalServer

    app = make_app(max_wait_ms=0)
    real = app.state.batcher.run_batch
    started = threading.Event()

    def slow(items):
        started.set()
        time.sleep(1.0)
        return real(items)

    app.state.batcher.run_batch = slow
    server = LocalServer(app).start()
    answers: list[httpx.Response] = []
    client = threading.Thread(target=lambda: answers.append(
        httpx.post(server.url + "/v1/score", json=[{"title": "in flight"}], timeout=30)))
    try:
        client.start()
        assert started.wait(10)
        t0 = time.monotonic()
        server.stop()  # what SIGTERM does: stop accepting, let the request finish, then exit
        client.join(30)
    finally:
        server.stop()
    assert answers and answers[0].status_code == 200 and 1 <= answers[0].json()["items"][0]["score"] <= 5
    assert time.monotonic() - t0 < 30 and not server.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=2)
