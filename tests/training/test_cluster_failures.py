"""A multi-worker cluster that goes wrong says so in one line: a malformed TF_CONFIG, a port in
use, a worker that never starts (bounded wait, Ctrl-C and SIGTERM honoured while waiting), a
peer that answers but never joins, a worker lost mid-training.

Strategies are created in fresh interpreters (``tfmmrec train`` or a short script): a
multi-worker strategy must precede everything else TensorFlow does in a process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tests.training.test_distributed import REPO, free_ports, run_workers
from tfmmrec.config import TrainConfig
from tfmmrec.errors import ConfigError, TrainingError
from tfmmrec.training import strategy as strategies
from tfmmrec.training import trainer

# `tfmmrec train --strategy multi_worker` with CLUSTER_WAIT_SECONDS set to argv[1] (the rest of
# argv goes to the CLI): what a user runs, with a bound a test can wait for.
TRAIN_SCRIPT = """
    import sys
    from tfmmrec.training import strategy
    strategy.CLUSTER_WAIT_SECONDS = float(sys.argv[1])
    from tfmmrec import cli
    sys.exit(cli.main(["train", "--strategy", "multi_worker", *sys.argv[2:]]))
"""


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses},
                       "task": {"type": "worker", "index": index}})


def start_train(tmp_path: Path, tf_config_value: str, wait_seconds: float, *args: str
                ) -> subprocess.Popen:
    """``tfmmrec train --strategy multi_worker`` in a child (stderr to a file, read as it
    grows). The config is the default one: everything here fails before the data is read.
    Its native log (kept when a command fails) goes to ``tmp_path``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": tf_config_value,
           "TMPDIR": str(tmp_path)}
    with open(tmp_path / "stderr.txt", "w") as stderr:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(TRAIN_SCRIPT), str(wait_seconds),
             "--set", f"train.output_dir={tmp_path / 'run'}", *args],
            env=env, cwd=REPO, text=True, stdout=subprocess.DEVNULL, stderr=stderr)


def finish(child: subprocess.Popen, tmp_path: Path, timeout: float) -> tuple[int, str]:
    """(returncode, stderr) once ``child`` ends; killed (and the test failed) after
    ``timeout`` seconds: before the fixes these children waited forever."""
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        pytest.fail(f"still running after {timeout} s:\n"
                    f"{(tmp_path / 'stderr.txt').read_text()[-3000:]}")
    return child.returncode, (tmp_path / "stderr.txt").read_text()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_one_line_error(code: int, stderr: str, pattern: str) -> None:
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = error_lines(stderr)
    assert re.search(pattern, line), line


@pytest.fixture
def fresh_strategies(monkeypatch):
    monkeypatch.setattr(strategies, "_CREATED", {})


# --- TF_CONFIG, checked before TensorFlow sees it --------------------------------------------

WORKERS = ["127.0.0.1:2001", "127.0.0.1:2002"]


@pytest.mark.parametrize(("value", "expected"), [
    ("[1, 2]", r"TF_CONFIG must be a JSON object such as .*, not \[1, 2\]"),
    (json.dumps({"cluster": {"worker": WORKERS}}),
     r"TF_CONFIG has no \"task\" .*add \"task\": \{\"type\": \"worker\", \"index\": N\}"),
    (tf_config(WORKERS, 5), r"TF_CONFIG\[\"task\"\]\[\"index\"\]=5 is not the place of a worker "
                            r".*which lists 2: use 0 to 1"),
    (json.dumps({"cluster": {"worker": WORKERS}, "task": {"type": "chief", "index": 0}}),
     r"TF_CONFIG\[\"task\"\]\[\"type\"\]=\"chief\" is not a job of TF_CONFIG\[\"cluster\"\]: "
     r"use one of worker"),
    (json.dumps({"cluster": {"worker": "127.0.0.1:2001"}, "task": {"type": "worker",
                                                                   "index": 0}}),
     r"TF_CONFIG\[\"cluster\"\]\[\"worker\"\]=\"127.0.0.1:2001\" must be a list of host:port "
     r"addresses"),
    (tf_config(["127.0.0.1:2001", "127.0.0.1:99999"], 0),
     r"TF_CONFIG\[\"cluster\"\]\[\"worker\"\]\[1\]=\"127.0.0.1:99999\" is not a host:port "
     r"address with a port in 1\.\.65535"),
    (tf_config(["127.0.0.1", "127.0.0.1:2002"], 0), r"\[0\]=\"127.0.0.1\" is not a host:port"),
    (tf_config(["127.0.0.1:2001", "127.0.0.1:2001"], 0),
     r"gives 127.0.0.1:2001 to both worker 0 and worker 1"),
    (json.dumps({"cluster": {"worker": WORKERS, "ps": ["127.0.0.1:2003"]},
                 "task": {"type": "worker", "index": 0}}),
     r"has ps tasks, which train\.strategy=multi_worker does not run"),
    (json.dumps({"cluster": {"chief": WORKERS}, "task": {"type": "chief", "index": 0}}),
     r"\[\"chief\"\] lists 2 addresses: a cluster has at most one chief"),
], ids=["list", "no-task", "index-out-of-range", "type-not-in-cluster", "job-not-a-list",
        "port-99999", "no-port", "same-address-twice", "ps-job", "two-chiefs"])
