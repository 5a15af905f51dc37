"""Memory and time of `prepare` on one huge valid JSON line: a gzip holding a single item whose title is
several GB. Prints the compressed size, the wall time and the peak RSS of the `prepare` process.

Why a process-level figure: the bound to check is the whole process's (`prepare` is refused while reading,
before the line is held whole or parsed), so it is `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` of a
separate `python -m effiminivlm.cli prepare` run, not a timer inside a test.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_huge_line.py --title-gb 3
    PYTHONPATH=src .venv/bin/python benchmarks/bench_huge_line.py --title-gb 3 --timeout 60 --src OTHER/src
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def write_huge_line(path: Path, title_bytes: int) -> int:
    """A gzip of one valid metadata line with a `title_bytes`-long title; returns the compressed size.

    The title repeats a 4 KiB block of varied words, so the file compresses like text, not like zeros."""
    words = [f"word{i:04d}" for i in range(410)]
    block = (" ".join(words)[:4096]).encode()
    head = b'{"parent_asin": "HUGE1", "main_category": "Synthetic", "average_rating": 4.0, ' \
           b'"rating_number": 12, "title": "'
    tail = b'", "features": ["a"], "description": ["b"], "images": []}\n'
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(path, "wb") as fh:
        fh.write(comp.compress(head))
        block_run = block * 256  # 1 MiB
        left = title_bytes
        while left > 0:
            piece = block_run[:left]
            fh.write(comp.compress(piece))
            left -= len(piece)
        fh.write(comp.compress(tail))
        fh.write(comp.flush())
    return path.stat().st_size


def run_prepare(meta: Path, out: Path, src: Path, timeout: float) -> dict[str, object]:
    """`effiminivlm prepare META --out OUT` as a child: exit code, wall seconds, peak RSS (MB), last line."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "effiminivlm.cli", "prepare", str(meta), "--out", str(out), "--frac", "1",
           "--min-per-category", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        code: object = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        code = f"killed after {timeout:g} s"
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
    last = [line for line in err.splitlines() if line.strip()][-1:] or [""]
    return {"exit": code, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1),
            "last_line": last[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--title-gb", type=float, default=3.0, help="Title length in GB (1e9 bytes).")
    ap.add_argument("--timeout", type=float, default=120.0, help="Kill prepare after this many seconds.")
    ap.add_argument("--src", type=Path, default=SRC, help="The effiminivlm source tree to run.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        meta = Path(tmp) / "meta_Synthetic.jsonl.gz"
        size = write_huge_line(meta, int(args.title_gb * 1e9))
        result = run_prepare(meta, Path(tmp) / "prep", args.src, args.timeout)
    print(json.dumps({"title_gb": args.title_gb, "gzip_mb": round(size / 1e6, 2), **result}, indent=2))


if __name__ == "__main__":
    main()
