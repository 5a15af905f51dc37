"""The hybrid probe (`arch: hybrid-probe`): EffiMiniVLM's frozen towers and linear head, plus a lexical
block (TF-IDF of the model's text), a listing block (cold-start fields and the store's rating prior) and a
neighbours block (the ratings of the train items most like this one, in the towers' feature space).

    rating = head(f) + tfidf(text) . w_lex + listing(fields) . w_listing + g * neighbours(f)
    f = [image; text] tower features;  neighbours(f) = sum_j a_j w_j y_j / sum_j a_j w_j over the k train
    items j of highest cosine(z(f), z_j), a_j = exp((cos_j - cos_max) / T), z = standardised and unit length

Why one model and not a side script: a small shop's best model must be saved, reloaded, evaluated, served
and Ray-scored like every other, through the same `Scorer` / `inference` path. Its processor turns a batch's
rows into the extra inputs: `lexical` (a sparse [B, n_terms] TF-IDF matrix, rebuilt from the saved
vocabulary and idf) and `listing` ([B, k] from the `listing` column, `data.listing`). `training.hybrid`
fits every block in closed form and writes the weights here; the intercept lives in the head's bias.
`training.offset` (`train.lexical_offset`) fine-tunes the towers and an MLP head of the same model on top
of a fitted lexical block: its train rows carry the block's leave-one-out prediction as `offset`, which the
batch then holds as `lexical_offset` in place of the TF-IDF rows (training only; scoring computes TF-IDF).

The neighbours block keeps its train items' standardised features, ratings and sample weights as frozen
parameters (saved with the weights; `profile` counts them in P, and its top-k search in F). Why a block and
not a bigger ridge: on 5,773 real Fashion titles a listing's nearest train titles carry rating signal the
linear blocks miss (+0.012 PLCC over the linear hybrid, 5-fold, docs/realdata.md).

Saved: config.json (`model:` holds the blocks' sizes) + model.safetensors (towers, head, the lexical and
listing weights, the neighbour table) + `hybrid.json` (vocabulary, idf, the store table and fallbacks as
plain data; no pickle).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from effiminivlm.config import EffiMiniVLMCfg, HeadCfg, ModelCfg
from effiminivlm.data.dataset import Sample
from effiminivlm.data.lexical import LexicalFeatures
from effiminivlm.data.listing import LISTING_FEATURES, ListingEncoder, parse_listing
from effiminivlm.errors import WeightsError
from effiminivlm.files import atomic_write_text
from effiminivlm.models.archs import register_arch
from effiminivlm.models.processor import Processor
from effiminivlm.models.regressor import EffiMiniVLM
from effiminivlm.typed import check_int, check_number

__all__ = ["HYBRID_NAME", "HybridProbe", "HybridProcessor", "NeighbourTable", "hybrid_from", "nearest",
           "neighbour_mean"]
HYBRID_NAME = "hybrid.json"


@dataclass
class HybridCfg(EffiMiniVLMCfg):
    """EffiMiniVLM's config plus the blocks' sizes (so the weights' shapes are known before `hybrid.json` is
    read) and which blocks the fit used. Written by `training.hybrid`, never by hand: a recipe trains a
    hybrid through `train.probe_features`."""

    arch: str = "hybrid-probe"
    head: HeadCfg = field(default_factory=lambda: HeadCfg(hidden_dims=[], dropout=0.0))
    lexical_terms: int = 0  # 0: no lexical block
    listing_features: int = 0  # 0: no listing block
    tower: bool = True  # False: the head's weights are zero (the towers still run; their output is unused)
    neighbour_items: int = 0  # 0: no neighbours block; else the train items it keeps
    neighbour_k: int = 0
    neighbour_temperature: float = 0.0  # 0: the k neighbours weigh alike (by their sample weights)

    @property
    def reads_towers(self) -> bool:
        """Whether the model's output depends on the towers' features (the tower or neighbours block)."""
        return self.tower or self.neighbour_items > 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("lexical_terms", self.lexical_terms, 0)  # a damaged config.json: one line naming it
        check_int("listing_features", self.listing_features, 0)
        check_int("neighbour_items", self.neighbour_items, 0)
        if self.neighbour_items:
            check_int("neighbour_k", self.neighbour_k, 1, self.neighbour_items)
            check_number("neighbour_temperature", self.neighbour_temperature, ge=0)


class HybridProcessor(Processor):
    """EffiMiniVLM's batch plus `lexical` (sparse TF-IDF) and `listing` (the listing block, raw scale);
    `listing_fallbacks` counts the rows that had no listing fields (scored with the train means)."""

    def __init__(self, cfg: ModelCfg, tokenizer: Any, lexical: LexicalFeatures | None,
                 listing: ListingEncoder | None) -> None:
        super().__init__(cfg, tokenizer)
        self.lexical, self.listing = lexical, listing
        self.listing_fallbacks = 0

    def extra(self, samples: list[Sample]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        offsets = [s.offset for s in samples]
        if self.lexical is not None and all(o is not None for o in offsets):
            # training rows of `train.lexical_offset`: the block's leave-one-out prediction, not its
            # in-sample one (which would have fit their own ratings), so no TF-IDF is computed
            out["lexical_offset"] = torch.tensor(offsets, dtype=torch.float32)
        elif any(o is not None for o in offsets):
            raise ValueError("a batch mixes rows with and without an `offset`; the lexical block cannot "
                             "score some rows by their offset and the others by TF-IDF")
        elif self.lexical is not None:
            out["lexical"] = _sparse(self.lexical.transform([s.text for s in samples]))
        if self.listing is not None:
            block, missing = self.listing.transform(
                [parse_listing(s.fields.get("listing")) for s in samples], [s.n_refs for s in samples],
                [s.fields.get("description", "") for s in samples])
            self.listing_fallbacks += missing
            out["listing"] = torch.as_tensor(block, dtype=torch.float32)
        return out


def _sparse(x: Any) -> torch.Tensor:
    """scipy CSR -> torch sparse COO float32 (moves to a device with the batch)."""
    coo = x.tocoo()
    index = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
    return torch.sparse_coo_tensor(index, torch.as_tensor(coo.data, dtype=torch.float32), coo.shape,
                                   check_invariants=False)  # built from a valid scipy matrix


def _frozen(*shape: int) -> torch.nn.Parameter:
    """A zero parameter without gradient (the blocks are solved in closed form)."""
    return torch.nn.Parameter(torch.zeros(*shape), requires_grad=False)


class _Weights(torch.nn.Module):
    """One fitted weight vector (no gradient: the blocks are solved in closed form)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = _frozen(n)


