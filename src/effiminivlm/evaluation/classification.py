"""Multi-label classification metrics: mAP, micro / macro / sample-wise F1, per-class thresholds tuned on val.

Why these rules (the MiniViTex head: one sigmoid per label, BCE): mAP ranks, so it needs no threshold and is
the headline number; the F1s need a decision, the fixed 0.5 or per-class thresholds tuned on validation and
then applied unchanged to test. Undefined is never a silent 0 or 1:

  * AP of a class with no positive item is undefined (no recall to reach): the class is left out of mAP and
    counted in `classes_without_positives`;
  * a class's F1 with no true and no predicted label (0/0) is left out of macro F1 (`classes_undefined_f1`);
    an item with no true and no predicted label is left out of sample-wise F1 (`items_undefined_f1`).

AP is the step-wise area of scikit-learn's `average_precision_score` (sum over distinct score thresholds of
precision x recall increase; tied scores enter together), written directly so no sklearn is needed. Inputs:
`y_true` a {0, 1} matrix [N, K], `scores` probabilities or logits [N, K] (only their order matters for AP;
thresholds apply to probabilities). Bad input raises `DataError` (also a ValueError) saying what is wrong.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from effiminivlm.errors import DataError

DEFAULT_THRESHOLD = 0.5


def _check(y_true: Any, scores: Any | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    y = np.asarray(y_true)
    if y.ndim != 2:
        raise DataError(f"labels must be a matrix [items, classes], got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise DataError("labels must be 0 or 1 (a multi-hot matrix)")
    y = y.astype(bool)
    if scores is None:
        return y, None
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise DataError(f"scores have shape {s.shape} but labels {y.shape}")
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise DataError(f"{bad} score(s) are NaN or infinite: the model or pipeline broke")
    return y, s


def average_precision(y_true: Any, scores: Any) -> float:
    """AP of one class (1-d inputs): sum_n (R_n - R_{n-1}) P_n over distinct thresholds; NaN without
    positives."""
    y, s = _check(np.asarray(y_true).reshape(-1, 1), np.asarray(scores).reshape(-1, 1))
    y, s = y[:, 0], s[:, 0]
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # a threshold takes every tied score at once
    tp = np.cumsum(y)[last_of_tie]
    predicted = last_of_tie + 1
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true: Any, scores: Any) -> tuple[float, int]:
    """(mAP over the classes with at least one positive, how many classes had none)."""
    y, s = _check(y_true, scores)
    aps = [average_precision(y[:, k], s[:, k]) for k in range(y.shape[1]) if y[:, k].any()]
    return (float(np.mean(aps)) if aps else math.nan), int(y.shape[1] - len(aps))


def predict_labels(scores: Any, thresholds: float | Any = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean [N, K]: score >= the threshold (one for all classes, or one per class)."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim and t.shape != (s.shape[-1],):
        raise DataError(f"{t.shape[0]} thresholds for {s.shape[-1]} classes")
    return s >= t


def f1_scores(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Micro F1 (2TP / (2TP + FP + FN) over every cell), macro F1 (mean of per-class F1) and sample-wise F1
    (mean over items of 2|T & P| / (|T| + |P|)); 0/0 cases are left out and counted (module doc)."""
    y, _ = _check(y_true)
    p, _ = _check(np.asarray(y_pred).astype(int))
    if p.shape != y.shape:
        raise DataError(f"predictions have shape {p.shape} but labels {y.shape}")
    tp = (y & p).sum(axis=0)
    fp = (~y & p).sum(axis=0)
    fn = (y & ~p).sum(axis=0)
    denom = 2 * tp + fp + fn
    micro = 2 * tp.sum() / denom.sum() if denom.sum() else math.nan
    per_class = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    defined = ~np.isnan(per_class)
    macro = float(per_class[defined].mean()) if defined.any() else math.nan
    inter = (y & p).sum(axis=1)
    sizes = y.sum(axis=1) + p.sum(axis=1)
    items = sizes > 0
    samples = float((2 * inter[items] / sizes[items]).mean()) if items.any() else math.nan
    return {"micro_f1": float(micro), "macro_f1": macro, "samples_f1": samples,
            "per_class_f1": [None if math.isnan(v) else float(v) for v in per_class],
            "classes_undefined_f1": int((~defined).sum()), "items_undefined_f1": int((~items).sum())}


