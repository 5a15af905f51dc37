"""A saved model's protocol profile (params, canonical FLOPs, C, E), counted once and kept in its folder.

Why: counting canonical FLOPs runs the model once on the canonical input (256 tokens, a full image) under
a FLOP counter: seconds of a `predict` of 32 items spent on a number that depends on the architecture
only. `stored_profile` reads it from `MODEL/cost.json` when that file describes this very folder (the same
config.json, weights file size and package version, which fixes the protocol's constants), else counts it
and writes the file (best effort: a read-only folder just counts every time). A folder without the file
(saved by an older version) works as before, and gets the file on its first use. Reading it imports none of
the counting machinery (`protocol.profile` and what it pulls in load only when a count is needed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effiminivlm.files import to_jsonable, write_json

if TYPE_CHECKING:
    from torch import nn

    from effiminivlm.protocol.profile import ModelProfile

COST_NAME = "cost.json"


class StoredCost:
    """A model's profile as stored (the JSON form of `protocol.profile.ModelProfile`), its figures read by
    name: `params_m`, `flops_g`, `c`, `e`, `image_size`, `max_length`, ... The same object whether just
    counted or read back, so a command states the same numbers either way."""

    def __init__(self, profile: dict[str, Any]) -> None:
        self._profile = json.loads(json.dumps(to_jsonable(profile)))

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_profile"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredCost) and self._profile == other._profile

    __hash__ = None  # type: ignore[assignment]  # mutable contents: no hash


def profile_model(model: nn.Module) -> ModelProfile:
    """`protocol.profile.profile_model`, imported only when a count is needed."""
    from effiminivlm.protocol.profile import profile_model as count

    return count(model)


def _cost_key(folder: Path) -> str | None:
    """What the stored counts depend on, as a digest; None when the folder has no config.json to key on."""
    from importlib import metadata

    try:
        version = metadata.version("effiminivlm")  # the counting rules' version
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        config = (folder / "config.json").read_bytes()
        weights = (folder / "model.safetensors").stat().st_size
    except OSError:
        return None
    digest = hashlib.sha256(config)
    digest.update(json.dumps([weights, version]).encode())
    return digest.hexdigest()


def read_stored_profile(folder: str | Path) -> StoredCost | None:
    """The figures stored for `folder`, or None when absent, unreadable or written for another model."""
    folder = Path(folder)
    key = _cost_key(folder)
    try:
        data: Any = json.loads((folder / COST_NAME).read_text(encoding="utf-8"))
        if key is not None and isinstance(data, dict) and data.get("key") == key and \
                {"params_m", "flops_g"} <= set(data["profile"]):
            return StoredCost(data["profile"])
    except (OSError, ValueError, TypeError, KeyError):
        pass  # absent or damaged: count again
    return None


def store_profile(folder: str | Path, profile: ModelProfile) -> bool:
    """Write `profile` as the folder's cost.json; False when the folder cannot be written (read-only)."""
    key = _cost_key(Path(folder))
    if key is None:
        return False
    try:
        write_json({"key": key, "profile": profile.to_dict()}, Path(folder) / COST_NAME)
    except OSError:
        return False
    return True


def stored_profile(model: nn.Module, folder: str | Path | None) -> StoredCost:
    """The figures of `profile_model(model)` for the model saved in `folder`, read from its cost.json when it
    matches, else counted and stored there; without a folder (a model built in memory) simply counted."""
    if folder is not None and (stored := read_stored_profile(folder)) is not None:
        return stored
    prof = profile_model(model)
    if folder is not None:
        store_profile(folder, prof)
    return StoredCost(prof.to_dict())
