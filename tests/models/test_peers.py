"""The peer architectures (models/clip_fusion, smolvlm, minivitex, cross_attention, latent_query) on the one
model surface (each tiny variant walks train -> save -> reload -> predict -> profile in test_walk.py); their
own keys are checked like every recipe key; weights that are absent fail in one line naming the option; the
full-size recipes profile at their published size."""

from __future__ import annotations

import pytest
import torch

from effiminivlm.cli import main
from effiminivlm.config import load_recipe
from effiminivlm.errors import ConfigError, WeightsError
from effiminivlm.models import create_model
from effiminivlm.protocol.formulas import load_leaderboard
from effiminivlm.protocol.profile import profile_model

PEERS = ["clip-fusion", "smolvlm2-regressor", "minivitex", "cross-attention", "latent-query"]


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
