"""Baselines: the TFRS tutorial model as written, and the training-free content profile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tfmmrec.evaluation import interactions_matrix
from tfmmrec.evaluation.baselines import (
    TUTORIAL_EMBEDDING_DIM,
    TutorialRetrievalModel,
    content_profile_embeddings,
    train_tutorial_model,
    tutorial_dataset,
    tutorial_embeddings,
)

USERS = [f"u{i}" for i in range(8)]
ITEMS = [f"i{i}" for i in range(6)]


@pytest.fixture(scope="module")
def blocks() -> pd.DataFrame:
    """Users u0–u3 only take items i0–i2, users u4–u7 only i3–i5: learnable in a few steps."""
    rows = [(u, f"i{(k % 3) + 3 * (i >= 4)}") for i, u in enumerate(USERS) for k in range(30)]
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


def test_tutorial_model_has_the_tutorial_towers():
    model = TutorialRetrievalModel(USERS, ITEMS, compute_metrics=False)
    users, items = tutorial_embeddings(model, USERS, ITEMS)
    assert users.shape == (len(USERS), TUTORIAL_EMBEDDING_DIM)
    assert items.shape == (len(ITEMS), TUTORIAL_EMBEDDING_DIM)
    # StringLookup(mask_token=None) + one OOV row: vocabulary + 1 embedding rows per tower.
    assert model.user_model.layers[1].input_dim == len(USERS) + 1
    assert model.item_model.layers[1].input_dim == len(ITEMS) + 1


def test_tutorial_dataset_batches_and_replays_one_shuffle(blocks):
    dataset = tutorial_dataset(blocks, batch_size=64, seed=1)
    first = [b["item_id"].numpy().tolist() for b in dataset]
    again = [b["item_id"].numpy().tolist() for b in dataset]
    assert [len(b) for b in first] == [64, 64, 64, 48]
    assert first == again  # .cache() after .shuffle(): every epoch sees the same batches


def test_tutorial_training_learns_blocks_and_reports_speed(blocks):
    result = train_tutorial_model(blocks, USERS, ITEMS, epochs=3, batch_size=32,
                                  compute_metrics=False, seed=0)
    users, items = tutorial_embeddings(result.model, USERS, ITEMS)
    scores = users @ items.T
    own = np.where(np.arange(8)[:, None] < 4, scores[:, :3].mean(1, keepdims=True),
                   scores[:, 3:].mean(1, keepdims=True))[:, 0]
    other = np.where(np.arange(8) < 4, scores[:, 3:].mean(1), scores[:, :3].mean(1))
    assert (own > other).all()
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert len(result.epoch_seconds) == 3
    # the speed rule: examples over the epochs after the first (which includes tracing)
    assert result.examples_per_second == pytest.approx(
        len(blocks) * 2 / sum(result.epoch_seconds[1:]))


def test_tutorial_metrics_on_reports_factorized_top_k(blocks):
    result = train_tutorial_model(blocks, USERS, ITEMS, epochs=1, batch_size=64,
                                  compute_metrics=True, seed=0)
    assert "factorized_top_k/top_100_categorical_accuracy" in result.history
    # 6 candidates only: every true item is in the top 100.
    assert result.history["factorized_top_k/top_100_categorical_accuracy"][-1] == 1.0


def test_content_profile_ranks_items_like_the_users_history():
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [5.0, 5.0]])
    present = np.array([True, True, True, True, False])
    train = interactions_matrix(np.array([0, 1]), np.array([0, 2]), 3, 5)
    users, items = content_profile_embeddings(features, present, train)
    scores = users @ items.T
    assert scores[0].argmax() == 0 and scores[0, 1] > scores[0, 3]
    assert scores[1].argmax() == 2 and scores[1, 3] > scores[1, 1]
    assert np.allclose(items[4], 0.0)  # absent modality: no score for anyone
    assert np.allclose(users[2], 0.0)  # no history: zero profile, not NaN
    assert np.allclose(np.linalg.norm(items[:4], axis=1), 1.0)


def test_content_profile_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="item columns"):
        content_profile_embeddings(np.zeros((3, 2)), np.ones(3, bool), sp.csr_matrix((2, 4)))
    with pytest.raises(ValueError, match=r"\[N, f\]"):
        content_profile_embeddings(np.zeros((3, 2)), np.ones(2, bool), sp.csr_matrix((2, 3)))
