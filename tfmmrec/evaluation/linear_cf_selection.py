"""Evaluation: fit the model's closed-form CF part (``towers.cf``), its settings chosen on
validation.

EASE's λ is chosen as the EASE baseline's is (``baseline_suite.EASE_GRID`` on a random carve of
the training split: warm items are what it scores), the content regression's α (and the kernel
width, for ``content="kernel"``) on a *cold-start* carve (cold items are what it scores), both
with ``data.splits.validation_split``; the history's recency half-life last, on a carve of the
split's own kind (what it changes is how well the past predicts the held-out part); the chosen
settings are then refitted on the whole training split. Test data is never looked at.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from tfmmrec.data.splits import Split, validation_split
from tfmmrec.evaluation.baseline_suite import (
    EASE_GRID,
    KERNEL_ALPHAS,
    KERNEL_WIDTHS,
    RIDGE_GRID,
    select_on_validation,
)
from tfmmrec.evaluation.cf import EASE, IALS
from tfmmrec.evaluation.protocol import split_matrices
from tfmmrec.evaluation.recency import best_on_carve, choose_half_life, score_on_carve
from tfmmrec.towers.cf import LinearCFWeights, factorise_ease, fit_linear_cf, ials_foldin_factors

logger = logging.getLogger(__name__)

CONTENT_MAPS = ("ridge", "kernel")
BLOCKS = ("ease", "ials", "ease+ials")
# ``model.linear_cf: auto``'s candidates, chosen between on validation with the towers
# (``training.validation``): same width, so one config shape; ties keep the first.
AUTO_BLOCKS = ("ease", "ials")
FOLDINS = ("exact", "linear")
# iALS settings tried for its block (the iALS baseline's grid, factors up to the block's rank:
# fewer factors are zero-padded to it, so a restored model's shapes follow from the config),
# and its weight β next to EASE (0 first: ties keep EASE alone).
IALS_BLOCK_GRID = tuple({"factors": f, "regularization": r, "alpha": a}
                        for f in (32, 64, 128) for r in (3.0, 10.0, 30.0, 100.0)
                        for a in (1.0, 3.0, 10.0))
IALS_BLOCK_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def block_width(blocks: str, rank: int) -> int:
    """Columns of the CF part: ``rank`` per block."""
    if blocks not in BLOCKS:
        raise ValueError(f"linear CF blocks must be one of {BLOCKS}, got {blocks!r}")
    return rank * len(blocks.split("+"))


def foldin_width(blocks: str, rank: int, foldin: str) -> int:
    """Trailing columns whose query half is iALS's exact user step (0: none)."""
    if foldin not in FOLDINS:
        raise ValueError(f"iALS fold-in must be one of {FOLDINS}, got {foldin!r}")
    return rank if "ials" in blocks.split("+") and foldin == "exact" else 0


