"""Export: catalogue updates without retraining — add, update or remove items of an exported model.

A version holds everything a catalogue change needs: the served item ids and embeddings, and the
model's own functions (``ServingTowers``: the encoders, the item tower and its in-graph decoders'
twins). ``add``/``update`` read new rows with the training data's checks, decode their media
with the training decoders and embed only those rows with the version's ``embed_item_content``,
``batch_size`` rows at a time (memory bounded by the batch, not the table), keep
every other item's stored embedding, rebuild the index of the version's kind over the result
(:func:`rebuild_index`, the one place an index is built) and write the next version atomically
(``writer.write_version``). A server polling the base path (``tfmmrec serve`` or TF Serving)
swaps it in; a failed or killed update leaves the served versions untouched.

A version keeps no item's text or media, only its embedding: ``add`` and ``update`` embed each
item from its row alone, so their tables give every column of the model's modalities (a missing
one is refused up front, :func:`require_modality_columns`; an empty cell: no such content).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec import modalities
from tfmmrec._env import register_custom_ops
from tfmmrec.config import PartitionedConfig, ScannConfig
from tfmmrec.data import validate
from tfmmrec.data.dataset import ModalityColumns, load_items_table
from tfmmrec.errors import (
    ConfigError,
    DataError,
    ExportError,
    MediaDecodeError,
    ServingError,
    shown,
)
from tfmmrec.export.index import (
    CatalogChange,
    IndexSettings,
    PreviousIndex,
    TopKIndex,
    build,
    index_class,
    recall_against_brute_force,
)
from tfmmrec.export.loader import latest_version
from tfmmrec.export.module import (
    RetrievalServingModule,
    SortedIds,
    TextSearch,
    ids_over_limit,
    over_fetch,
    text_search_table,
)
from tfmmrec.export.variables import VersionVariables, checkpoint_prefix
from tfmmrec.export.warmup import warmup_requests
from tfmmrec.export.writer import (
    ITEM_EMBEDDER,
    METADATA_FILE,
    check_version_free,
    list_versions,
    lost_race_error,
    missing_version_files,
    published_version,
    read_metadata,
    stored_recall_queries,
    write_updated_version,
    write_version,
)
from tfmmrec.modalities.base import check_request_file

logger = logging.getLogger(__name__)

OPERATIONS = ("add", "update", "remove")
# tfmmrec.json's record of the catalogue changes a version serves (``record_update``)
CATALOG_UPDATES = "catalog_updates"


@dataclass
class CatalogUpdate:
    """What an update did: the version written and the item counts."""

    version_dir: Path
    previous_version: Path
    added: int = 0
    updated: int = 0
    removed: int = 0
    num_items: int = 0
    embedded_seconds: float = 0.0


# Below this recall@10 of the exact top 10 (measured on the export's sample of users) an
# approximate index's answers differ visibly from the model's: said as a warning, not only
# recorded in the metadata.
RECALL_FLOOR = 0.95


def low_recall_note(kind: str, recall: float, parameters: dict, num_items: int,
                    update: bool) -> str:
    """The warning of an index whose measured recall is below ``RECALL_FLOOR``, naming what
    raises it (a review's catalogue grown 8.5-fold by updates searched 18 of 58 leaves at
    recall 0.875, logged at INFO only)."""
    searched = parameters.get("num_leaves_to_search")
    leaves = parameters.get("num_leaves")
    where = f" (it searches {searched} of {leaves} leaves)" if searched and leaves else ""
    remedy = ("export.scann.num_leaves_to_search" if kind == "scann"
              else f"export.{kind}'s search settings")
    return (f"{kind} index recall@10 vs brute force is {recall:.3f} over {num_items} items"
            f"{where}, below {RECALL_FLOOR}: served top-k lists differ from the model's; raise "
            f"{remedy} at the next export" + (" (a catalogue update keeps its export's index "
                                              "settings)" if update else ""))


def rebuild_index(item_embeddings: np.ndarray, item_ids: np.ndarray, settings: IndexSettings,
                  max_k: int, previous: PreviousIndex | None = None) -> TopKIndex:
    """The index of ``settings.kind`` over these embeddings (rows = positions in ``item_ids``),
    answering up to ``max_k`` results. Export and catalogue updates both build through
    ``tfmmrec.export.index.build``, so every kind (brute_force, scann, partitioned) is rebuilt
    the same way after a catalogue change, with the export's kind-specific settings; with
    ``previous`` a kind that can derive its index from the previous version's does
    (``TopKIndex.updated``: partitioned)."""
    return build(item_embeddings, item_ids, dataclasses.replace(settings, max_k=max_k),
                 previous=previous)


@dataclass
class PreviousVersion:
    """What a catalogue update read of the version it starts from."""

    path: Path
    metadata: dict
    variables: VersionVariables | None  # None: an export from before reusable graphs
    change: CatalogChange


def write_catalog_version(towers, item_embeddings: np.ndarray | tf.Tensor, item_ids, kind: str,
                          metadata: dict, base_dir: str | os.PathLike, model_name: str,
                          version: int | None = None, *, settings: IndexSettings | None = None,
                          recall_queries: np.ndarray | None = None,
                          warmup_user: str | None = None,
                          previous: PreviousVersion | None = None,
                          id_keys: tuple[np.ndarray, np.ndarray] | None = None,
                          text_features: np.ndarray | tf.Tensor | None = None) -> Path:
    """Build the serving module over ``item_embeddings`` with ``towers`` and write a version.

    ``metadata`` carries the serving settings (``default_k``, ``max_k``, ``max_exclude``,
    ``max_seen``, ``max_session_items``, ``session_user_weight``, ``retrieve_candidates``); the
    index entries and item count are (re)written here, and ``default_k`` / ``max_k`` as the
    graph serves them (capped at the catalogue; the configured ones as ``configured_*``,
    :func:`configured_k`). With ``previous`` (a catalogue update)
    whose graph fits the new module (equal ``graph_constants``), only the catalogue variables
    are written under that graph (``writer.write_updated_version``); otherwise the module is
    traced and saved in full. ``id_keys``: the served-id lookup, when the caller derived it
    (``module.SortedIds.changed``). ``metadata["text_search"]`` (``weight``, ``content_dim``)
    with ``text_features`` (``[N, F]``, unit or zero rows): ``query_text`` gets its own
    index, searched as ``metadata["content_search"]`` says (:func:`text_search_index`).
    """
    item_ids = np.asarray(item_ids)
    if len(item_ids) == 0:
        raise ExportError("cannot export an empty catalogue: at least one item must remain")
    # A chosen version that exists is refused before the index build and recall measurement.
    check_version_free(Path(base_dir) / model_name, version)
    if previous is None:  # an export (an update's new ids were checked as its table was read)
        _refuse_long_ids(item_ids, metadata)
    two_stage = hasattr(towers, "score_candidates")
    # The export's configured k's, kept through every update (a catalogue that shrank and
    # grew back serves its configured max_k again); default_k / max_k become what this
    # version's graph answers (below).
    default_k, max_k = configured_k(metadata)
    metadata = {**metadata, "configured_default_k": default_k, "configured_max_k": max_k}
    deepest = max(max_k, int(metadata["retrieve_candidates"]) if two_stage else 0)
    # recommend_session masks the session's items only with exclude_session_items
    deepest += over_fetch(metadata["max_exclude"], metadata.get("max_seen", 0),
                          metadata["max_session_items"]
                          if metadata.get("exclude_session_items") else 0)
    settings = dataclasses.replace(settings or IndexSettings(), kind=kind)
    index = rebuild_index(item_embeddings, item_ids, settings, deepest,
                          previous=_previous_index(previous, kind))
    uses_scann = "Scann" in index.op_namespaces
    text_search = text_search_index(item_embeddings, text_features, item_ids, metadata,
                                    settings, max_k + over_fetch(metadata["max_exclude"]))
    if text_search is not None:
        metadata = {**metadata, "text_search": {
            **text_search.metadata(), "index": text_search.index.kind,
            "index_parameters": text_search.index.parameters}}
    # A catalogue update first tries the previous graph: no signature function is needed.
    module = RetrievalServingModule(towers, item_embeddings, index,
                                    **_module_settings(item_ids, metadata, id_keys),
                                    build_signatures=previous is None, text_search=text_search)
    constants = json.loads(json.dumps(module.graph_constants()))
    # Advertised k's are the graph's: max_k at most the catalogue size, and the k a request
    # without one gets (the signatures' default) at most max_k.
    metadata = {**metadata, "default_k": min(default_k, module.max_k), "max_k": module.max_k,
                "index": kind, "index_parameters": index.parameters,
                "index_servers": list(index.servers), "num_items": len(item_ids),
                "graph_constants": constants, "tower_functions": tower_functions(towers),
                "load_requirements": [r for m in module.modalities
                                      for r in modalities.get(m).load_requirements]
                + ["import scann (or a TF Serving build with ScaNN ops)"] * uses_scann}
    for stale in ("scann_recall_at_10", "index_recall_at_10"):
        metadata.pop(stale, None)
    if recall_queries is None and previous is not None:  # an update: the export's users
        recall_queries = stored_recall_queries(previous.path)
        if recall_queries is not None and recall_queries.shape[1] != np.shape(
                item_embeddings)[1]:
            recall_queries = None
    if kind == "brute_force":  # exact: no recall to measure, no queries to keep
        recall_queries = None
    if recall_queries is not None and len(recall_queries):
        recall = recall_against_brute_force(index, recall_queries,
                                            np.asarray(item_embeddings, np.float32), k=10)
        metadata["index_recall_at_10"] = recall
        if kind == "scann":
            metadata["scann_recall_at_10"] = recall
        logger.info("%s index recall@10 vs brute force: %.3f", kind, recall)
        if recall < RECALL_FLOOR:
            logger.warning(low_recall_note(kind, recall, index.parameters, len(item_ids),
                                           update=previous is not None))
    warmup = None
    if warmup_user is not None:
        warmup = warmup_requests(module.modalities, warmup_user, int(metadata["default_k"]),
                                 _text(item_ids[0]))
    if (previous is not None and previous.variables is not None
            and previous.metadata.get("graph_constants") == constants):
        written = write_updated_version(previous.path, module, base_dir, model_name, version,
                                        metadata, uses_scann=uses_scann, warmup=warmup,
                                        recall_queries=recall_queries)
        if written is not None:
            return written
    elif previous is not None:
        logger.debug("catalogue update: the graph of %s does not fit the new catalogue (%s); "
                     "saving in full", previous.path.name,
                     "no graph constants recorded" if previous.variables is None else
                     "its graph constants differ")
    if isinstance(towers, StoredTowers):  # the module is traced: it needs the real towers
        module = RetrievalServingModule(towers.load(), item_embeddings, index,
                                        **_module_settings(item_ids, metadata, id_keys),
                                        text_search=text_search)
    return write_version(module, base_dir, model_name, version, metadata,
                         uses_scann=uses_scann, warmup=warmup,
                         recall_queries=recall_queries)


def text_search_settings(settings: IndexSettings) -> IndexSettings:
    """``query_text``'s own index: ScaNN as served (its every-leaf search scores hashed
    codes, cheaper than floats), the other kinds exact (``brute_force``): a partitioned
    index's partitions would be built only to be scanned whole.

    It is searched as ``export.content_search`` says. A typed query lies far from the items
    it should find, so a tree that searches the leaves nearest to it misses them: on ML-100K a
    ScaNN text index searching 20 of its 41 leaves found a film from its title in the top 10
    for 67 % of films where exact search finds 95 %; searching every leaf found the same 95 %
    (``benchmarks/text_search_export.py``)."""
    if settings.kind == "scann":
        return settings
    return dataclasses.replace(settings, kind="brute_force")


def text_search_index(item_embeddings, text_features, item_ids, metadata: dict,
                      settings: IndexSettings, max_k: int) -> TextSearch | None:
    """``query_text``'s index over :func:`module.text_search_table`
    (:func:`text_search_settings`), or ``None`` when ``metadata`` asks for no text search."""
    wanted = metadata.get("text_search")
    if not wanted:
        return None
    if text_features is None or int(text_features.shape[0]) != len(item_ids):
        raise ExportError("text search needs one text-feature row per item, got "
                          f"{None if text_features is None else tuple(text_features.shape)} "
                          f"for {len(item_ids)} items")
    weight, content_dim = float(wanted["weight"]), int(wanted["content_dim"])
    table = text_search_table(item_embeddings, text_features, content_dim=content_dim,
                              weight=weight)
    return TextSearch(weight, content_dim, text_features, rebuild_index(
        table, item_ids, text_search_settings(settings), max_k))


def configured_k(metadata: dict) -> tuple[int, int]:
    """``(default_k, max_k)`` as the export was configured (``export.k``, ``export.max_k``).

    A version records them as ``configured_default_k`` / ``configured_max_k`` and advertises
    the effective ``default_k`` / ``max_k`` (capped at its catalogue size); metadata without
    the configured keys (the export's own settings, or a version written before they were
    recorded) holds the configured values as ``default_k`` / ``max_k``."""
    return (int(metadata.get("configured_default_k", metadata["default_k"])),
            int(metadata.get("configured_max_k", metadata["max_k"])))


def _module_settings(item_ids, metadata: dict, id_keys=None) -> dict:
    default_k, max_k = configured_k(metadata)
    return {"item_ids": item_ids, "id_keys": id_keys, "default_k": default_k, "max_k": max_k,
            # a two-stage version exported before retrieve_candidates < max_k was refused
            # re-ranked max_k candidates: its graph keeps doing so
            "retrieve_candidates": max(int(metadata["retrieve_candidates"]), max_k),
            "max_seen": int(metadata.get("max_seen", 0)),
            "max_exclude": int(metadata["max_exclude"]),
            # None (a version from before limits were recorded): the towers' or the default.
            "max_batch_size": (metadata.get("limits") or {}).get("max_batch_size"),
            # None (a version from before the id limit): no id check, its graph kept
            "max_id_bytes": id_limit(metadata),
            "max_session_items": int(metadata["max_session_items"]),
            "session_user_weight": float(metadata["session_user_weight"]),
            # a version from before the setting returned the session's own items
            "exclude_session_items": bool(metadata.get("exclude_session_items", False)),
            # a version from before the setting searched content through the index
            "content_search": metadata.get("content_search", "index")}


def id_limit(metadata: dict) -> int | None:
    """The version's ``export.limits.max_id_bytes`` (None: exported before the limit)."""
    return (metadata.get("limits") or {}).get("max_id_bytes")


