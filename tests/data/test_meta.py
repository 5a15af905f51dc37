"""Readers of the official item metadata: formats, normalisation, image references, bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from effiminivlm.data.meta import InputLog, image_refs, normalize_record
from effiminivlm.data.readers import category_from_path, expand_inputs, iter_meta, read_meta_table
from effiminivlm.data.schema import ROW_SCHEMA
from effiminivlm.errors import DataError


def record(asin: str, **over: object) -> dict:
    """A valid record in the official meta schema (images as a list of structs)."""
    rec = {
        "main_category": "AMAZON FASHION", "title": f"Linen shirt {asin}", "average_rating": 4.3,
        "rating_number": 12, "features": ["100% linen", "Machine wash"],
        "description": ["A <b>light</b> shirt."],
        "price": 19.99, "store": "Acme", "categories": [], "videos": [], "bought_together": None,
        "details": {"Department": "Men", "Item model number": "X-1"},
        "images": [
            {"thumb": "https://x/t1.jpg", "large": "https://x/l1.jpg", "variant": "PT01", "hi_res": None},
            {"thumb": "https://x/t0.jpg", "large": "https://x/l0.jpg", "variant": "MAIN",
             "hi_res": "https://x/h0.jpg"},
        ],
        "parent_asin": asin,
    }
    rec.update(over)
    return rec


def write_jsonl(path: Path, lines: list) -> Path:
    """Objects are dumped; str items are written verbatim (for malformed lines)."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_parquet(path: Path, recs: list[dict], struct_of_lists: bool) -> Path:
    """Parquet like the HF `raw_meta_*` shards: images a struct of lists and details a JSON string."""
    rows = []
    for r in recs:
        r = dict(r)
        if struct_of_lists:
            keys = ("hi_res", "large", "thumb", "variant")
            r["images"] = {k: [im.get(k) for im in r["images"]] for k in keys}
            r["details"] = json.dumps(r["details"])
        rows.append(r)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_all(paths: list[Path], strict: bool = False) -> tuple[list[dict], InputLog]:
    log = InputLog(strict=strict)
    return list(iter_meta(paths, log)), log


def test_category_from_path() -> None:
    assert category_from_path(Path("meta_Amazon_Fashion.jsonl")) == "Amazon Fashion"
    assert category_from_path(Path("/d/meta_All_Beauty.jsonl.gz")) == "All Beauty"
    assert category_from_path(Path("raw_meta_Amazon_Fashion/full-00000-of-00001.parquet")) == "Amazon Fashion"
    assert category_from_path(Path("raw_meta_Books-00003-of-00012.parquet")) == "Books"
    assert category_from_path(Path("items/catalog.jsonl")) == ""


def test_normalisation_of_text_fields(tmp_path: Path) -> None:
    raw = record("A1", title="Shirt\tfor\r\nmen  <br/>",
                 features=["Soft<br>cotton", "see https://x.io/a?b=1", "fits sizes < 5 and > 2 &lt;i&gt;"],
                 description=["Line one\nline two", "<p>Visit www.shop.com now &amp; save</p>"],
                 details={"Size": "M\n", "Color": ["red", "blue"], "Dims": {"w": 1}})
    rec = normalize_record(raw, base_dir=tmp_path, file_category="X", source="f:1")
    assert rec["title"] == "Shirt for men"
    assert rec["features"] == "Soft cotton see fits sizes < 5 and > 2"
    assert rec["description"] == "Line one line two Visit now & save"
    assert rec["details"] == "Size: M; Color: red, blue; Dims: w: 1"
    assert (rec["category"], rec["category_from_file"]) == ("AMAZON FASHION", False)
    assert (rec["average_rating"], rec["rating_number"], rec["source"]) == (4.3, 12, "f:1")


def test_category_falls_back_to_file_name(tmp_path: Path) -> None:
    for empty in ("", None, "  "):
        rec = normalize_record(record("A1", main_category=empty), base_dir=tmp_path, file_category="Books",
                               source="f:1")
        assert (rec["category"], rec["category_from_file"]) == ("Books", True)


