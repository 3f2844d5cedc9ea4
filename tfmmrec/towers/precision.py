"""Towers: the arithmetic precision of a train step's large matrix products.

A full-softmax step spends most of its time in a few large products (the ``[B, d] × [d, N]``
logits and their two gradients, the history pooling's ``[B, N] × [N, d]``, the poster
projection). CPUs with AVX-512 BF16 / AMX (and GPUs/TPUs) multiply bfloat16 inputs several
times faster than float32, accumulating in float32. ``bfloat16`` casts both inputs of those
products and the result back to float32, so losses, softmax, normalisation and the optimiser
stay float32; inference and exports never use it (a trained model is the same float32 model).
"""

from __future__ import annotations

import tensorflow as tf

PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str, name: str = "training_precision") -> str:
    """``precision`` if it is one of ``PRECISIONS``, else a ``ValueError`` naming it."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {PRECISIONS}, got {precision!r}")
    return precision


def matmul(a: tf.Tensor, b: tf.Tensor, precision: str = "float32", **kwargs) -> tf.Tensor:
    """``tf.matmul(a, b, **kwargs)`` with inputs in ``precision`` and a float32 result.

    The gradients of a bfloat16 product are bfloat16 products too (the casts' gradients cast
    back), so the backward pass gets the same speed-up.
    """
    if check_precision(precision, "precision") == "float32":
        return tf.matmul(a, b, **kwargs)
    product = tf.matmul(tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16), **kwargs)
    return tf.cast(product, tf.float32)
