"""Scoring commands: evaluate, predict (local or Ray), serve, recipes."""

from __future__ import annotations

import typer

from effiminivlm.cli._app import (
    OLD_FLAG,
    app,
    check_choice,
    check_inference,
    dataset,
    default_eval_out,
    deprecated,
    line_budget,
    refuse_unused,
    writable,
)
from effiminivlm.errors import ConfigError


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Option(..., "--model", help="Saved model folder (a run's model/)."),
    data: str = typer.Option(..., "--data", help="Prepared dataset folder."),
    split: str = typer.Option("test", help="train | val | test."),
    out: str | None = typer.Option(None, "--out", help="Report folder (default: MODEL/../eval-SPLIT)."),
    images: str = typer.Option("first", help="first | mean: which of an item's images feed the model."),
    images_dir: str | None = typer.Option(None, help="Image cache of fetch-images (default DATA/images)."),
    batch_size: int = typer.Option(64, help="Batch size."),
    num_workers: int = typer.Option(0, help="DataLoader workers (decode + tokenise); 0 loads in the main "
                                    "process and gives the model every core (fastest on 2 cores, measured)."),
    min_rating_number: int = typer.Option(10, help="Also report items with at least this many ratings."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16."),
    device: str | None = typer.Option(None, help="cpu | cuda | auto (default)."),
) -> None:
    """PLCC, PLCC+, SRCC, RMSE, MAE and Huber overall, per category and for well-rated items."""
    from effiminivlm.evaluation.evaluate import evaluate

    writable(out if out is not None else default_eval_out(model, split), "--out", "dir")
    check_choice("--split", split, ("train", "val", "test"))
    check_inference(images, batch_size, num_workers, precision, device)
    result = evaluate(model, data, split=split, out_dir=out, images_dir=images_dir, images=images,
                      batch_size=batch_size, num_workers=num_workers, device=device, precision=precision,
                      min_rating_number=min_rating_number)
    typer.echo(result["markdown"])
    for kind, path in result["paths"].items():
        typer.echo(f"{kind}: {path}")


@app.command("predict")
def predict_cmd(
    ctx: typer.Context,
    inputs: list[str] | None = typer.Argument(None, help="Alias of --data.", show_default=False),
    data: list[str] = typer.Option([], "--data", help="A prepared folder, a LoViF input.csv, or meta files "
                                   "(repeat)."),
    model: str = typer.Option(..., "--model", help="Saved model folder."),
    out: str = typer.Option("submission.csv", "--out", help="Submission CSV (item_id,score,params,flops)."),
    split: str | None = typer.Option(None, help="Only this split of a prepared folder."),
    images_dir: str | None = typer.Option(None, help="Images folder of input.csv (default: its images/), or "
                                          "the fetch-images cache."),
    images: str = typer.Option("first", help="first | mean: which of an item's images feed the model."),
    batch_size: int = typer.Option(64, help="Batch size."),
    num_workers: int = typer.Option(0, help="DataLoader workers (decode + tokenise); 0 loads in the main "
                                    "process and gives the model every core (fastest on 2 cores, measured)."),
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
    max_line_bytes: int | None = typer.Option(None, "--max-line-bytes", help="Longest input line or "
                                              "CSV cell read (default 16 MiB); a longer one is refused "
                                              "before it is held in memory."),
) -> None:
    """Score products and write a LoViF submission.csv (with --engine ray and an --out ending in .parquet:
    a Parquet of item_id, score)."""
    import json

    inputs = dataset(inputs, data)
    writable(out, "--out", "file")
    max_line_bytes = line_budget(max_line_bytes)
    if split is not None:
        check_choice("--split", split, ("train", "val", "test"))
    check_choice("--engine", engine, ("local", "ray"))
    check_inference(images, batch_size, num_workers, precision, device)
    if engine == "local" and (address is not None or num_actors is not None or threads is not None):
        raise ConfigError("--address, --num-actors and --threads apply to --engine ray only")
    if engine == "ray":
        refuse_unused(ctx, "--engine ray", ("num_workers", "with_intervals"))
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
                      strict=strict, with_intervals=with_intervals, max_line_bytes=max_line_bytes)
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

    check_inference(images, 1, 0, precision, device)  # the batching limits are checked by serve()
    serve(model, host=host, port=port, images_dir=images_dir, images=images, max_batch=max_batch,
          max_wait_ms=max_wait_ms, max_queue=max_queue, max_items=max_items, request_timeout_s=timeout,
          precision=precision, device=device, log=typer.echo)




@app.command("export")
def export_cmd(
    model: str = typer.Option(..., "--model", help="Saved model folder."),
    out: str = typer.Option(..., "--out", help="New (or empty) folder for the graph, tokenizer and "
                            "preprocess.json."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (ONNX Runtime) | openvino (OpenVINO IR)."),
) -> None:
    """Export a deployable graph + tokenizer + preprocessing config, checked against the PyTorch model."""
    import json

    from effiminivlm.models.export import export_model

    writable(out, "--out", "dir")
    typer.echo(json.dumps(export_model(model, out, fmt), indent=2))


@app.command("recipes")
def recipes_cmd(
    ctx: typer.Context,
    folder: str | None = typer.Argument(None, help="Also a folder of recipe YAMLs (yours)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write JSON (one object per recipe) "
                                        "here; - prints it instead of the table."),
    markdown: str | None = typer.Option(None, "--markdown", help="Also write a Markdown table "
                                        "(docs/PEERS.md) here; - prints it instead."),
    names: bool = typer.Option(False, "--names", help="Only list the names (instant: nothing is built)."),
    only: list[str] = typer.Option([], "--only", help="Only this recipe (repeat)."),
) -> None:
    """Every recipe with its arch, params (all, trainable), canonical FLOPs, C and the best E it can earn."""
    from effiminivlm import config
    from effiminivlm.files import atomic_write_text
    from effiminivlm.protocol.recipes import recipe_sources, recipe_table, rows_json, rows_markdown

    json_out, markdown = _output_path(json_out, "--json"), _output_path(markdown, "--markdown")
    if json_out == "-" and markdown == "-":
        raise ConfigError("only one of --json and --markdown can print (-); give the other a file path")
    writable(None if json_out == "-" else json_out, "--json", "file")
    writable(None if markdown == "-" else markdown, "--markdown", "file")
    if names:
        refuse_unused(ctx, "--names (nothing is built)", ("json_out", "markdown", "only"))
        for name, _ in recipe_sources(folder):
            typer.echo(name)
        return
    config.list_recipes()  # an unreadable package fails before any model is built
    rows = recipe_table(folder, names=only, log=lambda msg: typer.echo(msg, err=True))
    outputs = [(path, render, kind) for path, render, kind in ((json_out, rows_json, "json"),
                                                               (markdown, rows_markdown, "markdown"))
               if path is not None]
    for path, render, _ in outputs:
        if path != "-":
            atomic_write_text(path, render(rows))
    printed = [render for path, render, _ in outputs if path == "-"]
    if printed:
        typer.echo(printed[0](rows), nl=False)
    else:
        from effiminivlm.cli.tables import print_recipes

        print_recipes(rows)
    for path, _, kind in outputs:
        if path != "-":
            typer.echo(f"{kind}: {path}", err=bool(printed))


def _output_path(value: str | None, option: str) -> str | None:
    """An output option's path; the old bare flag means "print it" (-), with a one-line note."""
    if value == OLD_FLAG:
        deprecated(f"recipes {option} without a path", f"{option} PATH (or {option} - to print it)")
        return "-"
    return value
