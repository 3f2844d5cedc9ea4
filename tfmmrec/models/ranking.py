"""Models: ranking and multitask — score (user, item) pairs on top of the shared two towers.

Retrieval picks a few hundred candidates from the catalogue; ranking orders them with a richer
model of the pair. Here the ranking head reads the query embedding, the multimodal item embedding,
their product and their dot product — the retrieval score itself — through optional DCN-v2
cross layers and a deep network. ``MultitaskModel`` trains retrieval and ranking together on
shared towers (the TFRS multitask pattern): the weights trade retrieval quality against ranking
accuracy, and ``retrieval_weight=0`` gives a pure ranking model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfmmrec.data import validate
from tfmmrec.errors import ConfigError, DataError
from tfmmrec.models.retrieval import (
    RetrievalModel,
    as_user_ids,
    batch_column,
    user_input,
)

RANKING_TASKS = ("regression", "binary", "listwise")

logger = logging.getLogger(__name__)


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

    The two terms keep TFRS's reductions (its multitask tutorial's): the retrieval loss (and
    the alignment loss riding on it, so ``alignment_weight`` is relative to ``w_r``) is summed
    over the batch's examples, the ranking loss averaged. At batch size B a 1:1 weighting thus
    gives the ranking term about 1/B of the retrieval term per example; ``w_k = B`` balances
    them per example.

    Ranking tasks:
      - ``regression``: explicit ratings, MSE (reports RMSE and MAE).
      - ``binary``: implicit feedback — each interaction is a positive and
        ``negatives_per_positive`` items drawn uniformly from ``negative_items`` (the items
        with training interactions: a cold item drawn as a negative would teach the head that
        unseen items are bad ones) are negatives; a draw equal to the positive is not counted
        (reports AUC). A ``rating`` column is not read (``warn_unread_ratings``).
      - ``listwise``: a softmax loss over a user's list of rated items (``list_items``,
        ``list_ratings`` features, >= 0), i.e. ListNet with relevance from ratings. The retrieval
        loss reads each list's items as that user's positives (one example per pair): users
        with fewer than ``list_size`` ratings get no list and so no retrieval example, the
        others ``lists_per_user × list_size`` each, and with in-batch negatives a list's other
        items are negatives of each pair.

    The head's query leaves the scored item out of the user's history (``model.user_history``;
    for a list, each item is scored by a query without it), as the retrieval loss does: served
    candidates are not in it.
    """

    def __init__(self, *args, ranking_task: str = "regression", retrieval_weight: float = 1.0,
                 ranking_weight: float = 1.0, deep_layers: Sequence[int] = (256, 64),
                 cross_layers: int = 0, cross_projection_dim: int | None = None,
                 negatives_per_positive: int = 4, num_items: int | None = None,
                 negative_items: Sequence[int] | np.ndarray | None = None, **kwargs):
        _check_arguments(ranking_task, retrieval_weight, ranking_weight,
                         negatives_per_positive, num_items, negative_items)
        if retrieval_weight == 0:
            kwargs["alignment_weight"] = 0.0  # alignment rides on the retrieval batches
        super().__init__(*args, **kwargs)
        self.ranking_task = ranking_task
        self.retrieval_weight = retrieval_weight
        self.ranking_weight = ranking_weight
        self.negatives_per_positive = negatives_per_positive
        self.num_items = num_items
        self.negative_items = None
        if ranking_task == "binary":
            self.negative_items = tf.constant(
                np.arange(num_items) if negative_items is None else negative_items, tf.int32)
        # No head without a ranking loss: it would get no gradient and export as untrained.
        self.head = None
        if ranking_weight > 0:
            self.head = RankingHead(deep_layers, cross_layers, cross_projection_dim,
                                    name="ranking")
        self.rank_task = tfrs.tasks.Ranking(**_ranking_loss_and_metrics(ranking_task))
        # A multitask epoch line showed one sum, retrieval's (summed over the batch) swamping
        # ranking's (averaged): the ranking term is logged on its own, unweighted.
        self.ranking_loss = None
        if ranking_weight > 0 and retrieval_weight > 0:
            self.ranking_loss = tf.keras.metrics.Mean(name="ranking_loss")

    def loss_terms(self) -> list[tf.keras.metrics.Mean]:
        own = [] if self.ranking_loss is None else [self.ranking_loss]
        return super().loss_terms() + own

    def build_from_example(self) -> None:
        super().build_from_example()
        if self.head is not None:
            self.head(tf.zeros([1, self.item_tower.dim]), tf.zeros([1, self.item_tower.dim]))

    def score(self, user_id, item_index, training=False):
        """Ranking logits for aligned ``user_id [B]`` (ids: strings, or integers as pandas
        reads them) and ``item_index [B]``."""
        return self.head(self.query_embeddings(as_user_ids(user_id), training),
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
        if self.retrieval_weight > 0:
            loss += self.retrieval_weight * super().compute_loss(
                features if "list_items" not in features else list_pairs(features), training)
        if self.ranking_weight > 0:
            ranking = self._ranking_loss(features, training)
            if self.ranking_loss is not None:
                self.ranking_loss.update_state(ranking)
            loss += self.ranking_weight * ranking
        return loss

    def _ranking_loss(self, features, training):
        """The ranking task's mean over the step's rows (pairs, or lists), as a replica's
        share: its summed loss over the rows of every replica, counted (so replicas given
        unequal or empty slices of a short batch still add up to the batch's mean; an empty
        batch is 0). Keras refuses a loss that averages itself under ``tf.distribute``, and one
        that did would count each replica's mean once: R replicas, R times the gradient."""
        summed, rows = self._summed_ranking_loss(features, training)
        rows = tf.cast(rows, summed.dtype)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            rows = context.all_reduce(tf.distribute.ReduceOp.SUM, rows)
        return tf.math.divide_no_nan(summed, rows)

    def _summed_ranking_loss(self, features, training) -> tuple[tf.Tensor, tf.Tensor]:
        """``(the task's loss summed over the batch's rows, how many rows)``."""
        if self.ranking_task == "listwise":
            # one query per (user, list item), that item left out of the history
            pairs = list_pairs(features)
            queries = self.query_embeddings(user_input(pairs), training,
                                            exclude=pairs["item_index"])
            scores = self.head(queries, self.item_embeddings(pairs["item_index"], training))
            logits = tf.reshape(scores, tf.shape(features["list_items"]))
            return self.rank_task(labels=features["list_ratings"], predictions=logits,
                                  compute_metrics=not training), tf.shape(logits)[0]
        item_index = tf.cast(batch_column(features, "item_index"), tf.int32)
        queries = self.query_embeddings(user_input(features), training, exclude=item_index)
        positive = self.head(queries, self.item_embeddings(item_index, training))
        if self.ranking_task == "regression":  # one row per rating (Keras averages the last axis)
            return self.rank_task(labels=tf.reshape(features["rating"], [-1, 1]),
                                  predictions=positive[:, None],
                                  compute_metrics=not training), tf.shape(positive)[0]
        negatives, counted = self.draw_negatives(item_index)
        negative_embeddings = tf.reshape(
            self.item_embeddings(tf.reshape(negatives, [-1]), training),
            [-1, self.negatives_per_positive, self.item_tower.dim])
        negative = self.score_candidates(queries, negative_embeddings)
        logits = tf.concat([positive[:, None], negative], axis=1)
        labels = tf.concat([tf.ones_like(positive[:, None]), tf.zeros_like(negative)], axis=1)
        weights = tf.concat([tf.ones_like(positive[:, None]), counted], axis=1)
        # one row per pair, a hit drawn as a negative weighted 0 but counted, as Keras counted it
        return self.rank_task(labels=tf.reshape(labels, [-1, 1]),
                              predictions=tf.reshape(logits, [-1, 1]),
                              sample_weight=tf.reshape(weights, [-1]),
                              compute_metrics=not training), tf.size(logits)

    def draw_negatives(self, item_index) -> tuple[tf.Tensor, tf.Tensor]:
        """``(negatives [B, n], counted [B, n])`` for the positives ``item_index [B]``: draws
        from ``negative_items`` (seeded), and 0.0 where a draw is the positive itself (an
        accidental hit, left out of the loss)."""
        draws = tf.random.stateless_uniform(
            [tf.shape(item_index)[0], self.negatives_per_positive], self.noise.seed(),
            maxval=tf.shape(self.negative_items)[0], dtype=tf.int32)
        negatives = tf.gather(self.negative_items, draws)
        return negatives, tf.cast(negatives != item_index[:, None], tf.float32)


def list_pairs(features) -> dict[str, tf.Tensor]:
    """A listwise batch as retrieval examples: each list's items, each with its list's user."""
    items = tf.cast(features["list_items"], tf.int32)
    users = user_input(features)
    return {"user_index" if "user_index" in features else "user_id":
            tf.reshape(tf.repeat(users[:, None], tf.shape(items)[1], axis=1), [-1]),
            "item_index": tf.reshape(items, [-1])}


def ranking_only_note(retrieval_weight: float, retrieve_candidates: int) -> str | None:
    """What a ranking-only model's first stage is, or ``None`` for a model that trains
    retrieval: its towers learn only through the head, so the index that picks the head's
    candidates ranks below popularity (a review's demo run: Recall@10 0.072 against 0.144),
    and nothing said so."""
    if retrieval_weight > 0:
        return None
    return (f"a ranking-only model (ranking.retrieval_weight: 0): its retrieval towers learn only "
            f"through the ranking head, so the first stage that picks recommend's "
            f"{retrieve_candidates} candidates is not trained for retrieval (the tfmmrec row "
            f"of `tfmmrec evaluate` scores it; compare it with popularity). score_candidates "
            f"re-ranks items you choose; for a two-stage recommender set "
            f"ranking.retrieval_weight > 0")


def _check_arguments(ranking_task: str, retrieval_weight: float, ranking_weight: float,
                     negatives_per_positive: int, num_items: int | None,
                     negative_items) -> None:
    """One-line ``ValueError``s naming the argument, before any layer is built."""
    if ranking_task not in RANKING_TASKS:
        raise ValueError(f"ranking_task must be one of {RANKING_TASKS}, got {ranking_task!r}")
    for name, weight in (("retrieval_weight", retrieval_weight),
                         ("ranking_weight", ranking_weight)):
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {weight!r}")
    if retrieval_weight == 0 and ranking_weight == 0:
        raise ValueError("retrieval_weight and ranking_weight are both 0: nothing would train")
    if ranking_task != "binary":
        return
    if not (isinstance(negatives_per_positive, int) and negatives_per_positive >= 1):
        raise ValueError("negatives_per_positive must be an integer >= 1 for "
                         f"ranking_task='binary', got {negatives_per_positive!r}")
    if not (isinstance(num_items, (int, np.integer)) and num_items >= 1):
        raise ValueError("ranking_task='binary' draws negatives from the catalogue: pass "
                         f"num_items (the catalogue size), got {num_items!r}")
    if negative_items is not None:
        drawn = np.asarray(negative_items)
        if drawn.ndim != 1 or len(drawn) == 0 or not np.issubdtype(drawn.dtype, np.integer) \
                or drawn.min() < 0 or drawn.max() >= num_items:
            raise ValueError(f"negative_items must be a non-empty list of item indices in "
                             f"[0, {num_items}), got {negative_items!r:.80}")


def _ranking_loss_and_metrics(task: str) -> dict:
    """Each task's loss, summed over rows (``MultitaskModel._ranking_loss`` divides by the
    global count), and its metrics."""
    total = tf.keras.losses.Reduction.SUM
    if task == "regression":
        return {"loss": tf.keras.losses.MeanSquaredError(reduction=total),
                "metrics": [tf.keras.metrics.RootMeanSquaredError(name="rmse"),
                            tf.keras.metrics.MeanAbsoluteError(name="mae")]}
    if task == "binary":
        return {"loss": tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=total),
                "metrics": [tf.keras.metrics.AUC(from_logits=True, name="auc")]}
    return {"loss": ListwiseSoftmaxLoss(reduction=total), "metrics": []}


