"""benchmarks/gpu_check.py: its table, its comparisons and exit codes, and a CPU dry run end to end."""

from __future__ import annotations

import math

import pytest
import torch

from ._scripts import load_benchmark


@pytest.fixture(scope="module")
def gpu():
    return load_benchmark("gpu_check")


def test_checks_compare_against_their_tolerance(gpu) -> None:
    assert gpu.Check("a", 0.01, 0.02).ok and not gpu.Check("b", 0.03, 0.02).ok
    assert not gpu.Check("nan", math.nan, 1.0).ok and gpu.Check("rate", 123.0).ok  # a rate is reported only
    table = gpu.render([gpu.Check("train x", 0.01, 0.05), gpu.Check("predict y", 0.5, 0.02)])
    assert table.splitlines()[0].startswith("check") and table.count("yes") == 1 and table.count("NO") == 1


def test_scores_are_compared_by_item_id(gpu) -> None:
    a = gpu.csv_scores("item_id,score,params,flops\nx,3.5,1,1\ny,2.0,1,1\n")
    assert a == {"x": 3.5, "y": 2.0}
    assert gpu.max_diff(a, {"y": 2.25, "x": 3.5}) == 0.25
    assert gpu.max_diff(a, {"x": 3.5}) == math.inf and gpu.max_diff({}, {}) == math.inf  # missing ids


def test_without_cuda_it_says_so_and_exits_2(gpu, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_cpu_dry_run_trains_predicts_serves_and_passes(gpu, tmp_path, capsys) -> None:
    code = gpu.main(["--device", "cpu", "--recipes", "tiny", "--steps", "2", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert "train tiny 2 steps cpu bf16 vs cpu fp32" in out and "predict tiny cpu samples/s" in out
    assert "serve tiny cpu /v1/score/csv vs cpu fp32" in out
    assert code == 0 and "0 mismatch(es)" in out
    code = gpu.main(["--device", "cpu", "--recipes", "tiny", "--steps", "2", "--score-tol", "-1",
                     "--work", str(tmp_path / "strict")])
    out = capsys.readouterr().out
    assert code == 1 and "NO" in out and "predict tiny cpu vs cpu fp32" in out.splitlines()[-1]
