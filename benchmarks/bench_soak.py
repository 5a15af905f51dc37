"""Soak: the scoring service under 64 clients for 10 minutes, its resident memory sampled all along.

Starts `effiminivlm serve` (a random-init model of `--recipe`, or `--model DIR`) like `bench_serve.py`, then
`--clients` concurrent clients send requests back to back until `--minutes` pass or `--requests` were sent
(a bound either way). Each request is one to four listings (sizes vary, so batches and padded lengths vary
as they do in production); every `--abuse-every`-th request is a hostile one (nesting 100,000 deep, bytes
that are not UTF-8) that must get a 4xx. The server's RSS (/proc/PID/status VmRSS) is sampled every
`--sample-s` seconds, after a sweep that sends one request of each size 1..64 (one model batch of each
size: the shape caches of oneDNN / OpenVINO fill there, not during the measurement). Prints failed (a 5xx
or an unexpected status), lost (no answer), the RSS at start /
after warmup / end, and the least-squares RSS slope in MB/min after `--warmup-min` minutes: a leak shows as
a slope that does not flatten; a bounded cache as growth that stops.

The figures that matter (failed, lost, slope) do not depend on the machine's speed; requests/s does, so
quote it with the machine's load.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_soak.py --recipe tiny --clients 64 --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import Server, listings, make_model  # noqa: E402  (a sibling script, not a package)

ABUSE = [(b"[" * 100_000 + b"]" * 100_000, 422), (b'[{"title": "\xff\xfe"}]', 400)]


def rss_mb(pid: int) -> float:
    """The resident set of process `pid` in MB (VmRSS), or NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def slope_mb_per_min(samples: list[tuple[float, float]], after_s: float) -> float:
    """Least-squares slope of RSS (MB) over time (minutes) for the samples taken after `after_s`."""
    pts = np.array([(t, r) for t, r in samples if t >= after_s and np.isfinite(r)])
    if len(pts) < 3:
        return float("nan")
    return float(np.polyfit(pts[:, 0] / 60.0, pts[:, 1], 1)[0])


