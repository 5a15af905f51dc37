from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.training import loop
from effiminivlm.training.checkpoint import load_checkpoint


def _train(recipe, prepared: Path, out: Path, **kw):
    return loop.train(recipe, prepared, out, progress=False, log=lambda _: None, **kw)


def test_train_writes_a_run_folder_and_best_model(tiny_recipe, prepared, tmp_path):
    out = tmp_path / "run"
    summary = _train(tiny_recipe, prepared, out)
    assert summary["epochs_run"] == 2 and summary["steps"] == 6
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for x in lines:
        assert x["train_samples"] == 24  # 3 steps of 8
        assert -1 <= x["val_plcc"] <= 1 and x["val_loss"] > 0
        assert sum(x["image_status"].values()) == 24 and x["image_status"].get("ok", 0) > 0
    best = max(lines, key=lambda x: x["val_plcc"])
    assert summary["best_epoch"] == best["epoch"] and best["best"]
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    assert (out / "recipe.yaml").read_text().startswith("name: tiny")
    assert json.loads((out / "train_summary.json").read_text())["best_val_plcc"] == pytest.approx(
        best["val_plcc"])


def test_refuses_a_folder_that_holds_no_run_and_resume_needs_a_run(tiny_recipe, prepared, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(EffiMiniVLMError, match="not empty and holds no run"):
        _train(tiny_recipe, prepared, out)
    with pytest.raises(EffiMiniVLMError, match="no run to resume"):
        _train(tiny_recipe, prepared, tmp_path / "missing", resume=True)


def _crash_in_first_epoch(monkeypatch, prepared, recipe, out: Path) -> None:
    """Run until the first training step, then die like a SIGKILL would: nothing after that point is written
    (the temporary files of a publish and a checkpoint write in progress are left behind)."""
    def die(*a, **k):
        (out / ".model.tmp").mkdir()
        (out / ".model.tmp" / "config.json").write_text("{")
        (out / "checkpoint").mkdir()
        (out / "checkpoint" / ".last.pt.tmp").write_bytes(b"half")
        raise KeyboardInterrupt("simulated kill in epoch 1")

    with monkeypatch.context() as m:
        m.setattr(loop, "train_step", die)
        with pytest.raises(KeyboardInterrupt):
            _train(recipe, prepared, out)
    assert sorted(p.name for p in out.iterdir()) == [".model.tmp", "checkpoint", "recipe.yaml"]


def test_a_run_killed_before_its_first_checkpoint_can_be_resumed_or_rerun(tiny_recipe, prepared, tmp_path,
                                                                        monkeypatch):
    from effiminivlm.config import load_recipe

    short = load_recipe(tiny_recipe.to_dict(), ["train.epochs=1", "train.max_steps_per_epoch=1"])
    out = tmp_path / "run"
    _crash_in_first_epoch(monkeypatch, prepared, short, out)
    logs: list[str] = []
    summary = loop.train(None, prepared, out, resume=True, progress=False, log=logs.append)
    assert summary["epochs_run"] == 1 and (out / "model" / "model.safetensors").is_file()
    assert any("has no checkpoint" in x and "from scratch with its own recipe.yaml" in x for x in logs)
    assert any("removed temporary files" in x and ".model.tmp" in x and ".last.pt.tmp" in x for x in logs)
    assert load_checkpoint(out / "checkpoint" / "last.pt")["recipe"] == short.to_dict()
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]

    again = tmp_path / "again"
    _crash_in_first_epoch(monkeypatch, prepared, short, again)
    other = load_recipe(short.to_dict(), ["train.lr=0.002"])
    logs.clear()
    summary = loop.train(other, prepared, again, progress=False, log=logs.append)
    assert summary["epochs_run"] == 1 and any(x.startswith(f"restarting {again}") for x in logs)
    assert "lr: 0.002" in (again / "recipe.yaml").read_text()  # a rerun trains with the recipe it is given
    assert not list(again.glob(".*")) and not list((again / "checkpoint").glob(".*"))


def test_a_crash_between_the_publish_renames_loses_no_model(tiny_recipe, prepared, tmp_path):
    from effiminivlm.config import load_recipe
    from effiminivlm.models.factory import load_model

    out = tmp_path / "run"
    short = load_recipe(tiny_recipe.to_dict(), ["train.epochs=1", "train.max_steps_per_epoch=1"])
    _train(short, prepared, out)
    saved = load_file(out / "model" / "model.safetensors")
    (out / "model").rename(out / ".model.old")  # killed after model -> .model.old, before .model.tmp -> model
    with pytest.warns(UserWarning, match="restored .*model from its backup .model.old"):
        model, _ = load_model(out / "model")  # what evaluate / predict / the scorer call
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())

    (out / "model").rename(out / ".model.old")
    logs: list[str] = []
    loop.train(None, prepared, out, resume=True, progress=False, log=logs.append)
    assert any(x.startswith("restored") for x in logs) and not (out / ".model.old").exists()
    again = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(saved[k], again[k]) for k in saved)


