"""The `effiminivlm` command: one thin subcommand per stage.

Why thin: every command parses its options, calls one library function and prints what it returned, so the
same work is reachable from Python, from tests (`main([...])`) and from the shell. User errors
(`EffiMiniVLMError`) print one clear line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from effiminivlm.errors import ConfigError, EffiMiniVLMError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Efficient multimodal product-quality scoring (EffiMiniVLM, LoViF 2026 protocol).")


@app.callback()
def _root() -> None:
    """Efficient multimodal product-quality scoring (EffiMiniVLM, LoViF 2026 protocol)."""


# ---------------------------------------------------------------------------------------------- data stage
# (prepare, fetch-images, synth)


@app.command("prepare")
def prepare_cmd(
    inputs: list[str] = typer.Argument(..., help="meta_<Category>.jsonl[.gz] files, raw_meta_<Category> "
                                       "parquet shards or folders, or globs (quote them)."),
    out: str = typer.Option(..., "--out", help="Output folder: data.parquet + summary.json."),
    frac: float = typer.Option(0.2, help="Fraction of each category to sample."),
    min_per_category: int = typer.Option(10_000, help="Sample at least this many per category, capped at n"),
    seed: int = typer.Option(0, help="Seed of the sample and the split."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad row instead of counting it."),
    require_fields: bool = typer.Option(True, "--require-fields/--no-require-fields",
                                        help="Drop rows with empty category, title, features or description"),
    min_text_chars: int = typer.Option(30, help="Drop rows whose title+features+description are at most this "
                                       "long (0: off)."),
    require_image: bool = typer.Option(True, "--require-image/--no-require-image",
                                       help="Drop rows without an image reference."),
    rare_threshold: int = typer.Option(50, help="Ratings with at most this many items share one stratum."),
    keep_missing_rating_number: bool = typer.Option(False, "--keep-missing-rating-number", help="Keep rated "
                                                    "rows without rating_number (the recipe's "
                                                    "train.missing_rating_number sets their loss weight)."),
    allow_titles_only: bool = typer.Option(False, "--allow-titles-only", help="Keep rows whose only text is "
                                           "the title and rows without images (require only category + "
                                           "title; for text-only training)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a prepared dataset already at --out."),
) -> None:
    """Filter, sample and split Amazon Reviews 2023 item metadata into a prepared Parquet dataset."""
    from effiminivlm.data.prepare import prepare, print_summary

    _writable(out, "--out", "dir")
    summary = prepare(inputs, out, frac=frac, min_per_category=min_per_category, seed=seed, strict=strict,
                      require_fields=require_fields, min_text_chars=min_text_chars,
                      require_image=require_image, rare_threshold=rare_threshold,
                      keep_missing_rating_number=keep_missing_rating_number,
                      allow_titles_only=allow_titles_only, overwrite=overwrite, progress=True)
    print_summary(summary)
    typer.echo(f"wrote {summary['kept']:,} rows to {out}")


@app.command("fetch-images")
def fetch_images_cmd(
    prepared: str = typer.Argument(..., help="Prepared dataset folder (effiminivlm prepare)."),
    cache: str | None = typer.Option(None, "--cache", help="Image cache folder (default PREPARED/images, "
                                     "where train / evaluate / predict look by default)."),
    workers: int = typer.Option(16, help="Parallel downloads."),
    timeout: float = typer.Option(10.0, help="Seconds per connect / read."),
    retries: int = typer.Option(3, help="Retries of a transient failure (timeout, 5xx, 429), with backoff."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try earlier runs' failures again."),
    deadline: float | None = typer.Option(None, help="Seconds one download attempt may take in total "
                                          "(default max(60, 6 x --timeout))."),
    allow_private_hosts: bool = typer.Option(False, "--allow-private-hosts", help="Allow loopback and "
                                             "private addresses (internal image CDN); refused by default."),
) -> None:
    """Download every image URL of a prepared dataset once into a content-addressed cache (resumable)."""
    from effiminivlm.data.images import fetch_images

    typer.echo(str(fetch_images(prepared, cache, workers=workers, timeout=timeout, retries=retries,
                                retry_failed=retry_failed, deadline=deadline,
                                allow_private_hosts=allow_private_hosts, progress=True)))


@app.command("synth")
def synth_cmd(
    n: int = typer.Option(..., "--n", help="Number of items."),
    out: str = typer.Option(..., "--out", help="Output folder (meta JSONL, images/, latent.csv, lovif/)."),
    seed: int = typer.Option(0, help="Seed: same seed, same bytes; a smaller --n gives a prefix."),
    image_size: int = typer.Option(96, help="Image side in pixels."),
    missing_description_frac: float = typer.Option(0.0, help="Fraction of items written with an empty "
                                                   "description (prepare's default filters drop them)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a catalog already at --out."),
) -> None:
    """Write a synthetic catalog in the official meta schema, with real images and the LoViF layout."""
    from effiminivlm.data.synth import write_synth

    _writable(out, "--out", "dir")
    typer.echo(str(write_synth(out, n, seed=seed, image_size=image_size,
                               missing_description_frac=missing_description_frac, progress=True,
                               overwrite=overwrite)))


@app.command("merge-prepared")
def merge_prepared_cmd(
    parts: list[str] = typer.Argument(..., help="Prepared folders (e.g. one `prepare` run per category)."),
    out: str = typer.Option(..., "--out", help="Merged prepared folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
) -> None:
    """Merge prepared folders written by parallel `prepare` runs into one dataset (ids must not repeat)."""
    from effiminivlm.data.merge import merge_prepared

    _writable(out, "--out", "dir")
    summary = merge_prepared(parts, out, overwrite=overwrite)
    splits = ", ".join(f"{k} {v['rows']}" for k, v in summary["per_split"].items())
    typer.echo(f"{summary['kept']} rows from {len(parts)} parts -> {out} ({splits})")


# ---------------------------------------------------------------------------------------------- model stage
# (recipes, train, evaluate, predict)


@app.command("train")
def train_cmd(
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
    teacher: str | None = typer.Option(None, "--teacher", help="Distil from a bigger model's scores: a "
                                       "submission CSV (item_id,score); blend with train.distill.alpha."),
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
    from effiminivlm.training.loop import train

    _writable(out, "--out", "dir")
    overrides = list(set_)
    for key, value in (("train.epochs", epochs), ("train.batch_size", batch_size), ("train.lr", lr),
                       ("train.precision", precision), ("model.modalities", modalities)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if freeze_image:
        overrides.append("train.freeze_image=true")
    if freeze_text:
        overrides.append("train.freeze_text=true")
    overrides += _technique_overrides(teacher, pseudo, pseudo_weight)
    keep_own = resume and recipe is None and not overrides  # resume with the recipe stored in the run
    resolved = None if keep_own else load_recipe(recipe or "offline", overrides)
    if resolved is not None:
        from effiminivlm.training.losses import check_recipe_names

        check_recipe_names(resolved)  # names fail now, before any data is read
    _check_runtime(resolved.train.precision if resolved is not None else None, device)
    if kfold is not None:
        from effiminivlm.training.kfold import run_kfold

        if resume or resolved is None:
            raise ConfigError("--kfold resumes by itself (rerun the same command); drop --resume")
        result = run_kfold(resolved, data, out, k=kfold, seeds=seeds, fold_seed=fold_seed,
                           overwrite=overwrite, images_dir=images_dir, device=device, log=typer.echo)
        typer.echo(result["markdown"])
        for kind, path in result["paths"].items():
            typer.echo(f"{kind}: {path}")
        return
    if resolved is not None and resolved.train.probe != "none":
        from effiminivlm.training.probe import train_probe

        if resume:
            raise ConfigError("a probe run takes seconds: rerun it with --overwrite instead of --resume")
        summary = train_probe(resolved, data, out, features=features, overwrite=overwrite,
                              images_dir=images_dir, device=device, log=typer.echo)
        typer.echo(f"probe {summary['probe']}: val PLCC {summary['best_val_plcc']:.4f}; model saved to "
                   f"{summary['model_dir']}")
        return
    summary = train(resolved, data, out, resume=resume, overwrite=overwrite, images_dir=images_dir,
                    device=device, strict=strict, log=typer.echo)
    from effiminivlm.training.distributed import env_dist

    if env_dist().is_main:  # under torchrun, rank 0 reports for the job
        typer.echo(f"best val PLCC {summary['best_val_plcc']:.4f} at epoch {summary['best_epoch']} "
                   f"({summary['stop_reason']}); model saved to {summary['model_dir']}")


def _technique_overrides(teacher: str | None, pseudo: str | None, pseudo_weight: float | None) -> list[str]:
    """train --teacher / --pseudo / --pseudo-weight as recipe overrides (so the resolved recipe records
    them and --resume reuses them); paths are made absolute and checked now."""
    import json
    from pathlib import Path

    out = []
    for key, path, kind in (("train.distill.teacher", teacher, "file"), ("train.pseudo.path", pseudo, "dir")):
        if path is None:
            continue
        p = Path(path)
        if not (p.is_file() if kind == "file" else p.is_dir()):
            raise ConfigError(f"--{key.split('.')[1] if kind == 'dir' else 'teacher'} {path}: no such {kind}")
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
) -> None:
    """Average fine-tuned checkpoints' weights (uniform, or greedy on validation PLCC)."""
    import json

    from effiminivlm.training.soup import soup

    _writable(out, "--out", "dir")
    _check_choice("--split", split, ("train", "val", "test"))
    _check_inference("first", batch_size, 0, precision, device)
    summary = soup(runs, out, greedy=greedy, data=data, split=split, images_dir=images_dir,
                   batch_size=batch_size, device=device, precision=precision, overwrite=overwrite,
                   log=typer.echo)
    typer.echo(json.dumps(summary, indent=2))


