"""Losses, by name from the recipe's `train.loss` (never guessed from the model name), alone or mixed.

`train.loss` is a registered name (`weighted_huber`, the paper's) or a weighted mixture whose parameters
are nested under each term, so no loss receives a setting that belongs to another one:

    loss: {weighted_huber: 1.0, plcc: 0.5, rank: 0.2}
    loss: {composite: 1.0, rank: {weight: 0.2, margin: 0.25, kind: hinge}}

Every loss is `fn(pred, target, weight) -> scalar`, `weight` the per-item sample weights the training loop
computes from `train.sample_weights` (rating_count: the paper's min(log(1 + r) / mu, cap); inverse_bin_freq:
PinCO's; none: 1), see `training.weights`. Pointwise terms take the mean of weight x per-item loss; the
batch-level terms (plcc, composite's correlation, rank) are unweighted statistics of the whole batch.

Batch-level terms on degenerate batches: with fewer than 2 items, or all targets equal, the correlation is
undefined and `plcc` (and composite's correlation part) is 0 with a zero gradient; `rank` is 0 when no pair's
targets differ by more than its margin. Under gradient accumulation the loop computes the loss on the whole
batch (see `loop.train_step`), so these statistics never shrink to a micro-batch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from effiminivlm.data.schema import RATING_RANGE
from effiminivlm.errors import ConfigError, EffiMiniVLMError, UnknownNameError
from effiminivlm.models.archs import check_model_names
from effiminivlm.registry import Registry

if TYPE_CHECKING:
    from effiminivlm.config import Recipe

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[Callable[..., LossFn]] = Registry("loss")


def rating_weights(rating_number: torch.Tensor, mu: float, cap: float = 5.0) -> torch.Tensor:
    """w_i = min(log(1 + r_i) / mu, cap); mu > 0 is the train-split mean of log(1 + r)."""
    if mu <= 0:
        raise ValueError(f"mu must be positive, got {mu}")
    return torch.clamp(torch.log1p(_f(rating_number).clamp(min=0)) / mu, max=cap)


def _positive(name: str, value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _f(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision inputs (bf16 / fp16 towers), float64 kept (exact tests)."""
    return x if x.dtype == torch.float64 else x.float()


