"""Tests for tfmmrec.towers.history: the item-based history part of the query."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfmmrec.towers.history import HistoryEncoder, history_table, row_ids

TRAIN = pd.DataFrame({"user_id": ["b", "a", "b", "a", "b"], "item_index": [4, 1, 2, 3, 0],
                      "timestamp": [30, 10, 10, 5, 20]})


def test_history_table_orders_by_time_and_aligns_with_the_lookup():
    splits, items, weights = history_table(TRAIN, ["a", "b", "c"])
    # row 0: unknown user; a: 3 (t=5), 1 (t=10); b: 2, 0, 4; c: nothing
    assert splits.tolist() == [0, 0, 2, 5, 5]
    assert items.tolist() == [3, 1, 2, 0, 4]
    assert weights.tolist() == [1.0] * 5


def test_history_table_keeps_the_most_recent_and_halves_weights_per_half_life():
    splits, items, weights = history_table(TRAIN, ["b"], max_length=2, half_life=1.0)
    assert splits.tolist() == [0, 0, 2] and items.tolist() == [0, 4]
    np.testing.assert_allclose(weights, [0.5, 1.0])


def encoder(dropout=0.0, dense=True) -> HistoryEncoder:
    # user rows: 0 unknown (empty), 1 → items [0, 1, 2] with weights [1, 1, 2], 2 → [3]
    layer = HistoryEncoder(4, 2, np.array([0, 0, 3, 4]), np.array([0, 1, 2, 3]),
                           np.array([1.0, 1.0, 2.0, 1.0], np.float32), dropout=dropout,
                           dense_max_items=4 if dense else 3)
    layer(tf.constant([0]))
    layer.embedding.set_weights([np.array([[1, 0], [0, 1], [2, 2], [5, 5]], np.float32)])
    return layer


@pytest.mark.parametrize("dense", [True, False])
def test_weighted_mean_of_history_embeddings_and_zero_for_no_history(dense):
    out = encoder(dense=dense)(tf.constant([1, 2, 0])).numpy()
    # user 1: (1·[1,0] + 1·[0,1] + 2·[2,2]) / 4
    np.testing.assert_allclose(out, [[1.25, 1.25], [5, 5], [0, 0]])


@pytest.mark.parametrize("dense", [True, False])
def test_each_examples_target_is_excluded_from_its_own_history_only(dense):
    out = encoder(dense=dense)(tf.constant([1, 1, 2]), exclude=tf.constant([2, 3, 3])).numpy()
    np.testing.assert_allclose(out[0], [0.5, 0.5])  # item 2 left out: mean of items 0, 1
    np.testing.assert_allclose(out[1], [1.25, 1.25])  # item 3 is not in user 1's history
    np.testing.assert_allclose(out[2], [0, 0])  # the only history item was the target


@pytest.mark.parametrize("dense", [True, False])
def test_history_dropout_hides_entries_only_in_training(dense):
    layer = encoder(dropout=0.5, dense=dense)
    users = tf.constant([1] * 200)
    np.testing.assert_allclose(layer(users).numpy(), [[1.25, 1.25]] * 200)
    tf.random.set_seed(0)
    trained = layer(users, training=True).numpy()
    # every row is the weighted mean of a subset of the history (or zero if all were hidden)
    possible = {(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (2.0, 2.0), (0.5, 0.5), (1.25, 1.25),
                (5 / 3, 4 / 3), (4 / 3, 5 / 3)}
    distances = np.abs(trained[:, None, :] - np.array(sorted(possible))[None]).max(-1)
    assert distances.min(1).max() < 1e-5
    assert len(np.unique(distances.argmin(1))) > 3  # different examples hide different entries


@pytest.mark.parametrize("dense", [True, False])
def test_config_round_trip(dense):
    from tests.towers import tower_checks

    tower_checks.check_config_round_trip(encoder(dropout=0.1, dense=dense),
                                         [tf.constant([0, 1, 2])])


def test_history_encoder_deserializes_as_a_keras_layer_without_custom_objects():
    from tests.towers import tower_checks

    tower_checks.check_keras_serialization(encoder(dropout=0.1))


def test_row_ids_match_value_rowids_with_empty_rows():
    for lengths in ([0, 3, 0, 0, 2, 0], [4], [0, 0], []):
        ragged = tf.RaggedTensor.from_row_lengths(tf.range(sum(lengths)),
                                                  tf.constant(lengths, tf.int64))
        np.testing.assert_array_equal(row_ids(ragged.row_splits).numpy(),
                                      ragged.value_rowids().numpy())


def test_dense_and_gathered_pooling_agree_on_random_histories():
    """The multi-hot matmul path (flat scatter, target zeroed per row) against the gather +
    segment-sum path on random ragged histories with repeated items, weights and targets."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 12, 30)
    items = rng.integers(0, 9, lengths.sum())  # repeats within a history are allowed
    weights = rng.uniform(0.1, 2.0, lengths.sum()).astype(np.float32)
    splits = np.concatenate([[0, 0], np.cumsum(lengths)])
    dense, gathered = (HistoryEncoder(9, 5, splits, items, weights, dense_max_items=m)
                       for m in (9, 8))
    users = tf.constant(rng.integers(0, 31, 64))
    targets = tf.constant(rng.integers(0, 9, 64))
    dense(users)
    gathered(users)
    gathered.embedding.set_weights(dense.embedding.get_weights())
    np.testing.assert_allclose(dense(users, exclude=targets).numpy(),
                               gathered(users, exclude=targets).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_unique_histories_written_cell_by_cell_agree_with_summing_paths(training):
    """Histories without repeats take the SparseToDense path (targets' cells written last):
    same pooling as the summing scatter and the gather + segment sum, with and without
    history dropout (same masks: the dropout rate is 0 here, the flag alone differs)."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 9, 40)
    items = np.concatenate([rng.choice(9, n, replace=False) for n in lengths])
    weights = rng.uniform(0.1, 2.0, lengths.sum()).astype(np.float32)
    splits = np.concatenate([[0, 0], np.cumsum(lengths)])
    unique, summed, gathered = (
        HistoryEncoder(9, 5, splits, items, weights, dense_max_items=m, unique_entries=u)
        for m, u in ((9, None), (9, False), (8, None)))
    assert unique.unique_entries and not summed.unique_entries
    users = tf.constant(rng.integers(0, 41, 128))
    targets = tf.constant(rng.integers(0, 9, 128))  # in the history or not
    for layer in (unique, summed, gathered):
        layer(users)
        layer.embedding.set_weights(unique.embedding.get_weights())
    expected = gathered(users, exclude=targets, training=training).numpy()
    for layer in (unique, summed):
        np.testing.assert_allclose(layer(users, exclude=targets, training=training).numpy(),
                                   expected, rtol=1e-5, atol=1e-6)


def test_repeated_items_are_detected_and_the_flag_survives_the_config():
    splits = np.array([0, 0, 3])
    assert not HistoryEncoder(4, 2, splits, np.array([1, 2, 1]), np.ones(3, np.float32)
                              ).unique_entries
    layer = HistoryEncoder(4, 2, splits, np.array([1, 2, 3]), np.ones(3, np.float32))
    assert layer.unique_entries
    assert HistoryEncoder.from_config(layer.get_config()).unique_entries
    config = layer.get_config()
    del config["unique_entries"]  # a config from before the flag: the summing path
    assert not HistoryEncoder.from_config(config).unique_entries


def test_invalid_dropout_is_rejected():
    with pytest.raises(ValueError, match="history dropout"):
        HistoryEncoder(2, 2, np.array([0, 0]), np.zeros(0, np.int64), np.zeros(0, np.float32),
                       dropout=1.0)


def test_query_tower_without_any_input_is_rejected():
    from tfmmrec.towers.query import QueryTower

    with pytest.raises(ValueError, match="at least one input"):
        QueryTower(["a"], 4, user_id_embedding=False)


def history_query_tower(dense: bool):
    """A query tower with every input: user-id and feature embeddings plus the history
    encoder (users "a" → items [0, 1, 2], "b" → [3])."""
    from tfmmrec.towers.query import QueryTower

    tf.random.set_seed(0)
    users = pd.DataFrame({"user_id": ["a", "b"], "age": [20.0, 40.0], "job": ["x", "y"]})
    tower = QueryTower(["a", "b"], 8, users=users, feature_columns=["age", "job"],
                       history_encoder=encoder(dense=dense))
    tower(tf.constant(["a"]))
    return tower


@pytest.mark.parametrize("dense", [True, False])
def test_an_explicit_history_equal_to_the_stored_one_gives_the_stored_query(dense):
    tower = history_query_tower(dense)
    users = tf.constant(["a", "b", "nobody", "a"])
    stored = tower.history_encoder.gather(tower.lookup(users))
    np.testing.assert_array_equal(tower(users, history=stored).numpy(), tower(users).numpy())
    # The history encoder alone: the same pooling as its stored-history path.
    index = tower.lookup(users)
    np.testing.assert_array_equal(tower.history_encoder(index, history=stored).numpy(),
                                  tower.history_encoder(index).numpy())


@pytest.mark.parametrize("dense", [True, False])
def test_an_explicit_history_replaces_the_stored_one_and_nothing_else(dense):
    """User "a" given user "b"'s history: the history part is b's (the encoder's output for
    b), the id and feature parts stay a's — so the query differs from both stored queries."""
    tower = history_query_tower(dense)
    b_history = tower.history_encoder.gather(tower.lookup(tf.constant(["b"])))
    got = tower(tf.constant(["a"]), history=b_history).numpy()
    assert np.abs(got - tower(tf.constant(["a"])).numpy()).max() > 1e-4
    assert np.abs(got - tower(tf.constant(["b"])).numpy()).max() > 1e-4
    # Rebuilt by hand from a's id and features and b's pooled history.
    index = tower.lookup(tf.constant(["a"]))
    parts = [tower.id_embedding(index), tower.history_encoder(tower.lookup(tf.constant(["b"]))),
             tower.feature_embeddings["job"](tf.gather(tower.categorical["job"], index)),
             tf.gather(tower.numeric, index)]
    want = tf.math.l2_normalize(tower.out(tower.hidden(tf.concat(parts, -1))), -1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_an_explicit_history_needs_a_history_encoder():
    from tfmmrec.towers.query import QueryTower

    tower = QueryTower(["a"], 2)
    empty = tf.RaggedTensor.from_row_lengths(tf.zeros(0, tf.int64), [0])
    with pytest.raises(ValueError, match="needs a query tower with a history encoder"):
        tower(tf.constant(["a"]), history=(empty, tf.cast(empty, tf.float32)))


def test_bfloat16_training_pooling_is_close_and_inference_stays_float32():
    """``training_precision`` changes the training-time product only: inference is the float32
    pooling bit for bit; training (no dropout here) within bfloat16 rounding of it."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 12, 20)
    splits = np.concatenate([[0, 0], np.cumsum(lengths)])
    items = rng.integers(0, 9, lengths.sum())
    weights = rng.uniform(0.1, 2.0, lengths.sum()).astype(np.float32)
    full, half = (HistoryEncoder(9, 5, splits, items, weights, training_precision=p)
                  for p in ("float32", "bfloat16"))
    users, targets = tf.constant(rng.integers(0, 21, 32)), tf.constant(rng.integers(0, 9, 32))
    full(users)
    half(users)
    half.embedding.set_weights(full.embedding.get_weights())
    np.testing.assert_array_equal(half(users, exclude=targets).numpy(),
                                  full(users, exclude=targets).numpy())
    trained = half(users, exclude=targets, training=True).numpy()
    reference = full(users, exclude=targets, training=True).numpy()
    np.testing.assert_allclose(trained, reference, atol=2e-3)
    assert not np.array_equal(trained, reference)
    assert HistoryEncoder.from_config(half.get_config()).training_precision == "bfloat16"


def test_unknown_training_precision_is_rejected():
    with pytest.raises(ValueError, match=r"training_precision.*'float16'"):
        HistoryEncoder(4, 2, np.array([0, 0, 1]), np.array([0]), np.ones(1, np.float32),
                       training_precision="float16")
