"""The train split as the loss sees it: sample weights, the teacher's soft labels, pseudo-labelled rows.

One function the loop calls once, so each technique stays in its module (`weights`, `distill`, `pseudo`)
and the loop gains one line. Order matters: the sample weights are computed from the TRUE ratings and counts
of the real rows (the inverse-frequency bins of a rating, the count of its raters), then the teacher blends
the targets, then the pseudo rows (weight = train.pseudo.weight x confidence, unblended) are appended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from effiminivlm.data.images import ImageStore
from effiminivlm.training.distill import apply_teacher
from effiminivlm.training.pseudo import pseudo_image_roots, read_pseudo_rows
from effiminivlm.training.weights import with_sample_weights

if TYPE_CHECKING:
    from effiminivlm.config import TrainCfg


def mix_train_rows(rows: pa.Table, cfg: TrainCfg, mu: float, *, store: ImageStore | None = None,
                   strict: bool = False, log: Callable[[str], None] = print
                   ) -> tuple[pa.Table, dict[str, Any]]:
    """(train rows with `sample_weight`, the counts to keep in the run summary). The pseudo rows' image
    folders (recorded by `pseudo-label`) join the allowed roots of the training `store`."""
    rows = with_sample_weights(rows, cfg, mu)
    stats: dict[str, Any] = {"sample_weights": cfg.sample_weights}
    if cfg.distill.teacher:
        rows, stats["distill"] = apply_teacher(rows, cfg.distill.teacher, cfg.distill.alpha, strict=strict,
                                               log=log)
    if cfg.pseudo.path:
        pseudo = read_pseudo_rows(cfg.pseudo.path, cfg.pseudo.weight)
        if store is not None and store.allowed_roots is not None:
            store.allowed_roots += pseudo_image_roots(cfg.pseudo.path)
        real_ids = set(rows.column("parent_asin").to_pylist())
        keep = pa.array([i not in real_ids for i in pseudo.column("parent_asin").to_pylist()])
        dropped = pseudo.num_rows - sum(keep.to_pylist())
        pseudo = pseudo.filter(keep)
        rows = pa.concat_tables([rows.select(pseudo.column_names).cast(pseudo.schema), pseudo])
        stats["pseudo"] = {"path": cfg.pseudo.path, "rows": pseudo.num_rows, "weight": cfg.pseudo.weight,
                           "already_in_train": dropped}
        log(f"pseudo-labels from {cfg.pseudo.path}: {pseudo.num_rows} rows mixed in at weight "
            f"{cfg.pseudo.weight} x confidence" + (f"; {dropped} items already in the train split keep their "
                                                   "real label" if dropped else ""))
    return rows, stats