def tune_thresholds(y_true: Any, scores: Any, default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-class thresholds maximising that class's F1 on (validation) data.

    Candidates are the class's distinct scores (a threshold between two scores decides the same way as the
    higher one); ties in F1 go to the candidate closest to `default`. A class without positives keeps
    `default` (no F1 above 0 to reach)."""
    y, s = _check(y_true, scores)
    out = np.full(y.shape[1], float(default))
    for k in range(y.shape[1]):
        pos = y[:, k]
        if not pos.any():
            continue
        cands = np.unique(s[:, k])
        pred = s[:, k][None, :] >= cands[:, None]  # [candidates, N]
        tp = (pred & pos).sum(axis=1)
        f1 = 2 * tp / (pred.sum(axis=1) + pos.sum())
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out[k] = float(cands[best[np.argmin(np.abs(cands[best] - default))]])
    return out


def classification_metrics(y_true: Any, scores: Any, thresholds: float | Any = DEFAULT_THRESHOLD
                           ) -> dict[str, Any]:
    """mAP and the F1s at `thresholds` (0.5, or per-class values from `tune_thresholds` on val)."""
    y, s = _check(y_true, scores)
    m_ap, without = mean_average_precision(y, s)
    f1 = f1_scores(y, predict_labels(s, thresholds))
    t = np.asarray(thresholds, dtype=np.float64)
    return {"n": int(y.shape[0]), "classes": int(y.shape[1]), "map": m_ap,
            "classes_without_positives": without,
            **f1, "thresholds": float(t) if not t.ndim else [float(v) for v in t]}


def sigmoid(logits: Any) -> np.ndarray:
    """Probabilities of a multi-label head's logits (numerically stable for large |logit|)."""
    x = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def bce_loss(y_true: Any, logits: Any) -> float:
    """Mean binary cross-entropy of logits against a multi-hot matrix (the `bce` loss, unweighted)."""
    y, s = _check(y_true, logits)
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def validation_metrics(y_true: Any, logits: Any) -> dict[str, Any]:
    """What training selects a multi-label checkpoint by: `map` (threshold-free), `loss` (BCE) and the F1s
    at 0.5, flat so each becomes one `val_*` field of metrics.jsonl."""
    m = classification_metrics(y_true, sigmoid(logits))
    keep = ("map", "micro_f1", "macro_f1", "samples_f1", "classes_without_positives")
    return {"loss": bce_loss(y_true, logits), **{k: m[k] for k in keep}}


def multilabel_report(y_true: Any, logits: Any, thresholds: Any | None = None,
                      labels: list[str] | None = None) -> dict[str, Any]:
    """The evaluate report of a multi-label model: mAP and the F1s at 0.5 and at the per-class thresholds
    tuned on val (`thresholds`, saved with the model; absent: that block is left out), plus per-label AP."""
    y, s = _check(y_true, logits)
    p = sigmoid(s)
    out: dict[str, Any] = {"task": "multilabel", "n": int(y.shape[0]), "classes": int(y.shape[1]),
                           "bce": bce_loss(y, s), "at_0.5": classification_metrics(y, p)}
    out["map"] = out["at_0.5"]["map"]
    if thresholds is not None:
        out["tuned"] = classification_metrics(y, p, np.asarray(thresholds, dtype=np.float64))
    names = labels or [str(k) for k in range(y.shape[1])]
    out["per_label"] = [{"label": n, "positives": int(y[:, k].sum()),
                         "ap": None if not y[:, k].any() else average_precision(y[:, k], p[:, k])}
                        for k, n in enumerate(names)]
    return out


def render_multilabel_markdown(report: dict[str, Any], title: str) -> str:
    """A short Markdown table: mAP and the three F1s at 0.5 and with tuned thresholds."""
    rows = [("0.5", report["at_0.5"])] + ([("tuned on val", report["tuned"])] if "tuned" in report else [])
    head = f"{report['n']} items, {report['classes']} labels, mAP {report['map']:.4f}"
    lines = [f"# {title}", "", head, "",
             "| thresholds | mAP | micro F1 | macro F1 | sample F1 |", "|---|---|---|---|---|"]
    keys = ("map", "micro_f1", "macro_f1", "samples_f1")
    lines += ["| " + " | ".join([name] + [f"{m[k]:.4f}" for k in keys]) + " |" for name, m in rows]
    return "\n".join(lines) + "\n"