def long_ids(item_ids, limit: int | None, labels: list[str] | None = None) -> str | None:
    """Why catalogue ids over ``limit`` (``export.limits.max_id_bytes``) are refused, naming
    the first few (``labels``: where each came from), or None when all fit: the export's
    graph refuses every request naming a longer id, so such an item could never be excluded,
    looked up or sent in a session. The export refuses them, as ``catalog add`` does per row
    (:func:`embed_table`)."""
    over = ids_over_limit(item_ids, limit)
    if not over:
        return None
    listed = ", ".join(
        f"{labels[i]} ({shown(_text(item_ids[i]))}, {size} bytes)" if labels
        else f"{shown(_text(item_ids[i]))} ({size} bytes)"
        for i, size in over[:validate.SHOW_AT_MOST])
    return (f"{len(over)} item id(s) longer than export.limits.max_id_bytes={limit} bytes, "
            f"which no request could name (the export's graph refuses longer ids): {listed}")


def _refuse_long_ids(item_ids, metadata: dict) -> None:
    """An export's catalogue ids must fit ``export.limits.max_id_bytes`` (:func:`long_ids`)."""
    if message := long_ids(item_ids, id_limit(metadata)):
        raise ExportError(f"{message}. Shorten the ids or raise export.limits.max_id_bytes")


