"""One generic registry, one instance per kind of part (image encoders, text encoders, heads, losses...).

Why: recipes name parts by string; a registry turns a name into a builder and fails with suggestions
(an UnknownNameError the CLI prints as one line), so a typo in a YAML recipe is a one-line fix, not a
traceback hunt.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from effiminivlm.errors import UnknownNameError

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """A name -> builder table with a `register` decorator and helpful lookups."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator filing a builder under `name` (default: the function's name)."""

        def deco(fn: T) -> T:
            key = name or fn.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = fn
            return fn

        return deco

    def get(self, name: str) -> T:
        """The builder registered as `name`; an unknown name raises UnknownNameError (a user error, also a
        KeyError) with close matches and the known names."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})"
                                   ) from None

    def unregister(self, name: str) -> None:
        """Forget `name` (a plug-in unloaded); an unknown name is not an error."""
        self._items.pop(name, None)

    def build(self, name: str, **kwargs: Any) -> Any:
        """Look up `name` and call its builder with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
