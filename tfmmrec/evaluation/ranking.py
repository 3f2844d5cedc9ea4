"""Evaluation of a ranking head: pointwise/listwise metrics and two-stage (retrieve → re-rank).

Used by ``benchmarks/ml100k_ranking.py``, the ranking tests and ``tfmmrec.evaluate`` (its
``<name> · ranking head`` row, for a model with a ranking head).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec.evaluation.embeddings import embed_items, embed_users
from tfmmrec.evaluation.metrics import evaluate_ranking
from tfmmrec.evaluation.protocol import candidate_mask, scored_rows, split_matrices
from tfmmrec.evaluation.rating import auc, list_ndcg, log_loss, mae, ranked_lists, rmse
from tfmmrec.models.ranking import interactions_source, rating_targets, sample_lists

logger = logging.getLogger(__name__)


def score_pairs(model, users: np.ndarray, items: np.ndarray,
                batch_size: int = 8192) -> np.ndarray:
    """The ranking head's score of each (user id, item index) pair."""
    if len(users) == 0:
        return np.zeros(0, np.float32)
    score = tf.function(lambda u, i: model.score(u, i, training=False))
    parts = [score(tf.constant(users[s:s + batch_size]), tf.constant(items[s:s + batch_size]))
             for s in range(0, len(users), batch_size)]
    return tf.concat(parts, axis=0).numpy()


def evaluate_ranking_head(model, ws, score: Callable | None = None) -> dict[str, float]:
    """Ranking metrics on the test split: RMSE/MAE (regression), AUC and log-loss (binary,
    against seeded negatives the user never interacted with, ``binary_negatives``), NDCG@3/5
    over rated lists (listwise; lists rated all alike are skipped, as ``list_ndcg`` says, and
    counted in a log line). Empty when the test rows cannot give them: no ``rating``
    column (a supplied ``--test`` file without one) for the rating tasks, or no test user
    with ``ranking.list_size`` ratings for listwise.

    Over the test rows the retrieval metrics score (``protocol.scored_rows``): a supplied
    test row that is one of its user's training interactions, or whose item is not among the
    candidates, is left out here too, as ``evaluate``'s note says (they were scored).
    ``score(model, user ids, item indices)``: the scores (default :func:`score_pairs`)."""
    score = score or score_pairs
    task = getattr(model, "ranking_task", ws.config.ranking.task)
    scored = scored_rows(ws.split, ws.user_ids, ws.dataset.num_items)
    test = ws.split.test[scored]
    if len(test) == 0:
        return {}
    if task != "binary" and "rating" not in test.columns:
        return {}
    users = test["user_id"].astype(str).to_numpy()
    items = test["item_index"].to_numpy(np.int32)
    if task == "regression":
        predictions = score(model, users, items)
        ratings = rating_targets(test, task, source_of_test(ws))
        return {"rmse": rmse(predictions, ratings), "mae": mae(predictions, ratings)}
    if task == "binary":
        negatives = binary_negatives(ws)[scored]  # drawn per test row, the same in any case
        kept = negatives >= 0  # a user who interacted with every item has no negative
        scores = score(model, np.concatenate([users, users[kept]]),
                             np.concatenate([items, negatives[kept]]))
        labels = np.r_[np.ones(len(items)), np.zeros(int(kept.sum()))]
        return {"auc": auc(scores, labels), "log_loss": log_loss(scores, labels)}
    ranking = ws.config.ranking
    lists = sample_lists(users, items, rating_targets(test, task, source_of_test(ws)),
                         ranking.list_size, 1, ws.config.data.seed)
    if len(lists["user_id"]) == 0:
        return {}
    flat_users = np.repeat(lists["user_id"], ranking.list_size)
    scores = score(model, flat_users, lists["list_items"].reshape(-1)).reshape(
        -1, ranking.list_size)
    _log_skipped_lists(lists["list_ratings"])
    return {f"ndcg@{k}": list_ndcg(scores, lists["list_ratings"], k) for k in (3, 5)}


# Each task's reference: what its metrics are without a model, to read the head's against (a
# random order of 1-5 ratings in lists of 5 already scores NDCG@5 near 0.89).
REFERENCES = {"regression": "mean rating", "binary": "popularity", "listwise": "random order"}


def reference_ranking_metrics(ws, task: str) -> dict[str, float]:
    """The head's metrics (:func:`evaluate_ranking_head`, same rows, lists and negatives)
    scored without a model: every pair the training mean rating (regression), an item's
    training count (binary: AUC only, counts are no probabilities), a seeded random order
    (listwise). ``REFERENCES[task]`` names it."""
    train = ws.split.train
    if task == "regression":
        mean = float(rating_targets(train, task).mean())

        def score(_, users, items):
            return np.full(len(users), mean, np.float32)
    elif task == "binary":
        counts = np.bincount(train["item_index"].to_numpy(np.int64),
                             minlength=ws.dataset.num_items).astype(np.float32)

        def score(_, users, items):
            return counts[np.asarray(items, np.int64)]
    else:
        rng = np.random.default_rng(ws.config.data.seed)

        def score(_, users, items):
            return rng.random(len(users)).astype(np.float32)
    metrics = evaluate_ranking_head(SimpleNamespace(ranking_task=task), ws, score)
    metrics.pop("log_loss", None)
    return metrics


