"""Which trainer a recipe runs, decided once: `train`, each `train --kfold` run and anything else that trains
call `run_training`, so a probe recipe can never be fine-tuned by one path and probed by another.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from effiminivlm.config import Recipe
from effiminivlm.errors import ConfigError
from effiminivlm.training.loop import train
from effiminivlm.training.probe import train_probe
from effiminivlm.training.skeleton import is_probe


def run_training(recipe: Recipe | None, data_dir: str | Path, out_dir: str | Path, *, resume: bool = False,
                 overwrite: bool = False, features: str | Path | None = None,
                 images_dir: str | Path | None = None, device: str | None = None, strict: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit `recipe` on the prepared `data_dir` into `out_dir` with its trainer; returns the run summary.

    Probe recipes (`skeleton.is_probe`) fit a head on cached features in seconds, so they restart rather
    than resume; `features` (a cache from `embed`) serves them only. Everything else is the fine-tuning
    loop, which `recipe=None` + `resume` continues with the run's stored recipe."""
    if recipe is not None and is_probe(recipe):
        if resume:
            raise ConfigError("a probe run takes seconds: rerun it with --overwrite instead of --resume")
        return train_probe(recipe, data_dir, out_dir, features=features, overwrite=overwrite,
                           images_dir=images_dir, device=device, strict=strict, log=log)
    if features is not None:
        raise ConfigError("--features is for probe recipes (train.probe ridge | head)")
    return train(recipe, data_dir, out_dir, resume=resume, overwrite=overwrite, images_dir=images_dir,
                 device=device, strict=strict, progress=progress, log=log)
