from __future__ import annotations

import inspect
import math

import pytest
import torch

from effiminivlm.data.dataset import rating_weight_mu
from effiminivlm.errors import UnknownNameError
from effiminivlm.training.losses import LOSSES, create_loss, rating_weights


def test_weights_follow_the_paper_formula_and_cap():
    r = torch.tensor([0.0, 1.0, 10.0, 1e9])
    mu = 2.0
    w = rating_weights(r, mu, cap=5.0)
    expected = [0.0, math.log(2) / 2, math.log(11) / 2, 5.0]
    assert w.tolist() == pytest.approx(expected)


def test_mu_is_mean_log1p():
    assert rating_weight_mu([0, 1, 3]) == pytest.approx((0 + math.log(2) + math.log(4)) / 3)
    with pytest.raises(ValueError):
        rating_weight_mu([])


def test_weighted_huber_matches_hand_computation():
    pred = torch.tensor([4.0, 1.0, 3.0])
    target = torch.tensor([4.5, 4.0, 3.0])
    counts = torch.tensor([9.0, 99.0, 0.0])
    mu = 2.0
    loss = create_loss("weighted_huber", mu=mu)(pred, target, counts)
    w = [math.log(10) / 2, math.log(100) / 2, 0.0]
    h = [0.5 * 0.25, 3.0 - 0.5, 0.0]  # |err| 0.5 -> quadratic, |err| 3 -> linear (delta 1)
    assert float(loss) == pytest.approx(sum(a * b for a, b in zip(w, h, strict=True)) / 3, rel=1e-6)


def test_unweighted_huber_ignores_counts():
    pred, target = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0])
    a = create_loss("huber", mu=1.0)(pred, target, torch.tensor([0.0, 0.0]))
    b = create_loss("huber", mu=1.0)(pred, target, torch.tensor([1e6, 3.0]))
    assert float(a) == float(b) == pytest.approx(0.25)


def test_unknown_loss_suggests_names():
    with pytest.raises(UnknownNameError, match="did you mean weighted_huber"):
        create_loss("weighted_hubr", mu=1.0)
    assert set(LOSSES.names()) >= {"huber", "weighted_huber"}


def test_each_loss_receives_only_the_parameters_it_declares(monkeypatch):
    # huber has no use for the weighting's mu and cap: it does not take them
    assert list(inspect.signature(LOSSES.get("huber")).parameters) == ["delta"]
    pred, target, counts = torch.tensor([1.0, 4.0]), torch.tensor([4.0, 4.0]), torch.tensor([5.0, 5.0])
    # everything the loop knows is offered; huber uses its delta (|err| 3 with delta 2: 2 * (3 - 1) = 4)
    loss = create_loss("huber", mu=0.7, delta=2.0, cap=3.0)(pred, target, counts)
    assert float(loss) == pytest.approx((4.0 + 0.0) / 2)
    seen: list[dict] = []

    def only_delta(delta: float):
        seen.append({"delta": delta})
        return lambda p, t, r: (p - t).abs().mean() * delta

    monkeypatch.setitem(LOSSES._items, "only_delta", only_delta)
    fn = create_loss("only_delta", mu=0.7, delta=0.5, cap=3.0)
    assert seen == [{"delta": 0.5}]
    assert float(fn(pred, target, counts)) == pytest.approx(0.75)
    # weighted_huber still gets mu and cap: a lower cap lowers the loss of a heavily rated item
    big = torch.tensor([1e6, 1e6])
    capped = create_loss("weighted_huber", mu=1.0, delta=1.0, cap=1.0)(pred, target, big)
    uncapped = create_loss("weighted_huber", mu=1.0, delta=1.0, cap=5.0)(pred, target, big)
    assert float(uncapped) == pytest.approx(5 * float(capped))
