"""The `effiminivlm` command: the typer app, the option checks every command runs first, and `main`.

Why thin: every command parses its options, calls one library function and prints what it returned, so the
same work is reachable from Python, from tests (`main([...])`) and from the shell. User errors
(`EffiMiniVLMError`) print one clear line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import typer

from effiminivlm.errors import ConfigError, EffiMiniVLMError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Efficient multimodal product-quality scoring (EffiMiniVLM, LoViF 2026 protocol).")


@app.callback()
def _root() -> None:
    """Efficient multimodal product-quality scoring (EffiMiniVLM, LoViF 2026 protocol)."""



# ------------------------------------------------------------------------------------------ option checks
# Run first in each command: a bad option fails in a second, as one line, before any long work.


def writable(path: str | None, what: str, kind: str) -> None:
    """An output option (when given) must be writable as `kind` (see files.check_writable)."""
    if path is not None:
        from effiminivlm.files import check_writable

        check_writable(path, what, kind)


def line_budget(max_line_bytes: int | None) -> int:
    """--max-line-bytes, checked; None is the documented default (files.MAX_LINE_BYTES, 16 MiB)."""
    from effiminivlm.files import MAX_LINE_BYTES

    if max_line_bytes is not None and max_line_bytes < 1024:
        raise ConfigError(f"--max-line-bytes must be >= 1024, got {max_line_bytes}")
    return MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes


def default_eval_out(model: str, split: str) -> str:
    """evaluate's default report folder (MODEL/../eval-SPLIT), checked like an explicit --out."""
    from pathlib import Path

    return str(Path(model).parent / f"eval-{split}")


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def check_inference(images: str, batch_size: int, num_workers: int, precision: str, device: str | None
                     ) -> None:
    """The options evaluate and predict share."""
    from effiminivlm.config import IMAGE_MODES, PRECISIONS

    check_choice("--images", images, IMAGE_MODES)
    check_choice("--precision", precision, PRECISIONS)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {num_workers}")
    check_runtime(precision, device)


def check_runtime(precision: str | None, device: str | None) -> None:
    """--device must name a torch device, and a precision must run on it (fp16 needs CUDA). Other precision
    words (benchmark's "both", typos) are left to the command's own check of its choices."""
    from effiminivlm.config import PRECISIONS
    from effiminivlm.runtime import cuda_absent, resolve_device, resolve_precision

    try:  # the CPU is known without importing torch (a fast `predict` never imports it)
        dev = "cpu" if cuda_absent(device) else resolve_device(device)
    except RuntimeError:  # torch's "Expected one of cpu, cuda, ipu, xpu, ... device type at start of ..."
        raise ConfigError(f"--device {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if precision in PRECISIONS:
        try:
            resolve_precision(precision, dev)
        except ValueError as e:
            raise ConfigError(f"precision {precision!r} on {dev}: {e}") from None


# ------------------------------------------------------------------------------- one name per concept
# The dataset is `--data`, an image folder `--images-dir`, outputs `--json PATH` / `--markdown PATH` in every
# command. A positional dataset stays as an alias where it existed; an older spelling keeps working with a
# one-line note on stderr; an option the chosen mode would ignore is refused instead of silently dropped.


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set parameter `name` (by its Python name) on the command line, default or not.
    Compared by name: typer carries its own copy of click's ParameterSource."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def refuse_unused(ctx: typer.Context, mode: str, names: Iterable[str]) -> None:
    """One line naming every option in `names` the user set although `mode` ignores it."""
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    used = [flags[n] for n in names if given(ctx, n)]
    if used:
        raise ConfigError(f"{', '.join(used)} {'does' if len(used) == 1 else 'do'} not apply to {mode}")


#: Output options that once were on/off flags (print instead of the table): given bare, they get this value.
OLD_FLAG = "\0flag"
_FORMER_FLAGS: dict[str, tuple[str, ...]] = {"recipes": ("--json", "--markdown")}


def _former_flags(args: list[str]) -> list[str]:
    """`recipes --json` (no path: the old on/off spelling, followed by nothing or by another option) becomes
    `--json OLD_FLAG`, which the command reads as "print it", with a deprecation note."""
    command = next((a for a in args if not a.startswith("-")), None)
    flags = _FORMER_FLAGS.get(command or "", ())
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        nxt = args[i + 1] if i + 1 < len(args) else None
        if arg in flags and (nxt is None or (nxt.startswith("-") and nxt != "-")):
            out.append(OLD_FLAG)
    return out


def deprecated(old: str, new: str) -> None:
    """The one-line note an old spelling prints (it still works, for one release)."""
    typer.echo(f"note: {old} is deprecated; use {new}", err=True)


def dataset(positional: Sequence[str] | str | None, option: Sequence[str] | str | None,
            many: bool = True) -> list[str]:
    """The dataset(s) of a command that takes `--data` and, as an alias, the positional form: exactly one
    of the two spellings, at least one path (only one where `many` is False)."""
    pos = [positional] if isinstance(positional, str) else list(positional or [])
    opt = [option] if isinstance(option, str) else list(option or [])
    if pos and opt:
        raise ConfigError("give the dataset once: as --data or as the positional argument, not both")
    paths = pos or opt
    if not paths:
        raise ConfigError("missing the dataset: give --data PATH")
    if not many and len(paths) > 1:
        raise ConfigError(f"one dataset only, got {len(paths)}: {', '.join(paths)}")
    return paths


def main(argv: list[str] | None = None) -> int:
    """Entry point for the console script and for tests; returns the exit code instead of exiting.

    Only the project's own errors (EffiMiniVLMError and its subclasses) become one line and exit code 2;
    any other exception is a bug and keeps its traceback.
    """
    args = _former_flags(list(sys.argv[1:] if argv is None else argv))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            app(args=args, prog_name="effiminivlm", standalone_mode=True)
    except SystemExit as e:  # click's own exit: 0, or 2 for usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except EffiMiniVLMError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    return 0


_default_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """A FutureWarning (an old spelling still read) as one `note:` line; any other warning as Python shows
    it."""
    if issubclass(category, FutureWarning):
        typer.echo(f"note: {message}", err=True)
    else:
        _default_showwarning(message, category, *args, **kwargs)