def _previous_index(previous: PreviousVersion | None, kind: str) -> PreviousIndex | None:
    """The previous version's index state, when its kind derives updates from it."""
    if (previous is None or previous.variables is None or previous.metadata["index"] != kind
            or index_class(kind).updated.__func__ is TopKIndex.updated.__func__):
        return None
    return PreviousIndex(previous.variables.read_under(("index",)),
                         previous.metadata.get("index_parameters") or {}, previous.change)


def _as_bytes(ids) -> np.ndarray:
    """Ids as the stored form: an object array of UTF-8 bytes."""
    return np.array([i if isinstance(i, bytes) else str(i).encode() for i in ids], object)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the three operations ----------------------------------------------------------------------


def add(model_base_path: str | os.PathLike, items: str | os.PathLike, *,
        batch_size: int = 64) -> CatalogUpdate:
    """Add the items of a table (same columns as the training items table; media paths relative
    to the table's folder). An id already in the catalogue is an error (use :func:`update`).
    Every column of a modality the model embeds must be present (:func:`require_modality_columns`;
    an empty cell: the item lacks it). ``batch_size`` (>= 1): rows decoded and embedded at a
    time."""
    return apply(model_base_path, "add", items=items, batch_size=batch_size)


def update(model_base_path: str | os.PathLike, items: str | os.PathLike, *,
           batch_size: int = 64) -> CatalogUpdate:
    """Re-embed existing items from new content (every id must be in the catalogue).

    Each row replaces its item whole: a version keeps no item's text or media, so the table
    gives every column of the model's modalities, as :func:`add`'s does (a missing column is
    an error; an empty cell removes that content from the item; a row with every cell empty
    is refused, as in :func:`add`: use :func:`remove`)."""
    return apply(model_base_path, "update", items=items, batch_size=batch_size)


