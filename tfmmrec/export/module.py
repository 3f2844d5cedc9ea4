"""Export: the ``tf.Module`` a SavedModel is written from: query tower, encoders, index, signatures.

Item embeddings are precomputed into the index; queries are computed per request. Because every
modality was trained into one space, a text, image or audio query searches the same index as a
user id. Every retrieval signature takes a batch and returns ``item_ids`` and ``scores``
``[batch, k]``.

The model's own functions (user query, content queries, item-content embedding, ranking head)
live in a separate :class:`ServingTowers` module saved inside every version. A catalogue update
(``tfmmrec.export.catalog``) loads the newest version, reuses those restored functions as they
are, and writes the next version around a new item table and index: no Python model, config or
training data is needed to add, change or remove items.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec import modalities
from tfmmrec.config import CONTENT_SEARCH, ServingLimitsConfig
from tfmmrec.errors import ExportError
from tfmmrec.export.index.base import catalog_variable, gather_rows
from tfmmrec.towers.encoders import Encoder
from tfmmrec.towers.item import ItemTower
from tfmmrec.towers.query import QueryTower

POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD

K_SPEC = tf.TensorSpec([], tf.int32, name="k")
BATCH_OF_STRINGS = tf.TensorSpec([None], tf.string)
# The request-time lists (items to exclude, a session's recent items) are padded with "".
EXCLUDE_SPEC = tf.TensorSpec([None, None], tf.string, name="exclude_item_ids")
SESSION_SPEC = tf.TensorSpec([None, None], tf.string, name="session_item_ids")
# A place of a [batch, k] result no allowed item fills (the catalogue holds fewer than k items
# besides the excluded and seen ones): id "" and the lowest float32, so it sorts last, never
# names an excluded item, and stays valid JSON (-inf is not).
MISSING_ITEM_ID = ""
MISSING_SCORE = float(np.finfo(np.float32).min)
# The towers' functions a catalogue update calls, saved apart (``ItemEmbedder``).
ITEM_EMBEDDER_FUNCTIONS = ("embed_item_content", "embed_item_content_with_text")
# The one modality text search adds a second space for (``export.text_search_weight``): it
# searches the frozen encoder's own features of typed text, which only a text tower has.
TEXT_SEARCH_MODALITY = "text"


def serving_function(python_function, input_signature: list) -> tf.types.experimental.Function:
    """``tf.function`` for a serving graph: fixed signature, no AutoGraph. Serving code is
    written in graph ops (``tf.cond``, ``tf.while_loop``), so AutoGraph would only convert it
    (and every Keras layer it calls) on each trace: the first export of a process and each
    catalogue update that re-traces took 1.44x as long with it (tiny model: 24.6 vs 17.1 s)."""
    return tf.function(python_function, input_signature=input_signature, autograph=False)


class ServingTowers(tf.Module):
    """The trained model as the export needs it: a handful of batch functions, saved and
    restorable on their own (``loaded.towers.<function>``).

    - ``user_query(user_id)`` → ``[B, d]``: the query tower (unknown ids: cold-start row).
    - ``text_query`` / ``image_query`` / ``audio_query``: raw request content (strings, encoded
      image bytes, 16-bit PCM WAV bytes) → ``[B, d]`` single-modality query embeddings.
    - ``embed_item_content(content)`` → ``[B, d]``: an item's serving embedding from its decoded
      content (``text`` strings, ``image`` ``[B, S, S, 3]`` in [0, 1], ``waveform`` ``[B, T]`` +
      ``length``, each with a ``<modality>_mask``) and ``item_id`` (a trained id-embedding row
      joins when the model has one and the id was in training). It runs the frozen encoders and
      the item tower exactly as the cached-feature path does, so an item added later embeds as
      it would have at export.
    - ``session_query(user_id, session_item_ids)`` (models with a history encoder,
      ``model.user_history``) → ``{"query": [B, d], "in_history": [B, H]}``: the user query
      of a user whose history is their stored training history followed by the session's
      items (``""`` user: none stored), and which session items it pooled (those of the
      training catalogue; the history encoder has no row for the others).
    - ``text_search_query(text)`` and ``embed_item_content_with_text(content)`` (only with
      ``text_search``): a text request's hybrid search vector ``[q, f]`` (the unit text-alone
      embedding's content columns, the unit frozen text feature), and ``embed_item_content``'s
      ``embedding`` with the item's unit ``text_feature`` (zeros without text) beside it; see
      :func:`text_search_table`.
    - ``score_candidates(queries, candidates)`` → ``[B, N]`` ranking logits (two-stage models).
    - ``is_seen(user_id, training_item_index)`` → ``[B, K]`` (only with ``exclude_seen``).

    ``training_item_ids`` (a variable) is the training catalogue: the id-embedding rows, the
    history rows and the seen-set keys all refer to positions in it, so they stay valid however
    the served catalogue changes later.
    """

    def __init__(self, query_tower: QueryTower, item_tower: ItemTower,
                 encoders: Mapping[str, Encoder], *, training_item_ids: np.ndarray,
                 training_item_embeddings: np.ndarray,
                 settings: Mapping[str, Any] | None = None, ranking_head=None,
                 seen: list[np.ndarray] | None = None,
                 limits: ServingLimitsConfig | None = None,
                 history_half_life: float = 0.0, history_max_length: int = 0,
                 text_search: bool = False):
        super().__init__(name="towers")
        # Compiled into every function (so catalogue updates keep them): checked before the
        # work they bound (batch size, text bytes before tokenising, image header before
        # decoding, WAV rate and length before resampling).
        self.limits = limits or ServingLimitsConfig()
        # The Keras layers are held untracked (a SimpleNamespace is not a trackable): the
        # SavedModel keeps only their variables, lookup tables and the functions below, not
        # Keras's per-layer serialization, so loading and re-saving a version (what a
        # catalogue update does) costs seconds, not minutes.
        layers = [query_tower, item_tower, *encoders.values(),
                  *([ranking_head] if ranking_head is not None else [])]
        self._model = SimpleNamespace(query_tower=query_tower, item_tower=item_tower,
                                      encoders=dict(encoders), ranking_head=ranking_head)
        # ``serving_variables``: what an encoder's inference-only path reads beyond its
        # weights (a text encoder's fused backbone copy, ``export.text_backbone: fused``).
        self.model_variables = _unique([
            v for layer in layers
            for v in [*layer.variables, *getattr(layer, "serving_variables", ())]])
        self.model_resources = _unique([r for layer in layers for r in _resources(layer)])
        # Preprocessing settings (image_size, max_seconds, ...), the registry's defaults unless
        # given; read-only (a plain dict would be wrapped into a trackable).
        self.settings = MappingProxyType(modalities.resolve_settings(dict(settings or {})))
        ids = np.asarray(utf8_texts(training_item_ids), dtype=object)
        self.training_item_ids = tf.Variable(ids, trainable=False, name="training_item_ids")
        self.num_training_items = len(ids)
        # Training id → position: sorted id hashes in variables, like the served ids (a hash
        # table's 1M keys were a 16 MB graph constant every update re-read).
        keys, rows = _sorted_id_keys(ids)
        self.training_item_keys = tf.Variable(keys, trainable=False, name="training_item_keys")
        self.training_key_rows = tf.Variable(rows, trainable=False, name="training_key_rows")
        # History pooling in the query tower reads training-item embeddings by position.
        self.history_table = None
        if query_tower.history is not None:
            self.history_table = tf.Variable(training_item_embeddings, trainable=False,
                                             name="history_item_embeddings")
        self.seen_table, self.max_seen = _seen_table(seen, len(ids))
        # A session extends a user's history the way training built it
        # (towers.history.history_table): recency weights, most recent items kept.
        if history_half_life < 0 or history_max_length < 0:
            raise ValueError("history_half_life and history_max_length must be >= 0, got "
                             f"{history_half_life} and {history_max_length}")
        self.history_half_life = float(history_half_life)
        self.history_max_length = int(history_max_length)
        if query_tower.history_encoder is not None:
            self.session_query = serving_function(self._session_query, [
                BATCH_OF_STRINGS, tf.TensorSpec([None, None], tf.string)])
        dim = int(training_item_embeddings.shape[1])
        self.user_query = serving_function(self._user_query, [BATCH_OF_STRINGS])
        for modality in item_tower.modalities:
            setattr(self, f"{modality}_query", serving_function(
                self._content_query_function(modality), [modalities.get(modality).request_spec]))
        if item_tower.modalities:
            self.embed_item_content = serving_function(self._embed_item_content,
                                                       [self.content_spec()])
        if text_search:
            if (TEXT_SEARCH_MODALITY not in item_tower.modalities
                    or TEXT_SEARCH_MODALITY in item_tower.encoders):
                raise ValueError("export.text_search_weight > 0 needs a text tower with a frozen "
                                 "encoder")
            self.text_search_query = serving_function(self._text_search_query,
                                                      [BATCH_OF_STRINGS])
            self.embed_item_content_with_text = serving_function(
                self._embed_item_content_with_text, [self.content_spec()])
        if ranking_head is not None:
            self.score_candidates = serving_function(self._score_candidates, [
                tf.TensorSpec([None, dim], tf.float32),
                tf.TensorSpec([None, None, dim], tf.float32)])
        if self.seen_table is not None:
            self.is_seen = serving_function(self._is_seen, [
                BATCH_OF_STRINGS, tf.TensorSpec([None, None], tf.int64)])

    def content_spec(self) -> dict[str, tf.TensorSpec]:
        """Inputs of ``embed_item_content`` for the modalities this model has."""
        spec = {"item_id": tf.TensorSpec([None], tf.string)}
        for modality in self._model.item_tower.modalities:
            spec[f"{modality}_mask"] = tf.TensorSpec([None], tf.bool)
        for modality in self._model.item_tower.modalities:
            spec.update(modalities.get(modality).content_spec(self.settings))
        return spec

    # -- implementations ------------------------------------------------------------------
    def _history_item(self, item_index, training=False):
        return gather_rows(self.history_table, item_index)

    def _check_batch(self, values, name: str):
        """``values`` once its batch is non-empty and within ``limits.max_batch_size``."""
        return check_batch(values, name, self.limits.max_batch_size)

    def _user_query(self, user_id):
        user_id = self._check_batch(user_id, "user_id")
        embedder = self._history_item if self.history_table is not None else None
        return self._model.query_tower(user_id, item_embedder=embedder, training=False)

    def _training_positions(self, item_ids):
        """Position of each id in the training catalogue (−1: not a training item)."""
        return _lookup_sorted(self.training_item_keys, self.training_key_rows,
                              self.training_item_ids, item_ids)

    def _session_query(self, user_id, session_item_ids):
        """The query of each user with the session's training items appended to their stored
        history (see :func:`extend_history` and :func:`query_with_history`)."""
        user_id = self._check_batch(user_id, "user_id")
        tower = self._model.query_tower
        stored_items, stored_weights = tower.history_encoder.gather(tower.lookup(user_id))
        positions = self._training_positions(session_item_ids)
        in_history = positions >= 0
        items, weights = extend_history(
            stored_items, stored_weights, tf.ragged.boolean_mask(positions, in_history),
            half_life=self.history_half_life, max_length=self.history_max_length)
        embedder = self._history_item if self.history_table is not None else None
        query = query_with_history(tower, user_id, items, weights, item_embedder=embedder)
        return {"query": query, "in_history": in_history}

    def _features(self, modality: str, content):
        """Content as decoded → what ``item_tower.project`` takes (features unless the encoder
        runs inside the tower)."""
        if modality in self._model.item_tower.encoders:
            return content
        return self._model.encoders[modality](content, training=False)

    def _content_query_function(self, modality: str):
        """``<modality>_query``: raw request content → ``[B, d]`` single-modality embeddings."""
        def query(request):
            return self._content_query(modality, request)

        query.__name__ = f"{modality}_query"  # readable function names in the SavedModel
        return query

    def _content_query(self, modality: str, request):
        request = self._check_batch(request, modality)
        raw = modalities.get(modality).decode_request(request, self.settings, self.limits)
        return self._model.item_tower.embed_single(modality, self._features(modality, raw))

    def _item_inputs(self, content) -> dict:
        """Decoded content → the item tower's inputs (features, masks)."""
        inputs = {}
        for modality in self._model.item_tower.modalities:
            raw = modalities.get(modality).unpack(content, self.settings)
            inputs[modality] = self._features(modality, raw)
            inputs[f"{modality}_mask"] = tf.cast(content[f"{modality}_mask"], tf.float32)
        return inputs

    def _embed_item_content(self, content):
        return self._embed_inputs(self._item_inputs(content), content["item_id"])

    def _embed_inputs(self, inputs: dict, item_id):
        tower = self._model.item_tower
        embeddings = tower(inputs, training=False)
        if tower.id_embedding is None:
            return embeddings
        index = self._training_positions(item_id)
        with_id = tower({**inputs, "item_index": tf.cast(tf.maximum(index, 0), tf.int32)},
                        training=False)
        return tf.where((index >= 0)[:, None], with_id, embeddings)

    def _embed_item_content_with_text(self, content):
        """``embed_item_content`` and the item's unit frozen text feature (zeros without
        text): the encoder runs once for both."""
        inputs = self._item_inputs(content)
        feature = (tf.math.l2_normalize(inputs[TEXT_SEARCH_MODALITY], axis=-1)
                   * inputs[f"{TEXT_SEARCH_MODALITY}_mask"][:, None])
        return {"embedding": self._embed_inputs(inputs, content["item_id"]),
                "text_feature": feature}

    def _text_search_query(self, text):
        """``[unit text-alone embedding (content columns), unit frozen feature]``: the query
        side of :func:`text_search_table`; the encoder runs once for both."""
        text = self._check_batch(text, TEXT_SEARCH_MODALITY)
        raw = modalities.get(TEXT_SEARCH_MODALITY).decode_request(text, self.settings,
                                                                  self.limits)
        tower = self._model.item_tower
        features = self._features(TEXT_SEARCH_MODALITY, raw)
        query = tf.math.l2_normalize(
            tower.embed_single(TEXT_SEARCH_MODALITY, features)[:, :tower.dim], axis=-1)
        return tf.concat([query, tf.math.l2_normalize(features, axis=-1)], axis=-1)

    def _score_candidates(self, queries, candidates):
        n = tf.shape(candidates)[1]
        dim = candidates.shape[-1]
        logits = self._model.ranking_head(tf.reshape(tf.repeat(queries[:, None, :], n, axis=1),
                                              [-1, dim]), tf.reshape(candidates, [-1, dim]))
        return tf.reshape(logits, [-1, n])

    def _is_seen(self, user_id, training_item_index):
        users = tf.cast(self._model.query_tower.lookup(user_id), tf.int64)
        keys = users[:, None] * self.num_training_items + training_item_index
        return (self.seen_table.lookup(keys) > 0) & (training_item_index >= 0)


