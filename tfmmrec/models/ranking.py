"""Models: ranking and multitask — score (user, item) pairs on top of the shared two towers.

Retrieval picks a few hundred candidates from the catalogue; ranking orders them with a richer
model of the pair. Here the ranking head reads the query embedding, the multimodal item embedding,
their product and their dot product — the retrieval score itself — through optional DCN-v2
cross layers and a deep network. ``MultitaskModel`` trains retrieval and ranking together on
shared towers (the TFRS multitask pattern): the weights trade retrieval quality against ranking
accuracy, and ``retrieval_weight=0`` gives a pure ranking model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfmmrec.models.retrieval import RetrievalModel, user_input

RANKING_TASKS = ("regression", "binary", "listwise")


class RankingHead(tf.keras.layers.Layer):
    """``[u, i, u⊙i, u·i]`` → optional DCN-v2 cross layers → deep ReLU layers → one logit.

    Args:
      deep_layers: widths of the deep network.
      cross_layers: number of ``tfrs.layers.dcn.Cross`` layers (0: none).
      cross_projection_dim: low-rank factorisation of the cross layers' weight (``None``: full
        rank); cheaper with little accuracy loss, as in DCN-v2.
    """

    def __init__(self, deep_layers: Sequence[int] = (256, 64), cross_layers: int = 0,
                 cross_projection_dim: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.cross = [tfrs.layers.dcn.Cross(projection_dim=cross_projection_dim,
                                            kernel_initializer="glorot_uniform")
                      for _ in range(cross_layers)]
        self.deep = [tf.keras.layers.Dense(width, activation="relu") for width in deep_layers]
        self.out = tf.keras.layers.Dense(1)

    def call(self, queries, items):
        dot = tf.reduce_sum(queries * items, axis=-1, keepdims=True)
        x0 = tf.concat([queries, items, queries * items, dot], axis=-1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        for layer in self.deep:
            x = layer(x)
        return self.out(x)[..., 0]


class MultitaskModel(RetrievalModel):
    """Retrieval + ranking on shared towers: ``loss = w_r · retrieval + w_k · ranking``.

    Ranking tasks:
      - ``regression``: explicit ratings, MSE (reports RMSE and MAE).
      - ``binary``: implicit feedback — each interaction is a positive and
        ``negatives_per_positive`` uniformly sampled items are negatives (reports AUC).
      - ``listwise``: a softmax loss over a user's list of rated items (``list_items``,
        ``list_ratings`` features), i.e. ListNet with relevance from ratings.
    """

    def __init__(self, *args, ranking_task: str = "regression", retrieval_weight: float = 1.0,
                 ranking_weight: float = 1.0, deep_layers: Sequence[int] = (256, 64),
                 cross_layers: int = 0, cross_projection_dim: int | None = None,
                 negatives_per_positive: int = 4, num_items: int | None = None, **kwargs):
        if retrieval_weight == 0:
            kwargs["alignment_weight"] = 0.0  # alignment rides on the retrieval batches
        super().__init__(*args, **kwargs)
        if ranking_task not in RANKING_TASKS:
            raise ValueError(f"ranking_task must be one of {RANKING_TASKS}, got {ranking_task!r}")
        self.ranking_task = ranking_task
        self.retrieval_weight = retrieval_weight
        self.ranking_weight = ranking_weight
        self.negatives_per_positive = negatives_per_positive
        self.num_items = num_items
        # No head without a ranking loss: it would get no gradient and export as untrained.
        self.head = None
        if ranking_weight > 0:
            self.head = RankingHead(deep_layers, cross_layers, cross_projection_dim,
                                    name="ranking")
        self.rank_task = tfrs.tasks.Ranking(**_ranking_loss_and_metrics(ranking_task))

    def build_from_example(self) -> None:
        super().build_from_example()
        if self.head is not None:
            self.head(tf.zeros([1, self.item_tower.dim]), tf.zeros([1, self.item_tower.dim]))

    def score(self, user_id, item_index, training=False):
        """Ranking logits for aligned ``user_id [B]`` and ``item_index [B]``."""
        return self.head(self.query_embeddings(user_id, training),
                         self.item_embeddings(item_index, training))

    def score_candidates(self, queries, candidates):
        """Logits ``[B, N]``: query embeddings ``[B, d]`` × candidate embeddings ``[B, N, d]``."""
        n = tf.shape(candidates)[1]
        tiled = tf.repeat(queries[:, None, :], n, axis=1)
        flat = self.head(tf.reshape(tiled, [-1, queries.shape[-1]]),
                         tf.reshape(candidates, [-1, queries.shape[-1]]))
        return tf.reshape(flat, [-1, n])

    def train_step(self, inputs):
        """TFRS' step, without the ranking task's metrics: they are computed on evaluation
        only (``compute_metrics=not training``), so in a training step's logs they would
        read 0 every epoch."""
        logs = super().train_step(inputs)
        evaluation_only = {metric.name for metric in self.rank_task.metrics}
        return {name: value for name, value in logs.items() if name not in evaluation_only}

    def compute_loss(self, features, training=False):
        loss = 0.0
        if self.retrieval_weight > 0 and "item_index" in features:
            loss += self.retrieval_weight * super().compute_loss(features, training)
        if self.ranking_weight > 0:
            loss += self.ranking_weight * self._ranking_loss(features, training)
        return loss

    def _ranking_loss(self, features, training):
        queries = self.query_embeddings(user_input(features), training)
        if self.ranking_task == "listwise":
            items = tf.cast(features["list_items"], tf.int32)
            embedded = tf.reshape(self.item_embeddings(tf.reshape(items, [-1]), training),
                                  [-1, tf.shape(items)[1], self.item_tower.dim])
            logits = self.score_candidates(queries, embedded)
            return self.rank_task(labels=features["list_ratings"], predictions=logits,
                                  compute_metrics=not training)
        item_index = tf.cast(features["item_index"], tf.int32)
        positive = self.head(queries, self.item_embeddings(item_index, training))
        if self.ranking_task == "regression":
            return self.rank_task(labels=features["rating"], predictions=positive,
                                  compute_metrics=not training)
        negatives = tf.random.stateless_uniform(
            [tf.shape(item_index)[0], self.negatives_per_positive], self.noise.seed(),
            maxval=self.num_items, dtype=tf.int32)
        negative_embeddings = tf.reshape(
            self.item_embeddings(tf.reshape(negatives, [-1]), training),
            [-1, self.negatives_per_positive, self.item_tower.dim])
        negative = self.score_candidates(queries, negative_embeddings)
        logits = tf.concat([positive[:, None], negative], axis=1)
        labels = tf.concat([tf.ones_like(positive[:, None]), tf.zeros_like(negative)], axis=1)
        return self.rank_task(labels=tf.reshape(labels, [-1]),
                              predictions=tf.reshape(logits, [-1]),
                              compute_metrics=not training)


def _ranking_loss_and_metrics(task: str) -> dict:
    if task == "regression":
        return {"loss": tf.keras.losses.MeanSquaredError(),
                "metrics": [tf.keras.metrics.RootMeanSquaredError(name="rmse"),
                            tf.keras.metrics.MeanAbsoluteError(name="mae")]}
    if task == "binary":
        return {"loss": tf.keras.losses.BinaryCrossentropy(from_logits=True),
                "metrics": [tf.keras.metrics.AUC(from_logits=True, name="auc")]}
    return {"loss": ListwiseSoftmaxLoss(), "metrics": []}


class ListwiseSoftmaxLoss(tf.keras.losses.Loss):
    """Softmax cross-entropy between a list's scores and its ratings normalised to a
    distribution (ListNet top-one); lists padded with rating 0 contribute nothing."""

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        target = y_true / tf.maximum(tf.reduce_sum(y_true, axis=-1, keepdims=True), 1e-9)
        return tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=y_pred)


def rating_targets(interactions) -> np.ndarray:
    """The ``rating`` column as float32 targets for ``regression``/``listwise`` ranking."""
    if "rating" not in interactions.columns:
        from tfmmrec.errors import DataError

        raise DataError("ranking.task=regression/listwise needs a rating column in "
                        "interactions.csv (use ranking.task=binary for implicit feedback)")
    return interactions["rating"].to_numpy(np.float32)


def sample_lists(user_ids: np.ndarray, item_index: np.ndarray, ratings: np.ndarray,
                 list_size: int, lists_per_user: int, seed: int) -> dict[str, np.ndarray]:
    """Random lists of ``list_size`` rated items per user (users with fewer ratings skipped),
    as the TFRS listwise tutorial builds them."""
    rng = np.random.default_rng(seed)
    order = np.argsort(user_ids, kind="stable")
    users, starts = np.unique(user_ids[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    out_users, out_items, out_ratings = [], [], []
    for user, start, end in zip(users, starts, ends, strict=True):
        rows = order[start:end]
        if len(rows) < list_size:
            continue
        for _ in range(lists_per_user):
            chosen = rng.choice(rows, list_size, replace=False)
            out_users.append(user)
            out_items.append(item_index[chosen])
            out_ratings.append(ratings[chosen])
    return {"user_id": np.array(out_users).astype(str),
            "list_items": np.array(out_items, np.int32).reshape(-1, list_size),
            "list_ratings": np.array(out_ratings, np.float32).reshape(-1, list_size)}
