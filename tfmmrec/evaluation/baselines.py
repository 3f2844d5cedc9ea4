"""Evaluation baselines, beside the metrics: reference models every tfmmrec result is measured by.

Popularity and random need no training and live in ``protocol``. Here are the two that do:

* the TFRS basic-retrieval tutorial model, as written there (user-id and item-id embeddings of
  dim 32, ``StringLookup``, in-batch softmax without sampling-bias correction, ``FactorizedTopK``
  computed in every training step, Adagrad 0.1, batch 8192): the ID-only two-tower that
  tfmmrec's accuracy *and* its training speed are compared with;
* a content profile: a user is the mean of the (frozen-encoder) features of the items they
  interacted with, an item is its own feature, the score is their cosine. No training at all,
  so it shows how much of a content tower's result the pretrained encoder gives for free.

Both produce plain ``[users, d]`` / ``[items, d]`` arrays, so they go through the same
``evaluation.protocol.evaluate_embeddings`` code path as tfmmrec itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import tensorflow as tf
import tensorflow_recommenders as tfrs

TUTORIAL_EMBEDDING_DIM = 32
TUTORIAL_BATCH_SIZE = 8192
TUTORIAL_LEARNING_RATE = 0.1
TUTORIAL_EPOCHS = 3
TUTORIAL_SHUFFLE_BUFFER = 100_000


class TutorialRetrievalModel(tfrs.Model):
    """The ID-only two-tower of the TFRS basic-retrieval tutorial, line for line.

    Why it exists: it is the model most TFRS users start from, so "how much better than the
    tutorial" is the first question about any retrieval model on MovieLens. Each tower is
    ``StringLookup(vocabulary, mask_token=None)`` → ``Embedding(len(vocabulary) + 1, dim)``; the
    loss is ``tfrs.tasks.Retrieval``'s in-batch softmax with no temperature, no logQ correction
    and no accidental-hit masking. The tutorial keys movies by title; here they are keyed by item
    id (ML-100K has a few titles shared by two ids, which a title key would merge).

    Args:
      user_ids: user vocabulary (strings); unknown users map to the out-of-vocabulary row.
      item_ids: item vocabulary and the candidate set of the ``FactorizedTopK`` metric.
      embedding_dim: size of both id embeddings (32 in the tutorial).
      compute_metrics: compute ``FactorizedTopK`` (top-K accuracy over *all* items, re-embedding
        the whole catalogue) in every training step, as the tutorial does. This does not change
        the weights, only the cost: on CPU it dominates step time, which is why the speed
        reference keeps it on and accuracy runs may switch it off.
    """

    def __init__(self, user_ids: Sequence[str], item_ids: Sequence[str],
                 embedding_dim: int = TUTORIAL_EMBEDDING_DIM, compute_metrics: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        users = np.asarray(user_ids).astype(str)
        items = np.asarray(item_ids).astype(str)
        self.user_model = tf.keras.Sequential([
            tf.keras.layers.StringLookup(vocabulary=users, mask_token=None),
            tf.keras.layers.Embedding(len(users) + 1, embedding_dim),
        ], name="user_model")
        self.item_model = tf.keras.Sequential([
            tf.keras.layers.StringLookup(vocabulary=items, mask_token=None),
            tf.keras.layers.Embedding(len(items) + 1, embedding_dim),
        ], name="item_model")
        self.compute_metrics = compute_metrics
        metrics = None
        if compute_metrics:
            candidates = tf.data.Dataset.from_tensor_slices(items).batch(128).map(
                self.item_model)
            metrics = tfrs.metrics.FactorizedTopK(candidates=candidates)
        self.task = tfrs.tasks.Retrieval(metrics=metrics)

    def compute_loss(self, features, training=False):
        user_embeddings = self.user_model(features["user_id"])
        positive_item_embeddings = self.item_model(features["item_id"])
        return self.task(user_embeddings, positive_item_embeddings,
                         compute_metrics=self.compute_metrics)


@dataclass
class TutorialResult:
    """A trained tutorial model and what its training cost."""

    model: TutorialRetrievalModel
    examples_per_second: float
    epoch_seconds: list[float] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)


class _EpochTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def tutorial_dataset(interactions: pd.DataFrame, batch_size: int = TUTORIAL_BATCH_SIZE,
                     seed: int = 42) -> tf.data.Dataset:
    """``train.shuffle(100_000).batch(8192).cache()``, as the tutorial builds it.

    The cache sits after the shuffle, so every epoch replays the first epoch's batches.
    """
    data = {"user_id": interactions["user_id"].astype(str).to_numpy(),
            "item_id": interactions["item_id"].astype(str).to_numpy()}
    return (tf.data.Dataset.from_tensor_slices(data)
            .shuffle(TUTORIAL_SHUFFLE_BUFFER, seed=seed)
            .batch(batch_size)
            .cache())


def train_tutorial_model(interactions: pd.DataFrame, user_ids: Sequence[str],
                         item_ids: Sequence[str], *, epochs: int = TUTORIAL_EPOCHS,
                         batch_size: int = TUTORIAL_BATCH_SIZE,
                         learning_rate: float = TUTORIAL_LEARNING_RATE,
                         embedding_dim: int = TUTORIAL_EMBEDDING_DIM,
                         compute_metrics: bool = True, seed: int = 42,
                         callbacks: Sequence[tf.keras.callbacks.Callback] = ()
                         ) -> TutorialResult:
    """Train :class:`TutorialRetrievalModel` on ``(user_id, item_id)`` rows with Adagrad.

    ``examples_per_second`` counts the epochs after the first (which includes tracing), the same
    rule as tfmmrec's trainer, so the two are comparable; with one epoch it uses that epoch.
    """
    tf.keras.utils.set_random_seed(seed)
    model = TutorialRetrievalModel(user_ids, item_ids, embedding_dim, compute_metrics)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=learning_rate))
    timer = _EpochTimer()
    history = model.fit(tutorial_dataset(interactions, batch_size, seed), epochs=epochs,
                        verbose=0, callbacks=[timer, *callbacks])
    steady = timer.seconds[1:] or timer.seconds
    speed = len(interactions) * len(steady) / max(sum(steady), 1e-9)
    return TutorialResult(model, speed, timer.seconds,
                          {k: [float(v) for v in vs] for k, vs in history.history.items()})


def tutorial_embeddings(model: TutorialRetrievalModel, user_ids: Sequence[str],
                        item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(users [U, d], items [N, d])`` in the given orders, for ``evaluate_embeddings``."""
    users = model.user_model(tf.constant(np.asarray(user_ids).astype(str))).numpy()
    items = model.item_model(tf.constant(np.asarray(item_ids).astype(str))).numpy()
    return users, items


