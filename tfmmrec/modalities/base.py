"""Modalities: the ``ModalitySpec`` contract — everything data, towers, cache, TFRecords and
export ask of one kind of item content.

A modality used to be a string that every layer tested with ``if modality == "text"``; a spec
is a type that answers those questions once. There are two families: *inline* content (text:
the value sits in the items table) and *file* content (image, audio: the table holds a path,
the file is decoded). :class:`FileModality` implements what every file modality shares (column
inference by name or extension, path resolution, hashing the file's bytes, filling absent items
with zeros); a concrete modality adds its decoders and shapes.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec.data.media import DEFAULT_LIMITS, OfflineLimits
from tfmmrec.errors import ConfigError, MediaDecodeError, ServingError
from tfmmrec.files import file_digest
from tfmmrec.references import import_reference

if TYPE_CHECKING:
    from tfmmrec.config import Config, DataConfig, ServingLimitsConfig

logger = logging.getLogger(__name__)

Settings = Mapping[str, Any]
# The request input of every ``query_<modality>`` signature: one raw value (string or bytes) per
# query.
BATCH_OF_STRINGS = tf.TensorSpec([None], tf.string)


# The settings key carrying the offline decoders' limits (``registry.limit_settings``): set
# only when ``export.limits`` moves them off their defaults, so a default run's plans,
# manifests and exports record nothing more.
OFFLINE_LIMITS = "offline_limits"


def decode_limits(settings: Settings) -> OfflineLimits:
    """The limits a file modality's loaders and checks apply under ``settings`` (the
    defaults' unless ``settings`` carries :data:`OFFLINE_LIMITS`)."""
    value = settings.get(OFFLINE_LIMITS)
    if not value:
        return DEFAULT_LIMITS
    if isinstance(value, OfflineLimits):
        return value
    try:
        return OfflineLimits(**value)
    except TypeError as exc:  # a JSON dict from a plan, manifest or export
        raise ConfigError(f"invalid preprocessing setting {OFFLINE_LIMITS}={value!r}: "
                          f"expected the fields of {OfflineLimits.__name__} ({exc})") from None


def content_hash(data: bytes) -> str:
    """The feature cache's key of one piece of content (text bytes or a media file's bytes):
    the one hash shared by the cache, ``tfmmrec encode`` and the TFRecord writer."""
    return hashlib.sha1(data).hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """:func:`content_hash` of a file's bytes, read in chunks (``files.file_digest``): the
    memory of hashing a catalogue does not grow with its largest file (it read each whole)."""
    return file_digest(path, "sha1")[1]


