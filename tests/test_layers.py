"""Imports point one way: base -> data -> models -> inference -> evaluation -> training -> protocol -> bench
-> serving -> cli. A module importing a higher stage, even inside a function, fails here with its file and
line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "effiminivlm"

#: Stage of each top-level module or package of effiminivlm; a module may import its own stage or lower.
STAGES: dict[str, int] = {
    "errors": 0, "files": 0, "registry": 0, "runtime": 0, "typed": 0, "modelcfg": 0, "config": 0,
    "ovgraph": 0,
    "data": 1,
    "models": 2,
    "inference": 3,
    "evaluation": 4,
    "training": 5,
    "protocol": 6,
    "bench": 7,
    "serving": 8,
    "cli": 9, "__init__": 9,
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


#: Stages a stage may not import although they sit below it: the protocol is the LoViF rules only.
FORBIDDEN: dict[str, frozenset[str]] = {"protocol": frozenset({"training", "serving", "bench", "cli"})}


@pytest.mark.parametrize("path", [p for p in MODULES if _module_name(p).split(".")[1:2] == ["protocol"]],
                         ids=lambda p: str(p.relative_to(SRC)))
def test_protocol_imports_no_training_serving_bench_or_cli(path: Path) -> None:
    """The protocol is the LoViF rules: it may use data, models and evaluation's metrics, nothing that
    trains, serves, times or parses a command line (not even inside a function)."""
    module = _module_name(path)
    own_top = _stage(module)[0]
    found = _imports(path.read_text(encoding="utf-8"), module)
    bad = [f"{module}:{line} imports {name}" for line, name in found if _stage(name)[0] in FORBIDDEN[own_top]]
    assert not bad, "\n".join(bad)


def _runtime_imports(text: str, module: str, functions: bool = True) -> list[str]:
    """Modules of effiminivlm a module imports: at module level (in `if` / `try` blocks and class bodies
    too) and, with `functions`, inside functions (a lazy import is still a dependency); never under
    `if TYPE_CHECKING:`. A `from package import name` counts as importing the submodule `name` when there
    is one."""
    package = module.split(".")[:-1] if not (SRC / Path(*module.split(".")[1:]) / "__init__.py").is_file() \
        else module.split(".")
    out = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if functions:
                    visit(node.body)
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                out.extend(a.name for a in node.names if a.name.split(".")[0] == "effiminivlm")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    name = ".".join([*base, node.module] if node.module else base)
                else:
                    name = node.module or ""
                if name.split(".")[0] != "effiminivlm":
                    continue
                for a in node.names:
                    sub = SRC.joinpath(*name.split(".")[1:], a.name)
                    out.append(f"{name}.{a.name}" if sub.with_suffix(".py").is_file() or sub.is_dir()
                               else name)
            for child in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, child, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt | ast.excepthandler):
                    visit(inner)  # type: ignore[arg-type]

    visit(ast.parse(text).body)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (or a module importing itself): Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _import_graph(functions: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        module = _module_name(path)
        text = path.read_text(encoding="utf-8")
        graph[module] = {m for m in _runtime_imports(text, module, functions) if m != module}
    return graph


@pytest.mark.parametrize("functions", [False, True], ids=["module-level", "function-level-too"])
def test_no_import_circle_in_the_package(functions: bool) -> None:
    """No module imports a module that (through any chain) imports it back: at module level a circle works
    only by the accident of which module is imported first; through a function-level import it still
    means two modules that cannot be understood (or moved) apart."""
    circles = _cycles(_import_graph(functions))
    assert not circles, "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_sees_a_circle_through_a_chain_and_skips_function_level_imports() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"], ["e"]]
    text = ("from effiminivlm.data import schema\n"
            "if TYPE_CHECKING:\n    from effiminivlm.models import base\n"
            "try:\n    import effiminivlm.files\nexcept ImportError:\n    pass\n"
            "def f():\n    from effiminivlm.serving import scorer\n")
    module = "effiminivlm.data.meta"
    assert _runtime_imports(text, module, functions=False) == ["effiminivlm.data.schema", "effiminivlm.files"]
    assert _runtime_imports(text, module)[-1] == "effiminivlm.serving.scorer"


def _private_imports(text: str, module: str) -> list[str]:
    """`from effiminivlm.x import _name` (absolute or relative) naming another module's private name."""
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("effiminivlm")):
            out += [f"{module}:{node.lineno} imports {node.module}.{a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_another_modules_private_names(path: Path) -> None:
    """A leading underscore says "may change without notice"; a name other modules need is public."""
    bad = _private_imports(path.read_text(encoding="utf-8"), _module_name(path))
    assert not bad, "\n".join(bad)


def test_the_private_name_checker_sees_relative_and_absolute_imports() -> None:
    text = "from effiminivlm.data.readers import _rows, read\nfrom .x import _y\nfrom os import _exit\n"
    assert _private_imports(text, "m") == ["m:1 imports effiminivlm.data.readers._rows", "m:2 imports x._y"]
