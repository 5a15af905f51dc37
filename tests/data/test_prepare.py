"""`prepare`: filters, sampling, stratified split, output contract, safety of --out, CLI, real dev data."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from effiminivlm.cli import main
from effiminivlm.data.prepare import SCHEMA, prepare, read_prepared, sample_size, split_counts
from effiminivlm.errors import DataError, EffiMiniVLMError
from tests.data.test_meta import record, write_jsonl, write_parquet

DEV = Path(__file__).resolve().parents[3] / "shared/data/amazon2023-fashion-dev/meta_Amazon_Fashion.jsonl"
ALL = {"frac": 1.0, "min_per_category": 0}


def items(prefix: str, n: int, ratings: list[float] | None = None, **over: object) -> list[dict]:
    ratings = ratings or [4.0]
    return [record(f"{prefix}{i:05d}", average_rating=ratings[i % len(ratings)], **over) for i in range(n)]


def assignment(out: Path) -> dict[str, str]:
    t = read_prepared(out)
    return dict(zip(t["parent_asin"].to_pylist(), t["split"].to_pylist(), strict=True))


@pytest.mark.parametrize(("n", "frac", "minimum", "expected"), [
    (100, 0.2, 10, 20), (100, 0.2, 30, 30), (20, 0.2, 30, 20), (0, 0.2, 10, 0), (7, 1.0, 0, 7),
    (1_000_000, 0.2, 10_000, 200_000), (30_000, 0.2, 10_000, 10_000), (15, 0.29, 0, 4), (10, 0.3, 0, 3),
])
def test_sample_size_formula(n: int, frac: float, minimum: int, expected: int) -> None:
    assert sample_size(n, frac, minimum) == expected


@pytest.mark.parametrize("m", [0, 1, 2, 5, 9, 10, 11, 51, 99, 1234])
def test_split_counts(m: int) -> None:
    tr, va, te = split_counts(m)
    assert tr + va + te == m and tr >= va >= te >= 0
    assert abs(tr - 0.8 * m) < 1 and abs(va - 0.1 * m) < 1 and abs(te - 0.1 * m) < 1


def test_end_to_end_contract(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    a = write_jsonl(tmp_path / "a" / "meta_Amazon_Fashion.jsonl", [
        *items("A", 40, main_category="", images=[{"large": "images/x.jpg", "variant": "MAIN"}]),
        record("DUP", title="first copy"),
    ])
    b = write_parquet(tmp_path / "raw_meta_Books" / "full-00000-of-00001.parquet",
                      [*items("B", 30, main_category="Books"), record("DUP", title="second copy")], True)
    summary = prepare([a, b], tmp_path / "out", **ALL)
    t = read_prepared(tmp_path / "out")
    assert t.schema.equals(SCHEMA)
    assert summary["rows_read"] == 72 and summary["kept"] == t.num_rows == 71
    assert summary["dropped"]["duplicate_parent_asin"] == 1
    assert summary["dropped_examples"]["duplicate_parent_asin"] == [
        f"{b}:31: parent_asin DUP already read at {a}:41"]
    rows = {r["parent_asin"]: r for r in t.to_pylist()}
    assert rows["DUP"]["title"] == "first copy"  # the first occurrence wins
    assert rows["A00000"]["category"] == "Amazon Fashion" and rows["B00000"]["category"] == "Books"
    assert rows["A00003"]["images"] == [str(tmp_path / "a" / "images" / "x.jpg")]
    assert rows["A00003"]["source"] == f"{a}:4"
    assert summary["category_from_file_name"] == 40
    assert len(rows) == t.num_rows  # no parent_asin twice, hence none in two splits
    assert sum(read_prepared(tmp_path / "out", s).num_rows for s in ("train", "val", "test")) == 71
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind


def test_filters_each_switch_and_accounting(tmp_path: Path) -> None:
    lines = [
        *items("OK", 10),
        record("NOTITLE", title=""), record("NODESC", description=[]), record("NOFEAT", features=None),
        # 3 + 3 + 13 = 19 characters of text
        record("SHORT", title="Hat", features=["Red"], description=["Nice hat here"]),
        record("NOIMG", images=[]), record("NOIMG2", images=None),
        '{"broken', record("BADR", average_rating=0.5),
    ]
    path = write_jsonl(tmp_path / "meta_X.jsonl", lines)
    s = prepare([path], tmp_path / "o1", **ALL)
    assert s["dropped"] == {"require_fields": 3, "min_text_chars": 1, "require_image": 2,
                            "duplicate_parent_asin": 0}
    assert s["bad_rows"] == 2 and s["bad_input"]["by_kind"] == {"invalid_json": 1, "bad_rating": 1}
    assert s["bad_input"]["examples"]["bad_rating"] == [f"{path}:18: average_rating 0.5 is not in [1, 5]"]
    assert s["dropped_examples"]["require_fields"][0] == f"{path}:11: empty title"
    assert s["rows_read"] == s["bad_rows"] + sum(s["dropped"].values()) + s["not_sampled"] + s["kept"]
    assert s["kept"] == 10
    s = prepare([path], tmp_path / "o2", require_fields=False, min_text_chars=0, require_image=False, **ALL)
    assert s["dropped"] == dict.fromkeys(s["dropped"], 0) and s["kept"] == 16
    s = prepare([path], tmp_path / "o3", min_text_chars=19, **ALL)
    assert s["dropped"]["min_text_chars"] == 1
    s = prepare([path], tmp_path / "o4", min_text_chars=18, **ALL)  # "at most 18 chars" does not catch 19
    assert s["dropped"]["min_text_chars"] == 0


def test_strict_stops_with_file_and_line_and_leaves_nothing(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "meta_X.jsonl", [*items("A", 3), record("B", rating_number="many")])
    with pytest.raises(DataError, match=r"meta_X\.jsonl:4: rating_number must be an integer"):
        prepare([path], tmp_path / "out", strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta_X.jsonl"]


def test_sampling_per_category(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "meta_X.jsonl", [*items("A", 100, main_category="Cat A"),
                                                   *items("B", 30, main_category="Cat B")])
    s = prepare([path], tmp_path / "o1", frac=0.2, min_per_category=25)
    assert (s["per_category"]["Cat A"]["kept"], s["per_category"]["Cat B"]["kept"]) == (25, 25)
    s = prepare([path], tmp_path / "o2", frac=0.2, min_per_category=0)
    assert (s["per_category"]["Cat A"]["kept"], s["per_category"]["Cat B"]["kept"]) == (20, 6)
    assert s["not_sampled"] == 104
    s = prepare([path], tmp_path / "o3", frac=0.5, min_per_category=200)
    assert s["kept"] == 130


def test_split_is_deterministic_order_independent_and_seeded(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "meta_A.jsonl", items("A", 300, [3.0, 4.0, 4.5]))
    b = write_jsonl(tmp_path / "meta_B.jsonl.gz", items("B", 300, [3.0, 4.0, 5.0]))
    prepare([a, b], tmp_path / "ab", frac=0.5, min_per_category=0)
    prepare([a, b], tmp_path / "ab2", frac=0.5, min_per_category=0)
    prepare([b, a], tmp_path / "ba", frac=0.5, min_per_category=0)
    prepare([a, b], tmp_path / "seed1", frac=0.5, min_per_category=0, seed=1)
    assert assignment(tmp_path / "ab") == assignment(tmp_path / "ab2") == assignment(tmp_path / "ba")
    assert len(assignment(tmp_path / "ab")) == 300
    assert assignment(tmp_path / "seed1") != assignment(tmp_path / "ab")
    assert pq.read_table(tmp_path / "ab" / "data.parquet").equals(
        pq.read_table(tmp_path / "ab2" / "data.parquet"))


def test_stratified_proportions_and_rare_bucket(tmp_path: Path) -> None:
    common = [(3.5, 120), (4.2, 200), (5.0, 61)]
    rare = [(1.0, 7), (2.3, 50), (2.7, 3)]  # <= 50 items each: pooled into one stratum of 60
    recs = [record(f"R{r}-{i}", average_rating=r) for r, n in common + rare for i in range(n)]
    s = prepare([write_jsonl(tmp_path / "meta_X.jsonl", recs)], tmp_path / "out", **ALL)
    t = read_prepared(tmp_path / "out").to_pylist()
    per = Counter((round(r["average_rating"], 1), r["split"]) for r in t)
    for rating, n in common:
        assert tuple(per[(rating, sp)] for sp in ("train", "val", "test")) == split_counts(n)
    pooled = Counter(r["split"] for r in t if round(r["average_rating"], 1) in {x for x, _ in rare})
    assert (pooled["train"], pooled["val"], pooled["test"]) == split_counts(60)
    assert s["strata"] == {"count": 4, "rare_bucket_items": 60, "rare_ratings": [1.0, 2.3, 2.7]}
    assert s["per_split"]["val"]["rows"] == 12 + 20 + 6 + 6
    assert sum(s["per_split"]["train"]["rating_histogram"].values()) == s["per_split"]["train"]["rows"]


def test_out_folder_safety(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "meta_X.jsonl", items("A", 20))
    out = tmp_path / "out"
    prepare([path], out, **ALL)
    with pytest.raises(DataError, match="not empty; pass --overwrite"):
        prepare([path], out, **ALL)
    prepare([write_jsonl(tmp_path / "meta_Y.jsonl", items("Y", 5))], out, overwrite=True, **ALL)
    assert read_prepared(out).num_rows == 5
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare([path], precious, overwrite=True, **ALL)
    assert (precious / "thesis.tex").exists()
    with pytest.raises(EffiMiniVLMError, match="--frac must be in"):
        prepare([path], tmp_path / "o", frac=0.0)
    with pytest.raises(DataError, match="no summary.json"):
        read_prepared(precious)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        read_prepared(out, "dev")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [*items("A", 30), "not json at all", record("B", title=None)]
    path = write_jsonl(tmp_path / "meta_X.jsonl", lines)
    out = tmp_path / "out"
    code = main(["prepare", str(tmp_path / "meta_*.jsonl"), "--out", str(out), "--frac", "1.0",
                 "--min-per-category", "0", "--no-require-fields", "--seed", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote 31 rows" in captured.out and "invalid_json" in captured.out and "per split" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["seed"] == 3 and summary["options"]["require_fields"] is False
    assert main(["prepare", str(path), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prepare", str(path), "--out", str(tmp_path / "o2"), "--strict"]) == 2
    assert re.search(r"error: .*meta_X\.jsonl:31: invalid JSON", capsys.readouterr().err)
    assert main(["prepare", str(tmp_path / "nope_*.jsonl"), "--out", str(tmp_path / "o3")]) == 2
    assert "glob matched no files" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o3")]) == 2
    assert "input not found" in capsys.readouterr().err


@pytest.mark.skipif(not DEV.exists(), reason=f"real dev data not found at {DEV}")
def test_real_amazon_fashion_dev_data(tmp_path: Path) -> None:
    raw = [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]
    s = prepare([DEV], tmp_path / "out", **ALL)
    assert s["rows_read"] == len(raw) == 1002 and s["bad_rows"] == 0 and s["bad_files"] == 0

    def empty(value: object) -> bool:
        return not value or (isinstance(value, list) and not "".join(value).strip())

    essential = ("main_category", "title", "features", "description")
    expected_missing = sum(1 for r in raw if any(empty(r[k]) for k in essential))
    assert s["dropped"]["require_fields"] == expected_missing
    assert s["kept"] == len(raw) - sum(s["dropped"].values())
    t = read_prepared(tmp_path / "out")
    assert t.num_rows == s["kept"] > 250
    tag, url = re.compile(r"</?[A-Za-z][^<>]*>"), re.compile(r"https?://|www\.", re.I)
    for row in t.to_pylist():
        for field in ("title", "features", "description", "details"):
            text = row[field]
            assert not tag.search(text) and not url.search(text), (field, text[:200])
            assert "\n" not in text and "\t" not in text and "\r" not in text and "  " not in text
        assert row["images"] and all(ref.startswith("https://") for ref in row["images"])
        assert 1.0 <= row["average_rating"] <= 5.0 and row["category"] == "AMAZON FASHION"
    by_asin = {r["parent_asin"]: r for r in raw}
    first = t.to_pylist()[0]
    main_image = next(im for im in by_asin[first["parent_asin"]]["images"] if im["variant"] == "MAIN")
    assert first["images"][0] == (main_image["hi_res"] or main_image["large"])
    for split, ratio in (("train", 0.8), ("val", 0.1), ("test", 0.1)):  # rounding: < 1 item per stratum
        assert abs(s["per_split"][split]["rows"] - ratio * s["kept"]) < s["strata"]["count"]


@pytest.mark.skipif(not DEV.exists(), reason=f"real dev data not found at {DEV}")
def test_real_dev_data_as_hf_parquet_shard_gives_the_same_rows(tmp_path: Path) -> None:
    raw = [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]
    for r in raw:
        r.pop("videos"), r.pop("bought_together")  # all-null / empty columns need no schema here
    shard = write_parquet(tmp_path / "raw_meta_Amazon_Fashion" / "full-00000-of-00001.parquet", raw, True)
    prepare([DEV], tmp_path / "jsonl", **ALL)
    prepare([shard], tmp_path / "parquet", **ALL)
    a, b = read_prepared(tmp_path / "jsonl"), read_prepared(tmp_path / "parquet")
    assert a.drop_columns(["source", "listing"]).equals(b.drop_columns(["source", "listing"]))
    assert a.num_rows > 250
    for x, y in zip(a.column("listing").to_pylist(), b.column("listing").to_pylist(), strict=True):
        x, y = json.loads(x), json.loads(y)  # the shard has no `videos` column (popped above)
        assert {**x, "n_videos": 0} == y


def test_every_input_unreadable_is_an_error_not_an_empty_dataset(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "meta_Empty.jsonl"
    empty.write_text("")
    garbage = write_jsonl(tmp_path / "meta_Bad.jsonl", ['{"parent_asin": ', "[1]"])
    with pytest.raises(DataError, match=r"no valid row in 2 input file\(s\) \(1 empty_file, 1 invalid_json, "
                                        r"1 not_object\); e\.g\. .*meta_Empty\.jsonl: empty file"):
        prepare([empty, garbage], tmp_path / "out", **ALL)
    assert main(["prepare", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: no valid row in 1 input file(s)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta_Bad.jsonl", "meta_Empty.jsonl"]
    # rows that are valid but all filtered out are the user's choice of filters, not an input error
    s = prepare([write_jsonl(tmp_path / "meta_Short.jsonl", items("S", 3, title="", features=[]))],
                tmp_path / "out", **ALL)
    assert s["kept"] == 0 and s["dropped"]["require_fields"] == 3


def test_crash_between_the_renames_of_overwrite_loses_nothing(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import effiminivlm.data.prepare as prep_mod

    old_path = write_jsonl(tmp_path / "meta_Old.jsonl", items("O", 10))
    new_path = write_jsonl(tmp_path / "meta_New.jsonl", items("N", 4))
    out = tmp_path / "out"
    prepare([old_path], out, **ALL)

    def dies_between_renames(tmp: Path, dest: Path) -> Path:
        dest.rename(dest.with_name(f".{dest.name}.old"))  # replace_dir's first rename, then the crash
        raise KeyboardInterrupt

    monkeypatch.setattr(prep_mod, "replace_dir", dies_between_renames)
    with pytest.raises(KeyboardInterrupt):
        prepare([new_path], out, overwrite=True, **ALL)
    monkeypatch.undo()
    assert not out.exists() and (tmp_path / ".out.old" / "summary.json").is_file()
    assert not list(tmp_path.glob(".out.partial-*"))  # the new dataset's temp folder went in `finally`
    assert read_prepared(out).num_rows == 10  # a reader puts the backup back in place
    (tmp_path / "out").rename(tmp_path / ".out.old")
    with pytest.raises(DataError, match="not empty; pass --overwrite"):  # restored first, so it is protected
        prepare([new_path], out, **ALL)
    assert read_prepared(out).num_rows == 10 and not (tmp_path / ".out.old").exists()
    prepare([new_path], out, overwrite=True, **ALL)
    assert read_prepared(out).num_rows == 4


def test_an_error_midway_keeps_the_old_dataset_and_leaves_no_temp(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import effiminivlm.data.prepare as prep_mod

    path = write_jsonl(tmp_path / "meta_X.jsonl", items("A", 12))
    out = tmp_path / "out"
    prepare([path], out, **ALL)
    before = (out / "data.parquet").read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        assert list(tmp_path.glob(".out.partial-*/spill.parquet"))  # the spill exists at this point
        raise MemoryError("simulated")

    monkeypatch.setattr(prep_mod, "_sample_split_write", boom)
    with pytest.raises(MemoryError):
        prepare([path], out, overwrite=True, **ALL)
    assert (out / "data.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta_X.jsonl", "out"]


def test_temp_folders_of_killed_runs_are_removed_at_the_next_start(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "meta_X.jsonl", items("A", 6))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    killed = tmp_path / f".out.partial-{dead}-0badc0de"
    legacy = tmp_path / ".out.partial-1a2b3c4d"  # an older version's name, without a pid
    running = tmp_path / f".out.partial-{os.getppid()}-5eed5eed"  # a live process: still writing
    for folder in (killed, legacy, running):
        folder.mkdir()
        (folder / "spill.parquet").write_bytes(b"x" * 100)
    prepare([path], tmp_path / "out", **ALL)
    assert not killed.exists() and not legacy.exists() and running.exists()
    assert read_prepared(tmp_path / "out").num_rows == 6


def test_split_fingerprint_is_pinned(tmp_path: Path) -> None:
    """Any silent change to hashing, sampling or the stratified split changes these numbers (the catalog
    itself is pinned by test_synth's digest test)."""
    from effiminivlm.data.synth import write_synth

    cat = write_synth(tmp_path / "cat", 50, seed=0, progress=False)
    summary = prepare([cat.meta_path], tmp_path / "out", frac=0.5, min_per_category=5, seed=7,
                      rare_threshold=2)
    t = read_prepared(tmp_path / "out")
    pairs = sorted(zip(t["parent_asin"].to_pylist(), t["split"].to_pylist(), strict=True))
    digest = hashlib.sha256("\n".join(f"{a},{s}" for a, s in pairs).encode()).hexdigest()
    assert Counter(s for _, s in pairs) == {"train": 20, "val": 3, "test": 2}
    assert {k: v["kept"] for k, v in summary["per_category"].items()} == {
        "AMAZON FASHION": 14, "Home": 5, "Sports & Outdoors": 6}
    assert digest == "dbbe9f4d2309573f4f54a7a1d9c911325590043350f6eee1afb43284c76099f2"