def remove(model_base_path: str | os.PathLike, items: str | os.PathLike | None = None, *,
           item_ids=None) -> CatalogUpdate:
    """Remove items (ids from a table's ``item_id`` column, or given): never returned again."""
    return apply(model_base_path, "remove", items=items, item_ids=item_ids)


def apply(model_base_path: str | os.PathLike, operation: str, *,
          items: str | os.PathLike | None = None, item_ids=None,
          batch_size: int = 64) -> CatalogUpdate:
    """Load the newest version under ``model_base_path`` (``BASE/NAME``), apply ``operation``
    and write the next version. Every check runs before anything is written."""
    if operation not in OPERATIONS:
        raise ExportError(f"unknown catalogue operation {operation!r}: use "
                          f"{', '.join(OPERATIONS)}")
    batch_size = check_batch_size(batch_size)
    if items is not None and item_ids is not None:  # one would be ignored: say so, first
        raise DataError(f"catalog {operation}: give the item ids either in a table (--items "
                        "FILE, items=) or as ids (--ids, item_ids=), not both")
    model_dir = Path(model_base_path)
    previous = latest_version(model_dir)
    # the number this update publishes, fixed now: of two updates of the same version, the
    # second to finish must fail rather than publish a catalogue without the first one's
    # change; above any number published before (and removed: a rollback), never reusing one
    version = max(int(previous.name), published_version(model_dir)) + 1
    missing = missing_version_files(previous)
    if missing:  # before the checkpoint is read and the rows embedded
        raise ExportError(f"{previous} is incomplete (no {', '.join(missing)}): a catalogue "
                          "update builds on the newest version; remove the folder or export "
                          "it again")
    metadata = read_metadata(previous)
    register_custom_ops(scann=metadata.get("requires_scann_ops", True))
    towers, ids, embeddings, variables = _read_version(previous, metadata)
    text_features = _read_text_features(previous, metadata, variables)
    result = CatalogUpdate(previous, previous)
    # Served ids as stored (bytes: no million-string decode), looked up through the stored
    # sorted hashes when the version has them.
    position = (pd.Index(ids) if variables is None else SortedIds(
        variables.read(("item_keys",)), variables.read(("item_key_rows",)), ids))

    if operation == "remove":
        if items is not None:
            path = Path(items)
            frame = validate.read_table(path, id_columns=["item_id"])
            validate.require_columns(frame, path, ["item_id"])
            validate.require_no_missing_ids(frame, path, "item_id")
            where = [validate.row_label(path, i) for i in range(len(frame))]
            wanted = [str(i) for i in frame["item_id"]]
        else:
            wanted = [str(i) for i in np.atleast_1d(item_ids if item_ids is not None else [])]
            where = [f"id #{i + 1}" for i in range(len(wanted))]
        if not wanted:
            raise DataError("catalog remove: no item ids given (--items FILE or --ids)")
        _refuse_repeated(wanted, where)
        rows = position.get_indexer(_as_bytes(wanted))
        unknown = [f"{w} ({item!r})" for item, w, row in zip(wanted, where, rows, strict=True)
                   if row < 0]
        if unknown:
            raise DataError(f"catalog remove: {len(unknown)} id(s) not in {previous}: "
                            f"{', '.join(unknown[:validate.SHOW_AT_MOST])}")
        keep = np.ones(len(ids), bool)
        keep[rows] = False
        change = CatalogChange(np.flatnonzero(keep), np.zeros(0, np.int64), len(ids))
        ids, embeddings = ids[keep], tf.gather(embeddings, np.flatnonzero(keep))
        if text_features is not None:
            text_features = tf.gather(text_features, np.flatnonzero(keep))
        result.removed = int((~keep).sum())
    else:
        if items is None:
            raise DataError(f"catalog {operation}: --items FILE is required")
        started = time.perf_counter()
        embedded = embed_table(towers, Path(items), metadata, position, operation, batch_size)
        new_ids, new_embeddings = embedded.ids, embedded.embeddings
        result.embedded_seconds = time.perf_counter() - started
        if operation == "add":
            change = CatalogChange(
                np.concatenate([np.arange(len(ids)), np.full(len(new_ids), -1)]),
                np.arange(len(ids), len(ids) + len(new_ids)), len(ids))
            ids = np.concatenate([ids, _as_bytes(new_ids)])
            embeddings = tf.concat([embeddings, new_embeddings], axis=0)
            if text_features is not None:
                text_features = tf.concat([text_features, embedded.text_features], axis=0)
            result.added = len(new_ids)
        else:
            rows = position.get_indexer(_as_bytes(new_ids))
            change = CatalogChange(np.arange(len(ids)), np.sort(rows), len(ids))
            embeddings = tf.tensor_scatter_nd_update(embeddings, rows[:, None], new_embeddings)
            if text_features is not None:
                text_features = tf.tensor_scatter_nd_update(text_features, rows[:, None],
                                                            embedded.text_features)
            result.updated = len(new_ids)

    metadata = {**metadata, CATALOG_UPDATES: record_update(metadata, previous, result)}
    try:
        result.version_dir = write_catalog_version(
            towers, embeddings, ids, metadata["index"], metadata, model_dir.parent,
            model_dir.name, version, settings=_index_settings(metadata),
            warmup_user=metadata.get("warmup_user", ""),
            previous=PreviousVersion(previous, metadata, variables, change),
            id_keys=position.changed(change, ids) if isinstance(position, SortedIds) else None,
            text_features=text_features)
    except ExportError:
        # not ours: another writer published it, or noted it and is renaming it in
        if (model_dir / str(version)).exists() or published_version(model_dir) >= version:
            raise lost_race_error(version, model_dir / str(version)) from None
        raise
    result.num_items = len(ids)
    logger.debug("catalogue %s: %s → %s (%d items)", operation, previous.name,
                result.version_dir.name, len(ids))
    return result


