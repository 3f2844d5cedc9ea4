"""Evaluation: fit the model's closed-form CF part (``towers.cf``), its settings chosen on
validation.

EASE's λ is chosen as the EASE baseline's is (``baseline_suite.EASE_GRID`` on a random carve of
the training split: warm items are what it scores), the content regression's α (and the kernel
width, for ``content="kernel"``) on a *cold-start* carve (cold items are what it scores), both
with ``data.splits.validation_split``; the chosen settings are then refitted on the whole
training split. Test data is never looked at.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tfmmrec.data.splits import Split, validation_split
from tfmmrec.errors import DataError
from tfmmrec.evaluation.baseline_suite import (
    EASE_GRID,
    KERNEL_ALPHAS,
    KERNEL_WIDTHS,
    RIDGE_GRID,
    select_on_validation,
)
from tfmmrec.evaluation.cf import EASE
from tfmmrec.evaluation.protocol import evaluate_embeddings, split_matrices
from tfmmrec.towers.cf import LinearCFWeights, factorise_ease, fit_linear_cf

logger = logging.getLogger(__name__)

CONTENT_MAPS = ("ridge", "kernel")


def choose_linear_cf(split: Split, user_ids: np.ndarray, num_items: int, *, rank: int,
                     l2: float = 0.0, alpha: float = 0.0, features: np.ndarray | None = None,
                     present: np.ndarray | None = None, validation_fraction: float = 0.2,
                     seed: int = 42, metric: str = "recall@20", content: str = "ridge"
                     ) -> tuple[LinearCFWeights, dict[str, Any]]:
    """The fitted ``LinearCFWeights`` on ``split.train`` and what was chosen (``{"l2", "alpha",
    "width", "validation"}``). ``l2``/``alpha`` > 0 are used as given; 0 means choose on
    validation. ``content``: how cold items' factors are predicted (``CONTENT_MAPS``)."""
    if content not in CONTENT_MAPS:
        raise ValueError(f"content map must be one of {CONTENT_MAPS}, got {content!r}")
    rank = min(rank, num_items)
    info: dict[str, Any] = {"rank": rank, "validation": {}}
    if not l2:
        carve = validation_split(split, validation_fraction, seed, kind="random")
        params, trials = select_on_validation(EASE, EASE_GRID, carve, user_ids, num_items,
                                              metric=metric)
        l2 = params["l2"]
        info["validation"]["l2"] = trials
    width = 0.0
    if content == "kernel" or not alpha:
        grid = RIDGE_GRID if content == "ridge" else tuple(
            {"width": w, "alpha": a} for w in KERNEL_WIDTHS for a in ([alpha] if alpha
                                                                      else KERNEL_ALPHAS))
        params, info["validation"]["content"] = _choose_content(
            split, user_ids, num_items, rank, l2, features, present, validation_fraction, seed,
            metric, grid)
        alpha, width = params.get("alpha", alpha), params.get("width", 0.0)
    train, _ = split_matrices(split, user_ids, num_items)
    query_factors, item_factors, warm = factorise_ease(train, rank, l2, seed)
    weights = fit_linear_cf(query_factors, item_factors, warm, alpha, features, present, width)
    info.update(l2=float(l2), alpha=float(alpha), width=float(width))
    logger.info("linear CF: EASE λ=%g, rank %d, content %s α=%g width=%g", l2, rank, content,
                alpha, width)
    return weights, info


def _choose_content(split: Split, user_ids: np.ndarray, num_items: int, rank: int, l2: float,
                    features: np.ndarray | None, present: np.ndarray | None, fraction: float,
                    seed: int, metric: str, grid: tuple[dict, ...]
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The content map's settings from ``grid`` (``{"alpha"}`` or ``{"width", "alpha"}``) by
    ``metric`` on cold items of a cold-start carve (one EASE fit, one regression per grid
    point). Without content there is nothing to choose: α = 1, width 1 (kernel grids)."""
    if features is None:
        return {"alpha": 1.0, **({"width": 1.0} if "width" in grid[0] else {})}, []
    carve = validation_split(split, fraction, seed, kind="cold_start")
    train, _ = split_matrices(carve, user_ids, num_items)
    query_factors, item_factors, warm = factorise_ease(train, rank, l2, seed)
    users = np.asarray((train > 0).astype(np.float32) @ query_factors, np.float32)
    trials, best, best_score = [], None, -np.inf
    for params in grid:
        weights = fit_linear_cf(query_factors, item_factors, warm, params["alpha"], features,
                                present, params.get("width", 0.0))
        items = weights.item_embeddings(features, present)
        score = evaluate_embeddings(users, items, carve, user_ids, [_k(metric)]).get(metric)
        trials.append({"params": dict(params), "score": score})
        if score is not None and score > best_score:
            best, best_score = dict(params), score
    if best is None:
        raise DataError(f"linear CF: the cold-start validation carve has no user with a "
                        f"held-out item to rank ({len(carve.test)} interactions)")
    return best, trials


def _k(metric: str) -> int:
    _, _, k = metric.rpartition("@")
    return int(k) if k.isdigit() else 10
