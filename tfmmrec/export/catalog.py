"""Export: catalogue updates without retraining — add, update or remove items of an exported model.

A version holds everything a catalogue change needs: the served item ids and embeddings, and the
model's own functions (``ServingTowers``: the encoders, the item tower and its in-graph decoders'
twins). ``add``/``update`` read new rows with the training data's checks, decode their media
with the training decoders, embed only those rows with the version's ``embed_item_content``, keep
every other item's stored embedding, rebuild the index of the version's kind over the result
(:func:`rebuild_index`, the one place an index is built) and write the next version atomically
(``writer.write_version``). A server polling the base path (``tfmmrec serve`` or TF Serving)
swaps it in; a failed or killed update leaves the served versions untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmmrec import modalities
from tfmmrec._env import register_custom_ops
from tfmmrec.config import PartitionedConfig, ScannConfig
from tfmmrec.data import validate
from tfmmrec.data.dataset import ModalityColumns, load_items_table
from tfmmrec.errors import DataError, ExportError, MediaDecodeError
from tfmmrec.export.index import IndexSettings, TopKIndex, build, recall_against_brute_force
from tfmmrec.export.loader import latest_version
from tfmmrec.export.module import RetrievalServingModule
from tfmmrec.export.warmup import warmup_requests
from tfmmrec.export.writer import read_metadata, write_version

logger = logging.getLogger(__name__)

OPERATIONS = ("add", "update", "remove")


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


def rebuild_index(item_embeddings: np.ndarray, item_ids: np.ndarray, settings: IndexSettings,
                  max_k: int) -> TopKIndex:
    """The index of ``settings.kind`` over these embeddings (rows = positions in ``item_ids``),
    answering up to ``max_k`` results. Export and catalogue updates both build through
    ``tfmmrec.export.index.build``, so every kind (brute_force, scann, partitioned) is rebuilt
    the same way after a catalogue change, with the export's kind-specific settings."""
    return build(item_embeddings, item_ids, dataclasses.replace(settings, max_k=max_k))


def write_catalog_version(towers, item_embeddings: np.ndarray, item_ids, kind: str,
                          metadata: dict, base_dir: str | os.PathLike, model_name: str,
                          version: int | None = None, *, settings: IndexSettings | None = None,
                          recall_queries: np.ndarray | None = None,
                          warmup_user: str | None = None) -> Path:
    """Build the serving module over ``item_embeddings`` with ``towers`` and write a version.

    ``metadata`` carries the serving settings (``default_k``, ``max_k``, ``max_exclude``,
    ``max_seen``, ``max_session_items``, ``session_user_weight``, ``retrieve_candidates``); the
    index entries and item count are (re)written here.
    """
    item_ids = np.asarray(item_ids).astype(str)
    if len(item_ids) == 0:
        raise ExportError("cannot export an empty catalogue: at least one item must remain")
    two_stage = hasattr(towers, "score_candidates")
    max_k = int(metadata["max_k"])
    deepest = max(max_k, int(metadata["retrieve_candidates"]) if two_stage else 0)
    deepest += int(metadata["max_exclude"]) + int(metadata.get("max_seen", 0))
    settings = dataclasses.replace(settings or IndexSettings(), kind=kind)
    index = rebuild_index(item_embeddings, item_ids, settings, deepest)
    uses_scann = "Scann" in index.op_namespaces
    module = RetrievalServingModule(
        towers, item_embeddings, index, item_ids=item_ids, default_k=int(metadata["default_k"]),
        max_k=max_k, retrieve_candidates=int(metadata["retrieve_candidates"]),
        max_seen=int(metadata.get("max_seen", 0)), max_exclude=int(metadata["max_exclude"]),
        max_session_items=int(metadata["max_session_items"]),
        session_user_weight=float(metadata["session_user_weight"]))
    metadata = {**metadata, "index": kind, "index_parameters": index.parameters,
                "index_servers": list(index.servers), "num_items": len(item_ids),
                "load_requirements": [r for m in module.modalities
                                      for r in modalities.get(m).load_requirements]
                + ["import scann (or a TF Serving build with ScaNN ops)"] * uses_scann}
    for stale in ("scann_recall_at_10", "index_recall_at_10"):
        metadata.pop(stale, None)
    if kind != "brute_force" and recall_queries is not None and len(recall_queries):
        recall = recall_against_brute_force(index, recall_queries, item_embeddings, k=10)
        metadata["index_recall_at_10"] = recall
        if kind == "scann":
            metadata["scann_recall_at_10"] = recall
        logger.info("%s index recall@10 vs brute force: %.3f", kind, recall)
    warmup = None
    if warmup_user is not None:
        warmup = warmup_requests(module.modalities, warmup_user,
                               min(int(metadata["default_k"]), module.max_k), item_ids[0])
    return write_version(module, base_dir, model_name, version, metadata,
                         uses_scann=uses_scann, warmup=warmup)


