"""Evaluation: pointwise and listwise ranking metrics (RMSE/MAE, AUC, graded NDCG over lists)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

# Metrics where a smaller figure is better (every other one: larger is better).
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss"})


def orientation(metric: str) -> float:
    """+1 if a larger ``metric`` is better, −1 if a smaller one is: ``orientation · value`` is
    then maximised whatever the metric (a NaN figure still never wins a comparison)."""
    return -1.0 if metric in LOWER_IS_BETTER else 1.0


def same_shape(predictions, targets, names: tuple[str, str] = ("predictions", "targets")
               ) -> tuple[np.ndarray, np.ndarray]:
    """Both as arrays, refusing different shapes: numpy would broadcast ``[N]`` against
    ``[N, 1]`` to ``[N, N]`` and return a figure of every pair, silently wrong."""
    a, b = np.asarray(predictions, float), np.asarray(targets, float)
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} of shape {a.shape} and {names[1]} of shape {b.shape}: "
                         "the shapes must be the same")
    return a, b


def rmse(predictions: np.ndarray, targets: np.ndarray) -> float:
    predictions, targets = same_shape(predictions, targets)
    return float(np.sqrt(np.mean((predictions - targets) ** 2)))


def mae(predictions: np.ndarray, targets: np.ndarray) -> float:
    predictions, targets = same_shape(predictions, targets)
    return float(np.mean(np.abs(predictions - targets)))


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits (computed stably, as from_logits=True does)."""
    logits, labels = same_shape(logits, labels, ("logits", "labels"))
    losses = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    return float(np.mean(losses))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic (ties get half credit)."""
    scores, labels = same_shape(scores, labels, ("scores", "labels"))
    labels = labels.astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def ranked_lists(gains: np.ndarray) -> np.ndarray:
    """``[L]`` bool: the lists whose gains are not all equal. Only those can be ordered
    better or worse: a list of equal gains (all 0, or every item rated the same) is ideal in
    any order, so its NDCG (undefined, or 1.0) would lift every model's mean alike."""
    gains = np.asarray(gains, float)
    return (gains != gains[:, :1]).any(axis=1)


def list_ndcg(scores: np.ndarray, gains: np.ndarray, k: int) -> float:
    """Mean NDCG@k over lists ``[L, n]``: rank each list by ``scores`` (ties: earlier first),
    gain = the graded relevance (e.g. the rating). Lists whose gains are all equal carry no
    ranking information and are skipped (:func:`ranked_lists`), NaN when every list is.
    Gains must be >= 0: a negative one can make NDCG negative or above 1."""
    scores, gains = same_shape(scores, gains, ("scores", "gains"))
    if scores.ndim != 2:
        raise ValueError(f"scores and gains must be lists [L, n], got shape {scores.shape}")
    if (gains < 0).any():
        raise ValueError(f"gains must be >= 0 (graded relevance), got {gains.min():g}")
    k = min(k, scores.shape[1])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    dcg = (np.take_along_axis(gains, order, axis=1) * discounts).sum(axis=1)
    ideal = (-np.sort(-gains, axis=1)[:, :k] * discounts).sum(axis=1)
    valid = ranked_lists(gains)
    return float(np.mean(dcg[valid] / ideal[valid])) if valid.any() else float("nan")
