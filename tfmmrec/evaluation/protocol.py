"""Evaluation: apply a split's protocol to embeddings (which items rank, which are excluded).

Random/temporal splits rank the whole catalogue with each user's training items excluded, plus
TFRS's top-K accuracy without exclusion (comparable with the TFRS tutorials). A cold-start split
ranks only the held-out items, which no model saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tfmmrec.data.splits import Split
from tfmmrec.evaluation.metrics import (
    evaluate_ranking,
    interactions_matrix,
    popularity_scores,
    top_k_accuracy,
)

TOP_K_ACCURACY_KS = (1, 5, 10, 50, 100)


def _user_rows(frame: pd.DataFrame, user_ids: np.ndarray) -> np.ndarray:
    lookup = pd.Index(user_ids)
    return lookup.get_indexer(frame["user_id"].astype(str))


def split_matrices(split: Split, user_ids: np.ndarray, num_items: int):
    """(train, test) user × item CSR matrices, users in vocabulary order."""
    user_ids = np.asarray(user_ids).astype(str)
    matrices = []
    for frame in (split.train, split.test):
        rows = _user_rows(frame, user_ids)
        matrices.append(interactions_matrix(rows, frame["item_index"].to_numpy(),
                                            len(user_ids), num_items))
    return matrices[0], matrices[1]


def evaluate_embeddings(query_embeddings: np.ndarray, item_embeddings: np.ndarray, split: Split,
                        user_ids: np.ndarray, ks: Sequence[int], batch_size: int = 1024,
                        item_bias: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one model (or baseline, via ``item_bias``) under the split's protocol."""
    num_items = item_embeddings.shape[0]
    train, test = split_matrices(split, user_ids, num_items)
    candidates = None
    if split.test_items is not None:
        candidates = np.zeros(num_items, bool)
        candidates[split.test_items] = True
    result = evaluate_ranking(query_embeddings, item_embeddings, test, exclude=train, ks=ks,
                              candidates=candidates, batch_size=batch_size, item_bias=item_bias)
    metrics = result.to_dict()
    if candidates is None:
        rows = _user_rows(split.test, np.asarray(user_ids).astype(str))
        metrics.update(top_k_accuracy(query_embeddings[rows], item_embeddings,
                                      split.test["item_index"].to_numpy(), ks=TOP_K_ACCURACY_KS,
                                      batch_size=batch_size, item_bias=item_bias))
    return metrics


def popularity_baseline(split: Split, user_ids: np.ndarray, num_items: int, ks: Sequence[int],
                        batch_size: int = 1024) -> dict[str, float]:
    """Rank every user's candidates by training popularity (a strong, honest baseline)."""
    train, _ = split_matrices(split, user_ids, num_items)
    bias = popularity_scores(train)
    empty_queries = np.zeros((len(user_ids), 0), np.float32)
    empty_items = np.zeros((num_items, 0), np.float32)
    return evaluate_embeddings(empty_queries, empty_items, split, user_ids, ks, batch_size,
                               item_bias=bias)


def random_baseline(split: Split, user_ids: np.ndarray, num_items: int, ks: Sequence[int],
                    seed: int = 0, batch_size: int = 1024) -> dict[str, float]:
    """Random scores (seeded): the floor every model must clear."""
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(len(user_ids), 32)).astype(np.float32)
    items = rng.normal(size=(num_items, 32)).astype(np.float32)
    return evaluate_embeddings(queries, items, split, user_ids, ks, batch_size)
