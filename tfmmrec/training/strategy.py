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
                    Must be created before TensorFlow runs any op in the process. TF_CONFIG
                    is checked first (one ``ConfigError`` naming the field); then each worker
                    waits for the others, saying so, up to ``CLUSTER_WAIT_SECONDS`` (Ctrl-C
                    and SIGTERM end the wait), and fails naming the ones that never answered.
                    A worker lost while training is one ``TrainingError`` (``trainer.fit``);
                    the same command on every worker resumes from the last backup.
  ``tpu``           ``TPUClusterResolver`` + ``TPUStrategy`` (Colab, Cloud TPU VM or a named TPU).
  ``parameter_server``  ``ParameterServerStrategy``: ``TF_CONFIG`` names a ``chief``, workers and
                    ``ps`` tasks; the same command on a worker or ps task starts that task's
                    server and serves until stopped, the chief loads the data and drives
                    training (asynchronous: each worker steps on its own batches, variables live
                    on the parameter servers). In-batch negatives are per worker step.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import tensorflow as tf

from tfmmrec.config import STRATEGIES, TrainConfig
from tfmmrec.errors import ConfigError, TrainingError, cut, first_line, one_line_error

logger = logging.getLogger(__name__)

# How long a multi-worker run waits for the other workers of its cluster, first in
# ``wait_for_cluster`` (before TensorFlow connects) and again as TensorFlow's own registration
# bound. Workers are started one after another, by hand or by a scheduler, so minutes are
# normal; without a bound a worker that never starts (or an address no one can reach) left the
# others waiting forever. A module constant, not a config field: no field of ``train`` is about
# the cluster, and the value is the same for every run of a cluster.
CLUSTER_WAIT_SECONDS = 300.0
# While waiting: how often the other workers' addresses are tried, and a progress line.
CLUSTER_POLL_SECONDS = 0.5
CLUSTER_NOTE_SECONDS = 30.0
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')
# The jobs TensorFlow knows in TF_CONFIG; each strategy runs some of them.
KNOWN_JOBS = ("chief", "worker", "ps", "evaluator")
# host:port, the host a name, an IPv4 address or a bracketed IPv6 address.
_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*)"
                      r":(?P<port>[0-9]{1,5})")
# What TensorFlow names a task in its coordination errors: /job:worker/replica:0/task:1
_TASK_NAME = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")

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
    global _CLUSTER_STRATEGY
    _CLUSTER_STRATEGY = name in CLUSTER_STRATEGIES
    if name == "default":
        return tf.distribute.get_strategy()
    key = (name, tuple(devices), tpu)
    if key not in _CREATED:
        _CREATED[key] = {"mirrored": _mirrored, "multi_worker": _multi_worker, "tpu": _tpu,
                         "parameter_server": _parameter_server}[name](devices=devices, tpu=tpu)
    return _CREATED[key]


# The strategies whose processes are TF_CONFIG's workers. Under any other, TF_CONFIG (which
# schedulers set for every job) names no worker of this run: the process trains alone.
CLUSTER_STRATEGIES = ("multi_worker", "parameter_server")
_CLUSTER_STRATEGY: bool | None = None  # None: no strategy made yet (then TF_CONFIG decides)


def num_workers() -> int:
    """The workers training this run: 1 unless the strategy made last (``make_strategy``) is
    a cluster strategy, then the workers (and chief) of ``TF_CONFIG``. It decides whether
    the random streams are backed up for an exact resume and how a resumed run skips
    through prepared shards, so a default or mirrored run on a host whose TF_CONFIG lists a
    cluster stays a one-worker run (it lost its exact resume)."""
    if _CLUSTER_STRATEGY is False:
        return 1
    cluster = cluster_spec()
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


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
    if not cluster_spec():
        raise ConfigError(
            "train.strategy=multi_worker needs the TF_CONFIG environment variable on every "
            f"worker, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' (index 1 on host2); then run the "
            "same command on every worker")
    task = cluster_task(("chief", "worker"), "multi_worker")
    wait_for_cluster(task)
    strategy = _connect(task)
    logger.info("MultiWorkerMirroredStrategy: %d replica(s), this is %s %d%s",
                strategy.num_replicas_in_sync, task.task_type, task.task_index,
                " (chief)" if is_chief(strategy) else "")
    return strategy


