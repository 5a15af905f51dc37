"""The run-folder states a killed run can leave, and what a rerun / --resume / --overwrite does with each.

These need no training: the folders are built by hand with the files a real run writes at each moment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from effiminivlm.cli import main
from effiminivlm.errors import EffiMiniVLMError
from effiminivlm.training.rundir import clean_orphans, open_run_dir, sync_metrics


def _open(out: Path, **kw):
    logs: list[str] = []
    start = open_run_dir(out, resume=kw.pop("resume", False), overwrite=kw.pop("overwrite", False),
                         log=logs.append)
    return start, logs


def _run(out: Path, *files: str) -> Path:
    """A run folder holding `files` (a trailing / makes a folder with a config.json in it)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        path = out / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
            (path / "config.json").write_text("{}")
        else:
            path.write_text("name: tiny\n" if name == "recipe.yaml" else "x")
    return out


def test_a_new_or_empty_folder_starts_and_resume_there_says_there_is_nothing_to_resume(tmp_path):
    start, logs = _open(tmp_path / "new")
    assert not start.from_checkpoint and start.recipe is None and logs == []
    (tmp_path / "empty").mkdir()
    assert not _open(tmp_path / "empty")[0].from_checkpoint
    with pytest.raises(EffiMiniVLMError, match="holds no run to resume .* start it without --resume"):
        _open(tmp_path / "new", resume=True)


def test_killed_before_the_first_checkpoint_rerun_restarts_and_resume_uses_the_stored_recipe(tmp_path):
    out = _run(tmp_path / "run", "recipe.yaml", "metrics.jsonl", "checkpoint/.last.pt.tmp")
    start, logs = _open(out)
    assert not start.from_checkpoint and start.recipe is None  # a rerun trains with the recipe it is given
    assert any("restarting" in line and "no checkpoint or model" in line for line in logs)
    assert not (out / "metrics.jsonl").exists()  # the killed attempt's lines are not continued
    assert not (out / "checkpoint").exists()  # the half-written checkpoint (and its empty folder) are gone

    _run(out, "metrics.jsonl")
    start, logs = _open(out, resume=True)
    assert not start.from_checkpoint and start.recipe is not None and start.recipe.name == "tiny"
    assert any("has no checkpoint" in x and "from scratch with its own recipe.yaml" in x for x in logs)
    assert not (out / "metrics.jsonl").exists()


def test_a_model_without_checkpoint_is_never_deleted_without_overwrite(tmp_path):
    out = _run(tmp_path / "run", "recipe.yaml", "model/", "metrics.jsonl")
    with pytest.raises(EffiMiniVLMError, match="from an interrupted run and no checkpoint; pass --resume"):
        _open(out)
    start, logs = _open(out, resume=True)  # restarts with the stored recipe; model/ stays until replaced
    assert start.recipe is not None and (out / "model" / "config.json").is_file()
    assert any("replaced when this one saves its first best model" in line for line in logs)

    done = _run(tmp_path / "done", "recipe.yaml", "model/", "train_summary.json")
    for kw in ({}, {"resume": True}):
        with pytest.raises(EffiMiniVLMError, match="finished run.*--overwrite"):
            _open(done, **kw)
    assert (done / "model" / "config.json").is_file()
    start, logs = _open(done, overwrite=True)
    assert not start.from_checkpoint and not any(done.iterdir())
    assert logs == [f"--overwrite: removed the earlier run's model, train_summary.json, recipe.yaml from "
                    f"{done}"]


def test_a_run_with_a_checkpoint_resumes_and_a_rerun_names_both_flags(tmp_path):
    out = _run(tmp_path / "run", "recipe.yaml", "checkpoint/last.pt", "model/")
    assert _open(out, resume=True)[0].from_checkpoint
    with pytest.raises(EffiMiniVLMError, match=r"not empty: it holds a run with a checkpoint .*last\.pt\); "
                                               "pass --resume to continue it, --overwrite"):
        _open(out)
    with pytest.raises(EffiMiniVLMError, match="pass only one"):
        _open(out, resume=True, overwrite=True)


def test_a_folder_that_is_not_a_run_is_refused_even_with_overwrite(tmp_path):
    out = _run(tmp_path / "notes", "mine.txt")
    for kw in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(EffiMiniVLMError, match="not empty and holds no run|holds no run to resume"):
            _open(out, **kw)
    assert (out / "mine.txt").read_text() == "x"
    with pytest.raises(EffiMiniVLMError, match="has a trained model but no .* recipe.yaml"):
        _open(_run(tmp_path / "bare", "model/"), resume=True)


def test_an_interrupted_publish_and_orphan_temp_files_are_repaired_before_anything_else(tmp_path):
    out = _run(tmp_path / "run", "recipe.yaml", "checkpoint/last.pt", ".model.old/", ".model.tmp/",
               ".metrics.jsonl.tmp", "user.tmp")
    start, logs = _open(out, resume=True)
    assert start.from_checkpoint
    assert (out / "model" / "config.json").is_file() and not (out / ".model.old").exists()
    assert any("restored" in line and ".model.old" in line for line in logs)
    assert any(line.startswith("removed temporary files") and ".model.tmp" in line for line in logs)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "model", "recipe.yaml", "user.tmp"]
    assert clean_orphans(out) == []


def test_sync_metrics_keeps_exactly_the_checkpointed_epochs(tmp_path):
    lines = [{"epoch": 1, "val_plcc": 0.1}, {"epoch": 2, "val_plcc": 0.2}, {"epoch": 2, "val_plcc": 0.3}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"epoch": 3, "val_')
    # an old checkpoint (no stored lines): the file's own lines up to its epoch, once each, half line dropped
    records, msg = sync_metrics(tmp_path, None, 2)
    assert records == lines[:2] and [json.loads(x) for x in path.read_text().splitlines()] == lines[:2]
    assert msg is not None and "2 epoch(s)" in msg and "it had 4 line(s)" in msg
    # the checkpoint's own lines win, whatever the file holds (here: one epoch missing)
    path.write_text(json.dumps(lines[0]) + "\n")
    records, msg = sync_metrics(tmp_path, lines[:2], 2)
    assert [json.loads(x) for x in path.read_text().splitlines()] == lines[:2] and msg is not None
    assert sync_metrics(tmp_path, lines[:2], 2) == (lines[:2], None)  # already in sync: untouched


def test_cli_rerun_into_a_started_run_and_overwrite_flag(tmp_path, capsys):
    out = _run(tmp_path / "run", "recipe.yaml", "model/", "train_summary.json")
    args = ["train", "--data", str(tmp_path / "no-data"), "--out", str(out), "--recipe", "tiny"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finished run and no checkpoint; pass --overwrite" in err
    assert main([*args, "--resume", "--overwrite"]) == 2
    assert "pass only one" in capsys.readouterr().err
    assert (out / "model" / "config.json").is_file()
