"""The README's main job, end to end through `effiminivlm.cli.main`, on a tiny model (seconds)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

import effiminivlm.models.processor as processor
from effiminivlm.cli import main


def _one_line_error(capsys) -> str:
    """The stderr of a failed command: exactly one `error: ...` line, no traceback."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_main_job_end_to_end(tmp_path, capsys, monkeypatch):
    cat, prep, run = tmp_path / "catalog", tmp_path / "prep", tmp_path / "run"
    assert main(["synth", "--n", "120", "--out", str(cat), "--seed", "1", "--image-size", "64"]) == 0
    assert str(cat) in capsys.readouterr().out
    assert len((cat / "meta_Synthetic.jsonl").read_text().splitlines()) == 120
    assert main(["prepare", str(cat / "meta_Synthetic.jsonl"), "--out", str(prep), "--frac", "1.0",
                 "--min-per-category", "0"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote 120 rows to {prep}")
    summary = json.loads((prep / "summary.json").read_text())
    assert summary["kept"] == 120
    modes: list[str] = []  # the image mode of each dataset train builds: train's, then validation's

    class SpyDataset(processor.ProductDataset):  # train builds its datasets through the model's processor
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            modes.append(self.mode)

    monkeypatch.setattr(processor, "ProductDataset", SpyDataset)
    assert main(["train", "--data", str(prep), "--out", str(run), "--recipe", "tiny", "--epochs", "2",
                 "--set", "train.max_steps_per_epoch=2", "--set", "data.num_workers=0",
                 "--set", "data.images=mean"]) == 0
    assert modes == ["first", "mean"]  # recipe data.images drives validation inference
    out = capsys.readouterr().out
    train_summary = json.loads((run / "train_summary.json").read_text())
    *_, best, beside = out.strip().splitlines()
    assert best == (
        f"best val PLCC {train_summary['best_val_plcc']:.4f} at epoch {train_summary['best_epoch']} "
        f"({train_summary['stop_reason']}); model saved to {run / 'model'}")
    words = train_summary["words_only_val_plcc"]  # the words-only baseline on the same val rows, beside
    assert beside == f"val model {train_summary['best_val_plcc']:.3f} | words only {words:.3f} (PLCC)"
    stored = yaml.safe_load((run / "recipe.yaml").read_text())
    assert stored["data"]["images"] == "mean" and stored["train"]["epochs"] == 2 and "eval" not in stored
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, train_summary["epochs_run"] + 1))
    assert (run / "model" / "model.safetensors").is_file()
    # a second train into the same folder is refused with a clear message, not a traceback
    assert main(["train", "--data", str(prep), "--out", str(run), "--recipe", "tiny"]) == 2
    assert "not empty" in _one_line_error(capsys)
    # --resume alone continues with the run's own recipe (here: nothing left to do) and keeps the model
    assert main(["train", "--data", str(prep), "--out", str(run), "--resume"]) == 0
    assert "resumed" in capsys.readouterr().out

    assert main(["evaluate", "--model", str(run / "model"), "--data", str(prep),
                 "--out", str(tmp_path / "rep"),
                 "--num-workers", "0", "--precision", "fp32"]) == 0
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == summary["per_split"]["test"]["rows"]
    printed = capsys.readouterr().out
    assert f"{metrics['overall']['plcc']:.4f}" in printed and f"{tmp_path / 'rep'}" in printed
    assert (tmp_path / "rep" / "pred_vs_true.png").stat().st_size > 5000

    sub = tmp_path / "submission.csv"
    assert main(["predict", str(prep), "--split", "test", "--model", str(run / "model"), "--out", str(sub),
                 "--num-workers", "0", "--precision", "fp32"]) == 0
    rows = list(csv.DictReader(sub.open()))
    assert len(rows) == metrics["overall"]["n"]
    assert list(rows[0]) == ["item_id", "score", "params", "flops"]
    assert all(1.0 <= float(r["score"]) <= 5.0 for r in rows)
    printed = json.loads(capsys.readouterr().out)
    assert printed["submission"] == str(sub) and printed["items"] == len(rows)
    assert float(rows[0]["params"]) == pytest.approx(printed["params_m"], rel=1e-3)

    out = tmp_path / "score.json"
    assert main(["score", "--predictions", str(sub), "--truth", str(prep), "--json", str(out)]) == 0
    scored = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert f"json: {out}" in printed and f"{scored['plcc']:.4f}" in printed
    # the leaderboard computation from files agrees with evaluate's PLCC on the same items
    assert abs(scored["plcc"] - metrics["overall"]["plcc"]) < 1e-4
    assert scored["n_items"] == len(rows)
    # a synthetic catalog is not the LoViF test set: `make demo`'s score claims no leaderboard place
    assert scored["leaderboard_rank"] is None and scored["lovif_test"] is False
    assert "not comparable: a different test set" in " ".join(printed.split()) and "rank #" not in printed

    lovif_sub = tmp_path / "lovif.csv"
    assert main(["predict", str(cat / "lovif" / "input.csv"), "--model", str(run / "model"),
                 "--out", str(lovif_sub), "--num-workers", "0"]) == 0
    lovif_rows = list(csv.DictReader(lovif_sub.open()))
    truth_rows = list(csv.DictReader((cat / "lovif" / "truth.csv").open()))
    assert sorted(r["item_id"] for r in lovif_rows) == sorted(r[next(iter(r))] for r in truth_rows)
    capsys.readouterr()
    assert main(["score", "--predictions", str(lovif_sub), "--truth", str(cat / "lovif" / "truth.csv")]) == 0
    assert "PLCC" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "p")]) == 2
    assert "missing.jsonl" in _one_line_error(capsys)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--recipe", "nope"]) == 2
    from effiminivlm.config import list_recipes

    assert {"demo", "offline", "paper", "probe", "tiny"} <= set(list_recipes())
    assert (f"unknown recipe 'nope'; packaged recipes: {', '.join(list_recipes())}"
            in _one_line_error(capsys))
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--recipe", "tiny",
                 "--set", "train.lrr=1"]) == 2
    assert "train.lrr" in _one_line_error(capsys)
    assert main(["evaluate", "--model", str(tmp_path / "nomodel"), "--data", str(tmp_path)]) == 2
    assert "is not a prepared dataset (no summary.json)" in _one_line_error(capsys)
    assert not (tmp_path / "p").exists() and not (tmp_path / "r").exists()


