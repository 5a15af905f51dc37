"""The output rule, over every command's output options at once, and the writer behind it (files.py).

Never rename over what is not a regular file: a FIFO or a character device is written straight into, a
folder / socket / block device / anything under /proc or /sys is refused in one line (exit 2) before any
work starts. Device nodes are made with `os.mknod` inside a temporary folder (root only), never on /dev.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from effiminivlm.cli import main
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.files import atomic_write_text, check_writable, output_path, write_json

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False

#: (command and its other arguments, with {x} for a folder of missing inputs; the output option; its kind)
OUTPUTS = [
    (["prepare", "{x}/meta.jsonl"], "--out", "dir"),
    (["synth", "--n", "2"], "--out", "dir"),
    (["merge-prepared", "{x}/a"], "--out", "dir"),
    (["fetch-images", "{x}/prep"], "--images-dir", "dir"),
    (["convert-reference", "{x}/c.pt", "--text-model", "local-dir:{x}"], "--out", "dir"),
    (["profile", "--model", "{x}/m"], "--json", "file"),
    (["profile", "--model", "{x}/m"], "--plot", "file"),
    (["score", "--predictions", "{x}/p.csv", "--truth", "{x}/t.csv"], "--json", "file"),
    (["score", "--predictions", "{x}/p.csv", "--truth", "{x}/t.csv"], "--plot", "file"),
    (["benchmark", "--data", "{x}/d", "--model", "{x}/m"], "--json", "file"),
    (["benchmark", "--data", "{x}/d", "--model", "{x}/m", "--baseline", "reference"], "--markdown", "file"),
    (["evaluate", "--model", "{x}/m", "--data", "{x}/d"], "--out", "dir"),
    (["predict", "{x}/d", "--model", "{x}/m"], "--out", "file"),
    (["export", "--model", "{x}/m"], "--out", "dir"),
    (["train", "--data", "{x}/d", "--recipe", "tiny"], "--out", "dir"),
    (["soup", "{x}/r1", "{x}/r2"], "--out", "dir"),
    (["pseudo-label", "{x}/d", "--model", "{x}/m"], "--out", "dir"),
    (["scaling", "--data", "{x}/d"], "--out", "dir"),
    (["embed", "{x}/d", "--model", "{x}/m"], "--out", "file"),
]
IDS = [f"{a[0]}{opt}" for a, opt, _ in OUTPUTS]


@pytest.fixture()
def short_tmp() -> Iterator[Path]:
    """A short temporary folder (a Unix socket's path must stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="eo-") as d:
        yield Path(d)


def _node(kind: str, where: Path) -> tuple[Path, int]:
    """Make a non-regular node of `kind` in `where`; returns it and its st_mode type bits."""
    path = where / f"node-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the null device's numbers
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text("a file\n")
    return path, stat.S_IFMT(os.stat(path).st_mode)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _argv(args: list[str], x: Path, option: str, target: str) -> list[str]:
    return [a.replace("{x}", str(x)) for a in args] + [option, target]


@pytest.mark.parametrize("args, option, kind", OUTPUTS, ids=IDS)
@pytest.mark.parametrize("node", ["wrong", "socket", "fifo", "device"])
def test_every_output_option_refuses_a_node_it_would_replace(args, option, kind, node, short_tmp, capsys):
    """A target that exists and is not what the option wants is refused in one line and left as it was;
    a FIFO or a character device where a file is wanted passes the check (the command then fails on its
    missing inputs, and the node is still the node)."""
    if node == "device" and not ROOT:
        pytest.skip("mknod of a character device needs root")
    wrong = "file" if kind == "dir" else "folder"
    path, mode = _node(wrong if node == "wrong" else node, short_tmp)
    code, err = _run(_argv(args, short_tmp / "missing", option, str(path)), capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    streamed = kind == "file" and node in ("fifo", "device")
    assert (f"{option} {path}" in err) != streamed, err
    assert stat.S_IFMT(os.stat(path).st_mode) == mode


@pytest.mark.parametrize("args, option, kind", OUTPUTS, ids=IDS)
@pytest.mark.parametrize("target", ["/proc/{name}", "/sys/kernel/{name}", "/proc/version", "/{name}/out"])
def test_every_output_option_refuses_kernel_files_and_new_top_level_folders(args, option, kind, target,
                                                                          tmp_path, capsys):
    name = f"effiminivlm-{uuid.uuid4().hex[:8]}"
    path = target.format(name=name)
    code, err = _run(_argv(args, tmp_path / "missing", option, path), capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {option} {path}: ")
    assert not Path("/" + name).exists()


def test_check_accepts_streams_and_refuses_the_rest(short_tmp):
    fifo, _ = _node("fifo", short_tmp)
    assert check_writable(fifo) == fifo
    assert check_writable("/dev/null") == Path("/dev/null")
    sock, _ = _node("socket", short_tmp)
    with pytest.raises(EffiMiniVLMError, match="is a socket"):
        check_writable(sock)
    with pytest.raises(EffiMiniVLMError, match="exists and is not a folder"):
        check_writable(fifo, kind="dir")


def _drain(path: Path, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as fh:
            into.append(fh.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_writers_stream_into_a_fifo_and_leave_it_a_fifo(short_tmp):
    fifo, _ = _node("fifo", short_tmp)
    got: list[bytes] = []
    reader = _drain(fifo, got)
    write_json({"a": float("nan")}, fifo)
    reader.join(10)
    assert got == [b'{\n  "a": null\n}\n']
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in short_tmp.iterdir()) == [fifo.name]  # no temporary file beside it


def test_figures_stream_into_a_fifo(short_tmp):
    from effiminivlm.protocol.plots import plot_protocol

    fifo, _ = _node("fifo", short_tmp)
    got: list[bytes] = []
    reader = _drain(fifo, got)
    plot_protocol(fifo)
    reader.join(30)
    assert got and got[0].startswith(b"\x89PNG") and stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.skipif(not ROOT, reason="mknod of a character device needs root")
@pytest.mark.parametrize("minor, error", [(3, None), (7, "No space left on device")])
def test_writers_write_into_a_device_node_and_never_replace_it(short_tmp, minor, error):
    """Nodes with the null (1,3) and full (1,7) device's numbers: written into or one line, never replaced."""
    dev = short_tmp / "dev"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    try:
        with open(dev, "wb"):
            pass
    except PermissionError:
        pytest.skip("this temporary folder is mounted nodev")
    if error is None:
        atomic_write_text(dev, "item_id,score\n")
    else:
        with pytest.raises(EffiMiniVLMError, match=f"{dev}: cannot write: {error}"):
            atomic_write_text(dev, "item_id,score\n" * 1000)
    assert stat.S_ISCHR(os.stat(dev).st_mode) and os.stat(dev).st_rdev == os.makedev(1, minor)
    assert sorted(p.name for p in short_tmp.iterdir()) == ["dev"]


def test_writer_refuses_what_it_would_rename_over(short_tmp):
    sock, _ = _node("socket", short_tmp)
    with pytest.raises(EffiMiniVLMError, match="is a socket; not replaced by a file"), output_path(sock):
        pass
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    with pytest.raises(EffiMiniVLMError, match="under /proc or /sys"):
        atomic_write_text("/proc/effiminivlm-x", "x")
