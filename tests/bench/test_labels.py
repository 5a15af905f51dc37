"""The Table 3 report names the precision each tower really ran in and reads its rate against that
precision's peak, on a CPU with native bf16 and on one without (the flags patched, not the hardware)."""

from __future__ import annotations

import pytest
import torch

from effiminivlm import ovgraph, runtime
from effiminivlm.bench.baseline import render_markdown
from effiminivlm.bench.fastpath import FAST, FP32_EXACT
from effiminivlm.bench.peak import part_precision, peak_for
from effiminivlm.config import load_recipe
from effiminivlm.models.factory import create_model
from effiminivlm.models.optimize import ModelLevers, optimize_for_inference

CPU = torch.device("cpu")
VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})  # no native bf16: PyTorch and OpenVINO emulate it
AMX = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"})
TORCH_ONLY = ModelLevers(image_backend="torch", text_backend="torch")


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(load_recipe("tiny").model, pretrained=False)


def test_peak_for_reads_each_precision_against_its_own_peak() -> None:
    peak = {"bf16_gflops": 60.0, "fp32_gflops": 312.0, "bf16_native": False}
    assert peak_for("fp32", peak) == (312.0, "fp32 peak")
    assert peak_for("bf16 (emulated)", peak) == (60.0, "bf16 (emulated) peak")
    assert peak_for("bf16", {**peak, "bf16_native": True}) == (60.0, "bf16 peak")
    assert peak_for("int8", peak) == (None, "no int8 peak measured")
    assert peak_for("int8", {**peak, "int8_gflops": 900.0}) == (900.0, "int8 peak")
    assert peak_for("mixed (image fp32, text int8)", peak)[0] is None
    towers = {"image": "fp32", "text": "int8"}
    assert part_precision("text_encoder", "bf16", towers) == "int8"
    assert part_precision("image_encoder", "bf16", towers) == "fp32"
    assert part_precision("model", "bf16", towers) == "mixed (image fp32, text int8)"
    assert part_precision("model", "bf16", {"image": "fp32", "text": "fp32"}) == "fp32"
    assert part_precision("model", "bf16", None) == "bf16"  # a model the fast path did not optimise


@pytest.mark.parametrize(("flags", "ran"), [(VNNI, "bf16 (emulated)"), (AMX, "bf16")])
def test_pytorch_towers_under_bf16_autocast_are_labelled_by_the_cpu_flags(tiny, monkeypatch, flags,
                                                                          ran) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda *_a, **_k: flags)
    fast = optimize_for_inference(tiny, CPU, "bf16", TORCH_ONLY)
    assert fast.tower_precisions == {"image": ran, "text": ran}
    label = FAST.techniques(fast.fast_levers, None, fast.tower_precisions)[0]
    assert label == f"image tower {ran}, text tower {ran}"
    assert FP32_EXACT.techniques() == []  # the exact path names no precision technique


@pytest.mark.parametrize(("caps", "text"), [(frozenset({"FP32", "INT8"}), "fp32"),
                                            (frozenset({"FP32", "INT8", "BF16"}), "bf16")])
def test_openvino_towers_are_labelled_with_what_they_compiled_for(tiny, monkeypatch, tmp_path, caps,
                                                                   text) -> None:
    monkeypatch.setenv("EFFIMINIVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ovgraph, "cpu_capabilities", lambda: caps)
    fast = optimize_for_inference(tiny, CPU, "bf16", ModelLevers())
    assert fast.tower_precisions == {"image": "fp32", "text": text}  # the image tower stays f32 (lever)
    labels = FAST.techniques(fast.fast_levers, None, fast.tower_precisions)
    assert labels[0] == f"image tower fp32, text tower {text}"
    assert not any("autocast" in t for t in labels)  # no PyTorch tower ran under autocast


def _report(towers: dict[str, str], bf16_native: bool) -> dict:
    """A Table 3 report with model-only rows for `towers`, an fp32 text rate above the bf16 peak."""
    rows = [{"part": f"{t}_encoder", "precision": p, "samples": 32, "gflop": 10.0, "gflop_per_s": 150.0,
             "ms_per_sample": 2.0} for t, p in towers.items()]
    rows.append({"part": "model", "precision": part_precision("model", "bf16", towers), "samples": 32,
                 "gflop": 20.0, "gflop_per_s": 150.0, "ms_per_sample": 4.0})
    run = {"name": "fast", "techniques": ["x"], "samples_per_s": 10.0, "ms_per_sample": 100.0,
           "speedup_vs_reference": 5.0, "cpu_busy": 1.9}
    return {"model": "m", "device_name": "cpu", "torch_version": torch.__version__, "threads": 2,
            "load_avg_1m_before": 0.1, "load_avg_1m_after": 0.1, "measured_at": "now", "items": 32,
            "inputs": ["d"], "batch_size": 32, "warmup_batches": 1, "mean_tokens": 50.0,
            "active_params_m": 1.0, "flops_g_canonical": 1.0, "flops_g_mean_length": 1.0, "runs": [run],
            "parity": {}, "model_only": rows, "text_tower_breakdown": None,
            "matmul_peak": {"bf16_gflops": 60.0, "fp32_gflops": 312.0, "bf16_native": bf16_native}}


def test_markdown_shares_use_the_peak_of_the_precision_that_ran() -> None:
    md = render_markdown(_report({"image": "fp32", "text": "fp32"}, bf16_native=False))
    assert "| text_encoder | fp32 | 32 | 10.0 | 150.0 | 2.00 | 48% of the fp32 peak |" in md
    assert "250%" not in md  # 150 GFLOP/s against the emulated bf16 peak: the old "> 100% of peak"
    assert "(emulated: no native bf16 on this CPU)" in md and "no int8 peak measured" in md
    md = render_markdown(_report({"image": "fp32", "text": "int8"}, bf16_native=True))
    assert "| text_encoder | int8 | 32 | 10.0 | 150.0 | 2.00 | no int8 peak measured |" in md
    assert "| model | mixed (image fp32, text int8) |" in md and "mixed precisions: no single peak" in md
    assert "emulated" not in md
