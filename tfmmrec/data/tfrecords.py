"""Data layer: a dataset folder → sharded TFRecords (media decoded once), and the tf.data readers.

``tfmmrec prepare`` writes a directory (local, or any TensorFlow filesystem path such as
``gs://bucket/dir``)::

    plan.json                        what this run writes (settings, data fingerprint, shards)
    items-00000-of-00004.tfrecord    one record per item, in catalogue order: id, raw text, the
                                     image decoded and resized (uint8 HxWx3), the audio decoded,
                                     mixed to mono, resampled and cropped (int16 PCM), presence
                                     flags and content hashes (the encoder cache's keys)
    train-00000-of-00002.tfrecord    the training split's interactions, shuffled once
    test-00000-of-00002.tfrecord     the test split's interactions
    manifest.json                    written last: a directory without it is never read; it
                                     records each shard's size and SHA-256, and digests of
                                     the train and test tables

Shards are written by parallel worker processes, each to a hidden temporary name renamed into
place when complete, so an interrupted ``prepare`` leaves finished shards (kept by the next run
of the same command) and no half-written shard that a reader could pick up. Each shard's size and
SHA-256 go, before its rename, into a hidden sidecar (``.<shard>.json``) that the manifest
takes over: a resumed run rewrites a shard that no longer matches them, and readers refuse one
(sizes on every load, checksums in :func:`check_compatible`). A finished directory
of other data or settings is rebuilt in a hidden ``.replacement`` folder inside it and replaced
only once every new shard is written, so a failed run never loses it. The same plan and
shard writer run as an Apache Beam pipeline with ``tfmmrec prepare --runner``
(``tfmmrec.beam.prepare``): :func:`plan_prepare`, then :func:`write_shard` per job, then
:func:`finish_prepare`.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from tfmmrec import modalities
from tfmmrec.config import Config
from tfmmrec.data.dataset import Dataset, load_dataset
from tfmmrec.data.splits import Split, row_hashes, split_interactions
from tfmmrec.data.stream import CatalogSummary
from tfmmrec.data.validate import report_missing_media
from tfmmrec.errors import ConfigError, DataError
from tfmmrec.files import atomic_path, atomic_write, file_digest
from tfmmrec.modalities.audio import record_samples
from tfmmrec.progress import counter

logger = logging.getLogger(__name__)

# 2: shard sizes and checksums, and the train/test tables' digests, in the manifest
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PLAN = "plan.json"
# Where a finished output of another plan is rebuilt, beside the shards it replaces at the end.
REPLACEMENT = ".replacement"
TABLES = ("items", "train", "test")
SHARD_PATTERNS = tuple(f"{table}-*-of-*.tfrecord" for table in TABLES)
# A shard's size and checksum, written beside it before its rename (what a resumed run checks);
# removed once the manifest holds them.
SIDECAR_PATTERNS = tuple(f".{pattern}.json" for pattern in SHARD_PATTERNS)
TARGET_SHARD_BYTES = 128 * 2**20
# Bytes a serialised interaction takes, roughly (ids, index, rating, timestamp, proto framing).
_INTERACTION_BYTES = 64


@dataclass
class Manifest:
    """A finished ``prepare`` directory: its settings, tables and record counts.

    ``settings``: the preprocessing settings the shards were written with (every registered
    modality's, ``media_settings``: ``image_size``, ``sample_rate``, ``max_seconds``, ...). The
    JSON file keeps them as top-level keys (:meth:`to_dict`, :meth:`from_dict`), so a modality
    registered later adds its own without a new field here.
    """

    directory: str
    format_version: int
    modalities: list[str]
    num_items: int
    item_ids_sha1: str
    split: dict[str, Any]
    interaction_columns: list[str]
    # {"train": sha1, "test": sha1} of the rows written (:func:`split_digests`)
    split_sha1: dict[str, str] = field(default_factory=dict)
    # the items' content when prepared (``CatalogDigest.content``; "" in older manifests)
    content_sha1: str = ""
    # per table, each shard's {"file", "records", "bytes", "sha256"}
    shards: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: ``manifest.image_size`` is a setting.
        settings = self.__dict__.get("settings")
        if settings is not None and name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def max_samples(self) -> int:
        return record_samples(self.settings)

    @classmethod
    def from_dict(cls, payload: dict[str, Any], **fields: Any) -> Manifest:
        """A manifest from its JSON form (``fields`` added or overriding, e.g. ``directory``):
        keys that are not fields are the preprocessing settings."""
        payload = {**payload, **fields}
        names = {f.name for f in dataclasses.fields(cls)} - {"settings"}
        return cls(**{k: v for k, v in payload.items() if k in names},
                   settings={k: v for k, v in payload.items() if k not in names})

    def files(self, table: str) -> list[str]:
        return [join_path(self.directory, s["file"]) for s in self.shards[table]]

    def count(self, table: str) -> int:
        return int(sum(s["records"] for s in self.shards[table]))

    def to_dict(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        payload.pop("directory")
        settings = payload.pop("settings")
        return {"format_version": payload.pop("format_version"), **settings, **payload}


# --- writing ----------------------------------------------------------------------------------


@dataclass
class PrepareRun:
    """One ``prepare`` of ``output``: its plan, every shard job, and the jobs still to run.

    The local path runs ``todo`` in a process pool, the Beam path (``tfmmrec.beam.prepare``) as
    a pipeline; both start with :func:`plan_prepare` and end with :func:`finish_prepare`, so they
    write the same shards and manifest. The jobs write to ``workdir``: ``output`` itself, or its
    ``.replacement`` folder when ``output`` holds a finished prepare of another plan.
    """

    output: str
    plan: dict[str, Any]
    jobs: list[dict[str, Any]]
    todo: list[dict[str, Any]]
    num_items: int
    workdir: str = ""

    def __post_init__(self) -> None:
        self.workdir = self.workdir or self.output


def write_tfrecords(config: Config, output: str | os.PathLike | None = None, *,
            dataset: Dataset | None = None, workers: int | None = None,
            shards: int | None = None, progress: bool = True) -> Manifest:
    """Convert the configured dataset folder (and its split) into sharded TFRecords.

    ``output`` defaults to ``train.tfrecords``; ``workers`` / ``shards`` to
    ``train.prepare_workers`` / ``train.tfrecord_shards`` (0: all cores / sized from the data).
    Running it again after an interruption keeps every finished shard; a changed dataset or
    setting starts the directory over (a finished one is replaced only once the new one is).
    """
    workers = prepare_workers(config, workers)
    run = plan_prepare(config, output, dataset=dataset, workers=workers, shards=shards)
    failed = _run_jobs(run.todo, workers, progress)
    return finish_prepare(run, failed)


def prepare_workers(config: Config, workers: int | None = None) -> int:
    """Processes ``prepare`` runs: ``workers``, else ``train.prepare_workers``, else (0) every
    core."""
    return workers or config.train.prepare_workers or os.cpu_count() or 1


def plan_prepare(config: Config, output: str | os.PathLike | None = None, *,
                 dataset: Dataset | None = None, workers: int | None = None,
                 shards: int | None = None) -> PrepareRun:
    """Check the output, keep the finished shards of the same plan, and list the shard jobs.

    ``workers`` only sizes the default shard count (at least one shard per worker): without
    ``shards``, an existing plan of the same data and settings keeps its shard count.
    """
    output = str(output or config.train.tfrecords or "")
    if not output:
        raise ConfigError("tfmmrec prepare needs an output directory: --output DIR or "
                          "train.tfrecords=DIR")
    if dataset is None:
        dataset = load_dataset(config.data)
    split = split_interactions(dataset.interactions, config.data.split, config.data.test_fraction,
                               config.data.seed)
    workers = prepare_workers(config, workers)
    shards = shards or config.train.tfrecord_shards or None
    previous = [old for old in (_read_plan(output), _read_plan(join_path(output, REPLACEMENT)))
                if old]
    plan = _plan(config, dataset, split, shards, workers, previous)
    _check_output(output, plan["estimated_bytes"])
    workdir = output_workdir(output, plan["fingerprint"], "TFRecords",
                             SHARD_PATTERNS + SIDECAR_PATTERNS)
    start_or_resume(workdir, plan, SHARD_PATTERNS + SIDECAR_PATTERNS, "TFRecords")
    jobs = _jobs(config, dataset, split, plan, workdir)
    recorded = recorded_shards(workdir)
    todo = [job for job in jobs if not _keep(workdir, job, recorded.get(job["file"]))]
    if len(todo) < len(jobs):
        logger.info("%s: %d of %d shards already written, resuming", workdir,
                    len(jobs) - len(todo), len(jobs))
    return PrepareRun(output, plan, jobs, todo, dataset.num_items, workdir)


def _keep(directory: str, job: dict[str, Any], record: dict[str, Any] | None) -> bool:
    """Whether a resumed run keeps the shard of ``job``: it exists with the size and SHA-256
    recorded when it was written (a shard damaged since is rewritten). A shard whose record
    is lost (its manifest deleted) is kept if all its records read back intact, and recorded
    anew."""
    path = join_path(directory, job["file"])
    if not tf.io.gfile.exists(path):
        return False
    if record is None and records_intact(path, job["records"]):
        _record_shard(directory, job["file"], job["records"], path)
        return True
    if shard_matches(path, job["records"], record, checksum=True):
        return True
    logger.warning("%s is damaged (its size, checksum or records are not the ones written); "
                   "writing it again", path)
    return False


def records_intact(path: str, records: int) -> bool:
    """``path`` holds ``records`` records, each of which reads back intact (every TFRecord
    carries a CRC32C of its length and of its bytes): a truncated or bit-flipped shard fails."""
    try:
        count = tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1)
    except tf.errors.OpError:
        return False
    return int(count) == records


def shard_matches(path: str, records: int, record: dict[str, Any] | None, *,
                  checksum: bool) -> bool:
    """``path`` is the shard ``record`` (a sidecar or manifest entry) describes: ``records``
    records, its size, and with ``checksum`` its SHA-256 (one read of the file)."""
    if not record or record.get("records") != records:
        return False
    size = _size(path)
    if size is None or size != record.get("bytes"):
        return False
    return not checksum or file_digest(path)[1] == record.get("sha256")


def recorded_shards(directory: str) -> dict[str, dict[str, Any]]:
    """Each shard's recorded ``{"file", "records", "bytes", "sha256"}`` in ``directory``: from
    its manifest (a finished run of this plan: ``start_or_resume`` removed any other), and
    from the sidecars of shards written since."""
    recorded: dict[str, dict[str, Any]] = {}
    manifest = join_path(directory, MANIFEST)
    if tf.io.gfile.exists(manifest):
        payload = read_json(manifest) or {}
        if payload.get("format_version") == FORMAT_VERSION:
            recorded.update({shard["file"]: shard for table in TABLES
                             for shard in payload.get("shards", {}).get(table, [])})
    for pattern in SIDECAR_PATTERNS:
        for path in tf.io.gfile.glob(join_path(directory, pattern)):
            shard = read_json(path)
            if shard is not None:  # a damaged sidecar: its shard is written again
                recorded[shard["file"]] = shard
    return recorded


def finish_prepare(run: PrepareRun, failed: dict[str, list[str]]) -> Manifest:
    """Report undecodable media and write ``manifest.json``, last, once every shard exists
    with its recorded size (the manifest takes each shard's size and checksum over from its
    sidecar, which is then removed)."""
    recorded = recorded_shards(run.workdir)
    missing = [job["file"] for job in run.jobs
               if not shard_matches(join_path(run.workdir, job["file"]), job["records"],
                                    recorded.get(job["file"]), checksum=False)]
    if missing:
        raise DataError(f"{run.workdir}: {len(missing)} shard(s) were not written (first: "
                        f"{missing[0]}); run `tfmmrec prepare` again (finished shards are kept)")
    for modality, paths in failed.items():
        report_missing_media(modality, paths)
    plan = run.plan
    manifest = Manifest.from_dict(
        plan["settings"], directory=run.output, format_version=FORMAT_VERSION,
        num_items=run.num_items, item_ids_sha1=plan["item_ids_sha1"],
        content_sha1=plan.get("content_sha1", ""), split=plan["split"],
        interaction_columns=plan["interaction_columns"], split_sha1=plan["split_sha1"],
        shards={table: [shard_entry(recorded[job["file"]]) for job in run.jobs
                        if job["table"] == table] for table in TABLES})
    swap_in(run.output, run.workdir, [job["file"] for job in run.jobs],
            SHARD_PATTERNS + SIDECAR_PATTERNS)
    write_text(join_path(run.output, MANIFEST), json.dumps(manifest.to_dict(), indent=2))
    for pattern in SIDECAR_PATTERNS:  # the manifest holds them now
        for path in tf.io.gfile.glob(join_path(run.output, pattern)):
            tf.io.gfile.remove(path)
    logger.debug("prepared %s: %d items, %d train and %d test interactions in %d shards",
                run.output, manifest.num_items, manifest.count("train"),
                manifest.count("test"), len(run.jobs))
    return manifest


def shard_entry(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in ("file", "records", "bytes", "sha256")}


def split_digests(split: Split, columns: Sequence[str]) -> dict[str, str]:
    """``{"train": sha1, "test": sha1}`` of the rows the shards hold (``columns``, user ids as
    the strings written): the plan's fingerprint includes them, the manifest records them, and
    training compares them with the split of the folder it loads (:func:`check_compatible`)."""
    return {table: _rows_digest(getattr(split, table), columns) for table in ("train", "test")}


def _rows_digest(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    present, hashes = row_hashes(frame, columns)
    digest = hashlib.sha1(json.dumps([present, len(frame)]).encode())
    digest.update(np.ascontiguousarray(hashes))
    return digest.hexdigest()


def split_settings(config: Config) -> dict[str, Any]:
    """The data settings a prepared split depends on (compared again at training time)."""
    data = config.data
    return {"kind": data.split, "test_fraction": data.test_fraction, "seed": data.seed,
            "min_rating": data.min_rating}


def media_settings(config: Config, present) -> dict[str, Any]:
    """Every modality's preprocessing settings (the registry's), and the modalities present:
    what the shards' decoded content depends on."""
    return {**modalities.settings_from_config(config), "modalities": list(present)}


