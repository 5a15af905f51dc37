"""The training-speed levers: each changes how a step computes, never what (training.speed)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from effiminivlm.config import load_recipe
from effiminivlm.models.factory import create_model, load_model
from effiminivlm.training import loop, speed
from effiminivlm.training.checkpoint import load_checkpoint


def _train(recipe, prepared: Path, out: Path, logs: list[str] | None = None, **kw):
    return loop.train(recipe, prepared, out, progress=False,
                      log=(logs.append if logs is not None else lambda _: None), **kw)


@pytest.fixture()
def fast_compile(monkeypatch):
    """torch.compile with Dynamo's eager backend: the real graph capture (graph breaks, guards, dynamic
    shapes, the wrapper's plumbing) without minutes of inductor code generation in a unit test."""
    real = torch.compile
    calls = []

    def compile_(model, **kw):
        calls.append(kw)
        return real(model, **{**kw, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_)
    return calls


def test_compiled_training_saves_clean_keys_and_resumes(tiny_recipe, prepared, tmp_path, fast_compile):
    torch._dynamo.reset()
    recipe = load_recipe("tiny", ["train.epochs=1", "train.max_steps_per_epoch=3", "train.batch_size=8",
                                  "train.eval_batch_size=32", "train.patience=5", "data.num_workers=0",
                                  "train.compile=true", "data.bucket_by_length=true"])
    out = tmp_path / "run"
    logs: list[str] = []
    summary = _train(recipe, prepared, out, logs)
    assert fast_compile and fast_compile[0]["dynamic"] is True
    assert summary["compile"]["active"] and summary["compile"]["fallbacks"] == 0
    assert summary["compile"]["compiled_calls"] == 3 and "compile" in summary["levers"]
    assert any(line.startswith("training levers:") and "compile" in line for line in logs)
    ckpt = load_checkpoint(out / "checkpoint" / "last.pt")
    keys = list(ckpt["model"]) + list(load_file(out / "model" / "model.safetensors"))
    assert keys and not [k for k in keys if "_orig_mod" in k or k.startswith("model.")]
    model, _tok = load_model(out / "model")  # the published folder loads as a plain model
    assert set(model.state_dict()) == set(ckpt["model"])
    # resume for a second epoch: the stored recipe (compile on) continues from the checkpoint
    more = load_recipe("tiny", ["train.epochs=2", "train.max_steps_per_epoch=3", "train.batch_size=8",
                                "train.eval_batch_size=32", "train.patience=5", "data.num_workers=0",
                                "train.compile=true", "data.bucket_by_length=true"])
    ckpt["recipe"]["train"]["epochs"] = 2  # the run was started for 1 epoch; extend it as a user would
    torch.save(ckpt, out / "checkpoint" / "last.pt")
    summary2 = _train(more, prepared, out, resume=True)
    assert summary2["epochs_run"] == 2 and summary2["steps"] == 6 and summary2["compile"]["fallbacks"] == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]


