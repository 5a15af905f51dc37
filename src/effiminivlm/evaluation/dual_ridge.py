"""Weighted ridge with exact leave-one-out for wide (sparse) designs, from one n x n eigendecomposition.

Why: the lexical block has ~10^5 TF-IDF columns for a few thousand items, where the probe's SVD of the
design (`training.ridge`) would be dense and huge. The same model is solved in the dual: with A the
sqrt(w)-weighted, w-centred design, A A^T = U S^2 U^T gives the same U and s as the SVD of A, so the LOO
formulas of `training.ridge` (hat diagonal = sum_k U_ik^2 s_k^2 / (s_k^2 + lam) + w_i / sum(w)) hold
unchanged and a whole grid of alphas costs one O(n^3) eigendecomposition. Columns are not standardised (a
TF-IDF row is already L2-normalised; centring a sparse matrix would densify it): penalty lam |beta|^2 with
lam = alpha x mean(w), an unpenalised intercept.

Lives in evaluation because the words-only baseline beside every evaluation (`evaluation.baseline`) uses it,
and training's hybrid probe uses the same solver for its lexical block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["LEXICAL_ALPHAS", "DualRidge", "fit_dual_ridge"]
LEXICAL_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


@dataclass
class DualRidge:
    """The chosen fit: primal `coef` [d] over the raw columns, `intercept`, the alpha, the LOO curve and
    the train rows' LOO predictions at the chosen alpha (the stacker's out-of-fold inputs)."""

    coef: np.ndarray
    intercept: float
    alpha: float
    curve: list[dict[str, float]]
    loo: np.ndarray

    def predict(self, x: np.ndarray | sp.spmatrix) -> np.ndarray:
        return np.asarray(x @ self.coef).ravel() + self.intercept


def fit_dual_ridge(x: np.ndarray | sp.spmatrix, y: np.ndarray, w: np.ndarray,
                   alphas: tuple[float, ...] = LEXICAL_ALPHAS) -> DualRidge:
    """Weighted ridge of y on x, alpha of `alphas` by LOO weighted MSE (ties: the larger alpha)."""
    y, w = np.asarray(y, np.float64), np.asarray(w, np.float64)
    if w.sum() <= 0:
        raise ValueError("ridge needs at least one item with a positive weight")
    wn = w / w.sum()
    mean = np.asarray(wn @ x).ravel()  # [d] the weighted column means
    k = np.asarray((x @ x.T).todense() if sp.issparse(x) else x @ x.T, dtype=np.float64)
    kw = k @ wn
    kc = k - kw[None, :] - kw[:, None] + float(wn @ kw)  # Xc Xc^T, Xc = X - 1 mean^T
    sw = np.sqrt(w)
    s2, u = np.linalg.eigh(kc * sw[:, None] * sw[None, :])  # A A^T, A = diag(sw) Xc
    keep = s2 > max(float(s2.max()), 1e-300) * 1e-10
    s2, u = s2[keep], u[:, keep]
    ym = float(wn @ y)
    uty = u.T @ (sw * (y - ym))
    zv = kc * sw[None, :] @ u  # Xc A^T U = Z V S: the fit on every row, zero-weight rows included
    lev0 = wn
    u2 = u * u
    curve, best, best_mse, loo_best = [], 0, np.inf, None
    for j, alpha in enumerate(alphas):
        lam = alpha * w.mean()
        yhat = ym + zv @ (uty / (s2 + lam))
        h = u2 @ (s2 / (s2 + lam)) + lev0
        loo = y - (y - yhat) / np.clip(1.0 - h, 1e-12, None)
        mse = float(wn @ (loo - y) ** 2)
        curve.append({"alpha": float(alpha), "loo_mse": mse})
        if mse <= best_mse:
            best, best_mse, loo_best = j, mse, loo
    lam = alphas[best] * w.mean()
    v = sw * (u @ (uty / (s2 + lam)))  # beta = Xc^T v
    coef = np.asarray(x.T @ v).ravel() - mean * float(v.sum())
    assert loo_best is not None
    return DualRidge(coef, ym - float(mean @ coef), float(alphas[best]), curve, loo_best)
