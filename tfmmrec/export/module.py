"""Export: the ``tf.Module`` a SavedModel is written from: query tower, encoders, index, signatures.

Item embeddings are precomputed into the index; queries are computed per request. Because every
modality was trained into one space, a text, image or audio query searches the same index as a
user id. Every signature takes a batch and returns ``item_ids`` and ``scores`` ``[batch, k]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from tfmmrec.config import ServingLimitsConfig
from tfmmrec.data.media import decode_image, decode_wav
from tfmmrec.towers.encoders import Encoder
from tfmmrec.towers.item import ItemTower
from tfmmrec.towers.query import QueryTower

K_SPEC = tf.TensorSpec([], tf.int32, name="k")
BATCH_OF_STRINGS = tf.TensorSpec([None], tf.string)


class RetrievalServingModule(tf.Module):
    """Signatures (all ``predict``):

    - ``serving_default``: ``user_id`` → top-``default_k`` ``item_ids``, ``scores``.
    - ``recommend``: ``user_id``, ``k`` → top-k (``1 <= k <= max_k``, else INVALID_ARGUMENT).
      With a ranking head (``ranking_head``) it is two-stage: retrieve ``retrieve_candidates``
      with the index, re-rank them with the head, return the top k with ``scores`` (ranking
      logits) and ``retrieval_scores``.
    - ``query_text`` / ``query_image`` / ``query_audio``: raw strings / encoded JPEG|PNG|GIF|BMP
      bytes / 16-bit PCM WAV bytes, and ``k`` → top-k items.
    - ``embed_query``: ``user_id`` → ``embedding`` (for a caller's own index).

    Unknown user ids get the trained cold-start query (the out-of-vocabulary row), not an error.
    With ``seen`` (user index → item indices, from training), user-id signatures never return
    an item the user already interacted with.

    ``index`` is a :class:`tfmmrec.export.index.TopKIndex` (any kind) over item positions.
    ``limits`` are compiled into every signature and checked before the work they bound (batch
    size, text bytes before tokenising, image header size before decoding, WAV rate and length
    before resampling); a request over a limit fails with INVALID_ARGUMENT naming it. Empty
    batches are INVALID_ARGUMENT in every signature.
    """

    def __init__(self, query_tower: QueryTower, item_tower: ItemTower,
                 encoders: Mapping[str, Encoder], item_embeddings: np.ndarray, index,
                 *, item_ids: np.ndarray, default_k: int, max_k: int, image_size: int,
                 sample_rate: int, max_seconds: float, ranking_head=None,
                 retrieve_candidates: int = 100, seen: list[np.ndarray] | None = None,
                 limits: ServingLimitsConfig | None = None):
        super().__init__(name="tfmmrec")
        self.limits = limits or ServingLimitsConfig()
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.encoders = dict(encoders)
        self.index = index
        num_items = int(item_embeddings.shape[0])
        self.item_table = tf.Variable(item_embeddings, trainable=False, name="item_embeddings")
        self.item_ids = tf.Variable(np.asarray(item_ids).astype(str), trainable=False,
                                    name="item_ids")
        self.default_k = default_k
        self.max_k = min(max_k, num_items)
        self.ranking_head = ranking_head
        self.retrieve_candidates = max(self.max_k, min(retrieve_candidates, num_items))
        self.seen_table, self.max_seen = _seen_table(seen, num_items)
        self.image_size = image_size
        self.sample_rate = sample_rate
        self.max_samples = int(max_seconds * sample_rate)
        self._build_signature_functions(default_k)

    def _build_signature_functions(self, default_k: int) -> None:
        """Signature functions taking ``k`` default it to ``default_k``: the SavedModel records
        it in the SignatureDef's ``defaults``, so a request may omit ``k`` (TF Serving ≥ 2.12)."""
        default = tf.constant(min(default_k, self.max_k), tf.int32)

        def with_default_k(implementation, input_name: str):
            def signature(inputs, k=default):
                return implementation(inputs, k)

            return tf.function(signature, input_signature=[
                tf.TensorSpec([None], tf.string, name=input_name), K_SPEC])

        self.recommend = with_default_k(self._recommend, "user_id")
        # Only the modalities the model has: saving traces every tf.function attribute.
        for modality in self.item_tower.modalities:
            implementation = getattr(self, f"_query_{modality}")
            setattr(self, f"query_{modality}", with_default_k(implementation, modality))

    # -- building blocks -------------------------------------------------------------------
    def _embed_items(self, item_index, training=False):
        return tf.gather(self.item_table, item_index)

    def _user_queries(self, user_id):
        user_id = self._check_batch(user_id, "user_id")
        return self.query_tower(user_id, item_embedder=self._embed_items, training=False)

    def _check_batch(self, values, name: str):
        """``values`` once its batch is non-empty and within ``limits.max_batch_size``."""
        size = tf.size(values)
        limit = self.limits.max_batch_size
        checks = [
            tf.debugging.Assert(size > 0, [f"{name}: empty batch - send at least one item"]),
            tf.debugging.Assert(size <= limit, [
                f"{name}: batch larger than export.limits.max_batch_size={limit}:", size]),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(values)

    def _check_k(self, k):
        k = tf.convert_to_tensor(k, tf.int32)
        tf.debugging.assert_greater_equal(k, 1, message="k must be >= 1")
        tf.debugging.assert_less_equal(k, self.max_k, message=f"k must be <= max_k={self.max_k}")
        return k

    def _retrieve(self, queries, count: int, user_id=None):
        """Top ``count`` (scores, item indices), skipping seen items when a seen set is baked in.

        The index is asked for ``count + max_seen`` results, so ``count`` unseen ones remain.
        """
        if self.seen_table is None or user_id is None:
            return self.index(queries, k=count)
        fetch = min(count + self.max_seen, int(self.item_table.shape[0]))
        scores, items = self.index(queries, k=fetch)
        users = tf.cast(self.query_tower.lookup(user_id), tf.int64)
        keys = users[:, None] * int(self.item_table.shape[0]) + tf.cast(items, tf.int64)
        seen = self.seen_table.lookup(keys) > 0
        scores = tf.where(seen, tf.fill(tf.shape(scores), float("-inf")), scores)
        scores, order = tf.math.top_k(scores, k=count)
        return scores, tf.gather(items, order, batch_dims=1)

    def _top_k(self, queries, k, user_id=None):
        k = self._check_k(k)
        scores, items = self._retrieve(queries, self.max_k, user_id)
        return _shaped({"item_ids": tf.gather(self.item_ids, items[:, :k]),
                        "scores": scores[:, :k]})

    def _two_stage(self, user_id, k):
        """Retrieve N candidates, re-rank them with the ranking head, keep the top k."""
        k = self._check_k(k)
        queries = self._user_queries(user_id)
        retrieval_scores, items = self._retrieve(queries, self.retrieve_candidates, user_id)
        candidates = tf.gather(self.item_table, items)
        n = tf.shape(items)[1]
        dim = self.item_table.shape[1]
        logits = tf.reshape(self.ranking_head(
            tf.reshape(tf.repeat(queries[:, None, :], n, axis=1), [-1, dim]),
            tf.reshape(candidates, [-1, dim])), [-1, n])
        ranking_scores, order = tf.math.top_k(logits, k=k)
        return _shaped({
            "item_ids": tf.gather(self.item_ids, tf.gather(items, order, batch_dims=1)),
            "scores": ranking_scores,
            "retrieval_scores": tf.gather(retrieval_scores, order, batch_dims=1)})

    def _content_queries(self, modality: str, content):
        encoder = self.encoders[modality]
        if modality not in self.item_tower.encoders:
            content = encoder(content, training=False)
        return self.item_tower.embed_single(modality, content)

    # -- signatures --------------------------------------------------------------------------
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve_default(self, user_id):
        return self._top_k(self._user_queries(user_id), self.default_k, user_id)

    def _recommend(self, user_id, k):
        if self.ranking_head is not None:
            return self._two_stage(user_id, k)
        return self._top_k(self._user_queries(user_id), k, user_id)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def embed_query(self, user_id):
        return {"embedding": self._user_queries(user_id)}

    def _query_text(self, text, k):
        text = self._check_batch(text, "text")
        lengths = tf.strings.length(text)
        limit = self.limits.max_text_bytes
        checks = [
            tf.debugging.Assert(tf.reduce_all(lengths > 0),
                                ["text: empty string in the batch"]),
            tf.debugging.Assert(tf.reduce_all(lengths <= limit), [
                f"text: a text is longer than export.limits.max_text_bytes={limit} bytes; "
                "lengths:", lengths], summarize=8),
        ]
        with tf.control_dependencies(checks):  # before the tokenizer sees a byte
            text = tf.identity(text)
        return self._top_k(self._content_queries("text", text), k)

    def _query_image(self, image, k):
        image = self._check_batch(image, "image")
        pixels = self.limits.max_image_pixels
        images = tf.map_fn(lambda b: decode_image(b, self.image_size, pixels), image,
                           fn_output_signature=tf.TensorSpec(
                               [self.image_size, self.image_size, 3], tf.float32))
        return self._top_k(self._content_queries("image", images), k)

    def _query_audio(self, audio, k):
        audio = self._check_batch(audio, "audio")
        waveforms = tf.map_fn(self._decode_clip, audio, fn_output_signature=(
            tf.TensorSpec([self.max_samples], tf.float32), tf.TensorSpec([], tf.int32)))
        batch = {"waveform": waveforms[0], "length": waveforms[1]}
        return self._top_k(self._content_queries("audio", batch), k)

    def _decode_clip(self, wav_bytes):
        limits = self.limits
        wave = decode_wav(wav_bytes, self.sample_rate, self.max_samples,
                          rate_range=(limits.min_sample_rate, limits.max_sample_rate),
                          max_seconds=limits.max_audio_seconds)
        length = tf.shape(wave)[0]
        tf.debugging.assert_greater(length, 0, message="audio clip is empty")
        return tf.pad(wave, [[0, self.max_samples - length]]), length

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The signatures to save; query_* only for the modalities the model has."""
        signatures = {
            "serving_default": self.serve_default.get_concrete_function(),
            "recommend": self.recommend,  # the tf.function itself, so `k`'s default is saved
            "embed_query": self.embed_query.get_concrete_function(),
        }
        for modality in self.item_tower.modalities:
            signatures[f"query_{modality}"] = getattr(self, f"query_{modality}")
        return signatures


def _shaped(outputs: dict) -> dict:
    """Give every output a known rank, so signature metadata shows ``[-1, -1]`` shapes."""
    return {name: tf.ensure_shape(value, [None, None]) for name, value in outputs.items()}


def _seen_table(seen: list[np.ndarray] | None, num_items: int):
    """A hash set of ``user_index * num_items + item_index`` keys (row 0: unknown user)."""
    if seen is None:
        return None, 0
    keys = np.concatenate([user * num_items + np.asarray(items, np.int64)
                           for user, items in enumerate(seen) if len(items)] or
                          [np.zeros(0, np.int64)])
    if keys.size == 0:
        return None, 0
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.int64),
                                            tf.ones(keys.size, tf.int64)), default_value=0)
    return table, max(len(items) for items in seen)

