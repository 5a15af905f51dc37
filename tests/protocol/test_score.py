"""Scoring submission files: errors naming file:line, strict numbers, warnings, the minimum for a rank."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from effiminivlm.cli import main
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import DataError
from effiminivlm.files import parse_number
from effiminivlm.protocol.formulas import efficiency, leaderboard_rank, resource_cost
from effiminivlm.protocol.score import (
    MIN_ITEMS_FOR_RANK,
    read_report_plcc,
    score_submission,
)

DEV_DATA = (Path(__file__).resolve().parents[3]
            / "shared/data/amazon2023-fashion-dev/meta_Amazon_Fashion.jsonl")


# ----------------------------------------------------------------------------------------- score_submission


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture()
def truth_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    ratings = np.round(rng.uniform(1, 5, 40), 1)
    return _write(tmp_path / "truth.csv", "parent_asin,average_rating",
                  [f"B{i:04d},{r}" for i, r in enumerate(ratings)])


def _truth(path: Path) -> dict[str, float]:
    lines = path.read_text().splitlines()[1:]
    return {a: float(b) for a, b in (ln.split(",") for ln in lines)}


def _submission(path: Path, scores: dict[str, float], params: str = "27.7", flops: str = "6.8") -> Path:
    rows = [f"{k},{v},{params},{flops}" for k, v in scores.items()]
    return _write(path, "item_id,score,params,flops", rows)


def test_score_submission_matches_direct_computation(tmp_path: Path, truth_csv: Path) -> None:
    truth = _truth(truth_csv)
    rng = np.random.default_rng(1)
    ids = list(truth)[::-1]  # order must not matter
    scores = {i: truth[i] + rng.normal(0, 1.0) for i in ids}
    out = score_submission(_submission(tmp_path / "sub.csv", scores), truth_csv)
    expected_r = np.corrcoef([scores[i] for i in truth], list(truth.values()))[0, 1]
    assert out["n_items"] == 40
    assert out["plcc"] == pytest.approx(expected_r, abs=1e-12)
    assert out["c"] == pytest.approx(resource_cost(27.7, 6.8))
    assert out["ces"] == pytest.approx(max(0.0, expected_r) * efficiency(resource_cost(27.7, 6.8)))
    json.dumps(out)  # JSON-ready


def test_score_submission_errors(tmp_path: Path, truth_csv: Path) -> None:
    truth = _truth(truth_csv)
    good = dict(truth)
    sub = tmp_path / "sub.csv"

    _write(sub, "item_id,score,params,flops", [f"{k},{v},27.7,6.8" for k, v in good.items()]
           + [f"{next(iter(good))},3.0,27.7,6.8"])
    with pytest.raises(DataError, match=r"sub.csv:42: duplicate item_id 'B0000' \(first on line 2\)"):
        score_submission(sub, truth_csv)

    bad = dict(good)
    bad["B0003"] = "four"  # type: ignore[assignment]
    with pytest.raises(DataError, match=r"sub.csv:5: score 'four' is not a decimal number"):
        score_submission(_submission(sub, bad), truth_csv)

    extra = dict(good) | {"ZZZ1": 3.0, "ZZZ2": 4.0}
    with pytest.raises(DataError, match=r"2 submission id\(s\) are not in the truth.*40 of 42 submission"):
        score_submission(_submission(sub, extra), truth_csv)

    partial = dict(list(good.items())[:30])
    with pytest.raises(DataError, match=r"10 truth id\(s\) have no prediction.*30 of 30"):
        score_submission(_submission(sub, partial), truth_csv)

    rows = [f"{k},{v},{27.7 if n else 30},6.8" for n, (k, v) in enumerate(good.items())]
    with pytest.raises(DataError, match="params must be constant per file, found 2 values"):
        score_submission(_write(sub, "item_id,score,params,flops", rows), truth_csv)

    with pytest.raises(DataError, match="missing column.*flops"):
        score_submission(_write(sub, "item_id,score,params", ["a,1,2"]), truth_csv)
    with pytest.raises(DataError, match=r"t.csv: missing column\(s\) parent_asin or item_id"):
        score_submission(_submission(sub, good), _write(tmp_path / "t.csv", "asin,average_rating", ["a,1"]))
    with pytest.raises(DataError, match=r"t.csv:3: average_rating '7' is outside \[1, 5\]"):
        score_submission(_submission(sub, good), _write(tmp_path / "t.csv", "item_id,average_rating",
                                                        ["a,1", "b,7"]))
    with pytest.raises(DataError, match="t.csv: no (truth )?rows"):
        score_submission(_submission(sub, good), _write(tmp_path / "t.csv", "item_id,average_rating", []))
    with pytest.raises(DataError, match="file not found"):
        score_submission(tmp_path / "nope.csv", truth_csv)


def test_score_against_real_ratings(tmp_path: Path) -> None:
    """Real Amazon Fashion ratings as truth; a noisy submission's PLCC and CES follow from the data."""
    if not DEV_DATA.is_file():
        pytest.skip(f"real dev data not found at {DEV_DATA}")
    records = [json.loads(line) for line in DEV_DATA.read_text().splitlines() if line.strip()]
    truth = {r["parent_asin"]: float(r["average_rating"]) for r in records}
    truth_csv = _write(tmp_path / "truth.csv", "parent_asin,average_rating",
                       [f"{k},{v}" for k, v in truth.items()])
    rng = np.random.default_rng(2)
    scores = {k: v + rng.normal(0, 0.85) for k, v in truth.items()}  # noise ~ the ratings' own std
    sub = _submission(tmp_path / "sub.csv", scores, params="152.12", flops="31.14")
    out = score_submission(sub, truth_csv)
    assert out["n_items"] == len(truth) > 900
    assert 0.5 < out["plcc"] < 0.9
    assert round(out["c"], 2) == 0.49 and round(out["e"], 2) == 1.04


