"""Towers: the frozen-encoder feature cache (catalog content → per-modality features on disk).

With frozen encoders, every item's features are computed once (batched, with a progress bar) and
stored keyed by the encoder's identity (settings + weights fingerprint) and each item's content
hash (text, or the media file's bytes). A later run reuses every entry whose encoder and content
are unchanged and computes only the rest; files are written to a temp path and renamed, so an
interrupted run never leaves a half-written cache that a later run would trust.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfmmrec import modalities
from tfmmrec.data.dataset import Catalog
from tfmmrec.data.validate import report_missing_media
from tfmmrec.errors import MediaDecodeError
from tfmmrec.files import atomic_write
from tfmmrec.modalities.audio import pad_waveforms as pad_waveforms  # re-exported
from tfmmrec.modalities.text import by_length as by_length  # re-exported
from tfmmrec.progress import progress as report_progress
from tfmmrec.towers.encoders import Encoder

logger = logging.getLogger(__name__)


@dataclass
class ModalityContent:
    """One modality for every item: ``values`` (features or raw content) and a presence mask."""

    values: object
    mask: np.ndarray


@dataclass
class CacheStats:
    """Items whose features came from the cache (``reused``) or were computed this run
    (``computed``); ``failed``: items whose content was tried this run and did not decode (they
    are without the modality, and counted in neither)."""

    reused: int = 0
    computed: int = 0
    failed: int = 0

    def count(self, key: str | None, feature: np.ndarray | None, cached: set[str]) -> None:
        """One item, counted as every path counts it (so that reused + computed + without =
        the catalogue): ``cached`` holds the keys the cache had when the run began, ``feature``
        is the item's (``None``: it has no content, or its content did not decode)."""
        if key in cached:
            self.reused += 1
        elif feature is not None:
            self.computed += 1
        elif key:
            self.failed += 1

    def log(self, modality: str, mask: np.ndarray, source: str = "") -> None:
        """The summary line: how many items were reused, computed and are without."""
        undecodable = f" ({self.failed} of them undecodable)" if self.failed else ""
        logger.info("%s features%s: %d reused from cache, %d computed, %d items without %s%s",
                    modality, f" from {source}" if source else "", self.reused, self.computed,
                    int((~mask).sum()), modality, undecodable)


def content_keys(catalog: Catalog, modality: str) -> list[str | None]:
    """Per-item content hash (``None`` when the item has no content for this modality, or its
    file exists but cannot be read: that item keeps its other modalities and is named, as a
    file that does not decode is)."""
    spec = modalities.get(modality)
    keys, unreadable = [], []
    for value in catalog.values(modality):
        try:
            keys.append(spec.content_key(value))
        except OSError as exc:  # e.g. permission denied, an I/O error
            logger.debug("%s", exc)
            unreadable.append(str(value))
            keys.append(None)
    report_missing_media(modality, unreadable)
    return keys


