"""Input-kind detection (`data.inputs.read_inputs`): prepared folder, LoViF input.csv, meta files."""

from __future__ import annotations

import pytest

from effiminivlm.data.inputs import read_inputs
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import DataError


def test_prepared_folder_with_and_without_split(prepared) -> None:
    every = read_inputs([str(prepared)])
    assert every.kind == "prepared" and every.table.num_rows == read_prepared(prepared).num_rows == 160
    test = read_inputs([str(prepared)], split="test")
    assert test.table.num_rows == read_prepared(prepared, "test").num_rows < 160
    assert test.skipped == {}


def test_lovif_input_csv(synth_catalog) -> None:
    src = read_inputs([str(synth_catalog / "lovif" / "input.csv")])
    assert src.kind == "lovif" and src.table.num_rows > 0
    assert "parent_asin" in src.table.column_names and "images" in src.table.column_names


def test_meta_files_keep_unrated_rows_and_count_bad_lines(synth_catalog, tmp_path) -> None:
    meta = tmp_path / "meta_Broken.jsonl"
    lines = (synth_catalog / "meta_Synthetic.jsonl").read_text().splitlines()[:5]
    meta.write_text("\n".join([*lines, "{not json"]) + "\n")
    src = read_inputs([str(meta)])
    assert src.kind == "meta" and src.table.num_rows == 5
    assert sum(v for v in src.skipped.values() if isinstance(v, int)) >= 1
    with pytest.raises(DataError, match=r"meta_Broken.jsonl:6"):
        read_inputs([str(meta)], strict=True)


def test_bad_requests_are_one_line_errors(synth_catalog) -> None:
    with pytest.raises(DataError, match="nothing to predict"):
        read_inputs([])
    with pytest.raises(DataError, match="--split applies to a prepared dataset folder only"):
        read_inputs([str(synth_catalog / "lovif" / "input.csv")], split="test")