@app.command("pseudo-label")
def pseudo_label_cmd(
    inputs: list[str] = typer.Argument(..., help="A prepared folder, a LoViF input.csv, or meta files."),
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

    _writable(out, "--out", "dir")
    if split is not None:
        _check_choice("--split", split, ("train", "val", "test"))
    if not agreement_scale > 0:
        raise ConfigError(f"--agreement-scale must be > 0, got {agreement_scale!r}")
    _check_inference(images, batch_size, 0, precision, device)
    summary = pseudo_label(model, inputs, out, split=split, include_rated=include_rated,
                           images_dir=images_dir, images=images, batch_size=batch_size, device=device,
                           precision=precision, agreement_scale=agreement_scale, overwrite=overwrite,
                           strict=strict, log=typer.echo)
    typer.echo(json.dumps(summary, indent=2))


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Option(..., "--model", help="Saved model folder (a run's model/)."),
    data: str = typer.Option(..., "--data", help="Prepared dataset folder."),
    split: str = typer.Option("test", help="train | val | test."),
    out: str | None = typer.Option(None, "--out", help="Report folder (default: MODEL/../eval-SPLIT)."),
    images: str = typer.Option("first", help="first | mean: which of an item's images feed the model."),
    images_dir: str | None = typer.Option(None, help="Image cache of fetch-images (default DATA/images)."),
    batch_size: int = typer.Option(64, help="Batch size."),
    num_workers: int = typer.Option(2, help="DataLoader workers (decode + tokenise)."),
    min_rating_number: int = typer.Option(10, help="Also report items with at least this many ratings."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
) -> None:
    """PLCC, PLCC+, SRCC, RMSE, MAE and Huber overall, per category and for well-rated items."""
    from effiminivlm.evaluation.evaluate import evaluate

    _writable(out if out is not None else _default_eval_out(model, split), "--out", "dir")
    _check_choice("--split", split, ("train", "val", "test"))
    _check_inference(images, batch_size, num_workers, precision, device)
    result = evaluate(model, data, split=split, out_dir=out, images_dir=images_dir, images=images,
                      batch_size=batch_size, num_workers=num_workers, device=device, precision=precision,
                      min_rating_number=min_rating_number)
    typer.echo(result["markdown"])
    for kind, path in result["paths"].items():
        typer.echo(f"{kind}: {path}")


@app.command("predict")
def predict_cmd(
    inputs: list[str] = typer.Argument(..., help="A prepared folder, a LoViF input.csv, or meta files."),
    model: str = typer.Option(..., "--model", help="Saved model folder."),
    out: str = typer.Option("submission.csv", "--out", help="Submission CSV (item_id,score,params,flops)."),
    split: str | None = typer.Option(None, help="Only this split of a prepared folder."),
    images_dir: str | None = typer.Option(None, help="Images folder of input.csv (default: its images/), or "
                                          "the fetch-images cache."),
    images: str = typer.Option("first", help="first | mean: which of an item's images feed the model."),
    batch_size: int = typer.Option(64, help="Batch size."),
    num_workers: int = typer.Option(2, help="DataLoader workers (decode + tokenise)."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable metadata row."),
    engine: str = typer.Option("local", help="local (this process) | ray (Ray Data + an actor pool)."),
    address: str | None = typer.Option(None, help="--engine ray: cluster address (auto, ray://head:10001); "
                                       "default: a local Ray with this machine's cores."),
    num_actors: int | None = typer.Option(None, help="--engine ray: scoring actors, each loads the model "
                                          "once (default: one per GPU, or half the CPUs)."),
    threads: int | None = typer.Option(None, help="--engine ray: torch threads per CPU actor (default: "
                                       "this machine's, which gives scores identical to --engine local)."),
    with_intervals: bool = typer.Option(False, "--intervals/--no-intervals", help="Add the model's conformal "
                                        "intervals as extra columns low_80,high_80,low_90,high_90 after "
                                        "the LoViF columns (off by default: the submission stays exactly "
                                        "the LoViF layout)."),
) -> None:
    """Score products and write a LoViF submission.csv (with --engine ray and an --out ending in .parquet:
    a Parquet of item_id, score)."""
    import json

    _writable(out, "--out", "file")
    if split is not None:
        _check_choice("--split", split, ("train", "val", "test"))
    _check_choice("--engine", engine, ("local", "ray"))
    _check_inference(images, batch_size, num_workers, precision, device)
    if engine == "local" and (address is not None or num_actors is not None or threads is not None):
        raise ConfigError("--address, --num-actors and --threads apply to --engine ray only")
    if engine == "ray":
        from effiminivlm.serving.ray_engine import predict_ray

        summary = predict_ray(model, inputs, out, split=split, images_dir=images_dir, images=images,
                              batch_size=batch_size, device=device, precision=precision, strict=strict,
                              address=address, num_actors=num_actors, threads=threads)
        typer.echo(json.dumps(summary, indent=2))
        return
    from effiminivlm.serving.predict import predict

    summary = predict(model, inputs, out, split=split, images_dir=images_dir, images=images,
                      batch_size=batch_size, num_workers=num_workers, device=device, precision=precision,
                      strict=strict, with_intervals=with_intervals)
    typer.echo(json.dumps(summary, indent=2))


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(..., "--model", help="Saved model folder."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    images_dir: str | None = typer.Option(None, help="The only folder image paths in requests may point "
                                          "into (default: none; send image bytes)."),
    images: str = typer.Option("first", help="first | mean: which of an item's images feed the model."),
    max_batch: int = typer.Option(64, help="Items per model batch (1 turns batching off; 64 = predict's "
                                  "default batch, so a CSV gets predict's exact bits)."),
    max_wait_ms: float = typer.Option(10.0, help="How long a queued item waits for company in its batch."),
    max_queue: int = typer.Option(256, help="Items waiting or running; beyond it: 503 + Retry-After."),
    max_items: int = typer.Option(64, help="Listings per JSON request; beyond it: 413."),
    timeout: float = typer.Option(30.0, help="Seconds a request may wait for its scores; beyond it: 504."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
) -> None:
    """Serve the model over HTTP: /v1/score, /v1/score/csv, /v1/model, /healthz, /readyz, /docs, page at /."""
    from effiminivlm.serving.app import serve

    _check_inference(images, 1, 0, precision, device)  # the batching limits are checked by serve()
    serve(model, host=host, port=port, images_dir=images_dir, images=images, max_batch=max_batch,
          max_wait_ms=max_wait_ms, max_queue=max_queue, max_items=max_items, request_timeout_s=timeout,
          precision=precision, device=device, log=typer.echo)


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

    _writable(out, "--out", "dir")
    try:
        fracs = [float(x) for x in fractions.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--fractions must be comma-separated numbers, got {fractions!r}") from None
    resolved = load_recipe(recipe, list(set_))
    check_recipe_names(resolved)
    _check_runtime(resolved.train.precision, device)
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
    data: str = typer.Argument(..., help="Prepared dataset folder: every row (all splits) is embedded."),
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
    from effiminivlm.runtime import resolve_device, resolve_precision
    from effiminivlm.training.embed import embed_table, model_signature, save_features

    _writable(out, "--out", "file")
    _check_inference(images, batch_size, 0, precision, device)
    if (model is None) == (recipe is None):
        raise ConfigError("give exactly one of --model (a saved model folder) or --recipe")
    if model is not None:
        from effiminivlm.models.factory import load_model

        net, tok = load_model(model)
    else:
        from effiminivlm.config import load_recipe
        from effiminivlm.models.factory import create_tokenizer
        from effiminivlm.training.probe import build_probe_model

        rec = load_recipe(recipe, list(set_))
        net = build_probe_model(rec)  # the towers a probe run of this recipe builds
        tok = create_tokenizer(rec.model.text_encoder) if net.text_encoder is not None else None
    dev = resolve_device(device)
    feats = embed_table(net, tok, read_prepared(data), ImageStore.for_prepared(data, images_dir),
                        images=images, batch_size=batch_size, device=dev,
                        precision=resolve_precision(precision, dev), progress=True)
    save_features(feats, out, model_signature(net), {"data": str(data)})
    typer.echo(f"{len(feats['ids'])} items: image {tuple(feats['image'].shape)}, text "
               f"{tuple(feats['text'].shape)} -> {out}")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the packaged recipes."""
    from effiminivlm.config import list_recipes

    for name in list_recipes():
        typer.echo(name)


# ------------------------------------------------------------------------------------------- protocol stage
# (profile, score, benchmark)


@app.command("profile")
def profile_cmd(
    model: str | None = typer.Option(None, "--model", help="Saved model folder."),
    recipe: str | None = typer.Option(None, "--recipe", help="Profile a recipe's architecture, random init "
                                      "(no weights needed) instead of --model."),
    set_: list[str] = typer.Option([], "--set", help="Recipe override, e.g. model.image_encoder.image_size="
                                   "256 (repeat; with --recipe)."),
    image_size: int | None = typer.Option(None, help="Canonical image size (default: the model's)."),
    max_length: int | None = typer.Option(None, help="Canonical text length (default: the model's)."),
    plcc: float | None = typer.Option(None, help="PLCC of the model, for its CES."),
    report: str | None = typer.Option(None, "--report", help="Evaluation report (metrics.json of evaluate) "
                                      "to take the PLCC from, instead of --plcc."),
    data: str | None = typer.Option(None, "--data", help="Prepared folder (all splits) or LoViF input.csv: "
                                    "also count FLOPs at its mean token length."),
    mean_tokens: float | None = typer.Option(None, "--mean-tokens", help="Also count FLOPs at this mean "
                                             "token length (instead of measuring it with --data)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the profile as JSON here."),
    plot: str | None = typer.Option(None, "--plot", help="Write the PLCC-vs-C plot (PNG) here."),
) -> None:
    """Params, FLOPs, resource cost C, efficiency E (and CES) by the LoViF 2026 protocol."""
    from effiminivlm.protocol.profile import run_profile
    from effiminivlm.protocol.tables import print_profile

    _writable(json_out, "--json", "file")
    _writable(plot, "--plot", "file")
    if plcc is not None and not -1.0 <= plcc <= 1.0:  # NaN fails too
        raise ConfigError(f"--plcc: PLCC must lie in [-1, 1], got {plcc!r}")
    print_profile(run_profile(model, recipe, set_, image_size=image_size, max_length=max_length, plcc=plcc,
                              report=report, data=data, mean_tokens=mean_tokens, json_out=json_out,
                              plot_out=plot))
    for kind, path in (("json", json_out), ("plot", plot)):
        if path is not None:
            typer.echo(f"{kind}: {path}")


@app.command("score")
def score_cmd(
    predictions: str = typer.Option(..., "--predictions", help="Submission CSV: item_id,score,params,flops."),
    truth: str = typer.Option(..., "--truth", help="Truth CSV (parent_asin or item_id, average_rating), or a "
                              "prepared folder (its test split)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the result as JSON here."),
    plot: str | None = typer.Option(None, "--plot", help="Write the PLCC-vs-C plot (PNG) here."),
) -> None:
    """Score a submission as the leaderboard does: PLCC, C, E, CES and the would-be rank."""
    from effiminivlm.protocol.score import run_score
    from effiminivlm.protocol.tables import print_score

    _writable(json_out, "--json", "file")
    _writable(plot, "--plot", "file")
    print_score(run_score(predictions, truth, json_out=json_out, plot_out=plot))
    for kind, path in (("json", json_out), ("plot", plot)):
        if path is not None:
            typer.echo(f"{kind}: {path}")


@app.command("benchmark")
def benchmark_cmd(
    data: list[str] = typer.Option(..., "--data", help="A prepared folder, a LoViF input.csv, or meta files "
                                   "(repeat --data for several)."),
    model: str | None = typer.Option(None, "--model", help="Saved model folder."),
    recipe: str | None = typer.Option(None, "--recipe", help="Time a recipe's architecture, random init (no "
                                      "weights needed) instead of --model."),
    split: str | None = typer.Option(None, help="Split of a prepared folder (default test; all: every row)."),
    images_dir: str | None = typer.Option(None, help="Images of input.csv, or the fetch-images cache."),
    batch_size: int = typer.Option(32, help="Batch size."),
    warmup: int = typer.Option(2, help="Warmup batches, run before the clock starts and never counted."),
    batches: int | None = typer.Option(None, help="Measured batches (default: every row after warmup)."),
    max_samples: int | None = typer.Option(None, help="Measured samples instead of --batches."),
    scope: str = typer.Option("end_to_end", help="end_to_end (read + decode + tokenize + forward) | model "
                              "(forward on pre-collated batches) | both."),
    precision: str = typer.Option("auto", help="fp32 | bf16 | fp16 | auto | both (fp32 and bf16)."),
    pad_to_max: bool = typer.Option(False, "--pad-to-max", help="Pad every text to max_length (the canonical "
                                    "input) instead of to the longest in the batch."),
    images: str = typer.Option("first", help="first | mean: which of an item's images feed the model."),
    num_workers: int = typer.Option(0, help="DataLoader workers (0: load in the main process)."),
    threads: int | None = typer.Option(None, help="torch intra-op threads (default: torch's)."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the report as JSON here."),
) -> None:
    """Runtime report: ms/sample, ms/token, throughput and peak memory per (scope, precision)."""
    from effiminivlm.protocol.runtime import run_benchmark
    from effiminivlm.protocol.tables import print_report

    _writable(json_out, "--json", "file")
    _check_runtime(precision, device)
    results = run_benchmark(data, model_dir=model, recipe=recipe, split=split, images_dir=images_dir,
                            scope=scope, precision=precision, batch_size=batch_size, warmup=warmup,
                            batches=batches, max_samples=max_samples, pad_to_max=pad_to_max,
                            num_workers=num_workers, device=device, images=images, threads=threads,
                            json_out=json_out, log=lambda msg: typer.echo(msg, err=True))
    print_report(results)
    if json_out is not None:
        typer.echo(f"json: {json_out}")


# ------------------------------------------------------------------------------------------ option checks
# Run first in each command: a bad option fails in a second, as one line, before any long work.


def _writable(path: str | None, what: str, kind: str) -> None:
    """An output option (when given) must be writable as `kind` (see files.check_writable)."""
    if path is not None:
        from effiminivlm.files import check_writable

        check_writable(path, what, kind)


def _default_eval_out(model: str, split: str) -> str:
    """evaluate's default report folder (MODEL/../eval-SPLIT), checked like an explicit --out."""
    from pathlib import Path

    return str(Path(model).parent / f"eval-{split}")


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def _check_inference(images: str, batch_size: int, num_workers: int, precision: str, device: str | None
                     ) -> None:
    """The options evaluate and predict share."""
    from effiminivlm.config import IMAGE_MODES, PRECISIONS

    _check_choice("--images", images, IMAGE_MODES)
    _check_choice("--precision", precision, PRECISIONS)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {num_workers}")
    _check_runtime(precision, device)


def _check_runtime(precision: str | None, device: str | None) -> None:
    """--device must name a torch device, and a precision must run on it (fp16 needs CUDA). Other precision
    words (benchmark's "both", typos) are left to the command's own check of its choices."""
    from effiminivlm.config import PRECISIONS
    from effiminivlm.runtime import resolve_device, resolve_precision

    try:
        dev = resolve_device(device)
    except RuntimeError:  # torch's "Expected one of cpu, cuda, ipu, xpu, ... device type at start of ..."
        raise ConfigError(f"--device {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if precision in PRECISIONS:
        try:
            resolve_precision(precision, dev)
        except ValueError as e:
            raise ConfigError(f"precision {precision!r} on {dev}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point for the console script and for tests; returns the exit code instead of exiting.

    Only the project's own errors (EffiMiniVLMError and its subclasses) become one line and exit code 2;
    any other exception is a bug and keeps its traceback.
    """
    try:
        app(args=argv, prog_name="effiminivlm", standalone_mode=True)
    except SystemExit as e:  # click's own exit: 0, or 2 for usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except EffiMiniVLMError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    return 0


def _console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console()
