"""benchmarks/bench_peers.py: the leaderboard table puts measured recipe rows next to the published figures,
says "recipe pending" for recipes not in this checkout, and rewrites only the generated part of the doc."""

from __future__ import annotations

import sys

import pytest

from effiminivlm.protocol.recipes import RecipeRow
from tests._scripts import load_benchmark


@pytest.fixture(scope="module")
def peers():
    return load_benchmark("bench_peers")


def test_leaderboard_rows_show_measured_pending_and_unknown_systems(peers) -> None:
    paper = RecipeRow("paper", "packaged", arch="effiminivlm", params_m=27.706, flops_g=6.811, c=0.097, e=1.1)
    clip = RecipeRow("clip-fusion", "packaged", arch="clip-fusion", error="weights missing")
    text = peers.leaderboard_markdown({"paper": paper, "clip-fusion": clip}, {"paper", "clip-fusion"})
    lines = {line.split(" | ")[1]: line for line in text.splitlines()[2:] if line.count("|") > 5}
    assert "| 27.70 / 6.80 | 27.71 / 6.81 | +0.0% / +0.2% |" in lines["yinloonkhor"]
    assert "recipe pending" in lines["olacnqoddchl"] and "inconsistent source" in lines["olacnqoddchl"]
    assert "152.12M / 31.14G" in lines["olacnqoddchl"] and "228M / 61.44G" in lines["olacnqoddchl"]
    assert "error: weights missing" in lines["iamxredz"]
    assert "| ps3336 | not described" in lines["ps3336"]
    assert "recipe pending" in text.splitlines()[-1]  # minivitex, not on the leaderboard
    assert all(team in text for team in peers.SYSTEMS)


def test_only_the_generated_part_of_the_doc_is_rewritten(peers, tmp_path, monkeypatch) -> None:
    doc = tmp_path / "PEERS.md"
    doc.write_text(f"# hand written\n\n{peers.START}\nold table\n{peers.END}\n\ntail stays\n")
    monkeypatch.setattr(peers, "recipe_table", lambda **kw: [
        RecipeRow("paper", "packaged", "effiminivlm", "efficientnet_b0", "bert", 224, 256, 27.706, 27.706,
                  6.811, 0.097, 1.1)])
    monkeypatch.setattr(sys, "argv", ["bench_peers.py", "--skip-runtime", "--doc", str(doc), "--plot",
                                      str(tmp_path / "plot.png")])
    peers.main()
    text = doc.read_text()
    assert text.startswith("# hand written\n") and text.endswith("tail stays\n") and "old table" not in text
    assert "| paper | effiminivlm | efficientnet_b0 / bert | 224px, 256 tok |" in text
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_runtime_table_reports_memory_above_the_import_baseline(peers) -> None:
    import argparse

    runs = [{"recipe": "paper", "e2e_sps": 10.04, "model_sps": 20.0, "peak_rss_mb": 900.0,
             "baseline_mb": 400.0, "load": 3.2, "threads": 2, "device": "cpu X", "samples": 24},
            {"recipe": "big", "error": "boom"}]
    text = peers.runtime_markdown(runs, argparse.Namespace(batch_size=8))
    assert "| paper | 10.0 | 20.0 | 900 | 500 | 3.2 |  |" in text and "| big | error: boom |" in text
    assert "400 MB before the model was built for paper" in text and "cpu X, 2 torch threads" in text
