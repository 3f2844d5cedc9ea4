"""Towers: a per-modality projection (encoder feature → the shared d-dim space). Always trained."""

from __future__ import annotations

import tensorflow as tf

from tfmmrec.towers import arguments
from tfmmrec.towers.noise import Noise
from tfmmrec.towers.precision import check_precision, matmul

# Dropout masks compare 16-bit random integers with round(rate · 2¹⁶): half the random bits of
# a float32 uniform per entry, and the rate is exact to 2⁻¹⁷.
_MASK_BITS = 16


def keep_mask(shape, rate: float, seed) -> tf.Tensor:
    """A boolean mask of ``shape``, each entry True with probability ``1 − rate``.

    Training-time dropout masks cover every candidate item's 1,280-d poster feature and every
    history entry of a batch (millions of entries per step). ``tf.random.uniform`` spends 32
    random bits and a float conversion on each; this draws one 32-bit word per two entries
    (``stateless_uniform`` full-range integers) and compares its 16-bit halves with an
    integer threshold: about half the cost of the mask. ``seed``: a ``[2]`` stateless seed (a
    layer's ``towers.noise.Noise.seed()``), so the mask repeats with the run's seed.
    """
    threshold = min(round(float(rate) * 2**_MASK_BITS), 2**_MASK_BITS - 1)
    shape = tf.convert_to_tensor(shape, tf.int32)
    size = tf.reduce_prod(shape)
    words = tf.random.stateless_uniform([(size + 1) // 2], seed, minval=None, maxval=None,
                                        dtype=tf.int32)
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
    return tf.reshape(halves >= tf.constant(threshold, tf.uint16), shape) if threshold \
        else tf.ones(shape, tf.bool)


class Dropout(tf.keras.layers.Dropout):
    """``tf.keras.layers.Dropout`` (same scaling, same config) with ``keep_mask``'s cheaper mask.

    Examples:
    >>> Dropout(0.5)(tf.ones([2, 3])).shape
    TensorShape([2, 3])
    """

    def __init__(self, rate: float, **kwargs):
        if kwargs.get("noise_shape") is not None:
            raise ValueError("towers.projection.Dropout draws one mask entry per input entry; "
                             "noise_shape is not supported")
        super().__init__(rate, **kwargs)
        self.noise = Noise()

    def call(self, inputs, training=None):
        if self.rate == 0 or not isinstance(training, bool):
            return super().call(inputs, training=training)  # symbolic flag: Keras' own path
        if not training:
            return inputs
        keep = keep_mask(tf.shape(inputs), self.rate, self.noise.seed())
        return tf.where(keep, inputs * (1.0 / (1.0 - self.rate)), tf.zeros_like(inputs))


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class ModalityProjection(tf.keras.layers.Layer):
    """LayerNorm → (feature dropout) → optional hidden ReLU layers → linear map to ``dim``.

    ``feature_dropout_shared``: draw one feature-dropout mask per step for every row instead of
    one per entry: exactly ``round((1 − rate) · F)`` of the F feature dimensions are kept
    (scaled by ``F / kept``, so the expected input is unchanged) and the first map's product
    runs over those dimensions alone. At rate 0.8 on a 1,280-d poster feature over the whole
    catalogue that product is a fifth of the per-entry one, with no per-entry mask to draw.

    ``training_precision``: ``float32`` or ``bfloat16``, the input precision of the maps'
    products in training steps (``towers.precision``; a 1,280-d poster feature over every
    candidate item is one of a full-softmax step's largest products). Inference is float32.

    The LayerNorm puts features from very different encoders (unit-norm MiniLM vectors, ReLU6
    CNN activations, YAMNet embeddings) on one scale, so one learning rate suits all of them.

    Examples:
    >>> ModalityProjection(8)(tf.ones([2, 5])).shape
    TensorShape([2, 8])
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] | list[int] = (), dropout: float = 0.0,
                 feature_dropout: float = 0.0, training_precision: str = "float32",
                 feature_dropout_shared: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.dim = arguments.positive_int("dim", dim)
        self.training_precision = check_precision(training_precision)
        self.hidden = arguments.widths("hidden", hidden)
        self.dropout = arguments.rate("dropout", dropout)
        self.feature_dropout = arguments.rate("feature_dropout", feature_dropout)
        self.feature_dropout_shared = bool(feature_dropout_shared)
        # only when used: each Noise() takes a draw from Python's seeded stream, so an unused
        # one would shift every later layer's stream (and every run's masks)
        self.kept_noise = Noise() if feature_dropout_shared and feature_dropout > 0 else None
        self.norm = tf.keras.layers.LayerNormalization()
        self.feature_drop = Dropout(feature_dropout)
        self.layers = [tf.keras.layers.Dense(h, activation="relu") for h in self.hidden]
        self.drop = Dropout(dropout)
        self.out = tf.keras.layers.Dense(dim)

    def call(self, features, training=False):
        precision = self.training_precision if training is True else "float32"
        normalised = self.norm(tf.cast(features, tf.float32))
        if self._dropping_shared(training):
            x = self._first_on_kept(normalised, self.kept_features(normalised.shape[-1]),
                                    precision)
        else:
            x = _dense(self._first, self.feature_drop(normalised, training=training), precision)
        return self._after_first(x, training, precision)

    def _dropping_shared(self, training) -> bool:
        return training is True and self.feature_dropout > 0 and self.feature_dropout_shared

    def kept_features(self, size: int) -> tf.Tensor:
        """The step's kept feature dimensions (``feature_dropout_shared``): a uniformly random
        subset of ``round((1 − rate) · size)`` of ``range(size)`` (at least one), ascending."""
        kept = max(1, round((1.0 - self.feature_dropout) * size))
        scores = tf.random.stateless_uniform([size], self.kept_noise.seed())
        return tf.sort(tf.math.top_k(scores, kept, sorted=False).indices)

    def _first_on_kept(self, x, kept, precision, gamma=None, beta=None):
        """The first map of ``(x ⊙ gamma + beta) ⊙ mask · F / |kept|`` (``mask``: 1 on
        ``kept``; ``gamma``/``beta`` None: 1/0) as a product over the kept dimensions only:
        ``x`` is only gathered, the scale folds into the kernel's kept rows."""
        first = self._first
        if not first.built:
            first(x[:1])  # builds the layer through Keras
        kernel = tf.gather(first.kernel, kept) * (x.shape[-1] / kept.shape[0])
        return self._folded_first(tf.gather(x, kept, axis=-1), kernel, precision,
                                  None if gamma is None else tf.gather(gamma, kept),
                                  None if beta is None else tf.gather(beta, kept))

    def _folded_first(self, x, kernel, precision, gamma=None, beta=None):
        """The first map's activation of ``(x ⊙ gamma + beta) · kernel + bias``, ``gamma``
        folded into the kernel and ``beta`` into the shift: no elementwise pass over ``x``."""
        first = self._first
        y = matmul(x, kernel if gamma is None else gamma[:, None] * kernel, precision)
        shift = None if beta is None else tf.linalg.matvec(kernel, beta, transpose_a=True)
        if first.use_bias:
            shift = first.bias if shift is None else shift + first.bias
        return first.activation(y if shift is None else y + shift)

    @property
    def _first(self) -> tf.keras.layers.Dense:
        """The map applied to the (normalised) features: the first hidden layer, or ``out``."""
        return self.layers[0] if self.layers else self.out

    def _after_first(self, x, training, precision):
        """The maps after ``_first``, given its output."""
        if not self.layers:
            return x
        x = self.drop(x, training=training)
        for layer in self.layers[1:]:
            x = self.drop(_dense(layer, x, precision), training=training)
        return _dense(self.out, x, precision)

    def standardize(self, features) -> tf.Tensor:
        """LayerNorm's standardisation ``x̂ = (x − mean) / √(var + ε)`` without its learned
        scale and offset: for frozen encoder features it never changes, so a train step can
        compute it once (``project_standardized``) instead of every step."""
        x = tf.cast(features, tf.float32)
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + self.norm.epsilon)

    def project_standardized(self, standardized, training=False):
        """``call(features)`` given ``standardize(features)``: the same function of the same
        weights (equal up to float rounding), cheaper per step.

        Without feature dropout the LayerNorm's scale and offset fold into the first map,
        ``(γ ⊙ x̂ + β) W + b = x̂ (γ ⊙ W) + (β W + b)``: the only per-step product over the
        features is ``x̂ (γ ⊙ W)`` and its weight gradient; no elementwise pass over them, and
        no gradient with respect to the (constant) features.
        """
        if not self.norm.built:
            self.norm.build(standardized.shape)
        gamma, beta = self.norm.gamma, self.norm.beta
        precision = self.training_precision if training is True else "float32"
        first = self._first
        dropping = training is True and self.feature_dropout > 0
        if self._dropping_shared(training):
            kept = self.kept_features(standardized.shape[-1])
            x = self._first_on_kept(standardized, kept, precision, gamma, beta)
        elif dropping:
            x = self.feature_drop(standardized * gamma + beta, training=training)
            x = _dense(first, x, precision)
        else:
            if not first.built:
                first(standardized[:1])  # builds the layer through Keras
            x = self._folded_first(standardized, first.kernel, precision, gamma, beta)
        return self._after_first(x, training, precision)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden": list(self.hidden),
                "dropout": self.dropout, "feature_dropout": self.feature_dropout,
                "training_precision": self.training_precision,
                "feature_dropout_shared": self.feature_dropout_shared}


def _dense(layer: tf.keras.layers.Dense, x: tf.Tensor, precision: str) -> tf.Tensor:
    """``layer(x)``, its product in ``precision`` (``towers.precision``)."""
    if precision == "float32":
        return layer(x)
    if not layer.built:
        layer(x[:1])  # builds the layer through Keras (weights tracked as usual)
    y = matmul(x, layer.kernel, precision)
    if layer.use_bias:
        y = tf.nn.bias_add(y, layer.bias)
    return layer.activation(y)