def _refuse_repeated(wanted: Sequence[str], where: Sequence[str]) -> None:
    """An id given twice to ``remove`` is refused, as ``add`` and ``update`` refuse one: a
    repeat is a mistake in the list, not a second removal."""
    first: dict[str, int] = {}
    for n, item in enumerate(wanted):
        if item in first:
            raise DataError(f"catalog remove: {where[n]} repeats {shown(item)} (first at "
                            f"{where[first[item]]}); give each id once")
        first[item] = n


def record_update(metadata: dict, previous: Path, result: CatalogUpdate) -> dict:
    """The catalogue changes a version serves on top of the export it descends from, summed
    over every update since (``tfmmrec.json``'s ``catalog_updates``): what a new export of
    the run would drop (:func:`check_no_catalog_updates`)."""
    record = dict(metadata.get(CATALOG_UPDATES) or {"exported_version": int(previous.name),
                                                     "updates": 0, "added": 0, "removed": 0,
                                                     "updated": 0})
    record["updates"] += 1
    for change in ("added", "removed", "updated"):
        record[change] += getattr(result, change)
    return record


_WARNED_REPLACED: set[tuple[str, str]] = set()


def check_no_catalog_updates(model_dir: str | os.PathLike, replace: bool = False) -> None:
    """Refuse an export from the run while the newest version under ``model_dir`` serves
    catalogue updates: the export becomes the newest version, so a server would switch to the
    run's catalogue and drop every change without a word. ``replace``
    (``export.replace_catalog_updates``) exports anyway, with a warning."""
    if not (Path(model_dir).is_dir() and list_versions(model_dir)):
        return
    newest = latest_version(model_dir)
    if not (newest / "assets.extra" / METADATA_FILE).is_file():
        return  # not a version tfmmrec wrote: nothing of ours to drop
    record = read_metadata(newest).get(CATALOG_UPDATES)  # a damaged file: its one-line error
    if not record:
        return
    changes = (f"{record['updates']} catalogue update(s) on top of version "
               f"{record['exported_version']}: {record['added']} added, {record['removed']} "
               f"removed, {record['updated']} updated")
    if replace:
        if (str(newest.absolute()), changes) not in _WARNED_REPLACED:  # `export` checks it
            _WARNED_REPLACED.add((str(newest.absolute()), changes))  # up front and when writing
            logger.warning("%s serves %s; the new export serves the run's catalogue without "
                           "them (export.replace_catalog_updates)", newest, changes)
        return
    raise ExportError(f"{newest} serves {changes}; a new export of the run serves the run's "
                      "catalogue and would drop them once it is the newest version. Export "
                      "to another export.base_dir and apply the changes to it with `tfmmrec "
                      "catalog`, or set export.replace_catalog_updates=true to replace them")


def _read_version(version_dir: Path, metadata: dict):
    """``(towers, item ids as bytes, item embeddings as a tf.Tensor, variables)`` of a
    version. An export
    that records its ``graph_constants`` is not loaded: its catalogue is read straight from the
    checkpoint (``variables``) and its towers are :class:`StoredTowers`; an older one is loaded
    whole (``variables`` None: the update saves in full)."""
    try:
        if "graph_constants" in metadata and "tower_functions" in metadata:
            variables = VersionVariables(version_dir)
            towers = StoredTowers(version_dir, metadata["tower_functions"], variables)
            return (towers, variables.read(("item_ids",)),
                    variables.read_tensor(("item_table",)), variables)
        loaded = tf.saved_model.load(str(version_dir))
    except Exception as exc:
        raise ExportError(f"cannot load SavedModel {version_dir}: {exc}") from None
    if not hasattr(loaded, "towers"):
        raise ExportError(f"{version_dir} was exported before catalogue updates existed (no "
                          "towers in the SavedModel); export the model again with this version")
    return loaded.towers, loaded.item_ids.numpy(), tf.convert_to_tensor(loaded.item_table), None


