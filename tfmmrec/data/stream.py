"""Data layer: a dataset folder's items table read chunk by chunk, for catalogue-wide batch jobs.

``tfmmrec encode`` (locally or on Beam) needs every item once, in order, and a few facts about
the whole catalogue (its size, the digests derived data is checked against, that ids are
unique); it never needs the table in memory at once. :class:`ItemsStream` reads the table in
chunks of ``rows`` items with the checks and parsing of ``dataset.load_dataset`` (same error
messages, same line numbers), so the memory of the process that plans the job does not grow
with the catalogue. Interactions are not read at all.

Which columns feed which modality is decided on the whole table, as ``load_dataset`` decides
it, by a first pass that only counts cells (:class:`_TableProfile`): a catalogue whose first
chunk has no image is not a catalogue without images.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tfmmrec import modalities
from tfmmrec.config import DataConfig
from tfmmrec.data import validate
from tfmmrec.data.dataset import (
    Catalog,
    Dataset,
    ModalityColumns,
    _without_empty_media,
    catalog_values,
    choose_modality_columns,
)
from tfmmrec.errors import DataError
from tfmmrec.modalities.base import FileModality, ModalitySpec

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

    Modality columns are judged on the whole table by one counting pass, as ``load_dataset``
    judges them: inferred columns, media columns empty in every row (left out), media columns
    none of whose paths is a file (refused). A modality registered with an ``infer_columns`` of
    its own is inferred from the first chunk (up to ``rows`` items); were that ever to differ,
    training refuses the features (their catalogue fingerprint would not match).
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
        columns = self.columns
        chosen = {name: columns.of(name) for name in modalities.names()}
        start = 0
        for frame in self._frames():
            # a JSONL chunk whose lines all lack item_id: its empty ids, named by line
            frame = _with_columns(frame, ["item_id", *(c for found in chosen.values()
                                                       for c in found)])
            validate.require_no_missing_ids(frame, self.path, "item_id")
            with _warnings_once(self.path, start, self.rows, chosen):
                values = catalog_values(frame, self.root, chosen, self.path,
                                        refuse_unresolved=False)  # judged on the whole table
            yield start, Catalog.from_values(frame["item_id"].to_numpy(dtype=object), values,
                                             columns, frame)
            start += len(frame)

    def _frames(self) -> Iterator[pd.DataFrame]:
        return validate.read_table_chunks(self.path, id_columns=["item_id"], all_strings=True,
                                          rows=self.rows)

    @property
    def columns(self) -> ModalityColumns:
        """Each modality's columns, judged on the whole table (the first use reads it)."""
        if self._columns is None:
            profile = _TableProfile.of(self._frames(), self.path)
            columns = profile.infer(self.config)
            configured = [c for name in modalities.names() for c in columns.of(name)]
            validate.require_columns(profile.header(), self.path, configured)
            columns = _without_empty_media(columns, profile.presence(columns), self.path)
            self._require_resolved(columns)
            self._columns = columns
        return self._columns

    def _require_resolved(self, columns: ModalityColumns) -> None:
        """``load_dataset``'s refusal of a media column none of whose paths is a file, judged
        on the whole table: chunks are read until each column has one file (usually in the
        first chunk), or to the end, then refused as the whole-table read words it."""
        media = {spec.name: columns.of(spec.name)[0] for spec in modalities.specs()
                 if isinstance(spec, FileModality) and columns.of(spec.name)}
        first: dict[str, tuple[int, str]] = {}  # the first filled cell: (row, value)
        filled: Counter = Counter()
        for frame in self._frames() if media else ():
            for name, column in list(media.items()):
                frame = _with_columns(frame, [column])
                with validate.missing_media_refused():  # the chunks name each missing file
                    paths = modalities.get(name).catalog_values(frame, self.root, (column,),
                                                                self.path)
                if any(path is not None for path in paths):
                    del media[name]
                    continue
                cells = frame[column].fillna("").astype(str).str.strip()
                cells = cells[cells != ""]
                filled[name] += len(cells)
                if len(cells):
                    first.setdefault(name, (int(cells.index[0]), cells.iloc[0]))
            if not media:
                return
        for name, column in media.items():
            if filled[name]:
                raise DataError(validate.unresolved_media(self.path, self.root, column, name,
                                                          *first[name], filled[name]))

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


