"""Evaluation: how much a user's history is weighted towards its recent end, chosen on a carve.

A history weighted ``0.5 ** (n / half_life)`` for its n-th most recent item
(``towers.history.recency_matrix``) predicts what comes next far better when the test is the
future (a temporal split), and nothing extra when held-out items are drawn at random. So the
half-life is a tuned setting like any other: chosen from :data:`HALF_LIVES` on a validation
carve of the split's own kind, for the model's CF part (``linear_cf_selection``) and for the
``EASE · recency-weighted history`` baseline (``baseline_suite``) alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tfmmrec.data.splits import Split
from tfmmrec.errors import DataError
from tfmmrec.evaluation.protocol import evaluate_embeddings
from tfmmrec.towers.history import recency_matrix

# Half-lives tried, in items (0 first: equal weights, kept on ties).
HALF_LIVES = (0.0, 5.0, 10.0, 20.0, 40.0, 80.0)


def choose_half_life(carve: Split, user_ids: np.ndarray, num_items: int,
                     queries: Callable[[Any], np.ndarray], items: np.ndarray,
                     metric: str = "recall@20") -> tuple[float, list[dict[str, Any]]]:
    """The half-life from ``HALF_LIVES`` by ``metric`` on ``carve``: the model is fitted once
    (``items``), and ``queries(recency_matrix)`` gives its users at each half-life. Returns the
    best (the first on ties: 0) and every trial."""
    scored = []
    for half_life in HALF_LIVES:
        users = queries(recency_matrix(carve.train, user_ids, num_items, half_life))
        scored.append(({"half_life": half_life},
                       score_on_carve(users, items, carve, user_ids, metric)))
    best = best_on_carve(scored, carve, "validation carve")
    return best["half_life"], [{**point, "score": score} for point, score in scored]


def score_on_carve(users: np.ndarray, items: np.ndarray, carve: Split, user_ids: np.ndarray,
                   metric: str) -> float | None:
    """``metric`` (``recall@K`` / ``ndcg@K`` / ...) of these embeddings on ``carve``'s held-out
    part; None when no carve user has a held-out item to rank."""
    _, _, k = metric.rpartition("@")
    return evaluate_embeddings(users, items, carve, user_ids,
                               [int(k) if k.isdigit() else 10]).get(metric)


def best_on_carve(scored: list[tuple[dict[str, float], float | None]], carve: Split,
                  label: str) -> dict[str, float]:
    """The first point with the highest score (ties keep the earlier, smaller setting)."""
    best, best_score = None, -np.inf
    for point, score in scored:
        if score is not None and score > best_score:
            best, best_score = point, score
    if best is None:
        raise DataError(f"the {label} has no user with a held-out item to rank "
                        f"({len(carve.test)} interactions)")
    return best