def _connect(task: ClusterTask) -> tf.distribute.Strategy:
    """``MultiWorkerMirroredStrategy`` for ``task``, its failures as one line each.

    TensorFlow's own wait for the cluster is bounded (``_bound_registration``) and holds the
    interpreter: no Python signal handler runs until it ends, and TensorFlow replaces the
    SIGTERM handler with one that only records the signal (``_signals_during_connect``).
    ``wait_for_cluster`` has done the long wait before, so this one is short."""
    _bound_registration(task)
    try:
        with _signals_during_connect():
            return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:  # "Collective ops must be configured at program startup"
        raise TrainingError(
            f"cannot start MultiWorkerMirroredStrategy ({exc}): it must be created before "
            "TensorFlow runs anything in this process. Use `tfmmrec train`, or call "
            "tfmmrec.train(config) without a prepared workspace, or create the strategy with "
            "tfmmrec.training.strategy.strategy_for(config.train) first") from None
    except tf.errors.UnknownError as exc:
        if "Could not start gRPC server" not in str(exc):
            raise
        raise _address_in_use(task) from None
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as exc:
        raise TrainingError(_cluster_not_joined(task, str(exc))) from None


def _bound_registration(task: ClusterTask) -> None:
    """Configure the coordination service as ``MultiWorkerMirroredStrategy`` would, with its
    registration bounded by ``CLUSTER_WAIT_SECONDS``.

    TensorFlow 2.20's defaults wait silently for about an hour (the review saw 12+ minutes of
    nothing): a task's registration is bounded by an hour, and the device exchange that follows
    waits on a fixed hour of the coordination service for a missing task. With
    ``cluster_register_with_barrier`` (a field of the coordination config the Python API does
    not take, so set on the config proto) registration itself waits for every task, and fails
    after ``cluster_register_timeout_in_ms`` naming the tasks that never came; a task whose
    leader never answers fails after the same bound. A coordination service the caller
    configured already is left as it is."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    if ctx.coordination_service is not None:
        return
    leader_type, _ = task.leader
    ctx.configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader_type}/replica:0/task:0",
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(
            name=job, num_tasks=len(task.cluster[job]))
            for job in ("chief", "worker") if job in task.cluster],
        cluster_register_timeout_in_ms=int(CLUSTER_WAIT_SECONDS * 1000))
    ctx.coordination_service.cluster_register_with_barrier = True


@contextlib.contextmanager
def _signals_during_connect() -> Iterator[None]:
    """Ctrl-C ends the process while TensorFlow connects, and SIGTERM ends it afterwards.

    TensorFlow connects holding the interpreter, so Python's Ctrl-C handler could only run
    once it returns: SIGINT gets the system's default action (end the process) meanwhile.
    Connecting also installs TensorFlow's preemption notifier, which makes SIGTERM only set a
    flag for the rest of the run (``timeout`` and schedulers could no longer stop training):
    the handler this process had before is put back. Only the main thread sets handlers; an
    ignored SIGINT (a background job's) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigterm = signal.getsignal(signal.SIGTERM)
    sigint = signal.getsignal(signal.SIGINT)
    if sigint is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if sigint is None else sigint)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if sigterm is None else sigterm)


def _address_in_use(task: ClusterTask) -> TrainingError:
    """The error for a task whose own TF_CONFIG address another program listens on."""
    return TrainingError(
        f"{task.address} ({task.name()} in TF_CONFIG, this process) is in use: another "
        f"program listens on port {task.port} of this machine. Stop it (an earlier run still "
        f"going?) or give {task.name()} another port in TF_CONFIG on every worker")


def _cluster_not_joined(task: ClusterTask, message: str) -> str:
    """What to say when TensorFlow's registration gave up: the tasks its barrier names as
    stragglers, else (this task never reached the leader) the leader."""
    listed = message.partition("timed out task names:")[2].strip().splitlines()
    missing = []
    for line in listed:  # one task a line, then whatever TensorFlow adds
        found = _TASK_NAME.fullmatch(line.strip())
        if found is None:
            break
        missing.append((found[1], int(found[2])))
    if not missing:
        missing = [task.leader]
    names = ", ".join(f"{task.name(*named)} at {task.address_of(*named)}" for named in missing)
    reason = one_line_error(message).split(". ")[0]  # "Barrier timed out", "Deadline Exceeded"
    return (f"the cluster did not come together within {CLUSTER_WAIT_SECONDS:g} s: {names} did "
            f"not join (TensorFlow: {reason}). Start the same command on every worker, and "
            "check that each can reach the others' TF_CONFIG addresses")


