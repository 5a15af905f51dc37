"""The scoring service under load on 127.0.0.1: throughput and latency, batching on vs off, and overload.

Starts `effiminivlm serve` in a subprocess (random-init model of `--recipe`, or `--model DIR`) on a free
loopback port, then N concurrent clients (asyncio + httpx, one listing per request, image as a path inside the
server's images folder) each send requests back to back. Every level is bounded in requests and seconds.
Prints, per concurrency and batching mode: requests/s, p50/p95/p99 latency, failed (non-200) and lost (no
answer) counts, the server's mean batch size, and the on/off throughput ratio. Then a burst far above the
queue limit: only 200s and 503s (with Retry-After) may come back, and the server must answer /healthz and
score again afterwards. The server is always stopped (SIGTERM, then SIGKILL after a grace period).

    .venv/bin/python benchmarks/bench_serve.py --recipe offline --concurrency 1 4 16 64 --requests 256
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from effiminivlm.serving.local import free_port


def make_model(recipe: str, out: Path) -> Path:
    """A random-init model of `recipe`, saved like a trained one (timing does not depend on the weights)."""
    import torch

    from effiminivlm.config import load_recipe
    from effiminivlm.models.factory import create_model, create_tokenizer
    from effiminivlm.training.loop import init_output_bias

    cfg = load_recipe(recipe).model
    torch.manual_seed(0)
    model = create_model(cfg, pretrained=False)
    init_output_bias(model, 3.0)
    model.save_pretrained(out, tokenizer=create_tokenizer(cfg))
    return out


def listings(catalog: Path, n: int) -> list[dict]:
    import ast
    import csv

    with open(catalog / "lovif" / "input.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:n]
    return [{"parent_asin": r["parent_asin"], "main_category": r["main_category"], "title": r["title"],
             "features": ast.literal_eval(r["features"]), "description": ast.literal_eval(r["description"]),
             "images": [r["image_paths"].split(";")[0]]} for r in rows]


class Server:
    """`effiminivlm serve` in a subprocess; stopped on exit whatever happened."""

    def __init__(self, model: Path, images: Path, **opts: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "effiminivlm.cli", "serve", "--model", str(model), "--port",
                str(self.port), "--images-dir", str(images)]
        for key, value in opts.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError("server did not become ready within 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def load(url: str, items: list[dict], concurrency: int, requests: int, seconds: float) -> dict:
    """`concurrency` clients, `requests` in total (or until `seconds`): latencies and outcome counts."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lost = 0
    sent = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker() -> None:
            nonlocal lost, sent
            while sent < requests and time.monotonic() < deadline:
                item = items[sent % len(items)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/v1/score", json=[item])
                except httpx.HTTPError:
                    lost += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                if resp.status_code == 503 and "retry-after" not in resp.headers:
                    statuses[-503] = statuses.get(-503, 0) + 1  # a 503 without Retry-After is a bug

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        health = (await client.get("/healthz")).json()
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"sent": sent, "ok": statuses.get(200, 0), "statuses": statuses, "lost": lost,
            "rps": statuses.get(200, 0) / wall, "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99)),
            "mean_batch": health.get("mean_batch", 0.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="offline", help="random-init model of this recipe (not with --model)")
    ap.add_argument("--model", default=None, help="a saved model folder instead")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=256, help="requests per level (bounded)")
    ap.add_argument("--seconds", type=float, default=30.0, help="time cap per level")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--burst", type=int, default=400, help="concurrent requests of the overload burst")
    ap.add_argument("--burst-queue", type=int, default=16, help="max queue of the overload server")
    args = ap.parse_args()

    from effiminivlm.data.synth import write_synth

    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        write_synth(Path(tmp) / "cat", n=64, seed=0, image_size=256, progress=False)
        items = listings(Path(tmp) / "cat", 64)
        model = Path(args.model) if args.model else make_model(args.recipe, Path(tmp) / "model")
        images = Path(tmp) / "cat" / "lovif" / "images"
        label = args.model or "random-init " + args.recipe
        print(f"model: {label}; {os.cpu_count()} CPUs (shared with other work: figures vary run to run); "
              f"{args.requests} requests or {args.seconds:g} s per level")
        print("| batching | clients | req/s | p50 ms | p95 ms | p99 ms | mean batch | failed | lost |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        rps: dict[tuple[str, int], float] = {}
        for mode, batch in (("on", args.max_batch), ("off", 1)):
            for conc in args.concurrency:
                with Server(model, images, max_batch=batch, max_wait_ms=args.max_wait_ms if batch > 1 else 0,
                            max_queue=max(256, 2 * conc)) as srv:
                    asyncio.run(load(srv.url, items, conc, 2 * conc, 10))  # warm-up: first batches are slow
                    r = asyncio.run(load(srv.url, items, conc, args.requests, args.seconds))
                failed = r["sent"] - r["ok"] - r["lost"]
                failures += failed + r["lost"]
                rps[(mode, conc)] = r["rps"]
                print(f"| {mode} ({batch}) | {conc} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | "
                      f"{r['p99']:.1f} | {r['mean_batch']:.2f} | {failed} | {r['lost']} |", flush=True)
        for conc in args.concurrency:
            ratio = rps[("on", conc)] / rps[("off", conc)]
            print(f"batching on/off throughput at {conc} clients: {ratio:.2f}x")

        print(f"\noverload: {args.burst} concurrent requests, max queue {args.burst_queue}")
        with Server(model, images, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                    max_queue=args.burst_queue) as srv:
            r = asyncio.run(load(srv.url, items, args.burst, args.burst, args.seconds * 2))
            health = httpx.get(srv.url + "/healthz", timeout=10)
            after = httpx.post(srv.url + "/v1/score", json=items[:1], timeout=30)
        other = {k: v for k, v in r["statuses"].items() if k not in (200, 503)}
        print(f"200: {r['statuses'].get(200, 0)}, 503 (with Retry-After): {r['statuses'].get(503, 0)}, "
              f"other: {other or 0}, lost: {r['lost']}; after the burst /healthz {health.status_code}, "
              f"score {after.status_code}")
        bad_burst = bool(other) or r["lost"] or health.status_code != 200 or after.status_code != 200
        if r["statuses"].get(503, 0) == 0:
            print("note: the burst never filled the queue (no 503); raise --burst or lower --burst-queue")
    print("\nresult:", "OK" if not failures and not bad_burst else
          f"FAILED ({failures} failed/lost below the queue limit; burst ok: {not bad_burst})")
    return 0 if not failures and not bad_burst else 1


if __name__ == "__main__":
    sys.exit(main())