# -- the three operations ----------------------------------------------------------------------


def add(model_base_path: str | os.PathLike, items: str | os.PathLike, *,
        batch_size: int = 64) -> CatalogUpdate:
    """Add the items of a table (same columns as the training items table; media paths relative
    to the table's folder). An id already in the catalogue is an error (use :func:`update`)."""
    return apply(model_base_path, "add", items=items, batch_size=batch_size)


def update(model_base_path: str | os.PathLike, items: str | os.PathLike, *,
           batch_size: int = 64) -> CatalogUpdate:
    """Re-embed existing items from new content (every id must be in the catalogue)."""
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
    import time

    if operation not in OPERATIONS:
        raise ExportError(f"unknown catalogue operation {operation!r}: use "
                          f"{', '.join(OPERATIONS)}")
    model_dir = Path(model_base_path)
    previous = latest_version(model_dir)
    metadata = read_metadata(previous)
    register_custom_ops(scann=metadata.get("requires_scann_ops", True))
    try:
        loaded = tf.saved_model.load(str(previous))
    except Exception as exc:
        raise ExportError(f"cannot load SavedModel {previous}: {exc}") from None
    if not hasattr(loaded, "towers"):
        raise ExportError(f"{previous} was exported before catalogue updates existed (no "
                          "towers in the SavedModel); export the model again with this version")
    ids = loaded.item_ids.numpy().astype(str)
    embeddings = loaded.item_table.numpy()
    result = CatalogUpdate(previous, previous)
    position = {item: i for i, item in enumerate(ids)}

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
        unknown = [f"{w} ({item!r})" for item, w in zip(wanted, where, strict=True)
                   if item not in position]
        if unknown:
            raise DataError(f"catalog remove: {len(unknown)} id(s) not in {previous}: "
                            f"{', '.join(unknown[:validate.SHOW_AT_MOST])}")
        keep = np.ones(len(ids), bool)
        keep[[position[i] for i in wanted]] = False
        ids, embeddings = ids[keep], embeddings[keep]
        result.removed = int((~keep).sum())
    else:
        if items is None:
            raise DataError(f"catalog {operation}: --items FILE is required")
        started = time.perf_counter()
        new_ids, new_embeddings = embed_table(loaded.towers, Path(items), metadata, position,
                                              operation, batch_size)
        result.embedded_seconds = time.perf_counter() - started
        if operation == "add":
            ids = np.concatenate([ids, new_ids])
            embeddings = np.concatenate([embeddings, new_embeddings])
            result.added = len(new_ids)
        else:
            rows = [position[i] for i in new_ids]
            embeddings = embeddings.copy()
            embeddings[rows] = new_embeddings
            result.updated = len(new_ids)

    result.version_dir = write_catalog_version(
        loaded.towers, embeddings, ids, metadata["index"], metadata, model_dir.parent,
        model_dir.name, settings=_index_settings(metadata),
        warmup_user=metadata.get("warmup_user", ""))
    result.num_items = len(ids)
    logger.info("catalogue %s: %s → %s (%d items)", operation, previous.name,
                result.version_dir.name, len(ids))
    return result