async def soak(url: str, pid: int, items: list[dict], args: argparse.Namespace) -> dict:
    """Run the clients and the RSS sampler; returns counts, samples and statuses."""
    counts = {"sent": 0, "ok": 0, "abuse_ok": 0, "failed": 0, "lost": 0}
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    lost: list[str] = []  # when and how each lost request failed: what a diagnosis needs
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    deadline = start + args.minutes * 60
    rng = random.Random(0)
    # Idle connections are dropped by the client well before the server would close them (its keep-alive
    # timeout): a request sent on a connection the server is closing at that moment would be reset.
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients,
                          keepalive_expiry=2.0)

    async def sampler() -> None:
        while time.monotonic() < deadline + 1:
            samples.append((time.monotonic() - start, rss_mb(pid)))
            await asyncio.sleep(args.sample_s)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            while counts["sent"] < args.requests and time.monotonic() < deadline:
                counts["sent"] += 1
                n = counts["sent"]
                abuse = args.abuse_every and n % args.abuse_every == 0
                try:
                    if abuse:
                        body, want = ABUSE[(n // args.abuse_every) % len(ABUSE)]
                        resp = await client.post("/v1/score", content=body,
                                                 headers={"content-type": "application/json"})
                    else:
                        k = rng.randint(1, 4)
                        want = 200
                        resp = await client.post("/v1/score", json=[items[(n + j) % len(items)]
                                                                    for j in range(k)])
                except httpx.HTTPError as e:
                    counts["lost"] += 1
                    what = f"{type(e).__name__} ({'hostile' if abuse else 'listings'})"
                    errors[what] = errors.get(what, 0) + 1
                    lost.append(f"t={time.monotonic() - start:.1f}s request {n}: {e!r} "
                                f"(cause {e.__cause__ or e.__context__!r})")
                    continue
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                if resp.status_code != want and resp.status_code != 503:  # 503 + Retry-After is allowed
                    counts["failed"] += 1
                elif resp.status_code == want:
                    counts["abuse_ok" if abuse else "ok"] += 1

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        sampling.cancel()
        health = (await client.get("/healthz")).json()
    wall = time.monotonic() - start
    return {**counts, "statuses": statuses, "errors": errors, "lost_detail": lost[:20], "samples": samples,
            "seconds": wall, "health": health}


async def sweep(url: str, items: list[dict], max_batch: int) -> None:
    """Warm the server's shape caches: one request of each size 1..max_batch, sent alone so that each is one
    model batch of exactly that size (oneDNN and OpenVINO keep compiled kernels per input shape, a cache
    with a fixed capacity: RSS grows while new shapes arrive, then stays flat)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for offset in (0, 64):
            for k in range(1, max_batch + 1):
                await client.post("/v1/score", json=[items[(offset + j) % len(items)] for j in range(k)])


def drain(stream: object, tail: list[str]) -> threading.Thread:
    """Read the server's stderr as it comes (an undrained pipe would block the server), keeping its tail."""
    def run() -> None:
        for line in stream:  # type: ignore[attr-defined]
            tail.append(line.rstrip())
            del tail[:-20]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="tiny", help="random-init model of this recipe (not with --model)")
    ap.add_argument("--model", default=None, help="a saved model folder instead")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--requests", type=int, default=200_000, help="bound on requests sent")
    ap.add_argument("--warmup-min", type=float, default=2.0, help="minutes before the slope is measured")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--abuse-every", type=int, default=25, help="every Nth request is hostile (0: none)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the shape-cache warmup")
    ap.add_argument("--json", default=None, help="also write the RSS samples and counts here")
    args = ap.parse_args()

    from effiminivlm.data.synth import write_synth

    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        write_synth(Path(tmp) / "cat", n=128, seed=0, image_size=256, progress=False)
        items = listings(Path(tmp) / "cat", 128)
        model = Path(args.model) if args.model else make_model(args.recipe, Path(tmp) / "model")
        images = Path(tmp) / "cat" / "lovif" / "images"
        stderr: list[str] = []
        with Server(model, images, max_queue=max(256, 8 * args.clients), precision=args.precision) as srv:
            drain(srv.proc.stderr, stderr)
            before = round(rss_mb(srv.proc.pid), 1)
            if args.sweep:
                asyncio.run(sweep(srv.url, items, 64))
            r = asyncio.run(soak(srv.url, srv.proc.pid, items, args))
    samples = r.pop("samples")
    rss = [m for _, m in samples if np.isfinite(m)]
    warm = [m for t, m in samples if t >= args.warmup_min * 60 and np.isfinite(m)]
    slope = slope_mb_per_min(samples, args.warmup_min * 60)
    later = slope_mb_per_min(samples, (args.warmup_min + args.minutes) * 30)  # the second half of the rest
    summary = {"model": args.model or f"random-init {args.recipe}", "clients": args.clients,
               "minutes": round(r["seconds"] / 60, 2), "sent": r["sent"], "ok": r["ok"],
               "hostile_refused_4xx": r["abuse_ok"], "failed": r["failed"], "lost": r["lost"],
               "statuses": r["statuses"], "client_errors": r["errors"], "lost_detail": r["lost_detail"],
               "requests_per_s_busy_machine": round(r["sent"] / r["seconds"], 1),
               "rss_mb_before_sweep": before,
               "rss_mb_start": round(rss[0], 1) if rss else None,
               "rss_mb_after_warmup": round(warm[0], 1) if warm else None,
               "rss_mb_end": round(rss[-1], 1) if rss else None,
               "rss_mb_max": round(max(rss), 1) if rss else None,
               "slope_mb_per_min_after_warmup": round(slope, 3),
               "slope_mb_per_min_second_half": round(later, 3),
               "mean_batch": r["health"].get("mean_batch")}
    print(json.dumps(summary, indent=2))
    print("server stderr (tail):", *stderr[-5:], sep="\n  ")
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "samples": samples}, indent=1) + "\n")
    ok = r["failed"] == 0 and r["lost"] == 0 and slope <= 1.0
    print("result:", "OK" if ok else "FAILED (failed/lost > 0 or RSS slope > 1 MB/min after warmup)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
