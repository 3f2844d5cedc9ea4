"""Towers: an inference-only forward pass of a KerasNLP BERT backbone, for served text queries.

A five-word query is ~7 tokens, so the backbone's cost is reading its weights (6 layers × 1.8 M
float32 parameters for MiniLM-L6) plus ~200 small ops, not arithmetic. This module computes the
same model on a 2-D ``[tokens, hidden]`` tensor with fewer, larger ops: Q/K/V as one
``[hidden, 3·hidden]`` matmul (the query's ``1/√head_dim`` folded into its columns), a short
single text's attention as two 2-D matmuls without transposes, each dense as MatMul + BiasAdd
(+ GELU) in the form oneDNN's remapper fuses.
Its weights are copies derived when it is built (at export, from the trained backbone), so it
never trains and never changes the Keras model.

``precision="bfloat16"`` (opt-in) stores those weight matrices in bfloat16 and runs only the
weight matmuls in bfloat16 (oneDNN; AMX/AVX-512-BF16 where the CPU has them), everything else
(embeddings, LayerNorm, attention, residuals, pooling) in float32: half the weight bytes per
query, at a measured numerics cost (``benchmarks/text_speed.py``). Stock TF Serving CPU builds
may lack fast bfloat16 kernels; measure on the serving machine.

``weights="constants"`` (opt-in, ``export.text_weights``) holds the dense kernels as numpy
arrays and makes them graph constants (``Const`` nodes) of every traced call instead of
``tf.Variable`` reads. oneDNN then packs a constant weight once and reuses it (brgemm), where a
variable's weight is a plain input it repacks each call through a general GEMM; the same
numbers to float rounding, faster per query (``benchmarks/text_speed.py``). Biases stay
variables. Every graph that calls the copy calls one shared ``tf.function`` holding the
constants, so a SavedModel stores them once per attention branch (two copies): its
``saved_model.pb`` grows by twice the kernels' bytes and ``variables/`` shrinks by once (the
ML-100K MiniLM export: 93 MB of graph instead of 8.5 MB). A graph proto is capped at 2 GB.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmmrec.errors import ConfigError

PRECISIONS = ("float32", "bfloat16")
WEIGHTS = ("variables", "constants")
_MASKED = -1e9  # what Keras's masked softmax adds to a float32 score at a padded key
# A single text of up to this many tokens (a query) runs attention block-diagonally (no
# transposes, ``heads`` × the score arithmetic: at 32 tokens the tiled keys are the size of one
# weight matrix); batches and longer texts run it per head.
BLOCK_ATTENTION_MAX_LENGTH = 32


class InferenceBert(tf.Module):
    """``sequence_output`` of a (post-LayerNorm, GELU-tanh) KerasNLP ``BertBackbone``.

    Args:
      backbone: a built ``keras_nlp.models.BertBackbone``; its embeddings and LayerNorm
        variables are read in place, its dense kernels copied into the fused layout.
      precision: ``"float32"`` (the Keras backbone's features to float rounding, tested to
        1e-5) or ``"bfloat16"`` (weight matmuls in bfloat16).
      weights: ``"variables"`` (frozen ``tf.Variable`` copies) or ``"constants"`` (numpy
        copies that every trace embeds as ``Const`` nodes: oneDNN caches their packed form).

    Examples:
    >>> import keras_nlp
    >>> backbone = keras_nlp.models.BertBackbone(vocabulary_size=20, num_layers=1, num_heads=2,
    ...     hidden_dim=8, intermediate_dim=16, max_sequence_length=8)
    >>> tokens = {"token_ids": tf.constant([[2, 5, 3]]), "segment_ids": tf.zeros([1, 3], tf.int32),
    ...           "padding_mask": tf.ones([1, 3], tf.int32)}
    >>> InferenceBert(backbone)(tokens).shape
    TensorShape([1, 3, 8])
    """

    def __init__(self, backbone, precision: str = "float32", weights: str = "variables",
                 name: str = "inference_bert"):
        if precision not in PRECISIONS:
            raise ConfigError(f"text precision {precision!r} is not supported; use one of "
                              f"{', '.join(PRECISIONS)}")
        if weights not in WEIGHTS:
            raise ConfigError(f"text weights {weights!r} are not supported; use one of "
                              f"{', '.join(WEIGHTS)}")
        super().__init__(name=name)
        layers = list(getattr(backbone, "transformer_layers", ()))
        for layer in layers:
            activation = getattr(layer.activation, "__name__", "")
            if layer.normalize_first or activation != "gelu_approximate":
                raise ConfigError(
                    f"InferenceBert computes KerasNLP's BertBackbone (post-LayerNorm, "
                    f"gelu_approximate); layer {layer.name} has normalize_first="
                    f"{layer.normalize_first}, activation={activation or layer.activation!r}")
        if not layers:
            raise ConfigError("InferenceBert needs a built KerasNLP BertBackbone "
                              f"(transformer_layers), got {type(backbone).__name__}")
        self.precision = precision
        self.weights = weights
        self.hidden_dim = int(backbone.hidden_dim)
        self.num_heads = int(backbone.num_heads)
        self.head_dim = self.hidden_dim // self.num_heads
        dtype = tf.bfloat16 if precision == "bfloat16" else tf.float32
        self._compute_dtype = dtype
        self.token_embeddings = backbone.token_embedding.embeddings
        self.position_embeddings = backbone.position_embedding.position_embeddings
        self.segment_embeddings = backbone.segment_embedding.embeddings
        self.embeddings_norm = _norm(backbone.embeddings_layer_norm)
        self.layers = [self._fused_layer(layer, dtype, i) for i, layer in enumerate(layers)]

    def _fused_layer(self, layer, dtype, index: int) -> dict:
        hidden, scale = self.hidden_dim, 1.0 / float(self.head_dim) ** 0.5
        attention = layer._self_attention_layer
        q, k, v = attention._query_dense, attention._key_dense, attention._value_dense
        out = attention._output_dense
        inner, outer = (layer._feedforward_intermediate_dense, layer._feedforward_output_dense)

        def matrix(kernel, rows):
            return tf.reshape(tf.convert_to_tensor(kernel), [rows, -1])

        qkv_kernel = tf.concat([matrix(q.kernel, hidden) * scale, matrix(k.kernel, hidden),
                                matrix(v.kernel, hidden)], axis=1)
        qkv_bias = tf.concat([tf.reshape(q.bias, [-1]) * scale, tf.reshape(k.bias, [-1]),
                              tf.reshape(v.bias, [-1])], axis=0)

        def weight(value, name):  # derived, frozen copies
            value = tf.cast(value, dtype)
            if self.weights == "constants":  # numpy: made a Const node when traced
                return value.numpy()
            return tf.Variable(value, trainable=False, name=f"layer_{index}_{name}")

        def bias(value, name):  # float32 (added after the matmul's cast back), and variables
            # even with constant kernels: a Const bias too stops oneDNN's fused MatMul +
            # BiasAdd (brgemm inner product), measured 13.1 ms vs 9.8 ms on a 6-layer query.
            return tf.Variable(tf.reshape(value, [-1]), trainable=False,
                               name=f"layer_{index}_{name}")

        return {
            "qkv_kernel": weight(qkv_kernel, "qkv_kernel"),
            "qkv_bias": bias(qkv_bias, "qkv_bias"),
            "output_kernel": weight(matrix(out.kernel, hidden), "output_kernel"),
            "output_bias": bias(out.bias, "output_bias"),
            "attention_norm": _norm(layer._self_attention_layer_norm),
            "inner_kernel": weight(inner.kernel, "inner_kernel"),
            "inner_bias": bias(inner.bias, "inner_bias"),
            "outer_kernel": weight(outer.kernel, "outer_kernel"),
            "outer_bias": bias(outer.bias, "outer_bias"),
            "output_norm": _norm(layer._feedforward_layer_norm),
        }

    @tf.Module.with_name_scope
    def __call__(self, tokens: dict[str, tf.Tensor]) -> tf.Tensor:
        """``{"token_ids", "segment_ids", "padding_mask"}`` ``[B, T]`` → ``[B, T, hidden]``."""
        if self.weights == "variables":
            return self._forward(tokens)
        return self._shared_forward(tokens)(tokens)

    def _shared_forward(self, tokens: dict[str, tf.Tensor]):
        """With constant kernels, one ``tf.function`` per input dtypes, traced once for any
        ``[batch, length]``: every graph that calls this copy (each exported signature that
        encodes text) calls the same function, so a SavedModel stores the constants once."""
        specs = {key: tf.TensorSpec([None, None], tf.convert_to_tensor(value).dtype, key)
                 for key, value in sorted(tokens.items())}
        key = tuple((name, spec.dtype.name) for name, spec in specs.items())
        # A plain dict set through __dict__, outside tf.Module's attribute tracking: a
        # tracked dict of tf.functions would be saved as functions of this object too.
        shared = self.__dict__.setdefault("_shared", {})
        if key not in shared:
            shared[key] = tf.function(self._forward, input_signature=[specs])
        return shared[key]

    def _forward(self, tokens: dict[str, tf.Tensor]) -> tf.Tensor:
        ids, segments = tokens["token_ids"], tokens["segment_ids"]
        batch, length = tf.shape(ids)[0], tf.shape(ids)[1]
        x = (tf.gather(self.token_embeddings, ids) + self.position_embeddings[:length]
             + tf.gather(self.segment_embeddings, segments))
        x = _layer_norm(tf.reshape(x, [batch * length, self.hidden_dim]), *self.embeddings_norm)
        # Keys at padded positions get exactly zero attention weight, as in Keras's softmax.
        padding = tf.cast(tokens["padding_mask"], tf.float32)
        adder = ((1.0 - padding) * _MASKED)[:, None, None, :]  # [B, 1, 1, T]
        x = tf.cond((batch == 1) & (length <= BLOCK_ATTENTION_MAX_LENGTH),
                    lambda: self._layers(x, adder[0, 0], batch, length, _block_attention,
                                         self._traced_layers()),
                    lambda: self._layers(x, adder, batch, length, _head_attention,
                                         self._traced_layers()))
        return tf.reshape(x, [batch, length, self.hidden_dim])

    def _layers(self, x, adder, batch, length, attention, layers):
        for w in layers:
            qkv = self._dense(x, w["qkv_kernel"], w["qkv_bias"])  # [B·T, 3·hidden]
            context = attention(*tf.split(qkv, 3, axis=1), adder, self.num_heads)
            x = _layer_norm(self._dense(context, w["output_kernel"], w["output_bias"]) + x,
                            *w["attention_norm"])
            inner = tf.nn.gelu(self._dense(x, w["inner_kernel"], w["inner_bias"]),
                               approximate=True)
            x = _layer_norm(self._dense(inner, w["outer_kernel"], w["outer_bias"]) + x,
                            *w["output_norm"])
        return x

    def _traced_layers(self) -> list[dict]:
        """The layers' weights as this trace reads them: the variables, or (``constants``) the
        kernels as new ``Const`` nodes of the graph being traced. Made in each branch of the
        attention ``tf.cond`` (two copies): constants made before the cond are the branches'
        inputs, and in a loaded SavedModel oneDNN then runs them through its general GEMM
        (``ONEDNN_VERBOSE``: ``x64:gemm:jit``, no faster than variables) where in-branch
        constants get ``brgemm`` with cached packed weights."""
        if self.weights == "variables":
            return self.layers
        return [{key: tf.constant(value) if isinstance(value, np.ndarray) else value
                 for key, value in layer.items()} for layer in self.layers]

    def _dense(self, x, kernel, bias):
        if self._compute_dtype == tf.float32:
            return tf.nn.bias_add(tf.matmul(x, kernel), bias)
        product = tf.matmul(tf.cast(x, self._compute_dtype), kernel)
        return tf.nn.bias_add(tf.cast(product, tf.float32), bias)


def _block_attention(query, key, value, adder, heads: int):
    """One text's attention, every head at once, in two 2-D matmuls and no transpose.

    ``query``/``key``/``value`` are ``[T, hidden]`` and ``adder`` ``[T]``. Keys and values are
    repeated once per head and masked to that head's columns (``[H·T, hidden]``,
    block-diagonal), so ``query @ keysᵀ`` gives each head's scores side by side and
    ``weights @ values`` lands in ``[T, hidden]`` directly. It costs ``heads`` times the score
    arithmetic, nothing at ~10 tokens, where oneDNN's transposes and batched matmuls cost more
    than a weight matmul. The mask is a traced constant ``[H, 1, hidden]`` applied by one
    broadcast multiply (no Tile/Repeat ops per call)."""
    length, hidden = tf.shape(key)[0], key.shape[-1]
    mask = tf.constant(np.repeat(np.eye(heads), hidden // heads, axis=1)[:, None, :],
                       dtype=key.dtype)  # [H, 1, hidden]

    def blocks(x):  # [T, hidden] → [H·T, hidden], head h's rows keep only its columns
        return tf.reshape(x[None] * mask, [heads * length, hidden])

    scores = tf.matmul(query, blocks(key), transpose_b=True)  # [T, H·T]
    weights = _small_softmax(tf.reshape(scores, [length, heads, length]) + adder)
    return tf.matmul(tf.reshape(weights, [length, heads * length]), blocks(value))


def _head_attention(query, key, value, adder, heads: int):
    """Attention per head through ``[B, H, T, head_dim]`` transposes (batches, long texts):
    ``[B·T, hidden]`` inputs and output, ``adder`` ``[B, 1, 1, T]``."""
    batch, length = tf.shape(adder)[0], tf.shape(adder)[3]
    hidden = query.shape[-1]

    def split(x):
        return tf.transpose(tf.reshape(x, [batch, length, heads, hidden // heads]), [0, 2, 1, 3])

    weights = tf.nn.softmax(tf.matmul(split(query), split(key), transpose_b=True) + adder)
    context = tf.transpose(tf.matmul(weights, split(value)), [0, 2, 1, 3])
    return tf.reshape(context, [batch * length, hidden])


def _small_softmax(x):
    """Softmax over the last axis as Max, Sub, Exp, Sum and Div (Eigen kernels).

    On a query's ``[7, 12, 7]`` scores oneDNN's softmax (what ``tf.nn.softmax`` becomes in
    pip TensorFlow) cost ~0.1 ms a call here, about twice these five small ops (its primitive
    set-up dominates); the values agree to float rounding (~1e-7) and padded keys (``-1e9``
    added) still get weight exactly 0. ``benchmarks/text_speed.py``'s profile shows the
    difference per query."""
    exp = tf.exp(x - tf.reduce_max(x, axis=-1, keepdims=True))
    return exp / tf.reduce_sum(exp, axis=-1, keepdims=True)


def _norm(layer) -> tuple:
    return layer.gamma, layer.beta, float(layer.epsilon)


def _layer_norm(x, gamma, beta, epsilon):
    """Keras's (non-fused) LayerNormalization over the last axis of a 2-D tensor."""
    mean, variance = tf.nn.moments(x, axes=[1], keepdims=True)
    return tf.nn.batch_normalization(x, mean, variance, beta, gamma, epsilon)