def _read_text_features(version_dir: Path, metadata: dict,
                        variables: VersionVariables | None) -> tf.Tensor | None:
    """The version's ``[N, F]`` item text features (``None`` without text search; a version
    with it always records its graph constants, so its checkpoint is read directly)."""
    if not metadata.get("text_search"):
        return None
    if variables is None or not variables.has(("text_features",)):
        raise ExportError(f"{version_dir}: its metadata names text search but it holds no "
                          "text features; export the model again")
    return variables.read_tensor(("text_features",))


def tower_functions(towers) -> list[str]:
    """The names of the towers' saved functions (recorded in each version's metadata)."""
    if isinstance(towers, StoredTowers):
        return list(towers.functions)
    return sorted(name for name in dir(towers) if not name.startswith("_")
                  and isinstance(getattr(towers, name), tf.types.experimental.GenericFunction))


class StoredTowers:
    """The towers of a saved version, loaded only as far as a catalogue update uses them.

    Building the next version's serving module asks of its towers only which functions they
    have (``hasattr``; recorded as ``tower_functions`` in the metadata) and, with a baked seen
    set, the training ids (read from the checkpoint). When the update writes variables under
    the previous graph, that is all: ``embed_item_content`` loads the version's
    ``assets.extra/item_embedder`` (that one function and its variables, not every
    signature). :meth:`load` restores the towers themselves, for an update that must trace
    and save the module in full.
    """

    def __init__(self, version_dir: Path, functions, variables: VersionVariables):
        self.version_dir = Path(version_dir)
        self.functions = tuple(functions)
        self._variables = variables
        self._loaded = self._embedder = None

    def __getattr__(self, name: str):
        if name in self.__dict__.get("functions", ()):
            return functools.partial(self._call, name)
        raise AttributeError(name)

    def _call(self, name: str, *args, **kwargs):
        return getattr(self.load(), name)(*args, **kwargs)

    @property
    def training_item_ids(self) -> tf.Tensor:
        return tf.constant(self._variables.read(("towers", "training_item_ids")))

    def embed_item_content(self, content):
        return self._item_embedder().embed_item_content(content)

    def embed_item_content_with_text(self, content):
        return self._item_embedder().embed_item_content_with_text(content)

    def _item_embedder(self):
        if self._embedder is None:  # the loaded module itself: it owns the variables
            path = self.version_dir / "assets.extra" / ITEM_EMBEDDER
            self._embedder = tf.saved_model.load(str(path)) if path.is_dir() else self.load()
        return self._embedder

    def load(self):
        """The restored towers (every function; catalogue variables are not restored)."""
        if self._loaded is None:
            loaded = tf.saved_model.load(str(self.version_dir), options=tf.saved_model.LoadOptions(
                experimental_skip_checkpoint=True))
            # The SavedModel's checkpoint keys are paths from its root: a Checkpoint whose one
            # child is `towers` restores exactly the towers' subtree.
            tf.train.Checkpoint(towers=loaded.towers).restore(
                checkpoint_prefix(self.version_dir)).expect_partial()
            self._loaded = loaded  # kept: the root owns what the towers' functions capture
        return self._loaded.towers


def _index_settings(metadata: dict) -> IndexSettings:
    """The export's index settings (``None`` fields scale with the new catalogue size)."""
    stored = metadata.get("index_settings") or {}
    return IndexSettings(kind=metadata["index"],
                         scann=ScannConfig(**(stored.get("scann") or {})),
                         partitioned=PartitionedConfig(**(stored.get("partitioned") or {})))


@dataclass
class EmbeddedTable:
    """A table's items as a version embeds them: ids, served embeddings and, with text search
    (``export.text_search_weight``), each item's unit text feature."""

    ids: np.ndarray
    embeddings: np.ndarray
    text_features: np.ndarray | None = None


def check_batch_size(batch_size) -> int:
    """``batch_size`` (``--batch-size``) as an int, or a ``ConfigError`` naming it: the rows a
    catalogue update decodes and embeds at a time, at least 1."""
    if (isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)
            or batch_size < 1):
        raise ConfigError(f"invalid --batch-size (batch_size) {batch_size!r}: it must be an "
                          "integer >= 1 (the items decoded and embedded at a time; default 64)")
    return int(batch_size)