def _plan(config: Config, dataset: Dataset, split: Split, shards: int | None, workers: int,
          previous: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    catalog = dataset.catalog
    settings = media_settings(config, catalog.modalities)
    item_bytes = 256 + int(np.mean([len(t) for t in catalog.texts])) if len(catalog) else 256
    item_bytes += sum(modalities.get(name).record_bytes(settings)
                      for name in catalog.modalities)
    # Timestamps stay in the folder (history features are built from it in memory).
    columns = [c for c in ("user_id", "item_index", "rating") if c in split.train.columns]
    sizes = {"items": (len(catalog), item_bytes), "train": (len(split.train), _INTERACTION_BYTES),
             "test": (len(split.test), _INTERACTION_BYTES)}
    counts = {table: _shard_count(rows, size, shards, workers)
              for table, (rows, size) in sizes.items()}
    # the rows written (timestamps included through the split they decide), not the folder's
    tables = split_digests(split, columns)
    content = catalog_fingerprint(catalog).encode()

    def fingerprint(shard_counts: Any) -> str:
        digest = hashlib.sha1(json.dumps([FORMAT_VERSION, settings, split_settings(config),
                                          shard_counts, columns, tables]).encode())
        digest.update(content)
        return digest.hexdigest()

    if shards is None:
        # The default count follows the worker count (local processes, or the driver's cores
        # under a runner), which is not content: the same data and settings already planned
        # with another count are the same output, kept rather than written again.
        counts = next((old["shard_counts"] for old in previous
                       if old.get("fingerprint") == fingerprint(old.get("shard_counts"))),
                      counts)
    return {"fingerprint": fingerprint(counts), "settings": settings,
            "split": split_settings(config), "item_ids_sha1": ids_digest(catalog.item_ids),
            "content_sha1": CatalogDigest(dataset.root).update(catalog).content(),
            "interaction_columns": columns, "split_sha1": tables, "shard_counts": counts,
            "estimated_bytes": sum(rows * size for rows, size in sizes.values())}


def catalog_fingerprint(catalog) -> str:
    """A cheap fingerprint of the catalogue's content: ids, texts and each media file's path,
    size and modification time (no file is read). Derived data (shards, features) records it
    and is refused when it no longer matches."""
    return CatalogDigest().update(catalog).fingerprint()


class CatalogDigest:
    """:func:`ids_digest` and :func:`catalog_fingerprint` fed chunk by chunk (``update`` with
    consecutive slices of the catalogue): the same digests for one chunk or many, so a catalogue
    streamed from its table (``data.stream``) never needs to be held whole."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.count = 0
        self._ids = hashlib.sha1()
        # one hash per modality: a modality's content is hashed in catalogue order whatever
        # the chunking (inline content such as text, or each media file's path, size, mtime)
        self._content = {spec.name: hashlib.sha1() for spec in modalities.specs()}
        # the same wherever the folder lies: media paths relative to ``root``, sizes only
        self.root = None if root is None else Path(root).absolute()
        self._relocatable = {spec.name: hashlib.sha1() for spec in modalities.specs()}

    def update(self, catalog) -> CatalogDigest:
        if not len(catalog):
            return self
        self._ids.update(("\0" if self.count else "").encode()
                         + "\0".join(map(str, catalog.item_ids)).encode())
        self.count += len(catalog)
        for spec in modalities.specs():
            digest = self._content[spec.name]
            if isinstance(spec, modalities.FileModality):
                for path in catalog.values(spec.name):
                    if path is not None:
                        stat = path.stat()
                        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
                        self._relocatable[spec.name].update(
                            f"{self._relative(path)}:{stat.st_size}\0".encode())
            else:
                for value in catalog.values(spec.name):
                    digest.update(str(value).encode() + b"\0")
                    self._relocatable[spec.name].update(f"{value}\0".encode())
        return self

    def _relative(self, path: Path) -> str:
        if self.root is not None:
            with contextlib.suppress(ValueError):
                return Path(path).absolute().relative_to(self.root).as_posix()
        return str(path)

    def content(self) -> str:
        """The items' content as prepared shards hold it, wherever the folder lies (ids,
        inline content, each media file's path relative to the folder and its size): what
        ``check_compatible`` compares, so a moved or copied folder still matches."""
        digest = hashlib.sha1(b"content")
        digest.update(self.ids().encode())
        for name in sorted(self._relocatable):  # per modality: the same for any chunking
            digest.update(f"{name}:{self._relocatable[name].hexdigest()}".encode())
        return digest.hexdigest()

    def ids(self) -> str:
        """``ids_digest`` of every id fed so far."""
        return self._ids.hexdigest()

    def fingerprint(self) -> str:
        digest = hashlib.sha1(b"catalog")
        digest.update(self.ids().encode())
        for name in sorted(self._content):
            digest.update(f"{name}:{self._content[name].hexdigest()}".encode())
        return digest.hexdigest()


def _shard_count(rows: int, bytes_per_row: int, requested: int | None, workers: int) -> int:
    if rows == 0:
        return 1
    count = requested or max(workers, math.ceil(rows * bytes_per_row / TARGET_SHARD_BYTES))
    return max(1, min(count, rows))


def ids_digest(item_ids) -> str:
    return hashlib.sha1("\0".join(map(str, item_ids)).encode()).hexdigest()


def _check_output(output: str, needed: int) -> None:
    """Fail before any decoding if the output cannot be written or the disk is too small."""
    try:
        tf.io.gfile.makedirs(output)
        probe = join_path(output, ".write-probe")
        write_text(probe, "ok")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as exc:
        raise DataError(f"cannot write TFRecords to {output}: {exc}. Choose a writable "
                        "directory (--output or train.tfrecords)") from None
    if "://" in output:
        return  # object stores have no free-space figure
    free = shutil.disk_usage(output).free
    if free < needed * 1.1:
        raise DataError(f"{output} has {free / 2**30:.2f} GiB free but the TFRecords need about "
                        f"{needed / 2**30:.2f} GiB (decoded media are larger than compressed "
                        "files); free space or choose another --output")


def _read_plan(directory: str) -> dict[str, Any] | None:
    path = join_path(directory, PLAN)
    return read_json(path) if tf.io.gfile.exists(path) else None


def output_workdir(output: str, fingerprint: str, what: str,
                   patterns: Sequence[str] = ()) -> str:
    """Where a sharded job's files go: ``output``, unless it holds a finished output (a
    manifest) of another plan, which stays whole and readable until :func:`swap_in`
    replaces it from the ``.replacement`` folder this returns. ``what`` names the output in
    the warning. Shared by ``prepare`` and ``encode``.

    A replacement of this very plan is resumed even when ``output`` has no manifest: a
    :func:`swap_in` interrupted after removing the old manifest (its finished shards would be
    lost otherwise); ``patterns`` (the shard files) name what it had moved in already."""
    replacement = join_path(output, REPLACEMENT)
    current = (_read_plan(output) or {}).get("fingerprint")
    if current != fingerprint and (_read_plan(replacement) or {}).get(
            "fingerprint") == fingerprint:
        if not tf.io.gfile.exists(join_path(output, MANIFEST)):
            _resume_swap(output, replacement, patterns)
            logger.warning("%s: resuming the interrupted replacement of its %s by %s", output,
                           what, replacement)
        return replacement
    if tf.io.gfile.exists(join_path(output, MANIFEST)) and current != fingerprint:
        logger.warning("%s holds %s of different data or settings; writing the new ones in %s, "
                       "replacing the old ones once all are written", output, what, replacement)
        return replacement
    if tf.io.gfile.exists(replacement):  # a replacement abandoned for this plan
        tf.io.gfile.rmtree(replacement)
    return output


def _resume_swap(output: str, replacement: str, patterns: Sequence[str]) -> None:
    """Undo the moves of an interrupted :func:`swap_in`: once ``output`` has no plan, its old
    files are gone (removed before the plan), so a shard there (``patterns``) is one the swap
    had moved in: it goes back to ``replacement``, which is resumed and swapped in again."""
    if tf.io.gfile.exists(join_path(output, PLAN)):
        return  # the swap stopped before the old shards were all removed: it moved nothing
    for pattern in patterns:
        for path in tf.io.gfile.glob(join_path(output, pattern)):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if not tf.io.gfile.exists(join_path(replacement, name)):
                tf.io.gfile.rename(path, join_path(replacement, name))


def start_or_resume(directory: str, plan: dict[str, Any], patterns: Sequence[str],
                    what: str) -> None:
    """Keep the finished shards of the same plan in ``directory``; otherwise clear what an
    older plan wrote there (``patterns``: its shard files), and record ``plan``."""
    for stale in tf.io.gfile.glob(join_path(directory, ".*.tmp*")):
        tf.io.gfile.remove(stale)  # half-written shards of an interrupted run
    plan_path = join_path(directory, PLAN)
    if tf.io.gfile.exists(plan_path):
        if (read_json(plan_path) or {}).get("fingerprint") == plan["fingerprint"]:
            return
        logger.warning("%s holds %s of different data or settings; rewriting it", directory,
                       what)
    for pattern in [MANIFEST, *patterns]:
        for path in tf.io.gfile.glob(join_path(directory, pattern)):
            tf.io.gfile.remove(path)
    write_text(plan_path, json.dumps(plan, indent=2))


def swap_in(output: str, workdir: str, files: Sequence[str], patterns: Sequence[str]) -> None:
    """Swap a complete replacement in (before the new manifest is written): the old manifest
    goes first (the directory is not read until the new one exists), then the old shards
    (``patterns``) and plan; ``files`` move in, then the new plan. A no-op when ``workdir`` is
    ``output``.

    The order lets an interrupted swap be resumed (:func:`output_workdir`): until the new plan
    moves in, the replacement keeps it and is resumed; once the old plan is gone, a shard in
    ``output`` is one this swap moved."""
    if workdir == output:
        return
    for pattern in [MANIFEST, *patterns, PLAN]:
        for path in tf.io.gfile.glob(join_path(output, pattern)):
            tf.io.gfile.remove(path)
    for name in [*files, PLAN]:
        tf.io.gfile.rename(join_path(workdir, name), join_path(output, name))
    tf.io.gfile.rmtree(workdir)


def _jobs(config: Config, dataset: Dataset, split: Split, plan: dict[str, Any],
          output: str) -> list[dict[str, Any]]:
    catalog = dataset.catalog
    counts = plan["shard_counts"]
    jobs = []
    # An item job: (index, id, {modality: value as the spec carries it}) for every modality.
    values = {spec.name: [spec.job_value(v) for v in catalog.values(spec.name)]
              for spec in modalities.specs()}
    item_rows = np.array_split(np.arange(len(catalog)), counts["items"])
    for shard, rows in enumerate(item_rows):
        items = [(int(i), str(catalog.item_ids[i]),
                  {name: content[i] for name, content in values.items()}) for i in rows]
        jobs.append({"table": "items", "items": items, "settings": plan["settings"],
                     "modalities": modalities.references(),  # registered where it runs
                     "records": len(items), "output": output,
                     "file": shard_name("items", shard, counts["items"])})
    columns = plan["interaction_columns"]
    for table, frame in (("train", split.train), ("test", split.test)):
        order = np.random.default_rng(config.data.seed).permutation(len(frame))
        arrays = {c: frame[c].to_numpy()[order] for c in columns}
        arrays["user_id"] = arrays["user_id"].astype(str)
        for shard, rows in enumerate(np.array_split(np.arange(len(frame)), counts[table])):
            jobs.append({"table": table, "columns": {c: a[rows] for c, a in arrays.items()},
                         "records": len(rows), "output": output,
                         "file": shard_name(table, shard, counts[table])})
    return jobs


def shard_name(table: str, shard: int, count: int) -> str:
    return f"{table}-{shard:05d}-of-{count:05d}.tfrecord"


def _run_jobs(jobs: list[dict[str, Any]], workers: int, progress: bool) -> dict[str, list[str]]:
    failed: dict[str, list[str]] = {}
    total = sum(job["records"] * (job["table"] == "items") for job in jobs)
    bar = counter(total=total, desc="preparing items", unit="item",
                  disable=not progress or not jobs)
    workers = max(1, min(workers, len(jobs)))
    try:
        if workers == 1:
            results = (write_shard(job) for job in jobs)
            for job, result in zip(jobs, results, strict=False):
                _merge(failed, result)
                bar.update(job["records"] * (job["table"] == "items"))
            return failed
        # "spawn": TensorFlow's runtime threads do not survive fork(). A spawned worker knows
        # the built-in modalities only: item jobs name every registered spec (``require``).
        modalities.check_importable(next((job["modalities"] for job in jobs
                                          if job["table"] == "items"), []))
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(workers, mp_context=context,
                                         initializer=_init_worker) as pool:
            running = {pool.submit(write_shard, job): job for job in jobs}
            for done in futures.as_completed(running):
                _merge(failed, done.result())
                job = running[done]
                bar.update(job["records"] * (job["table"] == "items"))
        return failed
    finally:
        bar.close()


def _merge(failed: dict[str, list[str]], result: dict[str, list[str]]) -> None:
    for modality, paths in result.items():
        failed.setdefault(modality, []).extend(paths)


def _init_worker() -> None:
    exit_with_parent()
    import tfmmrec  # noqa: F401  (Keras 2 and TF settings, as in the parent)

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def exit_with_parent() -> None:
    """End this pool worker when the process that started it ends, however it ends (``kill
    -9`` included). A worker holds the write end of its own job queue, so it never sees the
    queue close: without this it would wait for a job forever, holding TensorFlow's memory.
    The parent's sentinel is a pipe whose write end only the parent holds: it becomes
    readable when the parent is gone. A no-op outside a ``multiprocessing`` child."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def wait_for_parent() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)  # nobody is left to report to

    threading.Thread(target=wait_for_parent, name="tfmmrec-parent-watch", daemon=True).start()