class ModalitySpec(abc.ABC):
    """One modality's answers to the questions the rest of tfmmrec asks.

    Class attributes a subclass sets:
      name: the modality's name: config section, catalogue key, TFRecord and signature prefix
        (``query_<name>``), cache file prefix.
      tower_config_class: the dataclass of its encoder's settings: registering the spec makes
        it the config section ``<name>:`` (``tfmmrec.config.register_tower_section``), so it
        is read from YAML, validated, saved with a run and checked by ``restore``.
      encoder_builder: ``"module:function"`` building the encoder from
        ``(tower_config, corpus, vocabulary)``; resolved on first use, so this (low-level)
        package never imports the towers at import time and the towers import nothing back.
      catalog_field: the ``Catalog`` attribute holding its per-item content (``None``: kept in
        ``Catalog.extra`` under ``name``, the place for a modality added later).
      settings_fields: the preprocessing settings it reads from its config section (name →
        section field); their defaults are the config dataclass's (the one place for them).
      claims_rest: inferred last, from the columns no other modality claimed (text).
    """

    name: ClassVar[str] = ""
    tower_config_class: ClassVar[type] = object
    encoder_builder: ClassVar[str] = ""
    catalog_field: ClassVar[str | None] = None
    settings_fields: ClassVar[Mapping[str, str]] = {}
    claims_rest: ClassVar[bool] = False

    # --- configuration ------------------------------------------------------------------
    def tower_config(self, config: Config):
        """This modality's tower section of ``config``."""
        return config.tower(self.name)

    def settings(self, config: Config) -> dict[str, Any]:
        """The preprocessing settings ``config`` sets for this modality (flat names)."""
        section = self.tower_config(config)
        return {key: getattr(section, field) for key, field in self.settings_fields.items()}

    def default_settings(self) -> dict[str, Any]:
        """The settings of a default config section (``tower_config_class()``)."""
        section = self.tower_config_class()
        return {key: getattr(section, field) for key, field in self.settings_fields.items()}

    def build_encoder(self, tower_config, corpus: Sequence[str] | None = None, *,
                      vocabulary: list[str] | None = None):
        """The encoder ``tower_config`` describes (``encoder_builder``; only text reads
        ``corpus``/``vocabulary``)."""
        return self.encoder_function()(tower_config)

    def encoder_function(self):
        """The function ``encoder_builder`` names, imported on first use."""
        return import_reference(self.encoder_builder)

    # --- the items table ----------------------------------------------------------------
    @abc.abstractmethod
    def configured_columns(self, data: DataConfig) -> tuple[str, ...] | None:
        """Columns the user named in ``data`` (``None``: infer them)."""

    @abc.abstractmethod
    def infer_columns(self, frame: pd.DataFrame, candidates: Sequence[str]) -> tuple[str, ...]:
        """The columns of ``frame`` (among ``candidates``) that hold this modality."""

    def column_counts(self, series: pd.Series) -> Counter | None:
        """What :meth:`infer_from_counts` reads of one chunk of a column, as counts that add up
        over chunks, so that a streamed table is judged whole without being held whole.
        ``None``: this modality infers from a frame only (a stream gives it the first chunk)."""
        return None

    def infer_from_counts(self, counts: Mapping[str, Counter], candidates: Sequence[str]
                          ) -> tuple[str, ...]:
        """:meth:`infer_columns` from each candidate's summed :meth:`column_counts`."""
        raise NotImplementedError(f"{self.name}: column_counts is None, infer from a frame")

    def inferred_from_counts(self, frame: pd.DataFrame, candidates: Sequence[str]
                             ) -> tuple[str, ...]:
        """:meth:`infer_columns` through the counts: one rule for a whole frame and a stream."""
        return self.infer_from_counts({c: self.column_counts(frame[c]) for c in candidates},
                                      candidates)

    @abc.abstractmethod
    def catalog_values(self, frame: pd.DataFrame, root: Path, columns: tuple[str, ...],
                       table: Path) -> Sequence:
        """Per-item content as the catalogue keeps it (text, or a resolved path / ``None``)."""

    @abc.abstractmethod
    def schema(self, columns: tuple[str, ...]):
        """``columns`` as an export records them (``item_columns`` in its metadata)."""

    @abc.abstractmethod
    def from_schema(self, value) -> tuple[str, ...]:
        """The inverse of :meth:`schema`."""

    @abc.abstractmethod
    def present(self, value) -> bool:
        """Whether an item has content (it may still fail to decode)."""

    @abc.abstractmethod
    def content_key(self, value) -> str | None:
        """The feature cache's key of ``value`` (``None``: no content)."""

    def job_value(self, value) -> str | None:
        """``value`` as a shard job carries it (picklable, JSON-able)."""
        return None if value is None else str(value)

    # --- raw content → encoder input ------------------------------------------------------
    @abc.abstractmethod
    def load(self, value, settings: Settings):
        """One item's decoded content (raises ``MediaDecodeError``/``OSError``)."""

    @abc.abstractmethod
    def batch(self, values: list):
        """Decoded items → one encoder-ready batch."""

    @abc.abstractmethod
    def fill(self, values: list, settings: Settings):
        """Decoded items, ``None`` where absent → a batch of every item (absent rows zero)."""

    @abc.abstractmethod
    def encoder_input_spec(self, settings: Settings):
        """The ``tf.TensorSpec`` structure of an encoder-ready batch."""

    def gather(self, batch, rows: Sequence[int]):
        """The rows ``rows`` of an encoder-ready batch."""
        return tf.gather(batch, rows)

    def sort_for_encoding(self, indices: list[int], values: Sequence) -> list[int]:
        """The order in which to encode ``indices`` (default: as given)."""
        return indices

    # --- TFRecords (``tfmmrec prepare``) -------------------------------------------------
    @abc.abstractmethod
    def record_features(self, value, settings: Settings,
                        failed: dict[str, list[str]]) -> dict[str, tf.train.Feature]:
        """This modality's features of one item record (undecodable files go to ``failed``)."""

    def record_bytes(self, settings: Settings) -> int:
        """About how many bytes one item's decoded content adds to a record (sizes shards)."""
        return 0

    @abc.abstractmethod
    def record_spec(self) -> dict[str, tf.io.FixedLenFeature]:
        """How to parse the features :meth:`record_features` writes."""

    @abc.abstractmethod
    def parse_record(self, parsed: Mapping[str, tf.Tensor], settings: Settings
                     ) -> dict[str, Any]:
        """A parsed batch → ``{name: encoder input, name_key, name_present}``."""

    # --- serving --------------------------------------------------------------------------
    request_spec: ClassVar[tf.TensorSpec] = BATCH_OF_STRINGS
    # Python a loader must run before loading an export with this modality (custom ops).
    load_requirements: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def decode_request(self, request: tf.Tensor, settings: Settings,
                       limits: ServingLimitsConfig):
        """In-graph: a ``query_<name>`` request batch → encoder input, input limits checked
        before the work they bound."""

    def content_spec(self, settings: Settings) -> dict[str, tf.TensorSpec]:
        """``embed_item_content``'s inputs for this modality (its flattened encoder input)."""
        return self.pack(self.encoder_input_spec(settings))

    def pack(self, batch) -> dict[str, Any]:
        """An encoder-ready batch → named ``embed_item_content`` inputs."""
        return dict(batch) if isinstance(batch, Mapping) else {self.name: batch}

    def unpack(self, inputs: Mapping[str, Any], settings: Settings):
        """Named ``embed_item_content`` inputs → the encoder-ready batch."""
        names = list(self.content_spec(settings))
        if names == [self.name]:
            return inputs[self.name]
        return {key: inputs[key] for key in names}

    # --- the serving client (``ServingClient.query``, ``tfmmrec query --<name>``) ------------
    # ``tfmmrec query --<name> VALUE``'s help and metavar: one option per registered modality.
    query_help: ClassVar[str] = ""
    query_metavar: ClassVar[str] = "VALUE"

    def request_values(self, values) -> np.ndarray:
        """What a client sends as the ``query_<name>`` request for ``values`` (one value or a
        list, as a user passes them): default, the values as strings. Anything else (``None``,
        a number, a path) is refused with a ``ServingError`` naming its position, before it is
        sent: REST's JSON would send ``1`` as the text ``"1"``. A modality that encodes other
        values overrides this and checks them itself."""
        batch = request_batch(values)
        check_strings(batch, f"query_{self.name}: {self.name}")
        return string_batch(batch)

    @abc.abstractmethod
    def warmup_sample(self) -> np.ndarray:
        """A ``[1]`` request batch: small, valid, deterministic (TF Serving warmup)."""

    @abc.abstractmethod
    def placeholder(self) -> bytes:
        """The smallest valid request value, encoded in place of an absent one."""


