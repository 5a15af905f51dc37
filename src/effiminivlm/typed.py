"""Typed values from plain data: a mapping -> a dataclass with every key known and every value checked.

Why apart from the recipes: recipes (config.py), a saved model's config.json and every option check share one
rule set, and each failure must be one ConfigError naming the dotted key, the rule and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, NoReturn

from effiminivlm.errors import ConfigError


def fail(key: str, rule: str, value: Any) -> NoReturn:
    raise ConfigError(f"{key} must be {rule}, got {value!r}")


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        fail(key, f"one of {', '.join(choices)}", value)


def check_int(key: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        fail(key, f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}", value)


def check_number(key: str, value: Any, *, gt: float | None = None, ge: float | None = None,
            lt: float | None = None) -> None:
    """A finite number with optional bounds (gt: >, ge: >=, lt: <)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (gt is None or value > gt) and (ge is None or value >= ge) and (lt is None or value < lt)
    if not ok:
        bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "",
                  f"< {lt:g}" if lt is not None else ""]
        fail(key, " and ".join(["a finite number", *filter(None, bounds)]), value)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Coerce/validate one value against a field annotation; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except (ValueError, TypeError) as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        select = getattr(tp, "typed_select", None)  # a family of dataclasses: the data names its member
        return from_dict(select(value, where) if select is not None else tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 2e-5 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _first_leaf(key: str, value: Any) -> str:
    """`head.hidden_dims` for an unknown `head: {hidden_dims: ...}`: the key the user actually wrote."""
    while isinstance(value, dict) and len(value) == 1:
        (sub, value), = value.items()
        key = f"{key}.{sub}"
    return key


def suggest(key: str, names: Iterable[str]) -> list[str]:
    """Up to two of `names` close to `key`: close spellings, else names containing it (or it them)."""
    names = list(names)
    return (difflib.get_close_matches(key, names, n=2, cutoff=0.6)
            or sorted(n for n in names if key in n or n in key)[:2]
            or difflib.get_close_matches(key, names, n=1, cutoff=0.5))


def _did_you_mean(key: str, names: set[str], prefix: str) -> str:
    """" (did you mean X?)" from `suggest`; "" when nothing is close."""
    close = suggest(key, names)
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types fail with the dotted key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}  # set by code only
    unknown = set(data) - names
    if unknown:
        prefix = f"{where}." if where else ""
        words = [prefix + _first_leaf(k, data[k]) + _did_you_mean(k, names, prefix) for k in sorted(unknown)]
        raise ConfigError(f"unknown recipe key(s) {', '.join(words)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names the field; add where it sits in the recipe
        if not where:
            raise
        raise ConfigError(f"{where}.{e}") from None