def _write_commands(tmp_path, target):
    """(command, option) pairs: every command that writes, with its output option pointed at `target`."""
    data, model = str(tmp_path / "prep"), str(tmp_path / "model")
    t = str(target)
    return [
        (["train", "--data", data, "--recipe", "tiny", "--out", t], "--out"),
        (["evaluate", "--model", model, "--data", data, "--out", t], "--out"),
        (["predict", data, "--model", model, "--out", t], "--out"),
        (["profile", "--recipe", "tiny", "--json", t], "--json"),
        (["profile", "--recipe", "tiny", "--plcc", "0.5", "--plot", t], "--plot"),
        (["score", "--predictions", "p.csv", "--truth", "t.csv", "--json", t], "--json"),
        (["score", "--predictions", "p.csv", "--truth", "t.csv", "--plot", t], "--plot"),
        (["benchmark", "--data", data, "--recipe", "tiny", "--json", t], "--json"),
        (["prepare", "meta.jsonl", "--out", t], "--out"),
        (["synth", "--n", "5", "--out", t], "--out"),
    ]


def test_an_unwritable_output_path_fails_first_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    target = blocker / "sub" / "out.x"  # under a regular file: can never be created
    for argv, option in _write_commands(tmp_path, target):
        assert main(argv) == 2, argv
        err = _one_line_error(capsys)
        # the output path is checked before anything else (missing model, data, inputs...)
        assert err == f"error: {option} {target}: {blocker} is a file, not a folder", argv
    assert blocker.read_text() == "not a folder\n"
    assert main(["train", "--data", "d", "--out", "bad\0name"]) == 2
    assert "not a valid path" in _one_line_error(capsys)
    assert main(["synth", "--n", "5", "--out", str(tmp_path / ("x" * 300))]) == 2
    assert "is longer than 255 bytes" in _one_line_error(capsys)
    assert main(["synth", "--n", "5", "--out", str(tmp_path / "new" / ("y" * 300) / "z")]) == 2
    assert "is longer than 255 bytes" in _one_line_error(capsys)


