"""Each loss's value and gradient against a direct (numpy / loop) formula, mixtures, and recipe checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from effiminivlm.config import load_recipe
from effiminivlm.data.dataset import rating_weight_mu
from effiminivlm.errors import ConfigError, UnknownNameError
from effiminivlm.training.losses import LOSSES, build_loss, check_recipe_names, create_loss, rating_weights

PRED = [3.1, 4.6, 2.2, 4.0, 3.9, 1.5]
TARGET = [3.0, 4.8, 1.0, 4.2, 3.9, 2.5]
WEIGHT = [1.0, 0.5, 2.0, 1.5, 0.0, 1.0]


def _value_and_grad(name: str, params: dict | None = None, pred=PRED, target=TARGET, weight=WEIGHT):
    p = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    loss = create_loss(name, **(params or {}))(p, torch.tensor(target, dtype=torch.float64),
                                               torch.tensor(weight, dtype=torch.float64))
    loss.backward()
    return float(loss.detach()), p.grad.numpy()


def _numeric_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for i in range(len(x)):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        g[i] = (f(up) - f(down)) / (2 * h)
    return g


def test_paper_weights_follow_the_formula_and_cap():
    w = rating_weights(torch.tensor([0.0, 1.0, 10.0, 1e9]), 2.0, cap=5.0)
    assert w.tolist() == pytest.approx([0.0, math.log(2) / 2, math.log(11) / 2, 5.0])
    assert rating_weight_mu([0, 1, 3]) == pytest.approx((0 + math.log(2) + math.log(4)) / 3)


def test_mse_value_and_gradient():
    p, t, w = map(np.array, (PRED, TARGET, WEIGHT))
    value, grad = _value_and_grad("mse")
    assert value == pytest.approx(np.mean(w * (p - t) ** 2))
    np.testing.assert_allclose(grad, 2 * w * (p - t) / len(p), rtol=1e-9)


@pytest.mark.parametrize("name", ["huber", "weighted_huber"])
def test_huber_value_and_gradient(name):
    p, t, w = map(np.array, (PRED, TARGET, WEIGHT))
    delta = 0.5
    e = p - t
    direct = np.where(np.abs(e) <= delta, 0.5 * e**2, delta * (np.abs(e) - 0.5 * delta))
    value, grad = _value_and_grad(name, {"delta": delta})
    assert value == pytest.approx(np.mean(w * direct))
    np.testing.assert_allclose(grad, w * np.clip(e, -delta, delta) / len(p), rtol=1e-9)


def test_smooth_l1_is_huber_over_beta():
    beta = 0.5
    value, grad = _value_and_grad("smooth_l1", {"beta": beta})
    hv, hg = _value_and_grad("huber", {"delta": beta})
    assert value == pytest.approx(hv / beta)
    np.testing.assert_allclose(grad, hg / beta, rtol=1e-9)


def test_plcc_value_and_gradient_and_ignores_weights():
    p, t = np.array(PRED), np.array(TARGET)
    value, grad = _value_and_grad("plcc")
    r = np.corrcoef(p, t)[0, 1]
    assert value == pytest.approx(1 - r, abs=1e-7)
    pc, tc = p - p.mean(), t - t.mean()
    sp, st, n = pc.std(), tc.std(), len(p)
    dr = (tc / (sp * st) - r * pc / sp**2) / n  # d Pearson / d p_i (population moments)
    np.testing.assert_allclose(grad, -dr, rtol=1e-5, atol=1e-8)
    assert _value_and_grad("plcc", weight=[9.0] * 6)[0] == pytest.approx(value)
    # scale and offset of the prediction do not matter
    assert _value_and_grad("plcc", pred=list(3 * p + 7))[0] == pytest.approx(value, abs=1e-7)


def test_composite_is_half_mse_half_one_minus_rho():
    p, t, w = map(np.array, (PRED, TARGET, WEIGHT))
    value, grad = _value_and_grad("composite")
    mse_v, mse_g = _value_and_grad("mse")
    plcc_v, plcc_g = _value_and_grad("plcc")
    assert value == pytest.approx(0.5 * np.mean(w * (p - t) ** 2) + 0.5 * (1 - np.corrcoef(p, t)[0, 1]))
    np.testing.assert_allclose(grad, 0.5 * mse_g + 0.5 * plcc_g, rtol=1e-9)
    assert _value_and_grad("composite", {"mse_weight": 0.2})[0] == pytest.approx(0.2 * mse_v + 0.8 * plcc_v)


def _rank_direct(p, t, margin, kind, scale, hinge):
    terms = []
    for i in range(len(p)):
        for j in range(i + 1, len(p)):
            if abs(t[i] - t[j]) > margin:
                s, d = np.sign(t[i] - t[j]), p[i] - p[j]
                logistic = np.log1p(np.exp(-scale * s * d))
                terms.append(logistic if kind == "logistic" else max(0, hinge - s * d))
    return float(np.mean(terms)) if terms else 0.0


@pytest.mark.parametrize("kind", ["logistic", "hinge"])
def test_rank_value_and_gradient(kind):
    params = {"margin": 0.3, "kind": kind, "scale": 2.0, "hinge": 0.5}
    p, t = np.array(PRED), np.array(TARGET)
    value, grad = _value_and_grad("rank", params)
    assert value == pytest.approx(_rank_direct(p, t, 0.3, kind, 2.0, 0.5))
    np.testing.assert_allclose(grad, _numeric_grad(lambda x: _rank_direct(x, t, 0.3, kind, 2.0, 0.5), p),
                               rtol=1e-5, atol=1e-8)


def test_kl_value_and_gradient():
    bins, sigma = 5, 0.5
    p, t, w = map(np.array, (PRED, TARGET, WEIGHT))
    centers = np.linspace(1, 5, bins)

    def dist(x):
        z = np.exp(-((x[:, None] - centers) ** 2) / (2 * sigma**2))
        return z / z.sum(1, keepdims=True)

    def direct(x):
        q, pp = dist(t), dist(x)
        return float(np.mean(w * (q * np.log(q / pp)).sum(1)))

    value, grad = _value_and_grad("kl", {"bins": bins, "sigma": sigma})
    assert value == pytest.approx(direct(p), rel=1e-7)
    np.testing.assert_allclose(grad, _numeric_grad(direct, p), rtol=1e-5, atol=1e-9)
    assert _value_and_grad("kl", pred=TARGET)[0] == pytest.approx(0.0, abs=1e-9)  # same distribution


@pytest.mark.parametrize("name", ["plcc", "composite", "rank"])
def test_batch_level_losses_on_degenerate_batches_are_zero_with_zero_gradient(name):
    for pred, target in (([3.0], [4.0]), ([3.0, 4.0, 2.0], [4.0, 4.0, 4.0])):
        value, grad = _value_and_grad(name, pred=pred, target=target, weight=[1.0] * len(pred))
        if name == "composite":  # only the MSE half remains
            mse_v, mse_g = _value_and_grad("mse", pred=pred, target=target, weight=[1.0] * len(pred))
            assert value == pytest.approx(0.5 * mse_v)
            np.testing.assert_allclose(grad, 0.5 * mse_g)
        else:
            assert value == 0.0 and np.all(grad == 0)
    # constant predictions with varying targets: finite gradient that pushes toward the targets' order
    value, grad = _value_and_grad("plcc", pred=[3.0, 3.0, 3.0], target=[1.0, 3.0, 5.0], weight=[1.0] * 3)
    assert value == pytest.approx(1.0) and np.all(np.isfinite(grad)) and grad[0] > 0 > grad[2]


def test_mixture_sums_weighted_terms_and_records_each():
    spec = {"weighted_huber": 1.0, "plcc": 0.5, "rank": {"weight": 0.2, "margin": 0.3}}
    mixed = build_loss(spec, {"delta": 0.5})
    args = [torch.tensor(x, dtype=torch.float64) for x in (PRED, TARGET, WEIGHT)]
    total = float(mixed(*args))
    parts = {"weighted_huber": create_loss("huber", delta=0.5)(*args), "plcc": create_loss("plcc")(*args),
             "rank": create_loss("rank", margin=0.3)(*args)}
    assert total == pytest.approx(float(parts["weighted_huber"] + 0.5 * parts["plcc"] + 0.2 * parts["rank"]))
    assert mixed.last == pytest.approx({k: float(v) for k, v in parts.items()})
    # a term's own parameter wins over the loop's default
    own = build_loss({"huber": {"delta": 2.0}}, {"delta": 0.5})
    assert float(own(*args)) == pytest.approx(float(create_loss("huber", delta=2.0)(*args)))


def test_registry_holds_every_technique():
    assert set(LOSSES.names()) >= {"mse", "huber", "smooth_l1", "weighted_huber", "plcc", "composite",
                                   "rank", "kl"}
    with pytest.raises(UnknownNameError, match="did you mean weighted_huber"):
        create_loss("weighted_hubr")


@pytest.mark.parametrize("loss, message", [
    ("{plcc: 1, rnak: 0.2}", r"train.loss: unknown loss 'rnak'; did you mean rank"),
    ("{rank: {weight: 0.2, margn: 0.1}}", r"train.loss.rank: unknown parameter\(s\) margn \(known: weight, "
                                          r"margin, kind, scale, hinge\)"),
    ("{plcc: {weight: 1, eps: 1}}", r"train.loss.plcc: unknown parameter\(s\) eps \(known: weight\)"),
    ("{rank: {kind: square}}", "train.loss.rank.kind must be logistic or hinge"),
    ("{kl: {bins: 1}}", r"train.loss.kl.bins must be an integer in \[2, 1000\]"),
    ("{huber: {delta: 0}}", "train.loss.huber.delta must be a finite number > 0"),
])
def test_bad_loss_recipes_fail_at_load_in_one_line(loss, message):
    recipe = load_recipe("tiny", [f"train.loss={loss}"])
    with pytest.raises((ConfigError, UnknownNameError), match=message) as info:
        check_recipe_names(recipe)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("loss, message", [
    ("{plcc: -1}", "train.loss.plcc must be a finite number and >= 0"),
    ("{plcc: 0}", "train.loss must be a mixture with at least one positive weight"),
    ("{}", "train.loss must be a loss name or a non-empty mapping"),
    ("{rank: {weight: x}}", "train.loss.rank.weight must be a finite number"),
])
def test_loss_shape_is_checked_by_the_config(loss, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("tiny", [f"train.loss={loss}"])


def test_a_recipe_mixture_replaces_its_bases(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("base: tiny\ntrain:\n  loss: {weighted_huber: 1.0, rank: 0.2}\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {base}\ntrain:\n  loss: {{plcc: 1.0}}\n")
    assert load_recipe(str(child)).train.loss == {"plcc": 1.0}
