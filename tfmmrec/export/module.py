"""Export: the ``tf.Module`` a SavedModel is written from: query tower, encoders, index, signatures.

Item embeddings are precomputed into the index; queries are computed per request. Because every
modality was trained into one space, a text, image or audio query searches the same index as a
user id. Every signature takes a batch and returns ``item_ids`` and ``scores`` ``[batch, k]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

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
    - ``query_text`` / ``query_image`` / ``query_audio``: raw strings / encoded JPEG|PNG|GIF|BMP
      bytes / 16-bit PCM WAV bytes, and ``k`` → top-k items.
    - ``embed_query``: ``user_id`` → ``embedding`` (for a caller's own index).

    Unknown user ids get the trained cold-start query (the out-of-vocabulary row), not an error.
    """

    def __init__(self, query_tower: QueryTower, item_tower: ItemTower,
                 encoders: Mapping[str, Encoder], item_embeddings: np.ndarray, index,
                 *, default_k: int, max_k: int, image_size: int, sample_rate: int,
                 max_seconds: float):
        super().__init__(name="tfmmrec")
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.encoders = dict(encoders)
        self.index = index
        self.item_table = tf.Variable(item_embeddings, trainable=False, name="item_embeddings")
        self.default_k = default_k
        self.max_k = min(max_k, int(item_embeddings.shape[0]))
        self.image_size = image_size
        self.sample_rate = sample_rate
        self.max_samples = int(max_seconds * sample_rate)

    # -- building blocks -------------------------------------------------------------------
    def _embed_items(self, item_index, training=False):
        return tf.gather(self.item_table, item_index)

    def _user_queries(self, user_id):
        return self.query_tower(user_id, item_embedder=self._embed_items, training=False)

    def _top_k(self, queries, k):
        k = tf.convert_to_tensor(k, tf.int32)
        checks = [
            tf.debugging.assert_greater_equal(k, 1, message="k must be >= 1"),
            tf.debugging.assert_less_equal(k, self.max_k,
                                           message=f"k must be <= max_k={self.max_k}"),
        ]
        with tf.control_dependencies(checks):
            scores, item_ids = self.index(queries, k=self.max_k)
            return {"item_ids": item_ids[:, :k], "scores": scores[:, :k]}

    def _content_queries(self, modality: str, content):
        encoder = self.encoders[modality]
        if modality not in self.item_tower.encoders:
            content = encoder(content, training=False)
        return self.item_tower.embed_single(modality, content)

    # -- signatures --------------------------------------------------------------------------
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve_default(self, user_id):
        return self._top_k(self._user_queries(user_id), self.default_k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"), K_SPEC])
    def recommend(self, user_id, k):
        return self._top_k(self._user_queries(user_id), k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def embed_query(self, user_id):
        return {"embedding": self._user_queries(user_id)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"), K_SPEC])
    def query_text(self, text, k):
        _require_nonempty(text, "text")
        return self._top_k(self._content_queries("text", text), k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image"), K_SPEC])
    def query_image(self, image, k):
        images = tf.map_fn(lambda b: decode_image(b, self.image_size), image,
                           fn_output_signature=tf.TensorSpec(
                               [self.image_size, self.image_size, 3], tf.float32))
        return self._top_k(self._content_queries("image", images), k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="audio"), K_SPEC])
    def query_audio(self, audio, k):
        waveforms = tf.map_fn(self._decode_clip, audio, fn_output_signature=(
            tf.TensorSpec([self.max_samples], tf.float32), tf.TensorSpec([], tf.int32)))
        batch = {"waveform": waveforms[0], "length": waveforms[1]}
        return self._top_k(self._content_queries("audio", batch), k)

    def _decode_clip(self, wav_bytes):
        wave = decode_wav(wav_bytes, self.sample_rate, self.max_samples)
        length = tf.shape(wave)[0]
        tf.debugging.assert_greater(length, 0, message="audio clip is empty")
        return tf.pad(wave, [[0, self.max_samples - length]]), length

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The signatures to save; query_* only for the modalities the model has."""
        signatures = {
            "serving_default": self.serve_default.get_concrete_function(),
            "recommend": self.recommend.get_concrete_function(),
            "embed_query": self.embed_query.get_concrete_function(),
        }
        for modality in self.item_tower.modalities:
            function = getattr(self, f"query_{modality}")
            signatures[f"query_{modality}"] = function.get_concrete_function()
        return signatures


def _require_nonempty(strings, name: str) -> None:
    tf.debugging.assert_greater(tf.size(strings), 0, message=f"{name}: empty batch")
    tf.debugging.assert_greater(tf.strings.length(strings), 0,
                                message=f"{name}: empty string in the batch")
