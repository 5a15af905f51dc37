"""The synthetic catalog: deterministic, prefix-stable, official meta schema, every item prepared, a rating
explained by an image-only and a text-only latent, and a LoViF layout that reads back whole."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effiminivlm.cli import main
from effiminivlm.data.images import load_image
from effiminivlm.data.lovif import read_lovif, read_truth
from effiminivlm.data.prepare import prepare, read_prepared
from effiminivlm.data.synth import COLOURS, META_NAME, asin_for, write_synth
from effiminivlm.errors import EffiMiniVLMError

DEV = Path(__file__).resolve().parents[3] / "shared/data/amazon2023-fashion-dev/meta_Amazon_Fashion.jsonl"
# The official meta_<Category>.jsonl keys, in order, and the JSON types each takes in the real data.
OFFICIAL = {"main_category": (str,), "title": (str,), "average_rating": (float,), "rating_number": (int,),
            "features": (list,), "description": (list,), "price": (float, type(None)), "images": (list,),
            "videos": (list,), "store": (str, type(None)), "categories": (list,), "details": (dict,),
            "parent_asin": (str,), "bought_together": (type(None),)}


def meta(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / META_NAME).read_text(encoding="utf-8").splitlines()]


def latent(root: Path) -> list[dict[str, str]]:
    with (root / "latent.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_smaller_n_is_a_prefix(tmp_path: Path) -> None:
    a = write_synth(tmp_path / "a", 12, seed=3, image_size=40, progress=False)
    write_synth(tmp_path / "b", 12, seed=3, image_size=40, progress=False)
    write_synth(tmp_path / "small", 5, seed=3, image_size=40, progress=False)
    write_synth(tmp_path / "other", 12, seed=4, image_size=40, progress=False)
    big, small = files(tmp_path / "a"), files(tmp_path / "small")
    assert big == files(tmp_path / "b")
    assert a.items == 12 and a.images == len(list((tmp_path / "a/images").iterdir()))
    for name in (META_NAME, "latent.csv", "lovif/input.csv", "lovif/truth.csv"):
        assert big[name].startswith(small[name]) and len(big[name]) > len(small[name]), name
    images = {k: v for k, v in small.items() if k.startswith(("images/", "lovif/images/"))}
    assert images and all(big[k] == v for k, v in images.items())
    assert meta(tmp_path / "other")[0]["parent_asin"] != meta(tmp_path / "a")[0]["parent_asin"]


def test_records_follow_the_official_meta_schema(synth_catalog: Path) -> None:
    records = meta(synth_catalog)
    assert len(records) == 160 and len({r["parent_asin"] for r in records}) == 160
    for r in records:
        assert list(r) == list(OFFICIAL)
        for key, types in OFFICIAL.items():
            assert isinstance(r[key], types), (key, r[key])
        assert all(isinstance(x, str) and x for x in r["features"] + r["description"])
        assert re.fullmatch(r"B0[0-9A-Z]{8}", r["parent_asin"])
        assert 1.0 <= r["average_rating"] <= 5.0 and round(r["average_rating"], 1) == r["average_rating"]
        assert r["rating_number"] >= 1 and r["description"] and len(r["title"]) > 10
        assert r["images"][0]["variant"] == "MAIN"
        for im in r["images"]:
            assert set(im) == {"thumb", "large", "variant", "hi_res"}
            assert (synth_catalog / im["large"]).is_file() and im["hi_res"] in (None, im["large"])
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in r["details"].items())
    ratings = np.array([r["average_rating"] for r in records])
    assert ratings.std() > 0.5 and len(set(ratings.tolist())) > 15  # a real spread, not a constant


@pytest.mark.skipif(not DEV.is_file(), reason=f"real dev data absent ({DEV})")
def test_schema_matches_the_real_dev_data(synth_catalog: Path) -> None:
    real = [json.loads(line) for line in DEV.read_text(encoding="utf-8").splitlines()]
    synth = meta(synth_catalog)
    assert {tuple(r) for r in real} == {tuple(r) for r in synth}
    real_types = {(k, type(v).__name__) for r in real for k, v in r.items()}
    assert {(k, type(v).__name__) for r in synth for k, v in r.items()} <= real_types
    assert {tuple(sorted(im)) for r in real for im in r["images"]} == {
        tuple(sorted(im)) for r in synth for im in r["images"]}


def test_images_are_real_files_of_the_requested_size(synth_catalog: Path) -> None:
    paths = sorted((synth_catalog / "images").iterdir())
    assert {p.suffix for p in paths} == {".jpg", ".png"}
    modes = set()
    for p in paths:
        with Image.open(p) as img:
            assert img.size == (64, 64)
            modes.add(img.mode)
        assert load_image(p) is not None
    assert "RGBA" in modes  # some PNGs have a transparent background (the loader composites them)


def test_rating_is_explained_by_an_image_latent_and_a_text_latent(synth_catalog: Path) -> None:
    rows = latent(synth_catalog)
    by_id = {r["parent_asin"]: r for r in meta(synth_catalog)}
    y = np.array([float(r["average_rating"]) for r in rows])
    img = np.array([float(r["image_effect"]) for r in rows])
    txt = np.array([float(r["text_effect"]) for r in rows])
    assert np.allclose(y, [by_id[r["parent_asin"]]["average_rating"] for r in rows])
    assert np.corrcoef(img, y)[0, 1] > 0.45 and np.corrcoef(txt, y)[0, 1] > 0.45
    assert abs(np.corrcoef(img, txt)[0, 1]) < 0.3  # independent latents: neither stands in for the other
    x = np.column_stack([np.ones_like(y), img, txt])
    resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    r2 = 1 - resid.var() / y.var()
    alone = [1 - (y - np.poly1d(np.polyfit(v, y, 1))(v)).var() / y.var() for v in (img, txt)]
    assert r2 > 0.75 and max(alone) < 0.65 and r2 > max(alone) + 0.2


def test_colour_lives_only_in_the_image(synth_catalog: Path) -> None:
    """The image-only latent is never written in the text (or a text model could shortcut it)."""
    words = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)
    for r in meta(synth_catalog):
        text = json.dumps([r["title"], r["features"], r["description"], r["details"], r["store"]])
        assert not words.search(text), text


def test_every_item_survives_prepare(synth_catalog: Path, prepared: Path) -> None:
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["rows_read"] == summary["kept"] == 160 and not any(summary["dropped"].values())
    table = read_prepared(prepared)
    assert all(Path(ref).is_file() for refs in table.column("images").to_pylist() for ref in refs)


def test_missing_descriptions_are_opt_in_and_counted(tmp_path: Path) -> None:
    s = write_synth(tmp_path / "cat", 60, image_size=32, missing_description_frac=0.5, progress=False)
    assert 15 < s.missing_descriptions < 45 and "without a description" in str(s)
    summary = prepare([tmp_path / "cat" / META_NAME], tmp_path / "prep", frac=1.0, min_per_category=0)
    assert summary["dropped"]["require_fields"] == s.missing_descriptions
    assert summary["kept"] == 60 - s.missing_descriptions


def test_lovif_layout_reads_back_with_every_image(synth_catalog: Path, prepared: Path) -> None:
    table, stats = read_lovif(synth_catalog / "lovif" / "input.csv")
    n_images = len(list((synth_catalog / "images").iterdir()))
    assert (stats.rows, stats.images_found) == (160, n_images)
    assert stats.images_missing == stats.images_refused == stats.rows_without_image == 0
    truth = read_truth(synth_catalog / "lovif" / "truth.csv")
    assert truth == {r["parent_asin"]: r["average_rating"] for r in meta(synth_catalog)}
    # the LoViF reader and prepare give the model the same text and the same images, item for item
    prep = {r["parent_asin"]: r for r in read_prepared(prepared).to_pylist()}
    for row in table.to_pylist():
        other = prep[row["parent_asin"]]
        assert [row[c] for c in ("category", "title", "features", "description")] == [
            other[c] for c in ("category", "title", "features", "description")]
        assert [Path(p).name for p in row["images"]] == [Path(p).name for p in other["images"]]


def test_asins_never_collide() -> None:
    ids = [asin_for(0, i) for i in range(200_000)]
    assert len(set(ids)) == len(ids) and all(len(i) == 10 and i.startswith("B0") for i in ids[:100])


def test_synth_cli_and_out_folder_safety(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cat"
    assert main(["synth", "--n", "6", "--out", str(out), "--image-size", "32"]) == 0
    assert "6 items, " in capsys.readouterr().out and len(meta(out)) == 6
    before = files(out)
    assert main(["synth", "--n", "2", "--out", str(out), "--image-size", "32"]) == 2  # no --overwrite
    assert "already holds a synthetic catalog; pass --overwrite" in capsys.readouterr().err
    assert files(out) == before
    # replacing a catalog leaves no stale image of the bigger run behind
    assert main(["synth", "--n", "2", "--out", str(out), "--image-size", "32", "--overwrite"]) == 0
    refs = {Path(im["large"]).name for r in meta(out) for im in r["images"]}
    assert {p.name for p in (out / "images").iterdir()} == refs
    assert {p.name for p in (out / "lovif/images").iterdir()} == refs
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["synth", "--n", "2", "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "holds no synthetic catalog" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    for bad in (["--n", "0"], ["--n", "2", "--image-size", "8"],
                ["--n", "2", "--missing-description-frac", "2"]):
        assert main(["synth", *bad, "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(EffiMiniVLMError, match="--seed"):
        write_synth(tmp_path / "y", 1, seed=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat", "mine"]  # no temp folder left behind


def test_catalog_digest_is_pinned(tmp_path: Path) -> None:
    """`synth --n 50 --seed 0` byte for byte: any silent change to the generator fails here."""
    s = write_synth(tmp_path / "cat", 50, seed=0, progress=False)
    images = hashlib.sha256()
    for p in sorted((tmp_path / "cat" / "images").iterdir()):
        images.update(p.name.encode() + b"\0" + p.read_bytes())
    assert (s.items, s.images) == (50, 80)
    assert hashlib.sha256(s.meta_path.read_bytes()).hexdigest() == (  # with `categories` (multi-label)
        "8e348f51374ea3c5369368581a02d55e39fdff1d55160760ee6bd09d454d3b15")
    assert images.hexdigest() == "fd89617dbd2bfe182d9cbf1e80ee97a036b927418eb132fc76271aab15b73745"


def test_a_crash_midway_keeps_the_old_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import effiminivlm.data.synth as synth_mod

    out = tmp_path / "cat"
    write_synth(out, 3, seed=1, image_size=32, progress=False)
    before = files(out)
    real = synth_mod.make_item

    def dies_at_item_2(index: int, *args: object) -> object:
        if index == 2:
            raise KeyboardInterrupt  # a Ctrl-C halfway through writing the new catalog
        return real(index, *args)

    monkeypatch.setattr(synth_mod, "make_item", dies_at_item_2)
    with pytest.raises(KeyboardInterrupt):
        write_synth(out, 5, seed=2, image_size=32, progress=False, overwrite=True)
    assert files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["cat"]
    # a SIGKILLed run's temp folder (its pid is gone) is removed by the next run
    (tmp_path / ".cat.partial-999999999-0badc0de" / "images").mkdir(parents=True)
    monkeypatch.undo()
    write_synth(out, 4, seed=2, image_size=32, progress=False, overwrite=True)
    assert len(meta(out)) == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["cat"]