def test_image_refs_main_first_hi_res_else_large_relative_resolved(tmp_path: Path) -> None:
    images = [
        {"large": "images/b.jpg", "variant": "PT01", "hi_res": None},
        {"large": "https://x/l.jpg", "variant": "MAIN", "hi_res": "https://x/h.jpg"},
        {"large": (tmp_path / "c.jpg").as_uri(), "variant": "PT02"},
        {"large": str(tmp_path / "sub" / "d.jpg"), "variant": "PT03"},
        {"large": "s3://bucket/e.jpg", "variant": "PT04"},
        {"large": "https://x/h.jpg", "variant": "PT05"},  # same picture twice: kept once
        {"large": "file:///etc/passwd", "variant": "PT06"},  # outside the meta file's folder: refused
        {"large": "/etc/passwd", "variant": "PT07"},
        {"large": "../up.jpg", "variant": "PT08"},
        {"large": "~/me.jpg", "variant": "PT09"},
    ]
    log = InputLog()
    refs = image_refs(images, tmp_path, log)
    root = tmp_path.resolve()
    assert refs == ["https://x/h.jpg", *(str(root / p) for p in ("images/b.jpg", "c.jpg", "sub/d.jpg"))]
    assert log.unsupported_image_refs == 1 and log.refused_image_refs == {"outside_images_root": 4}
    as_struct = {k: [im.get(k) for im in images] for k in ("hi_res", "large", "thumb", "variant")}
    assert image_refs(as_struct, tmp_path) == refs
    assert image_refs(None, tmp_path) == [] and image_refs([], tmp_path) == []


def test_all_formats_give_the_same_records(tmp_path: Path) -> None:
    recs = [record(f"A{i}", main_category="" if i == 2 else "AMAZON FASHION",
                   images=[{"large": f"images/{i}.jpg", "variant": "MAIN"}]) for i in range(4)]
    (tmp_path / "j").mkdir()
    files = [write_jsonl(tmp_path / "j" / "meta_Amazon_Fashion.jsonl", recs),
             write_jsonl(tmp_path / "meta_Amazon_Fashion.jsonl.gz", recs),
             write_parquet(tmp_path / "raw_meta_Amazon_Fashion" / "full-00000-of-00001.parquet", recs, True),
             write_parquet(tmp_path / "p" / "meta_Amazon_Fashion.parquet", recs, False)]
    outs = []
    for f in files:
        got, log = read_all([f])
        assert log.bad == {} and log.rows_read == 4
        assert [g["images"] for g in got] == [[str(f.parent / f"images/{i}.jpg")] for i in range(4)]
        assert got[2]["category"] == "Amazon Fashion" and got[0]["category"] == "AMAZON FASHION"
        assert got[1]["source"] == f"{f}:2"
        outs.append([{k: v for k, v in g.items() if k not in ("images", "source")} for g in got])
    assert outs[0] == outs[1] == outs[2] == outs[3]
    assert outs[0][0]["details"] == "Department: Men; Item model number: X-1"
    assert [log["format"] for log in read_all(files)[1].files] == ["jsonl", "jsonl.gz", "parquet", "parquet"]


BAD_LINES = [
    ('{"parent_asin": "B1", "title": ', "invalid_json"),
    ("[1, 2, 3]", "not_object"),
    (record("B3", parent_asin=None), "missing_field"),
    ({k: v for k, v in record("B4").items() if k != "average_rating"}, "missing_field"),
    (record("B5", title=42), "bad_type"),
    (record("B6", average_rating="4.5"), "bad_type"),
    (record("B7", features="not a list"), "bad_type"),
    (record("B8", average_rating=6.0), "bad_rating"),
    (json.dumps(record("B9")).replace('"average_rating": 4.3', '"average_rating": NaN'), "bad_rating"),
    (record("B10", rating_number=-3), "bad_rating"),
    (record("B11", images="https://x/a.jpg"), "bad_type"),
]


def test_bad_rows_are_counted_with_file_and_line(tmp_path: Path) -> None:
    lines = [record("G1"), *(line for line, _ in BAD_LINES), "", record("G2")]
    path = write_jsonl(tmp_path / "meta_X.jsonl", lines)
    got, log = read_all([path])
    assert [g["parent_asin"] for g in got] == ["G1", "G2"]
    expected: dict[str, int] = {}
    for _, kind in BAD_LINES:
        expected[kind] = expected.get(kind, 0) + 1
    assert log.bad == expected
    assert log.rows_read == 2 + len(BAD_LINES)  # the blank line is not a row
    assert log.examples["invalid_json"][0].startswith(f"{path}:2: invalid JSON")
    assert log.examples["not_object"] == [f"{path}:3: expected a JSON object, got list"]
    assert any(e.startswith(f"{path}:10: average_rating nan") for e in log.examples["bad_rating"])
    assert log.files[0]["bad_rows"] == len(BAD_LINES)


