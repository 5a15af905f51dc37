"""Distillation from per-item teacher embeddings (training.embed_distill): the term against its formula, the
folder reader's bad rows, and `train --teacher DIR` end to end (counted fallback, the term in the log)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from effiminivlm.config import load_recipe
from effiminivlm.data.prepare import read_prepared
from effiminivlm.errors import ConfigError, DataError
from effiminivlm.training import loop
from effiminivlm.training.embed_distill import (
    EmbeddingDistillation,
    TeacherEmbeddings,
    read_teacher_embeddings,
    relational_loss,
)


def _write(path: Path, ids: list[str], tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"ids": json.dumps(ids)})
    return path


def test_relational_loss_is_the_mean_squared_difference_of_cosine_similarities() -> None:
    torch.manual_seed(0)
    s = torch.randn(5, 7, requires_grad=True)
    t = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    got = relational_loss(s, t)
    direct = torch.stack([(torch.cosine_similarity(s[i], s[j], dim=0) - t[i] @ t[j]) ** 2
                          for i in range(5) for j in range(5) if i != j]).mean()
    torch.testing.assert_close(got, direct)
    (g_got,) = torch.autograd.grad(got, s)
    (g_dir,) = torch.autograd.grad(direct, s)
    torch.testing.assert_close(g_got, g_dir)
    one = relational_loss(s[:1], t[:1])  # a batch of one: 0, still differentiable
    assert float(one.detach()) == 0.0 and torch.autograd.grad(one, s)[0].abs().sum() == 0


def test_reader_takes_embed_caches_and_counts_bad_rows(tmp_path: Path) -> None:
    d = tmp_path / "teacher"
    _write(d / "a.safetensors", ["x", "y", "z"], {"image": torch.zeros(3, 0), "text": torch.eye(3) * 2})
    _write(d / "b.safetensors", ["x", "w", "v", "u"],
           {"embedding": torch.tensor([[0.0, 1, 0], [1, 1, 0], [float("nan"), 0, 0], [0, 0, 5]])})
    got = read_teacher_embeddings(d)
    assert set(got.index) == {"y", "z", "w", "u"}  # x conflicts between the files, v is not finite
    assert got.bad == {"conflicting_duplicate": 1, "not_finite": 1}
    torch.testing.assert_close(got.vectors[got.index["u"]], torch.tensor([0.0, 0, 1]))  # unit vectors
    with pytest.raises(DataError, match=r"b.safetensors:row 0: item 'x' embedded twice"):
        read_teacher_embeddings(d, strict=True)
    _write(tmp_path / "wide" / "c.safetensors", ["q"], {"embedding": torch.ones(1, 4)})
    _write(tmp_path / "wide" / "d.safetensors", ["r"], {"embedding": torch.ones(1, 5)})
    with pytest.raises(DataError, match="width 5"):
        read_teacher_embeddings(tmp_path / "wide")
    save_file({"embedding": torch.ones(2, 2)}, str(tmp_path / "noids.safetensors"))
    (tmp_path / "noids").mkdir()
    (tmp_path / "noids.safetensors").rename(tmp_path / "noids" / "e.safetensors")
    with pytest.raises(DataError, match="no `ids`"):
        read_teacher_embeddings(tmp_path / "noids")
    with pytest.raises(DataError, match="no \\*.safetensors"):
        read_teacher_embeddings(tmp_path / "wide" / "..")


def test_the_term_pulls_the_student_geometry_toward_the_teacher() -> None:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.body = torch.nn.Linear(8, 6)  # free per-item vectors: the teacher's geometry is reachable
    model.head = torch.nn.Linear(6, 1)
    ids = [f"i{k}" for k in range(8)]
    vec = torch.nn.functional.normalize(torch.randn(7, 3), dim=1)
    teacher = TeacherEmbeddings({i: k for k, i in enumerate(ids[:7])}, vec)  # i7: no teacher vector
    d = EmbeddingDistillation(teacher, 1.0, model)
    x = torch.eye(8)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    values = []
    for _ in range(150):
        d.ids = ids
        model.head(model.body(x))
        term = d.term()
        values.append(float(term.detach()))
        opt.zero_grad()
        term.backward()
        opt.step()
    assert values[-1] < 0.2 * values[0]
    assert d.coverage(ids) == {"teacher_embedded": 7, "teacher_embedding_fallback": 1}


def test_train_with_a_teacher_embedding_folder(tiny_recipe, prepared: Path, tmp_path: Path) -> None:
    ids = read_prepared(prepared, "train").column("parent_asin").to_pylist()
    n = len(ids) - 5  # five train items without a teacher vector fall back to the label loss alone
    _write(tmp_path / "t" / "e.safetensors", ids[:n], {"embedding": torch.randn(n, 16)})
    recipe = load_recipe(tiny_recipe.to_dict(), ["model.modalities=text", "train.epochs=1",
                                                 f"train.distill.embeddings={tmp_path / 't'}",
                                                 "train.distill.embed_weight=2.0"])
    logs: list[str] = []
    result = loop.train(recipe, prepared, tmp_path / "run", progress=False, log=logs.append)
    stats = result["distill_embeddings"]
    assert stats["teacher_embedded"] == n and stats["teacher_embedding_fallback"] == 5
    assert any(f"{n} train items have a teacher embedding, 5 fall back" in x for x in logs)
    epoch = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert epoch["train_loss_terms"]["embed_distill"] > 0
    bad = load_recipe(recipe.to_dict(), ["train.grad_accum_steps=2"])
    with pytest.raises(ConfigError, match="grad_accum_steps=1"):
        loop.train(bad, prepared, tmp_path / "run2", progress=False, log=logs.append)


def test_cli_teacher_option_takes_a_csv_or_a_folder(tmp_path: Path) -> None:
    from effiminivlm.cli.training import technique_overrides

    (tmp_path / "emb").mkdir()
    (tmp_path / "s.csv").write_text("item_id,score\n")
    assert technique_overrides(str(tmp_path / "emb"), None, None) == [
        f'train.distill.embeddings="{(tmp_path / "emb").resolve()}"']
    assert technique_overrides(str(tmp_path / "s.csv"), None, None) == [
        f'train.distill.teacher="{(tmp_path / "s.csv").resolve()}"']
    with pytest.raises(ConfigError, match="no such file or folder"):
        technique_overrides(str(tmp_path / "missing"), None, None)
    with pytest.raises(ConfigError, match="probe's towers are frozen"):
        from effiminivlm.training.probe import train_probe

        recipe = load_recipe("probe", [f"train.distill.embeddings={tmp_path / 'emb'}"])
        train_probe(recipe, tmp_path, tmp_path / "o")
