"""`predict --engine ray` gives the submission of `predict`, byte for byte (same ids, same scores), on the
synthetic catalog, from a prepared folder (one split, 2 actors) and from a LoViF input.csv (Parquet of
scores). Most of its time is Ray's worker and actor start-up (110-140 s measured on 2 cores shared with
other jobs)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from effiminivlm.cli import main
from effiminivlm.files import read_csv_rows

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """A small local Ray for this module only (2 CPUs, 100 MB object store, no dashboard)."""
    ray.init(address="local", num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_equals_single_process(local_ray, serve_model, prepared, synth_catalog, tmp_path, capsys):
    common = ["--model", str(serve_model), "--batch-size", "16", "--device", "cpu"]
    local, on_ray = tmp_path / "local.csv", tmp_path / "ray.csv"
    split = ["--split", "train"]  # read_parquet + the split filter, before the batches are cut
    assert main(["predict", str(prepared), *split, *common, "--out", str(local), "--num-workers", "0"]) == 0
    assert main(["predict", str(prepared), *split, *common, "--out", str(on_ray), "--engine", "ray",
                 "--num-actors", "2"]) == 0
    assert '"engine": "ray"' in capsys.readouterr().out
    assert on_ray.read_bytes() == local.read_bytes()  # same ids, same order, same scores to the last digit
    _, rows = read_csv_rows(on_ray)
    assert len(rows) == 128 and len({r["score"] for _, r in rows}) > 100  # real, varied predictions

    csv = synth_catalog / "lovif" / "input.csv"
    lovif_local, lovif_ray = tmp_path / "lovif.csv", tmp_path / "lovif.parquet"
    assert main(["predict", str(csv), *common, "--out", str(lovif_local), "--num-workers", "0"]) == 0
    assert main(["predict", str(csv), *common, "--out", str(lovif_ray), "--engine", "ray"]) == 0
    table = pq.read_table(lovif_ray)
    _, want = read_csv_rows(lovif_local)
    assert table.column_names == ["item_id", "score"]
    assert table.column("item_id").to_pylist() == [r["item_id"] for _, r in want]
    assert [f"{s:.8f}" for s in table.column("score").to_pylist()] == [r["score"] for _, r in want]


def test_ray_options_are_checked(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--model", "m", "--out", str(tmp_path / "s.csv"),
                 "--num-actors", "2"]) == 2
    assert "--address, --num-actors and --threads apply to --engine ray only" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--model", "m", "--out", str(tmp_path / "s.csv"),
                 "--engine", "spark"]) == 2
    assert "--engine must be one of local, ray" in capsys.readouterr().err


@pytest.mark.parametrize("scores, message", [
    ([3.0, float("nan"), float("inf")], "model M: 2 of 3 predictions are not finite (NaN or inf)"),
    ([], "nothing to score"),
])
def test_ray_writer_publishes_nothing_for_non_finite_scores_or_no_rows(local_ray, tmp_path, scores, message):
    """An older submission at --out stays as it was: no NaN row is written, no empty file replaces it."""
    import pyarrow as pa

    from effiminivlm.errors import DataError
    from effiminivlm.serving.ray_engine import _write

    out = tmp_path / "submission.csv"
    out.write_text("old\n")
    n = len(scores)
    scored = ray.data.from_arrow(pa.table({"item_id": [f"I{i}" for i in range(n)], "score": scores,
                                           "image_status": ["ok"] * n},
                                          schema=pa.schema([("item_id", pa.string()), ("score", pa.float64()),
                                                            ("image_status", pa.string())])))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _write(scored, out, 1.0, 0.1, "M", "nothing to score")
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]


def test_ray_stages_carry_the_hybrid_probe_sparse_tfidf_rows(prepared, tmp_path):
    """The hybrid probe's batches hold a sparse TF-IDF tensor (no numpy form): the decode stage must hand it
    to the scoring actor intact, so Ray scores a hybrid as `predict` does (the stages run here in-process)."""
    import numpy as np
    import pyarrow as pa
    import torch

    from effiminivlm.config import load_recipe
    from effiminivlm.data.images import ImageStore
    from effiminivlm.data.prepare import read_prepared
    from effiminivlm.serving.ray_engine import ScoreActor, collate_block
    from effiminivlm.serving.scorer import Scorer
    from effiminivlm.training.probe import train_probe

    recipe = load_recipe("hybrid-probe-tiny", ["data.num_workers=0", "model.modalities=text",
                                               "train.lexical.min_df=1"])
    train_probe(recipe, prepared, tmp_path / "run", log=lambda _: None)
    folder = str(tmp_path / "run" / "model")
    rows, store = read_prepared(prepared, "test"), ImageStore.for_prepared(prepared)
    staged = collate_block(rows, model_dir=folder, images="first", store=store, batch_size=8)
    threads = torch.get_num_threads()  # the actor sets it; this process keeps its own
    scored = ScoreActor(folder, "cpu", "fp32", threads)(pa.table({"payload": staged["payload"]}))
    local = Scorer.from_pretrained(folder, precision="fp32").score_table(rows, store, progress=False).pred
    assert scored["item_id"] == [str(v) for v in rows.column("parent_asin").to_pylist()]
    np.testing.assert_array_equal(np.array(scored["score"]), local)
