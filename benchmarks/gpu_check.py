"""Self-checking GPU run: training, predict and serve on CUDA against the CPU fp32 result, in one table.

Run it as is on a machine with a CUDA GPU (`.venv/bin/python benchmarks/gpu_check.py`). On a synthetic
catalog it:

- trains a few steps of each recipe (`tiny`, `offline`) under CUDA AMP in bf16 and in fp16, and the same
  steps on the CPU in fp32 (same seed, same batches); the two trained models then score the test split in
  fp32 on the CPU and must agree within `--train-tol` (max abs difference on the 1-5 scale);
- scores with `predict` on CUDA (its default precision) and with `serve` on CUDA (`/v1/score/csv` of the
  LoViF input.csv), each against the CPU fp32 scores of the same model within `--score-tol`;
- reports samples/s end to end of `predict` on CUDA (Table 3's GPU row: the same count on your GPU).

Prints one table (check, figure, tolerance, ok) and exits 1 on any mismatch, 0 when everything agrees.
`--device cpu` runs the same checks with the CPU standing in for the GPU (bf16 autocast only: CPU AMP has
no fp16 training path): a dry run that exercises the script on any machine (what the tests run).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch


class Check(NamedTuple):
    """One line of the table: a measured figure against its tolerance (None: a figure reported only)."""

    name: str
    figure: float
    tolerance: float | None = None

    @property
    def ok(self) -> bool:
        return self.tolerance is None or (bool(np.isfinite(self.figure)) and self.figure <= self.tolerance)


def render(checks: list[Check]) -> str:
    """The one table the script prints."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {'figure':>10}  {'tolerance':>9}  ok"]
    for c in checks:
        tol = "-" if c.tolerance is None else f"{c.tolerance:.3g}"
        lines.append(f"{c.name:<{width}}  {c.figure:>10.4g}  {tol:>9}  {'yes' if c.ok else 'NO'}")
    return "\n".join(lines)


def csv_scores(text: str) -> dict[str, float]:
    """item_id -> score of a submission CSV."""
    return {row["item_id"]: float(row["score"]) for row in csv.DictReader(io.StringIO(text))}


def max_diff(a: dict[str, float], b: dict[str, float]) -> float:
    """Max abs difference over the same ids (inf when the ids differ: a mismatch in itself)."""
    if a.keys() != b.keys() or not a:
        return float("inf")
    return max(abs(a[k] - b[k]) for k in a)


def train_steps(recipe: str, precision: str, device: str, prepared: Path, out: Path, steps: int) -> Path:
    """`steps` optimizer steps of `recipe` on `device` in `precision`; returns the saved model folder."""
    from effiminivlm.config import load_recipe
    from effiminivlm.training.loop import train

    rec = load_recipe(recipe, ["train.epochs=1", f"train.max_steps_per_epoch={steps}", "train.batch_size=8",
                               f"train.precision={precision}", "data.num_workers=0", "train.seed=0"])
    train(rec, prepared, out, device=device, progress=False, log=lambda _m: None)
    return out / "model"


def cpu_scores(model_dir: Path, prepared: Path) -> dict[str, float]:
    """The exact reference: fp32 on the CPU, the test split."""
    from effiminivlm.data.prepare import read_prepared
    from effiminivlm.serving.scorer import Scorer

    scorer = Scorer.from_pretrained(model_dir, device="cpu", precision="fp32", batch_size=16)
    res = scorer.score_table(read_prepared(prepared, "test"), progress=False)
    return dict(zip(res.item_id, res.pred.tolist(), strict=True))


def run(device: str, recipes: list[str], steps: int, train_tol: float, score_tol: float,
        work: Path) -> list[Check]:
    from effiminivlm.data.prepare import prepare
    from effiminivlm.data.synth import write_synth
    from effiminivlm.serving.predict import predict, submission_text
    from effiminivlm.serving.scorer import Scorer

    write_synth(work / "catalog", n=160, seed=0, image_size=96, progress=False)
    prepared = work / "prepared"
    prepare([work / "catalog" / "meta_Synthetic.jsonl"], prepared, frac=1.0, min_per_category=0, seed=0)
    lovif = work / "catalog" / "lovif"
    amps = ["bf16", "fp16"] if device == "cuda" else ["bf16"]
    checks: list[Check] = []
    for recipe in recipes:
        ref_dir = train_steps(recipe, "fp32", "cpu", prepared, work / f"{recipe}-cpu", steps)
        ref = cpu_scores(ref_dir, prepared)
        for amp in amps:
            got = cpu_scores(train_steps(recipe, amp, device, prepared, work / f"{recipe}-{amp}", steps),
                             prepared)
            checks.append(Check(f"train {recipe} {steps} steps {device} {amp} vs cpu fp32",
                                max_diff(got, ref), train_tol))
        exact = Scorer.from_pretrained(ref_dir, device="cpu", precision="fp32", batch_size=64)
        want = csv_scores(submission_text(*_scored(exact, lovif), 0.0, 0.0))
        start = time.perf_counter()
        summary = predict(ref_dir, [str(lovif / "input.csv")], work / f"{recipe}-sub.csv", device=device,
                          progress=False)
        seconds = time.perf_counter() - start
        got = csv_scores((work / f"{recipe}-sub.csv").read_text())
        checks.append(Check(f"predict {recipe} {device} vs cpu fp32", max_diff(got, want), score_tol))
        checks.append(Check(f"predict {recipe} {device} samples/s end to end", summary["items"] / seconds))
        checks.append(Check(f"serve {recipe} {device} /v1/score/csv vs cpu fp32",
                            max_diff(_served(ref_dir, lovif, device), want), score_tol))
    return checks


def _scored(scorer: object, lovif: Path) -> tuple[list[str], np.ndarray]:
    from effiminivlm.data.inputs import read_inputs

    src = read_inputs([str(lovif / "input.csv")])
    res = scorer.score_table(src.table, src.store, progress=False)  # type: ignore[attr-defined]
    return res.item_id, res.pred


def _served(model_dir: Path, lovif: Path, device: str) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from effiminivlm.serving.app import create_app
    from effiminivlm.serving.schemas import ServeSettings
    from effiminivlm.serving.scorer import Scorer

    scorer = Scorer.from_pretrained(model_dir, device=device, batch_size=64)
    app = create_app(scorer, ServeSettings(images_dir=(lovif / "images").resolve(), max_batch=64))
    with TestClient(app) as client:
        resp = client.post("/v1/score/csv", files={"file": ("input.csv", (lovif / "input.csv").read_bytes(),
                                                            "text/csv")})
    return csv_scores(resp.text) if resp.status_code == 200 else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cuda (the check), or cpu: a dry run of the script with the CPU standing in")
    ap.add_argument("--recipes", default="tiny,offline", help="recipes trained, comma-separated")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per training run")
    ap.add_argument("--train-tol", type=float, default=0.05,
                    help="max abs score difference of AMP-trained vs fp32-trained (1-5 scale)")
    ap.add_argument("--score-tol", type=float, default=0.02,
                    help="max abs score difference of predict / serve on the device vs CPU fp32")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run this on a machine with a GPU (or --device cpu for a dry run)",
              file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    checks = run(args.device, [r for r in args.recipes.split(",") if r], args.steps, args.train_tol,
                 args.score_tol, work)
    print(render(checks))
    bad = [c.name for c in checks if not c.ok]
    print(f"{len(bad)} mismatch(es)" + (f": {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