def choose_linear_cf(split: Split, user_ids: np.ndarray, num_items: int, *, rank: int,
                     l2: float = 0.0, alpha: float = 0.0, features: np.ndarray | None = None,
                     present: np.ndarray | None = None, validation_fraction: float = 0.2,
                     seed: int = 42, metric: str = "recall@20", content: str = "ridge",
                     blocks: str = "ease", foldin: str = "exact",
                     half_life: float | None = None
                     ) -> tuple[LinearCFWeights, dict[str, Any]]:
    """The fitted ``LinearCFWeights`` on ``split.train`` and what was chosen (``{"l2", "alpha",
    "width", "ials", "half_life", "validation"}``). ``l2``/``alpha`` > 0 are used as given; 0
    means choose on validation; ``half_life`` None: chosen on validation from ``HALF_LIVES``
    (0 without timestamps: a history then has no order). ``content``: how cold items'
    factors are predicted (``CONTENT_MAPS``);
    ``blocks``: EASE, iALS or both (``BLOCKS``); ``foldin``: the iALS user step solved exactly
    per user or linearised (``FOLDINS``)."""
    if content not in CONTENT_MAPS:
        raise ValueError(f"content map must be one of {CONTENT_MAPS}, got {content!r}")
    block_width(blocks, rank)
    foldin_width(blocks, rank, foldin)
    rank = min(rank, num_items)
    info: dict[str, Any] = {"rank": rank, "validation": {}}
    use_ease = "ease" in blocks.split("+")
    if not use_ease:
        l2 = 0.0
    elif not l2:
        carve = validation_split(split, validation_fraction, seed, kind="random")
        params, trials = select_on_validation(EASE, EASE_GRID, carve, user_ids, num_items,
                                              metric=metric)
        l2 = params["l2"]
        info["validation"]["l2"] = trials
    ials = None
    if "ials" in blocks.split("+"):  # on a carve of the split's own kind (cold start: warm items)
        warm_kind = "random" if split.kind == "cold_start" else None
        ials_carve = validation_split(split, validation_fraction, seed, kind=warm_kind)
        ials, info["validation"]["ials"] = _choose_ials(ials_carve, user_ids, num_items, rank,
                                                        l2, seed, metric, foldin)
    width = 0.0
    if content == "kernel" or not alpha:
        grid = RIDGE_GRID if content == "ridge" else tuple(
            {"width": w, "alpha": a} for w in KERNEL_WIDTHS for a in ([alpha] if alpha
                                                                      else KERNEL_ALPHAS))
        # on a cold-start split the iALS weight is re-chosen with the content map, on cold
        # items: what the split ranks
        joint = ials is not None and use_ease and split.kind == "cold_start"
        params, info["validation"]["content"] = _choose_content(
            split, user_ids, num_items, rank, l2, ials, features, present,
            validation_fraction, seed, metric, grid,
            IALS_BLOCK_WEIGHTS if joint else None, foldin)
        alpha, width = params.get("alpha", alpha), params.get("width", 0.0)
        if joint and "ials_weight" in params:
            ials = {**ials, "weight": params["ials_weight"]}
    fitted = functools.partial(_fit, user_ids=user_ids, num_items=num_items, rank=rank, l2=l2,
                               ials=ials, seed=seed, foldin=foldin, alpha=alpha,
                               features=features, present=present, width=width)
    if half_life is None:
        half_life, info["validation"]["half_life"] = _choose_half_life(
            split, user_ids, num_items, fitted, features, present, validation_fraction, seed,
            metric)
    weights = dataclasses.replace(fitted(split), half_life=float(half_life))
    info.update(l2=float(l2), alpha=float(alpha), width=float(width), ials=ials, foldin=foldin,
                half_life=float(half_life))
    logger.info("linear CF: EASE %s, rank %d, iALS %s, content %s α=%g width=%g, recency "
                "half-life %g", f"λ={l2:g}" if l2 else "off (no EASE block)", rank,
                f"{ials} ({foldin} fold-in)" if ials else "off (no iALS block)", content, alpha,
                width, half_life)
    return weights, info


def _fit(split: Split, *, user_ids: np.ndarray, num_items: int, rank: int, l2: float,
         ials: dict[str, float] | None, seed: int, foldin: str, alpha: float,
         features: np.ndarray | None, present: np.ndarray | None,
         width: float) -> LinearCFWeights:
    """The CF part with its chosen settings, fitted on ``split.train``."""
    train, _ = split_matrices(split, user_ids, num_items)
    query_factors, item_factors, warm, fold = cf_factors(train, rank, l2, ials, seed, foldin)
    return fit_linear_cf(query_factors, item_factors, warm, alpha, features, present, width,
                         foldin=fold)


def _choose_half_life(split: Split, user_ids: np.ndarray, num_items: int,
                      fitted: Callable[[Split], LinearCFWeights], features: np.ndarray | None,
                      present: np.ndarray | None, fraction: float, seed: int,
                      metric: str) -> tuple[float, list[dict[str, Any]]]:
    """The CF part's half-life on a carve of the split's own kind (one fit on the carve);
    0 without timestamps."""
    if "timestamp" not in split.train.columns:
        return 0.0, []
    carve = validation_split(split, fraction, seed)
    weights = fitted(carve)
    train, _ = split_matrices(carve, user_ids, num_items)
    return choose_half_life(carve, user_ids, num_items,
                            lambda recency: weights.user_embeddings(train, recency),
                            weights.item_embeddings(features, present), metric)


def cf_factors(train, rank: int, l2: float, ials: dict[str, float] | None = None,
               seed: int = 0, foldin: str = "exact"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float] | None]:
    """``(P, Q, warm, foldin)`` of the CF part on ``train``: EASE's rank-``rank`` factors
    (``l2`` > 0; 0: no EASE block), and with ``ials`` (``{"factors", "regularization",
    "alpha", "weight"}``) an iALS block of ``rank`` columns (zero-padded) after them, its
    query half scaled by ``weight`` (0: EASE alone). ``foldin="exact"``: that query half is
    iALS's exact user step (the returned ``foldin`` dict, for ``fit_linear_cf``; ``P``'s
    columns there are zero); ``"linear"``: the linearised step, in ``P``."""
    blocks_p, blocks_q, warm = [], [], np.asarray(sp_binary(train).getnnz(axis=0)) > 0
    if l2:
        query_factors, item_factors, warm = factorise_ease(train, rank, l2, seed)
        blocks_p.append(query_factors)
        blocks_q.append(item_factors)
    fold = None
    if ials is not None:
        factors = int(ials.get("factors", rank))
        y = np.zeros((train.shape[1], rank), np.float32)
        y[:, :factors] = IALS(factors, ials["regularization"], ials["alpha"],
                              seed=seed).fit(train).item_factors
        if foldin == "exact":
            p = np.zeros_like(y)
            fold = {"columns": rank, "regularization": ials["regularization"],
                    "alpha": ials["alpha"], "weight": ials["weight"]}
        else:
            p = ials["weight"] * ials_foldin_factors(y, ials["regularization"], ials["alpha"])
        blocks_p.append(p)
        blocks_q.append(y)
    if not blocks_p:
        raise ValueError("linear CF needs an EASE block (l2 > 0) or an iALS block")
    return (np.hstack(blocks_p).astype(np.float32), np.hstack(blocks_q).astype(np.float32),
            warm, fold)


