"""Distillation, pseudo-labels and soups end to end on the tiny model and the synthetic catalog."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from effiminivlm.config import load_recipe
from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import DataError, EffiMiniVLMError
from effiminivlm.models.factory import load_model
from effiminivlm.training import loop
from effiminivlm.training.distill import apply_teacher, read_teacher_scores
from effiminivlm.training.pseudo import agreement_confidence, pseudo_label, read_pseudo_rows
from effiminivlm.training.soup import soup
from effiminivlm.training.train_rows import mix_train_rows


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def runs(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two short text-only runs of the tiny recipe (different seeds)."""
    out = []
    for seed in (1, 2):
        recipe = load_recipe("tiny", ["model.modalities=text", "train.epochs=1",
                                      "train.max_steps_per_epoch=2", "train.batch_size=8",
                                      f"train.seed={seed}", "data.num_workers=0"])
        run = tmp_path_factory.mktemp(f"run{seed}")
        loop.train(recipe, prepared, run, progress=False, log=_quiet)
        out.append(run)
    return out


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_teacher_scores_blend_the_train_targets_and_fall_back_counted(prepared, tmp_path):
    train = read_prepared(prepared, "train")
    ids = train.column("parent_asin").to_pylist()
    truth = train.column("average_rating").to_numpy()
    scores = _write_csv(tmp_path / "teacher.csv", [
        ["item_id", "score", "params", "flops"], [ids[0], "2.0", "1", "1"], [ids[1], "5", "1", "1"],
        [ids[2], "nan", "1", "1"], [ids[3], "7", "1", "1"], ["", "3", "1", "1"],
        ["unknown-item", "3", "1", "1"],
        [ids[4], "3.0", "1", "1"], [ids[4], "4.0", "1", "1"]])
    logs: list[str] = []
    blended, stats = apply_teacher(train, scores, 0.25, log=logs.append)
    got = blended.column("average_rating").to_numpy()
    assert got[0] == pytest.approx(0.75 * truth[0] + 0.25 * 2.0)
    assert got[1] == pytest.approx(0.75 * truth[1] + 0.25 * 5.0)
    np.testing.assert_allclose(got[2:], truth[2:])  # bad, conflicting or missing: the true label
    assert stats["teacher_scored"] == 2 and stats["teacher_fallback_true_label"] == len(ids) - 2
    assert stats["teacher_bad_rows"] == {"bad_score": 2, "empty_id": 1, "conflicting_duplicate": 1}
    assert f"{scores}:4: score 'nan' is not a number in [1, 5]" in logs[0]
    with pytest.raises(DataError, match=f"{scores}:4: score 'nan'"):
        read_teacher_scores(scores, strict=True)
    with pytest.raises(DataError, match="the header lacks score"):
        read_teacher_scores(_write_csv(tmp_path / "bad.csv", [["item_id", "pred"], ["a", "3"]]))


def test_pseudo_labels_round_trip_and_train_mixes_them_in(runs, prepared, synth_catalog, tmp_path):
    lovif = synth_catalog / "lovif" / "input.csv"  # unrated items
    out = tmp_path / "pseudo"
    summary = pseudo_label([str(runs[0] / "model")], [str(lovif)], out, precision="fp32", progress=False,
                           log=_quiet)
    rows = read_prepared(out)
    model, tokenizer = load_model(runs[0] / "model")
    from effiminivlm.data.inputs import read_inputs
    from effiminivlm.inference import make_loader, run_inference

    table = read_inputs([str(lovif)]).table
    res = run_inference(model, make_loader(model, tokenizer, table), torch.device("cpu"), progress=False)
    assert summary["rows"] == rows.num_rows == table.num_rows
    assert rows.column("parent_asin").to_pylist() == res.item_id
    np.testing.assert_allclose(rows.column("average_rating").to_numpy(), np.clip(res.pred, 1, 5), rtol=1e-6)
    assert set(rows.column("split").to_pylist()) == {"train"} and rows.column("confidence").to_pylist() == [
        1.0] * rows.num_rows
    mixed = read_pseudo_rows(out, 0.3)
    np.testing.assert_allclose(mixed.column("sample_weight").to_numpy(), 0.3)
    # their images resolve in training: the LoViF images folder joins the training store's roots
    assert summary["image_roots"] == [str((lovif.parent / "images").resolve())]
    store = ImageStore(None, allowed_roots=[tmp_path])  # a training set whose images live elsewhere
    ref = next(r[0] for r in rows.column("images").to_pylist() if r)
    assert store.resolve(ref) is None
    cfg = load_recipe("tiny", [f"train.pseudo.path={out}"]).train
    mix_train_rows(read_prepared(prepared, "train"), cfg, 1.0, store=store, log=_quiet)
    assert store.resolve(ref) is not None

    two = pseudo_label([str(r / "model") for r in runs], [str(lovif)], tmp_path / "two", precision="fp32",
                       progress=False, log=_quiet)
    rows2 = read_prepared(tmp_path / "two")
    preds = np.stack([np.clip(run_inference(m, make_loader(m, t, table), torch.device("cpu"),
                                            progress=False).pred, 1, 5)
                      for m, t in (load_model(r / "model") for r in runs)])
    np.testing.assert_allclose(rows2.column("average_rating").to_numpy(), preds.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rows2.column("confidence").to_numpy(), agreement_confidence(preds), rtol=1e-5)
    assert two["confidence_mean"] < 1.0
    with pytest.raises(EffiMiniVLMError, match="exists; pass --overwrite"):
        pseudo_label([str(runs[0] / "model")], [str(lovif)], out, progress=False, log=_quiet)
    with pytest.raises(DataError, match="no unrated item"):
        pseudo_label([str(runs[0] / "model")], [str(prepared)], tmp_path / "none", progress=False, log=_quiet)

    # train mixes them in, with the teacher: both counted in the log and the summary
    ids = read_prepared(prepared, "train").column("parent_asin").to_pylist()
    teacher = _write_csv(tmp_path / "t.csv", [["item_id", "score"], *[[i, "4.0"] for i in ids[:10]]])
    recipe = load_recipe("tiny", ["model.modalities=text", "train.epochs=1", "train.max_steps_per_epoch=1",
                                  "train.batch_size=8", "train.grad_accum_steps=2", "data.num_workers=0",
                                  f"train.distill.teacher={teacher}", f"train.pseudo.path={out}",
                                  "train.loss={weighted_huber: 1, plcc: 0.5, rank: 0.2}"])
    logs: list[str] = []
    result = loop.train(recipe, prepared, tmp_path / "run", progress=False, log=logs.append)
    # the LoViF layout holds the catalog's items: those in the train split keep their real label
    new = len(set(rows.column("parent_asin").to_pylist()) - set(ids))
    assert result["pseudo"]["rows"] == new and result["pseudo"]["already_in_train"] == rows.num_rows - new
    assert result["distill"]["teacher_scored"] == 10
    assert any("pseudo-labels from" in x for x in logs) and any("10 train items blended" in x for x in logs)
    assert any(f"train {new + len(ids)} / " in x for x in logs)  # train set = real + pseudo rows
    epoch = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert set(epoch["train_loss_terms"]) == {"weighted_huber", "plcc", "rank"}


