"""The LoViF 2026 test layout: input.csv + images folder -> prepared schema; paths that escape are refused."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from PIL import Image

from effiminivlm.data.lovif import INPUT_COLUMNS, read_lovif, read_truth
from effiminivlm.data.prepare import SCHEMA
from effiminivlm.errors import DataError
from tests.data.test_readers import deadline


def write_csv(path: Path, rows: list[list[str]], header: list[str] | tuple[str, ...] = INPUT_COLUMNS) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture()
def layout(tmp_path: Path) -> Path:
    """test/input.csv + test/images/ with a sub-folder, an in-folder symlink and a symlink out of it."""
    root = tmp_path / "test"
    (root / "images" / "sub").mkdir(parents=True)
    for rel in ("a.jpg", "sub/b.png"):
        Image.new("RGB", (16, 16), (9, 9, 9)).save(root / "images" / rel)
    Image.new("RGB", (16, 16)).save(tmp_path / "secret.png")  # outside the images folder
    os.symlink(tmp_path / "secret.png", root / "images" / "link.png")
    os.symlink("a.jpg", root / "images" / "inlink.jpg")  # relative: stays inside when the folder moves
    write_csv(root / "input.csv", [
        ["P1", "AMAZON FASHION", "Linen <b>shirt</b>", '["100% linen", "Machine wash"]', "A light shirt.",
         "a.jpg; sub/b.png"],
        ["P2", "Home", "Mug", "['Stoneware', 'Dishwasher safe']", "['Holds 12 oz.']",
         f"../secret.png;{tmp_path / 'secret.png'};link.png;C:\\secret.png;sub/../../secret.png"],
        ["P3", "Home", "Lamp", "plain features", "[not a list", "nope.jpg; ;inlink.jpg"],
        ["P4", "Home", "Rug", "", "", ""],
    ])
    return root


def test_reads_the_layout_into_the_prepared_schema(layout: Path) -> None:
    table, stats = read_lovif(layout / "input.csv")
    assert table.schema.equals(SCHEMA)
    rows = {r["parent_asin"]: r for r in table.to_pylist()}
    assert list(rows) == ["P1", "P2", "P3", "P4"]
    images = layout.resolve() / "images"
    assert rows["P1"]["images"] == [str(images / "a.jpg"), str(images / "sub" / "b.png")]
    assert rows["P1"]["title"] == "Linen shirt" and rows["P1"]["features"] == "100% linen Machine wash"
    assert rows["P2"]["features"] == "Stoneware Dishwasher safe"
    assert rows["P2"]["description"] == "Holds 12 oz."
    assert rows["P3"]["description"] == "[not a list"  # not a list literal: kept as text
    assert rows["P3"]["images"] == [str(images / "a.jpg")]  # a symlink inside the folder is fine
    assert rows["P1"]["split"] == "test" and rows["P1"]["average_rating"] is None
    assert rows["P2"]["source"] == "input.csv:3"
    assert (stats.rows, stats.images_found, stats.images_missing, stats.images_refused,
            stats.rows_without_image) == (4, 3, 1, 5, 2)
    assert "5 refused (outside the images folder)" in str(stats)


def test_every_escape_is_refused_one_by_one(layout: Path, tmp_path: Path) -> None:
    escapes = ("../secret.png", str(tmp_path / "secret.png"), "link.png", "sub/../../secret.png", "a\x00.jpg")
    for rel in escapes:
        write_csv(layout / "one.csv", [["X", "Home", "t", "f", "d", rel]])
        table, stats = read_lovif(layout / "one.csv")
        assert stats.images_refused == 1 and table.column("images").to_pylist() == [[]], rel


def test_images_dir_option(layout: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    (layout / "images").rename(moved)
    _, default = read_lovif(layout / "input.csv")
    # a.jpg, sub/b.png, link.png (no longer a link), nope.jpg, inlink.jpg are missing; 4 still escape
    assert (default.images_found, default.images_missing, default.images_refused) == (0, 5, 4)
    table, stats = read_lovif(layout / "input.csv", images_dir=moved)
    assert stats.images_found == 3 and table.column("images")[0].as_py()[0] == str(moved.resolve() / "a.jpg")


def test_missing_columns_and_files_are_clear_errors(tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "input.csv", [["P1", "Home", "t", "f", "d"]], INPUT_COLUMNS[:-1])
    with pytest.raises(DataError, match=r"input.csv: missing column\(s\) image_paths; found: parent_asin"):
        read_lovif(bad)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: empty file"):
        read_lovif(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_lovif(tmp_path / "nope.csv")
    (tmp_path / "latin1.csv").write_bytes(",".join(INPUT_COLUMNS).encode()
                                          + b"\nP0,Home,ok,f,d,\nP1,Home,caf\xe9,f,d,\n")
    with pytest.raises(DataError, match="latin1.csv:3: not UTF-8"):
        read_lovif(tmp_path / "latin1.csv")
    surrogate = ",".join(INPUT_COLUMNS).encode() + b"\nP1,Home,a \xed\xa0\x80 b,f,d,\n"  # a lone surrogate
    (tmp_path / "sur.csv").write_bytes(surrogate)
    with pytest.raises(DataError, match="sur.csv:2: not UTF-8"):
        read_lovif(tmp_path / "sur.csv")
    with pytest.raises(DataError, match="is a folder, expected a regular file"):
        read_lovif(tmp_path)
    os.mkfifo(tmp_path / "pipe.csv")
    with deadline(10), pytest.raises(DataError, match=r"pipe.csv: is a pipe \(FIFO\), expected a regular"):
        read_lovif(tmp_path / "pipe.csv")  # opening a FIFO without a writer used to block forever


def test_unreadable_list_cells_are_counted_kept_as_text_or_strict(tmp_path: Path) -> None:
    deep = "[" * 5000 + "]" * 5000
    digits = "[" + "1" * 5000 + "]"
    py_digits = "['a', " + "2" * 5000 + "]"  # not JSON (quotes): the Python-literal fallback gives up too
    path = write_csv(tmp_path / "input.csv", [
        ["P1", "Home", "Mug", deep, "fine", ""],
        ["P2", "Home", "Mug", '["ok", "list"]', digits, ""],
        ["P3", "Home", py_digits, "[Note] plain text", "[not a list", ""],
    ])
    table, stats = read_lovif(path)
    rows = table.to_pylist()
    assert [r["parent_asin"] for r in rows] == ["P1", "P2", "P3"]  # every item is still scored
    assert rows[0]["features"] == deep and rows[1]["features"] == "ok list"
    assert rows[1]["description"] == digits
    assert rows[2]["features"] == "[Note] plain text"  # text that only looks like a list is not bad input
    assert stats.bad_cells == 3
    assert stats.bad_cell_examples[0] == f"{path}:2: features: a list literal nested too deep to read"
    assert stats.bad_cell_examples[1].startswith(f"{path}:3: description: a list literal that cannot be read")
    assert stats.bad_cell_examples[2].startswith(f"{path}:4: title: ")
    assert "3 unreadable list cells kept as text" in str(stats)
    with pytest.raises(DataError, match=r"input.csv:2: features: a list literal nested too deep") as info:
        read_lovif(path, strict=True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("rows", "message"), [
    ([["", "Home", "t", "f", "d", ""]], r"input.csv:2: empty parent_asin"),
    ([["P1", "Home", "t", "f", "d", ""], ["P1", "Home", "t", "f", "d", ""]],
     r"input.csv:3: parent_asin 'P1' already on line 2"),
])
def test_ids_must_be_present_and_unique(tmp_path: Path, rows: list[list[str]], message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_lovif(write_csv(tmp_path / "input.csv", rows))


@pytest.mark.parametrize("id_col", ["parent_asin", "item_id"])
def test_read_truth(tmp_path: Path, id_col: str) -> None:
    path = write_csv(tmp_path / "truth.csv", [["A", "4.5"], ["B", " 1 "], ["C", "5.0"]],
                     [id_col, "average_rating"])
    assert read_truth(path) == {"A": 4.5, "B": 1.0, "C": 5.0}


@pytest.mark.parametrize(("header", "rows", "message"), [
    (["id", "average_rating"], [["A", "4"]], r"missing column\(s\) parent_asin or item_id"),
    (["parent_asin", "rating"], [["A", "4"]], r"missing column\(s\) average_rating"),
    (["parent_asin", "average_rating"], [], "truth.csv: no rows"),
    (["parent_asin", "average_rating"], [["A", "4"], ["A", "3"]], r"csv:3: parent_asin 'A' appears twice"),
    (["parent_asin", "average_rating"], [["A", "four"]], r"csv:2: average_rating 'four' is not a decimal "
     r"number"),
    (["parent_asin", "average_rating"], [["A", "0.5"]], r"truth.csv:2: average_rating '0.5' is outside"),
    (["parent_asin", "average_rating"], [["A", "nan"]], r"truth.csv:2: average_rating 'nan' is not "
     r"a decimal number"),
    (["item_id", "average_rating"], [["", "4"]], r"truth.csv:2: empty item_id"),
])
def test_read_truth_errors(tmp_path: Path, header: list[str], rows: list[list[str]], message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_truth(write_csv(tmp_path / "truth.csv", rows, header))


def test_truth_ratings_are_parsed_strictly(tmp_path):
    """float("0_1") is 1.0 in Python: a truth cell with an underscore must be an error, not a rating."""
    from effiminivlm.data.lovif import read_truth

    path = tmp_path / "truth.csv"
    path.write_text("parent_asin,average_rating\nA,4.5\nB,0_1\n")
    with pytest.raises(DataError, match=r"truth.csv:3: average_rating '0_1' is not a decimal number"):
        read_truth(path)
    path.write_text("parent_asin,average_rating\nA,4.5\nB,1e0\n")
    assert read_truth(path) == {"A": 4.5, "B": 1.0}
