"""Scoring speed of the hybrid probe against the text-only ridge probe, through the same `Scorer` path.

Why: the hybrid adds a TF-IDF transform and a listing block per batch to the towers' pass; the goal is to
stay within 10% of the text-only probe's items/s. Both models are scored on the same rows, alternately,
`--repeats` times each, in one process; the median items/s of each is printed (on a shared CPU, read the
ratio, not the absolute figures).

    PYTHONPATH=src python benchmarks/bench_hybrid.py --hybrid runs/fashion-hybrid/fold-0/seed-42/model \
        --probe runs/fashion-tower/fold-0/seed-42/model --data runs/fashion-hybrid/folds/fold-0
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from effiminivlm.data.prepare import read_prepared
from effiminivlm.serving.scorer import Scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hybrid", required=True, help="saved hybrid probe folder")
    ap.add_argument("--probe", required=True, help="saved text-only ridge probe folder (same towers)")
    ap.add_argument("--data", required=True, help="prepared dataset whose test split is scored")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="fp32", help="fp32 (the exact path) or auto (the fast path)")
    args = ap.parse_args()
    table = read_prepared(args.data, "test")
    scorers = {name: Scorer.from_pretrained(path, precision=args.precision)
               for name, path in (("probe", args.probe), ("hybrid", args.hybrid))}
    rates: dict[str, list[float]] = {name: [] for name in scorers}
    for scorer in scorers.values():  # warm-up (graph conversion, caches)
        scorer.score_table(table.slice(0, 64), progress=False)
    for _ in range(args.repeats):
        for name, scorer in scorers.items():
            start = time.perf_counter()
            pred = scorer.score_table(table, progress=False).pred
            rates[name].append(table.num_rows / (time.perf_counter() - start))
            assert np.isfinite(pred).all()
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"{name}: median {med[name]:.1f} items/s over {len(r)} runs of {table.num_rows} items "
              f"({', '.join(f'{v:.1f}' for v in r)})")
    print(f"hybrid / probe: {med['hybrid'] / med['probe']:.3f}")


if __name__ == "__main__":
    main()