@pytest.mark.parametrize(("line", "kind"), BAD_LINES)
def test_strict_raises_naming_file_and_line(tmp_path: Path, line: object, kind: str) -> None:
    path = write_jsonl(tmp_path / "meta_X.jsonl", [record("G1"), line])
    with pytest.raises(DataError, match=rf"meta_X\.jsonl:2: .*\({kind};"):
        read_all([path], strict=True)


def test_bad_files_are_counted_or_raise_in_strict_mode(tmp_path: Path) -> None:
    empty = tmp_path / "meta_Empty.jsonl"
    empty.write_text("\n  \n")
    not_json = tmp_path / "meta_Csv.jsonl"
    not_json.write_text("parent_asin,title\nB1,shirt\n")
    not_parquet = tmp_path / "raw_meta_X.parquet"
    not_parquet.write_text('{"parent_asin": "B1"}\n')
    empty_gz = write_jsonl(tmp_path / "meta_E.jsonl.gz", [])
    good_gz = write_jsonl(tmp_path / "meta_T.jsonl.gz", [record(f"T{i}") for i in range(3000)])
    truncated = tmp_path / "meta_Trunc.jsonl.gz"
    truncated.write_bytes(good_gz.read_bytes()[: good_gz.stat().st_size // 2])
    got, log = read_all([empty, not_json, not_parquet, empty_gz, truncated])
    assert log.bad == {"empty_file": 2, "not_json": 1, "not_parquet": 1, "unreadable_file": 1}
    assert 0 < len(got) < 3000 and log.rows_read == len(got)
    assert log.examples["unreadable_file"][0].startswith(f"{truncated}:{len(got) + 1}: stopped reading after")
    for path in (empty, not_json, not_parquet, truncated):
        with pytest.raises(DataError, match=str(path.name)):
            read_all([path], strict=True)


def test_expand_inputs(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "meta_A.jsonl", [record("A1")])
    shards = tmp_path / "raw_meta_B"
    s1 = write_parquet(shards / "full-00000-of-00002.parquet", [record("B1")], True)
    s2 = write_parquet(shards / "full-00001-of-00002.parquet", [record("B2")], True)
    (shards / "README.md").write_text("not data")
    assert expand_inputs([a, str(tmp_path / "raw_meta_*"), str(a)]) == [a, s1, s2]
    with pytest.raises(DataError, match="input not found: .*meta_Missing.jsonl"):
        expand_inputs([tmp_path / "meta_Missing.jsonl"])
    with pytest.raises(DataError, match="glob matched no files"):
        expand_inputs([str(tmp_path / "nothing_*.jsonl")])
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="folder has no"):
        expand_inputs([tmp_path / "emptydir"])
    with pytest.raises(DataError, match="no input files"):
        expand_inputs([])


def test_read_meta_table_for_scoring(tmp_path: Path) -> None:
    unrated = {k: v for k, v in record("U1").items() if k not in ("average_rating", "rating_number")}
    path = write_jsonl(tmp_path / "meta_X.jsonl", [record("A1"), unrated, record("A1", title="again"),
                                                   record("B1", average_rating=9.0)])
    table, log = read_meta_table([path], require_rating=False)
    assert table.schema.equals(ROW_SCHEMA)
    rows = table.to_pylist()
    assert [r["parent_asin"] for r in rows] == ["A1", "U1"] and rows[0]["title"] == "Linen shirt A1"
    assert rows[1]["average_rating"] is None and rows[1]["rating_number"] is None
    assert log.bad == {"duplicate_parent_asin": 1, "bad_rating": 1}
    assert log.as_dict()["examples"]["duplicate_parent_asin"] == [f"{path}:3: parent_asin A1 read before"]
    table, log = read_meta_table([path])
    assert table.column("parent_asin").to_pylist() == ["A1"] and log.bad["missing_field"] == 1
