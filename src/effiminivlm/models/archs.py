"""The model architectures `model.arch` can name (timm's register_model / create_model pattern).

Why a registry: a recipe and a saved folder's config.json both carry `arch`; building or reloading must pick
the class it names, and a typo must fail with the registry's "did you mean" instead of silently building the
default architecture. Registered entries are `models.base.RatingModel` subclasses taking
``(cfg: ModelCfg, pretrained: bool)``; each has an ``Options`` dataclass for ``model.options``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from effiminivlm.errors import EffiMiniVLMError, UnknownNameError
from effiminivlm.registry import Registry

if TYPE_CHECKING:
    from effiminivlm.config import ModelCfg

MODEL_ARCHS: Registry = Registry("model arch")
#: The modules whose import registers an architecture (imported before any name is looked up).
ARCH_MODULES = ("regressor", "clip_fusion", "smolvlm", "minivitex", "cross_attention",
                "latent_query", "hybrid")


def _register_all() -> None:
    import importlib

    for name in ARCH_MODULES:
        importlib.import_module(f"effiminivlm.models.{name}")


def get_arch(name: str, where: str = "model.arch") -> Any:
    """The class registered as `name`; an unknown name raises EffiMiniVLMError naming `where`."""
    _register_all()
    try:
        return MODEL_ARCHS.get(name)
    except KeyError as e:
        raise EffiMiniVLMError(f"{where}: {e.args[0]}") from None


def check_model_names(cfg: ModelCfg, where: str = "model") -> None:
    """Fail in one line, before anything is built or read, on an arch, encoder or head name no registry holds
    (the error lists the registered names, with a "did you mean"), or on an option key or value the arch's
    Options dataclass does not accept."""
    from effiminivlm.models.heads import HEADS
    from effiminivlm.models.image_encoders import IMAGE_ENCODERS
    from effiminivlm.models.text_encoders import TEXT_ENCODERS

    _register_all()
    for key, registry, name in ((f"{where}.arch", MODEL_ARCHS, cfg.arch),
                                (f"{where}.image_encoder.name", IMAGE_ENCODERS, cfg.image_encoder.name),
                                (f"{where}.text_encoder.name", TEXT_ENCODERS, cfg.text_encoder.name),
                                (f"{where}.head.name", HEADS, cfg.head.name)):
        try:
            registry.get(name)
        except EffiMiniVLMError as e:
            raise UnknownNameError(f"{key}: {e}") from None
    from effiminivlm.typed import from_dict

    from_dict(get_arch(cfg.arch).Options, dict(cfg.options), f"{where}.options")
