"""Models: cross-modal alignment, a contrastive loss that puts an item's modalities in one place.

A text (or image, audio) query is only comparable with fused item embeddings if training pulls
them together: for every item in the batch, its single-modality embedding must pick out its own
fused embedding (and its other modalities) among the batch's items — an in-batch softmax with a
learnable temperature, as in CLIP. Then "items like this poster / sentence / clip" works
against the same index that serves user queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf


def masked_contrastive(a, b, a_present, b_present, item_ids, scale):
    """Symmetric in-batch softmax loss between rows of ``a`` and ``b`` (summed over rows).

    Row i's positive is column i. Columns whose modality is absent, and columns that are the same
    item as row i (an item drawn twice in a batch), are not negatives. Rows without both
    modalities contribute nothing.
    """
    logits = tf.matmul(a, b, transpose_b=True) * scale
    size = tf.shape(logits)[0]
    diagonal = tf.eye(size, dtype=tf.bool)
    same_item = tf.equal(item_ids[:, None], item_ids[None, :])
    rows = a_present * b_present

    def one_way(scores, column_present):
        usable = tf.logical_and(column_present[None, :] > 0,
                                tf.logical_or(diagonal, tf.logical_not(same_item)))
        scores = tf.where(usable, scores, tf.fill(tf.shape(scores), -1e9))
        labels = tf.cast(diagonal, scores.dtype)
        losses = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=scores)
        return tf.reduce_sum(losses * rows)

    return 0.5 * (one_way(logits, b_present) + one_way(tf.transpose(logits), a_present))


class ModalityAlignment(tf.keras.layers.Layer):
    """Alignment loss over single-modality and fused item embeddings.

    Pairs: each modality ↔ the fused embedding (what query-by-content needs), and each pair of
    modalities (text ↔ image, text ↔ audio, image ↔ audio). The inverse temperature is learned
    in log space, starting at 1 / ``initial_temperature`` and capped at 100 (as CLIP does) so it
    cannot collapse the softmax.
    """

    def __init__(self, modalities: Sequence[str], initial_temperature: float = 0.07, **kwargs):
        super().__init__(**kwargs)
        self.modalities = tuple(modalities)
        self.initial_temperature = initial_temperature

    def build(self, input_shape):
        self.log_scale = self.add_weight(
            name="log_inverse_temperature", shape=(),
            initializer=tf.keras.initializers.Constant(math.log(1 / self.initial_temperature)))
        super().build(input_shape)

    @property
    def scale(self):
        return tf.minimum(tf.exp(self.log_scale), 100.0)

    def call(self, singles: Sequence[tf.Tensor], mask, fused, item_ids):
        """``singles[i]``: ``[B, d]`` embedding from modality i alone; mask ``[B, M]``."""
        ones = tf.ones_like(mask[:, 0])
        total = 0.0
        for i, single in enumerate(singles):
            total += masked_contrastive(single, fused, mask[:, i], ones, item_ids, self.scale)
            for j in range(i + 1, len(singles)):
                total += masked_contrastive(single, singles[j], mask[:, i], mask[:, j], item_ids,
                                            self.scale)
        return total
