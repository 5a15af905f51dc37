"""benchmarks/bench_train.py on tiny settings: real steps through the loop's loader, figures derived from
the measured timings (no timing threshold: the CPU is shared)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._scripts import BENCHMARKS, load_benchmark

SRC = BENCHMARKS.parent / "src"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_train")


def test_configurations_flip_one_lever_each_from_fast(bench) -> None:
    fast = bench.TrainConfig(bucket=True, draft=True, workers=1, fused_adamw=True, depthwise_fp32=True,
                             channels_last=True, compile=False)
    configs = bench.configurations(fast, with_compile=True)
    assert configs["untuned"] == bench.TrainConfig(False, False, 2, False, False, False, False)
    assert configs["fast"] == fast
    for name, cfg in configs.items():
        if name in ("untuned", "fast"):
            continue
        changed = [k for k, v in cfg._asdict().items() if v != getattr(fast, k)]
        assert len(changed) == 1, name  # exactly one lever differs from fast
    assert {"workers 0", "workers 2", "bucket off", "draft off", "compile on"} <= set(configs)
    assert "workers 1" not in configs


def test_tiny_run_reports_rates_and_ratios_from_its_own_timings(tmp_path: Path) -> None:
    # In a process of its own, as users run it: the untuned configuration forks 2 DataLoader workers, and
    # forking a pytest-xdist worker that already runs OpenVINO / OpenMP thread pools crashed that worker
    # outright in two CI runs (no error, "node down"); a fresh interpreter has no such pools at fork time.
    cmd = [sys.executable, str(BENCHMARKS / "bench_train.py"), "--recipe", "tiny", "--batch-size", "8",
           "--steps", "2", "--warmup", "1", "--min-px", "64", "--max-px", "80", "--texts", "",
           "--configs", "fast,bucket on", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["configs"]) == ["untuned", "fast", "bucket on"]
    untuned = report["configs"]["untuned"]
    assert untuned["settings"] == {"bucket": False, "draft": False, "workers": 2, "fused_adamw": False,
                                 "depthwise_fp32": False, "channels_last": False, "compile": False,
                                 "fast_dropout": False, "fetch_threads": False, "reuse_memory": False}
    assert report["configs"]["fast"]["settings"]["workers"] == 0  # the tiny recipe's data.num_workers
    assert report["configs"]["fast"]["settings"]["fetch_threads"] is True  # ... so images decode on threads
    assert report["configs"]["bucket on"]["settings"]["bucket"] is True
    for r in report["configs"].values():
        assert r["steps"] == 2 and r["items"] == 16 and r["seconds"] > 0
        assert r["samples_per_s"] == pytest.approx(r["items"] / r["seconds"], rel=1e-2)  # seconds: 3 decimals
        assert r["step_rate_min"] <= r["step_rate_median"] <= r["step_rate_max"]
        ratio = r["samples_per_s"] / untuned["samples_per_s"]
        assert r["ratio_to_untuned"] == pytest.approx(ratio, rel=1e-2)
        assert 0 < r["padded_tokens_per_item"] <= 64 and r["start_s"] > 0
    fast = report["configs"]["fast"]["samples_per_s"]
    assert report["fast_vs_untuned"] == pytest.approx(fast / untuned["samples_per_s"])
    assert report["fast_vs_quoted_figure"] == pytest.approx(fast / 15.5)
    assert report["target_met"] == (fast >= 31.0)
    assert math.isfinite(report["load_start"])
    md = (tmp_path / "report.md").read_text()
    assert "| untuned |" in md and "| bucket on |" in md and f"{fast:.2f}" in md
