"""The logged ``alignment_loss`` under several replicas: combined across replicas as ``loss`` is
(the sum of each replica's share), whatever the strategy.

It used to be ``Mean.result()``, already averaged over the replicas, which Keras passes through
under ``MirroredStrategy`` but sums over the workers of ``MultiWorkerMirroredStrategy``: the
same two replicas logged 1237.55 on one machine and 2475.10 on two, with identical ``loss``.
The child process below has two logical CPUs (they must be configured before TensorFlow
starts, which pytest's process did long ago).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import derive_config
from tests.training.test_distributed import (
    MIRRORED_TIMEOUT,
    last_json,
    run_cluster,
    run_python,
)

# One step on two mirrored CPUs, and the same weights on one device scoring each replica's half
# of the batch; no dropout, so both see the same alignment values.
SCRIPT = """
    import json, sys
    import tfmmrec  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tfmmrec import pipeline
    from tfmmrec.config import load_config
    from tfmmrec.training.strategy import make_strategy

    config = load_config(sys.argv[1])
    ws = pipeline.prepare(config, progress=False)
    strategy = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    batch = next(iter(pipeline.dataframe_dataset(ws.split.train, 32, seed=1)))
    with strategy.scope():
        model = pipeline.build_model(ws)
        model.build_from_example()
        model.compile(optimizer=tf.keras.optimizers.SGD(0.0))
    alone = pipeline.build_model(ws)
    alone.build_from_example()
    alone.set_weights(model.get_weights())
    logs = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
    halves = []
    for rows in (slice(0, 16), slice(16, 32)):  # replica k's share of the global batch
        alone.alignment_loss.reset_state()
        alone.compute_loss({k: v[rows] for k, v in batch.items()}, training=True)
        halves.append(float(alone.alignment_loss.result()))
    print("RESULT " + json.dumps({"replicas": model.distribute_strategy.num_replicas_in_sync,
                                  "logged": logs["alignment_loss"][0], "halves": halves}))
"""


@pytest.fixture(scope="module")
def two_replica_step(tiny_config, tiny_workspace, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("alignment-replicas")
    config = derive_config(tiny_config, root, "model.modality_dropout=0",
                           "model.user_id_dropout=0", "text.enabled=false")
    config.to_yaml(root / "config.yaml")
    result = run_python(SCRIPT, str(root / "config.yaml"), timeout=MIRRORED_TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    return last_json(result.stdout, "RESULT ")


def test_mirrored_alignment_loss_is_the_sum_of_the_replicas_shares(two_replica_step):
    """As ``loss`` is: each replica's alignment term is that of its half of the batch, and
    the step's is their sum (the mean, half of it, was logged before)."""
    assert two_replica_step["replicas"] == 2
    first, second = two_replica_step["halves"]
    assert first > 0 and second > 0
    assert two_replica_step["logged"] == pytest.approx(first + second, rel=1e-4), json.dumps(
        two_replica_step)


# `tfmmrec train` on two mirrored CPUs in one process (the cluster's replicas, on one machine).
MIRRORED_TRAIN = """
    import sys
    import tfmmrec  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tfmmrec import cli
    sys.exit(cli.main(["train", "--config", sys.argv[1], "--strategy", "mirrored", "--set",
                       "train.devices=['/cpu:0','/cpu:1']"]))
"""


@pytest.fixture(scope="module")
def two_replica_histories(tiny_config, tiny_workspace, tmp_path_factory) -> dict:
    """One epoch of the same config on two replicas: two mirrored CPUs, and two workers."""
    histories = {}
    for name in ("mirrored", "multi_worker"):
        root = tmp_path_factory.mktemp(f"alignment-{name}")
        config = derive_config(tiny_config, root, "train.epochs=1", "text.enabled=false")
        config.to_yaml(root / "config.yaml")
        if name == "mirrored":
            result = run_python(MIRRORED_TRAIN, str(root / "config.yaml"),
                                timeout=MIRRORED_TIMEOUT)
            assert result.returncode == 0, result.stderr[-4000:]
        else:
            for code, _, err in run_cluster(root / "config.yaml"):
                assert code == 0, err[-4000:]
        run = json.loads((Path(config.train.output_dir) / "run.json").read_text())
        histories[name] = run["history"]
    return histories


# Slow (a two-worker cluster and a mirrored run, each preparing and training: ~75 s on 2 shared
# cores); the default suite checks the mirrored value against each replica's share, above.
@pytest.mark.slow
def test_alignment_loss_is_the_same_on_one_machine_and_on_two(two_replica_histories):
    """The review's runs: equal ``loss`` on both, and ``alignment_loss`` the per-replica mean
    on one machine but twice that on two workers."""
    mirrored, cluster = two_replica_histories["mirrored"], two_replica_histories["multi_worker"]
    assert cluster["loss"] == pytest.approx(mirrored["loss"], rel=1e-4)
    assert cluster["alignment_loss"] == pytest.approx(mirrored["alignment_loss"], rel=1e-4)


# The full softmax's candidates are the same on every replica: each adds half of their
# alignment term, so two replicas' logged (summed) term is one device's over the same batch.
CANDIDATES_SCRIPT = SCRIPT.replace('''    halves = []
    for rows in (slice(0, 16), slice(16, 32)):  # replica k's share of the global batch
        alone.alignment_loss.reset_state()
        alone.compute_loss({k: v[rows] for k, v in batch.items()}, training=True)
        halves.append(float(alone.alignment_loss.result()))
    print("RESULT " + json.dumps({"replicas": model.distribute_strategy.num_replicas_in_sync,
                                  "logged": logs["alignment_loss"][0], "halves": halves}))''',
                                   '''    alone.compute_loss(batch, training=True)
    print("RESULT " + json.dumps({"replicas": model.distribute_strategy.num_replicas_in_sync,
                                  "logged": logs["alignment_loss"][0],
                                  "one_device": float(alone.alignment_loss.result())}))''')


def test_the_candidates_alignment_counts_once_whatever_the_replicas(tiny_config, tmp_path):
    """Before, each replica added the whole candidates' term: R replicas trained with R times
    the configured alignment weight (logged 2x one device's here)."""
    assert CANDIDATES_SCRIPT != SCRIPT
    config = derive_config(tiny_config, tmp_path, "model.negatives=full",
                           "model.modality_dropout=0", "model.user_id_dropout=0",
                           "text.enabled=false")
    config.to_yaml(tmp_path / "config.yaml")
    result = run_python(CANDIDATES_SCRIPT, str(tmp_path / "config.yaml"),
                        timeout=MIRRORED_TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    step = last_json(result.stdout, "RESULT ")
    assert step["replicas"] == 2 and step["one_device"] > 0
    assert step["logged"] == pytest.approx(step["one_device"], rel=1e-4), json.dumps(step)
