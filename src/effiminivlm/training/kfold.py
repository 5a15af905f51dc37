"""`train --kfold K`: train and test one recipe on every fold (and seed), then report mean +- sd.

Layout of the run folder `RUN`:
    kfold_plan.json          k, fold seed, data, recipe: a rerun must match it (or say --overwrite)
    folds/fold-F/            fold F as a prepared dataset (`data.folds.write_fold_dataset`)
    fold-F/seed-S/           an ordinary run folder (`training.loop.train`) + eval-test/ (`evaluate`)
    kfold.json, kfold.md     every run's test metrics and their mean +- sd (`evaluation.aggregate`)

Why resumable run by run: K x seeds trainings take hours on a CPU. A finished run (its eval-test/metrics.json
exists) is skipped, a trained but unevaluated one is only evaluated, an interrupted one is resumed from its
checkpoint; so rerunning the same command after a kill, or with more --seeds, redoes nothing finished.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from effiminivlm.config import Recipe, load_recipe
from effiminivlm.data.folds import write_fold_dataset
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.evaluation.aggregate import aggregate_coverage, aggregate_runs, render_aggregate_markdown
from effiminivlm.evaluation.baseline import baseline_line
from effiminivlm.evaluation.evaluate import evaluate
from effiminivlm.files import atomic_write_text, write_json
from effiminivlm.training.probe import build_probe_model, evaluate_on_features
from effiminivlm.training.skeleton import is_probe
from effiminivlm.training.trainer import run_training

__all__ = ["PLAN", "check_plan", "probe_features", "run_and_test", "run_kfold"]
PLAN = "kfold_plan.json"


def check_plan(out: Path, plan: dict[str, Any], overwrite: bool, name: str = PLAN,
               keys: tuple[str, ...] = ("k", "fold_seed", "data", "recipe")) -> None:
    """Start, continue or (with --overwrite) restart the multi-run study in `out`; refuse anything else."""
    plan_path = out / name
    if out.is_dir() and any(out.iterdir()):
        if not plan_path.is_file():
            raise EffiMiniVLMError(f"--out {out} is not empty and holds no such run ({name}); "
                                   "choose an empty folder")
        old = json.loads(plan_path.read_text())
        if "recipe" in old and "recipe" in plan:
            old["recipe"] = _with_defaults(old["recipe"])
        if overwrite:
            shutil.rmtree(out)
        elif any(old.get(k) != plan[k] for k in keys):
            diff = [k for k in keys if old.get(k) != plan[k]]
            if "recipe" in diff:
                keys_differ = _differing_keys(old["recipe"], plan["recipe"])
                diff[diff.index("recipe")] = f"recipe ({', '.join(keys_differ[:5]) or 'recipe'})"
            raise EffiMiniVLMError(f"--out {out} holds a run with another {', '.join(diff)}; "
                                   "pass --overwrite to replace it or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(plan, plan_path)


def _with_defaults(recipe: Any) -> Any:
    """A stored recipe as this version reads it: settings added since it was written take their defaults,
    so a study started by an older version continues instead of being refused as "another recipe"."""
    try:
        return load_recipe(recipe).to_dict()
    except EffiMiniVLMError:  # a key this version no longer knows: compare as stored (and refuse)
        return recipe


def _differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts (for the refusal message)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _differing_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def run_kfold(recipe: Recipe, data_dir: str | Path, out_dir: str | Path, *, k: int = 5, seeds: int = 1,
              fold_seed: int = 0, overwrite: bool = False, images_dir: str | Path | None = None,
              device: str | None = None, progress: bool = False, features: str | Path | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train + test `recipe` on K folds x `seeds` seeds (train.seed, +1, ...); returns the kfold.json dict.
    A probe recipe uses `features` (a cache of every item of DATA, `effiminivlm embed`) when given, so a
    sweep of head settings embeds once; without it the run embeds into RUN/features.safetensors."""
    if seeds < 1:
        raise EffiMiniVLMError(f"--seeds must be at least 1, got {seeds}")
    data, out = Path(data_dir), Path(out_dir)
    read_prepared(data)  # a DataError now if DATA is not a prepared dataset
    plan = {"k": k, "fold_seed": fold_seed, "seeds": seeds, "data": str(data.resolve()),
            "recipe": recipe.to_dict()}
    check_plan(out, plan, overwrite)
    if images_dir is None and (data / "images").is_dir():  # the source's fetch-images cache serves every fold
        images_dir = data / "images"
    if features is not None and not is_probe(recipe):
        raise EffiMiniVLMError("--features is for probe recipes (train.probe ridge | head)")
    features = Path(features) if features is not None else probe_features(recipe, data, out, images_dir,
                                                                            device, progress, log)
    runs: list[dict[str, Any]] = []
    for f in range(k):
        fold_data = out / "folds" / f"fold-{f}"
        if not (fold_data / "summary.json").is_file():
            counts = write_fold_dataset(data, fold_data, k, f, fold_seed)
            log(f"fold {f}: train {counts['train']} / val {counts['val']} / test {counts['test']} items")
        for i in range(seeds):
            seed = recipe.train.seed + i
            runs.append(run_and_test(recipe, fold_data, out / f"fold-{f}" / f"seed-{seed}", f, seed,
                                 images_dir=images_dir, device=device, progress=progress, log=log,
                                 features=features))
    agg = aggregate_runs(runs)
    coverage = aggregate_coverage(runs)
    result = {"plan": plan, "runs": runs, "aggregate": agg, "conformal": coverage}
    title = f"{recipe.name} recipe, {k}-fold on {data.name}"
    meta = {"folds": k, "seeds": seeds, "fold seed": fold_seed, "data": str(data)}
    write_json(result, out / "kfold.json")
    markdown = render_aggregate_markdown(agg, title, meta, coverage=coverage)
    atomic_write_text(out / "kfold.md", markdown)
    paths = {"json": out / "kfold.json", "markdown": out / "kfold.md"}
    return {**result, "markdown": markdown, "paths": paths}


