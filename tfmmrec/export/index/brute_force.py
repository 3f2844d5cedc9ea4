"""Index kind ``brute_force``: exact scores against every item (one matmul + top_k; core TF ops).

The scoring is TFRS ``BruteForce``'s (``queries @ candidates^T``, ``tf.math.top_k``) over one
variable of unknown length that the serving module also serves embeddings from, so a catalogue
update rewrites one ``[N, d]`` table and no graph.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmmrec.export.index.base import (
    IndexSettings,
    TopKIndex,
    catalog_variable,
    checked_embeddings,
    register,
)


@register
class BruteForceIndex(TopKIndex):
    """One matmul + top_k over the whole catalogue: exact, linear in the number of items."""

    kind = "brute_force"
    takes_tensors = True

    def __init__(self, item_embeddings: np.ndarray | tf.Tensor, item_ids: np.ndarray | None,
                 k: int):
        """``item_embeddings`` [N, d] (finite; a tf.Tensor is kept as one), ``k`` <= N."""
        table = checked_embeddings(f"{self.kind} index", "item_embeddings", item_embeddings,
                                   keep_tensor=True)
        super().__init__(k, table.shape[0], item_ids, dim=table.shape[1])
        self.embeddings = catalog_variable(table, "item_embeddings")

    @classmethod
    def from_embeddings(cls, item_embeddings, item_ids, settings: IndexSettings):
        return cls(item_embeddings, item_ids, min(settings.max_k, item_embeddings.shape[0]))

    def search(self, queries, k):
        scores = tf.matmul(queries, self.embeddings, transpose_b=True)
        return tf.math.top_k(scores, k=k)