class ListwiseSoftmaxLoss(tf.keras.losses.Loss):
    """Softmax cross-entropy between a list's scores and its ratings normalised to a
    distribution (ListNet top-one). Ratings must be >= 0 (``rating_targets`` refuses others):
    a list's total near 0 or below would give huge targets. An entry rated 0 gets no target
    mass but still competes in the softmax (a negative of the list); a list rated 0 throughout
    has no target and adds 0. Lists cannot be padded with 0 (``sample_lists`` never pads; it
    skips users with fewer ratings)."""

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        target = y_true / tf.maximum(tf.reduce_sum(y_true, axis=-1, keepdims=True), 1e-9)
        return tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=y_pred)


def rating_targets(interactions: pd.DataFrame, task: str = "regression",
                   source: Path | None = None) -> np.ndarray:
    """The ``rating`` column as float32 targets of ranking ``task`` (``regression`` or
    ``listwise``). ``source``: the table the rows were read from, named by an error.

    Listwise targets are each list's ratings normalised to a distribution, so they must be
    >= 0: a negative rating gives a list a total near 0 or below, and targets of about
    ±1e9 (a loss of -1e11, a negative NDCG)."""
    where = source if source is not None else "the interactions table"
    if "rating" not in interactions.columns:
        raise DataError(f"{where}: ranking.task={task} needs a rating column (use "
                        "ranking.task=binary for implicit feedback)")
    ratings = interactions["rating"].to_numpy(np.float32)
    if task == "listwise" and (ratings < 0).any():
        row = interactions.iloc[int(np.argmax(ratings < 0))]
        raise DataError(f"{row_location(row, source)}: rating {row['rating']:g}: "
                        f"ranking.task=listwise needs ratings >= 0")
    return ratings


