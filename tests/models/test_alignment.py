"""Cross-modal alignment loss: hand-checked contrastive values, masking of absent modalities and
of duplicate items, and that training with it actually aligns modalities."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfmmrec.models.alignment import ModalityAlignment, masked_contrastive


def _loss(a, b, a_present, b_present, ids, scale=1.0):
    return float(masked_contrastive(tf.constant(a, tf.float32), tf.constant(b, tf.float32),
                                    tf.constant(a_present, tf.float32),
                                    tf.constant(b_present, tf.float32),
                                    tf.constant(ids), scale))


def test_two_items_matches_hand_computed_softmax():
    # a = b = e1, e2 → logits [[1, 0], [0, 1]]; each row: -log(e / (e + 1)); symmetric halves.
    expected = 2 * -math.log(math.e / (math.e + 1))
    got = _loss(np.eye(2), np.eye(2), [1, 1], [1, 1], [0, 1])
    assert math.isclose(got, expected, rel_tol=1e-5)


def test_absent_modality_rows_and_columns_do_not_count():
    a = np.eye(3)
    # Item 2 lacks modality b: it is no query and its b column is no negative (a→b rows see
    # 2 candidates: -log(e/(e+1))); its *a* embedding is still a negative for the b→a rows
    # (3 candidates: -log(e/(e+2))). Two rows each, halved for symmetry.
    expected = 0.5 * (2 * -math.log(math.e / (math.e + 1)) + 2 * -math.log(math.e / (math.e + 2)))
    got = _loss(a, a, [1, 1, 1], [1, 1, 0], [0, 1, 2])
    assert math.isclose(got, expected, rel_tol=1e-5)


def test_same_item_twice_in_a_batch_is_not_its_own_negative():
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    duplicate = _loss(a, a, [1, 1], [1, 1], [7, 7])
    distinct = _loss(a, a, [1, 1], [1, 1], [7, 8])
    assert duplicate < 1e-5  # only the positive remains in each row
    assert distinct > 0.5  # two identical rows of different items are confusable


def test_alignment_layer_temperature_is_learned_and_capped():
    layer = ModalityAlignment(["text", "image"], initial_temperature=0.07)
    singles = [tf.math.l2_normalize(tf.random.normal([4, 8]), -1) for _ in range(2)]
    fused = tf.math.l2_normalize(singles[0] + singles[1], -1)
    with tf.GradientTape() as tape:
        loss = layer(singles, tf.ones([4, 2]), fused, tf.range(4))
    assert np.isfinite(float(loss))
    assert tape.gradient(loss, layer.log_scale) is not None
    layer.log_scale.assign(10.0)
    assert float(layer.scale) == 100.0


def _three_modalities(rows=128, width=32, seed=0):
    rng = np.random.default_rng(seed)
    features = tf.constant(rng.standard_normal((3, rows, width)), tf.float32)
    mask = tf.constant((rng.random((rows, 3)) > 0.2).astype(np.float32))
    return features, mask, tf.constant(rng.integers(0, rows // 2, rows))


def test_layer_scores_every_modality_pair_and_each_modality_against_the_fused_embedding():
    features, mask, ids = _three_modalities()
    singles = [tf.math.l2_normalize(x, -1) for x in tf.unstack(features)]
    fused = tf.math.l2_normalize(tf.add_n(singles), -1)
    layer = ModalityAlignment(["text", "image", "audio"])
    got = float(layer(singles, mask, fused, ids))
    ones = tf.ones_like(mask[:, 0])
    pairs = [(0, None), (1, None), (2, None), (0, 1), (0, 2), (1, 2)]
    expected = masked_contrastive(
        tf.stack([singles[i] for i, _ in pairs]),
        tf.stack([fused if j is None else singles[j] for _, j in pairs]),
        tf.stack([mask[:, i] for i, _ in pairs]),
        tf.stack([ones if j is None else mask[:, j] for _, j in pairs]), ids, layer.scale)
    np.testing.assert_allclose(got, float(expected), rtol=1e-6)


def test_gradients_repeat_bit_for_bit():
    # Each single-modality embedding is in three pairs. Stacked into each pair, its three
    # gradients were summed by AddN, which reorders its inputs at run time (buffer reuse):
    # repeated identical steps differed in the last bit.
    features, mask, ids = _three_modalities()
    tf.keras.utils.set_random_seed(0)
    project = tf.keras.layers.Dense(16)
    layer = ModalityAlignment(["text", "image", "audio"])

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            singles = [tf.math.l2_normalize(project(x), -1) for x in tf.unstack(features)]
            fused = tf.math.l2_normalize(tf.add_n(singles), -1)
            loss = layer(singles, mask, fused, ids)
        return tape.gradient(loss, project.trainable_variables + layer.trainable_variables)

    first = [g.numpy() for g in gradients()]
    for _ in range(100):
        for a, b in zip(first, gradients(), strict=True):
            np.testing.assert_array_equal(a, b.numpy())
