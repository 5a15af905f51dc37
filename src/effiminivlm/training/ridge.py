"""Exact leave-one-out predictions of a weighted ridge, for every alpha, from one SVD.

Why: the probe's ridge chose alpha by PLCC on the validation split, a few hundred items: that choice is noisy
(on 463 real items seed 42 picked alpha 10 and overfit, test PLCC 0.02; docs/realdata.md). Leave-one-out
over the TRAIN split uses every training item as a held-out point, and for a linear smoother it costs one
fit: the LOO residual of item i is r_i / (1 - h_ii), h the hat matrix (Allen 1974; Golub, Heath & Wahba 1979
for its rotation-invariant cousin GCV). With the SVD of the weighted, centred design A = U S V^T,

    h_ii(lam) = sum_k U_ik^2 s_k^2 / (s_k^2 + lam) + w_i / sum(w)      (the second term: the intercept)

so a whole grid of alphas costs O(n d^2) once plus O(n d) per alpha.

The model is the one `fit_ridge` below solves: features z standardised by their weighted mean and sd over the
train split (fixed, label-free), an unpenalised intercept, penalty lam |beta|^2 with lam = alpha x mean(w)
(fit_ridge's alpha / n on normalised weights). Leaving item i out refits beta and the intercept without it,
exactly (tests/training/test_ridge.py checks it against brute-force refits); only the standardisation is
kept from all items, which uses no label.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ALPHA_CRITERIA", "loo_predictions", "select_alpha"]
ALPHA_CRITERIA = ("loo_mse", "loo_plcc", "val_plcc")


def standardise(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x centred and scaled by its w-weighted mean and sd (constant columns scaled by 1: they stay 0)."""
    wn = w / w.sum()
    xc = x - wn @ x
    sd = np.sqrt(wn @ (xc * xc))
    sd[sd < 1e-12] = 1.0
    return xc / sd


def fit_ridge(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """(coef, intercept) minimising sum w_i (y_i - x_i.coef - b)^2 + alpha |coef * sd|^2 (ridge on the
    features standardised by their weighted mean and sd; returned in the raw feature scale)."""
    w = w / w.sum()
    mean = w @ x
    xc = x - mean
    sd = np.sqrt(w @ (xc * xc))
    sd[sd < 1e-12] = 1.0  # constant features (e.g. an image vector that is zero everywhere) get coef 0
    z = xc / sd
    ym = float(w @ y)
    gram = z.T @ (z * w[:, None]) + (alpha / len(y)) * np.eye(z.shape[1])
    beta = np.linalg.solve(gram, z.T @ (w * (y - ym)))
    coef = beta / sd
    return coef, ym - float(mean @ coef)


def loo_predictions(x: np.ndarray, y: np.ndarray, w: np.ndarray, alphas: tuple[float, ...] | list[float]
                    ) -> np.ndarray:
    """[len(alphas), n] leave-one-out predictions of each training item under each alpha.

    Items with weight 0 do not shape the fit; their "LOO" prediction is the full fit's (they were never in).
    """
    x, y, w = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(w, np.float64)
    if w.sum() <= 0:
        raise ValueError("ridge needs at least one item with a positive weight")
    z = standardise(x, w)
    sw = np.sqrt(w)
    ym = float(w @ y / w.sum())
    a = z * sw[:, None]  # columns are orthogonal to sw: z is w-centred
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    uty = u.T @ (sw * (y - ym))
    lev0 = w / w.sum()  # the intercept's share of the hat matrix
    zv = z @ vt.T  # the fit on every row, zero-weight rows included: yhat = ym + zv (s / (s^2 + lam)) uty
    u2 = u * u
    s2 = s * s
    out = np.empty((len(alphas), len(y)))
    for j, alpha in enumerate(alphas):
        lam = alpha * w.mean()
        yhat = ym + zv @ (s / (s2 + lam) * uty)
        h = u2 @ (s2 / (s2 + lam)) + lev0
        out[j] = y - (y - yhat) / np.clip(1.0 - h, 1e-12, None)
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ac, bc = a - a.mean(), b - b.mean()
    den = float(np.sqrt((ac @ ac) * (bc @ bc)))
    return float(ac @ bc / den) if den > 0 else float("nan")


def select_alpha(x: np.ndarray, y: np.ndarray, w: np.ndarray, alphas: tuple[float, ...] | list[float],
                 criterion: str) -> tuple[int, list[dict[str, float]]]:
    """(index of the chosen alpha, the curve) by `loo_mse` (w-weighted LOO squared error: the loss the ridge
    minimises; the default) or `loo_plcc` (Pearson of the LOO predictions with the training targets). Ties go
    to the larger alpha (the simpler model).

    Why MSE: LOO predictions are biased against their own target (leaving out a high rating lowers the fit
    near it), so as alpha grows and the fit flattens, their Pearson with the targets turns NEGATIVE while the
    model is merely shrinking; on 232 real items this made `loo_plcc` pick alpha 3.2 (test RMSE 1.54) in one
    of three subsets where `loo_mse` picked 3,162 (docs/realdata.md)."""
    if criterion not in ("loo_plcc", "loo_mse"):
        raise ValueError(f"unknown LOO criterion {criterion!r}")
    loo = loo_predictions(x, y, w, alphas)
    curve, best, best_score = [], 0, -np.inf
    for j, alpha in enumerate(alphas):
        plcc = _pearson(loo[j], y)
        mse = float(w @ (loo[j] - y) ** 2 / w.sum())
        curve.append({"alpha": float(alpha), "loo_plcc": plcc, "loo_mse": mse})
        score = (plcc if np.isfinite(plcc) else -np.inf) if criterion == "loo_plcc" else -mse
        if score >= best_score:
            best, best_score = j, score
    return best, curve
