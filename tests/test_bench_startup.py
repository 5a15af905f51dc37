"""benchmarks/bench_startup.py: whole-process predict timings of this checkout's CLI, and its import list."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ._scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_startup")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from effiminivlm.config import load_recipe
    from effiminivlm.models.factory import create_model, create_tokenizer

    cfg = load_recipe("tiny").model
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("startup") / "model"
    create_model(cfg, pretrained=False).save_pretrained(out, tokenizer=create_tokenizer(cfg))
    return out


def test_the_timed_process_runs_this_checkouts_cli(bench) -> None:
    argv = bench.predict_argv("M", ["a.csv"], "o.csv", ["--precision", "fp32"])
    assert argv[1:4] == ["-m", "effiminivlm.cli", "predict"] and argv[-2:] == ["--precision", "fp32"]
    assert bench.child_env()["PYTHONPATH"].split(":")[0] == str(bench.SRC)
    assert (bench.SRC / "effiminivlm" / "cli" / "__init__.py").is_file()


def test_main_times_warm_runs_and_lists_imports(bench, model_dir: Path, synth_catalog: Path, capsys) -> None:
    lovif = synth_catalog / "lovif" / "input.csv"
    assert bench.main(["--model", str(model_dir), "--inputs", str(lovif), "--runs", "1", "--importtime"]) == 0
    out = capsys.readouterr().out
    assert "warming run:" in out and "run 1:" in out and "over 1 warm runs" in out
    assert "import effiminivlm" in out  # the slowest top-level imports of one run
    assert "imported of torch, timm, torchvision, transformers: none" in out  # warm: the torch-free path
    assert (model_dir / "cost.json").is_file()  # the first run stored the counts in the folder
    with pytest.raises(SystemExit, match="failed"):
        bench.main(["--model", str(model_dir / "missing"), "--inputs", str(lovif), "--runs", "1"])