def _index_settings(metadata: dict) -> IndexSettings:
    """The export's index settings (``None`` fields scale with the new catalogue size)."""
    stored = metadata.get("index_settings") or {}
    return IndexSettings(kind=metadata["index"],
                         scann=ScannConfig(**(stored.get("scann") or {})),
                         partitioned=PartitionedConfig(**(stored.get("partitioned") or {})))


def embed_table(towers, path: Path, metadata: dict, position: dict[str, int], operation: str,
                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Read, check and embed a table of new or changed items with the version's towers."""
    schema = metadata.get("item_columns")
    if schema is None:
        raise ExportError("this export does not record its items-table columns; export the "
                          "model again with this version of tfmmrec")
    columns = ModalityColumns.from_mapping({spec.name: spec.from_schema(schema.get(spec.name))
                                            for spec in modalities.specs()})
    catalog = load_items_table(path, columns)
    known = {"item_id", *(c for name in modalities.names() for c in columns.of(name))}
    unknown = [str(c) for c in catalog.frame.columns if c not in known]
    if unknown:
        raise DataError(f"{path}: unknown column(s) {', '.join(unknown)}; this model reads "
                        f"{', '.join(sorted(known))} — rename or drop the others")
    new_ids = catalog.item_ids.astype(str)
    labels = [validate.row_label(path, i) for i in range(len(new_ids))]
    if operation == "add":
        clash = [f"{w} ({str(i)!r})" for i, w in zip(new_ids, labels, strict=True) if i in position]
        if clash:
            raise DataError(f"{path}: {len(clash)} item id(s) already in the catalogue: "
                            f"{', '.join(clash[:validate.SHOW_AT_MOST])}. Use `catalog "
                            "update` to change them")
    else:
        missing = [f"{w} ({str(i)!r})" for i, w in zip(new_ids, labels, strict=True)
                   if i not in position]
        if missing:
            raise DataError(f"{path}: {len(missing)} item id(s) not in the catalogue: "
                            f"{', '.join(missing[:validate.SHOW_AT_MOST])}. Use `catalog add`")
    present = tuple(metadata["modalities"])
    settings = {key: metadata[key] for key in modalities.default_settings() if key in metadata}
    content = decode_content(catalog, path, present, settings)
    parts = []
    for start in range(0, len(new_ids), batch_size):
        batch = {name: tf.constant(value[start:start + batch_size])
                 for name, value in content.items()}
        parts.append(towers.embed_item_content(batch).numpy())
    return new_ids, np.concatenate(parts).astype(np.float32)


def decode_content(catalog, path: Path, present: tuple[str, ...],
                   settings: dict | None = None) -> dict[str, np.ndarray]:
    """``embed_item_content``'s inputs, decoded by the training decoders (``settings``: the
    export's preprocessing settings). A media value that names a missing or undecodable file
    is an error here (a catalogue update must not silently publish an item without its
    poster); an empty value means the item lacks that modality."""
    settings = modalities.resolve_settings(dict(settings or {}))
    content: dict[str, np.ndarray] = {"item_id": catalog.item_ids.astype(str)}
    problems: list[str] = []
    for spec in modalities.specs():
        if spec.name not in present:
            continue
        values = catalog.values(spec.name)
        written = _written_values(catalog, spec)
        decoded: list = []
        for row, (value, given) in enumerate(zip(values, written, strict=True)):
            if not given:
                decoded.append(None)
                continue
            if value is None:
                problems.append(f"{validate.row_label(path, row)}: {spec.name} file {given!r} "
                                "not found")
                decoded.append(None)
                continue
            try:
                decoded.append(spec.load(value, settings))
            except MediaDecodeError as exc:
                problems.append(f"{validate.row_label(path, row)}: {exc}")
                decoded.append(None)
        content[f"{spec.name}_mask"] = np.array([d is not None for d in decoded])
        content.update(spec.pack(spec.fill(decoded, settings)))
    if problems:
        shown = "; ".join(problems[:validate.SHOW_AT_MOST])
        raise DataError(f"{path}: {len(problems)} media file(s) missing or unreadable: {shown}. "
                        "Fix the paths (relative to the table's folder) or leave the value "
                        "empty for an item without that modality; nothing was written")
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