def cells(series: pd.Series) -> pd.Series:
    """A column's cells as text, without missing and empty ones (what inference reads)."""
    values = series.dropna().astype(str)
    return values[values != ""]


# The most a query file may hold: what one request can carry (gRPC's message limit, which
# ``ServingClient`` sets for both directions). A larger file is refused before it is read: a
# video given by mistake, or /dev/zero, was read whole (the host's OOM killer ended it).
MAX_REQUEST_FILE_BYTES = 64 * 2**20


def check_request_file(path: str | os.PathLike, modality: str,
                       limit: int | None = MAX_REQUEST_FILE_BYTES) -> None:
    """Refuse, with one line, a file named for reading that is missing, not a regular file (a
    device or a pipe would be read forever, a folder not at all) or larger than ``limit``
    bytes (None: any size): the one rule for query files (:func:`read_request_file`) and the
    media a catalogue update reads, which the training decoders take at any size."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise _unreadable(path, modality, exc) from None
    if not stat.S_ISREG(info.st_mode):
        article = "an" if modality[:1] in "aeiou" else "a"
        raise ServingError(f"{path} is not a regular file (a device, pipe or folder): pass "
                           f"{article} {modality} file")
    if limit is not None and info.st_size > limit:
        raise ServingError(f"{path} is {info.st_size:,} bytes, more than a request carries "
                           f"({limit:,}): pass a smaller {modality} file")


def read_request_file(path: str | os.PathLike, modality: str,
                      limit: int = MAX_REQUEST_FILE_BYTES) -> bytes:
    """A query's file, refused with one line when :func:`check_request_file` refuses it."""
    path = Path(path)
    check_request_file(path, modality, limit)
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise _unreadable(path, modality, exc) from None
    if len(data) > limit:  # it grew since stat
        raise ServingError(f"{path} holds more than a request carries ({limit:,} bytes): pass "
                           f"a smaller {modality} file")
    return data


