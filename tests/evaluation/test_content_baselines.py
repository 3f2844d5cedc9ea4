"""Content baselines: the ridge map recovers a known linear map; the centred kNN's cosines."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tfmmrec.evaluation.cf import IALS
from tfmmrec.evaluation.content import ContentKNN, ContentRidge, content_features, ridge_fit
from tfmmrec.evaluation.metrics import interactions_matrix

RNG = np.random.default_rng(0)
MAP = RNG.normal(size=(5, 3))
OFFSET = np.array([0.5, -1.0, 2.0])


def test_ridge_fit_recovers_a_linear_map_with_intercept():
    features = RNG.normal(size=(50, 5))
    weights, mean_x, mean_y = ridge_fit(features, features @ MAP + OFFSET, alpha=1e-9)
    np.testing.assert_allclose(weights, MAP, atol=1e-6)
    new = RNG.normal(size=(4, 5))
    np.testing.assert_allclose((new - mean_x) @ weights + mean_y, new @ MAP + OFFSET, atol=1e-6)


def test_ridge_fit_dual_form_equals_primal():
    features, targets = RNG.normal(size=(6, 20)), RNG.normal(size=(6, 3))
    w_dual, _, _ = ridge_fit(features, targets, alpha=0.7)  # 6 rows < 20 features: dual
    xc, yc = features - features.mean(0), targets - targets.mean(0)
    w_primal = np.linalg.solve(xc.T @ xc + 0.7 * np.eye(20), xc.T @ yc)
    np.testing.assert_allclose(w_dual, w_primal, atol=1e-10)


class KnownFactors(IALS):
    """iALS stand-in whose item factors are exactly ``features @ MAP + OFFSET``."""

    def __init__(self, features):
        super().__init__(factors=3)
        self.features = features

    def fit(self, train, item_features=None, present=None):
        self.item_factors = (self.features @ MAP + OFFSET).astype(np.float32)
        self.user_factors = np.ones((train.shape[0], 3), np.float32)
        return self


def test_content_ridge_places_cold_items_at_their_predicted_factors():
    features = RNG.normal(size=(12, 5))
    # Items 0..9 have interactions (warm); 10 and 11 are cold.
    train = interactions_matrix(np.repeat(np.arange(5), 2), np.arange(10), 5, 12)
    model = ContentRidge(alpha=1e-9, ials=KnownFactors(features)).fit(train, features)
    users, items = model.embeddings()
    truth = features @ MAP + OFFSET
    np.testing.assert_allclose(items[10:], truth[10:], atol=1e-4)   # predicted = the true map
    np.testing.assert_allclose(items[:10], truth[:10].astype(np.float32))  # warm: learned
    assert users.shape == (5, 3)


def test_content_ridge_gives_cold_items_without_content_the_mean_factor():
    features = RNG.normal(size=(4, 5))
    present = np.array([True, True, True, False])
    train = interactions_matrix(np.array([0, 1, 1]), np.array([0, 1, 2]), 2, 4)
    model = ContentRidge(alpha=1.0, ials=KnownFactors(features)).fit(train, features, present)
    truth = features @ MAP + OFFSET
    np.testing.assert_allclose(model.embeddings()[1][3], truth[:3].mean(0), rtol=1e-5)


def test_content_ridge_needs_features():
    with pytest.raises(ValueError, match="content baseline"):
        ContentRidge().fit(sp.csr_matrix(np.eye(3, dtype=np.float32)))


# Four items around the catalogue mean (2, 2): centred a=(1,-1) b=(-1,1) c=(1,1) d=(-1,-1).
FEATURES = np.array([[3.0, 1.0], [1.0, 3.0], [3.0, 3.0], [1.0, 1.0]])


def test_centred_knn_scores_are_cosines_of_centred_profiles():
    train = interactions_matrix(np.array([0, 1, 1]), np.array([0, 0, 2]), 3, 4)
    scores = ContentKNN().fit(train, FEATURES).score()
    s = np.sqrt(0.5)
    np.testing.assert_allclose(scores[0], [1.0, -1.0, 0.0, 0.0], atol=1e-6)  # history {a}
    np.testing.assert_allclose(scores[1], [s, -s, s, -s], atol=1e-6)         # history {a, c}
    np.testing.assert_array_equal(scores[2], np.zeros(4))                   # no history
    # Ranking for {a}: a first, b (the opposite direction from the mean) last.
    order = np.argsort(-scores[0], kind="stable").tolist()
    assert order[0] == 0 and order[-1] == 1


def test_uncentred_knn_differs_where_centring_matters():
    train = interactions_matrix(np.array([0]), np.array([0]), 1, 4)
    raw = ContentKNN(centre=False).fit(train, FEATURES).score()[0]
    # Uncentred, every item looks alike (b still scores 0.6 for a user of a).
    np.testing.assert_allclose(raw[1], 6 / 10, rtol=1e-6)


def test_content_features_normalises_each_modality_block():
    values = {"text": np.array([[3.0, 4.0], [0.0, 0.0]]), "image": np.array([[0.0, 2.0, 0.0],
                                                                             [1.0, 0.0, 0.0]])}
    masks = {"text": np.array([True, False]), "image": np.array([True, True])}
    features, present = content_features(values, masks)
    np.testing.assert_allclose(features, [[0.6, 0.8, 0.0, 1.0, 0.0], [0, 0, 1.0, 0.0, 0.0]])
    assert present.tolist() == [True, True]
