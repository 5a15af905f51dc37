"""One architecture end to end through the CLI (timm's test_models pattern): its tiny recipe trains one step
on the synthetic catalog, the saved folder predicts through `predict` and `load_model` alike, saves again and
reloads to the same predictions, and `profile` counts it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from effiminivlm.cli import main
from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import read_prepared
from effiminivlm.inference import make_loader, run_inference
from effiminivlm.models import get_arch, load_model


def predict(model, tokenizer, prepared: Path, split: str = "test") -> np.ndarray:
    loader = make_loader(model, tokenizer, read_prepared(prepared, split), ImageStore.for_prepared(prepared),
                         batch_size=16)
    return run_inference(model, loader, torch.device("cpu"), "fp32", progress=False).pred


def tiny_recipe(arch: str) -> str:
    """The architecture's own tiny recipe: its `tiny_recipe`, else the packaged `<arch>-tiny`."""
    return get_arch(arch).tiny_recipe or f"{arch}-tiny"


def walk(arch: str, prepared: Path, tmp: Path, capsys) -> None:
    run, sub = tmp / "run", tmp / "sub.csv"
    assert main(["train", "--data", str(prepared), "--out", str(run), "--recipe", tiny_recipe(arch),
                 "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=1",
                 "--set", "train.batch_size=8"]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["format_version"] == 2 and config["model"]["arch"] == arch
    assert main(["predict", str(prepared), "--split", "test", "--model", str(run / "model"),
                 "--out", str(sub), "--num-workers", "0", "--precision", "fp32"]) == 0
    cli_scores = np.array([float(r["score"]) for r in csv.DictReader(sub.open())])

    model, tok = load_model(run / "model")
    assert type(model) is get_arch(arch)
    first = predict(model, tok, prepared)
    np.testing.assert_allclose(np.clip(first, 1, 5), cli_scores, atol=1e-5)
    assert first.std() > 0  # the items are told apart, not one constant
    model.save_pretrained(tmp / "again", tokenizer=tok)
    again, tok2 = load_model(tmp / "again")
    np.testing.assert_allclose(predict(again, tok2, prepared), first, atol=1e-5)

    assert main(["profile", "--model", str(run / "model"), "--json", str(tmp / "profile.json")]) == 0
    profile = json.loads((tmp / "profile.json").read_text())
    assert json.dumps(profile).count(str(model.num_params())) >= 1
    capsys.readouterr()
