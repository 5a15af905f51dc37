"""Pre-collated training batches of a synthetic catalog, shared by the training benchmarks.

Why pre-collated: the training benchmarks time the optimizer step (the model's training cost), so decoding
and tokenising happen once, before the clock starts, in exactly the same way for every script.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from effiminivlm.config import ModelCfg
from effiminivlm.data.dataset import Collator, ProductDataset
from effiminivlm.data.images import ImageStore
from effiminivlm.data.prepare import prepare, read_prepared
from effiminivlm.data.synth import write_synth
from effiminivlm.models.factory import create_tokenizer, create_transforms


def synthetic_batches(cfg: ModelCfg, batch_size: int, n_batches: int, *, images: str = "first",
                      pad_to_max: bool = False) -> list[dict[str, Any]]:
    """`n_batches` collated batches of `batch_size` items (train transforms) for the model `cfg`."""
    n = batch_size * n_batches
    with tempfile.TemporaryDirectory() as tmp:
        write_synth(Path(tmp) / "cat", n=int(n * 1.6) + 20, seed=0, progress=False)
        prepare([Path(tmp) / "cat" / "meta_Synthetic.jsonl"], Path(tmp) / "prep", frac=1.0,
                min_per_category=0)
        table = read_prepared(Path(tmp) / "prep").slice(0, n)
        ds = ProductDataset(table, create_transforms(cfg, True), ImageStore(None), images)
        collate = Collator(create_tokenizer(cfg), cfg.input.max_length, pad_to_max)
        return [collate([ds[i] for i in range(s, s + batch_size)]) for s in range(0, n, batch_size)]