def _unreadable(path: Path, modality: str, exc: OSError) -> ServingError:
    return ServingError(f"cannot read {path}: {exc.strerror or exc} — pass an existing "
                        f"{modality} file")


class FileModality(ModalitySpec):
    """A modality whose items-table column names a file, decoded by :meth:`load_file`.

    Class attributes: ``column_names`` (column names recognised as this modality, lower case)
    and ``extensions`` (a column whose values end in these, more than 90% of them, is this
    modality). The configured column is ``data.<name>_column``.
    """

    column_names: ClassVar[frozenset[str]] = frozenset()
    extensions: ClassVar[tuple[str, ...]] = ()

    def configured_columns(self, data: DataConfig) -> tuple[str, ...] | None:
        column = getattr(data, f"{self.name}_column", None)
        return None if column is None else tuple(c for c in (column,) if c)

    def infer_columns(self, frame: pd.DataFrame, candidates: Sequence[str]) -> tuple[str, ...]:
        return self.inferred_from_counts(frame, candidates)

    def column_counts(self, series: pd.Series) -> Counter:
        values = cells(series)
        return Counter(cells=len(values),
                       files=int(values.str.lower().str.endswith(self.extensions).sum()))

    def infer_from_counts(self, counts: Mapping[str, Counter], candidates: Sequence[str]
                          ) -> tuple[str, ...]:
        """The first candidate named as this modality, else the first whose cells end in its
        extensions (more than 90% of them)."""
        for column in candidates:
            if str(column).lower() in self.column_names:
                return (column,)
        for column in candidates:
            count = counts[column]
            if count["cells"] and count["files"] / count["cells"] > 0.9:
                return (column,)
        return ()

    def catalog_values(self, frame: pd.DataFrame, root: Path, columns: tuple[str, ...],
                       table: Path) -> list[Path | None]:
        return media_paths(frame, root, columns[0] if columns else None, self.name, table)

    def schema(self, columns: tuple[str, ...]) -> str | None:
        return columns[0] if columns else None

    def from_schema(self, value) -> tuple[str, ...]:
        return (value,) if value else ()

    def present(self, value) -> bool:
        return value is not None

    def content_key(self, value) -> str | None:
        return None if value is None else file_hash(value)

    def load(self, value, settings: Settings):
        return self.load_file(value, settings)

    query_metavar: ClassVar[str] = "FILE"

    def request_values(self, values) -> np.ndarray:
        """Encoded file bytes as they are; paths are read (the request carries the file, as
        :meth:`request_file` gives it). Anything else (``None``, a number) is refused naming
        its position before any file is read, as ``ExportedModel`` refuses it: it is neither a
        file nor its content."""
        values = request_batch(values)
        check_strings([os.fspath(v) if isinstance(v, os.PathLike) else v for v in values],
                      f"query_{self.name}: {self.name}")
        blobs = [value if isinstance(value, bytes) else self.request_file(value)
                 for value in values]
        return np.array(blobs, dtype=object)

    def request_file(self, path: str | os.PathLike) -> bytes:
        """A file named in a query, as the request carries it: its bytes. A modality whose
        signature decodes fewer formats than its catalogue accepts converts the others here,
        on the client (audio: to 16-bit PCM WAV); bytes a caller passes are never touched."""
        return read_request_file(path, self.name)

    @abc.abstractmethod
    def load_file(self, path: str | Path, settings: Settings):
        """Decode one file (raises ``MediaDecodeError`` naming it)."""

    def check_file(self, path: str | Path, settings: Settings) -> None:
        """Without decoding, raise ``MediaDecodeError`` for a file :meth:`load_file` would
        refuse (``tfmmrec validate`` runs it on every file). The default only checks that the
        file can be read; a modality that can read its format's header says more."""
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise MediaDecodeError(f"{self.name} file unreadable — {path} ({exc.strerror})") \
                from exc


