"""Choosing the serving embedding on validation data (tfmmrec.evaluation.fusion_selection)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tfmmrec.data.splits import Split
from tfmmrec.evaluation.fusion_selection import choose_serving_mix, simplex_grid


def test_simplex_grid_includes_each_modality_alone():
    assert simplex_grid(2, 2) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    grid = simplex_grid(3, 10)
    assert len(grid) == 66 and all(abs(sum(w) - 1) < 1e-9 for w in grid)
    assert (1.0, 0.0, 0.0) in grid and (0.0, 0.0, 1.0) in grid


def split_with_one_test_item_per_user(num_users: int, num_items: int) -> Split:
    users = [f"u{i}" for i in range(num_users)]
    test = pd.DataFrame({"user_id": users, "item_index": np.arange(num_users) % num_items})
    train = pd.DataFrame({"user_id": users, "item_index": (np.arange(num_users) + 1) % num_items})
    return Split("random", train, test)


def test_the_modality_that_ranks_validation_items_best_is_chosen():
    """Modality 0 puts each user's validation item first, modality 1 and the fused embedding
    are noise: the mix chosen is modality 0 alone (any weight on 1 costs recall)."""
    rng = np.random.default_rng(0)
    num_users = num_items = 12
    split = split_with_one_test_item_per_user(num_users, num_items)
    users = np.eye(num_users, dtype=np.float32)
    singles = [np.eye(num_items, dtype=np.float32) * 5,
               rng.normal(size=(num_items, num_users)).astype(np.float32) * 100]

    def mix(weights):
        return sum(w * s for w, s in zip(weights, singles, strict=True))

    fused = rng.normal(size=(num_items, num_users)).astype(np.float32)
    ids = np.array([f"u{i}" for i in range(num_users)])
    weights, scores = choose_serving_mix(users, fused, mix, split, ids, 2, "recall@1", [1])
    assert weights == (1.0, 0.0)
    assert scores["1,0"] == pytest.approx(1.0) and scores["fused"] < 0.5


def test_ties_keep_the_fused_embedding():
    split = split_with_one_test_item_per_user(4, 4)
    users = np.eye(4, dtype=np.float32)
    items = np.eye(4, dtype=np.float32)
    weights, scores = choose_serving_mix(users, items, lambda w: items, split,
                                         np.array(["u0", "u1", "u2", "u3"]), 2, "recall@1", [1])
    assert weights is None and set(scores.values()) == {1.0}