def test_metrics_never_repeat_an_epoch_when_killed_between_the_line_and_the_checkpoint(tiny_recipe, prepared,
                                                                                       tmp_path, monkeypatch):
    from effiminivlm.config import load_recipe

    recipe = load_recipe(tiny_recipe.to_dict(), ["train.max_steps_per_epoch=1"])
    out = tmp_path / "run"
    real_save, calls = loop.save_checkpoint, []

    def die_before_second_checkpoint(path, state):
        calls.append(state["state"]["epoch"])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed after epoch 2's metrics line, before its checkpoint")
        real_save(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", die_before_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        _train(recipe, prepared, out)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    logs: list[str] = []
    loop.train(None, prepared, out, resume=True, progress=False, log=logs.append)
    assert any("rewritten to the 1 epoch(s) the checkpoint covers (it had 2" in x for x in logs)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_after_a_crash_gives_the_same_model_as_an_uninterrupted_run(tiny_recipe, prepared, tmp_path,
                                                                           monkeypatch):
    straight = tmp_path / "straight"
    _train(tiny_recipe, prepared, straight)

    crashed = tmp_path / "crashed"
    real_save = loop.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("simulated crash after epoch 1")

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_recipe, prepared, crashed)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert load_checkpoint(crashed / "checkpoint" / "last.pt")["state"]["epoch"] == 1
    # the reverse order: the checkpoint is written but epoch 1's metrics line only half
    epoch1 = (crashed / "metrics.jsonl").read_text()
    (crashed / "metrics.jsonl").write_text(epoch1[: len(epoch1) // 2])

    from effiminivlm.config import load_recipe

    logs: list[str] = []
    changed = load_recipe(tiny_recipe.to_dict(), ["train.lr=0.5"])
    summary = loop.train(changed, prepared, crashed, resume=True, progress=False, log=logs.append)
    assert any("ignoring: train.lr: 0.5 != 0.001" in line for line in logs)
    assert summary["epochs_run"] == 2
    a = load_checkpoint(straight / "checkpoint" / "last.pt")["model"]
    b = load_checkpoint(crashed / "checkpoint" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    lines = (crashed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2] and lines[0] + "\n" == epoch1
    assert any("rewritten to the 1 epoch(s)" in line for line in logs)
    sa = load_file(straight / "model" / "model.safetensors")
    sb = load_file(crashed / "model" / "model.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_early_stopping_stops_after_patience_epochs_without_improvement(tiny_recipe, prepared, tmp_path,
                                                                       monkeypatch):
    from effiminivlm.config import load_recipe

    recipe = load_recipe(tiny_recipe.to_dict(), ["train.epochs=6", "train.patience=1",
                                                 "train.max_steps_per_epoch=1"])
    plccs = iter([0.5, 0.4, 0.9, 0.1])
    real = loop.compute_metrics

    def fake_metrics(pred, true, *a, **k):
        out = real(pred, true, *a, **k)
        out["overall"]["plcc"] = next(plccs)
        return out

    monkeypatch.setattr(loop, "compute_metrics", fake_metrics)
    summary = _train(recipe, prepared, tmp_path / "run")
    assert summary["epochs_run"] == 2 and summary["stop_reason"] == "early_stopping"
    assert summary["best_epoch"] == 1 and summary["best_val_plcc"] == 0.5


@pytest.mark.parametrize("frozen", ["image", "text"])
def test_a_frozen_tower_is_bit_identical_after_training_while_the_rest_learns(tiny_recipe, prepared, tmp_path,
                                                                            monkeypatch, frozen):
    from effiminivlm.config import load_recipe
    from effiminivlm.models.factory import load_model

    recipe = load_recipe(tiny_recipe.to_dict(), [f"train.freeze_{frozen}=true", "train.epochs=1",
                                                 "train.max_steps_per_epoch=2"])
    real_create, built = loop.create_model, []

    def create_and_snapshot(*a, **k):
        model = real_create(*a, **k)
        built.append((model, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return model

    monkeypatch.setattr(loop, "create_model", create_and_snapshot)
    _train(recipe, prepared, tmp_path / "run")
    (model, before), = built
    saved, _ = load_model(tmp_path / "run" / "model")
    other = "text" if frozen == "image" else "image"
    for state in (model.state_dict(), saved.state_dict()):  # the live model and the published one
        tower = {k: v for k, v in state.items() if k.startswith(f"{frozen}_encoder.")}
        if frozen == "image":  # BatchNorm running statistics are part of what must not move
            assert {"running_mean", "running_var"} <= {k.rsplit(".", 1)[1] for k in tower}
        assert tower and all(torch.equal(v, before[k]) for k, v in tower.items()), [
            k for k, v in tower.items() if not torch.equal(v, before[k])]
        for part in ("head.", f"{other}_encoder."):
            assert any(not torch.equal(v, before[k]) for k, v in state.items() if k.startswith(part)), part
    if frozen == "text":  # unfrozen, the image tower's BatchNorm statistics do move: the check above can fail
        assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()
                   if k.startswith("image_encoder.") and k.endswith("running_mean"))


def test_diverged_validation_is_a_clear_error(tiny_recipe, prepared, tmp_path, monkeypatch):
    import numpy as np

    real = loop.run_inference

    def nan_inference(*a, **k):
        res = real(*a, **k)
        res.pred = np.full_like(res.pred, np.nan)
        return res

    monkeypatch.setattr(loop, "run_inference", nan_inference)
    with pytest.raises(EffiMiniVLMError, match="not finite.*No epoch finished, so there is no checkpoint"):
        _train(tiny_recipe, prepared, tmp_path / "run")
