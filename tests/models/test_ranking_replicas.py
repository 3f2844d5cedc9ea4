"""A ranking head under ``tf.distribute``: every task trains on two mirrored CPUs, and the
logged ``ranking_loss`` of a step is the single device's mean over the whole batch.

Before, the head's losses averaged themselves (Keras' default reduction), which Keras refuses
under a strategy: ``fit`` ended in a 46-line traceback for every task on ``mirrored`` (and
summing each replica's mean instead would have given R replicas R times the gradient). The
child process has two logical CPUs (they must be configured before TensorFlow starts).
"""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import derive_config
from tests.training.test_distributed import MIRRORED_TIMEOUT, last_json, run_python

# For each task: one step at learning rate 0 on two mirrored CPUs, and the same weights on one
# device scoring the whole batch; no dropout, so both see the same values.
SCRIPT = """
    import json, sys
    import tfmmrec  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tfmmrec import pipeline
    from tfmmrec.config import load_config
    from tfmmrec.training.strategy import make_strategy

    strategy = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])

    def mirrored_and_alone(*overrides):
        # a first batch, a model on two replicas (learning rate 0), the same weights on one
        ws = pipeline.prepare(load_config(sys.argv[1], list(overrides)), progress=False)
        with strategy.scope():
            model = pipeline.build_model(ws)
            model.build_from_example()
            model.compile(optimizer=tf.keras.optimizers.SGD(0.0))
        alone = pipeline.build_model(ws)
        alone.build_from_example()
        alone.set_weights(model.get_weights())
        return next(iter(pipeline.training_dataset(ws)[0])), model, alone

    results = {}
    for task in ("regression", "listwise", "binary"):
        batch, model, alone = mirrored_and_alone(f"ranking.task={task}")
        logs = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
        alone.ranking_loss.reset_state()
        alone.compute_loss(batch, training=True)
        results[task] = {"replicas": model.distribute_strategy.num_replicas_in_sync,
                         "logged": logs["ranking_loss"][0], "loss": logs["loss"][0],
                         "alone": float(alone.ranking_loss.result())}
    # a short batch split unevenly (3 rows: 2 and 1) or leaving a replica empty (1 row), on a
    # ranking-only model (the retrieval loss needs a row on every replica)
    batch, model, alone = mirrored_and_alone("ranking.retrieval_weight=0")
    for rows in (3, 1):
        short = {k: v[:rows] for k, v in batch.items()}
        logged = model.evaluate(tf.data.Dataset.from_tensors(short), verbose=0,
                                return_dict=True)["loss"]
        results[f"short-{rows}"] = {"logged": logged,
                                    "alone": float(alone.compute_loss(short, training=False))}
    print("RESULT " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def two_replica_steps(tiny_config, tiny_workspace, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ranking-replicas")
    config = derive_config(tiny_config, root, "model.modality_dropout=0",
                           "model.user_id_dropout=0", "text.enabled=false",
                           "model.alignment_weight=0", "ranking.enabled=true",
                           "ranking.deep_layers=[8]", "ranking.list_size=3",
                           "ranking.lists_per_user=2", "train.batch_size=16")
    config.to_yaml(root / "config.yaml")
    result = run_python(SCRIPT, str(root / "config.yaml"), timeout=MIRRORED_TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    return last_json(result.stdout, "RESULT ")


@pytest.mark.parametrize("task", ["regression", "listwise", "binary"])
def test_each_ranking_task_trains_on_two_mirrored_replicas(two_replica_steps, task):
    step = two_replica_steps[task]
    assert step["replicas"] == 2
    assert step["logged"] > 0 and math.isfinite(step["loss"])


@pytest.mark.parametrize("task", ["regression", "listwise"])
def test_the_replicas_ranking_loss_is_the_single_devices_mean(two_replica_steps, task):
    """Each replica adds its rows' summed loss over the global count, so the shares add up
    to the whole batch's mean (binary draws its negatives per replica, so only its size is
    comparable: the test above)."""
    step = two_replica_steps[task]
    assert step["logged"] == pytest.approx(step["alone"], rel=1e-4), json.dumps(step)


@pytest.mark.parametrize("rows", [3, 1])
def test_a_short_batch_split_unevenly_still_gives_the_batchs_mean(two_replica_steps, rows):
    """Each replica divides by the rows of every replica (an all-reduced count): dividing by
    its own rows × R over-weighted the smaller slice (3 rows: 9.16 against 10.76) and made an
    empty one 0/0 (1 row: NaN), as a review found with ``model.evaluate`` on its own data."""
    step = two_replica_steps[f"short-{rows}"]
    assert step["logged"] == pytest.approx(step["alone"], rel=1e-4), json.dumps(step)
