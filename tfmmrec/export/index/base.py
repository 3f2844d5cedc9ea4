"""Export: the top-k index interface every index kind implements, and the registry of kinds.

An index answers ``index(queries, k) -> (scores [B, k], positions [B, k])`` over item *positions*
(rows of the embedding matrix it was built from); ``index.item_ids`` maps positions to ids. Each
kind declares the custom-op namespaces its graph needs and the servers that can load it, which
the export metadata, the op audit (tests/export/test_op_audit.py) and the README matrix use.

A new kind is one module with a :class:`TopKIndex` subclass decorated by :func:`register`.

Catalogue updates rewrite an index's variables without re-tracing the graph that searches it
(``tfmmrec.export.catalog``), so an index keeps every size that depends on the catalogue in
variables of unknown leading dimension (:func:`catalog_variable`), and lists in
:meth:`TopKIndex.graph_constants` every Python value its search bakes into the graph: a new
version may reuse a graph only when those are equal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec.config import ExportConfig, PartitionedConfig, ScannConfig, register_index_kind
from tfmmrec.errors import ExportError, shown
from tfmmrec.towers.arguments import positive_int

# Servers named in metadata and the README matrix.
STOCK_TF_SERVING = "tensorflow/serving>=2.20"
SCANN_TF_SERVING = "google/tf-serving-scann"
TFMMREC_SERVE = "tfmmrec serve"


@dataclass(frozen=True)
class IndexSettings:
    """Everything an index build needs, and nothing from training (the realtime catalogue
    updater rebuilds indexes from embeddings alone).

    Args:
        kind: a registered index kind (``brute_force``, ``scann``, ``partitioned``).
        max_k: the most results any query will ask for (capped at the catalogue size).
        scann / partitioned: the kind-specific settings (``None`` fields scale to the data).
    """

    kind: str = "brute_force"
    max_k: int = 100
    scann: ScannConfig = field(default_factory=ScannConfig)
    partitioned: PartitionedConfig = field(default_factory=PartitionedConfig)

    @classmethod
    def from_export(cls, export: ExportConfig, max_k: int | None = None,
                    kind: str | None = None) -> IndexSettings:
        return cls(kind or export.index, max_k or export.max_k, export.scann,
                   export.partitioned)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def catalog_variable(value, name: str) -> tf.Variable:
    """A non-trainable variable whose saved shape leaves the leading (catalogue) dimension
    unknown, so a catalogue update can store a table of another length under the same
    SavedModel graph (``tfmmrec.export.writer.write_updated_version``)."""
    value = tf.convert_to_tensor(value)
    return tf.Variable(value, trainable=False, name=name,
                       shape=tf.TensorShape([None, *value.shape[1:]]))


def gather_rows(variable: tf.Variable, indices, **kwargs) -> tf.Tensor:
    """``tf.gather`` from a dense read of ``variable``, never a sparse one: a single sparse read
    (``ResourceGather``) switches a variable to copy-on-read for good, and TF then copies the
    whole table on every dense read (a brute-force search over 300,000 × 256 floats after one
    ``embed_items`` request: 62 → 330 ms per query on the 2-core machine). Every read of a
    catalogue variable that picks rows goes through here."""
    return tf.gather(tf.convert_to_tensor(variable), indices, **kwargs)


class TopKIndex(tf.Module):
    """Base class: a saved, servable top-k search over item positions.

    Subclasses set ``kind``, ``op_namespaces`` (custom-op prefixes such as ``Scann``; core TF
    needs none) and ``servers``, and implement :meth:`from_embeddings` and :meth:`search`;
    a kind whose structure can absorb a catalogue change without a rebuild also implements
    :meth:`updated`. ``embeddings``: the exact ``[N, d]`` table when the kind keeps one (the
    serving module then serves from it instead of holding a second copy).

    Constructors check their arguments with the ``checked_*`` functions :func:`build` uses, so
    a kind constructed directly fails with the same :class:`ExportError`; :meth:`__call__`
    checks ``k`` and the query width for every kind.
    """

    embeddings: tf.Variable | None = None

    kind: ClassVar[str]
    # True: from_embeddings also takes a tf.Tensor (a catalogue update's table, read from the
    # checkpoint straight into TF): no numpy copy of a million-row table.
    takes_tensors: ClassVar[bool] = False
    op_namespaces: ClassVar[frozenset[str]] = frozenset()
    servers: ClassVar[tuple[str, ...]] = (STOCK_TF_SERVING, TFMMREC_SERVE)

    def __init__(self, k: int, num_items: int, item_ids: np.ndarray | None,
                 parameters: dict | None = None, dim: int | None = None):
        """``k``: the deepest search (``max_k``, at most ``num_items``); ``item_ids``: one per
        item position (``None``: ``0..N-1`` as strings); ``dim``: the width queries must have
        (``None``: unchecked). Checked here, so a kind built directly fails as build() does."""
        owner = f"{self.kind} index"
        num_items = checked_count(owner, "num_items", num_items)
        k = checked_depth(owner, "k", k, num_items)
        ids = checked_item_ids(owner, item_ids, num_items)
        if parameters is not None and not isinstance(parameters, dict):
            raise ExportError(f"{owner}: parameters must be a dict, got {shown(parameters)}")
        if dim is not None:
            dim = checked_count(owner, "dim", dim)
        super().__init__(name=f"{self.kind}_index")
        self.k = k
        self.num_items = num_items
        self.dim = dim
        self._item_ids = ids  # numpy, not a variable: the module stores ids
        self.parameters = dict(parameters or {})

    @property
    def item_ids(self) -> np.ndarray:
        return self._item_ids

    @classmethod
    def from_embeddings(cls, item_embeddings: np.ndarray, item_ids: np.ndarray,
                        settings: IndexSettings) -> TopKIndex:
        raise NotImplementedError

    def search(self, queries: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        raise NotImplementedError

    def search_every_item(self, queries: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Top-k after scoring every item: what content queries (``query_<modality>``) use.

        A query embedded from content lies farther from its items than a user query does, so
        the partitions nearest to it often miss them (ML-100K, ScaNN searching 20 of its 41
        leaves: a film's title found it in the top 10 for 40 % of films, every leaf 47 %;
        ``benchmarks/text_search_export.py``). The default scores the exact table
        (``embeddings``); a kind without one overrides this."""
        if self.embeddings is None:
            raise NotImplementedError(f"{self.kind} index keeps no table to search exactly")
        return tf.math.top_k(tf.matmul(queries, self.embeddings, transpose_b=True), k=k)

    @classmethod
    def updated(cls, state: dict[str, np.ndarray], parameters: dict,
                item_embeddings: np.ndarray, item_ids: np.ndarray, change: CatalogChange,
                settings: IndexSettings) -> TopKIndex | None:
        """The index over ``item_embeddings`` derived from the previous version's variables
        (``state``: this kind's variable values by attribute path, e.g. ``"centroids"``) and
        what changed, or ``None`` when this kind must be rebuilt from the embeddings (the
        default; brute force has nothing to derive, ScaNN retrains its searcher)."""
        del state, parameters, item_embeddings, item_ids, change, settings
        return None

    def graph_constants(self) -> dict:
        """The Python values :meth:`search` bakes into a traced graph (a version's graph can
        be reused for a new catalogue only when they are equal)."""
        return {"kind": self.kind, "k": self.k}

    def __call__(self, queries, k: int | None = None, every_item: bool = False
                 ) -> tuple[tf.Tensor, tf.Tensor]:
        """``(scores float32 [B, k], positions int32 [B, k])``, best first; ``k`` is static.
        ``every_item``: :meth:`search_every_item` instead of the kind's own search. Every kind
        refuses a bad ``k`` or query width here, with the same message."""
        owner = f"{self.kind} index"
        k = self.k if k is None else checked_depth(owner, "k", k, self.k, "its max_k")
        search = self.search_every_item if every_item else self.search
        return search(checked_queries(owner, queries, self.dim), k)

    def get_config(self) -> dict:
        return {"kind": self.kind, "k": self.k, "num_items": self.num_items,
                "op_namespaces": sorted(self.op_namespaces), "servers": list(self.servers),
                "parameters": self.parameters}


