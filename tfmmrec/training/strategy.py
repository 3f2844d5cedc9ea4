"""Training: choose the ``tf.distribute`` strategy named in the config (nothing home-made).

Batch semantics (all strategies): ``train.batch_size`` is the *global* batch. Each of R replicas
gets ``batch_size / R`` examples; the retrieval loss is a *sum* over examples and Keras sums the
replicas' gradients, so one step's gradient is the gradient of the global batch's loss whatever
R is, and the same config trains the same way on 1 or 8 replicas. The one difference is the
in-batch softmax: each replica's softmax sees only its own ``batch_size / R`` candidates as
negatives, unless ``train.cross_replica_negatives`` all-gathers every replica's candidates
(``tfmmrec.models.distributed_negatives``), which reproduces the single-device loss exactly at
the cost of one all-gather of ``batch_size × d`` floats per step.

Strategies:
  ``default``       one device (``tf.distribute.get_strategy()``).
  ``mirrored``      ``MirroredStrategy``: every local GPU, or ``train.devices``, else the CPU.
  ``multi_worker``  ``MultiWorkerMirroredStrategy`` over the workers in ``TF_CONFIG``; every
                    worker runs the same command; only the chief writes checkpoints, logs and
                    the run record (Keras writes the others' copies to temporary directories).
                    Must be created before TensorFlow runs any op in the process.
  ``tpu``           ``TPUClusterResolver`` + ``TPUStrategy`` (Colab, Cloud TPU VM or a named TPU).

``parameter_server`` is not offered: see the README ("Why no parameter server").
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import tensorflow as tf

from tfmmrec.config import STRATEGIES, TrainConfig
from tfmmrec.errors import ConfigError, TrainingError

logger = logging.getLogger(__name__)

# Collective ops can be configured once per process, so a multi-worker strategy is created once
# and reused (training, then evaluation or export in the same process).
_CREATED: dict[tuple, tf.distribute.Strategy] = {}


def make_strategy(name: str, devices: Sequence[str] = (), tpu: str | None = None
                  ) -> tf.distribute.Strategy:
    """The ``tf.distribute.Strategy`` for ``train.strategy`` (see the module docstring)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name not in STRATEGIES:
        raise ConfigError(f"train.strategy={name!r} is not supported: use "
                          + ", ".join(STRATEGIES))
    key = (name, tuple(devices), tpu)
    if key not in _CREATED:
        _CREATED[key] = {"mirrored": _mirrored, "multi_worker": _multi_worker,
                         "tpu": _tpu}[name](devices=devices, tpu=tpu)
    return _CREATED[key]


def strategy_for(config: TrainConfig) -> tf.distribute.Strategy:
    return make_strategy(config.strategy, config.devices, config.tpu)


def _mirrored(devices: Sequence[str], **_) -> tf.distribute.Strategy:
    strategy = tf.distribute.MirroredStrategy(list(devices) or None)
    logger.info("MirroredStrategy over %s", ", ".join(strategy.extended.worker_devices))
    return strategy


def _multi_worker(**_) -> tf.distribute.Strategy:
    cluster = cluster_spec()
    if not cluster:
        raise ConfigError(
            "train.strategy=multi_worker needs the TF_CONFIG environment variable on every "
            "worker, e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", "
            "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' (index 1 on "
            "host2); then run the same command on every worker")
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:  # "Collective ops must be configured at program startup"
        raise TrainingError(
            f"cannot start MultiWorkerMirroredStrategy ({exc}): it must be created before "
            "TensorFlow runs anything in this process. Use `tfmmrec train`, or call "
            "tfmmrec.train(config) without a prepared workspace, or create the strategy with "
            "tfmmrec.training.strategy.strategy_for(config.train) first") from None
    task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
    logger.info("MultiWorkerMirroredStrategy: %d replica(s), this is %s %s%s",
                strategy.num_replicas_in_sync, task.get("type"), task.get("index"),
                " (chief)" if is_chief(strategy) else "")
    return strategy


def _tpu(tpu: str | None, **_) -> tf.distribute.Strategy:
    """Colab and Cloud TPU VMs: ``tpu`` empty or ``local``; a TPU node: its name or grpc://."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as exc:
        raise TrainingError(
            f"no TPU reachable at train.tpu={tpu!r} ({exc}). On Colab choose a TPU runtime; on "
            "a Cloud TPU VM set train.tpu=local; otherwise give the TPU's name or "
            "grpc://address") from None
    strategy = tf.distribute.TPUStrategy(resolver)
    logger.info("TPUStrategy with %d replica(s)", strategy.num_replicas_in_sync)
    return strategy


def cluster_spec() -> dict:
    """The ``cluster`` part of ``TF_CONFIG`` (empty when not set)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw).get("cluster", {}) or {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}): {raw[:200]!r}") from None


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run's outputs: always, except a multi-worker non-chief.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    return task_is_chief(resolver.task_type, resolver.task_id,
                         resolver.cluster_spec().as_dict())


def task_is_chief(task_type: str | None, task_id: int | None, cluster: dict) -> bool:
    """Keras' rule: the ``chief`` task, or ``worker`` 0 when the cluster has no ``chief``."""
    if task_type == "chief":
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in cluster


def scaled_learning_rate(config: TrainConfig, replicas: int) -> float:
    """``learning_rate`` × R (linear), × √R (sqrt) or unchanged (none) for R replicas."""
    factor = {"none": 1.0, "linear": float(replicas),
              "sqrt": float(replicas) ** 0.5}[config.learning_rate_scaling]
    return config.learning_rate * factor