class ItemEmbedder(tf.Module):
    """``embed_item_content`` (and ``embed_item_content_with_text``, with text search) of a
    :class:`ServingTowers` (saved or restored) with only what they read: saved beside every
    version (``assets.extra/item_embedder``, which servers ignore) so a catalogue update loads
    one function instead of every signature's (the towers' own functions are the same traces,
    so an item embeds exactly as through the version)."""

    def __init__(self, towers):
        super().__init__(name="item_embedder")
        # Only what the functions capture: without an item-id embedding they read neither the
        # query tower's weights nor the training ids (1M ids, keys and rows restored for
        # nothing by every update at 1M items).
        functions = [getattr(towers, name) for name in ITEM_EMBEDDER_FUNCTIONS
                     if hasattr(towers, name)]
        captured = {id(t) for function in functions
                    for t in function.get_concrete_function().captured_inputs}

        def used(objects):
            return [o for o in objects if id(getattr(o, "handle", None)) in captured
                    or id(getattr(o, "resource_handle", None)) in captured]

        self.model_variables = used(towers.model_variables)
        self.model_resources = used(towers.model_resources)
        self.training = used([getattr(towers, name) for name in (
            "training_item_ids", "training_item_keys", "training_key_rows")
            if hasattr(towers, name)])  # older exports kept a hash table instead
        for name in ITEM_EMBEDDER_FUNCTIONS:
            if hasattr(towers, name):
                setattr(self, name, getattr(towers, name))


