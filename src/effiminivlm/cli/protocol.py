"""Protocol commands (LoViF 2026): profile, score, benchmark."""

from __future__ import annotations

import typer

from effiminivlm.cli._app import (
    app,
    check_runtime,
    refuse_unused,
    writable,
)
from effiminivlm.errors import ConfigError

# ------------------------------------------------------------------------------------------- protocol stage
# (profile, score, benchmark)


@app.command("profile")
def profile_cmd(
    model: str | None = typer.Option(None, "--model", help="Saved model folder."),
    recipe: str | None = typer.Option(None, "--recipe", help="Profile a recipe's architecture, random init "
                                      "(no weights needed) instead of --model."),
    set_: list[str] = typer.Option([], "--set", help="Recipe override, e.g. input.image_size="
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
    from effiminivlm.cli.tables import print_profile
    from effiminivlm.protocol.profile import run_profile

    writable(json_out, "--json", "file")
    writable(plot, "--plot", "file")
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
    lovif_test: bool = typer.Option(False, "--lovif-test", help="The truth is the LoViF 2026 test set: "
                                    "give the would-be leaderboard rank (otherwise: not comparable)."),
) -> None:
    """Score a submission as the leaderboard does: PLCC, C, E, CES (and, with --lovif-test, the rank)."""
    from effiminivlm.cli.tables import print_score
    from effiminivlm.protocol.score import run_score

    writable(json_out, "--json", "file")
    writable(plot, "--plot", "file")
    print_score(run_score(predictions, truth, json_out=json_out, plot_out=plot, lovif_test=lovif_test))
    for kind, path in (("json", json_out), ("plot", plot)):
        if path is not None:
            typer.echo(f"{kind}: {path}")


@app.command("benchmark")
def benchmark_cmd(
    ctx: typer.Context,
    data: list[str] = typer.Option(..., "--data", help="A prepared folder, a LoViF input.csv, or meta files "
                                   "(repeat --data for several)."),
    model: str | None = typer.Option(None, "--model", help="Saved model folder."),
    recipe: str | None = typer.Option(None, "--recipe", help="Time a recipe's architecture, random init (no "
                                      "weights needed) instead of --model."),
    split: str | None = typer.Option(None, help="Split of a prepared folder (default test; all: every row)."),
    images_dir: str | None = typer.Option(None, help="Images of input.csv, or the fetch-images cache."),
    batch_size: int = typer.Option(32, help="Batch size."),
    warmup: int = typer.Option(5, help="Warmup batches, run before the clock starts and never counted."),
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
    baseline: str | None = typer.Option(None, "--baseline", help="reference: time the reference pipeline, "
                                        "the fp32 path and the fast path on the same items in one run (the "
                                        "Table 3 report, with parity and the measured matmul peak)."),
    ablation: bool = typer.Option(False, "--ablation", help="With --baseline: also time the fast path with "
                                  "each lever flipped."),
    compile_lever: bool = typer.Option(False, "--compile", help="With --ablation: also try torch.compile."),
    markdown: str | None = typer.Option(None, "--markdown", help="With --baseline: write the report as "
                                        "Markdown here."),
) -> None:
    """Runtime report: ms/sample, ms/token, throughput and peak memory per (scope, precision); with
    --baseline reference, the fast path against the reference pipeline (Table 3)."""
    from effiminivlm.bench.throughput import run_benchmark
    from effiminivlm.cli.tables import print_report

    writable(json_out, "--json", "file")
    writable(markdown, "--markdown", "file")
    if baseline is not None:
        from effiminivlm.bench.baseline import BASELINES, render_markdown, run_table3

        if baseline not in BASELINES:
            raise ConfigError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        refuse_unused(ctx, "--baseline (it times its own fixed paths)",
                      ("scope", "precision", "pad_to_max", "images", "num_workers", "threads", "batches"))
        report = run_table3(data, model_dir=model, recipe=recipe, split=split, images_dir=images_dir,
                            batch_size=batch_size, warmup=warmup, max_samples=max_samples, ablation=ablation,
                            compile_lever=compile_lever, device=device, json_out=json_out,
                            markdown_out=markdown, log=lambda msg: typer.echo(msg, err=True))
        typer.echo(render_markdown(report))
        return
    refuse_unused(ctx, "a benchmark without --baseline", ("ablation", "compile_lever", "markdown"))
    check_runtime(precision, device)
    results = run_benchmark(data, model_dir=model, recipe=recipe, split=split, images_dir=images_dir,
                            scope=scope, precision=precision, batch_size=batch_size, warmup=warmup,
                            batches=batches, max_samples=max_samples, pad_to_max=pad_to_max,
                            num_workers=num_workers, device=device, images=images, threads=threads,
                            json_out=json_out, log=lambda msg: typer.echo(msg, err=True))
    print_report(results)
    if json_out is not None:
        typer.echo(f"json: {json_out}")
