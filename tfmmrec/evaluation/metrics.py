"""Evaluation, after training: score users × items in batches and turn the rankings into metrics.

Everything here is numpy + scipy.sparse: embeddings arrive as arrays, so a model, a baseline with
zero-dimensional embeddings plus an ``item_bias``, and a test can all share one exact code path.
Ranking is deterministic: equal scores are ordered by lower item index first, as ``tf.math.top_k``
does, so a metric never changes between runs because of how ties happened to fall.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

RANKING_FAMILIES = ("recall", "ndcg", "hit_rate")
_warned_trivial_top_k: set[tuple[tuple[int, ...], int]] = set()


@dataclass
class RankingResult:
    """The metrics of one model on one split, and optionally the per-user values behind them.

    ``metrics``: means over evaluated users of ``recall@K``, ``ndcg@K``, ``hit_rate@K`` and
    ``mrr``; catalogue-level ``coverage@K``; the counts ``num_users`` (evaluated),
    ``num_users_skipped`` and ``num_interactions`` (the test interactions measured: relevant
    items of evaluated users, so a test row outside the candidates or among the user's
    training items is not counted). The ``top_k_accuracy@K`` dict of :func:`top_k_accuracy`
    (no key for a K that reaches the catalogue) merges in with ``result.metrics.update(...)``.
    ``per_user`` (only when asked for, since it is one array per metric): ``user`` (row indices of
    the evaluated users), ``num_relevant``, ``rank`` (of the first relevant item), ``mrr`` (its
    reciprocal) and every per-user metric, all aligned with ``user`` — for significance tests and
    per-segment breakdowns.
    """

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray] | None = None

    def to_dict(self) -> dict[str, float]:
        """The metrics as plain Python numbers (no numpy scalars), ready for JSON and tables."""
        return {key: _python_number(value) for key, value in self.metrics.items()}


def evaluate_ranking(
    query_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    test: sp.spmatrix,
    exclude: sp.spmatrix | None = None,
    ks: Sequence[int] = (10, 20, 50, 100),
    candidates: np.ndarray | None = None,
    batch_size: int = 1024,
    item_bias: np.ndarray | None = None,
    return_per_user: bool = False,
) -> RankingResult:
    """Rank the whole catalogue (or ``candidates``) for every user and measure it against ``test``.

    The score of user ``u`` for item ``i`` is ``query_embeddings[u] @ item_embeddings[i]`` plus
    ``item_bias[i]``; a popularity baseline passes zero-dimensional embeddings and the counts of
    :func:`popularity_scores` as the bias. Users are scored ``batch_size`` at a time, so memory
    is a few ``batch_size × num_items`` arrays (lower ``batch_size`` for very large catalogues).

    Args:
        query_embeddings: ``[U, d]``, one row per user (row ``u`` is row ``u`` of ``test``).
        item_embeddings: ``[N, d]``.
        test: ``[U, N]`` sparse; any stored nonzero marks a relevant item.
        exclude: ``[U, N]`` sparse, e.g. the training interactions; these items are never ranked
            (scored -inf), and a test item that is also excluded is dropped from that user's
            relevant set, since it could not be retrieved.
        ks: cut-offs. A K above the number of candidate items is clamped to it (the key keeps the
            requested K); items a user may not see never fill the top K, even when K exceeds
            what is left after exclusion.
        candidates: ``[N]`` bool; rank only these items (e.g. held-out cold-start items). Test
            items outside it are dropped.
        batch_size: users scored per matrix product.
        item_bias: ``[N]`` added to every user's scores.
        return_per_user: also return per-user arrays (see :class:`RankingResult`).

    Definitions, per evaluated user with relevant set R (test ∩ candidates − exclude):
        users with an empty R are skipped and counted in ``num_users_skipped``;
        ``recall@K`` = hits@K / min(K, |R|) (normalised, so 1.0 is reachable when |R| > K);
        ``ndcg@K`` = DCG@K / IDCG, binary gains, discount 1/log2(rank + 1), IDCG over
        min(K, |R|) items; ``hit_rate@K`` = 1 if any hit in the top K;
        ``mrr`` = 1 / rank of the first relevant item in the full ranking (no cut-off);
        ``coverage@K`` = fraction of candidate items in at least one evaluated user's top K.
        All but coverage are means over evaluated users; NaN (with a warning) when there are none.
        Ties: equal scores rank the lower item index first.
    """
    queries, items = _check_embeddings(query_embeddings, item_embeddings)
    num_users, num_items = queries.shape[0], items.shape[0]
    ks = check_ks(ks)
    _check_batch_size(batch_size)
    relevant = _binary_matrix(test, (num_users, num_items), "test")
    excluded = None if exclude is None else _binary_matrix(exclude, relevant.shape, "exclude")
    bias = _check_bias(item_bias, num_items)

    keep = _candidate_index(candidates, num_items)
    if keep is not None:  # non-candidates can never rank, so drop their columns up front
        items, relevant = items[keep], relevant[:, keep]
        excluded = None if excluded is None else excluded[:, keep]
        bias = None if bias is None else bias[keep]
    relevant = _drop_excluded(relevant, excluded, keep)

    num_candidates = items.shape[0]
    clamped = {k: min(k, num_candidates) for k in ks}
    num_relevant = relevant.getnnz(axis=1)
    users = np.flatnonzero(num_relevant)
    seen = {k: np.zeros(num_candidates, dtype=bool) for k in ks}
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        scores = _scores(queries[batch], items, bias)
        banned = None if excluded is None else excluded[batch].toarray().astype(bool)
        if banned is not None:
            scores[banned] = -np.inf
        top = top_k_items(scores, max(clamped.values()))
        rel = relevant[batch].toarray().astype(bool)
        parts.append(_user_metrics(scores, rel, top, num_relevant[batch], clamped))
        _mark_coverage(seen, top, banned, clamped)

    per_user = _concat(parts, users, num_relevant[users], ks)
    metrics = _aggregate(per_user, seen, ks, num_users)
    logger.debug(  # every baseline repeats it: detail, not progress
        "ranked %d candidate items for %d users (%d skipped without test items)",
        num_candidates, metrics["num_users"], metrics["num_users_skipped"],
    )
    return RankingResult(metrics=metrics, per_user=per_user if return_per_user else None)


def top_k_accuracy(
    query_embeddings_per_example: np.ndarray,
    item_embeddings: np.ndarray,
    positives: np.ndarray,
    ks: Sequence[int] = (1, 5, 10, 50, 100),
    batch_size: int = 1024,
    item_bias: np.ndarray | None = None,
) -> dict[str, float]:
    """TFRS's ``FactorizedTopK`` metric: how often each test interaction's item is in the top K.

    One query per interaction (``[E, d]``, e.g. the user's embedding repeated), ranked over ALL
    items with nothing excluded, averaged over interactions — the figure the TFRS tutorials
    report, so results can be compared with them (our :func:`evaluate_ranking` is the protocol to
    trust: it excludes training items). Ties rank the lower item index first, whereas TFRS counts
    a positive tied at the boundary as in; the two differ only on exact ties. A K that reaches
    the number of items is left out (warned once per process): every item is in such a top K,
    so its 1.0 would say nothing of the model. Returns ``{"top_k_accuracy@K": value}`` for
    each K below the number of items.
    """
    queries, items = _check_embeddings(query_embeddings_per_example, item_embeddings)
    ks = check_ks(ks)
    _check_batch_size(batch_size)
    positives = _check_positives(positives, queries.shape[0], items.shape[0])
    bias = _check_bias(item_bias, items.shape[0])
    ranks = np.empty(positives.size, dtype=np.int64)
    for start in range(0, positives.size, batch_size):
        stop = start + batch_size
        ranks[start:stop] = _rank_of(_scores(queries[start:stop], items, bias),
                                     positives[start:stop])
    if ranks.size == 0:
        logger.warning("top_k_accuracy: no test interactions; every accuracy is NaN")
    trivial = [k for k in ks if k >= items.shape[0]]
    if trivial:
        _warn_trivial_top_k(trivial, items.shape[0])
    return {f"top_k_accuracy@{k}": _mean(ranks < k) for k in ks if k not in trivial}


def popularity_scores(train: sp.spmatrix) -> np.ndarray:
    """Per-item interaction counts (users with a nonzero entry): the popularity baseline's bias."""
    if not sp.issparse(train) or len(train.shape) != 2:
        raise ValueError(
            f"train must be a 2-D scipy.sparse users × items matrix, got {type(train).__name__}; "
            "build one with interactions_matrix()"
        )
    return np.asarray((sp.csc_matrix(train) != 0).sum(axis=0), dtype=np.float64).ravel()


def interactions_matrix(
    user_idx: np.ndarray, item_idx: np.ndarray, num_users: int, num_items: int
) -> sp.csr_matrix:
    """A binary ``[num_users, num_items]`` CSR matrix from index pairs; duplicates collapse to 1."""
    users = _check_index(user_idx, num_users, "user_idx")
    items = _check_index(item_idx, num_items, "item_idx")
    if users.shape != items.shape:
        raise ValueError(
            f"user_idx and item_idx must have the same length, got {users.size} and {items.size}"
        )
    ones = np.ones(users.size, dtype=np.float32)
    matrix = sp.csr_matrix((ones, (users, items)), shape=(num_users, num_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _warn_trivial_top_k(ks: list[int], num_items: int) -> None:
    """Say once per process (each model and baseline, each validation epoch would repeat it)
    which top-K accuracies are left out because K reaches the catalogue."""
    key = (tuple(ks), num_items)
    if key in _warned_trivial_top_k:
        return
    _warned_trivial_top_k.add(key)
    logger.warning("top_k_accuracy@%s left out: K reaches the %d items of the catalogue "
                   "(every item is in the top K, so the accuracy is 1.0 for any model)",
                   ", @".join(map(str, ks)), num_items)


# --- ranking ----------------------------------------------------------------------------------


def _scores(queries: np.ndarray, items: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """One batch of the user × item score matrix; NaN/inf would make the ranking meaningless."""
    scores = queries @ items.T
    if bias is not None:
        scores += bias
    if not np.isfinite(scores).all():
        raise ValueError(
            "scores contain NaN or inf (overflow in query_embeddings @ item_embeddings.T or "
            "item_bias); check the model for divergence before evaluating"
        )
    return scores


def top_k_items(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best scores, best first, ties by lower index.

    ``argpartition`` alone would break ties at the boundary arbitrarily, so the boundary value
    is found with a partition and the tied items are admitted lowest index first; a stable sort
    of the k survivors (taken in index order) then keeps the tie rule inside the top k.
    """
    num_items = scores.shape[1]
    if k >= num_items:
        return np.argsort(-scores, axis=1, kind="stable")
    kth = np.partition(scores, num_items - k, axis=1)[:, num_items - k, None]
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(axis=1)
    crowded = np.flatnonzero(tied.sum(axis=1) > need)
    if crowded.size:
        order_in_tie = np.cumsum(tied[crowded], axis=1, dtype=np.int32)
        tied[crowded] &= order_in_tie <= need[crowded, None]
    picked = np.nonzero(above | tied)[1].reshape(-1, k)
    order = np.argsort(-np.take_along_axis(scores, picked, axis=1), axis=1, kind="stable")
    return np.take_along_axis(picked, order, axis=1)


def _rank_of(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of ``targets[r]`` in row r: items scoring higher, plus equal ones before it."""
    target = scores[np.arange(scores.shape[0]), targets][:, None]
    before = np.arange(scores.shape[1]) < targets[:, None]
    return (scores > target).sum(axis=1) + ((scores == target) & before).sum(axis=1)


def _user_metrics(
    scores: np.ndarray,
    rel: np.ndarray,
    top: np.ndarray,
    num_relevant: np.ndarray,
    clamped: dict[int, int],
) -> dict[str, np.ndarray]:
    """Per-user recall/ndcg/hit rate at every K and the rank of the first relevant item."""
    hits = np.take_along_axis(rel, top, axis=1)
    discount = 1.0 / np.log2(np.arange(top.shape[1]) + 2.0)
    cum_hits = np.cumsum(hits, axis=1)
    dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.cumsum(discount)
    out: dict[str, np.ndarray] = {}
    for k, used in clamped.items():
        found = cum_hits[:, used - 1]
        reachable = np.minimum(used, num_relevant)
        out[f"recall@{k}"] = found / reachable
        out[f"ndcg@{k}"] = dcg[:, used - 1] / ideal[reachable - 1]
        out[f"hit_rate@{k}"] = (found > 0).astype(np.float64)
    best = np.where(rel, scores, -np.inf).max(axis=1, keepdims=True)
    first = np.argmax(rel & (scores == best), axis=1)  # lowest index among the best-scored
    out["rank"] = _rank_of(scores, first) + 1
    return out


def _mark_coverage(
    seen: dict[int, np.ndarray],
    top: np.ndarray,
    banned: np.ndarray | None,
    clamped: dict[int, int],
) -> None:
    """Record which items reached some user's top K; excluded fillers do not count."""
    for k, used in clamped.items():
        shown = top[:, :used]
        if banned is not None:
            shown = shown[~np.take_along_axis(banned, shown, axis=1)]
        seen[k][shown.ravel()] = True


def _concat(
    parts: list[dict[str, np.ndarray]], users: np.ndarray, num_relevant: np.ndarray,
    ks: list[int],
) -> dict[str, np.ndarray]:
    keys = ["rank", *(f"{family}@{k}" for family in RANKING_FAMILIES for k in ks)]
    per_user = {"user": users, "num_relevant": num_relevant}
    for key in keys:
        dtype = np.int64 if key == "rank" else np.float64
        per_user[key] = np.concatenate([p[key] for p in parts]) if parts else np.empty(0, dtype)
    per_user["mrr"] = 1.0 / per_user["rank"]
    return per_user


def _aggregate(
    per_user: dict[str, np.ndarray], seen: dict[int, np.ndarray], ks: list[int], num_users: int
) -> dict[str, float]:
    evaluated = int(per_user["user"].size)
    if evaluated == 0:
        logger.warning("no user has a relevant test item among the candidates; metrics are NaN")
    metrics = {
        f"{family}@{k}": _mean(per_user[f"{family}@{k}"])
        for family in RANKING_FAMILIES for k in ks
    }
    for k in ks:
        metrics[f"coverage@{k}"] = _mean(seen[k]) if evaluated else float("nan")
    metrics["mrr"] = _mean(per_user["mrr"])
    metrics["num_users"] = evaluated
    metrics["num_users_skipped"] = num_users - evaluated
    metrics["num_interactions"] = int(per_user["num_relevant"].sum())
    return metrics


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


# --- input checks -----------------------------------------------------------------------------


def _check_embeddings(queries: Any, items: Any) -> tuple[np.ndarray, np.ndarray]:
    """2-D, same width, finite, a common float dtype (float32 stays float32 for speed)."""
    queries, items = np.asarray(queries), np.asarray(items)
    for name, array in (("query embeddings", queries), ("item_embeddings", items)):
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D [rows, dim], got shape {array.shape}")
    if queries.shape[1] != items.shape[1]:
        raise ValueError(
            f"query and item embeddings must have the same dimension, got {queries.shape[1]} and "
            f"{items.shape[1]}; use the query and candidate towers of the same model"
        )
    dtype = np.result_type(queries.dtype, items.dtype, np.float32)
    queries, items = queries.astype(dtype, copy=False), items.astype(dtype, copy=False)
    if not (np.isfinite(queries).all() and np.isfinite(items).all()):
        raise ValueError("query or item embeddings contain NaN or inf; the model has diverged")
    return queries, items


def check_ks(ks: Sequence[int]) -> list[int]:
    ks = [ks] if isinstance(ks, int | np.integer) else list(ks)
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks!r}")
    return sorted({int(k) for k in ks})


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _binary_matrix(matrix: Any, shape: tuple[int, int], name: str) -> sp.csr_matrix:
    """A 0/1 int8 CSR copy; explicitly stored zeros are not relevant (or excluded)."""
    if not sp.issparse(matrix):
        raise ValueError(
            f"{name} must be a scipy.sparse users × items matrix, got {type(matrix).__name__}; "
            "build one with interactions_matrix()"
        )
    if matrix.shape != shape:
        raise ValueError(
            f"{name} has shape {matrix.shape} but the embeddings imply {shape} "
            "(rows = query embeddings, columns = item embeddings)"
        )
    binary = sp.csr_matrix(matrix != 0, dtype=np.int8)
    binary.eliminate_zeros()
    return binary


def _check_bias(bias: Any, num_items: int) -> np.ndarray | None:
    if bias is None:
        return None
    bias = np.asarray(bias, dtype=np.float64)
    if bias.shape != (num_items,):
        raise ValueError(f"item_bias must have shape ({num_items},), got {bias.shape}")
    if not np.isfinite(bias).all():
        raise ValueError("item_bias contains NaN or inf")
    return bias


def _candidate_index(candidates: Any, num_items: int) -> np.ndarray | None:
    if candidates is None:
        return None
    mask = np.asarray(candidates)
    if mask.dtype != bool or mask.shape != (num_items,):
        raise ValueError(
            f"candidates must be a bool mask of shape ({num_items},), got dtype {mask.dtype} "
            f"and shape {mask.shape}"
        )
    if not mask.any():
        raise ValueError("candidates selects no item; pass None to rank the whole catalogue")
    return np.flatnonzero(mask)


def _drop_excluded(relevant: sp.csr_matrix, excluded: sp.csr_matrix | None,
                   keep: np.ndarray | None = None) -> sp.csr_matrix:
    """Remove relevant items a user may not be shown: they could never be hit.

    Said at debug level only: this runs once per model compared, and the CLI's note already
    tells the user how many test rows are not scored and why. ``keep``: the candidate item
    indices the matrices' columns are (``None``: every item), to name the first pairs."""
    if excluded is None:
        return relevant
    overlap = relevant.multiply(excluded)
    if overlap.nnz:
        if logger.isEnabledFor(logging.DEBUG):
            first = sp.coo_matrix(overlap)
            rows, columns = first.row[:5], first.col[:5]
            columns = columns if keep is None else keep[columns]
            pairs = ", ".join(f"(row {row}, item {column})"
                              for row, column in zip(rows, columns, strict=True))
            logger.debug("%d test interaction(s) are also excluded; dropped from the relevant "
                         "sets: %s%s", overlap.nnz, pairs, " ..." if overlap.nnz > 5 else "")
        relevant = sp.csr_matrix(relevant - overlap)
        relevant.eliminate_zeros()
    return relevant


def _check_positives(positives: Any, num_examples: int, num_items: int) -> np.ndarray:
    positives = np.asarray(positives)
    if positives.shape != (num_examples,):
        raise ValueError(
            f"positives must have shape ({num_examples},) (one item per query row), "
            f"got {positives.shape}"
        )
    return _check_index(positives, num_items, "positives")


def _check_index(index: Any, size: int, name: str) -> np.ndarray:
    index = np.asarray(index).ravel()
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices, got dtype {index.dtype}")
    index = index.astype(np.int64, copy=False)
    if index.size and (index.min() < 0 or index.max() >= size):
        raise ValueError(
            f"{name} must lie in [0, {size}), got values in [{index.min()}, {index.max()}]"
        )
    return index


def _python_number(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
