"""Training-time randomness (dropout masks, sampled rows) that repeats for a repeated seed.

TensorFlow's stateful random ops (``tf.random.uniform``/``tf.random.shuffle`` without a
generator) keep their position in op kernels that ``tf.random.set_seed`` does not reset and that
depend on what the process ran before: with the same seed, a ``tfmmrec demo`` whose encoder
cache was cold and one whose cache was warm drew different dropout masks (MRR 0.3658 vs 0.3461),
and training twice in one process diverged too. Every layer that draws noise owns a ``Noise``
stream instead: a ``tf.random.Generator`` seeded when the layer is built (from Python's
``random``, which ``tf.keras.utils.set_random_seed`` seeds) that hands out one seed per call to
the stateless ops. Layers built in the same order after the same seed draw the same masks.
"""

from __future__ import annotations

import random

import tensorflow as tf


class Noise:
    """One layer's random stream. Deliberately not a ``tf.Module``: Keras does not track it,
    so checkpoints and exported variables are unchanged; a run's backup saves the stream's
    state beside them (``training.trainer.PeriodicBackup``), so a resumed run continues it."""

    def __init__(self, seed: int | None = None):
        self.seed_value = random.getrandbits(31) if seed is None else int(seed)
        with tf.init_scope():  # a variable created lazily inside a traced step is not allowed
            self.generator = tf.random.Generator.from_seed(self.seed_value)

    def seed(self) -> tf.Tensor:
        """A fresh ``[2]`` seed for one stateless random op."""
        return self.generator.make_seeds(1)[:, 0]

    def uniform(self, shape) -> tf.Tensor:
        """Uniform floats in [0, 1) (what ``tf.random.uniform(shape)`` gave)."""
        return tf.random.stateless_uniform(shape, self.seed())
