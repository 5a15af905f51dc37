"""The `effiminivlm` command: the typer app, the option checks every command runs first, and `main`.

Why thin: every command parses its options, calls one library function and prints what it returned, so the
same work is reachable from Python, from tests (`main([...])`) and from the shell. User errors
(`EffiMiniVLMError`) print one clear line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from effiminivlm.errors import ConfigError, EffiMiniVLMError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Efficient multimodal product-quality scoring (EffiMiniVLM, LoViF 2026 protocol).")


@app.callback()
def _root() -> None:
    """Efficient multimodal product-quality scoring (EffiMiniVLM, LoViF 2026 protocol)."""



# ------------------------------------------------------------------------------------------ option checks
# Run first in each command: a bad option fails in a second, as one line, before any long work.


def _writable(path: str | None, what: str, kind: str) -> None:
    """An output option (when given) must be writable as `kind` (see files.check_writable)."""
    if path is not None:
        from effiminivlm.files import check_writable

        check_writable(path, what, kind)


def _line_budget(max_line_bytes: int | None) -> int:
    """--max-line-bytes, checked; None is the documented default (files.MAX_LINE_BYTES, 16 MiB)."""
    from effiminivlm.files import MAX_LINE_BYTES

    if max_line_bytes is not None and max_line_bytes < 1024:
        raise ConfigError(f"--max-line-bytes must be >= 1024, got {max_line_bytes}")
    return MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes


def _default_eval_out(model: str, split: str) -> str:
    """evaluate's default report folder (MODEL/../eval-SPLIT), checked like an explicit --out."""
    from pathlib import Path

    return str(Path(model).parent / f"eval-{split}")


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def _check_inference(images: str, batch_size: int, num_workers: int, precision: str, device: str | None
                     ) -> None:
    """The options evaluate and predict share."""
    from effiminivlm.config import IMAGE_MODES, PRECISIONS

    _check_choice("--images", images, IMAGE_MODES)
    _check_choice("--precision", precision, PRECISIONS)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {num_workers}")
    _check_runtime(precision, device)


def _check_runtime(precision: str | None, device: str | None) -> None:
    """--device must name a torch device, and a precision must run on it (fp16 needs CUDA). Other precision
    words (benchmark's "both", typos) are left to the command's own check of its choices."""
    from effiminivlm.config import PRECISIONS
    from effiminivlm.runtime import resolve_device, resolve_precision

    try:
        dev = resolve_device(device)
    except RuntimeError:  # torch's "Expected one of cpu, cuda, ipu, xpu, ... device type at start of ..."
        raise ConfigError(f"--device {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if precision in PRECISIONS:
        try:
            resolve_precision(precision, dev)
        except ValueError as e:
            raise ConfigError(f"precision {precision!r} on {dev}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point for the console script and for tests; returns the exit code instead of exiting.

    Only the project's own errors (EffiMiniVLMError and its subclasses) become one line and exit code 2;
    any other exception is a bug and keeps its traceback.
    """
    try:
        app(args=argv, prog_name="effiminivlm", standalone_mode=True)
    except SystemExit as e:  # click's own exit: 0, or 2 for usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except EffiMiniVLMError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    return 0


def _console() -> None:
    sys.exit(main())