def test_a_malformed_tf_config_is_one_config_error_naming_the_field(fresh_strategies,
                                                                    monkeypatch, value,
                                                                    expected):
    """The review's cases (TensorFlow failed on each with a 29-39-line traceback, or waited
    forever for port 99999), refused before TensorFlow reads TF_CONFIG."""
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ConfigError, match=expected):
        strategies.make_strategy("multi_worker")
    assert strategies._CREATED == {}


@pytest.mark.parametrize("address", ["10.0.0.2:12345", "worker-1.svc.cluster.local:2222",
                                     "[::1]:2222", "localhost:1", "h:65535"])
def test_well_formed_addresses_are_accepted(address):
    assert strategies.check_address("a", address)[1] == int(address.rpartition(":")[2])


def test_a_task_index_given_as_a_string_is_taken_as_tensorflow_does(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": WORKERS},
                                                "task": {"type": "worker", "index": "1"}}))
    task = strategies.cluster_task(("chief", "worker"), "multi_worker")
    assert (task.task_index, task.address, task.others()) == (1, WORKERS[1],
                                                              [("worker 0", WORKERS[0])])


def test_the_cli_reports_a_malformed_tf_config_in_one_line(tmp_path):
    child = start_train(tmp_path, "[1, 2]", 5)
    assert_one_line_error(*finish(child, tmp_path, 120), r"error: TF_CONFIG must be a JSON object")


# --- waiting for the cluster ----------------------------------------------------------------


def test_a_worker_that_never_starts_ends_the_wait_in_one_line_naming_it(tmp_path):
    """TF_CONFIG names a second worker that is never started: a line says what this worker
    waits for, and once the bound has passed one line names the missing worker (it waited
    silently forever before)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    started = time.monotonic()
    child = start_train(tmp_path, tf_config(addresses, 0), 3)
    code, stderr = finish(child, tmp_path, 120)
    assert f"waiting for the other 1 worker(s) of the cluster (worker 1 at {addresses[1]})" \
        in stderr
    assert_one_line_error(code, stderr, rf"error: worker 1 at {addresses[1]} \(connection "
                                        r"refused\) did not answer within 3 s \(worker 0 here")
    assert time.monotonic() - started < 100


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, -signal.SIGTERM),
                                                   (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_end_the_wait(tmp_path, signum, expected):
    """Before, TensorFlow's coordination agent held the process through both (only kill -9
    stopped it): the wait is now Python's, so they work as in any command."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    child = start_train(tmp_path, tf_config(addresses, 1), 600)
    deadline = time.monotonic() + 90
    while "waiting for the other" not in (tmp_path / "stderr.txt").read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the wait
    child.send_signal(signum)
    code, stderr = finish(child, tmp_path, 30)
    assert code == expected, stderr[-3000:]
    if signum == signal.SIGINT:
        assert "interrupted:" in stderr


