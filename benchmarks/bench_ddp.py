"""Training throughput under torchrun: `effiminivlm train` with 1 and 2 processes (DDP, gloo on CPU), one run.

Builds and prepares a synthetic catalog, then runs the real command under
`python -m torch.distributed.run --nproc_per_node N` on 127.0.0.1 with the same global batch, and reads the
job's samples/s (all ranks' items over the epoch's training seconds) from metrics.jsonl. The first epoch
pays warm-up (allocations, first gloo buckets), so the last epoch's figure is the one compared. Each rank
gets cores / N threads (or `--threads`), so the comparison is "the same machine, split into N processes".

    .venv/bin/python benchmarks/bench_ddp.py --recipe tiny --items 800 --epochs 2 --procs 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from effiminivlm.data.prepare import prepare
from effiminivlm.data.synth import write_synth

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(procs: int, prep: Path, out: Path, args: argparse.Namespace) -> dict:
    threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "-m", "effiminivlm.cli", "train", "--data",
           str(prep), "--out", str(out), "--recipe", args.recipe, "--device", "cpu", "--epochs",
           str(args.epochs), "--batch-size", str(args.batch_size), "--set", "data.num_workers=0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{procs} process(es) failed:\n{done.stderr[-3000:]}")
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return {"wall": wall, "threads": threads, **last}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--items", type=int, default=800, help="catalog size (train split = 80%%)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="global batch, kept for every N")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=0, help="threads per rank (default: cores / N); 1 avoids "
                    "OpenMP oversubscription on a machine other jobs share")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_synth(t / "cat", n=args.items, seed=0, progress=False)
        prepare([t / "cat" / "meta_Synthetic.jsonl"], t / "prep", frac=1.0, min_per_category=0)
        print(f"recipe {args.recipe}: {args.items} items, global batch {args.batch_size}, {args.epochs} "
              f"epochs, {os.cpu_count()} CPUs (shared machine: figures vary with other load)")
        base = None
        for n in args.procs:
            r = run(n, t / "prep", t / f"run{n}", args)
            base = base or r["samples_per_s"]
            print(f"{n} process(es) x {r['threads']} thread(s): epoch {r['epoch']} {r['samples_per_s']:.1f} "
                  f"samples/s ({r['samples_per_s'] / base:.2f}x), train loss {r['train_loss']:.4f}, "
                  f"wall {r['wall']:.1f} s incl. start-up and validation")


if __name__ == "__main__":
    main()
