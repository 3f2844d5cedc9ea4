"""Index kind ``scann``: TFRS's ScaNN layer (``Scann>`` custom ops in the serving binary)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfmmrec.config import ScannConfig
from tfmmrec.export.index.base import (
    SCANN_TF_SERVING,
    TFMMREC_SERVE,
    IndexSettings,
    TopKIndex,
    register,
)

# The attributes of ScaNN's ``ScannState`` (scann_ops.ScannState): the serialised searcher.
SCANN_STATE = ("scann_config", "serialized_partitioner", "datapoint_to_token", "ah_codebook",
               "hashed_dataset", "int8_dataset", "int8_multipliers", "dp_norms", "dataset")


def scann_parameters(num_items: int, max_k: int, config: ScannConfig) -> dict[str, int]:
    """ScaNN settings scaled to the catalogue: ~sqrt(N) leaves, search ~10% of them, reorder.

    Reordering the best ``max(4k, 100)`` candidates with exact scores is what keeps recall of the
    brute-force top-10 at or above 0.95 on small and mid-sized catalogues.
    """
    leaves = config.num_leaves or max(2, min(2000, int(math.sqrt(num_items))))
    leaves = min(leaves, max(2, num_items // 2))
    reorder = config.num_reordering_candidates or min(num_items, max(4 * max_k, 100))
    # Search at least 10% of the leaves, and enough of them to hold the reordering candidates
    # (on small catalogues that is most of the leaves, where exhaustive search is cheap anyway).
    needed = math.ceil(reorder * leaves / num_items)
    search = config.num_leaves_to_search or max(1, math.ceil(leaves * 0.1), needed)
    return {"num_leaves": leaves, "num_leaves_to_search": min(search, leaves),
            "num_reordering_candidates": reorder,
            "dimensions_per_block": config.dimensions_per_block}


@register
class ScannIndex(TopKIndex):
    """Anisotropic-quantisation tree search; the fastest kind, but only servers linked with the
    ScaNN ops load it (``import scann`` in Python; the ``google/tf-serving-scann`` image, last
    built for TF 2.11).

    The searcher lives in variables of unknown shape (ScaNN's own ``ScannState``) holding its
    config (leaves, reordering) too, so a catalogue update retrains a searcher over the new
    embeddings and stores it under the same graph; the search returns positions (no identifier
    table, whose length the graph would fix)."""

    kind = "scann"
    op_namespaces = frozenset({"Scann"})
    servers = (SCANN_TF_SERVING, TFMMREC_SERVE)

    def __init__(self, item_embeddings: np.ndarray, item_ids: np.ndarray, k: int,
                 parameters: dict):
        super().__init__(k, item_embeddings.shape[0], item_ids, parameters)
        self.layer = tfrs.layers.factorized_top_k.ScaNN(k=self.k, **parameters).index(
            tf.constant(item_embeddings, tf.float32))
        # ScaNN's state variables save the shapes they were built with (validate_shape=False
        # only skips checks on assignment): re-hold them with no saved shape, so a searcher
        # over another number of items restores under the same graph.
        state = self.layer._serialized_searcher  # TFRS keeps it private
        for name in SCANN_STATE:
            value = getattr(state, name).read_value()
            setattr(state, name, tf.Variable(value, trainable=False, name=name,
                                             shape=tf.TensorShape(None)))

    @classmethod
    def from_embeddings(cls, item_embeddings, item_ids, settings: IndexSettings):
        k = min(settings.max_k, item_embeddings.shape[0])
        params = scann_parameters(item_embeddings.shape[0], k, settings.scann)
        return cls(item_embeddings, item_ids, k, params)

    def search(self, queries, k):
        return self.layer(queries, k=k)