def pearson(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor | None:
    """Pearson correlation of two [B] vectors, differentiable in `pred`; None when it is undefined (B < 2 or
    a constant target). `eps` keeps the gradient finite when the predictions are (nearly) constant."""
    p, t = _f(pred), _f(target)
    if p.numel() < 2:
        return None
    tc = t - t.mean()
    if float((tc * tc).mean()) < 1e-12:
        return None
    pc = p - p.mean()
    return (pc * tc).mean() / torch.sqrt((pc * pc).mean() * (tc * tc).mean() + eps)


def _zero(pred: torch.Tensor) -> torch.Tensor:
    """0 that still belongs to the graph (backward works, gradient 0)."""
    return _f(pred).sum() * 0.0


@LOSSES.register("mse")
def mse() -> LossFn:
    """mean_i w_i (pred_i - target_i)^2."""
    return lambda pred, target, weight: (weight * (_f(pred) - _f(target)) ** 2).mean()


@LOSSES.register("huber")
def huber(delta: float = 1.0) -> LossFn:
    """mean_i w_i huber_delta(pred_i - target_i) (quadratic within delta, linear beyond)."""
    delta = _positive("huber.delta", delta)

    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (weight * F.huber_loss(_f(pred), _f(target), delta=delta, reduction="none")).mean()

    return loss


@LOSSES.register("bce")
def bce() -> LossFn:
    """Multi-label (a classification head): mean_i w_i mean_k BCE(sigmoid(logit_ik), y_ik), `pred` the
    [B, K] logits and `target` the [B, K] multi-hot labels."""

    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if pred.ndim != 2 or target.shape != pred.shape:
            raise EffiMiniVLMError(f"loss bce needs [B, K] logits and labels (a multilabel model), got "
                                   f"{tuple(pred.shape)} and {tuple(target.shape)}")
        per_item = F.binary_cross_entropy_with_logits(_f(pred), _f(target), reduction="none").mean(1)
        return (weight * per_item).mean()

    return loss


# The paper's loss: Huber weighted by the sample weights (train.sample_weights: rating_count by default).
LOSSES.register("weighted_huber")(huber)


@LOSSES.register("smooth_l1")
def smooth_l1(beta: float = 1.0) -> LossFn:
    """mean_i w_i smooth_l1_beta(pred_i - target_i) (= huber_beta / beta)."""
    beta = _positive("smooth_l1.beta", beta)

    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (weight * F.smooth_l1_loss(_f(pred), _f(target), beta=beta, reduction="none")).mean()

    return loss


@LOSSES.register("plcc")
def plcc() -> LossFn:
    """1 - Pearson(pred, target) over the batch: what the leaderboard rewards, blind to scale and offset."""

    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        r = pearson(pred, target)
        return _zero(pred) if r is None else 1.0 - r

    return loss


@LOSSES.register("composite")
def composite(mse_weight: float = 0.5) -> LossFn:
    """olacnqoddchl's mse_weight x MSE + (1 - mse_weight) x (1 - rho), rho the batch Pearson: the MSE keeps
    the scale, the correlation term the ranking the metric measures."""
    if not isinstance(mse_weight, int | float) or not 0 <= mse_weight <= 1:
        raise ConfigError(f"composite.mse_weight must be in [0, 1], got {mse_weight!r}")
    point = mse()

    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        r = pearson(pred, target)
        corr = _zero(pred) if r is None else 1.0 - r
        return mse_weight * point(pred, target, weight) + (1.0 - mse_weight) * corr

    return loss


@LOSSES.register("rank")
def rank(margin: float = 0.1, kind: str = "logistic", scale: float = 5.0, hinge: float = 0.1) -> LossFn:
    """Pairwise ranking over the batch's pairs (i, j) whose targets differ by more than `margin`, s = sign
    of the target difference, d = pred_i - pred_j: `logistic` mean softplus(-scale s d) (RankNet), `hinge`
    mean relu(hinge - s d). 0 when the batch holds no such pair."""
    if kind not in ("logistic", "hinge"):
        raise ConfigError(f"rank.kind must be logistic or hinge, got {kind!r}")
    if not isinstance(margin, int | float) or margin < 0:
        raise ConfigError(f"rank.margin must be a number >= 0, got {margin!r}")
    scale = _positive("rank.scale", scale)
    if not isinstance(hinge, int | float) or hinge < 0:
        raise ConfigError(f"rank.hinge must be a number >= 0, got {hinge!r}")

    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        p, t = _f(pred), _f(target)
        dt = t[:, None] - t[None, :]
        mask = torch.triu(dt.abs() > margin, diagonal=1)  # each unordered pair once
        if not bool(mask.any()):
            return _zero(pred)
        s, d = torch.sign(dt[mask]), (p[:, None] - p[None, :])[mask]
        per_pair = F.softplus(-scale * s * d) if kind == "logistic" else F.relu(hinge - s * d)
        return per_pair.mean()

    return loss


def rating_distribution(x: torch.Tensor, centers: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B, K] soft assignment of ratings to bin centers: softmax of -(x - c_k)^2 / (2 sigma^2)."""
    return torch.softmax(-((_f(x)[:, None] - centers[None, :]) ** 2) / (2 * sigma**2), dim=-1)


@LOSSES.register("kl")
def kl(bins: int = 9, sigma: float = 0.25) -> LossFn:
    """mean_i w_i KL(q_i || p_i) between the target's and the prediction's rating distributions over `bins`
    equal-spaced centers on [1, 5] (each a Gaussian of width `sigma` around the rating, normalised)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 1000:
        raise ConfigError(f"kl.bins must be an integer in [2, 1000], got {bins!r}")
    sigma = _positive("kl.sigma", sigma)

    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        centers = torch.linspace(*RATING_RANGE, bins, device=pred.device)
        log_p = torch.log_softmax(-((_f(pred)[:, None] - centers) ** 2) / (2 * sigma**2), dim=-1)
        q = rating_distribution(target, centers, sigma)
        per_item = (q * (torch.log(q.clamp(min=1e-30)) - log_p)).sum(-1)
        return (weight * per_item).mean()

    return loss


# ---------------------------------------------------------------------------------------------- mixtures


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: float
    params: dict[str, Any]


def parse_loss_spec(spec: str | dict[str, Any]) -> list[LossTerm]:
    """`train.loss` -> terms; names must be registered and parameters declared by their builder (else a
    one-line ConfigError / UnknownNameError naming `train.loss.<name>[.<param>]`)."""
    entries = {spec: 1.0} if isinstance(spec, str) else spec
    terms = []
    for name, entry in entries.items():
        try:
            builder = LOSSES.get(name)
        except EffiMiniVLMError as e:
            raise UnknownNameError(f"train.loss: {e}") from None
        params = dict(entry) if isinstance(entry, dict) else {}
        weight = float(params.pop("weight", 1.0) if isinstance(entry, dict) else entry)
        declared = inspect.signature(builder).parameters
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ConfigError(f"train.loss.{name}: unknown parameter(s) {', '.join(unknown)} "
                              f"(known: {', '.join(['weight', *declared])})")
        terms.append(LossTerm(name, weight, params))
    return terms


class MixedLoss:
    """sum_k weight_k x loss_k(pred, target, weight); `last` holds each term's value of the latest call."""

    def __init__(self, terms: list[tuple[str, float, LossFn]]) -> None:
        self.terms = terms
        self.last: dict[str, float] = {}

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        total = _zero(pred)
        for name, w, fn in self.terms:
            value = fn(pred, target, weight)
            self.last[name] = float(value.detach())
            total = total + w * value
        return total


def build_loss(spec: str | dict[str, Any], defaults: dict[str, Any] | None = None) -> MixedLoss:
    """The loss of a recipe's `train.loss`. `defaults` are offered to the builders that declare them and
    whose term does not set them (the loop offers `delta` = train.huber_delta)."""
    terms = []
    for term in parse_loss_spec(spec):
        builder = LOSSES.get(term.name)
        declared = inspect.signature(builder).parameters
        kwargs = {k: v for k, v in (defaults or {}).items() if k in declared} | term.params
        try:
            terms.append((term.name, term.weight, builder(**kwargs)))
        except ConfigError as e:
            raise ConfigError(f"train.loss.{e}") from None
    return MixedLoss(terms)


def create_loss(name: str, **params: Any) -> LossFn:
    """One registered loss given those of `params` its builder declares (an unknown `name` is an
    UnknownNameError listing the registered losses)."""
    builder = LOSSES.get(name)
    declared = inspect.signature(builder).parameters
    return builder(**{k: v for k, v in params.items() if k in declared})


def check_recipe_names(recipe: Recipe) -> None:
    """Every registered name a training recipe holds (arch, encoders, head, loss terms and their parameters)
    exists: checked as the recipe loads, so a typo fails in a second instead of after the data is read and
    the model built."""
    check_model_names(recipe.model)
    build_loss(recipe.train.loss, {"delta": recipe.train.huber_delta})
    names = {t.name for t in parse_loss_spec(recipe.train.loss)}
    task = getattr(recipe.model, "task", "rating")
    multilabel = task == "multilabel"
    if multilabel != ("bce" in names) or (multilabel and names != {"bce"}):
        raise ConfigError(f"train.loss {recipe.train.loss!r} does not fit model.task "
                          f"{task!r}: a multilabel head trains with "
                          "loss bce alone, a rating head with a rating loss")
