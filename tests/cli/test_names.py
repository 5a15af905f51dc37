"""One name per concept on the command line: `--data` (the positional form as an alias), `--images-dir`,
`--json PATH` / `--markdown PATH`; old spellings work with a one-line note; an option a mode ignores is
refused in one line, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from effiminivlm.cli import main
from effiminivlm.cli._app import dataset
from effiminivlm.errors import ConfigError


def test_dataset_takes_exactly_one_spelling() -> None:
    assert dataset(["a", "b"], []) == ["a", "b"]
    assert dataset(None, ["a"]) == ["a"]
    assert dataset("a", None, many=False) == ["a"]
    with pytest.raises(ConfigError, match="give the dataset once: as --data or as the positional"):
        dataset(["a"], ["b"])
    with pytest.raises(ConfigError, match="missing the dataset: give --data PATH"):
        dataset(None, [])
    with pytest.raises(ConfigError, match="one dataset only, got 2: a, b"):
        dataset(None, ["a", "b"], many=False)


def test_prepare_reads_the_same_rows_from_data_and_from_the_positional_alias(synth_catalog: Path,
                                                                             tmp_path: Path, capsys) -> None:
    meta = str(synth_catalog / "meta_Synthetic.jsonl")
    common = ["--frac", "1.0", "--min-per-category", "0"]
    assert main(["prepare", "--data", meta, "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["prepare", meta, "--out", str(tmp_path / "b"), *common]) == 0
    a, b = (pq.read_table(tmp_path / x / "data.parquet").to_pylist() for x in "ab")
    assert a == b and len(a) > 100
    assert "deprecated" not in capsys.readouterr().err  # the positional form is an alias, not deprecated


@pytest.mark.parametrize("argv", [
    ["prepare", "x.jsonl", "--data", "y.jsonl", "--out", "{tmp}/o"],
    ["predict", "a", "--data", "b", "--model", "m"],
    ["pseudo-label", "a", "--data", "b", "--model", "m", "--out", "{tmp}/o"],
    ["embed", "a", "--data", "b", "--recipe", "tiny", "--out", "{tmp}/f.safetensors"],
    ["fetch-images", "a", "--data", "b"],
    ["merge-prepared", "a", "--data", "b", "--out", "{tmp}/o"],
])
def test_both_spellings_of_the_dataset_are_one_line_exit_2(argv: list[str], tmp_path: Path, capsys) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err == "error: give the dataset once: as --data or as the positional argument, not both\n"


def test_a_command_without_its_dataset_says_which_option(tmp_path: Path, capsys) -> None:
    assert main(["embed", "--recipe", "tiny", "--out", str(tmp_path / "f.safetensors")]) == 2
    assert capsys.readouterr().err == "error: missing the dataset: give --data PATH\n"


def test_fetch_images_takes_images_dir_and_refuses_both_names(prepared: Path, tmp_path: Path, capsys) -> None:
    assert main(["fetch-images", "--data", str(prepared), "--images-dir", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("0 image URLs") and err == ""
    assert main(["fetch-images", "--data", str(prepared), "--images-dir", "a", "--cache", "b"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("error: give the image folder once: --images-dir "
                                                        "(--cache is its old name)")


@pytest.mark.parametrize("extra, named", [
    (["--scope", "model"], "--scope"),
    (["--precision", "fp32", "--pad-to-max"], "--precision, --pad-to-max"),
    (["--threads", "1", "--batches", "3", "--num-workers", "1", "--images", "mean"],
     "--images, --num-workers, --threads, --batches"),
])
def test_benchmark_baseline_refuses_the_options_it_ignores(extra: list[str], named: str, capsys) -> None:
    assert main(["benchmark", "--data", "nowhere", "--recipe", "tiny", "--baseline", "reference",
                 *extra]) == 2
    err = capsys.readouterr().err
    verb = "do" if "," in named else "does"
    assert err == f"error: {named} {verb} not apply to --baseline (it times its own fixed paths)\n"


def test_benchmark_without_baseline_refuses_its_options(capsys) -> None:
    argv = ["benchmark", "--data", "nowhere", "--recipe", "tiny", "--ablation", "--markdown", "t.md"]
    assert main(argv) == 2
    assert capsys.readouterr().err == ("error: --ablation, --markdown do not apply to a benchmark without "
                                       "--baseline\n")


def test_predict_with_ray_refuses_local_only_options(tmp_path: Path, capsys) -> None:
    assert main(["predict", "--data", "x", "--model", "m", "--engine", "ray", "--num-workers", "2",
                 "--intervals", "--out", str(tmp_path / "s.csv")]) == 2
    assert capsys.readouterr().err == "error: --num-workers, --intervals do not apply to --engine ray\n"


def test_train_refuses_kfold_options_without_kfold(tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", "x", "--out", str(tmp_path / "run"), "--seeds", "2"]) == 2
    assert capsys.readouterr().err == "error: --seeds does not apply to a run without --kfold\n"


def test_recipes_writes_json_and_markdown_to_paths(tmp_path: Path, capsys) -> None:
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    assert main(["recipes", "--only", "tiny", "--json", str(js), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert [r["name"] for r in json.loads(js.read_text())["recipes"]] == ["tiny"]
    assert md.read_text().startswith("| recipe | arch |")
    assert "tiny" in out and f"json: {js}" in out and f"markdown: {md}" in out  # the table, then the paths
    assert main(["recipes", "--only", "tiny", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["recipes"][0]["name"] == "tiny"


def test_recipes_old_on_off_flag_prints_with_a_note(capsys) -> None:
    assert main(["recipes", "--markdown", "--only", "tiny"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("| recipe | arch |")
    assert ("note: recipes --markdown without a path is deprecated; use --markdown PATH (or --markdown - to "
            "print it)") in err.splitlines()
    assert main(["recipes", "--only", "tiny", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["recipes"][0]["name"] == "tiny" and "recipes --json without a path" in err


def test_recipes_names_refuses_what_it_would_not_build(tmp_path: Path, capsys) -> None:
    assert main(["recipes", "--names", "--json", str(tmp_path / "r.json"), "--only", "tiny"]) == 2
    assert capsys.readouterr().err == "error: --json, --only do not apply to --names (nothing is built)\n"
    assert not (tmp_path / "r.json").exists()
