"""Training → evaluation/export: load a run's checkpoint into a rebuilt model, exactly.

A Keras checkpoint is matched to a model by object path (``item_tower/fusion/mlp/...``), and TF
only *warns* when the two disagree: a model rebuilt with another fusion would keep the new
fusion's random weights and serve them. ``load_exactly`` instead compares the checkpoint's
object graph with the model before loading anything, and refuses unless every value the
checkpoint holds for the model lands in a variable of the same shape and every variable of the
model gets a value. Only the optimizer's state (slots, iteration count) is left unread: it
belongs to training (resuming uses the separate ``BackupAndRestore`` state).
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from tfmmrec.errors import TrainingError, first_line

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Root children that are training state, not model: the optimizer (its slots hang off it).
TRAINING_STATE = ("optimizer/",)
MAX_LISTED = 8
# What TF raises for a checkpoint it cannot read: a missing or bit-flipped file (OpError,
# ValueError), a truncated data file (IndexError "Read less bytes than requested"), I/O. Under
# multi-worker training a restore is also a collective, whose OpError may be a lost peer rather
# than a bad file: ``trainer.PeriodicBackup`` tells them apart (``strategy.is_cluster_failure``).
UNREADABLE = (tf.errors.OpError, ValueError, IndexError, OSError)


def checkpoint_mismatches(model: tf.keras.Model, prefix: str | os.PathLike) -> dict[str, list]:
    """What would not match if ``model`` loaded the checkpoint at ``prefix``.

    Returns ``{"unmatched": [...], "shapes": [...], "missing": [...], "metrics_unread": [...]}``:
    checkpoint values no model variable takes, values whose shape differs from their variable's
    (``name: saved → model``), model variables the checkpoint has no value for, and metric
    accumulators it has none for (training state, not a mismatch). The first three empty: an
    exact match.
    """
    prefix = os.fspath(prefix)
    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor(OBJECT_GRAPH_KEY))
    shapes = reader.get_variable_to_shape_map()
    matched = tf.train.CheckpointView(prefix).match(model)
    unmatched, wrong_shape, restored = [], [], set()
    for node_id, node in enumerate(graph.nodes):
        for attribute in node.attributes:
            key = attribute.checkpoint_key
            if not key.endswith(VALUE_SUFFIX) or key.startswith(TRAINING_STATE):
                continue
            name = key[: -len(VALUE_SUFFIX)]
            variable = matched.get(node_id)
            if not isinstance(variable, tf.Variable):
                unmatched.append(name)
                continue
            restored.add(id(variable))
            saved = shapes.get(key)
            if saved is not None and list(saved) != variable.shape.as_list():
                wrong_shape.append(f"{name}: {list(saved)} → {variable.shape.as_list()}")
    # a metric's running total is training state too: a run saved before a metric was added
    # (``MultitaskModel.ranking_loss``) restores into a model that has it
    metrics = {id(v) for metric in model.metrics for v in metric.variables}
    missing = [v.name for v in model.variables if id(v) not in restored | metrics]
    return {"unmatched": sorted(unmatched), "shapes": sorted(wrong_shape),
            "missing": sorted(missing),
            "metrics_unread": sorted(v.name for v in model.variables
                                     if id(v) in metrics - restored)}


def load_exactly(model: tf.keras.Model, prefix: str | os.PathLike) -> None:
    """Load the weights at ``prefix`` into ``model`` (built), or raise ``TrainingError`` naming
    what does not match (see :func:`checkpoint_mismatches`)."""
    prefix = os.fspath(prefix)
    try:
        problems = checkpoint_mismatches(model, prefix)
    except UNREADABLE as exc:
        raise unreadable(prefix, exc) from None
    if any(problems[kind] for kind in ("unmatched", "shapes", "missing")):
        parts = []
        for kind, label in (("unmatched", "checkpoint values the model has no variable for"),
                            ("shapes", "values of another shape"),
                            ("missing", "model variables the checkpoint has no value for")):
            names = problems[kind]
            if names:
                more = f", … ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
                parts.append(f"{len(names)} {label}: {', '.join(names[:MAX_LISTED])}{more}")
        raise TrainingError(f"the checkpoint {prefix} does not match the model rebuilt for it — "
                            f"{'; '.join(parts)}. The model was built from a different config "
                            "than the one it was trained with (or the code, or the dataset's "
                            "users or items, changed since).")
    try:
        status = model.load_weights(prefix)
    except UNREADABLE as exc:
        raise unreadable(prefix, exc) from None
    # Every model variable got its value (checked above, and again here by TensorFlow, which
    # would also count the metric accumulators a newer model adds); the only values left
    # unread are the optimizer's, which evaluation and export do not need.
    if not problems["metrics_unread"]:
        status.assert_existing_objects_matched()
    status.expect_partial()


def unreadable(prefix: str, exc: Exception) -> TrainingError:
    """The error for a checkpoint TF cannot read (damaged, truncated or missing files)."""
    return TrainingError(f"cannot read the checkpoint {prefix}: {first_line(exc)}. Its files are "
                         "damaged, truncated or missing: train the run again (or restore "
                         "them from a copy)")