def text_search_table(item_embeddings, text_features, *, content_dim: int,
                      weight: float) -> tf.Tensor:
    """``[N, content_dim + F]`` rows ``[unit(e[:content_dim]), weight · f]``: what
    ``query_text`` searches with text search on (``export.text_search_weight``).

    Against a query ``[unit(q), unit(f_q)]`` (``ServingTowers.text_search_query``) a row
    scores ``cos(q, e) + weight · cos(f_q, f)``: the trained space (whose content columns
    match what users engaged with) plus the frozen encoder's own text similarity, which finds
    a film by its title or a sentence of its plot (``benchmarks/query_by_content.py
    --hybrid``). ``f`` is unit or zero (an item without text), ``e``'s content columns are
    the first ``content_dim`` (a linear-CF part after them is left out, as text queries
    leave it)."""
    content = tf.cast(item_embeddings, tf.float32)[:, :content_dim]
    return tf.concat([tf.math.l2_normalize(content, axis=-1),
                      weight * tf.cast(text_features, tf.float32)], axis=-1)


@dataclass(frozen=True)
class TextSearch:
    """``query_text``'s own index (``export.text_search_weight`` > 0;
    ``catalog.text_search_settings``): ``index`` over :func:`text_search_table` of the served
    embeddings and ``features`` (``[N, F]``, each item's unit frozen text feature, zeros
    without text; kept in the version so a catalogue update can rebuild the table)."""

    weight: float
    content_dim: int
    features: np.ndarray | tf.Tensor
    index: Any

    def metadata(self) -> dict:
        return {"weight": self.weight, "content_dim": self.content_dim,
                "feature_dim": int(self.features.shape[1])}


def over_fetch(max_exclude: int, max_seen: int = 0, max_session_items: int = 0) -> int:
    """How many more results than a request asks for the index must return, so that the asked
    number of allowed ones remain whatever the request excludes: its ``exclude_item_ids``, the
    user's baked seen items and the session's own items (``0`` for a part that does not apply).
    The index's depth (``catalog.write_catalog_version``) and each signature's fetch
    (:meth:`RetrievalServingModule._retrieve`) both follow from it."""
    return int(max_exclude) + int(max_seen) + int(max_session_items)


def retrieve_candidates_error(retrieve_candidates: int, max_k: int) -> str:
    """Why a two-stage export cannot re-rank fewer candidates than a request may ask for: it
    used to retrieve ``max_k`` instead, while its metadata said ``retrieve_candidates``."""
    return (f"ranking.retrieve_candidates={retrieve_candidates} is below export.max_k={max_k}: "
            "a two-stage recommend re-ranks its candidates and may be asked for max_k results; "
            f"set export.max_k <= {retrieve_candidates} or ranking.retrieve_candidates >= "
            f"{max_k}")