def test_score_against_a_prepared_folder(tmp_path: Path, prepared: Path) -> None:
    """A prepared dataset as truth: its test split, and only it, is what a submission must cover."""
    test = read_prepared(prepared, split="test")
    truth = dict(zip(test.column("parent_asin").to_pylist(), test.column("average_rating").to_pylist(),
                     strict=True))
    scores = {k: 6.0 - v for k, v in truth.items()}  # perfectly anti-correlated: PLCC -1, CES 0
    out = score_submission(_submission(tmp_path / "sub.csv", scores), prepared)
    assert out["n_items"] == len(truth) == test.num_rows and "(test split)" in out["truth"]
    assert out["plcc"] == pytest.approx(-1.0) and out["plcc_plus"] == 0.0 and out["ces"] == 0.0
    train_id = read_prepared(prepared, split="train").column("parent_asin")[0].as_py()
    with pytest.raises(DataError, match="1 submission id"):
        score_submission(_submission(tmp_path / "sub.csv", scores | {train_id: 3.0}), prepared)


def test_read_report_plcc(tmp_path: Path) -> None:
    report = tmp_path / "metrics.json"
    report.write_text(json.dumps({"overall": {"n": 5, "plcc": 0.42}, "title": "x"}))
    assert read_report_plcc(report) == 0.42
    report.write_text(json.dumps({"overall": {"plcc": None}}))
    assert math.isnan(read_report_plcc(report))
    bad_reports = (({"plcc": 0.4}, 'no "overall"'), ({"overall": {"plcc": "high"}}, "expected a number"),
                   ({"overall": {"plcc": 1.2}}, "expected a number"))
    for bad, message in bad_reports:
        report.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=message):
            read_report_plcc(report)
    report.write_text("{not json")
    with pytest.raises(DataError, match="not a JSON evaluation report"):
        read_report_plcc(report)
    with pytest.raises(DataError, match="file not found"):
        read_report_plcc(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_score(tmp_path: Path, truth_csv: Path, capsys) -> None:
    truth = _truth(truth_csv)
    scores = {k: v + 0.5 * np.sin(n) for n, (k, v) in enumerate(truth.items())}
    sub, out, png = _submission(tmp_path / "sub.csv", scores), tmp_path / "s.json", tmp_path / "s.png"
    assert main(["score", "--predictions", str(sub), "--truth", str(truth_csv), "--json", str(out),
                 "--plot", str(png), "--lovif-test"]) == 0
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(score_submission(sub, truth_csv, lovif_test=True)))
    assert data["leaderboard_rank"] == leaderboard_rank(data["ces"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert f"{data['ces']:.4f}" in printed and "would rank" in printed


def test_cli_score_bad_input_exits_2(tmp_path: Path, truth_csv: Path, capsys) -> None:
    partial = dict(list(_truth(truth_csv).items())[:39])
    sub = _submission(tmp_path / "sub.csv", partial)
    assert main(["score", "--predictions", str(sub), "--truth", str(truth_csv)]) == 2
    assert "1 truth id(s) have no prediction" in capsys.readouterr().err
    assert main(["score", "--predictions", str(tmp_path / "none.csv"), "--truth", str(truth_csv)]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["score", "--predictions", str(sub)]) == 2  # --truth is required (usage error)


# ------------------------------------------------------------------------------ strictness and warnings


@pytest.mark.parametrize("text", ["3_5", "1_000", "nan", "inf", "-Infinity", "0x10", "4,5", "", "3.5.1",
                                  "1e", "e5", "+", "٣"])
def test_parse_number_is_strict(text: str) -> None:
    with pytest.raises(DataError, match=r"f.csv:7: score"):
        parse_number(text, "f.csv:7", "score")


@pytest.mark.parametrize(("text", "value"), [("3.5", 3.5), (" 4 ", 4.0), ("-2.", -2.0), (".5", 0.5),
                                             ("2.77e1", 27.7), ("+1E-3", 0.001)])
def test_parse_number_reads_decimal_and_scientific(text: str, value: float) -> None:
    assert parse_number(text, "f.csv:1", "score") == value


def test_underscore_score_is_an_error_not_35(tmp_path: Path, truth_csv: Path) -> None:
    scores: dict[str, object] = dict(_truth(truth_csv))
    scores["B0002"] = "3_5"
    with pytest.raises(DataError, match=r"sub.csv:4: score '3_5' is not a decimal number"):
        score_submission(_submission(tmp_path / "sub.csv", scores), truth_csv)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"sub.csv:2: params '2_7.7' is not a decimal number"):
        score_submission(_submission(tmp_path / "sub.csv", _truth(truth_csv), params="2_7.7"), truth_csv)


@pytest.mark.parametrize("huge", ["1e308", "-1e308", "1.7e200"])
def test_overflowing_score_names_its_line(tmp_path: Path, truth_csv: Path, huge: str) -> None:
    """Before: 1e308 and -1e308 overflowed the correlation's sums; now a DataError names file:line."""
    scores: dict[str, object] = dict(_truth(truth_csv))
    scores["B0005"] = huge
    with pytest.raises(DataError, match=rf"sub.csv:7: score '{huge}' is too large"):
        score_submission(_submission(tmp_path / "sub.csv", scores), truth_csv)  # type: ignore[arg-type]


def test_constant_truth_is_reported_as_such(tmp_path: Path, truth_csv: Path) -> None:
    ids = list(_truth(truth_csv))
    flat = _write(tmp_path / "flat.csv", "parent_asin,average_rating", [f"{i},4.0" for i in ids])
    sub = _submission(tmp_path / "sub.csv", _truth(truth_csv))
    with pytest.raises(DataError, match=r"flat.csv: every average_rating is 4 \(40 rows\); PLCC against a "
                                        "constant truth"):
        score_submission(sub, flat)


def test_constant_predictions_score_zero_with_a_note(tmp_path: Path, truth_csv: Path) -> None:
    sub = _submission(tmp_path / "sub.csv", {i: 3.0 for i in _truth(truth_csv)})
    out = score_submission(sub, truth_csv)
    assert math.isnan(out["plcc"]) and out["plcc_defined"] is False
    assert out["plcc_plus"] == 0.0 and out["ces"] == 0.0
    assert any("predictions are constant" in w for w in out["warnings"])
    assert not any("truth" in w for w in out["warnings"])
    json.dumps(out)


def test_raw_counts_and_off_scale_scores_warn(tmp_path: Path, truth_csv: Path) -> None:
    truth = _truth(truth_csv)
    raw = score_submission(_submission(tmp_path / "raw.csv", truth, params="27706365", flops="6800000000"),
                           truth_csv)
    warned = " | ".join(raw["warnings"])
    assert "params 2.77064e+07 looks like a raw count; the protocol wants millions (27.71 M?)" in warned
    assert "flops 6.8e+09 looks like a raw count; the protocol wants GFLOPs (6.80 G?)" in warned
    assert raw["c"] > 1  # still scored as stated: the warning says why the number is poor

    scaled = {k: v * 10 for k, v in truth.items()}  # every rating x10: 10..50
    out = score_submission(_submission(tmp_path / "scaled.csv", scaled), truth_csv)
    off = [w for w in out["warnings"] if "outside [1, 5]" in w]
    n_off = sum(not 1 <= v <= 5 for v in scaled.values())
    assert off == [f"{n_off} of 40 scores lie outside [1, 5] (first: {tmp_path / 'scaled.csv'}:2 score "
                   f"{scaled['B0000']:g}); predictions are meant on the rating scale"]
    assert out["plcc"] == pytest.approx(1.0)  # scaling keeps the correlation: a warning, not an error

    clean = score_submission(_submission(tmp_path / "ok.csv", truth), truth_csv, lovif_test=True)
    assert clean["warnings"] == [] and clean["leaderboard_rank"] == 1


def test_no_rank_below_the_minimum_items(tmp_path: Path) -> None:
    assert MIN_ITEMS_FOR_RANK == 30
    truth = _write(tmp_path / "t.csv", "parent_asin,average_rating", ["A1,3.0", "A2,4.0"])
    out = score_submission(_submission(tmp_path / "s.csv", {"A1": 3.1, "A2": 4.2}), truth, lovif_test=True)
    assert out["plcc"] == pytest.approx(1.0) and out["leaderboard_rank"] is None
    assert out["min_items_for_rank"] == 30
    assert "no leaderboard rank: 2 items, fewer than the 30 a rank needs" in out["warnings"]
    out = score_submission(_submission(tmp_path / "s.csv", {"A1": 3.1, "A2": 4.2}), truth,
                           min_items_for_rank=2, lovif_test=True)
    assert out["leaderboard_rank"] == 1


def test_cli_score_prints_warnings_and_no_rank(tmp_path: Path, capsys) -> None:
    truth = _write(tmp_path / "t.csv", "parent_asin,average_rating", ["A1,3.0", "A2,4.0", "A3,2.0"])
    sub = _write(tmp_path / "s.csv", "item_id,score,params,flops",
                 ["A1,3.1,27706365,6.8", "A2,4.2,27706365,6.8", "A3,1.5,27706365,6.8"])
    assert main(["score", "--predictions", str(sub), "--truth", str(truth), "--lovif-test"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "warning: params 2.77064e+07 looks like a raw count" in printed
    assert "no rank: fewer than 30 items" in printed and "would rank" not in printed


def test_a_rank_only_against_the_lovif_test_set(tmp_path: Path, truth_csv: Path, capsys) -> None:
    """Without --lovif-test the truth is some other test set: same PLCC, C, E and CES, no rank number,
    "not comparable" in the table, the JSON and the plot's note."""
    truth = _truth(truth_csv)
    sub = _submission(tmp_path / "sub.csv", truth)
    ranked = score_submission(sub, truth_csv, lovif_test=True)
    other = score_submission(sub, truth_csv)
    assert ranked["leaderboard_rank"] == 1 and ranked["rank_note"] is None
    assert other["leaderboard_rank"] is None and other["rank_note"] == "not comparable: a different test set"
    same = ("plcc", "c", "e", "ces", "n_items")
    assert [other[k] for k in same] == [ranked[k] for k in same]
    png = tmp_path / "s.png"
    assert main(["score", "--predictions", str(sub), "--truth", str(truth_csv), "--plot", str(png)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "not comparable: a different test set" in printed and "rank #" not in printed
    assert png.read_bytes()[:4] == b"\x89PNG"
