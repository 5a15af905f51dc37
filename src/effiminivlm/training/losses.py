"""Losses, by name from the recipe's `train.loss` (never guessed from the model name).

The paper's loss: Huber (delta 1) weighted per item by w_i = min(log(1 + r_i) / mu, cap), r_i the item's
`rating_number` and mu the mean of log(1 + r) over the TRAIN split. Why: an item rated by thousands has a
trustworthy `average_rating`; one rated twice is mostly noise. Validation and test use the unweighted loss,
so numbers stay comparable across weightings.

Each builder declares the parameters it uses; `create_loss` passes it only those, so a loss never receives
(and silently ignores) a setting that belongs to another one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from effiminivlm.errors import EffiMiniVLMError, UnknownNameError
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
    return torch.clamp(torch.log1p(rating_number.float().clamp(min=0)) / mu, max=cap)


@LOSSES.register("weighted_huber")
def weighted_huber(mu: float, delta: float = 1.0, cap: float = 5.0) -> LossFn:
    """loss(pred, target, rating_number) = mean_i w_i * huber_delta(pred_i - target_i)."""

    def loss(pred: torch.Tensor, target: torch.Tensor, rating_number: torch.Tensor) -> torch.Tensor:
        per_item = F.huber_loss(pred.float(), target.float(), delta=delta, reduction="none")
        return (rating_weights(rating_number, mu, cap) * per_item).mean()

    return loss


@LOSSES.register("huber")
def huber(delta: float = 1.0) -> LossFn:
    """Unweighted Huber: the validation/test loss, and an ablation of the weighting."""

    def loss(pred: torch.Tensor, target: torch.Tensor, rating_number: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(pred.float(), target.float(), delta=delta)

    return loss


def create_loss(name: str, **params: Any) -> LossFn:
    """The loss registered as `name` (see LOSSES.names()), given those of `params` its builder declares.

    The training loop offers everything it knows (mu, delta, cap); `huber` takes only `delta`. An unknown
    `name` is an UnknownNameError listing the registered losses.
    """
    builder = LOSSES.get(name)
    declared = inspect.signature(builder).parameters
    return builder(**{k: v for k, v in params.items() if k in declared})


def check_recipe_names(recipe: Recipe) -> None:
    """Every registered name a training recipe holds (arch, encoders, head, loss) exists: checked as the
    recipe loads, so a typo fails in a second instead of after the data is read and the model built."""
    check_model_names(recipe.model)
    try:
        LOSSES.get(recipe.train.loss)
    except EffiMiniVLMError as e:
        raise UnknownNameError(f"train.loss: {e}") from None