# --- TF_CONFIG ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a ``TF_CONFIG`` cluster (checked by ``cluster_task``)."""

    cluster: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def address(self) -> str:
        return self.address_of(self.task_type, self.task_index)

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def leader(self) -> tuple[str, int]:
        """The task that hosts TensorFlow's coordination service: chief 0, else worker 0."""
        return ("chief", 0) if "chief" in self.cluster else ("worker", 0)

    def address_of(self, task_type: str, index: int) -> str:
        jobs = self.cluster.get(task_type, [])
        return jobs[index] if 0 <= index < len(jobs) else "?"

    def name(self, task_type: str | None = None, index: int | None = None) -> str:
        """``worker 1``: a task as TF_CONFIG names it (this one by default)."""
        if task_type is None:
            task_type, index = self.task_type, self.task_index
        return f"{task_type} {index}"

    def others(self) -> list[tuple[str, str]]:
        """(name, address) of every other task of the chief and worker jobs."""
        return [(self.name(job, index), address) for job in ("chief", "worker")
                for index, address in enumerate(self.cluster.get(job, []))
                if (job, index) != (self.task_type, self.task_index)]


def tf_config() -> dict:
    """``TF_CONFIG`` parsed (empty when not set), or a ``ConfigError`` when it is not a JSON
    object: TensorFlow failed on these with 30-line tracebacks from deep inside."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}): {cut(repr(raw), 200)}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"TF_CONFIG must be a JSON object such as {TF_CONFIG_EXAMPLE}, not "
                          f"{cut(raw, 200)}")
    return value


def cluster_spec() -> dict[str, list[str]]:
    """The ``cluster`` part of ``TF_CONFIG`` (empty when not set), checked: known job names,
    each a list of distinct ``host:port`` addresses, at most one chief."""
    cluster = tf_config().get("cluster") or {}
    if not isinstance(cluster, dict):
        raise ConfigError(f"TF_CONFIG[\"cluster\"] must map job names to lists of host:port "
                          f"addresses, e.g. {{\"worker\": [\"host1:12345\"]}}, not "
                          f"{cut(json.dumps(cluster), 200)}")
    seen: dict[str, str] = {}
    for job, addresses in cluster.items():
        if job not in KNOWN_JOBS:
            raise ConfigError(f"TF_CONFIG[\"cluster\"] has the job {job!r}: the jobs are "
                              f"{', '.join(KNOWN_JOBS)}")
        if not isinstance(addresses, list):
            given = cut(json.dumps(addresses), 200)
            raise ConfigError(f"TF_CONFIG[\"cluster\"][\"{job}\"]={given} must be a list of "
                              f"host:port addresses, e.g. [{given}]")
        for index, address in enumerate(addresses):
            check_address(f"TF_CONFIG[\"cluster\"][\"{job}\"][{index}]", address)
            if address in seen:
                raise ConfigError(f"TF_CONFIG[\"cluster\"] gives {address} to both "
                                  f"{seen[address]} and {job} {index}: every task needs its "
                                  "own host:port")
            seen[address] = f"{job} {index}"
    for job in ("chief", "evaluator"):
        if len(cluster.get(job, [])) > 1:
            raise ConfigError(f"TF_CONFIG[\"cluster\"][\"{job}\"] lists "
                              f"{len(cluster[job])} addresses: a cluster has at most one {job}")
    return cluster


def check_address(field: str, address: object) -> tuple[str, int]:
    """``(host, port)`` of a ``host:port`` address, or a ``ConfigError`` naming ``field``:
    TensorFlow took ``127.0.0.1:99999`` and then waited forever for it."""
    match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    port = int(match["port"]) if match else 0
    if not 1 <= port <= 65535:
        raise ConfigError(f"{field}={json.dumps(address)} is not a host:port address with a "
                          "port in 1..65535 (e.g. \"10.0.0.2:12345\")")
    return match["host"].strip("[]"), port


def cluster_task(jobs: tuple[str, ...], strategy: str) -> ClusterTask:
    """This process's task in ``TF_CONFIG`` (``task``), checked against the cluster and the
    ``jobs`` ``strategy`` runs."""
    cluster = cluster_spec()
    unused = sorted(set(cluster) - set(jobs))
    if unused:
        raise ConfigError(f"TF_CONFIG[\"cluster\"] has {', '.join(unused)} tasks, which "
                          f"train.strategy={strategy} does not run: its jobs are "
                          f"{', '.join(jobs)}")
    task = tf_config().get("task")
    example = "\"task\": {\"type\": \"worker\", \"index\": N}"
    if not task:
        raise ConfigError(f"TF_CONFIG has no \"task\" saying which task of the cluster this "
                          f"process is: add {example}, N being this process's place in the "
                          "cluster's worker list (0 for the first)")
    if not isinstance(task, dict):
        raise ConfigError(f"TF_CONFIG[\"task\"]={cut(json.dumps(task), 200)} must be an object: "
                          f"{example}, N being this process's place in the cluster's worker "
                          "list (0 for the first)")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise ConfigError(f"TF_CONFIG[\"task\"][\"type\"]={json.dumps(task_type)} is not a "
                          f"job of TF_CONFIG[\"cluster\"]: use one of {', '.join(cluster)}")
    if isinstance(index, str) and index.isdigit():
        index = int(index)  # TensorFlow takes "1" too
    count = len(cluster[task_type])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ConfigError(f"TF_CONFIG[\"task\"][\"index\"]={json.dumps(index)} is not the "
                          f"place of a {task_type} in TF_CONFIG[\"cluster\"][\"{task_type}\"], "
                          f"which lists {count}: use "
                          + ("0" if count == 1 else f"0 to {count - 1}"))
    return ClusterTask(cluster, task_type, index)


# --- waiting for the cluster ----------------------------------------------------------------


def wait_for_cluster(task: ClusterTask) -> None:
    """Return once every other task of the cluster answers at its address; a
    ``TrainingError`` naming the ones that did not after ``CLUSTER_WAIT_SECONDS``.

    Done here, in Python, before TensorFlow connects: TensorFlow's own wait holds the
    interpreter and swallows SIGTERM, so a missing worker left the process silent and
    unstoppable but by ``kill -9``. Here Ctrl-C and SIGTERM end it as usual, a line says what
    it waits for, and this task listens on its own port meanwhile (a port in use is named),
    so that the others find it before its TensorFlow server starts."""
    others = task.others()
    if not others:
        return
    seconds = CLUSTER_WAIT_SECONDS
    with _listening(task) as listener:
        logger.info("%s at %s: waiting for the other %d worker(s) of the cluster (%s), up to "
                    "%g s", task.name(), task.address, len(others),
                    ", ".join(f"{name} at {address}" for name, address in others), seconds)
        start = time.monotonic()
        missing = dict(others)
        problems: dict[str, str] = {}
        noted = start
        while True:
            for name, address in list(missing.items()):
                problem = _unreachable(address)
                if problem is None:
                    del missing[name]
                else:
                    problems[name] = problem
            if not missing:
                return
            now = time.monotonic()
            if now - start >= seconds:
                raise TrainingError(_not_answered(task, missing, problems, seconds))
            if now - noted >= CLUSTER_NOTE_SECONDS:
                noted = now
                logger.info("still waiting for %s (%.0f s of %g s)",
                            ", ".join(f"{name} at {address}" for name, address
                                      in missing.items()), now - start, seconds)
            _turn_away(listener)
            time.sleep(min(CLUSTER_POLL_SECONDS, max(0.0, seconds - (now - start))))


def _not_answered(task: ClusterTask, missing: dict[str, str], problems: dict[str, str],
                  seconds: float) -> str:
    names = ", ".join(f"{name} at {address} ({problems[name]})"
                      for name, address in missing.items())
    return (f"{names} did not answer within {seconds:g} s ({task.name()} here, at "
            f"{task.address}): start the same command on every worker of TF_CONFIG, and "
            "check that this machine can reach those addresses")


@contextlib.contextmanager
def _listening(task: ClusterTask) -> Iterator[socket.socket]:
    """A socket on this task's port while it waits: the others see it there, and a port
    taken by another program is found before TensorFlow fails on it. Closed before
    TensorFlow's server takes the port."""
    try:
        if socket.has_dualstack_ipv6():
            listener = socket.create_server(("", task.port), family=socket.AF_INET6,
                                            dualstack_ipv6=True)
        else:
            listener = socket.create_server(("", task.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise _address_in_use(task) from None
        raise TrainingError(f"cannot listen on {task.address} ({task.name()} in TF_CONFIG, "
                            f"this process): {exc.strerror or exc}") from None
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


def _turn_away(listener: socket.socket) -> None:
    """Close the connections other tasks made to this one while it waits, at once (a reset,
    which leaves the port free for TensorFlow's server): they only tried whether it is up,
    or are TensorFlow clients that retry until its server is."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:  # nothing waiting (BlockingIOError), or gone
            return
        with contextlib.suppress(OSError):
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()


def _unreachable(address: str) -> str | None:
    """None when something listens at ``address``, else why not (refused, unknown host...)."""
    host, port = check_address("address", address)
    try:
        with socket.create_connection((host, port), timeout=min(2.0, CLUSTER_WAIT_SECONDS)):
            return None
    except OSError as exc:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _tpu(tpu: str | None, **_) -> tf.distribute.Strategy:
    """Colab and Cloud TPU VMs: ``tpu`` empty or ``local``; a TPU node: its name or grpc://."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as exc:
        if "ConfigureDistributedTPU" in str(exc):  # the TPU is there; this TensorFlow is not
            raise TrainingError(
                f"this TensorFlow has no TPU support (train.tpu={tpu!r}: no kernel for "
                "ConfigureDistributedTPU): the `tensorflow` wheel leaves it out; on a TPU VM or "
                "Colab TPU runtime install the TPU build after tfmmrec: pip install "
                "--force-reinstall --no-deps tensorflow-tpu==2.20.0 -f "
                "https://storage.googleapis.com/libtpu-tf-releases/index.html") from None
        raise TrainingError(
            f"no TPU reachable at train.tpu={tpu!r} ({first_line(exc)}). On Colab choose a TPU "
            "runtime; on a Cloud TPU VM set train.tpu=local; otherwise give the TPU's name or "
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
    cluster_task(("chief", "worker", "ps"), "parameter_server")  # before TensorFlow reads it
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


# --- a worker lost while training ------------------------------------------------------------

# What a collective op raises when a peer is gone (killed, crashed, its machine down): TF aborts
# every collective of the process. Unavailable/Aborted/DeadlineExceeded always mean that here;
# Internal, Cancelled and Unknown do when the message names the collective or the connection.
_CLUSTER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError,
                     tf.errors.DeadlineExceededError)
_MAYBE_CLUSTER_FAILURES = (tf.errors.InternalError, tf.errors.CancelledError,
                           tf.errors.UnknownError)
_CLUSTER_WORDS = re.compile(r"collective|coordination service|connection reset|socket closed|"
                            r"failed to connect|heartbeat", re.IGNORECASE)


def is_cluster_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is TensorFlow reporting a lost peer of the cluster (not a bad file, a
    bad value or a bug): the run is intact up to its last backup."""
    if isinstance(exc, _CLUSTER_FAILURES):
        return True
    return isinstance(exc, _MAYBE_CLUSTER_FAILURES) and bool(_CLUSTER_WORDS.search(str(exc)))


def lost_worker_error(exc: BaseException) -> TrainingError:
    """The one line for a lost peer, instead of TensorFlow's 60-line traceback."""
    return TrainingError(f"a worker of the cluster was lost ({one_line_error(str(exc))}); run "
                         "the same command on every worker to resume from the last backup")


@contextlib.contextmanager
def lost_workers_reported(strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Under ``MultiWorkerMirroredStrategy``, a lost peer (``is_cluster_failure``) becomes
    ``lost_worker_error``; anything else, and every error of other strategies, passes as is."""
    try:
        yield
    except tf.errors.OpError as exc:
        if peer_lost(strategy, exc):
            raise lost_worker_error(exc) from None
        raise


def peer_lost(strategy: tf.distribute.Strategy | None, exc: BaseException) -> bool:
    """Whether ``exc`` says a peer of a multi-worker cluster is gone (not what was being read
    or computed)."""
    return is_multi_worker(strategy) and is_cluster_failure(exc)


def is_multi_worker(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether ``strategy`` synchronises several processes (``MultiWorkerMirroredStrategy``)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run's outputs: always, except a multi-worker non-chief.
    """
    if not is_multi_worker(strategy):
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
