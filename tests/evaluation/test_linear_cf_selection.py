"""Tests for tfmmrec.evaluation.linear_cf_selection: the CF part's settings chosen on
validation, with and without the iALS block."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tfmmrec.data.splits import split_interactions
from tfmmrec.evaluation.linear_cf_selection import (
    IALS_BLOCK_WEIGHTS,
    block_width,
    choose_linear_cf,
    foldin_width,
)
from tfmmrec.evaluation.protocol import split_matrices
from tfmmrec.evaluation.recency import HALF_LIVES
from tfmmrec.towers.cf import ials_user_factors

RNG = np.random.default_rng(3)
USERS = np.array([f"u{i}" for i in range(60)])
NUM_ITEMS = 20


def interactions() -> pd.DataFrame:
    """Two taste groups (items 0–9, 10–19) with noise: something for CF to learn."""
    rows = []
    for u, user in enumerate(USERS):
        group = np.arange(10) + 10 * (u % 2)
        for item in RNG.choice(group, 6, replace=False):
            rows.append((user, int(item)))
        rows.append((user, int(RNG.integers(NUM_ITEMS))))
    frame = pd.DataFrame(rows, columns=["user_id", "item_index"]).drop_duplicates()
    frame["timestamp"] = np.arange(len(frame))
    return frame.reset_index(drop=True)


def test_the_ials_block_sits_beside_ease_with_its_weight_chosen_on_validation():
    split = split_interactions(interactions(), "random", 0.2, 0)
    ease, _ = choose_linear_cf(split, USERS, NUM_ITEMS, rank=4, l2=10.0, alpha=1.0, seed=0)
    both, info = choose_linear_cf(split, USERS, NUM_ITEMS, rank=4, l2=10.0, alpha=1.0, seed=0,
                                  blocks="ease+ials", foldin="linear")
    assert both.query_factors.shape == both.item_factors.shape == (NUM_ITEMS, 8)
    # the first block is EASE's, unchanged
    np.testing.assert_array_equal(both.query_factors[:, :4], ease.query_factors)
    np.testing.assert_array_equal(both.item_factors[:, :4], ease.item_factors)
    trials = info["validation"]["ials"]["weight"]
    assert [t["weight"] for t in trials] == list(IALS_BLOCK_WEIGHTS)
    best = max(trials, key=lambda t: t["score"])  # ties keep the first (max does too)
    assert info["ials"]["weight"] == best["weight"]
    if best["weight"] == 0:  # EASE alone: the iALS query half is zero
        np.testing.assert_array_equal(both.query_factors[:, 4:], 0.0)
    else:
        assert np.abs(both.query_factors[:, 4:]).sum() > 0
    assert set(info["ials"]) == {"factors", "regularization", "alpha", "weight"}
    assert both.foldin_columns == 0  # linearised: all in P


def test_the_exact_foldin_block_solves_the_user_step_with_the_chosen_weight():
    split = split_interactions(interactions(), "random", 0.2, 0)
    weights, info = choose_linear_cf(split, USERS, NUM_ITEMS, rank=4, l2=10.0, alpha=1.0,
                                     seed=0, blocks="ease+ials", half_life=0.0)
    chosen = info["ials"]
    assert weights.foldin_columns == 4 and info["foldin"] == "exact"
    assert (weights.foldin_regularization, weights.foldin_alpha, weights.foldin_weight) == (
        chosen["regularization"], chosen["alpha"], chosen["weight"])
    np.testing.assert_array_equal(weights.query_factors[:, 4:], 0.0)
    train, _ = split_matrices(split, USERS, NUM_ITEMS)
    users = weights.user_embeddings(train)
    expected = chosen["weight"] * ials_user_factors(weights.item_factors[:, 4:], train,
                                                    chosen["regularization"], chosen["alpha"])
    np.testing.assert_allclose(users[:, 4:], expected, rtol=1e-5, atol=1e-6)


def test_the_ials_block_alone_has_no_ease_columns_and_weight_one():
    split = split_interactions(interactions(), "random", 0.2, 0)
    weights, info = choose_linear_cf(split, USERS, NUM_ITEMS, rank=4, alpha=1.0, seed=0,
                                     blocks="ials")
    assert weights.item_factors.shape == (NUM_ITEMS, 4) and weights.foldin_columns == 4
    assert info["l2"] == 0.0 and "l2" not in info["validation"]
    assert info["ials"]["weight"] == weights.foldin_weight == 1.0
    trials = info["validation"]["ials"]["settings"]
    assert max(trials, key=lambda t: t["score"])["params"] == {
        k: info["ials"][k] for k in ("factors", "regularization", "alpha")}


def test_unknown_blocks_are_refused_and_widths_follow_the_blocks():
    assert block_width("ease", 16) == 16 and block_width("ease+ials", 16) == 32
    assert block_width("ials", 16) == 16
    assert (foldin_width("ease", 16, "exact"), foldin_width("ials", 16, "exact"),
            foldin_width("ease+ials", 16, "linear")) == (0, 16, 0)
    split = split_interactions(interactions(), "random", 0.2, 0)
    with pytest.raises(ValueError, match="ease\\+ials"):
        choose_linear_cf(split, USERS, NUM_ITEMS, rank=4, l2=10.0, alpha=1.0, blocks="bpr")
    with pytest.raises(ValueError, match="fold-in must be one of"):
        choose_linear_cf(split, USERS, NUM_ITEMS, rank=4, l2=10.0, alpha=1.0, foldin="cg")


def test_on_a_cold_start_split_the_ials_weight_is_chosen_with_the_content_map_on_cold_items():
    frame = interactions()
    split = split_interactions(frame, "cold_start", 0.2, 0)
    # features that know each item's taste group, so cold items can be placed
    features = np.c_[np.arange(NUM_ITEMS) < 10, np.arange(NUM_ITEMS) >= 10,
                     RNG.normal(scale=0.1, size=(NUM_ITEMS, 3))].astype(np.float64)
    weights, info = choose_linear_cf(split, USERS, NUM_ITEMS, rank=4, l2=10.0, seed=0,
                                     features=features, content="kernel", blocks="ease+ials")
    trials = info["validation"]["content"]
    assert {t["params"]["ials_weight"] for t in trials} == set(IALS_BLOCK_WEIGHTS)
    best = max(trials, key=lambda t: t["score"])
    assert info["ials"]["weight"] == best["params"]["ials_weight"]
    assert (info["width"], info["alpha"]) == (best["params"]["width"],
                                              best["params"]["alpha"])
    assert weights.item_factors.shape == (NUM_ITEMS, 8)


RING = 60


def drifting_interactions(num_users: int = 80, length: int = 12) -> pd.DataFrame:
    """Each user walks along a ring of ``RING`` items, one step per interaction, from a random
    start: what comes next follows what came last, not the history as a whole."""
    rows = []
    for u in range(num_users):
        start = RNG.integers(RING)
        rows += [(f"u{u}", int((start + t) % RING), t) for t in range(length)]
    return pd.DataFrame(rows, columns=["user_id", "item_index", "timestamp"])


def test_the_recency_half_life_is_chosen_on_a_carve_of_the_splits_own_kind():
    frame = drifting_interactions()
    users = np.array([f"u{u}" for u in range(80)])
    split = split_interactions(frame, "temporal", 0.2, 0)
    options = {"rank": 16, "l2": 1.0, "alpha": 1.0, "seed": 0, "metric": "recall@3"}
    weights, info = choose_linear_cf(split, users, RING, **options)
    trials = info["validation"]["half_life"]
    assert [t["half_life"] for t in trials] == list(HALF_LIVES)
    best = max(trials, key=lambda t: t["score"])
    assert info["half_life"] == weights.half_life == best["half_life"] > 0
    assert best["score"] > trials[0]["score"]  # recency beats equal weights here
    # a given half-life is used as is; without timestamps a history has no order: 0
    fixed, info = choose_linear_cf(split, users, RING, **options, half_life=3.0)
    assert fixed.half_life == 3.0 and "half_life" not in info["validation"]
    unordered = split_interactions(frame.drop(columns="timestamp"), "random", 0.2, 0)
    plain, info = choose_linear_cf(unordered, users, RING, **options)
    assert plain.half_life == 0.0 and info["validation"]["half_life"] == []
