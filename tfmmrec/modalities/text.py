"""Modalities: text — the items table's text columns joined, tokenised in-graph by the tower."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec.config import (
    DataConfig,
    FacetsTowerConfig,
    ServingLimitsConfig,
    TextTowerConfig,
)
from tfmmrec.modalities.base import ModalitySpec, Settings, bytes_feature, cells, content_hash

TEXT_SEPARATOR = ". "
# Python's whitespace (``str.strip``, which training applies to every text) in RE2 syntax:
# RE2's ``\s`` is ASCII's five, so a text of NBSP or U+3000 passed an ``\s+`` check
WHITESPACE_ONLY = r"[\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}]+"

logger = logging.getLogger(__name__)


class TextModality(ModalitySpec):
    """Inline content: every text-like column no media modality claimed, joined per item with
    ``". "`` (or ``data.text_columns``, in that order). The encoder takes raw strings."""

    name = "text"
    tower_config_class = TextTowerConfig
    encoder_builder = "tfmmrec.towers.text:build_text_encoder"
    catalog_field = "texts"
    claims_rest = True
    load_requirements = ("import tensorflow_text",)  # the in-graph tokenizer's ops
    query_help = "query text (repeatable)"
    query_metavar = "TEXT"

    def build_encoder(self, tower_config, corpus: Sequence[str] | None = None, *,
                      vocabulary: list[str] | None = None):
        return self.encoder_function()(
            tower_config, [] if corpus is None else corpus, vocabulary=vocabulary)

    # --- the items table ----------------------------------------------------------------
    def configured_columns(self, data: DataConfig) -> tuple[str, ...] | None:
        return None if data.text_columns is None else tuple(data.text_columns)

    def infer_columns(self, frame: pd.DataFrame, candidates: Sequence[str]) -> tuple[str, ...]:
        return self.inferred_from_counts(frame, candidates)

    def column_counts(self, series: pd.Series) -> Counter:
        values = cells(series)
        textual = is_textual(series)
        flags = int(series.map(lambda v: isinstance(v, bool)).sum()) if textual else 0
        # JSON objects: data about the item, not its text (``data.text_columns`` can name it)
        objects = int(series.map(lambda v: isinstance(v, Mapping)).sum()) if textual else 0
        return Counter(cells=len(values), textual_chunks=int(textual), objects=objects,
                       numbers=int(pd.to_numeric(values, errors="coerce").notna().sum()) + flags)

    def infer_from_counts(self, counts: Mapping[str, Counter], candidates: Sequence[str]
                          ) -> tuple[str, ...]:
        """Every string column whose cells are mostly not numbers (nor JSON true/false) and
        none a JSON object: one rule for a whole table and the sum of a stream's chunks."""
        return tuple(c for c in candidates if counts[c]["textual_chunks"] and counts[c]["cells"]
                     and not counts[c]["objects"]
                     and counts[c]["numbers"] / counts[c]["cells"] < 0.5)

    def catalog_values(self, frame: pd.DataFrame, root: Path, columns: tuple[str, ...],
                       table: Path) -> np.ndarray:
        return capped_texts(join_text(frame, columns), frame.index, table)

    def schema(self, columns: tuple[str, ...]) -> list[str]:
        return list(columns)

    def from_schema(self, value) -> tuple[str, ...]:
        return tuple(value or ())

    def present(self, value) -> bool:
        return bool(value)

    def content_key(self, value) -> str | None:
        return content_hash(value.encode()) if value else None

    def job_value(self, value) -> str:
        return str(value)

    # --- raw content → encoder input ------------------------------------------------------
    def load(self, value, settings: Settings) -> str:
        return value

    def batch(self, values: list) -> np.ndarray:
        return np.array(values)

    def fill(self, values: list, settings: Settings) -> np.ndarray:
        return np.array(["" if v is None else v for v in values], dtype=object).astype(str)

    def encoder_input_spec(self, settings: Settings) -> tf.TensorSpec:
        return tf.TensorSpec([None], tf.string)

    def sort_for_encoding(self, indices: list[int], values: Sequence) -> list[int]:
        return by_length(indices, values)

    # --- TFRecords ------------------------------------------------------------------------
    def record_features(self, value, settings: Settings,
                        failed: dict[str, list[str]]) -> dict[str, tf.train.Feature]:
        text, name = value or "", self.name
        return {name: bytes_feature(text.encode()),
                f"{name}_key": bytes_feature(content_hash(text.encode()).encode() if text
                                             else b"")}

    def record_spec(self) -> dict[str, tf.io.FixedLenFeature]:
        return {self.name: tf.io.FixedLenFeature([], tf.string),
                f"{self.name}_key": tf.io.FixedLenFeature([], tf.string)}

    def parse_record(self, parsed: Mapping[str, tf.Tensor], settings: Settings
                     ) -> dict[str, Any]:
        name = self.name
        return {name: parsed[name], f"{name}_key": parsed[f"{name}_key"],
                f"{name}_present": tf.strings.length(parsed[name]) > 0}

    # --- serving --------------------------------------------------------------------------
    def decode_request(self, request: tf.Tensor, settings: Settings,
                       limits: ServingLimitsConfig) -> tf.Tensor:
        lengths = tf.strings.length(request)
        limit = limits.max_text_bytes
        total = tf.reduce_sum(tf.cast(lengths, tf.int64))
        total_limit = limits.max_text_request_bytes
        checks = [
            tf.debugging.Assert(tf.reduce_all(lengths > 0),
                                ["text: empty string in the batch"]),
            # only whitespace: training reads such a text as no text (data.join_text strips)
            tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(tf.strings.regex_full_match(request,
                                                                         WHITESPACE_ONLY))),
                ["text: a string in the batch is only whitespace"]),
            # training reads decoded text; the tokenizer would read bad bytes as no word
            tf.debugging.Assert(tf.reduce_all(tf.equal(tf.strings.unicode_transcode(
                request, "UTF-8", "UTF-8", errors="replace"), request)),
                ["text: a string in the batch is not valid UTF-8"]),
            tf.debugging.Assert(tf.reduce_all(lengths <= limit), [
                f"text: a text is longer than export.limits.max_text_bytes={limit} bytes; "
                "lengths:", lengths], summarize=8),
            tf.debugging.Assert(total <= total_limit, [
                "text: the texts of one request are longer than "
                f"export.limits.max_text_request_bytes={total_limit} bytes in all (send fewer "
                "or shorter texts per request); total:", total]),
        ]
        with tf.control_dependencies(checks):  # before the tokenizer sees a byte
            return tf.identity(request)

    def warmup_sample(self) -> np.ndarray:
        return np.array([b"warm up the tokenizer"])

    def placeholder(self) -> bytes:
        return b"."


