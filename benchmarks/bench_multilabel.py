"""MiniViTex's multi-label head on the synthetic catalog: test mAP with text vs `--modalities image`.

Why this ablation: `synth` gives every item labels that only the image shows (its colour collection), labels
only the text states (quality line, audience) and labels both carry (category, product type), so a model
that drops the text must lose the text-only labels' AP. One command trains the same recipe (random init,
same seed) per modality on the same prepared catalog and prints the test mAP and F1s of each:

    PYTHONPATH=src python benchmarks/bench_multilabel.py --n 800 --epochs 8

Figures depend only on the seed, not on the (shared) CPU; the seconds do.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from effiminivlm.config import load_recipe
from effiminivlm.data.prepare import prepare
from effiminivlm.data.synth import write_synth
from effiminivlm.evaluation.evaluate import evaluate
from effiminivlm.training.loop import train


def run(n: int, epochs: int, recipe: str, modalities: list[str], seed: int, work: Path) -> list[dict]:
    write_synth(work / "cat", n=n, seed=seed, image_size=64, progress=False)
    prepare([work / "cat" / "meta_Synthetic.jsonl"], work / "prep", frac=1.0, min_per_category=0, seed=seed)
    rows = []
    for mod in modalities:
        sets = ["model.task=multilabel", "train.loss=bce", f"train.epochs={epochs}",
                f"model.modalities={mod}", "train.patience=100", f"train.seed={seed}"]
        t0 = time.perf_counter()
        summary = train(load_recipe(recipe, sets), work / "prep", work / f"run-{mod}", progress=False,
                        log=lambda _m: None)
        res = evaluate(work / f"run-{mod}" / "model", work / "prep", split="test",
                       out_dir=work / f"eval-{mod}", precision="fp32", progress=False)["metrics"]
        rows.append({"modalities": mod, "best_epoch": summary["best_epoch"],
                     "val_map": summary["best_val_plcc"],
                     "test_map": res["map"], "micro_f1@0.5": res["at_0.5"]["micro_f1"],
                     "macro_f1@0.5": res["at_0.5"]["macro_f1"], "samples_f1@0.5": res["at_0.5"]["samples_f1"],
                     "micro_f1@tuned": res["tuned"]["micro_f1"], "macro_f1@tuned": res["tuned"]["macro_f1"],
                     "samples_f1@tuned": res["tuned"]["samples_f1"], "classes": res["classes"],
                     "n_test": res["n"], "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=800, help="synthetic items (split 8:1:1)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--recipe", default="minivitex-tiny")
    ap.add_argument("--modalities", default="image_text,image,text")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(a.n, a.epochs, a.recipe, a.modalities.split(","), a.seed, Path(tmp))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) and k != "seconds" else str(v)
                                for k, v in r.items()) + " |")


if __name__ == "__main__":
    main()
