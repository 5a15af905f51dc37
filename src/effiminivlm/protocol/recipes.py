"""`effiminivlm recipes`: every recipe's architecture measured by the protocol (params, canonical FLOPs, C,
E).

Why built, not read from a table: a recipe is data, and the only numbers that stay true when a recipe (or the
code of its architecture) changes are the ones measured from the model it builds. Each recipe's model is built
with random init (`pretrained=False`: no weights are read, so presets whose weights are absent still count;
the counts do not depend on the weights' values) and profiled on the canonical input; nothing is cached, so a
changed YAML is never reported with stale numbers. New recipes (packaged or in a folder) appear without code
changes. "Trainable" applies the recipe's own freezing (`train.freeze_image` / `freeze_text`, frozen text
layers and image stages, LoRA); P, as the protocol counts it, includes frozen parameters.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from effiminivlm import config
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.protocol.formulas import DEFAULT_PROTOCOL, ProtocolCfg, cap_cost


@dataclass
class RecipeRow:
    """One recipe's architecture by the protocol: E is the most it can earn (CES = PLCC+ x E <= E)."""

    name: str
    source: str  # "packaged" or the YAML's path
    arch: str | None = None
    image_encoder: str | None = None
    text_encoder: str | None = None
    image_size: int | None = None
    max_length: int | None = None
    params_m: float | None = None
    trainable_m: float | None = None
    flops_g: float | None = None
    c: float | None = None
    e: float | None = None
    error: str | None = None  # the one-line reason this recipe could not be built or counted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recipe_sources(folder: str | Path | None = None, packaged: bool = True) -> list[tuple[str, str]]:
    """(name, what `load_recipe` takes) for the packaged recipes and every *.yaml / *.yml in `folder`."""
    out = [(name, name) for name in config.list_recipes()] if packaged else []
    if folder is not None:
        root = Path(folder)
        if not root.is_dir():
            raise EffiMiniVLMError(f"{root}: no such folder of recipe YAMLs")
        files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise EffiMiniVLMError(f"{root}: no *.yaml recipe in this folder")
        out += [(p.stem, str(p)) for p in files]
    return out


def _tower(model: torch.nn.Module, attr: str, registered: str, used: bool) -> str:
    """The tower's registry name where the recipe's encoder section builds it (effiminivlm), else the class
    of the module the architecture built from its own options; "-" when absent."""
    module = getattr(model, attr, None)
    if module is None or not used:
        return "-"
    if type(model).__name__ == "EffiMiniVLM":
        return registered
    inner = getattr(module, "model", None)  # timm / torchvision wrappers hold the network as .model
    return type(inner if isinstance(inner, torch.nn.Module) else module).__name__


def profile_recipe(name: str, spec: str, cfg: ProtocolCfg = DEFAULT_PROTOCOL) -> RecipeRow:
    """Build `spec`'s architecture with random init and count it; a recipe that fails gives a row with
    `error` (one line) instead of stopping the table."""
    from effiminivlm.models.factory import create_model
    from effiminivlm.models.freezing import apply_recipe_freezing
    from effiminivlm.protocol.profile import profile_model

    row = RecipeRow(name, "packaged" if spec == name and "/" not in spec else spec)
    try:
        recipe = config.load_recipe(spec)
        m = recipe.model
        row.arch = m.arch
        torch.manual_seed(0)
        model = create_model(m, pretrained=False)
        row.image_encoder = _tower(model, "image_encoder", m.image_encoder.name, m.modalities != "text")
        row.text_encoder = _tower(model, "text_encoder", m.text_encoder.name, m.modalities != "image")
        apply_recipe_freezing(model, recipe.train)
        prof = profile_model(model, label=name, cfg=cfg)
    except EffiMiniVLMError as e:
        row.error = str(e).splitlines()[0]
        return row
    row.image_size, row.max_length = prof.image_size, prof.max_length
    row.params_m, row.trainable_m, row.flops_g = prof.params_m, prof.trainable_m, prof.flops_g
    row.c, row.e = prof.c, prof.e
    return row


def recipe_table(folder: str | Path | None = None, packaged: bool = True, names: Sequence[str] = (),
                 cfg: ProtocolCfg = DEFAULT_PROTOCOL, log: Callable[[str], None] | None = None
                 ) -> list[RecipeRow]:
    """Every recipe (packaged, plus `folder`'s YAMLs; only `names` when given), measured one after another."""
    sources = recipe_sources(folder, packaged)
    if names:
        known = {n for n, _ in sources}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise EffiMiniVLMError(f"unknown recipe(s) {', '.join(unknown)}; known: "
                                   f"{', '.join(sorted(known))}")
        sources = [(n, s) for n, s in sources if n in names]
    rows = []
    for name, spec in sources:
        if log:
            log(f"recipe {name}: building (random init) and counting ...")
        rows.append(profile_recipe(name, spec, cfg))
    return rows


def fmt_num(value: float | None, digits: int) -> str:
    """Fixed decimals, but 3 significant digits below 1 so a tiny model's numbers do not print as 0.00."""
    if value is None:
        return "-"
    return f"{value:.3g}" if 0 < abs(value) < 1 else f"{value:.{digits}f}"


def rows_markdown(rows: Sequence[RecipeRow], cfg: ProtocolCfg = DEFAULT_PROTOCOL) -> str:
    """A Markdown table of the rows, with the counting rules under it (what the numbers mean)."""
    lines = ["| recipe | arch | image / text tower | input | params (M) | trainable (M) | FLOPs (G) | C | "
             "best E |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.name} | {r.arch or '-'} | | | | | | | error: {r.error} |")
            continue
        size = f"{r.image_size}px" if r.image_size else "no image"
        tokens = f"{r.max_length} tok" if r.max_length else "no text"
        lines.append(f"| {r.name} | {r.arch} | {r.image_encoder} / {r.text_encoder} | {size}, {tokens} | "
                     f"{fmt_num(r.params_m, 2)} | {fmt_num(r.trainable_m, 2)} | {fmt_num(r.flops_g, 2)} | "
                     f"{fmt_num(r.c, 3)} | {r.e:.3f} |")
    lines += ["", "Params: all parameters (frozen included: the protocol's P); trainable after the recipe's "
              "own freezing. FLOPs: one canonical forward pass (batch 1, one image at the recipe's size, "
              "text padded to its max length, every token attended; 2 FLOPs per multiply-add). C = (P/"
              f"{cfg.params_target_m:g}M)^{cfg.params_weight:g} x (F/{cfg.flops_target_g:g}G)^"
              f"{cfg.flops_weight:g}; best E = E(C), the most a model of that cost earns (CES = max(0, PLCC) "
              f"x E), capped at {cfg.e_cap:.2f} below C = {cap_cost(cfg):.3f}. Built with random init: no "
              "weights are read."]
    return "\n".join(lines) + "\n"


def rows_json(rows: Sequence[RecipeRow], cfg: ProtocolCfg = DEFAULT_PROTOCOL) -> str:
    return json.dumps({"protocol": cfg.to_dict(), "recipes": [r.to_dict() for r in rows]}, indent=2) + "\n"