# Chunks whose warnings (missing media, texts cut) were given in this process: a job reads
# the table in several passes (columns, summary, each modality's encoding), and each said
# them again (five times for one missing poster list).
_WARNED_CHUNKS: set[tuple] = set()
_CHUNK_LOGGERS = ("tfmmrec.data.validate", "tfmmrec.modalities.base", "tfmmrec.modalities.text")


@contextlib.contextmanager
def _warnings_once(path: Path, start: int, rows: int, columns: dict) -> Iterator[None]:
    """Within: the table readers' warnings about the chunk at ``start`` of ``path`` (as it is
    now, in chunks of ``rows``, read for these ``columns``) pass the first time only."""
    key = (str(path.resolve()), path.stat().st_mtime_ns, start, rows,
           tuple(sorted(columns.items())))
    if key not in _WARNED_CHUNKS:
        _WARNED_CHUNKS.add(key)
        yield
        return
    drop = _DropWarnings()
    loggers = [logging.getLogger(name) for name in _CHUNK_LOGGERS]
    for logger_ in loggers:
        logger_.addFilter(drop)
    try:
        yield
    finally:
        for logger_ in loggers:
            logger_.removeFilter(drop)


class _DropWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.WARNING  # errors still pass


def _with_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` with each of ``columns`` it lacks as an empty one: a JSONL chunk has only the
    keys its lines name, a whole-table read every key of the file."""
    absent = [c for c in columns if c not in frame.columns]
    return frame.assign(**dict.fromkeys(absent)) if absent else frame


class _TableProfile:
    """The items table's columns counted in one pass (no media path is looked up): each
    modality's :meth:`~tfmmrec.modalities.base.ModalitySpec.column_counts` added up over the
    chunks, so its columns are inferred by its own rule as on the whole table, which is never
    in memory; and each column's filled cells, for the empty-media check."""

    def __init__(self, first: pd.DataFrame):
        self.first = first  # for a modality that infers from a frame only
        self.counts: dict[str, dict[str, Counter]] = {}  # modality → column → counts
        self.filled: Counter = Counter()  # column → cells not blank once stripped

    @classmethod
    def of(cls, frames: Iterator[pd.DataFrame], path: Path) -> _TableProfile:
        profile = None
        for frame in frames:
            if profile is None:
                validate.require_columns(frame, path, ["item_id"])
                profile = cls(frame)
            profile.add(frame)
        return profile

    def add(self, frame: pd.DataFrame) -> None:
        for column in frame.columns.drop("item_id", errors="ignore"):
            series = frame[column]
            self.filled[column] += int((series.fillna("").astype(str).str.strip() != "").sum())
            for spec in modalities.specs():
                counts = spec.column_counts(series)
                if counts is not None:
                    self.counts.setdefault(spec.name, {}).setdefault(column, Counter()).update(
                        counts)

    def header(self) -> pd.DataFrame:
        """An empty frame with every column of the table (for ``validate.require_columns``)."""
        return pd.DataFrame(columns=["item_id", *self.filled])

    def infer(self, config: DataConfig) -> ModalityColumns:
        """``dataset.infer_modality_columns`` of the whole table."""
        return choose_modality_columns(list(self.filled), config, self._inferred)

    def _inferred(self, spec: ModalitySpec, candidates: list[str]) -> Sequence[str]:
        if spec.name in self.counts:
            return spec.infer_from_counts(self.counts[spec.name], candidates)
        return spec.infer_columns(self.first, candidates)

    def presence(self, columns: ModalityColumns) -> dict[str, Sequence[bool]]:
        """Per modality, ``[True]`` when a cell of its column is filled anywhere (else ``[]``):
        the shape ``_without_empty_media`` reads."""
        return {name: [True] if any(self.filled[c] for c in columns.of(name)) else []
                for name in modalities.names()}


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
