"""Index kind ``brute_force``: exact scores against every item (TFRS BruteForce; core TF ops)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfmmrec.export.index.base import IndexSettings, TopKIndex, register


@register
class BruteForceIndex(TopKIndex):
    """One matmul + top_k over the whole catalogue: exact, linear in the number of items."""

    kind = "brute_force"

    def __init__(self, item_embeddings: np.ndarray, item_ids: np.ndarray, k: int):
        super().__init__(k, item_embeddings.shape[0], item_ids)
        self.layer = tfrs.layers.factorized_top_k.BruteForce(k=self.k).index(
            tf.constant(item_embeddings, tf.float32),
            tf.range(item_embeddings.shape[0], dtype=tf.int32))

    @classmethod
    def from_embeddings(cls, item_embeddings, item_ids, settings: IndexSettings):
        return cls(item_embeddings, item_ids, min(settings.max_k, item_embeddings.shape[0]))

    def search(self, queries, k):
        return self.layer(queries, k=k)
