"""Tests for tfmmrec.towers.precision: bfloat16 products for train steps."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfmmrec.towers import precision as precision_module
from tfmmrec.towers.precision import check_precision, matmul

RNG = np.random.default_rng(0)
A = tf.constant(RNG.standard_normal((6, 40)).astype(np.float32))
B = tf.constant(RNG.standard_normal((9, 40)).astype(np.float32))


def _bf16(x) -> np.ndarray:
    return tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy().astype(np.float64)


def test_float32_is_tf_matmul_bit_for_bit():
    np.testing.assert_array_equal(matmul(A, B, "float32", transpose_b=True).numpy(),
                                  tf.matmul(A, B, transpose_b=True).numpy())


@pytest.fixture(params=["this machine", "emulated"])
def bfloat16_path(request, monkeypatch):
    """Every bfloat16 test runs on this machine's path and on the float32 emulation (the
    native path when the machine has bfloat16 units)."""
    if request.param == "emulated":
        monkeypatch.setattr(precision_module, "native_bfloat16", lambda: False)
    return request.param


def test_bfloat16_multiplies_rounded_inputs_and_returns_float32(bfloat16_path):
    """The product of the bfloat16-rounded inputs (exact in float64), rounded once more to
    bfloat16: within half a bfloat16 ulp (2⁻⁹ relative) of it, and not the float32 product."""
    out = matmul(A, B, "bfloat16", transpose_b=True)
    assert out.dtype == tf.float32
    expected = _bf16(A) @ _bf16(B).T
    np.testing.assert_allclose(out.numpy(), expected, rtol=2.0 ** -8, atol=1e-3)
    assert np.abs(out.numpy() - (A.numpy() @ B.numpy().T)).max() > 1e-4  # really rounded


def test_bfloat16_gradients_are_float32_and_close_to_float32_ones(bfloat16_path):
    grads = {}
    for precision in ("float32", "bfloat16"):
        a = tf.Variable(A)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(matmul(a, B, precision, transpose_b=True)))
        grads[precision] = tape.gradient(loss, a)
    assert grads["bfloat16"].dtype == tf.float32
    np.testing.assert_allclose(grads["bfloat16"].numpy(), grads["float32"].numpy(), atol=0.25)
    assert not np.array_equal(grads["bfloat16"].numpy(), grads["float32"].numpy())


def test_unknown_precision_is_rejected_with_its_name():
    with pytest.raises(ValueError, match=r"model\.training_precision.*'float16'"):
        check_precision("float16", "model.training_precision")
    with pytest.raises(ValueError, match="precision must be one of"):
        matmul(A, B, "float16")
