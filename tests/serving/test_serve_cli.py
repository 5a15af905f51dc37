"""`effiminivlm serve` option checks: one line naming the option, exit code 2, before any model loads."""

from __future__ import annotations

import pytest

from effiminivlm.cli import main


@pytest.mark.parametrize(("args", "message"), [
    (["--max-batch", "0"], "--max-batch must be at least 1"),
    (["--max-queue", "0"], "--max-queue must be at least 1"),
    (["--max-wait-ms", "-1"], "--max-wait-ms must be >= 0"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--images-dir", "/nonexistent-folder"], "--images-dir /nonexistent-folder: not a folder"),
    (["--precision", "fp8"], "--precision must be one of"),
])
def test_bad_options_are_one_line(serve_model, capsys, args, message):
    assert main(["serve", "--model", str(serve_model), "--port", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "no such model folder" in capsys.readouterr().err
