"""The README's main job, end to end through `effiminivlm.cli.main`, on a tiny model (seconds)."""

from __future__ import annotations

import csv
import json

from effiminivlm.cli import main


def test_main_job_end_to_end(tmp_path, capsys):
    cat, prep, run = tmp_path / "catalog", tmp_path / "prep", tmp_path / "run"
    assert main(["synth", "--n", "120", "--out", str(cat), "--seed", "1", "--image-size", "64"]) == 0
    assert main(["prepare", str(cat / "meta_Synthetic.jsonl"), "--out", str(prep), "--frac", "1.0",
                 "--min-per-category", "0"]) == 0
    summary = json.loads((prep / "summary.json").read_text())
    assert summary["kept"] == 120
    assert main(["train", "--data", str(prep), "--out", str(run), "--recipe", "tiny", "--epochs", "2",
                 "--set", "train.max_steps_per_epoch=2", "--set", "data.num_workers=0"]) == 0
    assert (run / "model" / "model.safetensors").is_file()
    # a second train into the same folder is refused with a clear message, not a traceback
    assert main(["train", "--data", str(prep), "--out", str(run), "--recipe", "tiny"]) == 2
    assert "not empty" in capsys.readouterr().err
    # --resume alone continues with the run's own recipe (here: nothing left to do) and keeps the model
    assert main(["train", "--data", str(prep), "--out", str(run), "--resume"]) == 0
    assert "resumed" in capsys.readouterr().out

    assert main(["evaluate", "--model", str(run / "model"), "--data", str(prep),
                 "--out", str(tmp_path / "rep"),
                 "--num-workers", "0", "--precision", "fp32"]) == 0
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == summary["per_split"]["test"]["rows"]
    assert (tmp_path / "rep" / "pred_vs_true.png").stat().st_size > 5000

    sub = tmp_path / "submission.csv"
    assert main(["predict", str(prep), "--split", "test", "--model", str(run / "model"), "--out", str(sub),
                 "--num-workers", "0", "--precision", "fp32"]) == 0
    rows = list(csv.DictReader(sub.open()))
    assert len(rows) == metrics["overall"]["n"]

    out = tmp_path / "score.json"
    assert main(["score", "--predictions", str(sub), "--truth", str(prep), "--json", str(out)]) == 0
    scored = json.loads(out.read_text())
    # the leaderboard computation from files agrees with evaluate's PLCC on the same items
    assert abs(scored["plcc"] - metrics["overall"]["plcc"]) < 1e-4
    assert scored["n_items"] == len(rows)

    lovif_sub = tmp_path / "lovif.csv"
    assert main(["predict", str(cat / "lovif" / "input.csv"), "--model", str(run / "model"),
                 "--out", str(lovif_sub), "--num-workers", "0"]) == 0
    assert main(["score", "--predictions", str(lovif_sub), "--truth", str(cat / "lovif" / "truth.csv")]) == 0


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--recipe", "nope"]) == 2
    assert "unknown recipe" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--recipe", "tiny",
                 "--set", "train.lrr=1"]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "nomodel"), "--data", str(tmp_path)]) == 2
