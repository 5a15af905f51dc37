"""The README stays a newcomer's page (<= 10 KB), and every `effiminivlm` command line in it and in
docs/USAGE.md names a real command with options that command has (a renamed option fails here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from effiminivlm.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "USAGE.md"]


def test_readme_is_at_most_10_kb() -> None:
    assert (ROOT / "README.md").stat().st_size <= 10 * 1024


def _command_lines(text: str) -> list[str]:
    """`effiminivlm ...` lines of the fenced shell blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if "effiminivlm" in line and not line.startswith("#"):
                out.append(line)
    return out


def _lines() -> list[tuple[str, str]]:
    return [(page.name, line) for page in PAGES for line in _command_lines(page.read_text(encoding="utf-8"))]


def test_the_pages_show_commands() -> None:
    names = {line.split()[1] for page, line in _lines() if line.startswith("effiminivlm ")}
    assert {"prepare", "train", "evaluate", "predict", "serve", "profile", "score"} <= names


@pytest.mark.parametrize("page, line", _lines(), ids=lambda v: v if v.endswith(".md") else v[:60])
def test_every_documented_command_and_option_exists(page: str, line: str) -> None:
    words = shlex.split(line)
    start = words.index("effiminivlm.cli") if "effiminivlm.cli" in words else words.index("effiminivlm")
    name = words[start + 1]
    commands = typer.main.get_command(app).commands
    assert name in commands, f"{page}: no command {name!r}"
    known = {opt for p in commands[name].params for opt in [*p.opts, *p.secondary_opts]}
    unknown = [w.split("=")[0] for w in words[start + 2:] if w.startswith("--")
               and w.split("=")[0] not in known]
    assert not unknown, f"{page}: {name} has no option(s) {', '.join(unknown)}"
