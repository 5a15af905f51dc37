"""Resumable training state, written atomically each epoch.

Why: a run on millions of products must survive a crash or a pre-empted machine without redoing finished
epochs, and resuming must give the same run as never stopping (optimizer moments, scheduler position, RNG
streams and early-stopping counters all included). Files are written to a temporary name and renamed, so a
crash mid-write leaves the previous checkpoint intact. Loading uses `torch.load(weights_only=True)`: only
tensors and plain Python values, never arbitrary pickled objects.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effiminivlm.errors import EffiMiniVLMError

CHECKPOINT_NAME = "last.pt"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` (tensors and plain values) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; a missing or corrupt file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise EffiMiniVLMError(f"no checkpoint at {path}: nothing to resume (start without --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise EffiMiniVLMError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