def row_location(row: pd.Series, source: Path | None) -> str:
    """``<folder>/<table> line N`` of a loaded interaction ``row``. The loaded rows have lost
    their file positions (duplicates and ``data.min_rating`` drop rows, splits shuffle), so
    the table is read again to find the row: an error's cost only."""
    pair = f"user {row['user_id']}, item {row['item_id']}"
    if source is None or not Path(source).is_file():
        return f"{source or 'the interactions table'} ({pair})"
    source = Path(source)
    table = validate.read_table(source, id_columns=["user_id", "item_id"])
    same = (table["user_id"].astype(str) == str(row["user_id"])) \
        & (table["item_id"].astype(str) == str(row["item_id"]))
    if "rating" in table.columns:
        same &= pd.to_numeric(table["rating"], errors="coerce") == row["rating"]
    found = np.flatnonzero(same.to_numpy())
    if not len(found):
        return f"{source} ({pair})"
    return f"{source.parent}/{validate.row_label(source, table.index[found[0]])}"


def interactions_source(root: Path) -> Path | None:
    """The interactions table of the dataset folder ``root`` (None if there is none: rows
    given otherwise), for errors to name."""
    try:
        return validate.find_table(Path(root), "interactions", required=False)
    except DataError:  # several tables: the dataset loaded one; errors then name the pair
        return None


