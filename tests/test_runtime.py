"""Precision: towers may run in bf16, but scores (and the training loss's inputs) are float32.

Why these tests: under the default `--precision auto` (bf16 on a CPU) the old model returned bf16 ratings,
which near 3-4 step by 1/64, so different products tied and a tiny model gave one constant score. A model
whose head ran under autocast fails `test_bf16_scores_are_distinct_float32_and_close_to_fp32`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from effiminivlm.config import load_recipe
from effiminivlm.inference import forward_batch, run_inference
from effiminivlm.models import create_model
from effiminivlm.runtime import autocast, resolve_precision
from effiminivlm.training.loop import init_output_bias, train_step

CPU = torch.device("cpu")
N = 48
# bf16 towers keep ~3 significant digits of each feature; through the fp32 head that moves a score by well
# under 0.05 on the tiny random model (observed ~3e-4), far less than bf16's own 1/64 step at 3.0.
BF16_ATOL = 0.05


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model(load_recipe("tiny").model, pretrained=False)
    init_output_bias(m, 3.0)  # scores near 3, where bf16 steps by 1/64: a bf16 head makes ties
    return m.eval()


def _batch(n: int = N, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, 12), generator=g)
    ids[:, 0] = 101
    return {"pixel_values": torch.randn(n, 3, 64, 64, generator=g), "input_ids": ids,
            "attention_mask": torch.ones(n, 12, dtype=torch.long),
            "has_image": torch.ones(n, dtype=torch.bool),
            "target": torch.full((n,), 4.0), "rating_number": torch.full((n,), 10.0)}


def test_auto_computes_in_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, tmp_path) -> None:
    from effiminivlm import runtime

    amx, vnni, odd = tmp_path / "amx", tmp_path / "vnni", tmp_path / "odd"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_vnni amx_bf16 amx_tile\n")
    vnni.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_vnni\n")
    odd.write_text("processor\t: 0\n")  # no flags line: unknown, bf16 as before
    assert runtime.cpu_has_native_bf16(amx) and not runtime.cpu_has_native_bf16(vnni)
    assert runtime.cpu_has_native_bf16(odd) and runtime.cpu_has_native_bf16(tmp_path / "missing")
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        assert runtime.resolve_compute_precision("auto", CPU) == want  # training, embedding
        assert runtime.resolve_compute_precision("bf16", CPU) == "bf16"  # asked for: honoured
        assert resolve_precision("auto", CPU) == "bf16"  # scoring: the fast path (its towers are guarded)


def test_bf16_scores_are_distinct_float32_and_close_to_fp32(model) -> None:
    b = _batch()
    seen: list[torch.dtype] = []
    hook = model.image_encoder.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        with torch.no_grad():
            fp32 = model(b["pixel_values"], b["input_ids"], b["attention_mask"])
            with autocast(CPU, "bf16"):
                bf16 = model(b["pixel_values"], b["input_ids"], b["attention_mask"])
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16]  # the image tower really ran in bf16 the second time
    assert bf16.dtype == torch.float32
    assert len(set(fp32.tolist())) == N
    assert len(set(bf16.tolist())) == N  # no two items tie because of precision
    torch.testing.assert_close(bf16, fp32, atol=BF16_ATOL, rtol=0)


def test_run_inference_under_bf16_keeps_every_item_distinct(model) -> None:
    loader = [_batch(16, seed=s) for s in (2, 3, 4)]
    for b in loader:
        b.update(item_id=[str(i) for i in range(16)], category=[""] * 16, image_status=["ok"] * 16)
    fp32 = run_inference(model, loader, CPU, "fp32", progress=False).pred
    bf16 = run_inference(model, loader, CPU, "bf16", progress=False).pred
    assert len(set(bf16.tolist())) == len(bf16) == 48
    assert abs(bf16 - fp32).max() < BF16_ATOL


def test_train_step_loss_sees_float32_predictions() -> None:
    torch.manual_seed(0)
    m = create_model(load_recipe("tiny").model, pretrained=False).train()
    init_output_bias(m, 3.0)
    seen: list[torch.Tensor] = []

    def loss_fn(pred: torch.Tensor, target: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        seen.append(pred.detach())
        return (pred - target).pow(2).mean()

    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = train_step(m, _batch(8), CPU, "bf16", loss_fn, opt, scaler, grad_clip=1.0)
    assert loss is not None and seen[0].dtype == torch.float32
    assert len(set(seen[0].tolist())) == 8


def test_forward_batch_output_is_float32_under_autocast(model) -> None:
    with torch.no_grad(), autocast(CPU, "bf16"):
        out = forward_batch(model, _batch(4), CPU)
    assert out.dtype == torch.float32 and out.shape == (4,)


def test_peak_rss_is_the_process_own_not_a_larger_parent_s() -> None:
    """A child started by fork + exec from a parent holding ~1.5 GB reports its own peak (getrusage's
    ru_maxrss would report the parent's: its figures survive execve)."""
    import subprocess
    import sys

    if not Path("/proc/self/status").exists():
        pytest.skip("Linux /proc only")
    ballast = bytearray(1536 * 2**20)  # touched below, so resident
    ballast[:: 4096] = b"\x01" * len(ballast[:: 4096])
    code = "from effiminivlm.runtime import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    del ballast
    assert float(out.strip()) < 1200  # the child's own peak (torch imported), far below the parent's 1.5 GB


def test_scoring_threads_leave_the_workers_their_cores_and_are_restored(monkeypatch) -> None:
    from effiminivlm import runtime

    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    cpu = torch.device("cpu")
    assert [runtime.scoring_threads(w, cpu) for w in (0, 1, 3, 8)] == [4, 3, 1, 1]
    assert runtime.scoring_threads(1, torch.device("cuda")) is None  # a GPU keeps torch's setting
    before = torch.get_num_threads()
    with runtime.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with runtime.torch_threads(None):
        assert torch.get_num_threads() == before
