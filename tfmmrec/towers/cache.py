"""Towers: the frozen-encoder feature cache (catalog content → per-modality features on disk).

With frozen encoders, every item's features are computed once (batched, with a progress bar) and
stored keyed by the encoder's identity (settings + weights fingerprint) and each item's content
hash (text, or the media file's bytes). A later run reuses every entry whose encoder and content
are unchanged and computes only the rest; files are written to a temp path and renamed, so an
interrupted run never leaves a half-written cache that a later run would trust.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmmrec.data.dataset import Catalog
from tfmmrec.data.media import load_audio, load_image
from tfmmrec.data.validate import report_missing_media
from tfmmrec.errors import MediaDecodeError
from tfmmrec.files import atomic_write
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
    reused: int = 0
    computed: int = 0


def content_keys(catalog: Catalog, modality: str) -> list[str | None]:
    """Per-item content hash (``None`` when the item has no content for this modality)."""
    if modality == "text":
        return [_sha(t.encode()) if t else None for t in catalog.texts]
    paths = catalog.image_paths if modality == "image" else catalog.audio_paths
    return [_sha(p.read_bytes()) if p is not None else None for p in paths]


def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class FeatureCache:
    """Features of one encoder on disk: ``<dir>/<modality>-<identity>.npz`` (keys, features, ok)."""

    def __init__(self, directory: str | os.PathLike, encoder: Encoder):
        self.path = Path(directory) / f"{encoder.modality}-{encoder.identity()}.npz"
        self.feature_dim = encoder.feature_dim

    def load(self) -> dict[str, np.ndarray | None]:
        """content key → feature row, or ``None`` for content known to be undecodable."""
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, features, ok = data["keys"], data["features"], data["ok"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("ignoring unreadable cache file %s (%s); it will be rebuilt",
                           self.path, exc)
            return {}
        return {str(k): (f if good else None) for k, f, good in zip(keys, features, ok,
                                                                   strict=True)}

    def save(self, entries: dict[str, np.ndarray | None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(entries), dtype=str)
        zero = np.zeros(self.feature_dim, np.float32)
        features = np.stack([entries[k] if entries[k] is not None else zero for k in keys]) \
            if len(keys) else np.zeros((0, self.feature_dim), np.float32)
        ok = np.array([entries[k] is not None for k in keys], bool)
        atomic_write(self.path, lambda f: np.savez(f, keys=keys, ok=ok,
                                                   features=features.astype(np.float32)))


def encode_catalog(catalog: Catalog, encoder: Encoder, cache_dir: str | os.PathLike | None,
                   *, batch_size: int = 32, image_size: int = 224, sample_rate: int = 16000,
                   max_seconds: float = 10.0, progress: bool = True
                   ) -> tuple[ModalityContent, CacheStats]:
    """Features for every item of one modality, from the cache where possible."""
    modality = encoder.modality
    keys = content_keys(catalog, modality)
    cache = FeatureCache(cache_dir, encoder) if cache_dir is not None else None
    entries = cache.load() if cache else {}
    todo = sorted({k: i for i, k in enumerate(keys) if k and k not in entries}.values())
    if modality == "text":
        todo = by_length(todo, catalog.texts)
    stats = CacheStats(reused=sum(1 for k in keys if k and k in entries), computed=len(todo))
    loader = raw_loader(catalog, modality, image_size, sample_rate, max_seconds)
    starts = range(0, len(todo), batch_size)
    encode = compiled(encoder, len(starts))
    failed: list[str] = []
    for start in report_progress(starts, desc=f"encoding {modality}", unit="batch",
                                 disable=not progress or not todo):
        batch = todo[start:start + batch_size]
        raw, good = loader(batch, failed)
        features = encode(raw).numpy() if good else []
        for i, feature in zip(good, features, strict=True):
            entries[keys[i]] = feature.astype(np.float32)
        for i in set(batch) - set(good):
            entries[keys[i]] = None
    report_missing_media(modality, failed)
    if cache and todo:
        cache.save(entries)
    values = np.zeros((len(catalog), encoder.feature_dim), np.float32)
    mask = np.zeros(len(catalog), bool)
    for i, key in enumerate(keys):
        feature = entries.get(key) if key else None
        if feature is not None:
            values[i], mask[i] = feature, True
    logger.info("%s features: %d reused from cache, %d computed, %d items without %s",
                modality, stats.reused, stats.computed, int((~mask).sum()), modality)
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


def by_length(indices: list[int], texts) -> list[int]:
    """``indices`` ordered by text length (stable), so each batch holds texts of similar length.

    The text encoder trims every batch to its longest sequence; sorted batches waste almost no
    attention on padding. Features are stored by content key, so the catalogue order comes back
    when they are read out, whatever order they were computed in.
    """
    return sorted(indices, key=lambda i: len(texts[i]))


RawLoader = Callable[[list[int], list[str]], tuple[object, list[int]]]


def raw_loader(catalog: Catalog, modality: str, image_size: int, sample_rate: int,
               max_seconds: float) -> RawLoader:
    """A function: item indices → (encoder-ready batch, indices that decoded).

    Undecodable files are appended to ``failed`` and skipped; the item keeps its other
    modalities.
    """
    if modality == "text":
        return lambda batch, failed: (np.array([catalog.texts[i] for i in batch]), list(batch))

    paths = catalog.image_paths if modality == "image" else catalog.audio_paths

    def load(batch: list[int], failed: list[str]):
        arrays, good = [], []
        for i in batch:
            try:
                if modality == "image":
                    arrays.append(load_image(paths[i], image_size))
                else:
                    arrays.append(load_audio(paths[i], sample_rate, max_seconds))
                good.append(i)
            except MediaDecodeError as exc:
                logger.debug("%s", exc)
                failed.append(str(paths[i]))
        if not good:
            return None, []
        if modality == "image":
            return np.stack(arrays), good
        return pad_waveforms(arrays), good

    return load


def pad_waveforms(waveforms: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Zero-pad clips to one length; ``length`` keeps padding out of pooled features."""
    length = np.array([len(w) for w in waveforms], np.int32)
    batch = np.zeros((len(waveforms), max(int(length.max()), 1)), np.float32)
    for row, wave in enumerate(waveforms):
        batch[row, : len(wave)] = wave
    return {"waveform": batch, "length": length}


def load_raw_content(catalog: Catalog, modality: str, *, image_size: int = 224,
                     sample_rate: int = 16000, max_seconds: float = 10.0) -> ModalityContent:
    """Raw content of every item (for an encoder being fine-tuned, which cannot be cached)."""
    loader = raw_loader(catalog, modality, image_size, sample_rate, max_seconds)
    present = [i for i in range(len(catalog)) if catalog.presence(modality)[i]]
    failed: list[str] = []
    raw, good = loader(present, failed)
    report_missing_media(modality, failed)
    mask = np.zeros(len(catalog), bool)
    mask[good] = True
    if modality == "text":
        return ModalityContent(np.array(catalog.texts, dtype=object).astype(str), mask)
    rows = {i: r for r, i in enumerate(good)}
    if modality == "image":
        values = np.zeros((len(catalog), image_size, image_size, 3), np.float32)
        for i, r in rows.items():
            values[i] = raw[r]
        return ModalityContent(values, mask)
    width = raw["waveform"].shape[1] if good else 1
    waveform = np.zeros((len(catalog), width), np.float32)
    length = np.zeros(len(catalog), np.int32)
    for i, r in rows.items():
        waveform[i], length[i] = raw["waveform"][r], raw["length"][r]
    return ModalityContent({"waveform": waveform, "length": length}, mask)