class FacetsModality(TextModality):
    """Inline content: ``data.facet_columns`` (short categorical columns: year, genres, ...)
    joined like text and encoded by a text encoder of their own (``facets:`` section).

    Why: protocol B ranks films no one has rated, placed by content alone; the release year
    and genres say much about who will watch one, but in the joined text (title, year, genres,
    a plot description) those few tokens barely move a mean-pooled sentence embedding.
    Never inferred from the table: without ``data.facet_columns`` there are no facets.
    """

    name = "facets"
    tower_config_class = FacetsTowerConfig
    encoder_builder = "tfmmrec.towers.text:build_facets_encoder"
    catalog_field = None
    claims_rest = False
    query_help = "query facets, e.g. \"1995. Comedy\" (repeatable)"

    def configured_columns(self, data: DataConfig) -> tuple[str, ...] | None:
        return tuple(data.facet_columns or ())

    def infer_columns(self, frame: pd.DataFrame, candidates: Sequence[str]) -> tuple[str, ...]:
        return ()

    def column_counts(self, series: pd.Series) -> Counter:
        return Counter()

    def infer_from_counts(self, counts: Mapping[str, Counter], candidates: Sequence[str]
                          ) -> tuple[str, ...]:
        return ()


def by_length(indices: list[int], texts) -> list[int]:
    """``indices`` ordered by text length (stable), so each batch holds texts of similar length.

    The text encoder trims every batch to its longest sequence; sorted batches waste almost no
    attention on padding. Features are stored by content key, so the catalogue order comes back
    when they are read out, whatever order they were computed in.
    """
    return sorted(indices, key=lambda i: len(texts[i]))


