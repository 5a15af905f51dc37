"""Batch parity: how far an item's score moves when it is scored in another batch, per scoring path.

The same items are scored with batches of 64 (predict's default) and of 1, 7 and 33 (what a service batch,
a Ray block or a repeated request under load can hold), on the fp32 path and on the default fast path.
Prints, per path and batch size, how many items differ from the batch-64 score and the largest difference.
Why it matters: CPU kernels split their sums by the batch's shape (and text is padded to the longest in the
batch), so "the same item gives the same bits" holds within one batch composition only; docs/ROBUSTNESS.md
states the guarantee these figures support, and tests/test_parity.py checks it on a tiny model.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_parity.py --recipe offline --items 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import make_model  # noqa: E402  (a sibling script, not a package)


def batch_parity(model: Path, input_csv: Path, batches: tuple[int, ...] = (1, 7, 33),
                 precisions: tuple[str, ...] = ("fp32", "auto")) -> list[dict]:
    """Per (precision, batch size): items differing from the batch-64 scores, and the largest difference
    (each row also printed as it is measured)."""
    from effiminivlm.data.images import ImageStore
    from effiminivlm.data.lovif import read_lovif
    from effiminivlm.serving.scorer import Scorer

    table, _ = read_lovif(input_csv)
    rows = []
    for precision in precisions:
        def score(batch: int, precision: str = precision) -> np.ndarray:
            scorer = Scorer.from_pretrained(model, precision=precision, num_workers=0, batch_size=batch)
            return scorer.score_table(table, ImageStore(None), progress=False).pred

        ref = score(64)
        assert np.array_equal(ref, score(64)), "the same batches must give the same bits"
        for batch in batches:
            diff = np.abs(score(batch) - ref)
            rows.append({"precision": precision, "batch": batch, "items": len(diff),
                         "differ": int((diff > 0).sum()), "max_abs_diff": float(diff.max()),
                         "mean_abs_diff": float(diff.mean())})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="offline", help="random-init model of this recipe (not with --model)")
    ap.add_argument("--model", default=None, help="a saved model folder instead")
    ap.add_argument("--items", type=int, default=200)
    args = ap.parse_args()

    from effiminivlm.data.synth import write_synth

    with tempfile.TemporaryDirectory(prefix="bench-parity-") as tmp:
        write_synth(Path(tmp) / "cat", n=args.items, seed=0, image_size=256, progress=False)
        model = Path(args.model) if args.model else make_model(args.recipe, Path(tmp) / "model")
        label = args.model or f"random-init {args.recipe}"
        print(f"model: {label}; {args.items} synthetic items", flush=True)
        rows = batch_parity(model, Path(tmp) / "cat" / "lovif" / "input.csv")
    print("each row: scores with this batch size vs batches of 64; largest difference per path: "
          f"{ {p: max(r['max_abs_diff'] for r in rows if r['precision'] == p) for p in ('fp32', 'auto')} }")


if __name__ == "__main__":
    main()
