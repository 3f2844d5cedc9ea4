"""EASE (closed form, checked by hand and by its per-column definition) and iALS (implicit)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tfmmrec.evaluation.baseline_base import binary_matrix
from tfmmrec.evaluation.cf import EASE, IALS
from tfmmrec.evaluation.metrics import interactions_matrix


def test_ease_two_items_by_hand():
    # X = [[1,1],[1,0],[1,1]]: |x0|² = 3, |x1|² = 2, x0·x1 = 2; λ = 1.
    # With diag(B) = 0 column j is a one-variable ridge of x_j on the other item:
    # B01 (x1 from x0) = x0·x1 / (|x0|² + λ) = 2 / 4; B10 (x0 from x1) = 2 / (2 + 1).
    x = sp.csr_matrix(np.array([[1, 1], [1, 0], [1, 1]], np.float32))
    weights = EASE(l2=1.0).fit(x).weights
    np.testing.assert_allclose(weights, [[0.0, 0.5], [2 / 3, 0.0]], rtol=1e-12)


def test_ease_equals_per_column_ridge_with_zero_diagonal():
    # The closed form B = I − P diag(1/diag P) must equal its definition: column j is the ridge
    # regression of x_j on the other items' columns (the diagonal constraint), solved directly.
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1], [0, 0, 1]], np.float64)
    l2 = 0.5
    weights = EASE(l2=l2).fit(sp.csr_matrix(x)).weights
    expected = np.zeros((3, 3))
    for j in range(3):
        others = [i for i in range(3) if i != j]
        xo = x[:, others]
        expected[others, j] = np.linalg.solve(xo.T @ xo + l2 * np.eye(2), xo.T @ x[:, j])
    np.testing.assert_allclose(weights, expected, rtol=1e-10, atol=1e-12)
    assert np.all(np.diag(weights) == 0.0)


def test_ease_scores_are_history_times_weights():
    x = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 1]], np.float32))
    model = EASE(l2=2.0).fit(x)
    users, items = model.embeddings()
    np.testing.assert_allclose(users @ items.T, x.toarray() @ model.weights, rtol=1e-5)
    np.testing.assert_allclose(model.score([2]), (x.toarray() @ model.weights)[[2]], rtol=1e-5)


def test_ease_binarises_repeated_and_weighted_interactions():
    counts = sp.csr_matrix(np.array([[3, 1], [2, 0], [1, 5]], np.float32))
    ones = sp.csr_matrix(np.array([[1, 1], [1, 0], [1, 1]], np.float32))
    np.testing.assert_array_equal(EASE(1.0).fit(counts).weights, EASE(1.0).fit(ones).weights)


def test_ease_rejects_bad_arguments():
    with pytest.raises(ValueError, match="l2 must be > 0"):
        EASE(l2=0.0)
    with pytest.raises(ValueError, match=r"scipy\.sparse"):
        EASE().fit(np.ones((2, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        EASE().embeddings()


def blocks(num_users=40, num_items=12, seed=0) -> sp.csr_matrix:
    """Users 0..19 take items 0..5, users 20..39 items 6..11 (each user 4 random ones)."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for u in range(num_users):
        base = 0 if u < num_users // 2 else num_items // 2
        for i in rng.choice(num_items // 2, 4, replace=False):
            rows.append(u)
            cols.append(base + i)
    return interactions_matrix(np.array(rows), np.array(cols), num_users, num_items)


def test_ials_is_deterministic_and_learns_the_blocks():
    x = blocks()
    a = IALS(factors=4, regularization=0.1, alpha=5.0, seed=3).fit(x)
    b = IALS(factors=4, regularization=0.1, alpha=5.0, seed=3).fit(x)
    np.testing.assert_array_equal(a.embeddings()[0], b.embeddings()[0])
    np.testing.assert_array_equal(a.embeddings()[1], b.embeddings()[1])
    scores = a.score()
    assert scores.shape == (40, 12)
    own = np.where(np.arange(40)[:, None] < 20, scores[:, :6], scores[:, 6:]).mean(axis=1)
    other = np.where(np.arange(40)[:, None] < 20, scores[:, 6:], scores[:, :6]).mean(axis=1)
    assert (own > other).all()


def test_ials_gives_items_and_users_without_data_zero_factors():
    x = binary_matrix(sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)))
    users, items = IALS(factors=2, seed=0).fit(x).embeddings()
    assert np.all(items[2] == 0.0) and np.all(users[2] == 0.0)
    assert np.abs(items[:2]).sum() > 0


def test_ials_config_round_trips():
    model = IALS(factors=8, regularization=3.0, alpha=2.0, iterations=5, seed=1)
    assert IALS(**model.get_config()).get_config() == model.get_config()
    with pytest.raises(ValueError, match="alpha > 0"):
        IALS(alpha=0)
