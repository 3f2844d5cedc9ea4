"""Tests for tfmmrec.towers.item and .query: the two towers of the retrieval model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.towers import tower_checks
from tfmmrec.config import ImageTowerConfig
from tfmmrec.towers.image import build_image_encoder
from tfmmrec.towers.item import ItemContentTable, ItemTower
from tfmmrec.towers.query import QueryTower

NUM_ITEMS = 6
RNG = np.random.default_rng(0)
CONTENTS = {"text": RNG.normal(size=(NUM_ITEMS, 5)).astype(np.float32),
            "image": RNG.normal(size=(NUM_ITEMS, 7)).astype(np.float32)}
MASKS = {"text": np.array([1, 1, 1, 0, 1, 0], bool), "image": np.array([1, 0, 1, 1, 1, 0], bool)}
INDEX = tf.constant([0, 1, 3, 5])
USERS = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "age": [20, 40, 60],
                      "occupation": ["artist", "farmer", "artist"]})


def content(index=INDEX, contents=CONTENTS, masks=MASKS) -> dict[str, tf.Tensor]:
    return ItemContentTable(contents, masks)(index)


def content_spec(batch: dict) -> dict[str, tf.TensorSpec]:
    return {k: tf.TensorSpec([None, *v.shape[1:]], v.dtype) for k, v in batch.items()}


# --- content table ----------------------------------------------------------------------------


def test_content_table_gathers_rows_and_masks():
    batch = content()
    np.testing.assert_array_equal(batch["text"].numpy(), CONTENTS["text"][[0, 1, 3, 5]])
    assert batch["text_mask"].numpy().tolist() == [1.0, 1.0, 0.0, 0.0]
    assert batch["image_mask"].numpy().tolist() == [1.0, 0.0, 1.0, 0.0]
    assert batch["item_index"].numpy().tolist() == [0, 1, 3, 5]


def test_content_table_holds_only_non_trainable_variables():
    table = ItemContentTable(CONTENTS, MASKS)
    assert table.trainable_weights == [] and len(table.weights) == 4


def test_content_table_holds_nested_raw_content():
    waves = {"waveform": np.zeros((NUM_ITEMS, 10), np.float32),
             "length": np.arange(NUM_ITEMS, dtype=np.int32)}
    batch = ItemContentTable({"audio": waves}, {"audio": np.ones(NUM_ITEMS, bool)})(INDEX)
    assert batch["audio"]["length"].numpy().tolist() == [0, 1, 3, 5]


# --- item tower -------------------------------------------------------------------------------


def item_tower(**kwargs) -> ItemTower:
    return ItemTower(("text", "image"), 8, **kwargs)


def test_item_tower_standard_checks(tmp_path):
    batch = content()
    tower = item_tower(num_items=NUM_ITEMS)
    out = tower_checks.check_tower(tower, [batch], (4, 8), [content_spec(batch)],
                                   tmp_path / "saved")
    tower_checks.check_unit_norm(out[:3])  # item 5 has no content: only its (zero) id row


def test_item_tower_config_round_trip_with_every_option():
    """Projection layers, fusion mode, dropouts, id embedding and an in-tower (fine-tuned)
    encoder all come back from ``get_config``; the serving mix is a weight and follows."""
    images = np.random.default_rng(2).uniform(size=(NUM_ITEMS, 16, 16, 3)).astype(np.float32)
    encoder = build_image_encoder(ImageTowerConfig(image_size=16, cnn_filters=[4],
                                                   trainable=True))
    tower = ItemTower(("text", "image"), 8, encoders={"image": encoder},
                      projection_hidden=[6], fusion="gated", num_items=NUM_ITEMS,
                      id_dropout=0.2, modality_dropout=0.1, dropout=0.1,
                      feature_dropout={"text": 0.3}, feature_dropout_shared=True)
    batch = ItemContentTable({"text": CONTENTS["text"], "image": images}, MASKS)(INDEX)
    tower(batch)
    tower.set_serving_mix([0.25, 0.75])
    tower_checks.check_config_round_trip(tower, [batch])
    clone = ItemTower.from_config(tower.get_config())
    assert clone.projections["text"].feature_dropout == 0.3
    assert clone.feature_dropout_shared and clone.projections["text"].feature_dropout_shared
    assert clone.fusion.mode == "gated" and clone.projections["image"].hidden == (6,)
    assert clone.encoders["image"].trainable


def test_item_tower_call_arguments_are_checked_naming_them():
    """``hidden_modalities="image"`` was read as the modalities i, m, a, g, e; ``embed_single``
    of a modality the tower has not got was a bare KeyError."""
    tower = item_tower()
    with pytest.raises(ValueError, match=r"hidden_modalities must be a sequence of names .*"
                                         r"got 'image'"):
        tower(content(), hidden_modalities="image")
    with pytest.raises(ValueError, match=r"embed_single: unknown modality 'audio'; the "
                                         r"model's are text, image"):
        tower.embed_single("audio", tf.ones([1, 5]))
    hidden = tower(content(), hidden_modalities=["image"]).numpy()  # a list still works
    np.testing.assert_allclose(hidden, tower(content(), hidden_modalities=("image",)).numpy())


@pytest.mark.parametrize("weights, message", [
    ([-1.0, 0.5], r"serving mix weight of 'text' must be a finite number >= 0, got -1.0"),
    ([1.0, -0.4], r"serving mix weight of 'image' must be a finite number >= 0, got -0.4"),
    ([np.nan, 1.0], r"serving mix weight of 'text' must be a finite number >= 0, got nan"),
    ([1.0], r"takes 2 weights, one per modality \(text, image\); got 1"),
    ([0.0, 0.0], r"the weights \[0.0, 0.0\] are all 0; pass None"),
])
def test_a_serving_mix_needs_one_finite_non_negative_weight_per_modality(weights, message):
    """Negative weights gave embeddings that are not unit length, NaN or a wrong length were
    ignored or a Keras shape error; the mix that was set stays."""
    tower = item_tower()
    tower.set_serving_mix([0.25, 0.75])
    with pytest.raises(ValueError, match=message):
        tower.set_serving_mix(weights)
    np.testing.assert_allclose(tower.serving_mix.numpy(), [0.25, 0.75])
    tower.set_serving_mix(np.array([1.0, 0.0], np.float32))  # numpy weights are fine
    tower.set_serving_mix(None)
    assert not tower.serving_mix.numpy().any()


def test_a_tower_of_one_modality_has_no_serving_mix_to_set():
    """It was ``AttributeError: 'NoneType' object has no attribute 'assign'``."""
    tower = ItemTower(["text"], 8)
    with pytest.raises(ValueError, match=r"this tower has 1 modality \(text\); a serving mix "
                                         r"needs two or more"):
        tower.set_serving_mix([1.0])
    tower.set_serving_mix(None)  # the fused embedding: what it serves anyway


def test_towers_deserialize_as_keras_layers_without_custom_objects():
    """Registered as Keras-serializable: a functional model holding a tower saves as
    ``.keras`` and loads without ``custom_objects``."""
    tower_checks.check_keras_serialization(item_tower(num_items=NUM_ITEMS, fusion="gated"))
    tower_checks.check_keras_serialization(query_tower(users=USERS, feature_columns=["age"],
                                                       history=np.array([[0], [1], [-1]])))


def test_query_tower_config_round_trip_with_history_and_features():
    history = np.array([[0, 2], [1, -1], [-1, -1]])
    tower = query_tower(users=USERS, feature_columns=["age", "occupation"], history=history,
                        id_dropout=0.1, id_dim=4)
    users = tf.constant(["u1", "u3", "stranger"])
    tower_checks.check_config_round_trip(tower, [users])
    clone = QueryTower.from_config(tower.get_config())
    np.testing.assert_array_equal(clone.history.numpy(), tower.history.numpy())
    assert clone.id_embedding.output_dim == 4
    without_ids = query_tower(users=USERS, feature_columns=["age"], user_id_embedding=False)
    tower_checks.check_config_round_trip(without_ids, [users])


def test_item_tower_ignores_content_of_missing_modalities():
    tower = item_tower()
    original = tower(content()).numpy()
    scrambled = {m: v * 0 + 50.0 for m, v in CONTENTS.items()}
    kept = {m: np.where(MASKS[m][:, None], CONTENTS[m], scrambled[m]) for m in CONTENTS}
    np.testing.assert_allclose(tower(content(contents=kept)).numpy(), original, atol=1e-6)


def test_embed_single_equals_the_item_with_only_that_modality():
    tower = item_tower(fusion="gated")
    batch = content()
    only_text = {**batch, "image_mask": tf.zeros_like(batch["image_mask"]),
                 "text_mask": tf.ones_like(batch["text_mask"])}
    np.testing.assert_allclose(tower.embed_single("text", batch["text"]).numpy(),
                               tower(only_text).numpy(), atol=1e-6)


def test_single_modalities_in_one_call_equal_one_modality_at_a_time():
    tower = item_tower()
    tower(content())
    embeddings, _ = tower.modality_embeddings(content())
    together = tower.single_modalities(embeddings)
    for position, single in enumerate(together):
        np.testing.assert_allclose(single.numpy(),
                                   tower.single_modality(embeddings, position).numpy(), atol=1e-6)


def test_id_embedding_starts_at_zero_so_unseen_items_are_pure_content():
    with_ids = item_tower(num_items=NUM_ITEMS)
    batch = content()
    out = with_ids(batch).numpy()
    with_ids.id_embedding = None
    np.testing.assert_allclose(with_ids(batch).numpy(), out, atol=1e-6)


def test_id_only_tower_has_random_distinct_item_embeddings():
    tower = ItemTower((), 8, num_items=NUM_ITEMS)
    out = tower({"item_index": tf.range(NUM_ITEMS)}).numpy()
    tower_checks.check_unit_norm(out)
    assert np.abs(out @ out.T - np.eye(NUM_ITEMS)).max() < 0.99


def test_modality_dropout_applies_only_in_training():
    tower = item_tower(fusion="mean", modality_dropout=0.9)
    batch = content(index=tf.constant([0, 2, 4] * 50))
    inference = tower(batch, training=False).numpy()
    np.testing.assert_array_equal(tower(batch, training=False).numpy(), inference)
    assert not np.allclose(tower(batch, training=True).numpy(), inference)


def test_frozen_in_tower_encoder_stays_frozen_and_trainable_one_trains():
    images = np.random.default_rng(1).uniform(size=(NUM_ITEMS, 16, 16, 3)).astype(np.float32)
    for trainable in (False, True):
        encoder = build_image_encoder(ImageTowerConfig(image_size=16, cnn_filters=[4],
                                                       trainable=trainable))
        tower = ItemTower(("image",), 8, encoders={"image": encoder})
        batch = ItemContentTable({"image": images}, {"image": np.ones(NUM_ITEMS, bool)})(INDEX)
        tower(batch)
        if trainable:
            assert set(map(id, encoder.trainable_weights)) <= set(map(id, tower.trainable_weights))
            tower_checks.check_trainable(tower, [batch])
        else:
            before = tower_checks.snapshot(encoder.weights)
            tower_checks.train_steps(tower, [batch])
            for weight, old in zip(encoder.weights, before, strict=True):
                np.testing.assert_array_equal(weight.numpy(), old)
            assert encoder.trainable_weights == [] and tower.trainable_weights


# --- query tower ------------------------------------------------------------------------------


def query_tower(**kwargs) -> QueryTower:
    return QueryTower(["u1", "u2", "u3"], 8, **kwargs)


def test_query_tower_standard_checks(tmp_path):
    tower = query_tower(users=USERS, feature_columns=["age", "occupation"])
    users = tf.constant(["u1", "u3", "stranger"])
    out = tower_checks.check_tower(tower, [users], (3, 8), [tf.TensorSpec([None], tf.string)],
                                   tmp_path / "saved")
    tower_checks.check_unit_norm(out)
    tower_checks.check_trainable(tower, [users])


def test_unknown_users_share_the_out_of_vocabulary_embedding():
    out = query_tower()(tf.constant(["nobody", "stranger", "u1", "u2"])).numpy()
    np.testing.assert_array_equal(out[0], out[1])
    assert not np.allclose(out[0], out[2]) and not np.allclose(out[2], out[3])


def test_an_untrained_user_gets_the_unknown_users_id_row_and_keeps_its_features():
    """A test-only user (or one only users.csv names) has a vocabulary row no training step
    reads: it was served from that random row, unlike any unknown user."""
    plain = query_tower(users=USERS, feature_columns=["age", "occupation"])
    tower = query_tower(users=USERS, feature_columns=["age", "occupation"],
                        untrained_user_ids=np.array(["u2"], dtype=object))
    ids = tf.constant(["u2", "nobody", "u1", "u3"])
    plain(ids), tower(ids)  # built
    tower.set_weights(plain.get_weights())
    np.testing.assert_array_equal(tower._id_rows(tf.constant([0, 1, 2, 3], tf.int64)).numpy(),
                                  [0, 1, 0, 3])
    # in training too, hidden by user-id dropout or not: never its own untrained row
    tower.id_dropout = 0.5
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tower(tf.constant(["u2"] * 64), training=True))
    gradient = tf.convert_to_tensor(tape.gradient(loss, tower.id_embedding.embeddings))
    assert np.any(gradient.numpy()[0]) and not np.any(gradient.numpy()[2])
    tower.id_dropout = 0.0
    # u2's own features with the unknown id row: as plain's u2 with that row's weights put in
    weights = plain.id_embedding.get_weights()[0].copy()
    weights[2] = weights[0]
    plain.id_embedding.set_weights([weights])
    np.testing.assert_array_equal(tower(ids).numpy(), plain(ids).numpy())
    assert not np.array_equal(tower(ids).numpy()[0], tower(ids).numpy()[1])  # features differ
    tower_checks.check_config_round_trip(tower, [ids])
    with pytest.raises(ValueError, match=r"untrained_user_ids \['u9'\] are not in user_ids"):
        query_tower(untrained_user_ids=["u9"])


def test_a_python_list_of_user_ids_embeds_as_the_tensor_of_them_does():
    tower = query_tower()
    expected = tower(tf.constant(["u2", "nobody"])).numpy()
    np.testing.assert_array_equal(tower(["u2", "nobody"]).numpy(), expected)
    np.testing.assert_array_equal(tower([2, 0]).numpy(), expected)  # lookup indices


def test_user_features_become_embeddings_and_standardised_numbers():
    tower = query_tower(users=USERS, feature_columns=["age", "occupation"])
    assert list(tower.categorical) == ["occupation"]
    # Rows: unknown user, then u1..u3; artist/farmer codes 1/2, unknown 0.
    assert tower.categorical["occupation"].numpy().tolist() == [0, 1, 2, 1]
    ages = tower.numeric.numpy()[:, 0]
    assert ages[0] == 0.0
    np.testing.assert_allclose(ages[1:], [-1.2247449, 0.0, 1.2247449], atol=1e-5)


def test_user_id_dropout_replaces_ids_with_unknown_only_in_training():
    tower = query_tower(id_dropout=0.99)
    users = tf.constant(["u1"] * 200)
    unknown = tower(tf.constant(["nobody"])).numpy()[0]
    trained = tower(users, training=True).numpy()
    assert np.mean(np.all(np.isclose(trained, unknown, atol=1e-6), axis=1)) > 0.9
    assert not np.allclose(tower(users[:1]).numpy()[0], unknown)


def test_history_joins_the_query_and_padding_is_ignored():
    history = np.array([[0, 1], [2, -1], [-1, -1]])
    calls = []

    def item_embedder(items, training=False):
        calls.append(items.numpy().tolist())
        return tf.one_hot(items, 8)

    tower = query_tower(history=history)
    tower(tf.constant(["u1", "u2", "u3"]), item_embedder=item_embedder)
    assert calls == [[0, 1, 2, 0, 0, 0]]  # padding (-1) clamped to 0, then masked out
    mean = tower._history_embedding(tf.constant(history), item_embedder, False).numpy()
    np.testing.assert_allclose(mean[0, :3], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(mean[1, :3], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(mean[2], 0.0)


def test_query_tower_without_user_table_uses_the_id_alone():
    tower = query_tower()
    assert tower.categorical == {} and tower.numeric is None
    assert tower(tf.constant(["u1"])).shape == (1, 8)


def test_item_tower_hands_its_training_precision_to_every_projection():
    tower = ItemTower(("text", "image"), 8, training_precision="bfloat16")
    assert {p.training_precision for p in tower.projections.values()} == {"bfloat16"}
    assert ItemTower.from_config(tower.get_config()).training_precision == "bfloat16"
    with pytest.raises(ValueError, match="training_precision"):
        ItemTower(("text",), 8, training_precision="half")