@dataclass(frozen=True)
class CatalogChange:
    """How a catalogue update maps the previous version's rows to the new ones.

    ``previous_row[i]``: the previous row of new row ``i`` (−1: an added item); ``changed``:
    new rows whose embedding differs from the previous version's (added or re-embedded).
    Removed items are the previous rows absent from ``previous_row``.
    """

    previous_row: np.ndarray
    changed: np.ndarray
    num_previous: int

    def new_row_of_previous(self) -> np.ndarray:
        """``[num_previous]``: the new row of each previous row (−1: removed)."""
        out = np.full(self.num_previous, -1, np.int64)
        kept = self.previous_row >= 0
        out[self.previous_row[kept]] = np.flatnonzero(kept)
        return out


_KINDS: dict[str, type[TopKIndex]] = {}


def register(cls: type[TopKIndex]) -> type[TopKIndex]:
    """Class decorator: make ``cls.kind`` buildable by :func:`build` and a value of
    ``export.index``. A kind registered twice is a mistake (it would silently replace the
    first), unless it is the same class again (a module reloaded)."""
    if not getattr(cls, "kind", None):
        raise TypeError(f"{cls.__name__} must set a `kind`")
    existing = _KINDS.get(cls.kind)
    if existing is not None and (existing.__module__, existing.__qualname__) != (
            cls.__module__, cls.__qualname__):
        raise ValueError(f"index kind {cls.kind!r} is already registered "
                         f"({existing.__name__}); give {cls.__name__} another kind")
    register_index_kind(cls.kind)
    _KINDS[cls.kind] = cls
    return cls