def is_textual(series: pd.Series) -> bool:
    """A column of strings (objects), not one pandas read as numbers."""
    return pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)


# A BERT tower reads at most 512 tokens (text.sequence_length) of an item's text, which 64 KiB
# holds many times over; tokenising takes ~90× a text's bytes in memory (one 16 MiB cell took
# half a GiB), so a longer item text is cut to this many bytes when the table is read.
MAX_ITEM_TEXT_BYTES = 65_536


def capped_texts(texts: np.ndarray, rows: pd.Index, table: Path) -> np.ndarray:
    """``texts`` with each one longer than ``MAX_ITEM_TEXT_BYTES`` (UTF-8) cut to that many
    bytes at a character boundary; one warning names how many and the first rows."""
    from tfmmrec.data import validate

    # a str of at most MAX / 4 characters cannot exceed MAX bytes: no encoding for those
    long = [i for i, text in enumerate(texts) if len(text) > MAX_ITEM_TEXT_BYTES // 4
            and len(text.encode()) > MAX_ITEM_TEXT_BYTES]
    if not long:
        return texts
    texts = texts.copy()
    for i in long:
        texts[i] = texts[i].encode()[:MAX_ITEM_TEXT_BYTES].decode("utf-8", errors="ignore")
    where = ", ".join(validate.row_label(table, rows[i]) for i in long[:validate.SHOW_AT_MOST])
    more = f" and {len(long) - validate.SHOW_AT_MOST} more" \
        if len(long) > validate.SHOW_AT_MOST else ""
    logger.warning("%s: %d item text(s) longer than %d bytes were cut to that length (the text "
                   "tower reads at most its first 512 tokens): %s%s", table, len(long),
                   MAX_ITEM_TEXT_BYTES, where, more)
    return texts


def join_text(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """Each row's non-empty ``columns`` values, stripped and joined with ``TEXT_SEPARATOR``."""
    if not columns:
        return np.full(len(frame), "", dtype=object)
    parts = pd.DataFrame({c: text_values(frame[c]) for c in columns})
    return np.array(
        [TEXT_SEPARATOR.join(v.strip() for v in row if v.strip()) for row in parts.to_numpy()],
        dtype=object,
    )


def text_values(series: pd.Series) -> pd.Series:
    """A column as the text a reader would write: missing → "", whole floats without ".0".

    JSONL and Parquet tables arrive typed, and a numeric column with a gap is float: 1995.0
    would reach the text tower as "1995.0" (CSV columns are read as written, see read_table).
    """
    if pd.api.types.is_float_dtype(series):
        return series.map(lambda v: "" if pd.isna(v) else
                          str(int(v)) if float(v).is_integer() else str(v))
    return series.astype(object).map(cell_text)


def cell_text(value: Any) -> str:
    """One cell as text: a JSON array's elements joined with ", " (``["action", "spy"]`` →
    ``action, spy``, ``[]`` → empty: they reached the text tower as Python's repr), an object
    as ``key: value`` pairs, a whole float without ".0", missing values empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | np.ndarray):
        return ", ".join(text for text in (cell_text(v).strip() for v in value) if text)
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {text}" for key, v in value.items()
                         if (text := cell_text(v).strip()))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
