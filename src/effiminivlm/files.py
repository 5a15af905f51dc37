"""Small file helpers every stage uses: output-path checks, atomic text writes, strict JSON, one CSV reader.

Why one place: reports, submissions, run summaries and benchmark results must never be left half-written by
a crash (write to a temporary name, then rename), JSON must be strict (NaN/inf as null, numpy values made
plain), and the CSVs users hand us (LoViF input.csv, truth files, submissions) must fail the same clear way.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from effiminivlm.errors import DataError, EffiMiniVLMError

NAME_MAX = 255  # bytes per path component on ext4, xfs, btrfs, tmpfs, APFS and NTFS
#: The longest input line / record / CSV cell read (16 MiB, over 1,000x the longest line of the official
#: Amazon Reviews 2023 dumps). Enforced while reading, before parsing: a parser holds several times a line's
#: size, so one valid 3 GB line would otherwise take gigabytes. `--max-line-bytes` raises it.
MAX_LINE_BYTES = 16 << 20


def check_writable(path: str | os.PathLike[str], what: str = "--out", kind: str = "file") -> Path:
    """Fail now, in one line, if `path` cannot be written as a `kind` ("file" or "dir"); creates nothing.

    Why: commands write their output after the long part (training, a full evaluation, a benchmark); a path
    under a file, an existing folder where a file goes, or a read-only location must fail before that work
    starts, not after it. Checks: no NUL byte, no name longer than the filesystem allows, the path itself of
    the right kind if it exists, and its nearest existing ancestor a writable folder (missing folders below
    it are created later by the writer).
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be file or dir, got {kind!r}")
    raw = os.fspath(path)
    if not raw or "\0" in raw:
        raise EffiMiniVLMError(f"{what} {raw!r}: not a valid path")
    out = Path(raw)
    try:
        return _check_writable(out, what, kind)
    except OSError as e:  # e.g. a name longer than the filesystem allows, a symlink loop
        raise EffiMiniVLMError(f"{what} {out}: {e.strerror or e}") from None


