"""The techniques through the CLI: train --teacher / --pseudo, LoRA, soup, pseudo-label, one-line errors."""

from __future__ import annotations

import json
import re

import pytest

from effiminivlm.cli import main
from effiminivlm.data.prepare import read_prepared

TINY = ["--recipe", "tiny", "--epochs", "1", "--batch-size", "8", "--modalities", "text",
        "--set", "train.max_steps_per_epoch=1"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_lora_distil_pseudo_and_soup_commands(prepared, synth_catalog, tmp_path, capsys):
    ids = read_prepared(prepared, "train").column("parent_asin").to_pylist()
    teacher = tmp_path / "teacher.csv"
    teacher.write_text("item_id,score,params,flops\n" + "".join(f"{i},4.5,1,1\n" for i in ids[:5]))
    run = tmp_path / "lora"
    lora = "model.text_encoder.lora={r: 2, alpha: 4, target_modules: [query, value], merge: false}"
    assert main(["train", "--data", str(prepared), "--out", str(run), *TINY, "--teacher", str(teacher),
                 "--set", lora, "--set", "train.loss={composite: 1, rank: {weight: 0.2, kind: hinge}}",
                 "--set", "train.sample_weights=inverse_bin_freq", "--set", "train.lr_backbone=1e-4"]) == 0
    out = capsys.readouterr().out
    assert "5 train items blended with the teacher's score" in out
    recorded = (run / "recipe.yaml").read_text()
    assert str(teacher.resolve()) in recorded and "inverse_bin_freq" in recorded
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["distill"]["teacher_scored"] == 5 and summary["sample_weights"] == "inverse_bin_freq"

    # the kept adapters are in the saved model; profile counts every parameter and reports the trainable ones
    assert main(["profile", "--model", str(run / "model"), "--json", str(tmp_path / "p.json")]) == 0
    profile = json.loads((tmp_path / "p.json").read_text())
    assert 0 < profile["trainable_m"] < profile["params_m"]

    # soups refuse kept adapters in one line
    capsys.readouterr()
    assert main(["soup", str(run), str(run), "--out", str(tmp_path / "s")]) == 2
    assert "keeps unmerged LoRA adapters" in _one_line_error(capsys)

    labels = tmp_path / "pseudo"
    assert main(["pseudo-label", str(synth_catalog / "lovif" / "input.csv"), "--model", str(run / "model"),
                 "--out", str(labels)]) == 0
    assert '"kind": "pseudo_labels"' in capsys.readouterr().out
    assert read_prepared(labels).num_rows == 160
    plain = tmp_path / "plain"
    assert main(["train", "--data", str(prepared), "--out", str(plain), *TINY, "--pseudo", str(labels),
                 "--pseudo-weight", "0.2"]) == 0
    assert "mixed in at weight 0.2 x confidence" in capsys.readouterr().out
    assert main(["soup", str(plain), str(plain / "model"), "--out", str(tmp_path / "soup")]) == 0
    assert json.loads((tmp_path / "soup" / "soup.json").read_text())["kind"] == "uniform"
    assert (tmp_path / "soup" / "model.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["--teacher", "missing.csv"], "--teacher missing.csv: no such file"),
    (["--pseudo", "missing"], "--pseudo missing: no such dir"),
    (["--set", "train.loss={plcc: 1, rank: {margn: 1}}"], r"train.loss.rank: unknown parameter\(s\) margn"),
    (["--set", "train.sample_weights=pinco"], "train.sample_weights must be one of rating_count, "
                                               "inverse_bin_freq, none"),
    (["--set", "train.freeze_text_layers=-1"], "train.freeze_text_layers must be an integer"),
])
def test_technique_options_fail_first_in_one_line(tmp_path, capsys, args, message):
    assert main(["train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "run"), "--recipe",
                 "tiny", *args]) == 2
    assert re.search(message, _one_line_error(capsys))