class FeatureCache:
    """Features of one encoder on disk: ``<dir>/<modality>-<identity>.npz`` (keys, features, ok).

    Only content that decoded is kept: whether a file decodes depends on the limits too
    (``export.limits``, raised since), so a failure is tried again next run and named again.
    (``ok`` stays in the file for caches written when failures were kept.)"""

    def __init__(self, directory: str | os.PathLike, encoder: Encoder):
        self.path = Path(directory) / f"{encoder.modality}-{encoder.identity()}.npz"
        self.feature_dim = encoder.feature_dim

    def load(self) -> dict[str, np.ndarray]:
        """content key → feature row."""
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, features, ok = data["keys"], data["features"], data["ok"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("ignoring unreadable cache file %s (%s); it will be rebuilt",
                           self.path, exc)
            return {}
        return {str(k): f for k, f, good in zip(keys, features, ok, strict=True) if good}

    def save(self, entries: dict[str, np.ndarray | None]) -> None:
        """Write the features of ``entries`` (those that are ``None`` did not decode)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(k for k, f in entries.items() if f is not None), dtype=str)
        features = np.stack([entries[k] for k in keys]) if len(keys) else \
            np.zeros((0, self.feature_dim), np.float32)
        ok = np.ones(len(keys), bool)
        atomic_write(self.path, lambda f: np.savez(f, keys=keys, ok=ok,
                                                   features=features.astype(np.float32)))


def encode_catalog(catalog: Catalog, encoder: Encoder, cache_dir: str | os.PathLike | None,
                   *, batch_size: int = 32, progress: bool = True, **settings: Any
                   ) -> tuple[ModalityContent, CacheStats]:
    """Features for every item of one modality, from the cache where possible.

    ``settings`` override preprocessing settings (``image_size=``, ``max_seconds=``, ...);
    the rest are the config's defaults (``modalities.resolve_settings``).
    """
    modality = encoder.modality
    spec = modalities.get(modality)
    settings = modalities.resolve_settings(settings)
    keys = content_keys(catalog, modality)
    cache = FeatureCache(cache_dir, encoder) if cache_dir is not None else None
    entries = cache.load() if cache else {}
    todo = sorted({k: i for i, k in enumerate(keys) if k and k not in entries}.values())
    todo = spec.sort_for_encoding(todo, catalog.values(modality))
    cached = {k for k in keys if k and k in entries}
    loader = raw_loader(catalog, modality, settings)
    starts = range(0, len(todo), batch_size)
    encode = compiled(encoder, len(starts))
    failed: list[str] = []
    encoded = 0
    for start in report_progress(starts, desc=f"encoding {modality}", unit="batch",
                                 disable=not progress or not todo):
        batch = todo[start:start + batch_size]
        raw, good = loader(batch, failed)
        features = encode(raw).numpy() if good else []
        for i, feature in zip(good, features, strict=True):
            entries[keys[i]] = feature.astype(np.float32)
        encoded += len(good)
        for i in set(batch) - set(good):
            entries[keys[i]] = None
    report_missing_media(modality, failed)
    if cache and encoded:  # a run whose only new content failed to decode rewrites nothing
        cache.save(entries)
    values = np.zeros((len(catalog), encoder.feature_dim), np.float32)
    mask = np.zeros(len(catalog), bool)
    # counted per item (two items with the same content share one entry), so that reused +
    # computed + without = the catalogue
    stats = CacheStats()
    for i, key in enumerate(keys):
        feature = entries.get(key) if key else None
        if feature is not None:
            values[i], mask[i] = feature, True
        stats.count(key, feature, cached)
    stats.log(modality, mask)
    return ModalityContent(values, mask), stats


def encode_records(directory: str, encoder: Encoder, cache_dir: str | os.PathLike | None, *,
                   batch_size: int = 32, progress: bool = True
                   ) -> tuple[ModalityContent, CacheStats]:
    """:func:`encode_catalog` from the pre-decoded item shards of ``tfmmrec prepare`` in
    ``directory``: no media file is opened or decoded again. Shares the feature cache (same
    keys) and its counts: an item whose file did not decode when the shards were prepared
    (a content key, not present) is ``failed``, tried again on every run, never "reused"."""
    from tfmmrec.data.tfrecords import items_dataset, load_manifest
    from tfmmrec.towers.features import encoder_rows

    manifest = load_manifest(directory)
    modality = encoder.modality
    cache = FeatureCache(cache_dir, encoder) if cache_dir is not None else None
    entries = cache.load() if cache else {}
    cached = set(entries)
    values = np.zeros((manifest.num_items, encoder.feature_dim), np.float32)
    mask = np.zeros(manifest.num_items, bool)
    stats = CacheStats()
    batches = -(-manifest.num_items // batch_size)
    encode = compiled(encoder, batches)
    encoded = 0
    for batch in report_progress(items_dataset(manifest, batch_size), unit="batch",
                                 desc=f"encoding {modality} (tfrecords)", total=batches,
                                 disable=not progress):
        index = batch["item_index"].numpy()
        keys = [k.decode() for k in batch[f"{modality}_key"].numpy()]
        present = batch[f"{modality}_present"].numpy()
        todo = [row for row, key in enumerate(keys)
                if key and key not in entries and present[row]]
        if todo:
            content = encoder_rows(batch[modality], todo, modality)
            for row, feature in zip(todo, encode(content).numpy(), strict=True):
                entries[keys[row]] = feature.astype(np.float32)
            encoded += len(todo)
        for row, key in enumerate(keys):
            feature = entries.get(key) if key else None
            if feature is not None:
                values[index[row]], mask[index[row]] = feature, True
            stats.count(key or None, feature, cached)
    if cache and encoded:  # a run whose only new content failed to decode rewrites nothing
        cache.save(entries)
    stats.log(modality, mask, directory)
    return ModalityContent(values, mask), stats


COMPILE_MIN_BATCHES = 4


def compiled(encoder: Encoder, num_batches: int) -> Callable:
    """``encoder(batch, training=False)`` as one graph, traced once for any batch shape.

    Called eagerly, a BERT encoder runs its tokeniser and every layer op by op (on 2 CPU cores
    ~0.5 s for one short text, against ~15 ms as a graph). Tracing costs a few seconds, so
    callers compile only loops of at least ``COMPILE_MIN_BATCHES`` batches. The signature is
    taken from the first batch with every dimension left open, so the last, smaller batch and
    variable-length audio reuse the one trace.
    """
    if num_batches < COMPILE_MIN_BATCHES:
        return lambda raw: encoder(raw, training=False)
    function = None

    def encode(raw):
        nonlocal function
        if function is None:
            spec = tf.nest.map_structure(
                lambda x: tf.TensorSpec([None] * len(x.shape), _dtype(x)), raw)
            function = tf.function(lambda batch: encoder(batch, training=False),
                                   input_signature=[spec])
        return function(raw)

    return encode


def _dtype(value) -> tf.dtypes.DType:
    if isinstance(value, tf.Tensor):
        return value.dtype
    array = np.asarray(value)
    return tf.string if array.dtype.kind in "USO" else tf.as_dtype(array.dtype)


RawLoader = Callable[[list[int], list[str]], tuple[object, list[int]]]


def raw_loader(catalog: Catalog, modality: str,
               settings: Mapping[str, Any] | None = None) -> RawLoader:
    """A function: item indices → (encoder-ready batch, indices that decoded).

    Undecodable files are appended to ``failed`` and skipped; the item keeps its other
    modalities. ``settings``: preprocessing settings (default: the config's defaults).
    """
    spec = modalities.get(modality)
    settings = modalities.resolve_settings(dict(settings or {}))

    def load(batch: list[int], failed: list[str]):
        arrays, good = decode_items(catalog, modality, batch, settings, failed)
        return (spec.batch(arrays), good) if good else (None, [])

    return load


def decode_items(catalog: Catalog, modality: str, indices: list[int],
                 settings: Mapping[str, Any], failed: list[str]) -> tuple[list, list[int]]:
    """(decoded content, indices that decoded) of ``indices``, by the modality's loader."""
    spec = modalities.get(modality)
    values = catalog.values(modality)
    arrays, good = [], []
    for i in indices:
        try:
            arrays.append(spec.load(values[i], settings))
            good.append(i)
        except (MediaDecodeError, OSError) as exc:  # OSError: read since its key was taken
            logger.debug("%s", exc)
            failed.append(str(values[i]))
    return arrays, good


def load_raw_content(catalog: Catalog, modality: str, **settings: Any) -> ModalityContent:
    """Raw content of every item (for an encoder being fine-tuned, which cannot be cached);
    ``settings`` as for :func:`encode_catalog`."""
    spec = modalities.get(modality)
    settings = modalities.resolve_settings(settings)
    present = np.flatnonzero(catalog.presence(modality)).tolist()
    failed: list[str] = []
    arrays, good = decode_items(catalog, modality, present, settings, failed)
    report_missing_media(modality, failed)
    mask = np.zeros(len(catalog), bool)
    mask[good] = True
    decoded: list = [None] * len(catalog)
    for i, array in zip(good, arrays, strict=True):
        decoded[i] = array
    return ModalityContent(spec.fill(decoded, settings), mask)