def write_shard(job: dict[str, Any]) -> dict[str, list[str]]:
    """Write one shard to a temporary name, then rename it into place (atomic on local disks;
    object stores publish an object only once its upload completes). Its sidecar (records,
    size, SHA-256) is written first, so a shard in place always has one."""
    final = join_path(job["output"], job["file"])
    failed: dict[str, list[str]] = {}
    # In a worker process (local pool, Beam): register the modalities the plan was made with.
    modalities.require(job.get("modalities", ()))
    # deterministic: map fields in key order, so a shard's bytes do not depend on the process
    # (hash seed) that wrote it: the local pool and any Beam worker write identical files. The
    # temporary name holds the pid and a random part: a runner may retry (or speculatively
    # duplicate) a shard on another machine.
    with atomic_path(final) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            if job["table"] == "items":
                for item in job["items"]:
                    writer.write(_item_example(item, job["settings"], failed)
                                 .SerializeToString(deterministic=True))
            else:
                columns = job["columns"]
                for row in range(job["records"]):
                    writer.write(_interaction_example(columns, row).SerializeToString(
                        deterministic=True))
        _record_shard(job["output"], job["file"], job["records"], tmp)
    return failed


def _record_shard(directory: str, file: str, records: int, path: str) -> None:
    """Write the sidecar of shard ``file`` of ``directory`` (:func:`shard_record`)."""
    write_text(sidecar_path(directory, file), json.dumps(shard_record(file, records, path)))