def _check_writable(out: Path, what: str, kind: str) -> Path:
    for part in out.parts:  # also below a missing folder, where no lookup reaches it yet
        if len(os.fsencode(part)) > NAME_MAX:
            raise EffiMiniVLMError(f"{what} {out}: the name {part[:20]}... is longer than {NAME_MAX} bytes")
    if kind == "file" and out.exists():
        mode = out.stat().st_mode
        if stat.S_ISDIR(mode):
            raise EffiMiniVLMError(f"{what} {out}: is a folder; give a file name")
        if is_stream(out):
            return out  # /dev/stdout, /dev/null, a FIFO: written straight into (see `output_path`)
        if not stat.S_ISREG(mode):
            raise EffiMiniVLMError(f"{what} {out}: is {file_kind(mode)}; give a file, a pipe (FIFO) or a "
                                   "character device such as /dev/null")
    if kind == "dir" and out.exists() and not out.is_dir():
        raise EffiMiniVLMError(f"{what} {out}: exists and is not a folder")
    ancestor = out if kind == "dir" and out.is_dir() else out.parent
    missing = []
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():  # a dangling link: writing through it fails
            raise EffiMiniVLMError(f"{what} {out}: {ancestor} is a broken symbolic link")
        missing.append(ancestor)
        ancestor = ancestor.parent
    if _in_pseudo_fs(out) or _in_pseudo_fs(ancestor):
        raise EffiMiniVLMError(f"{what} {out}: is under /proc or /sys (kernel files, not a place for output)")
    if not ancestor.is_dir():
        raise EffiMiniVLMError(f"{what} {out}: {ancestor} is a file, not a folder")
    if missing and ancestor.resolve() == ancestor.resolve().parent:  # a typo must not create /nonexistent_dir
        raise EffiMiniVLMError(f"{what} {out}: the folder {missing[-1]} does not exist (a new top-level "
                               "folder is not created; create it first)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise EffiMiniVLMError(f"{what} {out}: {ancestor} is not writable")
    if kind == "file" and out.exists() and not os.access(out, os.W_OK):
        raise EffiMiniVLMError(f"{what} {out}: the existing file is not writable")
    return out


#: Kernel pseudo-filesystems: their "files" are interfaces (writing one can reconfigure the machine).
PSEUDO_FS = ("/proc", "/sys")


def _in_pseudo_fs(path: Path) -> bool:
    """Whether `path`, as written or with its links resolved, lies under /proc or /sys."""
    names = {os.path.abspath(path), os.path.realpath(path)}  # realpath stops quietly at a symlink loop
    return any(n == root or n.startswith(root + "/") for n in names for root in PSEUDO_FS)


def is_stream(path: str | os.PathLike[str]) -> bool:
    """Whether `path` exists and is a pipe (FIFO) or a character device (/dev/null, /dev/stdout, a tty).

    Why these are written straight into: that is what a Unix user means by `--out /dev/stdout`; renaming a
    temporary file over them would replace the device node or the FIFO with a regular file.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


@contextmanager
def output_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """The one output rule: yields a temporary path to write into, then publishes it at `path`.

    A regular (or missing) `path` gets the temporary file beside it and a rename: readers see the old file or
    the new one, never half. A FIFO or character device is never renamed over: the finished bytes are copied
    into it (a temporary file in the system temp folder holds them meanwhile). Anything else that exists and
    is not a regular file (a folder, a socket, a block device) or lies under /proc or /sys is refused. Every
    OSError becomes a one-line `EffiMiniVLMError` naming `path` (a full disk, /dev/full, a read-only folder).
    """
    out = Path(path)
    stream = is_stream(out)
    try:
        if stream:
            fd, name = tempfile.mkstemp(prefix=".effiminivlm-", suffix=out.suffix)
            os.close(fd)
            tmp = Path(name)
        else:
            _refuse_non_regular(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.tmp")
        try:
            yield tmp
            if stream:
                with open(tmp, "rb") as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                _refuse_non_regular(out)  # it may have become something else meanwhile
                os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise EffiMiniVLMError(f"{out}: cannot write: {e.strerror or e}") from None


def _refuse_non_regular(out: Path) -> None:
    """A one-line error if `out` exists and is neither a regular file nor a link (rename would replace it)."""
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise EffiMiniVLMError(f"{out}: is {file_kind(mode)}; not replaced by a file")
    if _in_pseudo_fs(out):
        raise EffiMiniVLMError(f"{out}: is under /proc or /sys; not written")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` as UTF-8 by the output rule (`output_path`): atomically, or into a FIFO/device."""
    with output_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save a matplotlib figure by the output rule; the format comes from `path`'s suffix (PNG without one),
    since the temporary name it is written to first has another suffix."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with output_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return Path(path)


def _backup_of(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


def replace_dir(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Publish the fully written folder `tmp` at `dest`, keeping the old `dest` until the new one is there.

    Two renames (dest -> .dest.old, tmp -> dest) then the backup is deleted. A crash between the renames
    leaves no `dest` but a complete `.dest.old`: `recover_dir(dest)` puts it back, so a published model or
    dataset is never lost, whatever moment the process dies.
    """
    tmp, dest = Path(tmp), Path(dest)
    recover_dir(dest)
    old = _backup_of(dest)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return dest


def recover_dir(dest: str | os.PathLike[str]) -> str | None:
    """Repair what an interrupted `replace_dir` left at `dest`; returns what was done (None: nothing to do).

    No `dest` but a backup: the crash fell between the two renames, the backup goes back into place.
    Both present: the crash fell after the publish, before the backup was deleted; it is deleted now.
    """
    dest = Path(dest)
    old = _backup_of(dest)
    if not old.exists():
        return None
    if not dest.exists():
        os.replace(old, dest)
        return f"restored {dest} from its backup {old.name} (an earlier run stopped while replacing it)"
    shutil.rmtree(old, ignore_errors=True)
    return f"removed {old} (left behind by an earlier run that stopped after replacing {dest.name})"


def partial_dir(dest: str | os.PathLike[str]) -> Path:
    """A new, empty hidden folder beside `dest` to build its replacement in (then `replace_dir(it, dest)`).

    The name carries this process's id (`.<dest>.partial-<pid>-<random>`) so that `remove_stale_partials`
    can tell the folder of a killed run from the folder of a run still writing.
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    return tmp


def remove_stale_partials(dest: str | os.PathLike[str]) -> list[Path]:
    """Delete the `partial_dir`s of `dest` whose process is gone (killed runs); returns what was removed.

    A SIGKILL or a power cut skips every `finally`, so the next run cleans up instead. Folders of a process
    that is still alive are left alone, so two runs never delete each other's work.
    """
    dest = Path(dest)
    removed = []
    for tmp in sorted(dest.parent.glob(f".{glob_escape(dest.name)}.partial-*")):
        pid, sep, _ = tmp.name.rsplit(".partial-", 1)[1].partition("-")
        if not tmp.is_dir() or (sep and pid.isdigit() and _alive(int(pid))):
            continue  # a run still writing (names without a pid are an older version's leftovers)
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process: alive
        return True
    return True


def to_jsonable(value: Any) -> Any:
    """Recursively turn NaN/inf into None and numpy values, sets and Paths into JSON types.

    Anything else JSON cannot hold (a device, a dtype in a report's context) becomes its ``str``: a report
    must never fail at the last step, after the whole evaluation ran, over one context value.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((to_jsonable(v) for v in value), key=str)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_json(payload: Any, path: str | os.PathLike[str]) -> Path:
    """Strict, indented JSON (see `to_jsonable`), written atomically."""
    return atomic_write_text(path, json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")


def file_kind(mode: int) -> str:
    """What an `st_mode` is, for error messages: "a folder", "a pipe (FIFO)", "a device", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open `path` for binary reading only if it is a regular file; else a one-line DataError naming it.

    Why not just `open`: an input named on the command line may be `/dev/stdin`, a FIFO, a device or a
    folder. Opening a FIFO blocks until a writer appears (a hang), a terminal blocks on read, and a folder
    fails with a bare OSError. The file is opened non-blocking, checked with `fstat` on the open descriptor
    (no race with a rename), and switched back to blocking reads.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DataError(f"{path}: is {file_kind(mode)}, expected a regular file (stdin, pipes and devices "
                        "cannot be read as input)")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_csv_rows(path: str | os.PathLike[str], max_line_bytes: int = MAX_LINE_BYTES
                  ) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, row)]) of a UTF-8 CSV; header names stripped and lower-cased, cells stripped.

    Blank lines are skipped; a row whose field count differs from the header's, an empty file, bytes that are
    not UTF-8, a malformed CSV, a line or cell longer than `max_line_bytes` characters (refused while
    reading, before it is held whole) or a path that is not a regular file (`open_regular`) are a DataError
    naming the file (and line), never a silent skip or a hang.
    """
    path = Path(path)
    csv.field_size_limit(max_line_bytes)  # product descriptions can exceed the 128 KiB default
    raw = open_regular(path)  # a FIFO or /dev/stdin would hang, a folder would be "not found"
    try:
        with io.TextIOWrapper(raw, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(_bounded_lines(fh, path, max_line_bytes))
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file (expected a header line)")
            header = [h.strip().lower() for h in header]
            rows = []
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise DataError(f"{path}:{reader.line_num}: {len(cells)} fields, the header has "
                                    f"{len(header)}")
                rows.append((reader.line_num, dict(zip(header, (c.strip() for c in cells), strict=True))))
    except UnicodeDecodeError as e:  # e.start counts from the decoder's chunk, so find the line itself
        raise DataError(f"{path}:{_first_non_utf8_line(path)}: not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        if "field limit" in str(e):
            raise DataError(f"{path}:{reader.line_num}: a cell longer than {max_line_bytes:,} characters "
                            "(the per-line budget; raise it with --max-line-bytes if it is real)") from None
        raise DataError(f"{path}: malformed CSV: {e}") from None
    return header, rows


def _bounded_lines(fh: io.TextIOWrapper, path: Path, limit: int) -> Iterator[str]:
    """The lines of `fh`, each read with a size limit, so one huge line is refused before it is in memory."""
    for lineno, line in enumerate(iter(lambda: fh.readline(limit + 1), ""), 1):
        if len(line) > limit:
            raise DataError(f"{path}:{lineno}: a line longer than {limit:,} characters (the per-line budget; "
                            "raise it with --max-line-bytes if the line is real)")
        yield line


def _first_non_utf8_line(path: Path) -> int | str:
    """The 1-based line of the first bytes that are not UTF-8 (a lone surrogate, Latin-1), or "?"."""
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return "?"


#: A plain decimal or scientific number: ASCII digits only, no underscores (Python's float() reads "3_5" as
#: 35), no "nan"/"inf"/hex, so a typo in a CSV cell is an error instead of a silently different value.
NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_number(text: str, where: str, what: str) -> float:
    """A finite float from a strictly decimal/scientific string; a DataError naming `where` otherwise."""
    raw = text.strip()
    if not NUMBER.fullmatch(raw):
        raise DataError(f"{where}: {what} {text!r} is not a decimal number")
    value = float(raw)
    if not math.isfinite(value):
        raise DataError(f"{where}: {what} is {text!r}; it must be finite")
    return value
