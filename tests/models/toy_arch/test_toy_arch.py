"""A sixth architecture is one module plus one YAML: arch/toy.py and arch/toy-tiny.yaml, found through
$EFFIMINIVLM_ARCH_PATH, walk end to end like the built-in ones, with no file outside this folder edited."""

from __future__ import annotations

from pathlib import Path

import pytest

from effiminivlm.cli import main
from effiminivlm.models.archs import ARCH_PATH_ENV, MODEL_ARCHS, unload_arch_path
from tests.models.walk import walk

ARCH = Path(__file__).resolve().parent / "arch"


@pytest.fixture
def toy_path(monkeypatch):
    monkeypatch.setenv(ARCH_PATH_ENV, str(ARCH))
    yield ARCH
    unload_arch_path(ARCH)


def test_the_toy_architecture_is_unknown_without_its_path(capsys) -> None:
    assert "toy" not in MODEL_ARCHS
    assert main(["profile", "--recipe", str(ARCH / "toy-tiny.yaml")]) == 2
    assert "model.arch: unknown model arch 'toy'" in capsys.readouterr().err


def test_a_toy_architecture_from_a_folder_walks_end_to_end(toy_path, prepared, tmp_path, capsys) -> None:
    walk("toy", prepared, tmp_path, capsys)
    assert main(["profile", "--recipe", str(ARCH / "toy-tiny.yaml"), "--set", "model.widht=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.widht" in err and "did you mean model.width?" in err
