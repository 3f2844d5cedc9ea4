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
from tfmmrec.evaluation.cf import EASE, IALS
from tfmmrec.evaluation.protocol import evaluate_embeddings, split_matrices
from tfmmrec.towers.cf import LinearCFWeights, factorise_ease, fit_linear_cf, ials_foldin_factors

logger = logging.getLogger(__name__)

CONTENT_MAPS = ("ridge", "kernel")
BLOCKS = ("ease", "ease+ials")
# iALS settings tried for its block (factors fixed to the EASE rank, so a restored model's
# shapes follow from the config), and its weight β next to EASE (0 first: ties keep EASE alone).
IALS_BLOCK_GRID = tuple({"regularization": r, "alpha": a}
                        for r in (3.0, 10.0, 30.0, 100.0) for a in (1.0, 3.0, 10.0))
IALS_BLOCK_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def block_width(blocks: str, rank: int) -> int:
    """Columns of the CF part: ``rank`` per block."""
    if blocks not in BLOCKS:
        raise ValueError(f"linear CF blocks must be one of {BLOCKS}, got {blocks!r}")
    return rank * len(blocks.split("+"))


def choose_linear_cf(split: Split, user_ids: np.ndarray, num_items: int, *, rank: int,
                     l2: float = 0.0, alpha: float = 0.0, features: np.ndarray | None = None,
                     present: np.ndarray | None = None, validation_fraction: float = 0.2,
                     seed: int = 42, metric: str = "recall@20", content: str = "ridge",
                     blocks: str = "ease") -> tuple[LinearCFWeights, dict[str, Any]]:
    """The fitted ``LinearCFWeights`` on ``split.train`` and what was chosen (``{"l2", "alpha",
    "width", "ials", "validation"}``). ``l2``/``alpha`` > 0 are used as given; 0 means choose on
    validation. ``content``: how cold items' factors are predicted (``CONTENT_MAPS``);
    ``blocks``: EASE alone or EASE + a linearised iALS fold-in (``BLOCKS``)."""
    if content not in CONTENT_MAPS:
        raise ValueError(f"content map must be one of {CONTENT_MAPS}, got {content!r}")
    block_width(blocks, rank)
    rank = min(rank, num_items)
    info: dict[str, Any] = {"rank": rank, "validation": {}}
    if not l2:
        carve = validation_split(split, validation_fraction, seed, kind="random")
        params, trials = select_on_validation(EASE, EASE_GRID, carve, user_ids, num_items,
                                              metric=metric)
        l2 = params["l2"]
        info["validation"]["l2"] = trials
    ials = None
    if blocks == "ease+ials":  # on a carve of the split's own kind (cold start: warm items)
        warm_kind = "random" if split.kind == "cold_start" else None
        ials_carve = validation_split(split, validation_fraction, seed, kind=warm_kind)
        ials, info["validation"]["ials"] = _choose_ials(ials_carve, user_ids, num_items, rank,
                                                        l2, seed, metric)
    width = 0.0
    if content == "kernel" or not alpha:
        grid = RIDGE_GRID if content == "ridge" else tuple(
            {"width": w, "alpha": a} for w in KERNEL_WIDTHS for a in ([alpha] if alpha
                                                                      else KERNEL_ALPHAS))
        # on a cold-start split the iALS weight is re-chosen with the content map, on cold
        # items: what the split ranks
        joint = ials is not None and split.kind == "cold_start"
        params, info["validation"]["content"] = _choose_content(
            split, user_ids, num_items, rank, l2, ials, features, present,
            validation_fraction, seed, metric, grid,
            IALS_BLOCK_WEIGHTS if joint else None)
        alpha, width = params.get("alpha", alpha), params.get("width", 0.0)
        if joint and "ials_weight" in params:
            ials = {**ials, "weight": params["ials_weight"]}
    train, _ = split_matrices(split, user_ids, num_items)
    query_factors, item_factors, warm = cf_factors(train, rank, l2, ials, seed)
    weights = fit_linear_cf(query_factors, item_factors, warm, alpha, features, present, width)
    info.update(l2=float(l2), alpha=float(alpha), width=float(width), ials=ials)
    logger.info("linear CF: EASE λ=%g, rank %d, iALS %s, content %s α=%g width=%g", l2, rank,
                ials, content, alpha, width)
    return weights, info