def _f32(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


def nearest(query: torch.Tensor, keys: torch.Tensor, k: int, self_offset: int | None = None,
            chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosines [B, k] in descending order, indices [B, k]) of the k rows of `keys` nearest to each row of
    `query` (both unit length). With `self_offset`, query row i is key row self_offset + i and is left out
    (leave-one-out over the train items). Chunked: [chunk, N] similarities at a time."""
    sims, idx = [], []
    for start in range(0, query.shape[0], chunk):
        s = query[start:start + chunk] @ keys.T
        if self_offset is not None:
            rows = torch.arange(s.shape[0])
            s[rows, rows + self_offset + start] = -torch.inf
        top = s.topk(k, dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims), torch.cat(idx)


def neighbour_mean(sims: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, weights: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """[B]: the mean of `values` over each row's neighbours `idx`, weighted by their sample `weights` and by
    exp((cosine - the row's highest cosine) / temperature) (0: by the sample weights alone). The shift by the
    highest cosine leaves the weights' ratios as they are and keeps a low temperature from underflowing."""
    w = weights[idx]
    if temperature > 0:
        w = w * torch.exp((sims - sims[:, :1]) / temperature)
    return (w * values[idx]).sum(1) / w.sum(1)


class NeighbourTable(torch.nn.Module):
    """The neighbours block: its train items' standardised, unit-length features (`keys`), ratings and
    sample weights, the standardisation, and the stack's gain (`weight`). Frozen parameters, not buffers, so
    P counts the table the model cannot score without. `training.hybrid` fills it (`fill`)."""

    def __init__(self, items: int, dim: int, k: int, temperature: float) -> None:
        super().__init__()
        self.k, self.temperature = k, temperature
        self.weight, self.shift, self.scale = _frozen(1), _frozen(dim), _frozen(dim)
        self.keys, self.values, self.weights = _frozen(items, dim), _frozen(items), _frozen(items)

    @torch.no_grad()
    def fill(self, features: np.ndarray, ratings: np.ndarray, weights: np.ndarray, shift: np.ndarray,
             scale: np.ndarray, gain: float = 1.0) -> NeighbourTable:
        """Store train items (raw features [N, dim], ratings, sample weights) and the standardisation."""
        self.shift.copy_(_f32(shift))
        self.scale.copy_(_f32(scale))
        self.keys.copy_(self.embed(_f32(features)))
        self.values.copy_(_f32(ratings))
        self.weights.copy_(_f32(weights))
        self.weight.fill_(gain)
        return self

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Features [B, dim] -> the unit-length standardised vectors the keys are."""
        return F.normalize((features.float() - self.shift) * self.scale, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        sims, idx = nearest(self.embed(features), self.keys, self.k)
        return self.weight * neighbour_mean(sims, idx, self.values, self.weights, self.temperature)

    @torch.no_grad()
    def predict(self, features: np.ndarray) -> np.ndarray:
        """`forward` on a numpy feature matrix (a fit's val / test rows, cached features)."""
        return self(_f32(features)).double().numpy()


@register_arch("hybrid-probe")
class HybridProbe(EffiMiniVLM):
    """EffiMiniVLM + lexical and listing blocks, all linear (see the module docstring)."""

    Config = HybridCfg
    cfg: HybridCfg
    tiny_recipe = "hybrid-probe-tiny"  # (not EffiMiniVLM's `tiny`: that trains no hybrid)
    tower_arch = "effiminivlm"  # whose towers these are: feature caches of the probe fit this model
    side_modules = ("lexical_block", "listing_block", "neighbour_block")  # outside the towers and the head
    exportable = False  # `export` refuses it in one line: the TF-IDF and listing blocks are Python code

    def __init__(self, cfg: ModelCfg, pretrained: bool = False) -> None:
        super().__init__(cfg, pretrained)
        # Modules of their own, so `profile` lists them as parts: P with and without the lexical weights
        self.lexical_block = _Weights(self.cfg.lexical_terms)
        self.listing_block = _Weights(self.cfg.listing_features)
        self.neighbour_block = (NeighbourTable(self.cfg.neighbour_items, self.image_dim + self.text_dim,
                                            self.cfg.neighbour_k, self.cfg.neighbour_temperature)
                                if self.cfg.neighbour_items else None)
        self.lexical: LexicalFeatures | None = None
        self.listing: ListingEncoder | None = None

    def attach(self, lexical: LexicalFeatures | None, listing: ListingEncoder | None) -> None:
        """The fitted vectorizers / encoder whose outputs the weights multiply."""
        if (lexical.n_terms if lexical else 0) != self.cfg.lexical_terms:
            raise WeightsError(f"lexical block: {lexical.n_terms if lexical else 0} terms, model has "
                               f"{self.cfg.lexical_terms} weights")
        if (len(LISTING_FEATURES) if listing else 0) != self.cfg.listing_features:
            raise WeightsError(f"listing block: the model has {self.cfg.listing_features} weights, this "
                               f"version computes {len(LISTING_FEATURES)} features")
        self.lexical, self.listing = lexical, listing

    def processor(self, tokenizer: Any) -> HybridProcessor:
        return HybridProcessor(self.cfg, tokenizer, self.lexical, self.listing)

    def score_features(self, fused: torch.Tensor) -> torch.Tensor:
        """The head's rating of the tower features, plus the neighbours block's term."""
        out = super().score_features(fused)
        if self.neighbour_block is not None:
            out = out + self.neighbour_block(fused)
        return out

    def forward_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        out = super().forward_batch(batch)
        with torch.autocast(out.device.type, enabled=False):
            if self.cfg.lexical_terms and batch.get("lexical_offset") is not None:
                out = out + batch["lexical_offset"].to(out.device, torch.float32)  # training.offset's rows
            elif self.cfg.lexical_terms:
                if batch.get("lexical") is None:
                    raise ValueError("the hybrid probe reads `lexical` (its processor's TF-IDF); build "
                                     "batches with model.processor(tokenizer)")
                x = batch["lexical"].to(out.device, torch.float32)
                out = out + torch.sparse.mm(x, self.lexical_block.weight.unsqueeze(-1)).squeeze(-1)
            if self.cfg.listing_features:
                if batch.get("listing") is None:
                    raise ValueError("the hybrid probe reads `listing` (its processor's listing block); "
                                     "build batches with model.processor(tokenizer)")
                out = out + batch["listing"].to(out.device, torch.float32) @ self.listing_block.weight
        return out

    def example_batch(self, image_size: int | None = None, length: int | None = None) -> dict[str, Any]:
        """The towers' canonical input plus one empty TF-IDF row and a zero listing row."""
        batch = super().example_batch(image_size, length)
        if self.cfg.lexical_terms:
            batch["lexical"] = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0),
                                                       (1, self.cfg.lexical_terms), check_invariants=False)
        if self.cfg.listing_features:
            batch["listing"] = torch.zeros(1, self.cfg.listing_features)
        return batch

    def num_params_by_part(self) -> dict[str, int]:
        """EffiMiniVLM's parts plus the lexical and listing weights and the neighbour table (parameters too:
        P counts them)."""
        table = self.neighbour_block
        return {**super().num_params_by_part(), "lexical": self.cfg.lexical_terms,
                "listing": self.cfg.listing_features,
                "neighbours": sum(p.numel() for p in table.parameters()) if table is not None else 0}

    def save_pretrained(self, save_dir: str | Path, tokenizer: Any = None) -> Path:
        out = super().save_pretrained(save_dir, tokenizer=tokenizer)
        data = {"lexical": self.lexical.to_data() if self.lexical else None,
                "listing": self.listing.to_dict() if self.listing else None}
        atomic_write_text(out / HYBRID_NAME, json.dumps(data, ensure_ascii=False) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, load_dir: str | Path, device: str | torch.device = "cpu") -> HybridProbe:
        model = super().from_pretrained(load_dir, device=device)
        path = Path(load_dir) / HYBRID_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            lexical = LexicalFeatures.from_data(data["lexical"]) if data.get("lexical") else None
            listing = ListingEncoder.from_dict(data["listing"]) if data.get("listing") else None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{path}: cannot read the hybrid probe's blocks ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None
        assert isinstance(model, HybridProbe)
        model.attach(lexical, listing)
        return model


def hybrid_from(model: torch.nn.Module, lexical: LexicalFeatures | None, listing: ListingEncoder | None,
                tower: bool = True, neighbours: tuple[int, int, float] = (0, 0, 0.0)) -> HybridProbe:
    """A HybridProbe with `model`'s (an EffiMiniVLM's) towers and head, weights copied, and blocks sized for
    `lexical` / `listing` / `neighbours` (items, k, temperature; their weights zero until the caller writes
    the fitted ones). One builder for the closed-form hybrid (`training.hybrid`) and fine-tuning on a
    lexical offset (`training.offset`)."""
    base = {f.name: getattr(model.cfg, f.name) for f in dataclasses.fields(EffiMiniVLMCfg) if f.init}
    items, k, temperature = neighbours
    cfg = HybridCfg(**{**base, "arch": "hybrid-probe"}, lexical_terms=lexical.n_terms if lexical else 0,
                    listing_features=len(LISTING_FEATURES) if listing else 0, tower=tower,
                    neighbour_items=items, neighbour_k=k, neighbour_temperature=temperature)
    hybrid = HybridProbe(cfg, pretrained=False)
    depth = getattr(model.text_encoder, "depth", None)
    if depth is not None and depth < hybrid.text_encoder.depth:  # a probe's tower cut to its best depth
        hybrid.text_encoder.truncate(depth)
    missing, unexpected = hybrid.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith(HybridProbe.side_modules) for k in missing):
        raise WeightsError(f"{type(model).__name__} does not fit the hybrid probe's towers and head "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    hybrid.attach(lexical, listing)
    return hybrid