def index_kinds() -> dict[str, type[TopKIndex]]:
    return dict(_KINDS)


def index_class(kind: str) -> type[TopKIndex]:
    if kind not in _KINDS:
        raise ExportError(f"unknown index kind {kind!r}: use one of {', '.join(sorted(_KINDS))}")
    return _KINDS[kind]


@dataclass(frozen=True)
class PreviousIndex:
    """The previous version's index of the same kind, as a catalogue update reads it: its
    variable values by attribute path (``state``), its ``parameters`` and the row change."""

    state: dict
    parameters: dict
    change: CatalogChange


def build(item_embeddings: np.ndarray, item_ids: np.ndarray | None = None,
          settings: IndexSettings | None = None,
          previous: PreviousIndex | None = None) -> TopKIndex:
    """The one entry point: an index of ``settings.kind`` over ``item_embeddings`` [N, d].

    ``item_ids`` (default: ``0..N-1`` as strings) are kept on the index for callers that map
    positions to ids; the search itself returns positions. ``previous`` (catalogue updates):
    derive the index from the previous version's when the kind can (:meth:`TopKIndex.updated`),
    else build it anew.
    """
    settings = settings or IndexSettings()
    cls = index_class(settings.kind)
    owner = f"{cls.kind} index"
    checked_count(owner, "max_k", settings.max_k)
    embeddings = checked_embeddings(owner, "item_embeddings", item_embeddings,
                                    keep_tensor=cls.takes_tensors)
    ids = checked_item_ids(owner, item_ids, embeddings.shape[0])
    if previous is not None:
        index = cls.updated(previous.state, previous.parameters, embeddings, ids,
                            previous.change, settings)
        if index is not None:
            return index
    return cls.from_embeddings(embeddings, ids, settings)


# --- argument checks: build() and every kind's constructor raise the same ExportError ---------


def checked_count(owner: str, name: str, value) -> int:
    """An integer >= 1 (not a bool or a float): the towers' own check, as an ExportError."""
    try:
        return positive_int(name, value)
    except ValueError as error:
        raise ExportError(f"{owner}: {error}") from None


def checked_depth(owner: str, name: str, value, most: int, limit: str = "the catalogue size"
                  ) -> int:
    """A number of results in ``[1, most]``: more than ``most`` would fail deep in top_k."""
    depth = checked_count(owner, name, value)
    if depth > most:
        raise ExportError(f"{owner}: {name} must be in [1, {most}] ({limit}), got {depth}")
    return depth


def checked_embeddings(owner: str, name: str, value, keep_tensor: bool = False
                       ) -> np.ndarray | tf.Tensor:
    """``value`` as float32 ``[N, d]`` (a ``tf.Tensor`` stays one when ``keep_tensor``) after
    checking it is a non-empty table of finite real numbers: what every kind scores."""
    if keep_tensor and isinstance(value, tf.Tensor):
        real = value.dtype.is_floating or value.dtype.is_integer
        table = tf.cast(value, tf.float32) if real else value
    else:
        try:
            table = np.asarray(value)
        except ValueError as error:  # ragged nested lists
            raise ExportError(f"{owner}: {name} must be an array, not {error}") from None
        real = table.dtype.kind in "fiu" or table.dtype == tf.bfloat16.as_numpy_dtype
    if not real:
        raise ExportError(f"{owner}: {name} must hold real numbers, got dtype {table.dtype}")
    if len(table.shape) != 2:
        raise ExportError(f"{owner}: {name} must be [num_items, dim], got shape "
                          f"{tuple(table.shape)}")
    if table.shape[0] == 0:
        raise ExportError(f"{owner}: {name} has no rows: cannot export an index over an empty "
                          "catalogue")
    if 0 in table.shape:
        raise ExportError(f"{owner}: {name} has shape {tuple(table.shape)}: no dimension may "
                          "be 0")
    if not isinstance(table, tf.Tensor):
        table = table.astype(np.float32, copy=False)
    check_finite(owner, name, table)
    return table


