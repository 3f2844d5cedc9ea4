"""Tests for tfmmrec.towers.cf: the closed-form item-item (EASE) part of both towers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

from tests.towers import tower_checks
from tfmmrec.towers.cf import (
    LinearCF,
    LinearCFWeights,
    ease_weights,
    empty_weights,
    factorise_ease,
    fit_linear_cf,
    ials_foldin_factors,
    ials_user_factors,
    kernel_ridge_fit,
    ridge_fit,
)
from tfmmrec.towers.history import HistoryEncoder
from tfmmrec.towers.item import ItemTower
from tfmmrec.towers.query import QueryTower

RNG = np.random.default_rng(0)
X = (RNG.random((30, 8)) < 0.4).astype(np.float64)
X[:, 7] = 0.0  # item 7: never interacted with (cold)


def test_ease_weights_solve_each_columns_ridge_without_the_item_itself():
    l2 = 2.0
    weights = ease_weights(X.T @ X, l2)
    np.testing.assert_array_equal(np.diag(weights), 0.0)
    for j in range(7):  # column j: ridge of x_j on the other items (EASE's constraint)
        others = [i for i in range(8) if i != j]
        a = X[:, others]
        expected = np.linalg.solve(a.T @ a + l2 * np.eye(7), a.T @ X[:, j])
        np.testing.assert_allclose(weights[others, j], expected, atol=1e-10)


def test_full_rank_factorisation_reproduces_ease_and_marks_warm_items():
    p, q, warm = factorise_ease(sp.csr_matrix(X * 3), rank=8, l2=2.0)  # counts binarised
    np.testing.assert_allclose(p @ q.T, ease_weights(X.T @ X, 2.0), atol=1e-5)
    assert warm.tolist() == [True] * 7 + [False]


def test_factorise_refuses_a_rank_outside_the_catalogue():
    with pytest.raises(ValueError, match=r"rank must be in \[1, 8\]"):
        factorise_ease(sp.csr_matrix(X), rank=9, l2=1.0)


def weights_with_content():
    p, q, warm = factorise_ease(sp.csr_matrix(X), rank=3, l2=2.0)
    features = RNG.normal(size=(8, 5))
    present = np.array([True] * 6 + [False, True])
    return fit_linear_cf(p, q, warm, 0.5, features, present), features, present


def test_cold_items_get_the_ridge_prediction_from_warm_items_with_content():
    weights, features, present = weights_with_content()
    learn = weights.warm & present  # items 0-5
    w, mean_x, mean_y = ridge_fit(features[learn], weights.item_factors[learn], 0.5)
    items = weights.item_embeddings(features, present)
    np.testing.assert_allclose(items[:7], weights.item_factors[:7])  # warm: their own factors
    np.testing.assert_allclose(items[7], (features[7] - mean_x) @ w + mean_y, rtol=1e-5)
    # an item with no content at all (6, if it were cold) falls back to the mean factor
    cold = LinearCFWeights(**{**weights.__dict__, "warm": np.zeros(8, bool)})
    np.testing.assert_allclose(cold.item_embeddings(features, present)[6], mean_y, rtol=1e-6)


def test_kernel_ridge_on_two_items_matches_the_hand_solution():
    # centred features ±(½, −½) normalise to ±(1, −1)/√2: their cosine is −1, so with width 1
    # K = [[1, e⁻²], [e⁻², 1]]; targets 2 and 0 centre to ±1, and (K + I) c = (1, −1) gives
    # c = ±1 / (2 − e⁻²) by symmetry.
    coefficients, mean_x, mean_y, anchors = kernel_ridge_fit(
        np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[2.0], [0.0]]), width=1.0, alpha=1.0)
    c = 1.0 / (2.0 - np.exp(-2.0))
    np.testing.assert_allclose(coefficients, [[c], [-c]])
    np.testing.assert_allclose(mean_x, [0.5, 0.5])
    np.testing.assert_allclose(mean_y, [1.0])
    np.testing.assert_allclose(anchors, np.array([[1.0, -1.0], [-1.0, 1.0]]) / np.sqrt(2.0))
    weights = LinearCFWeights(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2, bool),
                              coefficients, mean_x, mean_y, anchors, 1.0)
    # the first item again: 1 + c (1 − e⁻²) = 1 + (1 − e⁻²) / (2 − e⁻²) ≈ 1.4637
    np.testing.assert_allclose(weights.predict(np.array([[1.0, 0.0]])),
                               [[1.0 + (1.0 - np.exp(-2.0)) / (2.0 - np.exp(-2.0))]])
    with pytest.raises(ValueError, match="kernel width must be > 0"):
        kernel_ridge_fit(np.eye(2), np.eye(2), width=0.0, alpha=1.0)


def test_kernel_weights_keep_catalogue_shapes_and_predict_cold_items():
    p, q, warm = factorise_ease(sp.csr_matrix(X), rank=3, l2=2.0)
    features = RNG.normal(size=(8, 5))
    present = np.array([True] * 6 + [False, True])
    weights = fit_linear_cf(p, q, warm, 0.5, features, present, kernel_width=0.3)
    empty = empty_weights(8, 3, 5, kernel=True)
    assert weights.content_weights.shape == empty.content_weights.shape == (8, 3)
    assert weights.anchors.shape == empty.anchors.shape == (8, 5)
    learn = warm & present  # items 0-5: the anchors; 6 (no content) and 7 (cold) are not
    np.testing.assert_array_equal(weights.content_weights[~learn], 0.0)
    coefficients, mean_x, mean_y, _ = kernel_ridge_fit(features[learn], q[learn], 0.3, 0.5)
    z = features[7] - mean_x
    z /= np.linalg.norm(z)
    anchors = features[learn] - mean_x
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    expected = np.exp((anchors @ z - 1.0) / 0.3) @ coefficients + mean_y
    items = weights.item_embeddings(features, present)
    np.testing.assert_allclose(items[7], expected, rtol=1e-5)
    np.testing.assert_allclose(items[:7], q[:7])


def layer_and_content(kernel_width: float = 0.0):
    weights, _, _ = weights_with_content()
    features = np.abs(RNG.normal(size=(8, 2, 3))).astype(np.float32)  # two modalities, 3-d
    masks = {"text": np.array([1] * 8, np.float32), "image": np.array([1] * 7 + [0], np.float32)}
    blocks = [features[:, 0] / np.linalg.norm(features[:, 0], axis=1, keepdims=True),
              features[:, 1] / np.linalg.norm(features[:, 1], axis=1, keepdims=True)
              * masks["image"][:, None]]
    flat = np.concatenate(blocks, axis=1)
    weights = fit_linear_cf(weights.query_factors, weights.item_factors, weights.warm, 0.5,
                            flat, np.ones(8, bool), kernel_width)
    layer = LinearCF(weights, ["text", "image"], initial_weight=2.0)
    content = {"text": tf.constant(features[:, 0]), "image": tf.constant(features[:, 1]),
               "text_mask": tf.constant(masks["text"]), "image_mask": tf.constant(masks["image"])}
    return layer, weights, content, flat


def test_kernel_layer_item_part_equals_the_numpy_solution():
    layer, weights, content, flat = layer_and_content(kernel_width=0.2)
    assert layer.kernel and layer.get_config()["kernel"]
    expected = weights.item_embeddings(flat, np.ones(8, bool))
    with_index = layer.item({**content, "item_index": tf.range(8)}, tf.range(8)).numpy()
    np.testing.assert_allclose(with_index, expected, atol=1e-5)
    np.testing.assert_allclose(layer.item(content).numpy(), weights.predict(flat), atol=1e-5)


def test_layer_item_part_equals_the_numpy_solution_for_warm_and_cold_items():
    layer, weights, content, flat = layer_and_content()
    expected = weights.item_embeddings(flat, np.ones(8, bool))
    with_index = layer.item({**content, "item_index": tf.range(8)}, tf.range(8)).numpy()
    np.testing.assert_allclose(with_index, expected, atol=1e-5)
    # without an index (an item added to the catalogue later) every item is predicted
    predicted = (flat - weights.content_mean) @ weights.content_weights + weights.factor_mean
    np.testing.assert_allclose(layer.item(content).numpy(), predicted, atol=1e-5)


def test_layer_query_is_the_weighted_sum_of_history_factors_minus_kept_out_items():
    layer, weights, _, _ = layer_and_content()
    items = tf.RaggedTensor.from_row_lengths(tf.constant([0, 2, 5, 3], tf.int64), [3, 1, 0])
    out = layer.query(items, keep=tf.constant([1.0, 0.0, 1.0, 1.0])).numpy()
    p = weights.query_factors
    np.testing.assert_allclose(out, 2.0 * np.stack([p[0] + p[5], p[3], np.zeros(3)]),
                               atol=1e-6)
    layer.set_weight(0.5)
    np.testing.assert_allclose(layer.query(items).numpy()[1], 0.5 * p[3], atol=1e-6)
    with pytest.raises(ValueError, match="must be >= 0"):
        layer.set_weight(-1.0)
    assert layer.get_config()["rank"] == 3 and layer.get_config()["modalities"] == ["text",
                                                                                      "image"]


def towers():
    """Query and item towers sharing one LinearCF (3 users: unknown, u0 → {0, 1}, u1 → {2})."""
    layer, weights, content, _ = layer_and_content()
    history = HistoryEncoder(8, 4, np.array([0, 0, 2, 3]), np.array([0, 1, 2]),
                             np.ones(3, np.float32))
    query = QueryTower(["u0", "u1"], 4, history_encoder=history, user_id_embedding=False,
                       linear_cf=layer)
    item = ItemTower(["text", "image"], 4, linear_cf=layer)
    return query, item, layer, weights, {**content, "item_index": tf.range(8)}


def test_served_dot_product_is_the_learned_cosine_plus_the_weighted_ease_score():
    query, item, layer, weights, content = towers()
    q = query(tf.constant(["u0", "u1", "nobody"])).numpy()
    i = item(content).numpy()
    assert q.shape == (3, 7) and i.shape == (8, 7)
    learned = q[:, :4] @ i[:, :4].T
    np.testing.assert_allclose(np.linalg.norm(q[:2, :4], axis=1), 1.0, atol=1e-5)
    p = weights.query_factors
    ease = np.stack([p[0] + p[1], p[2], np.zeros(3)]) @ layer.item(content,
                                                                      tf.range(8)).numpy().T
    np.testing.assert_allclose(q @ i.T, learned + 2.0 * ease, atol=1e-5)


def test_training_steps_see_the_learned_part_only_and_content_queries_get_zeros():
    query, item, _, _, content = towers()
    assert query(tf.constant([1, 2]), training=True).shape == (2, 4)
    assert item(content, training=True).shape == (8, 4)
    single = item.embed_single("text", content["text"]).numpy()
    assert single.shape == (8, 7)
    np.testing.assert_array_equal(single[:, 4:], 0.0)


def test_config_round_trips_of_the_layer_and_of_both_towers_holding_it():
    """``LinearCF``'s config holds shapes; its fitted arrays are weights and follow
    ``set_weights``. The towers nest it (and the history encoder) in their configs."""
    layer, _, content, _ = layer_and_content()
    items = tf.RaggedTensor.from_row_lengths(tf.constant([0, 2, 5, 3], tf.int64), [3, 1, 0])
    clone = LinearCF.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone.query(items).numpy(), layer.query(items).numpy())
    np.testing.assert_array_equal(clone.item(content, tf.range(8)).numpy(),
                                  layer.item(content, tf.range(8)).numpy())
    query, item, _, _, content = towers()
    tower_checks.check_config_round_trip(query, [tf.constant(["u0", "u1", "nobody"])])
    tower_checks.check_config_round_trip(item, [content])


def test_linear_cf_deserializes_as_a_keras_layer_without_custom_objects():
    tower_checks.check_keras_serialization(layer_and_content()[0])


def test_query_tower_needs_the_history_encoder_for_linear_cf():
    layer, _, _, _ = layer_and_content()
    with pytest.raises(ValueError, match="needs a history_encoder"):
        QueryTower(["u0"], 4, linear_cf=layer)


def test_an_explicit_history_drives_the_linear_cf_part_too():
    """``history=`` replaces the stored history in both history readers: given the stored one
    the query is unchanged; given u1's history, u0 gets u1's query (no other input)."""
    query, *_ = towers()
    users = tf.constant(["u0", "u1", "nobody"])
    stored = query.history_encoder.gather(query.lookup(users))
    np.testing.assert_array_equal(query(users, history=stored).numpy(), query(users).numpy())
    u1 = query.history_encoder.gather(query.lookup(tf.constant(["u1"])))
    got = query(tf.constant(["u0"]), history=u1).numpy()
    np.testing.assert_array_equal(got, query(tf.constant(["u1"])).numpy())
    assert np.abs(got - query(tf.constant(["u0"])).numpy()).max() > 1e-4


def test_ials_foldin_is_the_linearised_user_step_and_exact_at_confidence_one():
    y = RNG.normal(size=(8, 3))
    history = X[:, :8]
    p = ials_foldin_factors(y, regularization=0.5, alpha=3.0)
    gram = y.T @ y + 0.5 * np.eye(3)
    expected = 3.0 * np.linalg.solve(gram, (history @ y).T).T  # α (YᵀY + λI)⁻¹ Σ_history y_j
    np.testing.assert_allclose(history @ p, expected, rtol=1e-4, atol=1e-5)
    # confidence 1: the dropped term (α − 1) Σ y_j y_jᵀ is zero, so the user minimises iALS's
    # objective Σ_j (x_uj − u·y_j)² + λ‖u‖² exactly (its gradient vanishes)
    u = history[:1] @ ials_foldin_factors(y, regularization=0.5, alpha=1.0)
    gradient = (u @ y.T - history[:1]) @ y + 0.5 * u
    np.testing.assert_allclose(gradient, 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="alpha > 0"):
        ials_foldin_factors(y, regularization=0.5, alpha=0.0)


def test_exact_foldin_reproduces_implicits_user_step():
    """``ials_user_factors`` is ``implicit``'s own user solve (``recalculate_user``: confidence
    α on the history, 1 elsewhere) for the item factors it fitted, and the ALS fit's last user
    sweep (3 conjugate-gradient steps from the previous item factors) to within its
    convergence."""
    from threadpoolctl import threadpool_limits

    from tfmmrec.evaluation.cf import _implicit_als

    history = sp.csr_matrix((RNG.random((40, 25)) < 0.25).astype(np.float32))
    with threadpool_limits(1, "blas"):
        model = _implicit_als()(factors=6, regularization=2.0, alpha=4.0, iterations=8,
                                random_state=0, num_threads=1)
        model.fit(history * 1.0, show_progress=False)
        y = np.asarray(model.item_factors)
        expected = np.stack([np.ravel(model.recalculate_user(u, history[u]))
                             for u in range(history.shape[0])])
    users = ials_user_factors(y, history, regularization=2.0, alpha=4.0)
    np.testing.assert_allclose(users, expected, rtol=1e-4, atol=1e-5)
    scale = np.abs(users).max()
    assert np.abs(users - np.asarray(model.user_factors)).max() < 0.1 * scale
    # the linearised step differs once α ≠ 1 (what the exact fold-in is for)
    linear = history @ ials_foldin_factors(y, 2.0, 4.0)
    assert np.abs(linear - users).max() > 0.1 * scale
    with pytest.raises(ValueError, match="alpha > 0"):
        ials_user_factors(y, history, regularization=2.0, alpha=0.0)


def foldin_layer(chunk: int = 2):
    """EASE (3 columns) + an iALS block (4 columns, exact fold-in, β = 0.5) on X."""
    p, q, warm = factorise_ease(sp.csr_matrix(X), rank=3, l2=2.0)
    y = RNG.normal(size=(8, 4)).astype(np.float32)
    y[7] = 0.0  # cold: iALS leaves it zero
    foldin = {"columns": 4, "regularization": 1.5, "alpha": 3.0, "weight": 0.5}
    weights = fit_linear_cf(np.hstack([p, np.zeros_like(y)]), np.hstack([q, y]), warm, 1.0,
                            foldin=foldin)
    return LinearCF(weights, initial_weight=2.0, foldin_chunk=chunk), weights


def test_layer_exact_foldin_equals_the_numpy_solve_chunk_by_chunk():
    """Rows are solved ``foldin_chunk`` at a time (5 rows, chunks of 2: a short last chunk);
    kept-out items leave both the Gram and the sum; an empty history gives zeros."""
    layer, weights = foldin_layer(chunk=2)
    rows = [[0, 2, 5], [3], [], [1, 2, 3, 4, 6], [6, 0]]
    items = tf.ragged.constant(rows, dtype=tf.int64)
    keep = np.ones(11, np.float32)
    keep[1] = 0.0  # item 2 kept out of row 0
    history = sp.lil_matrix((5, 8))
    for r, row in enumerate(rows):
        for j, item in enumerate(row):
            history[r, item] = 0.0 if (r, j) == (0, 1) else 1.0
    expected = 2.0 * weights.user_embeddings(sp.csr_matrix(history))
    out = layer.query(items, keep=tf.constant(keep)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out[2], 0.0)
    y = weights.item_factors[:, 3:].astype(np.float64)
    u = 3.0 * np.linalg.solve(y.T @ y + 1.5 * np.eye(4) + 2.0 * np.outer(y[3], y[3]), y[3])
    np.testing.assert_allclose(out[1, 3:], 2.0 * 0.5 * u, rtol=1e-4, atol=1e-5)
    ease = sp.csr_matrix(history) @ weights.query_factors[:, :3]
    np.testing.assert_allclose(out[:, :3], 2.0 * ease, rtol=1e-5, atol=1e-5)
    # one chunk or many, in a traced graph: the same numbers; no rows: no rows
    whole = LinearCF.from_config({**layer.get_config(), "foldin_chunk": 64})
    whole.set_weights(layer.get_weights())
    traced = tf.function(whole.query)(items, tf.constant(keep)).numpy()
    np.testing.assert_allclose(traced, out, rtol=1e-5, atol=1e-6)
    assert layer.query(items[:0]).shape == (0, 7)


def test_foldin_layer_config_round_trips_and_refuses_a_bad_chunk():
    layer, weights = foldin_layer()
    clone = LinearCF.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.foldin_columns == 4
    clone.set_weights(layer.get_weights())
    items = tf.ragged.constant([[0, 1], [4]], dtype=tf.int64)
    np.testing.assert_array_equal(clone.query(items).numpy(), layer.query(items).numpy())
    with pytest.raises(ValueError, match="foldin_chunk"):
        LinearCF(weights, foldin_chunk=0)
    with pytest.raises(ValueError, match=r"columns must be in \[1, 7\]"):
        fit_linear_cf(weights.query_factors, weights.item_factors, weights.warm, 1.0,
                      foldin={"columns": 8, "regularization": 1.0, "alpha": 1.0, "weight": 1.0})


def test_recency_weights_each_history_item_by_its_age_in_the_graph_and_in_numpy():
    """With a half-life of 2 items the last item weighs 1, the one before 0.5 ** 0.5, …: the
    EASE sum and the iALS preference (not its Gram) take those weights; the numpy path, given
    ``recency_matrix`` of the same ordered histories, computes the same query."""
    import dataclasses

    import pandas as pd

    from tfmmrec.towers.history import recency_matrix

    layer, weights = foldin_layer(chunk=2)
    weights = dataclasses.replace(weights, half_life=2.0)
    recent = LinearCF(weights, initial_weight=2.0, foldin_chunk=2)
    rows = [[0, 2, 5], [3], [], [1, 2, 3, 4, 6]]
    out = recent.query(tf.ragged.constant(rows, dtype=tf.int64)).numpy()
    age_weights = [0.5 ** (np.arange(len(r))[::-1] / 2.0) for r in rows]
    ease = np.stack([w @ weights.query_factors[r, :3] if r else np.zeros(3)
                     for r, w in zip(rows, age_weights, strict=True)])
    np.testing.assert_allclose(out[:, :3], 2.0 * ease, rtol=1e-5, atol=1e-6)
    y = weights.item_factors[:, 3:].astype(np.float64)
    seen = y[[0, 2, 5]]
    u = np.linalg.solve(y.T @ y + 1.5 * np.eye(4) + 2.0 * seen.T @ seen,
                        3.0 * age_weights[0] @ seen)
    np.testing.assert_allclose(out[0, 3:], 2.0 * 0.5 * u, rtol=1e-4, atol=1e-5)
    # the same histories as timestamped interactions → the numpy path
    frame = pd.DataFrame([(str(u), item, t) for u, r in enumerate(rows)
                          for t, item in enumerate(r)],
                         columns=["user_id", "item_index", "timestamp"]).sample(frac=1.0,
                                                                                 random_state=0)
    users = [str(u) for u in range(len(rows))]
    recency = recency_matrix(frame, users, 8, half_life=2.0)
    binary = sp.csr_matrix((recency.toarray() > 0).astype(np.float32))
    np.testing.assert_allclose(2.0 * weights.user_embeddings(binary, recency), out,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="recency_matrix"):
        weights.user_embeddings(binary)
    # a half-life of 0 is the binary query (the variable is restored like any weight)
    np.testing.assert_allclose(layer.query(tf.ragged.constant(rows, dtype=tf.int64)).numpy(),
                               2.0 * dataclasses.replace(weights, half_life=0.0)
                               .user_embeddings(binary), rtol=1e-4, atol=1e-5)
    clone = LinearCF.from_config(recent.get_config())
    clone.set_weights(recent.get_weights())
    np.testing.assert_allclose(clone.query(tf.ragged.constant(rows, dtype=tf.int64)).numpy(),
                               out, rtol=1e-6)
