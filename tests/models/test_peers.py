"""The peer architectures (models/clip_fusion, smolvlm, minivitex, cross_attention, latent_query) on the one
model surface: each tiny variant trains through the CLI, saves, reloads and predicts the same values; options
are checked like every recipe key; weights that are absent fail in one line naming the option; the
full-size recipes profile at their published size."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import ConfigError, WeightsError
from effiminivlm.inference import make_loader, run_inference
from effiminivlm.models import create_model, load_model
from effiminivlm.models.archs import MODEL_ARCHS
from effiminivlm.protocol.formulas import load_leaderboard
from effiminivlm.protocol.profile import profile_model

PEERS = ["clip-fusion", "smolvlm2-regressor", "minivitex", "cross-attention", "latent-query"]


def _predict(model, tokenizer, prepared, split="test") -> np.ndarray:
    loader = make_loader(model, tokenizer, read_prepared(prepared, split), ImageStore.for_prepared(prepared),
                         batch_size=16)
    return run_inference(model, loader, torch.device("cpu"), "fp32", progress=False).pred


@pytest.mark.parametrize("arch", PEERS)
def test_tiny_variant_trains_saves_reloads_and_predicts_the_same_through_the_cli(arch, prepared, tmp_path,
                                                                                capsys):
    run, sub = tmp_path / "run", tmp_path / "sub.csv"
    assert main(["train", "--data", str(prepared), "--out", str(run), "--recipe", f"{arch}-tiny",
                 "--set", "train.max_steps_per_epoch=3", "--set", "train.batch_size=8"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["epochs_run"] == 1 and np.isfinite(summary["best_val_plcc"])
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model"]["arch"] == arch and (run / "model" / "model.safetensors").is_file()
    assert main(["predict", str(prepared), "--split", "test", "--model", str(run / "model"),
                 "--out", str(sub), "--num-workers", "0", "--precision", "fp32"]) == 0
    cli_scores = np.array([float(r["score"]) for r in csv.DictReader(sub.open())])

    model, tok = load_model(run / "model")
    assert type(model) is MODEL_ARCHS.get(arch)
    first = _predict(model, tok, prepared)
    np.testing.assert_allclose(np.clip(first, 1, 5), cli_scores, atol=1e-5)
    assert first.std() > 0  # the items are told apart, not one constant
    model.save_pretrained(tmp_path / "again", tokenizer=tok)
    again, tok2 = load_model(tmp_path / "again")
    np.testing.assert_allclose(_predict(again, tok2, prepared), first, atol=1e-5)
    capsys.readouterr()


@pytest.mark.parametrize("arch", PEERS)
def test_options_are_checked_like_recipe_keys(arch) -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe key\(s\) model\.no_such_option"):
        create_model(load_recipe(f"{arch}-tiny", ["model.no_such_option=1"]).model, pretrained=False)


def test_an_unknown_option_fails_train_before_the_data_is_read(tmp_path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "r"),
                 "--recipe", "clip-fusion-tiny", "--set", "model.fusion_layer=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.fusion_layer" in err and "fusion_layers" in err


@pytest.mark.parametrize("arch, key", [
    ("clip-fusion", "pretrained"), ("smolvlm2-regressor", "pretrained"), ("minivitex", "text_pretrained"),
    ("cross-attention", "text_pretrained"), ("latent-query", "image_pretrained")])
def test_absent_weights_are_one_line_naming_the_option(arch, key, tmp_path) -> None:
    cfg = load_recipe(f"{arch}-tiny", [f"model.{key}=local-dir:{tmp_path / 'absent'}"]).model
    with pytest.raises(WeightsError) as e:
        create_model(cfg, pretrained=True)
    assert f"model.{key}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arch", PEERS)
def test_tiny_forward_gives_ratings_and_ignores_padding(arch) -> None:
    """model(batch) -> [B] float32; an item's rating does not depend on how much padding its batch adds."""
    torch.manual_seed(0)
    model = create_model(load_recipe(f"{arch}-tiny").model, pretrained=False)
    batch = model.example_batch(model.cfg.input.image_size, 12)
    with torch.no_grad():
        short = model(batch)
        padded = {k: v for k, v in batch.items()}
        padded["input_ids"] = torch.cat([batch["input_ids"], torch.zeros(1, 4, dtype=torch.long)], 1)
        padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(1, 4, dtype=torch.long)],
                                             1)
        long = model(padded)
    assert short.dtype == torch.float32 and short.shape == (1,)
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)


#: Leaderboard team whose published size each full-size recipe reproduces (None: not on the leaderboard).
PUBLISHED = {"smolvlm2-regressor": "wleach"}


@pytest.mark.slow
@pytest.mark.parametrize("arch", PEERS)
def test_full_size_recipe_profiles(arch) -> None:
    """The published architecture builds offline (random init) and profiles: params within 2% of the
    leaderboard where the source fixes the architecture (see the report for the others)."""
    model = create_model(load_recipe(arch).model, pretrained=False)
    prof = profile_model(model, label=arch)
    assert prof.flops_g > 1 and not prof.uncounted_ops
    team = PUBLISHED.get(arch)
    if team is not None:
        published = next(e for e in load_leaderboard() if e.team == team)
        assert prof.params_m == pytest.approx(published.params_m, rel=0.02)
