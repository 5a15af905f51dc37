"""The `effiminivlm` command: one thin subcommand per stage.

Why thin: every command parses its options, calls one library function and prints what it returned, so the
same work is reachable from Python, from tests (`main([...])`) and from the shell. User errors
(`EffiMiniVLMError`) print one clear line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from effiminivlm.errors import EffiMiniVLMError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Efficient multimodal product-quality scoring (EffiMiniVLM, LoViF 2026 protocol).")


@app.callback()
def _root() -> None:
    """Efficient multimodal product-quality scoring (EffiMiniVLM, LoViF 2026 protocol)."""


# ---------------------------------------------------------------------------------------------- data stage
# (prepare, fetch-images, synth)


# ---------------------------------------------------------------------------------------------- model stage
# (recipes, train, evaluate, predict)


@app.command("recipes")
def recipes_cmd() -> None:
    """List the packaged recipes."""
    from effiminivlm.config import list_recipes

    for name in list_recipes():
        typer.echo(name)


# ------------------------------------------------------------------------------------------- protocol stage
# (profile, score, benchmark)


def main(argv: list[str] | None = None) -> int:
    """Entry point for the console script and for tests; returns the exit code instead of exiting."""
    try:
        app(args=argv, prog_name="effiminivlm", standalone_mode=True)
    except SystemExit as e:  # click's own exit: 0, or 2 for usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (EffiMiniVLMError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except (KeyError, ValueError) as e:  # unknown recipe names, bad overrides: already worded for users
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        typer.echo(f"error: {msg}", err=True)
        return 2
    return 0


def _console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console()