def warn_unread_ratings(interactions: pd.DataFrame, source: Path | None) -> None:
    """``ranking.task=binary`` trains every row as a positive whatever its rating: rows rated
    0 or below (dislikes, "not seen") would be trained as likes without a word, so warn and
    point to ``data.min_rating``, which drops them when the data is loaded. ``interactions``
    is the whole table (every split and validation carve trains from it), so the warning is
    the same for each run of a selection and is given once per process."""
    if "rating" not in interactions.columns:
        return
    ratings = interactions["rating"].to_numpy(np.float64)
    low = ratings <= 0
    key = (str(source), int(low.sum()), len(ratings))
    if low.any() and key not in _WARNED_UNREAD:
        _WARNED_UNREAD.add(key)
        logger.warning("%s: ranking.task=binary trains every row as a positive, but %d of its "
                       "%d rows have a rating <= 0 (lowest %g); if they are not positives, set "
                       "data.min_rating (the smallest rating that is one) to drop them",
                       source or "the interactions table", int(low.sum()), len(ratings),
                       ratings.min())


_WARNED_UNREAD: set[tuple[str, int, int]] = set()


def require_lists(user_ids: np.ndarray, list_size: int) -> None:
    """A ``ConfigError`` when no user has ``list_size`` ratings: ``sample_lists`` would give
    no list and ``fit`` fail on empty data with a long traceback."""
    counts = pd.Series(user_ids).value_counts()
    most = int(counts.max()) if len(user_ids) else 0
    if most < list_size:
        raise ConfigError(f"ranking.list_size={list_size}: no training user has {list_size} "
                          f"ratings (most: {most})")
    kept = int((counts >= list_size).sum())
    if kept < len(counts):  # the others get no ranking and no retrieval example: say how many
        (logger.warning if 2 * kept < len(counts) else logger.info)(
            "ranking.list_size=%d: %d of %d training users have that many ratings; the other "
            "%d get no training example", list_size, kept, len(counts), len(counts) - kept)


def require_rated_lists(lists: dict[str, np.ndarray], list_size: int) -> None:
    """A ``DataError`` when no sampled list has a rating above 0: every list's listwise
    target would be empty and its loss 0, so the head would learn nothing. (A few such
    lists are harmless: they add 0 to the ranking loss and still give retrieval pairs.)"""
    ratings = lists["list_ratings"]
    if not (ratings.sum(axis=1) > 0).any():
        raise DataError(f"ranking.task=listwise: no list of ranking.list_size={list_size} "
                        "training ratings has a rating above 0, so the ranking loss would be "
                        "0 throughout; rate items above 0 (or use ranking.task=binary)")
    if not (ratings != ratings[:, :1]).any():
        raise DataError(f"ranking.task=listwise: every list of ranking.list_size={list_size} "
                        "training ratings rates its items alike, so there is no order to "
                        "learn (and evaluation skips such lists); use ratings that differ, or "
                        "ranking.task=binary")


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