def media_paths(frame: pd.DataFrame, root: Path, column: str | None, modality: str,
                table: Path) -> list[Path | None]:
    """A media column's values as files (relative to ``root``); missing ones are reported."""
    from tfmmrec.data import validate

    if not column:
        return [None] * len(frame)
    paths: list[Path | None] = []
    missing: list[str] = []
    for row, value in zip(frame.index, frame[column].fillna("").astype(str), strict=True):
        value = value.strip()
        if not value:
            paths.append(None)
            continue
        path = Path(value) if Path(value).is_absolute() else root / value
        if validate.is_file(path):
            paths.append(path)
        else:
            paths.append(None)
            missing.append(f"{value} ({validate.row_label(table, row)})")
    validate.report_missing_media(modality, missing)
    return paths


def request_batch(values) -> list:
    """A user's query values as a list: a lone string, bytes or path, or a value that is no
    collection (``None``, ``5``), is a batch of one, so that a check can name it ``[0]``."""
    if isinstance(values, str | bytes | os.PathLike) or not isinstance(values, Iterable):
        return [values]
    return list(values)


def check_strings(values, name: str) -> None:
    """Refuse an entry of a string input that is not ``str``/``bytes`` (``None``, a number),
    naming its position: TensorFlow would say only that it cannot convert the value, and
    ``str(v)`` would send ``"None"`` as an id (as REST's JSON would). The one id check
    ``ExportedModel`` and ``ServingClient`` share."""
    array = np.asarray(values, dtype=object)
    for position, value in np.ndenumerate(array):
        if not isinstance(value, str | bytes):
            raise not_a_string(name + "".join(f"[{i}]" for i in position), value)


def not_a_string(where: str, value) -> ServingError:
    return ServingError(f"{where} is {value!r} ({type(value).__name__}), not a string")


def string_batch(values: Sequence[str] | str) -> np.ndarray:
    """A request batch of strings: text stays ``str`` (plain JSON strings over REST), ``bytes``
    stay bytes (b64 over REST). ``dtype=object`` matters: numpy's fixed-width bytes dtype drops
    trailing NUL bytes."""
    if isinstance(values, str | bytes):
        values = [values]
    return np.array(list(values), dtype=object)


def bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


__all__ = ["BATCH_OF_STRINGS", "OFFLINE_LIMITS", "FileModality", "ModalitySpec", "Settings",
           "bytes_feature", "check_request_file", "check_strings", "content_hash",
           "decode_limits", "int_feature",
           "media_paths", "not_a_string", "request_batch", "string_batch"]