def test_soup_of_identical_checkpoints_is_the_checkpoint(runs, tmp_path):
    soup([str(runs[0]), str(runs[0] / "model")], tmp_path / "s", log=_quiet)
    a, _ = load_model(runs[0] / "model")
    b, _ = load_model(tmp_path / "s")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.num_params() == b.num_params()
    assert json.loads((tmp_path / "s" / "soup.json").read_text())["kind"] == "uniform"


def test_uniform_soup_is_the_mean_and_greedy_keeps_what_helps(runs, prepared, tmp_path):
    soup([str(r) for r in runs], tmp_path / "u", log=_quiet)
    states = [load_model(r / "model")[0].state_dict() for r in runs]
    mean = load_model(tmp_path / "u")[0].state_dict()
    for k, v in mean.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (states[0][k] + states[1][k]) / 2)
    logs: list[str] = []
    summary = soup([str(r) for r in runs], tmp_path / "g", greedy=True, data=str(prepared), progress=False,
                   log=logs.append)
    best = max(summary["member_plcc"], key=summary["member_plcc"].get)
    assert summary["members"][0] == best and 1 <= len(summary["members"]) <= 2
    assert summary["val_plcc"] >= summary["member_plcc"][best]
    assert any("added" in x or "left out" in x for x in logs)


def test_soup_refuses_different_architectures(runs, prepared, tmp_path):
    other = load_recipe("tiny", ["model.modalities=text", "model.head.hidden_dims=[8]", "train.epochs=1",
                                 "train.max_steps_per_epoch=1", "train.batch_size=8", "data.num_workers=0"])
    loop.train(other, prepared, tmp_path / "other", progress=False, log=_quiet)
    with pytest.raises(EffiMiniVLMError, match=r"different model config \(model.head.hidden_dims: \[32, 16\] "
                                               r"!= \[8\]\)"):
        soup([str(runs[0]), str(tmp_path / "other")], tmp_path / "x", log=_quiet)
    with pytest.raises(EffiMiniVLMError, match="is one of the checkpoints being averaged"):
        soup([str(runs[0]), str(runs[1])], runs[1] / "model", log=_quiet)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(EffiMiniVLMError, match="exists and is not a saved model folder"):
        soup([str(r) for r in runs], tmp_path / "mine", log=_quiet)
    soup([str(r) for r in runs], tmp_path / "soup", log=_quiet)
    with pytest.raises(EffiMiniVLMError, match="holds a model; pass --overwrite"):
        soup([str(r) for r in runs], tmp_path / "soup", log=_quiet)
    soup([str(r) for r in runs], tmp_path / "soup", overwrite=True, log=_quiet)
    with pytest.raises(EffiMiniVLMError, match="--greedy needs --data"):
        soup([str(r) for r in runs], tmp_path / "y", greedy=True, log=_quiet)


def test_greedy_soup_leaves_out_a_checkpoint_that_hurts(runs, prepared, tmp_path):
    """A copy of a run with its output layer negated predicts the mirror image (PLCC -> -PLCC); averaged with
    the original its output layer cancels (constant predictions, PLCC undefined): greedy must leave it out."""
    model, tokenizer = load_model(runs[0] / "model")
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.neg_()
    model.save_pretrained(tmp_path / "mirror", tokenizer=tokenizer)
    logs: list[str] = []
    summary = soup([str(runs[0]), str(tmp_path / "mirror")], tmp_path / "g", greedy=True, data=str(prepared),
                   precision="fp32", progress=False, log=logs.append)
    plcc = summary["member_plcc"]
    # about the mirror image: the scaled-sigmoid output is not exactly odd around the bias, so how close
    # depends on the trained weights (the fused AdamW's rounding moved it by ~3e-4)
    assert plcc[str(tmp_path / "mirror")] == pytest.approx(-plcc[str(runs[0] / "model")], abs=2e-3)
    assert summary["members"] == [max(plcc, key=plcc.get)] and any("left out" in x for x in logs)
    assert summary["val_plcc"] == pytest.approx(max(plcc.values()))
