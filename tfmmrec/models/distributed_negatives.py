"""Models: in-batch negatives across replicas (an all-gather in front of ``tfrs.tasks.Retrieval``).

Under ``tf.distribute`` each replica computes the retrieval loss on its own share of the global
batch, so its in-batch softmax ranks each positive against ``batch / replicas`` candidates
instead of ``batch``: more replicas, fewer negatives, a weaker and different objective.
Gathering every replica's candidate embeddings (and their ids and sampling probabilities) before
the softmax restores the single-device loss exactly; the all-gather's gradient sums each
candidate's gradient over all replicas, so the summed update equals the single-device one.
Cost: one all-gather of ``[batch, d]`` floats per step (plus a ``[batch/R, batch]`` logit matrix
per replica), which is small next to the towers on any interconnect.
"""

from __future__ import annotations

import tensorflow as tf


def gather_candidates(candidates: tf.Tensor, *extras: tf.Tensor | None):
    """All replicas' candidates with this replica's first, and the same for each extra.

    ``tfrs.tasks.Retrieval`` takes row i's positive to be candidate i, so putting the local
    candidates first keeps that true; the other replicas' candidates become extra negatives.
    Outside a multi-replica context the inputs are returned unchanged. Each replica may hold a
    different number of candidates (a short last batch).
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return (candidates, *extras)
    size = tf.shape(candidates)[:1]
    sizes = context.all_gather(size, axis=0)  # [R]
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(tf.where(tf.range(tf.size(sizes)) < replica, sizes,
                                    tf.zeros_like(sizes)))
    total = tf.reduce_sum(sizes)
    local = tf.range(offset, offset + size[0])
    order = tf.concat([local, tf.range(0, offset), tf.range(offset + size[0], total)], axis=0)
    present = [x for x in extras if x is not None]
    gathered = context.all_gather([candidates, *present], axis=0)
    gathered = [tf.gather(x, order) for x in gathered]
    out, rest = [gathered[0]], iter(gathered[1:])
    out += [next(rest) if x is not None else None for x in extras]
    return tuple(out)


class CrossReplicaRetrieval(tf.keras.layers.Layer):
    """A retrieval task whose in-batch softmax spans the global batch across replicas.

    Wraps a ``tfrs.tasks.Retrieval`` (its temperature, logQ correction and accidental-hit
    removal all apply unchanged) and is called like it. With one replica it *is* the wrapped
    task. Queries stay local; candidates, ``candidate_ids`` and
    ``candidate_sampling_probability`` are gathered from every replica.

    Example:
      ``model.task = CrossReplicaRetrieval(tfrs.tasks.Retrieval(temperature=0.1))``
    """

    def __init__(self, task: tf.keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.task = task

    def call(self, query_embeddings, candidate_embeddings, sample_weight=None,
             candidate_sampling_probability=None, candidate_ids=None, compute_metrics=True,
             compute_batch_metrics=True):
        candidates, probability, ids = gather_candidates(
            candidate_embeddings, candidate_sampling_probability, candidate_ids)
        return self.task(query_embeddings, candidates, sample_weight=sample_weight,
                         candidate_sampling_probability=probability, candidate_ids=ids,
                         compute_metrics=compute_metrics,
                         compute_batch_metrics=compute_batch_metrics)

    @property
    def factorized_metrics(self):
        return self.task.factorized_metrics


def use_cross_replica_negatives(model: tf.keras.Model) -> tf.keras.Model:
    """Make a model's ``task`` (a ``tfrs.tasks.Retrieval``) use the whole global batch."""
    if not isinstance(model.task, CrossReplicaRetrieval):
        model.task = CrossReplicaRetrieval(model.task, name="cross_replica_retrieval")
    return model