class RetrievalServingModule(tf.Module):
    """Signatures (all ``predict``):

    - ``serving_default``: ``user_id`` → top-``default_k`` ``item_ids``, ``scores``.
    - ``recommend``: ``user_id``, ``k`` → top-k (``1 <= k <= max_k``, else INVALID_ARGUMENT).
      With a ranking head it is two-stage: retrieve ``retrieve_candidates`` with the index,
      re-rank them with the head, return the top k with ``scores`` (ranking logits) and
      ``retrieval_scores``.
    - ``recommend_session``: ``session_item_ids`` ``[B, H]`` (a session's recent items, oldest
      first, ""-padded), optional ``user_id`` (may be "" or unknown), ``k`` and
      ``viewed_<modality>`` for every registered modality (``viewed_text`` /
      ``viewed_image`` / ``viewed_audio``: content just looked at, "" for none) → top-k; see
      :meth:`_session_queries` for the query it builds (with a history encoder: the query of
      a user whose history ends with the session). The session's own items are never
      returned (``exclude_session_items``, ``export.exclude_session_items``).
    - ``query_text`` / ``query_image`` / ``query_audio``: raw strings / encoded JPEG|PNG|GIF|BMP
      bytes / 16-bit PCM WAV bytes, and ``k`` → top-k items. With ``text_search``
      (:class:`TextSearch`) ``query_text`` searches its own index, scoring
      ``cos(q, e) + w · cos(f_q, f)`` (:func:`text_search_table`). With
      ``content_search="every_item"`` (the export's default) these score every item
      (``TopKIndex.search_every_item``: exact, or ScaNN over every leaf) instead of the
      partitions a user query visits, which miss many of a content query's items.
    - ``embed_query``: ``user_id`` → ``embedding``; ``embed_items``: ``item_id`` →
      ``embedding`` (the served item embedding, zeros for an unknown id) and ``found`` (for a
      caller's own index or to score chosen items). Every signature refuses an empty batch and
      one of more than ``max_batch_size`` rows (``export.limits.max_batch_size``), and
      every signature an id (``user_id``, ``session_item_ids``, ``exclude_item_ids``,
      ``item_id``) longer than ``max_id_bytes`` (``export.limits.max_id_bytes``).

    Every retrieval signature but ``serving_default`` (kept single-input for TF Serving's REST
    row format) also takes ``exclude_item_ids`` ``[B, E]`` (optional, ""-padded,
    ``E <= max_exclude``): those items are never returned ("already seen", "out of stock"). The
    index is asked for ``max_exclude`` more results than needed and the excluded ones masked
    in-graph, so the cost is bounded. Unknown user ids get the trained cold-start query, not an
    error. With a baked seen set (``export.exclude_seen``), user-id signatures also skip the
    user's training items. Outputs keep their ``[B, k]`` shape: when fewer than k allowed items
    exist (a catalogue smaller than k plus the excluded/seen ones) the places left are padded
    with id ``MISSING_ITEM_ID`` ("") and score ``MISSING_SCORE`` (the lowest float32; finite,
    so the response stays valid JSON), after every real item.

    ``build_signatures=False`` defers creating the signature functions to :meth:`signatures`:
    a catalogue update that stores this module's variables under a previous version's graph
    never needs them. ``item_embeddings`` may be a ``tf.Tensor`` (a table read from a
    checkpoint), which is then not copied through numpy.
    """

    def __init__(self, towers, item_embeddings: np.ndarray, index, *, item_ids: np.ndarray,
                 default_k: int, max_k: int, retrieve_candidates: int = 100,
                 max_seen: int = 0, max_exclude: int = 100, max_session_items: int = 50,
                 session_user_weight: float = 0.5, exclude_session_items: bool = True,
                 id_keys: tuple[np.ndarray, np.ndarray] | None = None,
                 max_batch_size: int | None = None, max_id_bytes: int | None = None,
                 build_signatures: bool = True,
                 text_search: TextSearch | None = None,
                 content_search: str = "every_item"):
        super().__init__(name="tfmmrec")
        self.towers = towers
        self.index = index
        num_items = int(item_embeddings.shape[0])
        self.num_items = num_items  # never traced: the graph reads sizes off the variables
        # The served catalogue lives only in variables of unknown length (ids, embeddings,
        # sorted id hashes, the index's own): a catalogue update stores new values under this
        # graph without re-tracing it (writer.write_updated_version). Brute force searches
        # the served table itself.
        self.item_table = index.embeddings
        if self.item_table is None:  # a catalogue update's table may be a tf.Tensor already
            self.item_table = catalog_variable(
                tf.cast(item_embeddings, tf.float32) if isinstance(item_embeddings, tf.Tensor)
                else np.asarray(item_embeddings, np.float32), "item_embeddings")
        ids = np.asarray(item_ids)
        self.item_ids = catalog_variable(ids, "item_ids")
        # id_keys: the same (sorted hashes, rows), derived from a previous version's by a
        # catalogue update (sorting a million hashes again is a tenth of its time).
        keys, rows = id_keys if id_keys is not None else _sorted_id_keys(ids)
        self.item_keys = catalog_variable(keys, "item_keys")
        self.item_key_rows = catalog_variable(rows, "item_key_rows")
        self.default_k = default_k
        self.max_k = min(max_k, num_items)
        self.two_stage = hasattr(towers, "score_candidates")
        self.retrieve_candidates = min(retrieve_candidates, num_items)
        if self.two_stage and self.retrieve_candidates < self.max_k:
            raise ExportError(retrieve_candidates_error(retrieve_candidates, self.max_k))
        self.max_seen = max_seen if hasattr(towers, "is_seen") else 0
        # Each served row's position in the training catalogue (−1: added later), the key of
        # the baked seen set; only a seen set needs it (at 1M items a Python dict over the ids
        # cost 0.8 s of every catalogue update).
        self.training_index = None
        if self.max_seen:
            training = pd.Index(utf8_texts(towers.training_item_ids.numpy()))
            self.training_index = catalog_variable(
                training.get_indexer(utf8_texts(ids)).astype(np.int64), "training_index")
        self.max_exclude = max_exclude
        # embed_items' own batch limit (the other signatures' is the towers'): the export's
        # limits unless given (a catalogue update passes the version's recorded value).
        limits = getattr(towers, "limits", None)
        self.max_batch_size = int(max_batch_size or getattr(
            limits, "max_batch_size", ServingLimitsConfig().max_batch_size))
        # Every id input's length limit: given (a version's recorded value) or the towers';
        # None for a version from before the limit (restored towers carry no limits), whose
        # graph then stays as it was.
        if max_id_bytes is None:
            max_id_bytes = getattr(limits, "max_id_bytes", None)
        self.max_id_bytes = None if max_id_bytes is None else int(max_id_bytes)
        self.max_session_items = max_session_items
        self.session_user_weight = session_user_weight
        # A session's items were just seen: recommend_session does not return them (unless the
        # export says otherwise, e.g. for re-consumption; versions from before the setting did).
        self.exclude_session_items = bool(exclude_session_items)
        # Exports from before session_query blend every session item (the older behaviour).
        self.history_sessions = hasattr(towers, "session_query")
        # Read-only settings, not the TextSearch itself (its [N, F] features would stay in
        # memory beside their variable).
        self.text_search = (None if text_search is None
                            else MappingProxyType(text_search.metadata()))
        if text_search is not None:
            if not hasattr(towers, "text_search_query"):
                raise ValueError("text_search needs towers built with text_search=True")
            # Saved (catalogue variables) so an update rebuilds the table; no signature reads
            # them.
            self.text_features = catalog_variable(text_search.features, "text_features")
            self.text_search_index = text_search.index
        if content_search not in CONTENT_SEARCH:
            raise ValueError(f"content_search must be one of {CONTENT_SEARCH}, "
                             f"got {content_search!r}")
        self.content_search = content_search
        self.modalities = tuple(m for m in modalities.names() if hasattr(towers, f"{m}_query"))
        self._placeholders = {m: modalities.get(m).placeholder()  # eager, once
                              for m in self.modalities}
        # A catalogue update that writes its variables under a previous version's graph never
        # calls the signature functions: creating them is skipped until `signatures()` asks.
        self._signatures_built = False
        if build_signatures:
            self._build_signature_functions(default_k)

    def graph_constants(self) -> dict:
        """Every Python value the signatures bake into their graphs besides the towers'
        functions: a version's graph serves a new catalogue unchanged iff these are equal
        (sizes clamped to the catalogue, such as ``max_k`` on a tiny one, are among them)."""
        return {"default_k": min(self.default_k, self.max_k), "max_k": self.max_k,
                "retrieve_candidates": self.retrieve_candidates if self.two_stage else None,
                "max_seen": self.max_seen,
                "max_exclude": self.max_exclude, "max_session_items": self.max_session_items,
                "session_user_weight": self.session_user_weight, "two_stage": self.two_stage,
                "max_batch_size": self.max_batch_size,
                # only when set: a version from before the limit keeps reusing its graph
                **({} if self.max_id_bytes is None else {"max_id_bytes": self.max_id_bytes}),
                # How a place without an item is filled: a version traced before the padding
                # (it returned excluded items at -inf) lacks it, so its next update re-traces.
                "missing_result": [MISSING_ITEM_ID, MISSING_SCORE],
                "history_sessions": self.history_sessions, "modalities": list(self.modalities),
                "dim": int(self.item_table.shape[1]), "index": self.index.graph_constants(),
                # only when not the older behaviour: versions from before these settings keep
                # reusing their graphs
                **({} if self.content_search == "index" else {
                    "content_search": self.content_search}),
                **({"exclude_session_items": True} if self.exclude_session_items else {}),
                **({} if self.text_search is None else {"text_search": {
                    **self.text_search, "index": self.text_search_index.graph_constants()}})}

    def _build_signature_functions(self, default_k: int) -> None:
        """Optional inputs (``k``, ``exclude_item_ids``, ``user_id`` of a session) are Python
        defaults of the signature function: the SavedModel records them in the SignatureDef's
        ``defaults``, so a request may omit them (TF Serving ≥ 2.12).

        The signatures are traced without AutoGraph (their control flow is explicit ``tf.cond``
        and Python over static settings): converting their source was a third of the time of a
        catalogue update at 100k items (2.2 s of 6.2 s)."""
        self._signatures_built = True
        k_default = tf.constant(min(default_k, self.max_k), tf.int32)
        no_exclusion = tf.zeros([0, 0], tf.string)
        no_user = tf.zeros([0], tf.string)

        def retrieval(implementation, input_spec):
            def signature(inputs, k=k_default, exclude_item_ids=no_exclusion):
                return implementation(inputs, k, exclude_item_ids)

            return serving_function(signature, [input_spec, K_SPEC, EXCLUDE_SPEC])

        # serving_default keeps its single input, so TF Serving's REST row format
        # ({"instances": ["u1", "u2"]}) still works; `recommend` takes exclusions.
        self.serve_default = serving_function(
            lambda user_id: self._recommend(user_id, k_default, tf.zeros([0, 0], tf.string)),
            [tf.TensorSpec([None], tf.string, name="user_id")])
        self.recommend = retrieval(self._recommend,
                                   tf.TensorSpec([None], tf.string, name="user_id"))

        # One optional ``viewed_<modality>`` input per registered modality (a model without
        # that tower refuses a non-empty one), so every export of a tfmmrec version has the
        # same session signature. The Python signature is built from the registry: TF reads
        # the parameters and their defaults from ``__signature__``.
        viewed_names = tuple(modalities.names())
        parameters = [inspect.Parameter("session_item_ids", POSITIONAL)] + [
            inspect.Parameter(name, POSITIONAL, default=default) for name, default in (
                ("user_id", no_user), ("k", k_default), ("exclude_item_ids", no_exclusion),
                *((f"viewed_{m}", no_user) for m in viewed_names))]

        def session(*args, **kwargs):
            inputs = session.__signature__.bind(*args, **kwargs)
            inputs.apply_defaults()
            given = inputs.arguments
            viewed = {m: given[f"viewed_{m}"] for m in viewed_names}
            return self._recommend_session(given["session_item_ids"], given["user_id"],
                                           given["k"], given["exclude_item_ids"], viewed)

        session.__signature__ = inspect.Signature(parameters)
        self.recommend_session = serving_function(session, [
            SESSION_SPEC, tf.TensorSpec([None], tf.string, name="user_id"), K_SPEC,
            EXCLUDE_SPEC, *(tf.TensorSpec([None], tf.string, name=f"viewed_{m}")
                            for m in viewed_names)])
        # Only the modalities the model has: saving traces every tf.function attribute.
        searches = {m: (getattr(self.towers, f"{m}_query"), self.index) for m in self.modalities}
        if self.text_search is not None:  # query_text searches its own index (TextSearch)
            searches[TEXT_SEARCH_MODALITY] = (self.towers.text_search_query,
                                              self.text_search_index)
        every_item = self.content_search == "every_item"
        for modality, (query, index) in searches.items():
            setattr(self, f"query_{modality}", retrieval(
                lambda content, k, exclude, query=query, index=index: self._top_k(
                    query(content), k, exclude, index=index, every_item=every_item),
                tf.TensorSpec([None], tf.string, name=modality)))

    # -- building blocks -------------------------------------------------------------------
    def _check_k(self, k):
        k = tf.convert_to_tensor(k, tf.int32)
        tf.debugging.assert_greater_equal(k, 1, message="k must be >= 1")
        tf.debugging.assert_less_equal(k, self.max_k, message=f"k must be <= max_k={self.max_k}")
        return k

    def _check_ids(self, ids, name: str):
        """``ids`` once none is longer than ``max_id_bytes`` (:func:`check_ids`)."""
        return check_ids(ids, name, self.max_id_bytes)

    def _rows(self, item_ids, limit: int, name: str):
        """``[B, E]`` ""-padded item ids → served rows (−1: padding or not in the catalogue)."""
        tf.debugging.assert_less_equal(tf.shape(item_ids)[1], limit,
                                       message=f"{name}: at most {limit} items per request")
        return self._lookup_rows(item_ids)

    def _lookup_rows(self, item_ids):
        """Served row of each id (−1: not served)."""
        return _lookup_sorted(self.item_keys, self.item_key_rows, self.item_ids, item_ids)

    def _exclusion_rows(self, exclude, batch):
        """``[B, E]`` rows to exclude; an empty ``[0, 0]`` request means none."""
        rows = self._rows(self._check_ids(exclude, "exclude_item_ids"), self.max_exclude,
                          "exclude_item_ids")
        given = tf.shape(rows)[0]
        check = tf.debugging.assert_equal(
            tf.logical_or(tf.equal(given, 0), tf.equal(given, batch)), True,
            message="exclude_item_ids needs one row per request in the batch (or none)")
        # The rows depend on the check: a ScaNN search, whose exclusion gather would fail with
        # TF's own shape message, cannot run before it.
        with tf.control_dependencies([check] if check is not None else []):
            return tf.cond(tf.equal(given, 0),
                           lambda: tf.fill([batch, 1], tf.constant(-1, tf.int64)),
                           lambda: tf.identity(rows))

    def _retrieve(self, queries, count: int, exclude, user_id=None, index=None,
                  every_item: bool = False, session_rows=None):
        """Top ``count`` (scores, rows) without excluded items (and seen ones, when baked in;
        and ``session_rows`` ``[B, H]``, a session's own items, −1 for none).

        The index is asked for ``count + max_exclude (+ max_seen, + max_session_items)``
        results, so ``count``
        allowed ones remain whatever the request excludes, unless the catalogue holds fewer:
        the places left have row −1 (and score −inf, so they rank last); :meth:`_results`
        pads them.
        """
        index = self.index if index is None else index
        batch = tf.shape(queries)[0]
        excluded_rows = self._exclusion_rows(exclude, batch)
        seen = self.max_seen if user_id is not None else 0
        session = 0
        if session_rows is not None:
            excluded_rows = tf.concat([excluded_rows, session_rows], axis=1)
            session = self.max_session_items
        # index.k = min(deepest request, catalogue size): a constant of the graph.
        fetch = min(count + over_fetch(self.max_exclude, seen, session), index.k)
        scores, items = index(queries, k=fetch, every_item=every_item)
        items = tf.cast(items, tf.int64)
        # An index may return −1 for a place it could not fill (partitioned padding).
        masked = (items < 0) | tf.reduce_any(items[:, :, None] == excluded_rows[:, None, :],
                                             axis=2)
        if seen:
            masked |= self.towers.is_seen(user_id, gather_rows(self.training_index,
                                                             tf.maximum(items, 0)))
        scores = tf.where(masked, tf.fill(tf.shape(scores), float("-inf")), scores)
        scores, order = tf.math.top_k(scores, k=min(count, fetch))
        kept = tf.logical_not(tf.gather(masked, order, batch_dims=1))
        return scores, tf.where(kept, tf.gather(items, order, batch_dims=1), -1)

    def _results(self, items, scores: dict) -> dict:
        """``item_ids`` of served rows and the given ``[B, k]`` scores, with every place of row
        −1 (no allowed item left) padded: id ``MISSING_ITEM_ID``, score ``MISSING_SCORE``."""
        present = items >= 0
        outputs = {"item_ids": tf.where(present, gather_rows(self.item_ids, tf.maximum(items, 0)),
                                        MISSING_ITEM_ID)}
        for name, value in scores.items():
            outputs[name] = tf.where(present, value, MISSING_SCORE)
        return _shaped(outputs)

    def _top_k(self, queries, k, exclude, user_id=None, index=None, every_item=False,
               session_rows=None):
        k = self._check_k(k)
        scores, items = self._retrieve(queries, self.max_k, exclude, user_id, index,
                                       every_item, session_rows)
        return self._results(items[:, :k], {"scores": scores[:, :k]})

    def _two_stage(self, queries, k, exclude, user_id=None, session_rows=None):
        """Retrieve N candidates, re-rank them with the ranking head, keep the top k."""
        k = self._check_k(k)
        retrieval_scores, items = self._retrieve(queries, self.retrieve_candidates, exclude,
                                                 user_id, session_rows=session_rows)
        logits = self.towers.score_candidates(
            queries, gather_rows(self.item_table, tf.maximum(items, 0)))
        # Places no allowed item filled keep −inf: ranked after every candidate, then padded.
        logits = tf.where(items >= 0, logits, float("-inf"))
        ranking_scores, order = tf.math.top_k(logits, k=k)
        return self._results(tf.gather(items, order, batch_dims=1), {
            "scores": ranking_scores,
            "retrieval_scores": tf.gather(retrieval_scores, order, batch_dims=1)})

    def _recommend(self, user_id, k, exclude):
        user_id = self._check_ids(user_id, "user_id")
        queries = self.towers.user_query(user_id)
        if self.two_stage:
            return self._two_stage(queries, k, exclude, user_id)
        return self._top_k(queries, k, exclude, user_id)

    def _session_queries(self, session_item_ids, user_id, viewed=None):
        """The session query, the users it was built for and the session's rows (−1: unknown
        or padding):
        ``normalise(w · u + (1 − w) · s)``, ``w = session_user_weight``.

        ``s`` is the normalised mean of the session items' served embeddings and of the
        content just viewed (``viewed``: per modality ``[B]`` raw content, "" for none; each
        present one counts as one more item, embedded like ``query_<modality>``). Item
        embeddings and queries share one space (the retrieval loss scores them by dot
        product), so the mean of what a user just engaged with is a query that retrieves
        similar items.

        ``u`` is the user's query. With a history encoder (``model.user_history``) it is the
        query of a user whose history is their stored training history followed by the
        session's items of the training catalogue (``towers.session_query``): the session
        counts as the same interactions would have counted in training, so with ``w = 1`` a
        session is exactly the query of a user whose history is those items. Otherwise it is
        the user's query embedding. ``""``, unknown or no ``user_id``: the cold-start user (no
        stored history). Unknown ids and "" padding are ignored; with nothing in ``s`` the
        query is ``u``.
        """
        session_item_ids = self._check_ids(check_batch(
            session_item_ids, "session_item_ids", self.max_batch_size), "session_item_ids")
        user_id = self._check_ids(user_id, "user_id")
        rows = self._rows(session_item_ids, self.max_session_items, "session_item_ids")
        batch = tf.shape(rows)[0]
        users = tf.cond(tf.equal(tf.shape(user_id)[0], 0),
                        lambda: tf.fill([batch], ""), lambda: user_id)
        check = tf.debugging.assert_equal(tf.shape(users)[0], batch,
                                          message="user_id needs one entry per session (or none)")
        with tf.control_dependencies([check] if check is not None else []):
            users = tf.identity(users)
        if self.history_sessions:
            user = self.towers.session_query(users, session_item_ids)["query"]
        else:
            user = self.towers.user_query(users)
        known = tf.cast(rows >= 0, tf.float32)[..., None]
        total = tf.reduce_sum(gather_rows(self.item_table, tf.maximum(rows, 0)) * known, axis=1)
        count = tf.reduce_sum(known, axis=1)
        for modality, content in (viewed or {}).items():
            embedded, present = self._viewed(modality, content, batch)
            total += embedded * present[:, None]
            count += present[:, None]
        session = tf.math.l2_normalize(total, axis=-1)
        w = self.session_user_weight
        blended = tf.math.l2_normalize(w * user + (1.0 - w) * session, axis=-1)
        return tf.where(count > 0, blended, user), users, rows

    def _viewed(self, modality: str, content, batch):
        """(``[B, d]`` content embeddings, ``[B]`` presence) of optional viewed content.

        An empty ``[0]`` input means none was sent; "" rows are absent (a small valid
        placeholder is encoded in their place and masked out, so one batch can mix both).
        """
        dim = self.item_table.shape[1]
        given = tf.shape(content)[0] > 0
        if modality not in self.modalities:
            tf.debugging.assert_equal(given, False,
                                      message=f"viewed_{modality}: this model has no "
                                              f"{modality} tower")
            return tf.zeros([batch, dim]), tf.zeros([batch])
        tf.debugging.assert_equal(tf.logical_or(tf.logical_not(given),
                                                tf.equal(tf.shape(content)[0], batch)), True,
                                  message=f"viewed_{modality} needs one entry per session")
        query = getattr(self.towers, f"{modality}_query")
        placeholder = tf.constant(self._placeholders[modality])

        def embed():
            present = tf.strings.length(content) > 0
            filled = tf.where(present, content, tf.fill(tf.shape(content), placeholder))
            return query(filled), tf.cast(present, tf.float32)

        return tf.cond(given, embed, lambda: (tf.zeros([batch, dim]), tf.zeros([batch])))

    def _recommend_session(self, session_item_ids, user_id, k, exclude, viewed=None):
        queries, users, rows = self._session_queries(session_item_ids, user_id, viewed)
        session_rows = rows if self.exclude_session_items else None
        if self.two_stage:
            return self._two_stage(queries, k, exclude, users, session_rows)
        return self._top_k(queries, k, exclude, users, session_rows=session_rows)

    # -- signatures --------------------------------------------------------------------------
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")],
                 autograph=False)
    def embed_query(self, user_id):
        return {"embedding": self.towers.user_query(self._check_ids(user_id, "user_id"))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id")],
                 autograph=False)
    def embed_items(self, item_id):
        rows = self._lookup_rows(self._check_ids(
            check_batch(item_id, "item_id", self.max_batch_size), "item_id"))
        found = rows >= 0
        embedding = gather_rows(self.item_table, tf.maximum(rows, 0))
        return {"embedding": tf.where(found[:, None], embedding, tf.zeros_like(embedding)),
                "found": found}

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The signatures to save; query_* only for the modalities the model has. The
        tf.functions themselves are passed (not one concrete function) so their Python
        defaults are saved as SignatureDef defaults."""
        if not self._signatures_built:
            self._build_signature_functions(self.default_k)
        signatures = {
            "serving_default": self.serve_default,
            "recommend": self.recommend,
            "recommend_session": self.recommend_session,
            "embed_query": self.embed_query.get_concrete_function(),
            "embed_items": self.embed_items.get_concrete_function(),
        }
        for modality in self.modalities:
            signatures[f"query_{modality}"] = getattr(self, f"query_{modality}")
        return signatures


def check_batch(values, name: str, limit: int):
    """``values`` once its batch (its first dimension: ids, or rows of ids) is non-empty and
    holds at most ``limit`` entries: asserts in the graph, so stock TF Serving refuses an
    oversized request (INVALID_ARGUMENT) before the work it would cost, as ``tfmmrec serve``
    does."""
    size = tf.shape(values)[0]
    checks = [
        tf.debugging.Assert(size > 0, [f"{name}: empty batch - send at least one item"]),
        tf.debugging.Assert(size <= limit, [
            f"{name}: batch larger than export.limits.max_batch_size={limit}:", size]),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(values)


def check_ids(ids, name: str, limit: int | None):
    """``ids`` (a batch, or rows of ids) once none is longer than ``limit`` UTF-8 bytes
    (``export.limits.max_id_bytes``; None: no limit, a version from before it), asserted in the
    graph before they are hashed or looked up, so stock TF Serving refuses too. The error names
    the input, the limit and the longest id's length."""
    if limit is None:
        return ids
    longest = tf.reduce_max(tf.strings.length(ids))  # the lowest int32 for no ids at all
    check = tf.debugging.Assert(longest <= limit, [
        f"{name}: an id is longer than export.limits.max_id_bytes={limit}; the longest has "
        "(bytes):", longest])
    with tf.control_dependencies([check]):
        return tf.identity(ids)