def shard_record(file: str, records: int, path: str) -> dict[str, Any]:
    """What a resumed run checks a finished shard ``file`` against (:func:`shard_matches`):
    its records, and the size and SHA-256 of ``path`` (the shard, or its temporary name just
    written: read back from the page cache on a local disk, downloaded once from an object
    store). Shared by ``prepare`` and ``encode``."""
    size, sha256 = file_digest(path)
    return {"file": file, "records": records, "bytes": size, "sha256": sha256}


def sidecar_path(directory: str, file: str) -> str:
    return join_path(directory, f".{file}.json")


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _float(value: float) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))


def _item_example(item, settings: dict[str, Any], failed: dict[str, list[str]]
                  ) -> tf.train.Example:
    """One item record: id and index, then every registered modality's fields
    (``ModalitySpec.record_features``: content, content key, presence)."""
    index, item_id, values = item
    feature = {"item_index": _int(index), "item_id": _bytes(item_id.encode())}
    for spec in modalities.specs():
        feature.update(spec.record_features(values.get(spec.name), settings, failed))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _interaction_example(columns: dict[str, np.ndarray], row: int) -> tf.train.Example:
    feature = {"user_id": _bytes(str(columns["user_id"][row]).encode()),
               "item_index": _int(columns["item_index"][row])}
    if "rating" in columns:
        feature["rating"] = _float(columns["rating"][row])
    return tf.train.Example(features=tf.train.Features(feature=feature))


