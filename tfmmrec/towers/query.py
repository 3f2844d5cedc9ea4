"""Towers: the query (user) tower: user id + user features (+ recent items) → query embedding.

It takes raw user-id strings so an exported model answers ``user_id → top-k`` by itself. Unknown
ids map to the out-of-vocabulary row, which user-id dropout trains as "a user we know nothing
about" (served popular-with-everyone items plus whatever their features say), never a crash.

Training feeds vocabulary indices instead (``user_lookup`` in the ``tf.data`` pipeline, on the
host): a train step then holds no string op, which TPUs need (strings cannot live on a TPU) and
which also makes the CPU/GPU step cheaper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec.towers import arguments
from tfmmrec.towers.cf import LinearCF
from tfmmrec.towers.history import HistoryEncoder
from tfmmrec.towers.noise import Noise

logger = logging.getLogger(__name__)


def user_lookup(user_ids: Sequence[str]) -> tf.keras.layers.StringLookup:
    """User id string → vocabulary index (0 = unknown user), the mapping every QueryTower over
    ``user_ids`` uses. Build one outside any strategy scope to map ids in ``tf.data``."""
    return tf.keras.layers.StringLookup(vocabulary=[str(u) for u in user_ids], num_oov_indices=1)


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class QueryTower(tf.keras.layers.Layer):
    """User-id embedding ⊕ user-feature embeddings (⊕ mean recent-item embedding) → MLP → L2.

    Args:
      user_ids: the vocabulary (row 0 is reserved for unknown users).
      dim: shared embedding size.
      users: optional table with ``user_id`` and ``feature_columns``; string columns become
        embeddings, numeric ones are standardised.
      history: optional ``[num_users, H]`` item indices (−1 = padding), aligned with
        ``user_ids``; their mean embedding (from ``item_embedder``) joins the query.
      id_dropout: training-time rate of replacing the user id by the unknown id.
      history_encoder: optional ``HistoryEncoder`` (learned item embeddings of the user's
        training items, pooled): the item-based part of the query. Training passes each
        example's target as ``exclude`` so it is left out of that example's history.
      user_id_embedding: False drops the user-id embedding (with a history encoder, the
        history says more about a user than a per-user vector fitted to few interactions).
      linear_cf: optional closed-form item-item part (``towers.cf.LinearCF``, needs the
        history encoder's table): ``x_u P`` is appended to the normalised embedding at
        inference, so the query is ``[d + k]`` and its dot product with an item adds the
        weighted EASE score (training steps see the learned ``[d]`` part only).
      untrained_user_ids: users of the vocabulary without a training interaction (a
        test-only user, one only ``users.csv`` names): their id rows are never trained, so
        their id embedding is the unknown user's (row 0, which user-id dropout trains); their
        features still count.
      feature_tables: instead of ``users``/``feature_columns``, the per-user feature rows
        they produce, aligned with the lookup (row 0: unknown user): ``{"categorical":
        {column: codes [U + 1]}, "numeric": [U + 1, n] or None}`` (what ``get_config``
        records).
    """

    def __init__(self, user_ids: Sequence[str], dim: int, *, users: pd.DataFrame | None = None,
                 feature_columns: Sequence[str] = (), history: np.ndarray | None = None,
                 id_dropout: float = 0.0, id_dim: int | None = None,
                 history_encoder: HistoryEncoder | None = None, user_id_embedding: bool = True,
                 linear_cf: LinearCF | None = None,
                 untrained_user_ids: Sequence[str] = (),
                 feature_tables: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.dim = arguments.positive_int("dim", dim)
        self.id_dropout = arguments.rate("id_dropout", id_dropout)
        self.noise = Noise()
        self.id_dim = None if id_dim is None else arguments.positive_int("id_dim", id_dim)
        vocabulary = _vocabulary(user_ids)
        self.vocabulary = tuple(vocabulary)
        self.lookup = user_lookup(vocabulary)
        feature_columns = arguments.names("feature_columns", feature_columns)
        if feature_tables is not None and feature_columns:
            raise ValueError("pass users/feature_columns or feature_tables, not both")
        history = _history(history, len(vocabulary))
        if feature_tables is None:
            self.categorical, self.numeric = _feature_tables(vocabulary, users, feature_columns)
        else:
            self.categorical = {str(name): tf.constant(np.asarray(codes, np.int64))
                                for name, codes in feature_tables["categorical"].items()}
            numeric = feature_tables.get("numeric")
            self.numeric = None if numeric is None else tf.constant(np.asarray(numeric,
                                                                               np.float32))
        if not (user_id_embedding or history_encoder is not None or self.categorical
                or self.numeric is not None or (history is not None and history.shape[1] > 0)):
            raise ValueError("the query tower needs at least one input: the user-id embedding, "
                             "a history encoder, user features or recent items")
        self.id_embedding = None
        if user_id_embedding:
            self.id_embedding = tf.keras.layers.Embedding(len(vocabulary) + 1, id_dim or dim)
        self.untrained_user_ids = _untrained(untrained_user_ids, vocabulary)
        # their vocabulary indices, sorted: a constant of their count, not of the vocabulary's
        self.untrained_rows = None
        if self.untrained_user_ids:
            self.untrained_rows = tf.constant(
                np.sort(self.lookup(self.untrained_user_ids).numpy().astype(np.int64)))
        self.history_encoder = history_encoder
        if linear_cf is not None and history_encoder is None:
            raise ValueError("linear_cf reads the user's history: it needs a history_encoder")
        self.linear_cf = linear_cf
        self.feature_embeddings = {
            name: tf.keras.layers.Embedding(int(tf.reduce_max(table)) + 1, 8,
                                            name=f"{name}_embedding")
            for name, table in self.categorical.items()
        }
        self.history = None
        if history is not None and history.shape[1] > 0:
            pad = np.full((1, history.shape[1]), -1, np.int64)
            self.history = tf.constant(np.concatenate([pad, history]), tf.int64)
        self.hidden = tf.keras.layers.Dense(2 * dim, activation="relu")
        self.out = tf.keras.layers.Dense(dim)

    def get_config(self):
        """Everything but the weights (KerasHub's contract; the vocabulary, feature tables and
        recent-item table are data of the tower, like ``StringLookup``'s vocabulary in its
        config): ``from_config`` builds a tower whose ``set_weights(original.get_weights())``
        gives the same outputs. The history encoder and linear-CF part are nested configs."""
        history = None if self.history is None else self.history.numpy()[1:].tolist()
        return {**super().get_config(), "user_ids": list(self.vocabulary), "dim": self.dim,
                "id_dropout": self.id_dropout, "id_dim": self.id_dim,
                "user_id_embedding": self.id_embedding is not None, "history": history,
                "untrained_user_ids": list(self.untrained_user_ids),
                "feature_tables": {
                    "categorical": {name: table.numpy().tolist()
                                    for name, table in self.categorical.items()},
                    "numeric": None if self.numeric is None else self.numeric.numpy().tolist()},
                "history_encoder": None if self.history_encoder is None
                else self.history_encoder.get_config(),
                "linear_cf": None if self.linear_cf is None else self.linear_cf.get_config()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("history") is not None:
            config["history"] = np.asarray(config["history"], np.int64)
        if config.get("history_encoder") is not None:
            config["history_encoder"] = HistoryEncoder.from_config(config["history_encoder"])
        if config.get("linear_cf") is not None:
            config["linear_cf"] = LinearCF.from_config(config["linear_cf"])
        return cls(**config)

    def call(self, user, item_embedder: Callable | None = None, training=False, exclude=None,
             history=None):
        """``user``: id strings, or their ``user_lookup`` indices (integers) as in training;
        ``exclude``: ``[B]`` item indices left out of each row's history (training targets).
        ``history``: ``(items, weights)`` ragged ``[B, None]`` (training-item positions and
        their weights) that the history encoder (and the linear-CF part) read instead of each
        user's stored history — a session appended to it at serving time; every other input
        (user id, features, recent items) is the user's as usual. Needs a history encoder."""
        if history is not None and self.history_encoder is None:
            raise ValueError("an explicit history needs a query tower with a history encoder "
                             "(model.user_history)")
        index = self._index(user)
        pooled = None
        if self.history_encoder is not None:
            pooled = self.history_encoder(index, exclude=exclude, training=training,
                                          history=history)
        query = self._embed(index, pooled, item_embedder, training)
        if self.linear_cf is None or training:  # training steps fit the learned part only
            return query
        return tf.concat([query, self._linear_cf_query(index, exclude, history)], axis=-1)

    def split_history(self, user, item_embedder: Callable | None = None,
                      training=True) -> tuple[tf.Tensor, tf.Tensor]:
        """``(queries [B, d], targets [B, N])`` for training one query per user: the history
        encoder hides part of each user's history (``HistoryEncoder.split``), the query reads
        the rest, and the hidden items are its targets. The learned part only, as in any
        training step."""
        if self.history_encoder is None:
            raise ValueError("a per-user split needs a query tower with a history encoder "
                             "(model.user_history)")
        index = self._index(user)
        pooled, targets = self.history_encoder.split(index)
        return self._embed(index, pooled, item_embedder, training), targets

    def _index(self, user) -> tf.Tensor:
        user = tf.convert_to_tensor(user)  # a Python list of ids works as a numpy array does
        return self.lookup(user) if user.dtype == tf.string else tf.cast(user, tf.int64)

    def _embed(self, index, pooled_history, item_embedder, training) -> tf.Tensor:
        """The learned, normalised query from every input but the history encoder, whose
        output (``pooled_history``, or None without one) is passed in."""
        ids = self._id_rows(index)
        if training and self.id_dropout > 0:
            hidden = self.noise.uniform(tf.shape(index)) < self.id_dropout
            ids = tf.where(hidden, tf.zeros_like(ids), ids)
        parts = [self.id_embedding(ids)] if self.id_embedding is not None else []
        if pooled_history is not None:
            parts.append(pooled_history)
        for name, table in self.categorical.items():
            parts.append(self.feature_embeddings[name](tf.gather(table, index)))
        if self.numeric is not None:
            parts.append(tf.gather(self.numeric, index))
        if self.history is not None and item_embedder is not None:
            parts.append(self._history_embedding(tf.gather(self.history, index), item_embedder,
                                                 training))
        x = self.hidden(tf.concat(parts, axis=-1))
        return tf.math.l2_normalize(self.out(x), axis=-1)

    def _id_rows(self, index) -> tf.Tensor:
        """The id-embedding row of each vocabulary index: the unknown user's (0) for a user
        without a training interaction, else its own."""
        if self.untrained_rows is None:
            return index
        flat = tf.reshape(index, [1, -1])
        position = tf.searchsorted(self.untrained_rows[None, :], flat)[0]
        found = tf.gather(self.untrained_rows,
                          tf.minimum(position, tf.size(self.untrained_rows) - 1))
        untrained = tf.reshape(found == tf.reshape(index, [-1]), tf.shape(index))
        return tf.where(untrained, tf.zeros_like(index), index)

    def _linear_cf_query(self, index, exclude=None, history=None):
        """``x_u P`` over the user's full history (minus each training example's target), or
        over the given ``history``'s items."""
        items, _ = self.history_encoder.gather(index) if history is None else history
        keep = None
        if exclude is not None:
            target = tf.gather(tf.cast(exclude, tf.int64), items.value_rowids())
            keep = tf.cast(items.flat_values != target, tf.float32)
        return self.linear_cf.query(items, keep)

    def _history_embedding(self, items, item_embedder, training):
        flat = tf.reshape(items, [-1])
        embedded = item_embedder(tf.maximum(flat, 0), training=training)
        embedded = tf.reshape(embedded, [-1, tf.shape(items)[1], embedded.shape[-1]])
        mask = tf.cast(items >= 0, embedded.dtype)[..., None]
        return tf.reduce_sum(embedded * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)


def _vocabulary(user_ids: Any) -> list[str]:
    """``user_ids`` as the lookup's vocabulary: a non-empty sequence of distinct ids (as
    strings). StringLookup's own errors for an empty or repeated vocabulary do not name
    ``user_ids``, and a string would be a vocabulary of its characters."""
    if isinstance(user_ids, str | bytes):
        raise ValueError(f"user_ids must be a sequence of ids, got the string {user_ids!r}")
    if not isinstance(user_ids, Iterable):
        raise ValueError(f"user_ids must be a sequence of ids, got {user_ids!r}")
    vocabulary = [str(u) for u in user_ids]
    if not vocabulary:
        raise ValueError("user_ids is empty: the query tower needs the known users' ids")
    arguments.names("user_ids", vocabulary)  # each id once
    return vocabulary


def _untrained(user_ids: Any, vocabulary: Sequence[str]) -> tuple[str, ...]:
    """``untrained_user_ids`` as distinct strings of the vocabulary (a stray id would silently
    map nothing)."""
    if isinstance(user_ids, Iterable) and not isinstance(user_ids, str | bytes):
        user_ids = [str(u) for u in user_ids]  # numpy's object ids, as the vocabulary's
    ids = arguments.names("untrained_user_ids", user_ids)
    if stray := sorted(set(ids) - set(vocabulary))[:5]:
        raise ValueError(f"untrained_user_ids {stray} are not in user_ids")
    return ids


def _history(history: Any, num_users: int) -> np.ndarray | None:
    """``history`` as a ``[num_users, H]`` integer array (a nested list is read as the array
    it spells, as ``from_config`` does), one row per user id: a row short would be a gather
    error at the first call of a user past it, a 1-D one an IndexError here."""
    if history is None:
        return None
    try:
        array = np.asarray(history)
    except ValueError:  # ragged rows
        raise ValueError("history must be a [num_users, H] array of item indices (-1 = "
                         "padding); its rows differ in length") from None
    if array.ndim != 2 or len(array) != num_users:
        raise ValueError(f"history must be a [num_users, H] array of item indices (-1 = "
                         f"padding), one row per user id ({num_users}); got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"history must hold integer item indices, got dtype {array.dtype}")
    return array


def _feature_tables(vocabulary: list[str], users: pd.DataFrame | None,
                    columns: Sequence[str]) -> tuple[dict[str, tf.Tensor], tf.Tensor | None]:
    """Per-user feature rows aligned with the lookup (row 0 = unknown user: zeros/OOV).
    Columns without a users table, or not in it, are refused (not ignored, not a KeyError)."""
    categorical: dict[str, tf.Tensor] = {}
    numeric: list[np.ndarray] = []
    if not columns:
        return categorical, None
    if users is None:
        raise ValueError(f"feature_columns {list(columns)} need users, the table that holds "
                         "them (with a user_id column)")
    if not isinstance(users, pd.DataFrame):
        raise TypeError(f"users must be a pandas DataFrame, got {type(users).__name__}")
    missing = [c for c in ("user_id", *columns) if c not in users.columns]
    if missing:
        raise ValueError(f"users has no column {', '.join(map(repr, missing))} (it needs "
                         f"user_id and the feature_columns {list(columns)}); its columns are "
                         f"{', '.join(map(str, users.columns))}")
    frame = users.set_index("user_id").reindex(vocabulary)
    for column in columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            x = values.to_numpy(dtype=np.float64, na_value=np.nan)
            numeric.append(np.concatenate([[0.0], _standardised(x, str(column))]))
        else:
            codes, _ = pd.factorize(values.astype("string").fillna(""), sort=True)
            categorical[str(column)] = tf.constant(np.concatenate([[0], codes + 1]), tf.int64)
    table = tf.constant(np.stack(numeric, axis=1), tf.float32) if numeric else None
    return categorical, table


def _standardised(x: np.ndarray, column: str) -> np.ndarray:
    """``x`` standardised over its finite values; NaN (a user without a value) and, should one
    get past the data layer, ±inf become 0 (the mean). An infinite value would otherwise make
    the mean inf and the spread NaN, and ``nan_to_num`` turned the whole column into zeros. A
    column with no spread (one value, or one user) carries nothing: zeros, with a warning."""
    finite = np.isfinite(x)
    if np.isinf(x).any():
        logger.warning("user feature %s: %d infinite value(s) read as missing (0 after "
                       "standardising)", column, int(np.isinf(x).sum()))
    if not finite.any():
        logger.warning("user feature %s has no finite value: it is all zeros", column)
        return np.zeros_like(x)
    # Scaled to [-1, 1] first: squaring values near 1e308 would overflow the spread to inf.
    scale = float(np.abs(x[finite]).max()) or 1.0
    scaled = x[finite] / scale
    mean, std = scaled.mean(), scaled.std()
    if not std > 0:
        logger.warning("user feature %s has the same value for every user: it carries no "
                       "information (all zeros after standardising)", column)
        std = 1.0
    return np.where(finite, (x / scale - mean) / std, 0.0)