def _log_skipped_lists(ratings: np.ndarray) -> None:
    """Say how many test lists NDCG leaves out (every item rated the same): the figure is
    over the others only, and NaN when none is left."""
    skipped = int((~ranked_lists(ratings)).sum())
    if skipped:
        logger.info("listwise NDCG: %d of %d test lists skipped, every item in them rated the "
                    "same (any order is ideal)", skipped, len(ratings))


def source_of_test(ws) -> Path | None:
    """The table the test rows were read from, for errors to name: a supplied ``--test``
    file (``load_test_interactions`` records it), else the dataset's interactions table."""
    return ws.split.test.attrs.get("source") or interactions_source(ws.dataset.root)


def binary_negatives(ws) -> np.ndarray:
    """One negative item index per test row (-1: none left), drawn uniformly (seeded by
    ``data.seed``) among the items its user has no train, validation or test row with. A
    uniform draw over the catalogue hits the user's own items (the positive itself, scored
    the same, or another test item) and counts them as negatives; training leaves such hits
    out of its loss too."""
    split, num_items = ws.split, ws.dataset.num_items
    seen = pd.concat([frame[["user_id", "item_index"]] for frame in
                      (split.train, split.validation, split.test) if frame is not None])
    codes, vocabulary = pd.factorize(seen["user_id"].astype(str))
    seen_pairs = np.unique(codes * num_items + seen["item_index"].to_numpy(np.int64))
    users = vocabulary.get_indexer(split.test["user_id"].astype(str)).astype(np.int64)
    seen_count = np.bincount(seen_pairs // num_items, minlength=len(vocabulary))
    rng = np.random.default_rng(ws.config.data.seed)
    negatives = np.full(len(users), -1, np.int64)
    pending = seen_count[users] < num_items  # users with an item left to draw
    while pending.any():  # redraw the hits only: each draw stays uniform over unseen items
        negatives[pending] = rng.integers(0, num_items, int(pending.sum()))
        pending &= np.isin(users * num_items + negatives, seen_pairs)
    return negatives.astype(np.int32)


def evaluate_two_stage(model, ws, ks=(10,), batch_size: int = 256) -> dict[str, float]:
    """NDCG@K and Recall@K of retrieve-top-N → re-rank versus retrieval alone, under the
    split's protocol (training items excluded; a cold-start split's or ``--candidates``' items
    only). Users are re-ranked ``batch_size`` at a time: memory is a few ``batch_size ×
    items`` arrays."""
    num_items = ws.dataset.num_items
    users = embed_users(model, ws.user_ids)
    items = embed_items(model, num_items)
    train, test = split_matrices(ws.split, ws.user_ids, num_items)
    candidates = candidate_mask(ws.split, num_items)
    allowed = np.ones(num_items, bool) if candidates is None else candidates
    n = min(ws.config.ranking.retrieve_candidates, int(allowed.sum()))
    rerank = tf.function(lambda q, c: model.score_candidates(q, c))
    two_stage = []
    for start in range(0, len(users), batch_size):
        rows = slice(start, start + batch_size)
        scores = users[rows] @ items.T
        scores[:, ~allowed] = -np.inf
        scores[train[rows].toarray() > 0] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        logits = rerank(tf.constant(users[rows]), tf.constant(items[top])).numpy()
        reranked = np.take_along_axis(top, np.argsort(-logits, axis=1, kind="stable"), axis=1)
        # each user's re-ranked list as scores: its position, highest first
        positions = np.zeros((len(top), num_items), np.float32)
        np.put_along_axis(positions, reranked, np.arange(n, 0, -1, dtype=np.float32)[None, :],
                          axis=1)
        two_stage.append(evaluate_ranking(
            np.eye(len(top), dtype=np.float32), positions.T, test[rows], exclude=train[rows],
            ks=ks, candidates=candidates, return_per_user=True).per_user)
    retrieval = evaluate_ranking(users, items, test, exclude=train, ks=ks,
                                 candidates=candidates).to_dict()
    # A list of n < K candidates has no K-th place: the positions after n would tie at 0 and
    # take credit from items never retrieved, so such a K has no two-stage figure.
    beyond = [k for k in ks if n < min(k, int(allowed.sum()))]
    if beyond:
        logger.warning("two-stage figures at K=%s left out: ranking.retrieve_candidates=%d "
                       "re-ranks fewer items than K", ", ".join(map(str, beyond)), n)
    return {**{f"retrieval_{m}@{k}": retrieval[f"{m}@{k}"] for k in ks for m in ("ndcg",
                                                                                  "recall")},
            **{f"two_stage_{m}@{k}": float("nan") if k in beyond
               else _mean_over_users(two_stage, f"{m}@{k}")
               for k in ks for m in ("ndcg", "recall")}}


def _mean_over_users(batches: list[dict[str, np.ndarray]], metric: str) -> float:
    values = np.concatenate([batch[metric] for batch in batches])
    return float(values.mean()) if len(values) else float("nan")