def content_profile_embeddings(features: np.ndarray, present: np.ndarray,
                               train: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Training-free content baseline: user = mean of their items' unit features.

    Args:
      features: ``[N, f]`` frozen-encoder features of every item (e.g. the cached MiniLM ones).
      present: ``[N]`` bool, items that have this modality; absent items score 0 for everyone.
      train: ``[U, N]`` sparse training interactions (users in evaluation order).

    Returns ``(users [U, f], items [N, f])``, both L2-normalised (zero rows stay zero), so the
    score is the cosine between an item and the user's profile. Users with no training item
    that has the modality get a zero profile (every item scores 0; ties fall to lower index).
    """
    features = np.asarray(features, np.float64)
    present = np.asarray(present, bool)
    if features.ndim != 2 or present.shape != (features.shape[0],):
        raise ValueError(f"features must be [N, f] and present [N]; got {features.shape} and "
                         f"{present.shape}")
    if train.shape[1] != features.shape[0]:
        raise ValueError(f"train has {train.shape[1]} item columns but features has "
                         f"{features.shape[0]} rows")
    items = _unit_rows(np.where(present[:, None], features, 0.0))
    binary = sp.csr_matrix(train != 0, dtype=np.float64)
    users = _unit_rows(np.asarray(binary @ items))
    return users.astype(np.float32), items.astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
