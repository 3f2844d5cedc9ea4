"""Tests for tfmmrec.models.retrieval (and the pipeline that builds and restores it)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tfmmrec import pipeline
from tfmmrec.config import load_config
from tfmmrec.errors import ConfigError, TrainingError
from tfmmrec.models.retrieval import RetrievalModel


@pytest.fixture(scope="module")
def model(tiny_workspace) -> RetrievalModel:
    tf.keras.utils.set_random_seed(0)
    model = pipeline.build_model(tiny_workspace)
    model.build_from_example()
    return model


def batch(workspace, users, items) -> dict[str, tf.Tensor]:
    return {"user_id": tf.constant(np.asarray(workspace.user_ids)[users].astype(str)),
            "item_index": tf.constant(items, tf.int32)}


def test_embeddings_are_unit_vectors_of_embedding_dim(model, tiny_workspace):
    items = model.item_embeddings(tf.range(10)).numpy()
    queries = model.query_embeddings(tf.constant(["u000", "unknown-user"])).numpy()
    dim = tiny_workspace.config.model.embedding_dim
    assert items.shape == (10, dim) and queries.shape == (2, dim)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


def test_loss_is_a_finite_positive_scalar(model, tiny_workspace):
    loss = model.compute_loss(batch(tiny_workspace, [0, 1, 2, 3], [0, 5, 9, 11]))
    assert loss.shape == () and np.isfinite(loss.numpy()) and loss.numpy() > 0


def test_remove_accidental_hits_masks_duplicate_positives(model, tiny_workspace):
    """When two users in a batch chose the same item, it is not a negative for either."""
    features = batch(tiny_workspace, [0, 1, 2, 3], [7, 7, 7, 3])
    kwargs = dict(item_probability=None, temperature=0.1)
    parts = (model.query_tower, model.item_tower, model.content_table)
    with_removal = RetrievalModel(*parts, remove_accidental_hits=True, **kwargs)
    without = RetrievalModel(*parts, remove_accidental_hits=False, **kwargs)
    assert with_removal.compute_loss(features).numpy() < without.compute_loss(features).numpy()


def test_logq_correction_changes_the_loss(model, tiny_workspace):
    features = batch(tiny_workspace, [0, 1, 2, 3], [0, 5, 9, 11])
    parts = (model.query_tower, model.item_tower, model.content_table)
    skewed = np.full(tiny_workspace.dataset.num_items, 1e-4)
    skewed[0] = 0.5
    corrected = RetrievalModel(*parts, item_probability=skewed, temperature=0.1)
    plain = RetrievalModel(*parts, item_probability=None, temperature=0.1)
    assert not np.isclose(corrected.compute_loss(features).numpy(),
                          plain.compute_loss(features).numpy())


def test_training_lowers_the_loss(tiny_trained):
    losses = tiny_trained.history["loss"]
    assert len(losses) == 2 and losses[-1] < losses[0]


def test_frozen_encoders_stay_outside_the_model_and_unchanged(tiny_trained, tiny_workspace):
    model = tiny_trained.model
    encoder_ids = {id(w) for e in tiny_workspace.encoders.values() for w in e.weights}
    assert not encoder_ids & {id(w) for w in model.weights}
    assert model.content_table.trainable_weights == []
    import json

    run = json.loads((tiny_trained.output_dir / "run.json").read_text())
    assert run["encoders"] == tiny_workspace.encoder_identities()


def test_fine_tuned_text_encoder_trains_inside_the_item_tower(tiny_config, tmp_path):
    config = derive_config(tiny_config, tmp_path, "text.trainable=true", "image.enabled=false",
                           "audio.enabled=false", "train.epochs=1")
    workspace = pipeline.prepare(config, progress=False)
    encoder = workspace.encoders["text"]
    assert workspace.contents["text"].values.dtype.kind in "OU"  # raw strings, not features
    before = encoder.identity()
    result = pipeline.train(config, workspace=workspace, progress=False)
    assert encoder in result.model.item_tower.encoders.values()
    assert encoder.identity() != before  # weights moved


def test_restored_model_reproduces_trained_embeddings(tiny_trained, tiny_config):
    restored, workspace = pipeline.restore_model(tiny_config)
    n = workspace.dataset.num_items
    np.testing.assert_allclose(pipeline.embed_items(restored, n),
                               pipeline.embed_items(tiny_trained.model, n), atol=1e-5)
    users = workspace.user_ids[:5]
    np.testing.assert_allclose(pipeline.embed_users(restored, users),
                               pipeline.embed_users(tiny_trained.model, users), atol=1e-5)


def test_restore_without_checkpoint_is_a_training_error(tiny_config, tiny_workspace, tmp_path):
    config = derive_config(tiny_config, tmp_path)
    with pytest.raises(TrainingError, match=r"no checkpoint at .*latest.*train first"):
        pipeline.restore_model(config, workspace=tiny_workspace)


def test_restore_with_different_encoder_is_a_config_error(tiny_trained, tiny_config):
    changed = load_config(tiny_config, ["text.seed=7"])
    with pytest.raises(ConfigError, match=r"text encoder.* differ from the ones this model"):
        pipeline.restore_model(changed)
