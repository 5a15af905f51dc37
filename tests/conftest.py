"""Shared fixtures: a small synthetic catalog with real images, prepared once per session (and worker)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2023-fashion-dev"


@pytest.fixture(scope="session", autouse=True)
def _graph_cache(tmp_path_factory: pytest.TempPathFactory):
    """Converted OpenVINO graphs go to a per-session folder, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFIMINIVLM_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def synth_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 160-item synthetic catalog (meta JSONL, images, LoViF layout) written by `write_synth`."""
    from effiminivlm.data.synth import write_synth

    out = tmp_path_factory.mktemp("catalog")
    write_synth(out, n=160, seed=0, image_size=64, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared(synth_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalog prepared with every row kept (frac 1) and split 8:1:1."""
    from effiminivlm.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prep"
    prepare([synth_catalog / "meta_Synthetic.jsonl"], out, frac=1.0, min_per_category=0, seed=0)
    return out


@pytest.fixture()
def tiny_recipe():
    """The tiny random-init recipe, shortened for tests (2 epochs of 3 steps, fp32, no workers)."""
    from effiminivlm.config import load_recipe

    return load_recipe("tiny", ["train.epochs=2", "train.max_steps_per_epoch=3", "train.batch_size=8",
                                "train.eval_batch_size=32", "train.patience=5", "data.num_workers=0"])