def test_a_port_in_use_is_named_in_one_line(tmp_path):
    """TensorFlow's "Could not start gRPC server" traceback, now the address and the fix."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    with socket.create_server(("127.0.0.1", int(addresses[0].rpartition(":")[2]))):
        child = start_train(tmp_path, tf_config(addresses, 0), 5)
        code, stderr = finish(child, tmp_path, 120)
    assert_one_line_error(code, stderr, rf"error: {addresses[0]} \(worker 0 in TF_CONFIG, this "
                                        r"process\) is in use: .*give worker 0 another port")


@pytest.mark.parametrize("this_index", [0, 1])
def test_a_peer_that_answers_but_never_joins_is_named_within_the_bound(tmp_path, this_index):
    """The other address answers (a plain socket, not a worker): the Python wait passes, and
    TensorFlow's own registration, bounded too, names the task that never joined (worker 1 when
    this worker leads the cluster; worker 0, the leader, otherwise)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    other = 1 - this_index
    with socket.create_server(("127.0.0.1", int(addresses[other].rpartition(":")[2]))):
        child = start_train(tmp_path, tf_config(addresses, this_index), 4)
        code, stderr = finish(child, tmp_path, 150)
    assert_one_line_error(code, stderr, rf"error: the cluster did not come together within 4 s: "
                                        rf"worker {other} at {addresses[other]} did not join")


# Each worker connects, then sends itself SIGTERM: the process must end (TensorFlow's
# preemption notifier had made SIGTERM only set a flag for the rest of the run).
SIGTERM_SCRIPT = """
    import os, signal, time
    from tfmmrec.training.strategy import make_strategy
    make_strategy("multi_worker")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    print("survived SIGTERM")
"""


def test_sigterm_still_ends_a_worker_once_the_cluster_is_connected():
    """`timeout` and schedulers stop training with SIGTERM: it could not stop a worker."""
    results = run_workers(["-c", textwrap.dedent(SIGTERM_SCRIPT)], timeout=180)
    for code, out, err in results:
        assert code == -signal.SIGTERM, (code, out, err[-3000:])
        assert "survived" not in out


# --- a worker lost while training -------------------------------------------------------------

LOST = "Collective ops is aborted by: recvmsg:Connection reset by peer"


@pytest.mark.parametrize(("error", "lost"), [
    (tf.errors.UnavailableError(None, None, LOST), True),
    (tf.errors.AbortedError(None, None, "aborted"), True),
    (tf.errors.DeadlineExceededError(None, None, "deadline"), True),
    (tf.errors.InternalError(None, None, "Collective ops is aborted by: x"), True),
    (tf.errors.CancelledError(None, None, "collective op cancelled"), True),
    (tf.errors.InternalError(None, None, "Graph execution error: division"), False),
    (tf.errors.DataLossError(None, None, "Checksum does not match"), False),
    (tf.errors.NotFoundError(None, None, "backup/chief/checkpoint"), False),
    (ValueError("shape"), False),
], ids=["unavailable", "aborted", "deadline", "internal-collective", "cancelled-collective",
        "internal-other", "data-loss", "not-found", "value-error"])
def test_a_lost_peer_is_told_from_other_errors(error, lost):
    assert strategies.is_cluster_failure(error) is lost


class Tiny(tf.keras.Model):
    """The least model ``trainer.fit`` trains: ``build_from_example`` and a loss of its own."""

    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1)

    def call(self, inputs):
        return self.dense(inputs)

    def build_from_example(self):
        self(tf.zeros([1, 2]))

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(self(data) ** 2)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        return {"loss": loss}


class PeerLost(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise tf.errors.UnavailableError(None, None, LOST)


def fit_tiny(tmp_path: Path, callbacks=()) -> trainer.TrainResult:
    data = tf.data.Dataset.from_tensor_slices(np.ones([8, 2], np.float32)).batch(4)
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=4, epochs=2, verbose=0)
    return trainer.fit(Tiny, data, 8, config, tf.distribute.get_strategy(), callbacks)


@pytest.fixture
def as_multi_worker(monkeypatch):
    """The process counts as one worker of a cluster (a real one is the slow test below)."""
    monkeypatch.setattr(strategies, "is_multi_worker", lambda strategy: True)


