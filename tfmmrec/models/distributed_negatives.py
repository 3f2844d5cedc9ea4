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
    # Collective ops are matched across replicas by the order in which each replica creates
    # them, and backprop's order is not fixed: so every float tensor travels in ONE all-gather
    # (one gradient function, one fixed order of collectives inside it). Integers have no
    # gradient; they travel as int64 (int32 tensors live in host memory, and one collective
    # cannot mix host and device tensors).
    size = tf.shape(candidates, out_type=tf.int64)[0]
    replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
    sizes = context.all_gather(tf.reshape(size, [1]), axis=0)  # [R]
    offset = tf.reduce_sum(tf.where(tf.range(tf.size(sizes, out_type=tf.int64)) < replica,
                                    sizes, tf.zeros_like(sizes)))
    end = offset + size

    def local_first(everyone):
        # Slices, not tf.gather: the all-gather's gradient needs a dense tensor.
        return tf.concat([everyone[offset:end], everyone[:offset], everyone[end:]], axis=0)

    floats = [x for x in (candidates, *extras) if x is not None and x.dtype.is_floating]
    ints = [x for x in extras if x is not None and not x.dtype.is_floating]
    widths = [1 if x.shape.rank == 1 else x.shape[-1] for x in floats]
    packed = tf.concat([tf.reshape(tf.cast(x, candidates.dtype), [size, w])
                        for x, w in zip(floats, widths, strict=True)], axis=1)
    unpacked = tf.split(local_first(context.all_gather(packed, axis=0)), widths, axis=1)
    gathered = {id(x): tf.cast(tf.reshape(y, [-1, *x.shape[1:]]), x.dtype)
                for x, y in zip(floats, unpacked, strict=True)}
    for x in ints:
        wide = context.all_gather(tf.cast(x, tf.int64), axis=0)
        gathered[id(x)] = tf.cast(local_first(wide), x.dtype)
    return (gathered[id(candidates)],
            *(gathered[id(x)] if x is not None else None for x in extras))


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