def embed_table(towers, path: Path, metadata: dict,
                position: pd.Index | SortedIds | Mapping[str, int], operation: str,
                batch_size: int = 64) -> EmbeddedTable:
    """Read, check and embed a table of new or changed items with the version's towers
    (``position``: the served ids, as an index or ``{id: row}``); with text search on, the
    encoder's text features come from the same pass.

    Media are decoded and embedded ``batch_size`` rows at a time (:class:`ContentDecoder`):
    only the embeddings are kept, so memory grows with the batch, not the table. Every row is
    still checked before this returns (a file that does not decode fails the whole table, with
    the rows of every such file), and nothing is written here: the caller publishes the
    version only after a table that passed every check."""
    batch_size = check_batch_size(batch_size)
    schema = metadata.get("item_columns")
    if schema is None:
        raise ExportError("this export does not record its items-table columns; export the "
                          "model again with this version of tfmmrec")
    columns = ModalityColumns.from_mapping({spec.name: spec.from_schema(schema.get(spec.name))
                                            for spec in modalities.specs()})
    with validate.missing_media_refused():  # the decoder's error names each missing file
        catalog = load_items_table(path, columns)
    known = {"item_id", *(c for name in modalities.names() for c in columns.of(name))}
    unknown = [str(c) for c in catalog.frame.columns if c not in known]
    if unknown:
        raise DataError(f"{path}: unknown column(s) {', '.join(unknown)}; this model reads "
                        f"{', '.join(sorted(known))} — rename or drop the others")
    present = tuple(metadata["modalities"])
    require_modality_columns(catalog.frame.columns, path, columns, present, operation)
    new_ids = catalog.item_ids.astype(str)
    labels = [validate.row_label(path, i) for i in range(len(new_ids))]
    if message := long_ids(new_ids, id_limit(metadata), labels):
        raise DataError(f"{path}: {message}. Shorten them; nothing was written")
    if isinstance(position, Mapping):  # {id: row}, as callers outside `apply` pass
        served = np.array([str(i) in position for i in new_ids], bool)
    else:
        served = position.get_indexer(_as_bytes(new_ids)) >= 0
    if operation == "add":
        clash = [f"{w} ({str(i)!r})" for i, w, s in zip(new_ids, labels, served, strict=True)
                 if s]
        if clash:
            raise DataError(f"{path}: {len(clash)} item id(s) already in the catalogue: "
                            f"{', '.join(clash[:validate.SHOW_AT_MOST])}. Use `catalog "
                            "update` to change them")
    else:
        missing = [f"{w} ({str(i)!r})" for i, w, s in zip(new_ids, labels, served, strict=True)
                   if not s]
        if missing:
            raise DataError(f"{path}: {len(missing)} item id(s) not in the catalogue: "
                            f"{', '.join(missing[:validate.SHOW_AT_MOST])}. Use `catalog add`")
    settings = {key: metadata[key] for key in modalities.default_settings() if key in metadata}
    # The export's limits (its serving graph enforces them), for the new items' files too.
    settings.update(modalities.limit_settings(metadata.get("limits")))
    decoder = ContentDecoder(catalog, path, present, settings)
    # A table that will be refused (a missing file, or a row with no content) is still
    # decoded to the end, for the error's full list, but not embedded.
    refused = decoder.missing_files() or not decoder.given().all()
    with_text = bool(metadata.get("text_search"))
    has = np.zeros(len(new_ids), bool)
    embeddings, features = [], []
    for start in range(0, len(new_ids), batch_size):
        rows = range(start, min(start + batch_size, len(new_ids)))
        content = decoder.decode(rows)
        for name in present:
            has[start:rows.stop] |= np.asarray(content[f"{name}_mask"], bool)
        refused = refused or bool(decoder.problems)
        if not refused:
            embedding, feature = _embed_batch(towers, content, with_text)
            embeddings.append(embedding)
            features.append(feature)
        del content  # this batch's media, before the next batch is decoded
    decoder.raise_problems()
    _refuse_items_without_content(has, new_ids, path, labels, sorted(known - {"item_id"}),
                                  operation)
    return EmbeddedTable(new_ids, np.concatenate(embeddings).astype(np.float32),
                         np.concatenate(features).astype(np.float32) if with_text else None)


def require_modality_columns(found, path: Path, columns: ModalityColumns,
                             present: Sequence[str], operation: str) -> None:
    """Refuse a table that lacks a column of a modality the model embeds (``present``).

    ``add``/``update`` embed each item from its row alone: a version keeps no item's text or
    media, only its embedding, so an ``update`` table without the image column would re-embed
    every row without its image (and an ``add`` table would publish items without theirs),
    with nothing to tell a typo fix from a deliberate removal. A missing column is therefore
    an error before anything is decoded; an empty cell in a present column is how a row says
    the item has no such content."""
    missing = [(name, column) for name in present for column in columns.of(name)
               if column not in found]
    if not missing:
        return
    named = ", ".join(f"{name} column {column!r}" for name, column in missing)
    kinds = " and ".join(dict.fromkeys(name for name, _ in missing))
    if operation == "update":
        why = ("re-embeds each item from its row alone (a version keeps no item's content: "
               f"an update replaces the whole item), so every row would lose its {kinds}")
    else:
        why = ("embeds each new item from its row alone, so every row would be served "
               f"without its {kinds}")
    raise DataError(f"{path}: no {named}, which this model embeds; `catalog {operation}` {why}. "
                    "Add the column(s) with each item's value (an empty cell: the item has "
                    "none); nothing was written")


