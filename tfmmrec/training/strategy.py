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
  ``parameter_server``  ``ParameterServerStrategy``: ``TF_CONFIG`` names a ``chief``, workers and
                    ``ps`` tasks; the same command on a worker or ps task starts that task's
                    server and serves until stopped, the chief loads the data and drives
                    training (asynchronous: each worker steps on its own batches, variables live
                    on the parameter servers). In-batch negatives are per worker step.
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

# Collective ops can be configured once per process, and two strategies over the same devices
# would reuse each other's collective instance keys: so each configuration's strategy is created
# once per process and reused (training, then evaluation or export in the same process).
_CREATED: dict[tuple, tf.distribute.Strategy] = {}


def make_strategy(name: str, devices: Sequence[str] = (), tpu: str | None = None
                  ) -> tf.distribute.Strategy:
    """The ``tf.distribute.Strategy`` for ``train.strategy`` (see the module docstring).

    ``devices`` (``train.devices``) is read by ``mirrored`` only; given with any other strategy
    it is a ``ConfigError`` rather than silently ignored (a run the user believed pinned to
    GPUs would train elsewhere).
    """
    if name not in STRATEGIES:
        raise ConfigError(f"train.strategy={name!r} is not supported: use "
                          + ", ".join(STRATEGIES))
    if devices and name != "mirrored":
        raise ConfigError(f"train.devices={list(devices)} only applies to "
                          f"train.strategy=mirrored, not {name}: remove train.devices "
                          "(--set 'train.devices=[]') or use --strategy mirrored")
    if name == "default":
        return tf.distribute.get_strategy()
    key = (name, tuple(devices), tpu)
    if key not in _CREATED:
        _CREATED[key] = {"mirrored": _mirrored, "multi_worker": _multi_worker, "tpu": _tpu,
                         "parameter_server": _parameter_server}[name](devices=devices, tpu=tpu)
    return _CREATED[key]


def strategy_for(config: TrainConfig) -> tf.distribute.Strategy:
    """The strategy ``config`` (a ``TrainConfig``) asks for."""
    return make_strategy(config.strategy, config.devices, config.tpu)


def _mirrored(devices: Sequence[str], **_) -> tf.distribute.Strategy:
    check_devices_exist(devices)
    strategy = tf.distribute.MirroredStrategy(list(devices) or None)
    logger.info("MirroredStrategy over %s", ", ".join(strategy.extended.worker_devices))
    return strategy


def _device_key(name: str) -> tuple:
    """``/gpu:0``, ``GPU:0``, ``/device:GPU:0`` and ``/job:localhost/replica:0/task:0/device:GPU:0``
    are one device: job, replica, task, type and index with TensorFlow's local defaults."""
    spec = tf.DeviceSpec.from_string(name)
    return (spec.job or "localhost", spec.replica or 0, spec.task or 0,
            (spec.device_type or "").upper(), spec.device_index or 0)


def check_devices_exist(devices: Sequence[str]) -> None:
    """Refuse ``train.devices`` naming a device this process does not have: ``MirroredStrategy``
    would otherwise place the replica on the CPU and train there without a word.

    Only for ``mirrored`` (called when it is created): listing devices starts TensorFlow's
    runtime, which a multi-worker strategy must precede.
    """
    if not devices:
        return
    try:
        wanted = {name: _device_key(name) for name in devices}
    except ValueError as exc:
        raise ConfigError(f"train.devices={list(devices)} is not a list of device names such "
                          f"as /gpu:0 or /cpu:0 ({exc})") from None
    existing = [device.name for device in tf.config.list_logical_devices()]
    present = {_device_key(name) for name in existing}
    missing = [name for name, key in wanted.items() if key not in present]
    if missing:
        raise ConfigError(f"train.devices names {', '.join(missing)}, which this machine does "
                          f"not have; its devices are {', '.join(existing) or 'none'}: list "
                          "some of those, or unset train.devices")


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


def _parameter_server(**_) -> tf.distribute.Strategy:
    cluster = cluster_spec()
    if not (cluster.get("chief") and cluster.get("worker") and cluster.get("ps")):
        raise ConfigError(
            "train.strategy=parameter_server needs TF_CONFIG with chief, worker and ps tasks, "
            "e.g. {\"cluster\": {\"chief\": [\"h0:2222\"], \"worker\": [\"h1:2222\"], "
            "\"ps\": [\"h2:2222\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}; run the same "
            "command as every task")
    # Fail fast on a lost worker (the coordinator reschedules its steps) instead of hanging.
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type in ("worker", "ps"):
        serve_forever(resolver)
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    logger.info("ParameterServerStrategy: %d worker(s), %d parameter server(s)",
                len(cluster["worker"]), len(cluster["ps"]))
    return strategy


def serve_forever(resolver: tf.distribute.cluster_resolver.ClusterResolver) -> None:
    """A worker or ps task of a parameter-server cluster: serve the chief until stopped."""
    config = tf.compat.v1.ConfigProto()
    config.inter_op_parallelism_threads = 4  # a worker runs several scheduled steps at once
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id,
                                  protocol=resolver.rpc_layer or "grpc", config=config,
                                  start=True)
    logger.info("parameter_server: %s %d serving at %s until stopped (the chief drives "
                "training)", resolver.task_type, resolver.task_id, server.target)
    server.join()


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
        return True  # single process, TPU, or the parameter-server chief (the only writer)
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
