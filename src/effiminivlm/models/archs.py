"""The model architectures `model.arch` can name (timm's register_model / create_model pattern), and how they
are found.

Why a registry: a recipe and a saved folder's config.json both carry `arch`; building or reloading must pick
the class it names, and a typo must fail with the registry's "did you mean" instead of silently building the
default architecture. An architecture is one module: a `models.base.RatingModel` subclass taking
``(cfg, pretrained: bool)`` whose `Config` (a `config.ModelCfg` subclass) types its `model:` section, filed by
`@register_arch(name)`. The built-in ones register when `effiminivlm.models` is imported; more come from the
`.py` files of the folders (or files) in $EFFIMINIVLM_ARCH_PATH (os.pathsep-separated) or given to
`load_arch_path`, so a new architecture needs no edit of this package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effiminivlm.config import MODEL_CONFIGS, ModelCfg
from effiminivlm.errors import ConfigError, EffiMiniVLMError, UnknownNameError
from effiminivlm.registry import Registry

if TYPE_CHECKING:
    from effiminivlm.config import ModelCfg

MODEL_ARCHS: Registry = Registry("model arch")
ARCH_PATH_ENV = "EFFIMINIVLM_ARCH_PATH"
_loaded_paths: dict[Path, list[str]] = {}  # module file -> the arch names it registered


def register_arch(name: str) -> Callable[[type], type]:
    """Class decorator: file a RatingModel subclass as `model.arch: name`, with its `Config` dataclass."""

    def deco(cls: type) -> type:
        config = cls.Config
        if not (isinstance(config, type) and issubclass(config, ModelCfg)):
            raise TypeError(f"{cls.__name__}.Config must be a config.ModelCfg subclass")
        MODEL_ARCHS.register(name)(cls)
        MODEL_CONFIGS[name] = config
        return cls

    return deco


def load_arch_path(*paths: str | Path) -> list[str]:
    """Import the architecture modules of each folder (its `*.py`, not `_*.py`) or file; returns the arch
    names they registered. A module is imported once per process, however often its path is given."""
    before = set(MODEL_ARCHS.names())
    for entry in paths:
        root = Path(entry).expanduser().resolve()
        if not root.exists():
            raise EffiMiniVLMError(f"{ARCH_PATH_ENV}: {entry} does not exist")
        files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_")) if root.is_dir() \
            else [root]
        for file in files:
            if file in _loaded_paths:
                continue
            known = set(MODEL_ARCHS.names())
            tag = hashlib.blake2b(str(file).encode(), digest_size=4).hexdigest()
            name = f"effiminivlm_arch_{file.stem}_{tag}"
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is None or spec.loader is None:
                raise EffiMiniVLMError(f"{file}: not an importable Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            _loaded_paths[file] = sorted(set(MODEL_ARCHS.names()) - known)
    return sorted(set(MODEL_ARCHS.names()) - before)


def unload_arch_path(*paths: str | Path) -> None:
    """Forget the architectures the modules of `paths` registered (a test's plug-in, once it is done)."""
    for entry in paths:
        root = Path(entry).expanduser().resolve()
        for file in [f for f in _loaded_paths if f == root or f.parent == root]:
            for arch in _loaded_paths.pop(file):
                MODEL_ARCHS.unregister(arch)
                MODEL_CONFIGS.pop(arch, None)


def load_env_archs() -> None:
    """The architectures of $EFFIMINIVLM_ARCH_PATH (nothing when unset)."""
    value = os.environ.get(ARCH_PATH_ENV, "")
    load_arch_path(*(p for p in value.split(os.pathsep) if p))


def _register_all() -> None:
    # The built-in architectures are registered already: importing this module imports its package first,
    # whose __init__ imports each architecture's module. Only $EFFIMINIVLM_ARCH_PATH may have changed since.
    load_env_archs()


def get_arch(name: str, where: str = "model.arch") -> Any:
    """The class registered as `name`; an unknown name raises EffiMiniVLMError naming `where`."""
    _register_all()
    try:
        return MODEL_ARCHS.get(name)
    except KeyError as e:
        raise EffiMiniVLMError(f"{where}: {e.args[0]}") from None


def check_model_names(cfg: ModelCfg, where: str = "model") -> None:
    """Fail in one line, before anything is built or read, on an arch no registry holds, a config of another
    architecture's type, or a registered name the architecture's own `check_names` refuses (EffiMiniVLM:
    its encoders and head; the error lists the registered names, with a "did you mean")."""
    arch = get_arch(cfg.arch, f"{where}.arch")
    if not isinstance(cfg, arch.Config):
        raise ConfigError(f"{where}: a {type(cfg).__name__} cannot configure {cfg.arch!r} "
                          f"(its config is {arch.Config.__name__})")
    try:
        arch.check_names(cfg, where)
    except UnknownNameError:
        raise
    except EffiMiniVLMError as e:
        raise UnknownNameError(str(e)) from None
