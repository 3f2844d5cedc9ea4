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
