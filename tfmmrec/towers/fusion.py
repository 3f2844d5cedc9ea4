"""Towers: fusion of projected modality embeddings into one item embedding, with presence masks.

Items lack posters, plots or audio; every fusion mode uses only the modalities present, and
modality dropout in training teaches the model to cope when one is missing at serving time.
"""

from __future__ import annotations

import tensorflow as tf

from tfmmrec.towers import arguments

FUSION_MODES = ("concat_mlp", "mean", "gated", "attention")


def masked_mean(embeddings: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over the modalities present. embeddings [B, M, d], mask [B, M] (1 = present)."""
    mask = tf.cast(mask, embeddings.dtype)[..., None]
    return tf.reduce_sum(embeddings * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def drop_modalities(mask: tf.Tensor, rate: float, seed) -> tf.Tensor:
    """Randomly hide present modalities, but never all of an item's present modalities.

    ``seed``: a ``[2]`` stateless seed (a layer's ``towers.noise.Noise.seed()``), so the mask
    repeats with the run's seed."""
    keep = tf.cast(tf.random.stateless_uniform(tf.shape(mask), seed) >= rate, mask.dtype)
    dropped = mask * keep
    nothing_left = tf.reduce_sum(dropped, axis=1, keepdims=True) == 0
    return tf.where(nothing_left, mask, dropped)


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class MaskedFusion(tf.keras.layers.Layer):
    """Fuse ``[B, M, d]`` modality embeddings under a ``[B, M]`` presence mask into ``[B, d]``.

    Modes:
      - ``concat_mlp`` (default): masked mean plus an MLP over the concatenated (masked)
        embeddings and the mask. The MLP's last layer starts at zero, so training starts from the
        mean and only moves away where interactions between modalities pay off; fusion therefore
        does not start worse than averaging its inputs.
      - ``mean``: masked mean (no parameters).
      - ``gated``: a learned sigmoid gate per modality, renormalised over present modalities.
      - ``attention``: masked softmax attention over modalities.

    Examples:
    >>> fusion = MaskedFusion("gated")
    >>> fusion(tf.ones([2, 3, 4]), tf.constant([[1., 0., 1.], [0., 1., 0.]])).shape
    TensorShape([2, 4])
    """

    def __init__(self, mode: str = "concat_mlp", hidden: int = 128, **kwargs):
        super().__init__(**kwargs)
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}")
        self.mode = mode
        self.hidden = arguments.positive_int("hidden", hidden)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if self.mode == "concat_mlp":
            self.mlp = tf.keras.Sequential([
                tf.keras.layers.Dense(self.hidden, activation="relu"),
                tf.keras.layers.Dense(dim, kernel_initializer="zeros"),
            ])
        elif self.mode == "gated":
            self.gate = tf.keras.layers.Dense(1)
        elif self.mode == "attention":
            self.key = tf.keras.layers.Dense(dim, activation="tanh")
            self.score = tf.keras.layers.Dense(1, use_bias=False)
        super().build(input_shape)

    def call(self, embeddings, mask):
        mask = tf.cast(mask, embeddings.dtype)
        if self.mode == "mean":
            return masked_mean(embeddings, mask)
        if self.mode == "concat_mlp":
            flat = tf.reshape(embeddings * mask[..., None],
                              [-1, embeddings.shape[1] * embeddings.shape[2]])
            return masked_mean(embeddings, mask) + self.mlp(tf.concat([flat, mask], axis=-1))
        if self.mode == "gated":
            weights = tf.sigmoid(self.gate(embeddings))[..., 0] * mask
        else:
            logits = self.score(self.key(embeddings))[..., 0]
            weights = tf.nn.softmax(logits + (mask - 1.0) * 1e9, axis=-1) * mask
        weights = weights / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1e-9)
        return tf.reduce_sum(embeddings * weights[..., None], axis=1)

    def alone(self, embeddings: tf.Tensor) -> tf.Tensor:
        """``[M, B, d]``: row b's fusion with only modality m present, for every m (what
        ``call(embeddings * one_m, one_m)`` gives). The alignment loss needs these for a few
        hundred items every training step.

        ``mean`` returns each modality's embedding. ``concat_mlp`` multiplies the MLP's first
        layer by one modality's block of it, not by ``M · d`` columns of which all but ``d``
        are zero: a third of the product for three modalities, equal up to float rounding.
        ``gated`` and ``attention`` take the general path (``alone_tiled``).
        """
        count = embeddings.shape[1]
        by_modality = tf.transpose(embeddings, [1, 0, 2])  # [M, B, d]
        if self.mode == "mean":
            return by_modality
        if self.mode == "concat_mlp" and self.built and self.mlp.built:
            first, last = self.mlp.layers
            blocks, mask_rows = tf.split(first.kernel, [count * embeddings.shape[2], count])
            # modality m's block of the first layer, plus its mask column's row and the bias
            hidden = first.activation(
                tf.matmul(by_modality, tf.reshape(blocks, [count, embeddings.shape[2], -1]))
                + (mask_rows + first.bias)[:, None, :])  # [M, B, h]
            return by_modality + last(hidden)
        return self.alone_tiled(embeddings)

    def alone_tiled(self, embeddings: tf.Tensor) -> tf.Tensor:
        """``alone`` for any mode: each modality's masked input, tiled into one ``[M·B, M, d]``
        batch through ``call``."""
        count = embeddings.shape[1]
        rows = tf.shape(embeddings)[0]
        one = tf.repeat(tf.eye(count), rows, axis=0)  # [M·B, M]: modality m for block m
        tiled = tf.tile(embeddings, [count, 1, 1]) * one[..., None]
        return tf.reshape(self(tiled, one), [count, rows, -1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "hidden": self.hidden}
