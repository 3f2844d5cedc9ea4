"""Data layer: a dataset folder's items table read chunk by chunk, for catalogue-wide batch jobs.

``tfmmrec encode`` (locally or on Beam) needs every item once, in order, and a few facts about
the whole catalogue (its size, the digests derived data is checked against, that ids are
unique); it never needs the table in memory at once. :class:`ItemsStream` reads the table in
chunks of ``rows`` items with the checks and parsing of ``dataset.load_dataset`` (same error
messages, same line numbers), so the memory of the process that plans the job does not grow
with the catalogue. Interactions are not read at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tfmmrec import modalities
from tfmmrec.config import DataConfig
from tfmmrec.data import validate
from tfmmrec.data.dataset import (
    Catalog,
    Dataset,
    ModalityColumns,
    catalog_values,
    infer_modality_columns,
)
from tfmmrec.errors import DataError

logger = logging.getLogger(__name__)

CHUNK_ROWS = 50_000
# The duplicate-id check holds one bucket of ids at a time: 1/64 of the catalogue.
ID_BUCKETS = 64


@dataclass(frozen=True)
class CatalogSummary:
    """What derived data (shards, features) records about the whole catalogue."""

    root: Path
    num_items: int
    modalities: tuple[str, ...]
    item_ids_sha1: str
    catalog_sha1: str
    content_sha1: str = ""  # ``CatalogDigest.content``: the same wherever the folder lies


def summarize(dataset: Dataset | ItemsStream) -> CatalogSummary:
    """The summary of an in-memory dataset, or of a stream (one pass, then remembered)."""
    if isinstance(dataset, ItemsStream):
        return dataset.summary()
    from tfmmrec.data.tfrecords import CatalogDigest

    digest = CatalogDigest(dataset.root).update(dataset.catalog)
    return CatalogSummary(Path(dataset.root), len(dataset.catalog), dataset.catalog.modalities,
                          digest.ids(), digest.fingerprint(), digest.content())


class ItemsStream:
    """A dataset folder's items table as consecutive ``Catalog`` chunks (see module doc).

    Modality columns that the config does not name are inferred from the first chunk (up to
    ``rows`` items) rather than the whole table; were that ever to differ, training refuses the
    features (their catalogue fingerprint would not match) instead of using them.
    """

    def __init__(self, config: DataConfig, rows: int | None = None):
        rows = rows or CHUNK_ROWS
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if not config.path:
            raise DataError("data.path is empty: point it at a dataset folder")
        self.config, self.rows = config, rows
        self.root = Path(config.path).expanduser()
        if not self.root.is_dir():
            raise DataError(f"dataset folder not found: {self.root}")
        self.path = validate.find_items_table(self.root, config.items_file)
        self._columns: ModalityColumns | None = None
        self._summary: CatalogSummary | None = None

    def chunks(self) -> Iterator[tuple[int, Catalog]]:
        """``(first row, catalogue of the next rows)`` over the whole table, validated."""
        start = 0
        for frame in validate.read_table_chunks(self.path, id_columns=["item_id"],
                                                all_strings=True, rows=self.rows):
            if self._columns is None:
                validate.require_columns(frame, self.path, ["item_id"])
                self._columns = infer_modality_columns(frame, self.config)
                configured = [c for name in modalities.names() for c in self._columns.of(name)]
                validate.require_columns(frame, self.path, configured)
            validate.require_no_missing_ids(frame, self.path, "item_id")
            values = catalog_values(frame, self.root, {
                name: self._columns.of(name) for name in modalities.names()}, self.path,
                refuse_unresolved=start == 0)  # judged as the columns are: on the first chunk
            yield start, Catalog.from_values(frame["item_id"].to_numpy(dtype=object), values,
                                             self._columns, frame)
            start += len(frame)

    @property
    def columns(self) -> ModalityColumns:
        if self._columns is None:
            next(self.chunks())
        return self._columns

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.columns.present()

    def values(self, modality: str) -> ModalityValues:
        """Every item's content of ``modality``, re-read from the table on each iteration."""
        return ModalityValues(self, modality)

    def rows_of(self, modality: str) -> Iterator[tuple[int, str, object]]:
        """``(item index, item id, content)`` of every item, in catalogue order."""
        for start, chunk in self.chunks():
            for offset, (item_id, value) in enumerate(zip(chunk.item_ids,
                                                          chunk.values(modality),
                                                          strict=True)):
                yield start + offset, str(item_id), value

    def __len__(self) -> int:
        return self.summary().num_items

    def summary(self) -> CatalogSummary:
        """One pass: size, digests and the duplicate-id check (``DataError`` as
        ``validate.require_unique`` words it)."""
        if self._summary is None:
            from tfmmrec.data.tfrecords import CatalogDigest

            digest = CatalogDigest(self.root)
            with _IdBuckets(self.path) as buckets:
                for start, chunk in self.chunks():
                    digest.update(chunk)
                    buckets.add(start, chunk.item_ids)
                buckets.require_unique()
            self._summary = CatalogSummary(self.root, digest.count, self.modalities,
                                           digest.ids(), digest.fingerprint(), digest.content())
            logger.info("read %s in chunks of %d: %d items (%s)", self.path, self.rows,
                        digest.count, ", ".join(self.modalities) or "no content")
        return self._summary


class ModalityValues:
    """A re-iterable view of one modality's content in a stream (a corpus for ``build_encoder``
    that is never held whole)."""

    def __init__(self, stream: ItemsStream, modality: str):
        self.stream, self.modality = stream, modality

    def __iter__(self):
        return (value for _, _, value in self.stream.rows_of(self.modality))


class _IdBuckets:
    """Unique ids with bounded memory: ids are spilled by hash into ``ID_BUCKETS`` files on
    local disk, then each bucket (1/64 of the ids) is checked on its own."""

    def __init__(self, table: Path, buckets: int = ID_BUCKETS):
        self.table, self.count = table, buckets

    def __enter__(self):
        self.stack = contextlib.ExitStack()
        folder = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="tfmmrec-ids-"))
        # the stack closes the files
        self.files = [self.stack.enter_context(
            open(os.path.join(folder, f"{b:02d}"), "w", encoding="utf-8"))  # noqa: SIM115
            for b in range(self.count)]
        return self

    def __exit__(self, *exc):
        self.stack.close()

    def add(self, start: int, item_ids: Sequence) -> None:
        for row, item_id in enumerate(item_ids, start=start):
            item_id = str(item_id)
            self.files[hash(item_id) % self.count].write(json.dumps([row, item_id]) + "\n")

    def require_unique(self) -> None:
        duplicates = 0
        first: tuple[int, str, int] | None = None  # (row, id, row first seen)
        for file in self.files:
            file.close()
            seen: dict[str, int] = {}
            with open(file.name, encoding="utf-8") as lines:
                for line in lines:
                    row, item_id = json.loads(line)
                    if item_id in seen:
                        duplicates += 1
                        if first is None or row < first[0]:
                            first = (row, item_id, seen[item_id])
                    else:
                        seen[item_id] = row
        if first is not None:
            row, value, original = first
            raise DataError(
                f"{self.table}: duplicate item_id {value!r} at "
                f"{validate.row_label(self.table, row)} (first seen at "
                f"{validate.row_label(self.table, original)}); {duplicates} duplicate row(s) "
                "in all. Each id must appear once."
            )
