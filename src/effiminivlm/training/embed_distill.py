"""Distillation from a folder of per-item teacher embeddings (`train --teacher DIR`, `distill.embeddings`).

Why relational: the teacher (a bigger model) and the student embed items in spaces of different widths and
bases, so their vectors cannot be compared directly without a learned projection that would itself be
trained, checkpointed and thrown away. What carries over is the geometry: which items the teacher finds
alike. The term matches, over the batch, the student's pairwise cosine similarities to the teacher's
(similarity-preserving distillation, Tung & Mori 2019):

    L_embed = mean over pairs i != j of (cos(s_i, s_j) - cos(t_i, t_j))^2

s_i the student's representation of item i (the input of the model's head: the fused [image; text] vector,
captured by a forward pre-hook, so any registered architecture with a `head` works), t_i the teacher's. The
training loss is the label loss + `train.distill.embed_weight` x L_embed. Items the teacher has no embedding
for take no part in the pairs (their label loss is unchanged): counted in the log and the run summary. A
batch with fewer than two such items adds 0.

DIR holds one or more `*.safetensors` files, each with the item ids as JSON in its metadata `ids` and either
an `embedding` tensor [N, D] or the `image` / `text` tensors of `effiminivlm embed` (concatenated), so the
cache of a bigger model's `embed` run is a teacher as is. A row that is not finite, or an id given twice with
different vectors, is a bad row: counted with its file:row and left out, or with `--strict` a DataError.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from effiminivlm.errors import ConfigError, DataError

__all__ = ["EmbeddingDistillation", "TeacherEmbeddings", "read_teacher_embeddings", "relational_loss"]


@dataclass
class TeacherEmbeddings:
    """Unit-normalised teacher vectors [N, D] and the row of each item id; bad rows counted."""

    index: dict[str, int]
    vectors: torch.Tensor
    bad: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def _file_vectors(path: Path) -> tuple[list[str], torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta, keys = f.metadata() or {}, set(f.keys())
            if "embedding" in keys:
                vec = f.get_tensor("embedding")
            elif {"image", "text"} <= keys:
                vec = torch.cat([f.get_tensor("image"), f.get_tensor("text")], dim=1)
            else:
                raise DataError(f"{path}: no `embedding` tensor (nor `image` + `text` of effiminivlm embed); "
                                f"found {', '.join(sorted(keys)) or 'none'}")
    except (SafetensorError, OSError) as e:
        raise DataError(f"{path}: cannot read it as safetensors ({e})") from None
    try:
        ids = json.loads(meta["ids"])
    except (KeyError, json.JSONDecodeError):
        raise DataError(f"{path}: its metadata has no `ids` (a JSON list of item ids, one per row)") from None
    if not isinstance(ids, list) or vec.ndim != 2 or len(ids) != vec.shape[0] or vec.shape[1] == 0:
        n_ids = len(ids) if isinstance(ids, list) else "no"
        raise DataError(f"{path}: {n_ids} ids for an embedding of shape {tuple(vec.shape)} "
                        "(expected one non-empty row per id)")
    return [str(i) for i in ids], vec.float()


def read_teacher_embeddings(folder: str | Path, *, strict: bool = False) -> TeacherEmbeddings:
    """Every item vector of the `*.safetensors` files in `folder` (see the module doc for bad rows)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"teacher embeddings {root}: not a folder")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise DataError(f"teacher embeddings {root}: no *.safetensors file in it")
    out = TeacherEmbeddings({}, torch.zeros(0))
    rows: list[torch.Tensor] = []
    dim: int | None = None
    conflicting: set[str] = set()

    def bad(kind: str, where: str) -> None:
        if strict:
            raise DataError(where)
        out.bad[kind] += 1
        if len(out.examples) < 5:
            out.examples.append(where)

    for path in files:
        ids, vec = _file_vectors(path)
        if dim is None:
            dim = vec.shape[1]
        elif vec.shape[1] != dim:
            raise DataError(f"{path}: embeddings of width {vec.shape[1]}, but {files[0]} has {dim}")
        finite = torch.isfinite(vec).all(dim=1)
        for r, (item, v) in enumerate(zip(ids, vec, strict=True)):
            if not bool(finite[r]):
                bad("not_finite", f"{path}:row {r}: item {item!r} has a non-finite embedding")
            elif item in out.index:
                if not torch.equal(rows[out.index[item]], v):
                    bad("conflicting_duplicate", f"{path}:row {r}: item {item!r} embedded twice, differently")
                    conflicting.add(item)
            else:
                out.index[item] = len(rows)
                rows.append(v)
    for item in conflicting:  # neither vector can be trusted
        out.index.pop(item)
    out.vectors = F.normalize(torch.stack(rows), dim=1) if rows else torch.zeros(0, dim or 1)
    return out


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean over pairs i != j of (cos(s_i, s_j) - cos(t_i, t_j))^2; 0 (in the graph) for fewer than 2 rows.
    `teacher` rows must be unit vectors."""
    n = student.shape[0]
    if n < 2:
        return student.float().sum() * 0.0
    s = F.normalize(student.float(), dim=1)
    diff = s @ s.T - teacher @ teacher.T
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    return (diff[off] ** 2).mean()


class EmbeddingDistillation:
    """Captures the student's head input and adds `weight` x the relational term to a loss.

    Use: `wrapped = d.wrap(loss_fn)`; before each training step set `d.ids = batch["item_id"]`. Only
    forward passes with gradients enabled are captured (validation runs under no_grad)."""

    def __init__(self, teacher: TeacherEmbeddings, weight: float, model: torch.nn.Module) -> None:
        head = getattr(model, "head", None)
        if not isinstance(head, torch.nn.Module):
            raise ConfigError("train.distill.embeddings: this architecture has no `head` module whose input "
                              "is the item representation")
        self.teacher, self.weight = teacher, weight
        self.ids: list[str] = []
        self._captured: torch.Tensor | None = None
        head.register_forward_pre_hook(self._capture)

    def _capture(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if torch.is_grad_enabled():
            self._captured = args[0]

    def term(self) -> torch.Tensor:
        feats = self._captured
        if feats is None or len(self.ids) != feats.shape[0]:
            raise RuntimeError("embedding distillation: set .ids to the batch's item ids before the step")
        keep = [i for i, item in enumerate(self.ids) if item in self.teacher.index]
        rows = torch.tensor([self.teacher.index[self.ids[i]] for i in keep], dtype=torch.long)
        t = self.teacher.vectors[rows].to(feats.device)
        return relational_loss(feats[keep], t)

    def wrap(self, loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        outer = self

        class _Loss:
            last: dict[str, float] = {}

            def __call__(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
                         ) -> torch.Tensor:
                base = loss_fn(pred, target, weight)
                extra = outer.term()
                self.last = {**getattr(loss_fn, "last", {}), "embed_distill": float(extra.detach())}
                return base + outer.weight * extra

        return _Loss()

    def coverage(self, train_ids: list[str]) -> dict[str, int]:
        known = sum(1 for i in train_ids if i in self.teacher.index)
        return {"teacher_embedded": known, "teacher_embedding_fallback": len(train_ids) - known}


def setup_embedding_distillation(cfg: Any, model: torch.nn.Module, train_ids: list[str], *,
                                 strict: bool = False, log: Callable[[str], None] = print
                                 ) -> tuple[EmbeddingDistillation | None, dict[str, Any]]:
    """(the distiller, its stats) for `train.distill` (cfg: TrainCfg), or (None, {}) without embeddings."""
    path = cfg.distill.embeddings
    if not path:
        return None, {}
    if cfg.grad_accum_steps > 1:
        raise ConfigError("train.distill.embeddings needs the whole batch's representations in one pass: "
                          "set train.grad_accum_steps=1")
    teacher = read_teacher_embeddings(path, strict=strict)
    distiller = EmbeddingDistillation(teacher, cfg.distill.embed_weight, model)
    stats: dict[str, Any] = {"embeddings": str(path), "embed_weight": cfg.distill.embed_weight,
                             "teacher_dim": int(teacher.vectors.shape[1]), **distiller.coverage(train_ids),
                             "teacher_embedding_bad_rows": dict(teacher.bad)}
    log(f"embedding distillation from {path} (weight {cfg.distill.embed_weight}): "
        f"{stats['teacher_embedded']} train items have a teacher embedding, "
        f"{stats['teacher_embedding_fallback']} fall back to the label loss alone"
        + (f"; {sum(teacher.bad.values())} bad teacher rows left out ({dict(teacher.bad)}), e.g. "
           f"{teacher.examples[0]}" if teacher.bad else ""))
    return distiller, stats
