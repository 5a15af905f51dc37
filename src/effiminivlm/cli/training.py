"""Training commands: train (also --kfold and probe recipes), soup, pseudo-label, scaling, embed."""

from __future__ import annotations

import math
from typing import Any

import typer

from effiminivlm.cli._app import (
    app,
    check_choice,
    check_inference,
    check_runtime,
    dataset,
    refuse_unused,
    writable,
)
from effiminivlm.errors import ConfigError, EffiMiniVLMError


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    data: str = typer.Option(..., "--data", help="Prepared dataset folder (effiminivlm prepare)."),
    out: str = typer.Option(..., "--out", help="Run folder (model/, metrics.jsonl, ...)."),
    recipe: str | None = typer.Option(None, "--recipe", help="Packaged recipe name or a YAML file "
                                      "(default: offline; with --resume, the run's own)."),
    set_: list[str] = typer.Option([], "--set", help="Recipe override, e.g. train.lr=1e-4 (repeat)."),
    epochs: int | None = typer.Option(None, help="Shortcut for --set train.epochs=N."),
    batch_size: int | None = typer.Option(None, help="Shortcut for --set train.batch_size=N."),
    lr: float | None = typer.Option(None, help="Shortcut for --set train.lr=X."),
    precision: str | None = typer.Option(None, help="auto | fp32 | bf16 | fp16 (train.precision)."),
    freeze_image: bool = typer.Option(False, "--freeze-image", help="Freeze the image encoder."),
    freeze_text: bool = typer.Option(False, "--freeze-text", help="Freeze the text encoder."),
    modalities: str | None = typer.Option(None, help="image_text | image | text (ablations)."),
    images_dir: str | None = typer.Option(None, help="Image cache of fetch-images (default DATA/images)."),
    resume: bool = typer.Option(False, "--resume", help="Continue --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run already in --out (its model "
                                   "included) and train from scratch."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
    teacher: str | None = typer.Option(None, "--teacher", help="Distil from a bigger model: its scores (a "
                                       "submission CSV item_id,score; blend with train.distill.alpha) or a "
                                       "folder of per-item embeddings (*.safetensors; "
                                       "train.distill.embed_weight)."),
    pseudo: str | None = typer.Option(None, "--pseudo", help="Mix in pseudo-labelled rows (a folder written "
                                      "by `effiminivlm pseudo-label`)."),
    pseudo_weight: float | None = typer.Option(None, "--pseudo-weight", help="Loss weight of a pseudo row "
                                               "(x its confidence; train.pseudo.weight, default 0.5)."),
    strict: bool = typer.Option(False, "--strict", help="A bad row of --teacher is an error, not a counted "
                                "fallback to the true label."),
    kfold: int | None = typer.Option(None, "--kfold", help="Train and test on K folds of every row of DATA "
                                     "(RUN/fold-F/seed-S, mean +- sd in RUN/kfold.md); reruns skip "
                                     "finished runs."),
    seeds: int = typer.Option(1, help="With --kfold: seeds per fold (train.seed, +1, ...)."),
    fold_seed: int = typer.Option(0, help="With --kfold: seed of the fold assignment."),
    features: str | None = typer.Option(None, "--features", help="Probe recipes: the feature cache of "
                                        "`effiminivlm embed` (default: computed in the run)."),
) -> None:
    """Train EffiMiniVLM (weighted Huber, AdamW, cosine+warmup, early stopping on val PLCC)."""
    from effiminivlm.config import load_recipe
    from effiminivlm.training.skeleton import is_probe
    from effiminivlm.training.trainer import run_training

    writable(out, "--out", "dir")
    if kfold is None:
        refuse_unused(ctx, "a run without --kfold", ("seeds", "fold_seed"))
    overrides = list(set_)
    for key, value in (("train.epochs", epochs), ("train.batch_size", batch_size), ("train.lr", lr),
                       ("train.precision", precision), ("model.modalities", modalities)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if freeze_image:
        overrides.append("train.freeze_image=true")
    if freeze_text:
        overrides.append("train.freeze_text=true")
    overrides += technique_overrides(teacher, pseudo, pseudo_weight)
    keep_own = resume and recipe is None and not overrides  # resume with the recipe stored in the run
    resolved = None if keep_own else load_recipe(recipe or "offline", overrides)
    if resolved is not None:
        from effiminivlm.training.losses import check_recipe_names

        check_recipe_names(resolved)  # names fail now, before any data is read
    check_runtime(resolved.train.precision if resolved is not None else None, device)
    if kfold is not None:
        from effiminivlm.training.kfold import run_kfold

        if resume or resolved is None:
            raise ConfigError("--kfold resumes by itself (rerun the same command); drop --resume")
        result = run_kfold(resolved, data, out, k=kfold, seeds=seeds, fold_seed=fold_seed,
                           overwrite=overwrite, images_dir=images_dir, device=device, features=features,
                           log=typer.echo)
        typer.echo(result["markdown"])
        for kind, path in result["paths"].items():
            typer.echo(f"{kind}: {path}")
        return
    summary = run_training(resolved, data, out, resume=resume, overwrite=overwrite, features=features,
                           images_dir=images_dir, device=device, strict=strict, log=typer.echo)
    if resolved is not None and is_probe(resolved):
        typer.echo(f"probe {summary['probe']}: val PLCC {summary['best_val_plcc']:.4f}; model saved to "
                   f"{summary['model_dir']}")
        return
    from effiminivlm.training.distributed import env_dist

    if env_dist().is_main:  # under torchrun, rank 0 reports for the job
        typer.echo(f"best val PLCC {summary['best_val_plcc']:.4f} at epoch {summary['best_epoch']} "
                   f"({summary['stop_reason']}); model saved to {summary['model_dir']}")
        _words_only_beside(resolved, data, out, summary)


def _words_only_beside(recipe: Any, data: str, out: str, summary: dict[str, Any]) -> None:
    """Print and record (train_summary.json) the words-only baseline on val beside a fine-tuned model."""
    from pathlib import Path

    from effiminivlm.data.lexical import LexicalSettings
    from effiminivlm.evaluation.baseline import baseline_line, words_only_split
    from effiminivlm.files import write_json

    settings = LexicalSettings.from_cfg(recipe.train.lexical) if recipe is not None else None
    try:
        words = words_only_split(data, "val", settings)["words_only"]["plcc"]
    except EffiMiniVLMError as e:
        typer.echo(f"words-only baseline skipped: {e}")
        return
    typer.echo(f"val {baseline_line(summary['best_val_plcc'], words)}")
    path = Path(out) / "train_summary.json"
    if path.is_file():
        import json

        write_json({**json.loads(path.read_text()), "words_only_val_plcc": words}, path)


def technique_overrides(teacher: str | None, pseudo: str | None, pseudo_weight: float | None) -> list[str]:
    """train --teacher / --pseudo / --pseudo-weight as recipe overrides (so the resolved recipe records
    them and --resume reuses them); paths are made absolute and checked now."""
    import json
    from pathlib import Path

    out = []
    if teacher is not None and Path(teacher).is_dir():  # a folder of per-item teacher embeddings
        out.append(f"train.distill.embeddings={json.dumps(str(Path(teacher).resolve()))}")
        teacher = None
    for key, path, kind in (("train.distill.teacher", teacher, "file"), ("train.pseudo.path", pseudo, "dir")):
        if path is None:
            continue
        p = Path(path)
        if not (p.is_file() if kind == "file" else p.is_dir()):
            raise ConfigError(f"--{key.split('.')[1] if kind == 'dir' else 'teacher'} {path}: no such "
                              f"{'file or folder' if key.endswith('teacher') else kind}")
        out.append(f"{key}={json.dumps(str(p.resolve()))}")
    if pseudo_weight is not None:
        out.append(f"train.pseudo.weight={pseudo_weight!r}")
    return out


@app.command("soup")
def soup_cmd(
    runs: list[str] = typer.Argument(..., help="Run folders (their model/) or saved model folders, of one "
                                     "architecture and config."),
    out: str = typer.Option(..., "--out", help="Folder for the souped model (an ordinary saved model)."),
    greedy: bool = typer.Option(False, "--greedy", help="Add a checkpoint only if validation PLCC improves "
                                "(needs --data)."),
    data: str | None = typer.Option(None, "--data", help="Prepared folder whose --split measures PLCC."),
    split: str = typer.Option("val", help="Split of --data that decides (never test)."),
    images_dir: str | None = typer.Option(None, help="Image cache of fetch-images (default DATA/images)."),
    batch_size: int = typer.Option(64, help="Batch size of the PLCC measurement."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already at --out."),
    features: str | None = typer.Option(None, "--features", help="Probe models: score soups by the head on "
                                        "this feature cache of --data (no tower pass)."),
) -> None:
    """Average fine-tuned checkpoints' weights (uniform, or greedy on validation PLCC)."""
    import json

    from effiminivlm.training.soup import soup

    writable(out, "--out", "dir")
    check_choice("--split", split, ("train", "val", "test"))
    check_inference("first", batch_size, 0, precision, device)
    summary = soup(runs, out, greedy=greedy, data=data, split=split, images_dir=images_dir,
                   batch_size=batch_size, device=device, precision=precision, overwrite=overwrite,
                   features=features, log=typer.echo)
    typer.echo(json.dumps(summary, indent=2))


@app.command("pseudo-label")
def pseudo_label_cmd(
    inputs: list[str] | None = typer.Argument(None, help="Alias of --data.", show_default=False),
    data: list[str] = typer.Option([], "--data", help="A prepared folder, a LoViF input.csv, or meta files "
                                   "(repeat)."),
    model: list[str] = typer.Option(..., "--model", help="Saved model folder (repeat: the mean labels, their "
                                    "agreement gives the confidence)."),
    out: str = typer.Option(..., "--out", help="Folder of pseudo-labelled rows (for train --pseudo)."),
    split: str | None = typer.Option(None, help="Only this split of a prepared folder."),
    include_rated: bool = typer.Option(False, "--include-rated", help="Label rated items too."),
    agreement_scale: float = typer.Option(0.25, help="Model disagreement (sd) at which confidence is 0.5."),
    images_dir: str | None = typer.Option(None, help="Images of input.csv, or the fetch-images cache."),
    images: str = typer.Option("first", help="first | mean: which of an item's images feed the model."),
    batch_size: int = typer.Option(64, help="Batch size."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace pseudo-labels already at --out."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable metadata row."),
) -> None:
    """Score unrated items and write them as training rows with a confidence weight."""
    import json

    from effiminivlm.training.pseudo import pseudo_label

    inputs = dataset(inputs, data)
    writable(out, "--out", "dir")
    if split is not None:
        check_choice("--split", split, ("train", "val", "test"))
    if not agreement_scale > 0:
        raise ConfigError(f"--agreement-scale must be > 0, got {agreement_scale!r}")
    check_inference(images, batch_size, 0, precision, device)
    summary = pseudo_label(model, inputs, out, split=split, include_rated=include_rated,
                           images_dir=images_dir, images=images, batch_size=batch_size, device=device,
                           precision=precision, agreement_scale=agreement_scale, overwrite=overwrite,
                           strict=strict, log=typer.echo)
    typer.echo(json.dumps(summary, indent=2))




@app.command("scaling")
def scaling_cmd(
    data: str = typer.Option(..., "--data", help="Prepared dataset folder: its train split is subsampled."),
    out: str = typer.Option(..., "--out", help="Study folder (runs, scaling.json/.md/.png); reruns resume."),
    recipe: str = typer.Option("probe", "--recipe", help="Packaged recipe name or a YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Recipe override, e.g. model.modalities=text (repeat)."),
    fractions: str = typer.Option("0.05,0.1,0.2,0.4,0.7,1.0", help="Comma-separated train fractions."),
    seeds: int = typer.Option(3, help="Subsets and trainings per fraction."),
    target_n: float = typer.Option(1.6e6, help="Extrapolate the fits to this many training items."),
    images_dir: str | None = typer.Option(None, help="Image cache of fetch-images (default DATA/images)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the study in --out and start anew."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
    features: str | None = typer.Option(None, "--features", help="Probe recipes: a feature cache of DATA "
                                        "(`effiminivlm embed`; default: computed once in --out)."),
) -> None:
    """Test PLCC against training-set size: nested subsets, fits, extrapolation, the Figure-2 plot."""
    from effiminivlm.config import load_recipe
    from effiminivlm.protocol.formulas import load_leaderboard
    from effiminivlm.training.losses import check_recipe_names
    from effiminivlm.training.scaling import run_scaling

    writable(out, "--out", "dir")
    if not (target_n >= 1 and math.isfinite(target_n)):  # the power law is extrapolated to it (a log)
        raise ConfigError(f"--target-n must be a finite number of items >= 1, got {target_n}")
    try:
        fracs = [float(x) for x in fractions.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--fractions must be comma-separated numbers, got {fractions!r}") from None
    resolved = load_recipe(recipe, list(set_))
    check_recipe_names(resolved)
    check_runtime(resolved.train.precision, device)
    paper = next((e for e in load_leaderboard() if getattr(e, "model", None) == "EffiMiniVLM"), None)
    reference = (f"EffiMiniVLM, LoViF test (leaderboard): {paper.plcc:.2f}", paper.plcc) if paper else None
    result = run_scaling(resolved, data, out, fractions=fracs, seeds=seeds, target_n=target_n,
                         overwrite=overwrite, images_dir=images_dir, device=device, reference=reference,
                         features=features, log=typer.echo)
    typer.echo(result["markdown"])
    for kind, path in result["paths"].items():
        typer.echo(f"{kind}: {path}")


@app.command("embed")
def embed_cmd(
    data_arg: str | None = typer.Argument(None, metavar="[DATA]", help="Alias of --data.",
                                          show_default=False),
    data: str | None = typer.Option(None, "--data", help="Prepared dataset folder: every row (all splits) "
                                    "is embedded."),
    out: str = typer.Option(..., "--out", help="Feature cache to write (.safetensors)."),
    model: str | None = typer.Option(None, "--model", help="Saved model folder whose towers embed."),
    recipe: str | None = typer.Option(None, "--recipe", help="Or a recipe: its towers with their pretrained "
                                      "weights (e.g. probe)."),
    set_: list[str] = typer.Option([], "--set", help="Recipe override (with --recipe; repeat)."),
    images: str = typer.Option("first", help="first | mean: which of an item's images feed the model."),
    images_dir: str | None = typer.Option(None, help="Image cache of fetch-images (default DATA/images)."),
    batch_size: int = typer.Option(64, help="Batch size."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
) -> None:
    """Cache every item's pooled image and text features once (for probe recipes and sweeps)."""
    from effiminivlm.data.images import ImageStore
    from effiminivlm.data.prepare import read_prepared
    from effiminivlm.runtime import resolve_compute_precision, resolve_device
    from effiminivlm.training.embed import embed_table, model_signature, save_features

    (data,) = dataset(data_arg, data, many=False)
    writable(out, "--out", "file")
    check_inference(images, batch_size, 0, precision, device)
    if (model is None) == (recipe is None):
        raise ConfigError("give exactly one of --model (a saved model folder) or --recipe")
    if model is not None:
        from effiminivlm.models.factory import load_model

        net, tok = load_model(model)
        depths = False
    else:
        from effiminivlm.config import load_recipe
        from effiminivlm.models.factory import create_tokenizer
        from effiminivlm.training.probe import build_probe_model

        rec = load_recipe(recipe, list(set_))
        net = build_probe_model(rec)  # the towers a probe run of this recipe builds
        tok = create_tokenizer(rec.model) if net.text_encoder is not None else None
        depths = rec.train.probe_picks_depth  # a recipe picking its text-tower depth: every depth's features
    dev = resolve_device(device)
    feats = embed_table(net, tok, read_prepared(data), ImageStore.for_prepared(data, images_dir),
                        images=images, batch_size=batch_size, device=dev,
                        precision=resolve_compute_precision(precision, dev), progress=True, depths=depths)
    save_features(feats, out, model_signature(net), {"data": str(data)})
    typer.echo(f"{len(feats['ids'])} items: image {tuple(feats['image'].shape)}, text "
               f"{tuple(feats['text'].shape)} -> {out}")