# --- reading ----------------------------------------------------------------------------------


def load_manifest(directory: str | os.PathLike) -> Manifest:
    """The manifest of a finished ``prepare`` directory; a ``DataError`` for anything else,
    a missing shard, or one whose size is not the one recorded (a truncated copy)."""
    directory = str(directory)
    path = join_path(directory, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise DataError(f"{directory} holds no finished TFRecords (no {MANIFEST}): run "
                        "`tfmmrec prepare` (again: finished shards are kept)")
    payload = read_json(path, "run `tfmmrec prepare` again (it rewrites a damaged manifest)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format version {payload.get('format_version')} is not "
                        f"{FORMAT_VERSION}; run `tfmmrec prepare` again")
    manifest = Manifest.from_dict(payload, directory=directory)
    sizes = {path: _size(path) for table in TABLES for path in manifest.files(table)}
    missing = [path for path, size in sizes.items() if size is None]
    if missing:
        raise DataError(f"{directory}: {len(missing)} shard(s) listed in {MANIFEST} are missing "
                        f"(first: {missing[0]}); run `tfmmrec prepare` again")
    for table in TABLES:
        for path, shard in zip(manifest.files(table), manifest.shards[table], strict=True):
            if sizes[path] != shard["bytes"]:
                raise DataError(f"{path}: {sizes[path]} bytes, but {MANIFEST} records "
                                f"{shard['bytes']}: the shard was truncated or changed after "
                                "`tfmmrec prepare`; run it again (it rewrites damaged shards)")
    return manifest


def _size(path: str) -> int | None:
    try:
        return tf.io.gfile.stat(path).length
    except tf.errors.NotFoundError:
        return None


# Shards whose checksum this process verified: (path, size, modification time).
_VERIFIED: set[tuple[str, int, int]] = set()


def verify_checksums(manifest: Manifest) -> None:
    """A ``DataError`` naming the first shard whose SHA-256 is not the one recorded when it was
    written (a bit flip: the size is unchanged).

    Each shard is read once; a shard verified before by this process is not read again unless
    its size or modification time changed. Every table of a local directory is verified; of a
    remote one the interaction tables (read every epoch, small), whose item shards can be too
    large to read twice: their records are still checked (TFRecord CRCs) as they are read.
    """
    tables = ("train", "test") if "://" in manifest.directory else TABLES
    for table in tables:
        for path, shard in zip(manifest.files(table), manifest.shards[table], strict=True):
            stat = tf.io.gfile.stat(path)
            key = (path, stat.length, stat.mtime_nsec)
            if key in _VERIFIED:
                continue
            if file_digest(path)[1] != shard["sha256"]:
                raise DataError(f"{path}: its SHA-256 is not the one {MANIFEST} records: the "
                                "shard was damaged after `tfmmrec prepare`; run it again (it "
                                "rewrites damaged shards)")
            _VERIFIED.add(key)


def check_compatible(manifest: Manifest, config: Config,
                     dataset: Dataset | CatalogSummary | None = None,
                     split: Split | None = None) -> None:
    """Refuse shards that cannot stand for this config and data, before anything reads them.

    A ``ConfigError`` if they were prepared with other settings or another catalogue (a
    loaded ``Dataset`` or a streamed ``CatalogSummary``); a ``DataError`` if the interactions
    changed since (with a ``Dataset``: the train and test tables of its ``split``, computed
    here unless given, against the digests recorded), since training would read stale rows
    and score on test rows it trained on; a ``DataError`` naming a shard damaged since it was
    written (:func:`verify_checksums`).
    """
    if isinstance(dataset, Dataset):
        catalogue = (dataset.catalog.modalities, dataset.num_items,
                     ids_digest(dataset.catalog.item_ids))
        content = CatalogDigest(dataset.root).update(dataset.catalog).content()
    elif dataset is not None:
        catalogue = (dataset.modalities, dataset.num_items, dataset.item_ids_sha1)
        content = dataset.content_sha1
    modalities = list(catalogue[0]) if dataset is not None else manifest.modalities
    expected = {**media_settings(config, modalities), "split": split_settings(config)}
    found = {**manifest.settings, "modalities": manifest.modalities, "split": manifest.split}
    differ = [f"{k}: prepared {found.get(k)!r}, config {expected[k]!r}" for k in expected
              if found.get(k) != expected[k]]
    if dataset is not None and (manifest.num_items, manifest.item_ids_sha1) != catalogue[1:]:
        differ.append(f"catalogue: prepared {manifest.num_items} items, the folder has "
                      f"{catalogue[1]} (or other ids)")
    elif dataset is not None and manifest.content_sha1 and manifest.content_sha1 != content:
        # the shards hold the items' decoded content: an edited text or replaced poster
        # would be trained on (and encoded by `encode`) as it was
        differ.append("items: their texts or media files changed since they were prepared")
    if differ:
        raise ConfigError(f"train.tfrecords={manifest.directory} does not match this config ("
                          + "; ".join(differ) + "): run `tfmmrec prepare` again")
    if isinstance(dataset, Dataset):
        data = config.data
        if split is None:
            split = split_interactions(dataset.interactions, data.split, data.test_fraction,
                                       data.seed)
        _check_interactions(manifest, split)
    verify_checksums(manifest)


def _check_interactions(manifest: Manifest, split: Split) -> None:
    """A ``DataError`` if the train or test rows the shards hold are not ``split``'s."""
    now = split_digests(split, manifest.interaction_columns)
    changed = []
    for table, digest in now.items():
        if digest != manifest.split_sha1.get(table):
            rows = len(getattr(split, table))
            other = "" if rows != manifest.count(table) else " (other rows)"
            changed.append(f"{table}: {manifest.count(table)} rows prepared, {rows} now{other}")
    if changed:
        raise DataError(f"train.tfrecords={manifest.directory}: interactions changed since "
                        f"`tfmmrec prepare` ({'; '.join(changed)}): run it again")


def interactions_dataset(manifest: Manifest, table: str, batch_size: int, *, seed: int = 0,
                         shuffle: bool = True, columns=("user_id", "item_index"),
                         shuffle_buffer: int = 100_000, num_workers: int = 1
                         ) -> tf.data.Dataset:
    """Batches of interactions streamed from the shards of ``table`` (``train`` or ``test``).

    With ``shuffle`` (training) the stream repeats forever and batches are full; without it,
    every record is read once, in shard order.

    Shards are read in parallel (``interleave``), shuffled by file and through a buffer,
    batched to the global batch and parsed a whole batch at a time, then prefetched; every
    parallelism knob is ``AUTOTUNE``. Under a multi-worker strategy with at least as many shards
    as workers, TF shards by file: each worker reads its own shards when their number is a
    multiple of the workers; otherwise TF rotates the shards among the workers (the file list is
    sharded after ``repeat``), each file still read once per worker every two passes. With fewer
    shards than workers each worker keeps its part of every batch (DATA sharding).
    """
    missing = [c for c in columns if c not in manifest.interaction_columns]
    if missing:
        raise DataError(f"{manifest.directory}: interactions have no {', '.join(missing)} column")
    files = manifest.files(table)
    count = manifest.count(table)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        # Endless: each pass reshuffles the shard order; fit() runs count // batch_size steps
        # per epoch, so every batch is full and workers with uneven shards never run dry.
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=4 * 2**20),
        cycle_length=min(len(files), 16), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if shuffle:
        dataset = dataset.shuffle(min(shuffle_buffer, max(count, 1)), seed=seed,
                                  reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=shuffle)
    spec = {"user_id": tf.io.FixedLenFeature([], tf.string),
            "item_index": tf.io.FixedLenFeature([], tf.int64),
            "rating": tf.io.FixedLenFeature([], tf.float32)}
    spec = {c: spec[c] for c in columns}

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        if "item_index" in parsed:
            parsed["item_index"] = tf.cast(parsed["item_index"], tf.int32)
        return parsed

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = (
        policy.FILE if len(files) >= num_workers else policy.DATA)
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def items_dataset(manifest: Manifest, batch_size: int) -> tf.data.Dataset:
    """Batches of items in catalogue order, decoded: ``image`` float32 ``[B, S, S, 3]`` in
    [0, 1], ``audio`` ``{"waveform": [B, T], "length": [B]}`` at the prepared rate, ``text``,
    each with ``<modality>_present`` and ``<modality>_key``."""
    settings = manifest.settings
    spec = {"item_index": tf.io.FixedLenFeature([], tf.int64),
            "item_id": tf.io.FixedLenFeature([], tf.string)}
    for modality in modalities.specs():
        spec.update(modality.record_spec())

    def parse(serialized):
        x = tf.io.parse_example(serialized, spec)
        batch = {"item_index": x["item_index"], "item_id": x["item_id"]}
        for modality in modalities.specs():
            batch.update(modality.parse_record(x, settings))
        return batch

    dataset = tf.data.Dataset.from_tensor_slices(manifest.files("items"))
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=1,  # keep item order
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return (dataset.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


# --- file helpers (tf.io.gfile: local paths and gs:// alike) ----------------------------------


def join_path(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name if "://" in directory else os.path.join(
        directory, name)


def write_text(path: str, text: str) -> None:
    atomic_write(path, text)


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path) as handle:
        return handle.read()


def read_json(path: str | os.PathLike, remedy: str | None = None, error: type = DataError):
    """The JSON document in ``path`` (local or remote). A damaged one (a hand edit, a disk
    fault, a copy cut short) is ``error`` naming the file and ``remedy``, not a
    JSONDecodeError traceback; with ``remedy`` None it reads as no file (None), for the state
    files a rerun rewrites (a prepare or encode plan, a shard's sidecar)."""
    path = os.fspath(path)
    try:
        return json.loads(read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if remedy is None:
            logger.warning("%s is damaged (%s): written again", path, exc)
            return None
        raise error(f"{path} is damaged, not valid JSON ({exc}): {remedy}") from None
