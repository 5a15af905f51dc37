"""Imports point one way: base -> data -> models -> inference -> evaluation -> training -> protocol -> serving
-> cli. A module importing a higher stage, even inside a function, fails here with its file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "effiminivlm"

#: Stage of each top-level module or package of effiminivlm; a module may import its own stage or lower.
STAGES: dict[str, int] = {
    "errors": 0, "files": 0, "registry": 0, "runtime": 0, "typed": 0, "modelcfg": 0, "config": 0,
    "data": 1,
    "models": 2,
    "inference": 3,
    "evaluation": 4,
    "training": 5,
    "protocol": 6,
    "serving": 7,
    "cli": 8, "__init__": 8,
}


def _stage(module: str) -> tuple[str, int]:
    """(top-level part, stage) of a dotted `effiminivlm.x.y` name."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in STAGES:
        raise AssertionError(f"effiminivlm.{top} has no stage in tests/test_layers.py: STAGES")
    return top, STAGES[top]


def _imports(text: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of effiminivlm in a module's source, at any depth."""
    package = module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "effiminivlm"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the module's package
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name == "effiminivlm":  # `from effiminivlm import files`: the names are modules
                out += [(node.lineno, f"effiminivlm.{a.name}") for a in node.names]
            elif name.split(".")[0] == "effiminivlm":
                out.append((node.lineno, name))
    return out


def _violations(module: str, imports: list[tuple[int, str]]) -> list[str]:
    own_top, own = _stage(module)
    out = []
    for line, name in imports:
        top, stage = _stage(name)
        if stage > own:
            out.append(f"{module}:{line} imports {name} (stage {top}={stage} > {own_top}={own})")
    return out


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(["effiminivlm", *(p for p in parts if p != "__init__")]) if parts != ("__init__",) \
        else "effiminivlm"


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_stage() -> None:
    for path in MODULES:
        _stage(_module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_stage(path: Path) -> None:
    module = _module_name(path)
    bad = _violations(module, _imports(path.read_text(encoding="utf-8"), module))
    assert not bad, "\n".join(bad)


def test_the_checker_sees_nested_and_relative_upward_imports() -> None:
    """A checker that found nothing would pass the test above: it must see imports inside functions,
    relative ones and `from effiminivlm import x`."""
    text = ("import math\n"
            "def f():\n    from effiminivlm.serving.scorer import Scorer\n"
            "    from ..protocol import formulas\n"
            "from effiminivlm import cli, errors\n"
            "from .report import write_report\n")
    module = "effiminivlm.evaluation.metrics"
    found = _imports(text, module)
    assert sorted(found) == [(3, "effiminivlm.serving.scorer"), (4, "effiminivlm.protocol"),
                             (5, "effiminivlm.cli"), (5, "effiminivlm.errors"),
                             (6, "effiminivlm.evaluation.report")]
    bad = _violations(module, found)
    assert [b.split(" imports ")[1].split(" ")[0] for b in bad] == [
        n for _, n in found if n.split(".")[1] in ("cli", "serving", "protocol")]
