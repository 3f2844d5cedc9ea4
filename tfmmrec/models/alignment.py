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
    modalities contribute nothing. ``a``/``b`` may carry a leading axis of pairs
    (``[P, B, d]`` with presences ``[P, B]``): the losses of all pairs are summed, computed in one
    batched pass.

    One ``[P, B, B]`` logits tensor serves both directions: a→b is a softmax over a row (b's
    items), b→a over a column (a's items), each ``logsumexp − positive``. Non-negatives get
    −1e9 added, which needs no gradient of its own. On a CPU this is about twice as fast as
    stacking the transposed logits and masking with ``tf.where`` into
    ``sparse_softmax_cross_entropy_with_logits`` (whose kernel alone cost more than the
    products), and it is the same loss up to float rounding.
    """
    single = a.shape.rank == 2
    if single:
        a, b, a_present, b_present = a[None], b[None], a_present[None], b_present[None]
    logits = tf.matmul(a, b, transpose_b=True) * scale  # [P, B, B]
    size = tf.shape(logits)[-1]
    other_copy = tf.logical_and(tf.equal(item_ids[:, None], item_ids[None, :]),
                                tf.logical_not(tf.eye(size, dtype=tf.bool)))[None]
    blocked_ab = tf.logical_or(b_present[:, None, :] <= 0, other_copy)  # row i ranks b's
    blocked_ba = tf.logical_or(a_present[:, :, None] <= 0, other_copy)  # column j ranks a's
    penalty, zero = tf.constant(-1e9, logits.dtype), tf.constant(0, logits.dtype)
    lse_ab = tf.reduce_logsumexp(logits + tf.where(blocked_ab, penalty, zero), axis=2)  # [P, B]
    lse_ba = tf.reduce_logsumexp(logits + tf.where(blocked_ba, penalty, zero), axis=1)  # [P, B]
    # the diagonal as row-wise products: diag_part's gradient would be a dense [P, B, B] matrix
    positives = tf.reduce_sum(a * b, axis=-1) * scale
    return 0.5 * tf.reduce_sum((lse_ab + lse_ba - 2.0 * positives) * (a_present * b_present))


class ModalityAlignment(tf.keras.layers.Layer):
    """Alignment loss over single-modality and fused item embeddings.

    Pairs: each modality ↔ the fused embedding (what query-by-content needs), and each pair of
    modalities (text ↔ image, text ↔ audio, image ↔ audio). The inverse temperature is learned
    in log space, starting at 1 / ``initial_temperature`` and capped at 100 (as CLIP does) so it
    cannot collapse the softmax.
    """

    # the loss of each pair batch (a class attribute: a variant swaps it, as the speed profile's
    # "before" does)
    contrastive = staticmethod(masked_contrastive)

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
        """``singles[i]``: ``[B, d]`` embedding from modality i alone; mask ``[B, M]``.

        Every embedding enters the loss once, in one ``[M + 1, B, d]`` table, and the pairs
        are gathered from it, so the gradient of an embedding used by several pairs is a
        segment sum in index order. Stacking the same tensor into several pairs made TF sum
        its gradients with ``AddN``, whose CPU kernel moves an input whose buffer it can reuse
        to the front: with three or more terms the float summation order then depended on
        buffer lifetimes at run time, and two identical steps could differ in the last bit
        (which Adam's first steps amplify), even under op determinism.
        """
        count = len(singles)
        pairs = [(i, count) for i in range(count)]  # modality i ↔ fused (the table's last row)
        pairs += [(i, j) for i in range(count) for j in range(i + 1, count)]
        table = tf.stack([*singles, fused])  # [M + 1, B, d]
        present = tf.concat([tf.transpose(tf.cast(mask, table.dtype)),
                             tf.ones_like(table[:1, :, 0])], axis=0)  # [M + 1, B]
        first, second = ([pair[k] for pair in pairs] for k in (0, 1))
        return self.contrastive(tf.gather(table, first), tf.gather(table, second),
                                tf.gather(present, first), tf.gather(present, second),
                                item_ids, self.scale)
