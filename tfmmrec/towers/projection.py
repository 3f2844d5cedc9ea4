"""Towers: a per-modality projection (encoder feature → the shared d-dim space). Always trained."""

from __future__ import annotations

import tensorflow as tf


class ModalityProjection(tf.keras.layers.Layer):
    """LayerNorm → (feature dropout) → optional hidden ReLU layers → linear map to ``dim``.

    The LayerNorm puts features from very different encoders (unit-norm MiniLM vectors, ReLU6
    CNN activations, YAMNet embeddings) on one scale, so one learning rate suits all of them.

    Examples:
    >>> ModalityProjection(8)(tf.ones([2, 5])).shape
    TensorShape([2, 8])
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] | list[int] = (), dropout: float = 0.0,
                 feature_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.hidden = tuple(hidden)
        self.dropout = dropout
        self.feature_dropout = feature_dropout
        self.norm = tf.keras.layers.LayerNormalization()
        self.feature_drop = tf.keras.layers.Dropout(feature_dropout)
        self.layers = [tf.keras.layers.Dense(h, activation="relu") for h in self.hidden]
        self.drop = tf.keras.layers.Dropout(dropout)
        self.out = tf.keras.layers.Dense(dim)

    def call(self, features, training=False):
        x = self.feature_drop(self.norm(tf.cast(features, tf.float32)), training=training)
        for layer in self.layers:
            x = self.drop(layer(x), training=training)
        return self.out(x)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden": list(self.hidden),
                "dropout": self.dropout, "feature_dropout": self.feature_dropout}
