"""The fast path without torch: a model folder's recorded plan (`serving.plan`) run with OpenVINO, the
`tokenizers` library, Pillow and numpy.

Why: importing torch, timm (with torchvision and torch._dynamo) and transformers took ~7 of the ~8 s a
`predict` of 32 items waited, only to rebuild a model whose towers then ran in OpenVINO anyway. When the
fast path has run once for a folder on this machine (same files, versions, precision, cores and CPU), this
scorer computes the same thing from the plan: the same rows in the same length-sorted batches, the same
tokens (the tokenizer the scorer used, saved with the plan, with the same truncation and padding), the same
uint8 pixels (draft JPEG decode, RGB, bicubic resize: `models.processor.Processor.transform(raw=True)`)
normalised as `models.optimize` does, the same compiled graphs of the towers and the head
(`ovgraph.CompiledGraph`), the same image fallbacks and their counts: the same scores, bit for bit.

`LeanScorer.load` returns None whenever that is not exactly the case (no plan yet, a GPU that torch might
pick, fp32 asked, DataLoader workers, the "mean" image mode, a stored precision choice measured on another
CPU): the caller then takes the PyTorch path, which records the plan for next time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from effiminivlm.data.batches import length_sorted_batches, restore_order
from effiminivlm.data.images import ImageStore
from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.data.text import table_texts
from effiminivlm.runtime import (
    cuda_absent,
    default_num_workers,
    fetch_threads,
    resolve_precision,
    usable_cores,
)
from effiminivlm.serving.plan import plan_key, read_plan


@dataclass
class LeanResult:
    """The fields of `inference.InferenceResult` a scoring command reads, in input-row order."""

    item_id: list[str] = field(default_factory=list)
    pred: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    image_status: Counter[str] = field(default_factory=Counter)
    item_image_status: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _stored_choice_applies(folder: Path) -> bool:
    """False when the folder's fast.json was measured on a CPU with other ISA facts: the PyTorch path then
    sets it aside with its warning (`models.quantize.read_variants`)."""
    from effiminivlm.ovgraph import isa_facts

    path = folder / "fast.json"
    if not path.is_file():
        return True
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("isa") == isa_facts()
    except (OSError, ValueError, AttributeError):
        return False  # damaged: the PyTorch path says so in one line


class LeanScorer:
    """The `serving.scorer.Scorer` surface `predict` uses (`score_table`, `intervals`, `images`, `source`,
    `model_dir`), computed from a recorded plan without torch."""

    def __init__(self, plan: dict[str, Any], model_dir: Path, images: str, batch_size: int) -> None:
        from effiminivlm.ovgraph import CompiledGraph

        self.plan = plan
        self.model_dir = model_dir
        self.source = str(model_dir)
        self.batch_size = batch_size
        towers = plan["towers"]
        self.images = images if "image" in towers else "none"
        self.graphs = {kind: CompiledGraph(t["graph"], t["precision"], t["threads"], t["streams"])
                       for kind, t in towers.items()}
        self.tokenizer = None
        if "text" in towers:
            from tokenizers import Tokenizer

            tok = plan["tokenizer"]
            self.tokenizer = Tokenizer.from_file(str(Path(plan["dir"]) / "tokenizer.json"))
            self.tokenizer.enable_truncation(plan["max_length"], stride=0, strategy="longest_first",
                                             direction=tok["truncation_side"])
            self.tokenizer.enable_padding(direction=tok["padding_side"], pad_id=tok["pad_id"],
                                          pad_type_id=tok["pad_type_id"], pad_token=tok["pad_token"])
        size = int(plan["image_size"])
        self.size = (size, size)
        self.scale = np.asarray(plan.get("scale", [1.0] * 3), dtype=np.float32).reshape(1, 3, 1, 1)
        self.shift = np.asarray(plan.get("shift", [0.0] * 3), dtype=np.float32).reshape(1, 3, 1, 1)
        self.conformal: dict[str, Any] | None = None
        self.cost = (float("nan"), float("nan"))  # (params in M, FLOPs in G): the folder's, set by `load`

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str | None = None, precision: str = "auto",
             images: str = "first", batch_size: int = 64, num_workers: int = 0) -> LeanScorer | None:
        """The torch-free scorer of `model_dir`, or None when the PyTorch scorer must run (see the module)."""
        folder = Path(model_dir)
        if not cuda_absent(device) or default_num_workers(num_workers) or images not in ("first", "none"):
            return None
        try:
            prec = resolve_precision(precision, "cpu")
        except ValueError:
            return None  # the PyTorch path refuses it in its own words
        if prec == "fp32" or not (_importable("openvino") and _importable("tokenizers")):
            return None
        from effiminivlm.protocol.cost import read_stored_profile

        key = plan_key(folder, prec, usable_cores())
        plan = read_plan(key) if key is not None else None
        if plan is None or not _stored_choice_applies(folder):
            return None
        stored = read_stored_profile(folder)
        cost = (stored.params_m, stored.flops_g) if stored is not None else \
            (plan["cost"]["params_m"], plan["cost"]["flops_g"])
        from effiminivlm.evaluation.conformal import load_conformal

        scorer = cls(plan, folder, images, batch_size)
        scorer.conformal = load_conformal(folder)
        scorer.cost = cost
        return scorer

    def intervals(self, scores: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The model's conformal intervals around `scores` ({} for a model saved without them)."""
        from effiminivlm.evaluation.conformal import intervals

        return intervals(scores, self.conformal) if self.conformal is not None else {}

    def pixels(self, img: Image.Image) -> np.ndarray:
        """uint8 [3, S, S]: bicubic resize of the RGB image, as torchvision's Resize + PILToTensor do."""
        return np.asarray(img.resize(self.size[::-1], Image.Resampling.BICUBIC), dtype=np.uint8
                          ).transpose(2, 0, 1)

    def _encode_images(self, imgs: list[list[np.ndarray]]) -> np.ndarray:
        """[B, image_dim] features; rows without an image are zeros (`models.regressor.encode_image`)."""
        out = np.zeros((len(imgs), int(self.plan["image_dim"])), dtype=np.float32)
        has = [bool(i) for i in imgs]
        if any(has):
            raw = np.stack([i[0] for i in imgs if i]).astype(np.float32)
            out[np.asarray(has)] = self.graphs["image"].run([raw * self.scale + self.shift])
        return out

    def _forward(self, texts: list[str], imgs: list[list[np.ndarray]]) -> np.ndarray:
        feats = []
        if "image" in self.graphs:
            feats.append(self._encode_images(imgs))
        if self.tokenizer is not None:
            enc = self.tokenizer.encode_batch(texts)
            ids = np.asarray([e.ids for e in enc], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
            feats.append(self.graphs["text"].run([ids, mask]))
        fused = np.concatenate(feats, axis=-1).astype(np.float32, copy=False)
        return self.graphs["head"].run([fused])[:, 0]

    def score_table(self, table: pa.Table, store: ImageStore | None = None, progress: bool = True
                    ) -> LeanResult:
        """Predictions (clipped to [1, 5]) for every row of `table`, in row order, as `Scorer.score_table`."""
        from tqdm.auto import tqdm

        table = table.combine_chunks()
        store = store if store is not None else ImageStore(None)
        cols = {c: table.column(c).to_pylist() for c in ("parent_asin", "images")}
        texts = table_texts(table)
        mode = self.images
        draft = max(self.size) if mode != "none" else None

        def load(i: int) -> tuple[list[np.ndarray], str]:
            return store.load_images(cols["images"][i] or [], mode, self.pixels, draft=draft)

        res = LeanResult()
        preds, rows, statuses = [], [], []
        start = time.perf_counter()
        threads = fetch_threads(0)
        with ThreadPoolExecutor(threads, thread_name_prefix="effiminivlm-fetch") as pool:
            batches = length_sorted_batches([len(t) for t in texts], self.batch_size)
            for batch in tqdm(batches, desc="score", unit="batch", disable=not progress, leave=False):
                loaded = list(pool.map(load, batch)) if threads > 1 and len(batch) > 1 else \
                    [load(i) for i in batch]
                preds.append(self._forward([texts[i] for i in batch], [imgs for imgs, _ in loaded]))
                rows += batch
                statuses += [status for _, status in loaded]
        res.seconds = time.perf_counter() - start
        where = restore_order(rows, table.num_rows)
        pred = np.concatenate(preds).astype(np.float64) if preds else np.zeros(0)
        res.pred = np.clip(pred[where], *RATING_RANGE)  # inference.SCORE_RANGE
        res.item_id = [str(cols["parent_asin"][i]) for i in range(table.num_rows)]
        res.item_image_status = [statuses[k] for k in where]
        res.image_status = Counter(res.item_image_status)
        return res