def cf_factors(train, rank: int, l2: float, ials: dict[str, float] | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P, Q, warm)`` of the CF part on ``train``: EASE's rank-``rank`` factors, and with
    ``ials`` (``{"regularization", "alpha", "weight"}``) an iALS block of ``rank`` factors
    beside them, its query half scaled by ``weight`` (0: zero columns, EASE alone)."""
    query_factors, item_factors, warm = factorise_ease(train, rank, l2, seed)
    if ials is None:
        return query_factors, item_factors, warm
    y = IALS(rank, ials["regularization"], ials["alpha"], seed=seed).fit(train).item_factors
    p = ials["weight"] * ials_foldin_factors(y, ials["regularization"], ials["alpha"])
    return (np.hstack([query_factors, p]).astype(np.float32),
            np.hstack([item_factors, y]).astype(np.float32), warm)


def _choose_ials(carve: Split, user_ids: np.ndarray, num_items: int, rank: int, l2: float,
                 seed: int, metric: str) -> tuple[dict[str, float], dict[str, Any]]:
    """iALS's settings (as the iALS baseline is tuned, factors = ``rank``), then its weight β
    beside EASE, both by ``metric`` on ``carve`` (the served fold-in, not iALS's own users)."""
    params, trials = select_on_validation(lambda **p: IALS(rank, **p, seed=seed),
                                          IALS_BLOCK_GRID, carve, user_ids, num_items,
                                          metric=metric)
    train, _ = split_matrices(carve, user_ids, num_items)
    scored = []
    for weight in IALS_BLOCK_WEIGHTS:
        chosen = {**params, "weight": weight}
        query_factors, item_factors, _ = cf_factors(train, rank, l2, chosen, seed)
        users = np.asarray((train > 0).astype(np.float32) @ query_factors, np.float32)
        scored.append((chosen, _score(users, item_factors, carve, user_ids, metric)))
    best = _best(scored, carve, "validation carve")
    blend_trials = [{"weight": point["weight"], "score": score} for point, score in scored]
    return best, {"settings": trials, "weight": blend_trials}


def _choose_content(split: Split, user_ids: np.ndarray, num_items: int, rank: int, l2: float,
                    ials: dict[str, float] | None, features: np.ndarray | None,
                    present: np.ndarray | None, fraction: float,
                    seed: int, metric: str, grid: tuple[dict, ...],
                    ials_weights: tuple[float, ...] | None = None
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The content map's settings from ``grid`` (``{"alpha"}`` or ``{"width", "alpha"}``) by
    ``metric`` on cold items of a cold-start carve (one CF fit, one regression per grid
    point); with ``ials_weights`` also the iALS block's weight (``"ials_weight"``: it scales
    the query half only, so each regression is scored at every weight). Without content there
    is nothing to choose: α = 1, width 1 (kernel grids)."""
    if features is None:
        return {"alpha": 1.0, **({"width": 1.0} if "width" in grid[0] else {})}, []
    carve = validation_split(split, fraction, seed, kind="cold_start")
    train, _ = split_matrices(carve, user_ids, num_items)
    if ials_weights is not None:
        ials = {**ials, "weight": 1.0}
    query_factors, item_factors, warm = cf_factors(train, rank, l2, ials, seed)
    users = np.asarray((train > 0).astype(np.float32) @ query_factors, np.float32)
    scales = [(None, None)] if ials_weights is None else [
        (w, np.r_[np.ones(rank), np.full(users.shape[1] - rank, w)].astype(np.float32))
        for w in ials_weights]
    scored = []
    for params in grid:
        weights = fit_linear_cf(query_factors, item_factors, warm, params["alpha"], features,
                                present, params.get("width", 0.0))
        items = weights.item_embeddings(features, present)
        for weight, scale in scales:
            point = dict(params) if weight is None else {**params, "ials_weight": weight}
            queries = users if scale is None else users * scale
            scored.append((point, _score(queries, items, carve, user_ids, metric)))
    best = _best(scored, carve, "cold-start validation carve")
    return best, [{"params": point, "score": score} for point, score in scored]


def _score(users: np.ndarray, items: np.ndarray, carve: Split, user_ids: np.ndarray,
           metric: str) -> float | None:
    return evaluate_embeddings(users, items, carve, user_ids, [_k(metric)]).get(metric)


def _best(scored: list[tuple[dict[str, float], float | None]], carve: Split,
          label: str) -> dict[str, float]:
    """The first point with the highest score (ties keep the earlier, smaller setting)."""
    best, best_score = None, -np.inf
    for point, score in scored:
        if score is not None and score > best_score:
            best, best_score = point, score
    if best is None:
        raise DataError(f"linear CF: the {label} has no user with a held-out item to rank "
                        f"({len(carve.test)} interactions)")
    return best


def _k(metric: str) -> int:
    _, _, k = metric.rpartition("@")
    return int(k) if k.isdigit() else 10
