"""Evaluation: choose how items are embedded at serving time, on a validation split.

A fused embedding can be worse than its best modality on items no training batch contained: a
poster identifies a *training* item well (so training trusts it) without saying much about who
likes an unseen film. Which mix generalises is an empirical question, so it is answered on
validation data carved out of the training interactions (never the test split): the fused
embedding and every weighting of the single-modality embeddings on a grid of the simplex
(each modality alone included) are scored, and the best one is served.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from tfmmrec.data.splits import Split
from tfmmrec.evaluation.protocol import evaluate_embeddings

FUSED = "fused"


def simplex_grid(count: int, steps: int) -> list[tuple[float, ...]]:
    """Every weight vector of ``count`` non-negative weights summing to 1, in steps of
    ``1 / steps`` (the corners are the single modalities)."""
    return [tuple(c / steps for c in combo)
            for combo in itertools.product(range(steps + 1), repeat=count)
            if sum(combo) == steps]


def choose_serving_mix(user_embeddings: np.ndarray, fused: np.ndarray,
                       mix: Callable[[Sequence[float]], np.ndarray], validation: Split,
                       user_ids: np.ndarray, count: int, metric: str, ks: Sequence[int],
                       steps: int = 10) -> tuple[tuple[float, ...] | None, dict[str, float]]:
    """The best serving embedding on ``validation``: ``None`` (the fused one) or mix weights.

    Args:
      user_embeddings / fused: ``[U, d]`` / ``[N, d]`` from a model trained on
        ``validation.train`` only.
      mix: weights → ``[N, d]`` item embeddings mixed from single modalities.
      count: number of modalities; ``metric``: e.g. ``"recall@20"`` (one of ``ks``).
    Returns ``(weights or None, {candidate: validation score})``; ties keep the fused embedding.
    """
    def score(items: np.ndarray) -> float:
        return evaluate_embeddings(user_embeddings, items, validation, user_ids, ks)[metric]

    scores = {FUSED: score(fused)}
    best, best_score = None, scores[FUSED]
    for weights in simplex_grid(count, steps):
        value = score(mix(weights))
        scores[",".join(f"{w:g}" for w in weights)] = value
        if value > best_score:
            best, best_score = weights, value
    return best, scores
