"""`effiminivlm train` under `torchrun --nproc_per_node 2` (gloo on 127.0.0.1): the same loss curve as one
process with the same global batch, rank-0-only outputs, and a checkpoint that resumes under torchrun.

Tolerance: with dropout off and the image tower frozen (its BatchNorm then uses fixed statistics), the only
difference between 2 ranks x 8 items and 1 process x 16 items is the order of float sums (DDP averages the
two ranks' gradients): losses agree to 1e-5 relative (measured ~1e-7), the
validation PLCC of 16 items to 1e-3. With dropout on, the masks are drawn
per rank and the curves differ by the noise of dropout itself (docs/SCALING.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from effiminivlm.training import loop
from effiminivlm.training.checkpoint import load_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src"
DETERMINISTIC = ["model.head.dropout=0", "model.text_encoder.config.hidden_dropout_prob=0",
                 "model.text_encoder.config.attention_probs_dropout_prob=0", "train.freeze_image=true",
                 "train.epochs=2", "train.max_steps_per_epoch=4", "train.batch_size=16",
                 "train.eval_batch_size=32", "data.num_workers=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], *, script: Path | None = None, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    target = [str(script)] if script is not None else ["-m", "effiminivlm.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), *target, *args]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)


def _train_args(prepared: Path, out: Path) -> list[str]:
    args = ["train", "--data", str(prepared), "--out", str(out), "--recipe", "tiny", "--device", "cpu"]
    for s in DETERMINISTIC:
        args += ["--set", s]
    return args


def _curve(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_match_one_process_and_resume(prepared, tmp_path):
    from effiminivlm.config import load_recipe

    single = tmp_path / "single"
    loop.train(load_recipe("tiny", DETERMINISTIC), prepared, single, device="cpu", progress=False,
               log=lambda _: None)

    ddp = tmp_path / "ddp"
    run = _torchrun(_train_args(prepared, ddp))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("best val PLCC") == 1  # rank 0 reports for the job
    one, two = _curve(single), _curve(ddp)
    assert [r["epoch"] for r in two] == [1, 2]  # one line per epoch: only rank 0 writes
    for a, b in zip(one, two, strict=True):
        assert b["train_samples"] == a["train_samples"] == 64  # both ranks' items counted
        for key in ("train_loss", "val_loss", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
        assert b["val_plcc"] == pytest.approx(a["val_plcc"], abs=1e-3)  # 16 val items: PLCC amplifies
    ckpt = load_checkpoint(ddp / "checkpoint" / "last.pt")
    assert len(ckpt["rng_ranks"]) == 2 and ckpt["state"]["epoch"] == 2
    assert (ddp / "model" / "model.safetensors").is_file() and (ddp / "train_summary.json").is_file()

    # killed in epoch 2 (its 2nd of 4 steps), then resumed under torchrun: the uninterrupted curve
    killed = tmp_path / "killed"
    dead = _torchrun(_train_args(prepared, killed), script=Path(__file__).with_name("torchrun_kill.py"),
                     env={"KILL_AT_STEP": "6"})
    assert dead.returncode != 0
    assert load_checkpoint(killed / "checkpoint" / "last.pt")["state"]["epoch"] == 1
    assert [r["epoch"] for r in _curve(killed)] == [1]
    resumed = _torchrun(["train", "--data", str(prepared), "--out", str(killed), "--resume",
                         "--device", "cpu"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stdout + resumed.stderr
    for a, b in zip(two, _curve(killed), strict=True):
        for key in ("train_loss", "val_loss", "val_plcc"):
            assert b[key] == a[key], key


def test_rank_helpers_from_torchrun_env(monkeypatch):
    from effiminivlm.errors import EffiMiniVLMError
    from effiminivlm.training import distributed as d

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    single = d.env_dist()
    assert not single.enabled and single.is_main and d.per_rank_batch(15, single) == 15
    assert d.sum_values(single, [1.5, 2.0]) == [1.5, 2.0] and d.broadcast(single, "x") == "x"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    four = d.env_dist()
    assert (four.rank, four.world_size, four.local_rank, four.is_main) == (3, 4, 1, False)
    assert d.per_rank_batch(64, four) == 16
    with pytest.raises(EffiMiniVLMError, match="batch_size=30 is the global batch and must be divisible by "
                                               r"the number of processes \(4\)"):
        d.per_rank_batch(30, four)
    assert [list(d.shard(list(range(10)), d.Dist(r, 4)).indices) for r in range(4)] == [
        [0, 1], [2, 3, 4], [5, 6, 7], [8, 9]]  # contiguous shares, in rank order = row order
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(EffiMiniVLMError, match="RANK=4 is not within WORLD_SIZE=4"):
        d.env_dist()
