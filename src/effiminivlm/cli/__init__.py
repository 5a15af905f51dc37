"""The `effiminivlm` command: one thin subcommand per stage, one module per stage's commands.

Why thin: every command parses its options, calls one library function and prints what it returned, so the
same work is reachable from Python, from tests (`main([...])`) and from the shell. Importing this package
registers every command on `app`, stage by stage (the order `--help` lists them in).
"""
# ruff: noqa: I001  (the import order below is the order of the commands in --help)

import sys

from effiminivlm.cli._app import app, main
from effiminivlm.cli import data, training, scoring, protocol, models  # noqa: F401  (register the commands)

__all__ = ["app", "main"]


def _console() -> None:
    """The `effiminivlm` console script (pyproject.toml): exit with `main`'s code."""
    sys.exit(main())
