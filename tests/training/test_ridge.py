"""Exact leave-one-out of the weighted ridge against brute-force refits (training.ridge)."""

from __future__ import annotations

import numpy as np
import pytest

from effiminivlm.training.ridge import fit_ridge, loo_predictions, select_alpha, standardise


def _brute_loo(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """Refit without item i (fixed standardisation, unpenalised intercept, lam = alpha mean(w)), predict i."""
    z = standardise(x, w)
    lam = alpha * w.mean()
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        zi, yi, wi = z[keep], y[keep], w[keep]
        design = np.hstack([zi, np.ones((len(yi), 1))])
        penalty = np.diag([lam] * z.shape[1] + [0.0])
        theta = np.linalg.solve(design.T @ (design * wi[:, None]) + penalty, design.T @ (wi * yi))
        out[i] = z[i] @ theta[:-1] + theta[-1]
    return out


@pytest.mark.parametrize("alpha", [0.01, 3.0, 300.0])
def test_loo_matches_brute_force_refits(alpha: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * rng.uniform(0.1, 5, size=6) + rng.normal(size=6)
    x[:, 5] = 2.0  # a constant feature stays harmless
    y = x[:, :3] @ np.array([0.5, -0.2, 0.1]) + rng.normal(scale=0.5, size=40)
    w = rng.uniform(0.2, 3.0, size=40)
    w[7] = 0.0  # a zero-weight item: its LOO prediction is the full fit's
    got = loo_predictions(x, y, w, [alpha])[0]
    np.testing.assert_allclose(got, _brute_loo(x, y, w, alpha), rtol=1e-7, atol=1e-9)
    # the full fit it is built on is fit_ridge's (same alpha scale)
    coef, b = fit_ridge(x, y, w, alpha)
    np.testing.assert_allclose(got[7], x[7] @ coef + b, rtol=1e-7)


def test_select_alpha_prefers_shrinkage_on_pure_noise_and_little_on_signal() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 30))
    alphas = [0.01, 1.0, 100.0, 1e4, 1e6]
    noise = rng.normal(size=200)
    best, curve = select_alpha(x, noise, np.ones(200), alphas, "loo_mse")
    assert alphas[best] >= 1e4 and len(curve) == 5
    signal = x[:, 0] * 2.0 + 0.1 * rng.normal(size=200)
    best, _ = select_alpha(x, signal, np.ones(200), alphas, "loo_plcc")
    assert alphas[best] <= 1.0
    with pytest.raises(ValueError):
        select_alpha(x, signal, np.ones(200), alphas, "val_plcc")