def ids_over_limit(ids, limit: int | None) -> list[tuple[int, int]]:
    """``(position, UTF-8 bytes)`` of each id longer than ``limit`` (``export.limits.
    max_id_bytes``; None: no limit): catalogue ids no request could name, since the graph
    refuses them (:func:`check_ids`), for the export and ``catalog add`` to refuse first."""
    if limit is None:
        return []
    return [(position, size) for position, size in enumerate(
        len(i) if isinstance(i, bytes) else len(str(i).encode()) for i in ids) if size > limit]


def _unique(objects: list) -> list:
    seen: set[int] = set()
    return [o for o in objects if not (id(o) in seen or seen.add(id(o)))]


def _resources(layer) -> list:
    """Every resource (lookup tables: user ids, string vocabularies) a layer owns, found by
    walking its trackable children (they are not in ``layer.variables``)."""
    view = tf.train.TrackableView(layer)
    return [o for o in view.descendants()
            if isinstance(o, tf.saved_model.experimental.TrackableResource)]


def _id_keys(item_ids):
    """64-bit FarmHash of item ids (``tf.strings.to_hash_bucket_fast``), the served-id table's
    keys."""
    return tf.strings.to_hash_bucket_fast(item_ids, np.iinfo(np.int64).max)


def _sorted_id_keys(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted id hashes, row of each)``: an id → row lookup held in two variables (the
    served ids, which a catalogue update rewrites, and the training ids). A hash table's keys
    would be a graph constant: re-serialised by every save, and re-read by every load."""
    keys = _id_keys(tf.constant(ids)).numpy()
    order = np.argsort(keys, kind="stable")
    return keys[order], order.astype(np.int64)


class SortedIds:
    """The served-id lookup of :func:`_lookup_sorted` in numpy, over a version's stored
    ``(keys, rows, ids)``: what a catalogue update checks new ids against and derives the
    next version's keys from, without hashing or indexing the million stored ids again."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray, ids: np.ndarray):
        self.keys, self.rows, self.ids = keys, rows, ids

    def get_indexer(self, wanted) -> np.ndarray:
        """Row of each wanted id (bytes), −1 when not stored (as ``pandas.Index``)."""
        wanted = np.asarray(wanted, object)
        hashes = _id_keys(tf.constant(wanted, tf.string)).numpy() if len(wanted) else \
            np.zeros(0, np.int64)
        found = np.full(len(wanted), -1, np.int64)
        first = np.searchsorted(self.keys, hashes)
        for offset in (1, 0):  # the first match wins
            at = np.minimum(first + offset, len(self.keys) - 1)
            row = self.rows[at]
            hit = (self.keys[at] == hashes) & (self.ids[row] == wanted)
            found = np.where(hit, row, found)
        return found

    def changed(self, change, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sorted keys, rows)`` of the catalogue ``ids`` after ``change`` (a
        ``CatalogChange`` from these stored ids): kept ids keep their hashes (rows renumbered),
        added ones are hashed and inserted in order."""
        previous = change.previous_row[:change.num_previous]
        if (len(previous) == change.num_previous
                and np.array_equal(previous, np.arange(change.num_previous))):
            keys, rows = self.keys, self.rows  # an add: every stored row kept where it was
        else:
            new_row = change.new_row_of_previous()[self.rows]
            kept = new_row >= 0
            keys, rows = self.keys[kept], new_row[kept]
        added = np.flatnonzero(change.previous_row < 0)
        if len(added):
            hashes = _id_keys(tf.constant(ids[added], tf.string)).numpy()
            order = np.argsort(hashes, kind="stable")
            at = np.searchsorted(keys, hashes[order], side="right")
            keys, rows = np.insert(keys, at, hashes[order]), np.insert(rows, at, added[order])
        return keys, rows


def _lookup_sorted(keys, rows, stored_ids, item_ids):
    """Row of each id in ``stored_ids`` (−1: absent) by binary search of its hash in the
    sorted ``keys`` (:func:`_sorted_id_keys`). A hit is confirmed against the stored id, so a
    hash shared with an unknown id never returns a wrong item; the key after the first match
    is checked too, so two served ids sharing a 64-bit hash both stay found (three sharing one,
    odds ~N³/2¹²⁸, would leave one unfound, never wrong)."""
    wanted = _id_keys(item_ids)
    flat, flat_ids = tf.reshape(wanted, [-1]), tf.reshape(item_ids, [-1])
    last = tf.shape(keys, out_type=tf.int64)[0] - 1
    first = tf.searchsorted(keys, flat, side="left", out_type=tf.int64)
    found = tf.fill(tf.shape(flat), tf.constant(-1, tf.int64))
    for offset in (1, 0):  # the first match wins
        at = tf.minimum(first + offset, last)
        row = gather_rows(rows, at)
        hit = tf.equal(gather_rows(keys, at), flat) & tf.equal(gather_rows(stored_ids, row),
                                                               flat_ids)
        found = tf.where(hit, row, found)
    return tf.reshape(found, tf.shape(wanted))


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



# -- sessions through the history encoder -------------------------------------------------------


def extend_history(stored_items: tf.RaggedTensor, stored_weights: tf.RaggedTensor,
                   session_items: tf.RaggedTensor, *, half_life: float = 0.0,
                   max_length: int = 0) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
    """A stored history (``HistoryEncoder.gather``: training-item positions, most recent last,
    and their recency weights) followed by a session's items (oldest first), weighted and cut as
    ``towers.history.history_table`` would weigh and cut that longer history.

    With ``half_life`` the ``n``-th most recent item weighs ``0.5 ** (n / half_life)``: a
    session of ``s`` items ages every stored item by ``s`` (its weight times
    ``0.5 ** (s / half_life)``), so an empty session leaves the stored weights exactly as
    they are. ``max_length`` keeps the most recent items (0: all). All ``[B, None]``.
    """
    count = session_items.row_lengths()
    age = tf.cast(count[:, None] - 1 - tf.ragged.range(count), tf.float32)
    if half_life > 0:
        session_weights = tf.pow(0.5, age / half_life)
        stored_weights = stored_weights * tf.pow(0.5, tf.cast(count, tf.float32)
                                                 / half_life)[:, None]
    else:
        session_weights = tf.ones_like(age)
    items = tf.concat([stored_items, tf.cast(session_items, stored_items.dtype)], axis=1)
    weights = tf.concat([stored_weights, session_weights], axis=1)
    if max_length > 0:
        items, weights = items[:, -max_length:], weights[:, -max_length:]
    return items, weights


def query_with_history(query_tower: QueryTower, user_id, items: tf.RaggedTensor,
                       weights: tf.RaggedTensor, item_embedder=None) -> tf.Tensor:
    """``query_tower(user_id)`` with each row's history encoder pooling ``items`` (training-item
    positions, ``[B, None]``) with ``weights`` instead of the user's stored history
    (``QueryTower.call``'s ``history``): every other part of the query (user-id and feature
    embeddings, the MLP) and the pooling are the trained tower's own."""
    if query_tower.history_encoder is None:
        raise ValueError("query_with_history needs a query tower with a history encoder "
                         "(model.user_history)")
    return query_tower(user_id, item_embedder=item_embedder, training=False,
                       history=(items, weights))


def utf8_texts(ids) -> list[str]:
    """Ids as ``str``, bytes (a string tensor's ``.numpy()``) decoded as UTF-8: numpy's
    ``astype(str)`` decodes them as ASCII (an export with ``exclude_seen`` and an id such as
    ``café`` failed) and drops an id's trailing NULs."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for v in np.asarray(ids, dtype=object).ravel()]
