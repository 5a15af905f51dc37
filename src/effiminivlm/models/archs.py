"""The model architectures `model.arch` can name (timm's register_model / create_model pattern).

Why a registry: a recipe and a saved folder's config.json both carry `arch`; building or reloading must pick
the class it names, and a typo must fail with the registry's "did you mean" instead of silently building the
default architecture. Registered entries are nn.Module classes taking ``(cfg: ModelCfg, pretrained: bool)``
with a ``from_pretrained(folder, device)`` classmethod (see `EffiMiniVLM`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from effiminivlm.errors import EffiMiniVLMError, UnknownNameError
from effiminivlm.registry import Registry

if TYPE_CHECKING:
    from effiminivlm.config import ModelCfg

MODEL_ARCHS: Registry = Registry("model arch")


def get_arch(name: str, where: str = "model.arch") -> Any:
    """The class registered as `name`; an unknown name raises EffiMiniVLMError naming `where`."""
    try:
        return MODEL_ARCHS.get(name)
    except KeyError as e:
        raise EffiMiniVLMError(f"{where}: {e.args[0]}") from None


def check_model_names(cfg: ModelCfg, where: str = "model") -> None:
    """Fail in one line, before anything is built or read, on an arch, encoder or head name no registry holds
    (the error lists the registered names, with a "did you mean")."""
    from effiminivlm.models import regressor  # noqa: F401  (registers the effiminivlm arch)
    from effiminivlm.models.heads import HEADS
    from effiminivlm.models.image_encoders import IMAGE_ENCODERS
    from effiminivlm.models.text_encoders import TEXT_ENCODERS

    for key, registry, name in ((f"{where}.arch", MODEL_ARCHS, cfg.arch),
                                (f"{where}.image_encoder.name", IMAGE_ENCODERS, cfg.image_encoder.name),
                                (f"{where}.text_encoder.name", TEXT_ENCODERS, cfg.text_encoder.name),
                                (f"{where}.head.name", HEADS, cfg.head.name)):
        try:
            registry.get(name)
        except EffiMiniVLMError as e:
            raise UnknownNameError(f"{key}: {e}") from None