def test_an_existing_folder_is_not_a_file_output(tmp_path, capsys):
    folder = tmp_path / "existing"
    (folder / "keep").mkdir(parents=True)
    assert main(["predict", str(tmp_path), "--model", str(tmp_path / "m"), "--out", str(folder)]) == 2
    assert _one_line_error(capsys).startswith(f"error: --out {folder}: is a folder")
    assert main(["score", "--predictions", "p.csv", "--truth", "t.csv", "--json", str(folder)]) == 2
    assert _one_line_error(capsys).startswith(f"error: --json {folder}: is a folder")
    assert (folder / "keep").is_dir()
    # and a file where a folder goes
    (tmp_path / "plain").write_text("x")
    assert main(["synth", "--n", "5", "--out", str(tmp_path / "plain")]) == 2
    assert _one_line_error(capsys) == f"error: --out {tmp_path / 'plain'}: exists and is not a folder"


@pytest.mark.parametrize("args, message", [
    (["--set", "train.batch_size=0"], "train.batch_size must be an integer in [1, 65536], got 0"),
    (["--batch-size", "0"], "train.batch_size must be an integer in [1, 65536], got 0"),
    (["--set", "train.huber_delta=0"], "train.huber_delta must be a finite number and > 0, got 0.0"),
    (["--precision", "fp64"], "train.precision must be one of auto, fp32, bf16, fp16, got 'fp64'"),
    (["--set", "model.arch=clip"], "model.arch: unknown model arch 'clip'"),
    (["--set", "eval.split=val"], "unknown recipe key(s) eval.split; known: data, input, model, name, train"),
    (["--set", "train.loss=hubber"], "train.loss: unknown loss 'hubber'; did you mean huber"),
    (["--set", "model.head.hidden_dims=[1,2"], "override 'model.head.hidden_dims=[1,2': invalid YAML"),
    (["--set", "train.lr=!!python/object/apply:os.system [\"true\"]"], "invalid YAML: could not determine a "
                                                                       "constructor for the tag"),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
])
def test_train_rejects_bad_recipe_values_before_reading_data(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    # --data does not exist: the recipe is refused before the data is looked at
    assert main(["train", "--data", str(tmp_path / "nodata"), "--out", str(out), "--recipe", "tiny",
                 *args]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_recipe_files_with_python_tags_or_broken_yaml_name_file_and_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'name: evil\ntrain: !!python/object/apply:os.mkdir ["{marker}"]\n')
    broken = tmp_path / "broken.yaml"
    broken.write_text("base: tiny\ntrain:\n  epochs: [2\n")
    for recipe, where in ((evil, f"{evil}:2: invalid YAML"), (broken, f"{broken}:4: invalid YAML")):
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--recipe",
                     str(recipe)]) == 2
        assert _one_line_error(capsys).startswith(f"error: {where}")
    assert not marker.exists()
    assert main(["profile", "--recipe", str(evil)]) == 2
    assert f"{evil}:2: invalid YAML" in _one_line_error(capsys)


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp64"], "--precision must be one of auto, fp32, bf16, fp16, got 'fp64'"),
    (["--device", "tpu0"], "--device 'tpu0' is not a device"),
    (["--images", "all"], "--images must be one of first, mean, got 'all'"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
    (["--split", "dev"], "--split must be one of train, val, test, got 'dev'"),
])
def test_evaluate_and_predict_options_are_checked_first(tmp_path, capsys, args, message):
    for cmd in (["evaluate", "--data", str(tmp_path)], ["predict", str(tmp_path)]):
        assert main([*cmd, "--model", str(tmp_path / "nomodel"), *args]) == 2
        assert message in _one_line_error(capsys)