def sp_binary(train):
    """``train`` as a binary float32 CSR matrix."""
    import scipy.sparse as sp

    x = sp.csr_matrix(train, dtype=np.float32)
    x.data[:] = 1.0
    return x


def cf_users(train, query_factors: np.ndarray, item_factors: np.ndarray, warm: np.ndarray,
             foldin: dict[str, float] | None) -> np.ndarray:
    """The CF part's query halves for every row of ``train`` (as served, score weight 1)."""
    return fit_linear_cf(query_factors, item_factors, warm, 1.0,
                         foldin=foldin).user_embeddings(train)


def _choose_ials(carve: Split, user_ids: np.ndarray, num_items: int, rank: int, l2: float,
                 seed: int, metric: str, foldin: str = "exact"
                 ) -> tuple[dict[str, float], dict[str, Any]]:
    """iALS's settings (as the iALS baseline is tuned, factors up to ``rank``), then with an
    EASE block (``l2`` > 0) its weight β beside it by ``metric`` on ``carve`` (the served
    fold-in, not iALS's own users); alone, β = 1."""
    grid = tuple(p for p in IALS_BLOCK_GRID if p["factors"] <= rank) or tuple(
        {**p, "factors": rank} for p in IALS_BLOCK_GRID if p["factors"] == 32)
    params, trials = select_on_validation(lambda **p: IALS(**p, seed=seed), grid, carve,
                                          user_ids, num_items, metric=metric)
    if not l2:
        return {**params, "weight": 1.0}, {"settings": trials}
    train, _ = split_matrices(carve, user_ids, num_items)
    # β scales the iALS query half only: one fit, scored at every β
    query_factors, item_factors, warm, fold = cf_factors(train, rank, l2,
                                                         {**params, "weight": 1.0}, seed, foldin)
    users = cf_users(train, query_factors, item_factors, warm, fold)
    scored = []
    for weight in IALS_BLOCK_WEIGHTS:
        scale = np.r_[np.ones(users.shape[1] - rank), np.full(rank, weight)]
        scored.append(({**params, "weight": weight},
                       score_on_carve((users * scale).astype(np.float32), item_factors, carve,
                                      user_ids, metric)))
    best = best_on_carve(scored, carve, "linear CF validation carve")
    blend_trials = [{"weight": point["weight"], "score": score} for point, score in scored]
    return best, {"settings": trials, "weight": blend_trials}


def _choose_content(split: Split, user_ids: np.ndarray, num_items: int, rank: int, l2: float,
                    ials: dict[str, float] | None, features: np.ndarray | None,
                    present: np.ndarray | None, fraction: float,
                    seed: int, metric: str, grid: tuple[dict, ...],
                    ials_weights: tuple[float, ...] | None = None, foldin: str = "exact"
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
    query_factors, item_factors, warm, fold = cf_factors(train, rank, l2, ials, seed, foldin)
    users = cf_users(train, query_factors, item_factors, warm, fold)
    scales = [(None, None)] if ials_weights is None else [
        (w, np.r_[np.ones(rank), np.full(users.shape[1] - rank, w)].astype(np.float32))
        for w in ials_weights]
    scored = []
    for params in grid:
        weights = fit_linear_cf(query_factors, item_factors, warm, params["alpha"], features,
                                present, params.get("width", 0.0), foldin=fold)
        items = weights.item_embeddings(features, present)
        for weight, scale in scales:
            point = dict(params) if weight is None else {**params, "ials_weight": weight}
            queries = users if scale is None else users * scale
            scored.append((point, score_on_carve(queries, items, carve, user_ids, metric)))
    best = best_on_carve(scored, carve, "linear CF cold-start validation carve")
    return best, [{"params": point, "score": score} for point, score in scored]
