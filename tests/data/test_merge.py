"""merge-prepared: per-category `prepare` runs merged into one dataset that reads back as their union."""

from __future__ import annotations

import json

import pytest

from effiminivlm.cli import main
from effiminivlm.data.prepare import prepare, read_prepared
from effiminivlm.data.synth import write_synth


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    parts = []
    for k in (0, 1):
        write_synth(root / f"cat{k}", n=40, seed=k, image_size=32, progress=False)
        meta = root / f"cat{k}" / "meta_Synthetic.jsonl"
        if k:  # synth ids repeat across seeds; a second category's ids are its own
            meta.write_text(meta.read_text().replace('"parent_asin": "', '"parent_asin": "B-'))
        prepare([meta], root / f"prep{k}", frac=1.0, min_per_category=0, seed=0)
        parts.append(root / f"prep{k}")
    return parts


def test_merge_is_the_union_of_the_parts_in_order(two_parts, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge-prepared", *map(str, two_parts), "--out", str(out)]) == 0
    assert "rows from 2 parts" in capsys.readouterr().out
    merged = read_prepared(out)
    a, b = (read_prepared(p) for p in two_parts)
    assert merged.column("parent_asin").to_pylist() == a.column("parent_asin").to_pylist() + b.column(
        "parent_asin").to_pylist()
    assert read_prepared(out, "train").num_rows == read_prepared(two_parts[0], "train").num_rows + \
        read_prepared(two_parts[1], "train").num_rows
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == a.num_rows + b.num_rows and len(summary["image_roots"]) == 2
    assert sorted(p.name for p in (out / "data").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]


def test_merge_refuses_an_id_in_two_parts(two_parts, tmp_path, capsys):
    assert main(["merge-prepared", str(two_parts[0]), str(two_parts[0]), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "is in more than one part" in err and str(two_parts[0]) in err
    assert not (tmp_path / "m").exists()