def test_a_peer_lost_while_training_is_one_training_error_saying_how_to_resume(
        tmp_path, as_multi_worker):
    with pytest.raises(TrainingError, match=rf"^a worker of the cluster was lost \({LOST}\); "
                                            r"run the same command on every worker to resume "
                                            r"from the last backup$"):
        fit_tiny(tmp_path, [PeerLost()])


def test_the_same_error_of_a_single_process_run_is_not_called_a_lost_worker(tmp_path):
    with pytest.raises(tf.errors.UnavailableError):
        fit_tiny(tmp_path, [PeerLost()])


def test_a_peer_lost_while_restoring_the_backup_does_not_call_the_backup_damaged(
        tmp_path, as_multi_worker, monkeypatch):
    """Restoring is a collective under multi-worker training: its failure said "the backup
    cannot be read … delete …/backup", which would have had the user delete a good backup."""
    def restore(self, logs=None):
        raise tf.errors.UnavailableError(None, None, LOST)

    monkeypatch.setattr(tf.keras.callbacks.BackupAndRestore, "on_train_begin", restore)
    with pytest.raises(TrainingError, match=r"^a worker of the cluster was lost") as raised:
        fit_tiny(tmp_path)
    assert "delete" not in str(raised.value)


def test_a_damaged_backup_is_still_called_damaged_under_multi_worker(tmp_path, as_multi_worker,
                                                                     monkeypatch):
    def restore(self, logs=None):
        raise tf.errors.DataLossError(None, None, "Checksum does not match")

    monkeypatch.setattr(tf.keras.callbacks.BackupAndRestore, "on_train_begin", restore)
    with pytest.raises(TrainingError, match=r"cannot be read \(Checksum does not match\); "
                                            r"delete .*backup"):
        fit_tiny(tmp_path)


def start_worker(config_path: Path, addresses: list[str], index: int, logs: Path
                 ) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": tf_config(addresses, index)}
    with open(logs / f"out-{index}.txt", "w") as out, open(logs / f"err-{index}.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tfmmrec.cli", "train", "--config", str(config_path),
             "--strategy", "multi_worker"], env=env, cwd=REPO, text=True, stdout=out,
            stderr=err)


@pytest.mark.slow  # two clusters of two TensorFlow processes: ~2-4 min on 2 shared cores
def test_a_worker_killed_mid_training_is_one_line_and_the_same_command_resumes(
        tiny_config, tiny_workspace, tmp_path):
    config = derive_config(tiny_config, tmp_path, "train.epochs=40", "text.enabled=false",
                           "export.index=brute_force")
    config.to_yaml(tmp_path / "config.yaml")
    output = Path(config.train.output_dir)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers = [start_worker(tmp_path / "config.yaml", addresses, i, tmp_path) for i in (0, 1)]
    try:
        deadline = time.monotonic() + 400
        while not list((output / "backup").rglob("*.index")):  # an epoch backed up
            assert time.monotonic() < deadline and workers[0].poll() is None, \
                (tmp_path / "err-0.txt").read_text()[-3000:]
            time.sleep(0.5)
        workers[1].kill()
        workers[0].wait(timeout=180)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    stderr = (tmp_path / "err-0.txt").read_text()
    assert_one_line_error(workers[0].returncode, stderr,
                          r"^error: a worker of the cluster was lost \(.+\); run the same "
                          r"command on every worker to resume from the last backup$")
    # the same command on both workers resumes from the backup and finishes
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers = [start_worker(tmp_path / "config.yaml", addresses, i, tmp_path) for i in (0, 1)]
    try:
        for worker in workers:
            worker.wait(timeout=600)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert [w.returncode for w in workers] == [0, 0], (tmp_path / "err-0.txt").read_text()[-3000:]
    assert "resuming from the backup" in (tmp_path / "err-0.txt").read_text()
    trained = re.search(r"trained (\d+) epoch\(s\)", (tmp_path / "out-0.txt").read_text())
    assert trained and 0 < int(trained[1]) < 40
    assert (output / "checkpoints" / "latest.index").is_file()
