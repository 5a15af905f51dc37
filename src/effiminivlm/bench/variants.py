"""The precision variants of the fast path as report rows: one row per tower and precision it can run in.

Why: which precision is fastest per tower depends on the CPU (`effiminivlm quantize` measures it and
stores the choice); the runtime report shows every variant beside the chosen one, on the same items, so the
choice can be read against its alternatives. A row sets the model's `fast_variants` (what
`models.optimize` reads): one tower in the variant, every other tower in fp32, plus the all-fp32 row.
Candidates: fp32, bf16 where this CPU computes it natively (OpenVINO emulates it elsewhere, tens of times
slower: no row), and int8 where the model folder holds a stored int8 graph for that tower.
"""

from __future__ import annotations

import copy

from torch import nn

from effiminivlm.models.quantize import TOWERS, TowerVariant
from effiminivlm.ovgraph import native_precision

FP32 = TowerVariant("fp32")


def tower_options(model: nn.Module) -> dict[str, dict[str, TowerVariant]]:
    """Per tower the model has: the variants it can run in on this CPU (see the module doc)."""
    stored = getattr(model, "fast_variants", None) or {}
    out: dict[str, dict[str, TowerVariant]] = {}
    for tower in TOWERS:
        if getattr(model, f"{tower}_encoder", None) is None:
            continue
        options = {"fp32": FP32}
        if native_precision("bf16") == "bf16":
            options["bf16"] = TowerVariant("bf16")
        if tower in stored and stored[tower].precision == "int8":
            options["int8"] = stored[tower]
        out[tower] = options
    return out


def variant_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(row name, the model set to that variant) for the all-fp32 row and each tower's other variants.
    The copies share the model's modules (only `fast_variants` differs): `optimize_for_inference` copies."""
    options = tower_options(model)
    if not options:
        return []
    rows = [("variant: every tower fp32", {t: FP32 for t in options})]
    for tower, variants in options.items():
        for prec, variant in variants.items():
            if prec != "fp32":
                rows.append((f"variant: {tower} tower {prec}", {**{t: FP32 for t in options},
                                                                 tower: variant}))
    out = []
    for name, chosen in rows:
        twin = copy.copy(model)  # a shallow twin: same submodules, its own attribute
        twin.fast_variants = chosen  # type: ignore[assignment]
        out.append((name, twin))
    return out
