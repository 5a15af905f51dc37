"""`python -m effiminivlm.cli ...` (torchrun launches training this way)."""

from effiminivlm.cli import _console

_console()