def _embed_batch(towers, content: Mapping[str, np.ndarray],
                 with_text: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One decoded batch's ``(embeddings, text features or None)``, as numpy arrays."""
    batch = {name: tf.constant(value) for name, value in content.items()}
    if with_text:
        parts = towers.embed_item_content_with_text(batch)
        return parts["embedding"].numpy(), parts["text_feature"].numpy()
    return towers.embed_item_content(batch).numpy(), None


def _refuse_items_without_content(has: np.ndarray, item_ids: np.ndarray, path: Path,
                                  labels: list[str], columns: list[str], operation: str) -> None:
    """An added or updated item with no value in any column the model reads (``has`` False:
    no modality's ``_mask`` set) has nothing in its row to be embedded from (a new id has no
    trained id row; without id embeddings every such row gets the same no-content vector and
    ranks as one item): refused, not served as a meaningless vector. An item with no content
    left is a ``catalog remove``."""
    empty = [f"{label} ({str(item)!r})" for label, item, h
             in zip(labels, item_ids, has, strict=True) if not h]
    if not empty:
        return
    what = "new item(s)" if operation == "add" else "updated item(s)"
    fix = "Give each at least one" if operation == "add" else (
        "Give each at least one, or `catalog remove` an item that has no content left")
    raise DataError(f"{path}: {len(empty)} {what} with no content in any column this model "
                    f"reads ({', '.join(columns)}): {', '.join(empty[:validate.SHOW_AT_MOST])}. "
                    f"{fix}; nothing was written")


class ContentDecoder:
    """``embed_item_content``'s inputs for rows of an items table, decoded by the training
    decoders (``settings``: the export's preprocessing settings), a batch of rows at a time.

    A media value that names a missing or undecodable file is a problem (a catalogue update
    must not silently publish an item without its poster), collected in :attr:`problems` over
    every :meth:`decode` and raised by :meth:`raise_problems` as one ``DataError`` listing
    them in the table's order; an empty value means the item lacks that modality."""

    def __init__(self, catalog, path: Path, present: tuple[str, ...],
                 settings: dict | None = None):
        self.path = path
        self.settings = modalities.resolve_settings(dict(settings or {}))
        self.specs = [spec for spec in modalities.specs() if spec.name in present]
        self.item_ids = catalog.item_ids.astype(str)
        self.where = [f"{validate.row_label(path, row)} ({str(item)!r})"
                      for row, item in enumerate(self.item_ids)]
        # What the table says per item and modality (text; no file is read here).
        self.values = {spec.name: catalog.values(spec.name) for spec in self.specs}
        self.written = {spec.name: _written_values(catalog, spec) for spec in self.specs}
        self.problems: list[tuple[int, int, str]] = []  # (modality, row, message)

    def missing_files(self) -> bool:
        """Whether a row names a file that does not exist (known before any decoding)."""
        return any(given and value is None
                   for spec in self.specs for value, given
                   in zip(self.values[spec.name], self.written[spec.name], strict=True))

    def given(self) -> np.ndarray:
        """Boolean [N]: whether the row gives a value for any modality the model reads."""
        given = np.zeros(len(self.item_ids), bool)
        for spec in self.specs:
            given |= np.array([bool(w) for w in self.written[spec.name]], bool)
        return given

    def decode(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """The decoded content of ``rows`` (a row with a problem decodes as absent)."""
        content: dict[str, np.ndarray] = {"item_id": self.item_ids[np.asarray(rows, np.intp)]}
        for order, spec in enumerate(self.specs):
            values, written = self.values[spec.name], self.written[spec.name]
            decoded: list = []
            for row in rows:
                value, given = values[row], written[row]
                if not given:
                    decoded.append(None)
                    continue
                if value is None:
                    self.problems.append(
                        (order, row, f"{self.where[row]}: {self._unresolved(spec, given)}"))
                    decoded.append(None)
                    continue
                try:
                    decoded.append(spec.load(value, self.settings))
                except MediaDecodeError as exc:
                    self.problems.append((order, row, f"{self.where[row]}: {exc}"))
                    decoded.append(None)
            content[f"{spec.name}_mask"] = np.array([d is not None for d in decoded], bool)
            content.update(spec.pack(spec.fill(decoded, self.settings)))
        return content

    def _unresolved(self, spec: modalities.ModalitySpec, given: str) -> str:
        """Why a media value names no file to read: missing, or refused by the query files'
        rule (``check_request_file``: /dev/zero, a pipe or a folder is not a regular file),
        which "not found" misreported. Any size is read, as training reads it."""
        path = Path(given) if Path(given).is_absolute() else self.path.parent / given
        if os.path.lexists(path):
            try:
                check_request_file(path, spec.name, limit=None)
            except ServingError as exc:
                return str(exc)
        return f"{spec.name} file {given!r} not found"

    def raise_problems(self) -> None:
        """A ``DataError`` listing every problem met so far (each modality's rows in order)."""
        if not self.problems:
            return
        problems = [message for _, _, message in sorted(self.problems)]
        listed = "; ".join(problems[:validate.SHOW_AT_MOST])
        raise DataError(f"{self.path}: {len(problems)} media file(s) missing or unreadable: "
                        f"{listed}. Fix the paths (relative to the table's folder) or leave the "
                        "value empty for an item without that modality; nothing was written")


def decode_content(catalog, path: Path, present: tuple[str, ...],
                   settings: dict | None = None) -> dict[str, np.ndarray]:
    """``embed_item_content``'s inputs for every row of ``catalog`` at once
    (:class:`ContentDecoder`), or the ``DataError`` listing each missing or undecodable file.
    A catalogue update decodes batch by batch instead (:func:`embed_table`)."""
    decoder = ContentDecoder(catalog, path, present, settings)
    content = decoder.decode(range(len(catalog)))
    decoder.raise_problems()
    return content


def _written_values(catalog, spec: modalities.ModalitySpec) -> list:
    """What the table says per item: a media column's text (a path that may not resolve), or
    the inline content itself ("" / falsy: the item lacks the modality)."""
    if not isinstance(spec, modalities.FileModality):
        return [value if spec.present(value) else "" for value in catalog.values(spec.name)]
    columns = catalog.columns.of(spec.name)
    column = columns[0] if columns else None
    if column not in catalog.frame.columns:
        return [""] * len(catalog)
    return catalog.frame[column].fillna("").astype(str).str.strip().tolist()
