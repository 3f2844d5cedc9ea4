"""Towers: the arithmetic precision of a train step's large matrix products.

A full-softmax step spends most of its time in a few large products (the ``[B, d] × [d, N]``
logits and their two gradients, the history pooling's ``[B, N] × [N, d]``, the poster
projection). CPUs with AVX-512 BF16 / AMX (and GPUs/TPUs) multiply bfloat16 inputs several
times faster than float32, accumulating in float32. ``bfloat16`` casts both inputs of those
products and the result back to float32, so losses, softmax, normalisation and the optimiser
stay float32; inference and exports never use it (a trained model is the same float32 model).
Where the hardware has no bfloat16 units the same numbers are computed in float32 from the
rounded inputs, so a run means the same on every machine.
"""

from __future__ import annotations

import functools
from pathlib import Path

import tensorflow as tf

PRECISIONS = ("float32", "bfloat16")
# CPU flags under which oneDNN multiplies bfloat16 with float32 accumulation.
_CPU_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


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
    if native_bfloat16():
        product = tf.matmul(tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16), **kwargs)
        return tf.cast(product, tf.float32)
    # Without bfloat16 units TF's CPU kernel accumulates partly in bfloat16 (relative errors
    # of ~2⁻⁷ on 40-term sums), and is slower than float32 anyway: the same numbers as the
    # native path, from the rounded inputs multiplied in float32.
    product = tf.matmul(_round_to_bfloat16(a), _round_to_bfloat16(b), **kwargs)
    return _round_to_bfloat16(product)


def native_bfloat16() -> bool:
    """Whether this process multiplies bfloat16 with float32 accumulation: on a GPU or TPU, or
    on a CPU with AVX-512 BF16 / AMX."""
    if tf.config.list_logical_devices("TPU") or tf.config.list_logical_devices("GPU"):
        return True
    return bool(_CPU_BFLOAT16_FLAGS & _cpu_flags())


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume no bfloat16 units (the exact path)
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags")
                     for word in line.split(":", 1)[1].split())


def _round_to_bfloat16(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.cast(x, tf.bfloat16), tf.float32)