def test_a_failing_compile_is_counted_and_training_continues_eagerly(tiny_recipe, prepared, tmp_path,
                                                                     monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("no C++ compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    tiny_recipe.train.compile = True
    logs: list[str] = []
    summary = _train(tiny_recipe, prepared, tmp_path / "run", logs)
    assert summary["steps"] == 6 and summary["epochs_run"] == 2  # every step ran, eagerly
    assert summary["compile"] == {"requested": True, "active": False, "fallbacks": 1, "compiled_calls": 0,
                                  "reason": "RuntimeError: no C++ compiler here"}
    warned = [line for line in logs if "torch.compile failed" in line]
    assert len(warned) == 1 and "\n" not in warned[0] and "compile" not in summary["levers"]


def test_a_compiled_call_that_fails_falls_back_once_and_real_errors_still_raise():
    class Flaky(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x):
            return self.lin(x)

    model = Flaky()
    logs: list[str] = []
    wrapper = speed.CompiledOrEager(model, compile=False, log=logs.append)
    assert not wrapper.active and wrapper.fallbacks == 0
    calls = []

    def failing(*args):
        calls.append(args)
        raise torch._dynamo.exc.BackendCompilerFailed(lambda *_: None, RuntimeError("inductor broke"))

    wrapper.__dict__["_compiled"] = failing
    x = torch.randn(4, 3)
    out = wrapper(x)
    assert torch.equal(out, model(x)) and wrapper.fallbacks == 1 and not wrapper.active
    assert len(calls) == 1 and len(logs) == 1
    wrapper(x)  # eager from now on: the broken compiled call is not tried again
    assert len(calls) == 1 and wrapper.fallbacks == 1
    assert set(dict(wrapper.named_parameters())) == {"model.lin.weight", "model.lin.bias"}
    with pytest.raises(RuntimeError):  # a genuine error is not swallowed by the fallback
        wrapper(torch.randn(4, 5))


def test_depthwise_fp32_trains_in_fp32_and_evaluates_unchanged():
    recipe = load_recipe("tiny")
    model = create_model(recipe.model, pretrained=False)
    before = copy.deepcopy(model)
    keys = list(model.state_dict())
    used = speed.apply_train_levers(model, torch.device("cpu"), "bf16", depthwise_fp32=True,
                                    channels_last=True)
    assert used == ["depthwise_fp32", "image_channels_last"]
    assert list(model.state_dict()) == keys  # names and tensors unchanged: checkpoints are the same format
    depthwise = [m for m in model.image_encoder.modules() if speed.is_depthwise(m)]
    assert depthwise and all(isinstance(m, speed._TrainFp32) for m in depthwise)
    dtypes: list[torch.dtype] = []
    for m in depthwise:
        m.register_forward_hook(lambda _m, _i, o: dtypes.append(o.dtype))
    x = torch.randn(2, 3, 64, 64)
    model.image_encoder.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.image_encoder(x).float().sum().backward()
    assert dtypes and set(dtypes) == {torch.float32}  # training under autocast: fp32 depthwise
    assert all(p.grad is not None for p in model.image_encoder.parameters() if p.requires_grad)
    dtypes.clear()
    before.load_state_dict(model.state_dict())  # the training pass moved BatchNorm's running statistics
    model.image_encoder.eval()
    before.image_encoder.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = model.image_encoder(x), before.image_encoder(x)
    assert set(dtypes) == {torch.bfloat16}  # evaluation keeps the bf16 forward
    assert torch.allclose(got.float(), want.float(), atol=0.05, rtol=0.05)
    with torch.no_grad():  # fp32: the levers change nothing at all but the input layout
        assert torch.allclose(model.image_encoder(x), before.image_encoder(x), atol=1e-5)
    # neither applies on fp32 / CUDA-only settings
    other = create_model(recipe.model, pretrained=False)
    assert speed.apply_train_levers(other, torch.device("cpu"), "fp32", depthwise_fp32=True,
                                    channels_last=False) == []


def test_fused_adamw_makes_the_same_update_as_the_default_one():
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = copy.deepcopy(a)
    opt_a = speed.make_adamw(a.parameters(), 1e-2, torch.device("cpu"), fused=False)
    opt_b = speed.make_adamw(b.parameters(), 1e-2, torch.device("cpu"), fused=True)
    assert not opt_a.defaults.get("fused")
    assert bool(opt_b.defaults.get("fused")) == speed.fused_adamw_supported(torch.device("cpu"))
    for _ in range(3):
        x = torch.randn(16, 8)
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_heap_reuse_keeps_freed_memory_for_the_next_allocation_and_restores_glibc():
    # In a fresh interpreter: glibc's heap state is per process, and an earlier train() in this pytest worker
    # may have left big free chunks that a plain allocation would reuse anyway.
    probe = """
import ctypes, json, torch
from effiminivlm.training import speed

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
out = {"glibc": speed._glibc() is not None, "books": hasattr(libc, "mallinfo2")}  # mallinfo2: glibc 2.33+
MB = 1024 * 1024

def state():  # what a 256 MB tensor does to glibc's books: mmap'd while alive? kept in the heap once freed?
    before = libc.mallinfo2()
    t = torch.ones(64 * MB)
    alive = libc.mallinfo2()
    del t
    after = libc.mallinfo2()
    return {"mapped_mb": (alive.hblkhd - before.hblkhd) // MB,
            "kept_mb": (after.fordblks - before.fordblks) // MB}

if out["glibc"] and out["books"]:
    libc.mallinfo2.restype = MallInfo2
    out["plain"] = state()
    with speed.heap_reuse() as on:
        out["on"], out["inside"] = on, state()
    out["after"] = state()
else:
    with speed.heap_reuse() as on:
        out["on"] = on
with speed.heap_reuse(enabled=False) as off:
    out["off"] = off
print(json.dumps(out))
"""
    src = str(Path(speed.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["off"] is False
    if not got["glibc"]:
        assert got["on"] is False  # not glibc: reported, nothing changed
        return
    assert got["on"] is True
    if not got["books"]:
        return
    assert got["plain"]["mapped_mb"] >= 250 and got["plain"]["kept_mb"] < 64  # mmap'd, unmapped on free
    assert got["inside"]["mapped_mb"] < 64 and got["inside"]["kept_mb"] >= 250  # heap, kept for reuse
    assert got["after"]["mapped_mb"] >= 250 and got["after"]["kept_mb"] < 64  # glibc's defaults again


def test_train_applies_fast_dropout_and_scopes_memory_reuse_to_the_run(tiny_recipe, prepared, tmp_path,
                                                                        monkeypatch):
    import contextlib

    scopes: list[str] = []

    @contextlib.contextmanager
    def spy(enabled: bool = True):
        scopes.append(f"enter {enabled}")
        try:
            yield enabled
        finally:
            scopes.append("exit")

    monkeypatch.setattr(loop, "heap_reuse", spy)
    logs: list[str] = []
    summary = _train(tiny_recipe, prepared, tmp_path / "run", logs)
    assert scopes == ["enter True", "exit"]
    assert {"fast_dropout", "reuse_memory"} <= set(summary["levers"])
    assert any(line.startswith("training levers:") and "fast_dropout" in line for line in logs)
    model, _tok = load_model(tmp_path / "run" / "model")  # saved as before: a plain SDPA tower
    assert model.text_encoder.bert.config._attn_implementation == "sdpa"
    # a run that fails mid-way still leaves the scope (glibc's defaults come back)
    scopes.clear()
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        _train(tiny_recipe, prepared, tmp_path / "failed")
    assert scopes == ["enter True", "exit"]
    tiny_recipe.train.fast_dropout, tiny_recipe.train.reuse_memory = False, False
    monkeypatch.undo()
    off = _train(tiny_recipe, prepared, tmp_path / "off")
    assert not {"fast_dropout", "reuse_memory"} & set(off["levers"])
