"""The model architectures `model.arch` can name (timm's register_model / create_model pattern).

Why a registry: a recipe and a saved folder's config.json both carry `arch`; building or reloading must pick
the class it names, and a typo must fail with the registry's "did you mean" instead of silently building the
default architecture. Registered entries are nn.Module classes taking ``(cfg: ModelCfg, pretrained: bool)``
with a ``from_pretrained(folder, device)`` classmethod (see `EffiMiniVLM`).
"""

from __future__ import annotations

from typing import Any

from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.registry import Registry

MODEL_ARCHS: Registry = Registry("model arch")


def get_arch(name: str, where: str = "model.arch") -> Any:
    """The class registered as `name`; an unknown name raises EffiMiniVLMError naming `where`."""
    try:
        return MODEL_ARCHS.get(name)
    except KeyError as e:
        raise EffiMiniVLMError(f"{where}: {e.args[0]}") from None