def test_a_model_config_with_absurd_sizes_is_one_line_naming_file_and_key(tmp_path, capsys):
    from effiminivlm.config import load_recipe

    model = tmp_path / "model"
    model.mkdir()
    cfg = {"format_version": 1, **load_recipe("tiny").to_dict()["model"]}
    cfg["text_encoder"]["config"]["num_attention_heads"] = 3
    (model / "config.json").write_text(json.dumps(cfg))
    assert main(["profile", "--model", str(model)]) == 2
    assert _one_line_error(capsys) == (f"error: {model / 'config.json'}: model.text_encoder.config."
                                       "hidden_size 32 is not a multiple of config.num_attention_heads 3")
    cfg["text_encoder"]["config"]["num_attention_heads"] = 2
    cfg["image_encoder"]["image_size"] = -5
    (model / "config.json").write_text(json.dumps(cfg))
    assert main(["profile", "--model", str(model)]) == 2
    assert _one_line_error(capsys) == (f"error: {model / 'config.json'}: input.image_size must "
                                       "be an integer in [16, 4096], got -5")


def test_a_bug_keeps_its_traceback(monkeypatch):
    """main turns the project's own errors into one line, and nothing else: a bug is not a user error."""
    import effiminivlm.config as config

    def broken() -> list[str]:
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(config, "list_recipes", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["recipes"])
    monkeypatch.setattr(config, "list_recipes", lambda: {}["missing"])
    with pytest.raises(KeyError):
        main(["recipes"])


def test_fp16_on_a_cpu_is_refused_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("fp16 is valid where CUDA is")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--recipe", "tiny",
                 "--precision", "fp16", "--device", "cpu"]) == 2
    assert _one_line_error(capsys) == ("error: precision 'fp16' on cpu: fp16 autocast needs CUDA; use bf16 "
                                       "or fp32 on CPU")
    assert main(["benchmark", "--data", str(tmp_path), "--recipe", "tiny", "--precision", "fp16"]) == 2
    assert "fp16 autocast needs CUDA" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, message", [
    (["predict", "{x}", "--model", "{x}/m", "--device", "cuda"], "--device 'cuda': no CUDA GPU is available"),
    (["evaluate", "--data", "{x}", "--model", "{x}/m", "--device", "cuda:0"], "--device 'cuda:0': no CUDA"),
    (["synth", "--n", "1", "--image-size", "60000", "--out", "{x}/s"],
     "synth: --image-size must be in [32, 4096] pixels, got 60000"),
    (["scaling", "--data", "{x}", "--out", "{x}/sc", "--target-n", "-5"],
     "--target-n must be a finite number of items >= 1, got -5.0"),
    (["scaling", "--data", "{x}", "--out", "{x}/sc", "--target-n", "nan"], "--target-n must be a finite"),
    (["predict", "{x}/in.csv", "--model", "{x}/m", "--images-dir", "{x}/nope"],
     "--images-dir {x}/nope: does not exist"),
    (["predict", "{x}/in.csv", "--model", "{x}/m", "--images-dir", "{x}/in.csv"], "is not a folder"),
])
def test_user_errors_of_options_are_one_line(tmp_path, capsys, argv, message):
    """Each was a traceback (RuntimeError, MemoryError), a numpy warning or a silent exit 0."""
    import torch

    if "cuda" in " ".join(argv) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "in.csv").write_text("parent_asin,title\n")
    assert main([a.replace("{x}", str(tmp_path)) for a in argv]) == 2
    assert message.replace("{x}", str(tmp_path)) in _one_line_error(capsys)
