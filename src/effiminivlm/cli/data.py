"""Data-stage commands: prepare, fetch-images, synth, merge-prepared."""

from __future__ import annotations

import typer

from effiminivlm.cli._app import (
    app,
    dataset,
    deprecated,
    line_budget,
    writable,
)
from effiminivlm.errors import ConfigError

# ---------------------------------------------------------------------------------------------- data stage
# (prepare, fetch-images, synth)


@app.command("prepare")
def prepare_cmd(
    inputs: list[str] | None = typer.Argument(None, help="Alias of --data.", show_default=False),
    data: list[str] = typer.Option([], "--data", help="meta_<Category>.jsonl[.gz] files, raw_meta_<Category> "
                                   "parquet shards or folders, or globs (quote them; repeat)."),
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
    max_line_bytes: int | None = typer.Option(None, "--max-line-bytes", help="Longest JSON line read "
                                              "(default 16 MiB); a longer one stops its file (counted) "
                                              "before it is held in memory."),
) -> None:
    """Filter, sample and split Amazon Reviews 2023 item metadata into a prepared Parquet dataset."""
    from effiminivlm.data.prepare import prepare, print_summary

    inputs = dataset(inputs, data)
    writable(out, "--out", "dir")
    max_line_bytes = line_budget(max_line_bytes)
    summary = prepare(inputs, out, frac=frac, min_per_category=min_per_category, seed=seed, strict=strict,
                      require_fields=require_fields, min_text_chars=min_text_chars,
                      require_image=require_image, rare_threshold=rare_threshold,
                      keep_missing_rating_number=keep_missing_rating_number,
                      allow_titles_only=allow_titles_only, overwrite=overwrite, progress=True,
                      max_line_bytes=max_line_bytes)
    print_summary(summary)
    typer.echo(f"wrote {summary['kept']:,} rows to {out}")


@app.command("fetch-images")
def fetch_images_cmd(
    prepared: str | None = typer.Argument(None, help="Alias of --data.", show_default=False),
    data: str | None = typer.Option(None, "--data", help="Prepared dataset folder (effiminivlm prepare)."),
    images_dir: str | None = typer.Option(None, "--images-dir", help="Image cache folder (default "
                                          "DATA/images, where train / evaluate / predict look by default)."),
    cache: str | None = typer.Option(None, "--cache", hidden=True, help="Deprecated: --images-dir."),
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

    (prepared,) = dataset(prepared, data, many=False)
    if cache is not None:
        deprecated("fetch-images --cache", "--images-dir")
        if images_dir is not None:
            raise ConfigError("give the image folder once: --images-dir (--cache is its old name)")
        images_dir = cache
    writable(images_dir, "--images-dir", "dir")
    typer.echo(str(fetch_images(prepared, images_dir, workers=workers, timeout=timeout, retries=retries,
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

    writable(out, "--out", "dir")
    typer.echo(str(write_synth(out, n, seed=seed, image_size=image_size,
                               missing_description_frac=missing_description_frac, progress=True,
                               overwrite=overwrite)))


@app.command("merge-prepared")
def merge_prepared_cmd(
    parts: list[str] | None = typer.Argument(None, help="Alias of --data.", show_default=False),
    data: list[str] = typer.Option([], "--data", help="Prepared folders (e.g. one `prepare` run per "
                                   "category; repeat)."),
    out: str = typer.Option(..., "--out", help="Merged prepared folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
) -> None:
    """Merge prepared folders written by parallel `prepare` runs into one dataset (ids must not repeat)."""
    from effiminivlm.data.merge import merge_prepared

    parts = dataset(parts, data)
    writable(out, "--out", "dir")
    summary = merge_prepared(parts, out, overwrite=overwrite)
    splits = ", ".join(f"{k} {v['rows']}" for k, v in summary["per_split"].items())
    typer.echo(f"{summary['kept']} rows from {len(parts)} parts -> {out} ({splits})")


# ---------------------------------------------------------------------------------------------- model stage
# (recipes, train, evaluate, predict)
