"""`effiminivlm predict` of a few items, timed as a whole process: what a user waits for the first scores.

Start-up dominates a small predict: importing torch / timm / transformers, building the model from its folder,
reading (and compiling) the OpenVINO graphs, counting params / FLOPs. Each run is a fresh
`python -m effiminivlm.cli predict` process timed from spawn to exit; the first run warms the caches (the
converted graphs, OpenVINO's compiled blobs, the folder's cost.json, the OS page cache) and is reported apart.
Prints one line per run and the median / min / max of the warm runs; `--importtime` adds the slowest imports
of one more run (`python -X importtime`) and which of torch, timm, torchvision and transformers it imported
(none, once the folder's fast path is recorded: docs/SPEED.md "Start-up").

    .venv/bin/python benchmarks/bench_startup.py --model runs/x/model              # 32 realistic items
    .venv/bin/python benchmarks/bench_startup.py --model M --inputs input.csv --runs 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
DEV = (Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2023-fashion-dev"
       / "meta_Amazon_Fashion.jsonl")


def predict_argv(model: str, inputs: list[str], out: str, extra: list[str]) -> list[str]:
    """The timed command: this interpreter running this checkout's CLI."""
    return [sys.executable, "-m", "effiminivlm.cli", "predict", *inputs, "--model", model, "--out", out,
            *extra]


def child_env() -> dict[str, str]:
    """The environment of a timed process: this checkout's sources first, progress bars off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TQDM_DISABLE", "1")
    return env


def time_process(argv: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one run of `argv` (fails loudly with its stderr when the command fails)."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


#: What a warm `predict` of a recorded folder should never import (docs/SPEED.md "Start-up").
HEAVY = ("torch", "timm", "torchvision", "transformers")


def slowest_imports(argv: list[str], env: dict[str, str], top: int = 12
                    ) -> tuple[list[tuple[float, str]], list[str]]:
    """((cumulative seconds, module) of the `top` slowest top-level imports of one run of `argv`, the
    `HEAVY` packages it imported)."""
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True,
                          check=False)
    rows, names = [], set()
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2]
            names.add(name.strip())
            if len(name) - len(name.lstrip()) <= 3:  # top-level imports only (deeper ones are inside them)
                rows.append((int(parts[1]) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:top], [h for h in HEAVY if h in names]


def summary(seconds: list[float]) -> str:
    return (f"median {statistics.median(seconds):.2f} s, min {min(seconds):.2f} s, max {max(seconds):.2f} s "
            f"over {len(seconds)} warm runs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a saved model folder")
    ap.add_argument("--inputs", nargs="*", help="what predict reads (default: 32 realistic items)")
    ap.add_argument("--items", type=int, default=32, help="items of the generated realistic input")
    ap.add_argument("--runs", type=int, default=5, help="warm runs timed (after one warming run)")
    ap.add_argument("--importtime", action="store_true", help="also list the slowest imports of one run")
    ap.add_argument("--predict-args", default="", help="extra predict options, e.g. '--precision fp32'")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    inputs = args.inputs
    if not inputs:
        from effiminivlm.data.realistic import write_hi_res_catalog

        texts = DEV if DEV.is_file() else None
        write_hi_res_catalog(work / "items", args.items, texts=texts)
        inputs = [str(work / "items" / "meta_HiRes.jsonl")]
    cmd = predict_argv(args.model, inputs, str(work / "submission.csv"), args.predict_args.split())
    env = child_env()
    print(f"warming run: {time_process(cmd, env):.2f} s")
    warm = []
    for i in range(args.runs):
        warm.append(time_process(cmd, env))
        print(f"run {i + 1}: {warm[-1]:.2f} s")
    print(f"predict whole process: {summary(warm)}")
    if args.importtime:
        slowest, heavy = slowest_imports(cmd, env)
        for sec, name in slowest:
            print(f"  import {name}: {sec:.2f} s")
        print(f"  imported of {', '.join(HEAVY)}: {', '.join(heavy) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