def probe_features(recipe: Recipe, data: Path, out: Path, images_dir: str | Path | None,
                    device: str | None, progress: bool, log: Callable[[str], None]) -> Path | None:
    """For a probe recipe, every item's features once in RUN/features.safetensors (all folds share them)."""
    tc = recipe.train
    if tc.probe == "none" or not tc.probe_reads_towers:
        return None  # neither a tower nor a neighbours block: the hybrid probe never reads tower features
    path = out / "features.safetensors"
    if not path.is_file():
        from effiminivlm.data.images import ImageStore
        from effiminivlm.models.factory import create_tokenizer
        from effiminivlm.runtime import resolve_compute_precision, resolve_device
        from effiminivlm.training.embed import embed_table, model_signature, save_features

        model = build_probe_model(recipe)
        tok = create_tokenizer(recipe.model) if model.text_encoder is not None else None
        dev = resolve_device(device)
        feats = embed_table(model, tok, read_prepared(data), ImageStore.for_prepared(data, images_dir),
                            images=recipe.data.images, batch_size=recipe.train.eval_batch_size, device=dev,
                            precision=resolve_compute_precision(recipe.train.precision, dev),
                            progress=progress, depths=tc.probe_picks_depth)
        save_features(feats, path, model_signature(model), {"data": str(data)})
        log(f"features of {len(feats['ids'])} items cached in {path}")
    return path


def run_and_test(recipe: Recipe, fold_data: Path, run: Path, fold: int, seed: int, *,
             images_dir: str | Path | None, device: str | None, progress: bool,
             log: Callable[[str], None], features: Path | None = None) -> dict[str, Any]:
    """Train (or resume) and test one fold x seed; a finished run is read back, not redone."""
    report = run / "eval-test" / "metrics.json"
    tag = f"fold {fold} seed {seed}"
    if report.is_file():
        log(f"{tag}: done, skipped")
    else:
        if not (run / "train_summary.json").is_file():
            started = run.is_dir() and any(run.iterdir())
            r = load_recipe(recipe.to_dict(), [f"train.seed={seed}"])
            probe = is_probe(r)  # a probe restarts (seconds), fine-tuning resumes
            run_training(r, fold_data, run, features=features if probe else None, overwrite=probe and started,
                         resume=started and not probe, images_dir=images_dir, device=device,
                         progress=progress, log=lambda msg: log(f"{tag}: {msg}"))
        if is_probe(recipe):  # frozen towers: the cached features are the model's, no tower pass
            evaluate_on_features(run / "model", fold_data, features, run / "eval-test")
        else:
            evaluate(run / "model", fold_data, split="test", out_dir=run / "eval-test",
                     images_dir=images_dir, images=recipe.data.images,
                     batch_size=recipe.train.eval_batch_size, num_workers=recipe.data.num_workers,
                     device=device, precision=recipe.train.precision, progress=progress)
    metrics = json.loads(report.read_text())
    keep = {g: v for g, v in metrics.items() if isinstance(v, dict) and ("n" in v or g == "conformal")}
    words = keep.get("words_only", {}).get("plcc")
    log(f"{tag}: test PLCC {_fmt(keep['overall'].get('plcc'))}, RMSE {_fmt(keep['overall'].get('rmse'))}"
        + (f"; {baseline_line(keep['overall']['plcc'], words)}" if words is not None else ""))
    return {"fold": fold, "seed": seed, "run": str(run), "metrics": keep}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
