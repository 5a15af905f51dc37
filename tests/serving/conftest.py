"""Serving fixtures: one tiny saved model, the synthetic catalog's LoViF layout, an app factory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def serve_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny model saved like a trained one (output bias at 3 so nothing clips)."""
    from effiminivlm.config import load_recipe
    from effiminivlm.models.factory import create_model, create_tokenizer
    from effiminivlm.training.loop import init_output_bias

    cfg = load_recipe("tiny").model
    torch.manual_seed(0)
    model = create_model(cfg, pretrained=False)
    init_output_bias(model, 3.0)
    folder = tmp_path_factory.mktemp("serve_model") / "tiny"
    model.save_pretrained(folder, tokenizer=create_tokenizer(cfg))
    return folder


@pytest.fixture(scope="session")
def lovif(synth_catalog: Path) -> Path:
    """The catalog's LoViF folder: input.csv + images/."""
    return synth_catalog / "lovif"


@pytest.fixture()
def make_app(serve_model: Path, lovif: Path):
    """make_app(**settings) -> FastAPI app over the tiny model, images folder = the LoViF images."""
    from effiminivlm.serving.app import create_app
    from effiminivlm.serving.schemas import ServeSettings
    from effiminivlm.serving.scorer import Scorer

    def make(**overrides):
        settings = dataclasses.replace(ServeSettings(images_dir=(lovif / "images").resolve(), max_batch=64),
                                       **overrides)
        scorer = Scorer.from_pretrained(serve_model, num_workers=0, batch_size=settings.max_batch)
        return create_app(scorer, settings)

    return make
