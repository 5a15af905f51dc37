"""`prepare` on catalogs like the real titles sample: rows without rating_number, rows with only a title."""

from __future__ import annotations

from pathlib import Path

import pytest

from effiminivlm.cli import main
from effiminivlm.data.prepare import prepare, read_prepared
from effiminivlm.errors import DataError
from tests.data.test_meta import record, write_jsonl

ALL = {"frac": 1.0, "min_per_category": 0}
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def titles_only(asin: str, rating: float) -> dict:
    """A record like the titles sample's: a title and a rating, no count, features, description or image."""
    rec = record(asin, average_rating=rating, features=[], description=[], images=[],
                 title=f"Women's linen summer dress, short sleeves, {asin}")
    del rec["rating_number"]
    return rec


def catalog(tmp_path: Path) -> Path:
    rows = [record(f"F{i:03d}", average_rating=1 + i % 5) for i in range(20)]
    rows += [titles_only(f"T{i:03d}", 1 + (i * 7) % 5) for i in range(40)]
    rows.append({**titles_only("NOTITLE", 4.0), "title": ""})
    return write_jsonl(tmp_path / "meta_Amazon_Fashion.jsonl", rows)


def test_default_counts_rows_without_rating_number_as_bad_and_filters_titles_only(tmp_path: Path) -> None:
    s = prepare([catalog(tmp_path)], tmp_path / "out", **ALL)
    assert s["bad_input"]["by_kind"] == {"missing_field": 41}
    assert "missing rating_number" in s["bad_input"]["examples"]["missing_field"][0]
    assert s["kept"] == 20 and read_prepared(tmp_path / "out")["rating_number"].null_count == 0


def test_keep_missing_rating_number_keeps_them_null_and_counts_them_per_split(tmp_path: Path) -> None:
    s = prepare([catalog(tmp_path)], tmp_path / "out", keep_missing_rating_number=True, require_image=False,
                require_fields=False, min_text_chars=0, **ALL)
    t = read_prepared(tmp_path / "out")
    assert s["bad_input"]["total"] == 0 and s["kept"] == 61 == t.num_rows
    assert t["rating_number"].null_count == 41
    assert sum(v["missing_rating_number"] for v in s["per_split"].values()) == 41
    by_id = dict(zip(t["parent_asin"].to_pylist(), t["rating_number"].to_pylist(), strict=True))
    assert by_id["T000"] is None and by_id["F000"] == 12


def test_allow_titles_only_needs_a_title_but_no_features_description_or_image(tmp_path: Path) -> None:
    paper = prepare([catalog(tmp_path)], tmp_path / "paper", keep_missing_rating_number=True, **ALL)
    assert paper["kept"] == 20 and paper["dropped"]["require_fields"] == 41
    s = prepare([catalog(tmp_path)], tmp_path / "titles", keep_missing_rating_number=True,
                allow_titles_only=True, **ALL)
    assert s["kept"] == 60 and s["dropped"] == {"require_fields": 1, "min_text_chars": 0, "require_image": 0,
                                                "duplicate_parent_asin": 0}
    assert "empty title" in s["dropped_examples"]["require_fields"][0]
    assert s["options"]["allow_titles_only"] and s["options"]["keep_missing_rating_number"]


def test_cli_flags(tmp_path: Path) -> None:
    src = catalog(tmp_path)
    assert main(["prepare", str(src), "--out", str(tmp_path / "o"), "--frac", "1", "--min-per-category", "0",
                 "--keep-missing-rating-number", "--allow-titles-only"]) == 0
    assert read_prepared(tmp_path / "o").num_rows == 60


def test_strict_names_the_line_without_the_flag_and_passes_with_it(tmp_path: Path) -> None:
    src = catalog(tmp_path)
    with pytest.raises(DataError, match=r"meta_Amazon_Fashion.jsonl:21: missing rating_number"):
        prepare([src], tmp_path / "a", strict=True, allow_titles_only=True, **ALL)
    s = prepare([src], tmp_path / "b", strict=True, allow_titles_only=True, keep_missing_rating_number=True,
                **ALL)
    assert s["kept"] == 60


@pytest.mark.skipif(not (SHARED / "amazon2023-fashion-titles").is_dir(), reason="shared real data absent")
def test_the_5773_real_items(tmp_path: Path) -> None:
    files = [SHARED / d / "meta_Amazon_Fashion.jsonl" for d in ("amazon2023-fashion-dev",
                                                              "amazon2023-fashion-titles")]
    s = prepare(files, tmp_path / "real", keep_missing_rating_number=True, allow_titles_only=True,
                min_text_chars=0, **ALL)
    assert s["kept"] == 5773 and s["bad_input"]["total"] == 0
    assert sum(v["missing_rating_number"] for v in s["per_split"].values()) == 4771