def check_finite(owner: str, name: str, table: np.ndarray | tf.Tensor) -> None:
    """No NaN or Inf in ``table`` (a NaN item scores NaN for every query and ranks anywhere)."""
    bad = _first_non_finite(table)
    if bad is not None:
        raise ExportError(f"{owner}: {name} contains NaN or Inf (row {bad}); re-train or check "
                          "the towers")


def checked_item_ids(owner: str, item_ids, num_items: int) -> np.ndarray:
    """One id per item position (``None``: ``0..N-1`` as strings), each id once: a repeated
    id would answer two rows as one item, and a lookup by id would find only one of them."""
    if item_ids is None:
        return np.arange(num_items).astype(str)
    ids = np.asarray(item_ids)
    if ids.shape != (num_items,):
        raise ExportError(f"{owner}: item_ids has shape {ids.shape}, expected ({num_items},) "
                          "(one per row of the item embeddings)")
    repeated = pd.Index(ids).duplicated()  # hashed: fast on millions of ids
    if repeated.any():
        row = int(np.argmax(repeated))
        first = int(np.flatnonzero(ids == ids[row])[0])
        value = ids[row].item() if isinstance(ids[row], np.generic) else ids[row]
        raise ExportError(f"{owner}: item_ids repeats {shown(value)} (rows {first} "
                          f"and {row}; {int(repeated.sum())} repeated): one id per item")
    return ids


def checked_queries(owner: str, queries, dim: int | None) -> tf.Tensor:
    """``queries`` as float32 ``[B, dim]``: a wrong width is refused here, the same way by
    every kind (else a MatMul shape error, or ScaNN's RET_CHECK). Eager calls and traces with
    a known width raise an ExportError; a trace of unknown width asserts in-graph (the same
    message, a core op every server has)."""
    try:
        queries = tf.convert_to_tensor(queries, tf.float32)
    except (TypeError, ValueError) as error:
        raise ExportError(f"{owner}: queries must be float32 numbers ({error})") from None
    if queries.shape.rank is not None and queries.shape.rank != 2:
        raise ExportError(f"{owner}: queries must be [batch, {dim or 'dim'}], got shape "
                          f"{tuple(queries.shape)}")
    if dim is None:
        return queries
    message = f"{owner}: query width must equal the width of the item embeddings"
    width = queries.shape[-1] if queries.shape.rank is not None else None
    if width is not None:
        if width != dim:
            raise ExportError(f"{message} (got {width}, expected {dim})")
        return queries
    check = tf.debugging.assert_equal(tf.shape(queries)[-1], dim, message=message)
    with tf.control_dependencies([check]):
        return tf.identity(queries)


def _first_non_finite(table: np.ndarray | tf.Tensor) -> int | None:
    """The first row holding NaN or Inf, or ``None``."""
    if isinstance(table, tf.Tensor):  # one pass, no [N, d] boolean copy
        try:
            tf.debugging.check_numerics(tf.cast(table, tf.float32), "item embeddings")
        except tf.errors.InvalidArgumentError:
            finite = tf.reduce_all(tf.math.is_finite(tf.cast(table, tf.float32)),
                                   axis=list(range(1, len(table.shape))))
            return int(tf.argmin(tf.cast(finite, tf.int32)))
        return None
    rows = max(1, (1 << 20) // max(1, int(np.prod(table.shape[1:]))))  # bounded memory
    for start in range(0, table.shape[0], rows):
        block = table[start:start + rows]
        finite = np.isfinite(block.reshape(len(block), -1).astype(np.float32)).all(1)
        if not finite.all():
            return start + int(np.argmin(finite))
    return None


def recall_against_brute_force(index, queries: np.ndarray, item_embeddings: np.ndarray,
                               k: int = 10) -> float:
    """Mean fraction of the exact top-k (numpy brute force) that the index also returns
    (``k`` capped at the catalogue and at the deepest search the index was built for)."""
    k = min(k, item_embeddings.shape[0], getattr(index, "k", k))
    exact = np.argsort(-(queries @ item_embeddings.T), axis=1, kind="stable")[:, :k]
    _, found = index(tf.constant(queries, tf.float32), k=k)
    hits = [len(set(a) & set(b)) for a, b in zip(exact, found.numpy(), strict=True)]
    return float(np.mean(hits) / k)
