"""Training: choose the ``tf.distribute`` strategy named in the config.

Batch semantics (all strategies): ``train.batch_size`` is the *global* batch; each of R replicas
gets ``batch_size / R`` examples and its in-batch softmax uses only those as negatives. Scale
``batch_size`` with R to keep the negatives per replica (and the learning-rate trade-off) fixed.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from tfmmrec.errors import ConfigError

logger = logging.getLogger(__name__)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device) or ``mirrored`` (all local GPUs, else the CPU)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        logger.info("MirroredStrategy with %d replica(s)", strategy.num_replicas_in_sync)
        return strategy
    raise ConfigError(f"train.strategy={name!r} is not supported: use default or mirrored")
